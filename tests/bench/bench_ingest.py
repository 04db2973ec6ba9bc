"""Benchmark: ingesting a 512x512x300 CT DICOM series with its mask.

Prints each figure beside its baseline measured in the same run; asserts no time.
- baseline: SimpleITK reading the same series (ImageSeriesReader, GDCM), nothing else;
- the ingest job of an upload holding the series and its mask (NIfTI): read, check,
  de-identify, store 300 de-identified instances and their DICOM JSON, the canonical CT and mask
  volumes, build and store the DICOM SEG, and commit the rows (goal: within 3x the bare read);
- the same files ingested again (all unchanged: content hashes, nothing written).

Both sides run in this process with the same CPUs available (the printout names them and the
threads each side may use); each is measured ``--repeat`` times (default 5), interleaved so that
a burst of load on a shared machine hits both, and the best and the median are printed. Each
ingest goes to a fresh cohort, so every repeat stores everything.
Receiving the files (copying them into storage, as the chunked upload does) is timed apart.
Runs against DATABASE_URL in a throw-away test database, with media in a temporary folder.
``--profile`` prints where the (last) ingest spends its time.
"""

from __future__ import annotations

import argparse
import cProfile
import os
import pstats
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path[:0] = [str(REPO), str(REPO / "tests" / "support")]
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "pmpd_web.settings")

import django  # noqa: E402

django.setup()

from django.conf import settings  # noqa: E402
from django.db import connection  # noqa: E402
from django.test.utils import setup_test_environment  # noqa: E402

SLICES = 300
SIZE = 512
SEED, INDEX = 7, 0  # 1 mm slices: a 300 mm craniocaudal extent gives 300 slices


class Timings:
    """Wall-clock and CPU seconds (all threads of the process) of repeated runs."""

    def __init__(self) -> None:
        self.walls: list[float] = []
        self.cpus: list[float] = []

    def run(self, func):
        start, cpu = time.perf_counter(), time.process_time()
        result = func()
        self.walls.append(time.perf_counter() - start)
        self.cpus.append(time.process_time() - cpu)
        return result

    def line(self, label: str) -> str:
        return (
            f"{label:<38} best {min(self.walls):6.2f} s, median {statistics.median(self.walls):6.2f}"
            f" s wall; CPU best {min(self.cpus):5.2f} s, median {statistics.median(self.cpus):5.2f} s"
        )


def _image(array, phantom):
    import SimpleITK as sitk

    image = sitk.GetImageFromArray(array)
    image.SetSpacing(phantom.spacing)
    image.SetOrigin(phantom.origin)
    image.SetDirection(phantom.direction)
    return image


