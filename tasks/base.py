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
    """One split of a task after loading, with what the loader had to drop.

    Packaged data holds a subset of a split's rows but keeps every row's place and label, so that draws made
    on it are the full data's draws; `missing` names the places whose text is not packaged (their Example
    has the right label and an empty text, and every draw skips them)."""
    examples: list[Example]
    dropped: int = 0          # rows whose label is not in the task's label set
    missing: frozenset[int] = frozenset()


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
    source: str = ""              # where the rows came from: a package, a CL_Benchmark folder or "packaged"


@dataclass(frozen=True)
class LoadContext:
    data_dir: str | None          # O-LoRA CL_Benchmark root, for literature tasks


def _take(counts: dict[str, int], n: int) -> dict[str, int]:
    """Examples per label for a draw of n: each label's share proportional to its frequency (largest remainder);
    every present label keeps at least one when n allows it."""
    labels = sorted(counts)
    total = sum(counts.values())
    quotas = {lab: n * counts[lab] / total for lab in labels}
    take = {lab: int(quotas[lab]) for lab in labels}
    if n >= len(labels):  # keep every label present
        for lab in labels:
            take[lab] = max(take[lab], 1)
    rest = n - sum(take.values())
    for lab in sorted(labels, key=lambda l: (-(quotas[l] - int(quotas[l])), l)):
        if rest <= 0:
            break
        if take[lab] < counts[lab]:
            take[lab] += 1
            rest -= 1
    while sum(take.values()) > n:  # the at-least-one rule can overshoot: trim the biggest
        big = max(labels, key=lambda l: (take[l], l))
        take[big] -= 1
    return take


def _shuffled(examples: list[Example], seed: int, salt: str) -> tuple[random.Random, dict[str, list[int]]]:
    """Each label's places in a seeded random order (which depends only on the label counts, not the texts),
    and the generator, to shuffle the draw with afterwards."""
    by_label: dict[str, list[int]] = defaultdict(list)
    for i, ex in enumerate(examples):
        by_label[ex.label].append(i)
    rng = random.Random(f"{seed}:{salt}")
    for lab in sorted(by_label):
        rng.shuffle(by_label[lab])
    return rng, by_label


def stratified_sample(examples: list[Example], n: int | None, seed: int, salt: str,
                      skip: frozenset[int] | set[int] = frozenset()) -> list[Example]:
    """Deterministic, label-stratified subsample of size n (all of them if n is None or too big).

    Each label gets a share proportional to its frequency (largest remainder), so a 5% class
    stays about 5%; every present label keeps at least one example when n allows it. Each label takes the
    first places of its seeded order that are not in `skip` (the validation split, unpackaged rows): rows
    outside `skip` are drawn exactly as without it, so carving a split out changes only the draws that hit it.
    """
    # against the whole split, skipped rows included: a draw from packaged rows takes the full data's path
    if n is None or n >= len(examples):
        return [ex for i, ex in enumerate(examples) if i not in skip]
    return [examples[i] for i in draw_places(examples, n, seed, salt, skip)]


def draw_places(examples: list[Example], n: int, seed: int, salt: str,
                skip: frozenset[int] | set[int] = frozenset()) -> list[int]:
    """The places stratified_sample draws, in its order."""
    if n <= 0:
        raise UsageError(f"a per-task size must be positive, got {n}")
    rng, order = _shuffled(examples, seed, salt)
    take = _take({lab: len(places) for lab, places in order.items()}, n)
    chosen: list[int] = []
    for lab in sorted(order):
        chosen.extend([i for i in order[lab] if i not in skip][: take[lab]])
    rng.shuffle(chosen)
    return chosen


def draw_cover(examples: list[Example], n_max: int, seed: int, salt: str,
               skip: frozenset[int] | set[int] = frozenset()) -> set[int]:
    """The places that stratified_sample(examples, n, seed, salt, skip) reads for any n <= n_max (the drawn
    rows and the skipped ones before them): a data subset that holds them gives the same draws."""
    _, order = _shuffled(examples, seed, salt)
    counts = {lab: len(places) for lab, places in order.items()}
    need = {lab: 0 for lab in order}
    for n in range(1, min(n_max, len(examples)) + 1):
        for lab, k in _take(counts, n).items():
            need[lab] = max(need[lab], k)
    cover: set[int] = set()
    for lab, places in order.items():
        found = 0
        for i in places:
            if found >= need[lab]:
                break
            cover.add(i)
            found += i not in skip
    return cover


def hash_split(examples: list[Example], test_fraction: float, salt: str) -> dict[str, Split]:
    """Deterministic train/test split for data that ships without one (independent of any seed,
    so every run and every user sees the same test set)."""
    import hashlib

    train, test = [], []
    for ex in examples:
        h = hashlib.sha1(f"{salt}:{ex.text}".encode()).digest()  # by text: duplicates stay on one side
        (test if h[0] / 256 < test_fraction else train).append(ex)
    return {"train": Split(train), "test": Split(test)}
