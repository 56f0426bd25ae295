"""The planner bills a multi-call attempt that meets a fault for the calls it answered.

A debate, a vote or a refined call sends its calls in waves (a debate's rounds, then its
judge). When a call faults, the executor lets the others of its wave answer (and bills
them), then fails the attempt without sending the later waves. The estimate and both Monte
Carlos count those calls, billed and sent, and the time the waves took; the executor
measures the same.
"""

from __future__ import annotations

import math

import numpy as np
import pytest

from trilemma import estimate, parse_workflow, simulate
from trilemma.experiments.trials import repeat
from trilemma.journal import Journal
from trilemma.plan.estimate import attempt_of
from trilemma.plan.simulate import simulate_loop
from trilemma.spec import Workflow

FAULTY = """\
version: 1
concurrency: 100
models:
  m: {usd_per_call: 0.01, latency_s: 1.0, p_ok: 0.9, faults: {transient_error_rate: 0.1}}
steps:
  - {id: d, model: m, retries: 3, debate: {agents: 3, rounds: 2, judge: true}}
"""


def spec(kind: str, faults: str = "transient_error_rate: 0.1") -> Workflow:
    return parse_workflow(FAULTY.replace("transient_error_rate: 0.1", faults)
                          .replace("debate: {agents: 3, rounds: 2, judge: true}", kind))  # fmt: skip


def test_a_step_sends_its_calls_in_waves() -> None:
    cases = {
        "debate: {agents: 3, rounds: 2, judge: true}": (3, 3, 1),
        "debate: {agents: 4, rounds: 3}": (4, 4, 4),
        "vote: {samples: 5}": (5,),
        "debate_rounds: 2": (1, 1, 1),
        "debate_rounds: 0": (1,),
    }
    for kind, waves in cases.items():
        (step,) = spec(kind).steps
        assert step.waves == waves
        assert (step.calls, step.sequential_calls) == (sum(waves), len(waves))


def test_an_attempt_bills_each_call_it_reaches_and_answers() -> None:
    """A call of wave ``j`` is sent when every earlier wave answered in full, and billed
    when it answers too: ``sum_j w_j (1 - q)^(C_(j-1))`` sent, ``(1 - q)`` of those billed."""
    m = spec("vote: {samples: 5}").models["m"]
    q = 0.1
    for waves in [(3, 3, 1), (5,), (1, 1, 1), (2, 4, 4, 1), (1,)]:
        a = attempt_of(m, waves)
        reach = [(1 - q) ** sum(waves[:j]) for j in range(len(waves))]
        sent = math.fsum(r * w for r, w in zip(reach, waves, strict=True))
        assert a.sent == pytest.approx(sent)
        assert a.billed == pytest.approx((1 - q) * sent)
        assert a.clean == pytest.approx((1 - q) ** sum(waves))
    debate = attempt_of(m, (3, 3, 1))
    assert debate.billed == pytest.approx(5.1465969)  # not 7 x 0.9^7 = 3.35: the old count
    one = attempt_of(m, (1,))
    assert (one.billed, one.sent, one.fault_billed) == (pytest.approx(0.9), 1.0, 0.0)


def test_the_faulted_attempts_figures_match_brute_force() -> None:
    """Every call drawn apart (numpy, 1M attempts): the calls billed and sent, and the time
    taken (the waves before the fault's, then its wave: the latency beside other calls, a
    tenth of it alone), given a fault."""
    m = spec("vote: {samples: 5}").models["m"]
    rng = np.random.default_rng(7)
    for waves in [(3, 3, 1), (1, 1, 1), (4,)]:
        a = attempt_of(m, waves)
        n = 1_000_000
        faults = rng.random((n, sum(waves))) < 0.1
        ends = np.cumsum(waves)
        wave_of = np.repeat(np.arange(len(waves)), waves)
        first = np.where(faults.any(axis=1), wave_of[faults.argmax(axis=1)], len(waves))
        hit = first < len(waves)
        billed = np.zeros(n)
        sent = np.zeros(n)
        took = np.zeros(n)
        for j, w in enumerate(waves):
            lo = ends[j] - w
            answered = (~faults[:, lo : ends[j]]).sum(axis=1)
            billed += np.where(first >= j, answered, 0)
            sent += np.where(first >= j, w, 0)
            took += np.where(first > j, 1.0, np.where(first == j, 1.0 if w > 1 else 0.1, 0.0))
        assert a.meets == pytest.approx(hit.mean(), abs=0.002)
        assert a.fault_billed == pytest.approx(billed[hit].mean(), rel=0.005)
        assert a.fault_sent == pytest.approx(sent[hit].mean(), rel=0.005)
        assert a.fault_s == pytest.approx(took[hit].mean(), rel=0.005)


