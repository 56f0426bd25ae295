"""Spend ceilings shared by several processes: the reservation protocol, held in Redis.

One gateway process holds its keys' ceilings in memory (:class:`SpendGuard`); run
several behind a load balancer and each would allow the whole ceiling. Here every
process reserves, settles and releases against one Redis, each step one Lua script,
so the check and the hold are atomic across processes as they are within one:
concurrent calls from any number of processes cannot together cross a ceiling.

Per budget ``NAME`` the store keeps ``PREFIX:NAME:spent`` (dollars billed),
``PREFIX:NAME:holds`` (hold id -> dollars held by a call in flight),
``PREFIX:NAME:expiry`` (hold id -> when it lapses, Redis's clock),
``PREFIX:NAME:refused`` and ``PREFIX:NAME:ceiling`` (the ceiling the last
reservation was checked against, for ``trilemma budget show``). A hold that
outlives its lapse time, because the process holding it died, is counted as spent
at its worst case; if its call does settle later, the spend is corrected to what
it cost. A lost process can thus make the spend look higher than it was, never
lower.

The gateway keeps its keys' ceilings here (``shared:`` in its config). Workflow runs
and batches in any number of processes share one with ``--shared-budget NAME=USD``
(:class:`SharedCeiling`, :class:`SharedSpend`): each call then holds its worst case
under the run's own ceiling and under the shared one before it is sent.
"""

from __future__ import annotations

import math
import re
import uuid
from collections.abc import Awaitable
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any, Protocol

from trilemma._format import dollars
from trilemma._redis import DEFAULT_REDIS, Background, check_url, gone, ping
from trilemma._redis import client as redis_client
from trilemma._tasks import run_whole
from trilemma.errors import BudgetExhausted, SetupError, UsageError
from trilemma.run.budget import EPS, Reservation, SpendGuard, over_ceiling

if TYPE_CHECKING:  # the shared extra
    from redis.asyncio import Redis

__all__ = [
    "DEFAULT_REDIS", "BudgetState", "KeyBudgets", "LocalBudgets", "RedisBudgets",
    "SharedCeiling", "SharedSpend", "check_name", "reset_shared", "shared_state",
]  # fmt: skip


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

