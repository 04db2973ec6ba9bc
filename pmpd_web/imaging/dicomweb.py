"""DICOMweb for the embedded OHIF viewer, other viewers and study browsers, and scripts: QIDO-RS
search and WADO-RS retrieval (metadata, instances, frames, bulk data, rendered images and
thumbnails) of the platform's de-identified studies.

Same login as the pages (the session, or an API token), same permission check: a user sees the
studies of patients in cohorts where ``can(user, cohort, VIEW_IMAGES)``. Searches show nothing
else, and retrieving anything else answers 404 whatever the reason (another cohort, or a role
without images), so the answers do not tell which studies exist. Anonymous requests get 401.

Read-only: images arrive through the upload pages and their ingest, never over STOW-RS. OHIF's
segmentation mode POSTs to ``/studies`` without a CSRF token; that is refused with 405.

Frames are served without decoding the image: where an instance's pixel data starts in its
file is read once (cached per file), then a frame is one seek and read (native pixel data) or
its fragments (encapsulated pixel data, sent in its own transfer syntax when the client accepts
it, decoded by pydicom otherwise). The protocol itself is in ``dicomweb_protocol``, the
rendering of images in ``rendering``, who asks in ``dicomweb_auth``.
"""

from __future__ import annotations

import functools
import json
import os
import time
import uuid
from collections import defaultdict
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass

import pydicom
from django.db.models import Case, Count, IntegerField, OuterRef, QuerySet, Subquery, Value, When
from django.http import HttpResponse, StreamingHttpResponse
from django.urls import reverse
from django.views.decorators.csrf import csrf_exempt
from pydicom.uid import UID
from rest_framework.exceptions import Throttled

from pmpd_web.accounts.audit import record as audit
from pmpd_web.accounts.models import AuditAction
from pmpd_web.accounts.permissions import Action, can, visible_cohorts
from pmpd_web.cohorts.models import Cohort

from . import rendering
from .dicomweb_auth import authenticated_user
from .dicomweb_protocol import (
    APPLICATION_DICOM,
    DICOM_JSON,
    EXPLICIT_VR_LITTLE_ENDIAN,
    OCTET_STREAM,
    PIXEL_DATA,
    RETRIEVE_URL,
    DicomWebError,
    PixelLayout,
    Query,
    acceptable,
    accepted_types,
    accepts_json,
    as_explicit_little_endian,
    choose,
    choose_single_part,
    complete,
    decoded_frames,
    element,
    has_wildcard,
    matches,
    multipart,
    parse_query,
    read_pixel_layout,
    search_warnings,
    stored_frames,
    tag_key,
    uid_list,
)
from .models import DicomInstance, ImageSeries, ImagingStudy

MAX_RESULTS = 1000
CHUNK_BYTES = 256 * 1024
SERIES_FILES_TTL_S = 30
SERIES_FILES_KEPT = 512

# What each search level answers (PS3.18 tables 10.6.3-3 to -5, and what OHIF reads) from the
# stored headers beside the database's columns, and what ``includefield=all`` adds.
STUDY_FROM_HEADERS = (
    "00080005",  # SpecificCharacterSet
    "00080030",  # StudyTime
    "00080050",  # AccessionNumber
    "00080090",  # ReferringPhysicianName
    "00100010",  # PatientName
    "00100030",  # PatientBirthDate
    "00100040",  # PatientSex
    "00200010",  # StudyID
)
STUDY_LEVEL = frozenset(
    {"00080020", "00080030", "00080050", "00080090", "00081030", "00081032", "0020000D"}
    | {"00200010", "00101010", "00101020", "00101030"}
)
SERIES_FROM_HEADERS = ("00080005", "00080021", "00080031")  # character set, series date, time
SERIES_LEVEL = frozenset(
    {"00080021", "00080031", "00080060", "0008103E", "00080070", "00081090", "00180015"}
    | {"00185100", "0020000E", "00200011", "00200052", "00400244", "00400245"}
)
INSTANCE_FROM_HEADERS = (
    "00080005",  # SpecificCharacterSet
    "00080016",  # SOPClassUID
    "00080060",  # Modality
    "00200013",  # InstanceNumber
    "00280008",  # NumberOfFrames
    "00280010",  # Rows
    "00280011",  # Columns
    "00280100",  # BitsAllocated
)


