"""Five-fold cross-validation of PMPDNet with the paper's patient-level decision rule.

The split is by patient and stratified by the metastasis label; each fold keeps an inner
validation split of its training patients for early stopping; thresholds are chosen on the
fold's own held-out patients only (slice threshold by Youden's J on its slices, then the
patient threshold by Youden's J on its patients' positive fractions); every patient gets an
out-of-fold prediction from the one model that never saw it.

Reading the metrics: the MRS AUROC is threshold-free. The positive-fraction AUROC and the
calls are optimistic by construction, because the paper picks the slice threshold on the very
fold it then scores: on the phantom with shuffled labels the MRS AUROC stayed at 0.56-0.59 while
the positive-fraction AUROC reached 0.68-0.72 (tests/bench/bench_train_cpu.py).
"""

from __future__ import annotations

import contextlib
import copy
import functools
import hashlib
import json
import math
import subprocess
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from numpy.typing import ArrayLike
from sklearn.model_selection import StratifiedKFold, train_test_split
from torch.nn import functional

from analytics.stats import NotComputable, classification
from inference.pmpd.model import (
    SITE_NAMES,
    ModelConfig,
    PMPDNet,
    autocast_context,
    build_model,
    prepare_model,
    select_device,
)
from inference.pmpd.predict import (
    FoldThresholds,
    PredictConfig,
    positive_fraction,
    predict_slices,
)

if TYPE_CHECKING:
    from inference.pmpd.preprocess import PreprocessedPatient

ProgressCallback = Callable[[int, int, str, float], None]


@dataclass(frozen=True)
class TrainConfig:
    """Everything that decides a cross-validation run; stored in each fold's model card.

    Attributes:
        model: the architecture.
        n_folds: cross-validation folds (paper: 5).
        seed: seeds the split (StratifiedKFold), weight initialisation and batch order.
        max_epochs: upper bound on epochs per fold; early stopping usually ends sooner.
        batch_size: patches per optimisation step.
        learning_rate, weight_decay: AdamW's.
        lr_schedule: "cosine" (decay to 0 over max_epochs, per step) or "constant".
        inner_validation_fraction: share of each fold's training patients held back, stratified,
            for early stopping. Open point: the paper does not say how it stopped.
        early_stopping_patience: epochs without a better validation score before stopping; the
            weights of the best epoch are kept.
        early_stopping_metric: the score of an epoch on the inner validation patients:
            "loss" (binary cross-entropy of the un-rotated patches, lower is better) or "auroc"
            (slice-level AUROC, higher is better; ties go to the lower loss), or "none" (no
            early stopping: every epoch runs and the last one's weights are kept, which with
            the cosine schedule is the end of the decay). Open point: the paper does not say. With few validation patients the loss often rises from epoch
            one as the class-weighted model grows confident while its ranking still improves,
            so small cohorts stop too early on "loss".
        site_loss_weight: weight of the site head's loss added to the binary loss.
        balance_classes: weight positive patches by n_negative / n_positive of the training
            patients in the binary loss (about 2.2 at the paper's 31.5% prevalence).
        pretrained_weights: a local torchvision-style ResNet file, or None to train from scratch.
        device: "auto" picks CUDA when present (bf16 autocast, channels_last), else CPU.
        bf16_on_cpu: bf16 autocast on CPU as well (off: slower without AVX512-BF16/AMX).
        channels_last: channels_last memory format for model and batches.
        eval_batch_size: patches per forward pass when scoring validation and held-out patients.
        num_threads: torch CPU threads (None: torch's default).
    """

    model: ModelConfig = field(default_factory=ModelConfig)
    n_folds: int = 5
    seed: int = 0
    max_epochs: int = 30
    batch_size: int = 64
    learning_rate: float = 3e-4
    weight_decay: float = 1e-4
    lr_schedule: str = "cosine"
    inner_validation_fraction: float = 0.2
    early_stopping_patience: int = 6
    early_stopping_metric: str = "loss"
    site_loss_weight: float = 0.3
    balance_classes: bool = True
    pretrained_weights: str | None = None
    device: str = "auto"
    bf16_on_cpu: bool = False
    channels_last: bool = True
    eval_batch_size: int = 256
    num_threads: int | None = None

    def __post_init__(self) -> None:
        if self.lr_schedule not in {"cosine", "constant"}:
            raise ValueError("lr_schedule must be 'cosine' or 'constant'")
        if self.early_stopping_metric not in {"loss", "auroc", "none"}:
            raise ValueError("early_stopping_metric must be 'loss', 'auroc' or 'none'")
        if self.n_folds < 2 or not 0.0 < self.inner_validation_fraction < 0.5:
            raise ValueError("n_folds >= 2 and 0 < inner_validation_fraction < 0.5 required")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class TrainingBatch:
    """One optimisation step's inputs, already on the training device.

    ``site_mask`` is 0 where a site is unknown for that patch's patient (e.g. site "unknown"),
    so the site loss only uses the sites that were recorded.
    """

    images: torch.Tensor  # [b, 2, H, W]
    metastasis: torch.Tensor  # [b] 0/1
    site_targets: torch.Tensor  # [b, n_sites] 0/1
    site_mask: torch.Tensor  # [b, n_sites] 0/1


