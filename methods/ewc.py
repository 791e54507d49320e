"""EWC (Kirkpatrick et al. 2017), elastic weight consolidation, on the LoRA: the only trained parameters, as
the LLM literature runs it (e.g. which47/LLMCL method/EWC.py, BeyonderXX/TRACE model/Regular/EWC.py).

After each task the diagonal of the empirical Fisher of the answer loss (core.loss.answer_loss) on the
task's own training examples is computed at the trained LoRA; while later tasks train, the loss adds

    lambda / 2 * sum_i F_i (theta_i - theta*_i)^2

pulling each LoRA entry back towards its value after the last task in proportion to how much the earlier
tasks' loss depends on it. Test time runs the one LoRA, no task id.

Choices the source leaves open, each a setting:
- Empirical Fisher (`fisher_batch`): 1 (default) = the mean over the task's examples of the squared
  per-example gradient, the definition; b > 1 = the mean of the squared gradient of each b-example batch's
  mean loss, as most LLM code computes it (LLMCL, TRACE: the training batches' gradients). Cheaper, but
  smaller by up to a factor b where the examples' gradients disagree, so lambda means something else there.
  `fisher_examples` caps the examples used (a seeded sample; 0 = all). The Fisher is taken without dropout
  (eval mode): the Fisher of the model that is evaluated.
- Older tasks (`penalties`, `gamma`): `online` (default) keeps one penalty, F <- gamma * F_old + F_new,
  anchored at the LoRA after the last task (online EWC, Schwarz et al. 2018); gamma = 1 is a plain sum.
  `per_task` is the original paper's form, one penalty per past task with that task's Fisher and its own
  anchor theta*_t (gamma then decays each older task's Fisher at every new task). Online is the default
  because its memory does not grow with the stream (one Fisher and one anchor) and because, read as a
  recursive Laplace approximation, the posterior after task t already contains the earlier tasks: the
  multiple penalties anchor each at an outdated point and count the old tasks again (Huszar 2018, "Note on
  the quadratic penalties in elastic weight consolidation", PNAS).
- lambda (`lambda`, default 1e4): the paper gives none that carries over, and the LLM codebases differ
  (LLMCL: 0.5, with a Fisher summed over training steps). The Fisher entries of a LoRA are small: on
  SmolLM2-135M after 5 seq_lora steps on bbc (8 examples) their mean is 9e-5 (A 6e-6, B 2e-4; the sum over
  the 460,800 entries, the mean squared per-example gradient norm, is 42), and a task moves the LoRA little
  (squared distance 2.5 after 5 steps at lr 1e-3). So lambda must be in the thousands before the penalty is of
  the order of the task loss, hence the large values of the LoRA literature. With 1e4 the penalty during
  those 5 steps on the next task (hutto_amazon) was 0.13-0.21 against a task loss of 0.28-0.43: it binds
  without freezing the LoRA. Sweep it.

Departures from the source: the parameters are the LoRA's, not the whole network's (the backbone is frozen,
so its Fisher is irrelevant here); the loss is the answer tokens' cross-entropy with the gold answer (the
empirical Fisher), not the expected Fisher under the model's own samples (the paper's true Fisher), as the
LLM implementations above do: one backward per example, no sampling of answers.

Cost: the penalty adds nothing measurable to a training step. The Fisher takes one forward and backward per
example after each task: on SmolLM2 8 examples took 2.2 times one batch-8 training step, so with
fisher_batch = 1 it costs about twice the task's training at one epoch (`fisher_examples` and
`fisher_batch` cut it)."""
from __future__ import annotations

import random

import torch

from core.loss import answer_loss, collate
from methods._lora import LoRAMethod
from methods.seq_lora import seq_lora_budget

PENALTIES = ("online", "per_task")


