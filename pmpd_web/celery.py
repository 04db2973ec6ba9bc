"""The Celery application: queues ``gpu`` (training, inference) and ``cpu`` (imports, ingest,
preprocessing, heavy analytics).

Every task is acknowledged late and re-queued when its worker dies, so a killed worker's job is
finished by another; retries are bounded by ``CELERY_TASK_MAX_RETRIES``
(``pmpd_web.jobs.tasks.job_task``). Every worker also sweeps: it publishes again the jobs the
queue lost or never received and removes what dead attempts left (``pmpd_web.jobs.sweeper``).
GPU workers take one task at a time (``--prefetch-multiplier 1 --concurrency 1``, see
docker-compose.yml).
"""

from __future__ import annotations

import os

from celery import Celery
from celery.signals import worker_ready
from kombu import Exchange, Queue

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "pmpd_web.settings")

app = Celery("pmpd_web")
app.config_from_object("django.conf:settings", namespace="CELERY")
app.conf.update(
    task_queues=(
        Queue("cpu", Exchange("cpu"), routing_key="cpu"),
        Queue("gpu", Exchange("gpu"), routing_key="gpu"),
    ),
    task_default_queue="cpu",
    task_default_exchange="cpu",
    task_default_routing_key="cpu",
    # Training and scoring need the GPU; everything else (imports, ingest, preprocessing,
    # analytics) runs on the cpu queue.
    task_routes={"inference.tasks.gpu_*": {"queue": "gpu", "routing_key": "gpu"}},
    task_acks_late=True,
    task_reject_on_worker_lost=True,
    task_track_started=True,
    worker_prefetch_multiplier=1,
    task_serializer="json",
    accept_content=["json"],
    result_backend=None,
    task_ignore_result=True,
    broker_connection_retry_on_startup=True,
    worker_hijack_root_logger=False,
)
app.autodiscover_tasks()


@worker_ready.connect
def _start_job_sweeper(**kwargs) -> None:
    from pmpd_web.jobs.sweeper import start_periodic_sweeps

    start_periodic_sweeps()