def pmpd_loss(
    output: Any,
    batch: TrainingBatch,
    *,
    site_loss_weight: float,
    positive_class_weight: float = 1.0,
) -> torch.Tensor:
    """Binary cross-entropy of the metastasis logit plus ``site_loss_weight`` times the masked
    multi-label binary cross-entropy of the site logits (computed in fp32)."""
    binary = functional.binary_cross_entropy_with_logits(
        output.metastasis_logit.float(),
        batch.metastasis,
        pos_weight=torch.tensor(positive_class_weight, device=batch.metastasis.device),
    )
    if site_loss_weight == 0.0:
        return binary
    per_site = functional.binary_cross_entropy_with_logits(
        output.site_logits.float(), batch.site_targets, reduction="none"
    )
    known = batch.site_mask.sum().clamp_min(1.0)
    return binary + site_loss_weight * (per_site * batch.site_mask).sum() / known


def train_step(
    model: PMPDNet,
    optimizer: torch.optim.Optimizer,
    batch: TrainingBatch,
    *,
    site_loss_weight: float,
    positive_class_weight: float = 1.0,
    bf16_on_cpu: bool = False,
    mixed_precision: bool = True,
) -> torch.Tensor:
    """One AdamW step on one batch (bf16 autocast on CUDA unless ``mixed_precision`` is False);
    returns the detached loss.

    The loss stays a device tensor: reading it (``float``) would make the host wait for the
    GPU after every step; the epoch loop reads the mean once. The GPU benchmark times exactly
    this function.
    """
    model.train()
    optimizer.zero_grad(set_to_none=True)
    with autocast_context(batch.images.device, bf16_on_cpu=bf16_on_cpu, enabled=mixed_precision):
        output = model(batch.images)
    loss = pmpd_loss(
        output,
        batch,
        site_loss_weight=site_loss_weight,
        positive_class_weight=positive_class_weight,
    )
    loss.backward()
    optimizer.step()
    return loss.detach()


def make_optimizer(model: PMPDNet, config: TrainConfig) -> torch.optim.AdamW:
    """AdamW with the configured learning rate and weight decay, as one fused kernel per step
    (CUDA and CPU alike: on CPU it measured 5x faster than the per-tensor loop)."""
    return torch.optim.AdamW(
        model.parameters(), lr=config.learning_rate, weight_decay=config.weight_decay, fused=True
    )


# ----------------------------------------------------------------------------------------------
# Thresholds and metrics


