"""CRAFT: continual learning in low-rank interventions on hidden representations, steered by a KL signal.

The backbone is frozen; everything learned lives in LoReFT interventions (pyreft), organised in groups
of tasks that share an output space. Three stages per task, each one a named setting that can be
switched off for ablations:

1. Route. The task's signature is the frozen backbone's next-token distribution at the answer position,
   averaged over a probe of its training prompts (prompts list the label options, so tasks that share
   an output space get near-identical signatures). The task joins the group whose signature is nearest
   by KL(task || group), if that KL is under `route_threshold`; otherwise it opens a new group.
   (Measured under the plain backbone: measuring under a group's intervention would pull every task
   towards that group's labels.)
2. Train. The task's intervention starts from its group's state. Loss = task loss
   + beta * KL(prior || current), the KL of answer-position distributions on the group's anchor prompts
   (a few unlabeled prompts kept from each earlier task of the group), where `prior` is the group's
   state before this task (its distributions are computed once per task and cached: the backbone is
   frozen). The same KL stops training early when it reaches `forgetting_budget` (unless budget_stop=none;
   and, where `settle_tol` > 0, a settled task loss does; by default a task trains its scheduled steps).
3. Merge. The task's edit is folded into the group's shared one: a LoReFT edit is affine
   (h + M h + c), so the two interpolate exactly, (1-a) * group + a * task, and the result is turned back
   into a LoReFT intervention (SVD; truncation error recorded) of rank `merge_rank`: r (the default) is
   lossy when the two edits' subspaces differ, 2r is exact for two rank-r edits (the group then carries a
   rank-2r edit, and its later tasks train at that rank). a is the largest value on a grid whose KL against
   the prior on the group's anchors stays within the budget.

Paper-silent choices (all settings below): thresholds, beta, the budget, the merge grid, layers, rank,
positions. What CRAFT keeps from past tasks: `anchors_per_task` unlabeled prompts per task (no labels:
unlabeled rehearsal data, the counterpart of replay's labelled memory, growing with the stream), one
signature (a distribution over the vocabulary) per task (a group's is their mean), and one intervention per
group. parameters_kept counts the interventions and the signatures; the card's diagnostics.kept has each part
and the anchors (prompts and tokens).
"""
from __future__ import annotations

import copy
import random
import re

import torch

from core.errors import UsageError
from core.loss import answer_loss
from core.scoring import CausalLMScorer, left_pad, model_mask
from methods._backbone_cache import BackboneCache
from methods._lora import LoRAMethod
from methods._reft import HookedModel, InterventionSet, interpolate, position_mask
from methods.base import Method

EPS = 1e-10
MERGE_RANKS = ("r", "2r")


def kl(p_log: torch.Tensor, q_log: torch.Tensor) -> torch.Tensor:
    """KL(p || q) over the last dimension, from log-probabilities."""
    return (p_log.exp() * (p_log - q_log)).sum(-1)


class Group:
    def __init__(self, gid: int, state: InterventionSet):
        self.gid = gid
        self.state = state
        self.tasks: list[str] = []
        self.signature_log: torch.Tensor | None = None   # log of the mean answer distribution of its tasks
        self.signatures: list[torch.Tensor] = []
        self.anchors: list[tuple[int, ...]] = []        # unlabeled prompt ids of its tasks

    def add_signature(self, sig_log: torch.Tensor) -> None:
        self.signatures.append(sig_log)
        mean = torch.stack([s.exp() for s in self.signatures]).mean(0)
        self.signature_log = mean.clamp_min(EPS).log()


