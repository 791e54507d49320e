"""CURLoRA on the tiny random Llama: only U trains, the layer is x W^T + x (C U R)^T, U = 0 is the backbone,
and columns/rows are drawn with the inverted probabilities."""
import torch

from core.data import Encoded, TaskContext
from harness.models import tiny_model
from harness.training import fit
from methods import get_method
from methods.curlora import selection_probabilities


def make(tokenizer, seed=0, **settings):
    method = get_method("curlora")(tiny_model(tokenizer, seed=0), tokenizer, settings, seed=seed)
    method.setup()
    return method


def prompt_logits(model, ids=(1, 400, 401, 402, 403, 404)):
    with torch.no_grad():
        return model(input_ids=torch.tensor([ids])).logits


def randomise_u(method, seed=1):
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for layer in method.layers.values():
            layer.U.copy_(torch.randn(layer.U.shape, generator=gen))


def test_only_u_is_trainable_and_only_u_moves_in_a_training_step(tokenizer):
    m = make(tokenizer, epochs="1")   # one pass over one batch: one step
    us = {id(layer.U) for layer in m.layers.values()}
    assert len(m.layers) == 4                                        # q_proj, v_proj in each of 2 layers
    assert {id(p) for p in m.model.parameters() if p.requires_grad} == us
    assert {id(p) for p in m.trainable_parameters()} == us
    r = m.settings["r"]
    assert m.parameters_kept() == m.card()["trainable_parameters"] == 4 * r * r
    before = {n: p.detach().clone() for n, p in m.model.named_parameters()}
    eos = tokenizer.eos_token_id
    examples = [Encoded("t", (1, 400 + i, 401, 402), (410 + i % 2, eos), i % 2) for i in range(8)]
    stats = fit(m, TaskContext(index=0, name="t", tasks=["t"]), examples, seed=0, pad_id=tokenizer.pad_token_id,
                progress=False)
    assert stats["steps"] == 1
    moved = {n for n, p in m.model.named_parameters() if not torch.equal(p, before[n])}
    assert moved == {n for n, p in m.model.named_parameters() if n.endswith(".U")}   # every U, nothing else


def test_the_layer_is_x_wt_plus_x_cur_t_from_the_stored_indices(tokenizer):
    m = make(tokenizer)
    randomise_u(m)
    state = m.state_dict()["layers"]
    x = torch.randn(2, 3, 64, generator=torch.Generator().manual_seed(2))
    for name, layer in m.layers.items():
        W = layer.base.weight.detach().double()
        columns, rows, U = state[name]["columns"], state[name]["rows"], state[name]["U"].double()
        C, R = W[:, columns], W[rows, :]                             # by hand, from the state's indices
        assert C.shape == (W.shape[0], 16) and R.shape == (16, W.shape[1]) and U.shape == (16, 16)
        expected = x.double() @ W.T + x.double() @ (C @ U @ R).T
        with torch.no_grad():
            got = layer(x)
        torch.testing.assert_close(got.double(), expected, rtol=1e-5, atol=1e-6)
        assert (got.double() - x.double() @ W.T).abs().max() > 1e-2   # the update is there, not negligible


def test_with_u_zero_the_outputs_are_the_backbones(tokenizer):
    m = make(tokenizer)
    assert all(float(layer.U.abs().sum()) == 0 for layer in m.layers.values())
    backbone = tiny_model(tokenizer, seed=0)
    assert torch.equal(prompt_logits(m.model), prompt_logits(backbone))
    randomise_u(m)                                                   # and a non-zero U does change them
    assert not torch.allclose(prompt_logits(m.model), prompt_logits(backbone))


def test_probabilities_are_inverted_norm_shares():
    # the paper's example: columns of norms 2, 3, 5 have shares 4/38, 9/38, 25/38
    W = torch.tensor([[2.0, 0.0, 3.0],
                      [0.0, 3.0, 4.0]])                               # rows: norms^2 13 and 25, of 38 too
    columns, rows = selection_probabilities(W, eps=1e-3)
    inverted = torch.tensor([1 / (4 / 38 + 1e-3), 1 / (9 / 38 + 1e-3), 1 / (25 / 38 + 1e-3)])
    torch.testing.assert_close(columns, inverted / inverted.sum())
    inverted = torch.tensor([1 / (13 / 38 + 1e-3), 1 / (25 / 38 + 1e-3)])
    torch.testing.assert_close(rows, inverted / inverted.sum())
    assert columns[0] > columns[1] > columns[2] and rows[0] > rows[1]   # a larger norm is less likely


def edited_tiny(tokenizer):
    """The tiny Llama with, in every target weight, column and row 0 blown up and column and row 1 zeroed."""
    model = tiny_model(tokenizer, seed=0)
    with torch.no_grad():
        for name, module in model.named_modules():
            if name.endswith(("q_proj", "v_proj")):
                module.weight[:, 0] *= 100
                module.weight[0, :] *= 100
                module.weight[:, 1] = 0
                module.weight[1, :] = 0
    return model


def test_the_draw_favours_small_columns_and_rows_and_is_seeded(tokenizer):
    def draw(seed):
        m = get_method("curlora")(edited_tiny(tokenizer), tokenizer, {"eps": "1e-6"}, seed=seed)
        m.setup()
        return [(layer.columns.tolist(), layer.rows.tolist()) for layer in m.layers.values()]

    drawn = draw(0)
    for columns, rows in drawn:
        assert 1 in columns and 1 in rows              # the zeroed column/row: the likeliest
        assert 0 not in columns and 0 not in rows      # the largest: all but never
    assert draw(0) == drawn and draw(1) != drawn       # the method's seed decides the draw


def test_state_rebuilds_the_same_c_and_r_under_another_seed(tokenizer):
    m = make(tokenizer, seed=0)
    randomise_u(m)
    state = m.state_dict()
    fresh = make(tokenizer, seed=5)                                  # would draw other indices
    assert any(not torch.equal(a.columns, b.columns) for a, b in zip(m.layers.values(), fresh.layers.values()))
    fresh.load_state_dict(state)
    for name, layer in m.layers.items():
        assert torch.equal(fresh.layers[name].C(), layer.C()) and torch.equal(fresh.layers[name].R(), layer.R())
    assert torch.equal(prompt_logits(fresh.model), prompt_logits(m.model))
