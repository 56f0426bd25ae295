"""An early stop (``stop_when``): what the planner predicts, the Monte Carlo draws and the
executor does, and that the three agree."""

from __future__ import annotations

import asyncio
import json
import math
import time
from pathlib import Path
from typing import Any

import pytest

from trilemma import estimate, load_workflow, parse_workflow, simulate, workflow_from_dict
from trilemma.journal import Journal
from trilemma.plan.simulate import simulate_loop
from trilemma.run.session import execute
from trilemma.testing import FunctionProvider, fast_retries

from .conftest import EXAMPLES, assert_simulation_agrees

RACE = EXAMPLES / "early-stop.yaml"


def p_step(p: float, retries: int) -> float:
    return 1 - (1 - p) ** (retries + 1)


def test_the_estimate_counts_what_the_stop_skips_and_how_often() -> None:
    wf = load_workflow(RACE)
    e = estimate(wf)
    plain = estimate(wf.model_copy(update={"stop_when": None}))
    st = e.stop
    assert st is not None and st.step == "guess" and st.alone
    assert st.chance == pytest.approx(0.70) and st.at_s == pytest.approx(0.5)
    assert st.skipped == ("research", "answer")  # both finish after the guess
    rows = {r.id: r for r in e.per_step}
    skipped_cost = rows["research"].cost_expected + rows["answer"].cost_expected
    assert e.cost_expected == pytest.approx(plain.cost_expected - 0.70 * skipped_cost)
    assert st.in_flight == ("research",)  # sent with the guess, cancelled when it passes
    sent = rows["research"].calls_expected + rows["answer"].calls_expected - 1  # research's first
    assert e.calls_expected == pytest.approx(plain.calls_expected - 0.70 * sent)
    assert e.latency_expected_s == pytest.approx(0.70 * 0.5 + 0.30 * plain.latency_expected_s)
    # passes and stops, or fails and the thorough path must succeed
    thorough = p_step(0.985, 1) ** 2
    assert e.reliability == pytest.approx(0.70 + 0.30 * thorough)
    assert e.cost_worst == plain.cost_worst and e.latency_critical_s == plain.latency_critical_s
    block = e.summary()["stop_when"]
    assert block["skipped"] == ["research", "answer"]
    assert block["saved_usd_expected"] == pytest.approx(0.70 * skipped_cost, abs=1e-9)


def test_a_stop_step_with_steps_after_it_fails_the_run_when_it_fails() -> None:
    wf = parse_workflow("""
version: 1
models:
  m: {usd_per_call: 0.01, latency_s: 0.5, p_ok: 0.9}
  slow: {usd_per_call: 0.05, latency_s: 3, p_ok: 0.95}
steps:
  - {id: draft, model: m, retries: 1}
  - {id: polish, model: slow, after: [draft]}
  - {id: side, model: slow}
stop_when: draft
""")
    e = estimate(wf)
    assert e.stop is not None and not e.stop.alone and e.stop.skipped == ("polish", "side")
    assert e.reliability == pytest.approx(p_step(0.9, 1))  # the draft passing is the run passing
    assert_simulation_agrees(wf, seed=5)


def test_the_monte_carlo_agrees_with_the_estimate() -> None:
    assert_simulation_agrees(load_workflow(RACE), seed=3)


def test_a_step_finishing_before_the_stop_is_paid_and_must_pass() -> None:
    """``early`` finishes before the stop step: it is paid for, and its failure fails the run."""
    wf = parse_workflow("""
version: 1
models:
  fast: {usd_per_call: 0.01, latency_s: 0.2, p_ok: 0.8}
  m: {usd_per_call: 0.02, latency_s: 0.5, p_ok: 0.9}
  slow: {usd_per_call: 0.05, latency_s: 3, p_ok: 0.95}
steps:
  - {id: early, model: fast}
  - {id: bet, model: m}
  - {id: long, model: slow}
stop_when: bet
""")
    e = estimate(wf)
    assert e.stop is not None and e.stop.skipped == ("long",)
    assert e.cost_expected == pytest.approx(0.01 + 0.02 + 0.1 * 0.05)
    assert e.reliability == pytest.approx(0.8 * 0.9 + 0.1 * 0.8 * 0.95)
    r = simulate(wf, 300_000, seed=2)
    assert abs(r.success_rate - e.reliability) <= 4 * r.stderr
    assert r.cost_usd.mean == pytest.approx(e.cost_expected, rel=0.01)
    ok, cost, latency = simulate_loop(wf, 40_000, seed=2)
    assert ok == pytest.approx(r.success_rate, abs=0.01)
    assert cost == pytest.approx(r.cost_usd.mean, rel=0.02)
    assert latency == pytest.approx(r.latency_s.mean, rel=0.02)


