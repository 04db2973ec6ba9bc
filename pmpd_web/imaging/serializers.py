from __future__ import annotations

from rest_framework import serializers

from pmpd_web.cohorts.serializers import JobSerializer

from .models import ImageSeries, ImageUpload, MaskVersion, UploadFile


class UploadFileSerializer(serializers.ModelSerializer):
    name = serializers.CharField(source="client_name", read_only=True)

    class Meta:
        model = UploadFile
        fields = [
            "id",
            "name",
            "study_id",
            "size_bytes",
            "received_bytes",
            "sha256",
            "detected_kind",
            "status",
            "error",
        ]
        read_only_fields = fields


class ImageUploadSerializer(serializers.ModelSerializer):
    study_id = serializers.CharField(
        required=False,
        allow_blank=True,
        write_only=True,
        help_text="For one patient's upload; leave out for a bulk upload",
    )
    patient = serializers.SlugRelatedField(slug_field="study_id", read_only=True, allow_null=True)
    uploaded_by = serializers.SlugRelatedField(slug_field="username", read_only=True)
    job = JobSerializer(read_only=True, allow_null=True)
    n_files = serializers.IntegerField(read_only=True)
    size_bytes = serializers.IntegerField(read_only=True)
    received_bytes = serializers.IntegerField(read_only=True)

    class Meta:
        model = ImageUpload
        fields = [
            "id",
            "study_id",
            "patient",
            "label_pancreas",
            "label_tumour",
            "confirm_shared_source",
            "status",
            "error",
            "summary",
            "n_files",
            "size_bytes",
            "received_bytes",
            "job",
            "uploaded_by",
            "created_at",
            "updated_at",
        ]
        read_only_fields = [
            f
            for f in fields
            if f not in ("study_id", "label_pancreas", "label_tumour", "confirm_shared_source")
        ]


class DeclaredFileSerializer(serializers.Serializer):
    name = serializers.CharField(max_length=2048, help_text="Relative path: a label, never a path")
    size = serializers.IntegerField(min_value=0, max_value=2**63 - 1)
    sha256 = serializers.CharField(max_length=64, required=False, allow_blank=True)
    study_id = serializers.CharField(max_length=64, required=False, allow_blank=True)


class DeclareFilesSerializer(serializers.Serializer):
    files = DeclaredFileSerializer(many=True, allow_empty=False)


class ImageSeriesSerializer(serializers.ModelSerializer):
    study_id = serializers.CharField(source="study.patient.study_id", read_only=True)
    study_instance_uid = serializers.CharField(source="study.study_instance_uid", read_only=True)
    picked_by = serializers.SlugRelatedField(slug_field="username", read_only=True, allow_null=True)
    has_mask = serializers.BooleanField(read_only=True)

    class Meta:
        model = ImageSeries
        fields = [
            "id",
            "study_id",
            "study_instance_uid",
            "series_instance_uid",
            "modality",
            "series_number",
            "description",
            "manufacturer",
            "slice_thickness_mm",
            "pixel_spacing_mm",
            "geometry",
            "n_instances",
            "contrast_phase",
            "is_selected",
            "pick_reason",
            "picked_by",
            "referenced_series",
            "has_mask",
            "content_hash",
            "created_at",
        ]
        read_only_fields = fields


class MaskVersionSerializer(serializers.ModelSerializer):
    study_id = serializers.CharField(source="patient.study_id", read_only=True)
    ct_series_instance_uid = serializers.CharField(
        source="ct_series.series_instance_uid", read_only=True
    )
    seg_series_instance_uid = serializers.CharField(
        source="seg_series.series_instance_uid", read_only=True, default=None
    )
    provenance = serializers.CharField(read_only=True)
    produced_by = serializers.SlugRelatedField(slug_field="username", read_only=True)
    reviewed_by = serializers.SlugRelatedField(slug_field="username", read_only=True)
    reviewing_by = serializers.SlugRelatedField(slug_field="username", read_only=True)

    class Meta:
        model = MaskVersion
        fields = [
            "id",
            "study_id",
            "ct_series_instance_uid",
            "number",
            "source",
            "source_label",
            "provenance",
            "status",
            "seg_series_instance_uid",
            "edited_from",
            "content_hash",
            "pancreas_voxels",
            "tumour_voxels",
            "uncertainty",
            "flags",
            "dice_vs_automatic",
            "produced_by",
            "produced_at",
            "reviewed_by",
            "reviewed_at",
            "review_note",
            "reviewing_by",
            "reviewing_since",
        ]
        read_only_fields = fields


class ReviewSerializer(serializers.Serializer):
    note = serializers.CharField(required=False, allow_blank=True, max_length=500, default="")
