"""Figures from finished runs (matplotlib, PNG and PDF): accuracy-matrix heatmaps, per-task accuracy along
the stream with 95% bands, and per block of orders AA against the parameters kept at the end of the stream,
with 95% intervals and the Pareto front of the continual learners. Bounds are drawn apart (dashed lines,
hollow markers). Intervals are the tables' (Student's t over the runs, each task's test examples resampled)."""
from __future__ import annotations

import os
from collections import Counter

import matplotlib
import numpy as np
import pandas as pd

matplotlib.use("Agg")   # files only; no screen on these machines
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.ticker import NullFormatter  # noqa: E402

from core.errors import UsageError  # noqa: E402
from harness import stats  # noqa: E402
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


def heatmap_names(runs) -> list[str]:
    """Each run's heatmap file name (no extension): the spec it was made under, so that a default moving later
    renames its row, not its file. Two runs of one stream can share a spec where one was kept under its former
    default's folder beside today's run (craft's batch-check cells): those take their run folder's name instead
    (runs/<folder>/<order>/seed<N>), which no default moves. Names that still collide are refused."""
    by_spec = [f"{_safe(r.spec)}-{r.order}-seed{r.seed}" for r in runs]
    shared = {n for n, k in Counter(by_spec).items() if k > 1}
    names = [f"{_safe(r.folder)}-{r.order}-seed{r.seed}" if n in shared else n for r, n in zip(runs, by_spec)]
    twice = sorted(n for n, k in Counter(names).items() if k > 1)
    if twice:
        raise UsageError(f"two runs would draw one heatmap, {twice[0]}.png: "
                         + " and ".join(r.path for r, n in zip(runs, names) if n == twice[0]))
    return names


def heatmap(run, folder: str, name: str, note: str = "") -> list[str]:
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
    ax.set_title(f"{run.label}, order {run.order}, seed {run.seed}{note}", fontsize=9)
    return _save(fig, folder, name)


def stream_curves(runs, order: str, folder: str, suffix: str = "", note: str = "") -> list[str]:
    """Each task's accuracy after every stage (seed mean), one panel per task, one line per method."""
    rs = [r for r in runs if r.order == order and len(trained_rows(r.matrix)) == len(r.tasks)]
    if not rs:
        return []
    tasks = rs[0].tasks
    labels = sorted({r.label for r in rs})
    fig, axes = plt.subplots(1, len(tasks), figsize=(3.2 * len(tasks), 3.0), sharey=True, squeeze=False)
    colours = _colours(labels)
    resampled = {r.path: r.scores.resampled() for r in rs if r.scores is not None}   # [resamples, rows, tasks]
    banded = []   # how many seeds each banded line averages
    for i, task in enumerate(tasks):
        ax = axes[0][i]
        for label in labels:
            mine = [r for r in rs if r.label == label]
            curve = [pd.Series([trained_rows(r.matrix)[task].iloc[k] for r in mine]).mean() for k in range(len(tasks))]
            steps = range(1, len(tasks) + 1)
            ax.plot(steps, curve, marker="o", ms=3, label=label, color=colours[label],
                    linestyle="--" if mine[0].bound else "-")
            if all(r.path in resampled for r in mine):
                band = [cell_interval(mine, resampled, task, k) for k in range(len(tasks))]
                lo = [np.nan if b is None else b[0] for b in band]
                hi = [np.nan if b is None else b[1] for b in band]
                ax.fill_between(steps, lo, hi, color=colours[label], alpha=0.15, lw=0)
                if any(b is not None for b in band):
                    banded.append(len(mine))
        ax.axvline(i + 1, color="grey", lw=0.5)
        ax.set_title(task, fontsize=9)
        ax.set_xticks(range(1, len(tasks) + 1))
        ax.set_xlabel("after task #")
    axes[0][0].set_ylabel("accuracy (%)")
    axes[0][-1].legend(fontsize=7, loc="center left", bbox_to_anchor=(1.02, 0.5))
    fig.suptitle(f"Accuracy of each task along order {order}{note} (grey line: when it is trained; dashed: bounds"
                 + band_note(banded) + ")", fontsize=9)
    return _save(fig, folder, f"stream-{order}{suffix}")


def band_note(seeds_per_line: list[int]) -> str:
    """What a stream figure's bands are, given how many seeds each banded line averages: a line of one seed has
    no seed spread to show (a cell of one order is its own quantity, so none is borrowed from other orders, as
    the tables' order columns do), and its band is the evaluation examples' alone."""
    if not seeds_per_line:
        return ""
    if min(seeds_per_line) > 1:
        return "; bands: 95% over seeds and evaluation examples"
    if max(seeds_per_line) == 1:
        return "; bands: 95% over evaluation examples (one seed: no seed spread in them)"
    return "; bands: 95% over seeds and evaluation examples (the examples' alone for a line of one seed)"


