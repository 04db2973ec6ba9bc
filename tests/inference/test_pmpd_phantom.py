"""The synthetic cohort: determinism, anatomy and labels, DICOM and NIfTI files, clinical table."""

from __future__ import annotations

import csv
import re

import numpy as np
import pydicom
import pytest
import SimpleITK as sitk

from inference.pmpd.phantom import (
    CLINICAL_COLUMNS,
    PhantomConfig,
    generate_cohort,
    generate_patient,
    write_clinical_table,
    write_dicom_series,
    write_nifti,
)
from inference.pmpd.preprocess import load_volume

# Thick slices keep the files few and small.
SMALL = PhantomConfig(size=48, slice_thicknesses_mm=(2.5,), slice_thickness_weights=(1.0,))


def test_same_seed_same_patient_and_independent_of_cohort_size():
    first = generate_patient(3, seed=7, config=SMALL)
    again = generate_patient(3, seed=7, config=SMALL)
    assert np.array_equal(first.ct, again.ct)
    assert np.array_equal(first.mask, again.mask)
    assert first.clinical == again.clinical
    in_cohort = generate_cohort(5, seed=7, config=SMALL)[3]
    assert np.array_equal(in_cohort.ct, first.ct) and in_cohort.clinical == first.clinical
    other = generate_patient(3, seed=8, config=SMALL)
    assert not np.array_equal(other.ct, first.ct)


def test_volume_mask_and_geometry():
    patient = generate_patient(0, seed=1, size=64)
    assert patient.ct.dtype == np.int16 and patient.mask.dtype == np.uint8
    assert patient.ct.shape == patient.mask.shape
    assert patient.ct.shape[1:] == (64, 64)
    assert set(np.unique(patient.mask)) == {0, 1, 2}
    assert patient.ct.min() >= -1024 and patient.ct.max() <= 3071
    # Pixel spacing as a 512 matrix of 0.6-0.9 mm would have: same field of view.
    assert 0.6 * 512 / 64 - 0.01 <= patient.spacing[0] <= 0.9 * 512 / 64 + 0.01
    assert patient.ct.shape[0] == round(200 / patient.spacing[2])
    # The tumour is hypo-attenuating against the pancreas.
    tumour_hu = np.median(patient.ct[patient.mask == 2])
    pancreas_hu = np.median(patient.ct[patient.mask == 1])
    assert tumour_hu < pancreas_hu - 20


def test_scanner_variety_and_realistic_spacing_at_512():
    config = PhantomConfig(size=512)
    from inference.pmpd.phantom import _draw_case  # the scanner draw, without rendering images

    cases = [_draw_case(i, np.random.default_rng([0, i]), config) for i in range(200)]
    thicknesses = {c.slice_thickness_mm for c in cases}
    assert thicknesses == set(config.slice_thicknesses_mm)
    assert all(0.6 <= c.nominal_pixel_mm <= 0.9 for c in cases)
    manufacturers = {c.clinical["ct_manufacturer"] for c in cases}
    assert manufacturers == {"GE MEDICAL SYSTEMS", "SIEMENS", "Philips", "TOSHIBA"}


def test_metastatic_tumours_carry_the_graded_signal():
    patients = generate_cohort(24, seed=2, size=48)
    strengths = np.array([p.signal_strength for p in patients])
    metastatic = np.array([p.metastatic for p in patients])
    assert 0 < metastatic.sum() < len(patients)
    assert strengths[metastatic].mean() > strengths[~metastatic].mean() + 0.3
    # Heterogeneity: the tumour's HU spread grows with the signal.
    spread = np.array([np.std(p.ct[p.mask == 2]) for p in patients])
    assert np.corrcoef(strengths, spread)[0, 1] > 0.5


@pytest.mark.slow
def test_dicom_series_is_readable_with_the_right_geometry(tmp_path):
    patient = generate_patient(1, seed=4, config=SMALL)
    paths = write_dicom_series(patient, tmp_path / "series")
    assert len(paths) == patient.ct.shape[0]

    volume = load_volume(tmp_path / "series")
    assert np.array_equal(volume.array, patient.ct)
    assert volume.spacing == pytest.approx(patient.spacing, abs=1e-9)
    assert volume.origin == pytest.approx(patient.origin, abs=1e-9)
    assert volume.direction == pytest.approx(patient.direction)

    ds = pydicom.dcmread(paths[2])
    assert ds.SOPClassUID == "1.2.840.10008.5.1.4.1.1.2"  # CT Image Storage
    assert ds.Modality == "CT"
    assert ds.Manufacturer == patient.clinical["ct_manufacturer"]
    assert [float(v) for v in ds.ImagePositionPatient] == pytest.approx(
        [patient.origin[0], patient.origin[1], patient.origin[2] + 2 * patient.spacing[2]]
    )
    assert [float(v) for v in ds.ImageOrientationPatient] == [1, 0, 0, 0, 1, 0]
    assert [float(v) for v in ds.PixelSpacing] == [patient.spacing[1], patient.spacing[0]]
    assert float(ds.SliceThickness) == patient.spacing[2]
    assert float(ds.RescaleIntercept) == -1024 and float(ds.RescaleSlope) == 1
    assert np.array_equal(ds.pixel_array.astype(np.int32) - 1024, patient.ct[2])
    # Fake direct identifiers, for de-identification to remove.
    assert str(ds.PatientName) == patient.identifiers["patient_name"]
    assert ds.PatientID.startswith("MRN") and len(ds.PatientBirthDate) == 8
    assert ds.InstitutionName

    rewritten = write_dicom_series(patient, tmp_path / "again")
    assert pydicom.dcmread(rewritten[2]).SOPInstanceUID == ds.SOPInstanceUID
    assert len({pydicom.dcmread(p).SOPInstanceUID for p in paths[:5]}) == 5


