"""What a task is: data plus the text around it (lm-evaluation-harness style: tasks are data)."""
from __future__ import annotations

import random
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Callable

from core.errors import UsageError


@dataclass(frozen=True)
class Example:
    text: str
    label: str


@dataclass
class Split:
    """One split of a task after loading, with what the loader had to drop."""
    examples: list[Example]
    dropped: int = 0          # rows whose label is not in the task's label set


@dataclass(frozen=True)
class Task:
    name: str
    instruction: str
    labels: tuple[str, ...]
    source: str                                   # where the data comes from, for `harness list`
    # returns (labels, {"train": Split, "test": Split}); literature tasks read their labels from labels.json
    load: Callable[["LoadContext"], tuple[tuple[str, ...], dict[str, Split]]] = field(repr=False)
    family: str = "offline"                       # "offline" (packages) or "literature" (CL_Benchmark)


@dataclass
class TaskData:
    """A loaded, subsampled task: what the runner encodes and the evaluator scores."""
    name: str
    instruction: str
    labels: tuple[str, ...]
    train: list[Example]
    test: list[Example]
    dropped: dict[str, int]       # split -> rows dropped for a label outside the label set
    sizes_full: dict[str, int]    # split -> rows before subsampling


@dataclass(frozen=True)
class LoadContext:
    data_dir: str | None          # O-LoRA CL_Benchmark root, for literature tasks


def stratified_sample(examples: list[Example], n: int | None, seed: int, salt: str) -> list[Example]:
    """Deterministic, label-stratified subsample of size n (all of them if n is None or too big).

    Each label gets a share proportional to its frequency (largest remainder), so a 5% class
    stays about 5%; every present label keeps at least one example when n allows it.
    """
    if n is None or n >= len(examples):
        return list(examples)
    if n <= 0:
        raise UsageError(f"a per-task size must be positive, got {n}")
    by_label: dict[str, list[Example]] = defaultdict(list)
    for ex in examples:
        by_label[ex.label].append(ex)
    labels = sorted(by_label)
    total = len(examples)
    quotas = {lab: n * len(by_label[lab]) / total for lab in labels}
    take = {lab: int(quotas[lab]) for lab in labels}
    if n >= len(labels):  # keep every label present
        for lab in labels:
            take[lab] = max(take[lab], 1)
    rest = n - sum(take.values())
    for lab in sorted(labels, key=lambda l: (-(quotas[l] - int(quotas[l])), l)):
        if rest <= 0:
            break
        if take[lab] < len(by_label[lab]):
            take[lab] += 1
            rest -= 1
    while sum(take.values()) > n:  # the at-least-one rule can overshoot: trim the biggest
        big = max(labels, key=lambda l: (take[l], l))
        take[big] -= 1
    rng = random.Random(f"{seed}:{salt}")
    chosen: list[Example] = []
    for lab in labels:
        pool = list(by_label[lab])
        rng.shuffle(pool)
        chosen.extend(pool[: take[lab]])
    rng.shuffle(chosen)
    return chosen


def hash_split(examples: list[Example], test_fraction: float, salt: str) -> dict[str, Split]:
    """Deterministic train/test split for data that ships without one (independent of any seed,
    so every run and every user sees the same test set)."""
    import hashlib

    train, test = [], []
    for ex in examples:
        h = hashlib.sha1(f"{salt}:{ex.text}".encode()).digest()  # by text: duplicates stay on one side
        (test if h[0] / 256 < test_fraction else train).append(ex)
    return {"train": Split(train), "test": Split(test)}
