"""PMPD engine core: pure Python + torch, no Django (see shared/design/PMPD_METHOD.md).

Modules:
    phantom     synthetic contrast-enhanced abdominal CT cohorts with known truth
    volume      a 3D image and its grid (shared with the imaging app and the nnU-Net core)
    preprocess  the method's pre-processing, one function per step, composed by
                ``preprocess_patient`` for training and inference alike
    model       PMPDNet (MONAI ResNet + SE-gated multi-block fusion, two heads)
    train       5-fold patient-level cross-validation with the paper's thresholds
    predict     scoring a patient with the fold models (MRS with its spread)
    gradcam     Grad-CAM heatmaps and PNG overlays

Names are importable from the package itself (``from inference.pmpd import score_patient``);
the submodule is only imported on first use, so importing the package stays cheap and needs
neither torch nor SimpleITK until a name that uses them is asked for.
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

_EXPORTS: dict[str, str] = {
    # phantom
    "PhantomConfig": "phantom",
    "PhantomPatient": "phantom",
    "CLINICAL_COLUMNS": "phantom",
    "generate_patient": "phantom",
    "generate_cohort": "phantom",
    "iter_cohort": "phantom",
    "write_dicom_series": "phantom",
    "write_nifti": "phantom",
    "write_clinical_table": "phantom",
    # preprocess
    "PreprocessConfig": "preprocess",
    "PreprocessError": "preprocess",
    "PreprocessedPatient": "preprocess",
    "load_volume": "preprocess",
    "preprocess_patient": "preprocess",
    # volume
    "Grid": "volume",
    "Volume": "volume",
    # model
    "ModelConfig": "model",
    "PMPDNet": "model",
    "SITE_NAMES": "model",
    "build_model": "model",
    "load_pretrained": "model",
    "model_summary": "model",
    # train
    "TrainConfig": "train",
    "CrossValidationResult": "train",
    "cross_validate": "train",
    "youden_threshold": "train",
    # predict
    "FoldModel": "predict",
    "FoldThresholds": "predict",
    "PatientPrediction": "predict",
    "PredictConfig": "predict",
    "load_fold_models": "predict",
    "score_patient": "predict",
    "score_patients": "predict",
    # gradcam
    "gradcam": "gradcam",
    "ensemble_gradcam": "gradcam",
    "score_and_explain": "gradcam",
    "save_overlay_png": "gradcam",
}

__all__ = ["__version__", *_EXPORTS]


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'inference.pmpd' has no attribute {name!r}")
    value = getattr(importlib.import_module(f"inference.pmpd.{module}"), name)
    globals()[name] = value
    return value
