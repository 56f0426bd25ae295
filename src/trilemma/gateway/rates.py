"""Per-key request and token rates: a request over its key's ``rpm`` or ``tpm`` gets a 429.

Each limit is a token bucket that refills continuously and holds at most a minute's
worth. A request takes one request and its worst-case tokens (the prompt and
``max_tokens``) before it is sent, or nothing, with the seconds until it would fit;
what its answer did not use is given back. The buckets live in the gateway process,
or, with ``shared:``, in Redis, where one Lua script per take keeps every gateway on
the config to the same rates.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Protocol

from trilemma.run.limits import RateLimiter

if TYPE_CHECKING:
    from trilemma.run.shared_budget import RedisBudgets

__all__ = ["KeyRates", "LocalRates", "RedisRates"]

Limits = dict[str, tuple[int | None, int | None]]
"""Per key: (requests per minute, tokens per minute); None: no limit."""


class KeyRates(Protocol):
    """Per-key rate limits that refuse rather than wait."""

    limits: Limits

    async def take(self, key: str, tokens: float) -> float:
        """Admit one request of ``tokens`` for ``key`` (0.0), or the seconds until it fits."""
        ...

    async def give_back(self, key: str, tokens: float) -> None:
        """Return tokens a request held but its answer did not use."""
        ...


class LocalRates:
    """Buckets held in this process."""

    def __init__(self, limits: Limits) -> None:
        self.limits = limits
        self.rpm = {k: RateLimiter(r) for k, (r, _) in limits.items() if r}
        self.tpm = {k: RateLimiter(t) for k, (_, t) in limits.items() if t}

    async def take(self, key: str, tokens: float) -> float:
        requests, budget = self.rpm.get(key), self.tpm.get(key)
        if requests is not None and (wait := requests.take(1)):
            return wait
        if budget is not None and (wait := budget.take(tokens)):
            if requests is not None:
                requests.give_back(1)  # both or neither
            return wait
        return 0.0

    async def give_back(self, key: str, tokens: float) -> None:
        budget = self.tpm.get(key)
        if budget is not None:
            budget.give_back(tokens)


# KEYS: the requests bucket, the tokens bucket (hashes of level and time).
# ARGV: rpm, tpm (0: none), tokens asked (take) or returned (give back).
_LEVEL = """
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1e6
local function level(key, per_minute)
  local b = redis.call('HMGET', key, 'level', 'at')
  local have = tonumber(b[1]) or per_minute
  local at = tonumber(b[2]) or now
  return math.min(per_minute, have + (now - at) * per_minute / 60)
end
local function put(key, value)
  redis.call('HSET', key, 'level', string.format('%.17g', value), 'at', string.format('%.17g', now))
  redis.call('EXPIRE', key, 120)
end
local rpm, tpm, amount = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3])
"""

_TAKE = (
    _LEVEL
    + """
local wait, requests, tokens = 0, 0, 0
if rpm > 0 then
  requests = level(KEYS[1], rpm)
  if requests < 1 then wait = math.max(wait, (1 - requests) * 60 / rpm) end
end
if tpm > 0 then
  amount = math.min(amount, tpm)
  tokens = level(KEYS[2], tpm)
  if tokens < amount then wait = math.max(wait, (amount - tokens) * 60 / tpm) end
end
if wait > 0 then return string.format('%.6f', wait) end
if rpm > 0 then put(KEYS[1], requests - 1) end
if tpm > 0 then put(KEYS[2], tokens - amount) end
return '0'
"""
)

_GIVE_BACK = (
    _LEVEL
    + """
if tpm > 0 then put(KEYS[2], math.min(tpm, level(KEYS[2], tpm) + amount)) end
return '0'
"""
)


class RedisRates:
    """Buckets in Redis, shared by every gateway with the same store and prefix."""

    def __init__(self, store: RedisBudgets, limits: Limits) -> None:
        self.limits = limits
        self.store = store
        """The shared budgets' connection, and their translation of Redis errors."""
        self.prefix = f"{store.prefix}:rate"
        self._take = store.redis.register_script(_TAKE)
        self._give_back = store.redis.register_script(_GIVE_BACK)

    def _args(self, key: str, tokens: float) -> tuple[list[str], list[float]]:
        rpm, tpm = self.limits[key]
        base = f"{self.prefix}:{key}"
        return [f"{base}:rpm", f"{base}:tpm"], [rpm or 0, tpm or 0, tokens]

    async def take(self, key: str, tokens: float) -> float:
        rpm, tpm = self.limits[key]
        if not rpm and not tpm:
            return 0.0
        keys, args = self._args(key, tokens)
        return float(await self.store.call(self._take(keys=keys, args=args)))

    async def give_back(self, key: str, tokens: float) -> None:
        if self.limits[key][1]:
            keys, args = self._args(key, tokens)
            await self.store.call(self._give_back(keys=keys, args=args))
