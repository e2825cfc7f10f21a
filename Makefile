# The two commands of the README. Everything installs into .venv inside the clone.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
JOBS ?= 2
# Rules call the `lmforge` CLI: put the venv first on PATH for every recipe.
export PATH := $(CURDIR)/$(BIN):$(PATH)
# The venvs `make test` needs build side by side (each mostly waits on one pip process);
# each one's output stays together.
MAKEFLAGS += --jobs=$(JOBS) --output-sync=target

PEERS := .venv-peers
DATATROVE := $(PEERS)/datatrove/.installed
LM_EVAL := $(PEERS)/lm-eval/.installed
DOLMA := $(PEERS)/dolma/.installed

.PHONY: demo experiments test test-fast setup peers lint bench-curate bench-stats bench-train bench-eval \
	bench-scale gpu-wheels \
	clean

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

# The peers that benchmarks and parity tests compare against, each in its own venv so their
# pins never touch ours.
peers: $(DATATROVE) $(LM_EVAL)

$(DATATROVE): benchmarks/curate/requirements-datatrove.txt
	$(PYTHON) -m venv $(PEERS)/datatrove
	$(PEERS)/datatrove/bin/pip install -q -r benchmarks/curate/requirements-datatrove.txt
	touch $(DATATROVE)

# Only the scale benchmark needs dolma (its pins conflict with ours): not part of `peers`.
$(DOLMA): benchmarks/scale/requirements-dolma.txt
	$(PYTHON) -m venv $(PEERS)/dolma
	$(PEERS)/dolma/bin/pip install -q -r benchmarks/scale/requirements-dolma.txt
	touch $(DOLMA)

# torch first, as in .venv: the CPU wheel, which the constraints file then keeps.
$(LM_EVAL): benchmarks/evaluate/requirements-lm-eval.txt constraints.txt
	$(PYTHON) -m venv $(PEERS)/lm-eval
	$(PEERS)/lm-eval/bin/pip install -q torch==2.13.0
	$(PEERS)/lm-eval/bin/pip install -q -c constraints.txt \
		-r benchmarks/evaluate/requirements-lm-eval.txt
	touch $(LM_EVAL)

demo: $(STAMP)
	$(BIN)/snakemake --cores $(JOBS) --profile profiles/local

# The effects of benchmarks/RESULTS.md: config/experiments.yaml once per seed, each in its own
# results folder, then the differences across seeds with 95% intervals.
SEEDS ?= 1 2 3
EXPERIMENTS := results/experiments
experiments: $(STAMP)
	for seed in $(SEEDS); do \
		$(BIN)/snakemake --cores $(JOBS) --profile profiles/local \
			--configfile config/experiments.yaml \
			--config seed=$$seed results=$(EXPERIMENTS)/seed-$$seed || exit 1; \
	done
	$(BIN)/lmforge effects --runs $(addprefix $(EXPERIMENTS)/seed-,$(SEEDS)) \
		--out-md $(EXPERIMENTS)/effects.md --out-json $(EXPERIMENTS)/effects.json

lint: $(STAMP)
	$(BIN)/snakemake --lint
	$(BIN)/snakefmt --check Snakefile workflow/rules
	$(BIN)/ruff check src tests benchmarks

# Two pytest shards side by side, one per core (tests/shards.sh).
test: $(STAMP) $(DATATROVE) $(LM_EVAL) lint
	tests/shards.sh $(BIN)/pytest -q

# The inner loop: every test not marked slow (workflow runs, peers, multi-process training).
test-fast: $(STAMP)
	$(BIN)/pytest -q -m "not slow"

bench-curate: $(STAMP) $(DATATROVE)
	$(BIN)/python benchmarks/curate/bench.py

bench-stats: $(STAMP) $(DATATROVE)
	$(BIN)/python benchmarks/stats/bench.py

# The data half's global steps at 25, 100 and 400 MB, beside datatrove's MinHash and dolma's
# paragraph dedupe; the measurements go to results/bench-scale.json for `lmforge plan-data`.
bench-scale: $(STAMP) $(DATATROVE) $(DOLMA)
	mkdir -p results
	$(BIN)/python benchmarks/scale/bench.py --json results/bench-scale.json

bench-eval: $(STAMP) $(LM_EVAL)
	$(BIN)/python benchmarks/evaluate/lm_eval_parity.py
	$(BIN)/python benchmarks/evaluate/bench.py --limit 100

# Like with like: eager against eager, then compiled against compiled; then the OLMoE experts'
# three ways of computing (one process, the same weights and tokens).
bench-train: $(STAMP)
	$(BIN)/python benchmarks/train/bench.py
	$(BIN)/python benchmarks/train/bench.py --compile
	$(BIN)/python benchmarks/train/experts.py

# What benchmarks/gpu_check.sh needs on a GPU machine that has PyTorch but no network: DeepSpeed
# (an sdist on PyPI, so built here into a pure-Python wheel) and the packages it needs beyond
# such an image, for CPython 3.12 on x86-64.
GPU_WHEELS := pydantic==2.14.4 pydantic_core==2.50.5 annotated-types==0.8.0 \
	typing-inspection==0.4.5 hjson==3.1.0 typing_extensions==4.16.0
gpu-wheels: $(STAMP)
	$(BIN)/pip wheel -q --no-deps --no-build-isolation -w .whl deepspeed==0.19.8
	$(BIN)/pip download -q --no-deps --only-binary=:all: --python-version 3.12 \
		--implementation cp --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
		-d .whl $(GPU_WHEELS)

clean:
	rm -rf results .snakemake report.html
