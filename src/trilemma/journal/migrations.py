"""The journal's schema, as ordered, named migrations recorded in the database.

A journal records each migration it has applied in ``trilemma_migrations``.
Opening one applies the missing ones in order; a journal that has applied a
migration this trilemma does not know is from a newer trilemma and is refused.
``docs/journal.md`` is generated from :data:`MIGRATIONS`.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable

__all__ = ["MIGRATIONS", "SCHEMA_VERSION"]


def _execute_all(db: sqlite3.Connection, sql: str) -> None:
    """Run ;-separated statements inside the caller's transaction (executescript would commit)."""
    for statement in sql.split(";"):
        if statement.strip():
            db.execute(statement)


def m001_initial(db: sqlite3.Connection) -> None:
    """Runs, their steps, every call (write-ahead), and the exact-match cache."""
    _execute_all(
        db,
        """
        CREATE TABLE runs (
          run_id         TEXT PRIMARY KEY,   -- sortable: time first
          spec_source    TEXT NOT NULL,      -- the spec's path as given
          spec_json      TEXT NOT NULL,      -- the validated spec, to resume from
          spec_hash      TEXT NOT NULL,      -- sha256 of spec_json
          inputs_json    TEXT NOT NULL,      -- the run's --input values
          seed           INTEGER,            -- the simulator's seed
          max_cost_usd   REAL,               -- the ceiling, carried over a resume
          deadline_at    REAL,               -- epoch seconds, carried over a resume
          status         TEXT NOT NULL,      -- running | ok | budget_exhausted | deadline | failed
          started_at     REAL NOT NULL,      -- epoch seconds
          finished_at    REAL,
          cost_usd       REAL NOT NULL DEFAULT 0,
          latency_s      REAL,               -- wall-clock seconds of the last session
          calls          INTEGER NOT NULL DEFAULT 0,
          predicted_json TEXT,               -- the planner's estimate at start
          error          TEXT,               -- why it stopped, when it did not finish ok
          pid            INTEGER             -- the process that ran it last
        );
        CREATE TABLE steps (
          run_id      TEXT NOT NULL REFERENCES runs(run_id),
          step_id     TEXT NOT NULL,
          status      TEXT NOT NULL,         -- done | failed | skipped
          output      TEXT,                  -- committed with status = done
          attempts    INTEGER NOT NULL,
          cost_usd    REAL NOT NULL,
          error       TEXT,
          finished_at REAL NOT NULL,
          PRIMARY KEY (run_id, step_id)
        ) WITHOUT ROWID;
        CREATE TABLE calls (
          id                INTEGER PRIMARY KEY,
          run_id            TEXT NOT NULL REFERENCES runs(run_id),
          step_id           TEXT NOT NULL,
          attempt           INTEGER NOT NULL,  -- 1 for the first attempt
          call              INTEGER NOT NULL,  -- index within the attempt
          role              TEXT NOT NULL,     -- call | refine 1 | agent 2 round 1 | judge | sample 3
          model             TEXT NOT NULL,     -- the profile's name
          idempotency_key   TEXT NOT NULL UNIQUE,  -- run:step:attempt:call, so it also
                                                   -- indexes a run's calls (one index less to write)
          state             TEXT NOT NULL,     -- started (in flight) | finished
          outcome           TEXT,              -- ok | rejected | transient | rate_limited |
                                               -- timeout | malformed | fatal | cancelled
          error             TEXT,
          prompt_tokens     INTEGER,
          completion_tokens INTEGER,
          cost_usd          REAL,              -- billed: answered calls only, NULL if unknown
          reserved_usd      REAL NOT NULL,     -- the worst case held before sending
          latency_s         REAL,
          cache_hit         INTEGER NOT NULL DEFAULT 0,
          request_json      TEXT NOT NULL,     -- the messages sent (never an API key)
          response          TEXT,
          started_at        REAL NOT NULL,
          finished_at       REAL
        );
        CREATE TABLE cache (
          key               TEXT PRIMARY KEY,  -- sha256 of model, messages and settings
          model             TEXT NOT NULL,
          response          TEXT NOT NULL,
          prompt_tokens     INTEGER,
          completion_tokens INTEGER,
          created_at        REAL NOT NULL
        );
        """,
    )


