"""Two folders of runs, compared run for run: the same method, order and seed in each, made under two setups
(fp32 against bf16, caches on against off, this code against an older one). Each pair's AA and FM
difference, averaged per method and over every method, with the tables' interval over seeds (Student's t over
the pairs) and the test examples both runs scored (the tables' own resampling, so a pair stays paired on
examples), and the share of final answers that changed. It answers "does this change of setup move the numbers
beyond the spread a rerun has?", which a table of each folder alone cannot."""
from __future__ import annotations

import json

import numpy as np

from core.errors import UsageError
from harness import stats
from harness.config import ENVIRONMENT, SETUP, names, recorded_value
from harness.rundir import RunDir, other_test_examples
from harness.tables import Run, check_one_setup, index_runs, load_runs, protocol_text, sort_labels

METRICS = ("AA", "FM")
# Fields whose difference between the folders says what was compared (paths say nothing about the numbers).
SHOWN_FIELDS = tuple(n for n in names(SETUP, ENVIRONMENT)
                     if n not in ("out", "data_dir", "base_cache", "checkpoint_minutes"))
ALL = "all methods"


def _runs(root: str) -> list[Run]:
    runs, _ = load_runs(root)
    if not runs:
        raise UsageError(f"no finished run under {root}")
    check_one_setup(runs)
    return runs


def _differences(a: list[Run], b: list[Run], specs: list[str], pair_by: str = "spec") -> dict[str, list]:
    """field -> [values in A, values in B] for every shown config field whose values differ between the folders,
    and "<spec> <setting>" for a paired method's resolved settings that differ (a default changed between two
    checkouts: the runs still pair, as the same method, order and seed)."""
    def values(runs, get):
        return sorted({json.dumps(get(r), sort_keys=True) for r in runs})

    out = {}
    for name in SHOWN_FIELDS:
        va, vb = values(a, lambda r: recorded_value(r.config, name)), values(b, lambda r: recorded_value(r.config, name))
        if va != vb:
            out[name] = [[json.loads(v) for v in va], [json.loads(v) for v in vb]]
    for spec in specs:
        mine_a, mine_b = ([r for r in runs if getattr(r, pair_by) == spec] for runs in (a, b))
        settings_a = [recorded_value(r.config, "settings") or {} for r in mine_a]
        settings_b = [recorded_value(r.config, "settings") or {} for r in mine_b]
        for key in sorted({k for s in settings_a + settings_b for k in s}):
            va, vb = values(settings_a, lambda s: s.get(key)), values(settings_b, lambda s: s.get(key))
            if va != vb:
                out[f"{spec} {key}"] = [[json.loads(v) for v in va], [json.loads(v) for v in vb]]
    return out


def _final_predictions(run: Run) -> dict[str, str]:
    rows = RunDir(run.path).status().get("rows") or {}
    last = rows.get(str(run.matrix.index[-1])) or {}
    return last.get("predictions") or {}


def _check_same_examples(a: Run, b: Run) -> None:
    for task in a.tasks:
        da, db = ((r.config.get("data") or {}).get(task) or {} for r in (a, b))
        # by what both records keep (an old record: its sizes at least; then the pair has no interval over examples)
        kept = all(isinstance(d, dict) and "test" in d for d in (da, db))
        if not kept or other_test_examples({task: da}, {task: db}):
            raise UsageError(f"{a.path} and {b.path} were not scored on the same recorded test examples of {task}: "
                             "a paired comparison needs the same examples (same sizes, split and data)")


def paired_difference(pairs: list[tuple[Run, Run]], metric: str) -> dict | None:
    """Mean over pairs of (B's metric - A's), and its 95% interval: Student's t over the pairs (stats.over_runs, each
    method's order a stratum), each task's test examples resampled, the same draws for both runs of a pair. None
    when a pair lacks the metric (over the pairs that give it, as the tables average over the runs that give one: a
    joint method has no FM); no interval when a run kept no predictions."""
    pairs = [(a, b) for a, b in pairs if a.metrics[metric] is not None and b.metrics[metric] is not None]
    if not pairs:
        return None
    values = [(a.metrics[metric], b.metrics[metric]) for a, b in pairs]
    point = float(np.mean([y - x for x, y in values]))
    draws = [(a.samples(metric), b.samples(metric)) for a, b in pairs]
    bounds = None
    if all(x is not None and y is not None for x, y in draws):
        strata = [(a.label, a.order, a.protocol) for a, _ in pairs]   # a stream of one method under one protocol
        bounds = stats.metric_interval(stats.over_runs(np.stack([y - x for x, y in draws]), strata), metric, point,
                                       stats.POINTS)
    return {"mean": stats.shown(point), "ci": None if bounds is None else [stats.shown(b) for b in bounds],
            "excludes_zero": stats.excludes_zero(bounds), "pairs": len(pairs)}


PAIR_BY = ("spec", "label")


def _index(runs: list[Run], root: str, pair_by: str) -> dict[tuple, Run]:
    """(spec or label, order, seed, protocol) -> run; a folder holding two runs of one key is refused (which to
    pair?)."""
    return index_runs(runs, pair_by, lambda a, b: f"{root} holds two runs of {getattr(a, pair_by)}, order {a.order}, "
                      f"seed {a.seed} under one protocol ({a.path} and {b.path}): move one out to compare")


