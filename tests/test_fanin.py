"""The expected latency where branches whose times vary join: the mean of the slowest.

The longest path of mean step times is a lower bound on a run's mean latency; on a
fan-out of retried steps it is far below it. The estimate's expected latency must come
near the Monte Carlo's mean there, stay the sum of means on a chain, and not take two
paths through one step for independent ones.
"""

from __future__ import annotations

import math
from typing import Any

import pytest

from trilemma.plan.estimate import estimate, step_estimate
from trilemma.plan.fanin import mean_longest, retry_spread, spread_mean
from trilemma.plan.simulate import simulate
from trilemma.spec import workflow_from_dict


def spec(steps: list[dict[str, Any]], other: dict[str, Any] | None = None, **model: Any) -> Any:
    """Steps on ``m`` (1 s, p_ok 0.9, and ``model``) or ``other`` (2 s, and ``other``)."""
    profile = {"usd_per_call": 0.001, "latency_s": 1.0, "p_ok": 0.9, **model}
    return workflow_from_dict({"version": 1, "concurrency": 1000,
                               "models": {"m": profile,
                                          "other": {**profile, "latency_s": 2.0, **(other or {})}},
                               "steps": steps})  # fmt: skip


def fan(
    n: int, retries: int = 2, head: dict[str, Any] | None = None, other: dict[str, Any] | None = None,
    **model: Any,
) -> Any:  # fmt: skip
    """``n`` steps side by side (after ``head`` when given), then one after them all."""
    first = [head] if head else []
    after = [head["id"]] if head else []
    workers = [{"id": f"w{i}", "model": "m", "retries": retries, "after": after} for i in range(n)]
    return spec([*first, *workers, {"id": "reduce", "model": "m", "after": [w["id"] for w in workers]}],
                other, **model)  # fmt: skip


def mc_mean(wf: Any) -> float:
    """The Monte Carlo's mean latency, every run going to its end."""
    return simulate(wf, 40_000, seed=3, halt=False).latency_s.mean


def test_a_fan_in_of_retried_steps_is_predicted_near_the_monte_carlo_mean() -> None:
    wf = fan(50)
    e = estimate(wf)
    longest_of_means = step_estimate(wf, wf.steps[0]).latency_expected_s + 1.0
    # the old figure: the longest path of means, 2.14 s; the runs take 3.9 s on average
    assert longest_of_means == pytest.approx(2.14, abs=0.01)
    assert e.latency_expected_s > 1.7 * longest_of_means
    assert e.latency_expected_s == pytest.approx(mc_mean(wf), rel=0.03)
    assert e.latency_critical_s == 2.0  # the critical path takes no retry, as before
    assert e.latency_worst_s == pytest.approx(5.5)


@pytest.mark.parametrize(("jitter", "retries"), [(0.5, 0), (1.0, 0), (0.5, 2)])
def test_a_fan_in_of_jittery_calls_waits_for_the_slowest(jitter: float, retries: int) -> None:
    """20 calls whose latency is lognormal (mean 1 s) joined: the slowest of them takes
    1.3 s more than the mean at jitter 0.5, 3.6 s at 1.0; the sum of means said 2.0 s."""
    wf = fan(20, retries=retries, latency_jitter=jitter)
    e = estimate(wf)
    assert e.latency_expected_s > 1.5 * e.latency_critical_s
    assert e.latency_expected_s == pytest.approx(mc_mean(wf), rel=0.03)
    assert e.latency_worst_s >= e.latency_expected_s  # calls at their profile time: 2 s


