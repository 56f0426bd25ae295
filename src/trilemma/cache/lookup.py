"""Cache lookups and stores over the journal, for the executor and the gateway alike.

:meth:`Cache.lookup` tries the exact key, then (with a similarity rule and an
embedder) the nearest earlier prompt of the same settings; :meth:`Cache.store`
queues an accepted answer, and its prompt's embedding when the lookup made one,
for the journal's next commit, and holds it in memory for :data:`RECENT_S` so that
a lookup made before that commit lands finds it. With a
:class:`~trilemma.cache.shared.SharedCache`, an exact miss in the journal asks
Redis, and a stored answer goes there too.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from trilemma.cache.keys import Settings, exact_key, prompt_text, scoped, semantic_scope
from trilemma.cache.semantic import Embedder, Match, SemanticIndex
from trilemma.cache.shared import SharedCache
from trilemma.journal.store import JournalWriter
from trilemma.providers.base import Message

__all__ = ["Cache", "Hit", "Lookup"]

#: Most memory the process's semantic indexes hold (about 170,000 entries of
#: all-MiniLM-L6-v2); past it the least recently used go first, the one in use never.
MAX_INDEX_BYTES = 256 * 2**20

#: Seconds a stored answer is found in memory, well past the journal's commit window (a
#: commit waiting on another process's lock may take longer; the entry is then read from
#: the journal once it lands). `trilemma cache clear` from another process reaches such an
#: entry only once it has aged out of memory.
RECENT_S = 1.0

_indexes: dict[tuple[str, str, str, int], SemanticIndex] = {}
"""This process's semantic indexes, by journal, scope, embedder and vector length: the runs
of a batch or a compare and a gateway's requests share them. A lookup takes its index out
while it uses it (another thread's lookup of that scope meanwhile builds its own), under
``_indexes_lock``."""
_indexes_lock = threading.Lock()


@dataclass(frozen=True, slots=True)
class Hit:
    """An answer served from the cache."""

    response: str
    prompt_tokens: int | None
    completion_tokens: int | None
    similarity: float | None
    """None for an exact hit."""
    latency_s: float
    """The lookup's own time (for a semantic hit, mostly embedding the prompt)."""


@dataclass(frozen=True, slots=True)
class Lookup:
    """What a lookup found: a hit, or the prompt's embedding to store with the answer."""

    hit: Hit | None
    vector: np.ndarray | None = None


class Cache:
    """The journal's exact and semantic cache, through a :class:`JournalWriter`.

    ``shared``: a second exact tier other processes see (a hit there is kept in the
    journal as well).
    """

    def __init__(
        self, writer: JournalWriter, embedder: Embedder | None = None,
        shared: SharedCache | None = None,
    ) -> None:  # fmt: skip
        self.writer = writer
        self.embedder = embedder
        self.shared = shared
        self._recent: dict[str, tuple[float, dict[str, Any]]] = {}
        """Exact entries stored in the last :data:`RECENT_S`, by key: a lookup finds them
        before the journal's commit of them lands (a client repeating a request the moment
        its answer came)."""

    async def lookup(
        self, settings: Settings, messages: Sequence[Message], similarity: float | None,
        tenant: str | None = None,
    ) -> Lookup:  # fmt: skip
        """An exact hit, else with ``similarity`` the nearest prompt at least that alike.

        With a ``tenant``, only what was stored for that tenant can match.
        """
        started = time.perf_counter()
        settings = scoped(settings, tenant)
        key = exact_key(settings, messages)
        recent = self._recent.get(key)
        exact = recent[1] if recent is not None and time.monotonic() - recent[0] < RECENT_S \
            else self.writer.read("cache_get", key)  # fmt: skip
        if exact is None and self.shared is not None:
            exact = await self.shared.get(key)
            if exact is not None:  # kept here too: the next lookup need not ask Redis
                self.writer.defer("cache_put", {**exact, "key": key})
        if exact is not None:
            return Lookup(Hit(exact["response"], exact["prompt_tokens"],
                              exact["completion_tokens"], None, time.perf_counter() - started))  # fmt: skip
        if similarity is None or self.embedder is None:
            return Lookup(None)
        embedder = self.embedder
        vector = (await asyncio.to_thread(embedder.embed, [prompt_text(messages)]))[0]
        match = self._nearest(semantic_scope(settings), embedder.name, vector)
        if match is None or match.similarity < similarity:
            return Lookup(None, vector)
        same = self.writer.read("cache_get", match.key) or {}  # the matched answer's tokens
        return Lookup(Hit(match.response, same.get("prompt_tokens"), same.get("completion_tokens"),
                          match.similarity, time.perf_counter() - started))  # fmt: skip

    def _nearest(self, scope: str, embedder: str, vector: np.ndarray) -> Match | None:
        """The journal's entry nearest ``vector`` in ``scope``, by the process's index of it.

        The index reads only the rows added since its last lookup. Rows removed since
        (``trilemma cache clear``, by any process) are noticed where they matter: the
        newest row gone, or the nearest one no longer there, and the scope is read afresh.
        """
        where = (str(self.writer.journal.path), scope, embedder, vector.nbytes)
        for fresh in (False, True):
            with _indexes_lock:
                index = _indexes.pop(where, None)
            if fresh or index is None or self._removed(index, scope, embedder):
                index = SemanticIndex(vector.nbytes)
            index.add(self.writer.read("semantic_since", scope, embedder, index.last_rowid))
            found = index.nearest(vector)
            _keep(where, index)
            if found is None:
                return None
            rowid, key, similarity = found
            answer = self.writer.read("semantic_answer", rowid, key)
            if answer is not None:
                return Match(key, answer, similarity)
        return None  # removed while we looked: a miss

    def _removed(self, index: SemanticIndex, scope: str, embedder: str) -> bool:
        """Whether the newest row ``index`` read is gone from the journal (or its rowid reused)."""
        head: tuple[int, str | None] = self.writer.read("semantic_head", scope, embedder)
        rowid, key = head
        return rowid < index.last_rowid or (rowid == index.last_rowid and key != index.last_key)

    def store(
        self, settings: Settings, messages: Sequence[Message], response: str, model: str,
        vector: np.ndarray | None = None, prompt_tokens: int | None = None,
        completion_tokens: int | None = None, tenant: str | None = None,
    ) -> None:  # fmt: skip
        """Queue an accepted answer (and its prompt's embedding) for the next commit.

        A ``tenant``'s answer is found only by that tenant's lookups.
        """
        settings = scoped(settings, tenant)
        key = exact_key(settings, messages)
        now = time.time()
        entry = {"model": model, "response": response, "prompt_tokens": prompt_tokens,
                 "completion_tokens": completion_tokens, "created_at": now, "tenant": tenant}  # fmt: skip
        self.writer.defer("cache_put", {"key": key, **entry})
        held = time.monotonic()
        self._recent.pop(key, None)  # (kept in the order stored: the oldest come first)
        self._recent[key] = (held, entry)
        while self._recent and held - next(iter(self._recent.values()))[0] >= RECENT_S:
            del self._recent[next(iter(self._recent))]  # the oldest first, no copy of them all
        if self.shared is not None:
            self.shared.put(key, entry)
        if vector is not None and self.embedder is not None:
            self.writer.defer("semantic_put", {
                "key": key, "scope": semantic_scope(settings), "embedder": self.embedder.name,
                "prompt": prompt_text(messages), "vector": vector.astype(np.float32).tobytes(),
                "response": response, "created_at": now,
            })  # fmt: skip


def _keep(where: tuple[str, str, str, int], index: SemanticIndex) -> None:
    """Put an index back as the most recently used, and drop the least recently used ones
    while they hold more than MAX_INDEX_BYTES (never the one just put back)."""
    with _indexes_lock:
        _indexes[where] = index
        held = sum(i.nbytes_held for i in _indexes.values())
        while len(_indexes) > 1 and held > MAX_INDEX_BYTES:
            held -= _indexes.pop(next(iter(_indexes))).nbytes_held