def compare(root_a: str, root_b: str, pair_by: str = "spec") -> dict:
    """Every (method spec, order, seed, evaluation protocol) finished in both folders, paired; per spec (and
    protocol, where the pairs hold more than one) and over all of them. pair_by="label" pairs by what the runs ran
    instead of how their sweep spelled it (`seq_lora+epochs=3` in one folder, `seq_lora` in another, where three
    epochs is today's default); spec (the default) keeps a default that moved between two checkouts paired."""
    if pair_by not in PAIR_BY:
        raise UsageError(f"compare pairs by {' or '.join(PAIR_BY)}, not {pair_by!r}")
    a_runs, b_runs = _runs(root_a), _runs(root_b)
    a_index, b_index = _index(a_runs, root_a, pair_by), _index(b_runs, root_b, pair_by)
    pairs: dict[tuple, list[tuple[Run, Run]]] = {}
    for key, a in a_index.items():
        b = b_index.get(key)
        if b is not None:
            _check_same_examples(a, b)
            pairs.setdefault((getattr(a, pair_by), a.protocol), []).append((a, b))
    if not pairs:
        raise UsageError(f"no run of {root_a} has a counterpart (same method, order, seed and protocol) in {root_b}")
    protocols = sorted({protocol for _, protocol in pairs})
    order = sorted(pairs, key=lambda k: (protocols.index(k[1]), sort_labels({p[0] for p in pairs}).index(k[0])))

    def name(key):
        return key[0] if len(protocols) == 1 else f"{key[0]} ({protocol_text(key[1])})"
    rows = {}
    for key in order + ([ALL] if len(pairs) > 1 else []):
        group = [p for k in order for p in pairs[k]] if key == ALL else pairs[key]
        changed = total = 0
        for a, b in group:
            pa, pb = _final_predictions(a), _final_predictions(b)
            for task in set(pa) & set(pb):
                x, y = stats.decode_labels(pa[task]), stats.decode_labels(pb[task])
                changed += int((x != y).sum())
                total += len(x)
        rows[ALL if key == ALL else name(key)] = {
            "pairs": len(group), "orders": sorted({a.order for a, _ in group}), "seeds": sorted({a.seed for a, _ in group}),
            "A": {m: _mean(a.metrics[m] for a, _ in group) for m in METRICS},
            "B": {m: _mean(b.metrics[m] for _, b in group) for m in METRICS},
            **{f"delta_{m}": paired_difference(group, m) for m in METRICS},
            "final_answers_changed": [changed, total]}
    paired = sum(map(len, pairs.values()))
    return {"A": root_a, "B": root_b, "pair_by": pair_by,
            "differences": _differences(a_runs, b_runs, sort_labels({k[0] for k in pairs}), pair_by),
            "rows": rows, "unpaired": {"A": len(a_runs) - paired, "B": len(b_runs) - paired}}


def _mean(values) -> float | None:
    values = [v for v in values if v is not None]
    return round(float(np.mean(values)), 2) if values else None


def _cell(d: dict | None) -> str:
    if d is None:
        return "–"
    if d["ci"] is None:
        return f"{d['mean']:+.2f}"
    return f"{d['mean']:+.2f} [{d['ci'][0]:.2f}, {d['ci'][1]:.2f}]" + (" *" if d["excludes_zero"] else "")


def markdown(result: dict) -> str:
    diff = "; ".join(f"{k}: {', '.join(map(str, va))} (A) vs {', '.join(map(str, vb))} (B)"
                     for k, (va, vb) in result["differences"].items()) or "no recorded setup field differs"
    lines = [f"A = {result['A']}, B = {result['B']}", f"Setup: {diff}.", "",
             "| method | pairs | orders | seeds | AA A | AA B | ΔAA (B - A) | FM A | FM B | ΔFM (B - A) "
             "| final answers changed |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]

    def num(v):
        return "–" if v is None else f"{v:.2f}"
    for label, r in result["rows"].items():
        changed, total = r["final_answers_changed"]
        share = f"{changed} of {total} ({100 * changed / total:.1f}%)" if total else "–"
        lines.append(f"| {label} | {r['pairs']} | {', '.join(r['orders'])} | {', '.join(map(str, r['seeds']))} "
                     f"| {num(r['A']['AA'])} | {num(r['B']['AA'])} | {_cell(r['delta_AA'])} | {num(r['A']['FM'])} "
                     f"| {num(r['B']['FM'])} | {_cell(r['delta_FM'])} | {share} |")
    unpaired = result["unpaired"]
    same = ("the same settings, however their folders spell them (--pair-by label)" if result.get("pair_by") == "label"
            else "the same method (and fixed settings)")
    lines += ["", f"Pairs: {same}, order, seed and evaluation protocol finished in both folders "
              f"({unpaired['A']} run(s) of A and {unpaired['B']} of B have no counterpart); a Δ is over the pairs "
              "that give the metric (a joint method has no FM). [lo, hi]: "
              f"{stats.LEVEL}% interval ({stats.RESAMPLES} resamples): Student's t over the pairs' spread about their "
              "stream's mean (pairs - streams degrees of freedom; with one pair a stream, none: the examples' spread "
              "alone), each task's evaluation examples bootstrapped, "
              "the same draws for both runs of a pair (ΔFM's ends reflected about its point: docs/results.md"
              "#intervals); * = it excludes 0. Final answers changed: evaluation examples "
              "of the last row whose predicted label differs."]
    return "\n".join(lines) + "\n"
