"""A batch: one workflow over many inputs, under one spend ceiling and one deadline.

Each set of inputs (a line of a JSON Lines file) makes one ordinary run, journaled
like any other, so ``trilemma ledger``, ``report`` and ``resume`` read it. Up to
``parallel`` runs go at a time on one event loop, and every call of every run
reserves its worst case against one :class:`~trilemma.run.budget.SpendGuard`: the
batch's spend cannot cross its ceiling however its runs interleave. A model's limits
(``max_concurrency``, ``rpm``, ``tpm``) are the endpoint's, so they too hold for the
batch as a whole rather than per run. Once a reservation is refused, or the deadline
passes, no further run starts; the lines left are reported ``not_started``.

Each line's run gets its own simulator seed (the batch's plus the line's number less
one), so simulated lines are independent draws rather than one outcome repeated.

A batch has an id, and each of its runs records it with its line. Given that id
(``resume``), a batch goes on where it stopped: lines whose run finished ok are taken
from the journal and not run again, runs that stopped (a crash, the ceiling, the
deadline) resume with their finished steps kept, and lines never started start. The
spend of earlier sessions counts against the ceiling.
"""

from __future__ import annotations

import json
import math
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from trilemma import dag
from trilemma._format import set_flags
from trilemma._tasks import in_turns
from trilemma.cache.semantic import Embedder
from trilemma.errors import UsageError
from trilemma.journal.store import Journal, JournalWriter, overrides_of
from trilemma.plan.agreement import Figure, off_plan
from trilemma.plan.batchsim import Replayed, replay_batch, replay_ceiling
from trilemma.plan.estimate import Estimate, bill_draws, estimate, run_draws
from trilemma.plan.simulate import deadline_headroom
from trilemma.plan.slots import waves_of
from trilemma.providers.base import Provider
from trilemma.run.budget import Clock, SpendGuard
from trilemma.run.executor import RunResult, Session, new_run_id, spec_json, writer_for
from trilemma.run.routes import Route
from trilemma.run.session import (
    blocking,
    build_gates,
    cache_tier,
    check_inputs,
    check_parallel,
    check_tenant,
    close_parts,
    embedder_for,
    open_run,
    providers_for,
    reopen_run,
    shared_of,
    shared_spend,
    still_running,
)
from trilemma.run.shared_budget import SharedCeiling
from trilemma.spec import Workflow
from trilemma.spec.load import DuplicateKey, unique_keys
from trilemma.spec.model import backoff_ceiling

__all__ = [
    "BatchResult",
    "BatchTime",
    "LineResult",
    "ModelLimit",
    "Within",
    "batch_time",
    "budgets_json",
    "model_limits",
    "plan_batch",
    "planned_json",
    "predicted_json",
    "read_inputs",
    "run_batch",
    "run_batch_async",
    "within_ceiling",
]

#: Runs at a time unless told otherwise.
DEFAULT_PARALLEL = 4


@dataclass(frozen=True, slots=True)
class LineResult:
    """One line's run."""

    line: int
    """Its line in the inputs file (1 for the first)."""
    status: str
    """ok, budget_exhausted, deadline, failed, or not_started (the batch stopped first)."""
    run_id: str | None = None
    """The journal's key for its run (None when it did not start)."""
    cost_usd: float = 0.0
    """Dollars billed to it."""
    latency_s: float = 0.0
    """Its run's wall-clock seconds."""
    outputs: dict[str, str] = field(default_factory=dict)
    """Accepted outputs of its steps that finished."""
    error: str | None = None
    """Why it is not ok."""
    from_journal: bool = False
    """Ended in an earlier session of the batch (ok, or failed and skipped): not run again."""

    def to_json(self) -> dict[str, Any]:
        """A line of ``trilemma batch --out`` and an item of ``--json``'s ``runs``."""
        return {
            "line": self.line, "status": self.status, "run_id": self.run_id,
            "cost_usd": round(self.cost_usd, 12), "latency_s": round(self.latency_s, 6),
            "outputs": self.outputs, "error": self.error, "from_journal": self.from_journal,
        }  # fmt: skip