def test_nifti_round_trip_is_exact(tmp_path):
    patient = generate_patient(2, seed=4, size=40)
    ct_path, mask_path = write_nifti(patient, tmp_path)
    ct = load_volume(ct_path)
    assert np.array_equal(ct.array, patient.ct)
    assert ct.spacing == patient.spacing
    assert ct.origin == patient.origin
    assert ct.direction == patient.direction
    mask = sitk.ReadImage(str(mask_path))
    assert np.array_equal(sitk.GetArrayFromImage(mask), patient.mask)
    assert mask.GetPixelID() == sitk.sitkUInt8


def read_clinical_table(folder, n_patients: int) -> tuple[list[str], list[dict[str, str]]]:
    path = folder / "clinical.csv"
    write_clinical_table(generate_cohort(n_patients, seed=11, size=32), path)
    with path.open(newline="") as handle:
        reader = csv.reader(handle)
        header = next(reader)
        rows = [dict(zip(header, row, strict=True)) for row in reader]
    return header, rows


@pytest.fixture(scope="module")
def clinical_rows(tmp_path_factory):
    return read_clinical_table(tmp_path_factory.mktemp("table"), 40)


@pytest.fixture(scope="module")
def paper_sized_clinical_rows(tmp_path_factory):
    """200 patients: enough for the shares of the paper's cohort to show."""
    return read_clinical_table(tmp_path_factory.mktemp("table"), 200)


def test_clinical_table_has_the_template_columns_in_order(clinical_rows):
    header, rows = clinical_rows
    assert tuple(header) == CLINICAL_COLUMNS
    assert header == [
        "study_id", "age_at_diagnosis_years", "sex", "centre", "tumour_location",
        "tumour_size_mm", "ct_manufacturer", "ca19_9_u_per_ml", "nccn_resectability",
        "metastasis_at_diagnosis", "metastasis_sites", "metastasis_detection",
        "overall_survival_days", "vital_status", "developed_metastasis", "days_to_metastasis",
    ]  # fmt: skip
    assert [r["study_id"] for r in rows[:2]] == ["PHX-0001", "PHX-0002"]


def test_clinical_values_are_consistent(clinical_rows):
    _, rows = clinical_rows
    one_decimal = re.compile(r"^\d+(\.\d)?$")
    for r in rows:
        assert re.fullmatch(r"PHX-\d{4}", r["study_id"])
        assert r["sex"] in {"female", "male"}
        assert r["tumour_location"] in {"head", "body", "tail", "other"}
        assert r["nccn_resectability"] in {
            "resectable", "borderline_resectable", "locally_advanced", "metastatic"
        }  # fmt: skip
        assert r["metastasis_at_diagnosis"] in {"yes", "no", "unknown"}
        assert r["vital_status"] in {"alive", "dead"}
        assert one_decimal.match(r["tumour_size_mm"])
        assert r["ca19_9_u_per_ml"] == "" or one_decimal.match(r["ca19_9_u_per_ml"])
        assert int(r["overall_survival_days"]) >= 1
        metastatic = r["metastasis_at_diagnosis"] == "yes"
        if metastatic:
            sites = r["metastasis_sites"].split(";")
            assert sites and set(sites) <= {"liver", "lung", "peritoneum", "other", "unknown"}
            assert r["metastasis_detection"] in {"imaging", "laparoscopy", "surgery", "other"}
        else:
            assert r["metastasis_sites"] == "" and r["metastasis_detection"] == ""
            assert r["nccn_resectability"] != "metastatic"
        if r["metastasis_at_diagnosis"] == "no":
            assert r["developed_metastasis"] in {"yes", "no", ""}
        else:
            assert r["developed_metastasis"] == ""
        if r["developed_metastasis"] == "yes":
            assert 1 <= int(r["days_to_metastasis"]) <= int(r["overall_survival_days"])
        else:
            assert r["days_to_metastasis"] == ""


@pytest.mark.slow
def test_clinical_distributions_resemble_the_paper(paper_sized_clinical_rows):
    _, rows = paper_sized_clinical_rows
    share = lambda key, value: np.mean([r[key] == value for r in rows])  # noqa: E731
    assert 0.2 <= share("metastasis_at_diagnosis", "yes") <= 0.45
    assert 0.45 <= share("tumour_location", "head") <= 0.72
    assert 0.3 <= share("sex", "female") <= 0.55
    assert 60 <= np.median([int(r["age_at_diagnosis_years"]) for r in rows]) <= 72
    assert 0 < share("ca19_9_u_per_ml", "") < 0.1
    liver = [r for r in rows if "liver" in r["metastasis_sites"].split(";")]
    assert len(liver) >= 0.7 * sum(r["metastasis_at_diagnosis"] == "yes" for r in rows)
    assert share("developed_metastasis", "yes") > 0
    # CA19-9 is higher with metastasis.
    ca = lambda status: np.median(  # noqa: E731
        [
            float(r["ca19_9_u_per_ml"])
            for r in rows
            if r["metastasis_at_diagnosis"] == status and r["ca19_9_u_per_ml"]
        ]
    )
    assert ca("yes") > 2 * ca("no")
