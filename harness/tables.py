"""Run directories -> the results section: tables (Markdown and LaTeX booktabs), figures, results/README.md.

Reads only finished runs (status.json says so) and never invents a number: a cell without a run is "–".
Runs are grouped by method *label*: the method name plus the settings the run ran with that differ from the
method's defaults today (craft [routing=single]), so a run made before a default moved is named by what it ran."""
from __future__ import annotations

import itertools
import json
import os
import re
import shlex
import time
from collections import Counter
from dataclasses import dataclass, replace

import numpy as np
import pandas as pd

from core.errors import UsageError
from harness import metrics as metrics_mod
from harness import stats
from harness.config import (FIELDS, SETUP, device_kind, former_defaults_named, label_args, moved_settings, names,
                            recorded_value, reproducing_args, setup_of, spell_options, spell_setting)
from harness.config import ran_defaults as config_ran_defaults
from harness.rundir import EXAMPLE_KEYS, RunDir, atomic_write, other_test_examples

MISSING = "–"
# Blocks of orders shown side by side, as in O-LoRA's Table 1; other orders get a block each.
ORDER_BLOCKS = [("Orders 1-3", ["1", "2", "3"]), ("Orders 4-6", ["4", "5", "6"]),
                ("Offline orders", ["offline1", "offline2", "offline3"])]
KNOWN_ORDERS = [o for _, members in ORDER_BLOCKS for o in members]
# Rows in this order where present; anything else follows alphabetically.
METHOD_ORDER = ["seq_lora", "replay", "inc_lora", "o_lora", "i_lora", "craft", "zero_shot", "per_task", "mtl"]
SETUP_KEYS = names(SETUP)   # what every run of one table shares (harness/config.py gives each field its role)
# Setup fields that split the runs into separate sets of tables instead of being refused: numbers of the rank and
# generate protocols, or of the validation and test splits, are never averaged together, but both may be
# reported. eval_split is read with its default, so runs recorded before the field existed count as test.
PROTOCOL_DEFAULTS = {name: FIELDS[name].default for name in ("eval", "eval_split")}


@dataclass
class Run:
    path: str
    method: str
    label: str
    order: str
    seed: int
    tasks: list[str]
    setup: tuple
    matrix: pd.DataFrame
    metrics: dict
    card: dict
    config: dict
    general: dict | None = None
    started: str = ""    # when the run first started and when it finished, UTC (status.json's clock; a run without
    finished: str = ""   # a start there: config.json's created, in its machine's local time), "" where not recorded
    scores: stats.ExampleScores | None = None   # None: recorded before per-example predictions were kept
    _samples: dict | None = None
    _general_samples: np.ndarray | None = None

    @property
    def protocol(self) -> tuple:
        return tuple(recorded_value(self.config, key) for key in PROTOCOL_DEFAULTS)

    def samples(self, metric: str) -> np.ndarray | None:
        """The metric under every bootstrap resample of the test examples ([stats.RESAMPLES]); None without
        predictions or where the run cannot give the metric."""
        if self.scores is None:
            return None
        if self._samples is None:
            self._samples = self.scores.metric_samples()
        return self._samples.get(metric)   # a run read on some tasks (on_tasks) keeps AA and BWT alone

    @property
    def general_metric(self) -> str | None:
        """What the run's general.json measured: balanced accuracy, or plain accuracy (a file written before
        balanced accuracy, which names no metric); None without a general.json."""
        return None if self.general is None else self.general.get("metric", "accuracy")

    def general_samples(self) -> np.ndarray | None:
        """The general.json's change under every bootstrap resample; None where it kept no per-example answers."""
        if self._general_samples is None and self.general_metric == stats.BALANCED:
            self._general_samples = stats.general_samples(self.general.get("tasks") or {})
        return self._general_samples

    @property
    def spec(self) -> str:
        """The method and the settings its sweep fixed, as it was made (label names what it ran against today's
        defaults): what pairs a run with its rerun under another setup or checkout (harness compare)."""
        return method_label(self.method, self.config.get("method_args") or {}, named=False)

    @property
    def folder(self) -> str:
        """The folder its sweep filed it under (runs/<folder>/<order>/seed<N>): the spec's name when it was made."""
        return os.path.basename(os.path.dirname(os.path.dirname(os.path.normpath(self.path))))

    @property
    def ran_defaults(self) -> bool:
        """Ran its method's defaults of some time (today's or earlier ones): config.ran_defaults."""
        return config_ran_defaults(self.config)

    @property
    def bound(self) -> bool:
        return bool(self.card.get("bound"))

    @property
    def final(self) -> pd.Series:
        return metrics_mod.trained_rows(self.matrix).iloc[-1]


def method_label(method: str, method_args: dict, named: bool = True) -> str:
    """`craft`, `craft [lr=0.001]`, or, `named`, with one of the method's former defaults by its name:
    `craft (one-epoch defaults) [lr=0.001]` (the README says what each name stands for)."""
    former, rest = former_defaults_named(method, method_args) if named else (None, method_args)
    head = method if former is None else f"{method} ({former})"
    return head if not rest else f"{head} [" + ", ".join(f"{k}={v}" for k, v in sorted(rest.items())) + "]"


def label_method(label: str) -> str:
    """The method a row label names (method_label read back)."""
    return label.split(" [")[0].split(" (")[0]


def utc_text(epoch_seconds) -> str:
    """A status.json time (seconds since the epoch) as config.json's "created" reads, in UTC, so every machine
    prints the same (created is the run machine's local time)."""
    if not isinstance(epoch_seconds, (int, float)):
        return ""
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(epoch_seconds))


def load_runs(root: str) -> tuple[list[Run], list[str]]:
    """Every finished run under root, and the paths of unfinished ones."""
    if not os.path.isdir(root):
        raise UsageError(f"no runs folder at {root}")
    finished, unfinished = [], []
    for folder, dirs, files in os.walk(root):
        dirs.sort()
        if "status.json" not in files:
            continue
        run = RunDir(folder)
        status = run.status()   # a corrupt or ill-shaped one is a one-line UsageError, like every read below
        if status is None or status["state"] != "finished":
            unfinished.append(folder)
            continue
        config, card = run.read_json("config.json"), run.read_json("method.json")
        card["timing"] = run.timing()   # its seconds less the spans the run lay stopped
        matrix = metrics_mod.read_matrix(run.file("matrix.csv"))
        general = run.read_json("general.json") if os.path.isfile(run.file("general.json")) else None
        try:
            finished.append(Run(
                path=folder, method=config["method"],
                label=method_label(config["method"], label_args(config)), order=str(config["order"]),
                seed=int(config["seed"]), tasks=list(config["tasks"]), setup=setup_of(config), matrix=matrix,
                metrics=metrics_mod.compute(matrix), card=card, config=config, general=general,
                started=utc_text(status.get("started")) or config.get("created", ""),
                finished=utc_text(status.get("finished")),
                scores=stats.example_scores(config, status, matrix, folder)))
        except (KeyError, TypeError, ValueError) as e:
            raise UsageError(f"{run.file('config.json')} is corrupt: {e!r}") from None
    return finished, unfinished


def check_one_setup(runs: list[Run]) -> tuple:
    """The setup every run shares (protocol fields aside: those split the tables, by_protocol)."""
    def shared(r):
        return tuple(v for k, v in zip(SETUP_KEYS, r.setup) if k not in PROTOCOL_DEFAULTS)
    setups = sorted({shared(r) for r in runs}, key=str)
    if len(setups) > 1:
        keys = [k for k in SETUP_KEYS if k not in PROTOCOL_DEFAULTS]
        described = "; ".join(", ".join(f"{k}={v}" for k, v in zip(keys, s)) for s in setups)
        raise UsageError(f"the runs mix {len(setups)} setups ({described}); numbers from different sizes or "
                         "models must not share a table: point --runs at a folder with one setup")
    # One row = one method with one set of settings. Labels name the settings that differ from today's defaults,
    # so this only catches a method this code lacks, whose label is its recorded args.
    by_label: dict[str, dict[str, list[str]]] = {}
    for r in runs:
        key = json.dumps(recorded_value(r.config, "settings"), sort_keys=True)
        by_label.setdefault(r.label, {}).setdefault(key, []).append(r.path)
    for label, variants in by_label.items():
        if len(variants) > 1:
            groups = " vs ".join(paths[0] + (f" (+{len(paths) - 1} more)" if len(paths) > 1 else "")
                                 for paths in variants.values())
            raise UsageError(f"runs of {label} were made with different settings ({groups}); move the stale "
                             "ones out of the runs folder")
    # Two folders that ran the same settings (craft+epochs=3 once the default moved to 3, beside craft) give one
    # row; on the same stream and seed, which run would speak for it?
    index_runs(runs, "label", lambda a, b: f"{a.path} and {b.path} ran the same settings ({a.label}) on order "
               f"{a.order}, seed {a.seed}: move one out of the runs folder")
    check_same_examples(runs)
    return runs[0].setup


def check_same_examples(runs: list[Run]) -> None:
    """Under one protocol, every run scored each task on the same test examples, as far as the records tell
    (rundir.EXAMPLE_KEYS): the paired intervals draw the same examples for both runs of a pair, and a setup's
    sizes alone do not pin the examples down (two data folders of one task at one size). A sweep refuses a cell
    of other data; runs gathered from several machines into one folder are checked here."""
    kinds: dict[tuple, list[tuple[dict, Run]]] = {}   # (protocol, task) -> each distinct record and a run of it
    for r in runs:
        for task, record in (r.config.get("data") or {}).items():
            if not isinstance(record, dict):
                continue
            kept = {k: record[k] for k in EXAMPLE_KEYS if k in record}   # the data's path and source may differ
            seen = kinds.setdefault((r.protocol, task), [])
            for other, first in seen:
                if other_test_examples({task: other}, {task: kept}):
                    raise UsageError(f"{first.path} and {r.path} scored {task} on different test examples (another "
                                     "data folder?); runs of one table must share them: move one out of the runs "
                                     "folder")
            if all(other != kept for other, _ in seen):
                seen.append((kept, r))


def index_runs(runs: list[Run], name: str, clash) -> dict[tuple, Run]:
    """(run.<name>, order, seed, protocol) -> run; UsageError(clash(first, second)) where two runs share a key."""
    index: dict[tuple, Run] = {}
    for r in runs:
        key = (getattr(r, name), r.order, r.seed, r.protocol)
        if key in index:
            raise UsageError(clash(index[key], r))
        index[key] = r
    return index


def by_protocol(runs: list[Run]) -> dict[tuple, list[Run]]:
    """The runs per evaluation protocol (eval mode, split), the default protocol first."""
    groups: dict = {}
    for r in runs:
        groups.setdefault(r.protocol, []).append(r)
    default = tuple(PROTOCOL_DEFAULTS.values())
    return dict(sorted(groups.items(), key=lambda g: (g[0] != default, g[0])))


def protocol_text(protocol: tuple) -> str:
    return ", ".join(f"{k} {v}" for k, v in zip(PROTOCOL_DEFAULTS, protocol))


# ---- orders and labels ----------------------------------------------------------------------------------
def order_rank(order: str) -> tuple:
    """Sort key: the known orders as the blocks list them, anything else after, alphabetically."""
    return (KNOWN_ORDERS.index(order) if order in KNOWN_ORDERS else len(KNOWN_ORDERS), order)


def block_of(order: str) -> str:
    return next((title for title, members in ORDER_BLOCKS if order in members), f"Order {order}")


def blocks_for(orders: set[str]) -> list[tuple[str, list[str]]]:
    out = [(title, members) for title, members in ORDER_BLOCKS if orders & set(members)]
    out += [(f"Order {o}", [o]) for o in sorted(orders - set(KNOWN_ORDERS))]
    return out


def sort_labels(labels: set[str]) -> list[str]:
    def key(label):
        base = label_method(label)
        rank = METHOD_ORDER.index(base) if base in METHOD_ORDER else len(METHOD_ORDER)
        return rank, base, label != base, label
    return sorted(labels, key=key)


# ---- the runs as one table ------------------------------------------------------------------------------
CSV_COLUMNS = ["run", "method", "label", "order", "seed", *PROTOCOL_DEFAULTS, "AA", "BWT", "FM", "FWT", "LA",
               "general_change", "general_metric", "trainable_parameters", "parameters_kept", "wall_seconds",
               "device", "created"]


def runs_frame(runs: list[Run], root: str) -> pd.DataFrame:
    """One row per run, in load order (a label's first row is its first run): every table's numbers and runs.csv
    come from it. A metric a run cannot have (BWT of joint training) is empty."""
    return pd.DataFrame([{
        "run": os.path.relpath(r.path, root), "method": r.method, "label": r.label, "order": r.order,
        "seed": r.seed, **dict(zip(PROTOCOL_DEFAULTS, r.protocol)),
        **{k: r.metrics[k] for k in ("AA", "BWT", "FM", "FWT", "LA")},
        "general_change": r.general["change"] if r.general else None, "general_metric": r.general_metric,
        "trainable_parameters": r.card["trainable_parameters"], "parameters_kept": r.card.get("parameters_kept"),
        "wall_seconds": r.card["timing"]["wall_seconds"], "created": r.config.get("created"),
        "device": device_kind(r.config.get("device")),
        "block": block_of(r.order), "bound": r.bound, "ran_defaults": r.ran_defaults, "tasks": len(r.tasks),
        "train_seconds": r.card["timing"]["train_seconds"], "eval_seconds": r.card["timing"]["eval_seconds"],
        "train_steps": sum(stage.get("steps") or 0 for stage in r.card["timing"].get("per_stage", {}).values()),
        "uses_task_id_at_test": bool(r.card.get("uses_task_id_at_test")),
        "keeps_from_past_tasks": r.card.get("keeps_from_past_tasks", "")} for r in runs])


# ---- numbers --------------------------------------------------------------------------------------------
def mean_std(grouped) -> pd.Series | pd.DataFrame:
    """Per group: "mean ± std" (std only over two or more values; NaN skipped), NaN where there is no value."""
    mean, std = grouped.mean(), grouped.std()
    text = mean.map("{:.2f}".format) + std.map(lambda s: "" if pd.isna(s) else f" ± {s:.2f}")
    return text.where(mean.notna())


def spread(grouped, digits: int = 1) -> pd.Series:
    """Per group: "median [min–max]". For timings, where a run slowed by a busy machine should not move the
    centre the way it moves a mean."""
    s = grouped.agg(["median", "min", "max", "count"])   # count: the values there are (NaN: none to time)
    num = f"{{:.{digits}f}}".format
    text = s["median"].map(num) + (" [" + s["min"].map(num) + "–" + s["max"].map(num) + "]").where(s["count"] > 1, "")
    return text.where(s["count"] > 0, MISSING)


