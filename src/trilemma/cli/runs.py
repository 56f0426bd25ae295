"""Commands that run and read the journal: run, resume, runs, ledger, export, doctor, cache."""

from __future__ import annotations

import contextlib
import errno
import json
import os
import shlex
import socket
import sys
import time
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.console import Console

from trilemma._format import counted, set_flags
from trilemma._tasks import run_whole
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
    batch_id_of,
    close_unresumable,
    deadline_seconds,
    declared_for_files,
    dollars,
    emit_json,
    interrupted,
    iso,
    no_runs_yet,
    parse_inputs,
    positive,
    print_set,
    progress,
    run_id_of,
    run_ref,
    seed_option,
    stdout_console,
    writable,
    write_atomic,
)
from trilemma.errors import SetupError, UsageError
from trilemma.journal.store import GATEWAY_RUN, overrides_of
from trilemma.spec.bounds import STDIN

if TYPE_CHECKING:  # imported when a command needs it: `trilemma --help` stays quick
    from trilemma.plan.simulate import SimResult
    from trilemma.run.batch import LineResult
    from trilemma.run.shared_budget import BudgetState, SharedCeiling

RUN_PREDICTION_RUNS = 20_000
"""Trajectories of the Monte Carlo a run under a ceiling or deadline is set beside (about
0.3 points of standard error on its success; a second for a 2,000-step spec)."""

SharedBudgetOpt = Annotated[
    str | None,
    typer.Option("--shared-budget", metavar="NAME=USD", show_default=False,
                 help="A ceiling shared with every run, in any process, that names it (kept in "
                      "Redis), such as team-a=50."),
]  # fmt: skip
SharedCacheFlag = Annotated[
    bool,
    typer.Option("--shared-cache",
                 help="Look cached steps up in, and keep their answers in, a cache shared with "
                      "other processes (in the Redis of --redis)."),
]  # fmt: skip
RedisOpt = Annotated[
    str | None,
    typer.Option("--redis", envvar="TRILEMMA_REDIS_URL", show_default=False,
                 help="The Redis of --shared-budget and --shared-cache (default "
                      "redis://127.0.0.1:6379/0)."),
]  # fmt: skip


def _shared(
    budget: str | None, cache: bool, redis: str | None
) -> tuple[SharedCeiling | None, str | None]:
    """--shared-budget as a SharedCeiling, and --shared-cache as its Redis URL (None when not
    given); exit 2 when either, or --redis, is malformed."""
    from trilemma.run.shared_budget import SharedCeiling

    ceiling = None if budget is None else SharedCeiling.parse(budget, redis)
    return ceiling, _tier(cache, redis)


def _tier(shared_cache: bool, redis: str | None) -> str | None:
    """The shared cache's URL when --shared-cache is given; exit 2 on a malformed --redis."""
    from trilemma._redis import check_url

    return check_url(redis) if shared_cache else None


@app.command("run", rich_help_panel="Run and read the journal")
def run_cmd(
    spec: SpecFile,
    inputs: InputsOpt = None,
    input_files: InputFilesOpt = None,
    max_cost: Annotated[float | None, dollars("Hard cost ceiling, $.")] = None,
    deadline: Annotated[float | None, deadline_seconds("Deadline, seconds.")] = None,
    seed: Annotated[int | None, seed_option(help="Simulator seed (default: the spec's).")] = None,
    tenant: Annotated[
        str | None,
        typer.Option(help="Whom the run works for: its cached steps use that tenant's answers only."),
    ] = None,
    shared_budget: SharedBudgetOpt = None,
    shared_cache: SharedCacheFlag = False,
    redis: RedisOpt = None,
    sets: SetOpt = None,
    time_scale: TimeScaleOpt = 1.0,
    journal: JournalOpt = DEFAULT_JOURNAL,
    as_json: JsonFlag = False,
) -> int:
    """Execute a workflow: simulator by default, real endpoints where the spec names them.

    A run with --set keeps them in the journal: `trilemma resume` sets them again. On the
    simulator, --time-scale 0 runs it on a virtual clock (no real waiting: a check of the
    spec's prompts and gates in seconds); latencies are then the spec's own.

    Example: trilemma run examples/ticket.yaml --max-cost 0.50 --deadline 30 --seed 1

    Example: trilemma run examples/starter.yaml --set models.cheap.p_ok=0.8 -i question=Hi
    """
    from trilemma.experiments.trials import time_scaled
    from trilemma.journal import Journal
    from trilemma.report import tables
    from trilemma.run.retry import check_time_scale, scaled_time
    from trilemma.run.session import check_inputs, check_tenant, execute
    from trilemma.spec import load_workflow

    check_tenant(tenant)
    check_time_scale(time_scale, "--time-scale", virtual=True)
    shared, tier = _shared(shared_budget, shared_cache, redis)
    wf = load_workflow(spec, sets or ())
    fast = time_scaled(wf, time_scale)  # real endpoints run in real time only: refused here
    scale = time_scale or 1.0  # 0: a virtual clock, which keeps the spec's own time
    values = parse_inputs(inputs, input_files, spec_read_stdin=str(spec) == STDIN)
    declared_for_files(input_files, [(str(spec), wf)])
    check_inputs(wf, values, str(spec))  # before the journal is opened (or made)
    _load_embedder(wf, show=not as_json)
    ceiling, limit = wf.budget.resolve(max_cost, deadline)
    _note_budgets_that_stop_every_run(wf, ceiling, limit)
    with _on_interrupt(journal), Journal(journal) as j, _RunDisplay(
        len(wf.steps), ceiling, limit, enabled=not as_json, time_scale=time_scale
    ) as display, scaled_time(scale):
        result = execute(fast, journal=j, inputs=values, max_cost_usd=max_cost,
                         deadline_s=None if deadline is None else deadline * scale, seed=seed,
                         source=str(spec), on_event=display.update, tenant=tenant,
                         shared=shared, shared_cache=tier, time_scale=time_scale,
                         overrides=sets or ())  # fmt: skip
    result = _in_spec_time(result, wf, scale)
    under = None
    if ceiling is not None or limit is not None:  # what the analytic figures cannot say
        from trilemma.plan.simulate import under_budget

        under = under_budget(wf, limit, ceiling, result.seed, RUN_PREDICTION_RUNS)
        if under is not None:  # for the run's page too
            with Journal(journal) as j:
                j.add_prediction(result.run_id, "under_budget", under.held(result.predicted))
    if as_json:
        emit_json({**result.to_json(), "overrides": list(sets or ()), "time_scale": time_scale,
                   "predicted_under_budget": None if under is None else under.brief(result.predicted)})
        return _exit(result, f"run {result.run_id}")
    console = stdout_console()
    print_set(console, sets)
    console.print(tables.run_view(result, under, str(spec), time_scale=time_scale))
    for line in tables.scaled_lines(time_scale):
        console.print(line, style="dim")
    return _exit(result, f"run {result.run_id}")


