"""DICOMweb: a real client (dicomweb-client) against a live server, the request shapes OHIF
uses, the per-cohort permissions, and the frame reader on the layouts DICOM allows."""

from __future__ import annotations

import io

import numpy as np
import pydicom
import pytest
import requests
from dicom_fixtures import add_imaged_patient
from dicomweb_client.api import DICOMwebClient
from django.core.files.base import ContentFile
from django.core.files.storage import default_storage
from factories import make_patient, make_token_key
from pydicom.uid import RLELossless
from web_session import logged_in_session

from pmpd_web.accounts.models import AuditEvent
from pmpd_web.imaging import dicomweb
from pmpd_web.imaging import dicomweb_protocol as protocol
from pmpd_web.imaging.models import DicomInstance

OHIF_FRAME_ACCEPT = "multipart/related; type=application/octet-stream; transfer-syntax=*"
EXPLICIT_LE = "1.2.840.10008.1.2.1"


def from_json(dataset: dict) -> pydicom.Dataset:
    return pydicom.Dataset.from_json(dataset, bulk_data_uri_handler=lambda tag, vr, uri: b"")


def stored_dataset(instance: DicomInstance) -> pydicom.Dataset:
    with default_storage.open(instance.file.name, "rb") as handle:
        return pydicom.dcmread(handle)


@pytest.fixture(autouse=True)
def _fresh_cache():
    """The frame views keep a series' file names for a while: each test starts without."""
    dicomweb._series_files.clear()


@pytest.fixture
def imaged(cohort, tmp_path):
    """Two patients of the cohort with a 12-slice 64x64 CT and its SEG each."""
    return [
        add_imaged_patient(
            make_patient(cohort, f"PMPD-{index:03d}"), folder=tmp_path / f"p{index}", index=index
        )
        for index in (1, 2)
    ]


@pytest.fixture
def session_for(live_server, members):
    """Logged-in sessions, closed after the test: an idle keep-alive connection would keep a
    live-server thread, and its database connection, until the test database is dropped."""
    sessions: list[requests.Session] = []

    def login(role: str) -> requests.Session:
        sessions.append(logged_in_session(live_server.url, role, f"pw-{role}"))
        return sessions[-1]

    yield login
    for session in sessions:
        session.close()


@pytest.fixture
def client_as(live_server, session_for):
    def make(role: str) -> DICOMwebClient:
        return DICOMwebClient(f"{live_server.url}/dicomweb", session=session_for(role))

    return make


@pytest.mark.slow
def test_dicomweb_client_searches_reads_metadata_and_decodes_frames(imaged, client_as):
    client = client_as("clinician")
    first = imaged[0]
    study_uid = first.study.study_instance_uid

    studies = client.search_for_studies()
    assert {s["0020000D"]["Value"][0] for s in studies} == {
        p.study.study_instance_uid for p in imaged
    }
    found = client.search_for_studies(search_filters={"PatientID": "PMPD-001"})
    assert [s["0020000D"]["Value"][0] for s in found] == [study_uid]
    study = from_json(found[0])
    assert study.PatientID == "PMPD-001" and str(study.PatientName) == "PMPD-001"
    assert set(study.ModalitiesInStudy) == {"CT", "SEG"}
    assert study.NumberOfStudyRelatedInstances == 13 and study.NumberOfStudyRelatedSeries == 2
    assert len(client.search_for_studies(limit=1, offset=1)) == 1

    series = client.search_for_series(study_uid)
    assert sorted(s["00080060"]["Value"][0] for s in series) == ["CT", "SEG"]
    assert client.search_for_series(study_uid, search_filters={"Modality": "SEG"})[0]["0020000E"][
        "Value"
    ] == [first.seg.series_instance_uid]

    ct_uid = first.ct.series_instance_uid
    metadata = [from_json(m) for m in client.retrieve_series_metadata(study_uid, ct_uid)]
    assert len(metadata) == 12
    assert all(m.Rows == 64 and m.Modality == "CT" for m in metadata)
    instances = {i.sop_instance_uid: i for i in first.ct.instances.all()}
    for item in client.retrieve_series_metadata(study_uid, ct_uid):
        sop = item["00080018"]["Value"][0]
        uri = item["7FE00010"]["BulkDataURI"]
        assert uri == (
            f"/dicomweb/studies/{study_uid}/series/{ct_uid}/instances/{sop}/bulkdata/7FE00010"
        )
        frame = client.retrieve_instance_frames(study_uid, ct_uid, sop, frame_numbers=[1])[0]
        expected = stored_dataset(instances[sop]).pixel_array
        assert np.array_equal(np.frombuffer(frame, dtype="<u2").reshape(64, 64), expected)

    whole = client.retrieve_bulkdata(f"{client.base_url}{uri.removeprefix('/dicomweb')}")[0]
    assert whole == stored_dataset(instances[sop]).PixelData


