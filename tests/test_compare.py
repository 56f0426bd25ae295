"""trilemma compare: workflows measured alike, beside the planner's prediction."""

from __future__ import annotations

import json
import shlex
from pathlib import Path
from typing import Any

import pytest

from trilemma import load_workflow
from trilemma.errors import NotAJournal, UsageError
from trilemma.experiments.compare import compare
from trilemma.journal import Journal

from .conftest import EXAMPLES


def test_measured_figures_agree_with_the_planner_and_rank_by_quality_per_dollar(
    tmp_path: Path,
) -> None:
    specs = [(n, load_workflow(EXAMPLES / n)) for n in ("single.yaml", "cascade.yaml")]
    single, cascade = compare(specs, 300, Journal(tmp_path / "j.db"), time_scale=0.001)
    assert single.cost_mean == pytest.approx(0.03) and single.calls_mean == 1.0
    for c in (single, cascade):
        lo, hi = c.ci95
        assert lo <= c.predicted.reliability <= hi, (c.name, c.success_rate)
    # 3 small calls, plus a $0.03 premium call for each step the small model gets wrong
    assert cascade.cost_mean == pytest.approx(cascade.predicted.cost_expected, rel=0.15)
    assert 3 < cascade.calls_mean < 3.5
    assert cascade.quality_per_dollar > 2 * single.quality_per_dollar  # type: ignore[operator]
    # Not p95 >= mean: at 1000x scaled time, one run stalled by a busy machine lifts the mean
    # over the p95 (seen under load). Both are at least the premium call's latency.
    assert min(single.latency_p95_s, single.latency_mean_s) >= 2.0


def test_a_specs_own_budget_applies_and_is_counted(tmp_path: Path) -> None:
    wf = load_workflow(EXAMPLES / "seed-chain.yaml")  # budget $0.10, worst case $0.36
    (chain,) = compare([("seed-chain", wf)], 20, Journal(tmp_path / "j.db"), time_scale=0.001)
    assert chain.stopped > 0 and chain.ok + chain.stopped <= 20
    assert chain.cost_mean <= 0.10 + 1e-12


def test_compare_refuses_nothing_to_measure(tmp_path: Path) -> None:
    with pytest.raises(UsageError, match="at least one spec"):
        compare([], 10, Journal(tmp_path / "j.db"))


def test_cli_compare_table_json_and_plot(cli, tmp_path: Path) -> None:
    db, png = tmp_path / "j.db", tmp_path / "c.png"
    args = ["compare", EXAMPLES / "single.yaml", EXAMPLES / "seed-chain.yaml", "--runs", "10",
            "--time-scale", "0.001", "--journal", db]  # fmt: skip
    t = cli(*args, "--plot", png)
    assert t.code == 0, t.err
    assert "Best quality per dollar:" in t.out and "single.yaml" in t.out
    said = " ".join(t.out.split())  # the folder they share said once, each spec by its name
    assert f"specs in {EXAMPLES}" in said and str(EXAMPLES / "single.yaml") not in said
    assert "seed-chain.yaml: " in said and "Best quality per dollar: single.yaml," in said
    assert "stopped by the spec's own budget" in t.out
    assert png.read_bytes()[:4] == b"\x89PNG"
    d = cli(*args, "--json").json()
    assert [r["spec"].rsplit("/", 1)[-1] for r in d] == ["single.yaml", "seed-chain.yaml"]
    for key in (
        "success_rate",
        "success_ci95",
        "stopped_by_budget",
        "cost_usd",
        "latency_s",
        "calls",
        "quality_per_dollar",
    ):
        assert key in d[0]["measured"]  # fmt: skip
    assert d[0]["predicted"]["cost_usd"]["expected"] == pytest.approx(0.03)


def test_cli_compare_bad_input_is_one_line(cli, tmp_path: Path) -> None:
    missing = cli("compare", tmp_path / "nope.yaml", "--journal", tmp_path / "j.db")
    assert missing.code == 2 and "nope.yaml" in missing.err
    assert len(missing.err.strip().splitlines()) == 1
    scale = cli("compare", EXAMPLES / "single.yaml", "--time-scale", "1.5", "--journal",
                tmp_path / "j.db")  # fmt: skip
    assert scale.code == 2
    assert "--time-scale 1.5: give a factor in (0, 1] (or 0, a virtual clock)" in scale.err
    huge = cli("compare", EXAMPLES / "single.yaml", "--runs", "99999999999999999999",
               "--journal", tmp_path / "j.db")  # fmt: skip
    assert huge.code == 2 and "give at most 1,000,000, which puts a success rate" in huge.err
    unread = cli("compare", EXAMPLES / "single.yaml", "-i", "a=1", "-i", "a=2", "--journal",
                 tmp_path / "j.db")  # fmt: skip
    assert unread.code == 2 and "--input a: given twice" in unread.err
    assert not (tmp_path / "j.db").exists()  # each refused before the journal was opened


def test_the_figures_in_docs_compare_hold(tmp_path: Path) -> None:
    # docs/compare.md shows this comparison; its success, cost and calls are fixed by the seeds.
    specs = [
        (n, load_workflow(EXAMPLES / n)) for n in ("single.yaml", "ticket.yaml", "cascade.yaml")
    ]
    rows = compare(specs, 200, Journal(tmp_path / "j.db"), time_scale=0.001)
    got = [(r.ok, round(r.cost_mean, 4), round(r.calls_mean, 2)) for r in rows]
    assert got == [(198, 0.03, 1.0), (200, 0.4562, 15.21), (199, 0.0115, 3.17)]


