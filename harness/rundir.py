"""A run directory: config.json, log.jsonl, status.json (progress, for resuming), checkpoint-K.pt (method state
after the last finished task), partial-K.pt (mid-task: where task K's training stood at its last save, for
methods that resume there), and at the end matrix.csv, metrics.json, method.json. A run is finished
exactly when status.json says so; that file is written last, and every write is atomic."""
from __future__ import annotations

import contextlib
import errno
import io
import json
import os
import re
import sys
import tempfile
import time

try:
    import fcntl
except ImportError:   # not on Windows: runs there go unguarded against a second process
    fcntl = None

import pandas as pd
import torch

from core.errors import UsageError
from harness.clock import STOP_GAP
from harness.config import recorded_value, resume_keys

RUN_FILES = ("config.json", "status.json", "log.jsonl", "matrix.csv", "metrics.json", "method.json")
TMP_PREFIX = ".tmp-"
CHECKPOINT = re.compile(r"checkpoint-\d+\.pt")   # save_checkpoint's names
PARTIAL = re.compile(r"partial-\d+\.pt")         # save_partial's names


# flock's errors on a filesystem that cannot lock a directory: the run goes ahead without the lock.
UNLOCKABLE = {errno.EBADF, errno.ENOLCK, errno.ENOSYS, errno.EOPNOTSUPP, errno.EINVAL}


class RunInUse(UsageError):
    """Another process holds the run directory (RunDir.lock)."""


def atomic_write(path: str, data: bytes | str) -> None:
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=TMP_PREFIX, suffix=os.path.basename(path))
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data.encode() if isinstance(data, str) else data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def write_report(text: str, out: str | None) -> None:
    """A bench script's markdown report: atomically to `out`, or to stdout when no file is named."""
    if out:
        atomic_write(out, text)
    else:
        print(text, end="")


def write_json(path: str, obj) -> None:
    atomic_write(path, json.dumps(obj, indent=2, sort_keys=False, default=str) + "\n")


def check_folder(path: str, what: str) -> None:
    """A folder the harness will create or write into: refused now, in one line, when it cannot be one (an empty
    name, a regular file, or a path through a regular file), rather than as a traceback once work has begun."""
    if not path or not path.strip():
        raise UsageError(f"{what} is empty")
    if os.path.exists(path) and not os.path.isdir(path):
        raise UsageError(f"{what} {path} is a file, not a folder")
    _check_parent(path, what)


def _check_parent(path: str, what: str) -> None:
    parent = os.path.dirname(os.path.abspath(path))
    while not os.path.exists(parent):
        parent = os.path.dirname(parent)
    if not os.path.isdir(parent):
        raise UsageError(f"{what} {path} cannot be made: {parent} is a file")


def read_json_file(path: str, what: str = "") -> dict:
    """A JSON object from a file the harness wrote (or a user edited); a missing, unreadable or corrupt one is
    a UsageError naming it."""
    try:
        with open(path, encoding="utf-8") as f:
            value = json.load(f)
    except FileNotFoundError:
        raise UsageError(f"{what or path} is missing") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise UsageError(f"cannot read {what or path}: {e}") from None
    if not isinstance(value, dict):
        raise UsageError(f"{what or path} is corrupt: it holds a JSON {type(value).__name__}, not an object")
    return value


def check_base_cache(path: str) -> None:
    """The untouched backbone's shared scores (--base-cache; a sweep's <runs>/base-cache.json): absent, empty, or a
    JSON object whose entries are {"accuracy", "predictions", "inputs"} ("inputs" since 2026-12-06), or a bare
    accuracy (written before predictions were kept: scored again). Anything else is refused before a run starts,
    not silently replaced."""
    if not path.strip():
        raise UsageError("--base-cache is empty")
    if os.path.isdir(path):
        raise UsageError(f"--base-cache {path} is a folder, not a file")
    _check_parent(path, "--base-cache")
    if not os.path.isfile(path) or os.path.getsize(path) == 0:
        return
    hint = "; remove it (it is rebuilt as runs go)"
    try:
        cache = read_json_file(path, f"--base-cache {path}")
    except UsageError as e:
        raise UsageError(f"{e}{hint}") from None
    for key, entry in cache.items():
        value = entry.get("accuracy") if isinstance(entry, dict) else entry
        if isinstance(entry, dict) and not isinstance(entry.get("predictions"), str):
            raise UsageError(f"--base-cache {path} is corrupt: {key!r} holds no predictions{hint}")
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value <= 100:
            raise UsageError(f"--base-cache {path} is corrupt: {key!r} holds {value!r}, not an accuracy{hint}")


