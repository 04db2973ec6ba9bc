from django.contrib import admin

from .models import Cohort, Patient, StudyVariable


@admin.register(Cohort)
class CohortAdmin(admin.ModelAdmin):
    list_display = ("name", "role", "centres", "is_synthetic", "data_version")
    search_fields = ("name",)


@admin.register(Patient)
class PatientAdmin(admin.ModelAdmin):
    list_display = ("study_id", "cohort", "metastasis_at_diagnosis", "nccn_resectability")
    list_filter = ("cohort", "metastasis_at_diagnosis")
    search_fields = ("study_id",)


@admin.register(StudyVariable)
class StudyVariableAdmin(admin.ModelAdmin):
    list_display = ("name", "cohort", "kind", "unit", "required")
    list_filter = ("cohort", "kind")
