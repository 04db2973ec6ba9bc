"""The engine's pages and API endpoints, tried by every kind of user (the table style of
tests/accounts/test_permission_table.py), and who sees which model version.

Expectations are written out by hand: a change of the role map or of the registry's rules
that is not also made here fails.
"""

from __future__ import annotations

import pytest
from engine_fixtures import add_fake_images, make_prediction, make_ready_version
from factories import make_patient
from permission_table import EVERY_ROLE, USERS, C, K, S, assert_answer_for
from rest_framework.test import APIClient

from inference.models import ModelVersion
from pmpd_web.jobs.models import Job

pytestmark = pytest.mark.django_db

GRADCAM = "/cohorts/{cohort}/patients/SECRET-42/predictions/{prediction}/gradcam/0.png"

# (name, method, path template, roles allowed)
ENDPOINTS = [
    ("model page", "get", "/models/{version}/", EVERY_ROLE),
    ("model activate", "post", "/models/{version}/activate/", {C}),
    ("engine page", "get", "/cohorts/{cohort}/engine/", {C}),
    ("engine train", "post", "/cohorts/{cohort}/engine/train/", {C}),
    ("engine score", "post", "/cohorts/{cohort}/engine/score/", {C}),
    ("predictions page", "get", "/cohorts/{cohort}/predictions/", EVERY_ROLE),
    ("gradcam overlay", "get", GRADCAM, {C, K}),
    ("api model version", "get", "/api/model-versions/{version}/", EVERY_ROLE),
    ("api start training", "post", "/api/model-versions/", {C}),
    ("api activate", "post", "/api/model-versions/{version}/activate/", {C}),
    ("api predictions", "get", "/api/cohorts/{cohort}/predictions/", EVERY_ROLE),
    (
        "api patient predictions",
        "get",
        "/api/cohorts/{cohort}/patients/SECRET-42/predictions/",
        EVERY_ROLE,
    ),
    (
        "api gradcam overlay",
        "get",
        "/api/cohorts/{cohort}/predictions/{prediction}/gradcam/0/",
        {C, K},
    ),
    ("api score", "post", "/api/cohorts/{cohort}/score/", {C}),
]


@pytest.fixture
def queued(db):
    """The engine jobs the test started, oldest first, as (task, arguments): the job rows are
    the outbox (the test's transaction never commits, so nothing is sent to the gpu queue)."""
    before = Job.objects.order_by("-pk").values_list("pk", flat=True).first() or 0

    def started() -> list[tuple[str, tuple[int]]]:
        jobs = Job.objects.filter(pk__gt=before, task__startswith="inference.tasks.")
        return [(job.task, (job.pk,)) for job in jobs.order_by("pk")]

    return started


@pytest.fixture
def world(cohort, other_cohort, members, queued):
    secret = make_patient(cohort, "SECRET-42", centre="Hidden centre")
    # Enough labelled patients "with images" for a 5-fold training to be accepted.
    for index in range(10):
        patient = make_patient(
            cohort, f"TRAIN-{index}", metastasis_at_diagnosis="yes" if index < 5 else "no"
        )
        add_fake_images(patient)
    version = make_ready_version(cohort, name="pmpd-cohort-version", test_ids=["SECRET-42"])
    prediction = make_prediction(secret, version)
    hidden = make_ready_version(other_cohort, name="HIDDEN-VERSION")
    make_prediction(make_patient(other_cohort, "OTHER-7"), hidden)
    return {
        "cohort": cohort.pk,
        "version": version.pk,
        "prediction": prediction.pk,
        "hidden": hidden.pk,
    }


def payload(name: str, world: dict) -> tuple[dict | None, str | None]:
    tiny = {"depth": 10, "input_size": 32, "max_epochs": 1, "n_folds": 5, "seed": 0}
    if name == "engine train":
        return tiny, "multipart"
    if name == "api start training":
        return {"cohort": world["cohort"], **tiny}, "json"
    if name in ("engine score", "api score"):
        return {
            "model_version": world["version"]
        }, "multipart" if name == "engine score" else "json"
    return None, None


