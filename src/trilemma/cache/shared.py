"""A second tier for the exact cache, shared by every process that names the same Redis.

The journal's cache serves the runs that write to that journal. Workers on several
machines each have their own journal, so each would pay once for every answer. With
a shared tier, an exact lookup the journal misses asks Redis, and an accepted answer
is written to both: an answer any worker paid for is then free for all of them. The
key is the journal's own exact key, tenant scope included, so a tenant is served only
its own answers here too. Semantic lookups stay with the journal (they need its
embeddings).

A cache is an optimization, not a guarantee: once a run has started, a Redis that
stops answering turns lookups into misses and stores into no-ops (counted in
:attr:`SharedCache.errors`), and the run goes on. Whether it answers is checked
before anything starts.
"""

from __future__ import annotations

import json
import math
from typing import TYPE_CHECKING, Any

from trilemma._redis import DEFAULT_REDIS, Background, client, ping

if TYPE_CHECKING:  # the shared extra
    from redis.asyncio import Redis

__all__ = ["SharedCache"]

_WHAT = "the shared cache"
_FIX = "--redis (or TRILEMMA_REDIS_URL)"
_FIELDS = ("model", "response", "prompt_tokens", "completion_tokens", "created_at", "tenant")
_TIMEOUT_S = 2.0
"""A lookup waits this long at most for Redis before it counts as a miss."""


class SharedCache:
    """Exact answers kept in Redis under ``prefix``, for every process that names it.

    ``ttl_s``: how long an answer is kept there (None: until cleared, or until Redis
    evicts it under its own ``maxmemory-policy``).
    """

    def __init__(
        self, url: str = DEFAULT_REDIS, *, prefix: str = "trilemma:cache",
        ttl_s: float | None = None, redis: Redis | None = None,
    ) -> None:  # fmt: skip
        self.url = url
        self.prefix = prefix
        self.ttl_s = ttl_s
        self.redis: Redis = redis or client(url, timeout_s=_TIMEOUT_S)
        self._lookups_failed = 0
        self._writes = Background()

    def check(self) -> None:
        """Raise SetupError now, before a run starts, if Redis does not answer."""
        ping(self.url, _FIX, _WHAT)

    def _key(self, key: str) -> str:
        return f"{self.prefix}:{key}"

    async def get(self, key: str) -> dict[str, Any] | None:
        """The entry stored under the journal's exact ``key``, or None (a miss)."""
        from redis.exceptions import RedisError

        try:
            raw = await self.redis.get(self._key(key))
        except (RedisError, OSError):
            self._lookups_failed += 1
            return None
        try:
            entry = json.loads(raw) if raw else None
        except ValueError:  # not written by trilemma: a miss
            return None
        if not isinstance(entry, dict) or not isinstance(entry.get("response"), str):
            return None
        return {k: entry.get(k) for k in _FIELDS}

    def put(self, key: str, entry: dict[str, Any]) -> None:
        """Keep ``entry`` (response, model, tokens, tenant, created_at) in the background."""
        ttl = None if self.ttl_s is None else max(1, math.ceil(self.ttl_s))
        self._writes.add(self.redis.set(self._key(key), json.dumps(entry), ex=ttl))

    @property
    def errors(self) -> int:
        """Lookups and stores that could not reach Redis (served as misses, not kept)."""
        return self._lookups_failed + self._writes.failed

    async def entries(self) -> list[tuple[str, dict[str, Any]]]:
        """Every entry under the prefix, with its Redis key (for stats and clearing)."""
        out: list[tuple[str, dict[str, Any]]] = []
        batch: list[str] = []
        async for k in self.redis.scan_iter(match=f"{self.prefix}:*", count=500):
            batch.append(k)
            if len(batch) >= 500:
                out += await self._read(batch)
                batch = []
        if batch:
            out += await self._read(batch)
        return out

    async def _read(self, keys: list[str]) -> list[tuple[str, dict[str, Any]]]:
        values = await self.redis.mget(keys)
        return [(k, json.loads(v)) for k, v in zip(keys, values, strict=True) if v]

    async def clear(
        self, *, model: str | None = None, before: float | None = None, tenant: str | None = None
    ) -> int:
        """Forget entries (all, or those of ``model``, stored before ``before``, of ``tenant``)."""
        gone = [k for k, e in await self.entries()
                if (model is None or e.get("model") == model)
                and (before is None or (e.get("created_at") or 0) < before)
                and (tenant is None or e.get("tenant") == tenant)]  # fmt: skip
        for i in range(0, len(gone), 500):
            await self.redis.unlink(*gone[i : i + 500])
        return len(gone)

    async def aclose(self) -> None:
        """Wait for the stores still on their way, then let go of the connection."""
        await self._writes.drain()
        await self.redis.aclose()
