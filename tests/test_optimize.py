"""The optimizer meets the budgets at the lowest cost; its heuristic matches exhaustive search."""

from __future__ import annotations

import json
import random
import re
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml

from trilemma import Budget, estimate, load_workflow, optimize, parse_workflow, workflow_from_dict
from trilemma.plan.optimize import apply
from trilemma.spec import CacheRule

from .conftest import EXAMPLES


def test_seed_chain_under_10_cents_and_95_percent(cli, tmp_path) -> None:
    out = tmp_path / "chosen.yaml"
    r = cli("optimize", EXAMPLES / "seed-chain.yaml", "--max-cost", "0.10", "--min-reliability",
            "0.95", "--out", out, "--json")  # fmt: skip
    assert r.code == 0, r.err
    d = r.json()
    assert d["feasible"]
    assert d["chosen"]["cost_usd"]["worst"] <= 0.10
    assert d["chosen"]["reliability"] >= 0.95
    assert len(d["frontier"]) >= 3
    chosen = load_workflow(out)  # the written spec runs as it is
    e = estimate(chosen)
    assert e.cost_worst <= 0.10 and e.reliability >= 0.95
    assert "beam" in d["method"]  # 2 models x 4 retries over 12 steps is too big to enumerate


def test_seed_chain_optimum_is_all_small_with_one_retry() -> None:
    r = optimize(load_workflow(EXAMPLES / "seed-chain.yaml"),
                 Budget(max_cost_usd=0.10, min_reliability=0.95))  # fmt: skip
    assert r.best is not None and r.best_estimate is not None
    assert {s.model for s in r.best.steps} == {"small"}
    assert {s.retries for s in r.best.steps} == {1}
    assert r.best_estimate.cost_worst == pytest.approx(0.048)


def test_parallelising_independent_steps_meets_a_deadline() -> None:
    wf = load_workflow(EXAMPLES / "seed-chain.yaml")
    # small with a retry, all in parallel: 0.4 s, again after a backoff of at most 0.5 s
    r = optimize(wf, Budget(max_cost_usd=0.10, min_reliability=0.95, deadline_s=1.5))
    assert r.best_estimate is not None
    assert r.best_estimate.latency_worst_s == pytest.approx(1.3)
    assert all(not s.after for s in r.best.steps)  # type: ignore[union-attr]


def test_expected_budget_is_looser_than_worst() -> None:
    wf = load_workflow(EXAMPLES / "seed-chain.yaml")
    budget = Budget(max_cost_usd=0.03, min_reliability=0.95)
    assert optimize(wf, budget).best is None
    relaxed = optimize(wf, budget, budget_on="expected")
    assert relaxed.best_estimate is not None
    assert relaxed.best_estimate.cost_expected <= 0.03 < relaxed.best_estimate.cost_worst


def test_infeasible_budget_exits_1_and_says_what_to_do(cli) -> None:
    r = cli("optimize", EXAMPLES / "seed-chain.yaml", "--max-cost", "0.001")
    assert r.code == 1
    assert "no configuration meets the budgets" in r.err


def test_cacheable_step_is_cached_when_it_pays() -> None:
    wf = parse_workflow("""
version: 1
models: {p: {usd_per_call: 0.03, latency_s: 2, p_ok: 0.9}}
steps:
  - {id: a, model: p, cacheable: true}
  - {id: b, model: p, after: [a]}
budget: {min_reliability: 0.98}
""")
    r = optimize(wf)
    assert r.best is not None
    assert r.best.steps[0].cached
    assert r.method == "exhaustive"


def test_a_semantic_cache_rule_survives_the_optimizer() -> None:
    wf = parse_workflow("""
version: 1
models: {p: {usd_per_call: 0.03, latency_s: 2, p_ok: 0.9}}
steps:
  - {id: a, model: p, cached: {similarity: 0.95}}
  - {id: b, model: p, after: [a]}
budget: {min_reliability: 0.85}
""")
    r = optimize(wf)
    assert r.best is not None
    assert r.best.steps[0].cached == CacheRule(similarity=0.95)  # not downgraded to exact


def test_debate_round_options_are_searched() -> None:
    wf = parse_workflow("""
version: 1
models: {p: {usd_per_call: 0.03, latency_s: 2, p_ok: 0.9}}
steps: [{id: a, model: p, debate_rounds: 3, debate_round_options: [0, 1, 3]}]
budget: {deadline_s: 2.5}
""")
    r = optimize(wf, max_retries=0)
    assert r.best is not None and r.best.steps[0].debate_rounds == 0


