from __future__ import annotations

import random

from methods._lora import LoRAMethod


class Replay(LoRAMethod):
    """SeqLoRA plus a bounded, seeded memory of past training examples mixed into every later task.

    The memory holds at most `memory_size` examples, split evenly across the tasks seen so far: when a
    task arrives each earlier task's share shrinks (a seeded random subset of it is kept)."""
    NAME = "replay"
    DESCRIPTION = "seq_lora plus experience replay from a bounded memory of past labelled examples"
    SETTINGS = {"memory_size": (100, "examples kept from all past tasks together (evenly per task)")}

    @classmethod
    def keeps(cls, settings=None):
        return (f"up to {cls.settings_or_defaults(settings)['memory_size']} labelled training examples of past "
                "tasks (evenly per task)")

    def setup(self):
        super().setup()
        self.memory: dict[str, list] = {}   # task -> its kept examples

    def training_examples(self, task, examples):
        replayed = [ex for kept in self.memory.values() for ex in kept]
        self.diagnostics.setdefault("replayed_per_task", {})[task.name] = len(replayed)
        return list(examples) + replayed

    def after_task(self, task, examples):
        size = int(self.settings["memory_size"])
        self.memory[task.name] = list(examples)
        share = size // len(self.memory)
        for name, kept in self.memory.items():
            if len(kept) > share:
                rng = random.Random(f"{self.seed}:replay:{name}:{len(self.memory)}")
                self.memory[name] = rng.sample(kept, share)
        self.diagnostics["memory"] = {name: len(kept) for name, kept in self.memory.items()}

    def state_dict(self):
        return {"lora": super().state_dict(), "memory": self.memory}

    def load_state_dict(self, state):
        super().load_state_dict(state["lora"])
        self.memory = state["memory"]
