"""The analysis parameters of the dashboards and the API, read from one query string.

Pages and REST endpoints call :func:`parse_parameters` on the same query parameters, so a
dashboard's URL and the API call that returns its numbers differ only in their path. Pure
Python: the query is anything with ``getlist(name)`` (Django's ``QueryDict``).

=========================  ==============================================================
``cohort``                 cohort id; repeat it (or comma-separate) to pool cohorts
``model_version``          model version id; absent = clinical-only survival analyses
``variables``              multivariable Cox model (comma-separated names)
``univariable``            variables fitted one at a time (empty = none)
``adjust_for``             adjustment of the multivariable models (default: age, sex,
                           centre; empty = none)
``reference``              ``variable:level``, repeatable (default: low MRS group, low
                           CA19-9, low risk, resectable, male)
``group``                  grouping of an extra Kaplan-Meier figure (e.g. ``sex``, ``overall``)
``subgroups``              categorical variables for extra AUROC subgroups (with a model)
``cutpoint_variable``      continuous variable to cut by maxstat (survminer's
                           ``surv_cutpoint``: low = value <= cut), with KM of its groups
``mrs_cutpoint``           fixed MRS cut (default: maxstat on the selected cohorts)
``minprop``                maxstat minimal group proportion (0.1)
``ca19_9_threshold``       CA19-9 cut, U/mL (500)
``decision_threshold``     patient-level decision threshold (default: the model version's
                           locked operating point)
``retune``                 ``1``: the sensitivity analysis "re-tuned on this cohort
                           (optimistic)" (thresholds and MRS cut chosen on these data)
``confidence_level``       0.95
``conf_type``              Kaplan-Meier CI: ``log`` (R's default) or ``log-log``
``at_risk_times``          times of the numbers-at-risk table, days
``age_cut``                age groups, years (65)
``size_edges``             tumour-size group edges, mm (20,40)
``development_months``     metastasis-development group boundaries, months (3,6)
``min_events``             fewest deaths for a Cox model (2)
=========================  ==============================================================
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Protocol

from analytics.analyses import VARIABLES, Variable
from analytics.stats import DEFAULT_ADJUSTMENT, AnalysisOptions

__all__ = [
    "DEFAULT_REFERENCE_LEVELS",
    "AnalysisParameters",
    "ParameterError",
    "parse_parameters",
]

#: Reference levels of the categorical variables unless the statistician picks others. Male
#: is the reference of sex as in R's numeric 1 = male, 2 = female coding (NCCTG lung data), so
#: the sex coefficient is that of female vs male.
DEFAULT_REFERENCE_LEVELS: dict[str, str] = {
    "mrs_group": "low",
    "ca19_9_group": "low",
    "risk_group": "low",
    "nccn_resectability": "resectable",
    "sex": "male",
}
PAPER_VARIABLES = ("mrs_group", "ca19_9_group", "nccn_resectability")
PAPER_UNIVARIABLE = ("mrs_per_0_1", "mrs_group", "ca19_9_group", "nccn_resectability", "risk_group")
CLINICAL_VARIABLES = ("ca19_9_group", "nccn_resectability")


class Query(Protocol):
    def getlist(self, key: str) -> list[str]: ...


class ParameterError(ValueError):
    """Invalid analysis parameters; ``errors`` maps each parameter to what is wrong."""

    def __init__(self, errors: dict[str, str]):
        super().__init__("; ".join(f"{name}: {message}" for name, message in errors.items()))
        self.errors = errors


@dataclass(frozen=True)
class AnalysisParameters:
    """Every choice of an analysis request (see the module docstring)."""

    cohort_ids: tuple[int, ...]
    model_version_id: int | None = None
    variables: tuple[str, ...] | None = None
    univariable: tuple[str, ...] | None = None
    adjust_for: tuple[str, ...] = DEFAULT_ADJUSTMENT
    reference: tuple[tuple[str, str], ...] = ()
    group: str | None = None
    cutpoint_variable: str | None = None
    subgroups: tuple[str, ...] = ()
    mrs_cutpoint: float | None = None
    minprop: float = 0.1
    ca19_9_threshold: float = 500.0
    decision_threshold: float | None = None
    confidence_level: float = 0.95
    conf_type: str = "log"
    at_risk_times: tuple[float, ...] | None = None
    age_cut: float = 65.0
    size_edges: tuple[float, ...] = (20.0, 40.0)
    development_months: tuple[float, float] = (3.0, 6.0)
    min_events: int = 2
    retune: bool = False

    @property
    def with_model(self) -> bool:
        return self.model_version_id is not None

    @property
    def reference_levels(self) -> dict[str, str]:
        return {**DEFAULT_REFERENCE_LEVELS, **dict(self.reference)}

    @property
    def cox_variables(self) -> tuple[str, ...]:
        """The multivariable model's variables (the paper's when none were chosen)."""
        if self.variables is not None:
            return self.variables
        return PAPER_VARIABLES if self.with_model else CLINICAL_VARIABLES

    @property
    def univariable_variables(self) -> tuple[str, ...]:
        if self.univariable is not None:
            return self.univariable
        chosen = (*PAPER_UNIVARIABLE,) if self.with_model else self.cox_variables
        return tuple(dict.fromkeys((*chosen, *self.cox_variables, *self.adjust_for)))

    def options(self, *, synthetic: bool) -> AnalysisOptions:
        """The :class:`~analytics.stats.AnalysisOptions` of these parameters."""
        return AnalysisOptions(
            confidence_level=self.confidence_level,
            synthetic=synthetic,
            decision_threshold=self.decision_threshold,
            tumour_size_edges_mm=self.size_edges,
            age_cut_years=self.age_cut,
            cutpoint_minprop=self.minprop,
            mrs_cutpoint=self.mrs_cutpoint,
            ca19_9_threshold_u_per_ml=self.ca19_9_threshold,
            km_conf_type=self.conf_type,  # type: ignore[arg-type]
            at_risk_times_days=self.at_risk_times,
            adjust_for=self.adjust_for,
            reference_levels=self.reference_levels,
            min_events=self.min_events,
            development_boundaries_months=self.development_months,
            retune_on_cohort=self.retune,
        )

    def to_dict(self) -> dict[str, Any]:
        """JSON-able form, with the defaults resolved (shown in API answers and exports)."""
        values = dataclasses.asdict(self)
        values["reference"] = self.reference_levels
        values["variables"] = list(self.cox_variables)
        values["univariable"] = list(self.univariable_variables)
        return values


def _values(query: Query, name: str) -> list[str] | None:
    """Comma-separated or repeated values; ``None`` when the parameter is absent."""
    raw = query.getlist(name)
    if not raw:
        return None
    return [item.strip() for value in raw for item in value.split(",") if item.strip()]


def _single(query: Query, name: str) -> str | None:
    raw = [value.strip() for value in query.getlist(name) if value.strip()]
    return raw[-1] if raw else None


def _number(
    query: Query,
    name: str,
    errors: dict[str, str],
    *,
    check: Callable[[float], bool],
    rule: str,
    integer: bool = False,
) -> float | None:
    text = _single(query, name)
    if text is None:
        return None
    try:
        value = float(text)
    except ValueError:
        errors[name] = f"{text!r} is not a number"
        return None
    if not math.isfinite(value) or not check(value) or (integer and value != int(value)):
        errors[name] = f"must be {rule}; got {text}"
        return None
    return int(value) if integer else value


def _numbers(query: Query, name: str, errors: dict[str, str]) -> tuple[float, ...] | None:
    values = _values(query, name)
    if values is None:
        return None
    try:
        numbers = tuple(float(value) for value in values)
    except ValueError:
        errors[name] = f"must be comma-separated numbers; got {','.join(values)}"
        return None
    if not all(math.isfinite(n) and n >= 0 for n in numbers) or list(numbers) != sorted(
        set(numbers)
    ):
        errors[name] = "must be increasing numbers of 0 or more"
        return None
    return numbers


def _variables(
    query: Query,
    name: str,
    errors: dict[str, str],
    *,
    with_model: bool,
    known: Mapping[str, Variable],
) -> tuple[str, ...] | None:
    values = _values(query, name)
    if values is None:
        return None
    unknown = [value for value in values if value not in known]
    if unknown:
        errors[name] = f"unknown variable(s) {', '.join(unknown)}; choose from " + ", ".join(known)
        return None
    needing = [value for value in values if known[value].needs_model and not with_model]
    if needing:
        errors[name] = f"{', '.join(needing)} need(s) a model version (model_version=...)"
        return None
    return tuple(dict.fromkeys(values))


def parse_parameters(
    query: Query, *, study: Mapping[str, Variable] | None = None
) -> AnalysisParameters:
    """Read and check the analysis parameters; raises :class:`ParameterError`.

    ``study`` adds the study-defined variables of the requested cohorts to the variables one
    may choose (:func:`analytics.analyses.study_variables`).
    """
    known: dict[str, Variable] = {**VARIABLES, **(study or {})}
    errors: dict[str, str] = {}
    cohort_ids: list[int] = []
    for value in _values(query, "cohort") or []:
        if not value.isdigit():
            errors["cohort"] = f"cohort ids are numbers; got {value!r}"
        else:
            cohort_ids.append(int(value))
    if not cohort_ids and "cohort" not in errors:
        errors["cohort"] = "choose at least one cohort (cohort=<id>)"
    model_text = _single(query, "model_version")
    model_version_id = None
    if model_text is not None:
        if model_text.isdigit():
            model_version_id = int(model_text)
        else:
            errors["model_version"] = f"a model version id is a number; got {model_text!r}"
    with_model = model_version_id is not None

    values: dict[str, Any] = {}
    for name in ("variables", "univariable", "adjust_for"):
        chosen = _variables(query, name, errors, with_model=with_model, known=known)
        if chosen is not None:
            values[name] = chosen
    reference: list[tuple[str, str]] = []
    for item in query.getlist("reference"):
        if not item.strip():
            continue
        variable, separator, level = item.partition(":")
        variable, level = variable.strip(), level.strip()
        if not separator or not level or variable not in known:
            errors["reference"] = f"write variable:level with a known variable; got {item!r}"
        elif not known[variable].categorical:
            errors["reference"] = f"{variable} is continuous: it has no reference level"
        else:
            reference.append((variable, level))
    if reference:
        values["reference"] = tuple(sorted(dict(reference).items()))
    group = _single(query, "group")
    if group is not None:
        if group not in known or not known[group].groupable:
            groupable = [name for name, v in known.items() if v.groupable]
            errors["group"] = f"{group!r} cannot group curves; choose from {', '.join(groupable)}"
        elif known[group].needs_model and not with_model:
            errors["group"] = f"{group} needs a model version (model_version=...)"
        else:
            values["group"] = group
    subgroups = _variables(query, "subgroups", errors, with_model=with_model, known=known)
    if subgroups:
        continuous = [name for name in subgroups if not known[name].categorical]
        if continuous:
            errors["subgroups"] = f"{', '.join(continuous)}: subgroups need categorical variables"
        else:
            values["subgroups"] = subgroups
    cut_variable = _single(query, "cutpoint_variable")
    if cut_variable is not None:
        continuous = [name for name, v in known.items() if not v.categorical]
        if cut_variable not in known or known[cut_variable].categorical:
            errors["cutpoint_variable"] = (
                f"{cut_variable!r} is not a continuous variable; choose from "
                + ", ".join(continuous)
            )
        elif known[cut_variable].needs_model and not with_model:
            errors["cutpoint_variable"] = f"{cut_variable} needs a model version"
        else:
            values["cutpoint_variable"] = cut_variable

    def unit(value: float) -> bool:
        return 0.0 < value < 1.0

    numbers = {
        "mrs_cutpoint": _number(
            query, "mrs_cutpoint", errors, check=lambda v: 0 <= v <= 1, rule="in [0, 1]"
        ),
        "minprop": _number(
            query, "minprop", errors, check=lambda v: 0 <= v < 0.5, rule="in [0, 0.5)"
        ),
        "ca19_9_threshold": _number(
            query, "ca19_9_threshold", errors, check=lambda v: v >= 0, rule="0 or more (U/mL)"
        ),
        "decision_threshold": _number(
            query, "decision_threshold", errors, check=lambda v: 0 <= v <= 1, rule="in [0, 1]"
        ),
        "confidence_level": _number(
            query, "confidence_level", errors, check=unit, rule="between 0 and 1"
        ),
        "age_cut": _number(
            query, "age_cut", errors, check=lambda v: 0 < v < 120, rule="in (0, 120) years"
        ),
        "min_events": _number(
            query,
            "min_events",
            errors,
            check=lambda v: 1 <= v <= 1000,
            rule="a whole number from 1 to 1000",
            integer=True,
        ),
    }
    values.update({name: value for name, value in numbers.items() if value is not None})
    conf_type = _single(query, "conf_type")
    if conf_type is not None:
        if conf_type in ("log", "log-log"):
            values["conf_type"] = conf_type
        else:
            errors["conf_type"] = "log or log-log"
    at_risk = _numbers(query, "at_risk_times", errors)
    if at_risk is not None:
        values["at_risk_times"] = at_risk
    edges = _numbers(query, "size_edges", errors)
    if edges is not None:
        if edges and edges[0] > 0:
            values["size_edges"] = edges
        else:
            errors["size_edges"] = "give one or more increasing edges above 0 mm"
    months = _numbers(query, "development_months", errors)
    if months is not None:
        if len(months) == 2 and months[0] > 0:
            values["development_months"] = months
        else:
            errors["development_months"] = "give two increasing boundaries above 0, e.g. 3,6"
    retune = _single(query, "retune")
    if retune is not None:
        if retune.lower() in ("1", "true", "yes", "0", "false", "no", ""):
            values["retune"] = retune.lower() in ("1", "true", "yes")
        else:
            errors["retune"] = "1 (re-tuned on this cohort, optimistic) or 0 (locked point)"
    if errors:
        raise ParameterError(errors)
    return AnalysisParameters(
        cohort_ids=tuple(sorted(set(cohort_ids))), model_version_id=model_version_id, **values
    )
