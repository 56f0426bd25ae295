"""Vectorised Monte Carlo of a workflow: where the analytic model's assumptions break.

Each trajectory walks the DAG in topological order; numpy works on all
trajectories of a chunk at once, one step and one attempt at a time, so there
is no Python loop per trajectory. With ``recall = 1``, ``retry_correlation = 0``
and ``compounding = 1`` it reproduces :func:`trilemma.plan.estimate.estimate`.
Past those assumptions, as the seed warns reality is:

* a gate catches a failed answer only with probability ``recall``; an uncaught
  failure passes downstream as if it were good, and the run is wrong;
* a retry fails the same way as the attempt it retries with probability
  ``retry_correlation`` (else it is a fresh draw);
* after an uncaught failure upstream, a step's ``p`` is multiplied by
  ``compounding`` (later agents build on flawed output).

An attempt that meets a fault (drawn with the chance one of its calls does) fails, billed
and timed as the estimate counts it on average: the calls answered before the fault and
beside it (:func:`~trilemma.plan.estimate.attempt_of`).

Before each retry a trajectory waits the executor's backoff: a uniform draw below
:func:`~trilemma.spec.model.backoff_ceiling`, or a 429's Retry-After, drawn from a
generator of its own so that every other draw is what it would be without it.

A cascade (``escalate``) draws each attempt with its own model's ``p``, price and
latency. A routed step's attempt draws its branch by its share, then the classifier's
answer and the branch's apart, each a lognormal of its own jitter (the branch's as its
waves' slowest calls leave it: :func:`~trilemma.plan.estimate.answer_variance`). A model
with ``hedge_after_s`` sends an attempt again when its drawn time passes
``hedge_after_s`` x its sequential calls, takes the faster copy and pays for both (a routed
step's branches count the hedges' expected price only); when the attempt's jittery calls go
in waves, each call races a copy of its own, and the copies are paid for on average. A step
whose retries are exhausted fails the run; with ``halt=True`` (the executor's behaviour) it
stops new calls: the steps started by then run to their ends and are paid for, the others
(those that depend on it among them) are not sent. A step in flight then is counted as
drawn, its later retries too, where the executor would not send them.

An early stop (``stop_when: S``): in a trajectory where ``S`` passes its gate, the
steps not finished by then are neither paid for nor counted, and the run ends
then. When nothing runs after ``S`` and it fails, the run goes on without the stop.
The spec's deadline (``budget.deadline_s``) cuts a trajectory the same way when it
would end later, and the run fails (``deadline``), as the executor cancels it.

Where the run's concurrency slots hold calls up (:func:`trilemma.plan.slots.may_bind`),
the steps are drawn in the order the slots' replay sends them, and then timed again: each
trajectory's calls take the slots in the replay's order, each of the slots free when it
is ready the one freed last (else the first to free), at the trajectory's drawn times
(:class:`_Pool`), then its model's ``rpm`` and ``tpm``
buckets where they may hold it up (a minute's worth full at the start, first come first
served; each call's first attempt takes from them, its retries not). Without jitter,
retries or faults every trajectory takes the replay's time; with them, a call that the
replay sends first takes its slot first even where, in a trajectory, one after it is ready
sooner (a call held up behind a backoff leaves the slots freed earliest to them).

A spend ceiling (``max_cost_usd``, given explicitly: the spec's budget is also the
optimizer's target for expected cost, so it is not simulated unless asked) is held as the
executor holds it: before each call its worst case (``usd_per_call``, or ``max_tokens`` at
the output price and the prompt at the input price) must fit under the ceiling less what is
spent and what the calls in flight hold, else the call is not sent and the run stops
(``budget_exhausted``) and fails, billed for what it spent (the steps in flight then run to
their ends, as after a failed step). The trajectory takes the steps in the order they start
on the schedule of first attempts (a chain's order exactly): the calls of a wave (a vote's
samples, a debate's round) hold their worst cases at once, and a step that holds more than
it bills (token prices: every token ``max_tokens`` allows) holds the difference while it is
in flight, on the trajectory's own times. Where the slots retime the steps, those holds
keep the times drawn before (a slot-bound run holds fewer at once, and may send more calls
than simulated); a step's later waves see what the steps drawn before it hold and bill, not
those drawn after it that answer in between; a step that a jittery schedule starts before
the refused call in time is counted as not sent.
"""

from __future__ import annotations

import functools
import itertools
import math
import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, Literal, NamedTuple

import numpy as np

from trilemma import dag
from trilemma.errors import UsageError
from trilemma.plan import hedge
from trilemma.plan.agreement import wilson
from trilemma.plan.estimate import (
    CACHE_HIT_LATENCY_S,
    Estimate,
    answer_variance,
    attempt_of,
    breaks,
    cancel_cost,
    estimate,
    most_held,
    step_estimate,
)
from trilemma.plan.fanin import log_sigma
from trilemma.plan.hedge import call_price, hedge_rate, hedged_answers, timeouts
from trilemma.plan.slots import (
    Bucket,
    Held,
    dispatch_order,
    held_by,
    holds,
    over_rate,
    rate_limits,
    through,
)
from trilemma.spec import ModelProfile, Simulation, Step, Workflow
from trilemma.spec.model import SIM_RETRY_AFTER_S, backoff_ceiling

__all__ = [
    "PREDICTION_RUNS",
    "BudgetFor",
    "SimResult",
    "StepDraws",
    "Summary",
    "check_runs",
    "check_seed",
    "deadline_headroom",
    "near_deadline",
    "simulate",
    "simulate_loop",
    "smallest_budget",
    "step_draws",
    "under_budget",
    "wave_parts",
]

CHUNK = 262_144
MAX_RUNS = 20_000_000
"""The most trajectories one Monte Carlo draws: each keeps its cost, latency, calls and
outcome until the percentiles are taken (about 70 bytes a trajectory at the peak, 1.4 GB
here), and 20 million already put a success rate within +-0.022% (95%)."""
PREDICTION_RUNS = 100_000
"""Trajectories behind :func:`under_budget`."""
EPS_USD = 1e-12
"""A reservation within this of the room left fits (float noise, as the executor's guard)."""
CELLS = 1 << 24
"""Every step's finish time and flags are kept while a chunk runs (its dependents read
them): a chunk holds at most this many trajectory-steps (about 10 bytes each), so a
2,000-step spec runs in chunks of 8,192, not of CHUNK (which would take 5 GB)."""
STOP_CELLS = 1 << 22
"""With an early stop or a deadline each step keeps five more figures until the run's end
is known: then a chunk holds at most this many trajectory-steps."""
SLOT_CELLS = 1 << 23
"""Where the concurrency slots bind, each trajectory keeps when each slot frees: a chunk
holds at most this many trajectory-slots."""


@dataclass(frozen=True, slots=True)
class Summary:
    """Distribution of one measured quantity over the runs."""

    mean: float
    """Arithmetic mean."""
    p50: float
    """Median."""
    p95: float
    """95th percentile."""
    p99: float
    """99th percentile."""

    @classmethod
    def of(cls, values: np.ndarray) -> Summary:
        """Summarise an array of per-run values."""
        p50, p95, p99 = np.quantile(values, [0.5, 0.95, 0.99])
        return cls(float(values.mean()), float(p50), float(p95), float(p99))

    def to_json(self) -> dict[str, float]:
        """The four figures, rounded to 12 decimals."""
        return {k: round(getattr(self, k), 12) for k in ("mean", "p50", "p95", "p99")}


@dataclass(frozen=True, slots=True)
class SimResult:
    """What a Monte Carlo run measured."""

    runs: int
    """Trajectories simulated."""
    successes: int
    """Trajectories in which every step succeeded."""
    caught_failures: int
    """Trajectories stopped by a step whose retries ran out."""
    uncaught_failures: int
    """Trajectories that finished with a wrong answer a gate missed."""
    cost_usd: Summary
    """Dollars per trajectory."""
    latency_s: Summary
    """Seconds per trajectory (longest path of the steps that ran)."""
    calls: Summary
    """LLM calls per trajectory."""
    seed: int | None
    """The seed used, for reproducing the run."""
    settings: Simulation
    """The recall, retry correlation and compounding simulated."""
    deadline_s: float | None = None
    """The spec's deadline, simulated: a run still going then is cancelled and fails."""
    deadline_hits: int = 0
    """Trajectories the deadline cut."""
    max_cost_usd: float | None = None
    """The spend ceiling simulated (None: spend unbounded)."""
    ceiling_hits: int = 0
    """Trajectories stopped by the ceiling: a call's worst case did not fit."""
    samples: dict[str, np.ndarray] | None = field(default=None, repr=False, compare=False)
    """With ``keep=True``, and always under a deadline: per trajectory, ``cost``, ``latency``
    and ``ok`` (for plots, and the runs in time by a hair, :func:`near_deadline`)."""

    @property
    def success_rate(self) -> float:
        """Fraction of trajectories that succeeded."""
        return self.successes / self.runs

    @property
    def stderr(self) -> float:
        """Standard error of the success rate."""
        p = self.success_rate
        return math.sqrt(max(p * (1 - p), 0.0) / self.runs)

    @property
    def ci95(self) -> tuple[float, float]:
        """Wilson 95% interval of the success rate."""
        return wilson(self.successes, self.runs)

    def brief(self, e: Estimate | None = None) -> dict[str, Any]:
        """Success and what the budgets cost it, for a prediction shown beside other figures
        (``run``'s ``predicted_under_budget``, ``optimize``'s checks); ``e``, the spec's
        estimate, gives ``near_deadline_rate`` (:meth:`near_rate`)."""
        return {"runs": self.runs, "success_rate": self.success_rate,
                "deadline_rate": self.deadline_hits / self.runs,
                "near_deadline_rate": self.near_rate(e),
                "budget_exhausted_rate": self.ceiling_hits / self.runs,
                "cost_usd_mean": self.cost_usd.mean}  # fmt: skip

    def held(self, e: Estimate) -> dict[str, Any]:
        """:meth:`brief` with the budgets it was run under (``max_cost_usd``,
        ``deadline_s``) and the executor's own time before the deadline
        (``deadline_headroom_s``): all a run's table and page say of it."""
        return {**self.brief(e), "max_cost_usd": self.max_cost_usd, "deadline_s": self.deadline_s,
                "deadline_headroom_s": deadline_headroom(e)}  # fmt: skip

    def near_rate(self, e: Estimate | None, time_scale: float = 1.0) -> float | None:
        """:func:`near_deadline` rounded for JSON: the share of runs in time by less than the
        executor's own time (None without a deadline, kept runs or the estimate ``e``)."""
        share = None if e is None else near_deadline(self, e, time_scale)
        return None if share is None else round(share, 12)

    def to_json(self, e: Estimate | None = None, time_scale: float = 1.0) -> dict[str, Any]:
        """The contract of ``trilemma simulate --json`` (see DESIGN.md); ``e``, the spec's
        estimate, gives ``near_deadline_rate`` (:meth:`near_rate`, of runs at
        ``time_scale``)."""
        lo, hi = self.ci95
        return {
            "runs": self.runs,
            "seed": self.seed,
            "success_rate": self.success_rate,
            "success_ci95": [round(lo, 12), round(hi, 12)],
            "success_stderr": self.stderr,
            "caught_failure_rate": self.caught_failures / self.runs,
            "uncaught_failure_rate": self.uncaught_failures / self.runs,
            "cost_usd": self.cost_usd.to_json(),
            "latency_s": self.latency_s.to_json(),
            "calls": self.calls.to_json(),
            "settings": self.settings.model_dump(),
            "deadline_s": self.deadline_s,
            "deadline_rate": self.deadline_hits / self.runs,
            "near_deadline_rate": self.near_rate(e, time_scale),
            "max_cost_usd": self.max_cost_usd,
            "budget_exhausted_rate": self.ceiling_hits / self.runs,
        }


