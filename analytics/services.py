"""The analytics shell: who may see which cohorts, the cache, and what pages and API share.

A request names cohorts, optionally a model version, and analysis parameters
(:mod:`analytics.parameters`). :func:`resolve_selection` checks the permission on every cohort;
:func:`results_for` computes what the requested sections need through :func:`cached`, so the
second request for the same data and parameters reads stored results and never loads the
patients; :mod:`analytics.catalogue` turns the results into figures and tables, and
:func:`section_context` stores a section as the page shows it. Downloads are in
:mod:`analytics.exports`.

:func:`patient_risk_context` is the clinician's view of one patient (MRS against the cut-point,
CA19-9 group, risk group and the risk groups' survival curves) for the patient page.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import math
import pickle
import platform
import threading
import time
import zlib
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from functools import cache, cached_property
from importlib import metadata
from typing import Any, TypeVar

import pandas as pd
from django.conf import settings
from django.db import IntegrityError, transaction
from django.db.models import F
from django.http import Http404
from django.utils import timezone

from analytics import figures as fig
from analytics.analyses import (
    CoxAnalysis,
    CutpointAnalysis,
    PreparedFrame,
    Variable,
    cox_analysis,
    cutpoint_for,
    kaplan_meier_for,
    mrs_percentile,
    prepare_frame,
    study_variables,
    subgroups_for,
)
from analytics.catalogue import MODEL_SECTIONS, SECTIONS, Entry, Results, display_rows, entries
from analytics.loaders import LoadedData, fingerprint, frame_hash, load_frame, study_definitions
from analytics.models import AnalysisCache
from analytics.parameters import AnalysisParameters, parse_parameters
from analytics.stats import (
    AnalysisOptions,
    AnalysisResult,
    CutpointResult,
    KaplanMeierResult,
    NotComputable,
    OperatingPoint,
    run_full_analysis,
)
from inference.models import ModelVersion, PatientPrediction
from inference.operating_point import operating_point_of
from inference.registry import model_version_for
from pmpd_web.accounts.models import acting_user
from pmpd_web.accounts.permissions import Action, api_check, can, require
from pmpd_web.cohorts.models import Cohort, Patient
from pmpd_web.jobs.models import FINISHED, Job

__all__ = [
    "RESEARCH_USE_ONLY",
    "PatientRisk",
    "Selection",
    "cached",
    "canonical_json",
    "export_stem",
    "patient_risk",
    "patient_risk_context",
    "provenance",
    "resolve_selection",
    "results_for",
    "section_context",
]

RESEARCH_USE_ONLY = (
    "Research use only: PMPD is a second reader that assists radiologists and clinicians, "
    "never a replacement."
)
#: Bump when the pickled result objects change shape: older cache rows are then ignored.
CACHE_FORMAT = 2
PACKAGES = ("django", "numpy", "pandas", "scipy", "lifelines", "scikit-learn", "plotly")
CLINICAL_GROUPINGS = ("ca19_9_group", "nccn_resectability")

T = TypeVar("T")


@cache
def package_versions() -> dict[str, str]:
    """Versions of the platform and the packages the numbers depend on."""
    versions = {"python": platform.python_version()}
    for name in ("pmpd-platform", *PACKAGES):
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = "not installed"
    return versions


# --------------------------------------------------------------------------------------------
# Selection: cohorts + model version, permission-checked
# --------------------------------------------------------------------------------------------


@dataclass
class CacheEvent:
    kind: str
    hit: bool
    seconds: float


class Selection:
    """The cohorts and model version of a request, with lazily loaded data."""

    def __init__(self, cohorts: Sequence[Cohort], model_version: ModelVersion | None):
        self.cohorts = sorted(cohorts, key=lambda cohort: cohort.pk)
        self.model_version = model_version
        self.events: list[CacheEvent] = []
        self._prepared: dict[str, PreparedFrame] = {}

    @property
    def cohort_ids(self) -> list[int]:
        return [cohort.pk for cohort in self.cohorts]

    @property
    def synthetic(self) -> bool:
        return any(cohort.is_synthetic for cohort in self.cohorts) or bool(
            self.model_version is not None and self.model_version.is_synthetic
        )

    @property
    def label(self) -> str:
        names = ", ".join(cohort.name for cohort in self.cohorts)
        version = self.model_version.name if self.model_version else "no model version"
        return f"{names} · {version}"

    @cached_property
    def key(self) -> str:
        """Identifies the model version and cohorts (not the data)."""
        version = self.model_version.pk if self.model_version else None
        return _hash({"model_version": version, "cohorts": self.cohort_ids})

    @cached_property
    def data_key(self) -> str:
        return fingerprint(self.cohorts, self.model_version)

    @cached_property
    def operating_point(self) -> OperatingPoint | None:
        """The model version's locked operating point (``None`` without one), without the
        development cohort's name: a statistician of a validation cohort need not be one of
        the development cohort."""
        point = operating_point_of(self.model_version)
        return None if point is None else dataclasses.replace(point, development_cohort="")

    def options(self, params: AnalysisParameters) -> AnalysisOptions:
        """The analysis options of ``params`` at the version's locked operating point."""
        version = self.model_version
        return dataclasses.replace(
            params.options(synthetic=self.synthetic),
            operating_point=self.operating_point,
            includes_development_cohort=version is not None
            and version.trained_on_id in self.cohort_ids,
        )

    @cached_property
    def loaded(self) -> LoadedData:
        return load_frame(self.cohorts, self.model_version)

    def prepared(self, options: AnalysisOptions) -> PreparedFrame:
        key = canonical_json(dataclasses.asdict(options))
        if key not in self._prepared:
            self._prepared[key] = prepare_frame(self.loaded.frame, options)
        return self._prepared[key]

    @property
    def all_cached(self) -> bool:
        return bool(self.events) and all(event.hit for event in self.events)


