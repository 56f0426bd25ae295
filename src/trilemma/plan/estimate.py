"""Analytic estimates of cost, latency and reliability for any workflow DAG.

The seed's three laws, applied to a real DAG:

* cost is price x calls, summed over steps; ``book`` counts retries as free (the
  seed's formula), ``expected`` counts each retry with the chance it happens,
  ``worst`` counts every retry as used;
* latency is the longest path through the DAG of step latencies, a step taking
  its model latency x its sequential calls; ``critical_path`` takes no retry,
  ``worst`` every retry;
* reliability is the product of per-step success, ``k`` retries lifting ``p``
  to ``1 - (1 - p)^(k + 1)``.

A step that ``escalate``s (a cascade) runs attempt ``i`` on the ``i``-th model of
its ladder, so each attempt has its own price, latency and ``p``: attempt ``i``
happens with the chance that every attempt before it failed, and the step fails
only if every attempt does.

A cached step costs nothing, takes :data:`CACHE_HIT_LATENCY_S` and succeeds. With a
``hit_rate`` below 1 its expected figures mix that hit with the step as sent, while its
worst case and critical path stay a miss's.

A model with ``hedge_after_s`` prices each call with the chance its hedge is sent (twice
the price in the worst case) and times it as the race of the two copies in the expected
figures (:mod:`trilemma.plan.hedge`); the critical path keeps ``latency_s``.

A model with ``faults`` (a simulated profile's, or one fitted from the ledger) fails a
call with their rate before ``p_ok`` is judged: an attempt of ``c`` calls meets no fault
with ``g = (1 - rate)^c`` and succeeds with ``g x p``. An attempt sends its calls in waves
(:attr:`~trilemma.spec.Step.waves`: a debate's rounds, then its judge): one that meets a
fault bills the calls answered in the waves before the fault's and beside it in its wave,
sends no later wave, and takes those waves' time then the fault's wave's (a lone call's
fault its own time, a timeout ``timeout_s``; beside others, at least the latency); see
:func:`attempt_of`. A call slower than its profile's ``timeout_s`` is given up the same
way: with ``latency_jitter`` it outlasts the timeout with ``P(L > T)`` of the lognormal, and
one that answers takes ``E[L | L <= T]`` (:func:`trilemma.plan.hedge.cut`). Calls sent
together wait for the slowest: a wave of ``n`` jittery calls takes ``E[max]`` of their
latencies, and is given up when any of them is (:func:`trilemma.plan.hedge.wave`; a round
of six agents at jitter 0.5 takes 1.76 times a call's mean); on a hedged model, the
slowest of the calls' races, each given up when both its copies are
(:func:`trilemma.plan.hedge.hedged_wave`). A routed step counts its classifier's and its branches' alike
(an attempt whose classifier faults sends no branch); its retries wait the backoff's
jitter (a 429's shorter Retry-After is not told apart there).

Between a step's attempts the executor waits its backoff (full jitter below half a second,
doubling with each failure, at most 20 s; after a rate limit, the Retry-After): the
expected latency counts each wait with the chance its retry happens (a quarter second
after a first failure), the worst case every wait at its longest (:func:`retry_waits`).

Where branches whose times vary join, a run waits for the slowest of them, which on
average is later than the slowest of their means: the expected latency is the mean of the
longest path there, each step's attempts, answers and backoffs drawn
(:mod:`trilemma.plan.fanin`); an early stop's step finishes at the mean of the longest path
up to it, drawn likewise.

An early stop (``stop_when: S``) ends the run when ``S`` passes: what has not
finished by then is cancelled or never started, and billed nothing, but for calls in
flight on a real endpoint, billed at their reservation (:func:`cancel_cost`). On the schedule
of expected step latencies, the steps that finish after ``S`` are skipped with the
chance ``S`` passes (the product of its and its ancestors' success); the expected
cost, calls and latency count that, and the run succeeds when every step finished
by then does. When nothing runs after ``S`` and it fails, the run goes on without
the stop (the executor's rule), and succeeds if every other step does. The worst
case and the critical path do not count the stop: ``S`` may fail.

The expected figures are of runs that go to their end. The executor sends nothing more once
a step has failed (its retries spent), so where runs fail often they cost and take less:
where every step succeeds with less than :data:`HALTS_SHOWN`, :attr:`Estimate.halting` has
them (:func:`halting`: a chain's exactly, else the expected figures times what halting
leaves of them in runs the Monte Carlo draws). Where steps race a ``stop_when``, the
expected cost and calls and the reliability are the Monte Carlo's (:attr:`Estimate.drawn`).
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any

from trilemma import dag
from trilemma.plan.fanin import (
    SAMPLES,
    Spread,
    Way,
    mean_longest,
    retry_spread,
    varies,
    ways_spread,
)
from trilemma.plan.hedge import (
    call_price,
    hedge_rate,
    timeouts,
    wave_variance,
    worst_call_price,
)
from trilemma.plan.slots import SLOTS_BIND, may_bind, scheduled
from trilemma.spec import ModelProfile, Simulation, Step, Workflow
from trilemma.spec.model import SIM_RETRY_AFTER_S, backoff_ceiling

if TYPE_CHECKING:
    import numpy as np

    from trilemma.plan.simulate import SimResult

__all__ = [
    "CACHE_HIT_LATENCY_S",
    "HALTS_SHOWN",
    "Drawn",
    "Estimate",
    "Halting",
    "StepEstimate",
    "assemble",
    "cancel_cost",
    "estimate",
    "halting",
    "held_worst",
    "in_slots",
    "most_held",
    "run_draws",
    "step_estimate",
]

CACHE_HIT_LATENCY_S = 0.01


def _r(x: float) -> float:
    """Round away float noise (0.8999999999999999 -> 0.9) for JSON."""
    return round(x, 12)


@dataclass(slots=True)  # not frozen: that triples its construction, the estimate's main cost
class StepEstimate:
    """The planner's figures for one step (read-only by convention)."""

    id: str
    """The step's id."""
    model: str
    """The model profile it runs on."""
    cached: bool
    """Planned as a cache hit (every time, or ``hit_rate`` of the time)."""
    calls: int
    """LLM calls of one attempt (0 when every run is planned as a hit)."""
    retries: int
    """Extra attempts allowed."""
    attempts_expected: float
    """Attempts made on average: sum of (1 - p)^i for i = 0..retries."""
    cost_book: float
    """Dollars by the seed's formula: price x calls, retries free."""
    cost_expected: float
    """Dollars counting each retry with the chance it happens."""
    cost_worst: float
    """Dollars with every retry used."""
    latency_s: float
    """Seconds for one attempt."""
    latency_worst_s: float
    """Seconds with every retry used."""
    p_attempt: float
    """Chance one attempt succeeds."""
    p_step: float
    """Chance the step succeeds within its retries."""
    critical: bool = False
    """On the critical path (no retries)."""
    latency_expected_s: float = 0.0
    """Seconds on average: each attempt's latency times the chance it is made."""
    models: tuple[str, ...] = ()
    """A cascade's ladder: the model of each attempt in turn (empty: every attempt on ``model``)."""
    hit_rate: float = 0.0
    """The chance a run finds it cached (1 when ``cached`` with no ``hit_rate``; 0 uncached)."""
    calls_per_attempt: float | None = None
    """Calls per attempt on average, when not ``calls``: a routed step's (``calls`` is its
    largest branch's), or with the copies of hedged calls."""
    hedged: bool = False
    """Its calls may be hedged: the worst case counts each one twice."""
    routes: tuple[str, ...] = ()
    """A routed step's branch labels (``models``: its classifier's, then the branches')."""
    spread: Spread = ()
    """How its time varies, for the mean of a join (:mod:`trilemma.plan.fanin`): empty
    when it always takes ``latency_expected_s``."""

    @property
    def calls_expected(self) -> float:
        """Calls made on average."""
        per_attempt = self.calls if self.calls_per_attempt is None else self.calls_per_attempt
        return per_attempt * self.attempts_expected

    @property
    def calls_worst(self) -> int:
        """Calls with every retry used (and every call hedged, where calls may be)."""
        return self.calls * (self.retries + 1) * (2 if self.hedged else 1)

    def to_json(self) -> dict[str, Any]:
        """A row for ``estimate --json``'s ``per_step``."""
        return {
            "id": self.id,
            "model": self.model,
            "cached": self.cached,
            "hit_rate": self.hit_rate,
            "calls": self.calls,
            "retries": self.retries,
            "calls_expected": _r(self.calls_expected),
            "calls_worst": self.calls_worst,
            "cost_usd": {
                "book": _r(self.cost_book),
                "expected": _r(self.cost_expected),
                "worst": _r(self.cost_worst),
            },
            "latency_s": {"attempt": _r(self.latency_s), "worst": _r(self.latency_worst_s)},
            "p_attempt": self.p_attempt,
            "p_step": self.p_step,
            "critical": self.critical,
            "models": list(self.models or (self.model,)),
            "routes": list(self.routes),
        }


