"""A real Celery worker on the Redis of this machine scores a cohort; killed in the middle, the
job is finished by another worker with every patient scored exactly once (acks_late,
reject_on_worker_lost, and scoring that skips what is already scored)."""

from __future__ import annotations

import signal

import pytest
from engine_fixtures import add_phantom_patient, make_random_version, phantom
from workers import REPO, celery_worker, redis_url, wait_for

from inference.jobs import start_scoring
from inference.models import PatientPrediction
from pmpd_web.celery import app
from pmpd_web.jobs.models import Job

N_PATIENTS = 4


@pytest.mark.worker
@pytest.mark.django_db(transaction=True)
def test_a_killed_workers_scoring_job_is_finished_by_another(tmp_path, settings, cohort, members):
    if app.conf.broker_url != redis_url():
        pytest.fail(f"run the tests with CELERY_BROKER_URL={redis_url()} (make test does)")
    patients = [
        add_phantom_patient(cohort, phantom(index), label="unknown") for index in range(N_PATIENTS)
    ]
    # Random ResNet18 weights at 64 pixels on one thread: a few seconds per patient (five fold
    # models and their Grad-CAM), time enough to kill the worker between two patients.
    version = make_random_version(cohort, depth=18, input_size=64)
    environment = {
        "DJANGO_MEDIA_ROOT": str(settings.MEDIA_ROOT),
        "DJANGO_SETTINGS_MODULE": "engine_worker_settings",
        "PYTHONPATH": str(REPO / "tests" / "support"),
        "OMP_NUM_THREADS": "1",
    }
    first_log, second_log = tmp_path / "first-worker.log", tmp_path / "second-worker.log"
    predictions = PatientPrediction.objects.filter(model_version=version)
    app.conf.task_always_eager = False
    with celery_worker(queues="gpu,cpu", log=first_log, extra_env=environment) as first:
        job = start_scoring(cohort, version, user=members["coordinator"])

        def first_patient_scored() -> bool:
            return predictions.exists()

        wait_for(first_patient_scored, timeout=240, interval=0.1, log=first_log)
        job.refresh_from_db()
        assert job.status == "running", "the job ended before the worker could be killed"
        first.send_signal(signal.SIGKILL)
        first.wait(timeout=30)
    scored_by_the_first = predictions.count()
    assert 1 <= scored_by_the_first < N_PATIENTS

    with celery_worker(queues="gpu,cpu", log=second_log, extra_env=environment, flush=False):

        def finished() -> bool:
            job.refresh_from_db()
            return job.finished

        wait_for(finished, timeout=240, log=second_log)

    assert job.status == "succeeded", job.error
    assert job.result["already_scored"] == scored_by_the_first
    assert job.result["scored"] == N_PATIENTS - scored_by_the_first
    assert predictions.count() == N_PATIENTS
    logs = first_log.read_text() + second_log.read_text()
    for patient in patients:
        assert predictions.filter(patient=patient).count() == 1
        assert logs.count(f"Scored {patient.study_id} with model version {version.pk}") == 1
    assert "gpu_score_cohort" in second_log.read_text()
    assert Job.objects.get(pk=job.pk).progress == 100


def test_the_engine_tasks_are_routed_and_retried_as_the_architecture_says():
    from inference import tasks

    route = app.amqp.router.route
    for task in (tasks.gpu_train_model, tasks.gpu_score_cohort):
        assert route({}, task.name)["queue"].name == "gpu"
        assert task.max_retries == 3 and task.acks_late
    assert route({}, tasks.cpu_preprocess_patient.name)["queue"].name == "cpu"
    assert app.conf.task_reject_on_worker_lost and app.conf.worker_prefetch_multiplier == 1
