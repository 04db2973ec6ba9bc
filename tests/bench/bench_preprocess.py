"""Benchmark of pre-processing one patient from a 512x512x200 DICOM series and its mask.

    .venv/bin/python tests/bench/bench_preprocess.py

Writes a phantom patient (1 mm slices, 200 of them) as a DICOM series and a NIfTI mask in a
temporary folder, then prints, beside SimpleITK only reading that series:
  * ``load_volume`` of the series and the mask plus ``preprocess_patient`` for inference
    (4 patches at 224) and for training (24 patches);
  * the phantom's generation speed at 512 (patients per minute).
Asserts nothing.
"""

from __future__ import annotations

import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

import SimpleITK as sitk  # noqa: E402

from inference.pmpd.phantom import (  # noqa: E402
    PhantomConfig,
    generate_patient,
    iter_cohort,
    write_dicom_series,
    write_nifti,
)
from inference.pmpd.preprocess import (  # noqa: E402
    PreprocessConfig,
    load_volume,
    preprocess_patient,
)


def median_seconds(function: Callable[[], object], repeats: int = 3) -> float:
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        function()
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def main() -> None:
    config = PhantomConfig(size=512, slice_thicknesses_mm=(1.0,), slice_thickness_weights=(1.0,))
    started = time.perf_counter()
    patient = generate_patient(0, seed=0, config=config)
    generated = time.perf_counter() - started
    preprocess = PreprocessConfig()
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "series"
        started = time.perf_counter()
        write_dicom_series(patient, folder)
        written = time.perf_counter() - started
        _, mask_path = write_nifti(patient, Path(tmp) / "nifti")

        def sitk_read() -> sitk.Image:
            reader = sitk.ImageSeriesReader()
            reader.SetFileNames(reader.GetGDCMSeriesFileNames(str(folder)))
            return reader.Execute()

        def full(augment: bool) -> None:
            ct = load_volume(folder)
            mask = load_volume(mask_path)
            preprocess_patient(
                ct.array,
                mask.array,
                spacing=ct.spacing,
                direction=ct.direction,
                origin=ct.origin,
                config=preprocess,
                augment=augment,
            )

        read_s = median_seconds(sitk_read)
        infer_s = median_seconds(lambda: full(False))
        train_s = median_seconds(lambda: full(True))
        ct = load_volume(folder)
        mask = load_volume(mask_path)
        only_s = median_seconds(
            lambda: preprocess_patient(
                ct.array, mask.array, spacing=ct.spacing, direction=ct.direction, config=preprocess
            )
        )

    shape = "x".join(str(v) for v in patient.ct.shape[::-1])
    print(f"one patient, DICOM series {shape} (1 mm slices), mask as NIfTI")
    print(f"  SimpleITK reading the series only:                 {read_s:.2f} s (baseline)")
    print(
        f"  read series + mask + preprocess (4 patches, 224):  {infer_s:.2f} s "
        f"(x{infer_s / read_s:.2f} of the read)"
    )
    print(
        f"  read series + mask + preprocess (24 patches, 224): {train_s:.2f} s "
        f"(x{train_s / read_s:.2f} of the read)"
    )
    print(f"  preprocess_patient alone on arrays in memory:      {only_s:.2f} s")
    print(f"  phantom: generated in {generated:.2f} s, DICOM written in {written:.2f} s")

    n = 10
    started = time.perf_counter()
    voxels = sum(p.ct.size for p in iter_cohort(n, seed=1, config=PhantomConfig(size=512)))
    seconds = time.perf_counter() - started
    print(
        f"  phantom at 512 with the default slice mix: {seconds / n:.2f} s per patient "
        f"({voxels / n / 1e6:.0f} M voxels on average) -> 100 patients in about "
        f"{100 * seconds / n:.0f} s"
    )


if __name__ == "__main__":
    main()
