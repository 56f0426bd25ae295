"""Budget sweeps: quality against the budget, beside a baseline that ignores budgets."""

from __future__ import annotations

import io
import json
import math
import random
from pathlib import Path

import pytest
from rich.console import Console

from trilemma import load_workflow, parse_workflow
from trilemma.errors import RateLimited, UsageError
from trilemma.experiments.sweep import Limits, budget_sweep, planned_ceilings
from trilemma.experiments.trials import time_scaled
from trilemma.journal import Journal
from trilemma.report.tables import sweep_table
from trilemma.run.retry import backoff, scaled_time

from .conftest import EXAMPLES

CASCADE = EXAMPLES / "cascade.yaml"  # $0.006 when the small model suffices, $0.126 worst


def test_a_ceiling_is_never_crossed_and_the_run_fails_soft(tmp_path: Path) -> None:
    wf = load_workflow(CASCADE)
    budgets = [Limits(0.006), Limits(0.036), Limits(0.126)]
    sw = budget_sweep(wf, budgets, 60, Journal(tmp_path / "j.db"), seed=0, time_scale=0.001)
    assert sw.baseline.runs == 60 and sw.baseline.stopped == 0
    assert sw.baseline.cost_max > 0.006  # some runs escalate to the premium model
    for row in sw.rows:
        assert row.overruns == 0 and row.cost_max <= row.budget.max_cost_usd + 1e-12
        # Per-call prices reserve exactly what a call costs, and twin runs draw the same
        # answers: a budgeted run succeeds exactly when its unbudgeted twin did within budget.
        assert row.ok == row.baseline_ok_within
        assert row.stopped == row.runs - row.ok - row.failed
    tight, mid, worst = sw.rows
    assert tight.success_rate <= mid.success_rate <= worst.success_rate
    assert tight.stopped > 0 and tight.baseline_over == tight.stopped
    assert 0 < tight.steps_returned < 1  # the steps finished before the stop come back
    assert worst.stopped == 0 and worst.ok == sw.baseline.ok  # the worst case always fits
    # the Monte Carlo's spend under each ceiling: within it, growing with it, and at the
    # worst case the unbudgeted runs' ($0.011: premium pays for the 5.5% the small model misses)
    spend = [r.predicted_cost for r in sw.rows]
    for c, r in zip(spend, sw.rows, strict=True):
        assert c is not None and r.budget.max_cost_usd is not None and c <= r.budget.max_cost_usd
    assert spend == sorted(spend) and spend[0] < spend[1]  # type: ignore[type-var]
    assert spend[2] == sw.baseline.predicted_cost == pytest.approx(0.011, abs=0.0002)
    # on a 120-column terminal every header word stays whole
    console = Console(width=120, record=True, file=io.StringIO())
    console.print(sweep_table(sw, "cascade.yaml"))
    shown = console.export_text()
    assert "…" not in shown and shown.count("predicted ┃") == 2, shown
    assert max(len(line) for line in shown.splitlines()) <= 120


def test_a_deadline_sweep_stops_runs_at_the_deadline(tmp_path: Path) -> None:
    wf = load_workflow(CASCADE)  # critical path 1.2 s
    sw = budget_sweep(wf, [Limits(deadline_s=0.6), Limits(deadline_s=20.0)], 10,
                      Journal(tmp_path / "j.db"), time_scale=0.05)  # fmt: skip
    short, long = sw.rows
    assert short.ok == 0 and short.stopped == 10
    assert short.latency_max_s < 0.6 * 1.5  # cancelled at the deadline, scaled back
    assert short.baseline_over == 10 and short.steps_returned < 1
    assert long.stopped == 0 and long.ok == sw.baseline.ok
    assert 1.2 <= long.latency_mean_s < 20
    # the Monte Carlo under each deadline: none makes 0.6 s, all but failures make 20 s
    assert short.predicted_success == 0.0
    assert long.predicted_success == pytest.approx(sw.predicted.reliability, abs=0.002)
    assert sw.baseline.predicted_success == long.predicted_success


