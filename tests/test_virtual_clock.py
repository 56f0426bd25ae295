"""Simulated runs on a virtual clock (``--time-scale 0``): every wait takes no real time and
ends exactly when due, while the run's own work and other threads' keep real time."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import pytest

from trilemma import load_workflow, parse_workflow
from trilemma._tasks import VirtualClockLoop, run_whole, virtual_time
from trilemma.errors import DeadlineExceeded, NotAJournal, UsageError
from trilemma.experiments.sweep import Limits, budget_sweep
from trilemma.experiments.trials import repeat
from trilemma.journal import Journal
from trilemma.run.budget import Clock
from trilemma.run.gates import GateThread

from .conftest import EXAMPLES


def virtual(coro):  # type: ignore[no-untyped-def]
    with virtual_time():
        return run_whole(coro)


def test_idle_waits_are_skipped_and_end_exactly_when_due() -> None:
    async def main() -> tuple[float, float | None, list[str]]:
        loop = asyncio.get_running_loop()
        assert isinstance(loop, VirtualClockLoop)
        order: list[str] = []

        async def after(seconds: float, name: str) -> None:
            await asyncio.sleep(seconds)
            order.append(name)

        await asyncio.sleep(7)  # a deadline made later counts from then
        start, deadline = loop.time(), Clock(time.time() + 5.5)
        for _ in range(100):
            await asyncio.sleep(0.02)
        await asyncio.gather(after(3.0, "late"), after(1.0, "early"), after(2.0, "middle"))
        left = deadline.remaining()
        deadline.check()
        await asyncio.sleep(0.5)
        with pytest.raises(DeadlineExceeded):
            deadline.check()
        return loop.time() - start - 0.5, left, order

    started = time.perf_counter()
    took, left, order = virtual(main())
    real = time.perf_counter() - started
    assert order == ["early", "middle", "late"]
    # 2 s of sleeps and 3 s for the three: 5 s on the clock, the real overhead only past it
    assert 5.0 <= took < 5.05
    assert left is not None and 0.45 < left <= 0.5  # the wall-clock deadline nears as fast
    assert real < 1.0  # nothing slept: a real clock would have taken 12.5 s
    # outside virtual_time the loop is asyncio's own
    assert not isinstance(run_whole(_the_loop()), VirtualClockLoop)


async def _the_loop() -> asyncio.AbstractEventLoop:
    return asyncio.get_running_loop()


def test_work_in_another_thread_keeps_the_clock_real() -> None:
    """A timer 10 s away must not fire before a thread's answer due in 50 ms of real time:
    the loop cannot see that answer coming, so it waits for it on a real clock. So must the
    default executor's shutdown when the loop closes (since Python 3.12 under a 300 s timer,
    which skipped fired at once: "did not finish joining its threads", an error here)."""

    def slow() -> str:
        time.sleep(0.05)
        return "done"

    def slow_gate(text: str) -> None:
        time.sleep(0.05)

    async def main() -> tuple[str, float]:
        loop = asyncio.get_running_loop()
        start = loop.time()
        async with asyncio.timeout(10):
            got = await loop.run_in_executor(None, slow)
            await GateThread().check(slow_gate, "an answer")  # its own thread, not a pool's
        return got, loop.time() - start

    got, took = virtual(main())
    assert got == "done" and took < 1.0


def test_a_rate_limit_refills_on_the_virtual_clock(tmp_path: Path) -> None:
    """Two requests a minute: five one-call steps go two at once, then one every 30 s."""
    wf = parse_workflow("""
version: 1
models:
  m: {usd_per_call: 0.001, latency_s: 1.0, p_ok: 1.0, rpm: 2}
