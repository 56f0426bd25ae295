"""The journal: a SQLite file in WAL mode that many processes may share.

:class:`Journal` is synchronous and owns one connection, which threads may share
(they take turns). The executor writes through :class:`JournalWriter`, which commits
on the loop's thread when that need not wait (no other process holds the journal) and
otherwise on a dedicated thread, so the event loop never waits for another process.
Writes are short ``BEGIN IMMEDIATE`` transactions; a busy timeout lets concurrent
processes take turns.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import math
import sqlite3
import threading
import time
from collections.abc import Callable, Coroutine, Iterable, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from json.encoder import encode_basestring
from pathlib import Path
from typing import Any

from trilemma._proc import pid_alive
from trilemma._tasks import drain_tasks
from trilemma.errors import JournalBusy, JournalError, JournalPathError, NotAJournal
from trilemma.journal.migrations import MIGRATIONS, SCHEMA_VERSION

__all__ = ["DEFAULT_PATH", "GATEWAY_RUN", "OUTCOMES", "REJECTED", "Journal", "JournalWriter",
           "Pruned", "abandoned", "call_outcome", "overrides_of", "rejection", "sent_by_step"]

DEFAULT_PATH = Path(".trilemma") / "trilemma.db"
BUSY_TIMEOUT_S = 30.0
Op = tuple[str, tuple[Any, ...], dict[str, Any]]
#: A run's calls: a range scan of the idempotency-key index (keys are run:step:attempt:call).
RUN_CALLS = "idempotency_key >= ? AND idempotency_key < ? AND run_id = ?"
_SQLITE_MAX_INT = 2**63 - 1


#: How a gateway key's run id starts (``gateway-KEY``): its calls are the key's spend.
GATEWAY_RUN = "gateway-"
#: SQL true of a ``runs`` row (aliased ``{0}``) that is a gateway key's.
_IS_GATEWAY = f"substr({{0}}.run_id, 1, {len(GATEWAY_RUN)}) = '{GATEWAY_RUN}'"
#: SQL counting the ``calls`` rows that went out: not a call cancelled before it was sent
#: (``unsent``), nor a cache hit.
_SENT = "count(*) FILTER (WHERE outcome IS NOT 'unsent' AND NOT cache_hit)"


def abandoned(run: Mapping[str, Any]) -> bool:
    """A run row that says ``running`` though no process of this machine runs it (a crash,
    a kill, Ctrl-C): ``trilemma resume`` finishes it. A damaged pid names no process."""
    pid = run["pid"]
    return run["status"] == "running" and not (isinstance(pid, int) and pid_alive(pid))


#: What :func:`call_outcome` may say of a call: the journal's outcomes (the error classes
#: among them), then what the ledger calls a call whose outcome is not yet known.
OUTCOMES = ("ok", "rejected", "transient", "rate_limited", "timeout", "malformed", "fatal",
            "cancelled", "unsent", "hedged", "answered", "in_flight")  # fmt: skip


def call_outcome(call: Mapping[str, Any]) -> str:
    """What became of a journaled call: its ``outcome``; ``in_flight`` while it is marked
    sent and unanswered (a crash); ``answered`` when a real endpoint answered it but its
    attempt has no verdict (a crash cut the attempt short, or the run stopped before it
    could finish: a resume uses the answer rather than asking again)."""
    if call["state"] == "started":
        return "in_flight"
    return call["outcome"] or "answered"


#: How a call of an attempt the gate rejected starts its ``error``: then the gate's reason.
REJECTED = "rejected: "


def rejection(call: Mapping[str, Any]) -> str | None:
    """Why the gate rejected a journaled call's attempt (after any bill note), or None."""
    said = call["error"] or ""
    if call["outcome"] != "rejected" or REJECTED not in said:
        return None
    return said.split(REJECTED, 1)[1]


def sent_by_step(calls: Iterable[Mapping[str, Any]]) -> dict[str, tuple[int, float]]:
    """Per step of a run's ``calls`` rows: the last attempt that sent a call, and what its
    calls were billed. Cache hits and calls never sent are left out, as :meth:`Journal.totals`
    leaves them out of a run's calls."""
    attempts: dict[str, int] = {}
    bills: dict[str, list[float]] = {}
    for c in calls:
        if c["role"] == "cache" or c["outcome"] == "unsent":
            continue
        sid = c["step_id"]
        attempts[sid] = max(attempts.get(sid, 0), c["attempt"])
        bills.setdefault(sid, []).append(c["cost_usd"] or 0.0)
    return {sid: (n, math.fsum(bills[sid])) for sid, n in attempts.items()}


def _run_range(run_id: str) -> tuple[str, str, str]:
    return run_id + ":", run_id + ";", run_id  # ';' is the character after ':'


def overrides_of(run: Mapping[str, Any]) -> list[str]:
    """The ``--set PATH=VALUE`` a run's row says it was started with (none before they were
    kept, or where another tool left the column holding something else)."""
    given = _parsed(run.get("overrides_json") or "[]")
    return [o for o in given if isinstance(o, str)] if isinstance(given, list) else []


@contextlib.contextmanager
def map_sqlite_errors(path: Path, *, opening: bool = False) -> Iterator[None]:
    """sqlite3 errors as JournalError, with what to do about them.

    ``opening``: the journal is being opened, so a file that cannot be opened or written is the
    path's fault (:class:`JournalPathError`, exit code 2), not a run's.
    """
    error = JournalPathError if opening else JournalError
    try:
        yield
    except sqlite3.OperationalError as exc:
        msg = str(exc)
        if "readonly" in msg or "read-only" in msg:
            hint = "the journal is read-only; give a writable --journal path"
        elif "disk is full" in msg or "disk I/O" in msg:
            hint = "the disk is full or failing; free space or give another --journal path"
        elif "locked" in msg or "busy" in msg:
            raise JournalBusy(f"{path}: another process holds the journal; try again") from exc
        elif "unable to open" in msg:
            hint = "cannot open the file; check the folder exists and is writable"
        else:
            hint = "check the file and try again"
        raise error(f"{path}: journal error: {msg}; {hint}") from exc
    except UnicodeDecodeError as exc:  # SQLite's own message quoted bytes of a damaged schema
        raise NotAJournal(
            f"{path}: not a readable trilemma journal (damaged: {exc.reason} in what SQLite "
            "read back); restore it from a backup, or give another --journal"
        ) from exc
    except sqlite3.DatabaseError as exc:
        if "not a database" in str(exc):
            raise NotAJournal(f"{path}: not a trilemma journal (not a SQLite file)") from exc
        raise NotAJournal(f"{path}: not a readable trilemma journal ({exc})") from exc


class _Undone(Exception):
    """Rolls a dry run's transaction back."""


@dataclass(frozen=True, slots=True)
class Pruned:
    """What :meth:`Journal.prune` forgot (or, on a dry run, would have)."""

    run_ids: list[str]
    calls: int
    steps: int
    kept_in_batches: int
    """Runs old enough that were kept because their batch has runs that are not."""
    dry_run: bool
    gateway_calls: int = 0
    """Calls of gateway keys' runs forgotten (their bill still counts in the runs' totals)."""
    kept_running: int = 0
    """Runs old enough that were kept because they have not ended (live, or interrupted and
    waiting for ``trilemma resume``); counted only without a ``status``."""