@pytest.mark.slow
def test_segmentation_frames_metadata_and_instance(imaged, client_as):
    client = client_as("coordinator")
    first = imaged[0]
    study_uid, seg_uid = first.study.study_instance_uid, first.seg.series_instance_uid
    seg_instance = first.seg.instances.get()
    stored = stored_dataset(seg_instance)
    assert stored.NumberOfFrames > 2

    (metadata,) = client.retrieve_series_metadata(study_uid, seg_uid)
    seg = from_json(metadata)
    assert seg.ReferencedSeriesSequence[0].SeriesInstanceUID == first.ct.series_instance_uid
    assert len(seg.PerFrameFunctionalGroupsSequence) == stored.NumberOfFrames
    assert [s.SegmentLabel for s in seg.SegmentSequence] == ["Pancreas", "Tumour"]

    for number in (1, 2, stored.NumberOfFrames):
        (frame,) = client.retrieve_instance_frames(
            study_uid, seg_uid, seg_instance.sop_instance_uid, frame_numbers=[number]
        )
        bits = np.unpackbits(np.frombuffer(frame, np.uint8), bitorder="little")[: 64 * 64]
        assert np.array_equal(bits.reshape(64, 64), stored.pixel_array[number - 1])
    several = client.retrieve_instance_frames(
        study_uid, seg_uid, seg_instance.sop_instance_uid, frame_numbers=[3, 1]
    )
    assert [len(f) for f in several] == [512, 512]
    assert (
        several[1]
        == client.retrieve_instance_frames(
            study_uid, seg_uid, seg_instance.sop_instance_uid, frame_numbers=[1]
        )[0]
    )

    retrieved = client.retrieve_instance(study_uid, seg_uid, seg_instance.sop_instance_uid)
    assert retrieved.SOPInstanceUID == seg_instance.sop_instance_uid
    assert np.array_equal(retrieved.pixel_array, stored.pixel_array)
    assert len(client.retrieve_series(study_uid, first.ct.series_instance_uid)) == 12


@pytest.mark.slow
def test_ohif_request_shapes(live_server, imaged, session_for):
    """The requests of OHIF 3.13 as DICOMWEB_OHIF.md records them, answered as it needs."""
    session = session_for("clinician")
    root = f"{live_server.url}/dicomweb"
    first, second = imaged
    both = f"{first.study.study_instance_uid}\\{second.study.study_instance_uid}"
    answer = session.get(
        f"{root}/studies",
        params={
            "limit": 101,
            "offset": 0,
            "fuzzymatching": "false",
            "includefield": "00081030,00080060",
            "StudyInstanceUID": both,
        },
    )
    assert answer.status_code == 200
    assert answer.headers["Content-Type"] == "application/dicom+json"
    assert len(answer.json()) == 2
    by_patient = session.get(f"{root}/studies", params={"00100020": "PMPD-002"}).json()
    assert [s["0020000D"]["Value"][0] for s in by_patient] == [second.study.study_instance_uid]
    assert by_patient[0]["00100010"] == {"vr": "PN", "Value": [{"Alphabetic": "PMPD-002"}]}
    for key in ("00080020", "00080030", "00080050", "00080061", "00081030", "00201208"):
        assert key in by_patient[0]
    dated = session.get(f"{root}/studies", params={"StudyDate": "19000101-19001231"})
    assert dated.json() == []
    assert session.get(f"{root}/studies", params={"PatientName": "pmpd-00*"}).json()

    study_uid = first.study.study_instance_uid
    series = session.get(f"{root}/studies/{study_uid}/series", params={"includefield": "all"})
    for item in series.json():
        for key in ("0020000E", "00080060", "00200011", "0008103E", "00080021", "00201209"):
            assert key in item

    ct = first.ct.instances.first()
    frame = session.get(
        f"{root}/studies/{study_uid}/series/{first.ct.series_instance_uid}"
        f"/instances/{ct.sop_instance_uid}/frames/1",
        headers={"Accept": OHIF_FRAME_ACCEPT},
    )
    assert frame.status_code == 200
    body = frame.content
    assert body.startswith(b"--")
    head_end = body.index(b"\r\n\r\n")
    assert head_end < 1000
    assert (
        b"\r\nContent-Type: application/octet-stream; transfer-syntax=1.2.840.10008.1.2.1"
        in body[:head_end]
    )
    assert len(body) - head_end - 4 - len(body.split(b"\r\n")[0]) - 6 == 64 * 64 * 2

    seg = first.seg.instances.get()
    instance = session.get(
        f"{root}/studies/{study_uid}/series/{first.seg.series_instance_uid}"
        f"/instances/{seg.sop_instance_uid}",
        headers={"Accept": 'multipart/related; type="application/dicom"'},
    )
    assert instance.status_code == 200
    assert instance.headers["Content-Type"].startswith(
        'multipart/related; type="application/dicom"'
    )
    assert (
        b"Content-Type: application/dicom; transfer-syntax=1.2.840.10008.1.2.1"
        in instance.content[:500]
    )

    # STOW-RS with the session cookie but without the platform's Origin: refused, nothing stored
    # (tests/imaging/test_stow.py covers what is accepted).
    stow = session.post(f"{root}/studies", data=b"", headers={"Content-Type": "multipart/related"})
    assert stow.status_code == 403
    assert first.study.series.count() == 2


