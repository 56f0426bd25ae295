"""The Monte Carlo under a spend ceiling: it stops a run where the executor would."""

from __future__ import annotations

import json
import math
import re
from pathlib import Path
from typing import Any

import pytest

from trilemma import load_workflow, parse_workflow, simulate, workflow_from_dict
from trilemma.experiments.compare import compare
from trilemma.experiments.trials import time_scaled
from trilemma.journal import Journal
from trilemma.plan.simulate import simulate_loop
from trilemma.run.session import execute
from trilemma.testing import fast_retries

from .conftest import EXAMPLES

CHAIN = EXAMPLES / "ceiling.yaml"


def fan_out(n: int, usd: float) -> Any:
    steps = "\n".join(f"  - {{id: s{i:02d}, model: m}}" for i in range(n))
    return parse_workflow(f"""
version: 1
models:
  m: {{usd_per_call: {usd}, latency_s: 0.05, p_ok: 1.0}}
steps:
{steps}
concurrency: {n}
""")


def test_a_chain_stops_where_its_retries_outgrow_the_ceiling() -> None:
    """Five steps at $0.03 with p 0.9 under $0.18: six calls fit, so a run succeeds when it
    needs no retry, or one retry that passes. Exactly 0.9^5 + 5 * 0.1 * 0.9 * 0.9^4."""
    wf = load_workflow(CHAIN)
    exact = 0.9**5 + 5 * 0.1 * 0.9 * 0.9**4
    r = simulate(wf, 200_000, seed=3, max_cost_usd=0.18)
    assert abs(r.success_rate - exact) <= 4 * r.stderr
    assert r.cost_usd.p99 <= 0.18 + 1e-12  # nothing is sent past the ceiling
    assert r.max_cost_usd == 0.18
    # stopped: a sixth call paid for a retry that failed, or a seventh was needed
    assert r.ceiling_hits / r.runs == pytest.approx(1 - exact - r.caught_failures / r.runs, abs=0.004)
    ok, cost, latency = simulate_loop(wf, 40_000, seed=5, max_cost_usd=0.18)
    assert ok == pytest.approx(r.success_rate, abs=0.01)
    assert cost == pytest.approx(r.cost_usd.mean, rel=0.01)
    assert latency == pytest.approx(r.latency_s.mean, rel=0.01)


def test_the_spec_ceiling_is_simulated_only_when_asked() -> None:
    wf = load_workflow(CHAIN)  # budget.max_cost_usd 0.18
    r = simulate(wf, 50_000, seed=1)
    assert r.max_cost_usd is None and r.ceiling_hits == 0
    assert r.success_rate > 0.99
    assert simulate(wf, 50_000, seed=1, max_cost_usd=1.0).ceiling_hits == 0  # $0.45 fits


def test_a_fan_out_sends_what_fits_and_stops() -> None:
    """The executor's must-show: 40 parallel $0.01 calls under $0.155 send 15."""
    r = simulate(fan_out(40, 0.01), 10_000, seed=1, max_cost_usd=0.155)
    assert r.success_rate == 0.0 and r.ceiling_hits == r.runs
    assert r.calls.mean == 15 and r.cost_usd.mean == pytest.approx(0.15)
    assert simulate(fan_out(40, 0.01), 1_000, seed=1, max_cost_usd=0.40).success_rate == 1.0


def test_token_prices_hold_max_tokens_not_the_expected_tokens() -> None:
    """The expected call ($0.0024) fits $0.02; its reservation (every one of 4,000 tokens
    it may generate: $0.0404) does not, so nothing is sent."""
    wf = parse_workflow("""
version: 1
models:
  m: {usd_per_1m_input: 1.0, usd_per_1m_output: 10.0, prompt_tokens: 400,
      completion_tokens: 200, max_tokens: 4000, latency_s: 1.0, p_ok: 1.0}
steps:
  - {id: a, model: m}
""")
    assert wf.models["m"].reserved_per_call() == pytest.approx(0.0404)
    r = simulate(wf, 1_000, seed=1, max_cost_usd=0.02)
    assert r.ceiling_hits == r.runs and r.calls.mean == 0 and r.cost_usd.mean == 0
    assert simulate(wf, 1_000, seed=1, max_cost_usd=0.05).success_rate == 1.0


