"""The critical path under a run's concurrency limits: each call holds a slot while it runs.

The seed's latency is the longest path through the DAG, as if every ready call could go
at once. The executor sends each call through one pool of ``concurrency`` slots (default
16) and its model's ``max_concurrency`` (a call holds its global slot while it waits for
its model's), the calls of the steps with the longest remaining path first; a slot given
back goes to a call already waiting, before the steps that the answer frees send theirs
(their tasks start on a later turn of the loop). When more
calls are ready than slots, the run takes longer than the critical path: forty parallel
one-second steps under the default 16 slots take 3 s, not 1 s.

:func:`scheduled` replays that schedule on the critical path's own figures (each step's
first attempt, every call at its model's ``latency_s``, a step's waves one after another,
a routed step's classifier then its slowest branch, a certain cache hit its lookup and no
slot). Without limits that bind, it is the critical path. Replayed again with each step's
calls held as long as its attempts are sent (on average, or all of them), it bounds the
expected and worst latencies from below: a retry's backoff holds no slot and is left out,
and so is the jitter that makes a wave wait for its slowest call (the longest path of the
expected figures counts those, and the estimate takes the larger); it is replayed only
where the slots hold up the critical path itself.

A model's ``rpm`` and ``tpm`` are buckets, as the executor keeps them (:class:`Bucket`): a
minute's worth full when the run starts, refilled evenly, served first come first served; a
call that has its slots takes one request and its tokens (its model's ``prompt_tokens`` and
the ``max_tokens`` it may generate), waiting, slots held, until they are there. They bind
only runs that send more than a minute's worth; the replay counts each call's first
attempt only, so a retried step's extra requests are left out there too.

The Monte Carlo (:mod:`trilemma.plan.simulate`) takes the order in which the replay gives
its calls slots (:func:`dispatch_order`) and how each step holds them (:func:`holds`), and
lets each trajectory's calls take the slots in that order at their drawn times.
"""

from __future__ import annotations

import heapq
import itertools
import math
from collections.abc import Mapping
from dataclasses import dataclass

from trilemma import dag
from trilemma.spec import ModelProfile, Step, Workflow

__all__ = [
    "SLOTS_BIND",
    "Bucket",
    "Held",
    "dispatch_order",
    "held_by",
    "holds",
    "may_bind",
    "over_rate",
    "rate_limits",
    "remaining_path",
    "scheduled",
]

SLOTS_BIND = 1.01
"""The slots bind when they lengthen the critical path past this factor (rounding aside)."""

Wave = tuple[str, int, float, float]
"""A wave of a step's calls: their model, how many, the seconds each takes, and the tokens
each holds of its model's ``tpm`` (its prompt and the most it may generate)."""


class Bucket:
    """A requests- or tokens-per-minute limit as the executor's
    :class:`~trilemma.run.limits.RateLimiter` keeps it, on the replay's clock: a minute's
    worth full at 0, refilled at ``per_minute / minute_s`` a second, first come first served
    (``minute_s``: the profile's, 60 but in a time-scaled copy)."""

    __slots__ = ("capacity", "rate", "tokens", "updated")

    def __init__(self, per_minute: float, minute_s: float = 60.0) -> None:
        self.capacity = float(per_minute)
        self.rate = per_minute / minute_s
        self.tokens = self.capacity
        self.updated = 0.0  # when ``tokens`` was counted (later than now: a caller waits)

    def take(self, now: float, amount: float = 1.0) -> float:
        """Take ``amount`` (at most a minute's worth) for a caller that comes at ``now``:
        when it has them, after the callers before it."""
        amount = min(amount, self.capacity)
        at = max(now, self.updated)
        have = min(self.capacity, self.tokens + (at - self.updated) * self.rate)
        if have < amount:
            at += (amount - have) / self.rate
            have = amount
        self.tokens, self.updated = have - amount, at
        return at


def rate_limits(m: ModelProfile) -> tuple[tuple[int, bool], ...]:
    """A model's rate limits in the order the executor takes them (``rpm``, then ``tpm``),
    each as (units a minute, whether it counts tokens)."""
    return tuple((n, tpm) for n, tpm in ((m.rpm, False), (m.tpm, True)) if n)


def buckets(wf: Workflow) -> dict[str, list[tuple[Bucket, bool]]]:
    """Each rate-limited model's fresh buckets (:func:`rate_limits`), each with whether it
    counts tokens."""
    return {name: [(Bucket(n, m.minute_s), tpm) for n, tpm in rate_limits(m)]
            for name, m in wf.models.items() if m.rpm or m.tpm}  # fmt: skip


def through(pairs: list[tuple[Bucket, bool]], now: float, tokens: float) -> float:
    """When a call that comes at ``now`` with ``tokens`` has passed its model's buckets."""
    for bucket, tpm in pairs:
        now = bucket.take(now, tokens if tpm else 1.0)
    return now