@pytest.mark.parametrize(
    ("faults", "retries"),
    [({"transient_error_rate": 0.3}, 1), ({"transient_error_rate": 0.1, "rate_limit_rate": 0.05}, 3),
     ({"timeout_rate": 0.2}, 1)],
    ids=["transient", "rate-limited", "timeouts"],
)  # fmt: skip
def test_a_fan_in_follows_each_way_an_attempt_ends(faults: dict[str, float], retries: int) -> None:
    """A fault ends an attempt in a tenth of its time and a timeout at 60 s: the slowest of
    20 branches is a wrong answer then a whole retry, or a timeout; the attempts' mean time
    alone put the transient case at 4.06 s and the timeouts at 40 s (Monte Carlo 4.51, 107)."""
    wf = fan(20, retries=retries, faults=faults, p_ok=0.85, latency_s=1.65)
    assert estimate(wf).latency_expected_s == pytest.approx(mc_mean(wf), rel=0.03)


@pytest.mark.parametrize(
    ("profile", "calls"),
    [({"latency_jitter": 0.5}, 1), ({"latency_jitter": 0.92, "timeout_s": 1.12, "latency_s": 0.68}, 1),
     ({"latency_jitter": 0.8, "timeout_s": 2.5}, 4), ({"latency_jitter": 0.6, "hedge_after_s": 1.3}, 1),
     ({"latency_jitter": 0.6, "hedge_after_s": 1.3}, 3)],
    ids=["lone", "cut", "wave", "hedged", "hedged-wave"],
)  # fmt: skip
def test_wave_variance_is_that_of_the_calls_that_answer(profile: dict[str, Any], calls: int) -> None:
    """The slowest of ``calls`` lognormal calls (each racing a copy sent after
    ``hedge_after_s``, where hedged), given none outlasts the timeout: its variance over
    its mean squared, against numpy's draws."""
    import numpy as np

    from trilemma.plan.hedge import wave_variance

    m = spec([{"id": "a", "model": "m"}], **{"p_ok": 1.0, **profile}).models["m"]
    rng = np.random.default_rng(5)
    n, sigma = 400_000, m.latency_jitter

    def draw() -> Any:
        return m.latency_s * np.exp(sigma * rng.standard_normal((n, calls)) - sigma * sigma / 2)

    first = draw()
    took = np.where(first <= m.timeout_s, first, np.inf)  # given up at the timeout
    if m.hedge_after_s is not None:  # a copy goes at hedge_after_s if none answered; first wins
        copy = draw()
        raced = np.where(copy <= m.timeout_s, m.hedge_after_s + copy, np.inf)
        took = np.where(first > m.hedge_after_s, np.minimum(took, raced), took)
    slowest = took.max(axis=1)
    answered = slowest[np.isfinite(slowest)]
    assert wave_variance(m, calls) == pytest.approx(answered.var() / answered.mean() ** 2, rel=0.03)


def test_a_timeout_near_the_mean_spreads_the_answers_less() -> None:
    wf = fan(5, retries=0, latency_jitter=0.92, timeout_s=1.12, latency_s=0.68, p_ok=1.0)
    assert estimate(wf).latency_expected_s == pytest.approx(mc_mean(wf), rel=0.03)


@pytest.mark.parametrize("step", [{"vote": {"samples": 5}}, {"debate": {"agents": 3, "rounds": 2}}])
def test_a_fan_in_of_waves_and_hedges_waits_for_the_slowest(step: dict[str, Any]) -> None:
    for model in ({"latency_jitter": 0.6}, {"latency_jitter": 0.6, "hedge_after_s": 1.3}):
        workers = [{"id": f"w{i}", "model": "m", "retries": 1, **step} for i in range(12)]
        wf = spec([*workers, {"id": "end", "model": "m", "after": [w["id"] for w in workers]}],
                  **model)  # fmt: skip
        assert estimate(wf).latency_expected_s == pytest.approx(mc_mean(wf), rel=0.03), model


def test_branches_after_one_varying_step_are_not_taken_for_independent() -> None:
    """A planner step that retries, then 20 workers that never fail: every path goes through
    the planner, so its draws are shared; as independent copies, the slowest of 20 would
    be far above the mean."""
    head = {"id": "plan", "model": "other", "retries": 3}
    wf = fan(20, retries=0, head=head, other={"p_ok": 0.5}, p_ok=1.0)
    e = estimate(wf)
    plan = step_estimate(wf, wf.steps[0]).latency_expected_s
    assert e.latency_expected_s == pytest.approx(plan + 2.0)  # one path: the sum of means
    assert e.latency_expected_s == pytest.approx(mc_mean(wf), rel=0.03)


