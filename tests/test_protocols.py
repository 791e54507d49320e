"""The generation probe (harness/protocols.py) scores a finished run's final state by generation: the state must be
the run's own (its rank answers come back exactly), generation must be the harness's own `--eval generate`, and
every generated answer must be sorted by whose label it is; bench/protocols.py reports the kept measurements."""
import json
import os

import pytest
from conftest import bench_script

from harness import protocols
from harness.cli import main

# lr high enough that a few tiny steps move the answers away from the untouched backbone's (CRAFT's 8 warm-up steps
# would keep its 3 steps a task at a fraction of it)
TINY = ["--model", "tiny-llama", "--train-per-task", "8", "--test-per-task", "3", "--max-input-tokens", "8",
        "--order", "bbc+hutto_amazon", "--quiet"]
LR = {"seq_lora": ["--method-arg", "lr=0.5"], "craft": ["--method-arg", "lr=0.3", "--method-arg", "warmup=0"]}


def rows(path):
    return json.load(open(os.path.join(path, "status.json")))["rows"]


def test_answers_are_sorted_by_whose_label_they_are():
    sort = protocols.sort_answer
    own, others = {"positive", "negative"}, {"sport", "tech"}
    assert [sort(a, "positive", own, others) for a in ("positive", "negative", "sport", "great")] == [
        "right", "own_label", "other_task_label", "no_label"]


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """seq_lora and craft, each run twice: scored by rank and by generation (the same training)."""
    tmp = tmp_path_factory.mktemp("protocols")
    made = {}
    for method in ("seq_lora", "craft"):
        for mode in ("rank", "generate"):
            out = str(tmp / f"{method}-{mode}")
            assert main(["bench", "--method", method, *LR[method], *TINY, "--eval", mode,
                         "--out", out]) == 0
            made[method, mode] = out
    return made


def test_generation_on_a_restored_run_matches_the_harness_generate_run(runs):
    script = protocols
    for method in ("seq_lora", "craft"):
        ranked, generated = runs[method, "rank"], runs[method, "generate"]
        trained = rows(ranked)
        # training moved the answers, so a state not restored would not give the record's answers back
        assert trained["hutto_amazon"]["predictions"] != trained["base"]["predictions"], method
        result = script.measure(ranked)
        assert result["restored_check"] == {"bbc": 0, "hutto_amazon": 0}
        final = rows(generated)["hutto_amazon"]["accuracy"]
        for name, t in result["tasks"].items():
            assert sum(t["kinds"].values()) == t["n"] == 3
            assert 100.0 * t["kinds"]["right"] / t["n"] == pytest.approx(final[name], abs=0.01), (method, name)
            assert t["rank"] == pytest.approx(trained["hutto_amazon"]["accuracy"][name], abs=0.01)
    with pytest.raises(Exception, match="evaluated with --eval generate"):
        script.measure(runs["seq_lora", "generate"])   # its record holds no rank answers


def test_each_kind_of_answer_is_counted(runs, monkeypatch):
    """Generation replaced by planted answers: the gold label, another label of the task, a label of the other
    task of the stream, in turn."""
    import tasks
    from harness.models import load_model
    from harness.prompting import PromptEncoder
    script = bench_script("protocols")
    encoder = PromptEncoder(load_model("tiny-llama")[1], 8)
    labels = {n: tasks.load_task(n, None, 8, 3, 1).labels for n in ("bbc", "hutto_amazon")}

    def planted(scorer, examples, *args, **kwargs):
        out = []
        for i, ex in enumerate(examples):
            own = labels[ex.task]
            other = labels["hutto_amazon" if ex.task == "bbc" else "bbc"]
            answer = [own[ex.label_index], own[(ex.label_index + 1) % len(own)], other[0]][i % 3]
            out.append(list(encoder.answer_ids(answer)))
        return out
    monkeypatch.setattr(protocols, "generate_predictions", planted)
    result = protocols.measure(runs["craft", "rank"])
    for t in result["tasks"].values():
        assert t["kinds"] == {"right": 1, "own_label": 1, "other_task_label": 1, "no_label": 0}
        assert t["answers"] == "rot"   # each example's kind, in the run's order
    table = script.summary([result, protocols.measure(runs["seq_lora", "rank"])])
    assert set(table) == {"seq_lora+lr=0.5", "craft+lr=0.3+warmup=0"}
    assert table["craft+lr=0.3+warmup=0"]["share"] == pytest.approx(
        {"right": 100 / 3, "own_label": 100 / 3, "other_task_label": 100 / 3, "no_label": 0.0})