@pytest.mark.slow
@pytest.mark.parametrize("role", ["outsider", "statistician", "nobody"])
def test_users_without_images_in_the_cohort_get_nothing(imaged, client_as, role):
    client = client_as(role)
    first = imaged[0]
    study_uid, ct_uid = first.study.study_instance_uid, first.ct.series_instance_uid
    sop = first.ct.instances.first().sop_instance_uid
    assert client.search_for_studies() == []
    assert client.search_for_studies(search_filters={"PatientID": "PMPD-001"}) == []
    assert client.search_for_series(study_uid) == []
    assert client.search_for_instances(study_uid, ct_uid) == []
    for retrieve in (
        lambda: client.retrieve_study_metadata(study_uid),
        lambda: client.retrieve_series_metadata(study_uid, ct_uid),
        lambda: client.retrieve_instance_frames(study_uid, ct_uid, sop, frame_numbers=[1]),
        lambda: client.retrieve_instance(study_uid, ct_uid, sop),
    ):
        with pytest.raises(requests.HTTPError) as caught:
            retrieve()
        assert caught.value.response.status_code == 404


@pytest.mark.slow
def test_anonymous_gets_401_and_a_token_works(live_server, imaged, members):
    root = f"{live_server.url}/dicomweb"
    first = imaged[0]
    sop = first.ct.instances.first().sop_instance_uid
    paths = [
        "/studies",
        f"/studies/{first.study.study_instance_uid}/series",
        f"/studies/{first.study.study_instance_uid}/metadata",
        f"/studies/{first.study.study_instance_uid}/series/{first.ct.series_instance_uid}"
        f"/instances/{sop}/frames/1",
    ]
    for path in paths:
        assert requests.get(root + path, timeout=30).status_code == 401
    assert requests.post(root + "/studies", timeout=30).status_code == 401
    key = make_token_key(members["clinician"])
    found = requests.get(root + "/studies", headers={"Authorization": f"Token {key}"}, timeout=30)
    assert len(found.json()) == 2
    bad = requests.get(root + "/studies", headers={"Authorization": "Token nope"}, timeout=30)
    assert bad.status_code == 401


@pytest.mark.slow
def test_metadata_retrieval_is_audited(imaged, client_for, members):
    first = imaged[0]
    client = client_for(members["clinician"])
    url = (
        f"/dicomweb/studies/{first.study.study_instance_uid}"
        f"/series/{first.ct.series_instance_uid}/metadata"
    )
    assert client.get(url).status_code == 200
    event = AuditEvent.objects.get(patient=first.patient)
    assert event.username == "clinician" and event.detail["via"] == "dicomweb"


# ----------------------------------------------------------------------------------------------
# The frame reader on other layouts, through the Django test client


def _store_variant(instance: DicomInstance, ds: pydicom.Dataset, **save) -> DicomInstance:
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True, **save)
    name = default_storage.save(f"variants/{instance.pk}.dcm", ContentFile(buffer.getvalue()))
    instance.file.name = name
    instance.transfer_syntax_uid = ds.file_meta.TransferSyntaxUID
    instance.save()
    return instance


def _frame(client, instance: DicomInstance, number: int, accept: str):
    series = instance.series
    return client.get(
        f"/dicomweb/studies/{series.study.study_instance_uid}/series/"
        f"{series.series_instance_uid}/instances/{instance.sop_instance_uid}/frames/{number}",
        HTTP_ACCEPT=accept,
    )


def _single_part(response) -> tuple[bytes, bytes]:
    body = b"".join(response.streaming_content) if response.streaming else response.content
    boundary = body.split(b"\r\n", 1)[0]
    head, _, rest = body.partition(b"\r\n\r\n")
    return head, rest[: rest.rindex(b"\r\n" + boundary + b"--")]


