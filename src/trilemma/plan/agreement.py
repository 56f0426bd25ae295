"""Whether what runs measured agrees with what the planner said: the test a batch's table and
its HTML report apply to the runs' cost before they tell the user a guess is off."""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence

__all__ = ["OFF_PLAN_RUNS", "OFF_PLAN_SHARE", "off_plan"]

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
    spread = 1.959964 * statistics.stdev(costs) / math.sqrt(len(costs))
    return (mean, planned) if abs(mean - planned) > max(spread, OFF_PLAN_SHARE * planned) else None
