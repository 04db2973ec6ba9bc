"""REST endpoints of the analytics (``/api/analytics/...``): the dashboards' numbers as JSON.

The query parameters are the dashboards' own (:mod:`analytics.parameters`), the numbers come
from the same cached calls, and every answer carries its provenance (model version, cohorts,
data hash, package versions), whether it is synthetic, and the research-use statement.
Permission: ``VIEW_ANALYTICS`` in every cohort named (404 for outsiders, 403 for members whose
role lacks it); the patient risk endpoint needs ``VIEW_RESULTS``.
"""

from __future__ import annotations

from typing import Any, ClassVar

from django.shortcuts import get_object_or_404
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiParameter, extend_schema
from rest_framework.exceptions import ValidationError
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from analytics import services
from analytics.catalogue import Results, needs_model_version
from analytics.parameters import AnalysisParameters, ParameterError
from analytics.stats._base import jsonable
from inference.registry import model_version_for
from pmpd_web.accounts.audit import record as audit
from pmpd_web.accounts.models import AuditAction
from pmpd_web.accounts.permissions import Action, api_check
from pmpd_web.cohorts.models import Patient

_LIST = "comma-separated, or the parameter repeated"
PARAMETERS = [
    OpenApiParameter("cohort", int, required=True, description=f"cohort id(s) to pool; {_LIST}"),
    OpenApiParameter("model_version", int, description="model version id (absent: clinical)"),
    OpenApiParameter("variables", str, description=f"multivariable Cox variables; {_LIST}"),
    OpenApiParameter("univariable", str, description=f"univariable Cox variables; {_LIST}"),
    OpenApiParameter(
        "adjust_for", str, description="adjustment (default age, sex, centre; empty = none)"
    ),
    OpenApiParameter(
        "reference", str, many=True, description="variable:level reference, repeatable"
    ),
    OpenApiParameter("group", str, description="grouping of an extra Kaplan-Meier analysis"),
    OpenApiParameter("subgroups", str, description=f"extra AUROC subgroup variables; {_LIST}"),
    OpenApiParameter(
        "cutpoint_variable",
        str,
        description="continuous variable (a study variable too) cut by maxstat, low = <= cut",
    ),
    OpenApiParameter("mrs_cutpoint", float, description="fixed MRS cut (default: maxstat)"),
    OpenApiParameter("minprop", float, description="maxstat minimal group share (0.1)"),
    OpenApiParameter("ca19_9_threshold", float, description="CA19-9 cut in U/mL (500)"),
    OpenApiParameter("decision_threshold", float, description="patient-level threshold"),
    OpenApiParameter("confidence_level", float, description="0.95"),
    OpenApiParameter("conf_type", str, enum=["log", "log-log"], description="KM CI type"),
    OpenApiParameter("at_risk_times", str, description="numbers-at-risk times, days"),
    OpenApiParameter("age_cut", float, description="age-group cut, years (65)"),
    OpenApiParameter("size_edges", str, description="tumour-size edges, mm (20,40)"),
    OpenApiParameter("development_months", str, description="development groups (3,6)"),
    OpenApiParameter("min_events", int, description="fewest deaths for a Cox model (2)"),
]


def _parameters(request: Request) -> AnalysisParameters:
    try:
        return services.parse_query(request.query_params)
    except ParameterError as error:
        for cohort_id in services.query_cohort_ids(request.query_params):
            api_check(request.user, cohort_id, Action.VIEW_ANALYTICS)
        raise ValidationError(error.errors) from None


