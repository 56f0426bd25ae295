"""Durable runs: crash and resume without paying twice; one journal, many processes; bad journals."""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
import os
import random
import re
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from trilemma import parse_workflow
from trilemma.errors import JournalError, NotAJournal
from trilemma.journal import Journal
from trilemma.journal.store import JournalWriter, map_sqlite_errors
from trilemma.run.session import execute
from trilemma.run.steps import answer_of
from trilemma.spec import Step
from trilemma.testing import Reply, ScriptedServer, fast_retries, interruptible

from .durable_helpers import CHAIN_SPEC, another_writer, ledger_key, start_and_kill


@pytest.fixture
def baseline(tmp_path_factory: pytest.TempPathFactory) -> tuple[list, dict]:
    """An uninterrupted run of the 20-step chain with seed 5."""
    d = tmp_path_factory.mktemp("baseline")
    journal = Journal(d / "j.db")
    with fast_retries():
        r = execute(parse_workflow(CHAIN_SPEC), journal=journal, seed=5)
    assert r.status == "ok"
    return ledger_key(journal, r.run_id), r.outputs


@pytest.mark.parametrize("kill_after", [0.0, 0.05, 0.15, 0.3, 0.6])
def test_killed_run_resumes_billing_every_call_once(
    cli, tmp_path: Path, baseline, kill_after: float
) -> None:
    expected_ledger, expected_outputs = baseline
    spec = tmp_path / "chain.yaml"
    spec.write_text(CHAIN_SPEC)
    db = tmp_path / "j.db"
    run_id = start_and_kill(spec, db, kill_after)
    assert run_id is not None
    in_flight = {
        c["idempotency_key"]
        for c in Journal(db, create=False).calls(run_id)
        if c["state"] == "started"
    }
    with fast_retries():
        r = cli("resume", run_id, "--journal", db, "--json")
    assert r.code == 0, r.err
    d = r.json()
    assert d["status"] == "ok"
    assert d["outputs"] == expected_outputs
    journal = Journal(db, create=False)
    assert ledger_key(journal, run_id) == expected_ledger  # nothing lost, nothing paid twice
    for c in journal.calls(run_id):  # only a call in flight at the crash is sent again
        assert c["sends"] == (2 if c["idempotency_key"] in in_flight else 1), c
    assert d["cost_usd"] == pytest.approx(sum(c[4] or 0 for c in expected_ledger))
    assert sum(s["cost_usd"] for s in d["steps"].values()) == pytest.approx(d["cost_usd"])
    assert journal.check()["integrity"] == "ok"
    # a chain's calls go one after another: the run's latency, over both sessions, holds them
    answered = sum(c["latency_s"] or 0.0 for c in journal.calls(run_id))
    assert d["latency_s"] >= 0.95 * answered, (d["latency_s"], answered)


def test_a_call_in_flight_at_the_kill_is_resent_under_its_own_key(
    cli, tmp_path: Path, baseline
) -> None:
    expected_ledger, _ = baseline
    spec = tmp_path / "chain.yaml"
    spec.write_text(CHAIN_SPEC)
    rng = random.Random(3)
    for attempt in range(20):  # kill until a call is caught in flight (most kills do)
        db = tmp_path / f"j{attempt}.db"
        run_id = start_and_kill(spec, db, rng.uniform(0.02, 0.4))
        assert run_id is not None
        calls = Journal(db, create=False).calls(run_id)
        in_flight = {c["idempotency_key"] for c in calls if c["state"] == "started"}
        if in_flight:
            break
    assert in_flight, "no kill landed while a call was in flight"
    with fast_retries():
        assert cli("resume", run_id, "--journal", db).code == 0
    journal = Journal(db, create=False)
    assert ledger_key(journal, run_id) == expected_ledger
    resent = {c["idempotency_key"] for c in journal.calls(run_id) if c["sends"] == 2}
    assert resent == in_flight


def test_doctor_reports_the_interrupted_run_until_it_is_resumed(cli, tmp_path: Path) -> None:
    spec = tmp_path / "chain.yaml"
    spec.write_text(CHAIN_SPEC)
    db = tmp_path / "j.db"
    run_id = start_and_kill(spec, db, 0.1)
    before = cli("doctor", "--journal", db, "--json").json()
    assert before["healthy"] and before["integrity"] == "ok"
    assert before["interrupted_runs"] == [run_id]
    text = cli("doctor", "--journal", db)
    assert f"`trilemma resume {run_id} --journal {db}`" in " ".join(text.out.split())
    listed = cli("runs", "--journal", db).out  # its row says running; its process is gone
    assert "interrupted" in listed and "`trilemma resume ID` finishes it" in " ".join(listed.split())
    assert cli("runs", "--journal", db, "--json").json()[0]["status"] == "running"  # the contract's
    assert cli("resume", run_id, "--journal", db).code == 0
    assert "interrupted" not in cli("runs", "--journal", db).out
    after = cli("doctor", "--journal", db, "--json").json()
    assert after["interrupted_runs"] == [] and after["orphaned_in_flight_calls"] == []


def test_the_ledger_tells_a_call_in_flight_now_from_one_a_crash_left(cli, tmp_path: Path) -> None:
    """`trilemma ledger` of a run going on in another terminal called its call in flight
    "IN FLIGHT at crash"."""
    db = tmp_path / "j.db"
    j = Journal(db)
    j.create_run({"run_id": "r", "spec_source": "s", "spec_json": '{"steps": []}',
                  "spec_hash": "h", "inputs_json": "{}", "status": "running",
                  "started_at": time.time(), "pid": os.getpid()})  # live: this process  # fmt: skip
    j.call_started(_call_row("r:a:1:1"))
    live = cli("ledger", "r", "--journal", db)
    assert live.code == 0 and "│ in flight" in live.out and "crash" not in live.out, live.out
    j.update_run("r", pid=2**22 + 7)  # no such process: the run was cut short
    crashed = cli("ledger", "r", "--journal", db)
    assert "IN FLIGHT at crash: may be billed" in crashed.out, crashed.out
    assert cli("ledger", "r", "--journal", db, "--json").json()[0]["in_flight"] is True


def test_doctor_flags_a_call_left_in_flight_by_a_run_that_ended(cli, tmp_path: Path) -> None:
    # No crash explains such a call (an older trilemma left a debate's calls so): say so,
    # rather than "all good".
    db = tmp_path / "j.db"
    r = execute(parse_workflow(CHAIN_SPEC), journal=Journal(db), seed=1)
    j = Journal(db)
    j.call_started({
        "run_id": r.run_id, "step_id": "s1", "attempt": 9, "call": 1, "role": "call",
        "model": "m", "idempotency_key": f"{r.run_id}:s1:9:1", "reserved_usd": 0.01,
        "request_json": "[]", "started_at": time.time(),
    })  # fmt: skip
    report = cli("doctor", "--journal", db, "--json").json()
    assert report["interrupted_runs"] == [] and report["orphaned_in_flight_calls"] == []
    (left,) = report["unsettled_calls_in_ended_runs"]
    assert (left["run_id"], left["step_id"], left["attempt"]) == (r.run_id, "s1", 9)
    text = cli("doctor", "--journal", db).out
    assert "never settled, though its run ended" in text and "all good" not in text


def test_a_journal_whose_tables_were_damaged_is_refused_by_name(cli, tmp_path: Path) -> None:
    # A damaged page can leave the schema's text saying something else: a column renamed,
    # which every later query would have met as a KeyError.
    db = tmp_path / "j.db"
    run_id = execute(parse_workflow(CHAIN_SPEC), journal=Journal(db), seed=1).run_id
    with sqlite3.connect(db) as raw:
        raw.execute("ALTER TABLE calls RENAME COLUMN state TO stqte")
    for args in (["doctor"], ["runs"], ["ledger", run_id], ["report", run_id]):
        r = cli(*args, "--journal", db)
        assert r.code == 2, (args, r.err)
        assert r.err.strip() == (f"trilemma: error: {db}: a damaged trilemma journal (table "
                                 "calls lacks state); restore it from a backup, or give another "
                                 "--journal")  # fmt: skip


