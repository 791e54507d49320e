"""compute=matched: replay and i_lora take seq_lora's optimizer steps per epoch and examples per step, counted
through the shared training loop (harness/training.py) on the same data."""
import pytest
import torch

import methods.base
import methods.i_lora
import tasks
from core.data import TaskContext
from harness.models import tiny_model
from harness.prompting import PromptEncoder
from harness.training import fit
from methods import get_method

ORDER = ("bbc", "hutto_amazon", "trec")


@pytest.fixture(scope="module")
def train(tokenizer):
    enc = PromptEncoder(tokenizer, 16)
    return {n: enc.encode(tasks.load_task(n, None, 16, 4, 1), "train") for n in ORDER}


def stream(name, tokenizer, train, monkeypatch, **settings):
    """Train `name` through ORDER with fit(); per task: its step count and, per step, the examples that got a
    gradient (every answer_loss call under grad, wherever the method makes it)."""
    calls = []

    def spy(model, batch, **kw):
        if torch.is_grad_enabled():
            calls.append(list(batch["examples"]))
        return real(model, batch, **kw)

    real = methods.base.answer_loss
    monkeypatch.setattr(methods.base, "answer_loss", spy)
    monkeypatch.setattr(methods.i_lora, "answer_loss", spy)
    torch.manual_seed(0)   # peft's LoRA init and dropout draw from the global generator (the runner seeds it too)
    # one epoch each: matched means seq_lora's steps per epoch (at equal epochs, its steps in all)
    method = get_method(name)(tiny_model(tokenizer, seed=0), tokenizer, {"batch_size": "4", "epochs": "1", **settings},
                              seed=3)
    method.setup()
    steps, per_step = [], []
    for k, task in enumerate(ORDER):
        ctx = TaskContext(index=k, name=task, tasks=[task])
        method.before_task(ctx, train[task])
        calls.clear()
        torch.manual_seed(k + 1)
        stats = fit(method, ctx, method.training_examples(ctx, train[task]), seed=k, pad_id=tokenizer.pad_token_id,
                    progress=False)
        method.after_task(ctx, train[task])
        steps.append(stats["steps"])
        per_step.append(list(calls))
    monkeypatch.undo()
    return method, steps, per_step


def test_matched_replay_takes_seq_lora_steps_and_batch_size(tokenizer, train, monkeypatch):
    _, seq_steps, seq_batches = stream("seq_lora", tokenizer, train, monkeypatch)
    _, extra_steps, _ = stream("replay", tokenizer, train, monkeypatch, memory_size="8")
    method, steps, batches = stream("replay", tokenizer, train, monkeypatch, memory_size="8", compute="matched")
    assert seq_steps == steps == [4, 4, 4]
    assert extra_steps == [4, 6, 6]           # 16 task examples + 8 remembered, batches of 4
    assert [[len(b) for b in task] for task in batches] == [[len(b) for b in task] for task in seq_batches]
    # the memory's share of the extra epoch, 8 / 24, spread over the batches by cumulative rounding
    for k, task in enumerate(ORDER):
        own = set(map(id, train[task]))
        replayed = [sum(id(ex) not in own for ex in batch) for batch in batches[k]]
        assert replayed == ([0, 0, 0, 0] if k == 0 else [1, 2, 1, 1]), task
    assert method.diagnostics["matched"]["trec"] == {"memory_share": round(8 / 24, 6), "rows_replayed": 5}
    # the memory rows come from the earlier tasks' kept examples, none twice within a pass
    remembered = {id(ex) for name in ORDER[:2] for ex in train[name]}
    last = [ex for batch in batches[2] for ex in batch if id(ex) not in set(map(id, train["trec"]))]
    assert all(id(ex) in remembered for ex in last) and len({id(ex) for ex in last}) == len(last)
    assert method.card()["settings"]["compute"] == "matched"


def test_matched_replay_is_deterministic(tokenizer, train, monkeypatch):
    runs = [stream("replay", tokenizer, train, monkeypatch, memory_size="8", compute="matched") for _ in range(2)]
    (a, _, batches_a), (b, _, batches_b) = runs
    assert [[[ex.prompt_ids for ex in batch] for batch in task] for task in batches_a] == \
        [[[ex.prompt_ids for ex in batch] for batch in task] for task in batches_b]
    for (name, p), q in zip(a.model.named_parameters(), b.model.parameters()):
        assert torch.equal(p, q), name


def test_i_lora_matched_trains_on_seq_lora_examples_per_step(tokenizer, train, monkeypatch):
    _, seq_steps, seq_batches = stream("seq_lora", tokenizer, train, monkeypatch)
    _, extra_steps, extra_batches = stream("i_lora", tokenizer, train, monkeypatch, buffer_size="10")
    method, steps, batches = stream("i_lora", tokenizer, train, monkeypatch, buffer_size="10", compute="matched")
    assert seq_steps == extra_steps == steps == [4, 4, 4]    # I-LoRA never lengthens the epoch ...

    def rows_per_step(per_task, k):
        # the examples that got a gradient in each step: I-LoRA makes two answer_loss calls per replay step
        calls = per_task[k]
        per = len(calls) // seq_steps[k]
        return [sum(len(c) for c in calls[i:i + per]) for i in range(0, len(calls), per)]
    seq_rows = [rows_per_step(seq_batches, k) for k in range(3)]
    assert [rows_per_step(extra_batches, k) for k in range(3)] == [seq_rows[0]] + [[8] * 4] * 2   # ... but doubles
    assert [rows_per_step(batches, k) for k in range(3)] == seq_rows == [[4] * 4] * 3
    assert len(batches[1]) == 2 * len(seq_batches[1])       # half current, half replayed, both with gradient
    assert [len(c) for c in batches[1]] == [2] * 8
    assert method.buffer.seen == 48 and method.card()["settings"]["compute"] == "matched"
