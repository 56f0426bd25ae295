"""Which levers, at what setting, meet the budgets at the lowest cost.

Levers, each opted into per step by the user: the model (``candidates``),
retries (0 to ``max_retries``), caching (``cacheable``), a cascade over the
candidates (``cascadable``: a cheaper model first, escalating to a dearer one),
debate rounds (``debate_round_options``), cutting a step (``cuttable``: the steps
after it then run after its own dependencies) and parallelising the steps marked
``independent`` (the dependencies between two independent steps are dropped).

The planner cannot tell what a step adds to the answer, so a cut is the last
resort: the answer keeps as many steps as the budgets allow, and is the cheapest
configuration among those that keep that many.

Stopping early (``stoppable``: the run may end when that step passes, as
``stop_when``) is weighed by Monte Carlo. Whether a stop pays depends on races,
trajectory by trajectory, between the stop step and the steps beside it (a step
that fails before the stop passes fails the run); the estimate lays the steps on
one schedule of expected latencies and misses them, and a search on its figures
would pick the configurations it flatters most. So the search's configurations
are taken again with each stop, ordered by the estimate that counts it, and the
Monte Carlo judges them: on expected budgets by its own figures (at most
:data:`STOP_TRIES`, until the estimate reaches the best answer's cost), under
``enforced`` ones as it judges every candidate. A stop never lowers a worst case,
so worst-case budgets do not weigh it.

Cost and log-reliability add up over steps; latency is a longest path. The
search is exhaustive when the space is at most :data:`EXHAUSTIVE_LIMIT`
configurations per structure; otherwise a beam search walks the steps in
topological order, keeps the Pareto-best partial configurations (cost,
reliability, finish times) thinned evenly along cost to ``beam_width``, prunes
those that cannot meet a budget even with the best remaining choices, and
polishes the winner by single-step exchanges.

Budgets bind the worst case (no run can break them), the expected figures (the typical run
keeps them), or, ``enforced``, neither: a run holds its ceiling and deadline itself, so the
question is how often it still succeeds. Then the candidates that meet the reliability
floor on paper are simulated under the budgets in order of expected cost, and the first
whose Monte Carlo success meets the floor is the answer.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field, replace
from typing import Literal

import numpy as np

from trilemma import dag
from trilemma._format import count
from trilemma.errors import UsageError
from trilemma.plan.estimate import (
    Estimate,
    StepEstimate,
    assemble,
    cancel_cost,
    estimate,
    step_estimate,
)
from trilemma.plan.simulate import PREDICTION_RUNS, SimResult, check_seed, under_budget
from trilemma.plan.slots import over_rate
from trilemma.spec import Budget, Debate, Step, Workflow, workflow_from_dict

__all__ = [
    "EXHAUSTIVE_LIMIT",
    "EXHAUSTIVE_MAX",
    "Candidate",
    "Choice",
    "OptimizeResult",
    "apply",
    "meets",
    "optimize",
]

EXHAUSTIVE_LIMIT = 20_000
EXHAUSTIVE_MAX = 1_000_000
"""The most configurations ``method="exhaustive"`` takes on: it holds each in memory at once
(about 0.4 KB and 15 us each; a million is 16 s and 400 MB here)."""
ENFORCED_RUNS = 20_000
"""Trajectories per candidate screened under ``enforced`` budgets; one within three standard
errors of the floor, or over it, is simulated again with PREDICTION_RUNS."""
ENFORCED_TRIES = 200
"""Candidates simulated at most, cheapest first, before ``enforced`` gives up."""
STOP_TRIES = 50
"""Configurations with a stop simulated at most on expected budgets."""
SLOT_TRIES = 200
"""Configurations checked at most in the run's concurrency slots when the answer's calls wait
for slots past the latency budget."""
BudgetOn = Literal["worst", "expected"]


@dataclass(frozen=True, slots=True)
class Choice:
    """The lever settings of one step."""

    model: str
    """Model profile."""
    retries: int
    """Extra attempts."""
    cached: bool
    """Served from cache."""
    rounds: int | None
    """Debate rounds (None: as in the spec)."""
    escalate: tuple[str, ...] | None = None
    """Models a failed attempt escalates to (None: as in the spec)."""
    cut: bool = False
    """Left out of the workflow."""


@dataclass(frozen=True, slots=True)
class _Metrics:
    cost_worst: float
    cost_expected: float
    log_p: float
    latency: float  # the latency the budget binds: worst or expected


@dataclass(frozen=True, slots=True)
class Candidate:
    """One full configuration and its figures."""

    choices: tuple[Choice, ...]
    """Per step, in spec order."""
    parallel: bool
    """Independent steps parallelised."""
    cost_worst: float
    """Dollars, every retry used."""
    cost_expected: float
    """Dollars, retries weighted by their chance."""
    latency_s: float
    """Seconds on the longest path (worst or expected, as the budget binds)."""
    reliability: float
    """End-to-end success."""
    stop_when: str | None = None
    """A ``stoppable`` step whose passing ends the run (its figures count the stop); None:
    the spec's own ``stop_when``, if it has one (the figures assume every step runs)."""

    def cost(self, on: BudgetOn) -> float:
        """The cost the budget binds."""
        return self.cost_worst if on == "worst" else self.cost_expected

    @property
    def figures(self) -> tuple[float, float, float, int]:
        """What the Pareto frontier compares, each the lower the better: worst cost,
        latency, failure (reliability negated) and steps cut, rounded past float noise."""
        return (round(self.cost_worst, 12), round(self.latency_s, 12),
                -round(self.reliability, 12), self.cuts)  # fmt: skip

    @property
    def cuts(self) -> int:
        """Steps left out."""
        return sum(c.cut for c in self.choices)