@dataclass(frozen=True, slots=True)
class _Try:
    """What one attempt of a step draws from: its model's figures."""

    p: float
    price: float
    latency: float
    jitter: float
    hedge: float = math.inf
    """Seconds after which the attempt is sent again (the model's ``hedge_after_s`` x its
    sequential calls): the faster copy wins and both are paid."""
    reserve: float = 0.0
    """Dollars held under a ceiling before each of the attempt's calls."""
    fault: float = 0.0
    """The chance the attempt meets one of its model's ``faults``: it fails."""
    fault_s: float = 0.0
    """Seconds such an attempt takes on average."""
    fault_usd: float = 0.0
    """Dollars it bills on average: the calls answered before the fault's wave and in it."""
    fault_calls: float = 1.0
    """Calls it sends on average: up to the fault's wave
    (:func:`~trilemma.plan.estimate.attempt_of`)."""
    limited: float = 0.0
    """Of those faults, the share that are rate limits (their retry waits the Retry-After)."""
    timeout: float = math.inf
    """An attempt drawn slower than this (its calls' ``timeout_s`` x its sequential calls,
    when they share one draw; see ``waves``) is given up: it fails, bills nothing."""
    given_up_s: float = math.inf
    """Seconds such an attempt takes: its first call's ``timeout_s``."""
    given_up_hedged_s: float = math.inf
    """The same when a hedge was sent: ``hedge_after_s`` later, the copy's timeout."""
    waves: tuple[int, ...] | None = None
    """Jittery calls sent in waves: each wave takes its slowest call's draw, and one that
    outlasts ``given_up_s`` ends the attempt. None: one draw for the attempt."""
    answers: tuple[np.ndarray, np.ndarray] | None = None
    """Calls in waves that each race a copy of their own (a hedged model's): the table of
    :func:`~trilemma.plan.hedge.hedged_answers` their times are drawn from; the copies'
    expected price is in ``price``, and ``copies`` per call count as calls sent."""
    copies: float = 0.0
    """Copies such calls send on average (the chance each is hedged)."""
    race: tuple[float, float] = (math.inf, math.inf)
    """Such calls' ``hedge_after_s`` and ``timeout_s``."""
    late_calls: tuple[tuple[float, float], ...] = ()
    """Per wave, the calls billed and sent on average when it is the one given up
    (:func:`~trilemma.plan.estimate.breaks`)."""


@dataclass(frozen=True, slots=True)
class _Route:
    """A routed step's branches, as arrays: each attempt draws one by its share."""

    shares: np.ndarray
    """Planned shares, the classifier's misses sent to the first branch."""
    p: np.ndarray
    price: np.ndarray
    """The classifier's price plus the branch's."""
    latency: np.ndarray
    """The classifier's latency plus the branch's."""
    head_s: float
    """The classifier's answer's mean seconds."""
    head_sigma: float
    """Its log-sigma (its jitter, as a timeout cuts it)."""
    body_s: np.ndarray
    """Per branch, its answer's mean seconds."""
    body_sigma: np.ndarray
    """Per branch, its answer's log-sigma: a lognormal of the variance of its waves' slowest
    calls (:func:`~trilemma.plan.estimate.answer_variance`), drawn apart from the
    classifier's, as the executor sends them."""
    calls: np.ndarray
    """The classifier's call plus the branch's."""
    reserve: np.ndarray
    """Dollars a branch's call holds under a ceiling."""
    head_price: float = 0.0
    """The classifier's call's price."""
    head_reserve: float = 0.0
    """Dollars the classifier's call holds under a ceiling."""
    head_fail: float = 0.0
    """The chance the classifier's call faults or times out: the attempt fails, billed
    nothing, and sends no branch."""
    head_fail_s: float = 0.0
    """Seconds such an attempt takes."""
    fail: np.ndarray = field(default_factory=lambda: np.zeros(1))
    """Per branch, the chance its calls fault or time out."""
    fail_usd: np.ndarray = field(default_factory=lambda: np.zeros(1))
    """Per branch, what such an attempt bills on average: the classifier's call, and the
    branch's calls answered before the fault and beside it."""
    fail_calls: np.ndarray = field(default_factory=lambda: np.ones(1))
    """Per branch, the branch's calls such an attempt sends on average."""
    fail_s: np.ndarray = field(default_factory=lambda: np.zeros(1))
    """Per branch, the seconds such a branch attempt takes."""

    @property
    def faulty(self) -> bool:
        """Whether an attempt may fail on a fault or a timeout (drawn only then)."""
        return self.head_fail > 0.0 or bool(self.fail.any())


@dataclass(frozen=True, slots=True)
class _StepParams:
    parents: tuple[int, ...]
    hit_rate: float
    """The chance a trajectory finds the step cached (0 when it is not)."""
    recall: float
    calls: int
    tries: tuple[_Try, ...]
    """One per attempt allowed (1 + retries)."""
    route: _Route | None = None
    """A routed step's branches (its ``tries`` then only count its attempts)."""
    cancel_usd: float = 0.0
    """What an attempt cancelled in flight by an early stop or the deadline bills."""
    held: Held | None = None
    """How it holds the run's concurrency slots (None: it takes none, or none binds)."""
    parts: tuple[tuple[float, float], ...] = ()
    """With ``held``, per wave: its share of the step's drawn time, and the share of that
    its calls but the slowest hold their slots for (:func:`_parts`)."""
    waves: tuple[int, ...] = (1,)
    """The calls of an attempt (not a routed step's) sent together, wave by wave: under a
    ceiling a wave's calls hold their worst cases at once."""
    wave_hold: float = 0.0
    """Under a ceiling, what a wave of its calls holds, on average (its first model's), where
    that is more than they bill (token prices; else 0): such a step, in flight, is counted
    as the executor holds it (:func:`_holding_at`)."""
    wave_at: tuple[float, ...] = (0.0,)
    """With ``wave_hold``: when each wave of an attempt goes, in expectation from the
    attempt's start (a wave waits for its slowest call; its first model's)."""
    most_held: float = math.inf
    """Under a ceiling, the most its attempts hold and bill, every call and copy sent."""


@dataclass(frozen=True, slots=True)
class _Slots:
    """The run's concurrency slots, where they may hold a call up: how many, and each
    limited model's own."""

    concurrency: int
    models: dict[str, int]
    calls: tuple[tuple[int, int], ...] = ()
    """Each call as (its step's place in the drawing order, wave), in the order the replay
    gives them slots (:func:`trilemma.plan.slots.dispatch_order`)."""
    rates: dict[str, tuple[tuple[int, float, bool], ...]] = field(default_factory=dict)
    """The models whose ``rpm`` or ``tpm`` may hold a call up: each bucket's per-minute
    figure, the seconds its minute lasts and whether it counts tokens, in the order the
    executor takes them."""

    def buckets(self) -> dict[str, list[tuple[Bucket, bool]]]:
        """Fresh buckets of :attr:`rates`, for one trajectory."""
        return {m: [(Bucket(n, s), tpm) for n, s, tpm in r] for m, r in self.rates.items()}


def _slotted(wf: Workflow) -> tuple[_Slots, dict[str, Held], list[str]] | None:
    """The slots, how each step holds them and the order the replay sends the steps
    (:mod:`trilemma.plan.slots`); None where no call of the critical path's schedule waits
    for a slot, and the Monte Carlo leaves them out."""
    latency = {s.id: step_estimate(wf, s).latency_s for s in wf.steps}  # the replay's own
    held = holds(wf, latency)
    if held is None:
        return None
    models = {h.model: min(wf.concurrency, c) for h in held.values()
              if h.model is not None and (c := wf.models[h.model].max_concurrency)}  # fmt: skip
    rated = over_rate(wf)
    rates = {m: tuple((n, p.minute_s, tpm) for n, tpm in rate_limits(p))
             for m, p in wf.models.items() if m in rated}  # fmt: skip
    calls = dispatch_order(wf, latency)
    order = list(dict.fromkeys(sid for sid, _ in calls))
    place = {sid: i for i, sid in enumerate(order)}
    slots = _Slots(wf.concurrency, models, tuple((place[s], j) for s, j in calls), rates)
    return slots, held, order


def _order(wf: Workflow, capped: bool) -> list[str]:
    """The order the steps are drawn in: topological; under a ceiling, which spends in time
    order, by start on the schedule of first attempts (ties in topological order)."""
    graph = wf.edges()
    order = dag.topo_order(graph)
    if not capped:
        return order
    took, steps = {}, {s.id: s for s in wf.steps}  # wf.step scans: 3,000 steps, 9M looks
    for sid in order:
        s = steps[sid]
        took[sid] = wf.models[wf.attempt_model(s, 1)].latency_s * s.sequential_calls
    finish = dag.finish_times(graph, took, order)
    place = {sid: i for i, sid in enumerate(order)}
    return sorted(order, key=lambda sid: (finish[sid] - took[sid], place[sid]))


def _params(
    wf: Workflow, settings: Simulation, order: list[str], held: dict[str, Held] | None = None,
    capped: bool = False,
) -> list[_StepParams]:  # fmt: skip
    """Each step's parameters, in ``order``; ``capped``: with what a ceiling needs."""
    index = {sid: i for i, sid in enumerate(order)}
    steps = {s.id: s for s in wf.steps}  # wf.step scans: quadratic on a long spec
    out = []
    for sid in order:
        s = steps[sid]
        tries = {name: _try_of(wf, s, name) for name in wf.ladder(s)}  # shared by its attempts
        out.append(
            _StepParams(
                parents=tuple(index[d] for d in s.after),
                hit_rate=s.cache_rule.hit_rate if s.cache_rule else 0.0,
                recall=s.recall if s.recall is not None else settings.recall,
                calls=s.calls,
                tries=tuple(tries[wf.attempt_model(s, a)] for a in range(1, s.retries + 2)),
                route=_route(wf, s) if s.route else None,
                cancel_usd=cancel_cost(wf, s),
                held=held[sid] if held is not None and held[sid].waves else None,
                parts=_parts(wf, s, held[sid].waves) if held is not None else (),
                waves=s.waves,
                **(_ceiling_params(wf, s, tries[s.model]) if capped else {}),
            )
        )
    return out


def _ceiling_params(wf: Workflow, s: Step, t: _Try) -> dict[str, Any]:
    """What a ceiling needs of step ``s`` (``t``: its first attempt's draws): see
    :class:`_StepParams`. A wave holds nothing beyond its bills where a call's worst case is
    its price (rounding aside), or the step is routed."""
    holds = t.reserve - t.price / s.calls > 1e-12 * max(t.reserve, 1e-12) and not s.route
    return {"wave_hold": t.reserve * s.calls / len(s.waves) if holds else 0.0,
            "wave_at": _wave_at(wf, s), "most_held": most_held(wf, s)}  # fmt: skip


def _wave_at(wf: Workflow, s: Step) -> tuple[float, ...]:
    """When each wave of ``s``'s first attempt goes, in expectation: after the ones before
    it, each waiting for its slowest call."""
    m = wf.models[wf.attempt_model(s, 1)]
    at, out = 0.0, []
    for w in s.waves:
        out.append(at)
        at += hedge.wave(m.latency_s, m.latency_jitter, m.timeout_s, w)[1] or m.latency_s
    return tuple(out)


