"""Patients with images and model versions for the engine's tests, without the ingest.

Phantom patients (``inference.pmpd.phantom``) become ``Patient`` rows with the canonical CT and
mask of a selected CT series, written as the ingest's contract says (``pmpd_web.imaging.models``):
NIfTI in storage, the mask already 0/1/2, geometry and content hash filled in.
"""

from __future__ import annotations

import dataclasses
import io
import tempfile
import uuid
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from django.core.files import File
from django.core.files.base import ContentFile
from django.core.files.storage import default_storage
from factories import make_patient

from inference.models import ModelVersion, PatientPrediction
from inference.pmpd.phantom import PhantomPatient, generate_patient, write_nifti
from inference.registry import TrainingChoices, new_model_version
from pmpd_web.cohorts.models import Cohort, Patient
from pmpd_web.imaging.models import CanonicalVolume, ImageSeries, ImagingStudy
from pmpd_web.imaging.volumes import Grid, content_hash

SEED = 41
SIZE = 64

# The smallest settings that still run the whole method: ResNet10 on 32-pixel patches, one
# epoch, two rotations per slice.
TINY = TrainingChoices(
    depth=10,
    input_size=32,
    max_epochs=1,
    n_folds=5,
    seed=3,
    batch_size=32,
    early_stopping_patience=1,
    rotation_angles_deg=(0.0, 180.0),
)


@pytest.fixture(autouse=True)
def one_torch_thread():
    """Torch on one thread in the engine's tests: the two cores are shared with other work,
    and two spinning threads on a busy core run several times slower than one."""
    import torch  # here, not at the top: the many page tests that import this module need no torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def phantom(index: int, *, seed: int = SEED, size: int = SIZE) -> PhantomPatient:
    return generate_patient(index, seed=seed, size=size)


def labelled_phantoms(
    n_metastatic: int, n_without: int, *, seed: int = SEED, size: int = SIZE
) -> list[PhantomPatient]:
    """The first phantoms of the seed with a known label, as many of each class as asked."""
    wanted = {"yes": n_metastatic, "no": n_without}
    chosen = []
    index = 0
    while any(wanted.values()):
        case = phantom(index, seed=seed, size=size)
        label = case.clinical["metastasis_at_diagnosis"]
        if wanted.get(label, 0) > 0:
            wanted[label] -= 1
            chosen.append(case)
        index += 1
    return sorted(chosen, key=lambda case: case.index)


def add_images(
    patient: Patient,
    case: PhantomPatient,
    *,
    with_mask: bool = True,
    edit_mask: Callable[[np.ndarray], np.ndarray] | None = None,
) -> ImageSeries:
    """Give ``patient`` the phantom's CT (and mask) as the canonical volumes of a selected CT
    series. ``edit_mask`` changes the mask first (e.g. to make bad or thin tumours)."""
    if edit_mask is not None:
        case = dataclasses.replace(case, mask=edit_mask(case.mask.copy()))
    study = ImagingStudy.objects.create(patient=patient, study_instance_uid=_uid())
    series = ImageSeries.objects.create(
        study=study,
        series_instance_uid=_uid(),
        modality="CT",
        slice_thickness_mm=case.spacing[2],
        n_instances=case.ct.shape[0],
        is_selected=True,
    )
    grid = Grid(
        size=(case.ct.shape[2], case.ct.shape[1], case.ct.shape[0]),
        spacing=case.spacing,
        origin=case.origin,
        direction=case.direction,
    )
    series.geometry = grid.as_dict()
    series.content_hash = content_hash(case.ct, grid)
    series.save(update_fields=["geometry", "content_hash"])
    with tempfile.TemporaryDirectory() as folder:
        ct_path, mask_path = write_nifti(case, folder)
        kinds = [(CanonicalVolume.Kind.CT, ct_path, case.ct)]
        if with_mask:
            kinds.append((CanonicalVolume.Kind.MASK, mask_path, case.mask))
        for kind, path, array in kinds:
            with Path(path).open("rb") as handle:
                name = default_storage.save(
                    f"volumes/{patient.pk}/{series.pk}/{kind}.nii.gz", File(handle)
                )
            CanonicalVolume.objects.create(
                patient=patient,
                series=series,
                kind=kind,
                file=name,
                content_hash=content_hash(array, grid),
                geometry=grid.as_dict(),
            )
    return series


