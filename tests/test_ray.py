"""`sweep --engine ray` on a real local Ray instance: the same matrices as the local engine, and a worker killed
mid-cell is retried and its run resumes after its last finished task."""
import json
import os
import signal
import subprocess
import sys
import time

import pandas as pd
import pytest

from harness.cli import main
from harness.ray_engine import ATTEMPT
from harness.sweep import cell_state, plan
from tests.conftest import sweep_setup

TINY = ["--model", "tiny-llama", "--train-per-task", "4", "--test-per-task", "3", "--max-input-tokens", "8"]
METHODS = "seq_lora,zero_shot"
LONG, SHORT = "bbc+hutto_amazon+trec", "hutto_tweets+bbc"   # LONG: room to kill its run between two tasks


def _sweep_argv(runs, *extra):
    return ["sweep", "--methods", METHODS, "--orders", f"{LONG},{SHORT}", "--seeds", "1", "--runs", runs,
            "--quiet", *TINY, *extra]


def _matrices(runs):
    return {c.out[len(runs):]: pd.read_csv(os.path.join(c.out, "matrix.csv"), index_col=0)
            for c in plan(runs, METHODS.split(","), [LONG, SHORT], ["1"], sweep_setup(TINY))}


def _children(pid):
    found = []
    for entry in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{entry}/stat") as f:
                if int(f.read().rsplit(")", 1)[1].split()[1]) == pid:
                    found.append(int(entry))
        except (OSError, ValueError, IndexError):
            pass
    return found


def _alive(pid):
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


