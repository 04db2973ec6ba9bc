"""Benchmark: fetching a whole CT series over DICOMweb (its metadata, then every frame) and
fetching frames one by one (200 requests of one frame each, as a viewer scrolling does) with
dicomweb-client, from the platform served by a real server process (gunicorn), beside Orthanc
with its DICOMweb plugin serving the same instances on this machine in the same run.

Goal: the platform no slower than Orthanc. Prints both times and their ratio, for one request
at a time (as a script fetches) and for 4 at a time (as the viewer does); asserts no time.

Runs against DATABASE_URL's PostgreSQL server (the Makefile's test server by default) in a
throw-away database that the server process shares; installs Debian's orthanc and
orthanc-dicomweb with apt-get when they are missing. Stops what it starts.
"""

from __future__ import annotations

import logging
import os
import queue
import shutil
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path[:0] = [str(REPO), str(REPO / "tests" / "support")]
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "pmpd_web.settings")
os.environ.setdefault("DATABASE_URL", "postgres://postgres@127.0.0.1:5432/postgres")

import django  # noqa: E402

django.setup()
for noisy in ("highdicom", "dicomweb_client"):
    logging.getLogger(noisy).setLevel(logging.WARNING)

from dicomweb_client.api import DICOMwebClient  # noqa: E402
from django.conf import settings  # noqa: E402
from django.db import connection  # noqa: E402
from orthanc_peer import (  # noqa: E402
    DICOMWEB_ROOT,
    free_port,
    install_orthanc,
    running,
    running_orthanc,
    store_in_orthanc,
)

SIZE = 512
SLICES = 80
REPEATS = 3
PARALLEL = 4
FRAME_REQUESTS = 200
# Frames as stored (explicit VR little endian): what both servers send without transcoding.
NATIVE = (("application/octet-stream", "1.2.840.10008.1.2.1"),)


def database_url() -> str:
    db = connection.settings_dict
    user = db.get("USER") or "postgres"
    password = f":{db['PASSWORD']}" if db.get("PASSWORD") else ""
    host = db.get("HOST") or "127.0.0.1"
    return f"postgres://{user}{password}@{host}:{db.get('PORT') or 5432}/{db['NAME']}"


def fetch_series(clients: queue.Queue, study: str, series: str, *, parallel: int) -> int:
    """Series metadata, then frame 1 of every instance, with ``parallel`` requests at a time
    (each on its own client and HTTP connection, as a browser keeps several); returns the
    number of pixel bytes received."""

    def with_client(call):
        client = clients.get()
        try:
            return call(client)
        finally:
            clients.put(client)

    metadata = with_client(lambda c: c.retrieve_series_metadata(study, series))
    sops = [item["00080018"]["Value"][0] for item in metadata]

    def frame(sop: str) -> int:
        frames = with_client(
            lambda c: c.retrieve_instance_frames(study, series, sop, [1], media_types=NATIVE)
        )
        return len(frames[0])

    with ThreadPoolExecutor(parallel) as pool:
        return sum(pool.map(frame, sops))


def fetch_frames_one_by_one(client: DICOMwebClient, study: str, series: str, sops: list[str]):
    """``FRAME_REQUESTS`` requests of one frame each, one at a time, going through the
    series' instances in order (round again when the series has fewer)."""
    received = 0
    for position in range(FRAME_REQUESTS):
        sop = sops[position % len(sops)]
        frames = client.retrieve_instance_frames(study, series, sop, [1], media_types=NATIVE)
        received += len(frames[0])
    return received


def report(title: str, times: dict[str, list[float]], per: int, unit: str) -> None:
    """The first (cold) and best time of each server, and the platform's ratio to Orthanc."""
    print(f"\n{title}:")
    for name, measured in times.items():
        cold, best = measured[0], min(measured[1:])
        print(
            f"  {name:9s} first {cold * 1000:7.0f} ms   best of {REPEATS} "
            f"{best * 1000:7.0f} ms   ({best / per * 1000:.2f} ms per {unit})"
        )
    ratio = min(times["platform"][1:]) / min(times["orthanc"][1:])
    verdict = "no slower than" if ratio <= 1.0 else "slower than"
    print(f"  platform / orthanc = {ratio:.2f} ({verdict} Orthanc)")


