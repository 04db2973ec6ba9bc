"""DICOMweb as clients other than OHIF expect it (issue 10, item 9): RetrieveURL in search
answers, study and patient attributes in searches without a study in the path, 406 for an
Accept the server cannot produce, single-part frames, a Warning when ``limit`` is cut, and
rendered images and thumbnails at study, series and instance level."""

from __future__ import annotations

import io
import json

import numpy as np
import pydicom
import pytest
from dicom_fixtures import add_imaged_patient
from django.core.files.storage import default_storage
from factories import make_patient
from PIL import Image

from pmpd_web.imaging import dicomweb, dicomweb_auth, rendering
from pmpd_web.imaging.models import DicomInstance

EXPLICIT_LE = "1.2.840.10008.1.2.1"


@pytest.fixture(autouse=True)
def _fresh_index():
    dicomweb._series_files.clear()
    dicomweb_auth._user_of_session.clear()


@pytest.fixture
def imaged(cohort, tmp_path):
    return [
        add_imaged_patient(
            make_patient(cohort, f"PMPD-{index:03d}"), folder=tmp_path / f"p{index}", index=index
        )
        for index in (1, 2)
    ]


@pytest.fixture
def clinician(client_for, members):
    return client_for(members["clinician"])


def stored(instance: DicomInstance) -> pydicom.Dataset:
    with default_storage.open(instance.file.name, "rb") as handle:
        return pydicom.dcmread(handle)


def value(dataset: dict, key: str):
    return dataset[key]["Value"][0]


def series_path(imaged, series) -> str:
    return (
        f"/dicomweb/studies/{imaged.study.study_instance_uid}/series/{series.series_instance_uid}"
    )


def instance_path(imaged, instance: DicomInstance) -> str:
    return f"{series_path(imaged, instance.series)}/instances/{instance.sop_instance_uid}"


@pytest.mark.slow
def test_search_answers_carry_their_retrieve_url(imaged, clinician):
    first = imaged[0]
    study_uid = first.study.study_instance_uid
    (study,) = clinician.get("/dicomweb/studies", {"PatientID": "PMPD-001"}).json()
    assert study["00081190"] == {
        "vr": "UR",
        "Value": [f"http://testserver/dicomweb/studies/{study_uid}"],
    }
    series = clinician.get(f"/dicomweb/studies/{study_uid}/series", {"Modality": "CT"}).json()
    assert value(series[0], "00081190") == f"http://testserver{series_path(first, first.ct)}"
    instances = clinician.get(f"{series_path(first, first.ct)}/instances").json()
    assert len(instances) == 12
    for item in instances:
        sop = value(item, "00080018")
        assert value(item, "00081190").endswith(f"/instances/{sop}")
    # What the URLs point to is retrievable.
    url = value(series[0], "00081190").removeprefix("http://testserver")
    response = clinician.get(url, HTTP_ACCEPT='multipart/related; type="application/dicom"')
    assert response.status_code == 200


@pytest.mark.slow
def test_series_and_instance_searches_without_a_study_hold_study_and_patient(imaged, clinician):
    first, second = imaged
    series = clinician.get("/dicomweb/series", {"PatientID": "PMPD-002"}).json()
    assert {value(s, "0020000E") for s in series} == {
        second.ct.series_instance_uid,
        second.seg.series_instance_uid,
    }
    for item in series:
        assert value(item, "00100020") == "PMPD-002"
        assert item["00100010"] == {"vr": "PN", "Value": [{"Alphabetic": "PMPD-002"}]}
        assert value(item, "0020000D") == second.study.study_instance_uid
        assert value(item, "00080020") == second.study.study_date
        assert "00080050" in item and "00080030" in item and "00100030" in item

    by_name = clinician.get("/dicomweb/series", {"PatientName": "PMPD-00*"}).json()
    assert len(by_name) == 4

    instances = clinician.get(
        "/dicomweb/instances", {"PatientID": "PMPD-001", "Modality": "SEG"}
    ).json()
    assert [value(i, "00080018") for i in instances] == [first.seg.instances.get().sop_instance_uid]
    (seg,) = instances
    assert value(seg, "00100020") == "PMPD-001"
    assert value(seg, "00080020") == first.study.study_date
    assert value(seg, "0020000E") == first.seg.series_instance_uid
    assert value(seg, "00200011") == first.seg.series_number

    # With the study in the path too, instances carry their series' and study's attributes.
    within = clinician.get(f"/dicomweb/studies/{first.study.study_instance_uid}/instances").json()
    assert len(within) == 13
    assert {value(i, "00080060") for i in within} == {"CT", "SEG"}
    assert all("00200011" in i and value(i, "00100020") == "PMPD-001" for i in within)


