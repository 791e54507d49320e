"""General-ability retention (as TRACE measures it): balanced accuracy on held-out tasks that are not in the
stream, before the stream (the backbone) and after it (the backbone with the method), through lm-eval's machinery.

- `MethodLM` is an lm-eval `LM` whose answers are the method's test-time model: every request is scored
  through `method.scorer(task)`, the same door the harness's own evaluator uses (so CRAFT's routing,
  per_task's adapter choice and I-LoRA's slow copy all apply).
- The held-out tasks are lm-eval `multiple_choice` tasks built from local files (the offline task packages),
  with the harness's prompt, so "before" is comparable with the stream's zero-shot row.
- The default held-out tasks (GENERAL_TASKS) are in no order offline1-3 or 1-3; a run skips those in its stream.
- Balanced accuracy (mean per-class recall) so that a model collapsed onto one label reads as chance; the change
  gets a paired bootstrap interval over the examples (harness/stats.py)."""
from __future__ import annotations

import hashlib
import json
import logging
import os
import sys
import tempfile
from collections import defaultdict
from contextlib import contextmanager
from functools import partial
from importlib.metadata import version

import numpy as np

from lm_eval.api.model import LM

from core.errors import UsageError
from core.scoring import CausalLMScorer
from harness import clock, stats
from harness.config import device_kind, recorded_value
from harness.evaluation import candidate_logprobs

# The default held-out tasks: in none of orders 1-3 and offline1-3 (the committed sweep's), shipped with the harness
# (offline packages, tasks/data), one per kind of ability where the literature offers one, inputs that mostly fit
# the 64-token cut (RTE, BoolQA and CB lose the question or hypothesis on half their examples or more).
# A run drops those in its own stream (held_out): orders 4-6 keep the three offline ones, offline_long the rest.
GENERAL_TASKS = ("sms_spam", "hutto_movie", "hutto_nyt", "MNLI", "QQP", "COPA", "WiC")
DEFAULT_PER_TASK = 50
TASK_PREFIX = "clh_general_"


# How lm-eval turns a held-out document into requests (the task configs and the inputs' fingerprint both read it).
TASK_FORMAT = {"output_type": "multiple_choice", "doc_to_text": "prompt", "doc_to_choice": "choices",
               "doc_to_target": "label", "target_delimiter": ""}


def token_ids(tok, text: str) -> tuple[int, ...]:
    """A request's context or option as MethodLM scores it."""
    return tuple(tok(text, add_special_tokens=False).input_ids)


class MethodLM(LM):
    """lm-eval model over a method's test-time scorer. Only log-likelihood requests (multiple choice)."""

    def __init__(self, scorer_for, tokenizer, batch_size: int = 16):
        super().__init__()
        self.scorer_for = scorer_for      # task name -> Scorer
        self.tok = tokenizer
        self.batch_size = batch_size

    def loglikelihood(self, requests, disable_tqdm: bool = False):
        results: list = [None] * len(requests)
        # Requests that share a task and a set of continuations (a multiple-choice question's options)
        # are scored together: one prompt forward per context, every option from its KV cache.
        contexts: dict = defaultdict(lambda: defaultdict(list))   # task -> context -> [(request index, cont)]
        for i, req in enumerate(requests):
            context, continuation = req.args
            task = (getattr(req, "task_name", None) or "").removeprefix(TASK_PREFIX)
            contexts[task][context].append((i, continuation))
        for task, by_context in contexts.items():
            groups: dict = defaultdict(list)
            for context, items in by_context.items():
                groups[tuple(sorted({c for _, c in items}))].append((context, items))
            scorer = self.scorer_for(task)
            for options, members in groups.items():
                candidates = [token_ids(self.tok, c) for c in options]
                if any(not c for c in candidates):
                    raise ValueError("empty continuation")
                prompts = [token_ids(self.tok, ctx) or (self.tok.eos_token_id,) for ctx, _ in members]
                scores, greedy = candidate_logprobs(scorer, prompts, candidates, self.tok.pad_token_id,
                                                    self.batch_size)
                col = {c: k for k, c in enumerate(options)}
                for row, (_, items) in enumerate(members):
                    for i, cont in items:
                        results[i] = (float(scores[row, col[cont]]), bool(greedy[row, col[cont]]))
        return results

    def loglikelihood_rolling(self, requests, disable_tqdm: bool = False):
        raise NotImplementedError("MethodLM scores multiple-choice tasks only")

    def generate_until(self, requests, disable_tqdm: bool = False):
        raise NotImplementedError("MethodLM scores multiple-choice tasks only")


