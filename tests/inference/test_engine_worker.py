"""Real Celery workers on the Redis of this machine score one cohort together: its parts
(preprocess on the cpu queue, score on the gpu queue) are shared by both workers, and a worker
killed with SIGKILL in the middle leaves its part to the other, with every patient scored
exactly once (acks_late, part claims, the sweeper publishing a dead worker's part again, and
scoring that skips what is already scored)."""

from __future__ import annotations

import pytest
import redis
from engine_fixtures import add_phantom_patient, make_random_version, phantom
from workers import (
    celery_worker,
    engine_environment,
    kill_mid_part,
    redis_url,
    two_engine_workers,
    wait_for,
    wait_until_finished,
)

from inference import tasks
from inference.jobs import start_scoring
from inference.models import PatientPrediction
from pmpd_web.celery import app
from pmpd_web.jobs.models import JobPart


def _assert_each_patient_scored_once(job, version, patients, logs) -> None:
    predictions = PatientPrediction.objects.filter(model_version=version)
    assert job.status == "succeeded", job.error
    assert job.progress == 100
    assert job.result["scored"] + job.result["already_scored"] == len(patients)
    assert job.result["parts"] == len(patients)
    text = "".join(log.read_text() for log in logs)
    for patient in patients:
        assert predictions.filter(patient=patient).count() == 1
        assert text.count(f"Scored {patient.study_id} with model version {version.pk}") == 1


@pytest.mark.worker
@pytest.mark.django_db(transaction=True)
def test_two_workers_share_one_cohorts_scoring(tmp_path, settings, cohort, members):
    patients = [add_phantom_patient(cohort, phantom(index), label="unknown") for index in range(6)]
    version = make_random_version(cohort, depth=10, input_size=32)
    with two_engine_workers(tmp_path, settings) as (workers, logs):
        job = start_scoring(cohort, version, user=members["coordinator"])
        wait_until_finished(job, logs)
    _assert_each_patient_scored_once(job, version, patients, logs)
    pids = {part.worker.rsplit(":", 1)[1] for part in JobPart.objects.filter(job=job)}
    assert pids == {str(worker.pid) for worker in workers}, "both workers scored parts"
    for log in logs:
        assert "Scored " in log.read_text()
        assert "cpu_preprocess_part" in log.read_text() or "gpu_score_part" in log.read_text()


@pytest.mark.worker
@pytest.mark.django_db(transaction=True)
def test_a_worker_killed_mid_way_leaves_its_part_to_the_other(tmp_path, settings, cohort, members):
    patients = [add_phantom_patient(cohort, phantom(index), label="unknown") for index in range(6)]
    # The scoring of a small model takes a fraction of a second: each scoring call of the
    # workers is delayed by three seconds (tests/support/engine_worker_settings.py), time enough
    # to kill a worker in the middle of a part whatever the speed of the machine.
    version = make_random_version(cohort, depth=10, input_size=32)
    predictions = PatientPrediction.objects.filter(model_version=version)
    delayed = {"PMPD_TEST_WORK_DELAY_SECONDS": "3"}
    with two_engine_workers(tmp_path, settings, **delayed) as (workers, logs):
        job = start_scoring(cohort, version, user=members["coordinator"])

        running, pid = kill_mid_part(
            job, workers, logs, patients_done=predictions.values_list("patient_id", flat=True)
        )
        wait_until_finished(job, logs)
    _assert_each_patient_scored_once(job, version, patients, logs)
    taken_over = JobPart.objects.get(pk=running.pk)
    assert taken_over.status == "done" and taken_over.attempts >= 2
    assert taken_over.worker.rsplit(":", 1)[1] != str(pid), "the other worker finished it"


def _died_or_finished(worker, job) -> bool:
    job.refresh_from_db()
    return worker.poll() is not None or job.finished


@pytest.mark.worker
@pytest.mark.django_db(transaction=True)
def test_a_patient_that_kills_every_worker_fails_the_job_naming_it(
    tmp_path, settings, cohort, members
):
    """A scan that kills its worker each time (the out-of-memory killer on a host too small)
    is tried PMPD_JOB_MAX_WORKERS_LOST times, then the job fails naming the patient; it does
    not take down worker after worker for ever."""
    add_phantom_patient(cohort, phantom(0), study_id="HUGE-SCAN-01", label="unknown")
    version = make_random_version(cohort, depth=10, input_size=32)
    environment = {
        **engine_environment(settings.MEDIA_ROOT),
        "PMPD_TEST_KILL_WORKER_WHEN_SCORING": "1",
        "PMPD_JOB_MAX_WORKERS_LOST": "2",
    }
    app.conf.task_always_eager = False
    redis.Redis.from_url(redis_url()).flushdb()
    job = start_scoring(cohort, version, user=members["coordinator"])
    started = 0
    # A fresh worker each time the last one died (a supervisor restarting it), at most 4.
    while started < 4 and not job.finished:
        log = tmp_path / f"worker-{started}.log"
        with celery_worker(queues="gpu,cpu", log=log, extra_env=environment, flush=False) as worker:
            started += 1
            wait_for(lambda: _died_or_finished(worker, job), timeout=120, log=log)
    job.refresh_from_db()
    part = JobPart.objects.get(job=job)
    assert job.status == "failed" and part.workers_lost == 2, (job.status, part.workers_lost)
    assert started == 3, "two workers died, the third gave the job up"
    assert job.error.startswith(
        "The worker stopped 2 times on part 1 of 1 (patient HUGE-SCAN-01) before finishing"
    )
    assert not PatientPrediction.objects.filter(model_version=version).exists()


def test_the_engine_tasks_are_routed_and_retried_as_the_architecture_says():
    route = app.amqp.router.route
    for task in (tasks.gpu_train_model, tasks.gpu_score_cohort, tasks.gpu_score_part):
        assert route({}, task.name)["queue"].name == "gpu"
        assert task.max_retries == 3 and task.acks_late
    for task in (tasks.cpu_preprocess_patient, tasks.cpu_preprocess_part):
        assert route({}, task.name)["queue"].name == "cpu"
        assert task.acks_late and task.reject_on_worker_lost
    assert app.conf.task_reject_on_worker_lost and app.conf.worker_prefetch_multiplier == 1