def youden_threshold(labels: ArrayLike, scores: ArrayLike) -> tuple[float, float]:
    """The score threshold maximising Youden's J = sensitivity + specificity - 1, and J.

    The analytics' own Youden (``analytics.stats.classification``: one implementation for the
    engine and the dashboards). A case is positive when its score is at or above the threshold;
    candidates are the observed scores; among equal J the highest threshold wins (fewer false
    alarms). With one class only, J is undefined: returns (0.5, nan).
    """
    found = classification.youden_threshold(np.asarray(labels, dtype=int), scores)
    if isinstance(found, NotComputable):
        return 0.5, float("nan")
    return found.threshold, found.youden_j


def choose_fold_thresholds(
    slice_probabilities: Sequence[np.ndarray], labels: ArrayLike
) -> FoldThresholds:
    """A fold's thresholds from its own held-out patients, as in the paper.

    The slice threshold maximises J over all their slices (each slice labelled with its
    patient's label); each patient's positive fraction is the share of its slices at or above
    it; the patient threshold maximises J over those fractions.
    """
    patient_labels = np.asarray(labels, dtype=int)
    slice_labels = np.concatenate(
        [np.full(len(p), y) for p, y in zip(slice_probabilities, patient_labels, strict=True)]
    )
    slice_scores = np.concatenate([np.asarray(p, dtype=float) for p in slice_probabilities])
    slice_threshold, slice_j = youden_threshold(slice_labels, slice_scores)
    fractions = [positive_fraction(p, slice_threshold) for p in slice_probabilities]
    patient_threshold, patient_j = youden_threshold(patient_labels, fractions)
    return FoldThresholds(
        slice_threshold=slice_threshold,
        patient_threshold=patient_threshold,
        slice_youden_j=slice_j,
        patient_youden_j=patient_j,
    )


def thresholds_per_fold(
    slice_probabilities: Sequence[np.ndarray],
    labels: ArrayLike,
    fold_of_patient: ArrayLike,
) -> dict[int, FoldThresholds]:
    """Thresholds of every fold, each from the out-of-fold predictions of its own patients."""
    folds = np.asarray(fold_of_patient)
    patient_labels = np.asarray(labels)
    return {
        int(fold): choose_fold_thresholds(
            [slice_probabilities[int(i)] for i in np.flatnonzero(folds == fold)],
            patient_labels[folds == fold],
        )
        for fold in np.unique(folds)
    }


def safe_auroc(labels: ArrayLike, scores: ArrayLike) -> float:
    """AUROC (the analytics' ROC curve), or nan when only one class is present."""
    curve = classification.roc_curve(np.asarray(labels, dtype=int), scores, drop_intermediate=False)
    return float("nan") if isinstance(curve, NotComputable) else float(curve.auroc)


def classification_metrics(labels: ArrayLike, predicted: ArrayLike) -> dict[str, float]:
    """Accuracy, sensitivity and specificity of yes/no calls."""
    truth = np.asarray(labels, dtype=bool)
    called = np.asarray(predicted, dtype=bool)
    positives, negatives = truth.sum(), (~truth).sum()
    return {
        "accuracy": float(np.mean(truth == called)) if truth.size else float("nan"),
        "sensitivity": float((truth & called).sum() / positives) if positives else float("nan"),
        "specificity": float((~truth & ~called).sum() / negatives) if negatives else float("nan"),
    }


# ----------------------------------------------------------------------------------------------
# Results


@dataclass
class OutOfFoldPrediction:
    """A patient's prediction by the fold model that did not train on it."""

    patient_id: str
    fold: int
    label: int
    slice_probabilities: list[float]
    metastasis_risk_score: float
    positive_fraction: float
    predicted_metastasis: bool
    site_probabilities: dict[str, float]


@dataclass
class FoldResult:
    """One fold: who was where, how training went, its thresholds, metrics and checkpoint."""

    fold: int
    train_ids: list[str]
    validation_ids: list[str]
    test_ids: list[str]
    best_epoch: int
    epochs_run: int
    history: list[dict[str, float]]
    thresholds: FoldThresholds
    metrics: dict[str, float]
    model_card: dict[str, Any]
    checkpoint_path: str | None = None


