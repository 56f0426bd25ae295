"""The semantic cache's index: kept between lookups, it reads only new rows and never serves
an entry that was cleared.

The embedder here is a table of fixed vectors (the index's logic does not depend on the
model; tests/test_semantic_cache.py runs the real one)."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from trilemma.cache import lookup
from trilemma.cache.lookup import Cache
from trilemma.cache.semantic import SemanticIndex, best_match
from trilemma.journal import Journal
from trilemma.journal.store import JournalWriter

SETTINGS = ["sim", None, "m"]


def unit(*xs: float) -> np.ndarray:
    v = np.array(xs, np.float32)
    return v / np.linalg.norm(v)


VECTORS = {
    "apple": unit(1, 0, 0),
    "apple?": unit(0.99, 0.14, 0),  # 0.99 like "apple"
    "pear": unit(0, 1, 0),
    "pear?": unit(0.1, 0.99, 0.1),
    "kiwi": unit(0, 0, 1),
    "kiwi?": unit(0, 0.1, 0.99),
}


class Table:
    name = "table"

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        return np.stack([VECTORS[t] for t in texts])


def msgs(text: str) -> list[dict[str, str]]:
    return [{"role": "user", "content": text}]


class Harness:
    """A Cache over one journal, driven one lookup or store at a time."""

    def __init__(self, path: Path) -> None:
        self.journal = Journal(path)
        self.cache = Cache(JournalWriter(self.journal, 0.0), Table())

    def store(self, text: str) -> None:
        async def go() -> None:
            found = await self.cache.lookup(SETTINGS, msgs(text), 0.9)
            assert found.hit is None, text
            self.cache.store(SETTINGS, msgs(text), f"answer to {text}", "m", found.vector)
            await self.cache.writer.flush()

        asyncio.run(go())

    def ask(self, text: str) -> str | None:
        async def go() -> Any:
            return await self.cache.lookup(SETTINGS, msgs(text), 0.9)

        found = asyncio.run(go())
        return None if found.hit is None else found.hit.response


@pytest.fixture(autouse=True)
def fresh_indexes() -> None:
    lookup._indexes.clear()


def test_lookups_read_only_the_rows_added_since_the_last(tmp_path: Path, monkeypatch: Any) -> None:
    h = Harness(tmp_path / "j.db")
    read: list[int] = []
    since = Journal.semantic_since

    def counting(self: Journal, scope: str, embedder: str, after: int) -> Any:
        rows = since(self, scope, embedder, after)
        read.append(len(rows))
        return rows

    monkeypatch.setattr(Journal, "semantic_since", counting)
    h.store("apple")
    h.store("pear")
    h.store("kiwi")
    assert read == [0, 1, 1]  # each lookup read the one row the one before it stored
    assert h.ask("apple?") == "answer to apple"
    assert read[-1] == 1  # kiwi, not all three
    assert h.ask("pear?") == "answer to pear" and read[-1] == 0


def test_an_entry_cleared_by_another_connection_is_never_served(tmp_path: Path) -> None:
    h = Harness(tmp_path / "j.db")
    h.store("apple")
    h.store("pear")
    assert h.ask("apple?") == "answer to apple"  # the index holds both now
    other = Journal(tmp_path / "j.db")  # as `trilemma cache clear` would, from elsewhere
    other.db.execute("DELETE FROM semantic_cache WHERE prompt = 'apple'")
    other.db.commit()
    assert h.ask("apple?") is None  # the nearest row is gone: read afresh, pear is too far
    assert h.ask("pear?") == "answer to pear"


def test_a_newest_row_removed_and_its_rowid_reused_is_noticed(tmp_path: Path) -> None:
    h = Harness(tmp_path / "j.db")
    h.store("pear")
    h.store("apple")  # the newest row, rowid 2
    assert h.ask("pear?") == "answer to pear"  # the index has read up to rowid 2
    other = Journal(tmp_path / "j.db")  # another process clears apple, then stores kiwi
    scope = other.db.execute("SELECT scope FROM semantic_cache WHERE prompt = 'apple'").fetchone()[0]
    other.db.execute("DELETE FROM semantic_cache WHERE prompt = 'apple'")
    other.db.execute(
        "INSERT INTO semantic_cache (key, scope, embedder, prompt, vector, response, created_at) "
        "VALUES ('kiwi-key', ?, 'table', 'kiwi', ?, 'answer to kiwi', 0)",
        (scope, VECTORS["kiwi"].tobytes()),
    )
    other.db.commit()
    assert other.db.execute("SELECT rowid FROM semantic_cache WHERE prompt = 'kiwi'").fetchone()[0] == 2
    assert h.ask("kiwi?") == "answer to kiwi"  # found, though rowid 2 was read before


def test_the_index_is_shared_by_caches_of_one_journal_and_bounded_in_memory(
    tmp_path: Path, monkeypatch: Any
) -> None:
    Harness(tmp_path / "a.db").store("apple")
    assert Harness(tmp_path / "a.db").ask("apple?") == "answer to apple"
    assert len(lookup._indexes) == 1
    assert Harness(tmp_path / "b.db").ask("apple?") is None  # another journal, its own index
    held = [i.nbytes_held for i in lookup._indexes.values()]
    assert held == [16 * 12] * 2  # room for 16 vectors of 3 floats each
    monkeypatch.setattr(lookup, "MAX_INDEX_BYTES", 2 * 16 * 12)
    Harness(tmp_path / "c.db").ask("apple?")
    assert len(lookup._indexes) == 2
    assert str(tmp_path / "a.db") not in {k[0] for k in lookup._indexes}  # least recently used
    monkeypatch.setattr(lookup, "MAX_INDEX_BYTES", 0)
    assert Harness(tmp_path / "a.db").ask("apple?") == "answer to apple"  # the one in use stays
    assert [k[0] for k in lookup._indexes] == [str(tmp_path / "a.db")]


def test_the_index_grows_without_losing_rows_and_skips_other_lengths() -> None:
    rng = np.random.default_rng(0)
    vectors = rng.standard_normal((100, 8)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    index = SemanticIndex(32)
    index.add([(i + 1, f"k{i}", v.tobytes()) for i, v in enumerate(vectors[:10])])
    index.add([(11, "long", np.zeros(16, np.float32).tobytes())])  # another model's vector
    index.add([(i + 2, f"k{i}", v.tobytes()) for i, v in enumerate(vectors[10:], 10)])
    assert len(index) == 100 and (index.last_rowid, index.last_key) == (101, "k99")
    for i in (0, 9, 10, 57, 99):
        rowid, key, _ = index.nearest(vectors[i])  # type: ignore[misc]
        assert key == f"k{i}" and rowid == (i + 1 if i < 10 else i + 2)
    assert SemanticIndex(32).nearest(vectors[0]) is None
    entries = [(f"k{i}", v.tobytes(), f"a{i}") for i, v in enumerate(vectors)]
    match = best_match(vectors[42], entries)
    assert match is not None and (match.key, match.response) == ("k42", "a42")


def test_lookups_from_many_threads_share_the_registry_safely(tmp_path: Path) -> None:
    """Runs in threads of one process (each its own loop and writer) look up at once: each
    takes its index out while it uses it, so none sees another's half-added rows."""
    import threading

    Harness(tmp_path / "j.db").store("apple")
    Harness(tmp_path / "j.db").store("pear")
    errors: list[BaseException] = []
    answers: list[str | None] = []

    def worker(n: int) -> None:
        try:
            h = Harness(tmp_path / ("j.db" if n % 2 else f"other{n}.db"))
            for _ in range(30):
                answers.append(h.ask("apple?" if n % 2 else "pear?"))
        except BaseException as exc:  # reported below
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(n,)) for n in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert answers.count("answer to apple") == 90 and answers.count(None) == 90
