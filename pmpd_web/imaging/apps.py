from django.apps import AppConfig


class ImagingConfig(AppConfig):
    name = "pmpd_web.imaging"
    label = "imaging"
    verbose_name = "Imaging: uploads, ingest, DICOMweb"

    def ready(self) -> None:
        # Connects the receiver that puts this app's work right when a job stops.
        from . import uploads  # noqa: F401
