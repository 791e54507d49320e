#!/bin/bash
# The tuning queue still to run, in order (docs/results.md, "Left of the tuning queue"): validation runs into
# results/val/tuning/runs (and results/val/runs for first runs of a method), then the paper grid on the test split
# into results/test/runs (craft's stage-1 cells early; the rest of stage 1, then after the last validation runs the
# whole grid, once no learning rate is left to move). Each sweep
# skips finished runs and resumes an unfinished one, so rerunning this script after an interruption goes on where
# it stopped.
#   bash bench/tuning_queue.sh                      # from the repository root, ../shared beside it
#   RESULTS=/elsewhere/results CL_DATA_DIR=/data/CL_Benchmark bash bench/tuning_queue.sh
#   DRY=1 bash bench/tuning_queue.sh                # (any non-empty DRY) runs nothing: each step's runs left and
#                                                   # their cost (sweep --dry-run, at the validation runs' medians)
# CRAFT's tuning spells its defaults out (E3: the schedule, and settle_tol=0 since 2026-12-03; its folders hold runs
# of the batch check, the default until 2026-12-04: a bare $E3 sweep is now refused as stale, so a new variant spells
# $E3:budget_check=all), so its variants land
# in folders of their own beside the defaults' (a sweep refuses the older folders' runs as stale: settings moved).
set -u
RESULTS=${RESULTS:-results}
DATA=${CL_DATA_DIR:-../shared/data/CL_Benchmark}
PY=${PYTHON:-.venv/bin/python}
export HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false PYTHONPATH=${PYTHONPATH:-$(pwd)}
T=$RESULTS/val/tuning/runs
V=$RESULTS/val/runs
# the stream whose tasks share output spaces, where CRAFT's grouping acts (the Makefile's GROUPED_STREAM)
G=$(make -s --no-print-directory --eval 'print-%: ; @echo $($*)' print-GROUPED_STREAM)
[ -n "$G" ] || { echo "tuning_queue.sh: no GROUPED_STREAM in ./Makefile (run from the repository root)" >&2; exit 2; }
E3=craft:epochs=3:warmup=8:warmup_for=all:decay=linear:settle_tol=0
sw() {
    echo "== $(date -u +%FT%T) sweep $*"
    $PY -m harness sweep --data-dir "$DATA" --eval-split val --matrix needed ${DRY:+--dry-run --costs-from $V,$T} "$@"
    local rc=$?   # before the log line: its $(date) would reset $?
    echo "== $(date -u +%FT%T) exit $rc"
}
# 1. done: seq_lora's epochs (the baselines' side of CRAFT's three-epoch budget), offline1-2 x seeds 1-3 at
#    `seq_lora` and `seq_lora:epochs=3`. Three epochs became its default on 2026-12-02, after which a sweep refuses
#    the one-epoch runs in the `seq_lora` folder as stale, so the step is no longer run here.
# 2. done: replay's epochs, by the same rule, offline1-2 x seeds 1-3 at `replay` and `replay:epochs=3`. Three
#    epochs became its default on 2026-12-03 (+6.17 [2.54, 9.62] AA over the six streams), after which a sweep
#    refuses the one-epoch runs in the `replay` folder as stale, so the step is no longer run here.
# 3. done: round 5 on the schedule (settle_tol=0, lr=0.001, rank 8 on 13 layers; seq_lora on the grouped stream).
#    settle_tol=0 passed the rule and became the default on 2026-12-03 (lr=0.001 and the paper-sized edit did not,
#    so their grouped runs were dropped); its routing ablation on the grouped stream ran at the new defaults (+1.00
#    [-3.00, 5.14] for per-task groups: the grouping not shown to help), so the step is no longer run here.
# 4. done 2026-12-03: the grouped stream, seed 2 (seq_lora at its three-epoch default, spelled out as its decision
#    runs were), and
#    CRAFT's routing ablation there (per-task groups did as well as the grouping on seed 1); no longer run here
#    since budget_check=all became the default (its craft runs ran the batch check: stale to a sweep)
# 5. done: o_lora's epochs, by the same rule, offline1-2 x seeds 1-3 at `o_lora` and `o_lora:epochs=3`. Three
#    epochs became its default on 2026-12-03 (+10.67 [4.38, 16.71] AA over the six streams), after which a sweep
#    refuses the one-epoch runs in the `o_lora` folder as stale, so the step is no longer run here.
# 5a. done 2026-12-03 (not adopted): round 6, CRAFT's KL weight (beta=10 against 1), the setting that acts on a
#     joining task's group: the grouping cost forgetting on the grouped stream (per-task groups ΔFM -3.00 [-6.67,
#     -0.17] over seeds 1-2). Judged on the grouped stream, where 4 of 7 tasks join (offline1-2 have one join each):
#     docs/results.md, round 6. CRAFT's runs are cheap (5-6 min on offline1-2, 13 on the grouped stream). No longer
#     run here since budget_check=all became the default (its runs ran the batch check: stale to a sweep)
# The rule's seeds for a list of variants (docs/results.md, "How a default moves"): seed 1 of them all, then
# seed 2 of those the screen keeps (a variant whose seed-1 ΔAA interval lies wholly below 0 cannot pass), then
# seed 3 of those that pass on seeds 1-2, its confirming seed. A default then moves by hand: code, FORMER_DEFAULTS,
# tests, docs. Sets PASSED to the variants seed 3 ran for.
#   rule_seeds STEP ORDERS SPECS [REFERENCE]   REFERENCE: today's defaults spelled, run beside each seed
rule_seeds() {
    local step=$1 orders=$2 specs=$3 with=${4:+$4,} kept
    sw --runs $T --orders $orders --seeds 1 --methods $with$specs
    kept=$($PY bench/tuning_rule.py $T --orders $orders --screen "$specs") \
        || { kept=$specs; echo "== $(date -u +%FT%T) $step: the screen failed, so every variant runs"; }
    if [ -n "$kept" ]; then sw --runs $T --orders $orders --seeds 2 --methods "$with$kept"
    else echo "== $(date -u +%FT%T) $step: the screen dropped every variant"; fi
    PASSED=""
    if [ -n "$kept" ]; then
        PASSED=$($PY bench/tuning_rule.py $T --orders $orders --confirm "$kept") \
            || { PASSED=""; echo "== $(date -u +%FT%T) $step': the rule failed (above), so no seed 3 runs"; }
    fi
    if [ -n "$PASSED" ]; then sw --runs $T --orders $orders --seeds 3 --methods "$with$PASSED"
    else echo "== $(date -u +%FT%T) $step': no variant to confirm (none passed seeds 1-2, or runs unfinished)"; fi
}
# 5b-5c'. the learning rates of seq_lora, replay and o_lora at their three-epoch defaults (3e-4, 3e-3 against the
#     decision runs' 1e-3), by the rule's seeds on its streams, offline1-2 (their references' seed 3 ran with the
#     decision runs of their epochs)
LRS="seq_lora:epochs=3:lr=0.0003,seq_lora:epochs=3:lr=0.003,replay:epochs=3:lr=0.0003,replay:epochs=3:lr=0.003"
LRS="$LRS,o_lora:epochs=3:lr=0.0003,o_lora:epochs=3:lr=0.003"
rule_seeds 5c offline1,offline2 "$LRS"
# 5c''. the paper grid's first cells (test split, results/test/runs; make grid, docs/results.md): craft's cells of
#       stage 1, which wait on no baseline's setting (the baselines' learning rates are chosen by the rule from
#       validation runs alone, so these test numbers cannot steer them). `make grid` later skips them as finished.
#       make -o: the shared .venv counts as installed (a worktree's fresh requirements files would trigger pip).
VENV=$(dirname "$(dirname "$PY")")   # make's VENV: PYTHON must be a virtual environment's bin/python here
grid() {   # grid TARGET [VAR=value...]: a make target of the paper grid, into $RESULTS/test/runs
    if [ ! -x "$VENV/bin/python" ]; then
        echo "== $(date -u +%FT%T) make $1: skipped: $PY is not a virtual environment's bin/python" \
             "(PYTHON=.venv/bin/python)"
        return
    fi
    echo "== $(date -u +%FT%T) make $*"
    make -s -o "$VENV/.installed" "$@" GRID_RUNS="$RESULTS/test/runs" CL_DATA_DIR="$DATA" VENV="$VENV" \
        ${DRY:+ARGS="--dry-run --costs-from $V,$T"}
    local rc=$?
    echo "== $(date -u +%FT%T) exit $rc"
}
# The grid beyond craft's cells waits until no learning rate of 5b is left open or passing: a default that moves
# must move by hand first (code, tests, docs), or the grid's runs of that method would be made at the old one and
# refused later as stale. After such a move, drop the moved spec from LRS above (it then spells today's defaults,
# whose runs have no variant label). Prints nothing when the grid may go on.
undecided() {   # undecided [SPECS [rule options]]: default the learning rates of 5b (and 5i's, once added)
    $PY bench/tuning_rule.py $T --undecided "${1-$LRS}" "${@:2}" || echo "(the rule failed, above)"
}
# 5c''''. done 2026-12-04 night (adopted): the budget stop's reading, budget_check=all against the batch check, on
#        offline1-2 x seeds 1-5 (the defaults' new seeds 4-5 beside it) and the batch-check defaults rerun on this
#        machine where the check fired (results/val/same_machine/runs): docs/results.md, round 7. all became the
#        default, after which a sweep refuses the batch-check runs of the E3 folders as stale, so the step (and
#        steps 4 and 5a, run at the batch check) is no longer run here.
# 5f. (added 2026-12-05) today's CRAFT on the grouped stream, where tasks join groups and the budget check can act
#     (none of budget_check=all's runs is there yet; the batch check's were made on AVX2), beside its
#     routing=per_task ablation on the same machine (the grouping's test: every task its own group), seeds 1-2; and
#     the batch check rerun there into results/val/same_machine/runs, so the move's effect on this stream pairs on
#     one kernel set. About 1.5 h, ahead of craft's remaining grid cells and the baselines' 27 h: how much the
#     grouping adds is what the grid's CRAFT rows will be read by.
sw --runs $T --orders $G --seeds 1,2 --methods $E3:budget_check=all,$E3:budget_check=all:routing=per_task
sw --runs $RESULTS/val/same_machine/runs --orders $G --seeds 1,2 --methods $E3:budget_check=batch
# 5g. (added 2026-12-05, when per-task groups led the grouping on both seeds of 5f: AA 58.71 and 55.86 against
#     54.43 and 53.71, FM 0 against 3.67 and 2.67) the rule's confirming seed 3 of both on the grouped stream, where
#     4 of 7 tasks join (as round 6 judged the grouping there), then per-task groups on the rule's streams
#     (offline1-2 x seeds 1-3, one join each), so the grouping is judged on both. About 1 h.
sw --runs $T --orders $G --seeds 3 --methods $E3:budget_check=all,$E3:budget_check=all:routing=per_task
sw --runs $T --orders offline1,offline2 --seeds 1,2,3 --methods $E3:budget_check=all:routing=per_task
# 5h. (added 2026-12-05 morning) seed 1 of every stage-1 method first: craft's seed-1 cells, then the four baseline
#     cells of seed 1 the H200 did not make (replay, o_lora and i_lora on offline1, i_lora on offline2; about 2 h),
#     so the paired table is whole on seed 1 before craft's seeds 2-3, which pair with nothing until the baselines'
#     seeds 2-3 run
grid grid-stage1 GRID_FIRST=craft GRID_SEEDS=1
OPEN=$(undecided)
if [ -n "$OPEN" ]; then echo "== $(date -u +%FT%T) 5h: the grid waits on these learning rates: $OPEN"
else grid grid-stage1 GRID_SEEDS=1; fi
# 5k. (added 2026-12-05 noon; decided that evening: none passed seeds 1-2, the default stays) CRAFT's forgetting
#     budget at the scale its KL reaches where a task joins a group.
#     Under today's defaults every join of the validation runs (22: the grouped stream's 12, offline1-2's 10)
#     ended at an anchor KL of 0.002-0.022 nats against the budget's 1.0, merged at weight 1 and trained every
#     scheduled step, while its group's earlier tasks lost up to 10 points and 8-32% of their answers changed
#     on the grouped stream (bench/craft_groups.py): the budget and the merge never act. 0.01 lies under the final
#     KL of 10 of those joins (8 of the grouped stream's 12), so it was expected to bind late in their training
#     (it stopped them at step 2: below); 0.003 under nearly all. On the grouped stream (4 of 7 tasks join):
#     seed 1, the screen, seed 2, seed 3 of what passes; then offline1-2 x seeds 1-3 of what passed there (one
#     join each). About 2-4 h with the merge-only variants below. craft's grid cells wait on its verdict (a move
#     would make them again): a budget that passes on the grouped stream holds them until a session reads
#     offline1-2's runs beside it and moves the default by hand (code, FORMER_DEFAULTS, tests, docs), or drops it
#     from BUDGETS.
#     (added 2026-12-05 afternoon, when both stopped CB after 2 of its 75 steps on seed 1: a joining task's KL peaks
#     in its first steps, then the KL term pulls it back) the same budgets read by the merge alone
#     (budget_stop=none: training never stops on the budget).
BUDGETS="$E3:budget_check=all:forgetting_budget=0.003,$E3:budget_check=all:forgetting_budget=0.01"
BUDGETS="$BUDGETS,$E3:budget_check=all:budget_stop=none:forgetting_budget=0.003"
BUDGETS="$BUDGETS,$E3:budget_check=all:budget_stop=none:forgetting_budget=0.01"
#     (added 2026-12-05 evening, after merge-only 0.01 led on seed 1: ΔAA +1.00 [-1.86, 3.71], ΔFM -2.67 *) the
#     same with the exact merge (merge_rank=2r): at rank r the merge's KL is not monotone in the weight, the
#     re-projection's truncation error 0.04-0.13 at intermediate weights (docs/results.md, round 9). One run a seed.
BUDGETS="$BUDGETS,$E3:budget_check=all:budget_stop=none:forgetting_budget=0.01:merge_rank=2r"
rule_seeds 5k $G "$BUDGETS"
if [ -n "$PASSED" ]; then
    BPASS=$($PY bench/tuning_rule.py $T --orders $G --undecided "$PASSED") \
        || { BPASS=""; echo "== $(date -u +%FT%T) 5k': the rule failed (above), so no offline runs"; }
    if [ -n "$BPASS" ]; then sw --runs $T --orders offline1,offline2 --seeds 1,2,3 --methods "$BPASS"; fi