@pytest.mark.parametrize(
    ("edit", "problem"),
    [
        ("UPDATE calls SET cost_usd = 'abc' WHERE step_id = 's03'", "cost_usd holds 'abc', not a number"),
        ("UPDATE calls SET prompt_tokens = 'many'", "prompt_tokens holds 'many', not an integer"),
        ("UPDATE calls SET request_json = '[['", "request_json holds '[[', not a JSON array"),
        ("UPDATE runs SET started_at = 'yesterday'", "started_at holds 'yesterday', not a number"),
        ("UPDATE runs SET inputs_json = '7'", "inputs_json holds '7', not a JSON object"),
        # the planner's figures the run's page reads (a key of them, and a key of a key)
        ("UPDATE runs SET predicted_json = json_set(predicted_json, '$.under_budget', json('[1]'))",
         "predicted_json's under_budget holds '[1]', not a JSON object"),
        ("UPDATE runs SET predicted_json = json_set(predicted_json, '$.latency_s.worst', 'long')",
         "predicted_json's latency_s.worst holds 'long', not a number"),
        # the journaled spec's steps the run's page lists (a run row reads it joined)
        ("UPDATE specs SET spec_json = json_set(spec_json, '$.steps', 'x')",
         "spec_json's steps holds 'x', not a JSON array"),
        ("UPDATE specs SET spec_json = json_set(spec_json, '$.steps[1]', 7)",
         "spec_json's steps[1] holds '7', not a JSON object"),
        ("UPDATE specs SET spec_json = json_remove(spec_json, '$.steps[0].id')",
         "spec_json's steps[0].id holds nothing, not text"),
        ("UPDATE steps SET attempts = x'00'", "attempts holds \"b'\\\\x00'\", not an integer"),
    ],
)
def test_a_row_another_tool_damaged_is_named_never_a_traceback(
    cli, tmp_path: Path, edit: str, problem: str
) -> None:
    """The tables are sound but a row holds what trilemma never writes (SQLite keeps any
    value in any column): every command that reads it names the row and exits 2, resume
    changes nothing, and doctor lists the row."""
    db = tmp_path / "j.db"
    run_id = execute(parse_workflow(CHAIN_SPEC), journal=Journal(db), seed=1).run_id
    assert cli("doctor", "--journal", db).code == 0
    with sqlite3.connect(db) as raw:
        raw.execute(edit)
    table = {"specs": "runs"}.get(edit.split()[1], edit.split()[1])  # a run's row holds its spec
    readers = [["report", run_id], ["export", run_id], ["resume", run_id, "--force"]]
    if table != "steps":  # the ledger reads the run and its calls
        readers += [["ledger", run_id], ["ledger", run_id, "--json"]]
    if table == "runs":
        readers += [["runs"], ["runs", "--json"]]
    for args in readers:
        r = cli(*args, "--journal", db)
        assert r.code == 2, (args, r.err)
        assert "Traceback" not in r.err and len(r.err.strip().splitlines()) == 1
        assert f"{db}: a damaged row in the journal (table {table}, run_id {run_id}" in r.err
        assert problem in r.err and "`trilemma doctor` lists such rows" in r.err
    with sqlite3.connect(db) as raw:
        assert raw.execute("SELECT status FROM runs").fetchone()[0] == "ok"  # resume touched nothing
    report = cli("doctor", "--journal", db, "--json")
    assert report.code == 1 and not report.json()["healthy"]
    found = report.json()["damaged_rows"]
    assert 1 <= len(found) <= 20 and problem in found[0]
    assert "rows hold values trilemma never writes" in cli("doctor", "--journal", db).out


def test_a_damaged_cache_entry_is_a_miss_and_the_run_goes_on(cli, tmp_path: Path) -> None:
    """A cached answer stored as bytes (SQLite took it): doctor names the entry, the next
    run asks the model rather than raise mid-run, and its answer replaces the entry (the
    first answer cached under a key otherwise stays)."""
    spec = parse_workflow("""
version: 1
models: {m: {usd_per_call: 0.01, latency_s: 0.001, p_ok: 1.0}}
steps: [{id: a, model: m, cached: true}, {id: b, model: m, after: [a]}]
""")
    db = tmp_path / "j.db"
    assert execute(spec, journal=Journal(db), seed=1).calls == 2
    assert execute(spec, journal=Journal(db), seed=1).calls == 1  # a is served from the cache
    with sqlite3.connect(db) as raw:
        raw.execute("UPDATE cache SET response = x'00ff'")
    out = cli("doctor", "--journal", db)
    assert out.code == 1 and "damaged row: table cache, key " in out.out
    assert "the next answer replaces it" in " ".join(out.out.split())
    again = execute(spec, journal=Journal(db), seed=1)
    assert (again.status, again.calls) == ("ok", 2)  # missed, asked, and put back
    assert cli("doctor", "--journal", db).code == 0
    assert execute(spec, journal=Journal(db), seed=1).calls == 1  # served again


def test_the_first_answer_cached_under_a_key_stays_unless_its_row_was_damaged(tmp_path: Path) -> None:
    j = Journal(tmp_path / "j.db")
    row = {"key": "k", "model": "m", "prompt_tokens": 3, "completion_tokens": 1, "created_at": 1.0}
    j.cache_put({**row, "response": "first"})
    j.cache_put({**row, "response": "second"})
    assert j.cache_get("k")["response"] == "first"
    j.db.execute("UPDATE cache SET prompt_tokens = 'three'")
    assert j.cache_get("k") is None  # a miss, not a crash
    j.cache_put({**row, "response": "third"})
    assert (j.cache_get("k")["response"], j.cache_get("k")["prompt_tokens"]) == ("third", 3)


def test_doctor_reports_a_failed_integrity_check_without_reading_rows(cli, tmp_path: Path) -> None:
    db = tmp_path / "j.db"
    execute(parse_workflow(CHAIN_SPEC), journal=Journal(db), seed=1)
    with sqlite3.connect(db) as raw:  # an index that no longer matches its table
        raw.execute("PRAGMA writable_schema = ON")
        raw.execute("UPDATE sqlite_master SET sql = replace(sql, '(batch_id, batch_line)', "
                    "'(run_id, batch_line)') WHERE name = 'runs_batch'")  # fmt: skip
    report = cli("doctor", "--journal", db, "--json")
    assert report.code == 1 and not report.json()["healthy"]
    assert report.json()["runs"] is None and report.json()["integrity"] != "ok"
    text = cli("doctor", "--journal", db).out
    assert "the file is damaged: restore it from a backup" in text and "all good" not in text


def test_steps_done_before_the_crash_are_not_called_again(cli, tmp_path: Path) -> None:
    spec = tmp_path / "chain.yaml"
    spec.write_text(CHAIN_SPEC)
    db = tmp_path / "j.db"
    run_id = start_and_kill(spec, db, 0.3)
    done_before = set(Journal(db, create=False).steps(run_id))
    d = cli("resume", run_id, "--journal", db, "--json").json()
    from_journal = {k for k, s in d["steps"].items() if s["from_journal"]}
    assert from_journal == done_before
    before = Journal(db, create=False).steps(run_id)
    for k in from_journal:  # what each was billed then, not $0 (the run's cost counts it)
        assert before[k]["cost_usd"] > 0
        assert d["steps"][k]["cost_usd"] == pytest.approx(before[k]["cost_usd"])
    assert sum(s["cost_usd"] for s in d["steps"].values()) == pytest.approx(d["cost_usd"])


def test_resuming_a_run_that_finished_says_there_was_nothing_to_do(cli, tmp_path: Path) -> None:
    spec = tmp_path / "chain.yaml"
    spec.write_text(CHAIN_SPEC.replace("p_ok: 0.7", "p_ok: 1.0"))
    db = tmp_path / "j.db"
    first = cli("run", spec, "--journal", db, "--json").json()
    assert first["status"] == "ok"
    r = cli("resume", first["run_id"], "--journal", db)
    assert r.code == 0 and "had already finished ok" in r.err and "nothing was sent" in r.err
    assert len(Journal(db, create=False).calls(first["run_id"])) == first["calls"]
    failed = cli("run", spec, "--journal", db, "--max-cost", "0.05", "--json").json()
    assert failed["status"] == "budget_exhausted"  # a run that stopped: no such note
    assert "already finished" not in cli("resume", failed["run_id"], "--journal", db).err


DEBATE_ON_AN_ENDPOINT = """\
version: 1
models:
  real: {{provider: openai, base_url: "{url}", model: m1, usd_per_1m_input: 1000.0,
          usd_per_1m_output: 2000.0, latency_s: 0.1, p_ok: 0.9, timeout_s: 60}}
steps:
  - {{id: d, model: real, debate: {{agents: 3, rounds: 2}}, retries: 1}}
"""


