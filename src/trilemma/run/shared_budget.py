"""Spend ceilings shared by several processes: the reservation protocol, held in Redis.

One gateway process holds its keys' ceilings in memory (:class:`SpendGuard`); run
several behind a load balancer and each would allow the whole ceiling. Here every
process reserves, settles and releases against one Redis, each step one Lua script,
so the check and the hold are atomic across processes as they are within one:
concurrent calls from any number of processes cannot together cross a ceiling.

Per budget ``NAME`` the store keeps ``PREFIX:NAME:spent`` (dollars billed),
``PREFIX:NAME:holds`` (hold id -> dollars held by a call in flight),
``PREFIX:NAME:expiry`` (hold id -> when it lapses, Redis's clock) and
``PREFIX:NAME:refused``. A hold that outlives its lapse time, because the process
holding it died, is counted as spent at its worst case; if its call does settle
later, the spend is corrected to what it cost. A lost process can thus make the
spend look higher than it was, never lower.
"""

from __future__ import annotations

import uuid
from collections.abc import Awaitable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

from trilemma.errors import BudgetExhausted, SetupError
from trilemma.run.budget import EPS, Reservation, SpendGuard

if TYPE_CHECKING:  # the shared extra
    from redis.asyncio import Redis

__all__ = ["BudgetState", "KeyBudgets", "LocalBudgets", "RedisBudgets"]


@dataclass(frozen=True, slots=True)
class BudgetState:
    """One budget's figures at a moment."""

    ceiling: float | None
    spent: float
    reserved: float
    refused: int

    @property
    def remaining(self) -> float | None:
        """Dollars a new call may still reserve (None: no ceiling)."""
        return None if self.ceiling is None else max(0.0, self.ceiling - self.spent - self.reserved)


@dataclass(slots=True)
class SharedHold(Reservation):
    """A reservation with the id the store knows it by."""

    hold_id: str = ""


class KeyBudgets(Protocol):
    """Named spend ceilings, reserved before each call and settled after (async API)."""

    async def reserve(self, name: str, amount: float) -> Reservation:
        """Hold ``amount`` under ``name``'s ceiling, or raise BudgetExhausted."""
        ...

    async def settle(self, name: str, hold: Reservation, cost: float) -> BudgetState:
        """The call answered and cost ``cost``: release its hold, count the spend."""
        ...

    async def release(self, name: str, hold: Reservation) -> None:
        """The call returned only an error: nothing is billed."""
        ...

    async def state(self, name: str) -> BudgetState:
        """The budget's figures now."""
        ...

    async def aclose(self) -> None:
        """Let go of any connection."""
        ...


class LocalBudgets:
    """Ceilings held in this process: one :class:`SpendGuard` per name."""

    def __init__(self, guards: dict[str, SpendGuard]) -> None:
        self.guards = guards

    async def reserve(self, name: str, amount: float) -> Reservation:
        return self.guards[name].reserve(amount)

    async def settle(self, name: str, hold: Reservation, cost: float) -> BudgetState:
        self.guards[name].settle(hold, cost)
        return await self.state(name)

    async def release(self, name: str, hold: Reservation) -> None:
        self.guards[name].release(hold)

    async def state(self, name: str) -> BudgetState:
        g = self.guards[name]
        return BudgetState(g.ceiling, g.spent, g.reserved, g.refused)

    async def aclose(self) -> None:
        """Nothing to let go of."""


# Each script first lapses the holds whose time has passed: counted as spent at their
# worst case. Numbers go back as strings: Redis would truncate a Lua number to an integer.
_LAPSE = """
local now_t = redis.call('TIME')
local now = tonumber(now_t[1]) + tonumber(now_t[2]) / 1e6
local stale = redis.call('ZRANGEBYSCORE', KEYS[3], '-inf', now)
for _, id in ipairs(stale) do
  local held = redis.call('HGET', KEYS[2], id)
  if held then
    redis.call('INCRBYFLOAT', KEYS[1], held)
    redis.call('HDEL', KEYS[2], id)
  end
  redis.call('ZREM', KEYS[3], id)
end
local function reserved()
  local total = 0
  for _, v in ipairs(redis.call('HVALS', KEYS[2])) do total = total + tonumber(v) end
  return total
end
local function figures()
  return {string.format('%.17g', tonumber(redis.call('GET', KEYS[1]) or '0')),
          string.format('%.17g', reserved()), tonumber(redis.call('GET', KEYS[4]) or '0')}
end
"""

# KEYS: spent, holds, expiry, refused. ARGV: amount, ceiling (<0: none), hold id, ttl, eps.
_RESERVE = (
    _LAPSE
    + """
local amount = tonumber(ARGV[1])
local ceiling = tonumber(ARGV[2])
local spent = tonumber(redis.call('GET', KEYS[1]) or '0')
if ceiling >= 0 and spent + reserved() + amount > ceiling + tonumber(ARGV[5]) then
  redis.call('INCR', KEYS[4])
  local out = figures()
  table.insert(out, 1, 0)
  return out
end
redis.call('HSET', KEYS[2], ARGV[3], ARGV[1])
redis.call('ZADD', KEYS[3], now + tonumber(ARGV[4]), ARGV[3])
local out = figures()
table.insert(out, 1, 1)
return out
"""
)

