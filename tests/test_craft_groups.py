"""bench/craft_groups.py reads what training did to each CRAFT task and its group from run records alone."""
import json
import os

import pytest
from conftest import bench_script

from core.errors import UsageError

ORDER = ["a", "b", "c"]


def _run(root, label, seed, rows, diagnostics=None, method="craft", state="finished"):
    """A run record in the sweep layout: rows = [base, after a, after b, after c] as {task: accuracy}."""
    path = os.path.join(root, label, "a+b+c", f"seed{seed}")
    os.makedirs(path)
    names = ["base"] + ORDER
    with open(os.path.join(path, "status.json"), "w") as f:
        json.dump({"state": state, "rows": {n: {"accuracy": r} for n, r in zip(names, rows) if r is not None}}, f)
    with open(os.path.join(path, "config.json"), "w") as f:
        json.dump({"method": method, "tasks": ORDER}, f)
    with open(os.path.join(path, "method.json"), "w") as f:
        json.dump({"diagnostics": diagnostics or {}}, f)
    return path


# a and c share group 0, b opens group 1; c stops on the budget, merged at weight 0.6
DIAGNOSTICS = {"routing": {"a": {"group": 0}, "b": {"group": 1}, "c": {"group": 0}},
               "training": {"a": {"stop_step": 25, "stop_reason": "epochs done"},
                            "b": {"stop_step": 12, "stop_reason": "task loss settled (0.5 -> 0.5 over 5-step windows)"},
                            "c": {"stop_step": 2, "stop_reason": "KL 4.0269 reached the forgetting budget 1.0"}},
               "merge": {"a": {"weight": 1.0}, "b": {"weight": 1.0}, "c": {"weight": 0.6, "kl_after": 0.85}}}
CRAFT_ROWS = [{"a": 50, "b": 40, "c": 30}, {"a": 80, "b": 45}, {"a": 78, "b": 70, "c": 60},
              {"a": 60, "b": 69, "c": 55}]


def test_gains_and_group_change_come_from_the_matrix(tmp_path, capsys):
    groups = bench_script("craft_groups")
    root = str(tmp_path / "runs")
    craft = _run(root, "craft", 1, CRAFT_ROWS, DIAGNOSTICS)
    _run(root, "seq_lora", 1, [{"a": 50, "b": 40, "c": 30}, {"a": 90, "b": 40}, {"a": 70, "b": 85, "c": 35},
                               {"a": 60, "b": 70, "c": 80}], method="seq_lora")
    a, b, c = groups.task_records(craft, reference="seq_lora")
    # a opens group 0: 50 -> 80; b opens group 1: 45 -> 70; c joins a's group: 60 -> 55, and a goes 78 -> 60
    assert (a["joins"], a["gain"], a["group_change"], a["reference_gain"]) == (False, 30, None, 40)
    assert (b["joins"], b["gain"], b["why"], b["reference_gain"]) == (False, 25, "settled", 45)
    assert (c["joins"], c["earlier"], c["gain"], c["group_change"]) == (True, ["a"], -5, -18)
    assert (c["why"], c["weight"], c["reference_gain"]) == ("budget (KL 4.03)", 0.6, 45)
    joins, opens = groups.summary([a, b, c])
    assert (joins["joins"], joins["tasks"], joins["gain"], joins["stopped_early"]) == (True, 1, -5, 1)
    assert (opens["tasks"], opens["gain"], opens["paired"], opens["reference_gain"]) == (2, 27.5, 2, 42.5)
    # the second seed has no reference run: it counts in the means, not in the paired columns
    _run(root, "craft", 2, CRAFT_ROWS[:3] + [{"a": 70, "b": 69, "c": 75}], DIAGNOSTICS)
    _run(root, "craft", 3, CRAFT_ROWS, DIAGNOSTICS, state="running")   # left out, and said so
    out = tmp_path / "groups.md"
    runs = [os.path.join(root, "craft", "a+b+c", f"seed{s}") for s in (1, 2, 3)]
    # seed 1 given twice (a second spelling): counted once
    assert groups.main(runs + [runs[0] + "/", os.path.join(root, "seq_lora", "a+b+c", "seed1"),
                               "--reference", "seq_lora", "--out", str(out)]) == 0
    err = capsys.readouterr().err
    assert "seed3: not finished, left out" in err
    assert "no finished seq_lora run of the same stream and seed (one row per task) for 1 of 2 CRAFT run(s)" in err
    text = out.read_text()
    # joins: -5 (seed 1) and +15 (seed 2, 60 -> 75): mean +5.00; group Δ -18 and -8; paired: seed 1 only
    assert "| craft | a+b+c | yes | 2 | +5.00 | -13.00 | 2 | 1 | -5.00 | +45.00 |" in text
    assert text.count("| 60 -> 55 (-5) | -18.00 | – | +45 |") == 1   # – : these records keep no predictions
    # the reference may live in another folder of runs (own gains there: a +10, b +10, c +20)
    elsewhere = str(tmp_path / "elsewhere")
    _run(elsewhere, "seq_lora", 2, [{"a": 1, "b": 2, "c": 3}, {"a": 11, "b": 2}, {"b": 12, "c": 13}, {"c": 33}],
         method="seq_lora")
    a2, b2, c2 = groups.task_records(runs[1], "seq_lora", elsewhere)
    assert (a2["reference_gain"], b2["reference_gain"], c2["reference_gain"]) == (10, 10, 20)


