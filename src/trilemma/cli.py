"""The ``trilemma`` command: the only module that prints or exits.

``main(argv) -> int`` runs a command in-process and returns its exit code:
0 success, 1 the run or plan failed, 2 bad input (one line on stderr naming
the file, the field and the fix; never a traceback).
"""

from __future__ import annotations

import json
import os
import sys
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeRemainingColumn

from trilemma.errors import TrilemmaError, UsageError
from trilemma.plan import book as book_mod
from trilemma.plan.estimate import estimate as estimate_wf
from trilemma.plan.exercises import debate_vs_retry, routing_sweep, ticket_spend
from trilemma.plan.optimize import optimize as optimize_wf
from trilemma.plan.simulate import simulate as simulate_wf
from trilemma.report import tables
from trilemma.spec import Budget, Simulation, dump_workflow, load_workflow

__all__ = ["app", "main", "run"]

app = typer.Typer(
    name="trilemma",
    help="Plan, run and measure LLM agent workflows under cost, latency and reliability budgets.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)

SpecFile = Annotated[Path, typer.Argument(help="Workflow spec (YAML or JSON).", show_default=False)]
JsonFlag = Annotated[bool, typer.Option("--json", help="Print JSON instead of tables.")]
DEFAULT_JOURNAL = Path(".trilemma") / "trilemma.db"


def _out() -> Console:
    """Tables on stdout; wide enough to stay readable when piped to a file."""
    return Console(highlight=False, width=None if sys.stdout.isatty() else 150)


def _emit_json(data: Any) -> None:
    sys.stdout.write(json.dumps(data, indent=2, allow_nan=False) + "\n")


@app.command()
def book(
    notes: Annotated[bool, typer.Option(help="Print the notes on the seed's quirks.")] = True,
) -> int:
    """Print the seed's Output 32.10.1, computed by the seed's own code.

    Example: trilemma book
    """
    sys.stdout.write(book_mod.book_report() + "\n")
    if notes:
        sys.stdout.write("\nNotes (quirks of the seed's code that these figures keep):\n")
        for note in book_mod.QUIRKS:
            sys.stdout.write(f"  - {note}\n")
    return 0


@app.command()
def estimate(spec: SpecFile, as_json: JsonFlag = False) -> int:
    """Analytic cost, critical-path latency and reliability of a workflow.

    Example: trilemma estimate examples/ticket.yaml --json
    """
    wf = load_workflow(spec)
    e = estimate_wf(wf)
    if as_json:
        _emit_json(e.to_json())
    else:
        _out().print(tables.estimate_table(e, title=f"Estimate of {spec}"))
    return 0


def _progress(show: bool) -> Progress:
    """A progress bar on stderr, shown only on a terminal."""
    return Progress(
        "[progress.description]{task.description}", BarColumn(), MofNCompleteColumn(),
        TimeRemainingColumn(), console=Console(stderr=True), disable=not show, transient=True,
    )  # fmt: skip


def _positive(name: str, value: int) -> int:
    if value < 1:
        raise UsageError(f"{name}: {value} is not a positive integer; give 1 or more")
    return value


@app.command()
def simulate(
    spec: SpecFile,
    runs: Annotated[int, typer.Option("--runs", "-n", help="Trajectories to simulate.")] = 100_000,
    seed: Annotated[int | None, typer.Option(help="Random seed (default: the spec's).")] = None,
    recall: Annotated[float | None, typer.Option(min=0.0, max=1.0, help="Gate recall.")] = None,
    retry_correlation: Annotated[
        float | None, typer.Option(min=0.0, max=1.0, help="Chance a retry fails the same way.")
    ] = None,
    compounding: Annotated[
        float | None, typer.Option(min=0.0, max=1.0, help="p factor after an uncaught failure.")
    ] = None,
    halt: Annotated[bool, typer.Option(help="Skip the steps below a failed step.")] = True,
    as_json: JsonFlag = False,
) -> int:
    """Monte Carlo of a workflow: success rate with a 95% interval, cost and latency tails.

    Example: trilemma simulate examples/seed-chain.yaml --runs 1000000 --seed 7 --recall 0.9
    """
    _positive("--runs", runs)
    wf = load_workflow(spec)
    overrides = {
        k: v
        for k, v in dict(
            recall=recall, retry_correlation=retry_correlation, compounding=compounding
        ).items()
        if v is not None
    }
    settings = Simulation(**{**wf.simulation.model_dump(), **overrides})
    seed = seed if seed is not None else wf.seed
    show = not as_json and sys.stderr.isatty() and runs >= 2_000_000
    with _progress(show) as bar:
        task = bar.add_task("simulating", total=runs)
        result = simulate_wf(
            wf, runs, seed, settings, halt=halt, progress=lambda n: bar.advance(task, n)
        )
    if as_json:
        _emit_json(result.to_json())
    else:
        _out().print(tables.simulate_table(result, estimate_wf(wf)))
    return 0


class BudgetOn(StrEnum):
    """Which figures a budget binds."""

    worst = "worst"
    expected = "expected"


class Method(StrEnum):
    """How the optimizer searches."""

    auto = "auto"
    exhaustive = "exhaustive"
    beam = "beam"


@app.command()
def optimize(
    spec: SpecFile,
    max_cost: Annotated[float | None, typer.Option(min=0.0, help="Cost ceiling, $.")] = None,
    max_latency: Annotated[float | None, typer.Option(min=0.0, help="Latency budget, s.")] = None,
    min_reliability: Annotated[
        float | None, typer.Option(min=0.0, max=1.0, help="Reliability floor.")
    ] = None,
    budget_on: Annotated[BudgetOn, typer.Option(help="Bind worst or expected figures.")] = (
        BudgetOn.worst
    ),
    max_retries: Annotated[int, typer.Option(min=0, max=10, help="Retries to try per step.")] = 3,
    method: Annotated[Method, typer.Option(help="Search method.")] = Method.auto,
    beam_width: Annotated[int, typer.Option(min=2, help="Beam width.")] = 256,
    out: Annotated[Path | None, typer.Option(help="Write the chosen spec here.")] = None,
    plot: Annotated[Path | None, typer.Option(help="Write the frontier as a PNG.")] = None,
    as_json: JsonFlag = False,
) -> int:
    """The cheapest choice of levers that meets the budgets, and the Pareto frontier.

    Budgets come from the spec's budget: and are overridden by the flags.

    Example: trilemma optimize examples/seed-chain.yaml --max-cost 0.10 --min-reliability 0.95
    """
    wf = load_workflow(spec)
    flags = dict(max_cost_usd=max_cost, deadline_s=max_latency, min_reliability=min_reliability)
    budget = Budget(
        **{**wf.budget.model_dump(), **{k: v for k, v in flags.items() if v is not None}}
    )
    r = optimize_wf(wf, budget, budget_on=budget_on.value, max_retries=max_retries,
                    method=method.value, beam_width=beam_width)  # fmt: skip
    chosen = dump_workflow(r.best) if r.best else None
    if out and chosen:
        _write_atomic(out, chosen)
    if plot:
        from trilemma.report.plots import plot_frontier

        plot_frontier(r, plot)
    if as_json:
        _emit_json(_optimize_json(r, chosen))
    else:
        console = _out()
        console.print(tables.optimize_view(r))
        if chosen:
            console.print(f"\n# chosen configuration{f' (written to {out})' if out else ''}")
            console.print(chosen, markup=False)
    if r.best is None:
        sys.stderr.write(
            "trilemma optimize: no configuration meets the budgets; relax one, or add "
            "candidates, cacheable or independent steps to the spec\n"
        )
        return 1
    return 0


def _optimize_json(r: Any, chosen: str | None) -> dict[str, Any]:
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
        "frontier": [
            {
                "cost_usd": {
                    "worst": round(c.cost_worst, 12),
                    "expected": round(c.cost_expected, 12),
                },
                "latency_s": round(c.latency_s, 12),
                "reliability": c.reliability,
                "levers": tables.describe(c),
            }
            for c in r.frontier
        ],
        "notes": list(r.notes),
    }