def test_a_kept_measurement_is_reused_without_the_weights_and_measured_anew_on_request(runs, tmp_path):
    import shutil
    script = protocols
    run = str(tmp_path / "run")
    shutil.copytree(runs["seq_lora", "rank"], run)
    first = script.measured(run)
    assert json.load(open(os.path.join(run, "protocols.json"))) == first
    for name in os.listdir(run):   # the weights are not committed: a clone still rebuilds the report
        if name.startswith("checkpoint-"):
            os.remove(os.path.join(run, name))
    assert script.measured(run) == first
    with pytest.raises(Exception, match="has no checkpoint"):
        script.measured(run, again=True)
    # a measurement by another version of the script is not reused (here it would need the weights)
    json.dump({**first, "stamp": {**first["stamp"], "version": 0}}, open(os.path.join(run, "protocols.json"), "w"))
    with pytest.raises(Exception, match="has no checkpoint"):
        script.measured(run)


def test_unfinished_runs_named_by_a_glob_are_left_out_and_said_so(runs, tmp_path, capsys):
    script = bench_script("protocols")
    out = str(tmp_path / "report.md")
    assert script.main([runs["seq_lora", "rank"], str(tmp_path / "not-a-run"), "--out", out]) == 0
    assert "1 run(s) not finished, left out" in capsys.readouterr().err
    assert "| seq_lora [lr=0.5] | 1 |" in open(out).read()
    assert script.main([str(tmp_path / "not-a-run")]) == 2
    assert not os.path.exists(str(tmp_path / "not-a-run"))


def test_a_run_that_cannot_be_measured_is_left_out_of_the_report_not_the_end_of_it(runs, tmp_path, capsys):
    import shutil
    script = bench_script("protocols")
    bare = str(tmp_path / "bare")   # a finished record without its weights nor a kept measurement
    shutil.copytree(runs["seq_lora", "rank"], bare)
    config = json.load(open(os.path.join(bare, "config.json")))
    json.dump({**config, "seed": 7}, open(os.path.join(bare, "config.json"), "w"))   # another row's run
    for name in os.listdir(bare):
        if name.startswith("checkpoint-") or name == "protocols.json":
            os.remove(os.path.join(bare, name))
    out = str(tmp_path / "report.md")
    assert script.main([runs["seq_lora", "rank"], bare, "--out", out]) == 1
    assert "left out: " in capsys.readouterr().err
    text = open(out).read()
    assert "| seq_lora [lr=0.5] | 1 |" in text and f"1 run(s): {bare}." in text
    assert script.main([bare, "--out", str(tmp_path / "none.md")]) == 2   # nothing measurable: no report
    assert not os.path.exists(str(tmp_path / "none.md"))


def test_a_model_that_cannot_load_is_tried_once_and_every_run_is_named(runs, tmp_path, capsys, monkeypatch):
    from core.errors import UsageError
    script = bench_script("protocols")
    calls = []

    def unloadable(*args, **kwargs):
        calls.append(args)
        raise UsageError("--model /gone: no such folder")
    monkeypatch.setattr(protocols, "load_model", unloadable)
    out = str(tmp_path / "report.md")
    measured_runs = [runs["seq_lora", "rank"], runs["craft", "rank"]]
    assert script.main([*measured_runs, "--again", "--out", out]) == 2
    assert len(calls) == 1   # not tried once per run
    err = capsys.readouterr().err
    for path in measured_runs:
        assert f"left out: {path}: --model /gone: no such folder" in err
    assert not os.path.exists(out)


def planted_run(label, order, ranked, generated):
    """A measured run as the report reads it: one 100-example task, each example right (1) or not (0) by rank and
    by generation."""
    import numpy as np
    ranked, generated = np.array(ranked, dtype=float), np.array(generated, dtype=float)
    kinds = {"right": int(generated.sum()), "own_label": int(100 - generated.sum()), "other_task_label": 0,
             "no_label": 0}
    return {"label": label, "order": order, "seed": 1, "restored_check": {"bbc": 0},
            "tasks": {"bbc": {"n": 100, "rank": float(ranked.mean() * 100), "kinds": kinds}},
            "outcomes": {"bbc": (ranked, generated)}}


def test_the_report_pairs_methods_on_the_same_examples_and_its_intervals_cover_a_planted_difference():
    script = bench_script("protocols")
    right = lambda k: [1] * k + [0] * (100 - k)   # noqa: E731
    results = []
    for order in ("1", "2"):
        # rank: both right on the same 70 examples; generation: craft right on the first 80, seq_lora on the first 60
        results += [planted_run("craft", order, right(70), right(80)),
                    planted_run("seq_lora", order, right(70), right(60))]
    text = script.report(results, "craft")
    paired = text.split("## craft minus each method, paired")[1]
    row = [line for line in paired.splitlines() if line.startswith("| seq_lora |")][0]
    # the same answers by rank: every resample gives 0; generation: a 20-point difference on nested right sets,
    # so every resample keeps craft ahead, and the interval covers the planted 20
    assert row.startswith("| seq_lora | 2 | +0.00 [0.00, 0.00] | +20.00 [")
    low, high = (float(x) for x in row.split("+20.00 [")[1].split("]")[0].split(", "))
    assert 0 < low < 20 < high and row.endswith("] * |")
    craft_row = [line for line in text.splitlines() if line.startswith("| craft |")][0]
    assert "| 70.00 [" in craft_row and "| 80.00 [" in craft_row and "| +10.00 [" in craft_row
    # a run measured before each answer was kept: its counts give the points, its generation cells no interval
    results[1] = {**results[1], "outcomes": {"bbc": (results[1]["outcomes"]["bbc"][0], None)}}
    text = script.report(results, "craft")
    assert "1 of 4 runs were measured before each answer was kept" in text
    row = [line for line in text.split("paired")[-1].splitlines() if line.startswith("| seq_lora |")][0]
    assert row == "| seq_lora | 2 | +0.00 [0.00, 0.00] | +20.00 |"


