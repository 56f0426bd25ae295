"""A failed step stops new calls: the executor sends nothing more, and the planner knows it.

The steps in flight when a step runs out of retries answer and are paid for; the steps not
yet started (beside it, not only below it) are not sent, and a retry's backoff under way
ends, as its retry would not be sent. Both Monte Carlos bill and time a failed run so.
"""

from __future__ import annotations

import json
import math
import statistics
from pathlib import Path

import pytest

from trilemma import estimate, parse_workflow
from trilemma.journal import Journal
from trilemma.plan.estimate import HALTS_SHOWN
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


def chain_text(n: int, p: float, latency: float = 1.0) -> str:
    """``n`` $0.01 steps of ``latency`` in a chain, each passing with ``p``, no retries."""
    return (
        "version: 1\nmodels:\n"
        f"  m: {{usd_per_call: 0.01, latency_s: {latency}, p_ok: {p}}}\n"
        "steps:\n" + "\n".join(
            f"  - {{id: s{i}, model: m{f', after: [s{i - 1}]' if i else ''}}}"
            for i in range(n)
        ) + "\n"
    )  # fmt: skip


def chain_of(n: int, p: float) -> Workflow:
    return parse_workflow(chain_text(n, p))


def test_the_estimate_says_what_runs_that_halt_cost_and_take() -> None:
    """Ten steps at p 0.8: the expected figures ($0.10, 10 s, 10 calls) are of runs going to
    their end; nine runs in ten stop at a failed step, and a run reaches step k+1 with 0.8^k,
    so runs cost $0.01 x sum(0.8^k) = $0.0446 on average and take 4.46 s."""
    e = estimate(chain_of(10, 0.8))
    reached = math.fsum(0.8**k for k in range(10))  # 4.4631
    assert e.cost_expected == pytest.approx(0.10) and e.latency_expected_s == pytest.approx(10.0)
    h = e.halting
    assert h is not None
    assert h.failed == pytest.approx(1 - 0.8**10)
    assert h.calls == pytest.approx(reached)  # a chain's is exact
    assert h.cost_usd == pytest.approx(0.01 * reached)
    assert h.latency_s == pytest.approx(reached)
    assert estimate(chain_of(10, 0.8)) == e  # a fixed seed: the same figures again
    assert estimate(chain_of(10, 0.8), draw_runs=False).halting is None
    summary = e.to_json()
    assert summary["cost_usd"]["halting"] == pytest.approx(h.cost_usd)
    assert summary["latency_s"]["halting"] == pytest.approx(h.latency_s)
    assert summary["calls"]["halting"] == pytest.approx(h.calls)
    assert e.headline()["cost_usd"]["halting"] == pytest.approx(h.cost_usd)


def test_reliable_specs_draw_no_halting_runs() -> None:
    """At or above HALTS_SHOWN the figures differ by a hundredth at most: nothing drawn,
    and the JSON keeps its keys."""
    e = estimate(chain_of(10, 0.9995))
    assert e.reliability > HALTS_SHOWN and e.halting is None
    assert "halting" not in e.to_json()["cost_usd"] and "halting" not in e.headline()["latency_s"]
    assert estimate(chain_of(10, 0.99)).halting is not None  # 90% reliable


def test_the_estimate_and_the_run_say_so_where_it_matters(cli, write, tmp_path: Path) -> None:
    spec = write(chain_text(10, 0.8, latency=0.005))
    out = cli("estimate", spec).out
    assert "failures: " in out and "of runs fail, and a run sends nothing more" in out
    said = estimate(parse_workflow(chain_text(10, 0.8, latency=0.005))).halting
    assert said is not None and f"costs ${said.cost_usd:.4f}, takes {said.latency_s:.2f}s" in out
    j = tmp_path / "j.db"
    ran = cli("run", spec, "--journal", j, "--seed", "1")
    assert "stopping at a failure" in ran.out and f"${said.cost_usd:.4f}" in ran.out
    as_json = cli("run", spec, "--journal", j, "--seed", "1", "--json")
    assert json.loads(as_json.out)["predicted"]["cost_usd"]["halting"] == pytest.approx(
        said.cost_usd
    )
    page = tmp_path / "r.html"
    assert cli("report", "latest", "--journal", j, "--out", page).code == 0
    assert "stopping at a failure" in page.read_text()
    # a spec that fails a run in a hundred: drawn, but too close to the expected to say
    near = write(chain_text(1, 0.985), name="near.yaml")
    assert "failures: " not in cli("estimate", near).out


def test_a_batch_plan_counts_the_runs_that_halt(cli, write, tmp_path: Path) -> None:
    spec = write(chain_text(10, 0.8, latency=0.005))
    rows = tmp_path / "rows.jsonl"
    rows.write_text("{}\n" * 40)
    plan = json.loads(cli("batch", spec, "--inputs", rows, "--plan", "--json").out)["predicted"]
    said = estimate(parse_workflow(chain_text(10, 0.8, latency=0.005))).halting
    assert said is not None
    assert plan["cost_usd"]["expected"] == pytest.approx(4.0)
    assert plan["cost_usd"]["halting"] == pytest.approx(40 * said.cost_usd)
    assert plan["latency_s"]["halting_per_run"] == pytest.approx(said.latency_s)
    # forty runs four at a time: a failed run frees its place early (ten rounds of whole runs
    # would take 10 x 0.05 s), and the pool waits for its slowest (ten of halting runs' mean
    # would be 10 x 0.022 s)
    assert 10 * said.latency_s * 1.03 < plan["latency_s"]["batch"] < 10 * 0.05 * 0.6
    shown = cli("batch", spec, "--inputs", rows, "--plan").out
    assert f"$4.0000 expected (${40 * said.cost_usd:.4f} as failed runs stop)" in shown
    j, page = tmp_path / "j.db", tmp_path / "b.html"
    ran = json.loads(cli("batch", spec, "--inputs", rows, "--journal", j, "--json").out)
    assert cli("report", ran["batch_id"], "--journal", j, "--out", page).code == 0
    assert f"$4.0000 expected (${40 * said.cost_usd:.4f} as failed runs stop)" in page.read_text()


def test_simulate_sets_the_halting_figures_beside_its_halting_runs(cli, write) -> None:
    """Its analytic column is of runs going to the end, its runs halt: the caption gives the
    estimate for runs that halt, unless --no-halt runs them all."""
    spec = write(chain_text(10, 0.8))
    said = " ".join(cli("simulate", spec, "--runs", "20000", "--seed", "1").out.split())
    assert "failed runs stop here: the estimate's for them $0.0446, 4.46s, 4.46 calls" in said
    whole = " ".join(cli("simulate", spec, "--runs", "20000", "--seed", "1", "--no-halt").out.split())
    assert "failed runs stop here" not in whole


def test_optimize_sets_the_halting_cost_beside_the_expected(cli) -> None:
    """seed-chain.yaml fails one run in six: its runs cost $0.3317 on average, not $0.36."""
    from .conftest import EXAMPLES

    out = " ".join(cli("optimize", EXAMPLES / "seed-chain.yaml").out.split())
    assert "cost as failed runs stop │ $0.3317 │" in out