def remaining_path(wf: Workflow, latency: Mapping[str, float]) -> dict[str, float]:
    """Each step's ``latency`` plus the longest path below it: the executor's priority."""
    graph = wf.edges()
    below: dict[str, float] = dict.fromkeys(graph, 0.0)  # the longest path below each step
    out: dict[str, float] = {}
    for sid in reversed(dag.topo_order(graph)):
        total = out[sid] = latency[sid] + below[sid]
        for d in graph[sid]:
            if total > below[d]:
                below[d] = total
    return out


def may_bind(wf: Workflow, latency: Mapping[str, float]) -> bool:
    """Whether the slots hold up a call of the critical path's schedule (each step at its
    ``latency``): whether, without them, more calls would ever be in flight at once than
    ``concurrency`` or a model's ``max_concurrency``, or a call would wait for its model's
    ``rpm`` or ``tpm``. If not, :func:`scheduled` is the critical path, and is not replayed
    (every run estimates its spec first)."""
    rated = over_rate(wf) if any(m.rpm or m.tpm for m in wf.models.values()) else {}
    if (sum(st.calls for st in wf.steps) <= wf.concurrency and not rated
            and not any(m.max_concurrency for m in wf.models.values())):  # fmt: skip
        return False  # every call fits at once
    graph = wf.edges()
    finish = dag.finish_times(graph, latency, dag.topo_order(graph))
    events: list[tuple[float, int, str, float]] = []  # (when, calls starting or ending, ...)
    for st in wf.steps:
        t = finish[st.id] - latency[st.id]
        for model, width, seconds, tokens in waves_of(wf, st):
            events += [(t, width, model, tokens), (t + seconds, -width, model, tokens)]
            t += seconds
    events.sort(key=lambda e: (e[0], e[1]))  # at one time, the calls ending go first
    limit = {n: m.max_concurrency or math.inf for n, m in wf.models.items()}
    flying = dict.fromkeys(wf.models, 0)
    total = 0
    pairs = buckets(wf)
    for when, calls, model, tokens in events:
        total += calls
        flying[model] += calls
        if total > wf.concurrency or flying[model] > limit[model]:
            return True
        if model in rated:
            for _ in range(calls):
                if through(pairs[model], when, tokens) > when + 1e-9:
                    return True
    return False


def over_rate(wf: Workflow) -> dict[str, str]:
    """The models whose calls (each step's first attempt) are more than a minute's worth
    of their ``rpm`` or ``tpm``, which a full bucket lets go at once, each with what it
    is over (say ``"rpm 600 (620 calls)"``): only their buckets may hold a call up."""
    demand: dict[str, list[float]] = {n: [0.0, 0.0] for n in wf.models}  # requests, tokens
    for st in wf.steps:
        for model, width, _, tokens in waves_of(wf, st):
            demand[model][0] += width
            demand[model][1] += width * tokens
    out: dict[str, str] = {}
    for name, m in wf.models.items():
        over = [f"{kind} {limit} ({n:.0f} {unit})" for kind, limit, n, unit in (
            ("rpm", m.rpm, demand[name][0], "calls"), ("tpm", m.tpm, demand[name][1], "tokens"),
        ) if limit and n > limit]  # fmt: skip
        if over:
            out[name] = " and ".join(over)
    return out


def waves_of(wf: Workflow, step: Step) -> list[Wave]:
    """The calls of ``step``'s first attempt, wave by wave (none for a certain cache hit)."""
    rule = step.cache_rule
    if rule is not None and rule.hit_rate >= 1.0:
        return []
    m = wf.models[step.model]
    tokens = float(m.prompt_tokens + (step.max_tokens or m.max_tokens))
    if step.route is None:
        return [(step.model, w, m.latency_s, tokens) for w in step.waves]
    branches = [step.branch_step(label) for label in step.route]
    slowest = max(branches, key=lambda b: wf.models[b.model].latency_s * b.sequential_calls)
    head: Wave = (step.model, 1, m.latency_s, tokens)
    return [head, *waves_of(wf, slowest)]


def scheduled(
    wf: Workflow, latency: Mapping[str, float], stretch: Mapping[str, float] | None = None
) -> float:
    """Seconds the critical path takes when each call holds one of the run's slots, given
    each step's ``latency`` on the critical path (its priority, and a cache hit's time);
    ``stretch``: a factor on each step's call times (the attempts it sends, to replay the
    expected and worst figures)."""
    return _replay(wf, latency, stretch)[0]


def dispatch_order(wf: Workflow, latency: Mapping[str, float]) -> list[tuple[str, int]]:
    """Each call as (step, wave) in the order the replay gives it a slot (a cache hit, which
    sends none, once, when it is ready): a step's waves in turn, and a step's first call
    after its dependencies' last."""
    return _replay(wf, latency)[1]


@dataclass(frozen=True, slots=True)
class Held:
    """How a step's calls hold the run's slots, for the Monte Carlo: its first attempt's
    waves (how many calls each sends at once), the model whose own limits (slots,
    ``rpm``, ``tpm``) hold them too (None: the run's slots only), and the tokens each call
    takes of its ``tpm``."""

    waves: tuple[int, ...]
    model: str | None
    tokens: float = 0.0


