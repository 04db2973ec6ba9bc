# The two README commands are `make demo` and `make test`; both set up what a fresh machine lacks.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
# Tests run against the PostgreSQL server of the machine (pytest-django creates its own database).
TEST_DATABASE_URL ?= postgres://postgres@127.0.0.1:5432/postgres
TEST_REDIS_URL ?= redis://127.0.0.1:6379/15
HOST ?= 127.0.0.1
PORT ?= 8000
# PyTorch's CPU wheels: a fresh machine anywhere gets the CPU build of the pinned torch.
TORCH_INDEX ?= https://download.pytorch.org/whl/cpu
# The lock (pip-compile of pyproject.toml with the dev extra); `make lock` writes it again.
LOCK := requirements/dev.txt
# Extra pytest arguments: `make test PYTEST_ARGS="-k import -x"`.
PYTEST_ARGS ?=
# Compiled modules (and pytest's rewritten test modules) are cached under var/pycache on first
# import, for every command of this Makefile, even where the environment says
# PYTHONDONTWRITEBYTECODE: pip installs without compiling the 20,000 modules of the environment
# (6 CPU-minutes on this 2-core machine, most never imported) and each module is compiled once,
# when something first imports it.
export PYTHONDONTWRITEBYTECODE :=
export PYTHONPYCACHEPREFIX := $(CURDIR)/var/pycache
TEST_ENV := DATABASE_URL=$(TEST_DATABASE_URL) CELERY_BROKER_URL=$(TEST_REDIS_URL) \
	PMPD_TEST_REDIS_URL=$(TEST_REDIS_URL)

.PHONY: install frontend browser orthanc nginx test test-fast e2e lint lock demo serve worker bench \
	bench-gpu gpu-kit clean

# The page assets and the OHIF viewer (frontend/build.mjs), both build outputs outside git.
FRONTEND_BUILT := pmpd_web/static/vendor/.built pmpd_web/ohif/.build-info.json

install: $(STAMP) $(FRONTEND_BUILT)

# torch first, alone from its CPU index (the lock names the +cpu build; its dependencies are in
# the lock, so no other package is looked up there), then the lock without that index (every
# other package from PyPI), then the project itself; none compiled at install (see above).
$(STAMP): pyproject.toml $(LOCK)
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install -q --upgrade pip
	$(VENV)/bin/pip install -q --no-compile --no-deps --extra-index-url $(TORCH_INDEX) \
		"$$(grep -m1 '^torch==' $(LOCK))"
	$(VENV)/bin/pip install -q --no-compile -r $(LOCK)
	$(VENV)/bin/pip install -q --no-compile --no-deps -e .
	touch $@

# Resolve pyproject.toml's dependencies again into the locks (after changing them): dev.txt for
# make install, base.txt (no dev extra) for the Docker images.
lock:
	$(VENV)/bin/pip install -q pip-tools
	$(VENV)/bin/pip-compile -q --extra dev --strip-extras --no-emit-index-url \
		--no-emit-find-links -o $(LOCK) pyproject.toml
	$(VENV)/bin/pip-compile -q --strip-extras --no-emit-index-url --no-emit-find-links \
		-o requirements/base.txt pyproject.toml

frontend: $(FRONTEND_BUILT)

$(FRONTEND_BUILT) &: frontend/package.json frontend/package-lock.json frontend/build.mjs \
		frontend/ohif-app-config.js
	cd frontend && npm ci --no-audit --no-fund --loglevel=error && npm run build
	touch $(FRONTEND_BUILT)

# Debian's Chromium for the real-browser tests (tests/e2e drives it with Playwright; Playwright's
# own browser download is never used).
browser:
	@if [ ! -x /usr/bin/chromium ]; then \
		export DEBIAN_FRONTEND=noninteractive; \
		apt-get update -q && apt-get install -y -q chromium; \
	fi

# Debian's Orthanc with its DICOMweb plugin: the peer that tests/imaging/test_dicomweb_conformance.py
# and tests/bench/bench_dicomweb.py compare the platform's DICOMweb with (started by them).
orthanc:
	@if [ ! -x /usr/sbin/Orthanc ] || [ ! -e /usr/share/orthanc/plugins/libOrthancDicomWeb.so ]; then \
		export DEBIAN_FRONTEND=noninteractive; \
		apt-get update -q && apt-get install -y -q orthanc orthanc-dicomweb; \
	fi