def test_time_scaling_shortens_every_clock_of_the_simulator() -> None:
    wf = parse_workflow("""version: 1
models:
  m: {usd_per_call: 0.01, latency_s: 2.0, p_ok: 0.9, timeout_s: 30, rpm: 60, tpm: 1000}
steps:
  - {id: a, model: m}
budget: {deadline_s: 10}
""")
    fast = time_scaled(wf, 0.01)
    m = fast.models["m"]
    assert (m.latency_s, m.timeout_s, m.minute_s) == (0.02, 0.3, pytest.approx(0.6))
    assert (m.rpm, m.tpm) == (60, 1000)  # a minute's worth as before, in a shorter minute
    assert fast.budget.deadline_s == pytest.approx(0.1)  # the spec's own deadline too
    assert time_scaled(wf, 1.0) is wf
    slow = RateLimited("429", retry_after=2.0)
    unscaled = backoff(None, 3, random.Random(5))
    with scaled_time(0.01):
        assert backoff(None, 3, random.Random(5)) == pytest.approx(unscaled * 0.01)
        assert backoff(slow, 1, random.Random(5)) == pytest.approx(0.02)
    assert backoff(slow, 1, random.Random(5)) == 2.0


def test_a_real_endpoint_cannot_run_in_scaled_time(tmp_path: Path) -> None:
    wf = parse_workflow("""version: 1
models:
  r: {provider: openai, base_url: "http://127.0.0.1:9/v1", model: x, usd_per_call: 0.01,
      latency_s: 1, p_ok: 0.9}
steps:
  - {id: a, model: r}
""")
    with pytest.raises(UsageError, match="--time-scale 1"):
        budget_sweep(wf, [Limits(0.1)], 1, Journal(tmp_path / "j.db"))


def test_cli_sweep_json_table_and_plot(cli, tmp_path: Path) -> None:
    db, png = tmp_path / "j.db", tmp_path / "sweep.png"
    args = ["sweep", CASCADE, "--max-cost", "0.006,0.126", "--runs", "8", "--time-scale",
            "0.001", "--journal", db]  # fmt: skip
    r = cli(*args, "--json", "--plot", png)
    assert r.code == 0, r.err
    d = r.json()
    assert d["runs"] == 8 and len(d["rows"]) == 2
    assert d["predicted"]["cost_usd"]["worst"] == pytest.approx(0.126)
    row = d["rows"][0]
    for key in (
        "max_cost_usd",
        "success_rate",
        "success_ci95",
        "stopped_by_budget",
        "cost_usd",
        "steps_returned",
        "overruns",
        "baseline_over_budget",
        "baseline_ok_within_budget",
        "predicted_success_rate",
        "predicted_cost_usd",
    ):
        assert key in row  # fmt: skip
    # the Monte Carlo holds each ceiling: at the worst case nothing stops a run
    top = d["rows"][1]["predicted_success_rate"]
    assert top == pytest.approx(d["baseline"]["predicted_success_rate"])
    assert 0.0 < row["predicted_success_rate"] < top
    assert png.stat().st_size > 10_000 and png.read_bytes()[:4] == b"\x89PNG"
    t = cli(*args)
    assert t.code == 0 and "Budget sweep" in t.out and "baseline" in t.out
    assert "Spend over a ceiling: 0 of 16" in t.out
    widest = max((hi - lo) / 2 for hi, lo in ((r["success_ci95"][1], r["success_ci95"][0])
                                               for r in (d["baseline"], *d["rows"])))  # fmt: skip
    assert f"Success is measured to within +-{widest:.1%} (8 runs a budget, 95%" in t.out
    assert row["predicted_cost_usd"] <= 0.006 < d["rows"][1]["predicted_cost_usd"]
    assert "success and mean spend under the budget" in " ".join(t.out.split())


