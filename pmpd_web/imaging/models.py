"""Images of a patient: uploads and their files, the de-identified DICOM studies, series and
instances served over DICOMweb, and the canonical volumes the engine reads.

Uploaded names are labels only; stored files get opaque names under MEDIA_ROOT (storage API).

The contract the ingest (``pmpd_web.imaging.ingest``) keeps for its readers, the DICOMweb
endpoints and the PMPD engine:

* every ingested patient has an ``ImagingStudy`` per study (a de-identified StudyInstanceUID;
  CTs that arrived as NIfTI, NRRD or MetaImage get one generated study per patient);
* each CT is an ``ImageSeries`` with modality "CT"; exactly one CT series of a patient has
  ``is_selected`` (the pick rule of ``dicom_series.pick_series`` or a coordinator's choice,
  ``picked_by``). Its ``DicomInstance`` rows each hold ``file``, a de-identified DICOM file in
  storage, explicit VR little endian and uncompressed (compressed uploads are decoded on
  ingest); ``metadata``, the instance's DICOM JSON (pydicom ``to_json_dict``) without PixelData;
  and ``number_of_frames`` (1 for CT slices);
* a CT with a mask has an ``ImageSeries`` with modality "SEG" whose ``referenced_series`` is the
  CT series, holding one multi-frame ``DicomInstance``: a highdicom binary Segmentation that
  references the CT instances, segment 1 pancreas and segment 2 tumour;
* each CT series has a ``CanonicalVolume`` of kind "ct" (int16 Hounsfield units), and, with a
  mask, one of kind "mask" (uint8: 0 background, 1 pancreas, 2 tumour, whatever the upload's
  label convention), both pointing at the CT series, both NIfTI in storage on the same grid
  (the CT as plain ``.nii`` at the default ``PMPD_CANONICAL_GZIP_LEVEL`` 0, ``.nii.gz`` above;
  the mask always ``.nii.gz``): ``geometry`` = size (x, y, z), spacing and origin (x, y, z, mm, LPS) and the
  row-major direction matrix, as SimpleITK reports them; ``content_hash`` is the SHA-256 of
  the voxels and the grid (``volumes.content_hash``).

The engine reads the canonical volumes of the patient's selected CT series. A failed ingest
changes none of these rows; a repeated ingest of the same files changes nothing.
"""

from __future__ import annotations

from django.conf import settings
from django.db import models


class ImageUpload(models.Model):
    """One upload session (a patient's files, or a bulk ZIP / folder for many patients)."""

    class Status(models.TextChoices):
        RECEIVING = "receiving", "Receiving files"
        QUEUED = "queued", "Queued"
        PROCESSING = "processing", "Processing"
        DONE = "done", "Done"
        FAILED = "failed", "Failed"

    cohort = models.ForeignKey("cohorts.Cohort", on_delete=models.CASCADE, related_name="uploads")
    patient = models.ForeignKey(
        "cohorts.Patient",
        null=True,
        blank=True,
        on_delete=models.CASCADE,
        related_name="uploads",
        help_text="Set for a single patient's upload; empty for bulk",
    )
    uploaded_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, on_delete=models.SET_NULL, related_name="+"
    )
    label_pancreas = models.PositiveSmallIntegerField(default=1)
    label_tumour = models.PositiveSmallIntegerField(default=2)
    confirm_shared_source = models.BooleanField(
        default=False,
        help_text="The coordinator confirms that a scan already stored for another patient of "
        "the cohort (same source patient ID or study) belongs to this patient too.",
    )
    status = models.CharField(max_length=12, choices=Status.choices, default=Status.RECEIVING)
    error = models.TextField(blank=True)
    summary = models.JSONField(default=dict, blank=True, help_text="What the ingest did")
    job = models.OneToOneField(
        "jobs.Job", null=True, blank=True, on_delete=models.SET_NULL, related_name="image_upload"
    )
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["-created_at", "-id"]

    def __str__(self) -> str:
        return f"Upload #{self.pk} into {self.cohort}"