@dataclass(frozen=True, slots=True)
class BatchResult:
    """The outcome of ``trilemma batch``."""

    batch_id: str
    """The journal's key for the batch (``resume`` takes it)."""
    status: str
    """ok (every line ok), budget_exhausted, deadline, or failed (a line failed)."""
    lines: tuple[LineResult, ...]
    """Every line, in file order."""
    cost_usd: float
    """Dollars billed over the batch, every session of it (never above the ceiling)."""
    max_cost_usd: float | None
    """The batch's ceiling."""
    latency_s: float
    """Wall-clock seconds of this session of the batch."""
    predicted: Estimate
    """The planner's estimate for one run of the spec."""
    journal: str
    """The journal file."""
    parallel: int = DEFAULT_PARALLEL
    """Runs at a time."""

    planned_time: BatchTime | None = None
    """This session's wall-clock time by the planner (:func:`batch_time`): lines an
    earlier session finished are not run, so they take no time."""
    cost_drawn: np.ndarray | None = field(default=None, compare=False, repr=False)
    """A run's bill as the planner draws it (:func:`~trilemma.plan.estimate.bill_draws`),
    that :meth:`off_plan` weighs the runs' mean bill against, unless the plan replayed the
    runs together (its bill then is not these draws'); None: by Student's t."""

    @property
    def covered(self) -> int | None:
        """How many of this session's runs what was left of the ceiling at its start pays for
        even at their worst (as ``--plan``'s ``runs_covered_at_worst``; None: no ceiling)."""
        return None if self.planned_time is None else self.planned_time.covered

    @property
    def within(self) -> Within | None:
        """How many of this session's runs go to their end, and end ok, within what was left
        of the ceiling at its start, on average (:func:`within_ceiling`; None: no ceiling)."""
        return None if self.planned_time is None else self.planned_time.within

    @property
    def latency_planned_s(self) -> float:
        """This session's wall-clock time by the planner (:attr:`planned_time`)."""
        return 0.0 if self.planned_time is None else self.planned_time.latency_s

    def planned(self) -> dict[str, Any]:
        """The planner's figures for the batch (as ``--plan`` gives them before it runs), with
        what its ceiling and deadline let this session's runs do (:func:`budgets_json`)."""
        return planned_json(self.predicted, self.planned_time, len(self.lines))

    @property
    def deadline_s(self) -> float | None:
        """The deadline this session's runs were planned under, from its start (None: none)."""
        return None if self.planned_time is None else self.planned_time.deadline_s

    def session_json(self) -> dict[str, Any]:
        """What this session measured, as the journal keeps it beside its plan
        (:meth:`~trilemma.journal.Journal.batch_session_ended`): its status and time
        (``took_s``), the runs it took to their end (``ran_to_end``) and those ok."""
        return {"status": self.status, "took_s": round(self.latency_s, 6),
                "ran_to_end": self.ran_to_end(),
                "ok": sum(1 for r in self.lines if not r.from_journal and r.status == "ok")}  # fmt: skip

    def ran_to_end(self) -> int:
        """This session's runs that went to their end (ok or failed), not stopped by a budget."""
        return sum(1 for r in self.lines if not r.from_journal and r.status in ("ok", "failed"))

    def count(self, status: str) -> int:
        """Lines that ended with ``status``."""
        return sum(1 for r in self.lines if r.status == status)

    @property
    def quality_per_dollar(self) -> float | None:
        """The seed's q/$, measured: the share of lines ok per dollar a line cost (None: free)."""
        return self.count("ok") / self.cost_usd if self.cost_usd > 0 else None

    @property
    def cost_planned_per_run(self) -> float:
        """Dollars a run, by the planner, that :meth:`off_plan` weighs the runs' bills against:
        the runs replayed together where the estimate drew them so (calls queued behind a
        failed run's model unsent), else runs stopping at a failed step where it drew those,
        else the expected figure."""
        return self._cost_plan()[0]

    def _cost_plan(self) -> tuple[float, bool]:
        """:attr:`cost_planned_per_run`, and whether it is the runs replayed together."""
        plan = self.planned()["cost_usd"]
        if "replayed" in plan:
            return plan["replayed"] / len(self.lines), True
        h = self.predicted.halting
        return (h.cost_usd if h is not None else self.predicted.cost_expected), False

    def off_plan(self) -> tuple[Figure | None, Figure | None]:
        """``(cost, success)`` of the runs of this session that went to their end (ok or
        failed), each where the plan does not explain it, else None: their mean cost a run
        more than :data:`~trilemma.plan.agreement.OFF_PLAN_SHARE` off
        :attr:`cost_planned_per_run` and more than chance explains, their share ok more
        than chance explains against the planned reliability, both weighed at once
        (:func:`~trilemma.plan.agreement.off_plan`). Neither where too few ran, or some
        stopped on a ceiling or a deadline (their bill says nothing of the guesses)."""
        if any(r.status not in ("ok", "failed") for r in self.lines):
            return None, None
        ran = [r for r in self.lines if not r.from_journal]
        ok = sum(r.status == "ok" for r in ran)
        # runs replayed together bill less than the estimate's runs drawn alone (a failed
        # run's queued calls unsent): those draws are not the plan's, so Student's t there
        planned, replayed = self._cost_plan()
        return off_plan([r.cost_usd for r in ran], ok, planned, self.predicted.reliability,
                        cost_drawn=None if replayed else self.cost_drawn)  # fmt: skip

    @property
    def error(self) -> str | None:
        """Why the batch is not ok: the first line's reason that says so."""
        if self.status == "ok":
            return None
        first = next((r for r in self.lines if r.status == self.status), None)
        if first is not None:
            return f"line {first.line}: {first.error}"
        why = ("the deadline had passed (with --resume, --deadline SECONDS gives a new one)"
               if self.status == "deadline" else "the ceiling was reached")  # fmt: skip
        return f"{self.count('not_started')} lines did not start: {why}"

    def to_json(self) -> dict[str, Any]:
        """The contract of ``trilemma batch --json``."""
        n = len(self.lines)
        off, bad = self.off_plan()
        return {
            "batch_id": self.batch_id,
            "status": self.status,
            "lines": n,
            "counts": {s: self.count(s) for s in
                       ("ok", "failed", "budget_exhausted", "deadline", "not_started")},
            "from_journal": sum(1 for r in self.lines if r.from_journal),
            "cost_usd": round(self.cost_usd, 12),
            "max_cost_usd": self.max_cost_usd,
            "deadline_s": self.deadline_s,
            "latency_s": round(self.latency_s, 6),
            "predicted": self.planned(),
            "quality_per_dollar": self.quality_per_dollar,
            "cost_off_plan": None if off is None else
                             {"measured_per_run": round(off.measured, 12),
                              "planned_per_run": round(off.profile, 12), "p_value": off.p_value},
            "success_off_plan": None if bad is None else
                                {"measured": round(bad.measured, 6), "planned": round(bad.profile, 6),
                                 "p_value": bad.p_value},
            "error": self.error,
            "runs": [r.to_json() for r in self.lines],
            "journal": self.journal,
        }  # fmt: skip


def predicted_json(
    p: Estimate, lines: int, latency_s: float, limit: ModelLimit | None = None,
    replayed_usd: float | None = None,
) -> dict[str, Any]:  # fmt: skip
    """The planner's figures for ``lines`` runs of a spec estimated as ``p``, taking ``latency_s``
    (with the halting runs' cost and latency, where the estimate drew them); ``limit``: the
    model's limit that sets that time, if one does (``limited_by``); ``replayed_usd``: what
    the runs bill replayed together, where they were (``cost_usd.replayed``)."""
    h = p.halting
    return {
        "cost_usd": {"expected": round(p.cost_expected * lines, 12),
                     "worst": round(p.cost_worst * lines, 12),
                     **({} if h is None else {"halting": round(h.cost_usd * lines, 12)}),
                     **({} if replayed_usd is None else {"replayed": round(replayed_usd, 12)})},
        "ok_lines": round(p.reliability * lines, 6),
        "quality_per_dollar": p.quality_per_expected_dollar,
        "latency_s": {"batch": round(latency_s, 12),
                      "critical_path_per_run": round(p.latency_critical_s, 12),
                      "expected_per_run": round(p.latency_expected_s, 12),
                      **({} if h is None else {"halting_per_run": round(h.latency_s, 12)})},
        "limited_by": None if limit is None else limit.to_json(),
    }  # fmt: skip


