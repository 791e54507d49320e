"""Command line: `python -m harness {bench,sweep,tables,general,compare,list,metrics,data}`. Bad input is one line on stderr and exit status 2."""
from __future__ import annotations

import argparse
import dataclasses
import functools
import json
import os
import sys

from core.errors import UsageError
from harness import config, data_cmd, probes

# The committed sweep lives here: its run records are in git (weights and console logs are not, see
# .gitignore), so a sweep spread over several machines resumes where the last one stopped.
RUNS_DEFAULT = "results/runs"


def _method_args(pairs: list[str] | None, config_file: str | None) -> dict:
    args: dict = {}
    if config_file:
        try:
            with open(config_file, encoding="utf-8") as f:
                loaded = json.load(f)
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
            raise UsageError(f"cannot read --method-config {config_file}: {e}") from None
        if not isinstance(loaded, dict):
            raise UsageError(f"--method-config {config_file} must hold a JSON object of settings")
        # every value as --method-arg would give it, so the method parses and type-checks it the same way
        # (a null or a list where a number belongs is then a one-line error, not a crash mid-run)
        args.update({key: value if isinstance(value, str) else json.dumps(value) for key, value in loaded.items()})
    for pair in pairs or []:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise UsageError(f"--method-arg expects key=value, got {pair!r}")
        args[key.strip()] = value.strip()
    return args


def _ancestors(path: str) -> list[str]:
    """The folders above `path`, nearest first."""
    out, folder = [], os.path.dirname(os.path.abspath(path))
    while folder != os.path.dirname(folder):
        out.append(folder)
        folder = os.path.dirname(folder)
    return out