@pytest.mark.slow
def test_compressed_frames_are_sent_as_stored_or_decoded(imaged, client_for, members):
    instance = imaged[0].ct.instances.first()
    ds = stored_dataset(instance)
    expected = ds.pixel_array.copy()
    ds.compress(RLELossless, generate_instance_uid=False)
    _store_variant(instance, ds)
    client = client_for(members["clinician"])

    head, body = _single_part(_frame(client, instance, 1, OHIF_FRAME_ACCEPT))
    assert b"transfer-syntax=1.2.840.10008.1.2.5" in head
    assert body == pydicom.encaps.get_frame(ds.PixelData, 0, number_of_frames=1)

    plain = 'multipart/related; type="application/octet-stream"'
    head, body = _single_part(_frame(client, instance, 1, plain))
    assert f"transfer-syntax={EXPLICIT_LE}".encode() in head
    assert np.array_equal(np.frombuffer(body, "<u2").reshape(64, 64), expected)

    assert _frame(client, instance, 1, "image/png").status_code == 406


@pytest.mark.slow
def test_implicit_vr_files_and_frame_errors(imaged, client_for, members):
    instance = imaged[0].ct.instances.first()
    ds = stored_dataset(instance)
    ds.file_meta.TransferSyntaxUID = pydicom.uid.ImplicitVRLittleEndian
    _store_variant(instance, ds, implicit_vr=True)
    client = client_for(members["clinician"])
    head, body = _single_part(_frame(client, instance, 1, OHIF_FRAME_ACCEPT))
    assert np.array_equal(np.frombuffer(body, "<u2").reshape(64, 64), ds.pixel_array)
    assert _frame(client, instance, 2, OHIF_FRAME_ACCEPT).status_code == 404
    series = instance.series
    bad = client.get(
        f"/dicomweb/studies/{series.study.study_instance_uid}/series/"
        f"{series.series_instance_uid}/instances/{instance.sop_instance_uid}/frames/0"
    )
    assert bad.status_code == 400


@pytest.mark.slow
def test_frames_follow_a_file_replaced_by_a_new_ingest(imaged, client_for, members):
    instance = imaged[0].ct.instances.first()
    client = client_for(members["clinician"])
    _, before = _single_part(_frame(client, instance, 1, OHIF_FRAME_ACCEPT))
    old_name = instance.file.name
    _store_variant(instance, stored_dataset(instance))
    default_storage.delete(old_name)
    _, after = _single_part(_frame(client, instance, 1, OHIF_FRAME_ACCEPT))
    assert after == before


def test_single_bit_frames_off_byte_boundaries_are_realigned():
    layout = protocol.PixelLayout(
        transfer_syntax=EXPLICIT_LE,
        value_offset=3,
        rows=3,
        columns=3,
        samples_per_pixel=1,
        bits_allocated=1,
        number_of_frames=3,
    )
    frames = np.random.default_rng(0).integers(0, 2, size=(3, 3, 3), dtype=np.uint8)
    packed = np.packbits(frames.ravel(), bitorder="little").tobytes()
    handle = io.BytesIO(b"abc" + packed)
    for index in range(3):
        frame = protocol.native_frame(handle, layout, index)
        assert len(frame) == 2
        bits = np.unpackbits(np.frombuffer(frame, np.uint8), bitorder="little")[:9]
        assert np.array_equal(bits.reshape(3, 3), frames[index])


def test_query_matching_rules():
    dataset = {
        "00100010": {"vr": "PN", "Value": [{"Alphabetic": "PMPD-001"}]},
        "00080020": {"vr": "DA", "Value": ["20190305"]},
        "0020000D": {"vr": "UI", "Value": ["1.2.3"]},
        "00200011": {"vr": "IS", "Value": [3]},
        "00080060": {"vr": "CS", "Value": ["CT"]},
    }
    assert protocol.matches(dataset, "00100010", "pmpd-00?")
    assert not protocol.matches(dataset, "00100010", "PMPD-002")
    assert protocol.matches(dataset, "00080020", "20190101-20191231")
    assert protocol.matches(dataset, "00080020", "-20190305")
    assert not protocol.matches(dataset, "00080020", "20190306-")
    assert protocol.matches(dataset, "0020000D", "9.9\\1.2.3")
    assert protocol.matches(dataset, "00200011", "3")
    assert protocol.matches(dataset, "00080060", "MR\\CT")
    assert not protocol.matches(dataset, "00080060", "C")
    assert protocol.accepted_types(OHIF_FRAME_ACCEPT) == [("application/octet-stream", "*", False)]
    assert protocol.accepted_types("") == [("*/*", None, False)]


@pytest.mark.slow
def test_unknown_query_attributes_are_refused(imaged, client_for, members):
    client = client_for(members["clinician"])
    assert client.get("/dicomweb/studies", {"NoSuchKeyword": "x"}).status_code == 400
    assert client.get("/dicomweb/studies", {"limit": "many"}).status_code == 400
    included = client.get("/dicomweb/studies", {"includefield": "PatientSex"}).json()
    assert all("00100040" in study for study in included)