@dataclass(frozen=True, slots=True)
class ModelLimit:
    """A model's limit as it holds a whole batch (its endpoint's, shared by every run): the
    runs it lets through. ``rpm`` and ``tpm`` are buckets a minute's worth full at the start
    and refilled evenly; ``max_concurrency`` slots held for a call's time."""

    model: str
    kind: str
    """``rpm``, ``tpm`` or ``max_concurrency``."""
    value: int
    per_run: float
    """What a run takes of it on average: requests, tokens, or seconds of calls."""
    burst: float
    """What goes at once: a minute's worth (0 for ``max_concurrency``)."""
    rate: float
    """What comes back a second after (the slots, for ``max_concurrency``)."""
    call_s: float
    """A call's mean seconds: the last one's time after its turn."""

    def least_s(self, runs: int) -> float:
        """The least time ``runs`` runs take under it."""
        need = runs * self.per_run
        if self.kind == "max_concurrency":
            return need / self.rate
        return max(0.0, need - self.burst) / self.rate + self.call_s

    def runs_by(self, t: float) -> float:
        """How many runs it lets end by ``t`` seconds."""
        if self.kind == "max_concurrency":
            return t * self.rate / self.per_run
        return (self.burst + max(0.0, t - self.call_s) * self.rate) / self.per_run

    def to_json(self) -> dict[str, Any]:
        """``limited_by`` in a batch's plan."""
        return {"model": self.model, "limit": self.kind, "value": self.value}


def model_limits(wf: Workflow, p: Estimate) -> list[ModelLimit]:
    """The limits of ``wf``'s models that a batch of its runs shares, with what a run takes of
    each: every call of each attempt a step may make (its first attempt's, a routed step's
    classifier and slowest branch as the slots' replay counts them), less its cache hits,
    weighed by the chance the attempt is made: that the attempts before it failed, and that
    the run is still going when it would start (a failed run sends nothing more), as many
    of the estimate's drawn runs (:func:`~trilemma.plan.estimate.run_draws`) are then.
    An attempt starts when the step's dependencies end on average, after the attempts
    before it and their mean backoffs."""
    if not wf.limited:
        return []
    rows = {r.id: r for r in p.per_step}
    draws = run_draws(wf)
    failed_at = np.sort(draws["latency"][~draws["ok"]])
    graph = wf.edges()
    ends = dag.finish_times(graph, {i: r.latency_expected_s for i, r in rows.items()})
    need = {n: [0.0, 0.0, 0.0] for n in wf.models}  # requests, tokens, call-seconds a run
    for st in wf.steps:
        r = rows[st.id]
        at, made = ends[st.id] - r.latency_expected_s, 1.0 - r.hit_rate
        share = 0.0
        for k in range(r.retries + 1):
            if k:
                made *= 1.0 - r.p_attempt
                at += r.latency_s + backoff_ceiling(k) / 2.0
            gone = int(np.searchsorted(failed_at, at, side="right"))  # runs failed by then
            share += made * (1.0 - gone / len(draws["ok"]))
        for model, width, seconds, tokens in waves_of(wf, st):
            got = need[model]
            got[0] += width * share
            got[1] += width * tokens * share
            got[2] += width * seconds * share
    out: list[ModelLimit] = []
    for name, m in wf.models.items():
        calls, tokens, busy = need[name]
        if calls <= 0:
            continue
        call_s = busy / calls
        if m.rpm:
            out.append(ModelLimit(name, "rpm", m.rpm, calls, m.rpm, m.rpm / m.minute_s, call_s))
        if m.tpm and tokens > 0:
            out.append(ModelLimit(name, "tpm", m.tpm, tokens, m.tpm, m.tpm / m.minute_s, call_s))
        if m.max_concurrency and busy > 0:
            out.append(ModelLimit(name, "max_concurrency", m.max_concurrency, busy, 0.0,
                                  float(m.max_concurrency), call_s))  # fmt: skip
    return out


@dataclass(frozen=True, slots=True)
class BatchTime:
    """The planner's time for a batch of ``runs`` runs (:class:`_Ends`), the model's limit
    that holds it up (``limit``), and where the runs were replayed together, what they
    bill (``cost_usd``: calls a failed run never sent bill nothing); under a deadline or a
    ceiling, what it lets through."""

    latency_s: float
    limit: ModelLimit | None = None
    cost_usd: float | None = None
    runs: int = 0
    bill_usd: float = 0.0
    """What the ``runs`` runs bill, by the planner: the replay's bill where they were replayed
    together, else a run's (a failed run halting, where the estimate drew that) times them."""
    deadline_s: float | None = None
    """The deadline the batch's runs were planned under (from the session's start)."""
    in_time: int | None = None
    """How many of the ``runs`` end before ``deadline_s`` (:meth:`_Ends.in_time`)."""
    near: int | None = None
    """How many of those end before it by less than the executor's own time
    (:meth:`_Ends.near`): the planner has them in time, a run may not."""
    ok_in_time: float | None = None
    """How many of the ``runs`` end ok before ``deadline_s``, on average
    (:meth:`_Ends.ok_in_time`)."""
    headroom_s: float | None = None
    """Under a deadline, the executor's own time before it
    (:func:`~trilemma.plan.simulate.deadline_headroom`), which :attr:`near` counts within."""
    covered: int | None = None
    """Under a ceiling, how many of the ``runs`` it pays for even at their worst."""
    within: Within | None = None
    """Under a ceiling, how many of the ``runs`` go to their end within it, and end ok
    (:func:`within_ceiling`)."""
    ok_in_budgets: float | None = None
    """Under a ceiling and a deadline, how many of the ``runs`` end ok within the one and
    before the other, on average: no more than either lets end ok alone."""


def planned_json(p: Estimate, t: BatchTime | None, lines: int) -> dict[str, Any]:
    """A batch's ``lines`` by the planner (``p``, one run's estimate; ``t``, the planner's
    time for the lines the session runs): :func:`predicted_json` and :func:`budgets_json`
    together, as the batch's table and ``predicted`` give them."""
    limit = None if t is None else t.limit
    replayed = t.cost_usd if t is not None and t.runs == lines else None  # lines of a session
    return {**predicted_json(p, lines, 0.0 if t is None else t.latency_s, limit, replayed),
            **budgets_json(t or BatchTime(0.0))}  # fmt: skip


