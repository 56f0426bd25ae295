"""The async DAG executor: one spec, run on real endpoints or the simulator.

A step starts when its last dependency settles, in a task of its own or, when it
is the first step its finished parent leaves ready, in that parent's task (so a
chain runs in one task and no task waits on another). Every LLM call takes a
global slot (served longest-remaining-path first), its model's slot and rate
tokens, then reserves its worst-case cost; a call whose reservation would
cross the ceiling is never sent. Each call is journaled before it is sent and
again when it comes back; a step's output is committed in the transaction that
marks it done. The run's deadline is a timeout around the whole task group.

Stopping: a failed step or a refused reservation stops new calls (calls in
flight finish: they are paid for); the deadline and an early stop
(``stop_when``) cancel what is in flight (a real endpoint's cancelled call is billed
at its reservation: it may bill what it generated). The ``stop_when`` step is a bet that
a good-enough answer comes early: when nothing runs after it and it fails, the
run goes on without the stop (and ends ok if every other step does). An
exception that is not a failed call (a bug in a provider or an ``on_event``
callback) cancels what is in flight, marks the run failed in the journal, and
reaches the caller as itself.
"""

from __future__ import annotations

import asyncio
import contextvars
import hashlib
import math
import random
import secrets
import time
from collections.abc import Callable, Coroutine, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from trilemma._format import counted
from trilemma._tasks import loop_now
from trilemma.cache.keys import step_settings
from trilemma.cache.lookup import Cache, Hit
from trilemma.cache.semantic import Embedder
from trilemma.cache.shared import SharedCache
from trilemma.errors import (
    BudgetExhausted,
    DeadlineExceeded,
    GateRejected,
    ProviderError,
    QuotaExceeded,
    RunError,
    SetupError,
)
from trilemma.journal.store import (
    FREE_COMMIT_S,
    GROUP_COMMIT_S,
    REJECTED,
    Journal,
    JournalWriter,
    messages_json,
    sent_by_step,
)
from trilemma.plan.estimate import Estimate
from trilemma.plan.slots import remaining_path
from trilemma.providers.base import (
    CUT,
    Completion,
    Message,
    Provider,
    Request,
    Usage,
    bill_note,
    cost_of,
    worst_case_cost,
)
from trilemma.providers.sim import simulated_pick
from trilemma.run.budget import Clock, Reservation, SpendGuard
from trilemma.run.gates import Check, GateThread
from trilemma.run.limits import PriorityLimiter
from trilemma.run.retry import retrying
from trilemma.run.routes import Route
from trilemma.run.shared_budget import SharedSpend
from trilemma.run.steps import Answer, pick_route, route_prompt, run_kind
from trilemma.spec import (
    Step,
    Workflow,
    render_template,
)

__all__ = [
    "OWN_LOOP",
    "Event",
    "Executor",
    "RunResult",
    "Session",
    "StepResult",
    "new_run_id",
    "spec_hash",
    "spec_json",
    "writer_for",
]

DEFAULT_PROMPT = "Task: {step}.\n{context}"

#: True while runs go on in an event loop trilemma made (``execute``, not ``execute_async``),
#: which its process leaves only to end (Ctrl-C) or return: a run cancelled there keeps its
#: pid, by which ``trilemma run`` names it; one cancelled in a loop that lives on (a server's)
#: gives its pid up, so that any process may resume it.
OWN_LOOP: contextvars.ContextVar[bool] = contextvars.ContextVar("trilemma_own_loop", default=False)


@dataclass(frozen=True, slots=True)
class Event:
    """Progress of a run, for a display."""

    kind: str
    """``step_done``, ``step_failed`` or ``call``."""
    step: str
    """The step concerned."""
    spent: float
    """Dollars spent so far."""
    done: int
    """Steps done so far."""


@dataclass(slots=True)  # not frozen: that quadruples its construction, once per step
class StepResult:
    """How a step ended (read-only by convention)."""

    status: str
    """done, failed, skipped (a dependency did not finish) or cancelled."""
    output: str | None = None
    """The accepted answer."""
    attempts: int = 0
    """Attempts made (a step taken from the journal: those that finished it)."""
    cost_usd: float = 0.0
    """Dollars billed to this step (a step taken from the journal: what it was billed when
    it finished, so that the steps' costs add up to the run's across a resume)."""
    error: str | None = None
    """Why it failed."""
    from_journal: bool = False
    """Taken from the journal (done before a resume), not run again."""


@dataclass(frozen=True, slots=True)
class RunResult:
    """The outcome of ``trilemma run`` (and ``resume``)."""

    run_id: str
    """The journal's key for the run."""
    status: str
    """ok, budget_exhausted, deadline or failed."""
    cost_usd: float
    """Dollars billed, over every session of the run."""
    latency_s: float
    """Wall-clock seconds of this session (on a virtual clock, its simulated seconds)."""
    calls: int
    """LLM calls sent (answered or not), over every session."""
    steps: dict[str, StepResult] = field(repr=False)
    """Every step's outcome, in spec order."""
    predicted: Estimate = field(repr=False)
    """The planner's estimate of the spec."""
    error: str | None = None
    """Why the run stopped, when it is not ok."""
    saved_usd: float = 0.0
    """Expected cost of the steps an early stop skipped."""
    journal: str = ""
    """The journal file."""
    cut: dict[str, int] = field(default_factory=dict)
    """Per step, its answers that stopped at ``max_tokens`` (cut text), over every session."""
    seed: int | None = None
    """The run's seed (the simulator's draws, a retry's jitter): ``--seed`` repeats them."""

    @property
    def outputs(self) -> dict[str, str]:
        """Accepted outputs of the steps that finished."""
        return {
            k: s.output
            for k, s in self.steps.items()
            if s.status == "done" and s.output is not None
        }

    def to_json(self) -> dict[str, Any]:
        """The contract of ``trilemma run --json`` (see DESIGN.md)."""
        p = self.predicted
        return {
            "run_id": self.run_id,
            "status": self.status,
            "cost_usd": round(self.cost_usd, 12),
            "latency_s": round(self.latency_s, 6),
            "calls": self.calls,
            "outputs": self.outputs,
            "steps": {
                k: {
                    "status": s.status,
                    "attempts": s.attempts,
                    "cost_usd": round(s.cost_usd, 12),
                    "error": s.error,
                    "from_journal": s.from_journal,
                }
                for k, s in self.steps.items()
            },
            "error": self.error,
            "saved_usd": round(self.saved_usd, 12),
            "predicted": p.headline(),
            "journal": self.journal,
            "seed": self.seed,
            "cut_at_max_tokens": self.cut,
        }


