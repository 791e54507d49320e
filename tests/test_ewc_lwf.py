"""EWC and LwF (methods/ewc.py, methods/lwf.py) on the tiny random Llama."""
import io
import json
import os

import pytest
import torch

from core.data import Encoded, TaskContext
from core.loss import answer_loss, collate
from harness.models import tiny_model
from methods import get_method
from tests.test_runner import run


def ctx(index):
    return TaskContext(index=index, name=f"t{index}", tasks=[f"t{index}"])


def make(name, tokenizer, **settings):
    method = get_method(name)(tiny_model(tokenizer, seed=0), tokenizer, settings, seed=0)
    method.setup()
    return method


def examples(tokenizer, n=6, offset=0):
    """Prompts of different lengths (the batches are padded) with one- and two-token labels."""
    return [Encoded("t", (1,) + tuple(400 + offset + 3 * i + j for j in range(2 + i % 3)),
                    (500 + i % 3,) * (1 + i % 2) + (tokenizer.eos_token_id,), i % 3) for i in range(n)]


def lora(method, part="lora_"):
    return {n: p for n, p in method.model.named_parameters() if part in n}


def randomise(params, seed):
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in params.values():
            p.copy_(0.1 * torch.randn(p.shape, generator=gen))


def steps(out):
    return [e for e in map(json.loads, open(os.path.join(out, "log.jsonl"))) if e["event"] == "step"]


def by_task(log, key):
    return {task: [e[key] for e in log if e["task"] == task] for task in dict.fromkeys(e["task"] for e in log)}


# --- EWC ------------------------------------------------------------------------------------------------------
def test_ewc_penalty_is_zero_at_the_anchor_and_quadratic_away_from_it(tokenizer):
    m = make("ewc", tokenizer, **{"lambda": 3.0})
    randomise(lora(m, "lora_B"), seed=1)          # B != 0, so A's entries have a Fisher too
    m.after_task(ctx(0), examples(tokenizer))
    assert float(m.penalty()) == 0.0                                  # theta = theta*: exactly zero
    anchor, fisher = m.terms[0]["anchor"], m.terms[0]["fisher"]
    gen = torch.Generator().manual_seed(2)
    step = {n: torch.randn(p.shape, generator=gen) for n, p in lora(m).items()}

    def displaced(scale):
        with torch.no_grad():
            for n, p in lora(m).items():
                p.copy_(anchor[n] + scale * step[n])
        return float(m.penalty())

    once, twice = displaced(1e-2), displaced(2e-2)
    by_hand = 3.0 / 2 * sum(float((fisher[n] * (1e-2 * step[n]) ** 2).sum()) for n in step)
    assert once > 0 and once == pytest.approx(by_hand, rel=1e-5)
    assert twice == pytest.approx(4 * once, rel=1e-5)                 # doubling the displacement: 4 times


def test_ewc_fisher_is_positive_where_the_loss_depends_on_a_parameter_and_zero_where_not(tokenizer):
    m = make("ewc", tokenizer)
    data = examples(tokenizer)
    fisher = m.fisher(data)
    # a fresh LoRA has B = 0: the loss depends on every B entry and on no A entry
    assert all(bool((f > 0).all()) for n, f in fisher.items() if "lora_B" in n)
    assert all(bool((f == 0).all()) for n, f in fisher.items() if "lora_A" in n)
    # give one layer's B a value: now (and only there) the loss depends on that layer's A
    touched = "layers.0.self_attn.q_proj"
    randomise({n: p for n, p in lora(m, "lora_B").items() if touched in n}, seed=3)
    fisher = m.fisher(data)
    for n, f in fisher.items():
        if "lora_A" in n:
            assert bool((f > 0).all()) if touched in n else bool((f == 0).all()), n
    # the empirical Fisher by hand: the mean of per-example squared gradients (fisher_batch=1) ...
    params = lora(m)
    grads = [torch.autograd.grad(answer_loss(m.model, collate([ex], tokenizer.pad_token_id)), list(params.values()))
             for ex in data]
    for k, n in enumerate(params):
        assert torch.allclose(fisher[n], sum(g[k] ** 2 for g in grads) / len(data), rtol=1e-4, atol=1e-12), n
    # ... and with fisher_batch = all: the square of the batch's mean gradient, smaller where examples disagree
    m.settings["fisher_batch"] = len(data)
    whole = m.fisher(data)
    mean = torch.autograd.grad(answer_loss(m.model, collate(data, tokenizer.pad_token_id)), list(params.values()))
    assert all(torch.allclose(whole[n], mean[k] ** 2, rtol=1e-4, atol=1e-12) for k, n in enumerate(params))
    assert sum(float(f.sum()) for f in whole.values()) < sum(float(f.sum()) for f in fisher.values())


