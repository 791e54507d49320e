"""harness/config.py is the one place a run's setup is defined: the CLI, the sweep's cell commands, the resume
check and the backbone cache key are all derived from it, so they cannot disagree."""
import dataclasses
import os

import pytest

from core.errors import UsageError
from harness import config, probes
from harness.cli import build_parser
from harness.config import BenchConfig
from harness.rundir import RunDir
from harness.runner import data_fingerprint
from tasks.base import Example, TaskData


def non_default(f: dataclasses.Field):
    """A value for the field that differs from its default and that its option accepts."""
    if isinstance(f.default, bool):
        return not f.default
    if f.metadata["choices"]:
        return next(c for c in f.metadata["choices"] if c != f.default)
    if f.metadata["type"] is probes.parse:   # names from a list, like choices
        return probes.NAMES[-1]
    if f.type in ("int", "int | None", "float") or isinstance(f.default, (int, float)):
        return (f.default or 0) + 3
    return f"/x/{f.name}"


def test_every_option_survives_the_command_line_round_trip():
    # A config with every command-line field off its default: to_argv, parse, from_args gives it back.
    values = {f.name: non_default(f) for f in config.cli_fields(config.BENCH)}
    cfg = BenchConfig(**values, method_args={"rank": "2", "merge": "false"})
    a = build_parser().parse_args(["bench", *config.to_argv(cfg)])
    assert config.from_args(a, method_args=dict(p.split("=") for p in a.method_arg)) == cfg


def test_sizes_spell_all_and_given_options_are_only_the_changed_ones():
    cfg = BenchConfig(train_per_task=None, test_per_task=7, data_dir="../d")
    assert config.to_argv(cfg)[:4] == ["--method", "seq_lora", "--order", "offline1"]
    assert "all" == config.to_argv(cfg)[config.to_argv(cfg).index("--train-per-task") + 1]
    assert config.given_options(cfg) == {"train_per_task": None, "test_per_task": 7, "data_dir": "../d"}
    assert config.spell_options(config.given_options(cfg)) == ["--train-per-task", "all", "--test-per-task", "7",
                                                               "--data-dir", "../d"]


@pytest.mark.parametrize("argv", [["--train-per-task", "0"], ["--test-per-task", "-3"], ["--max-input-tokens", "x"],
                                  ["--eval-batch-size", "0"], ["--stop-after-task", "-1"], ["--eval", "bleu"],
                                  ["--probes", "general,bleu"]])
def test_bad_option_values_are_refused_by_the_parser(argv, capsys):
    with pytest.raises(SystemExit) as e:
        build_parser().parse_args(["bench", *argv])
    assert e.value.code == 2 and len(capsys.readouterr().err.strip().splitlines()) == 1


def test_check_refuses_what_python_callers_can_still_pass():
    with pytest.raises(UsageError, match="--eval-batch-size"):
        config.check(BenchConfig(eval_batch_size=0))
    with pytest.raises(UsageError, match="--test-per-task"):
        config.check(BenchConfig(test_per_task=0))


def test_resume_compares_identity_and_setup_but_not_the_environment(tmp_path):
    base = {**BenchConfig().recorded(), "tasks": ["a"], "settings": {"lr": 1}}
    run = RunDir(str(tmp_path / "run"))
    assert run.prepare(base, overwrite=False) is None
    # environment (device, where the data sits, the run folder) may change between sittings
    assert run.prepare({**base, "device": "cuda", "data_dir": "/elsewhere", "out": "moved"}, False)["rows"] == {}
    for key, value in (("eval_batch_size", 4), ("seed", 2), ("settings", {"lr": 2})):
        with pytest.raises(UsageError, match=key):
            run.prepare({**base, key: value}, overwrite=False)


def test_backbone_cache_key_follows_the_setup_and_the_test_rows_not_the_seed_or_folder():
    def data(*texts):
        return TaskData("t", "i", ("a",), [], [Example(x, "a") for x in texts], {}, {})
    cfg = BenchConfig()
    key = config.backbone_cache_key(cfg, "t", data_fingerprint(data("x", "y")))
    assert key == config.backbone_cache_key(dataclasses.replace(cfg, seed=9, data_dir="/d", method="craft"), "t",
                                            data_fingerprint(data("x", "y")))
    assert key != config.backbone_cache_key(cfg, "t", data_fingerprint(data("x", "z")))
    assert key != config.backbone_cache_key(dataclasses.replace(cfg, eval_batch_size=4), "t",
                                            data_fingerprint(data("x", "y")))
    assert key != config.backbone_cache_key(dataclasses.replace(cfg, test_per_task=5), "t",
                                            data_fingerprint(data("x", "y")))
    # the float path: a GPU's or caches-off scores are never reused for the CPU's cached path, nor the reverse
    keys = {config.backbone_cache_key(dataclasses.replace(cfg, **change), "t", data_fingerprint(data("x", "y")))
            for change in ({}, {"device": "cuda"}, {"device": "cuda:1"}, {"cache": "off"}, {"device": "cpu"})}
    assert len(keys) == 3 and key in keys
    # keys of base-cache.json files written before these fields entered stay valid: --truncate enters where it is
    # not head, the cut every earlier run made
    assert key == "|".join(["t", data_fingerprint(data("x", "y"))] + [str(getattr(cfg, n)) for n in config.names(
        config.SETUP) if n != "truncate"])
    assert key != config.backbone_cache_key(dataclasses.replace(cfg, truncate="fields"), "t",
                                            data_fingerprint(data("x", "y")))
    assert config.recorded_value({}, "truncate") == "head"   # a record made before the option cut the head


def test_docs_list_every_option():
    """docs/cli.md's option table is written by hand: a field added to BenchConfig must be documented there."""
    from tests.conftest import ROOT
    text = open(os.path.join(ROOT, "docs", "cli.md")).read()
    flags = [config.flag_of(f.name) for f in config.cli_fields(config.BENCH)]
    missing = [flag for flag in flags if f"`{flag}`" not in text]
    assert not missing, f"options missing from docs/cli.md: {missing}"