def writer_for(journal: Journal, routes: Iterable[Route]) -> JournalWriter:
    """The journal's writer for runs on ``routes``: a wider commit window when none may bill."""
    free = not any(r.external for r in routes)
    return JournalWriter(journal, FREE_COMMIT_S if free else GROUP_COMMIT_S)


def new_run_id() -> str:
    """Sortable and unique: UTC time, then random hex."""
    return time.strftime("%Y%m%dT%H%M%SZ", time.gmtime()) + "-" + secrets.token_hex(4)


def spec_json(wf: Workflow) -> str:
    """The validated spec as the journal keeps it: the fields that differ from their defaults.

    Loading it gives the same workflow (a tenth of the full dump's size, made in two
    thirds of its time): a 2,000-step spec is 90 kB rather than 930 kB.
    """
    return wf.model_dump_json(exclude_defaults=True)


def spec_hash(text: str) -> str:
    """A fingerprint of a spec's journal text."""
    return hashlib.sha256(text.encode()).hexdigest()


class _Stop(Exception):
    """Internal: the run is stopping; send nothing more."""


@dataclass
class Session:
    """Mutable state of one executing session."""

    guard: SpendGuard
    clock: Clock
    started: float = field(default_factory=loop_now)
    """The event loop's clock when the session began, which its latency counts from: its
    Clock's making, where the deadline is the session's own (:meth:`Session.within`)."""
    calls: int = 0
    stop: str | None = None
    stop_reason: str | None = None
    done: int = 0
    """Steps done so far."""
    results: dict[str, StepResult] = field(default_factory=dict)
    halted: asyncio.Event = field(default_factory=asyncio.Event)
    """Set when the run stops sending (a failed step, the ceiling, an early stop): a retry's
    backoff under way ends then, as the retry would not be sent."""
    shared: SharedSpend | None = None
    """A ceiling shared with runs in other processes, held as well as ``guard``'s."""
    cut: bool = False
    """An answer of this session stopped at ``max_tokens``."""
    sent: dict[str, int] = field(default_factory=dict)
    """Per step, its newest attempt with a call sent (or replayed from the journal): an
    attempt the ceiling or a stop cut before its first call is not counted as made."""
    cancelled: int = 0
    """Calls cancelled in flight (the deadline, an early stop)."""

    @classmethod
    def within(cls, guard: SpendGuard, deadline_s: float | None,
               shared: SharedSpend | None = None) -> Session:  # fmt: skip
        """A session under a deadline ``deadline_s`` from now (None: none) and its latency,
        counted from one instant."""
        clock = Clock(within=deadline_s)
        return cls(guard, clock, started=clock.started, shared=shared)

    async def reserve(self, amount: float) -> Reservation:
        """Hold a call's worst case under the run's ceiling and the shared one, or raise."""
        hold = self.guard.reserve(amount)
        await self._hold_shared(hold, stops=True)
        return hold

    async def hold_optional(self, amount: float) -> Reservation | None:
        """Hold an optional call's worst case (a hedge) if both ceilings have room, else
        None: a refusal here stops nothing, the call it would have raced goes on."""
        if not self.guard.fits(amount):
            return None
        hold = self.guard.reserve(amount)
        try:
            await self._hold_shared(hold, stops=False)
        except BudgetExhausted:
            return None
        return hold

    async def _hold_shared(self, hold: Reservation, *, stops: bool) -> None:
        """Hold ``hold``'s amount under the shared ceiling too, if there is one; a refusal
        releases the run's hold and, if it ``stops`` the run, counts as the run's own."""
        if self.shared is None:
            return
        try:
            hold.shared = await self.shared.reserve(hold.amount)
        except BaseException as exc:
            self.guard.release(hold)
            if stops and isinstance(exc, BudgetExhausted):
                self.guard.refused += 1  # the run, or its batch, stops as at its own ceiling
            raise

    def settle(self, hold: Reservation, cost: float) -> None:
        """The call answered and cost ``cost``: count it under each ceiling."""
        self.guard.settle(hold, cost)
        if hold.shared is not None and self.shared is not None:
            self.shared.settle(hold.shared, cost)

    def release(self, hold: Reservation) -> None:
        """The call returned only an error, or was not sent: nothing is billed."""
        self.guard.release(hold)
        if hold.shared is not None and self.shared is not None:
            self.shared.release(hold.shared)