def study_variables_of(cohort_ids: Iterable[int]) -> dict[str, Variable]:
    """The study-defined variables of the cohorts, as analysis variables. Only for choosing
    parameters: the permission is checked on the cohorts before any result is shown."""
    return study_variables(study_definitions(list(Cohort.objects.filter(pk__in=cohort_ids))))


def query_cohort_ids(query: Any) -> list[int]:
    """The cohort ids a query names (``cohort=1&cohort=2`` or ``cohort=1,2``)."""
    return [
        int(item)
        for value in query.getlist("cohort")
        for item in value.split(",")
        if item.strip().isdigit()
    ]


def parse_query(query: Any) -> AnalysisParameters:
    """:func:`~analytics.parameters.parse_parameters` knowing the study-defined variables of
    the cohorts the query names: pages, API and background jobs read a query the same way."""
    return parse_parameters(query, study=study_variables_of(query_cohort_ids(query)))


def resolve_selection(user: Any, params: AnalysisParameters, *, api: bool) -> Selection:
    """Check ``VIEW_ANALYTICS`` in every requested cohort (404 for outsiders, 403 for members
    whose role lacks it) and load the cohorts and the model version."""
    check = api_check if api else require
    for cohort_id in params.cohort_ids:
        check(user, cohort_id, Action.VIEW_ANALYTICS)
    cohorts = list(Cohort.objects.filter(pk__in=params.cohort_ids))
    if len(cohorts) != len(params.cohort_ids):
        if api:
            from rest_framework.exceptions import NotFound

            raise NotFound("No such cohort.")
        raise Http404("No such cohort.")
    model_version = (
        None
        if params.model_version_id is None
        else model_version_for(user, params.model_version_id, api=api)
    )
    return Selection(cohorts, model_version)


# --------------------------------------------------------------------------------------------
# Cache
# --------------------------------------------------------------------------------------------


def canonical_json(value: Any) -> str:
    """Sorted, compact JSON: the form hashed into cache keys and printed in exports."""
    return json.dumps(value, sort_keys=True, default=str, separators=(",", ":"))


def _hash(value: Any) -> str:
    return hashlib.sha256(canonical_json(value).encode()).hexdigest()


def _scope(selection: Selection, kind: str, key: Any) -> str:
    return _hash(
        {
            "format": CACHE_FORMAT,
            "selection": selection.key,
            "kind": kind,
            "key": key,
            "packages": package_versions(),
        }
    )


def is_cached(selection: Selection, kind: str, key: Any) -> bool:
    """Whether :func:`cached` would read this result rather than compute it."""
    return AnalysisCache.objects.filter(
        scope=_scope(selection, kind, key), data_key=selection.data_key
    ).exists()


#: Hits of a cache row are written back at most this often per process: one UPDATE per read
#: of the same hot row serialises every concurrent reader of a dashboard on its row lock.
HIT_FLUSH_SECONDS = 30.0
_pending_hits: dict[int, int] = {}
_hits_flushed_at: dict[int, float] = {}
_hits_lock = threading.Lock()
_clock = time.monotonic


