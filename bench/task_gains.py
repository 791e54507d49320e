"""What each task learned, run against run: each task's accuracy right after training on it (R[t][t]) in every
given run, whether it is above the task's majority class (the learned table's test), and each run minus the first,
paired on the same evaluation examples (the tables' shared resamples, so a difference's interval is the examples'
spread alone). For runs of one stream made under two setups (training sizes, epochs), where `harness compare`
pairs whole folders by method and gives AA and FM only.

    python bench/task_gains.py results/val/train_size/200/runs/per_task/*/seed1 \\
        results/val/train_size/1000/runs/per_task/*/seed1 results/val/train_size/1000/runs/per_task+epochs=1/*/seed1
    python bench/task_gains.py --pool MultiRC,RTE,MNLI results/val/train_size/200/runs/per_task/*/seed1 \\
        results/val/truncation/runs/per_task/*/seed1     # and the difference over those tasks' examples together
"""
from __future__ import annotations

import argparse
import os
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from core.errors import UsageError  # noqa: E402
from harness import stats  # noqa: E402
from harness.config import recorded_value  # noqa: E402
from harness.rundir import other_test_examples  # noqa: E402
from harness.tables import Run, above_majority, load_runs, majority_share, trained_row  # noqa: E402

# What two runs must share to be read task by task against each other: the stream, the model, how and on which
# split they were scored (the examples themselves are checked task by task: rundir.other_test_examples).
SHARED = ("order", "model", "eval", "eval_split")


def load_run(path: str) -> Run:
    runs, _ = load_runs(path)
    runs = [r for r in runs if os.path.normpath(r.path) == os.path.normpath(path)]
    if not runs:
        raise UsageError(f"{path} is not a finished run")
    if runs[0].scores is None:
        raise UsageError(f"{path} kept no per-example predictions (made before they were kept)")
    return runs[0]


def after_training_correct(run: Run, task: str) -> np.ndarray:
    """1/0 per evaluation example of `task` in the row right after the stage that trained it (joint training's one
    row)."""
    row = trained_row(run, task)
    if row is None:
        raise UsageError(f"{run.path} has no row for the stage that trained {task}")
    correct = run.scores.correct[task][run.scores.rows.index(str(row))]
    if np.isnan(correct).any():
        raise UsageError(f"{run.path} did not evaluate {task} right after training on it")
    return correct


def check_pairable(first: Run, other: Run) -> None:
    for key in SHARED:
        mine, theirs = recorded_value(first.config, key), recorded_value(other.config, key)
        if mine != theirs:
            raise UsageError(f"{other.path} has {key} {theirs!r} and {first.path} {mine!r}: nothing to pair")
    differ = other_test_examples(first.config.get("data"), other.config.get("data"))
    if differ:
        raise UsageError(f"{other.path} and {first.path} scored {differ[0]} on different examples: nothing to pair")


def task_gains(runs: list[Run]) -> list[dict]:
    """Per task of the first run: its majority share, each run's accuracy and above-majority flag, and each later
    run minus the first with its 95% interval over the shared examples."""
    first = runs[0]
    for r in runs[1:]:
        check_pairable(first, r)
    out = []
    for task in first.tasks:
        majority = majority_share(first, task)
        if majority is None:
            raise UsageError(f"{first.path} kept no gold labels for {task}")
        correct = [after_training_correct(r, task) for r in runs]
        n = len(correct[0])
        weights = stats.example_weights(task, n).astype(float)
        accuracy = [100.0 * c.mean() for c in correct]
        diffs = [c - correct[0] for c in correct[1:]]
        gains = [(100.0 * d.mean(), stats.interval(100.0 * (weights @ d) / n)) for d in diffs]
        out.append({"task": task, "majority": majority[0], "examples": n, "accuracy": accuracy,
                    "above": [above_majority(a, majority) for a in accuracy], "gains": gains,
                    "diffs": diffs, "weights": weights})
    return out


def pooled_gains(rows: list[dict], tasks: list[str]) -> list[tuple[float, tuple[float, float]]]:
    """Each later run minus the first over the named tasks' examples together (each example counts once), with its
    95% interval: every task's examples resampled within the task, by the same draws as its own row."""
    unknown = [t for t in tasks if t not in {r["task"] for r in rows}]
    if unknown:
        raise UsageError(f"--pool names {', '.join(unknown)}, not a task of the runs' stream")
    chosen = [r for r in rows if r["task"] in tasks]
    total = sum(r["examples"] for r in chosen)
    return [(100.0 * sum(r["diffs"][k].sum() for r in chosen) / total,
             stats.interval(100.0 * sum(r["weights"] @ r["diffs"][k] for r in chosen) / total))
            for k in range(len(chosen[0]["diffs"]))]


def markdown(runs: list[Run], rows: list[dict], pool: list[str] | None = None) -> str:
    names = [f"run {k + 1}" for k in range(len(runs))]
    head = ["task", "majority", *names, *(f"{x} - run 1" for x in names[1:])]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for row in rows:
        cells = [f"{a:.1f}{' *' if up else ''}" for a, up in zip(row["accuracy"], row["above"])]
        cells += [f"{g:+.1f} [{lo:.1f}, {hi:.1f}]" for g, (lo, hi) in row["gains"]]
        lines.append(f"| {row['task']} | {row['majority']:.1f} | " + " | ".join(cells) + " |")
    if pool:
        name = f"{'+'.join(pool)} ({sum(r['examples'] for r in rows if r['task'] in pool)} examples)"
        cells = [name, "-", *["-"] * len(runs), *(f"{g:+.1f} [{lo:.1f}, {hi:.1f}]" for g, (lo, hi) in
                                                    pooled_gains(rows, pool))]
        lines.append("| " + " | ".join(cells) + " |")
    lines += [""] + [f"{name}: {r.path} ({r.label}, {recorded_value(r.config, 'train_per_task')} training examples "
                     f"a task, {recorded_value(r.config, 'truncate')} cuts)" for name, r in zip(names, runs)]
    lines.append("Accuracy (%) right after training on the task; * = above its majority class (one-sided binomial "
                 "test at 2.5%, as the learned table); a difference's [lo, hi] is a 95% bootstrap interval over the "
                 f"evaluation examples ({stats.RESAMPLES} resamples, the same draws for every run).")
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("runs", nargs="+", help="finished run directories of one stream; the first is the reference")
    parser.add_argument("--pool", help="tasks (comma-separated) whose examples also give one difference together")
    a = parser.parse_args(argv)
    try:
        if len(a.runs) < 2:
            raise UsageError("give at least two run directories")
        runs = [load_run(p) for p in a.runs]
        pool = [t.strip() for t in a.pool.split(",") if t.strip()] if a.pool else None
        print(markdown(runs, task_gains(runs), pool), end="")
    except UsageError as e:
        print(f"task_gains.py: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
