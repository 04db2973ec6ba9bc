"""What an ingest writes to storage before its commit: every name is remembered so that a
failed ingest deletes it again, and the canonical volumes compress in worker threads."""

from __future__ import annotations

from collections.abc import Iterable
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
from django.core.files import File
from django.core.files.storage import default_storage

from pmpd_web.jobs.files import save_all_recorded, save_recorded

from ..volumes import Grid, write_nifti

# Files produced and not yet written (a series' instance is ~0.5 MB): enough to keep the writer
# busy, little memory.
WRITES_IN_FLIGHT = 4


class Staging:
    """Storage names written by this ingest: deleted again when it fails, and recorded on its
    job until the commit references them, so that the next attempt or the sweeper deletes
    them when the worker is killed (``pmpd_web.jobs.files``)."""

    def __init__(self, job_id: int | None) -> None:
        self.job_id = job_id
        self.names: list[str] = []

    def save(self, name: str, content: File) -> str:
        saved = save_recorded(self.job_id, name, content)
        self.names.append(saved)
        return saved

    def save_all(self, names: list[str], contents: Iterable[File]) -> list[str]:
        """Save many files (``contents`` may be a generator), their names recorded at once;
        a writer thread writes each file while the generator produces the next ones."""
        start = len(self.names)
        save_all_recorded(self.job_id, names, contents, self.names, in_flight=WRITES_IN_FLIGHT)
        return self.names[start:]

    def discard(self) -> None:
        for name in self.names:
            default_storage.delete(name)
        self.names.clear()


class _ScratchFile(File):
    """A finished file in the scratch folder: the file-system storage moves it into place
    instead of copying it."""

    def temporary_file_path(self) -> str:
        return self.name


class VolumeWriter:
    """Writes canonical NIfTI volumes in worker threads (zlib releases the GIL) while the main
    thread goes on with the DICOM work; ``store`` saves the finished files to storage."""

    def __init__(self, pool: ThreadPoolExecutor, scratch: Path, *, level: int) -> None:
        self.pool = pool
        self.scratch = scratch
        self.level = level
        self.pending: list[tuple[Future, str, Any, Path]] = []
        self.count = 0

    def submit(
        self, array: np.ndarray, grid: Grid, stem: str, owner: Any, *, level: int | None = None
    ) -> None:
        """Start writing ``array`` for ``owner`` to ``stem`` + .nii.gz, or + .nii when the gzip
        level (``level``, else the writer's) is 0; ``store`` sets the owner's ``volume_name``."""
        level = self.level if level is None else level
        suffix = ".nii" if level == 0 else ".nii.gz"
        name = stem + suffix
        self.count += 1
        target = self.scratch / f"volume-{self.count}{suffix}"
        future = self.pool.submit(write_nifti, array, grid, target, compression_level=level)
        self.pending.append((future, name, owner, target))

    def store(self, staging: Staging) -> None:
        for future, name, owner, target in self.pending:
            future.result()
            with _ScratchFile(open(target, "rb"), name=str(target)) as content:
                owner.volume_name = staging.save(name, content)
        self.pending.clear()
