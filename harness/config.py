"""A run's setup, in one place. Every field of `BenchConfig` carries its command-line help and its role, and
everything else is derived from them: the options of `bench` and `sweep`, the resume check, the backbone
score cache's key, the command line a sweep gives each cell, and the setup a table's runs must share.
Adding an option is one field here.

Roles:
- identity: which run this is (method, order, seed, method settings). A resumed run must match.
- setup: what the numbers depend on besides the run's identity (sizes, model, evaluation). A resumed run
  must match; every run of one table shares it; it keys the untouched backbone's cached scores.
- environment: where and how it ran (paths, device). Recorded in config.json, compared with nothing.
- volatile: how this one invocation behaves (progress bars, overwrite). Not recorded."""
from __future__ import annotations

import argparse
import dataclasses
import json
import os
from dataclasses import dataclass, field

from core.errors import UsageError
from harness import probes
from harness.evaluation import EVAL_MODES
from harness.models import DEFAULT_MODEL, DTYPES
from harness.prompting import DEFAULT_MAX_INPUT_TOKENS, TRUNCATIONS
from tasks import DEFAULT_ORDER, EVAL_SPLITS

IDENTITY, SETUP, ENVIRONMENT, VOLATILE = "identity", "setup", "environment", "volatile"
BENCH, SWEEP = "bench", "sweep"
# written into config.json by the runner: the order's tasks, the method's resolved settings
DERIVED_IDENTITY = ("tasks", "settings")


def _whole_number(raw: str, minimum: int, expected: str) -> int:
    try:
        value = int(raw)
    except ValueError:
        value = None
    if value is None or value < minimum:
        raise argparse.ArgumentTypeError(f"expected {expected}, got {raw!r}")
    return value


def positive_or_all(raw: str) -> int | None:
    if raw.lower() in ("all", "none", "full"):
        return None
    return _whole_number(raw, 1, "a positive number of examples or 'all'")


def positive_int(raw: str) -> int:
    return _whole_number(raw, 1, "a positive whole number")


def non_negative_int(raw: str) -> int:
    return _whole_number(raw, 0, "0 or a positive whole number")


def non_negative_number(raw: str) -> float:
    try:
        value = float(raw)
    except ValueError:
        value = None
    if value is None or not value >= 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"expected 0 or a positive number, got {raw!r}")
    return value


def option(default=None, *, role: str, help: str, commands=(BENCH, SWEEP), flag: str | None = "", type=None,
           choices=None, metavar=None, env: str | None = None, default_factory=None):
    """A config field. flag "" = derived from the name (--train-per-task); None = not a command-line option."""
    meta = {"role": role, "help": help, "commands": commands, "flag": flag, "type": type, "choices": choices,
            "metavar": metavar, "env": env}
    if default_factory is not None:
        return field(default_factory=default_factory, metadata=meta)
    return field(default=default, metadata=meta)