def budgets_json(t: BatchTime) -> dict[str, Any]:
    """What a batch's ceiling and deadline let its runs do, by the planner (``t``), as
    ``--plan --json`` and a batch's ``predicted`` give it (None where it has none):
    ``runs_covered_at_worst``: how many runs the ceiling pays for even if every one uses
    every retry (None also when a run costs nothing at worst);
    ``runs_ended_within_ceiling`` and ``runs_ok_within_ceiling``: how many go to their end
    (ok or failed), and end ok, within it on average (:func:`within_ceiling`), and
    ``latency_within_ceiling_s``, where the calls were replayed under it, when the batch
    ends as the ceiling stops it;
    ``runs_done_by_deadline``: how many end before the deadline on average, as the pool or
    the replay runs them (:class:`_Ends`); ``runs_near_deadline``: how many of those end
    less than the executor's own time before it (``deadline_headroom_s``,
    :meth:`_Ends.near`), which a run's own time may put past it; ``runs_ok_by_deadline``:
    how many end ok before it, on average (:meth:`_Ends.ok_in_time`): the figure to set
    beside the runs ok under a deadline, where ``predicted.ok_lines`` is of runs that all
    go to their end; ``runs_ok_within_budgets``: under both, how many end ok within the
    ceiling and before the deadline (:attr:`BatchTime.ok_in_budgets`)."""
    return {"runs_covered_at_worst": t.covered, **_within_json(t.within),
            "runs_done_by_deadline": t.in_time, "runs_near_deadline": t.near,
            "runs_ok_by_deadline": _rounded(t.ok_in_time), "deadline_headroom_s": t.headroom_s,
            "runs_ok_within_budgets": _rounded(t.ok_in_budgets)}  # fmt: skip


def batch_time(
    wf: Workflow, p: Estimate, runs: int, parallel: int, deadline_s: float | None = None,
    ceiling_usd: float | None = None,
) -> BatchTime:  # fmt: skip
    """:func:`batch_latency`, with the model's limit that sets it, if one does; with
    ``deadline_s``, how many runs end before it, how many of those by a hair, and how many
    end ok before it; with ``ceiling_usd``, how many it pays for at their worst and how many
    go to their end within it; with both, how many end ok within both."""
    ends = _Ends.of(wf, p, runs, parallel)
    within = within_ceiling(wf, p, runs, parallel, ceiling_usd, deadline_s)
    took = replace(ends.time(), covered=_covered(ceiling_usd, p.cost_worst, runs), within=within)
    if deadline_s is None:
        return took
    room, ok_in_time = deadline_headroom(p), ends.ok_in_time(deadline_s)
    assert ok_in_time is not None
    both = None if within is None else min(  # none ok by the deadline within it is 0, not none
        ok_in_time, within.ok, math.inf if within.ok_by_deadline is None else within.ok_by_deadline)
    return replace(took, deadline_s=deadline_s, in_time=ends.in_time(deadline_s),
                   near=ends.near(deadline_s, room), ok_in_time=ok_in_time, headroom_s=room,
                   ok_in_budgets=both)  # fmt: skip


#: A replay holds the batch up by a model's limits where it takes this much longer than
#: the pool alone.
HELD_UP = 1.05


@dataclass(frozen=True, slots=True)
class _Ends:
    """When a batch's runs end, repetition by repetition (rows, columns sorted): replayed
    together where a model's limits may hold them up (:mod:`trilemma.plan.batchsim`), else
    as the pool runs them (:func:`_pool`), with the models' ``limits``."""

    pool: np.ndarray
    pool_ok: np.ndarray
    """The chance each of the pool's runs ends ok, in :attr:`pool`'s places."""
    replayed: Replayed | None
    limits: Sequence[ModelLimit]
    runs: int
    per_run_usd: float
    """A run's bill by the estimate (halting where it drew that)."""
    reliability: float
    """A run's chance to end ok, by the estimate."""

    @classmethod
    def of(cls, wf: Workflow, p: Estimate, runs: int, parallel: int) -> _Ends:
        got = replay_batch(wf, p, runs, parallel)  # None where no model's limit holds a call
        return cls(*_pool(wf, p, runs, parallel), got, model_limits(wf, p), runs,
                   _per_run_usd(p), p.reliability)  # fmt: skip

    def _drawn(self) -> tuple[np.ndarray, np.ndarray]:
        """The runs' ends and their chances to end ok: the replay's, else the pool's."""
        if self.replayed is not None:
            return self.replayed.ends, self.replayed.ok
        return self.pool, self.pool_ok

    def time(self) -> BatchTime:
        """The batch's mean time, and the limit that holds it up, if one does: the replay's
        (where it is longer than the pool's by :data:`HELD_UP`, the limit that lets the runs
        through slowest), else the longer of the pool's and the least a limit lets the runs
        take (:class:`ModelLimit`)."""
        pool = _took(self.pool)
        slowest = max(self.limits, key=lambda lim: lim.least_s(self.runs), default=None)
        if self.replayed is not None:
            took = _took(self.replayed.ends)
            held = slowest if took > pool * HELD_UP else None
            cost = self.replayed.cost_usd
            return BatchTime(took, held, cost, self.runs, cost)
        bill = self.per_run_usd * self.runs
        if self.runs and slowest is not None and slowest.least_s(self.runs) > pool * (1 + 1e-9):
            return BatchTime(slowest.least_s(self.runs), slowest, runs=self.runs, bill_usd=bill)
        return BatchTime(pool, runs=self.runs, bill_usd=bill)

    def in_time(self, deadline: float | None) -> int | None:
        """How many runs end before ``deadline``, on average over the repetitions, to the
        nearest run: the replay's, or the pool's and as many as the limits let through by
        then (None: no deadline)."""
        if deadline is None:
            return None
        ends, _ = self._drawn()
        got = round(float((ends <= deadline * (1 + 1e-9)).sum(axis=1).mean()))
        return min(got, self._through(deadline))

    def _through(self, deadline: float) -> int:
        """The most runs that can end by ``deadline``: all, or with the pool, as many as the
        models' limits let through by then (the replay waits on them itself)."""
        if self.replayed is not None:
            return self.runs
        return min([self.runs, *(math.floor(lim.runs_by(deadline) + 1e-9) for lim in self.limits)])

    def ok_in_time(self, deadline: float | None) -> float | None:
        """How many runs end ok before ``deadline``, on average (None: no deadline): the runs
        the estimate has ok (its reliability times the runs), times the share of the drawn
        runs ending ok that end before it (as :meth:`in_time` counts them), so that a
        deadline after every run takes them all. A spec that stops early ends its quick runs
        ok; one whose failures halt ends its quick runs failed. Where the models' limits let
        fewer runs through than the pool has end, those are ok by the same share."""
        if deadline is None:
            return None
        ends, ok = self._drawn()
        before = ends <= deadline * (1 + 1e-9)
        got = _weighed(float((ok * before).sum(axis=1).mean()), float(ok.mean()), self.reliability)
        done, through = float(before.sum(axis=1).mean()), self._through(deadline)
        return got * through / done if through < done else got

    def near(self, deadline: float | None, headroom: float) -> int | None:
        """How many runs end before ``deadline`` by less than ``headroom`` (the executor's
        own time, :func:`~trilemma.plan.simulate.deadline_headroom`), on average over the
        repetitions, to the nearest run, and no more than :meth:`in_time` (None: no
        deadline): runs the planner has in time that a run's own time may put past it."""
        if deadline is None:
            return None
        ends, _ = self._drawn()
        close = (ends <= deadline * (1 + 1e-9)) & (ends > deadline - headroom)
        return min(round(float(close.sum(axis=1).mean())), self.in_time(deadline) or 0)


