"""A batch's runs replayed together, where a model's limits that they share hold them up.

A model's ``max_concurrency``, ``rpm`` and ``tpm`` are its endpoint's, so every run of a
batch shares them. The least time such a limit lets the runs take
(:class:`~trilemma.run.batch.ModelLimit`) says how long a batch it binds takes; it cannot
say what the runs wait where a limit holds them up only now and then, nor that a run that
fails sends none of the calls it still had waiting. Here the runs are replayed together:
each line's run is one of the Monte Carlo's drawn step by step
(:func:`~trilemma.plan.simulate.step_draws`), ``parallel`` go at a time, the next line
starting as one ends, and each call goes as the executor sends it: it takes one of its run's
``concurrency`` slots, then, holding that, one of its model's (the calls waiting for a
model's slot are served by their step's longest remaining path, whatever their run, as
the executor's limiter serves them), then its model's ``rpm`` and ``tpm`` buckets. An
attempt's calls hold their slots for its drawn time, a wave's first call for the wave's
share of it and the others for what a call takes against the wave, as within one run
(:class:`~trilemma.plan.simulate._Pool`); the backoff before a retry holds none. A run whose step's retries run out sends nothing more: its calls still
waiting are never sent, a retry waiting out its backoff is not made, and the run ends when
the calls it has in flight answer.
"""

from __future__ import annotations

import heapq
import itertools
import math
from dataclasses import dataclass, replace

import numpy as np

from trilemma.plan.estimate import Estimate
from trilemma.plan.hedge import call_price
from trilemma.plan.simulate import StepDraws, step_draws, wave_parts
from trilemma.plan.slots import Bucket, buckets, held_by, remaining_path, through
from trilemma.spec import ModelProfile, Workflow

__all__ = ["REPLAY_CALLS", "Covered", "Replayed", "replay_batch", "replay_ceiling"]

REPLAY_CALLS = 120_000
"""The most calls the replays of one batch send in all (each a few heap operations in
Python: about half a second on two cores); a batch that would send more is not replayed."""
REPLAY_REPS, REPLAY_REPS_MIN = 64, 4
"""Replays of a batch: as many as :data:`REPLAY_CALLS` allows, within these."""
_RUNS_DRAWN = 2048
_SEED = 20261206

_ANSWER, _TIMER, _RETRY = 0, 1, 2
_STOPPED, _FAILED, _OK = -1, 0, 1
"""How a replayed run ended: stopped by a refused reservation, failed, ok."""


@dataclass(frozen=True, slots=True)
class Replayed:
    """A batch replayed: when each line's run ended, replay by replay (rows, columns
    sorted), whether it ended ok (``ok``, in the same places), and the batch's bills on
    average (the calls a failed run never sent bill nothing)."""

    ends: np.ndarray
    cost_usd: float
    ok: np.ndarray


def replay_batch(wf: Workflow, p: Estimate, lines: int, parallel: int) -> Replayed | None:
    """``lines`` runs of ``wf`` (estimated as ``p``), ``parallel`` at a time, replayed
    together (see the module). None where no step's calls are held by their model's limits
    (:func:`~trilemma.plan.slots.held_by`), the replays could send more than
    :data:`REPLAY_CALLS` calls (a run's expected calls when it goes to its end), or the spec
    stops early (``stop_when``, which the replay does not follow)."""
    if lines <= 0 or wf.stop_when is not None:
        return None
    if all(held_by(wf, s).model is None for s in wf.steps):  # decided before any draw
        return None
    replays = _replays(wf, p, lines, parallel, None)
    if replays is None:
        return None
    got = replays[1]
    ends = np.array([e for e, _, _ in got])
    order = ends.argsort(axis=1, kind="stable")
    ok = np.take_along_axis(np.array([o for _, _, o in got]) == _OK, order, axis=1)
    return Replayed(np.take_along_axis(ends, order, axis=1),
                    float(np.mean([c for _, c, _ in got])), ok.astype(float))  # fmt: skip


