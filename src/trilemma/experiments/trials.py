"""Repeated runs of a spec through the real executor, in scaled time, for the experiments.

On the simulator, runs keep time on a virtual clock by default (``time_scale`` 0,
:class:`~trilemma._tasks.VirtualClockLoop`): nothing is shortened, and a wait takes no real
time at all, ending exactly when due. A run measures the spec's own latencies plus the
executor's real overhead, and takes only the CPU time its work needs.

A ``time_scale`` in (0, 1] runs them in scaled time on the real clock instead. Latencies,
timeouts, deadlines, backoff and rate limits are all shortened by it, and measured
latencies are scaled back: at 0.01, a 14-second workflow takes 0.14 s per run. What does not
shrink is magnified by the same factor: the executor's own overhead, and above all the
event loop's timer slack (up to about 1 ms per wait). At 0.01, three sequential 0.4 s calls
measure about 7% long (2.4% at 0.1), and a deadline 50 ms past a 14 s chain stops every run.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from trilemma._tasks import run_whole
from trilemma.errors import UsageError
from trilemma.experiments.tasks import MAX_TRIALS
from trilemma.journal import Journal
from trilemma.plan.agreement import wilson
from trilemma.plan.estimate import estimate
from trilemma.plan.simulate import SimResult
from trilemma.run.executor import RunResult
from trilemma.run.retry import check_simulated, check_time_scale, scaled_time
from trilemma.run.session import check_parallel, execute, execute_many
from trilemma.spec import Workflow

__all__ = ["MAX_TRIALS", "Bill", "JournalRef", "Successes", "Tally", "Trial", "bill_ahead",
           "check_parallel", "check_reachable", "check_runnable", "check_runs", "check_settings",
           "opened", "repeat", "time_scaled"]  # fmt: skip


class Successes:
    """Success over a row's runs: ``ok`` of ``runs`` finished every step (for compare's and
    sweep's rows, which hold both)."""

    __slots__ = ()
    ok: int
    runs: int

    @property
    def success_rate(self) -> float:
        """Share of runs that finished every step."""
        return self.ok / self.runs

    @property
    def ci95(self) -> tuple[float, float]:
        """Wilson 95% interval of the success rate."""
        return wilson(self.ok, self.runs)


@dataclass(frozen=True, slots=True)
class Trial:
    """One run's outcome, its latency scaled back to the spec's time."""

    status: str
    """ok, budget_exhausted, deadline or failed."""
    cost_usd: float
    """Dollars billed."""
    latency_s: float
    """Seconds, in the spec's time."""
    calls: int
    """LLM calls sent."""
    outputs: int
    """Steps whose outputs came back."""
    steps: int
    """Steps in the spec."""


@dataclass(frozen=True, slots=True)
class Bill:
    """What an experiment's runs on real endpoints will bill, by the planner, before they start."""

    runs: int
    """Runs that send calls to real endpoints."""
    endpoints: tuple[str, ...]
    """The spec's models served by real endpoints."""
    expected_usd: float
    """Dollars the planner expects the runs to bill (each held under its ceiling)."""
    worst_usd: float
    """Dollars in the planner's worst case (every retry used; each run held under its ceiling)."""
    ceiling_usd: float | None
    """Dollars the runs' ceilings hold them under, together (None: a run without one)."""


def bill_ahead(wf: Workflow, runs: int, plans: Sequence[SimResult]) -> Bill | None:
    """What ``runs`` runs of ``wf`` under each of ``plans`` (the Monte Carlo under each budget
    the runs will hold, :func:`~trilemma.plan.simulate.under_budget`) will bill; None where
    every model is simulated, which bills nobody. The planner's figures hold the profile's
    token counts: an endpoint answering longer bills more, up to each call's reservation,
    and a ceiling holds whatever it answers."""
    if not wf.endpoints:
        return None
    worst = estimate(wf, draw_runs=False).cost_worst
    ceilings = [p.max_cost_usd for p in plans]
    return Bill(
        runs * len(plans), wf.endpoints, runs * math.fsum(p.cost_usd.mean for p in plans),
        runs * math.fsum(worst if c is None else min(worst, c) for c in ceilings),
        None if None in ceilings else runs * math.fsum(c for c in ceilings if c is not None),
    )  # fmt: skip


JournalRef = Journal | str | Path
"""A journal, or the path of one an experiment opens after its checks pass."""


@contextlib.contextmanager
def opened(journal: JournalRef) -> Iterator[Journal]:
    """``journal`` itself, or the journal at that path, created if need be and closed when
    the block ends: an experiment enters this once its flags and inputs are checked, so a
    refused one leaves no file."""
    if isinstance(journal, Journal):
        yield journal
        return
    with Journal(journal) as own:
        yield own


def check_runs(runs: int) -> None:
    """Refuse a run count below 1 or above :data:`MAX_TRIALS` (a typo that would not end)."""
    if runs < 1:
        raise UsageError(f"--runs: {runs} is not a positive integer; give 1 or more")
    if runs > MAX_TRIALS:
        raise UsageError(f"--runs: {runs:,} runs, each one run on the executor with its calls "
                         f"journaled; give at most {MAX_TRIALS:,}, which puts a success rate "
                         "within +-0.1%")  # fmt: skip


