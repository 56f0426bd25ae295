"""Kill a run with SIGKILL at a chosen moment, for the crash tests and the stress script;
commit to a journal as another process would, beside a test's runs."""

from __future__ import annotations

import contextlib
import os
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from trilemma.journal import Journal

CHAIN_SPEC = """\
version: 1
models:
  m: {usd_per_call: 0.01, latency_s: 0.03, latency_jitter: 0.5, p_ok: 0.7}
steps:
""" + "\n".join(
    f"  - {{id: s{i:02d}, model: m, retries: 6{', after: [s' + format(i - 1, '02d') + ']' if i else ''}}}"
    for i in range(20)
)


def ledger_key(journal: Journal, run_id: str) -> list[tuple[Any, ...]]:
    """What was sent and billed, independent of order and run id."""
    return sorted(
        (c["step_id"], c["attempt"], c["call"], c["outcome"], c["cost_usd"], c["state"])
        for c in journal.calls(run_id)
    )


def start_and_kill(spec: Path, db: Path, kill_after: float, seed: int = 5) -> str | None:
    """Start `trilemma run` in a subprocess; SIGKILL it ``kill_after`` s after its run appears."""
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "TRILEMMA_FAST_RETRIES": "1"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "trilemma", "run", str(spec), "--journal", str(db), "--seed", str(seed), "--json"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 30
        run_id = None
        while run_id is None and time.monotonic() < deadline and proc.poll() is None:
            if db.exists():
                try:
                    runs = Journal(db, create=False).runs()
                except Exception:
                    runs = []
                run_id = runs[0]["run_id"] if runs else None
            if run_id is None:
                time.sleep(0.005)
        time.sleep(kill_after)
        if proc.poll() is None:
            proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
        if run_id is None and db.exists():
            runs = Journal(db, create=False).runs()
            run_id = runs[0]["run_id"] if runs else None
        return run_id
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


@contextlib.contextmanager
def another_writer(db: Path, hold_s: float = 0.005, gap_s: float = 0.005) -> Iterator[None]:
    """While the block runs, a connection of its own commits to ``db`` over and over (holding
    the lock ``hold_s``), as a second `trilemma run` into the same journal would. The gap
    between its commits lets the block's writers in: SQLite's waiters poll, and without
    one they would starve."""
    stop = threading.Event()

    def commit_again_and_again() -> None:
        other = sqlite3.connect(db, isolation_level=None, timeout=30)
        while not stop.is_set():
            other.execute("BEGIN IMMEDIATE")
            time.sleep(hold_s)
            other.execute("COMMIT")
            time.sleep(gap_s)
        other.close()

    holder = threading.Thread(target=commit_again_and_again)
    holder.start()
    try:
        yield
    finally:
        stop.set()
        holder.join()