def test_a_fan_in_of_steps_a_fault_may_cut_short_waits_for_the_slowest() -> None:
    """No retries, no jitter: a transient fault ends an attempt in a tenth of its time, so
    the mean of one branch is 0.73 s, but twenty of them side by side almost always hold
    one that answered in 1 s: 1.73 s (the old figure, with no spread for a lone attempt:
    1.46 s)."""
    wf = fan(20, retries=0, faults={"transient_error_rate": 0.3})
    e = estimate(wf)
    assert e.latency_expected_s > 1.15 * 2 * step_estimate(wf, wf.steps[0]).latency_expected_s
    assert e.latency_expected_s == pytest.approx(mc_mean(wf), rel=0.03)


def stopped_map(n: int, then: bool) -> Any:
    """``fan(n)`` whose ``reduce`` passing ends the run, with one more step after it (or not)."""
    doc = {"version": 1, "concurrency": 1000, "stop_when": "reduce",
           "models": {"m": {"usd_per_call": 0.001, "latency_s": 1.0, "p_ok": 0.9}},
           "steps": [*({"id": f"w{i}", "model": "m", "retries": 2} for i in range(n)),
                     {"id": "reduce", "model": "m", "after": [f"w{i}" for i in range(n)]},
                     *([{"id": "polish", "model": "m", "after": ["reduce"]}] if then else [])]}
    return workflow_from_dict(doc)


@pytest.mark.parametrize("then", [True, False])
def test_an_early_stop_after_a_fan_in_waits_for_the_slowest_too(then: bool) -> None:
    """The stop passes when ``reduce`` does, after the slowest of 50 retried branches: 3.94
    s on average, not the 2.14 s of the schedule of means, which still says what is
    skipped; when it fails, the whole run's joins. The old figure was 2.28 s."""
    wf = stopped_map(50, then)
    e = estimate(wf)
    assert e.stop is not None and e.stop.at_s == pytest.approx(2.14, abs=0.01)
    assert e.stop.at_joined_s == pytest.approx(3.94, abs=0.03)
    assert e.stop.skipped == (("polish",) if then else ())
    assert e.latency_expected_s > 1.6 * (e.stop.chance * e.stop.at_s + (1 - e.stop.chance) * 3.14)
    assert e.latency_expected_s == pytest.approx(mc_mean(wf), rel=0.03)
    assert e.latency_joined_s == e.latency_expected_s <= e.latency_worst_s


def test_an_early_stop_before_the_joins_keeps_its_schedule() -> None:
    """A stop on one lone branch: nothing varying joins before it, so it passes at its
    schedule's time, and the run's joins count only when it fails."""
    doc = {"version": 1, "concurrency": 1000, "stop_when": "first",
           "models": {"m": {"usd_per_call": 0.001, "latency_s": 1.0, "p_ok": 0.9}},
           "steps": [{"id": "first", "model": "m"},
                     *({"id": f"w{i}", "model": "m", "retries": 2} for i in range(30)),
                     {"id": "reduce", "model": "m", "after": [f"w{i}" for i in range(30)]}]}
    wf = workflow_from_dict(doc)
    e = estimate(wf)
    assert e.stop is not None and e.stop.at_joined_s is None and e.stop.at_s == 1.0
    assert e.latency_expected_s == pytest.approx(mc_mean(wf), rel=0.03)


@pytest.mark.parametrize("jitter", [0.5, 1.0])
def test_a_fan_in_of_cascades_waits_for_each_rungs_jitter(jitter: float) -> None:
    """Twenty steps that escalate from a 1 s model to a 2 s one, both jittery: the old
    figure took each rung's answer at its mean (0.80 and 0.56 of the Monte Carlo's)."""
    wf = fan(20, retries=1, latency_jitter=jitter, p_ok=0.8)
    wf = wf.model_copy(update={"steps": [s.model_copy(update={"escalate": ["other"]}) if s.retries else s
                                         for s in wf.steps]})  # fmt: skip
    assert estimate(wf).latency_expected_s == pytest.approx(mc_mean(wf), rel=0.03)