def kill_when_sent(srv: ScriptedServer, requests: int, spec: Path, db: Path) -> None:
    """``trilemma run SPEC`` in a subprocess, killed with SIGKILL once ``srv`` has had
    ``requests`` requests."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "trilemma", "run", str(spec), "--journal", str(db), "--json"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env={**os.environ},
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 30
        while len(srv.requests) < requests:
            assert proc.poll() is None and time.monotonic() < deadline, "it did not get there"
            time.sleep(0.01)
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_a_debates_answers_before_a_crash_are_not_asked_again_on_resume(
    cli, tmp_path: Path
) -> None:
    """A real endpoint answered the debate's first round, then the process died in the
    second: the resume asks only the second round again (its calls were in flight), uses the
    first round's journaled answers, and bills each call once."""
    released = threading.Event()
    seen = [0]

    def script(payload: dict[str, Any]) -> Reply:  # the server calls it under its lock
        seen[0] += 1
        hang = seen[0] > 3 and not released.is_set()  # the second round, until the kill
        return Reply("the answer is 4", delay_s=5.0 if hang else 0.0)

    with ScriptedServer(script) as srv:
        spec = tmp_path / "debate.yaml"
        spec.write_text(DEBATE_ON_AN_ENDPOINT.format(url=srv.url))
        db = tmp_path / "j.db"
        kill_when_sent(srv, 6, spec, db)  # the second round is in flight
        journal = Journal(db, create=False)
        (run,) = journal.runs()
        before = {c["call"]: c for c in journal.calls(run["run_id"])}
        assert [before[i]["state"] for i in (1, 2, 3)] == ["finished"] * 3
        assert {before[i]["outcome"] for i in (1, 2, 3)} == {None}  # answered, no verdict yet
        assert [before[i]["state"] for i in (4, 5, 6)] == ["started"] * 3
        shown = cli("ledger", run["run_id"], "--journal", db, "--json").json()
        assert [r["outcome"] for r in shown] == ["answered"] * 3 + ["in_flight"] * 3
        table = " ".join(cli("ledger", run["run_id"], "--journal", db).out.split())
        assert table.count("answered, its attempt cut short: billed; a resume uses it") == 3
        released.set()  # the endpoint answers at once from now on
        r = cli("resume", run["run_id"], "--journal", db, "--json")
        assert r.code == 0, r.err
        keys = [q["headers"]["idempotency-key"] for q in srv.requests]
    sent = {k: keys.count(k) for k in keys}
    assert sorted(sent.values()) == [1, 1, 1, 2, 2, 2]  # the first round was asked once
    assert {k.rsplit(":", 1)[1] for k, n in sent.items() if n == 2} == {"4", "5", "6"}
    d = r.json()
    after = journal.calls(run["run_id"])
    assert [c["outcome"] for c in after] == ["ok"] * 6 and all(c["attempt"] == 1 for c in after)
    one = (11 * 1000.0 + 7 * 2000.0) / 1e6  # every call's usage: 11 tokens in, 7 out
    assert [c["cost_usd"] for c in after] == pytest.approx([one] * 6)
    assert [c["sends"] for c in after] == [1, 1, 1, 2, 2, 2]
    assert d["status"] == "ok" and d["cost_usd"] == pytest.approx(6 * one)
    assert d["steps"]["d"]["attempts"] == 1 and d["steps"]["d"]["cost_usd"] == pytest.approx(6 * one)


def resumed_after_a_crash_in_the_retry(
    cli, tmp_path: Path, first: list[str], kind: str
) -> tuple[list[dict[str, Any]], Any]:
    """A gated step (``kind``: what its YAML adds to a plain call) whose first attempt the scripted server answers with
    ``first``, rejected, killed while its retry's calls (as many) are in flight, then resumed
    with the server answering "42" at once: every request the server saw, and the resume."""
    released = threading.Event()
    seen = [0]

    def script(payload: dict[str, Any]) -> Reply:  # the server calls it under its lock
        seen[0] += 1
        if seen[0] <= len(first):
            return Reply(first[seen[0] - 1])
        return Reply("42", delay_s=0.0 if released.is_set() else 5.0)

    with ScriptedServer(script) as srv:
        spec = tmp_path / "gated.yaml"
        spec.write_text(DEBATE_ON_AN_ENDPOINT.format(url=srv.url).replace(
            ", debate: {agents: 3, rounds: 2}", kind + r", gate: {regex: '^\d+$'}"))
        db = tmp_path / "j.db"
        kill_when_sent(srv, 2 * len(first), spec, db)  # the retry is in flight
        (run,) = Journal(db, create=False).runs()
        released.set()
        r = cli("resume", run["run_id"], "--journal", db, "--json")
        assert r.code == 0, r.err
        return list(srv.requests), r


def test_a_retry_resumed_after_a_crash_still_tells_the_model_why_it_was_rejected(
    cli, tmp_path: Path
) -> None:
    """The gate rejected the first answer, and the process died while the retry, which told
    the model why, was in flight: the resume sends that retry as it was, reason included."""
    requests, r = resumed_after_a_crash_in_the_retry(cli, tmp_path, ["about forty"], "")
    sent = [q["json"]["messages"] for q in requests]
    assert len(sent) == 3 and sent[2] == sent[1]  # the retry, sent again as it was
    assert sent[2][-2] == {"role": "assistant", "content": "about forty"}
    assert "rejected: the answer must match the regular expression" in sent[2][-1]["content"]
    assert r.json()["outputs"] == {"d": "42"}


def test_a_gated_votes_retry_resumed_after_a_crash_still_tells_the_model_why(
    cli, tmp_path: Path
) -> None:
    """As above for a vote, whose rejected answer is its samples' majority, kept by the
    journal only as the samples: the resume picks it again and sends the retry as it was."""
    requests, r = resumed_after_a_crash_in_the_retry(  # "about forty" wins two to one
        cli, tmp_path, ["About  forty ", "41", "About  forty "], ", vote: {samples: 3}")
    sent: dict[str, list[Any]] = {}
    for q in requests:
        sent.setdefault(q["headers"]["idempotency-key"], []).append(q["json"]["messages"])
    retried = [m for m in sent.values() if len(m) == 2]
    assert len(sent) == 6 and len(retried) == 3  # the retry's samples, each sent twice
    for before, after in retried:
        assert after == before  # as the killed process sent it
        assert after[-2] == {"role": "assistant", "content": "About  forty"}
        assert "rejected: the answer must match the regular expression" in after[-1]["content"]
    assert r.json()["outputs"] == {"d": "42"}


def _step(**kind: Any) -> Step:
    return Step.model_validate({"id": "s", "model": "m", **kind})


@pytest.mark.parametrize(("step", "calls", "answer"), [
    (_step(), [("call", " 7 ")], "7"),
    (_step(debate_rounds=1), [("call", "7"), ("refine 1", "8")], "8"),
    (_step(debate={"agents": 2, "rounds": 2, "judge": True}),
     [("agent 1 round 1", "1"), ("agent 2 round 1", "2"), ("agent 1 round 2", "2"),
      ("agent 2 round 2", "2"), ("judge", " 3")], "3"),
    (_step(debate={"agents": 3, "rounds": 2}),
     [("agent 1 round 1", "1"), ("agent 2 round 1", "1"), ("agent 3 round 1", "1"),
      ("agent 1 round 2", "5"), ("agent 2 round 2", "6"), ("agent 3 round 2", "6")], "6"),
    (_step(vote={"samples": 2}), [("sample 1", "a"), ("sample 2", "b")], "a"),  # a tie: the first
    (_step(route={"easy": {"model": "m", "share": 0.5},
                  "hard": {"model": "m", "share": 0.5, "vote": {"samples": 3}}}),
     [("route: hard", "hard"), ("sample 1", "x"), ("sample 2", "y"), ("sample 3", "y")], "y"),
    (_step(vote={"samples": 2}), [("sample 1", "a"), ("sample 2", None)], None),
    (_step(), [], None),
], ids=["call", "refined", "judge", "debate majority", "vote tie", "routed", "unanswered", "none"])  # fmt: skip
def test_the_journal_gives_back_the_answer_an_attempt_picked(
    step: Step, calls: list[tuple[str, str | None]], answer: str | None
) -> None:
    assert answer_of(step, [{"role": r, "response": t} for r, t in calls]) == answer


