"""Sculpting Subspaces / adaptive SVD (Nayak et al. 2025, arXiv 2504.07097; reference code
Red-Hat-AI-Innovation-Team/orthogonal-subspace-learning, read at commit a5f91f6).

Full fine-tuning of the backbone's linear maps, in place, in which each weight matrix W may only move
orthogonally to its top-k singular directions, which hold what earlier tasks (and pretraining) put there:

    at a task boundary:  W = U S V^T (float64 SVD of the current W);  U_k, V_k = the top k left/right vectors
    every step:          G <- (I - U_k U_k^T) G (I - V_k V_k^T)       (a hook on W's gradient)
                         W <- W_0 + P(W - W_0)  with P the same map    (after AdamW; W_0 = W at the task start)

so the update of every matrix is orthogonal to its protected directions on both sides. The count k per matrix
follows importance and grows with the stream:

    I(W)   = mean over the finished task's prompt tokens of cos(h_in, h_out) of W's decoder layer
             (importance=matrix: cos(x[:d], (W x)[:d]) of W's own input x, d = min(out, in), the reference code)
    I_n(W) = I(W) / mean of I over all trained matrices
    before task t (0-based): trr = min(1, t * trr_step), mrr = mrr_share * trr,
                             k = clamp(round(d * (mrr + I_n(W) * (trr - mrr))), 0, d)
                             and, with keep_growing, never fewer than for the previous task.

Against the reference code (notebooks/finetune_svd.py, notebooks/run_finetuning.sh,
notebooks/SingularValueDecomposition.ipynb, notebooks/quality-dataset-finetune/rough_work.py):

- Parametrization. The reference splits every target W into frozen buffers U_high, S_high, V_high and trains
  U_low, S_low, V_low (the rest of the SVD, not reset), projecting after backward dU_low off U_high's columns
  and dV_low off V_high's rows (S_low unprojected). Here W itself is trained, in place, and its gradient is
  projected on both sides: the reachable updates are the same set (the reference's low part has its columns
  orthogonal to U_high and its rows to V_high), the optimizer's geometry differs (AdamW per entry of W, not
  per entry of the factors) and no parameters are added (the factors would double every matrix). The hook
  runs where the reference's project_gradients() runs: after backward, before clipping and the optimizer.
- The update is projected too (`project_update`, on by default). AdamW scales each coordinate, so a projected
  gradient still gives an update that leaks into the protected directions, in the reference as well; here the
  change since the task start is projected again after every step (W_0, a copy of the protected matrices, is
  held during a task: about 0.4 GB for SmolLM2). `project_update=false` is the reference (gradient projection
  only). The card's `update_leak` records max ||U_k^T dW|| / ||dW|| per task either way; what remains is the
  float32 rounding of W (about 1e-4 on SmolLM2 at lr 1e-5, where a step moves W by ~1e-4 of its size).
- The rank rule. The reference has two, never combined: the importance rule above (the notebook's active
  code, mrr = d/2, trr = d, clamped to [1, d], which on average protects the whole rank), and the schedule its
  15-task run uses (run_finetuning.sh: every matrix freezes floor(0.07 t * max(out, in)) directions, capped at
  min(out, in), raised by 0.07 per task). Here the schedule sets the average share trr of the rank and
  importance spreads it over the matrices with the rule's proportion (mrr = trr / 2); shares are of
  d = min(out, in), as in the importance rule. The first task protects nothing (trr = 0): the reference
  fine-tunes its first task (MNLI) without projection.
- Whose similarity (`importance`). The paper scores layers by the similarity of their input and output; the
  reference code hooks every matrix and compares its input x with W x, truncating both to their first
  d = min(out, in) coordinates when W is not square. On SmolLM2 that per-matrix cosine is noise around zero
  (bbc prompts: -0.22 to 0.14, mean -0.0015), so I / mean(I) ranks nothing; the default scores each decoder
  layer by cos(h_in, h_out) of its hidden states and gives that to its seven matrices. `importance=matrix`
  is the reference code (a non-positive mean falls back to equal shares).
- Importance is measured after each task on that task's own training prompts (the first
  `importance_prompts`, 128 as the reference's n_samples, batches of 8) with the weights just trained; the
  reference uses the previous task's test split (a method gets no test data here) and includes padding
  positions (excluded here).
- `keep_growing` (on): a matrix never protects fewer directions than for the previous task. The reference's
  schedule never shrinks; importance is measured again every task, so without this a count could fall.
- The trained set is the seven linear maps of every layer (the reference's targets). The reference's scripts
  leave every other parameter (embeddings, norms) trainable without projection; they are frozen here by
  default, as in the paper's description and the authors' later peft implementation (OSF); `train_rest=true`
  trains them as the scripts do. (In most of the reference's scripts the forward copies the reconstructed W
  into weight.data under no_grad, so no gradient reaches U_low, S_low, V_low and only those other parameters
  train; rough_work.py fixes it with F.linear. This follows the fixed version.)
- The optimizer is the shared loop's: AdamW without weight decay, gradients clipped at `grad_clip` (the
  reference: AdamW with weight decay 0.01, no clipping). lr 1e-5 is the reference's (T5 and LLaMA-2 scripts).
"""
from __future__ import annotations

