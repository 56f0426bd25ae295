"""Hedged calls: what a second copy sent after ``hedge_after_s`` costs and saves.

A model profile with ``hedge_after_s: h`` sends a second copy of any call still
unanswered after ``h`` seconds; the first answer wins and the other copy is
cancelled and billed (an endpoint may bill a request its client abandoned). A
call's latency is the profile's lognormal with mean ``latency_s`` and sigma
``latency_jitter``, the copies' latencies independent, so for one call

* the hedge is sent with probability ``P(L > h)``, its price paid each time;
* the call takes ``min(L1, h + L2)``, on average
  ``integral_0^h S(t) dt + integral_h^inf S(t) S(t - h) dt`` with ``S(t) = P(L > t)``.

Without jitter every call takes ``latency_s``: a hedge below it is sent every time
and never wins, which the planner shows as cost with no gain. The same figures
hold for an attempt of several sequential calls when its time is drawn as one
(the Monte Carlo's model): both ``h`` and the latency scale by the calls.

A call still unanswered after the profile's ``timeout_s`` is given up (a timeout: not
billed, and the step retries), so ``timeout_s`` cuts the lognormal's tail: a call is
given up with ``P(L > T)`` and one that answers takes ``E[L | L <= T]`` on average
(:func:`cut`). A hedged call is given up when both copies are, ``P(L > T)^2`` (the copy
is always sent by then, ``h < T``), and one that answers takes the race cut at the copies'
timeouts (:func:`hedged_answers`; :func:`hedged` is the race without them).

Calls sent together (a vote's samples, a debate's agents in a round) wait for the slowest:
a wave of ``n`` calls is given up with ``1 - (1 - P(L > T))^n`` and one that answers takes
``E[max | max <= T]`` of the ``n`` independent latencies (:func:`wave`). Each hedged call of
a wave races its own copy: a call has answered by ``t`` unless it is not in by ``min(t, T)``
and, from ``h`` on, neither is its copy by ``min(t - h, T)`` (:func:`hedged_answers`); a
wave is given up with ``1 - (1 - P(L > T)^2)^n`` and one that answers takes the slowest of
its races, cut at the copies' timeouts (:func:`hedged_wave`).
"""

from __future__ import annotations

import math
from functools import lru_cache

import numpy as np

from trilemma.spec import ModelProfile

__all__ = [
    "call_latency",
    "call_price",
    "cut",
    "hedge_rate",
    "hedged",
    "hedged_answers",
    "hedged_wave",
    "timeouts",
    "wave",
    "worst_call_price",
]

_GRID = 4001
"""Points per integral (log-spaced); the tests hold the result to Monte Carlo within 0.5%."""
_TAIL_Z = 9.0
"""Standard deviations of log-latency the integrals reach on each side."""


def _survival(t: np.ndarray, mean: float, sigma: float) -> np.ndarray:
    """P(L > t) for the lognormal with mean ``mean`` and log-sigma ``sigma``."""
    z = (np.log(t / mean) + sigma * sigma / 2) / (sigma * math.sqrt(2.0))
    return np.asarray(0.5 * np.vectorize(math.erfc, otypes=[float])(z), dtype=float)


def _area(y: np.ndarray, x: np.ndarray) -> float:
    """The trapezoid rule (numpy 1.26 has no ``trapezoid``)."""
    return float(np.sum((y[1:] + y[:-1]) * np.diff(x)) / 2)


@lru_cache(maxsize=256)
def hedged(mean: float, sigma: float, after: float) -> tuple[float, float]:
    """(chance the hedge is sent, expected seconds of the hedged call) for latency mean
    ``mean``, lognormal sigma ``sigma``, a copy sent after ``after`` seconds."""
    if sigma == 0.0:
        return (1.0 if mean > after else 0.0), mean
    median = mean * math.exp(-sigma * sigma / 2)
    lo, hi = median * math.exp(-_TAIL_Z * sigma), median * math.exp(_TAIL_Z * sigma)
    rate = float(_survival(np.array([after]), mean, sigma)[0])
    # integral_0^h S(t) dt: S is 1 below lo (to within 1e-19)
    head = min(after, lo)
    if after > lo:
        t = np.geomspace(lo, after, _GRID)
        head += _area(_survival(t, mean, sigma), t)
    # integral_0^inf S(h + x) S(x) dx: below lo S(x) = 1, above it a log grid
    near = np.linspace(after, after + lo, _GRID)
    x = np.geomspace(lo, hi, _GRID)
    tail = _area(_survival(near, mean, sigma), near)
    tail += _area(_survival(after + x, mean, sigma) * _survival(x, mean, sigma), x)
    return rate, head + tail


