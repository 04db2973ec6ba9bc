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