def task_rows(name: str, per_task: int, encoder, data_dir: str | None = None) -> list[dict]:
    """A held-out task's lm-eval documents: each test example's prompt, its options and the gold option."""
    import tasks as task_registry
    data = task_registry.load_task(name, data_dir, 1, per_task, 0)
    return [{"prompt": encoder.prompt_string(data, ex.text),
             "choices": [encoder.answer_string(lab) + encoder.tok.eos_token for lab in data.labels],
             "label": data.labels.index(ex.label)} for ex in data.test]


def inputs_fingerprint(rows: list[dict], tok) -> str:
    """What a held-out task's answers are scored from: its documents (task_rows) as MethodLM scores them (token
    ids of prompt and options; the gold option), how lm-eval turns them into requests (TASK_FORMAT) and lm-eval's
    version (which does it; an upgrade scores the backbone's answers again, once a setup, about 40 s). A kept
    "before" answer made from other inputs (a template or a cut changed since) is scored again, as the runner's
    base rows are (runner._measure_backbone)."""
    documents = [[token_ids(tok, r["prompt"]), [token_ids(tok, c) for c in r["choices"]], r["label"]] for r in rows]
    text = json.dumps({"lm_eval": version("lm_eval"), "format": TASK_FORMAT, "documents": documents},
                      sort_keys=True)
    return hashlib.sha1(text.encode()).hexdigest()


def build_tasks(names, per_task: int, encoder, folder: str, data_dir: str | None = None) -> list[dict]:
    """lm-eval task configs (dicts) over JSONL files written to `folder` from the local task data."""
    configs = []
    for name in names:
        path = os.path.join(folder, f"{name}.jsonl")
        with open(path, "w") as f:
            for row in task_rows(name, per_task, encoder, data_dir):
                f.write(json.dumps(row) + "\n")
        configs.append({
            "task": TASK_PREFIX + name, "dataset_path": "json", "dataset_kwargs": {"data_files": {"test": path}},
            "test_split": "test", **TASK_FORMAT,
            "metric_list": [{"metric": "acc", "aggregation": "mean", "higher_is_better": True}],
        })
    return configs


@contextmanager
def quiet_progress():
    """Silence the per-document bars of lm-eval (it builds requests under a bare tqdm) and of datasets
    (it generates a split from the JSONL files), so `general` shows one bar: its own, over runs."""
    import datasets
    import lm_eval.api.task as lm_task
    bars_were_on = datasets.is_progress_bar_enabled()
    datasets.disable_progress_bars()
    library_tqdm = getattr(lm_task, "tqdm", None)
    if library_tqdm is not None:
        lm_task.tqdm = partial(library_tqdm, disable=True)
    try:
        yield
    finally:
        if library_tqdm is not None:
            lm_task.tqdm = library_tqdm
        if bars_were_on:
            datasets.enable_progress_bars()


def evaluate(scorer_for, tokenizer, encoder, names=GENERAL_TASKS, per_task: int = DEFAULT_PER_TASK,
             data_dir: str | None = None, batch_size: int = 16) -> dict[str, tuple[list[int], list[int]]]:
    """(gold, predicted) label indices per held-out task, in its test examples' order, through
    lm_eval.simple_evaluate: lm-eval's samples give each example's option log-likelihoods, and the answer is
    their argmax, as lm-eval's own `acc` takes it (kept per example for balanced accuracy and the bootstrap)."""
    import lm_eval
    from lm_eval.tasks import TaskManager
    logging.getLogger("lm_eval").setLevel(logging.ERROR)
    lm = MethodLM(scorer_for, tokenizer, batch_size)
    with tempfile.TemporaryDirectory(prefix="clh-general-") as folder, quiet_progress():
        configs = build_tasks(names, per_task, encoder, folder, data_dir)
        # The tasks are inline configs: without a manager of its own, simple_evaluate builds one that parses every
        # YAML file of lm-eval's task library (about 55,000 loads, 9-10 s here) on each call.
        out = lm_eval.simple_evaluate(model=lm, tasks=configs, num_fewshot=0, bootstrap_iters=0, log_samples=True,
                                      verbosity="ERROR", task_manager=TaskManager(include_defaults=False))
    answers = {}
    for name in names:
        samples = sorted(out["samples"][TASK_PREFIX + name], key=lambda s: s["doc_id"])
        answers[name] = ([int(s["target"]) for s in samples],
                         [int(np.argmax([ll for ll, _ in s["filtered_resps"]])) for s in samples])
    return answers


def held_out(names, stream_tasks) -> list[str]:
    return [n for n in names if n not in set(stream_tasks)]


def run_config(run_path: str) -> dict:
    """A run's config.json with what run_general reads of it (checked before any model loads)."""
    from harness.rundir import RunDir
    run = RunDir(run_path)
    config = run.read_json("config.json")
    missing = [k for k in ("tasks", "model", "max_input_tokens", "method", "settings", "seed") if k not in config]
    if missing:
        raise UsageError(f"{run.file('config.json')} is corrupt: it has no {', '.join(missing)}")
    return config


