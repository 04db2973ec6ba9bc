from django.apps import AppConfig


class InferenceConfig(AppConfig):
    name = "inference"
    verbose_name = "PMPD engine"

    def ready(self) -> None:
        # Connects the receiver that puts this app's work right when a job stops.
        from . import jobs  # noqa: F401
