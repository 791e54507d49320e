"""Per-example predictions and bootstrap intervals over them (docs/results.md#intervals).

A run keeps, per evaluated cell, the predicted label index of every test example as one character
(`encode_labels`), and the gold indices once per task in config.json. From them every accuracy of the matrix
is recomputed exactly, and resampled: each task's test examples are drawn with replacement, the same draw for
every row of a matrix, every run, seed and order (the weights depend only on the task and its size), so that
rows, runs and methods stay paired on the examples they share (FM's interval reflected about its point:
REFLECTED). A percentile bootstrap by hand: it is a few
lines, and scipy.stats.bootstrap resamples one sample, not strata shared across many runs.

numpy, and scipy for t quantiles; the metric formulas are harness/metrics.py's, applied to batches of resampled
matrices."""
from __future__ import annotations

import string
import zlib
from dataclasses import dataclass
from functools import lru_cache

import numpy as np

from core.errors import UsageError
from harness.metrics import BASE_ROW, METRICS

RESAMPLES = 2000          # bootstrap draws; the percentile ends move by about 0.1 point between seeds at this count
LEVEL = 95                # percent, two-sided
BOOTSTRAP_SEED = 20261130  # fixed: a table rebuilt from the same runs shows the same intervals

# One character per test example: the predicted label's index (62 labels at most; dbpedia has 14). A task with
# more labels is stored as LONG_FORM followed by the indices in decimal, space-separated (-1 for no answer).
LABEL_CODES = string.digits + string.ascii_lowercase + string.ascii_uppercase
LONG_FORM = "#"
NO_ANSWER = "-"           # generate: the normalised generation equals no label
NO_ANSWER_INDEX = -1
BALANCED = "balanced_accuracy"   # general.json's "metric"; a general.json without one holds plain accuracy


def encode_labels(indices) -> str:
    indices = [int(i) for i in indices]
    if any(i < NO_ANSWER_INDEX for i in indices):
        raise ValueError(f"a label index below {NO_ANSWER_INDEX} cannot be stored")
    if all(i < len(LABEL_CODES) for i in indices):
        return "".join(NO_ANSWER if i == NO_ANSWER_INDEX else LABEL_CODES[i] for i in indices)
    return LONG_FORM + " ".join(map(str, indices))


def decode_labels(text: str) -> np.ndarray:
    if text.startswith(LONG_FORM):
        return np.array([int(x) for x in text[len(LONG_FORM):].split()], dtype=np.int64)
    lookup = {c: i for i, c in enumerate(LABEL_CODES)} | {NO_ANSWER: NO_ANSWER_INDEX}
    return np.array([lookup[c] for c in text], dtype=np.int64)


def percent_correct(predicted, gold) -> float:
    """Accuracy in percent, rounded as the matrix stores it."""
    predicted, gold = np.asarray(predicted), np.asarray(gold)
    return round(100.0 * float((predicted == gold).sum()) / len(gold), 2)


def balanced_accuracy(predicted, gold, weights=None):
    """Mean per-class recall in percent, over the classes present in gold: a model that answers one label
    everywhere scores 100/K on K classes whatever their balance, where plain accuracy rewards the majority.
    weights [resamples, n] (how often each example is drawn, class_weights) -> one value per resample; a class
    none of whose examples a resample draws is left out of that resample's mean."""
    predicted, gold = np.asarray(predicted), np.asarray(gold)
    classes = gold[:, None] == np.unique(gold)[None, :]                          # [n, K]
    w = np.ones((1, len(gold))) if weights is None else np.asarray(weights, dtype=float)
    drawn = w @ classes                                                          # [resamples, K]
    hits = w @ (classes & (predicted == gold)[:, None])
    with np.errstate(invalid="ignore", divide="ignore"):
        recall = np.where(drawn > 0, hits / drawn, np.nan)
    value = 100.0 * np.nanmean(recall, axis=1)
    return float(value[0]) if weights is None else value


