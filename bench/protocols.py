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
from types import SimpleNamespace

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from core.errors import UsageError  # noqa: E402
from harness import stats  # noqa: E402
from harness.config import label_args  # noqa: E402
from harness.models import configure_offline, set_threads  # noqa: E402
from harness.protocols import KINDS, RECORD, final_row, generated_right, is_measured, measured  # noqa: E402
from harness.rundir import RunDir, write_report  # noqa: E402
from harness.stats import decode_labels  # noqa: E402
from harness.sweep import MethodSpec  # noqa: E402
from harness.tables import method_label, most_pairs  # noqa: E402


def row_label(config: dict) -> str:
    """A run's row, named as the tables name it (`craft`, `replay [compute=matched]`, `craft (batch-check
    defaults)`): by what it ran against today's defaults, not by the spec it was made under."""
    return method_label(config["method"], label_args(config))


def on_shared_pairs(results: list[dict]) -> dict[str, list[dict]]:
    """label -> its runs on the (order, seed) pairs every label ran: methods are placed against each other there
    only."""
    by = defaultdict(list)
    for r in results:
        by[r["label"]].append(r)
    shared = set.intersection(*[{(r["order"], r["seed"]) for r in runs} for runs in by.values()]) if by else set()
    return {label: [r for r in runs if (r["order"], r["seed"]) in shared] for label, runs in by.items()}


def summary(results: list[dict]) -> dict:
    """Per method (its row label): AA under each protocol (mean over runs of the mean over tasks) and the
    share of each answer kind over every generated answer."""
    table = {}
    for label, runs in on_shared_pairs(results).items():
        if not runs:
            continue
        counts = {k: sum(t["kinds"][k] for r in runs for t in r["tasks"].values()) for k in KINDS}
        total = sum(counts.values())
        table[label] = {"runs": len(runs), "rank": statistics.mean(aa(r, "rank") for r in runs),
                        "generate": statistics.mean(aa(r, "generate") for r in runs),
                        "share": {k: 100.0 * v / total for k, v in counts.items()}}
    return table


def example_outcomes(path: str, result: dict) -> dict:
    """{task: (rank right, generated right)}, 0/1 arrays over one measured run's evaluation examples in its order:
    rank from the run's record, generation from the measurement; None for a protocol whose answers were not kept
    (generation measured before 2026-12-05 kept counts alone; a record before per-example predictions, neither)."""
    run = RunDir(path)
    config, status = run.read_json("config.json"), run.status()
    row = status["rows"][final_row(config, status)]
    out = {}
    for name, task in result["tasks"].items():
        generated = generated_right(task)
        gold, predicted = (config.get("data") or {}).get(name, {}).get("gold"), row.get("predictions", {}).get(name)
        ranked = None if gold is None or predicted is None else \
            (decode_labels(predicted) == decode_labels(gold)).astype(float)
        for answers, accuracy in ((ranked, task["rank"]), (generated, 100.0 * task["kinds"]["right"] / task["n"])):
            if answers is not None and (len(answers) != task["n"] or abs(100.0 * answers.mean() - accuracy) > 1e-6):
                raise UsageError(f"{path}: its {RECORD} does not match the run's record on {name}")
        out[name] = (ranked, generated)
    return out


def aa_samples(result: dict, protocol: int) -> np.ndarray | None:
    """A run's AA (mean over its tasks) under every resample of the evaluation examples (stats' shared draws, so
    runs on the same examples stay paired): [resamples]; protocol 0 = rank, 1 = generate. None where that
    protocol's answers were not kept."""
    answers = [(name, o[protocol]) for name, o in (result.get("outcomes") or {}).items()]
    if not answers or any(right is None for _, right in answers):
        return None
    return np.mean([100.0 * stats.example_weights(name, len(right)) @ right / len(right) for name, right in answers],
                   axis=0)


def interval_over_runs(runs: list[dict], value, within=stats.POINTS) -> tuple[float, float] | None:
    """The 95% interval of the mean over runs of value(run) -> [resamples]: Student's t over the runs with each
    order a stratum, under the shared resampling of the examples, clipped to `within` (an accuracy to [0, 100]),
    as the tables' (docs/results.md#intervals). None where a run has no outcomes."""
    samples = [value(r) for r in runs]
    if not samples or any(s is None for s in samples):
        return None
    return stats.interval(stats.over_runs(np.stack(samples), [r["order"] for r in runs], within))


def with_interval(point: float, bounds, signed: bool = False) -> str:
    sign = "+" if signed else ""
    if bounds is None:
        return f"{point:{sign}.2f}"
    mark = " *" if signed and stats.excludes_zero(bounds) else ""
    return f"{point:{sign}.2f} [{bounds[0]:.2f}, {bounds[1]:.2f}]{mark}"


