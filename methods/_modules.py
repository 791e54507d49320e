"""Finding and replacing a backbone's linear layers, for methods that wrap them themselves (peft has no
wrapper for their update: curlora's C U R, crma's mixed adapters)."""
from __future__ import annotations

from torch import nn

from core.errors import UsageError


def linear_targets(model: nn.Module, names: str, method: str) -> list[tuple[str, nn.Linear]]:
    """(qualified name, layer) of every nn.Linear whose last name part is in the comma-separated `names`."""
    wanted = {m.strip() for m in names.split(",") if m.strip()}
    found = [(name, module) for name, module in model.named_modules()
             if name.rsplit(".", 1)[-1] in wanted and isinstance(module, nn.Linear)]
    if not found:
        raise UsageError(f"{method}: no nn.Linear named {sorted(wanted)} in the model")
    return found


def replace_module(model: nn.Module, name: str, new: nn.Module) -> None:
    parent, _, child = name.rpartition(".")
    setattr(model.get_submodule(parent) if parent else model, child, new)
