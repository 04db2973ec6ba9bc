"""Benchmark of nnU-Net v2 segmentation on the platform.

1. Trains the demo's small nnU-Net (``inference.segmentation_demo.DEMO_BUDGET``: 2d, one fold)
   on phantom patients (or takes a results folder, ``--model``) and prints its segmentation
   Dice on held-out phantoms per label (goal: pancreas >= 0.8, tumour >= 0.6 on phantoms).
2. Predicts one large CT (a phantom at ``--size`` pixels with about ``--slices`` slices;
   512x512x300 by default) through the platform -- the segmentation job reading the CT from
   storage, predicting, and storing the mask version with its DICOM SEG -- and, in the same
   run, with nnU-Net's own predictor (``predict_from_files`` on the same model and the same CT
   as NIfTI), and prints both times and their ratio (goal: within 1.3x).

Run with ``.venv/bin/python tests/bench/bench_nnunet.py [--device cuda] [--size 512]
[--slices 300] [--model RESULTS_FOLDER --folds 0]``. Uses DATABASE_URL's server in a throw-away
test database and a temporary media folder; everything computed here is on synthetic data.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path[:0] = [str(REPO), str(REPO / "tests" / "support")]
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "pmpd_web.settings")
os.environ.setdefault("CELERY_TASK_ALWAYS_EAGER", "1")

import django  # noqa: E402

django.setup()

import numpy as np  # noqa: E402
from django.conf import settings  # noqa: E402
from django.db import connection  # noqa: E402
from django.test.utils import setup_test_environment  # noqa: E402

from inference.pmpd.phantom import PhantomConfig, generate_patient  # noqa: E402
from inference.pmpd.train import torch_threads  # noqa: E402
from inference.pmpd.volume import Volume  # noqa: E402
from inference.segmentation import nnunet_core as nc  # noqa: E402


def case_of(patient, case_id: str, *, with_mask: bool = True) -> nc.Case:
    return nc.Case(
        case_id=case_id,
        ct=Volume.of_array(
            patient.ct, spacing=patient.spacing, origin=patient.origin, direction=patient.direction
        ),
        mask=patient.mask if with_mask else None,
    )


def dice(predicted: np.ndarray, truth: np.ndarray) -> dict[str, float]:
    result = {}
    for name, value in (("pancreas", 1), ("tumour", 2)):
        a, b = predicted == value, truth == value
        result[name] = round(2 * int((a & b).sum()) / max(1, int(a.sum()) + int(b.sum())), 3)
    return result


def train_demo_model(workdir: Path, *, n_train: int, size: int, device: str) -> nc.TrainedModel:
    from dataclasses import replace

    from inference.segmentation_demo import DEMO_BUDGET

    config = PhantomConfig(size=size, z_extent_mm=120.0)
    cases = [
        case_of(generate_patient(i, seed=2025, config=config), f"c{i:03d}") for i in range(n_train)
    ]
    nc.write_raw_dataset(cases, workdir / "raw", dataset_id=901, name="bench")
    started = time.perf_counter()
    budget = replace(DEMO_BUDGET, device=device)
    nc.plan_and_preprocess(workdir, dataset_id=901, budget=budget)
    model = nc.train(workdir, dataset_id=901, budget=budget)
    print(f"trained the demo model on {n_train} phantoms in {time.perf_counter() - started:.0f} s")
    return model


def held_out_dice(segmenter: nc.Segmenter, *, n: int, size: int, first: int) -> None:
    config = PhantomConfig(size=size, z_extent_mm=120.0)
    rows = []
    for index in range(first, first + n):
        patient = generate_patient(index, seed=2025, config=config)
        rows.append(
            dice(segmenter.predict(case_of(patient, "h", with_mask=False)).mask, patient.mask)
        )
    for name in ("pancreas", "tumour"):
        values = [r[name] for r in rows]
        print(f"held-out Dice {name:<9} mean {np.mean(values):.3f} (per patient {values})")


def platform_and_nnunet(model_folder: Path, folds, *, size: int, slices: int, device: str) -> None:
    from factories import make_cohort, make_patient, make_user
    from imagemaker import ingest, write_volume

    from inference.segmentation_jobs import start_segmentation
    from inference.segmentation_models import SegmentationModelVersion
    from pmpd_web.accounts.models import Membership, Role
    from pmpd_web.imaging.models import MaskVersion

    # 1 mm slices over ``slices`` mm: the slice count asked for.
    config = PhantomConfig(
        size=size,
        z_extent_mm=float(slices),
        slice_thicknesses_mm=(1.0,),
        slice_thickness_weights=(1.0,),
    )
    patient = generate_patient(7, seed=2025, config=config)
    print(
        f"large CT: {patient.ct.shape[2]}x{patient.ct.shape[1]}x{patient.ct.shape[0]} "
        f"(x, y, z), spacing {patient.spacing} mm"
    )
    with tempfile.TemporaryDirectory() as scratch:
        scratch = Path(scratch)
        ct_path = write_volume(patient.ct, patient, scratch / "in" / "BENCH-1" / "ct.nii.gz")
        cohort = make_cohort("Bench cohort", is_synthetic=True)
        user = make_user("bench-coordinator")
        Membership.objects.create(user=user, cohort=cohort, role=Role.COORDINATOR)
        make_patient(cohort, "BENCH-1")
        _, job = ingest(cohort, user, {"BENCH-1/ct.nii.gz": ct_path})
        assert job.status == "succeeded", job.error
        archive = scratch / "results.zip"
        shutil.make_archive(str(archive.with_suffix("")), "zip", model_folder)
        from django.core.files.base import File

        model = SegmentationModelVersion.objects.create(
            cohort=cohort,
            name="bench",
            origin="imported",
            status="ready",
            folds=list(folds),
            label_of_class={"pancreas": 1, "tumour": 2},
        )
        with archive.open("rb") as handle:
            model.results_zip.save("results.zip", File(handle))
        # Celery runs eagerly here: publishing the job on commit runs it, as a gpu worker
        # would (the task must be registered: inference.tasks).
        import inference.tasks  # noqa: F401

        started = time.perf_counter()
        segmentation = start_segmentation(cohort, model, user=user)
        platform_s = time.perf_counter() - started
        segmentation.refresh_from_db()
        assert segmentation.status == "succeeded", segmentation.error
        version = MaskVersion.objects.get(source="automatic")
        print(
            f"platform (job, storage, SEG): {platform_s:.1f} s; mask version "
            f"{version.number}, SEG {version.seg_series is not None}"
        )

        segmenter = nc.Segmenter(model_folder, folds=folds, device=device)
        out = scratch / "nnunet-out"
        (scratch / "nnunet-in").mkdir()
        shutil.copy(ct_path, scratch / "nnunet-in" / "bench_0000.nii.gz")
        started = time.perf_counter()
        # The same torch threads as the platform's prediction (``nnunet_core.cpu_threads``).
        with torch_threads(nc.cpu_threads() if device == "cpu" else None):
            segmenter.predictor.predict_from_files(
                str(scratch / "nnunet-in"),
                str(out),
                save_probabilities=False,
                overwrite=True,
                num_processes_preprocessing=1,
                num_processes_segmentation_export=1,
            )
        nnunet_s = time.perf_counter() - started
        print(f"nnU-Net's own predictor (predict_from_files): {nnunet_s:.1f} s")
        print(f"platform / nnU-Net: {platform_s / nnunet_s:.2f}x (goal: within 1.3x)")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--size", type=int, default=512, help="in-plane matrix of the large CT")
    parser.add_argument("--slices", type=int, default=300)
    parser.add_argument("--train-size", type=int, default=256)
    parser.add_argument("--train", type=int, default=8, help="training phantoms (the demo's 8)")
    parser.add_argument("--held-out", type=int, default=4)
    parser.add_argument("--model", type=Path, default=None)
    parser.add_argument("--folds", type=int, nargs="+", default=[0])
    args = parser.parse_args()
    print("synthetic data (PMPD phantoms); device", args.device)
    setup_test_environment()
    old_name = connection.creation.create_test_db(verbosity=0, autoclobber=True)
    media = tempfile.mkdtemp(prefix="pmpd-bench-media-")
    settings.MEDIA_ROOT = media
    try:
        with tempfile.TemporaryDirectory() as workdir:
            if args.model is None:
                trained = train_demo_model(
                    Path(workdir), n_train=args.train, size=args.train_size, device=args.device
                )
                folder, folds = trained.folder, list(trained.folds)
                print(f"nnU-Net validation Dice: {trained.dice_per_fold}")
            else:
                folder, folds = args.model, args.folds
            segmenter = nc.Segmenter(folder, folds=folds, device=args.device)
            held_out_dice(segmenter, n=args.held_out, size=args.train_size, first=args.train)
            platform_and_nnunet(
                folder, folds, size=args.size, slices=args.slices, device=args.device
            )
    finally:
        connection.creation.destroy_test_db(old_name, verbosity=0)
        shutil.rmtree(media, ignore_errors=True)


if __name__ == "__main__":
    main()