def m002_call_sends(db: sqlite3.Connection) -> None:
    """How many times a call was sent: 2 when a resume re-sent a call that was in flight at a crash."""
    db.execute("ALTER TABLE calls ADD COLUMN sends INTEGER NOT NULL DEFAULT 1")


def m003_semantic_cache(db: sqlite3.Connection) -> None:
    """Prompt embeddings for the semantic cache, and the similarity of a semantic hit in the ledger."""
    _execute_all(
        db,
        """
        CREATE TABLE semantic_cache (
          key        TEXT PRIMARY KEY,  -- the answer's exact-cache key
          scope      TEXT NOT NULL,     -- sha256 of model and settings: only these may match
          embedder   TEXT NOT NULL,     -- the embedding model that made the vector
          prompt     TEXT NOT NULL,     -- the text that was embedded
          vector     BLOB NOT NULL,     -- float32, unit length
          response   TEXT NOT NULL,
          created_at REAL NOT NULL
        );
        CREATE INDEX semantic_cache_scope ON semantic_cache (scope, embedder)
        """,
    )
    # A semantic hit's cosine similarity (a comment here would end up inside the table's SQL).
    db.execute("ALTER TABLE calls ADD COLUMN cache_similarity REAL")


def m004_cached_tokens(db: sqlite3.Connection) -> None:
    """Of a call's prompt tokens, those the endpoint served from its prompt (prefix) cache."""
    db.execute("ALTER TABLE calls ADD COLUMN cached_tokens INTEGER")


def m005_specs(db: sqlite3.Connection) -> None:
    """Specs kept once per hash in their own table; a run row keeps only the hash, so it stays small."""
    # Runs of one spec share its text, and ending a run rewrites a row of a few hundred bytes
    # rather than one carrying the whole spec (a 2,000-step spec is about a megabyte).
    # runs.spec_json stays, empty from here on: SQLite cannot drop a column with a constraint.
    _execute_all(
        db,
        """
        CREATE TABLE specs (
          spec_hash TEXT PRIMARY KEY,  -- sha256 of spec_json, as runs.spec_hash
          spec_json TEXT NOT NULL      -- the validated spec (or a gateway's config)
        );
        INSERT OR IGNORE INTO specs (spec_hash, spec_json)
          SELECT spec_hash, spec_json FROM runs WHERE spec_json != '';
        UPDATE runs SET spec_json = ''
        """,
    )


def m006_tenants(db: sqlite3.Connection) -> None:
    """The tenant a run worked for, and whose cached answers an entry is (NULL: no tenant)."""
    # A run's tenant scopes its cache lookups, and a resume keeps it; an entry's lets
    # `trilemma cache clear --tenant` forget one tenant's answers.
    db.execute("ALTER TABLE runs ADD COLUMN tenant TEXT")
    db.execute("ALTER TABLE cache ADD COLUMN tenant TEXT")


def m007_batches(db: sqlite3.Connection) -> None:
    """The batch a run belongs to and its line in the batch's inputs, so a batch can resume."""
    _execute_all(
        db,
        """
        ALTER TABLE runs ADD COLUMN batch_id TEXT;
        ALTER TABLE runs ADD COLUMN batch_line INTEGER;
        CREATE INDEX runs_batch ON runs (batch_id, batch_line)
        """,
    )


def m008_shared_budgets(db: sqlite3.Connection) -> None:
    """The ceiling a run shared with runs in other processes, as NAME=USD (never the store)."""
    # A resume reserves against it again, so finishing a run cannot escape its team's ceiling.
    db.execute("ALTER TABLE runs ADD COLUMN shared_budget TEXT")