def check_settings(runs: int, time_scale: float, parallel: int = 1) -> None:
    """Refuse a run count outside 1 to :data:`MAX_TRIALS`, a time factor outside [0, 1] (0:
    a virtual clock) or fewer than one run at a time."""
    check_runs(runs)
    check_time_scale(time_scale, "--time-scale", virtual=True)
    check_parallel(parallel)


class Tally:
    """Runs done out of ``total``, passed to ``on_progress`` after each (a repeat's ``tick``)."""

    def __init__(self, total: int, on_progress: Callable[[int, int], object] | None) -> None:
        self.total = total
        self.done = 0
        self.on_progress = on_progress

    def __call__(self) -> None:
        self.done += 1
        if self.on_progress is not None:
            self.on_progress(self.done, self.total)


def time_scaled(wf: Workflow, factor: float) -> Workflow:
    """The spec with simulated time shortened by ``factor``: latencies, timeouts, hedges,
    the minute of the rate limits (their buckets hold as many calls, and refill faster)
    and the spec's own deadline.

    Only a spec whose models all run on the simulator can be scaled; ``factor`` 1
    returns ``wf`` itself, and so does 0 (a virtual clock, which shortens nothing).
    """
    check_simulated(wf, factor, "--time-scale")
    if factor in (0.0, 1.0):
        return wf
    models = {}
    for name, m in wf.models.items():
        update: dict[str, Any] = {
            "latency_s": m.latency_s * factor,
            "timeout_s": m.timeout_s * factor,
        }
        if m.hedge_after_s is not None:
            update["hedge_after_s"] = m.hedge_after_s * factor
        models[name] = m.model_copy(update=update)
        models[name]._minute_s = m.minute_s * factor  # as many calls a minute, a shorter one
    budget = wf.budget
    if budget.deadline_s is not None:  # the spec's own deadline runs on the same clock
        budget = budget.model_copy(update={"deadline_s": budget.deadline_s * factor})
    return wf.model_copy(update={"models": models, "budget": budget})


def check_runnable(wf: Workflow, time_scale: float) -> None:
    """What an experiment checks of a spec before its journal is opened: that its time can
    be scaled so (UsageError) and that its real endpoints answer (:func:`check_reachable`)."""
    time_scaled(wf, time_scale)
    check_reachable(wf)


def check_reachable(wf: Workflow) -> None:
    """EndpointUnreachable, before any run, when a real endpoint of ``wf`` cannot be
    reached: an experiment would otherwise measure a server that is down as a model
    that always fails."""
    real = {p.base_url: (n, p) for n, p in wf.models.items() if not p.runs_on_simulator}
    if not real:
        return
    from trilemma.providers.openai import OpenAIProvider

    async def probe() -> None:
        for name, profile in real.values():
            provider = OpenAIProvider(name, profile)
            try:
                await provider.check_reachable(profile)
            finally:
                await provider.aclose()

    run_whole(probe())


def repeat(
    wf: Workflow,
    runs: int,
    journal: Journal,
    *,
    seed: int = 0,
    time_scale: float = 0.0,
    max_cost_usd: float | None = None,
    deadline_s: float | None = None,
    source: str = "<spec>",
    tick: Callable[[], object] | None = None,
    inputs: Mapping[str, str] | None = None,
    overrides: Sequence[str] = (),
    parallel: int = 1,
) -> list[Trial]:
    """Run ``wf`` ``runs`` times, run ``i`` with seed ``seed + i``, each with ``inputs``;
    ``tick`` after each run.

    ``wf`` is the spec as written: it is scaled here, and so is ``deadline_s``. Each run is
    journaled with the ``overrides`` (``--set``) ``wf`` was loaded with from ``source``.

    ``parallel``: runs at a time, on one event loop, sharing each model's limits as runs on
    one endpoint do (:func:`~trilemma.run.session.execute_many_async`); 1 runs each alone,
    in an event loop of its own, so that no run waits on another's calls.
    """
    check_settings(runs, time_scale, parallel)
    fast = time_scaled(wf, time_scale)
    scale = time_scale or 1.0  # 0: a virtual clock, which keeps the spec's own time
    deadline = deadline_s * scale if deadline_s is not None else None

    def trial(r: RunResult) -> Trial:
        return Trial(r.status, r.cost_usd, r.latency_s / scale, r.calls, len(r.outputs),
                     len(r.steps))  # fmt: skip

    if parallel != 1:
        with scaled_time(scale):  # (time_scale 0: execute keeps a virtual clock itself)
            got = execute_many(fast, [seed + i for i in range(runs)], journal=journal,
                               parallel=parallel, inputs=inputs, max_cost_usd=max_cost_usd,
                               deadline_s=deadline, source=source, time_scale=time_scale,
                               overrides=overrides,
                               on_run=None if tick is None else lambda i, r: tick())  # fmt: skip
        return [trial(r) for r in got]
    out = []
    for i in range(runs):
        with scaled_time(scale):  # (time_scale 0: execute keeps a virtual clock itself)
            r = execute(fast, journal=journal, inputs=inputs, seed=seed + i,
                        max_cost_usd=max_cost_usd, deadline_s=deadline, source=source,
                        time_scale=time_scale, overrides=overrides)  # fmt: skip
        out.append(trial(r))
        if tick is not None:
            tick()
    return out