def main() -> None:
    from dicom_fixtures import add_imaged_patient
    from factories import make_cohort, make_patient, make_user
    from web_session import logged_in_session

    from pmpd_web.accounts.models import Membership, Role

    if connection.vendor != "postgresql":
        sys.exit("bench_dicomweb needs PostgreSQL (DATABASE_URL): the server process shares it")
    connection.settings_dict["TEST"]["NAME"] = "pmpd_bench_dicomweb"
    work = Path(tempfile.mkdtemp(prefix="pmpd-bench-dicomweb-"))
    settings.MEDIA_ROOT = work / "media"
    old_name = connection.creation.create_test_db(verbosity=0, autoclobber=True)
    try:
        user = make_user("bench")
        cohort = make_cohort("bench")
        Membership.objects.create(user=user, cohort=cohort, role=Role.CLINICIAN)
        started = time.perf_counter()
        imaged = add_imaged_patient(
            make_patient(cohort, "BENCH-1"), folder=work / "ct", index=1, size=SIZE, n_slices=SLICES
        )
        files = [settings.MEDIA_ROOT / i.file.name for i in imaged.ct.instances.all()]
        study, series = imaged.study.study_instance_uid, imaged.ct.series_instance_uid
        megabytes = sum(f.stat().st_size for f in files) / 1e6
        print(
            f"series: {len(files)} CT slices of {SIZE}x{SIZE} ({megabytes:.1f} MB), "
            f"made in {time.perf_counter() - started:.1f} s"
        )
        orthanc = install_orthanc()
        web_port = free_port()
        env = {
            **os.environ,
            "DATABASE_URL": database_url(),
            "DJANGO_MEDIA_ROOT": str(settings.MEDIA_ROOT),
            "PMPD_DATA_DIR": str(work / "data"),
            "DJANGO_DEBUG": "0",
        }
        gunicorn = [
            sys.executable,
            "-m",
            "gunicorn",
            "pmpd_web.wsgi",
            "--bind",
            f"127.0.0.1:{web_port}",
            "--workers",
            "2",
            "--threads",
            str(PARALLEL),
            "--log-level",
            "warning",
        ]
        web_url = f"http://127.0.0.1:{web_port}"
        web_log = work / "web.log"
        with (
            running(gunicorn, url=f"{web_url}/accounts/login/", log=web_log, env=env, cwd=REPO),
            running_orthanc(orthanc, work / "orthanc") as orthanc_url,
        ):
            store_in_orthanc(orthanc_url, [path.read_bytes() for path in files])
            servers = {
                "platform": lambda: DICOMwebClient(
                    f"{web_url}/dicomweb",
                    session=logged_in_session(web_url, "bench", "pw-bench"),
                ),
                "orthanc": lambda: DICOMwebClient(f"{orthanc_url}{DICOMWEB_ROOT}"),
            }
            # Both serve the same pixels.
            sop = imaged.ct.instances.first().sop_instance_uid
            frames = {
                name: make().retrieve_instance_frames(study, series, sop, [1], media_types=NATIVE)[
                    0
                ]
                for name, make in servers.items()
            }
            assert frames["platform"] == frames["orthanc"], "the servers disagree on a frame"

            clients = {name: queue.Queue() for name in servers}
            for name, make in servers.items():
                for _ in range(PARALLEL):
                    clients[name].put(make())
            for parallel in (1, PARALLEL):
                times: dict[str, list[float]] = {name: [] for name in servers}
                for _ in range(REPEATS + 1):  # the first pass of each is cold
                    for name in servers:
                        start = time.perf_counter()
                        size = fetch_series(clients[name], study, series, parallel=parallel)
                        times[name].append(time.perf_counter() - start)
                        assert size == len(files) * SIZE * SIZE * 2
                label = "one request at a time" if parallel == 1 else f"{parallel} at a time"
                title = f"whole series (metadata + {len(files)} frames), {label}"
                report(title, times, len(files), "frame")

            sops = [i.sop_instance_uid for i in imaged.ct.instances.order_by("instance_number")]
            single = {name: clients[name].get() for name in servers}
            times = {name: [] for name in servers}
            for _ in range(REPEATS + 1):
                for name in servers:
                    start = time.perf_counter()
                    size = fetch_frames_one_by_one(single[name], study, series, sops)
                    times[name].append(time.perf_counter() - start)
                    assert size == FRAME_REQUESTS * SIZE * SIZE * 2
            report(
                f"frame by frame ({FRAME_REQUESTS} requests of one frame)",
                times,
                FRAME_REQUESTS,
                "frame",
            )
    finally:
        connection.creation.destroy_test_db(old_name, verbosity=0)
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
