"""Batches for training and the answer loss every method starts from."""
from __future__ import annotations

import os

import torch

from core.data import Encoded
from core.scoring import left_pad

# A shared prefix shorter than this is not worth a forward of its own (training's and evaluation's threshold).
MIN_SHARED_PREFIX = 8


def collate(examples: list[Encoded], pad_id: int, device=None, share_prefix: bool = False) -> dict:
    """Left-padded prompt+answer batch, so every answer ends at the last position: the loss then needs the
    vocabulary projection only over the last few positions (`logits_to_keep`), not the whole prompt.
    labels are -100 everywhere but on the answer tokens. Built on the CPU, then moved to `device` (the model's)
    in one copy per tensor.

    share_prefix: where the prompts begin with MIN_SHARED_PREFIX or more common tokens (a task's template,
    instruction and options), the batch also carries them apart (`prefix`), so that answer_loss encodes them
    once for the batch; `share_prefix` stays in the batch for a method that builds batches of its own."""
    ids, mask, positions = left_pad([ex.prompt_ids + ex.answer_ids for ex in examples], pad_id, device)
    labels = torch.full(ids.shape, -100, dtype=torch.long)
    for i, ex in enumerate(examples):
        labels[i, ids.shape[1] - len(ex.answer_ids):] = torch.tensor(ex.answer_ids)
    labels = labels.to(device)
    batch = {"input_ids": ids, "attention_mask": mask, "position_ids": positions,
             "labels": labels, "answer_width": max(len(ex.answer_ids) for ex in examples), "examples": examples,
             "share_prefix": share_prefix}
    if share_prefix and len(examples) > 1:
        common = os.path.commonprefix([list(ex.prompt_ids) for ex in examples])
        length = min(len(common), min(len(ex.prompt_ids) for ex in examples) - 1)   # each keeps a prompt token
        if length >= MIN_SHARED_PREFIX:
            own_ids, own_mask, own_pos = left_pad([ex.prompt_ids[length:] + ex.answer_ids for ex in examples],
                                                  pad_id, device)
            # The own tokens' left padding sits between prefix and text: masked, and positions skip it, so each
            # prompt is encoded as it would be alone.
            batch["prefix"] = {
                "ids": torch.tensor([common[:length]], dtype=torch.long, device=device), "input_ids": own_ids,
                "attention_mask": torch.cat([torch.ones((len(examples), length), dtype=torch.long,
                                                        device=own_mask.device), own_mask], dim=1),
                "position_ids": own_pos + length}
    return batch


def answer_loss(model, batch: dict, return_outputs: bool = False):
    """Mean cross-entropy of the answer tokens given the prompt.

    A batch that carries its shared prefix apart (collate's share_prefix) has it encoded once, its keys and
    values repeated over the rows (gradients flow back through the copies), and each row's own tokens on top:
    the same loss and gradients as whole prompts up to float rounding, with dropout off. With dropout on,
    the prefix's tokens take one dropout mask for the whole batch instead of one per row. Where the caller
    reads the outputs (hidden states over the whole prompt), whole prompts are encoded."""
    keep = batch["answer_width"] + 1   # the positions that predict the answer tokens, plus the last one
    split = batch.get("prefix")
    if split is not None and not return_outputs and batch.get("past_key_values") is None:
        past = model(input_ids=split["ids"], use_cache=True, logits_to_keep=1).past_key_values
        past.batch_repeat_interleave(split["input_ids"].shape[0])
        out = model(input_ids=split["input_ids"], attention_mask=split["attention_mask"],
                    position_ids=split["position_ids"], past_key_values=past, use_cache=True, logits_to_keep=keep)
    else:
        out = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                    position_ids=batch["position_ids"], past_key_values=batch.get("past_key_values"),
                    logits_to_keep=keep, output_hidden_states=return_outputs)
    logits = out.logits[:, :-1].float()
    target = batch["labels"][:, -(keep - 1):]
    loss = torch.nn.functional.cross_entropy(logits.reshape(-1, logits.size(-1)), target.reshape(-1), ignore_index=-100)
    return (loss, out) if return_outputs else loss
