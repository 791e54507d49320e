"""`harness compare`: two folders of hand-made runs with known matrices, paired run for run."""
import json
import os
import shutil

import pytest

from core.errors import UsageError
from harness.cli import main
from harness.compare import compare, markdown
from harness.rundir import write_json
from tests.test_tables import make_run, seq


def grid(root, finals, protocol=None, n_test=20):
    """seq_lora and craft on orders 1 and 2, seeds 1 and 2; finals[(label, order, seed)] = (final a, final b)."""
    for (label, order, seed), (a, b) in finals.items():
        make_run(root, label, label, order, seed, seq(a, b), n_test=n_test, protocol=protocol)


CELLS = [(label, order, seed) for label in ("seq_lora", "craft") for order in ("1", "2") for seed in (1, 2)]


def test_a_planted_shift_is_found_with_its_interval_and_a_folder_against_itself_shows_none(tmp_path):
    a, b = str(tmp_path / "a"), str(tmp_path / "b")
    # 100 examples a task: B's gain is then 20 answers of task a, all one way; at 20 examples it would be 4, which
    # McNemar's exact test does not call significant (p 0.125) and FM's reflected interval does not either
    grid(a, {cell: (60.0, 70.0) for cell in CELLS}, n_test=100)
    # B: craft's final accuracy on task a is 20 points higher everywhere (AA +10, FM -20 on its one old task);
    # seq_lora's moves by +5 on seed 1 and -5 on seed 2 (no shift on average)
    grid(b, {cell: ((80.0 if cell[0] == "craft" else 65.0 if cell[2] == 1 else 55.0), 70.0) for cell in CELLS},
         protocol={"dtype": "bf16"}, n_test=100)
    result = compare(a, b)
    craft, seq_lora, pooled = result["rows"]["craft"], result["rows"]["seq_lora"], result["rows"]["all methods"]
    assert craft["pairs"] == 4 and craft["orders"] == ["1", "2"] and craft["seeds"] == [1, 2]
    assert craft["A"]["AA"] == 65.0 and craft["B"]["AA"] == 75.0
    assert craft["delta_AA"]["mean"] == 10.0 and craft["delta_AA"]["excludes_zero"]
    lo, hi = craft["delta_AA"]["ci"]
    assert 0 < lo <= 10.0 <= hi
    assert craft["delta_FM"]["mean"] == -20.0 and craft["delta_FM"]["excludes_zero"]
    # 20 points of task a's 100 examples = 20 answers changed per run, over 4 runs and 2 tasks of 100
    assert craft["final_answers_changed"] == [80, 800]
    assert seq_lora["delta_AA"]["mean"] == 0.0 and not seq_lora["delta_AA"]["excludes_zero"]
    assert pooled["pairs"] == 8 and pooled["delta_AA"]["mean"] == 5.0
    assert result["differences"] == {"dtype": [["fp32"], ["bf16"]]}
    text = markdown(result)
    assert "dtype: fp32 (A) vs bf16 (B)" in text and "| craft | 4 | 1, 2 | 1, 2 | 65.00 | 75.00 | +10.00 [" in text

    same = compare(a, a)
    for row in same["rows"].values():
        assert row["delta_AA"] == {"mean": 0.0, "ci": [0.0, 0.0], "excludes_zero": False, "pairs": row["pairs"]}
        assert row["final_answers_changed"][0] == 0
    assert same["differences"] == {}


def test_only_runs_present_in_both_folders_are_paired(tmp_path):
    a, b = str(tmp_path / "a"), str(tmp_path / "b")
    grid(a, {cell: (60.0, 70.0) for cell in CELLS})
    grid(b, {("craft", "1", 1): (70.0, 70.0)})
    result = compare(a, b)
    assert list(result["rows"]) == ["craft"]            # one method paired: no pooled row
    assert result["rows"]["craft"]["pairs"] == 1 and result["rows"]["craft"]["delta_AA"]["mean"] == 5.0
    assert result["unpaired"] == {"A": 7, "B": 0}


