import copy
import json
import os
import random
from unittest.mock import patch

import pytest
import torch

import tasks
from core.data import TaskContext
from core.errors import UsageError
from core.loss import collate
from harness.config import BenchConfig
from harness.models import tiny_model
from harness.prompting import PromptEncoder
from harness.runner import run_bench
from harness.training import fit
from methods._reft import InterventionSet, interpolate
from methods.base import Method
from methods.craft import CRAFT, kl

ORDER = "hutto_amazon,bbc,hutto_tweets"


def craft_run(tmp_path, tokenizer, name="c", **args):
    model = tiny_model(tokenizer, seed=0)
    cfg = BenchConfig(method="craft", order=ORDER, seed=2, train_per_task=8, test_per_task=6, out=str(tmp_path / name),
                      model="tiny-llama", max_input_tokens=16, progress=False,
                      method_args={"lr": "0.05", "min_steps": "1", "probe_size": "4", "anchors_per_task": "4", **args})
    out = run_bench(cfg, model_and_tokenizer=(model, tokenizer))
    return out, model, json.load(open(os.path.join(out, "method.json")))


def test_backbone_is_bit_identical_and_the_card_is_complete(tmp_path, tokenizer):
    pristine = tiny_model(tokenizer, seed=0).state_dict()
    out, model, card = craft_run(tmp_path, tokenizer)
    for name, value in model.state_dict().items():
        assert torch.equal(value, pristine[name]), name
    d = card["diagnostics"]
    assert card["trainable_parameters"] > 0 and 0 < card["trainable_ratio_to_seq_lora"] < 1
    assert card["uses_task_id_at_test"] is False and "unlabeled prompts" in card["keeps_from_past_tasks"]
    assert set(d["routing"]) == set(d["training"]) == set(d["merge"]) == set(ORDER.split(","))
    for trace in d["training"].values():
        assert trace["stop_step"] >= 1 and trace["stop_reason"]
    # the tiny random model gives every task the same output distribution: one group, so merges happen
    assert d["groups"] == {"0": ORDER.split(",")}
    assert "weight" in d["merge"]["bbc"] and "kl_after" in d["merge"]["bbc"]


@pytest.mark.parametrize("routing,test_routing", [("per_task", "task_id"), ("single", "task_id"), ("per_task", "kl")])
def test_evaluation_scores_again_only_the_inputs_whose_group_changed(tmp_path, tokenizer, routing, test_routing):
    # An input is scored again only where its group took a task since (or it is routed elsewhere): a group per
    # task leaves the earlier tasks' groups as they were; one group for all changes under every input at every
    # stage; under task ids a task not trained yet is scored on the backbone, which never changes. Every row's
    # predictions are --cache off's (every input scored again), and the routing counts cover every input.
    def go(name, cache):
        model = tiny_model(tokenizer, seed=0)
        cfg = BenchConfig(method="craft", order=ORDER, seed=2, train_per_task=8, test_per_task=6, model="tiny-llama",
                          out=str(tmp_path / name), max_input_tokens=16, progress=False, cache=cache, matrix="full",
                          method_args={"lr": "0.05", "min_steps": "1", "probe_size": "4", "anchors_per_task": "4",
                                       "routing": routing, "test_routing": test_routing})
        out = run_bench(cfg, model_and_tokenizer=(model, tokenizer))
        return out, json.load(open(os.path.join(out, "status.json")))["rows"]

    (on, rows), (_, rows_off) = go("on", "on"), go("off", "off")
    reused = [rows[t].get("examples_reused") for t in ORDER.split(",")]
    if test_routing == "task_id":   # 6 test inputs a task
        assert reused == ([0, 12, 12] if routing == "per_task" else [0, 6, 0])
    else:                           # each input goes to its nearest group: those not drawn to the new one stay
        assert reused[0] == 0 and reused[2] > 0
    assert "examples_reused" not in rows_off["bbc"]
    assert {r: row["predictions"] for r, row in rows.items()} == {r: row["predictions"] for r, row in rows_off.items()}
    if test_routing == "kl":
        counts = json.load(open(os.path.join(on, "method.json")))["diagnostics"]["test_routing"]
        assert {t: sum(c.values()) for t, c in counts.items()} == {t: 6 for t in ORDER.split(",")}


def test_kl_term_is_zero_at_the_start_of_a_group(tmp_path, tokenizer):
    _, _, card = craft_run(tmp_path, tokenizer)
    trace = card["diagnostics"]["training"]
    assert trace["hutto_amazon"]["kl_trace"] == []              # a group's first task: nothing to protect
    assert trace["bbc"]["kl_trace"][0] == pytest.approx(0, abs=1e-6)  # starts from the group's state
    events = [json.loads(ln) for ln in open(tmp_path / "c" / "log.jsonl")]
    first = [e for e in events if e["event"] == "step" and e["task"] == "hutto_amazon"]
    assert first and all("kl" not in e for e in first)


