"""How much sooner `compare --parallel N` finishes, and whether it measures the same runs.

Two workloads, each run one at a time and N at a time, interleaved round by round in this
one process (the machine is shared: the ratios are what count):

- **endpoint**: a three-step chain on an OpenAI-compatible server on 127.0.0.1 whose every
  answer takes ``--delay`` seconds (the scripted server of ``trilemma.testing``), real time;
- **simulator**: ``examples/single.yaml`` and ``examples/ticket.yaml`` at time scale 0.01,
  as the README's demo compared them before the virtual clock (on which simulated runs are
  CPU work, and N at a time finish no sooner).

Each line gives the median wall time of the rounds, the ratio to one at a time, and whether
the success and cost columns came out as one at a time (on the simulator they must: every
run keeps its seed; on the endpoint every answer passes, so they must too).

    python benchmarks/bench_compare_parallel.py [--rounds 3] [--parallel 4 8] [--runs 16]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from trilemma import load_workflow, parse_workflow
from trilemma.examples import example_path
from trilemma.experiments.compare import Contender, compare
from trilemma.journal import Journal
from trilemma.testing import Reply, ScriptedServer

CHAIN = """version: 1
models:
  r: {{provider: openai, base_url: "{url}", model: m, usd_per_1m_input: 1.0,
      usd_per_1m_output: 10.0, latency_s: {delay}, p_ok: 0.99, prompt_tokens: 100,
      completion_tokens: 10}}
steps:
  - {{id: a, model: r}}
  - {{id: b, model: r, after: [a]}}
  - {{id: c, model: r, after: [b]}}
"""


def timed(work: Callable[[Path], list[Contender]]) -> tuple[float, list[tuple[int, float]]]:
    """Seconds ``work`` took on a fresh journal, and each row's (successes, mean cost)."""
    with tempfile.TemporaryDirectory() as d:
        started = time.perf_counter()
        rows = work(Path(d) / "j.db")
        took = time.perf_counter() - started
    return took, [(r.ok, round(r.cost_mean, 12)) for r in rows]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--parallel", type=int, nargs="+", default=[4, 8])
    ap.add_argument("--runs", type=int, default=16, help="Runs of the endpoint's chain.")
    ap.add_argument("--delay", type=float, default=0.1, help="Seconds the server takes an answer.")
    ap.add_argument("--sim-runs", type=int, default=60, help="Runs of each simulated spec.")
    args = ap.parse_args()
    levels = [1, *args.parallel]
    sims = [(n, load_workflow(example_path(n))) for n in ("single.yaml", "ticket.yaml")]
    with ScriptedServer(lambda _: Reply("42", delay_s=args.delay, prompt_tokens=100,
                                        completion_tokens=10)) as srv:  # fmt: skip
        chain = [("chain", parse_workflow(CHAIN.format(url=srv.url, delay=args.delay)))]
        workloads: dict[str, Callable[[int], Callable[[Path], list[Contender]]]] = {
            "endpoint": lambda n: lambda db: compare(chain, args.runs, Journal(db), time_scale=1.0,
                                                     parallel=n),
            "simulator": lambda n: lambda db: compare(sims, args.sim_runs, Journal(db), time_scale=0.01,
                                                      parallel=n),
        }  # fmt: skip
        took: dict[tuple[str, int], list[float]] = {}
        figures: dict[tuple[str, int], list[tuple[int, float]]] = {}
        for _ in range(args.rounds):
            for name, work in workloads.items():
                for n in levels:
                    seconds, got = timed(work(n))
                    took.setdefault((name, n), []).append(seconds)
                    figures.setdefault((name, n), got)
                    assert figures[(name, n)] == got, f"{name} x{n}: the runs differ between rounds"
    print(f"median of {args.rounds} rounds; endpoint: {args.runs} runs of a 3-call chain, each "
          f"answer {args.delay:g} s; simulator: {args.sim_runs} runs each of single and ticket")  # fmt: skip
    for name in workloads:
        alone = statistics.median(took[(name, 1)])
        for n in levels:
            t = statistics.median(took[(name, n)])
            same = "same" if figures[(name, n)] == figures[(name, 1)] else "DIFFERENT"
            print(f"{name:9} {n:>2} at a time: {t:6.2f} s  {alone / t:5.2f}x sooner  "
                  f"success and cost {same} as one at a time")  # fmt: skip


if __name__ == "__main__":
    main()
