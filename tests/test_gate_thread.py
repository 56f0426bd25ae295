"""The thread a run's gates run in: one per run, reused from check to check, let go when
the run ends or idles, and never in the way of a deadline."""

from __future__ import annotations

import asyncio
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from trilemma.errors import GateRejected
from trilemma.run.gates import GateThread


class Recorder:
    """A gate that notes the thread it ran in, rejects "no", raises on "boom" and waits
    for ``release`` on "wait"."""

    def __init__(self) -> None:
        self.threads: list[threading.Thread] = []
        self.release = threading.Event()

    def __call__(self, text: str) -> None:
        self.threads.append(threading.current_thread())
        if text == "wait":
            assert self.release.wait(10)
        if text == "no":
            raise GateRejected("no is no")
        if text == "boom":
            raise ValueError("the gate broke")


def ended(thread: threading.Thread, within: float = 5.0) -> bool:
    thread.join(within)
    return not thread.is_alive()


@pytest.fixture
def uncaught(monkeypatch: pytest.MonkeyPatch) -> list[Any]:
    """What a thread raised and nobody caught (the gate thread must catch everything)."""
    seen: list[Any] = []
    monkeypatch.setattr(threading, "excepthook", seen.append)
    return seen


def test_one_thread_checks_a_run_s_gates_in_turn_and_hands_back_verdicts(uncaught) -> None:
    gate = Recorder()
    gates = GateThread()

    async def main() -> None:
        for _ in range(20):
            await gates.check(gate, "yes")
        await asyncio.gather(*(gates.check(gate, "yes") for _ in range(20)))
        with pytest.raises(GateRejected, match="no is no"):
            await gates.check(gate, "no")
        with pytest.raises(ValueError, match="the gate broke"):
            await gates.check(gate, "boom")
        await gates.check(gate, "yes")  # the thread took no harm
        gates.close()

    asyncio.run(main())
    assert len(gate.threads) == 43
    assert len(set(gate.threads)) == 1  # not a thread each
    worker = gate.threads[0]
    assert worker is not threading.main_thread() and worker.daemon
    assert ended(worker)
    assert uncaught == []


def test_a_check_after_close_or_after_an_idle_spell_still_gets_its_verdict(uncaught) -> None:
    gate = Recorder()
    gates = GateThread()
    gates.IDLE_S = 0.05

    async def main() -> None:
        await gates.check(gate, "yes")
        gates.close()
        await gates.check(gate, "yes")  # a close with a check behind it
        await asyncio.sleep(0.5)  # idle: the thread ends
        assert ended(gate.threads[-1], 0)
        with pytest.raises(GateRejected):
            await gates.check(gate, "no")  # in a new one
        gates.close()
        gates.close()

    asyncio.run(main())
    assert len(gate.threads) == 3 and gate.threads[0] is not gate.threads[-1]
    assert all(ended(t) for t in gate.threads)
    assert uncaught == []


def test_a_gate_that_hangs_is_left_behind_and_its_thread_ends_when_it_does(uncaught) -> None:
    """The deadline cancels the wait at once; the verdict that comes later, after the run's
    loop has closed, goes nowhere, and the thread still ends."""
    gate = Recorder()
    gates = GateThread()
    gates.IDLE_S = 0.05

    async def main() -> float:
        began = time.perf_counter()
        with pytest.raises(TimeoutError):
            async with asyncio.timeout(0.2):
                await gates.check(gate, "wait")
        took = time.perf_counter() - began
        gates.close()
        return took

    took = asyncio.run(main())  # the loop is closed now
    assert took < 1.0
    worker = gate.threads[0]
    assert worker.is_alive()  # still in the gate
    gate.release.set()
    assert ended(worker)
    assert uncaught == []


def test_a_run_s_gated_steps_share_its_gate_thread_which_ends_with_the_run(
    cli, tmp_path: Path
) -> None:
    """Twelve gated steps, chained and side by side, in one thread, not twelve; the run lets
    it go as it ends, rather than after GateThread.IDLE_S."""
    import sys

    (tmp_path / "threadgates.py").write_text(
        "import threading\nseen = []\n\n"
        "def note(text):\n    seen.append(threading.current_thread())\n    return True\n"
    )
    steps = "\n".join(
        f"  - {{id: s{i}, model: m, gate: {{python: 'threadgates:note'}}"
        + (f", after: [s{i - 1}]}}" if i % 2 else "}")
        for i in range(12)
    )
    path = tmp_path / "spec.yaml"
    path.write_text(
        "version: 1\nmodels:\n  m: {usd_per_call: 0.0, latency_s: 0.001, p_ok: 1.0}\n"
        f"steps:\n{steps}\n"
    )
    r = cli("run", path, "--journal", tmp_path / "j.db", "--json")
    assert r.code == 0, r.err
    seen = sys.modules["threadgates"].seen
    assert len(seen) == 12 and len(set(seen)) == 1
    assert ended(seen[0], GateThread.IDLE_S / 4)
