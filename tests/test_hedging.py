"""Hedged calls: the planner's figures against sampling, and the executor's race.

A profile's ``hedge_after_s`` sends a second copy of a call still unanswered after that
long; the first answer wins, the other copy is cancelled and billed at its reservation.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from trilemma import estimate, parse_workflow, workflow_from_dict
from trilemma.errors import TransientError
from trilemma.journal import Journal
from trilemma.plan.hedge import call_latency, call_price, hedged, worst_call_price
from trilemma.plan.simulate import simulate, simulate_loop
from trilemma.providers.base import Request
from trilemma.run.executor import RunResult
from trilemma.run.session import execute
from trilemma.testing import FunctionProvider, Reply, ScriptedServer, fast_retries


def wf_of(
    model: dict[str, Any], steps: int = 1, retries: int = 0, parallel: bool = False,
    concurrency: int = 100,
) -> Any:  # fmt: skip
    return workflow_from_dict({
        "version": 1, "concurrency": concurrency, "models": {"m": model},
        "steps": [{"id": f"s{i}", "model": "m", "retries": retries,
                   "after": [] if parallel or i == 0 else [f"s{i - 1}"]} for i in range(steps)],
    })  # fmt: skip


# No call outlasts its timeout here (P < 1e-15), so hedged and plain figures compare exactly;
# at the default 60 s, one call in 600,000 would time out, and a hedged one almost never.
MODEL = {"usd_per_call": 0.01, "latency_s": 2.0, "latency_jitter": 0.8, "p_ok": 0.9,
         "timeout_s": 1000.0}


# ---------------------------------------------------------------------- the planner


@pytest.mark.parametrize(
    ("mean", "sigma", "after"),
    [(2.0, 0.8, 2.5), (2.0, 0.5, 1.0), (1.0, 1.5, 3.0), (1.0, 3.0, 0.5), (0.3, 0.05, 0.2)],
)
def test_the_race_s_figures_match_sampling(mean: float, sigma: float, after: float) -> None:
    rng = np.random.default_rng(7)
    n = 1_000_000
    first = mean * np.exp(sigma * rng.standard_normal(n) - sigma * sigma / 2)
    copy = after + mean * np.exp(sigma * rng.standard_normal(n) - sigma * sigma / 2)
    took = np.where(first > after, np.minimum(first, copy), first)
    rate, latency = hedged(mean, sigma, after)
    assert rate == pytest.approx(float(np.mean(first > after)), abs=0.002)
    assert latency == pytest.approx(float(took.mean()), rel=0.005)
    assert latency < mean  # a copy can only make a call earlier


def test_without_jitter_a_hedge_below_the_latency_costs_and_never_wins() -> None:
    assert hedged(2.0, 0.0, 1.0) == (1.0, 2.0)
    assert hedged(2.0, 0.0, 3.0) == (0.0, 2.0)


def test_the_estimate_prices_the_hedge_and_keeps_the_critical_path() -> None:
    plain = estimate(wf_of(MODEL, steps=3, retries=1))
    hedged_wf = wf_of({**MODEL, "hedge_after_s": 2.5}, steps=3, retries=1)
    m = hedged_wf.models["m"]
    rate = hedged(2.0, 0.8, 2.5)[0]
    e = estimate(hedged_wf)
    assert call_price(m) == pytest.approx(0.01 * (1 + rate))
    assert worst_call_price(m) == 0.02
    assert e.cost_expected == pytest.approx(plain.cost_expected * (1 + rate))
    assert e.cost_worst == pytest.approx(2 * plain.cost_worst)
    assert e.latency_critical_s == plain.latency_critical_s  # latency_s: nominal, as before
    waits = 3 * 0.1 * 0.25  # each step's backoff before its retry, hedged or not
    assert e.latency_expected_s == pytest.approx(
        (plain.latency_expected_s - waits) * call_latency(m) / 2.0 + waits
    )
    assert e.reliability == plain.reliability


def test_the_monte_carlo_agrees_with_the_estimate_and_cuts_the_tail() -> None:
    plain_wf = wf_of(MODEL, steps=2, retries=2)
    wf = wf_of({**MODEL, "hedge_after_s": 2.5}, steps=2, retries=2)
    e = estimate(wf)
    r = simulate(wf, 200_000, seed=1)
    plain = simulate(plain_wf, 200_000, seed=1)
    assert r.cost_usd.mean == pytest.approx(e.cost_expected, rel=0.01)
    assert r.latency_s.p99 < 0.75 * plain.latency_s.p99
    assert r.latency_s.mean < plain.latency_s.mean
    assert r.calls.mean > plain.calls.mean  # the copies are calls too
    success, cost, latency = simulate_loop(wf, 40_000, seed=2)  # the plain-Python reference
    assert success == pytest.approx(r.success_rate, abs=0.01)
    assert cost == pytest.approx(r.cost_usd.mean, rel=0.02)
    assert latency == pytest.approx(r.latency_s.mean, rel=0.02)


def test_expected_and_worst_calls_count_the_copies() -> None:
    plain = estimate(wf_of(MODEL, steps=3, retries=1))
    e = estimate(wf_of({**MODEL, "hedge_after_s": 2.5}, steps=3, retries=1))
    rate = hedged(2.0, 0.8, 2.5)[0]
    assert e.calls_expected == pytest.approx(plain.calls_expected * (1 + rate))
    assert e.calls_worst == 2 * plain.calls_worst
    assert e.calls_book == plain.calls_book


def test_scaled_time_scales_the_hedge_too() -> None:
    """compare and sweep run simulated time faster: the hedge must keep its place."""
    from trilemma.experiments.trials import time_scaled

    fast = time_scaled(wf_of({**MODEL, "hedge_after_s": 2.5}), 0.01)
    assert fast.models["m"].hedge_after_s == pytest.approx(0.025)
    assert fast.models["m"].latency_s == pytest.approx(0.02)


def test_a_hedge_at_or_past_the_timeout_is_refused(cli: Any, write: Any) -> None:
    path = write(
        "version: 1\nmodels:\n  m: {usd_per_call: 0.01, latency_s: 1, p_ok: 0.9, "
        "timeout_s: 5, hedge_after_s: 5}\nsteps: [{id: a, model: m}]\n"
    )
    out = cli("estimate", path)
    assert out.code == 2
    assert "hedge_after_s (5) must be below timeout_s (5)" in out.err
    assert "models.m" in out.err and "Traceback" not in out.err


# ---------------------------------------------------------------------- the executor


def scripted(slow_first: float, copy: str | Exception = "fast") -> FunctionProvider:
    """The first copy of each call takes ``slow_first`` s; its hedge answers ``copy`` at once."""

    async def answer(request: Request) -> str:
        if request.call_key.endswith(":h"):
            await asyncio.sleep(0.01)
            if isinstance(copy, Exception):
                raise copy
            return copy
        await asyncio.sleep(slow_first)
        return "slow"

    return FunctionProvider(answer)


def run(wf: Any, tmp_path: Path, provider: Any = None, **kw: Any) -> tuple[RunResult, Journal]:
    journal = Journal(tmp_path / "j.db")
    providers = {"m": provider} if provider is not None else None
    with fast_retries():
        return execute(wf, journal=journal, seed=3, providers=providers, **kw), journal


HEDGED = {"usd_per_call": 0.01, "latency_s": 0.1, "p_ok": 1.0, "hedge_after_s": 0.1}


def test_the_copy_answers_first_and_the_slow_one_is_billed_at_its_reservation(
    tmp_path: Path,
) -> None:
    started = time.perf_counter()
    r, j = run(wf_of(HEDGED), tmp_path, scripted(slow_first=5.0))
    assert time.perf_counter() - started < 2.0  # not the first copy's 5 s
    assert r.status == "ok" and r.outputs == {"s0": "fast"}
    calls = j.calls(r.run_id)
    assert [c["outcome"] for c in calls] == ["hedged", "ok"]
    first, copy = calls
    assert copy["idempotency_key"] == first["idempotency_key"] + ":h"
    assert copy["role"] == "call (hedge)" and copy["response"] == "fast"
    assert first["cost_usd"] == first["reserved_usd"] == 0.01
    assert "answered first" in first["error"]
    assert 0.1 <= first["latency_s"] < 1.0  # in flight until its copy answered (~0.11 s)
    assert r.cost_usd == pytest.approx(0.02) and r.calls == 2
    assert r.steps["s0"].cost_usd == pytest.approx(0.02)


def test_the_losing_copy_counts_against_the_ceiling(tmp_path: Path) -> None:
    """Step 1 pays for both its copies ($0.02), so step 2's $0.01 would cross $0.025."""
    r, _ = run(wf_of(HEDGED, steps=2), tmp_path, scripted(slow_first=5.0), max_cost_usd=0.025)
    assert r.status == "budget_exhausted"
    assert r.outputs == {"s0": "fast"} and r.cost_usd == pytest.approx(0.02)