class Executor:
    """Runs one workflow; build it with :func:`execute`."""

    def __init__(
        self,
        wf: Workflow,
        *,
        journal: Journal,
        run_id: str,
        inputs: Mapping[str, str],
        providers: Mapping[str, Provider],
        source: str,
        gates: dict[str, Check],
        seed: int | None,
        predicted: Estimate,
        on_event: Callable[[Event], None] | None = None,
        embedder: Embedder | None = None,
        tenant: str | None = None,
        limits: Mapping[str, Route] | None = None,
        writer: JournalWriter | None = None,
        shared_cache: SharedCache | None = None,
    ) -> None:
        self.wf = wf
        self.journal = journal
        # ``limits``: routes whose per-model limits this run shares (with the other runs of a
        # batch), as it may share their ``writer`` (which it then flushes but leaves open).
        self._routes = {n: limits[n].via(providers[n]) if limits else Route.of(m, providers[n])
                        for n, m in wf.models.items()}  # fmt: skip
        self._own_writer = writer is None
        self.writer = writer or writer_for(journal, self._routes.values())
        self.cache = Cache(self.writer, embedder, shared_cache)
        """The journal's cache; ``embedder`` embeds prompts for steps with a semantic cache,
        and ``shared_cache`` is a tier other processes see (the caller closes it)."""
        self.tenant = tenant
        """Whose cached answers the run may use and adds to (None: the journal's shared ones)."""
        self.run_id = run_id
        self.inputs = dict(inputs)
        self._values = {**{k: v or "" for k, v in wf.inputs.items()}, **self.inputs}
        """What a prompt's fields read when no step of that name has finished."""
        self._input_lines = [f"{k}: {v}" for k, v in self.inputs.items()]
        self.source = source
        self.gates = gates
        self._gate_thread = GateThread()
        """Where the spec's gates run."""
        self.on_event = on_event
        self.rng = random.Random(seed)
        self.seed = seed
        """Seeds the simulated classifier of a routed step (the simulator has its own)."""
        self.predicted = predicted
        self.resume_from: dict[str, tuple[int, int, float]] = {}
        """Per step: (the attempt to start at, attempts left, dollars its attempts were
        billed in earlier sessions), for a resumed run."""
        self.replay: dict[str, dict[str, Any]] = {}
        """Resumed: by key, the journaled calls a real endpoint answered in an attempt that
        was cut short (a crash, or the run stopped), which are not sent again."""
        self._unjudged: set[str] = set()
        """Keys of real models' answers journaled ahead of their attempt's verdict."""
        self.feedback_from: dict[str, tuple[str, str]] = {}
        """Resumed: per step, the answer its gate last rejected and why (as the journal
        keeps them), which its next attempt sends back to the model."""
        self.latency_before = 0.0
        """Seconds a resumed run spent running in its earlier sessions: its latency adds them."""
        self.now: Callable[[], float] = time.time
        """The journal's clock: the session's (:attr:`Clock.now`) once the run starts."""
        self.priority = remaining_path(wf, {r.id: r.latency_s for r in self.predicted.per_step})
        self.slots = PriorityLimiter(wf.concurrency)
        self._rank = lambda st: -self.priority[st.id]
        self._children: dict[str, list[Step]] = {st.id: [] for st in wf.steps}
        self._waiting: dict[str, int] = {}
        """Per step not yet started: dependencies not yet settled."""
        self._tasks: dict[str, asyncio.Task[None]] = {}
        """Steps running now."""
        self._group: asyncio.TaskGroup

    # ------------------------------------------------------------------ the run

    async def run(self, session: Session, done_before: Mapping[str, dict[str, Any]]) -> RunResult:
        s = session
        self.now = s.clock.now
        for step in self.wf.steps:
            prior = done_before.get(step.id)
            if prior is not None:
                s.results[step.id] = StepResult(
                    "done", prior["output"], prior["attempts"], prior["cost_usd"] or 0.0,
                    from_journal=True,
                )
                s.done += 1
        # A step starts when its last dependency settles: no task waits for another.
        for step in self.wf.steps:
            if step.id not in s.results:
                deps = set(step.after)
                for d in deps:
                    self._children[d].append(step)
                self._waiting[step.id] = sum(1 for d in deps if d not in s.results)
        ready = [st for st in self.wf.steps if self._waiting.get(st.id) == 0]
        bug: Exception | None = None
        try:
            async with asyncio.timeout_at(s.clock.due):
                async with asyncio.TaskGroup() as tg:
                    self._group = tg
                    self._start(s, ready)
        except TimeoutError:
            s.stop, s.stop_reason = "deadline", _cut_by_deadline(s)
        except ExceptionGroup as group:  # not a failed call: a bug in a provider or callback
            bug = group.exceptions[0]
            s.stop, s.stop_reason = "failed", f"{type(bug).__name__} raised in the run: {bug}"
        except asyncio.CancelledError:  # stopped from outside: Ctrl-C, a task cancelled
            if not OWN_LOOP.get():  # left running for `resume`, by any process
                self.journal.update_run(self.run_id, pid=None)
            raise
        finally:  # the run's time ends with its steps (the deadline's scope), before its closing
            took = asyncio.get_running_loop().time() - s.started  # a virtual clock's in a trial
            self._gate_thread.close()
            await (self.writer.aclose() if self._own_writer else self.writer.flush())
        result = await self._finish(s, self.latency_before + took)
        if bug is not None:  # the journal says failed and why; the caller gets the error itself
            raise bug
        return result

    def _start(
        self, s: Session, ready: list[Step], current: asyncio.Task[None] | None = None
    ) -> Step | None:
        """Start the steps whose dependencies have all settled (longest remaining path first).

        A step whose dependency did not finish, or that becomes ready once the run is
        stopping, is skipped, and so in turn are the steps below it. Given ``current``
        (the task of a step that just finished), the first step to start runs on in that
        task rather than a new one, and is returned.
        """
        todo = sorted(ready, key=self._rank) if len(ready) > 1 else ready
        keep = None
        while todo:
            step = todo.pop(0)
            if s.stop is None and all(s.results[d].status == "done" for d in step.after):
                if current is not None and keep is None:
                    keep, self._tasks[step.id] = step, current
                    continue
                try:
                    self._tasks[step.id] = self._group.create_task(
                        self._steps(s, step), name=step.id
                    )
                except RuntimeError:  # the group is already shutting down (the deadline)
                    break
                continue
            s.results[step.id] = StepResult("skipped")
            todo += self._released(step.id)
        return keep

    def _released(self, step_id: str) -> list[Step]:
        """The steps that ``step_id`` settling leaves with nothing to wait for."""
        out = []
        for child in self._children[step_id]:
            self._waiting[child.id] -= 1
            if self._waiting[child.id] == 0:
                out.append(child)
        return out

    async def _finish(self, s: Session, latency: float) -> RunResult:
        unsettled = [step.id for step in self.wf.steps if step.id not in s.results]
        if unsettled and s.stop == "deadline":  # cancelled under way: what they sent, billed
            made = sent_by_step(self.journal.calls(self.run_id))  # earlier sessions too
            for sid in unsettled:
                s.results[sid] = StepResult("cancelled", None, *made.get(sid, (0, 0.0)))
        for sid in unsettled:
            s.results.setdefault(sid, StepResult("skipped"))
        status = self._status(s)
        results = {st.id: s.results[st.id] for st in self.wf.steps}
        saved = 0.0
        if s.stop == "early":
            saved = sum(
                r.cost_expected for r in self.predicted.per_step if results[r.id].status != "done"
            )
        cost, calls = self.journal.totals(self.run_id)
        # which steps' answers were cut, from the journal (a resumed run's earlier sessions
        # too), read only where there may be any: most runs have none
        resumed = bool(self.resume_from) or any(r.from_journal for r in results.values())
        cut = self.journal.cut_answers(self.run_id) if s.cut or resumed else {}
        error = None if status == "ok" else s.stop_reason
        self.journal.update_run(
            self.run_id, status=status, finished_at=self.now(), cost_usd=cost, latency_s=latency,
            calls=calls, error=error,
        )  # fmt: skip
        return RunResult(self.run_id, status, cost, latency, calls, results, self.predicted,
                         error, saved, str(self.journal.path), cut, self.seed)  # fmt: skip

    def _status(self, s: Session) -> str:
        if s.stop in ("budget_exhausted", "deadline", "failed"):
            return s.stop
        if s.stop == "early" or all(
            r.status == "done" or (r.status == "failed" and self._lost_bet(k))
            for k, r in s.results.items()
        ):
            return "ok"
        return "failed"

    def _lost_bet(self, step_id: str) -> bool:
        """The stop_when step, with nothing after it: its failure only means no early stop."""
        return step_id == self.wf.stop_when and not self._children[step_id]

    def _halt(self, s: Session, kind: str, reason: str) -> None:
        if s.stop is None:
            s.stop, s.stop_reason = kind, reason
            s.halted.set()

    # ------------------------------------------------------------------ a step

    async def _steps(self, s: Session, step: Step | None) -> None:
        """Run a step, then on in the same task to a step it leaves ready (a chain needs one task)."""
        me = asyncio.current_task()
        while step is not None:
            try:
                result = await self._attempts(s, step)
            finally:
                del self._tasks[step.id]
            s.results[step.id] = result
            if result.status == "done":
                s.done += 1
            self._emit("step_done" if result.status == "done" else "step_failed", step.id, s)
            if result.status == "done" and step.id == self.wf.stop_when:
                self._halt(s, "early", f"step {step.id} passed its gate: stopped early")
                for task in list(self._tasks.values()):
                    task.cancel()
            ready = self._released(step.id)
            step = self._start(s, ready, me) if ready else None

    async def _attempts(self, s: Session, step: Step) -> StepResult:
        base = self._messages(step, s)
        state: dict[str, Any] = {"attempt": 0, "feedback": self.feedback_from.get(step.id),
                                 "pending": [], "cost": 0.0}  # fmt: skip
        lookup = settings = None
        rule = step.cache_rule
        if rule is not None:
            settings = step_settings(self.wf, step)
            lookup = await self.cache.lookup(settings, base, rule.similarity, self.tenant)
            if lookup.hit is not None:
                return self._served(step, base, lookup.hit)
        first_no, left, state["cost"] = self.resume_from.get(step.id, (1, step.retries + 1, 0.0))
        state["attempt"] = first_no
        try:
            try:  # the first attempt directly: the common case, kept cheap
                answer = await self._attempt(s, step, base, state)
            except Exception as exc:
                if left <= 1 or not getattr(exc, "retryable", False):
                    raise
                answer = await self._retried(s, step, base, state, first_no, left - 1, exc)
        except _Stop:
            return StepResult("skipped", attempts=_made(s, step.id, state["attempt"]),
                              cost_usd=state["cost"])  # fmt: skip
        except DeadlineExceeded:  # passed before its call went out: cut as the deadline cuts
            self._halt(s, "deadline", _cut_by_deadline(s))  # what is in flight, unsettled
            raise asyncio.CancelledError from None
        except (BudgetExhausted, QuotaExceeded) as exc:
            why = "the endpoint refused for money: " if isinstance(exc, QuotaExceeded) else ""
            msg = f"step {step.id}: {why}{exc}"
            self._halt(s, "budget_exhausted", msg)
            return await self._failed(s, step, state, msg, "skipped")
        except (ProviderError, GateRejected, RunError, SetupError) as exc:  # Setup: shared store
            msg = f"step {step.id}: {type(exc).__name__}: {exc}"
            if not (self._lost_bet(step.id) and isinstance(exc, (ProviderError, GateRejected))):
                self._halt(s, "failed", msg)
            return await self._failed(s, step, state, msg, "failed")
        cost = state["cost"]
        done = {
            "status": "done",
            "output": answer.text,
            "attempts": state["attempt"],
            "cost_usd": cost,
        }
        self.writer.defer(
            "attempt_finished", self.run_id, step.id, state["pending"], rejected=False, step=done
        )
        if lookup is not None and settings is not None:  # with its tokens: what a hit saves
            calls = [f for _, f in state["pending"]]
            self.cache.store(settings, base, answer.text, step.model, lookup.vector,
                             _tokens(calls, "prompt_tokens"), _tokens(calls, "completion_tokens"),
                             self.tenant)  # fmt: skip
        return StepResult("done", answer.text, state["attempt"], cost)

    async def _retried(
        self, s: Session, step: Step, base: list[Message], state: dict[str, Any],
        first_no: int, retries: int, first: BaseException,
    ) -> Answer:  # fmt: skip
        """The retries after a failed first attempt, through tenacity.

        A resumed step starts at the attempt the journal says comes next (re-sending one
        that was in flight under its own idempotency keys) with the retries it has left.
        """
        retry = retrying(retries, self.rng, after_failure=first, interrupt=s.halted)
        async for attempt in retry:
            with attempt:
                state["attempt"] = first_no + attempt.retry_state.attempt_number
                return await self._attempt(s, step, base, state)
        raise AssertionError("unreachable: tenacity re-raises the last error")

    async def _failed(
        self,
        s: Session,
        step: Step,
        state: dict[str, Any],
        msg: str,
        status: str,
    ) -> StepResult:
        cost = state["cost"]
        made = _made(s, step.id, state["attempt"])
        row = {"status": status, "attempts": made, "cost_usd": cost, "error": msg}
        self.writer.defer("step_finished", self.run_id, step.id, row)
        return StepResult(status, None, made, cost, msg)

    async def _attempt(
        self, s: Session, step: Step, base: list[Message], state: dict[str, Any]
    ) -> Answer:
        if s.stop is not None:
            raise _Stop
        attempt = state["attempt"]
        messages = list(base)
        if state["feedback"]:
            prev, reason = state["feedback"]
            messages += [{"role": "assistant", "content": prev},
                         {"role": "user", "content": f"Your answer was rejected: {reason}. Answer again."}]  # fmt: skip
        pending: list[tuple[str, dict[str, Any]]] = []  # answered calls, committed with the verdict
        counter = iter(range(1, 1_000_000))

        model = self.wf.attempt_model(step, attempt)  # a cascade climbs a model per attempt
        runs = step  # a routed step runs as the branch its classifier picks

        tickets: list[list[bool]] = []  # slots taken for calls whose tasks have not run yet

        def call(msgs: Sequence[Message], role: str) -> Coroutine[Any, Any, Completion]:
            # A slot is taken now, if one is free, in this step's turn: the calls a step sends
            # together are tasks that first run a turn later, after the first calls of the
            # other steps ready with it, which would take the slots first whatever the
            # priority. The call keeps the slot; one whose task never ran is given back below.
            ticket = [self.slots.try_acquire()]
            if ticket[0]:
                tickets.append(ticket)
            return self._call(s, runs, model, attempt, next(counter), role, msgs, pending,
                              ticket=ticket)  # fmt: skip

        try:
            try:
                if step.route is not None:  # classify first: the one call so far
                    asked = [*messages, {"role": "user", "content": route_prompt(step.route)}]
                    shares = {k: b.share for k, b in step.route.items()}
                    sim = (simulated_pick(self.seed, f"{step.id}:{attempt}:route", shares), "unsure")
                    picked = await self._call(s, step, model, attempt, next(counter), "route",
                                              asked, pending, sim)  # fmt: skip
                    label = pick_route(picked.text, step.route)
                    pending[-1][1]["role"] = f"route: {label}"  # the ledger says which way it went
                    runs = step.branch_step(label)
                    model = runs.model
                answer = await run_kind(runs, messages, call)
            finally:  # what this attempt billed, whatever happens next
                state["cost"] += math.fsum([f["cost_usd"] for _, f in pending])
                for ticket in tickets:  # a call cancelled before its task ran
                    if ticket[0]:
                        ticket[0] = False
                        self.slots.release()
            if answer.verdict is False:
                raise GateRejected("the answer is wrong (the simulator's check)")
            gate = self.gates.get(step.id)
            if gate is not None:
                try:  # off the loop: the user's code may take its time (see GateThread)
                    await self._gate_thread.check(gate, answer.text)
                except GateRejected as exc:
                    if not answer.cut:
                        raise
                    cap = runs.max_tokens or self._routes[model].profile.max_tokens
                    raise GateRejected(f"{exc.reason} (the answer stopped at max_tokens, {cap} "
                                       "tokens: answer shorter, or raise the step's "
                                       "max_tokens)") from exc  # fmt: skip
            if step.extract == "number":
                answer = _number(answer)
        except GateRejected as exc:
            said = REJECTED + exc.reason  # why, in the ledger beside each of its calls
            for _, fields in pending:
                fields["error"] = f"{fields['error']}; {said}" if fields.get("error") else said
            self.writer.defer("attempt_finished", self.run_id, step.id, pending, rejected=True)
            if step.gate is None or step.gate.feedback:
                state["feedback"] = (answer.text, exc.reason)
            raise
        except BaseException as exc:  # a call failed, the gate broke, or we were cancelled
            if isinstance(exc, BudgetExhausted) or (isinstance(exc, _Stop) and s.stop != "early"):
                # The run stops before this attempt could finish (its next call did not fit
                # the ceiling, or another step stopped the run; not an early stop, which ends
                # it ok): real models' answers stay without a verdict, for a resume to go on
                # from rather than pay for again.
                pending = [(k, f) for k, f in pending if k not in self._unjudged]
            if pending:
                self.writer.defer("attempt_finished", self.run_id, step.id, pending, rejected=False)
            raise
        state["pending"] = pending
        return answer

    # ------------------------------------------------------------------ a call

    async def _call(
        self, s: Session, step: Step, model: str, attempt: int, index: int, role: str,
        messages: Sequence[Message], pending: list[tuple[str, dict[str, Any]]],
        sim: tuple[str, str] | None = None, ticket: list[bool] | None = None,
    ) -> Completion:  # fmt: skip
        """One call, journaled and billed; ``sim``: the simulator's right and wrong answers;
        ``ticket``: ``[True]`` when a global slot was taken for it already."""
        route = self._routes[model]
        profile = route.profile
        key = f"{step.id}:{attempt}:{index}"
        ok, bad = sim or (_fill(step.sim.ok, step.id, attempt), _fill(step.sim.bad, step.id, attempt))
        request = Request(
            model, tuple(messages), step.max_tokens or profile.max_tokens, profile.timeout_s,
            f"{self.run_id}:{key}", key, profile.temperature, route.stop, self.wf.p_ok(step, model),
            ok, bad, f"{step.id}:{attempt}:majority" if step.by_majority else "",
        )  # fmt: skip
        if self.replay:  # a resumed attempt: what its endpoint answered before it was cut short
            kept = self.replay.pop(request.idempotency_key, None)
            if kept is not None:
                if ticket is not None and ticket[0]:
                    ticket[0] = False
                    self.slots.release()
                return self._replayed(kept, step.id, pending, s)
        prio = -self.priority[step.id]
        if ticket is not None and ticket[0]:
            ticket[0] = False  # the slot taken for it is its own now
        else:
            await self.slots.acquire(prio)
        try:
            if route.limited:
                await route.acquire(request, prio)
            try:
                if s.stop is not None:
                    raise _Stop
                s.clock.check()
                amount = worst_case_cost(profile, request)
                # without a shared ceiling, no await: this line runs once per call
                hold = s.guard.reserve(amount) if s.shared is None else await s.reserve(amount)
                row = {
                    "run_id": self.run_id, "step_id": step.id, "attempt": attempt, "call": index,
                    "role": role, "model": model, "idempotency_key": request.idempotency_key,
                    "reserved_usd": hold.amount, "request_json": messages_json(request.messages),
                    "started_at": self.now(),
                }  # fmt: skip
                if route.external:  # it may bill: journal the call before sending it
                    await self._write_ahead(row, hold, s)
                else:  # the simulator bills nobody: its record rides the next commit
                    self.writer.defer("call_started", row)
                s.calls += 1
                s.sent[step.id] = attempt
                key = request.idempotency_key
                if profile.hedge_after_s is None:
                    completion = await self._send(request, route, hold, s)
                else:
                    completion, hold, key = await self._hedged(request, route, hold, s, row,
                                                               pending, prio)  # fmt: skip
            finally:
                route.release()
        finally:
            self.slots.release()
        cost = cost_of(profile, completion.usage, hold.amount)
        s.settle(hold, cost)
        u = completion.usage
        if completion.finish_reason == CUT:
            s.cut = True
        note = bill_note(profile, u, hold.amount, cost)
        answered = {
            "prompt_tokens": u.prompt_tokens, "completion_tokens": u.completion_tokens,
            "cached_tokens": u.cached_tokens, "cost_usd": cost, "latency_s": completion.latency_s,
            "response": completion.text, "finish_reason": completion.finish_reason,
            "finished_at": self.now(), "error": note,
        }  # fmt: skip
        pending.append((key, answered))
        if route.external and key == request.idempotency_key and completion.verdict is None:
            # A real model's billed answer rides the next commit (at the latest the
            # write-ahead record of the next call sent), its verdict following with its
            # attempt's, so that a crash in a debate's later rounds does not ask it, and pay
            # for it, again. (A hedge's copy that won is kept with its attempt, as before; a
            # simulated answer, whose verdict the journal does not keep, is sent again.)
            self.writer.defer("call_finished", key, answered)
            self._unjudged.add(key)
        self._emit("call", step.id, s)
        return completion

    def _replayed(
        self, row: dict[str, Any], step_id: str, pending: list[tuple[str, dict[str, Any]]],
        s: Session,
    ) -> Completion:  # fmt: skip
        """A call of a resumed attempt that its endpoint answered before the attempt was cut
        short: its journaled answer, not sent again nor billed again (its bill is in the
        run's spend)."""
        kept = ("prompt_tokens", "completion_tokens", "cached_tokens", "cost_usd", "latency_s",
                "response", "finish_reason", "finished_at", "error")  # fmt: skip
        pending.append((row["idempotency_key"], {k: row[k] for k in kept}))
        s.sent[step_id] = int(row["attempt"])
        if row["finish_reason"] == CUT:
            s.cut = True
        self._emit("call", step_id, s)
        usage = Usage(row["prompt_tokens"], row["completion_tokens"], row["cached_tokens"])
        return Completion(row["response"], usage, row["latency_s"] or 0.0,
                          finish_reason=row["finish_reason"])  # fmt: skip

    async def _send(
        self, request: Request, route: Route, hold: Reservation, s: Session
    ) -> Completion:
        """The provider's answer; a failure releases the call's reservation and is journaled."""
        call_id = request.idempotency_key
        try:
            return await route.complete(request)
        except ProviderError as exc:
            s.release(hold)
            self._record_error(call_id, exc.kind, str(exc))
            raise
        except asyncio.CancelledError:
            self._cancelled(call_id, route, hold, s)
            raise

    async def _hedged(
        self, request: Request, route: Route, hold: Reservation, s: Session, row: dict[str, Any],
        pending: list[tuple[str, dict[str, Any]]], prio: float,
    ) -> tuple[Completion, Reservation, str]:  # fmt: skip
        """The call, raced by a copy of it sent if no answer has come after ``hedge_after_s``.

        The copy takes a global slot if one is free (calls waiting for one go first: no
        slot, no copy), the model's rate limits, holds its own worst case (no room under a
        ceiling: no copy, and the call goes on alone) and is journaled as any call, its
        key the call's with ``:h``. The first answer wins; the other copy is cancelled and
        billed at its reservation (an endpoint may bill what its client abandoned), its
        ledger row ``hedged`` with the seconds it was in flight. A copy that fails leaves
        the race to the other. Returns the answer, and the hold and key of the copy that
        gave it.
        """
        first = asyncio.ensure_future(route.complete(request))
        copy: asyncio.Task[Completion] | None = None
        copy_hold: Reservation | None = None
        copy_req = replace(request, idempotency_key=request.idempotency_key + ":h",
                           call_key=request.call_key + ":h")  # fmt: skip
        loop = asyncio.get_running_loop()
        racing: dict[asyncio.Task[Completion], tuple[Request, Reservation, float]] = {
            first: (request, hold, loop.time())
        }
        try:
            done, _ = await asyncio.wait((first,), timeout=route.profile.hedge_after_s)
            if not done and s.stop is None:
                copy_hold = await self._hedge(copy_req, route, s, row, prio)
                if copy_hold is not None:
                    copy = asyncio.ensure_future(route.complete(copy_req))
                    racing[copy] = (copy_req, copy_hold, loop.time())
            failure: ProviderError | None = None
            while racing:
                done, _ = await asyncio.wait(racing, return_when=asyncio.FIRST_COMPLETED)
                for task in done:
                    req, held, _ = racing.pop(task)
                    exc = task.exception()
                    if exc is None:
                        self._lose(racing, pending, s)
                        return task.result(), held, req.idempotency_key
                    s.release(held)
                    if not isinstance(exc, ProviderError):  # a bug: ends the run as itself
                        self._record_error(req.idempotency_key, "cancelled", repr(exc), None)
                        raise exc
                    self._record_error(req.idempotency_key, exc.kind, str(exc))
                    failure = failure or exc
            assert failure is not None
            raise failure
        except BaseException:  # cancelled (the deadline, an early stop) or a bug
            for task, (req, held, _) in racing.items():
                task.cancel()
                task.add_done_callback(_retrieved)
                self._cancelled(req.idempotency_key, route, held, s)
            raise
        finally:
            if copy_hold is not None:
                self.slots.release()
                if route.limited:
                    route.release()

    async def _hedge(
        self, request: Request, route: Route, s: Session, row: dict[str, Any], prio: float
    ) -> Reservation | None:
        """Ready the hedge of a call: a global slot, its rate limits, its hold and its journal
        row; None (holding nothing) when no slot is free or a ceiling has no room for it."""
        if not self.slots.try_acquire():
            return None
        hold: Reservation | None = None
        limited = False
        try:
            if route.limited:
                await route.acquire(request, prio)
                limited = True
            hold = await s.hold_optional(worst_case_cost(route.profile, request))
            if hold is None:
                return None
            hedge_row = {**row, "role": f"{row['role']} (hedge)", "reserved_usd": hold.amount,
                         "idempotency_key": request.idempotency_key, "started_at": self.now()}  # fmt: skip
            if route.external:
                await self._write_ahead(hedge_row, hold, s)  # a failure releases the hold
            else:
                self.writer.defer("call_started", hedge_row)
        except BaseException:
            hold = None
            raise
        finally:
            if hold is None:  # no copy: give back what it took
                if limited:
                    route.release()
                self.slots.release()
        s.calls += 1
        return hold

    async def _write_ahead(self, row: dict[str, Any], hold: Reservation, s: Session) -> None:
        """Commit a call's record before it is sent; if that fails, release its hold (and a
        cancellation journals the call unsent: its record may still land)."""
        try:
            await self.writer.write("call_started", row)
        except BaseException as exc:
            s.release(hold)
            if isinstance(exc, asyncio.CancelledError):
                self._record_error(row["idempotency_key"], "unsent", "cancelled before it was sent")
            raise

    @staticmethod
    def _lose(
        racing: dict[asyncio.Task[Completion], tuple[Request, Reservation, float]],
        pending: list[tuple[str, dict[str, Any]]], s: Session,
    ) -> None:  # fmt: skip
        """Cancel the copy still racing, if any, and bill it at its reservation (its row
        commits with the attempt's answered calls, keeping its outcome; its latency is the
        time it was in flight)."""
        now = asyncio.get_running_loop().time()
        for task, (req, held, started) in racing.items():
            task.cancel()
            task.add_done_callback(_retrieved)
            s.settle(held, held.amount)
            pending.append((req.idempotency_key, {
                "outcome": "hedged", "cost_usd": held.amount, "latency_s": now - started,
                "finished_at": s.clock.now(),
                "error": "the other copy answered first; cancelled, billed at its reservation",
            }))  # fmt: skip
        racing.clear()

    def _cancelled(self, call_id: str, route: Route, hold: Reservation, s: Session) -> None:
        """A call cancelled in flight (the deadline, an early stop). An endpoint that bills
        (``external``) may bill what it generated before the hang-up: billed at its
        reservation, the most it could be, as the gateway bills a client that leaves. The
        simulator bills nobody: its hold is released, the cost unknown (NULL)."""
        s.cancelled += 1
        if route.external:
            s.settle(hold, hold.amount)
            self._record_error(call_id, "cancelled", "cancelled while in flight: billed at its "
                               "reservation, as the endpoint may bill what it generated",
                               hold.amount)  # fmt: skip
        else:
            s.release(hold)
            self._record_error(call_id, "cancelled", "cancelled while in flight", None)

    def _record_error(self, call_id: str, kind: str, msg: str, cost: float | None = 0.0) -> None:
        self.writer.defer("call_finished", call_id, {
            "outcome": kind, "error": msg[:500], "cost_usd": cost, "finished_at": self.now(),
        })  # fmt: skip

    # ------------------------------------------------------------------ cache

    def _served(self, step: Step, base: list[Message], hit: Hit) -> StepResult:
        """A step done from the cache: one ledger row (role ``cache``, billed nothing)."""
        row = {
            "run_id": self.run_id, "step_id": step.id, "attempt": 1, "call": 1, "role": "cache",
            "model": step.model, "idempotency_key": f"{self.run_id}:{step.id}:cache",
            "reserved_usd": 0.0, "request_json": messages_json(base), "started_at": self.now(),
        }  # fmt: skip
        self.writer.defer("call_started", row)
        fields = {"cost_usd": 0.0, "latency_s": hit.latency_s, "cache_hit": 1,
                  "response": hit.response, "prompt_tokens": hit.prompt_tokens,
                  "completion_tokens": hit.completion_tokens, "cache_similarity": hit.similarity,
                  "finished_at": self.now()}  # fmt: skip
        done = {"status": "done", "output": hit.response, "attempts": 1, "cost_usd": 0.0}
        self.writer.defer("attempt_finished", self.run_id, step.id,
                          [(row["idempotency_key"], fields)], rejected=False, step=done)  # fmt: skip
        return StepResult("done", hit.response, 1, 0.0)

    # ------------------------------------------------------------------ helpers

    def _messages(self, step: Step, s: Session) -> list[Message]:
        results = s.results

        def value(name: str) -> str:
            out = results.get(name)
            return (out.output or "") if out is not None else self._values[name]

        if step.prompt is not None or step.system:
            values = {n: value(n) for n in step.placeholders()}
        if step.prompt is not None:
            prompt = render_template(step.prompt, values)
        else:
            lines = self._input_lines + [f"{d} said: {value(d)}" for d in step.after]
            prompt = DEFAULT_PROMPT.format(step=step.id, context="\n".join(lines))
        messages: list[Message] = []
        if step.system:
            messages.append({"role": "system", "content": render_template(step.system, values)})
        messages.append({"role": "user", "content": prompt})
        return messages

    def _emit(self, kind: str, step: str, s: Session) -> None:
        if self.on_event is not None:
            self.on_event(Event(kind, step, s.guard.spent, s.done))