def _error(status: int, message: str, **headers: str) -> HttpResponse:
    response = HttpResponse(
        json.dumps({"error": message}), status=status, content_type="application/json"
    )
    for name, value in headers.items():
        response[name.replace("_", "-")] = value
    return response


def dicomweb_view(view: Callable) -> Callable:
    """Authentication (401), read-only methods (405) and refusals as JSON.

    CSRF protection is not needed: nothing but GET and HEAD gets past the method check, so no
    request here changes anything; exempting the views lets a refused POST say why.
    """

    @functools.wraps(view)
    def wrapper(request, *args, **kwargs):
        try:
            user = authenticated_user(request)
        except Throttled as exc:
            return _error(429, str(exc.detail), Retry_After=str(int(exc.wait or 1)))
        if user is None:
            return _error(
                401, "Log in to the PMPD platform first.", WWW_Authenticate='Token realm="pmpd"'
            )
        request.user = user
        if request.method not in ("GET", "HEAD"):
            return _error(
                405,
                "The platform's DICOMweb is read-only: images arrive through the upload pages.",
                Allow="GET, HEAD",
            )
        try:
            return view(request, *args, **kwargs)
        except DicomWebError as exc:
            return _error(exc.status, exc.message)

    return csrf_exempt(wrapper)


def visible_studies(user) -> QuerySet[ImagingStudy]:
    """The imaging studies ``user`` may view: those of cohorts where they have VIEW_IMAGES."""
    cohorts = visible_cohorts(user, Cohort.objects.all(), Action.VIEW_IMAGES)
    return ImagingStudy.objects.filter(patient__cohort__in=cohorts)


def _json(request, data, *, warnings: Iterable[str] = ()) -> HttpResponse:
    """DICOM JSON, the only form of searches and metadata: another Accept gets 406."""
    if not accepts_json(request.headers.get("Accept", "")):
        raise DicomWebError(406, f"Searches and metadata are answered as {DICOM_JSON} only.")
    response = HttpResponse(json.dumps(data, separators=(",", ":")), content_type=DICOM_JSON)
    if warnings := list(warnings):
        response.headers["Warning"] = ", ".join(warnings)
    return response


def _retrieve_url(request, dataset: dict, level: str) -> str:
    """Where WADO-RS retrieves what a search answer describes (RetrieveURL, 0008,1190)."""
    uids = [dataset["0020000D"]["Value"][0]]
    route = "dicomweb-study"
    if level in ("series", "instance"):
        uids.append(dataset["0020000E"]["Value"][0])
        route = "dicomweb-series"
    if level == "instance":
        uids.append(dataset["00080018"]["Value"][0])
        route = "dicomweb-instance"
    return request.build_absolute_uri(reverse(route, args=uids))


def _search(
    request,
    *,
    level: str,
    queryset: QuerySet,
    db_filters: dict[str, Callable[[QuerySet, str], QuerySet | None]],
    build: Callable[[list, Query], list[dict]],
) -> HttpResponse:
    """Filter in the database what it can, build the answers, match the rest on them."""
    if not accepts_json(request.headers.get("Accept", "")):
        raise DicomWebError(406, f"Searches are answered as {DICOM_JSON} only.")
    params = {name: request.GET.getlist(name) for name in request.GET}
    query = parse_query(params, max_limit=MAX_RESULTS)
    remaining = dict(query.filters)
    for key, apply in db_filters.items():
        if key in remaining:
            filtered = apply(queryset, remaining[key])
            if filtered is not None:
                queryset = filtered
                del remaining[key]
    end = query.offset + query.limit
    if remaining:
        datasets = [
            dataset
            for dataset in build(list(queryset), query)
            if all(matches(dataset, key, value) for key, value in remaining.items())
        ]
        truncated = len(datasets) > end
        datasets = datasets[query.offset : end]
    else:
        rows = list(queryset[query.offset : end + 1])
        truncated = len(rows) > query.limit
        datasets = build(rows[: query.limit], query)
    for dataset in datasets:
        dataset[RETRIEVE_URL] = element("UR", _retrieve_url(request, dataset, level))
    warnings = search_warnings(
        query, truncated=truncated and query.limit == MAX_RESULTS, service=request.get_host()
    )
    return _json(
        request, [dict(sorted(dataset.items())) for dataset in datasets], warnings=warnings
    )


