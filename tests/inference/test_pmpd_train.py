"""Cross-validation: patient-level stratified folds, thresholds from each fold's own patients,
Youden's J by hand, model cards and checkpoints."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from inference.pmpd.model import ModelConfig
from inference.pmpd.predict import load_fold_models
from inference.pmpd.preprocess import PreprocessConfig, PreprocessedPatient
from inference.pmpd.train import (
    TrainConfig,
    choose_fold_thresholds,
    classification_metrics,
    cross_validate,
    epoch_overhead_share,
    safe_auroc,
    thresholds_per_fold,
    torch_threads,
    youden_threshold,
)


def test_youden_on_a_hand_case():
    # At 0.35 every positive is caught and no negative: J = 1.
    assert youden_threshold([0, 0, 1, 1], [0.1, 0.3, 0.35, 0.8]) == (0.35, 1.0)
    # 0.8 (sens 0.5, spec 1) and 0.35 (sens 1, spec 0.5) tie at J = 0.5: the higher wins.
    assert youden_threshold([0, 0, 1, 1], [0.1, 0.4, 0.35, 0.8]) == (0.8, 0.5)
    threshold, j = youden_threshold([1, 1], [0.2, 0.9])
    assert threshold == 0.5 and np.isnan(j)


def test_fold_thresholds_by_hand():
    # Slice level: negatives' slices {0.1, 0.2, 0.3, 0.6}, positives' {0.5, 0.7, 0.8, 0.9}:
    # threshold 0.7 gives sens 3/4, spec 1 (J 0.75); 0.5 gives sens 1, spec 3/4 (J 0.75);
    # the tie goes to the higher, 0.7.
    slices = [
        np.array([0.1, 0.2]),
        np.array([0.3, 0.6]),
        np.array([0.5, 0.7]),
        np.array([0.8, 0.9]),
    ]
    labels = [0, 0, 1, 1]
    thresholds = choose_fold_thresholds(slices, labels)
    assert thresholds.slice_threshold == 0.7
    assert thresholds.slice_youden_j == pytest.approx(0.75)
    # Positive fractions at 0.7: 0, 0, 0.5, 1 -> patient threshold 0.5 separates perfectly.
    assert thresholds.patient_threshold == 0.5
    assert thresholds.patient_youden_j == 1.0


def test_thresholds_depend_only_on_their_own_fold():
    rng = np.random.default_rng(0)
    labels = np.array([0, 1] * 10)
    folds = np.repeat([0, 1], 10)
    slices = [rng.random(4) * 0.5 + 0.4 * y for y in labels]
    before = thresholds_per_fold(slices, labels, folds)
    changed = [s if f == 0 else rng.random(4) for s, f in zip(slices, folds, strict=True)]
    after = thresholds_per_fold(changed, labels, folds)
    assert after[0] == before[0]
    assert after[1] != before[1]


def test_classification_metrics():
    metrics = classification_metrics([1, 1, 0, 0], [True, False, False, True])
    assert metrics == {"accuracy": 0.5, "sensitivity": 0.5, "specificity": 0.5}


def fake_patients(
    n: int, size: int = 32, seed: int = 0
) -> tuple[list[PreprocessedPatient], np.ndarray]:
    """Random patches with a bright blob on positives, 2 slices x 2 angles per patient."""
    rng = np.random.default_rng(seed)
    labels = np.array([1] * (n // 3) + [0] * (n - n // 3))
    rng.shuffle(labels)
    patients = []
    for i, label in enumerate(labels):
        patches = rng.random((4, 2, size, size), dtype=np.float32) * 0.5
        if label:
            patches[:, 0, 8:16, 8:16] += 0.5
        patients.append(
            PreprocessedPatient(
                patches=patches,
                slice_indices=np.array([3, 3, 4, 4]),
                angles_deg=np.array([0.0, 180.0, 0.0, 180.0]),
                selected_slices=(3, 4),
                slice_positions_mm=(6.0, 8.0),
                tumour_areas_mm2=(10.0, 9.0),
                n_tumour_slices=2,
                fewer_than_4_tumour_slices=True,
                input_hash=f"hash{i}",
                config=PreprocessConfig(input_size=size, rotation_angles_deg=(0.0, 180.0)),
            )
        )
    return patients, labels


@pytest.fixture(scope="module")
def small_cv(tmp_path_factory):
    patients, labels = fake_patients(20)
    config = TrainConfig(
        model=ModelConfig(depth=10, input_size=32),
        max_epochs=1,
        batch_size=16,
        device="cpu",
        seed=5,
        num_threads=1,
    )
    calls = []
    output = tmp_path_factory.mktemp("cv")
    result = cross_validate(
        patients,
        labels,
        config,
        lambda fold, epoch, message, percent: calls.append((fold, epoch, message, percent)),
        output_dir=output,
    )
    return result, labels, calls, output


@pytest.mark.slow
def test_no_patient_in_two_folds_and_every_patient_held_out_once(small_cv):
    result, labels, _, _ = small_cv
    held_out = [pid for fold in result.folds for pid in fold.test_ids]
    assert sorted(held_out) == sorted(f"P{i:04d}" for i in range(len(labels)))
    for fold in result.folds:
        train, val, test = set(fold.train_ids), set(fold.validation_ids), set(fold.test_ids)
        assert not (train & val or train & test or val & test)
        assert len(train | val | test) == len(labels)
    assert [p.patient_id for p in result.out_of_fold] == [f"P{i:04d}" for i in range(len(labels))]
    assert all(p.patient_id in result.folds[p.fold].test_ids for p in result.out_of_fold)


@pytest.mark.slow
def test_folds_are_stratified(small_cv):
    result, labels, _, _ = small_cv
    positives = [sum(labels[int(pid[1:])] for pid in fold.test_ids) for fold in result.folds]
    assert max(positives) - min(positives) <= 1
    assert sum(positives) == labels.sum()


@pytest.mark.slow
def test_each_fold_threshold_comes_from_its_own_held_out_predictions(small_cv):
    result, labels, _, _ = small_cv
    for fold in result.folds:
        own = [p for p in result.out_of_fold if p.fold == fold.fold]
        expected = choose_fold_thresholds(
            [np.array(p.slice_probabilities) for p in own], [p.label for p in own]
        )
        assert fold.thresholds == expected
        for p in own:
            assert p.predicted_metastasis == (p.positive_fraction >= expected.patient_threshold)
            assert p.metastasis_risk_score == pytest.approx(np.mean(p.slice_probabilities))
            assert len(p.slice_probabilities) == 2  # un-rotated patches only


@pytest.mark.slow
def test_progress_is_reported_per_fold_and_epoch(small_cv):
    result, _, calls, _ = small_cv
    assert {c[0] for c in calls} == set(range(5))
    percents = [c[3] for c in calls]
    assert percents == sorted(percents)
    assert percents[-1] == pytest.approx(100.0)
    assert any("epoch 1" in c[2] for c in calls)
    assert set(result.metrics) >= {"slice_auroc", "patient_auroc_mrs", "accuracy"}


@pytest.mark.slow
def test_checkpoints_and_model_cards(small_cv):
    result, _, _, output = small_cv
    for fold in result.folds:
        card = json.loads((output / f"fold_{fold.fold}.json").read_text())
        assert card["thresholds"]["slice_threshold"] == fold.thresholds.slice_threshold
        assert card["data_hash"] == result.data_hash
        assert card["code_version"] == result.code_version
        assert card["model_config"]["depth"] == 10
        assert card["preprocess_config"]["input_size"] == 32
        assert card["test_ids"] == fold.test_ids
        checkpoint = torch.load(output / f"fold_{fold.fold}.pt", weights_only=True)
        assert checkpoint["model_card"]["fold"] == fold.fold
    models = load_fold_models(sorted(output.glob("fold_*.pt")), device="cpu")
    assert len(models) == 5
    assert models[2].thresholds == result.folds[2].thresholds
    frame = result.to_dataframe()
    assert len(frame) == 20 and "site_liver" in frame.columns


def test_mismatched_inputs_are_refused():
    patients, labels = fake_patients(10)
    with pytest.raises(ValueError, match="labels"):
        cross_validate(patients, labels[:-1], TrainConfig(device="cpu"))
    with pytest.raises(ValueError, match="expects 224x224"):
        cross_validate(patients, labels, TrainConfig(device="cpu"))


def test_thread_count_is_restored_after_cross_validation():
    before = torch.get_num_threads()
    with torch_threads(1):
        assert torch.get_num_threads() == 1
    assert torch.get_num_threads() == before


def test_epoch_scores_of_each_early_stopping_metric():
    from inference.pmpd.train import epoch_score

    first = {"epoch": 1, "validation_loss": 0.50, "validation_slice_auroc": 0.70}
    second = {"epoch": 2, "validation_loss": 0.60, "validation_slice_auroc": 0.80}
    undefined = {"epoch": 3, "validation_loss": 0.40, "validation_slice_auroc": float("nan")}
    assert epoch_score(first, "loss") > epoch_score(second, "loss")
    assert epoch_score(second, "auroc") > epoch_score(first, "auroc")
    # An AUROC of one class only counts as 0.5; a tie goes to the lower loss.
    assert epoch_score(undefined, "auroc") == (0.5, -0.4)
    tie = {**second, "validation_loss": 0.55}
    assert epoch_score(tie, "auroc") > epoch_score(second, "auroc")
    # Without early stopping the last epoch is always the best.
    assert epoch_score(undefined, "none") > epoch_score(second, "none") > epoch_score(first, "none")
    with pytest.raises(ValueError, match="early_stopping_metric"):
        TrainConfig(early_stopping_metric="sometimes")


def test_the_engine_and_the_dashboards_share_one_youden_and_auroc():
    """One implementation (analytics.stats.classification) serves the training's thresholds and
    the dashboards; both agree with scikit-learn's AUROC, ties included."""
    from sklearn.metrics import roc_auc_score

    from analytics.stats.classification import delong_auroc
    from analytics.stats.classification import youden_threshold as dashboard_youden

    rng = np.random.default_rng(7)
    labels = rng.integers(0, 2, 300)
    scores = np.round(rng.random(300) * 0.6 + 0.3 * labels, 2)  # rounded: many ties
    threshold, j = youden_threshold(labels, scores)
    assert (threshold, j) == (
        dashboard_youden(labels, scores).threshold,
        dashboard_youden(labels, scores).youden_j,
    )
    assert safe_auroc(labels, scores) == pytest.approx(roc_auc_score(labels, scores), abs=1e-12)
    assert safe_auroc(labels, scores) == pytest.approx(
        delong_auroc(labels, scores).auroc, abs=1e-12
    )


@pytest.mark.slow
def test_the_epoch_overhead_beyond_the_training_steps_stays_under_a_fifth(small_cv):
    """Validation, keeping the best weights and gathering batches take under 20% of an epoch
    (issue 14, item 3): a ratio within one run, so a busy machine slows both sides alike."""
    result, *_ = small_cv
    history = [record for fold in result.folds for record in fold.history]
    for record in history:
        assert 0 < record["train_step_seconds"] < record["epoch_seconds"]
    share = epoch_overhead_share(history)
    print(f"per-epoch overhead beyond forward/backward: {share:.1%} of the epoch")
    assert 0 < share < 0.20