def _in_spec_time(result: Any, wf: Any, scale: float) -> Any:
    """A run in scaled time, as the spec's own: its latency, and the estimate of the spec
    as written beside it (a virtual clock's, ``scale`` 1, keep the spec's time already)."""
    import dataclasses

    from trilemma.plan.estimate import estimate

    if scale == 1:
        return result
    return dataclasses.replace(result, latency_s=result.latency_s / scale, predicted=estimate(wf))


@app.command("batch", rich_help_panel="Run and read the journal")
def batch_cmd(
    spec: SpecFile,
    inputs: Annotated[
        Path,
        typer.Option("--inputs", help="JSON Lines: one object of inputs per run (- for stdin).",
                     show_default=False),
    ],
    max_cost: Annotated[
        float | None, dollars("Hard cost ceiling for the whole batch, $.")
    ] = None,
    deadline: Annotated[
        float | None, deadline_seconds("Deadline for the whole batch, seconds.")
    ] = None,
    parallel: Annotated[int, typer.Option(help="Runs at a time.")] = 4,
    seed: Annotated[
        int | None, seed_option(help="Simulator seed of line 1 (line n: seed + n - 1).")
    ] = None,
    tenant: Annotated[
        str | None,
        typer.Option(help="Whom the runs work for: their cached steps use that tenant's answers only."),
    ] = None,
    out: Annotated[
        Path | None,
        typer.Option("--out", "-o",
                     help="Write one JSON line per input line here, each as its run ends."),
    ] = None,
    resume: Annotated[
        str | None,
        typer.Option(help="Go on with this batch (its id, `latest`, or a part of the id): "
                          "lines done are not run again.",
                     show_default=False),
    ] = None,
    skip_failed: Annotated[
        bool,
        typer.Option("--skip-failed",
                     help="With --resume: leave lines whose run failed as they ended (by "
                          "default they run again)."),
    ] = False,
    plan: Annotated[
        bool, typer.Option("--plan", help="Only print what the batch should cost and take.")
    ] = False,
    shared_budget: SharedBudgetOpt = None,
    shared_cache: SharedCacheFlag = False,
    redis: RedisOpt = None,
    sets: SetOpt = None,
    journal: JournalOpt = DEFAULT_JOURNAL,
    as_json: JsonFlag = False,
) -> int:
    """Run a workflow once per line of a JSON Lines file, under one ceiling and one deadline.

    A batch prints its id as it starts; if it stops (a crash, the ceiling, the deadline),
    the same command with --resume ID (and the same --set, if any) goes on without running
    again what finished.

    Example: trilemma batch examples/faq.yaml --inputs examples/questions.jsonl --max-cost 0.05
    """
    from trilemma.journal import Journal
    from trilemma.report import tables
    from trilemma.run.batch import BatchTime, plan_batch, read_inputs, run_batch
    from trilemma.run.session import check_tenant
    from trilemma.spec import load_workflow

    positive("--parallel", parallel)
    check_tenant(tenant)
    shared, tier = _shared(shared_budget, shared_cache, redis)
    if str(spec) == STDIN and str(inputs) == "-":
        raise UsageError("--inputs -: the spec is standard input already; give the inputs' file")
    wf = load_workflow(spec, sets or ())
    lines = read_inputs(inputs, wf, str(spec))
    if resume is not None:  # its id, `latest` or a part of the id, as for runs
        with Journal(journal, create=False) as j:
            resume = batch_id_of(j, resume, "--resume")
    if plan:  # before spending: the planner's figures for these lines, nothing journaled
        left = None
        if shared is not None:  # what the team has left now, across every process
            from trilemma.run.shared_budget import shared_state

            state = shared_state(shared.redis, shared.name, shared.prefix, known=False)  # may be new
            left = (shared.name, max(0.0, shared.max_cost_usd - state.spent - state.reserved))
        planned = plan_batch(wf, len(lines), parallel=parallel, max_cost_usd=max_cost,
                             shared_left=left, deadline_s=deadline)  # fmt: skip
        if as_json:
            emit_json(planned)
        else:
            console = stdout_console()
            print_set(console, sets)
            console.print(tables.batch_plan_view(planned))
        return 0
    _load_embedder(wf, show=not as_json)
    ceiling, limit = wf.budget.resolve(max_cost, deadline)
    if resume is None:  # a resumed batch holds the deadline it began with
        _note_budgets_that_stop_every_run(wf, ceiling, limit)
    cap = f" / {tables.usd(ceiling)}" if ceiling is not None else ""
    if out is not None:  # checked before anything is spent (and left as it is until a line lands)
        try:
            out.open("a", encoding="utf-8").close()
        except OSError as exc:
            raise UsageError(f"--out {out}: cannot write: {exc.strerror}") from None
    with _on_interrupt(journal), contextlib.ExitStack() as stack:
        sink: Any = None
        bar = stack.enter_context(progress(not as_json and sys.stderr.isatty()))
        task = bar.add_task("runs", total=len(lines))

        def tick(done: int, total: int, spent: float) -> None:
            bar.update(task, completed=done, description=f"runs, {tables.usd(spent)}{cap}")

        said = ""  # the planner's time for the lines this session runs
        todo = len(lines)  # of which an earlier session finished the others

        paid = wf.endpoints

        def plan_said(took: BatchTime) -> None:
            nonlocal said, todo
            todo = took.runs
            held = tables.limit_held(None if took.limit is None else took.limit.to_json())
            said = f", about {took.latency_s:.2f}s planned" + (f" ({held})" if held else "")
            if paid:  # what runs on real endpoints will bill, said before they start
                said += (f", about {tables.usd(took.bill_usd)} billed on real endpoints "
                         f"({', '.join(paid)}) by the planner")  # fmt: skip
            said += tables.budgets_cut(took)

        def started(batch_id: str) -> None:
            again = "goes on with" if resume else "is resumed by the same command with"
            left = f" ({todo} to run)" if todo < len(lines) else ""
            sys.stderr.write(f"trilemma: {batch_id}: {counted(len(lines), 'line')}{left}, {parallel} "
                             f"at a time{said}; if it stops, it {again} --resume {batch_id}\n")  # fmt: skip

        def landed(line: LineResult) -> None:  # in the order runs end: a crash keeps what finished
            nonlocal sink
            if out is None:
                return
            if sink is None:
                sink = stack.enter_context(out.open("w", encoding="utf-8"))
            sink.write(_json_line(line))
            sink.flush()

        result = run_batch(wf, lines, journal=stack.enter_context(Journal(journal)),
                           max_cost_usd=max_cost,
                           deadline_s=deadline, parallel=parallel, seed=seed, source=str(spec),
                           tenant=tenant, on_progress=tick, on_start=started, on_plan=plan_said,
                           on_line=landed,
                           resume=resume, shared=shared, redis=redis,
                           shared_cache=tier, skip_failed=skip_failed,
                           overrides=sets or ())  # fmt: skip
    if out is not None:  # the whole batch, in line order, lines that never started included
        write_atomic(out, "".join(_json_line(r) for r in result.lines))
    return _report(result, as_json, tables.batch_view, result.batch_id, sets)