@dataclass(frozen=True, slots=True)
class EarlyStop:
    """What ``stop_when`` saves on average."""

    step: str
    """The step whose passing ends the run."""
    chance: float
    """Chance it passes: the product of its and its ancestors' success."""
    at_s: float
    """When it finishes, on the schedule of expected step latencies."""
    skipped: tuple[str, ...]
    """Steps not finished by then, in spec order: cancelled or never started when it passes."""
    alone: bool = False
    """Nothing runs after it: when it fails, the run goes on without the stop."""
    in_flight: tuple[str, ...] = ()
    """The skipped steps that start before it finishes: one attempt's calls are sent, then
    cancelled (billed at their reservation on a real endpoint, nothing on the simulator, as
    the executor bills them)."""
    races: tuple[str, ...] = ()
    """Steps whose retries may put them on the other side of the stop than the expected
    schedule does: a skipped one that may finish first (and fail the run), or one counted
    as finished that may still be running. Only the Monte Carlo decides these races."""
    cancelled_usd: float = 0.0
    """What the ``in_flight`` steps' cancelled calls bill when it passes (see
    :func:`cancel_cost`)."""
    at_joined_s: float | None = None
    """When it finishes on average where branches whose times vary join before it, above
    ``at_s`` (:mod:`trilemma.plan.fanin`); None otherwise."""
    saved_drawn_usd: float | None = None
    """Where steps race it (:attr:`Estimate.drawn`), what it saves on average in the drawn
    runs: the steps' expected cost less the runs' mean; None otherwise."""

    def saved_usd(self, rows: tuple[StepEstimate, ...]) -> float:
        """What it saves on average: drawn where steps race it, else on the schedule."""
        if self.saved_drawn_usd is not None:
            return self.saved_drawn_usd
        saved = math.fsum(r.cost_expected for r in rows if r.id in self.skipped)
        return self.chance * (saved - self.cancelled_usd)

    def to_json(self, rows: tuple[StepEstimate, ...]) -> dict[str, Any]:
        """The ``stop_when`` block of ``estimate --json``."""
        return {"step": self.step, "chance": _r(self.chance), "at_s": _r(self.at_s),
                "skipped": list(self.skipped), "saved_usd_expected": _r(self.saved_usd(rows)),
                "races": list(self.races),
                **({} if self.at_joined_s is None else {"at_joined_s": _r(self.at_joined_s)})}  # fmt: skip


HALTS_SHOWN = 0.99
"""Where the chance that every step succeeds is below this, :func:`estimate` works out what
runs that stop at a failed step cost and take (:attr:`Estimate.halting`): above it, they differ
from the expected figures by about a hundredth at most (with a ``stop_when``, the
reliability counts only the steps that finish before the stop; any step's failure halts)."""


@dataclass(frozen=True, slots=True)
class Halting:
    """What runs cost, take and call on average when a failed step stops them, as the
    executor's do (:func:`halting`: a chain's exactly, else the expected figures times what
    halting leaves of them in runs drawn by the Monte Carlo)."""

    cost_usd: float
    latency_s: float
    calls: float
    failed: float
    """The share of runs that fail (one less the reliability)."""


@dataclass(frozen=True, slots=True)
class Drawn:
    """The figures a ``stop_when`` that other steps race leaves to the Monte Carlo: the means
    of :data:`~trilemma.plan.fanin.SAMPLES` runs going to their end (a fixed seed, no
    deadline or ceiling, the analytic model's settings), each race decided run by run."""

    cost_usd: float
    calls: float
    reliability: float


