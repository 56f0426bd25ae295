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
from trilemma.plan.estimate import Estimate, attempt_of
from trilemma.plan.hedge import cut, hedged, hedged_wave, wave
from trilemma.plan.simulate import _max_normal, simulate_loop
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
    e = monte_carlos_agree(wf, seed=3)
    ok, _, latency = simulate_loop(wf, 40_000, seed=4)
    assert ok == pytest.approx(e.reliability, abs=0.01)
    assert latency == pytest.approx(e.latency_expected_s, rel=0.03)


def monte_carlos_agree(wf: Workflow, seed: int) -> Estimate:
    """Assert that both Monte Carlos' mean cost (and the vectorised one's calls and
    latency) match the estimate; return it."""
    e = estimate(wf)
    r = simulate(wf, 200_000, seed=seed)
    assert r.cost_usd.mean == pytest.approx(e.cost_expected, rel=0.01)
    assert r.calls.mean == pytest.approx(e.calls_expected, rel=0.01)
    assert r.latency_s.mean == pytest.approx(e.latency_expected_s, rel=0.02)
    _, cost, _ = simulate_loop(wf, 40_000, seed=seed + 1)
    assert cost == pytest.approx(e.cost_expected, rel=0.02)
    return e


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
    monte_carlos_agree(wf, seed=5)


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


JITTERY = """\
version: 1
concurrency: 100
models:
  m: {usd_per_call: 0.01, latency_s: 1.0, latency_jitter: 0.5, p_ok: 0.95}
steps:
  - {id: d, model: m, debate: {agents: 6, rounds: 2, judge: true}}
"""


@pytest.mark.parametrize(("sigma", "timeout", "calls"), [(0.5, 60.0, 6), (0.8, 2.0, 5), (0.3, 1.2, 3)])
def test_a_wave_takes_its_slowest_call(sigma: float, timeout: float, calls: int) -> None:
    rng = np.random.default_rng(2)
    slowest = np.exp(sigma * rng.standard_normal((1_000_000, calls)) - sigma * sigma / 2).max(axis=1)
    late, answered = wave(1.0, sigma, timeout, calls)
    assert late == pytest.approx((slowest > timeout).mean(), abs=0.002)
    assert answered == pytest.approx(slowest[slowest <= timeout].mean(), rel=0.003)
    assert wave(1.0, sigma, timeout, 1) == cut(1.0, sigma, timeout)


def test_a_jittery_debate_waits_for_each_rounds_slowest_agent() -> None:
    """Six agents at mean 1 s (jitter 0.5) take 1.76 s a round: the round's slowest. The
    planner used to time the round as one call (3.00 s for the debate)."""
    wf = parse_workflow(JITTERY)
    e = estimate(wf)
    rounds = wave(1.0, 0.5, 60.0, 6)[1]
    assert rounds == pytest.approx(1.755, abs=0.002)
    assert e.latency_expected_s == pytest.approx(2 * rounds + 1.0)
    assert e.latency_worst_s >= e.latency_expected_s  # the worst case is no quicker
    r = simulate(wf, 200_000, seed=8)
    assert r.latency_s.mean == pytest.approx(e.latency_expected_s, rel=0.005)
    _, _, latency = simulate_loop(wf, 40_000, seed=9)
    assert latency == pytest.approx(e.latency_expected_s, rel=0.01)


def test_a_wave_given_up_at_its_timeout_ends_the_attempt() -> None:
    """Five samples of mean 1 s (jitter 0.8) given up at 2 s: a vote's wave is given up when
    any sample is (42% of them), not as one call is (10%)."""
    wf = parse_workflow(JITTERY.replace("latency_jitter: 0.5", "latency_jitter: 0.8, timeout_s: 2.0")
                        .replace("debate: {agents: 6, rounds: 2, judge: true}", "vote: {samples: 5}, retries: 2"))  # fmt: skip
    (step,) = estimate(wf).per_step
    late = wave(1.0, 0.8, 2.0, 5)[0]
    assert late == pytest.approx(0.418, abs=0.001)
    assert step.p_attempt == pytest.approx((1 - late) * 0.95)
    r = simulate(wf, 200_000, seed=10, keep=True)
    lo, hi = r.ci95
    assert lo <= step.p_step <= hi
    assert r.latency_s.mean == pytest.approx(step.latency_expected_s, rel=0.01)
    assert r.cost_usd.mean == pytest.approx(step.cost_expected, rel=0.01)
    ok, cost, latency = simulate_loop(wf, 40_000, seed=11)
    assert (ok, cost) == (pytest.approx(step.p_step, abs=0.01), pytest.approx(step.cost_expected, rel=0.02))
    assert latency == pytest.approx(step.latency_expected_s, rel=0.02)


