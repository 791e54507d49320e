import torch

from core.data import Encoded, TaskContext
from core.loss import answer_loss, collate


def test_answer_loss_equals_the_unpadded_per_example_loss(tiny):
    model, tok = tiny
    exs = [Encoded("t", (1, 5, 9, 11, 13), (20, 21, 2), 0), Encoded("t", (3, 4), (30, 2), 1),
           Encoded("t", (7, 8, 9), (40, 41, 42, 2), 0)]
    batch = collate(exs, tok.pad_token_id)
    got = answer_loss(model, batch)
    nll, count = 0.0, 0
    with torch.no_grad():
        for ex in exs:
            ids = torch.tensor([ex.prompt_ids + ex.answer_ids])
            logp = torch.log_softmax(model(ids).logits[0], -1)
            for j, tok_id in enumerate(ex.answer_ids):
                nll -= float(logp[len(ex.prompt_ids) - 1 + j, tok_id])
                count += 1
    assert torch.isclose(got, torch.tensor(nll / count), atol=1e-4)


def _loss_and_grads(model, batch, params):
    loss = answer_loss(model, batch)
    grads = torch.autograd.grad(loss, params)
    return loss.detach(), grads


def test_a_shared_prefix_gives_the_loss_and_gradients_of_whole_prompts(tokenizer):
    """Training with each batch's common prompt prefix encoded once (its keys/values repeated over the rows,
    gradients flowing back through them) gives the whole prompts' loss and LoRA gradients, fp32, up to float
    rounding, with dropout off: on real prompts of several tasks and on a batch mixing tasks (replay's)."""
    import tasks
    from harness.models import tiny_model
    from harness.prompting import PromptEncoder
    from methods import get_method
    enc = PromptEncoder(tokenizer, 16)
    method = get_method("seq_lora")(tiny_model(tokenizer, seed=0), tokenizer, {"dropout": 0.0}, seed=1)
    method.setup()
    method.model.train()
    params = [p for p in method.trainable_parameters() if p.requires_grad]
    with torch.no_grad():   # B starts at 0, which would leave A without gradient: as after some training
        for p in params:
            p.normal_(0, 0.05, generator=torch.Generator().manual_seed(p.numel()))
    encoded = {name: enc.encode(tasks.load_task(name, None, 8, 4, seed=1), "train") for name in ("trec", "bbc")}
    mixed = encoded["trec"][:4] + encoded["bbc"][:4]
    for name, examples in [*encoded.items(), ("trec+bbc", mixed)]:
        whole = collate(examples, tokenizer.pad_token_id)
        split = collate(examples, tokenizer.pad_token_id, share_prefix=True)
        assert "prefix" not in whole and split["prefix"]["ids"].shape[1] >= 8, name   # the chat template at least
        if name != "trec+bbc":
            assert split["prefix"]["ids"].shape[1] >= 20, name   # plus instruction and options
        loss, grads = _loss_and_grads(method.model, whole, params)
        shapes = []
        hook = method.model.get_base_model().register_forward_pre_hook(
            lambda module, args, kwargs: shapes.append(tuple(kwargs["input_ids"].shape)), with_kwargs=True)
        try:
            shared_loss, shared_grads = _loss_and_grads(method.model, split, params)
        finally:
            hook.remove()
        # the split path ran: the prefix alone once, then the rows' own tokens
        assert shapes == [tuple(split["prefix"]["ids"].shape), tuple(split["prefix"]["input_ids"].shape)], name
        assert torch.isclose(loss, shared_loss, rtol=1e-6, atol=1e-6), name
        for g, h in zip(grads, shared_grads):
            assert g.abs().max() > 0 and torch.allclose(g, h, rtol=1e-4, atol=1e-6), name
        # a control: the rows' own tokens one position off fail the tolerances above (the tiny random model's
        # attention is near uniform, so positions move its loss little: 6e-5 here)
        shifted = {**split, "prefix": {**split["prefix"], "position_ids": split["prefix"]["position_ids"] + 1}}
        off_loss, off_grads = _loss_and_grads(method.model, shifted, params)
        assert not torch.isclose(loss, off_loss, rtol=1e-6, atol=1e-6), name
        assert not all(torch.allclose(g, h, rtol=1e-4, atol=1e-6) for g, h in zip(grads, off_grads)), name


def test_the_loop_shares_the_prefix_only_where_the_method_allows_it(tokenizer, monkeypatch):
    """fit() hands answer_loss split batches with share_prefix on, and whole prompts with it off or for a method
    whose training edits prompt positions (CRAFT)."""
    import core.loss
    import tasks
    from harness.models import tiny_model
    from harness.prompting import PromptEncoder
    from harness.training import fit
    from methods import get_method
    seen = []
    original = core.loss.collate
    monkeypatch.setattr("harness.training.collate", lambda *a, **k: seen.append(original(*a, **k)) or seen[-1])
    data = tasks.load_task("trec", None, 8, 4, seed=1)
    examples = PromptEncoder(tokenizer, 16).encode(data, "train")
    ctx = TaskContext(0, "trec", ["trec"], {"trec": data.labels})
    for name, share, split in [("seq_lora", True, True), ("seq_lora", False, False), ("craft", True, False)]:
        method = get_method(name)(tiny_model(tokenizer, seed=0), tokenizer, {"epochs": 1}, seed=1)
        method.setup()
        method.before_task(ctx, examples)
        seen.clear()
        assert fit(method, ctx, examples, seed=1, pad_id=tokenizer.pad_token_id, progress=False,
                   share_prefix=share)["steps"] == 1
        assert ("prefix" in seen[0]) is split, (name, share)


def test_replay_mixes_memory_into_a_batch_on_the_loop_s_training_path(tokenizer, monkeypatch):
    """compute-matched replay builds its own batches (task rows plus memory rows): they take the shared prefix
    exactly when the loop's batch did, so --cache off keeps whole prompts throughout."""
    import methods.replay
    import tasks
    from harness.models import tiny_model
    from harness.prompting import PromptEncoder
    from methods import get_method
    enc = PromptEncoder(tokenizer, 16)
    data = {n: tasks.load_task(n, None, 8, 4, seed=1) for n in ("bbc", "trec")}
    encoded = {n: enc.encode(d, "train") for n, d in data.items()}
    built = []
    original = methods.replay.collate
    monkeypatch.setattr(methods.replay, "collate", lambda *a, **k: built.append(original(*a, **k)) or built[-1])
    for share in (True, False):
        method = get_method("replay")(tiny_model(tokenizer, seed=0), tokenizer, {"compute": "matched"}, seed=1)
        method.setup()
        method.memory = {"bbc": encoded["bbc"]}
        ctx = TaskContext(1, "trec", ["trec"], {"trec": data["trec"].labels})
        own = method.training_examples(ctx, encoded["trec"])
        built.clear()
        _, parts = method.training_loss(collate(own, tokenizer.pad_token_id, share_prefix=share), ctx)
        assert parts["replayed"] > 0 and len(built) == 1
        assert built[0]["share_prefix"] is share and ("prefix" in built[0]) is share   # the chat template at least
