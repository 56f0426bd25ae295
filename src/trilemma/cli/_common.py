"""The parts every ``trilemma`` command shares: the app, option types, output helpers, ``main``.

The ``trilemma.cli`` package is the only place that prints or exits. ``main(argv) -> int``
runs a command in-process and returns its exit code: 0 success, 1 the run or plan failed,
2 bad input (one line on stderr naming the file, the field and the fix; never a traceback).
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import shlex
import signal
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, NoReturn

import typer
from rich.console import Console

from trilemma.errors import TrilemmaError, UsageError
from trilemma.journal.store import DEFAULT_PATH
from trilemma.spec.bounds import MAX_SECONDS, MAX_SEED, MAX_USD, STDIN, read_capped

if TYPE_CHECKING:
    from collections.abc import Callable

    from rich.progress import Progress

    from trilemma.journal import Journal
    from trilemma.spec import Workflow

__all__ = [
    "DEFAULT_JOURNAL",
    "JournalOpt",
    "JsonFlag",
    "SpecFile",
    "app",
    "batch_id_of",
    "declared_for_files",
    "dollars",
    "emit_json",
    "interrupted",
    "iso",
    "main",
    "no_runs_yet",
    "positive",
    "progress",
    "run",
    "run_id_of",
    "run_ref",
    "runs_kept_on_interrupt",
    "seconds",
    "seed_option",
    "stdin_named",
    "stdout_console",
    "write_atomic",
]

app = typer.Typer(
    name="trilemma",
    help="Plan, run and measure LLM agent workflows under cost, latency and reliability budgets.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode="markdown",
)


def _version(shown: bool) -> None:
    if shown:
        from trilemma import __version__

        sys.stdout.write(f"trilemma {__version__}\n")
        raise typer.Exit(0)


@app.callback()
def _root(
    version: Annotated[
        bool,
        typer.Option("--version", callback=_version, is_eager=True,
                     help="Print trilemma's version and exit."),
    ] = False,
) -> None:
    pass  # the app's help is the Typer's own; this only carries --version


def stdin_named(path: Path) -> Path:
    """``-`` as the path that names standard input wherever a spec's name is shown or kept."""
    return Path(STDIN) if str(path) == "-" else path


SpecFile = Annotated[
    Path,
    typer.Argument(help="Workflow spec (YAML or JSON; - reads it from standard input).",
                   show_default=False, callback=stdin_named),
]  # fmt: skip
JsonFlag = Annotated[bool, typer.Option("--json", help="Print JSON instead of tables.")]
TimeScaleOpt = Annotated[
    float, typer.Option(help="0: simulated time on a virtual clock, every wait taking no real "
                             "time and ending when due; F in (0, 1]: simulated time runs 1/F "
                             "times faster (1: real time, which real endpoints need).")
]
SetOpt = Annotated[list[str] | None, typer.Option(
    "--set", metavar="PATH=VALUE",
    help="What if: change a field of the spec for this command, the file left as it is "
         "(models.small.p_ok=0.9, steps.answer.retries=2; repeatable).",
)]  # fmt: skip


def print_set(console: Console, sets: list[str] | None) -> None:
    """Say first what ``--set`` changed, so that no figure is taken for the file's own."""
    if sets:
        console.print(f"with {', '.join(sets)} (--set; the file is unchanged)", markup=False,
                      highlight=False, soft_wrap=True)  # fmt: skip


InputsOpt = Annotated[
    list[str] | None, typer.Option("--input", "-i", help="An input, as name=value.")
]


InputFilesOpt = Annotated[
    list[str] | None,
    typer.Option("--input-file", metavar="NAME=PATH", show_default=False,
                 help="An input read from a UTF-8 text file (- for standard input), as "
                      "name=path: a document too long for the command line."),
]  # fmt: skip

#: Largest input file: text for a prompt (a million-token context is about 4 MB of text).
MAX_INPUT_FILE = 16 * 1024 * 1024