def test_a_fast_answer_sends_no_copy(tmp_path: Path) -> None:
    r, j = run(wf_of(HEDGED, steps=3), tmp_path, scripted(slow_first=0.0))
    assert r.status == "ok" and r.calls == 3
    assert [c["outcome"] for c in j.calls(r.run_id)] == ["ok"] * 3


def test_no_room_under_the_ceiling_means_no_copy_and_the_call_goes_on(tmp_path: Path) -> None:
    r, j = run(wf_of(HEDGED), tmp_path, scripted(slow_first=0.4), max_cost_usd=0.015)
    assert r.status == "ok" and r.outputs == {"s0": "slow"}  # not budget_exhausted
    assert [c["outcome"] for c in j.calls(r.run_id)] == ["ok"]
    assert r.cost_usd == pytest.approx(0.01)


def test_a_copy_is_sent_only_into_a_free_global_slot(tmp_path: Path) -> None:
    """``concurrency`` bounds the calls in flight, copies included: two slow calls under a
    limit of 3 leave room for one copy, and the other call goes on alone."""
    flying = {"now": 0, "most": 0}
    inner = scripted(slow_first=0.4).fn

    async def counted(request: Request) -> str:
        flying["now"] += 1
        flying["most"] = max(flying["most"], flying["now"])
        try:
            return await inner(request)
        finally:
            flying["now"] -= 1

    r, j = run(wf_of(HEDGED, steps=2, parallel=True, concurrency=3), tmp_path,
               FunctionProvider(counted))  # fmt: skip
    assert r.status == "ok" and r.calls == 3 and flying["most"] == 3
    assert sorted(c["outcome"] for c in j.calls(r.run_id)) == ["hedged", "ok", "ok"]
    assert sorted(r.outputs.values()) == ["fast", "slow"]