@pytest.mark.parametrize("penalties", ["online", "per_task"])
def test_ewc_fisher_accumulates_over_tasks_with_the_decay(tokenizer, penalties):
    m = make("ewc", tokenizer, gamma=0.5, penalties=penalties)
    first, second = examples(tokenizer), examples(tokenizer, n=5, offset=40)
    randomise(lora(m, "lora_B"), seed=4)
    f0, anchor0 = m.fisher(first), {n: p.detach().clone() for n, p in lora(m).items()}
    m.after_task(ctx(0), first)
    randomise(lora(m, "lora_B"), seed=5)                              # what training on the second task would do
    f1, anchor1 = m.fisher(second), {n: p.detach().clone() for n, p in lora(m).items()}
    m.after_task(ctx(1), second)
    if penalties == "online":   # F <- gamma * F_old + F_new, anchored at the latest LoRA
        expected = [({n: 0.5 * f0[n] + f1[n] for n in f0}, anchor1)]
        assert float(m.penalty()) == 0.0
    else:                       # one penalty per task, each with its own anchor; the older Fisher decayed
        expected = [({n: 0.5 * f0[n] for n in f0}, anchor0), (f1, anchor1)]
        assert float(m.penalty()) > 0                                 # the first task's anchor is elsewhere
    assert len(m.terms) == len(expected)
    for term, (fisher, anchor) in zip(m.terms, expected):
        for n in fisher:
            assert torch.allclose(term["fisher"][n], fisher[n], rtol=1e-5, atol=1e-12), n
            assert torch.equal(term["anchor"][n], anchor[n]), n
    kept = sum(p.numel() for p in m.trainable_parameters())
    assert m.parameters_kept() == kept * (1 + 2 * len(expected))


def test_ewc_run_logs_its_penalty_and_its_state_round_trips(tmp_path, tokenizer):
    out, _ = run(tmp_path, "ewc", tokenizer, method="ewc", method_args={"lr": "0.01", "batch_size": "4", "epochs": "1"})
    penalty = by_task(steps(out), "ewc_penalty")
    assert penalty["bbc"] == [0, 0]                                   # nothing to consolidate yet
    assert penalty["hutto_amazon"][0] == 0 < penalty["hutto_amazon"][1]   # at theta* before the first step
    card = json.load(open(os.path.join(out, "method.json")))
    assert card["parameters_kept"] == 3 * card["trainable_parameters"]
    assert card["diagnostics"]["fisher"]["bbc"]["sum"] > 0
    # a fresh method restores the LoRA, the Fisher and the anchor: the same penalty away from the anchor
    a = make("ewc", tokenizer)
    randomise(lora(a, "lora_B"), seed=6)
    a.after_task(ctx(0), examples(tokenizer))
    randomise(lora(a, "lora_B"), seed=7)
    buf = io.BytesIO()
    torch.save(a.state_dict(), buf)
    b = make("ewc", tokenizer)
    b.load_state_dict(torch.load(io.BytesIO(buf.getvalue()), weights_only=False))
    assert float(a.penalty()) > 0 and torch.equal(a.penalty(), b.penalty())
    loss, parts = b.training_loss(collate(examples(tokenizer), tokenizer.pad_token_id), ctx(1))
    assert torch.allclose(loss, parts["task_loss"] + parts["ewc_penalty"]) and parts["ewc_penalty"] > 0


