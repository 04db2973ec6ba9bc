"""The per-cohort permission tables of the tests: who is asked, and what each answer must be."""

from __future__ import annotations

from typing import Any

C, K, S = "coordinator", "clinician", "statistician"
EVERY_ROLE = {C, K, S}
# Readers (radiologists) view images and annotate; tables that concern images ask them too.
R = "reader"
# The three roles, a user of another cohort, a user of none, and the site admin.
USERS = [C, K, S, "outsider", "nobody", "admin"]


def assert_answer_for(username: str, allowed: set[str], response: Any, url: str) -> bool:
    """The admin and the allowed roles succeed (a redirect never to the login page), the other
    roles of the cohort get 403, everyone else 404: they learn nothing, not even that the
    cohort exists. Returns whether the user may."""
    may = username == "admin" or username in allowed
    if may:
        assert response.status_code in (200, 201, 202, 204, 302), (url, response.status_code)
        if response.status_code == 302:
            assert "/accounts/login" not in response["Location"]
    elif username in EVERY_ROLE | {R}:
        assert response.status_code == 403, (url, response.status_code)
    else:
        assert response.status_code == 404, (url, response.status_code)
    return may
