"""The embedded default provider: a simulated model that needs no network.

Each call waits the profile's ``latency_s`` (times a lognormal ``latency_jitter``
factor), may raise an injected fault, and otherwise answers right with
probability ``p_ok``, reporting the tokens the profile plans (its ``prompt_tokens``, and
its ``completion_tokens`` up to the call's ``max_tokens``). Every draw comes from a hash
of the run's seed and the
call's place (step, attempt, call), so a call gives the same answer
whatever the scheduling order, two runs with one seed the same outcomes, and a
resumed run the same outputs as an uninterrupted one.

A step's ``p_ok`` is its attempt's (what a debate or a vote buys is in it, as the
planner counts it), so the samples of a vote, or the last round of a debate without a
judge, are right or wrong together: drawn apart, five samples at 0.8 would make a
majority right 94% of the time, not the 80% planned. Faults and latencies stay each
call's own.
"""

from __future__ import annotations

import asyncio
import hashlib
import math
import random
import struct
from collections.abc import Coroutine, Mapping
from typing import Any

from trilemma.errors import ProviderTimeout, RateLimited, TransientError
from trilemma.providers.base import CUT, Completion, Request, Usage
from trilemma.spec import ModelProfile
from trilemma.spec.model import FAULT_LATENCY_SHARE, SIM_RETRY_AFTER_S

__all__ = ["SimProvider", "simulated_pick"]


class SimProvider:
    """Simulated completions; ``seed`` makes a run reproducible."""

    external = False
    """No one bills a simulated call, so its journal record need not precede it."""
    keeps_time = True
    """It times its own calls out: a call slower than ``timeout_s`` raises ProviderTimeout."""

    def __init__(self, seed: int | None = None) -> None:
        self.seed = seed if seed is not None else random.SystemRandom().randrange(2**63)

    def _draws(self, key: str) -> tuple[float, float, float, float]:
        """Four uniforms in [0, 1) for one call, from a hash of the seed and the call's key."""
        a, b, c, d = _FOUR_WORDS(
            hashlib.blake2b(f"{self.seed}:{key}".encode(), digest_size=32).digest()
        )
        return a * _TWO_64, b * _TWO_64, c * _TWO_64, d * _TWO_64

    async def complete(self, request: Request, profile: ModelProfile) -> Completion:
        """Wait, maybe fail, then answer right with probability ``p_ok``."""
        f = profile.faults
        if request.p_ok < 1.0 or profile.latency_jitter or f.any:
            u, v, w1, w2 = self._draws(request.call_key or request.idempotency_key)
        else:  # nothing left to chance: the draws would change nothing (and cost a hash)
            u = v = w1 = w2 = 0.0
        if request.verdict_key and request.p_ok < 1.0:  # a majority's samples agree
            v = self._draws(request.verdict_key)[1]
        latency = profile.latency_s
        if profile.latency_jitter:
            latency *= _jitter(profile.latency_jitter, w1, w2)
        if u < f.timeout_rate or latency > request.timeout_s:
            await asyncio.sleep(request.timeout_s)
            raise ProviderTimeout(f"simulated: no answer within {request.timeout_s:g}s")
        if u < f.timeout_rate + f.rate_limit_rate:
            await _wait(latency * FAULT_LATENCY_SHARE)
            raise RateLimited("simulated 429 Too Many Requests", retry_after=SIM_RETRY_AFTER_S)
        if u < f.timeout_rate + f.rate_limit_rate + f.transient_error_rate:
            await _wait(latency * FAULT_LATENCY_SHARE)
            raise TransientError("simulated 503 Service Unavailable")
        await _wait(latency)
        ok = v < request.p_ok
        text = request.sim_ok if ok else request.sim_bad
        prompt = profile.prompt_tokens  # the tokens the profile says a call takes, as planned
        cut = profile.completion_tokens > request.max_tokens  # an endpoint stops there
        usage = Usage(prompt, request.max_tokens if cut else profile.completion_tokens,
                      min(prompt, profile.cached_prompt_tokens))  # fmt: skip
        return Completion(text, usage, latency, verdict=ok, finish_reason=CUT if cut else "stop")


def simulated_pick(seed: int | None, key: str, shares: Mapping[str, float]) -> str:
    """What a simulated classifier names: a label drawn by ``shares``, from a hash of seed and key.

    Like every simulated draw it depends on the call's place, not on scheduling order.
    """
    digest = hashlib.blake2b(f"{seed}:{key}".encode(), digest_size=8).digest()
    u = int.from_bytes(digest, "big") * _TWO_64
    for label, share in shares.items():
        u -= share
        if u < 0:
            return label
    return label


_TWO_64 = 2.0**-64
_FOUR_WORDS = struct.Struct(">4Q").unpack
#: Below this a simulated wait is one turn of the event loop (no timer).
INSTANT_S = 1e-6


def _wait(seconds: float) -> Coroutine[Any, Any, None]:
    return asyncio.sleep(seconds if seconds >= INSTANT_S else 0)


def _jitter(sigma: float, w1: float, w2: float) -> float:
    """A lognormal factor with mean 1 (Box-Muller from two uniforms)."""
    z = math.sqrt(-2.0 * math.log(1.0 - w1)) * math.cos(2.0 * math.pi * w2)
    return math.exp(sigma * z - sigma * sigma / 2)
