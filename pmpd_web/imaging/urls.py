"""Pages and API of image uploads and ingest (the DICOMweb endpoints are in dicomweb_urls)."""

urlpatterns: list = []