def test_the_executor_waits_for_the_slowest_agent_as_planned(tmp_path) -> None:
    """40 runs of the jittery debate (calls of 0.2 s at 10x speed): the measured latency
    against the estimate; the old figure (one call per round) is 32% short of it."""
    wf = parse_workflow(JITTERY.replace("latency_s: 1.0", "latency_s: 0.2"))
    e = estimate(wf)
    trials = repeat(wf, 40, Journal(tmp_path / "j.db"), seed=12, time_scale=0.1)
    latency = np.array([t.latency_s for t in trials])
    se = latency.std(ddof=1) / math.sqrt(latency.size)
    assert abs(latency.mean() - e.latency_expected_s) < 3 * se + 0.05 * e.latency_expected_s, (
        latency.mean(), e.latency_expected_s, se)  # fmt: skip
    assert abs(latency.mean() - 0.6) > 3 * se + 0.05 * 0.6  # the old count: 3 x 0.2 s


def test_estimate_says_a_wave_waits_for_its_slowest_call(cli, write) -> None:
    out = " ".join(cli("estimate", write(JITTERY)).out.split())
    assert ("steps.d: its 6 calls sent together wait for the slowest, 1.76s on average at "
            "latency_jitter 0.5 (a call 1.00s)") in out  # fmt: skip
    steady = " ".join(cli("estimate", write(JITTERY.replace("latency_jitter: 0.5, ", ""),
                                            name="steady.yaml")).out.split())  # fmt: skip
    assert "wait for the slowest" not in steady  # without jitter every call takes latency_s


def test_the_slowest_of_a_wave_is_drawn_in_one_draw_whatever_its_width() -> None:
    """By inversion: the same law as the largest of the wave's draws, at the cost of one."""
    rng = np.random.default_rng(13)
    for calls in (2, 6, 100):
        inverted = _max_normal(calls, 400_000, rng)
        direct = rng.standard_normal((400_000, calls)).max(axis=1)
        assert inverted.mean() == pytest.approx(direct.mean(), abs=0.006)
        assert np.percentile(inverted, 99) == pytest.approx(np.percentile(direct, 99), abs=0.03)
    wide = parse_workflow(JITTERY.replace("agents: 6, rounds: 2", "agents: 1000, rounds: 50")
                          .replace("concurrency: 100", "concurrency: 10000"))  # all at once
    r = simulate(wide, 50_000, seed=14)  # 50,001 calls a run, drawn as 51 waves
    assert r.latency_s.mean == pytest.approx(estimate(wide).latency_expected_s, rel=0.002)


TIGHT_VOTE = (  # only the timeouts fail an attempt
    JITTERY.replace("latency_jitter: 0.5", "latency_jitter: 0.8, timeout_s: 2.0")
    .replace("p_ok: 0.95", "p_ok: 1.0")
    .replace("debate: {agents: 6, rounds: 2, judge: true}", "vote: {samples: 5}, retries: 2")
)


def test_a_wave_given_up_bills_the_calls_answered_by_then() -> None:
    """Calls drawn apart (numpy, 1M attempts of a debate at jitter 0.8, given up at 2 s):
    when a wave is given up, the calls of the waves before it and those of its own that
    answered in time are billed, and no later wave is sent."""
    m = parse_workflow(TIGHT_VOTE).models["m"]
    waves = (3, 3, 1)
    a = attempt_of(m, waves)
    rng = np.random.default_rng(15)
    n = 1_000_000
    late = np.exp(0.8 * rng.standard_normal((n, 7)) - 0.32) > 2.0
    wave_of = np.repeat(np.arange(3), waves)
    first = np.where(late.any(axis=1), wave_of[late.argmax(axis=1)], 3)
    given_up = first < 3
    billed = sum(np.where(first >= j, (~late[:, wave_of == j]).sum(axis=1), 0) for j in range(3))
    sent = sum(np.where(first >= j, w, 0) for j, w in enumerate(waves))
    assert a.late == pytest.approx(given_up.mean(), abs=0.002)
    assert a.late_billed == pytest.approx(billed[given_up].mean(), rel=0.005)
    assert a.late_sent == pytest.approx(sent[given_up].mean(), rel=0.005)
    assert a.billed == pytest.approx(billed.mean(), rel=0.005)


def test_the_executor_bills_a_vote_given_up_as_planned(tmp_path) -> None:
    """40 runs of a five-sample vote whose wave is given up 42% of the time: the answered
    samples of a given-up wave are billed (3.8 of 5 on average); counted unbilled, the
    planner said 28% less."""
    wf = parse_workflow(TIGHT_VOTE)
    e = monte_carlos_agree(wf, seed=16)
    trials = repeat(wf, 40, Journal(tmp_path / "j.db"), seed=17, time_scale=0.05)
    cost = np.array([t.cost_usd for t in trials])
    se = cost.std(ddof=1) / math.sqrt(cost.size)
    assert abs(cost.mean() - e.cost_expected) < 3 * se + 1e-9, (cost.mean(), e.cost_expected, se)


MAJORITY = """\
version: 1
models:
  m: {usd_per_call: 0.01, latency_s: 0.001, p_ok: 0.8}
steps:
  - {id: v, model: m, KIND}
"""