def test_ablation_switches_do_what_they_say(tmp_path, tokenizer):
    _, _, single = craft_run(tmp_path, tokenizer, "s", routing="single")
    assert single["diagnostics"]["groups"] == {"0": ORDER.split(",")}
    _, _, per_task = craft_run(tmp_path, tokenizer, "p", routing="per_task")
    assert per_task["diagnostics"]["groups"] == {"0": ["hutto_amazon"], "1": ["bbc"], "2": ["hutto_tweets"]}
    assert all(v["kl_trace"] == [] for v in per_task["diagnostics"]["training"].values())
    _, _, no_merge = craft_run(tmp_path, tokenizer, "m", merge="false")
    assert all(m["weight"] == 1.0 for m in no_merge["diagnostics"]["merge"].values())
    assert no_merge["diagnostics"]["merge"]["bbc"]["reason"] == "merge=false"
    _, _, no_kl = craft_run(tmp_path, tokenizer, "k", kl_term="false")
    events = [json.loads(ln) for ln in open(tmp_path / "k" / "log.jsonl")]
    later = [e for e in events if e["event"] == "step" and e["task"] == "bbc"]
    # the KL is still measured (for the diagnostics) but no longer part of the loss
    assert later and all(e["loss"] == pytest.approx(e["task_loss"], abs=1e-4) for e in later)
    _, _, task_id = craft_run(tmp_path, tokenizer, "t", test_routing="task_id")
    assert task_id["uses_task_id_at_test"] is True


def test_identity_init_starts_as_a_no_op_and_still_learns():
    h = torch.randn(6, 32)
    random_init = InterventionSet([0], dim=32, rank=4, seed=1)
    identity = InterventionSet([0], dim=32, rank=4, seed=1, identity=True)
    with torch.no_grad():
        assert (random_init.edit(0)(h) - h).abs().max() > 0.1      # pyreft's init already edits h
        assert torch.allclose(identity.edit(0)(h), h, atol=1e-5)
    # same R as pyreft's draw, so the two differ only in W and b
    assert torch.equal(identity.edit(0).rotate_layer.weight, random_init.edit(0).rotate_layer.weight)
    loss = (identity.edit(0)(h) - (h + 1.0)).pow(2).mean()
    loss.backward()
    assert identity.edit(0).learned_source.bias.grad.abs().sum() > 0


def test_merge_yields_a_valid_loreft_intervention():
    a = InterventionSet([0, 1], dim=32, rank=4, seed=1)
    b = InterventionSet([0, 1], dim=32, rank=4, seed=2)
    with torch.no_grad():
        for s in (a, b):
            for layer in s.layers:
                s.edit(layer).learned_source.weight.normal_()
    merged, err = interpolate(a, b, 0.5)
    h = torch.randn(5, 32)
    for layer in merged.layers:
        R = merged.edit(layer).rotate_layer.weight.T
        assert torch.allclose(R @ R.T, torch.eye(4), atol=1e-5)            # orthonormal rows
    assert err > 0   # two unrelated rank-4 edits span 8 dimensions: the rank-4 merge truncates
    # when the two edits share R, the interpolation is exact and is again h + M h + c
    b2 = InterventionSet([0, 1], dim=32, rank=4, seed=1)
    with torch.no_grad():
        for layer in b2.layers:
            b2.edit(layer).learned_source.weight.normal_()
    merged, err = interpolate(a, b2, 0.3)
    assert err < 1e-5
    for layer in a.layers:
        Ma, ca = a.affine(layer)
        Mb, cb = b2.affine(layer)
        expected = h + h @ (0.7 * Ma + 0.3 * Mb).T + (0.7 * ca + 0.3 * cb)
        with torch.no_grad():
            assert torch.allclose(merged.edit(layer)(h), expected, atol=1e-4)


def test_state_round_trips_exactly(tmp_path, tokenizer):
    out, model, _ = craft_run(tmp_path, tokenizer)
    state = torch.load(os.path.join(out, "checkpoint-2.pt"), weights_only=False)
    m2 = CRAFT(tiny_model(tokenizer, seed=0), tokenizer, {}, seed=5)
    m2.setup()
    m2.load_state_dict(state)
    enc = PromptEncoder(tokenizer, 16)
    data = tasks.load_task("bbc", None, 4, 4, 1)
    prompts = [e.prompt_ids for e in enc.encode(data, "test")]
    m1 = CRAFT(model, tokenizer, {}, seed=2)   # the run's model already carries its hooks; rebuild from state
    m1.setup()
    m1.load_state_dict(state)
    for g1, g2 in zip(m1.groups, m2.groups):
        assert torch.equal(m1._batched_logprobs(prompts, g1.state), m2._batched_logprobs(prompts, g2.state))
        assert torch.equal(g1.signature_log, g2.signature_log) and g1.anchors == g2.anchors


