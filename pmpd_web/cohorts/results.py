"""The PMPD results the patients table shows (MRS, call, risk group) without the cohorts app
importing the apps that compute them: the analytics app registers the provider when it loads
(``AnalyticsConfig.ready``), and the table asks :func:`for_cohort`.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

CALLS = ("metastasis", "no metastasis")
RISK_GROUPS = ("low", "mid", "high", "unknown")


@dataclass(frozen=True)
class PatientResult:
    metastasis_risk_score: float
    call: str  # one of CALLS
    risk_group: str  # one of RISK_GROUPS


@dataclass
class CohortResults:
    """A cohort's results under one model version, by study ID."""

    model_version: str
    model_version_source: str
    operating_point: str
    synthetic: bool
    by_study_id: dict[str, PatientResult] = field(default_factory=dict)

    def overview(self) -> list[dict[str, Any]]:
        """Patients per call and risk group: one row per call, one count per risk group."""
        counts = Counter((r.call, r.risk_group) for r in self.by_study_id.values())
        return [
            {
                "call": call,
                "counts": [counts[(call, group)] for group in RISK_GROUPS],
                "total": sum(counts[(call, group)] for group in RISK_GROUPS),
            }
            for call in CALLS
        ]


Provider = Callable[[Any, Any], CohortResults | None]
_providers: list[Provider] = []


def register(provider: Provider) -> None:
    if provider not in _providers:
        _providers.append(provider)


def for_cohort(user: Any, cohort: Any) -> CohortResults | None:
    """The cohort's results for ``user`` (None when no app provides them, the user's role may
    not see results, or nothing was scored)."""
    for provider in _providers:
        results = provider(user, cohort)
        if results is not None:
            return results
    return None
