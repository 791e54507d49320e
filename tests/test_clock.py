"""harness.clock: a run's seconds leave out the spans its process lay stopped, and only those."""
import os
import signal
import subprocess
import sys
import time

import pytest

from harness.clock import ActiveClock

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


class FakeTime:
    def __init__(self):
        self.t = 100.0

    def __call__(self):
        return self.t


def test_a_gap_longer_than_stop_gap_is_left_out_and_a_shorter_one_is_not():
    fake, cpu = FakeTime(), FakeTime()
    clock = ActiveClock(tick=0.5, stop_gap=10.0, monotonic=fake, cpu=cpu)
    clock._watch = lambda: None   # readings by hand: no watcher thread
    start = clock.now()
    fake.t += 9.0                 # a slow stretch, under the gap: wall time
    assert clock.now() - start == pytest.approx(9.0)
    fake.t += 60.0                # nothing read the clock for a minute, nor used the CPU: a stop, less the tick the
    assert clock.now() - start == pytest.approx(9.5)   # watcher sleeps
    assert clock.stopped == pytest.approx(59.5)
    fake.t += 30.0                # nothing read the clock, but a thread ran on the CPU all along (a call that held
    cpu.t += 29.0                 # the interpreter's lock): work, not a stop
    assert clock.now() - start == pytest.approx(39.5)
    fake.t -= 5.0                 # a clock that steps back (a patched one) never runs the reading backwards
    assert clock.now() - start == pytest.approx(39.5)


def test_the_watcher_reads_while_the_caller_is_busy_so_long_work_is_not_a_stop():
    clock = ActiveClock(tick=0.05, stop_gap=1.0)
    start = clock.now()
    time.sleep(3.5)   # the caller reads nothing for over three stop gaps, idle; the watcher's readings bridge them
    assert clock.now() - start == pytest.approx(3.5, abs=0.25)
    assert clock.stopped == 0.0


CHILD = """
import sys, time
from harness.clock import ActiveClock
clock = ActiveClock(tick=0.05, stop_gap=1.0)
start, wall = clock.now(), time.monotonic()
print("ready", flush=True)
time.sleep(float(sys.argv[1]))
print(clock.now() - start, time.monotonic() - wall, clock.stopped, flush=True)
"""


@pytest.mark.skipif(not hasattr(signal, "SIGSTOP"), reason="needs SIGSTOP")
def test_a_process_held_with_sigstop_does_not_count_the_hold():
    child = subprocess.Popen([sys.executable, "-c", CHILD, "5"], stdout=subprocess.PIPE, text=True, cwd=ROOT,
                             env={**os.environ, "PYTHONPATH": ROOT})
    try:
        assert child.stdout.readline().strip() == "ready"
        time.sleep(0.5)
        os.kill(child.pid, signal.SIGSTOP)
        time.sleep(3.0)
        os.kill(child.pid, signal.SIGCONT)
        active, wall, stopped = map(float, child.stdout.readline().split())
    finally:
        child.kill()
        child.wait()
    assert wall >= 5.0
    assert 2.5 <= stopped <= 3.5                             # the hold, within a tick and the scheduling around it
    assert active == pytest.approx(wall - stopped, abs=0.05)


# ---- runs made before the clock: the stops their logs show between two training steps --------------------------
def steps(task, times, first=1):
    return [{"t": t, "event": "step", "task": task, "step": first + i} for i, t in enumerate(times)]


def test_a_long_gap_between_two_steps_is_a_stop_and_a_slow_stretch_is_not():
    from harness.rundir import stops_between_steps
    times = [float(i) for i in range(10)]               # 1 s steps
    times += [times[-1] + 500.0 + k for k in range(1, 6)]   # held 500 s before step 11
    times += [times[-1] + 4.0 * k for k in range(1, 6)]     # then 4 s steps: a busy machine, wall time
    events = [{"t": 0, "event": "task_start", "task": "a"}] + steps("a", times)
    assert stops_between_steps(events) == {"a": pytest.approx(500.0)}   # the gap (501 s) less the median step


def test_only_the_steps_a_stages_seconds_cover_count():
    from harness.rundir import stops_between_steps
    killed = steps("a", [0, 1, 2, 300, 301])                        # a sitting killed after a hold; task redone
    again = steps("a", [1000, 1001, 1002, 1003, 1004])
    # b: a 500 s hold before its mid-task save at step 6 (the save's seconds carry it: it counts), one of 400 s
    # after it (steps 7-8, redone after the kill: not in the stage's seconds)
    saved = steps("b", [2000, 2001, 2002, 2502, 2503, 2504, 2505, 2905])
    after_save = steps("b", [3000, 3001, 3002, 3003], first=7)
    events = ([{"event": "task_start", "task": "a"}] + killed + [{"event": "run_start"},
              {"event": "task_start", "task": "a"}] + again + [{"event": "task_start", "task": "b"}] + saved +
              [{"event": "run_start"}, {"event": "task_start", "task": "b"},   # the runner's order on a resume
               {"event": "task_resumed", "task": "b", "step": 6}] + after_save)
    assert stops_between_steps(events) == {"a": 0, "b": 499.0}


def test_a_runs_timing_leaves_out_the_stops_once(tmp_path):
    import json

    from harness.rundir import RunDir
    times = [float(i) for i in range(10)] + [509.0 + k for k in range(10)]
    log = [{"t": 0, "event": "task_start", "task": "a"}] + steps("a", times)
    (tmp_path / "log.jsonl").write_text("".join(json.dumps(e) + "\n" for e in log))
    stage = {"train_seconds": 520.0, "eval_seconds": 3.0, "steps": 20}
    timing = {"wall_seconds": 530.0, "train_seconds": 520.0, "eval_seconds": 3.0,
              "per_stage": {"base": {"train_seconds": None, "eval_seconds": 1.0, "steps": None}, "a": stage}}
    (tmp_path / "method.json").write_text(json.dumps({"timing": timing}))
    read = RunDir(str(tmp_path)).timing()
    assert read["stopped_seconds"] == 499.0 and read["stops_from_log"]
    assert read["per_stage"]["a"]["train_seconds"] == 21.0 and read["train_seconds"] == 21.0
    assert read["wall_seconds"] == 31.0
    stage["stopped_seconds"] = 0.0   # a stage made under the clock: its seconds already leave its stops out
    (tmp_path / "method.json").write_text(json.dumps({"timing": timing}))
    assert RunDir(str(tmp_path)).timing() == timing