@dataclass
class CrossValidationResult:
    """All folds, every patient's out-of-fold prediction and the pooled metrics."""

    folds: list[FoldResult]
    out_of_fold: list[OutOfFoldPrediction]
    metrics: dict[str, float]
    data_hash: str
    code_version: str
    config: dict[str, Any]
    seconds: float = 0.0

    def to_dataframe(self) -> Any:
        """Out-of-fold predictions as a pandas DataFrame (one row per patient)."""
        import pandas as pd

        rows = []
        for p in self.out_of_fold:
            row = {k: v for k, v in asdict(p).items() if k not in {"site_probabilities"}}
            row.update({f"site_{k}": v for k, v in p.site_probabilities.items()})
            rows.append(row)
        return pd.DataFrame(rows)

    def __str__(self) -> str:
        lines = [f"{len(self.folds)}-fold cross-validation, {len(self.out_of_fold)} patients"]
        lines += [f"  {key:<32} {value:.3f}" for key, value in self.metrics.items()]
        return "\n".join(lines)


def _prediction_metrics(predictions: Sequence[OutOfFoldPrediction]) -> dict[str, float]:
    """Slice and patient AUROC and the calls' accuracy/sensitivity/specificity."""
    labels = np.array([p.label for p in predictions])
    slice_labels = np.concatenate(
        [np.full(len(p.slice_probabilities), p.label) for p in predictions]
    )
    return {
        "slice_auroc": safe_auroc(
            slice_labels, np.concatenate([p.slice_probabilities for p in predictions])
        ),
        "patient_auroc_mrs": safe_auroc(labels, [p.metastasis_risk_score for p in predictions]),
        "patient_auroc_positive_fraction": safe_auroc(
            labels, [p.positive_fraction for p in predictions]
        ),
        **classification_metrics(labels, [p.predicted_metastasis for p in predictions]),
    }


def code_version() -> str:
    """``git describe`` of the code when it is a git checkout with commits, else the package
    version: every checkpoint says which code produced it."""
    here = Path(__file__).resolve().parent
    try:
        described = subprocess.run(
            ["git", "describe", "--always", "--dirty", "--tags"],
            cwd=here,
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        ).stdout.strip()
        if described:
            return f"git:{described}"
    except (OSError, subprocess.SubprocessError):
        pass
    from inference.pmpd import __version__

    return f"pmpd:{__version__}"


def data_hash(patient_ids: Sequence[str], input_hashes: Sequence[str], labels: ArrayLike) -> str:
    """SHA-256 of the training set (ids, input hashes, labels, in the order that seeds the split)."""
    digest = hashlib.sha256()
    outcomes = np.asarray(labels, dtype=int).tolist()
    for patient_id, content, label in zip(patient_ids, input_hashes, outcomes, strict=True):
        digest.update(f"{patient_id}|{content}|{int(label)}\n".encode())
    return digest.hexdigest()


# ----------------------------------------------------------------------------------------------
# Cross-validation


def _site_arrays(
    labels: np.ndarray, site_labels: np.ndarray | None
) -> tuple[np.ndarray, np.ndarray]:
    """Site targets and mask per patient. Without site labels only "none" is known (from the
    binary label); NaN entries in ``site_labels`` are unknown sites."""
    n = len(labels)
    if site_labels is None:
        targets = np.zeros((n, len(SITE_NAMES)), dtype=np.float32)
        targets[:, 0] = 1.0 - labels
        mask = np.zeros_like(targets)
        mask[:, 0] = 1.0
        return targets, mask
    site_labels = np.asarray(site_labels, dtype=np.float32)
    if site_labels.shape != (n, len(SITE_NAMES)):
        raise ValueError(f"site_labels must be [n_patients, {len(SITE_NAMES)}] ({SITE_NAMES})")
    mask = (~np.isnan(site_labels)).astype(np.float32)
    return np.nan_to_num(site_labels, nan=0.0), mask