@dataclass(frozen=True, slots=True)
class Estimate:
    """The planner's figures for a whole workflow."""

    per_step: tuple[StepEstimate, ...]
    """One row per step, in spec order."""
    critical_path: tuple[str, ...]
    """Step ids on the longest path when no retry is taken."""
    latency_critical_s: float
    """Longest path, no retries."""
    latency_expected_s: float
    """The mean latency. From :func:`assemble`, the longest path of expected step latencies
    (a lower bound on it); from :func:`estimate`, the mean of the longest path where
    branches whose times vary join (:mod:`trilemma.plan.fanin`; with a ``stop_when``, its
    step's mean finish too), and where the run's concurrency slots bind, replayed in them
    (without a ``stop_when``), or drawn in them where step times vary or a stop races the
    steps beside it (:func:`in_slots`)."""
    latency_worst_s: float
    """Longest path with every retry taken (replayed in the slots as the expected one is;
    from :func:`estimate`, at least the expected latency, which a join of jittery calls may
    put above the calls' profile times)."""
    stop: EarlyStop | None = None
    """The spec's early stop, when it has one (the expected figures count it)."""
    latency_scheduled_s: float | None = None
    """The critical path when each call holds one of the run's concurrency slots
    (:func:`trilemma.plan.slots.scheduled`); None where not worked out (the optimizer's
    configurations)."""
    latency_joined_s: float | None = None
    """The mean of the longest path where branches whose times vary join, when it is above
    the longest path of the steps' mean latencies (:mod:`trilemma.plan.fanin`); with a
    ``stop_when``, the stop's finish and the whole run's, each drawn so where that is above
    its schedule, weighed by the chance the stop passes (the expected latency then). None
    otherwise, and where not worked out (the optimizer's configurations)."""
    latency_in_slots_s: float | None = None
    """Where the run's slots or rate limits bind and step times vary (or a ``stop_when``
    races the steps beside its step), the mean latency of
    :data:`~trilemma.plan.fanin.SAMPLES` runs drawn in them by the Monte Carlo (a fixed
    seed, runs going to their end, no deadline); the expected latency is at least it. None
    otherwise."""
    drawn: Drawn | None = None
    """With a ``stop_when`` that other steps race (:attr:`EarlyStop.races`: retries or
    jitter may put them on the other side of it than the schedule of means does), the
    expected cost and calls and the reliability drawn (:func:`estimate`); None otherwise,
    and where not worked out (the optimizer's configurations)."""
    halting: Halting | None = None
    """Where every step succeeds with less than :data:`HALTS_SHOWN`, the means of runs that
    stop at a failed step, as the executor's do (the expected figures are of runs going to
    their end); None otherwise, and where not worked out (the optimizer's configurations)."""

    def _expected(
        self, figure: Callable[[StepEstimate], float],
        in_flight: Callable[[StepEstimate], float] | None = None,
    ) -> float:  # fmt: skip
        """A per-step expected figure summed, less what an early stop saves on average: the
        skipped steps' figure, but ``in_flight`` of those it cancels."""
        total = math.fsum(figure(s) for s in self.per_step)
        if self.stop is None:
            return total
        stop = self.stop
        saved = math.fsum(
            figure(s) - (in_flight(s) if in_flight and s.id in stop.in_flight else 0.0)
            for s in self.per_step
            if s.id in stop.skipped
        )
        return total - stop.chance * saved

    @property
    def cost_book(self) -> float:
        """The seed's formula: retries free."""
        return math.fsum(s.cost_book for s in self.per_step)

    @property
    def cost_expected(self) -> float:
        """Each retry counted with the chance it happens (and an early stop with its own;
        drawn where steps race it, :attr:`drawn`)."""
        if self.drawn is not None:
            return self.drawn.cost_usd
        billed = self.stop.chance * self.stop.cancelled_usd if self.stop is not None else 0.0
        return self._expected(lambda s: s.cost_expected) + billed

    @property
    def cost_worst(self) -> float:
        """Every retry used: the figure a hard ceiling must hold."""
        return math.fsum(s.cost_worst for s in self.per_step)

    @property
    def calls_expected(self) -> float:
        """LLM calls made on average (a call an early stop cancels was sent; drawn where
        steps race the stop)."""
        if self.drawn is not None:
            return self.drawn.calls
        return self._expected(lambda s: s.calls_expected, _one_attempt_calls)

    @property
    def calls_worst(self) -> int:
        """LLM calls with every retry used."""
        return sum(s.calls_worst for s in self.per_step)

    @property
    def calls_book(self) -> int:
        """LLM calls without retries."""
        return sum(s.calls for s in self.per_step)

    @property
    def reliability(self) -> float:
        """End-to-end success: the product of per-step success.

        With an early stop: the run stops ok when the steps finished by then all pass
        (the others' failures never happen); when nothing runs after the stop step and it
        fails, the run also succeeds if every other step does. Drawn where steps race the
        stop (:attr:`drawn`).
        """
        if self.drawn is not None:
            return self.drawn.reliability
        st = self.stop
        if st is None:
            return math.prod(s.p_step for s in self.per_step)
        stopped = math.prod(s.p_step for s in self.per_step if s.id not in st.skipped)
        if not st.alone:
            return stopped
        bet = next(s.p_step for s in self.per_step if s.id == st.step)
        others = math.prod(s.p_step for s in self.per_step if s.id != st.step)
        return stopped + (1.0 - bet) * others

    @property
    def quality_per_dollar(self) -> float | None:
        """Reliability per book dollar, the seed's q/$ (None when nothing is paid for
        something; 0 when nothing succeeds)."""
        if self.reliability == 0.0:
            return 0.0
        return self.reliability / self.cost_book if self.cost_book > 0 else None

    @property
    def quality_per_expected_dollar(self) -> float | None:
        """Reliability per expected dollar (retries paid for); as :attr:`quality_per_dollar`."""
        if self.reliability == 0.0:
            return 0.0
        return self.reliability / self.cost_expected if self.cost_expected > 0 else None

    def to_json(self) -> dict[str, Any]:
        """The contract of ``trilemma estimate --json`` (see DESIGN.md)."""
        return {
            "steps": len(self.per_step),
            "per_step": [s.to_json() for s in self.per_step],
            **{k: v for k, v in self.summary().items() if k != "steps"},
        }

    @property
    def slots_bind(self) -> bool:
        """Whether the run's concurrency slots lengthen the critical path (by more than 1%)."""
        slotted = self.latency_scheduled_s
        return slotted is not None and slotted > self.latency_critical_s * SLOTS_BIND

    def _beyond_path(self) -> dict[str, float]:
        """The latencies worked out past the longest path of means, where they were."""
        extra = {"joined": self.latency_joined_s, "scheduled": self.latency_scheduled_s,
                 "in_slots": self.latency_in_slots_s}
        return {k: _r(v) for k, v in extra.items() if v is not None}

    def _halting(self, figure: str) -> dict[str, float]:
        """``{"halting": ...}`` of that figure where runs that halt were drawn, else nothing."""
        h = self.halting
        return {} if h is None else {"halting": _r(getattr(h, figure))}

    def headline(self) -> dict[str, Any]:
        """The figures a run is judged against: cost, latency and reliability (JSON)."""
        return {
            "cost_usd": {"expected": _r(self.cost_expected), "worst": _r(self.cost_worst),
                         **self._halting("cost_usd")},
            "latency_s": {
                "critical_path": _r(self.latency_critical_s),
                "worst": _r(self.latency_worst_s),
                **self._beyond_path(),
                **self._halting("latency_s"),
            },
            "reliability": self.reliability,
        }

    def summary(self) -> dict[str, Any]:
        """The workflow's figures without the per-step rows."""
        return {
            "steps": len(self.per_step),
            "calls": {
                "book": self.calls_book,
                "expected": _r(self.calls_expected),
                "worst": self.calls_worst,
                **self._halting("calls"),
            },
            "cost_usd": {
                "book": _r(self.cost_book),
                "expected": _r(self.cost_expected),
                "worst": _r(self.cost_worst),
                **self._halting("cost_usd"),
            },
            "latency_s": {
                "critical_path": _r(self.latency_critical_s),
                "expected": _r(self.latency_expected_s),
                "worst": _r(self.latency_worst_s),
                **self._beyond_path(),
                **self._halting("latency_s"),
            },
            "critical_path": list(self.critical_path),
            "reliability": _r(self.reliability),
            "quality_per_dollar": self.quality_per_dollar,
            "quality_per_expected_dollar": self.quality_per_expected_dollar,
            "stop_when": self.stop.to_json(self.per_step) if self.stop is not None else None,
        }


