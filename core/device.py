"""Where a model lives. Every tensor built for a model (batches, masks, positions, caches, interventions) is
put on the device of the model's parameters, read from the model itself rather than passed around: a model
moved once (`--device cuda`) takes everything built for it along."""
from __future__ import annotations

import torch


def device_of(model) -> torch.device:
    """The device of the model's first parameter (the CPU for a model without parameters)."""
    for p in model.parameters():
        return p.device
    return torch.device("cpu")
