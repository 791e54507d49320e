"""The generation probe: a finished run's final state answers the run's own evaluation examples by greedy
decoding (exact match after O-LoRA's normalisation), beside the rank answers its record holds. A generated answer
is sorted into: the task's right label, another of its labels, a label of another task of the stream (cross-task
interference, which rank scoring cannot show), or something else. It needs the run's weights (its last
checkpoint, not committed), so it measures runs made on this machine; the measurement is kept in the run's folder
(`protocols.json`, committed with the record), so a report (`bench/protocols.py`) can be rebuilt without them."""
from __future__ import annotations

import os
import sys

import numpy as np

import tasks
from core.errors import UsageError
from harness import clock
from harness.config import recorded_value
from harness.evaluation import Evaluator, generate_predictions, normalize_answer, predict
from harness.models import autocast, load_model
from harness.prompting import PromptEncoder
from harness.rundir import RunDir, write_json
from harness.stats import decode_labels, encode_labels
from methods import get_method

KINDS = ("right", "own_label", "other_task_label", "no_label")
# A task's generated answers, one character per evaluation example in the run's order (its "answers"): which of
# KINDS each is, so a report can resample the examples and pair the runs on them (kept since 2026-12-05; a
# measurement made before has the counts alone).
KIND_CODES = dict(zip(KINDS, "rotn"))


def generated_right(task: dict):
    """A measured task's generated answers as a 0/1 array (1 = right), or None where only counts were kept."""
    answers = task.get("answers")
    if answers is None:
        return None
    return np.array([c == KIND_CODES["right"] for c in answers], dtype=float)


def sort_answer(answer: str, gold: str, own: set[str], others: set[str]) -> str:
    """Which of KINDS a normalised generated answer is (labels normalised the same way)."""
    if answer == gold:
        return "right"
    if answer in own:
        return "own_label"
    if answer in others:
        return "other_task_label"
    return "no_label"


def run_label(config: dict) -> str:
    """A run's method and fixed settings, named as a sweep names its folder (`replay+compute=matched`)."""
    return "+".join([config["method"]] + [f"{k}={v}" for k, v in config.get("method_args", {}).items()])


def final_row(config: dict, status: dict) -> str:
    return "all" if "all" in status["rows"] else config["tasks"][-1]


