"""Commands that predict: book, estimate, simulate, optimize, exercise, and the demo."""

from __future__ import annotations

import shlex
import sys
from contextlib import nullcontext, suppress
from enum import StrEnum
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Literal

import typer
from rich.console import Console

from trilemma._format import did_you_mean
from trilemma.cli._common import (
    DEFAULT_JOURNAL,
    JsonFlag,
    SetOpt,
    SpecFile,
    app,
    deadline_seconds,
    dollars,
    emit_json,
    journal_to_read,
    positive,
    print_set,
    progress,
    seconds,
    seed_option,
    stdout_console,
    writable,
    write_atomic,
)
from trilemma.errors import UsageError
from trilemma.examples import STARTER, workflow_examples
from trilemma.plan.sensitivity import FACTOR

if TYPE_CHECKING:  # each command imports what it uses: `trilemma --help` loads none of it
    from trilemma.plan.simulate import SimResult
    from trilemma.spec import Simulation, Workflow


@app.command(rich_help_panel="Predict")
def book(
    notes: Annotated[bool, typer.Option(help="Print the notes on the seed's quirks.")] = True,
) -> int:
    """Print the seed's Output 32.10.1, computed by the seed's own code.

    Example: trilemma book
    """
    from trilemma.plan import book as book_mod

    sys.stdout.write(book_mod.book_report() + "\n")
    if notes:
        sys.stdout.write("\nNotes (quirks of the seed's code that these figures keep):\n")
        for note in book_mod.QUIRKS:
            sys.stdout.write(f"  - {note}\n")
    return 0


@app.command(rich_help_panel="Predict")
def estimate(spec: SpecFile, sets: SetOpt = None, as_json: JsonFlag = False) -> int:
    """Analytic cost, critical-path latency and reliability of a workflow.

    Example: trilemma estimate examples/ticket.yaml --json

    Example: trilemma estimate examples/starter.yaml --set models.cheap.p_ok=0.8
    """
    from trilemma.plan.estimate import estimate as estimate_wf
    from trilemma.report import tables
    from trilemma.spec import load_workflow

    wf = load_workflow(spec, sets or ())
    e = estimate_wf(wf)
    if as_json:
        emit_json(e.to_json())
    else:
        console = stdout_console()
        print_set(console, sets)
        console.print(tables.estimate_table(e, title=f"Estimate of {spec}"))
        for line in [*tables.price_sources(wf), *tables.answer_caps(wf),
                     *tables.cache_assumptions(wf),
                     *tables.fault_assumptions(wf), *tables.wave_assumptions(wf),
                     *tables.retry_assumptions(wf), *tables.join_assumptions(e),
                     *tables.slot_assumptions(wf, e), *tables.halt_assumptions(e),
                     *tables.budget_fit(wf, e)]:
            console.print(line, highlight=False)
    return 0