def step_estimate(wf: Workflow, step: Step) -> StepEstimate:
    """The figures of one step, its place in the DAG aside."""
    rule = step.cache_rule
    if rule is not None and rule.hit_rate >= 1.0:
        return StepEstimate(
            step.id, step.model, True, 0, step.retries, 1.0, 0.0, 0.0, 0.0,
            CACHE_HIT_LATENCY_S, CACHE_HIT_LATENCY_S, 1.0, 1.0, False, CACHE_HIT_LATENCY_S,
            hit_rate=1.0,
        )  # fmt: skip
    if step.route is not None:
        sent = _routed_estimate(wf, step)
    else:
        sent = _cascade_estimate(wf, step) if step.escalate else _call_estimate(wf, step)
    return sent if rule is None else _partly_cached(sent, rule.hit_rate)


def _routed_estimate(wf: Workflow, step: Step) -> StepEstimate:
    """A routed step: each attempt is the classifier's call, then one branch's.

    Each attempt classifies afresh, so attempts are independent: one succeeds with
    ``p = g x sum(share x p_branch)`` (``g``: the classifier's call meets no fault and no
    timeout; a branch's own count in its ``p_branch``), costs the classifier's price plus
    the branch's on average (nothing of a call that faults), and takes the slowest branch's
    time on the critical path.
    """
    assert step.route is not None
    shares = wf.route_shares(step)
    one = {lab: _call_estimate(wf, step.branch_step(lab).model_copy(update={"retries": 0}))
           for lab in shares}  # fmt: skip
    classifier = wf.models[step.model]
    head = attempt_of(classifier, (1,))

    def mean(field: str) -> float:
        return math.fsum([s * getattr(one[lab], field) for lab, s in shares.items()])

    head_price = call_price(classifier, step.max_tokens)
    price = head.clean * (head_price + mean("cost_expected"))
    book = head_price + mean("cost_book")
    dearest = worst_call_price(classifier, step.max_tokens) + max(
        b.cost_worst for b in one.values()
    )
    latency = (head.clean * (head.answered_s + mean("latency_expected_s"))
               + (1.0 - head.clean) * head.failed_s)  # fmt: skip
    slowest = classifier.latency_s + max(b.latency_s for b in one.values())
    longest = head.slowest + max(b.latency_worst_s for b in one.values())
    e = _independent_attempts(
        step, head.clean * mean("p_attempt"), price, dearest, latency, slowest, longest,
        models=(step.model, *dict.fromkeys(b.model for b in step.route.values())),
        calls_per_attempt=1 + hedge_rate(classifier) + head.clean * mean("calls_expected"),
        hedged=classifier.hedge_after_s is not None or any(b.hedged for b in one.values()),
        routes=tuple(step.route),
        spread=_routed_spread(wf, step, head, shares),
    )  # fmt: skip
    return e if book == price else replace(e, cost_book=book)  # the book bills every call


def _routed_spread(wf: Workflow, step: Step, head: Attempt, shares: Mapping[str, float]) -> Spread:
    """The spread of a routed step's time: each attempt its classifier's call, then one
    branch's with its share (each attempt classifies afresh), each way either ends."""
    classifier = wf.models[step.model]
    classified = answer_variance(classifier, (1,)) * head.answered_s**2
    ways: list[Way] = [(1.0 - head.clean, head.failed_s, 0.0, 0.0, 0.0)]
    for label, share in shares.items():
        branch = step.branch_step(label)
        m = wf.models[branch.model]
        a = attempt_of(m, branch.waves)
        answered = answer_variance(m, branch.waves) * a.answered_s**2
        ways += [(head.clean * share * a.clean, 0.0, head.answered_s + a.answered_s,
                  classified + answered, wf.p_ok(branch)),
                 (head.clean * share * (1.0 - a.clean), a.failed_s, head.answered_s, classified, 0.0)]  # fmt: skip
    k = step.retries
    waits = [backoff_ceiling(i) for i in range(1, k + 1)]
    return ways_spread([ways] * (k + 1), [0.0] * k, waits, SIM_RETRY_AFTER_S)


def _independent_attempts(
    step: Step, p: float, price: float, dearest: float, latency: float, slowest: float,
    longest: float | None = None, limited: float = 0.0, variance: float = 0.0,
    outcome: tuple[float, float, float] | None = None, **extra: Any,
) -> StepEstimate:  # fmt: skip
    """A step whose attempts are alike and independent: each succeeds with ``p``.

    ``price`` and ``latency`` are an attempt's on average; ``dearest`` and ``slowest`` its
    worst (the worst case and the critical path take those); ``longest``, when an attempt
    that fails may take longer than one that answers (a timeout), the worst case's.
    ``limited``: the chance an attempt fails on a rate limit (it waits the Retry-After
    rather than the backoff before its retry). For the spread of its time: ``variance``,
    that of an answered attempt's seconds over their mean squared; ``outcome``, an
    attempt's chance to meet no fault and no timeout, and its seconds then and otherwise,
    whose mean is ``latency`` (default: clean, in ``latency``).
    """
    k = step.retries
    attempts = 1.0 if k == 0 else math.fsum([(1.0 - p) ** i for i in range(k + 1)])
    waited, most = (0.0, 0.0) if k == 0 else retry_waits([1.0 - p] * k, [limited] * k)
    if k or variance or (outcome is not None and outcome[0] < 1.0):  # a fault ends it early
        extra.setdefault("spread", _alike_retries(outcome or (1.0, latency, latency), 1.0 - p,
                                                  limited, k, variance))  # fmt: skip
    return StepEstimate(
        id=step.id,
        model=step.model,
        cached=False,
        calls=step.calls,
        retries=k,
        attempts_expected=attempts,
        cost_book=price,
        cost_expected=price * attempts,
        cost_worst=dearest * (k + 1),
        latency_s=slowest,
        latency_worst_s=max(slowest, longest or 0.0) * (k + 1) + most,
        p_attempt=p,
        p_step=1.0 - (1.0 - p) ** (k + 1),
        latency_expected_s=latency * attempts + waited,
        **extra,
    )


def retry_waits(fails: Sequence[float], limited: Sequence[float]) -> tuple[float, float]:
    """The seconds a step waits between its attempts: (on average, at most).

    ``fails[i]``: the chance attempt ``i + 1`` fails, for each attempt a retry follows;
    ``limited[i]``: that it fails on a rate limit. After its ``i``-th failure the step
    waits the executor's backoff (full jitter below :func:`backoff_ceiling`, half of it on
    average) or, after a rate limit, the simulator's Retry-After.
    """
    after = SIM_RETRY_AFTER_S
    reach, waited, most = 1.0, [], []
    for i, (f, lim) in enumerate(zip(fails, limited, strict=True), start=1):
        ceiling = backoff_ceiling(i)
        waited.append(reach * (lim * after + max(f - lim, 0.0) * ceiling / 2.0))
        most.append(max(ceiling, after) if lim > 0.0 else ceiling)
        reach *= f
    return math.fsum(waited), math.fsum(most)