def hedge_rate(m: ModelProfile) -> float:
    """The chance one of ``m``'s calls is hedged (0 without ``hedge_after_s``)."""
    if m.hedge_after_s is None:
        return 0.0
    return hedged(m.latency_s, m.latency_jitter, m.hedge_after_s)[0]


def call_price(m: ModelProfile, max_tokens: int | None = None) -> float:
    """Dollars one call costs on average: its price, plus, when a copy is sent, the
    reservation of the copy that loses the race (cancelled in flight, it is billed at its
    hold); ``max_tokens``: the step's, where answers stop (None: the profile's)."""
    price = m.price_at(max_tokens)
    if m.hedge_after_s is None:
        return price
    return price + hedge_rate(m) * m.reserved_per_call(max_tokens)


def worst_call_price(m: ModelProfile, max_tokens: int | None = None) -> float:
    """Dollars one call may cost: its price, and a loser's reservation when it may be hedged."""
    price = m.price_at(max_tokens)
    return price if m.hedge_after_s is None else price + m.reserved_per_call(max_tokens)


def call_latency(m: ModelProfile) -> float:
    """Seconds one call takes on average (``latency_s``, or less when hedging wins)."""
    if m.hedge_after_s is None:
        return m.latency_s
    return hedged(m.latency_s, m.latency_jitter, m.hedge_after_s)[1]


@lru_cache(maxsize=256)
def cut(mean: float, sigma: float, timeout: float) -> tuple[float, float]:
    """(chance a call outlasts ``timeout``, mean seconds of a call that does not) for latency
    mean ``mean`` and lognormal sigma ``sigma``; without jitter, all or nothing."""
    if sigma == 0.0:
        return (1.0, 0.0) if mean > timeout else (0.0, mean)
    root2 = sigma * math.sqrt(2.0)
    z, half = math.log(timeout / mean), sigma * sigma / 2
    late = 0.5 * math.erfc((z + half) / root2)  # P(L > T)
    if late >= 1.0:
        return 1.0, 0.0
    within = mean * 0.5 * math.erfc(-(z - half) / root2)  # E[L; L <= T]
    return late, min(within / (1.0 - late), timeout)  # rounding aside, E[L | L <= T] <= T


def _slowest(top: float, calls: int) -> tuple[np.ndarray, np.ndarray]:
    """A grid of standard normal ``z`` up to ``top`` (the timeout's), and the density there
    of the largest of ``calls`` independent draws: ``calls Phi(z)^(calls - 1) phi(z)``."""
    z = np.linspace(-_TAIL_Z, min(top, _TAIL_Z + 2.0), _GRID)
    below = np.asarray(0.5 * np.vectorize(math.erfc, otypes=[float])(-z / math.sqrt(2.0)))
    return z, calls * below ** (calls - 1) * np.exp(-z * z / 2) / math.sqrt(2.0 * math.pi)


@lru_cache(maxsize=256)
def wave(mean: float, sigma: float, timeout: float, calls: int) -> tuple[float, float]:
    """(chance a wave of ``calls`` calls sent together outlasts ``timeout``, mean seconds of
    one that does not): the slowest of its calls' independent lognormal latencies, each
    given up at ``timeout``. One call: :func:`cut`."""
    if calls == 1 or sigma == 0.0:  # without jitter a call is late always or never
        return cut(mean, sigma, timeout)
    root2, half = sigma * math.sqrt(2.0), sigma * sigma / 2
    late = 1.0 - (1.0 - 0.5 * math.erfc((math.log(timeout / mean) + half) / root2)) ** calls
    if late >= 1.0:
        return 1.0, 0.0
    # E[max; max <= T] = integral of L(z) dP(max <= L(z)), L(z) = mean e^(sigma z - half),
    # P(max <= L(z)) = Phi(z)^calls; z runs up to the timeout's
    z, density = _slowest((math.log(timeout / mean) + half) / sigma, calls)
    within = _area(mean * np.exp(sigma * z - half) * density, z)
    return late, min(within / (1.0 - late), timeout)


