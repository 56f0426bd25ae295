"""trilemma report: one self-contained HTML page per run, from the journal alone."""

from __future__ import annotations

import base64
import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from trilemma import parse_workflow
from trilemma.journal import Journal
from trilemma.report.html import run_report
from trilemma.run.session import execute
from trilemma.testing import fast_retries

from .conftest import EXAMPLES

SPEC = """version: 1
models:
  m: {usd_per_call: 0.01, latency_s: 0.02, p_ok: 0.5,
      faults: {transient_error_rate: 0.3}}
steps:
  - {id: plan, model: m, retries: 6, sim: {ok: "<script>alert(1)</script>"}}
  - {id: vote, model: m, after: [plan], vote: {samples: 3}, retries: 6}
budget: {max_cost_usd: 0.5, deadline_s: 30}
"""


def test_report_holds_the_summary_timeline_steps_and_every_call(tmp_path: Path) -> None:
    journal = Journal(tmp_path / "j.db")
    with fast_retries():
        r = execute(parse_workflow(SPEC), journal=journal, seed=4)
    page = run_report(journal, r.run_id)
    calls = journal.calls(r.run_id)
    assert f"Run {r.run_id}" in page and r.status in page
    assert "ceiling $0.5000" in page and "deadline 30.00s" in page
    assert f"${r.cost_usd:,.4f}" in page
    ledger = page.split("<h2>Ledger")[1]
    assert ledger.count("<tr>") == len(calls) + 1  # a header, then one row per call
    assert "transient" in ledger and "rejected" in ledger  # faults and failed answers both show
    assert "<script>" not in page and "&lt;script&gt;alert(1)&lt;/script&gt;" in page
    png = base64.b64decode(re.search(r'src="data:image/png;base64,([^"]+)"', page).group(1))
    assert png[:4] == b"\x89PNG" and len(png) > 5_000
    assert "http://" not in page and "https://" not in page  # self-contained: nothing to fetch
    assert "tenant" not in page.split("<h2>")[0]  # a run for nobody in particular says nothing


def test_a_long_run_s_timeline_names_every_kth_step_and_draws_a_bar_set_per_outcome(
    monkeypatch,
) -> None:
    from matplotlib.colors import to_rgba

    from trilemma.report import plots

    drawn = []
    monkeypatch.setattr(plots, "_save", lambda fig, out: drawn.append(fig))
    order = [f"s{i}" for i in range(3000)]
    calls = [{"step_id": sid, "state": "finished", "outcome": "ok" if i % 7 else "transient",
              "started_at": 100.0 + i, "finished_at": 100.5 + i, "cost_usd": 0.01}
             for i, sid in enumerate(order)]  # fmt: skip
    run = {"run_id": "r", "status": "ok", "started_at": 100.0, "deadline_at": None,
           "max_cost_usd": None}  # fmt: skip
    plots.timeline_png(run, calls, order)
    top = drawn[0].axes[0]
    names = [t.get_text() for t in top.get_yticklabels()]
    assert len(names) <= plots.MAX_ROW_LABELS and names[:2] == ["s0", "s50"]
    sets = {c.get_label(): c for c in top.collections}
    assert sorted(sets) == ["error", "ok"]  # one set of bars per outcome; faults in red
    assert tuple(sets["error"].get_facecolor()[0]) == to_rgba("tab:red")
    assert sum(len(c.get_paths()) for c in sets.values()) == 3000  # every call has its bar
    plots.plt.close(drawn[0])


def test_a_thinned_runs_spend_curve_starts_from_what_its_forgotten_calls_spent(
    monkeypatch,
) -> None:
    from trilemma.report import plots

    drawn = []
    monkeypatch.setattr(plots, "_save", lambda fig, out: drawn.append(fig))
    calls = [{"step_id": "m", "state": "finished", "outcome": "ok", "started_at": 100.0 + i,
              "finished_at": 100.5 + i, "cost_usd": 0.01} for i in range(3)]  # fmt: skip
    for pruned, ys in ((None, [0.0, 0.01, 0.02, 0.03]), (0.25, [0.25, 0.26, 0.27, 0.28])):
        run = {"run_id": "gateway-k", "status": "ok", "started_at": 100.0, "deadline_at": None,
               "max_cost_usd": 1.0, "pruned_usd": pruned}  # fmt: skip
        plots.timeline_png(run, calls, ["m"])
        (curve, _) = drawn[-1].axes[1].get_lines()  # the spend, then the ceiling
        assert list(curve.get_ydata()) == pytest.approx(ys)
        plots.plt.close(drawn[-1])