@dataclass(frozen=True, slots=True)
class OptimizeResult:
    """The optimizer's answer."""

    original: Estimate
    """The spec as given."""
    best: Workflow | None
    """The cheapest configuration that meets every budget, as a runnable spec."""
    best_estimate: Estimate | None
    """Its estimate."""
    frontier: tuple[Candidate, ...]
    """Pareto-optimal configurations seen (cost, latency, reliability), by cost."""
    method: str
    """How the space was searched."""
    space: int
    """Configurations in the space."""
    evaluated: int
    """Full configurations evaluated."""
    budget: Budget
    """The budgets applied."""
    budget_on: BudgetOn | Literal["enforced"] = "worst"
    """Whether budgets bind worst-case or expected figures, or are enforced as a run does."""
    notes: tuple[str, ...] = field(default=())
    """What the user should know about the answer."""
    enforced: SimResult | None = None
    """With ``enforced`` budgets: the answer's Monte Carlo under them."""
    simulated: int = 0
    """The candidates simulated: with ``enforced`` budgets, every one judged; with expected
    ones, those with a stop."""
    candidates: tuple[Candidate, ...] = field(default=(), repr=False)
    """Every configuration evaluated that meets the budgets."""
    judged: SimResult | None = None
    """With expected budgets, when the answer stops early: the Monte Carlo its figures are
    (the estimate of the chosen spec flatters a stop)."""
    chosen: Candidate | None = None
    """The configuration :attr:`best` applies, with the figures the search weighed it on."""
    over_on_average: bool = False
    """The configurations :meth:`over_in_slots` finds were over the latency budget on average
    (a run waits for the slowest of the branches that join: the expected latency's
    :attr:`~trilemma.plan.estimate.Estimate.latency_joined_s`), not in the slots."""
    _held: frozenset[tuple[float, float, float, int]] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "_held", frozenset(k.figures for k in self.candidates))

    def over_in_slots(self, c: Candidate) -> bool:
        """``c`` meets the budgets on paper (every ready call at once, the sum of mean step
        times) but was found over the latency budget in the run's concurrency slots and rate
        limits, or on average (:attr:`over_on_average`), so it is not among
        :attr:`candidates` (with ``enforced`` budgets: never, as those are simulated)."""
        if self.budget_on == "enforced" or not meets(c, self.budget, self.budget_on):
            return False
        return c.figures not in self._held


def optimize(
    wf: Workflow,
    budget: Budget | None = None,
    *,
    budget_on: BudgetOn | Literal["enforced"] = "worst",
    max_retries: int = 3,
    method: Literal["auto", "exhaustive", "beam"] = "auto",
    beam_width: int = 256,
    on_progress: Callable[[str], None] | None = None,
) -> OptimizeResult:
    """Search the levers of ``wf`` for the cheapest configuration within ``budget``.

    ``on_progress`` is told, now and then, what the search is doing ("beam pass 1 of 2: step
    40 of 300"), for a spinner's text: a beam search of hundreds of steps takes seconds, and
    a wide beam minutes.
    """
    if max_retries < 0:
        raise UsageError("--max-retries: must be 0 or more")
    budget = budget or wf.budget
    # The configurations carry the budgets they are chosen for, so that the chosen spec runs
    # under them (its ceiling and deadline are what the Monte Carlo checks held), not under
    # the budgets of the file the flags overrode.
    wf = wf if budget == wf.budget else wf.model_copy(update={"budget": budget})
    say = on_progress or _silent
    if budget_on == "enforced":
        found = _enforced(wf, budget, max_retries, method, beam_width, say)
    else:
        found = _search(wf, budget, budget_on, max_retries, method, beam_width, say)
        if budget_on == "expected" and _stops(wf):
            found = _with_stops(wf, found)
    return _floor_noted(_slots_noted(found))


def _silent(_: str) -> None:
    """No one to tell."""


def _floor_noted(found: OptimizeResult) -> OptimizeResult:
    """The result, with a note when no reliability floor was set and the cheapest answer
    within the other budgets succeeds less often than the original: the search gave
    reliability away for the savings, which nothing asked it to keep."""
    e, budget = found.best_estimate, found.budget
    if e is None or budget.min_reliability or budget == Budget():
        return found
    before, after = found.original.reliability, e.reliability
    if after >= before - 1e-12:
        return found
    note = (f"no reliability floor: the cheapest answer within the budgets succeeds "
            f"{after:.2%} of the time, the original {before:.2%}; --min-reliability (or "
            "the spec's budget: min_reliability) keeps it")
    return replace(found, notes=(*found.notes, note))


def _slots_noted(found: OptimizeResult) -> OptimizeResult:
    """The result, with a note when the chosen spec's calls do not all fit in its run's
    concurrency slots (:mod:`trilemma.plan.slots`): what they do to its critical path, and
    whether the latency budget was held in them (:func:`_in_slots`) or by the Monte Carlo
    that judged the answer, whose calls wait for them too."""
    e, spec = found.best_estimate, found.best
    if e is None or spec is None or e.latency_scheduled_s is None or not e.slots_bind:
        return found
    note = (f"concurrency: in the chosen spec's {spec.concurrency} slots its critical path takes "
            f"{e.latency_scheduled_s:.2f}s, not {e.latency_critical_s:.2f}s")
    deadline = found.budget.deadline_s
    if found.budget_on == "enforced" or found.judged is not None:
        note += "; the Monte Carlo that judged it counted them"
    elif deadline is not None:
        note += f"; the {deadline:g}s latency budget was held in them"
    return replace(found, notes=(*found.notes, note))