def test_the_demo_tours_predict_run_and_measure(cli, tmp_path: Path, monkeypatch) -> None:
    # The README's main job: every part prints, nothing needs the network.
    monkeypatch.setenv("COLUMNS", "80")  # a terminal narrower than the seed's lines
    r = cli("demo", "--runs", "20000", "--journal", tmp_path / "j.db")
    assert r.code == 0, r.err
    book = cli("book").out.split("\nNotes")[0].splitlines()  # the demo leaves the notes out
    assert max(map(len, book)) > 80  # printed unbroken, as `trilemma book` prints them
    assert all(line in r.out.splitlines() for line in book if line.strip())
    for part in (
        "1. The seed's Output 32.10.1",
        "2. Exercise 32.10.1",
        "3. Monte Carlo",
        "4. The cheapest levers",
        "5. The chosen configuration",
        "6. A single call",
        "7. As the budget tightens",
    ):
        assert part in r.out  # fmt: skip
    assert "Best quality per dollar: cascade.yaml" in r.out
    assert "routed.yaml" in r.out  # the seed's case study, measured beside the others
    # each part names the command that does it alone, and that command prints the same
    commands = [line[2:] for line in r.out.splitlines() if line.startswith("$ trilemma ")]
    assert [c.split()[1] for c in commands] == ["book", "estimate", "simulate", "optimize",
                                                "optimize", "compare", "sweep"]  # fmt: skip
    simulate = shlex.split(commands[2])[1:]
    assert "--runs" in simulate and "20000" in simulate and f"--journal {tmp_path}" in commands[5]
    alone = cli(*simulate)
    assert alone.code == 0, alone.err
    figures = [line for line in alone.out.splitlines() if line.startswith("│")]
    assert figures and all(line in r.out for line in figures), alone.out
    # the sweep alone, given no budget, sweeps the ceilings the demo's did, with the same
    # success, stops, spend and outputs (the latency column holds the executor's own time)
    sweep = cli(*shlex.split(commands[6])[1:])
    assert sweep.code == 0, sweep.err
    assert "no budget given: sweeping --max-cost 0.225,0.45,0.63" in sweep.err

    def budget_rows(out: str) -> list[list[str]]:  # 80 columns: a record per row, field per line
        lines = out.split("Budget sweep of ")[1].splitlines()
        return [[label, *lines[i + 1:i + 8]] for i, label in enumerate(lines) if label.startswith("$")]

    assert len(budget_rows(sweep.out)) == 3 and budget_rows(sweep.out) == budget_rows(r.out)


def test_compare_runs_a_real_endpoint_in_real_time_and_bills_its_usage(tmp_path: Path) -> None:
    from trilemma import parse_workflow
    from trilemma.testing import Reply, ScriptedServer

    with ScriptedServer([Reply("42", prompt_tokens=100, completion_tokens=10)] * 3) as srv:
        wf = parse_workflow(f"""version: 1
models:
  r: {{provider: openai, base_url: "{srv.url}", model: m1, usd_per_1m_input: 1.0,
      usd_per_1m_output: 10.0, latency_s: 0.05, p_ok: 0.9}}
steps:
  - {{id: a, model: r, gate: {{regex: '^[0-9]+$'}}}}
""")
        with pytest.raises(UsageError, match="--time-scale 1"):
            compare([("real", wf)], 3, Journal(tmp_path / "j.db"))
        (row,) = compare([("real", wf)], 3, Journal(tmp_path / "j.db"), time_scale=1.0)
        assert len(srv.requests) == 3
    assert row.ok == 3 and row.calls_mean == 1.0
    assert row.cost_mean == pytest.approx((100 * 1.0 + 10 * 10.0) / 1e6)


def test_a_specs_own_deadline_runs_on_the_scaled_clock(tmp_path: Path) -> None:
    from trilemma import parse_workflow

    text = (EXAMPLES / "cascade.yaml").read_text() + "budget: {deadline_s: 0.6}\n"  # path 1.2 s
    (row,) = compare([("tight", parse_workflow(text))], 5, Journal(tmp_path / "j.db"))
    assert row.stopped == 5 and row.ok == 0
    assert row.latency_mean_s < 0.6 * 1.5


def test_with_a_deadline_the_prediction_is_the_monte_carlo_s(tmp_path: Path) -> None:
    """The jittery chain under a 12 s deadline: about one run in eight is cut, which the
    analytic reliability (99.9%) cannot know and the Monte Carlo does."""
    wf = load_workflow(EXAMPLES / "jittery.yaml").with_budget(deadline_s=12)
    (c,) = compare([("jittery", wf)], 150, Journal(tmp_path / "j.db"), time_scale=0.02)
    assert c.simulated is not None and c.predicted.reliability > 0.99
    assert 0.82 < c.simulated.success_rate < 0.92
    # measured within sampling (+-5.5% at 150 runs) and the timer slack of 50x scaled time
    assert abs(c.success_rate - c.simulated.success_rate) < 0.1
    assert c.stopped == c.runs - c.ok  # every failure here is the deadline's (seeds 0-149)
    row = c.to_json()["predicted"]["with_deadline"]
    assert row["deadline_s"] == 12 and row["success_rate"] == c.simulated.success_rate
    plain = load_workflow(EXAMPLES / "single.yaml")
    (p,) = compare([("single", plain)], 5, Journal(tmp_path / "j.db"), time_scale=0.001)
    assert not p.budgeted and p.to_json()["predicted"]["with_deadline"] is None
    assert p.to_json()["predicted"]["under_budget"] is None
    assert p.to_json()["predicted"]["monte_carlo"]["deadline_s"] is None
    assert p.to_json()["predicted"]["monte_carlo"]["near_deadline_rate"] is None  # no deadline


