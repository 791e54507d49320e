from methods.base import Method


class ZeroShot(Method):
    """The untouched backbone: the lower bound every table shows apart from the CL methods."""
    NAME = "zero_shot"
    DESCRIPTION = "no training; the backbone as it ships (a bound, not a CL method)"
    BOUND = True

    def trainable_parameters(self):
        return []

    def evaluation_key(self, task_name):
        return "backbone"   # same model as the base row: its scores are reused, not recomputed