def run_general(run_path: str, names=GENERAL_TASKS, per_task: int = DEFAULT_PER_TASK, before_cache: dict | None = None,
                progress: bool = True, device: str | None = None, shared: str | None = None) -> dict:
    """Measure a finished run's general-ability retention; writes general.json into the run directory.
    device: where to measure (default the run's own). shared: a sweep's base-cache file, where the backbone's
    answers ("before", the same for every run of a setup) are kept for the next run's probe."""
    from harness.models import configure_offline, load_model, set_threads
    from harness.prompting import PromptEncoder
    from harness.rundir import RunDir, write_json
    from methods import get_method
    started = clock.now()
    run = RunDir(run_path)
    status = run.status()
    if not status or status.get("state") != "finished":
        raise UsageError(f"{run_path} is not a finished run")
    if not run.has_checkpoint():
        raise UsageError(f"{run_path} has no checkpoint (run records are committed without their weights); "
                         "rerun it with `python -m harness bench ... --overwrite` to measure its general ability")
    config = run_config(run_path)
    configure_offline(config.get("allow_download", False))
    set_threads()
    requested, names = list(names), held_out(names, config["tasks"])
    if not names:
        raise UsageError(f"every general-ability task is in the stream of {run_path}")
    # The literature's held-out tasks read the run's data folder where this machine has it, else the packaged
    # subset, which holds the same test draws (up to 500 a task): a record made elsewhere is still measurable.
    data_dir = config.get("data_dir") if config.get("data_dir") and os.path.isdir(config["data_dir"]) else None
    device = device or config.get("device", "cpu")
    model, tok = load_model(config["model"], device)
    truncate = recorded_value(config, "truncate")
    encoder = PromptEncoder(tok, config["max_input_tokens"], truncate)
    key = (config["model"], config["max_input_tokens"], tuple(names), per_task, device) + \
        ((truncate,) if truncate != "head" else ())   # keys made before the option stay as they were
    cache = before_cache if before_cache is not None else {}
    entries = inputs = None
    if key not in cache and shared:
        entries = _shared_keys(key, names, per_task, data_dir)
        inputs = {n: inputs_fingerprint(task_rows(n, per_task, encoder, data_dir), tok) for n in names}
        kept, stale, unmarked = read_shared_before(shared, entries, inputs)
        if kept is not None:
            cache[key] = kept
            if unmarked:   # entries from before fingerprints were kept get theirs
                write_shared_before(shared, entries, kept, inputs)
        elif stale:
            run.log("general_base_stale", tasks=stale)
            if progress:
                print(f"{run_path}: the shared backbone answers of {', '.join(stale)} were made from other inputs "
                      "than today's; scoring them again", file=sys.stderr)
    if key not in cache:   # the backbone before any training: the same for every run of a setup
        backbone = CausalLMScorer(model)
        cache[key] = evaluate(lambda task: backbone, tok, encoder, names, per_task, data_dir)
        if entries:
            write_shared_before(shared, entries, cache[key], inputs)
    before = cache[key]
    cache_mb = config.get("cache_mb", 0) if config.get("cache", "on") == "on" else 0   # the run's own budget
    settings = recorded_value(config, "settings")   # a setting added since the run: the value it behaved as
    method = get_method(config["method"])(model, tok, settings, config["seed"], cache_mb=cache_mb)
    method.setup()
    method.load_state_dict(run.load_checkpoint(map_location=method.device))
    after = evaluate(method.scorer, tok, encoder, names, per_task, data_dir)
    result = summarize(before, after)
    result.update(per_task=per_task, device=device, requested=requested,
                  skipped_in_stream=[n for n in requested if n not in names],
                  measured_with="lm-eval simple_evaluate, multiple_choice, 0-shot: each example's answer is the "
                                "option of highest log-likelihood (lm-eval's acc); balanced accuracy = mean "
                                "per-class recall",
                  seconds=round(clock.now() - started, 1))   # what the probe cost (a sweep's estimate reads it)
    write_json(run.file("general.json"), result)
    return result


# Raise when evaluate() or MethodLM changes how answers are scored: kept "before" answers are then scored again.
# (Changed prompts need no raise: each entry keeps its inputs' fingerprint, inputs_fingerprint.)
SHARED_VERSION = 1