def test_routing_on_the_real_model_joins_shared_output_spaces(smollm):
    """Two sentiment domains share an output space (their prompts list the same labels); BBC topics do not."""
    model, tok = smollm
    m = CRAFT(model, tok, {}, seed=1)
    m.setup()
    enc = PromptEncoder(tok)
    sig = {n: m._signature([e.prompt_ids for e in enc.encode(tasks.load_task(n, None, 8, 4, 1), "train")])
           for n in ("hutto_amazon", "hutto_tweets", "bbc")}
    threshold = m.settings["route_threshold"]
    assert float(kl(sig["hutto_tweets"], sig["hutto_amazon"])) < threshold
    assert float(kl(sig["bbc"], sig["hutto_amazon"])) > threshold
    m.hooks.remove()


# ---- the hook contract: route in before_task, record in after_step, should_stop only reads -----------------
def _craft_and_examples(tokenizer, **settings):
    settings = {"probe_size": "4", "anchors_per_task": "4", **settings}
    m = CRAFT(tiny_model(tokenizer, seed=0), tokenizer, settings, seed=2)
    m.setup()
    enc = PromptEncoder(tokenizer, 16)
    return m, enc.encode(tasks.load_task("bbc", None, 8, 4, 1), "train")


def _join_with_a_second_task(m, examples, tokenizer) -> TaskContext:
    """Train `bbc` into a group, then set up `bbc_again` (the same examples) to join it; returns its context."""
    first = TaskContext(index=0, name="bbc", tasks=["bbc", "bbc_again"])
    m.before_task(first, examples)
    fit(m, first, examples, seed=1, pad_id=tokenizer.pad_token_id, progress=False)
    m.after_task(first, examples)
    second = TaskContext(index=1, name="bbc_again", tasks=["bbc", "bbc_again"])
    m.before_task(second, examples)
    return second


def test_before_task_routes_and_training_examples_is_left_to_the_default(tokenizer):
    assert CRAFT.training_examples is Method.training_examples
    m, examples = _craft_and_examples(tokenizer)
    task = TaskContext(index=0, name="bbc", tasks=["bbc"])
    m.before_task(task, examples)
    assert m.diagnostics["routing"]["bbc"] == {"kl_to_groups": {}, "group": 0, "reason": "first task"}
    assert m.task_group == {"bbc": 0} and m.current is not None and m.trainable_parameters()
    # the probe, then the anchors, from one seeded draw (the order the committed runs were made with)
    rng = random.Random("2:craft:bbc")
    rng.sample(examples, 4)
    assert m._new_anchors == [ex.prompt_ids for ex in rng.sample(examples, 4)]
    assert m.training_examples(task, examples) is examples
    m.hooks.remove()


def test_should_stop_has_no_side_effects_and_after_step_writes_the_traces(tokenizer):
    # a window of 1 and a huge tolerance: the settled-loss rule fires at step 2
    m, examples = _craft_and_examples(tokenizer, min_steps="1", settle_window="1", settle_tol="1e9")
    task = TaskContext(index=0, name="bbc", tasks=["bbc"])
    m.before_task(task, examples)
    for step in (1, 2):
        m.training_loss(collate(examples[4 * (step - 1):4 * step], tokenizer.pad_token_id), task)
        m.after_step(task, step)
        before = copy.deepcopy(m.diagnostics)
        answers = [m.should_stop(task, step) for _ in range(3)]
        assert answers == [step == 2] * 3
        assert m.diagnostics == before
        assert len(m.diagnostics["training"]["bbc"]["loss_trace"]) == step
    m.after_task(task, examples)
    trace = m.diagnostics["training"]["bbc"]
    assert trace["stop_step"] == 2 and trace["stop_reason"].startswith("task loss settled")
    m.hooks.remove()


def test_the_training_loop_calls_after_step_before_should_stop(tokenizer):
    m, examples = _craft_and_examples(tokenizer, min_steps="1", settle_window="1", settle_tol="1e9",
                                      batch_size="2")
    task = TaskContext(index=0, name="bbc", tasks=["bbc"])
    m.before_task(task, examples)
    stats = fit(m, task, m.training_examples(task, examples), seed=1, pad_id=tokenizer.pad_token_id, progress=False)
    m.after_task(task, examples)
    trace = m.diagnostics["training"]["bbc"]
    assert stats["steps"] == 2 and len(trace["loss_trace"]) == 2 and trace["kl_trace"] == []
    assert trace["stop_step"] == 2
    m.hooks.remove()


