"""Batches for training and the answer loss every method starts from."""
from __future__ import annotations

import torch

from core.data import Encoded


def collate(examples: list[Encoded], pad_id: int, device=None) -> dict:
    """Left-padded prompt+answer batch, so every answer ends at the last position: the loss then needs the
    vocabulary projection only over the last few positions (`logits_to_keep`), not the whole prompt.
    labels are -100 everywhere but on the answer tokens. Built on the CPU, then moved to `device` (the model's)
    in one copy per tensor."""
    seqs = [ex.prompt_ids + ex.answer_ids for ex in examples]
    width = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(seqs), width), dtype=torch.long)
    labels = torch.full((len(seqs), width), -100, dtype=torch.long)
    for i, (ex, s) in enumerate(zip(examples, seqs)):
        ids[i, width - len(s):] = torch.tensor(s)
        mask[i, width - len(s):] = 1
        labels[i, width - len(ex.answer_ids):] = torch.tensor(ex.answer_ids)
    ids, mask, labels = ids.to(device), mask.to(device), labels.to(device)
    return {"input_ids": ids, "attention_mask": mask, "position_ids": (mask.cumsum(-1) - 1).clamp(min=0),
            "labels": labels, "answer_width": max(len(ex.answer_ids) for ex in examples), "examples": examples}


def answer_loss(model, batch: dict, return_outputs: bool = False):
    """Mean cross-entropy of the answer tokens given the prompt."""
    keep = batch["answer_width"] + 1   # the positions that predict the answer tokens, plus the last one
    out = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                position_ids=batch["position_ids"], past_key_values=batch.get("past_key_values"), logits_to_keep=keep,
                output_hidden_states=return_outputs)
    logits = out.logits[:, :-1].float()
    target = batch["labels"][:, -(keep - 1):]
    loss = torch.nn.functional.cross_entropy(logits.reshape(-1, logits.size(-1)), target.reshape(-1), ignore_index=-100)
    return (loss, out) if return_outputs else loss
