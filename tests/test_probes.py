"""Probes after a run (`--probes`): a run's general ability and generated answers are measured from its final state
right after it finishes, kept in its folder; a rerun on the finished run measures only what it lacks, a sweep takes a
finished cell's missing probes while its weights are there, and bad requests fail in one line before anything runs."""
import json
import os
import shutil

import pytest

from harness import general, probes, protocols
from harness.cli import main
from harness.prompting import PromptEncoder
from harness.rundir import RunDir, check_base_cache
from harness.sweep import cell_state, plan
from tests.conftest import sweep_setup

ORDER = "bbc+hutto_amazon"
TINY = ["--model", "tiny-llama", "--train-per-task", "8", "--test-per-task", "3", "--max-input-tokens", "8",
        "--order", ORDER, "--quiet", "--method", "seq_lora", "--method-arg", "lr=0.5"]


@pytest.fixture
def small_general(monkeypatch):
    """The general probe on one held-out task of a few examples (the probe reads the defaults when it runs)."""
    monkeypatch.setattr(general, "GENERAL_TASKS", ("sms_spam",))
    monkeypatch.setattr(general, "DEFAULT_PER_TASK", 6)


def without_stamp(record):
    """protocols.json less what says when and how long it was measured, which a second measurement does not repeat;
    the time must be there (a sweep's cost estimate reads it)."""
    assert record["seconds"] > 0
    return {k: v for k, v in record.items() if k not in ("stamp", "seconds")}


