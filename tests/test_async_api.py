"""The awaitable API: runs inside a loop that is already running (an async server, a notebook)."""

from __future__ import annotations

import asyncio
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

import trilemma
from trilemma import Journal, UsageError, parse_workflow
from trilemma.journal.store import abandoned
from trilemma.run.executor import Event

SLOW_CHAIN = """version: 1
models:
  m: {usd_per_call: 0.01, latency_s: 0.05, p_ok: 1.0}
  slow: {usd_per_call: 0.02, latency_s: 3.0, p_ok: 1.0}
steps:
  - {id: a, model: m}
  - {id: b, model: slow, after: [a]}
"""

PAIR = """version: 1
models:
  m: {usd_per_call: 0.01, latency_s: 0.2, p_ok: 1.0}
steps:
  - {id: a, model: m}
  - {id: b, model: m, after: [a]}
"""


def test_runs_awaited_together_share_a_journal_and_overlap(tmp_path: Path) -> None:
    journal = Journal(tmp_path / "j.db")
    wf = parse_workflow(PAIR)

    async def main() -> list[trilemma.RunResult]:
        return list(await asyncio.gather(
            *(trilemma.execute_async(wf, journal=journal, seed=seed) for seed in (1, 2, 3))
        ))  # fmt: skip

    results = asyncio.run(main())
    assert [r.status for r in results] == ["ok"] * 3
    assert all(r.outputs == {"a": r.outputs["a"], "b": r.outputs["b"]} for r in results)
    rows = [journal.run(r.run_id) for r in results]
    assert all(row is not None and row["status"] == "ok" and row["calls"] == 2 for row in rows)
    # each started before the others ended: one loop ran them side by side
    assert max(row["started_at"] for row in rows if row) < min(row["finished_at"] for row in rows if row)


def test_blocking_runs_one_after_another_leave_nothing_behind(tmp_path: Path) -> None:
    """A process that runs many (compare, a service calling execute) keeps no run's garbage:
    the heap a run starts with sits out the collector during it, and each run used to freeze
    the reference cycles the one before left (its finished task among them), for good."""
    import gc

    journal = Journal(tmp_path / "j.db")
    wf = parse_workflow(PAIR.replace("latency_s: 0.2", "latency_s: 0.001"))

    def tasks_alive() -> int:
        return sum(isinstance(o, asyncio.Task) for o in gc.get_objects())

    trilemma.execute(wf, journal=journal, seed=0)  # what the first run imports and keeps
    before = tasks_alive(), len(gc.get_objects())
    for seed in range(1, 41):
        assert trilemma.execute(wf, journal=journal, seed=seed).status == "ok"
    assert tasks_alive() == before[0]
    assert len(gc.get_objects()) - before[1] < 40 * 10  # ~110 objects a run were kept


def test_the_blocking_forms_inside_a_running_loop_name_what_to_await(tmp_path: Path) -> None:
    journal = Journal(tmp_path / "j.db")
    wf = parse_workflow(PAIR)

    async def main() -> list[str]:
        errors = []
        for call in (
            lambda: trilemma.execute(wf, journal=journal),
            lambda: trilemma.resume(journal, "latest"),
            lambda: trilemma.run_batch(wf, [{}], journal=journal),
        ):
            with pytest.raises(UsageError) as caught:
                call()
            errors.append(str(caught.value))
        return errors

    errors = asyncio.run(main())
    assert "await trilemma.execute_async(...)" in errors[0] and errors[0].startswith("execute()")
    assert "await trilemma.resume_async(...)" in errors[1]
    assert "await trilemma.run_batch_async(...)" in errors[2]
    assert journal.runs() == []  # nothing was started