@pytest.mark.parametrize(
    ("args", "says"),
    [
        (["--runs", "0"], "--runs: 0 is not a positive integer"),  # checked before the planner's ceilings
        (["--max-cost", "0.1,abc"], "--max-cost '0.1,abc': give positive numbers"),
        (["--deadline", "-1"], "--deadline '-1': give positive numbers"),
        (["--max-cost", "0.1", "--time-scale", "2"], "--time-scale 2: give a factor in (0, 1]"),
        (["--max-cost", "0.1", "--runs", "0"], "--runs: 0 is not a positive integer"),
        (["--max-cost", "0.1", "--runs", "1000001"], "--runs: 1,000,001 runs, each one run on the executor"),
        (["--max-cost", "0.1", "--parallel", "0"], "--parallel: 0 is not a positive integer; give 1 or more"),
    ],
)
def test_cli_sweep_bad_flags_are_one_line_errors(cli, tmp_path: Path, args, says) -> None:
    r = cli("sweep", CASCADE, "--journal", tmp_path / "j.db", *args)
    assert r.code == 2 and says in r.err
    assert len(r.err.strip().splitlines()) == 1 and "Traceback" not in r.err
    assert not (tmp_path / "j.db").exists()  # refused before the journal was opened


def test_given_no_budget_it_sweeps_the_planners_ceilings(cli, tmp_path: Path) -> None:
    """ticket.yaml: 15 calls of $0.03 when nothing is retried. Half its successes are kept
    under $0.45 as 90% are (92.8% of runs need no retry), 99% need $0.63 (six retries);
    half the lowest, $0.225, stops every run, returning what it finished."""
    from trilemma.plan.simulate import simulate

    wf = load_workflow(EXAMPLES / "ticket.yaml")
    assert planned_ceilings(wf) == [0.225, 0.45, 0.63]
    free = simulate(wf, 20_000, 0).success_rate
    for share, ceiling in ((0.9, 0.45), (0.99, 0.63)):  # each the smallest keeping its share
        assert simulate(wf, 20_000, 0, max_cost_usd=ceiling).success_rate >= share * free
        assert simulate(wf, 20_000, 0, max_cost_usd=ceiling - 1e-6).success_rate < share * free
    r = cli("sweep", EXAMPLES / "ticket.yaml", "--runs", "20", "--journal", tmp_path / "j.db", "--json")
    assert r.code == 0, r.err
    assert "no budget given: sweeping --max-cost 0.225,0.45,0.63, the ceilings under which the " \
           "planner keeps 50%, 90% and 99% of its successes" in r.err
    rows = r.json()["rows"]
    assert [row["max_cost_usd"] for row in rows] == [0.225, 0.45, 0.63]
    assert rows[0]["success_rate"] == 0 and rows[0]["stopped_by_budget"] == 20
    assert rows[2]["success_rate"] >= 0.9
    never = tmp_path / "never.yaml"  # no run succeeds: no share of them to keep
    never.write_text("version: 1\nmodels: {m: {usd_per_call: 0.01, latency_s: 1, p_ok: 0.001}}\n"
                     "steps: [{id: a, model: m}, {id: b, model: m, after: [a]}]\n")
    r = cli("sweep", never, "--journal", tmp_path / "k.db")
    assert r.code == 2 and "the planner has no run of this spec succeeding" in r.err
    assert "give the budgets, --max-cost 0.1,0.2 or --deadline 5,10" in r.err
    assert not (tmp_path / "k.db").exists()


