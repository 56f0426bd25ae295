"""Event loop helpers: waiting for background tasks (the journal's writer, the shared cache's
writes), work taken a few at a time (a batch's runs, a compare's), an event loop made
whole for every blocking call that runs one, and a virtual clock for simulated runs."""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import selectors
import signal
import threading
import time
from collections import deque
from collections.abc import Awaitable, Callable, Coroutine, Iterable, Iterator
from concurrent.futures import Executor
from typing import Any, TypeVar, TypeVarTuple, Unpack

__all__ = ["VirtualClockLoop", "drain_tasks", "in_turns", "loop_now", "outside_work",
           "run_wall_clock", "run_whole", "virtual_time", "whole_loop"]  # fmt: skip

F = TypeVar("F", bound="asyncio.Future[Any]")
R = TypeVar("R")
T = TypeVar("T")
Ts = TypeVarTuple("Ts")


class _Skipping(selectors.DefaultSelector):
    """The selector of a :class:`VirtualClockLoop`: a wait with nothing to wait for but a
    timer is not waited, its time added to the loop's clock instead."""

    def __init__(self) -> None:
        super().__init__()
        self.skipped = 0.0
        """Seconds of idle waiting skipped so far."""
        self.outside = 0
        """Work under way in other threads, whose answers the loop cannot see coming."""

    def select(self, timeout: float | None = None) -> list[tuple[selectors.SelectorKey, int]]:
        if timeout is None or timeout <= 0 or self.outside:
            return super().select(timeout)
        ready = super().select(0)
        if not ready:
            self.skipped += timeout
        return ready


class VirtualClockLoop(asyncio.SelectorEventLoop):
    """An event loop whose clock jumps over its idle waits.

    When nothing is ready and no other thread owes it an answer, the loop does not sleep
    until its next timer: its clock moves on to it at once. Every wait of a simulated run
    (a call's latency, a backoff, a rate limit's refill, a hedge, the deadline) then takes
    no real time and ends exactly when due, while the run's own work (the executor, the
    journal, the gates) still takes the real time it takes. Timer slack, up to about 1 ms
    per wait on a real clock, is gone.

    Only for runs on the simulator: a socket's answer is not a timer, so a wait for one
    would be skipped past. Work handed to another thread (``run_in_executor``, or inside
    :func:`outside_work`) keeps the clock real until it is back.
    """

    def __init__(self) -> None:
        self._skipping = _Skipping()
        super().__init__(self._skipping)

    @property
    def skipped(self) -> float:
        """Seconds of idle waiting skipped so far."""
        return self._skipping.skipped

    def time(self) -> float:
        return super().time() + self._skipping.skipped

    def run_in_executor(
        self, executor: Executor | None, func: Callable[[Unpack[Ts]], R], *args: *Ts
    ) -> asyncio.Future[R]:
        future = super().run_in_executor(executor, func, *args)
        self._skipping.outside += 1
        future.add_done_callback(self._back)
        return future

    def _back(self, _future: object) -> None:
        self._skipping.outside -= 1

    async def shutdown_default_executor(self, *args: Any, **kwargs: Any) -> None:
        # The default executor's threads are joined from a thread of its own, under a
        # 300 s timer since Python 3.12: skipped, that timer would fire at once.
        self._skipping.outside += 1
        try:
            await super().shutdown_default_executor(*args, **kwargs)
        finally:
            self._skipping.outside -= 1


@contextlib.contextmanager
def outside_work(loop: asyncio.AbstractEventLoop) -> Iterator[None]:
    """While inside, ``loop`` waits on a real clock: another thread owes it an answer (a
    gate's verdict) that a :class:`VirtualClockLoop` could otherwise skip past."""
    if not isinstance(loop, VirtualClockLoop):
        yield
        return
    loop._skipping.outside += 1
    try:
        yield
    finally:
        loop._skipping.outside -= 1


def loop_now() -> float:
    """The running event loop's clock (a virtual one's, if so); ``time.monotonic()``
    outside a loop, which is what asyncio's own clock reads."""
    try:
        return asyncio.get_running_loop().time()
    except RuntimeError:
        return time.monotonic()