@functools.lru_cache(maxsize=4096)  # the optimizer weighs each step's options many times
def _alike_retries(
    outcome: tuple[float, float, float], fail: float, limited: float, retries: int,
    variance: float,
) -> Spread:  # fmt: skip
    """The spread of a step whose attempts are alike (see :func:`_retried`)."""
    return _retried([outcome] * (retries + 1), [fail] * retries, [limited] * retries, variance)


def _retried(
    outcomes: Sequence[tuple[float, float, float]], fails: Sequence[float],
    limited: Sequence[float], variance: float | Sequence[float] = 0.0,
) -> Spread:  # fmt: skip
    """The spread of a step's time over its attempts (see :func:`retry_waits`)."""
    waits = [backoff_ceiling(i) for i in range(1, len(fails) + 1)]
    return retry_spread(outcomes, fails, limited, waits, SIM_RETRY_AFTER_S, variance)


def answer_variance(m: ModelProfile, waves: Sequence[int]) -> float:
    """The variance of an answered attempt's seconds over their mean squared: its waves, one
    after another, each the slowest of its calls (:func:`~trilemma.plan.hedge.wave_variance`)."""
    if m.latency_jitter == 0.0:
        return 0.0
    means = [timeouts(m, w)[1] for w in waves]
    total = math.fsum(means)
    if total <= 0.0:
        return 0.0
    return math.fsum(wave_variance(m, w) * t * t for w, t in zip(waves, means, strict=True)) / total**2


def _partly_cached(e: StepEstimate, hit_rate: float) -> StepEstimate:
    """A step found in the cache ``hit_rate`` of the time, and sent as ``e`` otherwise.

    Expected cost, attempts, latency and success mix the two. The worst case and the
    critical path are a miss's: a deadline must hold when the cache misses.
    """
    miss = 1.0 - hit_rate
    return replace(
        e,
        cached=True,
        hit_rate=hit_rate,
        attempts_expected=miss * e.attempts_expected,
        cost_book=miss * e.cost_book,
        cost_expected=miss * e.cost_expected,
        p_step=hit_rate + miss * e.p_step,
        latency_expected_s=hit_rate * CACHE_HIT_LATENCY_S + miss * e.latency_expected_s,
        spread=((hit_rate, CACHE_HIT_LATENCY_S, 0.0, 0.0, 0.0),
                *((miss * c, busy, wait, width, sigma) for c, busy, wait, width, sigma
                  in e.spread or ((1.0, e.latency_expected_s, 0.0, 0.0, 0.0),))),
    )  # fmt: skip


def _call_estimate(wf: Workflow, step: Step) -> StepEstimate:
    """A step whose attempts all run on its own model, its faults and timeouts counted."""
    m = wf.profile(step)
    seq = step.sequential_calls
    if m.hedge_after_s is None and not (m.faults.any or m.latency_jitter
                                        or m.latency_s > m.timeout_s):  # fmt: skip
        price, latency = m.price_at(step.max_tokens) * step.calls, m.latency_s * seq  # common
        return _independent_attempts(step, wf.p_ok(step), price, price, latency, latency)
    a = attempt_of(m, step.waves)
    extra: dict[str, Any] = {}
    if m.hedge_after_s is not None:
        extra = {"hedged": True, "calls_per_attempt": a.sent * (1.0 + hedge_rate(m))}
    elif (a.meets or a.late) and step.sequential_calls > 1:  # a break leaves waves unsent
        extra = {"calls_per_attempt": a.sent}
    one, worst = call_price(m, step.max_tokens), worst_call_price(m, step.max_tokens)
    price = one * step.calls
    # its answers spread as its waves' slowest calls do (raced where hedged, cut at the timeout)
    e = _independent_attempts(
        step, a.clean * wf.p_ok(step), a.billed * one, worst * step.calls,
        a.clean * a.answered_s + (1.0 - a.clean) * a.failed_s, m.latency_s * seq, a.slowest,
        a.limited, answer_variance(m, step.waves), (a.clean, a.answered_s, a.failed_s), **extra,
    )  # fmt: skip
    return e if a.clean == 1.0 else replace(e, cost_book=price)  # the book bills every call


@dataclass(frozen=True, slots=True)
class Attempt:
    """An attempt of a step on one model, as the planner counts it (see the module's note)."""

    clean: float
    """The chance it meets no fault and no call outlasts ``timeout_s``."""
    answered_s: float
    """Seconds it takes on average when it does."""
    failed_s: float
    """Seconds it takes on average when it does not (a timeout waits ``timeout_s``)."""
    limited: float
    """The chance it fails on a rate limit (its retry waits the Retry-After)."""
    slowest: float
    """The most it may take, for the worst case."""
    calls: int = 1
    """Its calls."""
    late: float = 0.0
    """The chance a wave of it outlasts its timeout: it ends there."""
    meets: float = 0.0
    """The chance it meets a fault, when it is in time."""
    fault_billed: float = 0.0
    """Calls billed on average when it meets one: those answered in the waves before the
    fault's and beside it in its wave."""
    fault_sent: float = 1.0
    """Calls sent on average then: up to the fault's wave and no further."""
    fault_s: float = 0.0
    """Seconds it takes on average then."""
    late_billed: float = 0.0
    """Calls billed on average when a wave of it is given up: those answered before."""
    late_sent: float = 1.0
    """Calls sent on average then."""

    @property
    def billed(self) -> float:
        """Calls billed on average."""
        m = self.meets
        return self.late * self.late_billed + (1.0 - self.late) * (
            (1.0 - m) * self.calls + m * self.fault_billed
        )

    @property
    def sent(self) -> float:
        """Calls sent on average."""
        m = self.meets
        return self.late * self.late_sent + (1.0 - self.late) * (
            (1.0 - m) * self.calls + m * self.fault_sent
        )

    @property
    def failed_billed(self) -> float:
        """Calls billed on average when it fails (0 when it cannot)."""
        fails = 1.0 - self.clean
        return 0.0 if fails == 0.0 else (self.billed - self.clean * self.calls) / fails

    @property
    def failed_sent(self) -> float:
        """Calls sent on average when it fails."""
        fails = 1.0 - self.clean
        return float(self.calls) if fails == 0.0 else (self.sent - self.clean * self.calls) / fails


