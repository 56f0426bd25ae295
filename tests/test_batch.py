"""trilemma batch: one spec over the lines of a JSON Lines file, under one ceiling and deadline."""

from __future__ import annotations

import json
import re
import sqlite3
import subprocess
import sys
import time
from contextlib import closing
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from trilemma import parse_workflow
from trilemma.journal import Journal
from trilemma.report.tables import usd
from trilemma.run.batch import read_inputs, run_batch
from trilemma.testing import FunctionProvider

from .conftest import EXAMPLES
from .durable_helpers import another_writer

SPEC = """version: 1
inputs: {{question: null}}
models:
  m: {{usd_per_call: 0.01, latency_s: {latency}, p_ok: {p_ok}}}
steps:
  - {{id: answer, model: m, prompt: "Answer: {{question}}"{extra}}}
"""


def write(tmp_path: Path, n: int, *, latency: float = 0.001, p_ok: float = 1.0,
          extra: str = "") -> tuple[Path, Path]:  # fmt: skip
    spec = tmp_path / "faq.yaml"
    spec.write_text(SPEC.format(latency=latency, p_ok=p_ok, extra=extra))
    lines = tmp_path / "q.jsonl"
    lines.write_text("".join(json.dumps({"question": f"q{i}"}) + "\n" for i in range(1, n + 1)))
    return spec, lines


def write_halting(tmp_path: Path, check_s: float, answer_s: float) -> tuple[Path, Path]:
    """A spec whose check ($0.001, ``check_s``) fails half its runs, which stop there, before
    an answer ($0.01, ``answer_s``), and twenty empty lines."""
    spec, lines = tmp_path / "halts.yaml", tmp_path / "lines.jsonl"
    spec.write_text(f"version: 1\nmodels: {{check: {{usd_per_call: 0.001, latency_s: {check_s}, "
                    f"p_ok: 0.5}}, answer: {{usd_per_call: 0.01, latency_s: {answer_s}, p_ok: 1}}}}"
                    "\nsteps: [{id: c, model: check}, {id: a, model: answer, after: [c]}]\n")  # fmt: skip
    lines.write_text("{}\n" * 20)
    return spec, lines


def test_every_line_is_a_journaled_run_of_its_own_inputs(tmp_path: Path, cli) -> None:
    spec, lines = write(tmp_path, 6)
    db, out = tmp_path / "j.db", tmp_path / "out.jsonl"
    r = cli("batch", spec, "--inputs", lines, "--journal", db, "--out", out, "--json")
    assert r.code == 0, r.err
    got = r.json()
    assert (got["status"], got["lines"], got["counts"]["ok"]) == ("ok", 6, 6)
    assert got["cost_usd"] == pytest.approx(0.06)
    assert got["predicted"]["cost_usd"]["expected"] == pytest.approx(0.06)
    assert got["predicted"]["latency_s"] == {"batch": 0.002, "critical_path_per_run": 0.001,
                                             "expected_per_run": 0.001}  # never retried
    assert got["quality_per_dollar"] == pytest.approx(100.0)  # every line ok at $0.01 a line
    assert got["predicted"]["quality_per_dollar"] == pytest.approx(100.0)
    written = [json.loads(x) for x in out.read_text().splitlines()]
    assert [w["line"] for w in written] == [1, 2, 3, 4, 5, 6] == [x["line"] for x in got["runs"]]
    journal = Journal(db)
    for w in written:  # each run answered its own line's question, and the ledger says so
        assert json.loads(journal.run(w["run_id"])["inputs_json"]) == {"question": f"q{w['line']}"}
        [call] = journal.calls(w["run_id"])
        assert f"Answer: q{w['line']}" in call["request_json"]
    assert len(journal.runs()) == 6
    listed = cli("runs", "--journal", db, "--json").json()
    assert sorted(x["batch_line"] for x in listed) == [1, 2, 3, 4, 5, 6]
    assert {x["batch_id"] for x in listed} == {got["batch_id"]}
    from trilemma.report.html import run_report

    head = run_report(journal, written[2]["run_id"]).split("<h2>")[0]
    assert f"line 3 of {got['batch_id']}" in head
    table = cli("batch", spec, "--inputs", lines, "--journal", db)
    assert table.code == 0 and "6 runs, ok" in table.out and "6 of 6" in table.out
    said = " ".join(table.out.split())  # the next commands, however the terminal wraps them
    report = said.split("next: ")[1].split(" (a page)")[0].split()
    assert report[:2] == ["trilemma", "report"] and report[2].startswith("batch-")
    assert cli(*report[1:], "--out", tmp_path / "b.html").code == 0


@pytest.mark.parametrize("seed", range(8))
def test_the_ceiling_holds_over_runs_in_parallel(tmp_path: Path, seed: int) -> None:
    spec, lines = write(tmp_path, 40)
    wf = parse_workflow(spec.read_text())
    result = run_batch(wf, read_inputs(lines, wf), journal=Journal(tmp_path / "j.db"),
                       max_cost_usd=0.155, parallel=8, seed=seed)  # fmt: skip
    assert result.cost_usd <= 0.155 + 1e-12
    assert result.status == "budget_exhausted"
    assert result.count("ok") == 15  # every run that could be paid for was
    assert {r.status for r in result.lines} <= {"ok", "budget_exhausted", "not_started"}
    assert result.count("not_started") > 0  # once refused, no further run starts
    assert result.error is not None and "ceiling" in result.error


def test_runs_go_in_parallel_and_a_deadline_stops_the_batch(tmp_path: Path, cli) -> None:
    spec, lines = write(tmp_path, 8, latency=0.3)
    wf = parse_workflow(spec.read_text())
    inputs = read_inputs(lines, wf)
    fast = run_batch(wf, inputs, journal=Journal(tmp_path / "j.db"), parallel=8)
    assert fast.status == "ok" and 0.3 <= fast.latency_s < 0.3 * 8 / 2  # not one after another
    r = cli("batch", spec, "--inputs", lines, "--parallel", "2", "--deadline", "0.75",
            "--journal", tmp_path / "j.db", "--json")  # fmt: skip
    assert r.code == 1
    got = r.json()
    assert got["status"] == "deadline" and got["latency_s"] < 1.2
    assert got["counts"]["ok"] == 4  # two rounds of two finished by 0.6 s; the third was cut
    assert got["counts"]["deadline"] == 2 and got["counts"]["not_started"] == 2
    assert f"trilemma: {got['batch_id']} deadline: line" in r.err


def test_simulated_lines_are_independent_and_reproducible(tmp_path: Path) -> None:
    spec, lines = write(tmp_path, 30, p_ok=0.5)
    wf = parse_workflow(spec.read_text())
    inputs = read_inputs(lines, wf)

    def statuses(seed: int) -> list[str]:
        r = run_batch(wf, inputs, journal=Journal(tmp_path / "j.db"), seed=seed)
        return [x.status for x in r.lines]

    first = statuses(3)
    assert 5 < first.count("ok") < 25  # each line its own draw, not one outcome repeated
    assert statuses(3) == first and statuses(4) != first


def test_a_batch_works_for_its_tenant(tmp_path: Path) -> None:
    spec, lines = write(tmp_path, 3, extra=", cached: true")
    wf = parse_workflow(spec.read_text())
    inputs = read_inputs(lines, wf)
    journal = Journal(tmp_path / "j.db")
    assert run_batch(wf, inputs, journal=journal, tenant="acme").cost_usd == pytest.approx(0.03)
    assert run_batch(wf, inputs, journal=journal, tenant="acme").cost_usd == 0.0
    assert run_batch(wf, inputs, journal=journal).cost_usd == pytest.approx(0.03)
    assert {r["tenant"] for r in journal.runs()} == {"acme", None}


def test_a_providers_bug_stops_the_batch_and_is_raised_as_itself(tmp_path: Path) -> None:
    async def fn(request: Any) -> str:
        if "q3" in request.messages[-1]["content"]:
            raise KeyError("no such field")
        return "ok"

    spec, lines = write(tmp_path, 3)
    wf = parse_workflow(spec.read_text())
    journal = Journal(tmp_path / "j.db")
    with pytest.raises(KeyError, match="no such field"):
        run_batch(wf, read_inputs(lines, wf), journal=journal, parallel=1,
                  providers={"m": FunctionProvider(fn)})  # fmt: skip
    assert sorted(r["status"] for r in journal.runs()) == ["failed", "ok", "ok"]


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        ('{"question": "a"}\n{"question": \n', "q.jsonl:2: not JSON"),
        ('["a"]\n', "q.jsonl:1: a line must be a JSON object"),
        ('{"question": "a", "extra": "b"}\n', "q.jsonl:1: extra: "),
        ('{"other": "a"}\n', "q.jsonl:1: other: "),
        ("{}\n", "q.jsonl:1: question=...: "),
        ('{"question": {"nested": 1}}\n', "q.jsonl:1: question: give text, a number or a boolean, not an object"),
        ('{"question": null}\n', "q.jsonl:1: question: give text, a number or a boolean, not null"),
        ('{"question": "a", "question": "b"}\n', "q.jsonl:1: question: given twice on one line; keep one"),
        ("\n\n", "no lines; give one JSON object per line"),
    ],
)
def test_a_bad_line_is_one_line_naming_it_before_anything_runs(
    tmp_path: Path, cli, content: str, expected: str
) -> None:
    spec, lines = write(tmp_path, 1)
    lines.write_text(content)
    db = tmp_path / "j.db"
    r = cli("batch", spec, "--inputs", lines, "--journal", db)
    assert r.code == 2 and expected in r.err and r.err.count("\n") == 1, r.err
    assert not db.exists()


def test_a_byte_order_mark_is_not_part_of_the_first_line(tmp_path: Path, cli) -> None:
    # Windows editors start a UTF-8 file with one; json.loads refused the first line for it
    spec, lines = write(tmp_path, 1)
    lines.write_bytes('\ufeff{"question": "a"}\r\n'.encode())
    assert read_inputs(lines, parse_workflow(spec.read_text())) == {1: {"question": "a"}}
    r = cli("batch", spec, "--inputs", lines, "--journal", tmp_path / "j.db")
    assert r.code == 0, r.err
    assert ": 1 line, 4 at a time, about 0.00s planned; if it stops" in r.err  # not "1 lines"


def test_numbers_and_booleans_are_taken_as_text(tmp_path: Path) -> None:
    spec, lines = write(tmp_path, 1)
    lines.write_text('{"question": 42}\n{"question": true}\n{"question": 0.5}\n')
    wf = parse_workflow(spec.read_text())
    assert read_inputs(lines, wf) == {1: {"question": "42"}, 2: {"question": "true"},
                                      3: {"question": "0.5"}}  # fmt: skip


def test_bad_flags_are_refused(tmp_path: Path, cli) -> None:
    spec, lines = write(tmp_path, 1)
    r = cli("batch", spec, "--inputs", lines, "--parallel", "0", "--journal", tmp_path / "j.db")
    assert r.code == 2 and "--parallel: 0 is not a positive integer" in r.err
    missing = cli("batch", spec, "--inputs", tmp_path / "none.jsonl", "--journal", tmp_path / "j.db")
    assert missing.code == 2 and "none.jsonl: cannot read it" in missing.err


