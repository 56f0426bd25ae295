"""Redis helpers shared by the shared spend ceilings and the shared cache: the address
a user gives, how it is shown in messages, and the check made before anything starts."""

from __future__ import annotations

import asyncio
import re
from collections.abc import Awaitable
from typing import TYPE_CHECKING, Any

from trilemma._tasks import drain_tasks
from trilemma.errors import SetupError, UsageError

if TYPE_CHECKING:  # the shared extra
    from redis.asyncio import Redis

__all__ = ["DEFAULT_REDIS", "Background", "check_url", "client", "gone", "ping", "redacted"]

DEFAULT_REDIS = "redis://127.0.0.1:6379/0"
"""Where shared ceilings and the shared cache live unless ``--redis`` or TRILEMMA_REDIS_URL say."""

_URL = re.compile(r"(rediss?|unix)://\S+")


def redacted(url: str) -> str:
    """A Redis URL with any password in it replaced by ``***``: fit for a message."""
    return re.sub(r"//[^@/]*@", "//***@", url)


def check_url(url: str | None, given_as: str = "--redis") -> str:
    """``url`` (the default when None) if it is a Redis URL; UsageError naming the fix if not."""
    if url is None:
        return DEFAULT_REDIS
    if not _URL.fullmatch(url):
        raise UsageError(f"{given_as} {redacted(url)!r}: give a Redis URL, such as {DEFAULT_REDIS}")
    return url


def client(url: str, timeout_s: float | None = None) -> Redis:
    """An asyncio client for ``url`` (connections open on first use, on the running loop);
    ``timeout_s`` bounds each command and connection attempt (None: no bound)."""
    try:
        from redis.asyncio import Redis
    except ImportError:
        raise SetupError(
            "shared budgets and the shared cache need the Redis client: "
            "pip install 'trilemma[shared]'"
        ) from None
    return Redis.from_url(url, decode_responses=True, socket_timeout=timeout_s,
                          socket_connect_timeout=timeout_s)  # fmt: skip


def gone(url: str, exc: Exception, fix: str, what: str) -> str:
    """The message for a store (``what``: "the shared cache") that does not answer."""
    return (f"{what} {redacted(url)} does not answer ({type(exc).__name__}: {exc}); "
            f"start Redis there or fix {fix}")  # fmt: skip


def ping(url: str, fix: str, what: str) -> None:
    """Raise SetupError now, before anything starts, if the Redis at ``url`` does not answer."""
    from redis import Redis as SyncRedis
    from redis.exceptions import RedisError

    try:
        with SyncRedis.from_url(url, socket_connect_timeout=5, socket_timeout=5) as r:
            r.ping()
    except RedisError as exc:
        raise SetupError(gone(url, exc, fix, what)) from None


class Background:
    """Writes to Redis that nothing waits for (a settle, a cache store), and how many failed.

    A call's end, or its cancellation, must not wait on Redis; :meth:`drain` waits for
    what is still on its way before the connection closes.
    """

    def __init__(self) -> None:
        self._pending: set[asyncio.Task[Any]] = set()
        self.failed = 0
        """Writes that raised or were cancelled."""

    def add(self, work: Awaitable[Any]) -> None:
        """Start ``work`` on the running loop."""
        task = asyncio.ensure_future(work)
        self._pending.add(task)
        task.add_done_callback(self._done)

    def _done(self, task: asyncio.Task[Any]) -> None:
        if task not in self._pending:  # settled already, by drain_tasks
            return
        self._pending.discard(task)
        if task.cancelled() or task.exception() is not None:
            self.failed += 1

    async def drain(self) -> None:
        """Wait until every write started has ended (writes may start more)."""
        await drain_tasks(self._pending, self._done)
