"""Benchmark: a phantom cohort scored end to end by one and by two real Celery workers, beside
the model-only throughput on the same patches, in the same run (issue 14, item 2).

Everything is synthetic: phantom CTs with their masks (``inference.pmpd.phantom``) and a model
version whose five fold checkpoints have random weights (the model version is named in the
output; no operating point is chosen on synthetic data, each fold keeps the default
thresholds of its checkpoint). End to end is what a scoring job does: read the canonical
volumes, preprocess (cpu queue), score with the five fold models in batches across the part's
patients, draw and store the Grad-CAM overlays, store the predictions (gpu queue). Both runs
start from an empty preprocessing cache and no predictions; the clock runs from the job's
start to its last part, with the workers already started.

Two layouts of the workers:
- ``shared`` (the default without CUDA): each worker takes both queues, as on this 2-core
  machine; 1 then 2 workers (goal: 2 workers >= 1.7x one).
- ``gpu-host`` (the default with CUDA): 1, 2 then 4 workers on the gpu queue (several worker
  processes can share one GPU: each one's CPU work, reading patches and storing overlays, runs
  beside the others'), beside ``--cpu-workers`` workers on the cpu queue (all cores but two by
  default) that preprocess the parts ahead of them, as on a GPU host; the model defaults to
  the paper's ResNet50 at 224.

Prints patients/s of each run with where its scoring steps spent their time (prepare: the
part's patients and their cached patches; models: scores and Grad-CAM; store: overlays and
predictions), and the model-only rate (``score_patients`` over the same patches in this process,
in parts as the workers score them) with the end-to-end share of it (goal on a GPU: >= 50%).
On a GPU the figures are also written to tests/bench/results/bench_scoring_<device>_<date>.json.

    PYTHONPATH=. .venv/bin/python tests/bench/bench_scoring.py [--patients 200] [--size 64]
        [--layout shared|gpu-host] [--scoring-workers 1 2] [--cpu-workers N] [--depth 10]
        [--input-size 32] [--rotations 1]

On CUDA the defaults are the gpu-host layout, 1 2 4 scoring workers, ResNet50 at 224 and six
rotations per slice in the version's preprocessing (the paper's), as a real version has.

The database and broker are throw-away ones in a temporary folder (SQLite and the file-system
broker of the embedded default) unless DATABASE_URL / CELERY_BROKER_URL name others.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path[:0] = [str(REPO), str(REPO / "tests" / "support")]


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--patients", type=int, default=200)
    parser.add_argument("--size", type=int, default=64, help="phantom in-plane matrix")
    parser.add_argument(
        "--depth", type=int, default=None, help="ResNet depth of the folds (10; 50 on CUDA)"
    )
    parser.add_argument(
        "--input-size", type=int, default=None, help="patch size in pixels (32; 224 on CUDA)"
    )
    parser.add_argument(
        "--rotations",
        type=int,
        default=None,
        help="training rotations per slice in the version's preprocessing (1; 6 on CUDA, as the "
        "paper's): the cache holds them all, scoring reads the un-rotated patches",
    )
    parser.add_argument("--per-part", type=int, default=4, help="patients per part")
    parser.add_argument("--timeout", type=float, default=1800, help="seconds per run")
    parser.add_argument(
        "--layout",
        choices=["auto", "shared", "gpu-host"],
        default="auto",
        help="workers on both queues (shared), or on the gpu queue beside cpu-queue workers "
        "(gpu-host); auto: gpu-host with CUDA",
    )
    parser.add_argument(
        "--scoring-workers",
        type=int,
        nargs="+",
        default=None,
        help="the numbers of scoring workers to run with, in turn (1 2; 1 2 4 on CUDA: several "
        "worker processes can share one GPU)",
    )
    parser.add_argument(
        "--cpu-workers",
        type=int,
        default=max(1, (os.cpu_count() or 1) - 2),
        help="cpu-queue workers beside the gpu workers (gpu-host)",
    )
    args = parser.parse_args()
    import torch

    cuda = torch.cuda.is_available()
    if args.layout == "auto":
        args.layout = "gpu-host" if cuda else "shared"
    if args.depth is None:
        args.depth = 50 if cuda else 10
    if args.input_size is None:
        args.input_size = 224 if cuda else 32
    if args.rotations is None:
        args.rotations = 6 if cuda else 1
    if args.scoring_workers is None:
        args.scoring_workers = [1, 2, 4] if cuda else [1, 2]
    if not {1, 2} <= set(args.scoring_workers):
        parser.error("--scoring-workers must include 1 and 2 (their ratio is the figure)")
    return args


def set_up_environment(work: Path) -> None:
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "pmpd_web.settings")
    os.environ.setdefault("DATABASE_URL", f"sqlite:///{work / 'bench.sqlite3'}")
    os.environ["PMPD_DATA_DIR"] = str(work / "data")
    os.environ["DJANGO_MEDIA_ROOT"] = str(work / "media")
    os.environ["PMPD_JOB_SCRATCH_DIR"] = str(work / "scratch")
    os.environ.setdefault("CELERY_BROKER_URL", "filesystem://")
    os.environ["CELERY_TASK_ALWAYS_EAGER"] = "0"


def build_cohort(args: argparse.Namespace, name: str, n_patients: int, *, first: int = 0):
    from engine_fixtures import add_phantom_patient
    from factories import make_cohort

    from inference.pmpd.phantom import PhantomConfig, generate_patient

    cohort = make_cohort(name)
    config = PhantomConfig(size=args.size)
    patients = [
        add_phantom_patient(
            cohort, generate_patient(index, seed=41, config=config), label="unknown"
        )
        for index in range(first, first + n_patients)
    ]
    return cohort, patients


def forget_results(version) -> None:
    """No predictions and an empty preprocessing cache: the next run does everything."""
    from inference.models import PatientPrediction, PreprocessedPatient

    PatientPrediction.objects.filter(model_version=version).delete()
    PreprocessedPatient.objects.all().delete()


def score_with_workers(
    cohort, warm_up, version, n_workers: int, work: Path, args
) -> tuple[float, dict[str, float]]:
    """Seconds from the job's start to its end with ``n_workers`` scoring workers running
    (after they scored the warm-up cohort), and the scoring steps' time by stage."""
    from workers import celery_worker, wait_for

    import inference.tasks  # noqa: F401 (registers the tasks the job names)
    from inference.jobs import start_scoring
    from inference.models import PatientPrediction
    from pmpd_web.jobs.models import Job

    environment = {
        "CELERY_BROKER_URL": os.environ["CELERY_BROKER_URL"],
        "OMP_NUM_THREADS": "1",
        "PMPD_SCORING_PATIENTS_PER_PART": str(args.per_part),
        "PMPD_JOB_SWEEP_SECONDS": "0",
    }
    if args.layout == "shared":
        queues = ["gpu,cpu"] * n_workers
    else:
        queues = ["gpu"] * n_workers + ["cpu"] * args.cpu_workers
    logs = [work / f"run-{n_workers}-worker-{k}.log" for k in range(len(queues))]
    with _workers(celery_worker, queues, logs, environment):
        for log in logs:
            wait_for(lambda log=log: "ready" in log.read_text(), timeout=120, log=log)

        def run(scored_cohort) -> Job:
            job = start_scoring(scored_cohort, version, user=None)

            def finished() -> bool:
                job.refresh_from_db()
                return job.finished

            wait_for(finished, timeout=args.timeout, interval=0.2, log=logs[0])
            return job

        PatientPrediction.objects.filter(patient__cohort=warm_up).delete()
        run(warm_up)
        started = time.perf_counter()
        job = run(cohort)
        seconds = time.perf_counter() - started
    if job.status != "succeeded" or job.result["scored"] != args.patients:
        raise SystemExit(f"the {n_workers}-worker run did not score every patient: {job.result}")
    return seconds, job.result["scoring_step_seconds"]


