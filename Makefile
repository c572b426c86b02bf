# The two set-up commands are `make run` and `make test`; both create .venv when it is missing.
SHELL := /bin/bash
VENV ?= .venv
PY := $(VENV)/bin/python
# CPU build by default (it lies on the CI machines' disk). GPU machines: see README, "GPUs".
TORCH_SPEC ?= torch==2.13.0
STAMP := $(VENV)/.installed

.PHONY: install browser run test bench lint clean

install: $(STAMP)

$(STAMP): pyproject.toml
	@test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q $(TORCH_SPEC)
	$(PY) -m pip install -q -e ".[dev]"
	@touch $@

run: $(STAMP)
	$(VENV)/bin/cotrain up

test: $(STAMP) browser
	$(PY) -m pytest

# Browser tests drive Debian's chromium with Playwright (`playwright install` cannot download here).
browser:
	@if [ ! -x /usr/bin/chromium ]; then \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	    echo "installing Debian's chromium for the browser tests"; \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null; \
	  else \
	    echo "note: /usr/bin/chromium is missing, so browser tests will skip (CI=true makes them fail);" \
	         "install it with: sudo apt-get install chromium"; \
	  fi; \
	fi

bench: $(STAMP)
	$(PY) bench/engine_overhead.py

lint: $(STAMP)
	$(VENV)/bin/ruff check src tests bench

clean:
	rm -rf $(VENV) .pytest_cache