# KEYS: spent, holds, expiry, refused, ceiling. ARGV: amount, ceiling (<0: none), hold id,
# ttl, eps.
_RESERVE = (
    _LAPSE
    + """
local amount = tonumber(ARGV[1])
local ceiling = tonumber(ARGV[2])
if ceiling >= 0 then redis.call('SET', KEYS[5], ARGV[2]) else redis.call('DEL', KEYS[5]) end
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
        fix: str = "shared.redis",
    ) -> None:
        self.url = url
        self.ceilings = ceilings
        self.prefix = prefix
        self.hold_ttl_s = hold_ttl_s
        self.fix = fix
        """Where the store's address was given, for the message when it does not answer."""
        self.redis: Redis = client or redis_client(url, timeout_s=_TIMEOUT_S)
        self._reserve = self.redis.register_script(_RESERVE)
        self._settle = self.redis.register_script(_SETTLE)
        self._state = self.redis.register_script(_STATE)

    def _keys(self, name: str) -> list[str]:
        base = f"{self.prefix}:{name}"
        return [f"{base}:spent", f"{base}:holds", f"{base}:expiry", f"{base}:refused",
                f"{base}:ceiling"]  # fmt: skip

    def check(self) -> None:
        """Raise SetupError now, before serving, if Redis does not answer."""
        ping(self.url, self.fix, _STORE)

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
            raise SetupError(gone(self.url, exc, self.fix, _STORE)) from None

    async def reserve(self, name: str, amount: float) -> Reservation:
        ceiling = self.ceilings[name]
        hold_id = uuid.uuid4().hex
        out = await self.call(self._reserve(
            keys=self._keys(name),
            args=[repr(amount), -1 if ceiling is None else repr(ceiling), hold_id,
                  self.hold_ttl_s, EPS],
        ))  # fmt: skip
        if int(out[0]) != 1:
            assert ceiling is not None  # the store refuses only under a ceiling
            raise over_ceiling(amount, ceiling, float(out[1]), float(out[2]),
                               ", counted across every process sharing it")  # fmt: skip
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

    async def last_ceiling(self, name: str) -> float | None:
        """The ceiling ``name``'s last reservation was checked against (None: none yet)."""
        value = await self.call(self.redis.get(self._keys(name)[4]))
        return None if value is None else float(value)

    async def known(self, name: str) -> bool:
        """Whether a run has reserved (or a gateway seeded) under ``name``."""
        return bool(await self.call(self.redis.exists(*self._keys(name))))

    async def names(self, limit: int = 20) -> list[str]:
        """Up to ``limit`` budgets this store has counters for, sorted."""
        found: set[str] = set()
        cursor = 0
        while True:
            cursor, keys = await self.call(
                self.redis.scan(cursor, match=f"{self.prefix}:*:spent", count=500))
            found.update((k.decode() if isinstance(k, bytes) else k)[len(self.prefix) + 1:-6]
                         for k in keys)  # fmt: skip
            if not cursor or len(found) >= limit:
                return sorted(found)[:limit]

    async def clear(self, name: str) -> None:
        """Forget a budget's counters (tests, or a deliberate reset)."""
        await self.call(self.redis.delete(*self._keys(name)))

    async def restart(self, name: str) -> None:
        """Start a budget's count again at $0; it stays known (:meth:`known`)."""
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.delete(*self._keys(name))
            pipe.set(self._keys(name)[0], "0")
            await self.call(pipe.execute())

    async def aclose(self) -> None:
        await self.redis.aclose()


_STORE = "the shared budget store"
_TIMEOUT_S = 5.0
"""A reservation waits this long at most for Redis: then the call is not sent (SetupError)."""
_NAME = re.compile(r"[A-Za-z0-9_.-]{1,64}")


@dataclass(frozen=True, slots=True)
class SharedCeiling:
    """A spend ceiling that every run naming it shares, in any process: held in Redis.

    Runs (and batches) started with the same ``name``, ``redis`` and ``prefix`` reserve
    each call's worst case against one count, so together they cannot cross
    ``max_cost_usd``; every run keeps its own ceiling as well. Every process should give
    the same ceiling: each one refuses what would cross the ceiling it was given.
    """

    name: str
    max_cost_usd: float
    redis: str = DEFAULT_REDIS
    prefix: str = "trilemma:budget"

    @classmethod
    def parse(cls, text: str, redis: str | None = None, given_as: str = "--shared-budget") -> SharedCeiling:
        """``NAME=USD`` (as the flag and the journal write it); UsageError naming the fix."""
        name, sep, usd = text.partition("=")
        try:
            ceiling = float(usd) if sep else math.nan
        except ValueError:
            ceiling = math.nan
        if not _NAME.fullmatch(name) or not math.isfinite(ceiling) or ceiling < 0:
            raise UsageError(
                f"{given_as} {text!r}: write it as NAME=USD, such as team-a=50 (a name of "
                "letters, digits, '_', '.' or '-', up to 64; a ceiling of 0 dollars or more)"
            )
        return cls(name, ceiling, check_url(redis))

    @property
    def label(self) -> str:
        """``NAME=USD``: what a run's journal row keeps (never the store's address)."""
        return f"{self.name}={self.max_cost_usd!r}"


class SharedSpend:
    """One run's or batch's hold on a :class:`SharedCeiling`, on its event loop.

    :meth:`reserve` is awaited before a call is sent; :meth:`settle` and :meth:`release`
    return at once and reach the store in the background (:meth:`aclose` waits for them),
    so that a call's end, or its cancellation, never waits on Redis. A settle that cannot
    reach the store leaves its hold to lapse, counted at its worst case.
    """

    def __init__(self, ceiling: SharedCeiling, store: KeyBudgets | None = None) -> None:
        self.ceiling = ceiling
        self.store: KeyBudgets = store or RedisBudgets(
            ceiling.redis, {ceiling.name: ceiling.max_cost_usd}, prefix=ceiling.prefix,
            fix="--redis (or TRILEMMA_REDIS_URL)",
        )  # fmt: skip
        self._writes = Background()

    def check(self) -> None:
        """Raise SetupError now, before a run starts, if the store does not answer."""
        if isinstance(self.store, RedisBudgets):
            self.store.check()

    async def reserve(self, amount: float) -> Reservation:
        """Hold ``amount`` under the shared ceiling, or raise BudgetExhausted naming it."""
        try:
            return await self.store.reserve(self.ceiling.name, amount)
        except BudgetExhausted as exc:
            raise BudgetExhausted(f"shared budget {self.ceiling.name!r}: {exc}") from None

    def settle(self, hold: Reservation, cost: float) -> None:
        """The call answered and cost ``cost``."""
        self._writes.add(self.store.settle(self.ceiling.name, hold, cost))

    def release(self, hold: Reservation) -> None:
        """The call returned only an error, or was never sent: nothing is billed."""
        self._writes.add(self.store.release(self.ceiling.name, hold))

    @property
    def unsettled(self) -> int:
        """Settles or releases that could not reach the store (their holds lapse)."""
        return self._writes.failed

    async def state(self) -> BudgetState:
        """The shared ceiling's figures now, counted across every process."""
        return await self.store.state(self.ceiling.name)

    async def aclose(self) -> None:
        """Wait for the settles still on their way, then let go of the connection."""
        await self._writes.drain()
        await self.store.aclose()


def check_name(name: str, given_as: str = "NAME") -> str:
    """A shared budget's name, or UsageError naming what one may hold."""
    if not _NAME.fullmatch(name):
        raise UsageError(
            f"{given_as} {name!r}: a shared budget's name is letters, digits, '_', '.' or '-', "
            "up to 64"
        )
    return name


def _budgets(url: str, name: str, prefix: str) -> RedisBudgets:
    store = RedisBudgets(url, {name: None}, prefix=prefix, fix="--redis (or TRILEMMA_REDIS_URL)")
    store.check()
    return store


async def _known(store: RedisBudgets, name: str) -> None:
    """UsageError unless ``name`` has counters in the store: a misspelt name would read as
    a budget with nothing spent."""
    if await store.known(name):
        return
    others = await store.names()
    listed = f"its budgets: {', '.join(others)}" if others else "it holds no budget yet"
    raise UsageError(f"shared budget {name!r} has no record in {store.url} under prefix "
                     f"{store.prefix!r} ({listed}); a run starts one with --shared-budget "
                     f"{name}=USD")  # fmt: skip


def shared_state(
    url: str, name: str, prefix: str = "trilemma:budget", *, known: bool = True
) -> BudgetState:
    """A shared budget's figures now: spent, held by calls in flight, calls refused, and
    the ceiling its last reservation was checked against (None: none yet, or none).

    ``known``: refuse (UsageError) a name the store has no record of, which is likely
    misspelt; without it, such a budget reads as new, with nothing spent.
    """
    store = _budgets(url, check_name(name), prefix)

    async def read() -> BudgetState:
        try:
            if known:
                await _known(store, name)
            return replace(await store.state(name), ceiling=await store.last_ceiling(name))
        finally:
            await store.aclose()

    return run_whole(read())


def reset_shared(
    url: str, name: str, prefix: str = "trilemma:budget", *, force: bool = False
) -> BudgetState:
    """Forget a shared budget's counters (a new month, say); its figures before.

    Refused while calls hold part of it, unless ``force``: their holds are dropped with
    the rest, and when they settle they are taken for lapsed holds, so the new count is
    lowered by what each held beyond what it cost (it may dip below zero for a while).
    """
    store = _budgets(url, check_name(name), prefix)

    async def reset() -> BudgetState:
        try:
            await _known(store, name)
            before = await store.state(name)
            if before.reserved > EPS and not force:
                raise UsageError(
                    f"shared budget {name!r}: calls in flight hold {dollars(before.reserved)} of it; "
                    "reset once they end, or give --force"
                )
            await store.restart(name)
            return before
        finally:
            await store.aclose()

    return run_whole(reset())