def _search(
    wf: Workflow,
    budget: Budget,
    budget_on: BudgetOn,
    max_retries: int,
    method: Literal["auto", "exhaustive", "beam"],
    beam_width: int,
    say: Callable[[str], None],
) -> OptimizeResult:
    """The search proper: every figure adds up over steps (a stop is not counted)."""
    options = [_options(wf, s, max_retries) for s in wf.steps]
    structures = [False, True] if any(s.independent for s in wf.steps) else [False]
    space = math.prod(len(o) for o in options) * len(structures)
    if method == "exhaustive" and space > EXHAUSTIVE_MAX:
        raise UsageError(
            f"--method exhaustive: {count(space)} configurations, more than the "
            f"{EXHAUSTIVE_MAX:,} it holds in memory at once; give --method beam, or auto "
            f"(exhaustive up to {EXHAUSTIVE_LIMIT:,} per structure)"
        )
    use_exhaustive = method == "exhaustive" or (
        method == "auto" and space <= EXHAUSTIVE_LIMIT * len(structures)
    )
    seen: list[Candidate] = []
    budgets = [budget] if budget == Budget() else [budget, Budget()]  # the frontier beyond too
    passes = len(structures) * len(budgets)
    for s_i, parallel in enumerate(structures):
        graph = _graph(wf, parallel)
        metrics = [
            [_metrics(wf, s, c, budget_on) for c in opts]
            for s, opts in zip(wf.steps, options, strict=True)
        ]
        if use_exhaustive:
            say(f"every configuration ({count(space)})")
            seen.extend(_exhaustive(wf, graph, options, metrics, parallel))
            continue
        for b_i, within in enumerate(budgets):
            at = f"beam pass {s_i * len(budgets) + b_i + 1} of {passes}"

            def placing(k: int, n: int, at: str = at) -> None:
                say(f"{at}: step {k} of {n}")

            seen.extend(_beam(wf, graph, options, metrics, within, budget_on, parallel,
                              beam_width, placing))  # fmt: skip
    feasible = [c for c in seen if meets(c, budget, budget_on)]
    best = min(feasible, key=lambda c: _rank(c, budget_on), default=None)
    if best is not None and not use_exhaustive:
        say("single-step exchanges from the best")
        best = _polish(wf, best, options, budget, budget_on)
        seen.append(best)
        feasible.append(best)
    method_name = "exhaustive" if use_exhaustive else f"beam (width {beam_width}) + exchange"
    notes = _notes(wf, budget, budget_on)
    best_estimate = None
    on_average = False
    if best is not None:
        best, best_estimate, feasible, held, on_average = _in_slots(
            wf, best, feasible, budget, budget_on, options
        )
        if best is not None and budget_on == "worst":  # its expected latency drawn in the slots
            best_estimate = estimate(apply(wf, best))
        notes += held
    spec = apply(wf, best) if best else None
    return OptimizeResult(
        original=estimate(wf),
        best=spec,
        best_estimate=best_estimate,
        frontier=tuple(_pareto(seen)),
        method=method_name,
        space=space,
        evaluated=len(seen),
        budget=budget,
        budget_on=budget_on,
        notes=notes,
        over_on_average=on_average,
        candidates=tuple(feasible),
        chosen=best,
    )


def _in_slots(
    wf: Workflow, best: Candidate, feasible: list[Candidate], budget: Budget, on: BudgetOn,
    options: list[list[Choice]],
) -> tuple[Candidate | None, Estimate | None, list[Candidate], tuple[str, ...], bool]:  # fmt: skip
    """The answer held to the latency budget in the run's concurrency slots, and on average.

    The search weighs latencies as if every ready call could go at once (a longest path adds
    up step by step; a schedule in slots does not), and on expected figures, as the sum of
    mean step times (a run waits for the slowest of branches that join, whose mean is
    later). So the answer's estimate, which replays the slots (:mod:`trilemma.plan.slots`)
    and draws the joins (:mod:`trilemma.plan.fanin`), is checked against the latency budget;
    when the slots or the joins put it over, the other configurations that meet the budgets
    are checked the same way, best ranked first, at most :data:`SLOT_TRIES`. Configurations
    that differ only in which of two alike steps (the same in all but their id, with the
    same dependencies and dependents) gets which setting take the same time (ties in
    priority aside), and are checked once: a fan-out of alike steps has many. When none
    fits, single-step exchanges from the answer (``options``) are made while it meets the
    budgets, until it fits in the limits (:func:`_exchanged`): the search ranked by cost
    alone, and the configurations that move calls off a rate-bound model may not be among
    those it kept. Returns the answer (None if none fits), its estimate, the configurations
    meeting the budgets without those found over it, a note when any was passed over, and
    whether the joins rather than the slots put the first answer over."""
    deadline = budget.deadline_s

    def checked(c: Candidate) -> tuple[Estimate, bool]:
        e = estimate(apply(wf, c), draw_slots=on == "expected", draw_runs=False)  # worst: replayed
        latency = e.latency_worst_s if on == "worst" else e.latency_expected_s
        return e, deadline is None or latency <= deadline + 1e-12

    e, fits = checked(best)
    if fits:
        return best, e, feasible, (), False
    # the joins' mean alone, without the slots, puts it over: say so, not the slots
    joins = deadline is not None and e.latency_joined_s is not None and e.latency_joined_s > deadline
    key = _alike(wf)
    over = {key(best)}
    found: Candidate | None = None
    for c in sorted(feasible, key=lambda c: _rank(c, on)):
        if key(c) in over:
            continue
        if len(over) == SLOT_TRIES:
            break
        e, fits = checked(c)
        if fits:
            found = c
            break
        over.add(key(c))
    kept = [c for c in feasible if key(c) not in over]
    passed = len(feasible) - len(kept)
    slots = f"the run's {wf.concurrency} concurrency slots"
    rated = over_rate(wf)
    if rated:
        slots += " and rate limits (" + "; ".join(f"{m}'s {w}" for m, w in rated.items()) + ")"
    topic, paper, where = "concurrency", "as if every ready call could go at once", f"in {slots}"
    there = "in them"
    if joins:
        topic, paper, there = "joins", "on the sum of mean step times", "so"
        where = "on average, a run waiting for the slowest of the branches that join"
    if found is None:
        exchanged = _exchanged(wf, best, options, budget, on, checked, key)
        if exchanged is not None:
            found, e = exchanged
            note = (f"{topic}: none of the {passed} best configuration(s) that meet the budgets "
                    f"{paper} fits the {deadline:g}s latency budget {where}; the answer is the "
                    f"best of them with single-step exchanges that shorten its time {there}, "
                    "made until it fits")  # fmt: skip
            return found, e, kept, (note,), joins
    if found is None:
        if joins:
            raise_ = (f"the best's mean is {e.latency_joined_s:.2f}s; give the steps side by "
                      "side surer candidates (fewer of them retry)")  # fmt: skip
        elif rated:
            raise_ = ("raise the rate limits (or `concurrency:`) if the endpoints allow, give the "
                      "steps on a rate-bound model other candidates")  # fmt: skip
        else:
            raise_ = "raise `concurrency:` (or a model's max_concurrency) if the endpoint allows"
        held = "" if joins else "their calls wait for them; "
        note = (f"{topic}: none of the {passed} best configuration(s) that meet the budgets "
                f"{paper} fits the {deadline:g}s latency budget {where} ({held}{len(over)} "
                f"checked, alike steps once; single-step exchanges from the best found none); "
                f"{raise_}, or the latency budget")  # fmt: skip
        return None, None, kept, (note,), joins
    note = (f"{topic}: {passed} configuration(s) ranked above the answer meet the {deadline:g}s "
            f"latency budget only {paper}, not {where}; the answer is the best that meets it "
            f"{there}")
    return found, e, kept, (note,), joins


