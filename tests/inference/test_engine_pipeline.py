"""The engine's Django shell end to end on a tiny phantom cohort (eager tasks): the
preprocessing cache, training a version, scoring a cohort, idempotent re-runs."""

from __future__ import annotations

import json

import pytest
from django.core.files.base import ContentFile
from django.core.files.storage import default_storage
from django.template.loader import render_to_string
from engine_fixtures import (  # noqa: F401 (one_torch_thread is an autouse fixture)
    TINY,
    add_phantom_patient,
    make_imaged_cohort,
    make_random_version,
    no_tumour,
    one_torch_thread,
    phantom,
    thin_tumour,
)
from factories import make_patient

from inference import cache
from inference.jobs import start_scoring, start_training
from inference.models import ModelVersion, PatientPrediction, PreprocessedPatient
from inference.operating_point import operating_point_of, reading_for
from inference.pmpd.preprocess import PreprocessConfig, PreprocessError
from inference.services import prediction_context, prediction_view
from inference.tasks import cpu_preprocess_patient
from pmpd_web.imaging.models import CanonicalVolume
from pmpd_web.jobs.runner import UserFacingError

pytestmark = [pytest.mark.slow, pytest.mark.django_db]


@pytest.fixture
def count_preprocessing(monkeypatch):
    calls = []
    real = cache.preprocess_patient

    def counted(*args, **kwargs):
        calls.append(1)
        return real(*args, **kwargs)

    monkeypatch.setattr(cache, "preprocess_patient", counted)
    return calls


def test_the_second_preprocessing_is_a_cache_hit(cohort, count_preprocessing):
    patient = add_phantom_patient(cohort, phantom(0))
    config = PreprocessConfig(input_size=32, rotation_angles_deg=(0.0, 180.0))
    first = cache.preprocessed_for(patient, config)
    second = cache.preprocessed_for(patient, config)
    assert len(count_preprocessing) == 1
    entry = PreprocessedPatient.objects.get(patient=patient)
    assert entry.input_hash == first.input_hash == second.input_hash
    assert default_storage.exists(entry.file.name)
    assert (second.patches == first.patches).all()
    assert second.selected_slices == first.selected_slices
    assert entry.slice_indices == list(first.selected_slices) and entry.n_slices == 4
    assert first.patches.shape == (8, 2, 32, 32)  # 4 slices x 2 rotations
    # Another configuration is another entry; the input hash is known before any voxel is read.
    other = PreprocessConfig(input_size=48, rotation_angles_deg=(0.0, 180.0))
    assert cache.input_hash_for(patient, other) != first.input_hash
    cache.preprocessed_for(patient, other)
    assert len(count_preprocessing) == 2 and PreprocessedPatient.objects.count() == 2
    # The cpu task fills the same cache (a hit now: nothing is computed).
    version = make_random_version(cohort, rotation_angles_deg=(0.0, 180.0))
    result = cpu_preprocess_patient.delay(patient.pk, version.pk).get()
    assert result["input_hash"] == first.input_hash and len(count_preprocessing) == 2


