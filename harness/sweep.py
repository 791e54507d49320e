"""A grid of runs (methods x orders x seeds) into one folder, one run directory per cell.

Each cell runs `python -m harness bench` in its own process (a crash or a leak stays in its cell), so a
sweep is just many resumable runs: a finished cell is skipped, an unfinished one resumes after its last
finished task, and a killed sweep restarted with the same command only does what is missing. The cells run
here (`--jobs` side by side), as Ray tasks (harness/ray_engine.py), or anywhere as the shell lines
`--print-commands` prints: one list of cells and one command per cell for all three."""
from __future__ import annotations

import dataclasses
import difflib
import glob
import json
import os
import shlex
import signal
import statistics
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

from tqdm.auto import tqdm

from core.errors import UsageError
from harness import config, probes
from harness.config import BenchConfig
from harness.rundir import RunDir


@dataclass(frozen=True)
class MethodSpec:
    """A method plus fixed settings, written `craft` or `craft:routing=single:merge=false` on the command line."""
    name: str
    args: tuple[tuple[str, str], ...] = ()

    @classmethod
    def parse(cls, text: str) -> "MethodSpec":
        name, *pairs = [p.strip() for p in text.strip().split(":")]
        args = []
        for pair in pairs:
            key, sep, value = pair.partition("=")
            if not sep or not key:
                raise UsageError(f"method spec {text!r}: expected name:key=value[:key=value], got {pair!r}")
            args.append((key, value))
        return cls(name, tuple(args))

    @property
    def label(self) -> str:
        """Folder-safe name: `craft+routing=single+merge=false`."""
        return "+".join([self.name] + [f"{k}={v}" for k, v in self.args])

    @classmethod
    def from_label(cls, label: str) -> "MethodSpec | None":
        """The spec a folder's `label` names; None for a folder name no label has."""
        name, *pairs = label.split("+")
        if not name or not all("=" in p for p in pairs):
            return None
        return cls(name, tuple(tuple(p.split("=", 1)) for p in pairs))


@dataclass
class Cell:
    method: MethodSpec
    config: BenchConfig   # the whole run, as `bench` will make it
    settings: dict = field(default_factory=dict)   # the method's resolved settings, as config.json stores them

    @property
    def out(self) -> str:
        return self.config.out

    def command(self) -> list[str]:
        return [sys.executable, "-m", "harness", "bench", *config.to_argv(self.config)]


@dataclass
class SweepResult:
    skipped: list[Cell] = field(default_factory=list)
    finished: list[Cell] = field(default_factory=list)
    failed: list[tuple[Cell, str]] = field(default_factory=list)


MAX_SEED = 2**32 - 1   # numpy's range; the runner seeds each stage with seed * 1000 + k, well inside torch's


def check_seed(seed: int, flag: str = "--seed") -> int:
    if not 0 <= seed <= MAX_SEED:
        raise UsageError(f"{flag} must be between 0 and {MAX_SEED}, got {seed}")
    return seed


def split_list(raw: str, what: str) -> list[str]:
    items = [x.strip() for x in raw.split(",") if x.strip()]
    if not items:
        raise UsageError(f"--{what} is empty")
    return items


def split_methods(raw: str) -> list[str]:
    """`--methods`: method specs split at commas, where a comma-separated setting value stays whole: a piece that
    does not start with a method's name continues the spec before it when that spec ends in a value, so
    `craft:layers=3,7,11,seq_lora` is two specs (`craft:layers=3,7,11` and `seq_lora`). A piece close to a
    method's name is refused with "did you mean" rather than read as a value (a mistyped method would otherwise
    vanish into the spec before it, its settings with it)."""
    from methods import discover
    names = sorted(discover())
    specs: list[str] = []
    for piece in split_list(raw, "methods"):
        head = piece.split(":", 1)[0]
        if specs and head not in names and "=" in specs[-1].rsplit(":", 1)[-1]:
            close = difflib.get_close_matches(head, names, n=1, cutoff=0.75)
            if close:
                raise UsageError(f"--methods: {head!r} is not a method (did you mean {close[0]!r}?); a setting's "
                                 "list value would be read on, so a typo there is refused")
            specs[-1] += "," + piece
        else:
            specs.append(piece)
    return specs


def plan(runs: str, methods: list[str], orders: list[str], seeds: list[str],
         shared: BenchConfig | None = None) -> list[Cell]:
    """Cells in the order they run: seed-major, so a sweep cut short still covers every method and order.
    `shared` holds the run options every cell takes (sizes, model, data); the cell sets the rest."""
    import tasks

    def resolved(spec: MethodSpec) -> dict:   # a typo fails now, not an hour into the sweep
        return config.resolved_settings(spec.name, dict(spec.args))

    specs = [same_as_existing(runs, MethodSpec.parse(m), resolved) for m in methods]
    settings = {spec: resolved(spec) for spec in specs}
    for order in orders:
        tasks.get_order(order)
    try:
        seed_values = [check_seed(int(s), "--seeds") for s in seeds]
    except ValueError:
        raise UsageError(f"--seeds must be whole numbers, got {','.join(seeds)}") from None
    shared = shared or BenchConfig()
    # The untouched backbone is scored once per task and setup, for all the sweep's runs.
    base_cache = os.path.join(runs, "base-cache.json")
    cells = [Cell(spec, dataclasses.replace(shared, method=spec.name, order=order, seed=seed,
                                            method_args=dict(spec.args), progress=False, base_cache=base_cache,
                                            out=os.path.join(runs, spec.label, order, f"seed{seed}")),
                  settings[spec])
             for seed in seed_values for order in orders for spec in specs]
    # two cells in one folder would run (with --jobs 2: side by side) into the same run directory
    twice = sorted({c.out for c in cells if sum(d.out == c.out for d in cells) > 1})
    if twice:
        raise UsageError(f"the grid names {twice[0]} more than once (a method, order or seed given twice)")
    return cells