def _parts(wf: Workflow, s: Step, waves: tuple[int, ...]) -> tuple[tuple[float, float], ...]:
    """:func:`wave_parts` of ``s``'s waves, in expectation on its first attempt's model."""
    m = wf.models[wf.attempt_model(s, 1)]
    return wave_parts([(m, w) for w in waves])


def wave_parts(waves: Sequence[tuple[ModelProfile, int]]) -> tuple[tuple[float, float], ...]:
    """Per wave of an attempt's calls (its model, and how many it sends at once), in
    expectation: the wave's share of the attempt's time (a wave waits for its slowest
    call), and what one of its calls takes against the wave (each but the slowest gives its
    slot back when it answers)."""
    each = [hedge.wave(m.latency_s, m.latency_jitter, m.timeout_s, w)[1] or m.latency_s
            for m, w in waves]  # fmt: skip
    total = math.fsum(each)
    return tuple((e / total, min(1.0, (hedge.cut(m.latency_s, m.latency_jitter, m.timeout_s)[1]
                                       or m.latency_s) / e)) for (m, _), e in zip(waves, each, strict=True))  # fmt: skip


def _drawn(
    wf: Workflow, settings: Simulation, capped: bool
) -> tuple[list[str], list[_StepParams], _Slots | None]:
    """The order the steps are drawn in, their parameters, and the slots where they bind:
    then the order the replay sends them, which is the order they start in."""
    slotted = _slotted(wf)
    if slotted is None:
        order = _order(wf, capped)
        return order, _params(wf, settings, order, capped=capped), None
    slots, held, order = slotted
    return order, _params(wf, settings, order, held, capped), slots


def _try_of(wf: Workflow, s: Step, name: str) -> _Try:
    """What an attempt of ``s`` on model ``name`` draws from. A routed step's attempts draw
    their faults and waves from its branches (:func:`_route`), so only the rest is set."""
    m = wf.models[name]
    seq = s.sequential_calls
    t = _Try(wf.p_ok(s, name), m.price_at(s.max_tokens) * s.calls, m.latency_s * seq,
             m.latency_jitter,
             (m.hedge_after_s or math.inf) * seq, m.reserved_per_call(s.max_tokens),
             limited=m.faults.limited_share, timeout=m.timeout_s * seq, given_up_s=m.timeout_s,
             given_up_hedged_s=m.timeout_s + (m.hedge_after_s or 0.0))  # fmt: skip
    if s.route is not None:
        return t
    a = attempt_of(m, s.waves)
    waves: tuple[int, ...] | None = None
    late_calls: tuple[tuple[float, float], ...] = ()
    per_call = m.price_at(s.max_tokens)  # what a call that answered bills
    if a.calls > 1 and m.latency_jitter:  # else one draw serves
        waves = s.waves
        late = timeouts(m)[0]
        late_calls = tuple((billed, sent) for _, billed, sent in breaks(waves, late))
        if m.hedge_after_s is not None:  # each call races its own copy, not the attempt's
            t = replace(t, price=call_price(m, s.max_tokens) * s.calls, hedge=math.inf,
                        given_up_s=t.given_up_hedged_s, copies=hedge_rate(m),
                        race=(m.hedge_after_s, m.timeout_s),
                        answers=hedged_answers(m.latency_s, m.latency_jitter, m.hedge_after_s,
                                               m.timeout_s))  # fmt: skip
            per_call = call_price(m, s.max_tokens)
    return replace(t, fault=a.meets, fault_s=a.fault_s, fault_usd=a.fault_billed * per_call,
                   fault_calls=a.fault_sent, waves=waves, late_calls=late_calls)  # fmt: skip


def _route(wf: Workflow, s: Step) -> _Route:
    shares = wf.route_shares(s)
    classifier = wf.models[s.model]
    branches = [s.branch_step(label) for label in shares]
    models = [wf.models[b.model] for b in branches]
    head = attempt_of(classifier, (1,))
    tries = [attempt_of(m, b.waves) for b, m in zip(branches, models, strict=True)]
    head_price = call_price(classifier, s.max_tokens)
    return _Route(
        shares=np.array(list(shares.values())),
        p=np.array([wf.p_ok(b) for b in branches]),
        price=np.array([head_price + call_price(m, b.max_tokens) * b.calls
                        for b, m in zip(branches, models, strict=True)]),
        latency=np.array([head.answered_s + a.answered_s for a in tries]),
        head_s=head.answered_s,
        head_sigma=log_sigma(answer_variance(classifier, (1,))),
        body_s=np.array([a.answered_s for a in tries]),
        body_sigma=np.array([log_sigma(answer_variance(m, b.waves))
                             for b, m in zip(branches, models, strict=True)]),
        calls=np.array([1 + b.calls for b in branches]),
        reserve=np.array([m.reserved_per_call(b.max_tokens) for b, m in zip(branches, models, strict=True)]),
        head_price=head_price,
        head_reserve=classifier.reserved_per_call(s.max_tokens),
        head_fail=1.0 - head.clean,
        head_fail_s=head.failed_s,
        fail=np.array([1.0 - a.clean for a in tries]),
        fail_usd=np.array([head_price + a.failed_billed * call_price(m, b.max_tokens)
                           for a, m, b in zip(tries, models, branches, strict=True)]),
        fail_calls=np.array([a.failed_sent for a in tries]),
        fail_s=np.array([head.answered_s + a.failed_s for a in tries]),
    )  # fmt: skip