RUN_STATUSES = ("ok", "budget_exhausted", "deadline", "failed", "running")
"""What a run's row may say: how it ended, or that it has not (yet)."""


def _json_line(line: LineResult) -> str:
    return json.dumps(line.to_json(), ensure_ascii=False) + "\n"


def _report(
    result: Any, as_json: bool, view: Callable[[Any], Any], name: str, sets: list[str] | None = None
) -> int:
    """Print a run's or a batch's JSON or tables (after what ``sets`` changed); one line on
    stderr and 1 unless it is ok."""
    if as_json:
        emit_json({**result.to_json(), "overrides": list(sets or ())})
    else:
        console = stdout_console()
        print_set(console, sets)
        console.print(view(result))
    return _exit(result, name)


def _exit(result: Any, name: str) -> int:
    """1 and a line on stderr unless the run (or batch) is ok."""
    if result.status != "ok":
        sys.stderr.write(f"trilemma: {name} {result.status}: {result.error}\n")
        return 1
    return 0


@contextlib.contextmanager
def _on_interrupt(journal: Path) -> Iterator[None]:
    """Ctrl-C in a run, a resume or a batch: one line on stderr naming what stopped and the
    command that goes on with it, then exit 130. The executor's journal writer commits as
    the run unwinds, so the journal keeps every step that finished; the run's row says
    ``running`` until it is resumed (``trilemma doctor`` lists it as interrupted)."""
    from trilemma.report import tables

    try:
        yield
    except KeyboardInterrupt:
        from trilemma.journal import Journal

        mine: list[dict[str, Any]] = []
        # (no journal yet, or one that cannot be read: none of them)
        with contextlib.suppress(Exception), Journal(journal, create=False) as j:
            mine = [r for r in j.runs(status="running") if r["pid"] == os.getpid()]
            close_unresumable(j, [r for r in mine if r["time_scale"] != 1],
                              "a run in simulated time")  # fmt: skip
        flag = tables.journal_flag(journal)
        batch = mine[0]["batch_id"] if mine else None
        if batch:
            said = (f"; {batch} keeps the lines and steps that finished: the same command "
                    f"with --resume {batch} goes on")  # fmt: skip
        elif mine and mine[0]["time_scale"] != 1:
            said = (f"; run {mine[0]['run_id']} ran in simulated time, which a resume does "
                    "not take up: run it again (the steps that finished are in its ledger)")  # fmt: skip
        elif mine:
            run_id = mine[0]["run_id"]
            said = (f"; run {run_id} keeps the steps that finished: `trilemma resume "
                    f"{tables.short_id(run_id)}{flag}` goes on without calling them again")  # fmt: skip
        else:
            said = ""
        interrupted(said)


def _note_budgets_that_stop_every_run(
    wf: Any, ceiling: float | None, limit: float | None, spent: float | None = None
) -> None:
    """Before a run or a batch starts: the budgets under which every run that goes to the
    end stops (a deadline under the critical path, a ceiling under a run without a retry),
    on stderr. The work still starts: a stop_when may end a run sooner. With ``spent``,
    ``wf`` is what a resume has left to run (see :func:`tables.stops_every_run`)."""
    from trilemma.plan.estimate import estimate
    from trilemma.report import tables

    if ceiling is None and limit is None:
        return
    held = wf.with_budget(max_cost_usd=ceiling, deadline_s=limit)
    for line in tables.stops_every_run(held, estimate(held), spent=spent).values():
        sys.stderr.write(f"trilemma: note: {line}\n")