def holds(wf: Workflow, latency: Mapping[str, float]) -> dict[str, Held] | None:
    """Per step, how its calls hold the slots; None when no call of the critical path's
    schedule waits for one (:func:`may_bind`), where the Monte Carlo leaves them out (a
    trajectory's jitter may still make a call wait there: rarely, and briefly)."""
    if not may_bind(wf, latency):
        return None
    return {st.id: held_by(wf, st) for st in wf.steps}


def held_by(wf: Workflow, st: Step) -> Held:
    """How ``st``'s calls hold the slots (:class:`Held`): its model's own limits hold them
    where it has some and the step is neither routed nor escalated."""
    model = st.model if st.route is None and not st.escalate else None
    m = wf.models[st.model]
    if model is not None and not m.limited:
        model = None
    waves = waves_of(wf, st)
    return Held(tuple(w for _, w, _, _ in waves), model, waves[0][3] if waves else 0.0)


def _replay(
    wf: Workflow, latency: Mapping[str, float], stretch: Mapping[str, float] | None = None
) -> tuple[float, list[tuple[str, int]]]:
    """:func:`scheduled`'s replay: when it ends, and each call (step, wave) in the order it
    is given a slot."""
    priority = remaining_path(wf, latency)
    sent: list[tuple[str, int]] = []
    children: dict[str, list[str]] = {s.id: [] for s in wf.steps}
    for s in wf.steps:
        for d in s.after:
            children[d].append(s.id)
    waves = {s.id: waves_of(wf, s) for s in wf.steps}
    if stretch is not None:
        waves = {i: [(m, w, t * stretch[i], k) for m, w, t, k in ws] for i, ws in waves.items()}
    waiting = {s.id: len(s.after) for s in wf.steps}
    free = wf.concurrency
    model_free = {name: m.max_concurrency or math.inf for name, m in wf.models.items()}
    rates = buckets(wf)
    order = itertools.count()
    queued: list[tuple[float, int, str, str, float, float]] = []  # for a global slot
    held: dict[str, list[tuple[float, int, str, float, float]]] = {n: [] for n in wf.models}
    events: list[tuple[float, int, str, str]] = []  # (time, order, step, model or "")

    def send(sid: str, model: str, seconds: float, tokens: float, now: float) -> None:
        """A call that has its slots: it answers ``seconds`` after its buckets let it go."""
        go = through(rates[model], now, tokens) if model in rates else now
        heapq.heappush(events, (go + seconds, next(order), sid, model))

    left: dict[str, int] = {}  # calls of the step's current wave still running
    at: dict[str, int] = {}  # the step's current wave

    def start_wave(sid: str, now: float) -> None:
        j = at[sid]
        if j == len(waves[sid]):  # its last wave answered
            finish(sid, now)
            return
        model, width, seconds, tokens = waves[sid][j]
        left[sid] = width
        for _ in range(width):
            heapq.heappush(queued, (-priority[sid], next(order), sid, model, seconds, tokens))

    def finish(sid: str, now: float) -> None:
        for child in children[sid]:
            waiting[child] -= 1
            if waiting[child] == 0:
                begin(child, now)

    def begin(sid: str, now: float) -> None:
        at[sid] = 0
        if waves[sid]:
            start_wave(sid, now)
        else:  # a cache hit: its lookup, no slot
            sent.append((sid, 0))
            heapq.heappush(events, (now + latency[sid], next(order), sid, ""))

    def dispatch(now: float) -> None:
        nonlocal free
        while free > 0 and queued:
            prio, _, sid, model, seconds, tokens = heapq.heappop(queued)
            sent.append((sid, at[sid]))
            free -= 1
            if model_free[model] > 0:
                model_free[model] -= 1
                send(sid, model, seconds, tokens, now)
            else:  # it waits for its model holding its global slot, as the executor's calls do
                heapq.heappush(held[model], (prio, next(order), sid, seconds, tokens))

    for s in wf.steps:
        if not s.after:
            begin(s.id, 0.0)
    end = 0.0
    dispatch(0.0)
    while events:
        now = end = events[0][0]
        settled: dict[str, None] = {}  # the steps whose calls answer now, once each
        while events and events[0][0] == now:  # every call answering now gives its slots back
            _, _, sid, model = heapq.heappop(events)
            settled[sid] = None
            if not model:  # a cache hit's lookup
                continue
            free += 1
            left[sid] -= 1
            if held[model]:  # the model's slot passes to the best call waiting for it
                _, _, other, seconds, tokens = heapq.heappop(held[model])
                send(other, model, seconds, tokens, now)
            else:
                model_free[model] += 1
        dispatch(now)  # to the calls waiting already, as the executor's release hands them on
        for sid in settled:  # then the steps go on: their next wave, or the steps they free
            if sid not in left:
                finish(sid, now)
            elif left[sid] == 0:
                at[sid] += 1
                start_wave(sid, now)
        dispatch(now)
    return end, sent