def _random_spec(rng: random.Random) -> dict[str, Any]:
    models = {f"m{i}": {"usd_per_call": rng.choice([0.001, 0.002, 0.01, 0.03]),
                        "latency_s": rng.choice([0.2, 0.4, 1.0, 2.0]),
                        "p_ok": rng.choice([0.7, 0.8, 0.9, 0.945, 0.985])} for i in range(3)}  # fmt: skip
    steps = []
    for i in range(rng.randint(2, 5)):
        after = [f"s{j}" for j in range(i) if rng.random() < 0.5]
        steps.append({"id": f"s{i}", "model": "m0", "after": after,
                      "candidates": rng.sample(sorted(models), rng.randint(1, 3)),
                      "cacheable": rng.random() < 0.2, "independent": rng.random() < 0.5,
                      "cuttable": i > 0 and rng.random() < 0.3})  # fmt: skip
    budget = {"max_cost_usd": rng.choice([0.01, 0.03, 0.08, 0.2]),
              "min_reliability": rng.choice([0.5, 0.8, 0.9, 0.97]),
              "deadline_s": rng.choice([None, 2.0, 4.0, 8.0])}  # fmt: skip
    return {"version": 1, "models": models, "steps": steps, "budget": budget}


@pytest.mark.parametrize("seed", range(40))
def test_beam_finds_the_exhaustive_optimum_on_small_spaces(seed: int) -> None:
    wf = workflow_from_dict(_random_spec(random.Random(seed)))
    exact = optimize(wf, method="exhaustive", max_retries=2)
    beam = optimize(wf, method="beam", max_retries=2, beam_width=64)
    assert exact.method == "exhaustive" and beam.method.startswith("beam")
    if exact.best_estimate is None:
        assert beam.best_estimate is None
    else:
        assert beam.best_estimate is not None
        assert len(beam.best_estimate.per_step) == len(exact.best_estimate.per_step)  # as few cuts
        assert beam.best_estimate.cost_worst == pytest.approx(exact.best_estimate.cost_worst)


def test_frontier_is_pareto_optimal() -> None:
    r = optimize(load_workflow(EXAMPLES / "diamond.yaml"), max_retries=2)
    pts = [(c.cost_worst, c.latency_s, -c.reliability) for c in r.frontier]
    for i, a in enumerate(pts):
        for j, b in enumerate(pts):
            if i != j:
                assert not all(x <= y for x, y in zip(b, a, strict=True)) or a == b


def test_optimize_table_and_yaml_output(cli, tmp_path) -> None:
    png = tmp_path / "frontier.png"
    r = cli("optimize", EXAMPLES / "seed-chain.yaml", "--plot", png)
    assert r.code == 0, r.err
    assert "Pareto frontier" in r.out and "# chosen configuration" in r.out
    yaml_part = r.out.split("# chosen configuration\n", 1)[1]
    assert yaml.safe_load(yaml_part)["version"] == 1
    assert png.read_bytes().startswith(b"\x89PNG")


def test_a_long_chosen_spec_is_printed_as_what_it_changes(cli, write, tmp_path) -> None:
    """A 60-step chain's chosen spec would print hundreds of lines: the terminal gets its
    changes, grouped, and --out the whole spec."""
    steps = "".join(
        f"  - {{id: s{i:02}, model: premium, candidates: [premium, small]"
        + (f", after: [s{i - 1:02}]" if i else "") + "}\n"
        for i in range(60)
    )
    spec = write("version: 1\nmodels:\n  premium: {usd_per_call: 0.03, latency_s: 2, p_ok: 0.985}"
                 "\n  small: {usd_per_call: 0.002, latency_s: 0.4, p_ok: 0.945}\nsteps:\n" + steps)
    out = tmp_path / "chosen.yaml"
    r = cli("optimize", spec, "--min-reliability", "0.9", "--out", out)
    assert r.code == 0, r.err
    changes = r.out.split("# chosen configuration: ", 1)[1]
    lines = changes.strip().splitlines()
    assert lines[0].startswith(f"{out.read_text().count(chr(10)):,} lines (written to {out})")
    assert 2 <= len(lines) <= 5 and "model premium -> small" in changes and "retries 0 -> " in changes
    assert "version: 1" not in r.out
    assert len(yaml.safe_load(out.read_text())["steps"]) == 60


def test_spec_changes_name_each_lever_once_per_set_of_steps() -> None:
    from trilemma.report.tables import spec_changes

    wf = load_workflow(EXAMPLES / "seed-chain.yaml")
    assert spec_changes(wf, wf) == ["nothing: it is the original"]
    chosen = wf.model_copy(update={
        "steps": [s.model_copy(update={"model": "small", "retries": 2, "after": []})
                  for s in wf.steps[1:]],
        "stop_when": "s05",
    })  # fmt: skip
    assert spec_changes(wf, chosen) == [
        "cut: step s01",
        "model premium -> small, after: none (starts at once), retries 0 -> 2: "
        "steps s02, s03, s04 and 8 more",
        "stop_when none -> s05",
    ]
    assert spec_changes(wf, chosen, most=1)[-1] == "and 2 more changes"
    assert spec_changes(wf, chosen, most=2)[-1] == "and 1 more change"