def same_as_existing(runs: str, spec: MethodSpec, resolved) -> MethodSpec:
    """The spelling of `spec` whose folder `runs` already holds, where one spells the same settings another way
    (`lr=3e-4` for a folder `seq_lora+lr=0.0003`): its runs go there, not into a second folder of the same
    configuration that would run it again and show it twice in the tables."""
    if not spec.args or not os.path.isdir(runs):
        return spec
    mine = resolved(spec)
    for label in sorted(os.listdir(runs)):
        other = MethodSpec.from_label(label)
        if other is None or other == spec or other.name != spec.name \
                or dict(other.args).keys() != dict(spec.args).keys():
            continue
        try:
            same = resolved(other) == mine
        except UsageError:   # a folder of settings the method no longer has
            continue
        if same:
            print(f"sweep: {spec.name}:{':'.join(f'{k}={v}' for k, v in spec.args)} has the settings of {label}/; "
                  "its runs go there", file=sys.stderr)
            return other
    return spec


def setup_differs(cell: Cell, recorded: dict) -> list[str]:
    """The setup fields (sizes, model, split, evaluation...) in which a run directory's record differs from what
    this cell would make (its method, order and seed are the folder's path; its settings, cell_state's)."""
    return [name for name in config.names(config.SETUP)
            if config.recorded_value(recorded, name) != getattr(cell.config, name)]


def cell_state(cell: Cell) -> str:
    """'finished', 'partial' (resumable), 'new', 'stale': made with other settings than the method's
    current ones (a default changed since), which neither counts as done nor may be resumed, 'other setup': made
    under another setup than the sweep's (other sizes, split, model...), likewise, 'corrupt': a status.json no run
    can be resumed from, or 'probes': finished but for a probe of `--probes` (its weights here)."""
    try:
        status = RunDir(cell.out).status()
    except UsageError:
        return "corrupt"
    if status is None:
        return "new"
    try:
        with open(os.path.join(cell.out, "config.json")) as f:
            recorded = json.load(f)
    except (OSError, ValueError):
        recorded = None
    if isinstance(recorded, dict):
        if cell.settings and config.recorded_value(recorded, "settings") != cell.settings:
            return "stale"
        if setup_differs(cell, recorded):   # else a finished run of another setup would be skipped as done
            return "other setup"
    if status.get("state") != "finished":
        return "partial"
    # a finished run that lacks a probe asked for and still has its weights: only the probe is left to run
    lacking = probes.missing(cell.out, cell.config.probes)
    return "probes" if lacking and RunDir(cell.out).has_checkpoint() else "finished"


ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def other_test_data(cell: Cell) -> list[str]:
    """The tasks whose test examples differ between an unfinished cell's record and the data this sweep would give
    it (another --data-dir): the check the cell's resume makes, made before any cell runs."""
    from harness.rundir import other_test_examples
    from harness.runner import data_record, load_order_data   # here: the sweep's start needs no model stack
    try:
        recorded = RunDir(cell.out).read_json("config.json")
    except UsageError:
        return []   # no record to compare: the resume says what is wrong with it
    try:
        data = load_order_data(cell.config)
    except UsageError:
        return []   # data that cannot be loaded fails the cell on its turn, as it fails the order's other cells
    return other_test_examples(recorded.get("data"), data_record(data))


def check_cells(runs: str, cells: list[Cell]) -> None:
    """Refuse a grid with run directories no cell may skip or resume (before anything runs or is printed)."""
    states = {c.out: cell_state(c) for c in cells}   # each reads the run's status and config: once
    stale = [c.out for c in cells if states[c.out] == "stale"]
    if stale:
        raise UsageError(f"{len(stale)} run director{'y was' if len(stale) == 1 else 'ies were'} made with other "
                         "settings than the methods' current ones (a default changed?); move them out of "
                         f"{runs} or sweep into another --runs: " + ", ".join(stale))
    other = [c for c in cells if states[c.out] == "other setup"]
    if other:
        differ = sorted({name for c in other for name in setup_differs(c, RunDir(c.out).read_json("config.json"))})
        raise UsageError(f"{len(other)} run director{'y was' if len(other) == 1 else 'ies were'} made under another "
                         f"setup than this sweep's ({', '.join(differ)}); sweep with the options they ran with "
                         f"(their config.json's `command`), or into another --runs: " + ", ".join(c.out for c in other))
    elsewhere = {c.out: found for c in cells if states[c.out] == "partial" and (found := other_test_data(c))}
    if elsewhere:
        tasks_named = sorted({task for found in elsewhere.values() for task in found})
        raise UsageError(f"{len(elsewhere)} unfinished run director{'y was' if len(elsewhere) == 1 else 'ies were'} "
                         f"made on other test data than this sweep's ({', '.join(tasks_named)}: another --data-dir?); "
                         f"sweep with the data they were made with, or move them out of {runs}: "
                         + ", ".join(elsewhere))
    corrupt = [c.out for c in cells if states[c.out] == "corrupt"]
    if corrupt:
        raise UsageError(f"{len(corrupt)} run director{'y has' if len(corrupt) == 1 else 'ies have'} a corrupt "
                         "status.json; remove them to run them again: " + ", ".join(corrupt))


