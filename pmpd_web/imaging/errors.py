"""The error of the ingest's pure modules: a message for the coordinator naming the file."""

from __future__ import annotations


class IngestError(Exception):
    """A problem with an uploaded file; ``label`` is the name it had in the upload."""

    def __init__(self, label: str, reason: str) -> None:
        self.label = label
        self.reason = reason
        super().__init__(f"{label}: {reason}" if label else reason)
