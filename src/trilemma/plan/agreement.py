"""Whether what runs measured agrees with what the planner said: the intervals the experiments
and the ledger's fit give, and the tests a batch's table and its HTML report apply to the
runs' cost and success before they tell the user a guess is off."""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence

__all__ = ["OFF_PLAN_RUNS", "OFF_PLAN_SHARE", "Z95", "Z99", "off_plan", "success_off_plan", "wilson"]

Z95 = 1.959964
"""The normal quantile of a two-sided 95% interval."""
Z99 = 2.575829
"""The normal quantile of a two-sided 99% interval."""
OFF_PLAN_RUNS = 20
"""The fewest runs whose mean :func:`off_plan` weighs against the plan."""
OFF_PLAN_SHARE = 0.10
"""A mean off the plan by less than this share of it is not called off, however sure."""


def off_plan(costs: Sequence[float], planned: float) -> tuple[float, float] | None:
    """``(mean, planned)`` where runs that went to their end measured ``costs`` and their
    mean is more than :data:`OFF_PLAN_SHARE` off ``planned`` and outside its own 95%
    interval; None where it is not, or with fewer than :data:`OFF_PLAN_RUNS` runs.

    >>> off_plan([0.02] * 20, 0.01)
    (0.02, 0.01)
    >>> off_plan([0.0105] * 20, 0.01) is None  # 5% over
    True
    """
    if len(costs) < OFF_PLAN_RUNS:
        return None
    mean = math.fsum(costs) / len(costs)
    spread = Z95 * statistics.stdev(costs) / math.sqrt(len(costs))
    return (mean, planned) if abs(mean - planned) > max(spread, OFF_PLAN_SHARE * planned) else None


def success_off_plan(ok: int, runs: int, planned: float) -> tuple[float, float] | None:
    """``(share ok, planned)`` where ``ok`` of ``runs`` that went to their end succeeded and
    the planned chance lies outside the 99% Wilson interval of that share (a plan that holds
    is called off one batch in a hundred, not one in twenty); None where it does not, or with
    fewer than :data:`OFF_PLAN_RUNS` runs.

    >>> success_off_plan(12, 20, 0.99)
    (0.6, 0.99)
    >>> success_off_plan(19, 20, 0.99) is None
    True
    """
    if runs < OFF_PLAN_RUNS:
        return None
    lo, hi = wilson(ok, runs, Z99)
    return None if lo <= planned <= hi else (ok / runs, planned)


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
