"""Commands for real models and experiments: local servers, calibrate, cliff, sweep, compare."""

from __future__ import annotations

import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from trilemma._format import counted
from trilemma.cli._common import (
    DEFAULT_JOURNAL,
    InputFilesOpt,
    InputsOpt,
    JournalOpt,
    JsonFlag,
    SetOpt,
    SpecFile,
    TimeScaleOpt,
    app,
    declared_for_files,
    emit_json,
    journal_to_read,
    parse_inputs,
    positive,
    print_set,
    progress,
    runs_kept_on_interrupt,
    seed_option,
    stdin_named,
    stdout_console,
    writable,
    write_atomic,
)
from trilemma.errors import UsageError
from trilemma.examples import example_path
from trilemma.spec.bounds import MAX_SECONDS, MAX_USD, STDIN

if TYPE_CHECKING:  # each command imports what it uses: `trilemma --help` loads none of it
    from trilemma.providers.local import ServerInfo
    from trilemma.spec import ModelProfile, Workflow

local_app = typer.Typer(help="Serve the PyPI-packaged models with llama.cpp on 127.0.0.1.",
                        no_args_is_help=True)  # fmt: skip
app.add_typer(local_app, name="local", rich_help_panel="Real models and experiments")
LocalModelOpt = Annotated[str, typer.Option("--model", help="smollm2, gemma3-270m or all.")]
StateOpt = Annotated[Path, typer.Option("--state", help="Where pids and logs go.")]
DEFAULT_STATE = Path(".trilemma") / "local"
ParallelOpt = Annotated[int, typer.Option(
    help="Runs at a time, each under its own budget, sharing the models' limits as runs on "
         "one endpoint do (a run's latency then includes its waits on the others): for real "
         "endpoints, whose runs take their time.")]  # fmt: skip


@local_app.command("up")
def local_up(
    model: LocalModelOpt = "smollm2",
    port: Annotated[
        int | None, typer.Option(min=1, max=65535, help="Port (one model only).")
    ] = None,
    state: StateOpt = DEFAULT_STATE,
    threads: Annotated[int | None, typer.Option(
        min=1, max=1024, show_default=False,
        help="Threads per server [default: the cores split among the servers running]")] = None,
) -> int:
    """Start the llama.cpp server for a model and wait until it answers.

    Example: trilemma local up --model all
    """
    from trilemma.providers import local

    names = list(local.MODELS) if model == "all" else [model]
    if port is not None and len(names) > 1:
        raise UsageError("--port: give it with one --model, not all")
    running = {s.model: s for s in local.status(state)}
    share = threads or local.share_of_cores(len(running.keys() | set(names)))
    for name in names:
        info = local.up(name, port=port, state_dir=state, threads=share)
        sys.stdout.write(f"{name}: {info.base_url} (pid {info.pid}, {_threads(info)}, "
                         f"log {info.log})\n")  # fmt: skip
    crowded = [s for s in running.values() if s.model not in names and (s.threads or 0) > share]
    if crowded and threads is None:
        sys.stderr.write(
            f"note: {', '.join(f'{s.model} ({_threads(s)})' for s in crowded)} started "
            f"before, with more than its share of the cores ({share}); llama.cpp servers that "
            f"share cores wait on each other: `trilemma local down` then `trilemma local up "
            f"--model all` splits them\n")  # fmt: skip
    return 0


def _threads(server: ServerInfo) -> str:
    return "threads not recorded" if server.threads is None else counted(server.threads, "thread")