def _number(answer: Answer) -> Answer:
    """The number an answer gives, as what goes downstream (``extract: number``)."""
    from trilemma.experiments.tasks import final_number

    value = final_number(answer.text)
    if value is None:
        raise GateRejected("the answer must contain a number")
    return Answer(value, answer.verdict)


def _retrieved(task: asyncio.Future[Any]) -> None:
    """Take a cancelled copy's outcome, so that asyncio does not log it as never retrieved."""
    if not task.cancelled():
        task.exception()


def _made(s: Session, step_id: str, attempt: int) -> int:
    """The attempts a step made when it stopped at ``attempt``: that one only if one of its
    calls was sent (a call the ceiling refused, or a stop came before, never was)."""
    return attempt if s.sent.get(step_id) == attempt else attempt - 1


def _tokens(calls: list[dict[str, Any]], field: str) -> int | None:
    """The tokens an accepted attempt's answered calls used, or None when a call did not say."""
    counts = [c[field] for c in calls if c.get("outcome") != "hedged"]
    return None if None in counts else sum(counts)


def _fill(template: str, step: str, attempt: int) -> str:
    """A simulated answer: ``{step}`` and ``{attempt}`` replaced, other braces kept (JSON)."""
    return template.replace("{step}", step).replace("{attempt}", str(attempt))


def _cut_by_deadline(s: Session) -> str:
    """Why a run's deadline stopped it: the calls in flight it cut (none: it passed between
    calls, in a retry's wait, say), or none sent at all (the deadline had passed when the
    session began, or left less time than a first call took to go out: a resume's
    ``--deadline`` given too short says which)."""
    if s.cancelled:
        were = "was" if s.cancelled == 1 else "were"
        return f"the run's deadline passed; {counted(s.cancelled, 'call')} in flight {were} cancelled"
    if s.calls:
        return "the run's deadline passed between calls (none was in flight)"
    due, began = s.clock.due, s.clock.started
    if due is None or due <= began:
        return ("the run's deadline had passed before anything was sent; a resume takes a new "
                "one with --deadline SECONDS")  # fmt: skip
    left = due - began
    gave = f"{left:.3g}s" if left >= 1 else f"{left * 1000:.2g} ms"
    return (f"the run's deadline passed before any call was sent (it left {gave}); a resume "
            "takes a longer one with --deadline SECONDS")  # fmt: skip
