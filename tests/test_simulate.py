"""The Monte Carlo agrees with the analytic model where its assumptions hold, and departs where they don't."""

from __future__ import annotations

import pytest

from trilemma import Simulation, estimate, load_workflow, parse_workflow, simulate
from trilemma.plan.simulate import simulate_loop

from .conftest import EXAMPLES, assert_simulation_agrees


@pytest.mark.parametrize("name", ["seed-chain.yaml", "ticket.yaml", "diamond.yaml"])
def test_million_runs_agree_with_analytic_reliability_within_3_standard_errors(name: str) -> None:
    wf = load_workflow(EXAMPLES / name)
    e = estimate(wf)
    r = simulate(wf, 1_000_000, seed=2026)
    assert abs(r.success_rate - e.reliability) <= 3 * r.stderr, (r.success_rate, e.reliability)
    lo, hi = r.ci95
    assert lo < r.success_rate < hi


def test_without_halting_mean_cost_and_latency_match_the_expected_figures() -> None:
    wf = load_workflow(EXAMPLES / "ticket.yaml")
    e = estimate(wf)
    r = simulate(wf, 400_000, seed=1, halt=False)
    assert r.cost_usd.mean == pytest.approx(e.cost_expected, rel=2e-3)
    # a chain's latency is the sum of step latencies, so its mean is exact
    assert r.latency_s.mean == pytest.approx(e.latency_expected_s, rel=2e-3)
    assert r.calls.mean == pytest.approx(e.calls_expected, rel=2e-3)


def test_halting_skips_and_does_not_bill_steps_below_a_failure() -> None:
    wf = load_workflow(EXAMPLES / "seed-chain.yaml")
    halted = simulate(wf, 100_000, seed=1)
    full = simulate(wf, 100_000, seed=1, halt=False)
    assert halted.cost_usd.mean < full.cost_usd.mean
    assert full.cost_usd.p50 == pytest.approx(0.36)


def test_same_seed_same_result_different_seed_different_result() -> None:
    wf = load_workflow(EXAMPLES / "diamond.yaml")
    a, b, c = (simulate(wf, 50_000, seed=s) for s in (7, 7, 8))
    assert a.to_json() == b.to_json()
    assert a.successes != c.successes


def test_imperfect_gate_lets_failures_through_and_lowers_success() -> None:
    wf = load_workflow(EXAMPLES / "ticket.yaml")
    perfect = simulate(wf, 200_000, seed=3)
    leaky = simulate(wf, 200_000, seed=3, settings=Simulation(recall=0.5))
    assert perfect.uncaught_failures == 0
    assert leaky.uncaught_failures > 0
    assert leaky.success_rate < perfect.success_rate - 10 * perfect.stderr


def test_correlated_retries_buy_less_than_the_formula_promises() -> None:
    wf = parse_workflow("""
version: 1
models: {m: {usd_per_call: 0.01, latency_s: 1, p_ok: 0.8}}
steps: [{id: a, model: m, retries: 1}]
""")
    independent = simulate(wf, 200_000, seed=4)
    correlated = simulate(wf, 200_000, seed=4, settings=Simulation(retry_correlation=1.0))
    assert independent.success_rate == pytest.approx(1 - 0.2**2, abs=0.003)
    assert correlated.success_rate == pytest.approx(
        0.8, abs=0.003
    )  # a retry that fails the same way


def test_compounding_lowers_downstream_success_after_an_uncaught_failure() -> None:
    wf = load_workflow(EXAMPLES / "seed-chain.yaml")
    base = Simulation(recall=0.0)
    flat = simulate(wf, 200_000, seed=5, settings=base)
    compounding = simulate(
        wf, 200_000, seed=5, settings=base.model_copy(update={"compounding": 0.5})
    )
    assert compounding.success_rate == flat.success_rate  # success itself needs no failure at all
    assert compounding.uncaught_failures >= flat.uncaught_failures


def test_cached_step_never_fails_and_adds_the_hit_latency() -> None:
    wf = parse_workflow("""
version: 1
models: {m: {usd_per_call: 0.01, latency_s: 1, p_ok: 0.01}}
steps: [{id: a, model: m, cached: true}]
""")
    r = simulate(wf, 1000, seed=1)
    assert r.success_rate == 1.0 and r.cost_usd.mean == 0.0
    assert r.latency_s.mean == pytest.approx(0.01)


HIT_RATE_SPEC = """
version: 1
models: {m: {usd_per_call: 0.01, latency_s: 1, p_ok: 0.8}}
steps:
  - {id: a, model: m, retries: 1, cached: %s}
  - {id: b, model: m, after: [a]}
"""