def ranking(table: dict, key: str) -> list[str]:
    return sorted(table, key=lambda m: -table[m][key])


def paired_against(results: list[dict], against: str) -> list[str]:
    """Markdown rows: `against` minus each other method under rank and under generation, on the same examples and
    the (order, seed) pairs the tables' paired table takes (harness.tables.most_pairs: whole seeds of a set of
    orders both ran, never an average over uneven orders)."""
    runs = [SimpleNamespace(label=r["label"], order=r["order"], seed=r["seed"], result=r) for r in results]
    rows = []
    for label in sorted({r["label"] for r in results} - {against}):
        pairs = [(a.result, b.result) for seed in most_pairs(runs, against, label).values() for a, b in seed]
        if not pairs:
            continue
        cells = []
        for protocol, key in ((0, "rank"), (1, "generate")):
            def delta(pair, protocol=protocol):
                a, b = (aa_samples(r, protocol) for r in pair)
                return None if a is None or b is None else a - b
            point = statistics.mean(aa(a, key) - aa(b, key) for a, b in pairs)
            bounds = interval_over_runs([{"order": a["order"], "pair": (a, b)} for a, b in pairs],
                                        lambda p: delta(p["pair"]))
            cells.append(with_interval(point, bounds, signed=True))
        rows.append(f"| {label} | {len(pairs)} | {cells[0]} | {cells[1]} |")
    return rows


def aa(result: dict, key: str) -> float:
    """A run's AA from its measurement's counts (rank or generate)."""
    if key == "rank":
        return statistics.mean(t["rank"] for t in result["tasks"].values())
    return statistics.mean(100.0 * t["kinds"]["right"] / t["n"] for t in result["tasks"].values())