class _Parser(argparse.ArgumentParser):
    def __init__(self, *args, **kwargs):
        # no prefixes: `--dry` would reach the sweep as --dry-run while make grid, which looks for the full
        # spelling to skip its writing steps, would run them for real
        kwargs.setdefault("allow_abbrev", False)
        super().__init__(*args, **kwargs)

    def error(self, message):  # argparse's own errors: one line, status 2, as everything else
        self.exit(2, f"{self.prog}: error: {message}\n")


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="python -m harness", description="Continual-learning benchmark harness for LLMs.")
    sub = p.add_subparsers(dest="command", required=True, parser_class=_Parser)

    b = sub.add_parser("bench", help="run one method over one task order")
    config.add_options(b, config.BENCH)
    b.add_argument("--method-arg", action="append", metavar="KEY=VALUE", help="a method setting (repeatable)")
    b.add_argument("--method-config", metavar="JSON", help="a JSON file of method settings")

    s = sub.add_parser("sweep", help="run a grid of methods x orders x seeds, skipping finished runs")
    s.add_argument("--methods", required=True,
                   help="comma-separated methods; fix settings with name:key=value[:key=value] "
                        "(e.g. seq_lora,craft,craft:routing=single); a list value keeps its commas "
                        "(craft:layers=3,7,11,seq_lora is two specs)")
    s.add_argument("--orders", required=True, help="comma-separated orders (e.g. offline1,offline2,1,2)")
    s.add_argument("--seeds", default="1", help="comma-separated seeds (default 1)")
    s.add_argument("--runs", default=RUNS_DEFAULT, help="folder of run directories (default results/runs)")
    s.add_argument("--jobs", type=int, default=1,
                   help="runs side by side, each with cores/jobs threads (default 1: on 2 cores one 2-thread "
                        "job measured faster than two 1-thread jobs)")
    config.add_options(s, config.SWEEP)
    s.add_argument("--dry-run", action="store_true",
                   help="print the grid, what is left and its cost at the medians of the finished runs here; run nothing")
    s.add_argument("--costs-from", metavar="RUNS[,RUNS...]",
                   help="--dry-run: cost the cells left at the medians of these folders' finished runs, pooled "
                        "(default: --runs)")
    s.add_argument("--print-commands", action="store_true",
                   help="print one shell command per unfinished cell (for another scheduler, e.g. a Slurm array), "
                        "run nothing")
    s.add_argument("--earlier-cells", metavar="FILE",
                   help="--dry-run, --print-commands: leave out the run folders listed in FILE (one a line, by an "
                        "earlier step of the same plan) and add those listed here, so a plan of several sweeps that "
                        "name a cell twice costs and prints it once (make grid's looks use it)")
    s.add_argument("--engine", choices=("local", "ray"), default="local",
                   help="local: subprocesses here (--jobs); ray: one Ray task per cell (default local)")
    s.add_argument("--address", help="ray: the cluster to join (default: start a local Ray instance)")
    s.add_argument("--cpus-per-cell", type=config.positive_int, metavar="N",
                   help="ray: CPUs each cell asks for, and its thread count (default 2, or fewer if no node has 2)")
    s.add_argument("--gpus-per-cell", type=float, metavar="N",
                   help="ray: GPUs each cell asks for (default 1 with --device cuda, else 0)")
    s.add_argument("--retries", type=config.non_negative_int, default=3, metavar="N",
                   help="ray: times a cell whose worker died is started again; it resumes (default 3)")
    s.add_argument("--quiet", action="store_true", help="no progress bar")

    t = sub.add_parser("tables", help="turn a folder of runs into tables, figures and results/README.md")
    t.add_argument("--runs", default=RUNS_DEFAULT, help="folder of run directories (default results/runs)")
    t.add_argument("--out", default="results", help="where tables and figures go (default results)")
    t.add_argument("--no-figures", action="store_true", help="tables only")

    g = sub.add_parser("general", help="general-ability retention of finished runs (held-out tasks, via lm-eval)")
    g.add_argument("paths", nargs="*", help="run directories (default: every finished run under --runs)")
    g.add_argument("--runs", default=RUNS_DEFAULT, help="folder of run directories (default results/runs)")
    g.add_argument("--tasks", default=None, help="held-out tasks, comma-separated (default: GENERAL_TASKS of "
                   "harness/general.py; a run skips those in its own stream)")
    g.add_argument("--per-task", type=int, default=None, help="test examples per held-out task (default 50)")
    g.add_argument("--redo", action="store_true", help="measure runs that already have general.json again")
    g.add_argument("--device", default=None, help="torch device to measure on (default: each run's own; device is "
                   "environment, not setup: a run trained on cuda can be measured on cpu)")

    c = sub.add_parser("compare", help="pair the runs of two folders (same method, order, seed; two setups) and "
                                       "give the AA and FM differences with their intervals")
    c.add_argument("a", metavar="RUNS_A", help="folder of runs (the reference)")
    c.add_argument("b", metavar="RUNS_B", help="folder of runs (the changed setup); differences are B - A")
    c.add_argument("--json", action="store_true", help="print one JSON object instead of the Markdown table")
    c.add_argument("--pair-by", default="spec",   # compare.PAIR_BY checks it (importing compare here loads pandas)
                   help="spec (default): runs of the same sweep spec, so a default that moved between the setups "
                        "still pairs; label: runs that ran the same settings, however their folders spell them")

    sub.add_parser("list", help="list methods, tasks and orders")

    m = sub.add_parser("metrics", help="print AA, BWT, FM, FWT, LA of a matrix.csv or run directory")
    m.add_argument("path")
    m.add_argument("--json", action="store_true",
                   help="print one JSON object: AA, BWT, FM, FWT, LA and their 95%% bootstrap intervals over the "
                        "evaluated examples (AA_ci, ...: [lo, hi], null for a run recorded without predictions)")

    data_cmd.add_parser(sub)
    return p


def _check_machine(cfg: config.BenchConfig) -> None:
    """What bench and sweep check before any folder is made or model loaded: the thread count, the data folder,
    the device and the model (its config and tokenizer, not its weights)."""
    from harness.models import check_device, check_model, env_threads
    env_threads()
    if cfg.data_dir and not os.path.isdir(cfg.data_dir):
        raise UsageError(f"data directory {cfg.data_dir!r} (from --data-dir or CL_DATA_DIR) "
                         + ("is a file, not a directory" if os.path.exists(cfg.data_dir) else "does not exist"))
    check_device(cfg.device)
    check_model(cfg.model, cfg.allow_download)


