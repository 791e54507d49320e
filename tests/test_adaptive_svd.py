"""adaptive_svd (Sculpting Subspaces) on the tiny random Llama: the update avoids the protected singular
directions, their count follows importance and grows per task, nothing outside the trained set moves, and a
stopped run resumes to the same weights."""
import json
import os

import pytest
import torch

import tasks
from core.data import TaskContext
from core.loss import answer_loss, collate
from harness.models import tiny_model
from harness.prompting import PromptEncoder
from harness.training import fit
from methods import get_method
from tests.test_runner import run

ORDER = "bbc,trec,hutto_amazon"
ARGS = {"lr": "0.01", "trr_step": "0.2"}
RUN = dict(method="adaptive_svd", order=ORDER, method_args=ARGS, test_per_task=2)   # few test rows: weights matter here


def ctx(index):
    return TaskContext(index=index, name=f"t{index}", tasks=[f"t{index}"])


def bbc(tokenizer, n=8):
    return PromptEncoder(tokenizer, 16).encode(tasks.load_task("bbc", None, n, 4, 1), "train")


def method_after_one_task(tokenizer, examples, **settings):
    """A method that has trained task 0 (nothing protected) and is about to train task 1 (bases in place)."""
    # lr 1e-3, not the default 1e-5: a step large enough that float32 rounding of W stays far below 1e-5 of it;
    # one epoch (the tests count steps; the default is seq_lora's epochs)
    m = get_method("adaptive_svd")(tiny_model(tokenizer, seed=0), tokenizer,
                                   {"lr": 1e-3, "trr_step": 0.3, "epochs": 1, **settings}, seed=0)
    m.setup()
    m.before_task(ctx(0), examples)
    fit(m, ctx(0), examples, seed=0, pad_id=tokenizer.pad_token_id, progress=False)
    m.after_task(ctx(0), examples)
    m.before_task(ctx(1), examples)
    return m


def leaks(m, before):
    """Per protected matrix: (||U_k^T dW|| / ||dW||, ||dW V_k|| / ||dW||) for dW = W - before."""
    out = {}
    for name, (left, right) in m.bases.items():
        change = m.matrices[name].detach() - before[name]
        norm = float(change.norm())
        assert norm > 0, name   # the step moved every trained matrix
        out[name] = (float((left.T @ change).norm()) / norm, float((change @ right.T).norm()) / norm)
    return out


def test_each_update_is_orthogonal_to_the_protected_directions(tokenizer):
    examples = bbc(tokenizer)
    m = method_after_one_task(tokenizer, examples)
    assert set(m.bases) == set(m.matrices) and all(k > 0 for k in m.protected.values())
    before = {name: w.detach().clone() for name, w in m.matrices.items()}
    stats = fit(m, ctx(1), examples, seed=1, pad_id=tokenizer.pad_token_id, progress=False)
    assert stats["steps"] == 1
    for name, (left, right) in leaks(m, before).items():
        assert left < 1e-5 and right < 1e-5, (name, left, right)


def test_the_gradient_is_projected_but_adamw_alone_leaks(tokenizer):
    # project_update=false is the reference: the hook projects the gradient, AdamW's per-coordinate scaling
    # then moves the weight into the protected directions; the update projection is what makes it exact
    examples = bbc(tokenizer)
    m = method_after_one_task(tokenizer, examples, project_update=False)
    answer_loss(m.model, collate(examples, tokenizer.pad_token_id)).backward()
    for name, (left, right) in m.bases.items():
        grad = m.matrices[name].grad
        assert float((left.T @ grad).norm()) < 1e-5 * float(grad.norm()), name
        assert float((grad @ right.T).norm()) < 1e-5 * float(grad.norm()), name
    m.model.zero_grad()
    before = {name: w.detach().clone() for name, w in m.matrices.items()}
    fit(m, ctx(1), examples, seed=1, pad_id=tokenizer.pad_token_id, progress=False)
    assert max(max(pair) for pair in leaks(m, before).values()) > 1e-2


def test_counts_follow_importance_around_the_scheduled_share(tokenizer):
    m = get_method("adaptive_svd")(tiny_model(tokenizer, seed=0), tokenizer, {"trr_step": 0.25}, seed=0)
    m.setup()
    q0, q1 = "model.layers.0.self_attn.q_proj", "model.layers.1.self_attn.q_proj"   # 64 x 64
    counts = m.counts({"model.layers.0": 1.5, "model.layers.1": 0.5}, task_index=2)   # I_n = 1.5 and 0.5
    trr = 0.5   # 2 * 0.25; mrr = trr / 2
    assert counts[q0] == round(64 * (0.25 + 1.5 * 0.25)) == 40 and counts[q1] == round(64 * (0.25 + 0.5 * 0.25)) == 24
    assert (counts[q0] + counts[q1]) / 128 == trr
    assert set(m.counts({"model.layers.0": 1.5, "model.layers.1": 0.5}, task_index=0).values()) == {0}


@pytest.fixture(scope="module")
def straight(tmp_path_factory, tokenizer):
    out, model = run(tmp_path_factory.mktemp("asvd"), "straight", tokenizer, **RUN)
    return out, model, json.load(open(os.path.join(out, "method.json")))


def test_the_protected_count_grows_from_task_to_task(straight):
    _, _, card = straight
    per_task = card["diagnostics"]["protected_directions"]
    first, second, third = (per_task[name] for name in ORDER.split(","))
    assert set(first.values()) == {0}                      # the first task protects nothing
    assert all(second[m] > 0 for m in second)
    assert all(third[m] >= second[m] for m in third) and sum(third.values()) > sum(second.values())
    shares = [card["diagnostics"]["protected_share"][name] for name in ORDER.split(",")]
    assert shares[0] == 0 < shares[1] < shares[2]
    assert shares[1] == pytest.approx(0.2, abs=0.02) and shares[2] == pytest.approx(0.4, abs=0.02)   # trr_step 0.2
    assert all(leak < 1e-5 for leak in card["diagnostics"]["update_leak"].values())


def test_parameters_outside_the_trained_set_do_not_change(straight, tokenizer):
    _, model, card = straight
    pristine = tiny_model(tokenizer, seed=0).state_dict()
    trained = {name for name in pristine if name.endswith("_proj.weight")}
    assert len(trained) == 14   # 2 layers x (q, k, v, o, gate, up, down)
    for name, value in model.named_parameters():
        assert torch.equal(value, pristine[name]) == (name not in trained), name
    assert card["trainable_parameters"] == sum(pristine[name].numel() for name in trained)


def test_a_stopped_run_resumes_to_the_same_weights(straight, tmp_path, tokenizer):
    _, model, card = straight
    run(tmp_path, "split", tokenizer, stop_after_task=2, **RUN)
    out, resumed = run(tmp_path, "split", tokenizer, **RUN)
    for (name, a), b in zip(model.named_parameters(), resumed.parameters()):
        assert torch.equal(a, b), name
    assert json.load(open(os.path.join(out, "method.json")))["diagnostics"] == card["diagnostics"]
