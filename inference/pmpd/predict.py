"""Scoring a patient with the cross-validation fold models (PMPD_METHOD.md, "Training and
patient-level decision").

Per fold: slice probabilities of the patient's un-rotated patches, the fold's Metastasis Risk
Score (MRS, the mean slice probability), the positive fraction (share of slices at or above the
fold's slice threshold) and the fold's call (fraction at or above its patient threshold). Over
folds: the MRS reported is the mean of the fold MRS, with their spread as the uncertainty.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from inference.pmpd.model import (
    SITE_NAMES,
    ModelConfig,
    PMPDNet,
    autocast_context,
    fuse_batchnorm,
    prepare_model,
    select_device,
)


@dataclass(frozen=True)
class FoldThresholds:
    """Decision thresholds of one fold, chosen by Youden's J on that fold's held-out patients.

    ``slice_threshold`` turns a slice probability into a positive slice; ``patient_threshold``
    turns a patient's positive fraction into a positive patient.
    """

    slice_threshold: float
    patient_threshold: float
    slice_youden_j: float = float("nan")
    patient_youden_j: float = float("nan")

    def to_dict(self) -> dict[str, float]:
        return asdict(self)


@dataclass(frozen=True)
class PredictConfig:
    """How scoring runs.

    Attributes:
        device: "auto" (CUDA when present), "cpu" or "cuda".
        channels_last: channels_last memory format (faster convolutions on GPU and oneDNN).
        bf16_on_cpu: bf16 autocast on CPU: None (default) uses it where the CPU computes bf16
            natively (AVX512-BF16 or AMX: 1.7x faster, MRS within 0.001 of fp32 in
            tests/bench/bench_inference_cpu.py) and not elsewhere (slower than fp32 on an AVX2
            CPU); True or False force it. CUDA always uses bf16.
        patient_call_rule: "fold_majority" (default) calls a patient positive when at least
            half of the folds do, each fold comparing its own positive fraction with its own
            patient threshold; "mean_fraction" compares the mean positive fraction with the
            mean patient threshold. Open point: the paper reports folds separately.
        batch_size: patches per forward pass (a patient's 4 patches fit in one).
    """

    device: str = "auto"
    channels_last: bool = True
    bf16_on_cpu: bool | None = None
    patient_call_rule: str = "fold_majority"
    batch_size: int = 256

    def __post_init__(self) -> None:
        if self.patient_call_rule not in {"fold_majority", "mean_fraction"}:
            raise ValueError("patient_call_rule must be 'fold_majority' or 'mean_fraction'")


@dataclass
class FoldModel:
    """One cross-validation fold's trained network, its thresholds and its model card."""

    model: PMPDNet
    thresholds: FoldThresholds
    card: dict[str, Any]
    path: str = ""


@dataclass(frozen=True)
class SlicePredictions:
    """One model's outputs for a stack of patches."""

    metastasis_probability: np.ndarray  # [n]
    site_probabilities: np.ndarray  # [n, n_sites]


@dataclass(frozen=True)
class PatientPrediction:
    """A patient's score from all folds.

    Attributes:
        metastasis_risk_score: mean over folds of each fold's MRS (mean slice probability).
        mrs_std, mrs_min, mrs_max: spread of the fold MRS, the uncertainty to show beside it.
        mrs_per_fold: each fold's MRS.
        slice_probabilities: [n_folds, n_slices].
        positive_fraction: mean over folds of the share of slices at or above the fold's slice
            threshold; ``positive_fraction_per_fold`` gives each fold's.
        fold_calls: each fold's patient-level call.
        predicted_metastasis: the patient-level call (see ``PredictConfig.patient_call_rule``).
        site_probabilities: mean over folds and slices of each site output (multi-label).
        n_slices: slices scored (fewer than 4 when the tumour is thin; say so on the result).
    """

    metastasis_risk_score: float
    mrs_std: float
    mrs_min: float
    mrs_max: float
    mrs_per_fold: tuple[float, ...]
    slice_probabilities: np.ndarray
    positive_fraction: float
    positive_fraction_per_fold: tuple[float, ...]
    fold_calls: tuple[bool, ...]
    predicted_metastasis: bool
    site_probabilities: dict[str, float]
    n_slices: int
    patient_call_rule: str

    def to_dict(self) -> dict[str, Any]:
        """JSON-able form for storing beside the prediction row."""
        values = asdict(self)
        values["slice_probabilities"] = self.slice_probabilities.tolist()
        return values


def predict_slices(
    model: PMPDNet,
    patches: np.ndarray | torch.Tensor,
    *,
    device: torch.device | None = None,
    config: PredictConfig | None = None,
) -> SlicePredictions:
    """Metastasis and site probabilities of each patch, batched, under ``torch.inference_mode``.

    Used by ``score_patient`` and by cross-validation on its held-out folds, so the numbers in
    the training report are computed exactly as the ones the platform later shows.
    """
    config = config or PredictConfig()
    device = device or next(model.parameters()).device
    model.eval()
    inputs = torch.as_tensor(patches, dtype=torch.float32)
    metastasis: list[torch.Tensor] = []
    sites: list[torch.Tensor] = []
    memory_format = torch.channels_last if config.channels_last else torch.contiguous_format
    with torch.inference_mode(), autocast_context(device, bf16_on_cpu=config.bf16_on_cpu):
        for start in range(0, inputs.shape[0], config.batch_size):
            batch = inputs[start : start + config.batch_size].to(
                device, non_blocking=True, memory_format=memory_format
            )
            output = model(batch)
            metastasis.append(torch.sigmoid(output.metastasis_logit.float()).cpu())
            sites.append(torch.sigmoid(output.site_logits.float()).cpu())
    return SlicePredictions(
        metastasis_probability=torch.cat(metastasis).numpy().astype(np.float64),
        site_probabilities=torch.cat(sites).numpy().astype(np.float64),
    )


def positive_fraction(slice_probabilities: np.ndarray, slice_threshold: float) -> float:
    """Share of a patient's slices whose probability is at or above the slice threshold."""
    probabilities = np.asarray(slice_probabilities, dtype=float)
    return float(np.mean(probabilities >= slice_threshold)) if probabilities.size else float("nan")


def score_patient(
    patches: np.ndarray,
    fold_models: Sequence[FoldModel],
    thresholds: Sequence[FoldThresholds] | None = None,
    *,
    config: PredictConfig | None = None,
) -> PatientPrediction:
    """Score one patient's un-rotated patches [n, 2, H, W] with every fold model.

    ``thresholds`` default to those stored with each fold model; pass others (e.g. re-chosen on
    a local cohort) to override them, one per fold.
    """
    return score_patients([patches], fold_models, thresholds, config=config)[0]


def score_patients(
    patches_per_patient: Sequence[np.ndarray],
    fold_models: Sequence[FoldModel],
    thresholds: Sequence[FoldThresholds] | None = None,
    *,
    config: PredictConfig | None = None,
) -> list[PatientPrediction]:
    """Score several patients at once: their patches go through each fold model in shared
    batches (a GPU kept busy across patients), then each patient's slices are summarised as
    ``score_patient`` does. The models are in eval mode, so a patch's output does not depend
    on the patches beside it in a batch."""
    config = config or PredictConfig()
    stacks, thresholds = scoring_inputs(patches_per_patient, fold_models, thresholds)
    if not stacks:
        return []
    everything = np.concatenate(stacks)
    per_fold = [predict_slices(f.model, everything, config=config) for f in fold_models]
    return summarise_patients(per_fold, [len(patches) for patches in stacks], thresholds, config)


def scoring_inputs(
    patches_per_patient: Sequence[np.ndarray],
    fold_models: Sequence[FoldModel],
    thresholds: Sequence[FoldThresholds] | None,
) -> tuple[list[np.ndarray], list[FoldThresholds]]:
    """The patients' patch stacks as float32 and one threshold pair per fold, checked."""
    if not fold_models:
        raise ValueError("score_patient needs at least one fold model")
    thresholds = list(thresholds) if thresholds is not None else [f.thresholds for f in fold_models]
    if len(thresholds) != len(fold_models):
        raise ValueError(f"{len(thresholds)} thresholds for {len(fold_models)} fold models")
    stacks = [np.asarray(patches, dtype=np.float32) for patches in patches_per_patient]
    for patches in stacks:
        if patches.ndim != 4 or patches.shape[0] == 0:
            raise ValueError(f"patches must be [n>0, channels, H, W], got {patches.shape}")
    return stacks, thresholds


def summarise_patients(
    per_fold: Sequence[SlicePredictions],
    patches_per_patient: Sequence[int],
    thresholds: Sequence[FoldThresholds],
    config: PredictConfig,
) -> list[PatientPrediction]:
    """Each patient's prediction from every fold's slice predictions over the patients'
    patches, concatenated in order (``patches_per_patient`` of them each)."""
    bounds = np.cumsum([0, *patches_per_patient])
    return [
        _summarise(
            np.stack([p.metastasis_probability[start:stop] for p in per_fold]),
            np.stack([p.site_probabilities[start:stop] for p in per_fold]),
            thresholds,
            config,
        )
        for start, stop in zip(bounds[:-1], bounds[1:], strict=True)
    ]


def _summarise(
    per_slice: np.ndarray,
    site_probabilities: np.ndarray,
    thresholds: Sequence[FoldThresholds],
    config: PredictConfig,
) -> PatientPrediction:
    """One patient's prediction from its [n_folds, n_slices] slice probabilities and
    [n_folds, n_slices, n_sites] site probabilities."""
    mrs = per_slice.mean(axis=1)
    fractions = np.array(
        [
            positive_fraction(p, t.slice_threshold)
            for p, t in zip(per_slice, thresholds, strict=True)
        ]
    )
    patient_thresholds = np.array([t.patient_threshold for t in thresholds])
    fold_calls = fractions >= patient_thresholds
    if config.patient_call_rule == "fold_majority":
        call = bool(fold_calls.sum() * 2 >= len(fold_calls))
    else:
        call = bool(fractions.mean() >= patient_thresholds.mean())
    mean_sites = site_probabilities.mean(axis=(0, 1))
    return PatientPrediction(
        metastasis_risk_score=float(mrs.mean()),
        mrs_std=float(mrs.std(ddof=1)) if len(mrs) > 1 else 0.0,
        mrs_min=float(mrs.min()),
        mrs_max=float(mrs.max()),
        mrs_per_fold=tuple(float(v) for v in mrs),
        slice_probabilities=per_slice,
        positive_fraction=float(fractions.mean()),
        positive_fraction_per_fold=tuple(float(v) for v in fractions),
        fold_calls=tuple(bool(v) for v in fold_calls),
        predicted_metastasis=call,
        site_probabilities={
            name: float(p) for name, p in zip(SITE_NAMES, mean_sites, strict=False)
        },
        n_slices=int(per_slice.shape[1]),
        patient_call_rule=config.patient_call_rule,
    )


def load_fold_models(
    checkpoint_paths: Sequence[str | Path],
    *,
    device: torch.device | str | None = None,
    channels_last: bool = True,
    fuse: bool = True,
) -> list[FoldModel]:
    """Load fold checkpoints written by ``train.cross_validate`` (``fold_K.pt`` with its model
    card ``fold_K.json`` beside it; the card is also inside the .pt file), in eval mode and,
    with ``fuse``, with each BatchNorm folded into its convolution (``model.fuse_batchnorm``:
    the same scores, faster; such a model is for inference and Grad-CAM only)."""
    if not isinstance(device, torch.device):
        device = select_device(device or "auto")
    fold_models = []
    for path in checkpoint_paths:
        checkpoint = torch.load(Path(path), map_location="cpu", weights_only=True)
        card = checkpoint["model_card"]
        card_path = Path(path).with_suffix(".json")
        if card_path.exists():
            card = json.loads(card_path.read_text())
        model = PMPDNet(ModelConfig.from_dict(card["model_config"]))
        model.load_state_dict(checkpoint["state_dict"])
        model.eval()
        if fuse:
            fuse_batchnorm(model)
        model = prepare_model(model, device, channels_last=channels_last)
        fold_models.append(
            FoldModel(
                model=model,
                thresholds=FoldThresholds(**card["thresholds"]),
                card=card,
                path=str(path),
            )
        )
    return fold_models