def test_an_early_stop_before_the_ceiling_bites_succeeds() -> None:
    """A quick guess passes at 0.1 s; the thorough path's second call would not fit, at 1 s.
    The run stopped early, so the ceiling never refused anything."""
    wf = parse_workflow("""
version: 1
models:
  quick: {usd_per_call: 0.001, latency_s: 0.1, p_ok: 1.0}
  slow:  {usd_per_call: 0.05, latency_s: 1.0, p_ok: 1.0}
steps:
  - {id: t1, model: slow}
  - {id: t2, model: slow, after: [t1]}
  - {id: guess, model: quick}
stop_when: guess
""")
    r = simulate(wf, 1_000, seed=1, max_cost_usd=0.06)
    assert r.success_rate == 1.0 and r.ceiling_hits == 0
    guessless = simulate(wf.model_copy(update={"stop_when": None}), 1_000, seed=1,
                         max_cost_usd=0.06)  # fmt: skip
    assert guessless.ceiling_hits == guessless.runs


def test_the_executor_measures_what_the_monte_carlo_predicts(tmp_path: Path) -> None:
    """300 runs of the chain under its own ceiling, in a hundredth of its time."""
    wf = load_workflow(CHAIN)
    fast = time_scaled(wf, 0.001)
    predicted = simulate(wf, 200_000, seed=1, max_cost_usd=0.18)
    journal = Journal(tmp_path / "j.db")
    with fast_retries():
        runs = [execute(fast, journal=journal, seed=i) for i in range(300)]
    stopped = sum(r.status == "budget_exhausted" for r in runs) / len(runs)
    p = predicted.ceiling_hits / predicted.runs
    assert abs(stopped - p) <= 4 * math.sqrt(p * (1 - p) / len(runs))
    ok = sum(r.status == "ok" for r in runs) / len(runs)
    assert abs(ok - predicted.success_rate) <= 4 * math.sqrt(ok * (1 - ok) / len(runs))
    assert max(r.cost_usd for r in runs) <= 0.18 + 1e-12


def test_compare_predicts_under_the_spec_ceiling(tmp_path: Path) -> None:
    [c] = compare([("ceiling", load_workflow(CHAIN))], 20, Journal(tmp_path / "j.db"),
                  time_scale=0.001)  # fmt: skip
    assert c.simulated is not None and c.simulated.max_cost_usd == 0.18
    out = c.to_json()["predicted"]
    assert out["under_budget"]["budget_exhausted_rate"] > 0.05
    assert out["with_deadline"] is None  # the spec has no deadline


def test_simulate_cli_holds_the_ceiling_asked_for(cli: Any, tmp_path: Path) -> None:
    r = cli("simulate", CHAIN, "--runs", "20000", "--ceiling", "--json")
    assert r.code == 0, r.err
    got = json.loads(r.out)
    assert got["max_cost_usd"] == 0.18 and 0.08 < got["budget_exhausted_rate"] < 0.15
    r = cli("simulate", CHAIN, "--runs", "20000", "--max-cost", "0.5", "--json")
    assert json.loads(r.out)["budget_exhausted_rate"] == 0.0
    r = cli("simulate", CHAIN, "--runs", "20000", "--ceiling")
    assert "ceiling stopped" in r.out
    plain = json.loads(cli("simulate", CHAIN, "--runs", "20000", "--json").out)
    assert plain["max_cost_usd"] is None and plain["budget_exhausted_rate"] == 0.0


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--max-cost", "0.1", "--ceiling"], "not both"),
        (["--max-cost", "0"], "--max-cost 0: give dollars above 0"),
    ],
)
def test_simulate_cli_refuses_a_ceiling_it_cannot_hold(
    cli: Any, args: list[str], message: str
) -> None:
    r = cli("simulate", CHAIN, *args)
    assert r.code == 2 and message in r.err and "Traceback" not in r.err


def test_ceiling_flag_needs_a_spec_ceiling(cli: Any) -> None:
    r = cli("simulate", EXAMPLES / "diamond.yaml", "--ceiling")
    assert r.code == 2
    assert "diamond.yaml: budget.max_cost_usd" in r.err and "--max-cost USD" in r.err


