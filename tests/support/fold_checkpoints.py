"""Fold checkpoints with random weights, in the layout ``cross_validate`` writes
(``fold_K.pt`` with its model card inside, ``fold_K.json`` beside it). No Django: the worker
memory benchmark uses it too."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from inference.pmpd.model import ModelConfig, PMPDNet
from inference.pmpd.preprocess import PreprocessConfig


def write_random_fold_checkpoints(
    folder: Path,
    *,
    depth: int,
    input_size: int,
    n_folds: int = 5,
    seed: int = 0,
    preprocess_config: PreprocessConfig | None = None,
    slice_threshold: float = 0.5,
    patient_threshold: float = 0.5,
) -> list[Path]:
    """``n_folds`` untrained PMPDNets (seeded) with thresholds as given; returns the .pt paths."""
    folder.mkdir(parents=True, exist_ok=True)
    preprocess_config = preprocess_config or PreprocessConfig(input_size=input_size)
    paths = []
    for fold in range(n_folds):
        torch.manual_seed(seed * 100 + fold)
        config = ModelConfig(depth=depth, input_size=input_size)
        model = PMPDNet(config)
        card: dict[str, Any] = {
            "model": "PMPDNet",
            "fold": fold,
            "n_folds": n_folds,
            "model_config": config.to_dict(),
            "preprocess_config": preprocess_config.to_dict(),
            "thresholds": {
                "slice_threshold": slice_threshold,
                "patient_threshold": patient_threshold,
                "slice_youden_j": 0.0,
                "patient_youden_j": 0.0,
            },
            "data_hash": "random-weights",
            "code_version": "test",
            "intended_use": "Research use only: a second reader, never a replacement.",
        }
        path = folder / f"fold_{fold}.pt"
        torch.save({"state_dict": model.state_dict(), "model_card": card}, path)
        path.with_suffix(".json").write_text(json.dumps(card, indent=2))
        paths.append(path)
    return paths
