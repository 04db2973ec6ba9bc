"""Grad-CAM as the textbook computes it, the reference for the platform's one-pass Grad-CAM
(``inference.pmpd.gradcam``): fp32, the whole network's backward pass, the gradient read off
layer4's output with ``retain_grad``."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch


def textbook_gradcam(model: torch.nn.Module, patches: np.ndarray) -> np.ndarray:
    """[n, H, W] heatmaps in [0, 1] of one PMPDNet (eval mode, fp32)."""
    inputs = torch.as_tensor(patches, dtype=torch.float32)
    kept: dict[str, torch.Tensor] = {}

    def keep(_module: torch.nn.Module, _inputs: object, output: torch.Tensor) -> None:
        output.retain_grad()
        kept["activations"] = output

    handle = model.backbone.layer4.register_forward_hook(keep)
    try:
        with torch.enable_grad():
            model(inputs).metastasis_logit.sum().backward()
    finally:
        handle.remove()
    model.zero_grad(set_to_none=True)
    activations = kept["activations"]
    assert activations.grad is not None
    weights = activations.grad.mean(dim=(2, 3), keepdim=True)
    cam = torch.relu((weights * activations).sum(dim=1, keepdim=True))
    cam = torch.nn.functional.interpolate(cam, size=inputs.shape[-2:], mode="bilinear").squeeze(1)
    peak = cam.flatten(1).max(dim=1).values.clamp_min(1e-12)[:, None, None]
    return (cam / peak).detach().numpy()


def textbook_ensemble_gradcam(models: Sequence[torch.nn.Module], patches: np.ndarray) -> np.ndarray:
    """The mean of the models' textbook heatmaps, rescaled to a maximum of 1 per patch."""
    mean = np.mean([textbook_gradcam(model, patches) for model in models], axis=0)
    return mean / np.maximum(mean.reshape(len(mean), -1).max(axis=1), 1e-12)[:, None, None]