def test_a_copy_gives_its_slot_back(tmp_path: Path) -> None:
    """Under a limit of 2, each step of a chain has room for its copy only if the last
    step's copy gave its slot back."""
    r, j = run(wf_of(HEDGED, steps=3, concurrency=2), tmp_path, scripted(slow_first=5.0))
    assert r.status == "ok" and r.calls == 6
    assert [c["outcome"] for c in j.calls(r.run_id)] == ["hedged", "ok"] * 3


def test_a_full_run_sends_no_copy(tmp_path: Path) -> None:
    r, j = run(wf_of(HEDGED, concurrency=1), tmp_path, scripted(slow_first=0.3))
    assert r.status == "ok" and r.outputs == {"s0": "slow"} and r.calls == 1
    assert [c["outcome"] for c in j.calls(r.run_id)] == ["ok"]


def test_a_copy_that_fails_leaves_the_race_to_the_other(tmp_path: Path) -> None:
    r, j = run(wf_of(HEDGED), tmp_path, scripted(0.4, TransientError("simulated 503")))
    assert r.status == "ok" and r.outputs == {"s0": "slow"}
    calls = j.calls(r.run_id)
    assert sorted(c["outcome"] for c in calls) == ["ok", "transient"]
    assert sum(c["cost_usd"] or 0 for c in calls) == pytest.approx(0.01)  # errors are not billed