@local_app.command("status")
def local_status(state: StateOpt = DEFAULT_STATE, as_json: JsonFlag = False) -> int:
    """The local servers this project started, and whether they answer.

    Example: trilemma local status
    """
    from trilemma.providers import local

    servers = local.status(state)
    if as_json:
        emit_json([{"model": s.model, "base_url": s.base_url, "pid": s.pid, "healthy": s.healthy,
                     "log": s.log, "threads": s.threads} for s in servers])  # fmt: skip
    elif not servers:
        sys.stdout.write("no local server is running; start one with `trilemma local up`\n")
    for s in [] if as_json else servers:
        sys.stdout.write(
            f"{s.model}: {s.base_url} pid {s.pid}, {_threads(s)}, "
            f"{'healthy' if s.healthy else 'NOT ANSWERING'}\n"
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


@app.command("calibrate", rich_help_panel="Real models and experiments")
def calibrate_cmd(
    model: Annotated[str | None, typer.Option(
        "--model", help="A model profile of the spec (with --from-journal, none: every model of "
                        "the spec the journal has calls of).",
    )] = None,
    suite: Annotated[
        str | None, typer.Option("--suite", help="A task suite (see trilemma.experiments.tasks).")
    ] = None,
    from_journal: Annotated[Path | None, typer.Option(
        "--from-journal", help="Fit the profile to the calls this journal holds of --model "
                               "instead of running a suite: nothing is sent.",
    )] = None,
    n: Annotated[int, typer.Option("--n", help="Tasks to run.")] = 100,
    spec: Annotated[Path | None, typer.Option(
        "--spec", help="The spec holding the profile (default: examples/local.yaml, as shipped; with "
                       "--from-journal, the newest spec in the journal that has --model).",
    )] = None,
    seed: Annotated[int, seed_option(help="Task generator seed.")] = 0,
    out: Annotated[
        Path | None, typer.Option("--out", "-o", help="Write the measured profile (YAML) here.")
    ] = None,
    check: Annotated[bool, typer.Option(
        "--check", help="With --from-journal: exit 1 when the ledger contradicts the profile, "
                        "the share of a routed step it classifies for, or the hit_rate or p_ok "
                        "of a step on it (every figure weighed together: when all hold, a false "
                        "alarm 5% of the time at most).",
    )] = False,
    sets: SetOpt = None,
    as_json: JsonFlag = False,
) -> int:
    """Measure a model on a task suite, or fit it to the ledger: the profile the planner needs.

    Example: trilemma calibrate --model smollm2 --suite add1 --n 100 --out smollm2.yaml

    Example: trilemma calibrate --model premium --from-journal .trilemma/trilemma.db

    Example: trilemma calibrate --model premium --from-journal prod.db --spec app.yaml --check

    Example: trilemma calibrate --from-journal prod.db --spec app.yaml --check

    Example: trilemma calibrate --from-journal prod.db --check --set models.premium.p_ok=0.9
    """
    if (suite is None) == (from_journal is None):
        raise UsageError("give --suite (run a task suite) or --from-journal PATH (fit the "
                         "ledger), one of the two")  # fmt: skip
    if check and from_journal is None:
        raise UsageError("--check compares a profile with the ledger: give --from-journal PATH")
    writable("--out", out)
    if from_journal is not None:
        return _fit_ledger(model, from_journal, spec, out, as_json, check, sets or [])
    if model is None:
        raise UsageError("--suite runs one model's tasks: give --model NAME (a profile of the spec)")
    assert suite is not None
    from trilemma.experiments.calibrate import calibrate

    positive("--n", n)
    wf = _spec_with(model, spec, sets or [])
    if not as_json:
        print_set(stdout_console(), sets)
    show = not as_json and sys.stderr.isatty()
    with progress(show) as bar:
        task = bar.add_task(f"{model} on {suite}", total=n)
        result = calibrate(wf, model, suite, n, seed=seed,
                           on_progress=lambda done, total: bar.update(task, completed=done))  # fmt: skip
    profile = result.profile(wf.models[model])
    text = _profile_yaml({model: profile}, out)
    if as_json:
        emit_json({"model": model, **result.summary(), "profile": profile, "overrides": sets or []})
    else:
        s = result.summary()
        lo, hi = s["p_ok_ci95"]
        stdout_console().print(f"{model} on {suite} (n={s['n']}): p_ok {s['p_ok']:.3f} [{lo:.3f}, {hi:.3f}], "
                     f"latency mean {s['latency_s']['mean']:.3f}s p95 {s['latency_s']['p95']:.3f}s, "
                     f"${s['usd_per_call']:.3g} per call ({s['price']})", markup=False)  # fmt: skip
        sys.stdout.write(text)
    return 0


def _spec_with(model: str, spec: Path | None, sets: Sequence[str] = ()) -> Workflow:
    """The spec holding ``model`` (``spec``, else the shipped examples/local.yaml), with
    ``sets`` (``--set``)."""
    from trilemma.spec import load_workflow

    path = spec or example_path("local.yaml")
    wf = load_workflow(path, sets)
    if model not in wf.models:
        raise UsageError(
            f"--model {model!r}: {path} has no such model; it has {', '.join(wf.models)}"
        )
    return wf


def _loaded_with(path: Path, sets: Sequence[str]) -> Workflow:
    """One of several specs loaded with the same ``sets`` (``--set``): where a value does not
    fit this spec, the error names the file."""
    from trilemma.spec import load_workflow

    try:
        return load_workflow(path, sets)
    except UsageError as exc:
        if not sets:
            raise
        raise UsageError(f"{path}: {exc}; every --set applies to every spec") from None


def _profile_yaml(profiles: dict[str, dict[str, Any]], out: Path | None) -> str:
    """A spec's ``models:`` block holding ``profiles``, written to ``out`` too if given."""
    import yaml

    text = yaml.safe_dump(
        {"models": profiles}, sort_keys=False, default_flow_style=None, width=100
    )
    if out is not None:
        write_atomic(out, text)
    return text


def _fit_ledger(
    model: str | None, path: Path, spec: Path | None, out: Path | None, as_json: bool, check: bool,
    sets: list[str],
) -> int:
    """``calibrate --from-journal``: the profile fitted to the calls the journal holds, the
    shares of the routed steps the model classifies for, the hit rates of its cached steps
    and the ``p_ok`` of its steps that are not one call an attempt or have their own; for
    every model of the spec the journal has calls of where no ``model`` is given. ``sets``
    change the spec's guesses first (what a check says of a spec planned with them)."""
    from trilemma.experiments.fit import (
        JournalCache,
        fit_model,
        judge_models,
        require_calls,
    )
    from trilemma.journal import Journal
    from trilemma.plan.agreement import weighed
    from trilemma.report import tables

    with Journal(journal_to_read("--from-journal", path)) as journal:
        if model is not None:
            require_calls(journal, model)  # before the spec: the journal's models are the news
            base, wf, source = _base_profile(journal, model, spec, sets)
            fits = {model: fit_model(journal, model, base, wf)}
        else:
            wf, source = _spec_of_all(journal, spec, sets)
            called = set(journal.models_called())
            names = [m for m in wf.models if m in called]
            if not names:
                have = ", ".join(sorted(called)) or "none"
                raise UsageError(f"{path}: no calls of any model of {source} in this journal (it "
                                 f"has calls of {have}); give the spec its runs ran (--spec FILE) "
                                 "or --model NAME")  # fmt: skip
            specs = JournalCache(journal)
            fits = {m: fit_model(journal, m, wf.models[m], wf, specs) for m in names}
    profiles = {m: f.fit.profile(f.base) for m, f in fits.items()}
    text = _profile_yaml(profiles, out)
    figures = {m: f.figures() for m, f in fits.items()}
    drift = judge_models(figures)  # one check: every figure of every model weighed together
    chance = sum(len(weighed(f)) for f in figures.values())
    if as_json:
        if model is not None:
            emit_json({"model": model, **fits[model].to_json(drift[model]), "profile": profiles[model],
                       "overrides": sets})
        else:
            emit_json({"spec": source, "overrides": sets,
                       "models": [{"model": m, **f.to_json(drift[m]), "profile": profiles[m]}
                                  for m, f in fits.items()],
                       "figures_weighed": chance,
                       "drift": [{"model": m, **d.to_json()} for m, ds in drift.items() for d in ds]})  # fmt: skip
    else:
        console = stdout_console()
        print_set(console, sets)
        for m, fitted in fits.items():
            console.print(tables.fit_table(fitted.fit, fitted.base))
            if fitted.routes:
                console.print(tables.route_fit_table(fitted.routes, m))
            if fitted.cached:
                console.print(tables.cache_fit_table(fitted.cached, m))
            if fitted.steps:
                console.print(tables.step_fit_table(fitted.steps, m))
            for line in tables.drift_lines(drift[m], m, figures[m], chance):
                console.print(line, markup=False, highlight=False)
        flags = [flag for m, f in fits.items() for flag in f.set_flags(drift[m])]
        if flags:  # one line, to copy whole: the terminal folds it, not rich
            # the user's --set stays, but where the ledger contradicts it or a fit replaces it
            off = {f.partition("=")[0] for f in flags} | {
                d.field if d.field.startswith("steps.") else f"models.{m}.{d.field}"
                for m, ds in drift.items() for d in ds}  # fmt: skip
            flags = [g for g in sets if g.partition("=")[0].strip() not in off] + flags
            console.print(tables.plan_set_line(flags, source), markup=False, highlight=False,
                          soft_wrap=True)  # fmt: skip
        if not check:
            sys.stdout.write(text)
    return 1 if check and any(drift.values()) else 0


def _spec_of_all(journal: Any, spec: Path | None, sets: Sequence[str] = ()) -> tuple[Workflow, str]:
    """The spec whose models a fit of them all reads: ``spec``, else the newest journaled
    (its time scaled back, as the ledger's latencies are; a gateway key's run passed over);
    with ``sets`` (``--set``)."""
    from trilemma.experiments.trials import time_scaled
    from trilemma.journal.store import GATEWAY_RUN
    from trilemma.spec import load_workflow, parse_workflow

    if spec is not None:
        return load_workflow(spec, sets), str(spec)
    for run in journal.runs():
        if not run["run_id"].startswith(GATEWAY_RUN):
            journaled = parse_workflow(run["spec_json"], f"run {run['run_id']}", json_only=True)
            wf = time_scaled(journaled, 1 / (run["time_scale"] or 1.0))
            return _journaled_with(wf, sets, run["spec_source"]), run["spec_source"]
    raise UsageError(f"{journal.path}: no run of a spec in this journal; give --spec FILE")


def _journaled_with(wf: Workflow, sets: Sequence[str], source: str) -> Workflow:
    """A journaled spec (in its own time) with ``sets`` (``--set``), as a file's would be."""
    from trilemma.spec.load import workflow_with

    if not sets:
        return wf
    data = {"version": wf.version, **wf.model_dump(mode="json", exclude_defaults=True)}
    return workflow_with(data, sets, source)


def _base_profile(
    journal: Any, model: str, spec: Path | None, sets: Sequence[str] = ()
) -> tuple[ModelProfile, Workflow | None, str]:
    """The profile a fit starts from, the spec holding it and where that spec came from:
    ``spec``, else the newest journaled spec with ``model`` (a compare's or a sweep's with
    its time scaled back, as the ledger's latencies are; a gateway key's run keeps the
    gateway's config, whose models are profiles too, and which has no steps: None)."""
    import json

    from trilemma.experiments.trials import time_scaled
    from trilemma.gateway.config import GatewayConfig
    from trilemma.journal.store import GATEWAY_RUN
    from trilemma.spec import parse_workflow
    from trilemma.spec.load import validate_document

    if spec is not None:
        wf = _spec_with(model, spec, sets)
        return wf.models[model], wf, str(spec)
    for run in journal.runs():
        source = f"run {run['run_id']}"
        if run["run_id"].startswith(GATEWAY_RUN):
            served = validate_document(GatewayConfig, json.loads(run["spec_json"]), source)
            if model in served.models:
                if sets:
                    raise UsageError(f"--set: {model!r}'s profile is the gateway's "
                                     f"({run['spec_source']}), not a spec's; give --spec FILE "
                                     "to set a spec's guesses")  # fmt: skip
                return served.models[model], None, run["spec_source"]
            continue
        journaled = parse_workflow(run["spec_json"], source, json_only=True)
        if model in journaled.models:
            scale = run["time_scale"] or 1.0
            wf = _journaled_with(time_scaled(journaled, 1 / scale), sets, run["spec_source"])
            return wf.models[model], wf, run["spec_source"]
    raise UsageError(f"{journal.path}: no run's spec has a profile {model!r}; give --spec FILE")


@app.command("cliff", rich_help_panel="Real models and experiments")
def cliff_cmd(
    model: Annotated[str, typer.Option("--model", help="A model profile of the spec.")],
    spec: Annotated[Path | None, typer.Option(
        "--spec", help="The spec holding the profile (default: examples/local.yaml, as shipped)."
    )] = None,
    steps: Annotated[str, typer.Option(help="Chain lengths, comma-separated.")] = "1,2,5",
    task: Annotated[
        str,
        typer.Option(
            help="add (a total plus a digit) or relay (carry a number through sentences)."
        ),
    ] = "add",
    runs: Annotated[int, typer.Option(help="Runs per chain length.")] = 100,
    seed: Annotated[int, seed_option(help="Chain numbers seed.")] = 0,
    parallel: ParallelOpt = 1,
    journal: JournalOpt = DEFAULT_JOURNAL,
    plot: Annotated[Path | None, typer.Option(help="Write the curve as a PNG.")] = None,
    sets: SetOpt = None,
    as_json: JsonFlag = False,
) -> int:
    """The reliability cliff: chains of S dependent steps, predicted p^S beside measured success.

    Example: trilemma cliff --model smollm2 --steps 1,2,5 --runs 100 --plot cliff.png

    Example: trilemma cliff --model sim --spec app.yaml --set models.sim.p_ok=0.9
    """
    from trilemma.experiments.cliff import cliff
    from trilemma.report import tables

    writable("--plot", plot)
    positive("--parallel", parallel)
    try:
        lengths = [int(x) for x in steps.split(",") if x.strip()]
    except ValueError:
        raise UsageError(f"--steps {steps!r}: give chain lengths like 1,2,5") from None
    wf = _spec_with(model, spec, sets or [])
    if not as_json:
        print_set(stdout_console(), sets)
    show = not as_json and sys.stderr.isatty()
    with runs_kept_on_interrupt(journal), progress(show) as bar:
        bar_id = bar.add_task("chains", total=len(lengths) * runs)
        points = cliff(model, wf.models[model], lengths, runs, journal, task=task, seed=seed,
                       parallel=parallel,
                       on_bill=lambda bill: _say(tables.bill_line(f"cliff --model {model}", bill)),
                       on_progress=lambda done, total: bar.update(bar_id, completed=done))  # fmt: skip
    if plot:
        from trilemma.report.plots import plot_cliff

        plot_cliff(points, model, plot)
    if as_json:
        emit_json([p.to_json() for p in points])
    else:
        stdout_console().print(tables.cliff_table(points, model))
    return 0


def _show(
    data: Any, table: Any, as_json: bool, plot: Path | None, draw: Callable[[Path], object]
) -> int:
    """An experiment's ending: the plot if asked for, then JSON or the table."""
    if plot:
        draw(plot)
    if as_json:
        emit_json(data)
    else:
        stdout_console().print(table)
        if plot:
            sys.stdout.write(f"plot: {plot}\n")
    return 0


def _numbers(flag: str, text: str | None, limit: float) -> list[float | None]:
    """A comma-separated list of positive numbers up to ``limit`` (``[None]`` when absent)."""
    if text is None:
        return [None]
    try:
        values = [float(x) for x in text.split(",") if x.strip()]
    except ValueError:
        values = []
    if not values or any(not 0 < v <= limit for v in values):
        raise UsageError(f"{flag} {text!r}: give positive numbers up to {limit:g} separated by "
                         "commas, like 0.1,0.2")  # fmt: skip
    return list(values)


@app.command("sweep", rich_help_panel="Real models and experiments")
def sweep_cmd(
    file: SpecFile,
    max_cost: Annotated[
        str | None, typer.Option("--max-cost", help="Cost ceilings in USD, comma-separated.")
    ] = None,
    deadline: Annotated[
        str | None, typer.Option("--deadline", help="Deadlines in seconds, comma-separated.")
    ] = None,
    runs: Annotated[int, typer.Option(help="Runs per budget (and for the baseline).")] = 100,
    inputs: InputsOpt = None,
    input_files: InputFilesOpt = None,
    seed: Annotated[int, seed_option(
        help="Run i of every budget uses seed + i, so --seed 1 repeats all but one of --seed "
             "0's runs: move it by --runs or more for an independent repeat.")] = 0,
    time_scale: TimeScaleOpt = 0.0,
    parallel: ParallelOpt = 1,
    journal: JournalOpt = DEFAULT_JOURNAL,
    plot: Annotated[Path | None, typer.Option(help="Write the sweep as a PNG.")] = None,
    sets: SetOpt = None,
    as_json: JsonFlag = False,
) -> int:
    """A budget sweep: success, spend and outputs as the budget tightens, beside runs without one.

    Given neither --max-cost nor --deadline, it sweeps the ceilings under which the planner
    keeps 50%, 90% and 99% of the runs that succeed without one, and half the lowest.

    Example: trilemma sweep examples/ticket.yaml --max-cost 0.3,0.45,0.6,0.9 --runs 100 --plot sweep.png

    Example: trilemma sweep examples/ticket.yaml
    """
    from trilemma.experiments.sweep import PLANNED_SHARES, Limits, budget_sweep, planned_ceilings
    from trilemma.experiments.trials import check_settings
    from trilemma.report import tables
    from trilemma.run.session import check_inputs
    from trilemma.spec import load_workflow

    writable("--plot", plot)
    positive("--parallel", parallel)
    budgets = [Limits(c, d) for c in _numbers("--max-cost", max_cost, MAX_USD)
               for d in _numbers("--deadline", deadline, MAX_SECONDS)]  # fmt: skip
    wf = load_workflow(file, sets or ())
    given = parse_inputs(inputs, input_files, spec_read_stdin=str(file) == STDIN)
    declared_for_files(input_files, [(str(file), wf)])
    if max_cost is None and deadline is None:  # the runs' settings checked before the search
        check_settings(runs, time_scale, parallel)
        check_inputs(wf, given, str(file))
        ceilings = planned_ceilings(wf)
        budgets = [Limits(c, None) for c in ceilings]
        *most, last = (f"{s:.0%}" for s in PLANNED_SHARES)
        shares = f"{', '.join(most)} and {last}"
        _say(f"no budget given: sweeping --max-cost {','.join(f'{c:g}' for c in ceilings)}, the "
             f"ceilings under which the planner keeps {shares} of its successes, and half the "
             "lowest (give --max-cost or --deadline to choose)")
    show = not as_json and sys.stderr.isatty()
    with runs_kept_on_interrupt(journal), progress(show) as bar:
        bar_id = bar.add_task("runs", total=runs * (len(budgets) + 1))
        result = budget_sweep(wf, budgets, runs, journal, seed=seed, time_scale=time_scale,
                              source=str(file), inputs=given, overrides=sets or (),
                              parallel=parallel,
                              on_bill=lambda bill: _say(tables.bill_line(str(file), bill)),
                              on_progress=lambda done, total: bar.update(bar_id, completed=done))  # fmt: skip
    from trilemma.report.plots import plot_sweep

    if not as_json:
        print_set(stdout_console(), sets)
    return _show(result.to_json(), tables.sweep_table(result, str(file), sets or ()), as_json, plot,
                 lambda path: plot_sweep(result, path))  # fmt: skip


def _say(line: str) -> None:
    """A line on stderr before an experiment's runs start (above its progress bar)."""
    sys.stderr.write(f"trilemma: {line}\n")


@app.command("compare", rich_help_panel="Real models and experiments")
def compare_cmd(
    files: Annotated[
        list[Path],
        typer.Argument(help="Workflow specs to measure side by side (- reads one from standard "
                       "input).", show_default=False),
    ],
    runs: Annotated[int, typer.Option(help="Runs per spec.")] = 200,
    inputs: InputsOpt = None,
    input_files: InputFilesOpt = None,
    seed: Annotated[int, seed_option(
        help="Run i of every spec uses seed + i, so --seed 1 repeats all but one of --seed "
             "0's runs: move it by --runs or more for an independent repeat.")] = 0,
    time_scale: TimeScaleOpt = 0.0,
    parallel: ParallelOpt = 1,
    journal: JournalOpt = DEFAULT_JOURNAL,
    plot: Annotated[Path | None, typer.Option(help="Write success against cost as a PNG.")] = None,
    sets: SetOpt = None,
    as_json: JsonFlag = False,
) -> int:
    """Quality per dollar, measured: run each spec alike, predicted beside measured.

    Each spec gets the `--input` values it declares; every `--set` applies to every spec.
    Runs go one at a time unless `--parallel` says more.

    Example: trilemma compare examples/single.yaml examples/ticket.yaml examples/cascade.yaml

    Example: trilemma compare examples/single.yaml examples/debate.yaml --set models.premium.p_ok=0.9
    """
    from trilemma.experiments.compare import compare
    from trilemma.report import tables

    writable("--plot", plot)
    positive("--parallel", parallel)
    files = [stdin_named(f) for f in files]
    if files.count(Path(STDIN)) > 1:
        raise UsageError("-: standard input holds one spec; give the others as files")
    specs = [(str(f), _loaded_with(f, sets or [])) for f in files]
    given = parse_inputs(inputs, input_files, spec_read_stdin=Path(STDIN) in files)
    declared_for_files(input_files, specs)
    show = not as_json and sys.stderr.isatty()
    with runs_kept_on_interrupt(journal), progress(show) as bar:
        bar_id = bar.add_task("runs", total=runs * len(specs))
        rows = compare(specs, runs, journal, seed=seed, time_scale=time_scale,
                       inputs=given, overrides=sets or (), parallel=parallel,
                       on_bill=lambda name, bill: _say(tables.bill_line(name, bill)),
                       on_progress=lambda done, total: bar.update(bar_id, completed=done))  # fmt: skip
    from trilemma.report.plots import plot_compare

    if not as_json:
        print_set(stdout_console(), sets)

    return _show([r.to_json() for r in rows], tables.compare_table(rows, time_scale, journal, sets or ()), as_json,
                 plot, lambda path: plot_compare(rows, path))  # fmt: skip
