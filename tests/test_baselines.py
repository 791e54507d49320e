"""The LoRA baselines: o_lora, inc_lora, i_lora, per_task, mtl (on the tiny random Llama)."""
import io
import json
import os

import pandas as pd
import pytest
import torch

from core.data import Encoded, TaskContext
from core.errors import UsageError
from core.loss import collate
from core.scoring import CausalLMScorer
from harness.config import BenchConfig
from harness.models import tiny_model
from harness.runner import run_bench
from methods import discover, get_method
from methods.i_lora import Reservoir

ORDER = "bbc,hutto_amazon"


def ctx(index, name=None):
    name = name or f"t{index}"
    return TaskContext(index=index, name=name, tasks=[name])


def make(name, tokenizer, **settings):
    method = get_method(name)(tiny_model(tokenizer, seed=0), tokenizer, settings, seed=0)
    method.setup()
    return method


def run_capturing(tmp_path, tokenizer, monkeypatch, method, **args):
    """Run a two-task stream; return (run dir, the method object, pristine backbone state)."""
    cls = get_method(method)
    seen, original = {}, cls.after_task

    def spy(self, task, examples):
        original(self, task, examples)
        seen["method"] = self
        seen.setdefault("after", []).append({n: p.detach().clone() for n, p in self.model.named_parameters()
                                             if "lora_" in n})

    monkeypatch.setattr(cls, "after_task", spy)
    cfg = BenchConfig(method=method, order=ORDER, seed=3, train_per_task=8, test_per_task=6, out=str(tmp_path / method),
                      model="tiny-llama", max_input_tokens=16, progress=False, method_args={"lr": "0.01", **args})
    out = run_bench(cfg, model_and_tokenizer=(tiny_model(tokenizer, seed=0), tokenizer))
    return out, seen


def assert_backbone_untouched(model, tokenizer):
    pristine = tiny_model(tokenizer, seed=0).state_dict()
    checked = 0
    for name, value in model.named_parameters():
        if "lora_" not in name:
            key = name.replace("base_model.model.", "").replace(".base_layer", "")
            assert torch.equal(value, pristine[key]), name
            checked += 1
    assert checked > 0


def logits(scorer, ids=(1, 400, 401, 402, 403, 404)):
    x = torch.tensor([ids])
    with torch.no_grad():
        return scorer.prompt_forward(x, torch.ones_like(x), torch.arange(len(ids))[None])[0]


def steps(out):
    return [e for e in map(json.loads, open(os.path.join(out, "log.jsonl"))) if e["event"] == "step"]


def fill(params, gen):
    with torch.no_grad():
        for p in params:
            p.copy_(torch.randn(p.shape, generator=gen))


# --- O-LoRA ---------------------------------------------------------------------------------------------------
def test_o_lora_orthogonality_term_is_zero_first_then_the_l1_of_a_products(tokenizer):
    m = make("o_lora", tokenizer)
    m.before_task(ctx(0), [])
    assert float(m.orthogonality_loss()) == 0.0                      # nothing earlier to be orthogonal to
    m.before_task(ctx(1), [])
    params = dict(m.model.named_parameters())
    by_hand = sum(torch.abs(params[n] @ params[n.replace(".task0.", ".task1.")].T).sum()
                  for n in params if ".lora_A.task0." in n)
    assert float(m.orthogonality_loss()) > 0 and torch.allclose(m.orthogonality_loss(), by_hand)
    # only the newest adapter trains
    assert {id(p) for p in m.trainable_parameters()} == {id(p) for n, p in params.items() if ".task1." in n}
    assert all(not p.requires_grad for n, p in params.items() if ".task0." in n or "lora_" not in n)
    # A rows in disjoint input coordinates: orthogonal, so the term vanishes
    with torch.no_grad():
        for n, p in params.items():
            if ".lora_A.task0." in n:
                p[:, 32:] = 0
            if ".lora_A.task1." in n:
                p[:, :32] = 0
    assert float(m.orthogonality_loss()) == 0.0


