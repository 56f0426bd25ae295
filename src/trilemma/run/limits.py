"""Concurrency and rate limits for the executor.

:class:`PriorityLimiter` is a semaphore whose waiters are served by priority, so
when more calls are ready than slots, those on the longest remaining path go
first. :class:`RateLimiter` is a token bucket for requests or tokens per minute.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools

from trilemma._tasks import loop_now

__all__ = ["PriorityLimiter", "RateLimiter"]


class PriorityLimiter:
    """At most ``slots`` holders; the waiter with the lowest priority value goes next."""

    def __init__(self, slots: int) -> None:
        self.free = slots
        self._waiters: list[tuple[float, int, asyncio.Future[None]]] = []
        self._seq = itertools.count()

    async def acquire(self, priority: float = 0.0) -> None:
        """Wait for a slot (an uncontended one is taken without suspending)."""
        if self.free > 0 and not self._waiters:
            self.free -= 1
            return
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        heapq.heappush(self._waiters, (priority, next(self._seq), fut))
        try:
            await fut
        except asyncio.CancelledError:
            if fut.done() and not fut.cancelled():
                self.release()  # granted, then cancelled: pass the slot on
            raise

    def try_acquire(self) -> bool:
        """Take a slot if one is free and nobody is waiting for it; never waits."""
        if self.free > 0 and not self._waiters:
            self.free -= 1
            return True
        return False

    def release(self) -> None:
        """Give a slot back: to the best waiter still waiting, else to the pool."""
        while self._waiters:
            _, _, fut = heapq.heappop(self._waiters)
            if not fut.done():
                fut.set_result(None)
                return
        self.free += 1


class RateLimiter:
    """A token bucket refilled at ``per_minute`` units a minute, holding at most a minute's
    worth; ``minute_s``: the seconds a minute lasts (less in a time-scaled simulation)."""

    def __init__(self, per_minute: float, minute_s: float = 60.0) -> None:
        self.rate = per_minute / minute_s
        self.capacity = float(per_minute)
        self.tokens = float(per_minute)
        self.updated = loop_now()
        self._lock = asyncio.Lock()

    def take(self, amount: float = 1.0) -> float:
        """Take ``amount`` units now and return 0, or take nothing and return the seconds
        until they would be there (for a caller that refuses rather than waits)."""
        amount = min(amount, self.capacity)
        self._refill()
        if self.tokens >= amount:
            self.tokens -= amount
            return 0.0
        return (amount - self.tokens) / self.rate

    def give_back(self, amount: float) -> None:
        """Return units taken but not used (a call that used fewer tokens than it held)."""
        self._refill()
        self.tokens = min(self.capacity, self.tokens + max(0.0, amount))

    def _refill(self) -> None:
        now = loop_now()  # a virtual clock's, in a simulated run on one
        self.tokens = min(self.capacity, self.tokens + max(0.0, now - self.updated) * self.rate)
        self.updated = now

    async def acquire(self, amount: float = 1.0) -> None:
        """Wait until ``amount`` units are available, then take them."""
        amount = min(amount, self.capacity)
        async with self._lock:  # first come, first served
            while True:
                self._refill()
                if self.tokens >= amount:
                    self.tokens -= amount
                    return
                await asyncio.sleep((amount - self.tokens) / self.rate)
