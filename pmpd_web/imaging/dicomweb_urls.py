"""DICOMweb (QIDO-RS, WADO-RS, and STOW-RS of SEGs) endpoints for the OHIF viewer, under
/dicomweb/.

No trailing slashes: DICOMweb clients build these paths themselves.
"""

from django.urls import path

from . import dicomweb as views
from . import stow

STUDY = "studies/<str:study>"
SERIES = f"{STUDY}/series/<str:series>"
INSTANCE = f"{SERIES}/instances/<str:sop>"

urlpatterns = [
    path("studies", stow.studies, name="dicomweb-studies"),
    path("series", views.search_series, name="dicomweb-all-series"),
    path("instances", views.search_instances, name="dicomweb-all-instances"),
    path(STUDY, views.retrieve_study, name="dicomweb-study"),
    path(f"{STUDY}/metadata", views.study_metadata, name="dicomweb-study-metadata"),
    path(f"{STUDY}/series", views.search_series, name="dicomweb-study-series"),
    path(f"{STUDY}/instances", views.search_instances, name="dicomweb-study-instances"),
    path(SERIES, views.retrieve_series, name="dicomweb-series"),
    path(f"{SERIES}/metadata", views.series_metadata, name="dicomweb-series-metadata"),
    path(f"{SERIES}/instances", views.search_instances, name="dicomweb-series-instances"),
    path(INSTANCE, views.retrieve_instance, name="dicomweb-instance"),
    path(f"{INSTANCE}/metadata", views.instance_metadata, name="dicomweb-instance-metadata"),
    path(f"{INSTANCE}/frames/<str:frames>", views.retrieve_frames, name="dicomweb-frames"),
    path(f"{INSTANCE}/bulkdata/<str:tag>", views.retrieve_bulkdata, name="dicomweb-bulkdata"),
    path(f"{STUDY}/rendered", views.study_rendered, name="dicomweb-study-rendered"),
    path(f"{STUDY}/thumbnail", views.study_thumbnail, name="dicomweb-study-thumbnail"),
    path(f"{SERIES}/rendered", views.series_rendered, name="dicomweb-series-rendered"),
    path(f"{SERIES}/thumbnail", views.series_thumbnail, name="dicomweb-series-thumbnail"),
    path(f"{INSTANCE}/rendered", views.instance_rendered, name="dicomweb-instance-rendered"),
    path(f"{INSTANCE}/thumbnail", views.instance_thumbnail, name="dicomweb-instance-thumbnail"),
    path(
        f"{INSTANCE}/frames/<str:frames>/rendered",
        views.frame_rendered,
        name="dicomweb-frame-rendered",
    ),
]