def test_a_deadline_within_the_executors_time_of_the_critical_path_is_named(tmp_path: Path) -> None:
    """ticket.yaml takes exactly 14 s of waits without a retry: the Monte Carlo has those
    runs in time at 14 s, the executor's own time puts every one past it."""
    sw = budget_sweep(load_workflow(EXAMPLES / "ticket.yaml"), [Limits(None, d) for d in (14, 14.1)],
                      10, Journal(tmp_path / "j.db"))  # fmt: skip
    at = sw.rows[0]
    assert at.success_rate == 0 and at.predicted_success is not None and at.predicted_success > 0.9
    assert at.predicted_near == at.predicted_success and sw.rows[1].predicted_near == 0
    assert at.to_json()["predicted_near_deadline"] == at.predicted_near
    out = io.StringIO()
    Console(file=out, width=400).print(sweep_table(sw, "ticket.yaml"))
    said = [line for line in out.getvalue().splitlines() if "the executor's own time" in line]
    assert said == ["14s: 92.79% of runs succeed less than 6 ms before the deadline by the Monte "
                    "Carlo, which counts the spec's time alone: the executor's own time may cut "
                    "them; trilemma simulate ticket.yaml --deadline-for 0.95 advises one with "
                    "room."]  # fmt: skip


def test_a_deadline_is_named_where_runs_end_at_it_and_not_where_few_do(tmp_path: Path) -> None:
    """The runs early-stop.yaml's guess stops end exactly at 0.5 s, far from its 4 s
    critical path: the Monte Carlo has 70% in time under a 0.5 s deadline, the executor none
    (a row it did not name before). The jittery hedged.yaml puts under 1% of its runs within
    the executor's time of 8 s, its critical path: not named (it was)."""
    stop = budget_sweep(load_workflow(EXAMPLES / "early-stop.yaml"), [Limits(None, 0.5)], 10,
                        Journal(tmp_path / "j.db"))  # fmt: skip
    (row,) = stop.rows
    assert row.success_rate == 0 and row.predicted_near == row.predicted_success == pytest.approx(0.7, abs=0.01)
    hedged = budget_sweep(load_workflow(EXAMPLES / "hedged.yaml"), [Limits(None, 8)], 10,
                          Journal(tmp_path / "j.db"))  # fmt: skip
    (row,) = hedged.rows
    assert row.predicted_near is not None and 0 < row.predicted_near < 0.01
    said = []
    for sw, name in ((stop, "early-stop.yaml"), (hedged, "hedged.yaml")):
        out = io.StringIO()
        Console(file=out, width=400).print(sweep_table(sw, name))
        said += [line for line in out.getvalue().splitlines() if "the executor's own time" in line]
    assert [line.split(":")[0] for line in said] == ["0.5s"]


def test_the_room_a_deadline_needs_is_of_the_clock_the_runs_go_on(tmp_path: Path) -> None:
    """On the virtual clock no wait wakes late: early-stop.yaml's runs ending at 0.5 s take
    0.5005-0.5008 s, so 0.5001 s cuts them and 0.52 s does not, and only the first is named
    (1 ms a step on the critical path and one for the start: 3 ms). At --time-scale 0.01
    the loop's real wake-ups and the executor's work are a hundred times as long in the
    spec's time: 0.52 s cuts them (3 s of room), and is named."""
    wf = load_workflow(EXAMPLES / "early-stop.yaml")
    virtual = budget_sweep(wf, [Limits(None, 0.5001), Limits(None, 0.52)], 20, Journal(tmp_path / "j.db"))
    tight, roomy = virtual.rows
    assert tight.success_rate == 0 and tight.predicted_near == pytest.approx(0.7, abs=0.01)
    assert roomy.success_rate > 0.3 and roomy.predicted_near == 0
    scaled = budget_sweep(wf, [Limits(None, 0.52)], 20, Journal(tmp_path / "j.db"), time_scale=0.01)
    (row,) = scaled.rows  # 0.5 ms of the executor's own: 0.05 s of the spec's time
    assert row.success_rate < 0.35 and row.predicted_near == pytest.approx(0.7, abs=0.01)
    said = []
    for sw in (virtual, scaled):
        out = io.StringIO()
        Console(file=out, width=400).print(sweep_table(sw, "early-stop.yaml"))
        said += [line.split(" by the")[0] for line in out.getvalue().splitlines() if "own time" in line]
    assert said == ["0.5001s: 70.07% of runs succeed less than 3 ms before the deadline",
                    "0.52s: 70.07% of runs succeed less than 3 s before the deadline"]  # fmt: skip