def _count_hit(pk: int) -> None:
    """Count one read of cache row ``pk``: the first read in a process is written at once, the
    next ones together every HIT_FLUSH_SECONDS (the admin's hit count is a diagnostic)."""
    now = _clock()
    with _hits_lock:
        _pending_hits[pk] = _pending_hits.get(pk, 0) + 1
        last = _hits_flushed_at.get(pk)
        if last is not None and now - last < HIT_FLUSH_SECONDS:
            return
        count = _pending_hits.pop(pk)
        _hits_flushed_at[pk] = now
    AnalysisCache.objects.filter(pk=pk).update(hits=F("hits") + count)


def cached(selection: Selection, kind: str, key: Any, compute: Callable[[], T]) -> T:
    """``compute()``, or its stored result for this selection, ``kind`` and ``key`` while the
    data have not changed since (:func:`analytics.loaders.fingerprint`)."""
    scope = _scope(selection, kind, key)
    start = time.perf_counter()
    row = (
        AnalysisCache.objects.filter(scope=scope, data_key=selection.data_key)
        .values_list("pk", "payload")
        .first()
    )
    if row is not None:
        try:
            value = pickle.loads(zlib.decompress(bytes(row[1])))
        except Exception:  # noqa: BLE001 - a row from older code is recomputed, not fatal
            value = None
        else:
            _count_hit(row[0])
            selection.events.append(CacheEvent(kind, True, time.perf_counter() - start))
            return value
    value = compute()
    seconds = time.perf_counter() - start
    payload = zlib.compress(pickle.dumps(value, protocol=pickle.HIGHEST_PROTOCOL), 1)
    # Rows computed from data as they were before a change will never be read again.
    AnalysisCache.objects.filter(selection=selection.key).exclude(
        data_key=selection.data_key
    ).delete()
    # A concurrent request may have stored the same result first: keep theirs.
    with contextlib.suppress(IntegrityError), transaction.atomic():
        AnalysisCache.objects.update_or_create(
            scope=scope,
            defaults={
                "selection": selection.key,
                "kind": kind,
                "data_key": selection.data_key,
                "model_version": selection.model_version,
                "cohort_ids": selection.cohort_ids,
                "payload": payload,
                "payload_bytes": len(payload),
                "compute_seconds": seconds,
                "hits": 0,
            },
        )
    selection.events.append(CacheEvent(kind, False, seconds))
    return value


# --------------------------------------------------------------------------------------------
# Results
# --------------------------------------------------------------------------------------------


def _options_key(options: AnalysisOptions) -> dict[str, Any]:
    return dataclasses.asdict(options)


def full_analysis(selection: Selection, params: AnalysisParameters) -> AnalysisResult:
    """:func:`~analytics.stats.run_full_analysis` of the selection (needs a model version)."""
    options = selection.options(params)
    return cached(
        selection,
        "analysis",
        _options_key(options),
        lambda: run_full_analysis(
            selection.loaded.frame, options=options, slices=selection.loaded.slices
        ),
    )


