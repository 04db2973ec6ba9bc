"""Settings profiles, the production check, and the compose file against the settings."""

from __future__ import annotations

import os
import re
import secrets
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]


def manage(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess:
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("DJANGO_", "PMPD_"))}
    return subprocess.run(
        [sys.executable, "manage.py", *args],
        cwd=REPO,
        env={**clean, **env},
        capture_output=True,
        text=True,
        timeout=120,
    )


PRODUCTION = {
    "PMPD_PROFILE": "production",
    "DJANGO_SECRET_KEY": secrets.token_urlsafe(50),
    "DJANGO_ALLOWED_HOSTS": "pmpd.example.org",
    "PMPD_DEID_SECRET": secrets.token_urlsafe(20),
    "DATABASE_URL": "postgres://postgres@127.0.0.1:5432/postgres",
}


@pytest.mark.slow
def test_production_profile_passes_check_deploy_without_warnings():
    result = manage("check", "--deploy", "--fail-level", "WARNING", env=PRODUCTION)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "System check identified no issues" in result.stdout


def test_production_profile_requires_a_secret_key():
    env = {**PRODUCTION, "DJANGO_SECRET_KEY": ""}
    result = manage("check", env=env)
    assert result.returncode != 0
    assert "DJANGO_SECRET_KEY must be set in the production profile" in result.stderr


def embedded_environment() -> dict[str, str]:
    """This environment without the settings that would leave the embedded defaults."""
    return {
        k: v
        for k, v in os.environ.items()
        if k not in ("DATABASE_URL", "CELERY_BROKER_URL") and not k.startswith("PMPD_")
    }