def _write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        tmp.write_text(text, encoding="utf-8")
        os.replace(tmp, path)
    except OSError as exc:
        raise UsageError(f"--out {path}: cannot write: {exc.strerror}") from None


class ExerciseId(StrEnum):
    """The seed's exercises."""

    sizing = "32.10.1"
    routing = "32.10.2"
    tension = "32.10.3"


@app.command()
def exercise(
    number: Annotated[ExerciseId, typer.Argument(help="32.10.1, 32.10.2 or 32.10.3.")],
    tickets_per_day: Annotated[int, typer.Option(min=1, help="32.10.1: volume.")] = 200_000,
    router_usd: Annotated[float, typer.Option(min=0.0, help="32.10.2: router $ per step.")] = 0.002,
    router_s: Annotated[float, typer.Option(min=0.0, help="32.10.2: router s per step.")] = 0.4,
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
    console = _out()
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
        _emit_json(data)
    else:
        console.print(view)
    return 0


@app.command()
def demo(
    runs: Annotated[int, typer.Option("--runs", "-n", help="Monte Carlo runs.")] = 200_000,
    journal: Annotated[
        Path, typer.Option("--journal", help="The journal for the demo run.")
    ] = Path(".trilemma") / "trilemma.db",
) -> int:
    """A tour that needs no network: the book, an estimate, a Monte Carlo and an optimization.

    Example: trilemma demo
    """
    from trilemma.examples import example_path

    _positive("--runs", runs)
    console = _out()
    console.rule("1. The seed's Output 32.10.1, recomputed (trilemma book)")
    console.print(book_mod.book_report(), markup=False)
    ticket = example_path("ticket.yaml")
    console.rule(f"2. Exercise 32.10.1 as a spec (trilemma estimate {ticket.name})")
    console.print(tables.estimate_table(estimate_wf(load_workflow(ticket))))
    chain = load_workflow(example_path("seed-chain.yaml"))
    console.rule(
        "3. Monte Carlo of the 12-step chain with a gate of recall 0.9 (trilemma simulate)"
    )
    leaky = chain.simulation.model_copy(update={"recall": 0.9, "retry_correlation": 0.2})
    result = simulate_wf(chain, runs, seed=7, settings=leaky)
    console.print(tables.simulate_table(result, estimate_wf(chain)))
    console.rule("4. Cheapest levers for <= $0.10 and >= 95% (trilemma optimize seed-chain.yaml)")
    best = optimize_wf(chain)
    console.print(tables.optimize_view(best))
    if best.best is not None:
        from trilemma.journal import Journal
        from trilemma.run.session import execute

        console.rule(
            f"5. The chosen configuration, run on the simulator (trilemma run, journal {journal})"
        )
        ran = execute(
            best.best, journal=Journal(journal), seed=7, max_cost_usd=0.10, source="<demo>"
        )
        console.print(tables.run_view(ran))
    console.print(
        "\nNext: trilemma --help, the specs in examples/, and `trilemma runs` for the journal."
    )
    return 0


# ---------------------------------------------------------------------------- run

JournalOpt = Annotated[
    Path, typer.Option("--journal", help="The journal (SQLite) file.", show_default=True)
]


def _inputs(pairs: list[str] | None) -> dict[str, str]:
    out: dict[str, str] = {}
    for pair in pairs or []:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise UsageError(f"--input {pair!r}: write it as name=value")
        out[key] = value
    return out


@app.command("run")
def run_cmd(
    spec: SpecFile,
    inputs: Annotated[
        list[str] | None, typer.Option("--input", "-i", help="An input, as name=value.")
    ] = None,
    max_cost: Annotated[float | None, typer.Option(min=0.0, help="Hard cost ceiling, $.")] = None,
    deadline: Annotated[float | None, typer.Option(min=0.0, help="Deadline, seconds.")] = None,
    seed: Annotated[int | None, typer.Option(help="Simulator seed (default: the spec's).")] = None,
    journal: JournalOpt = DEFAULT_JOURNAL,
    as_json: JsonFlag = False,
) -> int:
    """Execute a workflow: simulator by default, real endpoints where the spec names them.

    Example: trilemma run examples/ticket.yaml --max-cost 0.50 --deadline 30 --seed 1
    """
    from trilemma.journal import Journal
    from trilemma.run.session import execute

    wf = load_workflow(spec)
    values = _inputs(inputs)
    ceiling = max_cost if max_cost is not None else wf.budget.max_cost_usd
    limit = deadline if deadline is not None else wf.budget.deadline_s
    with _RunDisplay(len(wf.steps), ceiling, limit, enabled=not as_json) as display:
        result = execute(wf, journal=Journal(journal), inputs=values, max_cost_usd=max_cost,
                         deadline_s=deadline, seed=seed, source=str(spec),
                         on_event=display.update)  # fmt: skip
    return _report_run(result, as_json)


def _report_run(result: Any, as_json: bool) -> int:
    if as_json:
        _emit_json(result.to_json())
    else:
        _out().print(tables.run_view(result))
    if result.status != "ok":
        sys.stderr.write(f"trilemma: run {result.run_id} {result.status}: {result.error}\n")
        return 1
    return 0


class _RunDisplay:
    """Steps done, spend against the ceiling and time against the deadline, on a terminal."""

    def __init__(
        self, steps: int, ceiling: float | None, deadline: float | None, enabled: bool
    ) -> None:
        self.ceiling, self.deadline = ceiling, deadline
        self.progress = Progress(
            "[progress.description]{task.description}", BarColumn(), MofNCompleteColumn(),
            "{task.fields[spend]}", "{task.fields[clock]}",
            console=Console(stderr=True), disable=not (enabled and sys.stderr.isatty()),
            transient=True,
        )  # fmt: skip
        self.task = self.progress.add_task("steps", total=steps, spend="", clock="")
        self.started = 0.0

    def __enter__(self) -> _RunDisplay:
        import time

        self.started = time.monotonic()
        self.progress.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        self.progress.__exit__(None, None, None)

    def update(self, event: Any) -> None:
        import time

        cap = f" / ${self.ceiling:.4f}" if self.ceiling is not None else ""
        left = f" / {self.deadline:.0f}s" if self.deadline is not None else ""
        elapsed = time.monotonic() - self.started
        self.progress.update(self.task, completed=event.done, spend=f"${event.spent:.4f}{cap}",
                             clock=f"{elapsed:.1f}s{left}")  # fmt: skip


@app.command()
def runs(journal: JournalOpt = DEFAULT_JOURNAL, as_json: JsonFlag = False) -> int:
    """The runs in a journal, newest first.

    Example: trilemma runs --json
    """
    from trilemma.journal import Journal

    rows = Journal(journal, create=False).runs()
    if as_json:
        keys = ("run_id", "status", "cost_usd", "calls", "latency_s", "spec_source", "error")
        _emit_json([{**{k: r[k] for k in keys}, "started_at": _iso(r["started_at"]),
                     "finished_at": _iso(r["finished_at"])} for r in rows])  # fmt: skip
    else:
        _out().print(tables.runs_table(rows))
    return 0


@app.command("resume")
def resume_cmd(
    run_id: Annotated[str, typer.Argument(help="The run to finish (see trilemma runs).")],
    journal: JournalOpt = DEFAULT_JOURNAL,
    deadline: Annotated[
        float | None, typer.Option(min=0.0, help="A new deadline, seconds from now.")
    ] = None,
    max_cost: Annotated[
        float | None, typer.Option(min=0.0, help="A new cost ceiling for the whole run, $.")
    ] = None,
    force: Annotated[bool, typer.Option(help="Resume even though the spec file changed.")] = False,
    as_json: JsonFlag = False,
) -> int:
    """Finish an interrupted run: steps the journal holds as done are not called again.

    Example: trilemma resume 20261124T053000Z-1a2b3c4d
    """
    from trilemma.journal import Journal
    from trilemma.run.session import resume

    j = Journal(journal, create=False)
    row = j.run(run_id)
    steps = len(json.loads(row["spec_json"])["steps"]) if row else 0
    with _RunDisplay(
        steps, max_cost or (row or {}).get("max_cost_usd"), deadline, enabled=not as_json
    ) as display:
        result = resume(j, run_id, deadline_s=deadline, max_cost_usd=max_cost, force=force,
                        on_event=display.update)  # fmt: skip
    return _report_run(result, as_json)


@app.command()
def export(
    run_id: Annotated[str, typer.Argument(help="The run to export.")],
    journal: JournalOpt = DEFAULT_JOURNAL,
    out: Annotated[Path | None, typer.Option(help="Write here instead of stdout.")] = None,
) -> int:
    """A run as JSON Lines: one record for the run, then one per step, then one per call.

    Example: trilemma export 20261124T053000Z-1a2b3c4d --out run.jsonl
    """
    from trilemma.journal import Journal

    j = Journal(journal, create=False)
    if j.run(run_id) is None:
        raise UsageError(
            f"run {run_id!r} is not in {journal}; `trilemma runs` lists the runs there"
        )
    lines = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in j.export(run_id))
    if out is None:
        sys.stdout.write(lines)
    else:
        _write_atomic(out, lines)
    return 0


