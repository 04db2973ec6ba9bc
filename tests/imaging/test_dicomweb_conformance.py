"""The platform's DICOMweb beside Orthanc's (issue 10): the same de-identified instances (the
platform's stored files, POSTed to Orthanc's /instances), the same QIDO-RS queries and WADO-RS
retrievals against both, and the answers compared: result sets, the attributes both return,
and frame bytes.

Orthanc with its DICOMweb plugin (Debian packages ``orthanc`` and ``orthanc-dicomweb``, which
``make test`` installs) runs on a free port of 127.0.0.1 for the test; without it the test is
skipped, saying so. Where the two answer differently by design, ``EXPECTED_DIFFERENCES``
says why.
"""

from __future__ import annotations

import io
from urllib.parse import urlencode

import pydicom
import pytest
import requests
from dicom_fixtures import add_imaged_patient
from django.core.files.storage import default_storage
from factories import make_patient
from orthanc_peer import DICOMWEB_ROOT, orthanc_binary, running_orthanc, store_in_orthanc
from web_session import logged_in_session

from pmpd_web.imaging import dicomweb

pytestmark = pytest.mark.slow

FRAMES = "multipart/related; type=application/octet-stream; transfer-syntax=1.2.840.10008.1.2.1"
LEVEL_UID = {"study": "0020000D", "series": "0020000E", "instance": "00080018"}
# Wildcards and UID lists go into the URL as they are: Orthanc 1.10 does not decode "%2A",
# "%3F" or "%5C" in query values (the platform does), and its DICOMweb plugin 1.7 takes UID
# lists joined by commas only (the platform takes backslashes too, as OHIF joins them).
RAW = "*?,"
# Attributes whose values differ by design, and why.
EXPECTED_DIFFERENCES = {
    "00081190": "RetrieveURL names each server's own host and root (compared without them)",
    "00080005": "Orthanc answers ISO_IR 100 where the file has no SpecificCharacterSet",
}


@pytest.fixture(scope="module")
def orthanc():
    binary = orthanc_binary()
    if binary is None:
        pytest.skip(
            "Orthanc with its DICOMweb plugin is not installed: apt-get install orthanc "
            "orthanc-dicomweb (make test does)"
        )
    return binary


@pytest.fixture
def peers(orthanc, live_server, members, cohort, tmp_path):
    """Three patients' CT and SEG in the platform and the same files in Orthanc; yields the
    two DICOMweb roots, a session for each, and the imaged patients."""
    dicomweb._series_files.clear()
    imaged = [
        add_imaged_patient(
            make_patient(cohort, f"PMPD-{index:03d}"),
            folder=tmp_path / f"p{index}",
            index=index,
            n_slices=6,
        )
        for index in (1, 2, 3)
    ]
    files = []
    for patient in imaged:
        for series in (patient.ct, patient.seg):
            for instance in series.instances.all():
                with default_storage.open(instance.file.name, "rb") as handle:
                    files.append(handle.read())
    platform = logged_in_session(live_server.url, "clinician", "pw-clinician")
    with running_orthanc(orthanc, tmp_path / "orthanc") as url, requests.Session() as peer:
        store_in_orthanc(url, files)
        yield {
            "platform": (f"{live_server.url}/dicomweb", platform),
            "orthanc": (f"{url}{DICOMWEB_ROOT}", peer),
            "imaged": imaged,
        }
    platform.close()


def normalised(key: str, element: dict, root: str):
    values = element.get("Value")
    if not values:
        return None
    if key == "00081190":
        return [value.removeprefix(root) for value in values]
    if element.get("vr") in ("IS", "DS"):
        return [float(value) for value in values]
    return values


def compare(label: str, level: str, answers: dict[str, tuple[str, list[dict]]]) -> list[str]:
    """What differs between the two answers: the result set, then each result's values of
    the attributes both return."""
    key = LEVEL_UID[level]
    by_uid = {
        name: {item[key]["Value"][0]: item for item in items}
        for name, (_, items) in answers.items()
    }
    problems = []
    for uid in set(by_uid["platform"]) & set(by_uid["orthanc"]):
        missing = set(by_uid["orthanc"][uid]) - set(by_uid["platform"][uid])
        if missing:
            problems.append(f"{label} {uid}: only Orthanc answers {sorted(missing)}")
            break
    if set(by_uid["platform"]) != set(by_uid["orthanc"]):
        only_platform = set(by_uid["platform"]) - set(by_uid["orthanc"])
        only_orthanc = set(by_uid["orthanc"]) - set(by_uid["platform"])
        problems.append(f"{label}: only the platform {only_platform}, only Orthanc {only_orthanc}")
    for uid in set(by_uid["platform"]) & set(by_uid["orthanc"]):
        ours, theirs = by_uid["platform"][uid], by_uid["orthanc"][uid]
        for tag in sorted(set(ours) & set(theirs)):
            if tag in EXPECTED_DIFFERENCES and tag != "00081190":
                continue
            mine = normalised(tag, ours[tag], answers["platform"][0])
            other = normalised(tag, theirs[tag], answers["orthanc"][0])
            if mine is not None and other is not None and mine != other:
                problems.append(f"{label} {uid} {tag}: platform {mine} Orthanc {other}")
    return problems


def search(peers, path: str, params: dict | None = None) -> dict[str, tuple[str, list[dict]]]:
    answers = {}
    for name in ("platform", "orthanc"):
        root, session = peers[name]
        query = f"?{urlencode(params, safe=RAW)}" if params else ""
        response = session.get(
            root + path + query, headers={"Accept": "application/dicom+json"}, timeout=60
        )
        assert response.status_code in (200, 204), (name, path, params, response.text[:300])
        answers[name] = (root, response.json() if response.content else [])
    return answers