def test_a_cache_hit_rate_plans_the_mixture_of_hit_and_miss() -> None:
    mixed = estimate(parse_workflow(HIT_RATE_SPEC % "{similarity: 0.9, hit_rate: 0.4}"))
    sent = estimate(parse_workflow(HIT_RATE_SPEC % "false"))
    a, a_sent = mixed.per_step[0], sent.per_step[0]
    assert a.cached and a.hit_rate == 0.4 and a.to_json()["hit_rate"] == 0.4
    assert a.cost_expected == pytest.approx(0.6 * a_sent.cost_expected)
    assert a.p_step == pytest.approx(0.4 + 0.6 * (1 - 0.2**2))
    assert a.latency_expected_s == pytest.approx(0.4 * 0.01 + 0.6 * a_sent.latency_expected_s)
    # a deadline must hold when the cache misses: the worst case and critical path are a miss's
    assert (a.cost_worst, a.latency_s) == (a_sent.cost_worst, a_sent.latency_s)
    assert mixed.latency_critical_s == sent.latency_critical_s
    always = estimate(parse_workflow(HIT_RATE_SPEC % "{}"))  # no hit_rate: the seed's "a hit"
    assert always.per_step[0] == estimate(parse_workflow(HIT_RATE_SPEC % "true")).per_step[0]
    assert always.per_step[0].cost_expected == 0.0


def test_a_cache_hit_rate_is_simulated_as_the_estimate_plans_it() -> None:
    assert_simulation_agrees(parse_workflow(HIT_RATE_SPEC % "{hit_rate: 0.4}"), seed=3)


def test_latency_jitter_keeps_the_mean_and_spreads_the_tail() -> None:
    wf = parse_workflow("""
version: 1
models: {m: {usd_per_call: 0.01, latency_s: 2.0, p_ok: 1.0, latency_jitter: 0.5}}
steps: [{id: a, model: m}]
""")
    r = simulate(wf, 200_000, seed=6)
    assert r.latency_s.mean == pytest.approx(2.0, rel=0.01)
    assert r.latency_s.p99 > 2 * r.latency_s.p50


@pytest.mark.parametrize("name", ["diamond.yaml", "cascade.yaml"])  # cascade: a model per attempt
def test_vectorised_and_plain_loop_agree(name: str) -> None:
    wf = load_workflow(EXAMPLES / name)
    st = Simulation(recall=0.7, retry_correlation=0.3, compounding=0.8)
    vec = simulate(wf, 200_000, seed=9, settings=st)
    ok, cost, latency = simulate_loop(wf, 40_000, seed=9, settings=st)
    assert ok == pytest.approx(vec.success_rate, abs=0.01)
    assert cost == pytest.approx(vec.cost_usd.mean, rel=0.02)
    assert latency == pytest.approx(vec.latency_s.mean, rel=0.02)


def test_cli_simulate_json_contract(cli) -> None:
    r = cli("simulate", EXAMPLES / "diamond.yaml", "--runs", "20000", "--seed", "1", "--json")
    assert r.code == 0, r.err
    d = r.json()
    assert d["runs"] == 20000
    for key in ("mean", "p50", "p95", "p99"):
        assert key in d["cost_usd"] and key in d["latency_s"]
    assert 0 <= d["success_rate"] <= 1
    assert d["success_ci95"][0] <= d["success_rate"] <= d["success_ci95"][1]


def test_a_simulation_without_a_seed_reports_the_one_it_drew_and_repeats_with_it(cli) -> None:
    """diamond.yaml has no seed: each Monte Carlo draws its own, says which, and --seed
    with that number gives the same figures (the table, and --ceiling-for's lines, too)."""
    args = ["simulate", EXAMPLES / "diamond.yaml", "--runs", "5000"]
    first, second = (cli(*args, "--json").json() for _ in range(2))
    assert isinstance(first["seed"], int) and first["seed"] != second["seed"]
    again = cli(*args, "--seed", str(first["seed"]), "--json").json()
    assert again == first
    text = cli(*args).out
    drawn = int(text.split("(seed ", 1)[1].split(")", 1)[0])
    assert cli(*args, "--seed", str(drawn)).out == text
    found = cli(*args, "--ceiling-for", "0.9").out
    assert ", seed " in found and "None" not in found


def test_cli_simulate_flags_override_the_spec(cli) -> None:
    r = cli("simulate", EXAMPLES / "ticket.yaml", "--runs", "20000", "--seed", "1", "--recall",
            "0.5", "--retry-correlation", "0.2", "--json")  # fmt: skip
    assert r.json()["settings"] == {"recall": 0.5, "retry_correlation": 0.2, "compounding": 1.0}
    assert r.json()["uncaught_failure_rate"] > 0


def test_cli_simulate_table(cli) -> None:
    r = cli("simulate", EXAMPLES / "diamond.yaml", "--runs", "5000", "--seed", "1")
    assert r.code == 0
    assert "Monte Carlo, 5,000 runs" in r.out and "analytic" in r.out


# ---------------------------------------------------------------------- the deadline