@dataclass(frozen=True, slots=True)
class Covered:
    """A batch replayed under a spend ceiling: per replay, when each run that started ended
    (``ends``) and how (``outcome``: stopped by a refused reservation, failed or ok, in the
    same places); and the share of the drawn runs that end ok without it, to weigh the ok
    ones against the estimate's reliability."""

    ends: tuple[np.ndarray, ...]
    outcome: tuple[np.ndarray, ...]
    drawn_ok: float

    @property
    def ended(self) -> np.ndarray:
        """Per replay, how many runs went to their end (ok or failed: neither stopped by a
        refused reservation nor left unstarted)."""
        return np.array([float((o >= _FAILED).sum()) for o in self.outcome])

    @property
    def ok(self) -> np.ndarray:
        """Per replay, how many runs ended ok."""
        return np.array([float((o == _OK).sum()) for o in self.outcome])

    @property
    def took(self) -> np.ndarray:
        """Per replay, when the batch ended: its last run's end (the ceiling stops the
        batch's starts, and the runs in flight end as their calls answer or are refused)."""
        return np.array([float(e.max()) if e.size else 0.0 for e in self.ends])

    def ok_by(self, deadline: float) -> np.ndarray:
        """Per replay, how many runs ended ok by ``deadline`` (from the batch's start)."""
        return np.array([float(((o == _OK) & (e <= deadline * (1 + 1e-9))).sum())
                         for e, o in zip(self.ends, self.outcome, strict=True)])  # fmt: skip


def replay_ceiling(
    wf: Workflow, p: Estimate, lines: int, parallel: int, ceiling: float
) -> Covered | None:
    """``lines`` runs of ``wf`` replayed together (see the module) under one spend ceiling
    of ``ceiling`` dollars, as a batch's :class:`~trilemma.run.budget.SpendGuard` holds it:
    each call reserves what it may cost at most before it is sent (its model's
    :meth:`~trilemma.spec.model.ModelProfile.reserved_per_call`; a routed or escalated
    step's, the most of the models it may call) and holds it until it answers; a call
    whose reservation would cross the ceiling is not sent, its run stops (what it has in
    flight answers), and no further run starts. Whatever the models' limits. None where
    the replays could send more than :data:`REPLAY_CALLS` calls or the spec stops early."""
    if lines <= 0 or wf.stop_when is not None:
        return None
    replays = _replays(wf, p, lines, parallel, ceiling)
    if replays is None:
        return None
    d, got = replays
    return Covered(tuple(np.array(e) for e, _, _ in got), tuple(np.array(o) for _, _, o in got),
                   float((~d.dead.any(axis=0)).mean()))  # fmt: skip


def _of(shape: _Shape | None) -> _Shape:
    """An attempt's shape, set as it starts."""
    assert shape is not None
    return shape


