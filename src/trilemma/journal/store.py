"""The journal: a SQLite file in WAL mode that many processes may share.

:class:`Journal` is synchronous and owns one connection. The executor uses it
through :class:`JournalWriter`, which runs every call on one dedicated thread so
the event loop never blocks on disk. Writes are short ``BEGIN IMMEDIATE``
transactions; a busy timeout lets concurrent processes take turns.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import sqlite3
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, TypeVar

from trilemma.errors import JournalError, NotAJournal
from trilemma.journal.migrations import MIGRATIONS, SCHEMA_VERSION

__all__ = ["DEFAULT_PATH", "Journal", "JournalWriter"]

DEFAULT_PATH = Path(".trilemma") / "trilemma.db"
SQLITE_MAGIC = b"SQLite format 3\x00"
BUSY_TIMEOUT_S = 30.0
T = TypeVar("T")


@contextlib.contextmanager
def map_sqlite_errors(path: Path) -> Iterator[None]:
    """sqlite3 errors as JournalError, with what to do about them."""
    try:
        yield
    except sqlite3.OperationalError as exc:
        msg = str(exc)
        if "readonly" in msg or "read-only" in msg:
            hint = "the journal is read-only; give a writable --journal path"
        elif "disk is full" in msg or "disk I/O" in msg:
            hint = "the disk is full or failing; free space or give another --journal path"
        elif "locked" in msg or "busy" in msg:
            hint = "another process held the journal too long; try again"
        elif "unable to open" in msg:
            hint = "cannot open the file; check the folder exists and is writable"
        else:
            hint = "check the file and try again"
        raise JournalError(f"{path}: journal error: {msg}; {hint}") from exc
    except sqlite3.DatabaseError as exc:
        raise NotAJournal(f"{path}: not a readable trilemma journal ({exc})") from exc


class Journal:
    """One connection to a journal file; creates and migrates it as needed."""

    def __init__(self, path: str | Path = DEFAULT_PATH, *, create: bool = True) -> None:
        self.path = Path(path)
        if self.path.is_dir():
            raise NotAJournal(f"{self.path}: is a directory; give a journal file path")
        exists = self.path.exists() and self.path.stat().st_size > 0
        if exists:
            with self.path.open("rb") as f:
                if f.read(16) != SQLITE_MAGIC:
                    raise NotAJournal(f"{self.path}: not a trilemma journal (not a SQLite file)")
        elif not create:
            raise NotAJournal(
                f"{self.path}: no journal here; run a workflow first or give --journal"
            )
        else:
            try:
                self.path.parent.mkdir(parents=True, exist_ok=True)
            except OSError as exc:
                raise JournalError(
                    f"{self.path}: cannot create its folder: {exc.strerror}"
                ) from None
        with map_sqlite_errors(self.path):
            self.db = sqlite3.connect(
                self.path, timeout=BUSY_TIMEOUT_S, isolation_level=None, check_same_thread=False
            )
            self.db.row_factory = sqlite3.Row
            self.db.execute("PRAGMA journal_mode=WAL")
            self.db.execute("PRAGMA synchronous=NORMAL")
            self.db.execute("PRAGMA foreign_keys=ON")
            self._migrate()

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

    @property
    def schema_version(self) -> int:
        """Migrations applied."""
        return int(self.db.execute("SELECT count(*) FROM trilemma_migrations").fetchone()[0])

    @contextlib.contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        """A short write transaction (BEGIN IMMEDIATE: writers queue, never deadlock)."""
        with map_sqlite_errors(self.path):
            self.db.execute("BEGIN IMMEDIATE")
            try:
                yield self.db
            except BaseException:
                self.db.execute("ROLLBACK")
                raise
            self.db.execute("COMMIT")

    def close(self) -> None:
        """Close the connection."""
        self.db.close()

    # ------------------------------------------------------------------ writes

    def create_run(self, row: dict[str, Any]) -> None:
        """Record a new run (status running)."""
        cols = ", ".join(row)
        marks = ", ".join("?" for _ in row)
        with self.transaction() as db:
            db.execute(f"INSERT INTO runs ({cols}) VALUES ({marks})", tuple(row.values()))

    def update_run(self, run_id: str, **fields: Any) -> None:
        """Change a run's fields (status, cost, ...)."""
        sets = ", ".join(f"{k} = ?" for k in fields)
        with self.transaction() as db:
            db.execute(f"UPDATE runs SET {sets} WHERE run_id = ?", (*fields.values(), run_id))

    def call_started(self, row: dict[str, Any]) -> int:
        """Write-ahead: the call is about to be sent. Returns its row id.

        Re-sending an attempt after a crash reuses its idempotency key and row.
        """
        cols = ", ".join(row)
        marks = ", ".join("?" for _ in row)
        updates = ", ".join(f"{k} = excluded.{k}" for k in row if k != "idempotency_key")
        with self.transaction() as db:
            cur = db.execute(
                f"INSERT INTO calls ({cols}, state) VALUES ({marks}, 'started') "
                f"ON CONFLICT(idempotency_key) DO UPDATE SET {updates}, state = 'started', "
                "outcome = NULL, error = NULL, finished_at = NULL RETURNING id",
                tuple(row.values()),
            )
            return int(cur.fetchone()[0])

    def call_finished(
        self, call_id: int, fields: dict[str, Any], cache: dict[str, Any] | None = None
    ) -> None:
        """The call came back (or failed, or was cancelled); optionally fill the cache."""
        sets = ", ".join(f"{k} = ?" for k in fields)
        with self.transaction() as db:
            db.execute(
                f"UPDATE calls SET {sets}, state = 'finished' WHERE id = ?",
                (*fields.values(), call_id),
            )
            if cache is not None:
                db.execute(
                    "INSERT OR IGNORE INTO cache (key, model, response, prompt_tokens, "
                    "completion_tokens, created_at) VALUES (:key, :model, :response, "
                    ":prompt_tokens, :completion_tokens, :created_at)",
                    cache,
                )

    def step_finished(
        self, run_id: str, step_id: str, status: str, *, output: str | None, attempts: int,
        cost_usd: float, error: str | None, rejected_calls: list[int] | None = None,
        run_cost_usd: float | None = None, run_calls: int | None = None,
    ) -> None:  # fmt: skip
        """A step is done (its output committed in the same transaction), failed or skipped."""
        with self.transaction() as db:
            if rejected_calls:
                db.executemany(
                    "UPDATE calls SET outcome = 'rejected' WHERE id = ? AND outcome = 'ok'",
                    [(i,) for i in rejected_calls],
                )
            db.execute(
                "INSERT INTO steps (run_id, step_id, status, output, attempts, cost_usd, error, "
                "finished_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT(run_id, step_id) DO "
                "UPDATE SET status = excluded.status, output = excluded.output, attempts = "
                "excluded.attempts, cost_usd = excluded.cost_usd, error = excluded.error, "
                "finished_at = excluded.finished_at",
                (run_id, step_id, status, output, attempts, cost_usd, error, time.time()),
            )
            if run_cost_usd is not None:
                db.execute(
                    "UPDATE runs SET cost_usd = ?, calls = ? WHERE run_id = ?",
                    (run_cost_usd, run_calls, run_id),
                )

    def mark_rejected(self, call_ids: list[int]) -> None:
        """A gate rejected the answer these calls produced (they stay billed)."""
        with self.transaction() as db:
            db.executemany(
                "UPDATE calls SET outcome = 'rejected' WHERE id = ? AND outcome = 'ok'",
                [(i,) for i in call_ids],
            )

    # ------------------------------------------------------------------ reads

    def _rows(self, sql: str, args: tuple[Any, ...] = ()) -> list[dict[str, Any]]:
        with map_sqlite_errors(self.path):
            return [dict(r) for r in self.db.execute(sql, args)]

    def runs(self) -> list[dict[str, Any]]:
        """Every run, newest first."""
        return self._rows("SELECT * FROM runs ORDER BY started_at DESC, run_id DESC")

    def run(self, run_id: str) -> dict[str, Any] | None:
        """One run, or None."""
        rows = self._rows("SELECT * FROM runs WHERE run_id = ?", (run_id,))
        return rows[0] if rows else None

    def steps(self, run_id: str) -> dict[str, dict[str, Any]]:
        """A run's finished steps by id."""
        return {
            r["step_id"]: r for r in self._rows("SELECT * FROM steps WHERE run_id = ?", (run_id,))
        }

    def calls(self, run_id: str) -> list[dict[str, Any]]:
        """A run's calls in the order they were sent."""
        return self._rows("SELECT * FROM calls WHERE run_id = ? ORDER BY id", (run_id,))

    def cache_get(self, key: str) -> dict[str, Any] | None:
        """A cached response, or None."""
        rows = self._rows("SELECT * FROM cache WHERE key = ?", (key,))
        return rows[0] if rows else None

    def spent(self, run_id: str) -> float:
        """Dollars billed to a run so far (answered calls)."""
        with map_sqlite_errors(self.path):
            row = self.db.execute(
                "SELECT coalesce(sum(cost_usd), 0) FROM calls WHERE run_id = ?", (run_id,)
            ).fetchone()
        return float(row[0])


class JournalWriter:
    """Async access to a :class:`Journal` through one dedicated thread."""

    def __init__(self, journal: Journal) -> None:
        self.journal = journal
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="trilemma-journal")

    async def __call__(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """Run ``fn(*args, **kwargs)`` on the journal's thread."""
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._pool, lambda: fn(*args, **kwargs))

    def close(self) -> None:
        """Finish pending writes and stop the thread."""
        self._pool.shutdown(wait=True)


def dumps(data: Any) -> str:
    """Compact JSON for the journal's text columns."""
    return json.dumps(data, separators=(",", ":"), ensure_ascii=False)
