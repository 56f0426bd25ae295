"""An answer just stored is found by the next lookup, before the journal's commit of it lands.

The gateway answered a client, queued the answer for the cache's next group commit (2 ms
later), and a client repeating the request at once missed the cache and paid again."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from trilemma.cache import lookup
from trilemma.cache.lookup import Cache
from trilemma.journal import Journal
from trilemma.journal.store import JournalWriter

SETTINGS = ["gateway", "openai", "m1", 256, None, []]
ASK = [{"role": "user", "content": "Pick a number."}]


def ask_twice(path: Path, tenant: str | None = None) -> tuple[object, object, object]:
    async def go() -> tuple[object, object, object]:
        writer = JournalWriter(Journal(path), window_s=60.0)  # no commit lands meanwhile
        cache = Cache(writer)
        first = await cache.lookup(SETTINGS, ASK, None, "team-a")
        cache.store(SETTINGS, ASK, "7", "small", None, 12, 3, "team-a")
        again = await cache.lookup(SETTINGS, ASK, None, "team-a")
        other = await cache.lookup(SETTINGS, ASK, None, "team-b")
        await writer.aclose()
        return first.hit, again.hit, other.hit

    return asyncio.run(go())


def test_a_repeat_right_after_the_answer_is_a_hit(tmp_path: Path) -> None:
    first, again, other = ask_twice(tmp_path / "j.db")
    assert first is None and other is None  # another tenant never sees it
    assert again is not None and again.response == "7" and again.completion_tokens == 3
    rows = Journal(tmp_path / "j.db").db.execute("SELECT response FROM cache").fetchall()
    assert [tuple(r) for r in rows] == [("7",)]  # and the writer commits it when it closes


def test_past_the_window_a_lookup_reads_the_journal(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(lookup, "RECENT_S", 0.0)  # held no time: what the journal holds counts
    _, again, _ = ask_twice(tmp_path / "j.db")
    assert again is None  # its commit had not landed