@app.command(rich_help_panel="Predict")
def simulate(
    spec: SpecFile,
    runs: Annotated[int, typer.Option("--runs", "-n", help="Trajectories to simulate.")] = 100_000,
    seed: Annotated[int | None, seed_option(
        help="Random seed (default: the spec's, else a fresh one, shown with the result).")] = None,
    recall: Annotated[float | None, typer.Option(min=0.0, max=1.0, help="Gate recall.")] = None,
    retry_correlation: Annotated[
        float | None, typer.Option(min=0.0, max=1.0, help="Chance a retry fails the same way.")
    ] = None,
    compounding: Annotated[
        float | None, typer.Option(min=0.0, max=1.0, help="p factor after an uncaught failure.")
    ] = None,
    halt: Annotated[bool, typer.Option(
        help="A failed step stops new calls, as the executor does: the steps not started by "
        "then are not run (--no-halt: run them all).",
    )] = True,
    deadline: Annotated[float | None, deadline_seconds(
        "Seconds; a run still going then is cancelled and fails (default: the spec's "
        "budget.deadline_s).",
    )] = None,
    max_cost: Annotated[float | None, dollars(
        "Dollars; hold this spend ceiling as `run --max-cost` does: a call whose worst case "
        "does not fit is not sent, and the run stops and fails.",
    )] = None,
    ceiling: Annotated[bool, typer.Option(
        "--ceiling", help="Hold the spec's budget.max_cost_usd as a spend ceiling (not held "
                          "by default: it is also the optimizer's target for expected cost).",
    )] = False,
    ceiling_for: Annotated[float | None, typer.Option(
        "--ceiling-for", min=0.0, max=1.0, metavar="SHARE",
        help="Find the smallest spend ceiling under which this share of runs still finishes "
             "(0.95), to a millionth of a dollar.",
    )] = None,
    deadline_for: Annotated[float | None, typer.Option(
        "--deadline-for", min=0.0, max=1.0, metavar="SHARE",
        help="Find the smallest deadline under which this share of runs still finishes "
             "(0.95), to a millisecond.",
    )] = None,
    hedge: Annotated[str | None, typer.Option(
        metavar="MODEL=T,T,...",
        help="Compare hedge thresholds for MODEL: seconds (3), percentiles of its latency "
             "(p90) or none; MODEL= may be left out when the spec has one model.",
    )] = None,
    plot: Annotated[Path | None, typer.Option(
        help="Write cost and latency per run as histograms (PNG); with --hedge, each "
             "threshold's cost against p50/p95/p99.",
    )] = None,
    sets: SetOpt = None,
    as_json: JsonFlag = False,
) -> int:
    """Monte Carlo of a workflow: success rate with a 95% interval, cost and latency tails.

    Example: trilemma simulate examples/seed-chain.yaml --runs 1000000 --seed 7 --recall 0.9

    Example: trilemma simulate examples/jittery.yaml --hedge premium=p95,p80,p50 --plot hedge.png

    Example: trilemma simulate examples/ceiling.yaml --ceiling

    Example: trilemma simulate examples/ceiling.yaml --ceiling-for 0.95

    Example: trilemma simulate examples/jittery.yaml --deadline-for 0.95
    """  # fmt: skip
    from trilemma.plan.estimate import estimate as estimate_wf
    from trilemma.plan.simulate import check_runs
    from trilemma.plan.simulate import simulate as simulate_wf
    from trilemma.report import tables
    from trilemma.spec import Simulation, load_workflow

    check_runs(positive("--runs", runs))
    writable("--plot", plot)
    wf = load_workflow(spec, sets or ())
    if not as_json:
        print_set(stdout_console(), sets)
    overrides = {
        k: v
        for k, v in dict(
            recall=recall, retry_correlation=retry_correlation, compounding=compounding
        ).items()
        if v is not None
    }
    settings = Simulation(**{**wf.simulation.model_dump(), **overrides})
    seed = wf.seed_for(seed)  # drawn when neither gives one, and shown: --seed repeats it
    if deadline is not None:
        wf = wf.with_budget(deadline_s=deadline)
    cap = _ceiling(spec, wf, max_cost, ceiling)
    if ceiling_for is not None or deadline_for is not None:
        return _budget_for(wf, ceiling_for, deadline_for, runs, seed,
                           cap is not None or hedge is not None or deadline is not None, as_json)  # fmt: skip
    if hedge is not None:
        return _hedge_thresholds(wf, hedge, runs, seed, settings, halt, plot, as_json, cap)
    show = not as_json and sys.stderr.isatty() and _long(runs, wf, 20_000_000)
    with progress(show) as bar:
        task = bar.add_task("simulating", total=runs)
        result = simulate_wf(wf, runs, seed, settings, halt=halt, max_cost_usd=cap,
                             keep=plot is not None, progress=lambda n: bar.advance(task, n))  # fmt: skip
    if plot is not None:
        from trilemma.report.plots import plot_simulation

        plot_simulation(result, plot, f"Monte Carlo of {spec}")
    e = estimate_wf(wf)
    if as_json:
        emit_json(result.to_json(e))
    else:
        stdout_console().print(tables.simulate_table(result, e, halted=halt))
    return 0


def _long(trajectories: int, wf: Workflow, steps: int) -> bool:
    """A Monte Carlo worth a progress bar: at least ``steps`` trajectory-steps (a spec of
    under ten steps counted as ten; a 1,000-step spec's 100,000 runs take 25 s)."""
    return trajectories * max(10, len(wf.steps)) >= steps


