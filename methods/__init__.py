"""Methods are found by scanning this folder (Mammoth style): any module whose classes subclass Method
and set NAME is a method. Adding a baseline is one new file here; nothing else changes.
Modules whose name starts with "_" hold shared helpers and are scanned like the rest.

A module that fails to import (a missing optional dependency, a typo, a syntax error) does not break the
others: it is skipped and recorded with its one-line error (`broken_modules()`), `harness list` reports it,
and asking for a method it may define says why it is missing. Two methods with one NAME are an error.

The scan imports every module (torch, peft, pyreft), so its result is cached per package, keyed by the
package folder's listing (file names, sizes, modification times): adding, removing or editing a file
rescans. `clear_cache()` forgets every scan."""
from __future__ import annotations

import dataclasses
import difflib
import importlib
import inspect
import os
import pkgutil

from core.errors import UsageError
from methods.base import Method

# The package scanned when none is given (a test may point discovery at a temporary copy instead).
PACKAGE = __name__


@dataclasses.dataclass(frozen=True)
class Scan:
    methods: dict        # NAME -> class, sorted by NAME
    broken: dict         # module file, e.g. "methods/foo.py" -> "methods.foo: ExcType: message"
    module_files: dict   # module name (file stem) -> module file, for the broken ones


_cache: dict[str, tuple[tuple, Scan]] = {}


def clear_cache() -> None:
    """Forget every cached scan (the next call imports and scans again)."""
    _cache.clear()


def _one_line(module: str, error: BaseException) -> str:
    return f"{module}: {type(error).__name__}: {' '.join(str(error).split())}"


def _folders(package: str) -> list[str]:
    try:
        pkg = importlib.import_module(package)
    except Exception as e:   # noqa: BLE001 - the package itself is broken: nothing can be found in it
        raise UsageError(f"cannot import the methods package {package!r}: {_one_line(package, e)}") from None
    return list(getattr(pkg, "__path__", []))


def _fingerprint(folders: list[str]) -> tuple:
    """What a rescan depends on: the module files (name, size, mtime) and subfolders of the package.
    __pycache__ is left out: it changes on every first import and must not force a rescan."""
    entries = []
    for folder in folders:
        try:
            with os.scandir(folder) as it:
                for entry in it:
                    if entry.name.startswith((".", "__pycache__")):
                        continue
                    if entry.is_dir():
                        entries.append((folder, entry.name, -1, -1))
                    elif entry.name.endswith(".py"):
                        st = entry.stat()
                        entries.append((folder, entry.name, st.st_size, st.st_mtime_ns))
        except OSError:   # a folder or file that vanished while listed: the next call sees the new state
            continue
    return tuple(sorted(entries))


def _scan(package: str, folders: list[str]) -> Scan:
    importlib.invalidate_caches()   # a file added since the last scan must be importable
    found: dict[str, type[Method]] = {}
    broken: dict[str, str] = {}
    module_files: dict[str, str] = {}
    shown = package.replace(".", "/")
    for info in pkgutil.iter_modules(folders):
        if info.name == "base":
            continue
        dotted = f"{package}.{info.name}"
        try:
            module = importlib.import_module(dotted)
        except Exception as e:   # noqa: BLE001 - any failure (SyntaxError included) isolates this one file
            where = f"{shown}/{info.name}/" if info.ispkg else f"{shown}/{info.name}.py"
            broken[where] = _one_line(dotted, e)
            module_files[info.name] = where
            continue
        for _, cls in inspect.getmembers(module, inspect.isclass):
            if issubclass(cls, Method) and cls.__module__ == module.__name__ and cls.NAME:
                if cls.NAME in found and found[cls.NAME] is not cls:
                    other = found[cls.NAME]
                    raise RuntimeError(f"two methods are named {cls.NAME!r}: {other.__module__}.{other.__qualname__} "
                                       f"and {cls.__module__}.{cls.__qualname__}")
                found[cls.NAME] = cls
    return Scan(dict(sorted(found.items())), dict(sorted(broken.items())), module_files)


def scan(package: str | None = None) -> Scan:
    """The methods of `package` (default: this one) and its modules that failed to import; cached."""
    package = package or PACKAGE
    folders = _folders(package)
    key = _fingerprint(folders)
    cached = _cache.get(package)
    if cached is not None and cached[0] == key:
        return cached[1]
    result = _scan(package, folders)
    _cache[package] = (key, result)
    return result


def discover(package: str | None = None) -> dict[str, type[Method]]:
    """NAME -> class for every method whose module imports."""
    return dict(scan(package).methods)


def broken_modules(package: str | None = None) -> dict[str, str]:
    """Module file (e.g. "methods/foo.py") -> its one-line import error ("methods.foo: ExcType: message")."""
    return dict(scan(package).broken)


def get_method(name: str, package: str | None = None) -> type[Method]:
    found = scan(package)
    if name in found.methods:
        return found.methods[name]
    if name in found.module_files:
        where = found.module_files[name]
        raise UsageError(f"method {name!r}: {where} could not be imported: {found.broken[where]}")
    known = list(found.methods)
    close = difflib.get_close_matches(name, known, n=1)
    message = f"unknown method {name!r}; " + (f"did you mean {close[0]!r}? " if close else "")
    message += f"known methods: {', '.join(known)}"
    if found.broken:
        message += ("; the following modules failed to import (one of them may define it): "
                    + "; ".join(f"{where} ({error})" for where, error in found.broken.items()))
    raise UsageError(message)


__all__ = ["Method", "Scan", "broken_modules", "clear_cache", "discover", "get_method", "scan"]
