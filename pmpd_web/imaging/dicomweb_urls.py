"""DICOMweb (QIDO-RS, WADO-RS) endpoints for the OHIF viewer, under /dicomweb/."""

urlpatterns: list = []
