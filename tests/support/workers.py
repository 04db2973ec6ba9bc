"""Starting a real Celery worker process against the Redis of this machine, for tests."""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

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
