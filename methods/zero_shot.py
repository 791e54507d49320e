from methods.base import Method


class ZeroShot(Method):
    """The untouched backbone: the lower bound every table shows apart from the CL methods."""
    NAME = "zero_shot"
    DESCRIPTION = "no training; the backbone as it ships (a bound, not a CL method)"
    BOUND = True

    def trainable_parameters(self):
        return []

    # nothing to keep: without these the base class would checkpoint every parameter the loader left trainable,
    # a full copy of the backbone (about 0.5 GB for SmolLM2-135M) in every run directory
    def state_dict(self):
        return {}

    def load_state_dict(self, state):
        pass

    def evaluation_key(self, task_name):
        return "backbone"   # same model as the base row: its scores are reused, not recomputed