def _budget_for(
    wf: Workflow, ceiling_for: float | None, deadline_for: float | None, runs: int,
    seed: int | None, other: bool, as_json: bool,
) -> int:  # fmt: skip
    """``simulate --ceiling-for`` / ``--deadline-for``: 0 with the budget found, 1 when none
    reaches the share."""
    from trilemma.plan.estimate import estimate as estimate_wf
    from trilemma.plan.simulate import smallest_budget
    from trilemma.report import tables

    if ceiling_for is not None and deadline_for is not None:
        raise UsageError("give --ceiling-for or --deadline-for, one search at a time")
    flag = "--ceiling-for" if ceiling_for is not None else "--deadline-for"
    share = ceiling_for if ceiling_for is not None else deadline_for
    assert share is not None
    if other:
        raise UsageError(f"{flag} finds a budget: give it without --max-cost, --ceiling, "
                         "--deadline or --hedge")  # fmt: skip
    if share <= 0:
        raise UsageError(f"{flag} {share:g}: give the share of runs to finish, above 0")
    kind: Literal["max_cost_usd", "deadline_s"] = (
        "max_cost_usd" if ceiling_for is not None else "deadline_s"
    )
    show = not as_json and sys.stderr.isatty()
    with Console(stderr=True).status(f"bisecting ({flag})") if show else nullcontext():
        found = smallest_budget(wf, share, runs, seed, kind)
    if as_json:
        emit_json({**found.to_json(), "runs": runs, "seed": seed})
    else:
        for line in tables.budget_for_lines(found, estimate_wf(wf)):
            stdout_console().print(line, highlight=False)
    return 0 if found.value is not None else 1


def _ceiling(spec: Path, wf: Workflow, max_cost: float | None, ceiling: bool) -> float | None:
    """The spend ceiling ``simulate`` holds: ``--max-cost``, else with ``--ceiling`` the spec's."""
    if max_cost is not None:
        if ceiling:
            raise UsageError("give --max-cost USD or --ceiling (the spec's ceiling), not both")
        if max_cost <= 0:
            raise UsageError(f"--max-cost {max_cost:g}: give dollars above 0")
        return max_cost
    if ceiling and wf.budget.max_cost_usd is None:
        raise UsageError(f"{spec}: budget.max_cost_usd: --ceiling holds the spec's ceiling and "
                         "it has none; add one, or give --max-cost USD")  # fmt: skip
    return wf.budget.max_cost_usd if ceiling else None


def _hedge_thresholds(
    wf: Workflow, text: str, runs: int, seed: int | None, settings: Simulation, halt: bool,
    plot: Path | None, as_json: bool, max_cost_usd: float | None,
) -> int:  # fmt: skip
    """``simulate --hedge``: each threshold's cost beside its latency tail."""
    from trilemma.plan.thresholds import hedge_thresholds, parse_thresholds
    from trilemma.report import tables

    model, labels = parse_thresholds(text, wf)
    total = runs * (len(labels) + 1)
    with progress(not as_json and sys.stderr.isatty() and _long(total, wf, 10_000_000)) as bar:
        task = bar.add_task("simulating thresholds", total=total)
        rows = hedge_thresholds(wf, model, labels, runs, seed, settings, halt=halt,
                                max_cost_usd=max_cost_usd,
                                progress=lambda n: bar.advance(task, n))  # fmt: skip
    if plot:
        from trilemma.report.plots import plot_hedge

        plot_hedge(rows, model, plot)
    if as_json:
        emit_json({"model": model, "runs": runs, "seed": seed,
                   "thresholds": [r.to_json() for r in rows]})  # fmt: skip
    else:
        stdout_console().print(tables.hedge_table(rows, model))
    return 0


class BudgetOn(StrEnum):
    """Which figures a budget binds, or ``enforced``: none, runs hold them."""

    worst = "worst"
    expected = "expected"
    enforced = "enforced"


class Method(StrEnum):
    """How the optimizer searches."""

    auto = "auto"
    exhaustive = "exhaustive"
    beam = "beam"


