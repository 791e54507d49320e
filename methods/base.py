"""The method interface: a NAME, a few settings, and the hooks of the shared training loop.

The runner calls, in order: setup() once (after measuring the untouched backbone), then per task
  before_task(task, examples)        prepare from the task's own training examples (route, add an adapter)
  training_examples(task, examples)  what to train on: the task's examples, plus whatever the method adds
  [learning_rate -> training_loss -> after_step -> should_stop]* per optimizer step (harness/training.py): after_step records
                                     (traces, EMA updates, the stop decision); should_stop only reads the state
  after_task(task, examples)         with the task's own examples again
then scorer(task) for every task it evaluates. (A JOINT method gets one stage, the union of the tasks.)
What a method keeps from past tasks and whether it needs the task id at test time are functions of its
settings (the classmethods keeps() and uses_task_id_at_test()), read by `harness list` and card().
Override only the hooks you need (see seq_lora.py, replay.py)."""
from __future__ import annotations

import json

import torch

from core.data import Encoded, TaskContext
from core.device import device_of
from core.errors import UsageError
from core.loss import answer_loss
from core.scoring import CausalLMScorer


class AtLeast:
    """A setting's lower limit (`above`: the limit itself excluded), checked as settings resolve: a value past it
    would train nothing or fail mid-run, so it fails before anything runs."""

    def __init__(self, low: float, above: bool = False):
        self.low, self.above = low, above

    def admits(self, value) -> bool:
        return value > self.low if self.above else value >= self.low

    def __str__(self) -> str:
        return f"{'above' if self.above else 'at least'} {self.low:g}"


def parse_value(raw: str, default):
    if isinstance(default, bool):
        if raw.lower() in ("1", "true", "yes", "on"):
            return True
        if raw.lower() in ("0", "false", "no", "off"):
            return False
        raise ValueError("expected true or false")
    if isinstance(default, int):
        return int(raw)
    if isinstance(default, float):
        return float(raw)
    if isinstance(default, str):
        return raw
    return json.loads(raw)


