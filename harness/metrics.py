"""CL metrics over the accuracy matrix, registered with their direction (lm-evaluation-harness style).

R is a pandas DataFrame: index = rows ("base" for the untouched backbone, then one row per trained task,
in stream order), columns = tasks in stream order, cells = accuracy in percent. R[t][i] of
docs/design.md#metrics is R.iloc[row of task t, i]."""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import pandas as pd

BASE_ROW = "base"


@dataclass(frozen=True)
class Metric:
    name: str
    fn: Callable[[pd.DataFrame], float | None]
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


def _stream(R: pd.DataFrame):
    """(A, T): A[t][i] for t = 1..T as a list of rows aligned with the columns; None if not a full stream."""
    rows = trained_rows(R)
    T = len(R.columns)
    if len(rows) != T:
        return None, T
    return rows.to_numpy(dtype=float), T


@register("AA", True, "average accuracy after the last task: mean_i R[T][i]")
def average_accuracy(R: pd.DataFrame) -> float | None:
    rows = trained_rows(R)
    return float(rows.iloc[-1].mean()) if len(rows) else None


@register("BWT", True, "backward transfer: mean_{i<T} (R[T][i] - R[i][i]); negative = forgetting")
def backward_transfer(R: pd.DataFrame) -> float | None:
    A, T = _stream(R)
    if A is None or T < 2:
        return None
    return float(sum(A[T - 1][i] - A[i][i] for i in range(T - 1)) / (T - 1))


@register("FM", False, "forgetting (Chaudhry): mean_{i<T} (max_{i<=l<T} R[l][i] - R[T][i])")
def forgetting(R: pd.DataFrame) -> float | None:
    A, T = _stream(R)
    if A is None or T < 2:
        return None
    return float(sum(max(A[l][i] for l in range(i, T - 1)) - A[T - 1][i] for i in range(T - 1)) / (T - 1))


@register("FWT", True, "forward transfer: mean_{i>1} (R[i-1][i] - R[0][i]), R[0] = base row")
def forward_transfer(R: pd.DataFrame) -> float | None:
    A, T = _stream(R)
    if A is None or T < 2 or BASE_ROW not in R.index:
        return None
    base = R.loc[BASE_ROW].to_numpy(dtype=float)
    return float(sum(A[i - 1][i] - base[i] for i in range(1, T)) / (T - 1))


def needed_cells(tasks: list[str], row: int) -> list[str]:
    """The tasks whose accuracy after stage `row` (1-based; 0 = the backbone) the metrics above read: all of
    them in the base row (FWT) and the last row (AA), else R[t][i] for i <= t+1 (FM reads the lower triangle,
    BWT its diagonal, FWT the diagonal above it). A 15-task order then scores 134 trained cells, not 225."""
    return list(tasks) if row in (0, len(tasks)) else list(tasks[:row + 1])


def compute(R: pd.DataFrame) -> dict[str, float | None]:
    out = {}
    for name, metric in METRICS.items():
        value = metric.fn(R)
        out[name] = None if value is None or math.isnan(value) else round(value, 4)
    return out


def read_matrix(path: str) -> pd.DataFrame:
    R = pd.read_csv(path, index_col=0)
    if R.index.name != "after":
        raise ValueError(f"{path} is not a matrix.csv (its header must start with 'after')")
    R.index = R.index.astype(str)
    return R.astype(float)


def format_metrics(values: dict[str, float | None]) -> str:
    parts = []
    for name, value in values.items():
        arrow = "higher is better" if METRICS[name].higher_is_better else "lower is better"
        parts.append(f"{name:>4} = {'n/a' if value is None else f'{value:7.2f}'}   ({METRICS[name].description}; {arrow})")
    return "\n".join(parts)