def kept_seconds(events: list[dict]) -> float:
    """Wall seconds of the sessions that made a run's saved stages, from its log: each session from its
    `run_start` to its last saved stage (`evaluation`; `run_end` for the session that finished it). The hours
    a run lay interrupted between sessions are not counted, nor the work after a session's last save, which
    the resume redid (and counted in its own session)."""
    total, start, last_saved = 0.0, None, None
    for event in events + [{"event": "run_start"}]:     # a sentinel closes the last session
        if event.get("event") == "run_start":
            if start is not None and last_saved is not None:
                total += last_saved - start
            start, last_saved = event.get("t"), None
        elif event.get("event") in ("evaluation", "run_end") and start is not None:
            last_saved = event["t"]
    return total


STOP_FACTOR = 20   # a gap between two logged steps this many times the stage's median step (and STOP_GAP) was a stop


def stops_between_steps(events: list[dict]) -> dict[str, float]:
    """Per stage, the seconds a run made before harness.clock lay stopped inside its training, read from its log:
    a gap between two consecutive steps of over STOP_GAP beyond the stage's median gap and over STOP_FACTOR times it
    counts, less that median (a step slowed by a busy machine is wall time and stays). Only the steps the stage's
    recorded seconds cover: a task started again drops its earlier steps, a resume mid-task keeps those up to its
    save (the runner logs task_start, then fit task_resumed), and steps of two sittings never pair."""
    gaps: dict[str, list[tuple[int, float]]] = {}   # stage -> (step, seconds since the step before)
    aside: dict[str, list[tuple[int, float]]] = {}  # a restarted stage's earlier steps, until it resumes or steps
    previous = None
    for event in events:
        kind, stage = event.get("event"), event.get("task")
        if kind == "step":
            aside.pop(stage, None)   # trained from its start: the earlier sitting's steps are not in its seconds
            if previous is not None and previous.get("task") == stage \
                    and event.get("step") == previous.get("step", 0) + 1:
                gaps.setdefault(stage, []).append((event["step"], event["t"] - previous["t"]))
        elif kind == "task_start":
            aside[stage], gaps[stage] = gaps.get(stage, []), []
        elif kind == "task_resumed":
            earlier = aside.pop(stage, gaps.get(stage, []))
            gaps[stage] = [(step, gap) for step, gap in earlier if step <= event.get("step", 0)]
        previous = event if kind == "step" else None
    stops = {}
    for stage, found in gaps.items():
        if found:
            typical = float(pd.Series([gap for _, gap in found]).median())
            stops[stage] = sum(gap - typical for _, gap in found
                               if gap - typical > STOP_GAP and gap > STOP_FACTOR * typical)
    return stops


def matrix_csv(R: pd.DataFrame) -> str:
    R = R.copy()
    R.index.name = "after"
    return R.to_csv(float_format="%.2f", lineterminator="\n")


# What a run's config.json keeps of a task's test examples (runner.data_record), each compared where both records
# hold it: their number, label set, gold labels in order, and a hash of their texts and labels (kept since commit
# 329c0d7: two data folders can agree on every gold label and differ in the texts).
EXAMPLE_KEYS = ("test", "labels", "gold", "test_fingerprint")


def other_test_examples(recorded: dict | None, now: dict | None) -> list[str]:
    """The tasks whose test examples differ between a run's record and the data at hand (or another run's record),
    by what both records keep of them (EXAMPLE_KEYS; a record too old to keep one is not compared on it)."""
    recorded = recorded if isinstance(recorded, dict) else {}
    now = now if isinstance(now, dict) else {}
    return [task for task, was in recorded.items() if isinstance(was, dict) and isinstance(now.get(task), dict) and any(
        key in was and key in now[task] and was[key] != now[task][key] for key in EXAMPLE_KEYS)]