def measure(path: str, progress: bool = False, unloadable: dict | None = None, device: str | None = None) -> dict:
    """One run's final state under both protocols: per task, rank accuracy (from the record) and the generated
    answers sorted into KINDS (their counts, and each example's kind in `answers`). Every error names the run.
    `unloadable`: {(model, device): why} of the models that failed to load for earlier runs, filled here, so a
    grid's model is not tried once per run."""
    run = RunDir(path)
    status = run.status()
    if not status or status.get("state") != "finished":
        raise UsageError(f"{path} is not a finished run")
    if not run.has_checkpoint():
        raise UsageError(f"{path} has no checkpoint (run records are committed without their weights)")
    config = run.read_json("config.json")
    if recorded_value(config, "eval") != "rank":
        raise UsageError(f"{path} was evaluated with --eval {config['eval']}: its record holds no rank answers")
    data_dir = config.get("data_dir") if config.get("data_dir") and os.path.isdir(config["data_dir"]) else None
    try:
        data = {n: tasks.load_task(n, data_dir, config["train_per_task"], config["test_per_task"], config["seed"],
                                   config.get("eval_split", "test")) for n in config["tasks"]}
        method_cls = get_method(config["method"])
    except UsageError as e:
        raise UsageError(f"{path}: {e}") from None
    for name, d in data.items():   # the same examples the run answered (a data folder gone or changed is not)
        gold = config["data"][name].get("gold")
        if gold is not None and encode_labels([d.labels.index(ex.label) for ex in d.test]) != gold:
            raise UsageError(f"{path}: {name}'s evaluation examples here are not the ones the run answered "
                             "(its data folder changed or is missing on this machine)")
    unloadable = {} if unloadable is None else unloadable
    key = (config["model"], device or config.get("device", "cpu"))   # where to measure: the run's own by default
    if key not in unloadable:
        try:
            model, tok = load_model(*key)
        except UsageError as e:
            unloadable[key] = str(e)
    if key in unloadable:
        raise UsageError(f"{path}: {unloadable[key]}")
    encoder = PromptEncoder(tok, config["max_input_tokens"], recorded_value(config, "truncate"))
    batch, dtype = recorded_value(config, "eval_batch_size"), recorded_value(config, "dtype")
    evaluator = Evaluator(encoder, data, "generate", batch, dtype, progress=False)
    method = method_cls(model, tok, recorded_value(config, "settings"), config["seed"],
                        cache_mb=config.get("cache_mb", 0) if config.get("cache") == "on" else 0)
    method.setup()
    method.load_state_dict(run.load_checkpoint(map_location=method.device))
    row = status["rows"][final_row(config, status)]
    labels = {n: {normalize_answer(label) for label in d.labels} for n, d in data.items()}
    out = {"label": run_label(config), "order": config["order"], "seed": config["seed"], "tasks": {}}
    share = config.get("cache") == "on"
    for k, (name, examples) in enumerate(evaluator.test.items()):
        gold = [ex.label_index for ex in examples]
        ranked = decode_labels(row["predictions"][name])
        scorer = method.scorer(name)
        if k in (0, len(evaluator.test) - 1):   # the restored state must be the run's: rank answers scored again
            with autocast(dtype, scorer.device):
                again = predict(scorer, examples, evaluator.candidates[name], data[name].labels, encoder, "rank",
                                batch, share_prefix=share)
            out.setdefault("restored_check", {})[name] = int(sum(int(a) != int(b) for a, b in zip(again, ranked)))
            scorer = method.scorer(name)
        max_new = max(len(c) for c in evaluator.candidates[name]) + 2
        with autocast(dtype, scorer.device):
            generated = generate_predictions(scorer, examples, encoder.end_id, tok.pad_token_id, max_new,
                                             batch, share_prefix=share)
        others = set().union(*[labels[m] for m in labels if m != name]) - labels[name]
        sorted_answers = [sort_answer(normalize_answer(encoder.decode_answer(g)),
                                      normalize_answer(data[name].labels[y]), labels[name], others)
                          for g, y in zip(generated, gold)]
        kinds = {kind: sorted_answers.count(kind) for kind in KINDS}
        rank = 100.0 * sum(int(p) == y for p, y in zip(ranked, gold)) / len(gold)
        out["tasks"][name] = {"n": len(gold), "rank": rank, "kinds": kinds,
                              "answers": "".join(KIND_CODES[kind] for kind in sorted_answers)}
        if progress:
            print(f"{path}: {name} rank {out['tasks'][name]['rank']:.1f}, generate "
                  f"{100.0 * kinds['right'] / len(gold):.1f}, {kinds}", file=sys.stderr)
    return out


RECORD = "protocols.json"
RECORD_VERSION = 1   # raise when measure() or the sorting of answers changes: kept measurements are then redone


def measured(path: str, again: bool = False, progress: bool = False, unloadable: dict | None = None,
             device: str | None = None) -> dict:
    """measure(path), kept in the run's folder; a kept measurement is reused unless `again`, or unless it was made
    by another version of this code or of another run in that folder (its finishing time differs)."""
    run = RunDir(path)
    if not again and is_measured(path):
        return run.read_json(RECORD)
    started = clock.now()
    result = measure(path, progress, unloadable, device)
    # what the probe cost (a sweep's estimate reads it), and what it measured
    result.update(seconds=round(clock.now() - started, 1), stamp=_stamp(run))
    write_json(run.file(RECORD), result)
    return result


def _stamp(run: RunDir) -> dict:
    return {"version": RECORD_VERSION, "run_finished": (run.status() or {}).get("finished")}


def is_measured(path: str) -> bool:
    """Whether the run's folder keeps a measurement `measured` would reuse (this version's, of this very run)."""
    run = RunDir(path)
    if not os.path.isfile(run.file(RECORD)):
        return False
    try:
        return run.read_json(RECORD).get("stamp") == _stamp(run)
    except UsageError:
        return False
