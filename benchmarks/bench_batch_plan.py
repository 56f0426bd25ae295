"""A batch's planned time beside the time it took, on random specs run on the simulator.

Specs of up to six steps drawn as ``bench_estimate_accuracy.py`` draws them (jitter, faults,
timeouts, retries, votes, debates, routes, cache hit rates), their latencies cut 50x so that a
batch takes seconds, and three in ten of their models given a ``max_concurrency`` of 1-3
(an endpoint's limit, which the batch's runs share). Each spec's batch of ``--lines`` lines
runs ``--parallel`` at a time, ``--repeats`` times at seeds far apart (a line's seed is the
batch's plus its number, so near seeds share runs). Beside the mean time measured, four
plans: rounds of ``--parallel`` runs at their mean latency (the plan until the thirty-seventh
stop), the pool alone (runs drawn from the estimate's whole runs, the next line starting as
one ends), the pool or the models' limits, whichever is longer (the thirty-seventh stop's),
and the runs replayed together where a model is limited (the plan now). For each,
the ratios measured / planned, how many lie within 20%, and the median of their logs'
absolute values.

    python benchmarks/bench_batch_plan.py --specs 16 --seed 5
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import math
import random
import statistics
import sys
import tempfile
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))

from bench_estimate_accuracy import random_spec  # noqa: E402

from trilemma import Journal, workflow_from_dict  # noqa: E402
from trilemma.errors import TrilemmaError  # noqa: E402
from trilemma.plan.estimate import estimate  # noqa: E402
from trilemma.run import batch  # noqa: E402
from trilemma.spec import Workflow  # noqa: E402


def limited_spec(rng: random.Random) -> dict[str, Any]:
    """A random spec of at most six steps, 50x faster, some models limited."""
    spec = random_spec(rng)
    spec["steps"] = spec["steps"][:6]
    kept = {s["id"] for s in spec["steps"]}
    for s in spec["steps"]:
        s["after"] = [a for a in s["after"] if a in kept]
    for m in spec["models"].values():
        for key in ("latency_s", "timeout_s", "hedge_after_s"):
            if key in m:
                m[key] = round(m[key] / 50, 4)
        if rng.random() < 0.3:
            m["max_concurrency"] = rng.choice([1, 2, 3])
    return spec


def specs(n: int, seed: int) -> list[Workflow]:
    rng, out = random.Random(seed), []
    while len(out) < n:
        try:
            out.append(workflow_from_dict(limited_spec(rng)))
        except TrilemmaError:  # an escalation to its own model, say
            continue
    return out


def measured(wf: Workflow, lines: int, parallel: int, seed: int, folder: Path) -> float:
    journal = Journal(folder / f"{seed}.db")
    try:
        got = asyncio.run(batch.run_batch_async(wf, [{}] * lines, journal=journal,
                                                parallel=parallel, seed=seed))  # fmt: skip
    finally:
        journal.close()
    return got.latency_s


def plans(wf: Workflow, lines: int, parallel: int) -> dict[str, float]:
    p = estimate(wf)
    ends = batch._Ends.of(wf, p, lines, parallel)
    return {
        "rounds": math.ceil(lines / parallel) * batch._per_run_s(p),
        "pool": batch._took(ends.pool),
        "pool or limits": dataclasses.replace(ends, replayed=None).time().latency_s,
        "replayed": ends.time().latency_s,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--specs", type=int, default=16)
    parser.add_argument("--seed", type=int, default=5)
    parser.add_argument("--lines", type=int, default=40)
    parser.add_argument("--parallel", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    ratios: dict[str, list[float]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for i, wf in enumerate(specs(args.specs, args.seed), 1):
            took = statistics.fmean(
                measured(wf, args.lines, args.parallel, i * 100_000 + k * 1_000, Path(tmp))
                for k in range(args.repeats)
            )
            planned = plans(wf, args.lines, args.parallel)
            for name, value in planned.items():
                ratios.setdefault(name, []).append(took / value)
            shown = "  ".join(f"{name} {value:6.2f}s" for name, value in planned.items())
            print(f"spec {i:2d}: took {took:6.2f}s  planned: {shown}", flush=True)
    for name, got in ratios.items():
        near = sum(1 for r in got if abs(r - 1) <= 0.2)
        spread = statistics.median(abs(math.log(r)) for r in got)
        print(f"{name}: measured / planned {min(got):.2f}-{max(got):.2f}, within 20% on {near} "
              f"of {len(got)}, median |log ratio| {spread:.3f}")  # fmt: skip


if __name__ == "__main__":
    main()