def _with_upper_levels(datasets: list[dict], upper: dict[str, dict], key: str) -> list[dict]:
    """Each dataset completed with the attributes of its study (or series), found in
    ``upper`` by its value of ``key``: series and instance answers hold their study's and
    patient's attributes, instance answers their series' too, whether or not the path names
    the study (PS3.18 tables 10.6.3-4 and -5 ask it without one; Orthanc answers so always)."""
    merged = []
    for dataset in datasets:
        above = upper.get(dataset[key]["Value"][0], {})
        combined = dict(above)
        combined.update((k, v) for k, v in dataset.items() if k not in above or "Value" in v)
        merged.append(combined)
    return merged


def _date_filter(field: str) -> Callable[[QuerySet, str], QuerySet | None]:
    def apply(queryset: QuerySet, value: str) -> QuerySet | None:
        if has_wildcard(value) or "\\" in value:
            return None
        if "-" not in value:
            return queryset.filter(**{field: value})
        low, high = value.split("-", 1)
        if low:
            queryset = queryset.filter(**{f"{field}__gte": low})
        if high:
            queryset = queryset.filter(**{f"{field}__lte": high})
        return queryset

    return apply


def _exact_filter(field: str, *, integer: bool = False) -> Callable:
    def apply(queryset: QuerySet, value: str) -> QuerySet | None:
        if has_wildcard(value):
            return None
        values = value.split("\\")
        if integer:
            try:
                values = [int(v) for v in values]
            except ValueError:
                return queryset.none()
        return queryset.filter(**{f"{field}__in": values})

    return apply


def _uid_filter(field: str) -> Callable[[QuerySet, str], QuerySet]:
    return lambda queryset, value: queryset.filter(**{f"{field}__in": uid_list(value)})


def _images_first(instances: QuerySet[DicomInstance]) -> QuerySet[DicomInstance]:
    """``instances`` in series order, those of image series before those of segmentations."""
    is_segmentation = Case(
        When(series__modality="SEG", then=Value(1)), default=Value(0), output_field=IntegerField()
    )
    return instances.annotate(is_segmentation=is_segmentation).order_by(
        "is_segmentation", "series__series_number", "series_id", "instance_number", "pk"
    )


def _representative(outer: str) -> Subquery:
    """The first instance of each study or series (``outer`` leads there), preferring
    images to segmentations: its headers give the study- and series-level attributes."""
    first = _images_first(DicomInstance.objects.filter(**{outer: OuterRef("pk")}))
    return Subquery(first.values("pk")[:1])


def _headers_of(pks: Iterable[int | None]) -> dict[int, dict]:
    wanted = [pk for pk in pks if pk]
    return dict(DicomInstance.objects.filter(pk__in=wanted).values_list("pk", "metadata"))


def _study_datasets(studies: list[ImagingStudy], query: Query) -> list[dict]:
    ids = [study.pk for study in studies]
    summary = {
        pk: (n_series, n_instances, representative)
        for pk, n_series, n_instances, representative in ImagingStudy.objects.filter(pk__in=ids)
        .annotate(
            series_count=Count("series", distinct=True),
            instance_count=Count("series__instances"),
            representative=_representative("series__study"),
        )
        .values_list("pk", "series_count", "instance_count", "representative")
    }
    modalities: dict[int, set[str]] = defaultdict(set)
    for study_id, modality in ImageSeries.objects.filter(study_id__in=ids).values_list(
        "study_id", "modality"
    ):
        modalities[study_id].add(modality)
    headers = _headers_of(row[2] for row in summary.values())
    datasets = []
    for study in studies:
        n_series, n_instances, representative = summary.get(study.pk, (0, 0, None))
        stored = headers.get(representative, {})
        dataset = {
            "0020000D": element("UI", study.study_instance_uid),
            "00080020": element("DA", study.study_date),
            "00081030": element("LO", study.description),
            "00100020": element("LO", study.patient.study_id),
            "00080061": element("CS", sorted(modalities[study.pk])),
            "00201206": element("IS", n_series),
            "00201208": element("IS", n_instances),
        }
        complete(dataset, stored, STUDY_FROM_HEADERS)
        if not dataset["00100010"].get("Value"):
            dataset["00100010"] = element("PN", study.patient.study_id)
        extra = query.wanted()
        if query.include_all:
            extra |= {key for key in stored if key.startswith("0010") or key in STUDY_LEVEL}
        complete(dataset, stored, sorted(extra))
        datasets.append(dataset)
    return datasets


