"""Settings of the worker processes in the engine's worker test: the project's settings with a
short Redis visibility timeout.

A worker killed outright (SIGKILL of the whole process, not of a pool child) cannot give its
task back; Redis hands the unacknowledged task to another worker once the visibility timeout
has passed since it was delivered, checked when a worker starts. Deployments keep the long
timeout of ``pmpd_web.settings`` (longer than any training); the test shortens it so that the
second worker takes over at once.
"""

from pmpd_web.settings import *  # noqa: F403

CELERY_BROKER_TRANSPORT_OPTIONS = {"visibility_timeout": 2}
