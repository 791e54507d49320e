"""bench/task_gains.py: each task's accuracy right after training, against its majority class and paired across
runs, on planted records."""
import json
import os
import sys

import pytest

from core.errors import UsageError
from tests.conftest import ROOT
from tests.test_tables import make_run

sys.path.insert(0, os.path.join(ROOT, "bench"))
import task_gains  # noqa: E402

N = 100
GOLD = "01" * (N // 2)          # two balanced classes: the majority class scores 50%


def answers(right: int) -> str:
    """Predictions right on the first `right` examples, wrong on the rest."""
    return "".join(g if i < right else str(1 - int(g)) for i, g in enumerate(GOLD))


def plant(root, label, rows, fingerprint="same", method="per_task", order="a+b"):
    """A run of tasks a, b whose rows hold `right` examples of N each (accuracy = right, in %)."""
    path = make_run(root, label, method, order, 1, {r: [float(v) for v in vals] for r, vals in rows.items()},
                    n_test=N, bound=True)
    config_file, status_file = os.path.join(path, "config.json"), os.path.join(path, "status.json")
    config, status = (json.load(open(f)) for f in (config_file, status_file))
    for task in ("a", "b"):
        config["data"][task].update(gold=GOLD, test_fingerprint=fingerprint)
    for row, vals in rows.items():
        status["rows"][row]["predictions"] = {t: answers(v) for t, v in zip(("a", "b"), vals)}
    json.dump(config, open(config_file, "w"))
    json.dump(status, open(status_file, "w"))
    return path


def test_a_planted_gain_is_found_and_an_identical_run_shows_none(tmp_path):
    # after b, a has moved (40 and 70): the reading must take a's own row, right after a
    small = plant(str(tmp_path / "200"), "per_task", {"base": [50, 50], "a": [50, 50], "b": [40, 52]})
    large = plant(str(tmp_path / "1000"), "per_task", {"base": [50, 50], "a": [80, 50], "b": [70, 52]})
    rows = task_gains.task_gains([task_gains.load_run(p) for p in (small, small, large)])
    a, b = rows
    assert a["majority"] == 50.0 and a["examples"] == N
    assert a["accuracy"] == [50.0, 50.0, 80.0] and a["above"] == [False, False, True]   # 80/100 against 50%
    (same, same_ci), (gain, gain_ci) = a["gains"]
    assert same == 0.0 and same_ci == (0.0, 0.0)                   # a run against itself: no spread at all
    assert gain == pytest.approx(30.0) and 20.0 < gain_ci[0] < 30.0 < gain_ci[1] < 40.0
    # b was scored right after its own stage (row b: 52), not in a's row (50)
    assert b["accuracy"] == [52.0, 52.0, 52.0] and b["above"] == [False] * 3


def test_joint_training_is_read_in_its_one_row_and_main_prints_the_table(tmp_path, capsys):
    stream = plant(str(tmp_path / "s"), "per_task", {"base": [50, 50], "a": [50, 50], "b": [40, 52]})
    joint = plant(str(tmp_path / "j"), "mtl", {"base": [50, 50], "all": [70, 60]}, method="mtl")
    assert task_gains.main([stream, joint]) == 0
    out = capsys.readouterr().out
    assert "| a | 50.0 | 50.0 | 70.0 * | +20.0 [" in out       # a: 70/100 against 50%, 20 more than a's own row
    assert "| b | 50.0 | 52.0 | 60.0 | +8.0 [" in out          # 60/100 is not above 50% at 2.5%
    assert "run 2: " + joint in out


def test_runs_scored_on_other_examples_or_unfinished_are_refused(tmp_path, capsys):
    one = plant(str(tmp_path / "x"), "per_task", {"base": [50, 50], "a": [50, 50], "b": [50, 52]})
    other = plant(str(tmp_path / "y"), "per_task", {"base": [50, 50], "a": [60, 50], "b": [60, 52]},
                  fingerprint="another draw")
    with pytest.raises(UsageError, match="different examples"):
        task_gains.task_gains([task_gains.load_run(p) for p in (one, other)])
    elsewhere = plant(str(tmp_path / "z"), "per_task", {"base": [50, 50], "a": [60, 50], "b": [60, 52]}, order="2")
    with pytest.raises(UsageError, match="has order '2'"):   # another stream: its own row a is not this a
        task_gains.task_gains([task_gains.load_run(p) for p in (one, elsewhere)])
    assert task_gains.main([one, str(tmp_path / "nothing")]) == 2
    assert task_gains.main([one]) == 2
    assert "at least two" in capsys.readouterr().err


def test_a_pooled_difference_counts_each_example_once_and_names_unknown_tasks(tmp_path, capsys):
    one = plant(str(tmp_path / "x"), "per_task", {"base": [50, 50], "a": [50, 50], "b": [40, 52]})
    two = plant(str(tmp_path / "y"), "per_task", {"base": [50, 50], "a": [80, 50], "b": [70, 42]})
    rows = task_gains.task_gains([task_gains.load_run(p) for p in (one, two)])
    (alone, alone_ci), = task_gains.pooled_gains(rows, ["a"])
    assert (alone, alone_ci) == rows[0]["gains"][0]                # one task pooled: its own row
    (both, both_ci), = task_gains.pooled_gains(rows, ["a", "b"])
    assert both == pytest.approx((30.0 - 10.0) / 2)                # +30 on a's 100 examples, -10 on b's 100
    assert both_ci[0] < both < both_ci[1]
    assert task_gains.main(["--pool", "a, b", one, two]) == 0
    assert "| a+b (200 examples) | - | - | - | +10.0 [" in capsys.readouterr().out
    assert task_gains.main(["--pool", "a,c", one, two]) == 2
    assert "--pool names c" in capsys.readouterr().err