@pytest.mark.parametrize("kind", ["vote: {samples: 5}", "debate: {agents: 3, rounds: 2, judge: false}"])
def test_a_majority_is_right_as_often_as_planned(tmp_path, kind: str) -> None:
    """A step's p_ok is its attempt's, so the simulated samples a majority counts agree:
    300 runs at 0.8 succeed about 80% of the time, as estimated. Drawn apart, five samples
    made the majority right 94% of the time, and a judgeless debate's three 91%."""
    wf = parse_workflow(MAJORITY.replace("KIND", kind))
    journal = Journal(tmp_path / "j.db")
    trials = repeat(wf, 300, journal, seed=0, time_scale=0.01)
    p = estimate(wf).reliability
    ok = np.mean([t.status == "ok" for t in trials])
    assert abs(ok - p) < 3 * math.sqrt(p * (1 - p) / len(trials)), (ok, p)
    last = wf.steps[0].waves[-1]
    answers = {}  # the last wave's answers of each attempt: one text
    for run in journal.runs(limit=None):
        for c in journal.calls(run["run_id"]):
            if c["call"] > len(wf.steps[0].waves[:-1]) * last:
                answers.setdefault((run["run_id"], c["attempt"]), set()).add(c["response"])
    assert len(answers) == 300 and all(len(a) == 1 for a in answers.values())


HEDGED = """\
version: 1
concurrency: 100
models:
  m: {usd_per_call: 0.01, latency_s: 1.0, latency_jitter: 0.8, hedge_after_s: 1.5, p_ok: 1.0}
steps:
  - {id: v, model: m, vote: {samples: 5}}
  - {id: d, model: m, after: [v], debate: {agents: 3, rounds: 2, judge: true}}
"""


@pytest.mark.parametrize(("sigma", "after", "timeout", "calls"),
                         [(0.8, 1.5, 60.0, 5), (0.8, 1.5, 60.0, 1), (0.5, 0.8, 2.0, 3),
                          (1.0, 1.0, 4.0, 6)])  # fmt: skip
def test_a_wave_of_hedged_calls_takes_its_slowest_race(
    sigma: float, after: float, timeout: float, calls: int
) -> None:
    """Each hedged call races its own copy (sent after ``after`` if no answer has come, each
    given up at its timeout); the wave waits for the slowest race, and is given up when both
    copies of one call are. Against 400,000 waves drawn copy by copy."""
    rng = np.random.default_rng(21)
    n, half = 400_000, sigma * sigma / 2
    first, copy = np.exp(sigma * rng.standard_normal((2, n, calls)) - half)
    first_in, copy_in = first <= timeout, (first > after) & (copy <= timeout)
    race = np.minimum(np.where(first_in, first, np.inf), np.where(copy_in, after + copy, np.inf))
    given_up = (~(first_in | copy_in)).any(axis=1)
    late, mean = hedged_wave(1.0, sigma, after, timeout, calls)
    assert late == pytest.approx(given_up.mean(), abs=0.002)
    assert mean == pytest.approx(race.max(axis=1)[~given_up].mean(), rel=0.005)
    if calls == 1 and timeout > 10:  # the race alone: the figure hedging has always used
        assert mean == pytest.approx(hedged(1.0, sigma, after)[1], rel=0.002)


@pytest.mark.parametrize("timeout", [60.0, 2.0])
def test_both_monte_carlos_time_hedged_waves_as_estimated(timeout: float) -> None:
    """The vectorised Monte Carlo draws a hedged wave's slowest race by inverting its table,
    the loop draws each call's copies: both agree with the estimate, timeouts and all."""
    wf = parse_workflow(HEDGED.replace("hedge_after_s: 1.5", f"hedge_after_s: 1.5, timeout_s: {timeout}")
                        .replace("{id: v, model: m,", "{id: v, model: m, retries: 2,"))  # fmt: skip
    e = monte_carlos_agree(wf, seed=22)
    ok, _, latency = simulate_loop(wf, 40_000, seed=23)
    assert ok == pytest.approx(e.reliability, abs=0.01)
    assert latency == pytest.approx(e.latency_expected_s, rel=0.03)
    # a hedged call of a wave is not timed as one call any more: the vote's five wait 1.74 s
    assert e.latency_expected_s > 5.0


def test_the_executor_waits_for_the_slowest_hedged_call_as_planned(tmp_path) -> None:
    """60 runs of a hedged vote, then a hedged debate: the executor hedges each call on its
    own and a wave waits for its slowest. Timed as one call, the planner said 3.63 s."""
    wf = parse_workflow(HEDGED)
    e = estimate(wf)
    trials = repeat(wf, 60, Journal(tmp_path / "j.db"), seed=24, time_scale=0.05)
    latency = np.array([t.latency_s for t in trials])
    assert latency.mean() == pytest.approx(e.latency_expected_s, rel=0.1), e.latency_expected_s
    cost = np.array([t.cost_usd for t in trials])
    se = cost.std(ddof=1) / math.sqrt(cost.size)
    assert abs(cost.mean() - e.cost_expected) < 3 * se + 1e-9, (cost.mean(), e.cost_expected, se)
