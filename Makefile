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

.PHONY: install frontend browser test lint demo serve worker bench bench-gpu clean

install: $(STAMP) pmpd_web/static/vendor/.built

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install -q --upgrade pip
	$(VENV)/bin/pip install -q -e '.[dev]'
	touch $@

frontend: pmpd_web/static/vendor/.built

pmpd_web/static/vendor/.built: frontend/package.json frontend/package-lock.json frontend/build.mjs
	cd frontend && npm ci --no-audit --no-fund --loglevel=error && npm run build
	touch $@

lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

test: install lint
	$(PY) manage.py makemigrations --check --dry-run
	DATABASE_URL=$(TEST_DATABASE_URL) CELERY_BROKER_URL=$(TEST_REDIS_URL) \
		PMPD_TEST_REDIS_URL=$(TEST_REDIS_URL) $(PY) -m pytest -p no:cacheprovider

demo: install
	$(PY) manage.py migrate --noinput
	$(PY) manage.py collectstatic --noinput -v0
	$(PY) manage.py setup_demo
	$(MAKE) --no-print-directory serve

# The platform with a real local worker on the embedded file-system broker.
serve:
	@mkdir -p var/log
	@$(VENV)/bin/celery -A pmpd_web worker -Q cpu,gpu --concurrency 1 --pool solo \
		--loglevel INFO --logfile var/log/worker.log & worker=$$!; \
	trap "kill $$worker 2>/dev/null" EXIT INT TERM; \
	echo "Worker started (log: var/log/worker.log). Open http://$(HOST):$(PORT)/"; \
	$(PY) manage.py runserver --noreload $(HOST):$(PORT)

worker:
	$(VENV)/bin/celery -A pmpd_web worker -Q cpu,gpu --concurrency 1 --loglevel INFO

# Benchmarks print each figure beside its baseline measured in the same run; none asserts a time.
bench: install
	@set -e; for script in tests/bench/bench_*.py; do \
		echo "== $$script"; PYTHONPATH=. $(PY) $$script; done

bench-gpu:
	PYTHONPATH=. python3 tests/bench/gpu_bench.py

clean:
	rm -rf var/staticfiles var/celery-broker