def block_average(frame: pd.DataFrame, members: list[str]) -> pd.Series:
    """AA averaged over the block's orders, per (label, seed); NaN for a seed that missed one of them, so that
    no average is over fewer (perhaps easier) orders."""
    aa = frame[frame.order.isin(members)].pivot_table(index=["label", "seed"], columns="order", values="AA")
    return aa.reindex(columns=members).mean(axis=1, skipna=False)


def order_dispersion(runs: list[Run], label: str, members: list[str]) -> dict | None:
    """Per seed that ran every order of the block (two or more): OPD_i = max - min over orders of R[T][i], for
    each task every order has; AOPD = mean_i OPD_i, MOPD = max_i OPD_i; mean and std of AA over the orders. Then
    the mean over those seeds (docs/design.md#order-dispersion): taken on seed means instead, a method with more
    seeds would look more robust for having averaged its noise away. None when no seed ran every order."""
    if len(set(members)) < 2:
        return None
    mine = [r for r in runs if r.label == label and r.order in members]
    per_seed = []
    for seed in sorted({r.seed for r in mine}):
        ran = [r for r in mine if r.seed == seed]
        finals = pd.DataFrame([r.final for r in ran], index=[r.order for r in ran]).groupby(level=0).mean()
        if set(finals.index) != set(members):
            continue
        shared = finals.dropna(axis=1)         # the tasks every order has
        opd = shared.max() - shared.min()
        aa = finals.mean(axis=1)               # each order over its own tasks
        per_seed.append({"AA_mean": aa.mean(), "AA_std": aa.std(), "AOPD": opd.mean(), "MOPD": opd.max(), "OPD": opd})
    if not per_seed:
        return None
    mean = {key: float(np.mean([d[key] for d in per_seed])) for key in ("AA_mean", "AA_std", "AOPD", "MOPD")}
    return {**mean, "OPD": pd.concat([d["OPD"] for d in per_seed], axis=1).mean(axis=1).to_dict(),
            "seeds": len(per_seed)}


# ---- intervals over seeds and test examples ---------------------------------------------------------------
ACCURACIES = ("AA", "LA")   # metrics that are accuracies, in [0, 100] (the others are changes, in [-100, 100])


def value_range(metric: str) -> tuple[float, float]:
    """The range a metric's value can take, to which its interval's draws are clipped (stats.over_runs)."""
    return stats.ACCURACY if metric in ACCURACIES else stats.POINTS


@dataclass
class Summary:
    """A mean over seeds of per-seed values (each a mean over orders), or over runs, with its bootstrap interval
    where every run kept its predictions, else the standard deviation of those values."""
    mean: float
    std: float | None
    bounds: tuple[float, float] | None
    values: int    # how many values the mean and std are over (seeds, or runs)
    # the interval holds the evaluation examples' spread alone: one run per order (stats.over_runs' 0 degrees of
    # freedom), so no seed's spread is in it
    examples_only: bool = False
    p: float | None = None       # two-sided p of "no difference" from the interval's resamples (stats.p_value)
    # significant under Holm's correction over its family (compare_block); None: not part of a family
    holm: bool | None = None

    def text(self, signed: bool = False, mark: bool = False) -> str:
        num = "{:+.2f}" if signed else "{:.2f}"
        if self.bounds is not None:
            lo, hi = self.bounds
            starred = (" **" if self.holm else " *") if mark and stats.excludes_zero(self.bounds) else ""
            return f"{num.format(self.mean)} [{lo:.2f}, {hi:.2f}]{starred}"
        return num.format(self.mean) + ("" if self.std is None or self.values < 2 else f" ± {self.std:.2f}")


def summarize(per_seed: dict[int, list[tuple[Run, Run | None]]], metric: str,
              rule: bool = False) -> Summary | None:
    """per_seed: seed -> the (run, reference) pairs of that seed, one per order; the value of a pair is the run's
    metric minus the reference's (None: the metric itself). Per seed the mean over its pairs, then over seeds
    (the mean over pairs: every seed brings every order); the interval is stats.over_runs' over the pairs (each
    order a stratum) and each task's resampled test examples (the same draws for every run: pairs stay paired on
    examples too). rule: the tuning rule's seeds drawn with replacement instead (stats.over_seeds). None when no
    seed gives the metric."""
    def value(run, ref, get):
        a = get(run)
        b = get(ref) if ref is not None else 0.0
        return None if a is None or b is None else a - b

    plain = all(ref is None for pairs in per_seed.values() for _, ref in pairs)
    within = value_range(metric) if plain else stats.POINTS   # a difference of accuracies is a change
    points, per_seed_samples, pair_samples, orders, pair_values = [], [], [], [], []
    for pairs in per_seed.values():
        values = [value(r, ref, lambda x: x.metrics[metric]) for r, ref in pairs]
        if not pairs or any(v is None for v in values):
            continue
        points.append(float(np.mean(values)))
        pair_values += values
        draws = [value(r, ref, lambda x: x.samples(metric)) for r, ref in pairs]
        per_seed_samples.append(None if any(d is None for d in draws) else np.mean(draws, axis=0))
        pair_samples += draws
        orders += [r.order for r, _ in pairs]
    if not points:
        return None
    bounds = p = None
    if all(x is not None for x in per_seed_samples):
        if rule:   # the tuning rule's statistic stays as it was fixed (percentile ends; bench/tuning_rule.py)
            bounds = stats.interval(stats.over_seeds(np.stack(per_seed_samples)))
        else:      # about the mean over the pairs: what stats.over_runs' draws are the mean of
            draws, point = stats.over_runs(np.stack(pair_samples), orders, within), float(np.mean(pair_values))
            bounds = stats.metric_interval(draws, metric, point, within)
            p = stats.metric_p_value(draws, metric, point)
    std = float(np.std(points, ddof=1)) if len(points) > 1 else None
    alone = bounds is not None and (len(points) < 2 if rule else stats.seed_degrees(orders) < 1)
    return Summary(float(np.mean(points)), std, bounds, len(points), alone, p)


def over_runs(runs: list[Run], value, samples, within=stats.POINTS, of: str | None = None,
              metric: str | None = None) -> Summary | None:
    """The mean of value(run) over the runs that give one (every order and seed of a block that ran: the
    forgetting table's cells), with stats.over_runs' interval (each order a stratum) where every such run gives
    samples(run) (its value under each resample of the test examples), clipped to `within` (value_range).
    Otherwise the std over runs. of: the mean of that order's runs alone, its interval's spread pooled over
    every order of `runs` (the main table's column of one order): over those of their runs that give samples, an
    interval wherever every run of that order does. metric: the metric the values are, which picks the interval's
    kind (stats.metric_interval; percentile ends without one)."""
    have = [(r, v) for r in runs if (v := value(r)) is not None]
    points = np.array([v for r, v in have if of is None or r.order == of], dtype=float)
    if not len(points):
        return None
    draws = [(r, samples(r)) for r, _ in have]
    if of is not None:   # another order's run without samples lends no spread, and takes none away
        draws = [(r, d) for r, d in draws if d is not None or r.order == of]
    bounds = None
    if all(d is not None for _, d in draws):
        bounds = stats.metric_interval(stats.over_runs(np.stack([d for _, d in draws]), [r.order for r, _ in draws],
                                                       within, of=of), metric, float(points.mean()), within)
    std = float(np.std(points, ddof=1)) if len(points) > 1 else None
    alone = bounds is not None and stats.seed_degrees(r.order for r, _ in draws) < 1
    return Summary(float(points.mean()), std, bounds, len(points), alone)


def by_seed(runs: list[Run], label: str, orders: list[str], reference: str | None = None) -> dict:
    """seed -> [(run of label, run of reference or None)] over `orders`, for the seeds where every one of those
    orders ran (for both labels): an average is never over fewer, perhaps easier, orders."""
    index = {(r.label, r.order, r.seed): r for r in runs}
    seeds = sorted({r.seed for r in runs if r.label == label})
    out = {}
    for seed in seeds:
        pairs = [(index.get((label, o, seed)), index.get((reference, o, seed)) if reference else None) for o in orders]
        if all(a is not None and (reference is None or b is not None) for a, b in pairs):
            out[seed] = pairs
    return out


def shared_orders(runs: list[Run], labels: list[str], members: list[str]) -> list[str]:
    """The block's orders on which every one of `labels` has a run."""
    have = [{r.order for r in runs if r.label == lab} for lab in labels]
    return [o for o in members if all(o in h for h in have)]


def missing_predictions_note(runs: list[Run]) -> str | None:
    missing = sum(r.scores is None for r in runs)
    if not missing:
        return None
    return (f"{missing} of {len(runs)} runs were recorded before per-example predictions were kept: their cells show "
            "mean ± std over seeds only (no interval over evaluation examples, which the seeds share).")


BOOTSTRAP_NOTE = (f"[lo, hi] = {stats.LEVEL}% interval over seeds (where an order ran several) and evaluation examples "
                  f"({stats.RESAMPLES} "
                  "resamples): Student's t over the runs' spread about their order's mean (runs - orders degrees of "
                  "freedom), around the mean under a bootstrap of each task's evaluation examples (of the test split "
                  "unless the heading names another), the same draws for every run, so methods compared on one task "
                  "are compared on the same examples. FM's interval (and ΔFM's) is reflected about its point "
                  "(2 FM - hi, 2 FM - lo: the basic bootstrap), since its maximum over rows lifts the resamples above "
                  "it (docs/results.md#intervals). That is not enough on long orders: with nothing forgotten, "
                  "simulated on 15 tasks, FM's reflected interval covered the true 0 in about half the experiments, "
                  "BWT's in 92-96%; on orders 4-6 read forgetting by BWT.")


# ---- tables ---------------------------------------------------------------------------------------------
def latex_text(text: str) -> str:
    return (text.replace("\\", r"\textbackslash{}").replace("_", r"\_").replace("%", r"\%")
            .replace("&", r"\&").replace("#", r"\#").replace(" ± ", r" $\pm$ ").replace(MISSING, "--")
            .replace("↑", r"$\uparrow$").replace("↓", r"$\downarrow$").replace("Δ", r"$\Delta$")
            .replace("†", r"$\dagger$").replace("‡", r"$\ddagger$"))