@app.command()
def doctor(journal: JournalOpt = DEFAULT_JOURNAL, as_json: JsonFlag = False) -> int:
    """Check a journal: integrity, schema version, interrupted runs, calls left in flight.

    Example: trilemma doctor --journal .trilemma/trilemma.db
    """
    from trilemma.journal import Journal

    report = Journal(journal, create=False).check()
    healthy = report["integrity"] == "ok"
    if as_json:
        _emit_json({**report, "healthy": healthy})
    else:
        console = _out()
        console.print(f"journal {report['journal']}: schema {report['schema_version']} "
                      f"(this trilemma knows {report['schema_known']}), {report['runs']} runs")  # fmt: skip
        console.print(f"integrity: {report['integrity']}")
        for run_id in report["interrupted_runs"]:
            console.print(f"interrupted run {run_id}: finish it with `trilemma resume {run_id}`")
        for c in report["orphaned_in_flight_calls"]:
            console.print(f"in flight at the crash (may have been billed): run {c['run_id']} step "
                          f"{c['step_id']} attempt {c['attempt']} call {c['call']} ({c['model']})")  # fmt: skip
        if healthy and not report["interrupted_runs"]:
            console.print("all good")
    return 0 if healthy else 1


local_app = typer.Typer(help="Serve the PyPI-packaged models with llama.cpp on 127.0.0.1.",
                        no_args_is_help=True)  # fmt: skip
