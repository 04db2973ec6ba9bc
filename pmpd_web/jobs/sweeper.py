"""The sweeper thread every worker runs: ``dispatch.sweep`` at start and then every
``PMPD_JOB_SWEEP_SECONDS`` (0 turns it off). Several workers sweeping is safe: a job is
published by one (row locks) and run once (``Job.claim``)."""

from __future__ import annotations

import logging
import threading

from django.conf import settings
from django.db import close_old_connections

log = logging.getLogger(__name__)


def _loop(interval: float, stop: threading.Event) -> None:
    from .dispatch import sweep

    while True:
        close_old_connections()
        try:
            sweep()
        except Exception:
            log.exception("job sweep failed; trying again in %s s", interval)
        if stop.wait(interval):
            return


def start_periodic_sweeps() -> threading.Event | None:
    """Start the sweeper thread; returns the event that stops it (None when turned off)."""
    interval = float(getattr(settings, "PMPD_JOB_SWEEP_SECONDS", 300))
    if interval <= 0:
        return None
    stop = threading.Event()
    thread = threading.Thread(target=_loop, args=(interval, stop), name="job-sweeper", daemon=True)
    thread.start()
    return stop
