import pytest, io
from factories import make_patient
from imagemaker import small_patient, dicom_series, ingest, folder_files, write_volume
from pmpd_web.imaging.models import *

pytestmark = pytest.mark.django_db

def test_pages(cohort, members, tmp_path, client_for):
    p = small_patient()
    make_patient(cohort, p.study_id)
    dicom_series(p, tmp_path / "in" / p.study_id / "ct")
    write_volume(p.mask, p, tmp_path / "in" / p.study_id / "mask.nii.gz")
    upload, job = ingest(cohort, members["coordinator"], folder_files(tmp_path / "in", "drop/"))
    c = client_for(members["coordinator"])
    for url in [f"/cohorts/{cohort.pk}/", f"/cohorts/{cohort.pk}/images/", f"/cohorts/{cohort.pk}/images/uploads/{upload.pk}/",
                f"/cohorts/{cohort.pk}/images/uploads/{upload.pk}/status/", f"/cohorts/{cohort.pk}/patients/{p.study_id}/images/",
                f"/api/cohorts/{cohort.pk}/image-uploads/", f"/api/cohorts/{cohort.pk}/image-uploads/{upload.pk}/",
                f"/api/cohorts/{cohort.pk}/image-uploads/{upload.pk}/files/", f"/api/cohorts/{cohort.pk}/image-series/", "/api/schema/"]:
        r = c.get(url)
        print(url, r.status_code, len(r.content))
        assert r.status_code == 200, r.content[:2000]
    print(c.get(f"/api/cohorts/{cohort.pk}/image-series/").json())
