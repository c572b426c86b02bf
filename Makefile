# The two set-up commands are `make run` and `make test`; both create .venv when it is missing.
SHELL := /bin/bash
VENV ?= .venv
PY := $(VENV)/bin/python
# CPU build by default (it lies on the CI machines' disk). GPU machines: see README, "GPUs".
TORCH_SPEC ?= torch==2.13.0
STAMP := $(VENV)/.installed

.PHONY: install browser slurm containers run test bench lint clean

install: $(STAMP)

$(STAMP): pyproject.toml
	@test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q $(TORCH_SPEC)
	$(PY) -m pip install -q -e ".[dev]"
	@touch $@

# The platform (API + web UI) on http://127.0.0.1:8000, embedded defaults, with a ready example
# session on a fresh database.
run: $(STAMP)
	$(VENV)/bin/cotrain up --example

# The fault-injection tests (tests/faults) mostly wait on outages they cause, the verification and
# DiLoCo-peer tests (tests/verification, tests/distributed) are sessions of many small peers, and the
# engine's long training runs (test_train.py, test_engine_speed.py) are single processes, and the Slurm
# sessions (tests/slurm/test_diloco_jobs.py, test_executor.py) are jobs of real runs: they run in a
# second lane, alongside the rest of the suite (their output follows it), so the two lanes take about
# as long as each other. The suite is CPU-bound on 2 cores: a third stream (two pytest-xdist workers
# beside this lane) was tried and ended no sooner (32.6 min), with tests starved past their timeouts.
# Either lane failing fails `make test`; each lists its slowest tests.
LANE_LOG := .pytest-lane
SECOND_LANE := tests/faults tests/verification tests/distributed tests/core/test_train.py \
	tests/core/test_engine_speed.py tests/slurm/test_diloco_jobs.py tests/slurm/test_executor.py
test: $(STAMP) browser slurm containers
	@$(PY) -m pytest $(SECOND_LANE) -p no:cacheprovider --durations=10 > $(LANE_LOG)-second.log 2>&1 & second=$$!; \
	$(PY) -m pytest $(addprefix --ignore=,$(SECOND_LANE)) --durations=10; main=$$?; \
	wait $$second; second_status=$$?; \
	echo "---- $(SECOND_LANE) (ran alongside) ----"; cat $(LANE_LOG)-second.log; \
	test $$main -eq 0 && test $$second_status -eq 0

# Tests that need Debian packages install them when run as root, else say how and skip (CI=true makes
# them fail). $(call need_packages,PACKAGES,SHELL TEST TRUE WHEN MISSING,WHICH TESTS)
define need_packages
	@if $(2); then \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	    echo "installing $(1) for $(3)"; \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $(1) >/dev/null; \
	  else \
	    echo "note: $(3) need Debian's $(1); without them they skip" \
	         "(CI=true makes them fail). Install: sudo apt-get install $(1)"; \
	  fi; \
	fi
endef

# Browser tests drive Debian's chromium with Playwright (`playwright install` cannot download
# here); the Simplified Chinese pages need a CJK font.
BROWSER_PACKAGES := chromium fonts-wqy-microhei
browser:
	$(call need_packages,$(BROWSER_PACKAGES),[ ! -x /usr/bin/chromium ] || ! dpkg -s fonts-wqy-microhei >/dev/null 2>&1,the browser tests)

# The Slurm tests (tests/slurm) start a real two-node cluster on this host from Debian's packages.
SLURM_PACKAGES := slurmctld slurmd slurm-client munge
slurm:
	$(call need_packages,$(SLURM_PACKAGES),! command -v slurmctld >/dev/null || ! command -v slurmd >/dev/null || ! command -v sbatch >/dev/null || ! command -v munged >/dev/null,the Slurm tests)

# The container test (tests/containers) builds the image and starts compose.yaml with Debian's podman
# (runc, cgroupfs: tests/containers/containers.conf), its base image with debootstrap (no registry is
# reachable on CI machines); podman-compose comes from PyPI with the dev extras (Debian's breaks host networking).
CONTAINER_PACKAGES := podman runc debootstrap
containers:
	$(call need_packages,$(CONTAINER_PACKAGES),! command -v podman >/dev/null || ! command -v runc >/dev/null || ! command -v debootstrap >/dev/null,the container test)

# Every benchmark's quick run; each prints its figures and writes bench/results/*.json.
bench: $(STAMP)
	$(PY) bench/engine_overhead.py --quick
	$(PY) bench/platform.py --quick
	$(PY) bench/diloco_vs_ddp.py --quick
	$(PY) bench/verification.py --quick
	$(PY) bench/mfu.py --quick --device cpu

lint: $(STAMP)
	$(VENV)/bin/ruff check src tests bench
	$(VENV)/bin/mypy

clean:
	rm -rf $(VENV) .pytest_cache
