"""Where runs begin and resume: inputs, gates and providers set up, the journal told.

:func:`execute` starts a run; :func:`resume` finishes an interrupted one. Both hand
the work to :class:`~trilemma.run.executor.Executor`.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import gc
import json
import math
import os
import time
from collections.abc import Callable, Coroutine, Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, ParamSpec, TypeVar

from trilemma import _FROZEN_AT_IMPORT
from trilemma._proc import pid_alive
from trilemma._tasks import VirtualClockLoop, in_turns, run_whole, virtual_time
from trilemma.cache.semantic import Embedder, default_embedder
from trilemma.cache.shared import SharedCache
from trilemma.errors import UsageError
from trilemma.journal.store import (
    Journal,
    JournalWriter,
    call_outcome,
    dumps,
    overrides_of,
    rejection,
)
from trilemma.plan.estimate import Estimate, estimate
from trilemma.providers.base import Provider
from trilemma.providers.sim import SimProvider
from trilemma.run.budget import Clock, SpendGuard
from trilemma.run.executor import (
    OWN_LOOP,
    Event,
    Executor,
    RunResult,
    Session,
    new_run_id,
    spec_hash,
    spec_json,
    writer_for,
)
from trilemma.run.gates import Check, build_gate
from trilemma.run.retry import check_simulated, check_time_scale
from trilemma.run.routes import Route
from trilemma.run.shared_budget import SharedCeiling, SharedSpend
from trilemma.run.steps import answer_of
from trilemma.spec import ModelProfile, Workflow, load_workflow, workflow_from_dict
from trilemma.spec.load import not_text_at

__all__ = [
    "blocking",
    "build_gates",
    "build_providers",
    "cache_tier",
    "changed_steps",
    "check_inputs",
    "check_tenant",
    "close_parts",
    "close_providers",
    "collector_spared",
    "embedder_for",
    "execute",
    "execute_async",
    "execute_many",
    "execute_many_async",
    "open_run",
    "providers_for",
    "refuse_undeclared",
    "reopen_run",
    "resume",
    "resume_async",
    "shared_label",
    "shared_of",
    "shared_spend",
    "still_running",
    "wants_embedder",
]


def refuse_undeclared(
    names: Iterable[str], wf: Workflow, source: str, given_as: str = "--input "
) -> None:
    """UsageError for the first of ``names`` that ``wf`` declares no input of; ``given_as``
    starts the message (a flag, a file's line)."""
    unknown = next((k for k in names if k not in wf.inputs), None)
    if unknown is not None:
        declared = ", ".join(sorted(wf.inputs)) or "none"
        raise UsageError(
            f"{given_as}{unknown}: {source} declares no input {unknown!r} (declared: {declared})"
        )


def check_inputs(
    wf: Workflow, given: Mapping[str, str], source: str, given_as: str = "--input "
) -> dict[str, str]:
    """The run's inputs: declared defaults filled, unknown or missing ones refused.

    ``given_as`` starts an error message: where the inputs came from (a flag, a file's line).
    """
    refuse_undeclared(given, wf, source, given_as)
    for key, value in given.items():
        at = not_text_at(value)
        if at is not None:  # bytes that were not UTF-8, or a \ud800 escape
            raise UsageError(
                f"{given_as}{key}: holds {value[at]!r}, which is not a character (bytes "
                "that are not UTF-8, or half of a surrogate pair); give the value as UTF-8 text"
            )
    values = {k: v for k, v in wf.inputs.items() if v is not None} | dict(given)
    for i, step in enumerate(wf.steps):
        for field, name in step.placeholder_fields():
            if name in wf.inputs and name not in values:
                raise UsageError(
                    f"{given_as}{name}=...: {source}: steps[{i}].{field} uses input {name!r}, "
                    "which was not given and has no default"
                )
    return values


#: Longest tenant name: it is a label, not a payload.
MAX_TENANT = 200


def check_tenant(tenant: str | None) -> str | None:
    """A run's tenant, refused when empty, too long or holding control characters."""
    if tenant is not None and not (0 < len(tenant) <= MAX_TENANT and tenant.isprintable()):
        raise UsageError(
            f"--tenant {tenant!r}: give a name of 1 to {MAX_TENANT} printable characters "
            "(the tenant whose cached answers the run may use)"
        )
    return tenant


def build_providers(
    wf: Workflow, seed: int | None, overrides: Mapping[str, Provider] | None = None
) -> dict[str, Provider]:
    """One provider per model profile: the simulator, or an OpenAI-compatible endpoint."""
    return providers_for(wf.models, seed, overrides)


def providers_for(
    models: Mapping[str, ModelProfile],
    seed: int | None = None,
    overrides: Mapping[str, Provider] | None = None,
) -> dict[str, Provider]:
    """One provider per profile (the simulator's shared, seeded by ``seed``), ``overrides`` first."""
    sim = SimProvider(seed)
    out: dict[str, Provider] = {}
    for name, profile in models.items():
        if overrides and name in overrides:
            out[name] = overrides[name]
        elif profile.runs_on_simulator:
            out[name] = sim
        else:
            from trilemma.providers.openai import OpenAIProvider  # the SDK loads only when used

            out[name] = OpenAIProvider(name, profile)
    return out


def build_gates(wf: Workflow, source: str) -> dict[str, Check]:
    """Every step's gate, imported now so that a bad reference fails before spending."""
    folder = Path(source).parent if source and not source.startswith("<") else None
    return {
        step.id: build_gate(step.gate, source, f"steps[{i}].gate", folder)
        for i, step in enumerate(wf.steps)
        if step.gate is not None
    }


def wants_embedder(wf: Workflow) -> bool:
    """Whether a step has a semantic cache, so that the run needs the embedding model."""
    return any(step.cache_rule and step.cache_rule.similarity for step in wf.steps)


def embedder_for(wf: Workflow, given: Embedder | None = None) -> Embedder | None:
    """The embedder for the steps with a semantic cache, loaded now (None if there are none).

    Raises SetupError, before anything is spent, when the ``semantic`` extra is missing.
    """
    if not wants_embedder(wf):
        return None
    return given if given is not None else default_embedder()


_P = ParamSpec("_P")
_R = TypeVar("_R")


def blocking(work: Callable[_P, Coroutine[Any, Any, _R]]) -> Callable[_P, _R]:
    """``work`` (``execute_async``, say) as a function that runs it to the end in an event
    loop of its own, with the heap it starts with spared the collector's passes.

    Called where a loop already runs (a notebook, an async server), it raises UsageError
    naming the coroutine to await instead; ``asyncio.run`` would fail with a RuntimeError.
    Given ``time_scale=0``, the loop it makes keeps a virtual clock.
    """
    name = work.__name__.removesuffix("_async")

    @functools.wraps(work)
    def run(*args: _P.args, **kwargs: _P.kwargs) -> _R:
        try:
            asyncio.get_running_loop()
        except RuntimeError:  # none: ours to make
            pass
        else:
            raise UsageError(
                f"{name}() runs an event loop of its own, and this thread already runs one (a "
                f"notebook, an async server): use `await trilemma.{work.__name__}(...)` there"
            )
        coro = work(*args, **kwargs)  # (a TypeError for arguments it does not take)
        own = OWN_LOOP.set(True)  # the task the runner makes sees it
        clock = virtual_time if kwargs.get("time_scale") == 0 else contextlib.nullcontext
        try:
            with collector_spared(), clock():
                return run_whole(coro)
        finally:
            OWN_LOOP.reset(own)

    run.__name__ = run.__qualname__ = name
    run.__doc__ = (
        f"Blocking :func:`{work.__name__}`: the same arguments and result, in an event loop "
        f"of its own.\n\n{work.__doc__}"
    )
    return run


def check_parallel(parallel: int) -> None:
    """Refuse fewer than one run at a time (``--parallel``)."""
    if parallel < 1:
        raise UsageError(f"--parallel {parallel}: give 1 or more runs at a time")


def check_clock(wf: Workflow, time_scale: float) -> None:
    """Refuse a time factor outside (0, 1], or 0 (a virtual clock) where the running loop
    keeps none or a model is a real endpoint, whose answers a virtual clock would skip past."""
    check_time_scale(time_scale, virtual=True)
    if time_scale == 0 and not isinstance(asyncio.get_running_loop(), VirtualClockLoop):
        raise UsageError("time_scale 0 is a virtual clock: run on the loop `execute` makes, "
                         "or in a trilemma._tasks.VirtualClockLoop")  # fmt: skip
    check_simulated(wf, time_scale, "time_scale")


async def execute_async(
    wf: Workflow,
    *,
    journal: Journal,
    inputs: Mapping[str, str] | None = None,
    max_cost_usd: float | None = None,
    deadline_s: float | None = None,
    seed: int | None = None,
    source: str = "<spec>",
    providers: Mapping[str, Provider] | None = None,
    on_event: Callable[[Event], None] | None = None,
    embedder: Embedder | None = None,
    tenant: str | None = None,
    shared: SharedCeiling | None = None,
    shared_cache: str | None = None,
    time_scale: float = 1.0,
    overrides: Sequence[str] = (),
) -> RunResult:
    """Run a workflow to the end, a budget, the deadline or an early stop.

    Awaited in a running event loop (an async server's, a notebook's); :func:`execute`
    runs it in a loop of its own. Runs awaited together in one loop may share
    ``journal``. Cancelling the task stops the run as Ctrl-C stops ``trilemma run``: what
    finished stays journaled, and the run is left for :func:`resume` (``trilemma runs``
    shows it interrupted). The checks and the journaling before the first call run on
    the loop's thread.

    ``tenant``: whose cached answers the run's cached steps may use and add to; a run
    without one shares the entries of the other runs without one. A resume keeps it.

    ``shared``: a ceiling this run shares with runs in other processes (kept in Redis).
    Every call holds its worst case under it as well as under ``max_cost_usd``; a call
    that would cross either is not sent, and the run stops with ``budget_exhausted``. A
    store that does not answer raises SetupError before anything is journaled.

    ``shared_cache``: the Redis URL of a cache tier shared with other processes: cached
    steps the journal misses are looked up there, and their answers kept there too.

    ``time_scale``: the factor ``wf``'s simulated time was already shortened by (a
    ``time_scaled`` copy, as compare and sweep run); it scales nothing here, it is
    journaled with the run so that its latencies can be read in the spec's own time. 0: the
    run keeps time on a virtual clock (:class:`~trilemma._tasks.VirtualClockLoop`, which
    :func:`execute` makes itself; awaited, the running loop must be one), its models all
    simulated.

    ``overrides``: the ``PATH=VALUE`` ``wf`` was loaded with from ``source`` (``--set``:
    :func:`~trilemma.spec.load.load_workflow`); journaled with the run, so that a resume
    sets them on the file again before it judges whether the file changed.

    A provider that raises something other than a ProviderError (a bug) ends the run:
    the journal marks it failed, and the error is raised here as itself.
    """
    check_clock(wf, time_scale)
    tenant = check_tenant(tenant)
    values = check_inputs(wf, inputs or {}, source)
    gates = build_gates(wf, source)
    embedder = embedder_for(wf, embedder)
    seed = wf.seed_for(seed)
    provs = build_providers(wf, seed, providers)
    ceiling, deadline = wf.budget.resolve(max_cost_usd, deadline_s)
    spend, tier, predicted = shared_spend(shared), cache_tier(wf, shared_cache), estimate(wf)
    session = Session.within(SpendGuard(ceiling), deadline, shared=spend)  # the run starts
    ex = open_run(wf, journal, session, values=values, seed=seed, source=source, providers=provs,
                  gates=gates, predicted=predicted, on_event=on_event, embedder=embedder,
                  tenant=tenant, shared_cache=tier, time_scale=time_scale,
                  overrides=overrides)  # fmt: skip
    return await _run_and_close(ex, session, {}, provs)


execute = blocking(execute_async)


async def execute_many_async(
    wf: Workflow,
    seeds: Sequence[int],
    *,
    journal: Journal,
    parallel: int = 1,
    inputs: Mapping[str, str] | Sequence[Mapping[str, str]] | None = None,
    max_cost_usd: float | None = None,
    deadline_s: float | None = None,
    source: str = "<spec>",
    time_scale: float = 1.0,
    overrides: Sequence[str] = (),
    on_run: Callable[[int, RunResult], object] | None = None,
) -> list[RunResult]:
    """Run ``wf`` once per seed of ``seeds``, ``parallel`` runs at a time on this loop; the
    results in the order of ``seeds``.

    Each run is one :func:`execute_async` would make, with ``inputs`` (or, given a sequence,
    run ``i`` with ``inputs[i]``; every run's are checked first), under a ceiling and a
    deadline of its own (``max_cost_usd`` and ``deadline_s`` hold per run, the deadline from
    the run's start). What the runs share is what their endpoints do: each model's limits
    (``max_concurrency``, ``rpm``, ``tpm``) hold for all the runs together, as a batch's do,
    so a run's latency includes its waits on the others' calls; a real endpoint's client
    serves every run. ``on_run(i, result)`` after run ``i`` ends, in the order runs end.
    Where a step is cached, the first run goes alone: the answers it keeps serve the others,
    as they would one run at a time, rather than each of the first ``parallel`` paying for
    the same call.

    A provider's bug (not a ProviderError) stops the runs under way, leaving them for
    :func:`resume`, and is raised as itself; a cancelled call leaves them alike.
    """
    check_parallel(parallel)
    check_clock(wf, time_scale)
    if inputs is None or isinstance(inputs, Mapping):
        values = [check_inputs(wf, inputs or {}, source)] * len(seeds)
    elif len(inputs) != len(seeds):
        raise UsageError(f"{len(inputs)} sets of inputs for {len(seeds)} runs: give one per run")
    else:
        values = [check_inputs(wf, given, source) for given in inputs]
    gates = build_gates(wf, source)
    embedder = embedder_for(wf)
    ceiling, deadline = wf.budget.resolve(max_cost_usd, deadline_s)
    predicted = estimate(wf)
    first = providers_for(wf.models, wf.seed_for(seeds[0]) if seeds else None)
    endpoints = {n: first[n] for n in wf.endpoints}
    limits = {n: Route.of(m, first[n]) for n, m in wf.models.items()}
    writer = writer_for(journal, limits.values())  # one connection and thread for every run
    out: list[RunResult | None] = [None] * len(seeds)

    async def one(i: int) -> None:
        seed = wf.seed_for(seeds[i])
        session = Session.within(SpendGuard(ceiling), deadline)
        ex = open_run(wf, journal, session, values=values[i], seed=seed, source=source,
                      providers=providers_for(wf.models, seed, endpoints), gates=gates,
                      predicted=predicted, on_event=None, embedder=embedder, tenant=None,
                      limits=limits, writer=writer, time_scale=time_scale,
                      overrides=overrides)  # fmt: skip
        out[i] = result = await ex.run(session, {})
        if on_run is not None:
            on_run(i, result)

    cached = parallel > 1 and any(st.cache_rule is not None for st in wf.steps)
    try:  # where a step is cached, the first run fills the cache for the others
        await in_turns(range(len(seeds)), parallel, one, alone=int(cached))
    except ExceptionGroup as group:  # a run's bug: the error itself, as execute() raises it
        raise group.exceptions[0] from None
    finally:
        try:
            await writer.aclose()
        finally:
            await close_providers(endpoints)
    return [r for r in out if r is not None]


execute_many = blocking(execute_many_async)


def shared_spend(ceiling: SharedCeiling | None) -> SharedSpend | None:
    """A run's hold on a shared ceiling, its store checked now (SetupError if it is not there)."""
    if ceiling is None:
        return None
    spend = SharedSpend(ceiling)
    spend.check()
    return spend


def cache_tier(wf: Workflow, url: str | None) -> SharedCache | None:
    """The shared cache at ``url`` (checked now: SetupError if it does not answer), for a
    spec with a cached step; None without a URL, or with no step to use it."""
    if url is None or not any(step.cache_rule is not None for step in wf.steps):
        return None
    tier = SharedCache(url)
    tier.check()
    return tier


def open_run(
    wf: Workflow, journal: Journal, session: Session, *, values: Mapping[str, str], seed: int,
    source: str, providers: Mapping[str, Provider], gates: dict[str, Check], predicted: Estimate,
    on_event: Callable[[Event], None] | None, embedder: Embedder | None, tenant: str | None,
    batch: tuple[str, int] | None = None, limits: Mapping[str, Route] | None = None,
    writer: JournalWriter | None = None, shared_cache: SharedCache | None = None,
    time_scale: float = 1.0, overrides: Sequence[str] = (),
) -> Executor:  # fmt: skip
    """A new run in the journal (status running) and its executor, under ``session``'s budgets.

    Its row records the session's ceiling and deadline, the ``time_scale`` ``wf`` runs
    in and the ``overrides`` it was loaded with (as for :func:`execute_async`); sessions
    may share them, the per-model ``limits`` and the journal's ``writer`` (a batch, whose
    id and the run's line ``batch`` gives).
    """
    run_id = new_run_id()
    text = spec_json(wf)
    batch_id, line = batch or (None, None)
    journal.create_run({
        "run_id": run_id, "spec_source": source, "spec_json": text,
        "spec_hash": spec_hash(text), "inputs_json": dumps(values), "seed": seed,
        "max_cost_usd": session.guard.ceiling, "deadline_at": session.clock.deadline_at,
        "status": "running", "started_at": time.time(),
        "predicted_json": dumps(predicted.summary()), "pid": os.getpid(), "tenant": tenant,
        "batch_id": batch_id, "batch_line": line, "shared_budget": shared_label(session),
        "time_scale": time_scale, "overrides_json": dumps(list(overrides)) if overrides else None,
    })  # fmt: skip
    return Executor(wf, journal=journal, run_id=run_id, inputs=values, providers=providers,
                    source=source, gates=gates, seed=seed, predicted=predicted,
                    on_event=on_event, embedder=embedder, tenant=tenant,
                    limits=limits, writer=writer, shared_cache=shared_cache)  # fmt: skip


def shared_label(session: Session) -> str | None:
    """What a run's row keeps of its shared ceiling: NAME=USD, or None."""
    return session.shared.ceiling.label if session.shared is not None else None


def shared_of(
    row: Mapping[str, Any], shared: SharedCeiling | None, redis: str | None
) -> SharedCeiling | None:
    """The shared ceiling a resumed run goes on under: the one given, else its own from
    the journal (in the store at ``redis``), else none."""
    if shared is not None or not row.get("shared_budget"):
        return shared
    return SharedCeiling.parse(row["shared_budget"], redis, f"run {row['run_id']}'s shared budget")


def changed_steps(old: Workflow, new: Workflow) -> list[str]:
    """Steps whose definition (or model profile) differs, and steps added or removed."""
    before = {s.id: (s.model_dump(), old.models[s.model].model_dump()) for s in old.steps}
    after = {s.id: (s.model_dump(), new.models[s.model].model_dump()) for s in new.steps}
    return sorted(k for k in before.keys() | after.keys() if before.get(k) != after.get(k))


async def resume_async(
    journal: Journal,
    run_id: str,
    *,
    deadline_s: float | None = None,
    max_cost_usd: float | None = None,
    force: bool = False,
    providers: Mapping[str, Provider] | None = None,
    on_event: Callable[[Event], None] | None = None,
    embedder: Embedder | None = None,
    shared: SharedCeiling | None = None,
    redis: str | None = None,
    shared_cache: str | None = None,
) -> RunResult:
    """Finish an interrupted run; a step the journal holds as done is never run again.

    The spend before the crash counts against the ceiling, and the original
    deadline holds unless ``deadline_s`` gives a new one (from now). A run that
    shared a ceiling goes on under it (kept at ``redis``, default
    :data:`~trilemma._redis.DEFAULT_REDIS`) unless ``shared`` gives another.
    ``shared_cache`` as for :func:`execute`. Awaited as :func:`execute_async` is;
    :func:`resume` runs it in a loop of its own.
    """
    row = journal.run(run_id)
    if row is None:
        raise UsageError(
            f"run {run_id!r} is not in {journal.path}; `trilemma runs` lists the runs there"
        )
    if "steps" not in json.loads(row["spec_json"]):
        raise UsageError(
            f"run {run_id} holds a gateway key's calls, not a workflow run; there is nothing to "
            "resume (`trilemma ledger` and `trilemma report` read it)"
        )
    if row["time_scale"] != 1:
        clock = ("on a virtual clock" if row["time_scale"] == 0 else
                 f"{1 / row['time_scale']:g}x faster")  # fmt: skip
        raise UsageError(
            f"run {run_id} ran in simulated time {clock} (a trial of compare or sweep, or run "
            "--time-scale), which a resume does not take up; run it, or the experiment, again"
        )
    if still_running(row) and not force:
        raise UsageError(
            f"run {run_id} is still running (process {row['pid']}); wait for it to end or stop "
            "that process before resuming (--force if that pid is no longer trilemma)"
        )
    wf, changed = spec_to_resume(journal, row, force=force)
    source = row["spec_source"]
    gates = build_gates(wf, source)
    embedder = embedder_for(wf, embedder)
    provs = build_providers(wf, row["seed"], providers)
    ceiling = max_cost_usd if max_cost_usd is not None else row["max_cost_usd"]
    spend = shared_spend(shared_of(row, shared, redis))
    tier, predicted = cache_tier(wf, shared_cache), estimate(wf)
    guard = SpendGuard(ceiling, spent=journal.spent(run_id))
    if deadline_s is not None:
        session = Session.within(guard, deadline_s, shared=spend)
    else:  # the run's own deadline, at the time it was journaled
        session = Session(guard, Clock(row["deadline_at"]), shared=spend)
    ex, done = reopen_run(wf, journal, row, session, providers=provs, gates=gates,
                          predicted=predicted, on_event=on_event, embedder=embedder,
                          changed=changed, shared_cache=tier)  # fmt: skip
    return await _run_and_close(ex, session, done, provs)


resume = blocking(resume_async)


def spec_to_resume(
    journal: Journal, row: Mapping[str, Any], *, force: bool = False
) -> tuple[Workflow, list[str]]:
    """The spec a workflow run's ``row`` goes on with, and the steps changed in it.

    The journal's, unless the file it was run from (with the run's ``--set``) now differs:
    then UsageError naming the changed steps, or with ``force`` the file's spec.
    """
    run_id = row["run_id"]
    wf = workflow_from_dict(json.loads(row["spec_json"]), f"{journal.path}:{run_id}")
    source = row["spec_source"]
    if not Path(source).is_file():
        return wf, []
    current = _current_spec(source, overrides_of(row), run_id)
    if spec_json(current) == spec_json(wf):  # both as this trilemma writes them
        return wf, []
    changed = changed_steps(wf, current)
    if not force:
        names = ", ".join(changed) or "models or settings"
        raise UsageError(
            f"{source} changed since run {run_id} started (steps: {names}); restore it, "
            "or resume with --force to run the new spec (changed steps run again)"
        )
    return current, changed


def _current_spec(source: str, overrides: Sequence[str], run_id: str) -> Workflow:
    """The spec file a run was started from, as it is now, with the run's ``--set`` on it."""
    try:
        return load_workflow(source, overrides)
    except UsageError as exc:  # a --set the file no longer takes (its step renamed, ...)
        raise UsageError(
            f"{source} changed since run {run_id} started: the run's {exc}; restore the file "
            "to resume it"
        ) from None


def still_running(row: Mapping[str, Any]) -> bool:
    """A run row some other live process is running now."""
    return row["status"] == "running" and row["pid"] != os.getpid() and pid_alive(row["pid"])


def reopen_run(
    wf: Workflow, journal: Journal, row: Mapping[str, Any], session: Session, *,
    providers: Mapping[str, Provider], gates: dict[str, Check], predicted: Estimate,
    on_event: Callable[[Event], None] | None, embedder: Embedder | None,
    changed: Sequence[str] = (), limits: Mapping[str, Route] | None = None,
    writer: JournalWriter | None = None, shared_cache: SharedCache | None = None,
) -> tuple[Executor, dict[str, dict[str, Any]]]:  # fmt: skip
    """A journaled run's executor, set to go on where it stopped, and its steps already done.

    Steps in ``changed`` run again. The row takes the session's ceiling and deadline;
    ``limits`` and ``writer`` as for :func:`open_run`.
    """
    run_id = row["run_id"]
    ids = {s.id for s in wf.steps}
    done = {k: v for k, v in journal.steps(run_id).items()
            if v["status"] == "done" and k in ids and k not in changed}  # fmt: skip
    calls = journal.calls(run_id)  # read (and checked) before the run's row changes
    before = time_before(journal, row)
    journal.update_run(run_id, status="running", pid=os.getpid(), finished_at=None, error=None,
                       max_cost_usd=session.guard.ceiling, deadline_at=session.clock.deadline_at,
                       shared_budget=shared_label(session), latency_s=before,
                       session_started_at=time.time())  # fmt: skip
    ex = Executor(wf, journal=journal, run_id=run_id, inputs=json.loads(row["inputs_json"]),
                  providers=providers, source=row["spec_source"], gates=gates, seed=row["seed"],
                  predicted=predicted, on_event=on_event, embedder=embedder,
                  tenant=row["tenant"], limits=limits, writer=writer,
                  shared_cache=shared_cache)  # fmt: skip
    by_step: dict[str, list[dict[str, Any]]] = {}  # read once for what follows
    for c in calls:
        if c["role"] != "cache":
            by_step.setdefault(c["step_id"], []).append(c)
    ex.resume_from = _resume_points(wf, by_step, done, list(changed))
    ex.replay = {c["idempotency_key"]: c for sid, (start, _, _) in ex.resume_from.items()
                 for c in by_step[sid] if c["attempt"] == start and call_outcome(c) == "answered"}  # fmt: skip
    ex.feedback_from = _feedback(wf, by_step, ex.resume_from)
    ex.latency_before = before
    return ex, done


def _feedback(
    wf: Workflow, by_step: Mapping[str, list[dict[str, Any]]],
    points: Mapping[str, tuple[int, int, float]],
) -> dict[str, tuple[str, str]]:  # fmt: skip
    """Per resumed step whose gate sends its reason back: the answer its gate last rejected
    before the attempt the resume starts at, and why, as the ledger keeps them (the answer
    picked from that attempt's calls as its kind picks it: the last call's, a judge's, a
    majority)."""
    out: dict[str, tuple[str, str]] = {}
    for step in wf.steps:
        if step.id not in points or not (step.gate is None or step.gate.feedback):
            continue
        before = [c for c in by_step[step.id] if c["attempt"] == points[step.id][0] - 1]
        said = rejection(before[-1]) if before else None
        answer = answer_of(step, before) if said is not None else None
        if said is not None and answer is not None:
            out[step.id] = (answer, said)
    return out


def time_before(journal: Journal, row: Mapping[str, Any]) -> float:
    """Seconds a journaled run spent running in its sessions so far, which a resume adds
    its own to: what the row holds once a session ended; a session that crashed (or was
    interrupted) ran from its start to its last journaled call, the rest of its time
    unknown (it is not counted)."""
    held = row["latency_s"] or 0.0
    if row["status"] != "running":
        return held
    begun = row["session_started_at"] or row["started_at"]
    last = journal.last_call_at(row["run_id"], begun)
    return held + (max(0.0, last - begun) if last is not None else 0.0)


@contextlib.contextmanager
def collector_spared() -> Iterator[None]:
    """Leave the objects that exist before a run out of the garbage collector's passes during it.

    A full collection walks every object the process holds (imported SDKs, the spec's
    models): about 0.1 s, stalling the event loop, once in a few runs of a 2,000-step spec.
    What the run itself creates is still collected, and once more at its end, while the
    rest is still set aside (a pass over the run's own objects only): the reference
    cycles a run leaves (its finished tasks, say) would otherwise be frozen by the next
    run, and the next, and never freed in a process that runs many. The rest is handed
    back afterwards. A program that froze its objects itself (a server before it forks)
    is left as it is: more objects frozen than when trilemma was imported (Python 3.12
    starts with a few hundred of its own there, 3.11 and 3.13 with none).
    """
    if gc.get_freeze_count() > _FROZEN_AT_IMPORT:
        yield
        return
    gc.freeze()
    try:
        yield
    finally:
        gc.collect()
        gc.unfreeze()


#: How a call of an attempt cut short (a crash, a stopped run) ends up: that attempt is
#: re-sent as itself.
CUT_SHORT = ("in_flight", "unsent", "answered")


def _resume_points(
    wf: Workflow, by_step: Mapping[str, list[dict[str, Any]]], done: Mapping[str, Any],
    changed: list[str],
) -> dict[str, tuple[int, int, float]]:  # fmt: skip
    """Per unfinished step: the attempt to start at, how many it has left, and what its
    attempts were billed before (its cost goes on from there).

    ``by_step``: the run's calls (cache hits left out) by step. An attempt with a call still
    in flight, one that was never sent (cancelled while its record committed), or one a
    real endpoint answered without its attempt's verdict (a crash between the two, or the
    run stopped first), is re-sent as itself (same keys, same ledger rows; the answered
    calls are not asked again: the executor's ``replay``): it used none of the step's
    attempts, nor, in a cascade, its rung. Otherwise the next attempt follows the last one
    journaled. A step always gets at least one attempt.
    """
    out: dict[str, tuple[int, int, float]] = {}
    for step in wf.steps:
        if step.id in done or step.id in changed:
            continue
        mine = by_step.get(step.id)
        if not mine:
            continue
        in_flight = [c["attempt"] for c in mine if call_outcome(c) in CUT_SHORT]
        start = min(in_flight) if in_flight else max(c["attempt"] for c in mine) + 1
        # the attempt re-sent as itself bills its rows again, in this session
        billed = math.fsum(c["cost_usd"] or 0.0 for c in mine if c["attempt"] < start)
        out[step.id] = (start, max(1, step.retries + 2 - start), billed)
    return out


async def _run_and_close(
    ex: Executor,
    session: Session,
    done: Mapping[str, dict[str, Any]],
    provs: Mapping[str, Provider],
) -> RunResult:
    try:
        return await ex.run(session, done)
    finally:
        await close_parts(provs, session.shared, ex.cache.shared)


async def close_parts(
    provs: Mapping[str, Provider], spend: SharedSpend | None = None,
    tier: SharedCache | None = None,
) -> None:  # fmt: skip
    """Close what a run or a batch opened: its providers, and its connections to a shared
    ceiling and a shared cache; each is closed even if closing one before it fails."""
    async with contextlib.AsyncExitStack() as stack:
        for part in (tier, spend):
            if part is not None:
                stack.push_async_callback(part.aclose)
        stack.push_async_callback(close_providers, provs)


async def close_providers(provs: Mapping[str, Provider]) -> None:
    """Close each provider once (profiles may share one), those that hold connections."""
    for p in {id(p): p for p in provs.values()}.values():
        close = getattr(p, "aclose", None)
        if close is not None:
            await close()