@dicomweb_view
def search_studies(request):
    studies = (
        visible_studies(request.user)
        .select_related("patient")
        .order_by("-study_date", "study_instance_uid")
    )

    def by_modalities(queryset: QuerySet, value: str) -> QuerySet:
        return queryset.filter(series__modality__in=value.split("\\")).distinct()

    return _search(
        request,
        level="study",
        queryset=studies,
        db_filters={
            "0020000D": _uid_filter("study_instance_uid"),
            "00100020": _exact_filter("patient__study_id"),
            "00080020": _date_filter("study_date"),
            "00080061": by_modalities,
        },
        build=_study_datasets,
    )


def _series_datasets(series_list: list[ImageSeries], query: Query) -> list[dict]:
    ids = [series.pk for series in series_list]
    summary = {
        pk: (n_instances, representative)
        for pk, n_instances, representative in ImageSeries.objects.filter(pk__in=ids)
        .annotate(instance_count=Count("instances"), representative=_representative("series"))
        .values_list("pk", "instance_count", "representative")
    }
    headers = _headers_of(row[1] for row in summary.values())
    datasets = []
    for series in series_list:
        n_instances, representative = summary.get(series.pk, (0, None))
        stored = headers.get(representative, {})
        dataset = {
            "0020000D": element("UI", series.study.study_instance_uid),
            "0020000E": element("UI", series.series_instance_uid),
            "00080060": element("CS", series.modality),
            "00200011": element("IS", series.series_number),
            "0008103E": element("LO", series.description),
            "00201209": element("IS", n_instances),
        }
        complete(dataset, stored, SERIES_FROM_HEADERS)
        extra = query.wanted()
        if query.include_all:
            extra |= {key for key in stored if key in SERIES_LEVEL}
        complete(dataset, stored, sorted(extra))
        datasets.append(dataset)
    return datasets


def _studies_of(rows: Iterable, study_of: Callable, query: Query) -> dict[str, dict]:
    """The study-level answers of the studies of ``rows``, by Study Instance UID."""
    studies = {study.pk: study for study in map(study_of, rows)}
    datasets = _study_datasets(list(studies.values()), query)
    return {dataset["0020000D"]["Value"][0]: dataset for dataset in datasets}


def _series_with_study(rows: list[ImageSeries], query: Query) -> list[dict]:
    studies = _studies_of(rows, lambda row: row.study, query)
    return _with_upper_levels(_series_datasets(rows, query), studies, "0020000D")


@dicomweb_view
def search_series(request, study: str | None = None):
    series = ImageSeries.objects.filter(study__in=visible_studies(request.user)).select_related(
        "study__patient"
    )
    if study is not None:
        series = series.filter(study__study_instance_uid=study)
    return _search(
        request,
        level="series",
        queryset=series.order_by("study_id", "series_number", "pk"),
        db_filters={
            "0020000D": _uid_filter("study__study_instance_uid"),
            "0020000E": _uid_filter("series_instance_uid"),
            "00080060": _exact_filter("modality"),
            "00200011": _exact_filter("series_number", integer=True),
            "00100020": _exact_filter("study__patient__study_id"),
        },
        build=_series_with_study,
    )


def _instance_datasets(instances: list[DicomInstance], query: Query) -> list[dict]:
    datasets = []
    for instance in instances:
        stored = instance.metadata
        dataset = {
            "0020000D": element("UI", instance.series.study.study_instance_uid),
            "0020000E": element("UI", instance.series.series_instance_uid),
            "00080018": element("UI", instance.sop_instance_uid),
        }
        complete(dataset, stored, INSTANCE_FROM_HEADERS)
        if query.include_all:
            dataset.update({k: v for k, v in stored.items() if k not in dataset})
        complete(dataset, stored, sorted(query.wanted()))
        datasets.append(dataset)
    return datasets


def _instances_with_series_and_study(rows: list[DicomInstance], query: Query) -> list[dict]:
    series = {row.series.pk: row.series for row in rows}
    by_uid = {
        dataset["0020000E"]["Value"][0]: dataset
        for dataset in _series_with_study(list(series.values()), query)
    }
    return _with_upper_levels(_instance_datasets(rows, query), by_uid, "0020000E")


