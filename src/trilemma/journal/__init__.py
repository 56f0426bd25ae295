"""The journal and ledger: one SQLite file (WAL) holding runs, steps, calls and the cache."""

from trilemma.journal.store import DEFAULT_PATH, Journal, JournalWriter

__all__ = ["DEFAULT_PATH", "Journal", "JournalWriter"]
