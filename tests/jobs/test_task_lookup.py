"""A job started in a process that imported no task module (the web server, a management
command such as ``setup_demo``) is published: its task is found by name. The inference jobs
name their tasks rather than import them, and only workers discover task modules, so before
this a coordinator's "Train" or "Predict masks" in the web answered with Celery's
NotRegistered, and ``make demo`` stopped at the demo nnU-Net."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]

TASKS = [
    "inference.tasks.gpu_train_model",
    "inference.tasks.gpu_score_cohort",
    "inference.tasks.gpu_train_segmentation_model",
    "inference.tasks.gpu_predict_masks",
]

PROGRAM = """
import django
django.setup()
from celery import current_app
from inference.jobs import SCORING_TASK, TRAINING_TASK
from inference.segmentation_jobs import SEGMENTATION_TASK, SEGMENTATION_TRAINING_TASK
from pmpd_web.jobs.dispatch import registered_task

names = [TRAINING_TASK, SCORING_TASK, SEGMENTATION_TRAINING_TASK, SEGMENTATION_TASK]
assert not any(name in current_app.tasks for name in names), "a task module was imported"
for name in names:
    print(registered_task(name).name)
"""


def test_a_fresh_process_finds_every_inference_task_by_name():
    env = {**os.environ, "DJANGO_SETTINGS_MODULE": "pmpd_web.settings", "PYTHONPATH": str(REPO)}
    done = subprocess.run(
        [sys.executable, "-c", PROGRAM],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.split() == TASKS