def _discard_unstarted(out: str, made_from: str | None) -> None:
    """After a failed bench: remove the run directory it made if no stage was finished in it (nothing is lost),
    so no half-made run is left for a later command to refuse or resume. `made_from`: the topmost folder of
    `out` that did not exist before (None: `out` existed)."""
    from harness.rundir import RUN_FILES, RunDir
    try:
        status = RunDir(out).status()
    except UsageError:
        return
    # only the backbone's row (a method's setup failed): nothing trained is lost, its scores are cached
    if not status or status["state"] != "running" or set(status.get("rows") or {}) - {"base"} \
            or status.get("checkpoint") or status.get("partial"):
        return
    for name in RUN_FILES:
        if os.path.isfile(os.path.join(out, name)):
            os.unlink(os.path.join(out, name))
    folder = os.path.abspath(out)
    while made_from and not os.listdir(folder):
        os.rmdir(folder)
        if folder == os.path.abspath(made_from):
            break
        folder = os.path.dirname(folder)


def cmd_bench(a) -> int:
    import tasks as task_registry
    from harness import metrics
    from harness.rundir import RunDir, check_base_cache, check_folder
    from harness.runner import run_bench
    from harness.sweep import check_seed, die_with_sweep
    from methods import get_method
    die_with_sweep()
    cfg = config.from_args(a, method_args=_method_args(a.method_arg, a.method_config))
    # everything a user can get wrong, checked before a folder is made or a model loaded
    config.check(cfg)
    get_method(cfg.method).resolve_settings(cfg.method_args)
    task_registry.get_order(cfg.order)
    check_seed(cfg.seed)
    if cfg.out is not None:
        check_folder(cfg.out, "--out")
    if cfg.base_cache is not None:
        check_base_cache(cfg.base_cache)
    _check_machine(cfg)
    out = cfg.out or cfg.default_out()
    if cfg.probes and not cfg.overwrite and RunDir(out).is_finished():   # resuming a run whose probes did not all run
        return _probe_finished(cfg, out)
    made_from = None
    for folder in (out, *_ancestors(out)):
        if os.path.exists(folder):
            break
        made_from = folder
    fresh = made_from is not None or (os.path.isdir(out) and not os.listdir(out))
    # a Ctrl-C is not a failure: an interrupted run keeps what it has. The discard runs inside the run's lock,
    # so it never removes the files of another process that took the folder over.
    discard = functools.partial(_discard_unstarted, out, made_from) if fresh or cfg.overwrite else None
    out = run_bench(cfg, on_failure=discard)
    if not RunDir(out).is_finished():
        print(f"{out}: unfinished (stopped after {a.stop_after_task} task(s)); run again without "
              "--stop-after-task to finish it")
        return 0
    R = metrics.read_matrix(os.path.join(out, "matrix.csv"))
    print(f"\nAccuracy matrix (%), rows = after training on, columns = evaluated task — {out}/matrix.csv")
    print(R.to_string(float_format=lambda v: f"{v:6.2f}"))
    print()
    print(metrics.format_metrics(metrics.compute(R), *_run_intervals(out, R)))
    with open(os.path.join(out, "method.json")) as f:
        card = json.load(f)
    t = card["timing"]
    print(f"\n{card['name']}: {card['trainable_parameters']:,} trainable parameters; "
          f"train {t['train_seconds']:.0f} s, eval {t['eval_seconds']:.0f} s, wall {t['wall_seconds']:.0f} s")
    return _run_probes(out, probes.names_of(cfg.probes), cfg)


