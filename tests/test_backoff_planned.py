"""The planner counts the backoff the executor waits before each retry.

The executor waits a uniform draw below ``min(20, 0.5 * 2**(i - 1))`` seconds after a
step's ``i``-th failure (a 429's Retry-After instead); the estimate counts each wait with
the chance its retry happens, the worst case each at its longest, and both Monte Carlos
draw them from a generator of their own, so no other draw moves.
"""

from __future__ import annotations

import math

import numpy as np
import pytest

from trilemma import estimate, parse_workflow, simulate
from trilemma.journal import Journal
from trilemma.plan import simulate as simulate_module
from trilemma.plan.simulate import simulate_loop
from trilemma.run.executor import RunResult
from trilemma.run.retry import scaled_time
from trilemma.run.session import execute
from trilemma.spec.model import SIM_RETRY_AFTER_S, backoff_ceiling

FLAKY = """\
version: 1
models: {m: {usd_per_call: 0.01, latency_s: 0.2, p_ok: 0.5}}
steps: [{id: a, model: m, retries: 3}]
"""

LIMITED = """\
version: 1
models:
  m: {usd_per_call: 0.01, latency_s: 1.0, p_ok: 1.0, faults: {rate_limit_rate: 0.5}}
steps: [{id: a, model: m, retries: 2}]
"""


def test_the_ceiling_doubles_from_half_a_second_up_to_twenty() -> None:
    assert [backoff_ceiling(i) for i in range(1, 9)] == [0.5, 1, 2, 4, 8, 16, 20, 20]
    assert backoff_ceiling(10_000) == 20.0  # no overflow for a long retry budget


def test_the_estimate_counts_each_wait_with_the_chance_its_retry_happens() -> None:
    (step,) = estimate(parse_workflow(FLAKY)).per_step
    calls = 0.2 * (1 + 0.5 + 0.25 + 0.125)
    waits = 0.5 * 0.25 + 0.25 * 0.5 + 0.125 * 1.0  # half of each ceiling, if that retry comes
    assert step.latency_expected_s == pytest.approx(calls + waits)
    assert step.latency_worst_s == pytest.approx(4 * 0.2 + 0.5 + 1.0 + 2.0)
    assert step.latency_s == 0.2  # the critical path takes no retry, and so no wait
    many = estimate(parse_workflow(FLAKY.replace("retries: 3", "retries: 8"))).per_step[0]
    assert many.latency_worst_s == pytest.approx(9 * 0.2 + 0.5 + 1 + 2 + 4 + 8 + 16 + 20 + 20)


def test_a_rate_limit_waits_its_retry_after_instead() -> None:
    (step,) = estimate(parse_workflow(LIMITED)).per_step
    # every failure is a 429 (p_ok 1): each retry waits the simulator's Retry-After
    waits = 0.5 * SIM_RETRY_AFTER_S + 0.25 * SIM_RETRY_AFTER_S
    fault_s = 0.1 * 1.0  # a 429 answers after a tenth of the latency
    calls = (0.5 * 1.0 + 0.5 * fault_s) * (1 + 0.5 + 0.25)
    assert step.latency_expected_s == pytest.approx(calls + waits)
    assert step.latency_worst_s == pytest.approx(3 * 1.0 + 0.5 + 1.0)  # a 429 or any failure


@pytest.mark.parametrize("spec", [FLAKY, LIMITED])
def test_both_monte_carlos_draw_the_waits_the_estimate_counts(spec: str) -> None:
    wf = parse_workflow(spec)
    e = estimate(wf)  # one step: nothing is skipped, so the means agree outright
    r = simulate(wf, 200_000, seed=1)
    assert r.latency_s.mean == pytest.approx(e.latency_expected_s, rel=0.01)
    assert r.latency_s.p99 <= e.latency_worst_s + 1e-9
    _, _, latency = simulate_loop(wf, 40_000, seed=2)
    assert latency == pytest.approx(e.latency_expected_s, rel=0.02)


def test_the_waits_leave_every_other_draw_as_it_was(monkeypatch: pytest.MonkeyPatch) -> None:
    """Drawn from a generator of their own: success and cost, trajectory by trajectory, are
    what they are with no wait at all (so figures without retries keep their seeded values,
    and a budget search still sees the same runs under every budget). Where a failed step
    stops the other, when it fails decides which of the other's retries are sent, so the
    cost is compared with that left out (``halt=False``)."""
    wf = parse_workflow(FLAKY.replace("steps: [", "steps: [{id: b, model: m, retries: 1}, "))
    waited = simulate(wf, 50_000, seed=7, keep=True).samples
    paid = simulate(wf, 50_000, seed=7, keep=True, halt=False).samples
    monkeypatch.setattr(simulate_module, "backoff_ceiling", lambda failures: 0.0)
    quick = simulate(wf, 50_000, seed=7, keep=True).samples
    quick_paid = simulate(wf, 50_000, seed=7, keep=True, halt=False).samples
    assert waited is not None and quick is not None and paid is not None
    assert quick_paid is not None
    assert np.array_equal(waited["ok"], quick["ok"])
    assert np.array_equal(paid["cost"], quick_paid["cost"])
    assert (waited["cost"] <= paid["cost"] + 1e-12).all()  # a halt sends no more
    assert (waited["latency"] >= quick["latency"]).all()
    assert waited["latency"].mean() > quick["latency"].mean() + 0.1


def test_the_executor_waits_what_the_planner_counts(tmp_path) -> None:
    """100 seeded runs, with the backoff at a tenth of real time and with none: the
    difference is the waits, half of each ceiling on average for the retries each run made
    (the Monte Carlo tests above check how often retries come); the runs' own overhead
    cancels out, timer slack remains."""
    wf = parse_workflow(FLAKY.replace("latency_s: 0.2", "latency_s: 0.001"))
    journal = Journal(tmp_path / "j.db")

    def run_all(scale: float) -> list[RunResult]:
        with scaled_time(scale):
            return [execute(wf, journal=journal, seed=i) for i in range(100)]

    def mean(results: list[RunResult]) -> float:
        return math.fsum(r.latency_s for r in results) / len(results)

    scale = 0.1
    waited, quick = run_all(scale), run_all(0.0)
    retries = [r.steps["a"].attempts - 1 for r in waited]
    assert retries == [r.steps["a"].attempts - 1 for r in quick]  # the same runs, but for waits
    predicted = math.fsum(backoff_ceiling(i) / 2 for n in retries for i in range(1, n + 1))
    predicted *= scale / len(waited)  # about 19 ms a run
    measured = mean(waited) - mean(quick)
    assert measured == pytest.approx(predicted, rel=0.2), (measured, predicted)