def run_wall_clock() -> Callable[[], float]:
    """The wall clock of a run starting now: ``time.time``, but on a
    :class:`VirtualClockLoop` a clock that runs ahead of it by the idle waiting the loop skips
    from now on, so that a simulated trial's journaled times span the seconds its latencies
    say (the run starts at the real time; its calls and end follow on simulated time)."""
    try:
        loop = asyncio.get_running_loop()
    except RuntimeError:
        return time.time
    if not isinstance(loop, VirtualClockLoop):
        return time.time
    base = loop.skipped
    return lambda: time.time() + (loop.skipped - base)


_VIRTUAL: contextvars.ContextVar[bool] = contextvars.ContextVar("trilemma_virtual", default=False)


@contextlib.contextmanager
def virtual_time() -> Iterator[None]:
    """Blocking runs started inside get a :class:`VirtualClockLoop` (simulated runs only)."""
    token = _VIRTUAL.set(True)
    try:
        yield
    finally:
        _VIRTUAL.reset(token)


def _new_loop() -> asyncio.AbstractEventLoop:
    return VirtualClockLoop() if _VIRTUAL.get() else asyncio.new_event_loop()


def whole_loop() -> asyncio.AbstractEventLoop:
    """A new event loop (a :class:`VirtualClockLoop` inside :func:`virtual_time`), built
    whole: a Ctrl-C (or a SIGTERM, which trilemma takes as one) that lands while it is made
    is held until it is, then raised with the loop closed. An event loop cut short in its
    ``__init__`` fails in its ``__del__``, and Python prints that as an "Exception ignored"
    traceback; ``compare`` makes one for every run."""
    previous = signal.getsignal(signal.SIGINT)
    if not callable(previous) or threading.current_thread() is not threading.main_thread():
        # ignored (a background job: SIGTERM then ends the process at once), set outside
        # Python, or not this thread's to handle (signals go to the main thread)
        return _new_loop()
    held: list[int] = []
    signal.signal(signal.SIGINT, lambda signum, _frame: held.append(signum))
    try:
        loop = _new_loop()
    finally:
        signal.signal(signal.SIGINT, previous)
    if held:
        loop.close()
        signal.raise_signal(signal.SIGINT)  # now, through the handler there was
    return loop


def run_whole(coro: Coroutine[Any, Any, R]) -> R:
    """``asyncio.run(coro)`` in a loop from `whole_loop`; ``coro`` is closed if it never
    started (no "coroutine ... was never awaited" when the interrupt came first)."""
    try:
        with asyncio.Runner(loop_factory=whole_loop) as runner:
            return runner.run(coro)
    finally:
        coro.close()


async def drain_tasks(tasks: set[F], settled: Callable[[F], None]) -> None:
    """Wait until ``tasks`` is empty: a set of background tasks that may grow meanwhile, each
    leaving it through its done callback ``settled`` (which must do nothing the second time).

    A task that ended in this turn of the loop is settled here: its callback runs only on the
    next turn, and since Python 3.12 ``gather`` of tasks already done returns without letting
    the loop turn, so waiting on it again and again would spin forever (a compare hung so
    under ``python3.13 -X dev``, deaf to SIGTERM, which the loop handles).
    """
    while tasks:
        for task in [t for t in tasks if t.done()]:
            settled(task)
        if tasks:
            await asyncio.gather(*tasks, return_exceptions=True)


async def in_turns(
    items: Iterable[T],
    parallel: int,
    work: Callable[[T], Awaitable[object]],
    stop: Callable[[], bool] | None = None,
    alone: int = 0,
) -> None:
    """Await ``work(item)`` for each of ``items`` in order, at most ``parallel`` at a time: each
    of ``parallel`` workers takes the next item as its last one ends. The first ``alone``
    items go one at a time before the others start (a run that fills a cache the others
    read). Once ``stop()`` says so, no further item starts (those under way go on). An error
    in one ``work`` cancels the others and is raised in an ExceptionGroup, as a TaskGroup
    raises it (one of the first ``alone``: raised as itself)."""
    todo = deque(items)
    for _ in range(min(alone, len(todo))):
        if stop is not None and stop():
            return
        await work(todo.popleft())

    async def worker() -> None:
        while todo and (stop is None or not stop()):
            await work(todo.popleft())

    async with asyncio.TaskGroup() as tg:
        for _ in range(min(parallel, len(todo))):
            tg.create_task(worker())
