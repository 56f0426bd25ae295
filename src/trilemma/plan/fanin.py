"""The mean latency of a DAG where branches whose times vary join.

The longest path of the steps' mean latencies is a lower bound on the mean of the longest
path: a run waits for the slowest of the branches it joins, and the slowest of fifty steps
that each retry one time in ten is almost always one that retried. On a fan-out of 50 steps
of 1 s at ``p_ok: 0.9`` with two retries each, and a step after them, the longest path of
the means is 2.14 s; the runs take 3.94 s on average.

:func:`mean_longest` draws each step's time from its :data:`Spread` (each way its attempts
can end, an answer, a fault or a timeout, each at its mean time, a cascade's rungs and a
routed step's branches each at theirs; the answers spread by their calls' jitter, as the
timeout and the waves of calls sent together and the hedges leave it; the backoff between
attempts) for :data:`SAMPLES` runs with a fixed seed, and averages their longest paths: a
deterministic figure for a given spec, each branch's draws shared by all that follow it (so
two paths through one step are not taken for independent ones). What else varies in a run
(a deadline, a failed step ending the run, the concurrency slots) is the Monte Carlo's
(:mod:`trilemma.plan.simulate`). Twenty 1 s calls at ``latency_jitter: 0.5``, then
one after them: 3.32 s (the Monte Carlo 3.33 s), where the longest path of means is 2 s.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

__all__ = [
    "SAMPLES", "Spread", "Way", "log_sigma", "mean_longest", "retry_spread", "spread_mean", "varies",
    "ways_spread",
]

Spread = tuple[tuple[float, float, float, float, float], ...]
"""A step's time as a mixture of (chance, busy, wait, width, sigma) terms: ``busy``
seconds of answered calls, times a lognormal of mean 1 and log-sigma ``sigma`` (0:
exactly), plus ``wait`` seconds (faults, timeouts, Retry-After) and a uniform wait below
``width``. Empty: always its mean."""

SAMPLES = 2048
"""Runs drawn: the mean's standard error is a 45th of the longest path's standard deviation."""

_SEED = 20261205


Way = tuple[float, float, float, float, float]
"""One way an attempt can end: (chance, wait, answered, variance, ok): ``wait`` seconds
that do not vary (a fault's, a timeout's), ``answered`` seconds of answers that do, with
``variance`` seconds squared, and the chance the step succeeds then (0 for a fault)."""


def retry_spread(
    outcomes: Sequence[tuple[float, float, float]], fails: Sequence[float],
    limited: Sequence[float], waits: Sequence[float], after: float,
    variance: float | Sequence[float] = 0.0,
) -> Spread:  # fmt: skip
    """The time of a step of ``len(outcomes)`` attempts at most, attempt ``i`` failing with
    ``fails[i]`` (a retry follows it; the last attempt ends the step either way),
    ``limited[i]`` of that on a rate limit (see :func:`ways_spread`).

    ``outcomes[i]``: attempt ``i``'s chance to meet no fault and no timeout, and its seconds
    then and otherwise (a fault ends it sooner, a timeout later). A clean attempt succeeds
    with the chance that leaves it failing ``fails[i]`` of the time, and takes as long
    either way.

    ``variance``: that of an answer's seconds over their mean squared (its calls' jitter;
    :func:`trilemma.plan.hedge.wave_variance`), one for every attempt or one per attempt (a
    cascade's rungs).
    """
    relative = [variance] * len(outcomes) if isinstance(variance, (int, float)) else list(variance)
    ways = []
    for i, (clean, answered, failed) in enumerate(outcomes):
        ok = (1.0 - fails[i]) / clean if i < len(fails) and clean > 0.0 else 0.0
        ways.append(((clean, 0.0, answered, relative[i] * answered * answered, ok),
                     (1.0 - clean, failed, 0.0, 0.0, 0.0)))  # fmt: skip
    return ways_spread(ways, limited, waits, after)


def ways_spread(
    ways: Sequence[Sequence[Way]], limited: Sequence[float], waits: Sequence[float], after: float
) -> Spread:
    """The time of a step of ``len(ways)`` attempts at most, attempt ``i`` ending one of the
    ``ways[i]`` (see :data:`Way`; a retry follows it unless the step succeeds, and the last
    attempt ends the step either way), ``limited[i]`` of it on a rate limit. The terms
    follow each way an attempt can end, those of equal seconds merged.

    Before retry ``i`` the step waits a uniform backoff below ``waits[i]``, or ``after``
    seconds after a rate limit: the waits before an attempt are taken as one uniform term
    of their sum's mean and variance (within nothing and their longest). The mixture's mean
    is the expected latency :func:`trilemma.plan.estimate.retry_waits` gives the step.

    The answers a way of ending holds are taken as one lognormal of their seconds' mean and
    variance (``n`` alike answers of relative variance ``v``: log-sigma ``sqrt(log(1 + v /
    n))``).
    """
    out: dict[tuple[float, ...], float] = {}
    # (seconds of answers, of faults and timeouts, the answers' variance) -> the chance the
    # step reaches the next attempt so; only answers vary with the jitter
    going: dict[_State, float] = {(0.0, 0.0, 0.0): 1.0}
    least, width = 0.0, 0.0
    waited = spread_of_waits = most = 0.0  # the waits' mean, variance and top so far
    last = len(ways) - 1

    def sigma(answered: float, spread: float) -> float:
        return log_sigma(spread / answered**2) if spread > 0.0 and answered else 0.0

    def add(into: dict[Any, float], key: Any, c: float) -> None:
        if c > 0.0:
            into[key] = into.get(key, 0.0) + c

    for i, attempt in enumerate(ways):
        ahead: dict[_State, float] = {}
        done: dict[_State, float] = {}  # the step ends with this attempt
        for (said, lost, var), chance in going.items():
            for c, wait, answered, spread, ok in attempt:
                key = (round(said + answered, 12), round(lost + wait, 12), round(var + spread, 12))
                if i == last:  # it ends the step whatever it gets
                    add(done, key, chance * c)
                    continue
                add(done, key, chance * c * ok)  # it succeeds
                add(ahead, key, chance * c * (1.0 - ok))  # a wrong answer, or a fault
        for (a, f, v), c in _fewer(done).items():
            add(out, (a, least + f, width, sigma(a, v)), c)
        fail = 1.0 - math.fsum(c * ok for c, *_, ok in attempt)
        if i == last or fail <= 1e-12:
            break
        lim = min(limited[i], fail) / fail  # of the failures, the share on a rate limit
        mean = lim * after + (1.0 - lim) * waits[i] / 2.0
        spread_of_waits += lim * after**2 + (1.0 - lim) * waits[i] ** 2 / 3.0 - mean**2
        waited += mean
        most += max(after if lim > 0.0 else 0.0, waits[i])
        half = min(math.sqrt(3.0 * max(spread_of_waits, 0.0)), waited, most - waited)
        if waited - half <= 1e-12 * waited:  # one uniform wait from nothing: exactly so
            half = waited
        least, width = waited - half, 2.0 * half
        going = _fewer(ahead)
    return tuple((c, busy, lo, w, sig) for (busy, lo, w, sig), c in out.items())


_State = tuple[float, float, float]

MAX_STATES = 128
"""The most ways a step's attempts so far are told apart (seconds of answers, of faults,
the answers' variance). Alike attempts stay far under it (ten retries: 66); a routed
step's branches multiply with its retries (five branches, ten retries: 174,000), so past it
neighbours in time are merged."""


def _fewer(states: dict[_State, float]) -> dict[_State, float]:
    """``states`` in at most :data:`MAX_STATES` // 2 groups of neighbours in time when there
    are more than :data:`MAX_STATES`: each group's chance, mean seconds of answers and of
    faults, and its answers' variance with the spread of the group's times (their mean and
    variance kept)."""
    if len(states) <= MAX_STATES:
        return states
    ranked = sorted(states.items(), key=lambda kv: kv[0][0] + kv[0][1])
    groups = MAX_STATES // 2
    out: dict[_State, float] = {}
    for g in range(groups):
        part = ranked[g * len(ranked) // groups:(g + 1) * len(ranked) // groups]
        c = math.fsum(p for _, p in part)
        said = math.fsum(p * k[0] for k, p in part) / c
        lost = math.fsum(p * k[1] for k, p in part) / c
        var = math.fsum(p * (k[2] + (k[0] + k[1] - said - lost) ** 2) for k, p in part) / c
        key = (round(said, 12), round(lost, 12), round(var, 12))
        out[key] = out.get(key, 0.0) + c
    return out


def log_sigma(variance: float) -> float:
    """The log-sigma of a lognormal whose variance over its mean squared is ``variance``."""
    return math.sqrt(math.log1p(variance))


def varies(spread: Spread) -> bool:
    """The step's time is not always the same."""
    return len(spread) > 1 or (len(spread) == 1 and (spread[0][3] > 0.0 or spread[0][4] > 0.0))


def spread_mean(spread: Spread) -> float:
    """The mixture's mean seconds."""
    return math.fsum(c * (busy + wait + width / 2.0) for c, busy, wait, width, _ in spread)


class _Draws:
    """Each varying step's times over the drawn runs, from one generator; the arrays of a
    spread made once, however many steps share it."""

    def __init__(self) -> None:
        self.rng = np.random.default_rng(_SEED)
        self.made: dict[Spread, tuple[Any, ...]] = {}

    def __call__(self, spread: Spread) -> np.ndarray:
        arrays = self.made.get(spread)
        if arrays is None:
            chance, busy, wait, width, sigma = np.array(spread).T
            cum = np.cumsum(chance)
            jittery = bool(sigma.any())  # else the busy seconds are fixed: add them now
            arrays = self.made[spread] = (cum[:-1] / cum[-1], wait if jittery else wait + busy,
                                          width, busy, sigma, jittery)  # fmt: skip
        bounds, fixed, width, busy, sigma, jittery = arrays
        u = self.rng.random((2, SAMPLES))
        if len(width) == 1:
            out: np.ndarray = fixed[0] + width[0] * u[1]
            if jittery:
                out += busy[0] * np.exp(sigma[0] * self.rng.standard_normal(SAMPLES)
                                        - sigma[0] ** 2 / 2.0)  # fmt: skip
            return out
        which = np.searchsorted(bounds, u[0], side="right")
        out = fixed[which] + width[which] * u[1]
        if jittery:
            sig = sigma[which]
            out += busy[which] * np.exp(sig * self.rng.standard_normal(SAMPLES) - sig * sig / 2.0)
        return out


def mean_longest(
    graph: Mapping[str, Sequence[str]], order: Sequence[str], mean: Mapping[str, float],
    spread: Mapping[str, Spread],
) -> tuple[float, float] | None:  # fmt: skip
    """The mean of the longest path over :data:`SAMPLES` drawn runs, and its standard
    error; None where no branches whose times vary join (the longest path of the means is
    the mean then).

    ``mean``: each step's mean seconds, its time where its ``spread`` is empty or does not
    vary. ``order``: the steps, each after its dependencies.
    """
    after: dict[str, list[str]] = {k: [] for k in order}  # each step's dependents
    for k in order:
        for d in graph[k]:
            after[d].append(k)
    if not _joined(graph, order, spread, {k: len(v) for k, v in after.items()}):
        return None
    draw = _Draws()
    # each step's start over the draws: the latest finish of its dependencies so far, taken
    # in as each finishes (a fan of thousands holds one array, not thousands)
    start: dict[str, np.ndarray | float] = {}
    end: np.ndarray | float = 0.0
    for k in order:
        own = spread.get(k, ())
        finish = start.pop(k, 0.0) + (draw(own) if varies(own) else mean[k])
        for d in after[k]:
            start[d] = _latest([start[d], finish]) if d in start else finish
        if not after[k]:  # a last step: the run ends with the latest of them
            end = _latest([end, finish])
    if not isinstance(end, np.ndarray):
        return float(end), 0.0
    return float(end.mean()), float(end.std() / math.sqrt(SAMPLES))


def _latest(times: Sequence[np.ndarray | float]) -> np.ndarray | float:
    arrays = [t for t in times if isinstance(t, np.ndarray)]
    fixed = max((t for t in times if not isinstance(t, np.ndarray)), default=None)
    if not arrays:
        return fixed if fixed is not None else 0.0
    out = arrays[0] if len(arrays) == 1 else np.maximum.reduce(arrays)
    return out if fixed is None else np.maximum(out, fixed)


def _joined(
    graph: Mapping[str, Sequence[str]], order: Sequence[str], spread: Mapping[str, Spread],
    dependents: Mapping[str, int],
) -> bool:  # fmt: skip
    """Two branches, one of whose times varies, meet: at a step or at the run's end."""
    varied: dict[str, bool] = {}  # the step's finish time varies
    ends = 0
    ending_varied = False
    for k in order:
        deps = graph[k]
        if len(deps) > 1 and any(varied[d] for d in deps):
            return True
        varied[k] = varies(spread.get(k, ())) or any(varied[d] for d in deps)
        if dependents[k] == 0:
            ends += 1
            ending_varied = ending_varied or varied[k]
    return ends > 1 and ending_varied
