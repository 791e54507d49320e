"""Rank scoring against generation, on the same trained models: which methods' ranking changes between them.

Each finished run's final state answers the run's own evaluation examples twice: `rank` (read from the run's
record) and `generate` (greedy decoding; the measurement, `harness/protocols.py`, sorts each answer by whose label
it is). Writes a markdown report. A run's measurement is kept in its folder (`protocols.json`, committed with the
record), made here from its weights (so for runs made on this machine) or earlier, right after the run, by
`bench`/`sweep --probes generation`: a rerun reuses it (`--again` measures anew), so a long study killed part-way
resumes, and the report can be rebuilt without the weights.

    python bench/protocols.py results/val/runs/*/offline*/seed* --out results/val/protocols.md
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
from collections import defaultdict

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from core.errors import UsageError  # noqa: E402
from harness.models import configure_offline, set_threads  # noqa: E402
from harness.protocols import KINDS, RECORD, measured  # noqa: E402
from harness.rundir import RunDir, write_report  # noqa: E402


def summary(results: list[dict]) -> dict:
    """Per method (its folder label): AA under each protocol (mean over runs of the mean over tasks) and the
    share of each answer kind over every generated answer."""
    by = defaultdict(list)
    for r in results:
        by[r["label"]].append(r)
    # methods are placed against each other on the (order, seed) pairs every one of them ran, only
    shared = set.intersection(*[{(r["order"], r["seed"]) for r in runs} for runs in by.values()]) if by else set()
    by = {label: [r for r in runs if (r["order"], r["seed"]) in shared] for label, runs in by.items()}
    table = {}
    for label, runs in by.items():
        if not runs:
            continue
        rank = [statistics.mean(t["rank"] for t in r["tasks"].values()) for r in runs]
        gen = [statistics.mean(100.0 * t["kinds"]["right"] / t["n"] for t in r["tasks"].values()) for r in runs]
        counts = {k: sum(t["kinds"][k] for r in runs for t in r["tasks"].values()) for k in KINDS}
        total = sum(counts.values())
        table[label] = {"runs": len(runs), "rank": statistics.mean(rank), "generate": statistics.mean(gen),
                        "share": {k: 100.0 * v / total for k, v in counts.items()}}
    return table


def ranking(table: dict, key: str) -> list[str]:
    return sorted(table, key=lambda m: -table[m][key])


def report(results: list[dict]) -> str:
    table = summary(results)
    used = sum(t["runs"] for t in table.values())
    by_rank, by_gen = ranking(table, "rank"), ranking(table, "generate")
    lines = ["# Rank scoring against generation, on the same trained models", "",
             "Written by `bench/protocols.py` from each run's final state (its last checkpoint): AA over the "
             "run's tasks under rank scoring (from the run's record) and under greedy generation with O-LoRA's "
             "exact match, on the same examples. Mean over runs. Generated answers are sorted into the right "
             "label, another label of the same task, a label of another task of the stream (cross-task "
             "interference, which rank scoring cannot show) and anything else.", "",
             f"Runs: {len(results)} ({', '.join(sorted({r['order'] for r in results}))}; seeds "
             f"{', '.join(map(str, sorted({r['seed'] for r in results})))}); the summary uses the {used} on the "
             "(order, seed) pairs every method ran.", "",
             "| method | runs | AA rank | AA generate | Δ | rank place | generate place | wrong own label % | "
             "other task's label % | no label % |", "|---|---|---|---|---|---|---|---|---|---|"]
    for m in by_rank:
        t = table[m]
        lines.append(f"| {m} | {t['runs']} | {t['rank']:.2f} | {t['generate']:.2f} | {t['generate'] - t['rank']:+.2f} "
                     f"| {by_rank.index(m) + 1} | {by_gen.index(m) + 1} | {t['share']['own_label']:.1f} | "
                     f"{t['share']['other_task_label']:.1f} | {t['share']['no_label']:.1f} |")
    checks = [max(r["restored_check"].values()) for r in results]
    moved = [m for m in by_rank if by_rank.index(m) != by_gen.index(m)]
    lines += ["", "Ranking by rank scoring: " + " > ".join(by_rank) + ".",
              "Ranking by generation: " + " > ".join(by_gen) + ".",
              ("Methods whose place changes: " + ", ".join(moved) + ".") if moved else
              "No method changes place.", "",
              f"Each restored state scored its first and last tasks by rank again: {sum(c == 0 for c in checks)} of "
              f"{len(checks)} runs gave the record's answers exactly; the largest difference was {max(checks)} "
              "answer(s) (near ties scored on another float path).", "", "## Per run", "",
              "| method | order | seed | task | rank | generate | wrong own label | other task's label | no label |",
              "|---|---|---|---|---|---|---|---|---|"]
    for r in sorted(results, key=lambda r: (r["label"], r["order"], r["seed"])):
        for name, t in r["tasks"].items():
            k = t["kinds"]
            lines.append(f"| {r['label']} | {r['order']} | {r['seed']} | {name} | {t['rank']:.0f} | "
                         f"{100.0 * k['right'] / t['n']:.0f} | {k['own_label']} | {k['other_task_label']} | "
                         f"{k['no_label']} |")
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("runs", nargs="+", help="finished run directories with their last checkpoint")
    p.add_argument("--out", help="markdown report (default: stdout)")
    p.add_argument("--again", action="store_true", help=f"measure runs that already hold a {RECORD} anew")
    a = p.parse_args(argv)
    configure_offline()
    set_threads()
    try:
        # a glob over a grid that is still running names unfinished runs too: they are left out, and said so
        finished = [path for path in a.runs if RunDir(path).is_finished()]
        if len(finished) < len(a.runs):
            left = sorted(set(a.runs) - set(finished))
            print(f"{len(left)} run(s) not finished, left out: {' '.join(left)}", file=sys.stderr)
        if not finished:
            raise UsageError("no finished run among those named")
        results, failed = [], []
        unloadable: dict = {}   # a model that cannot load is tried once, not once per run
        for path in finished:   # a run that cannot be measured (no weights, changed data) is left out, and said so
            try:
                results.append(measured(path, a.again, progress=True, unloadable=unloadable))
            except UsageError as e:
                failed.append(path)
                print(f"left out: {e}", file=sys.stderr)
        if not results:
            raise UsageError(f"none of the {len(finished)} finished run(s) could be measured (above)")
    except UsageError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    text = report(results)
    if failed:
        text += (f"\nLeft out, as they could not be measured (their errors went to stderr): {len(failed)} run(s): "
                 + ", ".join(failed) + ".\n")
    write_report(text, a.out)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
