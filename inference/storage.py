"""Files of the engine in Django's storage: local copies for the readers that need a path, and
writes that replace what a re-run left under the same name.

Everything the engine keeps goes through ``default_storage`` (MEDIA_ROOT by default, an
S3-compatible bucket where a site configures one):

    preprocessed/<patient id>/<input hash>.npz         the preprocessing cache
    models/<model version id>/fold_<k>.pt, .json        fold checkpoints and model cards
    predictions/<model version id>/<patient id>/...     Grad-CAM overlays (PNG)
"""

from __future__ import annotations

import contextlib
import math
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path, PurePosixPath
from typing import Any

from django.core.files.base import ContentFile, File
from django.core.files.storage import default_storage

from pmpd_web.jobs.files import current_scratch


@contextlib.contextmanager
def local_path(name: str) -> Iterator[Path]:
    """A local file path holding the stored file ``name``.

    File-system storage yields the file itself; other storages (an S3 bucket) a temporary
    copy in the running job's scratch folder (keeping the name's suffixes, so ``.nii.gz``
    stays readable by SimpleITK), deleted on exit.
    """
    try:
        yield Path(default_storage.path(name))
        return
    except NotImplementedError:
        pass
    suffix = "".join(PurePosixPath(name).suffixes)
    with tempfile.TemporaryDirectory(prefix="pmpd-", dir=current_scratch()) as folder:
        target = Path(folder) / f"copy{suffix}"
        with default_storage.open(name, "rb") as source, target.open("wb") as sink:
            shutil.copyfileobj(source, sink, length=4 * 1024 * 1024)
        yield target


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