def test_the_backbone_cache_gives_the_loss_gradients_and_scores_of_the_full_forward(tokenizer):
    """With first_positions=0 only each prompt's last tokens are edited: the cached backbone heads plus the
    edited tails give the full forward's task loss, anchor KL, gradients and test-time scores (float rounding)."""
    from harness.evaluation import candidate_logprobs
    enc = PromptEncoder(tokenizer, 16)
    data = {n: tasks.load_task(n, None, 8, 6, 1) for n in ("hutto_amazon", "bbc")}
    train = {n: enc.encode(d, "train") for n, d in data.items()}

    def trained(cache_mb):
        # one epoch at a constant rate: the training the tolerances below were measured after
        m = CRAFT(tiny_model(tokenizer, seed=0), tokenizer, {"probe_size": "4", "anchors_per_task": "4",
                                                             "routing": "single", "epochs": "1", "warmup": "0",
                                                             "decay": "none"}, seed=1, cache_mb=cache_mb)
        m.setup()
        assert (m.backbone is not None) == bool(cache_mb)
        for k, name in enumerate(data):   # two tasks: the second trains under the KL on the first one's anchors
            ctx = TaskContext(k, name, [name])
            m.before_task(ctx, train[name])
            fit(m, ctx, train[name][:4], seed=k, pad_id=tokenizer.pad_token_id, progress=False)
            if k == 0:
                m.after_task(ctx, train[name])
        loss, parts = m.training_loss(collate(train["bbc"], tokenizer.pad_token_id), ctx)
        loss.backward()
        return m, loss, parts, [p.grad.clone() for p in m.trainable_parameters()]

    cached, loss_c, parts_c, grads_c = trained(64)
    full, loss_f, parts_f, grads_f = trained(0)
    assert cached.backbone.reused > 0 and cached.backbone.entries
    # float rounding only (measured: equal losses, gradients within 5e-8 of values up to 0.2, KL within 2e-8)
    assert loss_c.item() == pytest.approx(loss_f.item(), rel=1e-5)
    assert parts_c["kl"] == pytest.approx(parts_f["kl"], rel=1e-4, abs=1e-7)
    for gc, gf in zip(grads_c, grads_f):
        assert torch.allclose(gc, gf, rtol=1e-4, atol=2e-7)
    cached.after_task(TaskContext(1, "bbc", ["bbc"]), train["bbc"])
    full.after_task(TaskContext(1, "bbc", ["bbc"]), train["bbc"])
    test = [ex.prompt_ids for ex in enc.encode(data["bbc"], "test")]
    scores = [candidate_logprobs(m.scorer("bbc"), test, enc.candidates(data["bbc"]), tokenizer.pad_token_id, 4)[0]
              for m in (cached, full)]
    assert torch.allclose(*scores, atol=2e-5)   # measured 4e-6
    assert torch.equal(scores[0].argmax(-1), scores[1].argmax(-1))


def test_backbone_heads_computed_over_a_shared_prefix_equal_each_prompt_alone(tokenizer):
    """The cache encodes the prefix a call's prompts share once (and keeps it for the next call of the same task);
    every head's keys/values must still be those of the prompt encoded on its own."""
    from methods._backbone_cache import BackboneCache, kv_bytes
    model, pad = tiny_model(tokenizer, seed=0), tokenizer.pad_token_id
    data = tasks.load_task("bbc", None, 8, 2, 1)
    prompts = [ex.prompt_ids for ex in PromptEncoder(tokenizer, 16).encode(data, "train")]
    shared = BackboneCache(model, 4, pad, 64)
    shared.batch(prompts[:5])
    kept = shared._prefix[0]
    assert len(kept) >= 8
    shared.batch(prompts[5:])   # starts with the same prefix: reused, not encoded again
    assert shared._prefix[0] is kept and shared.computed == len(set(prompts))
    own = sum(kv_bytes(kv) for _, kv in shared.entries.values())
    kept_prefix = sum(layer.keys.nbytes + layer.values.nbytes for layer in shared._prefix[1].layers)
    # the prefix is stored once for every entry that shares it, and counts in the budget like the kept one
    assert len(shared.prefixes) == 1 and shared.prefixes[kept][1] == len(shared.entries)
    assert shared.bytes == own + kv_bytes(shared.prefixes[kept][0]) + kept_prefix
    # what is counted is what is held: no stored part is a view that keeps its whole batch's tensor alive
    stored = [t for _, kv in shared.entries.values() for pair in kv for t in pair]
    stored += [t for pair in shared.prefixes[kept][0] for t in pair]
    assert all(t.untyped_storage().nbytes() == t.nbytes for t in stored)
    tight = BackboneCache(model, 4, pad, 1e-3)   # room for nothing: computed each time, nothing kept
    tight.batch(prompts[:2])
    assert not tight.entries and not tight.prefixes and tight._prefix[1] is None and tight.bytes == 0

    def whole(parts):   # a head's keys/values per layer, its shared prefix (if any) and own part side by side
        return [tuple(torch.cat([p[i][j] for p in parts if p is not None], dim=1) for j in (0, 1))
                for i in range(len(parts[1]))]
    for prompt in prompts:
        alone = BackboneCache(model, 4, pad, 64)
        head = alone.split(prompt)[0]
        for (k, v), (k_s, v_s) in zip(whole(alone._heads([head])[0]), whole(shared._heads([head])[0])):
            assert k.shape == k_s.shape and torch.allclose(k, k_s, atol=1e-5) and torch.allclose(v, v_s, atol=1e-5)
    # dropping every prompt frees its prefix with the last of them: nothing is left but the kept prefix
    shared.drop(prompts)
    assert not shared.entries and not shared.prefixes and shared.bytes == kept_prefix


