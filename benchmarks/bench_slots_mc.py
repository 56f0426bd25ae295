"""What the concurrency slots cost the Monte Carlo: one spec where they bind and where they do not.

Where the slots may hold a call up, the vectorised Monte Carlo times every call again in
them (each call an ``argmin`` over the slots, trajectory by trajectory). The same specs run
with ``concurrency`` past their calls, where it does not, side by side in one process,
interleaved round by round; the ratio is the figure (the machines are shared and noisy).

    python benchmarks/bench_slots_mc.py [--rounds 3] [--runs 100000]
"""

from __future__ import annotations

import argparse
import statistics
import time

from trilemma import parse_workflow, simulate
from trilemma.spec import Workflow

MODEL = "  m: {usd_per_call: 0.01, latency_s: 1.0, p_ok: 0.9, latency_jitter: 0.5}\n"


def spec(steps: list[str], concurrency: int) -> Workflow:
    lines = "".join(f"  - {s}\n" for s in steps)
    return parse_workflow(f"version: 1\nconcurrency: {concurrency}\nmodels:\n{MODEL}steps:\n{lines}")


def fan_out(n: int, concurrency: int) -> Workflow:
    return spec([f"{{id: s{i}, model: m, retries: 1}}" for i in range(n)], concurrency)


def debates(n: int, concurrency: int) -> Workflow:
    merge = f"{{id: merge, model: m, after: [{', '.join(f's{i}' for i in range(n))}]}}"
    return spec([*(f"{{id: s{i}, model: m, debate: {{agents: 3, rounds: 2}}}}" for i in range(n)),
                 merge], concurrency)  # fmt: skip


CASES = {
    "40 retried calls, 16 slots": (fan_out(40, 16), fan_out(40, 40)),
    "8 debates (3 x 2) + merge, 16 slots": (debates(8, 16), debates(8, 100)),
}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--runs", type=int, default=100_000)
    a = ap.parse_args()
    print(f"{a.runs:,} runs, median of {a.rounds} interleaved rounds")
    for name, (bound, free) in CASES.items():
        times: dict[str, list[float]] = {"bound": [], "free": []}
        latency = {}
        for _ in range(a.rounds):
            for key, wf in (("bound", bound), ("free", free)):
                t = time.perf_counter()
                r = simulate(wf, a.runs, seed=1)
                times[key].append(time.perf_counter() - t)
                latency[key] = r.latency_s.mean
        b, f = statistics.median(times["bound"]), statistics.median(times["free"])
        print(f"{name:38s} in the slots {b:.3f} s (latency {latency['bound']:.2f} s)  "
              f"without {f:.3f} s (latency {latency['free']:.2f} s)  ratio {b / f:.1f}x")


if __name__ == "__main__":
    main()