# Debian's nginx, for tests/test_deployment.py's `nginx -t` of docker/nginx.conf (the binary only:
# the test runs it on a configuration of its own; no server is started).
nginx:
	@if ! command -v nginx >/dev/null && [ ! -x /usr/sbin/nginx ]; then \
		export DEBIAN_FRONTEND=noninteractive; \
		apt-get update -q && apt-get install -y -q --no-install-recommends nginx; \
	fi

# Style, the import contracts (.importlinter) and the type checker (pyproject's [tool.mypy]).
lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/lint-imports --no-cache
	$(VENV)/bin/mypy

# Everything, with coverage reported (not gated).
test: install browser orthanc nginx lint
	$(PY) manage.py makemigrations --check --dry-run
	$(TEST_ENV) $(PY) -m pytest -p no:cacheprovider --cov --cov-report=term:skip-covered \
		$(PYTEST_ARGS)

# The quick loop (CONTRIBUTING.md says what it leaves out): no browser, no real worker, no
# Orthanc or SeaweedFS, no slow test, a sample of each table test; two processes. The plugins
# turned off serve only tests it leaves out (the schema fuzzing), and cost each process seconds.
FAST_PLUGINS_OFF := -p no:schemathesis -p no:hypothesispytest -p no:faker -p no:anyio
test-fast: $(STAMP)
	$(TEST_ENV) $(PY) -m pytest -p no:cacheprovider $(FAST_PLUGINS_OFF) -q -n 2 \
		-m "not e2e and not worker and not slow" $(PYTEST_ARGS)

# Only the real-browser tests (the OHIF viewer in the patient page); screenshots in test-artifacts/.
e2e: install browser
	$(TEST_ENV) $(PY) -m pytest -p no:cacheprovider -m e2e -s $(PYTEST_ARGS)

demo: install
	$(PY) manage.py migrate --noinput
	$(PY) manage.py collectstatic --noinput -v0
	$(PY) manage.py setup_demo
	$(MAKE) --no-print-directory serve

# The platform with a real local worker on the embedded file-system broker. DEBUG is off (the
# platform's own error pages; WhiteNoise serves the static files): DJANGO_DEBUG=1 turns it on.
serve:
	@mkdir -p var/log
	@$(VENV)/bin/celery -A pmpd_web worker -Q cpu,gpu --concurrency 1 --pool solo \
		--loglevel INFO --logfile var/log/worker.log & worker=$$!; \
	trap "kill $$worker 2>/dev/null" EXIT INT TERM; \
	echo "Worker started (log: var/log/worker.log). Open http://$(HOST):$(PORT)/"; \
	DJANGO_DEBUG=$${DJANGO_DEBUG:-0} $(PY) manage.py runserver --noreload $(HOST):$(PORT)

worker:
	$(VENV)/bin/celery -A pmpd_web worker -Q cpu,gpu --concurrency 1 --loglevel INFO

# Benchmarks print each figure beside its baseline measured in the same run; none asserts a time.
bench: install
	@set -e; for script in tests/bench/bench_*.py; do \
		echo "== $$script"; PYTHONPATH=. $(PY) $$script; done

# On a machine with an NVIDIA GPU: the GPU benchmark, then a short ResNet50 training at 224.
bench-gpu:
	PYTHONPATH=. python3 tests/bench/gpu_bench.py
	PYTHONPATH=. python3 tests/bench/bench_train_cpu.py --device cuda --depth 50 \
		--input-size 224 --epochs 4 --skip-shuffled

# The packages a lent GPU machine lacks (Python 3.12 wheels), packed as .gpu-kit/site.tar.xz
# for the device tool to carry; tests/bench/gpu_session.sh runs the GPU checks with it there.
gpu-kit: install
	$(PY) tests/bench/gpu_kit.py build

clean:
	rm -rf var/staticfiles var/celery-broker var/pycache