@pytest.mark.slow
def test_embedded_defaults_need_no_server(tmp_path):
    env = {"PMPD_DATA_DIR": str(tmp_path), "DATABASE_URL": "", "CELERY_BROKER_URL": ""}
    env = {k: v for k, v in env.items() if v}
    script = (
        "import django, os; os.environ.pop('DATABASE_URL', None); django.setup();"
        "from django.conf import settings as s;"
        "print(s.DATABASES['default']['ENGINE'], s.DATABASES['default']['NAME']);"
        "print(s.CELERY_BROKER_URL, s.CELERY_TASK_ALWAYS_EAGER, s.DEBUG);"
        "from pmpd_web.celery import app;"
        "print(app.connection_for_read().transport.polling_interval)"
    )
    clean = embedded_environment()
    result = subprocess.run(
        [sys.executable, "-c", script],
        cwd=REPO,
        capture_output=True,
        text=True,
        env={**clean, **env, "DJANGO_SETTINGS_MODULE": "pmpd_web.settings"},
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    engine_line, broker_line, polling_line = result.stdout.strip().splitlines()
    assert engine_line == f"django.db.backends.sqlite3 {tmp_path / 'pmpd.sqlite3'}"
    # A real worker consumes the file-system broker: not eager mode.
    assert broker_line == "filesystem:// False True"
    # An idle worker looks at the queue folder ten times a second, not kombu's once: each step
    # of a chain (a part's preprocessing, then its scoring) no longer waits up to a second.
    assert float(polling_line) == 0.1
    # The file-system broker's folders exist before any worker or web process lists them.
    assert (tmp_path / "celery-broker" / "queue").is_dir()
    assert (tmp_path / "celery-broker" / "processed").is_dir()


def compose() -> dict:
    return yaml.safe_load((REPO / "docker-compose.yml").read_text())


@pytest.mark.slow
def test_compose_services_and_health():
    services = compose()["services"]
    assert set(services) == {"postgres", "redis", "web", "proxy", "worker-cpu", "worker-gpu"}
    assert "postgres-data:/var/lib/postgresql/data" in services["postgres"]["volumes"]
    assert "pg_isready" in " ".join(services["postgres"]["healthcheck"]["test"])
    assert services["web"]["depends_on"]["postgres"]["condition"] == "service_healthy"
    web_command = services["web"]["command"]
    assert "manage.py migrate --noinput" in web_command and "gunicorn pmpd_web.wsgi" in web_command


def _size(text: str) -> int:
    units = {"k": 1024, "m": 1024**2, "g": 1024**3}
    text = text.lower()
    return int(text[:-1]) * units[text[-1]] if text[-1] in units else int(text)


def _directive(config: str, name: str) -> list[str]:
    return re.findall(rf"^\s*{name}\s+([^;]+);", config, re.M)


def test_compose_puts_a_buffering_proxy_in_front_of_gunicorn():
    """Issue 9 item 14: only nginx is published; it buffers requests and responses, with body
    limits that let the uploader's chunks and the largest table through, and time-outs."""
    from django.conf import settings

    from pmpd_web.imaging.views import BROWSER_CHUNK_BYTES

    services = compose()["services"]
    web, proxy = services["web"], services["proxy"]
    assert "ports" not in web, "gunicorn must not be published: only the proxy is"
    assert proxy["image"].startswith("nginx:")
    assert any(port.endswith(":80") for port in proxy["ports"])
    assert proxy["depends_on"]["web"]["condition"] == "service_healthy"
    mounts = dict(volume.rsplit(":", 2)[:2] for volume in proxy["volumes"])
    assert mounts["./docker/nginx.conf"] == "/etc/nginx/nginx.conf"
    assert mounts["./docker/pmpd_locations.conf"] == "/etc/nginx/pmpd_locations.conf"
    main = (REPO / "docker" / "nginx.conf").read_text()
    locations = (REPO / "docker" / "pmpd_locations.conf").read_text()
    assert "server web:8000;" in main and "proxy_pass http://pmpd_web;" in locations
    assert _directive(main, "proxy_request_buffering") == ["on"]
    assert _directive(main, "proxy_buffering") == ["on"]
    for name in ("client_body_timeout", "client_header_timeout", "send_timeout"):
        assert _directive(main, name), name
    body = _size(_directive(main, "client_max_body_size")[0])
    chunk = int(services["web"]["environment"]["PMPD_UPLOAD_CHUNK_MAX_BYTES"])
    assert chunk == BROWSER_CHUNK_BYTES == 8 * 1024**2
    assert chunk < body <= 2 * chunk, "the body limit is the chunk size plus a margin"
    table = _size(_directive(locations, "client_max_body_size")[0])
    assert table > settings.PMPD_TABLE_MAX_BYTES
    gunicorn_timeout = int(re.search(r"--timeout (\d+)", web["command"]).group(1))
    assert int(_directive(main, "proxy_read_timeout")[0].rstrip("s")) > gunicorn_timeout
    # The TLS server block is there to uncomment.
    assert "#     listen 443 ssl" in main and "ssl_certificate certs/fullchain.pem" in main


def _nginx_test(tmp_path: Path, config: str) -> subprocess.CompletedProcess:
    (tmp_path / "nginx.conf").write_text(config.replace("server web:8000;", "server 127.0.0.1:9;"))
    for name in ("pmpd_locations.conf",):
        (tmp_path / name).write_text((REPO / "docker" / name).read_text())
    (tmp_path / "mime.types").write_text(Path("/etc/nginx/mime.types").read_text())
    return subprocess.run(
        [
            "nginx",
            "-t",
            "-p",
            str(tmp_path),
            "-c",
            str(tmp_path / "nginx.conf"),
            "-e",
            str(tmp_path / "error.log"),
            "-g",
            f"pid {tmp_path / 'nginx.pid'};",
        ],
        capture_output=True,
        text=True,
        timeout=30,
    )


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("nginx") is None, reason="no nginx binary (apt-get install nginx)")
def test_the_proxy_configuration_passes_nginx_t(tmp_path):
    config = (REPO / "docker" / "nginx.conf").read_text()
    result = _nginx_test(tmp_path, config)
    assert result.returncode == 0, result.stderr
    # With the TLS block uncommented and a certificate mounted, it is valid too.
    certs = tmp_path / "certs"
    certs.mkdir()
    made = subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
         "-subj", "/CN=pmpd.test", "-keyout", str(certs / "privkey.pem"),
         "-out", str(certs / "fullchain.pem")],
        capture_output=True,
        timeout=60,
    )  # fmt: skip
    assert made.returncode == 0, made.stderr
    with_tls = re.sub(r"^    # ?", "    ", config.split("# TLS (see")[1], flags=re.M)
    tls = config.split("    # TLS (see")[0] + "\n".join(with_tls.splitlines()[1:]) + "\n"
    assert re.search(r"^\s+listen 443 ssl", tls, re.M)
    result = _nginx_test(tmp_path, tls)
    assert result.returncode == 0, result.stderr


