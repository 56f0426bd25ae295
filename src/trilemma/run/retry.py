"""The retry policy: tenacity, full-jitter exponential backoff, Retry-After honoured.

A step's ``retries`` caps its extra attempts, whatever failed: a provider error, a
malformed answer or a gate's rejection. Fatal errors, a refused budget and a passed
deadline are never retried. A backoff ends early when the run stops sending (a failed
step, the ceiling): the retry it waited for would not be sent. :func:`fast_retries` is
the testing mode: the same policy with no waiting (``TRILEMMA_FAST_RETRIES=1`` in the
environment sets it for a whole process).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass

from tenacity import AsyncRetrying, RetryCallState, retry_if_exception, stop_after_attempt
from tenacity.wait import wait_base

from trilemma.errors import TransientError, UsageError
from trilemma.spec.model import BACKOFF_BASE_S, BACKOFF_CAP_S, Workflow

__all__ = ["RetryPolicy", "check_time_scale", "fast_retries", "policy", "retrying", "scaled_time"]


@dataclass(slots=True)
class RetryPolicy:
    """Backoff settings."""

    base_s: float = BACKOFF_BASE_S
    """First backoff's upper bound; doubles each attempt (full jitter below it)."""
    cap_s: float = BACKOFF_CAP_S
    """Largest backoff, and largest Retry-After honoured."""
    time_scale: float = 1.0
    """Every wait is multiplied by this (a time-scaled simulation, see :func:`scaled_time`)."""


policy = RetryPolicy()
if os.environ.get("TRILEMMA_FAST_RETRIES"):  # the testing mode, for a test's child processes
    policy.time_scale = 0.0


@contextlib.contextmanager
def scaled_time(factor: float) -> Iterator[None]:
    """Waits (backoff, Retry-After) shortened by ``factor``, as a time-scaled simulation's are."""
    saved = policy.time_scale
    policy.time_scale = factor
    try:
        yield
    finally:
        policy.time_scale = saved


def check_time_scale(factor: float, name: str = "time_scale", virtual: bool = False) -> None:
    """Refuse a time factor outside (0, 1] (``name``: the flag or argument that gave it;
    ``virtual``: 0, a virtual clock, is taken too)."""
    if virtual and factor == 0:
        return
    if not 0 < factor <= 1:
        also = " (or 0, a virtual clock)" if virtual else ""
        raise UsageError(f"{name} {factor:g}: give a factor in (0, 1]{also}, such as 0.01")


def check_simulated(wf: Workflow, factor: float, name: str) -> None:
    """Refuse a time factor other than 1 (``name``: the flag or argument that gave it) where a
    model is a real endpoint: its time can be neither scaled nor kept on a virtual clock."""
    real = wf.endpoints
    if real and factor != 1:
        what = "kept on a virtual clock" if factor == 0 else "scaled"
        raise UsageError(
            f"{name} {factor:g}: model {real[0]!r} is a real endpoint, whose time cannot be "
            f"{what}; give {name} 1 (and mind the bill: every run is paid for)"
        )


def fast_retries() -> contextlib.AbstractContextManager[None]:
    """Testing mode: retry at once, every wait (Retry-After included) scaled to zero."""
    return scaled_time(0.0)


def backoff(exc: BaseException | None, failures: int, rng: random.Random) -> float:
    """Seconds to wait after the ``failures``-th failure: Retry-After if given, else full jitter."""
    if isinstance(exc, TransientError) and exc.retry_after is not None:
        return min(exc.retry_after, policy.cap_s) * policy.time_scale
    ceiling = min(policy.cap_s, policy.base_s * 2 ** (failures - 1))
    return rng.uniform(0.0, ceiling) * policy.time_scale


class _wait(wait_base):
    """Retry-After when the provider gave one, else full jitter; counts a failure made before."""

    def __init__(self, rng: random.Random, offset: int) -> None:
        self.rng = rng
        self.offset = offset

    def __call__(self, state: RetryCallState) -> float:
        exc = state.outcome.exception() if state.outcome else None
        return backoff(exc, state.attempt_number + self.offset, self.rng)


def _retryable(exc: BaseException) -> bool:
    return bool(getattr(exc, "retryable", False))


def retrying(
    attempts: int,
    rng: random.Random | None = None,
    *,
    after_failure: BaseException | None = None,
    interrupt: asyncio.Event | None = None,
) -> AsyncRetrying:
    """At most ``attempts`` tries of retryable failures; the last error is re-raised.

    ``after_failure``: an attempt already failed with this error (made outside
    tenacity to keep the common first try cheap); the first try here waits for it.
    ``interrupt``: set when the run stops sending; a backoff under way ends then.
    """
    rng = rng or random.Random()
    offset = 0 if after_failure is None else 1
    sleep = _sleeper(interrupt)
    return AsyncRetrying(
        sleep=sleep,
        stop=stop_after_attempt(attempts),
        wait=_wait(rng, offset),
        before=_sleep_first(after_failure, rng, sleep),
        retry=retry_if_exception(_retryable),
        reraise=True,
    )


def _sleeper(interrupt: asyncio.Event | None) -> Callable[[float], Awaitable[None]]:
    """``asyncio.sleep``, or a sleep that ends early when ``interrupt`` is set."""
    if interrupt is None:
        return asyncio.sleep

    async def sleep(seconds: float) -> None:
        if interrupt.is_set():
            return
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(seconds):
                await interrupt.wait()

    return sleep


def _sleep_first(
    exc: BaseException | None, rng: random.Random, sleep: Callable[[float], Awaitable[None]]
) -> Callable[[RetryCallState], Awaitable[None]]:
    """A ``before`` hook that waits out the backoff of a failure made before tenacity took over."""

    async def before(state: RetryCallState) -> None:
        if exc is not None and state.attempt_number == 1:
            await sleep(backoff(exc, 1, rng))

    return before
