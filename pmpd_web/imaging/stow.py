"""STOW-RS for the viewer's segmentation edits: ``POST /dicomweb/studies``.

OHIF's segmentation mode saves a reader's corrected mask by posting one DICOM SEG to the
DICOMweb root, with the session cookie, no CSRF token and a same-origin ``Origin`` header. The
request type (multipart/related) makes a browser send a CORS preflight for any other site, so a
session request is accepted only with the platform's own Origin. Accepted: SEG objects only,
from users who may annotate the patient, referencing that patient's stored CT series on its
grid, neither empty nor with overlapping segments. Anything else is refused with the reason
and nothing is stored. The SEG becomes a new mask version "edited by NAME" (needs review).
The answer is Orthanc's: 200 ``application/dicom+json`` with a ReferencedSOPSequence.
"""

from __future__ import annotations

import io
import json
import re

import numpy as np
import pydicom
from django.db import IntegrityError
from django.http import HttpResponse
from django.views.decorators.csrf import csrf_exempt

from pmpd_web.accounts.permissions import Action, can
from pmpd_web.jobs.runner import UserFacingError

from .dicom_series import DicomFile, referenced_series, seg_to_canonical, with_native_pixels
from .dicomweb import search_studies
from .dicomweb_auth import authenticated_user
from .errors import IngestError
from .ingest.outputs import stored_sources
from .mask_versions import store_mask_version
from .models import DicomInstance, ImageSeries, MaskVersion
from .volumes import Grid

DICOM_JSON = "application/dicom+json"
SEG_CLASSES = {
    str(pydicom.uid.SegmentationStorage),
    "1.2.840.10008.5.1.4.1.1.66.7",  # Label Map Segmentation Storage (OHIF's default)
}
MAX_BODY_BYTES = 512 * 1024 * 1024


class Refused(Exception):
    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status
        self.message = message


def _refusal(status: int, message: str) -> HttpResponse:
    return HttpResponse(
        json.dumps({"error": message}), status=status, content_type="application/json"
    )


def _same_origin(request) -> bool:
    origin = request.headers.get("Origin", "")
    return bool(origin) and origin == f"{request.scheme}://{request.get_host()}"


def _parts(request) -> list[bytes]:
    """The bodies of a ``multipart/related; type="application/dicom"`` request."""
    content_type = request.headers.get("Content-Type", "")
    if not content_type.lower().startswith("multipart/related"):
        raise Refused(415, 'STOW-RS takes multipart/related; type="application/dicom" only.')
    found = re.search(r'boundary="?([^";]+)"?', content_type)
    if found is None:
        raise Refused(400, "The multipart/related request has no boundary.")
    if int(request.headers.get("Content-Length") or 0) > MAX_BODY_BYTES:
        raise Refused(413, "The request is larger than a segmentation can be.")
    delimiter = b"--" + found.group(1).encode()
    parts = []
    for chunk in request.body.split(delimiter)[1:]:
        if chunk.startswith(b"--"):
            break
        headers, _, content = chunk.partition(b"\r\n\r\n")
        if b"application/dicom" not in headers.lower():
            raise Refused(415, "Each part must be application/dicom.")
        parts.append(content.removesuffix(b"\r\n"))
    if not parts:
        raise Refused(400, "The request holds no DICOM object.")
    if len(parts) > 1:
        # One mask version per request (as OHIF sends): a refusal then stores nothing.
        raise Refused(400, f"Send one SEG per request (this one holds {len(parts)} objects).")
    return parts


def _target_ct(user, seg: pydicom.Dataset) -> ImageSeries:
    """The stored CT series the SEG references, which ``user`` may annotate."""
    uids = referenced_series(seg)
    if len(uids) != 1:
        raise Refused(409, f"The SEG must reference one CT series (it references {len(uids)}).")
    ct = (
        ImageSeries.objects.filter(series_instance_uid=next(iter(uids)), modality="CT")
        .select_related("study__patient__cohort")
        .first()
    )
    if ct is None or not can(user, ct.study.patient.cohort_id, Action.VIEW_IMAGES):
        raise Refused(409, "The SEG references no CT series stored for a patient you can see.")
    if not can(user, ct.study.patient.cohort_id, Action.ANNOTATE):
        raise Refused(403, "Your role in this cohort does not allow: annotate.")
    if str(seg.get("StudyInstanceUID", "")) != ct.study.study_instance_uid:
        raise Refused(
            409,
            "The SEG's study is not the study of the CT series it references (another "
            "patient's images?).",
        )
    return ct