@pytest.mark.slow
def test_an_accept_the_server_cannot_produce_gets_406(imaged, clinician):
    first = imaged[0]
    metadata = f"{series_path(first, first.ct)}/metadata"
    for url in ("/dicomweb/studies", "/dicomweb/series", metadata):
        assert clinician.get(url, HTTP_ACCEPT="application/dicom+xml").status_code == 406
        xml = 'multipart/related; type="application/dicom+xml"'
        assert clinician.get(url, HTTP_ACCEPT=xml).status_code == 406
        for accept in ("application/dicom+json", "application/json", "*/*", ""):
            answer = clinician.get(url, HTTP_ACCEPT=accept)
            assert answer.status_code == 200, accept
            assert answer["Content-Type"] == "application/dicom+json"
    refused = clinician.get("/dicomweb/studies", HTTP_ACCEPT="application/dicom+xml")
    assert "application/dicom+json" in refused.json()["error"]


@pytest.mark.slow
def test_single_part_octet_stream_frames(imaged, clinician):
    first = imaged[0]
    ct = first.ct.instances.order_by("instance_number").first()
    answer = clinician.get(
        f"{instance_path(first, ct)}/frames/1", HTTP_ACCEPT="application/octet-stream"
    )
    assert answer.status_code == 200
    assert answer["Content-Type"] == f"application/octet-stream; transfer-syntax={EXPLICIT_LE}"
    assert answer.content == stored(ct).PixelData

    seg = first.seg.instances.get()
    seg_frames = f"{instance_path(first, seg)}/frames"
    one = clinician.get(f"{seg_frames}/2", HTTP_ACCEPT="application/octet-stream")
    assert one.status_code == 200 and len(one.content) == 64 * 64 // 8
    several = clinician.get(f"{seg_frames}/1,2", HTTP_ACCEPT="application/octet-stream")
    assert several.status_code == 406
    assert "multipart/related" in several.json()["error"]
    both = "application/octet-stream, multipart/related; type=application/octet-stream"
    multi = clinician.get(f"{seg_frames}/1,2", HTTP_ACCEPT=both)
    assert multi.status_code == 200 and multi["Content-Type"].startswith("multipart/related")


@pytest.mark.slow
def test_a_limit_above_the_maximum_is_cut_with_a_warning(imaged, clinician, monkeypatch):
    answer = clinician.get("/dicomweb/studies", {"limit": dicomweb.MAX_RESULTS + 1})
    assert answer.status_code == 200 and len(answer.json()) == 2
    assert answer["Warning"].startswith("299 testserver: ")
    assert "exceeded the maximum" in answer["Warning"]
    assert "Warning" not in clinician.get("/dicomweb/studies", {"limit": 1})
    assert "Warning" not in clinician.get("/dicomweb/studies")
    monkeypatch.setattr(dicomweb, "MAX_RESULTS", 1)
    cut = clinician.get("/dicomweb/studies")
    assert len(cut.json()) == 1 and "exceeded the maximum" in cut["Warning"]
    fuzzy = clinician.get("/dicomweb/studies", {"fuzzymatching": "true"})
    assert "fuzzymatching parameter is not supported" in fuzzy["Warning"]