def parse_inputs(
    pairs: list[str] | None, files: list[str] | None = None, *, spec_read_stdin: bool = False
) -> dict[str, str]:
    """``--input name=value`` pairs, and ``--input-file name=path`` read, as a mapping; a
    UsageError (exit 2) on one without ``=``, a file that cannot be read as text, a name
    given twice with two values, or standard input asked for twice (``spec_read_stdin``:
    the spec came from it)."""
    out: dict[str, str] = {}
    stdin_read = spec_read_stdin
    given = [("--input", p) for p in pairs or []] + [("--input-file", p) for p in files or []]
    for flag, pair in given:
        key, sep, value = pair.partition("=")
        from_file = flag == "--input-file"
        if not sep or not key or (from_file and not value):
            raise UsageError(f"{flag} {pair!r}: write it as name={'path' if from_file else 'value'}")
        if from_file:
            if value == "-" and stdin_read:
                held = "the spec" if spec_read_stdin else "another input"
                raise UsageError(f"{flag} {pair}: standard input holds {held} already; "
                                 "give a file")  # fmt: skip
            stdin_read = stdin_read or value == "-"
            value = _input_file(key, value)
        if key in out and out[key] != value:
            raise UsageError(f"{flag} {key}: given twice ({_shown(out[key])}, then "
                             f"{_shown(value)}); give it once")  # fmt: skip
        out[key] = value
    return out


def declared_for_files(files: list[str] | None, specs: list[tuple[str, Workflow]]) -> None:
    """Refuse an input ``--input-file`` gives that no spec declares, naming that flag (the
    library's check, which the rest meet later, calls every given input ``--input``)."""
    from trilemma.experiments.compare import refuse_unread
    from trilemma.run.session import refuse_undeclared

    names = [pair.partition("=")[0] for pair in files or []]
    if len(specs) == 1:
        refuse_undeclared(names, specs[0][1], specs[0][0], "--input-file ")
    else:
        refuse_unread(names, specs, "--input-file ")


def _shown(value: str) -> str:
    return repr(value) if len(value) <= 40 else f"{value[:37]!r}..."


def _input_file(name: str, path: str) -> str:
    """The text of an input's file (``-``: standard input), a byte order mark dropped."""
    where = f"--input-file {name}={path}"
    try:
        data = read_capped(path, MAX_INPUT_FILE)
    except FileNotFoundError:
        raise UsageError(f"{where}: no such file; give the path of a text file") from None
    except IsADirectoryError:
        raise UsageError(f"{where}: a folder; give the path of a text file") from None
    except OSError as exc:
        raise UsageError(f"{where}: cannot read it ({exc.strerror or exc})") from None
    if len(data) > MAX_INPUT_FILE:
        raise UsageError(f"{where}: more than {MAX_INPUT_FILE // 2**20} MB; an input is "
                         "text for a prompt: give a shorter file")  # fmt: skip
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise UsageError(f"{where}: not UTF-8 text (byte {data[exc.start]:#04x} at offset "
                         f"{exc.start}); save it as UTF-8") from None  # fmt: skip


DEFAULT_JOURNAL = DEFAULT_PATH


def dollars(help: str, *names: str) -> Any:
    """An option in dollars: 0 up to the bound a spec's prices have (a million)."""
    return typer.Option(*names, min=0.0, callback=_at_most(MAX_USD, "a million dollars"),
                        help=help)  # fmt: skip


def seed_option(help: str) -> Any:
    """A seed: 0 up to the bound a spec's seed has (2**62)."""
    return typer.Option(min=0, callback=_at_most(MAX_SEED, "2**62"), help=help)


def seconds(help: str, *names: str) -> Any:
    """An option in seconds: 0 up to the bound a spec's durations have (1e7, ~116 days)."""
    return typer.Option(*names, min=0.0, callback=_at_most(MAX_SECONDS, "1e7 seconds"),
                        help=help)  # fmt: skip


