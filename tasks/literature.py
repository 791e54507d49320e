"""The literature's tasks, read from O-LoRA's CL_Benchmark layout: <group>/<task>/{train,test,labels}.json.

The directory is named by the user (--data-dir or CL_DATA_DIR); nothing is downloaded.
Instructions follow O-LoRA's instruction config (one per task family).
"""
from __future__ import annotations

import json
import os

from core.errors import UsageError
from tasks.base import Example, LoadContext, Split, Task

DATA_ENV = "CL_DATA_DIR"

_TOPIC = "What is the topic of the following paragraph? Choose one from the option."
_SENTIMENT = "What is the sentiment of the following paragraph? Choose one from the option."
_NLI = ('What is the logical relationship between the "sentence 1" and the "sentence 2"? '
        "Choose one from the option.")

# name -> (relative folder, instruction)
LITERATURE = {
    "dbpedia": ("TC/dbpedia", _TOPIC),
    "agnews": ("TC/agnews", _TOPIC),
    "yahoo": ("TC/yahoo", _TOPIC),
    "amazon": ("SC/amazon", _SENTIMENT),
    "yelp": ("SC/yelp", _SENTIMENT),
    "IMDB": ("SC/IMDB", _SENTIMENT),
    "SST-2": ("SC/SST-2", _SENTIMENT),
    "MNLI": ("NLI/MNLI", _NLI),
    "CB": ("NLI/CB", _NLI),
    "RTE": ("NLI/RTE", _NLI),
    "QQP": ("QQP/QQP", 'Whether the "first sentence" and the "second sentence" have the same meaning? '
                       "Choose one from the option."),
    "BoolQA": ("BoolQA/BoolQA", "According to the following passage, is the question true or false? "
                                "Choose one from the option."),
    "MultiRC": ("MultiRC/MultiRC", "According to the following passage and question, is the candidate "
                                   "answer true or false? Choose one from the option."),
    "WiC": ("WiC/WiC", "Given a word and two sentences, is the word used with the same sense in both "
                       "sentences? Choose one from the option."),
    "COPA": ("COPA/COPA", "Which sentence is the more likely cause or effect? Choose one from the option."),
}


def resolve_data_dir(data_dir: str | None, task: str) -> str:
    data_dir = data_dir or os.environ.get(DATA_ENV)
    if not data_dir:
        raise UsageError(f"task {task!r} needs the O-LoRA CL_Benchmark data: pass --data-dir DIR "
                         f"or set {DATA_ENV} (e.g. {DATA_ENV}=../shared/data/CL_Benchmark)")
    if not os.path.isdir(data_dir):
        raise UsageError(f"data directory {data_dir!r} (from --data-dir or {DATA_ENV}) does not exist")
    return data_dir


def _read_json(path: str):
    if not os.path.isfile(path):
        raise UsageError(f"missing data file {path} (expected O-LoRA's layout <group>/<task>/"
                         f"{{train,test,labels}}.json under --data-dir / {DATA_ENV})")
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except PermissionError:
        raise UsageError(f"cannot read data file {path}: permission denied") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise UsageError(f"malformed JSON in {path}: {e}") from None


def read_split(path: str, labels: set[str]) -> Split:
    rows = _read_json(path)
    if not isinstance(rows, list):
        raise UsageError(f"malformed data file {path}: expected a JSON list of {{label, sentence}} rows")
    kept, dropped = [], 0
    for i, row in enumerate(rows):
        if not isinstance(row, dict) or "label" not in row or "sentence" not in row:
            raise UsageError(f"malformed row {i} in {path}: expected an object with 'label' and 'sentence'")
        label = str(row["label"]).strip()
        if label not in labels:
            dropped += 1
            continue
        kept.append(Example(str(row["sentence"]), label))
    if not kept:
        raise UsageError(f"no usable rows in {path} ({len(rows)} rows, {dropped} with a label outside labels.json)")
    return Split(kept, dropped)


def _loader(name: str, rel: str):
    def load(ctx: LoadContext) -> tuple[tuple[str, ...], dict[str, Split]]:
        root = os.path.join(resolve_data_dir(ctx.data_dir, name), rel)
        labels = _read_json(os.path.join(root, "labels.json"))
        if not isinstance(labels, list) or not labels:
            raise UsageError(f"malformed {root}/labels.json: expected a non-empty JSON list of label strings")
        labels = tuple(str(x) for x in labels)
        return labels, {split: read_split(os.path.join(root, f"{split}.json"), set(labels))
                        for split in ("train", "test")}
    return load


def read_labels(data_dir: str | None, name: str) -> tuple[str, ...] | None:
    """Label set of a literature task, if its data is reachable (for `harness list`)."""
    rel = LITERATURE[name][0]
    root = data_dir or os.environ.get(DATA_ENV)
    path = os.path.join(root, rel, "labels.json") if root else None
    if path and os.path.isfile(path):
        try:
            return tuple(str(x) for x in _read_json(path))
        except UsageError:
            return None
    return None


def literature_tasks(data_dir: str | None) -> dict[str, Task]:
    """Task objects; their label set is read from labels.json when the task is loaded."""
    tasks = {}
    for name, (rel, instruction) in LITERATURE.items():
        tasks[name] = Task(name=name, instruction=instruction, labels=read_labels(data_dir, name) or (),
                           source=f"O-LoRA CL_Benchmark {rel} (--data-dir / {DATA_ENV})",
                           load=_loader(name, rel), family="literature")
    return tasks
