"""CRMA, the Constrained Residual Mixing Adapter (arXiv 2606.00382, 2026: "CRMA: A Spectrally-Bounded Backbone
for Modular Continual Fine-Tuning of LLMs"). Only the abstract is public, no code. The abstract says: CRMA is a
residual adapter whose internal mixing matrix M is made doubly stochastic at every forward pass by Sinkhorn
normalisation, so ||M||_2 <= 1 by Birkhoff-von Neumann (a convex combination of permutation matrices): a
structural bound, not a penalty. That bounded adapter is a shared substrate that keeps training task after task,
under modular per-task LoRAs, and it is compared with the same modular LoRAs on a frozen substrate. It claims
positive backward transfer with no replay buffer and no distillation.

This file's reading. At every target nn.Linear (frozen weight W):
    y = W x + (alpha / r) * sum_j w_j B_j A_j x  +  (alpha / substrate_r) * B_s S A_s x
  - B_j A_j   task j's low-rank residual adapter (LoRA-shaped: A random, B zero), added when task j starts;
              frozen once its task is over (`freeze_finished`).
  - w         a row of the task mixing matrix M = Sinkhorn(exp(L / tau)), K x K over the K adapters so far,
              one learnable logit matrix L per layer. Training on task t uses row t (t = K - 1, the newest).
  - B_s S A_s the shared substrate: one low-rank adapter trained on every task. S = Sinkhorn(exp(L_s / tau)) is
              an r_s x r_s doubly-stochastic mixing inside its bottleneck (the abstract's "internal mixing
              matrix"; `substrate_mixing`).
L, L_s, A_s and B_s train on every task. Dropout (one mask) is applied to x before every adapter, as peft's LoRA.

Open choices (the abstract is silent on each), each a setting:
  - Where the adapters sit: q_proj and v_proj, the LoRA baselines' placement (`target_modules`); r, alpha,
    dropout as the LoRA baselines (`r`, `alpha`, `dropout`).
  - What M mixes: the issue reads it as mixing the per-task adapters, the abstract as a matrix inside the one
    residual adapter that is the substrate. Both are here: M over the tasks always (at K = 1 it is [[1]]), S inside
    the substrate by default (`substrate_mixing=false` makes the substrate a plain low-rank adapter).
  - The substrate: one low-rank adapter of rank `substrate_r` per target (0: no substrate, the nearest thing
    here to the abstract's frozen-substrate baseline; the mixing logits still train).
  - Sinkhorn: alternate row and column normalisation in log space, ending on a column step, until every row sums
    to 1 within `sinkhorn_tol` (1e-6) or after `sinkhorn_iters` (100) rounds; temperature `tau` (1). Columns
    then sum to 1 exactly and rows within the tolerance, so ||M||_2 <= sqrt(max row sum * max column sum)
    <= sqrt(1 + tol). The worst row error and spectral norm met are in the diagnostics.
  - Initial logits: `self_logit` on the diagonal, 0 elsewhere, so a new task starts mostly on its own adapter
    (and S near the identity: uniform logits would collapse the substrate to rank 1); a new task's row and
    column enter L the same way, the earlier block of L is kept.
  - What is frozen after a task: the task's adapter (`freeze_finished`); never L, S or the substrate.
  - Test time (`test_mixing`): `last` (default) the last row of M, the mix the final task trained with, no task
    id; `mean` the column means of M, which for a doubly-stochastic matrix are exactly 1/K (the uniform
    average of the adapters; the learned mixing then plays no part at test), no task id; `task_id` row i for
    task i's inputs (the last row for a task not trained yet), closest to the abstract's modular per-task
    LoRAs (which presumably score each task with its own): uses the task id.

Departures from the source and why:
  - The spectral bound is on M and S only, as the abstract states it: A, B, A_s, B_s are unconstrained, so the
    update as a whole is not norm-bounded.
  - Sinkhorn with finitely many rounds is doubly stochastic only up to the tolerance (see above).
  - The paper measures prior-task loss drift on Mistral-7B; the harness measures accuracy (the matrix, BWT).
  - Own wrapper modules instead of peft: peft cannot weight its adapters by a learned, differentiable
    per-forward coefficient. A forward pre-hook on the model runs one batched Sinkhorn for all layers per model
    call and hands each layer its row of M and its S."""
from __future__ import annotations

import copy
import math
import zlib

import torch
from torch import nn
from torch.nn import functional as F

from core.errors import UsageError
from methods._lora import LoRAMethod
from methods._modules import linear_targets, replace_module
from methods.base import Method
from methods.seq_lora import seq_lora_budget

