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
    fake = FakeTime()
    clock = ActiveClock(tick=0.5, stop_gap=10.0, monotonic=fake)
    clock._watch = lambda: None   # readings by hand: no watcher thread
    start = clock.now()
    fake.t += 9.0                 # a slow stretch, under the gap: wall time
    assert clock.now() - start == pytest.approx(9.0)
    fake.t += 60.0                # nothing read the clock for a minute: a stop, less the tick the watcher sleeps
    assert clock.now() - start == pytest.approx(9.5)
    assert clock.stopped == pytest.approx(59.5)
    fake.t -= 5.0                 # a clock that steps back (a patched one) never runs the reading backwards
    assert clock.now() - start == pytest.approx(9.5)


def test_the_watcher_reads_while_the_caller_is_busy_so_long_work_is_not_a_stop():
    clock = ActiveClock(tick=0.05, stop_gap=0.3)
    start = clock.now()
    time.sleep(1.0)   # the caller reads nothing for over three stop gaps; the watcher's readings bridge them
    assert clock.now() - start == pytest.approx(1.0, abs=0.25)
    assert clock.stopped == 0.0


CHILD = """
import sys, time
from harness.clock import ActiveClock
clock = ActiveClock(tick=0.05, stop_gap=0.5)
start, wall = clock.now(), time.monotonic()
print("ready", flush=True)
time.sleep(float(sys.argv[1]))
print(clock.now() - start, time.monotonic() - wall, clock.stopped, flush=True)
"""


@pytest.mark.skipif(not hasattr(signal, "SIGSTOP"), reason="needs SIGSTOP")
def test_a_process_held_with_sigstop_does_not_count_the_hold():
    child = subprocess.Popen([sys.executable, "-c", CHILD, "4"], stdout=subprocess.PIPE, text=True, cwd=ROOT,
                             env={**os.environ, "PYTHONPATH": ROOT})
    try:
        assert child.stdout.readline().strip() == "ready"
        time.sleep(0.5)
        os.kill(child.pid, signal.SIGSTOP)
        time.sleep(2.5)
        os.kill(child.pid, signal.SIGCONT)
        active, wall, stopped = map(float, child.stdout.readline().split())
    finally:
        child.kill()
        child.wait()
    assert wall >= 4.0
    assert 2.0 <= stopped <= 3.0                             # the hold, within a tick and the scheduling around it
    assert active == pytest.approx(wall - stopped, abs=0.05)