def _exchanged(
    wf: Workflow, start: Candidate, options: list[list[Choice]], budget: Budget, on: BudgetOn,
    checked: Callable[[Candidate], tuple[Estimate, bool]],
    key: Callable[[Candidate], tuple[object, ...]],
) -> tuple[Candidate, Estimate] | None:  # fmt: skip
    """From ``start``, the single-step exchange that meets the budgets and shortens the time
    in the run's limits the most per dollar it adds, again and again (at most once per
    step), until the configuration fits the latency budget in them (``checked``); then the
    exchanges that lower its cost and keep it fitting. Exchanges alike up to which alike
    step makes them (``key``) are checked once. None if no exchange shortens it."""

    def latency(e: Estimate) -> float:
        return e.latency_worst_s if on == "worst" else e.latency_expected_s

    def moves(c: Candidate) -> Iterator[Candidate]:
        seen: set[tuple[object, ...]] = set()
        kept = _step_metrics(wf, c, on)
        for i in range(len(options)):
            for moved, _ in _exchanges(wf, c, i, options, on, kept):
                if meets(moved, budget, on) and key(moved) not in seen:
                    seen.add(key(moved))
                    yield moved

    best, (e, fits) = start, checked(start)
    for _ in range(len(options)):
        scored = []
        for moved in moves(best):
            e2, fits2 = checked(moved)
            gain = latency(e) - latency(e2)
            if gain > 1e-9:
                extra = max(moved.cost(on) - best.cost(on), 1e-12)
                scored.append((gain / extra, -latency(e2), moved, e2, fits2))
        if not scored:
            return None
        _, _, best, e, fits = max(scored, key=lambda t: (t[0], t[1]))
        if fits:
            break
    if not fits:
        return None
    cheaper = True
    while cheaper:  # give back what the fit does not need
        cheaper = False
        for moved in sorted(moves(best), key=lambda c: _rank(c, on)):
            if _rank(moved, on) >= _rank(best, on):
                break
            e2, fits2 = checked(moved)
            if fits2:
                best, e, cheaper = moved, e2, True
                break
    return best, e


def _alike(wf: Workflow) -> Callable[[Candidate], tuple[object, ...]]:
    """A configuration's key up to which of alike steps gets which setting: the multiset
    of (the step's kind, its setting). A step's kind is all of it but its id, with the
    steps it depends on and those depending on it."""
    below: dict[str, list[str]] = {s.id: [] for s in wf.steps}
    for s in wf.steps:
        for d in s.after:
            below[d].append(s.id)
    kind = [(s.model_dump_json(exclude={"id", "after"}), tuple(sorted(s.after)),
             tuple(sorted(below[s.id]))) for s in wf.steps]  # fmt: skip
    index = {k: i for i, k in enumerate(dict.fromkeys(kind))}
    kinds = [index[k] for k in kind]

    def key(c: Candidate) -> tuple[object, ...]:
        settings = sorted(zip(kinds, map(repr, c.choices), strict=True))
        return (c.parallel, c.stop_when, tuple(settings))

    return key


def _enforced(
    wf: Workflow,
    budget: Budget,
    max_retries: int,
    method: Literal["auto", "exhaustive", "beam"],
    beam_width: int,
    say: Callable[[str], None],
) -> OptimizeResult:
    """``budget_on="enforced"``: search on expected figures with only the reliability floor,
    then simulate the candidates, cheapest first, under the ceiling and deadline."""
    floor = budget.min_reliability
    if floor is None:
        raise UsageError("--budget-on enforced: give --min-reliability (or budget.min_reliability): "
                         "the success the Monte Carlo must find under the enforced budgets")  # fmt: skip
    on_paper = Budget(min_reliability=floor)  # enforcement can only turn a success into a failure
    found = _search(wf, on_paper, "expected", max_retries, method, beam_width, say)
    pool = [*found.frontier, *found.candidates]
    stops = _stops(wf)
    if stops:  # each configuration again with each stop, ordered by the estimate counting it
        pool += _stopped(wf, pool, stops)
    unique = {(c.choices, c.parallel, c.stop_when): c for c in pool
              if meets(c, on_paper, "expected")}  # fmt: skip
    order = sorted(unique.values(), key=lambda c: _rank(c, "expected"))
    seed = check_seed(wf)
    best = sim = None
    tried = 0
    for c in order[:ENFORCED_TRIES]:
        tried += 1
        say(f"Monte Carlo of candidate {tried} under the enforced budgets")
        run = _judged(apply(wf, c), floor, seed, budget.deadline_s, budget.max_cost_usd)
        if run.success_rate >= floor:
            best, sim = c, run
            break
    spec = apply(wf, best) if best else None
    note = (f"enforced: {tried} configuration(s) that meet {floor:.2%} on paper simulated, "
            f"cheapest expected cost first, {ENFORCED_RUNS:,} runs each ({PREDICTION_RUNS:,} near "
            "the floor) "
            "under the budgets as a run holds them (a ceiling refuses a call whose worst case "
            "does not fit; a deadline cancels)")  # fmt: skip
    if stops:
        note += f"; each configuration also with a stop on {', '.join(stops)} (stoppable)"
    if best is None and len(order) > ENFORCED_TRIES:
        note += f"; gave up after the {ENFORCED_TRIES} cheapest"
    return OptimizeResult(
        original=found.original, best=spec, best_estimate=estimate(spec) if spec else None,
        frontier=found.frontier, method=found.method, space=found.space,
        evaluated=found.evaluated, budget=budget, budget_on="enforced",
        notes=(*_notes(wf, budget, "enforced"), note), enforced=sim, simulated=tried,
        chosen=best,
    )  # fmt: skip