TEST_MIXING = ("last", "mean", "task_id")
# The LoRA baselines' rank, alpha, dropout and targets: the adapters match them (derived, not copied).
LORA = {name: spec[0] for name, spec in LoRAMethod.SETTINGS.items()}


def sinkhorn(logits: torch.Tensor, iterations: int, tol: float = 0.0) -> torch.Tensor:
    """Doubly-stochastic matrices from logits [..., n, n]: exp(logits) with rows and columns normalised in turn
    (log space, fp32), ending on the columns, until every row sums to 1 within tol or after `iterations` rounds."""
    with torch.autocast(logits.device.type, enabled=False):
        log_m = logits.float()
        for _ in range(max(1, iterations)):
            log_m = log_m - log_m.logsumexp(-1, keepdim=True)   # rows
            log_m = log_m - log_m.logsumexp(-2, keepdim=True)   # columns: exact after this step
            if tol > 0 and float((log_m.detach().exp().sum(-1) - 1).abs().max()) <= tol:
                break
        return log_m.exp()


def initial_logits(n: int, self_logit: float, earlier: torch.Tensor | None = None) -> torch.Tensor:
    """self_logit on the diagonal, 0 elsewhere: [n, n], or [layers, n, n] with the top-left block copied from
    `earlier` ([layers, k, k], the logits of the tasks before)."""
    logits = torch.eye(n) * self_logit
    if earlier is not None:
        k = earlier.shape[-1]
        logits = logits.expand(earlier.shape[0], n, n).clone()
        logits[:, :k, :k] = earlier.detach().cpu()
    return logits


def low_rank_pair(out_features: int, in_features: int, r: int, seed_text: str, like: torch.Tensor):
    """(A, B) as peft initialises a LoRA: A uniform in +-1/sqrt(in) (kaiming, a=sqrt(5)), B zero (no effect until
    trained). A's draw depends on seed_text alone, so a resumed run adds the same adapter as a straight one."""
    gen = torch.Generator().manual_seed(zlib.crc32(seed_text.encode()))
    bound = 1 / math.sqrt(in_features)
    a = (torch.rand(r, in_features, generator=gen) * 2 - 1) * bound
    return (nn.Parameter(a.to(like.device, like.dtype)),
            nn.Parameter(torch.zeros(out_features, r, device=like.device, dtype=like.dtype)))


class CRMALinear(nn.Module):
    """A frozen nn.Linear plus the mixed per-task adapters and the shared substrate. The method sets
    task_weights (a row of M, [K]) and substrate_mix (S, [r_s, r_s] or None) before every model forward."""

    def __init__(self, base: nn.Linear, name: str, settings: dict, seed: int):
        super().__init__()
        self.base, self.name, self.seed = base, name, seed
        self.r, self.scale = int(settings["r"]), float(settings["alpha"]) / int(settings["r"])
        self.dropout = nn.Dropout(float(settings["dropout"]))
        self.task_A, self.task_B = nn.ParameterList(), nn.ParameterList()
        self.task_weights: torch.Tensor | None = None
        self.substrate_mix: torch.Tensor | None = None
        substrate_r = int(settings["substrate_r"])
        self.substrate_scale = float(settings["alpha"]) / max(1, substrate_r)
        self.substrate_A = self.substrate_B = None
        if substrate_r:
            self.substrate_A, self.substrate_B = low_rank_pair(base.out_features, base.in_features, substrate_r,
                                                               f"{seed}:crma:substrate:{name}", base.weight)

    def substrate_parameters(self) -> list[nn.Parameter]:
        return [p for p in (self.substrate_A, self.substrate_B) if p is not None]

    def thaw_task_adapters(self, only_the_last: bool) -> None:
        """The newest adapter trains; the finished ones only when `only_the_last` is false."""
        last = len(self.task_A) - 1
        for j, (a, b) in enumerate(zip(self.task_A, self.task_B)):
            a.requires_grad_(j == last or not only_the_last)
            b.requires_grad_(j == last or not only_the_last)

    def add_task_adapter(self) -> None:
        a, b = low_rank_pair(self.base.out_features, self.base.in_features, self.r,
                             f"{self.seed}:crma:task{len(self.task_A)}:{self.name}", self.base.weight)
        self.task_A.append(a)
        self.task_B.append(b)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.base(x)
        h = self.dropout(x)
        if len(self.task_A):
            # all adapters in two products: [..., K*r] scaled blockwise by w_j, then every B_j at once
            low = F.linear(h, torch.cat(list(self.task_A)))
            low = low * self.task_weights.to(low.dtype).repeat_interleave(self.r)
            y = y + self.scale * F.linear(low, torch.cat(list(self.task_B), dim=1))
        if self.substrate_A is not None:
            z = F.linear(h, self.substrate_A)
            if self.substrate_mix is not None:
                z = F.linear(z, self.substrate_mix.to(z.dtype))   # z S^T: the transpose is doubly stochastic too
            y = y + self.substrate_scale * F.linear(z, self.substrate_B)
        return y