def _probe_finished(cfg: config.BenchConfig, out: str) -> int:
    """`bench --probes` on a finished run: the probes it lacks, once its record is shown to be this very run."""
    from harness.models import configure_offline, set_threads
    from harness.rundir import RunDir
    recorded = RunDir(out).read_json("config.json")
    fields = [name for name in config.names(config.IDENTITY, config.SETUP) if name != "method_args"]
    want = {**{name: getattr(cfg, name) for name in fields},
            "settings": config.resolved_settings(cfg.method, cfg.method_args)}   # however the args spell them
    differ = [name for name, value in want.items() if config.recorded_value(recorded, name) != value]
    if differ:   # not --overwrite: that would throw a finished run away for a probe
        raise UsageError(f"output directory {out} already holds a finished run with different settings "
                         f"({', '.join(differ)}): give its own options (its config.json's `command`), or measure it "
                         "by its path (`python -m harness general PATH`, `python bench/protocols.py PATH`)")
    todo = probes.missing(out, cfg.probes)
    if not todo:
        print(f"{out}: finished, with every probe asked for ({cfg.probes}) measured")
        return 0
    if not RunDir(out).has_checkpoint():
        raise UsageError(f"{out} is finished but has no checkpoint (records are committed without their weights), "
                         f"so its {', '.join(todo)} probe(s) cannot run; rerun it with --overwrite to measure them")
    print(f"{out}: finished; measuring the probe(s) it lacks: {', '.join(todo)}")
    configure_offline(cfg.allow_download)   # as run_bench does before a fresh run's probes
    set_threads()
    return _run_probes(out, todo, cfg)


def _run_probes(out: str, names: list[str], cfg: config.BenchConfig) -> int:
    """Each probe in turn, on the command's --device (default cpu); one that fails is named with the command that
    retries it, and the rest still run (the run itself stays finished). Exit status 1 if any failed."""
    import gc
    import traceback
    gc.collect()   # the run's own model, if nothing holds it now, before a probe loads another
    failed = []
    for name in names:
        try:
            print(f"{out}: {probes.measure(out, name, cfg.device, cfg.progress, cfg.base_cache)}")
        except Exception as e:   # noqa: BLE001 - a probe's failure must not hide the others' results
            failed.append(name)
            if not isinstance(e, UsageError):   # a bug, not bad input: its traceback goes to the cell's log
                traceback.print_exc()
            print(f"{out}: probe {name} failed: {type(e).__name__}: {e}; `python -m harness bench` with the same "
                  f"options and --probes {name} retries it", file=sys.stderr)
    return 1 if failed else 0


def cmd_sweep(a) -> int:
    from harness import sweep
    from harness.rundir import check_base_cache, check_folder
    if a.jobs < 1:
        raise UsageError(f"--jobs must be at least 1, got {a.jobs}")
    if a.data_dir and not os.path.isdir(a.data_dir):
        raise UsageError(f"--data-dir {a.data_dir} is not a directory")
    check_folder(a.runs, "--runs")
    typed = config.from_args(a)
    config.check(typed)
    shared = dataclasses.replace(typed, data_dir=os.path.abspath(a.data_dir) if a.data_dir else None)
    cells = sweep.plan(a.runs, sweep.split_methods(a.methods), sweep.split_list(a.orders, "orders"),
                       sweep.split_list(a.seeds, "seeds"), shared)
    _check_machine(typed)   # the grid's typos first: they cost nothing; the model's tokenizer loads here
    check_base_cache(os.path.join(a.runs, "base-cache.json"))
    costs_from = sweep.split_list(a.costs_from, "costs-from") if a.costs_from else None
    if costs_from and not a.dry_run:
        raise UsageError("--costs-from goes with --dry-run")
    for folder in costs_from or []:
        if not os.path.isdir(folder):
            raise UsageError(f"--costs-from {folder} is not a folder")
    if a.earlier_cells and not (a.dry_run or a.print_commands):
        raise UsageError("--earlier-cells goes with --dry-run or --print-commands")
    if a.earlier_cells and (os.path.isdir(a.earlier_cells)
                            or not os.path.isdir(os.path.dirname(os.path.abspath(a.earlier_cells)))):
        raise UsageError(f"--earlier-cells {a.earlier_cells}: a file is needed, in a folder that exists")
    earlier = sweep.listed_earlier(a.earlier_cells) if a.earlier_cells else set()
    own = [c for c in cells if os.path.abspath(c.out) not in earlier]
    if a.dry_run:
        if len(own) < len(cells):
            print(f"{len(cells) - len(own)} run(s) left out here: an earlier step of this plan lists them "
                  f"({a.earlier_cells})")
        print("\n".join(sweep.dry_run_lines(a.runs, own, costs_from)))
    elif a.print_commands:   # what the local engine would run, in its order
        sweep.check_cells(a.runs, cells)
        env = sweep.cell_env(sweep.local_threads(a.jobs))
        for cell in sweep.pending(own):
            print(sweep.shell_command(cell, env))
    if a.earlier_cells:
        sweep.add_listed(a.earlier_cells, own)
    if a.dry_run or a.print_commands:
        return 0
    ray = None
    if a.engine == "ray":
        if a.jobs != 1:
            raise UsageError("--jobs goes with --engine local; on Ray, --cpus-per-cell decides how many cells "
                             "run side by side")
        if a.gpus_per_cell is not None and a.gpus_per_cell < 0:
            raise UsageError(f"--gpus-per-cell must be 0 or more, got {a.gpus_per_cell:g}")
        from harness.ray_engine import check_address, import_ray
        import_ray(local_instance=not a.address)   # before anything is written
        if a.address:
            check_address(a.address)
        ray = sweep.RayOptions(a.address, a.cpus_per_cell, a.gpus_per_cell, a.retries)
    elif a.address or a.cpus_per_cell or a.gpus_per_cell is not None:
        raise UsageError("--address, --cpus-per-cell and --gpus-per-cell go with --engine ray")
    command = "python -m harness " + " ".join(sys.argv[1:]) if sys.argv[0].endswith("__main__.py") else " ".join(sys.argv)
    result = sweep.run_sweep(a.runs, cells, a.jobs, progress=not a.quiet, command=command,
                             options=config.given_options(typed), ray=ray)
    print(sweep.summarize(result, len(cells)))
    return 1 if result.failed else 0