def test_report_names_the_tenant_a_run_worked_for(tmp_path: Path) -> None:
    journal = Journal(tmp_path / "j.db")
    with fast_retries():
        r = execute(parse_workflow(SPEC), journal=journal, seed=4, tenant="acme <corp>")
    head = run_report(journal, r.run_id).split("<h2>")[0]
    assert "for tenant acme &lt;corp&gt;" in head


def test_cli_report_writes_the_page_and_refuses_an_unknown_run(cli, tmp_path: Path) -> None:
    db = tmp_path / "j.db"
    spec = tmp_path / "s.yaml"
    spec.write_text(SPEC)
    run = cli("run", spec, "--journal", db, "--seed", "1", "--json").json()
    out = tmp_path / "run.html"
    r = cli("report", run["run_id"], "--journal", db, "--out", out)
    assert r.code == 0 and f"report: {out}" in r.out
    assert out.read_text().startswith("<!doctype html>")
    missing = cli("report", "nope", "--journal", db)
    assert missing.code == 2 and "'nope' is not in" in missing.err
    no_journal = cli("report", "x", "--journal", tmp_path / "none.db")
    assert no_journal.code == 2 and "none.db" in no_journal.err


def test_a_run_is_named_by_latest_or_a_part_of_its_id(cli, tmp_path: Path) -> None:
    db = tmp_path / "j.db"
    spec = tmp_path / "s.yaml"
    spec.write_text(SPEC)
    assert cli("ledger", "latest", "--journal", db).code == 2  # no journal yet
    Journal(db).close()
    none = cli("ledger", "latest", "--journal", db)
    assert none.code == 2 and "no run is in" in none.err and "`trilemma run SPEC` makes one" in none.err
    with fast_retries():
        first, second = (cli("run", spec, "--journal", db, "--seed", str(s), "--json").json()["run_id"]
                         for s in (1, 2))  # fmt: skip
    assert Journal(db).run_ids("latest") == [second]
    for ref, named in (("latest", second), (first, first), (first[:-3], first),
                       (first.split("-")[1], first), (second[-5:], second)):  # fmt: skip
        shown = cli("ledger", ref, "--journal", db)
        assert shown.code == 0 and f"Ledger of {named}" in shown.out, ref
    exported = cli("export", first.split("-")[1], "--journal", db).out.splitlines()
    assert json.loads(exported[0])["run_id"] == first
    out = tmp_path / "latest.html"
    assert cli("report", "latest", "--journal", db, "--out", out).code == 0
    assert f"Run {second}" in out.read_text()
    both = cli("ledger", first[:8], "--journal", db)  # the date both ids begin with
    assert both.code == 2 and "more than one run" in both.err
    assert first in both.err and second in both.err and "give more of the id" in both.err
    assert cli("ledger", "", "--journal", db).code == 2  # an empty part names nothing


def test_the_runs_table_lists_the_newest_thirty_and_says_how_many_there_are(
    cli, tmp_path: Path
) -> None:
    db = tmp_path / "j.db"
    journal = Journal(db)
    for i in range(35):  # compare and sweep journal hundreds of runs like these
        journal.create_run({"run_id": f"20261204T0000{i:02d}Z-{i:08x}", "spec_source": "s.yaml",
                            "spec_json": "{}", "spec_hash": "h", "inputs_json": "{}", "seed": i,
                            "status": "ok" if i % 5 else "failed", "started_at": 1e9 + i,
                            "predicted_json": "{}"})  # fmt: skip
    journal.close()

    def listed(*args: str) -> tuple[str, list[str]]:
        out = cli("runs", "--journal", db, *args).out
        return " ".join(out.splitlines()[0].split()), [x.split("│")[1].strip()
                                                      for x in out.splitlines() if "│" in x]  # fmt: skip

    title, ids = listed()
    assert title == "35 runs, newest first (the newest 30 shown: --limit N for more, --json for every run)"
    assert ids[0] == "20261204T000034Z-00000022" and len(ids) == 30  # newest first
    title, ids = listed("--limit", "40")
    assert title == "35 runs, newest first" and len(ids) == 35
    title, ids = listed("--status", "failed")
    assert title == "7 runs, newest first" and len(ids) == 7
    assert len(cli("runs", "--journal", db, "--json").json()) == 35  # JSON lists every run