def results_for(
    selection: Selection, params: AnalysisParameters, sections: Iterable[str]
) -> Results:
    """What the requested ``sections`` need, from the cache where possible."""
    wanted = set(sections)
    options = selection.options(params)
    key = _options_key(options)
    analysis = full_analysis(selection, params) if selection.model_version else None
    clinical: dict[str, KaplanMeierResult | NotComputable] = {}
    if analysis is None and "survival" in wanted:
        clinical = cached(
            selection,
            "clinical-kaplan-meier",
            key,
            lambda: {
                grouping: kaplan_meier_for(selection.prepared(options), grouping, options)
                for grouping in CLINICAL_GROUPINGS
            },
        )
    custom = None
    standard = ("overall", "mrs_group", "risk_group", *CLINICAL_GROUPINGS)
    if params.group and params.group not in standard and "survival" in wanted:
        custom = cached(
            selection,
            "kaplan-meier",
            {**key, "group": params.group},
            lambda: kaplan_meier_for(selection.prepared(options), params.group or "", options),
        )
    overall = None
    chosen_cut: CutpointAnalysis | None = None
    if "survival" in wanted:
        overall = cached(
            selection,
            "kaplan-meier",
            {**key, "group": "overall"},
            lambda: kaplan_meier_for(selection.prepared(options), "overall", options),
        )
        if params.cutpoint_variable:
            chosen_cut = cached(
                selection,
                "cutpoint",
                {**key, "variable": params.cutpoint_variable},
                lambda: cutpoint_for(
                    selection.prepared(options), params.cutpoint_variable or "", options
                ),
            )
    chosen_subgroups = None
    if "subgroups" in wanted and params.subgroups and analysis is not None:
        chosen_subgroups = cached(
            selection,
            "subgroups",
            {**key, "subgroups": params.subgroups},
            lambda: subgroups_for(selection.prepared(options), params.subgroups, options),
        )
    cox: CoxAnalysis | None = None
    if "cox" in wanted:
        cox = cached(
            selection,
            "cox",
            {
                **key,
                "variables": params.cox_variables,
                "univariable": params.univariable_variables,
            },
            lambda: cox_analysis(
                selection.prepared(options),
                variables=params.cox_variables,
                univariable=params.univariable_variables,
                options=options,
                computed=analysis,
            ),
        )
    return Results(
        synthetic=selection.synthetic,
        analysis=analysis,
        clinical_kaplan_meier=clinical,
        custom_group=params.group,
        custom_kaplan_meier=custom,
        cox=cox,
        overall_kaplan_meier=overall,
        cutpoint=chosen_cut,
        chosen_subgroups=chosen_subgroups,
    )


def _about_data(selection: Selection) -> dict[str, Any]:
    """The stored facts about the analysed frame (its hash, its size, the loader's notes)."""
    return cached(
        selection,
        "provenance",
        {},
        lambda: {
            "data_hash": frame_hash(selection.loaded.frame),
            "n_patients": len(selection.loaded.frame),
            "n_patients_in_cohorts": selection.loaded.n_patients_in_cohorts,
            "n_slices": 0 if selection.loaded.slices is None else len(selection.loaded.slices),
            "notes": list(selection.loaded.notes),
        },
    )


def provenance(selection: Selection, params: AnalysisParameters | None = None) -> dict[str, Any]:
    """Where the numbers come from: model version, cohorts, data hash, package versions."""
    about = _about_data(selection)
    version = selection.model_version
    return {
        "research_use_only": RESEARCH_USE_ONLY,
        "synthetic": selection.synthetic,
        "model_version": None
        if version is None
        else {
            "id": version.pk,
            "name": version.name,
            "status": version.status,
            "is_synthetic": version.is_synthetic,
            "code_version": version.code_version,
            "data_hash": version.data_hash,
        },
        "cohorts": [
            {
                "id": cohort.pk,
                "name": cohort.name,
                "data_version": cohort.data_version,
                "is_synthetic": cohort.is_synthetic,
            }
            for cohort in selection.cohorts
        ],
        **about,
        "operating_point": (
            selection.options(params).operating_point_label
            if params is not None and version is not None
            else None
        ),
        "parameters": params.to_dict() if params is not None else None,
        "packages": package_versions(),
        "generated_at": timezone.now().isoformat(timespec="seconds"),
        "cache": [dataclasses.asdict(event) for event in selection.events],
    }


# --------------------------------------------------------------------------------------------
# Dashboard sections
# --------------------------------------------------------------------------------------------


def export_stem(selection: Selection, name: str) -> str:
    """``pmpd-<cohorts>-<model version>-<name>[-SYNTHETIC]``: file names that say what they
    hold and whether it is synthetic."""
    parts = ["pmpd", *(cohort.name for cohort in selection.cohorts)]
    parts.append(selection.model_version.name if selection.model_version else "clinical")
    parts.append(name)
    if selection.synthetic:
        parts.append("SYNTHETIC")
    return "-".join(
        "".join(ch if ch.isalnum() or ch in "._" else "-" for ch in part).strip("-")
        for part in parts
    )


@dataclass(frozen=True)
class Shown:
    """What a page shows of a catalogue entry (plain data: stored with the section)."""

    name: str
    title: str
    section: str
    wide: bool
    not_computable: NotComputable | None
    operating_point: str = ""


def _shown(entry: Entry) -> Shown:
    return Shown(
        entry.name,
        entry.title,
        entry.section,
        entry.wide,
        entry.not_computable,
        entry.operating_point,
    )


