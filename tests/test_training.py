import torch

from core.data import Encoded
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