def test_a_run_measures_its_probes_and_a_rerun_measures_only_those_it_lacks(tmp_path, small_general, capsys,
                                                                            monkeypatch, tokenizer):
    out, shared = str(tmp_path / "run"), str(tmp_path / "base-cache.json")
    assert main(["bench", *TINY, "--probes", "generation,general", "--out", out, "--base-cache", shared]) == 0
    said = capsys.readouterr().out
    assert "general ability (balanced accuracy, 1 held-out tasks)" in said and "generation: AA" in said
    kept = json.load(open(os.path.join(out, "general.json")))
    assert list(kept["tasks"]) == ["sms_spam"] and kept["tasks"]["sms_spam"]["examples"] == 6
    generated = json.load(open(os.path.join(out, "protocols.json")))
    # the kept measurement is the final state's: measuring the restored run again gives the same answers
    assert without_stamp(generated) == protocols.measure(out)
    assert generated["restored_check"] == {"bbc": 0, "hutto_amazon": 0}
    assert probes.missing(out, "general,generation") == []
    # the backbone's held-out answers ("before") are kept in the sweep's base-cache for the next run's probe: a
    # second measurement scores only the run's own state, and finds the same "before"
    check_base_cache(shared)
    calls = []
    real_evaluate = general.evaluate
    monkeypatch.setattr(general, "evaluate", lambda *a, **k: calls.append(1) or real_evaluate(*a, **k))
    again = general.run_general(out, ("sms_spam",), 6, shared=shared)
    assert len(calls) == 1 and without_stamp(again) == without_stamp(kept)
    # each kept answer set carries the fingerprint of the inputs it was scored from ...
    cache = json.load(open(shared))
    (entry,) = [k for k in cache if k.startswith("general|")]
    assert cache[entry]["inputs"] == general.inputs_fingerprint(
        general.task_rows("sms_spam", 6, PromptEncoder(tokenizer, 8)), tokenizer)
    # ... an entry from before fingerprints were kept is taken as today's and gets one ...
    json.dump({**cache, entry: {k: v for k, v in cache[entry].items() if k != "inputs"}}, open(shared, "w"))
    calls.clear()
    assert without_stamp(general.run_general(out, ("sms_spam",), 6, shared=shared)) == without_stamp(kept)
    assert len(calls) == 1 and json.load(open(shared)) == cache
    written = os.stat(shared).st_mtime_ns
    general.run_general(out, ("sms_spam",), 6, shared=shared)   # a plain reuse leaves the shared file alone
    assert os.stat(shared).st_mtime_ns == written
    # ... and one made from other prompts (a template changed since) is scored again and replaced, said on stderr
    # and in the run's log; with two held-out tasks, one stale task has the set scored again (lm-eval scores it
    # together), and only that task's fingerprint moves
    both = ("sms_spam", "hutto_movie")
    general.run_general(out, both, 6, shared=shared)
    pair = json.load(open(shared))
    real_prompt = PromptEncoder.prompt_string
    monkeypatch.setattr(PromptEncoder, "prompt_string",
                        lambda self, data, text: ("Answer. " if data.name == "hutto_movie" else "")
                        + real_prompt(self, data, text))
    calls.clear()
    capsys.readouterr()
    general.run_general(out, both, 6, shared=shared)
    assert len(calls) == 2 and "answers of hutto_movie were made from other inputs" in capsys.readouterr().err
    assert RunDir(out).events()[-1] | {"t": 0} == {"t": 0, "event": "general_base_stale", "tasks": ["hutto_movie"]}
    (hutto,) = [k for k in pair if k.startswith("general|hutto_movie|")]
    assert {k for k, e in json.load(open(shared)).items() if e != pair[k]} == {hutto}
    assert json.load(open(shared))[hutto]["inputs"] != pair[hutto]["inputs"]
    monkeypatch.setattr(PromptEncoder, "prompt_string", real_prompt)
    calls.clear()
    general.run_general(out, both, 6, shared=shared, progress=False)   # today's prompts again: scored again, quietly
    assert len(calls) == 2 and "other inputs" not in capsys.readouterr().err
    assert RunDir(out).events()[-1]["event"] == "general_base_stale" and json.load(open(shared)) == pair
    assert without_stamp(general.run_general(out, ("sms_spam",), 6, shared=shared)) == without_stamp(kept)
    # a general.json of other held-out tasks (`general --tasks ...`) is not the probe's
    json.dump({**kept, "requested": ["hutto_movie"]}, open(str(tmp_path / "other.json"), "w"))
    os.replace(os.path.join(out, "general.json"), str(tmp_path / "kept.json"))
    os.replace(str(tmp_path / "other.json"), os.path.join(out, "general.json"))
    assert probes.missing(out, "general,generation") == ["general"]
    os.replace(str(tmp_path / "kept.json"), os.path.join(out, "general.json"))

    # (lm-eval's general probe takes most of this test's time: it is the one kept)
    os.remove(os.path.join(out, "protocols.json"))
    before = os.path.getmtime(os.path.join(out, "general.json"))
    assert main(["bench", *TINY, "--probes", "general,generation", "--out", out]) == 0
    assert "measuring the probe(s) it lacks: generation" in capsys.readouterr().out
    regenerated = json.load(open(os.path.join(out, "protocols.json")))
    assert without_stamp(regenerated) == without_stamp(generated)   # the same state, the same answers
    assert regenerated["stamp"] == generated["stamp"]
    assert os.path.getmtime(os.path.join(out, "general.json")) == before   # kept, not measured again
    # the same settings spelled another way are the same run
    assert main(["bench", *TINY, "--method-arg", "lr=5e-1", "--probes", "general", "--out", out]) == 0
    assert "with every probe asked for (general) measured" in capsys.readouterr().out

    # a finished run of other settings is not this run: refused, as without --probes
    assert main(["bench", *TINY, "--seed", "2", "--probes", "general", "--out", out]) == 2
    assert "different settings (seed)" in capsys.readouterr().err   # and no advice to --overwrite it
    # records are committed without their weights: a probe that needs them says so
    os.remove(os.path.join(out, "protocols.json"))
    for name in os.listdir(out):
        if name.startswith("checkpoint-"):
            os.remove(os.path.join(out, name))
    assert main(["bench", *TINY, "--probes", "generation", "--out", out]) == 2
    assert "has no checkpoint" in capsys.readouterr().err


def test_a_failed_probe_is_named_and_the_others_still_run(tmp_path, monkeypatch, capsys):
    out = str(tmp_path / "run")
    real = probes.measure

    def broken(path, name, *args):
        if name == "general":
            raise RuntimeError("lm-eval fell over")
        return real(path, name, *args)
    monkeypatch.setattr(probes, "measure", broken)
    assert main(["bench", *TINY, "--probes", "general,generation", "--out", out]) == 1
    err = capsys.readouterr().err
    assert "probe general failed: RuntimeError: lm-eval fell over" in err and "--probes general retries it" in err
    assert "Traceback" in err   # a bug, not bad input: where it happened goes to the log
    assert os.path.isfile(os.path.join(out, "protocols.json"))   # the other probe ran
    assert json.load(open(os.path.join(out, "status.json")))["state"] == "finished"   # the run is kept