def cell_env(threads: int | None) -> dict[str, str]:
    """The variables a cell's command runs with on top of the caller's environment: the project on the path,
    and its thread count when cells share a machine (unless the user set CL_THREADS)."""
    env = {"PYTHONPATH": ROOT}
    if threads is not None and "CL_THREADS" not in os.environ:
        env["CL_THREADS"] = str(threads)
    return env


# Set by the local engine for its cells: the sweep's pid, which a cell ties its life to (die_with_sweep).
SWEEP_PID_ENV = "CL_SWEEP_PID"


def die_with_sweep() -> None:
    """In a cell the local engine started (Linux): die with the sweep. Cells run in their own session (a Ctrl-C
    reaches the sweep, which stops them in order), so a sweep killed outright, as a session's end does, would
    leave its cell training beside the next sweep's attempt at it. Set here in the cell, not by a preexec_fn,
    which is unsafe in the sweep's threads; the variable is dropped so nothing the cell starts inherits it."""
    parent = os.environ.pop(SWEEP_PID_ENV, None)
    if not parent or not sys.platform.startswith("linux"):
        return
    import ctypes
    PR_SET_PDEATHSIG = 1
    if ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL) != 0:
        print(f"warning: this cell cannot be tied to its sweep (prctl: {os.strerror(ctypes.get_errno())}); if the "
              "sweep is killed outright, stop this process by hand", file=sys.stderr)
    if os.getppid() != int(parent):   # the sweep was gone before the line above took effect
        print(f"its sweep (pid {parent}) ended before this cell started: not running it", file=sys.stderr)
        os._exit(1)