def _check_grid(seg: pydicom.Dataset, ct: ImageSeries) -> None:
    grid = Grid.from_dict(ct.geometry)
    if (int(seg.get("Rows", 0)), int(seg.get("Columns", 0))) != (grid.size[1], grid.size[0]):
        raise Refused(
            409,
            f"The SEG's frames are {seg.get('Rows')}x{seg.get('Columns')}; the CT's slices are "
            f"{grid.size[1]}x{grid.size[0]}: not on the CT's grid.",
        )
    frame = str(seg.get("FrameOfReferenceUID", ""))
    if ct.frame_of_reference_uid and frame and frame != ct.frame_of_reference_uid:
        raise Refused(409, "The SEG's frame of reference is not the CT's: not on its grid.")


def _mask(seg: pydicom.Dataset, ct: ImageSeries) -> np.ndarray:
    try:
        if not np.asarray(seg.pixel_array).any():
            raise Refused(409, "The SEG is empty: no segment has a voxel.")
    except Refused:
        raise
    except Exception as exc:
        raise Refused(400, f"The SEG's pixel data cannot be read ({type(exc).__name__}).") from None
    sources = stored_sources(ct)
    try:
        return seg_to_canonical(
            DicomFile(path=None, dataset=seg, label="The SEG"),
            [str(ds.SOPInstanceUID) for ds in sources],
            label_pancreas=1,
            label_tumour=2,
            refuse_overlap=True,
        )
    except IngestError as exc:
        raise Refused(409, str(exc)) from None


def _store(request, user, data: bytes) -> tuple[dict, str, str]:
    try:
        seg = pydicom.dcmread(io.BytesIO(data))
    except Exception as exc:
        raise Refused(400, f"Not a DICOM file ({type(exc).__name__}).") from None
    if str(seg.get("SOPClassUID", "")) not in SEG_CLASSES:
        raise Refused(
            409,
            f"Only DICOM SEG objects can be stored here; this is {seg.get('Modality', '?')} "
            f"({seg.get('SOPClassUID', 'no SOP class')}).",
        )
    try:
        # Stored and served uncompressed; OHIF's RLE-compressed bitmaps are decoded here.
        with_native_pixels(seg, label="The SEG")
    except IngestError as exc:
        raise Refused(400, str(exc)) from None
    if DicomInstance.objects.filter(sop_instance_uid=str(seg.SOPInstanceUID)).exists():
        raise Refused(409, "This SEG instance is already stored.")
    ct = _target_ct(user, seg)
    _check_grid(seg, ct)
    mask = _mask(seg, ct)
    base = ct.mask_versions.order_by("-number").first()
    try:
        version = store_mask_version(
            ct_series=ct,
            mask=mask,
            source=MaskVersion.Source.EDITED,
            source_label=user.get_full_name() or user.get_username(),
            user=user,
            seg=seg,
            edited_from=base,
        )
    except (UserFacingError, IntegrityError) as exc:
        raise Refused(409, str(exc)) from None
    base_url = f"{request.scheme}://{request.get_host()}/dicomweb"
    study = ct.study.study_instance_uid
    return (
        {
            "00081150": {"vr": "UI", "Value": [str(seg.SOPClassUID)]},
            "00081155": {"vr": "UI", "Value": [str(seg.SOPInstanceUID)]},
            "00081190": {
                "vr": "UR",
                "Value": [
                    f"{base_url}/studies/{study}/series/{version.seg_series.series_instance_uid}"
                    f"/instances/{seg.SOPInstanceUID}"
                ],
            },
        },
        study,
        base_url,
    )


@csrf_exempt
def store_instances(request) -> HttpResponse:
    """STOW-RS: store the posted SEG(s) as new mask versions, or refuse with the reason."""
    user = authenticated_user(request)
    if user is None:
        return _refusal(401, "Log in to the PMPD platform first.")
    if "Authorization" not in request.headers and not _same_origin(request):
        return _refusal(
            403, "A request with the session cookie must come from the platform's own pages."
        )
    try:
        stored = [_store(request, user, data) for data in _parts(request)]
    except Refused as exc:
        return _refusal(exc.status, exc.message)
    answer = {
        "00081190": {"vr": "UR", "Value": [f"{stored[0][2]}/studies/{stored[0][1]}"]},
        "00081199": {"vr": "SQ", "Value": [item for item, _, _ in stored]},
    }
    return HttpResponse(json.dumps(answer), content_type=DICOM_JSON)


@csrf_exempt
def studies(request) -> HttpResponse:
    """``/dicomweb/studies``: STOW-RS for POST, QIDO-RS study search otherwise."""
    if request.method == "POST":
        return store_instances(request)
    return search_studies(request)