fi
COPEN=$(undecided "$BUDGETS" --orders $G)
craft_cells() {   # craft_cells TARGET VAR=value: craft's grid cells, unless its budget's question is open
    if [ -n "$COPEN" ]; then echo "== $(date -u +%FT%T) make $*: waits on CRAFT's budget: $COPEN"
    else grid "$@"; fi
}
craft_cells grid-stage1 GRID_FIRST=craft
# 5j. (added 2026-12-05 noon) the long orders' first cells (orders 4-6, seed 1; make grid's stage 2 of the methods
#     named): craft, then (since 2026-12-06, the strongest first) replay (the strongest of the three so far, about
#     4.7 h a cell by one contended CPU record, nearer 2 h), seq_lora (the forgetting check's reference) and o_lora
#     (the paper's LoRA-based reference, about 1.1 h a cell), ahead of i_lora's screen and stage 1's later seeds. Orders 4-6 are where tasks share output spaces and CRAFT's grouping acts, and the verdict has no cell
#     there yet; at some 3 h of queue a session, stage 1's seeds 2-3 (about 31 h) would keep them out for weeks.
#     About 1.3 h for craft's three cells and 14 h for the baselines' nine by the validation runs' medians (the
#     test cells' wall times say nearer 2.5 h and 25 h). The baselines' learning rates are decided.
craft_cells grid-stage2 GRID_LONG=craft
# 5l. (added 2026-12-05 evening) the bounds' seed 1 (per_task, mtl, zero_shot; make grid's stage 3 otherwise) on the
#     six stage-1 orders, ahead of the long orders' baselines: the test tables' bound checks (per_task above
#     seq_lora, mtl above replay) read "not checked" without them. About 5 h on this CPU (per_task and mtl train
#     seq_lora's budget; zero_shot only evaluates), against 14-25 h for the baselines below. They take seq_lora's
#     epochs by reference and the LoRA learning rate, 1e-3 like it, so they wait on no open setting.
grid grid-stage1 'GRID_FIRST=$(BOUNDS)' GRID_SEEDS=1
OPEN=$(undecided)
if [ -n "$OPEN" ]; then echo "== $(date -u +%FT%T) 5j: the long orders' baselines wait on these learning rates: $OPEN"
else for m in replay seq_lora o_lora; do grid grid-stage2 GRID_LONG=$m; done; fi   # the strongest first (2026-12-06)
# 5m. (added 2026-12-06) the bounds' seed 1 of orders 4-6 (make grid's stage 4 otherwise): the block's sanity
#     checks need per_task and mtl beside seq_lora and replay, or every verdict line on orders 4-6 says a check
#     could not be made. About 8 h (per_task about 65 min a cell, mtl about 1.7 h, zero_shot only evaluates); they
#     take seq_lora's epochs by reference and the LoRA learning rate, 1e-3 like it, so they wait on nothing.
grid grid-stage2 'GRID_LONG=$(BOUNDS)'
# 5i. (added 2026-12-05 morning) i_lora's learning rate, the screen 5b-5c gave seq_lora, replay and o_lora: i_lora
#     is the baseline closest to craft on orders 1-3 of the test grid (seed 1: ΔAA +3.17 [-0.42, 6.83]) and trains
#     seq_lora's lr by reference, never tried. Its defaults spelled (i_lora:epochs=3) so they land beside the
#     variants; seed 1, then seed 2 of what the screen keeps, then seed 3 of what passes. About 4-11 h. i_lora's
#     cells of the stage-1 grid below wait on its verdict (a move would make them again); the others' do not.
ILRS="i_lora:epochs=3:lr=0.0003,i_lora:epochs=3:lr=0.003"
LRS5B=$LRS
LRS="$LRS,$ILRS"
rule_seeds 5i offline1,offline2 "$ILRS" i_lora:epochs=3
# 5i'. (added 2026-12-06) i_lora's seed 1 of orders 4-6 once its learning rate is decided: on seed 1 it is the
#      baseline level with craft on orders 1-3 and the offline orders, and orders 4-6 had none of its cells before
#      make grid's stage 4 (after stage 3's 180 cells); ahead of stage 1's seeds 2-3, so that every block of the
#      verdict has every baseline on seed 1 first (about 9 h at the i_lora cells' medians, 2.9 h a cell)
IOPEN=$(undecided "$ILRS")   # read once: step 5c''' below reuses it (nothing between changes the tuning folder)
if [ -z "$IOPEN" ]; then grid grid-stage2 GRID_LONG=i_lora
else echo "== $(date -u +%FT%T) 5i': i_lora's orders 4-6 wait on these learning rates: $IOPEN"; fi
# 5c'''. (added 2026-12-04, when every learning rate of 5b was decided, none moving) the rest of the grid's stage 1:
#        the strongest baselines beside craft on orders 1-3 and the offline orders, three seeds (the cells that
#        decide the verdict there, about 31 h), ahead of the validation runs of 5d-6, none of which it needs.
#        (2026-12-05 noon) Each method whose setting is still open or passing (a default to move by hand) waits,
#        the others go on: craft on its budget (5k), i_lora on its learning rate (5i). '$(GRID_BASELINES)' is
#        expanded by make (stage 1's methods less craft and i_lora, named in one place).
OPEN=$(undecided "$LRS5B")
if [ -n "$OPEN" ]; then echo "== $(date -u +%FT%T) 5c''': the grid waits on these learning rates: $OPEN"
else
    FIRST='$(GRID_BASELINES)'
    if [ -z "$COPEN" ]; then FIRST="craft,$FIRST"; fi
    if [ -z "$IOPEN" ]; then FIRST="$FIRST,i_lora"
    else echo "== $(date -u +%FT%T) 5c''': i_lora's cells wait on these learning rates: $IOPEN"; fi
    grid grid-stage1 "GRID_FIRST=$FIRST"