def test_no_edited_tail_runs_with_the_cache_on(tmp_path, tokenizer):
    # edits on the first tokens only: no unedited head to cache, so the full forward runs (it used to crash)
    out, _, card = craft_run(tmp_path, tokenizer, last_positions="0", first_positions="2")
    assert os.path.isfile(os.path.join(out, "matrix.csv"))


# ---- merge rank, what is kept, settings refused up front -------------------------------------------------------
def _trained_from(a: InterventionSet, seed: int, step: float) -> InterventionSet:
    """a's edit after a little training: R turned slightly, W and b moved (what a task starting from its group's
    state gives the merge)."""
    b = copy.deepcopy(a)
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for layer in b.layers:
            iv = b.edit(layer)
            base = iv.rotate_layer.weight
            iv.rotate_layer.weight = torch.linalg.qr(base + step * torch.randn(base.shape, generator=gen))[0]
            iv.learned_source.weight.add_(torch.randn(iv.learned_source.weight.shape, generator=gen))
            iv.learned_source.bias.add_(torch.randn(iv.learned_source.bias.shape, generator=gen))
    return b


def _installed_error(merged: InterventionSet, a: InterventionSet, b: InterventionSet, weight: float) -> float:
    """Relative error of the installed edit's (M, c) against (1 - weight) * a + weight * b, measured apart."""
    worst = 0.0
    for layer in a.layers:
        target = [(1 - weight) * x + weight * y for x, y in zip(a.affine(layer), b.affine(layer))]
        got = merged.affine(layer)
        stack = [torch.cat([m, c[:, None]], 1) for m, c in (target, got)]
        worst = max(worst, float((stack[1] - stack[0]).norm() / stack[0].norm()))
    return worst


@pytest.mark.parametrize("step", [0.05, 10.0])   # a task trained from its group's edit; an unrelated subspace
def test_merge_rank_2r_reproduces_the_sum_exactly_and_r_records_its_error(step):
    a = InterventionSet([0, 1], dim=32, rank=4, seed=1)
    with torch.no_grad():
        for layer in a.layers:
            a.edit(layer).learned_source.weight.normal_()
    b = _trained_from(a, seed=3, step=step)
    h = torch.randn(5, 32)
    at_r, err_r = interpolate(a, b, 0.5)
    at_2r, err_2r = interpolate(a, b, 0.5, rank=8)
    assert at_2r.rank == 8 and at_r.rank == 4
    assert err_2r < 1e-5 and _installed_error(at_2r, a, b, 0.5) < 1e-5
    for layer in a.layers:
        M, c = [0.5 * x + 0.5 * y for x, y in zip(a.affine(layer), b.affine(layer))]
        with torch.no_grad():
            assert torch.allclose(at_2r.edit(layer)(h), h + h @ M.T + c, atol=1e-4)
    # at rank r the merge is lossy, and the error it reports is the installed edit's
    assert err_r > (1e-3 if step < 1 else 0.1)
    assert _installed_error(at_r, a, b, 0.5) == pytest.approx(err_r, rel=1e-3)


def test_merge_rank_2r_run_merges_exactly_and_resumes(tmp_path, tokenizer):
    out, _, card = craft_run(tmp_path, tokenizer, "r2", routing="single", merge_rank="2r")
    merges = card["diagnostics"]["merge"]
    assert all(t["truncation_error"] < 1e-5 for t in merges["bbc"]["tried"])   # two rank-4 edits: exact at 8
    state = torch.load(os.path.join(out, "checkpoint-2.pt"), weights_only=False)
    m = CRAFT(tiny_model(tokenizer, seed=0), tokenizer, {"merge_rank": "2r"}, seed=2)
    m.setup()
    m.load_state_dict(state)
    assert m.groups[0].state.rank == 8 and card["settings"]["merge_rank"] == "2r"
    kept = card["diagnostics"]["kept"]
    assert kept["intervention_parameters"] == sum(p.numel() for p in m.groups[0].state.parameters())
    m.hooks.remove()


def test_parameters_kept_counts_interventions_and_signatures_and_the_card_counts_anchors(tmp_path, tokenizer):
    _, model, card = craft_run(tmp_path, tokenizer, "p", routing="per_task")
    per_edit = card["trainable_parameters"]
    vocab = model.config.vocab_size
    kept = card["diagnostics"]["kept"]
    assert kept == {"intervention_parameters": 3 * per_edit, "signature_floats": 3 * vocab,
                    "anchor_prompts": 3 * 4, "anchor_tokens": kept["anchor_tokens"]}
    assert kept["anchor_tokens"] >= 3 * 4 * 5
    assert card["parameters_kept"] == 3 * per_edit + 3 * vocab > 3 * per_edit   # signatures outweigh edits here


