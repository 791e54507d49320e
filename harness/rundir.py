"""A run directory: config.json, log.jsonl, status.json (progress, for resuming), checkpoint.pt (method state
after the last finished task), and at the end matrix.csv, metrics.json, method.json. A run is finished
exactly when status.json says so; that file is written last, and every write is atomic."""
from __future__ import annotations

import io
import json
import os
import tempfile
import time

import pandas as pd
import torch

from core.errors import UsageError
from harness.config import resume_keys


def atomic_write(path: str, data: bytes | str) -> None:
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=".tmp-", suffix=os.path.basename(path))
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


def write_json(path: str, obj) -> None:
    atomic_write(path, json.dumps(obj, indent=2, sort_keys=False, default=str) + "\n")


def matrix_csv(R: pd.DataFrame) -> str:
    R = R.copy()
    R.index.name = "after"
    return R.to_csv(float_format="%.2f", lineterminator="\n")


class RunDir:
    def __init__(self, path: str):
        self.path = path

    def file(self, name: str) -> str:
        return os.path.join(self.path, name)

    def status(self) -> dict | None:
        try:
            with open(self.file("status.json")) as f:
                return json.load(f)
        except FileNotFoundError:
            return None
        except json.JSONDecodeError:
            raise UsageError(f"{self.file('status.json')} is corrupt; remove the run directory to start over") from None

    def is_finished(self) -> bool:
        status = self.status()
        return bool(status and status.get("state") == "finished")

    def has_checkpoint(self) -> bool:
        """Whether the weights its status points at are here (committed records carry none)."""
        status = self.status() or {}
        return bool(status.get("checkpoint")) and os.path.isfile(self.file(status["checkpoint"]))

    def prepare(self, config: dict, overwrite: bool) -> dict | None:
        """Create or reopen the directory. Returns the saved progress to resume from, or None for a fresh run."""
        if os.path.isdir(self.path) and os.listdir(self.path):
            status = self.status()
            if status is None and not overwrite:
                raise UsageError(f"output directory {self.path} is not empty and holds no run; "
                                 "choose another --out or pass --overwrite")
            if status and status.get("state") == "finished" and not overwrite:
                raise UsageError(f"output directory {self.path} already holds a finished run; "
                                 "pass --overwrite to replace it")
            if overwrite:
                for name in os.listdir(self.path):
                    p = self.file(name)
                    if os.path.isfile(p):
                        os.unlink(p)
            else:
                with open(self.file("config.json")) as f:
                    old = json.load(f)
                diff = [k for k in resume_keys() if old.get(k) != config.get(k)]
                if diff:
                    raise UsageError(f"output directory {self.path} holds an unfinished run with different "
                                     f"settings ({', '.join(diff)}); pass --overwrite or choose another --out")
                return status
        os.makedirs(self.path, exist_ok=True)
        write_json(self.file("config.json"), config)
        self.save_status({"state": "running", "rows": {}, "started": time.time()})
        return None

    def save_checkpoint(self, status: dict, index: int, state: dict) -> None:
        """The method's state after stage `index`, under a fresh name; then the status points at it. A crash
        at any moment leaves a status whose checkpoint matches its rows."""
        name = f"checkpoint-{index}.pt"
        buf = io.BytesIO()
        torch.save(state, buf)
        atomic_write(self.file(name), buf.getvalue())
        old = status.get("checkpoint")
        status["checkpoint"] = name
        self.save_status(status)
        if old and old != name and os.path.exists(self.file(old)):
            os.unlink(self.file(old))

    def load_checkpoint(self, map_location=None) -> dict:
        status = self.status() or {}
        if not self.has_checkpoint():
            raise UsageError(f"{self.path} has no checkpoint (run records are committed without their weights)")
        # weights_only=False: method states hold plain Python objects too (replay's memory, CRAFT's groups)
        return torch.load(self.file(status["checkpoint"]), map_location=map_location, weights_only=False)

    def save_status(self, status: dict) -> None:
        write_json(self.file("status.json"), status)

    def log(self, event: str, **fields) -> None:
        # Appends are line-sized; a crash loses at most the line being written.
        with open(self.file("log.jsonl"), "a") as f:
            f.write(json.dumps({"t": round(time.time(), 3), "event": event, **fields}, default=str) + "\n")
