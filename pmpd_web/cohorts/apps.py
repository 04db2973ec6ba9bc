from django.apps import AppConfig


class CohortsConfig(AppConfig):
    name = "pmpd_web.cohorts"
    label = "cohorts"
    verbose_name = "Cohorts and clinical data"
