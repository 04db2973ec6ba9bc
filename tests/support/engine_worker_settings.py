"""Settings of the worker processes in the engine's worker test: the project's settings with a
short Redis visibility timeout.

A worker killed outright (SIGKILL of the whole process, not of a pool child) cannot give its
task back; Redis hands the unacknowledged task to another worker once the visibility timeout
has passed since it was delivered, checked when a worker starts. Deployments keep the long
timeout of ``pmpd_web.settings`` (longer than any training); the test shortens it so that the
second worker takes over at once.

``PMPD_TEST_SCORING_DELAY_SECONDS`` makes each scoring call of the worker that long at least,
so that the kill test finds a part in the middle of its scoring however fast the model is on
this machine (the scoring itself is unchanged: the delay is added before it).
"""

import importlib
import os
import time

from pmpd_web.settings import *  # noqa: F403

CELERY_BROKER_TRANSPORT_OPTIONS = {"visibility_timeout": 2}


def _slow_down_scoring(delay: float) -> None:
    # The module, not the package's function of the same name; the pure core (no Django) is
    # safe to import from settings.
    gradcam = importlib.import_module("inference.pmpd.gradcam")

    score_and_explain = gradcam.score_and_explain

    def delayed(*args, **kwargs):
        time.sleep(delay)
        return score_and_explain(*args, **kwargs)

    gradcam.score_and_explain = delayed


if float(os.environ.get("PMPD_TEST_SCORING_DELAY_SECONDS", "0")) > 0:
    _slow_down_scoring(float(os.environ["PMPD_TEST_SCORING_DELAY_SECONDS"]))
