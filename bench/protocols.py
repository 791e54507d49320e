"""Rank scoring against generation, on the same trained models: which methods' ranking changes between them.

Each finished run's final state (its last checkpoint, kept beside the record but not committed) answers the
run's own evaluation examples twice: `rank` (the label of highest likelihood among the task's own labels,
read from the run's record) and `generate` (greedy decoding, exact match after O-LoRA's normalisation). A
generated answer is sorted into: the task's right label, another of its labels, a label of another task of
the stream (cross-task interference, which rank scoring cannot show), or something else. Writes a markdown
report; needs the weights, so it measures runs made on this machine. Each run's measurement is kept in its
folder (`protocols.json`, committed with the record): a rerun reuses it (`--again` measures anew), so a long
study killed part-way resumes, and the report can be rebuilt without the weights.

    python bench/protocols.py results/val/runs/*/offline*/seed* --out results/val/protocols.md
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
from collections import defaultdict

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import tasks  # noqa: E402
from core.errors import UsageError  # noqa: E402
from harness.config import recorded_value  # noqa: E402
from harness.evaluation import Evaluator, generate_predictions, normalize_answer, predict  # noqa: E402
from harness.models import autocast, configure_offline, load_model, set_threads  # noqa: E402
from harness.prompting import PromptEncoder  # noqa: E402
from harness.rundir import RunDir, write_json, write_report  # noqa: E402
from harness.stats import decode_labels, encode_labels  # noqa: E402
from methods import get_method  # noqa: E402

KINDS = ("right", "own_label", "other_task_label", "no_label")


def sort_answer(answer: str, gold: str, own: set[str], others: set[str]) -> str:
    """Which of KINDS a normalised generated answer is (labels normalised the same way)."""
    if answer == gold:
        return "right"
    if answer in own:
        return "own_label"
    if answer in others:
        return "other_task_label"
    return "no_label"


def final_row(config: dict, status: dict) -> str:
    return "all" if "all" in status["rows"] else config["tasks"][-1]


def measure(path: str, progress: bool = False, unloadable: dict | None = None) -> dict:
    """One run's final state under both protocols: per task, rank accuracy (from the record) and the generated
    answers sorted into KINDS (counts). Every error names the run. `unloadable`: {(model, device): why} of the
    models that failed to load for earlier runs, filled here, so a grid's model is not tried once per run."""
    run = RunDir(path)
    status = run.status()
    if not status or status.get("state") != "finished":
        raise UsageError(f"{path} is not a finished run")
    if not run.has_checkpoint():
        raise UsageError(f"{path} has no checkpoint (run records are committed without their weights)")
    config = run.read_json("config.json")
    if recorded_value(config, "eval") != "rank":
        raise UsageError(f"{path} was evaluated with --eval {config['eval']}: its record holds no rank answers")
    data_dir = config.get("data_dir") if config.get("data_dir") and os.path.isdir(config["data_dir"]) else None
    try:
        data = {n: tasks.load_task(n, data_dir, config["train_per_task"], config["test_per_task"], config["seed"],
                                   config.get("eval_split", "test")) for n in config["tasks"]}
        method_cls = get_method(config["method"])
    except UsageError as e:
        raise UsageError(f"{path}: {e}") from None
    for name, d in data.items():   # the same examples the run answered (a data folder gone or changed is not)
        gold = config["data"][name].get("gold")
        if gold is not None and encode_labels([d.labels.index(ex.label) for ex in d.test]) != gold:
            raise UsageError(f"{path}: {name}'s evaluation examples here are not the ones the run answered "
                             "(its data folder changed or is missing on this machine)")
    unloadable = {} if unloadable is None else unloadable
    key = (config["model"], config.get("device", "cpu"))
    if key not in unloadable:
        try:
            model, tok = load_model(*key)
        except UsageError as e:
            unloadable[key] = str(e)
    if key in unloadable:
        raise UsageError(f"{path}: {unloadable[key]}")
    encoder = PromptEncoder(tok, config["max_input_tokens"])
    batch, dtype = recorded_value(config, "eval_batch_size"), recorded_value(config, "dtype")
    evaluator = Evaluator(encoder, data, "generate", batch, dtype, progress=False)
    method = method_cls(model, tok, recorded_value(config, "settings"), config["seed"],
                        cache_mb=config.get("cache_mb", 0) if config.get("cache") == "on" else 0)
    method.setup()
    method.load_state_dict(run.load_checkpoint(map_location=method.device))
    row = status["rows"][final_row(config, status)]
    labels = {n: {normalize_answer(label) for label in d.labels} for n, d in data.items()}
    label = "+".join([config["method"]] + [f"{k}={v}" for k, v in config.get("method_args", {}).items()])
    out = {"label": label, "order": config["order"], "seed": config["seed"], "tasks": {}}   # label: as a sweep's
    share = config.get("cache") == "on"
    for k, (name, examples) in enumerate(evaluator.test.items()):
        gold = [ex.label_index for ex in examples]
        ranked = decode_labels(row["predictions"][name])
        scorer = method.scorer(name)
        if k in (0, len(evaluator.test) - 1):   # the restored state must be the run's: rank answers scored again
            with autocast(dtype, scorer.device):
                again = predict(scorer, examples, evaluator.candidates[name], data[name].labels, encoder, "rank",
                                batch, share_prefix=share)
            out.setdefault("restored_check", {})[name] = int(sum(int(a) != int(b) for a, b in zip(again, ranked)))
            scorer = method.scorer(name)
        max_new = max(len(c) for c in evaluator.candidates[name]) + 2
        with autocast(dtype, scorer.device):
            generated = generate_predictions(scorer, examples, encoder.end_id, tok.pad_token_id, max_new,
                                             batch, share_prefix=share)
        others = set().union(*[labels[m] for m in labels if m != name]) - labels[name]
        kinds = dict.fromkeys(KINDS, 0)
        for g, y in zip(generated, gold):
            answer = normalize_answer(encoder.decode_answer(g))
            kinds[sort_answer(answer, normalize_answer(data[name].labels[y]), labels[name], others)] += 1
        rank = 100.0 * sum(int(p) == y for p, y in zip(ranked, gold)) / len(gold)
        out["tasks"][name] = {"n": len(gold), "rank": rank, "kinds": kinds}
        if progress:
            print(f"{path}: {name} rank {out['tasks'][name]['rank']:.1f}, generate "
                  f"{100.0 * kinds['right'] / len(gold):.1f}, {kinds}", file=sys.stderr)
    return out


RECORD = "protocols.json"
RECORD_VERSION = 1   # raise when measure() or the sorting of answers changes: kept measurements are then redone


def measured(path: str, again: bool = False, progress: bool = False, unloadable: dict | None = None) -> dict:
    """measure(path), kept in the run's folder; a kept measurement is reused unless `again`, or unless it was made
    by another version of this script or of another run in that folder (its finishing time differs)."""
    run = RunDir(path)
    stamp = {"version": RECORD_VERSION, "run_finished": (run.status() or {}).get("finished")}
    if not again and os.path.isfile(run.file(RECORD)):
        kept = run.read_json(RECORD)
        if kept.get("stamp") == stamp:
            return kept
    result = {**measure(path, progress, unloadable), "stamp": stamp}
    write_json(run.file(RECORD), result)
    return result


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
