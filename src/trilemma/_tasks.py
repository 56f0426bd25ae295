"""Waiting for background tasks, shared by the journal's writer and the shared cache's writes."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any, TypeVar

__all__ = ["drain_tasks"]

F = TypeVar("F", bound="asyncio.Future[Any]")


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