@pytest.mark.sample(keep={"username": ["outsider"]})
@pytest.mark.parametrize("username", USERS)
@pytest.mark.parametrize(
    ("name", "method", "path", "allowed"), ENDPOINTS, ids=[e[0] for e in ENDPOINTS]
)
def test_permission_table(world, members, queued, username, name, method, path, allowed):
    client = APIClient()
    client.force_login(members[username])
    url = path.format(**world)
    data, fmt = payload(name, world)
    response = (
        getattr(client, method)(url, data, format=fmt) if data else getattr(client, method)(url)
    )
    may = assert_answer_for(username, allowed, response, url)
    if not may:
        assert (
            b"SECRET-42" not in response.content and b"pmpd-cohort-version" not in response.content
        )
        assert queued() == []
    elif method == "post" and "activate" not in name:
        assert len(queued()) == 1


@pytest.mark.slow
@pytest.mark.parametrize(
    ("name", "method", "path", "allowed"), ENDPOINTS, ids=[e[0] for e in ENDPOINTS]
)
def test_anonymous_is_sent_to_login_or_refused(world, name, method, path, allowed):
    response = getattr(APIClient(), method)(path.format(**world))
    if path.startswith("/api/"):
        assert response.status_code == 401
    else:
        assert response.status_code == 302 and "/accounts/login/" in response["Location"]


# Who sees which version in the lists: members of the training cohort see its version; the
# outsider (coordinator of the other cohort) sees the other one; admins see both.
LIST_EXPECTATIONS = {
    C: {"pmpd-cohort-version"},
    K: {"pmpd-cohort-version"},
    S: {"pmpd-cohort-version"},
    "outsider": {"HIDDEN-VERSION"},
    "nobody": set(),
    "admin": {"pmpd-cohort-version", "HIDDEN-VERSION"},
}


@pytest.mark.slow
@pytest.mark.parametrize("username", USERS)
def test_model_lists_show_only_visible_versions(world, members, username):
    client = APIClient()
    client.force_login(members[username])
    names = {row["name"] for row in client.get("/api/model-versions/").json()["results"]}
    assert names == LIST_EXPECTATIONS[username]
    page = client.get("/models/")
    assert page.status_code == 200
    for name in ("pmpd-cohort-version", "HIDDEN-VERSION"):
        assert (name.encode() in page.content) == (name in LIST_EXPECTATIONS[username])
    assert b"Research use only" in page.content


def test_a_version_seen_through_a_scored_cohort_hides_the_training_patients(
    world, members, other_cohort, cohort
):
    # The cohort's version scores a patient of the other cohort: the outsider (coordinator
    # there) now sees the version, but neither the training cohort nor its study IDs.
    version = ModelVersion.objects.get(pk=world["version"])
    make_prediction(make_patient(other_cohort, "OTHER-8"), version)
    client = APIClient()
    client.force_login(members["outsider"])
    data = client.get(f"/api/model-versions/{version.pk}/").json()
    assert data["name"] == "pmpd-cohort-version"
    assert data["trained_on"] == "a cohort you are not a member of"
    assert "cohort_name" not in data["card"]["trained_on"]
    assert all("test_ids" not in fold for fold in data["card"]["folds"])
    page = client.get(f"/models/{version.pk}/")
    assert page.status_code == 200
    assert b"SECRET-42" not in page.content and cohort.name.encode() not in page.content
    # It may score its own cohort with it, and still not activate it.
    assert client.post(f"/api/model-versions/{version.pk}/activate/").status_code == 403
    # The members of the training cohort see the held-out study IDs.
    client.force_login(members[K])
    assert b"SECRET-42" in client.get(f"/models/{version.pk}/").content