def class_weights(key: str, gold, resamples: int = RESAMPLES) -> np.ndarray:
    """example_weights drawn within each class: [resamples, n], every class keeping its number of examples in
    every draw. Balanced accuracy is a mean of per-class recalls, so its bootstrap resamples each class's
    examples; a draw over all of them would now and then miss a small class (6 spam messages in 50) and then
    score a different quantity. Seeded by key, class and size: every run scored on these examples shares them."""
    gold = np.asarray(gold)
    weights = np.zeros((resamples, len(gold)), dtype=np.uint16)
    for c in np.unique(gold):
        places = np.flatnonzero(gold == c)
        weights[:, places] = example_weights(f"{key}:{c}", len(places), resamples)
    return weights


def balanced_change(gold, before, after, key: str, resamples: int = RESAMPLES) -> tuple[float, np.ndarray]:
    """Balanced accuracy after minus before on the same examples: the point and its paired resamples
    ([resamples]; each draw takes both on the same examples, class_weights(key, gold))."""
    weights = class_weights(key, gold, resamples)
    point = balanced_accuracy(after, gold) - balanced_accuracy(before, gold)
    return point, balanced_accuracy(after, gold, weights) - balanced_accuracy(before, gold, weights)


def general_asked(record: dict) -> list[str]:
    """The held-out tasks a general.json was asked for (a run skips those in its stream); a file from before
    `requested` was kept names the tasks it kept and those it skipped."""
    return list(record.get("requested") or [*record.get("tasks", ()), *record.get("skipped_in_stream", ())])


def general_samples(tasks: dict, resamples: int = RESAMPLES) -> np.ndarray | None:
    """A general.json's held-out tasks -> the change of their mean balanced accuracy under every resample
    ([resamples]; each task's examples drawn as class_weights draws them); None for a record kept before
    per-example answers (plain accuracy only)."""
    kept = ("gold", "predictions_before", "predictions_after")
    if not tasks or not all(all(k in t for k in kept) for t in tasks.values()):
        return None
    draws = [balanced_change(*(decode_labels(t[k]) for k in kept), name, resamples)[1] for name, t in tasks.items()]
    return np.mean(draws, axis=0)


# ---- one run --------------------------------------------------------------------------------------------
@dataclass
class ExampleScores:
    """A run's matrix at the level of test examples: correct[task] is [rows, n] (1 = right, NaN = a cell that
    was not evaluated); rows as the matrix's index."""
    rows: list[str]
    tasks: list[str]
    correct: dict[str, np.ndarray]

    def resampled(self, resamples: int = RESAMPLES) -> np.ndarray:
        """Accuracy matrices under the shared resampling: [resamples, rows, tasks], percent."""
        out = np.empty((resamples, len(self.rows), len(self.tasks)))
        for j, task in enumerate(self.tasks):
            correct = self.correct[task]
            n = correct.shape[1]
            acc = 100.0 * np.nan_to_num(correct) @ example_weights(task, n, resamples).T / n    # [rows, B]
            acc[np.isnan(correct).any(1)] = np.nan
            out[:, :, j] = acc.T
        return out

    def metric_points(self) -> dict[str, float | None]:
        """Each metric of the matrix itself (the examples as they are)."""
        A = np.stack([100.0 * self.correct[t].mean(1) for t in self.tasks], axis=1)[None]   # [1, rows, tasks]
        has_base = self.rows[:1] == [BASE_ROW]
        base, trained = (A[:, 0, :], A[:, 1:, :]) if has_base else (None, A)
        return {name: None if (v := metric.fn(base, trained)) is None else float(v[0])
                for name, metric in METRICS.items()}

    def metric_samples(self, resamples: int = RESAMPLES) -> dict[str, np.ndarray | None]:
        """Each metric under every resample ([resamples] each; None where the matrix cannot give it)."""
        A = self.resampled(resamples)
        has_base = self.rows[:1] == [BASE_ROW]
        base, trained = (A[:, 0, :], A[:, 1:, :]) if has_base else (None, A)
        return {name: metric.fn(base, trained) for name, metric in METRICS.items()}