def test_the_chosen_configuration_is_shown_and_marked_on_the_frontier(cli) -> None:
    """seed-chain.yaml under $0.10 and 95%: the answer (12 small calls, one retry each,
    $0.048 at worst) is the frontier's third of 72 configurations, which evenly spread rows
    used to leave out; the caption names only the budgets that are set."""
    args = [EXAMPLES / "seed-chain.yaml", "--max-cost", "0.10", "--min-reliability", "0.95"]
    doc = cli("optimize", *args, "--json").json()
    marked = [f for f in doc["frontier"] if f["chosen"]]
    assert len(doc["frontier"]) > 15 and len(marked) == 1
    assert marked[0]["cost_usd"]["worst"] == pytest.approx(doc["chosen"]["cost_usd"]["worst"])
    assert marked[0]["reliability"] == pytest.approx(doc["chosen"]["reliability"])
    out = cli("optimize", *args).out
    rows = [line for line in out.splitlines() if "chosen" in line and "retries" in line]
    assert len(rows) == 1 and "$0.0480" in rows[0] and "yes, chosen" in rows[0]
    assert "15 shown" in out and "cost <= $0.1000" in out and "latency <=" not in out
    none = cli("optimize", *args[:1], "--max-cost", "0.01", "--json")  # nothing is chosen
    assert none.code == 1 and not any(f["chosen"] for f in none.json()["frontier"])


@pytest.mark.parametrize(("n", "keep"), [(72, 2), (72, 70), (72, 0), (40, 13), (15, 3), (16, None)])
def test_the_frontier_is_thinned_evenly_around_the_chosen_row(n: int, keep: int | None) -> None:
    from trilemma.report.tables import _thinned

    rows = _thinned(n, 15, keep)
    assert len(rows) == min(n, 15) == len(set(rows)) and rows == sorted(rows)
    assert rows[0] == 0 and rows[-1] == n - 1
    assert keep is None or keep in rows


def test_a_spec_without_levers_says_so() -> None:
    wf = parse_workflow("""
version: 1
models: {p: {usd_per_call: 0.03, latency_s: 2, p_ok: 0.9}}
steps: [{id: a, model: p}]
""")
    r = optimize(wf)
    assert any("only retries were searched" in n for n in r.notes)


def test_a_cost_budget_without_a_floor_says_what_reliability_it_gave_away(cli, write) -> None:
    """Under a cost budget alone the cheapest answer drops every retry: 81% against the
    original's 99.80%. The note says so and names the flag that keeps it; with a floor, or
    when the answer loses nothing, there is no such note."""
    spec = write("""
version: 1
models: {small: {usd_per_call: 0.01, latency_s: 0.5, p_ok: 0.9}}
steps:
  - {id: a, model: small, retries: 2}
  - {id: b, model: small, retries: 2, after: [a]}
""")
    doc = cli("optimize", spec, "--max-cost", "1", "--json").json()
    assert doc["chosen"]["reliability"] == pytest.approx(0.81)
    floor = [n for n in doc["notes"] if n.startswith("no reliability floor")]
    assert len(floor) == 1 and "81.00%" in floor[0] and "99.80%" in floor[0]
    assert "--min-reliability" in floor[0]
    held = cli("optimize", spec, "--max-cost", "1", "--min-reliability", "0.95", "--json").json()
    assert not any(n.startswith("no reliability floor") for n in held["notes"])
    tight = cli("optimize", spec, "--max-cost", "1", "--min-reliability", "0.998", "--json").json()
    assert tight["chosen"]["reliability"] >= doc["original"]["reliability"]
    assert not any(n.startswith("no reliability floor") for n in tight["notes"])


def test_a_search_space_too_large_to_read_is_counted_in_scientific_notation(cli, write) -> None:
    """Twenty steps with two candidates and up to three retries each: 8^20 = 1.2e18
    configurations, which the title used to print as a run of digits (a 300-step spec
    printed 297 of them)."""
    from trilemma._format import count

    assert count(999_999_999_999_999) == "999,999,999,999,999" and count(10**15) == "1.0e15"
    assert count(846 * 10**294) == "8.5e296" and count(10**1000) == "1.0e1000"  # past a float
    steps = "\n".join(f"  - {{id: s{i}, model: small, candidates: [small, large]}}"
                      for i in range(20))  # fmt: skip
    spec = write(f"""
version: 1
models:
  small: {{usd_per_call: 0.002, latency_s: 0.5, p_ok: 0.97}}
  large: {{usd_per_call: 0.020, latency_s: 0.8, p_ok: 0.99}}
steps:
{steps}
""")
    r = cli("optimize", spec, "--max-cost", "1")
    assert r.code == 0, r.err
    title = " ".join(r.out.split("┏", 1)[0].split())
    assert title.startswith("Optimized by beam") and "1.2e18 configurations in the space" in title
    assert cli("optimize", spec, "--max-cost", "1", "--json").json()["space"] == 8**20