def test_a_routed_step_sends_its_classifier_then_what_fits(tmp_path: Path) -> None:
    """examples/routed.yaml under $0.05: the classifier ($0.002) and one premium call fit;
    the hard branch's debate stops at its second call. Every run bills $0.032 in two calls,
    predicted and measured."""
    wf = load_workflow(EXAMPLES / "routed.yaml")
    r = simulate(wf, 200_000, seed=1, max_cost_usd=0.05)
    assert r.cost_usd.mean == pytest.approx(0.032) and r.calls.mean == pytest.approx(2.0)
    # the hard share, less the classifier's misses (sent to the first branch)
    assert r.ceiling_hits / r.runs == pytest.approx(0.15 * 0.95, abs=0.004)
    ok, cost, _ = simulate_loop(wf, 40_000, seed=2, max_cost_usd=0.05)
    assert ok == pytest.approx(r.success_rate, abs=0.01) and cost == pytest.approx(0.032)
    nothing = simulate(wf, 1_000, seed=1, max_cost_usd=0.001)  # not even the classifier
    assert nothing.calls.mean == 0 and nothing.cost_usd.mean == 0
    fast = time_scaled(wf, 0.001)
    journal = Journal(tmp_path / "j.db")
    with fast_retries():
        runs = [execute(fast, journal=journal, seed=i, max_cost_usd=0.05) for i in range(200)]
    assert all(x.cost_usd == pytest.approx(0.032) and x.calls == 2 for x in runs)
    stopped = sum(x.status == "budget_exhausted" for x in runs) / len(runs)
    p = r.ceiling_hits / r.runs
    assert abs(stopped - p) <= 4 * math.sqrt(p * (1 - p) / len(runs))


def test_run_sets_the_monte_carlo_under_its_budget_beside_it(cli: Any, write: Any, tmp_path: Path) -> None:
    fast = write(CHAIN.read_text().replace("latency_s: 2.0", "latency_s: 0.001"))
    db = tmp_path / "j.db"
    r = cli("run", fast, "--journal", db, "--seed", "2", "--json")
    under = r.json()["predicted_under_budget"]
    assert under["runs"] == 20_000 and under["deadline_rate"] == 0.0
    exact = 0.9**5 + 5 * 0.1 * 0.9 * 0.9**4
    assert abs(under["success_rate"] - exact) <= 4 * math.sqrt(exact * (1 - exact) / 20_000)
    table = cli("run", fast, "--journal", db, "--seed", "2", "--max-cost", "0.5", "--deadline", "60")
    assert "under its budget" in table.out and "$0.5000 ceiling and 60s deadline" in table.out
    plain = write(fast.read_text().replace("max_cost_usd: 0.18, ", ""))
    assert cli("run", plain, "--journal", db, "--json").json()["predicted_under_budget"] is None