def test_a_deadline_at_the_critical_path_is_named(cli, tmp_path: Path) -> None:
    """ticket.yaml's runs without a retry take exactly its 14 s critical path: the Monte
    Carlo has them in time under a 14 s deadline, the executor's own time cuts them."""
    got = cli("compare", EXAMPLES / "ticket.yaml", EXAMPLES / "single.yaml", "--set",
              "budget.deadline_s=14", "--runs", "5", "--journal", tmp_path / "j.db")  # fmt: skip
    assert got.code == 0, got.err
    said = " ".join(got.out.split())
    assert ("ticket.yaml: under its 14s deadline, 92.79% of runs succeed less than 6 ms before "
            "the deadline by the Monte Carlo, which counts the spec's time alone: the executor's "
            "own time may cut them") in said  # fmt: skip
    assert "single.yaml: under its" not in said  # 2 s of a 14 s deadline: room enough
    # the command it advises is the spec as compared: with the --set
    assert "ticket.yaml --set budget.deadline_s=14 --deadline-for 0.95 advises one with room" in said
    doc = cli("compare", EXAMPLES / "ticket.yaml", EXAMPLES / "single.yaml", "--set",
              "budget.deadline_s=14", "--runs", "2", "--journal", tmp_path / "j.db", "--json").json()  # fmt: skip
    near = [r["predicted"]["with_deadline"]["near_deadline_rate"] for r in doc]
    assert near[0] == pytest.approx(0.9279, abs=0.001) and near[1] == 0.0, near  # in --json too


def test_the_prediction_halts_failed_runs_as_the_executor_does(cli, tmp_path: Path) -> None:
    """The seed's twelve-step premium chain fails one run in six; the executor sends no
    step after a failure, so a run costs less than the analytic expected cost ($0.36, every
    step billed). The Monte Carlo beside the runs halts them too ($0.332; 300 runs: $0.335)."""
    from trilemma import Budget

    wf = load_workflow(EXAMPLES / "seed-chain.yaml")
    wf = wf.model_copy(update={"budget": Budget()})  # its $0.10 target would stop every run
    (c,) = compare([("chain", wf)], 300, Journal(tmp_path / "j.db"), time_scale=0.001)
    assert c.predicted.cost_expected == pytest.approx(0.36)
    assert c.simulated.cost_usd.mean == pytest.approx(0.332, abs=0.003)
    # 300 runs: the mean's standard error is about $0.005
    assert abs(c.cost_mean - c.simulated.cost_usd.mean) < 0.02 < 0.36 - c.cost_mean
    assert c.simulated.latency_s.mean < c.predicted.latency_expected_s
    spec = tmp_path / "chain.yaml"
    spec.write_text((EXAMPLES / "seed-chain.yaml").read_text().split("budget:")[0])
    r = cli("compare", spec, "--runs", "5", "--time-scale", "0.001", "--journal",
            tmp_path / "j.db")  # fmt: skip
    assert r.code == 0, r.err
    assert "$0.3319" in r.out and "predicted: Monte Carlo of 100,000 runs" in r.out
    assert "*" not in r.out  # no budget, no mark


def test_each_spec_gets_the_inputs_it_declares(cli, tmp_path: Path) -> None:
    """faq.yaml reads a question; single.yaml declares no input: it runs without one."""
    journal = tmp_path / "j.db"
    faq, single = str(EXAMPLES / "faq.yaml"), str(EXAMPLES / "single.yaml")
    r = cli("compare", faq, single, "--runs", "3", "--journal", str(journal), "--time-scale",
            "0.001", "-i", "question=How long is the refund window?", "--json")  # fmt: skip
    assert r.code == 0, r.err
    runs = Journal(journal).runs()
    given = {row["spec_source"]: json.loads(row["inputs_json"]) for row in runs}
    assert given[faq] == {"question": "How long is the refund window?"} and given[single] == {}
    assert len(runs) == 6


@pytest.mark.parametrize(
    ("args", "says"),
    [
        ([], "steps[0].prompt uses input 'question', which was not given"),
        (["-i", "topic=x"], "--input topic: no spec declares an input 'topic'"),
        (["-i", "question"], "--input 'question': write it as name=value"),
    ],
)
def test_a_missing_or_unknown_input_stops_compare_before_any_run(cli, tmp_path: Path, args, says) -> None:
    journal = tmp_path / "j.db"
    # single.yaml first: it would have run (and been billed) before faq.yaml failed
    r = cli("compare", str(EXAMPLES / "single.yaml"), str(EXAMPLES / "faq.yaml"), "--runs", "3",
            "--journal", str(journal), *args)  # fmt: skip
    assert r.code == 2 and says in r.err and "Traceback" not in r.err
    assert not journal.exists()  # refused before the journal is opened


def test_most_reliable_says_when_its_runs_cannot_tell_the_two_apart(write, tmp_path: Path) -> None:
    from rich.console import Console

    from trilemma.report.tables import compare_table

    model = "models: {m: {usd_per_call: %s, latency_s: 0.1, p_ok: %s}}\n"
    cheap = write("version: 1\n" + model % (0.001, 0.5) + "steps: [{id: a, model: m}]\n", "a.yaml")
    sure = write("version: 1\n" + model % (0.03, 1.0) + "steps: [{id: a, model: m}]\n", "b.yaml")
    specs = [(p.name, load_workflow(p)) for p in (cheap, sure)]

    def verdict(runs: int) -> str:
        rows = compare(specs, runs, Journal(tmp_path / f"{runs}.db"), time_scale=0.001)
        console = Console(width=400, record=True)
        console.print(compare_table(rows, 0.001))
        return next(x for x in console.export_text().splitlines() if x.startswith("Most reliable"))

    assert verdict(10).endswith("but 10 runs each do not tell the two apart (their 95% "
                                "intervals overlap). The planner's 100.00% and 49.90% take "
                                "about 11 runs each to tell apart (--runs; 95% confidence, "
                                "80% power).")  # fmt: skip
    separate = verdict(200)  # about half against all: the intervals part
    assert separate.startswith("Most reliable: b.yaml (100.00% against ") and "apart" not in separate