# ---------------------------------------------------------------------- cutting steps


def test_a_step_is_cut_only_when_the_budgets_force_it(cli) -> None:
    wf = load_workflow(EXAMPLES / "cuttable.yaml")
    loose = optimize(wf, Budget(deadline_s=12, min_reliability=0.95), budget_on="expected")
    assert loose.best is not None and len(loose.best.steps) == 6  # the small model is enough
    assert loose.best.steps[0].model == "small"
    tight = optimize(wf, Budget(deadline_s=9, min_reliability=0.95), budget_on="expected")
    assert tight.best is not None and tight.best_estimate is not None
    kept = [s.id for s in tight.best.steps]
    assert len(kept) == 5 and {"critique", "revise"} & set(kept)  # one cut, not two
    assert tight.best_estimate.latency_expected_s <= 9
    gone = ({"critique", "revise"} - set(kept)).pop()
    after = {s.id: s.after for s in tight.best.steps}
    assert after[{"critique": "revise", "revise": "answer"}[gone]] == [
        {"critique": "draft", "revise": "critique"}[gone]
    ]  # the step after the cut one runs after what it ran after
    none = optimize(wf)  # no budget: every step kept, the cheapest way
    assert none.best is not None and len(none.best.steps) == 6
    out = cli("optimize", EXAMPLES / "cuttable.yaml", "--max-latency", "9",
              "--min-reliability", "0.95", "--budget-on", "expected")  # fmt: skip
    assert out.code == 0, out.err
    assert "1 cut" in out.out and "│ cut " in out.out and gone in out.out
    out = cli("optimize", EXAMPLES / "cuttable.yaml", "--max-latency", "9",
              "--min-reliability", "0.95", "--budget-on", "expected", "--json")  # fmt: skip
    doc = json.loads(out.out)
    assert doc["cut_steps"] == [gone] and {f["steps_cut"] for f in doc["frontier"]} == {0, 1, 2}


def test_cutting_keeps_the_graph_joined() -> None:
    """A cut step with two parents hands both to its children; cut steps in a row chain."""
    wf = parse_workflow("""
version: 1
models: {p: {usd_per_call: 0.03, latency_s: 2, p_ok: 0.99}}
steps:
  - {id: a, model: p}
  - {id: b, model: p}
  - {id: c, model: p, after: [a, b], cuttable: true}
  - {id: d, model: p, after: [c], cuttable: true}
  - {id: e, model: p, after: [d, a]}
""")
    r = optimize(wf, Budget(deadline_s=4.5), max_retries=0)  # a, c, d, e: 8 s; without c, d: 4 s
    assert r.best is not None
    assert {s.id: s.after for s in r.best.steps} == {"a": [], "b": [], "e": ["a", "b"]}
    assert r.best_estimate is not None and r.best_estimate.latency_critical_s == 4.0


def test_the_frontier_keeps_configurations_that_keep_every_step() -> None:
    r = optimize(load_workflow(EXAMPLES / "cuttable.yaml"), max_retries=1)
    cuts = {c.cuts for c in r.frontier}
    assert cuts == {0, 1, 2}  # cut ones beat the others on every figure, yet keep fewer steps
    pts = [(c.cost_worst, c.latency_s, -c.reliability, c.cuts) for c in r.frontier]
    for i, a in enumerate(pts):
        for j, b in enumerate(pts):
            if i != j:
                assert not all(x <= y for x, y in zip(b, a, strict=True)) or a == b


@pytest.mark.parametrize(
    ("steps", "extra", "message"),
    [
        ('[{id: a, model: p, cuttable: true}, {id: b, model: p, after: [a], prompt: "Fix {a}"}]',
         "", "steps[0].cuttable: step 'a' cannot be cut: steps[1] (b) reads its output as {a}"),
        ("[{id: a, model: p, cuttable: true}, {id: b, model: p, after: [a]}]",
         "stop_when: a\n", "steps[0].cuttable: step 'a' is stop_when's step"),
        ("[{id: a, model: p, cuttable: true}]", "", "steps: every step is cuttable"),
        ("[{id: a, model: p, cuttable: true, stoppable: true}, {id: b, model: p}]", "",
         "steps[0].stoppable: step 'a' is cuttable, so the run cannot stop on it"),
    ],
)
def test_a_step_that_cannot_be_cut_is_refused(cli, write, steps: str, extra: str, message: str) -> None:
    path = write("version: 1\nmodels: {p: {usd_per_call: 0.03, latency_s: 2, p_ok: 0.99}}\n"
                 f"steps: {steps}\n{extra}")  # fmt: skip
    out = cli("estimate", path)
    assert out.code == 2 and message in out.err and "Traceback" not in out.err