class CRMA(Method):
    NAME = "crma"
    DESCRIPTION = ("CRMA: per-task residual adapters mixed through a Sinkhorn doubly-stochastic matrix "
                   "(||M||_2 <= 1), plus a shared low-rank substrate that trains on every task")
    # seq_lora's passes (its default and former ones), not a number validated for this method: see seq_lora_budget
    SETTINGS, FORMER_DEFAULTS = seq_lora_budget({
        "r": (LORA["r"], "rank of each task's adapter (the LoRA baselines')"),
        "alpha": (LORA["alpha"], "scale numerator: adapters are scaled alpha / r, the substrate alpha / substrate_r"),
        "dropout": (LORA["dropout"], "dropout on the layer input before the adapters (the LoRA baselines')"),
        "target_modules": (LORA["target_modules"], "comma-separated nn.Linear names that get adapters (the source: "
                                                   "silent; the LoRA baselines')"),
        "substrate_r": (8, "rank of the shared substrate that trains on every task (0: no substrate)"),
        "substrate_mixing": (True, "a Sinkhorn doubly-stochastic r_s x r_s mixing inside the substrate's bottleneck "
                                   "(the abstract's internal mixing matrix); false: a plain low-rank substrate"),
        "tau": (1.0, "Sinkhorn temperature: M = Sinkhorn(exp(L / tau))"),
        "sinkhorn_iters": (100, "most Sinkhorn rounds (row then column normalisation) per forward"),
        "sinkhorn_tol": (1e-6, "stop once every row sums to 1 within this (columns are exact); 0: all rounds"),
        "self_logit": (3.0, "initial diagonal logit (0 off it): a new task starts mostly on its own adapter"),
        "freeze_finished": (True, "freeze each task's adapter once its task is over (the mixing and substrate "
                                  "train on)"),
        "test_mixing": ("last", "test-time adapter weights: last row of M, mean = its column means (uniform 1/K), "
                                "or task_id = the evaluated task's row (uses the task id)", TEST_MIXING),
    })

    @classmethod
    def uses_task_id_at_test(cls, settings=None):
        return cls.settings_or_defaults(settings)["test_mixing"] == "task_id"

    @classmethod
    def keeps(cls, settings=None):
        s = cls.settings_or_defaults(settings)
        adapters = "one frozen low-rank adapter per past task" if s["freeze_finished"] else \
            "one low-rank adapter per past task (still trained)"
        substrate = ", a shared low-rank substrate" if int(s["substrate_r"]) else ""
        return f"{adapters}, the mixing logits{substrate} (no data)"

    # --- setup: wrap the targets, one pre-hook that mixes ------------------------------------------------
    def targets(self) -> list[tuple[str, nn.Linear]]:
        return linear_targets(self.model, self.settings["target_modules"], self.NAME)

    def setup(self) -> None:
        for p in self.model.parameters():
            p.requires_grad_(False)
        self.layers: list[CRMALinear] = []
        for name, linear in self.targets():
            layer = CRMALinear(linear, name, self.settings, self.seed)
            replace_module(self.model, name, layer)
            self.layers.append(layer)
        self.task_logits: nn.Parameter | None = None      # [layers, K, K]; None before the first task
        self.substrate_logits: nn.Parameter | None = None  # [layers, r_s, r_s]
        r_s = int(self.settings["substrate_r"])
        if r_s and self.settings["substrate_mixing"]:
            self.substrate_logits = self.per_layer(initial_logits(r_s, float(self.settings["self_logit"])))
        self.task_rows: dict[str, int] = {}   # task name -> its row (and adapter) index
        self.row: int | None = None           # the row of M the forward uses; None: column means
        self.model.register_forward_pre_hook(lambda module, args: self.mix())
        self.model.eval()

    def per_layer(self, logits: torch.Tensor) -> nn.Parameter:
        n = logits.shape[-1]
        return nn.Parameter(logits.expand(len(self.layers), n, n).clone().to(self.device))

    @property
    def adapter_count(self) -> int:
        return len(self.layers[0].task_A)

    def mixing_matrices(self) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        """(M [layers, K, K], S [layers, r_s, r_s]): Sinkhorn of the logits; None where there is none."""
        s = self.settings
        return tuple(None if logits is None else
                     sinkhorn(logits / float(s["tau"]), int(s["sinkhorn_iters"]), float(s["sinkhorn_tol"]))
                     for logits in (self.task_logits, self.substrate_logits))

    def mix(self) -> None:
        """Before every model forward: one batched Sinkhorn for all layers, each layer gets its weights."""
        M, S = self.mixing_matrices()
        weights = None if M is None else M.mean(-2) if self.row is None else M[:, self.row]
        for i, layer in enumerate(self.layers):
            layer.task_weights = None if weights is None else weights[i]
            layer.substrate_mix = None if S is None else S[i]

    # --- hooks ---------------------------------------------------------------------------------------------
    def before_task(self, task, examples):
        previous = self.task_logits
        for layer in self.layers:
            layer.add_task_adapter()
            layer.thaw_task_adapters(only_the_last=self.settings["freeze_finished"])
        k = self.adapter_count
        self.task_logits = self.per_layer(initial_logits(k, float(self.settings["self_logit"]), previous))
        self.task_rows[task.name] = k - 1
        self.row = k - 1

    def training_loss(self, batch, task):
        self.row = self.adapter_count - 1   # training mixes with the current task's row (scorer may have moved it)
        return super().training_loss(batch, task)

    def trainable_parameters(self):
        params = [p for layer in self.layers for p in (*layer.task_A, *layer.task_B) if p.requires_grad]
        params += [p for layer in self.layers for p in layer.substrate_parameters()]
        return params + [p for p in (self.task_logits, self.substrate_logits) if p is not None]

    def parameters_kept(self) -> int:
        kept = [p for layer in self.layers for p in (*layer.task_A, *layer.task_B, *layer.substrate_parameters())]
        kept += [p for p in (self.task_logits, self.substrate_logits) if p is not None]
        return sum(p.numel() for p in kept)

    @torch.no_grad()
    def after_task(self, task, examples):
        M, S = self.mixing_matrices()
        record = {"trained_row": [round(float(w), 4) for w in M[:, -1].mean(0)]}   # mean over the layers
        for name, mat in (("M", M), ("S", S)):
            if mat is not None:   # how doubly stochastic, and how bounded, the matrices really are
                record[f"{name}_row_error"] = float((mat.sum(-1) - 1).abs().max())
                record[f"{name}_spectral_norm"] = round(float(torch.linalg.matrix_norm(mat.double(), 2).max()), 8)
        self.diagnostics.setdefault("mixing", {})[task.name] = record

    def scorer(self, task_name):
        mode = self.settings["test_mixing"]
        last = self.adapter_count - 1
        self.row = None if mode == "mean" else self.task_rows.get(task_name, last) if mode == "task_id" else last
        return super().scorer(task_name)

    # --- state: every layer's adapters and substrate, the logits, the task rows --------------------------------
    def state_dict(self) -> dict:
        def copied(params):
            return [p.detach().clone() for p in params]
        return {"layers": {layer.name: {"A": copied(layer.task_A), "B": copied(layer.task_B),
                                        "substrate": copied(layer.substrate_parameters())}
                           for layer in self.layers},
                "task_logits": None if self.task_logits is None else self.task_logits.detach().clone(),
                "substrate_logits": None if self.substrate_logits is None else self.substrate_logits.detach().clone(),
                "task_rows": dict(self.task_rows), "diagnostics": copy.deepcopy(self.diagnostics)}

    @torch.no_grad()
    def load_state_dict(self, state: dict) -> None:
        if set(state["layers"]) != {layer.name for layer in self.layers}:
            raise UsageError("crma: the checkpoint's layers differ from this model's targets")
        for layer in self.layers:
            saved = state["layers"][layer.name]
            while len(layer.task_A) < len(saved["A"]):
                layer.add_task_adapter()
            mine = (*layer.task_A, *layer.task_B, *layer.substrate_parameters())
            for p, value in zip(mine, (*saved["A"], *saved["B"], *saved["substrate"]), strict=True):
                p.copy_(value)
            layer.thaw_task_adapters(only_the_last=self.settings["freeze_finished"])
        if state["task_logits"] is not None:
            self.task_logits = self.per_layer(state["task_logits"])
        if state["substrate_logits"] is not None:
            self.substrate_logits.copy_(state["substrate_logits"])
        self.task_rows = dict(state["task_rows"])
        self.row = self.adapter_count - 1
        self.diagnostics = copy.deepcopy(state["diagnostics"])