class _Ahead:
    """What a resume has left when it begins, under which budgets: its note before it goes
    on and its Monte Carlo after."""

    def __init__(
        self, j: Any, row: Mapping[str, Any], wf: Any, max_cost: float | None,
        deadline: float | None,
    ) -> None:  # fmt: skip
        run_id = row["run_id"]
        done = {k for k, v in j.steps(run_id).items() if v["status"] == "done"}
        self.left = wf.only([s.id for s in wf.steps if s.id not in done])
        """The steps not done: a begun one runs again from where it stopped."""
        begun = j.called_steps(run_id)
        self.fresh = wf.only([s.id for s in wf.steps if s.id not in done | begun])
        """The steps left that sent no call yet (a begun step may replay answered calls
        from the journal for nothing)."""
        self.ceiling: float | None = max_cost if max_cost is not None else row["max_cost_usd"]
        self.limit: float | None = deadline
        """Seconds from now: a new deadline, or what is left of the run's own."""
        if deadline is None and row["deadline_at"] is not None:
            self.limit = round(row["deadline_at"] - time.time(), 3)
        self.spent: float = j.spent(run_id)

    @property
    def passed(self) -> bool:
        """The deadline it keeps has passed: the run says so itself, after the resume."""
        return self.limit is not None and self.limit <= 0

    def note(self) -> None:
        """The budgets that stop the resume before its end, reckoned on the steps that sent
        no call yet, so the note errs on the side of silence."""
        if self.fresh.steps and not self.passed:
            _note_budgets_that_stop_every_run(self.fresh, self.ceiling, self.limit, self.spent)

    def under(self, seed: int | None) -> tuple[SimResult, dict[str, Any], dict[str, Any]] | None:
        """The Monte Carlo of the steps left under what is left of the ceiling and the
        deadline, what the run's table and page say of it, and its ``--json``, each with
        ``steps_left``: the steps not done, a begun one drawn from its start where the
        resume goes on from its next attempt, so for such a step it errs on the side of
        cost. None without budgets or steps left, or past the deadline (a ceiling already
        spent stops every drawn run)."""
        if self.passed or not self.left.steps or (self.ceiling is None and self.limit is None):
            return None
        from trilemma.plan.estimate import estimate
        from trilemma.plan.simulate import under_budget

        room = None if self.ceiling is None else max(0.0, self.ceiling - self.spent)
        sim = under_budget(self.left, self.limit, room, seed, RUN_PREDICTION_RUNS)
        e, n = estimate(self.left), len(self.left.steps)
        return (sim, {**sim.held(e), "steps_left": n, "ceiling_of_usd": self.ceiling},
                {**sim.brief(e), "steps_left": n})  # fmt: skip


def _load_embedder(wf: Any, show: bool) -> None:
    """Load the semantic cache's model now, with a spinner on a terminal (it takes seconds)."""
    from trilemma.run.session import embedder_for, wants_embedder

    if not wants_embedder(wf):
        return
    if show and sys.stderr.isatty():
        with Console(stderr=True).status("loading all-MiniLM-L6-v2 for the semantic cache"):
            embedder_for(wf)
    else:
        embedder_for(wf)


class _RunDisplay:
    """Steps done, spend against the ceiling and time against the deadline, on a terminal."""

    def __init__(
        self, steps: int, ceiling: float | None, deadline: float | None, enabled: bool,
        time_scale: float = 1.0,
    ) -> None:  # fmt: skip
        from rich.progress import BarColumn, MofNCompleteColumn, Progress

        from trilemma.report.tables import usd

        self.ceiling, self.deadline, self.usd = ceiling, deadline, usd
        self.time_scale = time_scale  # the clock shows the spec's time; none on a virtual one
        self.progress = Progress(
            "[progress.description]{task.description}", BarColumn(), MofNCompleteColumn(),
            "{task.fields[spend]}", "{task.fields[clock]}",
            console=Console(stderr=True), disable=not (enabled and sys.stderr.isatty()),
            transient=True,
        )  # fmt: skip
        self.task = self.progress.add_task("steps", total=steps, spend="", clock="")
        self.started = 0.0

    def __enter__(self) -> _RunDisplay:
        self.started = time.monotonic()
        self.progress.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        self.progress.__exit__(None, None, None)

    def update(self, event: Any) -> None:
        cap = f" / {self.usd(self.ceiling)}" if self.ceiling is not None else ""
        left = f" / {self.deadline:.0f}s" if self.deadline is not None else ""
        elapsed = (time.monotonic() - self.started) / (self.time_scale or 1.0)
        clock = f"{elapsed:.1f}s{left}" if self.time_scale else "virtual clock"
        self.progress.update(self.task, completed=event.done, spend=f"{self.usd(event.spent)}{cap}",
                             clock=clock)  # fmt: skip


@app.command(rich_help_panel="Run and read the journal")
def runs(
    status: Annotated[
        str | None,
        typer.Option(help=f"Only runs that ended so ({', '.join(RUN_STATUSES)}).",
                     show_default=False),
    ] = None,
    batch: Annotated[
        str | None, typer.Option(help="Only the runs of this batch (its id, `latest`, or a part of "
                          "the id).", show_default=False)
    ] = None,
    limit: Annotated[
        int | None, typer.Option(help=f"Only the newest N (the table: {TABLE_RUNS} unless "
                                 "given; --json: every run).", show_default=False)
    ] = None,
    journal: JournalOpt = DEFAULT_JOURNAL,
    as_json: JsonFlag = False,
) -> int:
    """The runs in a journal, newest first.

    Example: trilemma runs --status failed --limit 20
    """
    from trilemma.journal import Journal
    from trilemma.report import tables

    if status is not None and status not in RUN_STATUSES:
        raise UsageError(f"--status {status!r}: give one of {', '.join(RUN_STATUSES)}")
    if limit is not None:
        positive("--limit", limit)
    shown = limit if limit is not None or as_json else TABLE_RUNS
    with Journal(journal, create=False) as j:
        if batch is not None and (batch == "latest" or j.batch_ids(batch)):  # id, latest, part
            batch = batch_id_of(j, batch, "--batch")  # (an id naming none filters out every run)
        rows = j.runs(status=status, batch_id=batch, limit=shown)
        total = len(rows) if shown is None or len(rows) < shown else j.count_runs(
            status=status, batch_id=batch)  # fmt: skip
    if as_json:
        keys = ("run_id", "status", "cost_usd", "calls", "latency_s", "spec_source", "error",
                "tenant", "batch_id", "batch_line", "shared_budget", "time_scale", "seed")  # fmt: skip
        emit_json([{**{k: r[k] for k in keys}, "overrides": overrides_of(r),
                    "started_at": iso(r["started_at"]), "finished_at": iso(r["finished_at"])}
                   for r in rows])  # fmt: skip
    else:
        if not rows:  # an empty table would say neither why nor what next
            sys.stdout.write(_no_runs(journal, status, batch) + "\n")
        else:
            stdout_console().print(tables.runs_table(rows, total))
    return 0


def _no_runs(journal: Path, status: str | None, batch: str | None) -> str:
    """What a ``trilemma runs`` that lists nothing says, and where to look."""
    if not (status or batch):  # a journal without runs (a gateway's before its first key)
        return no_runs_yet(journal)
    what = " ".join(([f"of batch {batch!r}"] if batch else [])
                        + ([f"that ended {status}"] if status else []))  # fmt: skip
    hint = ("; `trilemma runs --json` gives each run's batch_id" if batch
            else "; `trilemma runs` lists them all")  # fmt: skip
    return f"no run in {journal} {what}{hint}"


