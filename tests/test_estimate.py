"""The analytic estimate: the seed's laws on real DAGs."""

from __future__ import annotations

import math

import pytest

from trilemma import estimate, load_workflow, parse_workflow
from trilemma.plan.estimate import CACHE_HIT_LATENCY_S
from trilemma.plan.simulate import simulate, simulate_loop

from .conftest import EXAMPLES


def test_exercise_32_10_1_ticket_worst_case_is_30_calls_and_90_cents(cli) -> None:
    r = cli("estimate", EXAMPLES / "ticket.yaml", "--json")
    assert r.code == 0, r.err
    d = r.json()
    assert d["calls"]["worst"] == 30
    assert d["cost_usd"]["worst"] == 0.9
    assert d["cost_usd"]["book"] == 0.45
    assert d["cost_usd"]["worst"] * 200_000 == pytest.approx(180_000)


def test_estimate_json_has_the_contract_keys(cli) -> None:
    d = cli("estimate", EXAMPLES / "diamond.yaml", "--json").json()
    assert d["steps"] == 4 and len(d["per_step"]) == 4
    for key in ("expected", "worst"):
        assert key in d["calls"]
    for key in ("book", "expected", "worst"):
        assert key in d["cost_usd"]
    assert "critical_path" in d["latency_s"]
    assert 0 < d["reliability"] <= 1
    assert d["quality_per_dollar"] == pytest.approx(d["reliability"] / d["cost_usd"]["book"])


def test_diamond_critical_path_is_the_longest_path_not_the_sum() -> None:
    e = estimate(load_workflow(EXAMPLES / "diamond.yaml"))
    assert e.critical_path == ("plan", "debate", "join")
    assert e.latency_critical_s == pytest.approx(2.0 + 3 * 2.0 + 0.4)
    assert e.latency_critical_s < sum(s.latency_s for s in e.per_step)
    assert [s.id for s in e.per_step if s.critical] == ["plan", "debate", "join"]


def test_diamond_worst_latency_takes_the_retries_of_the_fast_branch_when_they_dominate() -> None:
    wf = parse_workflow("""
version: 1
models: {m: {usd_per_call: 1, latency_s: 1.0, p_ok: 0.5}}
steps:
  - {id: a, model: m}
  - {id: fast, model: m, after: [a], retries: 3}
  - {id: slow, model: m, after: [a], debate_rounds: 1}
  - {id: z, model: m, after: [fast, slow]}
""")
    e = estimate(wf)
    assert e.latency_critical_s == 4.0  # a + slow(2) + z
    # a + fast (4 attempts, and the backoff's longest waits before its retries: 0.5 + 1 + 2 s) + z
    assert e.latency_worst_s == 9.5


def test_retries_lift_p_and_cost_by_the_seed_formulas() -> None:
    wf = parse_workflow("""
version: 1
models: {m: {usd_per_call: 0.01, latency_s: 1.0, p_ok: 0.9}}
steps: [{id: a, model: m, retries: 2}]
""")
    s = estimate(wf).per_step[0]
    assert s.p_step == pytest.approx(1 - 0.1**3)
    assert s.cost_book == pytest.approx(0.01)
    assert s.cost_expected == pytest.approx(0.01 * (1 + 0.1 + 0.01))
    assert s.cost_worst == pytest.approx(0.03)
    # each retry first waits the executor's backoff: a uniform draw below 0.5 s, then 1 s
    assert s.latency_expected_s == pytest.approx(1.0 * 1.11 + 0.1 * 0.25 + 0.01 * 0.5)
    assert s.latency_worst_s == pytest.approx(3.0 + 0.5 + 1.0)


def test_debate_agents_times_rounds_calls_but_rounds_latency() -> None:
    wf = parse_workflow("""
version: 1
models: {m: {usd_per_call: 0.03, latency_s: 2.0, p_ok: 0.9}}
steps:
  - {id: d, model: m, debate: {agents: 3, rounds: 2}}
  - {id: seed_style, model: m, debate_rounds: 2, after: [d]}
""")
    d, s = estimate(wf).per_step
    assert (d.calls, d.latency_s) == (6, 4.0)
    assert (s.calls, s.latency_s) == (3, 6.0)


def test_cached_step_costs_nothing_and_always_succeeds() -> None:
    wf = parse_workflow("""
version: 1
models: {m: {usd_per_call: 0.03, latency_s: 2.0, p_ok: 0.5}}
steps: [{id: a, model: m, cached: true, retries: 3}]
""")
    e = estimate(wf)
    assert (e.cost_worst, e.reliability, e.calls_worst) == (0.0, 1.0, 0)
    assert e.latency_critical_s == CACHE_HIT_LATENCY_S
    assert e.quality_per_dollar is None