@app.command(rich_help_panel="Predict")
def optimize(
    spec: SpecFile,
    max_cost: Annotated[float | None, dollars("Cost ceiling, $.")] = None,
    max_latency: Annotated[float | None, seconds("Latency budget, s.")] = None,
    min_reliability: Annotated[
        float | None, typer.Option(min=0.0, max=1.0, help="Reliability floor.")
    ] = None,
    budget_on: Annotated[BudgetOn, typer.Option(
        help="Bind worst or expected figures; or enforced: runs hold the ceiling and deadline, "
             "and the Monte Carlo's success under them must meet the reliability floor.",
    )] = (
        BudgetOn.worst
    ),
    max_retries: Annotated[int, typer.Option(min=0, max=10, help="Retries to try per step.")] = 3,
    method: Annotated[Method, typer.Option(help="Search method.")] = Method.auto,
    beam_width: Annotated[int, typer.Option(min=2, help="Beam width.")] = 256,
    out: Annotated[
        Path | None, typer.Option("--out", "-o", help="Write the chosen spec here.")
    ] = None,
    plot: Annotated[Path | None, typer.Option(help="Write the frontier as a PNG.")] = None,
    sets: SetOpt = None,
    as_json: JsonFlag = False,
) -> int:
    """The cheapest choice of levers that meets the budgets, and the Pareto frontier.

    Budgets come from the spec's budget: and are overridden by the flags.

    Example: trilemma optimize examples/seed-chain.yaml --max-cost 0.10 --min-reliability 0.95
    """
    from trilemma.plan.optimize import optimize as optimize_wf
    from trilemma.report import tables
    from trilemma.spec import Budget, dump_workflow, load_workflow

    writable("--out", out)
    writable("--plot", plot)
    wf = load_workflow(spec, sets or ())
    if not as_json:
        print_set(stdout_console(), sets)
    for flag, value in (("--max-latency", max_latency), ("--min-reliability", min_reliability)):
        if value is not None and value <= 0:
            raise UsageError(f"{flag} {value:g}: give a number above 0")
    flags = dict(max_cost_usd=max_cost, deadline_s=max_latency, min_reliability=min_reliability)
    budget = Budget(
        **{**wf.budget.model_dump(), **{k: v for k, v in flags.items() if v is not None}}
    )
    show = not as_json and sys.stderr.isatty()  # a search of hundreds of steps takes a minute
    with Console(stderr=True).status("searching the levers") if show else nullcontext() as status:

        def searching(doing: str) -> None:
            if status is not None:
                status.update(f"searching the levers: {doing}")

        r = optimize_wf(wf, budget, budget_on=budget_on.value, max_retries=max_retries,
                        method=method.value, beam_width=beam_width, on_progress=searching)  # fmt: skip
        if status is not None:
            status.update("checking the budgets by Monte Carlo")
        checks = _budget_checks(wf, r)
    chosen = dump_workflow(r.best) if r.best else None
    if out and chosen:
        write_atomic(out, chosen)
    if plot:
        from trilemma.report.plots import plot_frontier

        plot_frontier(r, plot)
    estimates = {"original": r.original, "chosen": r.best_estimate}  # for the runs in time by a hair
    if as_json:
        check = {k: v.brief(estimates[k]) for k, v in checks.items()} or None
        emit_json({**_optimize_json(r, chosen), "budget_check": check,
                   "deadline_check": check if budget.deadline_s is not None else None})  # fmt: skip
    else:
        console = stdout_console()
        console.print(tables.optimize_view(r))
        if checks:
            floor = None if r.enforced is not None else r.budget.min_reliability  # else it holds
            console.print(tables.budget_check_line(checks, estimates, floor), style="dim")
        long = chosen.count("\n") if chosen else 0
        if chosen and r.best is not None and long > CHOSEN_LINES_SHOWN:
            written = f"written to {out}" if out else "--out FILE writes it, --json holds it"
            console.print(f"\n# chosen configuration: {long:,} lines ({written});"
                          " what it changes:", markup=False, soft_wrap=True)  # fmt: skip
            for line in tables.spec_changes(wf, r.best):  # each line whole, so each stays a comment
                console.print(f"#   {line}", markup=False, soft_wrap=True)
        elif chosen:
            console.print(f"\n# chosen configuration{f' (written to {out})' if out else ''}")
            console.print(chosen, markup=False)
    if r.best is None:
        sys.stderr.write(
            "trilemma optimize: no configuration meets the budgets; relax one, or add "
            "candidates, cacheable, independent, cuttable or stoppable steps to the spec\n"
        )
        return 1
    return 0


CHOSEN_LINES_SHOWN = 100
"""``optimize`` prints a chosen spec this long whole; a longer one as what it changes."""


def _budget_checks(wf: Workflow, r: Any) -> dict[str, SimResult]:
    """The original and the chosen spec simulated with the budgets as a run's own: the
    latency budget binds a path's latency, the cost budget expected or worst figures, but a
    run's deadline cancels it and its ceiling refuses a call whose worst case does not fit."""
    from trilemma.plan.simulate import check_seed, under_budget

    b = r.budget
    if b.deadline_s is None and b.max_cost_usd is None:
        return {}
    checks = {"original": under_budget(wf, b.deadline_s, b.max_cost_usd, check_seed(wf))}
    if r.enforced is not None:  # the enforced search simulated its answer just so already
        checks["chosen"] = r.enforced
    elif r.best is not None:
        checks["chosen"] = under_budget(r.best, b.deadline_s, b.max_cost_usd, check_seed(wf))
    return checks