DEADLINED = """
version: 1
models: {m: {usd_per_call: 0.01, latency_s: 1.0, p_ok: 0.5}}
steps:
  - {id: a, model: m, retries: 3}
  - {id: b, model: m, retries: 3, after: [a]}
budget: {deadline_s: 2.5}
"""


def test_the_deadline_cancels_runs_still_going_and_fails_them() -> None:
    """Attempts take 1 s: a run makes it by 2.5 s only if both steps pass at once (1 in 4).
    Cut at 2.5 s, every run has paid for two answers (a rejected one is billed): a's and b's
    first, or a's first two; the attempt in flight then is cancelled, and the simulator bills
    it nothing (the executor measured $0.0196 over 200 runs)."""
    wf = parse_workflow(DEADLINED)
    r = simulate(wf, 400_000, seed=4)
    assert r.deadline_s == 2.5
    assert abs(r.success_rate - 0.25) <= 4 * r.stderr
    assert r.deadline_hits / r.runs == pytest.approx(0.75, abs=0.005)
    assert r.cost_usd.mean == pytest.approx(0.02, rel=0.01)
    assert r.latency_s.mean == pytest.approx(0.25 * 2 + 0.75 * 2.5, rel=0.005)
    assert r.latency_s.p99 == 2.5  # nothing runs past the deadline
    ok, cost, latency = simulate_loop(wf, 40_000, seed=4)
    assert ok == pytest.approx(r.success_rate, abs=0.01)
    assert cost == pytest.approx(r.cost_usd.mean, rel=0.02)
    assert latency == pytest.approx(r.latency_s.mean, rel=0.01)
    free = simulate(wf.with_budget(deadline_s=None), 100_000, seed=4)
    assert free.deadline_hits == 0 and free.success_rate > 0.85


def test_simulate_deadline_flag_json_and_caption(cli, write) -> None:
    import json

    path = write(DEADLINED)
    out = cli("simulate", path, "--runs", "20000", "--json")
    doc = json.loads(out.out)
    assert doc["deadline_s"] == 2.5 and doc["deadline_rate"] == pytest.approx(0.75, abs=0.02)
    out = cli("simulate", path, "--runs", "20000", "--deadline", "100", "--json")
    doc = json.loads(out.out)
    assert doc["deadline_s"] == 100 and doc["deadline_rate"] == 0
    out = cli("simulate", path, "--runs", "20000")
    assert "the 2.5s deadline cut 7" in out.out.replace("\n", " ")  # 75%
    out = cli("simulate", path, "--deadline", "0")
    assert out.code == 2 and "'--deadline': 0 would cut every run before its first call" in out.err


def test_a_long_spec_is_simulated_in_chunks_that_bound_its_memory() -> None:
    """Every step's figures are kept while a chunk runs: a 2,000-step chain takes chunks of
    CELLS / 2,000 trajectories (8,192), where a 12-step one takes CHUNK; with a deadline,
    STOP_CELLS / 2,000."""
    from trilemma.plan.simulate import CELLS, CHUNK, STOP_CELLS

    steps = "\n".join(
        f"  - {{id: s{i}, model: m{', after: [s' + str(i - 1) + ']' if i else ''}}}"
        for i in range(2000)
    )
    wf = parse_workflow(f"version: 1\nmodels:\n  m: {{usd_per_call: 0.001, latency_s: 0.1, "
                        f"p_ok: 0.9999}}\nsteps:\n{steps}\n")  # fmt: skip
    chunks: list[int] = []
    r = simulate(wf, 20_000, seed=1, progress=chunks.append)
    assert chunks == [CELLS // 2000, CELLS // 2000, 20_000 - 2 * (CELLS // 2000)]
    assert r.success_rate == pytest.approx(0.9999**2000, abs=0.02)
    timed: list[int] = []
    simulate(wf.with_budget(deadline_s=150.0), 5_000, seed=1, progress=timed.append)
    assert max(timed) == STOP_CELLS // 2000
    small: list[int] = []
    simulate(load_workflow(EXAMPLES / "seed-chain.yaml"), CHUNK + 1, seed=1, progress=small.append)
    assert small == [CHUNK, 1]


def test_cli_simulate_plots_cost_and_latency_per_run(cli, tmp_path) -> None:
    png = tmp_path / "sim.png"
    r = cli("simulate", EXAMPLES / "ceiling.yaml", "--runs", "20000", "--ceiling", "--plot", png)
    assert r.code == 0, r.err
    assert png.read_bytes()[:4] == b"\x89PNG" and png.stat().st_size > 20_000
    kept = simulate(load_workflow(EXAMPLES / "ceiling.yaml"), 5_000, seed=1, keep=True)
    assert kept.samples is not None and kept.samples["cost"].shape == (5_000,)
    assert kept.samples["ok"].mean() == kept.success_rate
    from trilemma.report.plots import plot_simulation

    with pytest.raises(ValueError, match="keep=True"):
        plot_simulation(simulate(load_workflow(EXAMPLES / "ceiling.yaml"), 100, seed=1), png)
