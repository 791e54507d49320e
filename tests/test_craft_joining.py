"""bench/craft_joining.py follows a task joining a CRAFT group: its columns must be the method's own measures."""
import re

import pytest
from conftest import bench_script


def test_joining_report_follows_the_stop_rules_measures(tmp_path, capsys):
    joining = bench_script("craft_joining")
    out = tmp_path / "joining.md"
    # one group (routing=single); the batch is the group's 4 anchors, so step k+1's batch KL is measured on the
    # state after update k over the same anchors: the "all anchors" KL of step k
    code = joining.main(["--tasks", "bbc,hutto_amazon", "--model", "tiny-llama", "--train-per-task", "16",
                         "--max-input-tokens", "16", "--steps", "3", "--set", "routing=single", "--set",
                         "batch_size=2", "--set", "anchors_per_task=4", "--set", "anchor_batch=4", "--set",
                         "probe_size=4", "--set", "forgetting_budget=0.5", "--out", str(out)])
    assert code == 0, capsys.readouterr().err
    text = out.read_text()
    rows = [[float(x.split("/")[0]) for x in re.findall(r"\| ([-\d.e/]+)", line)]
            for line in text.splitlines() if re.match(r"\| \d+ \|", line)]
    assert [r[0] for r in rows] == [1, 2, 3]
    batch, every = [r[1] for r in rows], [r[2] for r in rows]
    assert batch[0] == 0.0   # before the first update the edit is the group's: no divergence
    assert batch[1:] == pytest.approx(every[:-1], abs=2e-3)   # the table rounds to 3 decimals
    assert "'group': 0" in text and "ended after step 3: the probe's --steps 3. At forgetting_budget 0.5" in text


def test_would_stop_names_the_first_step_each_check_fires():
    would_stop = bench_script("craft_joining").would_stop
    rows = [{"step": 1, "batch_kl": 0.0, "all_kl": 2.9}, {"step": 2, "batch_kl": 2.8, "all_kl": 0.9},
            {"step": 3, "batch_kl": 0.9, "all_kl": 0.2}, {"step": 4, "batch_kl": 1.2, "all_kl": 1.5}]
    # the grouped stream's CB: batch stops on step 2's transient; all waits for a state that stays over budget
    assert would_stop(rows, 1.0) == {"batch": 2, "all": 4}
    assert would_stop(rows, 5.0) == {"batch": None, "all": None}
    assert would_stop(rows, 1.0, kl_term=False) == {"batch": None, "all": None}   # no KL term, no budget stop
