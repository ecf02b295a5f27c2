# Two commands do everything on a fresh Debian machine, as root:
#   make demo   runs the main job on the local Slurm sandbox
#   make test   runs every test (unit + integration on real Slurm), ruff and mypy
# make fuzz runs the fuzz tests (spec, profile and config documents) long: 10000 examples each.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: venv test unit lint fuzz demo bench clean

$(STAMP): pyproject.toml
	@$(PYTHON) -m venv --help >/dev/null 2>&1 || (apt-get update -qq && apt-get install -y -qq python3-venv)
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[test]'
	touch $(STAMP)

venv: $(STAMP)

lint: $(STAMP)
	$(BIN)/ruff check gateway tests bench
	$(BIN)/mypy --strict gateway

unit: $(STAMP)
	$(BIN)/pytest -q tests/unit

test: $(STAMP)
	$(BIN)/ruff check gateway tests bench
	$(BIN)/mypy --strict gateway
	$(BIN)/pytest -q tests

# AIF_FUZZ_EXAMPLES selects the "aif-fuzz" Hypothesis settings profile (tests/unit/fuzzing.py).
FUZZ_EXAMPLES ?= 10000
fuzz: $(STAMP)
	AIF_FUZZ_EXAMPLES=$(FUZZ_EXAMPLES) $(BIN)/pytest -q -m fuzz tests/unit

demo: $(STAMP)
	bash examples/demo.sh

# startup.py: how fast aif starts (no sandbox, ~10 s); submit_200.py: submission cost;
# arrays.py: 200 specs as one array job;
# placement.py: how long jobs wait, placed by aif or ARC's brokers (~10 min).
# placement_bound.py: the same burst on an offline model: an oracle that knows run times, one cluster (~13 s).
# status_scale.py, list_10k.py, polling.py: status of 1,000 jobs, a 10,000-job ledger, 50 waits (~4 min).
bench: $(STAMP)
	$(BIN)/python bench/startup.py
	$(BIN)/python bench/submit_200.py
	$(BIN)/python bench/arrays.py
	$(BIN)/python bench/placement.py
	$(BIN)/python bench/placement_bound.py
	$(BIN)/python bench/status_scale.py
	$(BIN)/python bench/list_10k.py
	$(BIN)/python bench/polling.py

clean:
	rm -rf $(VENV) build dist *.egg-info .pytest_cache .mypy_cache .ruff_cache