def test_a_record_without_routing_claims_no_join(tmp_path):
    groups = bench_script("craft_groups")
    path = _run(str(tmp_path), "craft", 1, CRAFT_ROWS, {"training": DIAGNOSTICS["training"]})
    records = groups.task_records(path)
    assert [r["joins"] for r in records] == [False, False, False] and records[2]["group_change"] is None
    assert [r["why"] for r in records] == ["epochs", "settled", "budget (KL 4.03)"]


def test_no_craft_run_or_no_run_is_an_error(tmp_path, capsys):
    groups = bench_script("craft_groups")
    other = _run(str(tmp_path), "seq_lora", 1, CRAFT_ROWS, method="seq_lora")
    assert groups.main([other]) == 2
    assert "no finished CRAFT run among those given" in capsys.readouterr().err
    assert groups.main([str(tmp_path / "nowhere")]) == 2
    assert "nowhere: not a run directory" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        groups.main([])


def test_the_groups_changed_answers_are_counted_from_the_rows_predictions(tmp_path):
    """The answers a join changed in its group's earlier tasks are counted between the row before it and its own
    row (not any earlier row), and a row pair that keeps different numbers of answers is refused."""
    groups = bench_script("craft_groups")
    path = _run(str(tmp_path), "craft", 1, CRAFT_ROWS, DIAGNOSTICS)
    status_path = os.path.join(path, "status.json")
    with open(status_path) as f:
        status = json.load(f)
    # a's answers before c trains (row b) and after (row c): 2 of 4 move; row a (two rows back) differs from row c
    # in all 4, so counting from the wrong row shows
    for row, a_answers in (("b", "0011"), ("c", "0110")):
        status["rows"][row]["predictions"] = {"a": a_answers, "b": "1111"}
    status["rows"]["a"]["predictions"] = {"a": "1001"}   # b opens its own group: nothing of a's is counted for it
    with open(status_path, "w") as f:
        json.dump(status, f)
    a, b, c = groups.task_records(path)
    assert (a["group_answers_changed"], b["group_answers_changed"], c["group_answers_changed"]) == (None, None, (2, 4))
    assert "| 2 of 4 (50%) |" in groups.report([a, b, c], None)
    status["rows"]["c"]["predictions"]["a"] = "0"   # a row cut short: refused, not broadcast against the other
    with open(status_path, "w") as f:
        json.dump(status, f)
    with pytest.raises(UsageError, match="rows b and c keep different numbers of answers"):
        groups.task_records(path)
    # a record without predictions (made before rows kept them) says so with a dash, not a zero
    for row in ("b", "c"):
        del status["rows"][row]["predictions"]
    with open(status_path, "w") as f:
        json.dump(status, f)
    assert groups.task_records(path)[2]["group_answers_changed"] is None


def test_the_kl_is_ranked_against_the_joins_it_kept_and_not_against_discarded_ones():
    """Spearman's rho of the KL after against a join's answer changes and group Δ, over the joins whose merge kept
    some edit: a planted monotone relation gives rho 1 and -1; a weight-0 join (KL 0, nothing changed), which
    would agree with any ranking, is left out; a non-join and a join without answers are left out too."""
    groups = bench_script("craft_groups")

    def join(kl, changed, delta, weight=1.0):
        return {"joins": True, "weight": weight, "kl_after": kl, "group_answers_changed": changed,
                "group_change": delta}
    planted = [join(0.01, (10, 100), -1.0), join(0.02, (20, 100), -2.0), join(0.005, (5, 100), 0.5),
               join(0.04, (30, 100), -4.0)]
    ignored = [join(0.0, (0, 100), 0.0, weight=0.0), join(0.03, None, -3.0),
               {"joins": False, "weight": 1.0, "kl_after": None, "group_answers_changed": None, "group_change": None}]
    ranks = groups.kl_ranks(planted + ignored)
    assert ranks["n"] == 4
    assert ranks["changed"][0] == pytest.approx(1.0) and ranks["group_change"][0] == pytest.approx(-1.0)
    shuffled = [join(0.01, (30, 100), 0.0), join(0.02, (5, 100), -1.0), join(0.03, (20, 100), 1.0)]
    assert groups.kl_ranks(shuffled)["changed"][0] == pytest.approx(-0.5)
    assert groups.kl_ranks(planted[:2])["changed"] == (None, None)   # fewer than 3 joins: no rho
    assert "| the share of the group's answers changed | 1.00 |" in groups.report(
        [dict(r, run="x/craft/a+b+c/seed1", order="a+b+c", task="c", earlier=["a"], steps=75, why="epochs",
              before=1.0, after=2.0, gain=1.0, reference_gain=None, reference_found=False) for r in planted], None)