TABLE_RUNS = 30
"""Runs the table lists unless --limit says otherwise (compare and sweep journal hundreds)."""


@app.command("resume", rich_help_panel="Run and read the journal")
def resume_cmd(
    run_id: Annotated[str, run_ref("The run to finish.")],
    journal: JournalOpt = DEFAULT_JOURNAL,
    deadline: Annotated[
        float | None, deadline_seconds("A new deadline, seconds from now.", "the run keeps its own")
    ] = None,
    max_cost: Annotated[
        float | None, dollars("A new cost ceiling for the whole run, $.")
    ] = None,
    force: Annotated[bool, typer.Option(help="Resume even though the spec file changed.")] = False,
    shared_budget: SharedBudgetOpt = None,
    shared_cache: SharedCacheFlag = False,
    redis: RedisOpt = None,
    as_json: JsonFlag = False,
) -> int:
    """Finish an interrupted run: steps the journal holds as done are not called again.

    A run started with --shared-budget goes on under that shared ceiling.

    Example: trilemma resume 20261124T053000Z-1a2b3c4d

    Example: trilemma resume latest
    """
    from trilemma.journal import Journal
    from trilemma.run.session import resume, spec_to_resume, still_running
    from trilemma.spec import workflow_from_dict

    shared, tier = _shared(shared_budget, shared_cache, redis)
    ahead = None
    with Journal(journal, create=False) as j:
        run_id = run_id_of(j, run_id)
        row = j.run(run_id)
        spec = json.loads(row["spec_json"]) if row else {}
        steps = len(spec.get("steps", []))
        if steps:  # a workflow's run (not a gateway key's)
            if row and row["time_scale"] == 1 and not still_running(row):
                wf, _ = spec_to_resume(j, row, force=force)  # a changed file: refused first
                if row["status"] != "ok":
                    ahead = _Ahead(j, row, wf, max_cost, deadline)
                    ahead.note()
            else:  # resume() says why it will not, or goes on with --force
                wf = workflow_from_dict(spec, run_id)
            _load_embedder(wf, show=not as_json)
        budgets = (ahead.ceiling, ahead.limit) if ahead is not None else (  # the run's kept
            max_cost if max_cost is not None else (row or {}).get("max_cost_usd"), deadline)
        with _on_interrupt(journal), _RunDisplay(
            steps, *budgets, enabled=not as_json
        ) as display:
            result = resume(j, run_id, deadline_s=deadline, max_cost_usd=max_cost, force=force,
                            on_event=display.update, shared=shared, redis=redis,
                            shared_cache=tier)  # fmt: skip
    sets = overrides_of(row) if row else None
    sim, held, brief = (None, None, None) if ahead is None else (
        ahead.under(result.seed) or (None, None, None))  # fmt: skip
    if ahead is not None:  # for the run's page: this resume's, or none (not an earlier one's)
        with Journal(journal) as j:
            j.add_prediction(result.run_id, "under_budget_resumed", held)
    if as_json:  # beside the Monte Carlo of what the resume had left, as `run` has its own
        emit_json({**result.to_json(), "overrides": list(sets or ()),
                   "predicted_under_budget": brief})  # fmt: skip
    else:
        from trilemma.report import tables

        console = stdout_console()
        print_set(console, sets)
        console.print(tables.run_view(result, sim, row["spec_source"] if row else None, held))
    code = _exit(result, f"run {result.run_id}")
    if row is not None and row["status"] == "ok" and not as_json:
        sys.stderr.write(f"note: run {run_id} had already finished ok: every step came from "
                         "the journal and nothing was sent\n")  # fmt: skip
    return code


@app.command(rich_help_panel="Run and read the journal")
def export(
    run_id: Annotated[str, run_ref("The run to export.")],
    journal: JournalOpt = DEFAULT_JOURNAL,
    out: Annotated[
        Path | None, typer.Option("--out", "-o", help="Write here instead of stdout.")
    ] = None,
) -> int:
    """A run as JSON Lines: one record for the run, then one per step, then one per call.

    Example: trilemma export 20261124T053000Z-1a2b3c4d --out run.jsonl
    """
    from trilemma.journal import Journal

    writable("--out", out)
    with Journal(journal, create=False) as j:
        run_id = run_id_of(j, run_id)
        lines = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in j.export(run_id))
    if out is None:
        sys.stdout.write(lines)
    else:
        write_atomic(out, lines)
    return 0


