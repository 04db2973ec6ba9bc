"""Scoring with fold models, bf16 on CPU, Grad-CAM, and a tiny end-to-end run on the phantom."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from gradcam_reference import textbook_ensemble_gradcam
from PIL import Image

from inference.pmpd.gradcam import (
    ensemble_gradcam,
    gradcam,
    jet_colormap,
    save_overlay_png,
    score_and_explain,
)
from inference.pmpd.model import ModelConfig, PMPDNet, fuse_batchnorm
from inference.pmpd.phantom import PhantomConfig, generate_cohort
from inference.pmpd.predict import (
    FoldModel,
    FoldThresholds,
    PredictConfig,
    load_fold_models,
    predict_slices,
    score_patient,
    score_patients,
)
from inference.pmpd.preprocess import PreprocessConfig, preprocess_patient
from inference.pmpd.train import TrainConfig, cross_validate


def random_fold_models(n: int = 3, size: int = 48) -> list[FoldModel]:
    models = []
    for fold in range(n):
        torch.manual_seed(fold)
        model = PMPDNet(ModelConfig(depth=10, input_size=size)).eval()
        models.append(FoldModel(model=model, thresholds=FoldThresholds(0.5, 0.5), card={}))
    return models


@pytest.mark.slow
def test_score_patient_aggregates_folds_as_documented():
    folds = random_fold_models()
    patches = np.random.default_rng(0).random((4, 2, 48, 48), dtype=np.float32)
    per_fold = [predict_slices(f.model, patches).metastasis_probability for f in folds]
    mrs = [p.mean() for p in per_fold]
    thresholds = [FoldThresholds(float(np.median(p)), 0.5) for p in per_fold]
    prediction = score_patient(patches, folds, thresholds)
    assert prediction.slice_probabilities.shape == (3, 4)
    assert np.allclose(prediction.slice_probabilities, np.stack(per_fold), atol=1e-6)
    assert prediction.metastasis_risk_score == pytest.approx(np.mean(mrs), abs=1e-6)
    assert prediction.mrs_std == pytest.approx(np.std(mrs, ddof=1), abs=1e-6)
    assert prediction.mrs_min <= prediction.metastasis_risk_score <= prediction.mrs_max
    # At each fold's median, half of the 4 slices are at or above it.
    assert prediction.positive_fraction_per_fold == (0.5, 0.5, 0.5)
    assert prediction.fold_calls == (True, True, True) and prediction.predicted_metastasis
    assert set(prediction.site_probabilities) == {"none", "liver", "lung", "peritoneum"}
    assert prediction.n_slices == 4
    assert prediction.to_dict()["slice_probabilities"][0] == pytest.approx(list(per_fold[0]))


@pytest.mark.slow
def test_patients_scored_in_shared_batches_get_their_own_scores():
    """Several patients' patches in shared batches (the gpu step of a scoring part) score each
    patient as scoring it alone does, whatever the batch boundaries."""
    folds = random_fold_models()
    rng = np.random.default_rng(1)
    stacks = [rng.random((n, 2, 48, 48), dtype=np.float32) for n in (4, 3, 1)]
    together = score_patients(stacks, folds, config=PredictConfig(batch_size=3))
    for patches, batched in zip(stacks, together, strict=True):
        alone = score_patient(patches, folds)
        assert batched.n_slices == alone.n_slices == len(patches)
        assert np.allclose(batched.slice_probabilities, alone.slice_probabilities, atol=1e-5)
        assert batched.metastasis_risk_score == pytest.approx(alone.metastasis_risk_score, abs=1e-5)
        assert batched.site_probabilities == pytest.approx(alone.site_probabilities, abs=1e-5)
    assert score_patients([], folds) == []


@pytest.mark.slow
def test_patient_call_rules():
    folds = random_fold_models()
    patches = np.random.default_rng(1).random((4, 2, 48, 48), dtype=np.float32)
    every_slice = FoldThresholds(slice_threshold=0.0, patient_threshold=0.5)  # fraction 1
    no_slice = FoldThresholds(slice_threshold=1.1, patient_threshold=0.5)  # fraction 0
    two_of_three = score_patient(patches, folds, [every_slice, every_slice, no_slice])
    assert two_of_three.fold_calls == (True, True, False)
    assert two_of_three.predicted_metastasis
    one_of_three = score_patient(patches, folds, [every_slice, no_slice, no_slice])
    assert not one_of_three.predicted_metastasis
    mean_rule = score_patient(
        patches,
        folds,
        [every_slice, no_slice, no_slice],
        config=PredictConfig(patient_call_rule="mean_fraction"),
    )
    assert mean_rule.positive_fraction == pytest.approx(1 / 3)
    assert not mean_rule.predicted_metastasis  # 1/3 < 0.5
    with pytest.raises(ValueError, match="thresholds"):
        score_patient(patches, folds, [every_slice])


@pytest.mark.slow
def test_bf16_on_cpu_moves_no_mrs_by_more_than_001():
    folds = random_fold_models()
    rng = np.random.default_rng(2)
    for _ in range(3):
        patches = rng.random((4, 2, 48, 48), dtype=np.float32)
        fp32 = score_patient(patches, folds, config=PredictConfig(bf16_on_cpu=False))
        bf16 = score_patient(patches, folds, config=PredictConfig(bf16_on_cpu=True))
        assert abs(bf16.metastasis_risk_score - fp32.metastasis_risk_score) <= 0.01
        assert np.abs(bf16.slice_probabilities - fp32.slice_probabilities).max() <= 0.02


@pytest.mark.slow
def test_gradcam_heatmaps_and_overlay_png(tmp_path):
    folds = random_fold_models(2)
    patches = np.random.default_rng(3).random((3, 2, 48, 48), dtype=np.float32)
    maps = gradcam(folds[0].model, patches)
    assert maps.shape == (3, 48, 48) and maps.dtype == np.float32
    assert maps.min() >= 0.0 and maps.max() <= 1.0 + 1e-6
    assert all(m.max() == pytest.approx(1.0) or m.max() == 0.0 for m in maps)
    assert all(p.grad is None for p in folds[0].model.parameters())
    ensemble = ensemble_gradcam(folds, patches)
    assert ensemble.shape == (3, 48, 48)
    path = save_overlay_png(patches[0, 0], ensemble[0], tmp_path / "overlay.png")
    image = Image.open(path)
    assert image.size == (48, 48) and image.mode == "RGB"


@pytest.mark.slow
@pytest.mark.parametrize("fused", [False, True], ids=["as trained", "batchnorm fused"])
def test_score_and_explain_is_scoring_and_gradcam_apart(fused):
    """One forward pass per fold gives each patient the scores of ``score_patients`` and the
    heatmaps of the textbook Grad-CAM, across batch boundaries, leaving the models as found."""
    folds = random_fold_models()
    if fused:
        for fold in folds:
            fuse_batchnorm(fold.model)
    rng = np.random.default_rng(5)
    stacks = [rng.random((n, 2, 48, 48), dtype=np.float32) for n in (4, 3, 1)]
    config = PredictConfig(batch_size=3, bf16_on_cpu=False)
    trainable = [[p.requires_grad for p in f.model.parameters()] for f in folds]
    results, heatmaps = score_and_explain(stacks, folds, config=config)
    assert [[p.requires_grad for p in f.model.parameters()] for f in folds] == trainable
    assert all(p.grad is None for f in folds for p in f.model.parameters())
    expected = score_patients(stacks, folds, config=config)
    for got, want in zip(results, expected, strict=True):
        assert np.allclose(got.slice_probabilities, want.slice_probabilities, atol=1e-6)
        assert got.metastasis_risk_score == pytest.approx(want.metastasis_risk_score, abs=1e-6)
        assert got.site_probabilities == pytest.approx(want.site_probabilities, abs=1e-6)
        assert got.fold_calls == want.fold_calls
    reference = textbook_ensemble_gradcam([f.model for f in folds], np.concatenate(stacks))
    assert [len(maps) for maps in heatmaps] == [4, 3, 1]
    assert np.allclose(np.concatenate(heatmaps), reference, atol=1e-5)
    assert np.allclose(np.concatenate(heatmaps), ensemble_gradcam(folds, np.concatenate(stacks)))
    assert score_and_explain([], folds) == ([], [])


@pytest.mark.slow
def test_gradcam_backward_stops_at_layer4():
    """The backward pass of Grad-CAM goes from the logit to layer4 and no further: no gradient
    flows into layer3 or the first convolution, and no parameter gets one."""
    fold = random_fold_models(1)[0]
    reached = []
    hooks = [
        fold.model.backbone.layer3.register_full_backward_hook(lambda *a: reached.append("layer3")),
        fold.model.backbone.conv1.register_full_backward_hook(lambda *a: reached.append("conv1")),
    ]
    patches = np.random.default_rng(6).random((2, 2, 48, 48), dtype=np.float32)
    score_and_explain([patches], [fold], config=PredictConfig(bf16_on_cpu=False))
    gradcam(fold.model, patches)
    for hook in hooks:
        hook.remove()
    assert reached == []
    assert all(p.grad is None for p in fold.model.parameters())


@pytest.mark.slow
def test_score_and_explain_under_bf16_autocast_scores_as_scoring_does():
    """Under bf16 autocast (a CPU with native bf16, or CUDA) the scores are those of
    ``score_patients`` under the same autocast, and the heatmaps stay close to fp32's."""
    folds = random_fold_models(2)
    patches = np.random.default_rng(7).random((4, 2, 48, 48), dtype=np.float32)
    config = PredictConfig(bf16_on_cpu=True)
    (result,), (maps,) = score_and_explain([patches], folds, config=config)
    (expected,) = score_patients([patches], folds, config=config)
    assert np.allclose(result.slice_probabilities, expected.slice_probabilities, atol=1e-3)
    assert np.abs(maps - ensemble_gradcam(folds, patches)).max() <= 0.1