def batch_latency(wf: Workflow, p: Estimate, runs: int, parallel: int) -> float:
    """The planner's wall-clock time for ``runs`` runs of ``wf`` (estimated as ``p``),
    ``parallel`` at a time: the mean time the batch's pool takes to run them, each run
    taking its mean latency with the spread of the estimate's drawn runs (:func:`_pool`).
    Where a model has an ``rpm``, ``tpm`` or ``max_concurrency`` (its endpoint's, which
    every run shares), the runs are replayed together, call by call
    (:mod:`trilemma.plan.batchsim`): they wait for the model where it is busy, and a run
    that fails sends none of the calls it had waiting. A batch too big to replay takes the
    longer of the pool's time and the least a limit lets the runs take
    (:class:`ModelLimit`). 700 one-call lines at rpm 600 take over ten seconds, whatever
    ``parallel``.

    Rounds of critical paths counted no retry at all: a batch of 5,000 lines of a retried
    one-call spec (p 0.93, 1 ms calls) was planned at 0.10 s and took 3.1 s, nearly all of it
    the backoff before the 7% of calls retried, which hold their run's slot meanwhile.
    Where runs fail often, each takes the halting runs' mean (:attr:`Estimate.halting`): a
    failed run frees its place early. Rounds of runs at their mean then left out that the
    pool starts a run as another ends, and waits for its slowest at the end: forty lines of
    ten 10 ms steps at p 0.8, four at a time, were planned at 0.45 s and took 0.47-0.51 s
    (six seeds), now planned at 0.48 s; twelve lines of examples/faq.yaml, four at a time,
    at 1.99 s, where 24 seeds took 2.26 s on average, now planned at 2.28 s.
    """
    return batch_time(wf, p, runs, parallel).latency_s


def _took(ends: np.ndarray) -> float:
    """The pool's mean time to its last run's end (:func:`_pool`'s rows)."""
    return float(ends[:, -1].mean()) if ends.size else 0.0


def _per_run_s(p: Estimate) -> float:
    """A run's mean latency: the halting runs' where drawn, else the expected one."""
    return p.halting.latency_s if p.halting is not None else p.latency_expected_s


def _per_run_usd(p: Estimate) -> float:
    """A run's mean bill: the halting runs' where drawn, else the expected one."""
    return p.halting.cost_usd if p.halting is not None else p.cost_expected


#: The pool's draws: batches of this many runs in all (repetitions x lines), at least
#: ``POOL_REPS_MIN`` repetitions and at most ``POOL_REPS``.
POOL_CELLS = 1_000_000
POOL_REPS, POOL_REPS_MIN = 1024, 4
_POOL_SEED = 20261206


