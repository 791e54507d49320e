"""Figures from finished runs (matplotlib, PNG and PDF): accuracy-matrix heatmaps, per-task accuracy along
the stream, AA against trainable parameters. Bounds are drawn apart (dashed lines, hollow markers)."""
from __future__ import annotations

import os
import statistics

import matplotlib
import pandas as pd

matplotlib.use("Agg")   # files only; no screen on these machines
import matplotlib.pyplot as plt  # noqa: E402

from harness.metrics import trained_rows  # noqa: E402


def _save(fig, folder: str, stem: str) -> list[str]:
    os.makedirs(folder, exist_ok=True)
    out = []
    for ext in ("png", "pdf"):
        path = os.path.join(folder, f"{stem}.{ext}")
        tmp = os.path.join(folder, f".tmp-{stem}.{ext}")
        fig.savefig(tmp, dpi=130, bbox_inches="tight", metadata={"CreationDate": None} if ext == "pdf" else None)
        os.replace(tmp, path)   # atomic, like every other result file
        out.append(path)
    plt.close(fig)
    return out


def _safe(label: str) -> str:
    return label.replace(" [", "+").replace("]", "").replace(", ", "+").replace(" ", "_")


def heatmap(run, folder: str) -> list[str]:
    R = run.matrix
    fig, ax = plt.subplots(figsize=(1.2 + 0.9 * len(R.columns), 1.0 + 0.55 * len(R.index)))
    ax.imshow(R.to_numpy(), vmin=0, vmax=100, cmap="viridis", aspect="auto")
    ax.set_xticks(range(len(R.columns)), R.columns, rotation=30, ha="right")
    ax.set_yticks(range(len(R.index)), ["backbone" if i == "base" else f"after {i}" for i in R.index])
    for i in range(len(R.index)):
        for j in range(len(R.columns)):
            v = R.iat[i, j]
            if v != v:   # a cell the run did not evaluate (--matrix needed): left blank
                continue
            ax.text(j, i, f"{v:.0f}", ha="center", va="center", color="white" if v < 60 else "black", fontsize=8)
    ax.set_title(f"{run.label}, order {run.order}, seed {run.seed}", fontsize=9)
    return _save(fig, folder, f"{_safe(run.label)}-{run.order}-seed{run.seed}")


def stream_curves(runs, order: str, folder: str) -> list[str]:
    """Each task's accuracy after every stage (seed mean), one panel per task, one line per method."""
    rs = [r for r in runs if r.order == order and len(trained_rows(r.matrix)) == len(r.tasks)]
    if not rs:
        return []
    tasks = rs[0].tasks
    labels = sorted({r.label for r in rs})
    fig, axes = plt.subplots(1, len(tasks), figsize=(3.2 * len(tasks), 3.0), sharey=True, squeeze=False)
    colours = _colours(labels)
    for i, task in enumerate(tasks):
        ax = axes[0][i]
        for label in labels:
            mine = [r for r in rs if r.label == label]
            curve = [pd.Series([trained_rows(r.matrix)[task].iloc[k] for r in mine]).mean() for k in range(len(tasks))]
            ax.plot(range(1, len(tasks) + 1), curve, marker="o", ms=3, label=label, color=colours[label],
                    linestyle="--" if mine[0].bound else "-")
        ax.axvline(i + 1, color="grey", lw=0.5)
        ax.set_title(task, fontsize=9)
        ax.set_xticks(range(1, len(tasks) + 1))
        ax.set_xlabel("after task #")
    axes[0][0].set_ylabel("accuracy (%)")
    axes[0][-1].legend(fontsize=7, loc="center left", bbox_to_anchor=(1.02, 0.5))
    fig.suptitle(f"Accuracy of each task along order {order} (grey line: when it is trained; dashed: bounds)",
                 fontsize=9)
    return _save(fig, folder, f"stream-{order}")


def _colours(labels) -> dict:
    # tab20 rather than the 10-colour default: a full grid has more than 10 methods and variants. Its dark
    # shades first, then the light ones, so that neighbours in the legend are not a pale pair.
    cmap = plt.get_cmap("tab20")
    shades = list(range(0, 20, 2)) + list(range(1, 20, 2))
    return {label: cmap(shades[k % 20]) for k, label in enumerate(sorted(labels))}


def _label_heights(points: list[tuple[str, float, float]], gap: float) -> dict:
    """Where to write each point's label: at its own height, pushed up just enough that labels of points with
    the same parameter count (one column on the plot) stay at least `gap` apart."""
    heights = {}
    for params in {p for _, p, _ in points}:
        floor = float("-inf")
        for label, _, aa in sorted((pt for pt in points if pt[1] == params), key=lambda pt: pt[2]):
            heights[label] = max(aa, floor + gap)
            floor = heights[label]
    return heights


def aa_vs_params(runs, folder: str) -> list[str]:
    fig, ax = plt.subplots(figsize=(6.0, 4.2))
    labels = sorted({r.label for r in runs})
    colours = _colours(labels)
    points = []
    for label in labels:
        mine = [r for r in runs if r.label == label]
        params = max(mine[0].card["trainable_parameters"], 1)
        aa = statistics.fmean(r.metrics["AA"] for r in mine)
        bound = mine[0].bound
        ax.scatter([params], [aa], marker="s" if bound else "o", color=colours[label],
                   facecolors="none" if bound else colours[label])
        points.append((label, params, aa))
    lo, hi = min(p[2] for p in points), max(p[2] for p in points)
    heights = _label_heights(points, gap=max(hi - lo, 1.0) * 0.045)
    for label, params, aa in points:
        ax.annotate(label, (params, aa), xytext=(params * 1.25, heights[label]), textcoords="data", fontsize=7,
                    va="center", arrowprops={"arrowstyle": "-", "lw": 0.4, "color": "grey"}
                    if abs(heights[label] - aa) > 1e-9 else None)
    ax.set_xscale("log")
    ax.set_xlim(right=max(p[1] for p in points) * 12)     # room for the labels right of the last column
    ax.set_xlabel("trainable parameters (log; zero shown at 1)")
    ax.set_ylabel("AA (%), mean over the runs of each row")
    ax.set_title("Average accuracy against trainable parameters (hollow squares: bounds)", fontsize=9)
    return _save(fig, folder, "aa_vs_params")


def write_figures(runs, folder: str) -> list[str]:
    written = []
    for run in runs:
        written += heatmap(run, os.path.join(folder, "heatmaps"))
    for order in sorted({r.order for r in runs}):
        written += stream_curves(runs, order, folder)
    written += aa_vs_params(runs, folder)
    remove_stale(folder, written)
    return [os.path.relpath(p, os.path.dirname(folder)) for p in written]


def remove_stale(folder: str, written: list[str]) -> list[str]:
    """Delete figures this module once wrote that no run now backs (a run moved away, an order dropped), so
    that the figures folder always matches the tables. Only its own file names are touched."""
    keep = {os.path.abspath(p) for p in written}
    removed = []
    for sub, pattern in (("heatmaps", ""), ("", "stream-")):
        where = os.path.join(folder, sub)
        if not os.path.isdir(where):
            continue
        for name in os.listdir(where):
            path = os.path.abspath(os.path.join(where, name))
            if name.startswith(pattern) and name.endswith((".png", ".pdf")) and path not in keep:
                os.remove(path)
                removed.append(path)
    return removed