def test_the_figures_in_docs_sweep_hold(tmp_path: Path) -> None:
    # docs/sweep.md shows this sweep; its spend and success columns are fixed by the seeds.
    sw = budget_sweep(load_workflow(CASCADE), [Limits(0.006), Limits(0.036), Limits(0.126)], 100,
                      Journal(tmp_path / "j.db"), time_scale=0.001)  # fmt: skip
    got = [(r.ok, r.stopped, round(r.cost_mean, 4), round(r.cost_max, 4), r.steps_returned, r.baseline_over)
           for r in (sw.baseline, *sw.rows)]  # fmt: skip
    assert got == [
        (99, 0, 0.0123, 0.036, 0.99, 0),
        (79, 21, 0.0055, 0.006, 0.84, 21),
        (99, 0, 0.0123, 0.036, 0.99, 0),
        (99, 0, 0.0123, 0.036, 0.99, 0),
    ]


def test_cli_deadline_sweep_plots_latency_against_the_deadline(cli, tmp_path: Path) -> None:
    png = tmp_path / "d.png"
    r = cli("sweep", CASCADE, "--deadline", "0.6,20", "--runs", "4", "--time-scale", "0.05",
            "--journal", tmp_path / "j.db", "--plot", png, "--json")  # fmt: skip
    assert r.code == 0, r.err
    rows = r.json()["rows"]
    assert [row["deadline_s"] for row in rows] == [0.6, 20.0]
    assert rows[0]["stopped_by_budget"] == 4 and rows[1]["stopped_by_budget"] == 0
    assert png.read_bytes()[:4] == b"\x89PNG"


def test_the_specs_own_budget_is_set_aside(tmp_path: Path) -> None:
    # seed-chain.yaml carries a $0.10 ceiling; its 12 premium calls cost $0.36. The baseline
    # must run unbudgeted, and a sweep budget of $0.50 must be the only ceiling obeyed.
    wf = load_workflow(EXAMPLES / "seed-chain.yaml")
    sw = budget_sweep(wf, [Limits(0.5)], 5, Journal(tmp_path / "j.db"), time_scale=0.001)
    assert sw.baseline.stopped == 0 and sw.baseline.cost_max == pytest.approx(0.36)
    assert sw.rows[0].stopped == 0 and sw.rows[0].cost_max == pytest.approx(0.36)


def test_a_ceiling_sweep_predicts_what_it_measures(tmp_path: Path) -> None:
    """examples/ceiling.yaml under three ceilings: one call, six calls (its own), the worst
    case. Measured success lands on the Monte Carlo's."""
    wf = load_workflow(EXAMPLES / "ceiling.yaml")
    sw = budget_sweep(wf, [Limits(0.03), Limits(0.18), Limits(0.45)], 200,
                      Journal(tmp_path / "j.db"), time_scale=0.001)  # fmt: skip
    first, own, worst = sw.rows
    assert first.ok == 0 and first.predicted_success == 0.0 and first.stopped == first.runs
    for r in sw.rows:
        assert r.predicted_success is not None
        sd = math.sqrt(max(r.predicted_success * (1 - r.predicted_success), 0.01) / r.runs)
        assert abs(r.success_rate - r.predicted_success) <= 4 * sd, r
    assert own.stopped > 0 and worst.stopped == 0