def _judged(
    variant: Workflow, floor: float, seed: int, deadline_s: float | None = None,
    max_cost_usd: float | None = None,
) -> SimResult:  # fmt: skip
    """The Monte Carlo of ``variant`` (under a deadline and a ceiling, if given) that decides
    whether it meets ``floor``: ENFORCED_RUNS trajectories, then PREDICTION_RUNS when that
    screen lands within three standard errors of the floor or over it."""
    screen = under_budget(variant, deadline_s, max_cost_usd, seed, ENFORCED_RUNS)
    if screen.success_rate < floor - 3 * screen.stderr:
        return screen
    return under_budget(variant, deadline_s, max_cost_usd, seed)


def _with_stops(wf: Workflow, found: OptimizeResult) -> OptimizeResult:
    """``found`` (expected figures, no stop counted) weighed against its configurations with
    each ``stoppable`` step as the stop, each judged on its Monte Carlo figures.

    They are tried in order of the cost the estimate gives them with the stop (which the
    schedule of expected latencies flatters), at most STOP_TRIES, until that estimate
    reaches the cost of the best answer so far.
    """
    budget, floor = found.budget, found.budget.min_reliability or 0.0
    stopped = [c for c in _stopped(wf, [*found.frontier, *found.candidates], _stops(wf))
               if meets(c, budget, "expected")]  # fmt: skip
    stopped.sort(key=lambda c: _rank(c, "expected"))
    seed = check_seed(wf)
    best = None
    if found.best is not None:
        best = min(found.candidates, key=lambda c: _rank(c, "expected"))
    judged: list[Candidate] = []
    best_sim = None
    for c in stopped[:STOP_TRIES]:
        if best is not None and _rank(c, "expected") >= _rank(best, "expected"):
            break
        variant = apply(wf, c)  # as the executor would run it: under the deadline it carries
        sim = _judged(variant, floor, seed, variant.budget.deadline_s)
        measured = replace(c, cost_expected=sim.cost_usd.mean, latency_s=sim.latency_s.mean,
                           reliability=sim.success_rate)  # fmt: skip
        judged.append(measured)
        if meets(measured, budget, "expected") and (
            best is None or _rank(measured, "expected") < _rank(best, "expected")
        ):
            best, best_sim = measured, sim
    note = (f"stoppable: {len(judged)} configuration(s) with a stop on "
            f"{', '.join(_stops(wf))} simulated ({ENFORCED_RUNS:,} runs each, "
            f"{PREDICTION_RUNS:,} near the floor), cheapest on the estimate first; their "
            "figures are the Monte Carlo's, which decides each race between the stop step and "
            "the steps beside it")  # fmt: skip
    spec = apply(wf, best) if best is not None else None
    return replace(
        found, best=spec, best_estimate=estimate(spec) if spec else None,
        frontier=tuple(_pareto([*found.frontier, *judged])),
        candidates=(*found.candidates, *(c for c in judged if meets(c, budget, "expected"))),
        notes=(*found.notes, note), simulated=len(judged),
        evaluated=found.evaluated + len(judged), judged=best_sim, chosen=best,
    )  # fmt: skip


def _notes(wf: Workflow, budget: Budget, on: BudgetOn | Literal["enforced"]) -> tuple[str, ...]:
    notes = []
    if not any(
        s.candidates or s.cacheable or s.independent or s.debate_round_options or s.cuttable
        or s.stoppable
        for s in wf.steps
    ):
        notes.append(
            "no step lists candidates, cacheable, independent, debate_round_options, "
            "cuttable or stoppable: only retries were searched"
        )
    if any(s.cascadable and len(set(s.candidates or [])) < 2 for s in wf.steps):
        notes.append("cascadable needs two or more candidates with different prices")
    if wf.stop_when is not None:
        notes.append(f"stop_when {wf.stop_when}: the search's figures assume every step runs; "
                     "the original's and the chosen spec's estimates count the stop")
    if _stops(wf) and on == "worst":
        notes.append("stoppable: a stop never lowers a worst case, so on worst-case budgets it "
                     "is not weighed; --budget-on expected or enforced weighs it by Monte Carlo")
    if budget == Budget():
        notes.append("no budget given: the answer is the cheapest configuration at all"
                     + (" that keeps every step" if any(s.cuttable for s in wf.steps) else ""))
    return tuple(notes)


def _stops(wf: Workflow) -> list[str]:
    """The ``stoppable`` steps other than the spec's own ``stop_when``."""
    return [s.id for s in wf.steps if s.stoppable and s.id != wf.stop_when]


def _stopped(wf: Workflow, cands: Sequence[Candidate], stops: Sequence[str]) -> list[Candidate]:
    """``cands`` (counted as running every step) again with each of ``stops``, their
    expected figures from the estimate that counts it."""
    rows: dict[tuple[int, Choice], tuple[StepEstimate, float]] = {}  # per step and choice

    def row(i: int, c: Choice) -> tuple[StepEstimate, float]:
        """The step's estimate under choice ``c``, and what cancelling an attempt bills."""
        key = (i, c)
        if key not in rows:
            step = _apply_step(wf.steps[i], c)
            rows[key] = (step_estimate(wf, step), cancel_cost(wf, step))
        return rows[key]

    graphs: dict[tuple[bool, frozenset[str]], dict[str, list[str]]] = {}
    unique = {(c.choices, c.parallel): c for c in cands if c.stop_when is None}
    out = []
    for c in unique.values():
        cut = frozenset(s.id for s, ch in zip(wf.steps, c.choices, strict=True) if ch.cut)
        graph = graphs.get((c.parallel, cut))
        if graph is None:
            graph = graphs[(c.parallel, cut)] = _uncut(_graph(wf, c.parallel), set(cut))
        kept = {s.id: row(i, ch) for i, (s, ch) in enumerate(zip(wf.steps, c.choices, strict=True))
                if not ch.cut}  # fmt: skip
        ests = {sid: r for sid, (r, _) in kept.items()}
        cancel = {sid: usd for sid, (_, usd) in kept.items()}
        for stop in stops:  # never a cut step: a stoppable step is not cuttable
            e = assemble(ests, graph, stop, cancel)
            out.append(Candidate(c.choices, c.parallel, e.cost_worst, e.cost_expected,
                                 e.latency_expected_s, e.reliability, stop))  # fmt: skip
    return out


