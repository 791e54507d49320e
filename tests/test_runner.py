import json
import os
import subprocess
import sys
import time

import pandas as pd
import pytest
import torch

from core.errors import UsageError
from harness.config import BenchConfig
from harness.models import tiny_model
from harness.rundir import kept_seconds
from harness.runner import run_bench
from methods import discover
from tests.conftest import ROOT

ORDER = "bbc,hutto_amazon"


def config(out, **kw):
    base = dict(method="seq_lora", order=ORDER, seed=3, train_per_task=8, test_per_task=6, out=str(out),
                model="tiny-llama", max_input_tokens=16, progress=False, method_args={"lr": "0.01"})
    base.update(kw)
    return BenchConfig(**base)


def run(tmp_path, name, tokenizer, **kw):
    model = tiny_model(tokenizer, seed=0)
    out = run_bench(config(tmp_path / name, **kw), model_and_tokenizer=(model, tokenizer))
    return out, model


def kill_during_second_task(tmp_path, name, tokenizer, monkeypatch):
    """Run seq_lora until a simulated kill inside its second task, leaving an unfinished run directory."""
    cls = discover()["seq_lora"]
    original = cls.after_task

    def crash_on_second(self, task, examples):
        if task.index == 1:
            raise KeyboardInterrupt("simulated kill")
        return original(self, task, examples)

    with monkeypatch.context() as m:
        m.setattr(cls, "after_task", crash_on_second)
        with pytest.raises(KeyboardInterrupt):
            run(tmp_path, name, tokenizer)


def test_two_task_stream_writes_a_complete_run_directory(tmp_path, tokenizer):
    out, _ = run(tmp_path, "r", tokenizer)
    for name in ("config.json", "matrix.csv", "metrics.json", "method.json", "log.jsonl", "status.json"):
        assert os.path.isfile(os.path.join(out, name)), name
    lines = open(os.path.join(out, "matrix.csv")).read().splitlines()
    assert lines[0] == "after,bbc,hutto_amazon"
    assert [ln.split(",")[0] for ln in lines[1:]] == ["base", "bbc", "hutto_amazon"]
    assert all(len(cell.split(".")[1]) == 2 for ln in lines[1:] for cell in ln.split(",")[1:])
    cfg = json.load(open(os.path.join(out, "config.json")))
    assert cfg["seed"] == 3 and cfg["packages"]["torch"] and cfg["tasks"] == ["bbc", "hutto_amazon"]
    assert cfg["machine"]["threads"] == torch.get_num_threads() and cfg["machine"]["torch_cpu_capability"]
    # how many inputs the cut left without a line's start, over every example the run had
    lost = cfg["prompt"]["inputs_losing_a_line"]
    assert {task: [split[1] for split in counts.values()] for task, counts in lost.items()} \
        == {task: [cfg["data"][task]["train"], cfg["data"][task]["test"]] for task in cfg["tasks"]}
    card = json.load(open(os.path.join(out, "method.json")))
    assert card["name"] == "seq_lora" and card["trainable_parameters"] > 0
    assert card["uses_task_id_at_test"] is False and "keeps_from_past_tasks" in card
    assert set(json.load(open(os.path.join(out, "metrics.json")))) == {"AA", "BWT", "FM", "FWT", "LA"}
    events = [json.loads(ln)["event"] for ln in open(os.path.join(out, "log.jsonl"))]
    assert events[0] == "run_start" and events[-1] == "run_end"
    assert events.count("task_start") == 2 and events.count("evaluation") == 3 and "step" in events
    # the code it ran: the checkout's commit, in the record and in the sitting's start event
    head = subprocess.run(["git", "-C", ROOT, "rev-parse", "HEAD"], capture_output=True, text=True)
    if head.returncode == 0:
        assert cfg["code"]["commit"] == head.stdout.strip() and isinstance(cfg["code"]["dirty"], bool)
        assert json.loads(open(os.path.join(out, "log.jsonl")).readline())["code"] == cfg["code"]