def attempt_of(m: ModelProfile, waves: Sequence[int]) -> Attempt:
    """An attempt on ``m`` whose calls go in ``waves`` (:attr:`~trilemma.spec.Step.waves`).

    Each wave waits for its slowest call, and is given up when one outlasts ``timeout_s``
    (:func:`~trilemma.plan.hedge.wave`), before any fault is drawn (as the simulator does).
    A timeout or a fault ends the attempt after its wave: the calls answered by then (in
    the waves before and beside it in its wave) are billed, the later waves not sent
    (:func:`breaks`). A hedged model's call races its own copy, and is given up when the
    copy's timeout passes too (:func:`~trilemma.plan.hedge.hedged_wave`)."""
    calls, seq = sum(waves), len(waves)
    kept = [timeouts(m, w)[1] for w in waves]
    given_up_s = m.timeout_s + (m.hedge_after_s or 0.0)
    late, late_billed, late_sent, late_s = _first_break(
        waves, timeouts(m)[0], kept, [given_up_s] * seq
    )
    meets = m.faults.chance(calls)
    clean = (1.0 - late) * (1.0 - meets)
    failed = billed = fault_s = 0.0
    sent = float(calls)
    if meets > 0.0:
        fault_time = [m.faults.seconds(m.latency_s if w == 1 else a, m.timeout_s, w)
                      for w, a in zip(waves, kept, strict=True)]  # fmt: skip
        _, billed, sent, fault_s = _first_break(waves, m.faults.rate, kept, fault_time)
    if clean < 1.0:
        failed = (late * late_s + (1.0 - late) * meets * fault_s) / (1.0 - clean)
    may_time_out = m.faults.timeout_rate > 0 or late >= 1.0
    slow = [max(m.latency_s, a) for a in kept]  # a wave of jittery calls: its slowest's mean
    slowest = math.fsum(slow[:-1]) + max(slow[-1], m.timeout_s if may_time_out else 0.0)
    limited = (1.0 - late) * meets * m.faults.limited_share
    return Attempt(clean, math.fsum(kept), failed, limited, slowest, calls, late, meets, billed,
                   sent, fault_s, late_billed, late_sent)  # fmt: skip


def breaks(waves: Sequence[int], q: float) -> list[tuple[float, float, float]]:
    """Per wave, when the first of an attempt's calls to break it (a fault, a timeout; each
    call apart, with ``q``) falls in that wave: its chance, and the calls then billed on
    average (those answered in the waves before, and beside it in its wave) and sent (up to
    its wave)."""
    out, reach, before = [], 1.0, 0
    for w in waves:
        clear = (1.0 - q) ** w
        beside = w * ((1.0 - q) - clear) / (1.0 - clear) if clear < 1.0 else 0.0
        out.append((reach * (1.0 - clear), before + beside, float(before + w)))
        reach *= clear
        before += w
    return out


def _first_break(
    waves: Sequence[int], q: float, kept_s: Sequence[float], broken_s: Sequence[float]
) -> tuple[float, float, float, float]:
    """The chance one of an attempt's calls breaks it (see :func:`breaks`), and then on
    average: the calls billed, the calls sent, and the seconds taken (``kept_s`` for each
    wave before, then its wave's ``broken_s``)."""
    met = billed = sent = seconds = took = 0.0
    for (hit, bills, sends), kept, broken in zip(breaks(waves, q), kept_s, broken_s, strict=True):
        met += hit
        billed += hit * bills
        sent += hit * sends
        seconds += hit * (took + broken)
        took += kept
    if met == 0.0:
        return 0.0, 0.0, float(sum(waves)), 0.0
    return met, billed / met, sent / met, seconds / met


def _cascade_estimate(wf: Workflow, step: Step) -> StepEstimate:
    """A step whose attempts climb a ladder of models: each attempt priced and timed as its own."""
    k = step.retries
    models = [wf.attempt_model(step, a) for a in range(1, k + 2)]
    profiles = [wf.models[m] for m in models]
    tries = [attempt_of(p, step.waves) for p in profiles]
    cap = step.max_tokens
    costs = [a.billed * call_price(p, cap) for p, a in zip(profiles, tries, strict=True)]
    latencies = [a.slowest for a in tries]
    expected = [a.clean * a.answered_s + (1.0 - a.clean) * a.failed_s for a in tries]
    p_ok = [a.clean * wf.p_ok(step, m) for m, a in zip(models, tries, strict=True)]
    reach = [1.0]  # the chance attempt i is made: every attempt before it failed
    for p in p_ok[:-1]:
        reach.append(reach[-1] * (1.0 - p))
    fail_all = reach[-1] * (1.0 - p_ok[-1])
    hedged = any(p.hedge_after_s is not None for p in profiles)
    waited, most = retry_waits([1.0 - p for p in p_ok[:-1]], [a.limited for a in tries[:-1]])
    return StepEstimate(
        id=step.id,
        model=step.model,
        cached=False,
        calls=step.calls,
        retries=k,
        attempts_expected=math.fsum(reach),
        cost_book=call_price(profiles[0], cap) * step.calls,
        cost_expected=math.fsum([c * r for c, r in zip(costs, reach, strict=True)]),
        cost_worst=math.fsum([worst_call_price(p, cap) * step.calls for p in profiles]),
        latency_s=profiles[0].latency_s * step.sequential_calls,
        latency_worst_s=math.fsum(latencies) + most,
        p_attempt=p_ok[0],
        p_step=1.0 - fail_all,
        latency_expected_s=math.fsum([t * r for t, r in zip(expected, reach, strict=True)])
        + waited,
        spread=_retried([(a.clean, a.answered_s, a.failed_s) for a in tries],
                        [1.0 - p for p in p_ok[:-1]], [a.limited for a in tries[:-1]],
                        [answer_variance(p, step.waves) for p in profiles]),
        models=tuple(wf.ladder(step)),
        calls_per_attempt=math.fsum([r * a.sent * (1.0 + hedge_rate(p))
                                     for r, a, p in zip(reach, tries, profiles, strict=True)])
        / math.fsum(reach) if hedged or (step.sequential_calls > 1 and any(a.meets or a.late for a in tries))
        else None,
        hedged=hedged,
    )


def most_held(wf: Workflow, s: Step) -> float:
    """The most ``s``'s attempts can hold under a ceiling: every call's worst case (its
    reservation, :meth:`~trilemma.spec.ModelProfile.reserved_per_call`), every retry used,
    a copy's beside each where its model hedges (a routed step: its dearest branch, after
    the classifier)."""
    total = 0.0
    for a in range(1, s.retries + 2):
        m = wf.models[wf.attempt_model(s, a)]
        copies = 1.0 if m.hedge_after_s is None else 2.0
        if s.route is None:
            total += copies * m.reserved_per_call(s.max_tokens) * s.calls
            continue
        branches = [s.branch_step(label) for label in s.route]
        total += copies * m.reserved_per_call(s.max_tokens) + max(
            wf.models[b.model].reserved_per_call(b.max_tokens)
            * (2.0 if wf.models[b.model].hedge_after_s is not None else 1.0) * b.calls
            for b in branches
        )
    return total


