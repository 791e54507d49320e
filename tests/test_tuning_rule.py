"""bench/tuning_rule.py on hand-made runs whose paired differences are known: the rule's verdicts."""
import os
import subprocess
import sys

import pytest

from tests.conftest import ROOT
from tests.test_tables import make_run, seq

sys.path.insert(0, os.path.join(ROOT, "bench"))
import tuning_rule  # noqa: E402

ORDERS = ["x1", "x2"]
N_TEST = 20      # accuracies in whole examples: multiples of 5


def stream(root, args, finals, seeds=(1, 2, 3), first_a=80.0, n_test=N_TEST):
    """seq_lora runs with `args` on both orders; finals: seed -> (final a, final b). n_test None: runs that kept
    no per-example predictions."""
    folder = "seq_lora" + "".join(f"+{k}={v}" for k, v in args.items())
    for seed in seeds:
        for order in ORDERS:
            make_run(root, folder, "seq_lora", order, seed, seq(*finals[seed], first_a=first_a), args=args,
                     n_test=n_test, test_size=N_TEST)   # without predictions: the same examples, no gold kept


@pytest.fixture(scope="module")
def verdicts(tmp_path_factory):
    root = str(tmp_path_factory.mktemp("rule") / "runs")
    same = {s: (60.0, 60.0) for s in (1, 2, 3)}
    stream(root, {}, same)                                                     # today's defaults: AA 60, FM 20
    stream(root, {"lr": "0.003"}, {s: (80.0, 80.0) for s in (1, 2, 3)})        # +20 AA, -20 FM on every seed
    stream(root, {"lr": "0.002"}, {1: (80.0, 80.0), 2: (80.0, 80.0)}, seeds=(1, 2))
    stream(root, {"lr": "0.004"}, {1: (80.0, 80.0), 2: (80.0, 80.0), 3: (40.0, 40.0)})
    # more accurate (AA 80) but forgets more: a learns to 100 and ends at 60 (FM 40 against 20)
    stream(root, {"lr": "0.0003"}, {s: (60.0, 100.0) for s in (1, 2, 3)}, first_a=100.0)
    stream(root, {"lr": "0.005"}, {1: (80.0, 80.0)}, seeds=(1,))
    stream(root, {"epochs": "1"}, {s: (40.0, 40.0) for s in (1, 2, 3)})       # the former defaults, replaced
    # +5 on seed 1, -5 on seed 2: the interval over seeds covers 0
    stream(root, {"lr": "0.007"}, {1: (65.0, 65.0), 2: (55.0, 55.0), 3: (65.0, 65.0)})
    stream(root, {"lr": "0.006"}, {s: (80.0, 80.0) for s in (1, 2, 3)}, n_test=None)
    # a variant tried under the former defaults, better than them on every seed
    stream(root, {"epochs": "1", "lr": "0.003"}, {s: (60.0, 60.0) for s in (1, 2, 3)})
    stream(root, {"lr": "0.008"}, {1: (40.0, 40.0)}, seeds=(1,))                # -20 AA on its one seed
    for order in ORDERS:    # a folder whose runs were made at other settings than its name resolves to today
        make_run(root, "seq_lora+lr=0.0005", "seq_lora", order, 1, seq(40.0, 40.0), args={"lr": "0.0009"},
                 n_test=N_TEST)
    rows = tuning_rule.rule_rows(root, ORDERS)
    return root, {row["variant"]: row for row in rows}


