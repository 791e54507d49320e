"""Run directories -> the results section: tables (Markdown and LaTeX booktabs), figures, results/README.md.

Reads only finished runs (status.json says so) and never invents a number: a cell without a run is "–".
Runs are grouped by method *label*: the method name plus the settings the run fixed (craft [routing=single])."""
from __future__ import annotations

import json
import math
import os
import shlex
import statistics
from collections import Counter
from dataclasses import dataclass, field

import pandas as pd

from core.errors import UsageError
from harness import metrics as metrics_mod
from harness.rundir import atomic_write

MISSING = "–"
# Blocks of orders shown side by side, as in O-LoRA's Table 1; other orders get a block each.
ORDER_BLOCKS = [("Orders 1-3", ["1", "2", "3"]), ("Orders 4-6", ["4", "5", "6"]),
                ("Offline orders", ["offline1", "offline2", "offline3"])]
KNOWN_ORDERS = [o for _, members in ORDER_BLOCKS for o in members]


def order_rank(order: str) -> tuple:
    """Sort key: the known orders as the blocks list them, anything else after, alphabetically."""
    return (KNOWN_ORDERS.index(order) if order in KNOWN_ORDERS else len(KNOWN_ORDERS), order)
# Rows in this order where present; anything else follows alphabetically.
METHOD_ORDER = ["seq_lora", "replay", "inc_lora", "o_lora", "i_lora", "craft", "zero_shot", "per_task", "mtl"]
SETUP_KEYS = ("model", "train_per_task", "test_per_task", "eval", "dtype", "max_input_tokens")


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

    @property
    def bound(self) -> bool:
        return bool(self.card.get("bound"))

    @property
    def final(self) -> pd.Series:
        return metrics_mod.trained_rows(self.matrix).iloc[-1]


def method_label(method: str, method_args: dict) -> str:
    if not method_args:
        return method
    return f"{method} [" + ", ".join(f"{k}={v}" for k, v in sorted(method_args.items())) + "]"


def load_runs(root: str) -> tuple[list[Run], list[str]]:
    """Every finished run under root, and the paths of unfinished ones."""
    if not os.path.isdir(root):
        raise UsageError(f"no runs folder at {root}")
    finished, unfinished = [], []
    for folder, dirs, files in os.walk(root):
        dirs.sort()
        if "status.json" not in files:
            continue
        with open(os.path.join(folder, "status.json")) as f:
            status = json.load(f)
        if status.get("state") != "finished":
            unfinished.append(folder)
            continue
        with open(os.path.join(folder, "config.json")) as f:
            config = json.load(f)
        with open(os.path.join(folder, "method.json")) as f:
            card = json.load(f)
        matrix = metrics_mod.read_matrix(os.path.join(folder, "matrix.csv"))
        general = None
        if os.path.isfile(os.path.join(folder, "general.json")):
            with open(os.path.join(folder, "general.json")) as f:
                general = json.load(f)
        finished.append(Run(
            path=folder, method=config["method"], label=method_label(config["method"], config.get("method_args") or {}),
            order=str(config["order"]), seed=int(config["seed"]), tasks=list(config["tasks"]),
            setup=tuple(config.get(k) for k in SETUP_KEYS), matrix=matrix,
            metrics=metrics_mod.compute(matrix), card=card, config=config, general=general))
    return finished, unfinished


def check_one_setup(runs: list[Run]) -> tuple:
    setups = sorted({r.setup for r in runs}, key=str)
    if len(setups) > 1:
        described = "; ".join(", ".join(f"{k}={v}" for k, v in zip(SETUP_KEYS, s)) for s in setups)
        raise UsageError(f"the runs mix {len(setups)} setups ({described}); numbers from different sizes or "
                         "models must not share a table: point --runs at a folder with one setup")
    # One row = one method with one set of settings: a default changed between runs would otherwise
    # average two different methods under one name.
    by_label: dict[str, dict[str, list[str]]] = {}
    for r in runs:
        key = json.dumps(r.config.get("settings"), sort_keys=True)
        by_label.setdefault(r.label, {}).setdefault(key, []).append(r.path)
    for label, variants in by_label.items():
        if len(variants) > 1:
            groups = " vs ".join(paths[0] + (f" (+{len(paths) - 1} more)" if len(paths) > 1 else "")
                                 for paths in variants.values())
            raise UsageError(f"runs of {label} were made with different settings ({groups}); move the stale "
                             "ones out of the runs folder")
    return setups[0]