@pytest.mark.skipif(
    subprocess.run(["docker", "compose", "version"], capture_output=True).returncode != 0
    if shutil.which("docker")
    else True,
    reason="no docker compose plugin",
)
def test_docker_compose_config_is_valid(tmp_path):
    env = tmp_path / ".env"
    env.write_text(
        "DJANGO_SECRET_KEY=k\nDJANGO_ALLOWED_HOSTS=h\nPOSTGRES_PASSWORD=p\nPMPD_DEID_SECRET=s\n"
    )
    result = subprocess.run(
        ["docker", "compose", "--env-file", str(env), "-f", "docker-compose.yml", "config", "-q"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr


def test_compose_workers_listen_on_the_settings_queues():
    from pmpd_web.celery import app

    services = compose()["services"]
    queues = {q.name for q in app.conf.task_queues}

    def option(command, flag):
        return command[command.index(flag) + 1]

    cpu, gpu = services["worker-cpu"]["command"], services["worker-gpu"]["command"]
    assert option(cpu, "-Q") == "cpu" and option(gpu, "-Q") == "gpu"
    assert {option(cpu, "-Q"), option(gpu, "-Q")} == queues
    assert option(gpu, "--concurrency") == "1" and option(gpu, "--prefetch-multiplier") == "1"
    device = services["worker-gpu"]["deploy"]["resources"]["reservations"]["devices"][0]
    assert device["driver"] == "nvidia" and device["capabilities"] == ["gpu"]
    gpu_docker = (REPO / services["worker-gpu"]["build"]["dockerfile"]).read_text()
    assert "whl/cu" in gpu_docker and "requirements/base.txt" in gpu_docker


@pytest.mark.parametrize("dockerfile", ["docker/Dockerfile", "docker/Dockerfile.gpu"])
def test_images_install_the_lock_before_the_source(dockerfile):
    """A code change must not reinstall every dependency: the lock is installed in a layer
    before any source is copied, and the project itself without dependencies after it."""
    lines = (REPO / dockerfile).read_text().splitlines()
    first = {
        what: next(i for i, line in enumerate(lines) if marker in line)
        for what, marker in [
            ("lock", "pip install -r"),
            ("source", "COPY pmpd_web"),
            ("project", "pip install --no-deps ."),
        ]
    }
    assert first["lock"] < first["source"] < first["project"]
    assert sum("gunicorn" in line and "pip install" in line for line in lines) == 0


@pytest.mark.parametrize("lock", ["requirements/base.txt", "requirements/dev.txt"])
def test_the_locks_pin_every_package_and_the_cpu_torch(lock):
    pins = [
        line.split(" ")[0]
        for line in (REPO / lock).read_text().splitlines()
        if line and not line.startswith((" ", "#", "-"))
    ]
    assert pins and all("==" in pin for pin in pins)
    assert "torch==2.13.0+cpu" in pins
    makefile = (REPO / "Makefile").read_text()
    assert "https://download.pytorch.org/whl/cpu" in makefile


def test_compose_environment_matches_settings_and_env_example():
    config = compose()
    settings_source = (REPO / "pmpd_web" / "settings.py").read_text()
    read_by_settings = set(re.findall(r'os\.environ\.get\("([A-Z0-9_]+)"', settings_source))
    read_by_settings |= set(re.findall(r'env_(?:bool|list)\("([A-Z0-9_]+)"', settings_source))
    example = {
        line.split("=", 1)[0]
        for line in (REPO / ".env.example").read_text().splitlines()
        if line and not line.startswith("#")
    }
    for name in ("web", "worker-cpu", "worker-gpu"):
        env = config["services"][name]["environment"]
        unknown = set(env) - read_by_settings
        assert not unknown, f"{name} sets variables the settings never read: {unknown}"
        assert env["PMPD_PROFILE"] == "production"
        assert (
            env["DATABASE_URL"].startswith("postgres://")
            and "@postgres:5432/" in env["DATABASE_URL"]
        )
        assert env["CELERY_BROKER_URL"].startswith("redis://redis:6379")
        for volume in config["services"][name]["volumes"]:
            source, target = volume.split(":")
            assert source in config["volumes"] and target == env["PMPD_DATA_DIR"]
        assert env["DJANGO_MEDIA_ROOT"].startswith(env["PMPD_DATA_DIR"])
    required = set(re.findall(r"\$\{([A-Z0-9_]+):\?", (REPO / "docker-compose.yml").read_text()))
    assert required <= example, f"not documented in .env.example: {required - example}"


@pytest.mark.slow
def test_containers_run_commands_that_exist_here():
    """The commands the containers run, started by hand: the Celery app and WSGI load."""
    result = subprocess.run(
        [sys.executable, "-m", "celery", "-A", "pmpd_web", "inspect", "--help"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    result = subprocess.run(
        [sys.executable, "-c", "import pmpd_web.wsgi as w; print(callable(w.application))"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "DATABASE_URL": PRODUCTION["DATABASE_URL"]},
    )
    assert result.stdout.strip() == "True", result.stderr


@pytest.mark.slow
def test_redis_visibility_timeout_comes_from_the_environment():
    script = (
        "import django; django.setup(); from django.conf import settings as s;"
        "print(s.CELERY_BROKER_TRANSPORT_OPTIONS['visibility_timeout'])"
    )
    base = {k: v for k, v in os.environ.items() if k != "CELERY_VISIBILITY_TIMEOUT"}
    base = {
        **base,
        "DJANGO_SETTINGS_MODULE": "pmpd_web.settings",
        "CELERY_BROKER_URL": "redis://127.0.0.1:6379/15",
    }
    seen = []
    for extra in ({}, {"CELERY_VISIBILITY_TIMEOUT": "900"}):
        result = subprocess.run(
            [sys.executable, "-c", script],
            cwd=REPO,
            capture_output=True,
            text=True,
            env={**base, **extra},
            timeout=60,
        )
        assert result.returncode == 0, result.stderr
        seen.append(result.stdout.strip())
    assert seen == ["21600", "900"]


@pytest.mark.slow
def test_the_embedded_worker_starts_on_a_fresh_data_folder(tmp_path):
    """`make serve` on a fresh clone: a worker on the file-system broker, nothing created yet."""
    clean = embedded_environment()
    process = subprocess.Popen(
        [sys.executable, "-m", "celery", "-A", "pmpd_web", "worker", "-Q", "cpu,gpu"]
        + ["--pool", "solo", "--loglevel", "INFO"],
        cwd=REPO,
        env={**clean, "PMPD_DATA_DIR": str(tmp_path / "var")},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    lines = []
    try:
        assert process.stdout is not None
        for line in process.stdout:
            lines.append(line)
            if " ready." in line or "Unrecoverable error" in line:
                break
        output = "".join(lines)
        assert "Unrecoverable error" not in output, output[-3000:]
        assert " ready." in output and process.poll() is None
    finally:
        process.terminate()
        process.wait(timeout=30)