def test_a_run_names_the_runs_its_monte_carlo_has_in_time_by_a_hair(cli: Any, tmp_path: Path) -> None:
    """early-stop.yaml's guess ends its runs exactly at 0.5 s: under --deadline 0.5 the Monte
    Carlo has 70% in time, and the run is cut; the table says so. Under 0.6 s those runs end
    100 ms before it: nothing said."""
    db, spec = tmp_path / "j.db", EXAMPLES / "early-stop.yaml"
    cut = cli("run", spec, "--journal", db, "--deadline", "0.5", "--seed", "3")
    assert cut.code == 1, cut.err
    said = " ".join(cut.out.split())
    got = re.search(r"under its budget │ (\d\d\.\d\d)% \(Monte Carlo, 0.5s deadline\) │ │ │ near its "
                    r"deadline │ (\d\d\.\d\d)% of runs succeed less than 30 ms before the deadline, which the "
                    r"executor's own time may cross", said)  # fmt: skip
    assert got is not None and got[1] == got[2] and 69 < float(got[1]) < 71, said
    # the run's page says the same, from the journal (the run journals its Monte Carlo)
    page = tmp_path / "cut.html"
    assert cli("report", cut.err.split("run ")[-1].split()[0], "--journal", db, "--out", page).code == 0
    shown = " ".join(re.sub(r"<[^>]+>", " ", page.read_text()).split())
    assert (f"under its budget {got[1]}% (Monte Carlo, 0.5s deadline) near its deadline {got[2]}% "
            "of runs succeed less than 30 ms before the deadline, which the executor's own "
            "time may cross") in shown, shown  # fmt: skip
    # resumed under a new deadline, the page says the Monte Carlo was of the one it began with
    cut_id = cut.err.split("run ")[-1].split()[0]
    assert cli("resume", cut_id, "--journal", db, "--deadline", "5").code == 0
    cli("report", cut_id, "--journal", db, "--out", page)
    shown = " ".join(re.sub(r"<[^>]+>", " ", page.read_text()).split())
    assert (f"under the budget it started with {got[1]}% (Monte Carlo, 0.5s deadline) near the "
            f"first deadline {got[2]}%") in shown and f"under its budget {got[1]}" not in shown, shown  # fmt: skip
    # beside the resume's own, of the steps it had left under the deadline it gave
    assert re.search(r"under its budget, the [1-3] steps? left \d+\.\d\d% \(Monte Carlo, 5s deadline\)",
                     shown), shown  # fmt: skip
    room = cli("run", spec, "--journal", db, "--deadline", "0.6", "--seed", "3")
    assert "under its budget" in room.out and "near its deadline" not in room.out
    cli("report", "latest", "--journal", db, "--out", page)
    assert "under its budget" in page.read_text() and "near its deadline" not in page.read_text()
    free = cli("run", spec, "--journal", db, "--seed", "3")  # no budget: no Monte Carlo
    cli("report", "latest", "--journal", db, "--out", page)
    assert "under its budget" not in free.out and "under its budget" not in page.read_text()
    # and the Monte Carlo of the planner says it beside the share the deadline cuts
    planned = " ".join(cli("simulate", spec, "--deadline", "0.5", "--seed", "3").out.split())
    assert re.search(r"the 0.5s deadline cut \d\d\.\d\d% of runs \(cancelled: failed\), and "
                     r"(69|70)\.\d\d% of runs succeed less than 30 ms before the deadline, which the executor's own "
                     r"time may cross \(--deadline-for advises a deadline with room\)", planned), planned  # fmt: skip
    planned = cli("simulate", spec, "--deadline", "0.6", "--seed", "3").out
    assert "deadline cut" in planned and "before the deadline" not in planned
    # --json carries the share beside the deadline's own: run's prediction and simulate's
    ran = cli("run", spec, "--journal", db, "--deadline", "0.5", "--seed", "3", "--json").json()
    under = ran["predicted_under_budget"]
    assert under["near_deadline_rate"] == under["success_rate"] > 0.69, under
    for deadline, near in (("0.5", True), ("0.6", False), (None, None)):
        flags = ["--deadline", deadline] if deadline else []
        doc = cli("simulate", spec, *flags, "--seed", "3", "--runs", "2000", "--json").json()
        assert doc["near_deadline_rate"] == (None if near is None else doc["success_rate"] if near else 0.0)


def test_a_run_its_budget_stopped_says_how_to_choose_one(cli: Any, write: Any, tmp_path: Path) -> None:
    """The ceiling's or the deadline's stop names the simulate command that finds one; an ok
    run, and --json, say nothing of it."""
    fast = write(CHAIN.read_text().replace("latency_s: 2.0", "latency_s: 0.001"), "my spec.yaml")
    db = tmp_path / "j.db"
    stopped = cli("run", fast, "--journal", db, "--max-cost", "0.05", "--seed", "2")
    assert stopped.code == 1 and "budget_exhausted" in stopped.err
    assert re.search(r"draft +done", stopped.out), stopped.out  # its first step was done
    said = " ".join(stopped.out.split())
    assert f"to choose a ceiling: trilemma simulate '{fast}' --ceiling-for 0.95" in said
    resume = said.split("to finish this run: ", 1)[1].split(" (the worst case", 1)[0].split()
    assert resume[:2] == ["trilemma", "resume"] and resume[-2:] == ["--max-cost", "0.45"]
    finished = cli(*resume[1:])  # the command as printed, journal flag included
    assert finished.code == 0, finished.err
    assert "done (journal)" in finished.out and "to finish this run" not in finished.out
    late = cli("run", fast, "--journal", db, "--deadline", "0.002", "--max-cost", "1")
    assert late.code == 1 and "deadline" in late.err
    assert "--deadline-for 0.95" in late.out and "--ceiling-for" not in late.out
    assert "--deadline 7.515 (the worst case" in " ".join(late.out.split())
    ok = cli("run", fast, "--journal", db, "--max-cost", "1", "--seed", "2")
    assert ok.code == 0 and "to choose a" not in ok.out
    assert "to choose" not in cli("run", fast, "--journal", db, "--max-cost", "0.05", "--json").out