@dicomweb_view
def search_instances(request, study: str | None = None, series: str | None = None):
    instances = DicomInstance.objects.filter(
        series__study__in=visible_studies(request.user)
    ).select_related("series__study__patient")
    if study is not None:
        instances = instances.filter(series__study__study_instance_uid=study)
    if series is not None:
        instances = instances.filter(series__series_instance_uid=series)
    return _search(
        request,
        level="instance",
        queryset=instances.order_by("series_id", "instance_number", "pk"),
        db_filters={
            "0020000D": _uid_filter("series__study__study_instance_uid"),
            "0020000E": _uid_filter("series__series_instance_uid"),
            "00080018": _uid_filter("sop_instance_uid"),
            "00080016": _uid_filter("sop_class_uid"),
            "00200013": _exact_filter("instance_number", integer=True),
            "00100020": _exact_filter("series__study__patient__study_id"),
        },
        build=_instances_with_series_and_study,
    )


# ----------------------------------------------------------------------------------------------
# WADO-RS: metadata


def _instances(
    user, study: str, series: str | None = None, sop: str | None = None
) -> QuerySet[DicomInstance]:
    instances = DicomInstance.objects.filter(
        series__study__in=visible_studies(user), series__study__study_instance_uid=study
    )
    if series is not None:
        instances = instances.filter(series__series_instance_uid=series)
    if sop is not None:
        instances = instances.filter(sop_instance_uid=sop)
    return instances.order_by("series__series_number", "series_id", "instance_number", "pk")


def _metadata(request, instances: QuerySet[DicomInstance], *, audited: str) -> HttpResponse:
    """The stored headers of ``instances``, each image's pixel data as a server-relative
    BulkDataURI. ``audited`` names what the audit trail records (nothing when empty)."""
    rows = list(
        instances.values_list(
            "series__study__study_instance_uid",
            "series__series_instance_uid",
            "sop_instance_uid",
            "transfer_syntax_uid",
            "metadata",
        )
    )
    if not rows:
        raise DicomWebError(404, "No such study, series or instance.")
    studies = reverse("dicomweb-studies")
    answer = []
    for study, series, sop, transfer_syntax, metadata in rows:
        if "00280010" in metadata:  # Rows: an image, whose pixel data is bulk data
            bits = (metadata.get("00280100", {}).get("Value") or [16])[0]
            native_words = bits > 8 and not UID(transfer_syntax).is_encapsulated
            uri = f"{studies}/{study}/series/{series}/instances/{sop}/bulkdata/{PIXEL_DATA}"
            pixel_data = {"vr": "OW" if native_words else "OB", "BulkDataURI": uri}
            metadata = {**metadata, PIXEL_DATA: pixel_data}
        answer.append(metadata)
    if audited:
        study = ImagingStudy.objects.select_related("patient__cohort").get(
            study_instance_uid=rows[0][0]
        )
        audit(
            request.user,
            AuditAction.VIEW_PATIENT,
            patient=study.patient,
            via="dicomweb",
            images=audited,
        )
    return _json(request, answer)


@dicomweb_view
def study_metadata(request, study: str):
    return _metadata(request, _instances(request.user, study), audited=f"study {study}")


@dicomweb_view
def series_metadata(request, study: str, series: str):
    instances = _instances(request.user, study, series)
    return _metadata(request, instances, audited=f"series {series}")


@dicomweb_view
def instance_metadata(request, study: str, series: str, sop: str):
    return _metadata(request, _instances(request.user, study, series, sop), audited="")


# ----------------------------------------------------------------------------------------------
# WADO-RS: frames, bulk data and instances


def _storage():
    return DicomInstance._meta.get_field("file").storage


def _file_identity(name: str) -> tuple:
    """The stored file's path, size and time where the storage is local: a file rewritten
    under the same name gets a new cache entry."""
    try:
        path = _storage().path(name)
    except NotImplementedError:
        return (name,)
    stat = os.stat(path)
    return (path, stat.st_size, stat.st_mtime_ns)


def pixel_layout(name: str) -> PixelLayout:
    """The pixel layout of the stored file ``name``, read once per file and process."""
    layout = _cached_layout(name, _file_identity(name))
    if layout is None:
        raise DicomWebError(404, "This instance has no pixel data.")
    return layout


@functools.lru_cache(maxsize=8192)
def _cached_layout(name: str, identity: tuple) -> PixelLayout | None:  # noqa: ARG001 - cache key
    with _storage().open(name, "rb") as handle:
        return read_pixel_layout(handle)


