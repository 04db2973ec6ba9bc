from django.apps import AppConfig


class ImagingConfig(AppConfig):
    name = "pmpd_web.imaging"
    label = "imaging"
    verbose_name = "Imaging: uploads, ingest, DICOMweb"
