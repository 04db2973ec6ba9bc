from django.apps import AppConfig


class CohortsConfig(AppConfig):
    name = "pmpd_web.cohorts"
    label = "cohorts"
    verbose_name = "Cohorts and clinical data"

    def ready(self) -> None:
        # Connects the receiver that puts this app's work right when a job stops (a light
        # module: the table reader, with pandas, is imported when a table is read).
        from . import signals  # noqa: F401