def test_a_debate_the_ceiling_stopped_mid_round_resumes_from_its_answers(
    cli, tmp_path: Path
) -> None:
    """The ceiling let two of a round's three calls go: their answers are billed and kept
    without a verdict, and a resume under a higher ceiling asks only what is left."""
    with ScriptedServer() as srv:
        spec = tmp_path / "debate.yaml"
        spec.write_text(DEBATE_ON_AN_ENDPOINT.format(url=srv.url).replace(
            "usd_per_1m_input: 1000.0,\n          usd_per_1m_output: 2000.0,", "usd_per_call: 0.01,"))
        db = tmp_path / "j.db"
        stopped = cli("run", spec, "--journal", db, "--max-cost", "0.025", "--json")
        assert stopped.code == 1 and stopped.json()["status"] == "budget_exhausted"
        run_id = stopped.json()["run_id"]
        shown = cli("ledger", run_id, "--journal", db, "--json").json()
        assert [r["outcome"] for r in shown] == ["answered"] * 2
        assert cli("runs", "--journal", db, "--json").json()[0]["cost_usd"] == pytest.approx(0.02)
        r = cli("resume", run_id, "--journal", db, "--max-cost", "1", "--json")
        assert r.code == 0, r.err
        keys = [q["headers"]["idempotency-key"] for q in srv.requests]
    assert len(keys) == 6 and len(set(keys)) == 6  # two, then four: none asked twice
    d = r.json()
    calls = Journal(db, create=False).calls(run_id)
    assert [(c["attempt"], c["outcome"], c["sends"]) for c in calls] == [(1, "ok", 1)] * 6
    assert d["cost_usd"] == pytest.approx(0.06)
    assert d["steps"]["d"]["attempts"] == 1 and d["steps"]["d"]["cost_usd"] == pytest.approx(0.06)


def test_resume_counts_spend_before_the_crash_against_the_ceiling(cli, tmp_path: Path) -> None:
    spec = tmp_path / "wide.yaml"
    spec.write_text("version: 1\nmodels:\n  m: {usd_per_call: 0.01, latency_s: 0.05, p_ok: 1.0}\nsteps:\n"
                    + "\n".join(f"  - {{id: s{i}, model: m, after: [{'s' + str(i - 1) if i else ''}]}}"
                                .replace("after: []", "after: []") for i in range(30))
                    + "\nbudget: {max_cost_usd: 0.205}\n")  # fmt: skip
    db = tmp_path / "j.db"
    run_id = start_and_kill(spec, db, 0.4)
    spent = Journal(db, create=False).spent(run_id)
    d = cli("resume", run_id, "--journal", db, "--json").json()
    assert d["status"] == "budget_exhausted"
    assert d["cost_usd"] <= 0.205 + 1e-12
    assert d["cost_usd"] >= spent
    assert len(d["outputs"]) == 20
    more = cli("resume", run_id, "--journal", db, "--max-cost", "1", "--json").json()
    assert more["status"] == "ok" and more["cost_usd"] == pytest.approx(0.30)


def _cut_after_a(cli, tmp_path: Path) -> tuple[Path, dict[str, Any]]:
    """A chain a -> b -> c of 0.2 s calls run under a 0.3 s deadline: a done, b cut in flight."""
    spec = tmp_path / "slow.yaml"
    spec.write_text("version: 1\nmodels:\n  m: {usd_per_call: 0.01, latency_s: 0.2, p_ok: 1.0}\nsteps:\n"
                    "  - {id: a, model: m}\n  - {id: b, model: m, after: [a]}\n  - {id: c, model: m, after: [b]}\n")  # fmt: skip
    db = tmp_path / "j.db"
    return db, cli("run", spec, "--journal", db, "--deadline", "0.3", "--json").json()


def test_resume_keeps_the_original_deadline_unless_given_a_new_one(cli, tmp_path: Path) -> None:
    db, first = _cut_after_a(cli, tmp_path)
    assert first["status"] == "deadline" and list(first["outputs"]) == ["a"]
    again = cli("resume", first["run_id"], "--journal", db, "--json").json()
    assert again["status"] == "deadline" and again["calls"] == first["calls"]
    # it says that nothing was sent, not that calls in flight were cancelled, and what to give
    assert again["error"] == ("the run's deadline had passed before anything was sent; a resume "
                              "takes a new one with --deadline SECONDS")  # fmt: skip
    # a new deadline too short for the first call to go out: it says what it left, not that
    # the deadline had passed already (as if none had been given)
    short = cli("resume", first["run_id"], "--journal", db, "--deadline", "0.00001", "--json")
    assert short.json()["status"] == "deadline" and short.json()["calls"] == first["calls"]
    assert short.json()["error"] == ("the run's deadline passed before any call was sent (it "
                                     "left 0.01 ms); a resume takes a longer one with --deadline "
                                     "SECONDS")  # fmt: skip
    finished = cli("resume", first["run_id"], "--journal", db, "--deadline", "5", "--json").json()
    assert finished["status"] == "ok"
    assert finished["steps"]["a"]["from_journal"] and set(finished["outputs"]) == {"a", "b", "c"}


def test_resume_says_before_it_goes_on_when_its_budgets_stop_it(cli, tmp_path: Path) -> None:
    db, first = _cut_after_a(cli, tmp_path)
    assert first["status"] == "deadline" and list(first["outputs"]) == ["a"]  # b cut in flight
    with Journal(db) as j:
        assert j.called_steps(first["run_id"]) == {"a", "b"}
        assert j.called_steps(first["run_id"] + "0") == j.called_steps("nope") == set()
    # the steps left that sent no call are c alone (b may replay what it was sent): 0.20s, $0.01
    short = cli("resume", first["run_id"], "--journal", db, "--deadline", "0.1", "--max-cost", "0.015")
    assert short.code == 1
    assert short.err.splitlines()[:2] == [
        "trilemma: note: budget: even without a retry the steps left cost $0.0100, over the "
        "$0.0050 left of the $0.0150 ceiling, so the run stops budget_exhausted before the end; "
        "--max-cost gives the run a higher one",
        "trilemma: note: deadline: the critical path of the steps left (0.20s) is over 0.1s, so "
        "the run is cut before the end",
    ]  # fmt: skip
    fits = cli("resume", first["run_id"], "--journal", db, "--deadline", "5", "--max-cost", "1")
    assert fits.code == 0 and "note:" not in fits.err
    done = cli("resume", first["run_id"], "--journal", db, "--deadline", "0.01", "--max-cost", "0")
    assert "trilemma: note: budget" not in done.err and "trilemma: note: deadline" not in done.err


def test_resume_predicts_the_steps_left_under_what_is_left_of_its_budgets(cli, tmp_path) -> None:
    """A resume's table (and --json) sets the Monte Carlo of the steps it had left, under
    the ceiling's room and the deadline from now, beside what it measured, and says how to
    finish a run its budget stopped again; without budgets it has no such prediction."""
    db, first = _cut_after_a(cli, tmp_path)  # a done ($0.01), b cut in flight, c not begun
    short = cli("resume", first["run_id"], "--journal", db, "--max-cost", "0.025", "--deadline", "5",
                "--json")  # fmt: skip
    assert short.code == 1 and short.json()["status"] == "budget_exhausted"
    under = short.json()["predicted_under_budget"]
    # b and c cost $0.02, over the $0.015 left: no drawn run gets to the end
    assert (under["steps_left"], under["success_rate"], under["budget_exhausted_rate"]) == (2, 0.0, 1.0)
    again = cli("resume", first["run_id"], "--journal", db, "--max-cost", "0.025", "--deadline", "5")
    assert again.code == 1
    rows = {line.split("│")[1].strip(): line.split("│")[2].strip()
            for line in again.out.splitlines() if line.count("│") == 4}  # fmt: skip
    assert rows["under its budget, the 1 step left"] == (  # b ran ($0.01) before c was refused
        "0.00% (Monte Carlo, $0.0050 left of the $0.0250 ceiling and 5s deadline)")
    said = " ".join(again.out.split())  # the hints wrap at the journal's path
    assert f"to finish this run: trilemma resume {first['run_id'][-8:]} --journal {db} --max-cost 0.03 " \
           "(the worst case" in said  # the whole run's, as its ceiling is of the whole run
    under = cli("resume", first["run_id"], "--journal", db, "--max-cost", "0", "--deadline", "5",
                "--json").json()["predicted_under_budget"]  # fmt: skip
    assert (under["steps_left"], under["budget_exhausted_rate"]) == (1, 1.0)  # under what was spent
    done = cli("resume", first["run_id"], "--journal", db, "--max-cost", "1", "--deadline", "5")
    assert done.code == 0
    assert "100.00% (Monte Carlo, $0.9800 left of the $1.0000 ceiling and 5s deadline)" in done.out
    page = tmp_path / "run.html"  # the run's page says the same, beside its first Monte Carlo's
    assert cli("report", first["run_id"], "--journal", db, "--out", page).code == 0
    text = " ".join(re.sub(r"<[^>]+>", " ", page.read_text()).split())
    assert ("under its budget, the 1 step left 100.00% (Monte Carlo, $0.9800 left of the $1.0000 "
            "ceiling and 5s deadline)") in text  # fmt: skip
    assert "under the budget it started with 0.00% (Monte Carlo, 0.3s deadline)" in text
    assert "to finish this run" not in done.out
    ok = cli("resume", first["run_id"], "--journal", db, "--deadline", "5", "--json").json()
    assert ok["status"] == "ok" and ok["predicted_under_budget"] is None  # nothing was left


