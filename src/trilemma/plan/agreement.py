"""Whether what runs measured agrees with what the planner said: the intervals and exact tests
of a share or a mean, the :class:`Figure` each measure makes of a guess, and the one
judgement (Holm's test over every figure of a check) that ``calibrate --check``, ``compare``
and a batch's off-plan line apply before they tell the user a guess is off."""

from __future__ import annotations

import functools
import math
import statistics
from collections.abc import Callable, Hashable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypeVar

if TYPE_CHECKING:
    from numpy.typing import ArrayLike

__all__ = ["ALPHA", "OFF_PLAN_RUNS", "OFF_PLAN_SHARE", "RESAMPLES", "Z95", "Figure", "binomial_p",
           "drawn_mean_figure", "holm", "judge", "judge_together", "mean_figure", "mean_interval",
           "mean_p", "off_plan", "share_figure", "student_p", "student_t95", "weighed", "wilson"]  # fmt: skip

_K = TypeVar("_K", bound=Hashable)

Z95 = 1.959964
"""The normal quantile of a two-sided 95% interval."""
ALPHA = 0.05
"""The chance, when every figure weighed holds, that :func:`holm` calls any of them off."""
OFF_PLAN_RUNS = 20
"""The fewest runs whose mean :func:`off_plan` weighs against the plan."""
OFF_PLAN_SHARE = 0.10
"""A mean off the plan by less than this share of it is not called off, however sure."""


@dataclass(frozen=True, slots=True)
class Figure:
    """A figure of the plan weighed against what was measured of it: a guess of the spec
    against the ledger (``calibrate --check``), a prediction against runs (a batch's and a
    compare's off-plan line).

    It is off when :func:`judge`, weighing it with every other figure of the same check,
    finds the measure contradicts it: its p-value passes Holm's mark among them, and it is
    :attr:`material`.
    """

    field: str
    """What it is: the profile's field (``p_ok``, ``latency_s``, ``faults.rate_limit_rate``,
    ...), the spec's path of a step's guess (``steps.answer.route.hard.p_ok``), or a run's
    figure (``success``, ``cost``)."""
    profile: float
    """What the spec (or the plan) says."""
    measured: float
    """What was measured."""
    ci95: tuple[float, float]
    """The measured figure's 95% interval."""
    p_value: float = 1.0
    """The chance of a measure at least this far off were the spec's figure right (the exact
    binomial test for a share, Student's t test of the mean for a latency, a token count or
    a bill)."""
    material: bool = True
    """Off by enough to matter: a mean more than its tolerance off (:func:`mean_figure`; a
    share: always)."""
    expected: float | None = None
    """What the spec's figure leads the ledger to measure, where that differs from it (a
    fault rate, once the calls the latency puts past ``timeout_s`` time out first)."""
    certain: bool = False
    """A share the spec plans at 0 or 1 (no fault, every run a cache hit): the measure either
    agrees or contradicts it outright (``p_value`` 1 or 0), with no chance to weigh."""

    @property
    def outside(self) -> bool:
        """The spec's figure lies outside the measured 95% interval (one figure on its own,
        weighed at 95%: with many, some lie outside by chance)."""
        planned = self.profile if self.expected is None else self.expected
        return self.material and not self.ci95[0] <= planned <= self.ci95[1]

    def to_json(self) -> dict[str, Any]:
        """A row of ``drift`` in ``calibrate --from-journal --check --json``."""
        return {"field": self.field, "profile": self.profile, "measured": round(self.measured, 6),
                "ci95": [round(self.ci95[0], 6), round(self.ci95[1], 6)],
                "p_value": float(f"{self.p_value:.4g}")}  # fmt: skip


def judge(figures: Sequence[Figure], alpha: float = ALPHA) -> list[Figure]:
    """The ``figures`` the measure contradicts, all weighed together: those whose p-value
    passes Holm's step-down test (:func:`holm`) among the figures left to chance
    (:func:`weighed`), or that it contradicts outright (a :attr:`~Figure.certain` figure at
    p 0), and that are off by enough to matter. When every figure is right, the chance that
    any is called off is at most ``alpha``, however many are weighed (each at 95% on its
    own, a spec of ten guesses would be called off four times in ten)."""
    chance = weighed(figures)
    off = {id(f) for f, o in zip(chance, holm([f.p_value for f in chance], alpha), strict=True) if o}
    return [f for f in figures if f.material and (id(f) in off or (f.certain and f.p_value == 0.0))]


