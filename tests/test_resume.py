"""Resuming inside a task (harness.training.MidTask): a run killed mid-task and run again must give the steps,
losses, weights and matrix of a run never interrupted, for every method that says it can (RESUMES_MID_TASK)."""
import json
import os

import pandas as pd
import pytest
import torch

from harness.config import BenchConfig
from harness.models import tiny_model
from harness.runner import run_bench
from methods import discover
from tests.fake_device import FAKE, on_fake_device

ORDER = "bbc,hutto_amazon"
EVERY_STEP = 1e-9   # minutes: a save after every step


def run(tmp_path, name, tokenizer, method, device=None, **kw):
    # 16 examples in batches of 4, two passes: 8 steps a task, so a kill can fall mid-epoch or on its boundary
    cfg = BenchConfig(method=method, order=ORDER, seed=3, train_per_task=16, test_per_task=6, out=str(tmp_path / name),
                      model="tiny-llama", max_input_tokens=16, progress=False,
                      method_args={"lr": "0.01", "batch_size": "4", "epochs": "2"}, **kw)
    model = tiny_model(tokenizer, seed=0)
    return run_bench(cfg, model_and_tokenizer=(model.to(device) if device else model, tokenizer))


def kill_at(monkeypatch, method, task_index, step):
    """Make the method's training raise, as a kill would, right after optimizer step `step` of task `task_index`
    (before that step's save)."""
    cls = discover()[method]
    original = cls.after_step

    def after_step(self, task, at):
        if task.index == task_index and at == step:
            raise KeyboardInterrupt("simulated kill")
        return original(self, task, at)
    monkeypatch.setattr(cls, "after_step", after_step)


def steps(out):
    """(task, step) -> the logged loss of each optimizer step, the last logged one where a step ran twice."""
    events = [json.loads(line) for line in open(os.path.join(out, "log.jsonl"))]
    return {(e["task"], e["step"]): e["loss"] for e in events if e["event"] == "step"}


def final_state(out):
    status = json.load(open(os.path.join(out, "status.json")))
    return torch.load(os.path.join(out, status["checkpoint"]), weights_only=False)


MID_TASK = sorted(name for name, cls in discover().items() if cls.RESUMES_MID_TASK)


def test_the_long_single_stage_methods_say_they_resume_mid_task():
    assert {"mtl", "seq_lora"} <= set(MID_TASK)   # mtl's one stage is hours long on a 15-task order


# seq_lora: 4 steps an epoch, so the save at step 4 ends one and the one at 6 falls inside; mtl (8 an epoch): both
# inside
@pytest.mark.parametrize("kill_step", [5, 7], ids=["save-at-step-4", "save-at-step-6"])
@pytest.mark.parametrize("method", MID_TASK)
def test_a_run_killed_mid_task_resumes_to_the_steps_weights_and_matrix_of_a_straight_run(
        tmp_path, tokenizer, monkeypatch, method, kill_step):
    straight = run(tmp_path, "straight", tokenizer, method, checkpoint_minutes=0)
    task_index = 0 if discover()[method].JOINT else 1   # a joint method's one stage; else inside the second task
    with monkeypatch.context() as m:
        kill_at(m, method, task_index, kill_step)
        with pytest.raises(KeyboardInterrupt):
            run(tmp_path, "resumed", tokenizer, method, checkpoint_minutes=EVERY_STEP)
    status = json.load(open(tmp_path / "resumed" / "status.json"))
    assert status["partial"]["task_index"] == task_index and status["partial"]["step"] == kill_step - 1
    saved = torch.load(tmp_path / "resumed" / status["partial"]["file"], weights_only=False)
    assert saved["step"] == kill_step - 1 and saved["seconds"] > 0
    assert not (tmp_path / "resumed" / "matrix.csv").exists()

    resumed = run(tmp_path, "resumed", tokenizer, method, checkpoint_minutes=EVERY_STEP)
    matrices = [pd.read_csv(os.path.join(out, "matrix.csv"), index_col=0) for out in (straight, resumed)]
    pd.testing.assert_frame_equal(*matrices)
    assert steps(resumed) == steps(straight)   # the same losses at every step, the redone ones included
    a, b = final_state(straight), final_state(resumed)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    events = [json.loads(line) for line in open(os.path.join(resumed, "log.jsonl"))]
    assert [e["step"] for e in events if e["event"] == "task_resumed"] == [kill_step - 1]
    # the task's training seconds hold the killed sitting's part too, and its finished save is gone
    card = json.load(open(os.path.join(resumed, "method.json")))
    row = "all" if discover()[method].JOINT else "hutto_amazon"
    assert card["timing"]["per_stage"][row]["steps"] == (16 if discover()[method].JOINT else 8)
    assert card["timing"]["per_stage"][row]["train_seconds"] >= saved["seconds"]
    status = json.load(open(os.path.join(resumed, "status.json")))
    assert "partial" not in status and not [n for n in os.listdir(resumed) if n.startswith("partial-")]


