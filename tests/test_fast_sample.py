"""The fast loop's sample of a table test covers every endpoint and every user."""

from __future__ import annotations

from fast_sample import fast_sample

USERS = ["coordinator", "clinician", "statistician", "outsider", "nobody", "admin", "reader"]


def table(n_endpoints: int) -> list[dict[str, object]]:
    """An endpoint x user permission table as pytest parametrises it: the same entry (a tuple
    with a set in it) for every user."""
    endpoints = [(f"page {e}", {"coordinator"}) for e in range(n_endpoints)]
    return [{"endpoint": e, "username": u} for e in endpoints for u in USERS]


def test_an_endpoint_by_user_table_is_covered_by_its_diagonal():
    cases = table(8)
    kept = fast_sample(cases)
    assert {cases[p]["endpoint"][0] for p in kept} == {f"page {e}" for e in range(8)}
    assert {cases[p]["username"] for p in kept} == set(USERS)
    assert len(kept) == 8


def test_named_values_are_always_kept_and_the_rest_still_covered():
    cases = table(8)
    kept = fast_sample(cases, keep={"username": ["outsider"]})
    assert {p for p, case in enumerate(cases) if case["username"] == "outsider"} <= kept
    assert {cases[p]["username"] for p in kept} == set(USERS)
    assert len(kept) == 8 + 6


def test_a_long_table_is_sampled_every_nth_row_and_its_short_columns_covered():
    cases = [{"row": (r, ("X", "Z", "D")[r % 3])} for r in range(632)]
    cases = [{"row": row, "profile": row[1]} for row in (case["row"] for case in cases)]
    kept = fast_sample(cases, every=16)
    assert set(range(0, 632, 16)) <= kept
    assert {cases[p]["profile"] for p in kept} == {"X", "Z", "D"}
    assert len(kept) == 40


def test_without_cover_only_the_named_cases_are_kept():
    cases = [{"username": name} for name in USERS]
    assert fast_sample(cases, keep={"username": ["outsider"]}, cover=False) == {3}
