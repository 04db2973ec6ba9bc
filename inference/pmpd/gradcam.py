"""Grad-CAM on the last convolutional block (layer4) for the binary metastasis head: which part
of a slice drove its metastasis probability (PMPD_METHOD.md, "Model")."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from torch.nn import functional

from inference.pmpd.model import PMPDNet, autocast_context
from inference.pmpd.predict import (
    FoldModel,
    FoldThresholds,
    PatientPrediction,
    PredictConfig,
    SlicePredictions,
    scoring_inputs,
    summarise_patients,
)


def gradcam(model: PMPDNet, patches: np.ndarray | torch.Tensor) -> np.ndarray:
    """One heatmap per patch, [n, H, W] in [0, 1], at the input's resolution.

    Grad-CAM: the layer4 activation maps are weighted by the spatial mean of the metastasis
    logit's gradient with respect to them, summed, passed through ReLU (only evidence *for*
    metastasis), upsampled bilinearly and scaled to a maximum of 1 per patch (a patch with no
    positive evidence stays all zero). Runs in fp32, model in eval mode.
    """
    inputs = torch.as_tensor(np.asarray(patches, dtype=np.float32))
    return _slices_and_gradcam(model, inputs, PredictConfig(), autocast=False)[1]


def ensemble_gradcam(fold_models: Sequence[FoldModel], patches: np.ndarray) -> np.ndarray:
    """Mean of the fold models' heatmaps, rescaled to a maximum of 1 per patch: the map that
    goes with the mean-over-folds MRS."""
    return _ensemble_map([gradcam(f.model, patches) for f in fold_models])


def score_and_explain(
    patches_per_patient: Sequence[np.ndarray],
    fold_models: Sequence[FoldModel],
    thresholds: Sequence[FoldThresholds] | None = None,
    *,
    config: PredictConfig | None = None,
) -> tuple[list[PatientPrediction], list[np.ndarray]]:
    """``score_patients`` and each patient's ensemble Grad-CAM ([n, H, W], as
    ``ensemble_gradcam``) from one forward pass per fold model.

    The forward pass runs as scoring does (``predict_slices``: the config's batches, memory
    format and autocast, so the scores are the same), with gradients recorded only from layer4
    on; the backward pass goes from the metastasis logit to layer4 and no further (no backbone
    and no weight gradients). ``tests/bench/bench_inference_cpu.py`` prints it beside scoring
    followed by the textbook Grad-CAM (a second forward pass and the whole backward pass).
    Under bf16 autocast (CUDA, or a CPU with native bf16) the heatmaps come from the bf16
    activations.
    """
    config = config or PredictConfig()
    stacks, thresholds = scoring_inputs(patches_per_patient, fold_models, thresholds)
    if not stacks:
        return [], []
    everything = torch.as_tensor(np.concatenate(stacks))
    per_fold, maps = [], []
    for fold_model in fold_models:
        predictions, heatmaps = _slices_and_gradcam(
            fold_model.model, everything, config, autocast=True
        )
        per_fold.append(predictions)
        maps.append(heatmaps)
    counts = [len(patches) for patches in stacks]
    results = summarise_patients(per_fold, counts, thresholds, config)
    ensemble = _ensemble_map(maps)
    return results, np.split(ensemble, np.cumsum(counts)[:-1])


def _ensemble_map(maps: Sequence[np.ndarray]) -> np.ndarray:
    mean = np.mean(maps, axis=0)
    peak = np.maximum(mean.reshape(len(mean), -1).max(axis=1), 1e-12)[:, None, None]
    return (mean / peak).astype(np.float32)


def _slices_and_gradcam(
    model: PMPDNet, inputs: torch.Tensor, config: PredictConfig, *, autocast: bool
) -> tuple[SlicePredictions, np.ndarray]:
    """One model's slice predictions and Grad-CAM heatmaps of ``inputs`` [n, C, H, W] (float32,
    any device), in batches of ``config.batch_size``.

    Layer4's output is handed on as a new leaf tensor and the parameters are frozen for the
    pass, so autograd records only the fusion and heads after layer4, and the gradient is
    asked for that leaf alone.
    """
    device = next(model.parameters()).device
    model.eval()
    memory_format = torch.channels_last if config.channels_last else torch.contiguous_format
    captured: list[torch.Tensor] = []

    def as_leaf(_module: torch.nn.Module, _inputs: object, output: torch.Tensor) -> torch.Tensor:
        leaf = output.detach().requires_grad_(True)
        captured.append(leaf)
        return leaf

    metastasis: list[torch.Tensor] = []
    sites: list[torch.Tensor] = []
    maps: list[torch.Tensor] = []
    frozen = [parameter for parameter in model.parameters() if parameter.requires_grad]
    handle = model.backbone.layer4.register_forward_hook(as_leaf)
    try:
        for parameter in frozen:
            parameter.requires_grad_(False)
        for start in range(0, inputs.shape[0], config.batch_size):
            batch = inputs[start : start + config.batch_size].to(
                device, non_blocking=True, memory_format=memory_format
            )
            captured.clear()
            with torch.enable_grad():
                with autocast_context(device, bf16_on_cpu=config.bf16_on_cpu, enabled=autocast):
                    output = model(batch)
                if len(captured) != 1:
                    raise RuntimeError("Grad-CAM: layer4 did not run once in the forward pass")
                (gradient,) = torch.autograd.grad(
                    output.metastasis_logit.float().sum(), captured[0], allow_unused=True
                )
            if gradient is None:
                raise RuntimeError("Grad-CAM: the target layer received no gradient")
            # Samples do not interact in eval mode, so the gradient of the sum is each patch's
            # own.
            activations = captured[0].detach().float()
            weights = gradient.float().mean(dim=(2, 3), keepdim=True)
            cam = torch.relu((weights * activations).sum(dim=1, keepdim=True))
            cam = functional.interpolate(
                cam, size=batch.shape[-2:], mode="bilinear", align_corners=False
            ).squeeze(1)
            peak = cam.flatten(1).max(dim=1).values.clamp_min(1e-12)[:, None, None]
            maps.append((cam / peak).cpu())
            metastasis.append(torch.sigmoid(output.metastasis_logit.detach().float()).cpu())
            sites.append(torch.sigmoid(output.site_logits.detach().float()).cpu())
    finally:
        handle.remove()
        for parameter in frozen:
            parameter.requires_grad_(True)
    predictions = SlicePredictions(
        metastasis_probability=torch.cat(metastasis).numpy().astype(np.float64),
        site_probabilities=torch.cat(sites).numpy().astype(np.float64),
    )
    return predictions, torch.cat(maps).numpy().astype(np.float32)


def jet_colormap(values: np.ndarray) -> np.ndarray:
    """The classic "jet" colormap (blue -> cyan -> yellow -> red) of values in [0, 1], as
    uint8 RGB [..., 3]: piecewise-linear ramps, no plotting library needed."""
    v = np.clip(np.asarray(values, dtype=np.float32), 0.0, 1.0)
    red = np.clip(1.5 - np.abs(4.0 * v - 3.0), 0.0, 1.0)
    green = np.clip(1.5 - np.abs(4.0 * v - 2.0), 0.0, 1.0)
    blue = np.clip(1.5 - np.abs(4.0 * v - 1.0), 0.0, 1.0)
    return (np.stack([red, green, blue], axis=-1) * 255.0 + 0.5).astype(np.uint8)


def overlay_rgb(
    ct_slice: np.ndarray, heatmap: np.ndarray, *, alpha: float = 0.45, min_heat: float = 0.2
) -> np.ndarray:
    """Blend a heatmap over a greyscale slice (values in [0, 1], e.g. a patch's channel 0).

    Heat below ``min_heat`` is left transparent so the anatomy stays readable; above it the
    opacity rises with the heat up to ``alpha``.
    """
    ct = np.clip(np.asarray(ct_slice, dtype=np.float32), 0.0, 1.0)
    heat = np.clip(np.asarray(heatmap, dtype=np.float32), 0.0, 1.0)
    if ct.shape != heat.shape:
        raise ValueError(f"slice {ct.shape} and heatmap {heat.shape} differ in shape")
    grey = np.repeat(ct[..., None] * 255.0, 3, axis=-1)
    opacity = alpha * np.clip((heat - min_heat) / max(1.0 - min_heat, 1e-6), 0.0, 1.0)[..., None]
    blended = grey * (1.0 - opacity) + jet_colormap(heat).astype(np.float32) * opacity
    return (blended + 0.5).astype(np.uint8)


def overlay_png(ct_slice: np.ndarray, heatmap: np.ndarray, *, alpha: float = 0.45) -> bytes:
    """The Grad-CAM overlay of one slice encoded as PNG (Pillow). Pillow's encoder releases the
    GIL, so several threads encode at once."""
    import io

    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(overlay_rgb(ct_slice, heatmap, alpha=alpha)).save(buffer, format="PNG")
    return buffer.getvalue()


def save_overlay_png(
    ct_slice: np.ndarray, heatmap: np.ndarray, path: str | Path, *, alpha: float = 0.45
) -> Path:
    """Write the Grad-CAM overlay of one slice as a PNG file; returns the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(overlay_png(ct_slice, heatmap, alpha=alpha))
    return path
