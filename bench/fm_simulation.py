"""How often the verdict would say "craft forgets less" where neither method forgets (and, with --forget, where the
other one does): a simulation of the paired ΔFM and ΔBWT intervals (docs/results.md#intervals) on streams of T tasks.

Neither method forgets: every task's true accuracy is `--accuracy` at every stage. One method's answers barely move
after a task (each stage redraws `--stable` of them, as craft's edits of a finished group barely move), the other's
move more (`--noisy`, as a LoRA baseline's). FM takes a maximum over the stages, so noise alone lifts the noisier
method's FM, and a paired ΔFM leans toward "the stable one forgets less"; BWT (final minus just-learned) has no
maximum. Counted per experiment, at the verdict's 95%: ΔFM's interval (reflected, as the tables' is) below 0, ΔBWT's
above 0, and both (the verdict's unqualified "forgets less": FM's claim that BWT bears out). Each experiment is one
stream of one seed (the grid's seed 1: the interval is the examples' spread alone).

    python bench/fm_simulation.py --tasks 15 --experiments 200

`--coverage`: one method alone (the --noisy one), how often its own 95% intervals cover the true FM (percentile
and reflected, the tables') and the true BWT (nominal 95%): 0 where nothing is forgotten; with --forget, their
values at infinitely many examples (a task i stages back keeps a share (1 - noisy)^i of its answers).
"""
from __future__ import annotations

import argparse
import sys

import numpy as np

from harness import stats


def stream(rng, tasks: int, n: int, accuracy: float, redraw: float, forget: float = 0.0) -> dict:
    """task -> [stages, n] 0/1 answers, each stage from the task's own on redrawing `redraw` of them; a redrawn
    answer after the task is right with probability accuracy - forget (true forgetting, where forget > 0)."""
    correct = {}
    for i in range(tasks):
        answers, rows = rng.random(n) < accuracy, np.full((tasks, n), np.nan)
        for stage in range(i, tasks):
            if stage > i:
                answers = np.where(rng.random(n) < redraw, rng.random(n) < accuracy - forget, answers)
            rows[stage] = answers
        rows[:i] = rows[i]   # R[l][i] for l < i: read by neither FM nor BWT
        correct[f"t{i}"] = rows
    return correct


def experiment(rng, args) -> dict[str, bool]:
    names = [f"t{i}" for i in range(args.tasks)]
    scores = [stats.ExampleScores(names, names, stream(rng, args.tasks, args.examples, args.accuracy, redraw, forget))
              for redraw, forget in ((args.stable, 0.0), (args.noisy, args.forget))]
    samples = [s.metric_samples(args.resamples) for s in scores]
    points = [s.metric_points() for s in scores]
    d_fm = stats.metric_interval(samples[0]["FM"] - samples[1]["FM"], "FM", points[0]["FM"] - points[1]["FM"])
    d_bwt = stats.metric_interval(samples[0]["BWT"] - samples[1]["BWT"], "BWT", points[0]["BWT"] - points[1]["BWT"])
    fm_less, bwt_less = stats.below_zero(d_fm), stats.above_zero(d_bwt)
    return {"ΔFM < 0": fm_less, "ΔBWT > 0": bwt_less, "both (the verdict)": fm_less and bwt_less,
            "ΔFM > 0": stats.above_zero(d_fm)}


def true_fm(args) -> float:
    """FM (points) at infinitely many examples: task i's accuracy falls by forget x the share of its answers
    redrawn since, so its maximum is right after it; BWT is minus this."""
    T = args.tasks
    return 100 * sum(args.forget * (1 - (1 - args.noisy) ** (T - 1 - i)) for i in range(T - 1)) / (T - 1)


def coverage(rng, args) -> dict[str, bool]:
    """One method's intervals: does each cover the true value?"""
    names = [f"t{i}" for i in range(args.tasks)]
    scores = stats.ExampleScores(names, names, stream(rng, args.tasks, args.examples, args.accuracy, args.noisy,
                                                      args.forget))
    percentile = stats.interval(scores.metric_samples(args.resamples)["FM"])
    intervals = stats.run_intervals(scores, args.resamples)   # as the tables give them: FM's reflected
    fm = true_fm(args)
    return {f"{name} covers the truth": lo - 1e-9 <= truth <= hi + 1e-9 for name, (lo, hi), truth in
            (("FM, percentile", percentile, fm), ("FM, reflected", intervals["FM"], fm),
             ("BWT", intervals["BWT"], -fm))}


def simulate(args) -> dict[str, int]:
    """claim -> in how many of args.experiments it was made (--coverage: how many intervals covered the truth)."""
    rng = np.random.default_rng(args.seed)
    counts: dict[str, int] = {}
    for _ in range(args.experiments):
        for claim, made in (coverage if getattr(args, "coverage", False) else experiment)(rng, args).items():
            counts[claim] = counts.get(claim, 0) + made
    return counts


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", type=int, default=15)
    parser.add_argument("--examples", type=int, default=100, help="test examples a task")
    parser.add_argument("--accuracy", type=float, default=0.7)
    parser.add_argument("--stable", type=float, default=0.02, help="share of answers redrawn a stage, stable method")
    parser.add_argument("--noisy", type=float, default=0.3, help="share of answers redrawn a stage, noisy method")
    parser.add_argument("--forget", type=float, default=0.0,
                        help="true forgetting of the noisy method: its redrawn answers on past tasks are right with "
                             "probability accuracy - forget (0: neither forgets; > 0: the claims' power)")
    parser.add_argument("--experiments", type=int, default=200)
    parser.add_argument("--resamples", type=int, default=1000)
    parser.add_argument("--seed", type=int, default=11)
    parser.add_argument("--coverage", action="store_true",
                        help="one method (--noisy): how often its FM and BWT intervals cover their true values "
                             "(0 unless --forget)")
    args = parser.parse_args(argv)
    counts = simulate(args)
    if args.coverage:
        truth = f"true FM {true_fm(args):.2f}" if args.forget else "nothing forgotten"
        print(f"{args.tasks} tasks, {args.examples} examples each, {truth}, {args.noisy:g} of the answers "
              f"redrawn a stage; {args.experiments} experiments (seed {args.seed}), nominal 95%:")
    else:
        truth = "no forgetting" if not args.forget else \
            f"the noisy method forgets (redrawn answers {args.forget:g} less right)"
        print(f"{args.tasks} tasks, {args.examples} examples each, {truth}; answers redrawn a stage: stable "
              f"{args.stable:g}, noisy {args.noisy:g}; {args.experiments} experiments (seed {args.seed}):")
    for claim, k in counts.items():
        print(f"  {claim:<32} {k:4d} of {args.experiments} ({100 * k / args.experiments:.1f}%)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