app.add_typer(local_app, name="local")
LocalModelOpt = Annotated[str, typer.Option("--model", help="smollm2, gemma3-270m or all.")]
StateOpt = Annotated[Path, typer.Option("--state", help="Where pids and logs go.")]
DEFAULT_STATE = Path(".trilemma") / "local"


@local_app.command("up")
def local_up(
    model: LocalModelOpt = "smollm2",
    port: Annotated[
        int | None, typer.Option(min=1, max=65535, help="Port (one model only).")
    ] = None,
    state: StateOpt = DEFAULT_STATE,
) -> int:
    """Start the llama.cpp server for a model and wait until it answers.

    Example: trilemma local up --model all
    """
    from trilemma.providers import local

    names = list(local.MODELS) if model == "all" else [model]
    if port is not None and len(names) > 1:
        raise UsageError("--port: give it with one --model, not all")
    for name in names:
        info = local.up(name, port=port, state_dir=state)
        sys.stdout.write(f"{name}: {info.base_url} (pid {info.pid}, log {info.log})\n")
    return 0


@local_app.command("status")
def local_status(state: StateOpt = DEFAULT_STATE, as_json: JsonFlag = False) -> int:
    """The local servers this project started, and whether they answer.

    Example: trilemma local status
    """
    from trilemma.providers import local

    servers = local.status(state)
    if as_json:
        _emit_json([{"model": s.model, "base_url": s.base_url, "pid": s.pid, "healthy": s.healthy,
                     "log": s.log} for s in servers])  # fmt: skip
    elif not servers:
        sys.stdout.write("no local server is running; start one with `trilemma local up`\n")
    for s in [] if as_json else servers:
        sys.stdout.write(
            f"{s.model}: {s.base_url} pid {s.pid} {'healthy' if s.healthy else 'NOT ANSWERING'}\n"
        )
    return 0


