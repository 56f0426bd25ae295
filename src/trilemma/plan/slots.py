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
where the slots hold up the critical path itself. Requests and tokens per minute are left
out: their buckets start a minute's worth full, so they bind only runs that send more than
that.

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
from trilemma.spec import Step, Workflow

__all__ = [
    "SLOTS_BIND",
    "Held",
    "dispatch_order",
    "holds",
    "may_bind",
    "remaining_path",
    "scheduled",
]

SLOTS_BIND = 1.01
"""The slots bind when they lengthen the critical path past this factor (rounding aside)."""

Wave = tuple[str, int, float]
"""A wave of a step's calls: their model, how many, and the seconds each takes."""


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
    ``concurrency`` or a model's ``max_concurrency``. If not, :func:`scheduled` is the
    critical path, and is not replayed (every run estimates its spec first)."""
    if sum(st.calls for st in wf.steps) <= wf.concurrency and not any(
        m.max_concurrency for m in wf.models.values()
    ):
        return False  # every call fits at once
    graph = wf.edges()
    finish = dag.finish_times(graph, latency, dag.topo_order(graph))
    events: list[tuple[float, int, str]] = []  # (when, calls starting or ending, model)
    for st in wf.steps:
        t = finish[st.id] - latency[st.id]
        for model, width, seconds in waves_of(wf, st):
            events += [(t, width, model), (t + seconds, -width, model)]
            t += seconds
    events.sort(key=lambda e: (e[0], e[1]))  # at one time, the calls ending go first
    limit = {n: m.max_concurrency or math.inf for n, m in wf.models.items()}
    flying = dict.fromkeys(wf.models, 0)
    total = 0
    for _, calls, model in events:
        total += calls
        flying[model] += calls
        if total > wf.concurrency or flying[model] > limit[model]:
            return True
    return False


def waves_of(wf: Workflow, step: Step) -> list[Wave]:
    """The calls of ``step``'s first attempt, wave by wave (none for a certain cache hit)."""
    rule = step.cache_rule
    if rule is not None and rule.hit_rate >= 1.0:
        return []
    if step.route is None:
        seconds = wf.models[step.model].latency_s
        return [(step.model, w, seconds) for w in step.waves]
    branches = [step.branch_step(label) for label in step.route]
    slowest = max(branches, key=lambda b: wf.models[b.model].latency_s * b.sequential_calls)
    head: Wave = (step.model, 1, wf.models[step.model].latency_s)
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
    waves (how many calls each sends at once), and the model whose own slots they hold too
    (None: the run's only)."""

    waves: tuple[int, ...]
    model: str | None


def holds(wf: Workflow, latency: Mapping[str, float]) -> dict[str, Held] | None:
    """Per step, how its calls hold the slots; None when no call of the critical path's
    schedule waits for one (:func:`may_bind`), where the Monte Carlo leaves them out (a
    trajectory's jitter may still make a call wait there: rarely, and briefly)."""
    if not may_bind(wf, latency):
        return None
    out: dict[str, Held] = {}
    for st in wf.steps:
        model = st.model if st.route is None and not st.escalate else None
        if model is not None and not wf.models[model].max_concurrency:
            model = None
        out[st.id] = Held(tuple(w for _, w, _ in waves_of(wf, st)), model)
    return out


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
        waves = {i: [(m, w, t * stretch[i]) for m, w, t in ws] for i, ws in waves.items()}
    waiting = {s.id: len(s.after) for s in wf.steps}
    free = wf.concurrency
    model_free = {name: m.max_concurrency or math.inf for name, m in wf.models.items()}
    order = itertools.count()
    queued: list[tuple[float, int, str, str, float]] = []  # for a global slot
    held: dict[str, list[tuple[float, int, str, float]]] = {n: [] for n in wf.models}
    events: list[tuple[float, int, str, str]] = []  # (time, order, step, model or "")
    left: dict[str, int] = {}  # calls of the step's current wave still running
    at: dict[str, int] = {}  # the step's current wave

    def start_wave(sid: str, now: float) -> None:
        j = at[sid]
        if j == len(waves[sid]):  # its last wave answered
            finish(sid, now)
            return
        model, width, seconds = waves[sid][j]
        left[sid] = width
        for _ in range(width):
            heapq.heappush(queued, (-priority[sid], next(order), sid, model, seconds))

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
            prio, _, sid, model, seconds = heapq.heappop(queued)
            sent.append((sid, at[sid]))
            free -= 1
            if model_free[model] > 0:
                model_free[model] -= 1
                heapq.heappush(events, (now + seconds, next(order), sid, model))
            else:  # it waits for its model holding its global slot, as the executor's calls do
                heapq.heappush(held[model], (prio, next(order), sid, seconds))

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
                _, _, other, seconds = heapq.heappop(held[model])
                heapq.heappush(events, (now + seconds, next(order), other, model))
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