def test_scoring_reads_only_the_unrotated_patches_of_a_cache_entry(cohort):
    """The cache keeps the un-rotated patches as a member of their own: scoring decompresses
    only them, training gets every rotation back in its order, and an entry written before
    (one member with every patch) still reads both ways."""
    import io

    import numpy as np

    patient = add_phantom_patient(cohort, phantom(0))
    config = PreprocessConfig(input_size=32, rotation_angles_deg=(0.0, 90.0, 180.0))
    computed = cache.preprocessed_for(patient, config)
    entry = PreprocessedPatient.objects.get(patient=patient)
    with default_storage.open(entry.file.name, "rb") as handle:
        members = np.load(io.BytesIO(handle.read())).files
    assert {"patches_unrotated", "patches_rotated"} <= set(members) and "patches" not in members

    def check_both_ways() -> None:
        full = cache.preprocessed_for(patient, config)
        assert np.array_equal(full.patches, computed.patches)
        assert np.array_equal(full.angles_deg, computed.angles_deg)
        assert np.array_equal(full.slice_indices, computed.slice_indices)
        scored = cache.preprocessed_for(patient, config, inference_only=True)
        assert np.array_equal(scored.inference_patches(), computed.inference_patches())
        assert (
            len(scored.patches) in (len(computed.patches), 4)
            and scored.input_hash == full.input_hash
        )
        assert scored.selected_slices == computed.selected_slices

    check_both_ways()
    assert len(cache.preprocessed_for(patient, config, inference_only=True).patches) == 4
    buffer = io.BytesIO()
    np.savez_compressed(
        buffer,
        patches=computed.patches,
        slice_indices=computed.slice_indices,
        angles_deg=computed.angles_deg,
        selected_slices=np.asarray(computed.selected_slices),
        slice_positions_mm=np.asarray(computed.slice_positions_mm),
        tumour_areas_mm2=np.asarray(computed.tumour_areas_mm2),
        n_tumour_slices=np.asarray(computed.n_tumour_slices),
        fewer_than_4_tumour_slices=np.asarray(computed.fewer_than_4_tumour_slices),
        warnings=np.asarray(computed.warnings, dtype=str),
    )
    default_storage.delete(entry.file.name)
    default_storage.save(entry.file.name, ContentFile(buffer.getvalue()))
    check_both_ways()


def test_missing_and_bad_images_say_why(cohort):
    no_mask = add_phantom_patient(cohort, phantom(1), with_mask=False)
    with pytest.raises(PreprocessError, match="no pancreas and tumour mask"):
        cache.preprocessed_for(no_mask, PreprocessConfig(input_size=32))
    without_images = make_patient(cohort, "NO-IMAGES")
    with pytest.raises(PreprocessError, match="no CT series is selected"):
        cache.preprocessed_for(without_images, PreprocessConfig(input_size=32))
    bad = add_phantom_patient(cohort, phantom(2), study_id="BAD", edit_mask=no_tumour)
    with pytest.raises(PreprocessError, match="tumour label"):
        cache.preprocessed_for(bad, PreprocessConfig(input_size=32))
    assert not PreprocessedPatient.objects.exists()
    assert cpu_preprocess_patient.delay(bad.pk).get()["error"].startswith("the tumour label")


def test_training_needs_enough_patients_of_each_class(cohort, members):
    make_imaged_cohort(cohort, n_metastatic=2, n_without=5)
    with pytest.raises(UserFacingError, match="at least 5 patients with and 5 without"):
        start_training(cohort, user=members["coordinator"], choices=TINY)
    assert not ModelVersion.objects.exists()