def test_a_method_that_does_not_say_so_saves_nothing_mid_task_and_retrains_the_task(tmp_path, tokenizer,
                                                                                      monkeypatch):
    method = "replay"   # its compute-matched draw keeps a random stream of its own, outside its state_dict
    assert not discover()[method].RESUMES_MID_TASK
    with monkeypatch.context() as m:
        kill_at(m, method, 1, 5)
        with pytest.raises(KeyboardInterrupt):
            run(tmp_path, "killed", tokenizer, method, checkpoint_minutes=EVERY_STEP)
    assert "partial" not in json.load(open(tmp_path / "killed" / "status.json"))
    assert not [n for n in os.listdir(tmp_path / "killed") if n.startswith("partial-")]


def test_a_resume_drops_a_mid_task_save_its_status_does_not_name_and_one_of_stages_retrained(tmp_path, tokenizer,
                                                                                                monkeypatch):
    with monkeypatch.context() as m:
        kill_at(m, "seq_lora", 1, 5)
        with pytest.raises(KeyboardInterrupt):
            run(tmp_path, "run", tokenizer, "seq_lora", checkpoint_minutes=EVERY_STEP)
    folder = tmp_path / "run"
    (folder / "partial-7.pt").write_bytes(b"written, then killed before the status named it")
    status = json.load(open(folder / "status.json"))
    os.unlink(folder / status["checkpoint"])   # a record without its weights: task 1 retrains, so must task 2
    out = run(tmp_path, "run", tokenizer, "seq_lora", checkpoint_minutes=EVERY_STEP)
    events = [json.loads(line) for line in open(os.path.join(out, "log.jsonl"))]
    assert not [e for e in events if e["event"] == "task_resumed"]
    assert not [n for n in os.listdir(out) if n.startswith("partial-")]
    straight = run(tmp_path, "straight", tokenizer, "seq_lora", checkpoint_minutes=0)
    assert open(os.path.join(out, "matrix.csv")).read() == open(os.path.join(straight, "matrix.csv")).read()


def killed_and_resumed(tmp_path, tokenizer, monkeypatch, method, kill, first=None, then=None, device=None):
    """A run of `method` killed after step kill[1] of task kill[0] (saving every step), then run again; each
    sitting with its own options (`first`, `then`)."""
    with monkeypatch.context() as m:
        kill_at(m, method, *kill)
        with pytest.raises(KeyboardInterrupt):
            run(tmp_path, "run", tokenizer, method, device, checkpoint_minutes=EVERY_STEP, **(first or {}))
    return run(tmp_path, "run", tokenizer, method, device, checkpoint_minutes=EVERY_STEP, **(then or {}))


def test_a_save_made_on_another_float_path_is_not_resumed_and_the_task_starts_over(tmp_path, tokenizer, monkeypatch):
    # --cache is not compared on a resume (it changes float rounding and dropout's draw only): a task trained
    # half with the shared prefix and half without would be recorded as neither, so it starts over
    out = killed_and_resumed(tmp_path, tokenizer, monkeypatch, "mtl", (0, 5), {"cache": "on"}, {"cache": "off"})
    events = [json.loads(line) for line in open(os.path.join(out, "log.jsonl"))]
    assert [e["event"] for e in events if e["event"] in ("task_resumed", "task_restarted")] == ["task_restarted"]
    straight = run(tmp_path, "straight", tokenizer, "mtl", cache="off", checkpoint_minutes=0)
    assert open(os.path.join(out, "matrix.csv")).read() == open(os.path.join(straight, "matrix.csv")).read()


def test_a_mid_task_resume_works_on_the_models_device(tmp_path, tokenizer, monkeypatch):
    # the random streams' states must be loaded onto the CPU whatever the model's device (torch refuses others)
    with on_fake_device(monkeypatch):
        out = killed_and_resumed(tmp_path, tokenizer, monkeypatch, "seq_lora", (1, 6), device=FAKE)
        straight = run(tmp_path, "straight", tokenizer, "seq_lora", FAKE, checkpoint_minutes=0)
    events = [json.loads(line) for line in open(os.path.join(out, "log.jsonl"))]
    assert [e["step"] for e in events if e["event"] == "task_resumed"] == [5]
    assert open(os.path.join(out, "matrix.csv")).read() == open(os.path.join(straight, "matrix.csv")).read()
    assert steps(out) == steps(straight)