def _cut_steps(r: Any) -> list[str]:
    """The steps the chosen spec left out."""
    kept = {t.id for t in r.best.steps} if r.best is not None else None
    return [s.id for s in r.original.per_step if kept is not None and s.id not in kept]


def _optimize_json(r: Any, chosen: str | None) -> dict[str, Any]:
    from trilemma.report import tables

    at = tables.chosen_at(r.frontier, r.chosen)
    return {
        "method": r.method,
        "space": r.space,
        "evaluated": r.evaluated,
        "feasible": r.best is not None,
        "budget": r.budget.model_dump(),
        "budget_on": r.budget_on,
        "original": r.original.to_json(),
        "chosen": r.best_estimate.to_json() if r.best_estimate else None,
        "chosen_spec": chosen,
        "cut_steps": _cut_steps(r),
        "frontier": [
            {
                "cost_usd": {
                    "worst": round(c.cost_worst, 12),
                    "expected": round(c.cost_expected, 12),
                },
                "latency_s": round(c.latency_s, 12),
                "reliability": c.reliability,
                "levers": tables.describe(c),
                "steps_cut": c.cuts,
                "stop_when": c.stop_when,
                "chosen": k == at,
                "over_in_slots": r.over_in_slots(c),
            }
            for k, c in enumerate(r.frontier)
        ],
        "over_on_average": r.over_on_average,  # what put those over_in_slots over
        "notes": list(r.notes),
        "judged": None if r.judged is None else {
            **r.judged.brief(r.best_estimate), "stops_simulated": r.simulated,
        },
        "enforced": None if r.enforced is None else {
            **r.enforced.brief(r.best_estimate), "candidates_simulated": r.simulated,
        },
    }


class ExerciseId(StrEnum):
    """The seed's exercises."""

    sizing = "32.10.1"
    routing = "32.10.2"
    tension = "32.10.3"


def _exercise_id(value: str) -> ExerciseId:
    """An exercise by its number in the seed (32.10.2) or alone (2)."""
    for one in ExerciseId:
        if value in (one.value, one.value.rsplit(".", 1)[1]):
            return one
    shown = ", ".join(f"'{one.value}'" for one in ExerciseId)
    raise typer.BadParameter(f"{value!r} is not one of {shown} (or 1, 2, 3)")


@app.command(rich_help_panel="Predict")
def exercise(
    number: Annotated[ExerciseId, typer.Argument(
        parser=_exercise_id, show_default=False,
        help="32.10.1, 32.10.2 or 32.10.3; or 1, 2 or 3.")],
    tickets_per_day: Annotated[int, typer.Option(min=1, help="32.10.1: volume.")] = 200_000,
    router_usd: Annotated[float, dollars("32.10.2: router $ per step.")] = 0.002,
    router_s: Annotated[float, seconds("32.10.2: router s per step.")] = 0.4,
    misroute: Annotated[
        float, typer.Option(min=0.0, max=1.0, help="32.10.2: misroute rate.")
    ] = 0.1,
    p_small_hard: Annotated[
        float, typer.Option(min=0.0, max=1.0, help="32.10.2: small model's p on hard steps.")
    ] = 0.8,
    seed_model: Annotated[
        bool, typer.Option("--seed-model", help="32.10.2: a free, perfect router (the seed's).")
    ] = False,
    plot: Annotated[Path | None, typer.Option(help="32.10.2: write the sweep as a PNG.")] = None,
    as_json: JsonFlag = False,
) -> int:
    """Answer one of the seed's exercises with the planner.

    Example: trilemma exercise 32.10.2 --plot routing.png
    """
    from trilemma.plan.exercises import debate_vs_retry, routing_sweep, ticket_spend
    from trilemma.report import tables

    writable("--plot", plot)
    console = stdout_console()
    if number is ExerciseId.sizing:
        ans = ticket_spend(tickets_per_day)
        data, view = ans.to_json(), tables.ticket_table(ans)
    elif number is ExerciseId.routing:
        if seed_model:
            sweep = routing_sweep()
        else:
            sweep = routing_sweep(router_usd=router_usd, router_s=router_s, misroute=misroute,
                                  p_small_hard=p_small_hard)  # fmt: skip
        if plot:
            from trilemma.report.plots import plot_routing

            plot_routing(sweep, plot)
        data, view = sweep.to_json(), tables.routing_table(sweep)
    else:
        d = debate_vs_retry()
        data, view = d.to_json(), tables.debate_table(d)
    if as_json:
        emit_json(data)
    else:
        console.print(view)
    return 0


