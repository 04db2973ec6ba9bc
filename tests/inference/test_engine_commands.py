"""The engine's management commands and the demo's engine step, on tiny phantom cohorts."""

from __future__ import annotations

import csv
import dataclasses
import io

import pytest
from django.core.management import CommandError, call_command
from engine_fixtures import (  # noqa: F401 (one_torch_thread is an autouse fixture)
    TINY,
    add_phantom_patient,
    make_imaged_cohort,
    one_torch_thread,
    phantom,
)

from inference import demo
from inference.models import ModelVersion, PatientPrediction
from inference.pmpd.phantom import CLINICAL_COLUMNS

pytestmark = [pytest.mark.slow, pytest.mark.django_db]


def run(command: str, *args: str) -> str:
    out = io.StringIO()
    call_command(command, *args, stdout=out)
    return out.getvalue()


@pytest.mark.parametrize("file_format", ["nifti", "dicom"])
def test_make_phantom_cohort_writes_images_masks_and_the_table(tmp_path, file_format):
    out = run(
        "make_phantom_cohort",
        "--out",
        str(tmp_path),
        "--patients",
        "3",
        "--seed",
        "5",
        "--size",
        "32",
        "--format",
        file_format,
    )
    assert "Wrote 3 synthetic patients" in out
    with (tmp_path / "clinical.csv").open() as handle:
        rows = list(csv.DictReader(handle))
    assert [row["study_id"] for row in rows] == ["PHX-0001", "PHX-0002", "PHX-0003"]
    assert tuple(rows[0]) == CLINICAL_COLUMNS
    for row in rows:
        folder = tmp_path / "images" / row["study_id"]
        assert (folder / "mask.nii.gz").is_file()
        if file_format == "nifti":
            assert (folder / "ct.nii.gz").is_file()
        else:
            assert not (folder / "ct.nii.gz").exists()
            assert len(list((folder / "ct").glob("*.dcm"))) >= 8


def test_train_and_predict_commands(cohort):
    make_imaged_cohort(cohort)
    add_phantom_patient(cohort, phantom(31), study_id="UNLABELLED", label="unknown")
    with pytest.raises(CommandError, match="No model version is active"):
        run("predict_pmpd", "--cohort", str(cohort.pk))
    with pytest.raises(CommandError, match="No cohort"):
        run("train_pmpd", "--cohort", "no such cohort")
    with pytest.raises(CommandError, match="No weights file at /nowhere/resnet.pth"):
        run("train_pmpd", "--cohort", cohort.name, "--pretrained", "/nowhere/resnet.pth")
    out = run(
        "train_pmpd",
        "--cohort",
        cohort.name,
        "--name",
        "cli-1",
        "--depth",
        "10",
        "--input-size",
        "32",
        "--epochs",
        "1",
        "--batch-size",
        "64",
        "--threads",
        "1",
        "--activate",
    )
    version = ModelVersion.objects.get(name="cli-1")
    assert version.status == "ready" and version.is_active
    assert "trained on 10 patients (5 with metastasis)" in out
    assert "Out-of-fold patient-level AUROC (MRS): " in out
    assert "cli-1 is now the active model version" in out
    assert version.config["preprocess"]["rotation_angles_deg"] == [0, 60, 120, 180, 240, 300]
    assert version.config["train"]["num_threads"] == 1
    out = run("predict_pmpd", "--cohort", str(cohort.pk))
    assert "1 scored, 0 already up to date, 10 keep their out-of-fold score" in out
    assert PatientPrediction.objects.get(patient__study_id="UNLABELLED").source == "ensemble"
    with pytest.raises(CommandError, match="exists"):
        run("train_pmpd", "--cohort", cohort.name, "--name", "cli-1")

    # The negative control trains on permuted labels and stores nothing.
    predictions = PatientPrediction.objects.count()
    out = run(
        "train_pmpd",
        "--cohort",
        cohort.name,
        "--shuffled-labels",
        "--depth",
        "10",
        "--input-size",
        "32",
        "--epochs",
        "1",
        "--threads",
        "1",
        "--seed",
        "3",
    )
    assert "labels permuted with seed 3; nothing is stored" in out
    assert "Shuffled labels, 10 patients, " in out and "out-of-fold patient AUROC (MRS) 0." in out
    assert ModelVersion.objects.count() == 1 and PatientPrediction.objects.count() == predictions


def test_the_shuffled_labels_check_permutes_metastasis_and_sites_together(cohort, monkeypatch):
    import numpy as np

    from inference import training
    from inference.pmpd import train

    make_imaged_cohort(cohort)
    seen = {}

    def fake_cross_validate(patches, labels, config, progress, *, patient_ids, site_labels, **kw):
        seen.update(labels=np.asarray(labels), sites=site_labels, ids=patient_ids)
        return dataclasses.make_dataclass("R", ["metrics", "seconds"])({"auc": 0.5}, 1.0)

    monkeypatch.setattr(train, "cross_validate", fake_cross_validate)
    choices = dataclasses.replace(TINY, input_size=32)
    training_set = training.collect_training_set(
        cohort, choices.configs()[1], lambda done, total: None
    )
    original = {
        p.study_id: (label, tuple(sites))
        for p, label, sites in zip(
            training_set.patients, training_set.labels, training_set.site_labels, strict=True
        )
    }
    result = training.shuffled_labels_check(
        cohort, choices, seed=1, progress=lambda percent, phrase: None
    )
    assert result["patients"] == 10
    assert sorted(seen["labels"]) == sorted(label for label, _ in original.values())
    # Each patient's metastasis label travels with its site labels (a permutation of patients).
    pairs = sorted(
        (int(lab), tuple(np.nan_to_num(s, nan=-1)))
        for lab, s in zip(seen["labels"], seen["sites"], strict=True)
    )
    expected = sorted((lab, tuple(np.nan_to_num(s, nan=-1))) for lab, s in original.values())
    assert pairs == expected
    assert [original[i][0] for i in seen["ids"]] != list(seen["labels"])


def test_the_demo_trains_scores_and_then_reuses(cohort, monkeypatch):
    out = io.StringIO()
    assert demo.run_demo_engine(cohort, stdout=out) is None
    assert "no patient has images yet" in out.getvalue()
    make_imaged_cohort(cohort)
    add_phantom_patient(cohort, phantom(31), study_id="UNLABELLED", label="unknown")
    monkeypatch.setattr(demo, "DEMO_TRAINING", dataclasses.replace(TINY, input_size=32))
    first = io.StringIO()
    version = demo.run_demo_engine(cohort, stdout=first)
    assert version.name == demo.demo_version_name(cohort) and version.is_active
    assert "Out-of-fold patient-level AUROC" in first.getvalue()
    assert PatientPrediction.objects.filter(model_version=version).count() == 11
    second = io.StringIO()
    assert demo.run_demo_engine(cohort, stdout=second) == version
    assert "scored by the active version" in second.getvalue()
    assert ModelVersion.objects.count() == 1
    # A new patient: the demo scores it with the same version, without training again.
    add_phantom_patient(cohort, phantom(32), study_id="NEWCOMER", label="unknown")
    third = io.StringIO()
    assert demo.run_demo_engine(cohort, stdout=third) == version
    assert "1 scored" in third.getvalue() and ModelVersion.objects.count() == 1
