from __future__ import annotations

from typing import Any

from django.urls import reverse
from drf_spectacular.utils import extend_schema_field
from rest_framework import serializers

from pmpd_web.accounts.permissions import Action, can

from .models import ModelVersion, PatientPrediction
from .registry import DEPTHS, EARLY_STOPPING
from .services import RESEARCH_USE_ONLY, card_for, trained_on_label


class ModelVersionSerializer(serializers.ModelSerializer):
    """A registry entry with its card, trimmed to what the requesting user may see."""

    trained_on = serializers.SerializerMethodField()
    card = serializers.SerializerMethodField()
    intended_use = serializers.SerializerMethodField()

    class Meta:
        model = ModelVersion
        fields = [
            "id",
            "name",
            "status",
            "is_active",
            "is_synthetic",
            "trained_on",
            "config",
            "thresholds",
            "metrics",
            "data_hash",
            "code_version",
            "card",
            "job",
            "created_at",
            "intended_use",
        ]
        read_only_fields = fields

    def get_trained_on(self, version: ModelVersion) -> str:
        return trained_on_label(self.context["request"].user, version)

    @extend_schema_field(serializers.DictField())
    def get_card(self, version: ModelVersion) -> dict[str, Any]:
        return card_for(self.context["request"].user, version)

    def get_intended_use(self, version: ModelVersion) -> str:
        return RESEARCH_USE_ONLY


# Ids are 64-bit database keys: a larger number is a bad request, not a database error.
ID_MAX = 2**63 - 1


class TrainingRequestSerializer(serializers.Serializer):
    """Start a cross-validation of a new model version on a cohort."""

    cohort = serializers.IntegerField(min_value=1, max_value=ID_MAX)
    name = serializers.CharField(max_length=120, required=False, allow_blank=True, default="")
    depth = serializers.ChoiceField(choices=DEPTHS, default=50)
    input_size = serializers.IntegerField(min_value=32, max_value=512, default=224)
    max_epochs = serializers.IntegerField(min_value=1, max_value=500, default=30)
    n_folds = serializers.IntegerField(min_value=2, max_value=10, default=5)
    seed = serializers.IntegerField(min_value=0, max_value=2**32 - 1, default=0)
    early_stopping = serializers.ChoiceField(
        choices=[value for value, _ in EARLY_STOPPING],
        default="loss",
        help_text="loss or auroc of the inner validation split, or none (every epoch runs)",
    )


class ScoringRequestSerializer(serializers.Serializer):
    model_version = serializers.IntegerField(
        min_value=1, max_value=ID_MAX, required=False, help_text="Default: the active model version"
    )


class PredictionSerializer(serializers.ModelSerializer):
    study_id = serializers.CharField(source="patient.study_id")
    model_version_name = serializers.CharField(source="model_version.name")
    trained_on_synthetic_data = serializers.BooleanField(source="model_version.is_synthetic")
    gradcam_urls = serializers.SerializerMethodField()
    intended_use = serializers.SerializerMethodField()

    class Meta:
        model = PatientPrediction
        fields = [
            "study_id",
            "model_version",
            "model_version_name",
            "trained_on_synthetic_data",
            "source",
            "metastasis_risk_score",
            "mrs_std",
            "mrs_min",
            "mrs_max",
            "mrs_per_fold",
            "positive_fraction",
            "predicted_metastasis",
            "site_probabilities",
            "slice_indices",
            "slice_probabilities",
            "n_slices",
            "fewer_than_4_tumour_slices",
            "gradcam_urls",
            "input_hash",
            "code_version",
            "created_at",
            "updated_at",
            "intended_use",
        ]
        read_only_fields = fields

    def get_gradcam_urls(self, prediction: PatientPrediction) -> list[str]:
        """Empty for roles that may not view images: an overlay shows the CT slice."""
        request = self.context["request"]
        cohort_id = prediction.patient.cohort_id
        may_view_images = self.context.setdefault("may_view_images", {})
        if cohort_id not in may_view_images:
            may_view_images[cohort_id] = can(request.user, cohort_id, Action.VIEW_IMAGES)
        if not may_view_images[cohort_id]:
            return []
        return [
            request.build_absolute_uri(
                reverse(
                    "api-gradcam",
                    kwargs={
                        "cohort_pk": prediction.patient.cohort_id,
                        "prediction_id": prediction.pk,
                        "index": index,
                    },
                )
            )
            for index in range(len(prediction.gradcam_files))
        ]

    def get_intended_use(self, prediction: PatientPrediction) -> str:
        return RESEARCH_USE_ONLY
