"""LwF, learning without forgetting (Li & Hoiem 2016), adapted to a causal LM trained through a LoRA.

Before a task, the current model (the LoRA after the previous task) is run on the new task's training
inputs and its answer-position distributions are recorded; training on the task then adds

    lambda * T^2 * KL(softmax(recorded / T) || softmax(current / T))

averaged over the recorded positions of the batch's examples (looked up by the example). The recorded
responses stand for the old tasks: keeping the model's outputs on the new inputs close to what the old model
said is how LwF protects old tasks without their data. The first task has nothing to distil (no earlier
model). After the task the recordings are dropped: LwF keeps nothing from past tasks but the one LoRA.
Test time runs that LoRA, no task id.

Adaptations and choices, each a setting where the source leaves it open:
- Old-task outputs: in the paper these are the old tasks' classifier heads; a causal LM has one head, the
  vocabulary, shared by every task, so the distribution over the whole vocabulary is recorded (restricting it
  to the old tasks' label tokens would need their label sets, which LwF does not keep). There is no new head,
  so the paper's warm-up stage (training the new head alone first) has nothing to do and is left out.
- Positions (`positions`): `first` (default) = the position that predicts the first answer token: one
  distribution per input, as the paper's classifier gives, and the one where most labels already differ;
  `answer` = every answer token's position, teacher-forced on the gold answer, which also covers labels
  told apart only later ("very negative" / "very positive" share their first token) and the end token.
- Temperature (`temperature`, 2): the paper's T = 2. The KL (which has the gradient of the paper's
  cross-entropy with soft targets, and is zero when nothing moved) is scaled by T^2, as Hinton et al. do
  to keep the gradient's size independent of T; the paper does not scale, so its lambda_o = 1 corresponds
  to lambda = 1 / T^2 here. `lambda` defaults to 1 (the paper's weight, on the scaled term).
- Dropout: the recordings are made without dropout (eval mode), training runs with the LoRA's dropout, as
  the paper records the old network's responses and then trains with dropout; so with dropout > 0 the KL is
  small but not zero at the first step.
- `distil_backbone` (false): the paper's old task is the pretrained network's own (ImageNet); the analogue
  here is to distil the bare backbone's distributions during the first task too. Off by default: the
  stream's first task has no earlier task to protect, and the other methods do not protect the backbone.

Cost: no extra forward (the current distributions come from the training forward), so a step costs what a
seq_lora step does; before each task one no-grad pass over its examples (on SmolLM2, 8 examples took about
half of one training step); the recordings hold examples x positions x vocabulary floats during the task
(200 x 1 x 49,152 x 4 bytes = 39 MB for SmolLM2 with `first`)."""
from __future__ import annotations

import torch
from torch.nn import functional as F

from core.loss import answer_loss, collate
from methods._lora import LoRAMethod
from methods.seq_lora import seq_lora_budget

POSITIONS = ("first", "answer")


class LwF(LoRAMethod):
    NAME = "lwf"
    DESCRIPTION = ("seq_lora plus learning without forgetting: distils the previous model's answer distributions "
                   "on the new task's inputs")
    KEEPS = ("nothing but the LoRA (the recorded distributions come from the new task's inputs and are dropped "
             "after it)")
    SHARES_TRAIN_PREFIX = False   # its loss reads the answer logits (answer_loss's outputs): whole prompts anyway
    # seq_lora's passes (its default and former ones), not a number validated for this method: see seq_lora_budget
    SETTINGS, FORMER_DEFAULTS = seq_lora_budget({
        "lambda": (1.0, "weight of the distillation term lambda * T^2 * KL(recorded || current)"),
        "temperature": (2.0, "temperature T of both distributions (the paper's 2)"),
        "positions": ("first", "first: the position predicting the first answer token; answer: every answer "
                               "token's position (teacher-forced)", POSITIONS),
        "distil_backbone": (False, "distil the bare backbone during the first task too (the paper's pretrained "
                                   "network as the old task)"),
    })

    def setup(self):
        super().setup()
        self.recorded: dict = {}   # example -> log softmax(logits / T) at its positions [k, vocabulary]
        self._kl_log: list[float] = []

    def answer_logits(self, batch, logits: torch.Tensor) -> list[torch.Tensor]:
        """Per example, the logits at its distilled positions. `logits` are answer_loss's kept positions (the
        last answer_width + 1, left-padded batch): example i's first answer token is predicted at
        answer_width - len(answer_i), its last one at answer_width - 1."""
        width = batch["answer_width"]
        rows = []
        for i, ex in enumerate(batch["examples"]):
            start = width - len(ex.answer_ids)
            stop = start + 1 if self.settings["positions"] == "first" else width
            rows.append(logits[i, start:stop].float())
        return rows

    def soften(self, logits: torch.Tensor) -> torch.Tensor:
        return F.log_softmax(logits / float(self.settings["temperature"]), dim=-1)

    @torch.no_grad()
    def record(self, examples) -> dict:
        """The current model's softened distributions at each example's positions, without dropout."""
        recorded, size = {}, int(self.settings["batch_size"])
        training = self.model.training
        self.model.eval()
        try:
            for start in range(0, len(examples), size):
                batch = collate(examples[start:start + size], self.tokenizer.pad_token_id, self.device)
                _, out = answer_loss(self.model, batch, return_outputs=True)
                for ex, rows in zip(batch["examples"], self.answer_logits(batch, out.logits)):
                    recorded[ex] = self.soften(rows)
        finally:
            self.model.train(training)
        return recorded

    def before_task(self, task, examples):
        distil = task.index > 0 or self.settings["distil_backbone"]
        self.recorded = self.record(list(examples)) if distil else {}
        self.diagnostics.setdefault("recorded_examples", {})[task.name] = len(self.recorded)

    def distillation(self, batch, logits) -> torch.Tensor:
        """KL(recorded || current) at temperature T, the mean over the recorded positions of the batch."""
        pairs = [(self.recorded[ex], rows) for ex, rows in zip(batch["examples"], self.answer_logits(batch, logits))
                 if ex in self.recorded]   # an example not recorded (mixed in by a subclass) is not distilled
        if not pairs:
            return torch.zeros((), device=logits.device)
        recorded = torch.cat([r for r, _ in pairs])
        current = self.soften(torch.cat([c for _, c in pairs]))
        return (recorded.exp() * (recorded - current)).sum(-1).mean()

    def training_loss(self, batch, task):
        task_loss, out = answer_loss(self.model, batch, return_outputs=True)
        kl = self.distillation(batch, out.logits)
        self._kl_log.append(float(kl.detach()))
        weight = float(self.settings["lambda"]) * float(self.settings["temperature"]) ** 2
        return task_loss + weight * kl, {"task_loss": task_loss.detach(), "lwf_kl": kl.detach()}

    def after_task(self, task, examples):
        self.recorded = {}   # made from this task's inputs: nothing of it is kept
        log = self._kl_log or [0.0]
        self.diagnostics.setdefault("kl", {})[task.name] = {
            "first": round(log[0], 6), "mean": round(sum(log) / len(log), 6), "last": round(log[-1], 6)}
        self._kl_log = []

    def state_dict(self):
        return {"lora": super().state_dict(), "diagnostics": self.diagnostics}

    def load_state_dict(self, state):
        super().load_state_dict(state["lora"])
        self.diagnostics = state["diagnostics"]
