"""A patient's CT and its DICOM SEG in the database and storage, for the DICOMweb and viewer
tests: phantom slices written as DICOM, rows for ImagingStudy, ImageSeries and DicomInstance
(metadata as DICOM JSON without pixel data) and a highdicom SEG of the pancreas and tumour.
"""

from __future__ import annotations

import io
import warnings
from dataclasses import dataclass
from pathlib import Path

import highdicom as hd
import pydicom
from django.core.files.base import ContentFile
from django.core.files.storage import default_storage
from pydicom.sr.codedict import codes

from inference.pmpd.phantom import (
    PhantomConfig,
    PhantomPatient,
    generate_patient,
    write_dicom_series,
)
from pmpd_web.cohorts.models import Patient
from pmpd_web.imaging.models import DicomInstance, ImageSeries, ImagingStudy

SLICE_THICKNESS_MM = 2.0


@dataclass
class ImagedPatient:
    patient: Patient
    phantom: PhantomPatient
    study: ImagingStudy
    ct: ImageSeries
    seg: ImageSeries


def phantom(*, index: int, seed: int = 11, size: int = 64, n_slices: int = 12) -> PhantomPatient:
    config = PhantomConfig(
        size=size,
        z_extent_mm=n_slices * SLICE_THICKNESS_MM,
        slice_thicknesses_mm=(SLICE_THICKNESS_MM,),
        slice_thickness_weights=(1.0,),
    )
    return generate_patient(index, seed=seed, config=config)


def segmentation(ct: list[pydicom.Dataset], mask) -> hd.seg.Segmentation:
    """A BINARY DICOM SEG of the phantom mask (1 pancreas, 2 tumour) over the CT slices."""
    manual = hd.seg.SegmentAlgorithmTypeValues.MANUAL
    descriptions = [
        hd.seg.SegmentDescription(
            segment_number=1,
            segment_label="Pancreas",
            segmented_property_category=codes.SCT.Organ,
            segmented_property_type=codes.SCT.Pancreas,
            algorithm_type=manual,
        ),
        hd.seg.SegmentDescription(
            segment_number=2,
            segment_label="Tumour",
            segmented_property_category=codes.SCT.MorphologicallyAbnormalStructure,
            segmented_property_type=codes.SCT.Neoplasm,
            algorithm_type=manual,
        ),
    ]
    with warnings.catch_warnings():
        # The pseudonym is a one-component person name, as de-identification leaves it.
        warnings.filterwarnings("ignore", message=".*unlikely to represent the intended person")
        return hd.seg.Segmentation(
            source_images=ct,
            pixel_array=mask,
            segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
            segment_descriptions=descriptions,
            series_instance_uid=hd.UID(),
            series_number=100,
            series_description="Pancreas and tumour",
            sop_instance_uid=hd.UID(),
            instance_number=1,
            manufacturer="PMPD",
            manufacturer_model_name="phantom masks",
            software_versions="1",
            device_serial_number="1",
        )


def _store(series: ImageSeries, ds: pydicom.Dataset) -> DicomInstance:
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    name = default_storage.save(f"dicom/{ds.SOPInstanceUID}.dcm", ContentFile(buffer.getvalue()))
    # The headers as read back from the file, as an ingest sees them.
    metadata = pydicom.dcmread(
        io.BytesIO(buffer.getvalue()), stop_before_pixels=True
    ).to_json_dict()
    return DicomInstance.objects.create(
        series=series,
        sop_instance_uid=str(ds.SOPInstanceUID),
        sop_class_uid=str(ds.SOPClassUID),
        instance_number=ds.get("InstanceNumber"),
        number_of_frames=int(ds.get("NumberOfFrames", 1)),
        transfer_syntax_uid=str(ds.file_meta.TransferSyntaxUID),
        file=name,
        metadata=metadata,
    )


def add_imaged_patient(
    patient: Patient, *, folder: Path, index: int, size: int = 64, n_slices: int = 12
) -> ImagedPatient:
    """Give ``patient`` a phantom CT (``n_slices`` slices of ``size``²) and its SEG.

    ``index`` picks the phantom (and so the UIDs): distinct per patient of a test.
    """
    case = phantom(index=index, size=size, n_slices=n_slices)
    datasets = [pydicom.dcmread(path) for path in write_dicom_series(case, folder)]
    for ds in datasets:
        # What de-identification leaves: the pseudonym, no direct identifiers.
        ds.PatientName = ds.PatientID = patient.study_id
        ds.PatientBirthDate = ds.InstitutionName = ""
    first = datasets[0]
    study = ImagingStudy.objects.create(
        patient=patient,
        study_instance_uid=str(first.StudyInstanceUID),
        study_date=str(first.StudyDate),
        description=str(first.StudyDescription),
    )
    ct = ImageSeries.objects.create(
        study=study,
        series_instance_uid=str(first.SeriesInstanceUID),
        modality="CT",
        series_number=first.SeriesNumber,
        description=str(first.SeriesDescription),
        manufacturer=str(first.Manufacturer),
        slice_thickness_mm=float(first.SliceThickness),
        frame_of_reference_uid=str(first.FrameOfReferenceUID),
        n_instances=len(datasets),
        is_selected=True,
    )
    for ds in datasets:
        _store(ct, ds)
    seg_ds = segmentation(datasets, case.mask)
    seg = ImageSeries.objects.create(
        study=study,
        series_instance_uid=str(seg_ds.SeriesInstanceUID),
        modality="SEG",
        series_number=seg_ds.SeriesNumber,
        description=str(seg_ds.SeriesDescription),
        frame_of_reference_uid=str(first.FrameOfReferenceUID),
        n_instances=1,
        referenced_series=ct,
    )
    _store(seg, seg_ds)
    return ImagedPatient(patient=patient, phantom=case, study=study, ct=ct, seg=seg)
