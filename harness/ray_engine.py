"""`sweep --engine ray`: each cell is a Ray task that runs the cell's `python -m harness bench` command, on a
local Ray instance started here or on a cluster (`--address`). Every node needs the project and the runs
folder at the same paths (a shared file system): a cell's task only runs its command there, and a worker
that dies has its cell retried, which resumes after the run's last finished task as any rerun does.

`ray` is imported only here, and only when this engine is asked for."""
from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import time

from core.errors import UsageError
from harness.sweep import Cell, RayOptions, Report, cell_env, cell_state, log_path, shell_command

# Marks the lines a cell's task writes into the cell's log, one per attempt (read back to count retries).
ATTEMPT = "# ray task: host "


def import_ray(local_instance: bool = False):
    """`local_instance`: the sweep will start its own Ray (no --address). That one serves this machine only, so
    it runs in Ray's single-machine mode (read when ray is imported), which keeps it on the loopback address
    instead of listening on the network."""
    if local_instance and "ray" not in sys.modules:
        os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
    try:
        import ray
    except ImportError:
        raise UsageError("--engine ray needs the ray package, which is not installed "
                         "(make install, or pip install -r requirements/main.txt)") from None
    return ray


def check_address(address: str, wait: float = 10.0) -> None:
    """Refuses a `host:port` (or `ray://host:port`) where nothing accepts a connection for `wait` seconds (a
    head started just before the sweep gets that long to listen): `ray.init` would retry for many minutes
    (about 13 measured here) before failing. `auto`, `local` and anything else Ray resolves itself are left
    to Ray."""
    match = re.fullmatch(r"(?:ray://)?\[?([^\[\]/]+?)\]?:(\d+)", address.strip())
    if not match:
        return
    host, port = match.group(1), int(match.group(2))
    deadline = time.monotonic() + wait
    while True:
        try:
            socket.create_connection((host, port), timeout=max(1.0, min(5.0, deadline - time.monotonic()))).close()
            return
        except (UnicodeError, ValueError) as e:   # not a host name at all (a..b): no point in waiting
            raise UsageError(f"--address {address}: not a host and port ({e})") from None
        except OSError as e:
            if time.monotonic() >= deadline:
                raise UsageError(f"--address {address}: nothing answers there ({e.strerror or type(e).__name__}); "
                                 "is the Ray cluster running?") from None
            time.sleep(1.0)


def _die_with_parent() -> None:
    # Linux: the run gets SIGKILL when its worker dies, so a retried cell never runs beside an orphan of its
    # first attempt in the same run directory.
    import ctypes
    PR_SET_PDEATHSIG = 1
    ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL)


def run_cell(command: list[str], header: str, extra_env: dict[str, str], log_file: str, cwd: str) -> int:
    """A cell's Ray task: its command, on whichever node Ray picked, with that node's environment (Ray's
    CUDA_VISIBLE_DEVICES included) plus the sweep's variables. Uses only the standard library, as it is
    shipped to workers by value."""
    env = dict(os.environ, **extra_env)
    if os.environ.get("PYTHONPATH"):
        env["PYTHONPATH"] += os.pathsep + os.environ["PYTHONPATH"]
    with open(log_file, "a") as log:
        log.write(f"$ {header}\n{ATTEMPT}{socket.gethostname()}, worker pid {os.getpid()}\n")
        log.flush()
        proc = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=env, cwd=cwd,
                                preexec_fn=_die_with_parent if sys.platform.startswith("linux") else None)
        try:
            return proc.wait()
        except KeyboardInterrupt:   # ray.cancel: stop the run as Ctrl-C stops a local one (it keeps its tasks)
            proc.send_signal(signal.SIGINT)
            proc.wait()
            raise


def _attempts(log_file: str, since: int) -> int:
    try:
        with open(log_file) as f:
            f.seek(since)
            return sum(line.startswith(ATTEMPT) for line in f)
    except OSError:
        return 0


def _largest_node(ray, resource: str) -> float:
    return max([node["Resources"].get(resource, 0) for node in ray.nodes() if node.get("Alive")] or [0])


def run_cells(runs: str, todo: list[Cell], report: Report, options: RayOptions) -> None:
    if not todo:   # every cell finished: nothing to start Ray for
        return
    ray = import_ray(local_instance=not options.address)
    started_here = not ray.is_initialized()   # a caller's own Ray session is used as is, and left running
    if started_here:
        init = dict(include_dashboard=False, log_to_driver=False, logging_level="WARNING")
        if options.address:
            try:
                ray.init(address=options.address, **init)
            except (ConnectionError, ValueError) as e:
                raise UsageError(f"--address {options.address}: cannot join a Ray cluster there ("
                                 + (str(e).strip().splitlines() or [type(e).__name__])[0] + ")") from None
        else:
            # "local": a new instance even where RAY_ADDRESS names a cluster (Ray would join it, and refuse num_cpus
            # there, or retry a dead one for minutes); --address is how to join one
            ray.init(address="local", num_cpus=os.cpu_count() or 1, **init)
    try:
        _run(ray, runs, todo, report, options)
    finally:
        if started_here:
            ray.shutdown()


def _run(ray, runs: str, todo: list[Cell], report: Report, options: RayOptions) -> None:
    cpus = options.cpus_per_cell or min(2, int(_largest_node(ray, "CPU")) or 1)
    gpus = options.gpus_per_cell
    if gpus is None:
        gpus = 1 if todo[0].config.device.startswith("cuda") else 0
    # a task no node can hold waits forever in Ray: say so instead
    for resource, need in (("CPU", cpus), ("GPU", gpus)):
        if need and _largest_node(ray, resource) < need:
            raise UsageError(f"--{resource.lower()}s-per-cell {need:g}: no node of the Ray cluster has "
                             f"{need:g} {resource}(s) (the largest has {_largest_node(ray, resource):g})")
    ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])   # workers need not import the project
    task = ray.remote(run_cell).options(num_cpus=cpus, num_gpus=gpus, max_retries=options.retries,
                                        retry_exceptions=False, scheduling_strategy="SPREAD")
    env = cell_env(threads=int(cpus))
    cwd = os.getcwd()
    started = {}
    for cell in todo:
        log_file = log_path(runs, cell)
        since = os.path.getsize(log_file) if os.path.exists(log_file) else 0
        ref = task.remote(cell.command(), shell_command(cell, env), env, log_file, cwd)
        started[ref] = (cell, cell_state(cell), log_file, since)
    try:
        while started:
            # in slices, so a Ctrl-C or SIGTERM is seen between them
            ready, _ = ray.wait(list(started), num_returns=1, timeout=1.0)
            for ref in ready:
                cell, before, log_file, since = started.pop(ref)
                code, why = None, ""
                try:
                    code = ray.get(ref)
                except ray.exceptions.RayError as e:   # its worker died more often than --retries allows
                    why = f"{type(e).__name__}: " + (str(e).strip().splitlines() or [""])[0]
                attempts = _attempts(log_file, since)
                note = f" ({attempts} attempts: a worker died)" if attempts > 1 else ""
                report.done(cell, before, code, log_file, why, note)
    except KeyboardInterrupt:
        report.stopping.set()
        for ref in started:   # not forced: each running task passes SIGINT on to its run, which keeps its tasks
            ray.cancel(ref)
        ray.wait(list(started), num_returns=len(started), timeout=60)
        raise
