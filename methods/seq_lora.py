from methods._lora import LoRAMethod


class SeqLoRA(LoRAMethod):
    """One LoRA (r=8, alpha=32, dropout 0.1 on q_proj, v_proj) trained through the whole stream."""
    NAME = "seq_lora"
    DESCRIPTION = "sequential fine-tuning of one LoRA adapter through the stream (the forgetting baseline)"