def cmd_tables(a) -> int:
    from harness.rundir import check_folder
    from harness.tables import write_tables
    check_folder(a.out, "--out")
    info = write_tables(a.runs, a.out, figures=not a.no_figures)
    print(f"{info['runs']} finished run(s) from {a.runs} -> {a.out}: {len(info['files'])} file(s) "
          f"(tables: {', '.join(f for f in info['files'] if f.endswith('.md'))})")
    if info["unfinished"]:
        print(f"{len(info['unfinished'])} unfinished run(s) left out (rerun their sweep to finish them)")
    return 0


def cmd_general(a) -> int:
    from tqdm.auto import tqdm

    from harness import general
    from harness.models import check_device, check_model
    from harness.rundir import RunDir
    names = tuple(general.GENERAL_TASKS if a.tasks is None else [n.strip() for n in a.tasks.split(",") if n.strip()])
    if not names:
        raise UsageError("--tasks is empty")
    import tasks as task_registry
    for n in names:
        task_registry.get_task(n)
    per_task = general.DEFAULT_PER_TASK if a.per_task is None else a.per_task
    if per_task <= 0:
        raise UsageError(f"--per-task must be positive, got {per_task}")
    for path in a.paths:
        if RunDir(path).status() is None:
            what = "no such folder" if not os.path.exists(path) else "a file" if not os.path.isdir(path) \
                else "no status.json"
            raise UsageError(f"{path} is not a run directory ({what})")
    paths = a.paths or sorted(root for root, _, files in os.walk(a.runs) if "status.json" in files)
    if not paths:
        raise UsageError(f"no run directories under {a.runs}")
    # a general.json of other tasks or sizes does not count as done (as for the probes)
    todo = [p for p in paths if RunDir(p).is_finished() and (a.redo or not general.measured_as(p, names, per_task))]
    weightless = [p for p in todo if not RunDir(p).has_checkpoint()]
    if weightless:
        print(f"{len(weightless)} run(s) have no checkpoint (records kept without weights) and are skipped; rerun "
              f"them with --overwrite to measure them: {', '.join(weightless)}", file=sys.stderr)
        todo = [p for p in todo if p not in weightless]
    for path in todo:   # a damaged record, a model or device not on this machine: now, not after a model loads
        run_config = general.run_config(path)
        try:
            check_model(run_config["model"], run_config.get("allow_download", False))
        except UsageError as e:
            raise UsageError(f"{path} (its config.json): {e}") from None
        if a.device is None:
            try:
                check_device(run_config.get("device", "cpu"))
            except UsageError as e:
                raise UsageError(f"{path} (its config.json): {e}; measure it on another device with --device") from None
    if a.device is not None:
        check_device(a.device)
    cache: dict = {}
    for path in tqdm(todo, desc="general ability", unit="run"):
        r = general.run_general(path, names, per_task, cache, device=a.device)
        ci = r["change_ci"]
        tqdm.write(f"{path}: balanced accuracy before {r['before']:.2f} after {r['after']:.2f} change "
                   f"{r['change']:+.2f}" + (f" [{ci[0]:+.2f}, {ci[1]:+.2f}]" if ci else ""))
    print(f"general ability measured on {len(todo)} run(s); {len(paths) - len(todo)} skipped (unfinished or done)")
    return 0


