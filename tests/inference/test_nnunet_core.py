"""nnU-Net v2 core (no Django): the raw dataset, a real nnU-Net trained on phantom patients on
the CPU with a tiny budget (2d, one fold, a few iterations), predictions of held-out phantoms
with the uncertainty inside the tumour, and the check of an imported results ZIP."""

from __future__ import annotations

import io
import json
import shutil
import time
import zipfile
from pathlib import Path

import numpy as np
import pytest

from inference.pmpd.phantom import PhantomConfig, generate_patient
from inference.pmpd.volume import Volume
from inference.segmentation import nnunet_core as nc

SMALL = PhantomConfig(size=64, z_extent_mm=40.0)


def case(index: int, *, with_mask: bool = True) -> nc.Case:
    patient = generate_patient(index, seed=3, config=SMALL)
    ct = Volume.of_array(
        patient.ct, spacing=patient.spacing, origin=patient.origin, direction=patient.direction
    )
    return nc.Case(case_id=f"phantom{index:03d}", ct=ct, mask=patient.mask if with_mask else None)


def test_the_raw_dataset_is_what_nnunet_reads(tmp_path):
    import SimpleITK as sitk

    cases = [case(0), case(1)]
    folder = nc.write_raw_dataset(cases, tmp_path, dataset_id=7, name="PMPD phantoms")
    assert folder.name == "Dataset007_PMPD_phantoms"
    dataset = json.loads((folder / "dataset.json").read_text())
    assert dataset["channel_names"] == {"0": "CT"} and dataset["numTraining"] == 2
    assert dataset["labels"] == {"background": 0, "pancreas": 1, "tumour": 2}
    image = sitk.ReadImage(str(folder / "imagesTr" / "phantom000_0000.nii.gz"))
    label = sitk.ReadImage(str(folder / "labelsTr" / "phantom000.nii.gz"))
    np.testing.assert_array_equal(sitk.GetArrayFromImage(image), cases[0].ct.array)
    np.testing.assert_array_equal(sitk.GetArrayFromImage(label), cases[0].mask)
    assert image.GetSpacing() == cases[0].ct.spacing
    assert image.GetOrigin() == cases[0].ct.origin


def test_the_raw_dataset_refuses_bad_masks(tmp_path):
    bad = case(0)
    bad = nc.Case(**{**bad.__dict__, "mask": np.full_like(bad.mask, 3)})
    with pytest.raises(nc.NnUNetError, match="phantom000: the mask holds values other than"):
        nc.write_raw_dataset([bad, case(1)], tmp_path, dataset_id=7, name="x")
    with pytest.raises(nc.NnUNetError, match="at least 2 cases"):
        nc.write_raw_dataset([case(1)], tmp_path, dataset_id=8, name="x")


def test_tumour_uncertainty_is_the_mean_entropy_inside_the_predicted_tumour():
    probabilities = np.zeros((3, 1, 1, 3))
    probabilities[:, 0, 0, 0] = [1.0, 0.0, 0.0]  # background, certain
    probabilities[:, 0, 0, 1] = [0.0, 0.5, 0.5]  # tumour, unsure: ln 2
    probabilities[:, 0, 0, 2] = [0.0, 0.0, 1.0]  # tumour, certain: 0
    segmentation = np.array([[[0, 2, 2]]])
    assert nc.tumour_uncertainty(probabilities, segmentation, 2) == round(np.log(2) / 2, 5)
    assert nc.tumour_uncertainty(probabilities, np.zeros_like(segmentation), 2) is None


# ----------------------------------------------------------------------------------------------
# Imported models: a ZIP of nnU-Net's results folder


def results_zip(
    *,
    channels=None,
    labels=None,
    with_plans: bool = True,
    folds=("fold_0",),
    root: str = "Dataset009_Pancreas/nnUNetTrainer__nnUNetPlans__3d_fullres/",
) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        dataset = {
            "channel_names": channels or {"0": "CT"},
            "labels": labels or {"background": 0, "pancreas": 1, "cancer": 2},
            "file_ending": ".nii.gz",
        }
        archive.writestr(root + "dataset.json", json.dumps(dataset))
        if with_plans:
            archive.writestr(
                root + "plans.json", json.dumps({"configurations": {"3d_fullres": {}}})
            )
        for fold in folds:
            archive.writestr(f"{root}{fold}/checkpoint_final.pth", b"weights")
    return buffer.getvalue()


def inspect(tmp_path, data: bytes, pancreas="pancreas", tumour="cancer"):
    path = tmp_path / "model.zip"
    path.write_bytes(data)
    return nc.inspect_results_zip(path, pancreas_label=pancreas, tumour_label=tumour)


def test_a_good_results_zip_maps_its_labels(tmp_path):
    model = inspect(tmp_path, results_zip(folds=("fold_0", "fold_1")))
    assert model.configuration == "3d_fullres" and model.folds == (0, 1)
    assert model.label_of_class == {"pancreas": 1, "tumour": 2}
    assert model.trainer_name == "nnUNetTrainer"
    # By value as well as by name.
    assert inspect(tmp_path, results_zip(), "1", "2").label_of_class == {"pancreas": 1, "tumour": 2}


