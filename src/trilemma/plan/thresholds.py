"""Choosing a hedge threshold: what each costs and what it does to the latency tail.

A lower ``hedge_after_s`` sends more copies (cost) and cuts more of the tail
(p95, p99). :func:`hedge_thresholds` puts candidate thresholds for one model side
by side: the analytic estimate of each, and a Monte Carlo of each drawn from the
same seed (common random numbers, so the rows differ by the threshold, not by
sampling luck). A threshold is given in seconds or as a percentile of the model's
own latency (``p90``: the copy goes out for the slowest 10% of calls).
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from statistics import NormalDist
from typing import Any

from trilemma.errors import UsageError
from trilemma.plan.estimate import Estimate, estimate
from trilemma.plan.hedge import hedged
from trilemma.plan.simulate import SimResult, simulate
from trilemma.spec import ModelProfile, Simulation, Workflow

__all__ = ["Threshold", "hedge_thresholds", "parse_thresholds", "percentile_latency", "with_hedge"]

_PERCENTILE = re.compile(r"p(\d+(?:\.\d+)?)")


@dataclass(frozen=True, slots=True)
class Threshold:
    """One candidate threshold and its figures."""

    after_s: float | None
    """``hedge_after_s`` (None: no hedge)."""
    label: str
    """As the user gave it (``3``, ``p90``, ``none``)."""
    copy_rate: float
    """Chance one call is hedged."""
    estimate: Estimate
    """The planner's figures for the spec with this threshold."""
    sim: SimResult
    """The Monte Carlo's."""

    def to_json(self) -> dict[str, Any]:
        """One row of ``trilemma simulate --hedge --json``."""
        return {
            "hedge_after_s": self.after_s,
            "label": self.label,
            "copy_rate": round(self.copy_rate, 12),
            "cost_expected_usd": round(self.estimate.cost_expected, 12),
            "cost_worst_usd": round(self.estimate.cost_worst, 12),
            "simulated": self.sim.to_json(),
        }


def percentile_latency(m: ModelProfile, percentile: float) -> float:
    """Seconds below which ``percentile`` % of ``m``'s calls answer (its lognormal)."""
    sigma = m.latency_jitter
    median = m.latency_s * math.exp(-sigma * sigma / 2)
    return median * math.exp(sigma * NormalDist().inv_cdf(percentile / 100))


def parse_thresholds(text: str, wf: Workflow, flag: str = "--hedge") -> tuple[str, list[str]]:
    """``MODEL=T,T,...`` (``MODEL=`` may be left out when the spec has one model) as the
    model's name and its thresholds (seconds, ``pNN`` or ``none``), unchecked."""
    name, sep, values = text.rpartition("=")
    if not sep:
        if len(wf.models) != 1:
            raise UsageError(f"{flag} {text}: the spec has {len(wf.models)} models; name one, as "
                             f"in {flag} {next(iter(wf.models))}={text}")  # fmt: skip
        name = next(iter(wf.models))
    if sep and not name:
        raise UsageError(f"{flag} {text}: name the model before '=', as in "
                         f"{flag} {next(iter(wf.models))}{text}")  # fmt: skip
    if name not in wf.models:
        raise UsageError(f"{flag} {text}: no model {name!r} in the spec (it has "
                         f"{', '.join(sorted(wf.models))})")  # fmt: skip
    items = [v.strip() for v in values.split(",") if v.strip()]
    if not items:
        raise UsageError(f"{flag} {text}: give thresholds, e.g. {flag} {name}=none,p95,p90,3")
    return name, items


def _seconds(label: str, m: ModelProfile, name: str, flag: str) -> float | None:
    if label.lower() == "none":
        return None
    match = _PERCENTILE.fullmatch(label.lower())
    try:
        if match:
            pct = float(match.group(1))
            if not 0 < pct < 100:
                raise ValueError
            if m.latency_jitter == 0:
                raise UsageError(f"{flag} {label}: model {name!r} has no latency_jitter, so every "
                                 "call takes latency_s and a percentile is latency_s itself; give "
                                 "latency_jitter in the profile, or seconds")  # fmt: skip
            after = percentile_latency(m, pct)
        else:
            after = float(label)
    except ValueError:
        raise UsageError(f"{flag} {label}: a threshold is seconds (3), a percentile of the "
                         "model's latency (p90) or none") from None  # fmt: skip
    if not (after > 0 and math.isfinite(after)):
        raise UsageError(f"{flag} {label}: a threshold must be a number of seconds above 0")
    if after >= m.timeout_s:
        raise UsageError(f"{flag} {label}: {after:g} s is not below model {name!r}'s timeout_s "
                         f"({m.timeout_s:g}); a call is given up before its hedge is sent")  # fmt: skip
    return after


def with_hedge(wf: Workflow, model: str, after_s: float | None) -> Workflow:
    """``wf`` with ``model``'s calls hedged after ``after_s`` seconds (None: not hedged)."""
    m = wf.models[model].model_copy(update={"hedge_after_s": after_s})
    return wf.model_copy(update={"models": {**wf.models, model: m}})


def hedge_thresholds(
    wf: Workflow,
    model: str,
    labels: Sequence[str],
    runs: int,
    seed: int | None = None,
    settings: Simulation | None = None,
    *,
    halt: bool = True,
    progress: Callable[[int], object] | None = None,
    flag: str = "--hedge",
    max_cost_usd: float | None = None,
) -> list[Threshold]:
    """Each threshold in ``labels`` for ``model``, estimated and simulated from the same
    seed (under the spend ceiling ``max_cost_usd``, if given), longest first; a row without
    a hedge comes first (the baseline) whether asked for or not."""
    m = wf.models[model]
    chosen: dict[float | None, str] = {None: "none"}
    for label in labels:
        chosen.setdefault(_seconds(label, m, model, flag), label)
    rows = []
    for after, label in sorted(chosen.items(), key=lambda kv: -math.inf if kv[0] is None else -kv[0]):
        variant = with_hedge(wf, model, after)
        rate = 0.0 if after is None else hedged(m.latency_s, m.latency_jitter, after)[0]
        sim = simulate(variant, runs, seed, settings, halt=halt, progress=progress,
                       max_cost_usd=max_cost_usd)
        rows.append(Threshold(after, label, rate, estimate(variant), sim))
    return rows
