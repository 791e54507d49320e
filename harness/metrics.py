"""CL metrics over the accuracy matrix, registered with their direction (lm-evaluation-harness style).

R is a pandas DataFrame: index = rows ("base" for the untouched backbone, then one row per trained task,
in stream order), columns = tasks in stream order, cells = accuracy in percent. R[t][i] of
docs/design.md#metrics is R.iloc[row of task t, i]."""
from __future__ import annotations

import csv
import math
from dataclasses import dataclass
from typing import Callable

import numpy as np
import pandas as pd

from core.errors import UsageError

BASE_ROW = "base"


@dataclass(frozen=True)
class Metric:
    name: str
    # fn(base, trained): base [..., T] (the untouched backbone's row) or None, trained [..., rows, T] (one row per
    # stage); any leading axes are a batch (bootstrap resamples, harness/stats.py). Returns [...] or None when
    # the matrix cannot give the metric.
    fn: Callable[[np.ndarray | None, np.ndarray], np.ndarray | None]
    higher_is_better: bool
    description: str


METRICS: dict[str, Metric] = {}


def register(name: str, higher_is_better: bool, description: str):
    def wrap(fn):
        METRICS[name] = Metric(name, fn, higher_is_better, description)
        return fn
    return wrap


def trained_rows(R: pd.DataFrame) -> pd.DataFrame:
    return R.drop(index=BASE_ROW, errors="ignore")


def _is_stream(trained: np.ndarray) -> bool:
    """One trained row per task (not joint training's single row), two tasks or more."""
    T = trained.shape[-1]
    return trained.shape[-2] == T and T >= 2


@register("AA", True, "average accuracy after the last task: mean_i R[T][i]")
def average_accuracy(base, trained):
    return trained[..., -1, :].mean(-1) if trained.shape[-2] else None


@register("BWT", True, "backward transfer: mean_{i<T} (R[T][i] - R[i][i]); negative = forgetting")
def backward_transfer(base, trained):
    if not _is_stream(trained):
        return None
    T = trained.shape[-1]
    diagonal = np.diagonal(trained, axis1=-2, axis2=-1)[..., : T - 1]
    return (trained[..., T - 1, : T - 1] - diagonal).mean(-1)


@register("FM", False, "forgetting (Chaudhry): mean_{i<T} (max_{i<=l<T} R[l][i] - R[T][i])")
def forgetting(base, trained):
    if not _is_stream(trained):
        return None
    T = trained.shape[-1]
    # R[l][i] for l < i is not part of the formula (and --matrix needed leaves it blank): masked out of the max
    earlier = trained[..., : T - 1, : T - 1]
    below = np.tril(np.ones((T - 1, T - 1), dtype=bool))
    peak = np.where(below, earlier, -np.inf).max(-2)
    return (peak - trained[..., T - 1, : T - 1]).mean(-1)


@register("FWT", True, "forward transfer: mean_{i>1} (R[i-1][i] - R[0][i]), R[0] = base row")
def forward_transfer(base, trained):
    if base is None or not _is_stream(trained):
        return None
    T = trained.shape[-1]
    before = np.diagonal(trained, offset=1, axis1=-2, axis2=-1)   # R[i-1][i], i = 2..T
    return (before - base[..., 1:T]).mean(-1)


@register("LA", True, "learning accuracy: mean_i R[i][i], each task right after training on it (plasticity)")
def learning_accuracy(base, trained):
    if not _is_stream(trained):
        return None
    return np.diagonal(trained, axis1=-2, axis2=-1).mean(-1)


def split_matrix(R: pd.DataFrame) -> tuple[np.ndarray | None, np.ndarray]:
    """(base row or None, trained rows) of a matrix, as the metric functions take them."""
    base = R.loc[BASE_ROW].to_numpy(dtype=float) if BASE_ROW in R.index else None
    return base, trained_rows(R).to_numpy(dtype=float)


def needed_cells(tasks: list[str], row: int) -> list[str]:
    """The tasks whose accuracy after stage `row` (1-based; 0 = the backbone) the metrics above read: all of
    them in the base row (FWT) and the last row (AA), else R[t][i] for i <= t+1 (FM reads the lower triangle,
    BWT its diagonal, FWT the diagonal above it). A 15-task order then scores 134 trained cells, not 225."""
    return list(tasks) if row in (0, len(tasks)) else list(tasks[:row + 1])


def compute(R: pd.DataFrame) -> dict[str, float | None]:
    base, trained = split_matrix(R)
    out = {}
    for name, metric in METRICS.items():
        value = metric.fn(base, trained)
        out[name] = None if value is None or math.isnan(value) else round(float(value), 4)
    return out


JOINT_ROW = "all"   # a method that trains once on every task at once (mtl) has this one trained row