class AnalyticsView(APIView):
    """Base of the section endpoints: parameters, permission, provenance around a payload."""

    sections: ClassVar[tuple[str, ...]] = ()

    def payload(self, results: Results, params: AnalysisParameters) -> dict[str, Any]:
        raise NotImplementedError

    def get(self, request: Request) -> Response:
        params = _parameters(request)
        selection = services.resolve_selection(request.user, params, api=True)
        # The JSON form of the answer is stored whole: a second request reads one row.
        body = services.cached(
            selection,
            "api",
            {"view": type(self).__name__, "parameters": params.to_dict()},
            lambda: jsonable(
                self.payload(services.results_for(selection, params, self.sections), params)
            ),
        )
        return Response(
            {
                "research_use_only": services.RESEARCH_USE_ONLY,
                "synthetic": selection.synthetic,
                **body,
                "provenance": services.provenance(selection, params),
            }
        )


@extend_schema(parameters=PARAMETERS, responses=OpenApiTypes.OBJECT)
class EvaluationView(AnalyticsView):
    """Binary and by-site evaluation at patient and slice level, folds, calibration."""

    sections = ("evaluation",)

    def payload(self, results: Results, params: AnalysisParameters) -> dict[str, Any]:
        analysis = results.analysis
        if analysis is None:
            return {"evaluation": needs_model_version("Evaluation")}
        return {
            "classification": analysis.classification,
            "folds": analysis.folds,
            "sites": analysis.sites,
            "calibration": analysis.calibration,
            "missed_at_imaging": analysis.missed_at_imaging,
        }


@extend_schema(parameters=PARAMETERS, responses=OpenApiTypes.OBJECT)
class SurvivalView(AnalyticsView):
    """MRS cut-point and Kaplan-Meier/log-rank by MRS, CA19-9, resectability, risk group and
    MRS within each resectability stratum (clinical groupings without a model version)."""

    sections = ("survival",)

    def payload(self, results: Results, params: AnalysisParameters) -> dict[str, Any]:
        analysis = results.analysis
        return {
            "mrs_cutpoint": analysis.mrs_cutpoint
            if analysis is not None
            else needs_model_version("Cut-point"),
            "kaplan_meier": results.kaplan_meier,
            "mrs_within_resectability": analysis.mrs_within_resectability
            if analysis is not None
            else {},
            "group": params.group,
            "custom": results.all_kaplan_meier.get(params.group) if params.group else None,
            "cutpoint": results.cutpoint.to_dict() if results.cutpoint is not None else None,
        }


def _kaplan_meier_summary(result: Any) -> dict[str, Any]:
    """Medians (with CI) per group and the log-rank test, without the curves."""
    if not getattr(result, "computable", False):
        return jsonable(result)
    medians = [
        {
            "group": group,
            "n": curve.n,
            "events": curve.n_events,
            "median": curve.median.median,
            "ci_lower": curve.median.ci_lower,
            "ci_upper": curve.median.ci_upper,
        }
        if curve.computable
        else {"group": group, "computable": False, "reason": curve.reason}
        for group, curve in result.curves.items()
    ]
    return {
        "computable": True,
        "group_variable": result.group_variable,
        "confidence_level": result.confidence_level,
        "conf_type": result.conf_type,
        "n_missing": result.n_missing,
        "medians": medians,
        "logrank": jsonable(result.logrank),
    }


@extend_schema(
    parameters=[
        *PARAMETERS,
        OpenApiParameter("curves", bool, description="include the curves (default false)"),
    ],
    responses=OpenApiTypes.OBJECT,
)
class KaplanMeierView(AnalyticsView):
    """``survfit`` medians and ``survdiff`` of one grouping (``group``, required); works
    without a model version for clinical groupings."""

    sections = ("survival",)

    def get(self, request: Request) -> Response:
        if not request.query_params.get("group"):
            _parameters(request)  # permission first, then the missing group
            raise ValidationError({"group": "name the grouping, e.g. group=sex"})
        return super().get(request)

    def payload(self, results: Results, params: AnalysisParameters) -> dict[str, Any]:
        result = results.all_kaplan_meier[params.group or ""]
        body = {"group": params.group, "kaplan_meier": _kaplan_meier_summary(result)}
        if self.request.query_params.get("curves") in ("1", "true", "yes"):
            body["curves"] = result
        return body