def _options(wf: Workflow, step: Step, max_retries: int) -> list[Choice]:
    models = step.candidates or [step.model]
    rounds: Sequence[int | None] = step.debate_round_options or [None]
    least = len(step.escalate or ())  # a cascade needs an attempt per model it escalates to
    most = max(max_retries, step.retries)
    out = [
        Choice(m, k, False, r)
        for m in dict.fromkeys(models)
        for r in dict.fromkeys(rounds)
        for k in range(least, most + 1)
    ]
    if step.cascadable:  # a cheaper model first, escalating to each dearer one
        price = {m: wf.models[m].price_per_call for m in models}
        out += [
            Choice(a, k, False, r, (b,))
            for a, b in itertools.permutations(dict.fromkeys(models), 2)
            if price[a] < price[b]
            for r in dict.fromkeys(rounds)
            for k in range(1, most + 1)
        ]
    if step.cacheable or step.cached:
        out.append(Choice(step.model, least, True, None))
    if step.cuttable:
        out.append(Choice(step.model, 0, False, None, cut=True))
    return out


def _apply_step(step: Step, c: Choice) -> Step:
    cached = (step.cached or True) if c.cached else False  # a semantic rule stays as it was
    update: dict[str, object] = {"model": c.model, "retries": c.retries, "cached": cached}
    if c.escalate is not None:
        update["escalate"] = list(c.escalate)
    if c.rounds is not None:
        if step.debate is not None:
            update["debate"] = Debate(agents=step.debate.agents, rounds=max(c.rounds, 1))
        else:
            update["debate_rounds"] = c.rounds
    return step.model_copy(update=update)


def _metrics(wf: Workflow, step: Step, c: Choice, on: BudgetOn) -> _Metrics:
    if c.cut:  # no cost, no time, nothing to fail
        return _Metrics(0.0, 0.0, 0.0, 0.0)
    e = step_estimate(wf, _apply_step(step, c))
    latency = e.latency_worst_s if on == "worst" else e.latency_expected_s
    log_p = math.log(e.p_step) if e.p_step > 0.0 else -math.inf  # a model that always times out
    return _Metrics(e.cost_worst, e.cost_expected, log_p, latency)


def _graph(wf: Workflow, parallel: bool) -> dict[str, list[str]]:
    """Dependencies, with those between two independent steps dropped when ``parallel``."""
    graph = wf.edges()
    if not parallel:
        return graph
    indep = {s.id for s in wf.steps if s.independent}
    out: dict[str, list[str]] = {}
    for sid, deps in graph.items():
        if sid in indep:
            new: list[str] = []
            stack = list(deps)
            while stack:
                d = stack.pop()
                if d in indep:
                    stack.extend(graph[d])
                elif d not in new:
                    new.append(d)
            out[sid] = new
        else:
            extra = [a for a in dag.ancestors(graph, sid) if a in indep and a not in deps]
            out[sid] = [*deps, *sorted(extra)]
    return out


def apply(wf: Workflow, cand: Candidate) -> Workflow:
    """The spec with a candidate's levers applied (validated again)."""
    cut = {s.id for s, c in zip(wf.steps, cand.choices, strict=True) if c.cut}
    graph = _uncut(_graph(wf, cand.parallel), cut)
    steps = [
        _apply_step(s, c).model_copy(update={"after": graph[s.id]})
        for s, c in zip(wf.steps, cand.choices, strict=True)
        if not c.cut
    ]
    update: dict[str, object] = {"steps": steps}
    if cand.stop_when is not None:  # else the spec's own, if any
        update["stop_when"] = cand.stop_when
    data = wf.model_copy(update=update).model_dump(mode="json")
    return workflow_from_dict(data, "<optimized>")


def _uncut(graph: dict[str, list[str]], cut: set[str]) -> dict[str, list[str]]:
    """The graph without the ``cut`` steps: each step runs after what they ran after."""
    if not cut:
        return graph
    through: dict[str, list[str]] = {}  # a cut step's own dependencies, once worked out

    def deps(sid: str) -> list[str]:
        out: list[str] = []
        for d in graph[sid]:
            if d in cut and d not in through:
                through[d] = deps(d)
            for e in through[d] if d in cut else [d]:
                if e not in out:
                    out.append(e)
        return out

    return {sid: deps(sid) for sid in dag.topo_order(graph) if sid not in cut}


def _candidate(
    graph: dict[str, list[str]],
    ids: list[str],
    choices: tuple[Choice, ...],
    ms: Sequence[_Metrics],
    parallel: bool,
    order: Sequence[str] | None = None,
) -> Candidate:
    """``order``: a topological order of ``graph``, when the caller has one."""
    latency, _ = dag.longest_path(
        graph, {i: m.latency for i, m in zip(ids, ms, strict=True)}, order
    )
    return Candidate(
        choices,
        parallel,
        math.fsum(m.cost_worst for m in ms),
        math.fsum(m.cost_expected for m in ms),
        latency,
        math.exp(math.fsum(m.log_p for m in ms)),
    )


def meets(c: Candidate, b: Budget, on: BudgetOn) -> bool:
    """Whether a candidate keeps every budget."""
    eps = 1e-12
    return (
        (b.max_cost_usd is None or c.cost(on) <= b.max_cost_usd + eps)
        and (b.deadline_s is None or c.latency_s <= b.deadline_s + eps)
        and (b.min_reliability is None or c.reliability >= b.min_reliability - eps)
    )


