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

.PHONY: install frontend browser test e2e lint demo serve worker bench bench-gpu clean

# The page assets and the OHIF viewer (frontend/build.mjs), both build outputs outside git.
FRONTEND_BUILT := pmpd_web/static/vendor/.built pmpd_web/ohif/.build-info.json

install: $(STAMP) $(FRONTEND_BUILT)

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install -q --upgrade pip
	$(VENV)/bin/pip install -q -e '.[dev]'
	touch $@

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

lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

test: install browser lint
	$(PY) manage.py makemigrations --check --dry-run
	DATABASE_URL=$(TEST_DATABASE_URL) CELERY_BROKER_URL=$(TEST_REDIS_URL) \
		PMPD_TEST_REDIS_URL=$(TEST_REDIS_URL) $(PY) -m pytest -p no:cacheprovider

# Only the real-browser tests (the OHIF viewer in the patient page); screenshots in test-artifacts/.
e2e: install browser
	DATABASE_URL=$(TEST_DATABASE_URL) CELERY_BROKER_URL=$(TEST_REDIS_URL) \
		$(PY) -m pytest -p no:cacheprovider tests/e2e -s

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

clean:
	rm -rf var/staticfiles var/celery-broker
