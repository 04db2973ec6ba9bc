"""The fault test of issue 9: the broker stops while a job is started, then comes back.

The test starts its own redis-server on a free port and a real worker on it, stops Redis, starts
an import from the page (the user gets a 503 that says the job is saved and will start when the
queue is back; the job row says it waits for the queue), starts Redis again on the same port,
and the worker's sweeper publishes the job: it runs exactly once.
"""

from __future__ import annotations

import contextlib
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
from kombu import pools
from tablemaker import rows, to_csv
from workers import celery_worker, wait_for

from pmpd_web.celery import app
from pmpd_web.cohorts.importer import upload_table
from pmpd_web.cohorts.models import Patient, TableImport
from pmpd_web.jobs.models import Job

pytestmark = pytest.mark.skipif(not shutil.which("redis-server"), reason="needs redis-server")


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


class RedisServer:
    """A redis-server of the test's own, without persistence, that can stop and start again."""

    def __init__(self, folder: Path) -> None:
        self.port = free_port()
        self.folder = folder
        self.process: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        self.process = subprocess.Popen(
            [
                "redis-server",
                "--port",
                str(self.port),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
                "--dir",
                str(self.folder),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        client = redis.Redis.from_url(self.url)
        wait_for(lambda: _answers(client), timeout=20, interval=0.1)

    def stop(self) -> None:
        if self.process is not None:
            self.process.terminate()
            self.process.wait(timeout=20)
            self.process = None


def _answers(client: redis.Redis) -> bool:
    try:
        return bool(client.ping())
    except redis.ConnectionError:
        return False


def _fresh_broker_connections() -> None:
    app.pool.force_close_all()
    pools.reset()
    app._pool = None
    app.amqp._producer_pool = None


@contextlib.contextmanager
def broker_at(url: str) -> Iterator[None]:
    # The read and write URLs were copied from broker_url when the app was configured.
    keys = ("broker_url", "broker_read_url", "broker_write_url")
    previous = {key: app.conf[key] for key in keys}
    app.conf.update(dict.fromkeys(keys, url))
    _fresh_broker_connections()
    try:
        yield
    finally:
        _fresh_broker_connections()
        app.conf.update(previous)


@pytest.mark.worker
@pytest.mark.django_db(transaction=True)
def test_a_job_started_while_the_broker_is_down_runs_once_when_it_is_back(
    tmp_path, settings, cohort, members, client_for
):
    settings.MEDIA_ROOT = tmp_path / "shared-media"
    app.conf.task_always_eager = False
    server = RedisServer(tmp_path)
    server.start()
    log = tmp_path / "worker.log"
    environment = {
        "CELERY_BROKER_URL": server.url,
        "DJANGO_MEDIA_ROOT": str(settings.MEDIA_ROOT),
        "PMPD_JOB_SWEEP_SECONDS": "1",
        "PMPD_JOB_SCRATCH_DIR": str(tmp_path / "scratch"),
    }
    user = members["coordinator"]
    table_import = upload_table(cohort=cohort, user=user, data=to_csv(rows(20)), filename="t.csv")
    try:
        with (
            broker_at(server.url),
            celery_worker(log=log, extra_env=environment, flush=False) as worker,
        ):
            wait_for(lambda: "ready" in log.read_text(), timeout=60, log=log)
            server.stop()
            started = time.monotonic()
            response = client_for(user).post(
                f"/cohorts/{cohort.pk}/import/{table_import.pk}/commit/"
            )
            assert time.monotonic() - started < 30, "the page waited too long for the queue"
            assert response.status_code == 503
            page = response.content.decode()
            assert "The job queue is unreachable" in page and "will start by itself" in page
            job = Job.objects.get(kind=Job.Kind.TABLE_IMPORT)
            assert job.status == "queued" and job.waiting_for_queue, job.phrase

            server.start()  # the same port

            def finished() -> bool:
                job.refresh_from_db()
                return job.finished

            wait_for(finished, timeout=120, log=log)
            assert worker.poll() is None, "the worker died with the broker"
    finally:
        server.stop()
    assert job.status == "succeeded", job.error
    assert job.attempts == 1 and job.published_at is not None
    assert Patient.objects.filter(cohort=cohort).count() == 20
    table_import.refresh_from_db()
    assert table_import.status == TableImport.Status.COMMITTED
    received = log.read_text().count("Task pmpd_web.cohorts.tasks.commit_table_import[")
    assert received >= 1
    assert log.read_text().count("succeeded in") == 1