def test_a_cancelled_run_is_left_for_resume_which_any_process_may_do(tmp_path: Path, cli) -> None:
    journal = Journal(tmp_path / "j.db")
    wf = parse_workflow(SLOW_CHAIN)
    a_done = asyncio.Event()

    def on_event(event: Event) -> None:
        if event.kind == "step_done" and event.step == "a":
            a_done.set()

    async def main() -> str:
        run = asyncio.create_task(trilemma.execute_async(wf, journal=journal, on_event=on_event))
        await a_done.wait()
        await asyncio.sleep(0.05)  # b is in flight
        run.cancel()
        with pytest.raises(asyncio.CancelledError):
            await run
        return journal.runs()[0]["run_id"]

    run_id = asyncio.run(main())
    row = journal.run(run_id)
    assert row is not None and row["status"] == "running" and row["pid"] is None
    assert abandoned(row)  # `trilemma runs` says interrupted; `trilemma resume` may go on
    listed = cli("runs", "--journal", journal.path)
    assert "│ interrupted │" in listed.out and "its task cancelled" in listed.out, listed.out
    assert journal.steps(run_id)["a"]["status"] == "done"

    async def finish() -> trilemma.RunResult:
        return await trilemma.resume_async(journal, run_id)

    result = asyncio.run(finish())
    assert result.status == "ok" and result.steps["a"].from_journal
    calls = journal.calls(run_id)
    assert [c["step_id"] for c in calls if c["outcome"] == "ok"] == ["a", "b"]
    assert sum(1 for c in calls if c["step_id"] == "a") == 1  # a was not called again


def test_a_batch_awaited_in_a_running_loop(tmp_path: Path) -> None:
    journal = Journal(tmp_path / "j.db")
    wf = parse_workflow(PAIR)

    async def main() -> trilemma.BatchResult:
        return await trilemma.run_batch_async(wf, [{}, {}, {}], journal=journal, parallel=3)

    result = asyncio.run(main())
    assert result.status == "ok" and [line.status for line in result.lines] == ["ok"] * 3
    assert len(journal.batch_runs(result.batch_id)) == 3


def _ctrl_c_while_its_loop_is_made(call: Callable[[], object], monkeypatch: pytest.MonkeyPatch) -> None:
    """``call`` (which makes an event loop) with a Ctrl-C landing inside the loop's
    ``__init__``: it raises KeyboardInterrupt and leaves no "Exception ignored" traceback
    (the loop's ``__del__`` failing on a half-made loop) and no "never awaited" warning."""
    import gc
    import signal
    import sys
    import warnings
    from asyncio import coroutines

    made = []

    def ctrl_c_now() -> bool:  # called early in BaseEventLoop.__init__, before _debug is set
        made.append(True)
        signal.raise_signal(signal.SIGINT)
        return False

    ignored: list[Any] = []
    monkeypatch.setattr(sys, "unraisablehook", ignored.append)
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)  # (a background job
    try:  # ignores it)
        with warnings.catch_warnings(record=True) as warned:
            warnings.simplefilter("always")
            with monkeypatch.context() as patched, pytest.raises(KeyboardInterrupt):
                patched.setattr(coroutines, "_is_debug_mode", ctrl_c_now)
                call()
            gc.collect()
    finally:
        signal.signal(signal.SIGINT, previous)
    assert made and ignored == [], [(u.exc_type, u.exc_value) for u in ignored]
    assert not [w for w in warned if "never awaited" in str(w.message)], warned