def test_each_verdict_of_the_rule(verdicts):
    _, rows = verdicts
    assert rows["seq_lora [lr=0.003]"]["verdict"] == "passes"
    assert rows["seq_lora [lr=0.002]"]["verdict"] == "needs seed 3"
    assert rows["seq_lora [lr=0.004]"]["verdict"] == "fails: seed 3's ΔAA does not favour it"
    assert rows["seq_lora [lr=0.0003]"]["verdict"] == "fails: ΔFM's interval excludes 0 against it"
    assert rows["seq_lora [lr=0.005]"]["verdict"] == "incomplete"
    assert rows["seq_lora (one-epoch defaults)"]["verdict"] == "replaced by seq_lora"
    assert rows["seq_lora [lr=0.007]"]["verdict"] == "fails: ΔAA's interval does not exclude 0 in its favour"
    assert rows["seq_lora [lr=0.006]"]["verdict"] == "no intervals"
    old = rows["seq_lora (one-epoch defaults) [lr=0.003]"]
    assert old["against"] == "seq_lora (one-epoch defaults)"
    assert old["verdict"] == "passes (under seq_lora (one-epoch defaults), since replaced)"
    assert {row["against"] for label, row in rows.items() if label != old["variant"]} == {"seq_lora"}


def test_the_numbers_are_the_paired_differences(verdicts):
    _, rows = verdicts
    good = rows["seq_lora [lr=0.003]"]
    assert (good["AA"].mean, good["FM"].mean, good["AA3"].mean) == (20.0, -20.0, 20.0)
    assert good["AA"].bounds[0] > 0 and good["FM"].bounds[1] < 0
    covering = rows["seq_lora [lr=0.007]"]
    assert covering["AA"].mean == 0.0 and covering["AA"].bounds[0] < 0 < covering["AA"].bounds[1]
    assert covering["AA3"].mean == 5.0     # the third seed ran: shown, though the variant failed before it
    wavering = rows["seq_lora [lr=0.004]"]
    assert wavering["AA"].mean == 20.0 and wavering["AA3"].mean == -20.0
    assert rows["seq_lora [lr=0.0003]"]["FM"].mean == 20.0 and rows["seq_lora [lr=0.0003]"]["AA"].mean == 20.0