@local_app.command("down")
def local_down(model: LocalModelOpt = "all", state: StateOpt = DEFAULT_STATE) -> int:
    """Stop local servers (all by default).

    Example: trilemma local down
    """
    from trilemma.providers import local

    stopped = local.down(model, state)
    sys.stdout.write(f"stopped: {', '.join(stopped)}\n" if stopped else "nothing was running\n")
    return 0


@app.command("calibrate")
def calibrate_cmd(
    model: Annotated[str, typer.Option("--model", help="A model profile of the spec.")],
    suite: Annotated[
        str, typer.Option("--suite", help="A task suite (see trilemma.experiments.tasks).")
    ],
    n: Annotated[int, typer.Option("--n", help="Tasks to run.")] = 100,
    spec: Annotated[Path, typer.Option("--spec", help="The spec holding the profile.")] = Path(
        "examples/local.yaml"
    ),
    seed: Annotated[int, typer.Option(help="Task generator seed.")] = 0,
    out: Annotated[
        Path | None, typer.Option(help="Write the measured profile (YAML) here.")
    ] = None,
    as_json: JsonFlag = False,
) -> int:
    """Measure a model on a task suite and write the profile the planner should use.

    Example: trilemma calibrate --model smollm2 --suite add1 --n 100 --out smollm2.yaml
    """
    import yaml

    from trilemma.experiments.calibrate import calibrate

    _positive("--n", n)
    wf = load_workflow(spec)
    show = not as_json and sys.stderr.isatty()
    with _progress(show) as bar:
        task = bar.add_task(f"{model} on {suite}", total=n)
        result = calibrate(wf, model, suite, n, seed=seed,
                           on_progress=lambda done, total: bar.update(task, completed=done))  # fmt: skip
    profile = result.profile(wf.models[model])
    text = yaml.safe_dump(
        {"models": {model: profile}}, sort_keys=False, default_flow_style=None, width=100
    )
    if out is not None:
        _write_atomic(out, text)
    if as_json:
        _emit_json({"model": model, **result.summary(), "profile": profile})
    else:
        s = result.summary()
        lo, hi = s["p_ok_ci95"]
        _out().print(f"{model} on {suite} (n={s['n']}): p_ok {s['p_ok']:.3f} [{lo:.3f}, {hi:.3f}], "
                     f"latency mean {s['latency_s']['mean']:.3f}s p95 {s['latency_s']['p95']:.3f}s, "
                     f"${s['usd_per_call']:.3g} per call ({s['price']})", markup=False)  # fmt: skip
        sys.stdout.write(text)
    return 0