def test_estimate_json_and_table_show_the_stop(cli: Any) -> None:
    out = cli("estimate", RACE, "--json")
    assert out.code == 0, out.err
    doc = json.loads(out.out)
    assert doc["stop_when"]["step"] == "guess" and doc["stop_when"]["chance"] == 0.7
    plain = cli("estimate", EXAMPLES / "seed-chain.yaml", "--json")
    assert json.loads(plain.out)["stop_when"] is None
    out = cli("estimate", RACE)
    assert "stop_when guess: it passes 70.00% of the time" in out.out.replace("\n", " ")
    assert doc["stop_when"]["races"] == [] and "decides each race" not in out.out


CLOSE = """
version: 1
models:
  small: {usd_per_call: 0.002, latency_s: 0.5, p_ok: 0.6}
steps:
  - {id: faq, model: small, retries: 2}
  - {id: research, model: small, retries: 3}
  - {id: answer, model: small, after: [research]}
  - {id: slow, model: small, retries: 0, after: [answer]}
stop_when: faq
"""


def test_a_race_retries_can_turn_is_flagged_and_the_monte_carlo_shows_why(cli: Any, write: Any) -> None:
    """faq takes 0.5 s, or up to 3 s with its retries and the backoff before each (0.5 s,
    then 1 s at most); research and answer, skipped on the expected schedule, may both
    finish by 1.0 s (and answer fail the run), and slow by 1.5 s. The estimate flags the
    three; the Monte Carlo, which decides each race, finds less success than the schedule
    gives, and the estimate's reliability is drawn so."""
    wf = parse_workflow(CLOSE)
    e = estimate(wf)
    assert e.stop is not None and set(e.stop.skipped) == {"research", "answer", "slow"}
    assert e.stop.races == ("research", "answer", "slow")
    sim = simulate(wf, 200_000, seed=1)
    schedule = estimate(wf, draw_runs=False)
    assert sim.success_rate < schedule.reliability - 0.05  # the races the schedule cannot see
    assert e.reliability == pytest.approx(sim.success_rate, abs=0.02)
    out = " ".join(cli("estimate", write(CLOSE)).out.split())
    assert "research, answer, slow may finish on the other side of faq" in out
    assert "the reliability are the means of 2,048 runs drawn, each race decided" in out


# ---------------------------------------------------------------------- the executor


def run(wf: Any, tmp_path: Path, answers: dict[str, str], slow: float = 0.0) -> Any:
    """``wf`` on scripted answers by step; the steps but the first take ``slow`` seconds."""

    async def answer(request: Any) -> str:
        step = next(k for k in answers if f"Task: {k}." in request.messages[-1]["content"])
        if step != next(iter(answers)):
            await asyncio.sleep(slow)
        return answers[step]

    with fast_retries():
        return execute(wf, journal=Journal(tmp_path / "j.db"), seed=1,
                       providers={m: FunctionProvider(answer) for m in wf.models})  # fmt: skip


def test_a_lone_stop_step_that_fails_leaves_the_run_to_the_other_path(tmp_path: Path) -> None:
    wf = load_workflow(RACE)
    r = run(wf, tmp_path, {"guess": "about forty", "research": "notes", "answer": "42"})
    assert r.status == "ok" and r.error is None
    assert r.outputs == {"research": "notes", "answer": "42"}
    assert r.steps["guess"].status == "failed" and "GateRejected" in r.steps["guess"].error
    assert r.cost_usd == pytest.approx(0.002 + 0.03 + 0.03)  # the rejected guess is billed


