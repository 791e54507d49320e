"""What training does to a CRAFT task and to its group, read from finished run records (no model, no training).

For every task of every CRAFT run given: its group, whether it opened the group or joined one, the step its
training stopped at and why, the weight its merge took, and, from the accuracy matrix, its own accuracy before
its training (the row before, R[t-1][t]: the model as test-time routing then used it, so for a joining task its
group's edit) and after (R[t][t]), and the mean change its training made to its group's earlier tasks
(R[t][j] - R[t-1][j] over those tasks j), and how many of those tasks' evaluation answers its training changed (from
the predictions each row keeps): a mean change near 0 can hide many answers moved both ways, and the budget's KL
does not see them. A joining task whose own accuracy falls while it trains, or whose
group's earlier tasks fall, shows here at once. `--reference seq_lora` puts beside each row the own gain of the
same task in that folder's run of the same stream and seed (sweep layout: <runs>/<folder>/<order>/seed<n>,
looked up in the CRAFT run's own folder of runs, or in `--reference-runs`; a folder, not a table row: in
results/val/tuning/runs, `seq_lora` holds the one-epoch runs and `seq_lora+epochs=3` today's defaults). The first
table averages per configuration and stream, joins and group openers apart; the last asks whether the budget's
KL ranks what a join did to its group (Spearman's rank correlation over the joins whose merge kept some edit).

    python bench/craft_groups.py results/val/tuning/runs/craft*/*/seed* --reference seq_lora \\
        --out results/val/tuning/craft_groups.md
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys

from scipy.stats import spearmanr

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from core.errors import UsageError  # noqa: E402
from harness.rundir import RunDir, write_report  # noqa: E402
from harness.stats import decode_labels  # noqa: E402


def accuracy_rows(status: dict, order: list[str]) -> list[dict]:
    """[base row, row after task 1, ...] as {task: accuracy}; a cell the run did not score is absent."""
    rows = status["rows"]
    return [rows["base"]["accuracy"]] + [rows.get(name, {}).get("accuracy", {}) for name in order]


def answers_changed(status: dict, order: list[str], k: int, earlier: list[str]) -> tuple[int, int] | None:
    """(evaluation answers of the `earlier` tasks that the k-th task's training changed, answers compared), from
    the predictions of the row before it and the row after it; None where no row keeps both. k >= 1: a task with
    earlier tasks in its group is not the stream's first."""
    rows = status["rows"]
    before = rows.get(order[k - 1], {}).get("predictions", {})
    after = rows.get(order[k], {}).get("predictions", {})
    pairs = [(decode_labels(before[t]), decode_labels(after[t])) for t in earlier if t in before and t in after]
    if any(len(b) != len(a) for b, a in pairs):   # numpy would broadcast a length-1 row silently
        raise ValueError(f"rows {order[k - 1]} and {order[k]} keep different numbers of answers")
    if not pairs:
        return None
    return sum(int((b != a).sum()) for b, a in pairs), sum(len(b) for b, _ in pairs)


def own_gain(rows: list[dict], k: int, task: str) -> tuple[float | None, float | None]:
    """(accuracy on `task` before the k-th task's training, after it); rows[k] is the row before task k (0-based)."""
    return rows[k].get(task), rows[k + 1].get(task)


def task_records(path: str, reference: str | None = None, reference_runs: str | None = None) -> list[dict]:
    """One dict per task of a finished CRAFT run (see the module's docstring); [] for a run of another method.
    reference_runs: the folder of runs holding the reference's run (default: the one holding `path`)."""
    run = RunDir(path)
    status = run.status()
    if status is None:
        raise UsageError(f"{path}: not a run directory")
    if status.get("state") != "finished":   # a run still going, or cut short: its matrix is not the stream's
        print(f"craft_groups: {path}: not finished, left out", file=sys.stderr)
        return []
    config = run.read_json("config.json")
    if config.get("method") != "craft":
        return []
    order = list(config["tasks"])
    diagnostics = run.read_json("method.json").get("diagnostics") or {}
    routing, training, merge = (diagnostics.get(k) or {} for k in ("routing", "training", "merge"))
    rows = accuracy_rows(status, order)
    ref_rows = None
    if reference:   # <runs>/<label>/<order>/seed<n> -> <reference runs>/<reference>/<order>/seed<n>
        seed_dir, order_dir = os.path.basename(os.path.normpath(path)), os.path.dirname(os.path.normpath(path))
        other = RunDir(os.path.join(reference_runs or os.path.dirname(os.path.dirname(order_dir)), reference,
                                    os.path.basename(order_dir), seed_dir))
        other_status = other.status()
        if other_status and other_status.get("state") == "finished" and \
                all(name in other_status["rows"] for name in order):   # a joint run (mtl) has no row per task
            ref_rows = accuracy_rows(other_status, order)
    records = []
    for k, task in enumerate(order):
        group = routing.get(task, {}).get("group")   # None: the record does not say (no join claimed)
        earlier = [] if group is None else [t for t in order[:k] if routing.get(t, {}).get("group") == group]
        before, after = own_gain(rows, k, task)
        changes = [rows[k + 1][t] - rows[k][t] for t in earlier if t in rows[k] and t in rows[k + 1]]
        ref = own_gain(ref_rows, k, task) if ref_rows else (None, None)
        try:
            changed = answers_changed(status, order, k, earlier) if earlier else None
        except ValueError as e:
            raise UsageError(f"{path}: {e}") from None
        trace = training.get(task, {})
        records.append({
            "run": path, "order": os.path.basename(os.path.dirname(os.path.normpath(path))), "task": task,
            "group": group, "joins": bool(earlier), "earlier": earlier,
            "steps": trace.get("stop_step"), "why": short_reason(trace.get("stop_reason")),
            "weight": merge.get(task, {}).get("weight"), "kl_after": merge.get(task, {}).get("kl_after"),
            "before": before, "after": after,
            "gain": None if before is None or after is None else after - before,
            "group_change": statistics.mean(changes) if changes else None,
            "group_answers_changed": changed,
            "reference_gain": None if None in ref else ref[1] - ref[0], "reference_found": ref_rows is not None})
    return records


def short_reason(reason) -> str:
    """A stop reason as the tables name it: budget (its KL), settled, or epochs (craft's _stop_rule wording)."""
    reason = str(reason or "")
    if reason.startswith("KL"):
        return f"budget (KL {float(reason.split()[1]):.2f})"
    return "settled" if reason.startswith("task loss settled") else "epochs" if reason == "epochs done" else reason


def label_of(path: str) -> str:
    """The configuration's folder name in the sweep layout (<label>/<order>/seed<n>)."""
    return os.path.basename(os.path.dirname(os.path.dirname(os.path.normpath(path))))


def _fmt(x, digits: int = 2, sign: bool = False) -> str:
    if x is None:
        return "–"
    return f"{x:+.{digits}f}" if sign else f"{x:.{digits}f}"


def _changed(counts) -> str:
    return "–" if counts is None else f"{counts[0]} of {counts[1]} ({100 * counts[0] / counts[1]:.0f}%)"


def _mean(records: list[dict], key: str) -> float | None:
    values = [r[key] for r in records if r[key] is not None]
    return statistics.mean(values) if values else None


def summary(records: list[dict]) -> list[dict]:
    """Per configuration and stream (order), joins and group openers apart: the mean own gain, its group's mean
    change, how many stopped before their epochs ran out; and, over the tasks the reference also ran, both own
    gains (paired)."""
    out = []
    for label, order in sorted({(label_of(r["run"]), r["order"]) for r in records}):
        for joins in (True, False):
            mine = [r for r in records if (label_of(r["run"]), r["order"]) == (label, order) and r["joins"] == joins]
            if not mine:
                continue
            paired = [r for r in mine if r["gain"] is not None and r["reference_gain"] is not None]
            out.append({"label": label, "order": order, "joins": joins, "tasks": len(mine), "gain": _mean(mine, "gain"),
                        "group_change": _mean(mine, "group_change"),
                        "stopped_early": sum(1 for r in mine if r["why"].startswith(("budget", "settled"))),
                        "paired": len(paired), "paired_gain": _mean(paired, "gain"),
                        "reference_gain": _mean(paired, "reference_gain")})
    return out


def kl_ranks(records: list[dict]) -> dict:
    """Over the joins whose merge kept some of their edit (weight > 0; at 0 the KL is 0 and nothing changed, which
    would lend the KL a rank order it did not earn) and whose KL after and answers changed are recorded: n and
    Spearman's rho (with its p-value) of the KL after against the share of the group's answers changed and
    against the group's Δ. rho None for fewer than 3 joins or a constant column."""
    kept = [r for r in records if r["joins"] and (r["weight"] or 0) > 0 and r["kl_after"] is not None
            and r["group_answers_changed"] is not None and r["group_change"] is not None]
    out = {"n": len(kept)}
    columns = {"changed": [r["group_answers_changed"][0] / r["group_answers_changed"][1] for r in kept],
               "group_change": [r["group_change"] for r in kept]}
    kl = [r["kl_after"] for r in kept]
    for name, values in columns.items():
        rho, p = (None, None)
        if len(kept) >= 3 and len(set(kl)) > 1 and len(set(values)) > 1:
            rho, p = (float(x) for x in spearmanr(kl, values))
        out[name] = (rho, p)
    return out


def report(records: list[dict], reference: str | None) -> str:
    ref = f"{reference} own gain" if reference else "reference own gain"
    lines = ["# What training does to a CRAFT task and its group (from run records)", "",
             "Own gain = accuracy on the task right after its training minus right before it (the row before, "
             "which already holds its group's edit for a task that joins). Group Δ = the mean change the task's "
             "training made to the earlier tasks of its group; group's answers changed = how many of their "
             "evaluation answers it changed, either way (a Δ near 0 can hide many). KL after = the merged state's "
             "KL against the group's prior on the group's anchors, what the forgetting budget reads. "
             "Written by `bench/craft_groups.py`.", "",
             "## Per configuration", "",
             f"| configuration | stream | joins a group | tasks | mean own gain | mean group Δ | stopped early "
             f"| paired: tasks "
             f"| paired: own gain | paired: {ref} |", "|---|---|---|---|---|---|---|---|---|---|"]
    for s in summary(records):
        lines.append(f"| {s['label']} | {s['order']} | {'yes' if s['joins'] else 'no (opens it)'} | {s['tasks']} | "
                     f"{_fmt(s['gain'], sign=True)} | {_fmt(s['group_change'], sign=True)} | {s['stopped_early']} | "
                     f"{s['paired']} | {_fmt(s['paired_gain'], sign=True)} | {_fmt(s['reference_gain'], sign=True)} |")
    lines += ["", "Stopped early: the forgetting budget or the settled-loss rule ended the training (at the epoch's "
              "last step at the latest). "
              "Paired: the tasks whose run has a reference run of the same stream and seed, both means over "
              "them.", "",
              "## Tasks that join a group", "",
              f"| run | task | group's earlier tasks | steps, stop | merge weight | KL after | own: before -> after "
              f"| group Δ | group's answers changed | {ref} |", "|---|---|---|---|---|---|---|---|---|---|"]
    for r in records:
        if r["joins"]:
            lines.append(f"| {r['run']} | {r['task']} | {', '.join(r['earlier'])} | {r['steps']}, {r['why']} | "
                         f"{_fmt(r['weight'])} | {_fmt(r['kl_after'], 3)} | {_fmt(r['before'], 0)} -> "
                         f"{_fmt(r['after'], 0)} ({_fmt(r['gain'], 0, sign=True)}) | "
                         f"{_fmt(r['group_change'], sign=True)} | {_changed(r['group_answers_changed'])} | "
                         f"{_fmt(r['reference_gain'], 0, sign=True)} |")
    ranks = kl_ranks(records)
    lines += ["", "## Does the budget's KL rank what a join did to its group?", "",
              f"Over the {ranks['n']} joins above whose merge kept some of their edit (weight > 0), Spearman's rank "
              "correlation of the KL after against:", "",
              "| against | rho | p |", "|---|---|---|"]
    for name, what in (("changed", "the share of the group's answers changed"), ("group_change", "group Δ")):
        rho, p = ranks[name]
        lines.append(f"| {what} | {_fmt(rho)} | {_fmt(p, 3)} |")
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0], allow_abbrev=False)
    p.add_argument("runs", nargs="+", help="finished run directories (other methods' runs are skipped)")
    p.add_argument("--reference", help="a method label whose run of the same stream and seed gives each task's "
                                       "own gain beside CRAFT's (sweep layout)")
    p.add_argument("--reference-runs", metavar="DIR", help="the folder of runs holding the reference's runs "
                                                          "(default: each CRAFT run's own)")
    p.add_argument("--out", help="write the report here (markdown); default: print it")
    a = p.parse_args(argv)
    if a.reference_runs and not os.path.isdir(a.reference_runs):
        print(f"craft_groups: --reference-runs {a.reference_runs} is not a folder", file=sys.stderr)
        return 2
    paths, seen = [], set()
    for path in a.runs:   # a run given twice (overlapping globs, run and run/) counts once
        if os.path.realpath(path) not in seen:
            seen.add(os.path.realpath(path))
            paths.append(path)
    try:
        records = [r for path in paths for r in task_records(path, a.reference, a.reference_runs)]
    except UsageError as e:
        print(f"craft_groups: {e}", file=sys.stderr)
        return 2
    if not records:
        print("craft_groups: no finished CRAFT run among those given", file=sys.stderr)
        return 2
    missing = sorted({r["run"] for r in records if not r["reference_found"]})
    if a.reference and missing:   # the paired columns leave them out
        print(f"craft_groups: no finished {a.reference} run of the same stream and seed (one row per task) for "
              f"{len(missing)} of {len({r['run'] for r in records})} CRAFT run(s), e.g. {missing[0]}", file=sys.stderr)
    text = report(records, a.reference)
    write_report(text, a.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