@pytest.mark.parametrize("first,last", [(0, 0), (-1, 4), (2, -1)])
def test_positions_that_edit_nothing_are_refused_up_front(first, last):
    with pytest.raises(UsageError, match="first_positions.*last_positions"):
        CRAFT.resolve_settings({"first_positions": str(first), "last_positions": str(last)})


@pytest.mark.parametrize("layers,k,expected", [(12, 4, [1, 4, 6, 9]), (12, 6, [1, 2, 4, 6, 8, 9]), (3, 4, [0, 1, 2])])
def test_auto_layers_picks_that_many_evenly_spaced_layers_and_sizes_the_edit(tokenizer, layers, k, expected):
    m = CRAFT(tiny_model(tokenizer, seed=0, layers=layers), tokenizer, {"auto_layers": str(k)}, seed=1)
    m.setup()
    assert m.layers == expected
    per_layer = 2 * 4 * 64 + 4   # LoReFT rank 4 on hidden size 64: R and W (4 x 64 each) and b
    assert sum(p.numel() for p in m._new_state(0).parameters() if p.requires_grad) == len(expected) * per_layer
    m.hooks.remove()
    with pytest.raises(UsageError, match="auto_layers"):
        CRAFT.resolve_settings({"auto_layers": "0"})


def test_listed_layers_have_one_spelling_and_a_malformed_list_is_refused_up_front(tokenizer):
    assert CRAFT.resolve_settings({"layers": "7, 3,3"})["layers"] == "3,7"
    m = CRAFT(tiny_model(tokenizer, seed=0, layers=12), tokenizer, {"layers": "7,3"}, seed=1)
    m.setup()
    assert m.layers == [3, 7]
    m.hooks.remove()
    for bad in ("3,x", "3;7", ""):
        with pytest.raises(UsageError, match="layers must be auto or comma-separated"):
            CRAFT.resolve_settings({"layers": bad})


def test_a_budget_that_nothing_would_read_is_refused_up_front():
    with pytest.raises(UsageError, match="budget_stop=none with merge=false"):
        CRAFT.resolve_settings({"budget_stop": "none", "merge": "false"})
    for ok in ({"budget_stop": "none"}, {"budget_stop": "keep", "merge": "false"}):
        assert CRAFT.resolve_settings(ok)["budget_stop"] == ok["budget_stop"]
    with patch.dict(CRAFT.SETTINGS, budget_stop=("none",) + CRAFT.SETTINGS["budget_stop"][1:]):
        assert CRAFT.resolve_settings({"merge": "false"})["budget_stop"] == "none"   # the ablation under such a default