def test_a_run_that_sent_no_call_reports_without_a_warning(cli, tmp_path: Path) -> None:
    import warnings

    db, spec = tmp_path / "j.db", tmp_path / "s.yaml"
    spec.write_text(SPEC)
    run = cli("run", spec, "--journal", db, "--max-cost", "0", "--json").json()
    assert run["status"] == "budget_exhausted" and run["calls"] == 0
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # matplotlib's "No artists with labels" was one
        page = run_report(Journal(db), run["run_id"])
    assert "budget_exhausted" in page


def test_report_and_export_refuse_an_out_path_they_cannot_write_before_reading(
    cli, tmp_path: Path
) -> None:
    db, spec = tmp_path / "j.db", tmp_path / "s.yaml"
    spec.write_text(SPEC)
    assert cli("run", spec, "--journal", db, "--max-cost", "0", "--json").code == 1
    for command in ("report", "export"):
        r = cli(command, "latest", "--journal", db, "--out", tmp_path / "no" / "x.out")
        assert r.code == 2 and "the folder" in r.err and "does not exist" in r.err, r.err


def test_a_runs_filter_that_matches_nothing_says_which(cli, tmp_path: Path) -> None:
    db, spec = tmp_path / "j.db", tmp_path / "s.yaml"
    spec.write_text(SPEC)
    Journal(db).close()  # a journal without runs (a gateway's, before its first request)
    r = cli("runs", "--journal", db)
    assert r.code == 0 and r.out == f"no run is in {db} yet; `trilemma run SPEC` makes one\n"
    assert cli("runs", "--journal", db, "--json").json() == []
    assert cli("run", spec, "--journal", db, "--max-cost", "0").code == 1
    r = cli("runs", "--journal", db, "--status", "failed", "--batch", "b-1")
    assert r.code == 0 and r.out == (f"no run in {db} of batch 'b-1' that ended failed; "
                                     "`trilemma runs --json` gives each run's batch_id\n")  # fmt: skip
    r = cli("runs", "--journal", db, "--status", "ok")
    assert r.out == f"no run in {db} that ended ok; `trilemma runs` lists them all\n"
    assert cli("runs", "--journal", db, "--status", "ok", "--json").json() == []
    assert "budget_exhausted" in cli("runs", "--journal", db, "--status", "budget_exhausted").out
    assert "1 run, newest first" in cli("runs", "--journal", db).out
    from trilemma.journal.migrations import SCHEMA_VERSION

    doctor = cli("doctor", "--journal", db).out
    assert f"(this trilemma knows {SCHEMA_VERSION}), 1 run\n" in doctor  # not "1 runs"


