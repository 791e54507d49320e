"""The frozen backbone's keys/values over the part of each prompt that no edit reaches, computed once.

CRAFT edits only the last k prompt tokens (first_positions=0) of a frozen backbone. Under causal attention
no earlier position attends to an edited one, so every earlier position has the backbone's keys/values at
every layer, in every training step, anchor KL, merge trial and evaluation of a run. This cache holds them
per prompt; a forward then runs only the last k prompt tokens and what follows them (the answer, the
candidate labels) on top. About 46 KB per token in fp32 for SmolLM2 (30 layers x 3 KV heads x 64 x K and V),
so about 5 MB per 110-token prompt. The prefix a task's prompts share (chat template, instruction, options:
about half of each prompt) is stored once, beside each prompt's own part, so a 15-task order's test, training
and anchor prompts held at once (about 1,900) take about 4.5 GB, not 9. Entries are kept until `budget_mb` is full, then
new prompts are computed each time and not stored (a scan larger than the budget keeps its first part instead
of thrashing).
Entries live on the model's device (GPU memory on a GPU run): `bytes_per_token` says what a model needs
(Llama-2-7B: 32 layers x 32 KV heads x 128 x 2 x 4 bytes = 1 MB a token, so the default 6144 MB holds about
110 prompts' own 55 tokens; Llama-3.2-1B 64 KB, Gemma-2B 36 KB)."""
from __future__ import annotations

import copy
import os

import torch
from transformers import DynamicCache

from core.device import device_of
from core.loss import MIN_SHARED_PREFIX


def bytes_per_token(config, dtype=torch.float32) -> int:
    """Keys and values of one token over every layer, from a model's config (what an entry costs per token)."""
    heads = getattr(config, "num_key_value_heads", None) or config.num_attention_heads
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
    return 2 * config.num_hidden_layers * heads * head_dim * torch.empty((), dtype=dtype).element_size()


def kv_bytes(kv) -> int:
    return sum(k.nbytes + v.nbytes for k, v in kv)