def deadline_seconds(help: str, left_out: str = "the spec's budget.deadline_s, if any") -> Any:
    """A deadline in seconds: above 0 up to :data:`MAX_SECONDS`. A deadline of 0 would cut
    every run before its first call, and is no way to say "none": the refusal says what
    holds with the option left out (``left_out``)."""
    bounded = _at_most(MAX_SECONDS, "1e7 seconds")

    def check(value: float | None) -> float | None:
        if value == 0:
            raise typer.BadParameter(f"0 would cut every run before its first call; give "
                                     f"seconds above 0, or leave it out ({left_out})")  # fmt: skip
        return bounded(value)

    return typer.Option(min=0.0, callback=check, help=help)


def _at_most(bound: float, said: str) -> Callable[[float | None], float | None]:
    """A check of an option's upper bound. It is kept out of typer's ``max``, which help
    would show beside every such option ("[0<=x<=4611686018427387904]"); the lower bound,
    0, stays there and refuses NaN."""

    def check(value: float | None) -> float | None:
        if value is not None and value > bound:
            shown = f"{value:g}" if isinstance(value, float) else str(value)
            raise typer.BadParameter(f"{shown} is more than {said}; give a smaller one")
        return value

    return check


def stdout_console() -> Console:
    """Tables on stdout: as wide as the terminal, or as ``COLUMNS`` when it is set (as help
    is); piped with neither, 150 columns, wide enough to stay readable in a file."""
    given = sys.stdout.isatty() or os.environ.get("COLUMNS", "").strip().isdigit()
    return Console(highlight=False, markup=False,  # cells hold model answers: "[/INST]" is text
                   width=None if given else 150)


def emit_json(data: Any) -> None:
    sys.stdout.write(json.dumps(data, indent=2, allow_nan=False) + "\n")


def progress(show: bool) -> Progress:
    """A progress bar on stderr, shown only on a terminal."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeRemainingColumn

    return Progress(
        "[progress.description]{task.description}", BarColumn(), MofNCompleteColumn(),
        TimeRemainingColumn(), console=Console(stderr=True), disable=not show, transient=True,
    )  # fmt: skip


def positive(name: str, value: int) -> int:
    if value < 1:
        raise UsageError(f"{name}: {value} is not a positive integer; give 1 or more")
    return value


def write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        tmp.write_text(text, encoding="utf-8")
        os.replace(tmp, path)
    except OSError as exc:
        raise UsageError(f"--out {path}: cannot write: {exc.strerror}") from None


def writable(flag: str, path: Path | None) -> None:
    """Refuse, before any work is done, an output path whose folder is missing or read-only."""
    if path is None:
        return
    folder = path.parent
    if not folder.is_dir():
        raise UsageError(f"{flag} {path}: the folder {folder} does not exist; create it or "
                         "give another path")  # fmt: skip
    if not os.access(folder, os.W_OK):
        raise UsageError(f"{flag} {path}: the folder {folder} is not writable; give another path")


def journal_to_read(flag: str, path: Path) -> Path:
    """``path``, a journal a command only reads (``--from-journal``): refused in one line
    where there is no such file (a folder, a typo), rather than created empty."""
    if path.is_dir():
        raise UsageError(f"{flag} {path}: a folder, not a journal; give the journal file "
                         "(trilemma runs --journal PATH lists its runs)")  # fmt: skip
    if not path.is_file():
        raise UsageError(f"{flag} {path}: no such file; give the journal your runs wrote "
                         "(trilemma runs --journal PATH lists them)")  # fmt: skip
    return path


JOURNAL_ENV = "TRILEMMA_JOURNAL"
"""Where --journal points when not given (else ./.trilemma/trilemma.db)."""

JournalOpt = Annotated[
    Path, typer.Option("--journal", envvar=JOURNAL_ENV, help="The journal (SQLite) file.",
                       show_default=True)
]


def run_ref(help: str) -> Any:
    """A run's argument: its id, ``latest``, or enough of the id to name one run."""
    return typer.Argument(
        help=f"{help} Its id (see trilemma runs), `latest`, or a part that names one run: "
        "the id's start or its hex end.",
        show_default=False,
    )


def no_runs_yet(path: str | Path) -> str:
    """What a command that reads runs says of a journal that has none."""
    return f"no run is in {path} yet; `trilemma run SPEC` makes one"