# ----------------------------------------------------------------------------------------------
# Rendered images and thumbnails


def image_of(response) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(response.content)))


def expected_render(ds: pydicom.Dataset) -> np.ndarray:
    """The headers' window (75, 250 HU for the phantom) by hand, PS3.3 C.11.2.1.2.1."""
    hu = ds.pixel_array.astype(float) * float(ds.RescaleSlope) + float(ds.RescaleIntercept)
    c, w = float(ds.WindowCenter), float(ds.WindowWidth)
    return np.clip(np.rint(((hu - (c - 0.5)) / (w - 1) + 0.5) * 255), 0, 255).astype(np.uint8)


@pytest.mark.slow
def test_rendered_instance_png_windowed_from_the_headers(imaged, clinician):
    first = imaged[0]
    ct = first.ct.instances.order_by("instance_number")[5]
    ds = stored(ct)
    assert (float(ds.WindowCenter), float(ds.WindowWidth)) == (75.0, 250.0)
    answer = clinician.get(f"{instance_path(first, ct)}/rendered", HTTP_ACCEPT="image/png")
    assert answer.status_code == 200 and answer["Content-Type"] == "image/png"
    rendered = image_of(answer)
    assert rendered.shape == (64, 64)
    np.testing.assert_array_equal(rendered, expected_render(ds))

    jpeg = clinician.get(f"{instance_path(first, ct)}/rendered", HTTP_ACCEPT="image/*")
    assert jpeg["Content-Type"] == "image/jpeg" and image_of(jpeg).shape == (64, 64)
    assert np.abs(image_of(jpeg).astype(int) - expected_render(ds)).mean() < 8

    windowed = clinician.get(
        f"{instance_path(first, ct)}/frames/1/rendered",
        {"window": "-1000,2,linear"},
        HTTP_ACCEPT="image/png",
    )
    hu = ds.pixel_array.astype(float) - 1024
    np.testing.assert_array_equal(image_of(windowed) == 255, hu > -1000.5)


@pytest.mark.slow
def test_without_a_window_in_the_headers_the_pixel_range_is_used(imaged, clinician):
    first = imaged[0]
    seg = first.seg.instances.get()
    frames = stored(seg).pixel_array
    number = next(i for i in range(len(frames)) if frames[i].any()) + 1
    answer = clinician.get(
        f"{instance_path(first, seg)}/frames/{number}/rendered", HTTP_ACCEPT="image/png"
    )
    assert answer.status_code == 200
    np.testing.assert_array_equal(image_of(answer), frames[number - 1].astype(np.uint8) * 255)


@pytest.mark.slow
def test_thumbnails_are_small_and_show_the_middle_of_the_first_series(imaged, clinician):
    first = imaged[0]
    middle = first.ct.instances.order_by("instance_number")[6]
    expected = clinician.get(f"{instance_path(first, middle)}/thumbnail", HTTP_ACCEPT="image/png")
    study = f"/dicomweb/studies/{first.study.study_instance_uid}"
    for url in (f"{study}/thumbnail", f"{series_path(first, first.ct)}/thumbnail"):
        answer = clinician.get(url, HTTP_ACCEPT="image/png")
        assert answer.status_code == 200, url
        assert answer.content == expected.content
    small = clinician.get(f"{study}/thumbnail", {"viewport": "32,16"}, HTTP_ACCEPT="image/png")
    assert image_of(small).shape == (16, 16)
    rendered = clinician.get(f"{study}/rendered", HTTP_ACCEPT="image/png")
    assert image_of(rendered).shape == (64, 64)
    np.testing.assert_array_equal(image_of(rendered), expected_render(stored(middle)))
    default = clinician.get(f"{study}/thumbnail")
    assert default["Content-Type"] == "image/jpeg"