def test_same_seed_same_matrix(tmp_path, tokenizer):
    a, _ = run(tmp_path, "a", tokenizer)
    b, _ = run(tmp_path, "b", tokenizer)
    assert open(os.path.join(a, "matrix.csv")).read() == open(os.path.join(b, "matrix.csv")).read()


def test_seq_lora_changes_the_adapter_not_the_backbone(tmp_path, tokenizer):
    pristine = tiny_model(tokenizer, seed=0).state_dict()
    out, model = run(tmp_path, "r", tokenizer)
    lora_b = [p for n, p in model.named_parameters() if "lora_B" in n]
    assert lora_b and any(float(p.abs().sum()) > 0 for p in lora_b)  # B starts at zero: training moved it
    for name, value in model.named_parameters():
        if "lora_" not in name:
            key = name.replace("base_model.model.", "").replace(".base_layer", "")
            assert torch.equal(value, pristine[key]), name


def test_interrupted_run_resumes_to_the_same_matrix(tmp_path, tokenizer, monkeypatch):
    full, _ = run(tmp_path, "full", tokenizer)
    kill_during_second_task(tmp_path, "resumed", tokenizer, monkeypatch)
    status = json.load(open(tmp_path / "resumed" / "status.json"))
    assert status["state"] == "running" and set(status["rows"]) == {"base", "bbc"}
    assert not (tmp_path / "resumed" / "matrix.csv").exists()   # never looks finished when it is not
    resumed, _ = run(tmp_path, "resumed", tokenizer)
    assert open(os.path.join(resumed, "matrix.csv")).read() == open(os.path.join(full, "matrix.csv")).read()
    events = [json.loads(ln) for ln in open(os.path.join(resumed, "log.jsonl"))]
    assert sum(e["event"] == "task_start" and e["task"] == "bbc" for e in events) == 1  # bbc not retrained


def test_a_record_without_its_checkpoint_retrains_to_the_same_matrix(tmp_path, tokenizer, monkeypatch):
    # results/runs is committed without weights: an unfinished record must still resume, by training again.
    full, _ = run(tmp_path, "full", tokenizer)
    kill_during_second_task(tmp_path, "record", tokenizer, monkeypatch)
    status = json.load(open(tmp_path / "record" / "status.json"))
    os.unlink(tmp_path / "record" / status["checkpoint"])
    resumed, _ = run(tmp_path, "record", tokenizer)
    assert open(os.path.join(resumed, "matrix.csv")).read() == open(os.path.join(full, "matrix.csv")).read()
    events = [json.loads(ln) for ln in open(os.path.join(resumed, "log.jsonl"))]
    assert [e["retrained"] for e in events if e["event"] == "checkpoint_missing"] == [["bbc"]]
    assert sum(e["event"] == "task_start" and e["task"] == "bbc" for e in events) == 2


def test_a_resume_deletes_the_checkpoint_a_kill_orphaned_and_keeps_the_one_its_status_names(tmp_path, tokenizer,
                                                                                            monkeypatch):
    # save_checkpoint names the new checkpoint in the status, then deletes the old one: a kill in between leaves
    # the old one behind for good (a grid's runs keep their last checkpoint, so it would sit beside it forever).
    kill_during_second_task(tmp_path, "orphan", tokenizer, monkeypatch)
    named = json.load(open(tmp_path / "orphan" / "status.json"))["checkpoint"]
    orphan = "checkpoint-7.pt"   # any checkpoint the status does not name is one a kill left behind
    assert named and named != orphan
    (tmp_path / "orphan" / orphan).write_bytes(b"a stage the status moved past")
    (tmp_path / "orphan" / "notes.pt").write_bytes(b"not the run's: kept")
    out, _ = run(tmp_path, "orphan", tokenizer)
    kept = sorted(n for n in os.listdir(out) if n.endswith(".pt"))
    assert kept == sorted([json.load(open(os.path.join(out, "status.json")))["checkpoint"], "notes.pt"])
    assert named not in kept and orphan not in kept


