"""CRMA on the tiny random Llama: Sinkhorn makes the mixing matrices doubly stochastic (so ||M||_2 <= 1), the
layer is W x + mixed task adapters + substrate, gradients reach the mixing logits and the substrate, finished
tasks' adapters stay frozen, and the state rebuilds the same model. (Resume: tests/test_runner.py -k crma.)"""
import io

import pytest
import torch

from core.data import Encoded, TaskContext
from core.loss import collate
from harness.models import tiny_model
from harness.training import fit
from methods import get_method
from methods.crma import sinkhorn


def make(tokenizer, **settings):
    # one pass a task (the tests count steps; the default is seq_lora's epochs)
    method = get_method("crma")(tiny_model(tokenizer, seed=0), tokenizer, {"lr": "0.01", "epochs": "1", **settings},
                                seed=0)
    method.setup()
    return method


def ctx(index):
    return TaskContext(index=index, name=f"t{index}", tasks=[f"t{index}"])


def examples(tokenizer, n=16):
    eos = tokenizer.eos_token_id
    return [Encoded("t", (1, 400 + i, 401, 402), (410 + i % 2, eos), i % 2) for i in range(n)]


def randomise(method, seed=1):
    """Every adapter, substrate and logit random (B matrices start at zero, which would hide every gradient)."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in [*method.trainable_parameters(), *(p for l in method.layers for p in (*l.task_A, *l.task_B))]:
            p.copy_(torch.randn(p.shape, generator=gen) * 0.3)


def prompt_logits(model, ids=(1, 400, 401, 402, 403, 404)):
    with torch.no_grad():
        return model(input_ids=torch.tensor([ids])).logits


def assert_doubly_stochastic(M, tol=1e-5):
    ones = torch.ones(M.shape[:-1])
    torch.testing.assert_close(M.sum(-1), ones, rtol=0, atol=tol)      # rows
    torch.testing.assert_close(M.sum(-2), ones, rtol=0, atol=tol)      # columns
    assert (M >= 0).all()
    assert float(torch.linalg.matrix_norm(M.double(), 2).max()) <= 1 + tol   # Birkhoff: ||M||_2 <= 1


@pytest.mark.parametrize("n", [1, 2, 3, 5, 8, 16])
def test_sinkhorn_rows_and_columns_sum_to_one_and_the_spectral_norm_is_at_most_one(n):
    gen = torch.Generator().manual_seed(n)
    logits = torch.randn(6, n, n, generator=gen)             # six random logit matrices at once (one per layer)
    settings = get_method("crma").resolve_settings({})
    M = sinkhorn(logits, settings["sinkhorn_iters"], settings["sinkhorn_tol"])
    assert_doubly_stochastic(M)
    for one, by_itself in zip(M, logits):                    # batched equals one at a time
        torch.testing.assert_close(one, sinkhorn(by_itself, settings["sinkhorn_iters"], settings["sinkhorn_tol"]))
    if n > 1:   # exp(logits) normalised only once is not: the check above can fail
        assert (sinkhorn(logits * 3, 1).sum(-1) - 1).abs().max() > 1e-3


def test_the_methods_matrices_are_doubly_stochastic_after_training(tokenizer):
    m = make(tokenizer)
    for k in range(3):
        m.before_task(ctx(k), [])
        randomise(m, seed=k)                                  # logits far from their diagonal start
        M, S = m.mixing_matrices()
        assert M.shape == (4, k + 1, k + 1) and S.shape == (4, 8, 8)   # q_proj, v_proj in each of 2 layers
        assert_doubly_stochastic(M)
        assert_doubly_stochastic(S)


def test_the_layer_is_base_plus_the_mixed_adapters_plus_the_substrate(tokenizer):
    m = make(tokenizer)
    for k in range(3):
        m.before_task(ctx(k), [])
    randomise(m)
    x = torch.randn(2, 3, 64, generator=torch.Generator().manual_seed(2))
    s = m.settings
    M = sinkhorn(m.task_logits.detach() / s["tau"], s["sinkhorn_iters"], s["sinkhorn_tol"])
    S = sinkhorn(m.substrate_logits.detach() / s["tau"], s["sinkhorn_iters"], s["sinkhorn_tol"])
    for row, weights_of in ((2, lambda M: M[:, 2]), (0, lambda M: M[:, 0]), (None, lambda M: M.mean(-2))):
        m.row = row
        m.mix()
        for i, layer in enumerate(m.layers):
            w = weights_of(M)[i]
            with torch.no_grad():
                expected = layer.base(x)                          # W x: the frozen backbone's layer
            for j in range(3):                                # by hand: one adapter at a time
                expected = expected + 32 / 8 * w[j] * x @ (layer.task_B[j] @ layer.task_A[j]).T
            expected = expected + 32 / 8 * x @ (layer.substrate_B @ S[i] @ layer.substrate_A).T
            with torch.no_grad():
                torch.testing.assert_close(layer(x), expected, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(M.mean(-2), torch.full((4, 3), 1 / 3))   # column means of M: uniform


def test_test_time_rows_follow_the_setting(tokenizer):
    for mode, rows in (("last", [2, 2, 2, 2]), ("mean", [None] * 4), ("task_id", [0, 1, 2, 2])):
        m = make(tokenizer, test_mixing=mode)
        for k in range(3):
            m.before_task(ctx(k), [])
        seen = []
        for task in ("t0", "t1", "t2", "unseen"):
            m.scorer(task)
            seen.append(m.row)
        assert seen == rows, mode
        assert m.card()["uses_task_id_at_test"] is (mode == "task_id")
    assert get_method("crma").uses_task_id_at_test() is False


def test_gradients_reach_the_mixing_logits_and_the_substrate_not_the_finished_adapters(tokenizer):
    m = make(tokenizer)
    m.before_task(ctx(0), [])
    m.before_task(ctx(1), [])
    randomise(m)
    m.model.train()
    loss, _ = m.training_loss(collate(examples(tokenizer, 4), tokenizer.pad_token_id), ctx(1))
    loss.backward()
    for name, p in (("task logits", m.task_logits), ("substrate logits", m.substrate_logits)):
        assert p.grad is not None and float(p.grad.abs().sum()) > 0, name
    # the off-diagonal logits too: only row 1 is used in the forward, Sinkhorn couples it to the rest
    assert float(m.task_logits.grad[:, 0].abs().sum()) > 0
    for layer in m.layers:
        for p in (layer.substrate_A, layer.substrate_B, layer.task_A[1], layer.task_B[1]):
            assert p.grad is not None and float(p.grad.abs().sum()) > 0
        assert layer.task_A[0].grad is None and layer.task_B[0].grad is None   # task 0's adapter is frozen
    assert all(p.grad is None for n, p in m.model.named_parameters() if ".base." in n or "embed" in n)


@pytest.mark.parametrize("freeze", [True, False])
def test_finished_adapters_stay_frozen_while_the_substrate_and_mixing_train(tokenizer, freeze):
    m = make(tokenizer, freeze_finished=freeze)
    pad = tokenizer.pad_token_id
    m.before_task(ctx(0), [])
    fit(m, ctx(0), examples(tokenizer), seed=0, pad_id=pad, progress=False)
    first = m.state_dict()
    m.before_task(ctx(1), [])
    assert fit(m, ctx(1), examples(tokenizer), seed=1, pad_id=pad, progress=False)["steps"] == 2
    second = m.state_dict()
    for name, layer in first["layers"].items():
        now = second["layers"][name]
        task0_same = torch.equal(now["A"][0], layer["A"][0]) and torch.equal(now["B"][0], layer["B"][0])
        assert task0_same is freeze, name                     # frozen by default; the setting really thaws it
        assert not torch.equal(now["B"][1], torch.zeros_like(now["B"][1]))          # task 1's adapter trained
        assert not all(torch.equal(a, b) for a, b in zip(now["substrate"], layer["substrate"]))   # substrate too
    assert not torch.equal(second["substrate_logits"], first["substrate_logits"])
    assert not torch.equal(second["task_logits"][:, :1, :1], first["task_logits"])  # old block keeps training
    backbone = tiny_model(tokenizer, seed=0).state_dict()
    for name, value in m.model.state_dict().items():
        if ".base." in name or name in backbone:
            assert torch.equal(value, backbone[name.replace(".base.", ".")]), name


def test_state_round_trips_and_the_next_task_adds_a_row(tokenizer):
    a = make(tokenizer)
    for k in range(3):
        a.before_task(ctx(k), [])
    randomise(a)
    buf = io.BytesIO()
    torch.save(a.state_dict(), buf)
    b = make(tokenizer)
    b.load_state_dict(torch.load(io.BytesIO(buf.getvalue()), weights_only=False))
    assert b.adapter_count == 3 and b.task_rows == {"t0": 0, "t1": 1, "t2": 2}
    assert {id(p) for p in b.trainable_parameters()} >= {id(l.task_A[2]) for l in b.layers}
    assert not any(l.task_A[0].requires_grad for l in b.layers)
    a.scorer("t0"), b.scorer("t0")
    assert torch.equal(prompt_logits(a.model), prompt_logits(b.model))
    for method in (a, b):
        method.before_task(ctx(3), [])
    assert torch.equal(a.task_logits, b.task_logits) and a.task_logits.shape == (4, 4, 4)
    assert all(torch.equal(x.task_A[3], y.task_A[3]) for x, y in zip(a.layers, b.layers))   # seeded draw
    # per layer: 4 adapters and the substrate (rank 8 each), M (4 x 4) and S (8 x 8)
    assert a.parameters_kept() == sum(5 * 8 * (l.base.in_features + l.base.out_features) + 16 + 64 for l in a.layers)


def test_a_fresh_method_is_the_backbone(tokenizer):
    m = make(tokenizer)
    m.before_task(ctx(0), [])
    assert torch.equal(prompt_logits(m.model), prompt_logits(tiny_model(tokenizer, seed=0)))   # every B is zero


def test_a_method_resumed_from_its_state_trains_the_next_task_to_the_same_weights(tokenizer):
    # the runner's resume test compares accuracy matrices, which the tiny model barely moves: compare the weights
    def train(method, k):
        torch.manual_seed(k)                                  # dropout's masks: the runner seeds every stage
        method.before_task(ctx(k), [])
        fit(method, ctx(k), examples(tokenizer), seed=k, pad_id=tokenizer.pad_token_id, progress=False)
        method.after_task(ctx(k), [])

    straight = make(tokenizer)
    for k in range(2):
        train(straight, k)
    buf = io.BytesIO()
    torch.save(straight.state_dict(), buf)
    resumed = make(tokenizer)
    resumed.load_state_dict(torch.load(io.BytesIO(buf.getvalue()), weights_only=False))
    for method in (straight, resumed):
        train(method, 2)
    a, b = straight.state_dict(), resumed.state_dict()
    assert torch.equal(a["task_logits"], b["task_logits"]) and torch.equal(a["substrate_logits"], b["substrate_logits"])
    for name, layer in a["layers"].items():
        for key in ("A", "B", "substrate"):
            assert all(torch.equal(x, y) for x, y in zip(layer[key], b["layers"][name][key])), (name, key)
    assert a["diagnostics"] == b["diagnostics"]