class RunDir:
    def __init__(self, path: str):
        self.path = path

    def file(self, name: str) -> str:
        return os.path.join(self.path, name)

    def status(self) -> dict | None:
        """The run's progress; None when the folder holds no run (or does not exist, or is a file)."""
        path = self.file("status.json")
        try:
            with open(path, encoding="utf-8") as f:
                status = json.load(f)
        except (FileNotFoundError, NotADirectoryError):
            return None
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
            raise UsageError(f"{path} is corrupt ({e}); remove the run directory to start over") from None
        checkpoint = status.get("checkpoint") if isinstance(status, dict) else None
        a_file_here = checkpoint is None or isinstance(checkpoint, str) and os.path.basename(checkpoint) == checkpoint
        partial = status.get("partial") if isinstance(status, dict) else None
        partial_here = partial is None or isinstance(partial, dict) and isinstance(partial.get("file"), str) \
            and os.path.basename(partial["file"]) == partial["file"]
        if not isinstance(status, dict) or status.get("state") not in ("running", "finished") \
                or not isinstance(status.get("rows", {}), dict) or not a_file_here or not partial_here:
            raise UsageError(f"{path} is corrupt (not a run's status: a state running or finished, rows, a checkpoint "
                             "file name, a mid-task save's file name); remove the run directory to start over")
        return status

    def read_json(self, name: str) -> dict:
        return read_json_file(self.file(name))

    def is_finished(self) -> bool:
        status = self.status()
        return bool(status and status.get("state") == "finished")

    def has_checkpoint(self) -> bool:
        """Whether the weights its status points at are here (committed records carry none)."""
        status = self.status() or {}
        return bool(status.get("checkpoint")) and os.path.isfile(self.file(status["checkpoint"]))

    @contextlib.contextmanager
    def lock(self):
        """Hold the run directory (made if missing) for this process: a second process on the same run (a sweep's
        cell started again while an orphan of its first attempt still trains) is refused in one line instead of
        writing the same files. An advisory lock on the directory itself, so it leaves no file behind and goes
        with the process however it ends."""
        check_folder(self.path, "--out")
        os.makedirs(self.path, exist_ok=True)
        if fcntl is None:
            yield
            return
        fd = os.open(self.path, os.O_RDONLY)
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                raise RunInUse(f"{self.path} is being run by another process; wait for it to end or stop it") from None
            except OSError as e:
                if e.errno not in UNLOCKABLE:
                    raise
                # NFS (flock emulated by a write lock, which a directory cannot take) or Lustre without flock
                print(f"warning: {self.path} cannot be locked here ({os.strerror(e.errno)}); running it unguarded "
                      "against a second process", file=sys.stderr)
            yield
        finally:
            os.close(fd)   # closing the descriptor releases the lock

    def prepare(self, config: dict, overwrite: bool) -> dict | None:
        """Create or reopen the directory (held by `lock`). Returns the saved progress to resume from, or None for
        a fresh run."""
        check_folder(self.path, "--out")
        for name in RUN_FILES:
            if os.path.isdir(self.file(name)):
                raise UsageError(f"{self.file(name)} is a folder where the run keeps a file; choose another --out")
        if os.path.isdir(self.path) and self._entries():
            if overwrite:   # whatever is there, run or not (a corrupt one included)
                for name in os.listdir(self.path):
                    p = self.file(name)
                    if os.path.isfile(p):
                        os.unlink(p)
            else:
                status = self.status()
                if status is None and not self._creation_cut_short():
                    raise UsageError(f"output directory {self.path} is not empty and holds no run; "
                                     "choose another --out or pass --overwrite")
                if status is None:   # killed between its config and its first status: nothing was kept yet
                    return self._create(config)
                if status["state"] == "finished":
                    raise UsageError(f"output directory {self.path} already holds a finished run; "
                                     "pass --overwrite to replace it")
                try:
                    old = self.read_json("config.json")
                except UsageError as e:
                    raise UsageError(f"{e}; remove the run directory to start over, or pass --overwrite") from None
                self._check_resumable(status)
                # a field missing from an older record holds its default (as tables read it: config.setup_of)
                diff = [k for k in resume_keys() if recorded_value(old, k) != config.get(k)]
                if diff:
                    raise UsageError(f"output directory {self.path} holds an unfinished run with different "
                                     f"settings ({', '.join(diff)}); pass --overwrite or choose another --out")
                other_data = other_test_examples(old.get("data"), config.get("data"))
                if other_data:   # another --data-dir: its finished rows scored other examples than the rest would
                    raise UsageError(f"output directory {self.path} holds an unfinished run made on other test data "
                                     f"({', '.join(other_data)}: another --data-dir?); pass the data it was made "
                                     "with, --overwrite, or another --out")
                self._clear_interrupted_writes(keep=status.get("checkpoint"),
                                               keep_partial=(status.get("partial") or {}).get("file"))
                return status
        return self._create(config)

    def _create(self, config: dict) -> None:
        os.makedirs(self.path, exist_ok=True)
        self._clear_interrupted_writes()
        write_json(self.file("config.json"), config)
        self.save_status({"state": "running", "rows": {}, "started": time.time()})
        return None

    def _entries(self) -> list[str]:
        """What the folder holds, leaving out the temporary files of cut-short writes."""
        return [n for n in os.listdir(self.path) if not n.startswith(TMP_PREFIX)]

    def _creation_cut_short(self) -> bool:
        """The folder holds nothing but a run's config.json (and cut-short writes): a run killed before its first
        status. A config.json of anything else (a user's file, an empty object) is not taken for one."""
        if self._entries() != ["config.json"]:
            return False
        try:
            config = self.read_json("config.json")
        except UsageError:
            return False
        return isinstance(config, dict) and all(k in config for k in ("method", "order", "seed", "tasks"))

    def _clear_interrupted_writes(self, keep: str | None = None, keep_partial: str | None = None) -> None:
        """Remove the temporary files of writes a kill interrupted (atomic_write's), and on a resume the checkpoints
        its status no longer names (one killed between naming its successor and being deleted: save_checkpoint)
        and the mid-task saves it does not name (their task finished, or they were written and never named): with
        the lock held, no write of this run is under way."""
        if not os.path.isdir(self.path):
            return
        for name in os.listdir(self.path):
            stale_checkpoint = keep is not None and CHECKPOINT.fullmatch(name) and name != keep
            if (name.startswith(TMP_PREFIX) or stale_checkpoint) and os.path.isfile(self.file(name)):
                os.unlink(self.file(name))
        self._remove_partials(keep=keep_partial)

    def _check_resumable(self, status: dict) -> None:
        """What the runner reads of an unfinished run's status, checked before it loads a model on it."""
        rows = status.get("rows")
        if not isinstance(rows, dict) or not isinstance(status.get("started"), (int, float)) \
                or not all(isinstance(r, dict) and isinstance(r.get("accuracy"), dict) for r in rows.values()):
            raise UsageError(f"{self.file('status.json')} is corrupt (its rows or start time); remove the run "
                             "directory to start over, or pass --overwrite")

    def save_checkpoint(self, status: dict, index: int, state: dict) -> None:
        """The method's state after stage `index`, under a fresh name; then the status points at it. A crash
        at any moment leaves a status whose checkpoint matches its rows."""
        name = f"checkpoint-{index}.pt"
        self._save_torch(name, state)
        old = status.get("checkpoint")
        status.pop("partial", None)   # its task is finished: its mid-task save has served
        status["checkpoint"] = name
        self.save_status(status)
        if old and old != name and os.path.exists(self.file(old)):
            os.unlink(self.file(old))
        self._remove_partials()

    def save_partial(self, status: dict, index: int, state: dict) -> None:
        """Where task `index`'s training stands (training.MidTask), under one name per task, each save replacing
        the last; then the status names it. The status's step is for people: a resume reads the file's."""
        name = f"partial-{index}.pt"
        self._save_torch(name, state)
        status["partial"] = {"file": name, "task_index": index, "step": state.get("step")}
        self.save_status(status)

    def drop_partial(self, status: dict) -> None:
        """Forget the mid-task save (its task will train from the start), on disk and in `status`, which the
        caller saves (a status naming a missing save is read as none: load_partial)."""
        status.pop("partial", None)
        self._remove_partials()

    def _remove_partials(self, keep: str | None = None) -> None:
        for name in os.listdir(self.path):
            if PARTIAL.fullmatch(name) and name != keep and os.path.isfile(self.file(name)):
                os.unlink(self.file(name))

    def _save_torch(self, name: str, state: dict) -> None:
        buf = io.BytesIO()
        torch.save(state, buf)
        atomic_write(self.file(name), buf.getvalue())

    def load_partial(self, index: int, map_location=None) -> dict | None:
        """Task `index`'s mid-task save, or None when there is none (or it is of another task). An unreadable one
        (which atomic writes should never leave) is reported and dropped: the task trains from its start."""
        partial = (self.status() or {}).get("partial") or {}
        if partial.get("task_index") != index or not os.path.isfile(self.file(partial.get("file", ""))):
            return None
        path = self.file(partial["file"])
        try:
            return torch.load(path, map_location=map_location, weights_only=False)
        except Exception as e:   # as load_checkpoint: torch raises anything from a damaged file
            print(f"warning: {path} is unreadable ({type(e).__name__}); training its task from the start",
                  file=sys.stderr)
            self.log("partial_unreadable", file=partial["file"], error=type(e).__name__)
            return None

    def load_checkpoint(self, map_location=None) -> dict:
        status = self.status() or {}
        if not self.has_checkpoint():
            raise UsageError(f"{self.path} has no checkpoint (run records are committed without their weights)")
        # weights_only=False: method states hold plain Python objects too (replay's memory, CRAFT's groups)
        path = self.file(status["checkpoint"])
        try:
            return torch.load(path, map_location=map_location, weights_only=False)
        except Exception as e:   # torch raises anything from a damaged file: pickle, zip, EOF, value errors
            why = (str(e).strip().splitlines() or [""])[0]
            raise UsageError(f"{path} is corrupt ({type(e).__name__}: {why}); delete it and rerun the run's bench "
                             "command: it trains its finished tasks again") from None

    def add_to_config(self, **fields) -> None:
        """Facts known only once the model is loaded (how its prompts are made), added to config.json."""
        write_json(self.file("config.json"), {**self.read_json("config.json"), **fields})

    def save_status(self, status: dict) -> None:
        write_json(self.file("status.json"), status)

    def timing(self) -> dict:
        """method.json's timing, less the spans the run lay stopped: a stage recorded under harness.clock (its
        `stopped_seconds`) left them out already; an earlier one is cut by the stops its log shows between two
        training steps (stops_between_steps; `stops_from_log` then says so). A stop inside such a stage's
        evaluation stays in: evaluation logs no steps."""
        timing = self.read_json("method.json")["timing"]
        stages = {name: dict(stage) for name, stage in timing.get("per_stage", {}).items()}
        older = [name for name, stage in stages.items()
                 if stage.get("stopped_seconds") is None and stage.get("train_seconds") is not None]
        stops = stops_between_steps(self.events()) if older else {}
        left_out = 0.0
        for name in older:
            cut = min(stops.get(name, 0.0), stages[name]["train_seconds"])
            if cut > 0:
                stages[name].update(train_seconds=round(stages[name]["train_seconds"] - cut, 2),
                                    stopped_seconds=round(cut, 1))
                left_out += cut
        if not left_out:
            return timing
        return {**timing, "per_stage": stages, "stops_from_log": True,
                "stopped_seconds": round(timing.get("stopped_seconds", 0.0) + left_out, 1),
                "train_seconds": round(timing["train_seconds"] - left_out, 2),
                "wall_seconds": round(max(timing["wall_seconds"] - left_out, 0.0), 1)}

    def events(self) -> list[dict]:
        """log.jsonl's events, in order; a torn last line (a crash mid-append) is skipped."""
        try:
            with open(self.file("log.jsonl"), encoding="utf-8") as f:
                lines = f.read().splitlines()
        except FileNotFoundError:
            return []
        events = []
        for line in lines:
            try:
                events.append(json.loads(line))
            except json.JSONDecodeError:
                continue
        return events

    def log(self, event: str, **fields) -> None:
        # Appends are line-sized; a crash loses at most the line being written.
        with open(self.file("log.jsonl"), "a") as f:
            f.write(json.dumps({"t": round(time.time(), 3), "event": event, **fields}, default=str) + "\n")