def example_scores(config: dict, status: dict, matrix, where: str) -> ExampleScores | None:
    """A finished run's per-example scores from its config.json (gold) and status.json (predictions); None when
    the run was recorded before predictions were kept. Every cell is checked against the matrix: the
    predictions must give its accuracy exactly."""
    data = config.get("data") or {}
    rows = [str(r) for r in matrix.index]
    tasks = [str(t) for t in matrix.columns]
    recorded = status.get("rows") or {}
    if not all("gold" in (data.get(t) or {}) for t in tasks) or \
            not all("predictions" in (recorded.get(r) or {}) for r in rows):
        return None
    correct = {}
    for j, task in enumerate(tasks):
        gold = decode_labels(data[task]["gold"])
        cells = np.full((len(rows), len(gold)), np.nan)
        for i, row in enumerate(rows):
            text = recorded[row]["predictions"].get(task)
            stored = matrix.iat[i, j]
            if text is None:
                if stored == stored:   # an accuracy without its predictions
                    raise UsageError(f"{where}: cell ({row}, {task}) has an accuracy but no predictions")
                continue
            predicted = decode_labels(text)
            if len(predicted) != len(gold) or percent_correct(predicted, gold) != stored:
                raise UsageError(f"{where}: the predictions of cell ({row}, {task}) do not give its accuracy "
                                 f"{stored} (the record is damaged)")
            cells[i] = predicted == gold
        correct[task] = cells
    return ExampleScores(rows, tasks, correct)


# ---- resampling -----------------------------------------------------------------------------------------
@lru_cache(maxsize=64)
def example_weights(task: str, n: int, resamples: int = RESAMPLES) -> np.ndarray:
    """How often each of a task's n test examples is drawn, per resample: [resamples, n] (rows sum to n).
    Seeded by the task's name and size alone, so every run scored on these examples gets the same draws.
    Kept as small integers: 2,000 resamples of a full 7,600-example test split are 15 MB."""
    rng = np.random.default_rng([BOOTSTRAP_SEED, zlib.crc32(task.encode()), n])
    counts = rng.multinomial(n, np.full(n, 1.0 / n), size=resamples)
    weights = counts.astype(np.uint8 if counts.max() <= 255 else np.uint16)
    weights.setflags(write=False)
    return weights


def seed_draws(n_seeds: int, resamples: int = RESAMPLES) -> np.ndarray:
    """Which seeds each resample uses ([resamples, n_seeds] indices, drawn with replacement)."""
    rng = np.random.default_rng([BOOTSTRAP_SEED, n_seeds])
    return rng.integers(0, n_seeds, size=(resamples, n_seeds))


# Metrics whose interval is the basic bootstrap's, reflected about the point, not the percentile one: FM takes a
# maximum over the rows after each task, so under resampling that maximum rises above the point (a method with
# noisy rows more than one whose rows agree), and percentile ends carry that lift. Simulated with no forgetting
# (30% of answers redrawn at each stage, 100 examples a task): over 6 tasks the percentile interval covered the
# true FM of 0 in 66-71% of experiments, the reflected one in 90-93% (docs/results.md#intervals has 4 and 8 tasks).
REFLECTED = frozenset({"FM"})


def interval(samples: np.ndarray, level: float = LEVEL, about: float | None = None,
             within: tuple[float, float] | None = None) -> tuple[float, float] | None:
    """The central `level`% of the samples (percentile interval); given `about` (the point estimate), the basic
    bootstrap interval instead: the percentile ends reflected about it (2 about - hi, 2 about - lo), which takes
    out the samples' lift above the point (REFLECTED), clipped to `within`."""
    samples = np.asarray(samples, dtype=float)
    samples = samples[~np.isnan(samples)]
    if not len(samples):
        return None
    tail = (100 - level) / 2
    lo, hi = np.percentile(samples, [tail, 100 - tail])
    if about is not None:
        lo, hi = 2 * about - hi, 2 * about - lo
        if within is not None:
            lo, hi = np.clip([lo, hi], *within)
    return float(lo), float(hi)


def metric_interval(samples: np.ndarray, metric: str, point: float,
                    within: tuple[float, float] | None = None) -> tuple[float, float] | None:
    """A metric's interval from its resamples and its point: reflected about the point for REFLECTED metrics,
    the percentile ends for the rest."""
    return interval(samples, about=point if metric in REFLECTED else None, within=within)