@app.command("cliff")
def cliff_cmd(
    model: Annotated[str, typer.Option("--model", help="A model profile of the spec.")],
    spec: Annotated[Path, typer.Option("--spec", help="The spec holding the profile.")] = Path(
        "examples/local.yaml"
    ),
    steps: Annotated[str, typer.Option(help="Chain lengths, comma-separated.")] = "1,2,5",
    task: Annotated[
        str,
        typer.Option(
            help="add (a total plus a digit) or relay (carry a number through sentences)."
        ),
    ] = "add",
    runs: Annotated[int, typer.Option(help="Runs per chain length.")] = 100,
    seed: Annotated[int, typer.Option(help="Chain numbers seed.")] = 0,
    journal: JournalOpt = DEFAULT_JOURNAL,
    plot: Annotated[Path | None, typer.Option(help="Write the curve as a PNG.")] = None,
    as_json: JsonFlag = False,
) -> int:
    """The reliability cliff: chains of S dependent steps, predicted p^S beside measured success.

    Example: trilemma cliff --model smollm2 --steps 1,2,5 --runs 100 --plot cliff.png
    """
    from trilemma.experiments.cliff import cliff
    from trilemma.journal import Journal

    _positive("--runs", runs)
    try:
        lengths = [int(x) for x in steps.split(",") if x.strip()]
    except ValueError:
        raise UsageError(f"--steps {steps!r}: give chain lengths like 1,2,5") from None
    if not lengths or min(lengths) < 1:
        raise UsageError(f"--steps {steps!r}: give positive chain lengths like 1,2,5")
    wf = load_workflow(spec)
    if model not in wf.models:
        raise UsageError(
            f"--model {model!r}: {spec} has no such model; it has {', '.join(wf.models)}"
        )
    show = not as_json and sys.stderr.isatty()
    with _progress(show) as bar:
        bar_id = bar.add_task("chains", total=len(lengths) * runs)
        points = cliff(model, wf.models[model], lengths, runs, Journal(journal), task=task, seed=seed,
                       on_progress=lambda done, total: bar.update(bar_id, completed=done))  # fmt: skip
    if plot:
        from trilemma.report.plots import plot_cliff

        plot_cliff(points, model, plot)
    if as_json:
        _emit_json([p.to_json() for p in points])
    else:
        _out().print(tables.cliff_table(points, model))
    return 0


