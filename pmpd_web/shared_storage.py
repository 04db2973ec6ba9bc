"""The media store shared by several hosts: an S3-compatible bucket through django-storages.

File-system storage under MEDIA_ROOT stays the embedded default. A site whose web, GPU and CPU
workers run on several hosts sets ``PMPD_S3_BUCKET`` (and ``PMPD_S3_ENDPOINT_URL`` for a
non-AWS store such as SeaweedFS, MinIO or Ceph; keys in ``AWS_ACCESS_KEY_ID`` and
``AWS_SECRET_ACCESS_KEY``): every file then goes through the bucket, and the workers keep local
copies only in their job's scratch folder. No Django import: the settings module uses it.
"""

from __future__ import annotations

from typing import Any

S3_BACKEND = "storages.backends.s3.S3Storage"


def s3_storage(
    *,
    bucket: str,
    endpoint_url: str = "",
    region: str = "",
    access_key: str = "",
    secret_key: str = "",
    addressing_style: str = "",
) -> dict[str, Any] | None:
    """The ``STORAGES["default"]`` entry for ``bucket``, or None without one (the file system
    then stays the store)."""
    if not bucket:
        return None
    return {
        "BACKEND": S3_BACKEND,
        "OPTIONS": {
            "bucket_name": bucket,
            "endpoint_url": endpoint_url or None,
            "region_name": region or None,
            "access_key": access_key or None,
            "secret_key": secret_key or None,
            # Self-hosted stores answer on one host name, not one per bucket.
            "addressing_style": addressing_style or ("path" if endpoint_url else "auto"),
            # As on a file system: a second file under a taken name gets a new name (the jobs
            # record what they wrote by name), and nothing is public.
            "file_overwrite": False,
            "default_acl": None,
            "querystring_auth": True,
        },
    }