def test_the_readme_batch_runs_as_shown(tmp_path: Path, cli) -> None:
    r = cli("batch", EXAMPLES / "faq.yaml", "--inputs", EXAMPLES / "questions.jsonl",
            "--max-cost", "0.05", "--seed", "1", "--journal", tmp_path / "j.db", "--json")  # fmt: skip
    got = r.json()
    assert r.code == 0 and got["counts"]["ok"] == got["lines"] == 12
    assert got["cost_usd"] == pytest.approx(0.026)  # the README's figure: one retry
    latency = got["predicted"]["latency_s"]  # twelve runs of 0.66 s expected, four at a time
    assert latency["expected_per_run"] == pytest.approx(0.66489)
    assert latency["critical_path_per_run"] == 0.6
    # the pool waits for its slowest: above three runs' mean, below a retry (1 s) more
    assert 3 * 0.66489 + 0.1 < latency["batch"] < 3 * 0.66489 + 1.0
    table = cli("batch", EXAMPLES / "faq.yaml", "--inputs", EXAMPLES / "questions.jsonl",
                "--max-cost", "0.05", "--seed", "1", "--journal", tmp_path / "k.db").out  # fmt: skip
    said = f"{latency['batch']:.2f}s (4 at a time, 0.66s expected each, 0.60s critical path)"
    assert said in table


def test_a_batch_is_planned_with_its_retries_and_their_backoff(tmp_path: Path, cli) -> None:
    """300 lines of one 1 ms call at p 0.7, two retries, 30 at a time: the calls that fail wait
    out a backoff (below 1 s, uniform) holding their run's slot, which is nearly all of the
    batch's time. Rounds of critical paths planned 0.01 s for it, rounds of expected
    latencies 1.21 s; it measured 1.70-1.92 s (four seeds), as the pool's slowest runs end
    late. The pool's plan says 1.93 s."""
    spec, lines = write(tmp_path, 300, p_ok=0.7, extra=", retries: 2")
    got = cli("batch", spec, "--inputs", lines, "--parallel", "30", "--seed", "3",
              "--journal", tmp_path / "j.db", "--json").json()  # fmt: skip
    planned, measured = got["predicted"]["latency_s"], got["latency_s"]
    assert planned["batch"] > 1.4 * 10 * planned["expected_per_run"]
    assert planned["batch"] > 50 * 10 * planned["critical_path_per_run"]
    assert 0.5 < measured / planned["batch"] < 2.5, (measured, planned)


def test_a_batch_stopped_by_its_ceiling_goes_on_where_it_stopped(tmp_path: Path, cli) -> None:
    spec, lines = write(tmp_path, 10)
    db = tmp_path / "j.db"

    def batch(*extra: str) -> dict[str, Any]:
        r = cli("batch", spec, "--inputs", lines, "--journal", db, "--json", *extra)
        assert r.code in (0, 1), r.err
        return r.json()

    first = batch("--max-cost", "0.045")
    assert (first["status"], first["counts"]["ok"]) == ("budget_exhausted", 4)
    more = batch("--resume", first["batch_id"], "--max-cost", "0.07")  # earlier spend counts
    assert more["status"] == "budget_exhausted" and more["cost_usd"] <= 0.07 + 1e-12
    assert (more["counts"]["ok"], more["from_journal"]) == (7, 4)
    ran = cli("batch", spec, "--inputs", lines, "--journal", db, "--json", "--resume",
              first["batch_id"], "--max-cost", "1")  # fmt: skip
    assert "10 lines (3 to run), 4 at a time, about 0.00s planned; if it stops, it goes on with" in ran.err
    rest = ran.json()
    assert (rest["status"], rest["counts"]["ok"], rest["from_journal"]) == ("ok", 10, 7)
    assert rest["predicted"]["latency_s"]["batch"] == pytest.approx(0.001)  # 3 lines ran, at once
    assert rest["cost_usd"] == pytest.approx(0.10)  # each line paid for once
    journal = Journal(db)
    runs = journal.batch_runs(first["batch_id"])
    assert sorted(runs) == list(range(1, 11)) and len(journal.runs()) == 10  # one run per line
    for row in runs.values():
        assert [c["outcome"] for c in journal.calls(row["run_id"])] == ["ok"]