def _file_range(name: str, offset: int, length: int) -> Iterator[bytes]:
    with _storage().open(name, "rb") as handle:
        handle.seek(offset)
        while length > 0:
            chunk = handle.read(min(CHUNK_BYTES, length))
            if not chunk:
                return
            length -= len(chunk)
            yield chunk


def _read_frames(name: str, layout: PixelLayout, indices: list[int], decode: bool):
    """Frames as stored (read lazily, for streaming), or decoded at once so that a failure is
    an answer rather than a cut stream."""
    if decode:
        with _storage().open(name, "rb") as handle:
            return decoded_frames(handle, layout, indices)

    def read() -> Iterator[bytes]:
        with _storage().open(name, "rb") as handle:
            yield from stored_frames(handle, layout, indices)

    return read()


def _multipart_response(
    parts: Iterable[tuple[str, bytes | Iterable[bytes]]], part_type: str, *, stream: bool
) -> HttpResponse:
    boundary = uuid.uuid4().hex
    content_type = f'multipart/related; type="{part_type}"; boundary={boundary}'
    chunks = multipart(boundary, parts)
    if stream:
        return StreamingHttpResponse(chunks, content_type=content_type)
    return HttpResponse(b"".join(chunks), content_type=content_type)


def _parts(bodies: Iterable, media: str, transfer_syntax: str):
    content_type = f"{media}; transfer-syntax={transfer_syntax}"
    return ((content_type, body) for body in bodies)


@dataclass(frozen=True)
class SeriesFiles:
    """Where a series' instances are stored, and the cohort whose permission guards them."""

    cohort_id: int
    files: dict[str, str]
    read_at: float


_series_files: dict[tuple[str, str], SeriesFiles] = {}


def _series_index(study: str, series: str, *, fresh: bool) -> SeriesFiles | None:
    """The stored files of a series, looked up once per ``SERIES_FILES_TTL_S`` seconds and
    process: a viewer asks for a series' frames by the hundred. Not a permission cache: the
    caller checks the user's permission on the cohort at every request."""
    key = (study, series)
    entry = _series_files.get(key)
    if fresh or entry is None or time.monotonic() - entry.read_at > SERIES_FILES_TTL_S:
        rows = DicomInstance.objects.filter(
            series__series_instance_uid=series, series__study__study_instance_uid=study
        ).values_list("sop_instance_uid", "file", "series__study__patient__cohort_id")
        files = {sop: name for sop, name, _ in rows}
        if not files:
            _series_files.pop(key, None)
            return None
        if len(_series_files) >= SERIES_FILES_KEPT:
            _series_files.clear()
        entry = SeriesFiles(cohort_id=rows[0][2], files=files, read_at=time.monotonic())
        _series_files[key] = entry
    return entry


def _instance_file(user, study: str, series: str, sop: str, *, fresh: bool = False) -> str:
    """The stored file of an instance ``user`` may view (404 otherwise, whatever the reason).
    An instance the kept index of its series does not know (stored since: a SEG saved from
    the viewer, a series ingested again) is looked up again before it is refused."""
    entry = _series_index(study, series, fresh=fresh)
    if not fresh and entry is not None and sop not in entry.files:
        entry = _series_index(study, series, fresh=True)
    if (
        entry is None
        or sop not in entry.files
        or not can(user, entry.cohort_id, Action.VIEW_IMAGES)
    ):
        raise DicomWebError(404, "No such instance.")
    return entry.files[sop]


def _instance_pixels(user, study: str, series: str, sop: str) -> tuple[str, PixelLayout]:
    """The file and pixel layout of an instance; a file name kept from before a new ingest
    replaced the file is looked up again."""
    name = _instance_file(user, study, series, sop)
    try:
        return name, pixel_layout(name)
    except FileNotFoundError:
        name = _instance_file(user, study, series, sop, fresh=True)
        return name, pixel_layout(name)


def _frame_numbers(text: str) -> list[int]:
    try:
        numbers = [int(item) for item in text.split(",") if item.strip()]
    except ValueError as exc:
        raise DicomWebError(400, "Frame numbers are whole numbers separated by commas.") from exc
    if not numbers or min(numbers) < 1:
        raise DicomWebError(400, "Frame numbers start at 1.")
    return numbers


