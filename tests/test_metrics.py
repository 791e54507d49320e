import glob
import json
import os
import subprocess
import sys

import pandas as pd
import pytest

from harness import metrics
from tests.conftest import ROOT
from tests.test_cli import fails

# A 3-task stream with a base row, computed by hand below.
#            t1    t2    t3
# base       10    20    30
# t1         80    25    35
# t2         60    90    40
# t3         70    50    85
R = pd.DataFrame([[10, 20, 30], [80, 25, 35], [60, 90, 40], [70, 50, 85]],
                 index=["base", "t1", "t2", "t3"], columns=["t1", "t2", "t3"], dtype=float)


def test_metrics_against_hand_computation():
    v = metrics.compute(R)
    assert v["AA"] == pytest.approx((70 + 50 + 85) / 3)
    # BWT = mean over i<T of R[T][i] - R[i][i] = ((70-80) + (50-90)) / 2
    assert v["BWT"] == pytest.approx(-25.0)
    # FM = mean over i<T of max_{i<=l<T} R[l][i] - R[T][i]: t1: max(80, 60) - 70 = 10; t2: 90 - 50 = 40
    assert v["FM"] == pytest.approx(25.0)
    # FWT = mean over i>1 of R[i-1][i] - R[0][i]: t2: 25 - 20 = 5; t3: 40 - 30 = 10
    assert v["FWT"] == pytest.approx(7.5)
    # LA = mean over i of R[i][i]: (80 + 90 + 85) / 3
    assert v["LA"] == pytest.approx(85.0)
    assert v["AA"] == pytest.approx(v["LA"] + (3 - 1) / 3 * v["BWT"])   # what is learned, less what is lost


def test_fm_differs_from_minus_bwt_when_accuracy_peaks_late():
    # t1 peaks after t2 (95), not right after it was learned (80): FM counts the peak, BWT does not.
    R2 = pd.DataFrame([[80, 20, 10], [95, 90, 10], [70, 60, 85]], index=["t1", "t2", "t3"],
                      columns=["t1", "t2", "t3"], dtype=float)
    v = metrics.compute(R2)
    assert v["BWT"] == pytest.approx(((70 - 80) + (60 - 90)) / 2)      # -20
    assert v["FM"] == pytest.approx(((95 - 70) + (90 - 60)) / 2)       # 27.5
    assert v["FM"] != pytest.approx(-v["BWT"])
    assert v["FWT"] is None  # no base row


def test_single_trained_row_has_only_aa():
    R3 = pd.DataFrame([[10, 20], [70, 80]], index=["base", "all"], columns=["a", "b"], dtype=float)
    v = metrics.compute(R3)
    assert v == {"AA": 75.0, "BWT": None, "FM": None, "FWT": None, "LA": None}


def test_metrics_cli_json_reads_matrix_csv(tmp_path):
    path = tmp_path / "matrix.csv"
    path.write_text("after,t1,t2,t3\nbase,10,20,30\nt1,80,25,35\nt2,60,90,40\nt3,70,50,85\n")
    out = subprocess.run([sys.executable, "-m", "harness", "metrics", str(tmp_path), "--json"], cwd=ROOT,
                         capture_output=True, text=True, check=True).stdout
    values = json.loads(out)
    # a bare matrix has no per-example predictions: its intervals are null
    assert values.keys() == {"AA", "BWT", "FM", "FWT", "LA", "AA_ci", "BWT_ci", "FM_ci", "FWT_ci", "LA_ci"}
    assert values["AA_ci"] is None
    assert values["BWT"] == -25.0 and values["FM"] == 25.0 and values["FWT"] == 7.5


def test_metrics_cli_rejects_a_non_matrix(tmp_path):
    bad = tmp_path / "x.csv"
    bad.write_text("a,b\n1,2\n")
    p = subprocess.run([sys.executable, "-m", "harness", "metrics", str(bad)], cwd=ROOT, capture_output=True, text=True)
    assert p.returncode == 2 and p.stderr.count("\n") == 1 and "Traceback" not in p.stderr


def test_needed_cells_are_what_the_metrics_read():
    tasks = ["a", "b", "c", "d"]
    assert [metrics.needed_cells(tasks, row) for row in range(5)] == [
        tasks, ["a", "b"], ["a", "b", "c"], tasks, tasks]
    fifteen = [str(i) for i in range(15)]
    assert sum(len(metrics.needed_cells(fifteen, row)) for row in range(1, 16)) == 134
    # blank out every other cell of a full matrix: the metrics do not move
    R = pd.DataFrame([[10, 20, 30, 40], [80, 25, 35, 45], [70, 90, 30, 50], [60, 85, 95, 55], [50, 75, 85, 99]],
                     index=["base", "a", "b", "c", "d"], columns=tasks, dtype=float)
    blank = R.copy()
    for row, name in enumerate(R.index):
        blank.loc[name, [t for t in tasks if t not in metrics.needed_cells(tasks, row)]] = float("nan")
    assert blank.isna().sum().sum() == 3 and metrics.compute(blank) == metrics.compute(R)