class BackboneCache:
    def __init__(self, model, edited_tail: int, pad_id: int, budget_mb: float, dtype=torch.float32):
        self.model = model
        self.tail = edited_tail          # the last tokens of every prompt that are edited, so never cached
        self.pad_id = pad_id
        self.budget = int(budget_mb * 2**20)
        self.dtype = dtype               # storage: fp32 keeps results exact; bf16 halves the memory
        # head -> (the shared prefix it was computed on, () if none; per layer (keys, values) of its own tokens)
        self.entries: dict[tuple[int, ...], tuple[tuple[int, ...], list[tuple[torch.Tensor, torch.Tensor]]]] = {}
        # prefix -> [per layer (keys, values), how many entries use it]: stored once, freed with its last user
        self.prefixes: dict[tuple[int, ...], list] = {}
        self.bytes = 0
        self.computed = self.reused = 0  # prompts whose head was computed / found, for the diagnostics
        self.bytes_per_token = bytes_per_token(model.config, dtype)
        self._prefix: tuple[tuple[int, ...], object] = ((), None)   # the last shared prefix and its keys/values

    def split(self, prompt: tuple[int, ...]) -> tuple[tuple[int, ...], tuple[int, ...]]:
        cut = max(0, len(prompt) - self.tail)
        return prompt[:cut], prompt[cut:]

    def drop(self, prompts) -> None:
        """Forget these prompts' heads (a finished task's training prompts)."""
        for prompt in prompts:
            entry = self.entries.pop(self.split(prompt)[0], None)
            if entry is None:
                continue
            prefix, own = entry
            self.bytes -= kv_bytes(own)
            if prefix:
                self.prefixes[prefix][1] -= 1
                if not self.prefixes[prefix][1]:
                    self.bytes -= kv_bytes(self.prefixes.pop(prefix)[0])

    @torch.no_grad()
    def _forward(self, ids, mask, position_ids, past=None):
        # fp32 whatever autocast is active: a head computed under bf16 training and reused by an fp32 KL
        # (or the other way) would make a resumed run differ from a straight one
        with torch.autocast(ids.device.type, enabled=False):
            return self.model(input_ids=ids, attention_mask=mask, position_ids=position_ids, past_key_values=past,
                              use_cache=True, logits_to_keep=1).past_key_values

    def _shared_prefix(self, heads: list[tuple[int, ...]], device) -> tuple[tuple[int, ...], object]:
        """(tokens, keys/values) of a prefix the heads share (a task's chat template, instruction and options),
        leaving each head at least one token of its own; ((), None) where none is worth a forward. Kept for the
        next call whose heads share the same one (the next training batch of the same task), within the budget:
        it counts in `bytes` (one prefix, 2.5 MB for SmolLM2's 54-token bbc prefix)."""
        if not heads:
            return (), None
        cut = min(len(h) for h in heads) - 1
        common = tuple(os.path.commonprefix(heads)[:cut]) if len(heads) > 1 else ()
        tokens = self._prefix[0]
        # the kept prefix only where it is the whole shared one: a shorter one (say the chat template that two
        # tasks' anchors share) kept for the next task would leave most of that task's prefix to every row
        if tokens and (tokens == common or len(heads) == 1 and len(tokens) <= cut and heads[0][:len(tokens)] == tokens):
            return self._prefix
        if len(common) < MIN_SHARED_PREFIX:
            return (), None
        ids = torch.tensor([common], dtype=torch.long, device=device)
        positions = torch.arange(len(common), device=device)[None]
        found = (common, self._forward(ids, torch.ones_like(ids), positions))
        size, old = (sum(layer.keys.nbytes + layer.values.nbytes for layer in past.layers) if past is not None else 0
                     for past in (found[1], self._prefix[1]))
        if self.bytes - old + size <= self.budget:
            self._prefix = found
            self.bytes += size - old
        return found

    def _store(self, head, prefix, prefix_kv, own) -> None:
        """Keep a computed head within the budget: its own part, and its prefix unless another entry holds it."""
        size = kv_bytes(own) + (kv_bytes(prefix_kv) if prefix and prefix not in self.prefixes else 0)
        if self.bytes + size > self.budget:
            return
        if prefix:
            self.prefixes.setdefault(prefix, [prefix_kv, 0])[1] += 1
        self.entries[head] = (prefix, own)
        self.bytes += size

    @torch.no_grad()
    def _heads(self, heads: list[tuple[int, ...]]) -> list[tuple[list | None, list]]:
        """Per head: (its shared prefix's per layer (keys, values), or None; the same for its own tokens), each of
        shape [kv_heads, len, head_dim], from the cache or computed (each head's own tokens on top of the prefix
        the missing heads share, as the evaluation does). The two parts side by side are the head's keys/values."""
        def stored(h):
            entry = self.entries.get(h)
            return None if entry is None else (self.prefixes[entry[0]][0] if entry[0] else None, entry[1])
        out: list = [stored(h) for h in heads]
        missing = sorted({h for h, kv in zip(heads, out) if kv is None and h}, key=len)
        self.reused += sum(kv is not None for kv in out)
        device = device_of(self.model)
        prefix, prefix_past = self._shared_prefix(missing, device)
        p = len(prefix)
        # the prefix's keys/values as every row's first p positions hold them after the forward (copies of these);
        # copies, not views: a view would keep the kept prefix (or below, the whole batch's tensor) alive uncounted
        prefix_kv = None if not p else self.prefixes[prefix][0] if prefix in self.prefixes else [
            (layer.keys[0].to(self.dtype, copy=True), layer.values[0].to(self.dtype, copy=True))
            for layer in prefix_past.layers]
        for start in range(0, len(missing), 16):
            chunk = missing[start:start + 16]
            width = len(chunk[-1]) - p
            ids = torch.full((len(chunk), width), self.pad_id, dtype=torch.long)
            mask = torch.zeros((len(chunk), p + width), dtype=torch.long)
            mask[:, :p] = 1
            for i, h in enumerate(chunk):
                ids[i, width - len(h) + p:] = torch.tensor(h[p:])
                mask[i, p + width - len(h) + p:] = 1
            ids, mask = ids.to(device), mask.to(device)
            past = None
            if prefix_past is not None:
                past = copy.deepcopy(prefix_past)
                past.batch_repeat_interleave(len(chunk))
            past = self._forward(ids, mask, (mask.cumsum(-1) - 1).clamp(min=0)[:, p:], past)
            for i, h in enumerate(chunk):
                own = slice(p + width - len(h) + p, None)   # the row's own tokens, after its left padding
                kv = [tuple(t[i, :, own].to(self.dtype, copy=True) for t in (layer.keys, layer.values))
                      for layer in past.layers]
                self._store(h, prefix, prefix_kv, kv)
                for j, other in enumerate(heads):
                    if other == h:
                        out[j] = (prefix_kv, kv)
            self.computed += len(chunk)
        return out

    def batch(self, prompts: list[tuple[int, ...]], extra: list[tuple[int, ...]] | None = None) -> dict:
        """Model inputs for the prompts' edited tails (+ extra tokens after each prompt, e.g. its answer) on top
        of the cached heads: input_ids, attention_mask (heads and tails), position_ids, past_key_values, and
        tail_mask (bool [B, width]: the edited prompt tokens among input_ids). Heads are right-aligned and
        tails left-padded, so every row ends at the last column."""
        extra = extra or [()] * len(prompts)
        heads, tails = zip(*(self.split(p) for p in prompts))
        kv = self._heads(list(heads))
        width_h = max(len(h) for h in heads)
        seqs = [t + e for t, e in zip(tails, extra)]
        width_t = max(len(s) for s in seqs)
        ids = torch.full((len(prompts), width_t), self.pad_id, dtype=torch.long)
        mask = torch.zeros((len(prompts), width_h + width_t), dtype=torch.long)
        tail_mask = torch.zeros((len(prompts), width_t), dtype=torch.bool)
        for i, (h, t, s) in enumerate(zip(heads, tails, seqs)):
            ids[i, width_t - len(s):] = torch.tensor(s)
            mask[i, width_h - len(h):width_h] = 1
            mask[i, width_h + width_t - len(s):] = 1
            tail_mask[i, width_t - len(s):width_t - len(s) + len(t)] = True
        device = device_of(self.model)
        ids, mask, tail_mask = ids.to(device), mask.to(device), tail_mask.to(device)
        own = mask[:, width_h:]
        position_ids = (own.cumsum(-1) - 1).clamp(min=0) + torch.tensor([len(h) for h in heads], device=device)[:, None]
        past = None
        if width_h:
            layers = []
            some = next(own for _, own in (k for k in kv if k is not None))
            for layer in range(len(some)):
                shape = some[layer][0].shape
                keys = torch.zeros((len(prompts), shape[0], width_h, shape[2]), device=device)
                values = torch.zeros_like(keys)
                for i, (h, entry) in enumerate(zip(heads, kv)):
                    if not h:
                        continue
                    start = width_h - len(h)
                    for part in entry:   # the shared prefix (if any), then the head's own tokens
                        if part is not None:
                            n = part[layer][0].shape[1]
                            keys[i, :, start:start + n] = part[layer][0]
                            values[i, :, start:start + n] = part[layer][1]
                            start += n
                layers.append((keys, values))
            past = DynamicCache(layers)
        return {"input_ids": ids, "attention_mask": mask, "position_ids": position_ids, "past_key_values": past,
                "tail_mask": tail_mask}
