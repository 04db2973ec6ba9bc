from django.contrib import admin

from .models import AnalysisCache


@admin.register(AnalysisCache)
class AnalysisCacheAdmin(admin.ModelAdmin):
    """Stored analyses: deleting rows only makes the next dashboard compute them again."""

    list_display = ("kind", "model_version", "cohort_ids", "payload_bytes", "hits", "computed_at")
    list_filter = ("kind",)
    exclude = ("payload",)
    readonly_fields = (
        "scope",
        "selection",
        "kind",
        "data_key",
        "model_version",
        "cohort_ids",
        "payload_bytes",
        "compute_seconds",
        "hits",
        "computed_at",
    )

    def has_add_permission(self, request) -> bool:
        return False