def test_a_latency_budget_is_checked_as_a_deadline_by_monte_carlo(cli) -> None:
    """Expected figures meet 9 s; as a hard deadline some runs are still cut. Bound on the
    worst case, none is (no jitter)."""
    args = [EXAMPLES / "cuttable.yaml", "--max-latency", "9", "--min-reliability", "0.95"]
    doc = json.loads(cli("optimize", *args, "--budget-on", "expected", "--json").out)
    check = doc["deadline_check"]
    assert check["original"]["success_rate"] == 0.0  # 12 s of premium calls: always cut
    assert 0 < check["chosen"]["deadline_rate"] < 0.1
    assert check["chosen"]["success_rate"] < doc["chosen"]["reliability"]
    worst = json.loads(cli("optimize", *args, "--budget-on", "worst", "--json").out)
    assert worst["deadline_check"]["chosen"]["deadline_rate"] == 0.0
    assert doc["budget_check"] == check  # no cost budget: the same check
    plain = json.loads(cli("optimize", EXAMPLES / "seed-chain.yaml", "--json").out)
    assert plain["deadline_check"] is None
    out = cli("optimize", *args, "--budget-on", "expected")
    assert "with the 9s latency budget as the run's deadline" in out.out.replace("\n", " ")


def test_a_chosen_spec_whose_runs_end_at_the_latency_budget_is_said_so(cli) -> None:
    """Twelve small calls of 0.4 s in parallel, no retry: every run takes exactly the 0.4 s
    latency budget, which the Monte Carlo has in time and a run's deadline cuts (the
    executor's own time); the check says so. With a 2 s budget its runs end far before."""
    args = [EXAMPLES / "seed-chain.yaml", "--max-cost", "0.1", "--min-reliability", "0.5"]
    said = " ".join(cli("optimize", *args, "--max-latency", "0.4").out.split())
    assert re.search(r"chosen succeeds (\d\d\.\d\d)% \[\d\d\.\d\d%, \d\d\.\d\d%\] \(0\.00% cut, 0\.00% stopped, \1% of runs "
                     r"succeed less than 20 ms before the deadline, which the executor's own time may "
                     r"cross\)", said), said  # fmt: skip
    roomy = " ".join(cli("optimize", *args, "--max-latency", "2").out.split())
    assert "chosen succeeds" in roomy and "before the deadline" not in roomy
    for budget, near in (("0.4", True), ("2", False)):  # --json carries the share
        chosen = cli("optimize", *args, "--max-latency", budget, "--json").json()["budget_check"]["chosen"]
        assert chosen["success_rate"] > 0.4
        assert chosen["near_deadline_rate"] == (chosen["success_rate"] if near else 0.0), chosen
    # the enforced search's own Monte Carlo of its answer is the check: it keeps its runs too
    enforced = cli("optimize", *args, "--max-latency", "0.4", "--budget-on", "enforced", "--json").json()
    chosen, own = enforced["budget_check"]["chosen"], enforced["enforced"]
    assert chosen["near_deadline_rate"] == chosen["success_rate"] > 0.4, chosen
    assert {k: own[k] for k in chosen} == chosen  # the one Monte Carlo, not a second


def test_a_cost_budget_is_checked_as_a_ceiling_by_monte_carlo(cli) -> None:
    """The seed chain's 12 premium calls ($0.36) never fit its $0.10 budget held as a
    ceiling: every run that does not fail first stops. The chosen spec's worst case fits."""
    doc = json.loads(cli("optimize", EXAMPLES / "seed-chain.yaml", "--json").out)
    check = doc["budget_check"]
    assert check["original"]["success_rate"] == 0.0
    assert check["original"]["budget_exhausted_rate"] > 0.9
    assert check["chosen"]["budget_exhausted_rate"] == 0.0  # bound on the worst case
    assert check["chosen"]["success_rate"] == pytest.approx(doc["chosen"]["reliability"], abs=0.005)
    out = cli("optimize", EXAMPLES / "seed-chain.yaml").out.replace("\n", " ")
    assert "the $0.1000 cost budget as its ceiling" in out and "stopped" in out