@pytest.mark.parametrize(
    "kind",
    ["debate: {agents: 3, rounds: 2, judge: true}", "vote: {samples: 5}", "debate_rounds: 2"],
)
def test_both_monte_carlos_agree_with_the_estimate(kind: str) -> None:
    wf = spec(kind, "transient_error_rate: 0.1, timeout_rate: 0.02")
    e = estimate(wf)
    r = simulate(wf, 200_000, seed=3)
    assert r.cost_usd.mean == pytest.approx(e.cost_expected, rel=0.01)
    assert r.calls.mean == pytest.approx(e.calls_expected, rel=0.01)
    assert r.latency_s.mean == pytest.approx(e.latency_expected_s, rel=0.02)
    ok, cost, latency = simulate_loop(wf, 40_000, seed=4)
    assert ok == pytest.approx(e.reliability, abs=0.01)
    assert cost == pytest.approx(e.cost_expected, rel=0.02)
    assert latency == pytest.approx(e.latency_expected_s, rel=0.03)


def test_a_routed_branch_that_faults_bills_its_answered_calls() -> None:
    wf = parse_workflow("""
version: 1
models:
  router: {usd_per_call: 0.001, latency_s: 0.2, p_ok: 1.0}
  m: {usd_per_call: 0.01, latency_s: 1.0, p_ok: 0.9, faults: {transient_error_rate: 0.15}}
steps:
  - id: r
    model: router
    retries: 2
    route:
      easy: {model: m, share: 0.5}
      hard: {model: m, share: 0.5, debate: {agents: 3, rounds: 2, judge: true}}
""")
    e = estimate(wf)
    r = simulate(wf, 200_000, seed=5)
    assert r.cost_usd.mean == pytest.approx(e.cost_expected, rel=0.01)
    assert r.calls.mean == pytest.approx(e.calls_expected, rel=0.01)
    assert r.latency_s.mean == pytest.approx(e.latency_expected_s, rel=0.02)
    _, cost, _ = simulate_loop(wf, 40_000, seed=6)
    assert cost == pytest.approx(e.cost_expected, rel=0.02)


def test_the_executor_bills_what_the_planner_predicts(tmp_path) -> None:
    """60 runs of a faulty debate (seven calls an attempt, 10% of calls fail): the mean cost,
    calls and latency the executor measures against the estimate. Billing the faulted
    attempts nothing (the old count) predicted 35% less than this, and 40% less time."""
    wf = spec("debate: {agents: 3, rounds: 2, judge: true}")
    e = estimate(wf)
    trials = repeat(wf, 60, Journal(tmp_path / "j.db"), seed=11, time_scale=0.02)
    cost = np.array([t.cost_usd for t in trials])
    assert all(t.status == "ok" for t in trials) or e.reliability < 0.99
    se = cost.std(ddof=1) / math.sqrt(cost.size)
    assert abs(cost.mean() - e.cost_expected) < 3 * se + 1e-9, (cost.mean(), e.cost_expected, se)
    calls = np.array([t.calls for t in trials], dtype=float)
    assert calls.mean() == pytest.approx(e.calls_expected, rel=0.08)
    latency = np.array([t.latency_s for t in trials])
    assert latency.mean() == pytest.approx(e.latency_expected_s, rel=0.15)
