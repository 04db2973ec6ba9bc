"""The fast loop's sample of a table test (``@pytest.mark.sample``).

A table test (a permission table: every endpoint asked by every kind of user; the 632 rows of
DICOM PS3.15 Table E.1-1) is parametrised over the whole table. ``make test`` runs every case;
``make test-fast`` runs a sample: each case left out is marked ``slow``. The sample is chosen
from the parameters alone, so every process (pytest-xdist's workers) chooses the same one:

* every value of every parameter appears in at least one kept case (each endpoint, each user),
  preferring cases whose values are all new (the diagonal of an endpoint x user table, not one
  endpoint asked by everybody);
* cases with a value named in ``keep`` (``keep={"username": ["outsider"]}``: the user of
  another cohort, who must learn nothing, asks every endpoint) are always kept;
* ``every=n`` keeps every n-th case besides; a parameter with more than ``COVER_LIMIT``
  values (the rows of a long table) is sampled that way, not covered value by value;
* ``cover=False`` keeps only what ``keep`` and ``every`` name (a table whose every case is
  long: the dashboards asked by each user).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

# A parameter with more values than this is not covered value by value.
COVER_LIMIT = 24


def fast_sample(
    values: Sequence[Mapping[str, object]],
    *,
    keep: Mapping[str, Sequence[object]] | None = None,
    every: int | None = None,
    cover: bool = True,
) -> set[int]:
    """The positions of the kept cases; ``values[i]`` maps each parameter of case ``i`` to its
    value (pytest's ``callspec.params``). Values are told apart by their ``repr``: the same
    table entry gives the same text in one process, so every process keeps the same cases."""
    cases = [{name: repr(value) for name, value in case.items()} for case in values]
    wanted_values = keep or {}

    def named(position: int) -> bool:
        return any(values[position].get(name) in wanted for name, wanted in wanted_values.items())

    kept = {
        position
        for position in range(len(cases))
        if named(position) or (every and position % every == 0)
    }
    names = {name for case in cases for name in case} if cover else set()
    dimensions = {name for name in names if len({case.get(name) for case in cases}) <= COVER_LIMIT}
    seen = {(name, cases[p][name]) for p in kept for name in dimensions if name in cases[p]}

    def new_values(case: Mapping[str, str]) -> list[bool]:
        return [(name, index) not in seen for name, index in case.items() if name in dimensions]

    for wanted in (all, any):
        for position, case in enumerate(cases):
            fresh = new_values(case)
            if fresh and wanted(fresh):
                kept.add(position)
                seen.update((name, index) for name, index in case.items() if name in dimensions)
    return kept