def _section_payload(
    selection: Selection, params: AnalysisParameters, section: str
) -> dict[str, Any]:
    results = results_for(selection, params, [section])
    items = entries(results, [section])
    figures = [
        {
            "entry": _shown(entry),
            "json": entry.figure().to_json(),  # type: ignore[misc]
            "element": f"figure-{section}-{entry.name}",
            "filename": export_stem(selection, entry.name),
        }
        for entry in items
        if entry.kind == "figure"
    ]
    tables = []
    for entry in items:
        if entry.kind != "table":
            continue
        columns, rows = (
            ([], []) if isinstance(entry.source, NotComputable) else display_rows(entry.frame())
        )
        tables.append({"entry": _shown(entry), "columns": columns, "rows": rows})
    notes = list(_about_data(selection)["notes"])
    if results.analysis is not None:
        notes.extend(results.analysis.data_notes)
    return {"figures": figures, "tables": tables, "notes": notes}


def _section_key(params: AnalysisParameters, section: str) -> dict[str, Any]:
    return {"section": section, "parameters": params.to_dict()}


def section_context(
    selection: Selection, params: AnalysisParameters, section: str
) -> dict[str, Any]:
    """Everything a dashboard section shows: figures (Plotly JSON), tables (formatted rows),
    notes and provenance. Stored whole, so a second visit reads one row and draws nothing."""
    payload = cached(
        selection,
        "section",
        _section_key(params, section),
        lambda: _section_payload(selection, params, section),
    )
    return {**payload, "about": provenance(selection, params)}


def sections_for(selection: Selection, first: str | None = None) -> list[str]:
    """The sections worth computing for a selection (those of the MRS need a model version),
    ``first`` first."""
    names = [
        name
        for name in SECTIONS
        if selection.model_version is not None or name not in MODEL_SECTIONS
    ]
    if first in names:
        names.remove(first)
        names.insert(0, first)
    return names


def inline_max_patients() -> int:
    """Selections up to this many patients are computed within the request; larger ones by a
    job on the cpu queue while the page shows its progress (``PMPD_ANALYTICS_INLINE_MAX``)."""
    return int(getattr(settings, "PMPD_ANALYTICS_INLINE_MAX", 2000))


def background_job(
    user: Any, selection: Selection, params: AnalysisParameters, section: str, query: str
) -> Job | None:
    """The job computing this section when it is not stored yet and the selection is too large
    to compute within the request; ``None`` when the page can be shown now."""
    key = _section_key(params, section)
    if is_cached(selection, "section", key):
        return None
    n_patients = Patient.objects.filter(cohort_id__in=selection.cohort_ids).count()
    if n_patients <= inline_max_patients():
        return None
    from analytics.tasks import compute_dashboards
    from pmpd_web.jobs.dispatch import start_on_commit

    scope = _scope(selection, "section", key)
    job = (
        Job.objects.filter(kind=Job.Kind.ANALYSIS, parameters__scope=scope)
        .exclude(status__in=FINISHED)
        .first()
    )
    if job is None:
        with transaction.atomic():
            job = Job.objects.create(
                kind=Job.Kind.ANALYSIS,
                cohort=selection.cohorts[0],
                created_by=acting_user(user),
                phrase=f"Waiting for a worker to analyse {n_patients} patients",
                task=compute_dashboards.name,
                parameters={"scope": scope, "query": query, "section": section},
            )
            start_on_commit(job)
        job.refresh_from_db()
    # A worker that already finished (or an eager test run) has stored the section.
    return None if is_cached(selection, "section", key) else job


def selection_for(params: AnalysisParameters) -> Selection:
    """The selection of already-checked parameters (a job's, queued by a permitted user)."""
    cohorts = list(Cohort.objects.filter(pk__in=params.cohort_ids))
    version = (
        ModelVersion.objects.get(pk=params.model_version_id)
        if params.model_version_id is not None
        else None
    )
    return Selection(cohorts, version)


# --------------------------------------------------------------------------------------------
# The clinician's view of one patient
# --------------------------------------------------------------------------------------------