def run_id_of(journal: Journal, ref: str) -> str:
    """The id of the one run ``ref`` names in ``journal`` (see :meth:`Journal.run_ids`);
    UsageError when it names none, or more than one."""
    found = journal.run_ids(ref)
    if len(found) == 1:
        return found[0]
    if not found and ref == "latest":
        raise UsageError(no_runs_yet(journal.path))
    if not found:
        raise UsageError(f"run {ref!r} is not in {journal.path}; `trilemma runs` lists the runs there")
    shown = ", ".join(found[:3]) + (", ..." if len(found) > 3 else "")
    raise UsageError(f"run {ref!r} names more than one run in {journal.path} ({shown}); "
                     "give more of the id")  # fmt: skip


def batch_id_of(journal: Journal, ref: str, flag: str) -> str:
    """The id of the one batch ``ref`` names in ``journal`` (see :meth:`Journal.batch_ids`);
    UsageError, starting with ``flag``, when it names none, or more than one."""
    found = journal.batch_ids(ref)
    if len(found) == 1:
        return found[0]
    where = f"in {journal.path}"
    if not found and ref == "latest":
        raise UsageError(f"{flag} latest: no batch is {where} yet; `trilemma batch SPEC "
                         "--inputs FILE` makes one")  # fmt: skip
    if not found:
        raise UsageError(f"{flag} {ref}: no batch of that id {where}; a batch prints its id "
                         "as it starts, and `trilemma runs --json` gives each run's batch_id")  # fmt: skip
    shown = ", ".join(found[:3]) + (", ..." if len(found) > 3 else "")
    raise UsageError(f"{flag} {ref}: names more than one batch {where} ({shown}); "
                     "give more of the id")  # fmt: skip


def iso(epoch: float | None) -> str | None:
    import datetime as dt

    if epoch is None:
        return None
    return (
        dt.datetime.fromtimestamp(epoch, dt.UTC)
        .isoformat(timespec="milliseconds")
        .replace("+00:00", "Z")
    )


# ---------------------------------------------------------------------------- entry


def _one_line(text: str) -> str:
    return " ".join(text.split())


def _usage(text: str) -> str:
    """click's usage error on one line, without pydantic's "Value error, " inside it or a
    full stop before the hint that follows it."""
    return _one_line(text).replace("Value error, ", "").removesuffix(".")


_BOUNDS = frozenset({"greater_than_equal", "less_than_equal", "greater_than", "less_than"})


def _not_a_number(exc: Exception) -> str | None:
    """The message for a value that is not the number an option takes: pydantic's words
    ("Input should be a valid integer, unable to parse string as an integer") do not name
    the value, and its check of a lower bound refuses NaN as "should be greater than or
    equal to 0", which misleads."""
    from pydantic import ValidationError  # typer's coercion raised it: pydantic is loaded

    cause = exc.__cause__
    if not isinstance(cause, ValidationError) or not isinstance(exc, typer.BadParameter):
        return None
    for err in cause.errors():
        given = err.get("input")
        if not isinstance(given, str):
            continue
        if err["type"] == "float_parsing":
            exc.message = f"{given!r} is not a number; give a number such as 0.5"
            return exc.format_message()
        if err["type"] == "int_parsing":
            exc.message = _whole(given)
            return exc.format_message()
        if err["type"] not in _BOUNDS:
            continue  # NaN gets this far only as a string that parsed, then compared
        try:
            nan = math.isnan(float(given))
        except ValueError:  # pydantic reads some strings float() does not
            continue
        if nan:
            exc.message = f"{given!r} is not a number; give a number such as 0.5"
            return exc.format_message()
    return None


def _whole(given: str) -> str:
    """What is wrong with ``given`` where a whole number goes: ``1e3`` is 1000 written so."""
    try:
        value = float(given)
    except ValueError:
        value = math.nan
    if math.isfinite(value) and value == int(value):
        return f"{given!r}: write the whole number in digits, as {int(value)}"
    return f"{given!r} is not a whole number; give one such as 10"