def test_o_lora_keeps_earlier_adapters_bit_identical_and_sums_them_all(tmp_path, tokenizer, monkeypatch):
    out, seen = run_capturing(tmp_path, tokenizer, monkeypatch, "o_lora")
    m = seen["method"]
    after_first, after_second = seen["after"]
    assert set(after_first) < set(after_second)                       # one new LoRA for the second task
    for name, value in after_first.items():
        assert torch.equal(after_second[name], value), name           # frozen while the second task trained
    assert any(float(v.abs().sum()) > 0 for n, v in after_first.items() if ".lora_B.task0." in n)
    assert any(float(v.abs().sum()) > 0 for n, v in after_second.items() if ".lora_B.task1." in n)
    log = steps(out)
    assert all(e["orthogonality"] == 0 for e in log if e["task"] == "bbc")
    assert all(e["orthogonality"] > 0 for e in log if e["task"] == "hutto_amazon")
    card = json.load(open(os.path.join(out, "method.json")))
    diag = card["diagnostics"]
    assert card["trainable_parameters"] == diag["trainable_parameters_current_task"] > 0
    assert diag["adapter_parameters_total"] == 2 * diag["trainable_parameters_current_task"]
    assert diag["adapter_parameters_after_task"] == {"bbc": card["trainable_parameters"],
                                                     "hutto_amazon": 2 * card["trainable_parameters"]}
    assert diag["orthogonality_loss"]["bbc"]["mean"] == 0 and diag["orthogonality_loss"]["hutto_amazon"]["mean"] > 0
    # test time runs every adapter: zeroing the earlier one changes the output
    both = logits(m.scorer("bbc"))
    with torch.no_grad():
        for n, p in m.model.named_parameters():
            if ".lora_B.task0." in n:
                p.zero_()
    assert not torch.allclose(logits(m.scorer("bbc")), both)
    assert_backbone_untouched(m.model, tokenizer)


def test_o_lora_state_round_trips_every_adapter(tokenizer):
    gen = torch.Generator().manual_seed(0)
    a = make("o_lora", tokenizer)
    for k in range(3):
        a.before_task(ctx(k), [])
        fill(a.trainable_parameters(), gen)
    buf = io.BytesIO()
    torch.save(a.state_dict(), buf)
    b = make("o_lora", tokenizer)
    b.load_state_dict(torch.load(io.BytesIO(buf.getvalue()), weights_only=False))
    pa, pb = dict(a.model.named_parameters()), dict(b.model.named_parameters())
    assert set(pa) == set(pb) and all(torch.equal(pa[n], pb[n]) for n in pa)
    assert torch.equal(logits(a.scorer("x")), logits(b.scorer("x")))
    b.before_task(ctx(3), [])
    assert b.adapters == ["task0", "task1", "task2", "task3"] and b.trainable == "task3"


def test_o_lora_long_schedule_and_unknown_schedule(tokenizer):
    m = make("o_lora", tokenizer, schedule="long")
    assert m.lambdas(ctx(0, "yelp")) == (0.0, 0.0)
    assert m.lambdas(ctx(6, "RTE")) == (0.5, 0.3)
    assert m.lambdas(ctx(14, "WiC")) == (5.0, 0.3)
    with pytest.raises(UsageError):
        get_method("o_lora").resolve_settings({"schedule": "longest"})


def test_inc_lora_computes_but_does_not_weight_the_orthogonality(tokenizer):
    with pytest.raises(UsageError):
        get_method("inc_lora").resolve_settings({"lambda1": "0.5"})
    m = make("inc_lora", tokenizer)
    m.before_task(ctx(0), [])
    m.before_task(ctx(1), [])
    batch = collate([Encoded("t1", (1, 400, 401), (402, tokenizer.eos_token_id), 0)] * 2, tokenizer.pad_token_id)
    loss, parts = m.training_loss(batch, ctx(1))
    assert parts["orthogonality"] > 0 and torch.equal(loss, parts["task_loss"] + 0.0 * parts["orthogonality"])


# --- I-LoRA ---------------------------------------------------------------------------------------------------
def test_i_lora_ema_weighs_the_slow_side(tokenizer):
    m = make("i_lora", tokenizer)
    fast, slow = m.adapter_parameters("fast"), m.adapter_parameters("slow")
    with torch.no_grad():
        for p in fast.values():
            p.fill_(1.0)
        for p in slow.values():
            p.fill_(3.0)
    m.after_step(ctx(0), step=4)            # a = min(1 - 1/5, 0.25) = 0.25: slow <- 0.25 * 3 + 0.75 * 1 = 1.5
    assert all(torch.equal(p, torch.full_like(p, 1.5)) for p in slow.values())
    assert all(torch.equal(p, torch.full_like(p, 1.0)) for p in fast.values())
    warm = make("i_lora", tokenizer, ema_alpha=0.9)
    assert warm.ema_weight(1) == 0.5 and warm.ema_weight(99) == 0.9   # the reference's warm-up below the cap