def test_the_report_names_runs_as_the_tables_do_and_keeps_the_methods_asked(runs, tmp_path):
    script = bench_script("protocols")
    out = str(tmp_path / "report.md")
    both = [runs["seq_lora", "rank"], runs["craft", "rank"]]
    assert script.main([*both, "--methods", "seq_lora:lr=0.5", "--out", out]) == 0
    text = open(out).read()
    assert "| seq_lora [lr=0.5] | 1 |" in text and "| craft [" not in text
    # each run's rank answers read from its record give the intervals (tiny runs: 3 examples a task)
    row = [line for line in text.splitlines() if line.startswith("| seq_lora [lr=0.5] | 1 |")][0]
    assert row.count("[") == 4   # its label's, then AA rank, AA generate and their difference


def test_the_paired_table_takes_whole_seeds_as_the_tables_do_and_an_accuracy_stays_within_0_100():
    script = bench_script("protocols")
    right = lambda k: [1] * k + [0] * (100 - k)   # noqa: E731
    results = []
    for order, seed in (("1", 1), ("2", 1), ("1", 2), ("2", 2)):
        results.append({**planted_run("craft", order, right(2 * seed - 2), right(90)), "seed": seed})
    for order, seed in (("1", 1), ("2", 1), ("1", 2)):   # seq_lora's seed 2 lacks order 2
        results.append({**planted_run("seq_lora", order, right(70), right(60)), "seed": seed})
    rows = script.paired_against(results, "craft")
    # harness.tables.most_pairs: seed 1 on both orders (2 pairs), not seed 2's lone order 1 besides (3)
    assert rows[0].startswith("| seq_lora | 2 | -70.00 [")
    # craft's AA by rank on the 3 (order, seed) pairs every method ran: 0, 0 and 2, whose t tails (1 degree of
    # freedom) reach below 0 unclipped (a difference of accuracies may, an accuracy may not)
    craft = [line for line in script.report(results, "craft").splitlines() if line.startswith("| craft |")][0]
    assert craft.split(" | ")[2].startswith("0.67 [0.00, ")


def test_rows_are_refused_twice_and_left_out_runs_are_named(runs, tmp_path, capsys):
    import shutil
    script = bench_script("protocols")
    twice = str(tmp_path / "twice")
    shutil.copytree(runs["seq_lora", "rank"], twice)
    assert script.main([runs["seq_lora", "rank"], twice, "--out", str(tmp_path / "r.md")]) == 2
    assert "are both seq_lora [lr=0.5] on order bbc+hutto_amazon, seed 1" in capsys.readouterr().err
    assert not os.path.exists(str(tmp_path / "r.md"))
    both = [runs["seq_lora", "rank"], runs["craft", "rank"]]
    assert script.main([*both, "--against", "ewc", "--out", str(tmp_path / "r.md")]) == 2
    assert "--against ewc: no run of that row" in capsys.readouterr().err
    out = str(tmp_path / "report.md")
    assert script.main([*both, "--methods", "seq_lora:lr=0.5,ewc", "--out", out]) == 0
    assert "Not in this report (not among `--methods`): craft [lr=0.3, warmup=0]." in open(out).read()
    assert "no finished run of ewc" in capsys.readouterr().err


def test_kept_reads_the_records_alone_and_names_a_run_without_one(runs, tmp_path):
    import shutil
    script = bench_script("protocols")
    bare = str(tmp_path / "bare")   # its weights are here, but --kept measures nothing
    # without a kept measurement, whether or not an earlier test in this process measured the run (under pytest-xdist
    # this test may run alone on its worker)
    shutil.copytree(runs["craft", "rank"], bare, ignore=shutil.ignore_patterns("protocols.json"))
    script.main([runs["seq_lora", "rank"], "--out", str(tmp_path / "first.md")])   # seq_lora's record is kept
    out = str(tmp_path / "report.md")
    assert script.main([runs["seq_lora", "rank"], bare, "--kept", "--out", out]) == 0
    assert not os.path.exists(os.path.join(bare, "protocols.json"))
    text = open(out).read()
    assert "| seq_lora [lr=0.5] | 1 |" in text and f"1 run(s): {bare}." in text
    assert script.main([bare, "--kept", "--out", str(tmp_path / "none.md")]) == 2