def cmd_compare(a) -> int:
    from harness import compare
    result = compare.compare(a.a, a.b, a.pair_by)
    print(json.dumps(result) if a.json else compare.markdown(result), end="\n" if a.json else "")
    return 0


def cmd_list(a) -> int:
    import tasks
    from methods import broken_modules, discover
    print("Methods (what each keeps and whether it uses the task id, under its default settings; "
          "mid-task: a killed run resumes inside a task, --checkpoint-minutes):")
    for name, cls in discover().items():
        defaults = cls.resolve_settings({})
        tid = "uses task id at test" if cls.uses_task_id_at_test(defaults) else "no task id at test"
        mid = "; resumes mid-task" if cls.RESUMES_MID_TASK else ""
        print(f"  {name:<12} {cls.DESCRIPTION} [{tid}{mid}]\n  {'':<12} keeps: {cls.keeps(defaults)}")
    for where, error in broken_modules().items():
        print(f"  {where} could not be imported: {error}")
    print("\nTasks:")
    for name, task in tasks.all_tasks(os.environ.get("CL_DATA_DIR")).items():
        labels = ", ".join(task.labels) if task.labels else "labels from labels.json"
        print(f"  {name:<13} {task.family:<10} {task.source}\n  {'':<13} labels: {labels}")
    print("\nOrders:")
    for name, order in tasks.ORDERS.items():
        print(f"  {name:<13} {' -> '.join(order)}")
    return 0


def cmd_metrics(a) -> int:
    from harness import metrics
    from harness.rundir import RunDir
    path = os.path.join(a.path, "matrix.csv") if os.path.isdir(a.path) else a.path
    if not os.path.isfile(path):
        unfinished = os.path.isdir(a.path) and RunDir(a.path).status() is not None
        raise UsageError(f"{a.path} holds an unfinished run: no matrix.csv yet" if unfinished
                         else f"no matrix.csv at {a.path}")
    R = metrics.read_matrix(path)
    values = metrics.compute(R)
    intervals, split = _run_intervals(os.path.dirname(path), R)
    if a.json:
        print(json.dumps({**values, **{f"{k}_ci": v for k, v in intervals.items()}}))
    else:
        print(metrics.format_metrics(values, intervals, split))
    return 0


def _run_intervals(folder: str, R) -> tuple[dict, str]:
    """95% intervals over the evaluated examples (printed in brackets), where the run beside the matrix kept its
    predictions, else None each; and the split they were drawn from (the run's --eval-split; test without a
    config)."""
    from harness import stats
    from harness.metrics import METRICS
    from harness.rundir import RunDir
    run = RunDir(folder)
    status = run.status() if os.path.isfile(run.file("config.json")) else None
    config = run.read_json("config.json") if status else {}
    scores = status and stats.example_scores(config, status, R, folder)
    return (stats.run_intervals(scores) if scores else {name: None for name in METRICS},
            config.get("eval_split", "test"))


def main(argv: list[str] | None = None) -> int:
    try:
        a = build_parser().parse_args(argv)
    except SystemExit as e:  # --help, or argparse's own one-line error (status 2)
        return int(e.code or 0)
    try:
        return {"bench": cmd_bench, "sweep": cmd_sweep, "tables": cmd_tables, "general": cmd_general,
                "compare": cmd_compare, "list": cmd_list, "metrics": cmd_metrics, "data": data_cmd.cmd_data}[a.command](a)
    except UsageError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except BrokenPipeError:  # `... | head`
        return 0
    except KeyboardInterrupt:
        print("interrupted: the run directory keeps every finished task; rerun the same command to resume",
              file=sys.stderr)
        return 130