def test_most_reliable_names_the_cheapest_of_a_tie_and_none_where_the_best_ties(
    write, tmp_path: Path
) -> None:
    """Several specs measuring the top success: the line names the cheapest of them (it
    named the first in the table, a dearer one); where the best quality per dollar measured
    as much as any, there is no other to name."""
    from rich.console import Console

    from trilemma.report.tables import compare_table

    model = "models: {m: {usd_per_call: %s, latency_s: 0.1, p_ok: %s}}\n"

    def lines(*specs: tuple[str, float, float]) -> list[str]:
        paths = [write("version: 1\n" + model % (usd, p) + "steps: [{id: a, model: m}]\n", name)
                 for name, usd, p in specs]  # fmt: skip
        rows = compare([(p.name, load_workflow(p)) for p in paths], 40,
                       Journal(tmp_path / f"{len(specs)}{specs[0][2]}.db"), time_scale=0)  # fmt: skip
        console = Console(width=400, record=True)
        console.print(compare_table(rows, 0))
        return console.export_text().splitlines()

    got = lines(("cheap.yaml", 0.001, 0.5), ("dear.yaml", 0.03, 1.0), ("sure.yaml", 0.02, 1.0))
    (line,) = [x for x in got if x.startswith("Most reliable")]
    assert line.startswith("Most reliable: sure.yaml (100.00% against ")
    assert ", at $0.0200 a run, the cheapest of the 2 that measured 100.00%" in line
    got = lines(("cheap.yaml", 0.001, 1.0), ("dear.yaml", 0.03, 1.0))
    assert any(x.startswith("Best quality per dollar: cheap.yaml") for x in got)
    assert not any(x.startswith("Most reliable") for x in got)  # cheap.yaml is as reliable


def test_best_quality_per_dollar_says_when_its_runs_cannot_rank_the_two(
    write, tmp_path: Path
) -> None:
    """Two specs at one price, p 0.9 and 0.8: ten runs each leave their q/$ intervals
    overlapping, 400 part them; the JSON carries each interval."""
    from rich.console import Console

    from trilemma.report.tables import compare_table

    model = "models: {m: {usd_per_call: 0.01, latency_s: 0.1, p_ok: %s}}\n"
    better = write("version: 1\n" + model % 0.9 + "steps: [{id: a, model: m}]\n", "a.yaml")
    worse = write("version: 1\n" + model % 0.8 + "steps: [{id: b, model: m}]\n", "b.yaml")
    specs = [(p.name, load_workflow(p)) for p in (better, worse)]

    def verdict(runs: int) -> tuple[str, list[dict[str, Any]]]:
        rows = compare(specs, runs, Journal(tmp_path / f"{runs}.db"), time_scale=0.001)
        console = Console(width=400, record=True)
        console.print(compare_table(rows, 0.001))
        line = next(x for x in console.export_text().splitlines() if x.startswith("Best"))
        return line, [r.to_json()["measured"] for r in rows]

    line, measured = verdict(10)
    lo, hi = measured[0]["quality_per_dollar_ci95"]
    assert lo < measured[0]["quality_per_dollar"] < hi <= 1.0 / 0.01  # at most 100% over $0.01
    assert "but 10 runs each do not rank the two: their q/$ 95% intervals overlap (" in line
    line, measured = verdict(400)
    assert line.startswith("Best quality per dollar: a.yaml, 1.") and "rank" not in line
    assert measured[0]["quality_per_dollar_ci95"][0] > measured[1]["quality_per_dollar_ci95"][1]


def test_runs_to_tell_two_success_rates_apart() -> None:
    from trilemma.experiments.compare import runs_to_tell_apart

    # one premium call (98.55%) against a three-agent debate (99.52%): a textbook
    # two-proportion sample size, (1.96 sqrt(2 pq) + 0.84 sqrt(p1q1 + p2q2))^2 / d^2
    assert runs_to_tell_apart(0.9855, 0.9952) == runs_to_tell_apart(0.9952, 0.9855) == 1594
    assert runs_to_tell_apart(0.9855, 0.9952, power=0.9) > 1594  # surer, dearer
    assert runs_to_tell_apart(0.9, 0.95) < runs_to_tell_apart(0.9, 0.92)  # closer, dearer
    assert runs_to_tell_apart(0.9, 0.9) is None and runs_to_tell_apart(0.9, 0.90005) is None