# --- LwF ------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("positions", ["first", "answer"])
def test_lwf_kl_is_zero_before_the_first_step_and_positive_after(tokenizer, positions):
    m = make("lwf", tokenizer, dropout=0.0, positions=positions)      # no dropout: the model equals the recorded one
    randomise(lora(m, "lora_B"), seed=8)                              # the LoRA left by a previous task
    data = examples(tokenizer)
    m.before_task(ctx(1), data)
    want = [1 if positions == "first" else len(ex.answer_ids) for ex in data]
    assert [r.shape[0] for r in m.recorded.values()] == want          # every example of the new task, no more
    batch = collate(data[::-2], tokenizer.pad_token_id)               # other batches, other padding than recorded
    m.model.train()
    loss, parts = m.training_loss(batch, ctx(1))
    assert float(parts["lwf_kl"]) < 1e-6
    opt = torch.optim.AdamW(m.trainable_parameters(), lr=0.01, weight_decay=0.0)
    loss.backward()
    opt.step()
    opt.zero_grad()
    loss, parts = m.training_loss(batch, ctx(1))
    assert float(parts["lwf_kl"]) > 1e-4
    assert torch.allclose(loss, parts["task_loss"] + 1.0 * 2.0 ** 2 * parts["lwf_kl"])   # lambda * T^2 * KL
    m.after_task(ctx(1), data)
    assert m.recorded == {}                                           # nothing kept from the task's inputs


def test_lwf_records_the_positions_that_predict_the_answer_tokens(tokenizer):
    m = make("lwf", tokenizer, positions="answer", temperature=3.0)
    randomise(lora(m, "lora_B"), seed=9)
    data = examples(tokenizer)
    m.before_task(ctx(1), data)
    for ex in data[:3]:
        for k in range(len(ex.answer_ids)):       # row k: the next-token distribution after prompt + answer[:k]
            ids = torch.tensor([ex.prompt_ids + ex.answer_ids[:k]])
            with torch.no_grad():
                alone = m.model(input_ids=ids).logits[0, -1]
            assert torch.allclose(m.recorded[ex][k], torch.log_softmax(alone / 3.0, -1), atol=1e-4), (ex, k)


def test_lwf_has_nothing_to_distil_on_the_first_task(tokenizer):
    m = make("lwf", tokenizer)
    data = examples(tokenizer)
    m.before_task(ctx(0), data)
    assert m.recorded == {}
    loss, parts = m.training_loss(collate(data, tokenizer.pad_token_id), ctx(0))
    assert float(parts["lwf_kl"]) == 0 and torch.equal(loss, parts["task_loss"])
    backbone = make("lwf", tokenizer, distil_backbone=True)           # the paper's pretrained network as old task
    backbone.before_task(ctx(0), data)
    assert len(backbone.recorded) == len(data)


def test_lwf_run_distils_from_the_second_task_on(tmp_path, tokenizer):
    out, _ = run(tmp_path, "lwf", tokenizer, method="lwf",
                 method_args={"lr": "0.01", "batch_size": "4", "dropout": "0", "epochs": "1"})
    kl = by_task(steps(out), "lwf_kl")
    assert kl["bbc"] == [0, 0]
    assert kl["hutto_amazon"][0] < 1e-6 < kl["hutto_amazon"][1]
    card = json.load(open(os.path.join(out, "method.json")))
    assert card["parameters_kept"] == card["trainable_parameters"]
    assert card["diagnostics"]["recorded_examples"] == {"bbc": 0, "hutto_amazon": 8}