class _workers:
    """Several ``celery_worker`` contexts at once."""

    def __init__(self, start, queues, logs, environment) -> None:
        self.contexts = [
            start(queues=names, log=log, extra_env=environment, flush=False)
            for names, log in zip(queues, logs, strict=True)
        ]

    def __enter__(self):
        return [context.__enter__() for context in self.contexts]

    def __exit__(self, *exc_info):
        for context in reversed(self.contexts):
            context.__exit__(*exc_info)


def model_only_rate(version, patients, per_part: int) -> float:
    """Patients/s of ``score_patients`` alone over the cached patches, in parts as the workers
    score them, on one thread as each worker runs."""
    import torch

    from inference.cache import preprocessed_for
    from inference.pmpd.predict import score_patients
    from inference.registry import fold_models_of, preprocess_config_of

    torch.set_num_threads(1)
    config = preprocess_config_of(version)
    stacks = [preprocessed_for(patient, config).inference_patches() for patient in patients]
    fold_models = fold_models_of(version)
    score_patients(stacks[:per_part], fold_models)  # warm-up
    started = time.perf_counter()
    for start in range(0, len(stacks), per_part):
        score_patients(stacks[start : start + per_part], fold_models)
    return len(stacks) / (time.perf_counter() - started)


def main() -> None:
    args = parse_args()
    with tempfile.TemporaryDirectory(prefix="pmpd-bench-scoring-") as folder:
        work = Path(folder)
        set_up_environment(work)
        import django

        django.setup()
        import torch
        from django.core.management import call_command

        call_command("migrate", verbosity=0)
        from engine_fixtures import make_random_version

        t0 = time.perf_counter()
        cohort, patients = build_cohort(args, "Synthetic phantom cohort", args.patients)
        # Scored first by each set of workers, untimed: torch, the engine and the fold models
        # load in every worker before the clock starts.
        warm_up, _ = build_cohort(args, "Warm-up cohort", 4 * args.per_part, first=args.patients)
        version = make_random_version(
            cohort,
            name="random-weights (synthetic)",
            depth=args.depth,
            input_size=args.input_size,
            rotation_angles_deg=tuple(360.0 * k / args.rotations for k in range(args.rotations)),
        )
        print(
            f"{args.patients} synthetic phantom patients ({args.size}^2) written in "
            f"{time.perf_counter() - t0:.0f} s; model version {version.name}: ResNet{args.depth}"
            f" at {args.input_size} px, {args.rotations} rotation(s) per slice in the cache, five"
            f" folds with random weights, each fold's default thresholds; {args.per_part} "
            "patients per part",
            flush=True,
        )
        layout = (
            "each worker on both queues"
            if args.layout == "shared"
            else f"gpu-queue workers beside {args.cpu_workers} cpu-queue workers"
        )
        print(f"layout {args.layout}: {layout}", flush=True)
        rates, stages = {}, {}
        for n_workers in args.scoring_workers:
            forget_results(version)
            seconds, stages[n_workers] = score_with_workers(
                cohort, warm_up, version, n_workers, work, args
            )
            rates[n_workers] = args.patients / seconds
            steps = stages[n_workers]
            print(
                f"end to end, {n_workers} scoring worker(s): {seconds:.1f} s, "
                f"{rates[n_workers]:.2f} patients/s; the scoring steps spent "
                f"{steps['prepare']:.1f} s preparing, {steps['score_and_explain']:.1f} s in the "
                f"models (scores and Grad-CAM), {steps['store']:.1f} s storing",
                flush=True,
            )
        model_rate = model_only_rate(version, patients, args.per_part)
        speed_up = rates[2] / rates[1]
        device = "cuda" if torch.cuda.is_available() else "cpu"
        print(f"2 workers / 1 worker: {speed_up:.2f}x (goal >= 1.7x)")
        shares = ", ".join(
            f"with {n} worker(s) {rate / model_rate:.0%}" for n, rate in rates.items()
        )
        print(
            f"model only (same patches, one process, {device}): {model_rate:.2f} patients/s; "
            f"end to end {shares} of it (goal on a GPU >= 50%)"
        )
        if device == "cuda":
            figures = {
                "device": torch.cuda.get_device_name(0),
                "date": datetime.date.today().isoformat(),
                "synthetic": True,
                "model_version": version.name,
                "arguments": vars(args),
                "patients_per_second": {f"{n} workers": rate for n, rate in rates.items()},
                "scoring_step_seconds": {f"{n} workers": stage for n, stage in stages.items()},
                "speed_up_2_workers": speed_up,
                "model_only_patients_per_second": model_rate,
                "end_to_end_share_of_model_only": {
                    f"{n} workers": rate / model_rate for n, rate in rates.items()
                },
            }
            results = REPO / "tests" / "bench" / "results"
            name = f"bench_scoring_{device}_{figures['date']}.json"
            (results / name).write_text(json.dumps(figures, indent=2) + "\n")
            print(f"figures written to {results / name}")


if __name__ == "__main__":
    main()