def held_worst(wf: Workflow) -> float:
    """The most a run can hold under a ceiling: :func:`most_held` of every step. A ceiling
    at least this never refuses a call; one below it may, though the run's worst cost fit
    (a reservation counts every token ``max_tokens`` allows, and a real endpoint's prompt
    at its bytes)."""
    return math.fsum(most_held(wf, s) for s in wf.steps)


def cancel_cost(wf: Workflow, step: Step) -> float:
    """Dollars an attempt of ``step`` (on its first attempt's model) bills when it is
    cancelled in flight: its calls' reservations on a real endpoint, which may bill what
    it generated; nothing on the simulator. As the executor bills it."""
    m = wf.models[wf.attempt_model(step, 1)]
    return 0.0 if m.runs_on_simulator else m.reserved_per_call(step.max_tokens) * step.calls


def estimate(wf: Workflow, *, draw_slots: bool = True, draw_runs: bool = True) -> Estimate:
    """Analytic cost, latency and reliability of a workflow.

    ``draw_slots``: where the run's slots or rate limits bind and step times vary, draw the
    expected latency in them (:func:`in_slots`, milliseconds to a second on a large DAG);
    False keeps the replay of mean times there (a lower bound), for a search that weighs
    many configurations on their worst figures. ``draw_runs``: where steps race a
    ``stop_when``, draw the expected cost and calls and the reliability
    (:attr:`Estimate.drawn`), and where every step succeeds with less than
    :data:`HALTS_SHOWN`, what runs that stop at a failure cost and take (:func:`halting`);
    False leaves both None (the analytic figures alone)."""
    e = _laid(wf, draw_slots)
    if draw_runs and e.stop is not None and e.stop.races:  # only the draws decide races
        runs = _runs(wf, halt=False)
        steps = math.fsum(s.cost_expected for s in e.per_step)
        e = replace(e, drawn=Drawn(runs.cost_usd.mean, runs.calls.mean, runs.success_rate),
                    stop=replace(e.stop, saved_drawn_usd=steps - runs.cost_usd.mean))
    # any step's failure stops a run, where a stop's reliability counts those before it only
    if draw_runs and math.prod(s.p_step for s in e.per_step) < HALTS_SHOWN:
        e = replace(e, halting=halting(wf, e))
    return e


def _laid(wf: Workflow, draw_slots: bool) -> Estimate:
    """:func:`estimate` without its draws of whole runs (a stop's races, the runs that halt)."""
    rows = {s.id: step_estimate(wf, s) for s in wf.steps}
    cancel = {s.id: cancel_cost(wf, s) for s in wf.steps} if wf.stop_when is not None else None
    graph = wf.edges()
    e = _with_joins(assemble(rows, graph, wf.stop_when, cancel), graph, rows)
    for sid in e.critical_path:
        rows[sid].critical = True
    latency = {i: r.latency_s for i, r in rows.items()}
    if not may_bind(wf, latency):  # no call of the critical path's schedule waits for a slot
        return replace(e, latency_scheduled_s=e.latency_critical_s)
    e = replace(e, latency_scheduled_s=scheduled(wf, latency))
    if not e.slots_bind:
        return e

    # each step's calls held as often as its attempts are sent (every retry at worst); where
    # step times vary, or a stop races the steps beside it, their draws in the slots (the
    # replay of mean times is a lower bound)
    worst = scheduled(wf, latency, {i: 1.0 + r.retries for i, r in rows.items()})
    if draw_slots and (e.stop is not None or any(varies(r.spread) for r in rows.values())):
        drawn = in_slots(wf)
        return replace(e, latency_expected_s=max(e.latency_expected_s, drawn),
                       latency_in_slots_s=drawn, latency_worst_s=max(e.latency_worst_s, worst, drawn))
    if e.stop is not None:  # undrawn, a stop's schedule is the estimate's own
        return replace(e, latency_worst_s=max(e.latency_worst_s, worst))
    expected = scheduled(wf, latency, {i: max(r.attempts_expected, 1.0) for i, r in rows.items()})
    return replace(e, latency_expected_s=max(e.latency_expected_s, expected),
                   latency_worst_s=max(e.latency_worst_s, worst))


def in_slots(wf: Workflow) -> float:
    """The mean latency of :data:`~trilemma.plan.fanin.SAMPLES` runs drawn in the run's
    slots and rate limits (:func:`trilemma.plan.simulate.simulate`, a fixed seed, runs going
    to their end, no deadline, the analytic model's settings): the waits for a slot that
    each run's own retries and jitter make, which no replay of mean times has. Kept per
    spec (a batch, or `compare`'s runs, estimate one spec many times)."""
    return _runs(wf, halt=False).latency_s.mean


def halting(wf: Workflow, e: Estimate) -> Halting:
    """What runs that stop at a failed step (the executor's rule) cost, take and call on
    average, ``e`` being the workflow's estimate: each expected figure times what halting
    leaves of it in :data:`~trilemma.plan.fanin.SAMPLES` runs drawn by
    :func:`trilemma.plan.simulate.simulate` (a fixed seed, no deadline or ceiling, the
    analytic model's settings), halting and not. The two draw alike (the same runs fail),
    so the ratio carries little of their noise: where no failure cuts a run short (one
    step, or its last) it is exactly 1. A chain without a stop is worked out exactly (each
    step reached when every one before it succeeded). Kept per spec, as :func:`in_slots`
    is."""
    chained = _chain_halting(wf, e)
    if chained is not None:
        return chained
    stopped, whole = _runs(wf, halt=True), _runs(wf, halt=False)

    def left(halted: float, drawn: float, expected: float) -> float:
        return expected * halted / drawn if drawn > 0 else halted

    return Halting(left(stopped.cost_usd.mean, whole.cost_usd.mean, e.cost_expected),
                   left(stopped.latency_s.mean, whole.latency_s.mean, e.latency_expected_s),
                   left(stopped.calls.mean, whole.calls.mean, e.calls_expected),
                   1.0 - e.reliability)  # fmt: skip


def _chain_halting(wf: Workflow, e: Estimate) -> Halting | None:
    """Exactly, for a chain without a stop whose slots do not hold it up: a step is reached
    when every step before it succeeded, and takes and bills then what it does alone."""
    graph = wf.edges()
    order = dag.topo_order(graph)
    if wf.stop_when is not None or e.latency_in_slots_s is not None or not dag.is_chain(graph, order):
        return None
    rows = {s.id: s for s in e.per_step}
    reach, cost, latency, calls = 1.0, [], [], []
    for sid in order:
        r = rows[sid]
        cost.append(reach * r.cost_expected)
        latency.append(reach * r.latency_expected_s)
        calls.append(reach * r.calls_expected)
        reach *= r.p_step
    return Halting(math.fsum(cost), math.fsum(latency), math.fsum(calls), 1.0 - e.reliability)


_SLOTS_SEED = 20261206


