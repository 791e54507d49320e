from core.errors import UsageError
from methods.o_lora import OLoRA


class IncLoRA(OLoRA):
    """O-LoRA without the orthogonality term (lambda1 fixed at 0): a new LoRA per task, the frozen earlier ones
    summed in. The orthogonality term is still computed and logged, only not weighted."""
    NAME = "inc_lora"
    DESCRIPTION = "incremental LoRA: a new LoRA per task, earlier ones frozen and summed at test (O-LoRA, lambda1=0)"
    SETTINGS = {"lambda1": (0.0, "fixed at 0: that is what makes this inc_lora rather than o_lora")}

    @classmethod
    def resolve_settings(cls, overrides):
        values = super().resolve_settings(overrides)
        if float(values["lambda1"]) != 0.0:
            raise UsageError("inc_lora fixes lambda1 at 0; use o_lora for an orthogonality weight")
        return values

    def lambdas(self, task):
        return 0.0, super().lambdas(task)[1]