def _stack_patches(
    patients: Sequence[PreprocessedPatient], indices: ArrayLike, *, all_angles: bool
) -> tuple[np.ndarray, np.ndarray]:
    """Patches of the given patients and, for each patch, its patient's index."""
    stacks, owners = [], []
    for index in np.asarray(indices, dtype=int).tolist():
        patches = patients[index].patches if all_angles else patients[index].inference_patches()
        stacks.append(patches)
        owners.append(np.full(len(patches), index))
    return np.concatenate(stacks), np.concatenate(owners)


def fold_splits(
    labels: np.ndarray, config: TrainConfig
) -> list[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """(train, inner validation, held-out) patient indices of each fold.

    Held-out folds come from StratifiedKFold (shuffled, seeded) over patients, so no patient is
    in two of them and each has the cohort's share of metastatic patients; the inner validation
    patients are a stratified, seeded share of the fold's training patients.
    """
    labels = np.asarray(labels)
    splitter = StratifiedKFold(n_splits=config.n_folds, shuffle=True, random_state=config.seed)
    splits = []
    for fold, (train_all, test_idx) in enumerate(splitter.split(np.zeros(len(labels)), labels)):
        train_idx, val_idx = train_test_split(
            train_all,
            test_size=config.inner_validation_fraction,
            stratify=labels[train_all],
            random_state=config.seed + fold,
        )
        splits.append((np.sort(train_idx), np.sort(val_idx), np.sort(test_idx)))
    return splits


def _out_of_fold_predictions(
    ids: Sequence[str],
    labels: np.ndarray,
    slice_probabilities: Sequence[np.ndarray],
    site_probabilities: Sequence[np.ndarray],
    fold_of_patient: np.ndarray,
    fold_thresholds: dict[int, FoldThresholds],
) -> list[OutOfFoldPrediction]:
    """Each patient's prediction with the thresholds of the fold that held it out."""
    predictions = []
    for i, patient_id in enumerate(ids):
        fold = int(fold_of_patient[i])
        thresholds = fold_thresholds[fold]
        fraction = positive_fraction(slice_probabilities[i], thresholds.slice_threshold)
        predictions.append(
            OutOfFoldPrediction(
                patient_id=patient_id,
                fold=fold,
                label=int(labels[i]),
                slice_probabilities=slice_probabilities[i].tolist(),
                metastasis_risk_score=float(slice_probabilities[i].mean()),
                positive_fraction=fraction,
                predicted_metastasis=bool(fraction >= thresholds.patient_threshold),
                site_probabilities={
                    name: float(v)
                    for name, v in zip(SITE_NAMES, site_probabilities[i].mean(axis=0), strict=False)
                },
            )
        )
    return predictions


def _train_fold(
    patients: Sequence[PreprocessedPatient],
    labels: np.ndarray,
    site_targets: np.ndarray,
    site_mask: np.ndarray,
    train_idx: np.ndarray,
    val_idx: np.ndarray,
    *,
    fold: int,
    config: TrainConfig,
    device: torch.device,
    report: Callable[[int, str, float], None],
) -> tuple[PMPDNet, list[dict[str, float]], int]:
    torch.manual_seed(config.seed * 1000 + fold)
    model = build_model(config.model, pretrained_weights=config.pretrained_weights)
    model = prepare_model(model, device, channels_last=config.channels_last)
    optimizer = make_optimizer(model, config)
    memory_format = torch.channels_last if config.channels_last else torch.contiguous_format

    images, owners = _stack_patches(patients, train_idx, all_angles=True)
    # Stored NCHW and made channels_last per batch: gathering a batch out of a channels_last
    # store measured ~10% slower per step on an H100.
    train_images = torch.from_numpy(images).to(device)
    owners_t = torch.from_numpy(owners).to(device)
    labels_t = torch.from_numpy(labels.astype(np.float32)).to(device)
    sites_t = torch.from_numpy(site_targets).to(device)
    site_mask_t = torch.from_numpy(site_mask).to(device)
    n_pos = labels[train_idx].sum()
    positive_class_weight = (
        float((len(train_idx) - n_pos) / n_pos) if config.balance_classes and n_pos else 1.0
    )

    val_images, val_owners = _stack_patches(patients, val_idx, all_angles=False)
    val_labels = labels[val_owners]
    predict_config = PredictConfig(
        channels_last=config.channels_last,
        bf16_on_cpu=config.bf16_on_cpu,
        batch_size=config.eval_batch_size,
    )

    steps_per_epoch = math.ceil(len(train_images) / config.batch_size)
    scheduler = None
    if config.lr_schedule == "cosine":
        scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(
            optimizer, T_max=steps_per_epoch * config.max_epochs
        )
    generator = torch.Generator().manual_seed(config.seed * 1000 + fold)
    history: list[dict[str, float]] = []
    best_score, best_epoch, best_state = (
        (-math.inf, -math.inf),
        0,
        copy.deepcopy(model.state_dict()),
    )
    for epoch in range(1, config.max_epochs + 1):
        epoch_started = time.perf_counter()
        step_seconds = 0.0
        order = torch.randperm(len(train_images), generator=generator).to(device)
        losses = []
        for start in range(0, len(order), config.batch_size):
            index = order[start : start + config.batch_size]
            owner = owners_t[index]
            batch = TrainingBatch(
                images=train_images[index].contiguous(memory_format=memory_format),
                metastasis=labels_t[owner],
                site_targets=sites_t[owner],
                site_mask=site_mask_t[owner],
            )
            step_started = time.perf_counter()
            losses.append(
                train_step(
                    model,
                    optimizer,
                    batch,
                    site_loss_weight=config.site_loss_weight,
                    positive_class_weight=positive_class_weight,
                    bf16_on_cpu=config.bf16_on_cpu,
                )
            )
            step_seconds += time.perf_counter() - step_started
            if scheduler is not None:
                scheduler.step()
        probabilities = predict_slices(
            model, val_images, device=device, config=predict_config
        ).metastasis_probability
        clipped = np.clip(probabilities, 1e-7, 1 - 1e-7)
        # With the training loss's class weighting: an unweighted validation loss favours the
        # under-confident first epochs of a class-weighted model (it stopped most folds at
        # epoch one on a 120-patient phantom cohort).
        val_loss = float(
            -np.mean(
                positive_class_weight * val_labels * np.log(clipped)
                + (1 - val_labels) * np.log(1 - clipped)
            )
        )
        train_loss = float(torch.stack(losses).mean())
        history.append(
            {
                "epoch": epoch,
                "train_loss": train_loss,
                "validation_loss": val_loss,
                "validation_slice_auroc": safe_auroc(val_labels, probabilities),
            }
        )
        score = epoch_score(history[-1], config.early_stopping_metric)
        if score > best_score:
            best_score, best_epoch = score, epoch
            best_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
        history[-1]["epoch_seconds"] = time.perf_counter() - epoch_started
        history[-1]["train_step_seconds"] = step_seconds
        report(
            epoch,
            f"fold {fold + 1}/{config.n_folds} epoch {epoch}: train loss {train_loss:.3f}, "
            f"validation loss {val_loss:.3f}",
            epoch / config.max_epochs,
        )
        if epoch - best_epoch >= config.early_stopping_patience:
            break
    model.load_state_dict(best_state)
    return model, history, best_epoch


def epoch_overhead_share(history: Sequence[dict[str, float]]) -> float:
    """The share of the epochs' time spent beyond the training steps (forward, backward and
    optimiser step): gathering batches, validation, keeping the best weights, the scheduler.
    Exact on CPU; on CUDA the steps run asynchronously, so part of their time is counted as
    overhead (an upper bound)."""
    total = sum(record["epoch_seconds"] for record in history)
    steps = sum(record["train_step_seconds"] for record in history)
    return (total - steps) / total if total > 0 else 0.0


def epoch_score(record: dict[str, float], metric: str) -> tuple[float, float]:
    """An epoch's early-stopping score from its history record, higher is better: the negated
    validation loss for "loss"; the epoch number for "none" (the last epoch is the best);
    (slice AUROC, negated loss) for "auroc", an undefined AUROC
    (one class only) counting as 0.5. A better epoch must beat the best by more than 1e-6."""
    loss = -round(record["validation_loss"], 6)
    if metric == "none":
        return (float(record["epoch"]), 0.0)
    if metric == "loss":
        return (loss, 0.0)
    auroc = record["validation_slice_auroc"]
    auroc = 0.5 if auroc is None or math.isnan(auroc) else auroc
    return (round(auroc, 6), loss)


@contextlib.contextmanager
def torch_threads(count: int | None) -> Iterator[None]:
    """Use ``count`` torch CPU threads inside the block and restore the previous count after
    (None leaves it alone). One thread avoids OpenMP oversubscription when other work shares
    the cores: a training step was measured up to 10x slower with 2 threads on 2 busy cores."""
    before = torch.get_num_threads()
    if count:
        torch.set_num_threads(count)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def cross_validate(
    patients_data: Sequence[PreprocessedPatient],
    labels: Sequence[int],
    config: TrainConfig | None = None,
    progress_callback: ProgressCallback | None = None,
    *,
    patient_ids: Sequence[str] | None = None,
    site_labels: np.ndarray | None = None,
    output_dir: str | Path | None = None,
    preprocess_config: dict[str, Any] | None = None,
) -> CrossValidationResult:
    """Run the paper's 5-fold patient-level cross-validation.

    Args:
        patients_data: one ``PreprocessedPatient`` per patient, made with ``augment=True``
            (training uses all rotated patches; validation and held-out scoring the un-rotated).
        labels: metastasis at diagnosis, 1 or 0, per patient.
        config: training configuration.
        progress_callback: called as (fold, epoch, message, percent 0-100), e.g. by a Celery
            task to update its job row.
        patient_ids: study ids (default "P0000", "P0001", ...).
        site_labels: optional [n, 4] 0/1 (NaN = unknown) for none, liver, lung, peritoneum.
        output_dir: where ``fold_K.pt`` and ``fold_K.json`` (the model card) are written.
        preprocess_config: the pre-processing configuration, recorded in the model cards so
            inference can check it uses the same (default: the first patient's).
    """
    config = config or TrainConfig()
    started = time.perf_counter()
    labels_arr = np.asarray(labels, dtype=int)
    n = len(patients_data)
    if len(labels_arr) != n:
        raise ValueError(f"{n} patients but {len(labels_arr)} labels")
    if set(np.unique(labels_arr)) - {0, 1}:
        raise ValueError("labels must be 0 (no metastasis) or 1 (metastasis)")
    ids = list(patient_ids) if patient_ids is not None else [f"P{i:04d}" for i in range(n)]
    size = config.model.input_size
    for patient_id, patient in zip(ids, patients_data, strict=True):
        if patient.patches.shape[-2:] != (size, size):
            raise ValueError(
                f"{patient_id}: patches of {patient.patches.shape[-2:]} but the model expects "
                f"{size}x{size}"
            )
    with torch_threads(config.num_threads):
        device = select_device(config.device)
        site_targets, site_mask = _site_arrays(labels_arr, site_labels)
        if preprocess_config is None:
            preprocess_config = patients_data[0].config.to_dict()
        dataset_hash = data_hash(ids, [p.input_hash for p in patients_data], labels_arr)
        version = code_version()
        output = Path(output_dir) if output_dir is not None else None
        if output is not None:
            output.mkdir(parents=True, exist_ok=True)

        def notify(fold: int, epoch: int, message: str, fold_fraction: float) -> None:
            if progress_callback is not None:
                percent = 100.0 * (fold + min(fold_fraction, 1.0)) / config.n_folds
                progress_callback(fold, epoch, message, percent)

        predict_config = PredictConfig(
            channels_last=config.channels_last,
            bf16_on_cpu=config.bf16_on_cpu,
            batch_size=config.eval_batch_size,
        )
        splits = fold_splits(labels_arr, config)
        trained = []
        slice_probabilities: list[np.ndarray] = [np.empty(0)] * n
        site_probabilities: list[np.ndarray] = [np.empty((0, len(SITE_NAMES)))] * n
        fold_of_patient = np.full(n, -1)
        for fold, (train_idx, val_idx, test_idx) in enumerate(splits):
            notify(fold, 0, f"fold {fold + 1}/{config.n_folds}: training", 0.0)
            model, history, best_epoch = _train_fold(
                patients_data,
                labels_arr,
                site_targets,
                site_mask,
                train_idx,
                val_idx,
                fold=fold,
                config=config,
                device=device,
                report=functools.partial(notify, fold),
            )
            for i in test_idx:
                prediction = predict_slices(
                    model, patients_data[i].inference_patches(), config=predict_config
                )
                slice_probabilities[i] = prediction.metastasis_probability
                site_probabilities[i] = prediction.site_probabilities
                fold_of_patient[i] = fold
            state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
            trained.append((state, history, best_epoch))
            del model
            notify(fold, len(history), f"fold {fold + 1}/{config.n_folds} trained", 1.0)

        # Thresholds only now, each from its own fold's held-out patients.
        fold_thresholds = thresholds_per_fold(slice_probabilities, labels_arr, fold_of_patient)
        oof = _out_of_fold_predictions(
            ids,
            labels_arr,
            slice_probabilities,
            site_probabilities,
            fold_of_patient,
            fold_thresholds,
        )

        fold_results: list[FoldResult] = []
        for fold, ((train_idx, val_idx, test_idx), (state, history, best_epoch)) in enumerate(
            zip(splits, trained, strict=True)
        ):
            thresholds = fold_thresholds[fold]
            metrics = _prediction_metrics([oof[i] for i in test_idx])
            train_ids = [ids[i] for i in train_idx]
            validation_ids = [ids[i] for i in val_idx]
            test_ids = [ids[i] for i in test_idx]
            card = {
                "model": "PMPDNet",
                "fold": fold,
                "n_folds": config.n_folds,
                "model_config": config.model.to_dict(),
                "train_config": config.to_dict(),
                "preprocess_config": preprocess_config,
                "data_hash": dataset_hash,
                "code_version": version,
                "thresholds": thresholds.to_dict(),
                "metrics": metrics,
                "best_epoch": best_epoch,
                "train_ids": train_ids,
                "validation_ids": validation_ids,
                "test_ids": test_ids,
                "site_names": list(SITE_NAMES),
                "intended_use": "Research use only: a second reader, never a replacement.",
            }
            checkpoint_path = None
            if output is not None:
                checkpoint_path = str(output / f"fold_{fold}.pt")
                torch.save({"state_dict": state, "model_card": card}, checkpoint_path)
                (output / f"fold_{fold}.json").write_text(json.dumps(card, indent=2))
            fold_results.append(
                FoldResult(
                    fold=fold,
                    train_ids=train_ids,
                    validation_ids=validation_ids,
                    test_ids=test_ids,
                    best_epoch=best_epoch,
                    epochs_run=len(history),
                    history=history,
                    thresholds=thresholds,
                    metrics=metrics,
                    model_card=card,
                    checkpoint_path=checkpoint_path,
                )
            )

        fold_aurocs = np.array([f.metrics["patient_auroc_mrs"] for f in fold_results])
        pooled = {
            **_prediction_metrics(oof),
            "fold_patient_auroc_mean": float(np.nanmean(fold_aurocs)),
            "fold_patient_auroc_std": float(np.nanstd(fold_aurocs, ddof=1)),
        }
        return CrossValidationResult(
            folds=fold_results,
            out_of_fold=oof,
            metrics=pooled,
            data_hash=dataset_hash,
            code_version=version,
            config=config.to_dict(),
            seconds=time.perf_counter() - started,
        )
