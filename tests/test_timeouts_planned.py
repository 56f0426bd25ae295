"""The planner counts the calls that outlast their ``timeout_s``.

The simulator (and the executor, on a real endpoint) gives up a call still unanswered
after its profile's ``timeout_s``: a timeout, unbilled, and the step retries. With a
lognormal latency a tight timeout cuts the tail: calls fail with ``P(L > T)`` and those
that answer take ``E[L | L <= T]``. The estimate and both Monte Carlos count it, and the
executor measures it.
"""

from __future__ import annotations

import math

import numpy as np
import pytest

from trilemma import estimate, parse_workflow, simulate
from trilemma.journal import Journal
from trilemma.plan.hedge import cut
from trilemma.plan.simulate import simulate_loop
from trilemma.run.session import execute
from trilemma.spec import Workflow
from trilemma.testing import fast_retries

TIGHT = """\
version: 1
models:
  m: {usd_per_call: 0.01, latency_s: 1.0, latency_jitter: 0.8, p_ok: 0.9, timeout_s: 2.0}
steps: [{id: a, model: m, retries: 1}]
"""


@pytest.mark.parametrize(("mean", "sigma", "timeout"), [(1.0, 0.8, 2.0), (2.0, 0.3, 2.5)])
def test_the_cut_matches_the_lognormal_it_cuts(mean: float, sigma: float, timeout: float) -> None:
    rng = np.random.default_rng(1)
    latency = mean * np.exp(sigma * rng.standard_normal(2_000_000) - sigma * sigma / 2)
    late, answered = cut(mean, sigma, timeout)
    assert late == pytest.approx((latency > timeout).mean(), abs=0.001)
    assert answered == pytest.approx(latency[latency <= timeout].mean(), rel=0.002)
    assert answered < mean  # the slow calls are the ones given up


def test_without_jitter_a_call_times_out_always_or_never() -> None:
    assert cut(2.0, 0.0, 1.0) == (1.0, 0.0)
    assert cut(2.0, 0.0, 3.0) == (0.0, 2.0)
    never = parse_workflow(TIGHT.replace("latency_jitter: 0.8, ", "latency_s: 3.0, ", 1)
                           .replace("latency_s: 1.0, ", "", 1))  # fmt: skip
    assert estimate(never).reliability == 0.0  # 3 s calls, given up at 2 s
    assert simulate(never, 10_000, seed=1).success_rate == 0.0


def test_the_estimate_counts_each_attempt_given_up() -> None:
    (step,) = estimate(parse_workflow(TIGHT)).per_step
    late, answered = cut(1.0, 0.8, 2.0)  # about 10% of calls outlast 2 s
    q = (1 - late) * 0.9
    assert step.p_attempt == pytest.approx(q)
    assert step.p_step == pytest.approx(1 - (1 - q) ** 2)
    assert step.cost_expected == pytest.approx(0.01 * (1 - late) * (2 - q))  # timeouts bill nothing
    attempt = (1 - late) * answered + late * 2.0  # a call given up takes its 2 s
    assert step.latency_expected_s == pytest.approx(attempt * (2 - q) + (1 - q) * 0.25)


@pytest.mark.parametrize("hedge", [None, 1.5])
def test_both_monte_carlos_agree_with_the_estimate(hedge: float | None) -> None:
    spec = TIGHT if hedge is None else TIGHT.replace("timeout_s: 2.0", f"timeout_s: 2.0, hedge_after_s: {hedge}")
    wf = parse_workflow(spec)
    e = estimate(wf)
    r = simulate(wf, 200_000, seed=1)
    lo, hi = r.ci95
    assert lo <= e.reliability <= hi, (e.reliability, r.ci95)
    assert r.latency_s.mean == pytest.approx(e.latency_expected_s, rel=0.02 if hedge else 0.01)
    ok, _, latency = simulate_loop(wf, 40_000, seed=2)
    assert ok == pytest.approx(e.reliability, abs=0.01)
    assert latency == pytest.approx(r.latency_s.mean, rel=0.02)
    if hedge is not None:  # given up only when both copies are
        late = cut(1.0, 0.8, 2.0)[0]
        assert e.per_step[0].p_attempt == pytest.approx((1 - late * late) * 0.9)


def test_no_attempt_outlasts_its_timeout() -> None:
    wf = parse_workflow(TIGHT.replace("retries: 1", "retries: 0"))
    free = parse_workflow(TIGHT.replace("retries: 1", "retries: 0").replace("2.0}", "60.0}"))
    tight, loose = simulate(wf, 100_000, seed=3, keep=True), simulate(free, 100_000, seed=3)
    assert tight.samples is not None and tight.samples["latency"].max() <= 2.0 + 1e-9
    assert loose.latency_s.p99 > 3.0  # the tail a 2 s timeout cuts
    assert tight.success_rate == pytest.approx(0.9 * (1 - cut(1.0, 0.8, 2.0)[0]), abs=0.005)


