"""Where the patient page's viewer opens (issue 12 item 3): on the CT image with the largest
tumour area, and a Grad-CAM slice of the engine's 2 mm grid named by the CT image the viewer
shows; checked on a phantom that went through the platform's own ingest."""

from __future__ import annotations

from urllib.parse import parse_qs, urlparse

import numpy as np
import pytest
from dicom_fixtures import phantom
from factories import make_patient
from imagemaker import dicom_series, folder_files, ingest, write_volume

from pmpd_web.imaging.models import DicomInstance
from pmpd_web.imaging.patient_viewer import images_on_grid, patient_viewer

pytestmark = pytest.mark.django_db

STUDY_ID = "VIEW-1"


@pytest.fixture
def ingested(cohort, members, tmp_path):
    case = phantom(index=3, size=64, n_slices=16)
    case.study_id = STUDY_ID
    patient = make_patient(cohort, STUDY_ID)
    dicom_series(case, tmp_path / STUDY_ID / "ct")
    write_volume(case.mask, case, tmp_path / STUDY_ID / "mask.nii.gz")
    _, job = ingest(cohort, members["coordinator"], folder_files(tmp_path, "drop/"))
    assert job.status == "succeeded", job.error
    return case, patient


def _z(instance: DicomInstance) -> float:
    return float(instance.metadata["00200032"]["Value"][2])


@pytest.mark.slow
def test_the_viewer_opens_on_the_largest_tumour_slice(ingested):
    case, patient = ingested
    areas = (case.mask == 2).sum(axis=(1, 2))
    assert areas.max() > 0 and np.count_nonzero(areas == areas.max()) >= 1
    # The phantom is LPS with z increasing with the index: slice k sits at origin z + k * dz.
    expected_z = case.origin[2] + int(np.argmax(areas)) * case.spacing[2]
    viewer = patient_viewer(patient)
    assert viewer is not None and viewer.has_segmentation and viewer.tumour_image is not None
    shown = DicomInstance.objects.get(sop_instance_uid=viewer.tumour_image.sop_instance_uid)
    assert abs(_z(shown) - expected_z) < 1e-3
    assert viewer.tumour_image.instance_number == shown.instance_number
    assert viewer.tumour_area_mm2 == pytest.approx(areas.max() * case.spacing[0] * case.spacing[1])
    query = parse_qs(urlparse(viewer.url).query)
    assert query["initialSOPInstanceUID"] == [shown.sop_instance_uid]
    assert query["hangingProtocolId"] == ["@ohif/seg"]


@pytest.mark.slow
def test_a_grid_slice_is_named_by_the_ct_image_the_viewer_shows(ingested):
    case, patient = ingested
    # 2 mm source slices: grid slice i is CT image i from the bottom; 4 mm would halve it.
    found = images_on_grid(patient, [0, 5, 9], slice_thickness_mm=2.0)
    for index in (0, 5, 9):
        instance = DicomInstance.objects.get(sop_instance_uid=found[index].sop_instance_uid)
        assert abs(_z(instance) - (case.origin[2] + 2.0 * index)) < 1e-3
    coarse = images_on_grid(patient, [3], slice_thickness_mm=4.0)[3]
    instance = DicomInstance.objects.get(sop_instance_uid=coarse.sop_instance_uid)
    assert abs(_z(instance) - (case.origin[2] + 12.0)) < 1e-3


@pytest.mark.slow
def test_the_patient_page_names_grad_cam_slices_as_the_viewer_does(
    ingested, cohort, members, client_for
):
    from engine_fixtures import make_prediction, make_ready_version

    _, patient = ingested
    version = make_ready_version(cohort, name="pmpd-view", is_active=True)
    make_prediction(patient, version, first_slice=4)
    html = (
        client_for(members["clinician"])
        .get(f"/cohorts/{cohort.pk}/patients/{STUDY_ID}/")
        .content.decode()
    )
    found = images_on_grid(patient, [4, 5, 6, 7], slice_thickness_mm=2.0)
    for index in (4, 5, 6, 7):
        image = found[index]
        assert f'data-viewer-sop="{image.sop_instance_uid}"' in html
        assert f"CT image {image.instance_number}</a>" in html
    assert "(2 mm grid)" not in html
    assert "Opens on CT image" in html and 'id="viewer-full-screen"' in html


def test_a_missing_mask_file_leaves_the_viewer_on_its_default_slice(cohort):
    from engine_fixtures import add_fake_images

    from pmpd_web.imaging.models import CanonicalVolume

    patient = make_patient(cohort, "VIEW-2")
    add_fake_images(patient)
    CanonicalVolume.objects.filter(patient=patient, kind="mask").update(
        geometry={
            "size": [4, 4, 4],
            "spacing": [1, 1, 1],
            "origin": [0, 0, 0],
            "direction": [1, 0, 0, 0, 1, 0, 0, 0, 1],
        }
    )
    viewer = patient_viewer(patient)
    assert viewer is not None and viewer.tumour_image is None
    assert "initialSOPInstanceUID" not in viewer.url