def judge_together(groups: Mapping[_K, Sequence[Figure]], alpha: float = ALPHA) -> dict[_K, list[Figure]]:
    """Of each group's figures (a model's, a spec's, a batch's cost or success), those the
    measure contradicts, every figure of every group weighed at once (:func:`judge`): one
    check, one chance ``alpha`` of a false alarm, however many groups it holds."""
    off = set(map(id, judge([f for figs in groups.values() for f in figs], alpha)))
    return {k: [f for f in figs if id(f) in off] for k, figs in groups.items()}


def weighed(figures: Sequence[Figure]) -> list[Figure]:
    """The ``figures`` a measure could miss by chance: all but the :attr:`~Figure.certain`."""
    return [f for f in figures if not f.certain]


def share_figure(field: str, planned: float, k: int, n: int) -> list[Figure]:
    """``planned`` weighed against ``k`` in ``n`` (exact binomial test, Wilson interval; none
    with ``n`` 0: nothing measured)."""
    if not n:
        return []
    return [Figure(field, planned, k / n, wilson(k, n), binomial_p(k, n, planned),
                   certain=planned in (0.0, 1.0))]  # fmt: skip


def mean_figure(field: str, given: float, values: Sequence[float], tolerance: float) -> list[Figure]:
    """``given`` weighed against the mean of ``values`` (Student's t test of the mean, its 95%
    interval; none with fewer than two): material where it is more than ``tolerance`` of
    itself off that mean."""
    ci = mean_interval(values)
    if ci is None:
        return []
    mean = statistics.fmean(values)
    return [Figure(field, given, mean, ci, mean_p(values, given),
                   abs(given - mean) > tolerance * given)]  # fmt: skip


RESAMPLES = 20_000
"""Means :func:`drawn_mean_figure` draws from the plan's runs to weigh a measured mean."""
DISTINCT_DRAWN = 64
"""At most this many distinct bills drawn (a spec's runs can cost only so many sums of its
prices), :func:`drawn_mean_figure` draws how many runs of a batch took each, not each run."""
RESAMPLED_VALUES = 20_000_000
"""The most runs :func:`drawn_mean_figure` resamples one by one (past :data:`DISTINCT_DRAWN`
bills): past them, fewer means (at least 2,000), and past 10,000 values the normal law of the
plan's own spread."""