def test_the_same_searches_find_the_same_results(peers):
    first, second, third = peers["imaged"]
    dates = sorted(p.study.study_date for p in peers["imaged"])
    uids = [p.study.study_instance_uid for p in peers["imaged"]]
    study, ct = first.study.study_instance_uid, first.ct.series_instance_uid
    sops = [i.sop_instance_uid for i in first.ct.instances.order_by("instance_number")]
    queries = [
        ("study", "/studies", None),
        ("study", "/studies", {"PatientID": "PMPD-001"}),
        ("study", "/studies", {"00100020": "PMPD-002"}),
        ("study", "/studies", {"PatientName": "PMPD-00*"}),
        ("study", "/studies", {"PatientName": "PMPD-00?"}),
        ("study", "/studies", {"PatientID": "*-003"}),
        ("study", "/studies", {"StudyDate": f"{dates[0]}-{dates[1]}"}),
        ("study", "/studies", {"StudyDate": f"-{dates[0]}"}),
        ("study", "/studies", {"StudyDate": f"{dates[1]}-"}),
        ("study", "/studies", {"StudyDate": dates[2]}),
        ("study", "/studies", {"StudyInstanceUID": f"{uids[0]},{uids[2]}"}),
        ("study", "/studies", {"includefield": "00081030,00100040"}),
        ("study", "/studies", {"includefield": "StudyDescription", "PatientID": "PMPD-002"}),
        ("series", f"/studies/{study}/series", None),
        ("series", f"/studies/{study}/series", {"Modality": "SEG"}),
        ("series", f"/studies/{study}/series", {"SeriesInstanceUID": ct}),
        ("series", "/series", {"PatientID": "PMPD-003"}),
        ("series", "/series", {"Modality": "CT"}),
        ("instance", f"/studies/{study}/series/{ct}/instances", None),
        ("instance", f"/studies/{study}/series/{ct}/instances", {"InstanceNumber": "3"}),
        ("instance", f"/studies/{study}/instances", {"SOPInstanceUID": f"{sops[0]},{sops[4]}"}),
        ("instance", "/instances", {"PatientID": "PMPD-002"}),
        ("instance", "/instances", {"SOPInstanceUID": sops[1]}),
    ]
    problems, table = [], []
    for level, path, params in queries:
        answers = search(peers, path, params)
        label = f"{path} {params or ''}"
        problems += compare(label, level, answers)
        counts = {name: len(items) for name, (_, items) in answers.items()}
        table.append(f"  {counts['platform']:3d} {counts['orthanc']:3d}  {label}")
        assert counts["platform"] > 0 or params, label
    # limit and offset: the pages are as long, and together they are the whole set.
    for name in ("platform", "orthanc"):
        root, session = peers[name]
        pages = [
            session.get(f"{root}/studies", params={"limit": 2, "offset": offset}, timeout=60)
            for offset in (0, 2)
        ]
        found = [s["0020000D"]["Value"][0] for page in pages for s in page.json()]
        assert [len(page.json()) for page in pages] == [2, 1], name
        assert sorted(found) == sorted(uids), name
    print("\nresults: platform, Orthanc, query\n" + "\n".join(table))
    assert not problems, "\n".join(problems)


def test_the_same_metadata_frames_and_instances(peers):
    problems = []
    for patient in peers["imaged"]:
        study = patient.study.study_instance_uid
        for series in (patient.ct, patient.seg):
            path = f"/studies/{study}/series/{series.series_instance_uid}/metadata"
            answers = search(peers, path)
            for _, items in answers.values():
                for item in items:
                    item.pop("7FE00010", None)  # bulk data: each server's own URI
            problems += compare(path, "instance", answers)
            for instance in series.instances.all():
                instance_path = (
                    f"/studies/{study}/series/{series.series_instance_uid}"
                    f"/instances/{instance.sop_instance_uid}"
                )
                numbers = range(1, instance.number_of_frames + 1)
                for number in list(numbers)[:3] + list(numbers)[-1:]:
                    frames = {}
                    for name in ("platform", "orthanc"):
                        root, session = peers[name]
                        response = session.get(
                            f"{root}{instance_path}/frames/{number}",
                            headers={"Accept": FRAMES},
                            timeout=60,
                        )
                        assert response.status_code == 200, (name, instance_path, number)
                        frames[name] = single_part(response)
                    if frames["platform"] != frames["orthanc"]:
                        problems.append(f"{instance_path} frame {number}: the bytes differ")
                datasets = {}
                for name in ("platform", "orthanc"):
                    root, session = peers[name]
                    response = session.get(
                        root + instance_path,
                        headers={"Accept": 'multipart/related; type="application/dicom"'},
                        timeout=60,
                    )
                    assert response.status_code == 200, (name, instance_path)
                    datasets[name] = pydicom.dcmread(io.BytesIO(single_part(response)))
                ours, theirs = datasets["platform"], datasets["orthanc"]
                if (
                    ours.PixelData != theirs.PixelData
                    or ours.SOPInstanceUID != theirs.SOPInstanceUID
                ):
                    problems.append(f"{instance_path}: the retrieved instances differ")
    assert not problems, "\n".join(problems)


def single_part(response: requests.Response) -> bytes:
    """The body of the one part of a multipart/related answer."""
    boundary = response.headers["Content-Type"].split("boundary=")[1].split(";")[0].strip('"')
    body = response.content
    start = body.index(b"\r\n\r\n", body.index(f"--{boundary}".encode())) + 4
    return body[start : body.index(f"\r\n--{boundary}".encode(), start)]
