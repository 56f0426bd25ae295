"""`trilemma prune`: old runs go, with their calls, steps and specs; what a resume, a gateway
key's ceiling or a batch's report still needs stays."""

from __future__ import annotations

import sqlite3
import time
from pathlib import Path

from trilemma import parse_workflow
from trilemma.journal import Journal
from trilemma.run.session import execute

from .conftest import EXAMPLES

DAY = 86_400.0
SPEC = """\
version: 1
models:
  m: {usd_per_call: 0.01, latency_s: 0.001, p_ok: P_OK}
steps:
""" + "\n".join(f"  - {{id: s{i}, model: m}}" for i in range(5))


def aged(db: Path, run_id: str, days: float) -> None:
    with sqlite3.connect(db) as raw:
        raw.execute("UPDATE runs SET started_at = ? WHERE run_id = ?", (time.time() - days * DAY, run_id))


def counts(db: Path) -> dict[str, int]:
    with sqlite3.connect(db) as raw:
        return {t: raw.execute(f"SELECT count(*) FROM {t}").fetchone()[0]
                for t in ("runs", "steps", "calls", "specs", "cache")}  # fmt: skip


def journal_of_every_kind(cli, tmp_path: Path) -> tuple[Path, dict[str, str]]:
    """Old runs that ended ok and failed, an old run still running, an old gateway key's run,
    a new run, and a batch with one old run and one new."""
    db = tmp_path / "j.db"
    j = Journal(db)
    ids = {}
    for name, p in (("old ok", "1.0"), ("old failed", "0.0001"), ("new", "1.0")):
        r = execute(parse_workflow(SPEC.replace("P_OK", p)), journal=j, seed=1)
        ids[name] = r.run_id
    assert j.run(ids["old failed"])["status"] == "failed"
    row = {**j.run(ids["old ok"]), "run_id": "20261101T000000Z-0000aaaa", "status": "running",
           "pid": 2**22 + 7}  # interrupted: waiting for a resume  # fmt: skip
    j.create_run({k: v for k, v in row.items() if k in ("run_id", "spec_source", "spec_json",
                  "spec_hash", "inputs_json", "seed", "status", "started_at", "pid")})  # fmt: skip
    ids["running"] = row["run_id"]
    j.create_run({"run_id": "gateway-team-a", "spec_source": "gw.yaml", "spec_json": "{}",
                  "spec_hash": "gw", "inputs_json": "{}", "seed": None, "status": "ok",
                  "started_at": time.time()})  # fmt: skip
    ids["gateway"] = "gateway-team-a"
    lines = tmp_path / "q.jsonl"
    lines.write_text('{"question": "a"}\n{"question": "b"}\n')
    b = cli("batch", EXAMPLES / "faq.yaml", "--inputs", lines, "--journal", db, "--seed", "1",
            "--json")  # fmt: skip
    assert b.code == 0, b.err
    batch = sorted(r["run_id"] for r in cli("runs", "--journal", db, "--json").json()
                   if r.get("batch_id"))  # fmt: skip
    ids["batch old"], ids["batch new"] = batch
    for name in ("old ok", "old failed", "running", "gateway", "batch old"):
        aged(db, ids[name], 40)
    return db, ids


def test_prune_forgets_old_runs_and_keeps_what_is_still_needed(cli, tmp_path: Path) -> None:
    db, ids = journal_of_every_kind(cli, tmp_path)
    before = counts(db)
    dry = cli("prune", "--older-than", "30", "--dry-run", "--journal", db, "--json")
    assert dry.code == 0, dry.err
    d = dry.json()
    assert d["dry_run"] and sorted(d["run_ids"]) == sorted([ids["old ok"], ids["old failed"]])
    assert d["calls"] == 10 and d["steps"] == 10 and d["kept_in_batches"] == 1
    assert d["kept_running"] == 1  # the interrupted one (not the gateway key's, live)
    assert counts(db) == before  # a dry run keeps everything

    r = cli("prune", "--older-than", "30", "--journal", db)
    assert r.code == 0, r.err
    said = " ".join(r.out.split())
    assert said.startswith("forgot 2 runs started before ") and "(10 calls)" in said
    assert "kept 1 run as old, of batches with newer or unfinished runs" in said
    assert "kept 1 run as old that has not ended (live, or waiting for `trilemma resume`" in said
    after = counts(db)
    assert after["runs"] == before["runs"] - 2
    assert after["calls"] == before["calls"] - 10 and after["steps"] == before["steps"] - 10
    assert after["cache"] == before["cache"]  # cached answers stay
    left = {r["run_id"] for r in cli("runs", "--journal", db, "--json").json()}
    assert left == {ids[k] for k in ("new", "running", "gateway", "batch old", "batch new")}
    with sqlite3.connect(db) as raw:  # every spec a run still names is there, and only those
        used = {h for (h,) in raw.execute("SELECT spec_hash FROM runs")}
        assert {h for (h,) in raw.execute("SELECT spec_hash FROM specs")} == used
    gone = cli("ledger", ids["old ok"], "--journal", db)
    assert gone.code == 2 and "trilemma runs" in gone.err
    assert cli("ledger", ids["new"], "--journal", db, "--json").json()  # the rest reads as before
    assert cli("doctor", "--journal", db).code == 0


def test_prune_by_status_and_then_shrink_the_file(cli, tmp_path: Path) -> None:
    db, ids = journal_of_every_kind(cli, tmp_path)
    r = cli("prune", "--older-than", "30", "--status", "failed", "--journal", db, "--json")
    assert r.code == 0 and r.json()["run_ids"] == [ids["old failed"]]
    j = Journal(db)
    for _ in range(30):  # enough rows that dropping them shows in the file's size
        aged(db, execute(parse_workflow(SPEC.replace("P_OK", "1.0")), journal=j, seed=2).run_id, 50)
    j.close()
    r = cli("prune", "--older-than", "45", "--vacuum", "--journal", db, "--json")
    assert r.code == 0, r.err
    d = r.json()
    assert d["runs"] == 30 and d["calls"] == 150
    assert d["kept_running"] == 0  # the interrupted run started 40 days ago, not 45
    assert d["bytes_after"] < d["bytes_before"]
    assert db.stat().st_size == d["bytes_after"]  # the log emptied into it
    shown = " ".join(cli("prune", "--older-than", "0", "--vacuum", "--journal", db).out.split())
    assert "MB before" in shown and "MB now" in shown
    assert "kept 1 run as old that has not ended" in shown


def test_prune_refuses_what_it_cannot_do(cli, tmp_path: Path) -> None:
    db = tmp_path / "j.db"
    Journal(db)
    for args, said in ((("--status", "running"), "a running run is never pruned"),
                       (("--status", "okay"), "give one of ok, budget_exhausted"),
                       ((), "Missing option '--older-than'")):  # fmt: skip
        r = cli("prune", *(("--older-than", "1") if args else ()), *args, "--journal", db)
        assert r.code == 2 and said in r.err and "Traceback" not in r.err
    missing = cli("prune", "--older-than", "1", "--journal", tmp_path / "none.db")
    assert missing.code == 2 and "no journal" in missing.err