def test_enforced_budgets_find_what_paper_figures_miss(cli) -> None:
    """examples/ceiling.yaml under a $0.21 ceiling held by the runs, 95% floor. On the worst
    case nothing fits; on expected figures one retry a step looks enough (95.1% on paper) but
    succeeds 94.4% under the ceiling; enforced, the answer succeeds under it."""
    args = [EXAMPLES / "ceiling.yaml", "--max-cost", "0.21", "--min-reliability", "0.95", "--json"]
    worst = cli("optimize", *args, "--budget-on", "worst")
    assert worst.code == 1 and not worst.json()["feasible"]
    paper = cli("optimize", *args, "--budget-on", "expected").json()
    assert paper["chosen"]["reliability"] >= 0.95
    assert paper["budget_check"]["chosen"]["success_rate"] < 0.95
    enforced = cli("optimize", *args, "--budget-on", "enforced").json()
    got = enforced["enforced"]
    assert got["success_rate"] >= 0.95 and got["runs"] == 100_000
    assert got["success_rate"] == enforced["budget_check"]["chosen"]["success_rate"]  # one figure
    assert got["candidates_simulated"] >= 2  # the cheaper one on paper was simulated and failed
    assert paper["chosen"]["cost_usd"]["expected"] <= enforced["chosen"]["cost_usd"]["expected"]
    assert enforced["chosen"]["cost_usd"]["expected"] <= enforced["original"]["cost_usd"]["expected"]
    text = cli("optimize", *args[:-1], "--budget-on", "enforced").out
    assert "success, budgets enforced" in text and "budget enforced: cost <= $0.2100" in text
    short = "falls short of the 95.00% reliability budget it meets on paper"
    assert short not in " ".join(text.split())  # enforced: its check is what it met
    said = " ".join(cli("optimize", *args[:-1], "--budget-on", "expected").out.split())
    assert re.search(r"chosen succeeds 94\.\d\d% \[94\.\d\d%, 94\.\d\d%\] \(0\.\d\d% stopped\)\. "
                     r"Run under these budgets, the chosen " + short, said), said  # fmt: skip
    assert "`--budget-on enforced` picks among configurations simulated so" in said


def test_the_chosen_spec_carries_the_budgets_it_was_chosen_for(cli, tmp_path: Path) -> None:
    """--max-cost 0.21 over the file's $0.18: the chosen spec runs under the $0.21 its check
    held (it used to keep the file's $0.18, under which it was never checked)."""
    chosen = tmp_path / "chosen.yaml"
    args = [EXAMPLES / "ceiling.yaml", "--max-cost", "0.21", "--min-reliability", "0.96"]
    assert cli("optimize", *args, "--budget-on", "enforced", "--out", chosen).code == 0
    budget = load_workflow(chosen).budget
    assert (budget.max_cost_usd, budget.min_reliability) == (0.21, 0.96)
    wf = load_workflow(EXAMPLES / "ceiling.yaml")
    assert wf.budget.max_cost_usd == 0.18  # the file's own, which the flags overrode
    asked = Budget(max_cost_usd=0.5, deadline_s=30.0)
    r = optimize(wf, asked)
    assert r.best is not None and r.best.budget == asked and r.budget == asked


def test_enforced_budgets_that_nothing_meets(cli) -> None:
    """Six calls fit $0.18: no choice of retries gets five steps at p 0.9 to 95% under it."""
    r = cli("optimize", EXAMPLES / "ceiling.yaml", "--max-cost", "0.18", "--min-reliability",
            "0.95", "--budget-on", "enforced", "--json")  # fmt: skip
    assert r.code == 1 and not r.json()["feasible"] and r.json()["enforced"] is None
    assert any("enforced:" in n and "simulated" in n for n in r.json()["notes"])


def test_enforced_budgets_need_a_floor(cli, write) -> None:
    spec = write((EXAMPLES / "ceiling.yaml").read_text().replace(", min_reliability: 0.95", ""))
    r = cli("optimize", spec, "--max-cost", "0.21", "--budget-on", "enforced")
    assert r.code == 2 and "--budget-on enforced: give --min-reliability" in r.err


