"""LoReFT interventions (pyreft's LoreftIntervention) applied to a frozen causal LM through forward hooks.

Why hooks rather than pyreft's IntervenableModel: the harness needs per-row token positions on
left-padded batches, KV-cache continuation through the un-intervened model, position_ids and
logits_to_keep; plain hooks on the decoder layers give all of that on transformers 5 with the
intervention modules themselves unchanged (pyreft's parametrisation, initialisation, forward).

A LoReFT edit is affine: Phi(h) = h + R^T (W h + b - R h) = h + M h + c with M = R^T (W - R), c = R^T b.
Edits therefore interpolate exactly in (M, c), and any (M, c) whose columns span at most r dimensions is
again a LoReFT edit: R' = an orthonormal basis of span[M, c], W' = R' M + R', b' = R' c."""
from __future__ import annotations

import contextlib
import copy
import io

import torch

with contextlib.redirect_stdout(io.StringIO()):   # pyvene prints "nnsight is not detected" on import
    from pyreft import LoreftIntervention


def decoder_layers(model):
    """The list of decoder blocks of a (peft-free) Llama-like causal LM."""
    inner = getattr(model, "model", model)
    return inner.layers


class InterventionSet(torch.nn.Module):
    """One LoReFT intervention per chosen layer: a task's or a group's state."""

    def __init__(self, layers: list[int], dim: int, rank: int, seed: int, identity: bool = False):
        super().__init__()
        self.layers, self.dim, self.rank = list(layers), dim, rank
        with torch.random.fork_rng():
            torch.manual_seed(seed)
            # dtype explicitly fp32: pyreft 0.1.0 defaults its Linear to bfloat16
            self.edits = torch.nn.ModuleDict({str(l): LoreftIntervention(embed_dim=dim, low_rank_dimension=rank,
                                                                         dtype=torch.float32) for l in layers})
        if identity:
            # pyreft draws W at random, so a fresh edit already moves h by R^T (W - R) h; W = R, b = 0 makes
            # it a no-op that training moves away from (R stays pyreft's random orthonormal draw).
            with torch.no_grad():
                for l in self.layers:
                    iv = self.edit(l)
                    iv.learned_source.weight.copy_(iv.rotate_layer.weight.T)
                    iv.learned_source.bias.zero_()

    def edit(self, layer: int) -> LoreftIntervention:
        return self.edits[str(layer)]

    def affine(self, layer: int) -> tuple[torch.Tensor, torch.Tensor]:
        """(M, c) of the edit at `layer`: Phi(h) = h + M h + c (h as a column vector)."""
        iv = self.edit(layer)
        R = iv.rotate_layer.weight.T                  # r x d, orthonormal rows
        W, b = iv.learned_source.weight, iv.learned_source.bias
        return R.T @ (W - R), R.T @ b

    @torch.no_grad()
    def set_affine(self, layer: int, M: torch.Tensor, c: torch.Tensor) -> float:
        """Install the LoReFT edit closest to (M, c) at this set's rank; returns the relative truncation
        error (0 when span[M, c] fits in the rank)."""
        iv = self.edit(layer)
        rank = iv.rotate_layer.weight.shape[1]
        stacked = torch.cat([M, c[:, None]], dim=1)
        U, S, _ = torch.linalg.svd(stacked, full_matrices=False)
        R = U[:, :rank].T.contiguous()                # r x d
        kept = (R.T @ (R @ stacked))
        err = float((stacked - kept).norm() / stacked.norm().clamp_min(1e-12))
        # Through the orthogonal parametrisation's right_inverse (keeps its base orthogonal, so training can
        # continue from here), then the exact bits: the parametrised weight is base[:, :r].
        iv.rotate_layer.weight = R.T.contiguous()
        iv.rotate_layer.parametrizations.weight[0].base[:, :rank] = R.T
        iv.learned_source.weight.copy_(R @ M + R)
        iv.learned_source.bias.copy_(R @ c)
        return err

    def plain_state(self) -> dict:
        # torch's own state_dict per edit: pyreft's override is a compact form that drops the orthogonal
        # parametrisation's base and ignores prefixes (not a round trip)
        return {l: {k: v.detach().clone() for k, v in torch.nn.Module.state_dict(self.edit(l)).items()}
                for l in self.layers}

    def load_plain_state(self, state: dict) -> None:
        for l in self.layers:
            torch.nn.Module.load_state_dict(self.edit(l), state[l])


