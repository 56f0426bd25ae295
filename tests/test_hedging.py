"""Hedged calls: the planner's figures against sampling, and the executor's race.

A profile's ``hedge_after_s`` sends a second copy of a call still unanswered after that
long; the first answer wins, the other copy is cancelled and billed at its reservation.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from trilemma import estimate, workflow_from_dict
from trilemma.plan.hedge import call_latency, call_price, hedged, worst_call_price
from trilemma.plan.simulate import simulate, simulate_loop


def wf_of(model: dict[str, Any], steps: int = 1, retries: int = 0, parallel: bool = False) -> Any:
    return workflow_from_dict({
        "version": 1, "concurrency": 100, "models": {"m": model},
        "steps": [{"id": f"s{i}", "model": "m", "retries": retries,
                   "after": [] if parallel or i == 0 else [f"s{i - 1}"]} for i in range(steps)],
    })  # fmt: skip


MODEL = {"usd_per_call": 0.01, "latency_s": 2.0, "latency_jitter": 0.8, "p_ok": 0.9}


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
    assert e.latency_expected_s == pytest.approx(
        plain.latency_expected_s * call_latency(m) / 2.0
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
