"""The one thing a method exposes for test time: a Scorer, a forward over the prompt (returning its last
logits and KV cache) and a forward over continuation tokens; and the left-padded batches both take."""
from __future__ import annotations

from typing import Protocol

import torch

from core.device import device_of


class Scorer(Protocol):
    device: torch.device   # where the inputs it is given must be: its model's device
    packs_candidates: bool  # continue_forward takes a 4-D mask, so every candidate label shares one prompt cache

    def prefix_forward(self, input_ids) -> object | None: ...
    def prompt_forward(self, input_ids, attention_mask, position_ids, past=None) -> tuple[torch.Tensor, object]: ...
    def continue_forward(self, input_ids, attention_mask, position_ids, past) -> torch.Tensor: ...
    # Optional, for a scorer with a prompt cache of its own (CRAFT's frozen backbone): own_encoding = True with
    # encode_prompts(prompts, pad_id), and encode_with_continuation(prompts, pad_id, tokens, block, offset), the
    # prompts and every candidate's tokens in one forward (methods/craft.py says what each returns).


# Model types whose forward uses a 4-D attention mask as the whole mask and takes positions from position_ids
# (no ALiBi, no chunked attention), under attention that applies such a mask (flash attention does not).
PACKABLE_MODELS = ("llama", "mistral", "qwen2", "qwen3", "gemma")


def takes_4d_mask(config) -> bool:
    # a sliding window or bidirectional attention would be overridden by the custom mask
    return (config.model_type in PACKABLE_MODELS and config._attn_implementation in ("sdpa", "eager")
            and getattr(config, "sliding_window", None) is None
            and not getattr(config, "use_bidirectional_attention", False))


class CausalLMScorer:
    """Scorer for any causal LM, peft-wrapped or not."""

    def __init__(self, model):
        self.model = model
        self.device = device_of(model)
        self.packs_candidates = takes_4d_mask(model.config)

    def prefix_forward(self, input_ids):
        """Keys/values of a prefix that every prompt the caller scores next begins with (a batch of one), or
        None where this scorer's model differs between prompts before their shared part ends."""
        return self.model(input_ids=input_ids, use_cache=True, logits_to_keep=1).past_key_values

    def prompt_forward(self, input_ids, attention_mask, position_ids, past=None):
        """Last logits and KV cache of the prompts; with `past` (a prefix's cache, expanded to the batch),
        input_ids are the tokens after the prefix and attention_mask spans prefix and suffix."""
        out = self.model(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids,
                         past_key_values=past, use_cache=True, logits_to_keep=1)
        return out.logits[:, -1, :], out.past_key_values

    def continue_forward(self, input_ids, attention_mask, position_ids, past):
        """Logits of tokens after the cached ones. attention_mask: [B, past + T] (1: a real token), or, where
        packs_candidates, bool [B, 1, T, past + T] (True: the query may attend to that key)."""
        out = self.model(input_ids=input_ids, attention_mask=model_mask(self.model, attention_mask),
                         position_ids=position_ids, past_key_values=past, use_cache=True)
        return out.logits


def model_mask(model, attention_mask: torch.Tensor) -> torch.Tensor:
    """A bool 4-D mask (True: the query may attend to that key) in the form the model's attention takes:
    sdpa takes it as it is, eager attention adds it to its scores. A 2-D mask passes unchanged."""
    if attention_mask.dim() == 4 and model.config._attn_implementation == "eager":
        dtype = next(model.parameters()).dtype
        return torch.zeros(attention_mask.shape, dtype=dtype, device=attention_mask.device
                           ).masked_fill(~attention_mask, torch.finfo(dtype).min)
    return attention_mask


def left_pad(seqs: list[tuple[int, ...]], pad_id: int, device=None):
    width = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(seqs), width), dtype=torch.long)
    for i, s in enumerate(seqs):
        ids[i, width - len(s):] = torch.tensor(s, dtype=torch.long)
        mask[i, width - len(s):] = 1
    ids, mask = ids.to(device), mask.to(device)   # built on the CPU, one copy each to the model's device
    # Positions count real tokens only, so a left-padded prompt is encoded as it would be alone.
    pos = (mask.cumsum(-1) - 1).clamp(min=0)
    return ids, mask, pos