def _shared_keys(key: tuple, names, per_task: int, data_dir: str | None) -> dict:
    """The base-cache keys of a setup's "before" answers, one entry a held-out task: the task's examples (a
    fingerprint, as the runner's base rows are keyed, so two data sets never share answers), the whole set (lm-eval
    scores the set together, so another set's batches may round another way), the model, input cut, size and
    device type."""
    import tasks as task_registry
    from harness.runner import data_fingerprint
    model, max_tokens, _, _, device, *truncate = key   # truncate: (mode,) where it is not head
    common = [",".join(names), str(model), str(max_tokens), str(per_task), device_kind(device), f"v{SHARED_VERSION}",
              *truncate]
    return {n: "|".join(["general", n, data_fingerprint(task_registry.load_task(n, data_dir, 1, per_task, 0)),
                         *common]) for n in names}


def read_shared_before(path: str, entries: dict, inputs: dict) -> tuple[dict | None, list[str], list[str]]:
    """The backbone's answers kept under `entries` (task -> key) in a base-cache file, or None if any is missing
    or was made from other inputs than `inputs` (task -> inputs_fingerprint; lm-eval scores the set together, so
    one stale task means scoring them all); then the stale tasks, and those kept without a fingerprint (from before
    fingerprints were kept: taken as today's, as the runner takes its base rows)."""
    from harness.runner import read_base_cache
    cache = read_base_cache(path)
    kept = {n: cache.get(k) for n, k in entries.items()}
    if not all(isinstance(e, dict) and isinstance(e.get("gold"), str) for e in kept.values()):
        return None, [], []
    stale = sorted(n for n, e in kept.items() if e.get("inputs", inputs[n]) != inputs[n])
    if stale:
        return None, stale, []
    answers = {n: (stats.decode_labels(e["gold"]), stats.decode_labels(e["predictions"])) for n, e in kept.items()}
    return answers, [], sorted(n for n, e in kept.items() if "inputs" not in e)


def write_shared_before(path: str, entries: dict, before: dict, inputs: dict) -> None:
    """Entries as the runner's base rows are kept (accuracy, predictions, the inputs' fingerprint; here the gold
    labels too)."""
    from harness.runner import write_base_cache
    write_base_cache(path, {k: {"accuracy": stats.percent_correct(before[n][1], before[n][0]),
                                "predictions": stats.encode_labels(before[n][1]),
                                "gold": stats.encode_labels(before[n][0]), "inputs": inputs[n]}
                            for n, k in entries.items()})


def measured_as(run_path: str, names, per_task: int) -> bool:
    """Whether the run's general.json measured these held-out tasks (as asked, before the run's own were dropped) at
    this size."""
    try:
        with open(os.path.join(run_path, "general.json")) as f:
            kept = json.load(f)
    except (OSError, ValueError):
        return False
    if not isinstance(kept, dict):
        return False
    return sorted(stats.general_asked(kept)) == sorted(names) and kept.get("per_task", per_task) == per_task


def summarize(before: dict, after: dict) -> dict:
    """general.json's numbers from the answers before and after ((gold, predicted) per task): balanced accuracy
    (%) per task and over the tasks (their mean), its change with a paired bootstrap interval over the test
    examples, plain accuracy beside it (what general.json held before balanced accuracy), and the answers
    themselves (so that tables can resample them across runs and seeds)."""
    tasks, points = {}, {}
    for name, (gold, was) in before.items():
        if list(after[name][0]) != list(gold):   # the shared "before" must be of these very examples
            raise ValueError(f"general: {name}'s examples differ between the backbone's scores and the run's")
        now = after[name][1]
        point, samples = stats.balanced_change(gold, was, now, name)
        points[name] = (stats.balanced_accuracy(was, gold), stats.balanced_accuracy(now, gold))
        tasks[name] = {"before": round(points[name][0], 2), "after": round(points[name][1], 2),
                       "change": round(point, 2), "change_ci": rounded(stats.interval(samples)),
                       "accuracy_before": stats.percent_correct(was, gold),
                       "accuracy_after": stats.percent_correct(now, gold), "examples": len(gold),
                       "gold": stats.encode_labels(gold), "predictions_before": stats.encode_labels(was),
                       "predictions_after": stats.encode_labels(now)}
    before_mean = float(np.mean([b for b, _ in points.values()]))
    after_mean = float(np.mean([a for _, a in points.values()]))
    accuracy = {k: round(float(np.mean([t[f"accuracy_{k}"] for t in tasks.values()])), 2)
                for k in ("before", "after")}
    return {"metric": stats.BALANCED, "tasks": tasks, "before": round(before_mean, 2), "after": round(after_mean, 2),
            "change": round(after_mean - before_mean, 2),
            "change_ci": rounded(stats.interval(stats.general_samples(tasks))),
            "level": stats.LEVEL, "resamples": stats.RESAMPLES,
            "accuracy": {**accuracy, "change": round(accuracy["after"] - accuracy["before"], 2)}}


def rounded(bounds):
    return None if bounds is None else [round(bounds[0], 2), round(bounds[1], 2)]
