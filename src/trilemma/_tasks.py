"""Event loop helpers: waiting for background tasks (the journal's writer, the shared cache's
writes), work taken a few at a time (a batch's runs, a compare's), and an event loop made
whole for every blocking call that runs one."""

from __future__ import annotations

import asyncio
import signal
import threading
from collections import deque
from collections.abc import Awaitable, Callable, Coroutine, Iterable
from typing import Any, TypeVar

__all__ = ["drain_tasks", "in_turns", "run_whole", "whole_loop"]

F = TypeVar("F", bound="asyncio.Future[Any]")
R = TypeVar("R")
T = TypeVar("T")


def whole_loop() -> asyncio.AbstractEventLoop:
    """A new event loop, built whole: a Ctrl-C (or a SIGTERM, which trilemma takes as one)
    that lands while it is made is held until it is, then raised with the loop closed. An
    event loop cut short in its ``__init__`` fails in its ``__del__``, and Python prints that
    as an "Exception ignored" traceback; ``compare`` makes one for every run."""
    previous = signal.getsignal(signal.SIGINT)
    if not callable(previous) or threading.current_thread() is not threading.main_thread():
        # ignored (a background job: SIGTERM then ends the process at once), set outside
        # Python, or not this thread's to handle (signals go to the main thread)
        return asyncio.new_event_loop()
    held: list[int] = []
    signal.signal(signal.SIGINT, lambda signum, _frame: held.append(signum))
    try:
        loop = asyncio.new_event_loop()
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
