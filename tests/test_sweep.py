"""The sweep: skips finished runs, resumes an unfinished one after its last finished task, runs the rest."""
import dataclasses
import json
import os
import signal
import subprocess
import sys
import time

import pytest

from core.errors import UsageError
from harness import config
from harness.cli import build_parser, main
from harness.config import BenchConfig
from harness.sweep import MethodSpec, cell_state, other_test_data, plan, split_methods
from tests.conftest import sweep_setup

TINY = ["--model", "tiny-llama", "--train-per-task", "4", "--test-per-task", "3", "--max-input-tokens", "8"]
ORDER = "bbc+hutto_amazon"


def events(path):
    return [json.loads(line) for line in open(os.path.join(path, "log.jsonl"))]


def test_method_specs_and_plan(tmp_path):
    spec = MethodSpec.parse("craft:routing=single:merge=false")
    assert spec.name == "craft" and dict(spec.args) == {"routing": "single", "merge": "false"}
    assert spec.label == "craft+routing=single+merge=false"
    cells = plan(str(tmp_path), ["seq_lora", "zero_shot"], ["offline1", "offline2"], ["1", "2"])
    # seed-major: a sweep cut short has covered every method and order once
    assert [(c.method.name, c.config.order, c.config.seed) for c in cells[:4]] == [
        ("seq_lora", "offline1", 1), ("zero_shot", "offline1", 1), ("seq_lora", "offline2", 1),
        ("zero_shot", "offline2", 1)]
    # a cell's command line is its config spelled out: parsed back, it is the same run
    shared = BenchConfig(train_per_task=None, test_per_task=5, data_dir="/data", eval="generate")
    cell = plan(str(tmp_path), ["craft:routing=single"], ["offline2"], ["3"], shared)[0]
    a = build_parser().parse_args(cell.command()[3:])
    assert config.from_args(a, method_args=dict(p.split("=") for p in a.method_arg)) == cell.config
    assert (cell.config.test_per_task, cell.config.seed, cell.config.progress) == (5, 3, False)
    with pytest.raises(UsageError, match="no setting 'nope'"):
        plan(str(tmp_path), ["craft:nope=1"], ["offline1"], ["1"])
    with pytest.raises(UsageError, match="unknown order"):
        plan(str(tmp_path), ["seq_lora"], ["9"], ["1"])
    with pytest.raises(UsageError, match="expected name:key=value"):
        MethodSpec.parse("craft:routing")


def test_a_comma_separated_setting_value_stays_in_its_spec(tmp_path):
    raw = "craft:layers=3,7,11,seq_lora:target_modules=q_proj,k_proj,v_proj:lr=3e-4,replay,seq_lora:r=4"
    assert split_methods(raw) == ["craft:layers=3,7,11", "seq_lora:target_modules=q_proj,k_proj,v_proj:lr=3e-4",
                                  "replay", "seq_lora:r=4"]
    cells = plan(str(tmp_path), split_methods("seq_lora:target_modules=q_proj,k_proj,v_proj,craft:layers=3,7"),
                 ["offline1"], ["1"])
    assert [c.settings["target_modules"] for c in cells[:1]] == ["q_proj,k_proj,v_proj"]
    assert cells[1].settings["layers"] == "3,7"
    assert cells[0].out.split(os.sep)[-3] == "seq_lora+target_modules=q_proj,k_proj,v_proj"
    # a piece after a spec without a value is a spec of its own: a typo meets the registry's "did you mean"
    with pytest.raises(UsageError, match="did you mean"):
        plan(str(tmp_path), split_methods("seq_lora,craf"), ["offline1"], ["1"])
    # after a value, a mistyped method is refused, not read on into the value (taking its settings with it)
    for raw in ("seq_lora:target_modules=q_proj,v_proj,seq_lor:lr=3e-4", "craft:lr=1e-3,repaly"):
        with pytest.raises(UsageError, match="did you mean 'seq_lora'|did you mean 'replay'"):
            split_methods(raw)
    # a piece read on into a list value is checked by the method before anything runs
    with pytest.raises(UsageError, match="layers must be auto or comma-separated"):
        plan(str(tmp_path), split_methods("craft:layers=3,7,x"), ["offline1"], ["1"])


def test_sweep_skips_finished_resumes_unfinished_and_runs_the_rest(tmp_path, capsys, monkeypatch):
    # The local engine never imports ray: here `import ray` fails as where it is not installed, whichever
    # test imported it earlier in this process.
    monkeypatch.setitem(sys.modules, "ray", None)
    runs = str(tmp_path / "runs")
    finished = os.path.join(runs, "zero_shot", ORDER, "seed1")
    partial = os.path.join(runs, "seq_lora", ORDER, "seed1")
    # A finished cell, and a cell killed between its tasks (stopped after task 1, as a kill would leave it).
    assert main(["bench", "--method", "zero_shot", "--order", ORDER, "--out", finished, "--quiet", *TINY]) == 0
    assert main(["bench", "--method", "seq_lora", "--order", ORDER, "--out", partial, "--quiet",
                 "--stop-after-task", "1", *TINY]) == 0
    assert cell_state(plan(runs, ["seq_lora"], [ORDER], ["1"], sweep_setup(TINY))[0]) == "partial"
    finished_mtime = os.path.getmtime(os.path.join(finished, "status.json"))
    # --print-commands: one line per unfinished cell, exactly what the local engine then runs (and logs)
    capsys.readouterr()
    assert main(["sweep", "--methods", "seq_lora,zero_shot,replay:memory_size=2", "--orders", ORDER,
                 "--seeds", "1", "--runs", runs, "--quiet", *TINY, "--print-commands"]) == 0
    printed = capsys.readouterr().out.splitlines()
    assert len(printed) == 2 and not os.path.exists(os.path.join(runs, "sweeps.jsonl"))   # ran nothing

    code = main(["sweep", "--methods", "seq_lora,zero_shot,replay:memory_size=2", "--orders", ORDER,
                 "--seeds", "1", "--runs", runs, "--quiet", *TINY])
    captured = capsys.readouterr()
    out = captured.out
    assert code == 0, captured.err
    ran = sorted(line[2:].rstrip("\n") for name in os.listdir(os.path.join(runs, "logs"))
                 for line in open(os.path.join(runs, "logs", name)) if line.startswith("$ "))
    assert sorted(printed) == ran
    assert printed[0].startswith("PYTHONPATH=")
    assert f" -m harness bench --method seq_lora --order {ORDER} " in printed[0]
    assert "2 run(s) done now, 1 skipped" in out
    assert os.path.getmtime(os.path.join(finished, "status.json")) == finished_mtime   # untouched
    log = events(partial)
    starts = [e for e in log if e["event"] == "run_start"]
    assert [s["resumed"] for s in starts] == [False, True]
    assert [e["task"] for e in log if e["event"] == "task_start"] == ["bbc", "hutto_amazon"]   # bbc once
    fresh = os.path.join(runs, "replay+memory_size=2", ORDER, "seed1")
    assert json.load(open(os.path.join(fresh, "config.json")))["method_args"] == {"memory_size": "2"}
    for cell in plan(runs, ["seq_lora", "zero_shot", "replay:memory_size=2"], [ORDER], ["1"], sweep_setup(TINY)):
        assert cell_state(cell) == "finished"
    # a second identical command does nothing
    assert main(["sweep", "--methods", "seq_lora,zero_shot,replay:memory_size=2", "--orders", ORDER,
                 "--seeds", "1", "--runs", runs, "--quiet", *TINY]) == 0
    assert "0 run(s) done now, 3 skipped" in capsys.readouterr().out
    history = [json.loads(line) for line in open(os.path.join(runs, "sweeps.jsonl"))]
    # the run options the user gave, structured (tables print them back as the command that remakes the runs)
    assert len(history) == 2 and history[-1]["options"] == config.given_options(config.from_args(
        build_parser().parse_args(["sweep", "--methods", "x", "--orders", "y", *TINY])))