# ARGV: hold id, cost (settle) or 0 (release), the hold's amount.
_SETTLE = (
    _LAPSE
    + """
if redis.call('HDEL', KEYS[2], ARGV[1]) == 1 then
  redis.call('ZREM', KEYS[3], ARGV[1])
  redis.call('INCRBYFLOAT', KEYS[1], ARGV[2])
else  -- it lapsed and was counted at its worst case: correct that to what it cost
  redis.call('INCRBYFLOAT', KEYS[1], tonumber(ARGV[2]) - tonumber(ARGV[3]))
end
return figures()
"""
)

_STATE = _LAPSE + "return figures()"


class RedisBudgets:
    """Ceilings shared by every process that names the same Redis and prefix.

    ``ceilings`` gives each budget's ceiling (None: none). :meth:`connect` seeds each
    budget's spend where Redis has no count for it yet (the first process to start
    does, from its journal). ``hold_ttl_s``: how long a hold may last before it is
    counted as spent at its worst case (longer than any call).
    """

    def __init__(
        self,
        url: str,
        ceilings: dict[str, float | None],
        *,
        prefix: str = "trilemma:budget",
        hold_ttl_s: float = 600.0,
        client: Redis | None = None,
    ) -> None:
        try:
            from redis.asyncio import Redis
        except ImportError:
            raise SetupError(
                "shared budgets need the Redis client: pip install 'trilemma[shared]'"
            ) from None
        self.url = url
        self.ceilings = ceilings
        self.prefix = prefix
        self.hold_ttl_s = hold_ttl_s
        self.redis: Redis = client or Redis.from_url(url, decode_responses=True)
        self._reserve = self.redis.register_script(_RESERVE)
        self._settle = self.redis.register_script(_SETTLE)
        self._state = self.redis.register_script(_STATE)

    def _keys(self, name: str) -> list[str]:
        base = f"{self.prefix}:{name}"
        return [f"{base}:spent", f"{base}:holds", f"{base}:expiry", f"{base}:refused"]

    def check(self) -> None:
        """Raise SetupError now, before serving, if Redis does not answer."""
        from redis import Redis as SyncRedis
        from redis.exceptions import RedisError

        try:
            with SyncRedis.from_url(self.url, socket_connect_timeout=5) as r:
                r.ping()
        except RedisError as exc:
            raise SetupError(self._gone(exc)) from None

    def _gone(self, exc: Exception) -> str:
        return (f"the shared budget store {self.url} does not answer ({type(exc).__name__}: "
                f"{exc}); start Redis there or fix shared.redis")  # fmt: skip

    async def connect(self, spent: dict[str, float]) -> None:
        """Check that Redis answers and seed each budget's spend where Redis has none."""
        await self.call(self.redis.ping())
        for name, amount in spent.items():
            await self.call(self.redis.set(self._keys(name)[0], repr(float(amount)), nx=True))

    async def call(self, call: Awaitable[Any]) -> Any:
        """A Redis call; SetupError naming the store when it does not answer."""
        from redis.exceptions import RedisError

        try:
            return await call
        except RedisError as exc:
            raise SetupError(self._gone(exc)) from None

    async def reserve(self, name: str, amount: float) -> Reservation:
        ceiling = self.ceilings[name]
        hold_id = uuid.uuid4().hex
        out = await self.call(self._reserve(
            keys=self._keys(name),
            args=[repr(amount), -1 if ceiling is None else repr(ceiling), hold_id,
                  self.hold_ttl_s, EPS],
        ))  # fmt: skip
        if int(out[0]) != 1:
            spent, reserved = float(out[1]), float(out[2])
            raise BudgetExhausted(
                f"a call's worst case ${amount:.4f} would take spend past the ${ceiling:.4f} "
                f"ceiling (${spent:.4f} spent, ${reserved:.4f} held by calls in flight, "
                "counted across every process sharing it)"
            )
        return SharedHold(amount, hold_id=hold_id)

    async def settle(self, name: str, hold: Reservation, cost: float) -> BudgetState:
        return await self._close(name, hold, cost)

    async def release(self, name: str, hold: Reservation) -> None:
        await self._close(name, hold, 0.0)

    async def _close(self, name: str, hold: Reservation, cost: float) -> BudgetState:
        assert isinstance(hold, SharedHold)
        if not hold.open:
            return await self.state(name)
        hold.open = False
        out = await self.call(self._settle(
            keys=self._keys(name), args=[hold.hold_id, repr(cost), repr(hold.amount)]
        ))  # fmt: skip
        return self._figures(name, out)

    async def state(self, name: str) -> BudgetState:
        return self._figures(name, await self.call(self._state(keys=self._keys(name))))

    def _figures(self, name: str, out: list[Any]) -> BudgetState:
        return BudgetState(self.ceilings[name], float(out[0]), float(out[1]), int(out[2]))

    async def clear(self, name: str) -> None:
        """Forget a budget's counters (tests, or a deliberate reset)."""
        await self.call(self.redis.delete(*self._keys(name)))

    async def aclose(self) -> None:
        await self.redis.aclose()
