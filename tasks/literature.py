"""The literature's tasks, read from O-LoRA's CL_Benchmark layout: <group>/<task>/{train,test,labels}.json.

The full data is read from a directory the user names (--data-dir, then CL_DATA_DIR); without one, from the
subset packaged in tasks/data (built by tasks/pack_data.py; see tasks/data/SOURCES.md), which gives the full
data's test and validation draws and its training draws for the seeds it covers. Nothing is downloaded here.
Instructions follow O-LoRA's instruction config (one per task family).
"""
from __future__ import annotations

import json
import lzma
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


PACKAGED = "packaged"
PACKAGED_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "data")
PACKAGED_FORMAT = 1


def packaged_path(name: str) -> str:
    return os.path.join(PACKAGED_DIR, f"{name}.json.xz")


def data_source(data_dir: str | None) -> str:
    """Where literature tasks read their rows: a CL_Benchmark directory (--data-dir, then CL_DATA_DIR; its
    absolute path) or PACKAGED."""
    data_dir = data_dir or os.environ.get(DATA_ENV)
    if not data_dir:
        return PACKAGED
    if not os.path.isdir(data_dir):
        raise UsageError(f"data directory {data_dir!r} (from --data-dir or {DATA_ENV}) does not exist")
    return os.path.abspath(data_dir)


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
    for i, row in enumerate(rows):
        if not isinstance(row, dict) or "label" not in row or "sentence" not in row:
            raise UsageError(f"malformed row {i} in {path}: expected an object with 'label' and 'sentence'")
    return to_split(rows, labels, path)


def to_split(rows: list[dict], labels: set[str], where: str) -> Split:
    """Rows -> Split, dropping rows whose label is not in labels.json. A row without a sentence is one the
    packaged data leaves out: it keeps its place and label, and goes into `missing`."""
    kept, missing, dropped = [], set(), 0
    for row in rows:
        label = str(row["label"]).strip()
        if label not in labels:
            dropped += 1
            continue
        if "sentence" not in row:
            missing.add(len(kept))
        kept.append(Example(str(row.get("sentence", "")), label))
    if len(kept) == len(missing):
        raise UsageError(f"no usable rows in {where} ({len(rows)} rows, {dropped} with a label outside labels.json)")
    return Split(kept, dropped, frozenset(missing))


def read_packaged(name: str) -> tuple[tuple[str, ...], dict[str, Split]]:
    """A task's packaged subset: labels.json, and per split every row's label with the packaged rows verbatim."""
    path = packaged_path(name)
    try:
        with lzma.open(path, "rt", encoding="utf-8") as f:
            pack = json.load(f)
    except FileNotFoundError:
        raise UsageError(f"task {name!r} has no packaged data ({path}); pass --data-dir DIR with O-LoRA's "
                         f"CL_Benchmark (python -m harness data fetch --allow-download gets it)") from None
    except (OSError, lzma.LZMAError, json.JSONDecodeError, UnicodeDecodeError) as e:
        raise UsageError(f"damaged packaged data {path}: {e}") from None
    if pack.get("format") != PACKAGED_FORMAT:
        raise UsageError(f"packaged data {path} has format {pack.get('format')!r}, this code reads {PACKAGED_FORMAT}")
    labels = tuple(str(x) for x in pack["labels"])
    splits = {}
    for split, packed in pack["splits"].items():
        rows = [{"label": label} for label in packed["row_labels"]]
        for place, row in packed["rows"]:
            rows[place] = row
        splits[split] = to_split(rows, set(labels), f"{path} ({split})")
    return labels, splits


def _loader(name: str, rel: str):
    def load(ctx: LoadContext) -> tuple[tuple[str, ...], dict[str, Split]]:
        source = data_source(ctx.data_dir)
        if source == PACKAGED:
            return read_packaged(name)
        root = os.path.join(source, rel)
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
                           source=f"O-LoRA CL_Benchmark {rel} (--data-dir / {DATA_ENV}; else the packaged subset)",
                           load=_loader(name, rel), family="literature")
    return tasks