def test_a_resumes_display_counts_against_the_budgets_it_resumes_under(
    cli, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The display on a terminal sets spend against the resume's ceiling (a new one of $0
    included: it showed the run's old one) and time against the deadline it keeps (it
    showed none when the run kept its own)."""
    from trilemma.cli import runs

    given: list[tuple[Any, ...]] = []
    real = runs._RunDisplay

    def seen(steps: int, ceiling: float | None, deadline: float | None, enabled: bool,
             time_scale: float = 1.0) -> Any:  # fmt: skip
        given.append((steps, ceiling, deadline))
        return real(steps, ceiling, deadline, enabled, time_scale)

    monkeypatch.setattr(runs, "_RunDisplay", seen)
    db, first = _cut_after_a(cli, tmp_path)  # under 0.3 s, no ceiling
    cli("resume", first["run_id"], "--journal", db, "--max-cost", "0", "--deadline", "5")
    cli("resume", first["run_id"], "--journal", db)  # keeps the 5 s just given, less the time gone
    assert given[0] == (3, None, 0.3)  # the run's own
    assert given[1] == (3, 0.0, 5.0)
    assert given[2][:2] == (3, 0.0) and 4.0 < given[2][2] < 5.0


def test_a_resume_without_budgets_predicts_nothing_under_them(cli, tmp_path: Path) -> None:
    spec = tmp_path / "s.yaml"
    spec.write_text("version: 1\nmodels:\n  m: {usd_per_call: 0.01, latency_s: 0.01, p_ok: 1.0}\n"
                    "steps:\n  - {id: a, model: m}\n  - {id: b, model: m, after: [a]}\n")  # fmt: skip
    db = tmp_path / "j.db"
    first = cli("run", spec, "--journal", db, "--max-cost", "0.015", "--json").json()
    assert first["status"] == "budget_exhausted"
    with Journal(db) as j:  # the run's ceiling forgotten, as a run begun without one
        j.db.execute("UPDATE runs SET max_cost_usd = NULL")
        j.db.commit()
    again = cli("resume", first["run_id"], "--journal", db, "--json")
    assert again.json()["status"] == "ok" and again.json()["predicted_under_budget"] is None


def test_changed_spec_is_refused_unless_forced(cli, tmp_path: Path) -> None:
    spec = tmp_path / "chain.yaml"
    spec.write_text(CHAIN_SPEC)
    db = tmp_path / "j.db"
    run_id = start_and_kill(spec, db, 0.1)
    spec.write_text(
        CHAIN_SPEC.replace("{id: s05, model: m, retries: 6", "{id: s05, model: m, retries: 2")
    )
    refused = cli("resume", run_id, "--journal", db)
    assert refused.code == 2
    assert "changed since run" in refused.err and "s05" in refused.err and "--force" in refused.err
    forced = cli("resume", run_id, "--journal", db, "--force", "--json")
    assert forced.code in (0, 1) and forced.json()["steps"]["s05"]["from_journal"] is False


def test_export_writes_json_lines(cli, tmp_path: Path) -> None:
    from .conftest import EXAMPLES

    db = tmp_path / "j.db"
    run = cli("run", EXAMPLES / "diamond.yaml", "--journal", db, "--seed", "2", "--json").json()
    out = tmp_path / "run.jsonl"
    assert cli("export", run["run_id"], "--journal", db, "--out", out).code == 0
    records = [json.loads(line) for line in out.read_text().splitlines()]
    assert records[0]["type"] == "run" and records[0]["run_id"] == run["run_id"]
    assert sum(r["type"] == "call" for r in records) == run["calls"]
    assert {r["step_id"] for r in records if r["type"] == "step"} <= {
        "plan",
        "search",
        "debate",
        "join",
    }
    assert cli("export", "nope", "--journal", db).code == 2


@pytest.mark.parametrize("round_", range(2))
def test_eight_processes_share_one_journal(tmp_path: Path, round_: int) -> None:
    """Many writers on one WAL file: every record present, integrity intact (a fresh file too)."""
    spec = tmp_path / "fan.yaml"
    spec.write_text("version: 1\nmodels:\n  m: {usd_per_call: 0.001, latency_s: 0.002, p_ok: 0.8}\nsteps:\n"
                    + "\n".join(f"  - {{id: s{i}, model: m, retries: 8}}" for i in range(60)))  # fmt: skip
    db = tmp_path / "shared.db"
    if round_ == 0:
        Journal(db).close()  # created before the race; round 1 races to create it
    procs = [subprocess.Popen([sys.executable, "-m", "trilemma", "run", str(spec), "--journal", str(db),
                               "--seed", str(seed), "--json"], stdout=subprocess.PIPE, text=True)
             for seed in range(8)]  # fmt: skip
    results = [json.loads(p.communicate(timeout=120)[0]) for p in procs]
    assert all(p.returncode == 0 for p in procs)
    journal = Journal(db, create=False)
    assert {r["run_id"] for r in results} == {r["run_id"] for r in journal.runs()}
    for r in results:
        assert len(journal.calls(r["run_id"])) == r["calls"]
        assert len(journal.steps(r["run_id"])) == 60
        assert journal.spent(r["run_id"]) == pytest.approx(r["cost_usd"])
    assert [row[0] for row in journal.db.execute("PRAGMA integrity_check")] == ["ok"]


def test_unknown_run_id_is_bad_input(cli, tmp_path: Path) -> None:
    db = tmp_path / "j.db"
    Journal(db)
    r = cli("resume", "20990101T000000Z-00000000", "--journal", db)
    assert r.code == 2 and "is not in" in r.err and "trilemma runs" in r.err


def test_a_file_that_is_not_a_journal_is_refused_and_left_alone(cli, tmp_path: Path) -> None:
    text = tmp_path / "notes.txt"
    text.write_text("hello")
    r = cli("runs", "--journal", text)
    assert r.code == 2 and "not a trilemma journal" in r.err
    assert text.read_text() == "hello"
    other = tmp_path / "other.db"
    sqlite3.connect(other).execute("CREATE TABLE x (a)").connection.commit()
    r = cli("runs", "--journal", other)
    assert r.code == 2 and "not a trilemma journal" in r.err


def test_a_journal_path_that_cannot_be_opened_is_bad_input(cli, tmp_path: Path) -> None:
    """A --journal in a folder that cannot be made, or a file SQLite cannot open: exit 2."""
    spec = Path(__file__).parents[1] / "examples" / "single.yaml"
    blocker = tmp_path / "a-file"
    blocker.write_text("x")
    r = cli("run", spec, "--journal", blocker / "j.db")
    assert r.code == 2 and "cannot create its folder" in r.err and "--journal" in r.err
    assert len(r.err.strip().splitlines()) == 1
    if Path("/proc/self").is_dir():  # a folder where no file can be made, even by root
        r = cli("run", spec, "--journal", "/proc/j.db")
        assert r.code == 2 and "unable to open" in r.err and "folder exists" in r.err
        assert len(r.err.strip().splitlines()) == 1


def test_a_corrupted_journal_is_refused(cli, tmp_path: Path) -> None:
    db = tmp_path / "j.db"
    Journal(db).close()
    data = bytearray(db.read_bytes())
    rng = random.Random(1)
    for i in range(100, len(data)):
        data[i] = rng.randrange(256)
    db.write_bytes(bytes(data))
    r = cli("runs", "--journal", db)
    assert r.code == 2 and "journal" in r.err
    assert len(r.err.strip().splitlines()) == 1


def test_a_journal_from_a_newer_trilemma_is_refused(cli, tmp_path: Path) -> None:
    db = tmp_path / "j.db"
    j = Journal(db)
    j.db.execute("INSERT INTO trilemma_migrations (name, applied_at) VALUES ('m999_future', 0)")
    j.close()
    r = cli("runs", "--journal", db)
    assert r.code == 2 and "newer trilemma" in r.err and "m999_future" in r.err


@pytest.mark.parametrize(
    ("message", "expected"),
    [
        ("attempt to write a readonly database", "read-only"),
        ("database or disk is full", "disk is full"),
    ],
)
def test_read_only_and_full_disk_errors_say_what_to_do(message: str, expected: str) -> None:
    """Root ignores file modes here, so the mapping is checked on the error sqlite3 raises."""
    with pytest.raises(JournalError, match=expected) as info, map_sqlite_errors(Path("j.db")):
        raise sqlite3.OperationalError(message)
    assert not isinstance(info.value, NotAJournal)


def older_journal(db: Path, applied: int) -> sqlite3.Connection:
    """A journal as an older trilemma left it (its first ``applied`` migrations), in a transaction."""
    from trilemma.journal.migrations import MIGRATIONS

    conn = sqlite3.connect(db, isolation_level=None)
    conn.execute(
        "CREATE TABLE trilemma_migrations (id INTEGER PRIMARY KEY, name TEXT UNIQUE NOT NULL, applied_at REAL NOT NULL)"
    )
    conn.execute("BEGIN")
    for name, migrate in MIGRATIONS[:applied]:
        migrate(conn)
        conn.execute("INSERT INTO trilemma_migrations (name, applied_at) VALUES (?, 0)", (name,))
    return conn


def test_an_older_journal_is_migrated_in_order(tmp_path: Path) -> None:
    from trilemma.journal.migrations import MIGRATIONS

    db = tmp_path / "old.db"
    conn = older_journal(db, 1)
    conn.execute("COMMIT")
    conn.close()
    j = Journal(db)
    assert j.schema_version == len(MIGRATIONS)
    names = [r[0] for r in j.db.execute("SELECT name FROM trilemma_migrations ORDER BY id")]
    assert names == [n for n, _ in MIGRATIONS]
    assert "sends" in [r[1] for r in j.db.execute("PRAGMA table_info(calls)")]


def test_specs_move_to_their_own_table_and_are_kept_once(tmp_path: Path) -> None:
    """m005: a journal written before it keeps its runs' specs, now one row per spec."""
    db = tmp_path / "old.db"
    conn = older_journal(db, 4)  # as m004 left it
    for run_id, text in (("r1", '{"a": 1}'), ("r2", '{"a": 1}'), ("r3", '{"b": 2}')):
        conn.execute(
            "INSERT INTO runs (run_id, spec_source, spec_json, spec_hash, inputs_json, status, "
            "started_at) VALUES (?, 's', ?, ?, '{}', 'ok', 0)",
            (run_id, text, "h" + text),
        )
    conn.execute("COMMIT")
    conn.close()
    j = Journal(db)
    assert {r["run_id"]: r["spec_json"] for r in j.runs()} == {
        "r1": '{"a": 1}', "r2": '{"a": 1}', "r3": '{"b": 2}',
    }  # fmt: skip
    assert j.db.execute("SELECT count(*) FROM specs").fetchone()[0] == 2
    assert j.db.execute("SELECT count(*) FROM runs WHERE spec_json != ''").fetchone()[0] == 0
    # New runs of one spec share its row; each run still reads it back whole.
    wf = parse_workflow(CHAIN_SPEC)
    first = execute(wf, journal=j, seed=1, max_cost_usd=0.0)
    second = execute(wf, journal=j, seed=2, max_cost_usd=0.0)
    assert j.db.execute("SELECT count(*) FROM specs").fetchone()[0] == 3
    assert j.run(first.run_id)["spec_json"] == j.run(second.run_id)["spec_json"]
    assert parse_workflow(j.run(first.run_id)["spec_json"]) == wf


