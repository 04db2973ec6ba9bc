"""The demo's nnU-Net budget learns: trained on eight demo-sized phantoms (the demo's geometry:
256 pixels across, 120 mm of slices) with ``DEMO_BUDGET``, it segments held-out phantoms with a
Dice well above zero. A regression to a model that "learns nothing" (Dice ~0: a 2d plan over
sagittal slices, nnU-Net's SGD that has not left the all-background start within the budget)
fails here. The floor is modest; the benchmark prints the figures (tests/bench/bench_nnunet.py).
"""

from __future__ import annotations

import json

import numpy as np
import pytest

from inference.pmpd.phantom import PhantomConfig, generate_patient
from inference.pmpd.volume import Volume
from inference.segmentation import nnunet_core as nc
from inference.segmentation_demo import DEMO_BUDGET
from pmpd_web.demo.management.commands.setup_demo import DEMO_IMAGE_EXTENT_MM

DEMO_PHANTOMS = PhantomConfig(size=256, z_extent_mm=DEMO_IMAGE_EXTENT_MM)


def phantom_case(index: int, *, with_mask: bool = True) -> tuple[nc.Case, np.ndarray]:
    patient = generate_patient(index, seed=2025, config=DEMO_PHANTOMS)
    case = nc.Case(
        case_id=f"demo{index:03d}",
        ct=Volume.of_array(
            patient.ct, spacing=patient.spacing, origin=patient.origin, direction=patient.direction
        ),
        mask=patient.mask if with_mask else None,
    )
    return case, patient.mask


def dice(predicted: np.ndarray, truth: np.ndarray, label: int) -> float:
    a, b = predicted == label, truth == label
    return 2 * float((a & b).sum()) / max(1, int(a.sum()) + int(b.sum()))


@pytest.mark.slow
def test_the_demo_budget_segments_held_out_phantoms(tmp_path):
    training = [phantom_case(i)[0] for i in range(8)]
    nc.write_raw_dataset(training, tmp_path / "raw", dataset_id=502, name="demo_budget")
    nc.plan_and_preprocess(tmp_path, dataset_id=502, budget=DEMO_BUDGET)
    model = nc.train(tmp_path, dataset_id=502, budget=DEMO_BUDGET)

    plans = json.loads((model.folder / "plans.json").read_text())
    # Axial slices (no transpose) at the budget's coarser in-plane spacing.
    assert plans["transpose_forward"] == [0, 1, 2]
    assert plans["configurations"]["2d"]["spacing"] == [3.0, 3.0]

    segmenter = nc.Segmenter(model.folder, folds=model.folds)
    scores = {"pancreas": [], "tumour": []}
    for index in (8, 9):
        case, truth = phantom_case(index, with_mask=False)
        predicted = segmenter.predict(case).mask
        scores["pancreas"].append(dice(predicted, truth, 1))
        scores["tumour"].append(dice(predicted, truth, 2))
    assert np.mean(scores["pancreas"]) > 0.6, scores
    assert np.mean(scores["tumour"]) > 0.3, scores