@extend_schema(parameters=PARAMETERS, responses=OpenApiTypes.OBJECT)
class CoxView(AnalyticsView):
    """Univariable and multivariable Cox models of the chosen variables with the C-index;
    with a model version also the risk-group model and the paper's C-indices."""

    sections = ("cox",)

    def payload(self, results: Results, params: AnalysisParameters) -> dict[str, Any]:
        cox = results.cox
        assert cox is not None
        analysis = results.analysis
        body: dict[str, Any] = {
            "reference_levels": params.reference_levels,
            **cox.to_dict(),
            "risk_groups": analysis.cox_risk_groups
            if analysis is not None
            else needs_model_version("Cox model of the risk groups"),
        }
        if analysis is not None:
            body["c_index_paper"] = analysis.c_index
        return body


@extend_schema(parameters=PARAMETERS, responses=OpenApiTypes.OBJECT)
class DevelopmentView(AnalyticsView):
    """MRS by time to metastasis development: groups, tests, early-vs-late ROC."""

    sections = ("development",)

    def payload(self, results: Results, params: AnalysisParameters) -> dict[str, Any]:
        analysis = results.analysis
        if analysis is None:
            return {"development": needs_model_version("Metastasis development")}
        return {"development": analysis.development}


@extend_schema(parameters=PARAMETERS, responses=OpenApiTypes.OBJECT)
class SubgroupsView(AnalyticsView):
    """AUROC by subgroup (tumour size, location, age, sex, CT manufacturer)."""

    sections = ("subgroups",)

    def payload(self, results: Results, params: AnalysisParameters) -> dict[str, Any]:
        analysis = results.analysis
        if analysis is None:
            return {"subgroups": needs_model_version("AUROC by subgroup")}
        return {"subgroups": analysis.subgroups, "chosen": results.chosen_subgroups}


@extend_schema(parameters=PARAMETERS, responses=OpenApiTypes.OBJECT)
class AnalysisView(AnalyticsView):
    """The whole analysis set of the paper (``run_full_analysis``) as JSON; without a model
    version, every analysis that does not need one (overall and grouped Kaplan-Meier with
    log-rank, the chosen cut-point, the Cox models)."""

    sections = ("analysis",)
    clinical_sections = ("analysis", "survival", "cox")

    def get(self, request: Request) -> Response:
        if not request.query_params.get("model_version"):
            self.sections = self.clinical_sections
        return super().get(request)

    def payload(self, results: Results, params: AnalysisParameters) -> dict[str, Any]:
        analysis = results.analysis
        if analysis is not None:
            return {"analysis": analysis}
        return {
            "analysis": {
                "model_version": None,
                "kaplan_meier": results.all_kaplan_meier,
                "cutpoint": results.cutpoint.to_dict() if results.cutpoint is not None else None,
                "cox": results.cox.to_dict() if results.cox is not None else None,
                "needs_model_version": needs_model_version(
                    "Evaluation, calibration, development and subgroup AUROC"
                ),
            }
        }


@extend_schema(
    parameters=[OpenApiParameter("model_version", int, description="default: the active one")],
    responses=OpenApiTypes.OBJECT,
)
class PatientRiskView(APIView):
    """One patient's MRS against the cut-point, CA19-9 group and risk group (VIEW_RESULTS)."""

    def get(self, request: Request, cohort_pk: int, study_id: str) -> Response:
        api_check(request.user, int(cohort_pk), Action.VIEW_RESULTS)
        patient = get_object_or_404(Patient, cohort_id=cohort_pk, study_id=study_id)
        version_id = request.query_params.get("model_version", "")
        version = model_version_for(request.user, version_id, api=True) if version_id else None
        audit(request.user, AuditAction.VIEW_PATIENT, patient=patient, via="api", view="risk")
        risk = services.patient_risk(request.user, patient, version)
        return Response(jsonable(risk.to_dict()))
