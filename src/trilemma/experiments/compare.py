"""Quality per dollar, measured: several workflows run alike, predicted beside measured.

The seed's first project: "a six-agent debate or a single call?" Each spec runs ``runs``
times through the real executor and journal, run ``i`` with seed ``seed + i``. Each is
scored as Output 32.10.1 scores it: success, cost, latency, and quality per dollar (success
per dollar spent). Every measured figure sits beside the planner's prediction for the same
spec.

A spec's own ``budget:`` applies to its runs, as it does to ``trilemma run``; runs it
stops count as failures (the table says how many). With a deadline or a ceiling in the
spec, the prediction beside the runs is the Monte Carlo's, which cancels a run still going
at the deadline and stops one whose next call's worst case does not fit under the ceiling,
as the executor does (the analytic figures know no budget). Success is a run that finished
every step. On the simulator that means every answer
passed the simulator's check. On a real endpoint it means every answer passed its gate,
so a workflow without gates counts every answer as a success. Give real-endpoint specs
gates, or use ``trilemma calibrate`` and ``trilemma cliff``, whose tasks check the answer
itself.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from statistics import NormalDist
from typing import Any

import numpy as np

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
from trilemma.plan.agreement import (
    OFF_PLAN_RUNS,
    OFF_PLAN_SHARE,
    Figure,
    drawn_mean_figure,
    judge,
    judge_together,
    mean_figure,
    share_figure,
)
from trilemma.plan.estimate import Estimate, bills_drawn_whole, estimate
from trilemma.plan.simulate import SimResult, under_budget
from trilemma.run.session import check_inputs
from trilemma.spec import Workflow

__all__ = ["Contender", "compare", "inputs_of", "judge_contenders", "refuse_unread",
           "runs_to_tell_apart"]  # fmt: skip

ALIKE = 1e-4
"""Success rates predicted closer than this are alike: no number of runs is worth it."""


@dataclass(frozen=True, slots=True)
class Contender(Successes):
    """One workflow's measured figures beside its predicted ones."""

    name: str
    """The spec, as given on the command line."""
    predicted: Estimate
    """The planner's estimate."""
    runs: int
    """Runs made."""
    ok: int
    """Runs that finished every step."""
    stopped: int
    """Runs stopped by the spec's own budget (``budget:`` in the spec)."""
    cost_mean: float
    """Mean dollars per run."""
    latency_mean_s: float
    """Mean seconds per run (in the spec's time)."""
    latency_p95_s: float
    """95th percentile of seconds per run."""
    calls_mean: float
    """Mean LLM calls per run."""
    simulated: SimResult
    """The Monte Carlo the runs are set beside (:data:`PREDICTION_RUNS` trajectories), under
    the spec's deadline and ceiling where it has them: it halts a failed run and bills it
    as far as it got, and waits for the slowest of parallel retrying branches, as the
    executor does; the analytic estimate (:attr:`predicted`) bills every step and adds
    up expected latencies."""
    endpoints: tuple[str, ...] = ()
    """The spec's models served by real endpoints (the others are simulated)."""
    costs: tuple[float, ...] = ()
    """Each run's dollars, in the order run."""
    overrides: tuple[str, ...] = ()
    """The ``--set`` values (``PATH=VALUE``) the spec was loaded with, journaled with its runs."""
    cost_drawn: np.ndarray | None = field(default=None, compare=False, repr=False)
    """Each of :attr:`simulated`'s runs' dollars, where those hold all of a bill's spread
    (:func:`~trilemma.plan.estimate.bills_drawn_whole`): the runs' mean cost is weighed
    against means of as many of them; None: by Student's t test."""
    parallel: int = 1
    """Runs that went at a time, sharing the spec's models' limits (``--parallel``)."""
    limited: bool = False
    """A model of the spec has limits (``max_concurrency``, ``rpm``, ``tpm``), which runs
    going at a time share."""
    time_scale: float = 1.0
    """The runs' ``--time-scale`` (0: a virtual clock), which the executor's own time in the
    spec's seconds depends on (:func:`~trilemma.plan.simulate.deadline_headroom`)."""
    off: tuple[str, ...] | None = None
    """The figures (``success``, ``cost``) the runs contradict, every figure of one compare
    weighed together (:func:`judge_contenders`); None: not judged with others, so
    :attr:`off_prediction` and :attr:`cost_off_prediction` weigh this one's alone."""

    @property
    def budgeted(self) -> bool:
        """The spec's own deadline or ceiling can stop a run (and the Monte Carlo holds it)."""
        return self.simulated.deadline_s is not None or self.simulated.max_cost_usd is not None

    @property
    def quality_per_dollar(self) -> float | None:
        """Measured success per mean dollar spent (None when nothing was spent)."""
        return self.success_rate / self.cost_mean if self.cost_mean > 0 else None

    @property
    def quality_per_dollar_ci95(self) -> tuple[float, float] | None:
        """The measured q/$'s 95% interval: the success's (Wilson) over the mean dollars a run
        cost (the cost's own noise left out: most of a spec's runs cost alike). None when
        nothing was spent."""
        if self.cost_mean <= 0:
            return None
        lo, hi = self.ci95
        return lo / self.cost_mean, hi / self.cost_mean

    def figures(self) -> list[Figure]:
        """The runs' success (the exact binomial test of ``ok`` in ``runs`` against the
        predicted success, the Monte Carlo's) and, over :data:`OFF_PLAN_RUNS` runs or more,
        their mean cost against the Monte Carlo's, whose runs halt and stop as the executor's
        do (against means of as many of its runs, :attr:`cost_drawn`, else Student's t test
        of the mean; material more than :data:`OFF_PLAN_SHARE` off), each weighed against the
        prediction.

        On the simulator the runs draw from the spec's own figures, so a miss is chance (the
        specs of one compare share their draws where their steps' names agree, so they miss
        together); on a real endpoint it says the spec's figures are off.
        """
        out = share_figure("success", self.simulated.success_rate, self.ok, self.runs)
        if len(self.costs) >= OFF_PLAN_RUNS:
            planned = self.simulated.cost_usd.mean
            out += (mean_figure("cost", planned, self.costs, OFF_PLAN_SHARE) if self.cost_drawn is None
                    else drawn_mean_figure("cost", planned, self.costs, self.cost_drawn, OFF_PLAN_SHARE))
        return out

    def _off(self, field: str) -> str | None:
        figures = self.figures()
        off = self.off if self.off is not None else tuple(f.field for f in judge(figures))
        f = next((f for f in figures if f.field == field and field in off), None)
        return None if f is None else "below" if f.measured < f.profile else "above"

    @property
    def off_prediction(self) -> str | None:
        """``"below"`` or ``"above"`` where the runs' success contradicts the predicted
        (:meth:`figures`, weighed as :attr:`off` says); None where it does not."""
        return self._off("success")

    @property
    def cost_off_prediction(self) -> str | None:
        """``"above"`` or ``"below"`` where the runs' mean cost contradicts the predicted
        (:meth:`figures`, weighed as :attr:`off` says); None where it does not."""
        return self._off("cost")

    def runs_against(self, other: Contender) -> int | None:
        """Runs of each that would tell this spec's success from ``other``'s, at the
        rates the Monte Carlo predicts (:func:`runs_to_tell_apart`)."""
        return runs_to_tell_apart(self.simulated.success_rate, other.simulated.success_rate)

    def to_json(self) -> dict[str, Any]:
        """A row of ``trilemma compare --json``."""
        p = self.predicted
        lo, hi = self.ci95
        return {
            "spec": self.name,
            "runs": self.runs,
            "parallel": self.parallel,
            "measured": {
                "success_rate": self.success_rate,
                "stopped_by_budget": self.stopped,
                "success_ci95": [round(lo, 12), round(hi, 12)],
                "cost_usd": round(self.cost_mean, 12),
                "latency_s": {
                    "mean": round(self.latency_mean_s, 6),
                    "p95": round(self.latency_p95_s, 6),
                },
                "calls": round(self.calls_mean, 12),
                "quality_per_dollar": self.quality_per_dollar,
                "quality_per_dollar_ci95": None if (q := self.quality_per_dollar_ci95) is None
                else [round(q[0], 12), round(q[1], 12)],
                "success_vs_predicted": self.off_prediction or "within",
                "cost_vs_predicted": self.cost_off_prediction or "within",
                **{f"{f.field}_p_value": float(f"{f.p_value:.4g}") for f in self.figures()},
            },
            "predicted": {
                "reliability": p.reliability,
                "cost_usd": {
                    "expected": round(p.cost_expected, 12),
                    "worst": round(p.cost_worst, 12),
                },
                "latency_s": {
                    "critical_path": round(p.latency_critical_s, 12),
                    "expected": round(p.latency_expected_s, 12),
                },
                "calls": round(p.calls_expected, 12),
                "quality_per_dollar": p.quality_per_expected_dollar,
                "monte_carlo": (sim := self.simulated.to_json(p, self.time_scale)),
                "under_budget": sim if self.budgeted else None,
                "with_deadline": sim if self.simulated.deadline_s is not None else None,
            },
        }