def test_runs_and_cache_entries_from_before_tenants_belong_to_none(tmp_path: Path) -> None:
    """m006: earlier runs and cached answers have no tenant; clearing one tenant spares them."""
    db = tmp_path / "old.db"
    conn = older_journal(db, 5)  # as m005 left it
    conn.execute(
        "INSERT INTO runs (run_id, spec_source, spec_json, spec_hash, inputs_json, status, "
        "started_at) VALUES ('r1', 's', '{}', 'h', '{}', 'ok', 0)"
    )
    conn.execute(
        "INSERT INTO cache (key, model, response, created_at) VALUES ('k', 'm', 'old answer', 0)"
    )
    conn.execute("COMMIT")
    conn.close()
    j = Journal(db)
    assert j.run("r1")["tenant"] is None
    assert (j.run("r1")["batch_id"], j.batch_runs("any")) == (None, {})  # m007: in no batch
    assert j.run("r1")["time_scale"] == 1  # m009: ran in its spec's own time
    assert j.cache_get("k")["tenant"] is None
    assert j.cache_clear(tenant="acme") == (0, 0)
    assert j.cache_clear() == (1, 0)


def test_a_run_journaled_with_the_full_spec_dump_resumes(cli, tmp_path: Path) -> None:
    """Runs journaled before specs were kept compact hold every field: still the same spec."""
    spec = tmp_path / "chain.yaml"
    spec.write_text(CHAIN_SPEC)
    db = tmp_path / "j.db"
    run_id = start_and_kill(spec, db, 0.1)
    assert run_id is not None
    j = Journal(db)
    full = parse_workflow(CHAIN_SPEC).model_dump_json()  # what an older trilemma wrote
    with j.transaction() as conn:
        conn.execute("UPDATE specs SET spec_json = ?", (full,))
    j.close()
    resumed = cli("resume", run_id, "--journal", db, "--json")
    assert resumed.code == 0, resumed.err
    assert resumed.json()["status"] == "ok"


def test_opening_a_journal_never_opens_its_file_outside_sqlite(tmp_path: Path, monkeypatch) -> None:
    """Closing any descriptor of the file would drop SQLite's POSIX locks for this process."""
    import builtins
    import io

    db = tmp_path / "j.db"
    Journal(db).close()
    real_open, real_path_open = builtins.open, Path.open

    def guard(file, *args, **kwargs):  # type: ignore[no-untyped-def]
        assert Path(str(file)).resolve() != db.resolve(), (
            "the journal file was opened outside SQLite"
        )
        return real_open(file, *args, **kwargs)

    def guard_path(self, *args, **kwargs):  # type: ignore[no-untyped-def]
        assert self.resolve() != db.resolve(), "the journal file was opened outside SQLite"
        return real_path_open(self, *args, **kwargs)

    monkeypatch.setattr(builtins, "open", guard)
    monkeypatch.setattr(io, "open", guard)
    monkeypatch.setattr(Path, "open", guard_path)
    first = Journal(db)
    second = Journal(db, busy_timeout_s=0.0)  # what the run's writer opens beside it
    assert first.runs() == second.runs() == []
    first.close()
    second.close()


