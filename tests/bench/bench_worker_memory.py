"""Benchmark: peak memory (RSS) of a worker process scoring one patient.

The parent writes one phantom patient (a 512-matrix CT with its mask, the thinnest slices of
the first phantoms of the seed: the largest volume) and five fold checkpoints of ResNet50
PMPDNet at 224 pixels with random weights. A fresh child process then does what a gpu worker
does for a scoring job: Django set up on a throw-away SQLite database, the patient and the model
version in it, and ``inference.jobs.execute_scoring`` (the body of ``gpu_score_cohort``:
read the canonical volumes, preprocess, load the five fold models, score, Grad-CAM, store).

Prints the child's resident memory after start-up (Django, torch and the database: the
baseline of any worker) and its peak, beside the goal (under 2 GB); and the time taken.
Asserts nothing.

    PYTHONPATH=. .venv/bin/python tests/bench/bench_worker_memory.py [--size 512]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path[:0] = [str(REPO), str(REPO / "tests" / "support")]

GOAL_MB = 2048
DEPTH, INPUT_SIZE, N_FOLDS = 50, 224, 5


def memory_mb(field: str) -> float:
    """VmRSS (now) or VmHWM (peak) of this process, in MB."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    return float("nan")


def prepare(work: Path, *, size: int, seed: int) -> dict:
    """The phantom's NIfTI files and the random fold checkpoints, written by the parent."""
    from fold_checkpoints import write_random_fold_checkpoints

    from inference.pmpd.phantom import PhantomConfig, generate_patient, write_nifti
    from inference.pmpd.preprocess import PreprocessConfig

    config = PhantomConfig(size=size)
    candidates = [generate_patient(index, seed=seed, config=config) for index in range(6)]
    patient = min(candidates, key=lambda case: case.spacing[2])
    ct, mask = write_nifti(patient, work / "volumes")
    checkpoints = write_random_fold_checkpoints(
        work / "folds",
        depth=DEPTH,
        input_size=INPUT_SIZE,
        n_folds=N_FOLDS,
        preprocess_config=PreprocessConfig(input_size=INPUT_SIZE),
    )
    return {
        "ct": str(ct),
        "mask": str(mask),
        "checkpoints": [str(path) for path in checkpoints],
        "shape": list(patient.ct.shape),
        "spacing": list(patient.spacing),
        "study_id": patient.study_id,
    }


def child(work: Path) -> None:
    """The worker: set up, then score the patient as the gpu task does."""
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "pmpd_web.settings")
    import django

    django.setup()
    import torch  # noqa: F401 (a worker has torch loaded before its first task)
    from django.conf import settings
    from django.core.files import File
    from django.core.files.storage import default_storage
    from django.db import connection
    from django.test.utils import setup_test_environment

    from inference.jobs import create_scoring, execute_scoring
    from inference.models import ModelVersion, PatientPrediction
    from inference.registry import TrainingChoices, new_model_version
    from pmpd_web.cohorts.models import Cohort, Patient
    from pmpd_web.imaging.models import CanonicalVolume, ImageSeries, ImagingStudy

    inputs = json.loads((work / "inputs.json").read_text())
    setup_test_environment()
    settings.MEDIA_ROOT = work / "media"
    connection.creation.create_test_db(verbosity=0, autoclobber=True)

    def stored(path: str, name: str) -> str:
        with open(path, "rb") as handle:
            return default_storage.save(name, File(handle))

    cohort = Cohort.objects.create(name="bench", is_synthetic=True)
    patient = Patient.objects.create(cohort=cohort, study_id=inputs["study_id"])
    study = ImagingStudy.objects.create(patient=patient, study_instance_uid="2.25.1")
    series = ImageSeries.objects.create(
        study=study, series_instance_uid="2.25.2", modality="CT", is_selected=True
    )
    for kind in ("ct", "mask"):
        digest = hashlib.sha256(Path(inputs[kind]).read_bytes()).hexdigest()
        CanonicalVolume.objects.create(
            patient=patient,
            series=series,
            kind=kind,
            file=stored(inputs[kind], f"volumes/{kind}.nii.gz"),
            content_hash=digest,
        )
    train_config, preprocess_config = TrainingChoices(
        depth=DEPTH, input_size=INPUT_SIZE, n_folds=N_FOLDS
    ).configs()
    version = new_model_version(
        cohort,
        name="random ResNet50",
        user=None,
        train_config=train_config,
        preprocess_config=preprocess_config,
    )
    files = [
        stored(path, f"models/{version.pk}/{Path(path).name}") for path in inputs["checkpoints"]
    ]
    ModelVersion.objects.filter(pk=version.pk).update(status=ModelVersion.Status.READY, files=files)
    version.refresh_from_db()
    job = create_scoring(cohort, version, user=None)
    baseline = memory_mb("VmRSS")
    started = time.perf_counter()
    execute_scoring(job.pk)
    seconds = time.perf_counter() - started
    job.refresh_from_db()
    prediction = PatientPrediction.objects.get(patient=patient)
    print(
        json.dumps(
            {
                "status": job.status,
                "error": job.error,
                "baseline_mb": baseline,
                "peak_mb": memory_mb("VmHWM"),
                "seconds": seconds,
                "mrs": prediction.metastasis_risk_score,
                "slices": prediction.n_slices,
                "database": connection.vendor,
            }
        )
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=512, help="phantom in-plane matrix")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--child", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child is not None:
        child(args.child)
        return
    with tempfile.TemporaryDirectory(prefix="pmpd-bench-memory-") as folder:
        work = Path(folder)
        inputs = prepare(work, size=args.size, seed=args.seed)
        (work / "inputs.json").write_text(json.dumps(inputs))
        print(
            f"patient: CT {inputs['shape']} (z, y, x) voxels at {inputs['spacing']} mm; "
            f"model: {N_FOLDS} folds of PMPDNet ResNet{DEPTH} at {INPUT_SIZE} px, random weights"
        )
        completed = subprocess.run(
            [sys.executable, __file__, "--child", str(work)],
            capture_output=True,
            text=True,
            cwd=REPO,
            # A throw-away SQLite database: the benchmark never touches a shared server.
            env={
                **os.environ,
                "PYTHONPATH": str(REPO),
                "DATABASE_URL": f"sqlite:///{work / 'bench.sqlite3'}",
            },
        )
        peak_children_mb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
        if completed.returncode != 0:
            print(completed.stdout[-3000:], completed.stderr[-3000:])
            raise SystemExit(f"the worker process failed (exit {completed.returncode})")
        result = json.loads(completed.stdout.strip().splitlines()[-1])
    if result["status"] != "succeeded":
        raise SystemExit(f"the scoring job {result['status']}: {result['error']}")
    print(
        f"worker after start-up (Django, torch, {result['database']} database): "
        f"{result['baseline_mb']:.0f} MB"
    )
    print(
        f"worker peak while scoring one patient: {result['peak_mb']:.0f} MB "
        f"(getrusage of the child: {peak_children_mb:.0f} MB); goal under {GOAL_MB} MB: "
        f"{'met' if result['peak_mb'] < GOAL_MB else 'NOT met'}"
    )
    print(
        f"scoring took {result['seconds']:.1f} s on this machine ({result['slices']} slices, "
        f"MRS {result['mrs']:.3f}); read it as a person would, the cores may be shared"
    )


if __name__ == "__main__":
    main()