def _rank(c: Candidate, on: BudgetOn) -> tuple[float, float, float, float]:
    """Fewest cuts, then cheapest, then most reliable, then quickest."""
    return (c.cuts, round(c.cost(on), 12), -round(c.reliability, 12), round(c.latency_s, 12))


def _exhaustive(
    wf: Workflow,
    graph: dict[str, list[str]],
    options: list[list[Choice]],
    metrics: list[list[_Metrics]],
    parallel: bool,
) -> list[Candidate]:
    """Every configuration (the budgets are applied to the result)."""
    ids, order = [s.id for s in wf.steps], dag.topo_order(graph)
    return [
        _picked(graph, ids, options, metrics, picks, parallel, order)
        for picks in itertools.product(*(range(len(o)) for o in options))
    ]


def _picked(
    graph: dict[str, list[str]], ids: list[str], options: list[list[Choice]],
    metrics: list[list[_Metrics]], picks: Sequence[int], parallel: bool, order: Sequence[str],
) -> Candidate:  # fmt: skip
    """The candidate made of option ``picks[i]`` for step ``i`` (spec order)."""
    choices = tuple(options[i][j] for i, j in enumerate(picks))
    ms = [metrics[i][j] for i, j in enumerate(picks)]
    return _candidate(graph, ids, choices, ms, parallel, order)


def _beam(
    wf: Workflow,
    graph: dict[str, list[str]],
    options: list[list[Choice]],
    metrics: list[list[_Metrics]],
    budget: Budget,
    on: BudgetOn,
    parallel: bool,
    beam_width: int,
    placing: Callable[[int, int], None],
) -> list[Candidate]:
    """Place the steps in topological order, each time every partial configuration in the
    beam with every option of the next step, as arrays: a row per partial configuration,
    its picks and finish times a column per step placed. ``placing(k, n)``: step k of n is
    next (from 1)."""
    ids = [s.id for s in wf.steps]
    order = dag.topo_order(graph)
    pos = {sid: k for k, sid in enumerate(order)}
    spec_index = {sid: i for i, sid in enumerate(ids)}

    def cost_of(m: _Metrics) -> float:
        return m.cost_worst if on == "worst" else m.cost_expected

    step_ms = [metrics[spec_index[sid]] for sid in order]
    min_cost_after = _suffix([min(cost_of(m) for m in ms) for ms in step_ms])
    max_logp_after = _suffix([max(m.log_p for m in ms) for ms in step_ms])
    cap = budget.max_cost_usd if budget.max_cost_usd is not None else math.inf
    floor = math.log(budget.min_reliability) if budget.min_reliability else -math.inf
    deadline = budget.deadline_s if budget.deadline_s is not None else math.inf
    picks = np.zeros((1, 0), dtype=np.intp)  # option index, a column per step placed
    finish = np.zeros((1, 0))  # finish time, likewise
    cuts, cost, log_p = np.zeros(1, dtype=np.int64), np.zeros(1), np.zeros(1)
    for k, sid in enumerate(order):
        placing(k + 1, len(order))
        ms = step_ms[k]
        parents = [pos[d] for d in graph[sid]]
        start = finish[:, parents].max(axis=1) if parents else np.zeros(len(cost))
        each_cost = cost[:, None] + np.array([cost_of(m) for m in ms])  # parent x option
        each_logp = log_p[:, None] + np.array([m.log_p for m in ms])
        each_end = start[:, None] + np.array([m.latency for m in ms])
        fits = (
            (each_cost + min_cost_after[k + 1] <= cap + 1e-12)
            & (each_logp + max_logp_after[k + 1] >= floor - 1e-12)
            & (each_end <= deadline + 1e-12)
        )
        parent, pick = np.nonzero(fits)  # parent by parent, option by option
        if not parent.size:
            return []
        child_cost, child_logp = each_cost[parent, pick], each_logp[parent, pick]
        child_end = each_end[parent, pick]
        child_cuts = cuts[parent] + np.array([c.cut for c in options[spec_index[sid]]])[pick]
        open_nodes = _open_nodes(graph, order, k)
        key = np.column_stack(
            [child_cuts, child_cost, -child_logp]
            + [finish[parent, i] if i < k else child_end for i in open_nodes]
        )
        kept = _prune(key)
        kept = kept[_thin(child_cuts[kept], beam_width)]
        parent, pick = parent[kept], pick[kept]
        picks = np.column_stack([picks[parent], pick])
        finish = np.column_stack([finish[parent], child_end[kept]])
        cuts, cost, log_p = child_cuts[kept], child_cost[kept], child_logp[kept]
    at = [pos[sid] for sid in ids]
    return [
        _picked(graph, ids, options, metrics, row, parallel, order)
        for row in picks[:, at].tolist()
    ]


def _suffix(values: list[float]) -> list[float]:
    out = [0.0] * (len(values) + 1)
    for i in range(len(values) - 1, -1, -1):
        out[i] = out[i + 1] + values[i]
    return out


def _open_nodes(graph: dict[str, list[str]], order: list[str], k: int) -> list[int]:
    """Placed steps (by topological position) that a step not yet placed depends on."""
    placed = set(order[: k + 1])
    needed = {d for sid in order[k + 1 :] for d in graph[sid] if d in placed}
    return [i for i, sid in enumerate(order[: k + 1]) if sid in needed]


def _prune(keys: np.ndarray) -> np.ndarray:
    """The rows of ``keys`` (steps cut, cost, -log reliability, open finish times) that no
    row kept before them in key order beats (no worse on each, within 1e-12; of equal rows
    the first stays), in key order.

    A beam's step holds thousands of rows and keeps most of them, and comparing each with all
    those kept before it, in turn, was most of a large search. `_beaten` compares all at
    once; the pass in turn is left only for the few rows beaten by dropped rows alone.
    """
    order = np.lexsort(keys.T[::-1])  # by the first column, then the next...; stable
    ordered = keys[order]
    beaten, by_clear = _beaten(ordered, skip=(0,))  # rows before have no more cuts
    # Beaten only by rows that were themselves dropped: within the tolerance, beaten-by is
    # not transitive (-log reliability is itself near 1e-12 after many retries), so whether
    # such a row stays depends on the rows kept so, in turn. Few rows are.
    kept_too: list[int] = []
    for r in np.flatnonzero(beaten & ~by_clear).tolist():
        if not kept_too or not (ordered[kept_too] <= ordered[r] + 1e-12).all(axis=1).any():
            kept_too.append(r)
    beaten[kept_too] = False
    kept: np.ndarray = order[~beaten]
    return kept