def cell_interval(runs, resampled: dict, task: str, k: int) -> tuple[float, float] | None:
    """95% interval of one cell of the trained rows (after the k-th stage, on `task`), mean over the runs (one per
    seed here, on one order): Student's t over the runs, each task's test examples resampled. None for a cell
    some run did not evaluate."""
    per_run = []
    for r in runs:
        row = len(r.matrix.index) - len(trained_rows(r.matrix)) + k   # the trained rows follow the base row
        per_run.append((r.seed, resampled[r.path][:, row, r.tasks.index(task)]))
    if any(np.isnan(x).any() for _, x in per_run):
        return None
    return stats.interval(stats.over_runs(np.stack([x for _, x in per_run]), [0] * len(per_run), stats.ACCURACY))


def pareto_front(points: list[tuple[str, float, float]]) -> list[tuple[str, float, float]]:
    """The (label, params, AA) points no other point beats, i.e. none has at most as many parameters and a
    higher AA, or fewer parameters and the same AA; sorted by parameters."""
    front, best = [], float("-inf")
    for label, params, aa in sorted(points, key=lambda p: (p[1], -p[2])):
        if aa > best:
            front.append((label, params, aa))
            best = aa
    return front


def _colours(labels) -> dict:
    # tab20 rather than the 10-colour default: a full grid has more than 10 methods and variants. Its dark
    # shades first, then the light ones, so that neighbours in the legend are not a pale pair.
    cmap = plt.get_cmap("tab20")
    shades = list(range(0, 20, 2)) + list(range(1, 20, 2))
    return {label: cmap(shades[k % 20]) for k, label in enumerate(sorted(labels))}


def _label_heights(boxes: list[tuple[str, float, float, float]], line: float) -> dict:
    """Where to write each label: boxes are (label, left, right, height) with the label's horizontal extent and its
    point's height; each is pushed up just enough that no two labels whose extents overlap are nearer than `line`
    (labels taken in order of height, so pushed ones keep their points' order)."""
    placed: list[tuple[float, float, float]] = []
    heights = {}
    for label, left, right, y in sorted(boxes, key=lambda box: (box[3], box[0])):
        for _, _, other in sorted((p for p in placed if p[0] < right and left < p[1]), key=lambda p: p[2]):
            if abs(y - other) < line:
                y = other + line
        placed.append((left, right, y))
        heights[label] = y
    return heights


def place_labels(fig, ax, points: list[tuple[str, float, float]]) -> dict:
    """Write each (label, x, y) point's label right of it; labels whose drawn extents overlap (a column's, or a long
    one reaching over the next column) are pushed apart by a line's height, with a grey line back to the point of one
    that moved. Returns label -> its text."""
    texts = {label: ax.text(x * 1.25, y, label, fontsize=7, va="center") for label, x, y in points}
    # Measured on the drawn figure. A stack pushed past the frame raises the axis top, which squeezes every label's
    # spacing in data units, so the placement is redone on the new axis (a few rounds settle it).
    for attempt in range(5):
        fig.canvas.draw()
        line = 1.15 * max(text.get_window_extent().height for text in texts.values())
        heights = _label_heights([(label, texts[label].get_window_extent().x0, texts[label].get_window_extent().x1,
                                   ax.transData.transform((x, y))[1]) for label, x, y in points], line)
        frame = ax.get_window_extent()
        overflow = max(heights.values()) + line / 2 - frame.y1
        if overflow <= 0 or attempt == 4:   # placed on the axis as it stands
            break
        bottom, top = ax.get_ylim()
        ax.set_ylim(bottom, top + overflow * (top - bottom) / frame.height)
    to_data = ax.transData.inverted()
    for label, x, y in points:
        placed = float(to_data.transform((frame.x0, heights[label]))[1])   # x and y map apart: any x will do
        texts[label].set_y(placed)
        if abs(placed - y) > 1e-9:
            ax.annotate("", xy=(x, y), xytext=(x * 1.25, placed), arrowprops={"arrowstyle": "-", "lw": 0.4,
                                                                               "color": "grey"})
    return texts


