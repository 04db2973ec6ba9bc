"""Starting a real Celery worker process against the Redis of this machine, for tests."""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import redis
from django.db import connection

REPO = Path(__file__).resolve().parents[2]


def redis_url() -> str:
    return os.environ.get("PMPD_TEST_REDIS_URL", "redis://127.0.0.1:6379/15")


def database_url() -> str:
    """The URL of the database the test is using, for the worker process to share."""
    settings = connection.settings_dict
    if connection.vendor == "postgresql":
        user = settings.get("USER") or "postgres"
        host = settings.get("HOST") or "127.0.0.1"
        port = settings.get("PORT") or 5432
        return f"postgres://{user}@{host}:{port}/{settings['NAME']}"
    return f"sqlite:///{settings['NAME']}"


@contextlib.contextmanager
def celery_worker(
    *, queues: str = "cpu", log: Path, extra_env: dict | None = None, flush: bool = True
) -> Iterator[subprocess.Popen]:
    """A worker process on the test Redis; ``flush=False`` keeps what is queued there (e.g.
    the unacknowledged task of a worker that was killed, for this one to finish)."""
    if flush:
        redis.Redis.from_url(redis_url()).flushdb()
    env = {
        **os.environ,
        "DATABASE_URL": database_url(),
        "CELERY_BROKER_URL": redis_url(),
        "CELERY_TASK_ALWAYS_EAGER": "0",
        # The worker's sweeper tidies this folder: never the one of a demo on the same machine.
        "PMPD_JOB_SCRATCH_DIR": str(log.parent / "job-scratch"),
        **(extra_env or {}),
    }
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "celery",
            "-A",
            "pmpd_web",
            "worker",
            "-Q",
            queues,
            "--pool",
            "solo",
            "--concurrency",
            "1",
            "--loglevel",
            "INFO",
            "--without-gossip",
            "--without-mingle",
            "--without-heartbeat",
        ],
        cwd=REPO,
        env=env,
        stdout=log.open("w"),
        stderr=subprocess.STDOUT,
    )
    try:
        yield process
    finally:
        process.terminate()
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()


def wait_for(predicate, *, timeout: float, interval: float = 0.3, log: Path | None = None):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    detail = log.read_text()[-3000:] if log and log.exists() else ""
    raise AssertionError(f"timed out after {timeout}s\n{detail}")


def engine_environment(media_root) -> dict[str, str]:
    return {
        "DJANGO_MEDIA_ROOT": str(media_root),
        "DJANGO_SETTINGS_MODULE": "engine_worker_settings",
        "PYTHONPATH": os.pathsep.join(
            filter(None, [str(REPO / "tests" / "support"), os.environ.get("PYTHONPATH")])
        ),
        "OMP_NUM_THREADS": "1",
        # One patient per part, so that two workers share even a small cohort; a dead worker's
        # part is seen as lost after a few seconds and published again by the other's sweeper.
        "PMPD_SCORING_PATIENTS_PER_PART": "1",
        "PMPD_SEGMENTATION_PATIENTS_PER_PART": "1",
        "PMPD_JOB_HEARTBEAT_SECONDS": "1",
        "PMPD_JOB_HEARTBEAT_STALE_SECONDS": "6",
        "PMPD_JOB_SWEEP_SECONDS": "2",
    }


@contextlib.contextmanager
def two_engine_workers(tmp_path: Path, settings, **extra_env: str):
    """Two worker processes on the gpu and cpu queues of the test Redis, sharing the test's
    database and media folder (``engine_worker_settings``); ``extra_env`` adds to their
    environment (e.g. ``PMPD_TEST_WORK_DELAY_SECONDS``). Yields the processes and their logs."""
    import pytest

    from pmpd_web.celery import app

    if app.conf.broker_url != redis_url():
        pytest.fail(f"run the tests with CELERY_BROKER_URL={redis_url()} (make test does)")
    app.conf.task_always_eager = False
    logs = [tmp_path / "first-worker.log", tmp_path / "second-worker.log"]
    environment = {**engine_environment(settings.MEDIA_ROOT), **extra_env}
    with (
        celery_worker(queues="gpu,cpu", log=logs[0], extra_env=environment) as first,
        celery_worker(queues="gpu,cpu", log=logs[1], extra_env=environment, flush=False) as second,
    ):
        yield [first, second], logs


def wait_until_finished(job, logs: list[Path], *, timeout: float = 300) -> None:
    def finished() -> bool:
        job.refresh_from_db()
        return job.finished

    wait_for(finished, timeout=timeout, log=logs[-1])


def kill_mid_part(job, workers, logs, *, patients_done) -> tuple[Any, int]:
    """Once a first patient of ``job`` is done, SIGKILL the worker of a part that is running
    and has not stored its patients yet (one that just stored them may be done, or have stored
    but not logged, by the time the kill lands); ``patients_done`` is a queryset of the
    patient IDs stored so far. Returns the part and the killed worker's PID, the job still
    running."""
    import signal

    from pmpd_web.jobs.models import JobPart

    def a_part_running_after_the_first_patient():
        done = set(patients_done.all())  # .all(): a fresh query, not the queryset's cache
        if not done:
            return None
        running = JobPart.objects.filter(job=job, status="running")
        return next((p for p in running if not done & set(p.payload["patients"])), None)

    running = wait_for(
        a_part_running_after_the_first_patient, timeout=240, interval=0.1, log=logs[0]
    )
    pid = int(running.worker.rsplit(":", 1)[1])
    victim = next(worker for worker in workers if worker.pid == pid)
    os.kill(pid, signal.SIGKILL)
    victim.wait(timeout=30)
    job.refresh_from_db()
    assert job.status == "running", "the job ended before a worker could be killed"
    return running, pid
