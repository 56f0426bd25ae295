"""Simulated experiments on a virtual clock beside scaled time: how long they take, and how
far their measured latencies and deadline rows land from the planner's.

The same compares and deadline sweeps run at ``--time-scale 0.01`` (the default before the
virtual clock) and ``0`` (a virtual clock, now the default), and at any other ``--scales``
given, interleaved round by round in this one process (the machine is shared: the ratios
are what count):

- **compare**: ``--runs`` runs each of ``examples/ticket.yaml`` (a 14 s chain of debates),
  ``cascade.yaml``, ``hedged.yaml`` (jittery calls, hedged after 3 s) and
  ``rate-limited.yaml`` (80 calls through a 60-a-minute bucket). For each, the measured mean
  latency against the Monte Carlo's mean (100,000 runs, halting failed runs as the executor
  does), as a relative error.
- **deadline**: a sweep of ticket.yaml at a 14.05 s deadline, 50 ms past its critical path:
  measured success against the Monte Carlo's.

Each line gives the median wall time of the rounds and its ratio to the virtual clock's.
The seeds fix every draw, so success and cost come out alike at every scale unless timing
decides something (a hedge fired or not, a deadline met or not): the last lines say. At a
scale below 1 the event loop's timer slack, up to about 1 ms a wait, is magnified with the
clock; on a virtual clock there is none.

    python benchmarks/bench_time_scale.py [--rounds 3] [--runs 100] [--scales 0.1 0.01 0]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

from trilemma import load_workflow
from trilemma.examples import example_path
from trilemma.experiments.compare import compare
from trilemma.experiments.sweep import Limits, budget_sweep
from trilemma.journal import Journal

SPECS = ("ticket.yaml", "cascade.yaml", "hedged.yaml", "rate-limited.yaml")
DEADLINE_S = 14.05


def name_of(scale: float) -> str:
    return "virtual" if scale == 0 else f"{scale:g}"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--runs", type=int, default=100, help="Runs of each spec, and of the sweep.")
    ap.add_argument("--scales", type=float, nargs="+", default=[0.01, 0.0])
    args = ap.parse_args()
    scales = sorted(set(args.scales) | {0.0}, reverse=True)
    specs = [(n, load_workflow(example_path(n))) for n in SPECS]
    ticket = specs[0][1]
    took: dict[tuple[str, float], list[float]] = {}
    latency: dict[tuple[str, float], tuple[float, float]] = {}  # measured, predicted
    alike: dict[str, set[tuple[object, ...]]] = {}
    deadline: dict[float, tuple[float, float]] = {}  # measured, predicted success
    for _ in range(args.rounds):
        for scale in scales:
            with tempfile.TemporaryDirectory() as d:
                for name, wf in specs:
                    started = time.perf_counter()
                    [row] = compare([(name, wf)], args.runs, Journal(Path(d) / f"{name}.db"),
                                    time_scale=scale)  # fmt: skip
                    took.setdefault((name, scale), []).append(time.perf_counter() - started)
                    latency[(name, scale)] = (row.latency_mean_s, row.simulated.latency_s.mean)
                    alike.setdefault(name, set()).add((row.ok, round(row.cost_mean, 12)))
                started = time.perf_counter()
                sw = budget_sweep(ticket, [Limits(None, DEADLINE_S)], args.runs,
                                  Journal(Path(d) / "sweep.db"), time_scale=scale)  # fmt: skip
                took.setdefault(("deadline", scale), []).append(time.perf_counter() - started)
                [cut] = sw.rows
                assert cut.predicted_success is not None
                deadline[scale] = (cut.success_rate, cut.predicted_success)
    print(f"median of {args.rounds} rounds, {args.runs} runs a spec; latency: measured mean "
          "against the Monte Carlo's")  # fmt: skip
    for name in [*SPECS, "deadline"]:
        virtual = statistics.median(took[(name, 0.0)])
        for scale in scales:
            t = statistics.median(took[(name, scale)])
            if name == "deadline":
                got, want = deadline[scale]
                what = f"success {got:6.1%} measured, {want:6.1%} predicted at {DEADLINE_S:g} s"
            else:
                got, want = latency[(name, scale)]
                what = f"latency {got:7.3f} s against {want:7.3f} s ({got / want - 1:+6.2%})"
            print(f"{name:17} {name_of(scale):>7}: {t:7.2f} s  {t / virtual:6.1f}x the virtual "
                  f"clock's time  {what}")  # fmt: skip
    for name, seen in alike.items():
        print(f"{name:17} successes and mean cost: " + ("alike at every scale" if len(seen) == 1
              else "differ between scales: " + ", ".join(f"{ok} ok ${c:.4f}" for ok, c in sorted(seen))))  # fmt: skip


if __name__ == "__main__":
    main()