def _iso(epoch: float | None) -> str | None:
    import datetime as dt

    if epoch is None:
        return None
    return (
        dt.datetime.fromtimestamp(epoch, dt.UTC)
        .isoformat(timespec="milliseconds")
        .replace("+00:00", "Z")
    )


@app.command()
def ledger(
    run_id: Annotated[str, typer.Argument(help="A run id (see trilemma runs).")],
    journal: JournalOpt = DEFAULT_JOURNAL,
    as_json: JsonFlag = False,
) -> int:
    """One record per LLM call of a run: tokens, cost, latency, outcome, cache hit.

    Example: trilemma ledger 20261124T053000Z-1a2b3c4d --json
    """
    from trilemma.journal import Journal

    j = Journal(journal, create=False)
    if j.run(run_id) is None:
        raise UsageError(
            f"run {run_id!r} is not in {journal}; `trilemma runs` lists the runs there"
        )
    rows = [tables.ledger_row(r) for r in j.calls(run_id)]
    if as_json:
        _emit_json(rows)
    else:
        _out().print(tables.ledger_table(run_id, rows))
    return 0


# ---------------------------------------------------------------------------- entry


def _one_line(text: str) -> str:
    return " ".join(text.split())


def main(argv: list[str] | None = None) -> int:
    """Run the command line; return its exit code instead of exiting."""
    command = typer.main.get_command(app)
    try:
        rv = command.main(args=argv, prog_name="trilemma", standalone_mode=False)
    except TrilemmaError as exc:
        sys.stderr.write(f"trilemma: error: {_one_line(str(exc))}\n")
        return exc.exit_code
    except typer.TyperException as exc:  # click's usage errors, vendored by typer
        hint = "; see `trilemma --help`" if exc.exit_code == 2 else ""
        sys.stderr.write(f"trilemma: error: {_one_line(exc.format_message())}{hint}\n")
        return 2 if exc.exit_code == 2 else exc.exit_code
    except typer.Abort:
        sys.stderr.write("trilemma: aborted\n")
        return 130
    except (MemoryError, RecursionError) as exc:
        if os.environ.get("TRILEMMA_DEBUG"):
            raise
        sys.stderr.write(f"trilemma: error: input too large or deep ({type(exc).__name__})\n")
        return 2
    return rv if isinstance(rv, int) else 0


def run() -> None:
    """Console-script entry point."""
    sys.exit(main())