class UploadFile(models.Model):
    """A file of an upload, received in resumable chunks, then sniffed and ingested."""

    class Status(models.TextChoices):
        RECEIVING = "receiving", "Receiving"
        QUEUED = "queued", "Queued"
        PROCESSING = "processing", "Processing"
        DONE = "done", "Done"
        SKIPPED = "skipped", "Skipped"
        FAILED = "failed", "Failed"

    upload = models.ForeignKey(ImageUpload, on_delete=models.CASCADE, related_name="files")
    client_name = models.CharField(max_length=512, help_text="The name the browser sent: a label")
    study_id = models.CharField(max_length=64, blank=True)
    size_bytes = models.PositiveBigIntegerField()
    received_bytes = models.PositiveBigIntegerField(default=0)
    sha256 = models.CharField(max_length=64, blank=True)
    stored_name = models.CharField(max_length=200, blank=True)
    chunks = models.JSONField(
        default=list, blank=True, help_text="[offset, length, storage name] of each chunk received"
    )
    multipart = models.JSONField(
        default=dict,
        blank=True,
        help_text="With an S3 media store, the multipart upload the chunks are written to: "
        "its key, upload ID and parts (empty once complete)",
    )
    detected_kind = models.CharField(max_length=24, blank=True)
    status = models.CharField(max_length=12, choices=Status.choices, default=Status.RECEIVING)
    error = models.TextField(blank=True)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["upload_id", "id"]

    def __str__(self) -> str:
        return self.client_name


class ImagingStudy(models.Model):
    patient = models.ForeignKey(
        "cohorts.Patient", on_delete=models.CASCADE, related_name="imaging_studies"
    )
    study_instance_uid = models.CharField(max_length=64, unique=True)
    study_date = models.CharField(max_length=8, blank=True)
    description = models.CharField(max_length=200, blank=True)
    # Keyed hashes (deid.source_key) of the source PatientID and StudyInstanceUID, to recognise
    # the same scan uploaded for another patient of the cohort; empty for volume files.
    source_patient_key = models.CharField(max_length=64, blank=True, db_index=True)
    source_study_key = models.CharField(max_length=64, blank=True, db_index=True)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["patient_id", "study_date", "id"]
        verbose_name_plural = "imaging studies"

    def __str__(self) -> str:
        return f"{self.patient} {self.study_instance_uid}"


class ImageSeries(models.Model):
    """A de-identified series: the CT (DICOM) or its segmentation (DICOM SEG)."""

    study = models.ForeignKey(ImagingStudy, on_delete=models.CASCADE, related_name="series")
    series_instance_uid = models.CharField(max_length=64, unique=True)
    modality = models.CharField(max_length=8)
    series_number = models.IntegerField(null=True, blank=True)
    description = models.CharField(max_length=200, blank=True)
    manufacturer = models.CharField(max_length=64, blank=True)
    slice_thickness_mm = models.FloatField(null=True, blank=True)
    pixel_spacing_mm = models.JSONField(default=list, blank=True)
    geometry = models.JSONField(
        default=dict, blank=True, help_text="size, spacing, origin, direction of the volume"
    )
    frame_of_reference_uid = models.CharField(max_length=64, blank=True)
    n_instances = models.PositiveIntegerField(default=0)
    content_hash = models.CharField(max_length=64, blank=True)
    is_selected = models.BooleanField(
        default=False, help_text="The CT series the engine uses for this patient"
    )
    contrast_phase = models.CharField(
        max_length=16, blank=True, help_text="Injection phase read from the series' descriptions"
    )
    pick_reason = models.CharField(max_length=200, blank=True)
    picked_by = models.ForeignKey(
        settings.AUTH_USER_MODEL,
        null=True,
        blank=True,
        on_delete=models.SET_NULL,
        related_name="+",
        help_text="The coordinator who chose this series; empty when the pick rule did",
    )
    referenced_series = models.ForeignKey(
        "self", null=True, blank=True, on_delete=models.CASCADE, related_name="segmentations"
    )
    source_upload = models.ForeignKey(
        ImageUpload, null=True, blank=True, on_delete=models.SET_NULL, related_name="series"
    )
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["study_id", "series_number", "id"]
        verbose_name_plural = "image series"

    def __str__(self) -> str:
        return f"{self.modality} {self.series_instance_uid}"


class DicomInstance(models.Model):
    series = models.ForeignKey(ImageSeries, on_delete=models.CASCADE, related_name="instances")
    sop_instance_uid = models.CharField(max_length=64, unique=True)
    sop_class_uid = models.CharField(max_length=64)
    instance_number = models.IntegerField(null=True, blank=True)
    number_of_frames = models.PositiveIntegerField(default=1)
    transfer_syntax_uid = models.CharField(max_length=64)
    file = models.FileField(max_length=300)
    metadata = models.JSONField(
        default=dict, help_text="DICOM JSON without pixel data, for WADO-RS metadata"
    )

    class Meta:
        ordering = ["series_id", "instance_number", "id"]

    def __str__(self) -> str:
        return self.sop_instance_uid


