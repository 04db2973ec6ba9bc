"""The PMPD clinical-research platform (Django project).

The Celery app is built when Django starts (``JobsConfig.ready``) or when a worker names it
(``celery -A pmpd_web``), not on every import of this package: the Django-free modules
(de-identification, DICOM series reading, volumes, the table format) import without it.
"""

from __future__ import annotations

from typing import Any


def __getattr__(name: str) -> Any:
    if name == "celery_app":
        from .celery import app

        return app
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
