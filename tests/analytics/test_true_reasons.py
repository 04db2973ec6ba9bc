"""Issue 11 item 8: a result that cannot be computed says the true reason (pure, no database)."""

from __future__ import annotations

import numpy as np
import pandas as pd

from analytics.stats import adjusted_cox, cox_regression


def frame(n: int = 40) -> pd.DataFrame:
    rng = np.random.default_rng(5)
    return pd.DataFrame(
        {
            "days": rng.integers(20, 900, n).astype(float),
            "death": rng.integers(0, 2, n).astype(float),
            "age": rng.normal(65, 8, n),
            "ca19_9_group": [None] * n,
            "nccn_resectability": [None] * n,
            "centre": [None] * n,
        }
    )


def test_empty_model_variables_are_named_not_the_follow_up():
    result = cox_regression(
        frame(),
        duration_col="days",
        event_col="death",
        variables=["ca19_9_group", "nccn_resectability"],
    )
    assert result.reason == (
        "ca19_9_group, nccn_resectability are empty for all 40 patients with a follow-up time "
        "and vital status"
    )
    assert "no patient has a follow-up time" not in result.reason


def test_missing_follow_up_is_still_reported_as_such():
    data = frame().assign(days=np.nan)
    result = cox_regression(data, duration_col="days", event_col="death", variables=["age"])
    assert result.reason == "no patient has a follow-up time and vital status (40 incomplete rows)"


def test_an_empty_centre_is_not_a_single_value():
    result = adjusted_cox(
        frame(), duration_col="days", event_col="death", variables=["age"], adjust_for=["centre"]
    )
    assert "not adjusted for centre: no value recorded in the analysed patients" in result.notes
    alone = cox_regression(
        frame().assign(centre=lambda f: np.where(f.index < 20, None, None)),
        duration_col="days",
        event_col="death",
        variables=["centre"],
        categorical=["centre"],
    )
    assert "single value" not in alone.reason and "centre" in alone.reason