def test_step_p_ok_overrides_the_model() -> None:
    wf = parse_workflow("""
version: 1
models: {m: {usd_per_call: 0.03, latency_s: 2.0, p_ok: 0.5}}
steps: [{id: a, model: m, p_ok: 0.99}]
""")
    assert estimate(wf).reliability == 0.99


def test_token_prices_give_a_per_call_price() -> None:
    wf = parse_workflow("""
version: 1
models:
  local: {usd_per_1m_input: 0.10, usd_per_1m_output: 0.40, prompt_tokens: 1000,
          completion_tokens: 500, max_tokens: 1000, latency_s: 0.5, p_ok: 0.6}
steps: [{id: a, model: local}]
""")
    assert estimate(wf).cost_book == pytest.approx((0.10 * 1000 + 0.40 * 500) / 1e6)


def test_an_answer_is_priced_no_longer_than_max_tokens() -> None:
    """An endpoint stops at max_tokens (the step's, else the profile's 256): the planner
    counts the expected answer up to it, in every figure and both Monte Carlos."""
    wf = parse_workflow("""
version: 1
models:
  m: {usd_per_1m_input: 1.0, usd_per_1m_output: 10.0, prompt_tokens: 1000,
      completion_tokens: 500, latency_s: 0.5, p_ok: 0.5}
  cheap: {usd_per_1m_input: 0.1, usd_per_1m_output: 1.0, prompt_tokens: 1000,
          completion_tokens: 500, latency_s: 0.5, p_ok: 0.5}
steps:
  - {id: a, model: m}
  - {id: b, model: m, max_tokens: 100, retries: 1}
  - {id: c, model: cheap, escalate: [m], retries: 1, max_tokens: 50}
""")
    e = estimate(wf)
    rows = {r.id: r for r in e.per_step}
    assert rows["a"].cost_book == pytest.approx((1000 + 10 * 256) / 1e6)
    assert rows["b"].cost_book == pytest.approx((1000 + 10 * 100) / 1e6)
    assert rows["b"].cost_worst == pytest.approx(2 * (1000 + 10 * 100) / 1e6)
    assert rows["b"].cost_expected == pytest.approx(1.5 * (1000 + 10 * 100) / 1e6)
    assert rows["c"].cost_worst == pytest.approx((100 + 50 + 1000 + 500) / 1e6)
    apart = simulate(wf, runs=20_000, seed=1, halt=False)  # every step runs, as estimate bills
    assert apart.cost_usd.mean == pytest.approx(e.cost_expected, rel=0.02)
    halted = simulate(wf, runs=20_000, seed=1).cost_usd.mean
    assert halted < 0.9 * e.cost_expected  # a failed step stops the retries beside it
    assert simulate_loop(wf, runs=5_000, seed=2)[1] == pytest.approx(halted, rel=0.03)


def test_book_route_example_is_the_careful_11_2_seconds() -> None:
    e = estimate(load_workflow(EXAMPLES / "book-route.yaml"))
    assert e.latency_critical_s == pytest.approx(11.2)
    assert e.cost_book == pytest.approx(0.136)
    assert round(e.reliability * 100, 2) == 59.87


def test_seed_chain_matches_the_books_sequential_row() -> None:
    e = estimate(load_workflow(EXAMPLES / "seed-chain.yaml"))
    assert (round(e.cost_book, 3), e.latency_critical_s) == (0.36, 24.0)
    assert round(e.reliability * 100, 2) == 83.41
    assert round(e.quality_per_dollar or 0, 1) == 2.3
    assert math.isclose(e.reliability, 0.985**12)


def test_estimate_table_marks_the_critical_path(cli) -> None:
    r = cli("estimate", EXAMPLES / "diamond.yaml")
    assert r.code == 0
    assert "critical" in r.out and "debate" in r.out and "reliability" in r.out


def test_whitespace_in_stop_sequences_and_prompts_is_kept() -> None:
    wf = parse_workflow(
        'version: 1\nmodels: {m: {usd_per_call: 0.01, latency_s: 1, p_ok: 0.9, stop: ["\\n"]}}\n'
        'steps: [{id: a, model: m, prompt: "Q: 2 + 2?\\nA: "}]\n'
    )
    assert wf.models["m"].stop == ["\n"]
    assert wf.steps[0].prompt == "Q: 2 + 2?\nA: "


