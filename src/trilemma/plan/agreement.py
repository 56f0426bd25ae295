"""Whether what runs measured agrees with what the planner said: the intervals the experiments
and the ledger's fit give, and the tests a batch's table and its HTML report apply to the
runs' cost and success before they tell the user a guess is off."""

from __future__ import annotations

import functools
import math
import statistics
from collections.abc import Callable, Sequence
from typing import NamedTuple

__all__ = ["ALPHA", "OFF_PLAN_RUNS", "OFF_PLAN_SHARE", "Z95", "OffPlan", "binomial_p", "holm",
           "mean_interval", "mean_p", "off_plan", "student_p", "student_t95", "wilson"]  # fmt: skip

Z95 = 1.959964
"""The normal quantile of a two-sided 95% interval."""
ALPHA = 0.05
"""The chance, when every figure weighed holds, that :func:`holm` calls any of them off."""
OFF_PLAN_RUNS = 20
"""The fewest runs whose mean :func:`off_plan` weighs against the plan."""
OFF_PLAN_SHARE = 0.10
"""A mean off the plan by less than this share of it is not called off, however sure."""


class OffPlan(NamedTuple):
    """A figure of runs that the plan does not explain."""

    measured: float
    """What the runs measured: their mean cost, or the share of them ok."""
    planned: float
    """What the planner said of it."""
    p_value: float
    """The chance of runs at least this far off were the plan right (0: it cannot be)."""


def off_plan(
    costs: Sequence[float], ok: int, cost_planned: float | None, success_planned: float | None,
    alpha: float = ALPHA,
) -> tuple[OffPlan | None, OffPlan | None]:  # fmt: skip
    """``(cost, success)`` of runs that went to their end, each where the plan does not
    explain it, else None: ``costs`` their bills, ``ok`` how many succeeded. Both are weighed
    at once by Holm's test (:func:`holm`), so when the plan is right about both the chance
    that either is called off stays at most ``alpha``. The cost is Student's t test of the
    runs' mean against ``cost_planned`` a run, called off only where it is also more than
    :data:`OFF_PLAN_SHARE` off; the success the exact binomial test against
    ``success_planned`` (planned at 0 or 1, any run against it contradicts it outright and
    it is not weighed). Neither with fewer than :data:`OFF_PLAN_RUNS` runs; a figure
    planned as None is not weighed.

    >>> off_plan([0.02] * 20, 20, 0.01, 1.0)[0]
    OffPlan(measured=0.02, planned=0.01, p_value=0.0)
    >>> off_plan([0.0105] * 20, 20, 0.01, 1.0)  # 5% over, every run ok
    (None, None)
    >>> off_plan([0.01] * 20, 12, 0.01, 0.99)[1].measured
    0.6
    """
    runs = len(costs)
    if runs < OFF_PLAN_RUNS:
        return None, None
    cost = success = None
    if cost_planned is not None:
        mean = math.fsum(costs) / runs
        cost = OffPlan(mean, cost_planned, mean_p(costs, cost_planned))
    if success_planned is not None:
        success = OffPlan(ok / runs, success_planned, binomial_p(ok, runs, success_planned))
    certain = success is not None and success_planned in (0.0, 1.0)
    chance = [f for f in (cost, None if certain else success) if f is not None]
    off = {id(f) for f, o in zip(chance, holm([f.p_value for f in chance], alpha), strict=True) if o}
    if cost is not None and (id(cost) not in off
                             or abs(cost.measured - cost.planned) <= OFF_PLAN_SHARE * cost.planned):
        cost = None
    if success is not None and not (id(success) in off or (certain and success.p_value == 0.0)):
        success = None
    return cost, success  # fmt: skip


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
    """The 95% interval of the mean of ``values`` (Student's t, as :func:`mean_p` reads it):
    None with fewer than two."""
    if len(values) < 2:
        return None
    mean = statistics.fmean(values)
    half = student_t95(len(values) - 1) * statistics.stdev(values) / math.sqrt(len(values))
    return mean - half, mean + half


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