def p_value(samples: np.ndarray, about: float | None = None) -> float | None:
    """Two-sided bootstrap p-value of "the value is 0", read off the samples `interval` reads (reflected about
    `about` where given, as interval reflects them): twice the share of resamples on the far side of 0 (ties at 0
    count on both sides). It inverts `interval`: where the LEVEL% interval excludes 0, p <= 1 - LEVEL/100 (at 2,000
    resamples 51 beyond 0 keep the interpolated end on their side; the converse holds up to that interpolation).
    Without Davison & Hinkley's +1 correction, which would break that at the boundary (50 beyond 0: an interval
    excluding 0 beside p 0.051): p = 0 reads "below 1/RESAMPLES"."""
    samples = np.asarray(samples, dtype=float)
    samples = samples[~np.isnan(samples)]
    if not len(samples):
        return None
    if about is not None:
        samples = 2 * about - samples
    far = min(int((samples <= 0).sum()), int((samples >= 0).sum()))
    return min(1.0, 2 * far / len(samples))


def metric_p_value(samples: np.ndarray, metric: str, point: float) -> float | None:
    """p_value of a metric's resamples, reflected about its point where its interval is (REFLECTED)."""
    return p_value(samples, about=point if metric in REFLECTED else None)


def holm(p_values: list[float], level: float = LEVEL) -> list[bool]:
    """Holm's step-down correction: which hypotheses of a family are rejected at a family-wise error of
    1 - level/100: sorted by p, the k-th smallest (from 0) is rejected while p <= alpha / (m - k). By hand: a few
    lines, where statsmodels' multipletests would be a dependency for them alone."""
    alpha, m = 1 - level / 100, len(p_values)
    rejected = [False] * m
    for k, i in enumerate(np.argsort(p_values, kind="stable")):
        if p_values[i] > alpha / (m - k):
            break
        rejected[i] = True
    return rejected


def seed_degrees(strata) -> int:
    """over_runs' degrees of freedom for the seeds: runs less strata (orders). Below 1 its interval is the
    examples' spread alone."""
    strata = list(strata)
    return len(strata) - len(set(strata))


@lru_cache(maxsize=16)
def t_draws(df: int, resamples: int = RESAMPLES) -> np.ndarray:
    """Student's t with df degrees of freedom, [resamples]: its quantiles at (i + 0.5) / resamples, in an order
    shuffled by df alone (the same in every table). Quantiles, not random draws: 2,000 random draws missed the
    97.5% point by up to 15% at one degree of freedom (its tails are heavy), and every table shared the miss."""
    from scipy.special import stdtrit   # here, not at the top: every `harness` command imports this module, and
    # scipy costs a second or more to import (scipy.stats two or three), which only the tables' intervals need
    quantiles = stdtrit(df, (np.arange(resamples) + 0.5) / resamples)
    draws = np.random.default_rng([BOOTSTRAP_SEED, df, 7]).permutation(quantiles)
    draws.setflags(write=False)
    return draws


# Every metric here is in points: an accuracy lies in [0, 100], a difference, BWT, FM or FWT in [-100, 100]. The t
# level's tails are unbounded, so its draws are clipped to the range the value can take (at 2-3 seeds they can reach
# past it: an AA interval of [66, 105] reads as [66, 100]).
POINTS = (-100.0, 100.0)
ACCURACY = (0.0, 100.0)