def test_the_journal_may_be_named_once_for_every_command_by_trilemma_journal(
    cli, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    db, other = tmp_path / "mine.db", tmp_path / "other.db"
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("TRILEMMA_JOURNAL", str(db))
    ran = cli("run", EXAMPLES / "single.yaml", "--json").json()
    assert ran["journal"] == str(db) and not (tmp_path / ".trilemma").exists()
    assert [r["run_id"] for r in cli("runs", "--json").json()] == [ran["run_id"]]
    assert cli("ledger", "latest", "--json").json()[0]["step"] == "answer"
    # the flag wins (seeded: an unseeded run fails its 1.5% of the time)
    assert cli("run", EXAMPLES / "single.yaml", "--seed", "1", "--journal", other).code == 0
    assert len(Journal(other).runs()) == 1 and len(Journal(db).runs()) == 1
    monkeypatch.setenv("TRILEMMA_JOURNAL", "")  # set but empty: the default
    r = cli("runs")
    assert r.code == 2 and ".trilemma/trilemma.db: no journal here" in r.err, r.err


def test_commands_printed_for_pasting_quote_a_path_with_spaces() -> None:
    from trilemma.journal.store import DEFAULT_PATH
    from trilemma.report.tables import follow_up, journal_flag

    assert journal_flag(DEFAULT_PATH) == ""
    assert journal_flag(Path("runs/j.db")) == " --journal runs/j.db"
    assert journal_flag(Path("my runs/j.db")) == " --journal 'my runs/j.db'"
    assert follow_up("20261204T000000Z-1a2b3c4d", "my runs/j.db") == (
        "next: trilemma ledger 1a2b3c4d --journal 'my runs/j.db' (every call), "
        "trilemma report 1a2b3c4d --journal 'my runs/j.db' (a page)")


def test_answers_that_look_like_rich_markup_print_as_text(cli, tmp_path: Path) -> None:
    """Models write "[/INST]" and "[bold]": tables show them as they are, never as markup."""
    answer = "[/INST] the refund window is [bold]30 days[/bold]"
    spec = tmp_path / "[draft].yaml"
    spec.write_text("version: 1\nmodels: {m: {usd_per_call: 0.01, latency_s: 0.01, p_ok: 1.0}}\n"
                    f"steps: [{{id: a, model: m, sim: {{ok: {json.dumps(answer)}}}}}]\n")  # fmt: skip
    db = tmp_path / "j.db"
    r = cli("run", spec, "--journal", db)
    assert r.code == 0 and answer in r.out, r.err
    r = cli("runs", "--journal", db)
    assert r.code == 0 and "[draft].yaml" in r.out, r.err


def test_long_text_in_a_table_is_clipped_between_words() -> None:
    """A batch's refusal cut at 70 characters read "past the $0...." (a figure cut in two)."""
    from trilemma.report.tables import clipped

    why = "step answer: a call's worst case $0.0100 would take spend past the $0.0450 ceiling"
    assert clipped(why) == "step answer: a call's worst case $0.0100 would take spend past the..."
    assert clipped("one\ntwo  three") == "one two three"  # one line, whitespace as one space
    assert clipped("x" * 100) == "x" * 67 + "..."  # no space to cut at: cut at the width
    assert all(len(clipped(t)) <= 70 for t in (why, "y " * 60, "z" * 71))


def test_a_step_stopped_under_way_shows_what_it_sent_and_expected_calls_are_rounded(
    tmp_path: Path,
) -> None:
    """The deadline cut a step after several billed attempts: the page said "not run" beside
    a ledger of its calls, and gave the expected calls as 9.990096479686."""
    spec = """version: 1
models:
  m: {usd_per_call: 0.01, latency_s: 0.05, p_ok: 0.2}
steps:
  - {id: a, model: m, retries: 40}
  - {id: b, model: m, after: [a]}
"""
    journal = Journal(tmp_path / "j.db")
    with fast_retries():
        r = execute(parse_workflow(spec), journal=journal, seed=20, deadline_s=0.3)
    assert r.status == "deadline" and r.steps["a"].status == "cancelled"  # seed 20: a needs 20
    page = run_report(journal, r.run_id)
    steps = page.split("<h2>Steps")[1].split("<h2>")[0]
    a = steps.split(">a<")[1].split("</tr>")[0]
    assert "not finished" in a and f">{r.steps['a'].attempts}<" in a
    assert f"${r.steps['a'].cost_usd:,.4f}" in a and r.steps["a"].cost_usd > 0
    assert "not run" in steps.split(">b<")[1].split("</tr>")[0]  # b never started
    expected = json.loads(journal.run(r.run_id)["predicted_json"])["calls"]["expected"]
    assert f"{expected:.2f} expected" in page and repr(expected) not in page


def test_the_plots_legends_sit_beside_their_panels_not_on_the_last_bars(monkeypatch) -> None:
    """The last step (a batch's last line) ends at the lower right, where a legend inside the
    panel hid its bar: every legend is right of its panel and inside the figure."""
    from trilemma.report import plots

    drawn = []
    monkeypatch.setattr(plots, "_save", lambda fig, out: drawn.append(fig))
    calls = [{"step_id": sid, "state": "finished", "outcome": "ok", "started_at": 100.0 + i,
              "finished_at": 101.0 + i, "cost_usd": 0.01} for i, sid in enumerate("abc")]  # fmt: skip
    run = {"run_id": "r", "status": "ok", "started_at": 100.0, "deadline_at": None,
           "max_cost_usd": 0.05}  # fmt: skip
    plots.timeline_png(run, calls, list("abc"))
    runs = [{"batch_line": i + 1, "status": "ok", "started_at": 100.0 + i,
             "finished_at": 101.0 + i, "cost_usd": 0.01} for i in range(3)]  # fmt: skip
    plots.batch_png(runs, 0.05)
    for fig, box, panel in _legends(drawn):
        assert box.x0 >= panel.x1 and box.x1 <= fig.bbox.x1, (box, panel)
    assert len(drawn) == 2


def test_a_batch_plot_draws_its_deadline_and_planned_end_where_they_fall_near_its_runs(
    monkeypatch,
) -> None:
    """Across both panels: the deadline (dashed red) and the plan's end (dotted), counted from
    the batch's start; a deadline far after every run (30 s after runs of 3 s) is left out,
    or the runs would shrink into the plot's left edge."""
    from trilemma.report import plots

    drawn = []
    monkeypatch.setattr(plots, "_save", lambda fig, out: drawn.append(fig))
    runs = [{"batch_line": i + 1, "status": "ok", "started_at": 100.0 + i,
             "finished_at": 101.0 + i, "cost_usd": 0.01} for i in range(3)]  # fmt: skip
    plots.batch_png(runs, 0.05, started_at=99.5, deadline_s=3.0, planned_s=2.5)
    plots.batch_png(runs, 0.05, started_at=99.5, deadline_s=30.0, planned_s=2.5)
    near, far = ({(line.get_label(), line.get_xdata()[0]) for line in fig.axes[0].get_lines()}
                 for fig in drawn)  # fmt: skip
    assert near == {("the deadline", 3.0), ("planned end", 2.5)}
    assert far == {("planned end", 2.5)}
    (bars,) = drawn[0].axes[0].collections  # from the batch's start: the first run at 0.5 s
    assert min(float(path.vertices[:, 0].min()) for path in bars.get_paths()) == pytest.approx(0.5)
    # a resumed batch: each later session's start, where runs end after it (not the one after all)
    plots.batch_png(runs, 0.05, started_at=99.5, resumed_at=[101.5, 150.0])
    resumed = [(line.get_label(), line.get_xdata()[0]) for line in drawn[2].axes[0].get_lines()]
    assert resumed == [("a session resumed it", 2.0)]
    assert any(list(line.get_xdata()) == [2.0, 2.0] for line in drawn[2].axes[1].get_lines())  # both panels
    # and the deadlines later sessions were given: not the first kept, nor one far after
    plots.batch_png(runs, 0.05, started_at=99.5, deadline_s=1.0, resumed_at=[101.5],
                    later_deadlines_at=[100.5004, 103.0, 200.0])  # fmt: skip
    marks = sorted((line.get_label(), line.get_xdata()[0]) for line in drawn[3].axes[0].get_lines())
    assert marks == [("a later session's deadline", 3.5), ("a session resumed it", 2.0),
                     ("the deadline", 1.0)]  # fmt: skip
    for fig in drawn:
        plots.plt.close(fig)


def test_a_batch_plan_ends_where_its_table_says_it_stops() -> None:
    """The page's plot draws the plan's end where the table's latency row says the batch
    stops: the ceiling's stop, else the deadline where it cuts runs, whichever first (the
    plot drew the end of every run past a deadline the table said ended the batch)."""
    from trilemma.report.tables import planned_end, stopped_at

    plan = {"latency_s": {"batch": 2.28}, "deadline_s": 1.2, "runs_done_by_deadline": 4}
    assert (planned_end(plan, 12), stopped_at(plan, 2.28, 12)) == (1.2, "; 1.20s as the deadline stops it")
    ceiling = {**plan, "deadline_s": 1.7, "latency_within_ceiling_s": 1.82, "runs_ended_within_ceiling": 9.3}
    assert planned_end(ceiling, 12) == 1.7
    assert stopped_at(ceiling, 2.28, 12) == "; about 1.82s as the ceiling stops it, 1.70s as the deadline does"
    assert planned_end({**ceiling, "deadline_s": 30.0}, 12) == 1.82  # the deadline cuts nothing
    assert planned_end({**plan, "runs_done_by_deadline": 12}, 12) == 2.28  # every run in time


def _legends(figures: list[Any]) -> Iterator[tuple[Any, Any, Any]]:
    """Each figure with each of its panels' legend and panel boxes, laid out as when saved."""
    from trilemma.report import plots

    for fig in figures:
        fig.tight_layout()
        fig.canvas.draw()
        renderer = fig.canvas.get_renderer()
        for ax in fig.axes:
            yield fig, ax.get_legend().get_window_extent(renderer), ax.get_window_extent(renderer)
        plots.plt.close(fig)


def test_the_sweep_and_compare_legends_lie_outside_their_panels(monkeypatch, tmp_path: Path) -> None:
    """matplotlib's "best" place for a legend inside a panel still lay across a sweep's lines
    (examples/ceiling.yaml at 0.05,0.1,0.2): every legend is outside its panel, in the figure."""
    from trilemma import load_workflow
    from trilemma.experiments.compare import compare
    from trilemma.experiments.sweep import Limits, budget_sweep
    from trilemma.report import plots

    drawn = []
    monkeypatch.setattr(plots, "_save", lambda fig, out: drawn.append(fig))
    wf = load_workflow(EXAMPLES / "ceiling.yaml")
    with Journal(tmp_path / "j.db") as journal:
        plots.plot_sweep(budget_sweep(wf, [Limits(max_cost_usd=c) for c in (0.05, 0.1, 0.2)], 3,
                                      journal), tmp_path / "s.png")  # fmt: skip
        plots.plot_compare(compare([("ceiling", wf), ("single", load_workflow(EXAMPLES / "single.yaml"))],
                                   3, journal), tmp_path / "c.png")  # fmt: skip
    for fig, box, panel in _legends(drawn):
        assert not box.overlaps(panel), (box, panel)
        assert box.x0 >= 0 and box.y0 >= 0 and box.x1 <= fig.bbox.x1, (box, fig.bbox)
    assert len(drawn) == 2


def test_a_cost_too_small_for_four_decimals_is_not_printed_as_nothing(cli, write, tmp_path: Path) -> None:
    # 400 prompt and 200 completion tokens at $0.05 a million: $0.00003 a call
    spec = write("version: 1\nmodels:\n  tiny: {usd_per_1m_input: 0.05, usd_per_1m_output: 0.05, "
                 "latency_s: 0.01, p_ok: 1.0}\nsteps:\n  - {id: answer, model: tiny}\n")  # fmt: skip
    db = tmp_path / "j.db"
    ran = cli("run", spec, "--journal", db)
    assert ran.code == 0 and "$0.000030" in ran.out, ran.out
    assert "$0.000030" in cli("runs", "--journal", db).out
    ledger = cli("ledger", "latest", "--journal", db).out
    assert "│ $0.000030 │" in ledger and "billed $0.000030; 1 ok" in ledger, ledger
    assert cli("report", "latest", "--journal", db, "--out", tmp_path / "r.html").code == 0
    page = (tmp_path / "r.html").read_text(encoding="utf-8")
    assert "$0.000030" in page and "$0.0000<" not in page
    from trilemma.report.tables import usd

    assert [usd(x) for x in (None, 0.0, 0.304, 0.00005, 123.4)] == [
        "-", "$0.0000", "$0.3040", "$0.0001", "$123"]  # fmt: skip
    # and a ceiling's refusal says its figures (the second call's worst case: 256 tokens
    # out, its prompt in)
    spec.write_text(spec.read_text() + "  - {id: check, model: tiny, after: [answer]}\n")
    refused = cli("run", spec, "--journal", db, "--max-cost", "0.00004")
    assert refused.code == 1 and ("a call's worst case $0.000033 would take spend past the "
                                  "$0.000040 ceiling ($0.000030 spent") in refused.err, refused.err
    # and so does the live display on a terminal
    from types import SimpleNamespace

    from trilemma.cli.runs import _RunDisplay

    with _RunDisplay(2, 0.00004, 5.0, enabled=False) as display:
        display.update(SimpleNamespace(done=1, spent=0.00003))
    assert display.progress.tasks[0].fields["spend"] == "$0.000030 / $0.000040"


def test_a_run_s_predicted_latency_names_the_expected_one_beside_the_critical_path(
    cli, write, tmp_path: Path
) -> None:
    """A retried step's expected latency counts the chance of its retries and the backoff
    before them, which the critical path leaves out: a run of one 10 ms call at p 0.5 with two
    retries is expected to take about 0.42 s. The run's table and its page name it first."""
    from trilemma import estimate

    spec = write("version: 1\nmodels: {m: {usd_per_call: 0.01, latency_s: 0.01, p_ok: 0.5}}\n"
                 "steps: [{id: a, model: m, retries: 2}]\n")  # fmt: skip
    e = estimate(parse_workflow(spec.read_text()))
    assert e.latency_expected_s > 10 * e.latency_critical_s
    said = (f"{e.latency_expected_s:.2f}s expected, {e.latency_critical_s:.2f}s critical path, "
            f"{e.latency_worst_s:.2f}s worst")  # fmt: skip
    db, page = tmp_path / "j.db", tmp_path / "r.html"
    r = cli("run", spec, "--seed", "1", "--journal", db)
    assert r.code in (0, 1) and said in " ".join(r.out.split()), r.out
    assert cli("report", "latest", "--journal", db, "--out", page).code == 0
    assert said in page.read_text()


def test_a_long_run_s_table_shows_forty_steps_those_not_done_first(cli, write, tmp_path) -> None:
    """A 1,000-step run printed 1,000 rows. The table keeps forty: every step not done
    first, then the first done ones, and says what it left out and where to read it all."""
    from types import SimpleNamespace

    from trilemma.report.tables import STEPS_SHOWN, _steps_shown

    steps = {f"s{i}": SimpleNamespace(status="failed" if i in (7, 55) else "done") for i in range(60)}
    shown = _steps_shown(steps)
    assert len(shown) == STEPS_SHOWN == 40 and {"s7", "s55"} <= shown
    assert shown - {"s55"} == {f"s{i}" for i in range(39)}  # then the first done ones
    assert _steps_shown(dict(list(steps.items())[:40])) == set(list(steps)[:40])  # all fit
    # A failure after many skipped steps is still shown: 50 skipped come first in the spec.
    steps = {f"s{i}": SimpleNamespace(status="skipped" if i < 50 else "done") for i in range(60)}
    steps["s58"] = SimpleNamespace(status="failed")
    shown = _steps_shown(steps)
    assert "s58" in shown and shown - {"s58"} == {f"s{i}" for i in range(39)}
    body = "\n".join(f"  - {{id: s{i}, model: m}}" for i in range(45))
    spec = write(f"version: 1\nmodels: {{m: {{usd_per_call: 0.001, latency_s: 0.001, p_ok: 1}}}}\n"
                 f"steps:\n{body}\n")  # fmt: skip
    out = cli("run", spec, "--seed", "1", "--journal", tmp_path / "j.db").out
    rows = [line for line in out.splitlines() if line.lstrip().startswith("s") and " done " in line]
    assert len(rows) == 40 and "s44 " not in out
    assert re.search(r"5 more steps \(all done\) not shown: trilemma report \w+ --journal", out)


def test_an_estimate_of_many_steps_shows_those_that_weigh_most(cli, write) -> None:
    """300 steps: the table shows 40, the critical path's and the costliest, least reliable
    and slowest of the rest (each far down the spec), and says what the others are at most."""
    rows = [f"  - {{id: s{i:03}, model: m, prompt: hi}}" for i in range(300)]
    rows[150] = "  - {id: s150, model: dear, prompt: hi}"
    rows[200] = "  - {id: s200, model: shaky, prompt: hi}"
    rows[250] = "  - {id: s250, model: slow, prompt: hi}"
    rows[11] = "  - {id: s011, model: m, prompt: hi, after: [s010]}"
    spec = write(
        "version: 1\nmodels:\n  m: {usd_per_call: 0.001, latency_s: 0.01, p_ok: 0.999}\n"
        "  dear: {usd_per_call: 0.5, latency_s: 0.01, p_ok: 0.999}\n"
        "  shaky: {usd_per_call: 0.001, latency_s: 0.01, p_ok: 0.5}\n"
        "  slow: {usd_per_call: 0.001, latency_s: 0.02, p_ok: 0.999}\n"
        "concurrency: 1000\nsteps:\n" + "\n".join(rows) + "\n"
    )
    r = cli("estimate", spec)
    assert r.code == 0, r.err
    shown = re.findall(r"^│ (s\d{3})", r.out, flags=re.M)
    assert len(shown) == 40 and shown == sorted(shown)
    assert {"s010", "s011", "s150", "s200", "s250"} <= set(shown)
    caption = " ".join(r.out.split("*: on the critical path.", 1)[1].split())
    assert caption.startswith("40 steps shown") and "260 more, each at most $0.0010 expected" in caption
    assert "0.01s, p step at least 0.9990: --json lists every one" in caption
    assert len(cli("estimate", spec, "--json").json()["per_step"]) == 300
