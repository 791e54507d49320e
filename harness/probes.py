"""Probes: measurements of a finished run's final state beyond its accuracy matrix, each kept in the run's folder
(committed with the record). They need the run's weights, which are not committed, so a grid that spans several
machines or sessions takes them right after each run (`bench --probes`, `sweep --probes`), while the weights are
still there; `python -m harness general` and `bench/protocols.py` measure the runs left over.

- general: held-out tasks before and after the stream, balanced accuracy (harness/general.py; general.json).
- generation: the run's own test examples answered by greedy decoding, beside its rank answers
  (harness/protocols.py; protocols.json)."""
from __future__ import annotations

import argparse

NAMES = ("general", "generation")


def parse(raw: str) -> str:
    """`--probes`: comma-separated names, each once, spelled back in NAMES' order (one spelling per request)."""
    import difflib
    asked = [p.strip() for p in raw.split(",") if p.strip()]
    for name in asked:
        if name not in NAMES:
            close = difflib.get_close_matches(name, NAMES, n=1)
            raise argparse.ArgumentTypeError(f"unknown probe {name!r}" + (f" (did you mean {close[0]!r}?)" if close
                                             else "") + f"; probes: {', '.join(NAMES)}")
    if not asked:
        raise argparse.ArgumentTypeError("expected probe names, comma-separated: " + ", ".join(NAMES))
    return ",".join(n for n in NAMES if n in asked)


def names_of(probes: str | None) -> list[str]:
    return [n for n in (probes or "").split(",") if n]


def is_measured(path: str, name: str) -> bool:
    """Whether the run's folder keeps this probe's measurement (general: of the default held-out tasks and size;
    generation: of this very run, by this version of its code)."""
    if name == "generation":
        from harness import protocols
        return protocols.is_measured(path)
    # a general.json of other held-out tasks or sizes (`general --tasks`) is not this probe's
    from harness import general
    return general.measured_as(path, general.GENERAL_TASKS, general.DEFAULT_PER_TASK)


def recorded_seconds_per_task(path: str, name: str) -> float | None:
    """What the probe took on this run per task it measured (general: each held-out task; generation: each of
    the run's tasks), as its record keeps it; None where this probe is not measured (a `general --tasks` record is
    another measurement), or was measured before records kept their time (commit 9df5a28)."""
    import json
    import os

    from harness.protocols import RECORD
    if not is_measured(path, name):
        return None
    try:
        with open(os.path.join(path, "general.json" if name == "general" else RECORD)) as f:
            record = json.load(f)
        seconds, measured = record.get("seconds"), len(record.get("tasks") or {})
    except (OSError, ValueError, AttributeError, TypeError):
        return None
    return float(seconds) / measured if isinstance(seconds, (int, float)) and measured else None


def tasks_measured(name: str, order_tasks: list[str]) -> int:
    """How many tasks the probe measures on a run of these tasks (its cost scales with them)."""
    if name == "generation":
        return len(order_tasks)
    from harness import general
    return len(general.held_out(general.GENERAL_TASKS, order_tasks))


def missing(path: str, probes: str | None) -> list[str]:
    return [n for n in names_of(probes) if not is_measured(path, n)]


def measure(path: str, name: str, device: str | None = None, progress: bool = False,
            base_cache: str | None = None) -> str:
    """Run one probe on a finished run (its weights here), on `device` (default the run's own); writes its record
    and returns a one-line summary. base_cache: a sweep's shared backbone scores, where the general probe keeps
    the backbone's held-out answers for the next run."""
    if name == "general":
        from harness import general

        # the defaults read now, not bound at import: one place (harness/general.py) names them
        r = general.run_general(path, general.GENERAL_TASKS, general.DEFAULT_PER_TASK, progress=progress,
                                device=device, shared=base_cache)
        ci = r["change_ci"]
        return (f"general ability (balanced accuracy, {len(r['tasks'])} held-out tasks): before {r['before']:.2f} "
                f"after {r['after']:.2f} change {r['change']:+.2f}" + (f" [{ci[0]:+.2f}, {ci[1]:+.2f}]" if ci else ""))
    from harness import protocols
    r = protocols.measured(path, again=True, device=device)
    right = [100.0 * t["kinds"]["right"] / t["n"] for t in r["tasks"].values()]
    rank = [t["rank"] for t in r["tasks"].values()]
    return (f"generation: AA {sum(right) / len(right):.2f} generated against {sum(rank) / len(rank):.2f} ranked "
            f"(final state, {protocols.RECORD})")