def test_reservoir_is_bounded_and_uniform():
    r = Reservoir(500, seed=0)
    r.add(range(20000))
    assert len(r.items) == 500 and r.seen == 20000 and len(set(r.items)) == 500
    counts = pd.Series(r.items).floordiv(2000).value_counts().reindex(range(10), fill_value=0)
    chi2 = float(((counts - 50) ** 2 / 50).sum())
    assert chi2 < 27.88, counts.tolist()    # chi-square, 9 dof, p = 0.001: every part of the stream equally kept
    picked = r.sample(8)
    assert len(set(picked)) == 8 and set(picked) <= set(r.items)


def test_i_lora_evaluates_the_slow_copy(tokenizer):
    m = make("i_lora", tokenizer)
    bare = logits(CausalLMScorer(tiny_model(tokenizer, seed=0)))
    with torch.no_grad():                    # fast moves away; slow keeps B = 0, i.e. exactly the backbone
        for n, p in m.adapter_parameters("fast").items():
            if "lora_B" in n:
                p.normal_()
    assert torch.allclose(logits(m.scorer("x")), bare, atol=1e-5)
    m.activate(["fast"], "fast")
    assert not torch.allclose(logits(CausalLMScorer(m.model)), bare, atol=1e-3)
    m.after_step(ctx(0), step=1)             # the slow copy takes a step toward fast: evaluation follows it
    assert not torch.allclose(logits(m.scorer("x")), bare, atol=1e-3)


def test_i_lora_run_replays_and_leaves_the_backbone(tmp_path, tokenizer, monkeypatch):
    out, seen = run_capturing(tmp_path, tokenizer, monkeypatch, "i_lora", buffer_size="10", epochs="1")
    m = seen["method"]
    log = steps(out)
    assert all("consistency" not in e for e in log if e["task"] == "bbc")
    assert all(e["consistency"] >= 0 and e["replay_loss"] > 0 for e in log if e["task"] == "hutto_amazon")
    diag = json.load(open(os.path.join(out, "method.json")))["diagnostics"]
    assert diag["buffer"] == {"held": 10, "seen": 16}
    fast, slow = m.adapter_parameters("fast"), m.adapter_parameters("slow")
    assert any(not torch.equal(p, fast[n.replace(".slow.", ".fast.")]) for n, p in slow.items())
    assert_backbone_untouched(m.model, tokenizer)
    # resume: a fresh method restores both copies and the buffer, and continues the same replay draws
    buf = io.BytesIO()
    torch.save(m.state_dict(), buf)
    twin = make("i_lora", tokenizer, buffer_size=10)
    twin.load_state_dict(torch.load(io.BytesIO(buf.getvalue()), weights_only=False))
    assert torch.equal(logits(twin.scorer("bbc")), logits(m.scorer("bbc")))
    assert twin.buffer.sample(5) == m.buffer.sample(5)


# --- per-task and multi-task bounds ---------------------------------------------------------------------------
def test_per_task_scores_each_task_with_its_own_adapter(tmp_path, tokenizer, monkeypatch):
    out, seen = run_capturing(tmp_path, tokenizer, monkeypatch, "per_task")
    m = seen["method"]
    card = json.load(open(os.path.join(out, "method.json")))
    assert card["uses_task_id_at_test"] is True
    first, second = logits(m.scorer("bbc")), logits(m.scorer("hutto_amazon"))
    assert m.model.base_model.active_adapters == ["task1"] and not torch.allclose(first, second)
    assert torch.equal(logits(m.scorer("bbc")), first)                 # switching back restores task0's adapter
    assert m.model.base_model.active_adapters == ["task0"]
    bare = logits(CausalLMScorer(tiny_model(tokenizer, seed=0)))
    assert torch.allclose(logits(m.scorer("trec")), bare, atol=1e-5)  # a task never trained: the backbone
    assert m.evaluation_key("trec") == "backbone" and m.evaluation_key("bbc") != m.evaluation_key("hutto_amazon")
    buf = io.BytesIO()
    torch.save(m.state_dict(), buf)
    twin = make("per_task", tokenizer)
    twin.load_state_dict(torch.load(io.BytesIO(buf.getvalue()), weights_only=False))
    assert torch.equal(logits(twin.scorer("bbc")), first) and torch.equal(logits(twin.scorer("hutto_amazon")), second)
    assert_backbone_untouched(m.model, tokenizer)


