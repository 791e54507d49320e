"""CURLoRA (Fawi 2024, arXiv 2408.14572; reference code MNoorFawi/curlora, code/curlora.py and code/utils.py).

Every target nn.Linear of the frozen backbone (weight W, [out, in]) becomes W + alpha * C U R:
  C = W[:, columns]  and  R = W[rows, :]   r columns and r rows of W itself, drawn once and fixed,
  U                                        r x r, zero at the start, the only trained matrix.
Columns (rows) are drawn with the inverted probabilities of the reference: share_j = ||W_:j||^2 / ||W||_F^2,
p_j proportional to 1 / (share_j + eps), so the columns and rows with the smallest norms are the likeliest
(the paper's implicit regulariser: a small C and R keep C U R, and so the output shift, small). One U per
layer is trained through the whole stream (paper section 5.1: "C and R are fixed permanently. The U matrix is
continually updated for each new task"); test time runs it, with no task id.

Against the paper and the reference (what this file follows, and where it departs):
- eps: the reference adds 0.001 to each share before inverting (select_indices_with_replacement); the paper's
  formula (4) has none. Followed the reference; `eps=0` is the paper's formula. Note that the mean share is 1/n
  for n columns: 1.7e-3 for SmolLM2's 576, so eps = 0.001 already flattens the inversion a good deal (for
  Mistral's 4096, where the paper ran, eps dominates and the draw is close to uniform).
- Replacement: the reference draws with replacement (np.random.choice(replace=True)) and keeps duplicates
  unscaled (its adjust_duplicates is defined but never called), so a duplicate lowers the update's rank; the
  paper does not say. Followed the reference (`replacement`); the distinct counts are in the diagnostics.
- Rank: r columns and r rows (the reference's c = r), U is r x r: r^2 trained entries per layer (the paper's
  Mistral count, 24,576 = 16^2 x 3 x 32, confirms it). The paper runs r = 8, 16, 24; the reference's utils.py
  uses 16 (the paper's worked example too): default 16.
- Scaling: the reference's forward is linear(x) + alpha * x (C U R)^T with alpha = 1 (the paper's
  hyperparameters: alpha 1): no alpha / r as in LoRA. Followed.
- Targets: the paper and the reference adapt q, k and v; here q_proj and v_proj by default, the LoRA
  baselines' placement, so the comparison differs only in the update (`target_modules` adds k_proj).
- Output head: the paper replaces lm_head with a fresh classification head per task and swaps the task's head
  in at test, i.e. it uses the task id and keeps a frozen head per task. Here, as for every method of the harness,
  the backbone's LM head scores the label tokens: no task id, and the one U alone carries every task.
- Optimisation: the paper uses AdamW at 2.5e-4 with a cosine schedule (500 warm-up steps), 3 epochs, batch 8,
  no dropout. Here the harness's shared loop (AdamW, constant lr, no weight decay, gradient clipping) and
  shared defaults, as for the LoRA baselines (the paper used one lr for LoRA and CURLoRA too). No dropout.
- Sampling: torch.multinomial with a generator seeded from the method's seed (the reference: numpy's unseeded
  global RNG), on the fp32 probabilities the reference computes.
- Forward: ((x R^T) U^T) C^T, three thin products, instead of the reference's x (C U R)^T, which builds the full
  [out, in] update at every call: the same value up to float rounding, at a fraction of the cost.
- A new U per task is not offered. Summed with the frozen earlier ones it is this method exactly: the harness
  starts a fresh AdamW (no weight decay) every task, and the gradient of a new U equals that of one continued U,
  so it would only cost memory. Chosen by task id at test it would be a bound (per_task's role), which the class
  constant BOUND cannot switch per setting: that is a separate method file.

What is kept beside the backbone: U (r^2 per layer, parameters_kept) and the drawn indices (2r integers per
layer, in state_dict and the diagnostics, not counted as parameters): C and R are slices of the frozen W taken
at every forward from those indices, never stored."""
from __future__ import annotations

import copy
import zlib

import torch
from torch import nn
from torch.nn import functional as F

from core.errors import UsageError
from methods._lora import LoRAMethod
from methods._modules import linear_targets, replace_module
from methods.base import Method
from methods.seq_lora import seq_lora_budget


def inverted_probabilities(squared_norms: torch.Tensor, eps: float) -> torch.Tensor:
    """p_j proportional to 1 / (share_j + eps), share_j = squared_norms_j / their sum (the squared Frobenius
    norm): the reference's compute_selection_probabilities followed by its inversion."""
    share = squared_norms / squared_norms.sum()
    inverted = 1.0 / (share + eps)
    return inverted / inverted.sum()


def selection_probabilities(weight: torch.Tensor, eps: float) -> tuple[torch.Tensor, torch.Tensor]:
    """(column probabilities, row probabilities) of a weight [out, in], in fp32 as the reference computes them."""
    squared = weight.detach().float().cpu() ** 2
    return inverted_probabilities(squared.sum(0), eps), inverted_probabilities(squared.sum(1), eps)