def local_threads(jobs: int) -> int | None:
    # Jobs side by side share the cores: one thread each unless the user says otherwise (oversubscribed
    # OpenMP threads spin against each other and slow every job 2-4x on the 2-core machines).
    return max(1, (os.cpu_count() or 1) // jobs) if jobs > 1 else None


def shell_command(cell: Cell, env: dict[str, str]) -> str:
    """The cell's command as one shell line, its variables first: what `--print-commands` prints and what
    every engine writes at the top of the cell's log before running it."""
    return " ".join([f"{k}={shlex.quote(v)}" for k, v in env.items()] + [shlex.join(cell.command())])


def log_path(runs: str, cell: Cell) -> str:
    return os.path.join(runs, "logs", f"{cell.method.label}-{cell.config.order}-seed{cell.config.seed}.log")


def pending(cells: list[Cell]) -> list[Cell]:
    return [c for c in cells if cell_state(c) != "finished"]


def listed_earlier(path: str) -> set[str]:
    """The run folders an earlier step of the same plan listed (`--earlier-cells`: a grid whose stages name a cell
    twice, as make grid's do, costs and prints it once); none where the file is not there yet."""
    if not os.path.exists(path):
        return set()
    with open(path, encoding="utf-8") as f:
        return {line.rstrip("\n") for line in f if line.strip()}


def add_listed(path: str, cells: list[Cell]) -> None:
    with open(path, "a", encoding="utf-8") as f:
        f.writelines(os.path.abspath(c.out) + "\n" for c in cells)


def probes_lost(cells: list[Cell]) -> list[Cell]:
    """Finished cells that lack a probe asked for and whose weights are not here (a session ended between the run
    and its probes, or the run was made elsewhere): nothing here can measure them."""
    return [c for c in cells
            if c.config.probes and cell_state(c) == "finished" and probes.missing(c.out, c.config.probes)]


def probes_lost_note(lost: list[Cell]) -> str:
    shown = ", ".join(c.out for c in lost[:10]) + (f" and {len(lost) - 10} more" if len(lost) > 10 else "")
    return (f"{len(lost)} finished run(s) lack a probe asked for and have no weights here, so no sweep can measure "
            "them; their own command with --overwrite (the first line of the cell's log, or config.json's `command`) "
            f"trains them again, the same way, with their probes: {shown}")


# The setup fields that decide what a run costs: a record made with other sizes, model or protocol says nothing
# about this grid's cells (the split does not change the cost).
COST_SETUP = tuple(n for n in config.names(config.SETUP) if n not in ("eval_split", "truncate"))


def distinct_folders(folders: list[str]) -> list[str]:
    """The folders in their order, each once: one named under two spellings (runs/, a link, an absolute path)
    would count its runs twice."""
    kept, seen = [], set()
    for folder in folders:
        if os.path.realpath(folder) not in seen:
            seen.add(os.path.realpath(folder))
            kept.append(folder)
    return kept


@dataclass
class CostModel:
    """What finished runs in a sweep's folder took, per method spec (its folder label): the median training
    seconds per task (a joint stage's time shared by its tasks) and the median evaluation seconds per cell it
    scored (per trained row for a method whose earlier cells keep their scores: per_row). Wall times, so they
    include whatever else the machine ran then (less the spans a run lay stopped: RunDir.timing); medians damp
    that, but not where a label has one run (the dry run names those). Not modelled: a task's label count (rank
    scoring of a 14-label task costs more per cell than a 2-label one's). A run made before one of its settings
    moved (a default tuned since) is not what its label runs today: it is left out, and a cell is costed by a
    label whose runs ran the cell's settings where its own has none (the grid's `craft` by a tuning folder's
    `craft+epochs=3+...` once that became the default)."""
    train: dict[str, dict[str, float]]   # label -> task -> median training seconds
    per_cell: dict[str, float]           # label -> median evaluation seconds per scored cell (0: never scores)
    base_per_cell: float | None          # the untouched backbone's row, seconds per scored cell
    runs: int                            # finished runs read
    skipped: int = 0                     # finished runs of another setup (sizes, model, protocol), left out
    moved: int = 0                       # finished runs made with settings that have moved since, left out
    elsewhere: int = 0                   # finished runs on another kind of device (a GPU's seconds are not a CPU's)
    ran_as: dict[str, str] = field(default_factory=dict)   # settings_key of what runs ran -> a label they are under
    # probe -> label -> median seconds a measured task of the probe on the label's runs, and over every label's (a
    # label none of whose runs recorded it costs that); a cell's probe costs it times the tasks it will measure
    probe: dict[str, dict[str, float]] = field(default_factory=dict)
    probe_any: dict[str, float] = field(default_factory=dict)
    # label -> median evaluation seconds per trained row: what a row costs a method that names its test-time model
    # (Method.evaluation_key: per_task's earlier cells keep their scores, so a row scores about one cell however
    # long the order), which is costed per row, not per needed cell
    per_row: dict[str, float] = field(default_factory=dict)
    # label -> task -> median optimizer steps (a joint stage's shared by its tasks, as its seconds are)
    steps: dict[str, dict[str, float]] = field(default_factory=dict)
    runs_of: dict[str, int] = field(default_factory=dict)   # label -> finished runs its medians are over

    @classmethod
    def read(cls, runs: str | list[str], like: BenchConfig | None = None) -> "CostModel":
        """`runs`: a folder of runs, or several, pooled (a method spec's medians over all their runs). `like`: read
        only runs made with this config's setup (COST_SETUP) on its kind of device (cpu, cuda)."""
        train: dict[str, dict[str, list[float]]] = {}
        per_cell: dict[str, list[float]] = {}
        base: list[float] = []
        probe: dict[str, dict[str, list[float]]] = {}
        per_row: dict[str, list[float]] = {}
        steps: dict[str, dict[str, list[float]]] = {}
        runs_of: dict[str, int] = {}
        count = skipped = moved = elsewhere = 0
        ran_as: dict[str, str] = {}
        folders = distinct_folders([runs] if isinstance(runs, str) else runs)
        paths = [path for folder in folders   # <label>/<order>/seed<n>
                 for path in sorted(glob.glob(os.path.join(glob.escape(folder), "*", "*", "seed*")))]
        for path in paths:
            label, run = os.path.basename(os.path.dirname(os.path.dirname(path))), RunDir(path)
            try:
                status = run.status()
                if not status or status.get("state") != "finished":
                    continue
                recorded = run.read_json("config.json")
                if like is not None and any(config.recorded_value(recorded, n) != getattr(like, n)
                                            for n in COST_SETUP):
                    skipped += 1
                    continue
                if like is not None and config.device_kind(config.recorded_value(recorded, "device")) != \
                        config.device_kind(like.device):
                    elsewhere += 1
                    continue
                if recorded.get("method") and config.moved_settings(recorded):
                    moved += 1
                    continue
                found = _stage_costs(run.timing()["per_stage"], status["rows"])   # less the stops seen
            except (UsageError, KeyError, TypeError, AttributeError, ValueError, ZeroDivisionError):
                continue   # a damaged record costs nothing: it is left out
            count += 1
            runs_of[label] = runs_of.get(label, 0) + 1
            ran = config.recorded_value(recorded, "settings")
            if recorded.get("method") and isinstance(ran, dict):
                ran_as.setdefault(settings_key(recorded["method"], ran), label)
            for task, seconds in found["train"]:
                train.setdefault(label, {}).setdefault(task, []).append(seconds)
            per_cell.setdefault(label, []).extend(found["per_cell"])
            per_row.setdefault(label, []).extend(found["per_row"])
            for task, n in found["steps"]:
                steps.setdefault(label, {}).setdefault(task, []).append(n)
            base.extend(found["base"])
            for name in probes.NAMES:
                seconds = probes.recorded_seconds_per_task(path, name)
                if seconds is not None:
                    probe.setdefault(name, {}).setdefault(label, []).append(seconds)
        return cls({lab: {task: statistics.median(v) for task, v in tasks_.items()} for lab, tasks_ in train.items()},
                   {lab: statistics.median(v) if v else 0.0 for lab, v in per_cell.items()},
                   statistics.median(base) if base else None, count, skipped, moved, elsewhere, ran_as,
                   {name: {lab: statistics.median(v) for lab, v in by_label.items()}
                    for name, by_label in probe.items()},
                   {name: statistics.median([s for v in by_label.values() for s in v])
                    for name, by_label in probe.items()},
                   {lab: statistics.median(v) for lab, v in per_row.items() if v},
                   {lab: {task: statistics.median(v) for task, v in by_task.items()}
                    for lab, by_task in steps.items()}, runs_of)

    def costed_as(self, cell: Cell) -> str | None:
        """The label whose runs cost the cell: its own, else one whose runs ran the cell's settings, else its
        method's defaults' (a variant such as craft:warmup=5 before any run of it finished: the folder of the
        method's name, or one whose runs ran its defaults), else None."""
        name = cell.method.name
        for label in (cell.method.label, self.ran_by(name, cell.settings), name):
            if label in self.per_cell:
                return label
        defaults = self.ran_by(name, config.resolved_settings(name, {}))   # resolved only when the rest failed
        return defaults if defaults in self.per_cell else None

    def share_left(self, label: str, stage: list[str], index: int, saved: tuple[int, int] | None) -> float:
        """What is left of stage `index`'s training (its tasks `stage`: one, or every task of a joint one) when a
        mid-task save at (index, step) will resume it: the share of its steps not yet taken, its steps being the
        label's median steps of each of its tasks (of its median task, for a task it never trained) summed."""
        if saved is None or saved[0] != index:
            return 1.0
        by_task = self.steps.get(label, {})
        if not by_task:
            return 1.0
        typical = statistics.median(by_task.values())
        total = sum(by_task.get(task, typical) for task in stage)
        return max(0.0, 1.0 - saved[1] / total) if total else 1.0

    def ran_by(self, method: str, settings: dict | None) -> str | None:
        """A label whose finished runs ran `method` with exactly these settings."""
        return self.ran_as.get(settings_key(method, settings)) if settings else None

    def seconds_left(self, cell: Cell, state: str | None = None) -> float | None:
        """The cell's remaining seconds at these medians, its base row left out (see dry_run_lines); None: no
        finished run of its method spec here. A stage a mid-task save will resume costs the share of its median
        steps left (share_left). A task the spec has no record of costs the spec's median task; a
        method whose cost grows along the stream (replay's memory) is underestimated on orders longer than
        those it ran. The probes it lacks cost their median on the spec's runs, else on every run's; a probe no
        run recorded costs nothing here (dry_run_lines says so)."""
        import tasks
        from harness.metrics import needed_cells
        from methods import get_method
        from methods.base import Method
        label = self.costed_as(cell)
        if label is None:
            return None
        trained = self.train.get(label, {})   # none: a method that trains nothing (zero_shot)
        names = tasks.get_order(cell.config.order)
        state = state or cell_state(cell)   # grid_costs has it already: one read of the cell's records
        status = {} if state in STARTS_OVER else RunDir(cell.out).status() or {}   # read once for both below
        done = _stages_kept(cell, state, status)
        saved = _saved_mid_task(cell, state, done, status)   # (stage index, step) a resume starts the next stage from
        typical = statistics.median(trained.values()) if trained else 0.0
        method = get_method(cell.method.name)
        joint = method.JOINT   # trains once on every task, then scores one row
        keyed = method.evaluation_key is not Method.evaluation_key   # earlier cells keep their scores (per_row)
        seconds, resumed = 0.0, bool(done - {"base"})
        for k, task in enumerate(names, start=1):
            if task in done or joint and "all" in done:
                continue
            cells = len(needed_cells(names, k)) if cell.config.matrix == "needed" and not joint else len(names)
            evaluation = self.per_row[label] if keyed and label in self.per_row else cells * self.per_cell[label]
            if keyed and label in self.per_row and resumed:   # a resumed run keeps no earlier row's scores: its
                evaluation += (k - 1) * self.per_cell[label]  # first row scores the earlier tasks' cells again
                resumed = False
            seconds += trained.get(task, typical) * self.share_left(label, names if joint else [task],
                                                                    0 if joint else k - 1, saved)
            seconds += 0 if joint and k < len(names) else evaluation
        # a cell that starts over measures every probe again, whatever the old run's folder keeps
        lacking = probes.names_of(cell.config.probes) if state in STARTS_OVER else \
            probes.missing(cell.out, cell.config.probes)
        for name in lacking:
            per_task = self.probe.get(name, {}).get(label, self.probe_any.get(name, 0.0))
            seconds += per_task * probes.tasks_measured(name, names)
        return seconds


def settings_key(method: str, settings: dict) -> str:
    """One string per method and settings, as a run records them (JSON), whatever their order."""
    return f"{method} {json.dumps(settings, sort_keys=True)}"


def _stage_costs(stages: dict, rows: dict) -> dict:
    """One finished run's costs: (task, training seconds) pairs, evaluation seconds per scored cell of its
    trained rows and of its base row, and per trained row. A row records the cells it scored (`scored`); one made
    before that field counts every cell it holds, less those the base-cache supplied."""
    tasks_here = list(rows["base"]["accuracy"])
    found = {"train": [], "per_cell": [], "base": [], "per_row": [], "steps": []}
    for stage, t in stages.items():
        seconds = t.get("train_seconds")
        if seconds is not None:   # a joint stage ('all') trains on every task at once
            share = [stage] if stage in tasks_here else tasks_here
            found["train"] += [(task, float(seconds) / len(share)) for task in share]
            if t.get("steps"):
                found["steps"] += [(task, float(t["steps"]) / len(share)) for task in share]
        row = rows.get(stage) or {}
        scored = row.get("scored", len(row.get("accuracy", {})) - len(row.get("reused") or []))
        if scored > 0:
            found["base" if stage == "base" else "per_cell"].append(float(t.get("eval_seconds") or 0.0) / scored)
        if stage != "base" and row.get("accuracy"):
            found["per_row"].append(float(t.get("eval_seconds") or 0.0))
    return found


STARTS_OVER = ("new", "stale", "other setup", "corrupt")   # cell states whose rerun keeps nothing of the folder


def _saved_mid_task(cell: Cell, state: str, kept: set[str], status: dict) -> tuple[int, int] | None:
    """(stage index, step) of the mid-task save a rerun of the cell resumes (RunDir.save_partial): the stage
    after those it keeps, its file present; None where there is none."""
    if state in STARTS_OVER:
        return None
    run = RunDir(cell.out)
    partial = status.get("partial") or {}
    index, step = partial.get("task_index"), partial.get("step")
    if not isinstance(index, int) or not isinstance(step, int) or index != len(kept - {"base"}) or \
            not os.path.isfile(run.file(partial.get("file", ""))):
        return None
    return index, step


def _stages_kept(cell: Cell, state: str, status: dict) -> set[str]:
    """The stages a rerun of the cell (in `state`) keeps: those its status records, unless the runner would redo
    them: a stale cell starts over, and a run whose checkpoint file is gone trains every stage again (its base row
    stays). `status`: the cell's status.json, as read."""
    if state in STARTS_OVER:
        return set()
    rows = set(status.get("rows", {}))
    if status.get("checkpoint") and not RunDir(cell.out).has_checkpoint():
        return rows & {"base"}
    return rows


def hours(seconds: float) -> str:
    return f"{seconds / 3600:.1f} h" if seconds >= 5400 else f"{seconds / 60:.0f} min"


def _base_scored(runs: str) -> set[tuple[str, str]]:
    """(task, setup) of each untouched-backbone score a folder's base-cache holds: its keys are task|test
    examples' fingerprint|setup (config.backbone_cache_key). Whether an entry's prompts are today's is not
    checked here (that needs the tokenizer): a stale one counts as scored, though its cell scores it again."""
    try:
        with open(os.path.join(runs, "base-cache.json")) as f:
            keys = list(json.load(f))
    except (OSError, ValueError, TypeError):
        return set()
    return {_task_and_setup(key) for key in keys}


def _task_and_setup(key: str) -> tuple[str, str]:
    """A base-cache key less its test examples' fingerprint: task|fingerprint|setup -> (task, setup)."""
    task, _, rest = key.partition("|")
    return task, rest.partition("|")[2]


def _scores_base(cell: Cell, state: str) -> bool:
    """Whether running the cell scores the backbone's row: not where its status keeps one (a resumed run; a
    finished one that lacks only a probe)."""
    status = {} if state in STARTS_OVER else RunDir(cell.out).status() or {}
    return "base" not in _stages_kept(cell, state, status)


def _base_setup(cfg: BenchConfig, task: str) -> tuple[str, str]:
    """A cell's base-cache entry for a task, as _base_scored reads keys (the fingerprint left out)."""
    return _task_and_setup(config.backbone_cache_key(cfg, task, ""))


def grid_costs(runs: str, cells: list[Cell], costs_from: list[str] | None = None):
    """(the cost model, [(cell, state, seconds left or None)]) at the medians of the runs this folder (or the
    folders `costs_from` names, pooled) has finished with the grid's setup. The base row is charged once per task
    and setup the folder's base-cache lacks, to the first cell left that will score it (the sweep's runs share
    it)."""
    import tasks
    model = CostModel.read(costs_from or runs, cells[0].config if cells else None)
    if costs_from and not model.runs:
        raise UsageError(f"--costs-from {','.join(costs_from)}: no finished run with this grid's setup there (a "
                         "sweep's --runs folder holds <method>/<order>/seed<n>/ run directories)")
    base_left = set() if model.base_per_cell is None else \
        {_base_setup(c.config, t) for c in cells for t in tasks.get_order(c.config.order)} - _base_scored(runs)
    costs = []
    for cell in cells:
        state = cell_state(cell)
        seconds = None if state == "finished" else model.seconds_left(cell, state)
        if seconds is not None and _scores_base(cell, state):
            mine = {_base_setup(cell.config, t) for t in tasks.get_order(cell.config.order)} & base_left
            base_left -= mine
            seconds += len(mine) * model.base_per_cell if mine else 0.0
        costs.append((cell, state, seconds))
    return model, costs


def dry_run_lines(runs: str, cells: list[Cell], costs_from: list[str] | None = None) -> list[str]:
    """`sweep --dry-run`: each cell's state and the cost of each cell left (grid_costs); the last line sums what
    is left, one cell after another."""
    import tasks
    model, costs = grid_costs(runs, cells, costs_from)
    source = " and ".join(distinct_folders(costs_from) if costs_from else [runs])
    # an unfinished cell on other test data is refused when the sweep runs (check_cells): named so here too
    lines = [f"{'other data' if state == 'partial' and other_test_data(cell) else state:>8}  {cell.out}"
             + (f"  ~{hours(seconds)}" if seconds is not None else "") for cell, state, seconds in costs]
    left = [(cell, seconds) for cell, state, seconds in costs if state != "finished"]
    estimated = [seconds for _, seconds in left if seconds is not None]
    unknown = sorted({cell.method.label for cell, seconds in left if seconds is None})
    summary = f"left: {len(left)} of {len(cells)} run(s)"
    if estimated:
        summary += (f", about {hours(sum(estimated))} one after another, at the medians of the {model.runs} finished "
                    f"run(s) in {source} (wall times: they include whatever else ran on the machine)")
    if model.skipped:
        summary += f"; {model.skipped} finished run(s) there with another setup left out"
    if model.elsewhere:
        summary += f"; {model.elsewhere} finished run(s) there on another kind of device left out"
    if model.moved:
        summary += (f"; {model.moved} finished run(s) there made before a setting of theirs moved left out (not what "
                    "their label runs today)")
    if unknown:
        summary += f"; not estimated (no finished run in {source}): {', '.join(unknown)}"
    asked = {name for cell, _ in left for name in probes.names_of(cell.config.probes)}
    untimed = sorted(asked - set(model.probe_any))
    if asked - set(untimed):
        summary += (f"; the probe(s) {', '.join(sorted(asked - set(untimed)))} at their median time a task on each "
                    "method's runs (else on every run's)")
    if untimed:
        summary += (f"; the time of the probe(s) {', '.join(untimed)} (--probes) is not in these costs: no finished "
                    "run there recorded it")
    lost = probes_lost(cells)
    if lost:
        summary += "; " + probes_lost_note(lost)
    costed = {cell.out: model.costed_as(cell) for cell, seconds in left if seconds is not None}
    stand_ins = {(cell.method.label, other, other == model.ran_by(cell.method.name, cell.settings))
                 for cell, seconds in left if seconds is not None
                 for other in (costed[cell.out],) if other != cell.method.label}
    same = sorted(f"{mine} as {other}" for mine, other, ran_same in stand_ins if ran_same)
    defaults = sorted(f"{mine} as {other}" for mine, other, ran_same in stand_ins if not ran_same)
    if same:
        summary += f"; costed by a folder whose runs ran the same settings: {', '.join(same)}"
    if defaults:   # a variant's settings may cost more or less than its defaults (more layers, a longer epoch)
        summary += f"; costed at its method's defaults, as no current run of it finished: {', '.join(defaults)}"
    # one run's wall times are no median: a busy machine then (contention is wall time) moves every cell costed by it
    single = sorted({costed[cell.out] for cell, seconds in left
                     if seconds and model.runs_of.get(costed[cell.out]) == 1})
    if single:
        summary += f"; costed by one finished run alone, whatever else the machine ran then: {', '.join(single)}"
    guessed: dict[str, set[str]] = {}   # method label -> its tasks no run of it trained
    for cell, seconds in left:
        trained = model.train.get(costed.get(cell.out) or cell.method.label)
        if seconds is not None and trained:
            guessed.setdefault(cell.method.label, set()).update(
                t for t in tasks.get_order(cell.config.order) if t not in trained)
    guessed = {label: names for label, names in guessed.items() if names}
    if guessed:   # e.g. dbpedia's 14 labels costed at a 2-label task's median: say so, the estimate is weak there
        summary += ("; costed at the method's median task, as no run of that method there trained them (label "
                    "counts and prompt lengths are not modelled): " + "; ".join(
                        f"{label}: {', '.join(sorted(names))}" for label, names in guessed.items()))
    return lines + [summary]


class Report:
    """The progress bar and one line per cell, the same for every engine."""

    def __init__(self, result: SweepResult, total: int, progress: bool):
        self.result = result
        self.lock = threading.Lock()
        self.stopping = threading.Event()
        self.bar = tqdm(total=total, initial=len(result.skipped), desc="sweep", unit="run", disable=not progress,
                        dynamic_ncols=True)
        if result.skipped:
            tqdm.write(f"{len(result.skipped)} of {total} run(s) already finished: skipped", file=sys.stderr)

    def done(self, cell: Cell, before: str, code: int | None, log: str, why: str = "", note: str = "") -> None:
        """`before`: the cell's state when it was started; `code`: the command's exit status (None: it never
        returned one, `why` says what happened); `note`: anything else worth a word (a retry)."""
        with self.lock:
            if code == 0 and cell_state(cell) == "finished":
                self.result.finished.append(cell)
                verb = {"partial": "resumed and finished", "probes": "probes measured"}.get(before, "finished")
            else:
                self.result.failed.append((cell, log))
                verb = f"FAILED ({why or f'exit {code}'}; see {log})"
            if not self.stopping.is_set():
                tqdm.write(f"{cell.out}: {verb}{note}", file=sys.stderr)
            self.bar.update(1)

    def close(self) -> None:
        self.bar.close()


@dataclass
class RayOptions:
    """How `--engine ray` places cells; see harness/ray_engine.py."""
    address: str | None   # None: start a local instance
    cpus_per_cell: int | None   # None: 2 (the fastest thread count measured here), or a node's all if fewer
    gpus_per_cell: float | None   # None: 1 when the run's device is cuda, else 0
    retries: int   # Ray's max_retries: starts of a cell whose worker died


def run_sweep(runs: str, cells: list[Cell], jobs: int = 1, progress: bool = True, command: str = "",
              options: dict | None = None, ray: RayOptions | None = None) -> SweepResult:
    """Run the cells not finished yet, here (`jobs` side by side) or as Ray tasks (`ray` given). `options`: the
    run options as the user gave them (only those that differ from the defaults), recorded so
    results/README.md can print the command that remakes the runs."""
    check_cells(runs, cells)
    os.makedirs(os.path.join(runs, "logs"), exist_ok=True)
    # Every sweep command that touched this folder, so results/README.md can say how to regenerate it.
    with open(os.path.join(runs, "sweeps.jsonl"), "a") as f:
        f.write(json.dumps({"command": command, "started": time.strftime("%Y-%m-%dT%H:%M:%S"), "jobs": jobs,
                            "engine": "ray" if ray else "local", "cells": len(cells),
                            "options": options or {}}) + "\n")
    result = SweepResult()
    lost = probes_lost(cells)
    if lost:
        tqdm.write(probes_lost_note(lost), file=sys.stderr)
    todo = pending(cells)
    result.skipped = [c for c in cells if c not in todo]
    report = Report(result, len(cells), progress)
    # Each run has its own session (a Ctrl-C in the terminal must not hit them mid-write), so the sweep
    # passes a stop on. SIGTERM too: a sweep started in the background by a non-interactive shell has
    # SIGINT ignored, and `kill` is how it gets stopped.
    received = [signal.SIGINT]

    def on_term(signum, frame):
        received[0] = signum
        raise KeyboardInterrupt

    in_main = threading.current_thread() is threading.main_thread()
    previous = signal.signal(signal.SIGTERM, on_term) if in_main else None
    try:
        if ray is not None:
            from harness import ray_engine
            ray_engine.run_cells(runs, todo, report, ray)
        else:
            _run_here(runs, todo, jobs, report, received)
    finally:
        if in_main:
            signal.signal(signal.SIGTERM, previous)
        report.close()
    return result


def _run_here(runs: str, todo: list[Cell], jobs: int, report: Report, received: list) -> None:
    env = dict(os.environ)
    extra = cell_env(local_threads(jobs))
    env.update(extra, **{SWEEP_PID_ENV: str(os.getpid())})
    if os.environ.get("PYTHONPATH"):
        env["PYTHONPATH"] += os.pathsep + os.environ["PYTHONPATH"]
    children: set[subprocess.Popen] = set()

    def one(cell: Cell) -> None:
        if report.stopping.is_set():
            return
        before = cell_state(cell)
        log_file = log_path(runs, cell)
        with open(log_file, "a") as log:
            log.write(f"$ {shell_command(cell, extra)}\n")
            log.flush()
            proc = subprocess.Popen(cell.command(), stdout=log, stderr=subprocess.STDOUT, env=env,
                                    start_new_session=True)
            with report.lock:
                children.add(proc)
            code = proc.wait()
            with report.lock:
                children.discard(proc)
        report.done(cell, before, code, log_file)

    pool = ThreadPoolExecutor(max_workers=max(1, jobs))
    try:
        for future in [pool.submit(one, c) for c in todo]:
            future.result()
    except KeyboardInterrupt:
        report.stopping.set()
        with report.lock:
            for proc in children:
                os.killpg(proc.pid, received[0])
        pool.shutdown(wait=True, cancel_futures=True)
        raise
    pool.shutdown(wait=True)


def summarize(result: SweepResult, total: int) -> str:
    lines = [f"sweep: {len(result.finished)} run(s) done now, {len(result.skipped)} skipped (already finished), "
             f"{len(result.failed)} failed, of {total}"]
    for cell, log in result.failed:
        lines.append(f"  failed: {cell.out} (log: {log})")
    return "\n".join(lines)


def sweep_commands(runs: str) -> list[dict]:
    try:
        with open(os.path.join(runs, "sweeps.jsonl")) as f:
            return [json.loads(line) for line in f if line.strip()]
    except FileNotFoundError:
        return []
