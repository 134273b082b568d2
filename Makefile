# One command per verb: `make run`, `make test`, `make bench`, `make lint`.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
SYSTEM_PACKAGES := postgresql redis-server wrk prometheus
# Python 3.13 for `make test-fast-313`: pyenv's on this machine kind, else python3.13 on PATH.
PYTHON313 ?= $(firstword $(wildcard $(HOME)/.pyenv/versions/3.13*/bin/python3.13) $(shell command -v python3.13))
VENV313 ?= .venv-3.13

# Installs come from the lock in requirements/ only (README, "Installs"): every file pins
# each package by version and hash, so pip refuses anything the lock does not name.
# Kassa itself is then built against the locked build tools, without build isolation.
define locked_install
	$(1) -m pip install -q --require-hashes -r requirements/build.txt
	$(1) -m pip install -q --require-hashes -r requirements/$(2).txt
	$(1) -m pip install -q --no-deps --no-build-isolation -e .
endef

.PHONY: run test test-fast test-fast-313 sim sim-soak lint system-deps venv venv-dev lock lock-upgrade \
	bench bench-quick proto clean

## make run: create the venv, install Kassa with the embedded stack, start `kassa serve`.
run: venv
	$(VENV)/bin/kassa serve

## make test: install everything the tests need (apt and pip), lint, run the whole suite.
test: system-deps venv-dev lint
	$(PY) -m pytest

## make test-fast: the pure and fake-backed tests (tests/unit), no server started; under 30 s.
test-fast: venv-dev
	$(PY) -m pytest tests/unit -q

## make sim: the deterministic simulator (tests/sim, docs/simulation.md): SIM_SEEDS seeds of
## 200 client operations on every core, with the coverage of faults x await points; fails on
## any failing seed, printing its schedule. `make sim SEED=<n>` runs that one seed again.
SIM_SEEDS ?= 10000
sim: venv-dev
	$(PY) -m tests.sim $(if $(SEED),--seed $(SEED),--seeds $(SIM_SEEDS))

## make sim-soak: longer runs (SOAK_SEEDS seeds of 400 operations, seeds CI does not run).
SOAK_SEEDS ?= 100000
sim-soak: venv-dev
	$(PY) -m tests.sim --start 1000000 --seeds $(SOAK_SEEDS) --ops 400

## make test-fast-313: the same tests on Python 3.13 (no embedded stack there: see pyproject.toml).
test-fast-313:
	@test -n "$(PYTHON313)" || { echo "make: no Python 3.13 found (pyenv versions, PATH); set PYTHON313=" >&2; exit 2; }
	test -x $(VENV313)/bin/python || $(PYTHON313) -m venv $(VENV313)
	$(call locked_install,$(VENV313)/bin/python,dev)
	$(VENV313)/bin/python -m pytest tests/unit -q -p no:cacheprovider

# squawk: the transactional migrations as the runner wraps them, the marked ones as they run
# (.squawk.toml says why its two exclusions are safe).
MIGRATIONS := server/adapters/postgres/migrations
lint:
	$(VENV)/bin/ruff check .
	$(VENV)/bin/squawk -c .squawk.toml --assume-in-transaction \
		$$(grep -L '^-- kassa:no-transaction' $(MIGRATIONS)/*.sql)
	$(VENV)/bin/squawk -c .squawk.toml $$(grep -l '^-- kassa:no-transaction' $(MIGRATIONS)/*.sql)
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

venv: $(PY)
	$(call locked_install,$(PY),embedded)

venv-dev: $(PY)
	$(call locked_install,$(PY),dev)

## make lock: rewrite requirements/*.txt after a change to pyproject.toml, keeping every pin
## that still fits; make lock-upgrade: move every pin to the newest release its range allows.
## One universal resolution (Python 3.11 and newer, markers kept) that names no index.
LOCK_COMPILE = cd requirements && $(abspath $(VENV))/bin/uv pip compile --quiet --universal \
	--python-version 3.11 --generate-hashes $(LOCK_FLAGS)
lock: venv-dev
	$(LOCK_COMPILE) ../pyproject.toml --extra embedded --extra dev -o dev.txt
	$(LOCK_COMPILE) ../pyproject.toml --extra embedded -c dev.txt -o embedded.txt
	$(LOCK_COMPILE) ../pyproject.toml -c dev.txt -o runtime.txt
	$(LOCK_COMPILE) build.in -o build.txt

lock-upgrade:
	$(MAKE) lock LOCK_FLAGS=--upgrade

proto: venv-dev
	$(PY) -m server.adapters.grpc.generate

clean:
	rm -rf build *.egg-info native/*.so native/_speedups.c .kassa