def test_a_killed_batch_resumes_without_paying_twice(tmp_path: Path, cli) -> None:
    import subprocess
    import sys
    import time

    spec, lines = write(tmp_path, 6, latency=0.6)
    db, out = tmp_path / "j.db", tmp_path / "out.jsonl"
    proc = subprocess.Popen(
        [sys.executable, "-m", "trilemma", "batch", str(spec), "--inputs", str(lines),
         "--parallel", "2", "--journal", str(db), "--json", "--out", str(out)],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:  # kill it once a run is done and others are in flight
            time.sleep(0.05)
            if db.exists() and sum(r["status"] == "ok" for r in Journal(db).runs()) >= 2:
                break
        proc.kill()
    finally:
        proc.wait(timeout=30)
    before = Journal(db).runs()
    assert 2 <= sum(r["status"] == "ok" for r in before) < 6
    assert any(r["status"] == "running" for r in before)  # cut off mid-run
    (batch_id,) = {r["batch_id"] for r in before}
    # --out has a line for each run that ended before the kill, as it ended
    partial = [json.loads(x) for x in out.read_text().splitlines()]
    assert {x["run_id"] for x in partial} == {r["run_id"] for r in before if r["status"] == "ok"}
    doctor = cli("doctor", "--journal", db, "--json").json()
    assert doctor["interrupted_batches"] == [
        {"batch_id": batch_id, "spec_source": str(spec), "overrides": []}
    ]
    assert f"--resume {batch_id} --journal {db}`" in " ".join(cli("doctor", "--journal", db).out.split())
    r = cli("batch", spec, "--inputs", lines, "--journal", db, "--json", "--resume", batch_id,
            "--out", out)  # fmt: skip
    got = r.json()
    assert r.code == 0 and got["counts"]["ok"] == 6, r.err
    final = [json.loads(x) for x in out.read_text().splitlines()]
    assert [x["line"] for x in final] == list(range(1, 7))  # at the end: every line, in order
    assert {x["status"] for x in final} == {"ok"}
    assert got["from_journal"] == sum(x["status"] == "ok" for x in before)
    journal = Journal(db)
    assert len(journal.runs()) == 6  # the interrupted runs resumed, not started again
    for row in journal.batch_runs(batch_id).values():
        assert [c["outcome"] for c in journal.calls(row["run_id"])] == ["ok"]  # paid once
    assert got["cost_usd"] == pytest.approx(0.06)
    # the killed session measured nothing as it ended: its page says so, the resumed one's ended
    killed, resumed = journal.batch_plans(batch_id)
    assert killed["ended"] is None and resumed["ended"]["status"] == "ok"
    assert resumed["ended"]["ok"] == resumed["lines"] == 6 - got["from_journal"]
    page = tmp_path / "b.html"
    assert cli("report", batch_id, "--journal", db, "--out", page).code == 0
    text = " ".join(re.sub(r"<[^>]+>", " ", page.read_text()).split())
    assert re.search(r"session 1 \(interrupted\): time [\d.]+s for 6 lines, 2 at a time - ", text), text
    assert re.search(rf"session 2: time [\d.]+s for {resumed['lines']} lines?, 4 at a time [\d.]+s - ", text)


def test_resuming_after_the_deadline_says_what_to_give(
    tmp_path: Path, cli, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A resumed batch whose deadline passed says so as it starts and in its table, where
    the line an earlier session ended ok counts as ok before the deadline; its page sets
    each session's plan beside what the session measured as it ended."""
    monkeypatch.setenv("COLUMNS", "250")
    spec, lines = write(tmp_path, 6, latency=0.3)
    db = tmp_path / "j.db"
    first = cli("batch", spec, "--inputs", lines, "--journal", db, "--json", "--parallel", "1",
                "--deadline", "0.45").json()  # fmt: skip
    assert first["status"] == "deadline" and first["counts"]["ok"] == 1
    late = cli("batch", spec, "--inputs", lines, "--journal", db, "--resume", first["batch_id"])
    assert late.code == 1 and "5 lines did not start: the deadline had passed (with --resume, " \
        "--deadline SECONDS gives a new one)" in late.err  # fmt: skip
    assert re.search(r": 6 lines \(5 to run\), 4 at a time, about [\d.]+s planned; its deadline passed "
                     r"[\d.]+s ago, so no line starts \(--deadline SECONDS gives a new one\)", late.err)  # fmt: skip
    shown = " ".join(late.out.split())  # the table says it too
    assert re.search(r"deadline │ passed \d+\.\d\ds before this session \(--deadline SECONDS gives a new "
                     r"one\) │ 0 of 5 ended", shown), shown  # fmt: skip
    # the runs ok before the deadline are of the whole batch: the line ended ok, none more
    assert "runs ok │ 6.0 of 6 (100.00%); 1.0 of them before the deadline │ 1 of 6" in shown, shown
    none = cli("batch", spec, "--inputs", lines, "--journal", db, "--deadline", "0.01")
    assert "quality per dollar │ 100.0 │ - │" in " ".join(none.out.split()), none.out  # not "inf": nothing succeeded
    again = cli("batch", spec, "--inputs", lines, "--journal", db, "--json", "--resume",
                first["batch_id"], "--deadline", "30").json()  # fmt: skip
    assert (again["status"], again["counts"]["ok"]) == ("ok", 6)
    page = tmp_path / "b.html"
    assert cli("report", first["batch_id"], "--journal", db, "--out", page).code == 0
    text = " ".join(re.sub(r"<[^>]+>", " ", page.read_text()).split())
    assert "runs ok 6.0 of 6 (100.00%) 6 of 6" in text  # the batch's lines, every session's
    # the session's own time: line 2, cut by the deadline, ended in session 3
    took = re.search(r"session 1: time 1\.80s for 6 lines, 1 at a time; 0\.45s as the deadline stops "
                     r"it ([\d.]+)s deadline 0\.45s from its start", text)  # fmt: skip
    assert took is not None and 0.44 <= float(took[1]) < 0.6, text  # its own time: the deadline's
    assert "session 1: deadline 0.45s: about 1 of 6 runs end before it 1 of 6 ended" in text
    assert re.search(r"session 2: deadline passed [\d.]+s before this session .* 0 of 5 ended", text)
    assert re.search(r"session 3: time 0\.60s for 5 lines, 4 at a time [\d.]+s deadline 30\.00s "
                     r"from its start", text), text  # fmt: skip
    assert "session 3: deadline 30s: every run ends before it 5 of 5 ended" in text


def test_a_resume_refuses_another_spec_other_inputs_or_another_tenant(tmp_path: Path, cli) -> None:
    spec, lines = write(tmp_path, 3)
    db = tmp_path / "j.db"
    first = cli("batch", spec, "--inputs", lines, "--journal", db, "--json", "--max-cost", "0.015")
    batch_id = first.json()["batch_id"]
    other = tmp_path / "other.yaml"
    other.write_text(spec.read_text().replace("p_ok: 1.0", "p_ok: 0.9"))
    changed = tmp_path / "changed.jsonl"
    changed.write_text(lines.read_text().replace("q1", "q one"))
    cases = [
        ((spec, lines, "--resume", "batch-nope"), "no batch of that id"),
        ((other, lines, "--resume", batch_id), "the spec is not the one the batch ran"),
        ((spec, changed, "--resume", batch_id), "line 1 of the inputs is not what the batch ran"),
        ((spec, lines, "--resume", batch_id, "--tenant", "acme"), "runs for no tenant"),
    ]
    for args, expected in cases:
        r = cli("batch", args[0], "--inputs", args[1], *args[2:], "--journal", db)
        assert r.code == 2 and expected in r.err and r.err.count("\n") == 1, r.err


def test_a_models_limits_hold_for_the_batch_not_per_run(tmp_path: Path) -> None:
    """max_concurrency: 1 is the endpoint's: four runs at a time still send one call at a time."""
    spec, lines = write(tmp_path, 4, latency=0.2)
    text = spec.read_text().replace("p_ok: 1.0}", "p_ok: 1.0, max_concurrency: 1}")
    wf = parse_workflow(text)
    r = run_batch(wf, read_inputs(lines, wf), journal=Journal(tmp_path / "j.db"), parallel=4)
    assert r.status == "ok" and r.latency_s >= 4 * 0.2  # one after another
    free = parse_workflow(spec.read_text())
    r = run_batch(free, read_inputs(lines, free), journal=Journal(tmp_path / "j.db"), parallel=4)
    assert r.status == "ok" and r.latency_s < 2 * 0.2  # together


def _on_endpoint(url: str, profile: str) -> Any:
    """The one-step FAQ spec on an OpenAI-compatible endpoint at ``url``, priced by ``profile``."""
    return parse_workflow(_on_endpoint_text(url, profile))


def test_a_batch_on_a_real_endpoint_bills_each_line_from_its_usage(tmp_path: Path) -> None:
    """An OpenAI-compatible server on 127.0.0.1: each line's question, each line's answer."""
    from trilemma.testing import Reply, ScriptedServer

    def answer(payload: dict[str, Any]) -> Reply:
        question = payload["messages"][-1]["content"].removeprefix("Answer: ")
        return Reply(f"about {question}", prompt_tokens=10, completion_tokens=5, delay_s=0.05)

    _, lines = write(tmp_path, 5)
    with ScriptedServer(answer) as srv:
        wf = _on_endpoint(srv.url, "usd_per_1m_input: 1000, usd_per_1m_output: 2000, "
                                   "max_tokens: 20, latency_s: 0.05, p_ok: 0.9")  # fmt: skip
        r = run_batch(wf, read_inputs(lines, wf), journal=Journal(tmp_path / "j.db"),
                      max_cost_usd=1.0, parallel=3)  # fmt: skip
        assert len(srv.requests) == 5
    assert r.status == "ok"
    assert [x.outputs["answer"] for x in r.lines] == [f"about q{i}" for i in range(1, 6)]
    assert r.cost_usd == pytest.approx(5 * (10 * 1000 + 5 * 2000) / 1e6)


def test_a_batch_runs_row_and_call_are_journaled_before_the_endpoint_sees_the_call(
    tmp_path: Path,
) -> None:
    """The runs of a batch share one journal writer, which group-commits their writes: a
    run's row must still be in the journal, with its call's record, before the call is sent."""
    import contextlib
    import sqlite3

    from trilemma.testing import Reply, ScriptedServer

    db, seen = tmp_path / "j.db", {}

    def answer(payload: dict[str, Any]) -> Reply:  # on the server's thread, as a call arrives
        line = int(payload["messages"][-1]["content"].removeprefix("Answer: q"))
        with contextlib.closing(sqlite3.connect(db)) as raw:
            seen[line] = raw.execute(
                "SELECT r.status, count(c.idempotency_key) FROM runs r LEFT JOIN calls c "
                "ON c.run_id = r.run_id WHERE r.batch_line = ? GROUP BY r.run_id", (line,)
            ).fetchall()  # fmt: skip
        return Reply(f"about q{line}", delay_s=0.01)

    _, lines = write(tmp_path, 30)
    with ScriptedServer(answer) as srv:
        wf = _on_endpoint(srv.url, "usd_per_call: 0.001, latency_s: 0.01, p_ok: 0.99")
        with Journal(db) as journal:
            r = run_batch(wf, read_inputs(lines, wf), journal=journal, parallel=8)
    assert r.status == "ok"
    assert seen == {n: [("running", 1)] for n in range(1, 31)}  # its row, and the call's record
    with Journal(db, create=False) as journal:  # and every row ended as its run did
        assert sorted((x["batch_line"], x["status"], x["calls"]) for x in journal.runs()) == [
            (n, "ok", 1) for n in range(1, 31)
        ]


def test_inputs_can_come_from_standard_input(
    tmp_path: Path, cli, monkeypatch: pytest.MonkeyPatch
) -> None:
    import io

    spec, lines = write(tmp_path, 3)
    monkeypatch.setattr("sys.stdin", io.StringIO(lines.read_text()))
    r = cli("batch", spec, "--inputs", "-", "--journal", tmp_path / "j.db", "--json")
    assert r.code == 0 and r.json()["counts"]["ok"] == 3


def test_the_report_of_a_batch_shows_its_totals_runs_and_lines(tmp_path: Path, cli) -> None:
    import base64
    import re

    spec, lines = write(tmp_path, 10)
    db, out = tmp_path / "j.db", tmp_path / "batch.html"
    got = cli("batch", spec, "--inputs", lines, "--journal", db, "--json", "--max-cost",
              "0.045").json()  # fmt: skip
    r = cli("report", got["batch_id"], "--journal", db, "--out", out)
    assert r.code == 0
    page = out.read_text()
    assert f"{got['batch_id']}: 4 of " in page and "ceiling $0.0450" in page
    table = page.split("<h2>Lines")[1]
    assert table.count("<tr>") == 1 + sum(x["status"] != "not_started" for x in got["runs"])
    assert "budget_exhausted" in table  # the lines the ceiling stopped say so
    png = base64.b64decode(re.search(r'src="data:image/png;base64,([^"]+)"', page).group(1))
    assert png[:4] == b"\x89PNG"
    assert "http://" not in page and "https://" not in page
    assert "deadline" not in page.split("<h2>Runs over time")[0]  # none given
    cut = cli("batch", spec, "--inputs", lines, "--journal", db, "--json", "--deadline", "30").json()
    cli("report", cut["batch_id"], "--journal", db, "--out", out)
    # as a run's page says its own (from the first run's start, a few ms after the batch's)
    assert re.search(r"deadline (29\.9\d|30\.00)s from its start", out.read_text())
    one = cli("report", got["runs"][0]["run_id"], "--journal", db, "--out", tmp_path / "r.html")
    assert one.code == 0 and "<h2>Ledger" in (tmp_path / "r.html").read_text()  # a run's page
    missing = cli("report", "batch-nope", "--journal", db)
    assert missing.code == 2 and "'batch-nope' is not in" in missing.err


def test_a_batch_page_sets_the_batch_plan_beside_what_it_measured(
    tmp_path: Path, cli, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The journal keeps a batch session's plan (its runs at a time, its lines, the
    planner's figures), so the batch's page sets them beside what it measured, as its table
    does: the runs the ceiling lets end, when it stops the batch, the batch's own time. A
    resumed batch (two sessions, each planned for its own lines) sets the newest plan's
    figures of all its lines, then each session's, beside what they measured; pruning the
    batch forgets its plans; a damaged plan is found by doctor."""
    monkeypatch.setenv("COLUMNS", "250")
    spec, lines = write_halting(tmp_path, 0.02, 0.05)
    db, page = tmp_path / "j.db", tmp_path / "b.html"
    args = ("batch", spec, "--inputs", lines, "--journal", db, "--json")
    got = cli(*args, "--max-cost", "0.05", "--deadline", "30").json()
    bid, planned = got["batch_id"], got["predicted"]
    with Journal(db) as j:
        (session,) = j.batch_plans(bid)
    assert (session["parallel"], session["lines"]) == (4, 20)
    ended = got["counts"]["ok"] + got["counts"]["failed"]
    assert session["ended"] == {"status": got["status"], "took_s": pytest.approx(got["latency_s"], abs=1e-5),
                                "ran_to_end": ended, "ok": got["counts"]["ok"]}  # fmt: skip
    assert session["plan"] == {**planned, "max_cost_usd": 0.05, "deadline_s": 30.0, "batch_lines": 20}
    assert cli("report", bid, "--journal", db, "--out", page).code == 0
    text = " ".join(re.sub(r"<[^>]+>", " ", page.read_text()).split())
    assert (f"runs ok 10.0 of 20 (50.00%); {planned['runs_ok_within_ceiling']:.1f} of them within "
            f"the ceiling {got['counts']['ok']} of 20") in text  # fmt: skip
    assert f"about {planned['latency_within_ceiling_s']:.2f}s as the ceiling stops it" in text
    assert (f"ceiling $0.0500: about {planned['runs_ended_within_ceiling']:.1f} of 20 runs go to "
            f"their end within it; it pays for 4 of 20 runs even at their worst {ended} of 20 ended") in text  # fmt: skip
    assert f"deadline 30s: every run ends before it {ended} of 20 ended" in text
    took = float(re.search(r"as the ceiling stops it ([\d.]+)s", text).group(1))
    assert abs(took - got["latency_s"]) < 0.05  # the batch's time, not a run's
    assert "ceiling $0.0500" in text and "deadline 30.00s from its start" in text

    again = cli(*args, "--resume", bid, "--max-cost", "1").json()  # a second session
    assert again["counts"]["ok"] + again["counts"]["failed"] == 20
    with Journal(db) as j:
        assert [s["lines"] for s in j.batch_plans(bid)] == [20, 20 - got["counts"]["ok"]]  # failed again
    cli("report", bid, "--journal", db, "--out", page)
    resumed = " ".join(re.sub(r"<[^>]+>", " ", page.read_text()).split())
    ok = again["counts"]["ok"]
    assert f"runs ok 10.0 of 20 (50.00%) {ok} of 20" in resumed
    assert f"cost $0.2200 expected ($0.1200 as failed runs stop), $0.2200 worst {usd(again['cost_usd'])}" in resumed
    assert f"session 1: ceiling $0.0500: about {planned['runs_ended_within_ceiling']:.1f} of 20" in resumed
    left = 1 - got["cost_usd"]  # what the first session left of the second's $1 ceiling
    lines2 = 20 - got["counts"]["ok"]
    assert re.search(rf"session 2: time [\d.]+s for {lines2} lines, 4 at a time [\d.]+s "
                     rf"{re.escape(usd(left))} of the ceiling left", resumed), resumed  # fmt: skip
    assert f"{lines2} of {lines2} ended" in resumed.split("session 2: ceiling")[1]
    # the first session's deadline is not the batch's any more: each session's is in its rows
    assert re.search(r"on average each session's deadline, above", resumed), resumed
    assert "30.00s from its start" not in resumed.split("latency per run")[1]

    with closing(sqlite3.connect(db)) as raw, raw:  # a figure the page reads (it raised)
        raw.execute("UPDATE batch_plans SET plan_json = json_set(plan_json, '$.latency_s', "
                    "'slow') WHERE lines = 20")  # fmt: skip
    r = cli("report", bid, "--journal", db, "--out", page)
    assert r.code == 2 and "Traceback" not in r.err and len(r.err.strip().splitlines()) == 1
    damage = (f"table batch_plans, batch_id {bid}: plan_json's latency_s holds 'slow', not a "
              "JSON object")  # fmt: skip
    assert f"a damaged row in the journal ({damage})" in r.err
    with Journal(db) as j:
        assert [f for f in j.damaged_rows() if "batch_plans" in f] == [damage]
    with closing(sqlite3.connect(db)) as raw, raw:
        raw.execute("UPDATE batch_plans SET plan_json = '[1]' WHERE lines = 20")
        raw.execute("UPDATE batch_plans SET ended_json = '\"x\"' WHERE lines < 20")
    with Journal(db) as j:
        found = [f for f in j.damaged_rows() if "batch_plans" in f]
        assert len(found) == 2 and any("ended_json" in f for f in found), found
        j.prune(time.time() + 1)
        assert j.batch_plans(bid) == [] and j.batch_runs(bid) == {}


def test_plan_says_what_a_batch_should_cost_and_sends_nothing(
    tmp_path: Path, cli, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("COLUMNS", "250")  # each row on a line of its own
    db = tmp_path / "j.db"
    args = ("batch", EXAMPLES / "faq.yaml", "--inputs", EXAMPLES / "questions.jsonl", "--plan",
            "--journal", db)  # fmt: skip
    plan = cli(*args, "--max-cost", "0.05", "--json").json()
    assert (plan["lines"], plan["parallel"], plan["max_cost_usd"]) == (12, 4, 0.05)
    assert plan["predicted"]["cost_usd"]["worst"] == pytest.approx(12 * 3 * 0.002)
    assert plan["runs_covered_at_worst"] == 8  # $0.05 over $0.006 a run at worst
    again = cli(*args, "--max-cost", "0.05", "--json").json()  # drawn with a fixed seed
    assert again["predicted"]["latency_s"]["batch"] == plan["predicted"]["latency_s"]["batch"]
    assert cli(*args, "--json").json()["runs_covered_at_worst"] is None  # no ceiling
    table = cli(*args, "--max-cost", "0.05")
    assert table.code == 0 and "it pays for 8 of 12 runs even at their worst" in table.out
    assert plan["runs_ended_within_ceiling"] == plan["runs_ok_within_ceiling"] == pytest.approx(12, abs=0.05)
    assert not db.exists()  # nothing was run or journaled
    assert plan["deadline_s"] is None and plan["runs_done_by_deadline"] is None
    # the batch itself shows the row beside the runs that went to their end
    ran = cli(*args[:-3], "--journal", db, "--max-cost", "0.02", "--seed", "1", "--json").json()
    assert ran["status"] == "budget_exhausted" and ran["predicted"]["runs_done_by_deadline"] is None
    assert ran["predicted"]["runs_covered_at_worst"] == 3  # $0.02 over $0.006 a run at worst
    ended = ran["counts"]["ok"] + ran["counts"]["failed"]
    shown = " ".join(cli(*args[:-3], "--journal", db, "--max-cost", "0.02", "--seed", "1").out.split())
    within = ran["predicted"]["runs_ended_within_ceiling"]
    assert 8 < within < 10.5 and abs(within - ended) < 1.5  # 9.3 planned, 9 ended
    assert (f"ceiling │ $0.0200: about {within:.1f} of 12 runs go to their end within it; it pays "
            f"for 3 of 12 runs even at their worst │ {ended} of 12 ended") in shown  # fmt: skip
    # a resumed batch: what the first session left of the new ceiling, for the lines left
    again = cli(*args[:-3], "--journal", db, "--max-cost", "0.03", "--resume", ran["batch_id"], "--json").json()
    assert again["predicted"]["runs_covered_at_worst"] == int((0.03 - ran["cost_usd"]) / 0.006 + 1e-9) >= 1
    spec, one = write(tmp_path, 1)
    alone = cli("batch", spec, "--inputs", one, "--plan", "--journal", db)
    assert alone.code == 0 and "Plan for 1 run, 4 at a time" in alone.out  # not "1 runs"


@pytest.mark.parametrize(("deadline", "done"), [(1, 4), (1.5, 7), (3, 12)])
def test_plan_says_how_many_runs_end_before_the_deadline(
    tmp_path: Path, cli, deadline: float, done: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Four runs at a time of 0.6 s, or 1.6 s where a call is retried (7%): about four end by
    1 s, seven by 1.5 s (eight, less the one in fourteen retried; rounds of runs at their
    mean said eight), all twelve by 3 s. Under --deadline 1 and 1.5 a batch (seed 1, whose
    line 6 retries) ends four and seven runs ok, the plan's figures."""
    monkeypatch.setenv("COLUMNS", "250")  # each row on a line of its own
    db = tmp_path / "j.db"
    args = ("batch", EXAMPLES / "faq.yaml", "--inputs", EXAMPLES / "questions.jsonl",
            "--deadline", str(deadline), "--journal", db)  # fmt: skip
    plan = cli(*args, "--plan", "--json").json()
    assert (plan["deadline_s"], plan["runs_done_by_deadline"]) == (deadline, done)
    row = " ".join(cli(*args, "--plan").out.split())
    took = plan["predicted"]["latency_s"]["batch"]
    said = ("every run ends before it" if done == 12 else
            f"about {done} of 12 runs end before it; the batch takes about {took:.2f}s")  # fmt: skip
    assert f"deadline │ {deadline:g}s: {said}" in row
    assert plan["runs_near_deadline"] == 0 and "executor's own time" not in row  # room enough
    # where it cuts runs, the deadline ends the batch: it cancels what is in flight
    stops = f"critical path); {deadline:.2f}s as the deadline stops it │"
    assert (stops in row) == (deadline < 3), row
    if deadline < 3:
        got = cli(*args, "--seed", "1", "--json").json()
        assert got["status"] == "deadline" and got["counts"]["ok"] == done
        # the batch's own table and JSON carry the plan's count beside what ended
        assert got["deadline_s"] == deadline and got["predicted"]["runs_done_by_deadline"] == done
        shown = " ".join(cli(*args, "--seed", "1").out.split())
        assert f"deadline │ {deadline:g}s: about {done} of 12 runs end before it │ {done} of 12 ended" in shown
        took = re.search(rf"{re.escape(stops)} ([\d.]+)s │", shown)  # a batch of its own
        assert took is not None and abs(float(took[1]) - deadline) < 0.05, shown
        assert abs(got["latency_s"] - deadline) < 0.05


def test_a_batch_names_the_runs_that_end_at_its_deadline_by_a_hair(
    tmp_path: Path, cli, monkeypatch: pytest.MonkeyPatch
) -> None:
    """early-stop.yaml's guess ends 70% of its runs at 0.5 s (the planner's pool at 0.516 s,
    the runs' times scaled to the estimate's mean): under a 0.52 s deadline the plan has
    them end before it by less than the executor's own time (30 ms), and says so, in the
    plan and beside the batch's runs; under 0.6 s, 84 ms before it, nothing said."""
    monkeypatch.setenv("COLUMNS", "250")  # each row on a line of its own
    db, lines = tmp_path / "j.db", tmp_path / "lines.jsonl"
    lines.write_text("{}\n" * 8)
    args = ("batch", EXAMPLES / "early-stop.yaml", "--inputs", lines, "--parallel", "8",
            "--journal", db)  # fmt: skip
    plan = cli(*args, "--deadline", "0.52", "--plan", "--json").json()
    assert (plan["runs_done_by_deadline"], plan["runs_near_deadline"]) == (6, 6)
    assert plan["deadline_headroom_s"] == pytest.approx(0.03)
    near = ("0.52s: about 6 of 8 runs end before it, 6 of them less than 30 ms before it, which "
            "the executor's own time may cross")  # fmt: skip
    assert near in " ".join(cli(*args, "--deadline", "0.52", "--plan").out.split())
    assert near in " ".join(cli(*args, "--deadline", "0.52", "--seed", "1").out.split())
    roomy = cli(*args, "--deadline", "0.6", "--plan", "--json").json()
    assert (roomy["runs_done_by_deadline"], roomy["runs_near_deadline"]) == (6, 0)
    assert "ms before it" not in cli(*args, "--deadline", "0.6", "--plan").out
    free = cli(*args, "--plan", "--json").json()
    assert free["runs_near_deadline"] is None and free["deadline_headroom_s"] is None
    # the runs that end by then are the guesses that passed (the stop): all of them ok
    assert plan["runs_ok_by_deadline"] == pytest.approx(0.7 * 8, abs=0.35)
    assert roomy["runs_ok_by_deadline"] == plan["runs_ok_by_deadline"]
    assert free["runs_ok_by_deadline"] is None


def test_a_batch_under_a_deadline_plans_the_runs_that_end_ok_before_it(
    tmp_path: Path, cli, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A check of 0.1 s passes half the time and a failed run stops there; the answer after
    it takes 0.5 s. Twenty lines at once under a 0.3 s deadline: the ten or so that end
    before it are the failed ones, so none ends ok, which the runs ok row says beside its
    50% ok at the runs' end (ok_lines, of runs without the deadline); the batch's runs
    measure the same. Under 5 s every ok run ends before it and the row says nothing more."""
    monkeypatch.setenv("COLUMNS", "250")  # each row on a line of its own
    spec, lines = write_halting(tmp_path, 0.1, 0.5)
    args = ("batch", spec, "--inputs", lines, "--parallel", "20", "--journal", tmp_path / "j.db")
    plan = cli(*args, "--deadline", "0.3", "--plan", "--json").json()
    assert plan["predicted"]["ok_lines"] == pytest.approx(10, abs=0.5)
    assert 7 <= plan["runs_done_by_deadline"] <= 13 and plan["runs_ok_by_deadline"] == 0
    shown = " ".join(cli(*args, "--deadline", "0.3", "--plan").out.split())
    assert "runs ok │ 10.0 of 20 (50.00%); 0.0 of them before the deadline │" in shown
    cut = cli(*args, "--deadline", "0.3", "--seed", "2", "--json")
    done = plan["runs_done_by_deadline"]
    assert f"; about {done} of 20 end before the deadline; if it stops" in cut.err  # said first
    ran = cut.json()
    assert ran["status"] == "deadline" and ran["counts"]["ok"] == 0 < ran["counts"]["failed"]
    assert ran["predicted"]["runs_ok_by_deadline"] == 0
    table = " ".join(cli(*args, "--deadline", "0.3", "--seed", "2").out.split())
    assert "0.0 of them before the deadline │ 0 of 20 │" in table
    roomy = cli(*args, "--deadline", "5", "--max-cost", "1", "--seed", "2")
    assert "s planned; if it stops" in roomy.err and "before the deadline" not in roomy.err
    assert "the ceiling lets" not in roomy.err
    late = cli(*args, "--deadline", "5", "--plan", "--json").json()
    assert late["runs_ok_by_deadline"] == pytest.approx(late["predicted"]["ok_lines"])
    assert "before the deadline" not in cli(*args, "--deadline", "5", "--plan").out

    # the answer's model two at a time: the runs replayed together, the ok ones two by two
    spec.write_text(spec.read_text().replace("p_ok: 1}", "p_ok: 1, max_concurrency: 2}"))
    held = cli(*args, "--deadline", "1.15", "--plan", "--json").json()
    assert held["predicted"]["limited_by"]["limit"] == "max_concurrency"
    assert held["runs_done_by_deadline"] == 14  # ten failed at 0.1 s, four ok by 1.1 s
    assert held["runs_ok_by_deadline"] == pytest.approx(4, abs=0.3)


def test_a_routed_batch_under_a_ceiling_is_replayed_branch_by_branch(
    tmp_path: Path, cli, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A classifier ($0.002) sends 85% of runs to one cheap call and 15% to a debate of
    $0.03 calls, three at a time. Under $0.05 a debate's second call never fits, so the
    first run routed there stops the batch, with its first debate call still in flight.
    The ceiling's replay takes each run's drawn branch: its calls, their prices and their
    reservations (it gave every run the debate's calls at the dearest reservation, and
    planned no run to its end); 16 batches measure about as many as it plans."""
    spec, lines = tmp_path / "rmix.yaml", tmp_path / "lines.jsonl"
    spec.write_text("version: 1\nmodels: {small: {usd_per_call: 0.002, latency_s: 0.04, p_ok: 0.95},"
                    " premium: {usd_per_call: 0.03, latency_s: 0.2, p_ok: 0.985}}\nsteps: [{id: "
                    "answer, model: small, route: {simple: {share: 0.85, model: small}, hard: "
                    "{share: 0.15, model: premium, debate: {agents: 3, rounds: 2}}}}]\n")  # fmt: skip
    lines.write_text("{}\n" * 20)
    args = ("batch", spec, "--inputs", lines, "--max-cost", "0.05", "--journal", tmp_path / "j.db")
    plan = cli(*args, "--plan", "--json").json()
    ended = plan["runs_ended_within_ceiling"]
    assert 4 < ended < 9, ended  # 6.2 (6.8 measured over 30 batches)
    assert plan["latency_within_ceiling_s"] > 0.2  # the debate call in flight at the stop
    got = [cli(*args, "--seed", str(100 + s), "--json").json()["counts"] for s in range(16)]
    measured = np.mean([c["ok"] + c["failed"] for c in got])
    assert abs(measured - ended) < 3, (measured, ended)


def test_none_ok_within_both_budgets_is_none_not_the_smaller_count(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Where the ceiling's replay has no run ok by the deadline, the runs ok within both are
    0, not the smaller of the two counts alone (a zero read as "not worked out")."""
    from trilemma.plan.estimate import estimate
    from trilemma.run import batch

    spec, _ = write_halting(tmp_path, 0.02, 0.05)
    wf = parse_workflow(spec.read_text())
    monkeypatch.setattr(batch, "within_ceiling", lambda *a: batch.Within(9.0, 4.0, True, 0.0, 0.1))
    t = batch.batch_time(wf, estimate(wf), 20, 4, 5.0, 0.05)
    assert t.ok_in_time is not None and t.ok_in_time > 5 and t.ok_in_budgets == 0.0
    monkeypatch.setattr(batch, "within_ceiling", lambda *a: batch.Within(9.0, 4.0, False))
    assert batch.batch_time(wf, estimate(wf), 20, 4, 5.0, 0.05).ok_in_budgets == 4.0  # not replayed


def test_a_batch_under_a_ceiling_plans_when_the_ceiling_stops_it(
    tmp_path: Path, cli, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The cheap check (20 ms) fails half the runs, then the $0.01 answer (50 ms); twenty
    lines, four at a time, under $0.05: all twenty would take about 0.25 s, but the ceiling
    stops the batch's starts after nine or so, at about 0.12 s. The ceiling's replay keeps
    when its last run ended; the latency row and the batch's first line say it, and the
    batches measure it. A ceiling that stops nothing says nothing more."""
    monkeypatch.setenv("COLUMNS", "250")  # each row on a line of its own
    spec, lines = write_halting(tmp_path, 0.02, 0.05)
    args = ("batch", spec, "--inputs", lines, "--journal", tmp_path / "j.db")
    plan = cli(*args, "--max-cost", "0.05", "--plan", "--json").json()
    took, planned = plan["latency_within_ceiling_s"], plan["predicted"]["latency_s"]["batch"]
    assert 0.08 < took < 0.16 and planned > 0.2, (took, planned)
    shown = " ".join(cli(*args, "--max-cost", "0.05", "--plan").out.split())
    assert f"critical path); about {took:.2f}s as the ceiling stops it │" in shown
    runs = [cli(*args, "--max-cost", "0.05", "--seed", str(s), "--json") for s in range(1, 7)]
    assert f"runs go to their end, stopping the batch at about {took:.2f}s; if it" in runs[0].err
    measured = float(np.mean([r.json()["latency_s"] for r in runs]))
    assert abs(measured / took - 1) < 0.25, (measured, took)  # 0.117 against 0.116 over 12
    roomy = cli(*args, "--max-cost", "1", "--plan", "--json").json()  # pays for every run
    assert roomy["latency_within_ceiling_s"] is None
    assert "as the ceiling stops it" not in cli(*args, "--max-cost", "1", "--plan").out
    assert cli(*args, "--plan", "--json").json()["latency_within_ceiling_s"] is None


def test_a_batch_under_a_ceiling_and_a_deadline_plans_the_runs_ok_within_both(
    tmp_path: Path, cli, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Each run's first call costs $0.01, then a free call takes 0.5 s with a wide spread.
    Twenty lines at once under $0.10 and 0.5 s: the ceiling lets the ten runs that reserve
    first go on, the deadline lets about twelve end, whichever they are, so the runs ok
    within both are about six, not the ten the smaller count alone would say. The plan
    replays the calls under the ceiling with their ends and counts the ok runs ending by the
    deadline; the runs ok row says it after the two; twelve batches measure it. Under one
    budget there is no such figure; a spec that stops early (not replayed) takes the
    smaller of the two."""
    monkeypatch.setenv("COLUMNS", "250")  # each row on a line of its own
    spec, lines = tmp_path / "both.yaml", tmp_path / "lines.jsonl"
    spec.write_text("version: 1\nmodels: {big: {usd_per_call: 0.01, latency_s: 0.02, p_ok: 1},"
                    " slow: {usd_per_call: 0.0, latency_s: 0.5, latency_jitter: 0.6, p_ok: 1}}\n"
                    "steps: [{id: b, model: big}, {id: c, model: slow, after: [b]}]\n")  # fmt: skip
    lines.write_text("{}\n" * 20)
    args = ("batch", spec, "--inputs", lines, "--parallel", "20", "--journal", tmp_path / "j.db")
    both = ("--max-cost", "0.1", "--deadline", "0.5")
    plan = cli(*args, *both, "--plan", "--json").json()
    ceiling, deadline = plan["runs_ok_within_ceiling"], plan["runs_ok_by_deadline"]
    got = plan["runs_ok_within_budgets"]
    assert ceiling == pytest.approx(10) and 9 < deadline < 15
    assert got == pytest.approx(ceiling * deadline / 20, abs=0.8)  # the two cut apart
    shown = " ".join(cli(*args, *both, "--plan").out.split())
    assert (f"runs ok │ 20.0 of 20 (100.00%); 10.0 of them within the ceiling; {deadline:.1f} of "
            f"them before the deadline; {got:.1f} within both │") in shown  # fmt: skip
    ran = [cli(*args, *both, "--seed", str(100 * s), "--json").json() for s in range(1, 13)]
    assert all(r["predicted"]["runs_ok_within_budgets"] == got for r in ran)
    measured = np.mean([r["counts"]["ok"] for r in ran])
    assert abs(measured - got) < 1.5 and measured < ceiling - 2, (measured, got)  # 5.25 over 8
    for one in (("--max-cost", "0.1"), ("--deadline", "0.5")):
        alone = cli(*args, *one, "--plan", "--json").json()
        assert alone["runs_ok_within_budgets"] is None
        assert "within both" not in cli(*args, *one, "--plan").out

    stops = tmp_path / "stops.yaml"  # not replayed under a ceiling: the smaller of the two
    stops.write_text("version: 1\nmodels: {small: {usd_per_call: 0.002, latency_s: 0.01, p_ok: 0.7},"
                     " premium: {usd_per_call: 0.03, latency_s: 0.04, latency_jitter: 0.5, "
                     "p_ok: 0.985}}\nsteps: [{id: guess, model: small, gate: {regex: '^\\d+$'}, "
                     "sim: {ok: '42', bad: x}}, {id: answer, model: premium, retries: 1}]\n"
                     "stop_when: guess\n")  # fmt: skip
    args = ("batch", stops, "--inputs", lines, "--journal", tmp_path / "k.db", "--plan", "--json")
    plan = cli(*args, "--max-cost", "0.2", "--deadline", "0.06").json()
    smaller = min(plan["runs_ok_within_ceiling"], plan["runs_ok_by_deadline"])
    assert 0 < smaller < plan["predicted"]["ok_lines"] - 1
    assert plan["runs_ok_within_budgets"] == pytest.approx(smaller)


def test_an_out_file_that_cannot_be_written_is_refused_before_anything_runs(
    tmp_path: Path, cli
) -> None:
    spec, lines = write(tmp_path, 3)
    db = tmp_path / "j.db"
    r = cli("batch", spec, "--inputs", lines, "--journal", db, "--out", tmp_path / "no" / "o.jsonl")
    assert r.code == 2 and "--out" in r.err and "cannot write" in r.err
    assert not db.exists() or Journal(db).runs() == []


def test_resume_can_leave_failed_lines_as_they_ended(tmp_path: Path, cli) -> None:
    spec, lines = write(tmp_path, 8, p_ok=0.5)
    db, out = tmp_path / "j.db", tmp_path / "out.jsonl"
    first = cli("batch", spec, "--inputs", lines, "--journal", db, "--json", "--seed", "3").json()
    failed = [x["line"] for x in first["runs"] if x["status"] == "failed"]
    assert 0 < len(failed) < 8 and first["status"] == "failed"
    out.write_text("what an earlier session wrote\n")
    refused = cli("batch", spec, "--inputs", lines, "--journal", db, "--out", out, "--resume",
                  first["batch_id"], "--tenant", "other")  # fmt: skip
    assert refused.code == 2 and out.read_text() == "what an earlier session wrote\n"  # untouched
    kept = cli("batch", spec, "--inputs", lines, "--journal", db, "--json", "--resume",
               first["batch_id"], "--skip-failed", "--out", out).json()  # fmt: skip
    assert kept["from_journal"] == 8 and kept["cost_usd"] == pytest.approx(first["cost_usd"])
    assert [x["line"] for x in kept["runs"] if x["status"] == "failed"] == failed
    assert all(x["error"] for x in kept["runs"] if x["status"] == "failed")
    assert len(Journal(db).calls(first["runs"][0]["run_id"])) == 1  # nothing sent again
    assert len(out.read_text().splitlines()) == 8
    again = cli("batch", spec, "--inputs", lines, "--journal", db, "--json", "--resume",
                first["batch_id"]).json()  # fmt: skip
    assert again["from_journal"] == 8 - len(failed)  # the failed lines ran again
    assert again["cost_usd"] > first["cost_usd"]
    alone = cli("batch", spec, "--inputs", lines, "--journal", db, "--skip-failed")
    assert alone.code == 2 and "--skip-failed" in alone.err and "--resume" in alone.err


def test_runs_are_listed_by_status_batch_and_newest(tmp_path: Path, cli) -> None:
    spec, lines = write(tmp_path, 8, p_ok=0.5)
    db = tmp_path / "j.db"
    first = cli("batch", spec, "--inputs", lines, "--journal", db, "--json", "--seed", "3").json()
    cli("run", spec, "--journal", db, "-i", "question=alone", "--seed", "1")
    everything = cli("runs", "--journal", db, "--json").json()
    assert len(everything) == 9
    failed = cli("runs", "--journal", db, "--json", "--status", "failed").json()
    assert {r["run_id"] for r in failed} == {
        x["run_id"] for x in first["runs"] if x["status"] == "failed"
    }
    batch = cli("runs", "--journal", db, "--json", "--batch", first["batch_id"]).json()
    assert len(batch) == 8 and {r["batch_id"] for r in batch} == {first["batch_id"]}
    newest = cli("runs", "--journal", db, "--json", "--limit", "2").json()
    assert [r["run_id"] for r in newest] == [r["run_id"] for r in everything[:2]]
    # past what SQLite counts (an OverflowError before): all of them
    assert cli("runs", "--journal", db, "--json", "--limit", "9" * 20).json() == everything
    table = cli("runs", "--journal", db, "--status", "ok", "--limit", "1")
    ok = len(cli("runs", "--journal", db, "--json", "--status", "ok").json())
    assert table.code == 0 and f"{ok} runs, newest first (the newest 1 shown" in table.out
    for bad in (("--status", "done"), ("--limit", "0")):
        r = cli("runs", "--journal", db, *bad)
        assert r.code == 2 and bad[0] in r.err


def test_a_batch_beside_another_writer_of_its_journal_keeps_every_run(tmp_path: Path) -> None:
    """Another process committing to the journal sends the batch's writer to its thread while
    the loop starts the next line's run: the two take turns on the connection (before, the
    second BEGIN failed and its ROLLBACK undid the other's writes: a journal error, runs lost)."""
    spec, _ = write(tmp_path, 0, extra=", retries: 2")
    db = tmp_path / "j.db"
    journal = Journal(db)
    with another_writer(db):
        result = run_batch(parse_workflow(spec.read_text()),
                           [{"question": f"q{i}"} for i in range(120)], journal=journal,
                           parallel=8, seed=1)  # fmt: skip
    assert result.status == "ok" and [line.status for line in result.lines] == ["ok"] * 120
    runs = journal.batch_runs(result.batch_id)
    assert len(runs) == 120 and {r["status"] for r in runs.values()} == {"ok"}
    assert all(len(journal.calls(r["run_id"])) == 1 for r in runs.values())
    assert [row[0] for row in journal.db.execute("PRAGMA integrity_check")] == ["ok"]


def test_a_batch_is_named_as_a_run_is_by_latest_or_a_part_of_its_id(tmp_path: Path, cli) -> None:
    spec, lines = write(tmp_path, 2)
    db = tmp_path / "j.db"
    # the first batch stops at its ceiling after one line: one to go on with
    old = cli("batch", spec, "--inputs", lines, "--journal", db, "--json", "--max-cost", "0.01",
              "--parallel", "1").json()["batch_id"]  # fmt: skip
    new = cli("batch", spec, "--inputs", lines, "--journal", db, "--json").json()["batch_id"]
    hex_end, day = new.rsplit("-", 1)[1], new.removeprefix("batch-")[:8]

    def listed(ref: str) -> set[str]:
        runs = cli("runs", "--journal", db, "--json", "--batch", ref).json()
        return {r["batch_id"] for r in runs}

    assert listed("latest") == listed(hex_end) == listed(new) == {new}
    assert listed(old.removeprefix("batch-")) == {old}  # "batch-" may be left out
    page = cli("report", hex_end, "--journal", db, "--out", tmp_path / "b.html")
    assert page.code == 0 and new in (tmp_path / "b.html").read_text()
    again = cli("batch", spec, "--inputs", lines, "--journal", db, "--json", "--max-cost", "1",
                "--resume", old.rsplit("-", 1)[1]).json()  # fmt: skip
    assert again["batch_id"] == old and again["counts"]["ok"] == 2
    for args in (("runs", "--batch", day), ("report", f"batch-{day}"),
                 ("batch", spec, "--inputs", lines, "--resume", day)):  # fmt: skip
        r = cli(*args, "--journal", db)
        assert r.code == 2 and "names more than one batch" in r.err and old in r.err, r.err
        assert r.err.count("\n") == 1
    r = cli("batch", spec, "--inputs", lines, "--journal", db, "--resume", "nope")
    assert r.code == 2 and "--resume nope: no batch of that id" in r.err, r.err
    # a journal without batches: `latest` names none
    solo = tmp_path / "solo.db"
    assert cli("run", spec, "--journal", solo, "-i", "question=q").code == 0
    for args in (("batch", spec, "--inputs", lines, "--resume", "latest"),
                 ("runs", "--batch", "latest")):  # fmt: skip
        r = cli(*args, "--journal", solo)
        assert r.code == 2 and "latest: no batch is in" in r.err, r.err


def test_a_batch_whose_deadline_cuts_every_run_says_so_before_it_starts(tmp_path: Path, cli) -> None:
    spec, lines = write(tmp_path, 4, latency=0.2)
    r = cli("batch", spec, "--inputs", lines, "--deadline", "0.1", "--journal", tmp_path / "j.db")
    assert r.code == 1 and r.err.startswith(
        "trilemma: note: deadline: the critical path (0.20s) is over 0.1s, so every run that "
        "goes to the end is cut\n")  # fmt: skip
    fits = cli("batch", spec, "--inputs", lines, "--deadline", "5", "--journal", tmp_path / "k.db")
    assert fits.code == 0 and "note:" not in fits.err


def test_a_pool_of_runs_that_always_take_their_time_ends_in_rounds(tmp_path: Path) -> None:
    """Runs of a fixed time end in whole rounds of --parallel, exactly; none take none."""
    from trilemma.plan.estimate import estimate
    from trilemma.run.batch import batch_latency

    spec, _ = write(tmp_path, 1, latency=0.25)
    wf = parse_workflow(spec.read_text())
    p = estimate(wf)
    assert [batch_latency(wf, p, n, 4) for n in (0, 1, 4, 5, 12)] == [0.0, 0.25, 0.25, 0.5, 0.75]
    assert batch_latency(wf, p, 3, 10) == 0.25  # fewer lines than places: one round


def test_a_model_s_limits_hold_the_whole_batch_and_its_plan(tmp_path: Path, cli) -> None:
    """A model's rpm and max_concurrency are its endpoint's, shared by every run: 700 lines
    of one 50 ms call under rpm 600 take ten seconds however many run at a time (the
    pool's 70 rounds of 50 ms said 3.5 s); forty 20 ms calls one at a time take 0.8 s."""
    rated = tmp_path / "rated.yaml"
    rated.write_text("version: 1\nmodels: {m: {usd_per_call: 0.001, latency_s: 0.05, "
                     "p_ok: 1, rpm: 600}}\nsteps: [{id: a, model: m}]\n")  # fmt: skip
    lines = tmp_path / "700.jsonl"
    lines.write_text("{}\n" * 700)
    plan = cli("batch", rated, "--inputs", lines, "--parallel", "10", "--deadline", "5",
               "--plan", "--json").json()  # fmt: skip
    assert plan["predicted"]["latency_s"]["batch"] == pytest.approx(100 / 10 + 0.05)
    assert plan["predicted"]["limited_by"] == {"model": "m", "limit": "rpm", "value": 600}
    assert plan["runs_done_by_deadline"] == 649  # a minute's worth, then ten a second
    shown = " ".join(cli("batch", rated, "--inputs", lines, "--plan").out.split())
    assert "10.05s (m's rpm 600 holds it; 4 at a time," in shown
    forty = tmp_path / "40.jsonl"
    forty.write_text("{}\n" * 40)
    few = cli("batch", rated, "--inputs", forty, "--plan", "--parallel", "10", "--json").json()
    assert few["predicted"]["limited_by"] is None  # forty calls: within the minute's worth
    assert few["predicted"]["latency_s"]["batch"] == pytest.approx(4 * 0.05)

    one = tmp_path / "one.yaml"
    one.write_text("version: 1\nmodels: {m: {usd_per_call: 0.001, latency_s: 0.02, "
                   "p_ok: 1, max_concurrency: 1}}\nsteps: [{id: a, model: m}]\n")  # fmt: skip
    ran = cli("batch", one, "--inputs", forty, "--parallel", "8", "--journal", tmp_path / "j.db",
              "--json")  # fmt: skip
    assert "40 lines, 8 at a time, about 0.80s planned (m's max_concurrency 1 holds it);" in ran.err
    got = ran.json()
    planned = got["predicted"]["latency_s"]["batch"]
    assert planned == pytest.approx(40 * 0.02)  # five rounds of eight would be 0.1 s
    assert got["predicted"]["limited_by"]["limit"] == "max_concurrency"
    assert 0.9 < got["latency_s"] / planned < 2.0, (got["latency_s"], planned)


def test_what_a_run_takes_of_a_model_counts_the_runs_failed_before_its_retries(
    tmp_path: Path, cli
) -> None:
    """A 10 ms step beside a 20 ms one with two retries, each right half the time: a retry
    waits out a backoff (0.25 s on average), and by then half the runs have failed on the
    fast step and send nothing more. The slow model's calls a run: 1 + 0.5 x 0.5 + 0.25 x
    0.5 = 1.375 (the attempts' 1.75 times the share of calls halting runs make said 1.53);
    400 lines measured 1.3625."""
    from trilemma.plan.estimate import estimate
    from trilemma.run.batch import model_limits

    spec = tmp_path / "dem.yaml"
    spec.write_text("version: 1\nmodels:\n"
                    "  f: {usd_per_call: 0.001, latency_s: 0.01, p_ok: 0.5}\n"
                    "  m: {usd_per_call: 0.001, latency_s: 0.02, p_ok: 0.5, rpm: 100000}\n"
                    "steps: [{id: fast, model: f}, {id: slow, model: m, retries: 2}]\n")  # fmt: skip
    wf = parse_workflow(spec.read_text())
    (limit,) = model_limits(wf, estimate(wf))
    assert (limit.model, limit.kind) == ("m", "rpm")
    assert limit.per_run == pytest.approx(1.375, abs=0.02)
    lines = tmp_path / "400.jsonl"
    lines.write_text("{}\n" * 400)
    db = tmp_path / "j.db"
    got = cli("batch", spec, "--inputs", lines, "--parallel", "50", "--seed", "7", "--journal", db)
    assert got.code == 1  # some lines failed
    with closing(sqlite3.connect(db)) as conn:
        (n,) = conn.execute("select count(*) from calls where model = 'm'").fetchone()
    assert abs(n / 400 - limit.per_run) < 0.06, (n / 400, limit.per_run)


def test_calls_waiting_for_a_busy_model_are_not_sent_once_their_run_has_failed(
    tmp_path: Path, cli
) -> None:
    """A 10 ms step that fails 80% of the time beside a 20 ms one on a model that takes one
    call at a time, forty lines eight at a time: most runs fail while their slow call
    waits, and it is never sent. The limit alone said forty calls one after another, 0.8 s;
    the runs replayed together send about eight, and the batch takes about 0.2 s."""
    spec = tmp_path / "waits.yaml"
    spec.write_text("version: 1\nmodels:\n"
                    "  f: {usd_per_call: 0.001, latency_s: 0.01, p_ok: 0.2}\n"
                    "  m: {usd_per_call: 0.001, latency_s: 0.02, p_ok: 1, max_concurrency: 1}\n"
                    "steps: [{id: fast, model: f}, {id: slow, model: m}]\n")  # fmt: skip
    lines = tmp_path / "40.jsonl"
    lines.write_text("{}\n" * 40)
    plan = cli("batch", spec, "--inputs", lines, "--parallel", "8", "--plan", "--json").json()
    planned = plan["predicted"]["latency_s"]["batch"]
    assert 0.12 < planned < 0.3, planned
    assert plan["predicted"]["limited_by"] == {"model": "m", "limit": "max_concurrency", "value": 1}
    db = tmp_path / "j.db"
    got = cli("batch", spec, "--inputs", lines, "--parallel", "8", "--seed", "1000",
              "--journal", db, "--json").json()  # fmt: skip
    with closing(sqlite3.connect(db)) as conn:
        (sent,) = conn.execute("select count(*) from calls where model = 'm'").fetchone()
    assert sent <= 16, sent
    assert 0.8 < got["latency_s"] / planned < 2.0, (got["latency_s"], planned)
    # and what they bill: forty fast calls and the slow ones sent, not forty of each
    cost = plan["predicted"]["cost_usd"]
    assert cost["expected"] == pytest.approx(0.08) and cost["replayed"] < 0.06
    assert got["cost_usd"] == pytest.approx(cost["replayed"], rel=0.2), (got["cost_usd"], cost)
    shown = " ".join(cli("batch", spec, "--inputs", lines, "--parallel", "8", "--plan").out.split())
    assert f"$0.0800 expected (${cost['replayed']:.4f} as failed runs stop, their calls in" in shown


def test_a_batch_is_replayed_only_where_a_limit_may_hold_it_and_it_is_small_enough() -> None:
    """The replay sends every call of every run in Python: a spec without limited models is
    left to the pool (its runs are independent), and so are a batch past REPLAY_CALLS and a
    spec that stops early."""
    from trilemma.plan.batchsim import REPLAY_CALLS, REPLAY_REPS_MIN, replay_batch
    from trilemma.plan.estimate import estimate

    free = parse_workflow("version: 1\nmodels: {m: {usd_per_call: 0.001, latency_s: 0.02, "
                          "p_ok: 1}}\nsteps: [{id: a, model: m}]\n")  # fmt: skip
    assert replay_batch(free, estimate(free), 40, 8) is None
    one = parse_workflow("version: 1\nmodels: {m: {usd_per_call: 0.001, latency_s: 0.02, "
                         "p_ok: 1, max_concurrency: 1}}\nsteps: [{id: a, model: m}]\n")  # fmt: skip
    got = replay_batch(one, estimate(one), 40, 8)
    assert got is not None and got.ends.shape[1] == 40
    assert got.ends[:, -1] == pytest.approx(0.8)  # one call at a time, each 20 ms
    assert list(got.ends[0]) == pytest.approx([0.02 * (i + 1) for i in range(40)])
    assert got.cost_usd == pytest.approx(40 * 0.001)
    too_many = REPLAY_CALLS // REPLAY_REPS_MIN + 1
    assert replay_batch(one, estimate(one), too_many, 8) is None
    stops = parse_workflow("version: 1\nmodels: {m: {usd_per_call: 0.001, latency_s: 0.02, "
                           "p_ok: 1, max_concurrency: 1}}\nsteps: [{id: a, model: m}, "
                           "{id: b, model: m, after: [a]}]\nstop_when: a\n")  # fmt: skip
    assert replay_batch(stops, estimate(stops), 40, 8) is None  # it follows no early stop


def test_runs_that_cost_other_than_planned_say_which_guess_to_check(tmp_path: Path, cli) -> None:
    """A profile guessing 100 prompt and 50 completion tokens where the endpoint reports
    about 1,000 and 400: twenty runs cost ~8.5x the plan, and the batch says what to run."""
    from trilemma.testing import Reply, ScriptedServer

    def answer(payload: dict[str, Any]) -> Reply:
        line = int(payload["messages"][-1]["content"].removeprefix("Answer: q"))
        return Reply(f"about q{line}", prompt_tokens=950 + 5 * line, completion_tokens=400)

    _, lines = write(tmp_path, 20)
    db = tmp_path / "j.db"
    with ScriptedServer(answer) as srv:
        spec = tmp_path / "api.yaml"
        spec.write_text(_on_endpoint_text(srv.url, "usd_per_1m_input: 1.0, usd_per_1m_output: 2.0, "
                                          "prompt_tokens: 100, completion_tokens: 50, latency_s: 0.01, "
                                          "p_ok: 1.0"))  # fmt: skip
        r = cli("batch", spec, "--inputs", lines, "--journal", db)
        cut = cli("batch", spec, "--inputs", lines, "--journal", tmp_path / "k.db", "--max-cost",
                  "0.002", "--parallel", "1")  # fmt: skip
    assert r.code == 0, r.err
    # before it starts, what its runs on the endpoint will bill by the planner: 20 x $0.0002
    assert ", about $0.0040 billed on real endpoints (api) by the planner; if it stops" in r.err
    # then what a ceiling lets through, by the planner (the runs bill 9x that, here)
    assert re.search(r"by the planner; the ceiling lets about \d+\.\d of 20 runs go to their "
                     r"end, stopping the batch at about \d+\.\d\ds; if it stops", cut.err), cut.err  # fmt: skip
    out = " ".join(r.out.split())
    planned, paid = (100 * 1 + 50 * 2) / 1e6, (1002.5 * 1 + 400 * 2) / 1e6
    assert f"The runs cost ${paid:.4f} each against ${planned:.4f} planned (9.01x)" in out
    assert "(9.01x), more than chance explains (p = " in out
    assert f"`trilemma calibrate --from-journal {db} --check` names" in out
    batch_id = Journal(db).runs()[0]["batch_id"]
    page = tmp_path / "batch.html"
    assert cli("report", batch_id, "--journal", db, "--out", page).code == 0
    assert f"The runs cost ${paid:.4f} each against ${planned:.4f} planned (9.01x)" in page.read_text()
    check = cli("calibrate", "--from-journal", db, "--check", "--json")  # the command it names
    assert check.code == 1  # and it does: both token counts
    fields = {d["field"] for d in check.json()["drift"]}  # (latency_s too, as HTTP runs it)
    assert {"prompt_tokens", "completion_tokens"} <= fields and "p_ok" not in fields


def test_runs_that_cost_what_was_planned_say_nothing_more(tmp_path: Path) -> None:
    """On the simulator the runs draw what the planner reckons: retried, routed, failing."""
    from trilemma.experiments.trials import time_scaled
    from trilemma.report.html import batch_report

    for name, n in (("faq.yaml", 60), ("routed.yaml", 40), ("starter.yaml", 40)):
        wf = time_scaled(parse_workflow((EXAMPLES / name).read_text()), 0.01)
        inputs = [{"question": f"q{i}"} if wf.inputs else {} for i in range(n)]
        journal = Journal(tmp_path / f"{name}.db")
        r = run_batch(wf, inputs, journal=journal, seed=1, parallel=20)
        assert r.off_plan() == (None, None), (name, r.cost_usd / n, r.count("ok"), r.predicted)
        assert "The runs cost" not in batch_report(journal, r.batch_id)  # nor its page


def test_only_runs_that_went_to_their_end_are_weighed_against_the_plan(tmp_path: Path) -> None:
    """Twenty runs at twice the planned $0.01 are off the plan; not where one stopped on the
    ceiling, nor with nineteen, nor counting the lines an earlier session ran."""
    from trilemma import estimate
    from trilemma.run.batch import BatchResult, LineResult

    spec, _ = write(tmp_path, 1)
    predicted = estimate(parse_workflow(spec.read_text()))

    def batch(*lines: LineResult) -> BatchResult:
        return BatchResult("b", "ok", lines, sum(x.cost_usd for x in lines), None, 1.0,
                           predicted, "j.db")  # fmt: skip

    dear = [LineResult(i, "ok", f"r{i}", 0.02) for i in range(1, 21)]
    cost, success = batch(*dear).off_plan()
    assert cost is not None and success is None
    assert (cost.field, cost.measured, cost.profile, cost.p_value) == ("cost", pytest.approx(0.02), 0.01, 0.0)
    assert batch(*dear[:19]).off_plan() == (None, None)
    stopped = LineResult(21, "budget_exhausted", "r21", 0.02)
    assert batch(*dear, stopped).off_plan() == (None, None)
    earlier = [LineResult(i, "ok", f"e{i}", 0.02, from_journal=True) for i in range(21, 30)]
    assert batch(*dear[:19], *earlier).off_plan() == (None, None)
    near = [LineResult(i, "ok", f"r{i}", 0.0105) for i in range(1, 21)]  # 5% over: not off
    assert batch(*near).off_plan() == (None, None)
    assert batch(*dear).to_json()["cost_off_plan"] == {"measured_per_run": pytest.approx(0.02),
                                                       "planned_per_run": 0.01, "p_value": 0.0}  # fmt: skip
    assert batch(*near).to_json()["cost_off_plan"] is None
    failing = [LineResult(i, "ok" if i % 2 else "failed", f"r{i}", 0.01) for i in range(1, 21)]
    cost, success = batch(*failing).off_plan()  # planned: every run ok
    assert cost is None and success is not None and (success.measured, success.profile) == (0.5, 1.0)
    assert batch(*failing).to_json()["success_off_plan"] == {"measured": 0.5, "planned": 1.0,
                                                             "p_value": 0.0}  # fmt: skip
    assert batch(*failing, stopped).off_plan() == (None, None)
    assert batch(*dear).to_json()["success_off_plan"] is None


def test_runs_that_fail_more_than_planned_say_which_guess_to_check(tmp_path: Path, cli) -> None:
    """A gate rejecting every other answer, on a profile guessing p_ok 0.99: 20 runs, half ok."""
    from trilemma.testing import Reply, ScriptedServer

    def answer(payload: dict[str, Any]) -> Reply:
        line = int(payload["messages"][-1]["content"].removeprefix("Answer: q"))
        return Reply("yes" if line % 2 else "no")

    _, lines = write(tmp_path, 20)
    db = tmp_path / "j.db"
    with ScriptedServer(answer) as srv:
        spec = tmp_path / "api.yaml"
        spec.write_text(_on_endpoint_text(srv.url, "usd_per_call: 0.001, latency_s: 0.01, p_ok: 0.99")
                        .replace('"Answer: {question}"}', '"Answer: {question}", gate: {regex: "^yes$"}}'))  # fmt: skip
        r = cli("batch", spec, "--inputs", lines, "--journal", db)
    assert r.code == 1
    out = " ".join(r.out.split())
    assert ("50.00% of the runs ended ok against 99.00% planned, more than chance explains "
            "(p = 1.7e-15): a guess of the spec is off.") in out  # fmt: skip
    assert "The runs cost" not in out  # each run made its one call, as planned
    check = cli("calibrate", "--from-journal", db, "--check", "--json")  # the command it names
    assert check.code == 1 and "p_ok" in {d["field"] for d in check.json()["drift"]}


def _on_endpoint_text(url: str, profile: str) -> str:
    """:func:`_on_endpoint`'s spec, as a file would hold it."""
    return f"""version: 1
inputs: {{question: null}}
models:
  api: {{provider: openai, base_url: "{url}", model: m1, {profile}}}
steps:
  - {{id: answer, model: api, prompt: "Answer: {{question}}"}}
"""


def test_a_batch_off_in_cost_and_success_says_both_in_one_line() -> None:
    from trilemma.plan.agreement import Figure
    from trilemma.report.tables import off_plan_line

    cost = Figure("cost", 0.01, 0.02, (0.019, 0.021), 0.0)
    success = Figure("success", 0.99, 0.5, (0.3, 0.7), 1.7e-25)
    line = off_plan_line(cost, success, "j.db")
    assert line.startswith("The runs cost $0.0200 each against $0.0100 planned (2.00x), more than "
                           "chance explains (p = 0); 50.00% of them ended ok")  # fmt: skip
    assert line.endswith("`trilemma calibrate --from-journal j.db --check` names those the ledger "
                         "contradicts.")  # fmt: skip
    assert off_plan_line(None, success, "j.db").startswith(
        "50.00% of the runs ended ok against 99.00% planned, more than chance explains (p = 1.7e-25)")


def test_a_batch_weighs_its_bill_against_the_plan_s_own_draws_of_one(tmp_path: Path) -> None:
    """routed.yaml's runs cost $0.032, or $0.182 where the classifier sends them to the
    premium branch (14%). Forty runs of which two went there cost 27% under the plan: the
    t test calls it off (two dear bills look rare by the values' own spread), the plan's draws
    of a run say it happens 6.8% of the time (p 0.14), and the batch says nothing."""
    import dataclasses

    from trilemma.experiments.trials import time_scaled
    from trilemma.plan.estimate import bill_draws
    from trilemma.run.batch import LineResult

    wf = time_scaled(parse_workflow((EXAMPLES / "routed.yaml").read_text()), 0.01)
    r = run_batch(wf, [{}] * 20, journal=Journal(tmp_path / "j.db"))
    assert r.cost_drawn is not None and sorted(set(r.cost_drawn.round(6))) == [0.032, 0.182]
    twice = tuple(LineResult(i, "ok", f"r{i}", 0.182 if i < 2 else 0.032) for i in range(40))
    drawn = dataclasses.replace(r, lines=twice)
    assert drawn.off_plan() == (None, None)
    by_t = dataclasses.replace(drawn, cost_drawn=None).off_plan()[0]
    assert by_t is not None and by_t.p_value < 0.05
    # where the plan replayed the runs together (a model's limits), its bill is not the
    # draws': the t test weighs it
    assert r.planned_time is not None and "replayed" not in r.planned()["cost_usd"]
    replayed = dataclasses.replace(drawn, planned_time=dataclasses.replace(
        r.planned_time, cost_usd=drawn.cost_planned_per_run * 40, runs=40))  # fmt: skip
    assert "replayed" in replayed.planned()["cost_usd"]
    by_replay = replayed.off_plan()[0]
    assert by_replay is not None and by_replay.p_value == pytest.approx(by_t.p_value)
    never = dataclasses.replace(r, lines=tuple(dataclasses.replace(x, cost_usd=0.032) for x in twice))
    cost = never.off_plan()[0]  # none of forty: 0.24% of batches
    assert cost is not None and cost.p_value < 0.01
    # the same, drawn: seed 37001 sends two runs of forty to the premium branch; neither the
    # batch nor its page says a guess is off
    from trilemma.report.html import batch_report

    journal = Journal(tmp_path / "drawn.db")
    two = run_batch(time_scaled(wf, 0.1), [{}] * 40, journal=journal, seed=37001, parallel=40)
    assert sum(x.cost_usd > 0.1 for x in two.lines) == 2 and two.count("ok") == 40
    assert two.off_plan() == (None, None) and dataclasses.replace(two, cost_drawn=None).off_plan()[0]
    assert "The runs cost" not in batch_report(journal, two.batch_id)
    # a real endpoint priced by the token varies where the plan holds its counts: the t test
    real = parse_workflow(_on_endpoint_text("http://127.0.0.1:9/v1", "usd_per_1m_input: 1.0, "
                                            "usd_per_1m_output: 2.0, latency_s: 0.01, p_ok: 0.99"))  # fmt: skip
    assert bill_draws(real) is None
    per_call = parse_workflow(_on_endpoint_text("http://127.0.0.1:9/v1", "usd_per_call: 0.001, "
                                                "latency_s: 0.01, p_ok: 0.99"))  # fmt: skip
    assert bill_draws(per_call) is not None


def test_a_batch_plan_says_what_its_runs_bill() -> None:
    """BatchTime.bill_usd, said when a batch on a real endpoint starts: a run's bill times
    the runs, or where a model's limit has the runs replayed together, the replay's (a
    failed run's queued calls never sent)."""
    from trilemma import estimate
    from trilemma.run.batch import batch_time

    free = parse_workflow("version: 1\nmodels: {m: {usd_per_call: 0.01, latency_s: 0.01, p_ok: 1}}\n"
                          "steps: [{id: a, model: m}]\n")  # fmt: skip
    took = batch_time(free, estimate(free), 30, 4)
    assert took.runs == 30 and took.cost_usd is None and took.bill_usd == pytest.approx(0.30)
    waits = parse_workflow("version: 1\nmodels:\n"
                           "  f: {usd_per_call: 0.001, latency_s: 0.01, p_ok: 0.2}\n"
                           "  m: {usd_per_call: 0.001, latency_s: 0.02, p_ok: 1, max_concurrency: 1}\n"
                           "steps: [{id: fast, model: f}, {id: slow, model: m}]\n")  # fmt: skip
    took = batch_time(waits, estimate(waits), 40, 8)
    assert took.cost_usd is not None and took.bill_usd == took.cost_usd < 0.06


def test_the_batch_plan_s_own_time_counts_neither_against_its_deadline_nor_in_its_time(
    tmp_path: Path, cli, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Planning 700 lines behind a model's limits takes 0.4 s (shared-endpoint.yaml): a
    deadline, and the batch's measured time beside the plan's, count from the runs' start.
    The plan is made slow here (0.4 s): four 0.1 s lines at once end under a 0.3 s deadline."""
    from trilemma.run import batch

    planned = batch.batch_time

    def slow(*args: Any, **kwargs: Any) -> Any:
        time.sleep(0.4)
        return planned(*args, **kwargs)

    monkeypatch.setattr(batch, "batch_time", slow)
    spec, lines = write(tmp_path, 4, latency=0.1)
    got = cli("batch", spec, "--inputs", lines, "--journal", tmp_path / "j.db", "--deadline", "0.3",
              "--json").json()  # fmt: skip
    assert (got["status"], got["counts"]["ok"]) == ("ok", 4), got
    assert 0.1 <= got["latency_s"] < 0.3  # the runs' time, not the plan's


def test_the_batch_plan_benchmark_runs(tmp_path: Path) -> None:
    """benchmarks/bench_batch_plan.py reads the plan's inner parts (the pool, the replay, the
    limits), so a change there can break it where no other test looks."""
    script = Path(__file__).resolve().parents[1] / "benchmarks" / "bench_batch_plan.py"
    r = subprocess.run([sys.executable, str(script), "--specs", "1", "--lines", "4",
                        "--repeats", "1"], capture_output=True, text=True, timeout=300,
                       cwd=tmp_path)  # fmt: skip
    assert r.returncode == 0, r.stderr
    for plan in ("rounds", "pool", "pool or limits", "replayed"):
        assert f"\n{plan}: measured / planned " in r.stdout


def test_a_batch_under_a_ceiling_plans_the_runs_that_go_to_their_end_within_it(
    tmp_path: Path, cli, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A cheap check ($0.001) fails half its runs, which then stop; the answer after it costs
    $0.01. Twenty lines, four at a time, under $0.05: the ceiling pays for 4 runs at their
    worst, but the failed runs are cheap, so about nine go to their end, three or four of
    them ok. The plan replays the calls under the ceiling (each holding its reservation
    while in flight, the first refused stopping the batch's starts) and says so in its
    ceiling and runs ok rows; six batches measure the same on average. A spec that stops
    early is not replayed: there a run's mean bill divides the ceiling."""
    monkeypatch.setenv("COLUMNS", "250")  # each row on a line of its own
    spec, lines = write_halting(tmp_path, 0.002, 0.005)
    args = ("batch", spec, "--inputs", lines, "--max-cost", "0.05", "--journal", tmp_path / "j.db")
    plan = cli(*args, "--plan", "--json").json()
    ended, ok = plan["runs_ended_within_ceiling"], plan["runs_ok_within_ceiling"]
    assert plan["runs_covered_at_worst"] == 4 and 8 < ended < 10.5 and 3 < ok < 4.5
    shown = " ".join(cli(*args, "--plan").out.split())
    assert f"runs ok │ 10.0 of 20 (50.00%); {ok:.1f} of them within the ceiling │" in shown
    assert (f"ceiling │ $0.0500: about {ended:.1f} of 20 runs go to their end within it; it pays "
            "for 4 of 20 runs even at their worst │") in shown  # fmt: skip
    runs = [cli(*args, "--seed", str(s), "--json") for s in range(1, 7)]
    # the line the batch starts with says it too, before anything is spent
    stops = f"stopping the batch at about {plan['latency_within_ceiling_s']:.2f}s"
    assert f"s planned; the ceiling lets about {ended:.1f} of 20 runs go to their end, {stops}; if" in runs[0].err
    got = [r.json() for r in runs]
    assert all(g["status"] == "budget_exhausted" and g["cost_usd"] <= 0.05 + 1e-12 for g in got)
    assert all(g["predicted"]["runs_ended_within_ceiling"] == ended for g in got)
    measured = np.mean([g["counts"]["ok"] + g["counts"]["failed"] for g in got])
    assert abs(measured - ended) < 1.5, (measured, ended)  # 8.6 measured over twelve seeds
    assert abs(np.mean([g["counts"]["ok"] for g in got]) - ok) < 1.0

    stops = tmp_path / "stops.yaml"
    stops.write_text("version: 1\nmodels: {small: {usd_per_call: 0.002, latency_s: 0.01, p_ok: 0.7},"
                     " premium: {usd_per_call: 0.03, latency_s: 0.04, p_ok: 0.985}}\nsteps: "
                     "[{id: guess, model: small, gate: {regex: '^\\d+$'}, sim: {ok: '42', bad: x}},"
                     " {id: research, model: premium, retries: 1}, {id: answer, model: premium,"
                     " retries: 1, after: [research]}]\nstop_when: guess\n")  # fmt: skip
    args = ("batch", stops, "--inputs", lines, "--max-cost", "0.3", "--journal", tmp_path / "k.db")
    plan = cli(*args, "--plan", "--json").json()
    ended = plan["runs_ended_within_ceiling"]  # $0.3 over $0.0203 a run, less two in flight
    assert plan["runs_covered_at_worst"] == 2 and 12 < ended < 13.5
    assert plan["runs_ok_within_ceiling"] == pytest.approx(ended * plan["predicted"]["ok_lines"] / 20)
    got = [cli(*args, "--seed", str(s), "--json").json()["counts"] for s in range(1, 7)]
    measured = np.mean([c["ok"] + c["failed"] for c in got])
    assert abs(measured - ended) < 3, (measured, ended)  # 11.8 measured over twelve seeds