HEADER = "after,t1,t2,t3\n"
BASE = "base,10,20,30\n"
MATRICES = {   # what `harness metrics` must refuse, and the words that say why
    "a header with no rows": (HEADER, "has no trained row"),
    "only the base row": (HEADER + BASE, "has no trained row"),
    "rows that stop before the last task": (HEADER + BASE + "t1,80,25,35\nt2,60,90,40\n", "stops after task 't2'"),
    "a row too many": (HEADER + BASE + "t1,1,2,3\nt2,1,2,3\nt3,1,2,3\nt4,1,2,3\n", "4 trained rows for 3 tasks"),
    "rows out of the columns' order": (HEADER + BASE + "t2,1,2,3\nt1,1,2,3\nt3,1,2,3\n", "1 is 't2', expected 't1'"),
    "a non-numeric cell": (HEADER + BASE + "t1,80,x,35\nt2,1,2,3\nt3,1,2,3\n", "cell (t1, t2) is 'x'"),
    "a blank cell a metric reads": (HEADER + BASE + "t1,80,25,35\nt2,60,,40\nt3,1,2,3\n", "cell (t2, t2) is blank"),
    "an accuracy over 100": (HEADER + BASE + "t1,80,250,35\nt2,1,2,3\nt3,1,2,3\n", "is 250.0, not an accuracy"),
    "nan": (HEADER + BASE + "t1,80,nan,35\nt2,1,2,3\nt3,1,2,3\n", "is 'nan', not an accuracy"),
    "a short line": (HEADER + BASE + "t1,80,25\nt2,1,2,3\nt3,1,2,3\n", "line 3 has 3 fields"),
    "a task named twice": ("after,t1,t1,t3\n" + BASE + "t1,1,2,3\nt1,1,2,3\nt3,1,2,3\n", "repeated task name"),
    "base after a trained row": (HEADER + "t1,1,2,3\n" + BASE + "t2,1,2,3\nt3,1,2,3\n", "'base' row must come first"),
    "a header naming no task": ("after\nbase\n", "names no task"),
    "no header": ("", "is not a matrix.csv"),
}


@pytest.mark.parametrize("case", MATRICES)
def test_metrics_refuses_a_matrix_it_cannot_compute(capsys, tmp_path, case):
    text, pattern = MATRICES[case]
    (tmp_path / "matrix.csv").write_text(text)
    fails(capsys, ["metrics", str(tmp_path)], pattern)


def test_metrics_reads_a_joint_row_and_blank_cells_no_metric_reads(tmp_path):
    (tmp_path / "joint.csv").write_text("after,t1,t2\nbase,10,20\nall,70,80\n")
    assert metrics.compute(metrics.read_matrix(str(tmp_path / "joint.csv")))["AA"] == 75.0
    # --matrix needed: R[1][3] is read by no metric
    (tmp_path / "needed.csv").write_text(HEADER + BASE + "t1,80,25,\nt2,60,90,40\nt3,70,50,85\n")
    assert metrics.compute(metrics.read_matrix(str(tmp_path / "needed.csv"))) == metrics.compute(R)


def test_every_committed_matrix_reads():
    paths = glob.glob(os.path.join(ROOT, "results", "runs", "**", "matrix.csv"), recursive=True)
    for path in paths:
        values = metrics.compute(metrics.read_matrix(path))
        assert values["AA"] is not None, path


def test_fm_is_negative_when_a_task_ends_above_its_peak_and_ignores_rows_before_it_was_learned():
    #            t1    t2    t3
    # t1         50    95    10      t2 scores 95 before it is learned (a row FM must not read)
    # t2         40    60    10
    # t3         70    55    80
    R3 = pd.DataFrame([[50, 95, 10], [40, 60, 10], [70, 55, 80]], index=["t1", "t2", "t3"],
                      columns=["t1", "t2", "t3"], dtype=float)
    # t1: max(50, 40) - 70 = -20 (it ends above its peak: negative, not clipped at 0); t2: 60 - 55 = 5, not 95 - 55
    assert metrics.compute(R3)["FM"] == pytest.approx((-20 + 5) / 2)
