"""Where a model's calls go and what holds them back, worked out once per run (or gateway).

A :class:`Route` pairs a model profile with its provider and the limits the profile sets
(concurrent calls, requests and tokens per minute), and sends a request with the
profile's timeout. The executor and the gateway both send every call through one.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable
from dataclasses import dataclass, replace

from trilemma.errors import ProviderTimeout
from trilemma.providers.base import Completion, Provider, Request, StreamEnd, rate_tokens
from trilemma.run.limits import PriorityLimiter, RateLimiter
from trilemma.spec import ModelProfile

__all__ = ["Route"]


@dataclass(frozen=True, slots=True)
class Route:
    """A model's provider and limits."""

    profile: ModelProfile
    provider: Provider
    external: bool
    """It may bill: a call is journaled before it is sent."""
    keeps_time: bool
    """The provider enforces the request's timeout itself (raising ProviderTimeout)."""
    stop: tuple[str, ...]
    """The profile's stop sequences."""
    slots: PriorityLimiter | None
    """At most ``max_concurrency`` calls at once."""
    rpm: RateLimiter | None
    """Requests per minute."""
    tpm: RateLimiter | None
    """Tokens per minute."""
    limited: bool
    """Any of the three limits is set: :meth:`acquire` must be awaited before a call."""

    @classmethod
    def of(cls, m: ModelProfile, provider: Provider) -> Route:
        """The route of profile ``m`` through ``provider``."""
        return cls(
            m, provider, getattr(provider, "external", True), getattr(provider, "keeps_time", False),
            tuple(m.stop or ()), PriorityLimiter(m.max_concurrency) if m.max_concurrency else None,
            RateLimiter(m.rpm, m.minute_s) if m.rpm else None,
            RateLimiter(m.tpm, m.minute_s) if m.tpm else None,
            m.limited,
        )  # fmt: skip

    def via(self, provider: Provider) -> Route:
        """The same limits (shared, not copied) through another provider: runs of one batch."""
        return replace(self, provider=provider, external=getattr(provider, "external", True),
                       keeps_time=getattr(provider, "keeps_time", False))  # fmt: skip

    async def acquire(self, request: Request, priority: float = 0.0) -> None:
        """Wait for a slot and the rate tokens of ``request``; :meth:`release` frees the slot."""
        if self.slots is not None:
            await self.slots.acquire(priority)
        try:
            if self.rpm is not None:
                await self.rpm.acquire(1)
            if self.tpm is not None:
                await self.tpm.acquire(rate_tokens(self.profile, request))
        except BaseException:
            self.release()
            raise

    def release(self) -> None:
        """Give back the slot :meth:`acquire` took (rate tokens are spent for good)."""
        if self.slots is not None:
            self.slots.release()

    def complete(self, request: Request) -> Awaitable[Completion]:
        """Send ``request``: the provider's answer, or ProviderTimeout past ``request.timeout_s``."""
        if self.keeps_time:  # no wrapper: one coroutine frame less per call
            return self.provider.complete(request, self.profile)
        return self._timed(request)

    async def stream(self, request: Request) -> AsyncIterator[str | StreamEnd]:
        """Send ``request`` for an answer in pieces: text, then its usage and why it ended.

        A provider without a ``stream`` method (the simulator) answers whole: one piece.
        """
        streaming = getattr(self.provider, "stream", None)
        if streaming is None:
            completion = await self.complete(request)
            yield completion.text
            yield StreamEnd(completion.usage, completion.finish_reason)
            return
        async for piece in streaming(request, self.profile):
            yield piece

    async def _timed(self, request: Request) -> Completion:
        try:
            async with asyncio.timeout(request.timeout_s):
                return await self.provider.complete(request, self.profile)
        except TimeoutError:
            raise ProviderTimeout(f"no answer within {request.timeout_s:g}s") from None