class EWC(LoRAMethod):
    NAME = "ewc"
    DESCRIPTION = ("seq_lora plus elastic weight consolidation: a diagonal-Fisher quadratic pull of the LoRA "
                   "towards its state after earlier tasks")
    # seq_lora's passes (its default and former ones), not a number validated for this method: see seq_lora_budget
    SETTINGS, FORMER_DEFAULTS = seq_lora_budget({
        "lambda": (1e4, "weight of the penalty lambda/2 * sum F (theta - theta*)^2 (large: a LoRA's Fisher "
                        "entries are small, ~1e-4)"),
        "gamma": (1.0, "decay of the older Fisher at every new task: F <- gamma * F_old + F_new (1: plain sum)"),
        "penalties": ("online", "online: one penalty, decayed Fisher sum anchored at the LoRA after the last task; "
                                "per_task: the paper's one penalty per past task, each with its own Fisher and anchor",
                      PENALTIES),
        "fisher_batch": (1, "examples per squared gradient in the empirical Fisher: 1 = per example (the "
                            "definition); b > 1 = squared gradient of each b-example batch's mean loss"),
        "fisher_examples": (0, "training examples of a task used for its Fisher (a seeded sample; 0: all)"),
    })

    @classmethod
    def keeps(cls, settings=None):
        if cls.settings_or_defaults(settings)["penalties"] == "per_task":
            return "one diagonal Fisher and one LoRA anchor per past task (no data)"
        return ("the diagonal Fisher of the LoRA (decayed sum over past tasks) and the LoRA after the last task "
                "(no data)")

    def setup(self):
        super().setup()
        # one entry per penalty: {"fisher": name -> tensor, "anchor": name -> tensor}; online keeps at most one
        self.terms: list[dict] = []
        self._penalty_log: list[float] = []

    def named_trainable(self) -> dict[str, torch.nn.Parameter]:
        return {n: p for n, p in self.model.named_parameters() if p.requires_grad}

    # --- the Fisher ---------------------------------------------------------------------------------
    def fisher(self, examples) -> dict[str, torch.Tensor]:
        """Diagonal empirical Fisher of the answer loss at the current LoRA: the mean over batches of
        `fisher_batch` examples of the squared gradient (per example when fisher_batch = 1)."""
        params = self.named_trainable()
        total = {n: torch.zeros_like(p) for n, p in params.items()}
        size = int(self.settings["fisher_batch"])
        batches = [examples[i:i + size] for i in range(0, len(examples), size)]
        training = self.model.training
        self.model.eval()   # no dropout: the Fisher of the model that is evaluated
        try:
            for chunk in batches:
                loss = answer_loss(self.model, collate(chunk, self.tokenizer.pad_token_id, self.device))
                grads = torch.autograd.grad(loss, list(params.values()), allow_unused=True)
                for name, grad in zip(params, grads):
                    if grad is not None:   # unused: the loss does not touch it, Fisher zero
                        total[name] += grad.detach() ** 2
        finally:
            self.model.train(training)
        return {n: t / max(1, len(batches)) for n, t in total.items()}

    def fisher_sample(self, task, examples) -> list:
        n = int(self.settings["fisher_examples"])
        if n <= 0 or n >= len(examples):
            return list(examples)
        return random.Random(f"{self.seed}:ewc:{task.name}").sample(list(examples), n)

    # --- the penalty --------------------------------------------------------------------------------
    def penalty(self) -> torch.Tensor:
        """lambda / 2 * sum over penalties and LoRA entries of F (theta - theta*)^2."""
        params = self.named_trainable()
        total = torch.zeros((), device=self.device)
        for term in self.terms:
            for name, fisher in term["fisher"].items():
                total = total + (fisher * (params[name] - term["anchor"][name]) ** 2).sum()
        return float(self.settings["lambda"]) / 2 * total

    def training_loss(self, batch, task):
        task_loss = answer_loss(self.model, batch)
        penalty = self.penalty()
        self._penalty_log.append(float(penalty.detach()))
        return task_loss + penalty, {"task_loss": task_loss.detach(), "ewc_penalty": penalty.detach()}

    def after_task(self, task, examples):
        new = self.fisher(self.fisher_sample(task, examples))
        values = torch.cat([f.flatten() for f in new.values()])   # this task's own Fisher, before any decay
        self.diagnostics.setdefault("fisher", {})[task.name] = {
            "mean": float(values.mean()), "max": float(values.max()), "sum": float(values.sum())}
        anchor = {n: p.detach().clone() for n, p in self.named_trainable().items()}
        gamma = float(self.settings["gamma"])
        decayed = [{"fisher": {n: gamma * f for n, f in t["fisher"].items()}, "anchor": t["anchor"]}
                   for t in self.terms]
        if self.settings["penalties"] == "online":   # F <- gamma * F_old + F_new, anchored at the latest LoRA
            for old in decayed:
                new = {n: f + old["fisher"][n] for n, f in new.items()}
            self.terms = [{"fisher": new, "anchor": anchor}]
        else:                                         # the paper: one more penalty, earlier ones kept
            self.terms = decayed + [{"fisher": new, "anchor": anchor}]
        log = self._penalty_log or [0.0]
        self.diagnostics.setdefault("penalty", {})[task.name] = {
            "first": round(log[0], 6), "mean": round(sum(log) / len(log), 6), "last": round(log[-1], 6)}
        self._penalty_log = []

    # --- state --------------------------------------------------------------------------------------
    def parameters_kept(self) -> int:
        lora = sum(p.numel() for p in self.trainable_parameters())
        return lora * (1 + 2 * len(self.terms))   # the LoRA, plus a Fisher and an anchor per penalty

    def state_dict(self):
        return {"lora": super().state_dict(), "terms": self.terms, "diagnostics": self.diagnostics}

    def load_state_dict(self, state):
        super().load_state_dict(state["lora"])
        self.terms = state["terms"]
        self.diagnostics = state["diagnostics"]
