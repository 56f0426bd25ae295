"""The Monte Carlo or the optimizer of two revisions side by side: did a change slow it down?

Each round runs every case once per revision, each in a fresh interpreter whose
``trilemma`` is that revision's (a git worktree of ``--base``; the working tree for the
other), interleaved so that a noisy shared machine slows both alike; the medians and
their ratio are the figures.

    python benchmarks/bench_revisions.py --base bd304f1 [--rounds 5] [--runs 1000000]
    python benchmarks/bench_revisions.py --base db80ab9 --kind optimize [--rounds 3]

``--kind simulate`` (the default) times ``--runs`` trajectories of each Monte Carlo case;
``--kind optimize`` one ``optimize`` of each optimizer case (a search is deterministic).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CASES = {  # the spec, and the Simulation settings
    "seed 12-step chain": ("seed-chain.yaml", {}),
    "ticket (debates, retries)": ("ticket.yaml", {}),
    "ticket, leaky gate + correlated retries": (
        "ticket.yaml", {"recall": 0.8, "retry_correlation": 0.3, "compounding": 0.9},
    ),
    "jittery chain": ("jittery.yaml", {}),
    "diamond (a failure halts the other branch)": ("diamond.yaml", {}),
    "fan-out in 4 slots, under its deadline": ("fan-out.yaml", {}),
}  # fmt: skip
OPTIMIZE_CASES = {  # the spec, the budget, and what to give every vote step's `candidates`
    "seed chain, its budget": ("seed-chain.yaml", None, None),
    "cuttable, 9 s and 95%": ("cuttable.yaml", {"deadline_s": 9.0, "min_reliability": 0.95},
                              None),
    "fan-out in its slots, its budget": ("fan-out.yaml", None, None),
    "16 votes under rpm 60, two models each": ("rate-limited.yaml", None, ["small", "large"]),
    "100-step random DAG, 3 models, cascades, 50%": ("random DAG", {"min_reliability": 0.5},
                                                    None),
}  # fmt: skip


def random_dag(steps: int, seed: int = 3) -> dict[str, object]:
    """A spec of ``steps`` steps, each after one or two of the eight before it, each free to
    run on any of three models or as a cascade: a search the beam must prune hard."""
    import random

    rng = random.Random(seed)
    models = {"premium": {"usd_per_call": 0.030, "latency_s": 2.0, "p_ok": 0.985},
              "mid": {"usd_per_call": 0.010, "latency_s": 1.0, "p_ok": 0.90},
              "small": {"usd_per_call": 0.002, "latency_s": 0.4, "p_ok": 0.60}}  # fmt: skip
    out = []
    for i in range(steps):
        before = range(max(0, i - 8), i)
        after = rng.sample(before, min(i, rng.choice([1, 1, 2])))
        out.append({"id": f"s{i}", "model": "premium", "candidates": list(models),
                    "cascadable": True, "after": [f"s{d}" for d in sorted(after)]})  # fmt: skip
    return {"version": 1, "models": models, "steps": out}


def one(kind: str, runs: int) -> None:
    """In the child: seconds for each case (``runs`` trajectories after a warm-up, or one
    search)."""
    from trilemma import Budget, Simulation, load_workflow, optimize, simulate, workflow_from_dict

    out = {}
    if kind == "optimize":
        for name, (spec, budget, candidates) in OPTIMIZE_CASES.items():
            if spec == "random DAG":
                wf = workflow_from_dict(random_dag(100))
            else:
                wf = load_workflow(ROOT / "examples" / spec)
            if candidates:
                steps = [s.model_copy(update={"candidates": candidates}) if s.vote else s
                         for s in wf.steps]  # fmt: skip
                wf = wf.model_copy(update={"steps": steps})
            started = time.perf_counter()
            optimize(wf, Budget(**budget) if budget else wf.budget, max_retries=1)
            out[name] = time.perf_counter() - started
    else:
        for name, (spec, settings) in CASES.items():
            wf = load_workflow(ROOT / "examples" / spec)
            st = Simulation(**settings)
            simulate(wf, 100_000, seed=1, settings=st)
            started = time.perf_counter()
            simulate(wf, runs, seed=1, settings=st)
            out[name] = time.perf_counter() - started
    print(json.dumps(out))


def measure(src: Path, kind: str, runs: int) -> dict[str, float]:
    env = {**os.environ, "PYTHONPATH": str(src)}
    done = subprocess.run([sys.executable, __file__, "--one", str(runs), "--kind", kind],
                          env=env, capture_output=True, text=True, check=True)  # fmt: skip
    return json.loads(done.stdout.splitlines()[-1])  # type: ignore[no-any-return]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--base", help="The revision to compare the working tree with.")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--runs", type=int, default=1_000_000)
    ap.add_argument("--kind", choices=["simulate", "optimize"], default="simulate")
    ap.add_argument("--one", type=int, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.one:
        one(args.kind, args.one)
        return
    if not args.base:
        ap.error("give --base REV, the revision to compare the working tree with")
    with tempfile.TemporaryDirectory() as d:
        tree = Path(d) / "base"
        subprocess.run(["git", "-C", str(ROOT), "worktree", "add", "--detach", "-q", str(tree),
                        args.base], check=True)  # fmt: skip
        try:
            sides = {args.base: tree / "src", "working tree": ROOT / "src"}
            times: dict[str, dict[str, list[float]]] = {k: {} for k in sides}
            for _ in range(args.rounds):
                for side, src in sides.items():
                    for case, s in measure(src, args.kind, args.runs).items():
                        times[side].setdefault(case, []).append(s)
        finally:
            subprocess.run(["git", "-C", str(ROOT), "worktree", "remove", "--force", str(tree)],
                           check=True)  # fmt: skip
    base, new = (times[k] for k in sides)
    cases = OPTIMIZE_CASES if args.kind == "optimize" else CASES
    what = "one search" if args.kind == "optimize" else f"{args.runs:,} runs"
    print(f"{what}, median of {args.rounds} interleaved rounds")
    for case in cases:
        b, n = statistics.median(base[case]), statistics.median(new[case])
        print(f"{case:42s} {args.base} {b:.3f} s  working tree {n:.3f} s  ratio {n / b:.2f}")


if __name__ == "__main__":
    main()