def test_a_cascade_climbs_past_a_rung_that_times_out() -> None:
    wf = parse_workflow("""
version: 1
models:
  small: {usd_per_call: 0.001, latency_s: 1.0, latency_jitter: 1.0, p_ok: 0.8, timeout_s: 1.5}
  big: {usd_per_call: 0.03, latency_s: 2.0, p_ok: 0.95}
steps: [{id: s, model: small, escalate: [big], retries: 1}]
""")
    e = estimate(wf)
    late = cut(1.0, 1.0, 1.5)[0]
    assert e.per_step[0].p_attempt == pytest.approx((1 - late) * 0.8)
    r = simulate(wf, 200_000, seed=4)
    lo, hi = r.ci95
    assert lo <= e.reliability <= hi
    assert r.cost_usd.mean == pytest.approx(e.cost_expected, rel=0.01)


def fanned_out() -> Workflow:
    """20 independent one-call steps at 10 ms (jitter 0.8), given up at 20 ms: about 10% of
    the calls time out."""
    steps = ", ".join(f"{{id: s{i:02d}, model: m}}" for i in range(20))
    return parse_workflow(f"""
version: 1
concurrency: 20
models:
  m: {{usd_per_call: 0.01, latency_s: 0.01, latency_jitter: 0.8, p_ok: 1.0, timeout_s: 0.02}}
steps: [{steps}]
""")


def test_the_executor_gives_up_what_the_planner_predicts(tmp_path) -> None:
    """30 runs of the fan-out: each call that times out is a failed step here (no retries),
    unbilled in the ledger."""
    wf = fanned_out()
    (late, _), journal = cut(0.01, 0.8, 0.02), Journal(tmp_path / "j.db")
    with fast_retries():
        results = [execute(wf, journal=journal, seed=i) for i in range(30)]
    steps_run = [s for r in results for s in r.steps.values() if s.status in ("done", "failed")]
    done = sum(s.status == "done" for s in steps_run) / len(steps_run)
    # a failed step halts the run: its siblings in flight finish, those not yet started do not
    assert len(steps_run) >= 300
    assert done == pytest.approx(1 - late, abs=0.04), (done, 1 - late)
    predicted = estimate(wf).per_step[0].p_step
    assert predicted == pytest.approx(1 - late)
    calls = [c for r in results for c in journal.calls(r.run_id)]
    given_up = [c for c in calls if c["outcome"] == "timeout"]
    assert given_up and all(not c["cost_usd"] for c in given_up)
    assert all(c["latency_s"] is None or c["latency_s"] <= 0.02 + 0.01 for c in given_up)
    assert math.isclose(len(given_up) / len(calls), late, abs_tol=0.04)


def test_estimate_says_how_many_calls_time_out(cli, write) -> None:
    out = " ".join(cli("estimate", write(TIGHT)).out.split())
    assert "models.m.timeout_s: 10.3% of its calls outlast 2s and are given up" in out
    loose = " ".join(cli("estimate", write(TIGHT.replace("2.0}", "60.0}"), name="loose.yaml")).out.split())
    assert "timeout_s" not in loose  # one call in millions: not worth a line


NEVER = """\
version: 1
models:
  premium: {usd_per_call: 0.03, latency_s: 2.0, p_ok: 0.99}
  slow: {usd_per_call: 0.001, latency_s: 90.0, p_ok: 0.99}
steps:
  - {id: a, model: slow, candidates: [slow, premium]}
  - {id: b, model: slow, after: [a], candidates: [slow, premium]}
"""


def test_a_model_that_always_times_out_is_planned_as_one(cli, write) -> None:
    """90 s calls given up at the default 60 s: nothing succeeds and nothing is billed. The
    optimizer (which sums log-reliabilities) once raised on it; it now routes around it."""
    e = estimate(parse_workflow(NEVER))
    assert e.reliability == 0.0 and e.cost_expected == 0.0
    assert e.quality_per_dollar == 0.0 and e.quality_per_expected_dollar == 0.0
    path = write(NEVER)
    out = " ".join(cli("estimate", path).out.split())
    assert "models.slow.timeout_s: 100.0% of its calls outlast 60s" in out and "inf" not in out
    for on in ("worst", "expected", "enforced"):
        r = cli("optimize", path, "--min-reliability", "0.5", "--budget-on", on, "--json")
        assert r.code == 0, (on, r.err)
        assert {s["model"] for s in r.json()["chosen"]["per_step"]} == {"premium"}, on
