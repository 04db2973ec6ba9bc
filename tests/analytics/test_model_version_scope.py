"""Issue 9 item 4: a model version id taken from a user is resolved through the rule of
/api/model-versions/<id>/ (``inference.registry.model_version_for``) on every page and endpoint.

Cohort B's statistician asking B's analytics with a version trained and scored only on cohort A
gets 404, exactly as for an id that does not exist, and never the version's name.
"""

from __future__ import annotations

import pytest
from engine_fixtures import make_ready_version
from factories import make_user
from rest_framework.test import APIClient
from scored import make_scored_cohort

from pmpd_web.accounts.models import Membership, Role

pytestmark = pytest.mark.django_db

Q = "cohort={cohort}&model_version={version}"
ENDPOINTS = [
    "/analytics/evaluation/?" + Q,
    "/analytics/survival/?" + Q,
    "/analytics/cox/?" + Q,
    "/analytics/development/?" + Q,
    "/analytics/subgroups/?" + Q,
    "/analytics/survival/figures/km-risk-group.csv?" + Q,
    "/analytics/cox/tables/c-index.csv?" + Q,
    "/analytics/evaluation/tables/classification.xlsx?" + Q,
    "/analytics/report.html?" + Q,
    "/cohorts/{cohort}/patients/B-00001/risk/?model_version={version}",
    "/api/analytics/evaluation/?" + Q,
    "/api/analytics/survival/?" + Q,
    "/api/analytics/cox/?" + Q,
    "/api/analytics/development/?" + Q,
    "/api/analytics/subgroups/?" + Q,
    "/api/analytics/analysis/?" + Q,
    "/api/analytics/cohorts/{cohort}/patients/B-00001/risk/?model_version={version}",
    "/api/cohorts/{cohort}/predictions/?model_version={version}",
    "/api/cohorts/{cohort}/patients/B-00001/predictions/?model_version={version}",
    "/models/{version}/",
    "/api/model-versions/{version}/",
]


@pytest.fixture
def world(cohort, other_cohort):
    """Cohort B (``cohort``) scored by its own version; cohort A (``other_cohort``) by a version
    trained on A alone. The statistician of B is no member of A."""
    own = make_ready_version(cohort, name="version-of-B")
    make_scored_cohort(cohort, own, 30, prefix="B")
    foreign = make_ready_version(other_cohort, name="SECRET-VERSION-OF-A")
    make_scored_cohort(other_cohort, foreign, 30, prefix="A")
    statistician = make_user("statistician-b")
    Membership.objects.create(user=statistician, cohort=cohort, role=Role.STATISTICIAN)
    return {"cohort": cohort.pk, "own": own.pk, "foreign": foreign.pk, "user": statistician}


@pytest.mark.slow
def test_another_cohorts_model_version_is_404_everywhere(world):
    client = APIClient()
    client.force_login(world["user"])
    wrong = []
    for path in ENDPOINTS:
        for version, expected in ((world["own"], 200), (world["foreign"], 404), (999999, 404)):
            response = client.get(path.format(cohort=world["cohort"], version=version))
            if response.status_code != expected:
                wrong.append((path, version, response.status_code, expected))
            if b"SECRET-VERSION-OF-A" in response.content:
                wrong.append((path, version, "names the foreign version"))
    assert not wrong, wrong