def test_a_lone_stop_step_that_passes_cancels_the_thorough_path(tmp_path: Path) -> None:
    started = time.perf_counter()
    r = run(load_workflow(RACE), tmp_path, {"guess": "42", "research": "notes", "answer": "42"},
            slow=5.0)  # fmt: skip
    assert time.perf_counter() - started < 2.0  # research's call was cancelled, not awaited
    assert r.status == "ok" and r.outputs == {"guess": "42"}
    # an endpoint that bills may bill what it generated: the cancelled call at its reservation
    assert r.cost_usd == pytest.approx(0.002 + 0.03)
    [research] = [c for c in Journal(tmp_path / "j.db").calls(r.run_id) if c["step_id"] == "research"]
    assert research["outcome"] == "cancelled" and research["cost_usd"] == research["reserved_usd"]
    assert r.saved_usd == pytest.approx(sum(
        s.cost_expected for s in r.predicted.per_step if s.id in ("research", "answer")
    ))  # fmt: skip


def test_a_stop_step_with_steps_after_it_still_fails_the_run(tmp_path: Path) -> None:
    wf = parse_workflow("""
version: 1
models: {m: {usd_per_call: 0.01, latency_s: 0.01, p_ok: 1.0}}
steps:
  - {id: draft, model: m, gate: {regex: '^ok$'}}
  - {id: polish, model: m, after: [draft]}
  - {id: side, model: m}
stop_when: draft
""")
    r = run(wf, tmp_path, {"draft": "no", "polish": "x", "side": "y"})
    assert r.status == "failed" and "GateRejected" in (r.error or "")
    assert r.steps["polish"].status == "skipped"


def test_measured_runs_land_on_the_prediction(tmp_path: Path) -> None:
    """200 simulated runs of the race: cost and success as the planner said."""
    wf = load_workflow(RACE)
    wf = wf.model_copy(update={"models": {
        k: m.model_copy(update={"latency_s": m.latency_s / 100}) for k, m in wf.models.items()
    }})  # fmt: skip
    e = estimate(wf)
    journal = Journal(tmp_path / "j.db")
    runs = [execute(wf, journal=journal, seed=i) for i in range(200)]
    assert all(r.status == "ok" for r in runs[:5])
    cost = math.fsum(r.cost_usd for r in runs) / len(runs)
    calls = sum(r.calls for r in runs) / len(runs)
    assert calls == pytest.approx(e.calls_expected, rel=0.1)  # cancelled calls were sent
    stopped = sum(r.outputs.keys() == {"guess"} for r in runs) / len(runs)
    assert abs(stopped - e.stop.chance) <= 4 * math.sqrt(0.7 * 0.3 / 200)  # type: ignore[union-attr]
    assert cost == pytest.approx(e.cost_expected, rel=0.15)


def test_a_cancelled_call_bills_its_reservation_on_a_real_endpoint_and_the_planner_counts_it(
    tmp_path: Path,
) -> None:
    """On the simulator a call the stop cancels bills nothing (its cost unknown, NULL); on a
    real endpoint it bills its reservation (above: the executor), and the estimate and the
    Monte Carlo count that too, and agree."""
    sim = load_workflow(RACE)
    e_sim = estimate(sim)
    assert e_sim.stop is not None and e_sim.stop.cancelled_usd == 0.0
    done = execute(sim, journal=Journal(tmp_path / "sim.db"), seed=1)
    [row] = [c for c in Journal(tmp_path / "sim.db").calls(done.run_id) if c["step_id"] == "research"]
    assert row["outcome"] == "cancelled" and row["cost_usd"] is None
    assert done.cost_usd == pytest.approx(0.002)

    spec = sim.model_dump(mode="json", exclude_none=True)
    for name, m in spec["models"].items():
        m.update(provider="openai", base_url="http://127.0.0.1:9/v1", api_key_env="NO_KEY",
                 model=name)  # fmt: skip
    real = workflow_from_dict(spec)
    assert not real.models["premium"].runs_on_simulator
    e = estimate(real)
    assert e.stop is not None and e.stop.in_flight == ("research",)
    assert e.stop.cancelled_usd == pytest.approx(0.03)  # research's one call, at its price
    assert e.cost_expected == pytest.approx(e_sim.cost_expected + 0.7 * 0.03)
    assert e.stop.to_json(e.per_step)["saved_usd_expected"] == pytest.approx(
        e_sim.stop.to_json(e_sim.per_step)["saved_usd_expected"] - 0.7 * 0.03
    )
    mc = simulate(real, 200_000, seed=1)
    assert mc.cost_usd.mean == pytest.approx(e.cost_expected, rel=0.01)
    _, loop_cost, _ = simulate_loop(real, 20_000, seed=2)
    assert loop_cost == pytest.approx(e.cost_expected, rel=0.03)


