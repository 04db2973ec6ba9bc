"""An uploaded file's chunks as the parts of one S3 multipart upload, where the media store is
an S3-compatible bucket (``pmpd_web.shared_storage``).

S3 refuses a part under 5 MiB unless it is the last one. The browser sends 8 MiB chunks, each
of which becomes a part as it arrives; smaller chunks (API clients choose their size) are kept
as ordinary objects until 5 MiB have gathered, then sent together as one part and deleted. The
last chunk completes the upload: the file is then one object, and nothing else remains. A
multipart upload that no receiving file refers to any more (its upload expired, failed or was
cancelled, or its transaction rolled back) is aborted, so no invisible parts are kept.
"""

from __future__ import annotations

import contextlib
from datetime import datetime
from typing import Any

from django.core.exceptions import ImproperlyConfigured
from django.core.files.storage import default_storage

#: S3's smallest part but the last (5 MiB).
PART_MIN_BYTES = 5 * 1024 * 1024


def bucket_storage() -> Any | None:
    """The default storage when it is an S3 bucket (django-storages), else None."""
    try:
        from storages.backends.s3 import S3Storage
    except (ImportError, ImproperlyConfigured):
        # A trimmed install (no django-storages, or no boto3: django-storages then raises
        # ImproperlyConfigured) has no bucket, and its default storage is not one.
        return None
    return default_storage if isinstance(default_storage, S3Storage) else None


def _client(storage: Any) -> Any:
    return storage.connection.meta.client


def _key(storage: Any, name: str) -> str:
    from storages.utils import clean_name

    return storage._normalize_name(clean_name(name))


def start(storage: Any, name: str) -> dict[str, Any]:
    """Begin the multipart upload of a file to be stored as ``name`` (made unique as the
    storage makes every name); returns its state: name, key, upload ID, no part yet."""
    name = storage.get_available_name(name)
    key = _key(storage, name)
    answer = _client(storage).create_multipart_upload(
        Bucket=storage.bucket_name,
        Key=key,
        ContentType="application/octet-stream",
        **storage.get_object_parameters(name),
    )
    return {"name": name, "key": key, "upload_id": answer["UploadId"], "parts": []}


def add_part(storage: Any, state: dict[str, Any], body: bytes) -> dict[str, Any]:
    """``state`` with ``body`` sent as its next part. Sending a part again under its number
    (a retried request) replaces it."""
    number = len(state["parts"]) + 1
    answer = _client(storage).upload_part(
        Bucket=storage.bucket_name,
        Key=state["key"],
        UploadId=state["upload_id"],
        PartNumber=number,
        Body=body,
    )
    return {**state, "parts": [*state["parts"], [number, answer["ETag"]]]}


def complete(storage: Any, state: dict[str, Any]) -> str:
    """Join the parts into one object; returns its storage name."""
    _client(storage).complete_multipart_upload(
        Bucket=storage.bucket_name,
        Key=state["key"],
        UploadId=state["upload_id"],
        MultipartUpload={
            "Parts": [{"PartNumber": number, "ETag": etag} for number, etag in state["parts"]]
        },
    )
    return state["name"]


def abort(storage: Any, state: dict[str, Any]) -> None:
    """Abort the multipart upload: S3 deletes its parts. Aborting one already gone is fine."""
    client = _client(storage)
    with contextlib.suppress(client.exceptions.NoSuchUpload):
        client.abort_multipart_upload(
            Bucket=storage.bucket_name, Key=state["key"], UploadId=state["upload_id"]
        )


def abort_abandoned(
    storage: Any, *, prefix: str, started_before: datetime, keep: set[str]
) -> list[str]:
    """Abort the multipart uploads under ``prefix`` begun before ``started_before`` whose
    upload ID is not in ``keep`` (the ones receiving files still write to); returns their keys."""
    client = _client(storage)
    aborted: list[str] = []
    paginator = client.get_paginator("list_multipart_uploads")
    for page in paginator.paginate(Bucket=storage.bucket_name, Prefix=_key(storage, prefix)):
        for upload in page.get("Uploads", []):
            if upload["UploadId"] in keep or upload["Initiated"] >= started_before:
                continue
            abort(storage, {"key": upload["Key"], "upload_id": upload["UploadId"]})
            aborted.append(upload["Key"])
    return aborted