def test_activation_keeps_one_active_version(world, members):
    client = APIClient()
    client.force_login(members["admin"])
    hidden = world["hidden"]
    assert client.post(f"/api/model-versions/{hidden}/activate/").json()["is_active"]
    client.force_login(members[C])
    response = client.post(f"/models/{world['version']}/activate/", follow=True)
    assert b"is now the active model version" in response.content
    assert list(ModelVersion.objects.filter(is_active=True).values_list("pk", flat=True)) == [
        world["version"]
    ]
    failed = make_ready_version(ModelVersion.objects.get(pk=world["version"]).trained_on, name="x")
    ModelVersion.objects.filter(pk=failed.pk).update(status=ModelVersion.Status.FAILED)
    refused = client.post(f"/api/model-versions/{failed.pk}/activate/")
    assert refused.status_code == 400 and "Only a ready model version" in refused.json()["detail"]


@pytest.mark.slow
def test_starting_jobs_from_the_page_and_the_api(world, members, queued, cohort):
    client = APIClient()
    client.force_login(members[C])
    response = client.post(
        f"/cohorts/{cohort.pk}/engine/train/",
        {
            "name": "from-the-page",
            "depth": 10,
            "input_size": 64,
            "max_epochs": 2,
            "n_folds": 5,
            "seed": 1,
            "early_stopping": "none",
        },
    )
    assert response.status_code == 302
    version = ModelVersion.objects.get(name="from-the-page")
    assert version.status == "training" and version.job.kind == "training"
    assert version.config["train"]["model"]["depth"] == 10
    assert version.config["train"]["early_stopping_metric"] == "none"
    through_api = client.post(
        "/api/model-versions/",
        {
            "cohort": cohort.pk,
            "name": "from-the-api",
            "depth": 10,
            "input_size": 64,
            "early_stopping": "auroc",
        },
        format="json",
    )
    assert through_api.status_code == 202, through_api.content
    api_version = ModelVersion.objects.get(name="from-the-api")
    assert api_version.config["train"]["early_stopping_metric"] == "auroc"
    wrong = client.post(
        "/api/model-versions/",
        {"cohort": cohort.pk, "name": "x2", "early_stopping": "sometimes"},
        format="json",
    )
    assert wrong.status_code == 400 and "early_stopping" in wrong.json()
    assert version.config["preprocess"]["input_size"] == 64
    assert queued()[0] == ("inference.tasks.gpu_train_model", (version.job_id,))
    assert version.job.parameters == {"model_version": version.pk}
    page = client.get(f"/cohorts/{cohort.pk}/engine/")
    assert b"from-the-page" in page.content and b'role="progressbar"' in page.content
    # Refusals come back as messages, not errors.
    taken = client.post(
        "/api/model-versions/", {"cohort": cohort.pk, "name": "from-the-page"}, format="json"
    )
    assert taken.status_code == 400 and "exists" in taken.json()["detail"]
    bad = client.post(f"/cohorts/{cohort.pk}/engine/train/", {"depth": 11, "input_size": 8})
    assert bad.status_code == 400
    # Scoring without naming a version needs an active one.
    assert client.post(f"/api/cohorts/{cohort.pk}/score/", {}, format="json").status_code == 400
    ModelVersion.objects.filter(pk=world["version"]).update(is_active=True)
    started = client.post(f"/api/cohorts/{cohort.pk}/score/", {}, format="json")
    assert started.status_code == 202 and started.json()["kind"] == "scoring"
    assert queued()[-1] == ("inference.tasks.gpu_score_cohort", (started.json()["id"],))
    assert started.json()["parameters"] == {"model_version": world["version"]}
    # Another cohort's version is not a choice, even by primary key.
    hidden = client.post(
        f"/api/cohorts/{cohort.pk}/score/", {"model_version": world["hidden"]}, format="json"
    )
    assert hidden.status_code == 400