steps:
""" + "".join(f"  - {{id: s{i}, model: m}}\n" for i in range(5)))
    started = time.perf_counter()
    # (a limiter on the real clock never refills while the virtual one skips: the deadline ends it)
    [trial] = repeat(wf, 1, Journal(tmp_path / "j.db"), time_scale=0, deadline_s=200)
    assert trial.status == "ok"
    assert 91.0 <= trial.latency_s < 91.5  # calls at 0, 0, 30, 60 and 90 s, one second each
    assert time.perf_counter() - started < 10


def test_a_deadline_sweep_on_a_virtual_clock_measures_what_the_planner_predicts(
    tmp_path: Path,
) -> None:
    """ticket.yaml's critical path is 14 s. At --time-scale 0.01 the timer slack of its
    sequential waits, scaled up 100x, put every run past a 14.05 s deadline (0% against
    the planner's 92.8%); on a virtual clock a run is late only when a retry lengthens it."""
    wf = load_workflow(EXAMPLES / "ticket.yaml")
    sw = budget_sweep(wf, [Limits(None, 14.05)], 100, Journal(tmp_path / "j.db"), seed=0,
                      time_scale=0)  # fmt: skip
    [row] = sw.rows
    assert row.predicted_success is not None and row.predicted_success == pytest.approx(0.928, abs=0.01)
    assert abs(row.success_rate - row.predicted_success) < 0.08
    # the runs stopped are those whose unbudgeted twins took longer than the deadline
    assert row.stopped == row.baseline_over and row.ok == row.baseline_ok_within
    assert sw.baseline.latency_mean_s == pytest.approx(sw.predicted.latency_expected_s, rel=0.02)
    assert sw.time_scale == 0 and sw.to_json()["time_scale"] == 0
    # four runs at a time on one virtual clock: each deadline counted from its own start
    four = budget_sweep(wf, [Limits(None, 14.05)], 100, Journal(tmp_path / "k.db"), seed=0,
                        time_scale=0, parallel=4)  # fmt: skip
    assert (four.rows[0].ok, four.rows[0].stopped) == (row.ok, row.stopped)
    assert four.baseline.latency_mean_s == pytest.approx(sw.baseline.latency_mean_s, rel=0.01)


def test_a_real_endpoint_cannot_run_on_a_virtual_clock(cli, tmp_path: Path, write) -> None:
    spec = write("""
version: 1
models:
  api: {provider: openai, base_url: "http://127.0.0.1:9/v1", model: x, usd_per_call: 0.01,
        latency_s: 1, p_ok: 0.9}
steps:
  - {id: a, model: api}
""")
    for command in ("compare", "run"):
        got = cli(command, spec, "--time-scale", "0", "--journal", tmp_path / "j.db")
        assert got.code == 2
        assert "model 'api' is a real endpoint, whose time cannot be kept on a virtual clock" in got.err
    assert not (tmp_path / "j.db").exists()
    from trilemma import execute

    api = load_workflow(spec)
    for scale, what in ((0, "kept on a virtual clock"), (0.5, "scaled")):
        with pytest.raises(UsageError, match=f"time_scale {scale:g}: model 'api' .* cannot be {what}"):
            execute(api, journal=Journal(tmp_path / "k.db"), time_scale=scale)
    assert Journal(tmp_path / "k.db").runs() == []  # refused before anything was journaled
    with pytest.raises(UsageError, match=r"give a factor in \(0, 1\] \(or 0, a virtual clock\)"):
        repeat(load_workflow(EXAMPLES / "single.yaml"), 1, Journal(tmp_path / "k.db"),
               time_scale=-1)  # fmt: skip


def test_compare_on_a_virtual_clock_says_so(cli, tmp_path: Path) -> None:
    got = cli("compare", EXAMPLES / "single.yaml", "--runs", "20", "--time-scale", "0",
              "--journal", tmp_path / "j.db")  # fmt: skip
    assert got.code == 0, got.err
    assert "Simulated time ran on a virtual clock" in got.out
    assert "faster and is reported unscaled" not in got.out


def test_execute_at_time_scale_0_makes_its_own_virtual_clock(cli, tmp_path: Path) -> None:
    """The blocking form keeps the virtual clock itself; awaited on an ordinary loop, time
    scale 0 is refused (that loop would take real time and journal it as virtual)."""
    from trilemma import execute, execute_async

    wf = load_workflow(EXAMPLES / "ticket.yaml")
    journal = Journal(tmp_path / "j.db")
    started = time.perf_counter()
    r = execute(wf, journal=journal, seed=3, time_scale=0)
    assert time.perf_counter() - started < 5  # a real clock: 14 s at least
    assert r.status == "ok" and r.latency_s >= 14.0
    assert journal.run(r.run_id)["time_scale"] == 0
    page = tmp_path / "run.html"
    assert cli("report", r.run_id, "--journal", journal.path, "--out", page).code == 0
    assert "Simulated time ran on a virtual clock" in page.read_text()
    assert "clock times follow simulated time from the run's real start" in page.read_text()

    async def plain() -> None:
        await execute_async(wf, journal=journal, seed=3, time_scale=0)

    with pytest.raises(UsageError, match="time_scale 0 is a virtual clock"):
        asyncio.run(plain())


def test_run_takes_a_time_scale_and_reports_the_spec_s_own_time(cli, tmp_path: Path) -> None:
    """`trilemma run --time-scale 0`: the ticket's 14 s of simulated calls take no real time
    to wait, and the run's latency is the spec's own; at 0.1 the run takes a tenth of it
    and is reported unscaled, beside the estimate of the spec as written."""
    db = tmp_path / "j.db"
    started = time.perf_counter()
    virtual = cli("run", EXAMPLES / "ticket.yaml", "--seed", "3", "--time-scale", "0",
                  "--journal", db, "--json")  # fmt: skip
    assert virtual.code == 0, virtual.err
    assert time.perf_counter() - started < 10  # a real clock: 14 s at least
    doc = virtual.json()
    assert doc["time_scale"] == 0 and doc["status"] == "ok" and doc["latency_s"] >= 14.0
    assert Journal(db).run(doc["run_id"])["time_scale"] == 0
    fast = cli("run", EXAMPLES / "ticket.yaml", "--seed", "3", "--time-scale", "0.1",
               "--journal", db, "--json").json()  # fmt: skip
    assert fast["status"] == "ok" and fast["time_scale"] == 0.1
    assert 14.0 <= fast["latency_s"] < 20.0  # unscaled: 1.4 s of real time, times 10
    assert fast["predicted"] == doc["predicted"]  # the spec as written, not its scaled copy
    shown = cli("run", EXAMPLES / "ticket.yaml", "--seed", "3", "--time-scale", "0",
                "--journal", db).out  # fmt: skip
    assert "Simulated time ran on a virtual clock" in " ".join(shown.split())
    refused = cli("resume", doc["run_id"], "--journal", db)
    assert refused.code == 2 and "which a resume does not take up" in refused.err


def test_a_run_in_simulated_time_its_deadline_cut_is_run_again_not_resumed(
    cli, tmp_path: Path
) -> None:
    """A 1 s deadline (the spec's time) cuts the ticket on a virtual clock as in real time;
    the hint runs it again under the worst case rather than naming a resume that refuses."""
    db = tmp_path / "j.db"
    got = cli("run", EXAMPLES / "ticket.yaml", "--time-scale", "0", "--deadline", "1",
              "--journal", db)  # fmt: skip
    said = " ".join(got.out.split())
    assert got.code == 1 and "deadline" in got.err
    assert "to run it to the end: the same command with --deadline 30.5" in said
    assert "a run in simulated time is run again, not resumed" in said
    assert "trilemma resume" not in said
    run = Journal(db).runs()[0]
    assert run["status"] == "deadline" and run["latency_s"] < 1.5  # the spec's own second
    bad = cli("run", EXAMPLES / "ticket.yaml", "--time-scale", "2", "--journal", db)
    assert bad.code == 2 and "--time-scale 2: give a factor in (0, 1]" in bad.err


def test_ctrl_c_in_a_run_in_simulated_time_ends_it_rather_than_leave_it_for_resume(
    cli, tmp_path: Path
) -> None:
    """A run at --time-scale 0.5 (the ticket: 7 s) stopped by Ctrl-C after its first step:
    exit 130, the line says it is run again, and its row is closed (failed, no pid), not
    left `running` for a resume that would refuse it; doctor finds nothing to do."""
    import signal
    import subprocess
    import sys

    from trilemma.testing import interruptible

    db = tmp_path / "j.db"
    proc = subprocess.Popen(
        [sys.executable, "-m", "trilemma", "run", str(EXAMPLES / "ticket.yaml"), "--journal",
         str(db), "--time-scale", "0.5"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, preexec_fn=interruptible,
    )  # fmt: skip
    try:
        deadline, done = time.monotonic() + 60, 0
        while not done and time.monotonic() < deadline and proc.poll() is None:
            time.sleep(0.1)  # until its first step is journaled
            try:
                seen = Journal(db, create=False)
            except NotAJournal:  # not made yet, or made but not yet migrated
                continue
            with seen:
                done = sum(len(seen.steps(r["run_id"])) for r in seen.runs())
        assert done, "no step ended"
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=30)
    finally:
        proc.kill()
        proc.communicate()  # reaped, its pipes closed, whatever happened above
    assert proc.returncode == 130, err
    assert "ran in simulated time, which a resume does not take up: run it again" in err
    (run,) = Journal(db).runs()
    assert run["status"] == "failed" and run["pid"] is None
    assert run["error"] == "interrupted (Ctrl-C): a run in simulated time, which is not resumed"
    assert cli("doctor", "--journal", db).out.endswith("all good\n")


def test_many_runs_from_the_top_level_on_a_virtual_clock(tmp_path: Path) -> None:
    """``trilemma.execute_many`` at time scale 0: the runs, four at a time on one virtual
    clock, come out as one at a time, each a 14 s workflow taking no real time to wait."""
    import trilemma

    wf = load_workflow(EXAMPLES / "ticket.yaml")
    journal = Journal(tmp_path / "j.db")
    started = time.perf_counter()
    many = trilemma.execute_many(wf, list(range(40)), journal=journal, parallel=4, time_scale=0)
    assert time.perf_counter() - started < 20  # a real clock: 140 s at least
    alone = [trilemma.execute(wf, journal=journal, seed=s, time_scale=0) for s in range(3)]
    assert [(r.status, r.cost_usd) for r in many[:3]] == [(r.status, r.cost_usd) for r in alone]
    assert all(r.latency_s >= 14.0 for r in many)
    assert {journal.run(r.run_id)["time_scale"] for r in many} == {0}


def test_a_virtual_runs_journal_keeps_simulated_time(tmp_path: Path) -> None:
    """The journal's times of a run on a virtual clock follow its simulated time from the
    run's real start, so its report's timeline spans the seconds its latencies say (they
    spanned the milliseconds the run took); each of four runs at a time from its own start."""
    import trilemma

    wf = load_workflow(EXAMPLES / "ticket.yaml")
    journal = Journal(tmp_path / "j.db")
    before = time.time()
    runs = trilemma.execute_many(wf, [3, 4, 5, 6], journal=journal, parallel=4, time_scale=0)
    assert time.time() - before < 10  # the runs took no simulated time to wait
    for r in runs:
        row = journal.run(r.run_id)
        assert before <= row["started_at"] <= time.time()  # the start is real
        assert row["finished_at"] - row["started_at"] == pytest.approx(r.latency_s, abs=0.05)
        calls = journal.calls(r.run_id)
        for c in calls:
            assert c["finished_at"] - c["started_at"] == pytest.approx(c["latency_s"], abs=0.01)
        first = min(calls, key=lambda c: c["started_at"])
        assert (first["step_id"], first["started_at"] - row["started_at"]) == ("triage", pytest.approx(0, abs=0.05))
        by_step = {c["step_id"]: c for c in calls}  # the last attempt of each
        assert by_step["reply"]["started_at"] - row["started_at"] >= 12.0  # four steps of 2 s or more before it
    # an ordinary loop's run keeps the real clock
    real = trilemma.execute(parse_workflow("""
version: 1
models: {m: {usd_per_call: 0.001, latency_s: 0.05, p_ok: 1.0}}
steps: [{id: a, model: m}]
"""), journal=journal, seed=0)
    row = journal.run(real.run_id)
    assert before <= row["started_at"] <= row["finished_at"] <= time.time()


def test_a_run_cut_by_its_deadline_never_measures_less(tmp_path: Path) -> None:
    """The run's latency counts from when its deadline does: ticket.yaml's 14 s of waits on
    a virtual clock, under deadlines of 14 s (every run cut), 14.001 s (the executor's and
    journal's own time, kept real, puts runs either side) and 14.05 s. Runs cut at 14.001 s
    measured 13.9999-14.0005 s when the latency counted from the first step and the
    deadline from before the executor was made."""
    from trilemma import execute

    wf = load_workflow(EXAMPLES / "ticket.yaml")
    journal = Journal(tmp_path / "j.db")
    for deadline in (14.0, 14.001, 14.05):  # every run cut; either side; those not retried ok
        statuses = []
        for seed in range(10):
            r = execute(wf, journal=journal, seed=seed, time_scale=0, deadline_s=deadline)
            statuses.append(r.status)
            if r.status == "deadline":
                assert r.latency_s >= deadline
            else:  # in time, but for the loop's last turn (the closing commit is not counted)
                assert r.status == "ok" and r.latency_s < deadline + 1e-4
        if deadline == 14.0:
            assert set(statuses) == {"deadline"}
        elif deadline == 14.05:
            assert statuses.count("ok") >= 8  # 92.8% of runs need no retry