@pytest.mark.ray
@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc to find the cell's Ray worker")
def test_a_ray_sweep_matches_the_local_one_and_survives_a_killed_worker(tmp_path):
    # RAY_ADDRESS where nothing answers: without --address the sweep must start its own instance regardless
    env = dict(os.environ, PYTHONPATH=os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
               RAY_ADDRESS="127.0.0.1:9")
    ray_runs = str(tmp_path / "ray") + os.sep
    # No --address: the sweep starts a local Ray instance (num_cpus = the machine's cores) and shuts it down.
    sweep = subprocess.Popen([sys.executable, "-m", "harness", *_sweep_argv(ray_runs, "--engine", "ray",
                                                                             "--cpus-per-cell", "1")],
                             env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    run = os.path.join(ray_runs, "seq_lora", LONG, "seed1")
    log_file = os.path.join(ray_runs, "logs", f"seq_lora-{LONG}-seed1.log")
    worker = None
    deadline = time.time() + 300
    while time.time() < deadline and sweep.poll() is None:   # kill once the run has finished its first task
        try:
            if "bbc" in json.load(open(os.path.join(run, "status.json")))["rows"]:
                attempts = [line for line in open(log_file) if line.startswith(ATTEMPT)]
                worker = int(attempts[-1].rsplit(" ", 1)[1])
                break
        except (OSError, ValueError, KeyError, IndexError):
            pass
        time.sleep(0.02)
    if worker is None:
        sweep.kill()
        pytest.fail("the run never finished its first task: " + (sweep.communicate(timeout=60)[1] or ""))
    runs_of_worker = _children(worker)
    os.kill(worker, signal.SIGKILL)
    out, err = sweep.communicate(timeout=300)
    assert sweep.returncode == 0, err
    assert "4 run(s) done now, 0 skipped (already finished), 0 failed, of 4" in out
    # the run died with its worker (no orphan writing beside the retry), the retry resumed it after bbc
    assert runs_of_worker and not any(_alive(pid) for pid in runs_of_worker)
    log = [json.loads(line) for line in open(os.path.join(run, "log.jsonl"))]
    if [s["resumed"] for s in log if s["event"] == "run_start"] == [False]:
        pytest.skip("the run finished before the kill landed (machine faster than this test expects)")
    assert f"{run}: resumed and finished (2 attempts: a worker died)" in err or \
        f"{run}: finished (2 attempts: a worker died)" in err, err
    assert [s["resumed"] for s in log if s["event"] == "run_start"] == [False, True]
    assert [e["task"] for e in log if e["event"] == "task_start"].count("bbc") == 1

    local_runs = str(tmp_path / "local") + os.sep
    assert main(_sweep_argv(local_runs, "--jobs", "2")) == 0
    ray_matrices, local_matrices = _matrices(ray_runs), _matrices(local_runs)
    assert ray_matrices.keys() == local_matrices.keys() and len(ray_matrices) == 4
    for cell, matrix in local_matrices.items():
        pd.testing.assert_frame_equal(ray_matrices[cell], matrix, check_exact=True, obj=cell)
    assert all(cell_state(c) == "finished" for c in plan(ray_runs, METHODS.split(","), [LONG, SHORT], ["1"], sweep_setup(TINY)))


def test_engine_ray_without_ray_installed_is_one_line_and_status_2(tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "ray", None)   # what `import ray` meets where it is not installed
    runs = str(tmp_path / "runs")
    assert main(_sweep_argv(runs, "--engine", "ray")) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "--engine ray needs the ray package" in err
    assert not os.path.exists(runs)   # refused before anything was written


def test_ray_options_need_the_ray_engine(tmp_path, capsys):
    assert main(_sweep_argv(str(tmp_path / "runs"), "--cpus-per-cell", "2")) == 2
    assert "go with --engine ray" in capsys.readouterr().err
    assert main(_sweep_argv(str(tmp_path / "runs"), "--engine", "ray", "--jobs", "2")) == 2
    assert "--jobs goes with --engine local" in capsys.readouterr().err


HOLD_A_CLUSTER = """
import sys, ray
ray.init(num_cpus=1, include_dashboard=False, log_to_driver=False, logging_level="ERROR")
print(ray.get_runtime_context().gcs_address, flush=True)
sys.stdin.read()   # the test closes stdin: shut the cluster down
ray.shutdown()
"""


@pytest.mark.ray
def test_address_joins_a_running_cluster_and_leaves_it_running(tmp_path):
    """A cluster started by another process (here a Ray head with 1 CPU and no GPU, in a subprocess so that this
    one never imports ray): the sweep joins it, fits its cells to it, and refuses a GPU it does not have."""
    # Ray's single-machine mode, in the head and the sweep alike: the cluster lives on the loopback address.
    # Token authentication (Ray's default for a cluster ray.init starts): a joining driver without
    # RAY_AUTH_MODE=token waits for the cluster forever.
    env = dict(os.environ, PYTHONPATH=os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
               RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER="0", RAY_AUTH_MODE="token")
    env.pop("CL_THREADS", None)   # the sweep picks the cell's threads itself (conftest sets it under xdist)
    head = subprocess.Popen([sys.executable, "-c", HOLD_A_CLUSTER], env=env, stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    try:
        address = head.stdout.readline().strip()
        assert address, "the Ray head did not start"
        runs = str(tmp_path / "runs")
        argv = [sys.executable, "-m", "harness", "sweep", "--methods", "zero_shot", "--orders", SHORT, "--runs", runs,
                "--quiet", *TINY, "--engine", "ray", "--address", address]
        refused = subprocess.run(argv + ["--gpus-per-cell", "1"], env=env, capture_output=True, text=True,
                                 timeout=300)
        assert refused.returncode == 2 and "no node of the Ray cluster has 1 GPU" in refused.stderr, refused.stderr
        done = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=300)
        assert done.returncode == 0, done.stderr
        assert "1 run(s) done now, 0 skipped (already finished), 0 failed, of 1" in done.stdout
        # 2 CPUs a cell by default, but the cluster's only node has 1: the cell asked for 1 and ran with 1 thread
        log = open(os.path.join(runs, "logs", f"zero_shot-{SHORT}-seed1.log")).read()
        assert " CL_THREADS=1 " in log and log.count(ATTEMPT) == 1
        assert head.poll() is None   # the sweep left the cluster running
    finally:
        head.stdin.close()
        head.wait(timeout=60)


@pytest.mark.ray
def test_an_address_where_nothing_answers_is_refused_at_once(tmp_path, capsys):
    # ray.init would retry for about 13 minutes before failing; the sweep refuses in one line and writes nothing
    import socket
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))   # bound, never listening: connections are refused, and no other process
        port = s.getsockname()[1]  # (another test's Ray) can take the port meanwhile
        runs = str(tmp_path / "runs") + os.sep
        started = time.monotonic()
        assert main(_sweep_argv(runs, "--engine", "ray", "--address", f"127.0.0.1:{port}")) == 2
    assert time.monotonic() - started < 60
    err = capsys.readouterr().err
    assert f"--address 127.0.0.1:{port}: nothing answers there" in err and len(err.strip().splitlines()) == 1
    assert not os.path.exists(runs)