@pytest.mark.parametrize("jitter", [0.0, 0.5])
def test_a_fan_in_of_routed_steps_waits_for_the_slowest_branch(jitter: float) -> None:
    """Twenty routed steps, 15% of them to a debate of two rounds: one of twenty almost
    always goes the slow way. The old figure took every attempt at the branches' mean
    (0.66 of the Monte Carlo's without jitter)."""
    route = {"easy": {"share": 0.85, "model": "other"},
             "hard": {"share": 0.15, "model": "other", "debate": {"agents": 3, "rounds": 2}}}
    wf = spec([*({"id": f"w{i}", "model": "m", "route": route} for i in range(20)),
               {"id": "reduce", "model": "m", "after": [f"w{i}" for i in range(20)]}],
              latency_jitter=jitter, latency_s=0.4)  # fmt: skip
    e = estimate(wf)
    assert e.latency_expected_s > 1.3 * e.per_step[0].latency_expected_s + 0.4
    assert e.latency_expected_s == pytest.approx(mc_mean(wf), rel=0.03)


def test_a_random_dag_of_retried_steps_is_near_the_monte_carlo_mean() -> None:
    import random

    rng = random.Random(7)
    steps = [{"id": f"s{i}", "model": "m", "retries": 2,
              "after": sorted({f"s{rng.randrange(i)}" for _ in range(rng.randint(0, 3))}) if i else []}
             for i in range(200)]  # fmt: skip
    wf = spec(steps, latency_s=0.2, p_ok=0.95)
    e = estimate(wf)
    assert e.latency_expected_s == pytest.approx(mc_mean(wf), rel=0.05)


def test_a_chain_keeps_the_sum_of_its_means() -> None:
    wf = spec([{"id": f"s{i}", "model": "m", "retries": 2, "after": [f"s{i - 1}"] if i else []}
               for i in range(10)])  # fmt: skip
    one = step_estimate(wf, wf.steps[0]).latency_expected_s
    assert estimate(wf).latency_expected_s == pytest.approx(10 * one, rel=1e-12)
    graph = wf.edges()
    rows = {s.id: step_estimate(wf, s) for s in wf.steps}
    assert mean_longest(graph, list(graph), {k: r.latency_expected_s for k, r in rows.items()},
                        {k: r.spread for k, r in rows.items()}) is None  # fmt: skip


def test_steps_that_always_take_their_time_join_as_before() -> None:
    wf = fan(30, retries=0, p_ok=0.5)  # no retry: each takes its second, pass or fail
    assert estimate(wf).latency_expected_s == 2.0


def test_a_branch_that_is_always_the_slowest_sets_the_figure_alone() -> None:
    """A retried 0.4 s step beside a fixed 6 s one (examples/diamond.yaml): every draw's
    longest path is the fixed branch's, so the joins say nothing (their sum, 8.4 s, was
    8.400000000000002 there, and "joins: ... is 8.40s" was printed)."""
    from trilemma import load_workflow

    from .conftest import EXAMPLES

    e = estimate(load_workflow(EXAMPLES / "diamond.yaml"))
    assert e.latency_joined_s is None and e.latency_expected_s == pytest.approx(8.4)


def test_the_figure_is_the_same_each_time() -> None:
    wf = fan(12)
    assert estimate(wf).latency_expected_s == estimate(wf).latency_expected_s


