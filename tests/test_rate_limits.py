"""A model's ``rpm`` and ``tpm`` in the planner, as the executor holds them.

The executor's buckets start a minute's worth full and refill evenly, so they hold up only
a run that sends more than that; where one does, the estimate's replay, both Monte Carlos
and the executor take the same time.
"""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import pytest

from trilemma import estimate, parse_workflow
from trilemma.experiments.trials import time_scaled
from trilemma.journal import Journal
from trilemma.plan.simulate import simulate, simulate_loop
from trilemma.plan.slots import Bucket, may_bind, over_rate
from trilemma.run.session import execute
from trilemma.spec import Workflow

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


def wide(n: int, limit: str, concurrency: int = 16, latency: float = 0.01) -> Workflow:
    """``n`` independent calls of ``latency`` seconds on one model with ``limit``."""
    return parse_workflow(
        f"version: 1\nconcurrency: {concurrency}\nmodels:\n"
        f"  m: {{usd_per_call: 0.0, latency_s: {latency}, p_ok: 1.0, {limit}}}\n"
        "steps:\n" + "\n".join(f"  - {{id: s{i}, model: m}}" for i in range(n)) + "\n"
    )


def test_a_bucket_lets_a_minutes_worth_go_then_refills_first_come_first_served() -> None:
    b = Bucket(60)  # one a second, sixty at once
    assert [b.take(0.0) for _ in range(60)] == [0.0] * 60
    assert b.take(0.0) == pytest.approx(1.0)  # the 61st waits for the first refill
    assert b.take(0.5) == pytest.approx(2.0)  # one coming later waits behind it
    assert b.take(10.0) == pytest.approx(10.0)  # 8 s later the bucket holds 8 again
    assert b.take(10.0, 7.0) == pytest.approx(10.0)
    assert b.take(10.0, 500.0) == pytest.approx(70.0)  # at most a minute's worth, from 0 left
    with pytest.raises(AssertionError):
        assert b.take(70.0) == pytest.approx(70.0)  # that emptied it


def test_the_replay_waits_for_the_buckets() -> None:
    # 600 go at once (in 16 slots, 0.38 s); the last 20 wait for 10 a second to refill: 2.0 s
    for limit in ("rpm: 600", "tpm: 6000, prompt_tokens: 3, max_tokens: 7"):
        e = estimate(wide(620, limit))
        assert e.latency_scheduled_s == pytest.approx(2.01)
        assert e.slots_bind and e.latency_expected_s == pytest.approx(2.01)
    assert estimate(wide(600, "rpm: 600")).latency_scheduled_s == pytest.approx(0.38)
    # a bucket behind the model's own slots: 620 calls 20 at a time, the last 20 at 2.0 s
    e = estimate(wide(620, "rpm: 600, max_concurrency: 20", concurrency=1000))
    assert e.latency_scheduled_s == pytest.approx(2.01)


def test_a_run_that_sends_less_than_a_minutes_worth_is_not_replayed() -> None:
    wf = wide(600, "rpm: 600", concurrency=1000)
    assert over_rate(wf) == {} and not may_bind(wf, {s.id: 0.01 for s in wf.steps})
    wf = wide(601, "rpm: 600, tpm: 1000, prompt_tokens: 1, max_tokens: 1", concurrency=1000)
    assert over_rate(wf) == {"m": "rpm 600 (601 calls) and tpm 1000 (1202 tokens)"}
    # over a minute's worth, yet the calls come slowly enough for the bucket to refill
    slow = parse_workflow(
        "version: 1\nmodels:\n  m: {usd_per_call: 0.0, latency_s: 1.0, p_ok: 1.0, rpm: 60}\n"
        "steps:\n" + "\n".join(f"  - {{id: s{i}, model: m, after: [{f's{i - 1}' if i else ''}]}}"
                               for i in range(70)) + "\n")  # fmt: skip
    assert over_rate(slow) and not may_bind(slow, {s.id: 1.0 for s in slow.steps})
    assert estimate(slow).latency_scheduled_s == pytest.approx(70.0)


def test_estimate_says_which_rate_limit_holds_the_calls_up(cli: Any, write: Any) -> None:
    path = write(wide(620, "rpm: 600").model_dump_json())
    r = cli("estimate", path)
    text = " ".join(r.out.split())
    assert r.code == 0
    assert "the run's limits (16 slots; m's rpm 600 (620 calls)) hold calls up" in text
    assert "takes 2.01s in them, not 0.01s" in text and "or the rate limits" in text
    assert cli("estimate", path, "--json").json()["latency_s"]["scheduled"] == pytest.approx(2.01)
    doc = cli("simulate", path, "--runs", "500", "--deadline", "1.5", "--json").json()
    assert doc["success_rate"] == 0.0 and doc["deadline_rate"] == 1.0


def test_both_monte_carlos_wait_for_the_buckets() -> None:
    for wf in (wide(620, "rpm: 600"), wide(620, "tpm: 6000, prompt_tokens: 3, max_tokens: 7"),
               wide(620, "rpm: 600, max_concurrency: 20", concurrency=1000)):  # fmt: skip
        assert simulate(wf, 300, seed=1).latency_s.mean == pytest.approx(2.01)
        assert simulate_loop(wf, 3, seed=1)[2] == pytest.approx(2.01)