def test_topological_order_keeps_a_sorted_spec_and_sorts_an_unsorted_one() -> None:
    from trilemma import dag

    assert dag.topo_order({"a": [], "b": ["a"], "c": ["a", "b"]}) == ["a", "b", "c"]
    # listed out of order: dependencies first, ties by the order given
    assert dag.topo_order({"c": ["a", "b"], "b": ["a"], "a": [], "d": []}) == ["a", "b", "c", "d"]
    with pytest.raises(ValueError, match="cycle"):
        dag.topo_order({"a": ["b"], "b": ["a"]})
    with pytest.raises(ValueError, match="cycle"):
        dag.topo_order({"a": ["a"]})


def test_a_chain_is_one_path_through_every_node() -> None:
    from trilemma import dag

    def chain(graph: dict[str, list[str]]) -> bool:
        return dag.is_chain(graph, dag.topo_order(graph))

    assert chain({"a": [], "b": ["a"], "c": ["b", "a"]})  # an edge may skip along it
    assert chain({"a": []})
    assert not chain({"a": [], "b": ["a"], "c": ["a"]})  # b and c side by side
    assert not chain({"a": [], "b": []})


def test_remaining_path_priorities_do_not_depend_on_the_order_steps_are_listed() -> None:
    from trilemma.plan.slots import remaining_path

    def spec(order: list[str]) -> str:
        deps = {"a": [], "b": ["a"], "c": ["a"], "d": ["b", "c"]}
        lat = {"a": 1.0, "b": 5.0, "c": 1.0, "d": 2.0}
        models = "".join(
            f"  {k}: {{usd_per_call: 0, latency_s: {v}, p_ok: 1.0}}\n" for k, v in lat.items()
        )
        steps = "".join(f"  - {{id: {k}, model: {k}, after: {deps[k]}}}\n" for k in order)
        return f"version: 1\nmodels:\n{models}steps:\n{steps}"

    for order in (["a", "b", "c", "d"], ["d", "c", "b", "a"]):
        wf = parse_workflow(spec(order))
        latency = {r.id: r.latency_s for r in estimate(wf).per_step}
        assert remaining_path(wf, latency) == {"a": 8.0, "b": 7.0, "c": 3.0, "d": 2.0}


@pytest.mark.parametrize(
    ("budget", "says"),
    [
        ("{max_cost_usd: 0.02}", "every run stops budget_exhausted before the end"),
        ("{max_cost_usd: 0.0301}", "does not fit the $0.0301 ceiling: a run whose retries"),
        ("{max_cost_usd: 0.05}", "does not fit the $0.0500 ceiling: a run whose retries pile up"),
        ("{max_cost_usd: 0.06}", "fits the $0.0600 ceiling, so no run stops for money"),
        ("{deadline_s: 1}", "the critical path (2.00s) is over 1s, so every run that goes to the end is cut"),
        ("{deadline_s: 3}", "the worst path (4.50s) does not fit 3s: slow or retried runs are cut"),
        ("{deadline_s: 4}", "the worst path (4.50s) does not fit 4s"),  # the backoff's 0.5 s
        ("{deadline_s: 3, min_reliability: 0.9}", "`--deadline-for 0.9` which deadline lets"),
        ("{max_cost_usd: 0.05}", "`--ceiling-for 0.95` which ceiling lets that share finish"),
        ("{deadline_s: 4.5}", "the worst path (4.50s) fits 4.5s, so no run is cut"),
    ],
)
def test_estimate_says_whether_the_spec_s_budget_can_stop_a_run(cli, write, budget, says) -> None:
    """One call of $0.03 and 2 s with a retry: $0.03 without it, $0.0303 expected, $0.06 worst;
    2 s without it, 4.5 s at worst (two calls and the backoff's longest wait before the retry)."""
    path = write("version: 1\nmodels: {m: {usd_per_call: 0.03, latency_s: 2, p_ok: 0.99}}\n"
                 f"steps: [{{id: a, model: m, retries: 1}}]\nbudget: {budget}\n")  # fmt: skip
    out = cli("estimate", path)
    assert out.code == 0, out.err
    assert says in " ".join(out.out.split())


def test_what_is_left_of_a_run_is_planned_as_if_the_rest_had_finished() -> None:
    wf = load_workflow(EXAMPLES / "diamond.yaml")
    left = wf.only({"search", "join"})  # plan and debate finished
    assert [(s.id, s.after) for s in left.steps] == [("search", []), ("join", ["search"])]
    assert estimate(left).latency_critical_s == pytest.approx(0.8)
    assert estimate(wf).latency_critical_s > 8  # the debate's rounds are off the rest's path
    stop = load_workflow(EXAMPLES / "early-stop.yaml")
    assert stop.only({"research", "answer"}).stop_when is None  # its step is not left
    assert stop.only({"guess", "answer"}).stop_when == "guess"