def test_a_resume_on_other_test_data_is_refused_with_the_run_untouched(tmp_path, tokenizer, monkeypatch):
    # Rows scored on one data folder must not be finished on another (a sweep resumed with another CL_DATA_DIR).
    from harness.rundir import other_test_examples
    from harness.runner import data_fingerprint
    from tasks import load_task
    kill_during_second_task(tmp_path, "data", tokenizer, monkeypatch)
    record = json.load(open(tmp_path / "data" / "config.json"))
    gold = record["data"]["bbc"]["gold"]
    record["data"]["bbc"]["gold"] = gold[1:] + gold[:1] if len(set(gold)) > 1 else gold + gold[:1]
    (tmp_path / "data" / "config.json").write_text(json.dumps(record))
    before = {n: open(tmp_path / "data" / n, "rb").read() for n in os.listdir(tmp_path / "data")}
    with pytest.raises(UsageError, match=r"made on other test data \(bbc: another --data-dir\?\)"):
        run(tmp_path, "data", tokenizer)
    assert {n: open(tmp_path / "data" / n, "rb").read() for n in os.listdir(tmp_path / "data")} == before
    # the texts count too: two data folders can agree on every gold label (config.json keeps a hash of them)
    assert record["data"]["bbc"]["test_fingerprint"] == data_fingerprint(load_task("bbc", None, 8, 6, 3, "test"))
    assert other_test_examples({"a": {"gold": "01", "test_fingerprint": "f0"}},
                               {"a": {"gold": "01", "test_fingerprint": "f1"}}) == ["a"]
    # a record too old to keep gold labels is compared on what it keeps
    assert other_test_examples({"a": {"test": 4}}, {"a": {"test": 4, "gold": "0101"}}) == []
    assert other_test_examples({"a": {"test": 4}}, {"a": {"test": 5, "gold": "01010"}}) == ["a"]
    assert other_test_examples({"a": "damaged"}, {"a": {"test": 4}}) == other_test_examples([], None) == []


def test_replay_memory_is_bounded_and_mixed_in(tmp_path, tokenizer):
    out, _ = run(tmp_path, "r", tokenizer, method="replay", order="bbc,hutto_amazon,trec",
                 method_args={"memory_size": "6"})
    card = json.load(open(os.path.join(out, "method.json")))
    assert card["diagnostics"]["replayed_per_task"] == {"bbc": 0, "hutto_amazon": 6, "trec": 6}
    assert card["diagnostics"]["memory"] == {"bbc": 2, "hutto_amazon": 2, "trec": 2}
    assert "6" in card["keeps_from_past_tasks"]


def test_zero_shot_rows_equal_the_base_row(tmp_path, tokenizer):
    out, _ = run(tmp_path, "z", tokenizer, method="zero_shot", method_args={})
    R = pd.read_csv(os.path.join(out, "matrix.csv"), index_col=0)
    assert (R.loc["hutto_amazon"] == R.loc["base"]).all()


@pytest.mark.parametrize("method", sorted(discover()))
def test_caches_off_give_the_same_matrix(tmp_path, tokenizer, method):
    """--cache off turns every cache off; a tiny run of each method gives the same accuracy matrix either way.
    Dropout off: under a shared training prefix, the prefix's tokens take one dropout mask per batch (another
    draw than one per row), so only without dropout are the two paths the same computation."""
    args = {"dropout": "0"} if "dropout" in discover()[method].all_settings() else {}
    on, _ = run(tmp_path, "on", tokenizer, method=method, order="bbc,trec,hutto_amazon", method_args=args)
    off, _ = run(tmp_path, "off", tokenizer, method=method, order="bbc,trec,hutto_amazon", method_args=args,
                 cache="off")
    matrix = [pd.read_csv(os.path.join(out, "matrix.csv"), index_col=0) for out in (on, off)]
    pd.testing.assert_frame_equal(*matrix)


