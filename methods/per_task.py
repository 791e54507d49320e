from core.scoring import CausalLMScorer
from methods._adapters import MultiLoRAMethod
from methods.seq_lora import seq_lora_budget


class PerTask(MultiLoRAMethod):
    """A fresh LoRA per task (r=8, alpha=32, dropout 0.1 on q_proj, v_proj), each evaluated on its own task
    only: test time needs the task identity to pick the adapter (a bound, not a task-agnostic CL method)."""
    NAME = "per_task"
    DESCRIPTION = ("per-task fine-tuning: one separate LoRA per task, chosen by the task id at test "
                   "(uses task identity; a bound, not a CL method)")
    USES_TASK_ID_AT_TEST = True
    BOUND = True
    KEEPS = "one frozen LoRA adapter per past task, selected by task id at test"
    # A bound trains each task as the learner it bounds does: seq_lora's passes (its default and former ones), so
    # that "per_task above seq_lora" tests the task id and the fresh adapter, not a smaller training budget.
    SETTINGS, FORMER_DEFAULTS = seq_lora_budget()

    def before_task(self, task, examples):
        name = f"task{task.index}"
        self.add_adapter(name)
        self.activate([name], name)
        self.diagnostics.setdefault("adapters", {})[task.name] = name

    def _adapter_for(self, task_name):
        return self.diagnostics.get("adapters", {}).get(task_name)

    def scorer(self, task_name):
        name = self._adapter_for(task_name)
        # A task not trained yet has no adapter of its own: it is scored on the bare backbone (no adapter).
        self.activate([name] if name else [], self.trainable)
        return CausalLMScorer(self.model)

    def evaluation_key(self, task_name):
        # A task's adapter is frozen once its task is over, so its score holds for every later row.
        name = self._adapter_for(task_name)
        return f"per_task:{name}" if name else "backbone"

    def after_task(self, task, examples):
        self.diagnostics["trainable_parameters_per_task"] = self.adapter_size(self.trainable)
        self.diagnostics["adapter_parameters_total"] = sum(self.adapter_size(a) for a in self.adapters)