RACED = """
version: 1
models:
  b: {usd_per_call: 0.001, latency_s: 1.09, p_ok: 0.957, latency_jitter: 0.96}
steps:
  - {id: first, model: b}
  - {id: votes, model: b, retries: 3, vote: {samples: 4}}
  - {id: answer, model: b, retries: 3, after: [first]}
stop_when: answer
"""


def test_where_steps_race_the_stop_its_cost_and_calls_are_drawn(cli, write) -> None:
    """``votes`` is in flight when ``answer`` passes on the schedule of means, so it was
    counted as cancelled, billing nothing: $0.0022 a run. Its jittery samples mostly answer
    before the stop, and are billed: the runs cost $0.0041."""
    wf = parse_workflow(RACED)
    mc = simulate(wf, 50_000, seed=1, halt=False)
    e = estimate(wf)
    assert e.stop is not None and e.stop.races == ("votes",) and e.drawn is not None
    assert e.cost_expected == pytest.approx(mc.cost_usd.mean, rel=0.03)
    assert e.calls_expected == pytest.approx(mc.calls.mean, rel=0.03)
    assert e.reliability == pytest.approx(mc.success_rate, abs=0.015)
    steps = math.fsum(s.cost_expected for s in e.per_step)
    assert e.stop.saved_usd(e.per_step) == pytest.approx(steps - e.cost_expected)
    schedule = estimate(wf, draw_runs=False)
    assert schedule.drawn is None and schedule.cost_expected < 0.6 * mc.cost_usd.mean
    said = cli("estimate", write(RACED)).out
    assert "the expected cost and calls and the reliability are the means of 2,048 runs" in said
    data = json.loads(cli("estimate", write(RACED), "--json").out)
    assert data["cost_usd"]["expected"] == pytest.approx(e.cost_expected)
    assert data["stop_when"]["saved_usd_expected"] == pytest.approx(steps - e.cost_expected)


def test_where_steps_race_the_stop_its_reliability_is_drawn() -> None:
    """``s0``'s debate is skipped on the schedule of means (it would finish at 4.6 s, the
    stop at 1.3 s), so the schedule left its failures out: 96.6% reliable. Its calls' faults
    end it early, before the stop, and fail the run: 82.7% of runs succeed."""
    wf = workflow_from_dict({
        "version": 1, "concurrency": 1000, "stop_when": "s3",
        "models": {
            "a": {"usd_per_call": 0.001, "latency_s": 0.8, "p_ok": 0.958, "latency_jitter": 0.2},
            "b": {"usd_per_call": 0.001, "latency_s": 2.99, "p_ok": 0.941, "timeout_s": 6.98,
                  "faults": {"transient_error_rate": 0.1, "rate_limit_rate": 0.05}},
            "c": {"usd_per_call": 0.001, "latency_s": 0.94, "p_ok": 0.988},
        },
        "steps": [
            {"id": "s0", "model": "b", "debate": {"agents": 4, "rounds": 2}},
            {"id": "s1", "model": "a", "cached": {"hit_rate": 0.48}},
            {"id": "s2", "model": "c", "retries": 3, "after": ["s0"]},
            {"id": "s3", "model": "a", "retries": 3, "after": ["s1"]},
            {"id": "s4", "model": "c"},
            {"id": "s5", "model": "b"},
            {"id": "s6", "model": "b", "after": ["s0", "s5"]},
            {"id": "s7", "model": "c", "retries": 3, "after": ["s1"]},
        ],
    })  # fmt: skip
    mc = simulate(wf, 50_000, seed=1, halt=False)
    assert estimate(wf, draw_runs=False).reliability > mc.success_rate + 0.1
    assert estimate(wf).reliability == pytest.approx(mc.success_rate, abs=0.02)