def main() -> None:
    import SimpleITK as sitk
    from factories import make_patient, make_user

    from inference.pmpd.phantom import PhantomConfig, generate_patient, write_dicom_series
    from pmpd_web.accounts.models import Membership, Role
    from pmpd_web.cohorts.models import Cohort
    from pmpd_web.imaging.ingest import ingest_upload
    from pmpd_web.imaging.ingest.job import INGEST_THREADS
    from pmpd_web.imaging.models import DicomInstance, ImageSeries
    from pmpd_web.imaging.uploads import (
        DeclaredFile,
        create_upload,
        declare_files,
        finish_upload,
        store_local_file,
    )

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=5, help="runs of each side (default 5)")
    parser.add_argument("--profile", action="store_true", help="profile the last ingest")
    args = parser.parse_args()

    setup_test_environment()
    work = Path(tempfile.mkdtemp(prefix="pmpd-bench-ingest-"))
    settings.MEDIA_ROOT = work / "media"
    old_name = connection.creation.create_test_db(verbosity=0, autoclobber=True)
    try:
        thickness = generate_patient(INDEX, seed=SEED, size=32).slice_thickness_mm
        config = PhantomConfig(size=SIZE, z_extent_mm=SLICES * thickness)
        phantom = generate_patient(INDEX, seed=SEED, config=config)
        folder = work / "upload" / phantom.study_id
        files = write_dicom_series(phantom, folder / "ct")
        sitk.WriteImage(_image(phantom.mask, phantom), str(folder / "mask.nii.gz"))
        size_mb = sum(p.stat().st_size for p in files) / 1e6
        cpus = len(os.sched_getaffinity(0))
        print(
            f"database: {connection.vendor}; series: {len(files)} slices of "
            f"{phantom.ct.shape[1]}x{phantom.ct.shape[2]}, {size_mb:.0f} MB; mask NIfTI"
        )
        print(
            f"CPUs available to this process (both sides): {cpus}; SimpleITK may use "
            f"{sitk.ProcessObject.GetGlobalDefaultNumberOfThreads()} threads, the ingest "
            f"{INGEST_THREADS} worker threads beside its own; load average at the start: "
            + ", ".join(f"{v:.1f}" for v in os.getloadavg())
        )

        def sitk_read() -> None:
            reader = sitk.ImageSeriesReader()
            reader.SetFileNames([str(p) for p in files])
            reader.Execute()

        user = make_user("bench", can_create_cohorts=True)

        def fresh_patient(name: str, study_id: str):
            cohort = Cohort.objects.create(name=name)
            Membership.objects.create(user=user, cohort=cohort, role=Role.COORDINATOR)
            make_patient(cohort, study_id)
            return cohort

        def prepared_upload(cohort, patient_folder: Path):
            upload = create_upload(cohort=cohort, user=user)
            paths = sorted(p for p in patient_folder.rglob("*") if p.is_file())
            declared = declare_files(
                upload,
                [
                    DeclaredFile(
                        name=str(p.relative_to(patient_folder.parent)), size=p.stat().st_size
                    )
                    for p in paths
                ],
            )
            for upload_file, path in zip(declared, paths, strict=True):
                store_local_file(upload_file, path)
            finish_upload(upload, user, queue=False)
            return upload

        # A worker that has run once has its libraries loaded (highdicom reads its tables of
        # the standard on first use): warm up with a small patient, as a running worker is.
        small = generate_patient(
            INDEX + 1, seed=SEED, config=PhantomConfig(size=64, z_extent_mm=40)
        )
        small.study_id = "WARM-UP"
        write_dicom_series(small, work / "warm" / small.study_id / "ct")
        sitk.WriteImage(
            _image(small.mask, small), str(work / "warm" / small.study_id / "mask.nii.gz")
        )
        warm = fresh_patient("warm-up", small.study_id)
        ingest_upload(prepared_upload(warm, work / "warm" / small.study_id), lambda p, s: None)

        baseline, ingest, receive = Timings(), Timings(), Timings()
        phases: list[tuple[float, str]] = []
        profiler = None
        for attempt in range(args.repeat):
            baseline.run(sitk_read)
            cohort = fresh_patient(f"bench {attempt}", phantom.study_id)
            upload = receive.run(lambda cohort=cohort: prepared_upload(cohort, folder))
            phases.clear()
            if args.profile and attempt == args.repeat - 1:
                profiler = cProfile.Profile()
                profiler.enable()
            summary = ingest.run(
                lambda upload=upload: ingest_upload(
                    upload, lambda p, s: phases.append((time.perf_counter(), s))
                )
            )
            if profiler:
                profiler.disable()
            assert summary["ct_added"] == 1 and summary["mask_added"] == 1, summary
            ct = ImageSeries.objects.get(modality="CT", study__patient__cohort=cohort)
            assert ct.is_selected and DicomInstance.objects.filter(series=ct).count() == SLICES

        again = prepared_upload(cohort, folder)
        start = time.perf_counter()
        summary = ingest_upload(again, lambda p, s: None)
        again_s = time.perf_counter() - start
        assert summary["ct_unchanged"] == 1 and summary["mask_unchanged"] == 1, summary

        print(f"{args.repeat} runs of each, interleaved:")
        print(baseline.line("SimpleITK reads the series (baseline)"))
        print(ingest.line("ingest (series + mask, all stored)"))
        best = min(ingest.walls) / min(baseline.walls)
        median = statistics.median(ingest.walls) / statistics.median(baseline.walls)
        print(
            f"ingest / bare read, wall: best {best:.1f}x, median {median:.1f}x (goal <= 3x); "
            f"CPU: best {min(ingest.cpus) / min(baseline.cpus):.1f}x, median "
            f"{statistics.median(ingest.cpus) / statistics.median(baseline.cpus):.1f}x"
        )
        print("phases of the last ingest:")
        previous = phases[0][0] if phases else 0.0
        for at, phrase in phases[1:]:
            print(f"    {at - previous:6.2f} s  until: {phrase}")
            previous = at
        print(f"ingest again, all unchanged              {again_s:7.2f} s")
        print(receive.line("receiving the files into storage (apart)"))
        if profiler:
            pstats.Stats(profiler).sort_stats("cumulative").print_stats(40)
            pstats.Stats(profiler).sort_stats("tottime").print_stats(25)
    finally:
        connection.creation.destroy_test_db(old_name, verbosity=0)
        import shutil

        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