def over_runs(samples: np.ndarray, strata, within=POINTS, of=None) -> np.ndarray:
    """The mean over runs under every resample, whose percentiles are the interval (tables, compare, figures):
    samples [runs, resamples] (each run's value under the shared example resampling), strata [runs] (each run's
    order: a run's seed varies within its order). Resample r gives mean_r + se_r * T_r: mean_r the mean over the
    runs under that example draw, se_r its standard error from the runs' spread about their order's mean (pooled
    over orders, so an order's own level is not counted as noise), T_r Student's t with runs - orders degrees of
    freedom, clipped to `within`. No run repeats an order (one seed): the examples' spread alone.
    Why not seeds drawn with replacement (over_seeds, until 2026-12-03): over 2-3 seeds a percentile bootstrap is
    too narrow (it shrinks their variance by (n-1)/n and has no t tails); simulated at 3 seeds with seed noise
    2-4 times the examples', it covered a planted 0 in 78-90% of experiments, t in 96-97% (tests/test_stats.py).
    Runs of one seed on different orders count as independent: they share the seed's training subsamples but not
    its training path (docs/results.md#intervals).
    of: one stratum's mean instead (a table's column of one order), its standard error from the spread pooled over
    every stratum given (the block's orders), so that an order run on 2-3 seeds is not left with 1-2 degrees of
    freedom; this assumes the seeds spread alike on every order of a block (measured: docs/results.md#intervals)."""
    samples = np.asarray(samples, dtype=float)
    n_runs, resamples = samples.shape
    counted = n_runs if of is None else sum(k == of for k in strata)
    if not counted:
        raise ValueError(f"no run of stratum {of!r}")
    mean = samples.mean(0) if of is None else samples[[i for i, k in enumerate(strata) if k == of]].mean(0)
    df = seed_degrees(strata)
    if df < 1:
        return mean
    se = np.sqrt(residual_squares(samples, strata) / df / counted)
    return np.clip(mean + se * t_draws(df, resamples), *within)


def residual_squares(samples: np.ndarray, strata) -> np.ndarray:
    """The runs' squared deviations from their stratum's (order's) mean, summed over runs: [runs, ...] -> [...]."""
    strata = list(strata)
    total = np.zeros(samples.shape[1:])
    for key in sorted(set(strata), key=str):   # a fixed order: float sums must not follow the hash seed
        rows = samples[[i for i, k in enumerate(strata) if k == key]]
        total += ((rows - rows.mean(0)) ** 2).sum(0)
    return total


def seed_spread(values, strata) -> tuple[float | None, int]:
    """The runs' standard deviation about their order's mean, pooled over orders, and its degrees of freedom (runs
    less orders): the seed spread from which over_runs takes its standard error. None below one degree."""
    df = seed_degrees(strata)
    if df < 1:
        return None, df
    return float(np.sqrt(residual_squares(np.asarray(values, dtype=float), strata) / df)), df


def over_seeds(samples: np.ndarray, counts=None) -> np.ndarray:
    """The tuning rule's statistic (bench/tuning_rule.py), as it was fixed on 2026-12-02: samples [seeds, resamples]
    -> [resamples]: each resample draws the seeds with replacement, then averages their values under that
    resample's example draw. counts [seeds]: each seed's value is a mean over that many runs, and a resample
    averages the runs of its drawn seeds. The tables use over_runs."""
    samples = np.asarray(samples, dtype=float)
    draws = seed_draws(samples.shape[0], samples.shape[1])
    drawn = np.take_along_axis(samples.T, draws, axis=1)
    if counts is None:
        return drawn.mean(1)
    weights = np.asarray(counts, dtype=float)[draws]
    return (drawn * weights).sum(1) / weights.sum(1)


# Intervals are shown to this many decimals, and whether one excludes 0 is decided on the ends as shown: an end
# of 0.003 prints as 0.00, and "[0.00, 2.00] *" would contradict itself.
DECIMALS = 2


def shown(value: float) -> float:
    return round(float(value), DECIMALS)


def above_zero(bounds: tuple[float, float] | None) -> bool:
    return bounds is not None and shown(bounds[0]) > 0


def below_zero(bounds: tuple[float, float] | None) -> bool:
    return bounds is not None and shown(bounds[1]) < 0


def excludes_zero(bounds: tuple[float, float] | None) -> bool:
    return above_zero(bounds) or below_zero(bounds)


def run_intervals(scores: ExampleScores, resamples: int = RESAMPLES) -> dict[str, list[float] | None]:
    """One run's metrics' LEVEL% intervals over its test examples (resampled within each task)."""
    out, points = {}, scores.metric_points()
    for name, samples in scores.metric_samples(resamples).items():
        bounds = None if samples is None else metric_interval(samples, name, points[name], POINTS)
        out[name] = None if bounds is None else [round(bounds[0], 4), round(bounds[1], 4)]
    return out