@pytest.mark.slow
def test_bigger_images_get_small_thumbnails(cohort, client_for, members, tmp_path):
    big = add_imaged_patient(
        make_patient(cohort, "PMPD-BIG"), folder=tmp_path / "big", index=4, size=256, n_slices=4
    )
    client = client_for(members["coordinator"])
    answer = client.get(f"{series_path(big, big.ct)}/thumbnail", HTTP_ACCEPT="image/png")
    assert image_of(answer).shape == (rendering.THUMBNAIL_SIZE, rendering.THUMBNAIL_SIZE)


@pytest.mark.slow
def test_rendering_refusals(imaged, clinician):
    first = imaged[0]
    ct = first.ct.instances.first()
    url = f"{instance_path(first, ct)}/rendered"
    assert clinician.get(url, HTTP_ACCEPT="application/dicom").status_code == 406
    for params in ({"window": "40,abc,linear"}, {"window": "40,400,cubic"}, {"viewport": "0,5"}):
        bad = clinician.get(url, params, HTTP_ACCEPT="image/png")
        assert bad.status_code == 400, params
        assert json.loads(bad.content)["error"]
    assert clinician.get(f"{instance_path(first, ct)}/frames/2/rendered").status_code == 404
    assert clinician.get(f"{instance_path(first, ct)}/frames/1,2/rendered").status_code == 400
    missing = "/dicomweb/studies/1.2.3/series/4.5.6/rendered"
    assert clinician.get(missing).status_code == 404


def test_window_functions_by_hand():
    values = np.array([-1000.0, 0.0, 40.0, 80.0, 1000.0])
    linear = rendering.apply_window(values, rendering.Window(40, 81))
    assert linear.tolist() == [0, 2, 129, 255, 255]  # ((x - 39.5) / 80 + 0.5) * 255
    exact = rendering.apply_window(values, rendering.Window(40, 80, "linear-exact"))
    assert exact.tolist() == [0, 0, 128, 255, 255]
    sigmoid = rendering.apply_window(values, rendering.Window(40, 80, "sigmoid"))
    assert sigmoid.tolist() == [0, 30, 128, 225, 255]
    flat = rendering.range_window(np.full((2, 2), 7.0))
    assert rendering.apply_window(np.full((2, 2), 7.0), flat).tolist() == [[128, 128]] * 2


def _image(pixels: np.ndarray, **attributes) -> pydicom.Dataset:
    ds = pydicom.Dataset()
    ds.file_meta = pydicom.dataset.FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = EXPLICIT_LE
    ds.Rows, ds.Columns = pixels.shape[:2]
    ds.SamplesPerPixel = 3 if pixels.ndim == 3 else 1
    ds.BitsAllocated = ds.BitsStored = pixels.dtype.itemsize * 8
    ds.HighBit = ds.BitsStored - 1
    ds.PixelRepresentation = 0
    if pixels.ndim == 3:
        ds.PlanarConfiguration = 0
    for name, value in attributes.items():
        setattr(ds, name, value)
    ds.PixelData = pixels.tobytes()
    return ds


def test_monochrome1_is_inverted_and_colour_kept():
    ramp = np.arange(16, dtype=np.uint16).reshape(4, 4) * 100
    plain = rendering.to_display(_image(ramp, PhotometricInterpretation="MONOCHROME2"))
    inverted = rendering.to_display(_image(ramp, PhotometricInterpretation="MONOCHROME1"))
    assert plain[0, 0] == 0 and plain[-1, -1] == 255
    np.testing.assert_array_equal(inverted, 255 - plain)
    colour = np.random.default_rng(1).integers(0, 256, size=(4, 5, 3), dtype=np.uint8)
    rgb = rendering.to_display(_image(colour, PhotometricInterpretation="RGB"))
    np.testing.assert_array_equal(rgb, colour)
    png = Image.open(io.BytesIO(rendering.encode(rgb, rendering.PNG)))
    assert png.mode == "RGB" and png.size == (5, 4)
