"""Small template filters shared by the pages (registered as builtins in settings)."""

from django import template
from django.http import QueryDict

register = template.Library()

TITLES = {
    "study_id": "Study ID",
    "age_at_diagnosis_years": "Age",
    "ca19_9_u_per_ml": "CA19-9 (U/mL)",
    "tumour_size_mm": "Size (mm)",
    "nccn_resectability": "NCCN resectability",
    "metastasis_at_diagnosis": "Metastasis",
    "overall_survival_days": "OS (days)",
    "ct_manufacturer": "CT manufacturer",
    "metastasis_risk_score": "MRS",
    "call": "PMPD call",
    "risk_group": "Risk group",
}


@register.filter
def get_item(mapping, key):
    return mapping.get(key) if hasattr(mapping, "get") else None


@register.filter
def column_title(name: str) -> str:
    return TITLES.get(name, name.replace("_", " ").capitalize())


@register.filter
def sort_query(query: str, field: str) -> str:
    """The query string that sorts by ``field``, toggling the direction when already sorted."""
    params = QueryDict(query, mutable=True)
    params["sort"] = f"-{field}" if params.get("sort", "study_id") == field else field
    return params.urlencode()


@register.filter
def millimetres(values) -> str:
    """Spacings and sizes in mm at four significant digits: 0.800000011920929 -> 0.8."""
    if values is None or values == "":
        return ""
    if isinstance(values, list | tuple):
        return " × ".join(f"{float(v):.4g}" for v in values)
    return f"{float(values):.4g}"


@register.filter
def may_use_analytics(user) -> bool:
    """Whether the top bar offers Analytics: the user's role in some cohort allows it."""
    from pmpd_web.accounts.permissions import ROLE_ACTIONS, Action

    if not getattr(user, "is_authenticated", False):
        return False
    if user.is_superuser:
        return True
    roles = [r for r, actions in ROLE_ACTIONS.items() if Action.VIEW_ANALYTICS in actions]
    return user.memberships.filter(role__in=roles).exists()