class CURLinear(nn.Module):
    """A frozen nn.Linear plus alpha * C U R. C and R are read from the frozen weight at every forward (from the
    stored indices), so they always are slices of W and nothing but U and the indices is stored."""

    def __init__(self, base: nn.Linear, columns: torch.Tensor, rows: torch.Tensor, alpha: float):
        super().__init__()
        self.base = base
        self.alpha = alpha
        weight = base.weight
        self.register_buffer("columns", columns.to(weight.device))
        self.register_buffer("rows", rows.to(weight.device))
        self.U = nn.Parameter(torch.zeros(len(columns), len(rows), dtype=weight.dtype, device=weight.device))

    def C(self) -> torch.Tensor:
        return self.base.weight[:, self.columns]

    def R(self) -> torch.Tensor:
        return self.base.weight[self.rows, :]

    def update(self) -> torch.Tensor:
        """alpha * C U R, the [out, in] change of the weight (built only for diagnostics and tests)."""
        return self.alpha * (self.C() @ self.U @ self.R())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        thin = F.linear(F.linear(x, self.R()), self.U)     # x R^T U^T: [..., r]
        return self.base(x) + self.alpha * F.linear(thin, self.C())


class CURLoRA(Method):
    NAME = "curlora"
    DESCRIPTION = "CURLoRA: W + C U R, C and R low-norm columns/rows of the frozen W; only the r x r U trains"
    # seq_lora's passes (its default and former ones), not a number validated for this method: see seq_lora_budget
    SETTINGS, FORMER_DEFAULTS = seq_lora_budget({
        "r": (16, "columns and rows drawn per weight (U is r x r); the paper runs 8, 16, 24, the reference 16"),
        "alpha": (1.0, "scale of the update: W + alpha * C U R (the reference's alpha, not divided by r)"),
        "eps": (1e-3, "added to each norm share before inverting (the reference's 0.001; 0 = the paper's formula)"),
        "replacement": (True, "draw columns/rows with replacement, duplicates kept unscaled (the reference)"),
        "target_modules": (LoRAMethod.SETTINGS["target_modules"][0], "comma-separated nn.Linear names that get "
                           "C U R (the LoRA baselines'; paper: q, k, v)"),
    })
    KEEPS = "one r x r U per target layer, trained through the stream, and its drawn column/row indices (no data)"

    def targets(self) -> list[tuple[str, nn.Linear]]:
        return linear_targets(self.model, self.settings["target_modules"], self.NAME)

    def setup(self) -> None:
        for p in self.model.parameters():
            p.requires_grad_(False)
        r, eps, replacement = int(self.settings["r"]), float(self.settings["eps"]), bool(self.settings["replacement"])
        # one generator through the targets in model order: the draw depends on the seed alone, not on global RNG
        generator = torch.Generator().manual_seed(zlib.crc32(f"{self.seed}:curlora".encode()))
        self.layers: dict[str, CURLinear] = {}
        for name, linear in self.targets():
            if not replacement and r > min(linear.weight.shape):
                raise UsageError(f"curlora: r={r} distinct columns/rows of a {tuple(linear.weight.shape)} weight")
            column_p, row_p = selection_probabilities(linear.weight, eps)
            columns = torch.multinomial(column_p, r, replacement=replacement, generator=generator)
            rows = torch.multinomial(row_p, r, replacement=replacement, generator=generator)
            layer = CURLinear(linear, columns, rows, float(self.settings["alpha"]))
            replace_module(self.model, name, layer)
            self.layers[name] = layer
        self.model.eval()
        self._record_draw()

    def _record_draw(self) -> None:
        layers = self.layers.values()
        self.diagnostics["layers"] = len(self.layers)
        self.diagnostics["index_entries"] = sum(len(l.columns) + len(l.rows) for l in layers)
        # duplicates (a draw with replacement) lower the rank C U R can reach
        self.diagnostics["mean_distinct_columns"] = round(sum(len(l.columns.unique()) for l in layers) / len(layers), 3)
        self.diagnostics["mean_distinct_rows"] = round(sum(len(l.rows.unique()) for l in layers) / len(layers), 3)

    def trainable_parameters(self) -> list[nn.Parameter]:
        return [layer.U for layer in self.layers.values()]

    def parameters_kept(self) -> int:
        return sum(layer.U.numel() for layer in self.layers.values())

    @torch.no_grad()
    def after_task(self, task, examples):
        # the paper's stability claim (eq. 14): ||C U R||_F stays small against ||W||_F across tasks
        ratios = [float(l.update().norm() / l.base.weight.norm()) for l in self.layers.values()]
        self.diagnostics.setdefault("update_to_weight_norm", {})[task.name] = {
            "mean": round(sum(ratios) / len(ratios), 8), "max": round(max(ratios), 8)}

    # --- state: the drawn indices (so a resumed run rebuilds the same C and R) and U, per layer ------------------
    def state_dict(self) -> dict:
        return {"layers": {name: {"columns": l.columns.clone(), "rows": l.rows.clone(), "U": l.U.detach().clone()}
                           for name, l in self.layers.items()},
                "diagnostics": copy.deepcopy(self.diagnostics)}

    @torch.no_grad()
    def load_state_dict(self, state: dict) -> None:
        if set(state["layers"]) != set(self.layers):
            raise UsageError("curlora: the checkpoint's layers differ from this model's targets")
        for name, saved in state["layers"].items():
            layer = self.layers[name]
            layer.columns = saved["columns"].to(layer.columns.device)
            layer.rows = saved["rows"].to(layer.rows.device)
            layer.U.copy_(saved["U"])
        self.diagnostics = copy.deepcopy(state["diagnostics"])