def _pool(wf: Workflow, p: Estimate, runs: int, parallel: int) -> tuple[np.ndarray, np.ndarray]:
    """When the batch's runs end, as its pool runs them: ``parallel`` at a time, the next
    line starting as soon as any run ends. One row per repetition (a fixed seed), the
    columns sorted: each run's time drawn from the estimate's whole runs
    (:func:`~trilemma.plan.estimate.run_draws`) scaled to the estimate's mean
    (:func:`_per_run_s`). Runs that always take the same time end in rounds, exactly.
    Beside the ends, in the same places, the chance each run ends ok: its drawn run's
    outcome (1 or 0), or for runs in rounds, the drawn runs' share ok."""
    each = _per_run_s(p)
    if runs <= 0:
        return np.zeros((1, 0)), np.zeros((1, 0))
    drawn = run_draws(wf)
    took, ok = drawn["latency"], drawn["ok"].astype(float)
    mean = float(took.mean())
    if each <= 0 or mean <= 0 or float(took.max() - took.min()) <= 1e-9 * mean:
        rounds = np.arange(runs) // parallel + 1
        return (rounds * each).astype(float)[None, :], np.full((1, runs), float(ok.mean()))
    reps = max(POOL_REPS_MIN, min(POOL_REPS, POOL_CELLS // runs))
    which = np.random.default_rng(_POOL_SEED).integers(0, len(took), size=(reps, runs))
    times = took[which] * (each / mean)
    width = min(parallel, runs)
    free = times[:, :width].copy()  # the first runs start at once
    ends = np.empty_like(times)
    ends[:, :width] = free
    rows = np.arange(reps)
    for i in range(width, runs):
        slot = free.argmin(axis=1)
        free[rows, slot] += times[:, i]
        ends[:, i] = free[rows, slot]
    order = ends.argsort(axis=1, kind="stable")
    return np.take_along_axis(ends, order, axis=1), np.take_along_axis(ok[which], order, axis=1)


def plan_batch(
    wf: Workflow, lines: int, *, parallel: int = DEFAULT_PARALLEL,
    max_cost_usd: float | None = None, shared_left: tuple[str, float] | None = None,
    deadline_s: float | None = None,
) -> dict[str, Any]:  # fmt: skip
    """What a batch of ``lines`` runs should cost and take, before anything is spent, and
    what its ceiling (``max_cost_usd``, else the spec's) and deadline (``deadline_s``, else
    the spec's) let its runs do (:func:`budgets_json`).

    ``shared_left``: a shared budget's name and the dollars left in it now; the plan then
    says how many runs those pay for at their worst too, and how many go to their end (and
    end ok) within them on average.
    """
    p = estimate(wf)
    ceiling, deadline = wf.budget.resolve(max_cost_usd, deadline_s)
    took = batch_time(wf, p, lines, parallel, deadline, ceiling)
    out = {
        "lines": lines, "parallel": parallel, "max_cost_usd": ceiling, "deadline_s": deadline,
        **budgets_json(took),
        "predicted": predicted_json(p, lines, took.latency_s, took.limit, took.cost_usd),
    }  # fmt: skip
    if shared_left is not None:
        name, left = shared_left
        out["shared_budget"] = {"name": name, "remaining_usd": left,
                                "runs_covered_at_worst": _covered(left, p.cost_worst, lines),
                                **_within_json(within_ceiling(wf, p, lines, parallel, left))}  # fmt: skip
    return out


def _rounded(runs: float | None) -> float | None:
    """A mean count of runs (or seconds), to six places, as the JSON gives ``ok_lines``."""
    return None if runs is None else round(runs, 6)


@dataclass(frozen=True, slots=True)
class Within:
    """What a batch's spend ceiling lets its runs do, by the planner (:func:`within_ceiling`):
    how many go to their end on average (ok or failed: the others are stopped by a refused
    reservation, or never start), and how many end ok."""

    ended: float
    ok: float
    replayed: bool
    """Its calls replayed under the ceiling (else by a run's mean bill)."""
    ok_by_deadline: float | None = None
    """Of the runs ok, how many end by the deadline it was asked with, where replayed."""
    took_s: float | None = None
    """Where replayed, when the batch ends on average: its last run's end, the ceiling
    having stopped its starts (the batch's time, where it stops none)."""


def within_ceiling(
    wf: Workflow, p: Estimate, runs: int, parallel: int, dollars: float | None,
    deadline_s: float | None = None,
) -> Within | None:  # fmt: skip
    """How many of ``runs`` runs of ``wf`` (estimated as ``p``), ``parallel`` at a time, go
    to their end within a ceiling of ``dollars``, and how many end ok (None: no ceiling);
    where replayed with a ``deadline_s``, how many of those end ok by it too.

    Replayed call by call where the replay can (:func:`~trilemma.plan.batchsim.replay_ceiling`:
    each call holds its reservation while in flight, the first refused stops its run and
    the batch's starts), the ok ones weighed to the estimate's reliability. Where it cannot
    (a spec that stops early, or more calls than the replays take), by a run's mean bill
    (halting where the estimate drew that): the dollars left once the runs in flight at the
    stop have spent half theirs, each ok at the estimate's reliability. A ceiling that pays
    for every run at its worst lets them all end."""
    if dollars is None:
        return None
    if runs <= 0 or _covered(dollars, p.cost_worst, runs) in (None, runs):
        return Within(float(runs), p.reliability * runs, False)
    got = replay_ceiling(wf, p, runs, parallel, dollars)
    if got is not None:
        ended = float(got.ended.mean())
        ok = min(_weighed(float(got.ok.mean()), got.drawn_ok, p.reliability), ended)
        by_deadline = (None if deadline_s is None else
                       min(_weighed(float(got.ok_by(deadline_s).mean()), got.drawn_ok, p.reliability), ok))  # fmt: skip
        return Within(ended, ok, True, by_deadline, float(got.took.mean()))
    bill = _per_run_usd(p)
    if bill <= 0:  # a run bills nothing on average (cached): none is stopped
        return Within(float(runs), p.reliability * runs, False)
    ended = min(float(runs), max(0.0, dollars / bill - min(parallel, runs) / 2))
    return Within(ended, ended * p.reliability, False)


def _weighed(ok: float, drawn_share: float, reliability: float) -> float:
    """Runs ok as drawn (``ok``, of runs that end ok ``drawn_share`` of the time) weighed to
    the estimate's ``reliability``: its few thousand draws' share ok is not the estimate's
    to the digit, and a deadline or a ceiling that lets every run end is to leave exactly
    the estimate's runs ok."""
    return ok * reliability / drawn_share if drawn_share > 0 else 0.0


def _within_json(w: Within | None) -> dict[str, float | None]:
    """``runs_ended_within_ceiling``, ``runs_ok_within_ceiling`` and
    ``latency_within_ceiling_s`` (where replayed) of a batch's plan."""
    return {"runs_ended_within_ceiling": None if w is None else _rounded(w.ended),
            "runs_ok_within_ceiling": None if w is None else _rounded(w.ok),
            "latency_within_ceiling_s": None if w is None else _rounded(w.took_s)}  # fmt: skip


def _covered(dollars: float | None, worst: float, lines: int) -> int | None:
    """How many runs ``dollars`` pay for if each costs ``worst`` (None: no limit to it)."""
    if dollars is None or worst <= 0:
        return None
    return min(lines, math.floor(dollars / worst + 1e-9))


def read_inputs(path: Path, wf: Workflow, source: str = "<spec>") -> dict[int, dict[str, str]]:
    """One run's inputs per non-blank line of a JSON Lines file, by line number.

    A line is a JSON object of the spec's declared inputs (``source`` names the spec in
    errors); numbers and booleans are taken as their text. Every line is checked before
    anything is spent: a bad one is a UsageError naming the file, the line and the fix.
    The path ``-`` reads standard input.
    """
    try:  # a byte order mark (Windows editors write one) is not part of the first line
        text = sys.stdin.read() if str(path) == "-" else path.read_text(encoding="utf-8-sig")
    except OSError as exc:
        raise UsageError(f"--inputs {path}: cannot read it ({exc.strerror or exc})") from None
    except UnicodeDecodeError:
        raise UsageError(f"--inputs {path}: not UTF-8 text; give a JSON Lines file") from None
    out: dict[int, dict[str, str]] = {}
    for no, raw in enumerate(text.splitlines(), 1):
        if not raw.strip():
            continue
        where = f"{path}:{no}: "
        try:
            row = json.loads(raw.removeprefix("\ufeff"), object_pairs_hook=unique_keys)
        except DuplicateKey as exc:
            raise UsageError(f"{where}{exc.key}: given twice on one line; keep one") from None
        except json.JSONDecodeError as exc:
            raise UsageError(
                f"{where}not JSON ({exc.msg}); write one object per line, such as "
                '{"question": "..."}'
            ) from None
        if not isinstance(row, dict):
            raise UsageError(f'{where}a line must be a JSON object, such as {{"question": "..."}}')
        values: dict[str, str] = {}
        for key, value in row.items():
            if isinstance(value, bool):
                value = "true" if value else "false"
            elif isinstance(value, int | float) and math.isfinite(value):
                value = json.dumps(value)
            elif not isinstance(value, str):
                raise UsageError(f"{where}{key}: give text, a number or a boolean, not "
                                 f"{_json_kind(value)}")  # fmt: skip
            values[key] = value
        check_inputs(wf, values, source, given_as=where)
        out[no] = values
    if not out:
        raise UsageError(f"--inputs {path}: no lines; give one JSON object per line")
    return out


def _json_kind(value: object) -> str:
    """What a JSON value is, in JSON's words: null, an object, a list, NaN."""
    if value is None:
        return "null"
    if isinstance(value, dict):
        return "an object"
    if isinstance(value, list):
        return "a list"
    return repr(value)  # NaN, Infinity: json reads them, but they are no number a prompt holds


async def run_batch_async(
    wf: Workflow,
    inputs: Mapping[int, Mapping[str, str]] | Sequence[Mapping[str, str]],
    *,
    journal: Journal,
    max_cost_usd: float | None = None,
    deadline_s: float | None = None,
    parallel: int = DEFAULT_PARALLEL,
    seed: int | None = None,
    source: str = "<spec>",
    tenant: str | None = None,
    providers: Mapping[str, Provider] | None = None,
    embedder: Embedder | None = None,
    on_progress: Callable[[int, int, float], None] | None = None,
    on_start: Callable[[str], None] | None = None,
    on_plan: Callable[[BatchTime], None] | None = None,
    on_line: Callable[[LineResult], None] | None = None,
    resume: str | None = None,
    shared: SharedCeiling | None = None,
    redis: str | None = None,
    shared_cache: str | None = None,
    skip_failed: bool = False,
    overrides: Sequence[str] = (),
) -> BatchResult:
    """Run ``wf`` once per set of ``inputs``, ``parallel`` at a time, under one ceiling.

    ``inputs``: by line number (as :func:`read_inputs` gives them), or a list (numbered
    from 1). ``max_cost_usd`` and ``deadline_s`` hold for the whole batch (the spec's
    budget when not given). ``on_plan(time)`` is called with the planner's time for the lines
    this session runs (:func:`batch_time`), then ``on_start(batch_id)``, before the first run;
    ``on_progress(lines_done, lines, dollars_spent)`` after each run's end, and
    ``on_line(result)`` with its line's result (on a resume, first with each line an
    earlier session ended: ok, or failed with ``skip_failed``).

    ``resume``: the id of a batch to go on with, given the same spec and inputs; its
    ceiling, deadline, seed and tenant hold unless given anew. A provider's own bug (not
    a ProviderError) stops the batch and is raised.

    ``shared``: a ceiling the batch's calls share with runs in other processes (see
    :func:`~trilemma.run.session.execute`); a resumed batch keeps its own, kept at
    ``redis``, unless given another. ``shared_cache``: the Redis URL of a cache tier
    shared with other processes (as for :func:`~trilemma.run.session.execute`).
    ``skip_failed``: on a resume, a line whose run ended ``failed`` is left as it ended
    (by default it runs again, as ``trilemma resume`` runs a failed run again).
    ``overrides``: the ``--set PATH=VALUE`` ``wf`` was loaded with, journaled with each
    run (a resume is given the same, or is told which the batch ran with).

    Awaited in a running event loop, as :func:`~trilemma.run.session.execute_async` is
    (cancelling it leaves the batch to ``--resume``); :func:`run_batch` runs it in a loop
    of its own.
    """
    if skip_failed and resume is None:
        raise UsageError("--skip-failed: it only applies with --resume BATCH_ID")
    check_parallel(parallel)
    tenant = check_tenant(tenant)
    by_line = dict(inputs) if isinstance(inputs, Mapping) else dict(enumerate(inputs, 1))
    numbers = list(by_line)
    values = [check_inputs(wf, given, source, given_as=f"line {no}: ")
              for no, given in by_line.items()]  # fmt: skip
    earlier: dict[int, dict[str, Any]] = {}
    resumed_due: float | None = None  # the deadline a resumed batch holds, epoch seconds
    if resume is not None:
        earlier = _earlier_runs(journal, resume, wf, dict(zip(numbers, values, strict=True)),
                                overrides)  # fmt: skip
        first = next(iter(earlier.values()))
        max_cost_usd = max_cost_usd if max_cost_usd is not None else first["max_cost_usd"]
        seed = seed if seed is not None else first["seed"] - first["batch_line"] + 1
        tenant = _same_tenant(tenant, first["tenant"], resume)
        shared = shared_of(first, shared, redis)
        if deadline_s is None and first["deadline_at"] is not None:
            resumed_due = first["deadline_at"]
            deadline_s = resumed_due - time.time()
    batch_id = resume or "batch-" + new_run_id()
    gates = build_gates(wf, source)
    embedder = embedder_for(wf, embedder)
    base_seed = wf.seed_for(seed)
    ceiling, deadline = wf.budget.resolve(max_cost_usd, deadline_s)
    guard = SpendGuard(ceiling, spent=math.fsum(journal.spent(r["run_id"]) for r in earlier.values()))
    spend = shared_spend(shared)  # one hold on the shared ceiling for every run of the batch
    tier = cache_tier(wf, shared_cache)  # and one client of the shared cache
    predicted = estimate(wf)
    # Endpoints' clients are made once for the batch; the simulator is seeded per line. A
    # model's limits (concurrent calls, requests and tokens a minute) hold for the batch.
    first_provs = providers_for(wf.models, base_seed, providers)
    endpoints = {n: p for n, p in first_provs.items()
                 if not wf.models[n].runs_on_simulator or (providers and n in providers)}  # fmt: skip
    limits = {n: Route.of(m, first_provs[n]) for n, m in wf.models.items()}
    results: list[LineResult | None] = [None] * len(values)

    keep = ("ok", "failed") if skip_failed else ("ok",)
    for i, no in enumerate(numbers):  # lines an earlier session finished are not run again
        row = earlier.get(no)
        if row is not None and row["status"] in keep:
            outputs = {k: v["output"] for k, v in journal.steps(row["run_id"]).items()
                       if v["status"] == "done" and v["output"] is not None}  # fmt: skip
            results[i] = LineResult(no, row["status"], row["run_id"], journal.spent(row["run_id"]),
                                    row["latency_s"] or 0.0, outputs, row["error"],
                                    from_journal=True)  # fmt: skip

    async def one(i: int) -> None:
        no = numbers[i]
        row = earlier.get(no)
        seed_i = row["seed"] if row else base_seed + no - 1  # a line's draws follow its number
        session = Session(guard, clock, shared=spend)
        provs = providers_for(wf.models, seed_i, endpoints)
        done: dict[str, dict[str, Any]] = {}
        if row is None:
            ex = open_run(wf, journal, session, values=values[i], seed=seed_i, source=source,
                          providers=provs, gates=gates, predicted=predicted, on_event=None,
                          embedder=embedder, tenant=tenant, batch=(batch_id, no),
                          limits=limits, writer=writer, shared_cache=tier,
                          overrides=overrides)  # fmt: skip
        else:  # stopped in an earlier session: on from where it stopped
            ex, done = reopen_run(wf, journal, row, session, providers=provs, gates=gates,
                                  predicted=predicted, on_event=None, embedder=embedder,
                                  limits=limits, writer=writer, shared_cache=tier)  # fmt: skip
        r: RunResult = await ex.run(session, done)
        results[i] = LineResult(no, r.status, r.run_id, r.cost_usd, r.latency_s, r.outputs,
                                r.error)  # fmt: skip

    finished = sum(1 for r in results if r is not None)  # lines done, earlier sessions' too

    async def line(i: int) -> None:
        nonlocal finished
        await one(i)
        finished += 1
        if on_line is not None and (done := results[i]) is not None:
            on_line(done)
        if on_progress is not None:
            on_progress(finished, len(values), guard.spent)

    writer: JournalWriter | None = None  # one connection and thread for every run, made in main

    async def main() -> None:
        nonlocal writer
        writer = writer_for(journal, limits.values())
        todo = [i for i, r in enumerate(results) if r is None]
        try:
            await in_turns(todo, parallel, line, lambda: _stopping(guard, clock))
        finally:
            try:
                await writer.aclose()
            finally:
                await close_parts(endpoints, spend, tier)

    todo = sum(1 for r in results if r is None)
    left = None if ceiling is None else max(0.0, ceiling - guard.spent)  # an earlier session's spent
    planned = batch_time(wf, predicted, todo, parallel, deadline, left)
    if on_plan is not None:
        on_plan(planned)
    if on_start is not None:
        on_start(batch_id)
    if on_line is not None:
        for earlier_line in results:
            if earlier_line is not None:
                on_line(earlier_line)
    # The deadline and the batch's time count from here, as its plan's do: planning 700
    # lines behind a model's limits takes 0.4 s, which neither is to spend.
    started = time.time()
    journal.batch_planned(batch_id, started, parallel, todo, {
        "max_cost_usd": left, "deadline_s": deadline, "batch_lines": len(values),
        **planned_json(predicted, planned, len(values))})  # fmt: skip
    clock = Clock(resumed_due if resumed_due is not None else
                  started + deadline if deadline is not None else None)  # fmt: skip
    try:
        await main()
    except ExceptionGroup as group:  # a run's bug: the error itself, as execute() raises it
        raise group.exceptions[0] from None
    out = tuple(r if r is not None else LineResult(numbers[i], "not_started")
                for i, r in enumerate(results))  # fmt: skip
    result = BatchResult(batch_id, _status(out, guard), out, math.fsum(r.cost_usd for r in out),
                         ceiling, time.time() - started, predicted, str(journal.path), parallel,
                         planned, bill_draws(wf))  # fmt: skip
    journal.batch_session_ended(batch_id, started, result.session_json())
    return result


run_batch = blocking(run_batch_async)


def _earlier_runs(
    journal: Journal, batch_id: str, wf: Workflow, values: Mapping[int, Mapping[str, str]],
    overrides: Sequence[str] = (),
) -> dict[int, dict[str, Any]]:
    """The runs of an earlier session of ``batch_id``, checked against this spec (loaded
    with these ``overrides``) and these lines."""
    rows = journal.batch_runs(batch_id)
    if not rows:
        raise UsageError(
            f"--resume {batch_id}: no batch of that id in {journal.path}; a batch prints its id "
            "when it starts (and `trilemma batch --json` gives it as batch_id)"
        )
    text = spec_json(wf)
    for no, row in rows.items():
        if row["spec_json"] != text:
            ran = overrides_of(row)
            if ran != list(overrides):  # the same file, likely: name the --set that differ
                raise UsageError(
                    f"--resume {batch_id}: the batch ran with {_sets(ran)}, not {_sets(overrides)}; "
                    "give the same --set, or start a new batch"
                )
            raise UsageError(
                f"--resume {batch_id}: the spec is not the one the batch ran (line {no}'s run "
                f"{row['run_id']}); give the same spec, or start a new batch"
            )
        if no not in values or json.loads(row["inputs_json"]) != dict(values[no]):
            raise UsageError(
                f"--resume {batch_id}: line {no} of the inputs is not what the batch ran then; "
                "give the same inputs file, or start a new batch"
            )
        if still_running(row):
            raise UsageError(
                f"--resume {batch_id}: line {no}'s run {row['run_id']} is still running (process "
                f"{row['pid']}); wait for that batch to end or stop it first"
            )
    return rows


def _sets(overrides: Sequence[str]) -> str:
    return set_flags(overrides) or "no --set"


def _same_tenant(given: str | None, was: str | None, batch_id: str) -> str | None:
    if given is not None and given != was:
        raise UsageError(
            f"--tenant {given}: batch {batch_id} runs for {was or 'no tenant'}; resume it without "
            "--tenant, or start a new batch"
        )
    return was


def _stopping(guard: SpendGuard, clock: Clock) -> bool:
    """No further run starts once a reservation was refused or the deadline passed."""
    left = clock.remaining()
    return guard.exhausted or (left is not None and left <= 0)


def _status(lines: Sequence[LineResult], guard: SpendGuard) -> str:
    statuses = {r.status for r in lines}
    if guard.exhausted or "budget_exhausted" in statuses:
        return "budget_exhausted"
    if "deadline" in statuses or "not_started" in statuses:
        return "deadline"
    return "failed" if "failed" in statuses else "ok"
