"""The ingest job: from an upload's received files to de-identified DICOM studies, series and
instances, a DICOM SEG per mask and the canonical volumes the engine reads (the contract is in
``models``). All or nothing: every patient of the upload is read, checked, de-identified and
written to storage first; the database rows change in one transaction at the end, and any
problem leaves every patient's images as they were (what was written is deleted again).
Idempotent: unchanged series and masks (same de-identified UID, same content hash) are left
alone, so a repeated upload of the same files changes nothing.

Steps, one module each: ``intake`` (the files on disk, their kind and study ID), ``planning``
(one patient read, de-identified, checked), ``masks`` (masks put on their CT), ``storage``
(instances, SEGs and volumes written), ``commit`` (the transaction); ``job`` runs them. The pick
rule lives beside the series model in ``pmpd_web.imaging.series_pick``.
"""

from ..series_pick import apply_pick_rule, select_series
from .job import ingest_upload

__all__ = ["apply_pick_rule", "ingest_upload", "select_series"]