@app.command(rich_help_panel="Run and read the journal")
def doctor(journal: JournalOpt = DEFAULT_JOURNAL, as_json: JsonFlag = False) -> int:
    """Check a journal: integrity, schema version, interrupted runs, calls left in flight, damaged rows.

    Example: trilemma doctor --journal .trilemma/trilemma.db
    """
    from trilemma.journal import Journal
    from trilemma.report import tables

    with Journal(journal, create=False) as j:
        report = j.check()
    healthy = report["integrity"] == "ok" and not report["damaged_rows"]
    if as_json:
        emit_json({**report, "healthy": healthy})
    else:
        console = stdout_console()
        runs = "rows not read" if report["runs"] is None else counted(report["runs"], "run")
        console.print(f"journal {report['journal']}: schema {report['schema_version']} "
                      f"(this trilemma knows {report['schema_known']}), {runs}")  # fmt: skip
        if report["integrity"] == "ok":
            console.print("integrity: ok")
        else:
            for problem in report["integrity"][:20]:
                console.print(f"integrity: {problem}", markup=False)
            console.print("the file is damaged: restore it from a backup (`sqlite3 FILE "
                          ".recover` salvages what it can), or give another --journal")  # fmt: skip
        for problem in report["damaged_rows"]:
            console.print(f"damaged row: {problem}", markup=False)
        if report["damaged_rows"]:
            console.print("rows hold values trilemma never writes (another tool edited them): "
                          "restore the journal from a backup, or give another --journal (a "
                          "damaged cache entry is only missed, and the next answer replaces "
                          "it; `trilemma cache clear` forgets it now)")  # fmt: skip
        flag = tables.journal_flag(journal)  # the commands below read this journal
        trials = set(report["interrupted_trials"])
        for run_id in report["interrupted_runs"]:
            if run_id in trials:
                console.print(f"interrupted run {run_id} in simulated time (a trial of compare "
                              "or sweep, or run --time-scale): it is not resumed; run it, or the "
                              f"experiment, again, and `trilemma prune --older-than 0{flag}` "
                              "forgets it")  # fmt: skip
            elif run_id.startswith(GATEWAY_RUN):
                console.print(f"gateway run {run_id} stopped without closing; its calls are in "
                              "the ledger and the next `trilemma gateway` reopens it")  # fmt: skip
            else:
                console.print(f"interrupted run {run_id}: finish it with `trilemma resume "
                              f"{run_id}{flag}`")  # fmt: skip
        for b in report["interrupted_batches"]:
            sets = set_flags(b["overrides"])
            console.print(f"interrupted batch {b['batch_id']}: go on with `trilemma batch "
                          f"{shlex.quote(b['spec_source'])} --inputs <the same file> "
                          f"{sets + ' ' if sets else ''}--resume {b['batch_id']}{flag}`")  # fmt: skip
        for c in report["orphaned_in_flight_calls"]:
            console.print(f"in flight at the crash (may have been billed): run {c['run_id']} step "
                          f"{c['step_id']} attempt {c['attempt']} call {c['call']} ({c['model']})")  # fmt: skip
        for c in report["unsettled_calls_in_ended_runs"]:
            console.print(f"never settled, though its run ended (cost unknown): run {c['run_id']} "
                          f"step {c['step_id']} attempt {c['attempt']} call {c['call']} "
                          f"({c['model']})")  # fmt: skip
        if (
            healthy
            and not report["interrupted_runs"]
            and not report["unsettled_calls_in_ended_runs"]
        ):
            console.print("all good")
    return 0 if healthy else 1


def _file_size(journal: Path) -> int:
    """A journal's bytes on disk: the file and its write-ahead log."""
    log = journal.with_name(journal.name + "-wal")
    return journal.stat().st_size + (log.stat().st_size if log.exists() else 0)


@app.command(rich_help_panel="Run and read the journal")
def prune(
    older_than: Annotated[
        float, typer.Option(min=0.0, help="Forget runs started more than this many days ago.",
                            show_default=False),
    ],
    status: Annotated[
        str | None,
        typer.Option(help="Only runs that ended so (ok, budget_exhausted, deadline, failed).",
                     show_default=False),
    ] = None,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Count what would go; keep it.")] = False,
    vacuum: Annotated[
        bool, typer.Option("--vacuum", help="Then shrink the file (rewrites it: needs the "
                           "journal to itself, and free disk as large as it).")
    ] = False,
    journal: JournalOpt = DEFAULT_JOURNAL,
    as_json: JsonFlag = False,
) -> int:
    """Forget old runs from a journal: their calls, steps and specs (cached answers stay).

    Runs still running or waiting for `trilemma resume` stay, as does any batch that is not
    old all through. A gateway key's run stays, and loses its calls that ended before the
    cutoff: their bill still counts against the key's ceiling.

    Example: trilemma prune --older-than 30 --dry-run

    Example: trilemma prune --older-than 90 --vacuum
    """
    import time

    from trilemma.journal import Journal

    ended = [s for s in RUN_STATUSES if s != "running"]
    if status is not None and status not in ended:
        raise UsageError(f"--status {status!r}: give one of {', '.join(ended)} "
                         "(a running run is never pruned)")  # fmt: skip
    with Journal(journal, create=False) as j:  # opened first: it may migrate an old journal
        size = _file_size(journal)
        before = time.time() - older_than * 86_400
        p = j.prune(before, status=status, dry_run=dry_run)
        if vacuum and not dry_run:
            j.vacuum()
    out: dict[str, Any] = {
        "dry_run": dry_run, "runs": len(p.run_ids), "calls": p.calls, "steps": p.steps,
        "kept_in_batches": p.kept_in_batches, "kept_running": p.kept_running,
        "gateway_calls": p.gateway_calls,
        "before": iso(before), "run_ids": p.run_ids,
        "bytes_before": size, "bytes_after": _file_size(journal),
    }  # fmt: skip
    if as_json:
        emit_json(out)
        return 0
    said = "would forget" if dry_run else "forgot"
    lines = [f"{said} {counted(len(p.run_ids), 'run')} started before {out['before']} "
             f"({counted(p.calls, 'call')}) from {journal}"]  # fmt: skip
    if p.gateway_calls:
        lines.append(f"and {counted(p.gateway_calls, 'call')} of gateway keys that ended "
                     "before then (their bill still counts against the keys' ceilings)")  # fmt: skip
    if p.kept_in_batches:
        lines.append(f"kept {counted(p.kept_in_batches, 'run')} as old, of batches with "
                     "newer or unfinished runs (a batch goes whole)")  # fmt: skip
    if p.kept_running:
        lines.append(f"kept {counted(p.kept_running, 'run')} as old that "
                     f"{'has' if p.kept_running == 1 else 'have'} not ended (live, or waiting "
                     "for `trilemma resume`: `trilemma doctor` says which)")  # fmt: skip
    if vacuum and not dry_run:
        lines.append(f"the file: {size / 1e6:.1f} MB before, {out['bytes_after'] / 1e6:.1f} MB now")
    elif (p.run_ids or p.gateway_calls) and not dry_run:
        lines.append("the file keeps its size and reuses the space for new rows; --vacuum "
                     "shrinks it")  # fmt: skip
    sys.stdout.write("\n".join(lines) + "\n")
    return 0