@dataclass
class BenchConfig:
    method: str = option("seq_lora", role=IDENTITY, commands=(BENCH,), help="method name (see `list`)")
    order: str = option(DEFAULT_ORDER, role=IDENTITY, commands=(BENCH,),
                        help="task order: 1-6 (O-LoRA) or offline1..3")
    seed: int = option(1, role=IDENTITY, commands=(BENCH,), type=int, help="training seed")
    method_args: dict = option(role=IDENTITY, flag=None, default_factory=dict,
                               help="method settings (--method-arg / --method-config; a sweep's name:key=value)")
    # 200/100: chosen on validation runs (results/val: offline1-2, seeds 1-2, 25 optimizer steps a task), where
    # both sanity checks pass (seq_lora's FM interval above 0, per_task above seq_lora); at 32/20 neither did.
    train_per_task: int | None = option(200, role=SETUP, type=positive_or_all,
                                        help="training examples per task, stratified by label ('all' for every row)")
    test_per_task: int | None = option(100, role=SETUP, type=positive_or_all,
                                       help="test examples per task, stratified by label")
    model: str = option(DEFAULT_MODEL, role=SETUP, help="embedded model name, hub id or local path")
    data_dir: str | None = option(None, role=ENVIRONMENT, env="CL_DATA_DIR",
                                  help="O-LoRA's full CL_Benchmark directory for orders 1-6 (default: "
                                       "$CL_DATA_DIR, else the packaged subset)")
    eval: str = option("rank", role=SETUP, choices=EVAL_MODES,
                       help="rank: score every label; generate: greedy decoding + exact match")
    eval_split: str = option("test", role=SETUP, choices=EVAL_SPLITS,
                             help="the split the evaluator scores: test, or val (carved from the training data, "
                                  "the same for every seed: choose settings on val, report on test)")
    dtype: str = option("fp32", role=SETUP, choices=DTYPES, help="bf16 = autocast on the device (CPU or CUDA)")
    max_input_tokens: int = option(DEFAULT_MAX_INPUT_TOKENS, role=SETUP, type=positive_int,
                                   help="inputs are truncated to this many tokens")
    truncate: str = option("head", role=SETUP, choices=TRUNCATIONS,
                           help="how a long input is cut: head (its first tokens) or fields (where head would drop "
                                "a line's start, every line cut to a common length: MultiRC keeps its question)")
    # setup, not environment: batching changes padding, and with it float sums and a near-tie prediction
    eval_batch_size: int = option(16, role=SETUP, type=positive_int, help="test examples per forward pass")
    device: str = option("cpu", role=ENVIRONMENT, help="torch device: cpu, cuda or cuda:N")
    # environment, not setup: the caches change float rounding only, and with LoRA dropout the draw of its masks
    # (the same distribution per example; measured: docs/cli.md#caches)
    cache: str = option("on", role=ENVIRONMENT, choices=("on", "off"),
                        help="on: encode each batch's and each task's shared prompt prefix once (training and "
                             "evaluation), score every label on one copy of a prompt's cache, score again only "
                             "the inputs whose test-time model changed (CRAFT: its group); off: every cache "
                             "off, to check that they change nothing beyond float rounding (and dropout's draw)")
    # environment, not setup: the metrics are the same either way; the unevaluated cells are blank
    matrix: str = option("full", role=ENVIRONMENT, choices=("full", "needed"),
                         help="full: score every task after every stage; needed: only the cells AA, BWT, FM and "
                              "FWT use (the base and last rows, and R[t][i] for i <= t+1)")
    # 6144: a 15-task order's CRAFT cache at the grid's sizes (about 4.5 GB, docs/cli.md "Caches"; order 6's test cell
    # kept all it needed in 3.9 GB), with room to spare. A speed setting, not a science one: no result depends on it
    cache_mb: int = option(6144, role=ENVIRONMENT, type=positive_int,
                           help="memory a method may fill with caches of frozen computations (CRAFT: the backbone's "
                                "keys/values of seen prompts, about 2.4 MB a prompt beside one prefix a task)")
    # environment: a resumed task's steps, weights and losses are those of an uninterrupted one (tests/test_resume.py)
    checkpoint_minutes: float = option(10.0, role=ENVIRONMENT, type=non_negative_number, metavar="MIN",
                                       help="within a task's training, save its state every MIN minutes, so a "
                                            "killed run resumes mid-task (the methods `list` marks `resumes "
                                            "mid-task`); 0: no saves inside a task (one already there still resumes)")
    allow_download: bool = option(False, role=ENVIRONMENT, help="let transformers fetch a model from the hub")
    out: str | None = option(None, role=ENVIRONMENT, commands=(BENCH,),
                             help="run directory (default runs/<method>-<order>-s<seed>)")
    overwrite: bool = option(False, role=VOLATILE, commands=(BENCH,), help="replace a finished run in --out")
    progress: bool = option(True, role=VOLATILE, commands=(BENCH,), flag="--quiet", help="no progress bars")
    stop_after_task: int | None = option(None, role=VOLATILE, commands=(BENCH,), type=non_negative_int,
                                         metavar="K",
                                         help="train the first K tasks, then stop; the run stays unfinished and "
                                              "the same command without this flag resumes it")
    base_cache: str | None = option(None, role=VOLATILE, commands=(BENCH,), metavar="JSON",
                                    help="reuse the untouched backbone's scores from this file and add to it "
                                         "(sweeps share one)")
    # volatile: a probe adds a record beside the run's and changes none of its numbers
    probes: str | None = option(None, role=VOLATILE, type=probes.parse, metavar="P[,P]",
                                help="after the run finishes, measure its final state while its weights are here: "
                                     "general (held-out tasks, general.json), generation (its test examples by "
                                     "greedy decoding, protocols.json); on a finished run, the probes it lacks")

    def default_out(self) -> str:
        return os.path.join("runs", f"{self.method}-{self.order}-s{self.seed}")

    def recorded(self) -> dict:
        """What config.json stores of this config (everything but the volatile fields)."""
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.metadata["role"] != VOLATILE}


