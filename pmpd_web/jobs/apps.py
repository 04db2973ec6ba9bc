from django.apps import AppConfig


class JobsConfig(AppConfig):
    name = "pmpd_web.jobs"
    label = "jobs"
    verbose_name = "Background jobs"
