"""Grad-CAM on the last convolutional block (layer4) for the binary metastasis head: which part
of a slice drove its metastasis probability (PMPD_METHOD.md, "Model")."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from torch.nn import functional

from inference.pmpd.model import PMPDNet
from inference.pmpd.predict import FoldModel


def gradcam(model: PMPDNet, patches: np.ndarray | torch.Tensor) -> np.ndarray:
    """One heatmap per patch, [n, H, W] in [0, 1], at the input's resolution.

    Grad-CAM: the layer4 activation maps are weighted by the spatial mean of the metastasis
    logit's gradient with respect to them, summed, passed through ReLU (only evidence *for*
    metastasis), upsampled bilinearly and scaled to a maximum of 1 per patch (a patch with no
    positive evidence stays all zero). Runs in fp32 with gradients, model in eval mode.
    """
    device = next(model.parameters()).device
    inputs = torch.as_tensor(np.asarray(patches, dtype=np.float32)).to(device)
    model.eval()
    captured: dict[str, torch.Tensor] = {}

    def keep(_module: torch.nn.Module, _inputs: object, output: torch.Tensor) -> None:
        output.retain_grad()
        captured["activations"] = output

    handle = model.backbone.layer4.register_forward_hook(keep)
    try:
        with torch.enable_grad():
            output = model(inputs)
            # Samples do not interact in eval mode, so one backward pass of the sum gives each
            # patch's own gradient.
            output.metastasis_logit.sum().backward()
    finally:
        handle.remove()
    activations = captured["activations"]
    if activations.grad is None:
        raise RuntimeError("Grad-CAM: the target layer received no gradient")
    weights = activations.grad.mean(dim=(2, 3), keepdim=True)
    cam = torch.relu((weights * activations).sum(dim=1, keepdim=True))
    cam = functional.interpolate(
        cam, size=inputs.shape[-2:], mode="bilinear", align_corners=False
    ).squeeze(1)
    peak = cam.flatten(1).max(dim=1).values.clamp_min(1e-12)[:, None, None]
    model.zero_grad(set_to_none=True)
    return (cam / peak).detach().cpu().numpy().astype(np.float32)


def ensemble_gradcam(fold_models: Sequence[FoldModel], patches: np.ndarray) -> np.ndarray:
    """Mean of the fold models' heatmaps, rescaled to a maximum of 1 per patch: the map that
    goes with the mean-over-folds MRS."""
    maps = np.mean([gradcam(f.model, patches) for f in fold_models], axis=0)
    peak = np.maximum(maps.reshape(len(maps), -1).max(axis=1), 1e-12)[:, None, None]
    return (maps / peak).astype(np.float32)


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


def save_overlay_png(
    ct_slice: np.ndarray, heatmap: np.ndarray, path: str | Path, *, alpha: float = 0.45
) -> Path:
    """Write the Grad-CAM overlay of one slice as a PNG (Pillow); returns the path."""
    from PIL import Image

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(overlay_rgb(ct_slice, heatmap, alpha=alpha)).save(path)
    return path
