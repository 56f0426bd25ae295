"""What the gateway adds to a request's latency: the same calls direct and through it.

The upstream is an OpenAI-compatible :class:`~trilemma.testing.ScriptedServer` on
127.0.0.1 that answers at once, so the difference is the gateway's own work per request:
parse, reserve, journal (the upstream may bill, so each call's record is committed
before it is sent), forward, bill. The gateway runs in a process of its own, as it is
deployed. Direct and gateway rounds are interleaved; the figures that matter are the
differences and ratios.

    python benchmarks/bench_gateway_latency.py [--requests 300] [--rounds 3]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import platform
import statistics
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import openai

from trilemma.testing import Reply, ScriptedServer, gateway_process

ROOT = Path(__file__).resolve().parents[1]
ASK = [{"role": "user", "content": "What is 2 + 2?"}]
MAX_TOKENS = 50


@contextmanager
def gateway(upstream: str) -> Iterator[str]:
    """``trilemma gateway`` in a process of its own, as it is deployed; its base URL."""
    with tempfile.TemporaryDirectory() as d:
        config = Path(d) / "gw.yaml"
        config.write_text(
            f"version: 1\nmodels:\n  m: {{provider: openai, base_url: '{upstream}', model: m1, "
            "usd_per_1m_input: 10, usd_per_1m_output: 20, latency_s: 0.1, p_ok: 1.0}\n"
            "keys:\n  bench: {key_env: BENCH_KEY, max_cost_usd: 1000000}\n"
        )
        with gateway_process(config, Path(d) / "j.db", {"BENCH_KEY": "sk-bench"}) as url:
            yield url


def sequential(url: str, model: str, key: str, n: int) -> list[float]:
    """Seconds of each of ``n`` requests, one after another."""
    out = []
    with openai.OpenAI(base_url=url, api_key=key, max_retries=0) as c:
        for _ in range(n):
            started = time.perf_counter()
            c.chat.completions.create(model=model, messages=ASK, max_tokens=MAX_TOKENS)  # type: ignore[arg-type]
            out.append(time.perf_counter() - started)
    return out


def concurrent(url: str, model: str, key: str, n: int, width: int) -> float:
    """Requests a second, ``n`` of them ``width`` at a time."""

    async def go() -> float:
        gate = asyncio.Semaphore(width)
        async with openai.AsyncOpenAI(base_url=url, api_key=key, max_retries=0) as c:

            async def one() -> None:
                async with gate:
                    await c.chat.completions.create(
                        model=model, messages=ASK, max_tokens=MAX_TOKENS
                    )  # type: ignore[arg-type]

            started = time.perf_counter()
            await asyncio.gather(*(one() for _ in range(n)))
            return n / (time.perf_counter() - started)

    return asyncio.run(go())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--requests", type=int, default=300)
    ap.add_argument("--width", type=int, default=16)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument(
        "--out", type=Path, default=ROOT / "benchmarks" / "results" / "gateway_latency.json"
    )
    args = ap.parse_args()
    direct_ms: list[float] = []
    gateway_ms: list[float] = []
    direct_rps: list[float] = []
    gateway_rps: list[float] = []

    def reply(_: dict[str, Any]) -> Reply:
        return Reply("4", prompt_tokens=10, completion_tokens=MAX_TOKENS)

    with ScriptedServer(reply) as up, gateway(up.url) as gw:
        sequential(up.url, "m1", "sk", 20)  # warm both paths up
        sequential(gw, "m", "sk-bench", 20)
        for _ in range(args.rounds):
            direct_ms += [t * 1e3 for t in sequential(up.url, "m1", "sk", args.requests)]
            gateway_ms += [t * 1e3 for t in sequential(gw, "m", "sk-bench", args.requests)]
            direct_rps.append(concurrent(up.url, "m1", "sk", args.requests, args.width))
            gateway_rps.append(concurrent(gw, "m", "sk-bench", args.requests, args.width))

    def pct(xs: list[float], q: float) -> float:
        return statistics.quantiles(xs, n=100)[int(q) - 1]

    row = {
        "direct_p50_ms": statistics.median(direct_ms), "gateway_p50_ms": statistics.median(gateway_ms),
        "direct_p95_ms": pct(direct_ms, 95), "gateway_p95_ms": pct(gateway_ms, 95),
        "direct_rps": statistics.median(direct_rps), "gateway_rps": statistics.median(gateway_rps),
    }  # fmt: skip
    row["added_p50_ms"] = row["gateway_p50_ms"] - row["direct_p50_ms"]
    row["added_p95_ms"] = row["gateway_p95_ms"] - row["direct_p95_ms"]
    row["throughput_ratio"] = row["gateway_rps"] / row["direct_rps"]
    print(f"one at a time: p50 {row['direct_p50_ms']:.2f} ms direct, {row['gateway_p50_ms']:.2f} ms "
          f"through the gateway (+{row['added_p50_ms']:.2f} ms); p95 {row['direct_p95_ms']:.2f} "
          f"vs {row['gateway_p95_ms']:.2f} ms (+{row['added_p95_ms']:.2f} ms)")  # fmt: skip
    print(
        f"{args.width} at a time: {row['direct_rps']:.0f} requests/s direct, "
        f"{row['gateway_rps']:.0f} through the gateway ({row['throughput_ratio']:.2f}x)"
    )
    meta = {"python": platform.python_version(), "requests": args.requests,
            "width": args.width, "rounds": args.rounds}  # fmt: skip
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"meta": meta, "result": row}, indent=2) + "\n")


if __name__ == "__main__":
    main()