fi
# 5d. (after the learning rates: the grid's stage 1 waits on those, not on 5d-5e) replay, level with CRAFT on
#     offline1-2, on the stream where CRAFT's grouping acts (no replay run there yet; spelled out so it lands
#     beside replay's three-epoch decision runs)
sw --runs $T --orders $G --seeds 1,2 --methods replay:epochs=3
# 5e. the shared-prefix dropout check (docs/cli.md, "Caches"): seq_lora at one epoch trained on whole prompts
#     (--cache off) on the streams and seeds where the tuning folder holds its shared-prefix runs (offline1-2 x
#     seeds 2-3); `harness compare results/val/tuning/runs results/val/cache_off/runs --pair-by label` pairs them
sw --runs $RESULTS/val/cache_off/runs --orders offline1,offline2 --seeds 2,3 --methods seq_lora:epochs=1 --cache off
# 6. (after the grid's stage 1, which decides the verdict and needs none of it) first validation runs of the
#    grid's remaining methods, and the first at three epochs (seq_lora's, their default since 2026-12-02 night) of
#    four that ran one: spelled out, so they land beside the one-epoch runs, which a sweep of the bare names would
#    refuse as stale
sw --runs $V --orders offline1 --seeds 1 --methods crma,adaptive_svd,mtl,zero_shot
sw --runs $V --orders offline1 --seeds 1 --methods ewc:epochs=3,lwf:epochs=3,i_lora:epochs=3,curlora:epochs=3
# 7. the paper grid (make grid, every stage; the cells made above are skipped as finished), once no learning rate
#    of 5b or 5i and no budget of 5k is left open or passing
OPEN=$(undecided)
OPEN=${OPEN:+$OPEN }$COPEN
if [ -n "$OPEN" ]; then echo "== $(date -u +%FT%T) 7: the grid waits on these settings: $OPEN"
else grid grid; fi
echo "== $(date -u +%FT%T) queue done"