def test_bad_probe_requests_fail_in_one_line_before_anything_runs(tmp_path, capsys):
    out = str(tmp_path / "run")
    assert main(["bench", *TINY, "--probes", "genral", "--out", out]) == 2
    assert "did you mean 'general'?" in capsys.readouterr().err
    assert main(["bench", *TINY, "--eval", "generate", "--probes", "generation", "--out", out]) == 2
    assert "already generates" in capsys.readouterr().err
    assert main(["sweep", "--methods", "seq_lora", "--orders", ORDER, "--runs", str(tmp_path / "runs"),
                 "--eval", "generate", "--probes", "general,generation"]) == 2
    assert not os.path.exists(out) and not os.path.exists(str(tmp_path / "runs"))
    assert probes.parse(" generation , general,general") == "general,generation"   # one spelling per request


def test_a_sweep_takes_a_finished_cells_missing_probe_while_its_weights_are_here(tmp_path, capsys):
    runs = str(tmp_path / "runs")
    sweep = ["sweep", "--methods", "seq_lora:lr=0.5", "--orders", ORDER, "--runs", runs, "--quiet",
             *TINY[:TINY.index("--order")]]
    setup = sweep_setup(TINY[:TINY.index("--order")])
    assert main(sweep) == 0   # no probes asked for: the run alone
    cell = plan(runs, ["seq_lora:lr=0.5"], [ORDER], ["1"], setup)[0]
    run = cell.out
    assert cell_state(cell) == "finished" and not os.path.exists(os.path.join(run, "protocols.json"))
    status = os.path.getmtime(os.path.join(run, "status.json"))

    asked = plan(runs, ["seq_lora:lr=0.5"], [ORDER], ["1"], setup)[0]
    asked.config.probes = "generation"
    assert cell_state(asked) == "probes"
    capsys.readouterr()
    assert main([*sweep, "--probes", "generation", "--dry-run"]) == 0
    assert capsys.readouterr().out.split()[0] == "probes"
    assert main([*sweep, "--probes", "generation"]) == 0
    captured = capsys.readouterr()
    assert f"{run}: probes measured" in captured.err and "1 run(s) done now, 0 skipped" in captured.out
    assert os.path.getmtime(os.path.join(run, "status.json")) == status   # not trained again
    assert without_stamp(json.load(open(os.path.join(run, "protocols.json")))) == protocols.measure(run)
    assert cell_state(asked) == "finished"

    # without its weights (a record from another session) the cell is finished: nothing here can measure it
    bare = str(tmp_path / "bare")
    shutil.copytree(runs, bare)
    moved = plan(bare, ["seq_lora:lr=0.5"], [ORDER], ["1"], setup)[0]
    os.remove(os.path.join(moved.out, "protocols.json"))
    for name in os.listdir(moved.out):
        if name.startswith("checkpoint-"):
            os.remove(os.path.join(moved.out, name))
    moved.config.probes = "generation"
    assert cell_state(moved) == "finished"
    # ... and the sweep says so, with the way out, where a user looks: the dry run and the sweep itself
    at = sweep.index("--runs") + 1
    bare_sweep = [*sweep[:at], bare, *sweep[at + 1:], "--probes", "generation"]
    assert main([*bare_sweep, "--dry-run"]) == 0
    assert "1 finished run(s) lack a probe asked for and have no weights here" in capsys.readouterr().out
    assert main(bare_sweep) == 0
    captured = capsys.readouterr()
    assert "have no weights here, so no sweep can measure them; their own command with --overwrite" in captured.err
    assert moved.out in captured.err and "0 run(s) done now, 1 skipped" in captured.out


def test_a_sweep_records_the_setup_it_was_given_not_its_probes(tmp_path):
    from harness import config
    from harness.cli import build_parser
    given = config.given_options(config.from_args(build_parser().parse_args(
        ["sweep", "--methods", "x", "--orders", "y", "--test-per-task", "7", "--probes", "general"])))
    assert given == {"test_per_task": 7}   # the regenerate commands are built from these: a probe changes no number