FIELDS = {f.name: f for f in dataclasses.fields(BenchConfig)}


def names(*roles: str) -> tuple[str, ...]:
    return tuple(name for name, f in FIELDS.items() if f.metadata["role"] in roles)


def flag_of(name: str) -> str | None:
    flag = FIELDS[name].metadata["flag"]
    return "--" + name.replace("_", "-") if flag == "" else flag


def cli_fields(command: str) -> list[dataclasses.Field]:
    return [f for f in FIELDS.values() if flag_of(f.name) and command in f.metadata["commands"]]


def add_options(parser: argparse.ArgumentParser, command: str) -> None:
    """The config's options of `command` (bench or sweep), with their defaults in the help."""
    for f in cli_fields(command):
        m, flag = f.metadata, flag_of(f.name)
        if isinstance(f.default, bool):
            # a switch: --allow-download sets True; --quiet sets progress to False
            parser.add_argument(flag, dest=f.name, action="store_false" if f.default else "store_true",
                                help=m["help"])
            continue
        help_text = m["help"]
        if m["env"] is None and f.default is not None:   # an environment default is named in the help itself
            help_text += f" (default {f.default})"
        parser.add_argument(flag, dest=f.name, default=os.environ.get(m["env"]) if m["env"] else f.default,
                            type=m["type"], choices=m["choices"], metavar=m["metavar"], help=help_text)


def from_args(args: argparse.Namespace, **fixed) -> BenchConfig:
    """A config from parsed options; `fixed` sets the fields the command does not take as options."""
    values = {name: getattr(args, name) for name in FIELDS if hasattr(args, name)}
    return BenchConfig(**{**values, **fixed})


def _spell(name: str, value) -> list[str]:
    f = FIELDS[name]
    flag = flag_of(name)
    if isinstance(f.default, bool):
        return [flag] if value != f.default else []
    if value is None:
        return [flag, "all"] if f.metadata["type"] is positive_or_all else []
    return [flag, str(value)]


def to_argv(cfg: BenchConfig, command: str = BENCH) -> list[str]:
    """The command-line arguments that make `cfg` again, every option spelled out (a sweep's runs are then
    reproducible from their own log whatever the defaults become)."""
    argv = []
    for f in cli_fields(command):
        argv += _spell(f.name, getattr(cfg, f.name))
    for key, value in cfg.method_args.items():
        argv += ["--method-arg", f"{key}={value}"]
    return argv


def given_options(cfg: BenchConfig, command: str = SWEEP) -> dict:
    """The options of `command` whose value differs from the built-in default: what a user has to type to
    make this setup again (a sweep records them; results/README.md prints them). Volatile ones (`--probes`) are
    not part of the setup; the sweep's recorded command keeps them."""
    return {f.name: getattr(cfg, f.name) for f in cli_fields(command)
            if getattr(cfg, f.name) != f.default and f.metadata["role"] != VOLATILE}


def spell_options(options: dict) -> list[str]:
    """given_options back into command-line words, in the config's field order."""
    return [word for name in FIELDS if name in options for word in _spell(name, options[name])]


def resume_keys() -> tuple[str, ...]:
    """What must match for an unfinished run to be resumed ("settings" = the method's resolved settings: a
    changed default must not be mixed into a half-done run)."""
    return names(IDENTITY, SETUP) + DERIVED_IDENTITY