def _replays(
    wf: Workflow, p: Estimate, lines: int, parallel: int, ceiling: float | None
) -> tuple[StepDraws, list[tuple[list[float], float, list[int]]]] | None:
    """The runs drawn, and the replays of a batch of them (:func:`_one`), as many as
    :data:`REPLAY_CALLS` allows within :data:`REPLAY_REPS`; None where fewer than
    :data:`REPLAY_REPS_MIN` fit."""
    reps = int(REPLAY_CALLS // max(1.0, lines * max(p.calls_expected, 1.0)))
    if reps < REPLAY_REPS_MIN:
        return None
    d = step_draws(wf, _RUNS_DRAWN, _SEED)
    priority = remaining_path(wf, {r.id: r.latency_s for r in p.per_step})  # the executor's
    prio = [-priority[sid] for sid in d.order]  # the longest remaining path goes first
    children: list[list[int]] = [[] for _ in d.order]
    for i, ps in enumerate(d.parents):
        for parent in ps:
            children[parent].append(i)
    shapes = _shapes(wf, d)
    rng = np.random.default_rng(_SEED)
    return d, [_one(wf, d, prio, children, lines, parallel, rng, shapes, ceiling)
               for _ in range(min(REPLAY_REPS, reps))]  # fmt: skip


@dataclass(frozen=True, slots=True)
class _Shape:
    """How one attempt of a step sends its calls: wave by wave, how many at once
    (``waves``), each wave's share of the attempt's time and what one of its calls takes
    against it (``parts``), what each of its calls holds of a ceiling (``reserve``) and
    its share of the attempt's bill (``bills``: by their prices)."""

    waves: tuple[int, ...]
    parts: tuple[tuple[float, float], ...]
    reserve: tuple[float, ...]
    bills: tuple[float, ...]

    @classmethod
    def of(cls, calls: list[tuple[ModelProfile, int, int | None]]) -> _Shape:
        """An attempt's waves: each its model, its calls at once and their ``max_tokens``."""
        prices = [call_price(m, tokens) for m, _, tokens in calls]
        total = math.fsum(p * w for p, (_, w, _) in zip(prices, calls, strict=True))
        every = sum(w for _, w, _ in calls)
        return cls(tuple(w for _, w, _ in calls), wave_parts([(m, w) for m, w, _ in calls]),
                   tuple(m.reserved_per_call(tokens) for m, _, tokens in calls),
                   tuple(p / total if total > 0 else 1.0 / every for p in prices))  # fmt: skip


def _shapes(wf: Workflow, d: StepDraws) -> list[tuple[bool, list[_Shape]]]:
    """Per step (in ``d.order``), whether its attempts take their shape by the branch the
    run drew (a routed step: the classifier's call, then the branch's waves, each on its
    own model), and the shapes: per branch, else per attempt (an escalated step's rungs,
    each reserving at its own model's price; the last holds for the attempts after it)."""
    steps = {st.id: st for st in wf.steps}
    out: list[tuple[bool, list[_Shape]]] = []
    for i, sid in enumerate(d.order):
        st = steps[sid]
        if st.route is not None and d.held[i].waves:
            head = (wf.models[st.model], 1, st.max_tokens)
            branches = [st.branch_step(label) for label in wf.route_shares(st)]
            out.append((True, [_Shape.of([head, *((wf.models[b.model], w, b.max_tokens) for w in b.waves)])
                               for b in branches]))  # fmt: skip
            continue
        waves = d.held[i].waves
        out.append((False, [replace(_Shape.of([(wf.models[m], w, st.max_tokens) for w in waves]),
                                    parts=d.parts[i]) for m in wf.ladder(st)]))  # fmt: skip
    return out


def _one(
    wf: Workflow, d: StepDraws, prio: list[float], children: list[list[int]], lines: int,
    parallel: int, rng: np.random.Generator, shapes: list[tuple[bool, list[_Shape]]],
    ceiling: float | None = None,
) -> tuple[list[float], float, list[int]]:  # fmt: skip
    """One replay: when each line's run ends, what the calls sent bill, and how each run
    ended (:data:`_OK`, :data:`_FAILED`, :data:`_STOPPED` by the ``ceiling``), in the order
    they ended; lines never started are in neither (``prio``: each
    step's place among the calls waiting for a slot, lowest first; ``children``: the steps
    that wait for each; ``shapes``: how each step's attempts send their calls,
    :func:`_shapes`)."""
    n_steps = len(d.order)

    def shape_at(i: int, a: int, c: int) -> _Shape:
        """Attempt ``a`` of step ``i`` in drawn run ``c``."""
        by_branch, kinds = shapes[i]
        if by_branch:
            return kinds[int(d.branches[i][a][c])]
        return kinds[min(a, len(kinds) - 1)]

    runs_of = rng.integers(0, d.seconds.shape[1], size=lines)  # each line's drawn run
    model_free = {m: (p.max_concurrency or 1 << 30) for m, p in wf.models.items()}
    waiting_for: dict[str, list[tuple[float, int, int, int]]] = {m: [] for m in wf.models}
    rates: dict[str, list[tuple[Bucket, bool]]] = buckets(wf)
    seq = itertools.count()
    events: list[tuple[float, int, int, int, int]] = []  # (time, order, kind, run, step)

    k = [0] * lines  # the run's drawn column
    free = [0] * lines  # the run's own slots free
    queue: list[list[tuple[float, int, int]]] = [[] for _ in range(lines)]
    failed = [False] * lines
    active = [0] * lines  # steps begun, not done
    done_n = [0] * lines
    end = [0.0] * lines
    wait = [[0] * n_steps for _ in range(lines)]
    spent = 0.0  # the bills of the calls sent
    tries_of: list[list[list[tuple[float, float, float]]]] = [  # each attempt's start, end
        # and what it bills (each call its share, :attr:`_Shape.bills`)
        [[] for _ in range(n_steps)] for _ in range(lines)
    ]
    att = [[0] * n_steps for _ in range(lines)]  # the attempt under way
    wave = [[0] * n_steps for _ in range(lines)]
    shape: list[list[_Shape | None]] = [[None] * n_steps for _ in range(lines)]  # the attempt's
    left = [[0] * n_steps for _ in range(lines)]  # calls of the wave not yet answered
    sent = [[0] * n_steps for _ in range(lines)]  # calls of the wave given their slots
    flying = [[0] * n_steps for _ in range(lines)]
    done = [[False] * n_steps for _ in range(lines)]
    ended: list[float] = []
    outcome: list[int] = []
    next_line = 0
    stopped = [False] * lines  # a reservation refused: nothing more sent
    closed = False  # no further run starts
    billed = held = 0.0  # the bills of the calls answered; what the calls in flight hold

    def start_run(r: int, now: float) -> None:
        k[r], free[r] = int(runs_of[r]), wf.concurrency
        wait[r] = [len(ps) for ps in d.parents]
        for i in range(n_steps):
            if not d.parents[i]:
                begin(r, i, now)
        dispatch(r, now)

    def begin(r: int, i: int, now: float) -> None:
        active[r] += 1
        c = k[r]
        if not d.sends[i, c] or not d.held[i].waves:  # a cache hit, or never reached
            heapq.heappush(events, (now + float(d.seconds[i, c]), next(seq), _TIMER, r, i))
            return
        tries = d.attempts[i]
        if tries:  # each attempt made: when it went and answered, from the step's start,
            # and what it bills
            got, before = [], 0.0
            for made, t0, t1, by in tries:
                if made[c]:
                    got.append((float(t0[c]), float(t1[c]), float(by[c]) - before))
                    before = float(by[c])
            tries_of[r][i] = got
        else:
            tries_of[r][i] = [(0.0, float(d.seconds[i, c]), float(d.paid[i, c]))]
        att[r][i] = 0
        start_attempt(r, i)

    def start_attempt(r: int, i: int) -> None:
        wave[r][i] = 0
        shape[r][i] = shape_at(i, att[r][i], k[r])
        start_wave(r, i)

    def start_wave(r: int, i: int) -> None:
        w = _of(shape[r][i]).waves[wave[r][i]]
        left[r][i], sent[r][i] = w, 0
        for _ in range(w):
            heapq.heappush(queue[r], (prio[i], next(seq), i))

    def dispatch(r: int, now: float) -> None:
        q = queue[r]
        while free[r] > 0 and q and not failed[r]:
            _, _, i = heapq.heappop(q)
            free[r] -= 1
            m = d.held[i].model
            if m is None or model_free[m] > 0:
                if m is not None:
                    model_free[m] -= 1
                send(r, i, now)
            else:  # it waits for its model, holding its run's slot
                heapq.heappush(waiting_for[m], (prio[i], next(seq), r, i))

    def send(r: int, i: int, now: float) -> None:
        h = d.held[i]
        nonlocal spent, held, closed
        now_shape = _of(shape[r][i])
        if ceiling is not None:
            holds = now_shape.reserve[wave[r][i]]
            if billed + held + holds > ceiling * (1 + 1e-9) + 1e-12:  # refused
                stopped[r] = closed = True
                free[r] += 1
                if h.model is not None:
                    release(h.model, now)
                fail(r, now)
                if active[r] == 0:
                    run_ended(r, now)
                return
            held += holds
        go = through(rates[h.model], now, h.tokens) if h.model in rates else now
        part, each = now_shape.parts[wave[r][i]]
        t0, t1, bill = tries_of[r][i][att[r][i]]
        spent += bill * now_shape.bills[wave[r][i]]
        took = (t1 - t0) * part
        if sent[r][i]:  # a wave's first call is its slowest
            took *= each
        sent[r][i] += 1
        flying[r][i] += 1
        heapq.heappush(events, (go + took, next(seq), _ANSWER, r, i))

    def release(m: str, now: float) -> None:
        """A slot of model ``m`` passes to the first call still wanted, else is free."""
        q = waiting_for[m]
        while q:
            _, _, r2, i2 = heapq.heappop(q)
            if not failed[r2]:
                send(r2, i2, now)
                return
        model_free[m] += 1

    def answered(r: int, i: int, now: float) -> None:
        nonlocal billed, held
        free[r] += 1
        flying[r][i] -= 1
        if ceiling is not None:
            now_shape = _of(shape[r][i])
            held -= now_shape.reserve[wave[r][i]]
            billed += tries_of[r][i][att[r][i]][2] * now_shape.bills[wave[r][i]]
        m = d.held[i].model
        if m is not None:
            release(m, now)
        if done[r][i]:
            return
        left[r][i] -= 1
        if failed[r]:
            if flying[r][i] == 0:
                step_done(r, i, now)
        elif left[r][i] == 0:  # the wave answered: the next goes, or the next attempt, or done
            wave[r][i] += 1
            a = att[r][i]
            if wave[r][i] < len(_of(shape[r][i]).waves):
                start_wave(r, i)
            elif a + 1 < len(tries_of[r][i]):  # its backoff, then the retry
                wait_s = max(0.0, tries_of[r][i][a + 1][0] - tries_of[r][i][a][1])
                heapq.heappush(events, (now + wait_s, next(seq), _RETRY, r, i))
            else:
                step_done(r, i, now)

    def step_done(r: int, i: int, now: float) -> None:
        done[r][i] = True
        active[r] -= 1
        done_n[r] += 1
        end[r] = max(end[r], now)
        if not failed[r] and d.dead[i, k[r]]:
            fail(r, now)
        if not failed[r]:
            for ch in children[i]:
                wait[r][ch] -= 1
                if wait[r][ch] == 0:
                    begin(r, ch, now)
        if active[r] == 0 and (failed[r] or done_n[r] == n_steps):
            run_ended(r, now)

    def fail(r: int, now: float) -> None:
        """Nothing more is sent: the calls waiting go unsent, a retry waiting out its backoff
        is not made, and what is in flight answers."""
        failed[r] = True
        queue[r].clear()
        for i in range(n_steps):
            if not done[r][i] and wait[r][i] == 0 and flying[r][i] == 0:  # begun, idle
                done[r][i] = True
                active[r] -= 1
                done_n[r] += 1

    def run_ended(r: int, now: float) -> None:
        nonlocal next_line
        end[r] = max(end[r], now)
        ended.append(end[r])
        outcome.append(_STOPPED if stopped[r] else _FAILED if failed[r] else _OK)
        if next_line < lines and not closed:
            next_line += 1
            start_run(next_line - 1, end[r])

    for _ in range(min(parallel, lines)):
        next_line += 1
        start_run(next_line - 1, 0.0)
    while events:
        now, _, kind, r, i = heapq.heappop(events)
        if kind == _ANSWER:
            answered(r, i, now)
        elif done[r][i]:  # the run failed meanwhile: the retry is not sent
            pass
        elif kind == _RETRY:
            att[r][i] += 1
            start_attempt(r, i)
        else:  # a cache hit's lookup, or a step the draw never reached
            step_done(r, i, now)
        dispatch(r, now)
    return ended, spent, outcome