@pytest.mark.parametrize(
    ("model", "step"),
    [
        ({}, {"retries": 3}),
        ({"faults": {"rate_limit_rate": 0.2, "transient_error_rate": 0.1, "timeout_rate": 0.05}}, {"retries": 4}),
        ({"timeout_s": 1.5, "latency_jitter": 0.5}, {"retries": 2}),
        ({}, {"retries": 2, "escalate": ["other"]}),
        ({}, {"retries": 2, "cached": {"hit_rate": 0.4}}),
        ({}, {"retries": 1, "route": {"easy": {"share": 0.7, "model": "m"},
                                      "hard": {"share": 0.3, "model": "other"}}}),
        ({"latency_jitter": 0.5, "timeout_s": 2.5}, {"retries": 2, "escalate": ["other"]}),
        ({"latency_jitter": 0.5, "faults": {"transient_error_rate": 0.2}},
         {"retries": 2, "route": {"easy": {"share": 0.7, "model": "m"},
                                  "hard": {"share": 0.3, "model": "other", "debate": {"agents": 3, "rounds": 1}}}}),
        ({}, {"route": {"easy": {"share": 0.7, "model": "m"}, "hard": {"share": 0.3, "model": "other"}}}),
    ],
    ids=["retries", "faults", "timeouts", "cascade", "partly-cached", "routed", "jittery-cascade",
         "jittery-routed-faults", "routed-once"],
)
def test_a_steps_spread_has_its_expected_latency_as_its_mean(
    model: dict[str, Any], step: dict[str, Any]
) -> None:
    wf = spec([{"id": "a", "model": "m", **step}], **model)
    e = step_estimate(wf, wf.steps[0])
    assert e.spread, "a step that may retry varies"
    assert math.fsum(t[0] for t in e.spread) == pytest.approx(1.0)
    assert spread_mean(e.spread) == pytest.approx(e.latency_expected_s, rel=1e-12)
    assert all(min(t) >= 0.0 for t in e.spread)
    if not model.get("latency_jitter"):  # a lognormal has no top
        assert max(busy + wait + w for _, busy, wait, w, _ in e.spread) <= e.latency_worst_s + 1e-9


def test_retry_spread_waits_a_rate_limits_retry_after_and_the_backoff_otherwise() -> None:
    # two attempts of 1 s; the first fails half the time, a fifth of the time on a 429
    both = [(1.0, 1.0, 1.0)] * 2  # clean attempts of 1 s
    spread = retry_spread(both, [0.5], [0.1], [0.5], after=1.0)
    assert spread[0] == (0.5, 1.0, 0.0, 0.0, 0.0)
    chance, busy, wait, width, sigma = spread[1]
    assert (chance, busy, sigma) == (0.5, 2.0, 0.0)
    # a fifth of the failures wait the 429's 1 s, the rest a uniform wait below 0.5 s: a
    # mean of 0.4 s, the most 1 s, taken as a uniform wait of that mean within them
    assert wait + width / 2 == pytest.approx(0.2 * 1.0 + 0.8 * 0.25)
    assert wait >= 0.0 and wait + width <= 1.0 + 1e-12
    # the backoffs before a third attempt add up with their variances, not their widths
    three = [(1.0, 1.0, 1.0)] * 3
    *_, (chance, busy, wait, width, sigma) = retry_spread(three, [0.5, 0.5], [0.0, 0.0], [0.5, 1.0],
                                                           after=1.0)  # fmt: skip
    assert (chance, busy) == (0.25, 3.0)
    assert wait + width / 2 == pytest.approx(0.75)
    assert width**2 / 12 == pytest.approx((0.5**2 + 1.0**2) / 12)  # not (0.5 + 1.0)^2 / 12
    assert retry_spread(both, [0.0], [0.0], [0.5], after=1.0) == ((1.0, 1.0, 0.0, 0.0, 0.0),)
    # two attempts' calls vary less together than one's: the same mean, half the variance
    one, two = retry_spread(both, [0.5], [0.0], [0.5], after=1.0, variance=math.expm1(0.25))
    assert one[4] == pytest.approx(0.5)
    assert math.expm1(two[4] ** 2) == pytest.approx(math.expm1(0.25) / 2)