def aa_vs_kept(runs, block: str, orders: list[str], folder: str, suffix: str = "", note: str = "") -> list[str]:
    """One block of orders: each method's AA (mean over its runs in the block, 95% interval as in the forgetting
    table) against the parameters it keeps beside the backbone at the end of the stream, and the Pareto front of
    the continual learners (bounds excluded: they need the task id or train jointly)."""
    from harness.tables import evenly, orders_text, over_runs, partial_rows   # tables imports this module lazily
    mine_all = [r for r in runs if r.order in orders]
    if not mine_all:
        return []
    short = partial_rows(mine_all)
    labels = sorted({r.label for r in mine_all})
    # taller with many rows (a tuning folder's variants): each label needs its line of height
    fig, ax = plt.subplots(figsize=(6.4, max(4.4, 1.6 + 0.16 * len(labels))))
    colours = _colours(labels)
    points, learners = [], []
    for label in labels:
        mine = [r for r in mine_all if r.label == label]
        # the most any of its runs kept, as the cost table shows it (CRAFT keeps one edit per group, and the
        # groups depend on the order)
        params = max(max((r.card.get("parameters_kept") if r.card.get("parameters_kept") is not None
                          else r.card["trainable_parameters"]) for r in mine), 1)
        summary = over_runs(mine, lambda r: r.metrics["AA"], lambda r: r.samples("AA"), stats.ACCURACY)
        bound = mine[0].bound
        err = None if summary.bounds is None else [[summary.mean - summary.bounds[0]], [summary.bounds[1] - summary.mean]]
        ax.errorbar([params], [summary.mean], yerr=err, fmt="s" if bound else "o", color=colours[label],
                    mfc="none" if bound else colours[label], elinewidth=0.8, capsize=2)
        # a row over only some of the block's orders (or over uneven seeds) is not comparable with an even one:
        # its label says which
        shown = label if label not in short else \
            f"{label} ({orders_text(short[label])}{' only' if evenly(short[label]) else ''})"
        points.append((shown, params, summary.mean))
        if not bound and label not in short:   # a row over other orders is no point of the block's front
            learners.append(points[-1])
    front = pareto_front(learners)
    if len(front) > 1:
        ax.step([p[1] for p in front], [p[2] for p in front], where="post", color="grey", lw=0.8, ls=":",
                zorder=0, label="Pareto front (continual learners)")
        ax.legend(fontsize=7, loc="best")   # chosen at save time, around the points and the placed labels
    ax.set_xscale("log")
    ax.set_xlim(right=max(p[1] for p in points) * 12)     # room for the labels right of the last column
    place_labels(fig, ax, points)
    # decades only: matplotlib labels minor ticks on a short log axis, and their labels ran into each other
    ax.xaxis.set_minor_formatter(NullFormatter())
    ax.set_xlabel("parameters kept beside the backbone at the end of the stream (log; zero shown at 1)")
    ax.set_ylabel("AA (%), mean over the runs of each row, 95% interval")
    ax.set_title(f"{block} ({', '.join(sorted({r.order for r in mine_all}))}){note}: AA against parameters kept "
                 "(hollow squares: bounds;\nstored examples, replay's memory and CRAFT's anchor prompts, are data and not counted)",
                 fontsize=8)
    return _save(fig, folder, "aa_vs_kept-" + block.lower().replace(" ", "_") + suffix)


def write_figures(groups, folder: str) -> list[str]:
    """groups: (suffix, note, runs) per evaluation protocol, as the tables name and title theirs; every file of
    a group ends in its suffix ("" where the runs share one protocol), so no protocol draws over another."""
    from harness.tables import blocks_for
    written = []
    for suffix, note, runs in groups:
        for run, name in zip(runs, heatmap_names(runs)):
            written += heatmap(run, os.path.join(folder, "heatmaps"), name + suffix, note)
        for order in sorted({r.order for r in runs}):
            written += stream_curves(runs, order, folder, suffix, note)
        for block, orders in blocks_for({r.order for r in runs}):
            written += aa_vs_kept(runs, block, orders, folder, suffix, note)
    remove_stale(folder, written)
    return [os.path.relpath(p, os.path.dirname(folder)) for p in written]


def remove_stale(folder: str, written: list[str]) -> list[str]:
    """Delete figures this module once wrote that no run now backs (a run moved away, an order dropped), so
    that the figures folder always matches the tables. Only its own file names are touched."""
    keep = {os.path.abspath(p) for p in written}
    removed = []
    # aa_vs_: the Pareto plots, whose earlier name (aa_vs_params) outlived them in two committed folders
    for sub, pattern in (("heatmaps", ""), ("", "stream-"), ("", "aa_vs_")):
        where = os.path.join(folder, sub)
        if not os.path.isdir(where):
            continue
        for name in os.listdir(where):
            path = os.path.abspath(os.path.join(where, name))
            if name.startswith(pattern) and name.endswith((".png", ".pdf")) and path not in keep:
                os.remove(path)
                removed.append(path)
    return removed