class _BySpec:
    """A workflow that hashes and compares by its spec (a pydantic model does neither)."""

    def __init__(self, wf: Workflow) -> None:
        self.wf, self.key = wf, wf.model_dump_json()

    def __hash__(self) -> int:
        return hash(self.key)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, _BySpec) and other.key == self.key


def _runs(wf: Workflow, *, halt: bool) -> SimResult:
    """:data:`~trilemma.plan.fanin.SAMPLES` runs of ``wf`` drawn by the Monte Carlo for the
    estimate: a fixed seed, no deadline or ceiling, the analytic model's settings; kept per
    spec (a batch, or `compare`'s runs, estimate one spec many times)."""
    return _drawn(_BySpec(wf.with_budget(deadline_s=None)), halt)


def run_draws(wf: Workflow) -> dict[str, np.ndarray]:
    """:data:`~trilemma.plan.fanin.SAMPLES` whole runs of ``wf``, halting at a failed step as
    the executor does (the estimate's draws: a fixed seed, no deadline or ceiling, kept per
    spec): each one's ``latency``, ``cost`` and whether it was ``ok``. A batch's plan takes
    its runs' spread from them, and when their failures stop them."""
    samples = _runs(wf, halt=True).samples
    assert samples is not None  # _drawn keeps them
    return samples


def bills_drawn_whole(wf: Workflow) -> bool:
    """Whether the Monte Carlo's runs of ``wf`` hold all of a bill's spread: not where a
    model of the spec prices tokens on a real endpoint, whose counts vary from call to call
    where the plan holds them at the profile's."""
    return not any(m.usd_per_1m_input is not None and not m.runs_on_simulator
                   for m in wf.models.values())  # fmt: skip


def bill_draws(wf: Workflow) -> np.ndarray | None:
    """What whole runs of ``wf`` cost as the estimate draws them (:func:`run_draws`), where
    those draws hold all of a bill's spread (:func:`bills_drawn_whole`; else None). A batch
    weighs its runs' mean bill against means of these."""
    return run_draws(wf)["cost"] if bills_drawn_whole(wf) else None


@functools.lru_cache(maxsize=64)
def _drawn(spec: _BySpec, halt: bool) -> SimResult:
    from trilemma.plan.simulate import simulate  # it builds on this module

    return simulate(spec.wf, SAMPLES, seed=_SLOTS_SEED, settings=Simulation(), halt=halt,
                    keep=True)  # fmt: skip


def _with_joins(e: Estimate, graph: dict[str, list[str]], rows: dict[str, StepEstimate]) -> Estimate:
    """``e`` with the mean of its longest path where branches whose times vary join, when
    that is clearly (by three standard errors of its draws) above the longest path of the
    means (:func:`trilemma.plan.fanin.mean_longest`). With a ``stop_when``, the stop's
    finish likewise (the longest path up to it), the two weighed by the chance it passes
    as :func:`assemble` weighs their schedules' (the schedule still says what is skipped)."""
    if not any(r.spread for r in rows.values()):  # every step always takes its time
        return e
    mean = {i: r.latency_expected_s for i, r in rows.items()}
    spread = {i: r.spread for i, r in rows.items()}
    order = dag.topo_order(graph)

    def joined(graph: dict[str, list[str]], order: list[str], path_s: float) -> float | None:
        drawn = mean_longest(graph, order, mean, spread)
        if drawn is None or drawn[0] - 3.0 * drawn[1] <= path_s * (1.0 + 1e-9):  # sums' rounding
            return None
        return drawn[0]

    of_means = dag.longest_path(graph, mean, order)[0]
    whole = joined(graph, order, of_means)
    st, at = e.stop, None
    if st is not None:
        line = dag.ancestors(graph, st.step) | {st.step}
        at = joined({k: graph[k] for k in line}, [k for k in order if k in line], st.at_s)
    if whole is None and at is None:
        return e
    full = expected = whole if whole is not None else of_means
    if st is not None:
        expected = st.chance * (at if at is not None else st.at_s) + (1.0 - st.chance) * full
        st = replace(st, at_joined_s=at)
    # the worst case, whose calls take their profile's time, is no shorter than the mean
    return replace(e, latency_expected_s=expected, latency_joined_s=expected, stop=st,
                   latency_worst_s=max(e.latency_worst_s, full))


def assemble(
    rows: dict[str, StepEstimate], graph: dict[str, list[str]], stop_when: str | None,
    cancel: Mapping[str, float] | None = None,
) -> Estimate:  # fmt: skip
    """The workflow's figures from its steps' (in spec order) and their dependencies;
    ``cancel``: per step, what an attempt cancelled in flight bills (:func:`cancel_cost`).

    Leaves the rows' ``critical`` flags alone, so the optimizer can share rows between
    the configurations it weighs.
    """
    order = dag.topo_order(graph)
    length, path = dag.longest_path(graph, {i: r.latency_s for i, r in rows.items()}, order)
    expected, _ = dag.longest_path(graph, {i: r.latency_expected_s for i, r in rows.items()}, order)
    worst, _ = dag.longest_path(graph, {i: r.latency_worst_s for i, r in rows.items()}, order)
    stop = None
    if stop_when is not None:
        stop = _early_stop(stop_when, graph, order, rows, cancel or {})
        expected = stop.chance * stop.at_s + (1.0 - stop.chance) * expected
    return Estimate(tuple(rows.values()), tuple(path), length, expected, worst, stop)


def _one_attempt_calls(s: StepEstimate) -> float:
    return s.calls_expected / s.attempts_expected if s.attempts_expected else 0.0


def _early_stop(
    step: str, graph: dict[str, list[str]], order: list[str], rows: dict[str, StepEstimate],
    cancel: Mapping[str, float],
) -> EarlyStop:  # fmt: skip
    """Which steps ``stop_when: step`` skips on the expected schedule, and how often."""
    finish = dag.finish_times(graph, {i: r.latency_expected_s for i, r in rows.items()}, order)
    at = finish[step]
    chance = math.prod(rows[a].p_step for a in (step, *dag.ancestors(graph, step)))
    skipped = tuple(i for i in rows if finish[i] > at + 1e-9)  # a tie finishes with it
    alone = not any(step in deps for deps in graph.values())
    in_flight = tuple(i for i in skipped if finish[i] - rows[i].latency_expected_s < at - 1e-9)
    # Without retries every finish time is fixed; with them, each lies between these two.
    soonest = dag.finish_times(graph, {i: r.latency_s for i, r in rows.items()}, order)
    latest = dag.finish_times(graph, {i: r.latency_worst_s for i, r in rows.items()}, order)
    line = set(dag.ancestors(graph, step)) | {step}  # these always finish before it
    races = tuple(
        i for i in rows
        if i not in line and (soonest[i] < latest[step] - 1e-9 if i in skipped
                              else latest[i] > soonest[step] + 1e-9)
    )  # fmt: skip
    billed = math.fsum(cancel.get(i, 0.0) for i in in_flight)
    return EarlyStop(step, chance, at, skipped, alone, in_flight, races, billed)