def _value_without_its_option(exc: Exception, args: list[str]) -> str | None:
    """The message for a missing option whose value was given on its own, as an argument
    the command has no room for (``trilemma batch spec.yaml rows.jsonl``): click says the
    option is missing and never gets to the stray argument."""
    param, ctx = getattr(exc, "param", None), getattr(exc, "ctx", None)
    if not isinstance(exc, typer.BadParameter) or param is None or ctx is None:
        return None
    if getattr(param, "param_type_name", None) != "option" or ctx.info_name not in args:
        return None
    try:  # what the command's own parser leaves over once its arguments are filled
        _, extra, _ = ctx.command.make_parser(ctx).parse_args(
            args[args.index(ctx.info_name) + 1 :]
        )
    except typer.TyperException:
        return None
    if len(extra) != 1:
        return None
    flag = max(param.opts, key=len)
    return f"Missing option '{flag}'; was {extra[0]} meant as {flag} {shlex.quote(extra[0])}?"


_SAME_BUDGET = {"--deadline": "--max-latency", "--max-latency": "--deadline"}
"""The latency budget's name in the commands that plan (``optimize``: ``--max-latency``,
bound on worst or expected latency) and in those that run or simulate runs (``--deadline``)."""


def _named_otherwise(exc: Exception) -> str | None:
    """The message for an option the command takes under the other name of the same budget
    (``optimize --deadline``), which click's spelling hint does not find."""
    name, ctx = getattr(exc, "option_name", None), getattr(exc, "ctx", None)
    other = _SAME_BUDGET.get(name or "")
    if other is None or ctx is None or not any(other in p.opts for p in ctx.command.params):
        return None
    return f"No such option: {name}; `{ctx.command_path}` takes the latency budget as {other}"


def main(argv: list[str] | None = None) -> int:
    """Run the command line; return its exit code instead of exiting."""
    global _said_interrupted
    _said_interrupted = False
    command = typer.main.get_command(app)
    _flags_without_type(command)
    try:
        rv = command.main(args=argv, prog_name="trilemma", standalone_mode=False)
    except TrilemmaError as exc:
        sys.stderr.write(f"trilemma: error: {_one_line(str(exc))}\n")
        return exc.exit_code
    except typer.TyperException as exc:  # click's usage errors, vendored by typer
        where = getattr(getattr(exc, "ctx", None), "command_path", None) or "trilemma"
        hint = f"; see `{where} --help`" if exc.exit_code == 2 else ""  # the command's own
        said = (
            _not_a_number(exc)
            or _named_otherwise(exc)
            or _value_without_its_option(exc, sys.argv[1:] if argv is None else argv)
            or exc.format_message()
        )
        sys.stderr.write(f"trilemma: error: {_usage(said)}{hint}\n")
        return 2 if exc.exit_code == 2 else exc.exit_code
    except typer.Abort:
        if _terminated:
            sys.stderr.write("trilemma: terminated\n")
            return TERMINATED
        sys.stderr.write("trilemma: aborted\n")
        return 130
    except UnicodeEncodeError as exc:
        bad = _not_utf8(exc, sys.argv[1:] if argv is None else argv)
        if bad is None:
            raise
        sys.stderr.write(f"trilemma: error: {bad!r}: holds bytes that are not UTF-8 text; "
                         "give names and ids as UTF-8\n")  # fmt: skip
        return 2
    except (MemoryError, RecursionError) as exc:
        if os.environ.get("TRILEMMA_DEBUG"):
            raise
        sys.stderr.write(f"trilemma: error: input too large or deep ({type(exc).__name__})\n")
        return 2
    if rv == INTERRUPTED and not _said_interrupted:  # typer's silent exit on Ctrl-C
        sys.stderr.write(f"trilemma: {_stopped()}\n")
        return TERMINATED if _terminated else rv
    return rv if isinstance(rv, int) else 0