@pytest.mark.parametrize("method", ["mtl", "inc_lora"])
def test_joint_and_incremental_runs_leave_the_backbone(tmp_path, tokenizer, monkeypatch, method):
    out, seen = run_capturing(tmp_path, tokenizer, monkeypatch, method)
    R = pd.read_csv(os.path.join(out, "matrix.csv"), index_col=0)
    card = json.load(open(os.path.join(out, "method.json")))
    if method == "mtl":
        assert list(R.index) == ["base", "all"] and card["joint_training"] is True
        assert "upper bound" in card["description"]
        assert {e["task"] for e in steps(out)} == {"all"} and len(seen["after"]) == 1
    else:
        assert list(R.index) == ["base", "bbc", "hutto_amazon"]
        assert all(e["lambda1"] == 0 for e in steps(out))
    assert_backbone_untouched(seen["method"].model, tokenizer)


# --- what a method keeps and whether it uses the task id: computed from its settings ---------------------------
RECORDS = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "results", "runs")
NON_DEFAULT = {"craft": ({"test_routing": "task_id", "anchors_per_task": "5"}, True,
                         "5 unlabeled prompts per task (no labels), one signature (vocabulary distribution) per task "
                         "and one intervention per group"),
               "replay": ({"memory_size": "7"}, False,
                          "up to 7 labelled training examples of past tasks (evenly per task)"),
               "i_lora": ({"buffer_size": "3"}, False,
                          "a reservoir of up to 3 labelled training examples (all tasks seen) and a slow EMA copy of "
                          "the LoRA")}


def committed_cards() -> list[dict]:
    cards = []
    for folder, _, files in sorted(os.walk(RECORDS)):
        if "method.json" in files:
            with open(os.path.join(folder, "method.json")) as f:
                cards.append(json.load(f))
    return cards


@pytest.mark.parametrize("name,settings", [(n, {}) for n in sorted(discover())]
                         + [(n, s) for n, (s, _, _) in sorted(NON_DEFAULT.items())])
def test_the_card_says_what_the_classmethods_say(tokenizer, name, settings):
    cls = get_method(name)
    method = make(name, tokenizer, **settings)
    card = method.card()
    resolved = cls.resolve_settings(settings)
    assert card["uses_task_id_at_test"] is cls.uses_task_id_at_test(resolved)
    assert card["keeps_from_past_tasks"] == cls.keeps(resolved)
    # nothing is set on the instance: the class answers, from the settings
    assert not {"KEEPS", "USES_TASK_ID_AT_TEST"} & set(vars(method))
    if settings:
        _, uses, keeps = NON_DEFAULT[name]
        assert (card["uses_task_id_at_test"], card["keeps_from_past_tasks"]) == (uses, keeps)
        assert (cls.uses_task_id_at_test(), cls.keeps()) != (uses, keeps)   # None: the defaults
    else:
        assert cls.uses_task_id_at_test() is card["uses_task_id_at_test"]
        assert cls.keeps() == card["keeps_from_past_tasks"]
    # method.json keeps exactly the keys (and their order) of the committed records
    recorded = [c for c in committed_cards() if c["name"] == name]
    if recorded:
        assert list(card) + ["timing"] == list(recorded[0])


def test_committed_method_cards_agree_with_the_classmethods():
    cards = committed_cards()
    if not cards:
        pytest.skip("no committed run records")
    for card in cards:
        cls = get_method(card["name"])
        settings = cls.resolve_settings(card["settings"])
        assert cls.uses_task_id_at_test(settings) is card["uses_task_id_at_test"], card["name"]
        assert cls.keeps(settings) == card["keeps_from_past_tasks"], card["name"]
