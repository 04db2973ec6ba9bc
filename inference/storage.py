"""Files of the engine in Django's storage: local copies for the readers that need a path, and
writes that replace what a re-run left under the same name.

Everything the engine keeps goes through ``default_storage`` (MEDIA_ROOT by default, an
S3-compatible bucket where a site configures one):

    preprocessed/<patient id>/<input hash>.npz         the preprocessing cache
    models/<model version id>/fold_<k>.pt, .json        fold checkpoints and model cards
    predictions/<model version id>/<patient id>/...     Grad-CAM overlays (PNG)
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from django.core.files.base import ContentFile, File
from django.core.files.storage import default_storage

from pmpd_web.imaging.patient_viewer import stored_file_path

# A local path for readers that need one (SimpleITK, torch.load); shared with the imaging app.
local_path = stored_file_path


def replace_file(name: str, content: bytes | File) -> str:
    """Store ``content`` under exactly ``name``, replacing a file a previous run left there.

    Storages rename on collision, so the old file goes first: a re-run then overwrites
    instead of accumulating copies. Returns the stored name.
    """
    if default_storage.exists(name):
        default_storage.delete(name)
    if isinstance(content, bytes):
        content = ContentFile(content)
    return default_storage.save(name, content)


def store_local_file(name: str, path: Path) -> str:
    """Copy a local file into storage under ``name`` (replacing); returns the stored name."""
    with path.open("rb") as handle:
        return replace_file(name, File(handle))


def json_safe(value: Any) -> Any:
    """``value`` with NaN and infinities replaced by None, recursively.

    JSON has no NaN (PostgreSQL's jsonb refuses it) and metrics are NaN when undefined, e.g. an
    AUROC on a fold with one class only.
    """
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {str(key): json_safe(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [json_safe(item) for item in value]
    if hasattr(value, "item") and callable(value.item):  # numpy scalars
        return json_safe(value.item())
    return value