def test_a_run_still_running_elsewhere_is_not_resumed(cli, tmp_path: Path) -> None:
    spec = tmp_path / "slow.yaml"
    spec.write_text(
        "version: 1\nmodels:\n  m: {usd_per_call: 0.01, latency_s: 3, p_ok: 1.0}\nsteps: [{id: a, model: m}]\n"
    )
    db = tmp_path / "j.db"
    proc = subprocess.Popen([sys.executable, "-m", "trilemma", "run", str(spec), "--journal", str(db)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
    try:
        deadline = time.monotonic() + 20
        runs: list = []
        while not runs and time.monotonic() < deadline:
            time.sleep(0.05)
            try:
                seen = Journal(db, create=False)
            except NotAJournal:  # not there yet, or SQLite is still creating it
                continue
            runs = seen.runs()
            seen.close()
        r = cli("resume", runs[0]["run_id"], "--journal", db)
        assert r.code == 2 and "still running" in r.err and str(proc.pid) in r.err
    finally:
        proc.kill()
        proc.wait()


def _call_row(key: str) -> dict[str, object]:
    return {"run_id": "r", "step_id": "a", "attempt": 1, "call": 1, "role": "call", "model": "m",
            "idempotency_key": key, "reserved_usd": 0.01, "request_json": "[]", "started_at": 1.0}  # fmt: skip


def test_a_batch_writes_a_call_started_and_finished_in_it_as_one_finished_row(
    tmp_path: Path,
) -> None:
    j = Journal(tmp_path / "j.db")
    j.create_run({"run_id": "r", "spec_source": "s", "spec_json": "{}", "spec_hash": "h",
                  "inputs_json": "{}", "status": "running", "started_at": 0.0})  # fmt: skip
    done = {"status": "done", "output": "x", "attempts": 1, "cost_usd": 0.01}
    answer = {"cost_usd": 0.01, "response": "x", "finished_at": 2.0}
    j.batch([
        ("call_started", (_call_row("r:a:1:1"),), {}),
        ("call_started", (_call_row("r:a:1:2"),), {}),
        ("call_finished", ("r:a:1:2", {"outcome": "transient", "error": "503", "cost_usd": 0.0}), {}),
        ("attempt_finished", ("r", "a", [("r:a:1:1", answer)]), {"rejected": False, "step": done}),
    ])  # fmt: skip
    calls = {c["idempotency_key"]: c for c in j.calls("r")}
    assert calls["r:a:1:1"]["state"] == "finished" and calls["r:a:1:1"]["outcome"] == "ok"
    assert calls["r:a:1:1"]["response"] == "x" and calls["r:a:1:1"]["sends"] == 1
    assert calls["r:a:1:2"]["outcome"] == "transient" and calls["r:a:1:2"]["cost_usd"] == 0.0
    assert j.steps("r")["a"]["output"] == "x"
    # Sent again after a crash (its key already journaled, in flight): one row, its outcome reset.
    j.batch([("call_started", (_call_row("r:a:1:2"),), {})])
    again = {c["idempotency_key"]: c for c in j.calls("r")}["r:a:1:2"]
    assert again["state"] == "started" and again["sends"] == 2
    assert again["outcome"] is None and again["cost_usd"] is None and again["error"] is None
    # Finished in a later batch: an update of that row.
    j.batch([("call_finished", ("r:a:1:2", {"outcome": "ok", "cost_usd": 0.01}), {})])
    assert {c["idempotency_key"]: c for c in j.calls("r")}["r:a:1:2"]["state"] == "finished"
    assert len(j.calls("r")) == 2
    j.close()


@pytest.mark.parametrize(
    "messages",
    [
        [],
        [{"role": "user", "content": 'é "quoted" \\ back\nslash \x00 \u2028'}],
        [{"role": "system", "content": "s"}, {"role": "user", "content": "u"}],
        [{"role": "user", "content": "x", "name": "extra keys take the general path"}],
        [{"role": "user", "text": "no content key"}],
    ],
)
def test_the_ledgers_request_json_is_the_messages_as_json(messages: list[dict[str, str]]) -> None:
    from trilemma.journal.store import messages_json

    assert json.loads(messages_json(messages)) == messages


@pytest.fixture
def journal_r(tmp_path: Path) -> Iterator[Journal]:
    """A journal holding one run, ``r``."""
    j = Journal(tmp_path / "j.db")
    j.create_run({"run_id": "r", "spec_source": "s", "spec_json": "{}", "spec_hash": "h",
                  "inputs_json": "{}", "status": "running", "started_at": 0.0})  # fmt: skip
    yield j
    j.close()


def test_threads_sharing_a_journal_take_turns_on_its_connection(journal_r: Journal) -> None:
    """A writer's thread and the loop's thread use one Journal, while another process commits
    too: before, a BEGIN inside the other thread's transaction failed (its ROLLBACK undoing
    the other's writes), and a read left between two steps stalled a BEGIN for 30 s."""
    j, errors = journal_r, []

    def thread(name: str) -> None:
        try:
            for i in range(150):
                j.call_started(_call_row(f"r:{name}:{i}:1"))
                j.totals("r")
                j.calls("r")
        except Exception as exc:  # collected for the assertion
            errors.append(exc)

    threads = [threading.Thread(target=thread, args=(name,)) for name in ("a", "b")]
    started = time.monotonic()
    with another_writer(j.path, hold_s=0.001, gap_s=0.004):
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    assert errors == []
    assert len(j.calls("r")) == 300
    assert time.monotonic() - started < 25  # no wait for the busy timeout (30 s)


def test_durable_writes_of_one_turn_share_a_commit_and_are_committed_when_they_return(
    journal_r: Journal,
) -> None:
    j = journal_r
    commits: list[int] = []

    async def main() -> None:
        writer = JournalWriter(j)
        batch = writer._fast.batch

        def counted(ops: list[Any]) -> None:
            commits.append(len(ops))
            batch(ops)

        writer._fast.batch = counted  # type: ignore[method-assign]

        async def call(i: int) -> None:
            await writer.write("call_started", _call_row(f"r:a:1:{i}"))
            other = Journal(j.path)  # what another process sees the moment write returns
            try:
                assert f"r:a:1:{i}" in {c["idempotency_key"] for c in other.calls("r")}
            finally:
                other.close()

        await asyncio.gather(*(call(i) for i in range(1, 41)))
        await call(41)  # alone in its turn: a commit of its own
        await writer.aclose()

    asyncio.run(main())
    assert commits == [1, 39, 1]  # the first at once, the rest of its turn together
    assert len(j.calls("r")) == 41


def test_closing_the_writer_keeps_the_order_of_its_transactions(journal_r: Journal) -> None:
    async def main() -> None:
        writer = JournalWriter(journal_r, window_s=60.0)
        writer.defer("call_started", _call_row("r:a:1:1"))
        writer._flush_later()  # the window ends: a commit is scheduled, not yet made
        writer.defer("call_finished", "r:a:1:1", {"outcome": "cancelled", "cost_usd": None})
        await writer.aclose()  # the start must land before the finish that updates it

    asyncio.run(main())
    (call,) = journal_r.calls("r")
    assert call["state"] == "finished" and call["outcome"] == "cancelled"


def test_a_commit_that_fails_in_the_background_fails_the_close(journal_r: Journal) -> None:
    async def main() -> None:
        writer = JournalWriter(journal_r, window_s=0.001)
        writer.defer("call_started", {**_call_row("r:a:1:1"), "no_such_column": 1})
        await asyncio.sleep(0.05)  # the window passes and its commit fails, with nobody waiting
        await writer.aclose()

    with pytest.raises(JournalError, match="no_such_column"):
        asyncio.run(main())
    assert journal_r.calls("r") == []


def test_a_shared_commit_waits_for_the_commit_that_took_its_records(journal_r: Journal) -> None:
    # Another process holds the lock, so commits queue on the writer's thread. A durable write
    # that is first in the next turn takes the records of a shared commit still to run; that
    # commit must not report them durable before the thread has committed them.
    from trilemma.errors import JournalBusy

    early: list[str] = []

    async def main() -> None:
        writer = JournalWriter(journal_r)

        def busy(ops: list[Any]) -> None:
            raise JournalBusy("held by another process")

        slow_batch = writer.journal.batch

        def slow(ops: list[Any]) -> None:
            time.sleep(0.05)  # the thread's commit takes a while
            slow_batch(ops)

        writer._fast.batch = busy  # type: ignore[method-assign]
        writer.journal.batch = slow  # type: ignore[method-assign]

        async def write(key: str, first_yield: bool = False) -> None:
            if first_yield:
                await asyncio.sleep(0)
            await writer.write("call_started", _call_row(key))
            other = Journal(journal_r.path)
            try:
                if key not in {c["idempotency_key"] for c in other.calls("r")}:
                    early.append(key)
            finally:
                other.close()

        # Turn 1: a commits at once (queued on the thread); b joins a shared commit, run in
        # turn 2 after c, which is first in turn 2 and takes b's record along with its own.
        await asyncio.gather(write("r:a:1:1"), write("r:c:1:1", True), write("r:b:1:1"))
        await writer.aclose()

    asyncio.run(main())
    assert early == []
    assert len(journal_r.calls("r")) == 3


def _started_then(signum: int, tmp_path: Path, ignore_sigint: bool = False) -> tuple[Any, str, str, Path]:
    """``trilemma run`` of a two-step spec, sent ``signum`` once its first step is journaled."""
    spec = tmp_path / "two.yaml"
    spec.write_text("version: 1\nmodels:\n  quick: {usd_per_call: 0.01, latency_s: 0.05, p_ok: 1.0}\n"
                    "  slow: {usd_per_call: 0.01, latency_s: 5, p_ok: 1.0}\n"
                    "steps: [{id: a, model: quick}, {id: b, model: slow, after: [a]}]\n")  # fmt: skip
    db = tmp_path / "j.db"

    def shell_background() -> None:  # as a non-interactive shell starts a job with `&`
        signal.signal(signal.SIGINT, signal.SIG_IGN)

    proc = subprocess.Popen([sys.executable, "-m", "trilemma", "run", str(spec), "--journal", str(db)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            preexec_fn=shell_background if ignore_sigint else interruptible)  # fmt: skip
    try:
        deadline, done = time.monotonic() + 30, False
        while not done and time.monotonic() < deadline:  # until step a is in the journal
            time.sleep(0.05)
            with contextlib.suppress(NotAJournal, JournalError):
                seen = Journal(db, create=False)
                done = any(seen.steps(r["run_id"]).get("a") for r in seen.runs())
                seen.close()
        assert done, "step a never reached the journal"
        proc.send_signal(signum)
        out, err = proc.communicate(timeout=30)
    finally:
        proc.kill()
        proc.wait()
    return proc, out, err, db


def test_ctrl_c_names_the_run_and_the_command_that_finishes_it(cli, tmp_path: Path) -> None:
    proc, out, err, db = _started_then(signal.SIGINT, tmp_path)
    (run,) = Journal(db).runs()
    short = run["run_id"].rsplit("-", 1)[-1]
    assert proc.returncode == 130 and out == ""  # no table for a run that did not end
    assert err.strip() == (f"trilemma: interrupted; run {run['run_id']} keeps the steps that "
                           f"finished: `trilemma resume {short} --journal {db}` goes on without "
                           "calling them again")  # fmt: skip
    assert run["status"] == "running"  # until resumed: doctor lists it as interrupted
    finished = cli("resume", short, "--journal", db, "--json").json()
    assert finished["status"] == "ok" and finished["run_id"] == run["run_id"]
    sent = [c["step_id"] for c in Journal(db).calls(run["run_id"])]
    assert sent.count("a") == 1 and sent[-1] == "b"  # a came from the journal; b was called


def test_resuming_a_run_adds_its_time_to_what_its_sessions_took(cli, tmp_path: Path) -> None:
    spec = tmp_path / "one.yaml"
    spec.write_text("version: 1\nmodels:\n  m: {usd_per_call: 0.01, latency_s: 0.3, p_ok: 1.0}\n"
                    "steps: [{id: a, model: m}]\n")  # fmt: skip
    db = tmp_path / "j.db"
    first = cli("run", spec, "--journal", db, "--json").json()
    again = cli("resume", first["run_id"], "--journal", db, "--json").json()  # nothing to call
    assert first["latency_s"] >= 0.3 and again["latency_s"] == pytest.approx(first["latency_s"], abs=0.05)
    (row,) = Journal(db).runs()
    assert row["latency_s"] == pytest.approx(again["latency_s"], abs=1e-5)  # not 0.0001 s


def test_a_steps_attempts_and_cost_run_on_across_a_deadline_and_a_resume(tmp_path: Path) -> None:
    """A step cancelled by the deadline showed 0 attempts and $0 though it had sent and been
    billed for several; resumed, it counted only the new session's. Seed 20 draws nineteen
    wrong answers before a right one for a, more than fit before the first deadline."""
    from trilemma.run.session import resume

    spec = """version: 1
models:
  m: {usd_per_call: 0.01, latency_s: 0.05, p_ok: 0.2}
steps:
  - {id: a, model: m, retries: 40}
  - {id: b, model: m, after: [a], retries: 40}
"""
    journal = Journal(tmp_path / "j.db")
    with fast_retries():
        first = execute(parse_workflow(spec), journal=journal, seed=20, deadline_s=0.3)
    a = first.steps["a"]
    sent = [c for c in journal.calls(first.run_id) if c["step_id"] == "a" and c["outcome"] != "unsent"]
    billed = [c for c in sent if c["cost_usd"]]  # the attempt the deadline cut is not
    assert first.status == "deadline" and a.status == "cancelled" and billed
    assert (a.attempts, a.cost_usd) == (max(c["attempt"] for c in sent),
                                       pytest.approx(0.01 * len(billed)))  # fmt: skip
    with fast_retries():
        done = resume(journal, first.run_id, deadline_s=30)  # the first deadline holds otherwise
    assert done.status == "ok", done.error
    billed = [c for c in journal.calls(first.run_id) if c["step_id"] == "a" and c["cost_usd"]]
    assert len(billed) > 12  # both sessions' (the attempt the deadline cut was not billed)
    assert (done.steps["a"].attempts, done.steps["a"].cost_usd) == (
        max(c["attempt"] for c in billed), pytest.approx(0.01 * len(billed)))  # fmt: skip
    for r in (first, done):
        assert math.fsum(s.cost_usd for s in r.steps.values()) == pytest.approx(r.cost_usd)


def test_sigterm_stops_a_run_as_ctrl_c_does(cli, tmp_path: Path) -> None:
    """A container stopping, `timeout` or systemd send SIGTERM: the run ended as if killed
    (exit -15, its call left in flight, nothing said); now it unwinds as on Ctrl-C."""
    proc, _, err, db = _started_then(signal.SIGTERM, tmp_path)
    (run,) = Journal(db).runs()
    short = run["run_id"].rsplit("-", 1)[-1]
    assert proc.returncode == 143, err
    assert err.strip() == (f"trilemma: terminated; run {run['run_id']} keeps the steps that "
                           f"finished: `trilemma resume {short} --journal {db}` goes on without "
                           "calling them again")  # fmt: skip
    b = [c for c in Journal(db).calls(run["run_id"]) if c["step_id"] == "b"]
    assert [c["outcome"] for c in b] == ["cancelled"]  # not left in flight
    finished = cli("resume", short, "--journal", db, "--json").json()
    assert finished["status"] == "ok"


def test_sigterm_still_ends_a_run_whose_shell_ignores_ctrl_c(tmp_path: Path) -> None:
    """A background job of a shell ignores SIGINT: SIGTERM, taken as SIGINT, would have done
    nothing, so there it ends the process as it always did (resumable, as after a kill)."""
    proc, _, _, db = _started_then(signal.SIGTERM, tmp_path, ignore_sigint=True)
    assert proc.returncode == -signal.SIGTERM
    (run,) = Journal(db).runs()
    assert run["status"] == "running"  # as a kill leaves it: `trilemma resume` finishes it


# A commit that ended in the very turn of the loop in which the writer is closed (its done
# callback still to run): Python 3.12's gather returns at once on tasks already done, and a
# drain that waited on them again spun forever without letting the loop turn (found as a
# compare that hung under python3.13 -X dev and did not stop at SIGTERM). In a process of its
# own, so that a hang fails the test instead of the suite.
_DRAIN_SCRIPT = """
import asyncio, sys
from trilemma._redis import Background
from trilemma.journal.store import Journal, JournalWriter

async def ends_at_once():
    pass

async def fails_at_once():
    raise OSError("gone")

async def main():
    with Journal(sys.argv[1]) as journal:
        writer = JournalWriter(journal)
        writer._track(ends_at_once())
        await asyncio.sleep(0)  # the commit ends in the next turn, its callback on the one after
        await writer.aclose()
    background = Background()
    background.add(fails_at_once())
    await asyncio.sleep(0)
    await background.drain()
    await asyncio.sleep(0)  # the task's own callback runs now: the failure counts once
    print("drained", background.failed)

asyncio.run(main())
"""


def test_writes_that_ended_this_turn_of_the_loop_are_drained_without_spinning(tmp_path: Path) -> None:
    done = subprocess.run([sys.executable, "-c", _DRAIN_SCRIPT, str(tmp_path / "j.db")],
                          capture_output=True, text=True, timeout=60)  # fmt: skip
    assert done.returncode == 0 and done.stdout == "drained 1\n", done.stderr