@pytest.mark.parametrize(
    ("data", "labels", "message"),
    [
        (b"not a zip", ("pancreas", "cancer"), "not a ZIP file"),
        (results_zip(with_plans=False), ("pancreas", "cancer"), "no folder with both dataset.json"),
        (results_zip(folds=()), ("pancreas", "cancer"), "no fold_N/checkpoint_final.pth"),
        (
            results_zip(channels={"0": "CT", "1": "CT arterial"}),
            ("pancreas", "cancer"),
            "single CT channel",
        ),
        (results_zip(channels={"0": "MRI"}), ("pancreas", "cancer"), "single CT channel"),
        (results_zip(), ("pancreas", "tumour"), "no label 'tumour' for tumour; its labels are"),
        (results_zip(), ("pancreas", "pancreas"), "cannot be the same label"),
        (results_zip(), ("0", "cancer"), "background"),
    ],
    ids=["not-zip", "no-plans", "no-checkpoint", "two-channels", "mri", "unmapped", "same", "bg"],
)
def test_a_bad_results_zip_is_refused_with_its_reason(tmp_path, data, labels, message):
    with pytest.raises(nc.NnUNetError, match=message):
        inspect(tmp_path, data, *labels)


# ----------------------------------------------------------------------------------------------
# A real nnU-Net v2, trained on the CPU with a tiny budget


@pytest.mark.slow
def test_train_a_real_nnunet_and_predict_held_out_phantoms(tmp_path):
    started = time.monotonic()
    training, held_out = [case(i) for i in range(5)], [case(5, with_mask=False)]
    nc.write_raw_dataset(training, tmp_path / "raw", dataset_id=501, name="phantoms")
    messages: list[dict] = []
    nc.plan_and_preprocess(tmp_path, dataset_id=501, on_progress=messages.append)
    budget = nc.TrainingBudget(
        epochs=2, iterations_per_epoch=10, validation_iterations=2, batch_size=4, max_features=16
    )
    model = nc.train(tmp_path, dataset_id=501, budget=budget, on_progress=messages.append)
    epochs = [m for m in messages if m["kind"] == "epoch"]
    assert [(m["fold"], m["epoch"]) for m in epochs] == [(0, 1), (0, 2)]
    assert all(len(m["pseudo_dice"]) == 2 for m in epochs)  # pancreas and tumour
    assert any("fingerprint" in m.get("phrase", "") for m in messages)
    assert (model.folder / "fold_0" / "checkpoint_final.pth").exists()
    assert set(model.dice_per_fold["0"]) == {"pancreas", "tumour"}
    plans = json.loads((model.folder / "plans.json").read_text())
    features = plans["configurations"]["2d"]["architecture"]["arch_kwargs"]["features_per_stage"]
    assert max(features) == 16  # the budget's smaller network is what the results keep

    segmenter = nc.Segmenter(model.folder, folds=model.folds, use_mirroring=False)
    prediction = segmenter.predict(held_out[0])
    assert prediction.mask.shape == held_out[0].ct.array.shape and prediction.mask.dtype == np.uint8
    assert set(np.unique(prediction.mask)) <= {0, 1, 2}
    assert prediction.tumour_voxels == int((prediction.mask == 2).sum())
    assert (prediction.tumour_uncertainty is None) == (prediction.tumour_voxels == 0)

    # The same results folder, zipped and imported, predicts the same mask.
    archive = shutil.make_archive(str(tmp_path / "export"), "zip", model.folder.parent.parent)
    imported = nc.inspect_results_zip(Path(archive), pancreas_label="pancreas", tumour_label="2")
    assert imported.folds == (0,) and imported.configuration == "2d"
    unpacked = nc.extract_results_zip(Path(archive), tmp_path / "imported")
    again = nc.Segmenter(unpacked, folds=imported.folds, use_mirroring=False).predict(held_out[0])
    np.testing.assert_array_equal(again.mask, prediction.mask)
    assert time.monotonic() - started < 240


def test_a_smaller_training_patch_keeps_the_networks_stride():
    from inference.segmentation.nnunet_worker import smaller_patch

    strides = [[1, 1], [2, 2], [2, 2], [2, 2], [2, 2], [1, 2]]  # total 16 and 32
    assert smaller_patch([96, 256], strides, 128) == [96, 128]
    assert smaller_patch([96, 256], strides, 100) == [96, 96]
    assert smaller_patch([96, 256], strides, 8) == [16, 32]


def test_a_budget_names_an_optimizer_the_trainer_knows():
    assert nc.TrainingBudget(optimizer="adamw").as_dict()["optimizer"] == "adamw"
    with pytest.raises(nc.NnUNetError, match="optimizer 'adam'.*sgd, adamw"):
        nc.TrainingBudget(optimizer="adam")
