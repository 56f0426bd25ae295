"""Hypothesis checks the laws of the cost model on random DAGs."""

from __future__ import annotations

from typing import Any

from hypothesis import example, given, settings
from hypothesis import strategies as st

from trilemma import estimate, workflow_from_dict
from trilemma.plan.estimate import Estimate


@st.composite
def workflows(draw: st.DrawFn, parallel: bool | None = None) -> dict[str, Any]:
    n = draw(st.integers(1, 8))
    models = {
        f"m{i}": {
            "usd_per_call": draw(st.floats(0.0, 1.0)),
            "latency_s": draw(st.floats(0.01, 10.0)),
            "p_ok": draw(st.floats(0.01, 1.0)),
        }
        for i in range(draw(st.integers(1, 3)))
    }
    steps = []
    for i in range(n):
        after = [] if parallel else draw(st.sets(st.integers(0, i - 1), max_size=3)) if i else []
        if parallel is False and i:
            after = {i - 1}
        step: dict[str, Any] = {
            "id": f"s{i}",
            "model": draw(st.sampled_from(sorted(models))),
            "after": [f"s{j}" for j in sorted(after)],
            "retries": draw(st.integers(0, 3)),
        }
        kind = draw(st.sampled_from(["plain", "rounds", "debate", "cached"]))
        if kind == "rounds":
            step["debate_rounds"] = draw(st.integers(0, 3))
        elif kind == "debate":
            step["debate"] = {"agents": draw(st.integers(1, 4)), "rounds": draw(st.integers(1, 3))}
        elif kind == "cached":
            step["cached"] = True
        steps.append(step)
    return {"version": 1, "models": models, "steps": steps}


def _est(spec: dict[str, Any]) -> Estimate:
    return estimate(workflow_from_dict(spec))


@given(workflows(), st.data())
def test_adding_a_retry_never_lowers_reliability(spec: dict[str, Any], data: st.DataObject) -> None:
    before = _est(spec)
    i = data.draw(st.integers(0, len(spec["steps"]) - 1))
    spec["steps"][i]["retries"] += 1
    assert _est(spec).reliability >= before.reliability


@given(workflows())
def test_critical_path_between_longest_step_and_sum_of_steps(spec: dict[str, Any]) -> None:
    e = _est(spec)
    lat = [s.latency_s for s in e.per_step]
    assert max(lat) - 1e-9 <= e.latency_critical_s <= sum(lat) + 1e-9
    worst = [s.latency_worst_s for s in e.per_step]
    assert max(worst) - 1e-9 <= e.latency_worst_s <= sum(worst) + 1e-9


@given(workflows(parallel=False))
def test_parallel_latency_never_exceeds_sequential(spec: dict[str, Any]) -> None:
    sequential = _est(spec)
    for s in spec["steps"]:
        s["after"] = []
    parallel = _est(spec)
    assert parallel.latency_critical_s <= sequential.latency_critical_s + 1e-9
    assert parallel.cost_worst == sequential.cost_worst
    assert parallel.reliability == sequential.reliability


@given(workflows())
@settings(max_examples=200)
def test_worst_cost_at_least_expected_at_least_book(spec: dict[str, Any]) -> None:
    e = _est(spec)
    assert e.cost_worst + 1e-12 >= e.cost_expected >= e.cost_book - 1e-12
    assert e.calls_worst + 1e-9 >= e.calls_expected >= e.calls_book - 1e-9


@given(workflows())
def test_reliability_is_the_product_of_step_success(spec: dict[str, Any]) -> None:
    e = _est(spec)
    product = 1.0
    for s in e.per_step:
        product *= s.p_step
    assert abs(e.reliability - product) < 1e-12
    assert 0.0 <= e.reliability <= 1.0


CHARGED_TO_THE_FAILURE = {  # the case below: most runs fail before the ceiling refuses
    "version": 1,
    "models": {"m0": {"usd_per_call": 0.0, "latency_s": 1.0, "p_ok": 0.5},
               "m1": {"usd_per_call": 1.0, "latency_s": 1.0, "p_ok": 0.5}},
    "steps": [*({"id": f"s{i}", "model": "m0", "after": [], "retries": 0} for i in (0, 1, 2)),
              {"id": "s3", "model": "m1", "after": [], "retries": 2, "debate_rounds": 1},
              *({"id": f"s{i}", "model": "m0", "after": [], "retries": 0} for i in (4, 5)),
              {"id": "s6", "model": "m1", "after": [], "retries": 0}],
}  # fmt: skip


@given(workflows(), st.floats(0.0, 1.0), st.floats(0.0, 1.0))
@example(CHARGED_TO_THE_FAILURE, 0.5, 0.625)
@settings(max_examples=60, deadline=None)
def test_a_spend_ceiling_in_the_monte_carlo_keeps_its_laws(
    spec: dict[str, Any], a: float, b: float
) -> None:
    """Under any ceiling no trajectory spends past it; a higher ceiling fails no trajectory a
    lower one lets through (the draws do not depend on the ceiling, so this holds run by
    run); the worst case as a ceiling stops none.

    Not asserted: that the runs charged to the ceiling (``ceiling_hits``) fall as it rises.
    The executor's do, but the Monte Carlo takes one step at a time and counts the steps
    drawn after a refused call as not sent, even one that started before it in time and
    failed first; which failure a run is charged to then moves with the ceiling (seven
    parallel steps, five of them free calls at p 0.5 beside a $1 refinement retried twice:
    143 of 2,000 runs stopped under $3.50, 564 under $4.375; the executor stops 1% under
    either, the others fail first). Its success rate keeps the law."""
    from trilemma import simulate

    wf = workflow_from_dict(spec)
    worst = _est(spec).cost_worst
    low, high = sorted((a * worst, b * worst))
    runs = {cap: simulate(wf, 2_000, seed=3, max_cost_usd=cap, keep=True)
            for cap in (low, high, worst + 1e-9)}  # fmt: skip
    for cap, r in runs.items():
        assert r.samples is not None and r.samples["cost"].max() <= cap + 1e-9
    lo_ok, hi_ok = runs[low].samples["ok"], runs[high].samples["ok"]  # type: ignore[index]
    assert not (lo_ok & ~hi_ok).any()
    assert runs[worst + 1e-9].ceiling_hits == 0