@dataclass
class Table:
    name: str
    title: str
    columns: dict    # (group, heading) -> formatted cell per label, None where nothing ran; group "" = none
    sections: list[tuple[str | None, list[str]]]    # (title, its labels), in row order
    notes: list[str]
    row_heading: str = "Method"
    shown: dict | None = None   # label -> the name its row shows, where one name recurs in several sections

    def rows(self) -> list[tuple[str | None, list[list[str]]]]:
        labels = [label for _, labels in self.sections for label in labels]
        body = pd.DataFrame(self.columns, index=labels).fillna(MISSING)
        shown = self.shown or {}
        return [(title, [[shown.get(label, label), *body.loc[label]] for label in labels])
                for title, labels in self.sections]

    def markdown(self) -> str:
        # One header row in Markdown: a heading that repeats across groups carries its group's title.
        count = Counter(h for _, h in self.columns)
        head = [self.row_heading] + [f"{g}: {h}" if count[h] > 1 and g else h for g, h in self.columns]
        lines = [f"### {self.title}", "", "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
        for section, rows in self.rows():
            if section:
                lines.append(f"| *{section}* |" + " |" * len(self.columns))
            lines += ["| " + " | ".join(row) + " |" for row in rows]
        if self.notes:
            lines += [""] + self.notes
        return "\n".join(lines) + "\n"

    def latex(self) -> str:
        # Booktabs by hand: Styler.to_latex writes neither a row spanning the table (section titles) nor a
        # \cmidrule under a column group; splicing both into its output would be longer and more fragile.
        ncols = len(self.columns)
        lines = [f"% {self.title}", r"\begin{tabular}{l" + "r" * ncols + "}", r"\toprule"]
        groups = [(g, len(list(run))) for g, run in itertools.groupby(g for g, _ in self.columns)]
        if any(g for g, _ in groups):
            cells, rules, start = [""], [], 2
            for g, n in groups:
                cells.append(rf"\multicolumn{{{n}}}{{c}}{{{latex_text(g)}}}" if n > 1 else latex_text(g))
                if g:
                    rules.append(rf"\cmidrule(lr){{{start}-{start + n - 1}}}")
                start += n
            lines += [" & ".join(cells) + r" \\", " ".join(rules)]
        lines.append(" & ".join([latex_text(self.row_heading)] + [latex_text(h) for _, h in self.columns]) + r" \\")
        lines.append(r"\midrule")
        for i, (section, rows) in enumerate(self.rows()):
            if i:
                lines.append(r"\midrule")
            if section:
                lines.append(rf"\multicolumn{{{ncols + 1}}}{{l}}{{\emph{{{latex_text(section)}}}}} \\")
            lines += [" & ".join(latex_text(c) for c in row) + r" \\" for row in rows]
        lines += [r"\bottomrule", r"\end{tabular}"]
        return "\n".join(lines) + "\n"


def main_label(frame: pd.DataFrame, method: str) -> str | None:
    """The row that stands for a method: its runs of today's defaults (the bare name); where none ran, those of
    the defaults of their time (runs that fixed no setting, named by what has moved since; the latest such
    where defaults moved twice); None where only variants ran."""
    mine = frame[frame.method == method]
    if (mine.label == method).any():
        return method
    past = mine[mine.ran_defaults].sort_values("created", na_position="first")
    return None if past.empty else past.label.iloc[-1]


def main_labels(frame: pd.DataFrame) -> set[str]:
    return {lab for lab in (main_label(frame, m) for m in set(frame.method)) if lab is not None}


def sections_of(frame: pd.DataFrame) -> list[tuple[str | None, list[str]]]:
    labels = sort_labels(set(frame.label))
    bounds = set(frame.label[frame.bound])
    variants = set(frame.label[~frame.bound]) - main_labels(frame)   # labels that name settings besides a method's row
    sections = [(None, [lab for lab in labels if lab not in bounds | variants]),
                # A method run with fixed settings is an ablation or a sensitivity point, not another method.
                ("Variants with fixed settings (ablations)", [lab for lab in labels if lab in variants]),
                ("Bounds (not continual learners: no training, task id at test, or joint training)",
                 [lab for lab in labels if lab in bounds])]
    return [(title, labs) for title, labs in sections if labs]


def main_table(runs: list[Run], frame: pd.DataFrame, title_note: str = "") -> Table:
    columns, alone = {}, {}
    labels = sorted(set(frame.label))
    for title, members in blocks_for(set(frame.order)):
        block = [r for r in runs if r.order in members]
        for o in members:
            cells = {lab: over_runs([r for r in block if r.label == lab], lambda r: r.metrics["AA"],
                                    lambda r: r.samples("AA"), stats.ACCURACY, of=o) for lab in labels}
            columns[(title, o)] = pd.Series({lab: c.text() for lab, c in cells.items() if c}, dtype=object)
            note_examples_only(alone, title, cells)
        if len(members) > 1:
            cells = {lab: summarize(by_seed(runs, lab, members), "AA") for lab in labels}
            columns[(title, f"Avg ({title})")] = pd.Series({lab: c.text() for lab, c in cells.items() if c},
                                                           dtype=object)
            note_examples_only(alone, title, cells)
    seeds = ", ".join(map(str, sorted(set(frame.seed))))
    notes = [f"AA = {metrics_mod.METRICS['AA'].description}. Mean over seeds {seeds} where several ran, with "
             f"{BOOTSTRAP_NOTE} A column of one order takes the spread about each order's mean pooled over the "
             "block's orders (the runs of the block less its orders degrees of freedom: at 2-3 seeds one order alone "
             "has 1-2), assuming the seeds spread alike on each order, as the validation runs show "
             "(docs/results.md#intervals). Without an interval: mean ± std over seeds. Avg = mean over the block's "
             f"orders (per seed, then over seeds; only seeds that ran every order of the block). {MISSING} = no "
             "finished run."]
    notes += [n for n in (examples_only_note(alone), missing_predictions_note(runs)) if n]
    return Table("main", "Average accuracy AA (%) after the last task, per order" + title_note, columns,
                 sections_of(frame), notes)


PAIRED_TARGET = "craft"   # the method the harness exists to study, set against every baseline
# (bound, learner it bounds, why it is a bound): a bound below its learner means training too short to rank methods
BOUND_CHECKS = [("per_task", "seq_lora", "one adapter per task and the task id at test"),
                ("mtl", "replay", "joint training on every task at once")]
FORGETTING_REFERENCE = "seq_lora"


def block_targets(frame: pd.DataFrame) -> dict[str, str]:
    """block title -> PAIRED_TARGET's row in that block: today's defaults where they ran it, else the defaults of
    the time of the runs that did (as the sanity checks choose their rows); blocks where neither ran are left out."""
    targets = {}
    for title, members in blocks_for(set(frame.order)):
        target = main_label(frame[frame.order.isin(members)], PAIRED_TARGET)
        if target is not None:
            targets[title] = target
    return targets


def paired_table(runs: list[Run], frame: pd.DataFrame, title_note: str = "") -> Table | None:
    targets = block_targets(frame)
    if not targets:
        return None
    target = main_label(frame, PAIRED_TARGET)   # the title's, where every block has the same row
    baselines = sort_labels(set(frame.label[~frame.bound & (frame.method != PAIRED_TARGET)]))
    columns, mixes, family = {}, {}, {}
    for title, members in blocks_for(set(frame.order)):
        if title not in targets:
            continue
        cells: dict = {"ΔAA ↑": {}, "ΔFM ↓": {}, "pairs": {}}
        compared = compare_block(runs, targets[title], baselines, members)
        for lab, (pairs, deltas) in compared.items():
            add_paired_cells(cells, lab, pairs, ("ΔAA ↑", "ΔFM ↓"), deltas)
            mixes.setdefault(lab, {})[title] = kernel_mix(pairs)
        made, planned = len(holm_family(compared)), planned_family(baselines)
        if made:   # a block without a comparison that has an interval has no family
            family[title] = str(planned) if made == planned else f"{planned} ({made} made here)"
        for heading, values in cells.items():
            columns[(title, heading)] = pd.Series(values, dtype=object)
    others = {title: t for title, t in targets.items() if t != target}   # blocks judged on another row of it
    notes = [f"Δ = {target} minus the row's method, on the same orders, seeds and evaluation examples: the "
             "block's orders both ran, on the seeds that ran all of them, or only the orders that every seed ran "
             "where that gives more pairs (pairs = orders × seeds). ΔAA > 0: "
             f"{target} is more accurate; ΔFM < 0: it forgets less (FM = "
             f"{metrics_mod.METRICS['FM'].description}). {BOOTSTRAP_NOTE} Paired: each draw takes the difference "
             "on the same seeds and examples, which is far tighter than two separate intervals. * = the interval "
             "excludes 0" + (f"; ** = {HOLM_NOTE} " + ", ".join(f"{title}: {m}" for title, m in family.items() if m)
                             + ")" if any(family.values()) else "") +
             ". Without an interval: mean ± std over seeds of the per-seed difference."]
    if others:
        notes.append(f"Blocks whose Δ is of another row of {PAIRED_TARGET} (the one that ran them): " +
                     "; ".join(f"{title}: {t}" for title, t in others.items()) + ".")
    notes += [n for n in (one_seed_note(columns), kernels_note(mixes), missing_predictions_note(runs)) if n]
    return Table("paired", f"{target} against each baseline, paired" + title_note, columns,
                 [(None, baselines)], notes)


def checked_on(title: str, members: list[str], pairs: dict) -> str:
    """A check's block, with the orders it was made on where those are not all of the block's (a grid under way):
    "Orders 1-3: order 1 only"."""
    orders = [r.order for r, _ in next(iter(pairs.values()))]
    if len(orders) == len(members):
        return title
    return f"{title}: order{'s' * (len(orders) > 1)} {', '.join(orders)} only"


def sanity_checks(runs: list[Run], frame: pd.DataFrame) -> list[str]:
    """One line per check and block: does the regime forget, do the bounds sit above what they bound."""
    lines = []
    for title, members in blocks_for(set(frame.order)):
        # each block's own rows: where today's defaults did not run a block, those of an earlier time that did
        block = frame[frame.order.isin(members)]
        reference = main_label(block, FORGETTING_REFERENCE)
        # a check that cannot be made is said, so a folder that lacks its runs (a grid under way) does not read
        # as checked
        pairs = most_pairs(runs, reference, None, members) if reference else {}
        fm, bwt = (summarize(pairs, "FM"), summarize(pairs, "BWT")) if pairs else (None, None)
        if fm is not None and bwt is not None:
            lines.append(forgetting_check(checked_on(title, members, pairs), reference, fm, bwt))
        else:
            why_not = (f"{reference}'s runs here give no BWT" if reference
                       else f"no run of {FORGETTING_REFERENCE}'s defaults here")
            lines.append(f"Not checked ({title}): {why_not}, so whether the regime forgets is not known.")
        for bound_method, learner_method, why in BOUND_CHECKS:
            bound = main_label(block, bound_method)
            learner = trained_alike(block, learner_method, bound)
            pairs = most_pairs(runs, bound, learner, members) if bound and learner else {}
            diff = summarize(pairs, "AA") if pairs else None
            if diff is not None:
                lines.append(bound_check(checked_on(title, members, pairs), bound, learner, why, diff))
                continue
            missing = " or ".join(f"{m}'s" for m, label in ((bound_method, bound), (learner_method, learner))
                                  if not label)
            why_not = (f"no run of {missing} defaults here" if missing
                       else f"{bound} and {learner} share no stream and seed here")
            lines.append(f"Not checked ({title}): {bound_method} ({why}) against {learner_method}: {why_not}.")
    return lines


def trained_alike(block: pd.DataFrame, method: str, other: str | None) -> str | None:
    """`method`'s row of the same former defaults as the row `other` where `block` has one (`seq_lora (one-epoch
    defaults)` for `per_task (one-epoch defaults)`: a bound is checked against its learner trained the same way),
    else its main row."""
    former = other[other.index(" ("):] if other and " (" in other else None
    if former and (block.label == method + former).any():
        return method + former
    return main_label(block, method)


def verdict(runs: list[Run], frame: pd.DataFrame, checks: list[str]) -> list[str]:
    """What the paired comparisons support about PAIRED_TARGET (its row per block: block_targets), one line per
    block and continual learner: whether its AA and its FM differ significantly (the paired table's interval
    excludes 0), in which direction, or that they do not; a block whose sanity checks fail is said to be unable
    to rank methods, one where some could not be made says so."""
    targets = block_targets(frame)
    baselines = sort_labels(set(frame.label[~frame.bound & (frame.method != PAIRED_TARGET)]))
    lines = []
    for title, members in blocks_for(set(frame.order)):
        if title not in targets:
            continue
        target = targets[title]
        # a check names its block as "(title)", or "(title: order 1 only)" where it was made on some orders
        of_block = [c for c in checks if f"({title})" in c or f"({title}: " in c]
        failed = any(c.startswith("**Check failed**") for c in of_block)
        unchecked = any(c.startswith("Not checked") for c in of_block)
        caveat = (" The block's sanity checks fail: this does not rank the two." if failed
                  else " Not every sanity check could be made in this block (below)." if unchecked else "")
        compared = compare_block(runs, target, baselines, members)
        for lab, (pairs, deltas) in compared.items():
            orders, seeds = len(next(iter(pairs.values()))), len(pairs)
            mix = kernel_mix(pairs)
            aa, fm, bwt = deltas["AA"], deltas["FM"], deltas["BWT"]
            tested = not all(d is None or d.bounds is None for d in (aa, fm))
            if not tested:   # records without per-example predictions
                judged = ("is not tested (no intervals: the runs predate per-example predictions): " + ", ".join(
                    f"Δ{m} {d.text(signed=True)}" for m, d in (("AA", aa), ("FM", fm), ("BWT", bwt)) if d is not None))
            else:
                judged = (f"{_judged(aa, 'AA', 'is more accurate', 'is less accurate', 'accuracy')} and "
                          f"{_judged(fm, 'FM', 'forgets more', 'forgets less', 'forgetting', beside=bwt)}")
            lines.append(f"{title}, against {lab} ({orders} order{'s' * (orders > 1)} × {seeds} "
                         f"seed{'s' * (seeds > 1)}): {target} {judged}."
                         + (" One seed: its intervals cover the evaluation examples only, not how training varies from "
                            "seed to seed." if seeds == 1 and tested else "")
                         + (f" {crossing_subject(mix)} kernel sets ({mix.sets()}): the difference holds the "
                            "machines' difference too (rounding; on a GPU also its own random draws)." if mix.k else "")
                         + caveat)
        if holm_family(compared):
            lines.append(holm_line(title, compared, planned_family(baselines))
                         + caveat.replace("the two", "these methods"))
        block = [r for r in runs if r.order in members]
        flat, tasks = unlearned_tasks(block, trained_labels(frame))
        if flat:
            lines.append(f"{title}: on {len(flat)} of its {tasks} tasks ({', '.join(flat)}) no method here is above "
                         f"the majority class right after training (the learned table): {NOT_LEARNED}"
                         + caveat.replace("the two", "these methods"))
    return lines


def holm_line(title: str, compared: dict, planned: int = 0) -> str:
    """The block's count of significant differences (*) that Holm's correction keeps (**, compare_block), and those
    it does not: claimed together, the block's lines hold at 5% family-wise error only where marked **. `planned`:
    the family's size where it holds comparisons not made yet (apply_holm)."""
    family = holm_family(compared)
    significant = [(lab, m, d) for lab, m, d, _, _ in family if stats.excludes_zero(d.bounds)]
    lost = [f"Δ{m} against {lab}" for lab, m, d in significant if not d.holm]
    size = max(planned, len(family))
    baselines = len({lab for lab, *_ in family}) if size == len(family) else size // len(HOLM_METRICS)
    metrics = " and ".join(f"Δ{m}" for m in HOLM_METRICS
                           if size > len(family) or any(entry[1] == m for entry in family))
    head = (f"{title}, all lines together: Holm's correction over the block's {size} "
            f"comparison{'s' * (size > 1)} ({metrics} against {baselines} baseline{'s' * (baselines > 1)}, "
            "family-wise error 5%"
            + (f"; {len(family)} made here, the {size - len(family)} other{'s' * (size - len(family) > 1)} counted "
               "at p = 1" if size > len(family) else "")
            + ("; ΔFM's with ΔBWT bearing it out) " if "ΔFM" in metrics else ") "))
    if not significant:
        return head + "has nothing to keep: no difference is significant on its own."
    n = len(significant)
    every = "the one significant difference" if n == 1 else f"all {n} significant differences"
    if len(lost) == len(significant):
        return head + f"drops {every}: {', '.join(lost)}."
    if not lost:
        return head + f"keeps {every} (**)."
    return head + (f"keeps {n - len(lost)} of the {n} significant differences (**); "
                   f"not {', '.join(lost)}.")


def _judged(d: Summary | None, metric: str, up: str, down: str, what: str, beside: Summary | None = None) -> str:
    """`beside`: BWT's difference, stated with FM's (* = its interval excludes 0): FM takes a maximum over rows,
    so test-example noise lifts it, while BWT has no such bias. A significant ΔFM that BWT does not bear out
    (BWT's interval covers 0 or points the other way) is said to rest on FM alone."""
    if d is None:
        return f"has no {what} to compare"
    delta = f"Δ{metric} {d.text(signed=True, mark=True)}" + (f"; ΔBWT {beside.text(signed=True, mark=True)}"
                                                  if beside is not None else "")
    if d.bounds is None:
        return f"is not tested on {what} ({delta}: the runs predate per-example predictions, so no interval)"
    if stats.excludes_zero(d.bounds):   # the interval's side, not the point's (a bootstrap may not cover it)
        side = up if stats.above_zero(d.bounds) else down
        if beside is not None and beside.bounds is not None and not (
                stats.excludes_zero(beside.bounds) and stats.above_zero(beside.bounds) != stats.above_zero(d.bounds)):
            side += f" by {metric} only, which BWT does not bear out"   # BWT rises as FM falls
        return f"{side} ({delta})"
    if beside is not None and beside.bounds is not None and stats.excludes_zero(beside.bounds):
        # FM's interval covers 0 but BWT's does not: BWT decides (it rises as forgetting falls)
        return (f"shows no significant difference in {what} by {metric}, but "
                f"{down if stats.above_zero(beside.bounds) else up} by BWT ({delta})")
    return f"shows no significant difference in {what} ({delta})"


# a sanity check's caveat where its interval holds no seed's spread (Summary.examples_only)
ONE_RUN_AN_ORDER = " One run per order: its interval is the evaluation examples' spread alone."


def forgetting_check(block: str, reference: str, fm: Summary, bwt: Summary) -> str:
    """Judged on BWT, stated with FM: FM takes a maximum over the rows after each task, so test-example noise
    alone lifts it above 0 (more so on 15-task orders), while BWT (final minus just-learned accuracy) centres on 0
    when nothing is forgotten."""
    what = f"{reference}'s BWT is {bwt.text(signed=True)} (FM {fm.text()})"
    if stats.below_zero(bwt.bounds):
        line = f"Check passed ({block}): the regime forgets: {what}, BWT below 0."
    elif bwt.bounds is not None and bwt.mean < 0:   # forgets on average, but the interval reaches 0
        line = (f"**Check failed** ({block}): {what}, BWT's interval reaches 0: forgetting is not established at "
                "these sizes and seeds, so a method's low FM here shows nothing.")
    elif bwt.bounds is not None or bwt.mean >= 0:
        line = (f"**Check failed** ({block}): {what}, BWT not below 0: no forgetting to prevent at these sizes, so "
                "a method's low FM here shows nothing.")
    else:
        line = (f"Check unresolved ({block}): {what} (no interval over evaluation examples: the runs predate "
                "per-example predictions); forgetting is not established.")
    return line + (ONE_RUN_AN_ORDER if bwt.examples_only else "")


def bound_check(block: str, bound: str, learner: str, why: str, diff: Summary) -> str:
    what = f"AA of {bound} minus {learner}: {diff.text(signed=True)}"
    caveat = ONE_RUN_AN_ORDER if diff.examples_only else ""
    if diff.mean >= 0:   # read on the mean, as a fail is: a pass whose interval reaches 0 says so
        noise = " (within noise)" if diff.bounds is not None and not stats.above_zero(diff.bounds) else ""
        return f"Check passed ({block}): {bound} ({why}) is at or above {learner}{noise}: {what}.{caveat}"
    beyond = diff.bounds is not None and stats.below_zero(diff.bounds)
    noise = "" if diff.bounds is None else (" (beyond noise)" if beyond else " (within noise)")
    # the check says the bound failed, not why: within noise the learner may simply reach its bound on these tasks
    why_not = ("the learner may reach its bound on these tasks, or training be too short to separate them"
               if not beyond else "training at these sizes does not give the bound its edge")
    return (f"**Check failed** ({block}): {bound} ({why}) is below {learner}{noise}: {what}. The bound is not shown "
            f"to hold ({why_not}), so these numbers do not rank methods.{caveat}")


OLD_GENERAL = " †"   # marks a GEN Δ in plain accuracy (general.json files written before balanced accuracy)


def general_cell(runs: list[Run]) -> str | None:
    """GEN Δ of one label and block: balanced accuracy where any run has it (never averaged with plain
    accuracy); otherwise the plain accuracy of older general.json files, marked as such."""
    chosen = general_runs(runs)
    cell = over_runs(chosen, lambda r: r.general["change"], lambda r: r.general_samples())
    balanced = any(r.general_metric == stats.BALANCED for r in chosen)
    return None if cell is None else cell.text() + ("" if balanced else OLD_GENERAL)


def general_runs(runs: list[Run]) -> list[Run]:
    """The runs a GEN Δ cell averages: those with a general.json, the balanced ones only where any is."""
    measured = [r for r in runs if r.general]
    return [r for r in measured if r.general_metric == stats.BALANCED] or measured


PARTIAL_MARK = "‡"


def partial_rows(block: list[Run]) -> dict[str, Counter]:
    """label -> its runs per order, for each label whose runs do not weigh the block's orders alike: it misses one
    that another label ran (an order no run reached leaves every row alike), or ran some of them on more seeds than
    others, so its mean over runs leans toward those."""
    ran: dict[str, Counter] = {}
    for r in block:
        ran.setdefault(r.label, Counter())[r.order] += 1
    present = {r.order for r in block}
    return {lab: counts for lab, counts in ran.items() if set(counts) != present or not evenly(counts)}


def evenly(counts: Counter) -> bool:
    return len(set(counts.values())) == 1


def orders_text(counts: Counter) -> str:
    """"1, 2", or with the runs of each where they differ, "1 ×3, 2 ×2"."""
    return ", ".join(o if evenly(counts) else f"{o} ×{counts[o]}" for o in sorted(counts, key=order_rank))


def forgetting_table(runs: list[Run], frame: pd.DataFrame, title_note: str = "") -> Table:
    measured = frame.general_change.notna()
    headings = {"BWT": "BWT ↑", "FM": "FM ↓", "FWT": "FWT ↑", "LA": "LA ↑"}
    columns, alone, partial = {}, {}, []
    labels = set(frame.label)
    for title, members in blocks_for(set(frame.order)):
        block = [r for r in runs if r.order in members]
        mine = {lab: [r for r in block if r.label == lab] for lab in labels}
        short = partial_rows(block)
        partial += [f"{lab} ({title}: {orders_text(ran)})" for lab, ran in sorted(short.items())]

        def mark(lab, text, short=short):
            return f"{text} {PARTIAL_MARK}" if lab in short else text

        for metric, heading in headings.items():
            cells = {lab: over_runs(mine[lab], lambda r: r.metrics[metric], lambda r: r.samples(metric),
                                    value_range(metric), metric=metric)
                     for lab in labels}
            columns[(title, heading)] = pd.Series({lab: mark(lab, c.text()) for lab, c in cells.items() if c},
                                                  dtype=object)
            note_examples_only(alone, title, cells)
        if measured.any():
            # its own runs: a row may have measured general ability on fewer orders than it ran
            gen_short = partial_rows([r for lab in labels for r in general_runs(mine[lab])])
            partial += [f"{lab} ({title}, GEN Δ: {orders_text(ran)})" for lab, ran in sorted(gen_short.items())
                        if ran != short.get(lab)]
            cells = {lab: general_cell(mine[lab]) for lab in labels}
            columns[(title, "GEN Δ")] = pd.Series({lab: f"{c} {PARTIAL_MARK}" if lab in gen_short else c
                                                   for lab, c in cells.items() if c}, dtype=object)
    notes = [f"{m} = {metrics_mod.METRICS[m].description}." for m in headings]
    notes.append(f"Mean over every run (orders x seeds) of the block, with {BOOTSTRAP_NOTE} Without an interval: "
                 "± std over those runs.")
    if partial:
        notes.append(f"{PARTIAL_MARK} = the row's runs do not weigh the block's orders alike: it ran only some of the "
                     "orders that other rows ran, or some on more seeds (×runs) than others, so its mean over runs is "
                     "over other orders, or other weights, than an even row's and the two are not comparable (the "
                     "main table's block average takes only the seeds that ran every order; the paired table "
                     f"compares {PAIRED_TARGET} with each row on the orders and seeds both ran): " + "; ".join(partial) + ".")
    notes += [n for n in (examples_only_note(alone), missing_predictions_note(runs)) if n]
    if measured.any():
        counts = frame.groupby(["seed", "order"]).general_change.agg(["count", "size"])
        cells = sorted((seed, order_rank(order), f"{order} seed {seed} {n}/{size}")
                       for (seed, order), n, size in counts.itertuples() if n)
        held = {title: set() for title, _ in blocks_for(set(frame.order))}
        for r in runs:
            if r.general:
                held[block_of(r.order)].update(r.general.get("tasks") or ())
        old = int((frame.general_metric == "accuracy").sum())
        notes.append("GEN Δ = change in balanced accuracy (mean per-class recall, points: answering one label "
                     "everywhere scores chance, whatever the class balance) on held-out general-ability tasks that "
                     "are not in the run's stream, after the stream minus before (the backbone), measured through "
                     "lm-eval; mean over the block's runs that have a general.json, with the interval above where "
                     "they kept their answers (each task's examples drawn within their class). Held-out tasks: " +
                     "; ".join(f"{b}: {', '.join(sorted(t))}" for b, t in held.items() if t) + ". "
                     f"{measured.sum()} of {len(frame)} runs have a general.json (`python -m harness general` adds "
                     "the rest). Measured runs per order and seed: " + ", ".join(c[-1] for c in cells) + ".")
        if old:
            notes.append(f"†: plain accuracy, not balanced: {old} of those general.json files predate balanced "
                         "accuracy (`python -m harness general --redo` remeasures a run that has its weights); a "
                         "cell with runs of both kinds reads only the balanced ones.")
    return Table("forgetting", "Forgetting and transfer" + title_note, columns, sections_of(frame), notes)


def robustness_table(runs: list[Run], frame: pd.DataFrame) -> Table:
    columns = {}
    for title, members in blocks_for(set(frame.order)):
        if len(members) > 1:
            dispersion = {label: order_dispersion(runs, label, members) for label in set(frame.label)}
            for key, heading in (("AA_mean", "AA mean"), ("AA_std", "AA std"), ("AOPD", "AOPD"), ("MOPD", "MOPD"),
                                 ("seeds", "seeds")):
                columns[(title, heading)] = pd.Series({lab: f"{d[key]:.2f}" if key != "seeds" else str(d[key])
                                                      for lab, d in dispersion.items() if d}, dtype=object)
    return Table("robustness", "Order robustness across the orders of a block", columns, sections_of(frame),
                 ["Each measure is taken per seed over the block's orders, then averaged over the seeds that ran every "
                  "order (seeds): AA mean/std over the orders; OPD_i = max over orders - min over orders of the final "
                  "accuracy R[T][i] of task i; AOPD = mean_i OPD_i, MOPD = max_i OPD_i (lower = more robust). Per seed, "
                  "so that a method with more seeds does not look more robust for having averaged its noise away. "
                  f"{MISSING} = no seed ran every order of the block."])


SPREAD_METRICS = ("AA", "FM", "BWT")


def seed_spread_table(frame: pd.DataFrame) -> Table | None:
    """How far a method's runs move from seed to seed: per block, the runs' standard deviation about their order's
    mean, pooled over the block's orders (stats.seed_spread); None where no order ran on two seeds."""
    columns, degrees = {}, set()
    for title, members in blocks_for(set(frame.order)):
        cells: dict[str, dict] = {metric: {} for metric in SPREAD_METRICS + ("df",)}
        for label, runs in frame[frame.order.isin(members)].groupby("label"):
            for metric in SPREAD_METRICS:
                ran = runs[runs[metric].notna()]
                sd, df = stats.seed_spread(ran[metric], ran.order)
                if sd is not None:
                    cells[metric][label] = f"{sd:.2f}"
                if sd is not None and metric == "AA":
                    cells["df"][label] = str(df)
                    degrees.add(df)
        if cells["df"]:
            for key, values in cells.items():
                columns[(title, f"{key} sd" if key != "df" else "df")] = pd.Series(values, dtype=object)
    if not columns:
        return None
    from scipy.special import chdtri   # here: scipy is slow to import and only the tables need it
    ranges = "; ".join(f"df {df}: {np.sqrt(df / chdtri(df, 0.025)):.2f} to {np.sqrt(df / chdtri(df, 0.975)):.2f} "
                       "times" for df in sorted(degrees))
    return Table("seeds", "Seed spread within an order", columns, sections_of(frame),
                 ["sd = the runs' standard deviation about their order's mean, pooled over the block's orders (how far "
                  "a seed moves a run, an order's own level left out), on df = runs - orders degrees of freedom (of "
                  "the runs with an AA; FM's and BWT's over the runs that have one, which joint training lacks). It "
                  "is the seed spread the t intervals over a block's runs are built from (stats.over_runs, as in the "
                  "forgetting table); the paired table pools the differences between the two methods' runs instead, "
                  "and the main table's block average takes only the seeds that ran every order. "
                  f"{MISSING} = no order of the block ran on two seeds. Itself uncertain at a few degrees of freedom: "
                  f"under normal seed noise the true spread lies, with 95% confidence, between ({ranges}) the sd "
                  "shown (chi-square)."])


def majority_share(run: Run, task: str) -> tuple[float, int] | None:
    """The share (%) of the task's most frequent gold label among the run's test examples, and their number; None
    where the run kept no gold labels (runs made before per-example predictions)."""
    gold = ((run.config.get("data") or {}).get(task) or {}).get("gold")
    if not gold:
        return None
    labels = stats.decode_labels(gold)
    return 100.0 * np.bincount(labels).max() / len(labels), len(labels)


def block_majority(runs: list[Run], task: str) -> tuple[float, int] | None:
    """majority_share of the first of `runs` that kept gold labels for `task`: the runs of one folder share their
    test examples (check_same_examples), so any such run's will do."""
    return next((m for m in (majority_share(r, task) for r in runs if task in r.tasks) if m), None)


def trained_row(run: Run, task: str) -> str | None:
    """The matrix row right after the stage that trained `task` (joint training's one row); None if none did."""
    trained = metrics_mod.trained_rows(run.matrix)
    if task not in trained.columns:
        return None
    return task if task in trained.index else trained.index[-1] if len(trained) == 1 else None


def accuracy_after_training(run: Run, task: str) -> float | None:
    """R[t][t]: the task's accuracy right after the stage that trained it (joint training's one row)."""
    row = trained_row(run, task)
    return None if row is None or pd.isna(run.matrix.loc[row, task]) else float(run.matrix.loc[row, task])


def above_majority(accuracy: float, majority: tuple[float, int]) -> bool:
    """accuracy above the majority class's share beyond the test examples' noise: one-sided binomial test at
    2.5% of that many right answers out of the examples, against the share."""
    from scipy.stats import binomtest   # only here: scipy's import is slow and no other table needs it
    share, n = majority
    return binomtest(round(accuracy * n / 100), n, share / 100, alternative="greater").pvalue < 0.025


def after_training(runs: list[Run], label: str, task: str) -> list[float]:
    """R[t][t] of each of label's runs that trained `task`."""
    return [v for v in (accuracy_after_training(r, task) for r in runs if r.label == label) if v is not None]


# what a task no method learns does to a comparison (the verdict's line and the learned table's note)
NOT_LEARNED = ("at these sizes none is shown to learn them, so on them methods differ in where training leaves their "
               "answers (near or below the majority class's share) and how later training moves them, not in what "
               "they learn.")


def trained_labels(frame: pd.DataFrame) -> list[str]:
    """Each method's row (main_label) but zero_shot's, which trains nothing: the learned table's columns."""
    return sort_labels(main_labels(frame) - set(frame.label[frame.method == "zero_shot"]))


def unlearned_tasks(runs: list[Run], labels: list[str]) -> tuple[list[str], int]:
    """The tasks of `runs` (a block's) that some of `labels` trained and none lifted above the majority class
    beyond noise right after training (the learned table's rule), and how many tasks the runs hold."""
    tasks = list(dict.fromkeys(t for r in sorted(runs, key=lambda r: order_rank(r.order)) for t in r.tasks))
    learned = {t for lab in labels for t in learned_by(runs, lab)}
    measured = {t for t in tasks if any(after_training(runs, lab, t) for lab in labels)}
    # a task of one class in its test examples (a 100% majority) cannot be learned above it: not named
    known = {t for t in tasks if (m := block_majority(runs, t)) and m[0] < 100}
    return [t for t in tasks if t in measured & known and t not in learned], len(tasks)


def learned_by(runs: list[Run], label: str) -> list[str]:
    """The tasks (in the order the runs first hold them) on which label's mean accuracy right after training is
    above the majority class beyond noise: the learned table's *."""
    learned = []
    for t in dict.fromkeys(t for r in sorted(runs, key=lambda r: order_rank(r.order)) for t in r.tasks):
        values = after_training(runs, label, t)
        majority = block_majority(runs, t)
        if values and majority and above_majority(float(np.mean(values)), majority):
            learned.append(t)
    return learned


def on_tasks(run: Run, tasks: set[str]) -> Run | None:
    """The run read on `tasks` alone: AA = mean_{i in S} R[T][i], BWT = mean_{i in S, i < T} (R[T][i] - R[i][i]),
    with their resamples where it kept predictions; None where it holds none of them or is not a stream. Only
    .metrics (AA, BWT) and .samples are restricted: the rest (matrix, scores, general) is the whole run's."""
    trained = metrics_mod.trained_rows(run.matrix)
    in_order = [list(trained.index), list(trained.columns)] + ([list(run.scores.tasks)] if run.scores else [])
    if any(names != list(run.tasks) for names in in_order) or not any(t in tasks for t in run.tasks):
        return None
    cols = [j for j, t in enumerate(run.tasks) if t in tasks]
    before = [j for j in cols if j < len(run.tasks) - 1]

    def read(A):   # A: [..., rows T, tasks T], a stream's trained rows
        final = A[..., -1, cols]
        bwt = (A[..., -1, before] - A[..., before, before]).mean(-1) if before else None
        return {"AA": final.mean(-1), "BWT": bwt}

    points = read(trained.loc[run.tasks, run.tasks].to_numpy(dtype=float)[None])
    samples = None
    if run.scores is not None:
        A = run.scores.resampled()
        samples = read(A[:, 1:, :] if run.scores.rows[:1] == [metrics_mod.BASE_ROW] else A)
    return replace(run, metrics={m: None if v is None else float(v[0]) for m, v in points.items()},
                   _samples=samples)


# The bound whose learned tasks define orders 4-6's secondary reading, and the blocks it was fixed for (2026-12-06,
# before the bound's cells there ran: docs/results.md, "Tasks the model does not learn").
SUBSET_BOUND = "per_task"
SUBSET_BLOCKS = ("Orders 4-6",)
SUBSET_SEED = 1   # the bound's runs that fix the task set: this seed's, once it has run every order of the block


def learned_paired_table(runs: list[Run], frame: pd.DataFrame) -> Table | None:
    """A secondary reading, beside the paired table and never instead of it: craft minus each baseline in AA and
    BWT over the tasks SUBSET_BOUND learns (its mean accuracy right after training over its SUBSET_SEED runs above
    the majority class), in the SUBSET_BLOCKS where those runs cover every order and leave some task out."""
    targets = block_targets(frame)
    baselines = sort_labels(set(frame.label[~frame.bound & (frame.method != PAIRED_TARGET)]))
    columns, paired, kept, mixes = {}, {}, [], {}
    for title, members in blocks_for(set(frame.order)):
        bound = main_label(frame[frame.order.isin(members)], SUBSET_BOUND)
        if title not in targets or title not in SUBSET_BLOCKS or bound is None:
            continue
        block = [r for r in runs if r.order in members]
        tasks = list(dict.fromkeys(t for r in block for t in r.tasks))
        fixing = [r for r in block if r.label == bound and r.seed == SUBSET_SEED]
        # the task set waits for every order's run and every task's gold labels: it is fixed once, not as cells land
        if {r.order for r in fixing} != set(members) or not all(majority_share(r, t) for r in fixing for t in r.tasks):
            continue
        learned = learned_by(fixing, bound)
        if not learned or len(learned) == len(tasks):
            continue
        restricted = [r2 for r in block if (r2 := on_tasks(r, set(learned))) is not None]
        cells: dict = {"ΔAA ↑": {}, "ΔBWT ↑": {}, "pairs": {}}
        for lab in baselines:
            pairs = most_pairs(restricted, targets[title], lab, members)
            if pairs:
                add_paired_cells(cells, lab, pairs, ("ΔAA ↑", "ΔBWT ↑"), metrics=("AA", "BWT"))
                mixes.setdefault(lab, {})[title] = kernel_mix(pairs)
        group = f"{title}, {len(learned)} of {len(tasks)} tasks"   # in each heading: markdown names no lone group
        for heading, values in cells.items():
            columns[("", f"{group}: {heading}")] = pd.Series(values, dtype=object)
        paired[(group, "pairs")] = columns[("", f"{group}: pairs")]   # one_seed_note reads them by group
        kept.append(f"{title}: {', '.join(learned)} (by {bound}'s seed-{SUBSET_SEED} runs)")
    if not columns:
        return None
    notes = [f"A secondary reading, fixed on 2026-12-06 before {SUBSET_BOUND}'s cells of orders 4-6 ran "
             f"(docs/results.md): AA and BWT over the tasks on which {SUBSET_BOUND} (a bound, in no comparison) is "
             "above the majority class right after training (the learned table's *), "
             f"{PAIRED_TARGET} minus each baseline, paired as in the paired table. Shown for the blocks it was fixed "
             f"for ({', '.join(SUBSET_BLOCKS)}) once {SUBSET_BOUND}'s seed-{SUBSET_SEED} runs cover every order "
             "there (their mean decides) and leave some task out. * = the interval excludes 0; no Holm correction: it "
             "stands beside the block's verdict, never instead of it. Tasks kept: " + "; ".join(kept) + "."]
    notes += [n for n in (one_seed_note(paired), kernels_note(mixes), missing_predictions_note(runs)) if n]
    return Table("learned_paired", f"{PAIRED_TARGET} against each baseline on the tasks {SUBSET_BOUND} learns",
                 columns, [(None, baselines)], notes)


def learned_table(runs: list[Run], frame: pd.DataFrame) -> Table:
    """Each task's accuracy right after training on it (LA's terms) for each method, beside its majority class's
    share and the backbone's score: a task no method lifts above its majority class at these sizes cannot tell
    methods apart by what they learn on it, only by what they lose of its majority-class answers."""
    labels = trained_labels(frame)
    columns: dict = {("", "majority class"): {}, ("", "backbone"): {}, **{("", lab): {} for lab in labels}}
    sections, shown, unlearned = [], {}, []
    for title, members in blocks_for(set(frame.order)):
        block = [r for r in runs if r.order in members]
        tasks = list(dict.fromkeys(t for r in sorted(block, key=lambda r: order_rank(r.order)) for t in r.tasks))
        keys = {t: f"{title}: {t}" for t in tasks}
        shown.update({key: t for t, key in keys.items()})
        sections.append((title, list(keys.values())))
        for t, key in keys.items():
            mine = [r for r in block if t in r.tasks]
            majority = block_majority(mine, t)
            base = [float(r.matrix.loc[metrics_mod.BASE_ROW, t]) for r in mine
                    if metrics_mod.BASE_ROW in r.matrix.index]
            if majority:
                columns[("", "majority class")][key] = f"{majority[0]:.1f}"
            if base:
                columns[("", "backbone")][key] = f"{np.mean(base):.1f}"
            for lab in labels:
                values = after_training(mine, lab, t)
                if values:
                    mean = float(np.mean(values))
                    above = majority is not None and above_majority(mean, majority)
                    columns[("", lab)][key] = f"{mean:.1f}{' *' if above else ''} ({len(values)})"
        flat, _ = unlearned_tasks(block, labels)
        if flat:
            unlearned.append(f"{title}: on {len(flat)} of its {len(tasks)} tasks ({', '.join(flat)}) no method's "
                             f"accuracy right after training is above the majority class beyond noise: {NOT_LEARNED}")
    notes = ["Accuracy (%) on each task right after the stage that trained it (R[t][t], LA's terms; joint training's "
             "one row, at the end of its training), mean over the method's runs of the block's orders and seeds, "
             "their number in brackets; majority class = the share of the task's most frequent label among its test "
             "examples (what answering that label always scores); backbone = the untrained model's score (the base "
             "row). * = above the majority class beyond the test examples' noise (one-sided binomial test at 2.5%: a "
             "mean over runs is tested as one run's, since the runs share their test examples); above the majority "
             "is not above the backbone, which on some tasks already is. "
             f"{MISSING} = not recorded (runs made before gold labels were kept) or no run of the method here.",
             *unlearned]
    return Table("learned", "Accuracy right after training on each task, against its majority class",
                 {k: pd.Series(v, dtype=object) for k, v in columns.items()}, sections, notes, row_heading="Task",
                 shown=shown)


def timed_runs(frame: pd.DataFrame) -> tuple[pd.DataFrame, str, list[str]]:
    """The runs whose seconds the cost table shows, the kind of device they ran on, and the labels timed on
    another: a GPU's seconds are not a CPU's, so where a folder mixes them each row is timed over its runs on
    the CPU (the kind every cell can run on), and a row with none over its own runs, marked."""
    if frame.empty:
        return frame, "cpu", []
    reference = "cpu" if (frame.device == "cpu").any() else frame.device.iloc[0]
    on_reference = frame.device == reference
    has_reference = on_reference.groupby(frame.label).transform("any")
    return frame[on_reference | ~has_reference], reference, sorted(set(frame.label[~has_reference]))


def device_marked(cells: pd.Series, timed: pd.DataFrame, elsewhere: list[str]) -> pd.Series:
    """Per-label seconds, each label timed on another kind of device than the rest marked with it: "57.0 (cuda)"."""
    marks = pd.Series({lab: f" ({timed.device[timed.label == lab].iloc[0]})" for lab in elsewhere}, dtype=object)
    return cells + marks.reindex(cells.index).fillna("")


def devices_note(frame: pd.DataFrame, timed: pd.DataFrame, reference: str, elsewhere: list[str]) -> str | None:
    """What the seconds of a table built by timed_runs are over; None for a table of CPU runs alone."""
    if frame.device.nunique() == 1:
        return None if reference == "cpu" else f"Seconds are on {reference} (a GPU): not comparable with a CPU's."
    left_out = frame[~frame.index.isin(timed.index)]
    return (f"Devices differ: seconds are over each row's runs on the {reference}"
            + (f"; {len(left_out)} run(s) on another kind of device are left out of them "
               f"({', '.join(f'{k} {n}' for k, n in sorted(Counter(left_out.device).items()))})"
               if len(left_out) else "")
            + (f"; a row marked with a device has no run on the {reference}, and is timed over its own runs "
               "(not comparable with the others)" if elsewhere else "") + ".")


def cost_table(frame: pd.DataFrame) -> Table:
    first = frame.drop_duplicates("label").set_index("label")    # a label's first run speaks for its method card
    kept = frame.parameters_kept.fillna(frame.trainable_parameters)
    timed, reference, elsewhere = timed_runs(frame)
    seconds = {("", "train s/task"): spread((timed.train_seconds / timed.tasks).groupby(timed.label)),
               ("", "train s/step"): spread((timed.train_seconds / timed.train_steps.where(timed.train_steps > 0))
                                            .groupby(timed.label), digits=2),
               ("", "eval s/run"): spread(timed.groupby("label").eval_seconds),
               ("", "wall s/run"): spread(timed.groupby("label").wall_seconds)}
    columns = {("", "trainable params"): first.trainable_parameters.map("{:,}".format),
               ("", "params kept"): kept.groupby(frame.label).max().map("{:,.0f}".format),
               ("", "kept per task"): (kept / frame.tasks).groupby(frame.label).mean().map("{:,.0f}".format),
               **{k: device_marked(v, timed, elsewhere) for k, v in seconds.items()},
               ("", "task id at test"): first.uses_task_id_at_test.map({True: "yes", False: "no"})}
    notes = ["params kept = parameters stored beside the frozen backbone at the end of the stream, the most over "
             "the row's runs (it can vary: CRAFT keeps one intervention per group); kept per task = that over the "
             "number of tasks, mean over runs. Seconds are median [min–max] over runs (wall includes model loading); "
             "the range spans the orders' different tasks and any run slowed by a busy machine. They leave out the "
             "spans a run lay stopped (harness.clock; a run made before 2026-12-06, the stops its log shows "
             "between two training steps: one inside its evaluation stays in). train s/step = a "
             "run's training loop time over its optimizer steps (what a step costs with everything it does: "
             "replayed rows, CRAFT's anchor KL; not the work between tasks, such as CRAFT's routing and merge); "
             f"{MISSING} = no step taken.",
             "What each method keeps from past tasks: " +
             "; ".join(f"{k}: {v}" for k, v in first.keeps_from_past_tasks.items()) + "."]
    notes += [note for note in (devices_note(frame, timed, reference, elsewhere),) if note]
    return Table("cost", "Cost: parameters and time", columns, sections_of(frame), notes)


def note_examples_only(alone: dict, group: str, cells: dict) -> None:
    """alone[label] gets `group` (a block's title) where the label's cell there has an interval of the evaluation
    examples alone (Summary.examples_only), for examples_only_note."""
    for lab, cell in cells.items():
        if cell is not None and cell.examples_only and group not in alone.setdefault(lab, []):
            alone[lab].append(group)


def examples_only_note(alone: dict) -> str | None:
    """The main and forgetting tables' counterpart of one_seed_note: the rows (and blocks) whose intervals hold no
    seed's spread because each order ran once there."""
    rows = [f"{lab} ({'; '.join(alone[lab])})" for lab in sort_labels({lab for lab, groups in alone.items() if groups})]
    if not rows:
        return None
    return (f"One run per order ({', '.join(rows)}): there the interval is the evaluation examples' spread alone; "
            "no seed's spread is in it, which on these runs can be larger than the examples' "
            "(docs/results.md#intervals).")


def one_seed_note(columns: dict) -> str | None:
    """The note a paired table needs when a row pairs one seed alone (add_paired_cells' "n × 1"): its interval
    holds no seed's spread, which on these runs can be larger than the examples' (docs/results.md#intervals).
    Each such row is named in the table's order, with the column groups it is of one seed in where there are
    several."""
    where: dict = {}
    groups = [group for group, heading in columns if heading == "pairs"]
    for group in groups:
        for lab, text in columns[(group, "pairs")].items():
            if str(text).endswith("× 1"):
                where.setdefault(lab, []).append(group)
    if not where:
        return None
    rows = [lab + (f" ({'; '.join(where[lab])})" if len(groups) > 1 else "") for lab in sort_labels(set(where))]
    return (f"One seed (pairs n × 1: {', '.join(rows)}): the interval, where there is one, is the evaluation "
            "examples' spread alone, no seed's spread is in it, so its * says the difference holds on these "
            "examples for that seed, not that another seed would give it.")


def add_paired_cells(cells: dict, label: str, pairs: dict, headings: tuple[str, str],
                     deltas: dict | None = None, metrics: tuple[str, str] = ("AA", "FM")) -> None:
    """cells[heading][label] = the paired Δ of each of `metrics` over pairs (by_seed's; `deltas`: their Summaries,
    already made), and cells["pairs"][label] = how many orders × seeds they are over; nothing without pairs."""
    if not pairs:
        return
    for metric, heading in zip(metrics, headings):
        d = deltas[metric] if deltas is not None else summarize(pairs, metric)
        if d is not None:
            cells[heading][label] = d.text(signed=True, mark=True)
    cells["pairs"][label] = f"{len(next(iter(pairs.values())))} × {len(pairs)}"


# The metrics of a block's verdict, the family Holm's correction is over (with every baseline of the block): the
# verdict answers, per block, whether craft's AA and FM differ from each baseline's.
HOLM_METRICS = ("AA", "FM")
HOLM_NOTE = ("also significant under Holm's correction over the block's ΔAA and ΔFM against every baseline "
             "(family-wise error 5%; a ΔFM only where ΔBWT, which FM's noise bias does not lift, bears it out, at "
             "the larger of their p; p = twice the share of the interval's resamples beyond 0; a baseline of the "
             "folder not compared in a block, or compared without an interval, counts there at p = 1, so every block "
             "is corrected over the same family, which each new baseline enlarges by 2; comparisons a block:")


def compare_block(runs: list[Run], target: str, baselines: list[str], members: list[str]) -> dict:
    """label -> (pairs, {"AA", "FM", "BWT": Summary or None}) of `target` minus each baseline that shares runs
    with it on the block's orders (most_pairs), with Holm's correction (Summary.holm) over the block's family
    (holm_family): the paired table's cells and the verdict's lines, made once."""
    compared = {}
    for lab in baselines:
        pairs = most_pairs(runs, target, lab, members)
        if pairs:
            compared[lab] = (pairs, {m: summarize(pairs, m) for m in ("AA", "FM", "BWT")})
    apply_holm(compared, planned_family(baselines))
    return compared


def planned_family(baselines: list[str]) -> int:
    """The size of every block's Holm family: ΔAA and ΔFM against each baseline in the folder so far, whether it ran
    in the block or not (the grid's later baselines enlarge it as they land)."""
    return len(HOLM_METRICS) * len(baselines)


def apply_holm(compared: dict, planned: int = 0) -> None:
    """Sets Summary.holm on every difference of holm_family(compared): rejected by Holm's correction over the
    family's p-values and its claim stands on its own (never more than the intervals themselves say). The family
    is padded to `planned` comparisons at p = 1 (baselines not compared in this block, or compared without
    intervals), so a block with fewer baselines run is not corrected more leniently than the others. While the
    family's size stays, replacing a padded p by any real one never takes a rejection back (a p that sorts below
    a rejected one is below that one's threshold too); a new baseline enlarges the family and can."""
    family = holm_family(compared)
    p_values = [p for _, _, _, p, _ in family]
    rejected = stats.holm(p_values + [1.0] * max(0, planned - len(p_values)))
    for (_, _, d, _, stands), rejected_here in zip(family, rejected):
        d.holm = rejected_here and stands


def holm_family(compared: dict) -> list[tuple[str, str, Summary, float, bool]]:
    """The claims of compare_block's output that Holm's correction is over, as (baseline, metric, its Summary,
    p, whether the claim stands on its own): each baseline's ΔAA and ΔFM that carry an interval (HOLM_METRICS),
    ΔFM's claim being forgetting_claim's."""
    family = []
    for lab, (_, deltas) in compared.items():
        aa, fm = deltas["AA"], deltas["FM"]
        if aa is not None and aa.p is not None:
            family.append((lab, "AA", aa, aa.p, stats.excludes_zero(aa.bounds)))
        if fm is not None and fm.p is not None:
            family.append((lab, "FM", fm, *forgetting_claim(fm, deltas["BWT"])))
    return family


def forgetting_claim(fm: Summary, bwt: Summary | None) -> tuple[float, bool]:
    """(p, stands) of the claim that one method forgets less (or more) than the other: ΔFM's and ΔBWT's intervals
    both exclude 0, on agreeing sides (BWT rises as FM falls). An intersection-union test: its p is the larger of the
    two, 1 where the points disagree, and needs no correction for the pair. Why not ΔFM alone: FM takes a maximum
    over stages, so noise lifts a noisier method's FM; on simulated 15-task streams where neither method forgot,
    ΔFM's interval said "the stable one forgets less" in 24% of streams, the pair in 3.5% (bench/fm_simulation.py,
    docs/results.md#intervals). Without ΔBWT's interval, ΔFM's alone."""
    if bwt is None or bwt.p is None:
        return fm.p, stats.excludes_zero(fm.bounds)

    def side(d):   # the interval's side where it excludes 0 (FM's reflected one may leave its point), else the point's
        return stats.above_zero(d.bounds) if stats.excludes_zero(d.bounds) else (d.mean > 0 if d.mean else None)

    agree = None not in (side(fm), side(bwt)) and side(fm) != side(bwt)
    stands = agree and stats.excludes_zero(fm.bounds) and stats.excludes_zero(bwt.bounds)
    return (max(fm.p, bwt.p) if agree else 1.0), bool(stands)


def most_pairs(runs: list[Run], label: str, reference: str | None = None, members: list[str] | None = None) -> dict:
    """by_seed of label (against reference) over the orders of members (default: every order) that both ran,
    or over those of them that ran on every seed of label's, whichever gives more (order, seed) pairs: with
    seeds 1 and 2 on two orders and seed 1 alone on a third, the comparison takes the two orders twice, not all
    three once. Ties keep every order."""
    members = members if members is not None else sorted({r.order for r in runs}, key=order_rank)
    orders = shared_orders(runs, [label] + ([reference] if reference else []), members)
    seeds = {r.seed for r in runs if r.label == label}
    every_seed = [o for o in orders if seeds <= {r.seed for r in runs if r.label == label and r.order == o}]
    options = [by_seed(runs, label, chosen, reference) for chosen in (orders, every_seed) if chosen]
    return max(options, key=lambda p: sum(map(len, p.values())), default={})


def kernel_set(run: Run) -> tuple[str, str | None] | None:
    """What decides a run's float path besides its settings: ("cuda", the GPU's name) or ("cpu", the CPU's torch
    kernel set: AVX2, AVX512, config.json's machine.torch_cpu_capability), the name None where the run did not
    record it; None for a CPU run that recorded no machine."""
    machine = run.config.get("machine") or {}
    if device_kind(run.config.get("device")) == "cuda":
        return "cuda", machine.get("gpu")
    capability = machine.get("torch_cpu_capability")
    return None if capability is None else ("cpu", capability)


@dataclass
class KernelMix:
    """Of a comparison's n pairs: those that set runs of two kernel sets against each other, counted by what
    crossed ("AVX2 against AVX512", "AVX512 against NVIDIA H200"), and those where a run recorded too little to
    tell."""
    n: int
    crossed: Counter
    unknown: int

    @property
    def k(self) -> int:
        return sum(self.crossed.values())

    def sets(self) -> str:
        return ", ".join(sorted(self.crossed))


def kernel_mix(pairs: dict) -> KernelMix:
    """by_seed's pairs (seed -> [(run, reference run or None)]) -> their KernelMix. A GPU and a CPU run always
    cross; two runs of one kind cross where both name their kernel set (or GPU) and the names differ."""
    def name(kernels):
        return (kernels[1] or "a GPU") if kernels[0] == "cuda" else kernels[1]
    crossed, unknown, n = Counter(), 0, 0
    for a, b in (pair for per_seed in pairs.values() for pair in per_seed if pair[1] is not None):
        n += 1
        ka, kb = kernel_set(a), kernel_set(b)
        if ka is None or kb is None or (ka[0] == kb[0] and None in (ka[1], kb[1])):
            unknown += 1
        elif ka != kb:
            crossed[" against ".join(sorted((name(ka), name(kb))))] += 1
    return KernelMix(n, crossed, unknown)


KERNELS_WHY = ("Runs made on two kernel sets (a GPU and a CPU, two GPUs, or CPUs with other torch kernels) may part "
               "from the first task on, by rounding and, on a GPU, by its own random draws (dropout masks; "
               "docs/reproducibility.md)")


def crossing_subject(mix: KernelMix) -> str:
    """How many of a comparison's pairs cross kernel sets, as the subject of a verdict line's sentence."""
    if mix.k == mix.n:
        return "Its one pair crosses" if mix.n == 1 else f"Each of its {mix.n} pairs crosses"
    return f"{mix.k} of its {mix.n} pairs " + ("crosses" if mix.k == 1 else "cross")


def kernels_note(mixes: dict) -> str | None:
    """The note a paired or ablation table needs where a row's pairs cross kernel sets, or cannot be told:
    mixes[label][group] = kernel_mix(pairs). Each row with a crossing pair is named with its counts (per column
    group, where there are several) and what crossed; rows where some runs recorded no machine and none is seen
    to cross are counted together (older records: naming each would bury the rows that do cross)."""
    several = len({group for by_group in mixes.values() for group in by_group}) > 1
    rows, untold = [], []
    for lab in sort_labels(set(mixes)):
        if not any(mix.k for mix in mixes[lab].values()):
            untold += [(lab, mix) for mix in mixes[lab].values() if mix.unknown]
            continue
        shown = {group: mix for group, mix in mixes[lab].items() if mix.k or mix.unknown}
        counts = ", ".join(f"{mix.k} of {mix.n}" + (f" in {group}" if several else "")
                           + (f" ({mix.unknown} not known: a run recorded no machine)" if mix.unknown else "")
                           for group, mix in shown.items())
        rows.append(f"{lab}: {counts} ({', '.join(sorted({s for mix in shown.values() for s in mix.crossed}))})")
    notes = []
    if rows:
        notes.append(f"Pairs across kernel sets, of each row's pairs: {'; '.join(rows)}. {KERNELS_WHY}, so such a "
                     "pair's Δ holds the machines' difference as well as the methods': read it as another draw of "
                     "its seed.")
    if untold:
        labels = len({lab for lab, _ in untold})
        unknown, n = sum(m.unknown for _, m in untold), sum(m.n for _, m in untold)
        notes.append(f"In {labels} {'other ' if rows else ''}row{'s' * (labels > 1)}, {unknown} of {n} pairs have a "
                     "run that recorded no machine: whether they cross kernel sets cannot be told.")
    return " ".join(notes) or None


def differing_settings(a: Run, b: Run) -> set[str]:
    """The settings two runs of one method ran differently."""
    sa, sb = recorded_value(a.config, "settings"), recorded_value(b.config, "settings")
    if not (isinstance(sa, dict) and isinstance(sb, dict)):   # a method this code lacks: its recorded args
        sa, sb = label_args(a.config), label_args(b.config)
    return {k for k in set(sa) | set(sb) if sa.get(k) != sb.get(k)}


def variant_references(runs: list[Run], frame: pd.DataFrame, method: str) -> dict[str, str]:
    """variant label -> the row it is set against, among its method's defaults: today's (the bare name) or those
    of the time runs were made (a row whose runs fixed no setting). First the defaults it was tried against: those
    that differ from it only in settings its own spec fixed (a one-epoch variant made before the schedule moved
    against the one-epoch defaults); else (the old defaults themselves) the nearest, by how many settings differ.
    Ties go to the method's row. A row of former defaults named by its time (`craft (one-epoch defaults)`) is set
    against the defaults that replaced it, the next newer that ran (`craft (settled-loss defaults)`, then today's):
    each move's gain, read down the rows, whatever the spec of the runs spelled."""
    from methods import discover
    main = main_label(frame, method)
    first = {}
    for r in runs:
        if r.method == method:
            first.setdefault(r.label, r)
    defaults = sorted({lab for lab, r in first.items() if lab == method or r.ran_defaults},
                      key=lambda lab: (lab != main, lab))
    cls = discover().get(method)
    newest_first = [method] + [f"{method} ({name})" for name in (cls.FORMER_DEFAULTS if cls is not None else ())]
    out = {}
    for lab, run in first.items():
        others = {d: differing_settings(run, first[d]) for d in defaults if d != lab}
        if lab == main or not others:
            continue
        if lab in newest_first[1:]:
            # the next newer defaults that ran; else the method's row (an older one where today's never ran)
            newer = [d for d in reversed(newest_first[:newest_first.index(lab)]) if d in first]
            out[lab] = newer[0] if newer else main
            continue
        fixed = set(run.config.get("method_args") or {})
        tried = [d for d, diff in others.items() if diff <= fixed]
        out[lab] = min(tried or others, key=lambda d: len(others[d]))
    return out


def ablation_table(runs: list[Run], frame: pd.DataFrame, references=("seq_lora", "replay")) -> Table | None:
    """Every method that ran with other settings than its defaults (CRAFT's ablations, a tuning grid, replay's
    compute-matched form): each variant beside the default, per order, and paired against the defaults it is
    nearest (variant_references)."""
    varied = [m for m in sort_labels(set(frame.method))
              if main_label(frame, m) is not None and frame.label[frame.method == m].nunique() > 1]
    if not varied:
        return None
    against = {m: variant_references(runs, frame, m) for m in varied}
    # Like for like: a method's rows only on the (order, seed) cells where one of its variants ran, so a variant
    # run on one seed is never set against the default's mean over more seeds or orders.
    scoped_parts, sections = [], []
    # one paired block per block of orders the variants ran (a variant run on two offline seeds and one seed of
    # another stream would otherwise show only the offline pairs, which outnumber the other's)
    mains = main_labels(frame)
    blocks = blocks_for(set(frame.order[frame.method.isin(varied) & ~frame.label.isin(mains)]))
    paired = {title: {"ΔAA vs default ↑": {}, "ΔFM vs default ↓": {}, "pairs": {}} for title, _ in blocks}
    mixes: dict = {}
    for method in varied:
        ablated = frame[(frame.method == method) & ~frame.label.isin(mains)]
        cells_run = pd.MultiIndex.from_frame(ablated[["order", "seed"]])
        mine = frame[(frame.method == method) & pd.MultiIndex.from_frame(frame[["order", "seed"]]).isin(cells_run)]
        scoped_parts.append(mine)
        main = main_label(frame, method)
        sections.append((None if len(varied) == 1 else method,
                         [lab for lab in [main] + sort_labels(set(mine.label) - {main}) if lab in set(mine.label)]))
        for lab, reference in against[method].items():
            for title, members in blocks:
                pairs = most_pairs(runs, lab, reference, members)
                add_paired_cells(paired[title], lab, pairs, ("ΔAA vs default ↑", "ΔFM vs default ↓"))
                mixes.setdefault(lab, {})[title] = kernel_mix(pairs)
    scoped = pd.concat(scoped_parts)
    all_cells = pd.MultiIndex.from_frame(scoped[["order", "seed"]])
    refs = [lab for lab in (main_label(frame, m) for m in references) if lab and lab not in set(scoped.label)]
    ref_rows = frame[frame.label.isin(refs) & pd.MultiIndex.from_frame(frame[["order", "seed"]]).isin(all_cells)]
    if len(ref_rows):
        scoped = pd.concat([scoped, ref_rows])
        sections.append(("References", sort_labels(set(ref_rows.label))))
    orders = sorted(set(scoped.order), key=order_rank)
    seeds = sorted(set(scoped.seed))
    seeds_text = ("seeds " if len(seeds) > 1 else "seed ") + ", ".join(map(str, seeds))
    per_order = mean_std(scoped.groupby(["label", "order"])[["AA", "BWT", "FM"]]).unstack()
    columns = {(f"Order {o}", heading): per_order.get((value, o))
               for o in orders for value, heading in (("AA", "AA ↑"), ("BWT", "BWT ↑"), ("FM", "FM ↓"))}
    for title, cells in paired.items():
        for heading, values in cells.items():
            group = "Against the default" + ("" if len(blocks) == 1 else f", {title}")
            columns[(group, heading)] = pd.Series(values, dtype=object)
    elsewhere = any(ref != m for m in varied for ref in against[m].values())   # a reference not today's defaults
    if elsewhere:   # then every variant's reference is named
        columns[("", "against")] = pd.Series({lab: ref for m in varied for lab, ref in against[m].items()},
                                             dtype=object)
    columns[("", "trainable params")] = (scoped.drop_duplicates("label").set_index("label")
                                         .trainable_parameters.map("{:,}".format))
    timed, reference, timed_elsewhere = timed_runs(scoped)
    columns[("", "wall s/run")] = device_marked(spread(timed.groupby("label").wall_seconds, 0), timed, timed_elsewhere)
    notes = [f"Every method's rows are restricted to the orders and seeds where one of its variants ran (order"
             f"{'s' if len(orders) > 1 else ''} {', '.join(orders)}; {seeds_text} in all), so the rows compare the "
             "same streams; references, to the cells where any variant ran. AA, BWT, FM: mean ± std over those seeds. "
             "Against the default: the variant minus its method with default "
             "settings, paired on the same orders, seeds and evaluation examples (pairs = orders × seeds), per block "
             "of orders" + ("" if not elsewhere else " (column 'against': where defaults moved between runs, the "
                            "defaults the variant was tried under, those that differ from it only in settings it "
                            "fixed; the old defaults themselves against the nearest)") + "; "
             f"{BOOTSTRAP_NOTE} * = the interval excludes 0. Trainable params: per run. Wall s/run: median "
             "[min–max] over the row's runs in the table."]
    notes += [note for note in (one_seed_note(columns), kernels_note(mixes),
                                devices_note(scoped, timed, reference, timed_elsewhere)) if note]
    notes += [n for n in (missing_predictions_note([r for r in runs if r.label in set(scoped.label)]),) if n]
    title = "Variants of a method against its defaults (settings in brackets)" if len(varied) > 1 else (
        f"{varied[0]} and its variants (settings in brackets)")
    return Table("ablations", title, columns, sections, notes)


def all_tables(runs: list[Run], frame: pd.DataFrame, title_note: str = "") -> tuple[list[Table], list[str]]:
    """The tables of one protocol's runs, and the sanity checks, which every table states under it."""
    tables = [main_table(runs, frame, title_note), forgetting_table(runs, frame, title_note),
              paired_table(runs, frame, title_note), robustness_table(runs, frame), seed_spread_table(frame),
              learned_table(runs, frame),
              learned_paired_table(runs, frame), cost_table(frame), ablation_table(runs, frame)]
    checks = sanity_checks(runs, frame)
    tables = [t for t in tables if t is not None]
    for t in tables:
        t.notes += checks
    return tables, checks


# ---- writing --------------------------------------------------------------------------------------------
def write_tables(root: str, out: str, figures: bool = True) -> dict:
    runs, unfinished = load_runs(root)
    if not runs:
        raise UsageError(f"no finished run under {root}" + (f" ({len(unfinished)} unfinished)" if unfinished else ""))
    setup = check_one_setup(runs)
    preface = read_preface(out)   # before anything is written: a preface that quotes a missing table stops here
    os.makedirs(out, exist_ok=True)
    groups = by_protocol(runs)
    md, written, checks, verdicts, drawn = [], [], {}, {}, []
    for protocol, group in groups.items():
        # one protocol: the tables as always; several: a set per protocol, named and titled by it
        suffix = "" if len(groups) == 1 else "-" + "-".join(protocol)
        note = "" if protocol == tuple(PROTOCOL_DEFAULTS.values()) and len(groups) == 1 \
            else f" ({protocol_text(protocol)})"
        drawn.append((suffix, note if suffix else "", group))   # one protocol: the figures' titles as always
        frame_of = runs_frame(group, root)
        tables, checks[protocol_text(protocol)] = all_tables(group, frame_of, note)
        verdicts[protocol_text(protocol)] = verdict(group, frame_of, checks[protocol_text(protocol)])
        for t in tables:
            md.append(t.markdown())
            atomic_write(os.path.join(out, f"{t.name}{suffix}.md"), md[-1])
            atomic_write(os.path.join(out, f"{t.name}{suffix}.tex"), t.latex())
            written += [f"{t.name}{suffix}.md", f"{t.name}{suffix}.tex"]
    remove_stale_tables(out, written)
    frame = runs_frame(runs, root)
    atomic_write(os.path.join(out, "runs.csv"), frame[CSV_COLUMNS].sort_values(["label", "order", "seed"])
                 .to_csv(index=False, lineterminator="\n"))
    written.append("runs.csv")
    if figures:
        from harness import figures as figs
        written += figs.write_figures(drawn, os.path.join(out, "figures"))
    from harness.sweep import sweep_commands
    readme = results_readme(runs, unfinished, setup, root, out, sweep_commands(root), md, checks, verdicts,
                            preface)
    atomic_write(os.path.join(out, "README.md"), readme)
    return {"runs": len(runs), "unfinished": unfinished, "files": written + ["README.md"]}


TABLE_NAMES = ("main", "forgetting", "paired", "robustness", "seeds", "learned", "learned_paired", "cost", "ablations")


def remove_stale_tables(out: str, written: list[str]) -> None:
    """Tables an earlier call wrote and this one did not (a protocol or a method no longer among the runs):
    left in place they would read as current."""
    for name in os.listdir(out):
        if is_table_file(name) and name not in written:
            os.unlink(os.path.join(out, name))


def is_table_file(name: str) -> bool:
    """A file name write_tables writes a table to: a table's name, a protocol's suffix, .md or .tex."""
    stem, ext = os.path.splitext(name)
    return ext in (".md", ".tex") and stem.split("-")[0] in TABLE_NAMES


def run_options_of(sweeps: list[dict], runs: list[Run]) -> str:
    """The run options (sizes, data, model) as the user gave them to the latest sweep, else every setup
    option as the runs' config.json records it (and the data folder, where one was named). The device is each
    command's own (regenerate_commands): a folder can hold runs made on a CPU and on a GPU."""
    options = next((entry["options"] for entry in reversed(sweeps) if "options" in entry), None)
    options = None if options is None else {k: v for k, v in options.items() if k != "device"}
    if options is None:
        c = runs[0].config
        options = {name: c.get(name) for name in SETUP_KEYS + ("data_dir",) if name in c and (name != "data_dir" or c[name])}
    if options.get("data_dir"):
        options = {**options, "data_dir": portable_path(options["data_dir"])}
    return shlex.join(spell_options(options))


def portable_path(path: str) -> str:
    """A data folder as a reader of the committed README can use it: an absolute path beside or under the working
    folder relative to it, as the README's other paths are (`make tables` works from the repository root, with
    ../shared beside the checkout)."""
    if not os.path.isabs(path):
        return path
    relative = os.path.relpath(path)
    if not relative.startswith(os.path.join(os.pardir, os.pardir)):
        return relative
    # the same folder reached through a link beside the checkout (../shared -> /elsewhere/shared), as CI lays it out
    if not os.path.exists(path):
        return path
    parts = path.strip(os.sep).split(os.sep)
    for k in range(1, len(parts)):
        beside = os.path.join(os.pardir, *parts[k:])
        if os.path.exists(beside) and os.path.samefile(beside, path):
            return beside
    return path


def by_order_seed(runs: list[Run]) -> dict:
    groups: dict = {}
    for r in sorted(runs, key=lambda r: order_rank(r.order)):
        groups.setdefault((r.order, r.seed), []).append(r)
    return groups


def general_commands(runs: list[Run], root: str) -> list[str]:
    """`general` commands for exactly the runs that have a general.json: a glob where every run of an
    order and seed has one (and the runs sit in the sweep layout), else the run directories by name."""
    def key_of(r):
        return tuple(stats.general_asked(r.general)), r.general.get("per_task")

    paths: dict = {}   # (tasks, per_task) -> paths
    for (order, seed), rs in by_order_seed(runs).items():
        for key in {key_of(r) for r in rs if r.general}:
            mine = [r for r in rs if r.general and key_of(r) == key]
            layout = all(os.path.relpath(r.path, root).split(os.sep)[1:] == [order, f"seed{seed}"] for r in rs)
            paths.setdefault(key, []).extend(
                [os.path.join(root, "*", order, f"seed{seed}")] if len(mine) == len(rs) and layout
                else [os.path.join(root, os.path.relpath(r.path, root)) for r in mine])
    return [" ".join(["python -m harness general"] + (["--tasks", ",".join(tasks)] if tasks else []) +
                     (["--per-task", str(per_task)] if per_task else []) + ps)
            for (tasks, per_task), ps in paths.items()]


def regenerate_commands(runs: list[Run], root: str, sweeps: list[dict]) -> list[str]:
    """`sweep` commands whose grids are exactly the finished runs: methods that share the same
    orders x seeds go in one command. Derived from the runs, not the sweep history, so a run moved away
    (or a variant that became the default) is not made again. A run made before one of its settings moved is
    spelled with the value it ran (reproducing_args) and made again in remade_folder(root): in root, beside the
    stale folder, one row would hold two runs of a stream."""
    labels, cells, remade = {}, {}, set()
    for r in runs:   # per spec and kind of device: a run made on a GPU is made again there (--device cuda)
        spec = spec_of(r.method, reproducing_args(r.config))
        labels[spec] = r.label
        device = device_kind(r.config.get("device"))
        cells.setdefault((spec, device), {}).setdefault(r.seed, set()).add(r.order)
        if moved_settings(r.config):
            remade.add(spec)
    grids = {}   # (folder, orders, seeds, device) -> specs
    for (spec, device), by_seed in cells.items():
        merged = {}   # orders -> seeds that ran exactly those orders
        for seed, orders in by_seed.items():
            merged.setdefault(tuple(sorted(orders, key=order_rank)), []).append(seed)
        folder = remade_folder(root) if spec in remade else root
        for orders, seeds in merged.items():
            grids.setdefault((folder, orders, tuple(sorted(seeds)), device), []).append(spec)
    options = run_options_of(sweeps, runs)
    ranked = sort_labels(set(labels.values()))
    return [f"python -m harness sweep --methods {','.join(sorted(specs, key=lambda x: (ranked.index(labels[x]), x)))} "
            f"--orders {','.join(orders)} --seeds {','.join(map(str, seeds))} --runs {folder} {options}".rstrip()
            + (f" --device {device}" if device != "cpu" else "")
            for (folder, orders, seeds, device), specs in sorted(
                grids.items(), key=lambda g: (g[0][0], g[0][2], -len(g[1]), g[0][1], g[0][3]))]


def remade_folder(root: str) -> str:
    """Where the regenerate commands make again the runs made before a setting moved."""
    return root.rstrip("/") + "-remade"


def spec_of(method: str, args: dict) -> str:
    """A method spec as `sweep --methods` takes it: craft:lr=0.001."""
    return ":".join([method] + [f"{k}={v}" for k, v in args.items()])


def machines_line(runs) -> str:
    """Which CPUs (and GPUs, for runs on CUDA) made the runs (numbers are bit-for-bit comparable only between runs of
    one kernel set)."""
    def name(m, device):
        if not m:
            return "not recorded"
        cpu = f"{m['cpu']} ({m['torch_cpu_capability']}, {m['threads']} threads)"
        on_gpu = m.get("gpu") and device_kind(device) == "cuda"
        return f"{m['gpu']} (CUDA {m.get('cuda')}) beside {cpu}" if on_gpu else cpu
    seen = Counter(name(r.config.get("machine"), r.config.get("device") or "cpu") for r in runs)
    return "; ".join(f"{k}: {n} run{'s' * (n != 1)}" for k, n in sorted(seen.items()))


def packages_line(runs) -> str:
    """The packages the runs were made with: the most common set, then each other set by what differs from it
    (a GPU machine's torch, say)."""
    sets = Counter(tuple((k, v) for k, v in (r.config.get("packages") or {}).items() if v) for r in runs)
    (common, count), *others = sets.most_common()
    text = ", ".join(f"{k} {v}" for k, v in common)
    if others:
        known = dict(common)

        def differs(other):   # what another set has otherwise, and what it lacks ("–": not recorded there)
            theirs = dict(other)
            return ([f"{k} {v}" for k, v in other if known.get(k) != v]
                    + [f"{k} {MISSING}" for k in known if k not in theirs])
        text += f" ({count} run{'s' * (count != 1)})" + "".join(
            f"; {n} run{'s' * (n != 1)} with " + ", ".join(differs(other)) for other, n in others)
    return text


def code_line(runs: list[Run]) -> str | None:
    """The commits the runs' code came from (each sitting's, from log.jsonl: a resumed run may span one), so a fix
    landing mid-grid shows which runs it reached; None where no run recorded its code (before 2026-12-04)."""
    sittings = {}
    for r in runs:   # a sitting before the record (a run resumed across it, say) counts as None: not known
        starts = [e.get("code") for e in RunDir(r.path).events() if e.get("event") == "run_start"]
        sittings[r.path] = starts or [r.config.get("code")]
    if not any(c for seen in sittings.values() for c in seen):
        return None
    commits = Counter(commit[:10] for seen in sittings.values() for commit in {c["commit"] for c in seen if c})
    spanning = sum(len({c["commit"] for c in seen if c}) > 1 for seen in sittings.values())
    dirty = sum(any(c and c["dirty"] for c in seen) for seen in sittings.values())
    unknown = sum(None in seen for seen in sittings.values())
    parts = [", ".join(f"`{c}` ({n} run{'s' * (n != 1)})" for c, n in sorted(commits.items()))]
    parts += [f"{spanning} run{'s' * (spanning != 1)} resumed across commits"] if spanning else []
    parts += [f"{dirty} made with uncommitted changes to the code"] if dirty else []
    parts += [f"{unknown} with no commit recorded (made before that record, or outside a git checkout)"] \
        if unknown else []
    return "- Code: " + "; ".join(parts) + "."


PREFACE = "preface.md"   # a results folder's own note, put at the top of its README
GENERATED_LINE = "Generated by `python -m harness tables`"   # how every README that tables writes opens
# a preface line that stands for a generated table: the first Markdown table of PATH (relative to the folder; with
# PATH#anchor, the first one under that heading), so a note that quotes another folder's table (results/ quotes
# test/paired.md) holds no hand copy of its numbers
TABLE_FROM = re.compile(r"<!-- table from (\S+) -->")
NEAR_MARKER = re.compile(r"\s*<!--\s*table\s+from\b")   # a marker mistyped would otherwise be left as a comment


def read_preface(out: str) -> str | None:
    """The folder's hand-written note with each `<!-- table from PATH -->` line (outside code fences) followed by
    PATH's first table as PATH is now (the marker stays: it is invisible in rendered Markdown and says where the
    rows came from)."""
    path = os.path.join(out, PREFACE)
    if not os.path.isfile(path):
        return None
    with open(path, encoding="utf-8") as f:
        lines = f.read().strip().splitlines()
    tables = dict(table_markers(lines, path))
    expanded = []
    for n, line in enumerate(lines):
        expanded.append(line)
        if n in tables:   # blank lines around the rows: the comment ends its HTML block; a next line would join
            quoted = os.path.join(out, tables[n])
            quoted_file = quoted.partition("#")[0]
            own_folder = os.path.dirname(os.path.abspath(quoted_file)) == os.path.abspath(out)
            if own_folder and is_table_file(os.path.basename(quoted_file)):
                raise UsageError(f"{path}:{n + 1}: quotes {tables[n]}, a table this rebuild rewrites (the copy would "
                                 "be the previous build's): quote another folder's table")
            expanded += [""] + first_table(quoted, path) + \
                ([""] if n + 1 < len(lines) and lines[n + 1].strip() else [])
    return "\n".join(expanded)


def table_markers(lines: list[str], path: str):
    """(line index, PATH) of each table marker outside code fences; a mistyped one is an error, not a comment."""
    fenced = False
    for n, line in enumerate(lines):
        fenced ^= line.lstrip().startswith("```")
        if fenced or not NEAR_MARKER.match(line):
            continue
        marker = TABLE_FROM.fullmatch(line.rstrip())
        if not marker:
            raise UsageError(f"{path}:{n + 1}: a table marker reads exactly '<!-- table from PATH -->' on a line "
                             f"of its own, not {line.strip()!r}")
        yield n, marker.group(1)


def heading_anchors(lines: list[str]) -> list[tuple[int, str]]:
    """(line index, GitHub anchor) of each Markdown heading outside code fences: lower case, punctuation dropped
    but for '-' and '_', spaces to '-', a link's text for the link, -1, -2, ... after a repeated one."""
    found, seen, fenced = [], set(), False
    for n, line in enumerate(lines):
        fenced ^= line.lstrip().startswith("```")
        heading = None if fenced else re.match(r"#{1,6} +(.+?) *#*$", line)
        if heading:
            text = re.sub(r"!?\[([^\]]*)\]\([^)]*\)", r"\1", heading.group(1))
            base = slug = re.sub(r"[^\w\- ]", "", text.strip().lower()).replace(" ", "-")
            k = 0
            while slug in seen:
                k += 1
                slug = f"{base}-{k}"
            seen.add(slug)
            found.append((n, slug))
    return found


def first_table(quoted: str, preface: str) -> list[str]:
    """The rows of the first Markdown table of a file, or with `PATH#anchor` of the first one in that heading's
    section (up to the next heading), so a generator that puts another table first cannot swap the quote."""
    path, _, anchor = quoted.partition("#")
    if not os.path.isfile(path):
        raise UsageError(f"{preface} quotes the table of {path}, which is not there (rebuild the folder that "
                         "makes it first)")
    with open(path, encoding="utf-8") as f:
        lines = f.read().splitlines()
    if anchor:
        headings = heading_anchors(lines)
        at = [i for i, (_, slug) in enumerate(headings) if slug == anchor]
        if not at:
            raise UsageError(f"{preface} quotes the table under #{anchor} of {path}, which has no such heading")
        end = headings[at[0] + 1][0] if at[0] + 1 < len(headings) else len(lines)
        lines = lines[headings[at[0]][0] + 1:end]
    rows = list(itertools.takewhile(lambda line: line.startswith("|"),
                                    itertools.dropwhile(lambda line: not line.startswith("|"), lines)))
    if not rows:
        raise UsageError(f"{preface} quotes the table of {quoted}, which holds no Markdown table"
                         + (" in that section" if anchor else ""))
    return rows


def quoted_tables(preface: str) -> list[str]:
    return sorted({quoted for _, quoted in table_markers(preface.splitlines(), PREFACE)})


def moved_settings_line(runs: list[Run]) -> str | None:
    """The runs here made before one of their settings moved (a default tuned since), by the spec they were made
    under, grouped by what moved: their rows spell the old values out, but a sweep of that spec today runs the new
    ones."""
    moved: dict[str, tuple] = {}
    for r in runs:
        keys = moved_settings(r.config)
        if keys:
            spec = spec_of(r.method, r.config.get("method_args") or {})
            moved[spec] = tuple(sorted(set(moved.get(spec, ())) | {(k, str(then), str(now))
                                                                   for k, (then, now) in keys.items()}))
    if not moved:
        return None
    groups: dict[tuple, list[str]] = {}
    for spec, keys in sorted(moved.items()):
        groups.setdefault(keys, []).append(spec)
    return ("- Settings that moved since some of these runs were made: their rows name the values they ran where "
            "those differ from today's defaults; a sweep of the spec they were made under would run today's values "
            "and refuses them as stale. " + "; ".join(
                ", ".join(f"`{spec}`" for spec in specs) + ": " + ", ".join(f"{k} {then} (today {now})"
                                                                           for k, then, now in keys)
                for keys, specs in groups.items()) + ".")


def former_names_line(runs: list[Run]) -> str | None:
    """What each former-defaults name in the rows' labels stands for (method_label)."""
    from methods import discover
    named = {}
    for r in runs:
        former, _ = former_defaults_named(r.method, label_args(r.config))
        if former is not None:
            named[f"{r.method} ({former})"] = discover()[r.method].FORMER_DEFAULTS[former]
    if not named:
        return None
    return ("- Rows named by former defaults: " + "; ".join(
        f"`{name}` ran " + ", ".join(f"{k}={spell_setting(v)}" for k, v in sorted(former.items()))
        + f", {name.split(' (')[0]}'s defaults before those settings moved" for name, former in sorted(named.items()))
        + " (a setting that differs from that follows in brackets).")


def results_readme(runs, unfinished, setup, root, out, sweeps, tables_md, checks: dict, verdicts: dict,
                   preface: str | None = None) -> str:
    s = dict(zip(SETUP_KEYS, setup))
    started = min((r.started for r in runs if r.started), default="?")
    finished = max((r.finished for r in runs if r.finished), default="?")
    unrecorded = sum(not r.finished for r in runs)
    data = {}
    for r in runs:
        for task, sizes in r.config.get("data", {}).items():
            data.setdefault(task, (sizes["train"], sizes["test"]))
    lines: list[str] = ["# Results", "",
             f"{GENERATED_LINE} from the run directories under `{root}`; do not edit "
             "by hand.", ""]
    if preface is not None:   # what the folder is for, in its authors' words (the one hand-written part)
        quotes = quoted_tables(preface)
        lines[-2] += (f" The note below is `{PREFACE}`, kept by hand" +
                      (f", but for the table{'s' * (len(quotes) > 1)} it quotes from "
                       f"{', '.join(f'`{q}`' for q in quotes)}, copied in by each rebuild" if quotes else "") + ".")
        lines += [preface, ""]
    if any(verdicts.values()):
        lines += [f"## What these runs support about {PAIRED_TARGET}", "",
                  f"From the paired table: {PAIRED_TARGET}'s own row (today's defaults where they ran, else the "
                  "defaults of the runs' time, as each line names it) minus each continual learner on the same "
                  "orders, seeds and evaluation examples; significant = the 95% interval excludes 0; ΔFM < 0 = it "
                  "forgets less; ΔBWT, stated beside it, has not FM's upward noise bias (ΔBWT > 0 = it forgets "
                  "less); * = significant; ** = significant also under Holm's correction over the block's ΔAA and "
                  "ΔFM against every baseline (family-wise error 5%; a ΔFM only where ΔBWT bears it out; each block's "
                  "last line).",
                  ""]
        for protocol, lines_of in verdicts.items():
            if lines_of:
                lines += ([f"{protocol}:", ""] if len(verdicts) > 1 else []) + [f"- {v}" for v in lines_of] + [""]
    lines += ["## Where these numbers come from", "",
             f"- Model: `{s['model']}`; evaluation " +
             " and ".join(f"`{protocol_text(p)}`" for p in by_protocol(runs)) + f", `{s['dtype']}`, inputs cut to "
             f"{s['max_input_tokens']} tokens" +
             (f" (`--truncate {s['truncate']}`)" if s["truncate"] != "head" else "") + ".",
             f"- Per task: {s['train_per_task']} training and {s['test_per_task']} evaluation examples (stratified "
             "by label, from the split the evaluation line names; the same subsample for every seed). Actual sizes: " +
             ", ".join(f"{t} {a}/{b}" for t, (a, b) in sorted(data.items())) + ".",
             f"- {len(runs)} finished runs: methods {', '.join(sort_labels({r.label for r in runs}))}; orders "
             f"{', '.join(sorted({r.order for r in runs}))}; seeds {', '.join(map(str, sorted({r.seed for r in runs})))}.",
             f"- Run dates (UTC): from {started} (the first run's start) to {finished} (the last one's finish"
             f"{f'; {unrecorded} run(s) recorded no finish time' if unrecorded else ''}). Packages: {packages_line(runs)}.",
             f"- Cost: {sum(r.card['timing']['wall_seconds'] for r in runs) / 3600:.2f} hours of run wall time in all "
             f"(training {sum(r.card['timing']['train_seconds'] for r in runs) / 3600:.2f} h, evaluation "
             f"{sum(r.card['timing']['eval_seconds'] for r in runs) / 3600:.2f} h; wall time less the spans a run lay "
             "stopped: the cost table's note says how).",
             "- Machines: " + machines_line(runs) + ".",
             "- Every run is listed, with its metrics, in `runs.csv`."]
    moved = moved_settings_line(runs)
    lines += [line for line in (code_line(runs), former_names_line(runs), moved) if line]
    if unfinished:
        lines.append(f"- Unfinished runs, not in any table ({len(unfinished)}): " +
                     ", ".join(f"`{os.path.relpath(u, root)}`" for u in unfinished) + ".")
    lines += ["", "## Regenerate", "",
              f"Each run's record (config, accuracy matrix, metrics, method card with timings, `general.json`; not "
              f"its weights) is under `{root}`, so the last command below alone remakes every table and figure. "
              "To remake the runs themselves: the sweep commands that make exactly the runs in these tables "
              "(derived from the runs; a rerun skips finished runs and resumes unfinished ones), `general` on the "
              "runs that have a GEN Δ (it needs the weights, so it measures runs made on this machine), then the "
              "tables:" + (" A run made before one of its settings moved is spelled with the value it ran and made "
                           f"again in `{remade_folder(root)}` (in `{root}`, beside the old run, one row would hold "
                           "two runs of a stream, which tables refuses); `harness tables --runs "
                           f"{remade_folder(root)}` tables those." if moved else ""), "", "```"]
    groups = by_protocol(runs)
    for group in groups.values():   # the sweep history speaks for one protocol only
        lines += regenerate_commands(group, root, sweeps if len(groups) == 1 else [])
    lines += general_commands(runs, root)
    lines += [f"python -m harness tables --runs {root} --out {out}", "```", "",
              "## Sanity checks", "",
              "Stated under every table too: does the regime forget at all (a BWT interval below 0 for "
              f"{FORGETTING_REFERENCE}), and do the bounds sit above the learners they bound.", ""]
    for protocol, lines_of in checks.items():
        lines += ([f"{protocol}:", ""] if len(checks) > 1 else []) + [f"- {c}" for c in lines_of] + [""]
    lines += ["## Tables", "",
              "Each table is also in this folder as Markdown (`*.md`) and LaTeX booktabs (`*.tex`).", ""]
    lines += tables_md
    lines += ["## Figures", "", "`figures/`: `heatmaps/` (the accuracy matrix of every run), `stream-<order>` "
              "(each task's accuracy along the stream, per method, seed mean), `aa_vs_kept-<block>` (per block "
              "of orders, AA with its 95% interval against the parameters kept at the end of the stream, and the "
              "continual learners' Pareto front); stream curves carry 95% bands where the runs kept their "
              "predictions; PNG and PDF each"
              + ("; with several protocols each name ends in `-<eval>-<split>`, as the tables' do" if len(checks) > 1
                 else "") + ".", ""]
    return "\n".join(lines)