@dicomweb_view
def retrieve_frames(request, study: str, series: str, sop: str, frames: str):
    """Frames as multipart/related, or one frame as a single-part body where the client asks
    for ``application/octet-stream`` itself; several frames cannot be one part, so a client
    that takes only single-part bodies gets 406 for them (PS3.18 8.7.3.2)."""
    numbers = _frame_numbers(frames)
    name, layout = _instance_pixels(request.user, study, series, sop)
    if max(numbers) > layout.number_of_frames:
        raise DicomWebError(404, f"This instance has {layout.number_of_frames} frame(s).")
    accepted = accepted_types(request.headers.get("Accept", ""))
    indices = [number - 1 for number in numbers]
    offer = choose(accepted, layout.offers())
    if offer is not None:
        bodies = _read_frames(name, layout, indices, offer.decode)
        return _multipart_response(
            _parts(bodies, offer.media, offer.transfer_syntax),
            offer.media,
            stream=len(indices) > 1,
        )
    single = choose_single_part(accepted, layout.offers())
    if single is None:
        raise DicomWebError(406, f"Frames are offered as {OCTET_STREAM} (explicit VR LE).")
    if len(indices) > 1:
        raise DicomWebError(
            406,
            f"A single-part {single.media} body holds one frame: ask for multipart/related; "
            f"type={single.media} to receive several.",
        )
    body = b"".join(_read_frames(name, layout, indices, single.decode))
    return HttpResponse(
        body, content_type=f"{single.media}; transfer-syntax={single.transfer_syntax}"
    )


@dicomweb_view
def retrieve_bulkdata(request, study: str, series: str, sop: str, tag: str):
    """Bulk data where the metadata's BulkDataURI points: native pixel data in one part,
    encapsulated pixel data one part per frame, another binary attribute in one part."""
    key = tag_key(tag)
    if key != PIXEL_DATA:
        name = _instance_file(request.user, study, series, sop, fresh=True)
        with _storage().open(name, "rb") as handle:
            found = pydicom.dcmread(handle, stop_before_pixels=True).get(int(key, 16))
        if found is None or not isinstance(found.value, bytes):
            raise DicomWebError(404, "No such bulk data.")
        parts = _parts([found.value], OCTET_STREAM, EXPLICIT_VR_LITTLE_ENDIAN)
        return _multipart_response(parts, OCTET_STREAM, stream=False)
    name, layout = _instance_pixels(request.user, study, series, sop)
    every_frame = list(range(layout.number_of_frames))
    if layout.value_offset is None:
        bodies = [b"".join(_read_frames(name, layout, every_frame, decode=True))]
    elif layout.encapsulated:
        bodies = _read_frames(name, layout, every_frame, decode=False)
    else:
        bodies = [_file_range(name, layout.value_offset, layout.native_bytes)]
    syntax = layout.offers()[0].transfer_syntax
    return _multipart_response(_parts(bodies, OCTET_STREAM, syntax), OCTET_STREAM, stream=True)


def _instances_answer(request, instances: QuerySet[DicomInstance]) -> HttpResponse:
    """Instances as DICOM files: as stored when the client takes their transfer syntax,
    otherwise in explicit VR little endian (the default of application/dicom)."""
    rows = list(instances.values_list("file", "transfer_syntax_uid"))
    if not rows:
        raise DicomWebError(404, "No such study, series or instance.")
    accepted = accepted_types(request.headers.get("Accept", ""))
    parts = []
    for name, stored in rows:
        if acceptable(accepted, APPLICATION_DICOM, stored):
            syntax, body = stored, _file_range(name, 0, _storage().size(name))
        elif acceptable(accepted, APPLICATION_DICOM, EXPLICIT_VR_LITTLE_ENDIAN):
            with _storage().open(name, "rb") as handle:
                syntax, body = EXPLICIT_VR_LITTLE_ENDIAN, as_explicit_little_endian(handle)
        else:
            raise DicomWebError(406, f"Instances are offered as {APPLICATION_DICOM}.")
        parts.append((f"{APPLICATION_DICOM}; transfer-syntax={syntax}", body))
    return _multipart_response(parts, APPLICATION_DICOM, stream=True)


@dicomweb_view
def retrieve_study(request, study: str):
    return _instances_answer(request, _instances(request.user, study))


@dicomweb_view
def retrieve_series(request, study: str, series: str):
    return _instances_answer(request, _instances(request.user, study, series))


@dicomweb_view
def retrieve_instance(request, study: str, series: str, sop: str):
    return _instances_answer(request, _instances(request.user, study, series, sop))