def recorded_value(config: dict, name: str):
    """A field's value in a run's config.json; a field the record predates holds the default it ran with. The same
    for the method's settings: one the method gained since the record holds the value the run behaved as."""
    if name == "settings":
        return current_settings(config.get("method"), config.get("settings"))
    field = FIELDS.get(name)
    return config.get(name, None if field is None or field.default is dataclasses.MISSING else field.default)


def current_settings(method: str | None, recorded: dict | None) -> dict | None:
    """A run's recorded settings as the method's code now records them (Method.ADDED_SETTINGS: settings added since,
    at the value the run behaved as); the record as it is for a method this code does not have."""
    from methods import discover
    cls = discover().get(method) if isinstance(recorded, dict) else None
    return recorded if cls is None else cls.recorded_settings(recorded)


def resolved_settings(method: str, args: dict) -> dict:
    """A method's settings for `args` as a run's record holds them (through JSON: tuples become lists), so they
    compare with recorded ones. UsageError for a method or setting this code lacks."""
    from methods import get_method
    return json.loads(json.dumps(get_method(method).resolve_settings(args)))


def moved_settings(config: dict) -> dict:
    """{setting: (what the run recorded, what its method and method_args resolve to today)} for the recorded
    settings whose value moved since the run (a default changed); {} for a method or setting this code lacks."""
    recorded = recorded_value(config, "settings")
    if not isinstance(recorded, dict):
        return {}
    try:
        now = resolved_settings(config.get("method"), config.get("method_args") or {})
    except UsageError:
        return {}
    return {k: (v, now[k]) for k, v in recorded.items() if k in now and now[k] != v}


def spell_setting(value) -> str:
    """A resolved setting as a method spec writes it (methods.base.parse_value reads it back)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float, str)):
        return str(value)
    return json.dumps(value, separators=(",", ":"))


def reproducing_args(config: dict) -> dict:
    """The method args that make a run's settings under today's code: its recorded method_args, with each setting
    that moved since (a default changed) spelled at the value it ran with."""
    args = dict(config.get("method_args") or {})
    args.update({k: spell_setting(then) for k, (then, _) in sorted(moved_settings(config).items())})
    return args


def label_args(config: dict) -> dict:
    """The settings a run ran with that differ from its method's defaults today, as method args, each spelled one
    way (merge=false, lr=0.001, whether a sweep wrote False or 1e-3): what names its row, so a row is what its runs
    ran, whichever defaults they were made under. The recorded args for a method or setting this code lacks."""
    args = reproducing_args(config)
    try:
        defaults, ran = resolved_settings(config.get("method"), {}), resolved_settings(config.get("method"), args)
    except UsageError:
        return args
    return {k: spell_setting(ran[k]) for k in args if ran[k] != defaults[k]}


def ran_defaults(config: dict) -> bool:
    """Did a run run its method's defaults of some time: it fixed no setting (whatever the defaults then were), or
    its settings are today's defaults or one of its method's FORMER_DEFAULTS (a spec that spelled them out)."""
    if not config.get("method_args"):
        return True
    from methods import discover
    cls, recorded = discover().get(config.get("method")), recorded_value(config, "settings")
    if cls is None or not isinstance(recorded, dict):
        return False
    today = resolved_settings(cls.NAME, {})
    return any(recorded == {**today, **json.loads(json.dumps(former))}
               for former in ({},) + tuple(cls.FORMER_DEFAULTS.values()))


def former_defaults_named(method: str, args: dict) -> tuple[str | None, dict]:
    """(the name of the method's FORMER_DEFAULTS entry that names a run whose settings differ from today's defaults
    in `args` (label_args), the settings in which the run differs from that entry), or (None, args). An entry's own
    moves are the settings that moved when its time ended (absent from the next newer entry, or another value
    there); the oldest entry more of whose own moves the run holds at that time's values than at today's names
    it (a run of today's defaults but for one moved setting at its old value is today's variant). So runs of old
    defaults read `craft (one-epoch defaults)`, a variant of them `craft (one-epoch defaults) [lr=0.001]`, a
    variant tried then at a value that has become a default since keeps its name (`craft (one-epoch defaults)
    [settle_tol=0.0]`), and a run of today's defaults with some other value of a moved setting names none
    (`seq_lora [epochs=5]`), not every old value spelled out."""
    from methods import discover
    cls = discover().get(method)
    entries = list(cls.FORMER_DEFAULTS.items()) if cls is not None else []
    if not entries or not args:
        return None, args
    try:
        ran, today = resolved_settings(method, args), resolved_settings(method, {})
    except UsageError:
        return None, args
    own, newer = [], {}
    for name, former in entries:   # newest first
        own.append((name, former, {k for k, v in former.items() if k not in newer or newer[k] != v}))
        newer = former
    for name, former, moved in reversed(own):
        kept = sum(k in args and ran[k] == former[k] for k in moved)   # own moves the run holds at that time's value
        if kept > sum(k not in args for k in moved):                    # ... against those it holds at today's
            rest = {k: v for k, v in args.items() if k not in former or ran[k] != former[k]}
            return name, {**rest, **{k: spell_setting(today[k]) for k in former if k not in args}}
    return None, args


def setup_of(config: dict) -> tuple:
    """The setup a table's runs must share, from a run's config.json."""
    return tuple(recorded_value(config, name) for name in names(SETUP))


def device_kind(device: str | None) -> str:
    """cpu or cuda: what decides a run's float path and seconds (cuda:1 is cuda; a record without one ran on cpu)."""
    return (device or "cpu").split(":")[0]