def m009_time_scale(db: sqlite3.Connection) -> None:
    """The factor a run's simulated time was shortened by (1: the spec's own time; 0: a virtual clock)."""
    # compare, sweep and cliff run the simulator in scaled time: a run's latencies, its
    # ledger's and its predicted ones are this factor of the spec's as written.
    db.execute("ALTER TABLE runs ADD COLUMN time_scale REAL NOT NULL DEFAULT 1")


def m010_finish_reason(db: sqlite3.Connection) -> None:
    """Why the endpoint stopped generating a call's answer: stop, length (cut at max_tokens), ..."""
    # An answer cut at max_tokens is text that ends mid-sentence (or mid-JSON); the ledger
    # marks it and a run names the steps whose answers were cut. NULL: not reported.
    db.execute("ALTER TABLE calls ADD COLUMN finish_reason TEXT")


def m011_session_start(db: sqlite3.Connection) -> None:
    """When a run's latest session began (NULL: at started_at), so a resume counts a crashed session's time."""
    # A run's latency_s is the time its sessions spent running; a resume adds its own to
    # what the row holds, and a session that crashed counts up to its last journaled call.
    db.execute("ALTER TABLE runs ADD COLUMN session_started_at REAL")


def m012_pruned_calls(db: sqlite3.Connection) -> None:
    """The calls `trilemma prune` forgot of a run it keeps (a gateway key's): how many, and their bill."""
    # A gateway key's ceiling counts every call the key ever made: the run's totals add
    # these to the calls still journaled, so that forgetting old calls frees no budget.
    db.execute("ALTER TABLE runs ADD COLUMN pruned_calls INTEGER NOT NULL DEFAULT 0")
    db.execute("ALTER TABLE runs ADD COLUMN pruned_usd REAL NOT NULL DEFAULT 0")


def m013_overrides(db: sqlite3.Connection) -> None:
    """The --set PATH=VALUE a run was started with, as a JSON list (NULL: none)."""
    # A run's spec_json is the file with these set; a resume sets them on the file again
    # before it compares the two, so that only a change to the file itself counts.
    db.execute("ALTER TABLE runs ADD COLUMN overrides_json TEXT")


def m014_batch_plans(db: sqlite3.Connection) -> None:
    """A batch session's plan (runs at a time, lines, the planner's figures), for its report."""
    db.execute(
        "CREATE TABLE batch_plans (batch_id TEXT NOT NULL, started_at REAL NOT NULL, "
        "parallel INTEGER NOT NULL, lines INTEGER NOT NULL, plan_json TEXT NOT NULL, "
        "PRIMARY KEY (batch_id, started_at))"
    )


def m015_batch_sessions_ended(db: sqlite3.Connection) -> None:
    """What a batch session measured as it ended (its time, the runs it took to their end):
    a resumed line's run keeps only its last session's end."""
    db.execute("ALTER TABLE batch_plans ADD COLUMN ended_json TEXT")


MIGRATIONS: list[tuple[str, Callable[[sqlite3.Connection], None]]] = [
    ("m001_initial", m001_initial),
    ("m002_call_sends", m002_call_sends),
    ("m003_semantic_cache", m003_semantic_cache),
    ("m004_cached_tokens", m004_cached_tokens),
    ("m005_specs", m005_specs),
    ("m006_tenants", m006_tenants),
    ("m007_batches", m007_batches),
    ("m008_shared_budgets", m008_shared_budgets),
    ("m009_time_scale", m009_time_scale),
    ("m010_finish_reason", m010_finish_reason),
    ("m011_session_start", m011_session_start),
    ("m012_pruned_calls", m012_pruned_calls),
    ("m013_overrides", m013_overrides),
    ("m014_batch_plans", m014_batch_plans),
    ("m015_batch_sessions_ended", m015_batch_sessions_ended),
]

SCHEMA_VERSION = len(MIGRATIONS)