@dataclass(eq=False)
class PatientRisk:
    """One patient's MRS against the cut-point, CA19-9 group, risk group and the curves."""

    allowed: bool
    message: str = ""
    model_version: ModelVersion | None = None
    model_version_source: str = ""
    synthetic: bool = False
    metastasis_risk_score: float | None = None
    mrs_std: float | None = None
    mrs_min: float | None = None
    mrs_max: float | None = None
    n_slices: int | None = None
    fewer_than_4_tumour_slices: bool = False
    predicted_metastasis: bool | None = None
    cutpoint: float | None = None
    cutpoint_method: str = ""
    cutpoint_reason: str = ""
    n_scored: int = 0
    mrs_percentile: float | None = None
    mrs_group: str | None = None
    ca19_9_u_per_ml: float | None = None
    ca19_9_threshold: float = 500.0
    ca19_9_group: str | None = None
    risk_group: str = "unknown"
    risk_group_reason: str = ""
    figure_json: str = ""
    research_use_only: str = RESEARCH_USE_ONLY
    notes: list[str] = field(default_factory=list)

    @property
    def mrs_position_percent(self) -> float:
        return 100.0 * min(max(self.metastasis_risk_score or 0.0, 0.0), 1.0)

    @property
    def cutpoint_position_percent(self) -> float | None:
        return None if self.cutpoint is None else 100.0 * min(max(self.cutpoint, 0.0), 1.0)

    def to_dict(self) -> dict[str, Any]:
        values = {
            name: getattr(self, name)
            for name in (
                "allowed",
                "message",
                "model_version_source",
                "synthetic",
                "metastasis_risk_score",
                "mrs_std",
                "mrs_min",
                "mrs_max",
                "n_slices",
                "fewer_than_4_tumour_slices",
                "predicted_metastasis",
                "cutpoint",
                "cutpoint_method",
                "cutpoint_reason",
                "n_scored",
                "mrs_percentile",
                "mrs_group",
                "ca19_9_u_per_ml",
                "ca19_9_threshold",
                "ca19_9_group",
                "risk_group",
                "risk_group_reason",
                "research_use_only",
                "notes",
            )
        }
        version = self.model_version
        values["model_version"] = (
            None
            if version is None
            else {"id": version.pk, "name": version.name, "is_synthetic": version.is_synthetic}
        )
        return values


def _choose_model_version(
    patient: Patient, model_version: ModelVersion | None
) -> tuple[ModelVersion | None, str]:
    if model_version is not None:
        return model_version, "chosen"
    active = ModelVersion.objects.filter(is_active=True).first()
    if active is not None:
        return active, "the active model version"
    latest = (
        ModelVersion.objects.filter(predictions__patient=patient).order_by("-created_at").first()
    )
    return latest, "the latest model version that scored this patient"


def cohort_risk_groups(
    cohort: Cohort, version: ModelVersion, *, synthetic: bool, selection: Selection | None = None
) -> tuple[dict[str, Any], AnalysisOptions]:
    """The cohort's MRS groups and curves under ``version`` at its locked operating point
    (cached), and the options."""
    params = AnalysisParameters(cohort_ids=(cohort.pk,), model_version_id=version.pk)
    selection = selection or Selection([cohort], version)
    options = selection.options(params)
    risk = cached(
        selection, "patient-risk", _options_key(options), lambda: _risk_groups(selection, options)
    )
    return risk, options


def _risk_groups(selection: Selection, options: AnalysisOptions) -> dict[str, Any]:
    prepared = selection.prepared(options)
    data = prepared.data
    return {
        "cutpoint": prepared.cutpoint,
        "groups": pd.DataFrame(
            {
                "study_id": data["study_id"].to_numpy(),
                "mrs_group": data["mrs_group"].to_numpy(),
                "ca19_9_group": data["ca19_9_group"].to_numpy(),
                "risk_group": data["risk_group"].to_numpy(),
            }
        ),
        "n_scored": int(data["metastasis_risk_score"].notna().sum()),
        "scores": data["metastasis_risk_score"].to_numpy(dtype=float),
        "kaplan_meier": kaplan_meier_for(prepared, "risk_group", options),
    }


