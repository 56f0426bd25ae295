"""Monte Carlo throughput: vectorised numpy against a plain-Python loop over the same workflow.

Both run side by side in one process, interleaved round by round, so a noisy
shared machine slows both alike; the figure that matters is the ratio.

    python benchmarks/bench_simulate.py [--rounds 3] [--vector-runs 1000000] [--loop-runs 20000]
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from pathlib import Path

from trilemma import Simulation, load_workflow, simulate
from trilemma.plan.simulate import simulate_loop

ROOT = Path(__file__).resolve().parents[1]
CASES = {
    "seed 12-step chain": (ROOT / "examples" / "seed-chain.yaml", Simulation()),
    "ticket (debates, retries)": (ROOT / "examples" / "ticket.yaml", Simulation()),
    "ticket, leaky gate + correlated retries": (
        ROOT / "examples" / "ticket.yaml",
        Simulation(recall=0.8, retry_correlation=0.3, compounding=0.9),
    ),
}


def rate(fn, *args, runs: int, **kw) -> float:
    """Trajectories per second of one call."""
    t = time.perf_counter()
    fn(*args, runs, **kw)
    return runs / (time.perf_counter() - t)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--vector-runs", type=int, default=1_000_000)
    ap.add_argument("--loop-runs", type=int, default=20_000)
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "simulate.json")
    args = ap.parse_args()
    rows = []
    for name, (path, st) in CASES.items():
        wf = load_workflow(path)
        vec, loop = [], []
        for r in range(args.rounds):
            vec.append(rate(simulate, wf, runs=args.vector_runs, seed=r, settings=st))
            loop.append(rate(simulate_loop, wf, runs=args.loop_runs, seed=r, settings=st))
        v, lp = statistics.median(vec), statistics.median(loop)
        rows.append({"case": name, "steps": len(wf.steps), "vectorised_per_s": v,
                     "loop_per_s": lp, "ratio": v / lp,
                     "million_runs_s": 1e6 / v})  # fmt: skip
        print(f"{name:42s} vectorised {v:>12,.0f}/s  loop {lp:>9,.0f}/s  "
              f"ratio {v / lp:5.1f}x  1M runs in {1e6 / v:.2f}s")  # fmt: skip
    args.out.parent.mkdir(parents=True, exist_ok=True)
    meta = {"python": platform.python_version(), "machine": platform.machine(),
            "rounds": args.rounds, "vector_runs": args.vector_runs, "loop_runs": args.loop_runs}  # fmt: skip
    args.out.write_text(json.dumps({"meta": meta, "rows": rows}, indent=2) + "\n")


if __name__ == "__main__":
    main()
