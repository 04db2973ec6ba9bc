from django.apps import AppConfig


class JobsConfig(AppConfig):
    name = "pmpd_web.jobs"
    label = "jobs"
    verbose_name = "Background jobs"

    def ready(self) -> None:
        # The Celery app (queues, routes, retry settings) exists in every Django process, so a
        # task published by a page goes where the workers listen.
        from pmpd_web.celery import app  # noqa: F401