import torch

from core.data import Encoded
from core.errors import UsageError
from core.loss import collate
from methods._modules import linear_targets
from methods.base import Method
from methods.seq_lora import seq_lora_budget

TARGETS = "q_proj,k_proj,v_proj,o_proj,gate_proj,up_proj,down_proj"   # the reference's LLaMA targets
IMPORTANCE_BATCH = 8                                                   # the reference's batch size


class AdaptiveSVD(Method):
    NAME = "adaptive_svd"
    DESCRIPTION = "full fine-tuning, each update orthogonal to the matrix's top singular directions (Sculpting Subspaces)"
    # seq_lora's passes (its default and former ones), not a number validated for this method: see seq_lora_budget
    SETTINGS, FORMER_DEFAULTS = seq_lora_budget({
        "lr": (1e-5, "learning rate (AdamW, no weight decay); the reference's 1e-5 for full fine-tuning"),
        "target_modules": (TARGETS, "comma-separated linear layers whose weights are trained under the projection"),
        "trr_step": (0.07, "target retention ratio gained per finished task: before task t the average matrix "
                           "protects min(1, t * trr_step) of its rank (the reference's run_finetuning.sh)"),
        "mrr_share": (0.5, "minimum retention ratio as a share of trr: the protected share of a matrix of zero "
                           "importance (the reference's importance rule: mrr = d/2 for trr = d)"),
        "importance": ("layer", "whose input/output cosine is a matrix's importance: 'layer' (its decoder layer's "
                                "hidden states, the paper) or 'matrix' (its own input and output, the reference code)"),
        "importance_prompts": (128, "prompts of a finished task on which importance is measured"),
        "keep_growing": (True, "a matrix never protects fewer directions than for the previous task"),
        "project_update": (True, "also project each step's update (AdamW leaks a projected gradient into the "
                                 "protected directions); false = the reference, gradient projection only"),
        "train_rest": (False, "also train every other parameter (embeddings, norms) unprojected, as the "
                              "reference's scripts do"),
    })

    @classmethod
    def resolve_settings(cls, overrides):
        values = super().resolve_settings(overrides)
        if values["importance"] not in ("layer", "matrix"):
            raise UsageError(f"unknown importance {values['importance']!r} for {cls.NAME!r}; choose layer or matrix")
        return values

    @classmethod
    def keeps(cls, settings=None):
        rest = " and every other parameter" if cls.settings_or_defaults(settings)["train_rest"] else ""
        return (f"the fine-tuned linear-layer weights{rest} (in place of the backbone's) and, per matrix, its "
                "protected singular vectors (no data)")

    def setup(self):
        self.matrices = {name: module.weight for name, module in
                         linear_targets(self.model, self.settings["target_modules"], self.NAME)}
        # whose input/output similarity sets a matrix's importance: its decoder layer (model.layers.3), or itself
        per_layer = self.settings["importance"] == "layer"
        self.unit_of = {name: layer_of(name) if per_layer else name for name in self.matrices}
        matrix_ids = {id(w) for w in self.matrices.values()}
        self.model.requires_grad_(False)
        self.trained = {name: p for name, p in self.model.named_parameters()
                        if id(p) in matrix_ids or self.settings["train_rest"]}
        for p in self.trained.values():
            p.requires_grad_(True)
        self.protected = {name: 0 for name in self.matrices}   # k per matrix for the task being trained
        self.bases: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}   # name -> (U_k, V_k^T), only where k > 0
        self.task_start: dict[str, torch.Tensor] = {}          # W_0 of every protected matrix, during a task
        for name, weight in self.matrices.items():   # runs after backward, before clipping and AdamW
            weight.register_hook(lambda grad, name=name: self.project(name, grad) if name in self.bases else None)

    def trainable_parameters(self):
        return list(self.trained.values())

    def project(self, name: str, change: torch.Tensor) -> torch.Tensor:
        """(I - U_k U_k^T) change (I - V_k V_k^T): the part of `change` that no protected direction sees."""
        left, right = self.bases[name]
        change = change - left @ (left.T @ change)
        return change - (change @ right.T) @ right

    # --- a task ------------------------------------------------------------------------------------------
    def before_task(self, task, examples):
        ranks = {name: min(w.shape) for name, w in self.matrices.items()}
        self.diagnostics.setdefault("protected_directions", {})[task.name] = {
            short(name): k for name, k in self.protected.items()}
        self.diagnostics.setdefault("protected_share", {})[task.name] = round(
            sum(self.protected.values()) / sum(ranks.values()), 4)
        self.task_start = {name: self.matrices[name].detach().clone() for name in self.bases}

    def after_step(self, task, step):
        if not self.settings["project_update"]:
            return
        with torch.no_grad():
            for name, start in self.task_start.items():
                weight = self.matrices[name]
                weight.copy_(start + self.project(name, weight - start))

    def after_task(self, task, examples):
        self.diagnostics.setdefault("update_leak", {})[task.name] = self.update_leak()
        self.task_start = {}
        importance = self.importance([ex.prompt_ids for ex in examples[:int(self.settings["importance_prompts"])]])
        self.diagnostics.setdefault("importance", {})[task.name] = {
            short(name): round(value, 4) for name, value in importance.items()}
        self.decompose(self.counts(importance, task.index + 1))

    def update_leak(self) -> float:
        """max over protected matrices of ||U_k^T dW|| / ||dW|| and ||dW V_k|| / ||dW|| for this task's change."""
        leak = 0.0
        with torch.no_grad():
            for name, start in self.task_start.items():
                change = self.matrices[name] - start
                norm = float(change.norm())
                if norm > 0:
                    left, right = self.bases[name]
                    leak = max(leak, float((left.T @ change).norm()) / norm, float((change @ right.T).norm()) / norm)
        return leak

    # --- how many directions each matrix protects ----------------------------------------------------------
    @torch.no_grad()
    def importance(self, prompts: list[tuple[int, ...]]) -> dict[str, float]:
        """Per unit (a decoder layer, or a matrix with importance=matrix), the mean cosine between its input and
        output over the prompts' tokens, padding excluded; a matrix compares the first d = min(out, in)
        coordinates of both, as the reference does."""
        units = {name: module for name, module in self.model.named_modules() if name in self.unit_of.values()}
        sums = dict.fromkeys(units, 0.0)
        tokens, mask = 0, None

        def record(unit):
            def hook(module, args, kwargs, output):
                x = args[0] if args else kwargs["hidden_states"]
                y = output[0] if isinstance(output, tuple) else output
                d = min(x.shape[-1], y.shape[-1])
                x, y = x[mask][:, :d], y[mask][:, :d]
                x = x / (x.norm(dim=-1, keepdim=True) + 1e-8)
                y = y / (y.norm(dim=-1, keepdim=True) + 1e-8)
                sums[unit] += float((x * y).sum())
            return hook

        handles = [module.register_forward_hook(record(unit), with_kwargs=True) for unit, module in units.items()]
        training = self.model.training
        self.model.eval()
        try:
            pad = self.tokenizer.pad_token_id
            for start in range(0, len(prompts), IMPORTANCE_BATCH):
                batch = collate([prompt_only(p) for p in prompts[start:start + IMPORTANCE_BATCH]], pad, self.device)
                mask = batch["attention_mask"].bool()
                tokens += int(mask.sum())
                self.model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                           position_ids=batch["position_ids"], logits_to_keep=1)
        finally:
            for handle in handles:
                handle.remove()
            self.model.train(training)
        return {unit: total / max(tokens, 1) for unit, total in sums.items()}

    def counts(self, importance: dict[str, float], task_index: int) -> dict[str, int]:
        """Protected directions per matrix for the task at `task_index` (see the module docstring)."""
        trr = min(1.0, task_index * float(self.settings["trr_step"]))
        mrr = float(self.settings["mrr_share"]) * trr
        mean = sum(importance[self.unit_of[name]] for name in self.matrices) / len(self.matrices)
        counts = {}
        for name, weight in self.matrices.items():
            # a non-positive mean (or no prompts) gives no ranking to follow: every matrix gets the average share
            normalized = importance[self.unit_of[name]] / mean if mean > 0 else 1.0
            d = min(weight.shape)
            k = min(d, max(0, round(d * (mrr + normalized * (trr - mrr)))))
            counts[name] = max(k, self.protected[name]) if self.settings["keep_growing"] else k
        return counts

    @torch.no_grad()
    def decompose(self, counts: dict[str, int]) -> None:
        """The top singular vectors of every matrix's current weight (the reference redoes the SVD per task)."""
        self.protected, self.bases = counts, {}
        for name, k in counts.items():
            if k > 0:
                weight = self.matrices[name]
                # float64: fp32 singular vectors are orthonormal to ~1e-6 only, which would leak into the projection
                u, _, vh = torch.linalg.svd(weight.double(), full_matrices=False)
                self.bases[name] = (u[:, :k].to(weight.dtype).contiguous(), vh[:k].to(weight.dtype).contiguous())

    # --- state --------------------------------------------------------------------------------------------
    def state_dict(self):
        return {"weights": {name: p.detach().clone() for name, p in self.trained.items()},
                "bases": {name: (u.clone(), vh.clone()) for name, (u, vh) in self.bases.items()},
                "protected": dict(self.protected), "diagnostics": self.diagnostics}

    def load_state_dict(self, state):
        with torch.no_grad():
            for name, value in state["weights"].items():
                self.trained[name].copy_(value)
        self.bases = {name: (u.clone(), vh.clone()) for name, (u, vh) in state["bases"].items()}
        self.protected = dict(state["protected"])
        self.diagnostics = state["diagnostics"]

    def parameters_kept(self):
        """The whole trained set (it replaces the backbone's weights) plus the protected bases."""
        return (sum(p.numel() for p in self.trained.values())
                + sum(u.numel() + vh.numel() for u, vh in self.bases.values()))


def prompt_only(prompt: tuple[int, ...]) -> Encoded:
    return Encoded(task="", prompt_ids=prompt, answer_ids=(), label_index=0)


def layer_of(name: str) -> str:
    """model.layers.3.self_attn.q_proj -> model.layers.3 (the name up to its first index)"""
    parts = name.split(".")
    first_index = next(i for i, part in enumerate(parts) if part.isdigit())
    return ".".join(parts[:first_index + 1])


def short(name: str) -> str:
    """model.layers.3.self_attn.q_proj -> layers.3.self_attn.q_proj"""
    return name.removeprefix("model.")