def test_train_then_score_end_to_end(
    cohort, members, client_for, django_capture_on_commit_callbacks
):
    # Each job is published when its transaction commits; the test's never does.
    started = django_capture_on_commit_callbacks
    coordinator = members["coordinator"]
    training_patients = make_imaged_cohort(cohort)
    # Left out of training with a reason: a labelled patient whose mask has no tumour.
    add_phantom_patient(cohort, phantom(30), study_id="BAD-MASK", label="no", edit_mask=no_tumour)
    # Not trained on (label unknown) and so scored by the ensemble: a normal one and one whose
    # tumour is too thin for 4 slices; one without a mask is listed as skipped.
    add_phantom_patient(cohort, phantom(31), study_id="UNKNOWN-1", label="unknown")
    add_phantom_patient(
        cohort, phantom(32), study_id="THIN", label="unknown", edit_mask=thin_tumour
    )
    add_phantom_patient(cohort, phantom(33), study_id="NO-MASK", label="unknown", with_mask=False)
    make_patient(cohort, "NO-IMAGES", metastasis_at_diagnosis="unknown")

    with started(execute=True):
        version = start_training(cohort, user=coordinator, choices=TINY, name="tiny-1")
    job = version.job
    job.refresh_from_db()
    version.refresh_from_db()
    assert job.status == "succeeded", job.error
    assert job.kind == "training" and job.cohort == cohort and job.progress == 100
    assert job.result["patients"] == 10 and job.result["metastatic"] == 5
    assert job.result["skipped"] == [
        {"study_id": "BAD-MASK", "reason": job.result["skipped"][0]["reason"]}
    ]
    assert "tumour label" in job.result["skipped"][0]["reason"]

    # The registry entry and its card.
    assert version.status == ModelVersion.Status.READY and not version.is_active
    assert version.is_synthetic == cohort.is_synthetic
    assert version.files == [f"models/{version.pk}/fold_{k}.pt" for k in range(5)]
    for name in version.files:
        assert default_storage.exists(name)
        card_file = json.loads(default_storage.open(name[:-3] + ".json").read())
        assert card_file["data_hash"] == version.data_hash
    assert len(version.thresholds) == 5
    assert set(version.thresholds[0]) >= {"fold", "slice_threshold", "patient_threshold"}
    assert set(version.metrics["pooled"]) >= {"slice_auroc", "patient_auroc_mrs", "accuracy"}
    assert [f["fold"] for f in version.metrics["folds"]] == [0, 1, 2, 3, 4]
    card = version.card
    assert card["data_hash"] == version.data_hash and len(version.data_hash) == 64
    assert card["code_version"] == version.code_version != ""
    assert card["model_config"]["depth"] == 10 and card["preprocess_config"]["input_size"] == 32
    assert card["train_config"]["max_epochs"] == 1 and card["n_folds"] == 5
    assert card["trained_on"]["cohort_id"] == cohort.pk and card["trained_on"]["n_patients"] == 10
    assert "Research use only" in card["intended_use"]
    held_out = sorted(sid for fold in card["folds"] for sid in fold["test_ids"])
    assert held_out == sorted(p.study_id for p in training_patients)
    assert all(fold["epochs_run"] == 1 and fold["history"] for fold in card["folds"])

    # Every training patient has its out-of-fold prediction, with Grad-CAM overlays.
    oof = PatientPrediction.objects.filter(model_version=version)
    assert oof.count() == 10 and {p.source for p in oof} == {"out_of_fold"}
    # ... and the fold that held it out (issue 11 item 2); the card holds the locked operating
    # point (item 1), whose fold thresholds reproduce every stored call.
    fold_of = {sid: fold["fold"] for fold in card["folds"] for sid in fold["test_ids"]}
    assert {p.patient.study_id: p.fold for p in oof} == fold_of
    point = operating_point_of(version)
    assert card["operating_point"] == version.operating_point and point is not None
    assert [(f.fold, f.slice_threshold, f.patient_threshold) for f in point.folds] == [
        (t["fold"], t["slice_threshold"], t["patient_threshold"]) for t in version.thresholds
    ]
    assert point.development_cohort == cohort.name and point.model_version == version.name
    for prediction in oof:
        assert reading_for(prediction).predicted_metastasis == prediction.predicted_metastasis
    for prediction in oof:
        assert 0.0 <= prediction.metastasis_risk_score <= 1.0
        assert prediction.mrs_std is None and len(prediction.slice_probabilities) == 1
        assert prediction.n_slices == 4 and len(prediction.gradcam_files) == 4
        assert all(default_storage.exists(name) for name in prediction.gradcam_files)
        assert set(prediction.site_probabilities) == {"none", "liver", "lung", "peritoneum"}
        assert prediction.input_hash and prediction.code_version
    # Training reused the cache: one entry per trained patient, none for the refused one.
    assert PreprocessedPatient.objects.filter(patient__cohort=cohort).count() == 10

    # Scoring: training patients keep their out-of-fold score; the others get the ensemble's.
    with started(execute=True):
        scoring = start_scoring(cohort, version, user=coordinator)
    scoring.refresh_from_db()
    assert scoring.status == "succeeded", scoring.error
    result = scoring.result
    assert result["patients"] == 14  # every patient with a CT
    assert result["kept_out_of_fold"] == 10 and result["scored"] == 2
    assert result["already_scored"] == 0
    assert result["fewer_than_4_tumour_slices"] == ["THIN"]
    # Where the scoring steps spent their time, summed over the parts (bench_scoring.py).
    steps = result["scoring_step_seconds"]
    assert set(steps) == {"prepare", "score_and_explain", "store"}
    assert steps["score_and_explain"] > 0 and steps["store"] > 0 and steps["prepare"] >= 0
    reasons = {row["study_id"]: row["reason"] for row in result["skipped"]}
    assert set(reasons) == {"BAD-MASK", "NO-MASK"}
    assert "no pancreas and tumour mask" in reasons["NO-MASK"]
    ensemble = {p.patient.study_id: p for p in PatientPrediction.objects.filter(source="ensemble")}
    assert set(ensemble) == {"UNKNOWN-1", "THIN"}
    normal, thin = ensemble["UNKNOWN-1"], ensemble["THIN"]
    assert len(normal.mrs_per_fold) == 5 and len(normal.slice_probabilities) == 5
    assert normal.mrs_min <= normal.metastasis_risk_score <= normal.mrs_max
    assert normal.mrs_std >= 0 and normal.n_slices == 4 and not normal.fewer_than_4_tumour_slices
    assert thin.fewer_than_4_tumour_slices and 1 <= thin.n_slices < 4
    assert len(thin.gradcam_files) == thin.n_slices == len(thin.slice_indices)

    # A re-run scores nobody again and duplicates nothing.
    before = {p.pk: p.updated_at for p in PatientPrediction.objects.all()}
    with started(execute=True):
        again = start_scoring(cohort, version, user=coordinator)
    again.refresh_from_db()
    assert again.result["scored"] == 0 and again.result["already_scored"] == 2
    assert {p.pk: p.updated_at for p in PatientPrediction.objects.all()} == before

    # New images for a patient change its input hash: the re-run updates its row in place.
    mask = CanonicalVolume.objects.get(patient=normal.patient, kind="mask")
    mask.content_hash = "0" * 64
    mask.save()
    with started(execute=True):
        third = start_scoring(cohort, version, user=coordinator)
    third.refresh_from_db()
    assert third.result["scored"] == 1 and third.result["already_scored"] == 1
    updated = PatientPrediction.objects.get(pk=normal.pk)
    assert updated.input_hash != normal.input_hash and updated.updated_at > normal.updated_at
    assert PatientPrediction.objects.count() == 12
    assert PatientPrediction.objects.filter(patient=normal.patient).count() == 1

    # What people see of it: the model card page, the patient section, the overlays.
    client = client_for(members["clinician"])
    page = client.get(f"/models/{version.pk}/")
    assert page.status_code == 200
    for text in (version.data_hash, version.code_version, "Pooled out-of-fold", "Fold 5"):
        assert text.encode() in page.content
    assert b"Research use only" in page.content and b"BAD-MASK" in page.content
    section = render_to_string(
        "inference/_patient_prediction.html",
        prediction_context(members["clinician"], normal.patient),
    )
    assert "tiny-1" in section and "their MRS ranges from" in section and "±" not in section
    assert "of 5 fold models above their thresholds" in section and "Liver" in section
    assert section.count("<img") == 4
    oof_section = render_to_string(
        "inference/_patient_prediction.html",
        prediction_context(members["clinician"], training_patients[0]),
    )
    assert "held this patient out, so the score is out-of-fold" in oof_section
    assert "(the one that held this patient out)" in oof_section
    thin_section = render_to_string(
        "inference/_patient_prediction.html", prediction_context(members["clinician"], thin.patient)
    )
    assert "Fewer than 4 tumour slices" in thin_section
    image = client.get(prediction_view(normal).slices[0].overlay_url)
    assert image["Content-Type"] == "image/png"
    assert b"".join(image.streaming_content).startswith(b"\x89PNG")