def test_the_command_writes_its_table_and_refuses_a_missing_folder(verdicts, tmp_path):
    root, _ = verdicts
    out = tmp_path / "rule.md"
    script = os.path.join(ROOT, "bench", "tuning_rule.py")
    done = subprocess.run([sys.executable, script, root, "--orders", ",".join(ORDERS), "--out", str(out)],
                          capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert "| seq_lora [lr=0.003] | seq_lora | +20.00 [" in out.read_text()
    for args, said in (([str(tmp_path / "nowhere")], "no runs folder"), ([root, "--orders", ","], "no orders")):
        bad = subprocess.run([sys.executable, script, *args], capture_output=True, text=True)
        assert bad.returncode == 2 and bad.stderr.count("\n") == 1 and said in bad.stderr, bad.stderr


def test_a_row_says_how_many_of_its_pairs_cross_kernel_sets(tmp_path):
    # the defaults on AVX2 for seed 1 and AVX512 for seeds 2-4, the variant on AVX512 throughout: 2 of the 6 pairs
    # the Δ columns use cross (seed 4, in none of them, is not counted); a variant without a Δ gets no cell
    root = str(tmp_path / "runs")
    avx512 = {"cpu": "EPYC", "torch_cpu_capability": "AVX512", "threads": 2}
    for seed in (1, 2, 3, 4):
        for order in ORDERS:
            machine = {**avx512, "torch_cpu_capability": "AVX2"} if seed in (1, 4) else avx512
            make_run(root, "seq_lora", "seq_lora", order, seed, seq(60.0, 60.0), n_test=N_TEST, machine=machine)
            make_run(root, "seq_lora+lr=0.003", "seq_lora", order, seed, seq(80.0, 80.0), args={"lr": "0.003"},
                     n_test=N_TEST, machine=avx512)
            if seed == 1:
                make_run(root, "seq_lora+lr=0.002", "seq_lora", order, seed, seq(80.0, 80.0), args={"lr": "0.002"},
                         n_test=N_TEST, machine=avx512)
    rows = tuning_rule.rule_rows(root, ORDERS)
    table = tuning_rule.markdown(rows, ORDERS)
    line = next(ln for ln in table.splitlines() if ln.startswith("| seq_lora [lr=0.003] |"))
    assert line.endswith("| 2 of 6 (AVX2 against AVX512) |") and "kernels differ" in table
    line = next(ln for ln in table.splitlines() if ln.startswith("| seq_lora [lr=0.002] |"))
    assert line.endswith("| incomplete | – |")


def test_the_screen_drops_only_a_variant_whose_first_seed_is_surely_worse(verdicts):
    root, _ = verdicts
    kept, dropped = tuning_rule.screen(root, ORDERS, ["seq_lora:lr=0.003", "seq_lora:lr=0.008", "seq_lora:lr=0.009"])
    assert kept == ["seq_lora:lr=0.003", "seq_lora:lr=0.009"]      # better; not run yet (nothing known against it)
    assert len(dropped) == 1 and dropped[0].startswith("seq_lora:lr=0.008: seed 1's ΔAA against seq_lora is -20.00")
    # -5 on seed 2 alone: its interval over 20 examples a task covers 0, so the screen keeps it
    assert tuning_rule.screen(root, ORDERS, ["seq_lora:lr=0.007"], seed=2) == (["seq_lora:lr=0.007"], [])
    # the seed asked for, alone: lr=0.004 is +20 on seeds 1-2 and -20 on seed 3
    assert tuning_rule.screen(root, ORDERS, ["seq_lora:lr=0.004"], seed=1)[1] == []
    assert len(tuning_rule.screen(root, ORDERS, ["seq_lora:lr=0.004"], seed=3)[1]) == 1
    # another spelling of a setting finds the same runs (a sweep writes them into the folder already there)
    assert len(tuning_rule.screen(root, ORDERS, ["seq_lora:lr=8e-3"])[1]) == 1
    assert tuning_rule.screen(str(os.path.join(root, "nowhere")), ORDERS, ["seq_lora:lr=0.008"])[0] == [
        "seq_lora:lr=0.008"]
    # its folder's runs are another configuration's (a sweep would refuse them as stale): nothing known against it
    assert tuning_rule.screen(root, ORDERS, ["seq_lora:lr=0.0005"]) == (["seq_lora:lr=0.0005"], [])


def test_the_screen_command_prints_what_it_keeps(verdicts):
    root, _ = verdicts
    script = os.path.join(ROOT, "bench", "tuning_rule.py")
    done = subprocess.run([sys.executable, script, root, "--orders", ",".join(ORDERS), "--screen",
                           "seq_lora:lr=0.008,seq_lora:lr=0.003"], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert done.stdout == "seq_lora:lr=0.003\n" and "screened out seq_lora:lr=0.008" in done.stderr


def test_the_confirm_step_picks_the_variants_that_pass_seeds_one_and_two(verdicts, tmp_path):
    root, rows = verdicts
    candidates = ["seq_lora:lr=0.002", "seq_lora:lr=0.003", "seq_lora:lr=4e-3", "seq_lora:lr=0.0003",
                  "seq_lora:lr=0.005", "seq_lora:lr=0.007", "seq_lora:lr=0.006", "seq_lora:lr=0.009"]
    chosen, left = tuning_rule.to_confirm(root, ORDERS, candidates)
    # lr=0.004 passed seeds 1-2 before its seed 3 failed: chosen all the same (its seed 3 is run, the sweep skips it)
    assert chosen == ["seq_lora:lr=0.002", "seq_lora:lr=0.003", "seq_lora:lr=4e-3"]
    assert left == ["left out seq_lora:lr=0.0003: fails: ΔFM's interval excludes 0 against it",
                    "left out seq_lora:lr=0.005: incomplete",
                    "left out seq_lora:lr=0.007: fails: ΔAA's interval does not exclude 0 in its favour",
                    "left out seq_lora:lr=0.006: no intervals",
                    "left out seq_lora:lr=0.009: no finished runs against a reference"]
    # a reference with no seed 3 to pair with: said, as the variant's seed 3 alone would leave it at `needs seed 3`
    alone = str(tmp_path / "runs")
    stream(alone, {}, {s: (60.0, 60.0) for s in (1, 2)}, seeds=(1, 2))
    stream(alone, {"lr": "0.002"}, {s: (80.0, 80.0) for s in (1, 2)}, seeds=(1, 2))
    chosen, left = tuning_rule.to_confirm(alone, ORDERS, ["seq_lora:lr=0.002"])
    assert chosen == ["seq_lora:lr=0.002"] and len(left) == 1 and "reference seq_lora has no seed 3" in left[0]
    # seed 3 of the reference on one stream only: the rule pairs a seed only where every stream ran it
    make_run(alone, "seq_lora", "seq_lora", ORDERS[0], 3, seq(60.0, 60.0), n_test=N_TEST)
    assert "has no seed 3 on every stream" in tuning_rule.to_confirm(alone, ORDERS, ["seq_lora:lr=0.002"])[1][0]
    # passing against defaults since replaced: its seed 3 could not move today's default
    assert tuning_rule.to_confirm(root, ORDERS, ["seq_lora:epochs=1:lr=0.003"]) == (
        [], ["left out seq_lora:epochs=1:lr=0.003: it passes against seq_lora (one-epoch defaults), defaults since "
             "replaced"])
    script = os.path.join(ROOT, "bench", "tuning_rule.py")
    done = subprocess.run([sys.executable, script, root, "--orders", ",".join(ORDERS), "--confirm",
                           "seq_lora:lr=0.007,seq_lora:lr=0.002"], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert done.stdout == "seq_lora:lr=0.002\n" and "left out seq_lora:lr=0.007: fails" in done.stderr
    both = subprocess.run([sys.executable, script, root, "--screen", "seq_lora", "--confirm", "seq_lora"],
                          capture_output=True, text=True)
    assert both.returncode == 2 and "not allowed with" in both.stderr
    empty = subprocess.run([sys.executable, script, root, "--confirm", ""], capture_output=True, text=True)
    assert empty.returncode == 2 and empty.stderr == "tuning_rule.py: --confirm is empty: give method specs\n"
    stray = subprocess.run([sys.executable, script, root, "--undecided", "seq_lora:lr=0.002", "--out", "x.md"],
                           capture_output=True, text=True)
    assert stray.returncode == 2 and "--out and --methods go with the table, not with --undecided" in stray.stderr


def test_undecided_names_what_keeps_the_grid_waiting(verdicts):
    root, _ = verdicts
    candidates = ["seq_lora:lr=0.003", "seq_lora:lr=0.002", "seq_lora:lr=0.004", "seq_lora:lr=0.0003",
                  "seq_lora:lr=0.005", "seq_lora:lr=0.008", "seq_lora:epochs=1:lr=0.003", "seq_lora:lr=0.009"]
    open_specs, lines = tuning_rule.undecided(root, ORDERS, candidates)
    # decided: 0.004 (seed 3 failed it), 0.0003 (more forgetting), 0.008 (screened out on seed 1, its only seed),
    # epochs=1:lr=0.003 (tried under replaced defaults)
    assert open_specs == ["seq_lora:lr=0.003", "seq_lora:lr=0.002", "seq_lora:lr=0.005", "seq_lora:lr=0.009"]
    assert lines == ["seq_lora:lr=0.003: passes: move the default by hand", "seq_lora:lr=0.002: needs seed 3",
                     "seq_lora:lr=0.005: incomplete", "seq_lora:lr=0.009: no finished runs"]
    assert tuning_rule.undecided(root, ORDERS, ["seq_lora:lr=0.004", "seq_lora:lr=0.008"]) == ([], [])