def add_phantom_patient(
    cohort: Cohort,
    case: PhantomPatient,
    *,
    study_id: str | None = None,
    label: str | None = None,
    **image_options,
) -> Patient:
    """A patient with the phantom's label and metastasis sites, and its images."""
    label = label or case.clinical["metastasis_at_diagnosis"]
    sites = case.site_labels if label == "yes" else np.zeros(4)
    patient = make_patient(
        cohort,
        study_id or case.study_id,
        metastasis_at_diagnosis=label,
        site_liver=label == "yes" and sites[1] == 1,
        site_lung=label == "yes" and sites[2] == 1,
        site_peritoneum=label == "yes" and sites[3] == 1,
        site_unknown=label == "yes" and bool(np.isnan(sites[1:]).any()),
    )
    add_images(patient, case, **image_options)
    return patient


def make_imaged_cohort(
    cohort: Cohort, *, n_metastatic: int = 5, n_without: int = 5, seed: int = SEED
) -> list[Patient]:
    """Labelled phantom patients with images: enough of each class for 5 folds by default."""
    return [
        add_phantom_patient(cohort, case)
        for case in labelled_phantoms(n_metastatic, n_without, seed=seed)
    ]


def thin_tumour(mask: np.ndarray) -> np.ndarray:
    """A mask edit keeping the tumour in its largest slice only (the rest becomes pancreas):
    at the phantom's slice thicknesses (up to 5 mm) that is at most 3 slices of 2 mm, fewer
    than the 4 the method selects."""
    tumour = mask == 2
    largest = int(np.argmax(tumour.reshape(len(mask), -1).sum(axis=1)))
    dropped = np.ones(len(mask), dtype=bool)
    dropped[largest] = False
    mask[tumour & dropped[:, None, None]] = 1
    return mask


def no_tumour(mask: np.ndarray) -> np.ndarray:
    """A mask edit erasing the tumour label: the engine refuses the patient."""
    mask[mask == 2] = 1
    return mask


def make_random_version(
    cohort: Cohort,
    *,
    name: str = "random-weights",
    depth: int = 10,
    input_size: int = 32,
    n_folds: int = 5,
    rotation_angles_deg: tuple[float, ...] = (0.0,),
    is_active: bool = False,
) -> ModelVersion:
    """A ready model version whose fold checkpoints have random weights (scoring and page
    tests do not need a trained model)."""
    import fold_checkpoints  # torch and MONAI, imported by the tests that score only

    choices = dataclasses.replace(
        TINY,
        depth=depth,
        input_size=input_size,
        n_folds=n_folds,
        rotation_angles_deg=rotation_angles_deg,
    )
    train_config, preprocess_config = choices.configs()
    version = new_model_version(
        cohort,
        name=name,
        user=None,
        train_config=train_config,
        preprocess_config=preprocess_config,
    )
    files = []
    with tempfile.TemporaryDirectory() as folder:
        for path in fold_checkpoints.write_random_fold_checkpoints(
            Path(folder),
            depth=depth,
            input_size=input_size,
            n_folds=n_folds,
            preprocess_config=preprocess_config,
        ):
            with path.open("rb") as handle:
                files.append(default_storage.save(f"models/{version.pk}/{path.name}", File(handle)))
    thresholds = [
        {"fold": k, "slice_threshold": 0.5, "patient_threshold": 0.5} for k in range(n_folds)
    ]
    metrics = {
        "pooled": {"patient_auroc_mrs": 0.5, "slice_auroc": 0.5, "accuracy": 0.5},
        "folds": [{"fold": k, "patient_auroc_mrs": 0.5} for k in range(n_folds)],
    }
    ModelVersion.objects.filter(pk=version.pk).update(
        status=ModelVersion.Status.READY,
        files=files,
        thresholds=thresholds,
        metrics=metrics,
        card={
            "model": "PMPDNet",
            "n_folds": n_folds,
            "data_hash": "random-weights",
            "code_version": "test",
            "model_config": train_config.model.to_dict(),
            "preprocess_config": preprocess_config.to_dict(),
            "folds": [],
        },
        data_hash="random-weights",
        code_version="test",
        is_active=is_active,
    )
    version.refresh_from_db()
    return version


