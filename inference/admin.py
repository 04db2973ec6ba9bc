from django.contrib import admin

from .models import ModelVersion, PatientPrediction, PreprocessedPatient


@admin.register(ModelVersion)
class ModelVersionAdmin(admin.ModelAdmin):
    """Read-only: versions are made by training jobs and activated from their page."""

    list_display = ("name", "status", "is_active", "is_synthetic", "trained_on", "created_at")
    list_filter = ("status", "is_active", "is_synthetic")
    search_fields = ("name", "data_hash", "code_version")
    readonly_fields = [f.name for f in ModelVersion._meta.fields]

    def has_add_permission(self, request):
        return False


@admin.register(PatientPrediction)
class PatientPredictionAdmin(admin.ModelAdmin):
    list_display = ("patient", "model_version", "source", "metastasis_risk_score", "updated_at")
    list_filter = ("source", "model_version")
    search_fields = ("patient__study_id",)
    readonly_fields = [f.name for f in PatientPrediction._meta.fields]

    def has_add_permission(self, request):
        return False


@admin.register(PreprocessedPatient)
class PreprocessedPatientAdmin(admin.ModelAdmin):
    list_display = ("patient", "input_hash", "n_slices", "fewer_than_4_tumour_slices")
    search_fields = ("patient__study_id", "input_hash")
    readonly_fields = [f.name for f in PreprocessedPatient._meta.fields]

    def has_add_permission(self, request):
        return False