def test_a_real_endpoint_measured_off_its_prediction_names_the_command_that_checks_it(
    cli, tmp_path: Path
) -> None:
    from trilemma import parse_workflow
    from trilemma.testing import Reply, ScriptedServer

    db = tmp_path / "j.db"
    with ScriptedServer([Reply("forty-two", prompt_tokens=10, completion_tokens=2)] * 5) as srv:
        spec = tmp_path / "real.yaml"
        spec.write_text(f"""version: 1
models:
  r: {{provider: openai, base_url: "{srv.url}", model: m1, usd_per_call: 0.01,
      latency_s: 0.05, p_ok: 1.0}}
  s: {{usd_per_call: 0.01, latency_s: 0.05, p_ok: 0.9}}
steps:
  - {{id: a, model: r, gate: {{regex: '^[0-9]+$'}}}}
""")
        r = cli("compare", spec, "--runs", "5", "--time-scale", "1", "--journal", db, "--json")
        assert r.code == 0, r.err
        (row,) = r.json()
        assert row["measured"]["success_rate"] == 0.0  # every answer fails its gate
        assert row["measured"]["success_vs_predicted"] == "below"  # [0%, 43%] against 100%
        (real,) = compare([("real.yaml", parse_workflow(spec.read_text()))], 5, Journal(db),
                          time_scale=1.0)  # fmt: skip
    assert real.endpoints == ("r",) and real.off_prediction == "below"
    from rich.console import Console

    from trilemma.report.tables import compare_table

    console = Console(width=400, record=True)
    console.print(compare_table([real], 1.0, db))
    line = next(x for x in console.export_text().splitlines() if x.startswith("real.yaml:"))
    assert line == (f"real.yaml: measured success 0.00% [0.00%, 43.45%] is below the planner's "
                    f"100.00%, more than chance explains: the spec's figures for r are "
                    f"off; `trilemma calibrate --from-journal {db} --spec real.yaml "
                    "--check` names those the ledger contradicts.")  # fmt: skip


def test_a_simulated_spec_off_its_prediction_is_chance_and_gets_no_advice(tmp_path: Path) -> None:
    from rich.console import Console

    from trilemma.report.tables import compare_table

    # seeds 18, 19 and 27 draw the debate's answer wrong (0.5% a run): 3 of the first 40
    (debate,) = compare([("debate.yaml", load_workflow(EXAMPLES / "debate.yaml"))], 40,
                        Journal(tmp_path / "j.db"), time_scale=0.001)  # fmt: skip
    assert debate.ok == 37 and debate.off_prediction == "below" and debate.endpoints == ()
    measured = debate.to_json()["measured"]
    assert measured["success_vs_predicted"] == "below" and 0.0005 < measured["success_p_value"] < 0.0015
    console = Console(width=400, record=True)
    console.print(compare_table([debate], 0.001))
    assert "measured success" not in console.export_text()


@pytest.mark.parametrize("parallel", [1, 4])
def test_ctrl_c_in_a_compare_says_where_the_runs_that_ended_are(
    cli, tmp_path: Path, parallel: int
) -> None:
    import signal
    import subprocess
    import sys
    import time

    from trilemma.testing import interruptible

    db = tmp_path / "c.db"
    proc = subprocess.Popen(
        [sys.executable, "-m", "trilemma", "compare", str(EXAMPLES / "single.yaml"),
         str(EXAMPLES / "ticket.yaml"), "--runs", "100000", "--journal", str(db),
         "--time-scale", "0.05", "--parallel", str(parallel)],  # runs of 0.1 s: Ctrl-C seldom lands between two
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, preexec_fn=interruptible,
    )  # fmt: skip
    try:
        deadline, ended = time.monotonic() + 60, 0
        while ended < 5 and time.monotonic() < deadline:  # until some runs have ended
            time.sleep(0.1)
            try:
                seen = Journal(db, create=False)
            except NotAJournal:  # not made yet
                continue
            ended = seen.count_runs(status="ok")
            seen.close()
        assert ended >= 5, "no run ended"
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=30)
    finally:
        proc.kill()
        proc.wait()
    assert proc.returncode == 130 and out == "", err
    assert err == (f"trilemma: interrupted; the runs that ended are kept in {db}: "
                   f"`trilemma runs --journal {db}` lists them\n")  # fmt: skip
    journal = Journal(db)
    assert journal.count_runs(status="ok") >= ended  # what ended is kept
    # the trial it cut short is closed, not left for a resume that would refuse it
    assert journal.runs(status="running") == []
    cut = [r for r in journal.runs(status="failed") if "interrupted (Ctrl-C)" in (r["error"] or "")]
    # a trial cut short for each going at once, or none where Ctrl-C came between two
    # trials (seen once on a busy machine: the run before had ended ok and the next had
    # not started)
    assert len(cut) <= parallel and all(r["pid"] is None for r in cut)
    assert cli("doctor", "--journal", db).out.endswith("all good\n")


@pytest.mark.parametrize(("scale", "clock"), [("0", "on a virtual clock"), ("0.01", "100x faster")])
def test_a_trial_a_crash_left_running_is_explained_and_pruned(
    cli, tmp_path: Path, scale: str, clock: str
) -> None:
    """A compare killed outright leaves its trial `running`; resume refuses trials, and prune
    never took a running run: doctor listed it forever as a run to resume. A trial on a
    virtual clock is journaled at time scale 0, and known for one as a scaled trial is."""
    db = tmp_path / "c.db"
    assert cli("compare", EXAMPLES / "single.yaml", "--runs", "3", "--journal", db,
               "--time-scale", scale).code == 0  # fmt: skip
    journal = Journal(db)
    killed, ended = (r["run_id"] for r in journal.runs()[:2])
    assert journal.run(killed)["time_scale"] == float(scale)
    ledger = cli("ledger", ended, "--journal", db).out.replace("\n", " ")
    assert f"simulated time ran {clock} (compare, sweep or run --time-scale)" in ledger
    journal.update_run(killed, status="running", pid=2**22 + 7, finished_at=None)  # no such pid
    said = cli("doctor", "--journal", db).out.replace("\n", " ")
    assert f"interrupted run {killed} in simulated time (a trial of compare or sweep, or run --time-scale)" in said
    assert f"`trilemma prune --older-than 0 --journal {db}` forgets it" in said
    assert cli("doctor", "--journal", db, "--json").json()["interrupted_trials"] == [killed]
    refused = cli("resume", killed, "--journal", db)
    assert refused.code == 2 and f"ran in simulated time {clock} (a trial of" in refused.err
    gone = cli("prune", "--older-than", "0", "--journal", db, "--json").json()
    assert killed in gone["run_ids"] and gone["kept_running"] == 0
    assert cli("doctor", "--journal", db).out.endswith("all good\n")


