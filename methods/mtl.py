from methods._lora import LoRAMethod
from methods.seq_lora import seq_lora_budget


class MTL(LoRAMethod):
    """Multi-task learning: one LoRA (r=8, alpha=32, dropout 0.1 on q_proj, v_proj) trained once on the union
    of all the stream's tasks (the runner passes the union as one stage, row `all`)."""
    NAME = "mtl"
    DESCRIPTION = "multi-task training of one LoRA on all tasks at once: an upper bound, not a CL method"
    KEEPS = "every task's training data, all at once (joint training)"
    JOINT = True
    BOUND = True
    RESUMES_MID_TASK = True   # its one LoRA's weights are all its training changes
    # An upper bound trains as the learner it bounds does: seq_lora's passes (its default and former ones), over
    # the union, so it takes as many steps as seq_lora over the whole stream.
    SETTINGS, FORMER_DEFAULTS = seq_lora_budget()
