# One command per verb: `make run`, `make test`, `make bench`, `make lint`.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
SYSTEM_PACKAGES := postgresql redis-server wrk prometheus

.PHONY: run test test-fast lint system-deps venv venv-dev bench bench-quick proto clean

## make run: create the venv, install Kassa with the embedded stack, start `kassa serve`.
run: venv
	$(VENV)/bin/kassa serve

## make test: install everything the tests need (apt and pip), lint, run the whole suite.
test: system-deps venv-dev lint
	$(PY) -m pytest

## make test-fast: the pure and fake-backed tests (tests/unit), no server started; under 30 s.
test-fast:
	$(PY) -m pytest tests/unit -q

lint:
	$(VENV)/bin/ruff check .
	$(VENV)/bin/mypy
	$(VENV)/bin/hadolint --failure-threshold error Dockerfile
	$(PY) -m tests.check_alerts deploy/prometheus/alerts.yml

## make bench / bench-quick: the benchmark harness (wrk; see bench/README.md).
bench: system-deps venv-dev
	$(PY) -m bench

bench-quick: system-deps venv-dev
	$(PY) -m bench --quick

system-deps:
	@missing=""; for p in $(SYSTEM_PACKAGES); do dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then \
		echo "installing:$$missing"; \
		SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
		$$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq $$missing; \
	fi

$(PY):
	$(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip

venv: $(PY)
	$(PIP) install -q -e '.[embedded]'

venv-dev: $(PY)
	$(PIP) install -q -e '.[embedded,dev]'

proto: venv-dev
	$(PY) -m server.adapters.grpc.generate

clean:
	rm -rf build *.egg-info native/*.so native/_speedups.c .kassa