@app.command(rich_help_panel="Run and read the journal")
def ledger(
    run_id: Annotated[str, run_ref("The run.")],
    step: Annotated[
        list[str] | None,
        typer.Option(help="Only the calls of this step (repeat it for more).", show_default=False),
    ] = None,
    outcome: Annotated[
        list[str] | None,
        typer.Option(help="Only the calls that ended so (ok, rejected, transient, rate_limited, "
                     "timeout, ...; repeat it for more).", show_default=False),
    ] = None,
    journal: JournalOpt = DEFAULT_JOURNAL,
    as_json: JsonFlag = False,
) -> int:
    """One record per LLM call of a run: tokens, cost, latency, outcome, cache hit.

    Example: trilemma ledger latest --json

    Example: trilemma ledger 1a2b3c4d --step diagnose --outcome rejected
    """
    from trilemma.journal import Journal
    from trilemma.journal.store import OUTCOMES, abandoned
    from trilemma.report import tables

    for o in outcome or ():
        if o not in OUTCOMES:
            raise UsageError(f"--outcome {o!r}: give one of {', '.join(OUTCOMES)}")
    with Journal(journal, create=False) as j:
        run_id = run_id_of(j, run_id)
        run = j.run(run_id)
        assert run is not None
        rows = [tables.ledger_row(r) for r in j.calls(run_id)]
    if step:
        spec = json.loads(run["spec_json"] or "{}")
        gateway = run_id.startswith(GATEWAY_RUN)  # its calls are filed by the model asked
        named = list(spec.get("models", {})) if gateway else [s["id"] for s in spec.get("steps", [])]
        known = named + [r["step"] for r in rows]
        for s in step:
            if s not in known:
                what = "models, by which a gateway files its calls" if gateway else "steps"
                raise UsageError(f"--step {s!r}: run {run_id} has no such step (its {what}: "
                                 f"{', '.join(dict.fromkeys(known)) or 'none'})")  # fmt: skip
    rows = [r for r in rows if (not step or r["step"] in step)
            and (not outcome or r["outcome"] in outcome)]  # fmt: skip
    if as_json:
        emit_json(rows)
    else:
        shown = {"step": step or [], "outcome": outcome or []}
        pruned = (run["pruned_calls"], run["pruned_usd"]) if run["pruned_calls"] else None
        live = run["status"] == "running" and not abandoned(run)
        ended = None if live else run["status"] + (f": {run['error']}" if run["error"] else "")
        stdout_console().print(tables.ledger_table(run_id, rows, run["time_scale"], shown, pruned,
                                                   live, ended))  # fmt: skip
    return 0


@app.command(rich_help_panel="Run and read the journal")
def report(
    run_id: Annotated[str, run_ref("The run, or a batch (by its id or a part of it).")],
    journal: JournalOpt = DEFAULT_JOURNAL,
    out: Annotated[
        Path | None, typer.Option("--out", "-o", help="The HTML file (default: report-ID.html).")
    ] = None,
) -> int:
    """One self-contained HTML page for a run (predicted beside measured, timeline, ledger) or a batch.

    Example: trilemma report latest --out run.html

    Example: trilemma report batch-20261124T053000Z-1a2b3c4d
    """
    from trilemma.journal import Journal
    from trilemma.report.html import batch_report, run_report

    writable("--out", out)
    with Journal(journal, create=False) as j:
        is_batch = not j.run_ids(run_id) and bool(j.batch_ids(run_id))
        run_id = batch_id_of(j, run_id, "report") if is_batch else run_id_of(j, run_id)
        page = batch_report(j, run_id) if is_batch else run_report(j, run_id)
    path = out or Path(f"report-{run_id}.html")
    write_atomic(path, page)
    sys.stdout.write(f"report: {path}\n")
    return 0