@lru_cache(maxsize=64)
def hedged_answers(
    mean: float, sigma: float, after: float, timeout: float
) -> tuple[np.ndarray, np.ndarray]:
    """A hedged call's time to answer, as a table: seconds ``t`` (increasing, from 0) and the
    chance it has answered by each. What is left, ``P(L > T)^2``, is given up at
    ``after + timeout``, when the copy's timeout passes too. Needs ``sigma > 0``."""
    median = mean * math.exp(-sigma * sigma / 2)
    lo, hi = median * math.exp(-_TAIL_Z * sigma), median * math.exp(_TAIL_Z * sigma)
    end = after + min(timeout, hi)  # nothing answers later (to within 1e-19)
    t = np.unique(np.concatenate([np.geomspace(lo, end, _GRID),
                                  after + np.geomspace(lo, end - after, _GRID)]))  # fmt: skip
    t = np.concatenate([[0.0], t[t <= end]])
    first = _survival(np.clip(t, lo, timeout), mean, sigma)
    copy = np.where(t > after, _survival(np.clip(t - after, lo, timeout), mean, sigma), 1.0)
    answered = 1.0 - first * copy
    answered[0] = 0.0
    return t, np.maximum.accumulate(answered)


@lru_cache(maxsize=256)
def hedged_wave(
    mean: float, sigma: float, after: float, timeout: float, calls: int
) -> tuple[float, float]:
    """(chance a wave of ``calls`` hedged calls is given up, mean seconds of one that is not):
    the slowest of ``calls`` independent races (:func:`hedged_answers`)."""
    t, answered = hedged_answers(mean, sigma, after, timeout)
    all_in = answered**calls  # P(max <= t)
    kept = float(all_in[-1])
    if kept <= 0.0:
        return 1.0, 0.0
    # E[max; max <= end] = integral_0^end P(t < max <= end) dt
    return 1.0 - kept, min(_area(kept - all_in, t) / kept, float(t[-1]))


def wave_variance(m: ModelProfile, calls: int = 1) -> float:
    """The variance of a wave of ``calls`` of ``m``'s calls that answers in time, over its
    mean squared (:func:`timeouts` gives the mean): the slowest of their lognormal
    latencies, each cut at the timeout, or of their races (hedged). 0 without jitter."""
    if m.latency_jitter == 0.0:
        return 0.0
    if m.hedge_after_s is None:
        return _wave_variance(m.latency_s, m.latency_jitter, m.timeout_s, calls)
    return _hedged_variance(m.latency_s, m.latency_jitter, m.hedge_after_s, m.timeout_s, calls)


@lru_cache(maxsize=256)
def _wave_variance(mean: float, sigma: float, timeout: float, calls: int) -> float:
    late, kept = wave(mean, sigma, timeout, calls)
    if late >= 1.0 or kept <= 0.0:
        return 0.0
    half = sigma * sigma / 2
    z_top = (math.log(timeout / mean) + half) / sigma
    if calls == 1:  # E[L^2; L <= T] = mean^2 e^(sigma^2) Phi(z_T - 2 sigma), closed
        square = mean * mean * math.exp(sigma * sigma) * 0.5 * math.erfc(
            -(z_top - 2.0 * sigma) / math.sqrt(2.0))
    else:  # as wave() takes E[max; max <= T], with L(z)^2
        z, density = _slowest(z_top, calls)
        square = _area((mean * np.exp(sigma * z - half)) ** 2 * density, z)
    return max(square / (1.0 - late) / (kept * kept) - 1.0, 0.0)


@lru_cache(maxsize=256)
def _hedged_variance(mean: float, sigma: float, after: float, timeout: float, calls: int) -> float:
    given_up, first = hedged_wave(mean, sigma, after, timeout, calls)
    if given_up >= 1.0 or first <= 0.0:
        return 0.0
    t, answered = hedged_answers(mean, sigma, after, timeout)
    all_in = answered**calls  # as hedged_wave() takes the mean: E[X^2; ...], 2t P(t < X <= end)
    kept = float(all_in[-1])
    square = _area(2.0 * t * (kept - all_in), t) / kept
    return max(square / (first * first) - 1.0, 0.0)


def timeouts(m: ModelProfile, calls: int = 1) -> tuple[float, float]:
    """(chance a wave of ``calls`` of ``m``'s calls, sent together, is given up at
    ``timeout_s``, mean seconds of one that answers in time); hedged calls each race their
    own copy (:func:`hedged_wave`)."""
    if m.hedge_after_s is None:
        return wave(m.latency_s, m.latency_jitter, m.timeout_s, calls)
    if m.latency_jitter == 0.0:  # every copy takes latency_s: the first wins, or none does
        late = cut(m.latency_s, 0.0, m.timeout_s)[0]
        return late, m.latency_s
    return hedged_wave(m.latency_s, m.latency_jitter, m.hedge_after_s, m.timeout_s, calls)
