"""Methods are found by scanning this folder (Mammoth style): any module whose classes subclass Method
and set NAME is a method. Adding a baseline is one new file here; nothing else changes.
Modules whose name starts with "_" hold shared helpers and are scanned like the rest."""
from __future__ import annotations

import importlib
import inspect
import pkgutil

from core.errors import UsageError
from methods.base import Method


def discover() -> dict[str, type[Method]]:
    found: dict[str, type[Method]] = {}
    for info in pkgutil.iter_modules(__path__):
        if info.name == "base":
            continue
        module = importlib.import_module(f"{__name__}.{info.name}")
        for _, cls in inspect.getmembers(module, inspect.isclass):
            if issubclass(cls, Method) and cls.__module__ == module.__name__ and cls.NAME:
                if cls.NAME in found and found[cls.NAME] is not cls:
                    raise RuntimeError(f"two methods are named {cls.NAME!r}: {found[cls.NAME]} and {cls}")
                found[cls.NAME] = cls
    return dict(sorted(found.items()))


def get_method(name: str) -> type[Method]:
    known = discover()
    if name not in known:
        raise UsageError(f"unknown method {name!r}; known methods: {', '.join(known)}")
    return known[name]


__all__ = ["Method", "discover", "get_method"]