def _uid() -> str:
    return f"2.25.{uuid.uuid4().int}"


def make_ready_version(
    cohort: Cohort,
    *,
    name: str,
    n_folds: int = 5,
    is_active: bool = False,
    is_synthetic: bool = False,
    test_ids: list[str] | None = None,
) -> ModelVersion:
    """A ready version as the registry shows it (card, thresholds, metrics), without fold
    checkpoints: for pages and permissions, which never load a model."""
    train_config, preprocess_config = TINY.configs()
    version = new_model_version(
        cohort,
        name=name,
        user=None,
        train_config=train_config,
        preprocess_config=preprocess_config,
    )
    folds = [
        {
            "fold": k,
            "n_train": 8,
            "n_validation": 2,
            "n_test": 2,
            "epochs_run": 1,
            "best_epoch": 1,
            "train_ids": [],
            "validation_ids": [],
            "test_ids": (test_ids or []) if k == 0 else [],
        }
        for k in range(n_folds)
    ]
    ModelVersion.objects.filter(pk=version.pk).update(
        status=ModelVersion.Status.READY,
        is_active=is_active,
        is_synthetic=is_synthetic,
        thresholds=[
            {"fold": k, "slice_threshold": 0.5, "patient_threshold": 0.5} for k in range(n_folds)
        ],
        metrics={
            "pooled": {"patient_auroc_mrs": 0.812, "slice_auroc": 0.75, "accuracy": 0.7},
            "folds": [{"fold": k, "patient_auroc_mrs": 0.8} for k in range(n_folds)],
        },
        card={
            "model": "PMPDNet",
            "n_folds": n_folds,
            "data_hash": "d" * 64,
            "code_version": "git:test",
            "model_config": train_config.model.to_dict(),
            "preprocess_config": preprocess_config.to_dict(),
            "trained_on": {
                "cohort_id": cohort.pk,
                "cohort_name": cohort.name,
                "is_synthetic": is_synthetic,
                "n_patients": 10,
                "n_metastatic": 5,
                "skipped": [],
            },
            "folds": folds,
        },
        data_hash="d" * 64,
        code_version="git:test",
    )
    version.refresh_from_db()
    return version


