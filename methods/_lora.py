"""Shared LoRA plumbing on peft for the LoRA-based methods (not a method itself: no NAME)."""
from __future__ import annotations

from peft import LoraConfig, get_peft_model, get_peft_model_state_dict, set_peft_model_state_dict

from methods.base import AtLeast, Method


class LoRAMethod(Method):
    LIMITS = {"r": AtLeast(1), "alpha": AtLeast(0, above=True), "dropout": AtLeast(0)}
    SETTINGS = {
        "r": (8, "LoRA rank"),
        "alpha": (32, "LoRA scaling numerator (scale = alpha / r)"),
        "dropout": (0.1, "LoRA dropout"),
        "target_modules": ("q_proj,v_proj", "comma-separated module names that get a LoRA"),
    }

    def lora_config(self) -> LoraConfig:
        s = self.settings
        return LoraConfig(r=int(s["r"]), lora_alpha=int(s["alpha"]), lora_dropout=float(s["dropout"]),
                          target_modules=[m.strip() for m in s["target_modules"].split(",")], bias="none",
                          task_type="CAUSAL_LM")

    def setup(self) -> None:
        self.model = get_peft_model(self.model, self.lora_config())
        self.model.eval()

    def state_dict(self) -> dict:
        return {k: v.detach().clone() for k, v in get_peft_model_state_dict(self.model).items()}

    def load_state_dict(self, state: dict) -> None:
        set_peft_model_state_dict(self.model, state)
