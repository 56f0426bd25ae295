"""Runs, batches and gateways sharing a spend ceiling and a cache across processes, through
a real redis-server on 127.0.0.1."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import time
import uuid
from collections.abc import Callable
from pathlib import Path

import pytest
from redis import Redis

from tests.conftest import Result, free_port, redis_server
from trilemma import SharedCeiling, run_batch, workflow_from_dict
from trilemma.journal import Journal
from trilemma.run.session import execute
from trilemma.run.shared_budget import SharedSpend

FORTY = {
    "version": 1, "concurrency": 100,
    "models": {"m": {"usd_per_call": 0.01, "latency_s": 0.05, "p_ok": 1.0}},
    "steps": [{"id": f"s{i}", "model": "m"} for i in range(40)],
}  # fmt: skip


def spent(url: str, name: str) -> tuple[float, int]:
    """Dollars the store counts as spent under ``name``, and holds still open."""
    with Redis.from_url(url, decode_responses=True) as r:
        return float(r.get(f"trilemma:budget:{name}:spent") or 0), r.hlen(
            f"trilemma:budget:{name}:holds"
        )


def team() -> str:
    return f"team-{uuid.uuid4().hex[:12]}"


def test_runs_in_three_processes_never_cross_the_ceiling_they_share(
    redis_url: str, tmp_path: Path
) -> None:
    spec = tmp_path / "forty.json"
    spec.write_text(json.dumps(FORTY))
    name = team()
    flags = ["--shared-budget", f"{name}=0.155", "--redis", redis_url, "--json"]
    procs = [
        subprocess.Popen(
            [sys.executable, "-m", "trilemma", "run", str(spec), "--seed", str(k),
             "--journal", str(tmp_path / f"{k}.db"), *flags],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )
        for k in range(3)
    ]
    outs = [p.communicate(timeout=120) for p in procs]
    results = [json.loads(out) for out, _ in outs]
    assert [p.returncode for p in procs] == [1, 1, 1], outs
    assert {r["status"] for r in results} == {"budget_exhausted"}
    total = sum(r["cost_usd"] for r in results)
    # Each process alone would have spent $0.15 under its own ceiling; together, $0.15.
    assert total <= 0.155 + 1e-9
    assert sum(len(r["outputs"]) for r in results) == 15
    assert spent(redis_url, name) == (pytest.approx(total), 0)
    for r in results:
        if r["cost_usd"] < 0.15:
            assert "shared budget" in r["error"] and name in r["error"]
    rows = [Journal(tmp_path / f"{k}.db").runs()[0] for k in range(3)]
    assert {row["shared_budget"] for row in rows} == {f"{name}=0.155"}


def test_a_batch_under_a_shared_ceiling_stops_there_and_counts_what_it_spent(
    redis_url: str, tmp_path: Path
) -> None:
    name = team()
    with Redis.from_url(redis_url) as r:  # another process already spent $0.05 of it
        r.set(f"trilemma:budget:{name}:spent", "0.05")
    wf = workflow_from_dict({**FORTY, "steps": FORTY["steps"][:4]})
    result = run_batch(wf, [{}] * 6, journal=Journal(tmp_path / "j.db"), parallel=3, seed=1,
                       shared=SharedCeiling(name, 0.155, redis_url))  # fmt: skip
    assert result.status == "budget_exhausted"
    assert result.cost_usd == pytest.approx(0.10)  # ten calls fit beside the $0.05 spent
    assert sum(len(line.outputs) for line in result.lines) == 10
    assert spent(redis_url, name) == (pytest.approx(0.15), 0)


def test_errors_and_cancelled_calls_are_released_in_the_shared_store(
    redis_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    name = team()
    faults = workflow_from_dict({
        "version": 1, "seed": 3, "concurrency": 100,
        "models": {"m": {"usd_per_call": 0.01, "latency_s": 0.01, "p_ok": 1.0,
                         "faults": {"transient_error_rate": 0.3, "rate_limit_rate": 0.1}}},
        "steps": [{"id": f"s{i}", "model": "m", "retries": 8} for i in range(30)],
    })  # fmt: skip
    journal = Journal(tmp_path / "j.db")
    shared = SharedCeiling(name, 10.0, redis_url)
    monkeypatch.setenv("TRILEMMA_FAST_RETRIES", "1")
    ok = execute(faults, journal=journal, shared=shared)
    assert ok.status == "ok"
    errors = [c for c in journal.calls(ok.run_id) if c["outcome"] != "ok"]
    assert errors  # errors happened, were not billed, and left nothing held
    assert spent(redis_url, name) == (pytest.approx(0.30), 0)

    slow = workflow_from_dict({**FORTY, "models": {"m": {"usd_per_call": 0.01, "latency_s": 5.0, "p_ok": 1.0}}})
    cut = execute(slow, journal=journal, deadline_s=0.3, shared=shared)
    assert cut.status == "deadline" and cut.cost_usd == 0
    assert spent(redis_url, name) == (pytest.approx(0.30), 0)  # 40 holds released, none billed


def test_a_store_that_does_not_answer_stops_the_run_before_it_is_journaled(
    cli: Callable[..., Result], tmp_path: Path
) -> None:
    spec = tmp_path / "forty.json"
    spec.write_text(json.dumps(FORTY))
    db = tmp_path / "j.db"
    url = f"redis://:hunter2@127.0.0.1:{free_port()}/0"
    r = cli("run", spec, "--journal", db, "--shared-budget", "team=1", "--redis", url)
    assert r.code == 1
    assert "does not answer" in r.err and "--redis" in r.err
    assert "hunter2" not in r.err and "//***@127.0.0.1" in r.err
    assert Journal(db).runs() == []
    for flag in ("team", "team=-1", "team=abc", "te am=1", "=1"):
        bad = cli("run", spec, "--journal", db, "--shared-budget", flag)
        assert bad.code == 2 and "--shared-budget" in bad.err and "NAME=USD" in bad.err, flag
        assert "Traceback" not in bad.err
    bad = cli("batch", spec, "--inputs", "-", "--shared-budget", "team=1", "--redis", "http://x")
    assert bad.code == 2 and "--redis" in bad.err


def test_a_run_whose_store_goes_away_fails_and_resumes_under_the_same_shared_ceiling(
    cli: Callable[..., Result], tmp_path: Path
) -> None:
    chain = {
        "version": 1,
        "models": {"m": {"usd_per_call": 0.01, "latency_s": 0.1, "p_ok": 1.0}},
        "steps": [{"id": f"s{i}", "model": "m", **({"after": [f"s{i - 1}"]} if i else {})}
                  for i in range(12)],
    }  # fmt: skip
    spec = tmp_path / "chain.json"
    spec.write_text(json.dumps(chain))
    db = tmp_path / "j.db"
    for folder in ("first", "second"):
        (tmp_path / folder).mkdir()
    with redis_server(tmp_path / "first") as (url, proc):
        run = subprocess.Popen(
            [sys.executable, "-m", "trilemma", "run", str(spec), "--journal", str(db),
             "--shared-budget", "team=1", "--redis", url, "--json"],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )  # fmt: skip
        deadline = time.monotonic() + 60
        while spent(url, "team")[0] < 0.03:  # three steps done
            assert time.monotonic() < deadline and run.poll() is None
            time.sleep(0.02)
        proc.kill()
        proc.wait(10)
        out, err = run.communicate(timeout=60)
    assert run.returncode == 1, err
    failed = json.loads(out)
    assert failed["status"] == "failed"
    assert "shared budget store" in failed["error"] and "does not answer" in failed["error"]
    done = [k for k, v in Journal(db).steps(failed["run_id"]).items() if v["status"] == "done"]
    assert 3 <= len(done) < 12  # what finished before is kept

    with redis_server(tmp_path / "second") as (url, _):  # a new store: the run's ceiling again
        r = cli("resume", failed["run_id"], "--journal", db, "--redis", url, "--json")
        assert r.code == 0, r.err
        assert r.json()["status"] == "ok"
        assert spent(url, "team") == (pytest.approx(0.01 * (12 - len(done))), 0)
        # Another process gives the same budget room for three more calls: it makes three.
        room = f"team={spent(url, 'team')[0] + 0.035!r}"
        again = cli("run", spec, "--journal", db, "--shared-budget", room, "--redis", url, "--json")
        assert again.code == 1 and again.json()["status"] == "budget_exhausted"
        assert again.json()["cost_usd"] == pytest.approx(0.03)


def test_settles_that_cannot_reach_the_store_are_counted_not_raised() -> None:
    class Gone:
        async def reserve(self, name: str, amount: float) -> object:
            raise AssertionError("not reserved here")

        async def settle(self, name: str, hold: object, cost: float) -> None:
            raise ConnectionError("gone")

        async def release(self, name: str, hold: object) -> None:
            raise ConnectionError("gone")

        async def state(self, name: str) -> None: ...

        async def aclose(self) -> None: ...

    async def main() -> int:
        spend = SharedSpend(SharedCeiling("t", 1.0), store=Gone())  # type: ignore[arg-type]
        spend.settle(object(), 0.1)  # type: ignore[arg-type]
        spend.release(object())  # type: ignore[arg-type]
        await spend.aclose()
        return spend.unsettled

    assert asyncio.run(main()) == 2


CACHED = {
    "version": 1, "inputs": {"question": None},
    "models": {"small": {"usd_per_call": 0.002, "latency_s": 0.02, "p_ok": 1.0}},
    "steps": [{"id": "answer", "model": "small", "prompt": "Answer: {question}", "cached": True}],
}  # fmt: skip


def cached_run(cli: Callable[..., Result], spec: Path, db: Path, *flags: str) -> dict[str, object]:
    r = cli("run", spec, "--journal", db, "--json", *flags)
    assert r.code == 0, r.err
    out: dict[str, object] = r.json()
    return out


def test_an_answer_one_worker_paid_for_is_free_for_another_with_its_own_journal(
    cli: Callable[..., Result], tmp_path: Path, redis_url: str
) -> None:
    spec = tmp_path / "cached.json"
    spec.write_text(json.dumps(CACHED))
    prefix = ["--redis", redis_url, "--shared-cache", "-i", f"question={uuid.uuid4().hex}"]
    first = cached_run(cli, spec, tmp_path / "a.db", *prefix)
    again = cached_run(cli, spec, tmp_path / "b.db", *prefix)
    alone = cached_run(cli, spec, tmp_path / "c.db", *prefix[3:])  # no --shared-cache: pays
    other = cached_run(cli, spec, tmp_path / "d.db", *prefix, "--tenant", "acme")
    assert (first["cost_usd"], again["cost_usd"], alone["cost_usd"]) == (0.002, 0.0, 0.002)
    assert again["outputs"] == first["outputs"]
    assert other["cost_usd"] == 0.002  # another tenant is never served it
    [call] = Journal(tmp_path / "b.db").calls(str(again["run_id"]))
    assert call["cache_hit"] == 1 and call["role"] == "cache"
    # The hit is kept in b's journal too: it serves b without Redis from now on.
    assert cached_run(cli, spec, tmp_path / "b.db", *prefix[3:])["cost_usd"] == 0.0
    cleared = cli("cache", "clear", "--journal", tmp_path / "a.db", "--shared", "--tenant", "acme",
                  "--redis", redis_url, "--json")  # fmt: skip
    assert cleared.code == 0 and cleared.json()["shared_removed"] == 1
    assert cached_run(cli, spec, tmp_path / "e.db", *prefix, "--tenant", "acme")["cost_usd"] == 0.002
    assert cached_run(cli, spec, tmp_path / "f.db", *prefix)["cost_usd"] == 0.0  # acme's only


def test_a_shared_cache_that_goes_away_mid_batch_turns_into_misses(
    cli: Callable[..., Result], tmp_path: Path
) -> None:
    (tmp_path / "redis").mkdir()
    wf = workflow_from_dict({**CACHED, "models": {"small": {**CACHED["models"]["small"],  # type: ignore[dict-item]
                                                            "latency_s": 0.2}}})  # fmt: skip
    with redis_server(tmp_path / "redis") as (url, proc):
        lines = [{"question": f"q{i}"} for i in range(12)]  # each a lookup Redis must answer

        def kill_soon() -> None:
            time.sleep(0.5)
            proc.kill()

        import threading

        killer = threading.Thread(target=kill_soon)
        killer.start()
        result = run_batch(wf, lines, journal=Journal(tmp_path / "j.db"), parallel=2, seed=1,
                           shared_cache=url)  # fmt: skip
        killer.join()
    assert result.status == "ok" and all(line.status == "ok" for line in result.lines)
    spec = tmp_path / "cached.json"
    spec.write_text(json.dumps(CACHED))
    r = cli("run", spec, "-i", "question=x", "--journal", tmp_path / "k.db", "--shared-cache",
            "--redis", url)  # fmt: skip
    assert r.code == 1 and "the shared cache" in r.err and "does not answer" in r.err
    assert Journal(tmp_path / "k.db").runs() == []


def test_gateways_that_share_redis_share_their_cache_too(
    tmp_path: Path, redis_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    from tests.test_gateway import ASK, config_text, http, serving

    monkeypatch.setenv("TRILEMMA_GW_A", "sk-team-a-secret")
    monkeypatch.setenv("TRILEMMA_GW_B", "sk-team-b-secret")
    auth = {"Authorization": "Bearer sk-team-b-secret", "Content-Type": "application/json"}
    body = json.dumps({"model": "sim", "messages": ASK}).encode()
    text = config_text() + f'cache: true\nshared: {{redis: "{redis_url}", prefix: "{team()}"}}\n'
    answers = []
    for folder in ("a", "b"):
        (tmp_path / folder).mkdir()
        with serving(tmp_path / folder, text) as (gw, _):
            answers.append(http(f"{gw}/chat/completions", body, auth))
    assert [a[0] for a in answers] == [200, 200]
    assert answers[1][1]["choices"] == answers[0][1]["choices"]
    from trilemma.gateway.app import run_id_of

    [paid] = Journal(tmp_path / "a" / "j.db").calls(run_id_of("team-b"))
    [free] = Journal(tmp_path / "b" / "j.db").calls(run_id_of("team-b"))
    assert (paid["cache_hit"], paid["cost_usd"]) == (0, pytest.approx(0.01))
    assert (free["cache_hit"], free["cost_usd"]) == (1, 0.0)


def test_a_store_that_accepts_but_never_answers_is_given_up_on(
    cli: Callable[..., Result], tmp_path: Path
) -> None:
    import socket

    spec = tmp_path / "forty.json"
    spec.write_text(json.dumps(FORTY))
    with socket.socket() as silent:  # takes connections, never replies
        silent.bind(("127.0.0.1", 0))
        silent.listen(8)
        url = f"redis://127.0.0.1:{silent.getsockname()[1]}/0"
        started = time.monotonic()
        r = cli("run", spec, "--journal", tmp_path / "j.db", "--shared-budget", "team=1",
                "--redis", url)  # fmt: skip
        waited = time.monotonic() - started
    assert r.code == 1 and "does not answer" in r.err and "Timeout" in r.err
    assert waited < 15


def test_a_shared_budget_is_shown_and_reset_from_the_command_line(
    cli: Callable[..., Result], tmp_path: Path, redis_url: str
) -> None:
    spec = tmp_path / "forty.json"
    spec.write_text(json.dumps({**FORTY, "steps": FORTY["steps"][:10]}))
    name = team()
    flags = ("--redis", redis_url)
    run = cli("run", spec, "--journal", tmp_path / "j.db", "--shared-budget", f"{name}=0.055",
              *flags, "--json")  # fmt: skip
    assert run.json()["status"] == "budget_exhausted"
    shown = cli("budget", "show", name, *flags, "--json")
    assert shown.code == 0, shown.err
    # Ten calls at once, room for five: five sent, five refused.
    assert shown.json() == {"name": name, "ceiling_usd": 0.055, "spent_usd": 0.05,
                            "reserved_usd": 0.0, "remaining_usd": 0.005,
                            "refused": 5}  # fmt: skip  (rounded: no float noise)
    assert f"{name}: $0.0500 spent, $0.0000 held by calls in flight, $0.0050 left of $0.0550" in (
        cli("budget", "show", name, *flags).out
    )

    async def hold() -> None:  # a call in flight elsewhere holds part of it
        spend = SharedSpend(SharedCeiling(name, 1.0, redis_url))
        await spend.reserve(0.01)
        await spend.store.aclose()

    asyncio.run(hold())
    busy = cli("budget", "reset", name, *flags)
    assert busy.code == 2 and "calls in flight hold $0.0100" in busy.err and "--force" in busy.err
    reset = cli("budget", "reset", name, *flags, "--force", "--json")
    assert reset.code == 0 and reset.json()["spent_usd"] == pytest.approx(0.05)
    assert spent(redis_url, name) == (0.0, 0)
    assert cli("budget", "show", name, *flags, "--json").json()["ceiling_usd"] is None
    again = cli("run", spec, "--journal", tmp_path / "j.db", "--shared-budget", f"{name}=0.055",
                *flags, "--json")  # fmt: skip
    assert again.json()["cost_usd"] == pytest.approx(0.05)  # a fresh count: five more calls
    for typo in ("show", "reset"):  # a misspelt name read as a budget with nothing spent
        r = cli("budget", typo, name + "x", *flags)
        assert r.code == 2 and f"shared budget '{name}x' has no record" in r.err, r.err
        assert "its budgets: " in r.err  # (up to 20 of them: others' tests share this Redis)
    for bad in (("show", "no way"), ("show", name, "--redis", "http://x")):
        r = cli("budget", *bad)
        assert r.code == 2 and "Traceback" not in r.err
    gone = cli("budget", "show", name, "--redis", f"redis://127.0.0.1:{free_port()}/0")
    assert gone.code == 1 and "does not answer" in gone.err


def test_the_report_names_the_shared_budget_a_run_was_under(
    cli: Callable[..., Result], tmp_path: Path, redis_url: str
) -> None:
    spec = tmp_path / "forty.json"
    spec.write_text(json.dumps({**FORTY, "steps": FORTY["steps"][:2]}))
    db, name = tmp_path / "j.db", team()
    run = cli("run", spec, "--journal", db, "--shared-budget", f"{name}=5", "--redis", redis_url,
              "--json").json()  # fmt: skip
    page = tmp_path / "r.html"
    assert cli("report", run["run_id"], "--journal", db, "--out", page).code == 0
    assert f"under shared budget {name}=5.0" in page.read_text().split("<h2>")[0]
    table = cli("runs", "--journal", db, "--json").json()
    assert table[0]["shared_budget"] == f"{name}=5.0"


def test_a_batch_plan_says_what_the_shared_budget_has_left_for_it(
    cli: Callable[..., Result], tmp_path: Path, redis_url: str
) -> None:
    name = team()
    with Redis.from_url(redis_url) as r:  # other processes already spent $0.93 of $1
        r.set(f"trilemma:budget:{name}:spent", "0.93")
    spec = tmp_path / "faq.json"
    step = {"id": "answer", "model": "small", "prompt": "Answer: {question}", "retries": 1}
    spec.write_text(json.dumps({**CACHED, "steps": [step]}))  # not cached: planned as paid
    lines = tmp_path / "q.jsonl"
    lines.write_text("".join(json.dumps({"question": f"q{i}"}) + "\n" for i in range(20)))
    flags = ("--shared-budget", f"{name}=1", "--redis", redis_url, "--plan")
    planned = cli("batch", spec, "--inputs", lines, *flags, "--json").json()
    # $0.07 left, $0.004 a run at worst (two attempts): 17 runs.
    # and as a run bills $0.002 unless retried, about all twenty go to their end within it
    assert planned["shared_budget"] == {"name": name, "remaining_usd": pytest.approx(0.07),
                                        "runs_covered_at_worst": 17,
                                        "runs_ended_within_ceiling": pytest.approx(20, abs=0.5),
                                        "runs_ok_within_ceiling": pytest.approx(20, abs=0.5),
                                        # the ceiling stops no start: the batch's whole time
                                        "latency_within_ceiling_s": pytest.approx(
                                            planned["predicted"]["latency_s"]["batch"], rel=0.2)}  # fmt: skip
    table = cli("batch", spec, "--inputs", lines, *flags)
    assert f"shared budget {name}" in table.out and "pays for 17 of 20 runs" in table.out
    assert "runs go to their end within it" in table.out
    assert spent(redis_url, name) == (pytest.approx(0.93), 0)  # a plan spends nothing
    fresh = ("--shared-budget", f"{team()}=1", "--redis", redis_url, "--plan", "--json")
    planned = cli("batch", spec, "--inputs", lines, *fresh)  # a budget no run has used yet
    assert planned.code == 0 and planned.json()["shared_budget"]["remaining_usd"] == 1, planned.err


def test_hedges_hold_under_the_shared_ceiling_and_a_refused_one_stops_nothing(
    redis_url: str, tmp_path: Path
) -> None:
    """Every call outlasts its hedge: s0 and s1 pay for both copies ($0.04 of $0.055), and
    s2 has room for its call but not for a copy, so it goes on alone: the run ends ok."""
    name = team()
    slow = workflow_from_dict({
        "version": 1,
        "models": {"m": {"usd_per_call": 0.01, "latency_s": 0.2, "p_ok": 1.0,
                         "hedge_after_s": 0.05}},
        "steps": [{"id": f"s{i}", "model": "m", "after": [f"s{i - 1}"] if i else []}
                  for i in range(3)],
    })  # fmt: skip
    journal = Journal(tmp_path / "j.db")
    r = execute(slow, journal=journal, seed=1, shared=SharedCeiling(name, 0.055, redis_url))
    assert r.status == "ok" and len(r.outputs) == 3  # a refused copy is not budget_exhausted
    assert r.calls == 5 and r.cost_usd == pytest.approx(0.05)
    by_step = [(c["step_id"], c["outcome"]) for c in journal.calls(r.run_id)]
    assert sorted(by_step) == [("s0", "hedged"), ("s0", "ok"), ("s1", "hedged"), ("s1", "ok"),
                               ("s2", "ok")]  # fmt: skip
    assert spent(redis_url, name) == (pytest.approx(0.05), 0)


def test_a_batch_goes_on_after_the_shared_ceiling_refuses_a_hedge(
    redis_url: str, tmp_path: Path
) -> None:
    """A call holds its worst case ($0.01) and costs far less; a copy beside it would hold
    another $0.01, past $0.015, so none is sent. A refused copy is not a refused call: the
    batch starts every line."""
    name = team()
    wf = workflow_from_dict({
        "version": 1,
        "models": {"m": {"usd_per_1m_input": 1.0, "usd_per_1m_output": 100.0, "max_tokens": 100,
                         "prompt_tokens": 10, "completion_tokens": 5,
                         "latency_s": 0.2, "p_ok": 1.0, "hedge_after_s": 0.05}},
        "steps": [{"id": "a", "model": "m"}],
    })  # fmt: skip
    result = run_batch(wf, [{}] * 3, journal=Journal(tmp_path / "j.db"), parallel=1, seed=1,
                       shared=SharedCeiling(name, 0.015, redis_url))  # fmt: skip
    assert result.status == "ok" and [line.status for line in result.lines] == ["ok"] * 3
    assert result.cost_usd < 0.005
    assert spent(redis_url, name) == (pytest.approx(result.cost_usd), 0)