def test_cli_refuses_zero_positions_with_one_line_and_exit_2(tmp_path, capsys):
    from harness.cli import main
    code = main(["bench", "--method", "craft", "--order", "bbc", "--model", "tiny-llama", "--out", str(tmp_path / "x"),
                 "--method-arg", "first_positions=0", "--method-arg", "last_positions=0"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1 and "last_positions" in err


def test_warmup_ramps_the_learning_rate_only_for_a_task_that_joins_a_group(tokenizer):
    """warmup=4: the loop's optimizer takes lr * k / 4 on steps 1-4 of a group's second task (Adam's first step then
    moves each coordinate by about that, not by lr), and the full lr on a group's first task."""
    lr = 0.01
    m, examples = _craft_and_examples(tokenizer, routing="single", warmup="4", warmup_for="joining", decay="none",
                                      batch_size="1", lr=str(lr), epochs="2", min_steps="100",
                                      forgetting_budget="1e9", kl_term="false")
    n = 2 * len(examples)   # steps a task: 16, so the warm-up (at most a quarter of them) is all 4
    taken = []
    real_step = torch.optim.AdamW.step

    def step(opt, *a, **k):   # what the optimizer actually used, and how far it moved the edit
        before = [p.detach().clone() for p in opt.param_groups[0]["params"]]
        out = real_step(opt, *a, **k)
        moved = max(float((p.detach() - b).abs().max()) for p, b in zip(opt.param_groups[0]["params"], before))
        taken.append((opt.param_groups[0]["lr"], moved))
        return out
    logged = []
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(torch.optim.AdamW, "step", step)
        for index, name in enumerate(("bbc", "bbc_again")):
            task = TaskContext(index=index, name=name, tasks=["bbc", "bbc_again"])
            taken.clear()
            m.before_task(task, examples)
            fit(m, task, examples, seed=1, pad_id=tokenizer.pad_token_id, progress=False,
                log=lambda event, **f: logged.append((name, f.get("lr"))) if event == "step" else None)
            m.after_task(task, examples)
            if name == "bbc":
                assert [r for r, _ in taken] == [lr] * n
            else:
                assert m.diagnostics["routing"]["bbc_again"]["group"] == 0
                assert [r for r, _ in taken] == pytest.approx([lr / 4, lr / 2, 3 * lr / 4] + [lr] * (n - 3))
                # Adam's first step moves the coordinates by about its learning rate: a quarter of lr here
                assert taken[0][1] <= 1.01 * lr / 4 < 0.9 * lr
    # the step log names the learning rate only where it is scheduled
    assert [x for t, x in logged if t == "bbc"] == [None] * n
    scheduled = [x for t, x in logged if t == "bbc_again"]
    assert scheduled[:3] == pytest.approx([lr / 4, lr / 2, 3 * lr / 4]) and scheduled[3:] == [None] * (n - 3)
    m.hooks.remove()


def test_warmup_for_every_task_and_linear_decay_follow_loreft_schedule(tokenizer):
    """warmup=2, warmup_for=all, decay=linear, 8 steps a task (batch 1): every task, its group's first too, takes
    lr/2, lr, then 6/7 ... 1/7 of lr; decay=linear alone (warmup 0) starts a group's first task at 8/9."""
    lr = 0.01
    warm = [lr / 2, lr] + [lr * k / 7 for k in range(6, 0, -1)]
    for settings, first, second in (({"warmup": "2", "warmup_for": "all"}, warm, warm),
                                    ({"warmup": "2", "warmup_for": "joining"}, [lr * k / 9 for k in range(8, 0, -1)],
                                     warm)):
        m, examples = _craft_and_examples(tokenizer, routing="single", batch_size="1", lr=str(lr), decay="linear",
                                          epochs="1", min_steps="100", forgetting_budget="1e9", kl_term="false",
                                          **settings)
        assert len(examples) == 8
        for index, (name, expected) in enumerate((("bbc", first), ("bbc_again", second))):
            task = TaskContext(index=index, name=name, tasks=["bbc", "bbc_again"])
            taken = []
            m.before_task(task, examples)
            fit(m, task, examples, seed=1, pad_id=tokenizer.pad_token_id, progress=False,
                log=lambda event, **f: taken.append(f.get("lr", lr)) if event == "step" else None)
            m.after_task(task, examples)
            assert taken == pytest.approx(expected), (settings, name)
        m.hooks.remove()


def test_a_warmup_longer_than_a_quarter_of_a_short_task_is_cut_to_that_quarter(tokenizer):
    """A warm-up of 8 steps (the default) on a task of 8 steps (8 examples, batch 1, one epoch): 2 steps of warm-up,
    so the task still trains at lr; a task of 40 steps (five epochs) keeps all 8."""
    lr = 0.01
    for epochs, warmup in ((1, 2), (5, 8)):
        m, examples = _craft_and_examples(tokenizer, batch_size="1", lr=str(lr), epochs=str(epochs), warmup="8",
                                          warmup_for="all", decay="none", min_steps="1000", kl_term="false")
        task = TaskContext(index=0, name="bbc", tasks=["bbc"])
        m.before_task(task, examples)
        assert m.diagnostics["training"]["bbc"]["warmup_steps"] == warmup   # recorded after the cap
        taken = [m.learning_rate(task, step) for step in range(1, len(examples) * epochs + 1)]
        assert taken == pytest.approx([lr * k / warmup for k in range(1, warmup + 1)]
                                      + [lr] * (len(examples) * epochs - warmup)), epochs
        m.hooks.remove()
    # with the linear decay, the decay runs over the steps after the cut warm-up; under 4 steps there is none
    for batch, expected in (("1", [lr / 2, lr] + [lr * k / 7 for k in range(6, 0, -1)]), ("4", [lr * 2 / 3, lr / 3])):
        m, examples = _craft_and_examples(tokenizer, batch_size=batch, lr=str(lr), epochs="1", warmup="8",
                                          warmup_for="all", decay="linear", min_steps="1000", kl_term="false")
        task = TaskContext(index=0, name="bbc", tasks=["bbc"])
        m.before_task(task, examples)
        assert [m.learning_rate(task, step) for step in range(1, len(expected) + 1)] == pytest.approx(expected)
        m.hooks.remove()


def test_budget_check_all_confirms_a_batch_kl_on_every_anchor_before_stopping(tokenizer):
    """The anchor batch's KL is scripted at 5 (over the budget of 1) on every step. budget_check=batch stops after
    the first update; all measures the reached state on all the group's anchors instead, and stops only when that
    reaches the budget: never at a learning rate too small to move the edit, at once at a budget of ~0."""
    def second_task(lr, budget, check):
        m, examples = _craft_and_examples(tokenizer, routing="single", batch_size="2", min_steps="100", lr=lr,
                                          epochs="1", warmup="0", decay="none", forgetting_budget=budget,
                                          budget_check=check, merge="false")
        second = _join_with_a_second_task(m, examples, tokenizer)
        m._anchor_kl = lambda: torch.tensor(5.0)
        reached = []
        after_step = m.after_step
        m.after_step = lambda task, step: (reached.append(copy.deepcopy(m.current)), after_step(task, step))
        steps = fit(m, second, examples, seed=1, pad_id=tokenizer.pad_token_id, progress=False)["steps"]
        m.after_task(second, examples)
        trace = m.diagnostics["training"]["bbc_again"]
        whole = [float(kl(m._prior_logp, m._batched_logprobs(m._anchor_prompts, state)).mean()) for state in reached]
        m.hooks.remove()
        return steps, trace, whole

    steps, trace, _ = second_task("1e-8", "1.0", "batch")
    assert steps == 1 and trace["stop_reason"].startswith("KL 5.0000 reached") and "kl_checks" not in trace
    steps, trace, whole = second_task("1e-8", "1.0", "all")
    assert steps == 4 and trace["stop_reason"] == "epochs done"   # 8 examples, batch 2: every step ran
    assert [s for s, _ in trace["kl_checks"]] == [1, 2, 3, 4]
    assert [v for _, v in trace["kl_checks"]] == pytest.approx(whole, abs=1e-6) and max(whole) < 1e-3
    steps, trace, whole = second_task("0.05", "1e-9", "all")
    assert steps == 1 and trace["kl_checks"] == [[1, pytest.approx(whole[0], abs=1e-6)]]
    assert trace["stop_reason"].startswith(f"KL {whole[0]:.4f} on all 4 anchors (batch 5.0000) reached")


@pytest.mark.parametrize("mode", ["keep", "rewind"])
def test_budget_stop_keeps_the_reached_state_or_rewinds_to_the_last_within_budget(tokenizer, mode):
    """Scripted anchor KLs 0.1, 0.2, 5.0 against a budget of 1: training stops after update 3; rewind keeps the
    state after update 1 (the one the 0.2 was measured on), keep the state after update 3 (budget_check=batch: the
    scripted KL decides alone)."""
    m, examples = _craft_and_examples(tokenizer, routing="single", batch_size="2", min_steps="100", lr="0.05",
                                      forgetting_budget="1.0", budget_stop=mode, merge="false", budget_check="batch")
    second = _join_with_a_second_task(m, examples, tokenizer)
    scripted = iter([0.1, 0.2, 5.0])
    m._anchor_kl = lambda: torch.tensor(next(scripted))
    states = []
    after_step = m.after_step

    def record(task, step):
        after_step(task, step)
        states.append(m.current.plain_state())
    m.after_step = record
    stats = fit(m, second, examples, seed=1, pad_id=tokenizer.pad_token_id, progress=False)
    m.after_task(second, examples)
    assert stats["steps"] == 3
    trace = m.diagnostics["training"]["bbc_again"]
    assert trace["stop_reason"].startswith("KL 5.0000 reached")
    def same(a, b):
        return all(torch.equal(a[layer][k], b[layer][k]) for layer in a for k in a[layer])
    kept = m.groups[0].state.plain_state()
    assert same(kept, states[0] if mode == "rewind" else states[2])
    assert not same(kept, states[1])   # the states differ step to step
    assert trace.get("rewound_to_update") == (1 if mode == "rewind" else None)
    m.hooks.remove()


@pytest.mark.parametrize("mode,check", [("keep", "batch"), ("none", "batch"), ("none", "all")])
def test_budget_stop_none_trains_every_step_and_leaves_the_budget_to_the_merge(tokenizer, mode, check):
    """A budget no trained state meets (1e-9 nats): keep stops the joining task once its anchor KL passes it;
    none trains every scheduled step (8 examples, batch 2, 3 epochs: 12) with the KL term still in its loss,
    and either way the merge keeps the group's state within the budget (weight 0: only the prior has KL 0)."""
    m, examples = _craft_and_examples(tokenizer, routing="single", batch_size="2", lr="0.05", epochs="3",
                                      forgetting_budget="1e-9", budget_stop=mode, budget_check=check)
    second = _join_with_a_second_task(m, examples, tokenizer)
    losses = []
    training_loss = m.training_loss
    m.training_loss = lambda batch, task: losses.append(training_loss(batch, task)) or losses[-1]
    stats = fit(m, second, examples, seed=1, pad_id=tokenizer.pad_token_id, progress=False)
    # beta 1: each step's loss is its task loss plus its anchor KL (none leaves the KL term in the loss)
    assert max(parts["kl"] for _, parts in losses) > 1e-3
    assert all(loss.item() == pytest.approx(parts["task_loss"] + parts["kl"], abs=1e-5) for loss, parts in losses)
    m.after_task(second, examples)
    trace = m.diagnostics["training"]["bbc_again"]
    if mode == "none":
        assert stats["steps"] == 12 and trace["stop_reason"] == "epochs done" and max(trace["kl_trace"]) > 1e-9
    else:
        assert stats["steps"] < 12 and trace["stop_reason"].startswith("KL")
    merge = m.diagnostics["merge"]["bbc_again"]
    assert merge["weight"] == 0.0 and merge["tried"][0]["kl"] > 1e-9
    # the group's edit after the merge answers the anchors as the prior did (re-projected, so not the same numbers)
    assert m._kl_on_anchors(m.groups[0].state) < 1e-6
    m.hooks.remove()