def test_jet_colormap_ends():
    colours = jet_colormap(np.array([0.0, 0.5, 1.0]))
    assert colours.tolist() == [[0, 0, 128], [128, 255, 128], [128, 0, 0]]


# ----------------------------------------------------------------------------------------------
# End to end on the phantom: generate, pre-process, cross-validate, load, score, Grad-CAM.


@pytest.fixture(scope="module")
def phantom_data():
    # 64x64 phantom, 32 px input, 2 rotations: the whole path at a size the CPU test budget allows.
    config = PhantomConfig(size=64)
    preprocess = PreprocessConfig(input_size=32, rotation_angles_deg=(0.0, 180.0))
    data, labels = [], []
    for patient in generate_cohort(20, seed=3, config=config):
        data.append(
            preprocess_patient(
                patient.ct,
                patient.mask,
                spacing=patient.spacing,
                direction=patient.direction,
                config=preprocess,
                augment=True,
            )
        )
        labels.append(int(patient.metastatic))
    return data, np.array(labels)


def run_cv(data, labels, output_dir):
    config = TrainConfig(
        model=ModelConfig(depth=10, input_size=32),
        max_epochs=2,
        batch_size=32,
        device="cpu",
        seed=1,
        num_threads=1,  # the 2 cores are shared: 2 threads oversubscribe them
    )
    return cross_validate(data, labels, config, output_dir=output_dir)