def test_a_stop_is_weighed_under_enforced_budgets(cli, write) -> None:
    """examples/stoppable.yaml: the FAQ lookup fails the run whenever its retries run out,
    so without a stop nothing meets 95% under a $0.04 ceiling; stopping on it does, and the
    Monte Carlo that judged it decides each race between the lookup and the research."""
    enforced = cli("optimize", EXAMPLES / "stoppable.yaml", "--budget-on", "enforced", "--json")
    assert enforced.code == 0, enforced.err
    doc = enforced.json()
    chosen = yaml.safe_load(doc["chosen_spec"])
    assert chosen["stop_when"] == "faq" and doc["chosen"]["stop_when"]["step"] == "faq"
    assert doc["enforced"]["success_rate"] >= 0.95
    assert doc["budget_check"]["chosen"]["success_rate"] == doc["enforced"]["success_rate"]
    assert any("also with a stop on faq (stoppable)" in n for n in doc["notes"])
    assert doc["judged"] is None  # enforced: the enforced Monte Carlo is the one shown
    paper = cli("optimize", EXAMPLES / "stoppable.yaml", "--budget-on", "expected", "--json")
    judged = paper.json()["judged"]
    assert judged["runs"] == 100_000 and judged["success_rate"] >= 0.95
    assert judged["stops_simulated"] >= 2
    png = write(b"", "frontier.png")
    text = cli("optimize", EXAMPLES / "stoppable.yaml", "--budget-on", "expected", "--plot", png)
    assert "success, Monte Carlo" in text.out and "cost expected, Monte Carlo" in text.out
    assert png.read_bytes().startswith(b"\x89PNG")  # the judged figure drawn beside the estimate
    never = write((EXAMPLES / "stoppable.yaml").read_text().replace("stoppable: true", "retries: 0"))
    without = cli("optimize", never, "--budget-on", "enforced", "--json")
    assert without.code == 1 and not without.json()["feasible"]
    assert "or stoppable steps to the spec" in without.err


def test_on_expected_budgets_a_stop_is_judged_by_its_monte_carlo() -> None:
    """The estimate lays the race on one schedule of expected latencies: a search on its
    figures picked a stop it flattered (97.3% estimated, 88.0% simulated). Judged by the
    Monte Carlo, the answer's figures are the simulation's and meet the floor. A stop never
    lowers a worst case: worst-case budgets do not weigh it, and say so."""
    from trilemma import simulate

    wf = load_workflow(EXAMPLES / "stoppable.yaml")
    r = optimize(wf, budget_on="expected")
    assert r.best is not None and r.best.stop_when == "faq" and r.simulated >= 2
    chosen = next(c for c in r.candidates if c.stop_when == "faq" and apply(wf, c) == r.best)
    sim = simulate(r.best, 100_000, seed=1)
    assert chosen.reliability == sim.success_rate >= 0.95
    assert r.judged is not None and r.judged.success_rate == sim.success_rate
    assert chosen.cost_expected == pytest.approx(sim.cost_usd.mean)
    assert chosen.cost_expected <= 0.04 and chosen.latency_s <= 6
    flattered = {"faq": 2, "research": 3, "answer": 0}  # 97.3% on the estimate alone
    assert {s.id: s.retries for s in r.best.steps} != flattered
    assert any("with a stop on faq simulated" in n for n in r.notes)
    worst = optimize(wf, Budget(min_reliability=0.9), budget_on="worst")
    assert worst.best is not None and worst.best.stop_when is None and worst.simulated == 0
    assert all(c.stop_when is None for c in (*worst.frontier, *worst.candidates))
    assert any("a stop never lowers a worst case" in n for n in worst.notes)


def test_a_spec_s_own_stop_stays_when_the_optimizer_chooses_no_other() -> None:
    """stop_when names one step, stoppable another: a configuration without a stop of its own
    keeps the spec's; one with a stop replaces it."""
    from trilemma.plan.optimize import _stopped

    text = (EXAMPLES / "stoppable.yaml").read_text().replace(
        "  - {id: research, model: premium,", "  - {id: research, model: premium, stoppable: true,"
    ) + "stop_when: faq\n"
    wf = parse_workflow(text)
    r = optimize(wf, Budget(min_reliability=0.9), budget_on="worst")  # no stop weighed
    assert r.best is not None and r.best.stop_when == "faq"
    stopped = _stopped(wf, r.frontier, ["research"])
    assert {c.stop_when for c in stopped} == {"research"} and len(stopped) == len(r.frontier)
    assert apply(wf, stopped[0]).stop_when == "research"
    # its figures are the estimate's of the spec with that stop
    e = estimate(apply(wf, stopped[0]))
    assert stopped[0].cost_expected == pytest.approx(e.cost_expected)
    assert stopped[0].reliability == pytest.approx(e.reliability)
    assert stopped[0].latency_s == pytest.approx(e.latency_expected_s)


