"""Benchmark: 200 concurrent clients for 60 s against gunicorn behind nginx (docker/nginx.conf,
as docker-compose runs them), doing what clinicians and statisticians do: the cohort list, the
patients (API), a patient's page, analytics JSON, a series opened in the viewer (DICOMweb
metadata then a scroll through 10 frames); then the same clients on a bare Django "hello" view
in the same run (tests/bench/load_urls.py), the floor under every page. Goal on the 2-core
machine: 0 errors, p95 under 1 s.

Each client is a user: an action (a page, or a scroll in the viewer) then a think time,
uniform in ``--think`` (1-5 s by default, Locust's ``between(1, 5)``), the users arriving over
the first think time. A second pair of phases runs the same clients without think time, each
sending its next request as soon as the last one answered: the capacity of the machine (200
such clients queue behind each other, so their latencies measure the queue, not the page).

Prints requests/s, p50/p95/p99 and the error count of every phase, the same without the
frames, and the p95 of each kind of read; asserts no time. Options: --clients (200),
--duration (60 s per phase), --think MIN MAX.

Runs against DATABASE_URL's PostgreSQL server (the Makefile's test server by default) in a
throw-away database that the server processes share, with a cohort of 200 synthetic scored
patients (3 of them with a CT) made by the test helpers; gunicorn and nginx listen on free
ports of 127.0.0.1 (nginx is installed with apt-get when missing). Stops what it starts.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import os
import random
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
BENCH = Path(__file__).resolve().parent
sys.path[:0] = [str(REPO), str(REPO / "tests" / "support"), str(BENCH)]
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "pmpd_web.settings")
os.environ.setdefault("DATABASE_URL", "postgres://postgres@127.0.0.1:5432/postgres")

import django  # noqa: E402

django.setup()
logging.getLogger("httpx").setLevel(logging.WARNING)  # one INFO line per request otherwise

import httpx  # noqa: E402
import requests  # noqa: E402
from django.conf import settings  # noqa: E402
from django.db import connection  # noqa: E402

N_PATIENTS = 200
N_IMAGED = 3
# A scroll through the slices of a series in the viewer.
FRAMES_PER_SCROLL = 10
FRAME_ACCEPT = "multipart/related; type=application/octet-stream; transfer-syntax=*"
# gunicorn as docker-compose starts it.
GUNICORN_OPTIONS = ["--workers", "3", "--threads", "8", "--timeout", "120"]


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def database_url() -> str:
    db = connection.settings_dict
    user = db.get("USER") or "postgres"
    password = f":{db['PASSWORD']}" if db.get("PASSWORD") else ""
    host = db.get("HOST") or "127.0.0.1"
    return f"postgres://{user}{password}@{host}:{db.get('PORT') or 5432}/{db['NAME']}"


def nginx_binary() -> str:
    found = shutil.which("nginx") or (Path("/usr/sbin/nginx").exists() and "/usr/sbin/nginx")
    if found:
        return found
    print("installing nginx-light with apt-get ...", flush=True)
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    subprocess.run(["apt-get", "update", "-q"], check=True, env=env, stdout=subprocess.DEVNULL)
    subprocess.run(
        ["apt-get", "install", "-y", "-q", "nginx-light"],
        check=True,
        env=env,
        stdout=subprocess.DEVNULL,
    )
    return shutil.which("nginx") or "/usr/sbin/nginx"


def nginx_config(work: Path, *, listen: int, upstream: int) -> Path:
    """docker/nginx.conf with the ports of this run (and no access log: 200 clients write a
    lot of it)."""
    folder = work / "nginx"
    (folder / "logs").mkdir(parents=True)
    main = (REPO / "docker" / "nginx.conf").read_text()
    main = main.replace("server web:8000;", f"server 127.0.0.1:{upstream};")
    main = main.replace("listen 80;", f"listen 127.0.0.1:{listen};")
    main = main.replace("http {", "http {\n    access_log off;", 1)
    for marker in (f"127.0.0.1:{upstream}", f"127.0.0.1:{listen}", "access_log off"):
        assert marker in main, f"docker/nginx.conf changed shape: {marker} not placed"
    (folder / "nginx.conf").write_text(main)
    shutil.copy(REPO / "docker" / "pmpd_locations.conf", folder)
    shutil.copy("/etc/nginx/mime.types", folder)
    return folder


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
def running(command: list[str], *, url: str, log: Path, env: dict | None = None):
    with log.open("w") as output:
        process = subprocess.Popen(
            command, cwd=REPO, env=env, stdout=output, stderr=subprocess.STDOUT
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


def make_data(work: Path) -> dict:
    """A demo-like cohort: 200 scored synthetic patients, 3 with a CT; a clinician and a
    statistician."""
    from dicom_fixtures import add_imaged_patient
    from factories import make_cohort, make_user
    from scored import make_model_version, make_scored_cohort

    from pmpd_web.accounts.models import Membership, Role

    cohort = make_cohort("bench-load", is_synthetic=True)
    version = make_model_version("pmpd-bench-load", trained_on=cohort, is_synthetic=True)
    patients = make_scored_cohort(cohort, version, N_PATIENTS, prefix="LOAD")
    for role in (Role.CLINICIAN, Role.STATISTICIAN):
        Membership.objects.create(user=make_user(f"bench-{role.value}"), cohort=cohort, role=role)
    series = []
    for index, patient in enumerate(patients[:N_IMAGED], start=1):
        imaged = add_imaged_patient(patient, folder=work / f"ct{index}", index=index)
        study, ct = imaged.study.study_instance_uid, imaged.ct.series_instance_uid
        sops = list(imaged.ct.instances.values_list("sop_instance_uid", flat=True))
        series.append((study, ct, sops))
    return {
        "cohort": cohort.pk,
        "version": version.pk,
        "study_ids": [p.study_id for p in patients],
        "series": series,
    }


def reads(data: dict) -> dict[str, list]:
    """What each kind of user does, one *action* at a time: an action is what one click asks of
    the server (a page, or the viewer's metadata then a scroll through frames), a list of
    (kind, url builder, headers) sent one after the other; the next action is picked at random
    after the think time."""
    c, v = data["cohort"], data["version"]
    query = f"cohort={c}&model_version={v}"

    def pick_patient() -> str:
        return random.choice(data["study_ids"])

    def scroll() -> list:
        """Open a series in the viewer: its metadata, then FRAMES_PER_SCROLL consecutive frames
        (a scroll through the slices), as OHIF fetches them."""
        study, ct, sops = random.choice(data["series"])
        first = random.randrange(max(1, len(sops) - FRAMES_PER_SCROLL))
        series = f"/dicomweb/studies/{study}/series/{ct}"
        return [
            (
                "DICOMweb series metadata",
                f"{series}/metadata",
                {"Accept": "application/dicom+json"},
            ),
            *(
                ("DICOMweb frame", f"{series}/instances/{sop}/frames/1", {"Accept": FRAME_ACCEPT})
                for sop in sops[first : first + FRAMES_PER_SCROLL]
            ),
        ]

    def page(kind: str, url):
        return lambda: [(kind, url(), {})]

    common = [
        page("cohort list", lambda: "/"),
        page("patients (API)", lambda: f"/api/cohorts/{c}/patients/?page={random.randint(1, 2)}"),
    ]
    return {
        "clinician": [
            *common,
            page("patient page", lambda: f"/cohorts/{c}/patients/{pick_patient()}/"),
            page("patient page", lambda: f"/cohorts/{c}/patients/{pick_patient()}/"),
            scroll,
            scroll,
        ],
        "statistician": [
            *common,
            page("analytics survival JSON", lambda: f"/api/analytics/survival/?{query}"),
            page("analytics evaluation JSON", lambda: f"/api/analytics/evaluation/?{query}"),
            page("patient risk JSON", lambda: _risk_url(c, pick_patient())),
        ],
    }


def _risk_url(cohort: int, study_id: str) -> str:
    return f"/api/analytics/cohorts/{cohort}/patients/{study_id}/risk/"


async def client_loop(
    client, actions, deadline: float, think: tuple[float, float], samples: dict, errors: dict
) -> None:
    if think[1] > 0:  # users arrive over the first think time, not all in the same second
        await asyncio.sleep(random.uniform(0, think[1]))
    while time.monotonic() < deadline:
        for kind, url, headers in random.choice(actions)():
            started = time.monotonic()
            try:
                response = await client.get(url, headers=headers)
                await response.aread()
                ok = response.status_code == 200
                problem = f"HTTP {response.status_code}"
            except httpx.HTTPError as exc:
                ok, problem = False, type(exc).__name__
            samples[kind].append(time.monotonic() - started)
            if not ok:
                errors[f"{kind}: {problem}"] += 1
        if think[1] > 0:
            await asyncio.sleep(random.uniform(*think))


async def phase(
    base: str,
    users: dict,
    plan: dict,
    *,
    clients: int,
    duration: float,
    think: tuple[float, float],
):
    """``clients`` concurrent clients for ``duration`` seconds, each waiting ``think`` (a
    uniform range, seconds) between its actions; returns samples and errors."""
    samples: dict[str, list[float]] = defaultdict(list)
    errors: dict[str, int] = defaultdict(int)
    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)
    timeout = httpx.Timeout(60.0)
    sessions = {
        name: httpx.AsyncClient(base_url=base, cookies=cookies, limits=limits, timeout=timeout)
        for name, cookies in users.items()
    }
    names = list(plan)
    deadline = time.monotonic() + duration
    try:
        await asyncio.gather(
            *(
                client_loop(
                    sessions[names[i % len(names)]],
                    plan[names[i % len(names)]],
                    deadline,
                    think,
                    samples,
                    errors,
                )
                for i in range(clients)
            )
        )
    finally:
        for session in sessions.values():
            await session.aclose()
    return samples, errors


def percentile(values: list[float], share: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(share * len(ordered)))]


def report(title: str, samples: dict, errors: dict, duration: float) -> None:
    every = [value for values in samples.values() for value in values]
    n = len(every)
    print(f"\n{title}")
    if not n:
        print("  no request finished")
        return
    print(
        f"  {n} requests, {n / duration:.0f} requests/s, "
        f"p50 {percentile(every, 0.5) * 1000:.0f} ms, p95 {percentile(every, 0.95) * 1000:.0f} ms, "
        f"p99 {percentile(every, 0.99) * 1000:.0f} ms, errors {sum(errors.values())}"
    )
    pages = [
        value for kind, values in samples.items() if kind != "DICOMweb frame" for value in values
    ]
    if len(pages) != n and pages:
        print(
            f"  without the frames: {len(pages)} requests, p50 {percentile(pages, 0.5) * 1000:.0f} ms, "
            f"p95 {percentile(pages, 0.95) * 1000:.0f} ms, p99 {percentile(pages, 0.99) * 1000:.0f} ms"
        )
    if len(samples) > 1:
        for kind, values in sorted(samples.items()):
            print(
                f"    {kind:28s} {len(values):6d}   p50 {statistics.median(values) * 1000:6.0f} ms"
                f"   p95 {percentile(values, 0.95) * 1000:6.0f} ms"
            )
    for problem, count in sorted(errors.items()):
        print(f"    error {problem}: {count}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--clients", type=int, default=200)
    parser.add_argument("--duration", type=float, default=60.0, help="seconds per phase")
    parser.add_argument(
        "--think",
        type=float,
        nargs=2,
        default=(1.0, 5.0),
        metavar=("MIN", "MAX"),
        help="seconds a user waits between actions, uniform (1 5, as Locust's between(1, 5))",
    )
    options = parser.parse_args()
    if connection.vendor != "postgresql":
        sys.exit("bench_load needs PostgreSQL (DATABASE_URL): the server processes share it")

    from web_session import logged_in_session

    connection.settings_dict["TEST"]["NAME"] = "pmpd_bench_load"
    work = Path(tempfile.mkdtemp(prefix="pmpd-bench-load-"))
    settings.MEDIA_ROOT = work / "media"
    old_name = connection.creation.create_test_db(verbosity=0, autoclobber=True)
    try:
        started = time.perf_counter()
        data = make_data(work)
        print(
            f"cohort: {N_PATIENTS} synthetic scored patients, {N_IMAGED} with a CT "
            f"(made in {time.perf_counter() - started:.1f} s)"
        )
        nginx = nginx_binary()
        web_port, proxy_port = free_port(), free_port()
        folder = nginx_config(work, listen=proxy_port, upstream=web_port)
        env = {
            **os.environ,
            "DATABASE_URL": database_url(),
            "DJANGO_MEDIA_ROOT": str(settings.MEDIA_ROOT),
            "PMPD_DATA_DIR": str(work / "data"),
            "DJANGO_DEBUG": "0",
            "DJANGO_SETTINGS_MODULE": "load_settings",
            "PYTHONPATH": os.pathsep.join([str(REPO), str(BENCH)]),
        }
        gunicorn = [
            sys.executable,
            *("-m", "gunicorn", "pmpd_web.wsgi", "--bind", f"127.0.0.1:{web_port}"),
            *GUNICORN_OPTIONS,
            *("--log-level", "warning"),
        ]
        proxy = [
            nginx,
            *("-p", str(folder), "-c", str(folder / "nginx.conf"), "-e", str(folder / "error.log")),
            *("-g", f"daemon off; pid {folder / 'nginx.pid'};"),
        ]
        base = f"http://127.0.0.1:{proxy_port}"
        with (
            running(gunicorn, url=f"http://127.0.0.1:{web_port}/bench/hello/", log=work / "web.log", env=env),
            running(proxy, url=f"{base}/bench/hello/", log=work / "nginx.log"),
        ):  # fmt: skip
            users = {
                name: dict(logged_in_session(base, f"bench-{name}", f"pw-bench-{name}").cookies)
                for name in ("clinician", "statistician")
            }
            plan = reads(data)
            warm = time.perf_counter()
            for name, choices in plan.items():  # the first analytics call computes and caches
                with requests.Session() as session:
                    session.cookies.update(users[name])
                    for action in choices:
                        for _kind, url, headers in action():
                            session.get(base + url, headers=headers, timeout=300).raise_for_status()
            print(f"warmed up in {time.perf_counter() - warm:.1f} s")
            think = tuple(options.think)
            hello = {"anyone": [lambda: [("hello", "/bench/hello/", {})]]}
            print(
                f"\n{options.clients} clients, {options.duration:.0f} s per phase, through nginx "
                f"to gunicorn ({' '.join(GUNICORN_OPTIONS)}), on {os.cpu_count()} CPUs shared "
                "with this load generator"
            )
            for label, pause in (
                (f"users thinking {think[0]:g}-{think[1]:g} s between actions", think),
                ("no think time (every client sends its next request at once: capacity)", (0, 0)),
            ):
                print(f"\n== {label}")
                samples, errors = asyncio.run(
                    phase(
                        base,
                        users,
                        plan,
                        clients=options.clients,
                        duration=options.duration,
                        think=pause,
                    )
                )
                report(
                    "platform reads (clinicians and statisticians)",
                    samples,
                    errors,
                    options.duration,
                )
                samples, errors = asyncio.run(
                    phase(
                        base,
                        {"anyone": {}},
                        hello,
                        clients=options.clients,
                        duration=options.duration,
                        think=pause,
                    )
                )
                report("bare Django hello view, same clients", samples, errors, options.duration)
    finally:
        connection.creation.destroy_test_db(old_name, verbosity=0)
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