def patient_risk(
    user: Any, patient: Patient, model_version: ModelVersion | None = None
) -> PatientRisk:
    """The clinician's view of ``patient`` under ``model_version`` (default: the active one).

    The MRS cut-point is the maximally selected log-rank cut (survminer's ``surv_cutpoint``,
    minprop 0.1) computed on the predictions of this model version for the patient's cohort,
    as on the cohort's survival dashboard; CA19-9 is high above 500 U/mL.
    """
    cohort = patient.cohort
    if not can(user, cohort, Action.VIEW_RESULTS):
        return PatientRisk(allowed=False, message="Your role does not allow viewing results.")
    version, source = _choose_model_version(patient, model_version)
    if version is None:
        return PatientRisk(allowed=True, message="No model version has scored this patient yet.")
    synthetic = cohort.is_synthetic or version.is_synthetic
    prediction = PatientPrediction.objects.filter(patient=patient, model_version=version).first()
    if prediction is None:
        return PatientRisk(
            allowed=True,
            model_version=version,
            model_version_source=source,
            synthetic=synthetic,
            message=f"Model version {version.name} has not scored this patient.",
        )
    selection = Selection([cohort], version)
    risk, options = cohort_risk_groups(cohort, version, synthetic=synthetic, selection=selection)
    groups = risk["groups"]
    row = groups.loc[groups["study_id"] == patient.study_id]

    def group(column: str) -> str | None:
        value = row[column].iloc[0] if len(row) else None
        return None if pd.isna(value) else str(value)

    mrs_group, ca_group = group("mrs_group"), group("ca19_9_group")
    risk_group = group("risk_group") or "unknown"
    cut: CutpointResult | NotComputable = risk["cutpoint"]
    ca = None if patient.ca19_9_u_per_ml is None else float(patient.ca19_9_u_per_ml)
    result = PatientRisk(
        allowed=True,
        model_version=version,
        model_version_source=source,
        synthetic=synthetic,
        metastasis_risk_score=prediction.metastasis_risk_score,
        mrs_std=prediction.mrs_std,
        mrs_min=prediction.mrs_min,
        mrs_max=prediction.mrs_max,
        n_slices=prediction.n_slices,
        fewer_than_4_tumour_slices=prediction.fewer_than_4_tumour_slices,
        predicted_metastasis=prediction.predicted_metastasis,
        n_scored=risk["n_scored"],
        mrs_group=mrs_group,
        ca19_9_u_per_ml=ca,
        ca19_9_threshold=options.ca19_9_threshold_u_per_ml,
        ca19_9_group=ca_group,
        risk_group=risk_group,
    )
    result.mrs_percentile = _finite(
        mrs_percentile(risk["scores"], prediction.metastasis_risk_score)
    )
    locked = options.operating_point
    if locked is not None and locked.mrs_cutpoint is not None:
        result.cutpoint = locked.mrs_cutpoint
        result.cutpoint_method = (
            f"locked at the training of {version.name}: maximally selected log-rank statistic "
            f"(minprop {locked.mrs_cutpoint_minprop:g}) on the out-of-fold MRS of its "
            "development cohort; low = MRS at or below the cut"
        )
    elif isinstance(cut, CutpointResult):
        result.cutpoint = cut.cutpoint
        result.cutpoint_method = (
            f"maximally selected log-rank statistic (minprop {cut.minprop:g}) on the "
            f"{cut.n} patients of {cohort.name} scored by {version.name} with survival data; "
            "low = MRS at or below the cut"
        )
    else:
        result.cutpoint_reason = cut.reason
    if risk_group == "unknown":
        missing = []
        if ca_group is None:
            missing.append("CA19-9 is not recorded")
        if mrs_group is None:
            missing.append("the MRS group is not available (no cut-point, or no survival data)")
        result.risk_group_reason = "; ".join(missing)
    if prediction.fewer_than_4_tumour_slices:
        result.notes.append(
            f"Scored from {prediction.n_slices} tumour slice(s): fewer than the 4 the method uses."
        )
    highlight = risk_group if risk_group != "unknown" else None
    # The same figure for every patient of a group: drawn once per group and data version.
    result.figure_json = cached(
        selection,
        "patient-risk-figure",
        {**_options_key(options), "highlight": highlight, "synthetic": synthetic},
        lambda: fig.risk_group_figure(
            risk["kaplan_meier"],
            highlight_group=highlight,
            title=f"Overall survival by risk group: {cohort.name}, {version.name}",
            synthetic=synthetic,
        ).to_json(),
    )
    return result


def _finite(value: float) -> float | None:
    return value if math.isfinite(value) else None


def patient_risk_context(
    user: Any, patient: Patient, model_version: ModelVersion | None = None
) -> dict[str, Any]:
    """Context for ``{% include "analytics/_patient_risk.html" %}`` on the patient page.

    Returns ``{"patient_risk": PatientRisk}``; the include shows nothing when the user's role
    does not allow viewing results (``patient_risk.allowed`` is false).
    """
    return {"patient_risk": patient_risk(user, patient, model_version)}
