"""The /ohif/ view (on a stand-in build) and the patient page's "CT and segmentation" card."""

from __future__ import annotations

import gzip

import pytest
from dicom_fixtures import add_imaged_patient
from factories import make_patient


@pytest.fixture
def ohif_build(settings, tmp_path):
    root = tmp_path / "ohif"
    (root / "assets").mkdir(parents=True)
    (root / "index.html").write_text('<!doctype html><script src="/ohif/app-config.js"></script>')
    (root / "app-config.js").write_text("window.config = {routerBasename: '/ohif'};")
    (root / "app.bundle.0f6159.js").write_text("console.log('viewer');" * 100)
    (root / "app.bundle.0f6159.js.gz").write_bytes(gzip.compress(b"console.log('viewer');" * 100))
    (root / "codec.wasm").write_bytes(b"\0asm\1\0\0\0")
    (root / "assets" / "favicon.ico").write_bytes(b"\0\0\1\0")
    settings.PMPD_OHIF_ROOT = root
    return root


def test_viewer_needs_a_login(client, ohif_build):
    response = client.get("/ohif/viewer?StudyInstanceUIDs=1.2.3")
    assert response.status_code == 302 and response["Location"].startswith("/accounts/login/")


def test_viewer_routes_answer_index_and_files_their_types(client_for, members, ohif_build):
    client = client_for(members["statistician"])
    for route in ("/ohif/", "/ohif/viewer", "/ohif/viewer/dicomweb", "/ohif/viewer/1.2.840.3"):
        response = client.get(route, {"StudyInstanceUIDs": "1.2.3"})
        assert response.status_code == 200, route
        assert b"/ohif/app-config.js" in b"".join(response.streaming_content)
        assert response["Content-Type"] == "text/html; charset=utf-8"
        assert response["X-Frame-Options"] == "SAMEORIGIN"
        assert response["Cache-Control"] == "private, no-cache"

    wasm = client.get("/ohif/codec.wasm")
    assert wasm["Content-Type"] == "application/wasm"
    assert wasm["Cache-Control"] == "private, max-age=86400"
    assert client.get("/ohif/app-config.js")["Content-Type"] == "text/javascript; charset=utf-8"
    assert client.get("/ohif/assets/favicon.ico").status_code == 200

    packed = client.get("/ohif/app.bundle.0f6159.js", HTTP_ACCEPT_ENCODING="gzip, br")
    assert packed["Content-Encoding"] == "gzip" and "Accept-Encoding" in packed["Vary"]
    body = gzip.decompress(b"".join(packed.streaming_content))
    assert body.startswith(b"console.log")
    plain = client.get("/ohif/app.bundle.0f6159.js")
    assert "Content-Encoding" not in plain
    assert b"".join(plain.streaming_content).startswith(b"console.log")

    modified = plain["Last-Modified"]
    assert client.get("/ohif/codec.wasm", HTTP_IF_MODIFIED_SINCE=modified).status_code == 304

    for missing in ("/ohif/ort/ort.min.js", "/ohif/../settings.py", "/ohif/%2e%2e/manage.py"):
        assert client.get(missing).status_code == 404, missing
    assert client.post("/ohif/viewer").status_code in (403, 405)


def test_viewer_not_built_says_so(client_for, members, settings, tmp_path):
    settings.PMPD_OHIF_ROOT = tmp_path / "nothing"
    response = client_for(members["clinician"]).get("/ohif/viewer")
    assert response.status_code == 503
    assert b"make frontend" in response.content


@pytest.mark.slow
def test_patient_page_embeds_the_viewer_for_roles_with_images(
    cohort, members, client_for, tmp_path
):
    imaged = add_imaged_patient(make_patient(cohort, "PMPD-007"), folder=tmp_path, index=7)
    make_patient(cohort, "PMPD-008")
    url = f"/cohorts/{cohort.pk}/patients/PMPD-007/"
    uid = imaged.study.study_instance_uid
    for role in ("clinician", "coordinator", "admin"):
        page = client_for(members[role]).get(url)
        assert page.status_code == 200
        html = page.content.decode()
        assert "CT and segmentation" in html
        # No canonical mask in this fixture: no tumour slice to open on (with one, see
        # tests/imaging/test_patient_viewer.py).
        assert (
            f'src="/ohif/viewer?StudyInstanceUIDs={uid}&amp;hangingProtocolId=%40ohif%2Fseg"'
            in html
        )
        assert page["X-Frame-Options"] == "DENY"

    statistician = client_for(members["statistician"]).get(url).content.decode()
    assert "Your role in this cohort cannot view images." in statistician
    assert "<iframe" not in statistician

    without = client_for(members["clinician"]).get(f"/cohorts/{cohort.pk}/patients/PMPD-008/")
    assert "No images yet" in without.content.decode()
    assert "<iframe" not in without.content.decode()


@pytest.mark.slow
def test_viewer_opens_a_ct_without_segmentation_plainly(cohort, members, client_for, tmp_path):
    imaged = add_imaged_patient(make_patient(cohort, "PMPD-009"), folder=tmp_path, index=9)
    imaged.seg.delete()
    page = client_for(members["clinician"]).get(f"/cohorts/{cohort.pk}/patients/PMPD-009/")
    html = page.content.decode()
    assert f'src="/ohif/viewer?StudyInstanceUIDs={imaged.study.study_instance_uid}"' in html
    assert "No segmentation yet" in html