def test_optimize_holds_an_expected_latency_budget_on_average() -> None:
    """50 retried steps and one after them under 3.6 s on expected figures: the search adds
    up mean step times (about 2.3 s with every retry), so the cheapest configurations it
    ranks first take longer on average; they are passed over, and the answer's runs take
    what its estimate says."""
    from trilemma.plan.optimize import optimize
    from trilemma.spec import Budget

    wf = fan(50)
    r = optimize(wf, Budget(deadline_s=3.6, min_reliability=0.05), budget_on="expected",
                 max_retries=2)  # fmt: skip
    assert r.best is not None and r.best_estimate is not None
    assert r.over_on_average
    (note,) = [n for n in r.notes if n.startswith("joins: ")]
    assert "meet the 3.6s latency budget only on the sum of mean step times, not on average" in note
    assert r.best_estimate.latency_expected_s <= 3.6
    assert r.best_estimate.reliability >= 0.05
    assert mc_mean(r.best) <= 3.6 * 1.02  # what a run takes, not the sum of means
    assert r.chosen is not None  # those ranked above it are no longer candidates
    assert min(c.cost_expected for c in r.candidates) >= r.chosen.cost_expected - 1e-12


def test_optimize_says_when_no_configuration_holds_on_average() -> None:
    from rich.console import Console

    from trilemma.plan.optimize import optimize
    from trilemma.report.tables import frontier_table
    from trilemma.spec import Budget

    r = optimize(fan(50), Budget(deadline_s=3.0, min_reliability=0.9), budget_on="expected",
                 max_retries=2)  # fmt: skip
    assert r.best is None and r.over_on_average
    (note,) = [n for n in r.notes if n.startswith("joins: ")]
    assert note.startswith("joins: none of the ")
    assert "fits the 3s latency budget on average" in note
    assert "give the steps side by side surer candidates" in note
    over = [c for c in r.frontier if r.over_in_slots(c)]  # met on paper only
    assert over
    console = Console(width=400, record=True)
    console.print(frontier_table(r.frontier, r))
    text = console.export_text()
    rows = [x for x in text.splitlines() if "$" in x]
    assert 0 < sum("not on average" in x for x in rows) <= len(over)  # of the rows shown
    said = " ".join(text.split())
    assert "not on average: meets the budgets on the sum of mean step times" in said
    assert "not in slots" not in said
    # a budget on worst figures is held by the worst case, which draws nothing
    worst = optimize(fan(50), Budget(deadline_s=6.0, min_reliability=0.8), max_retries=2)
    assert worst.best is not None and not worst.over_on_average
    assert not [n for n in worst.notes if n.startswith(("joins: ", "concurrency: "))]


def test_optimize_json_says_the_joins_put_them_over(cli: Any, tmp_path: Any) -> None:
    import yaml

    path = tmp_path / "map.yaml"
    path.write_text(yaml.safe_dump(fan(50).model_dump(mode="json", exclude_defaults=True)))
    got = cli("optimize", path, "--max-latency", "3", "--min-reliability", "0.9",
              "--budget-on", "expected", "--max-retries", "2", "--json")  # fmt: skip
    assert got.code == 1, got.err
    doc = got.json()
    assert doc["over_on_average"] is True and not doc["feasible"]
    assert any(f["over_in_slots"] for f in doc["frontier"])
    assert any(n.startswith("joins: none of the") for n in doc["notes"])


def test_estimate_says_when_joins_set_the_expected_latency(cli: Any, tmp_path: Any) -> None:
    import yaml

    joined, chain = tmp_path / "map.yaml", tmp_path / "chain.yaml"
    joined.write_text(yaml.safe_dump(fan(50).model_dump(mode="json", exclude_defaults=True)))
    steps = [{"id": f"s{i}", "model": "m", "retries": 2, "after": [f"s{i - 1}"] if i else []}
             for i in range(5)]  # fmt: skip
    chain.write_text(yaml.safe_dump(spec(steps).model_dump(mode="json", exclude_defaults=True)))
    said = " ".join(cli("estimate", joined).out.split())
    assert "joins: a run waits for the slowest of the branches that join" in said
    assert "the mean of the longest path over 2,048 drawn runs" in said
    assert "is 3.94s, the expected latency;" in said
    assert "joins:" not in cli("estimate", chain).out  # a chain's mean is the sum of means
    latency = cli("estimate", joined, "--json").json()["latency_s"]
    assert latency["joined"] == pytest.approx(3.94, abs=0.01) == latency["expected"]
    assert latency["critical_path"] < 2.2  # the longest path of means stays beside it
    assert "joined" not in cli("estimate", chain, "--json").json()["latency_s"]