def test_a_sweep_passes_its_inputs_and_checks_them_first(cli, tmp_path: Path) -> None:
    journal = tmp_path / "j.db"
    faq = str(EXAMPLES / "faq.yaml")
    missing = cli("sweep", faq, "--max-cost", "0.01", "--runs", "2", "--journal", str(journal))
    assert missing.code == 2 and "uses input 'question'" in missing.err
    unknown = cli("sweep", faq, "--max-cost", "0.01", "--runs", "2", "--journal", str(journal),
                  "-i", "question=q", "-i", "topic=x")  # fmt: skip
    assert unknown.code == 2 and "declares no input 'topic'" in unknown.err
    assert not journal.exists()  # refused before the journal is opened
    r = cli("sweep", faq, "--max-cost", "0.01", "--runs", "2", "--journal", str(journal),
            "--time-scale", "0.001", "-i", "question=Where is my order?", "--json")  # fmt: skip
    assert r.code == 0, r.err
    runs = Journal(journal).runs()
    assert len(runs) == 4  # the baseline and one budget, two runs each
    assert all(json.loads(row["inputs_json"]) == {"question": "Where is my order?"} for row in runs)


def test_runs_at_a_time_keep_their_own_ceilings_and_draws(cli, tmp_path: Path) -> None:
    """--parallel: the same runs as one at a time (each its seed, each its own ceiling, not
    one pooled among those going together), in the same rows."""
    budgets = [Limits(0.006), Limits(0.036)]
    alone = budget_sweep(load_workflow(CASCADE), budgets, 30, Journal(tmp_path / "a.db"), seed=3)
    together = budget_sweep(load_workflow(CASCADE), budgets, 30, Journal(tmp_path / "b.db"),
                            seed=3, parallel=4)  # fmt: skip
    for one, four in zip((alone.baseline, *alone.rows), (together.baseline, *together.rows),
                         strict=True):  # fmt: skip
        assert (four.ok, four.stopped, four.failed, four.overruns) == (one.ok, one.stopped, one.failed, 0)
        assert four.cost_max == one.cost_max and four.cost_mean == pytest.approx(one.cost_mean)
    assert together.rows[0].stopped > 0 and together.rows[0].cost_max <= 0.006 + 1e-12
    d = cli("sweep", CASCADE, "--max-cost", "0.006", "--runs", "8", "--parallel", "4",
            "--journal", tmp_path / "c.db", "--json").json()  # fmt: skip
    assert d["parallel"] == 4 and d["rows"][0]["overruns"] == 0
    t = cli("sweep", CASCADE, "--max-cost", "0.006", "--runs", "8", "--parallel", "4",
            "--journal", tmp_path / "c.db")  # fmt: skip
    assert t.code == 0 and "Runs went 4 at a time, each under its own budget.\n" in t.out


def test_runs_at_a_time_wait_on_the_models_limits_they_share(tmp_path: Path) -> None:
    """Four runs at a time of a model that takes one call at once: each run's deadline
    counts from its own start, so those whose call waited for the others' miss it."""
    wf = parse_workflow("""version: 1
models: {slow: {usd_per_call: 0.01, latency_s: 4.0, p_ok: 1.0, max_concurrency: 1}}
steps: [{id: a, model: slow}]
""")
    sw = budget_sweep(wf, [Limits(deadline_s=10.0)], 4, Journal(tmp_path / "j.db"),
                      time_scale=0.1, parallel=4)  # fmt: skip
    (row,) = sw.rows
    assert sw.baseline.ok == 4 and sorted(round(x) for x in _latencies(tmp_path / "j.db", 4)) == [4, 8, 12, 16]
    assert (row.ok, row.stopped) == (2, 2)  # answered at 4 s and 8 s; 12 s and 16 s too late
    console = Console(width=200, record=True, file=io.StringIO())
    console.print(sweep_table(sw, "slow.yaml"))
    assert ("Runs went 4 at a time, each under its own budget; the models' limits held for "
            "them together, so a run's latency includes its waits on the others' calls."
            ) in console.export_text()  # fmt: skip


def _latencies(db: Path, first: int) -> list[float]:
    """The spec-time latencies of the ``first`` runs a journal holds (the oldest)."""
    runs = sorted(Journal(db).runs(), key=lambda r: r["started_at"])[:first]
    return [r["latency_s"] / r["time_scale"] for r in runs]
