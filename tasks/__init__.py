"""Task registry and orders: tasks -> stream."""
from __future__ import annotations

from core.errors import UsageError
from tasks.base import Example, LoadContext, Split, Task, TaskData, stratified_sample
from tasks.literature import DATA_ENV, literature_tasks
from tasks.offline import offline_tasks

# O-LoRA's orders, verbatim (docs/design.md#orders).
ORDERS: dict[str, list[str]] = {
    "1": ["dbpedia", "amazon", "yahoo", "agnews"],
    "2": ["dbpedia", "amazon", "agnews", "yahoo"],
    "3": ["yahoo", "amazon", "agnews", "dbpedia"],
    "4": ["MNLI", "CB", "WiC", "COPA", "QQP", "BoolQA", "RTE", "IMDB", "yelp", "amazon", "SST-2", "dbpedia",
          "agnews", "MultiRC", "yahoo"],
    "5": ["MultiRC", "BoolQA", "WiC", "MNLI", "CB", "COPA", "QQP", "RTE", "IMDB", "SST-2", "dbpedia", "agnews",
          "yelp", "amazon", "yahoo"],
    "6": ["yelp", "amazon", "MNLI", "CB", "COPA", "QQP", "RTE", "IMDB", "SST-2", "dbpedia", "agnews", "yahoo",
          "MultiRC", "BoolQA", "WiC"],
    # The project's own orders over the offline tasks. offline1-3 mirror orders 1-3's shape: a topic
    # task, a sentiment task, a question-type task and a second sentiment domain (shared output space).
    "offline1": ["bbc", "hutto_amazon", "trec", "hutto_tweets"],
    "offline2": ["bbc", "hutto_amazon", "hutto_tweets", "trec"],
    "offline3": ["trec", "hutto_amazon", "hutto_tweets", "bbc"],
    "offline_long": ["sms_spam", "hutto_movie", "bbc", "hutto_amazon", "trec", "hutto_nyt", "hutto_tweets"],
}
DEFAULT_ORDER = "offline1"


def all_tasks(data_dir: str | None = None) -> dict[str, Task]:
    return {**offline_tasks(), **literature_tasks(data_dir)}


def get_order(order: str) -> list[str]:
    """A named order, or task names joined by commas or '+' (a custom stream; '+' suits folder names and
    the comma-separated lists of `sweep --orders`)."""
    if order in ORDERS:
        return list(ORDERS[order])
    if "," in order or "+" in order:
        names = [n.strip() for n in order.replace("+", ",").split(",") if n.strip()]
        if not names:
            raise UsageError(f"order {order!r} names no task")
        known = all_tasks()
        unknown = [n for n in names if n not in known]
        if unknown:
            raise UsageError(f"unknown task {unknown[0]!r} in order {order!r}; known tasks: {', '.join(known)}")
        if len(set(names)) != len(names):
            raise UsageError(f"order {order!r} names a task twice")
        return names
    raise UsageError(f"unknown order {order!r}; known orders: {', '.join(ORDERS)} "
                     "(or task names joined by ',' or '+')")


def get_task(name: str, data_dir: str | None = None) -> Task:
    tasks = all_tasks(data_dir)
    if name not in tasks:
        raise UsageError(f"unknown task {name!r}; known tasks: {', '.join(tasks)}")
    return tasks[name]


def load_task(name: str, data_dir: str | None, n_train: int | None, n_test: int | None, seed: int) -> TaskData:
    """Load one task and subsample it, stratified by label and deterministic given the seed."""
    for n, flag in ((n_train, "--train-per-task"), (n_test, "--test-per-task")):
        if n is not None and n <= 0:
            raise UsageError(f"{flag} must be a positive number of examples, got {n}")
    task = get_task(name, data_dir)
    labels, splits = task.load(LoadContext(data_dir))
    for split_name in ("train", "test"):
        if not splits[split_name].examples:
            raise UsageError(f"task {name!r} has no rows in its {split_name} split")
    return TaskData(
        name=name, instruction=task.instruction, labels=tuple(labels),
        train=stratified_sample(splits["train"].examples, n_train, seed, f"{name}:train"),
        # The test subsample does not depend on the seed: seeds then vary training, not the yardstick.
        test=stratified_sample(splits["test"].examples, n_test, 0, f"{name}:test"),
        dropped={k: s.dropped for k, s in splits.items()},
        sizes_full={k: len(s.examples) for k, s in splits.items()},
    )


__all__ = ["ORDERS", "DEFAULT_ORDER", "DATA_ENV", "Example", "Task", "TaskData", "all_tasks", "get_order",
           "get_task", "load_task", "stratified_sample"]