# ---- numbers --------------------------------------------------------------------------------------------
def mean_std(values: list[float]) -> tuple[float | None, float | None, int]:
    values = [v for v in values if v is not None and not (isinstance(v, float) and math.isnan(v))]
    if not values:
        return None, None, 0
    return statistics.fmean(values), (statistics.stdev(values) if len(values) > 1 else None), len(values)


def fmt(values: list[float], digits: int = 2) -> str:
    """mean ± std over the values (std only with two or more), or the missing mark."""
    m, s, n = mean_std(values)
    if m is None:
        return MISSING
    return f"{m:.{digits}f}" + (f" ± {s:.{digits}f}" if s is not None else "")


def fmt_spread(values: list[float], digits: int = 1) -> str:
    """median [min–max] over the values: for timings, where a run slowed by a busy machine should not move the
    centre the way it moves a mean."""
    if not values:
        return MISSING
    med = f"{statistics.median(values):.{digits}f}"
    return med if len(values) == 1 else f"{med} [{min(values):.{digits}f}–{max(values):.{digits}f}]"


def blocks_for(orders: set[str]) -> list[tuple[str, list[str]]]:
    out = [(title, members) for title, members in ORDER_BLOCKS if orders & set(members)]
    out += [(f"Order {o}", [o]) for o in sorted(orders - set(KNOWN_ORDERS))]
    return out


def sort_labels(labels: set[str]) -> list[str]:
    def key(label):
        base = label.split(" [")[0]
        rank = METHOD_ORDER.index(base) if base in METHOD_ORDER else len(METHOD_ORDER)
        return rank, base, label != base, label
    return sorted(labels, key=key)


def by(runs: list[Run], **match) -> list[Run]:
    return [r for r in runs if all(getattr(r, k) == v for k, v in match.items())]


def block_average(runs: list[Run], label: str, members: list[str]) -> list[float]:
    """AA averaged over the block's orders, one value per seed that ran every order (else empty)."""
    out = []
    for seed in sorted({r.seed for r in by(runs, label=label)}):
        per_order = [by(runs, label=label, order=o, seed=seed) for o in members]
        if all(per_order):
            out.append(statistics.fmean(rs[0].metrics["AA"] for rs in per_order))
    return out


def order_dispersion(runs: list[Run], label: str, members: list[str]) -> dict | None:
    """DESIGN.md: OPD_i = max over orders - min over orders of R[T][i] (seed-mean); AOPD mean, MOPD max."""
    finals = {}
    for o in members:
        rs = by(runs, label=label, order=o)
        if not rs:
            return None
        finals[o] = pd.concat([r.final for r in rs], axis=1).mean(axis=1)
    if len(finals) < 2:
        return None
    tasks = sorted(set.intersection(*(set(f.index) for f in finals.values())))
    opd = {t: max(f[t] for f in finals.values()) - min(f[t] for f in finals.values()) for t in tasks}
    aa = [statistics.fmean(float(f[t]) for t in f.index) for f in finals.values()]
    return {"AA_mean": statistics.fmean(aa), "AA_std": statistics.stdev(aa) if len(aa) > 1 else None,
            "AOPD": statistics.fmean(opd.values()), "MOPD": max(opd.values()), "OPD": opd}