def tensor_elements(state) -> int:
    if isinstance(state, torch.Tensor):
        return state.numel()
    if isinstance(state, dict):
        return sum(tensor_elements(v) for v in state.values())
    if isinstance(state, (list, tuple)):
        return sum(tensor_elements(v) for v in state)
    return 0


@pytest.mark.parametrize("method", sorted(discover()))
def test_every_method_resumes_after_a_stop_to_the_matrix_of_a_straight_run(tmp_path, tokenizer, method):
    straight, model = run(tmp_path, "straight", tokenizer, method=method, order="bbc,trec,hutto_amazon",
                          method_args={})
    # and keeps no copy of the backbone: a grid keeps every run's last checkpoint (its probes need it), and one
    # holding the whole backbone is about 0.5 GB a run. The tiny model is mostly embeddings, which no method trains.
    state = torch.load(os.path.join(straight, json.load(open(os.path.join(straight, "status.json")))["checkpoint"]),
                       weights_only=False)
    assert tensor_elements(state) < sum(p.numel() for p in model.parameters()) / 2
    # a fresh process would load a fresh backbone: so does each sitting here
    split, _ = run(tmp_path, "split", tokenizer, method=method, order="bbc,trec,hutto_amazon", method_args={},
                   stop_after_task=2)
    if not discover()[method].JOINT:   # a joint method has one stage: nothing to split
        assert not os.path.exists(os.path.join(split, "matrix.csv"))
        run(tmp_path, "split", tokenizer, method=method, order="bbc,trec,hutto_amazon", method_args={})
    matrix = [pd.read_csv(os.path.join(out, "matrix.csv"), index_col=0) for out in (straight, split)]
    pd.testing.assert_frame_equal(*matrix)
    # and the method card's diagnostics hold every task's, not only those of the last sitting (up to rounding:
    # CRAFT's merge truncation error is 0.0 in one sitting, 1e-6 from a reloaded state); CRAFT's backbone cache
    # counts are the last sitting's own (the cache lives in memory)
    cards = [json.load(open(os.path.join(out, "method.json")))["diagnostics"] for out in (straight, split)]
    for card in cards:
        card.pop("backbone_cache", None)
    assert cards[0] == approx_floats(cards[1])


def approx_floats(value):
    """`value` with every float compared to 1e-5 (pytest.approx does not reach into nested lists of dicts)."""
    if isinstance(value, dict):
        return {k: approx_floats(v) for k, v in value.items()}
    if isinstance(value, list):
        return [approx_floats(v) for v in value]
    return pytest.approx(value, abs=1e-5) if isinstance(value, float) else value


def test_needed_matrix_gives_the_full_matrix_metrics_and_blanks_the_rest(tmp_path, tokenizer):
    order = "bbc,trec,hutto_amazon,hutto_tweets"
    full, _ = run(tmp_path, "full", tokenizer, order=order)
    needed, _ = run(tmp_path, "needed", tokenizer, order=order, matrix="needed")
    R = [pd.read_csv(os.path.join(out, "matrix.csv"), index_col=0) for out in (full, needed)]
    assert R[1].isna().sum().sum() == 3 and pd.isna(R[1].loc["bbc", "hutto_tweets"])
    pd.testing.assert_frame_equal(R[0].where(R[1].notna()), R[1])
    full_metrics, needed_metrics = (json.load(open(os.path.join(out, "metrics.json"))) for out in (full, needed))
    assert full_metrics == needed_metrics


