"""Orthanc with its DICOMweb plugin (Debian's ``orthanc`` and ``orthanc-dicomweb``) as the
peer the platform's DICOMweb is compared with: started on a free port of 127.0.0.1 with a
configuration in a temporary folder, stopped by the process it started.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import requests

ORTHANC_PLUGIN = Path("/usr/share/orthanc/plugins/libOrthancDicomWeb.so")
DICOMWEB_ROOT = "/dicom-web"


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def wait_until_up(url: str, process: subprocess.Popen, log: Path, timeout: float = 90) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"{url} exited early:\n{log.read_text()[-3000:]}")
        with contextlib.suppress(requests.ConnectionError, requests.Timeout):
            if requests.get(url, timeout=30).status_code < 500:
                return
        time.sleep(0.3)
    raise RuntimeError(f"{url} did not answer within {timeout} s:\n{log.read_text()[-3000:]}")


@contextlib.contextmanager
def running(command: list[str], *, url: str, log: Path, env: dict | None = None, cwd=None):
    """``command`` running until the block ends, once ``url`` answers."""
    with log.open("w") as output:
        process = subprocess.Popen(
            command, cwd=cwd, env=env, stdout=output, stderr=subprocess.STDOUT
        )
        try:
            wait_until_up(url, process, log)
            yield process
        finally:
            process.terminate()
            try:
                process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


def orthanc_binary() -> str | None:
    """The Orthanc binary when both Debian packages are installed, else None."""
    binary = shutil.which("Orthanc") or (
        "/usr/sbin/Orthanc" if Path("/usr/sbin/Orthanc").exists() else None
    )
    return binary if binary and ORTHANC_PLUGIN.exists() else None


def install_orthanc() -> str:
    """The Orthanc binary, installed with apt-get when missing (needs root)."""
    if binary := orthanc_binary():
        return binary
    print("installing orthanc and orthanc-dicomweb with apt-get ...", flush=True)
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    subprocess.run(["apt-get", "update", "-q"], check=True, env=env, stdout=subprocess.DEVNULL)
    subprocess.run(
        ["apt-get", "install", "-y", "-q", "orthanc", "orthanc-dicomweb"],
        check=True,
        env=env,
        stdout=subprocess.DEVNULL,
    )
    binary = orthanc_binary()
    if binary is None:
        raise RuntimeError("apt-get installed orthanc, but no Orthanc binary or plugin is found")
    return binary


@contextlib.contextmanager
def running_orthanc(binary: str, folder: Path) -> Iterator[str]:
    """Orthanc serving DICOMweb from ``folder`` (its storage, index, configuration and log);
    yields its base URL (the DICOMweb root is ``DICOMWEB_ROOT`` under it)."""
    folder.mkdir(parents=True, exist_ok=True)
    port = free_port()
    config = folder / "orthanc.json"
    config.write_text(
        json.dumps(
            {
                "Name": "pmpd-peer",
                "StorageDirectory": str(folder / "storage"),
                "IndexDirectory": str(folder / "storage"),
                "HttpPort": port,
                "DicomServerEnabled": False,
                "RemoteAccessAllowed": False,
                "AuthenticationEnabled": False,
                "HttpCompressionEnabled": False,
                "Plugins": [str(ORTHANC_PLUGIN)],
                "DicomWeb": {"Enable": True, "Root": f"{DICOMWEB_ROOT}/"},
            }
        )
    )
    url = f"http://127.0.0.1:{port}"
    with running([binary, str(config)], url=f"{url}/system", log=folder / "orthanc.log"):
        yield url


def store_in_orthanc(url: str, files: list[bytes]) -> None:
    """POST each DICOM file to Orthanc's /instances."""
    with requests.Session() as session:
        for data in files:
            session.post(f"{url}/instances", data=data, timeout=60).raise_for_status()