# ---- tables ---------------------------------------------------------------------------------------------
@dataclass
class Table:
    name: str
    title: str
    groups: list[tuple[str, int]]          # (title, number of columns) over the data columns
    columns: list[str]
    sections: list[tuple[str | None, list[list[str]]]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def markdown(self) -> str:
        # One header row in Markdown: a column name that repeats across groups carries its group's title.
        repeated = {c for c in self.columns if self.columns.count(c) > 1}
        head = ["Method"] + [f"{g}: {c}" if c in repeated and g else c
                             for (g, _), c in zip(self._group_per_column(), self.columns)]
        lines = [f"### {self.title}", "", "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
        for section, rows in self.sections:
            if section:
                lines.append(f"| *{section}* |" + " |" * len(self.columns))
            lines += ["| " + " | ".join(row) + " |" for row in rows]
        if self.notes:
            lines += [""] + [f"{n}" for n in self.notes]
        return "\n".join(lines) + "\n"

    def _group_per_column(self):
        out = []
        for g, n in self.groups or [("", len(self.columns))]:
            out += [(g, n)] * n
        return out

    def latex(self) -> str:
        def esc(text: str) -> str:
            return (text.replace("\\", r"\textbackslash{}").replace("_", r"\_").replace("%", r"\%")
                    .replace("&", r"\&").replace("#", r"\#").replace(" ± ", r" $\pm$ ").replace(MISSING, "--")
                    .replace("↑", r"$\uparrow$").replace("↓", r"$\downarrow$").replace("Δ", r"$\Delta$"))
        ncols = len(self.columns)
        lines = [f"% {self.title}", r"\begin{tabular}{l" + "r" * ncols + "}", r"\toprule"]
        if any(g for g, _ in self.groups):
            cells, rules, start = [""], [], 2
            for g, n in self.groups:
                cells.append(rf"\multicolumn{{{n}}}{{c}}{{{esc(g)}}}" if n > 1 else esc(g))
                if g:
                    rules.append(rf"\cmidrule(lr){{{start}-{start + n - 1}}}")
                start += n
            lines += [" & ".join(cells) + r" \\", " ".join(rules)]
        lines.append(" & ".join(["Method"] + [esc(c) for c in self.columns]) + r" \\")
        lines.append(r"\midrule")
        for i, (section, rows) in enumerate(self.sections):
            if i:
                lines.append(r"\midrule")
            if section:
                lines.append(rf"\multicolumn{{{ncols + 1}}}{{l}}{{\emph{{{esc(section)}}}}} \\")
            lines += [" & ".join(esc(c) for c in row) + r" \\" for row in rows]
        lines += [r"\bottomrule", r"\end{tabular}"]
        return "\n".join(lines) + "\n"


def split_sections(runs: list[Run], labels: list[str], make_row) -> list[tuple[str | None, list[list[str]]]]:
    bounds = {r.label for r in runs if r.bound}
    variants = {r.label for r in runs if r.label != r.method and not r.bound}   # the label names fixed settings
    cl = [lab for lab in labels if lab not in bounds and lab not in variants]
    va = [lab for lab in labels if lab in variants]
    bd = [lab for lab in labels if lab in bounds]
    sections = [(None, [make_row(lab) for lab in cl])] if cl else []
    # A method run with fixed settings is an ablation or a sensitivity point, not another method.
    if va:
        sections.append(("Variants with fixed settings (ablations)", [make_row(lab) for lab in va]))
    if bd:
        sections.append(("Bounds (not continual learners: no training, task id at test, or joint training)",
                         [make_row(lab) for lab in bd]))
    return sections


def main_table(runs: list[Run]) -> Table:
    blocks = blocks_for({r.order for r in runs})
    columns, groups = [], []
    for title, members in blocks:
        cols = members + ([f"Avg ({title})"] if len(members) > 1 else [])
        columns += cols
        groups.append((title, len(cols)))

    def row(label):
        cells = [label]
        for _, members in blocks:
            cells += [fmt([r.metrics["AA"] for r in by(runs, label=label, order=o)]) for o in members]
            if len(members) > 1:
                cells.append(fmt(block_average(runs, label, members)))
        return cells
    seeds = ", ".join(map(str, sorted({r.seed for r in runs})))
    return Table("main", "Average accuracy AA (%) after the last task, per order", groups, columns,
                 split_sections(runs, sort_labels({r.label for r in runs}), row),
                 [f"AA = {metrics_mod.METRICS['AA'].description}. Mean ± std over seeds {seeds} where several ran; "
                  f"Avg = mean over the block's orders (per seed, then over seeds), only when every order ran. "
                  f"{MISSING} = no finished run."])


def forgetting_table(runs: list[Run]) -> Table:
    blocks = blocks_for({r.order for r in runs})
    names = ["BWT ↑", "FM ↓", "FWT ↑"]
    have_general = any(r.general for r in runs)
    columns, groups = [], []
    for title, _ in blocks:
        cols = names + (["GEN Δ"] if have_general else [])
        columns += cols
        groups.append((title, len(cols)))

    def row(label):
        cells = [label]
        for _, members in blocks:
            rs = [r for r in by(runs, label=label) if r.order in members]
            cells += [fmt([r.metrics[m] for r in rs]) for m in ("BWT", "FM", "FWT")]
            if have_general:
                cells.append(fmt([r.general["change"] for r in rs if r.general]))
        return cells
    notes = [f"{m} = {metrics_mod.METRICS[m].description}." for m in ("BWT", "FM", "FWT")]
    notes.append("Mean ± std over every run (orders x seeds) of the block.")
    if have_general:
        notes.append("GEN Δ = change in accuracy (points) on held-out general-ability tasks, after the stream "
                     "minus before (the backbone), measured through lm-eval; mean over the block's runs that have "
                     f"a general.json ({sum(1 for r in runs if r.general)} of {len(runs)} runs: "
                     "`python -m harness general` adds the rest). Measured runs per order and seed: " +
                     ", ".join(f"{o} seed {sd} {sum(1 for r in rs if r.general)}/{len(rs)}"
                               for (o, sd), rs in sorted(by_order_seed(runs).items(), key=lambda x: x[0][1])
                               if any(r.general for r in rs)) + ".")
    return Table("forgetting", "Forgetting and transfer", groups, columns,
                 split_sections(runs, sort_labels({r.label for r in runs}), row), notes)


def robustness_table(runs: list[Run]) -> Table:
    blocks = [(t, m) for t, m in blocks_for({r.order for r in runs}) if len(m) > 1]
    columns, groups = [], []
    for title, _ in blocks:
        columns += ["AA mean", "AA std", "AOPD", "MOPD"]
        groups.append((title, 4))

    def row(label):
        cells = [label]
        for _, members in blocks:
            d = order_dispersion(runs, label, members)
            if d is None:
                cells += [MISSING] * 4
            else:
                cells += [f"{d['AA_mean']:.2f}", MISSING if d["AA_std"] is None else f"{d['AA_std']:.2f}",
                          f"{d['AOPD']:.2f}", f"{d['MOPD']:.2f}"]
        return cells
    return Table("robustness", "Order robustness across the orders of a block", groups, columns,
                 split_sections(runs, sort_labels({r.label for r in runs}), row),
                 ["AA mean/std: over the block's orders of the seed-mean AA. OPD_i = max over orders - min over "
                  "orders of the seed-mean final accuracy R[T][i] of task i; AOPD = mean_i OPD_i, MOPD = max_i "
                  f"OPD_i (lower = more robust). {MISSING} = some order of the block has no finished run."])


def cost_table(runs: list[Run]) -> Table:
    columns = ["trainable params", "params kept", "kept per task", "train s/task", "eval s/run", "wall s/run",
               "task id at test"]

    def row(label):
        rs = by(runs, label=label)
        card = rs[0].card
        kept = [r.card.get("parameters_kept", r.card["trainable_parameters"]) for r in rs]
        per_task = [k / len(r.tasks) for k, r in zip(kept, rs)]
        train = [r.card["timing"]["train_seconds"] / len(r.tasks) for r in rs]
        return [label, f"{card['trainable_parameters']:,}", f"{max(kept):,}", f"{statistics.fmean(per_task):,.0f}",
                fmt_spread(train), fmt_spread([r.card["timing"]["eval_seconds"] for r in rs]),
                fmt_spread([r.card["timing"]["wall_seconds"] for r in rs]),
                "yes" if card.get("uses_task_id_at_test") else "no"]
    keeps = {}
    for r in runs:
        keeps.setdefault(r.label, r.card.get("keeps_from_past_tasks", ""))
    notes = ["params kept = parameters stored beside the frozen backbone at the end of the stream, the most over "
             "the row's runs (it can vary: CRAFT keeps one intervention per group); kept per task = that over the "
             "number of tasks, mean over runs. Seconds are median [min–max] over runs (wall includes model loading); "
             "the range spans the orders' different tasks and any run slowed by a busy machine.",
             "What each method keeps from past tasks: " + "; ".join(f"{k}: {v}" for k, v in keeps.items()) + "."]
    return Table("cost", "Cost: parameters and time", [], columns,
                 split_sections(runs, sort_labels({r.label for r in runs}), row), notes)


def ablation_table(runs: list[Run], method: str = "craft", references=("seq_lora", "replay")) -> Table | None:
    variants = sort_labels({r.label for r in runs if r.method == method})
    if len(variants) < 2:
        return None
    # Like for like: every row only on the (order, seed) cells where some variant ran, so a variant run on
    # one seed is never set against the full method's mean over more seeds or orders.
    cells_run = {(r.order, r.seed) for r in runs if r.method == method and r.label != method}
    scoped = [r for r in runs if (r.order, r.seed) in cells_run]
    orders = sorted({o for o, _ in cells_run}, key=order_rank)
    seeds = sorted({s for _, s in cells_run})
    seeds_text = ("seeds " if len(seeds) > 1 else "seed ") + ", ".join(map(str, seeds))
    columns, groups = [], []
    for o in orders:
        columns += ["AA ↑", "BWT ↑", "FM ↓"]
        groups.append((f"Order {o}", 3))
    columns += ["trainable params", "wall s/run"]
    groups.append(("", 2))

    def row(label):
        cells = [label]
        for o in orders:
            rs = by(scoped, label=label, order=o)
            cells += [fmt([r.metrics[m] for r in rs]) for m in ("AA", "BWT", "FM")]
        rs = by(scoped, label=label)
        cells.append(f"{rs[0].card['trainable_parameters']:,}" if rs else MISSING)
        cells.append(fmt_spread([r.card["timing"]["wall_seconds"] for r in rs], 0))
        return cells
    sections = [(None, [row(v) for v in variants])]
    refs = [r for r in references if by(scoped, label=r)]
    if refs:
        sections.append(("References", [row(r) for r in refs]))
    return Table("ablations", f"{method} and its ablations (settings in brackets)", groups, columns, sections,
                 [f"Every row is restricted to the orders and seeds where an ablation ran ({seeds_text}), so the "
                  "rows compare the same streams. AA, BWT, FM: mean ± std over those seeds. Trainable params: "
                  "per run. Wall s/run: median [min–max] over the row's runs in the table."])


def all_tables(runs: list[Run]) -> list[Table]:
    tables = [main_table(runs), forgetting_table(runs), robustness_table(runs), cost_table(runs)]
    ablation = ablation_table(runs)
    if ablation:
        tables.append(ablation)
    return tables


# ---- writing --------------------------------------------------------------------------------------------
def runs_csv(runs: list[Run], root: str) -> str:
    rows = [{"run": os.path.relpath(r.path, root), "method": r.method, "label": r.label, "order": r.order,
             "seed": r.seed, **{k: r.metrics[k] for k in ("AA", "BWT", "FM", "FWT")},
             "general_change": r.general["change"] if r.general else None,
             "trainable_parameters": r.card["trainable_parameters"],
             "parameters_kept": r.card.get("parameters_kept"), "wall_seconds": r.card["timing"]["wall_seconds"],
             "created": r.config.get("created")} for r in runs]
    return pd.DataFrame(rows).sort_values(["label", "order", "seed"]).to_csv(index=False, lineterminator="\n")


def write_tables(root: str, out: str, figures: bool = True) -> dict:
    runs, unfinished = load_runs(root)
    if not runs:
        raise UsageError(f"no finished run under {root}" + (f" ({len(unfinished)} unfinished)" if unfinished else ""))
    setup = check_one_setup(runs)
    os.makedirs(out, exist_ok=True)
    tables = all_tables(runs)
    md = []
    for t in tables:
        atomic_write(os.path.join(out, f"{t.name}.md"), t.markdown())
        atomic_write(os.path.join(out, f"{t.name}.tex"), t.latex())
        md.append(t.markdown())
    atomic_write(os.path.join(out, "runs.csv"), runs_csv(runs, root))
    written = [f"{t.name}.md" for t in tables] + [f"{t.name}.tex" for t in tables] + ["runs.csv"]
    if figures:
        from harness import figures as figs
        written += figs.write_figures(runs, os.path.join(out, "figures"))
    from harness.sweep import sweep_commands
    readme = results_readme(runs, unfinished, setup, root, out, sweep_commands(root), md)
    atomic_write(os.path.join(out, "README.md"), readme)
    return {"runs": len(runs), "unfinished": unfinished, "files": written + ["README.md"]}


SWEEP_GRID_OPTIONS = {"--methods", "--orders", "--seeds", "--runs", "--jobs"}   # options with a value
SWEEP_SWITCHES = {"--dry-run", "--quiet"}


def run_options_of(sweeps: list[dict], runs: list[Run]) -> str:
    """The run options (sizes, data, model) as the user spelled them in the latest sweep command, else as
    the runs' config.json records them."""
    for entry in reversed(sweeps):
        words, kept, skip = shlex.split(entry["command"]), [], False
        for word in words[words.index("sweep") + 1:] if "sweep" in words else []:
            if skip:
                skip = False
            elif word in SWEEP_GRID_OPTIONS:
                skip = True
            elif word.split("=")[0] not in SWEEP_GRID_OPTIONS | SWEEP_SWITCHES:
                kept.append(word)
        return shlex.join(kept)
    c = runs[0].config
    words = ["--train-per-task", str(c.get("train_per_task") or "all"),
             "--test-per-task", str(c.get("test_per_task") or "all"), "--model", str(c["model"]),
             "--eval", str(c["eval"]), "--dtype", str(c["dtype"]), "--max-input-tokens", str(c["max_input_tokens"])]
    if c.get("data_dir"):
        words += ["--data-dir", c["data_dir"]]
    return shlex.join(words)


def by_order_seed(runs: list[Run]) -> dict:
    groups: dict = {}
    for r in sorted(runs, key=lambda r: order_rank(r.order)):
        groups.setdefault((r.order, r.seed), []).append(r)
    return groups


def general_commands(runs: list[Run], root: str) -> list[str]:
    """`general` commands for exactly the runs that have a general.json: a glob where every run of an
    order and seed has one (and the runs sit in the sweep layout), else the run directories by name."""
    def key_of(r):
        return tuple(r.general.get("tasks", ())), r.general.get("per_task")

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
    (or a variant that became the default) is not made again."""
    specs, cells = {}, {}
    for r in runs:
        specs[r.label] = ":".join([r.method] + [f"{k}={v}" for k, v in r.config.get("method_args", {}).items()])
        cells.setdefault(r.label, {}).setdefault(r.seed, set()).add(r.order)
    grids = {}   # (orders, seeds) -> labels
    for label, by_seed in cells.items():
        merged = {}   # orders -> seeds that ran exactly those orders
        for seed, orders in by_seed.items():
            merged.setdefault(tuple(sorted(orders, key=order_rank)), []).append(seed)
        for orders, seeds in merged.items():
            grids.setdefault((orders, tuple(sorted(seeds))), []).append(label)
    options = run_options_of(sweeps, runs)
    return [f"python -m harness sweep --methods {','.join(specs[x] for x in sort_labels(set(labels)))} "
            f"--orders {','.join(orders)} --seeds {','.join(map(str, seeds))} --runs {root} {options}".rstrip()
            for (orders, seeds), labels in sorted(grids.items(), key=lambda g: (g[0][1], -len(g[1]), g[0][0]))]


def machines_line(runs) -> str:
    """Which CPUs made the runs (numbers are bit-for-bit comparable only between runs of one kernel set)."""
    seen = Counter(f"{m['cpu']} ({m['torch_cpu_capability']}, {m['threads']} threads)" if m else "not recorded"
                   for m in (r.config.get("machine") for r in runs))
    return "; ".join(f"{k}: {n} run{'s' * (n != 1)}" for k, n in sorted(seen.items()))


def results_readme(runs, unfinished, setup, root, out, sweeps, tables_md) -> str:
    s = dict(zip(SETUP_KEYS, setup))
    created = sorted(r.config.get("created", "") for r in runs)
    data = {}
    for r in runs:
        for task, sizes in r.config.get("data", {}).items():
            data.setdefault(task, (sizes["train"], sizes["test"]))
    packages = runs[0].config.get("packages", {})
    lines = ["# Results", "",
             f"Generated by `python -m harness tables` from the run directories under `{root}`; do not edit "
             "by hand.", "",
             "## Where these numbers come from", "",
             f"- Model: `{s['model']}`; evaluation `{s['eval']}`, `{s['dtype']}`, inputs cut to "
             f"{s['max_input_tokens']} tokens.",
             f"- Per task: {s['train_per_task']} training and {s['test_per_task']} test examples (stratified by "
             "label; the test subsample is the same for every seed). Actual sizes: " +
             ", ".join(f"{t} {a}/{b}" for t, (a, b) in sorted(data.items())) + ".",
             f"- {len(runs)} finished runs: methods {', '.join(sort_labels({r.label for r in runs}))}; orders "
             f"{', '.join(sorted({r.order for r in runs}))}; seeds {', '.join(map(str, sorted({r.seed for r in runs})))}.",
             f"- Run dates: {created[0]} to {created[-1]}. Packages: " +
             ", ".join(f"{k} {v}" for k, v in packages.items() if v) + ".",
             f"- Cost: {sum(r.card['timing']['wall_seconds'] for r in runs) / 3600:.2f} hours of run wall time in all "
             f"(training {sum(r.card['timing']['train_seconds'] for r in runs) / 3600:.2f} h, evaluation "
             f"{sum(r.card['timing']['eval_seconds'] for r in runs) / 3600:.2f} h).",
             "- CPUs: " + machines_line(runs) + ".",
             "- Every run is listed, with its metrics, in `runs.csv`."]
    if unfinished:
        lines.append(f"- Unfinished runs, not in any table ({len(unfinished)}): " +
                     ", ".join(f"`{os.path.relpath(u, root)}`" for u in unfinished) + ".")
    lines += ["", "## Regenerate", "",
              f"Each run's record (config, accuracy matrix, metrics, method card with timings, `general.json`; not "
              f"its weights) is under `{root}`, so the last command below alone remakes every table and figure. "
              "To remake the runs themselves: the sweep commands that make exactly the runs in these tables "
              "(derived from the runs; a rerun skips finished runs and resumes unfinished ones), `general` on the "
              "runs that have a GEN Δ (it needs the weights, so it measures runs made on this machine), then the "
              "tables:", "", "```"]
    lines += regenerate_commands(runs, root, sweeps) + general_commands(runs, root)
    lines += [f"python -m harness tables --runs {root} --out {out}", "```", "",
              "## Tables", "", "Each table is also in this folder as Markdown (`*.md`) and LaTeX booktabs (`*.tex`).", ""]
    lines += tables_md
    lines += ["## Figures", "", "`figures/`: `heatmaps/` (the accuracy matrix of every run), `stream-<order>` "
              "(each task's accuracy along the stream, per method, seed mean), `aa_vs_params` (AA against "
              "trainable parameters); PNG and PDF each.", ""]
    return "\n".join(lines)
