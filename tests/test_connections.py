"""Every command and experiment closes the journal connections it opens.

Python 3.11's sqlite3 closes a connection left to the garbage collector silently; 3.13's warns
("unclosed database"), so a command that leaves its journal open prints a ResourceWarning
under ``python -X dev`` and fails a user's test suite that turns warnings into errors.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import EXAMPLES
from trilemma import Journal, load_workflow
from trilemma.errors import NotAJournal
from trilemma.experiments.compare import compare
from trilemma.experiments.sweep import Limits, budget_sweep


def _open(connection: sqlite3.Connection) -> bool:
    try:
        connection.execute("SELECT 1")
    except sqlite3.ProgrammingError:  # "Cannot operate on a closed database."
        return False
    return True


@pytest.fixture
def connections(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[sqlite3.Connection]]:
    """Every connection sqlite3 makes while the test runs (held, so none is collected)."""
    made: list[sqlite3.Connection] = []
    real = sqlite3.connect

    def tracked(*args: object, **kwargs: object) -> sqlite3.Connection:
        connection = real(*args, **kwargs)  # type: ignore[arg-type]
        made.append(connection)
        return connection

    monkeypatch.setattr(sqlite3, "connect", tracked)
    yield made
    for connection in made:
        connection.close()


def left_open(made: list[sqlite3.Connection]) -> list[sqlite3.Connection]:
    return [c for c in made if _open(c)]


QUICK = """\
version: 1
inputs:
  question: null
models:
  quick: {usd_per_call: 0.001, latency_s: 0.01, p_ok: 1.0}
steps:
  - {id: draft, model: quick, prompt: "Answer: {question}", retries: 1}
  - {id: check, model: quick, after: [draft]}
"""


def test_every_journal_command_closes_its_connections(
    cli, write, tmp_path: Path, connections
) -> None:
    spec, j = write(QUICK), tmp_path / "j.db"
    lines = tmp_path / "in.jsonl"
    lines.write_text('{"question": "a?"}\n{"question": "b?"}\n', encoding="utf-8")
    commands = [
        ("run", spec, "--input", "question=a?", "--seed", "1"),
        ("runs",),
        ("runs", "--json"),
        ("ledger", "latest"),
        ("report", "latest", "--out", tmp_path / "r.html"),
        ("doctor",),
        ("export", "latest", "--out", tmp_path / "e.jsonl"),
        ("resume", "latest"),
        ("prune", "--older-than", "30", "--dry-run"),
        ("cache", "stats"),
        ("cache", "clear", "--older-than", "30"),
        ("batch", spec, "--inputs", lines),
        ("batch", spec, "--inputs", lines, "--resume", "latest"),
        ("compare", spec, EXAMPLES / "single.yaml", "--runs", "2", "--input", "question=a?"),
        ("sweep", spec, "--max-cost", "0.002", "--runs", "2", "--input", "question=a?"),
        ("cliff", "--model", "quick", "--spec", spec, "--steps", "1,2", "--runs", "2"),
        ("calibrate", "--model", "quick", "--from-journal", j),
    ]  # fmt: skip
    for args in commands:
        got = cli(*args, "--journal", j) if args[0] != "calibrate" else cli(*args)
        assert got.code == 0, (args, got.err)
        assert connections, args
        assert left_open(connections) == [], f"trilemma {args[0]} left its journal open"


def test_commands_that_fail_close_their_connections(
    cli, write, tmp_path: Path, connections
) -> None:
    spec, j = write(QUICK), tmp_path / "j.db"
    assert cli("run", spec, "--input", "question=a?", "--journal", j).code == 0
    not_sqlite = tmp_path / "notes.db"
    not_sqlite.write_text("not a database, but a file someone named .db\n", encoding="utf-8")
    failing = [
        ("ledger", "nosuchrun", "--journal", j),  # the journal opened, then the id refused
        ("report", "nosuchrun", "--journal", j, "--out", tmp_path / "r.html"),
        ("resume", "nosuchrun", "--journal", j),
        ("run", spec, "--input", "question=a?", "--journal", not_sqlite),  # refused at open
        ("runs", "--journal", not_sqlite),
    ]
    for args in failing:
        assert cli(*args).code == 2, args
        assert left_open(connections) == [], f"trilemma {args[0]} left a journal open"


def test_a_journal_closes_at_the_end_of_its_with_block(tmp_path: Path, connections) -> None:
    with Journal(tmp_path / "j.db") as journal:
        assert journal.runs() == []
        assert left_open(connections) == [journal.db]
    assert left_open(connections) == []
    journal.close()  # a second close is harmless


def test_a_file_refused_as_a_journal_leaves_no_connection_open(
    tmp_path: Path, connections
) -> None:
    bad = tmp_path / "notes.db"
    bad.write_text("not a database\n", encoding="utf-8")
    with pytest.raises(NotAJournal):
        Journal(bad)
    assert connections and left_open(connections) == []


def test_an_experiment_given_a_path_closes_the_journal_it_opened(
    tmp_path: Path, connections
) -> None:
    wf = load_workflow(EXAMPLES / "single.yaml")
    compare([("single", wf)], 2, tmp_path / "c.db", time_scale=0.01)
    budget_sweep(wf, [Limits(max_cost_usd=0.05)], 2, tmp_path / "s.db", time_scale=0.01)
    assert connections and left_open(connections) == []
    with Journal(tmp_path / "mine.db") as mine:  # a journal given is the caller's to close
        compare([("single", wf)], 2, mine, time_scale=0.01)
        assert left_open(connections) == [mine.db]
