"""Model health: a model with fallbacks that keeps failing is rested for a while.

After ``failures`` retryable failures in a row, a model's requests go straight to its
fallbacks for ``cooldown_s`` seconds; a failure whose upstream said when to come back (a
429's or a 503's Retry-After) rests it that long at once (the longer of the two when it is
also the failure that reaches the count). The counts live in the gateway process, or, with
``shared:``, in Redis, so that what one gateway learns every gateway on the config uses.
Only models with fallbacks are watched: resting one without any would change nothing.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from trilemma.run.shared_budget import RedisBudgets

__all__ = ["LocalHealth", "ModelHealth", "RedisHealth"]


class ModelHealth(Protocol):
    """Which models are resting after repeated failures."""

    async def resting(self, models: list[str]) -> set[str]:
        """Those of ``models`` resting now."""
        ...

    async def record(self, model: str, failed: bool, rest_s: float | None = None) -> None:
        """A try of ``model`` failed in a way worth retrying elsewhere, or did not;
        ``rest_s``: the upstream's word on when to come back (rest at once)."""
        ...


class LocalHealth:
    """Counts held in this process."""

    def __init__(self, failures: int, cooldown_s: float) -> None:
        self.failures = failures
        self.cooldown_s = cooldown_s
        self._failures: dict[str, int] = {}
        self._down_until: dict[str, float] = {}

    async def resting(self, models: list[str]) -> set[str]:
        now = time.monotonic()
        return {m for m in models if self._down_until.get(m, 0.0) > now}

    async def record(self, model: str, failed: bool, rest_s: float | None = None) -> None:
        if not failed:
            self._failures[model] = 0
            return
        self._failures[model] = self._failures.get(model, 0) + 1
        counted = self._failures[model] >= self.failures
        if counted or rest_s:
            rest = max(self.cooldown_s, rest_s or 0.0) if counted else rest_s or 0.0
            until = time.monotonic() + rest
            self._down_until[model] = max(self._down_until.get(model, 0.0), until)
            self._failures[model] = 0


# KEYS: the model's failure count, its resting flag. ARGV: failures, cooldown in ms, and the
# rest the upstream advised in ms (0: none). A rest already longer is kept.
_FAILED = """
local n = redis.call('INCR', KEYS[1])
local cooldown, advised = tonumber(ARGV[2]), tonumber(ARGV[3])
redis.call('PEXPIRE', KEYS[1], math.max(cooldown, 60000))
local rest = -1
if n >= tonumber(ARGV[1]) then rest = math.max(cooldown, advised)
elseif advised > 0 then rest = advised end
if rest >= 0 then
  redis.call('DEL', KEYS[1])
  if rest > 0 and redis.call('PTTL', KEYS[2]) < rest then
    redis.call('SET', KEYS[2], '1', 'PX', rest)
  end
end
return n
"""


class RedisHealth:
    """Counts in Redis, shared by every gateway with the same store and prefix."""

    def __init__(self, store: RedisBudgets, failures: int, cooldown_s: float) -> None:
        self.failures = failures
        self.cooldown_s = cooldown_s
        self.store = store
        self.prefix = f"{store.prefix}:health"
        self._failed = store.redis.register_script(_FAILED)

    def _keys(self, model: str) -> list[str]:
        return [f"{self.prefix}:{model}:failures", f"{self.prefix}:{model}:resting"]

    async def resting(self, models: list[str]) -> set[str]:
        flags = await self.store.call(self.store.redis.mget([self._keys(m)[1] for m in models]))
        return {m for m, flag in zip(models, flags, strict=True) if flag}

    async def record(self, model: str, failed: bool, rest_s: float | None = None) -> None:
        keys = self._keys(model)
        if failed:
            cooldown_ms, advised_ms = int(self.cooldown_s * 1000), int((rest_s or 0.0) * 1000)
            await self.store.call(
                self._failed(keys=keys, args=[self.failures, cooldown_ms, advised_ms])
            )
        else:
            await self.store.call(self.store.redis.delete(keys[0]))