def test_when_both_copies_fail_the_step_retries(tmp_path: Path) -> None:
    tries = {"n": 0}

    async def answer(request: Request) -> str:
        tries["n"] += 1
        if request.call_key.startswith("s0:1:"):  # attempt 1: the first copy is slow, both fail
            await asyncio.sleep(0.3 if not request.call_key.endswith(":h") else 0.0)
            raise TransientError("simulated 503")
        return "second attempt"

    r, j = run(wf_of(HEDGED, retries=1), tmp_path, FunctionProvider(answer))
    assert r.status == "ok" and r.outputs == {"s0": "second attempt"}
    assert [c["outcome"] for c in j.calls(r.run_id)] == ["transient", "transient", "ok"]
    assert r.cost_usd == pytest.approx(0.01)


def test_the_deadline_cancels_both_copies_and_bills_each_at_its_reservation(tmp_path: Path) -> None:
    """An endpoint that bills may bill what it generated before the hang-up: each copy is
    billed at its reservation, the most it could be, as the gateway bills a client that
    leaves."""
    async def hang(request: Request) -> str:
        await asyncio.sleep(5.0)
        return "late"

    started = time.perf_counter()
    r, j = run(wf_of(HEDGED), tmp_path, FunctionProvider(hang), deadline_s=0.5)
    assert time.perf_counter() - started < 2.0
    assert r.status == "deadline"
    calls = j.calls(r.run_id)
    assert [c["outcome"] for c in calls] == ["cancelled", "cancelled"]
    assert calls[1]["idempotency_key"] == calls[0]["idempotency_key"] + ":h"
    assert [c["cost_usd"] for c in calls] == [c["reserved_usd"] for c in calls] == [0.01, 0.01]
    assert all("billed at its reservation" in c["error"] for c in calls)
    assert r.cost_usd == pytest.approx(0.02)
    assert j.spent(r.run_id) == pytest.approx(0.02)  # what a resume counts against its ceiling


def test_the_simulator_s_hedges_match_the_planner(tmp_path: Path) -> None:
    """40 parallel jittered calls on the simulator: every hedge in the ledger, billed."""
    model = {"usd_per_call": 0.01, "latency_s": 0.2, "latency_jitter": 0.9, "p_ok": 1.0,
             "hedge_after_s": 0.25}  # fmt: skip
    wf = wf_of(model, steps=40, parallel=True)
    r, j = run(wf, tmp_path)
    calls = j.calls(r.run_id)
    hedges = [c for c in calls if c["outcome"] == "hedged"]
    assert r.status == "ok" and len(r.outputs) == 40
    assert sum(c["outcome"] == "ok" for c in calls) == 40  # one answer per step
    assert len(calls) == r.calls == 40 + len(hedges)  # a hedged call is two
    assert r.cost_usd == pytest.approx(0.01 * len(calls))
    assert 0 < len(hedges) < 40
    # the planner expects 24.9% of calls to be hedged: 10 of 40, here within sampling noise
    assert abs(len(hedges) - 40 * hedged(0.2, 0.9, 0.25)[0]) <= 8


def test_at_token_prices_the_loser_is_billed_its_hold_as_the_planner_prices(
    tmp_path: Path,
) -> None:
    """200 parallel jittered calls at token prices: an answer bills $0.002 (1,000 prompt
    tokens, 100 answer tokens), a copy that loses its race its hold, $0.011 (every token
    max_tokens allows). The planner prices a call at $0.002 plus the chance of a copy times
    $0.011 ($0.0047, where twice the answer's price said $0.0025); the run bills that."""
    model = {"usd_per_1m_input": 1.0, "usd_per_1m_output": 10.0, "prompt_tokens": 1000,
             "completion_tokens": 100, "max_tokens": 1000, "latency_s": 0.2,
             "latency_jitter": 0.9, "p_ok": 1.0, "hedge_after_s": 0.25}  # fmt: skip
    wf = wf_of(model, steps=200, parallel=True, concurrency=400)
    e = estimate(wf)
    rate = hedged(0.2, 0.9, 0.25)[0]
    assert e.cost_expected == pytest.approx(200 * (0.002 + rate * 0.011))
    assert e.cost_worst == pytest.approx(200 * 0.013)
    assert simulate(wf, 20_000, seed=1).cost_usd.mean == pytest.approx(e.cost_expected, rel=0.01)
    assert simulate_loop(wf, 200, seed=1)[1] == pytest.approx(e.cost_expected, rel=0.02)
    r, j = run(wf, tmp_path)
    hedges = [c for c in j.calls(r.run_id) if c["outcome"] == "hedged"]
    assert r.status == "ok" and r.cost_usd == pytest.approx(200 * 0.002 + len(hedges) * 0.011)
    assert abs(r.cost_usd - e.cost_expected) <= 18 * 0.011  # 50 hedges expected, sd 6


