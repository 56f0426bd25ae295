"""Instructions per step of the executor benchmark's workloads, counted by valgrind.

Wall-clock time on a shared two-core machine moves by 30% from one minute to the
next; the count of instructions a run executes moves much less, but not nothing.
The journal commits on a timer, and under valgrind (about 50x slower) how many
commits a run makes, and so how many instructions, still depends on the machine's
load: two counts of the chain agreed within 1%, of the DAG within 4% (2026-12-02,
on a busy machine), but counts of one commit later moved 8-20% from run to run. Count
one system at a time, each side several times, and compare counts taken together. It is a proxy, not a timing: an instruction of SQLite's C code and one of
the interpreter's do not cost the same. It tells whether a change to the hot path
made it do less, and how far each system is from plain asyncio.

Each figure is (count of 3 runs - count of 1 run) / 2 / steps, so that start-up,
imports and first-use costs cancel out. Needs valgrind (Debian's ``valgrind``) and,
for LangGraph's column, the environment ``run_executor_bench.sh`` builds:

    python benchmarks/bench_instructions.py [--systems trilemma asyncio langgraph]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench_executor as bench  # the same graphs, specs and systems

WORKLOADS = {"chain": (bench.chain, 2000), "dag": (bench.random_dag, 1000)}


def one(system: str, workload: str, runs: int) -> None:
    """``runs`` runs of ``system`` on ``workload``, everything they need built first."""
    make, n = WORKLOADS[workload]
    graph = make(n)
    if system == "trilemma":
        from trilemma.journal import Journal
        from trilemma.run.session import execute

        specs = [bench.spec(graph, 0.0) for _ in range(3)]  # built alike whatever ``runs`` is
        for wf in specs[:runs]:
            with tempfile.TemporaryDirectory() as d:
                journal = Journal(Path(d) / "bench.db")
                assert execute(wf, journal=journal, seed=1).status == "ok"
                journal.close()
    elif system == "asyncio":
        for _ in range(runs):
            bench.run_asyncio(graph, 0.0)
    else:
        app = bench.langgraph_app(graph, 0.0)
        assert app is not None, "LangGraph is not installed here"
        config = {"recursion_limit": n * 4 + 100}
        for _ in range(runs):
            assert asyncio.run(app.ainvoke({"count": 0}, config))["count"] == n


def count(system: str, workload: str, runs: int) -> int:
    """Instructions valgrind counted for a process making ``runs`` runs."""
    out = subprocess.run(
        ["valgrind", "--tool=cachegrind", "--cache-sim=no", "--cachegrind-out-file=/dev/null",
         sys.executable, __file__, "--one", system, workload, str(runs)],
        capture_output=True, text=True, check=True, env={**os.environ, "PYTHONHASHSEED": "0"},
    )  # fmt: skip
    found = re.search(r"I\s+refs:\s+([\d,]+)", out.stderr)
    assert found, out.stderr[-2000:]
    return int(found.group(1).replace(",", ""))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--systems", nargs="+", default=["trilemma", "asyncio", "langgraph"])
    ap.add_argument(
        "--one", nargs=3, metavar=("SYSTEM", "WORKLOAD", "RUNS"), help=argparse.SUPPRESS
    )
    args = ap.parse_args()
    if args.one:
        one(args.one[0], args.one[1], int(args.one[2]))
        return
    if shutil.which("valgrind") is None:
        sys.exit("bench_instructions: valgrind is not installed (apt-get install valgrind)")
    systems = [s for s in args.systems if s != "langgraph" or bench.langgraph_app({"s0": []}, 0.0)]
    for workload, (_, n) in WORKLOADS.items():
        per_step = {s: (count(s, workload, 3) - count(s, workload, 1)) / 2 / n for s in systems}
        cells = "  ".join(f"{s} {v / 1000:7.1f}k" for s, v in per_step.items())
        ratio = ""
        if "langgraph" in per_step and "trilemma" in per_step:
            ratio = f"  LangGraph/trilemma {per_step['langgraph'] / per_step['trilemma']:.1f}x"
        print(f"{workload:5s} instructions/step: {cells}{ratio}")


if __name__ == "__main__":
    main()