@app.command(rich_help_panel="Run and read the journal")
def gateway(
    config: Annotated[Path, typer.Argument(help="The gateway's YAML file.", show_default=False)],
    host: Annotated[str, typer.Option(help="Address to listen on.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(min=1, max=65535, help="Port to listen on.")] = 8787,
    journal: JournalOpt = DEFAULT_JOURNAL,
    force: Annotated[
        bool, typer.Option(help="Start even though the journal says a live gateway serves a key.")
    ] = False,
) -> int:
    """Serve an OpenAI-compatible endpoint whose per-key spend ceilings cannot be overrun.

    Example: TEAM_A_KEY=sk-a trilemma gateway examples/gateway.yaml --port 8787
    """
    try:
        import uvicorn

        from trilemma.gateway.app import Gateway, create_app
    except ImportError:
        raise UsageError(
            "the gateway needs FastAPI and uvicorn: pip install 'trilemma[gateway]'"
        ) from None
    from trilemma.gateway.config import load_gateway_config, secrets_of
    from trilemma.journal import Journal
    from trilemma.run.shared_budget import RedisBudgets

    conf = load_gateway_config(config)
    keys = secrets_of(conf, str(config))
    with Journal(journal) as j:
        gw = Gateway(conf, keys, j, source=str(config), force=force)
        if isinstance(gw.budgets, RedisBudgets):
            gw.budgets.check()  # a store that does not answer: say so now, not at the first call
        with _listening(host, port) as sock:  # bound before the gateway says it serves
            sys.stdout.write(
                f"trilemma gateway: http://{host}:{port}/v1 serving {', '.join(conf.models)} to "
                f"keys {', '.join(conf.keys)}; ledger in {journal} (runs gateway-KEY)\n"
            )
            sys.stdout.flush()
            server = uvicorn.Server(uvicorn.Config(create_app(gw), host=host, port=port,
                                                   log_level="warning"))  # fmt: skip
            with contextlib.suppress(KeyboardInterrupt):  # Ctrl-C is how a gateway stops: exit 0
                server.run(sockets=[sock])  # (uvicorn raises it again after its graceful stop)
    return 0 if server.started else 1  # not started: uvicorn has said why


def _listening(host: str, port: int) -> socket.socket:
    """A socket bound to ``host:port`` for the gateway, or one line saying why there is none."""
    # IPPROTO_TCP, not 0: asyncio turns Nagle off (TCP_NODELAY) only on connections whose
    # socket says it is TCP, and uvicorn writes a response's head and body apart; with
    # Nagle on, the body waited for the client's delayed ACK, 40 ms a request on a kept-alive
    # connection (every request of an SDK client after its first).
    sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM,
                         socket.IPPROTO_TCP)  # fmt: skip
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        if exc.errno == errno.EADDRINUSE:
            raise SetupError(f"port {port} on {host} is taken; stop what uses it or pass --port") from None
        raise UsageError(f"--host {host}: cannot listen there ({exc.strerror or exc}); 127.0.0.1 "
                         "serves this machine, 0.0.0.0 every interface") from None  # fmt: skip
    return sock


budget_app = typer.Typer(help="Read and reset ceilings shared across processes (--shared-budget).",
                         no_args_is_help=True)  # fmt: skip
app.add_typer(budget_app, name="budget", rich_help_panel="Run and read the journal")
PrefixOpt = Annotated[
    str,
    typer.Option(help="Whose counters: trilemma:budget for runs, a gateway's shared.prefix "
                      "(trilemma:gateway) for its keys."),
]  # fmt: skip


def _budget_json(name: str, state: BudgetState) -> dict[str, Any]:
    """Figures rounded to 1e-12 dollars, as the gateway's /v1/budget gives them (float sums
    carry noise past that: 0.014000000000000012)."""
    def usd(x: float | None) -> float | None:
        return None if x is None else round(x, 12)

    return {"name": name, "ceiling_usd": state.ceiling, "spent_usd": usd(state.spent),
            "reserved_usd": usd(state.reserved), "remaining_usd": usd(state.remaining),
            "refused": state.refused}  # fmt: skip


@budget_app.command("show")
def budget_show(
    name: Annotated[str, typer.Argument(help="The shared budget (NAME of --shared-budget).")],
    redis: RedisOpt = None,
    prefix: PrefixOpt = "trilemma:budget",
    as_json: JsonFlag = False,
) -> int:
    """What a shared ceiling has spent, what calls in flight hold, what is left, what it refused.

    Example: trilemma budget show team-a --redis redis://127.0.0.1:6379/0
    """
    from trilemma._redis import check_url
    from trilemma.report import tables
    from trilemma.run.shared_budget import shared_state

    state = shared_state(check_url(redis), name, prefix)
    if as_json:
        emit_json(_budget_json(name, state))
    else:
        usd = tables.usd
        left = ("" if state.remaining is None else
                f", {usd(state.remaining)} left of {usd(state.ceiling)}")  # fmt: skip
        sys.stdout.write(f"{name}: {usd(state.spent)} spent, {usd(state.reserved)} held by calls "
                         f"in flight{left}, {state.refused} calls refused\n")  # fmt: skip
    return 0


@budget_app.command("reset")
def budget_reset(
    name: Annotated[str, typer.Argument(help="The shared budget (NAME of --shared-budget).")],
    redis: RedisOpt = None,
    prefix: PrefixOpt = "trilemma:budget",
    force: Annotated[
        bool, typer.Option(help="Even while calls in flight hold part of it.")
    ] = False,
    as_json: JsonFlag = False,
) -> int:
    """Start a shared ceiling's count again from $0 (a new month, say).

    Example: trilemma budget reset team-a
    """
    from trilemma._redis import check_url
    from trilemma.report import tables
    from trilemma.run.shared_budget import reset_shared

    before = reset_shared(check_url(redis), name, prefix, force=force)
    if as_json:
        emit_json({**_budget_json(name, before), "reset": True})
    else:
        sys.stdout.write(f"{name}: reset (it had spent {tables.usd(before.spent)})\n")
    return 0


cache_app = typer.Typer(help="Inspect and clear the journal's cache of accepted answers.",
                        no_args_is_help=True)  # fmt: skip
app.add_typer(cache_app, name="cache", rich_help_panel="Run and read the journal")


@cache_app.command("stats")
def cache_stats(journal: JournalOpt = DEFAULT_JOURNAL, as_json: JsonFlag = False) -> int:
    """Per model: cached answers, their embeddings, their ages and the hits they served.

    Example: trilemma cache stats --json
    """
    from trilemma.journal import Journal
    from trilemma.report import tables

    with Journal(journal, create=False) as j:
        rows = j.cache_stats()
    if as_json:
        emit_json([{**r, "oldest": iso(r["oldest"]), "newest": iso(r["newest"])} for r in rows])
    else:
        stdout_console().print(tables.cache_table(str(journal), rows))
    return 0


@cache_app.command("clear")
def cache_clear(
    model: Annotated[str | None, typer.Option(help="Only this model profile's answers.")] = None,
    older_than: Annotated[
        float | None, typer.Option(min=0.0, help="Only answers older than this many days.")
    ] = None,
    semantic_only: Annotated[
        bool, typer.Option(help="Drop only the embeddings: exact repeats still hit.")
    ] = False,
    tenant: Annotated[
        str | None,
        typer.Option(help="Only this tenant's answers (a run's --tenant, a gateway's key)."),
    ] = None,
    shared: Annotated[
        bool, typer.Option("--shared", help="Also from the shared cache (the Redis of --redis).")
    ] = False,
    redis: RedisOpt = None,
    journal: JournalOpt = DEFAULT_JOURNAL,
    as_json: JsonFlag = False,
) -> int:
    """Forget cached answers (all of them unless filtered), so the next runs ask again.

    Example: trilemma cache clear --model premium --older-than 30

    Example: trilemma cache clear --tenant acme --shared
    """
    import time

    from trilemma.cache.shared import SharedCache
    from trilemma.journal import Journal

    url = _tier(shared, redis)
    before = None if older_than is None else time.time() - older_than * 86_400
    with Journal(journal, create=False) as j:
        exact, semantic = j.cache_clear(
            model=model, before=before, semantic_only=semantic_only, tenant=tenant
        )
        cached = [r["model"] for r in j.cache_stats() if r["entries"]]
    removed: dict[str, int] = {"exact_removed": exact, "semantic_removed": semantic}
    if url is not None and not semantic_only:  # the shared tier holds no embeddings
        tier = SharedCache(url)
        tier.check()

        async def clear() -> int:
            try:
                return await tier.clear(model=model, before=before, tenant=tenant)
            finally:
                await tier.aclose()

        removed["shared_removed"] = run_whole(clear())
    if as_json:
        emit_json(removed)
    else:
        also = (f", and {removed['shared_removed']} from the shared cache"
                if "shared_removed" in removed else "")  # fmt: skip
        sys.stdout.write(f"removed {exact} cached answers and {semantic} prompt embeddings "
                         f"from {journal}{also}\n")  # fmt: skip
        if model is not None and not exact + semantic and model not in cached:
            held = f"it holds answers for {', '.join(map(repr, cached))}" if cached else "it is empty"
            sys.stderr.write(f"trilemma: no cached answer in {journal} is for model {model!r}; "
                             f"{held} (see `trilemma cache stats`)\n")  # fmt: skip
    return 0