def test_sweep_reports_a_failed_run_and_goes_on(tmp_path, capsys):
    runs = str(tmp_path / "runs")
    blocker = os.path.join(runs, "seq_lora", ORDER, "seed1")
    os.makedirs(blocker)
    open(os.path.join(blocker, "stray.txt"), "w").write("not a run")   # bench refuses this folder
    code = main(["sweep", "--methods", "seq_lora,zero_shot", "--orders", ORDER, "--runs", runs, "--quiet", *TINY])
    out = capsys.readouterr().out
    assert code == 1 and "1 failed" in out and "failed: " + blocker in out
    assert cell_state(plan(runs, ["zero_shot"], [ORDER], ["1"], sweep_setup(TINY))[0]) == "finished"


def _processes_mentioning(text):
    found = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                if text.encode() in f.read():
                    found.append(int(pid))
        except OSError:
            pass
    return found


@pytest.mark.skipif(not os.path.isdir("/proc"), reason="reads /proc to find the sweep's runs")
def test_sigterm_stops_the_sweep_and_its_runs_and_the_same_command_resumes(tmp_path, capsys):
    """A real kill of a running sweep (SIGTERM: what a background sweep gets), not a planned stop."""
    runs = str(tmp_path / "runs")
    order = "bbc+hutto_amazon+trec+hutto_tweets"
    sizes = ["--model", "tiny-llama", "--train-per-task", "24", "--test-per-task", "12", "--max-input-tokens", "16"]
    argv = ["sweep", "--methods", "seq_lora", "--orders", order, "--seeds", "1", "--runs", runs, "--quiet", *sizes]
    env = dict(os.environ, PYTHONPATH=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    sweep = subprocess.Popen([sys.executable, "-m", "harness", *argv], env=env, stdout=subprocess.DEVNULL,
                             stderr=subprocess.PIPE)
    run = os.path.join(runs, "seq_lora", order, "seed1")
    deadline = time.time() + 120
    while time.time() < deadline:   # kill once the run has finished its first task, mid-stream
        try:
            if "bbc" in json.load(open(os.path.join(run, "status.json")))["rows"]:
                break
        except (OSError, ValueError, KeyError):
            pass
        time.sleep(0.05)
    sweep.send_signal(signal.SIGTERM)
    _, err = sweep.communicate(timeout=60)
    assert sweep.returncode == 130, err.decode()
    time.sleep(0.5)
    assert _processes_mentioning(run) == []          # the bench run went with it, not orphaned
    if cell_state(plan(runs, ["seq_lora"], [order], ["1"], sweep_setup(sizes))[0]) == "finished":
        pytest.skip("the run finished before the signal landed (machine faster than this test expects)")

    assert main(argv) == 0, capsys.readouterr().err
    log = events(run)
    assert [s["resumed"] for s in log if s["event"] == "run_start"] == [False, True]
    assert [e["task"] for e in log if e["event"] == "task_start"].count("bbc") == 1
    assert cell_state(plan(runs, ["seq_lora"], [order], ["1"], sweep_setup(sizes))[0]) == "finished"


def test_a_run_made_with_other_settings_is_neither_skipped_nor_resumed(tmp_path, capsys):
    runs = str(tmp_path / "runs")
    out = os.path.join(runs, "seq_lora", ORDER, "seed1")
    assert main(["bench", "--method", "seq_lora", "--order", ORDER, "--out", out, "--quiet", *TINY]) == 0
    cell = plan(runs, ["seq_lora"], [ORDER], ["1"], sweep_setup(TINY))[0]
    assert cell_state(cell) == "finished"
    config = json.load(open(os.path.join(out, "config.json")))
    config["settings"]["lr"] *= 2          # as if seq_lora's default lr changed after this run
    json.dump(config, open(os.path.join(out, "config.json"), "w"))
    assert cell_state(cell) == "stale"
    code = main(["sweep", "--methods", "seq_lora", "--orders", ORDER, "--runs", runs, "--quiet", *TINY])
    assert code == 2 and "made with other settings" in capsys.readouterr().err


def test_a_finished_run_of_another_setup_is_refused_not_skipped(tmp_path, capsys):
    # else a grid rerun with other sizes (or split, model...) would count it as done, and the tables would fail or
    # file it apart only at the end, hours later
    runs = str(tmp_path / "runs")
    out = os.path.join(runs, "zero_shot", ORDER, "seed1")
    assert main(["bench", "--method", "zero_shot", "--order", ORDER, "--out", out, "--quiet", *TINY]) == 0
    other = [*TINY[:-3], "5", *TINY[-2:]]                       # --test-per-task 5, not 3
    assert other[TINY.index("--test-per-task") + 1] == "5"
    argv = ["sweep", "--methods", "zero_shot", "--orders", ORDER, "--runs", runs, "--quiet"]
    assert cell_state(plan(runs, ["zero_shot"], [ORDER], ["1"], sweep_setup(other))[0]) == "other setup"
    before = open(os.path.join(out, "status.json")).read()
    code = main([*argv, *other])
    err = capsys.readouterr().err
    assert code == 2 and "made under another setup than this sweep's (test_per_task)" in err, err
    assert open(os.path.join(out, "status.json")).read() == before
    assert main([*argv, *TINY]) == 0                               # its own setup skips it as finished
    assert "1 of 1 run(s) already finished" in capsys.readouterr().err


def test_an_unfinished_run_on_other_test_data_is_refused_before_any_cell_runs(tmp_path, capsys):
    # a grid resumed with another --data-dir: refused in one line before anything runs (as a stale or other-setup
    # cell is), not as one failed cell among the others when its turn comes
    runs = str(tmp_path / "runs")
    out = os.path.join(runs, "zero_shot", ORDER, "seed1")
    assert main(["bench", "--method", "zero_shot", "--order", ORDER, "--out", out, "--quiet", *TINY]) == 0
    status = json.load(open(os.path.join(out, "status.json")))
    status["state"] = "running"   # unfinished, as a kill leaves it
    json.dump(status, open(os.path.join(out, "status.json"), "w"))
    argv = ["sweep", "--methods", "zero_shot,seq_lora", "--orders", ORDER, "--runs", runs, "--quiet", *TINY]
    cells = plan(runs, ["zero_shot"], [ORDER], ["1"], sweep_setup(TINY))
    assert cell_state(cells[0]) == "partial" and other_test_data(cells[0]) == []
    record = json.load(open(os.path.join(out, "config.json")))
    record["data"]["bbc"]["gold"] = "9" * len(record["data"]["bbc"]["gold"])   # scored on other examples
    json.dump(record, open(os.path.join(out, "config.json"), "w"))
    assert other_test_data(cells[0]) == ["bbc"]
    before = {n: open(os.path.join(out, n), "rb").read() for n in os.listdir(out)}
    code = main(argv)
    err = capsys.readouterr().err
    assert code == 2 and "1 unfinished run directory was made on other test data than this sweep's (bbc: another " \
        "--data-dir?)" in err, err
    assert {n: open(os.path.join(out, n), "rb").read() for n in os.listdir(out)} == before
    assert not os.path.exists(os.path.join(runs, "seq_lora"))   # the other cell did not start either
    assert main([*argv, "--dry-run"]) == 0   # a dry run names it as the sweep would refuse it
    assert f"other data  {out}" in capsys.readouterr().out


def test_the_default_runs_folder_keeps_records_in_git_and_weights_out():
    # A machine's disk does not outlive its session here; the sweep's records must, or a sweep too big for
    # one sitting can never finish and the committed tables cannot be remade without rerunning everything.
    from harness.cli import RUNS_DEFAULT
    from tests.conftest import ROOT
    if subprocess.run(["git", "-C", ROOT, "rev-parse"], capture_output=True).returncode != 0:
        pytest.skip("not a git checkout")
    run = os.path.join(RUNS_DEFAULT, "seq_lora", "1", "seed1")

    def ignored(path):
        return subprocess.run(["git", "-C", ROOT, "check-ignore", "--no-index", "-q", path]).returncode == 0

    for kept in ("config.json", "status.json", "matrix.csv", "metrics.json", "method.json", "general.json",
                 "log.jsonl"):
        assert not ignored(os.path.join(run, kept)), kept
    assert not ignored(os.path.join(RUNS_DEFAULT, "base-cache.json"))
    assert ignored(os.path.join(run, "checkpoint-3.pt"))
    assert ignored(os.path.join(run, ".tmp-x1y2checkpoint-3.pt"))          # a kill mid-write leaves these
    assert ignored(os.path.join(RUNS_DEFAULT, ".tmp-x1y2base-cache.json"))
    assert ignored(os.path.join(RUNS_DEFAULT, "logs", "seq_lora-1-seed1.log"))
    assert ignored(os.path.join("runs", "sweep", "seq_lora", "1", "seed1", "matrix.csv"))   # scratch runs stay out


def _finished_run(path, stages, rows, setup=None):
    """A finished run's record as the cost model reads it: per-stage timings in its card, rows in its status,
    its setup in config.json."""
    os.makedirs(path)
    with open(os.path.join(path, "status.json"), "w") as f:
        json.dump({"state": "finished", "rows": rows}, f)
    with open(os.path.join(path, "method.json"), "w") as f:
        json.dump({"timing": {"per_stage": stages}}, f)
    from methods import get_method
    method = os.path.basename(os.path.dirname(os.path.dirname(path))).split("+")[0]   # <runs>/<label>/<order>/seed<n>
    settings = json.loads(json.dumps(get_method(method).resolve_settings({})))   # as config.json stores them
    with open(os.path.join(path, "config.json"), "w") as f:
        json.dump({"model": "tiny-llama", "settings": settings, **(setup or {})}, f)


def test_dry_run_adds_the_probes_a_cell_lacks_at_the_medians_their_records_keep(tmp_path, capsys):
    from harness.sweep import CostModel
    runs = str(tmp_path / "runs")
    two = {"bbc": 1, "hutto_amazon": 1}
    stages = {"base": {"train_seconds": None, "eval_seconds": 4.0}, "bbc": {"train_seconds": 10.0, "eval_seconds": 6.0},
              "hutto_amazon": {"train_seconds": 30.0, "eval_seconds": 6.0}}
    rows = {"base": {"accuracy": two, "reused": []}, "bbc": {"accuracy": two}, "hutto_amazon": {"accuracy": two}}
    from harness.general import GENERAL_TASKS
    from harness.protocols import _stamp
    from harness.rundir import RunDir
    # general's time is kept per held-out task (7 here), generation's per stream task (2): seed 1 30 s and 12 s,
    # seed 2 50 s (its protocols.json predates the time), seed 4 900 s for a `general --tasks sms_spam` record,
    # which is another measurement than the probe's and is left out
    for seed, general, generation, asked in ((1, 30.0, 12.0, GENERAL_TASKS), (2, 50.0, None, GENERAL_TASKS),
                                             (4, 900.0, None, ("sms_spam",))):
        path = os.path.join(runs, "seq_lora", ORDER, f"seed{seed}")
        _finished_run(path, stages, rows)
        with open(os.path.join(path, "general.json"), "w") as f:
            json.dump({"seconds": general, "requested": list(asked), "per_task": 50,
                       "tasks": {t: {} for t in asked}}, f)
        with open(os.path.join(path, "protocols.json"), "w") as f:
            json.dump({"stamp": _stamp(RunDir(path)), "tasks": {t: {} for t in two},
                       **({"seconds": generation} if generation else {})}, f)
    _finished_run(os.path.join(runs, "mtl", ORDER, "seed1"), {"all": {"train_seconds": 40.0, "eval_seconds": 5.0}},
                  {"base": {"accuracy": two, "reused": ["bbc", "hutto_amazon"]}, "all": {"accuracy": two}})
    like = BenchConfig(model="tiny-llama", probes="general,generation")
    model = CostModel.read(runs, like)
    assert model.probe == {"general": {"seq_lora": pytest.approx(40.0 / 7)}, "generation": {"seq_lora": 6.0}}
    seq, mtl = plan(runs, ["seq_lora", "mtl"], ["bbc+hutto_amazon+trec"], ["1"], like)
    plain = plan(runs, ["seq_lora"], ["bbc+hutto_amazon+trec"], ["1"], BenchConfig(model="tiny-llama"))[0]
    # the probes' medians on seq_lora's own runs, times the tasks they measure (7 held out, 3 in the stream); mtl
    # has none of its own and costs every run's
    assert model.seconds_left(seq) == pytest.approx(model.seconds_left(plain) + 40.0 + 3 * 6.0)
    assert model.seconds_left(mtl) == pytest.approx(3 * 20 + 3 * 2.5 + 40.0 + 3 * 6.0)
    assert main(["sweep", "--methods", "seq_lora", "--orders", ORDER, "--seeds", "3", "--runs", runs, "--model",
                 "tiny-llama", "--probes", "general,generation", "--dry-run"]) == 0
    assert "the probe(s) general, generation at their median time a task" in capsys.readouterr().out
    # a finished cell that lacks only its probes costs them alone, and one probe no run timed is named, not costed
    finished = os.path.join(runs, "seq_lora", ORDER, "seed1")
    os.remove(os.path.join(finished, "protocols.json"))
    cell = plan(runs, ["seq_lora"], [ORDER], ["1"], BenchConfig(model="tiny-llama", probes="generation"))[0]
    assert cell.out == finished and model.seconds_left(cell) == pytest.approx(2 * 6.0)
    for seed in (1, 2, 4):
        os.remove(os.path.join(runs, "seq_lora", ORDER, f"seed{seed}", "general.json"))
    assert main(["sweep", "--methods", "mtl", "--orders", ORDER, "--seeds", "2", "--runs", runs, "--model",
                 "tiny-llama", "--probes", "general", "--dry-run"]) == 0
    assert "the time of the probe(s) general (--probes) is not in these costs" in capsys.readouterr().out


def test_a_method_whose_earlier_cells_keep_their_scores_is_costed_per_row(tmp_path):
    # per_task: a task's adapter is frozen once trained, so each row scores about one new cell (its own task) and
    # takes its earlier cells from the score cache; costed per needed cell, a 15-task order would read 9 times
    # its evaluation
    from harness.sweep import CostModel
    runs = str(tmp_path / "runs")
    two = {"bbc": 1, "hutto_amazon": 1}
    _finished_run(os.path.join(runs, "per_task", ORDER, "seed1"),
                  {"base": {"train_seconds": None, "eval_seconds": 0.0},
                   "bbc": {"train_seconds": 10.0, "eval_seconds": 3.0},
                   "hutto_amazon": {"train_seconds": 30.0, "eval_seconds": 5.0}},
                  {"base": {"accuracy": two, "reused": ["bbc", "hutto_amazon"]}, "bbc": {"accuracy": two, "scored": 1},
                   "hutto_amazon": {"accuracy": two, "scored": 1}})
    for seed, seconds in ((1, 3.0), (2, 5.0)):   # seq_lora scores every cell it holds
        _finished_run(os.path.join(runs, "seq_lora", ORDER, f"seed{seed}"),
                      {"base": {"train_seconds": None, "eval_seconds": 0.0},
                       "bbc": {"train_seconds": 10.0, "eval_seconds": 2 * seconds},
                       "hutto_amazon": {"train_seconds": 30.0, "eval_seconds": 2 * seconds}},
                      {"base": {"accuracy": two, "reused": ["bbc", "hutto_amazon"]}, "bbc": {"accuracy": two},
                       "hutto_amazon": {"accuracy": two}})
    like = BenchConfig(model="tiny-llama", matrix="needed")
    model = CostModel.read(runs, like)
    assert model.per_row["per_task"] == 4.0 and model.per_cell["per_task"] == 4.0
    per_task, seq = plan(runs, ["per_task", "seq_lora"], ["bbc+hutto_amazon+trec"], ["1"], like)
    assert model.seconds_left(per_task) == pytest.approx(10 + 30 + 20 + 3 * 4.0)          # 3 rows at 4 s
    assert model.seconds_left(seq) == pytest.approx(10 + 30 + 20 + (2 + 3 + 3) * 4.0)    # 8 needed cells at 4 s
    # resumed after its first task: the runner keeps no earlier row's scores, so its next row scores bbc's cell
    # again (at the per-cell rate) beside its own
    os.makedirs(per_task.out)
    open(os.path.join(per_task.out, "c.pt"), "w").close()
    with open(os.path.join(per_task.out, "status.json"), "w") as f:
        json.dump({"state": "running", "rows": {"base": {"accuracy": two}, "bbc": {"accuracy": two}},
                   "checkpoint": "c.pt"}, f)
    assert model.seconds_left(per_task, "partial") == pytest.approx(30 + 20 + 2 * 4.0 + 1 * 4.0)


def test_a_cell_that_resumes_mid_task_is_charged_the_steps_left(tmp_path):
    # mtl's one stage of a 15-task order runs for hours: a session that stopped it after a mid-task save
    # (RunDir.save_partial) leaves only the rest of its steps to pay for
    from harness.sweep import CostModel
    runs = str(tmp_path / "runs")
    two = {"bbc": 1, "hutto_amazon": 1}
    for label, stages, rows in (
            ("seq_lora", {"bbc": 10.0, "hutto_amazon": 30.0}, ("bbc", "hutto_amazon")),
            ("mtl", {"all": 40.0}, ("all",))):
        _finished_run(os.path.join(runs, label, ORDER, "seed1"),
                      {"base": {"train_seconds": None, "eval_seconds": 0.0},
                       **{stage: {"train_seconds": seconds, "eval_seconds": 2.0, "steps": 8}
                          for stage, seconds in stages.items()}},
                      {"base": {"accuracy": two, "reused": ["bbc", "hutto_amazon"]},
                       **{row: {"accuracy": two} for row in rows}})
    like = BenchConfig(model="tiny-llama", matrix="needed")
    model = CostModel.read(runs, like)
    seq, mtl = plan(runs, ["seq_lora", "mtl"], [ORDER], ["2"], like)
    assert (model.seconds_left(seq), model.seconds_left(mtl)) == (pytest.approx(44.0), pytest.approx(42.0))
    for cell, rows, index in ((seq, ("base", "bbc"), 1), (mtl, ("base",), 0)):
        os.makedirs(cell.out)
        open(os.path.join(cell.out, "c.pt"), "w").close()
        partial = {"file": f"partial-{index}.pt", "task_index": index, "step": 6}
        with open(os.path.join(cell.out, "status.json"), "w") as f:
            json.dump({"state": "running", "rows": {row: {"accuracy": two} for row in rows}, "checkpoint": "c.pt",
                       "partial": partial}, f)
    # without its file, a save resumes nothing
    assert model.seconds_left(seq, "partial") == pytest.approx(30 + 2 * 1.0)
    assert model.seconds_left(mtl, "partial") == pytest.approx(40 + 2 * 1.0)
    for cell, index in ((seq, 1), (mtl, 0)):
        open(os.path.join(cell.out, f"partial-{index}.pt"), "w").close()
    # 6 of the stage's 8 steps taken: a quarter of its training left, and its evaluation
    assert model.seconds_left(seq, "partial") == pytest.approx(30 / 4 + 2 * 1.0)
    assert model.seconds_left(mtl, "partial") == pytest.approx(40 / 4 + 2 * 1.0)
    # a joint stage's steps grow with its tasks (4 a task here): on a 3-task order 8 steps taken leave a third
    longer, = plan(runs, ["mtl"], ["bbc+hutto_amazon+trec"], ["2"], like)
    os.makedirs(longer.out)
    open(os.path.join(longer.out, "c.pt"), "w").close()
    open(os.path.join(longer.out, "partial-0.pt"), "w").close()
    with open(os.path.join(longer.out, "status.json"), "w") as f:
        json.dump({"state": "running", "rows": {"base": {"accuracy": two}}, "checkpoint": "c.pt",
                   "partial": {"file": "partial-0.pt", "task_index": 0, "step": 8}}, f)
    assert model.seconds_left(longer, "partial") == pytest.approx(3 * 20 / 3 + 3 * 1.0)


def test_dry_run_costs_what_is_left_at_the_medians_of_finished_runs(tmp_path, capsys):
    from harness.sweep import CostModel, grid_costs
    runs = str(tmp_path / "runs")
    two = {"bbc": 1, "hutto_amazon": 1}
    # seq_lora on bbc+hutto_amazon: the backbone's row 4 s for 2 cells; training 10 s and 30 s; after bbc 6 s for
    # 2 cells (a record without `scored`), after hutto_amazon 8 s for the 1 cell it scored (the other was cached)
    _finished_run(os.path.join(runs, "seq_lora", ORDER, "seed1"),
                  {"base": {"train_seconds": None, "eval_seconds": 4.0},
                   "bbc": {"train_seconds": 10.0, "eval_seconds": 6.0},
                   "hutto_amazon": {"train_seconds": 30.0, "eval_seconds": 8.0}},
                  {"base": {"accuracy": two, "reused": []}, "bbc": {"accuracy": two},
                   "hutto_amazon": {"accuracy": two, "scored": 1}})
    # mtl trains once on both tasks (40 s: 20 s a task) and scores one row (2 cells, 5 s); its base row was shared
    _finished_run(os.path.join(runs, "mtl", ORDER, "seed1"),
                  {"base": {"train_seconds": None, "eval_seconds": 0.0},
                   "all": {"train_seconds": 40.0, "eval_seconds": 5.0}},
                  {"base": {"accuracy": two, "reused": ["bbc", "hutto_amazon"]}, "all": {"accuracy": two}})
    # zero_shot scores nothing itself; a run of another setup (other sizes) and a damaged record are left out
    _finished_run(os.path.join(runs, "zero_shot", ORDER, "seed1"), {"base": {"eval_seconds": 0.0}},
                  {"base": {"accuracy": two, "reused": ["bbc", "hutto_amazon"]}})
    _finished_run(os.path.join(runs, "seq_lora", ORDER, "seed2"), {"bbc": {"train_seconds": 999.0}},
                  {"base": {"accuracy": two}}, {"train_per_task": 5})
    _finished_run(os.path.join(runs, "seq_lora", ORDER, "seed3"), {"bbc": None}, {"base": None})
    like = BenchConfig(model="tiny-llama", matrix="needed")
    model = CostModel.read(runs, like)
    assert (model.runs, model.skipped) == (3, 1) and model.train["seq_lora"] == {"bbc": 10.0, "hutto_amazon": 30.0}
    assert model.per_cell == {"seq_lora": 5.5, "mtl": 2.5, "zero_shot": 0.0} and model.base_per_cell == 2.0
    assert model.train["mtl"] == {"bbc": 20.0, "hutto_amazon": 20.0}
    longer = "bbc+hutto_amazon+trec"
    seq, mtl, zero = plan(runs, ["seq_lora", "mtl", "zero_shot"], [longer], ["1"], like)
    # trec was never trained: the median task (20 s). Needed cells after each task: 2, 3, 3.
    assert model.seconds_left(seq) == pytest.approx(10 + 30 + 20 + (2 + 3 + 3) * 5.5)
    assert model.seconds_left(mtl) == pytest.approx(3 * 20 + 3 * 2.5)   # one row of 3 cells
    assert model.seconds_left(zero) == 0.0
    # a run cut after its first task costs what it has left, unless its checkpoint is gone (all stages again)
    _finished_run(seq.out, {}, {})
    status = {"state": "running", "rows": {"base": {"accuracy": two}, "bbc": {"accuracy": two}}, "checkpoint": "c.pt"}
    with open(os.path.join(seq.out, "status.json"), "w") as f:
        json.dump(status, f)
    assert model.seconds_left(seq) == pytest.approx(10 + 30 + 20 + (2 + 3 + 3) * 5.5)
    open(os.path.join(seq.out, "c.pt"), "w").close()
    assert model.seconds_left(seq) == pytest.approx(30 + 20 + (3 + 3) * 5.5)
    # The grid: the backbone's row is charged once per task and setup the folder's base-cache lacks (bbc is in it;
    # hutto_amazon only at other sizes, which do not count), to the first cell left that will score it: not
    # seq_lora on the longer order, whose status keeps its base row, but mtl there (hutto_amazon and trec).
    other_sizes = dataclasses.replace(like, test_per_task=7)
    with open(os.path.join(runs, "base-cache.json"), "w") as f:
        json.dump({config.backbone_cache_key(like, "bbc", "fingerprint"): {"accuracy": 0.0, "predictions": "0"},
                   config.backbone_cache_key(other_sizes, "hutto_amazon", "fingerprint"): {"accuracy": 0.0,
                                                                                            "predictions": "0"}}, f)
    cells = plan(runs, ["seq_lora", "mtl", "zero_shot"], [ORDER, longer], ["1"], like)
    _, costs = grid_costs(runs, cells)
    assert [(state, seconds) for _, state, seconds in costs] == [
        ("finished", None), ("finished", None), ("finished", None), ("partial", pytest.approx(83)),
        ("new", pytest.approx(67.5 + 2 * 2.0)), ("new", 0.0)]
    assert main(["sweep", "--methods", "seq_lora,mtl,zero_shot,replay", "--orders", f"{ORDER},{longer}",
                 "--seeds", "1", "--runs", runs, "--matrix", "needed", "--model", "tiny-llama", "--dry-run"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0].startswith("finished") and out[4].startswith(" partial") and out[4].endswith("~1 min")
    # 83 + 71.5 + 0 s; replay has no record to go by
    assert out[-1].startswith("left: 5 of 8 run(s), about 3 min one after another, at the medians of the 3 finished")
    assert ("1 finished run(s) there with another setup left out; not estimated (no finished run "
            f"in {runs}): replay; ") in out[-1]
    # seq_lora's and mtl's medians each rest on one finished run (zero_shot's cells cost nothing): said, as a busy
    # machine then would move every cell they cost
    assert "; costed by one finished run alone, whatever else the machine ran then: mtl, seq_lora;" in out[-1]
    assert out[-1].endswith("costed at the method's median task, as no run of that method there trained them "
                            "(label counts and prompt lengths are not modelled): seq_lora: trec; mtl: trec")
    # a variant with no finished run of its own is costed at its method's defaults, and the summary says so
    (cell, state, seconds), = grid_costs(runs, plan(runs, ["seq_lora:lr=0.01"], [longer], ["1"], like))[1]
    assert state == "new" and seconds == pytest.approx(10 + 30 + 20 + (2 + 3 + 3) * 5.5 + 2 * 2.0)
    assert main(["sweep", "--methods", "seq_lora:lr=0.01", "--orders", longer, "--seeds", "1", "--runs", runs,
                 "--matrix", "needed", "--model", "tiny-llama", "--dry-run"]) == 0
    last = capsys.readouterr().out.splitlines()[-1]
    assert last.startswith("left: 1 of 1 run(s), about 2 min") and "not estimated" not in last
    assert "costed at its method's defaults, as no current run of it finished: seq_lora+lr=0.01 as seq_lora" in last
    # another folder's records cost a new grid (same setup): here, every cell of the grid is left
    empty = str(tmp_path / "elsewhere")
    assert main(["sweep", "--methods", "seq_lora", "--orders", longer, "--seeds", "1,2", "--runs", empty,
                 "--matrix", "needed", "--model", "tiny-llama", "--dry-run", "--costs-from", runs]) == 0
    # 2 x 104 s, and the 3 base cells once (6 s)
    assert capsys.readouterr().out.splitlines()[-1].startswith("left: 2 of 2 run(s), about 4 min")
    assert main(["sweep", "--methods", "seq_lora", "--orders", longer, "--seeds", "1", "--runs", empty,
                 "--model", "tiny-llama", "--costs-from", runs]) == 2
    assert "--costs-from goes with --dry-run" in capsys.readouterr().err and not os.path.exists(empty)
    assert main(["sweep", "--methods", "seq_lora", "--orders", longer, "--seeds", "1", "--runs", empty,
                 "--model", "smollm2-135m", "--dry-run", "--costs-from", runs]) == 2   # no run of this setup there
    assert f"--costs-from {runs}: no finished run with this grid's setup there" in capsys.readouterr().err
    # several folders pool their runs: replay, costed nowhere in `runs`, is costed from a second folder
    more = str(tmp_path / "more")
    _finished_run(os.path.join(more, "replay", ORDER, "seed1"),
                  {"base": {"eval_seconds": 0.0}, "bbc": {"train_seconds": 50.0, "eval_seconds": 4.0},
                   "hutto_amazon": {"train_seconds": 70.0, "eval_seconds": 6.0}},
                  {"base": {"accuracy": two, "reused": ["bbc", "hutto_amazon"]}, "bbc": {"accuracy": two},
                   "hutto_amazon": {"accuracy": two}})
    pooled = CostModel.read([runs, more], like)
    assert pooled.runs == model.runs + 1 and pooled.train["replay"] == {"bbc": 50.0, "hutto_amazon": 70.0}
    assert pooled.train["seq_lora"] == model.train["seq_lora"] and pooled.per_cell["replay"] == 2.5
    assert main(["sweep", "--methods", "seq_lora,replay", "--orders", longer, "--seeds", "1", "--runs", empty,
                 "--matrix", "needed", "--model", "tiny-llama", "--dry-run",
                 "--costs-from", f"{runs},{more},{runs}/"]) == 0
    # seq_lora 104 s, replay 50 + 70 + 60 s and 8 cells at 2.5 s, the 3 base cells 6 s: 310 s
    last = capsys.readouterr().out.splitlines()[-1]
    assert last.startswith(f"left: 2 of 2 run(s), about 5 min one after another, at the medians of the {pooled.runs} "
                           f"finished run(s) in {runs} and {more} (wall") and "not estimated" not in last
    assert CostModel.read([runs, more, os.path.relpath(runs)], like).runs == pooled.runs   # one folder, two spellings
    assert main(["sweep", "--methods", "seq_lora", "--orders", longer, "--seeds", "1", "--runs", empty,
                 "--model", "tiny-llama", "--dry-run", "--costs-from", f"{runs},{tmp_path / 'nowhere'}"]) == 2
    assert f"--costs-from {tmp_path / 'nowhere'} is not a folder" in capsys.readouterr().err


def test_runs_on_another_kind_of_device_do_not_cost_a_grid(tmp_path, capsys):
    # A grid cell run on a GPU takes a fraction of a CPU cell's seconds: pooled, its seconds would make a CPU grid
    # look nearly done (and a CPU run would make a GPU grid look slow). cuda:1 costs what cuda does.
    from harness.sweep import CostModel
    runs = str(tmp_path / "runs")
    two = {"bbc": 1, "hutto_amazon": 1}
    for seed, device, seconds in ((1, None, 100.0), (2, "cpu", 120.0), (3, "cuda", 5.0)):   # None: predates the field
        _finished_run(os.path.join(runs, "seq_lora", ORDER, f"seed{seed}"),
                      {"bbc": {"train_seconds": seconds, "eval_seconds": 0.0}},
                      {"base": {"accuracy": two, "reused": ["bbc", "hutto_amazon"]}, "bbc": {"accuracy": two}},
                      {"device": device} if device else None)
    on_cpu = CostModel.read(runs, BenchConfig(model="tiny-llama"))
    assert (on_cpu.runs, on_cpu.elsewhere, on_cpu.train["seq_lora"]["bbc"]) == (2, 1, 110.0)
    on_gpu = CostModel.read(runs, BenchConfig(model="tiny-llama", device="cuda:1"))
    assert (on_gpu.runs, on_gpu.elsewhere, on_gpu.train["seq_lora"]["bbc"]) == (1, 2, 5.0)
    assert main(["sweep", "--methods", "seq_lora", "--orders", ORDER, "--seeds", "4", "--runs", runs,
                 "--model", "tiny-llama", "--dry-run"]) == 0
    last = capsys.readouterr().out.splitlines()[-1]
    assert "at the medians of the 2 finished run(s)" in last, last
    assert "1 finished run(s) there on another kind of device left out" in last, last


def test_a_run_made_before_a_default_moved_does_not_cost_its_label_and_one_that_ran_the_settings_does(tmp_path,
                                                                                                   capsys):
    """The label seq_lora holds a run recorded at another learning rate than today's default (a moved default): it is
    left out; seq_lora+lr=0.001 ran today's defaults spelled out, so its runs cost a seq_lora cell."""
    from harness.metrics import needed_cells
    from harness.sweep import CostModel
    from methods import get_method
    runs = str(tmp_path / "runs")
    two = {"bbc": 1, "hutto_amazon": 1}
    now = json.loads(json.dumps(get_method("seq_lora").resolve_settings({})))

    def run(label, args, settings, seconds):
        path = os.path.join(runs, label, ORDER, "seed1")
        _finished_run(path, {"base": {"eval_seconds": 0.0}, "bbc": {"train_seconds": seconds, "eval_seconds": 2.0},
                             "hutto_amazon": {"train_seconds": seconds, "eval_seconds": 2.0}},
                      {"base": {"accuracy": two, "reused": ["bbc", "hutto_amazon"]}, "bbc": {"accuracy": two},
                       "hutto_amazon": {"accuracy": two}})
        with open(os.path.join(path, "config.json"), "w") as f:
            json.dump({"model": "tiny-llama", "method": "seq_lora", "method_args": args, "settings": settings}, f)
    spelled = f"seq_lora+lr={now['lr']}"   # today's defaults, spelled out
    run("seq_lora", {}, {**now, "lr": now["lr"] * 10}, 500.0)
    run(spelled, {"lr": now["lr"]}, now, 10.0)
    run("seq_lora+r=16", {"r": 16}, {**now, "r": 16}, 40.0)         # a variant's own folder
    run("seq_lora+alpha=64+r=16", {"alpha": 64, "r": 16}, {**now, "r": 16, "alpha": 64}, 70.0)
    like = BenchConfig(model="tiny-llama", matrix="needed")
    model = CostModel.read(runs, like)
    assert (model.runs, model.moved) == (3, 1) and "seq_lora" not in model.per_cell
    cell, = plan(str(tmp_path / "grid"), ["seq_lora"], [ORDER], ["1"], like)
    cells = sum(len(needed_cells(ORDER.split("+"), k)) for k in (1, 2))   # 1 s a cell: 2 s for the 2 it scored
    assert model.costed_as(cell) == spelled and model.seconds_left(cell) == pytest.approx(20 + cells)
    # a variant: its own folder first; where it has none, a folder of its settings under another name
    grid = str(tmp_path / "grid")
    own, other = plan(grid, ["seq_lora:r=16", "seq_lora:r=16:alpha=64"], [ORDER], ["1"], like)
    assert model.costed_as(own) == "seq_lora+r=16"
    assert model.costed_as(other) == "seq_lora+alpha=64+r=16"
    renamed, = plan(grid, [f"seq_lora:r=16:alpha={now['alpha']}"], [ORDER], ["1"], like)   # the r=16 run's settings
    assert model.costed_as(renamed) == "seq_lora+r=16"
    assert main(["sweep", "--methods", "seq_lora", "--orders", ORDER, "--seeds", "1", "--runs", str(tmp_path / "grid"),
                 "--matrix", "needed", "--model", "tiny-llama", "--dry-run", "--costs-from", runs]) == 0
    last = capsys.readouterr().out.splitlines()[-1]
    assert "1 finished run(s) there made before a setting of theirs moved left out" in last
    assert f"costed by a folder whose runs ran the same settings: seq_lora as {spelled}" in last
    variant, = plan(grid, ["seq_lora:r=4"], [ORDER], ["1"], like)   # no run of its settings: at the defaults'
    assert model.costed_as(variant) == spelled
    assert main(["sweep", "--methods", "seq_lora:r=4", "--orders", ORDER, "--seeds", "1", "--runs", grid,
                 "--matrix", "needed", "--model", "tiny-llama", "--dry-run", "--costs-from", runs]) == 0
    assert f"costed at its method's defaults, as no current run of it finished: seq_lora+r=4 as {spelled}" in \
        capsys.readouterr().out.splitlines()[-1]


def test_a_setting_added_since_a_run_was_recorded_leaves_the_run_current(tmp_path):
    """craft gained `budget_stop` (default keep, the behaviour before it existed): its earlier runs stay finished to a
    sweep, resumable and in one table with new ones; a record that differs in a setting it had is still stale."""
    from harness.rundir import RunDir
    from methods.craft import CRAFT
    runs = str(tmp_path / "runs")
    cell = plan(runs, ["craft"], [ORDER], ["1"])[0]
    assert cell.settings["budget_stop"] == "keep"
    before = {k: v for k, v in cell.settings.items() if k != "budget_stop"}   # as a run recorded before 2026-12-01
    assert config.recorded_value({"method": "craft", "settings": before}, "settings") == CRAFT.resolve_settings({})
    os.makedirs(cell.out)
    record = {**BenchConfig(method="craft", order=ORDER).recorded(), "tasks": ORDER.split(","), "settings": before}
    with open(os.path.join(cell.out, "config.json"), "w") as f:
        json.dump(record, f)
    with open(os.path.join(cell.out, "status.json"), "w") as f:
        json.dump({"state": "running", "rows": {}, "started": 1.0}, f)
    assert cell_state(cell) == "partial"
    # the runner's resume check takes it too (the new record carries budget_stop = keep)
    assert RunDir(cell.out).prepare({**record, "settings": cell.settings}, overwrite=False)["rows"] == {}
    with pytest.raises(UsageError, match="settings"):
        RunDir(cell.out).prepare({**record, "settings": {**cell.settings, "budget_stop": "rewind"}}, overwrite=False)
    with open(os.path.join(cell.out, "config.json"), "w") as f:
        json.dump({**record, "settings": {**before, "lr": 1.0}}, f)
    assert cell_state(cell) == "stale"


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="PR_SET_PDEATHSIG is Linux's")
def test_a_cell_dies_with_its_sweep_when_the_sweep_is_killed_outright_and_the_next_sweep_finishes_it(tmp_path,
                                                                                                     capsys):
    # A session's end kills the sweep with no chance to stop its cells (they run in their own session, so the
    # kill does not reach them); the cell must not train on beside the next sweep's attempt at the same run.
    runs = str(tmp_path / "runs")
    order = "bbc+hutto_amazon+trec+hutto_tweets"
    sizes = ["--model", "tiny-llama", "--train-per-task", "160", "--test-per-task", "12", "--max-input-tokens", "16"]
    argv = ["sweep", "--methods", "seq_lora", "--orders", order, "--seeds", "1", "--runs", runs, "--quiet",
            "--jobs", "2", *sizes]   # two jobs: the cell is started from one of the pool's threads
    env = dict(os.environ, PYTHONPATH=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    sweep = subprocess.Popen([sys.executable, "-m", "harness", *argv], env=env, stdout=subprocess.DEVNULL,
                             stderr=subprocess.DEVNULL)
    run = os.path.join(runs, "seq_lora", order, "seed1")
    deadline = time.time() + 120
    while time.time() < deadline and not os.path.exists(os.path.join(run, "status.json")):
        time.sleep(0.05)
    cells = _processes_mentioning(run)
    assert cells, "the cell never started"
    sweep.kill()
    sweep.wait()
    deadline = time.time() + 1.5   # the kernel kills a tied cell at once; an orphan trains on for longer
    while time.time() < deadline and [p for p in cells if _alive(p)]:
        time.sleep(0.1)
    left, state = [p for p in cells if _alive(p)], json.load(open(os.path.join(run, "status.json")))["state"]
    if state == "finished":
        pytest.skip("the run finished before the kill landed (machine faster than this test expects)")
    assert not left   # no orphan left training
    assert main(argv) == 0, capsys.readouterr().err   # the next sweep resumes the run, unhindered
    assert cell_state(plan(runs, ["seq_lora"], [order], ["1"], sweep_setup(sizes))[0]) == "finished"


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/status") as f:
            return "\nState:\tZ" not in f.read()   # a zombie has died; only its reaping is left
    except FileNotFoundError:
        return False


def test_settings_spelled_another_way_run_into_the_folder_that_already_holds_them(tmp_path, capsys):
    runs = str(tmp_path / "runs")
    for label in ("seq_lora+lr=0.0003", "seq_lora", "craft+settle_tol=0"):
        os.makedirs(os.path.join(runs, label))
    cells = plan(runs, ["seq_lora:lr=3e-4", "seq_lora:lr=0.001", "craft:settle_tol=0.0", "seq_lora:lr=3e-3"],
                 ["offline1"], ["1"])
    assert [os.path.relpath(c.out, runs) for c in cells] == [
        os.path.join("seq_lora+lr=0.0003", "offline1", "seed1"),   # the same lr, spelled as its folder spells it
        os.path.join("seq_lora+lr=0.001", "offline1", "seed1"),     # an explicit default is not the bare method
        os.path.join("craft+settle_tol=0", "offline1", "seed1"),
        os.path.join("seq_lora+lr=3e-3", "offline1", "seed1")]      # no folder holds it yet: as given
    assert cells[0].config.method_args == {"lr": "0.0003"} and cells[0].settings["lr"] == 0.0003
    assert "has the settings of seq_lora+lr=0.0003/" in capsys.readouterr().err


def test_a_plan_of_several_sweeps_costs_and_prints_a_cell_twice_named_once(tmp_path, capsys):
    """make grid's looks: stage 3 names i_lora's cells that stage 1 named; with --earlier-cells the second sweep
    leaves out what the first listed (its cost and its command), so the plan's sums count each cell once."""
    runs, listed = str(tmp_path / "runs"), str(tmp_path / "listed.txt")
    two = {"bbc": 1, "hutto_amazon": 1}
    _finished_run(os.path.join(runs, "seq_lora", ORDER, "seed1"),
                  {"base": {"train_seconds": None, "eval_seconds": 4.0},
                   "bbc": {"train_seconds": 10.0, "eval_seconds": 6.0},
                   "hutto_amazon": {"train_seconds": 30.0, "eval_seconds": 6.0}},
                  {"base": {"accuracy": two, "reused": []}, "bbc": {"accuracy": two},
                   "hutto_amazon": {"accuracy": two}})
    common = ["--orders", ORDER, "--runs", runs, "--matrix", "needed", "--model", "tiny-llama"]

    def look(methods, seeds, *how):
        capsys.readouterr()
        assert main(["sweep", "--methods", methods, "--seeds", seeds, *common, *how, "--earlier-cells", listed]) == 0
        return capsys.readouterr().out.splitlines()

    first = look("seq_lora", "1,2", "--dry-run")   # seed 1 finished, seed 2 left
    assert first[-1].startswith("left: 1 of 2 run(s)")
    second = look("seq_lora", "2,3", "--dry-run")   # seed 2 was the first step's: left out, not costed again
    assert second[0] == f"1 run(s) left out here: an earlier step of this plan lists them ({listed})"
    assert not any(line.endswith(os.path.join("seq_lora", ORDER, "seed2")) for line in second)
    assert second[-1].startswith("left: 1 of 1 run(s)")
    assert sorted(open(listed).read().split()) == sorted(
        os.path.abspath(os.path.join(runs, "seq_lora", ORDER, f"seed{s}")) for s in (1, 2, 3))
    # commands: none for a cell an earlier step listed
    os.remove(listed)
    assert len(look("seq_lora", "2", "--print-commands")) == 1
    printed = look("seq_lora", "2,3", "--print-commands")   # seed 2 printed by the step before: seed 3 alone
    assert len(printed) == 1 and "seed3" in printed[0] and "seed2" not in printed[0]
    before = open(listed).read()
    capsys.readouterr()
    assert main(["sweep", "--methods", "seq_lora", "--seeds", "1", *common, "--earlier-cells", listed]) == 2
    assert "--earlier-cells goes with --dry-run or --print-commands" in capsys.readouterr().err
    for bad in (str(tmp_path), str(tmp_path / "nowhere" / "listed.txt")):   # a folder; a file in no folder
        assert main(["sweep", "--methods", "seq_lora", "--seeds", "1", *common, "--dry-run",
                     "--earlier-cells", bad]) == 2
        assert "a file is needed, in a folder that exists" in capsys.readouterr().err
    assert open(listed).read() == before and not os.path.exists(tmp_path / "nowhere")