def test_scoring_refuses_a_version_that_is_not_ready(cohort, members):
    version = make_random_version(cohort)
    ModelVersion.objects.filter(pk=version.pk).update(status=ModelVersion.Status.TRAINING)
    version.refresh_from_db()
    with pytest.raises(UserFacingError, match="only a ready version"):
        start_scoring(cohort, version, user=members["coordinator"])


@pytest.mark.parametrize("stopped", ["failed", "cancelled"])
def test_a_training_job_that_stops_leaves_its_version_failed(cohort, stopped):
    """The engine's receiver of job_stopped (connected at start-up without importing the
    training code): a version whose training job failed or was cancelled is failed, not
    "training" forever; a scoring job's stop leaves its version as it was."""
    from pmpd_web.jobs.models import Job, JobStatus

    training = make_random_version(cohort)
    ModelVersion.objects.filter(pk=training.pk).update(status=ModelVersion.Status.TRAINING)
    scored = make_random_version(cohort, name="random-weights-2")
    for kind, version in ((Job.Kind.TRAINING, training), (Job.Kind.SCORING, scored)):
        job = Job.objects.create(
            kind=kind,
            cohort=cohort,
            status=JobStatus.RUNNING,
            parameters={"model_version": version.pk},
        )
        job.update_status(JobStatus(stopped), error="worker lost")
    training.refresh_from_db()
    scored.refresh_from_db()
    assert training.status == ModelVersion.Status.FAILED
    assert scored.status == ModelVersion.Status.READY


