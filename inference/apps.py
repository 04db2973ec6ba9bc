from django.apps import AppConfig


class InferenceConfig(AppConfig):
    name = "inference"
    verbose_name = "PMPD engine"

    def ready(self) -> None:
        # Connects the receiver that puts this app's work right when a job stops (a light
        # module: the training and scoring code is imported when a job needs it).
        from . import signals  # noqa: F401