@pytest.mark.parametrize("status_keeps_the_clock", [True, False])
def test_a_resumed_runs_wall_time_leaves_out_the_hours_it_lay_interrupted(tmp_path, tokenizer, monkeypatch,
                                                                          status_keeps_the_clock):
    split, _ = run(tmp_path, "split", tokenizer, stop_after_task=1)
    status_path = os.path.join(split, "status.json")
    status = json.load(open(status_path))
    assert 0 < status["rows"]["base"]["kept_at"] <= status["rows"]["bbc"]["kept_at"]   # each saved stage keeps it
    if not status_keeps_the_clock:   # stages saved before rows kept the clock: the log is read instead
        for row in status["rows"].values():
            del row["kept_at"]
        json.dump(status, open(status_path, "w"))
    real_time, real_monotonic = time.time, time.monotonic
    monkeypatch.setattr(time, "time", lambda: real_time() + 50_000)   # resumed 14 hours later
    from harness import clock   # the resuming process's clock reads 14 hours on, and saw no stop
    monkeypatch.setattr(clock, "CLOCK", clock.ActiveClock(monotonic=lambda: real_monotonic() + 50_000))
    run(tmp_path, "split", tokenizer)
    timing = json.load(open(os.path.join(split, "method.json")))["timing"]
    assert timing["train_seconds"] + timing["eval_seconds"] <= timing["wall_seconds"] < 600


def test_a_stop_inside_a_stage_is_left_out_of_its_seconds_and_recorded(tmp_path, tokenizer, monkeypatch):
    """A queue paused with SIGSTOP mid-task (harness.clock) must not charge the pause to the stage's seconds."""
    from harness import clock
    offset, real_time, real_monotonic = [0.0], time.time, time.monotonic
    # every clock jumps, as in a real stop: a duration taken from any other than harness.clock would hold the stop
    monkeypatch.setattr(time, "time", lambda: real_time() + offset[0])
    monkeypatch.setattr(time, "monotonic", lambda: real_monotonic() + offset[0])
    monkeypatch.setattr(clock, "CLOCK", clock.ActiveClock(monotonic=lambda: real_monotonic() + offset[0]))
    cls = discover()["seq_lora"]
    original = cls.after_step

    def held_once(self, task, step):   # the process lies stopped for 1,000 s after the second task's first step
        if task.index == 1 and step == 1:
            offset[0] += 1000.0
        return original(self, task, step)

    monkeypatch.setattr(cls, "after_step", held_once)
    out, _ = run(tmp_path, "held", tokenizer)
    rows = json.load(open(os.path.join(out, "status.json")))["rows"]
    timing = json.load(open(os.path.join(out, "method.json")))["timing"]
    second = list(rows)[2]
    # the stop as seen: the gap less one tick, where the gap also holds up to a tick of running since the last read
    assert 1000 - clock.TICK - 0.1 <= rows[second]["stopped_seconds"] <= 1000.1
    assert rows[list(rows)[1]]["stopped_seconds"] == 0.0
    assert rows[second]["train_seconds"] < 600 and timing["wall_seconds"] < 600
    assert timing["stopped_seconds"] == rows[second]["stopped_seconds"]


def test_stages_trained_again_for_missing_weights_are_counted_once(tmp_path, tokenizer):
    split, _ = run(tmp_path, "split", tokenizer, stop_after_task=1)
    status = json.load(open(os.path.join(split, "status.json")))
    status["rows"]["bbc"]["kept_at"] = 50_000.0   # the dropped stage's time must not carry over
    json.dump(status, open(os.path.join(split, "status.json"), "w"))
    os.remove(os.path.join(split, status["checkpoint"]))
    run(tmp_path, "split", tokenizer)
    assert json.load(open(os.path.join(split, "method.json")))["timing"]["wall_seconds"] < 600


def test_kept_seconds_counts_each_session_up_to_its_last_saved_stage():
    events = [{"t": 100, "event": "run_start"}, {"t": 101, "event": "evaluation"},
              {"t": 130, "event": "evaluation"}, {"t": 170, "event": "step"},          # lost to the kill: redone
              {"t": 900, "event": "run_start"}, {"t": 950, "event": "step"},            # killed before any save
              {"t": 2000, "event": "run_start"}, {"t": 2040, "event": "evaluation"},
              {"t": 2050, "event": "run_end"}]
    assert kept_seconds(events) == (130 - 100) + 0 + (2050 - 2000)
    assert kept_seconds([]) == 0