@pytest.mark.parametrize(
    ("spec", "share", "ceiling"),
    [
        ("ceiling.yaml", 0.95, 0.21),  # seven calls: two retries among five steps
        ("ceiling.yaml", 0.5, 0.15),  # five calls: no retry at all (0.9^5 = 59%)
        ("cascade.yaml", 0.95, 0.036),  # three small calls and one escalation
    ],
)
def test_the_smallest_ceiling_for_a_share_of_runs(spec: str, share: float, ceiling: float) -> None:
    from trilemma.plan.simulate import smallest_budget

    found = smallest_budget(load_workflow(EXAMPLES / spec), share, 20_000, seed=1)
    assert found.value == pytest.approx(ceiling, abs=1e-9)
    assert found.at.success_rate >= share and found.at.max_cost_usd == found.value
    assert found.below is not None and found.below.success_rate < share


def test_the_smallest_deadline_for_a_share_of_runs() -> None:
    """Without jitter the chain's calls take 2 s each, and each retry first waits the
    backoff (below 0.5 s after a step's first failure, 1 s after its second): runs with at most
    one retry (92% of them) end by 12.5 s, and 95% need the time of two retries, 14 s and
    their waits; a millisecond less leaves fewer than 95% finished."""
    from trilemma.plan.simulate import smallest_budget

    found = smallest_budget(load_workflow(CHAIN), 0.95, 20_000, seed=1, kind="deadline_s")
    assert found.value is not None and 14.0 < found.value <= 14.0 + 0.5 + 1.0
    assert found.at.deadline_s == found.value and found.at.success_rate >= 0.95
    assert found.below is not None and found.below.deadline_s == round(found.value - 0.001, 3)
    assert found.below.success_rate < 0.95
    jittery = load_workflow(EXAMPLES / "jittery.yaml")
    tail = smallest_budget(jittery, 0.95, 20_000, seed=1, kind="deadline_s")
    free = simulate(jittery, 20_000, seed=1)
    assert tail.value is not None and free.latency_s.p50 < tail.value < free.latency_s.p99


def test_no_ceiling_reaches_a_share_the_spec_misses_without_one(cli: Any) -> None:
    from trilemma.plan.simulate import smallest_budget

    found = smallest_budget(load_workflow(EXAMPLES / "seed-chain.yaml"), 0.95, 10_000, seed=1)
    assert found.value is None and found.at.success_rate < 0.95 and found.below is None
    with pytest.raises(ValueError, match="target"):
        smallest_budget(load_workflow(CHAIN), 1.5, 100)
    r = cli("simulate", EXAMPLES / "seed-chain.yaml", "--ceiling-for", "0.95", "--runs", "10000")
    assert r.code == 1 and "No ceiling lets 95.00% of runs finish" in r.out


def test_simulate_cli_finds_the_ceiling(cli: Any) -> None:
    r = cli("simulate", CHAIN, "--ceiling-for", "0.95", "--runs", "20000", "--seed", "1", "--json")
    assert r.code == 0 and r.json()["max_cost_usd"] == 0.21
    assert r.json()["below"]["max_cost_usd"] == 0.209999
    text = cli("simulate", CHAIN, "--ceiling-for", "0.95", "--runs", "20000", "--seed", "1").out
    assert "Smallest ceiling under which 95.00% of runs finish: $0.2100" in text
    assert "--max-cost 0.21" in text
    clash = cli("simulate", CHAIN, "--ceiling-for", "0.95", "--max-cost", "0.3")
    assert clash.code == 2 and "without --max-cost" in clash.err
    both = cli("simulate", CHAIN, "--ceiling-for", "0.95", "--deadline-for", "0.9")
    assert both.code == 2 and "one search at a time" in both.err
    late = cli("simulate", CHAIN, "--deadline-for", "0.95", "--runs", "20000", "--seed", "1", "--json")
    from trilemma.plan.simulate import smallest_budget

    found = smallest_budget(load_workflow(CHAIN), 0.95, 20_000, seed=1, kind="deadline_s")
    assert late.code == 0 and late.json()["deadline_s"] == found.value
    assert found.below is not None and late.json()["below"]["deadline_s"] == found.below.deadline_s
    zero = cli("simulate", CHAIN, "--ceiling-for", "0")
    assert zero.code == 2 and "above 0" in zero.err