def _dear_spec(folder: Path, url: str) -> Path:
    """dear.yaml: one call to the endpoint at ``url``, priced by the token, guessing 100
    prompt and 100 completion tokens."""
    spec = folder / "dear.yaml"
    spec.write_text(f"""version: 1
models:
  r: {{provider: openai, base_url: "{url}", model: m1, usd_per_1m_input: 1.0,
      usd_per_1m_output: 1.0, prompt_tokens: 100, completion_tokens: 100, latency_s: 0.05, p_ok: 1.0}}
steps:
  - {{id: a, model: r}}
""")
    return spec


def test_a_real_endpoint_costing_other_than_planned_says_so(cli, tmp_path: Path) -> None:
    """A profile guessing 100 prompt tokens where the endpoint reports 1,000: 20 runs cost
    about 5.5x the plan, and the line under the table says it with the command to run."""
    from trilemma.testing import Reply, ScriptedServer

    db = tmp_path / "j.db"
    with ScriptedServer(lambda payload: Reply("ok", prompt_tokens=1000, completion_tokens=10)) as srv:
        spec = _dear_spec(tmp_path, srv.url)
        r = cli("compare", spec, "--runs", "20", "--time-scale", "1", "--journal", db, "--json")
        assert r.code == 0, r.err
        (row,) = r.json()
        assert row["measured"]["cost_vs_predicted"] == "above"
        assert row["measured"]["success_vs_predicted"] == "within"
        text = cli("compare", spec, "--runs", "20", "--time-scale", "1", "--journal", db)
    line = " ".join(text.out.split())
    assert ("dear.yaml: the runs cost $0.0010 each against $0.0002 planned (5.05x), more than "
            "chance explains: the spec's figures for r are off; `trilemma calibrate "
            f"--from-journal {db} --spec {spec} --check`") in line  # fmt: skip
    check = cli("calibrate", "--from-journal", db, "--spec", spec, "--check", "--json")
    assert check.code == 1 and "prompt_tokens" in {d["field"] for d in check.json()["drift"]}


def test_one_compare_weighs_every_spec_s_figures_together(tmp_path: Path) -> None:
    """38 of 40 debates at 99.52% (p = 0.016) is off alone (beside its cost, two figures: the
    smaller p must pass 2.5%), but not among two such specs (four: 1.25%): a compare of many
    specs the planner has right calls none off 95% of the time."""
    from dataclasses import replace

    from trilemma.experiments.compare import judge_contenders

    (debate,) = compare([("debate.yaml", load_workflow(EXAMPLES / "debate.yaml"))], 40,
                        Journal(tmp_path / "j.db"), time_scale=0.001)  # fmt: skip
    marginal = replace(debate, ok=38, off=None)  # judged alone
    assert marginal.off_prediction == "below"
    assert 0.0125 < marginal.to_json()["measured"]["success_p_value"] < 0.025
    pair = judge_contenders([marginal, replace(marginal, name="again.yaml")])
    assert [c.off_prediction for c in pair] == [None, None]
    assert pair[0].to_json()["measured"]["success_vs_predicted"] == "within"
    # 37 of 40 (p = 0.00096) is off among two as well
    assert judge_contenders([debate, replace(debate, name="again.yaml")])[1].off_prediction == "below"


def test_compare_sets_every_spec_alike_and_journals_the_set(cli, tmp_path: Path) -> None:
    db = tmp_path / "j.db"
    args = ["compare", EXAMPLES / "single.yaml", EXAMPLES / "cascade.yaml", "--runs", "10",
            "--time-scale", "0.001", "--journal", db, "--set", "models.premium.p_ok=0.5"]  # fmt: skip
    rows = cli(*args, "--json").json()
    plain = cli(*args[:-2], "--json").json()
    # one premium call at 0.5 is predicted at 0.5; the cascade's premium rung gives less
    assert rows[0]["predicted"]["reliability"] == pytest.approx(0.5)
    assert rows[1]["predicted"]["reliability"] < plain[1]["predicted"]["reliability"]
    runs = cli("runs", "--journal", db, "--limit", "40", "--json").json()
    assert sorted(len(r["overrides"]) for r in runs) == [0] * 20 + [1] * 20
    assert {tuple(r["overrides"]) for r in runs} == {(), ("models.premium.p_ok=0.5",)}
    said = cli(*args)
    assert said.code == 0 and said.out.startswith(
        "with models.premium.p_ok=0.5 (--set; the file is unchanged)")


def test_a_set_that_does_not_fit_one_of_the_specs_names_it(cli, tmp_path: Path) -> None:
    db = tmp_path / "j.db"
    bad = cli("compare", EXAMPLES / "single.yaml", EXAMPLES / "faq.yaml", "--journal", db,
              "--set", "models.premium.p_ok=0.5")  # fmt: skip
    assert bad.code == 2 and len(bad.err.strip().splitlines()) == 1
    assert (f"{EXAMPLES / 'faq.yaml'}: --set 'models.premium.p_ok=0.5': no model 'premium'; "
            "known: small; every --set applies to every spec") in bad.err  # fmt: skip
    wrong = cli("compare", EXAMPLES / "single.yaml", "--journal", db, "--set", "models.premium.p_ok=2")
    assert wrong.code == 2 and "--set models.premium.p_ok=2: models.premium.p_ok:" in wrong.err
    assert not db.exists()  # refused before the journal was opened