def simulate(
    wf: Workflow,
    runs: int,
    seed: int | None = None,
    settings: Simulation | None = None,
    *,
    halt: bool = True,
    progress: Callable[[int], object] | None = None,
    max_cost_usd: float | None = None,
    keep: bool = False,
) -> SimResult:
    """Simulate ``runs`` trajectories of a workflow; reproducible with ``seed``.

    ``progress`` is called with the number of trajectories each chunk finished.
    ``max_cost_usd``: a spend ceiling to hold as the executor does (None: unbounded, whatever
    the spec's budget says). ``keep``: keep every trajectory's cost, latency and outcome in
    :attr:`SimResult.samples`, as a deadline always does (:func:`near_deadline` reads them;
    the arrays are made either way, and kept as long as the result is).
    """
    if runs < 1:
        raise ValueError("runs must be a positive integer")
    check_runs(runs, "runs")
    settings = settings or wf.simulation
    order, params, slots = _drawn(wf, settings, max_cost_usd is not None)
    cut = _cut_of(wf, order)
    if cut is None and halt and not _chain(wf):  # a failed step stops the steps beside it
        cut = NO_CUT
    size = max(1024, min(CHUNK, (CELLS if cut is None else STOP_CELLS) // len(params)))
    if slots is not None:
        size = min(size, max(1024, SLOT_CELLS // slots.concurrency))
    cap = math.inf if max_cost_usd is None else max_cost_usd
    rng = np.random.default_rng(seed)
    waits = rng.spawn(1)[0]  # backoff draws of their own: the other draws stay as they were
    parts = []
    for start in range(0, runs, size):
        n = min(size, runs - start)
        parts.append(_chunk(params, settings, n, (rng, waits), halt, cut, cap, slots))
        if progress is not None:
            progress(n)
    cost, latency, calls, ok, caught, uncaught, late, broke = (
        np.concatenate([p[i] for p in parts]) for i in range(8)
    )
    return SimResult(
        runs=runs,
        successes=int(ok.sum()),
        caught_failures=int(caught.sum()),
        uncaught_failures=int(uncaught.sum()),
        cost_usd=Summary.of(cost),
        latency_s=Summary.of(latency),
        calls=Summary.of(calls),
        seed=seed,
        settings=settings,
        deadline_s=wf.budget.deadline_s,
        deadline_hits=int(late.sum()),
        max_cost_usd=max_cost_usd,
        ceiling_hits=int(broke.sum()),
        samples={"cost": cost, "latency": latency, "ok": ok}
        if keep or wf.budget.deadline_s is not None
        else None,
    )


@dataclass(frozen=True, slots=True)
class StepDraws:
    """Whole runs of a spec drawn step by step, for replaying many of them together
    (:mod:`trilemma.plan.batchsim`): per step, in ``order``, and per run (columns), the
    seconds it took (``seconds``), of which the backoff waits between attempts
    (``paused``), whether it sent calls (``sends``: not a cache hit, and reached: a run
    halts at a failed step) and whether its own retries ran out (``dead``); per step its
    dependencies (places in ``order``), how its calls hold the slots (``held``) and its
    waves' shares of an attempt's time (``parts``, as :class:`_Pool` takes them); what it
    paid (``paid``, every attempt's bills); for a step that may retry, per attempt,
    whether it was made, when it was sent and answered, in seconds from the step's start,
    and what the step had paid by then (``attempts``; empty: the step makes one attempt);
    and for a routed step, per attempt, the branch each run drew (``branches``: places in
    :meth:`~trilemma.spec.Workflow.route_shares`; empty: not routed)."""

    order: list[str]
    parents: list[tuple[int, ...]]
    held: list[Held]
    parts: list[tuple[tuple[float, float], ...]]
    seconds: np.ndarray
    paused: np.ndarray
    sends: np.ndarray
    dead: np.ndarray
    attempts: list[list[tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]]]
    paid: np.ndarray
    branches: list[list[np.ndarray]]


def step_draws(wf: Workflow, runs: int, seed: int) -> StepDraws:
    """``runs`` whole runs of ``wf`` drawn as the Monte Carlo draws them (default settings,
    halting at a failed step, no ceiling), step by step."""
    settings = Simulation()
    order = _order(wf, False)
    held = {s.id: held_by(wf, s) for s in wf.steps}
    params = _params(wf, settings, order, held)
    rng = np.random.default_rng(seed)
    trace: list[tuple[Any, ...]] = []
    _chunk(params, settings, runs, (rng, rng.spawn(1)[0]), True, NO_CUT, trace=trace)
    seconds, paused, sends, dead = (np.array([t[i] for t in trace]) for i in range(4))
    return StepDraws(order, [sp.parents for sp in params], [held[i] for i in order],
                     [sp.parts for sp in params], seconds, paused, sends, dead,
                     [t[4] for t in trace], np.array([t[5] for t in trace]), [t[6] for t in trace])  # fmt: skip


@dataclass(frozen=True, slots=True)
class _Cut:
    """What may end a run before every step has: an early stop, the deadline (and, cut or
    not, a failed step or the ceiling's refusal, which stop new calls)."""

    stop: int | None
    """The stop_when step's place in topological order."""
    alone: bool
    """Nothing runs after the stop step: its failure only means no stop."""
    deadline: float
    """Seconds (inf: none)."""


class _Own(NamedTuple):
    """A step's own figures, per trajectory, for a run that may end before every step has
    (:func:`_cut_short`)."""

    paid: np.ndarray
    called: np.ndarray
    wrong: np.ndarray
    """Its failure uncaught."""
    start: np.ndarray
    one: np.ndarray
    """An attempt's calls."""
    cancel: float
    """What cancelling an attempt in flight bills."""
    failed: np.ndarray
    """Its own retries exhausted (not a dependency's failure, nor the ceiling's refusal)."""
    dur: np.ndarray
    """Its drawn time."""
    marks: list[tuple[np.ndarray, ...]]
    """Where it may retry, each attempt's (:func:`_attempts`); else empty."""


def under_budget(
    wf: Workflow,
    deadline_s: float | None = None,
    max_cost_usd: float | None = None,
    seed: int | None = 0,
    runs: int = PREDICTION_RUNS,
    keep: bool = False,
) -> SimResult:
    """The Monte Carlo of ``wf`` under ``deadline_s`` and ``max_cost_usd`` (None: none), the
    prediction set beside measured figures (compare, sweep, run, optimize's check of its
    budgets); ``keep``: with every run's figures (:attr:`SimResult.samples`)."""
    return simulate(wf.with_budget(deadline_s=deadline_s), runs, seed, max_cost_usd=max_cost_usd,
                    keep=keep)  # fmt: skip


def check_runs(runs: int, flag: str = "--runs") -> int:
    """``runs``, refused (UsageError) above :data:`MAX_RUNS`, which a typo would otherwise
    turn into gigabytes of trajectories and an out-of-memory kill."""
    if runs > MAX_RUNS:
        raise UsageError(
            f"{flag} {runs:,}: the Monte Carlo keeps every trajectory in memory (about "
            f"{runs * 70 / 1e9:,.0f} GB for these); give at most {MAX_RUNS:,}, which puts "
            "a success rate within +-0.022%"
        )
    return runs


def check_seed(wf: Workflow) -> int:
    """The seed of optimize's Monte Carlo checks (the spec's, else 1): its enforced search
    and the check printed beside its answer draw the same runs, so they agree."""
    return wf.seed if wf.seed is not None else 1


@dataclass(frozen=True, slots=True)
class BudgetFor:
    """The smallest spend ceiling, or deadline, under which a share of runs still finishes."""

    kind: Literal["max_cost_usd", "deadline_s"]
    """Which budget was searched."""
    target: float
    """The share of runs asked for."""
    value: float | None
    """Dollars to a millionth, or seconds to a millisecond, rounded up (None: no budget
    reaches ``target``)."""
    at: SimResult
    """The Monte Carlo at ``value`` (or, when none reaches it, with no such budget at all)."""
    below: SimResult | None
    """The Monte Carlo one unit (a millionth of a dollar, a millisecond) below ``value``."""
    run_with: float | None = None
    """What to run with: ``value`` for a ceiling; for a deadline, ``value`` and
    :func:`deadline_headroom` (None with ``value``)."""

    def to_json(self) -> dict[str, Any]:
        """``simulate --ceiling-for`` / ``--deadline-for`` with ``--json``."""
        hits = self.at.ceiling_hits if self.kind == "max_cost_usd" else self.at.deadline_hits
        rate = "budget_exhausted_rate" if self.kind == "max_cost_usd" else "deadline_rate"
        below = self.below
        return {"target": self.target, self.kind: self.value, "run_with": self.run_with,
                "success_rate": self.at.success_rate, rate: hits / self.at.runs,
                "below": None if below is None else {
                    self.kind: below.max_cost_usd if self.kind == "max_cost_usd" else below.deadline_s,
                    "success_rate": below.success_rate}}  # fmt: skip


def smallest_budget(
    wf: Workflow,
    target: float,
    runs: int,
    seed: int | None = None,
    kind: Literal["max_cost_usd", "deadline_s"] = "max_cost_usd",
) -> BudgetFor:
    """The smallest ceiling (to a millionth of a dollar) or deadline (to a millisecond)
    under which ``target`` of ``runs`` trajectories finish. Every trajectory draws the same
    under any budget, so success can only grow with it, and a bisection finds where it
    crosses ``target``. A ceiling is searched under the spec's own deadline; a deadline
    with spend unbounded."""
    if not 0.0 < target <= 1.0:
        raise ValueError("target must be a share of runs in (0, 1]")
    cost = kind == "max_cost_usd"
    unit = 1e-6 if cost else 1e-3
    digits = 6 if cost else 3

    def run(v: float | None, keep: bool = False) -> SimResult:
        if cost:
            return simulate(wf, runs, seed, max_cost_usd=v, keep=keep)
        return simulate(wf.with_budget(deadline_s=v), runs, seed, keep=keep)

    free = run(None, keep=True)
    if free.success_rate < target:  # no such budget at all gets there
        return BudgetFor(kind, target, None, free, None)
    if cost:
        hi = max(estimate(wf, draw_runs=False).cost_worst, unit)
        while run(hi).ceiling_hits:  # reservations above the prices: the worst case is short
            hi *= 2
    else:
        assert free.samples is not None
        hi = float(free.samples["latency"].max()) + unit
    lo = 0.0
    while hi - lo > unit / 10:
        mid = (lo + hi) / 2
        lo, hi = (lo, mid) if run(mid).success_rate >= target else (mid, hi)
    value = round(math.ceil(hi / unit) * unit, digits)  # at or above the step: it meets it
    at, below = run(value), None
    while value >= 2 * unit:  # the step may sit a unit lower than the rounding put it
        below = run(round(value - unit, digits))
        if below.success_rate < target:
            break
        value, at, below = round(value - unit, digits), below, None
    run_with = value if cost else round(value + deadline_headroom(estimate(wf, draw_runs=False)), digits)
    return BudgetFor(kind, target, value, at, below, run_with)


DEADLINE_HEADROOM_S = 0.01
"""What a run's deadline should allow the executor beyond the Monte Carlo's time, per step on
the critical path (and once more for the run's start): the event loop wakes a few
milliseconds after a wait ends (1-3 ms measured on two cores: 0.5 s simulated calls took
502.3-502.8 ms), so a deadline the spec's own latencies meet to the millisecond is missed."""


DEADLINE_HEADROOM_VIRTUAL_S = 0.001
""":data:`DEADLINE_HEADROOM_S` for runs on a virtual clock (simulated ``compare`` and
``sweep`` at ``--time-scale 0``, their default): no wait wakes late there, so what a run
adds to the spec's time is the executor's own work, which the loop's clock counts
(measured on two cores: early-stop.yaml's runs ending at 0.5 s took 0.5005-0.5008 s;
ticket.yaml's 14 s runs 14.0009-14.0012 s, up to 14.0055 s eight at a time)."""


def deadline_headroom(e: Estimate, time_scale: float = 1.0) -> float:
    """Seconds of the spec's time to add to a deadline found by the Monte Carlo before
    running with it: :data:`DEADLINE_HEADROOM_S` a step in real time; at ``time_scale`` F
    in (0, 1) the same real wake-ups are 1/F times as long in the spec's time (at 0.01,
    early-stop.yaml's 0.5 s runs took 0.6-0.71 s); 0, a virtual clock,
    :data:`DEADLINE_HEADROOM_VIRTUAL_S`."""
    per_step = DEADLINE_HEADROOM_VIRTUAL_S if time_scale == 0 else DEADLINE_HEADROOM_S / time_scale
    return per_step * (1 + sum(1 for s in e.per_step if s.critical))


def near_deadline(sim: SimResult, e: Estimate, time_scale: float = 1.0) -> float | None:
    """The share of ``sim``'s runs (a Monte Carlo under a deadline, which keeps its runs)
    that succeed in time by less than the executor's own time (:func:`deadline_headroom`,
    ``e`` being the spec's estimate, ``time_scale`` the runs'): runs the Monte Carlo, which
    counts the spec's time alone, has in time and a run may not (those that end exactly at
    it: ticket.yaml's 92.8% without a retry at 14 s, early-stop.yaml's 70% that its guess
    stops at 0.5 s). None without a deadline."""
    if sim.deadline_s is None or sim.samples is None:
        return None
    late = sim.samples["latency"] >= sim.deadline_s - deadline_headroom(e, time_scale)
    return float(np.mean(sim.samples["ok"] & late))


NO_CUT = _Cut(None, False, math.inf)
"""Neither an early stop nor a deadline: what a failed step or the ceiling cuts short."""


def _chain(wf: Workflow) -> bool:
    """Each step depends on the one before it: a failed step's halt stops only the steps
    that depend on it, which never run anyway."""
    graph = wf.edges()
    return dag.is_chain(graph, dag.topo_order(graph))


def _cut_of(wf: Workflow, order: list[str]) -> _Cut | None:
    if wf.stop_when is None and wf.budget.deadline_s is None:
        return None
    graph = wf.edges()
    stop = alone = None
    if wf.stop_when is not None:
        stop = order.index(wf.stop_when)
        alone = not any(wf.stop_when in deps for deps in graph.values())
    deadline = wf.budget.deadline_s if wf.budget.deadline_s is not None else math.inf
    return _Cut(stop, bool(alone), deadline)


def _chunk(
    params: list[_StepParams],
    st: Simulation,
    n: int,
    rngs: tuple[np.random.Generator, np.random.Generator],
    halt: bool,
    cut: _Cut | None = None,
    cap: float = math.inf,
    slots: _Slots | None = None,
    trace: list[tuple[Any, ...]] | None = None,
) -> tuple[np.ndarray, ...]:
    """``rngs``: the generator of every draw, and the one of the backoff waits. ``trace``,
    where given, gets per step its drawn seconds, of which the backoff waits, whether it
    sends calls, whether its own retries ran out, for a step that may retry its attempts,
    and what it paid (:func:`step_draws`)."""
    rng = rngs[0]
    pool = _Pool(slots, n) if slots is not None else None
    zeros = np.zeros(n)
    false = np.zeros(n, dtype=bool)
    finish: list[np.ndarray] = []
    dead: list[np.ndarray] = []  # ran out of retries, was skipped below one, or hit the ceiling
    wrong: list[np.ndarray] = []  # this step's output is wrong, or built on a wrong one
    cost, calls, latency = zeros.copy(), zeros.copy(), zeros.copy()
    uncaught_any = false.copy()
    broke = false.copy()  # the ceiling refused a call: nothing more is sent
    broke_at = np.full(n, math.inf)
    capped = cap < math.inf
    own: list[_Own] = []
    durs: list[np.ndarray] = []  # with the slots: each step's drawn time, and where it runs
    busy: list[np.ndarray] = []
    pauses: list[np.ndarray] = []  # of which the backoff waits
    refusals: list[np.ndarray | None] = []
    holding: list[tuple[np.ndarray, ...]] = []  # under a ceiling, the steps holding more than
    # they bill: each's start, finish, a wave's hold, bill and waves sent (0: none sent)
    excess = zeros.copy()  # their waves' holds summed: the most they can hold beyond bills
    for sp in params:
        start = np.max([finish[j] for j in sp.parents], axis=0) if sp.parents else zeros
        blocked = np.any([dead[j] for j in sp.parents], axis=0) if sp.parents else false
        tainted = np.any([wrong[j] for j in sp.parents], axis=0) if sp.parents else false
        runs = ~blocked if halt else np.ones(n, dtype=bool)
        if capped:
            runs &= ~broke
        if sp.hit_rate >= 1.0:
            dur = np.where(runs, CACHE_HIT_LATENCY_S, 0.0)
            if trace is not None:
                trace.append((dur, zeros, false, false, [], zeros, []))
            if pool is not None:
                durs.append(dur)
                busy.append(false)
                pauses.append(zeros)
                refusals.append(None)
            finish.append(start + dur)
            dead.append(blocked | broke)
            wrong.append(tainted.copy())
            if cut is not None:
                own.append(_Own(zeros, zeros, false, start, zeros, 0.0, false, dur, []))
            continue
        hit = runs & (rng.random(n) < sp.hit_rate) if sp.hit_rate > 0.0 else false
        factor = np.where(tainted, st.compounding, 1.0)
        # a step that may retry: where the run ends while it is under way, its attempts
        marks: list[tuple[np.ndarray, ...]] | None = (
            [] if cut is not None and len(sp.tries) > 1 else None
        )
        held = None  # counted only where it may keep a call of this step from fitting
        if holding and np.any((runs & ~hit) & (cap - cost - excess < sp.most_held + EPS_USD)):
            held = _holding_at(holding, start)
        chosen: list[np.ndarray] | None = [] if trace is not None and sp.route is not None else None
        called, paid, dur, step_dead, step_wrong, refused, paused, made = _attempts(
            sp, st, factor, runs & ~hit, rngs, cap - cost if capped else None, marks, held, chosen
        )
        if sp.hit_rate > 0.0:
            dur = np.where(hit, CACHE_HIT_LATENCY_S, dur)
        if trace is not None:
            trace.append((dur, zeros if paused is None else paused, runs & ~hit, step_dead,
                          [m[:4] for m in marks or ()], paid, chosen or []))  # fmt: skip
        if pool is not None:  # timed once every step is drawn: their calls wait for slots
            durs.append(dur)
            busy.append(runs & ~hit)
            pauses.append(zeros if paused is None else paused)
            refusals.append(refused)
        cost += paid
        calls += called
        finish.append(start + dur)
        if capped and sp.wave_hold > 0.0:
            hold = np.where(called > 0, sp.wave_hold, 0.0)
            holding.append((start, finish[-1], hold, paid, made * len(sp.waves)))
            excess += hold
        if refused is not None:
            broke_at = np.where(refused, start + dur, broke_at)
            broke |= refused
        dead.append((step_dead | blocked | broke) if capped else (step_dead | blocked))
        wrong.append(step_wrong | tainted)
        uncaught_any |= step_wrong
        if cut is not None:
            own.append(_Own(paid, called, step_wrong, start, np.minimum(called, sp.calls),
                            sp.cancel_usd, step_dead, dur, marks or []))  # fmt: skip
    if pool is not None:  # the steps' times again, their calls waiting for slots
        assert slots is not None
        starts, finish = pool.schedule(params, durs, pauses, busy, slots.calls)
        broke_at = np.full(n, math.inf)
        for f, refused in zip(finish, refusals, strict=True):
            if refused is not None:
                broke_at = np.where(refused, f, broke_at)
        if cut is not None:
            own = [o._replace(start=t0) for o, t0 in zip(own, starts, strict=True)]
    if cut is not None:
        return _cut_short(cut, finish, dead, own, broke_at, halt)
    for f in finish:
        np.maximum(latency, f, out=latency)
    caught_any = np.any(dead, axis=0) & ~broke
    ok = ~caught_any & ~uncaught_any & ~broke
    return cost, latency, calls, ok, caught_any, uncaught_any & ~caught_any & ~broke, false, broke


def _holding_at(
    holding: list[tuple[np.ndarray, ...]], start: np.ndarray
) -> Callable[[np.ndarray], np.ndarray]:
    """What the steps in ``holding`` in flight ``offset`` seconds after ``start`` hold beyond
    what the trajectory counts spent (it counts a step's bills, all its waves', from its
    start): the wave in flight's hold, less the bills of that wave and the waves after it
    (the waves taken as spread evenly over the step's time), or nothing: the bills of waves
    not yet sent are never given back, as those waves fitted without the steps after them."""

    def at(offset: np.ndarray) -> np.ndarray:
        t = start + offset
        out = np.zeros(t.shape)
        for t0, t1, hold, bill, waves in holding:
            inside = (t0 <= t) & (t < t1) & (waves > 0)
            done = np.floor((t - t0) / np.where(t1 > t0, t1 - t0, 1.0) * waves)
            more = hold - bill * (1.0 - done / np.maximum(waves, 1.0))
            out += np.where(inside, np.maximum(more, 0.0), 0.0)
        return out

    return at


class _Pool:
    """When each of the run's slots frees, trajectory by trajectory (a chunk's).

    The calls take slots in the order the replay gives them (:func:`_slotted`): each the
    slot :func:`_fitting` gives it (and its model's, where that has a limit), from when its
    wave may go or when the slot frees, as the executor hands its slots on; a step's next
    wave goes when the last has answered. Without jitter, retries or faults this is the
    replay's schedule; where a call in that order may go later in a trajectory than one
    after it, the later one does not take the slot first, as the executor's would (it
    leaves the slots freed earliest to it). A step's drawn time is shared among its waves
    as their expected times are, a wave's first call takes the whole of its share and the
    others what a call takes against a wave (they give their slots back when they answer),
    and the backoff waits between attempts hold no slot: they follow the calls.
    """

    def __init__(self, slots: _Slots, n: int) -> None:
        self.free = np.zeros((n, slots.concurrency))
        self.models = {m: np.zeros((n, c)) for m, c in slots.models.items()}
        self.rates = {m: [_Buckets(k, s, tpm, n) for k, s, tpm in r]
                      for m, r in slots.rates.items()}  # fmt: skip

    def schedule(
        self, params: list[_StepParams], durs: list[np.ndarray], pauses: list[np.ndarray],
        busy: list[np.ndarray], calls: tuple[tuple[int, int], ...],
    ) -> tuple[list[np.ndarray], list[np.ndarray]]:  # fmt: skip
        """Each step's start (its first call) and finish, from its drawn time ``durs``
        where it sends calls (``busy``; elsewhere its time from when it is ready): its calls
        hold their slots for all of it but the backoff waits (``pauses``), which follow."""
        n = durs[0].size if durs else 0
        rows = np.arange(n)
        start: list[np.ndarray] = [np.zeros(n)] * len(params)
        finish: list[np.ndarray] = [np.zeros(n)] * len(params)
        at: dict[int, np.ndarray] = {}  # a step under way: when its wave may go
        end: dict[int, np.ndarray] = {}  # and when the calls of its wave sent so far answer
        left: dict[int, int] = {}  # calls of its wave not yet sent
        for i, j in calls:
            sp, b = params[i], busy[i]
            if i not in at:
                if j or i in left:  # a step that sends no call here, or done
                    continue
                ready = (np.max([finish[k] for k in sp.parents], axis=0) if sp.parents
                         else np.zeros(n))  # fmt: skip
                start[i], finish[i] = ready, ready + durs[i]
                if sp.held is None or not b.any():
                    left[i] = 0
                    continue
                at[i], end[i], left[i] = ready, ready, sp.held.waves[0]
            held = sp.held
            assert held is not None
            part, each = sp.parts[j]
            d = (durs[i] - pauses[i]) * part
            go = at[i]
            slots = [self.free] if held.model not in self.models else [
                self.free, self.models[held.model]]  # fmt: skip
            taken = [_fitting(p, go) for p in slots]
            for p, k in zip(slots, taken, strict=True):
                go = np.maximum(go, p[rows, k])
            for bucket in self.rates.get(held.model or "", ()):  # then its rate limits
                go = bucket.take(go, held.tokens, b)
            done = go + (d if left[i] == held.waves[j] else d * each)  # its first: the slowest
            for p, k in zip(slots, taken, strict=True):
                p[rows, k] = np.where(b, done, p[rows, k])
            if j == 0 and left[i] == held.waves[0]:
                start[i] = np.where(b, go, start[i])
            end[i] = np.maximum(end[i], done)
            left[i] -= 1
            if left[i] == 0:  # the wave answered: the next may go, or the step is done
                at[i] = end[i]
                if j == len(held.waves) - 1:
                    finish[i] = np.where(b, at.pop(i) + pauses[i], finish[i])
                else:
                    left[i] = held.waves[j + 1]
        return start, finish


def _fitting(free: np.ndarray, at: np.ndarray) -> np.ndarray:
    """Per trajectory, the slot a call ready ``at`` takes: of those free by then, the one
    freed last, else the one that frees first. The calls come in the replay's order, not
    in each trajectory's: one ready late (behind a retry's backoff) takes a slot freed just
    before it, and leaves those freed earlier to the calls that come after it in the order
    but are ready before it (taking the first freed, it held them up: a 60-step DAG of
    retrying calls in four slots was predicted 13% slower than measured)."""
    # times are never negative: a free slot's key (-free) is at most 0, a busy one's over it
    taken: np.ndarray = np.where(free <= at[:, None], -free, free).argmin(axis=1)
    return taken


def _fitting_one(free: list[float], at: float) -> int:
    """:func:`_fitting` for one trajectory."""
    idle = [k for k, f in enumerate(free) if f <= at]
    if idle:
        return max(idle, key=free.__getitem__)
    return min(range(len(free)), key=free.__getitem__)


class _Buckets:
    """:class:`trilemma.plan.slots.Bucket`, trajectory by trajectory (a chunk's)."""

    def __init__(self, per_minute: int, minute_s: float, tpm: bool, n: int) -> None:
        self.capacity, self.rate, self.tpm = float(per_minute), per_minute / minute_s, tpm
        self.tokens = np.full(n, self.capacity)
        self.updated = np.zeros(n)

    def take(self, now: np.ndarray, tokens: float, sent: np.ndarray) -> np.ndarray:
        """When a call that comes at ``now`` has what it takes (``tokens``, or one request),
        where it is ``sent``; elsewhere ``now``, and the bucket as it was."""
        amount = min(tokens if self.tpm else 1.0, self.capacity)
        at = np.maximum(now, self.updated)
        have = np.minimum(self.capacity, self.tokens + (at - self.updated) * self.rate)
        at = at + np.maximum(amount - have, 0.0) / self.rate
        self.tokens = np.where(sent, np.maximum(have - amount, 0.0), self.tokens)
        self.updated = np.where(sent, at, self.updated)
        return np.where(sent, at, now)


def _cut_short(
    cut: _Cut,
    finish: list[np.ndarray],
    dead: list[np.ndarray],
    own: list[_Own],
    broke_at: np.ndarray,
    halt: bool = True,
) -> tuple[np.ndarray, ...]:
    """A chunk's figures when a run may end early, as the executor ends it.

    A step that fails by its own retries (``halt``) stops new calls, as the ceiling's
    refusal does (``broke_at``; the draw sent nothing after it already): the attempts sent
    by then run to their ends, paid for, and no other is sent (a step under way sends no
    retry). Where the stop step passed, or the deadline came first, only the steps finished
    by then count whole; a step under way then has paid for the attempts answered by then
    and has one in flight, cancelled (billed at its reservation on a real endpoint, nothing
    on the simulator), or waits to retry; the run ends then. A run the deadline cut fails, as
    does one the ceiling stopped first; a step counts as failed by its own retries only, as
    the loop has it (a step the ceiling stopped after the run had ended did not fail it).

    Where the slots timed a step, its attempts are placed on its time in proportion.
    """
    inf = np.full_like(finish[0], math.inf)
    failed_at = inf
    if halt:
        for i, (f, o) in enumerate(zip(finish, own, strict=True)):
            if not (cut.alone and i == cut.stop):  # a lone stop step's failure: no stop
                failed_at = np.where(o.failed, np.minimum(failed_at, f), failed_at)
    ran = [o.start < failed_at - 1e-9 for o in own]  # started before a failure stopped sending
    steps = [_sent(o, f, failed_at) for f, o in zip(finish, own, strict=True)]
    at = inf
    if cut.stop is not None:  # it passed its gate (perhaps wrongly: then the run is wrong)
        passed = ~dead[cut.stop] & ran[cut.stop] & ~steps[cut.stop][0]
        at = np.where(passed, finish[cut.stop], math.inf)
    end = np.max([np.where(r, st[1], 0.0) for st, r in zip(steps, ran, strict=True)], axis=0)
    cut_off = np.minimum(end, at) > cut.deadline + 1e-9  # something runs at the deadline
    until = np.where(cut_off, cut.deadline, at)  # what is in flight then is cancelled
    broke = (broke_at < until - 1e-9) & (broke_at <= failed_at)
    late = cut_off & ~(np.minimum(failed_at, broke_at) < until - 1e-9)  # not stopped first
    cost, calls, latency = np.zeros_like(inf), np.zeros_like(inf), np.zeros_like(inf)
    caught, uncaught = np.zeros(inf.shape, dtype=bool), np.zeros(inf.shape, dtype=bool)
    stopped = np.minimum(until, failed_at)  # no call is sent from then on
    for i, (r, (halted, f, paid, called), o) in enumerate(zip(ran, steps, own, strict=True)):
        counts = r & (f <= until + 1e-9)
        in_flight = r & ~counts & (o.start < until - 1e-9)
        if o.marks:  # what it had paid for and sent by then, and an attempt in flight or not
            cost += np.where(counts, paid, 0.0)
            calls += np.where(counts, called, 0.0)
            idx = np.flatnonzero(in_flight)
            if idx.size:
                done_paid, sent, answering = _under_way(o, finish[i], stopped, idx)
                cost[idx] += done_paid + np.where(answering, o.cancel, 0.0)
                calls[idx] += sent
        else:
            cost += np.where(counts, paid, np.where(in_flight & (o.one > 0), o.cancel, 0.0))
            calls += np.where(counts, called, np.where(in_flight, o.one, 0.0))
        np.maximum(latency, np.where(counts, f, 0.0), out=latency)
        if not (cut.alone and i == cut.stop):
            caught |= o.failed & ~halted & counts
        uncaught |= o.wrong & ~halted & counts
    latency = np.where(cut_off, cut.deadline, latency)
    caught &= ~broke
    ok = ~caught & ~uncaught & ~late & ~broke
    return cost, latency, calls, ok, caught, uncaught & ~caught & ~broke, late, broke


def _placed(o: _Own, finish: np.ndarray, idx: np.ndarray) -> np.ndarray:
    """Trajectories ``idx``: a step's seconds on the run's clock per second of its drawn time."""
    drawn = np.asarray(o.dur, dtype=float)[idx]
    took = finish[idx] - o.start[idx]
    return np.where(drawn > 0, took / np.where(drawn > 0, drawn, 1.0), 1.0)


def _sent(o: _Own, finish: np.ndarray, failed_at: np.ndarray) -> tuple[np.ndarray, ...]:
    """A step's figures when no attempt is sent from ``failed_at`` on: where its retries
    were cut so, and its finish, dollars and calls (those of its last attempt sent)."""
    paid, called, start, marks = o.paid, o.called, o.start, o.marks
    halted = np.zeros(finish.shape, dtype=bool)
    if len(marks) < 2:
        return halted, finish, paid, called
    idx = np.flatnonzero(marks[1][0] & (failed_at < finish))  # it retried, and ends after
    if not idx.size:
        return halted, finish, paid, called
    k, t0, fail = _placed(o, finish, idx), start[idx], failed_at[idx] - 1e-9
    cut = np.zeros(idx.size, dtype=bool)
    f, p, c = finish[idx], paid[idx], called[idx]
    for (_, _, answered, by, calls), (made, sent_at, *_) in itertools.pairwise(marks):
        unsent = made[idx] & ~cut & (t0 + sent_at[idx] * k >= fail)
        f = np.where(unsent, t0 + answered[idx] * k, f)
        p, c = np.where(unsent, by[idx], p), np.where(unsent, calls[idx], c)
        cut |= unsent
    finish, paid, called = finish.copy(), np.array(paid, dtype=float), called.copy()
    finish[idx], paid[idx], called[idx], halted[idx] = f, p, c, cut
    return halted, finish, paid, called


def _under_way(
    o: _Own, finish: np.ndarray, until: np.ndarray, idx: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Trajectories ``idx``, where a step is under way at ``until``: the dollars of its
    attempts answered by then, the calls of those sent by then, and whether one is in
    flight (else it waits to retry)."""
    k, t0, end = _placed(o, finish, idx), o.start[idx], until[idx]
    paid = calls = np.zeros(idx.size)
    answering = np.zeros(idx.size, dtype=bool)
    for made, sent_at, answered, by, sent in o.marks:
        went = made[idx] & (t0 + sent_at[idx] * k < end - 1e-9)
        back = went & (t0 + answered[idx] * k <= end + 1e-9)
        paid, calls = np.where(back, by[idx], paid), np.where(went, sent[idx], calls)
        answering = np.where(went, ~back, answering)
    return paid, calls, answering


def _attempts(
    sp: _StepParams,
    st: Simulation,
    factor: np.ndarray,
    runs: np.ndarray,
    rngs: tuple[np.random.Generator, np.random.Generator],
    room: np.ndarray | None = None,
    marks: list[tuple[np.ndarray, ...]] | None = None,
    held: Callable[[np.ndarray], np.ndarray] | None = None,
    chosen: list[np.ndarray] | None = None,
) -> tuple[Any, ...]:
    """Calls made, dollars paid, time taken, retries exhausted, failure uncaught, refused by
    the ceiling (None: no ceiling), of the time taken the backoff waits (no call in
    flight), and attempts made; per trajectory.

    Before each retry a trajectory waits the executor's backoff, drawn from ``rngs[1]``:
    under a ceiling for every trajectory, retrying or not, so that no ceiling moves a draw;
    otherwise for the retrying ones only.

    ``factor`` scales each trajectory's ``p`` (compounding below an uncaught failure).
    A routed step's attempt first draws its branch, trajectory by trajectory. ``room``:
    dollars left under the ceiling (None: no ceiling); an attempt sends the calls whose
    reservations fit, one after another, and a call that does not fit stops the run.
    ``marks``, where given, gets each attempt's figures for a run that may end while the
    step is under way (:func:`_cut_short`): where it was made, when it was sent and when it
    answered (from the step's start), and the dollars and calls of the step by then.
    ``held``: dollars the other steps hold beyond their bills, in flight this many seconds
    after the step's start (their worst cases, under the ceiling at once). ``chosen``, where
    given, gets a routed step's branch per trajectory, attempt by attempt.
    """
    rng, waits = rngs
    n = runs.shape[0]
    trying = runs.copy()
    called = np.zeros(n)
    paid = np.zeros(n)
    dur = np.zeros(n)
    paused = np.zeros(n) if sp.held is not None else None  # kept where the slots time it
    step_dead = np.zeros(n, dtype=bool)
    step_wrong = np.zeros(n, dtype=bool)
    refused = None if room is None else np.zeros(n, dtype=bool)
    tried = np.zeros(n)  # attempts made (counted under a ceiling)
    last = len(sp.tries) - 1
    for a, t in enumerate(sp.tries):
        r = sp.route
        if room is not None:
            tried += trying
        made, sent_at = (trying, dur.copy()) if marks is not None else (trying, dur)
        go: np.ndarray = trying  # per trajectory, the share of the attempt's calls sent
        slow: Any = None  # given up at its timeout
        before = None
        if r is None:
            p, price, latency = t.p, t.price, t.latency
            before = called.copy() if t.copies else None  # to count the copies sent
            jitter = _jitter(t.jitter, n, rng) if t.waves is None else 1.0
            bill = trying * price
            if room is not None:  # the calls whose reservations fit, a wave at a time
                left = room - paid + EPS_USD
                at = None  # a wave goes when the last has answered
                if held is not None:
                    at = functools.partial(_held_in_wave, held, dur, sp.wave_at)
                sent, cost = _fit_waves(left, sp.waves, t.reserve, price / sp.calls, at)
                go, bill = trying * (sent / sp.calls), trying * cost
            called += go * sp.calls
            if t.hedge < math.inf:  # a copy sent after t.hedge: the faster wins, both are paid
                first = latency * np.broadcast_to(jitter, (n,))
                late = trying & (first > t.hedge)
                if room is not None:  # the copy's reservation is held beside the call's, or none is sent
                    late &= left - (at(0) if at is not None else 0.0) >= 2 * t.reserve * sp.calls
                again = latency * _jitter(t.jitter, n, rng)  # the copy's own time
                # each copy is given up at its own timeout; the first answer in time wins
                first_in, copy_in = first <= t.timeout, late & (again <= t.timeout)
                won = np.minimum(np.where(first_in, first, np.inf),
                                 np.where(copy_in, t.hedge + again, np.inf))  # fmt: skip
                slow = trying & ~(first_in | copy_in)
                won = np.where(slow, np.where(late, t.given_up_hedged_s, t.given_up_s), won)
                jitter = won / latency
                bill = np.where(first_in | copy_in, bill, 0.0)  # the answer that won
                # the loser, still in flight when the winner answers, is cancelled and billed
                # at its hold (a first call given up before its copy answers bills nothing)
                lost = late & (first_in | (copy_in & (t.hedge + again < t.timeout)))
                paid += lost * (t.reserve * sp.calls)
                called += late * sp.calls
            elif t.waves is not None:  # each wave waits for its slowest call
                waited, given_up, billed, sent = _wave_draws(t, t.waves, n, rng)
                jitter = waited / latency
                if np.any(given_up):  # billed for the calls answered by then
                    slow = trying & given_up
                    bill = np.where(slow, np.minimum(bill, billed * (price / sp.calls)), bill)
                    called -= slow * np.maximum(go * sp.calls - sent, 0.0)
            else:
                over = latency * jitter > t.timeout
                if np.any(over):  # rare at a timeout far past the latency: skipped when none is
                    slow = trying & over
                    jitter = np.where(slow, t.given_up_s / latency, jitter)
                    bill = np.where(slow, 0.0, bill)
        else:
            b = rng.choice(len(r.shares), size=n, p=r.shares)
            if chosen is not None:
                chosen.append(np.asarray(b))
            p, price, latency = r.p[b], r.price[b], r.latency[b]
            jitter = 1.0  # the classifier's answer, then the branch's, each with its own jitter
            if r.head_sigma > 0.0 or r.body_sigma.any():
                sigma = r.body_sigma[b]
                branch_s = r.body_s[b] * np.exp(sigma * rng.standard_normal(n) - sigma * sigma / 2)
                jitter = (r.head_s * _jitter(r.head_sigma, n, rng) + branch_s) / latency
            bill = trying * price
            if room is not None:  # the classifier's call, then the branch's calls
                body = r.calls[b] - 1
                left = room - paid + EPS_USD - (held(dur) if held is not None else 0.0)
                sent, cost = _fit(left, r.calls[b], r.reserve[b], r.head_price,
                                  r.head_reserve, (price - r.head_price) / body)  # fmt: skip
                go, bill = trying * (sent / r.calls[b]), trying * cost
            called += go * r.calls[b]
        took: Any = latency * jitter
        erred = None  # a fault injected (a call given up at its timeout is not one)
        if r is None and t.fault > 0:  # drawn only then: fault-free specs keep their draws
            erred = trying & (rng.random(n) < t.fault)
            if slow is not None:
                erred &= ~slow
            bill = np.where(erred, np.minimum(bill, t.fault_usd), bill)
            if t.fault_calls < sp.calls:  # the waves after the fault's are not sent
                called -= erred * np.maximum(go * sp.calls - t.fault_calls, 0.0)
            took = np.where(erred, t.fault_s, took)
        elif r is not None and r.faulty:  # the classifier's call, else the branch's, may fail
            headless = trying & (rng.random(n) < r.head_fail)
            erred = headless | (trying & (rng.random(n) < r.fail[b]))
            bill = np.where(headless, 0.0, np.where(erred, np.minimum(bill, r.fail_usd[b]), bill))
            took = np.where(headless, r.head_fail_s, np.where(erred, r.fail_s[b], took))
            branch = go * (r.calls[b] - 1)
            called -= np.where(headless, branch,  # no branch sent, or its waves up to the fault
                               erred * np.maximum(branch - r.fail_calls[b], 0.0))  # fmt: skip
        if before is not None:  # each call sent raced a copy of its own so often
            called += (called - before) * t.copies
        failed = slow if erred is None else (erred if slow is None else slow | erred)
        paid += bill
        if refused is None:
            dur += np.where(trying, took, 0.0)
        else:  # a trajectory that sent nothing adds nothing (its drawn time may be inf)
            dur += go * np.where(go > 0, took, 0.0)
            short = trying & (go < 1.0)
            refused |= short
            trying = trying & ~short
        if marks is not None:
            marks.append((made, sent_at, dur.copy(), paid.copy(), called.copy()))
        fails = rng.random(n) < 1.0 - p * factor
        if a > 0 and st.retry_correlation > 0:
            fails |= rng.random(n) < st.retry_correlation
        fails &= trying
        caught = fails & (rng.random(n) < sp.recall)
        if failed is not None:  # a provider error is never taken for an answer
            caught = (caught & ~failed) | (failed & trying)
            fails &= ~failed
        step_wrong |= fails & ~caught
        trying = caught
        if a == last:
            step_dead |= caught
        elif room is not None or trying.any():
            limited = t.limited if r is None else 0.0  # a routed step's: jitter waits only
            _backoff(dur, trying, erred, limited, a + 1, waits, every=room is not None,
                     paused=paused)  # fmt: skip
        if room is None and not trying.any():
            break  # under a ceiling every attempt draws, so that the draws never depend on it
    return called, paid, dur, step_dead, step_wrong, refused, paused, tried


def _backoff(
    dur: np.ndarray, trying: np.ndarray, erred: np.ndarray | None, limited: float, failures: int,
    rng: np.random.Generator, every: bool, paused: np.ndarray | None = None,
) -> None:  # fmt: skip
    """Add to ``dur`` the backoff each retrying trajectory waits after its ``failures``-th
    failure: full jitter below its ceiling, or the Retry-After after a rate limit (``erred``
    with the share ``limited``). ``every``: draw for every trajectory, retrying or not (under
    a ceiling, so that no budget moves a draw); else for the retrying ones only. ``paused``:
    where the same waits are added up too."""
    who = np.arange(trying.size) if every else np.flatnonzero(trying)
    wait = rng.random(who.size) * backoff_ceiling(failures)
    if erred is not None and limited > 0:
        wait = np.where(erred[who] & (rng.random(who.size) < limited), SIM_RETRY_AFTER_S, wait)
    add = np.where(trying[who], wait, 0.0)
    dur[who] += add
    if paused is not None:
        paused[who] += add


def _wave_draws(
    t: _Try, waves: tuple[int, ...], n: int, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Seconds ``n`` attempts of jittery calls in ``waves`` take, each wave its slowest
    call's lognormal draw; whether one was given up (a wave slower than ``t.given_up_s``
    takes that, and no later wave is sent); and, for those, the calls billed and sent."""
    each, sigma = t.latency / len(waves), t.jitter
    took, late = np.zeros(n), np.zeros(n, dtype=bool)
    billed, sent = np.zeros(n), np.zeros(n)
    for w, (bills, sends) in zip(waves, t.late_calls, strict=True):
        if t.answers is None:
            slowest = each * np.exp(sigma * _max_normal(w, n, rng) - sigma * sigma / 2)
        else:  # hedged calls: P(slowest <= s) = answered(s)^w, inverted on the table
            times, answered = t.answers
            level = np.exp(np.log1p(-rng.random(n)) / w)
            slowest = np.where(level > answered[-1], np.inf, np.interp(level, answered, times))
        over = ~late & (slowest > t.given_up_s)
        took += np.where(late, 0.0, np.where(over, t.given_up_s, slowest))
        billed[over], sent[over] = bills, sends
        late |= over
    return took, late, billed, sent


def _max_normal(calls: int, n: int, rng: np.random.Generator) -> np.ndarray:
    """``n`` draws of the largest of ``calls`` standard normals, by inversion: one uniform
    each, whatever ``calls`` (a 1,000-agent debate draws no more than a single call)."""
    # P(max > z) = 1 - Phi(z)^calls = tail, and z = -Phi^-1(tail) by symmetry
    tail = -np.expm1(np.log1p(-rng.random(n)) / calls)
    return -_normal_quantile(np.clip(tail, 1e-300, 1.0 - 1e-16))


_A = (-3.969683028665376e01, 2.209460984245205e02, -2.759285104469687e02,
      1.383577518672690e02, -3.066479806614716e01, 2.506628277459239e00)  # fmt: skip
_B = (-5.447609879822406e01, 1.615858368580409e02, -1.556989798598866e02,
      6.680131188771972e01, -1.328068155288572e01, 1.0)  # fmt: skip
_C = (-7.784894002430293e-03, -3.223964580411365e-01, -2.400758277161838e00,
      -2.549732539343734e00, 4.374664141464968e00, 2.938163982698783e00)  # fmt: skip
_D = (7.784695709041462e-03, 3.224671290700398e-01, 2.445134137142996e00,
      3.754408661907416e00, 1.0)  # fmt: skip


def _normal_quantile(p: np.ndarray) -> np.ndarray:
    """Phi^-1(p) for ``p`` in (0, 1), to a relative 1.2e-9 (Acklam's rational approximation;
    numpy has no inverse of the normal CDF, and scipy is not a dependency)."""
    low = 0.02425
    tails = np.minimum(p, 1.0 - p)
    r = np.sqrt(-2.0 * np.log(np.where(tails < low, tails, 0.5)))
    outer = np.polyval(_C, r) / np.polyval(_D, r)  # the lower tail's; the upper's is its negative
    q = p - 0.5
    inner = q * np.polyval(_A, q * q) / np.polyval(_B, q * q)
    return np.where(tails >= low, inner, np.where(p < 0.5, outer, -outer))


def _fit(
    left: Any, calls: Any, reserve: Any, first_price: Any, first_reserve: Any, price: Any
) -> tuple[Any, Any]:
    """Of an attempt's ``calls`` calls, each reserved before it is sent, one after another,
    how many fit in ``left`` dollars and what they are billed: the first (a routed step's
    classifier) holds ``first_reserve`` and costs ``first_price``, the others hold
    ``reserve`` and cost ``price`` each. Arrays or numbers."""
    first = left >= first_reserve
    more = np.clip(np.floor((left - first_price) / np.maximum(reserve, 1e-15)), 0, calls - 1)
    more = np.where(first, more, 0)
    return first + more, first * first_price + more * price


def _held_in_wave(
    held: Callable[[np.ndarray], np.ndarray], sent_at: np.ndarray, wave_at: tuple[float, ...],
    i: int,
) -> np.ndarray:  # fmt: skip
    """``held`` when wave ``i`` of an attempt sent at ``sent_at`` goes (``wave_at``)."""
    return held(sent_at + wave_at[i])


def _held_one(
    holding: list[tuple[float, ...]], sent_at: float, wave_at: tuple[float, ...], i: int
) -> float:
    """:func:`_holding_at` for one trajectory: what the steps in flight when wave ``i`` of
    an attempt sent at ``sent_at`` goes (``wave_at``) hold beyond what it counts spent."""
    now = sent_at + wave_at[i]
    return math.fsum(
        max(hold - bill * (1.0 - math.floor((now - t0) / ((t1 - t0) or 1.0) * waves) / waves), 0.0)
        for t0, t1, hold, bill, waves in holding
        if t0 <= now < t1 and waves > 0
    )


def _fit_waves(
    left: Any, waves: tuple[int, ...], reserve: float, price: float,
    held: Callable[[int], Any] | None = None,
) -> tuple[Any, Any]:  # fmt: skip
    """Of an attempt's calls sent wave by wave, how many fit in ``left`` dollars and what
    they are billed: a wave's calls each hold ``reserve`` at once, and cost ``price`` each
    when they answer, before the next wave is held; ``held(i)``: what the other steps in
    flight hold beyond their bills when wave ``i`` goes. A price above the hold (a call's
    own hedge copies, priced at their expected share) is billed no further than the room
    left: a copy whose hold does not fit is not sent. Arrays or numbers."""
    sent: Any = 0
    whole: Any = True  # every call so far fitted
    most = left - held(0) if held is not None else left
    for i, w in enumerate(waves):
        room = left - held(i) if held is not None else left
        k = np.where(whole, np.clip(np.floor(room / max(reserve, 1e-15)), 0, w), 0)
        sent = sent + k
        whole = whole & (k == w)
        left = left - w * price
    return sent, np.minimum(sent * price, np.maximum(most, 0.0))


def _jitter(sigma: float, n: int, rng: np.random.Generator) -> np.ndarray | float:
    """Lognormal latency factors with mean 1 (1.0 when there is no jitter)."""
    if sigma == 0:
        return 1.0
    return np.exp(sigma * rng.standard_normal(n) - sigma * sigma / 2)


def simulate_loop(
    wf: Workflow,
    runs: int,
    seed: int | None = None,
    settings: Simulation | None = None,
    max_cost_usd: float | None = None,
) -> tuple[float, float, float]:
    """The same model one trajectory at a time in plain Python.

    The readable reference the vectorised :func:`simulate` is tested and
    benchmarked against. Returns (success rate, mean cost, mean latency).
    """
    settings = settings or wf.simulation
    order, params, slots = _drawn(wf, settings, max_cost_usd is not None)
    cut = _cut_of(wf, order)
    cap = math.inf if max_cost_usd is None else max_cost_usd
    rnd = random.Random(seed)
    ok_n, cost_sum, lat_sum = 0, 0.0, 0.0
    for _ in range(runs):
        spent, broke_at = 0.0, math.inf  # the ceiling refused a call at broke_at
        durs: list[tuple[float, float | None]] = []  # per step: its drawn time, its backoff
        # waits of it (None: it sends no call)
        refused_at = -1  # the step the ceiling refused a call of
        finish: list[float] = []
        dead: list[bool] = []
        wrong: list[bool] = []
        paid: list[float] = []  # per step
        failed_at: list[bool] = []  # per step: it failed the run (caught or not)
        died: list[bool] = []  # per step: its own retries ran out (caught: the run stops)
        cancel: list[float] = []  # per step: what it bills if cancelled in flight
        starts: list[float] = []
        marks: list[list[tuple[float, float, float]]] = []  # per step, per attempt: when it
        # was sent and answered (from the step's start), and what the step had paid by then
        holding: list[tuple[float, ...]] = []  # under a ceiling, the steps holding more than
        # they bill: each's start, finish, a wave's hold, bill and waves sent
        for sp in params:
            cost = 0.0
            start = max((finish[j] for j in sp.parents), default=0.0)
            blocked = any(dead[j] for j in sp.parents)
            tainted = any(wrong[j] for j in sp.parents)
            hit = not blocked and broke_at == math.inf and (
                sp.hit_rate >= 1.0 or (sp.hit_rate > 0.0 and rnd.random() < sp.hit_rate)
            )
            if blocked or hit or broke_at < math.inf:
                finish.append(start + (0.0 if blocked or not hit else CACHE_HIT_LATENCY_S))
                dead.append(blocked or broke_at < math.inf)
                wrong.append(tainted)
                paid.append(0.0)
                failed_at.append(False)
                died.append(False)
                cancel.append(0.0)
                starts.append(start)
                marks.append([])
                durs.append((finish[-1] - start, None))
                continue
            factor = settings.compounding if tainted else 1.0
            t, is_dead, is_wrong, paused = 0.0, False, False, 0.0
            attempts: list[tuple[float, float, float]] = []
            for a, tr in enumerate(sp.tries):
                sent_at = t
                room = cap - spent - cost + EPS_USD
                held_at = functools.partial(_held_one, holding, start + t, sp.wave_at)
                calls, each = sp.calls, tr.price / sp.calls
                head_price = head_reserve = reserve = each
                if sp.route is not None:  # this attempt's branch: the classifier, then it
                    r = sp.route
                    b = _branch_one(r, rnd)
                    tr = _Try(float(r.p[b]), float(r.price[b]), float(r.latency[b]), 0.0)
                    calls, head_price, head_reserve = int(r.calls[b]), r.head_price, r.head_reserve
                    reserve, each = float(r.reserve[b]), (tr.price - head_price) / (calls - 1)
                elif room < math.inf:
                    reserve = head_reserve = tr.reserve
                fit, bill = calls, tr.price
                if room < math.inf and sp.route is None:  # a wave's calls held at once
                    fit, bill = _fit_waves(room, sp.waves, reserve, each, held_at)
                    room -= held_at(0)  # for a hedge's copy
                elif room < math.inf:
                    room -= held_at(0)
                    fit, bill = _fit(room, calls, reserve, head_price, head_reserve, each)
                late_bill = 0.0  # what an attempt given up bills
                if tr.waves is not None:  # each wave waits for its slowest call
                    first, given_up = _waves_one(tr, tr.waves, rnd)
                    first_in, took, slow = given_up < 0, first, given_up >= 0
                    late_bill = max(given_up, 0.0) * each
                else:
                    first = tr.latency * _jitter_one(tr.jitter, rnd)
                    if sp.route is not None and (sp.route.head_sigma > 0.0 or sp.route.body_sigma.any()):
                        r = sp.route  # the classifier's answer, then the branch's
                        branch_s = float(r.body_s[b]) * _jitter_one(float(r.body_sigma[b]), rnd)
                        first = r.head_s * _jitter_one(r.head_sigma, rnd) + branch_s
                    first_in = first <= tr.timeout  # else given up at its timeout
                    took, slow = (first, False) if first_in else (tr.given_up_s, True)
                if first > tr.hedge and room >= 2 * tr.reserve * calls:  # a copy races it
                    again = tr.latency * _jitter_one(tr.jitter, rnd)
                    copy_in = again <= tr.timeout
                    if copy_in:
                        took = min(took, tr.hedge + again) if first_in else tr.hedge + again
                        slow = False
                    elif slow:
                        took = tr.given_up_hedged_s
                    if first_in or (copy_in and tr.hedge + again < tr.timeout):
                        cost += tr.reserve * calls  # the loser, cancelled, billed at its hold
                if slow:  # failed, caught, billed for the calls answered by then
                    bill = min(float(bill), late_bill)
                fault = tr.fault > 0 and rnd.random() < tr.fault and not slow
                if fault:  # failed, caught, billed for the calls answered beside it and before
                    bill, took = min(float(bill), tr.fault_usd), tr.fault_s
                if sp.route is not None and sp.route.faulty:  # the classifier's, or the branch's
                    r = sp.route
                    if rnd.random() < r.head_fail:
                        fault, bill, took = True, 0.0, r.head_fail_s
                    elif rnd.random() < float(r.fail[b]):
                        fault, took = True, float(r.fail_s[b])
                        bill = min(float(bill), float(r.fail_usd[b]))
                cost += float(bill)
                t += took * float(fit) / calls
                attempts.append((sent_at, t, cost))
                if fit < calls:  # a call did not fit: the run stops here
                    broke_at = start + t
                    break
                if not (fault or slow):
                    fails = rnd.random() < 1.0 - tr.p * factor
                    if a > 0 and rnd.random() < settings.retry_correlation:
                        fails = True
                    if not fails:
                        break
                    if rnd.random() >= sp.recall:
                        is_wrong = True
                        break
                is_dead = a == len(sp.tries) - 1
                if not is_dead:  # the backoff before the retry
                    limited = fault and rnd.random() < tr.limited
                    wait = SIM_RETRY_AFTER_S if limited else rnd.random() * backoff_ceiling(a + 1)
                    t += wait
                    paused += wait
            if broke_at < math.inf:
                refused_at = len(finish)
            durs.append((t, paused))
            finish.append(start + t)
            dead.append(is_dead or broke_at < math.inf)
            wrong.append(is_wrong or tainted)
            paid.append(cost)
            spent += cost
            if cap < math.inf and sp.wave_hold > 0.0:
                holding.append((start, start + t, sp.wave_hold, cost,
                                float(len(attempts) * len(sp.waves))))
            failed_at.append(is_dead or is_wrong)
            died.append(is_dead)
            cancel.append(sp.cancel_usd)
            starts.append(start)
            marks.append(attempts)
        if slots is not None:  # the steps' times again, their calls waiting for slots
            starts, finish = _schedule_one(params, durs, slots)
            if refused_at >= 0:
                broke_at = finish[refused_at]
        ct = cut or NO_CUT
        k = ct.stop
        if k is not None and ct.alone and dead[k]:  # it failed with nothing after it: no stop
            failed_at[k] = died[k] = False
        # a step failed by its own retries stops new calls, as the ceiling's refusal does:
        # what started before runs to its end, the rest is not sent
        failed = min((f for f, d in zip(finish, died, strict=True) if d), default=math.inf)
        ran = [t0 < failed - 1e-9 for t0 in starts]  # (after a refusal the draw sent none)
        # a step under way sends no retry after it: its last attempt sent is its end
        scale = [(f - t0) / d if d > 0 else 1.0
                 for f, t0, (d, _) in zip(finish, starts, durs, strict=True)]  # fmt: skip
        halted = [False] * len(params)
        for i, ms in enumerate(marks):
            for (_, answered, by), (sent_at, _, _) in itertools.pairwise(ms):
                if starts[i] + sent_at * scale[i] >= failed - 1e-9:
                    halted[i], finish[i], paid[i] = True, starts[i] + answered * scale[i], by
                    break
        at = finish[k] if k is not None and not dead[k] and ran[k] and not halted[k] else math.inf
        end = max((f for f, r in zip(finish, ran, strict=True) if r), default=0.0)
        cut_off = min(end, at) > ct.deadline + 1e-9  # something runs at the deadline
        until = ct.deadline if cut_off else at  # what is in flight then is cancelled
        broke = broke_at < until - 1e-9 and broke_at <= failed
        late = cut_off and not min(failed, broke_at) < until - 1e-9
        counts = [r and f <= until + 1e-9 for f, r in zip(finish, ran, strict=True)]
        ok_n += not late and not broke and not any(
            f and c and not h for f, c, h in zip(failed_at, counts, halted, strict=True)
        )
        cost_sum += math.fsum(c for c, keep in zip(paid, counts, strict=True) if keep)
        for i, (keep, went, t0) in enumerate(zip(counts, ran, starts, strict=True)):
            if went and not keep and t0 < until - 1e-9:  # under way when the run ended
                by, answering = 0.0, False  # what it paid for, and an attempt in flight
                for sent_at, answered, paid_by in marks[i]:
                    if t0 + sent_at * scale[i] < min(until, failed) - 1e-9:
                        back = t0 + answered * scale[i] <= until + 1e-9
                        by, answering = (paid_by, False) if back else (by, True)
                cost_sum += by + (cancel[i] if answering else 0.0)  # cancelled, as it bills
        lat_sum += until if cut_off else max(
            (f for f, keep in zip(finish, counts, strict=True) if keep), default=0.0
        )
    return ok_n / runs, cost_sum / runs, lat_sum / runs


def _schedule_one(
    params: list[_StepParams], durs: list[tuple[float, float | None]], slots: _Slots
) -> tuple[list[float], list[float]]:
    """:meth:`_Pool.schedule` for one trajectory: each step's start and finish, from its
    drawn time and its backoff waits (``durs``; None: it sends no call)."""
    pools: dict[str | None, list[float]] = {m: [0.0] * c for m, c in slots.models.items()}
    pools[None] = [0.0] * slots.concurrency  # when each slot frees: the run's, a model's
    rates = slots.buckets()
    start, finish = [0.0] * len(params), [0.0] * len(params)
    at: dict[int, float] = {}  # a step under way: when its wave may go
    end: dict[int, float] = {}  # and when the calls of its wave sent so far answer
    left: dict[int, int] = {}  # calls of its wave not yet sent
    for i, j in slots.calls:
        sp = params[i]
        took, paused = durs[i]
        if i not in at:
            if j or i in left:
                continue
            ready = max((finish[k] for k in sp.parents), default=0.0)
            start[i], finish[i] = ready, ready + took
            if sp.held is None or paused is None:
                left[i] = 0
                continue
            at[i], end[i], left[i] = ready, ready, sp.held.waves[0]
        held = sp.held
        assert held is not None and paused is not None
        part, ratio = sp.parts[j]
        d = (took - paused) * part
        ps = [pools[k] for k in dict.fromkeys((None, held.model)) if k in pools]
        taken = [_fitting_one(p, at[i]) for p in ps]
        go = max(at[i], *(p[k] for p, k in zip(ps, taken, strict=True)))
        if held.model in rates:  # then its rate limits
            go = through(rates[held.model], go, held.tokens)
        done = go + (d if left[i] == held.waves[j] else d * ratio)  # its first: the slowest
        for p, k in zip(ps, taken, strict=True):
            p[k] = done
        if j == 0 and left[i] == held.waves[0]:
            start[i] = go
        end[i] = max(end[i], done)
        left[i] -= 1
        if left[i] == 0:
            at[i] = end[i]
            if j == len(held.waves) - 1:
                finish[i] = at.pop(i) + paused
            else:
                left[i] = held.waves[j + 1]
    return start, finish


def _branch_one(r: _Route, rnd: random.Random) -> int:
    """The branch one attempt draws, by the planned shares."""
    u, b = rnd.random(), 0
    while b < len(r.shares) - 1 and u >= r.shares[: b + 1].sum():
        b += 1
    return b


def _waves_one(t: _Try, waves: tuple[int, ...], rnd: random.Random) -> tuple[float, float]:
    """One attempt's seconds, drawn call by call (the law :func:`_wave_draws` draws
    from), and the calls it bills if a wave is given up (-1 if none is)."""
    each, took = t.latency / len(waves), 0.0
    for w, (bills, _) in zip(waves, t.late_calls, strict=True):
        if t.answers is None:
            slowest = each * max(_jitter_one(t.jitter, rnd) for _ in range(w))
        else:  # each call races its own copy
            slowest = max(_race_one(t, rnd) for _ in range(w))
        if slowest > t.given_up_s:
            return took + t.given_up_s, bills
        took += slowest
    return took, -1.0


def _race_one(t: _Try, rnd: random.Random) -> float:
    """A hedged call's seconds, drawn copy by copy: the first answer within its copy's
    timeout, or inf when both copies outlast theirs."""
    after, timeout = t.race
    each = t.latency / len(t.waves or (1,))
    first = each * _jitter_one(t.jitter, rnd)
    won = first if first <= timeout else math.inf
    if first > after:
        again = each * _jitter_one(t.jitter, rnd)
        if again <= timeout:
            won = min(won, after + again)
    return won


def _jitter_one(sigma: float, rnd: random.Random) -> float:
    return 1.0 if sigma == 0 else math.exp(sigma * rnd.gauss(0.0, 1.0) - sigma * sigma / 2)