def test_a_step_no_trajectory_reaches_adds_no_time_under_a_ceiling() -> None:
    """Two chained steps on a hedged model whose calls always outlast their timeout: the
    first fails every run, so none sends the second, whose drawn time is infinite. Under a
    ceiling that once made every latency NaN (0 calls x inf seconds), and --json raise."""
    wf = parse_workflow("""
version: 1
models:
  m: {usd_per_call: 0.03, latency_s: 0.02, p_ok: 0.99, timeout_s: 0.001, hedge_after_s: 0.0001}
steps: [{id: a, model: m}, {id: b, model: m, after: [a]}]
""")
    r = simulate(wf, 2_000, seed=2, max_cost_usd=0.05)
    assert r.success_rate == 0.0
    assert r.latency_s.mean == pytest.approx(0.001)  # no room for a copy: given up at 1 ms
    assert math.isfinite(r.latency_s.p99)


def test_a_refined_call_beside_others_spends_no_more_than_the_executor(tmp_path: Path) -> None:
    """Seven parallel steps at $0.78 a call, one of them refined twice (three calls one after
    another), under $5.25: the executor holds six first calls at once and refuses the
    seventh step and the refinements. The Monte Carlo counts the refined step's three bills
    from its start and holds nothing more for it; it must not hand the bills of its later
    calls to the steps after it, which made it spend $6.22 (hypothesis found it)."""
    price = 0.777939297264165
    wf = workflow_from_dict({
        "version": 1, "models": {"m": {"usd_per_call": price, "latency_s": 1.0, "p_ok": 1.0}},
        "steps": [{"id": f"s{i}", "model": "m", **({"debate_rounds": 2} if i == 2 else {})}
                  for i in range(7)],
    })  # fmt: skip
    cap = 5.251090256533114
    r = simulate(wf, 200, seed=3, max_cost_usd=cap, keep=True)
    assert r.samples is not None and r.samples["cost"].max() <= cap
    assert simulate_loop(wf, 20, seed=3, max_cost_usd=cap)[1] <= cap
    run = execute(time_scaled(wf, 0.01), journal=Journal(tmp_path / "j.db"), seed=3,
                  max_cost_usd=cap)  # fmt: skip
    assert run.status == "budget_exhausted" and run.cost_usd <= cap
    assert run.calls == 6 and r.calls.mean == 6


@pytest.mark.parametrize(
    ("worst", "shown"), [(0.9, "0.9"), (0.12344, "0.1235"), (1234.5, "1235"), (7.515, "7.515")]
)
def test_the_resume_hint_rounds_the_worst_case_up(worst: float, shown: str) -> None:
    """The resume's --max-cost (or --deadline) must not undercut the planner's worst case."""
    from trilemma.report.tables import _up

    assert _up(worst) == shown and float(shown) >= worst


def test_the_deadline_it_advises_holds_a_real_run_whose_latencies_meet_the_search_exactly(
    cli: Any, tmp_path: Path
) -> None:
    """Two 0.3 s steps in a row: every trajectory ends at 0.6 s, the smallest deadline the
    Monte Carlo finds. The executor's runs end a few ms later (the event loop wakes after each
    wait), so `--deadline 0.6` failed every run; what it advises has room for that."""
    spec = tmp_path / "two.yaml"
    spec.write_text("version: 1\nmodels: {m: {usd_per_call: 0.01, latency_s: 0.3, p_ok: 1.0}}\n"
                    "steps: [{id: a, model: m}, {id: b, model: m, after: [a]}]\n")  # fmt: skip
    r = cli("simulate", spec, "--deadline-for", "0.9", "--runs", "1000", "--json")
    found = r.json()
    assert found["deadline_s"] == 0.6 and found["run_with"] == pytest.approx(0.6 + 3 * 0.01)
    said = cli("simulate", spec, "--deadline-for", "0.9", "--runs", "1000").out.replace("\n", " ")
    assert "run it with --deadline 0.63 (0.600s and 30 ms for the executor" in said
    db = tmp_path / "j.db"
    exact = cli("run", spec, "--deadline", "0.6", "--journal", db, "--json")
    assert exact.code == 1 and exact.json()["status"] == "deadline"  # why the advice has room
    advised = cli("run", spec, "--deadline", str(found["run_with"]), "--journal", db, "--json")
    assert advised.code == 0 and advised.json()["status"] == "ok", advised.err
    cost = cli("simulate", spec, "--ceiling-for", "0.9", "--runs", "1000", "--json").json()
    assert cost["run_with"] == cost["max_cost_usd"] == 0.02  # a ceiling is held exactly