_BLOCK_BITS = 1024  # rows of bitsets at a time: 16 words a row stay in cache


def _beaten(keys: np.ndarray, skip: tuple[int, ...] = ()) -> tuple[np.ndarray, np.ndarray]:
    """Which rows of ``keys`` (n x d) some earlier row is no worse than on every column but
    those in ``skip`` (within 1e-12); and which some earlier row beats that no row before it
    beats.

    For each column the rows no worse than a given one are a prefix of that column's sorted
    order, so one running OR over the sorted rows gives every row its set as a bitset; a row
    is beaten when the AND of its sets and of the rows before it is not empty: n^2 d / 64
    word operations, done ``_BLOCK_BITS`` of the rows' bits at a time, in order, so that the
    rows of a block are settled before their bits are read as beaters no one beats.
    """
    n, d = keys.shape
    beaten, by_clear = np.zeros(n, dtype=bool), np.zeros(n, dtype=bool)
    columns = [c for c in range(d) if c not in skip]
    orders = [np.argsort(keys[:, c], kind="stable") for c in columns]
    reach = [
        np.searchsorted(keys[o, c], keys[:, c] + 1e-12, side="right")
        for c, o in zip(columns, orders, strict=True)
    ]
    rows = np.arange(n)
    for lo in range(0, n - 1, _BLOCK_BITS):
        hi = min(n, lo + _BLOCK_BITS)
        words = (hi - lo + 63) // 64

        def prefixes(order: np.ndarray, lo: int = lo, hi: int = hi, words: int = words
                     ) -> np.ndarray:  # fmt: skip
            """Row t: the bits (lo..hi) of the first t rows in ``order``."""
            sets = np.zeros((n + 1, words), dtype=np.uint64)
            at = np.nonzero((order >= lo) & (order < hi))[0]
            bit = order[at] - lo
            sets[at + 1, bit >> 6] = np.left_shift(np.uint64(1), (bit & 63).astype(np.uint64))
            return np.bitwise_or.accumulate(sets, axis=0, out=sets)

        later = rows[lo + 1 :]  # only rows after lo have earlier rows among these bits
        both = prefixes(rows)[later]
        for order, r in zip(orders, reach, strict=True):
            both &= prefixes(order)[r[later]]
        hit = np.flatnonzero(both.any(axis=1))
        beaten[lo + 1 + hit] = True
        clear = np.zeros(words * 64, dtype=bool)  # this block's rows no row beats: settled
        clear[: hi - lo] = ~beaten[lo:hi]
        clear_bits = np.packbits(clear, bitorder="little").view("<u8")
        by_clear[lo + 1 + hit] |= (both[hit] & clear_bits).any(axis=1)
    return beaten, by_clear


def _thin(cuts: np.ndarray, width: int) -> list[int]:
    """Of rows in key order (``cuts`` ascending, then cost), keep ``width`` spread evenly
    along cost, ends included; as many for each number of cuts (fewer cuts cost more, and
    must not be thinned away). Positions, in order."""
    if len(cuts) <= width:
        return list(range(len(cuts)))
    firsts = [0, *(np.flatnonzero(np.diff(cuts)) + 1).tolist(), len(cuts)]
    share = max(2, width // (len(firsts) - 1))
    out: list[int] = []
    for lo, hi in itertools.pairwise(firsts):
        if hi - lo <= share:
            out.extend(range(lo, hi))
            continue
        step = (hi - lo - 1) / (share - 1)
        out.extend(lo + round(i * step) for i in range(share))
    return out


def _polish(
    wf: Workflow, best: Candidate, options: list[list[Choice]], budget: Budget, on: BudgetOn
) -> Candidate:
    """Single-step exchanges from ``best`` while one lowers the cost within budget."""
    kept = _step_metrics(wf, best, on)
    improved = True
    while improved:
        improved = False
        for i in range(len(options)):
            for cand, ms in _exchanges(wf, best, i, options, on, kept):  # from the best at step i
                if meets(cand, budget, on) and _rank(cand, on) < _rank(best, on):
                    best, improved, kept[i] = cand, True, ms  # it differs from the last at i only
    return best


def _step_metrics(wf: Workflow, c: Candidate, on: BudgetOn) -> list[_Metrics]:
    """Each step's figures under ``c``'s choices."""
    return [_metrics(wf, s, ch, on) for s, ch in zip(wf.steps, c.choices, strict=True)]


def _exchanges(
    wf: Workflow, c: Candidate, i: int, options: list[list[Choice]], on: BudgetOn,
    kept: list[_Metrics],
) -> Iterator[tuple[Candidate, _Metrics]]:  # fmt: skip
    """The configurations that differ from ``c`` in step ``i``'s choice alone, each with its
    step ``i``'s figures (``kept``: each step's figures under ``c``, read, not changed)."""
    graph = _graph(wf, c.parallel)
    ids, order = [s.id for s in wf.steps], dag.topo_order(graph)
    others = (kept[:i], kept[i + 1 :])
    for choice in options[i]:
        if choice != c.choices[i]:
            choices = (*c.choices[:i], choice, *c.choices[i + 1 :])
            mine = _metrics(wf, wf.steps[i], choice, on)
            ms = [*others[0], mine, *others[1]]
            yield _candidate(graph, ids, choices, ms, c.parallel, order), mine


def _pareto(cands: list[Candidate]) -> list[Candidate]:
    """Configurations no other beats on worst cost, latency, reliability and steps kept at once."""
    pts = sorted({c.figures: c for c in cands}.items())
    front: list[tuple[tuple[float, float, float, int], Candidate]] = []
    for key, c in pts:
        if any(all(a <= b for a, b in zip(k, key, strict=True)) for k, _ in front):
            continue
        front.append((key, c))
    return [c for _, c in front]