def interpolate(a: InterventionSet, b: InterventionSet, weight: float,
                rank: int | None = None) -> tuple[InterventionSet, float]:
    """(1 - weight) * a + weight * b in the affine space, as a LoReFT set of `rank` (default: a's); returns it
    with the largest relative truncation error over layers (0 when rank >= rank(a) + rank(b))."""
    # a new rank needs a new set; set_affine overwrites its R, W and b (the seed only fills the unused part
    # of the orthogonal parametrisation's base)
    out = (copy.deepcopy(a) if rank in (None, a.rank) else
           InterventionSet(a.layers, a.dim, rank, seed=0).to(next(a.parameters()).device))
    err = 0.0
    for layer in a.layers:
        Ma, ca = a.affine(layer)
        Mb, cb = b.affine(layer)
        err = max(err, out.set_affine(layer, (1 - weight) * Ma + weight * Mb, (1 - weight) * ca + weight * cb))
    return out, err


def position_mask(attention_mask: torch.Tensor, prompt_end: torch.Tensor, first: int, last: int) -> torch.Tensor:
    """Bool [B, T]: the first `first` and last `last` prompt tokens of each left-padded row.
    prompt_end[i] is the index one past row i's last prompt token."""
    T = attention_mask.shape[1]
    idx = torch.arange(T, device=attention_mask.device)[None, :]
    start = (T - attention_mask.sum(-1))[:, None]     # left padding: real tokens start here
    end = prompt_end[:, None]
    head = (idx >= start) & (idx < torch.minimum(start + first, end))
    tail = (idx >= torch.maximum(end - last, start)) & (idx < end)
    return head | tail


class HookedModel:
    """Owns the forward hooks; `active(sets, rows, mask)` applies sets[rows[i]] to row i at mask positions
    (rows[i] = -1: no edit for that row). Outside `active` the model runs untouched."""

    def __init__(self, model, layers: list[int]):
        self.model = model
        self.layers = list(layers)
        self._state = None
        blocks = decoder_layers(model)
        self._handles = [blocks[l].register_forward_hook(self._hook(l)) for l in self.layers]
        # logits_to_keep hands the vocabulary projection a strided slice of the hidden states; with its weight
        # frozen (requires_grad False) torch's matmul then runs it as a bmm over a per-row copy of the weight,
        # measured 6x slower than the same product on a contiguous input (equal up to float rounding, 1e-5)
        self._handles.append(model.get_output_embeddings().register_forward_pre_hook(
            lambda module, args: (args[0].contiguous(), *args[1:])))

    def _hook(self, layer: int):
        def hook(module, args, output):
            if self._state is None:
                return output
            sets, rows, mask = self._state
            h = output[0] if isinstance(output, tuple) else output
            if h.shape[1] != mask.shape[1]:   # a cached continuation step: edits live on prompt positions only
                return output
            new = h
            for g, iv_set in enumerate(sets):
                sel = mask & (rows == g)[:, None]
                if bool(sel.any()):
                    new = torch.where(sel[..., None], iv_set.edit(layer)(h).to(h.dtype), new)
            return (new, *output[1:]) if isinstance(output, tuple) else new
        return hook

    @contextlib.contextmanager
    def active(self, sets: list[InterventionSet], rows: torch.Tensor, mask: torch.Tensor):
        self._state = (sets, rows, mask)
        try:
            yield
        finally:
            self._state = None

    def remove(self) -> None:
        for h in self._handles:
            h.remove()