def test_runs_on_different_test_examples_or_without_counterparts_are_refused(tmp_path, capsys):
    a, b, c = str(tmp_path / "a"), str(tmp_path / "b"), str(tmp_path / "c")
    grid(a, {("craft", "1", 1): (60.0, 70.0)})
    grid(b, {("craft", "1", 1): (60.0, 70.0)}, n_test=40)
    with pytest.raises(UsageError, match="same recorded test examples"):
        compare(a, b)
    grid(c, {("craft", "2", 1): (60.0, 70.0)})
    assert main(["compare", a, c]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "no run of" in err
    assert main(["compare", a, str(tmp_path / "missing")]) == 2


def test_the_command_prints_the_table_or_json(tmp_path, capsys):
    a, b = str(tmp_path / "a"), str(tmp_path / "b")
    grid(a, {("craft", "1", 1): (60.0, 70.0)})
    shutil.copytree(a, b)
    config = os.path.join(b, "craft", "1", "seed1", "config.json")
    with open(config) as f:
        recorded = json.load(f)
    write_json(config, {**recorded, "cache": "off"})
    assert main(["compare", a, b, "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["differences"] == {"cache": [["on"], ["off"]]} and result["rows"]["craft"]["pairs"] == 1
    assert main(["compare", a, b]) == 0
    assert "| craft | 1 |" in capsys.readouterr().out


def test_settings_protocols_and_a_metric_some_pairs_lack(tmp_path):
    a, b = str(tmp_path / "a"), str(tmp_path / "b")
    # craft: a default changed between the folders (lr); the runs still pair, and the change is named
    make_run(a, "craft", "craft", "1", 1, seq(60.0, 70.0), n_test=20, settings={"lr": 0.004})
    make_run(b, "craft", "craft", "1", 1, seq(80.0, 70.0), n_test=20, settings={"lr": 0.1})
    # the same run scored under two protocols in each folder: rank pairs with rank, generate with generate
    make_run(a, "craft-gen", "craft", "1", 1, seq(20.0, 70.0), n_test=20, settings={"lr": 0.004},
             protocol={"eval": "generate"})
    make_run(b, "craft-gen", "craft", "1", 1, seq(40.0, 70.0), n_test=20, settings={"lr": 0.1},
             protocol={"eval": "generate"})
    # mtl trains jointly: no FM; seq_lora has one order on seed 1 and two on seed 2 (a mean over its 3 pairs)
    for root, final in ((a, 70.0), (b, 75.0)):
        make_run(root, "mtl", "mtl", "1", 1, {"base": [50.0, 40.0], "all": [final, 80.0]}, n_test=20)
    for root, shift in ((a, 0.0), (b, 10.0)):
        for order, seed, final in (("1", 1, 60.0), ("1", 2, 50.0), ("2", 2, 40.0)):
            make_run(root, "seq_lora", "seq_lora", order, seed, seq(final + shift, 70.0), n_test=20)
    result = compare(a, b)
    rows = result["rows"]
    assert rows["craft (eval rank, eval_split test)"]["delta_AA"]["mean"] == 10.0
    assert rows["craft (eval generate, eval_split test)"]["delta_AA"]["mean"] == 10.0
    assert result["differences"] == {"craft lr": [[0.004], [0.1]]}
    assert rows["mtl (eval rank, eval_split test)"]["delta_FM"] is None
    pooled = rows["all methods"]
    assert pooled["pairs"] == 6 and pooled["delta_FM"]["pairs"] == 5      # mtl's pair gives no FM
    # seq_lora: every pair +5 AA; FM: seed 1 -10, seed 2 -10 twice
    seq_row = rows["seq_lora (eval rank, eval_split test)"]
    assert seq_row["delta_AA"]["mean"] == 5.0 and seq_row["delta_FM"]["mean"] == -10.0
    assert seq_row["seeds"] == [1, 2] and seq_row["pairs"] == 3


def test_a_folder_with_two_runs_of_one_key_is_refused(tmp_path):
    a = str(tmp_path / "a")
    make_run(a, "craft", "craft", "1", 1, seq(60.0, 70.0), n_test=20)
    make_run(a, "craft-copy", "craft", "1", 1, seq(60.0, 70.0), n_test=20)
    with pytest.raises(UsageError, match=r"craft-copy/1/seed1 ran the same settings \(craft\) on order 1, seed 1"):
        compare(a, a)


def test_two_runs_of_one_spec_in_a_folder_are_refused_even_where_their_settings_differ(tmp_path):
    """craft on order 1, seed 1, made before a default moved and again after it (another folder of the same spec):
    two rows to the tables, but which would pair with the other folder's craft?"""
    from methods.craft import CRAFT
    a = str(tmp_path / "a")
    make_run(a, "craft", "craft", "1", 1, seq(60.0, 70.0), n_test=20, settings=CRAFT.resolve_settings({}))
    make_run(a, "craft-then", "craft", "1", 1, seq(60.0, 70.0), n_test=20,
             settings={**CRAFT.resolve_settings({}), "epochs": 1})
    with pytest.raises(UsageError, match="holds two runs of craft, order 1, seed 1 under one protocol"):
        compare(a, a)


def test_runs_recorded_before_predictions_pair_on_their_sizes_without_an_interval(tmp_path):
    a, b = str(tmp_path / "a"), str(tmp_path / "b")
    rows = {"base": [50.0, 25.0], "a": [75.0, 25.0], "b": [50.0, 75.0]}
    make_run(a, "craft", "craft", "1", 1, rows)                             # no predictions, 4 test examples
    make_run(b, "craft", "craft", "1", 1, {**rows, "b": [75.0, 75.0]}, n_test=4)
    delta = compare(a, b)["rows"]["craft"]["delta_AA"]
    assert delta["mean"] == 12.5 and delta["ci"] is None
    c = str(tmp_path / "c")
    make_run(c, "craft", "craft", "1", 1, {"base": [40.0, 40.0], "a": [80.0, 40.0], "b": [60.0, 80.0]}, n_test=5)
    with pytest.raises(UsageError, match="same recorded test examples"):
        compare(a, c)


def test_pair_by_label_pairs_the_same_settings_spelled_two_ways(tmp_path, capsys):
    """A folder that spelled seq_lora's three epochs out (`seq_lora+epochs=3`, made before they became its default)
    and one of today's bare `seq_lora`: by spec nothing pairs; by label they are the same runs' settings."""
    a, b = str(tmp_path / "a"), str(tmp_path / "b")
    for order in ("1", "2"):
        for seed in (1, 2):
            make_run(a, "seq_lora+epochs=3", "seq_lora", order, seed, seq(60.0, 70.0), args={"epochs": "3"},
                     n_test=20)
            make_run(b, "seq_lora", "seq_lora", order, seed, seq(70.0, 70.0), n_test=20)
    with pytest.raises(UsageError, match="has a counterpart"):
        compare(a, b)
    result = compare(a, b, pair_by="label")
    assert list(result["rows"]) == ["seq_lora"] and result["rows"]["seq_lora"]["pairs"] == 4
    assert result["rows"]["seq_lora"]["delta_AA"]["mean"] == 5.0 and result["differences"] == {}
    assert main(["compare", a, b, "--pair-by", "label"]) == 0
    assert "| seq_lora | 4 | 1, 2 | 1, 2 | 65.00 | 70.00 | +5.00 [" in capsys.readouterr().out
    assert main(["compare", a, b, "--pair-by", "method"]) == 2


def test_pairs_whose_examples_hash_apart_or_whose_record_is_missing_are_refused(tmp_path):
    # the same sizes and gold labels, other texts (two data folders): config.json's hash tells them apart; and a
    # record that keeps nothing of a task's examples pairs with nothing
    a, b = str(tmp_path / "a"), str(tmp_path / "b")
    grid(a, {("craft", "1", 1): (60.0, 70.0)})
    grid(b, {("craft", "1", 1): (60.0, 70.0)})

    def edit(root, change):
        path = os.path.join(root, "craft", "1", "seed1", "config.json")
        config = json.load(open(path))
        change(config["data"])
        write_json(path, config)
    edit(a, lambda data: data["a"].update(test_fingerprint="aa"))
    edit(b, lambda data: data["a"].update(test_fingerprint="aa"))
    assert compare(a, b)["rows"]["craft"]["pairs"] == 1
    edit(b, lambda data: data["a"].update(test_fingerprint="bb"))
    with pytest.raises(UsageError, match="same recorded test examples of a"):
        compare(a, b)
    for missing in (lambda data: data.pop("b"), lambda data: data["b"].clear()):
        shutil.rmtree(b)
        grid(b, {("craft", "1", 1): (60.0, 70.0)})
        edit(b, missing)
        with pytest.raises(UsageError, match="same recorded test examples of b"):
            compare(a, b)
        with pytest.raises(UsageError, match="same recorded test examples of b"):
            compare(b, a)
