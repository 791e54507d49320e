"""The seconds a process has run, less the spans it lay stopped.

A run held with SIGSTOP (a shared machine's queue paused while something else is timed) or a suspended VM would
otherwise charge the pause to the stage it fell in: its train or eval seconds, the cost table and the sweep's
estimates (a paused stage of order 4 read 281 s for 75 steps of about 1 s, 196 of them between two steps). No library measures wall time less
stopped spans (CPU-time clocks count every thread's work, not elapsed time), so a daemon thread wakes every `tick`
seconds, and a gap of more than `stop_gap` seconds between two readings of the clock in which the process used
less CPU time than half the gap (nothing in it ran: a loaded machine still schedules a thread within that; a call
that held the interpreter's lock so long would have used the CPU) counts, less one tick, as stopped. A stop
shorter than `stop_gap` is not noticed, nor one not much longer with many threads busy as it began (their CPU time
in the gap reads as work); neither is time the machine gave to other processes (that is wall time)."""
from __future__ import annotations

import os
import threading
import time

TICK = 0.5        # seconds between the watcher's readings
STOP_GAP = 10.0   # a gap longer than this between two readings was a stop


class ActiveClock:
    def __init__(self, tick: float = TICK, stop_gap: float = STOP_GAP, monotonic=time.monotonic,
                 cpu=time.process_time):
        self.tick, self.stop_gap = tick, stop_gap
        self._monotonic = monotonic   # bound once: a test that shifts time.monotonic must not read as a stop
        self._cpu = cpu               # the process's CPU seconds, every thread's
        self._lock = threading.Lock()
        self._last, self._last_cpu = monotonic(), cpu()
        self.stopped = 0.0            # seconds counted as stopped so far
        self._watcher: threading.Thread | None = None
        self._pid = None

    def now(self) -> float:
        """Seconds on a monotonic scale that leaves out the stops seen so far: take differences of it."""
        self._watch()
        return self._read()

    def _read(self) -> float:
        with self._lock:
            now, cpu = self._monotonic(), self._cpu()
            gap = now - self._last
            if gap > self.stop_gap and cpu - self._last_cpu < gap / 2:
                self.stopped += gap - self.tick
            self._last, self._last_cpu = max(self._last, now), cpu
            return self._last - self.stopped

    def _watch(self) -> None:
        """Start the watcher in this process (again after a fork: a child has no threads but the caller's)."""
        if self._watcher is not None and self._pid == os.getpid() and self._watcher.is_alive():
            return
        with self._lock:
            self._last, self._last_cpu = self._monotonic(), self._cpu()   # before the watcher: no stop counted
            self._pid = os.getpid()
            self._watcher = threading.Thread(target=self._loop, name="active-clock", daemon=True)
            self._watcher.start()

    def _loop(self) -> None:
        while True:
            time.sleep(self.tick)
            self._read()


CLOCK = ActiveClock()
# a forked child starts its own watcher, and must not inherit a lock its parent's watcher held
os.register_at_fork(after_in_child=lambda: CLOCK.__dict__.update(_lock=threading.Lock(), _watcher=None))


def now() -> float:
    """The process's clock: wall seconds less the stops seen (harness.clock's docstring)."""
    return CLOCK.now()


def stopped() -> float:
    """Seconds this process has lain stopped so far."""
    CLOCK.now()
    return CLOCK.stopped