def _flags_without_type(command: Any) -> None:
    """Help lists a flag without a type: typer 0.29 shows ``--json <bool>``, ``--help <bool>``,
    as if each took a value. An empty metavar is what its help prints in the type's place."""
    commands = [command]
    while commands:
        cmd = commands.pop()
        commands.extend(getattr(cmd, "commands", {}).values())
        shown = cmd.get_help_option(typer.Context(cmd, info_name=cmd.name))
        for param in [*cmd.params, *([shown] if shown is not None else [])]:
            if getattr(param, "is_bool_flag", False):
                param.metavar = ""


INTERRUPTED = 130
"""The exit code after Ctrl-C (128 + SIGINT, as shells report it)."""
_said_interrupted = False


def interrupted(said: str = "") -> NoReturn:
    """Stop a command that Ctrl-C interrupted: ``trilemma: interrupted`` and ``said`` (what
    stopped and how to go on) on stderr, exit 130."""
    global _said_interrupted
    _said_interrupted = True
    sys.stderr.write(f"trilemma: {_stopped()}{said}\n")
    raise typer.Exit(TERMINATED if _terminated else INTERRUPTED)


def _stopped() -> str:
    """How the command was stopped: Ctrl-C, or SIGTERM (:func:`run`)."""
    return "terminated" if _terminated else "interrupted"


@contextlib.contextmanager
def runs_kept_on_interrupt(journal: Path) -> Iterator[None]:
    """Ctrl-C in an experiment (compare, sweep, cliff): say where the runs that ended are,
    then exit 130 (a run cut short is left interrupted, as any run)."""
    try:
        yield
    except KeyboardInterrupt:
        from trilemma.journal import Journal
        from trilemma.report.tables import journal_flag

        # (no journal yet, or one that cannot be written: nothing to mark)
        with contextlib.suppress(Exception), Journal(journal, create=False) as j:
            mine = [r for r in j.runs(status="running") if r["pid"] == os.getpid()]
            close_unresumable(j, mine, "a trial of an experiment")  # the trial cut short
        flag = journal_flag(journal)
        interrupted(f"; the runs that ended are kept in {journal}: `trilemma runs{flag}` "
                    "lists them")  # fmt: skip


def close_unresumable(j: Journal, rows: list[dict[str, Any]], what: str) -> None:
    """End ``rows``, runs of this process that Ctrl-C (or SIGTERM) cut short and that a
    resume does not take up (``what`` they are: a trial of an experiment, a run in simulated
    time), as ``failed`` with how they were stopped: left ``running``, doctor would list
    them as waiting for a resume that refuses them."""
    how = "terminated (SIGTERM)" if _terminated else "interrupted (Ctrl-C)"
    for row in rows:
        j.update_run(row["run_id"], status="failed", pid=None, finished_at=time.time(),
                     error=f"{how}: {what}, which is not resumed")  # fmt: skip


def _not_utf8(exc: UnicodeEncodeError, argv: list[str]) -> str | None:
    """The argument an encoding error came from: bytes of the command line that were not
    UTF-8 (Python keeps them as lone surrogates) reached SQLite or JSON. None otherwise."""
    text = exc.object if isinstance(exc.object, str) else ""
    lone = [a for a in argv if any("\ud800" <= c <= "\udfff" for c in a)]
    return next((a for a in lone if text and (text in a or a in text)), None)


def run() -> None:
    """Console-script entry point. SIGTERM (a container stopping, ``timeout``, systemd)
    stops a command as Ctrl-C does: what finished is journaled (the answers a real endpoint
    gave included, which a kill may leave to be paid for again), and it says how to go on."""
    signal.signal(signal.SIGTERM, _terminate)
    sys.exit(main())


TERMINATED = 143
"""The exit code after SIGTERM (128 + 15)."""
_terminated = False


def _terminate(signum: int, frame: object) -> None:
    """SIGTERM, taken as SIGINT, whose handler (asyncio's, in a run) unwinds gracefully; where
    SIGINT is ignored (a background job of a shell), the default: the process ends now."""
    global _terminated
    if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        os.kill(os.getpid(), signal.SIGTERM)
        return
    _terminated = True
    signal.raise_signal(signal.SIGINT)