def compare(
    specs: Sequence[tuple[str, Workflow]],
    runs: int,
    journal: JournalRef,
    *,
    seed: int = 0,
    time_scale: float = 0.0,
    on_progress: Callable[[int, int], object] | None = None,
    inputs: Mapping[str, str] | None = None,
    overrides: Sequence[str] = (),
    parallel: int = 1,
    on_bill: Callable[[str, Bill], object] | None = None,
) -> list[Contender]:
    """Run each spec ``runs`` times; their measured and predicted figures, in the order given.

    ``inputs``: each spec's runs get those it declares; every spec's are checked before any
    run (and before a ``journal`` given as a path is opened), and one that no spec declares
    is refused. ``overrides``: the ``--set`` values every spec was loaded with, journaled
    with each run (and named in a contender's advice to calibrate). ``parallel``: a spec's
    runs at a time (one spec after another), sharing its models' limits as runs on one
    endpoint do, so that a run's latency includes its waits on the others' calls.
    ``on_bill(name, bill)``: before the runs of a spec with real endpoints start (every
    check passed), what they will bill by the planner (:func:`~.trials.bill_ahead`).
    """
    check_settings(runs, time_scale, parallel)
    if len(specs) < 1:
        raise UsageError("give at least one spec to measure (two or more to compare)")
    own = inputs_of(specs, inputs)
    for _, wf in specs:
        check_runnable(wf, time_scale)
    tick = Tally(runs * len(specs), on_progress)
    out = []
    with opened(journal) as j:
        for name, wf in specs:
            simulated = under_budget(wf, wf.budget.deadline_s, wf.budget.max_cost_usd, keep=True)
            bill = None if on_bill is None else bill_ahead(wf, runs, (simulated,))
            if on_bill is not None and bill is not None:
                on_bill(name, bill)
            got = repeat(wf, runs, j, seed=seed, time_scale=time_scale, source=name, tick=tick,
                         inputs=own[name], overrides=overrides, parallel=parallel)  # fmt: skip
            out.append(_contender(name, wf, got, simulated, tuple(overrides), parallel,
                                  time_scale))  # fmt: skip
    return judge_contenders(out)


