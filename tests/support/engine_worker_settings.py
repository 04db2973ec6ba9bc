"""Settings of the worker processes in the engine's worker test: the project's settings with a
short Redis visibility timeout.

A worker killed outright (SIGKILL of the whole process, not of a pool child) cannot give its
task back; Redis hands the unacknowledged task to another worker once the visibility timeout
has passed since it was delivered, checked when a worker starts. Deployments keep the long
timeout of ``pmpd_web.settings`` (longer than any training); the test shortens it so that the
second worker takes over at once.

``PMPD_TEST_WORK_DELAY_SECONDS`` makes each scoring call and each nnU-Net prediction of the
worker that long at least, so that the kill tests find a part in the middle of its work however
fast the model is on this machine (the work itself is unchanged: the delay comes before it).

``PMPD_TEST_KILL_WORKER_WHEN_SCORING=1`` makes each scoring call kill its own worker process with
SIGKILL, as the kernel's out-of-memory killer would on a scan too big for the host: work that
takes down every worker that tries it.
"""

import functools
import importlib
import os
import signal
import time

from pmpd_web.settings import *  # noqa: F403

CELERY_BROKER_TRANSPORT_OPTIONS = {"visibility_timeout": 2}


def _delayed(function, delay: float):
    @functools.wraps(function)
    def delayed(*args, **kwargs):
        time.sleep(delay)
        return function(*args, **kwargs)

    return delayed


def _slow_down_the_work(delay: float) -> None:
    # The modules, not the package's function of the same name; the pure cores (no Django)
    # are safe to import from settings.
    gradcam = importlib.import_module("inference.pmpd.gradcam")
    gradcam.score_and_explain = _delayed(gradcam.score_and_explain, delay)
    nnunet_core = importlib.import_module("inference.segmentation.nnunet_core")
    nnunet_core.Segmenter.predict = _delayed(nnunet_core.Segmenter.predict, delay)


if float(os.environ.get("PMPD_TEST_WORK_DELAY_SECONDS", "0")) > 0:
    _slow_down_the_work(float(os.environ["PMPD_TEST_WORK_DELAY_SECONDS"]))


def _kill_the_worker(*args, **kwargs):
    os.kill(os.getpid(), signal.SIGKILL)


if os.environ.get("PMPD_TEST_KILL_WORKER_WHEN_SCORING") == "1":
    importlib.import_module("inference.pmpd.gradcam").score_and_explain = _kill_the_worker
