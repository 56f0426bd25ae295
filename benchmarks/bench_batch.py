"""How many runs a second one process carries in a batch, beside the time the calls alone take.

A one-step spec whose simulated call takes ``--latency`` seconds, run once per line, with
``--parallel`` runs at a time: the ideal is ``lines / parallel x latency``. What the batch
takes beyond that is its own cost (a run row, a journal writer, the executor, the commits).
The ratio is what matters on a shared machine.

    python benchmarks/bench_batch.py [--lines 2000] [--latency 0.5] [--parallel 100 500]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

from trilemma import parse_workflow
from trilemma.journal import Journal
from trilemma.run.batch import run_batch

SPEC = """version: 1
inputs: {{question: null}}
models:
  m: {{usd_per_call: 0.001, latency_s: {latency}, p_ok: 1.0}}
steps:
  - {{id: answer, model: m, prompt: "Answer: {{question}}"}}
"""


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--lines", type=int, default=2000)
    ap.add_argument("--latency", type=float, default=0.5)
    ap.add_argument("--parallel", type=int, nargs="+", default=[100, 500])
    args = ap.parse_args()
    wf = parse_workflow(SPEC.format(latency=args.latency))
    lines = [{"question": f"question {i}"} for i in range(args.lines)]
    for parallel in args.parallel:
        with tempfile.TemporaryDirectory() as d:
            started = time.perf_counter()
            result = run_batch(wf, lines, journal=Journal(Path(d) / "j.db"), parallel=parallel)
            took = time.perf_counter() - started
        assert result.status == "ok", result.error
        ideal = -(-args.lines // parallel) * args.latency
        print(f"{args.lines} runs, {parallel} at a time: {took:.2f} s against {ideal:.2f} s of "
              f"calls ({took / ideal:.2f}x), {args.lines / took:.0f} runs/s")  # fmt: skip


if __name__ == "__main__":
    main()