class CanonicalVolume(models.Model):
    """The volume the engine reads: one per CT series and one per mask, as NIfTI."""

    class Kind(models.TextChoices):
        CT = "ct", "CT"
        MASK = "mask", "Mask (0 background, 1 pancreas, 2 tumour)"

    patient = models.ForeignKey("cohorts.Patient", on_delete=models.CASCADE, related_name="volumes")
    series = models.ForeignKey(ImageSeries, on_delete=models.CASCADE, related_name="volumes")
    kind = models.CharField(max_length=8, choices=Kind.choices)
    file = models.FileField(max_length=300)
    content_hash = models.CharField(max_length=64)
    geometry = models.JSONField(default=dict)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["series", "kind"], name="one_volume_per_series_kind")
        ]

    def __str__(self) -> str:
        return f"{self.get_kind_display()} of {self.patient}"


class MaskVersion(models.Model):
    """One version of the pancreas and tumour mask of a CT series: uploaded, predicted by a
    segmentation model, or edited by a reader in the viewer.

    Each version keeps its canonical mask (NIfTI, uint8 0/1/2 on the CT's grid) and its DICOM
    SEG series (served over DICOMweb like any SEG). At most one version of a CT is approved;
    its mask is the CT's ``CanonicalVolume`` of kind "mask", the only mask PMPD reads.
    """

    class Source(models.TextChoices):
        UPLOADED = "uploaded", "Uploaded"
        AUTOMATIC = "automatic", "Automatic"
        EDITED = "edited", "Edited"

    class Status(models.TextChoices):
        NEEDS_REVIEW = "needs_review", "Needs review"
        APPROVED = "approved", "Approved"
        REJECTED = "rejected", "Rejected"
        SUPERSEDED = "superseded", "Superseded by a later approved version"

    patient = models.ForeignKey(
        "cohorts.Patient", on_delete=models.CASCADE, related_name="mask_versions"
    )
    ct_series = models.ForeignKey(
        ImageSeries, on_delete=models.CASCADE, related_name="mask_versions"
    )
    number = models.PositiveIntegerField(help_text="1, 2, ... per CT series")
    source = models.CharField(max_length=12, choices=Source.choices)
    source_label = models.CharField(
        max_length=200, blank=True, help_text="The model's name or the editor's name"
    )
    status = models.CharField(
        max_length=16, choices=Status.choices, default=Status.NEEDS_REVIEW, db_index=True
    )
    seg_series = models.OneToOneField(
        ImageSeries,
        null=True,
        blank=True,
        on_delete=models.SET_NULL,
        related_name="mask_version",
        help_text="The DICOM SEG of this version",
    )
    edited_from = models.ForeignKey(
        "self", null=True, blank=True, on_delete=models.SET_NULL, related_name="edits"
    )
    file = models.FileField(max_length=300, help_text="Canonical mask (NIfTI)")
    content_hash = models.CharField(max_length=64)
    geometry = models.JSONField(default=dict)
    pancreas_voxels = models.PositiveBigIntegerField(default=0)
    tumour_voxels = models.PositiveBigIntegerField(default=0)
    uncertainty = models.FloatField(
        null=True,
        blank=True,
        help_text="Mean softmax entropy (nats) inside the predicted tumour; automatic only",
    )
    flags = models.JSONField(default=list, blank=True, help_text="Why a reader must look")
    dice_vs_automatic = models.JSONField(
        default=dict,
        blank=True,
        help_text="On approval: Dice per label against each automatic version of the CT",
    )
    produced_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    produced_by_job = models.ForeignKey(
        "jobs.Job",
        null=True,
        blank=True,
        on_delete=models.SET_NULL,
        related_name="+",
        help_text="The segmentation job that predicted it (automatic only): a part of the job "
        "run again after its worker died finds the masks it already stored",
    )
    produced_at = models.DateTimeField(auto_now_add=True)
    reviewed_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    reviewed_at = models.DateTimeField(null=True, blank=True)
    review_note = models.CharField(max_length=500, blank=True)
    reviewing_by = models.ForeignKey(
        settings.AUTH_USER_MODEL,
        null=True,
        blank=True,
        on_delete=models.SET_NULL,
        related_name="+",
        help_text="The reader who opened it for review (shown in the review queue)",
    )
    reviewing_since = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["ct_series_id", "-number"]
        constraints = [
            models.UniqueConstraint(
                fields=["ct_series", "number"], name="one_mask_version_number_per_ct"
            ),
            models.UniqueConstraint(
                fields=["ct_series"],
                condition=models.Q(status="approved"),
                name="one_approved_mask_version_per_ct",
            ),
        ]

    def __str__(self) -> str:
        return f"Mask version {self.number} of {self.patient} ({self.provenance})"

    @property
    def provenance(self) -> str:
        if self.source == self.Source.AUTOMATIC:
            return f"automatic: {self.source_label}"
        if self.source == self.Source.EDITED:
            return f"edited by {self.source_label}"
        return "uploaded"
