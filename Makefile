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

# `make test` runs three lanes of pytest at once (2 cores; every process the suite starts uses one thread,
# tests/conftest.py) and prints the second and third lanes' output after the first's:
# 1. the rest of the suite (server, UI, chain, security, client), mostly CPU;
# 2. sessions of many small DiLoCo peers (tests/verification, tests/distributed) and the engine's long
#    single-process runs (test_train.py, test_engine_speed.py), mostly CPU;
# 3. what mostly waits: the container test (an image build: disk and pip), the Slurm cluster's jobs
#    (scheduling intervals) and the fault-injection tests (outages they cause and wait out);
# plus a few files of the first lane's that even out the lanes' lengths.
# The suite is CPU-bound (the two cores are 98% busy): lanes that end together are what keeps it short.
# Any lane failing fails `make test`; each lists its slowest tests.
LANE_LOG := .pytest-lane
LANE_2 := tests/verification tests/distributed tests/core/test_train.py tests/core/test_engine_speed.py \
	tests/ui/test_machines_page.py
LANE_3 := tests/containers tests/slurm tests/faults tests/security/test_read_rule.py tests/server/test_backup.py \
	tests/server/test_diloco_rewards.py
LANE_PYTEST := $(PY) -m pytest -p no:cacheprovider --durations=10
test: $(STAMP) browser slurm containers
	@$(LANE_PYTEST) $(LANE_2) > $(LANE_LOG)-2.log 2>&1 & lane2=$$!; \
	$(LANE_PYTEST) $(LANE_3) > $(LANE_LOG)-3.log 2>&1 & lane3=$$!; \
	$(PY) -m pytest $(addprefix --ignore=,$(LANE_2) $(LANE_3)) --durations=10; lane1_status=$$?; \
	wait $$lane2; lane2_status=$$?; wait $$lane3; lane3_status=$$?; \
	echo "---- lane 2: $(LANE_2) (ran alongside) ----"; cat $(LANE_LOG)-2.log; \
	echo "---- lane 3: $(LANE_3) (ran alongside) ----"; cat $(LANE_LOG)-3.log; \
	test $$lane1_status -eq 0 && test $$lane2_status -eq 0 && test $$lane3_status -eq 0

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
