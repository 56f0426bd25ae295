"""Budget sweeps: what a workflow delivers as its cost ceiling or deadline tightens.

The seed's third project ("a budget-enforcing orchestrator"). A baseline runs the
workflow ``runs`` times with no budget at all. Then each budget runs it again
under the same seeds, through the real executor and journal. A budgeted run and its
baseline twin draw the same simulated answers call for call, so they differ only
where the budget bites.

For each budget the sweep reports:

- the share of runs that succeeded, and how many stopped on the budget;
- the spend, mean and largest (a ceiling is never crossed: that is the executor's
  guarantee, checked here run by run);
- the share of steps whose outputs still came back (failing soft);
- how often the baseline, which ignores budgets, went over the same budget;
- the success the Monte Carlo predicts under it (it cancels a run still going at the
  deadline, and stops one whose next call's worst case does not fit under the ceiling, as
  the executor does).

On the simulator the sweep runs on a virtual clock by default, or in scaled time (see
:mod:`trilemma.experiments.trials`). Given no budgets, the command sweeps the ceilings the
planner finds for shares of the runs (:func:`planned_ceilings`).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

from trilemma.errors import UsageError
from trilemma.experiments.trials import (
    Bill,
    JournalRef,
    Successes,
    Tally,
    Trial,
    bill_ahead,
    check_runnable,
    check_settings,
    opened,
    repeat,
)
from trilemma.journal import Journal
from trilemma.plan.estimate import Estimate, estimate
from trilemma.plan.simulate import SimResult, near_deadline, simulate, smallest_budget, under_budget
from trilemma.run.session import check_inputs
from trilemma.spec import Workflow

__all__ = ["PLANNED_SHARES", "Limits", "Sweep", "SweepRow", "budget_sweep", "planned_ceilings"]

#: Spend above a ceiling by less than this is float noise, not an overrun.
EPS_USD = 1e-9


@dataclass(frozen=True, slots=True)
class Limits:
    """One budget of the sweep: a cost ceiling, a deadline, or both (None: no limit)."""

    max_cost_usd: float | None = None
    deadline_s: float | None = None

    def crossed_by(self, cost_usd: float, latency_s: float) -> bool:
        """Whether a run that spent ``cost_usd`` in ``latency_s`` went over this budget."""
        over_cost = self.max_cost_usd is not None and cost_usd > self.max_cost_usd + EPS_USD
        over_time = self.deadline_s is not None and latency_s > self.deadline_s
        return over_cost or over_time

    def label(self) -> str:
        """``$0.10``, ``10s``, ``$0.10, 10s`` or ``none``."""
        parts = []
        if self.max_cost_usd is not None:
            parts.append(f"${self.max_cost_usd:g}")
        if self.deadline_s is not None:
            parts.append(f"{self.deadline_s:g}s")
        return ", ".join(parts) or "none"


@dataclass(frozen=True, slots=True)
class SweepRow(Successes):
    """What ``runs`` runs under one budget measured."""

    budget: Limits
    """The limits applied (none for the baseline)."""
    runs: int
    """Runs made."""
    ok: int
    """Runs that finished every step."""
    stopped: int
    """Runs stopped by the budget (``budget_exhausted`` or ``deadline``)."""
    failed: int
    """Runs that failed a step (its retries ran out)."""
    cost_mean: float
    """Mean dollars per run."""
    cost_max: float
    """Largest dollars of any run."""
    latency_mean_s: float
    """Mean seconds per run (scaled back to the spec's time)."""
    latency_max_s: float
    """Largest seconds of any run."""
    steps_returned: float
    """Mean share of steps whose outputs came back."""
    overruns: int
    """Runs whose spend crossed the ceiling (the executor guarantees 0)."""
    baseline_over: int
    """Baseline runs (no budget) that went over this budget."""
    baseline_ok_within: int
    """Baseline runs that succeeded within this budget."""
    predicted_success: float | None = None
    """The Monte Carlo's success under this budget (None: not simulated)."""
    predicted_cost: float | None = None
    """The Monte Carlo's mean dollars a run under this budget (None: not simulated)."""
    predicted_near: float | None = None
    """The share of runs the Monte Carlo has succeed in time under this budget's deadline by
    less than the executor's own time (:func:`~trilemma.plan.simulate.near_deadline`: runs
    that may be cut; None: no deadline, or not simulated)."""

    def to_json(self) -> dict[str, Any]:
        """A row of ``trilemma sweep --json``."""
        lo, hi = self.ci95
        return {
            "max_cost_usd": self.budget.max_cost_usd,
            "deadline_s": self.budget.deadline_s,
            "runs": self.runs,
            "success_rate": self.success_rate,
            "success_ci95": [round(lo, 12), round(hi, 12)],
            "stopped_by_budget": self.stopped,
            "failed": self.failed,
            "cost_usd": {"mean": round(self.cost_mean, 12), "max": round(self.cost_max, 12)},
            "latency_s": {
                "mean": round(self.latency_mean_s, 6),
                "max": round(self.latency_max_s, 6),
            },
            "steps_returned": round(self.steps_returned, 12),
            "overruns": self.overruns,
            "baseline_over_budget": self.baseline_over,
            "baseline_ok_within_budget": self.baseline_ok_within,
            "predicted_success_rate": self.predicted_success,
            "predicted_cost_usd": None
            if self.predicted_cost is None
            else round(self.predicted_cost, 12),
            "predicted_near_deadline": None
            if self.predicted_near is None
            else round(self.predicted_near, 12),
        }


@dataclass(frozen=True, slots=True)
class Sweep:
    """A budget sweep: the unbudgeted baseline, then one row per budget."""

    baseline: SweepRow
    """No budget: what ignoring budgets delivers and spends."""
    rows: tuple[SweepRow, ...]
    """One per budget, in the order given."""
    predicted: Estimate
    """The planner's estimate of the spec."""
    seed: int
    """First seed; run ``i`` of every budget uses ``seed + i``."""
    time_scale: float
    """Factor the simulated time ran at."""
    parallel: int = 1
    """Runs that went at a time (``--parallel``), each under its own budget."""
    limited: bool = False
    """A model of the spec has limits (``max_concurrency``, ``rpm``, ``tpm``), which runs
    going at a time share."""

    def to_json(self) -> dict[str, Any]:
        """The contract of ``trilemma sweep --json``."""
        p = self.predicted
        return {
            "runs": self.baseline.runs,
            "seed": self.seed,
            "time_scale": self.time_scale,
            "parallel": self.parallel,
            "predicted": p.headline(),
            "baseline": self.baseline.to_json(),
            "rows": [r.to_json() for r in self.rows],
        }


def budget_sweep(
    wf: Workflow,
    budgets: Sequence[Limits],
    runs: int,
    journal: JournalRef,
    *,
    seed: int = 0,
    time_scale: float = 0.0,
    source: str = "<spec>",
    on_progress: Callable[[int, int], object] | None = None,
    inputs: Mapping[str, str] | None = None,
    overrides: Sequence[str] = (),
    parallel: int = 1,
    on_bill: Callable[[Bill], object] | None = None,
) -> Sweep:
    """Run ``wf`` ``runs`` times with no budget, then ``runs`` times under each budget, each
    run with ``inputs`` (checked before any run, and before a ``journal`` given as a path is
    opened), and journaled with the ``overrides`` ``wf`` was loaded with (``--set``).

    The spec's own ceiling and deadline are set aside: the baseline has none, and each
    budget of the sweep is the only one its runs obey. ``parallel``: runs at a time, each
    under its own budget (and its deadline from its own start), sharing the models' limits
    as runs on one endpoint do, so that a run's latency includes its waits on the others'.
    ``on_bill(bill)``: before the first run of a spec with real endpoints (every check
    passed), what the sweep will bill by the planner (:func:`~.trials.bill_ahead`).
    """
    check_settings(runs, time_scale, parallel)
    check_inputs(wf, inputs or {}, source)
    if not budgets:
        raise UsageError("give at least one budget: --max-cost 0.1,0.2 or --deadline 5,10")
    check_runnable(wf, time_scale)
    unbudgeted = wf.with_budget(max_cost_usd=None, deadline_s=None)
    tick = Tally(runs * (len(budgets) + 1), on_progress)

    def trials(b: Limits, j: Journal) -> list[Trial]:
        return repeat(unbudgeted, runs, j, seed=seed, time_scale=time_scale,
                      max_cost_usd=b.max_cost_usd, deadline_s=b.deadline_s, source=source,
                      tick=tick, inputs=inputs, overrides=overrides, parallel=parallel)  # fmt: skip

    e = estimate(wf)

    def predicted(row: SweepRow, sim: SimResult) -> SweepRow:
        return replace(row, predicted_success=sim.success_rate, predicted_cost=sim.cost_usd.mean,
                       predicted_near=near_deadline(sim, e, time_scale))  # fmt: skip

    # the Monte Carlo under no budget, then under each: what the runs will bill, and beside them
    plans = [under_budget(unbudgeted, b.deadline_s, b.max_cost_usd, seed)
             for b in (Limits(), *budgets)]  # fmt: skip
    if on_bill is not None and (bill := bill_ahead(unbudgeted, runs, plans)) is not None:
        on_bill(bill)
    with opened(journal) as j:
        base = trials(Limits(), j)
        baseline = predicted(_row(Limits(), base, base), plans[0])
        rows = tuple(predicted(_row(b, trials(b, j), base), sim)
                     for b, sim in zip(budgets, plans[1:], strict=True))  # fmt: skip
    return Sweep(baseline, rows, e, seed, time_scale, parallel, wf.limited)


PLANNED_SHARES = (0.5, 0.9, 0.99)
"""What a sweep given no budgets sweeps: the ceilings under which these shares of the runs
that succeed without one still succeed, by the planner."""


def planned_ceilings(
    wf: Workflow, shares: Sequence[float] = PLANNED_SHARES, runs: int = 20_000, seed: int = 0
) -> list[float]:
    """Spend ceilings to sweep, by the Monte Carlo of ``runs`` (``wf``'s own budget set
    aside): for each share, the smallest ceiling under which that share of the runs that
    succeed without one still succeed; then half the lowest, a ceiling that cuts most runs
    short (what they return is the sweep's outputs column). Ascending, each once.

    Raises UsageError when no run succeeds without a budget (nothing to keep a share of).
    """
    free = wf.with_budget(max_cost_usd=None, deadline_s=None)
    success = simulate(free, runs, seed).success_rate
    if success == 0:
        raise UsageError("the planner has no run of this spec succeeding, so no ceiling keeps "
                         "a share of them: give the budgets, --max-cost 0.1,0.2 or --deadline 5,10")
    found = {smallest_budget(free, share * success, runs, seed).value for share in shares}
    ceilings = sorted(v for v in found if v is not None)
    return sorted({round(ceilings[0] / 2, 6), *ceilings}) if ceilings[0] >= 2e-6 else ceilings


def _row(budget: Limits, got: list[Trial], base: list[Trial]) -> SweepRow:
    n = len(got)
    costs = [t.cost_usd for t in got]
    latencies = [t.latency_s for t in got]
    return SweepRow(
        budget=budget,
        runs=n,
        ok=sum(t.status == "ok" for t in got),
        stopped=sum(t.status in ("budget_exhausted", "deadline") for t in got),
        failed=sum(t.status == "failed" for t in got),
        cost_mean=math.fsum(costs) / n,
        cost_max=max(costs),
        latency_mean_s=math.fsum(latencies) / n,
        latency_max_s=max(latencies),
        steps_returned=math.fsum(t.outputs / t.steps for t in got) / n,
        overruns=sum(budget.crossed_by(c, 0.0) for c in costs),
        baseline_over=sum(budget.crossed_by(t.cost_usd, t.latency_s) for t in base),
        baseline_ok_within=sum(
            t.status == "ok" and not budget.crossed_by(t.cost_usd, t.latency_s) for t in base
        ),
    )