def backbone_cache_key(cfg: BenchConfig, task: str, test_fingerprint: str) -> str:
    """Everything that decides an untouched backbone's score on a task: the setup, and the test examples
    themselves (a fingerprint, so two data folders with different rows never share a score; the seed does
    not enter, the test subsample does not depend on it). Two environment fields enter where they are not the
    defaults, as they change the float path of the scores: the device type (a GPU's scores are not the CPU's up
    to rounding) and --cache off (whole prompts); keys made on the CPU with caches on stay as they were."""
    path = [f"device={device_kind(cfg.device)}"] if device_kind(cfg.device) != "cpu" else []
    path += ["cache=off"] if cfg.cache == "off" else []
    # keys made before the option stay. The key does not follow the prompt code; each entry carries the fingerprint
    # of the inputs it scored, which does (runner._measure_backbone scores a stale entry again)
    path += [f"truncate={cfg.truncate}"] if cfg.truncate != "head" else []
    return "|".join([task, test_fingerprint] + [str(getattr(cfg, name)) for name in names(SETUP) if name != "truncate"]
                    + path)


def check(cfg: BenchConfig) -> None:
    """The checks a config built in Python (not through the CLI's typed options) needs before a model loads."""
    for name in ("train_per_task", "test_per_task"):
        value = getattr(cfg, name)
        if value is not None and value <= 0:
            raise UsageError(f"{flag_of(name)} must be a positive number of examples, got {value}")
    for name in ("max_input_tokens", "eval_batch_size"):
        if getattr(cfg, name) <= 0:
            raise UsageError(f"{flag_of(name)} must be positive, got {getattr(cfg, name)}")
    if cfg.eval_split not in EVAL_SPLITS:
        raise UsageError(f"unknown --eval-split {cfg.eval_split!r}; choose one of {', '.join(EVAL_SPLITS)}")
    if cfg.eval not in EVAL_MODES:
        raise UsageError(f"unknown --eval {cfg.eval!r}; choose one of {', '.join(EVAL_MODES)}")
    if cfg.dtype not in DTYPES:
        raise UsageError(f"unknown --dtype {cfg.dtype!r}; choose one of {', '.join(DTYPES)}")
    if cfg.stop_after_task is not None and cfg.stop_after_task < 0:
        raise UsageError(f"--stop-after-task must be 0 or more, got {cfg.stop_after_task}")
    if cfg.probes is not None:
        try:
            cfg.probes = probes.parse(cfg.probes)
        except argparse.ArgumentTypeError as e:
            raise UsageError(f"--probes: {e}") from None
        if cfg.eval != "rank" and "generation" in probes.names_of(cfg.probes):
            raise UsageError("--probes generation sets generated answers beside a run's rank answers; this run is "
                             f"evaluated with --eval {cfg.eval}, which already generates")