class Method:
    NAME: str = ""                       # set on every concrete method; discovery registers it
    DESCRIPTION: str = ""
    # The answers of uses_task_id_at_test() and keeps() for a method whose answer does not depend on its
    # settings; a method whose answer does overrides the classmethod. Never assigned on an instance.
    USES_TASK_ID_AT_TEST: bool = False   # does test time need to know which task an input is from?
    KEEPS: str = "nothing from past tasks"   # what the method stores from past tasks (data, states)
    JOINT: bool = False                  # trains once on the union of the stream's tasks (an upper bound)
    BOUND: bool = False                  # a reference point, not a continual learner (tables show it apart)
    # Training may encode a batch's shared prompt prefix once (core.loss.collate). Off for a method whose
    # training forward edits prompt positions by index, which a split prompt would shift.
    SHARES_TRAIN_PREFIX: bool = True
    # state_dict() holds all that a task's training changes from step to step (nothing tracked by after_step or
    # training_loss besides the trained weights, the optimizer and the random streams): the runner may then save
    # a task's training mid-way and resume it there (harness.training.MidTask). A tested promise: tests/test_resume.
    RESUMES_MID_TASK: bool = False
    # Settings added after runs were recorded, each with the value those runs behaved as: a record without the key
    # ran with it. Adding a setting then leaves the method's earlier runs current (not stale to a sweep, resumable,
    # in one table with the new ones) as long as its default is that value.
    ADDED_SETTINGS: dict = {}
    # The defaults of earlier times, newest first: a short name -> the settings that then differed from today's
    # defaults, every one of them, not only what moved then (when a default moves, add its old value to every entry
    # and a new entry of the keys that moved; each entry then differs from the next newer in what moved). A
    # run that ran one of these is its method's row of that time in the tables, even where its spec spelled them
    # out; a row holding an entry's settings is named by it: `craft (one-epoch defaults) [lr=0.001]`.
    FORMER_DEFAULTS: dict = {}
    # name -> the lower limit of its values, for the numeric settings where one exists; subclasses add to their
    # parents' (a subclass that redefines a setting's default keeps its limit).
    LIMITS: dict = {"lr": AtLeast(0, above=True), "epochs": AtLeast(1), "batch_size": AtLeast(1),
                    "grad_clip": AtLeast(0, above=True)}
    # name -> (default, what it controls[, the values allowed]). Subclasses add to their parents' settings.
    SETTINGS: dict = {
        "lr": (1e-3, "learning rate (AdamW, no weight decay)"),
        "epochs": (1, "passes over each task's training examples"),
        "batch_size": (8, "examples per optimizer step"),
        "grad_clip": (1.0, "gradient-norm clipping"),
    }

    def __init__(self, model, tokenizer, settings: dict | None = None, seed: int = 0, cache_mb: float = 0):
        self.model = model
        self.tokenizer = tokenizer
        self.seed = seed
        # memory a method may fill with caches of frozen computations (0: none; results are the same either way
        # up to float rounding). Not a setting: it does not change what the method is.
        self.cache_mb = cache_mb
        self.settings = self.resolve_settings(settings or {})
        self.diagnostics: dict = {}

    @property
    def device(self) -> torch.device:
        """Where the model lives, so where every tensor the method builds for it goes."""
        return device_of(self.model)

    # --- settings --------------------------------------------------------------------------------
    @classmethod
    def all_settings(cls) -> dict:
        merged: dict = {}
        for klass in reversed(cls.__mro__):
            merged.update(getattr(klass, "SETTINGS", {}) or {})
        return merged

    @classmethod
    def resolve_settings(cls, overrides: dict) -> dict:
        known = cls.all_settings()
        values = {k: v[0] for k, v in known.items()}
        for key, raw in overrides.items():
            if key not in known:
                raise UsageError(f"method {cls.NAME!r} has no setting {key!r}; its settings: {', '.join(sorted(known))}")
            try:
                values[key] = parse_value(raw, known[key][0]) if isinstance(raw, str) else raw
            except ValueError as e:
                raise UsageError(f"bad value {raw!r} for setting {key!r} of {cls.NAME!r}: {e}") from None
            allowed = known[key][2] if len(known[key]) > 2 else None
            if allowed is not None and values[key] not in allowed:
                raise UsageError(f"{cls.NAME} setting {key} must be one of {', '.join(map(repr, allowed))}, "
                                 f"not {values[key]!r}")
        limits: dict = {}
        for klass in reversed(cls.__mro__):
            limits.update(getattr(klass, "LIMITS", {}) or {})
        for key, limit in limits.items():
            if key in values and not limit.admits(values[key]):
                raise UsageError(f"{cls.NAME} setting {key} must be {limit}, not {values[key]!r}")
        return values

    @classmethod
    def recorded_settings(cls, recorded: dict | None) -> dict | None:
        """A run's recorded settings as this code would record them: the settings added since (ADDED_SETTINGS)
        at the value the run behaved as. Compare this, not the raw record, with resolve_settings' output."""
        if recorded is None:
            return None
        added: dict = {}
        for klass in reversed(cls.__mro__):
            added.update(getattr(klass, "ADDED_SETTINGS", {}) or {})
        return {**added, **recorded}

    @classmethod
    def settings_or_defaults(cls, settings: dict | None) -> dict:
        return cls.resolve_settings({}) if settings is None else settings

    @classmethod
    def uses_task_id_at_test(cls, settings: dict | None = None) -> bool:
        """Does test time need to know which task an input is from, under these resolved settings
        (None: the defaults)?"""
        return cls.USES_TASK_ID_AT_TEST

    @classmethod
    def keeps(cls, settings: dict | None = None) -> str:
        """What the method stores from past tasks (data, states), under these resolved settings (None: the
        defaults)."""
        return cls.KEEPS

    # --- hooks -----------------------------------------------------------------------------------
    def setup(self) -> None:
        """Wrap the backbone (add adapters); called once, after the base row is measured."""

    def before_task(self, task: TaskContext, examples: list[Encoded]) -> None:
        """Called before a task's training, with its own training examples (not yet extended by the method):
        the place to prepare from them (routing, a new adapter, anything drawn from the examples)."""

    def training_examples(self, task: TaskContext, examples: list[Encoded]) -> list[Encoded]:
        """What to train on for this task: its own examples, plus whatever the method mixes in (replay)."""
        return examples

    def trainable_parameters(self) -> list[torch.nn.Parameter]:
        return [p for p in self.model.parameters() if p.requires_grad]

    def learning_rate(self, task: TaskContext, step: int) -> float:
        """The learning rate of optimizer step `step` (from 1) of this task: the `lr` setting, unless the method
        schedules it."""
        return float(self.settings["lr"])

    def training_loss(self, batch: dict, task: TaskContext) -> tuple[torch.Tensor, dict]:
        """Return (loss to minimise, named parts to log)."""
        loss = answer_loss(self.model, batch)
        return loss, {}

    def after_step(self, task: TaskContext, step: int) -> None:
        """Called after every optimizer step (step counts from 1): update and record what the method tracks."""

    def should_stop(self, task: TaskContext, step: int) -> bool:
        """Stop this task's training now? Called right after after_step; reads the state, changes nothing."""
        return False

    def after_task(self, task: TaskContext, examples: list[Encoded]) -> None:
        pass

    def scorer(self, task_name: str):
        """What evaluation runs for a test example of `task_name` (methods without task id ignore it)."""
        return CausalLMScorer(self.model)

    def evaluation_key(self, task_name: str):
        """A key naming the test-time model, when it is unchanged since a previous evaluation (the runner
        reuses scores for equal keys); None means evaluate again."""
        return None

    def example_keys(self, task_name: str, prompts: list[tuple[int, ...]]) -> list | None:
        """For a method whose test-time model differs per input (CRAFT: each input's group), a hashable key per
        test prompt naming the model that scores it, unchanged while that model is: the evaluator, caches on,
        scores again only the prompts of a task whose key is new. None: no reuse per input."""
        return None

    # --- state (resume after the last finished task) --------------------------------------------
    def state_dict(self) -> dict:
        # what the method trains, not whatever the loader left requires_grad (the whole backbone, for zero_shot)
        trained = {id(p) for p in self.trainable_parameters()}
        return {n: p.detach().clone() for n, p in self.model.named_parameters() if id(p) in trained}

    def load_state_dict(self, state: dict) -> None:
        params = dict(self.model.named_parameters())
        with torch.no_grad():
            for name, value in state.items():
                params[name].copy_(value)

    def parameters_kept(self) -> int:
        return sum(p.numel() for p in self.trainable_parameters() if p.requires_grad)

    # --- the method card --------------------------------------------------------------------------
    def card(self) -> dict:
        trainable = sum(p.numel() for p in self.trainable_parameters() if p.requires_grad)
        return {"name": self.NAME, "description": self.DESCRIPTION, "trainable_parameters": trainable,
                # parameters stored beside the backbone at the end of the stream (adapters, states)
                "parameters_kept": self.parameters_kept(),
                "uses_task_id_at_test": self.uses_task_id_at_test(self.settings),
                "keeps_from_past_tasks": self.keeps(self.settings),
                "joint_training": self.JOINT, "bound": self.BOUND, "settings": self.settings, "diagnostics": self.diagnostics}