@app.command(rich_help_panel="Predict")
def demo(
    runs: Annotated[int, typer.Option("--runs", "-n", help="Monte Carlo runs.")] = 200_000,
    journal: Annotated[
        Path, typer.Option("--journal", help="The journal for the demo run.")
    ] = DEFAULT_JOURNAL,
) -> int:
    """An offline tour: the book, an estimate, a Monte Carlo, an optimization, a run, a comparison, a budget sweep.

    The run executes the optimizer's answer on the simulator; the comparison measures a
    single call against three workflows; the sweep tightens the ceiling on the ticket
    workflow.

    Example: trilemma demo
    """
    from trilemma.examples import example_path
    from trilemma.plan import book as book_mod
    from trilemma.plan.estimate import estimate as estimate_wf
    from trilemma.plan.optimize import optimize as optimize_wf
    from trilemma.plan.simulate import check_runs
    from trilemma.plan.simulate import simulate as simulate_wf
    from trilemma.report import tables
    from trilemma.spec import load_workflow

    check_runs(positive("--runs", runs))
    console = stdout_console()
    _section(console, "1. The seed's Output 32.10.1, recomputed", "trilemma book")
    console.print(book_mod.book_report(), markup=False, soft_wrap=True)  # the seed's lines, unbroken
    ticket = example_path("ticket.yaml")
    _section(console, "2. Exercise 32.10.1 as a spec", f"trilemma estimate {_shown(ticket)}")
    console.print(tables.estimate_table(estimate_wf(load_workflow(ticket))))
    chain_path = example_path("seed-chain.yaml")
    chain = load_workflow(chain_path)
    _section(console, "3. Monte Carlo of the 12-step chain with a gate of recall 0.9",
             f"trilemma simulate {_shown(chain_path)} --recall 0.9 --retry-correlation 0.2 "
             f"--seed 7 --runs {runs}")  # fmt: skip
    leaky = chain.simulation.model_copy(update={"recall": 0.9, "retry_correlation": 0.2})
    result = simulate_wf(chain, runs, seed=7, settings=leaky)
    console.print(tables.simulate_table(result, estimate_wf(chain)))
    _section(console, "4. The cheapest levers for <= $0.10 and >= 95%",
             f"trilemma optimize {_shown(chain_path)}")  # fmt: skip
    best = optimize_wf(chain)
    console.print(tables.optimize_view(best))
    if best.best is not None:
        from trilemma.journal import Journal
        from trilemma.run.session import execute

        _section(console, "5. The chosen configuration, run on the simulator",
                 f"trilemma optimize {_shown(chain_path)} --out chosen.yaml && trilemma run "
                 f"chosen.yaml --seed 7 --max-cost 0.10{tables.journal_flag(journal)}")  # fmt: skip
        with Journal(journal) as j:
            ran = execute(best.best, journal=j, seed=7, max_cost_usd=0.10, source="<demo>")
        console.print(tables.run_view(ran))
    _demo_compare(console, journal)
    _demo_sweep(console, journal)
    console.print(
        "\nNext: `trilemma init` for a spec of your own to edit, `trilemma runs` for the journal, "
        "and trilemma --help."
    )
    return 0