def test_the_advice_of_a_compare_with_a_set_carries_it_to_the_check(cli, tmp_path: Path) -> None:
    """A guess of 500 prompt tokens given by --set where the endpoint reports 1,000: the
    line under the table names the check with that --set, and the check, run as named,
    finds the prompt tokens off; --set 1000 makes the plan right, and the line goes."""
    from trilemma.testing import Reply, ScriptedServer

    db = tmp_path / "j.db"
    with ScriptedServer(lambda payload: Reply("ok", prompt_tokens=1000, completion_tokens=10)) as srv:
        spec = _dear_spec(tmp_path, srv.url)
        run = ["compare", spec, "--runs", "20", "--time-scale", "1", "--journal", db]
        guessed = cli(*run, "--set", "models.r.prompt_tokens=500", "--set", "models.r.completion_tokens=10")
        right = cli(*run, "--set", "models.r.prompt_tokens=1000", "--set", "models.r.completion_tokens=10")
    assert guessed.code == 0, guessed.err
    line = " ".join(guessed.out.split())
    command = (f"trilemma calibrate --from-journal {db} --spec {spec} --set "
               "models.r.prompt_tokens=500 --set models.r.completion_tokens=10 --check")  # fmt: skip
    assert "the runs cost $0.0010 each against $0.0005 planned (1.98x)" in line
    assert f"`{command}` names those the ledger contradicts" in line
    check = cli(*shlex.split(command)[1:], "--json")
    assert check.code == 1 and "prompt_tokens" in {d["field"] for d in check.json()["drift"]}
    assert right.code == 0 and "calibrate" not in right.out


def test_a_compare_weighs_its_runs_bills_against_the_monte_carlo_s(tmp_path: Path) -> None:
    """Forty routed runs from seed 37000, two of which the classifier sent to the dear
    branch (14% planned): 27% under the predicted cost, which two dear runs in forty are 6.8%
    of the time. Weighed against means of the Monte Carlo's runs it is chance; Student's t,
    taking the spread from the forty, called it below."""
    from dataclasses import replace

    (routed,) = compare([("routed.yaml", load_workflow(EXAMPLES / "routed.yaml"))], 40,
                        Journal(tmp_path / "j.db"), seed=37000, time_scale=0.001)  # fmt: skip
    assert sum(c > 0.1 for c in routed.costs) == 2 and routed.cost_drawn is not None
    assert routed.cost_off_prediction is None
    assert routed.to_json()["measured"]["cost_p_value"] > 0.1
    assert replace(routed, cost_drawn=None, off=None).cost_off_prediction == "below"


def _most_at_once(spans: list[tuple[float, float]]) -> int:
    """The most of ``spans`` (start, end) open at one moment."""
    edges = sorted([(a, 1) for a, _ in spans] + [(b, -1) for _, b in spans])
    now = most = 0
    for _, step in edges:
        now += step
        most = max(most, now)
    return most


def test_parallel_runs_draw_as_runs_one_at_a_time_do(tmp_path: Path) -> None:
    """--parallel changes how long a compare takes, not what its runs draw: each run keeps
    its seed and its own budget, so on the simulator the same runs come out either way."""
    wf = load_workflow(EXAMPLES / "seed-chain.yaml")  # budget $0.10 a run, worst case $0.36
    alone, together = Journal(tmp_path / "a.db"), Journal(tmp_path / "b.db")
    (one,) = compare([("chain", wf)], 24, alone, seed=5, time_scale=0.01)
    (four,) = compare([("chain", wf)], 24, together, seed=5, time_scale=0.01, parallel=4)
    assert four.costs == one.costs and (four.ok, four.stopped) == (one.ok, one.stopped)
    assert one.stopped > 0 and max(four.costs) <= 0.10 + 1e-12  # each run its own ceiling
    assert four.calls_mean == one.calls_mean and (one.parallel, four.parallel) == (1, 4)
    runs = together.runs()
    assert sorted(r["seed"] for r in runs) == list(range(5, 29))
    spans = [(r["started_at"], r["finished_at"]) for r in runs]
    assert 1 < _most_at_once(spans) <= 4
    assert _most_at_once([(r["started_at"], r["finished_at"]) for r in alone.runs()]) == 1