def test_a_real_endpoint_s_slow_answer_loses_to_its_copy(tmp_path: Path) -> None:
    """The openai provider on a scripted server: the first request hangs, its copy answers."""
    n = {"i": 0}

    def reply(payload: dict[str, Any]) -> Reply:
        n["i"] += 1
        if n["i"] == 1:
            return Reply("late", delay_s=3.0, prompt_tokens=10, completion_tokens=5)
        return Reply("copy", prompt_tokens=10, completion_tokens=5)

    with ScriptedServer(reply) as srv:
        text = f"""
version: 1
models:
  m: {{provider: openai, base_url: "{srv.url}", model: m1, usd_per_1m_input: 100.0,
       usd_per_1m_output: 200.0, latency_s: 0.1, p_ok: 0.9, timeout_s: 10, hedge_after_s: 0.3}}
steps: [{{id: a, model: m}}]
"""
        started = time.perf_counter()
        r, j = run(parse_workflow(text), tmp_path)
        took = time.perf_counter() - started
    assert r.status == "ok" and r.outputs == {"a": "copy"} and took < 2.5
    late, copy = j.calls(r.run_id)
    assert (late["outcome"], copy["outcome"]) == ("hedged", "ok")
    assert copy["cost_usd"] == pytest.approx((100 * 10 + 200 * 5) / 1e6)  # billed from usage
    assert late["cost_usd"] == late["reserved_usd"] > copy["cost_usd"]  # at its worst case
    assert r.cost_usd == pytest.approx(late["cost_usd"] + copy["cost_usd"])


# ---------------------------------------------------------------------- choosing a threshold

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


def test_thresholds_trade_cost_for_the_tail_from_one_seed() -> None:
    from trilemma.plan.thresholds import hedge_thresholds, with_hedge

    wf = parse_workflow((EXAMPLES / "jittery.yaml").read_text())
    rows = hedge_thresholds(wf, "premium", ["1.5", "p80", "6", "none", "6"], 50_000, seed=4)
    assert [r.label for r in rows] == ["none", "6", "p80", "1.5"]  # baseline first, then longest
    none, six, p80, fast = rows
    assert none.after_s is None and none.copy_rate == 0.0
    assert none.estimate.cost_expected == pytest.approx(estimate(wf).cost_expected)
    assert p80.copy_rate == pytest.approx(0.20, abs=1e-6)  # p80: the slowest fifth are hedged
    costs = [r.estimate.cost_expected for r in rows]
    tails = [r.sim.latency_s.p99 for r in rows]
    assert costs == sorted(costs) and tails == sorted(tails, reverse=True)
    assert fast.sim.latency_s.p99 < 0.7 * none.sim.latency_s.p99
    for r in rows:  # each row is the Monte Carlo of the spec with that threshold
        assert r.sim.cost_usd.mean == pytest.approx(r.estimate.cost_expected, rel=0.02)
    again = simulate(with_hedge(wf, "premium", six.after_s), 50_000, seed=4)
    assert again.latency_s == six.sim.latency_s