def make_prediction(
    patient: Patient,
    version: ModelVersion,
    *,
    source: str = "ensemble",
    n_slices: int = 4,
    mrs: float = 0.62,
    per_fold: list[float] | None = None,
    fold_slices: list[list[float]] | None = None,
    call: bool = True,
    sites: dict[str, float] | None = None,
    first_slice: int = 40,
) -> PatientPrediction:
    """A stored prediction with tiny Grad-CAM PNGs, as scoring leaves them. ``per_fold``,
    ``fold_slices`` (slice probabilities per fold), ``call`` and ``sites`` make a patient whose
    signals disagree; the scored slices are ``first_slice`` on, on the 2 mm grid."""
    from PIL import Image

    n_folds = len(per_fold) if per_fold else (1 if source == "out_of_fold" else 5)
    files = []
    for position in range(n_slices):
        buffer = io.BytesIO()
        Image.new("RGB", (8, 8), (200, 40, 40)).save(buffer, format="PNG")
        files.append(
            default_storage.save(
                f"predictions/{version.pk}/{patient.pk}/slice_{first_slice + position}.png",
                ContentFile(buffer.getvalue()),
            )
        )
    per_fold = per_fold or [mrs - 0.02 * (k - n_folds // 2) for k in range(n_folds)]
    if per_fold and fold_slices:
        mrs = sum(per_fold) / len(per_fold)
    return PatientPrediction.objects.create(
        patient=patient,
        model_version=version,
        source=source,
        metastasis_risk_score=mrs,
        mrs_std=None if n_folds == 1 else float(np.std(per_fold, ddof=1)),
        mrs_min=None if n_folds == 1 else min(per_fold),
        mrs_max=None if n_folds == 1 else max(per_fold),
        mrs_per_fold=per_fold,
        positive_fraction=0.75,
        predicted_metastasis=call,
        site_probabilities=sites or {"none": 0.3, "liver": 0.6, "lung": 0.1, "peritoneum": 0.05},
        slice_indices=[first_slice + k for k in range(n_slices)],
        slice_probabilities=fold_slices
        or [[0.7, 0.6, 0.55, 0.4][:n_slices] for _ in range(n_folds)],
        n_slices=n_slices,
        fewer_than_4_tumour_slices=n_slices < 4,
        gradcam_files=files,
        input_hash="e" * 64,
        code_version="git:test",
    )


def add_fake_images(patient: Patient) -> None:
    """Rows saying the patient has a CT and mask (no files): enough for the counts that
    decide whether a training may start, never read."""
    study = ImagingStudy.objects.create(patient=patient, study_instance_uid=_uid())
    series = ImageSeries.objects.create(
        study=study, series_instance_uid=_uid(), modality="CT", is_selected=True
    )
    for kind in (CanonicalVolume.Kind.CT, CanonicalVolume.Kind.MASK):
        CanonicalVolume.objects.create(
            patient=patient,
            series=series,
            kind=kind,
            file=f"volumes/none/{series.pk}-{kind}.nii.gz",
            content_hash=f"{kind}-{series.pk}".ljust(64, "0"),
        )


def nnunet_results_zip(
    labels: dict[str, int] | None = None, channels: dict[str, str] | None = None
) -> bytes:
    """A ZIP shaped like an nnU-Net v2 results folder (the checks read its layout and JSON,
    never the weights): labels background/pancreas/lesion and one CT channel by default."""
    import json
    import zipfile

    buffer = io.BytesIO()
    root = "Dataset123_Pancreas/nnUNetTrainer__nnUNetPlans__2d/"
    with zipfile.ZipFile(buffer, "w") as archive:
        dataset = {
            "channel_names": channels or {"0": "CT"},
            "labels": labels or {"background": 0, "pancreas": 1, "lesion": 2},
        }
        archive.writestr(root + "dataset.json", json.dumps(dataset))
        archive.writestr(root + "plans.json", json.dumps({"configurations": {"2d": {}}}))
        archive.writestr(root + "fold_0/checkpoint_final.pth", b"weights")
    return buffer.getvalue()


def nnunet_random_weights_zip(labels: dict[str, int], *, seed: int = 0) -> bytes:
    """A ZIP of an nnU-Net v2 results folder that predicts: a tiny 2d U-Net (three stages of
    four features, random weights) with one output per label of ``labels``, whose last layer
    says the lowest foreground label everywhere, the same on every machine. Tests of what the
    platform does with a model's predictions (not of their quality) need no training."""
    import json
    import zipfile

    import torch
    from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer
    from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

    resampling = "resample_data_or_seg_to_shape"
    plans = {
        "dataset_name": "Dataset124_Tiny",
        "plans_name": "nnUNetPlans",
        # The phantoms' own spacing (``imagemaker.small_patient``): one tile per slice.
        "original_median_spacing_after_transp": [1.25, 6.25, 6.25],
        "original_median_shape_after_transp": [32, 64, 64],
        "image_reader_writer": "SimpleITKIO",
        "transpose_forward": [0, 1, 2],
        "transpose_backward": [0, 1, 2],
        "configurations": {
            "2d": {
                "data_identifier": "nnUNetPlans_2d",
                "preprocessor_name": "DefaultPreprocessor",
                "batch_size": 2,
                "patch_size": [64, 64],
                "median_image_size_in_voxels": [64.0, 64.0],
                "spacing": [6.25, 6.25],
                "normalization_schemes": ["CTNormalization"],
                "use_mask_for_norm": [False],
                "resampling_fn_data": resampling,
                "resampling_fn_seg": resampling,
                "resampling_fn_data_kwargs": {
                    "is_seg": False,
                    "order": 3,
                    "order_z": 0,
                    "force_separate_z": None,
                },
                "resampling_fn_seg_kwargs": {
                    "is_seg": True,
                    "order": 1,
                    "order_z": 0,
                    "force_separate_z": None,
                },
                "resampling_fn_probabilities": resampling,
                "resampling_fn_probabilities_kwargs": {
                    "is_seg": False,
                    "order": 1,
                    "order_z": 0,
                    "force_separate_z": None,
                },
                "architecture": {
                    "network_class_name": (
                        "dynamic_network_architectures.architectures.unet.PlainConvUNet"
                    ),
                    "arch_kwargs": {
                        "n_stages": 3,
                        "features_per_stage": [4, 4, 4],
                        "conv_op": "torch.nn.modules.conv.Conv2d",
                        "kernel_sizes": [[3, 3]] * 3,
                        "strides": [[1, 1], [2, 2], [2, 2]],
                        "n_conv_per_stage": [1, 1, 1],
                        "n_conv_per_stage_decoder": [1, 1],
                        "conv_bias": True,
                        "norm_op": "torch.nn.modules.instancenorm.InstanceNorm2d",
                        "norm_op_kwargs": {"eps": 1e-05, "affine": True},
                        "dropout_op": None,
                        "dropout_op_kwargs": None,
                        "nonlin": "torch.nn.LeakyReLU",
                        "nonlin_kwargs": {"inplace": True},
                    },
                    "_kw_requires_import": ["conv_op", "norm_op", "dropout_op", "nonlin"],
                },
                "batch_dice": True,
            }
        },
        "experiment_planner_used": "ExperimentPlanner",
        "label_manager": "LabelManager",
        "foreground_intensity_properties_per_channel": {
            "0": {
                "max": 200.0,
                "mean": 60.0,
                "median": 60.0,
                "min": -100.0,
                "percentile_00_5": -50.0,
                "percentile_99_5": 180.0,
                "std": 40.0,
            }
        },
    }
    dataset = {"channel_names": {"0": "CT"}, "labels": labels, "file_ending": ".nii.gz"}
    plans_manager = PlansManager(plans)
    torch.manual_seed(seed)
    network = nnUNetTrainer.build_network_architecture(
        plans_manager,
        plans_manager.get_configuration("2d"),
        1,
        plans_manager.get_label_manager(dataset).num_segmentation_heads,
        enable_deep_supervision=False,
    )
    with torch.no_grad():
        for layer in network.decoder.seg_layers:
            layer.weight.zero_()
            layer.bias.zero_()
            layer.bias[1] = 1.0
    checkpoint = io.BytesIO()
    torch.save(
        {
            "network_weights": network.state_dict(),
            "init_args": {"configuration": "2d"},
            "inference_allowed_mirroring_axes": (0, 1),
            "trainer_name": "nnUNetTrainer",
        },
        checkpoint,
    )
    buffer = io.BytesIO()
    root = "Dataset124_Tiny/nnUNetTrainer__nnUNetPlans__2d/"
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.writestr(root + "dataset.json", json.dumps(dataset))
        archive.writestr(root + "plans.json", json.dumps(plans))
        archive.writestr(root + "fold_0/checkpoint_final.pth", checkpoint.getvalue())
    return buffer.getvalue()
