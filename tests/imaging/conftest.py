"""The table of the real-file corpus' outcomes, at the end of the test output."""

from __future__ import annotations

import corpus_outcomes


def pytest_terminal_summary(terminalreporter):
    if corpus_outcomes.OUTCOMES:
        terminalreporter.section("real-file corpus: outcomes")
        for line in corpus_outcomes.table():
            terminalreporter.write_line(line)
