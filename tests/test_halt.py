"""A failed step stops new calls: the executor sends nothing more, and the planner knows it.

The steps in flight when a step runs out of retries answer and are paid for; the steps not
yet started (beside it, not only below it) are not sent, and a retry's backoff under way
ends, as its retry would not be sent. Both Monte Carlos bill and time a failed run so.
"""

from __future__ import annotations

import statistics
from pathlib import Path

import pytest

from trilemma import parse_workflow
from trilemma.journal import Journal
from trilemma.plan.simulate import simulate, simulate_loop
from trilemma.run.session import execute
from trilemma.spec import Workflow


def beside(latency: float) -> Workflow:
    """A step sure to fail (the longest, so it goes first) beside twelve sure ones, in four
    slots: it fails when the second round ends, and the third round is never sent."""
    return parse_workflow(
        "version: 1\nconcurrency: 4\nmodels:\n"
        f"  slow: {{usd_per_call: 0.01, latency_s: {2 * latency}, p_ok: 1.0e-9}}\n"
        f"  m: {{usd_per_call: 0.01, latency_s: {latency}, p_ok: 1.0}}\n"
        "steps:\n  - {id: bad, model: slow}\n"
        + "\n".join(f"  - {{id: s{i}, model: m}}" for i in range(12)) + "\n"
    )  # fmt: skip


def test_a_failed_step_stops_the_steps_beside_it_in_both_monte_carlos() -> None:
    wf = beside(0.5)
    r = simulate(wf, 2000, seed=1)
    assert r.success_rate == 0.0
    assert r.calls.mean == 7 and r.cost_usd.mean == pytest.approx(0.07)  # not 13 and $0.13
    assert r.latency_s.mean == pytest.approx(1.0)  # not 2.0: the last rounds are not sent
    ok, cost, latency = simulate_loop(wf, 200, seed=1)
    assert (ok, cost, latency) == (0.0, pytest.approx(0.07), pytest.approx(1.0))
    assert simulate(wf, 2000, seed=1, halt=False).cost_usd.mean == pytest.approx(0.13)


def test_the_executor_sends_what_the_monte_carlo_says(tmp_path: Path) -> None:
    r = execute(beside(0.05), journal=Journal(tmp_path / "j.db"), seed=1)
    assert r.status == "failed" and r.calls == 7 and r.cost_usd == pytest.approx(0.07)
    assert r.latency_s == pytest.approx(0.1, abs=0.03)
    assert sum(s.status == "skipped" for s in r.steps.values()) == 6


def test_failed_runs_cost_what_the_monte_carlo_predicts(tmp_path: Path) -> None:
    """Twelve steps at p 0.8 in four slots fail most runs in their first round; the Monte
    Carlo used to bill every step ($0.12), the executor measures about half."""
    wf = parse_workflow(
        "version: 1\nconcurrency: 4\nmodels:\n"
        "  m: {usd_per_call: 0.01, latency_s: 0.03, p_ok: 0.8}\n"
        "steps:\n" + "\n".join(f"  - {{id: s{i}, model: m}}" for i in range(12)) + "\n"
    )  # fmt: skip
    predicted = simulate(wf, 20_000, seed=1)
    runs = [execute(wf, journal=Journal(tmp_path / "j.db"), seed=i) for i in range(60)]
    assert statistics.mean(r.cost_usd for r in runs) == pytest.approx(
        predicted.cost_usd.mean, rel=0.15
    )
    assert predicted.cost_usd.mean < 0.08


def test_a_failed_run_does_not_wait_out_a_backoff(tmp_path: Path) -> None:
    """``y`` fails its first try at once and waits to retry (up to 0.5 s, then 1 s, ...);
    ``x`` fails at 0.01 s: the run stops sending, and ``y``'s wait ends with it."""
    wf = parse_workflow(
        "version: 1\nmodels:\n"
        "  a: {usd_per_call: 0.01, latency_s: 0.01, p_ok: 1.0e-9}\n"
        "  b: {usd_per_call: 0.01, latency_s: 0.02, p_ok: 1.0, "
        "faults: {transient_error_rate: 0.999999}}\n"
        "steps:\n  - {id: x, model: a}\n  - {id: y, model: b, retries: 5}\n"
    )  # fmt: skip
    for seed in range(5):
        r = execute(wf, journal=Journal(tmp_path / f"{seed}.db"), seed=seed)
        assert r.status == "failed" and r.steps["y"].status == "skipped"
        assert r.latency_s < 0.1


def under_way(latency: float) -> Workflow:
    """``x`` fails at a tenth of the latency; ``y``'s first attempt is under way then, and its
    answer, rejected half the time, would be retried (up to three times) if the run went on."""
    return parse_workflow(
        "version: 1\nmodels:\n"
        f"  a: {{usd_per_call: 0.01, latency_s: {latency / 10}, p_ok: 1.0e-9}}\n"
        f"  b: {{usd_per_call: 0.01, latency_s: {latency}, p_ok: 0.5}}\n"
        "steps:\n  - {id: x, model: a}\n  - {id: y, model: b, retries: 3}\n"
    )  # fmt: skip


def test_a_step_under_way_sends_no_retry_after_a_failure(tmp_path: Path) -> None:
    """The Monte Carlos counted ``y``'s retries as drawn ($0.02875 a run, 1.9 s); the
    attempt under way answers and is paid for, and no retry is sent: $0.02, 1 s."""
    wf = under_way(1.0)
    r = simulate(wf, 20_000, seed=1)
    assert r.success_rate == 0.0
    assert r.cost_usd.mean == pytest.approx(0.02) and r.calls.mean == pytest.approx(2.0)
    assert r.latency_s.mean == pytest.approx(1.0)
    ok, cost, latency = simulate_loop(wf, 2000, seed=1)
    assert (ok, cost, latency) == (0.0, pytest.approx(0.02), pytest.approx(1.0))
    assert simulate(wf, 20_000, seed=1, halt=False).cost_usd.mean == pytest.approx(
        0.01 + 0.01 * 1.875, rel=0.02
    )
    for seed in range(3):
        run = execute(under_way(0.05), journal=Journal(tmp_path / "j.db"), seed=seed)
        assert run.status == "failed" and run.calls == 2 and run.cost_usd == pytest.approx(0.02)
        assert run.steps["y"].attempts == 1