def report(results: list[dict], against: str | None = None) -> str:
    """The markdown report; `against`: a method label whose difference from each other method is tabled, paired."""
    table = summary(results)
    shared = on_shared_pairs(results)
    used = sum(t["runs"] for t in table.values())
    by_rank, by_gen = ranking(table, "rank"), ranking(table, "generate")
    counts_only = sum(aa_samples(r, 1) is None for r in results)
    lines = ["# Rank scoring against generation, on the same trained models", "",
             "Written by `bench/protocols.py` from each run's final state (its last checkpoint): AA over the "
             "run's tasks under rank scoring (from the run's record) and under greedy generation with O-LoRA's "
             "exact match, on the same examples. Mean over runs. Generated answers are sorted into the right "
             "label, another label of the same task, a label of another task of the stream (cross-task "
             "interference, which rank scoring cannot show) and anything else.", "",
             "95% intervals over the evaluation examples (each task's resampled, the same draws for every run) "
             "and the runs (Student's t over runs, runs - orders degrees of freedom; where no order has two seeds, "
             "the examples alone), as the tables' (docs/results.md, Intervals); * = the interval excludes 0."
             + (f" {counts_only} of {len(results)} runs were measured before each answer was kept (2026-12-05): "
                "their counts give the point, and a generation cell with one of them shows no interval."
                if counts_only else ""),
             "",
             f"Runs: {len(results)} ({', '.join(sorted({r['order'] for r in results}))}; seeds "
             f"{', '.join(map(str, sorted({r['seed'] for r in results})))}); the summary uses the {used} on the "
             "(order, seed) pairs every method ran.", "",
             "| method | runs | AA rank | AA generate | Δ generate - rank | rank place | generate place | "
             "wrong own label % | other task's label % | no label % |", "|---|---|---|---|---|---|---|---|---|---|"]

    def gap(r):
        rank, gen = aa_samples(r, 0), aa_samples(r, 1)
        return None if rank is None or gen is None else gen - rank
    for m in by_rank:
        t, runs = table[m], shared[m]
        rank = with_interval(t["rank"], interval_over_runs(runs, lambda r: aa_samples(r, 0), stats.ACCURACY))
        gen = with_interval(t["generate"], interval_over_runs(runs, lambda r: aa_samples(r, 1), stats.ACCURACY))
        delta = with_interval(t["generate"] - t["rank"], interval_over_runs(runs, gap), signed=True)
        lines.append(f"| {m} | {t['runs']} | {rank} | {gen} | {delta} | {by_rank.index(m) + 1} | "
                     f"{by_gen.index(m) + 1} | {t['share']['own_label']:.1f} | {t['share']['other_task_label']:.1f} "
                     f"| {t['share']['no_label']:.1f} |")
    checks = [max(r["restored_check"].values()) for r in results]
    moved = [m for m in by_rank if by_rank.index(m) != by_gen.index(m)]
    lines += ["", "Ranking by rank scoring: " + " > ".join(by_rank) + ".",
              "Ranking by generation: " + " > ".join(by_gen) + ".",
              ("Methods whose place changes: " + ", ".join(moved) + ".") if moved else
              "No method changes place.", "",
              f"Each restored state scored its first and last tasks by rank again: {sum(c == 0 for c in checks)} of "
              f"{len(checks)} runs gave the record's answers exactly; the largest difference was {max(checks)} "
              "answer(s) (near ties scored on another float path)."]
    paired = paired_against(results, against) if against else []
    if paired:
        lines += ["", f"## {against} minus each method, paired", "",
                  f"On the (order, seed) pairs both ran (not only those every method ran; whole seeds of the orders, "
                  f"as the paired table's) and the same examples: does {against}'s difference hold under "
                  "generation?", "",
                  "| method | pairs | ΔAA rank | ΔAA generate |", "|---|---|---|---|", *paired]
    lines += ["", "## Per run", "",
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
    measuring = p.add_mutually_exclusive_group()
    measuring.add_argument("--again", action="store_true", help=f"measure runs that already hold a {RECORD} anew")
    measuring.add_argument("--kept", action="store_true", help=f"measure nothing: the runs' kept {RECORD} alone "
                           "(what a rebuild of the tables uses); a run without one this code reuses is left out, "
                           "and the report names it")
    p.add_argument("--methods", metavar="SPECS", help="only the runs of these sweep method specs (comma-separated; "
                   "default: every run named): a former default's few seeds would narrow the pairs every method ran")
    p.add_argument("--against", metavar="LABEL", help="the row whose difference from each other one is tabled, "
                   "paired (default: craft, where it ran)")
    a = p.parse_args(argv)
    configure_offline()
    set_threads()
    notes = []
    try:
        # a glob over a grid that is still running names unfinished runs too: they are left out, and said so
        finished = [path for path in a.runs if RunDir(path).is_finished()]
        if len(finished) < len(a.runs):
            left = sorted(set(a.runs) - set(finished))
            print(f"{len(left)} run(s) not finished, left out: {' '.join(left)}", file=sys.stderr)
        configs = {path: RunDir(path).read_json("config.json") for path in finished}
        labels = {path: row_label(config) for path, config in configs.items()}
        if a.methods is not None:
            specs = [s for s in a.methods.split(",") if s.strip()]
            wanted = {s: row_label({"method": spec.name, "method_args": dict(spec.args)})
                      for s, spec in zip(specs, map(MethodSpec.parse, specs))}
            unmatched = [s for s, label in wanted.items() if label not in labels.values()]
            if unmatched:
                print(f"--methods: no finished run of {', '.join(unmatched)} among those named", file=sys.stderr)
            dropped = sorted({labels[path] for path in finished if labels[path] not in wanted.values()})
            if dropped:
                notes.append(f"Not in this report (not among `--methods`): {', '.join(dropped)}.")
            finished = [path for path in finished if labels[path] in wanted.values()]
        if not finished:
            raise UsageError("no finished run among those named" + (" of --methods" if a.methods else ""))
        seen: dict = {}
        for path in finished:   # as the tables: one row holds one run of a stream and seed (before any measuring)
            key = (labels[path], str(configs[path]["order"]), configs[path]["seed"])
            if key in seen:
                raise UsageError(f"{seen[key]} and {path} are both {key[0]} on order {key[1]}, seed {key[2]}: "
                                 "name one of them")
            seen[key] = path
        results, failed, unmeasured = [], [], []
        unloadable: dict = {}   # a model that cannot load is tried once, not once per run
        for path in finished:   # a run that cannot be measured (no weights, changed data) is left out, and said so
            if a.kept and not is_measured(path):
                unmeasured.append(path)
                continue
            try:
                result = measured(path, a.again, progress=True, unloadable=unloadable)
                results.append({**result, "label": labels[path], "outcomes": example_outcomes(path, result)})
            except UsageError as e:
                failed.append(path)
                print(f"left out: {e}", file=sys.stderr)
        if not results:
            raise UsageError(f"none of the {len(finished)} finished run(s) " +
                             ("holds a measurement this code reuses" if a.kept else "could be measured (above)"))
        if a.against and not any(r["label"] == a.against for r in results):
            raise UsageError(f"--against {a.against}: no run of that row among those reported "
                             f"({', '.join(sorted({r['label'] for r in results}))})")
    except UsageError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    against = a.against or ("craft" if any(r["label"] == "craft" for r in results) else None)
    text = report(results, against)
    if unmeasured:
        notes.append(f"Left out, as they hold no {RECORD} this code reuses (`--kept` measures nothing; "
                     f"`bench/protocols.py` without it measures those with their weights): {len(unmeasured)} run(s): "
                     + ", ".join(unmeasured) + ".")
    if failed:
        notes.append(f"Left out, as they could not be measured (their errors went to stderr): {len(failed)} run(s): "
                     + ", ".join(failed) + ".")
    text += "".join(f"\n{n}\n" for n in notes)
    write_report(text, a.out)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