def test_simulate_hedge_prints_the_table_writes_json_and_a_plot(
    cli: Any, tmp_path: Path
) -> None:
    spec = EXAMPLES / "jittery.yaml"
    out = cli("simulate", spec, "--hedge", "3,p95", "--runs", "20000", "--seed", "1")
    assert out.code == 0, out.err
    assert "Hedging model 'premium'" in out.out and "(p95)" in out.out and "3.00s" in out.out
    png = tmp_path / "hedge.png"
    out = cli("simulate", spec, "--hedge", "premium=3", "--runs", "5000", "--json", "--plot", png)
    assert out.code == 0, out.err
    import json

    doc = json.loads(out.out)
    assert doc["model"] == "premium" and [t["hedge_after_s"] for t in doc["thresholds"]] == [None, 3.0]
    hedged_row = doc["thresholds"][1]
    assert hedged_row["cost_worst_usd"] == pytest.approx(2 * doc["thresholds"][0]["cost_worst_usd"])
    assert 0.1 < hedged_row["copy_rate"] < 0.25 and "p99" in hedged_row["simulated"]["latency_s"]
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    out = cli("simulate", spec, "--hedge", "3", "--deadline", "12", "--runs", "20000", "--json")
    cut = [t["simulated"]["deadline_rate"] for t in json.loads(out.out)["thresholds"]]
    assert 0.10 < cut[0] < 0.16 and 0.03 < cut[1] < 0.08  # the hedge halves the runs cut
    out = cli("simulate", spec, "--hedge", "3", "--deadline", "12", "--runs", "20000")
    assert "cut at 12s" in out.out


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--hedge", "cheap=3"], "no model 'cheap' in the spec (it has premium)"),
        (["--hedge", "premium="], "give thresholds, e.g. --hedge premium=none,p95,p90,3"),
        (["--hedge", "soon"], "a threshold is seconds (3), a percentile of the model's latency"),
        (["--hedge", "p100"], "a threshold is seconds (3), a percentile"),
        (["--hedge", "0"], "a threshold must be a number of seconds above 0"),
        (["--hedge", "inf"], "a threshold must be a number of seconds above 0"),
        (["--hedge", "=3"], "name the model before '=', as in --hedge premium=3"),
        (["--hedge", "60"], "60 s is not below model 'premium''s timeout_s (60)"),
    ],
)
def test_bad_hedge_thresholds_exit_2_naming_the_flag(
    cli: Any, args: list[str], message: str
) -> None:
    out = cli("simulate", EXAMPLES / "jittery.yaml", "--runs", "100", *args)
    assert out.code == 2
    assert message in out.err and "Traceback" not in out.err


def test_a_percentile_needs_jitter_and_two_models_need_a_name(cli: Any, write: Any) -> None:
    path = write("version: 1\nmodels:\n  a: {usd_per_call: 0.01, latency_s: 1, p_ok: 0.9}\n"
                 "  b: {usd_per_call: 0.02, latency_s: 1, p_ok: 0.9}\n"
                 "steps: [{id: s, model: a}]\n")  # fmt: skip
    out = cli("simulate", path, "--runs", "100", "--hedge", "p90")
    assert out.code == 2 and "the spec has 2 models; name one, as in --hedge a=p90" in out.err
    out = cli("simulate", path, "--runs", "100", "--hedge", "a=p90")
    assert out.code == 2 and "model 'a' has no latency_jitter" in out.err
    out = cli("simulate", path, "--runs", "100", "--hedge", "a=0.5")  # seconds do: cost, no gain
    assert out.code == 0, out.err


def test_a_vote_s_copies_need_room_in_the_monte_carlo_as_in_the_executor(tmp_path: Path) -> None:
    """A vote of three hedged $0.01 calls under $0.03: the three calls fill the ceiling, so
    the executor sends no copy and bills $0.03. The Monte Carlo priced each call with its
    copy's expected share and billed $0.0445, past the ceiling; now it stops at $0.03."""
    wf = parse_workflow(
        "version: 1\nmodels:\n  m: {usd_per_call: 0.01, latency_s: 0.4, latency_jitter: 0.8,"
        " hedge_after_s: 0.3, p_ok: 1.0}\nsteps:\n  - {id: v, model: m, vote: {samples: 3}}\n"
    )
    r = simulate(wf, 2_000, seed=1, max_cost_usd=0.03, keep=True)
    assert r.samples is not None and r.samples["cost"].max() <= 0.03 + 1e-9
    assert simulate_loop(wf, 200, seed=1, max_cost_usd=0.03)[1] <= 0.03 + 1e-9
    run_, _ = run(wf, tmp_path, max_cost_usd=0.03)
    assert run_.status == "ok" and run_.cost_usd == pytest.approx(0.03) and run_.calls == 3