def _random_dag(rng: random.Random, n: int) -> Workflow:
    """Calls, votes and debates on two models, one with a small ``rpm``, with jitter and
    retries: time in the bucket adds up only where the calls outrun it."""
    steps = []
    for i in range(n):
        deps = sorted({f"s{rng.randrange(i)}" for _ in range(rng.randint(0, 2))}) if i else []
        kind = rng.choice(["", "", ", vote: {samples: 3}", ", debate: {agents: 2, rounds: 2}"])
        steps.append(f"{{id: s{i}, model: {rng.choice('ab')}, after: [{', '.join(deps)}]"
                     f"{kind}, retries: 1}}")  # fmt: skip
    return parse_workflow(
        "version: 1\nconcurrency: 4\nmodels:\n"
        "  a: {usd_per_call: 0.01, latency_s: 0.2, p_ok: 0.9, latency_jitter: 0.4, rpm: 5}\n"
        "  b: {usd_per_call: 0.01, latency_s: 0.4, p_ok: 0.9, latency_jitter: 0.4}\n"
        "steps:\n" + "\n".join(f"  - {s}" for s in steps) + "\n")  # fmt: skip


def test_the_two_monte_carlos_agree_in_the_buckets() -> None:
    rng = random.Random(11)
    for _ in range(3):
        wf = _random_dag(rng, 12)
        assert over_rate(wf)
        fast = simulate(wf, 20_000, seed=2)
        ok, cost, latency = simulate_loop(wf, 4_000, seed=2)
        assert fast.latency_s.mean > 2 * estimate(wf).latency_critical_s  # the bucket binds
        assert latency == pytest.approx(fast.latency_s.mean, rel=0.04)
        assert cost == pytest.approx(fast.cost_usd.mean, rel=0.04)
        assert ok == pytest.approx(fast.success_rate, abs=0.03)


def test_the_executor_takes_the_time_the_planner_predicts(tmp_path: Path) -> None:
    """620 calls under rpm 600 (and again behind the model's own 20 slots): about 2 s
    measured, as replayed; the 600th call goes at once, the 620th after 2 s of refill."""
    for wf in (wide(620, "rpm: 600"), wide(620, "rpm: 600, max_concurrency: 20", 1000)):
        e = estimate(wf)
        r = execute(wf, journal=Journal(tmp_path / "j.db"), seed=1)
        assert r.status == "ok" and r.calls == 620
        assert r.latency_s == pytest.approx(e.latency_scheduled_s, rel=0.1)
    r = execute(wide(600, "rpm: 600"), journal=Journal(tmp_path / "j.db"), seed=1)
    assert r.latency_s < 1.0  # a minute's worth goes at once


def test_a_time_scaled_run_keeps_the_bucket_and_shortens_its_minute(tmp_path: Path) -> None:
    """Seventy 0.5 s calls under rpm 60: sixty at once, the last ten a second apart, 10.5 s.
    Ten times faster (as compare and sweep run), 1.05 s predicted and measured: the bucket
    holds sixty calls still (scaling the rpm instead would let all seventy go at once)."""
    wf = wide(70, "rpm: 60", concurrency=100, latency=0.5)
    assert estimate(wf).latency_scheduled_s == pytest.approx(10.5)
    fast = time_scaled(wf, 0.1)
    assert fast.models["m"].rpm == 60 and fast.models["m"].minute_s == pytest.approx(6.0)
    assert estimate(fast).latency_scheduled_s == pytest.approx(1.05)
    assert simulate(fast, 200, seed=1).latency_s.mean == pytest.approx(1.05)
    r = execute(fast, journal=Journal(tmp_path / "j.db"), seed=1)
    assert r.status == "ok" and r.latency_s == pytest.approx(1.05, rel=0.1)


def test_optimize_moves_calls_off_a_rate_bound_model_or_says_which_limit(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Eight votes of five on a model allowed 30 requests a minute: every configuration
    the search ranks cheapest keeps the votes there and misses 15 s in the bucket; where the
    walk through them finds none that fits, single exchanges from the best move votes to
    the other model until it does. Without another model nothing fits, and the note names
    the limit."""
    from trilemma.plan import optimize as opt
    from trilemma.spec import Budget

    monkeypatch.setattr(opt, "SLOT_TRIES", 1)  # the walk checks the cheapest alone
    text = ("version: 1\nmodels:\n"
            "  small: {usd_per_call: 0.0005, latency_s: 1.0, p_ok: 0.98, rpm: 30}\n"
            "  large: {usd_per_call: 0.0150, latency_s: 2.0, p_ok: 0.99}\nsteps:\n"
            + "".join(f"  - {{id: t{i}, model: small, vote: {{samples: 5}}, retries: 1}}\n"
                      for i in range(8))
            + "  - {id: digest, model: large, after: [t0, t1, t2, t3, t4, t5, t6, t7]}\n")
    assert estimate(parse_workflow(text)).latency_worst_s > 20  # the last ten wait 2 s each
    wf = parse_workflow(text.replace("retries: 1}", "retries: 1, candidates: [small, large]}"))
    found = opt.optimize(wf, Budget(deadline_s=15.0), max_retries=1, beam_width=16)
    assert found.best is not None and found.best_estimate is not None
    assert found.best_estimate.latency_worst_s <= 15.0
    moved = [s.id for s in found.best.steps if s.model == "large" and s.id != "digest"]
    assert len(moved) == 1  # 35 calls on small: five wait for the bucket, 13 s in all
    assert "single-step exchanges that shorten its time in them" in " ".join(found.notes)
    stuck = opt.optimize(parse_workflow(text), Budget(deadline_s=15.0), max_retries=1)
    assert stuck.best is None
    note = " ".join(" ".join(stuck.notes).split())
    assert "rate limits (small's rpm 30 (40 calls))" in note and "raise the rate limits" in note