def test_a_second_scoring_of_the_same_cohort_and_version_waits_for_the_first(
    cohort, members, monkeypatch
):
    from inference import jobs
    from pmpd_web.accounts.models import AuditEvent
    from pmpd_web.jobs.models import Job, JobStatus

    version = make_random_version(cohort)
    first = jobs.create_scoring(cohort, version, user=members["coordinator"])
    with pytest.raises(
        UserFacingError, match=rf"already being scored .* \(job {first.pk}, queued\)"
    ):
        jobs.create_scoring(cohort, version, user=members["coordinator"])
    assert Job.objects.filter(kind=Job.Kind.SCORING).count() == 1
    # Another version of the same cohort is another job.
    other = make_random_version(cohort, name="random-weights-2")
    jobs.create_scoring(cohort, other, user=members["coordinator"])
    # Once the first has finished, the cohort can be scored with that version again.
    first.update_status(JobStatus.RUNNING)
    first.update_status(JobStatus.FAILED, error="worker lost")
    again = jobs.create_scoring(cohort, version, user=members["coordinator"])
    assert again.pk != first.pk
    assert AuditEvent.objects.filter(action="start_scoring").count() == 3
    event = AuditEvent.objects.filter(action="start_scoring").first()
    assert event.get_action_display() == "Started scoring"


def test_a_scoring_step_that_fails_while_storing_leaves_none_of_its_predictions(
    cohort, monkeypatch
):
    """The predictions of a scoring step are saved in one transaction: when saving one fails
    (a worker stopped, the database refused), none of the step's patients keeps a prediction,
    and the step run again scores them all."""
    from inference import scoring

    patients = [add_phantom_patient(cohort, phantom(index), label="unknown") for index in (0, 1)]
    version = make_random_version(cohort)
    payload = {"model_version": version.pk, "patients": [p.pk for p in patients]}
    real = scoring.upsert_prediction
    calls = []

    def second_fails(*args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            raise RuntimeError("the database went away")
        return real(*args, **kwargs)

    monkeypatch.setattr(scoring, "upsert_prediction", second_fails)
    with pytest.raises(RuntimeError, match="went away"):
        scoring.score_part(None, payload, None)
    assert len(calls) == 2 and not PatientPrediction.objects.filter(model_version=version).exists()
    monkeypatch.setattr(scoring, "upsert_prediction", real)
    result = scoring.score_part(None, payload, None)
    assert sorted(result["scored"]) == sorted(p.study_id for p in patients)
    assert PatientPrediction.objects.filter(model_version=version).count() == 2