class CRAFT(Method):
    NAME = "craft"
    DESCRIPTION = ("LoReFT interventions on a frozen backbone, grouped by KL routing, trained under a KL "
                   "regulariser and KL-based stopping, folded into the group by a KL-chosen merge")
    SHARES_TRAIN_PREFIX = False   # its edits sit on the last prompt positions; its own cache holds the backbone's
    # runs recorded before 2026-12-01 trained without warm-up and kept the state at which the budget stop fired
    ADDED_SETTINGS = {"warmup": 0, "budget_stop": "keep", "auto_layers": 4, "warmup_for": "joining", "decay": "none",
                      "budget_check": "batch", "merge_rank": "r"}
    # Newest first. Until 2026-12-04: the budget stop read one anchor batch's KL; until 2026-12-03: besides, a
    # task's training ended once its loss settled (settle_tol 0.02); until 2026-12-02: besides, one epoch at a
    # constant rate, warm-up only for a joining task.
    FORMER_DEFAULTS = {"batch-check defaults": {"budget_check": "batch"},
                       "settled-loss defaults": {"settle_tol": 0.02, "budget_check": "batch"},
                       "one-epoch defaults": {"epochs": 1, "warmup": 0, "warmup_for": "joining", "decay": "none",
                                              "settle_tol": 0.02, "budget_check": "batch"}}
    SETTINGS = {
        "lr": (4e-3, "learning rate of the interventions"),
        # The schedule (epochs, warmup, warmup_for, decay) is LoReFT's own, chosen on validation runs (docs/results.md,
        # round 3b): against one epoch at a constant rate, ΔAA +11.25 [6.17, 16.04] on offline1-2 x seeds 1-3, FM no
        # worse. With settle_tol 0 (round 5) a task trains its scheduled steps unless the forgetting budget stops it.
        "epochs": (3, "passes over a task's examples (the forgetting budget, or a settled loss, may stop earlier)"),
        "layers": ("auto", "comma-separated decoder layers to intervene on; auto = auto_layers evenly spaced layers"),
        # 4 x rank 4 = 18,448 parameters on SmolLM2-135M, 25x fewer than seq_lora's LoRA; the paper's CRAFT has
        # 3.75x fewer than its LoRA baseline, which is 13 layers at rank 8 here (119,912)
        "auto_layers": (4, "how many evenly spaced decoder layers layers=auto picks"),
        "rank": (4, "LoReFT rank r of every intervention"),
        "init": ("pyreft", "a new group's edit: pyreft = pyreft's random init (not a no-op); identity = W = R, b = 0 "
                           "(starts as a no-op)", ("pyreft", "identity")),
        "first_positions": (0, "intervene on the first k prompt tokens"),
        "last_positions": (4, "intervene on the last k prompt tokens"),
        "routing": ("kl", "kl: join the nearest group under route_threshold; single: one group for all tasks; "
                          "per_task: a new group per task (routing ablations)", ("kl", "single", "per_task")),
        "route_threshold": (0.5, "largest KL(task || group) in nats for a task to join a group"),
        "probe_size": (16, "training prompts used for a task's signature"),
        "kl_term": (True, "add beta * KL(prior || current) on the group's anchors to the loss (ablation: false)"),
        "beta": (1.0, "weight of the KL term"),
        # 1.0, not 0.1: measured on offline1 (seed 1, 32/20), 0.1 stopped every in-group task at its first
        # or second step and merged it with weight 0 (AA 43.75); 1.0 gave 51.25 with FM still <= 0.
        "forgetting_budget": (1.0, "KL (nats) on the group's anchors at which training stops (unless budget_stop=none) "
                                    "and that a merge may not exceed"),
        "anchors_per_task": (16, "unlabeled prompts kept per task for the KL term and the merge"),
        "anchor_batch": (4, "anchors per training step for the KL term"),
        # 8 of a task's 75 scheduled steps at the default sizes (200 examples, batch 8, 3 epochs): about LoReFT's 6-10%
        "warmup": (8, "steps of linear learning-rate warm-up (lr * step / warmup) for the tasks warmup_for names, at "
                      "most a quarter of the task's scheduled steps (epochs x batches): Adam's first steps move every "
                      "coordinate by about the learning rate, however small the gradient, and a group's earlier "
                      "tasks feel that at once; 0 = none"),
        "warmup_for": ("all", "the tasks that warm up: joining = a task that continues a group; all = every task, "
                              "as LoReFT's own recipe warms up every run (pyreft examples/loreft: warmup ratio "
                              "0.06-0.1)", ("joining", "all")),
        "decay": ("linear", "learning rate after the warm-up: none = constant; linear = down towards 0 over the "
                            "task's scheduled steps (epochs x batches; lr/(n+1) on the last of n), LoReFT's linear "
                            "schedule", ("none", "linear")),
        # all, not batch: chosen on validation runs (docs/results.md, round 7): the batch check stopped joining tasks
        # on one 4-anchor batch's KL (1.01-1.94) whose state measured 0.12-0.68 on every anchor; a run whose batch KL
        # never reaches the budget trains the same under both
        "budget_check": ("all", "what the budget stop reads: batch = the step's anchor-batch KL (anchor_batch "
                                  "prompts); all = once that reaches the budget, the KL of the state the step reached "
                                  "on every anchor of the group (as the merge measures it) decides, so one batch of "
                                  "sensitive anchors does not end training (a joining task's batch KLs ran 0.92, "
                                  "0.06, 0.08, 1.02 on four successive steps)", ("batch", "all")),
        "budget_stop": ("keep", "when the anchor KL reaches the budget: keep = the state training reached (the merge "
                                "then weighs it down); rewind = the last state whose anchor KL was measured within "
                                "the budget; none = training never stops on it, only the merge reads the budget (a "
                                "joining task's KL peaks in its first steps, then the KL term pulls it back)",
                        ("keep", "rewind", "none")),
        "settle_window": (5, "steps compared for the settled-loss test (settle_tol > 0)"),
        # 0, not 0.02: chosen on validation runs (docs/results.md, round 5): against 0.02 on the schedule, ΔAA +8.54
        # [4.54, 12.67] on offline1-2 x seeds 1-3 (higher on all six), ΔFM +1.94 [-0.28, 3.78]; grouped stream +4.57.
        # At 0.02 the rule ended 8 of 9 group-opening tasks early, which then learned their task less (+35-41 own
        # gain against +52).
        "settle_tol": (0.0, "stop when the mean task loss over the last window changed by less than this fraction; "
                            "0 = never (a task trains its scheduled steps unless the forgetting budget stops it)"),
        "min_steps": (10, "never stop on a settled loss before this many steps (settle_tol > 0)"),
        "merge": (True, "fold the task into the group by a KL-chosen weight (ablation: false = the task's edit replaces the group's)"),
        "merge_grid": (5, "candidate merge weights: 1, 1-1/n, ..., 0"),
        "merge_rank": ("r", "rank of a merged edit: r = rank (lossy where the two edits' subspaces differ); 2r = "
                            "exact for two rank-r edits (a group's later tasks then train at 2r)", MERGE_RANKS),
        "test_routing": ("kl", "kl: route each test input to the nearest group by the backbone's output distribution "
                               "(no task id); task_id: use the task's group", ("kl", "task_id")),
    }

    @classmethod
    def resolve_settings(cls, overrides):
        values = super().resolve_settings(overrides)
        first, last = int(values["first_positions"]), int(values["last_positions"])
        if min(first, last) < 0 or first + last == 0:
            raise UsageError(f"craft edits the first first_positions and the last last_positions prompt tokens: they "
                             f"must be >= 0 and not both 0 (got {first} and {last})")
        if int(values["auto_layers"]) < 1:
            raise UsageError(f"craft: auto_layers must be at least 1 (got {values['auto_layers']})")
        if str(values["layers"]) != "auto" and not re.fullmatch(r"\s*\d+\s*(,\s*\d+\s*)*", str(values["layers"])):
            raise UsageError(f"craft: layers must be auto or comma-separated layer numbers (got {values['layers']!r})")
        # a spec that names budget_stop=none beside merge=false names a budget nothing reads (only when named: were
        # none a default, merge=false, the merge ablation, must still run)
        if overrides.get("budget_stop") == "none" and not values["merge"]:
            raise UsageError("craft: budget_stop=none with merge=false leaves nothing to read forgetting_budget: "
                             "set budget_stop=keep or rewind, or merge=true")
        if str(values["layers"]) != "auto":   # one spelling per set of layers: 7,3 and 3,7,7 run (and file) as 3,7
            values["layers"] = ",".join(map(str, sorted({int(x) for x in str(values["layers"]).split(",")})))
        return values

    @classmethod
    def uses_task_id_at_test(cls, settings=None):
        return cls.settings_or_defaults(settings)["test_routing"] == "task_id"

    @classmethod
    def keeps(cls, settings=None):
        return (f"{cls.settings_or_defaults(settings)['anchors_per_task']} unlabeled prompts per task (no labels), "
                "one signature (vocabulary distribution) per task and one intervention per group")

    # ---- setup ------------------------------------------------------------------------------------
    def setup(self):
        for p in self.model.parameters():
            p.requires_grad_(False)
        n_layers = self.model.config.num_hidden_layers
        spec = str(self.settings["layers"])
        if spec == "auto":
            k = min(int(self.settings["auto_layers"]), n_layers)
            self.layers = sorted({round((i + 1) * n_layers / (k + 1)) - 1 for i in range(k)}) if n_layers > k \
                else list(range(n_layers))
        else:
            self.layers = [int(x) for x in spec.split(",")]
        self.dim = self.model.config.hidden_size
        rank = int(self.settings["rank"])
        self.merged_rank = 2 * rank if self.settings["merge_rank"] == "2r" else rank
        if self.merged_rank > self.dim:
            raise UsageError(f"craft: merge_rank={self.settings['merge_rank']} is rank {self.merged_rank}, more than "
                             f"the hidden size {self.dim}")
        self.hooks = HookedModel(self.model, self.layers)
        self.groups: list[Group] = []
        self.task_group: dict[str, int] = {}
        self.current: InterventionSet | None = None
        self._route_cache: dict = {}
        self._routing_counted: str | None = None   # the task whose test routing example_keys counted last
        # The frozen backbone over every prompt's unedited head, computed once (edits at the start: no such head).
        self.backbone = BackboneCache(self.model, int(self.settings["last_positions"]), self.tokenizer.pad_token_id,
                                      self.cache_mb) \
            if self.cache_mb and not int(self.settings["first_positions"]) and int(self.settings["last_positions"]) \
            else None
        self.diagnostics = {"layers": self.layers, "routing": {}, "training": {}, "merge": {}, "groups": {}}

    def _new_state(self, salt: int, rank: int | None = None) -> InterventionSet:
        return InterventionSet(self.layers, self.dim, rank or int(self.settings["rank"]), seed=self.seed * 7919 + salt,
                               identity=self.settings["init"] == "identity").to(self.device)

    # ---- forward helpers ---------------------------------------------------------------------------
    def _prompt_mask(self, mask: torch.Tensor, prompt_end: torch.Tensor) -> torch.Tensor:
        return position_mask(mask, prompt_end, int(self.settings["first_positions"]), int(self.settings["last_positions"]))

    def _answer_logprobs(self, prompts: list[tuple[int, ...]], state: InterventionSet | None, grad: bool = False):
        """log p(next token) at the answer position for each prompt, under `state` (None = backbone)."""
        ctx = torch.enable_grad() if grad else torch.no_grad()
        if self.backbone is not None:
            inputs = self.backbone.batch(prompts)
            edited = inputs.pop("tail_mask")
            with ctx, self.hooks.active([state] if state else [], torch.zeros(len(prompts), dtype=torch.long,
                                                                             device=edited.device), edited):
                out = self.model(**inputs, logits_to_keep=1)
            return torch.log_softmax(out.logits[:, -1].float(), -1)
        ids, mask, pos = left_pad(prompts, self.tokenizer.pad_token_id, self.device)
        with ctx:
            if state is None:
                out = self.model(input_ids=ids, attention_mask=mask, position_ids=pos, logits_to_keep=1)
            else:
                rows = torch.zeros(len(prompts), dtype=torch.long, device=ids.device)
                pmask = self._prompt_mask(mask, torch.full((len(prompts),), ids.shape[1], device=ids.device))
                with self.hooks.active([state], rows, pmask):
                    out = self.model(input_ids=ids, attention_mask=mask, position_ids=pos, logits_to_keep=1)
        return torch.log_softmax(out.logits[:, -1].float(), -1)

    def _batched_logprobs(self, prompts, state, batch: int = 16):
        return torch.cat([self._answer_logprobs(prompts[i:i + batch], state) for i in range(0, len(prompts), batch)])

    def _signature(self, prompts) -> torch.Tensor:
        probs = self._batched_logprobs(prompts, None).exp().mean(0)
        return probs.clamp_min(EPS).log()

    # ---- stage 1: route ----------------------------------------------------------------------------
    def before_task(self, task, examples):
        """Stage 1, route the task to a group, and stage 2's set-up, both from the task's own examples (it
        then trains on them as given: no training_examples override). One seeded draw: the probe, then the anchors."""
        self.diagnostics["training"][task.name] = {"kl_trace": [], "loss_trace": []}
        rng = random.Random(f"{self.seed}:craft:{task.name}")
        probe = [ex.prompt_ids for ex in rng.sample(examples, min(len(examples), int(self.settings["probe_size"])))]
        sig = self._signature(probe)
        divergences = {g.gid: round(float(kl(sig, g.signature_log)), 4) for g in self.groups}
        mode = self.settings["routing"]
        if mode == "single" and self.groups:
            chosen, reason = self.groups[0], "routing=single"
        elif mode == "kl" and divergences and min(divergences.values()) <= float(self.settings["route_threshold"]):
            gid = min(divergences, key=divergences.get)
            chosen, reason = self.groups[gid], f"nearest group under threshold {self.settings['route_threshold']}"
        else:
            chosen = Group(len(self.groups), self._new_state(salt=len(self.groups)))
            self.groups.append(chosen)
            reason = "first task" if len(self.groups) == 1 else (
                "routing=per_task" if mode == "per_task" else "no group under threshold")
        self.diagnostics["routing"][task.name] = {"kl_to_groups": divergences, "group": chosen.gid, "reason": reason}
        self.task_group[task.name] = chosen.gid
        self._group = chosen
        self._signature_new = sig

        # Stage 2 set-up: start from the group's state; cache the prior's distributions on its anchors.
        self.current = copy.deepcopy(chosen.state)
        self.current.train()
        self._prior_state = copy.deepcopy(chosen.state)
        use_kl = bool(self.settings["kl_term"]) and chosen.anchors
        self._anchor_prompts = list(chosen.anchors) if chosen.anchors else []
        self._prior_logp = self._batched_logprobs(self._anchor_prompts, self._prior_state) if self._anchor_prompts else None
        self._use_kl = bool(use_kl)
        self._anchor_cursor = 0
        self._losses: list[float] = []
        self._kls: list[float] = []
        self._stop = None
        self._within = None   # (updates taken, state) last measured within the budget (budget_stop=rewind)
        anchors = rng.sample(examples, min(len(examples), int(self.settings["anchors_per_task"])))
        self._new_anchors = [ex.prompt_ids for ex in anchors]
        batch = int(self.settings["batch_size"])   # the training loop's count, over which decay=linear runs down
        self._scheduled_steps = (len(examples) + batch - 1) // batch * int(self.settings["epochs"])
        self.diagnostics["training"][task.name]["warmup_steps"] = self._warmup_steps()   # after the cap

    def trainable_parameters(self):
        return list(self.current.parameters()) if self.current is not None else []

    # ---- stage 2: train -------------------------------------------------------------------------
    def _anchor_kl(self) -> torch.Tensor:
        n = int(self.settings["anchor_batch"])
        idx = [(self._anchor_cursor + i) % len(self._anchor_prompts) for i in range(min(n, len(self._anchor_prompts)))]
        self._anchor_cursor += len(idx)
        cur = self._answer_logprobs([self._anchor_prompts[i] for i in idx], self.current, grad=True)
        return kl(self._prior_logp[idx], cur).mean()

    def _kl_on_anchors(self, state: InterventionSet) -> float:
        """Mean KL(prior || state) over every anchor of the group: what the merge and budget_check=all measure."""
        return float(kl(self._prior_logp, self._batched_logprobs(self._anchor_prompts, state)).mean())

    def _tail_loss(self, batch) -> torch.Tensor:
        """answer_loss on the edited prompt tails + answers on top of the cached backbone heads. Each answer's last
        token is not fed (it predicts nothing), and the vocabulary projection runs on the answer-predicting
        positions only (a boolean logits_to_keep), not on the widest answer's span in every row."""
        examples = batch["examples"]
        inputs = self.backbone.batch([ex.prompt_ids for ex in examples], [ex.answer_ids[:-1] for ex in examples])
        edited = inputs.pop("tail_mask")
        width = edited.shape[1]
        n = torch.tensor([len(ex.answer_ids) for ex in examples], device=edited.device)
        keep = torch.arange(width, device=edited.device)[None, :] >= width - n[:, None]   # rows end at the last column
        target = torch.tensor([t for ex in examples for t in ex.answer_ids], device=edited.device)   # row-major
        rows = torch.zeros(len(examples), dtype=torch.long, device=edited.device)
        with self.hooks.active([self.current], rows, edited):
            logits = self.model(**inputs, logits_to_keep=keep).logits
        return torch.nn.functional.cross_entropy(logits.float(), target)

    def training_loss(self, batch, task):
        if self.backbone is not None:
            task_loss = self._tail_loss(batch)
        else:
            ids, mask = batch["input_ids"], batch["attention_mask"]
            answer_len = torch.tensor([len(ex.answer_ids) for ex in batch["examples"]], device=ids.device)
            pmask = self._prompt_mask(mask, ids.shape[1] - answer_len)
            rows = torch.zeros(len(pmask), dtype=torch.long, device=pmask.device)
            with self.hooks.active([self.current], rows, pmask):
                task_loss = answer_loss(self.model, batch)
        parts = {"task_loss": task_loss.item()}
        loss = task_loss
        if self._anchor_prompts:
            anchor_kl = self._anchor_kl()
            parts["kl"] = anchor_kl.item()
            self._kls.append(parts["kl"])
            if self.settings["budget_stop"] == "rewind" and parts["kl"] < float(self.settings["forgetting_budget"]):
                # the state this KL was measured on (before this step's update): the latest known within budget
                self._within = (len(self._kls) - 1, self.current.plain_state())
            if self._use_kl:
                loss = loss + float(self.settings["beta"]) * anchor_kl
        self._losses.append(parts["task_loss"])
        return loss, parts

    def _warmup_steps(self) -> int:
        # joining: only a task that continues a group warms up (its earlier tasks feel Adam's first steps at once)
        warms = bool(self._group.tasks) or self.settings["warmup_for"] == "all"
        # at most a quarter of the task's scheduled steps: a short task (few examples) still reaches lr
        return min(int(self.settings["warmup"]), self._scheduled_steps // 4) if warms else 0

    def learning_rate(self, task, step):
        lr = float(self.settings["lr"])
        warmup = self._warmup_steps()
        if step <= warmup:
            return lr * step / warmup
        if self.settings["decay"] == "linear":   # the k-th of n steps after the warm-up: lr * (n - k + 1) / (n + 1)
            return lr * max(0, self._scheduled_steps - step + 1) / (self._scheduled_steps - warmup + 1)
        return lr

    def _stop_rule(self, step, trace: dict) -> tuple[int, str] | None:
        """(step, why) when training should stop after `step`, from the traces so far; None to go on."""
        budget = float(self.settings["forgetting_budget"])
        if self._use_kl and self._kls and self._kls[-1] >= budget and self.settings["budget_stop"] != "none":
            if self.settings["budget_check"] == "batch":
                return step, f"KL {self._kls[-1]:.4f} reached the forgetting budget {budget}"
            # all: the state this step reached, on every anchor of the group (what the merge measures)
            whole = self._kl_on_anchors(self.current)
            trace.setdefault("kl_checks", []).append([step, round(whole, 6)])
            if whole >= budget:
                return step, (f"KL {whole:.4f} on all {len(self._anchor_prompts)} anchors (batch "
                              f"{self._kls[-1]:.4f}) reached the forgetting budget {budget}")
        w = int(self.settings["settle_window"])
        if step >= max(int(self.settings["min_steps"]), 2 * w):
            prev = sum(self._losses[-2 * w:-w]) / w
            last = sum(self._losses[-w:]) / w
            if abs(prev - last) < float(self.settings["settle_tol"]) * max(prev, 1e-8):
                return step, f"task loss settled ({prev:.4f} -> {last:.4f} over {w}-step windows)"
        return None

    def after_step(self, task, step):
        trace = self.diagnostics["training"][task.name]
        trace["loss_trace"].append(round(self._losses[-1], 5))
        if self._kls:
            trace["kl_trace"].append(round(self._kls[-1], 6))
        self._stop = self._stop_rule(step, trace)

    def should_stop(self, task, step):
        return self._stop is not None

    # ---- stage 3: merge -------------------------------------------------------------------------
    def after_task(self, task, examples):
        group = self._group
        trace = self.diagnostics["training"][task.name]
        steps = len(self._losses)
        trace["stop_step"], trace["stop_reason"] = self._stop or (steps, "epochs done")
        if self._stop is not None and self._stop[1].startswith("KL") and self._within is not None:
            updates, state = self._within   # budget_stop=rewind: back to the last state known within the budget
            self.current.load_plain_state(state)
            trace["rewound_to_update"] = updates
        self.current.eval()
        info: dict = {"group": group.gid}
        if not self.settings["merge"] or not group.tasks:
            # First task of a group (nothing to protect) or merge ablated: the task's edit is the group's.
            group.state = copy.deepcopy(self.current)
            info.update(weight=1.0, reason="merge=false" if group.tasks else "first task of its group")
            if self._anchor_prompts:
                info["kl_after"] = round(self._kl_on_anchors(group.state), 6)
        else:
            budget = float(self.settings["forgetting_budget"])
            n = max(1, int(self.settings["merge_grid"]))
            tried = []
            chosen = None
            for k in range(n + 1):
                a = 1.0 - k / n
                merged, err = interpolate(self._prior_state, self.current, a, self.merged_rank)
                kl_a = self._kl_on_anchors(merged)
                tried.append({"weight": round(a, 4), "kl": round(kl_a, 6), "truncation_error": round(err, 6)})
                if kl_a <= budget:
                    chosen = (a, merged, kl_a)
                    break
            if chosen is None:   # not even a = 0 fits (cannot happen up to truncation): keep the prior
                chosen = (0.0, copy.deepcopy(self._prior_state), tried[-1]["kl"])
            a, merged, kl_after = chosen
            group.state = merged
            info.update(weight=round(a, 4), kl_before=tried[0]["kl"], kl_after=round(kl_after, 6), tried=tried)
        self.diagnostics["merge"][task.name] = info
        group.tasks.append(task.name)
        group.add_signature(self._signature_new)
        group.anchors.extend(self._new_anchors)
        self.diagnostics["groups"] = {g.gid: g.tasks for g in self.groups}
        self.diagnostics["kept"] = self.kept()
        self.current = None
        if self.backbone is not None:   # the task's training prompts are not seen again, but for its anchors
            kept = set(self._new_anchors)
            self.backbone.drop([ex.prompt_ids for ex in examples if ex.prompt_ids not in kept])
            self.diagnostics["backbone_cache"] = {"prompts": len(self.backbone.entries), "mb": round(
                self.backbone.bytes / 2**20, 1), "computed": self.backbone.computed, "reused": self.backbone.reused,
                "kb_per_token": round(self.backbone.bytes_per_token / 1024, 1)}   # the device memory it costs

    # ---- test time ----------------------------------------------------------------------------------
    def scorer(self, task_name):
        self._routing_counted = None   # until example_keys counts this evaluation's routing (then the scorer does not)
        return CraftScorer(self, task_name)

    def example_keys(self, task_name, prompts):
        """An input's score depends on its group's edit alone (the backbone is frozen; edits act per row), and a
        group's edit changes only when a task joins it (after_task): the key is (group, how many tasks it holds).
        Counts where the task's inputs went (the scorer, given only those to score again, then counts none)."""
        if not self.groups:
            return ["backbone"] * len(prompts)
        if self.settings["test_routing"] == "task_id":
            gid = self.task_group.get(task_name, -1)
            rows = [gid] * len(prompts)
        else:
            rows = self.route_prompts(list(prompts)).tolist()
            self.count_test_routing(task_name, rows, restart=True)
            self._routing_counted = task_name
        return [(g, len(self.groups[g].tasks)) if g >= 0 else "backbone" for g in rows]

    def count_test_routing(self, task_name: str, rows: list[int], restart: bool) -> None:
        """Where a task's test inputs went in its latest evaluation (restart: the first of its batches)."""
        counts = self.diagnostics.setdefault("test_routing", {}).setdefault(task_name, {})
        if restart:
            counts.clear()
        for g in rows:
            counts[str(g)] = counts.get(str(g), 0) + 1

    def route_inputs(self, ids, mask, pos, prefix=None) -> torch.Tensor:
        """Group index per row: the nearest group by KL(input's backbone distribution || group signature).
        No threshold here: a single input's distribution is noisier than a task's averaged signature
        (measured: median KL to its own task's signature 0.08-0.56 nats), so a threshold would send
        seen-task inputs to the bare backbone. The backbone is frozen, so each prompt's distribution is
        computed once per run and cached: routing then costs nothing after the first evaluation.
        prefix = (its token ids, the backbone's cache of it) when ids hold only the tokens after that prefix."""
        head, past = prefix or ((), None)
        own = mask[:, -ids.shape[1]:]
        keys = [head + tuple(row[m.bool()].tolist()) for row, m in zip(ids, own)]

        def backbone_logprobs(missing):
            nonlocal past
            if past is not None:
                past = copy.deepcopy(past)
                past.batch_repeat_interleave(len(missing))
            with torch.no_grad():
                out = self.model(input_ids=ids[missing], attention_mask=mask[missing], position_ids=pos[missing],
                                 past_key_values=past, logits_to_keep=1)
            return torch.log_softmax(out.logits[:, -1].float(), -1)
        return self.route_prompts(keys, backbone_logprobs)

    def route_prompts(self, prompts: list[tuple[int, ...]], backbone_logprobs=None) -> torch.Tensor:
        """route_inputs for prompts as token tuples; `backbone_logprobs(rows)` computes the distributions not
        cached yet (default: through the backbone cache or whole prompts)."""
        missing = [i for i, k in enumerate(prompts) if k not in self._route_cache]
        if missing:
            compute = backbone_logprobs or (lambda rows: self._batched_logprobs([prompts[i] for i in rows], None))
            for i, lp in zip(missing, compute(missing)):
                self._route_cache[prompts[i]] = lp
        logp = torch.stack([self._route_cache[k] for k in prompts])
        sigs = torch.stack([g.signature_log for g in self.groups])   # every group has a task after after_task
        d = torch.stack([kl(logp, s[None, :].expand_as(logp)) for s in sigs], dim=1)   # [B, G]
        return d.argmin(1)

    # ---- state -------------------------------------------------------------------------------------
    def state_dict(self):
        return {"groups": [{"gid": g.gid, "state": g.state.plain_state(), "tasks": g.tasks,
                            "signatures": g.signatures, "anchors": g.anchors} for g in self.groups],
                "task_group": self.task_group, "diagnostics": self.diagnostics}

    def load_state_dict(self, state):
        self.groups = []
        for saved in state["groups"]:
            rank = len(next(iter(saved["state"].values()))["learned_source.bias"])   # 2r after a merge_rank=2r merge
            g = Group(saved["gid"], self._new_state(salt=saved["gid"], rank=rank))
            g.state.load_plain_state(saved["state"])
            g.tasks, g.anchors = list(saved["tasks"]), list(saved["anchors"])
            for s in saved["signatures"]:
                g.add_signature(s)
            self.groups.append(g)
        self.task_group = dict(state["task_group"])
        self.diagnostics = state["diagnostics"]

    def card(self):
        card = super().card()
        per_task = sum(p.numel() for p in self._new_state(0).parameters() if p.requires_grad)
        # seq_lora's size on this backbone, from the LoRA defaults it uses (not a copy of them)
        lora_settings = LoRAMethod.all_settings()
        rank, targets = lora_settings["r"][0], lora_settings["target_modules"][0].split(",")
        lora = sum(rank * (m.in_features + m.out_features) for name, m in self.model.named_modules()
                   if isinstance(m, torch.nn.Linear) and name.split(".")[-1] in targets)
        card["trainable_parameters"] = per_task
        card["trainable_ratio_to_seq_lora"] = round(per_task / lora, 4) if lora else None
        return card

    def kept(self) -> dict:
        """What is stored beside the backbone at this point, part by part."""
        return {"intervention_parameters": sum(state_size(g.state) for g in self.groups),
                # one vocabulary distribution per task (a group's signature is their mean)
                "signature_floats": sum(s.numel() for g in self.groups for s in g.signatures),
                # unlabeled rehearsal data (prompts of past tasks, no labels): not parameters, so counted apart,
                # as replay's labelled memory is
                "anchor_prompts": sum(len(g.anchors) for g in self.groups),
                "anchor_tokens": sum(len(a) for g in self.groups for a in g.anchors)}

    def parameters_kept(self) -> int:
        kept = self.kept()
        return kept["intervention_parameters"] + kept["signature_floats"]


def state_size(state: InterventionSet) -> int:
    """The numbers that define the edits (R, W, b per layer); pyreft's orthogonal parametrisation also holds a
    d x d base per edit in the checkpoint, which the edit does not need."""
    return sum(p.numel() for p in state.parameters())


class CraftScorer(CausalLMScorer):
    """The prompt is encoded under the intervention of the input's group; continuation tokens are not edited.
    With first_positions=0 the edits sit on each prompt's last tokens only, so a prefix the prompts share is the
    frozen backbone's under every group (causal attention: no earlier position sees an edited one) and is
    encoded once, plainly; the evaluator leaves each prompt at least last_positions tokens of its own."""

    def __init__(self, method: CRAFT, task_name: str):
        super().__init__(method.model)
        self.m = method
        self.task_name = task_name
        self.fresh = True
        self.min_own_tokens = int(method.settings["last_positions"])
        self.prefix = None
        self.own_encoding = method.backbone is not None   # the evaluator then calls encode_prompts

    def _rows(self, route) -> torch.Tensor:
        """The group of each input: the task's (test_routing=task_id) or the nearest by `route()`."""
        m = self.m
        if m.settings["test_routing"] == "task_id":
            return torch.full((self.batch_size,), m.task_group.get(self.task_name, -1), dtype=torch.long,
                              device=self.device)
        rows = route()
        if m._routing_counted != self.task_name:   # else CRAFT.example_keys counted every input of this evaluation
            m.count_test_routing(self.task_name, rows.tolist(), restart=self.fresh)
            self.fresh = False
        return rows

    def encode_prompts(self, prompts: list[tuple[int, ...]], pad_id: int):
        """(last logits, KV cache, attention mask) of the prompts, each under its group's edit, from the cached
        backbone heads: only each prompt's edited tail is computed."""
        inputs = self.m.backbone.batch(prompts)
        edited = inputs.pop("tail_mask")
        out = self._edited_forward(prompts, edited, **inputs, use_cache=True, logits_to_keep=1)
        return out.logits[:, -1, :], out.past_key_values, inputs["attention_mask"]

    def _edited_forward(self, prompts, edited: torch.Tensor, **inputs):
        """The model's forward with each prompt's group edit at the `edited` positions (none before a group exists)."""
        m = self.m
        if not m.groups:
            return self.model(**inputs)
        self.batch_size = len(prompts)
        rows = self._rows(lambda: m.route_prompts(list(prompts)))
        with m.hooks.active([g.state for g in m.groups], rows, edited):
            return self.model(**inputs)

    def encode_with_continuation(self, prompts: list[tuple[int, ...]], pad_id: int, tokens: torch.Tensor,
                                 block: torch.Tensor, offset: torch.Tensor):
        """encode_prompts and the continuation forward in one: each row holds its prompt's edited tail, then
        `tokens` (every candidate label's tokens back to back, [L]), on the cached backbone head. A 4-D mask lets
        each of those tokens see the prompt and, by `block` ([L, L]), the earlier tokens of its own candidate;
        each restarts its positions at the prompt's end plus `offset`. One forward per batch instead of two saves
        a pass over the cached keys/values (copies, attention). Returns (last prompt logits [B, V], the tokens'
        logits [B, L, V])."""
        n = len(tokens)
        inputs = self.m.backbone.batch(prompts, [tuple(tokens.tolist())] * len(prompts))
        edited = inputs.pop("tail_mask")
        mask, pos = inputs["attention_mask"].bool(), inputs["position_ids"].clone()
        rows, width = inputs["input_ids"].shape
        head = mask.shape[1] - width
        own = torch.ones((width, width), dtype=torch.bool, device=mask.device).tril()
        own[width - n:, width - n:] = block
        seen = torch.cat([mask[:, None, :head].expand(rows, width, head), mask[:, None, head:] & own], dim=-1)
        seen[:, :, head:] |= torch.eye(width, dtype=torch.bool, device=mask.device)   # a padded query sees itself
        pos[:, width - n:] = pos[:, width - n - 1:width - n] + 1 + offset
        inputs.update(attention_mask=model_mask(self.model, seen[:, None]), position_ids=pos)
        logits = self._edited_forward(prompts, edited, **inputs, logits_to_keep=n + 1).logits
        return logits[:, 0, :], logits[:, 1:, :]

    def prefix_forward(self, input_ids):
        if int(self.m.settings["first_positions"]) > 0:
            return None   # edits at the start of the prompt: no prefix is the same under every group
        past = super().prefix_forward(input_ids)
        self.prefix = (tuple(input_ids[0].tolist()), past)
        return past

    def prompt_forward(self, input_ids, attention_mask, position_ids, past=None):
        m = self.m
        if not m.groups:
            return super().prompt_forward(input_ids, attention_mask, position_ids, past)
        self.batch_size = len(input_ids)
        rows = self._rows(lambda: m.route_inputs(input_ids, attention_mask, position_ids,
                                                 self.prefix if past is not None else None))
        width = attention_mask.shape[1]
        pmask = m._prompt_mask(attention_mask, torch.full((len(input_ids),), width, device=attention_mask.device))[
            :, width - input_ids.shape[1]:]
        with m.hooks.active([g.state for g in m.groups], rows, pmask):
            return super().prompt_forward(input_ids, attention_mask, position_ids, past)