def test_parallel_runs_share_an_endpoints_limits(cli, tmp_path: Path) -> None:
    """Runs going at a time on one endpoint hold its limits together: a model of
    max_concurrency 2 never has three calls out at once from four runs; one without limits
    has four (the ledger's spans, from a call's slot taken to its answer)."""
    from trilemma.testing import Reply, ScriptedServer

    with ScriptedServer([Reply("42", delay_s=0.15, prompt_tokens=100, completion_tokens=10)] * 18) as srv:
        specs = []
        for name, limit in (("limited", ", max_concurrency: 2"), ("free", "")):
            path = tmp_path / f"{name}.yaml"
            path.write_text(f"""version: 1
models:
  r: {{provider: openai, base_url: "{srv.url}", model: m1, usd_per_1m_input: 1.0,
      usd_per_1m_output: 10.0, latency_s: 0.15, p_ok: 0.9{limit}}}
steps:
  - {{id: a, model: r, gate: {{regex: '^[0-9]+$'}}}}
""")
            specs.append(path)
        t = cli("compare", *specs, "--runs", "8", "--parallel", "4", "--time-scale", "1",
                "--journal", tmp_path / "j.db")  # fmt: skip
        assert t.code == 0, t.err
        assert len(srv.requests) == 16
        journal = Journal(tmp_path / "j.db")
        most = {}
        for path in specs:
            calls = [c for r in journal.runs() if r["spec_source"] == str(path)
                     for c in journal.calls(r["run_id"])]  # fmt: skip
            assert len(calls) == 8 and all(c["cost_usd"] == pytest.approx(2e-4) for c in calls)
            most[path.stem] = _most_at_once([(c["started_at"], c["finished_at"]) for c in calls])
        assert most == {"limited": 2, "free": 4}
        said = " ".join(t.out.split())
        assert ("Runs went 4 at a time, each under its own budget; the models' limits held "
                "for them together (limited.yaml), so a run's latency includes its waits on "
                "the others' calls.") in said  # fmt: skip
        d = cli("compare", specs[1], "--runs", "2", "--parallel", "2", "--time-scale", "1",
                "--journal", tmp_path / "j.db", "--json").json()  # fmt: skip
    assert d[0]["parallel"] == 2 and d[0]["measured"]["cost_usd"] == pytest.approx(2e-4)


def test_parallel_below_one_is_refused_before_any_run(cli, tmp_path: Path) -> None:
    t = cli("compare", EXAMPLES / "single.yaml", "--parallel", "0", "--journal", tmp_path / "j.db")
    assert t.code == 2 and t.err == "trilemma: error: --parallel: 0 is not a positive integer; give 1 or more\n"
    assert not (tmp_path / "j.db").exists()
    with pytest.raises(UsageError, match="--parallel -1: give 1 or more runs at a time"):
        compare([("single", load_workflow(EXAMPLES / "single.yaml"))], 3, tmp_path / "k.db",
                parallel=-1)  # fmt: skip
    assert not (tmp_path / "k.db").exists()


def test_runs_at_a_time_pay_for_a_cached_call_once_as_one_at_a_time_do(tmp_path: Path) -> None:
    """With a cached step the first run goes alone: eight runs starting together would each
    pay for the same call (and their bill look dearer than planned, which plans a warm
    cache)."""
    from trilemma import parse_workflow
    from trilemma.testing import Reply, ScriptedServer

    with ScriptedServer([Reply("42", prompt_tokens=100, completion_tokens=10)] * 30) as srv:
        wf = parse_workflow(f"""version: 1
models:
  r: {{provider: openai, base_url: "{srv.url}", model: m1, usd_per_1m_input: 1.0,
      usd_per_1m_output: 10.0, latency_s: 0.05, p_ok: 0.99, prompt_tokens: 100,
      completion_tokens: 10}}
steps:
  - {{id: a, model: r, cached: true, gate: {{regex: '^[0-9]+$'}}}}
  - {{id: b, model: r, after: [a], gate: {{regex: '^[0-9]+$'}}}}
""")
        (row,) = compare([("real", wf)], 20, Journal(tmp_path / "j.db"), time_scale=1.0,
                         parallel=8)  # fmt: skip
        assert len(srv.requests) == 21  # step a once, step b in every run
    assert row.ok == 20 and row.cost_mean == pytest.approx(21 * 2e-4 / 20)
    assert row.cost_off_prediction is None


def test_runs_on_real_endpoints_say_what_they_will_bill_before_they_start(cli, tmp_path: Path) -> None:
    """Before a spec's runs on a real endpoint start, stderr says what the planner expects
    them to bill; under a ceiling no call's reservation fits, the Monte Carlo says $0 as the
    runs then bill. A simulated spec bills nobody and says nothing of it."""
    from trilemma.testing import Reply, ScriptedServer

    db = tmp_path / "j.db"
    with ScriptedServer(lambda payload: Reply("ok", prompt_tokens=100, completion_tokens=100)) as srv:
        spec = _dear_spec(tmp_path, srv.url)  # $0.0002 a call
        r = cli("compare", spec, EXAMPLES / "single.yaml", "--runs", "3", "--time-scale", "1",
                "--journal", db, "--json")  # fmt: skip
        assert r.code == 0, r.err
        assert r.err == (f"trilemma: {spec}: 3 runs on real endpoints (r) bill about $0.0006 by "
                         "the planner, $0.0006 in its worst case; Ctrl-C stops them, keeping "
                         "the runs that ended\n")  # fmt: skip
        assert r.json()[0]["measured"]["cost_usd"] == pytest.approx(0.0002)
        capped = tmp_path / "capped.yaml"  # a call reserves its 256 tokens' answer: $0.000256
        capped.write_text(spec.read_text() + "budget: {max_cost_usd: 0.0002}\n")
        r = cli("compare", capped, "--runs", "2", "--time-scale", "1", "--journal", db, "--json")
        assert r.code == 0 and r.json()[0]["measured"]["cost_usd"] == 0.0
        assert r.err == (f"trilemma: {capped}: 2 runs on real endpoints (r) bill about $0.0000 "
                         "by the planner, $0.0004 in its worst case; their ceilings hold them "
                         "under $0.0004; Ctrl-C stops them, keeping the runs that ended\n")  # fmt: skip
        swept = cli("sweep", spec, "--max-cost", "0.0003,0.001", "--runs", "2", "--time-scale", "1",
                    "--journal", db, "--json")  # fmt: skip
        assert swept.code == 0, swept.err
        assert swept.err == (f"trilemma: {spec}: 6 runs on real endpoints (r) bill about $0.0008 "
                             "by the planner, $0.0012 in its worst case; Ctrl-C stops them, "
                             "keeping the runs that ended\n")  # fmt: skip