class Journal:
    """One connection to a journal file; creates and migrates it as needed.

    Threads may share it: each use of the connection (a read, a transaction) is one
    thread's until it ends. Use it as a context manager, or :meth:`close` it, when done:
    Python 3.13's sqlite3 warns of a connection left open to the garbage collector.
    """

    def __init__(
        self,
        path: str | Path = DEFAULT_PATH,
        *,
        create: bool = True,
        busy_timeout_s: float = BUSY_TIMEOUT_S,
    ) -> None:
        self.path = Path(path)
        self._lock = threading.RLock()
        """Held while a thread uses the connection (:meth:`_using`)."""
        if self.path.is_dir():
            raise NotAJournal(f"{self.path}: is a directory; give a journal file path")
        # Never open the file ourselves (to check its header, say): closing any descriptor of
        # it drops the POSIX locks SQLite holds for this process's other connections, and other
        # processes would then recover the WAL over live data. SQLite reports a non-database.
        exists = self.path.exists() and self.path.stat().st_size > 0
        if not exists and not create:
            raise NotAJournal(
                f"{self.path}: no journal here; run a workflow first or give --journal"
            )
        if not exists:
            try:
                self.path.parent.mkdir(parents=True, exist_ok=True)
            except OSError as exc:
                raise JournalPathError(
                    f"{self.path}: cannot create its folder: {exc.strerror}; give a --journal "
                    "path in a writable folder"
                ) from None
        with map_sqlite_errors(self.path, opening=True):
            self.db = sqlite3.connect(
                self.path, timeout=BUSY_TIMEOUT_S, isolation_level=None, check_same_thread=False
            )
            try:
                self.db.row_factory = sqlite3.Row
                self.db.execute("PRAGMA journal_mode=WAL")
                self.db.execute("PRAGMA synchronous=NORMAL")
                self.db.execute("PRAGMA foreign_keys=ON")
                self._migrate()
                # Opening waits its turn like any writer; only then may a connection refuse
                # to wait.
                self.db.execute(f"PRAGMA busy_timeout = {int(busy_timeout_s * 1000)}")
            except BaseException:  # a file refused: nobody else will close its connection
                self.db.close()
                raise

    # ------------------------------------------------------------------ schema

    def _migrate(self) -> None:
        tables = {
            r[0] for r in self.db.execute("SELECT name FROM sqlite_master WHERE type='table'")
        }
        if tables and "trilemma_migrations" not in tables:
            raise NotAJournal(
                f"{self.path}: a SQLite file, but not a trilemma journal; give another --journal"
            )
        with self.transaction():
            self.db.execute(
                "CREATE TABLE IF NOT EXISTS trilemma_migrations "
                "(id INTEGER PRIMARY KEY, name TEXT UNIQUE NOT NULL, applied_at REAL NOT NULL)"
            )
            applied = [
                r[0] for r in self.db.execute("SELECT name FROM trilemma_migrations ORDER BY id")
            ]
            known = [name for name, _ in MIGRATIONS]
            unknown = [n for n in applied if n not in known]
            if unknown:
                raise NotAJournal(
                    f"{self.path}: written by a newer trilemma (schema {len(applied)}, this one "
                    f"knows {SCHEMA_VERSION}: {unknown[0]} is new); upgrade trilemma"
                )
            for name, fn in MIGRATIONS:
                if name not in applied:
                    fn(self.db)
                    self.db.execute(
                        "INSERT INTO trilemma_migrations (name, applied_at) VALUES (?, ?)",
                        (name, time.time()),
                    )
        drift = self.schema_problems()
        if drift:
            raise NotAJournal(f"{self.path}: a damaged trilemma journal ({drift[0]}); restore it "
                              "from a backup, or give another --journal")  # fmt: skip

    def schema_problems(self) -> list[str]:
        """How the tables differ from what the migrations make (a damaged file: [] when none)."""
        with self._using():
            found = {
                t: tuple(r[1] for r in self.db.execute(f"PRAGMA table_info({t})"))
                for t in _expected_columns()
            }
        return [
            f"table {t} lacks {', '.join(c for c in want if c not in found[t])}"
            if found[t] else f"table {t} missing"
            for t, want in _expected_columns().items()
            if not set(want) <= set(found[t])
        ]

    @property
    def schema_version(self) -> int:
        """Migrations applied."""
        with self._using():
            return int(self.db.execute("SELECT count(*) FROM trilemma_migrations").fetchone()[0])

    @contextlib.contextmanager
    def _using(self) -> Iterator[sqlite3.Connection]:
        """The connection, this thread's alone until the block ends, its errors as JournalError.

        Taking turns matters beyond transactions: a thread's read left between two steps
        holds a snapshot that another thread's BEGIN IMMEDIATE on this connection waits on
        (for the busy timeout) while it keeps the first thread from finishing its read.
        """
        with self._lock, map_sqlite_errors(self.path):
            yield self.db

    @contextlib.contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        """A short write transaction (BEGIN IMMEDIATE: writers queue, never deadlock).

        Another thread's use of this connection finishes first (without the turn, a BEGIN
        inside the other's transaction would fail, and its ROLLBACK undo the other's writes).
        """
        with self._using():
            self.db.execute("BEGIN IMMEDIATE")  # if this fails, there is nothing to roll back
            try:
                yield self.db
                self.db.execute("COMMIT")
            except BaseException:
                if self.db.in_transaction:
                    self.db.execute("ROLLBACK")
                raise

    def close(self) -> None:
        """Close the connection (once a thread using it is done); a second close does nothing."""
        with self._lock:
            self.db.close()

    def __enter__(self) -> Journal:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    # ------------------------------------------------------------------ writes

    def batch(self, ops: list[Op]) -> None:
        """Run write operations (by name) in one transaction.

        The operations are gathered per table first (a call's start and finish in one
        batch become one row), then written with one statement per kind of row.
        """
        if not ops:  # on the writer's thread: still waits its turn behind earlier commits
            return
        pending = _Batch()
        for name, args, kwargs in ops:
            getattr(pending, name)(*args, **kwargs)
        with self.transaction() as db:
            pending.apply(db)

    def create_run(self, row: dict[str, Any]) -> None:
        """Record a new run (status running)."""
        self.batch([("create_run", (row,), {})])

    def update_run(self, run_id: str, **fields: Any) -> None:
        """Change a run's fields (status, cost, ...)."""
        self.batch([("update_run", (run_id,), fields)])

    def call_started(self, row: dict[str, Any]) -> None:
        """Write-ahead: the call is about to be sent."""
        self.batch([("call_started", (row,), {})])

    def add_prediction(self, run_id: str, key: str, value: Any) -> None:
        """Add ``key`` to a run's predicted figures (``predicted_json``), a prediction worked
        out after it started: ``under_budget``, the Monte Carlo under the run's budgets, and
        ``under_budget_resumed``, its last resume's of the steps it had left (null: none)."""
        with self.transaction() as db:
            db.execute("UPDATE runs SET predicted_json = json_set(coalesce(predicted_json, '{}'), "
                       "'$.' || ?, json(?)) WHERE run_id = ?", (key, dumps(value), run_id))  # fmt: skip

    def call_finished(self, key: str, fields: dict[str, Any]) -> None:
        """The call (by idempotency key) came back with an error, or was cancelled."""
        self.batch([("call_finished", (key, fields), {})])

    def attempt_finished(
        self, run_id: str, step_id: str, finishes: list[tuple[str, dict[str, Any]]], *,
        rejected: bool, step: dict[str, Any] | None = None,
    ) -> None:  # fmt: skip
        """The attempt's answered calls (ok or rejected) and, if accepted, the step's output, together."""
        kwargs = {"rejected": rejected, "step": step}
        self.batch([("attempt_finished", (run_id, step_id, finishes), kwargs)])

    def step_finished(self, run_id: str, step_id: str, step: dict[str, Any]) -> None:
        """A step failed or was skipped (a done step commits through :meth:`attempt_finished`)."""
        self.batch([("step_finished", (run_id, step_id, step), {})])

    def cache_put(self, row: dict[str, Any]) -> None:
        """Remember an accepted answer (the first one stays, unless its row was damaged)."""
        self.batch([("cache_put", (row,), {})])

    # ------------------------------------------------------------------ reads

    def _rows(
        self, sql: str, args: tuple[Any, ...] | dict[str, Any] = ()
    ) -> list[dict[str, Any]]:
        with self._using():
            return [dict(r) for r in self.db.execute(sql, args)]

    def _runs(
        self, where: str, args: tuple[Any, ...] = (), check: bool = True
    ) -> list[dict[str, Any]]:
        """Run rows with their spec's text (kept once per hash in ``specs``) as ``spec_json``;
        ``check``: each checked (:meth:`_sound`)."""
        rows = self._rows(
            "SELECT runs.*, specs.spec_json AS spec_text FROM runs "
            f"LEFT JOIN specs ON specs.spec_hash = runs.spec_hash {where}",
            args,
        )
        for row in rows:
            row["spec_json"] = row.pop("spec_text") or row["spec_json"]
            if row["status"] == "running":  # a run's figures are written when it ends (a
                # gateway's key ends when the gateway stops): until then, count its calls
                row["cost_usd"], row["calls"] = self.totals(row["run_id"])
        return self._sound("runs", rows) if check else rows

    def runs(
        self, *, status: str | None = None, batch_id: str | None = None, limit: int | None = None
    ) -> list[dict[str, Any]]:
        """Every run, newest first; or only those of ``status``, of ``batch_id``, the
        ``limit`` newest."""
        clause, args = _run_filter(status, batch_id)
        clause += " ORDER BY runs.started_at DESC, runs.run_id DESC"
        if limit is not None:
            clause += " LIMIT ?"
            args.append(min(limit, _SQLITE_MAX_INT))  # more than SQLite counts is all of them
        return self._runs(clause, tuple(args))

    def count_runs(self, *, status: str | None = None, batch_id: str | None = None) -> int:
        """How many runs :meth:`runs` would list with the same filters."""
        clause, args = _run_filter(status, batch_id)
        return int(self._rows(f"SELECT count(*) AS n FROM runs {clause}", tuple(args))[0]["n"])

    def run(self, run_id: str) -> dict[str, Any] | None:
        """One run, or None."""
        rows = self._runs("WHERE runs.run_id = ?", (run_id,))
        return rows[0] if rows else None

    def run_ids(self, ref: str, limit: int = 4) -> list[str]:
        """The ids of the runs ``ref`` may name, newest first (at most ``limit``): ``latest``
        names the newest run; any other ref the run of that id, else those whose id begins
        or ends with it (its date, or the random hex after the dash, is enough)."""
        if ref == "latest":
            return [r["run_id"] for r in self.runs(limit=1)]
        exact = self._rows("SELECT run_id FROM runs WHERE run_id = ?", (ref,))
        if exact or not ref:
            return [r["run_id"] for r in exact]
        rows = self._rows(
            "SELECT run_id FROM runs WHERE substr(run_id, 1, length(:ref)) = :ref OR "
            "substr(run_id, -length(:ref)) = :ref ORDER BY started_at DESC, run_id DESC LIMIT :n",
            {"ref": ref, "n": limit},
        )
        return [r["run_id"] for r in rows]

    def batch_ids(self, ref: str, limit: int = 4) -> list[str]:
        """The ids of the batches ``ref`` may name, newest first (at most ``limit``), as
        :meth:`run_ids` names runs: ``latest`` the newest batch; else the batch of that id,
        or those whose id begins or ends with it (``batch-`` may be left out)."""
        args: dict[str, str] = {}
        if ref == "latest":
            where, limit = "batch_id IS NOT NULL", 1
        else:
            exact = self._rows("SELECT DISTINCT batch_id FROM runs WHERE batch_id = ?", (ref,))
            if exact or not ref:
                return [r["batch_id"] for r in exact]
            where = ("batch_id IS NOT NULL AND (substr(batch_id, 1, length(:ref)) = :ref OR "
                     "substr(batch_id, 1, length(:ref) + 6) = 'batch-' || :ref OR "
                     "substr(batch_id, -length(:ref)) = :ref)")  # fmt: skip
            args = {"ref": ref}
        rows = self._rows(
            f"SELECT batch_id FROM runs WHERE {where} GROUP BY batch_id "
            f"ORDER BY max(started_at) DESC, batch_id DESC LIMIT {int(limit)}",
            args,
        )
        return [r["batch_id"] for r in rows]

    def batch_runs(self, batch_id: str) -> dict[int, dict[str, Any]]:
        """A batch's runs by their line in its inputs."""
        rows = self._runs("WHERE runs.batch_id = ? ORDER BY runs.started_at", (batch_id,))
        return {r["batch_line"]: r for r in rows}

    def batch_planned(
        self, batch_id: str, started_at: float, parallel: int, lines: int, plan: Mapping[str, Any]
    ) -> None:  # fmt: skip
        """Record a session of a batch as it starts (at ``started_at``, epoch seconds): its
        runs at a time, the ``lines`` it runs, and the planner's figures for them."""
        with self.transaction() as db:
            db.execute("INSERT INTO batch_plans (batch_id, started_at, parallel, lines, plan_json) "
                       "VALUES (?, ?, ?, ?, ?)",
                       (batch_id, started_at, parallel, lines, dumps(plan)))  # fmt: skip

    def batch_session_ended(
        self, batch_id: str, started_at: float, ended: Mapping[str, Any]
    ) -> None:  # fmt: skip
        """Record what the session of ``batch_id`` begun at ``started_at`` measured as it
        ended (:meth:`batch_planned` recorded its plan): a line resumed in a later session
        keeps only that session's end in its run, so an earlier session's is kept here."""
        with self.transaction() as db:
            db.execute("UPDATE batch_plans SET ended_json = ? WHERE batch_id = ? AND started_at = ?",
                       (dumps(ended), batch_id, started_at))  # fmt: skip

    def batch_plans(self, batch_id: str) -> list[dict[str, Any]]:
        """A batch's sessions in the order they started (:meth:`batch_planned`), each plan
        parsed (``plan``) and what it measured as it ended (``ended``, None for a session
        that did not end: interrupted, or still going); none for a batch run before trilemma
        kept them."""
        rows = self._sound("batch_plans", self._rows(
            "SELECT * FROM batch_plans WHERE batch_id = ? ORDER BY started_at", (batch_id,)))  # fmt: skip
        return [{**r, "plan": _parsed(r["plan_json"]),
                 "ended": None if r["ended_json"] is None else _parsed(r["ended_json"])}
                for r in rows]  # fmt: skip

    def steps(self, run_id: str) -> dict[str, dict[str, Any]]:
        """A run's finished steps by id."""
        self._refuse_damaged("steps", "run_id = ?", (run_id,))
        rows = self._rows("SELECT * FROM steps WHERE run_id = ?", (run_id,))
        return {r["step_id"]: r for r in rows}

    def calls(self, run_id: str) -> list[dict[str, Any]]:
        """A run's calls in the order they were sent (a range of the idempotency-key index)."""
        self._refuse_damaged("calls", RUN_CALLS, _run_range(run_id))
        return self._rows(f"SELECT * FROM calls WHERE {RUN_CALLS} ORDER BY id", _run_range(run_id))

    def called_steps(self, run_id: str) -> set[str]:
        """The ids of a run's steps that journaled a call (what :meth:`calls` would name,
        without reading the calls)."""
        with self._using():
            rows = self.db.execute(
                f"SELECT DISTINCT step_id FROM calls WHERE {RUN_CALLS}", _run_range(run_id)
            ).fetchall()
        return {str(r[0]) for r in rows}

    def _refuse_damaged(self, table: str, where: str, args: tuple[Any, ...]) -> None:
        """NotAJournal naming the first row of ``table`` matching ``where`` whose values are
        not of their columns' kinds (SQLite keeps whatever another tool wrote); SQLite
        looks for it, so a sound run's rows cost one more indexed scan."""
        found = self._rows(
            f"SELECT * FROM {table} WHERE ({where}) AND ({_damaged_sql(table)}) LIMIT 1", args
        )
        self._sound(table, found)

    def _sound(self, table: str, rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """``rows`` of ``table``, once each value is checked to be of its column's kind:
        NotAJournal names the first that is not."""
        for row in rows:
            problem = _unsound(table, row)
            if problem:
                raise NotAJournal(f"{self.path}: a damaged row in the journal ({problem}); "
                                  "`trilemma doctor` lists such rows; restore the journal from a "
                                  "backup, or give another --journal")  # fmt: skip
        return rows

    def damaged_rows(self, limit: int = 20) -> list[str]:
        """What is wrong with the rows whose values are not of their columns' kinds (at most
        ``limit``), for ``trilemma doctor``."""
        found = [p for p in map(functools.partial(_unsound, "runs"), self._runs("", check=False)) if p]
        plans = self._rows("SELECT * FROM batch_plans")  # a row a batch session: few
        found += [p for p in map(functools.partial(_unsound, "batch_plans"), plans) if p]
        for table in ("steps", "calls", "cache"):  # SQLite finds them, and fast
            rows = self._rows(f"SELECT * FROM {table} WHERE {_damaged_sql(table)} LIMIT ?",
                              (limit,))  # fmt: skip
            found += [p for p in map(functools.partial(_unsound, table), rows) if p]
        return found[:limit]

    def model_calls(self, model: str) -> list[dict[str, Any]]:
        """Every finished call journaled under the profile name ``model``, from any run;
        ``latency_s`` in the spec's own time (a run in scaled time journaled it shortened; one
        on a virtual clock, time scale 0, in the spec's own)."""
        return self._rows(
            "SELECT c.run_id, c.step_id, c.attempt, c.call, c.role, c.outcome, c.prompt_tokens, "
            "c.completion_tokens, c.cost_usd, c.latency_s / COALESCE(NULLIF(r.time_scale, 0), 1) "
            "AS latency_s, "
            "c.cache_hit, c.finish_reason FROM calls c JOIN runs r ON r.run_id = c.run_id "
            "WHERE c.model = ? AND c.state = 'finished' ORDER BY c.id",
            (model,),
        )

    def spec_runs(self, *, gateways: bool = False) -> list[tuple[str, list[str]]]:
        """Each journaled spec's text with the ids of the runs made of it (a gateway key's
        runs, which keep the gateway's config, left out unless ``gateways``)."""
        where = "" if gateways else f"WHERE NOT {_IS_GATEWAY.format('runs')} "
        rows = self._rows(
            "SELECT COALESCE(specs.spec_json, runs.spec_json) AS text, "
            "group_concat(runs.run_id, ' ') AS ids FROM runs "
            f"LEFT JOIN specs ON specs.spec_hash = runs.spec_hash {where}GROUP BY runs.spec_hash"
        )
        return [(r["text"], r["ids"].split(" ")) for r in rows]

    def step_attempt_calls(self, step_id: str) -> list[dict[str, Any]]:
        """Every finished call journaled under the step id ``step_id``, from any run: its run,
        attempt, role, outcome and whether the cache served it, in the order sent."""
        return self._rows(
            "SELECT run_id, attempt, role, outcome, cache_hit FROM calls "
            "WHERE step_id = ? AND state = 'finished' ORDER BY id",
            (step_id,),
        )

    def models_called(self) -> list[str]:
        """The profile names the journal holds calls of."""
        return [r["model"] for r in self._rows("SELECT DISTINCT model FROM calls ORDER BY model")]

    def cache_get(self, key: str) -> dict[str, Any] | None:
        """A cached response, or None (also for an entry another tool damaged: a miss, which
        ``trilemma doctor`` lists; the run goes on, asks the model, and its answer replaces
        the entry)."""
        rows = self._rows("SELECT * FROM cache WHERE key = ?", (key,))
        return rows[0] if rows and not _unsound("cache", rows[0]) else None

    def semantic_since(self, scope: str, embedder: str, after: int) -> list[tuple[int, str, bytes]]:
        """``(rowid, key, vector)`` of a scope and embedder's semantic-cache entries whose
        rowid is above ``after``, in rowid order (the scope's index holds the rowid)."""
        with self._using():
            return self.db.execute(
                "SELECT rowid, key, vector FROM semantic_cache "
                "WHERE scope = ? AND embedder = ? AND rowid > ? ORDER BY rowid",
                (scope, embedder, after),
            ).fetchall()

    def semantic_head(self, scope: str, embedder: str) -> tuple[int, str | None]:
        """The rowid and key of a scope and embedder's newest semantic-cache entry (0, None
        when it has none)."""
        with self._using():
            row = self.db.execute(
                "SELECT rowid, key FROM semantic_cache WHERE scope = ? AND embedder = ? "
                "ORDER BY rowid DESC LIMIT 1",
                (scope, embedder),
            ).fetchone()
        return (0, None) if row is None else (row[0], row[1])

    def semantic_answer(self, rowid: int, key: str) -> str | None:
        """The answer of the semantic-cache entry at ``rowid``, if it is still ``key``'s."""
        with self._using():
            row = self.db.execute(
                "SELECT response FROM semantic_cache WHERE rowid = ? AND key = ?", (rowid, key)
            ).fetchone()
        return row[0] if row is not None and isinstance(row[0], str) else None  # damaged: a miss

    def cache_stats(self) -> list[dict[str, Any]]:
        """Per model: exact and semantic entries, their ages, and the hits served from them."""
        entries = {r["model"]: r for r in self._rows(
            "SELECT c.model, count(*) AS entries, count(s.key) AS semantic_entries, "
            "min(c.created_at) AS oldest, max(c.created_at) AS newest "
            "FROM cache c LEFT JOIN semantic_cache s ON s.key = c.key GROUP BY c.model"
        )}  # fmt: skip
        hits = {r["model"]: r for r in self._rows(
            "SELECT model, count(*) AS hits, count(cache_similarity) AS semantic_hits "
            "FROM calls WHERE cache_hit GROUP BY model"
        )}  # fmt: skip
        none = {"entries": 0, "semantic_entries": 0, "oldest": None, "newest": None}
        return [
            {"model": m, **none, **entries.get(m, {}), "hits": 0, "semantic_hits": 0,
             **hits.get(m, {})}
            for m in sorted(entries.keys() | hits.keys())
        ]  # fmt: skip

    def cache_clear(
        self, *, model: str | None = None, before: float | None = None,
        semantic_only: bool = False, tenant: str | None = None,
    ) -> tuple[int, int]:  # fmt: skip
        """Forget cached answers (of ``model``, of ``tenant``, stored before ``before``).

        Returns (exact, semantic) entries removed. ``semantic_only`` keeps the exact entries
        and drops only their embeddings, so that repeats still hit and similar prompts no
        longer do.
        """
        where, args = _equal(model=model, tenant=tenant)
        where.insert(0, "1")
        if before is not None:
            where.append("created_at < ?")
            args.append(before)
        chosen = f"SELECT key FROM cache WHERE {' AND '.join(where)}"
        with self.transaction() as db:
            semantic = db.execute(f"DELETE FROM semantic_cache WHERE key IN ({chosen})", args)
            exact = None if semantic_only else db.execute(
                f"DELETE FROM cache WHERE {' AND '.join(where)}", args
            )
        return (exact.rowcount if exact else 0), semantic.rowcount

    def prune(self, before: float, *, status: str | None = None, dry_run: bool = False) -> Pruned:
        """Forget the runs that ended (``status``, if given) and started before ``before``
        (epoch seconds): their calls, steps and rows, and specs no run uses any more.

        Never a run still ``running`` (live, or interrupted and waiting for ``trilemma
        resume``; but a trial of an experiment that a crash left so, which is never resumed,
        counts as ended); a batch only whole, so that its report stays complete. A gateway key's
        run stays (its calls are the key's spend, which its ceiling counts); without
        ``status``, its calls that finished before ``before`` go, their count and bill kept
        on the run (``pruned_calls``, ``pruned_usd``), which :meth:`totals` adds. Cached
        answers stay. ``dry_run`` counts what would go and keeps it.
        """
        # an experiment's trial left running by a crash is never resumed: it counts as ended
        trials = [r["run_id"] for r in self._rows(
            "SELECT run_id, status, pid FROM runs WHERE status = 'running' AND time_scale != 1"
        ) if abandoned(r)] if status is None else []  # fmt: skip
        left = "({0}.status != 'running' OR {0}.run_id IN (SELECT value FROM json_each(:trials)))"
        ended = (f"{left} AND {{0}}.started_at < :before AND NOT {_IS_GATEWAY}"
                 + (" AND {0}.status = :status" if status is not None else ""))  # fmt: skip
        chosen = (f"SELECT run_id FROM runs r WHERE {ended.format('r')} AND (r.batch_id IS NULL "
                  f"OR NOT EXISTS (SELECT 1 FROM runs o WHERE o.batch_id = r.batch_id "
                  f"AND NOT ({ended.format('o')})))")  # fmt: skip
        args = {"before": before, "status": status, "trials": json.dumps(trials)}
        ids: list[str] = []
        calls = steps = kept = gateway_calls = running = 0
        with contextlib.suppress(_Undone), self.transaction() as db:
            ids = [r[0] for r in db.execute(f"{chosen} ORDER BY run_id", args)]
            kept = db.execute(f"SELECT count(*) FROM runs r WHERE {ended.format('r')} "
                              f"AND run_id NOT IN ({chosen})", args).fetchone()[0]  # fmt: skip
            for run_id in ids:
                calls += db.execute(f"DELETE FROM calls WHERE {RUN_CALLS}", _run_range(run_id)).rowcount
                steps += db.execute("DELETE FROM steps WHERE run_id = ?", (run_id,)).rowcount
                db.execute("DELETE FROM runs WHERE run_id = ?", (run_id,))
            db.execute("DELETE FROM specs WHERE spec_hash NOT IN (SELECT spec_hash FROM runs)")
            db.execute("DELETE FROM batch_plans WHERE batch_id NOT IN "
                       "(SELECT batch_id FROM runs WHERE batch_id IS NOT NULL)")  # fmt: skip
            if status is None:
                running = db.execute(
                    f"SELECT count(*) FROM runs WHERE status = 'running' AND started_at < ? "
                    f"AND NOT {_IS_GATEWAY.format('runs')}", (before,)).fetchone()[0]  # fmt: skip
                keys = [r[0] for r in db.execute(
                    f"SELECT run_id FROM runs WHERE {_IS_GATEWAY.format('runs')}")]  # fmt: skip
                gateway_calls = self._forget_calls(db, keys, before)
            if dry_run:
                raise _Undone  # the transaction rolls back
        return Pruned(ids, calls, steps, int(kept), dry_run, gateway_calls, int(running))

    def forget_calls(self, run_ids: Sequence[str], before: float) -> int:
        """Forget the calls of these runs (gateway keys') that finished before ``before``
        (epoch seconds), in one transaction, their count and bill added to their run's
        ``pruned_calls`` and ``pruned_usd``; how many went."""
        with self.transaction() as db:
            return self._forget_calls(db, run_ids, before)

    @staticmethod
    def _forget_calls(db: sqlite3.Connection, run_ids: Sequence[str], before: float) -> int:
        forgotten = 0
        old = f"{RUN_CALLS} AND state = 'finished' AND finished_at < ?"
        for run_id in run_ids:
            args = (*_run_range(run_id), before)
            usd, sent = db.execute(
                f"SELECT coalesce(sum(cost_usd), 0), {_SENT} FROM calls WHERE {old}",
                args,
            ).fetchone()  # fmt: skip
            gone = db.execute(f"DELETE FROM calls WHERE {old}", args).rowcount
            if gone:
                db.execute("UPDATE runs SET pruned_calls = pruned_calls + ?, "
                           "pruned_usd = pruned_usd + ? WHERE run_id = ?", (sent, usd, run_id))  # fmt: skip
            forgotten += gone
        return forgotten

    def vacuum(self) -> None:
        """Rewrite the file without the space deleted rows left (SQLite's VACUUM, then a
        checkpoint that empties the write-ahead log): it waits for no one, so another
        process writing to the journal makes it fail, and it needs free disk as large as
        the file."""
        with self._using():
            self.db.execute("VACUUM")
            self.db.execute("PRAGMA wal_checkpoint(TRUNCATE)")

    def totals(self, run_id: str) -> tuple[float, int]:
        """Dollars billed to a run so far, and calls sent (answered or not).

        Neither a call journaled but cancelled before it went out (outcome ``unsent``) nor
        a cache hit (nothing was sent) is counted. The calls :meth:`prune` forgot of a
        gateway key's run are.
        """
        with self._using():
            row = self.db.execute(
                f"SELECT coalesce(sum(cost_usd), 0), {_SENT} FROM calls WHERE {RUN_CALLS}",
                _run_range(run_id),
            ).fetchone()
            pruned = self.db.execute(  # the calls prune forgot of a run it kept
                "SELECT pruned_usd, pruned_calls FROM runs WHERE run_id = ?", (run_id,)
            ).fetchone() or (0.0, 0)
        return float(row[0]) + pruned[0], int(row[1]) + pruned[1]

    def cut_answers(self, run_id: str) -> dict[str, int]:
        """Per step of a run, the answers that stopped at ``max_tokens`` (``finish_reason``
        length), in the order the steps first had one."""
        with self._using():
            rows = self.db.execute(
                "SELECT step_id, count(*) FROM calls "
                f"WHERE {RUN_CALLS} AND finish_reason = 'length' GROUP BY step_id ORDER BY min(id)",
                _run_range(run_id),
            ).fetchall()
        return {r[0]: int(r[1]) for r in rows}

    def last_call_at(self, run_id: str, since: float) -> float | None:
        """When the last call a run journaled since ``since`` (epoch seconds) answered, or
        was sent if it never did; None without one."""
        with self._using():
            row = self.db.execute(
                f"SELECT max(coalesce(finished_at, started_at)) FROM calls WHERE {RUN_CALLS} "
                "AND started_at >= ?", (*_run_range(run_id), since),
            ).fetchone()  # fmt: skip
        return None if row[0] is None else float(row[0])

    def spent(self, run_id: str) -> float:
        """Dollars billed to a run so far (answered calls, and a real endpoint's calls
        cancelled in flight, at their reservation): what a resume counts against its ceiling."""
        return self.totals(run_id)[0]

    def check(self) -> dict[str, Any]:
        """What ``trilemma doctor`` reports: integrity, schema, interrupted runs (and the batches
        they belong to), calls in flight.

        ``unsettled_calls_in_ended_runs`` are calls still marked in flight in a run that
        ended: no crash explains them (an older trilemma could leave a debate's calls so).
        """
        with self._using():
            integrity = [r[0] for r in self.db.execute("PRAGMA integrity_check")]
        report: dict[str, Any] = {
            "journal": str(self.path),
            "schema_version": self.schema_version,
            "schema_known": SCHEMA_VERSION,
            "integrity": "ok" if integrity == ["ok"] else integrity,
            "runs": None,
            "interrupted_runs": [],
            "interrupted_trials": [],
            "interrupted_batches": [],
            "orphaned_in_flight_calls": [],
            "unsettled_calls_in_ended_runs": [],
            "damaged_rows": [],
        }
        if integrity != ["ok"]:  # rows of a damaged file may read back as anything
            return report
        with self._using():
            running = self._rows(
                "SELECT run_id, status, pid, started_at, batch_id, spec_source, time_scale, "
                "overrides_json FROM runs WHERE status = 'running'"
            )
            in_flight = self._rows(
                "SELECT c.run_id, c.step_id, c.attempt, c.call, c.model, c.reserved_usd, "
                "r.status FROM calls c JOIN runs r ON r.run_id = c.run_id "
                "WHERE c.state = 'started' ORDER BY c.id"
            )
        # a damaged pid (listed under damaged_rows) cannot name a live process
        interrupted = [r for r in running if abandoned(r)]
        dead = {r["run_id"] for r in interrupted}
        run_status = [c.pop("status") for c in in_flight]  # not part of a call's report
        ended = [c for c, st in zip(in_flight, run_status, strict=True) if st != "running"]
        batches = dict.fromkeys((r["batch_id"], r["spec_source"], tuple(overrides_of(r)))
                                for r in interrupted if r["batch_id"])  # fmt: skip
        return {
            **report,
            "damaged_rows": self.damaged_rows(),
            "runs": self.count_runs(),
            "interrupted_runs": [r["run_id"] for r in interrupted],
            "interrupted_trials": [r["run_id"] for r in interrupted if r["time_scale"] != 1],
            "interrupted_batches": [
                {"batch_id": b, "spec_source": src, "overrides": list(sets)}
                for b, src, sets in batches
            ],
            "orphaned_in_flight_calls": [c for c in in_flight if c["run_id"] in dead],
            "unsettled_calls_in_ended_runs": ended,
        }

    def export(self, run_id: str) -> Iterator[dict[str, Any]]:
        """A run as records: the run, then its steps, then its calls."""
        run = self.run(run_id)
        if run is None:
            return
        yield {"type": "run", **run}
        for step in self.steps(run_id).values():
            yield {"type": "step", **step}
        for call in self.calls(run_id):
            yield {"type": "call", **call}


@functools.cache
def _declared() -> dict[str, tuple[tuple[str, str], ...]]:
    """Each table's columns and their declared types, as the migrations make them (in a
    database in memory)."""
    db = sqlite3.connect(":memory:")
    try:
        for _, fn in MIGRATIONS:
            fn(db)
        tables = [r[0] for r in db.execute("SELECT name FROM sqlite_master WHERE type='table'")]
        return {t: tuple((r[1], r[2].upper()) for r in db.execute(f"PRAGMA table_info({t})"))
                for t in tables}  # fmt: skip
    finally:
        db.close()


@functools.cache
def _expected_columns() -> dict[str, tuple[str, ...]]:
    """Each table's columns, as the migrations make them."""
    return {t: tuple(c for c, _ in cols) for t, cols in _declared().items()}


#: The Python values a column of each declared type holds in a sound row (NULL aside), and
#: the SQLite storage classes of those values.
_KINDS: dict[str, tuple[type, ...]] = {
    "INTEGER": (int,), "REAL": (int, float), "TEXT": (str,), "BLOB": (bytes,),
}  # fmt: skip
_STORED = {"INTEGER": "'integer'", "REAL": "'integer', 'real'", "TEXT": "'text'", "BLOB": "'blob'"}
#: The JSON each ``*_json`` column holds.
_JSON_KINDS: dict[str, type] = {
    "spec_json": dict, "inputs_json": dict, "predicted_json": dict, "request_json": list,
    "overrides_json": list, "plan_json": dict, "ended_json": dict,
}  # fmt: skip
_NOUNS = {int: "an integer", float: "a number", str: "text", bytes: "bytes", dict: "a JSON object",
          list: "a JSON array"}  # fmt: skip
#: What the keys of the planner's figures hold (null aside), which the pages read: a run's
#: (``predicted_json``: the estimate's, and the Monte Carlo under its budgets that `run` and
#: `resume` add), a batch session's plan and what it measured as it ended. Those of a JSON
#: object hold numbers (or null) in turn, but those in ``_ANY_WITHIN``.
_FIGURE_KINDS: dict[str, dict[str, type]] = {
    "predicted_json": {
        "steps": int, "calls": dict, "cost_usd": dict, "latency_s": dict, "critical_path": list,
        "reliability": float, "quality_per_dollar": float, "quality_per_expected_dollar": float,
        "stop_when": dict, "under_budget": dict, "under_budget_resumed": dict,
    },
    "plan_json": {
        "max_cost_usd": float, "deadline_s": float, "batch_lines": int, "cost_usd": dict,
        "ok_lines": float, "quality_per_dollar": float, "latency_s": dict, "limited_by": dict,
        "runs_covered_at_worst": int, "runs_ended_within_ceiling": float,
        "runs_ok_within_ceiling": float, "latency_within_ceiling_s": float,
        "runs_done_by_deadline": float, "runs_near_deadline": float,
        "runs_ok_by_deadline": float, "deadline_headroom_s": float,
        "runs_ok_within_budgets": float,
    },
    "ended_json": {"status": str, "took_s": float, "ran_to_end": int, "ok": int},
}  # fmt: skip
_ANY_WITHIN = frozenset({"stop_when", "limited_by"})


@functools.cache
def _expected_kinds() -> dict[str, dict[str, tuple[type, ...]]]:
    """Per table, per column, the values a sound row holds (from the migrations' types)."""
    return {t: {c: _KINDS[d] for c, d in cols if d in _KINDS} for t, cols in _declared().items()}


_JSON_TYPES: dict[type, str] = {dict: "object", list: "array"}


def _damaged_sql(table: str) -> str:
    """An SQL condition true of a row of ``table`` that holds a value not of its column's
    kind, or JSON that does not parse to its column's (as :func:`_unsound` judges)."""
    kinds = [f"typeof({table}.{c}) NOT IN ('null', {_STORED[d]})"
             for c, d in _declared()[table] if d in _STORED]  # fmt: skip
    shapes = [f"({table}.{c} IS NOT NULL AND CASE WHEN json_valid({table}.{c}) THEN "
              f"json_type({table}.{c}) != '{_JSON_TYPES[_JSON_KINDS[c]]}' ELSE 1 END)"
              for c, _ in _declared()[table] if c in _JSON_KINDS]  # fmt: skip
    return " OR ".join(kinds + shapes)


def _unsound(table: str, row: dict[str, Any]) -> str | None:
    """What is wrong with a row of ``table`` (a value not of its column's kind, a JSON
    column that does not parse to its kind), or None."""
    kinds = _expected_kinds()[table]
    for column, value in row.items():
        if value is None:
            continue
        want = kinds.get(column)
        shape = _JSON_KINDS.get(column)
        if want is not None and not isinstance(value, want):
            wrong = _NOUNS[want[-1]]
        elif shape is not None and not isinstance(parsed := _parsed(value), shape):
            wrong = _NOUNS[shape]
        elif (within := _WITHIN.get(column)) and (inner := within(parsed)) is not None:
            column, value, wrong = f"{column}'s {inner[0]}", inner[1], inner[2]
        else:
            continue
        where = ", ".join(f"{k} {row[k]}" for k in ("run_id", "batch_id", "step_id", "id", "key")
                          if row.get(k))
        held = "nothing" if value is None else repr(str(value)[:40])  # a key left out
        return f"table {table}, {where}: {column} holds {held}, not {wrong}"
    return None


def _unsound_figures(column: str, figures: dict[str, Any]) -> tuple[str, Any, str] | None:
    """The first key of the planner's figures in ``column`` that holds what a page cannot
    read (``under_budget.runs`` for a key of a key), what it holds and what it should, or
    None."""
    for key, kind in _FIGURE_KINDS[column].items():
        value = figures.get(key)
        if value is None:
            continue
        if not _holds(value, kind):
            return key, value, _NOUNS[kind]
        if kind is dict and key not in _ANY_WITHIN:
            for name, figure in value.items():
                if figure is not None and not _holds(figure, float):
                    return f"{key}.{name}", figure, _NOUNS[float]
    return None


def _unsound_spec(spec: dict[str, Any]) -> tuple[str, Any, str] | None:
    """What in a journaled spec (or a gateway's config) the pages cannot read, as
    :func:`_unsound_figures` says it: its ``steps``, each an object with a text ``id``,
    and its ``models``, an object. The rest is the loader's to judge, when a resume or
    ``calibrate`` loads the spec again."""
    steps, models = spec.get("steps"), spec.get("models")
    if models is not None and not isinstance(models, dict):
        return "models", models, _NOUNS[dict]
    if steps is None:
        return None
    if not isinstance(steps, list):
        return "steps", steps, _NOUNS[list]
    for k, step in enumerate(steps):
        if not isinstance(step, dict):
            return f"steps[{k}]", step, _NOUNS[dict]
        if not isinstance(step.get("id"), str):
            return f"steps[{k}].id", step.get("id"), _NOUNS[str]
    return None


def _holds(value: Any, kind: type) -> bool:
    """``value`` (parsed JSON) is of ``kind``: any number (not true or false) for int and
    float alike, as a page formats either."""
    if kind is float or kind is int:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    return isinstance(value, kind)


#: The JSON columns a page reads within: what is wrong inside one (a key, what it holds,
#: what it should), or None.
_WITHIN: dict[str, Callable[[dict[str, Any]], tuple[str, Any, str] | None]] = {
    **{c: functools.partial(_unsound_figures, c) for c in _FIGURE_KINDS},
    "spec_json": _unsound_spec,
}


def _parsed(text: str) -> Any:
    try:
        return json.loads(text)
    except ValueError:
        return None


@functools.cache
def _put_cache_sql() -> str:
    """The insert of a cached answer: the first one under a key stays, unless another tool
    damaged its row (then ``cache_get`` misses it, and the next answer replaces it)."""
    return (
        "INSERT INTO cache (key, model, response, prompt_tokens, completion_tokens, "
        "created_at, tenant) VALUES (:key, :model, :response, :prompt_tokens, "
        ":completion_tokens, :created_at, :tenant) ON CONFLICT (key) DO UPDATE SET model = "
        "excluded.model, response = excluded.response, prompt_tokens = excluded.prompt_tokens, "
        "completion_tokens = excluded.completion_tokens, created_at = excluded.created_at, "
        f"tenant = excluded.tenant WHERE {_damaged_sql('cache')}"
    )


#: What a call's row is reset to when a resume sends it again under its key.
_RESENT = ("outcome", "error", "cost_usd", "finished_at")
_STEP_COLUMNS = ("run_id", "step_id", "status", "output", "attempts", "cost_usd", "error",
                 "finished_at")  # fmt: skip


def _run_filter(status: str | None, batch_id: str | None) -> tuple[str, list[Any]]:
    """The WHERE clause (empty without a filter) and its values for runs of ``status`` and
    of ``batch_id`` (None: any)."""
    where, args = _equal(**{"runs.status": status, "runs.batch_id": batch_id})
    return (f"WHERE {' AND '.join(where)}" if where else ""), args


def _equal(**columns: Any) -> tuple[list[str], list[Any]]:
    """``column = ?`` for each column given a value (None: no condition), and the values."""
    given = {c: v for c, v in columns.items() if v is not None}
    return [f"{c} = ?" for c in given], list(given.values())


class _Batch:
    """Writes gathered for one transaction, per table, then applied with ``executemany``.

    Rows of one table are independent of the other tables' rows, so only the order
    within a table is kept. A call started and finished within the batch is one insert.
    """

    def __init__(self) -> None:
        self.runs: list[dict[str, Any]] = []
        self.calls: dict[str, dict[str, Any]] = {}  # started in this batch, by idempotency key
        self.call_updates: list[tuple[str, dict[str, Any]]] = []  # started in an earlier one
        self.steps: dict[tuple[str, str], tuple[Any, ...]] = {}
        self.cache: list[dict[str, Any]] = []
        self.semantic: list[dict[str, Any]] = []
        self.run_updates: list[tuple[str, dict[str, Any]]] = []

    def create_run(self, row: dict[str, Any]) -> None:
        self.runs.append(row)

    def update_run(self, run_id: str, **fields: Any) -> None:
        self.run_updates.append((run_id, fields))

    def call_started(self, row: dict[str, Any]) -> None:
        self.calls[row["idempotency_key"]] = {**row, "state": "started"}

    def call_finished(self, key: str, fields: dict[str, Any], outcome: str | None = None) -> None:
        row = self.calls.get(key)
        if row is None:
            row = dict(fields)
            self.call_updates.append((key, row))
        else:
            row.update(fields)
        row["state"] = "finished"
        if outcome is not None:
            row["outcome"] = outcome

    def attempt_finished(
        self, run_id: str, step_id: str, finishes: list[tuple[str, dict[str, Any]]], *,
        rejected: bool, step: dict[str, Any] | None = None,
    ) -> None:  # fmt: skip
        outcome = "rejected" if rejected else "ok"
        for key, fields in finishes:  # a hedge's losing copy keeps its own outcome
            self.call_finished(key, fields, fields.get("outcome", outcome))
        if step is not None:
            self.step_finished(run_id, step_id, step)

    def step_finished(self, run_id: str, step_id: str, step: dict[str, Any]) -> None:
        self.steps[run_id, step_id] = (
            run_id, step_id, step["status"], step.get("output"), step["attempts"],
            step["cost_usd"], step.get("error"), time.time(),
        )  # fmt: skip

    def cache_put(self, row: dict[str, Any]) -> None:
        self.cache.append({"tenant": None, **row})

    def semantic_put(self, row: dict[str, Any]) -> None:
        self.semantic.append(row)

    def apply(self, db: sqlite3.Connection) -> None:
        for run in self.runs:  # the spec's text once per hash; the row keeps the hash
            db.execute(
                "INSERT OR IGNORE INTO specs (spec_hash, spec_json) VALUES (?, ?)",
                (run["spec_hash"], run["spec_json"]),
            )
            row = {**run, "spec_json": ""}
            names, marks = ", ".join(row), ", ".join("?" for _ in row)
            db.execute(f"INSERT INTO runs ({names}) VALUES ({marks})", tuple(row.values()))
        for cols, rows in _by_columns(self.calls.values()).items():
            db.executemany(_upsert_call_sql(cols), rows)
        for cols, rows in _by_columns(
            {**f, "idempotency_key": k} for k, f in self.call_updates
        ).items():  # the key comes last, for the WHERE clause
            sets = ", ".join(f"{c} = ?" for c in cols[:-1])
            db.executemany(f"UPDATE calls SET {sets} WHERE idempotency_key = ?", rows)
        if self.steps:
            db.executemany(_UPSERT_STEP, list(self.steps.values()))
        if self.cache:
            db.executemany(_put_cache_sql(), self.cache)
        if self.semantic:
            db.executemany(
                "INSERT OR IGNORE INTO semantic_cache (key, scope, embedder, prompt, vector, "
                "response, created_at) VALUES (:key, :scope, :embedder, :prompt, :vector, "
                ":response, :created_at)",
                self.semantic,
            )
        for run_id, fields in self.run_updates:
            sets = ", ".join(f"{k} = ?" for k in fields)
            db.execute(f"UPDATE runs SET {sets} WHERE run_id = ?", (*fields.values(), run_id))


def _by_columns(rows: Iterable[dict[str, Any]]) -> dict[tuple[str, ...], list[tuple[Any, ...]]]:
    out: dict[tuple[str, ...], list[tuple[Any, ...]]] = {}
    for row in rows:
        out.setdefault(tuple(row), []).append(tuple(row.values()))
    return out


@functools.lru_cache(maxsize=64)
def _upsert_call_sql(cols: tuple[str, ...]) -> str:
    """Insert a call; re-sending one after a crash reuses its idempotency key, and so its row."""
    updates = [f"{c} = excluded.{c}" for c in cols if c != "idempotency_key"]
    updates += [f"{c} = NULL" for c in _RESENT if c not in cols]
    return (
        f"INSERT INTO calls ({', '.join(cols)}) VALUES ({', '.join('?' for _ in cols)}) "
        f"ON CONFLICT(idempotency_key) DO UPDATE SET {', '.join(updates)}, sends = sends + 1"
    )


_UPSERT_STEP = (
    f"INSERT INTO steps ({', '.join(_STEP_COLUMNS)}) VALUES ({', '.join('?' for _ in _STEP_COLUMNS)}) "
    "ON CONFLICT(run_id, step_id) DO UPDATE SET "
    + ", ".join(f"{c} = excluded.{c}" for c in _STEP_COLUMNS[2:])
)


#: Longest a deferred write waits for a durable one to carry it.
GROUP_COMMIT_S = 0.002
#: The same, in a run whose calls bill nobody (the simulator): losing its last records in a
#: crash costs nothing but re-running those free steps, and fewer commits cost less.
FREE_COMMIT_S = 0.025
#: Deferred writes that make a commit happen now, whatever the window.
MAX_DEFERRED = 4096


class JournalWriter:
    """Async writes to a journal, with group commit, that never let another process stall the loop.

    :meth:`write` is durable when it returns (the write-ahead record of a call
    must be). The first durable write in a turn of the event loop commits at
    once; the others of that turn (a fan-out's calls starting together) share
    one commit, made on the next turn.
    :meth:`defer` queues a write that may wait: it commits with the next durable
    write, or within ``window_s`` (:data:`GROUP_COMMIT_S`), in the same transaction.

    A transaction first runs on the loop's thread through a connection that will
    not wait for a lock (an uncontended WAL commit takes microseconds). If
    another process holds the lock, it goes to a dedicated thread whose
    connection waits its turn, and so does every transaction after it until that
    thread drains, so transactions commit in the order they were made.
    """

    def __init__(self, journal: Journal, window_s: float = GROUP_COMMIT_S) -> None:
        self.journal = journal
        self.window_s = window_s
        """Longest a deferred write waits."""
        self._fast = Journal(journal.path, busy_timeout_s=0.0)
        # Its rows all belong to a run that is already in the journal: the lookup of the
        # parent row that foreign-key enforcement adds to every insert would only repeat that.
        self._fast.db.execute("PRAGMA foreign_keys=OFF")
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="trilemma-journal")
        self._queued = 0
        self._buffer: list[Op] = []
        self._timer: asyncio.Handle | None = None
        self._flushes: set[asyncio.Task[None]] = set()
        self._failed: BaseException | None = None
        """The error of the first commit that failed in the background."""
        self._turn_wrote = False
        """A durable write has been made in this turn of the loop."""
        self._group: asyncio.Task[None] | None = None
        """The commit that durable writes of this turn of the loop join."""

    async def write(self, method: str, *args: Any, **kwargs: Any) -> None:
        """Commit ``method(*args, **kwargs)`` with every write queued before it.

        Cancelling the caller does not cancel the commit: the write may still land.
        """
        self._buffer.append((method, args, kwargs))
        if not self._turn_wrote:  # the first in this turn of the loop commits at once
            self._turn_wrote = True
            asyncio.get_running_loop().call_soon(self._next_turn)
            await self._commit(self._take())
            return
        if self._group is None:  # the others of this turn share the next commit
            self._group = self._track(self._commit_group())
        await asyncio.shield(self._group)

    def _next_turn(self) -> None:
        self._turn_wrote = False

    async def _commit_group(self) -> None:
        self._group = None  # a write from now on starts the next group
        # Even with nothing left to take (a later write took it), return only once what
        # was taken is committed.
        await self._commit(self._take())

    def defer(self, method: str, *args: Any, **kwargs: Any) -> None:
        """Queue a write for the next commit."""
        self._buffer.append((method, args, kwargs))
        if self._timer is None:
            self._timer = asyncio.get_running_loop().call_later(self.window_s, self._flush_later)
        elif len(self._buffer) >= MAX_DEFERRED:
            self._timer.cancel()
            self._timer = asyncio.get_running_loop().call_soon(self._flush_later)

    def read(self, method: str, *args: Any) -> Any:
        """A read on the loop's connection (in WAL mode readers never wait for writers)."""
        return getattr(self._fast, method)(*args)

    def _take(self) -> list[Op]:
        ops, self._buffer = self._buffer, []
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        return ops

    def _flush_later(self) -> None:
        self._timer = None
        ops = self._take()
        if ops:
            self._track(self._commit(ops))

    def _track(self, commit: Coroutine[Any, Any, None]) -> asyncio.Task[None]:
        task = asyncio.ensure_future(commit)
        self._flushes.add(task)
        task.add_done_callback(self._settled)
        return task

    def _settled(self, task: asyncio.Task[None]) -> None:
        self._flushes.discard(task)
        if not task.cancelled() and task.exception() is not None and self._failed is None:
            self._failed = task.exception()

    async def _commit(self, ops: list[Op]) -> None:
        """Commit ``ops``; return once they and every commit made before are durable."""
        if self._queued == 0:
            if not ops:
                return
            try:
                self._fast.batch(ops)
                return
            except JournalBusy:
                pass
        self._queued += 1
        try:
            loop = asyncio.get_running_loop()
            await loop.run_in_executor(self._pool, self.journal.batch, ops)
        finally:
            self._queued -= 1

    async def flush(self) -> None:
        """Wait for the commits under way and commit what is left (the writer stays open).

        Raises the error of the first commit that failed (a journal error).
        """
        await drain_tasks(self._flushes, self._settled)  # first: commits land in the order made
        ops = self._take()
        if ops:
            await self._commit(ops)
        if self._failed is not None:
            raise self._failed

    async def aclose(self) -> None:
        """:meth:`flush`, then stop the thread and close the connection."""
        try:
            await self.flush()
        finally:
            self._pool.shutdown(wait=True)
            self._fast.close()


_ENCODE = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False).encode
_STR = encode_basestring  # what _ENCODE does to a string (C-accelerated)


def dumps(data: Any) -> str:
    """Compact JSON for the journal's text columns."""
    return _ENCODE(data)


def messages_json(messages: Sequence[dict[str, str]]) -> str:
    """``dumps`` of chat messages, 4-5x quicker for the common {role, content} ones."""
    try:
        if all(len(m) == 2 for m in messages):
            return "[" + ",".join([
                '{"role":' + _STR(m["role"]) + ',"content":' + _STR(m["content"]) + "}"
                for m in messages
            ]) + "]"  # fmt: skip
    except KeyError:
        pass
    return _ENCODE(messages)