def check_matrix(R: pd.DataFrame, where: str = "matrix") -> None:
    """Raise ValueError unless R is a matrix the metrics can be computed from: a `base` row first (optional),
    then either one trained row per task, named and ordered as the columns (the stream), or the single joint
    row `all`; every cell an accuracy in percent."""
    tasks = [str(c) for c in R.columns]
    if not tasks:
        raise ValueError(f"{where} names no task (its header must be 'after,<task_1>,...,<task_T>')")
    if len(set(tasks)) != len(tasks) or any(not t or t.startswith("Unnamed:") for t in tasks):
        raise ValueError(f"{where} has an empty or repeated task name in its header: {', '.join(tasks)}")
    rows = [str(r) for r in R.index]
    trained = rows[1:] if rows[:1] == [BASE_ROW] else rows
    if BASE_ROW in trained:
        raise ValueError(f"{where}: the '{BASE_ROW}' row must come first, and once")
    if not trained:
        raise ValueError(f"{where} has no trained row (an unfinished run?): the metrics need a row after "
                         f"each task, {', '.join(tasks)}")
    if trained != [JOINT_ROW]:
        for i, (row, task) in enumerate(zip(trained, tasks)):
            if row != task:
                raise ValueError(f"{where}: trained row {i + 1} is {row!r}, expected {task!r} (one row per task, "
                                 "in the order of the columns)")
        if len(trained) < len(tasks):
            raise ValueError(f"{where} stops after task {trained[-1]!r}: no row after "
                             f"{', '.join(tasks[len(trained):])} (an unfinished run?)")
        if len(trained) > len(tasks):
            raise ValueError(f"{where} has {len(trained)} trained rows for {len(tasks)} tasks "
                             f"(extra: {', '.join(trained[len(tasks):])})")
    values = R.to_numpy()
    offset = 0 if rows[:1] == [BASE_ROW] else 1     # stage of the first row: 0 = the backbone
    for i, row in enumerate(rows):
        # --matrix needed leaves the cells no metric reads blank; every other cell is an accuracy
        needed = set(tasks if trained == [JOINT_ROW] else needed_cells(tasks, i + offset))
        for j, task in enumerate(tasks):
            v = values[i, j]
            blank = v is None or (isinstance(v, float) and v != v) or (isinstance(v, str) and not v.strip())
            if blank and task not in needed:
                continue
            if blank or not (isinstance(v, (int, float)) and math.isfinite(v) and 0 <= v <= 100):
                raise ValueError(f"{where}: cell ({row}, {task}) is {'blank' if blank else repr(v)}, "
                                 "not an accuracy in percent (0-100)")


def read_matrix(path: str) -> pd.DataFrame:
    """A matrix.csv, checked (check_matrix). Anything else is a UsageError naming the file: one line on the CLI,
    in `metrics` as in `tables`."""
    try:
        with open(path, newline="", encoding="utf-8") as f:
            lines = [row for row in csv.reader(f) if row]
    except (OSError, UnicodeDecodeError, csv.Error) as e:
        raise UsageError(f"cannot read {path}: {e}") from None
    if not lines or lines[0][0] != "after":
        raise UsageError(f"{path} is not a matrix.csv (its header must start with 'after')")
    header, body = lines[0], lines[1:]
    for k, row in enumerate(body, start=2):
        if len(row) != len(header):
            raise UsageError(f"{path}: line {k} has {len(row)} fields, the header {len(header)}")
    R = pd.DataFrame([[_percent(cell) for cell in row[1:]] for row in body], columns=header[1:],
                     index=pd.Index([row[0] for row in body], name="after"), dtype=object)
    try:
        check_matrix(R, path)
    except ValueError as e:
        raise UsageError(str(e)) from None
    return R.astype(float)


def _percent(cell: str):
    """A cell's number; NaN when blank; the cell itself when it is neither (check_matrix then names it)."""
    if not cell.strip():
        return float("nan")
    try:
        value = float(cell)
    except ValueError:
        return cell
    return value if math.isfinite(value) else cell


def format_metrics(values: dict[str, float | None], intervals: dict | None = None, split: str = "test") -> str:
    """One line per metric; `split` names the examples the intervals resample (a run's --eval-split)."""
    parts = []
    for name, value in values.items():
        arrow = "higher is better" if METRICS[name].higher_is_better else "lower is better"
        bounds = (intervals or {}).get(name)
        ci = f" [{bounds[0]:.2f}, {bounds[1]:.2f}] (95% over {split} examples)" if bounds else ""
        parts.append(f"{name:>4} = {'n/a' if value is None else f'{value:7.2f}'}{ci}   "
                     f"({METRICS[name].description}; {arrow})")
    return "\n".join(parts)
