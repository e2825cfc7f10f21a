# The two commands of the README. Everything installs into .venv inside the clone.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
JOBS ?= 2
# Rules call the `lmforge` CLI: put the venv first on PATH for every recipe.
export PATH := $(CURDIR)/$(BIN):$(PATH)

.PHONY: demo test setup lint clean

setup: $(STAMP)

# torch first: pip then takes the local CPU wheel, and the constraints file stops any later
# package from swapping it for a CUDA build. DeepSpeed compiles its CPU comm op on first use
# (about a minute); warming it here keeps that out of the workflow and the tests.
$(STAMP): pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q torch==2.13.0
	$(BIN)/pip install -q -c constraints.txt -e .
	$(BIN)/lmforge warmup
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/snakemake --cores $(JOBS) --profile profiles/local

lint: $(STAMP)
	$(BIN)/snakemake --lint
	$(BIN)/snakefmt --check Snakefile workflow/rules
	$(BIN)/ruff check src tests

test: $(STAMP) lint
	$(BIN)/pytest -q

clean:
	rm -rf results .snakemake report.html
