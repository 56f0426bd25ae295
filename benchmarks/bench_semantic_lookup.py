"""What a semantic-cache lookup costs as the cache grows: the index kept between lookups
beside reading every vector back from the journal, as each lookup did before.

A journal is filled with N unit vectors (384 floats, all-MiniLM-L6-v2's size) in one
scope. Then, at each size, the two ways answer the same queries, interleaved round by
round: ``full read`` selects every entry of the scope and takes the nearest (the code
before the index); ``index`` is :class:`trilemma.cache.lookup.Cache`'s own lookup, warm
from the lookup before, as in a gateway or a batch, and with one new entry stored between
lookups (a miss is stored: the index reads that row and no other). Embedding the prompt
is left out of both (all-MiniLM-L6-v2 takes about 5-10 ms per prompt on these cores).

    python benchmarks/bench_semantic_lookup.py [--sizes 1000 10000 50000] [--rounds 5]
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from trilemma.cache.keys import semantic_scope
from trilemma.cache.lookup import Cache
from trilemma.cache.semantic import best_match
from trilemma.journal import Journal
from trilemma.journal.store import JournalWriter

ROOT = Path(__file__).resolve().parents[1]
DIM = 384
SETTINGS = ["sim", None, "m"]
EMBEDDER = "bench"


def unit_rows(rng: np.random.Generator, n: int) -> np.ndarray:
    rows = rng.standard_normal((n, DIM)).astype(np.float32)
    return rows / np.linalg.norm(rows, axis=1, keepdims=True)


def fill(journal: Journal, rng: np.random.Generator, numbers: list[int]) -> None:
    scope = semantic_scope(SETTINGS)
    rows = [(f"k{i}", scope, EMBEDDER, f"prompt {i} " * 8, v.tobytes(), f"answer {i} " * 30, 0.0)
            for i, v in zip(numbers, unit_rows(rng, len(numbers)), strict=True)]  # fmt: skip
    with journal.db:
        journal.db.executemany("INSERT INTO semantic_cache (key, scope, embedder, prompt, vector, "
                               "response, created_at) VALUES (?, ?, ?, ?, ?, ?, ?)", rows)  # fmt: skip


def full_read(journal: Journal, query: np.ndarray) -> Any:
    """The lookup before the index: every vector of the scope read back, then the product."""
    entries = journal.db.execute(
        "SELECT key, vector, response FROM semantic_cache WHERE scope = ? AND embedder = ? "
        "ORDER BY created_at", (semantic_scope(SETTINGS), EMBEDDER),
    ).fetchall()  # fmt: skip
    return best_match(query, [(r[0], r[1], r[2]) for r in entries])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", type=int, nargs="+", default=[1000, 10000, 50000])
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--lookups", type=int, default=20, help="lookups per way per round")
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "semantic_lookup.json")
    args = ap.parse_args()
    rng = np.random.default_rng(0)
    results = []
    with tempfile.TemporaryDirectory() as d:
        journal = Journal(Path(d) / "bench.db")
        writer = JournalWriter(journal, 0.0)
        cache = Cache(writer)
        scope = semantic_scope(SETTINGS)
        keys = iter(range(10**9))  # the next entry's number

        def add(n: int) -> None:
            fill(journal, rng, [next(keys) for _ in range(n)])

        for size in sorted(args.sizes):
            add(size - journal.db.execute("SELECT count(*) FROM semantic_cache").fetchone()[0])
            times: dict[str, list[float]] = {"full read": [], "index": []}

            def indexed(queries: np.ndarray) -> float:
                spent = 0.0
                for q in queries:
                    started = time.perf_counter()
                    cache._nearest(scope, EMBEDDER, q)
                    spent += time.perf_counter() - started
                    add(1)  # a miss, stored (not timed): the next lookup reads this row only
                return spent / len(queries)

            indexed(unit_rows(rng, 1))  # warm: the first lookup reads the scope
            for _ in range(args.rounds):
                queries = unit_rows(rng, args.lookups)
                started = time.perf_counter()
                for q in queries:
                    full_read(journal, q)
                times["full read"].append((time.perf_counter() - started) / len(queries))
                times["index"].append(indexed(queries))
            full, idx = (statistics.median(times[k]) * 1000 for k in ("full read", "index"))
            ratios = [a / b for a, b in zip(times["full read"], times["index"], strict=True)]
            results.append({"entries": size, "full_read_ms": round(full, 3),
                            "index_ms": round(idx, 3), "ratio": round(full / idx, 1),
                            "ratio_range": [round(min(ratios), 1), round(max(ratios), 1)]})  # fmt: skip
            print(f"{size:>7,} entries: full read {full:8.2f} ms, index {idx:6.2f} ms per lookup, "
                  f"{full / idx:6.1f}x (rounds {min(ratios):.1f}-{max(ratios):.1f}x)")  # fmt: skip
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"machine": platform.platform(), "dim": DIM,
                                    "rounds": args.rounds, "lookups": args.lookups,
                                    "results": results}, indent=2) + "\n")  # fmt: skip
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