def judge_contenders(rows: Sequence[Contender]) -> list[Contender]:
    """``rows`` with :attr:`~Contender.off` set: every contender's success and cost weighed
    together (:func:`~trilemma.plan.agreement.judge_together`, Holm's test at 5%), so that when the
    planner is right about every spec of a compare, the chance that any is called off stays
    at 5%, however many specs it measures."""
    off = judge_together({i: r.figures() for i, r in enumerate(rows)})
    return [replace(r, off=tuple(f.field for f in off[i])) for i, r in enumerate(rows)]


def refuse_unread(
    names: Iterable[str], specs: Sequence[tuple[str, Workflow]], given_as: str = "--input "
) -> None:
    """UsageError for the first of ``names`` that no spec declares an input of."""
    unread = next((k for k in names if not any(k in wf.inputs for _, wf in specs)), None)
    if unread is not None:
        raise UsageError(f"{given_as}{unread}: no spec declares an input {unread!r}")


def inputs_of(
    specs: Sequence[tuple[str, Workflow]], inputs: Mapping[str, str] | None
) -> dict[str, dict[str, str]]:
    """Each spec's share of ``inputs`` (those it declares), by name; an input no spec
    declares, or one a spec needs and was not given, is refused before anything is spent."""
    given = dict(inputs or {})
    refuse_unread(given, specs)
    own = {name: {k: v for k, v in given.items() if k in wf.inputs} for name, wf in specs}
    for name, wf in specs:
        check_inputs(wf, own[name], name)
    return own


def _contender(
    name: str, wf: Workflow, got: list[Trial], simulated: SimResult,
    overrides: tuple[str, ...] = (), parallel: int = 1, time_scale: float = 1.0,
) -> Contender:  # fmt: skip
    """``wf``'s runs ``got`` beside ``simulated``, the Monte Carlo under its own budget."""
    n = len(got)
    latencies = sorted(t.latency_s for t in got)
    return Contender(
        name=name,
        predicted=estimate(wf),
        runs=n,
        ok=sum(t.status == "ok" for t in got),
        stopped=sum(t.status in ("budget_exhausted", "deadline") for t in got),
        cost_mean=math.fsum(t.cost_usd for t in got) / n,
        latency_mean_s=math.fsum(latencies) / n,
        latency_p95_s=latencies[min(n - 1, math.ceil(0.95 * n) - 1)],
        calls_mean=sum(t.calls for t in got) / n,
        simulated=simulated,
        endpoints=wf.endpoints,
        costs=tuple(t.cost_usd for t in got),
        overrides=overrides,
        parallel=parallel,
        time_scale=time_scale,
        limited=wf.limited,
        cost_drawn=simulated.samples["cost"] if simulated.samples and bills_drawn_whole(wf) else None,
    )


def runs_to_tell_apart(p1: float, p2: float, confidence: float = 0.95, power: float = 0.8) -> int | None:
    """Runs of each of two specs that tell success rates ``p1`` and ``p2`` apart: a
    two-sided test at ``confidence`` finds the difference ``power`` of the time (the
    normal approximation for two proportions). None where they are alike (:data:`ALIKE`).

    The planner's 98.55% for one premium call against 99.52% for a three-agent debate
    takes about 1,600 runs of each; 200 cannot rank them.
    """
    if abs(p1 - p2) < ALIKE:
        return None
    z = NormalDist()
    mean = (p1 + p2) / 2.0
    spread = (z.inv_cdf(1.0 - (1.0 - confidence) / 2.0) * math.sqrt(2.0 * mean * (1.0 - mean))
              + z.inv_cdf(power) * math.sqrt(p1 * (1.0 - p1) + p2 * (1.0 - p2)))  # fmt: skip
    return math.ceil(spread**2 / (p1 - p2) ** 2)