@app.command(rich_help_panel="Predict")
def sensitivity(
    spec: SpecFile,
    factor: Annotated[float, typer.Option(
        min=1.01, max=100.0, help="Divide and multiply each guess by this (p_ok: its failure rate).",
    )] = FACTOR,
    plot: Annotated[Path | None, typer.Option(
        help="Write a tornado a budget (cost, latency, runs that fail) as a PNG.")] = None,
    from_journal: Annotated[Path | None, typer.Option(
        "--from-journal", help="Beside each guess, what this journal's ledger measured of it "
                               "(as calibrate --from-journal fits it).",
    )] = None,
    sets: SetOpt = None,
    as_json: JsonFlag = False,
) -> int:
    """Which guess the figures hang on: each model's p_ok, latency and price halved and doubled.

    A profile's figures are guesses until `trilemma calibrate` measures them. Each one (and
    each step's own p_ok, a route's branch shares, a cache's planned hit rate) is moved in
    turn, the spec estimated again, and the guesses that move the expected cost, the
    expected latency or the reliability most come first: measure those first.

    Example: trilemma sensitivity examples/starter.yaml --plot sensitivity.png

    Example: trilemma sensitivity app.yaml --from-journal prod.db
    """  # fmt: skip
    from trilemma.plan.sensitivity import sensitivity as sensitivity_of
    from trilemma.report import tables
    from trilemma.spec import load_workflow

    writable("--plot", plot)
    wf = load_workflow(spec, sets or ())
    measured = None
    if from_journal is not None:
        from trilemma.experiments.fit import measured_guesses
        from trilemma.journal import Journal

        with Journal(journal_to_read("--from-journal", from_journal)) as journal:
            measured = measured_guesses(journal, wf)
    s = sensitivity_of(wf, factor)
    title = (f"Sensitivity of {spec}: each guess /{factor:g} and x{factor:g} (p_ok and "
             "hit_rate: their failure and miss rates)")  # fmt: skip
    if plot is not None:
        from trilemma.report.plots import plot_sensitivity

        plot_sensitivity(s, plot, title)
    if as_json:
        doc = s.to_json()
        if measured is not None:
            for g in doc["guesses"]:
                m = measured.get(g["name"])
                g["measured"] = None if m is None else {**m.to_json(), "holds": not m.contradicted}
        emit_json(doc)
        return 0
    console = stdout_console()
    print_set(console, sets)
    console.print(tables.sensitivity_table(s, title, measured, str(from_journal)))
    return 0


#: The file ``trilemma init`` writes the spec's JSON Schema to, beside the spec.
SCHEMA_FILE = "trilemma.schema.json"


def _ours(path: Path) -> bool:
    """Whether ``path`` holds a spec schema trilemma wrote (of any version of the spec),
    which ``init`` may replace."""
    import json

    from trilemma.spec.schema import SPEC_TITLE

    try:
        found = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return isinstance(found, dict) and str(found.get("title", "")).startswith(SPEC_TITLE)


@app.command(rich_help_panel="Predict")
def init(
    file: Annotated[
        Path, typer.Argument(help="The spec to write (.yaml, or .json).")
    ] = Path("workflow.yaml"),
    example: Annotated[
        str, typer.Option(help="The shipped example to start from (ticket, faq, cascade, ...).")
    ] = STARTER,
    force: Annotated[bool, typer.Option(help="Overwrite FILE if it exists.")] = False,
) -> int:
    """Start a workflow of your own: an example spec to edit, the JSON Schema beside it.

    The starter has two models, three steps, a gate and a budget, with a comment on each
    part; it runs as it is on the simulator. The spec's first line points an editor at
    trilemma.schema.json (`trilemma schema`), written in the same folder.

    Example: trilemma init support.yaml

    Example: trilemma init --example ticket ticket.yaml
    """
    import json

    import yaml

    from trilemma.spec import load_workflow
    from trilemma.spec.load import SCHEMA_KEY
    from trilemma.spec.schema import spec_json_schema

    examples = workflow_examples()
    if example not in examples:
        raise UsageError(f"--example {example!r}: no such example"
                         f"{did_you_mean(example, examples)}; choose one of "
                         f"{', '.join(examples)}")  # fmt: skip
    if file.is_dir():
        raise UsageError(f"{file} is a folder; give a file name, such as {file / 'workflow.yaml'}")
    if file.exists() and not force:
        raise UsageError(f"{file} exists; give another name, or --force to overwrite it")
    writable("FILE", file)
    text = examples[example].read_text(encoding="utf-8")
    schema_path = file.parent / SCHEMA_FILE
    schema = spec_json_schema()
    if schema_path.exists() and not force and not _ours(schema_path):
        raise UsageError(f"{schema_path} exists and is not a trilemma spec schema; move it, or "
                         "--force to replace it (init writes the schema beside the spec)")  # fmt: skip
    if file.suffix.lower() == ".json":  # no comments in JSON: the schema is a key
        text = json.dumps({SCHEMA_KEY: SCHEMA_FILE, **yaml.safe_load(text)}, indent=2) + "\n"
    else:
        text = f"# yaml-language-server: $schema={SCHEMA_FILE}\n{text}"
    write_atomic(file, text)
    write_atomic(schema_path, json.dumps(schema, indent=2) + "\n")
    wf = load_workflow(file)
    needed = " ".join(f"--input {k}=..." for k, v in wf.inputs.items() if v is None)
    sys.stdout.write(f"wrote {file} (the {example} example) and {schema_path} beside it\n"
                     f"next: trilemma estimate {_shown(file)}, then trilemma run "
                     f"{_shown(file)}{' ' + needed if needed else ''}\n")  # fmt: skip
    return 0