def test_the_beam_keeps_exactly_the_partial_configurations_none_beats() -> None:
    """The pruning against its definition, in turn: in key order (steps cut, cost, -log
    reliability, open finish times), a partial configuration is dropped iff one kept before
    it is no worse on each (within 1e-12); of equal keys the first stays. Values on a coarse
    grid make ties common; values on a grid of 4e-13 make chains within the tolerance, where
    "beaten by a row dropped" is not "beaten by a row kept" (-log reliability is that small
    after many retries); sizes cross the bitsets' words and blocks."""
    from trilemma.plan.optimize import _BLOCK_BITS, _prune

    def beats(a: tuple[float, ...], b: tuple[float, ...]) -> bool:
        return all(x <= y + 1e-12 for x, y in zip(a, b, strict=True))

    rng = random.Random(5)
    dropped = chained = 0
    sizes = [0, 1, 2, 40, 63, 64, 65, _BLOCK_BITS + 1, 2 * _BLOCK_BITS + 70]
    for trial in range(300):
        n = rng.choice(sizes) if trial % 10 == 0 else rng.randint(0, 40)
        grid = rng.choice([1 / 3, 1 / 3, 1 / 40, 4e-13])
        width = rng.randint(3, 6)
        keys = [(rng.randint(0, 1), *(rng.randint(0, 6) * grid for _ in range(width - 1)))
                for _ in range(n)]  # fmt: skip
        kept = _prune(np.array(keys, dtype=float).reshape(n, width)).tolist()
        expected: list[int] = []
        for i in sorted(range(n), key=lambda i: (keys[i], i)):
            if not any(beats(keys[k], keys[i]) for k in expected):
                expected.append(i)
        assert kept == expected
        dropped += n - len(kept)
        chained += any(  # a row dropped only by rows dropped themselves: kept
            not any(beats(keys[k], keys[i]) for k in expected if k != i)
            and any(beats(keys[j], keys[i]) for j in range(n) if keys[j] < keys[i])
            for i in expected
        )
    assert dropped > 1000 and chained > 5, (dropped, chained)


def test_the_search_says_what_it_is_doing() -> None:
    """``on_progress`` hears each beam pass step by step (a search within a budget makes a
    second pass without it, for the frontier beyond), then the exchanges; an exhaustive
    search says so once; an enforced one each candidate its Monte Carlo judges. Being told
    changes nothing found."""
    steps = [{"id": f"s{i}", "model": "small", **({"after": [f"s{i - 1}"]} if i else {})}
             for i in range(30)]  # fmt: skip
    wf = workflow_from_dict({"version": 1, "steps": steps, "models": {
        "small": {"usd_per_call": 0.002, "latency_s": 0.5, "p_ok": 0.99}}})  # fmt: skip
    heard: list[str] = []
    told = optimize(wf, Budget(min_reliability=0.9), on_progress=heard.append)
    assert told.method.startswith("beam")
    beam = [f"beam pass {p} of 2: step {k} of 30" for p in (1, 2) for k in range(1, 31)]
    assert heard == [*beam, "single-step exchanges from the best"]
    assert told == optimize(wf, Budget(min_reliability=0.9))

    heard.clear()
    small = wf.model_copy(update={"steps": wf.steps[:3]})  # 4 x 4 x 4 configurations
    optimize(small, method="exhaustive", on_progress=heard.append)
    assert heard == ["every configuration (64)"]

    heard.clear()
    optimize(small, Budget(min_reliability=0.9, max_cost_usd=0.02), budget_on="enforced",
             on_progress=heard.append)  # fmt: skip
    assert heard == ["every configuration (64)", "Monte Carlo of candidate 1 under the "
                     "enforced budgets"]  # fmt: skip


def test_an_exhaustive_search_too_large_to_hold_is_refused(cli) -> None:
    """`--method exhaustive` holds every configuration in memory at once: on seed-chain.yaml
    (about 10^11) it grew past 17 GB before it was stopped. Past EXHAUSTIVE_MAX it is refused
    before anything is built, naming the size and the methods that do not hold them all."""
    from trilemma import UsageError
    from trilemma.plan.optimize import EXHAUSTIVE_MAX

    r = cli("optimize", str(EXAMPLES / "seed-chain.yaml"), "--method", "exhaustive")
    assert r.code == 2
    assert r.err.strip().splitlines() == [
        "trilemma: error: --method exhaustive: 137,438,953,472 configurations, more than the "
        "1,000,000 it holds in memory at once; give --method beam, or auto (exhaustive up to "
        "20,000 per structure)"
    ]
    steps = [{"id": f"s{i}", "model": "m"} for i in range(10)]  # 4^10 = 1,048,576 with retries
    wf = workflow_from_dict({"version": 1, "steps": steps, "models": {
        "m": {"usd_per_call": 0.01, "latency_s": 1.0, "p_ok": 0.9}}})  # fmt: skip
    assert 4**10 > EXHAUSTIVE_MAX >= 4**9
    with pytest.raises(UsageError, match="1,048,576 configurations"):
        optimize(wf, method="exhaustive")
    fewer = optimize(wf, method="exhaustive", max_retries=1)  # 2^10: held, and searched
    assert fewer.space == 2**10 and fewer.method == "exhaustive" and fewer.best is not None