def drawn_mean_figure(
    field: str, given: float, values: Sequence[float], drawn: ArrayLike, tolerance: float,
    resamples: int = RESAMPLES,
) -> list[Figure]:  # fmt: skip
    """``given`` weighed against the mean of ``values``, where the plan draws each value
    whole (``drawn``: its own draws of one, a Monte Carlo's runs, whose mean is ``given`` or
    near it): the p-value is the share of ``resamples`` means of as many draws that lie as
    far out on the same side, doubled (equal tails), and the interval the measured mean less
    those means' 2.5% and 97.5% quantiles' distance from the draws' mean. Material, as in
    :func:`mean_figure`, where more than ``tolerance`` of ``given`` off.

    Student's t test (:func:`mean_figure`) takes the spread from the values and assumes
    their mean spreads normally; where a dear branch is rare the values are skewed, and a
    batch that drew it less often than its share looks cheaper than chance explains (40
    runs of a route taking a 5.7x branch 14% of the time were called off 6.8% of the time
    at 5%). The plan's own draws hold the skew, and hold the bills a run can have, so
    that a mean of them is weighed against the very means the plan can make (the draws are
    not scaled to ``given``: that would move them off those values). Drawn with a fixed
    seed, so the same values are judged alike. None drawn, or a plan of 0:
    :func:`mean_figure`.
    """
    import numpy as np

    base = np.asarray(drawn, dtype=float)
    centre = float(base.mean()) if base.size else 0.0
    if len(values) < 2 or centre <= 0 or given <= 0:
        return mean_figure(field, given, values, tolerance)
    n, mean = len(values), statistics.fmean(values)
    tie = 1e-9 * max(abs(mean), centre)
    rng = np.random.default_rng(0)
    bills, times = np.unique(base, return_counts=True)
    if bills.size <= DISTINCT_DRAWN:  # how many runs of n drew each bill: exact, and cheap
        means = rng.multinomial(n, times / base.size, size=resamples) @ bills / n
    elif n > 10_000:  # the normal law of the plan's spread: its skew gone at this many
        sd = float(base.std()) / math.sqrt(n)
        p = 1.0 if abs(mean - centre) <= tie else math.erfc(abs(mean - centre) / sd / math.sqrt(2.0))
        return [Figure(field, given, mean, (max(0.0, mean - Z95 * sd), mean + Z95 * sd), p,
                       abs(given - mean) > tolerance * given)]  # fmt: skip
    else:
        count = max(2_000, min(resamples, RESAMPLED_VALUES // n))
        per = max(1, 1_000_000 // n)  # means drawn at a time: about a million values
        means = np.concatenate([base[rng.integers(0, base.size, (min(per, count - i), n))].mean(axis=1)
                                for i in range(0, count, per)])  # fmt: skip
    below = (1 + int(np.count_nonzero(means <= mean + tie))) / (means.size + 1)
    above = (1 + int(np.count_nonzero(means >= mean - tie))) / (means.size + 1)
    p = min(1.0, 2.0 * min(below, above))
    q_lo, q_hi = np.quantile(means, [0.025, 0.975])
    lo, hi = mean - (float(q_hi) - centre), mean - (float(q_lo) - centre)
    return [Figure(field, given, mean, (max(0.0, lo), max(0.0, hi)), p,
                   abs(given - mean) > tolerance * given)]  # fmt: skip


def off_plan(
    costs: Sequence[float], ok: int, cost_planned: float | None, success_planned: float | None,
    alpha: float = ALPHA, cost_drawn: ArrayLike | None = None,
) -> tuple[Figure | None, Figure | None]:  # fmt: skip
    """``(cost, success)`` of runs that went to their end, each where the plan does not
    explain it, else None: ``costs`` their bills, ``ok`` how many succeeded. Both are weighed
    at once (:func:`judge`), so when the plan is right about both the chance that either is
    called off stays at most ``alpha``: the cost by the runs' mean against ``cost_planned``
    a run, material more than :data:`OFF_PLAN_SHARE` off (against means of the plan's own
    draws of a run's bill where given as ``cost_drawn``, :func:`drawn_mean_figure`; else
    Student's t test); the success by the exact binomial test against ``success_planned``.
    Neither with fewer than :data:`OFF_PLAN_RUNS` runs; a figure planned as None is not
    weighed.

    >>> off_plan([0.02] * 20, 20, 0.01, 1.0)[0].measured
    0.02
    >>> off_plan([0.0105] * 20, 20, 0.01, 1.0)  # 5% over, every run ok
    (None, None)
    >>> off_plan([0.01] * 20, 12, 0.01, 0.99)[1].measured
    0.6
    """
    if len(costs) < OFF_PLAN_RUNS:
        return None, None
    off = judge_together({
        "cost": [] if cost_planned is None
        else mean_figure("cost", cost_planned, costs, OFF_PLAN_SHARE) if cost_drawn is None
        else drawn_mean_figure("cost", cost_planned, costs, cost_drawn, OFF_PLAN_SHARE),
        "success": [] if success_planned is None else share_figure("success", success_planned, ok, len(costs)),
    }, alpha)  # fmt: skip
    return next(iter(off["cost"]), None), next(iter(off["success"]), None)


def wilson(successes: int, n: int, z: float = Z95) -> tuple[float, float]:
    """The Wilson interval of a proportion: 95% (``z`` the 97.5% normal quantile) unless
    ``z`` says otherwise."""
    if n == 0:
        return 0.0, 1.0
    p = successes / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    # At 0 (or n) the bound is 0 (or 1) exactly; float rounding left 4e-19, which a rate of
    # 0 then fell outside.
    lo = 0.0 if successes == 0 else max(0.0, centre - half)
    hi = 1.0 if successes == n else min(1.0, centre + half)
    return lo, hi


def binomial_p(k: int, n: int, p: float) -> float:
    """The two-sided exact p-value of ``k`` successes in ``n`` trials where each succeeds with
    chance ``p``: the chance of a count no likelier than ``k``, on either side of the mean
    (the test of R's ``binom.test`` and scipy's ``binomtest``). Its false alarms never pass
    its level, near 0 or 1 included, unlike the Wilson interval's; and near 0 or 1, where the
    far side of the mean holds no count so unlikely, it does not count that side as holding
    as much as k's, as doubling k's tail does (one miss in ten at 0.995 happens 4.9% of the
    time: doubled, 9.8%). 1 with ``n`` 0: nothing measured.

    >>> round(binomial_p(9, 10, 0.995), 4)  # one miss in ten at 0.995: chance, 1 in 20
    0.0489
    >>> binomial_p(3, 10, 0.0)  # never, says the guess; three times, says the ledger
    0.0
    """
    if n == 0:
        return 1.0
    if p <= 0.0 or p >= 1.0:
        return 1.0 if k == (0 if p <= 0.0 else n) else 0.0
    log_p, log_q = math.log(p), math.log1p(-p)
    top = math.lgamma(n + 1)

    def log_pmf(j: int) -> float:
        return top - math.lgamma(j + 1) - math.lgamma(n - j + 1) + j * log_p + (n - j) * log_q

    mode = min(n, math.floor((n + 1) * p))
    mark = log_pmf(k) + 1e-7  # counts as likely as k, up to float rounding, count too
    # k's own side: from k away from the mode every count is less likely than k
    total = _tail(k, n, p, upward=k >= mode, log_pmf=log_pmf)
    # the other side: past the mode the chances only shrink; the first count there no likelier
    # than k (a bisection), and every count beyond it
    if k >= mode:
        lo, hi = 0, min(mode, k - 1)  # rising on [lo, hi]: the last count at or under the mark
        if hi >= 0 and log_pmf(lo) <= mark:
            while lo < hi:
                mid = (lo + hi + 1) // 2
                lo, hi = (mid, hi) if log_pmf(mid) <= mark else (lo, mid - 1)
            total += _tail(lo, n, p, upward=False, log_pmf=log_pmf)
    else:
        lo, hi = max(mode, k + 1), n  # falling on [lo, hi]: the first count at or under the mark
        if lo <= n and log_pmf(hi) <= mark:
            while lo < hi:
                mid = (lo + hi) // 2
                lo, hi = (lo, mid) if log_pmf(mid) <= mark else (mid + 1, hi)
            total += _tail(lo, n, p, upward=True, log_pmf=log_pmf)
    return min(1.0, total)


def _tail(j: int, n: int, p: float, *, upward: bool, log_pmf: Callable[[int], float]) -> float:
    """The chance of ``j`` and every count beyond it away from the mode (up to ``n``, or down
    to 0), whose terms only shrink: summed from ``j`` until they cannot count."""
    term, total = math.exp(log_pmf(j)), 0.0
    odds = p / (1.0 - p)
    while term > 0.0:
        total += term
        if term <= total * 1e-17:
            break
        if upward:
            if j == n:
                break
            term *= (n - j) * odds / (j + 1)
            j += 1
        else:
            if j == 0:
                break
            term *= j / ((n - j + 1) * odds)
            j -= 1
    return total


def mean_p(values: Sequence[float], given: float) -> float:
    """The two-sided p-value of ``values``' mean against ``given`` (Student's t test of the
    mean, as its 95% interval, :func:`mean_interval`, reads): 1 with fewer than two values.
    On few values the normal test was short of their spread's own doubt (five latencies:
    12% false alarms at 5%); bills skewed like an exponential's still alarm a little more
    often than the level says (40 runs: 6.8% at 5%).

    >>> round(mean_p([1.0, 1.2, 0.8, 1.1, 0.9], 1.0), 4)
    1.0
    >>> round(mean_p([1.0, 1.2, 0.8, 1.1, 0.9], 1.2), 3)  # t = 2.83 on 4 degrees of freedom
    0.047
    """
    if len(values) < 2:
        return 1.0
    mean = statistics.fmean(values)
    se = statistics.stdev(values) / math.sqrt(len(values))
    if se == 0.0:  # every value alike: agreement up to float rounding, or none
        return 1.0 if math.isclose(mean, given, rel_tol=1e-9, abs_tol=1e-15) else 0.0
    return student_p(abs(mean - given) / se, len(values) - 1)


def mean_interval(values: Sequence[float]) -> tuple[float, float] | None:
    """The 95% interval of the mean of ``values`` (Student's t, as :func:`mean_p` reads it),
    not below 0 (every mean weighed here, a latency, a token count or a bill, is at least 0):
    None with fewer than two."""
    if len(values) < 2:
        return None
    mean = statistics.fmean(values)
    half = student_t95(len(values) - 1) * statistics.stdev(values) / math.sqrt(len(values))
    return max(mean - half, 0.0), mean + half


def student_p(t: float, df: int) -> float:
    """The two-sided p-value of ``t`` under Student's t with ``df`` degrees of freedom: the
    regularized incomplete beta function at ``df / (df + t**2)``.

    >>> round(student_p(2.228139, 10), 6)  # the 97.5% quantile on 10 degrees of freedom
    0.05
    """
    return _beta_regularized(df / 2.0, 0.5, df / (df + t * t))


@functools.lru_cache(maxsize=256)
def student_t95(df: int) -> float:
    """The 97.5% quantile of Student's t on ``df`` degrees of freedom (1.96 as ``df`` grows):
    the half-width, in standard errors, of a mean's 95% interval."""
    lo, hi = 0.0, 1.0
    while student_p(hi, df) > 0.05:
        hi *= 2.0
    for _ in range(100):  # bisection: the p-value falls as t grows
        mid = (lo + hi) / 2.0
        lo, hi = (mid, hi) if student_p(mid, df) > 0.05 else (lo, mid)
        if hi - lo <= 1e-12 * hi:
            break
    return (lo + hi) / 2.0


def _beta_regularized(a: float, b: float, x: float) -> float:
    """I_x(a, b), the regularized incomplete beta function: its continued fraction (modified
    Lentz), taken on the side of ``x`` where it converges fast."""
    if x <= 0.0:
        return 0.0
    if x >= 1.0:
        return 1.0
    front = math.exp(math.lgamma(a + b) - math.lgamma(a) - math.lgamma(b)
                     + a * math.log(x) + b * math.log1p(-x))  # fmt: skip
    if x < (a + 1.0) / (a + b + 2.0):
        return front * _beta_fraction(a, b, x) / a
    return 1.0 - front * _beta_fraction(b, a, 1.0 - x) / b


def _beta_fraction(a: float, b: float, x: float) -> float:
    tiny = 1e-300
    c, d = 1.0, 1.0 - (a + b) * x / (a + 1.0)
    d = 1.0 / (d if abs(d) > tiny else tiny)
    h = d
    for m in range(1, 10_000):
        for numerator in (m * (b - m) * x / ((a + 2 * m - 1) * (a + 2 * m)),
                          -(a + m) * (a + b + m) * x / ((a + 2 * m) * (a + 2 * m + 1))):  # fmt: skip
            d = 1.0 + numerator * d
            d = 1.0 / (d if abs(d) > tiny else tiny)
            c = 1.0 + numerator / c
            c = c if abs(c) > tiny else tiny
            step = c * d
            h *= step
        if abs(step - 1.0) < 1e-15:
            break
    return h


def holm(p_values: Sequence[float], alpha: float = ALPHA) -> list[bool]:
    """Which of several tests to call off, all weighed together, so that when every one holds
    the chance of calling any off stays at most ``alpha`` (Holm's step-down test): the
    smallest p-value against ``alpha / m``, the next against ``alpha / (m - 1)``, and so on
    until one passes its mark. One test at 95% calls a true guess off one time in twenty;
    ten of them, each at 95%, four times in ten.

    >>> holm([0.001, 0.04, 0.3])
    [True, False, False]
    >>> holm([0.04])
    [True]
    """
    m = len(p_values)
    out = [False] * m
    for rank, i in enumerate(sorted(range(m), key=p_values.__getitem__)):
        if p_values[i] > alpha / (m - rank):
            break
        out[i] = True
    return out