@app.command(rich_help_panel="Predict")
def schema(
    out: Annotated[
        Path | None, typer.Option("--out", "-o", help="Write it here instead of stdout.")
    ] = None,
    gateway: Annotated[bool, typer.Option(
        "--gateway", help="The schema of a gateway's config (trilemma gateway FILE) instead.",
    )] = False,
) -> int:
    """The JSON Schema of a workflow spec, for editors: completion and checks as you type.

    With the YAML language server (VS Code's YAML extension, and others), a spec's first
    line `# yaml-language-server: $schema=trilemma.schema.json` points it at the file (a
    JSON spec: a top-level "$schema" key, which the loader passes over).
    Fields, types, choices and bounds are checked as you type; `trilemma estimate FILE`
    is the full check (steps and models named, no cycle, a price given).

    Example: trilemma schema --out trilemma.schema.json

    Example: trilemma schema --gateway --out gateway.schema.json
    """
    import json

    from trilemma.gateway.config import gateway_json_schema
    from trilemma.spec.schema import spec_json_schema

    writable("--out", out)
    text = json.dumps(gateway_json_schema() if gateway else spec_json_schema(), indent=2) + "\n"
    if out is None:
        sys.stdout.write(text)
        return 0
    write_atomic(out, text)
    sys.stdout.write(f"written to {out}; a spec's first line `# yaml-language-server: "
                     f"$schema={out.name}` points an editor at it\n")  # fmt: skip
    return 0


def _section(console: Console, title: str, command: str) -> None:
    """A part of the demo: a rule with its title, then the command that does it alone."""
    console.rule(title)
    console.print(f"$ {command}", style="dim", soft_wrap=True)


def _shown(path: Path) -> str:
    """A path as a command to paste would hold it: relative to here if under it, quoted."""
    with suppress(ValueError):
        path = path.relative_to(Path.cwd())
    return shlex.quote(str(path))


def _demo_sweep(console: Console, journal: Path, runs: int = 50) -> None:
    """The demo's last part: the ticket workflow under the ceilings the planner picks."""
    from trilemma.examples import example_path
    from trilemma.experiments.sweep import Limits, budget_sweep, planned_ceilings
    from trilemma.journal import Journal
    from trilemma.report import tables
    from trilemma.spec import load_workflow

    path = example_path("ticket.yaml")
    _section(console, f"7. As the budget tightens: the planner's ceilings, {runs} runs each",
             f"trilemma sweep {_shown(path)} --runs {runs} --seed 7{tables.journal_flag(journal)}")  # fmt: skip
    wf = load_workflow(path)
    budgets = [Limits(c) for c in planned_ceilings(wf)]
    with progress(sys.stderr.isatty()) as bar, Journal(journal) as j:
        bar_id = bar.add_task("runs", total=runs * (len(budgets) + 1))
        sw = budget_sweep(wf, budgets, runs, j, seed=7, source=str(path),
                          on_progress=lambda done, _: bar.update(bar_id, completed=done))  # fmt: skip
    console.print(tables.sweep_table(sw, str(path)))  # (the table quotes what it advises)


def _demo_compare(console: Console, journal: Path, runs: int = 60) -> None:
    """The demo's sixth part: a single call against three workflows, measured on the simulator."""
    from trilemma.examples import example_path
    from trilemma.experiments.compare import compare
    from trilemma.journal import Journal
    from trilemma.report import tables
    from trilemma.spec import load_workflow

    names = ("single.yaml", "ticket.yaml", "cascade.yaml", "routed.yaml")
    _section(console, f"6. A single call or an agent workflow? Measured, {runs} runs each",
             f"trilemma compare {' '.join(_shown(example_path(n)) for n in names)} --runs {runs} "
             f"--seed 7{tables.journal_flag(journal)}")  # fmt: skip
    specs = [(n, load_workflow(example_path(n))) for n in names]
    with progress(sys.stderr.isatty()) as bar, Journal(journal) as j:
        bar_id = bar.add_task("runs", total=runs * len(specs))
        rows = compare(specs, runs, j, seed=7,
                       on_progress=lambda done, _: bar.update(bar_id, completed=done))  # fmt: skip
    console.print(tables.compare_table(rows, 0.0))
