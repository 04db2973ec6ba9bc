"""The outcomes of the real-file corpus (tests/imaging/test_corpus.py), printed as a table at
the end of the run by tests/imaging/conftest.py."""

from __future__ import annotations

OUTCOMES: list[tuple[str, str]] = []


def record(case: str, outcome: str) -> None:
    OUTCOMES.append((case, outcome))


def table() -> list[str]:
    width = max((len(case) for case, _ in OUTCOMES), default=0)
    lines = [f"{'file or series'.ljust(width)}  outcome", f"{'-' * width}  -------"]
    lines += [f"{case.ljust(width)}  {outcome}" for case, outcome in OUTCOMES]
    return lines
