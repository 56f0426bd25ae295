"""The embedded default provider: a simulated model that needs no network.

Each call waits the profile's ``latency_s`` (times a lognormal ``latency_jitter``
factor), may raise an injected fault, and otherwise answers right with
probability ``p_ok``. Every draw comes from a generator seeded by the run's seed
and the call's place (step, attempt, call), so a call gives the same answer
whatever the scheduling order, two runs with one seed the same outcomes, and a
resumed run the same outputs as an uninterrupted one.
"""

from __future__ import annotations

import asyncio
import hashlib
import math
import random

from trilemma.errors import ProviderTimeout, RateLimited, TransientError
from trilemma.providers.base import Completion, Request, Usage
from trilemma.spec import ModelProfile

__all__ = ["SimProvider"]

#: A fault answers after this share of the profile's latency.
FAULT_LATENCY_SHARE = 0.1
#: What a simulated 429 advises, in seconds.
SIM_RETRY_AFTER_S = 0.02


class SimProvider:
    """Simulated completions; ``seed`` makes a run reproducible."""

    external = False
    """No one bills a simulated call, so its journal record need not precede it."""

    def __init__(self, seed: int | None = None) -> None:
        self.seed = seed if seed is not None else random.SystemRandom().randrange(2**63)

    def _rng(self, key: str) -> random.Random:
        digest = hashlib.blake2b(f"{self.seed}:{key}".encode(), digest_size=8).digest()
        return random.Random(int.from_bytes(digest, "big"))

    async def complete(self, request: Request, profile: ModelProfile) -> Completion:
        """Wait, maybe fail, then answer right with probability ``p_ok``."""
        rng = self._rng(request.call_key or request.idempotency_key)
        latency = profile.latency_s * _jitter(profile.latency_jitter, rng)
        f = profile.faults
        u = rng.random()
        if u < f.timeout_rate:
            await asyncio.sleep(request.timeout_s)
            raise ProviderTimeout(f"simulated: no answer within {request.timeout_s:g}s")
        if u < f.timeout_rate + f.rate_limit_rate:
            await asyncio.sleep(latency * FAULT_LATENCY_SHARE)
            raise RateLimited("simulated 429 Too Many Requests", retry_after=SIM_RETRY_AFTER_S)
        if u < f.timeout_rate + f.rate_limit_rate + f.transient_error_rate:
            await asyncio.sleep(latency * FAULT_LATENCY_SHARE)
            raise TransientError("simulated 503 Service Unavailable")
        await asyncio.sleep(latency)
        ok = rng.random() < request.p_ok
        text = request.sim_ok if ok else request.sim_bad
        usage = Usage(max(1, request.prompt_bytes // 4), max(1, len(text.encode()) // 4))
        return Completion(text, usage, latency, verdict=ok)


def _jitter(sigma: float, rng: random.Random) -> float:
    return 1.0 if sigma == 0 else math.exp(sigma * rng.gauss(0.0, 1.0) - sigma * sigma / 2)