def hold(folder):
    """Another process's hold on a run directory: a separate open of it with the lock taken (flock locks of two
    open files conflict, in one process as between two)."""
    import fcntl
    fd = os.open(folder, os.O_RDONLY)
    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    return fd


@pytest.mark.skipif(sys.platform == "win32", reason="no flock on Windows: runs go unguarded there")
def test_a_run_directory_another_process_holds_is_refused_and_left_as_it_was(tmp_path, tokenizer, capsys):
    from harness.cli import main
    from harness.rundir import RunDir, RunInUse
    run(tmp_path, "held", tokenizer, stop_after_task=1)   # an unfinished run, as an orphaned cell leaves it
    before = {n: open(tmp_path / "held" / n, "rb").read() for n in os.listdir(tmp_path / "held")}
    fd = hold(tmp_path / "held")
    try:
        with pytest.raises(RunInUse, match="being run by another process"):
            run(tmp_path, "held", tokenizer)
        argv = ["bench", "--model", "tiny-llama", "--quiet", "--order", ORDER, "--seed", "3", "--train-per-task",
                "8", "--test-per-task", "6", "--max-input-tokens", "16", "--method-arg", "lr=0.01",
                "--out", str(tmp_path / "held")]
        assert main(argv) == 2
        err = capsys.readouterr().err
        assert "being run by another process" in err and err.count("\n") == 1, err
        assert {n: open(tmp_path / "held" / n, "rb").read() for n in os.listdir(tmp_path / "held")} == before
    finally:
        os.close(fd)
    out, _ = run(tmp_path, "held", tokenizer)   # released: the run resumes and finishes
    assert RunDir(out).is_finished()


def test_a_run_killed_before_its_first_status_starts_afresh_and_loses_its_torn_writes(tmp_path, tokenizer):
    from harness.rundir import RunDir
    torn = tmp_path / "torn"
    torn.mkdir()
    (torn / "config.json").write_text(json.dumps({"method": "seq_lora", "order": ORDER, "seed": 3,
                                                  "tasks": ORDER.split(",")}))   # killed before status.json
    (torn / ".tmp-x1y2status.json").write_text('{"state": ')   # and a write the kill cut short
    out, _ = run(tmp_path, "torn", tokenizer)
    assert RunDir(out).is_finished() and not [n for n in os.listdir(out) if n.startswith(".tmp-")]
    assert json.load(open(os.path.join(out, "config.json")))["method"] == "seq_lora"
    other = tmp_path / "other"   # a folder that holds something else besides is still refused
    other.mkdir()
    (other / "config.json").write_text("{}")
    (other / "notes.txt").write_text("mine")
    with pytest.raises(Exception, match="not empty and holds no run"):
        run(tmp_path, "other", tokenizer)
    assert (other / "notes.txt").read_text() == "mine"
    (other / "notes.txt").unlink()   # and a config.json that is not a run's is not taken for one
    with pytest.raises(Exception, match="not empty and holds no run"):
        run(tmp_path, "other", tokenizer)
    assert (other / "config.json").read_text() == "{}"


def test_inputs_a_short_cut_leaves_without_a_line_are_recorded_and_logged(tmp_path, tokenizer):
    """At 8 tokens bbc's inputs lose their later lines to a head cut, and none under fields."""
    out, _ = run(tmp_path, "head", tokenizer, max_input_tokens=8, stop_after_task=0)
    lost = json.load(open(os.path.join(out, "config.json")))["prompt"]["inputs_losing_a_line"]
    logged = {e["task"]: e["scored"] for e in map(json.loads, open(os.path.join(out, "log.jsonl")))
              if e["event"] == "inputs_losing_a_line"}
    assert lost["bbc"]["test"][0] > 0 and logged == {t: c["test"] for t, c in lost.items() if c["test"][0]}
    out, _ = run(tmp_path, "fields", tokenizer, max_input_tokens=8, stop_after_task=0, truncate="fields")
    assert all(c["test"][0] == 0 for c in json.load(open(os.path.join(out, "config.json")))["prompt"][
        "inputs_losing_a_line"].values())