@pytest.mark.slow
def test_end_to_end_trains_predicts_and_is_deterministic(phantom_data, tmp_path):
    data, labels = phantom_data
    assert 0 < labels.sum() < len(labels)
    assert all(d.patches.shape == (8, 2, 32, 32) for d in data)
    first = run_cv(data, labels, tmp_path / "a")
    second = run_cv(data, labels, tmp_path / "b")
    assert first.data_hash == second.data_hash
    for a, b in zip(first.out_of_fold, second.out_of_fold, strict=True):
        assert a.slice_probabilities == pytest.approx(b.slice_probabilities, abs=1e-6)
    assert [f.thresholds for f in first.folds] == [f.thresholds for f in second.folds]

    folds = load_fold_models(sorted((tmp_path / "a").glob("fold_*.pt")), device="cpu")
    patient = data[0]
    prediction = score_patient(
        patient.inference_patches(), folds, config=PredictConfig(bf16_on_cpu=False)
    )
    assert 0.0 <= prediction.metastasis_risk_score <= 1.0
    assert len(prediction.mrs_per_fold) == 5
    # The held-out fold model reproduces the out-of-fold prediction of that patient (loaded
    # with BatchNorm folded into the convolutions: float rounding apart).
    own_fold = first.out_of_fold[0].fold
    assert prediction.slice_probabilities[own_fold] == pytest.approx(
        first.out_of_fold[0].slice_probabilities, abs=1e-4
    )
    # The platform's default (bf16 where the CPU has it natively) stays within 0.01.
    default = score_patient(patient.inference_patches(), folds)
    assert default.metastasis_risk_score == pytest.approx(
        prediction.metastasis_risk_score, abs=0.01
    )
    heatmaps = ensemble_gradcam(folds, patient.inference_patches())
    assert heatmaps.shape == (len(patient.selected_slices), 32, 32)