def test_estimate_says_when_joins_set_an_early_stops_time(cli: Any, tmp_path: Any) -> None:
    import yaml

    path = tmp_path / "stop.yaml"
    path.write_text(yaml.safe_dump(stopped_map(50, True).model_dump(mode="json", exclude_defaults=True)))
    said = " ".join(cli("estimate", path).out.split())
    assert "at 2.14s on the expected schedule (3.94s on average: the branches that join" in said
    assert "the mean of when reduce passes (3.94s) and, when it does not, of the whole run's" in said
    doc = cli("estimate", path, "--json").json()
    assert doc["stop_when"]["at_joined_s"] == pytest.approx(3.94, abs=0.01)
    assert doc["latency_s"]["joined"] == doc["latency_s"]["expected"] == pytest.approx(4.09, abs=0.02)


def test_a_wide_fan_holds_one_array_of_draws_not_one_per_branch() -> None:
    """5,000 retried branches joined: their draws are taken into the join as each finishes
    (5,000 x 2,048 floats held at once would be 82 MB)."""
    import tracemalloc

    from trilemma import dag

    wf = fan(5000)
    rows = {s.id: step_estimate(wf, s) for s in wf.steps}
    graph = wf.edges()
    tracemalloc.start()
    try:
        drawn = mean_longest(graph, dag.topo_order(graph), {k: r.latency_expected_s for k, r in rows.items()},
                             {k: r.spread for k, r in rows.items()})  # fmt: skip
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert drawn is not None and drawn[0] > 4.0
    assert peak < 10_000_000  # 1.7 MB: the graph's own and a few arrays; 166 MB branch by branch


def routed_fan(retries: int, branches: int = 5, n: int = 10) -> Any:
    """``n`` routed steps of ``branches`` branches on models of distinct latencies, then one."""
    models = {f"m{i}": {"usd_per_call": 0.001, "latency_s": 0.3 + 0.37 * i, "p_ok": 0.5,
                        "latency_jitter": 0.3, "faults": {"transient_error_rate": 0.1}}
              for i in range(branches + 1)}  # fmt: skip
    route = {f"b{i}": {"share": 1 / branches, "model": f"m{i + 1}"} for i in range(branches)}
    steps = [{"id": f"w{j}", "model": "m0", "retries": retries, "route": route} for j in range(n)]
    steps.append({"id": "r", "model": "m0", "after": [f"w{j}" for j in range(n)]})
    return workflow_from_dict({"version": 1, "concurrency": 1000, "models": models, "steps": steps})


def test_a_routed_steps_ways_are_merged_past_a_bound(monkeypatch: pytest.MonkeyPatch) -> None:
    """Five branches and ten retries make 174,000 ways of ending (2.5 s to list); past
    MAX_STATES neighbours in time merge, keeping the step's mean and the joins' figure."""
    from trilemma.plan import fanin

    wf = routed_fan(10, n=1)
    e = step_estimate(wf, wf.steps[0])
    assert len(e.spread) <= 11 * fanin.MAX_STATES // 2
    assert spread_mean(e.spread) == pytest.approx(e.latency_expected_s, rel=1e-9)
    wf = routed_fan(5)
    capped = estimate(wf).latency_expected_s
    monkeypatch.setattr(fanin, "MAX_STATES", 10**9)
    assert len(step_estimate(wf, wf.steps[0]).spread) > 2_000  # every way apart
    assert estimate(wf).latency_expected_s == pytest.approx(capped, rel=0.005)
