"""What the engine's management commands and the demo print: progress bars (tqdm) and the
summaries of a training and a scoring."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from typing import Any

from tqdm import tqdm

from .models import ModelVersion


@contextlib.contextmanager
def progress_bar(description: str) -> Iterator[Callable[[int, str], None]]:
    """A 0-100 % bar; yields the ``progress(percent, phrase)`` callback a job reports to."""
    with tqdm(
        total=100, desc=description, unit="%", bar_format="{l_bar}{bar}| {elapsed} {postfix}"
    ) as bar:

        def progress(percent: int, phrase: str) -> None:
            bar.set_postfix_str(phrase[:70], refresh=False)
            bar.update(max(0, min(100, int(percent))) - bar.n)

        yield progress
        bar.update(100 - bar.n)


def report_training(stdout: Any, version: ModelVersion, result: dict[str, Any]) -> None:
    """The end of a training, as the command and the demo print it."""
    pooled = version.metrics.get("pooled", {})
    auroc = pooled.get("patient_auroc_mrs")
    stdout.write(
        f"{version.name}: trained on {result['patients']} patients "
        f"({result['metastatic']} with metastasis) in {result['seconds']:.0f} s."
    )
    for row in result.get("skipped", []):
        stdout.write(f"  left out {row['study_id']}: {row['reason']}")
    stdout.write(
        "Out-of-fold patient-level AUROC (MRS): "
        + (f"{auroc:.3f}" if auroc is not None else "not defined (one class only)")
    )


def report_scoring(
    stdout: Any, cohort_name: str, version: ModelVersion, result: dict[str, Any]
) -> None:
    """The end of a scoring, as the command and the demo print it."""
    stdout.write(
        f"{cohort_name} with {version.name}: {result['scored']} scored, "
        f"{result['already_scored']} already up to date, {result['kept_out_of_fold']} keep "
        f"their out-of-fold score, of {result['patients']} patients with images."
    )
    if result["fewer_than_4_tumour_slices"]:
        stdout.write(
            "  fewer than 4 tumour slices (scored, flagged): "
            + ", ".join(result["fewer_than_4_tumour_slices"])
        )
    for row in result["skipped"]:
        stdout.write(f"  skipped {row['study_id']}: {row['reason']}")