def test_a_ctrl_c_while_a_run_s_loop_is_made_leaves_no_debris(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Ctrl-C (or SIGTERM, taken as one) landing while ``execute`` made its event loop cut the
    loop's ``__init__`` short: Python then printed an "Exception ignored in BaseEventLoop.__del__"
    traceback (AttributeError: no attribute '_debug') and "coroutine 'execute_async' was
    never awaited", seen when `trilemma demo` was stopped during its compare. The loop is now
    made whole first and the interrupt raised after; the run's coroutine is closed."""
    journal = Journal(tmp_path / "j.db")
    _ctrl_c_while_its_loop_is_made(
        lambda: trilemma.execute(parse_workflow(PAIR), journal=journal, seed=1), monkeypatch
    )
    # and a run after it goes as ever
    assert trilemma.execute(parse_workflow(PAIR), journal=journal).status == "ok"


def test_every_command_that_makes_a_loop_makes_it_whole(
    redis_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Not only runs: `budget show` (here against a real Redis), `budget reset`, `cache
    clear`'s shared tier, calibrate and compare's probe each make a loop too, and none of them
    may leave the debris above; trilemma's code makes no loop but through ``run_whole``."""
    from trilemma.run.shared_budget import shared_state

    _ctrl_c_while_its_loop_is_made(
        lambda: shared_state(redis_url, "whole-loop", known=False), monkeypatch
    )
    assert shared_state(redis_url, "whole-loop", known=False).spent == 0  # and after, as ever
    src = Path(trilemma.__file__).parent
    makers = {str(path.relative_to(src)) for path in src.rglob("*.py")
              if re.search(r"asyncio\.run\(|new_event_loop\(|Runner\(", path.read_text())}  # fmt: skip
    assert makers == {"_tasks.py"}


def test_a_blocking_call_with_arguments_it_does_not_take_leaves_nothing_set(
    tmp_path: Path,
) -> None:
    """``execute(..., nope=1)`` raises TypeError as the coroutine function would, and the
    flag that tells a run it has a loop of its own is not left set for later awaited runs."""
    from trilemma.run.executor import OWN_LOOP

    with pytest.raises(TypeError, match="nope"):
        trilemma.execute(parse_workflow(PAIR), journal=Journal(tmp_path / "j.db"), nope=1)  # type: ignore[call-arg]
    assert OWN_LOOP.get() is False


def test_execute_many_gives_each_run_its_inputs_and_refuses_a_count_that_does_not_match(
    tmp_path: Path,
) -> None:
    from trilemma.run.session import execute_many

    wf = parse_workflow("""version: 1
inputs: {q: null}
models: {m: {usd_per_call: 0.001, latency_s: 0.01, p_ok: 1.0}}
steps: [{id: a, model: m, prompt: "Q: {q}"}]
""")
    with Journal(tmp_path / "j.db") as journal:
        got = execute_many(wf, [1, 2, 3], journal=journal, parallel=2,
                           inputs=[{"q": "one"}, {"q": "two"}, {"q": "three"}])  # fmt: skip
        assert [r.status for r in got] == ["ok"] * 3
        asked = {r["run_id"]: r["inputs_json"] for r in journal.runs()}
        assert [asked[r.run_id] for r in got] == ['{"q":"one"}', '{"q":"two"}', '{"q":"three"}']
        with pytest.raises(UsageError, match="3 sets of inputs for 2 runs: give one per run"):
            execute_many(wf, [1, 2], journal=journal, inputs=[{"q": "a"}] * 3)
        with pytest.raises(UsageError, match="q"):  # each run's inputs checked before any run
            execute_many(wf, [1, 2], journal=journal, parallel=2, inputs=[{"q": "a"}, {}])
        assert len(journal.runs()) == 3


def test_in_turns_takes_the_first_alone_then_parallel_at_a_time_until_told_to_stop() -> None:
    from trilemma._tasks import in_turns

    now, most, started = [0], [0], []

    async def work(i: int) -> None:
        started.append((i, now[0]))
        now[0] += 1
        most[0] = max(most[0], now[0])
        await asyncio.sleep(0.01)
        now[0] -= 1

    asyncio.run(in_turns(range(9), 3, work, alone=1))
    assert [i for i, _ in started] == list(range(9)) and started[0][1] == 0 and most[0] == 3
    assert started[1][1] == 0  # the second started only once the first had ended
    started.clear()
    asyncio.run(in_turns(range(9), 3, work, stop=lambda: len(started) >= 4))
    assert len(started) == 4  # no item starts once stop() says so; those under way end
    started.clear()
    asyncio.run(in_turns(range(5), 3, work, stop=lambda: True, alone=2))
    assert started == []
