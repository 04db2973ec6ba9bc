"""maxstat's corrected p-values (issue 11 item 4) against maxstat's own saved example output.

Reference: tests/Examples/maxstat-Ex.Rout.save of the CRAN package maxstat (R 2.15.3 run,
shipped with the package): ``maxstat.test(Surv(month, cens) ~ EF, data = hohnloser,
smethod = "LogRank", pmethod = "Lau92" / "Lau94")`` prints M = 3.5691, estimated cutpoint 39,
p = 0.01065 (Lau92) and 0.005453 (Lau94); ``pLausen94(2.5, 20, 0.25, 0.75)`` rounds to 0.073
(Lausen 1994, p. 489, checked in the same file) and ``qLausen92`` reproduces Table 2 of Lausen
& Schumacher (1992). The hohnloser data (60 patients: ejection fraction, months, event) are
maxstat's data/hohnloser.txt.
"""

from __future__ import annotations

import numpy as np
import pytest
from scipy.optimize import brentq

from analytics.stats import maxstat_cutpoint
from analytics.stats.cutpoints import lausen92_p_value, lausen94_p_value

HOHNLOSER = """
11 1 0|11 5 1|12 14 0|13 2 1|13 10 0|13 39 0|15 16 1|17 17 0|20 1 1|20 1 1|20 1 1|20 8 1
20 29 0|21 22 1|22 1 0|22 3 0|22 11 1|22 15 0|23 13 0|24 1 0|24 1 0|24 3 1|24 5 1|24 7 1
24 11 0|24 33 0|25 3 1|25 16 1|26 1 1|26 13 0|26 23 0|27 20 0|28 12 0|30 1 0|30 1 1|31 18 1
31 20 0|32 23 0|33 9 1|33 12 0|33 17 0|33 21 0|34 1 0|34 5 1|34 14 1|34 38 0|36 6 0|37 1 1
38 3 1|38 12 0|38 18 0|39 8 1|40 19 0|41 3 0|41 10 0|41 15 1|43 19 0|43 31 0|43 33 0|44 23 0
44 24 0|49 5 0|50 13 0|51 4 1|51 21 0|51 28 0|52 3 0|52 16 0|52 37 0|56 1 0|56 3 1|56 33 0
57 23 0|57 29 0|58 5 1|58 9 0|58 36 0|59 19 1|60 1 0|60 10 0|61 7 0|64 1 0|64 6 0|64 7 0
64 14 0|65 6 0|70 5 0|70 23 0|72 36 0|75 30 0|77 10 0|77 20 0|80 7 0|93 22 0
"""


def _hohnloser() -> np.ndarray:
    rows = [row.split() for row in HOHNLOSER.replace("\n", "|").split("|") if row.strip()]
    return np.array(rows, dtype=float)


def test_hohnloser_matches_maxstat_lau92_and_lau94():
    data = _hohnloser()
    assert data.shape == (94, 3)
    ejection_fraction, months, event = data[:, 0], data[:, 1], data[:, 2]
    cut = maxstat_cutpoint(months, event, ejection_fraction, minprop=0.1, maxprop=0.9)
    assert cut.cutpoint == 39
    assert cut.statistic == pytest.approx(3.5691, abs=5e-5)
    assert cut.p_value_lau92 == pytest.approx(0.01065, abs=5e-6)
    assert cut.p_value_lau94 == pytest.approx(0.005453, abs=5e-7)
    # the uncorrected p of the chosen split is smaller than any corrected one
    assert cut.p_value_uncorrected == pytest.approx(2 * 0.000179, rel=0.05)
    assert cut.p_value_uncorrected < cut.p_value_lau94 < cut.p_value_lau92


def test_lausen94_published_value_and_same_grid():
    assert round(lausen94_p_value(2.5, 20, minprop=0.25, maxprop=0.75), 3) == 0.073
    on_grid = lausen94_p_value(2.5, 200, group_sizes=np.arange(50, 151, 10))
    assert round(on_grid, 3) == 0.073


@pytest.mark.parametrize(
    ("alpha", "minprop", "maxprop", "quantile"),
    [(0.05, 0.1, 0.9, 3.054), (0.01, 0.25, 0.75, 3.395), (0.1, 0.4, 0.6, 2.263)],
)
def test_lausen92_reproduces_lausen_schumacher_table_2(alpha, minprop, maxprop, quantile):
    found = brentq(
        lambda b: lausen92_p_value(b, minprop=minprop, maxprop=maxprop) - alpha, 1.5, 6.0
    )
    assert round(found, 3) == quantile


def test_cutpoint_table_labels_the_uncorrected_p():
    data = _hohnloser()
    cut = maxstat_cutpoint(data[:, 1], data[:, 2], data[:, 0])
    columns = " ".join(cut.to_frame().columns)
    assert "UNCORRECTED" in columns and "Lau94" in columns


@pytest.mark.slow
def test_the_log_rank_p_of_groups_cut_on_the_same_data_says_it_is_uncorrected():
    from analytics.catalogue import Results, entries
    from analytics.stats import run_full_analysis, synthetic_cohort

    analysis = run_full_analysis(synthetic_cohort(300, seed=2))
    note = analysis.mrs_split_note
    assert note.startswith("log-rank p UNCORRECTED") and "Lau94" in note
    items = {(e.kind, e.name): e for e in entries(Results(False, analysis), ["survival"])}
    table = items[("table", "logrank")].frame().set_index("grouping")
    assert table.loc["mrs_group", "note"] == note and table.loc["ca19_9_group", "note"] == ""
    figure = items[("figure", "km-mrs-group")].figure()
    p_value = [a.text for a in figure.layout.annotations if a.name == "p-value"][0]
    assert "UNCORRECTED" in p_value
    other = items[("figure", "km-ca19-9-group")].figure()
    assert "UNCORRECTED" not in [a.text for a in other.layout.annotations if a.name == "p-value"][0]
