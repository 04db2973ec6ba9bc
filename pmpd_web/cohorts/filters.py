"""The one patient filter of the cohort page and the API (django-filter): the choice columns,
the ranges the API offers, the study-ID search box and the metastasis-site filter."""

from __future__ import annotations

from django.db.models import QuerySet
from django_filters import rest_framework as filters

from .models import Patient

METASTASIS_SITES = ("liver", "lung", "peritoneum", "other", "unknown")


class PatientFilter(filters.FilterSet):
    q = filters.CharFilter(
        method="filter_study_id", label="Study ID contains (the page's search box)"
    )
    site = filters.ChoiceFilter(
        choices=[(site, site) for site in METASTASIS_SITES],
        method="filter_site",
        label="Metastasis site at diagnosis",
    )

    class Meta:
        model = Patient
        fields = {
            "sex": ["exact"],
            "tumour_location": ["exact"],
            "nccn_resectability": ["exact"],
            "metastasis_at_diagnosis": ["exact"],
            "vital_status": ["exact"],
            "centre": ["exact"],
            "ct_manufacturer": ["exact"],
            "age_at_diagnosis_years": ["gte", "lte"],
            "ca19_9_u_per_ml": ["gte", "lte", "isnull"],
            "site_liver": ["exact"],
        }

    def filter_study_id(self, queryset: QuerySet[Patient], name: str, value: str):
        return queryset.filter(study_id__icontains=value.strip())

    def filter_site(self, queryset: QuerySet[Patient], name: str, value: str):
        return queryset.filter(**{f"site_{value}": True})