# ----------------------------------------------------------------------------------------------
# Rendered images and thumbnails (PNG or JPEG), for study browsers and other viewers


def _rendered_media_type(request) -> str:
    """PNG or JPEG, as the client prefers; JPEG where it takes either (PS3.18 8.7.4)."""
    for entry in accepted_types(request.headers.get("Accept", "")):
        for media in rendering.RENDERED_MEDIA_TYPES:
            if entry.media in ("*/*", "image/*", media):
                return media
    raise DicomWebError(406, "Images are rendered as image/jpeg or image/png.")


def _middle_instance_file(instances: QuerySet[DicomInstance]) -> str:
    """The stored file of the middle instance (by instance number) of the series of the first
    of ``instances``, preferring an image series to a segmentation: what a browser shows as the
    study's or the series' picture."""
    ordered = instances.annotate(
        is_segmentation=Case(
            When(series__modality="SEG", then=Value(1)),
            default=Value(0),
            output_field=IntegerField(),
        )
    ).order_by("is_segmentation", "series__series_number", "series_id", "instance_number", "pk")
    first = ordered.values_list("series_id", flat=True).first()
    if first is None:
        raise DicomWebError(404, "No such study, series or instance.")
    files = list(ordered.filter(series_id=first).values_list("file", flat=True))
    return files[len(files) // 2]


def _rendered(request, name: str, *, frame: int = 1, thumbnail: bool) -> HttpResponse:
    media_type = _rendered_media_type(request)
    try:
        window = rendering.parse_window(request.GET.get("window"))
        viewport = rendering.parse_viewport(request.GET.get("viewport"))
    except rendering.RenderingError as exc:
        raise DicomWebError(400, str(exc)) from exc
    if thumbnail and viewport is None:
        viewport = rendering.Viewport(rendering.THUMBNAIL_SIZE, rendering.THUMBNAIL_SIZE)
    with _storage().open(name, "rb") as handle:
        ds = pydicom.dcmread(handle)
    if "PixelData" not in ds:
        raise DicomWebError(404, "This instance has no pixel data to render.")
    try:
        body = rendering.render(
            ds, media_type=media_type, index=frame - 1, window=window, viewport=viewport
        )
    except rendering.RenderingError as exc:
        raise DicomWebError(404, f"Cannot render: {exc}.") from exc
    except Exception as exc:  # pydicom has no decoder for this transfer syntax
        raise DicomWebError(406, f"This image cannot be decoded here: {exc}") from exc
    return HttpResponse(body, content_type=media_type)


def _study_image(request, study: str, *, thumbnail: bool) -> HttpResponse:
    name = _middle_instance_file(_instances(request.user, study))
    return _rendered(request, name, thumbnail=thumbnail)


def _series_image(request, study: str, series: str, *, thumbnail: bool) -> HttpResponse:
    name = _middle_instance_file(_instances(request.user, study, series))
    return _rendered(request, name, thumbnail=thumbnail)


def _instance_image(request, study, series, sop, *, thumbnail: bool) -> HttpResponse:
    return _rendered(
        request, _instance_file(request.user, study, series, sop, fresh=True), thumbnail=thumbnail
    )


@dicomweb_view
def study_rendered(request, study: str):
    return _study_image(request, study, thumbnail=False)


@dicomweb_view
def study_thumbnail(request, study: str):
    return _study_image(request, study, thumbnail=True)


@dicomweb_view
def series_rendered(request, study: str, series: str):
    return _series_image(request, study, series, thumbnail=False)


@dicomweb_view
def series_thumbnail(request, study: str, series: str):
    return _series_image(request, study, series, thumbnail=True)


@dicomweb_view
def instance_rendered(request, study: str, series: str, sop: str):
    return _instance_image(request, study, series, sop, thumbnail=False)


@dicomweb_view
def instance_thumbnail(request, study: str, series: str, sop: str):
    return _instance_image(request, study, series, sop, thumbnail=True)


@dicomweb_view
def frame_rendered(request, study: str, series: str, sop: str, frames: str):
    numbers = _frame_numbers(frames)
    if len(numbers) > 1:
        raise DicomWebError(400, "A rendered frame is one frame: ask for each separately.")
    name = _instance_file(request.user, study, series, sop, fresh=True)
    return _rendered(request, name, frame=numbers[0], thumbnail=False)
