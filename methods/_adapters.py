"""Several named LoRA adapters on one backbone (peft), for the methods that keep more than one: o_lora and
inc_lora (one per task, all summed), per_task (one per task, chosen by task id), i_lora (fast and slow).
Not a method itself (no NAME)."""
from __future__ import annotations

from peft import get_peft_model, get_peft_model_state_dict, set_peft_model_state_dict
from peft.tuners.lora import LoraLayer

from methods._lora import LoRAMethod


class MultiLoRAMethod(LoRAMethod):
    FIRST_ADAPTER = "task0"   # peft cannot wrap a model without one adapter, so setup() creates it

    def setup(self) -> None:
        self.model = get_peft_model(self.model, self.lora_config(), adapter_name=self.FIRST_ADAPTER)
        self.model.eval()
        self.adapters: list[str] = [self.FIRST_ADAPTER]
        self.trainable: str | None = None
        self.activate([self.FIRST_ADAPTER], self.FIRST_ADAPTER)

    def add_adapter(self, name: str) -> None:
        """A fresh LoRA (A random, B zero: no effect until trained); a no-op when it exists."""
        if name not in self.adapters:
            training = self.model.training
            self.model.add_adapter(name, self.lora_config())
            self.model.train(training)   # peft builds the new modules (dropout) in training mode
            self.adapters.append(name)

    def activate(self, active: list[str], trainable: str | None) -> None:
        """Run the forward through the sum of `active` (none: the bare backbone) and train only `trainable`.
        peft's set_adapter also makes every active adapter trainable, so freeze them all, then thaw one."""
        self.model.base_model.set_adapter(list(active), inference_mode=True)
        self.trainable = trainable
        for p in self.adapter_parameters(trainable).values():
            p.requires_grad_(True)

    def adapter_parameters(self, name: str | None) -> dict:
        if name is None:
            return {}
        return {n: p for n, p in self.model.named_parameters() if f".{name}." in n and "lora_" in n}

    def lora_layers(self) -> list[LoraLayer]:
        return [m for m in self.model.modules() if isinstance(m, LoraLayer)]

    def trainable_parameters(self):
        return list(self.adapter_parameters(self.trainable).values())

    def parameters_kept(self) -> int:
        return sum(self.adapter_size(a) for a in self.adapters)

    def adapter_size(self, name: str) -> int:
        return sum(p.numel() for p in self.adapter_parameters(name).values())

    # --- state: every adapter, then whatever the subclass keeps --------------------------------------
    def state_dict(self) -> dict:
        return {"adapters": {name: {k: v.detach().clone() for k, v in
                                    get_peft_model_state_dict(self.model, adapter_name=name).items()}
                             for name in self.adapters},
                "trainable": self.trainable, "diagnostics": self.diagnostics}

    def load_state_dict(self, state: dict) -> None:
        for name, weights in state["adapters"].items():
            self.add_adapter(name)
            set_peft_model_state_dict(self.model, weights, adapter_name=name)
        self.diagnostics = state["diagnostics"]
        self.activate(list(state["adapters"]), state["trainable"])
