from rest_framework import serializers

from pmpd_web.jobs.serializers import JobSerializer

from .models import Cohort, Patient, StudyVariable, TableImport
from .rules import check_patient


class CohortSerializer(serializers.ModelSerializer):
    n_patients = serializers.SerializerMethodField()
    my_role = serializers.SerializerMethodField()

    class Meta:
        model = Cohort
        fields = [
            "id",
            "name",
            "description",
            "role",
            "centres",
            "is_synthetic",
            "data_version",
            "n_patients",
            "my_role",
            "created_at",
            "updated_at",
        ]
        read_only_fields = ["is_synthetic", "data_version", "created_at", "updated_at"]

    def get_n_patients(self, cohort) -> int:
        # Lists annotate the count; a cohort just created has none.
        if hasattr(cohort, "n_patients"):
            return cohort.n_patients
        return cohort.patients.count()

    def get_my_role(self, cohort) -> str | None:
        from pmpd_web.accounts.permissions import role_of

        return role_of(self.context["request"].user, cohort.pk)


class PatientSerializer(serializers.ModelSerializer):
    metastasis_sites = serializers.ListField(child=serializers.CharField(), read_only=True)

    class Meta:
        model = Patient
        fields = [
            "study_id",
            "age_at_diagnosis_years",
            "sex",
            "centre",
            "tumour_location",
            "tumour_size_mm",
            "ct_manufacturer",
            "ca19_9_u_per_ml",
            "nccn_resectability",
            "metastasis_at_diagnosis",
            "metastasis_sites",
            "site_liver",
            "site_lung",
            "site_peritoneum",
            "site_other",
            "site_unknown",
            "metastasis_detection",
            "overall_survival_days",
            "vital_status",
            "developed_metastasis",
            "days_to_metastasis",
            "study_values",
            "updated_at",
        ]
        read_only_fields = ["study_id", "study_values", "updated_at"]

    def validate(self, attrs):
        values = {f.attname: getattr(self.instance, f.attname) for f in Patient._meta.fields}
        values.update(attrs)
        problems = check_patient(values)
        if problems:
            errors: dict[str, list[str]] = {}
            for problem in problems:
                errors.setdefault(problem.field, []).append(problem.message)
            raise serializers.ValidationError(errors)
        return attrs


class TableImportSerializer(serializers.ModelSerializer):
    job = JobSerializer(read_only=True, allow_null=True)
    file = serializers.FileField(write_only=True)

    class Meta:
        model = TableImport
        fields = [
            "id",
            "original_filename",
            "sha256",
            "size_bytes",
            "status",
            "summary",
            "problems",
            "job",
            "created_at",
            "file",
        ]
        read_only_fields = [f for f in fields if f != "file"]


class StudyVariableSerializer(serializers.ModelSerializer):
    """A study-defined variable (REDCap's data dictionary entry); checked by the model."""

    class Meta:
        model = StudyVariable
        fields = [
            "name",
            "label",
            "kind",
            "unit",
            "minimum",
            "maximum",
            "choices",
            "required",
            "created_at",
        ]
        read_only_fields = ["created_at"]
