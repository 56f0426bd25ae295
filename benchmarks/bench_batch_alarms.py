"""How often a batch's "a guess of the spec is off" line cries wolf, and how often it is right.

Each trial runs a batch of ``--lines`` runs of a spec on the simulator (scaled time, a
journal of its own), then weighs the runs' bills and successes against a spec's plan: the
same spec (every guess right, so any alarm is false) or one with a guess made wrong (the
runs drew from the truth; the line reads the plan of the spec as written). Two rules are set
side by side on the same batches:

- apart: the runs' mean cost outside its 95% interval (and 10% off), or their share ok
  outside its 99% Wilson interval, each on its own, as the batch judged until the
  forty-third stop;
- t test: Student's t test of the mean cost and the exact binomial test of the share ok,
  both weighed at once by Holm's test at 5%, as it judged at the forty-third stop;
- plan's draws: the mean cost against means of the plan's own draws of a run's bill
  (:func:`trilemma.plan.agreement.drawn_mean_figure`) and the same exact test, weighed at
  once (:func:`trilemma.plan.agreement.off_plan`), as it judges now.

    python benchmarks/bench_batch_alarms.py [--batches 500] [--lines 40] [--out results.json]
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import math
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

from bench_check_alarms import rules_table
from rich.console import Console
from rich.progress import track

from trilemma import estimate
from trilemma.experiments.trials import time_scaled
from trilemma.journal import Journal
from trilemma.plan.agreement import OFF_PLAN_SHARE, Z95, wilson
from trilemma.plan.estimate import bill_draws
from trilemma.run.batch import BatchResult, run_batch_async
from trilemma.spec import Workflow, load_workflow

ROOT = Path(__file__).resolve().parents[1]
AT_ONCE = 20
"""Batches run side by side in one event loop, each with a journal of its own."""
RULES = (("apart", "apart"), ("t", "t test"), ("together", "plan's draws"))
"""The rules set side by side: each one's key in the results and its column's label."""
Z99 = 2.575829
"""The normal quantile of a two-sided 99% interval: the share ok's, as the batch read it."""

#: (name, example, --set the runs draw from, which figure the wrong guess moves): an empty
#: --set weighs the spec against runs of itself.
CASES: list[tuple[str, str, tuple[str, ...], str]] = [
    ("single call, honest", "single.yaml", (), ""),
    ("faq (retries), honest", "faq.yaml", (), ""),
    ("debate, honest", "debate.yaml", (), ""),
    ("routed, honest", "routed.yaml", (), ""),
    ("cascade, honest", "cascade.yaml", (), ""),
    ("debate: p_ok 0.95 planned 0.995", "debate.yaml", ("steps.answer.p_ok=0.95",), "success"),
    ("routed: hard 0.25 planned 0.15", "routed.yaml",
     ("steps.answer.route.simple.share=0.75", "steps.answer.route.hard.share=0.25"), "cost"),
    ("faq: p_ok 0.8 planned 0.93", "faq.yaml", ("models.small.p_ok=0.8",), "cost"),
]  # fmt: skip


def apart(b: BatchResult) -> set[str]:
    """The figures the rule before weighs off, each on its own."""
    costs = [r.cost_usd for r in b.lines]
    ok, n, planned = sum(r.status == "ok" for r in b.lines), len(costs), b.cost_planned_per_run
    mean = math.fsum(costs) / n
    spread = Z95 * statistics.stdev(costs) / math.sqrt(n)
    lo, hi = wilson(ok, n, Z99)
    return ({"cost"} if abs(mean - planned) > max(spread, OFF_PLAN_SHARE * planned) else set()) | (
        set() if lo <= b.predicted.reliability <= hi else {"success"})  # fmt: skip


def together(b: BatchResult) -> set[str]:
    """The figures the batch weighs off now (both at once; with ``cost_drawn`` None, by the
    t test)."""
    cost, success = b.off_plan()
    return {name for name, f in (("cost", cost), ("success", success)) if f is not None}


async def side_by_side(
    wf: Workflow, inputs: list[dict[str, str]], journals: list[Journal], seeds: list[int]
) -> list[BatchResult]:
    """A batch of ``wf`` per seed, all at once (a retry's backoff is not scaled by
    ``time_scaled``: side by side the batches share its waits)."""
    return list(await asyncio.gather(*(
        run_batch_async(wf, inputs, journal=j, seed=seed, parallel=len(inputs))
        for j, seed in zip(journals, seeds, strict=False))))  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--batches", type=int, default=500)
    parser.add_argument("--lines", type=int, default=40)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    started = time.perf_counter()
    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory() as d:
        for i, (name, example, sets, wrong) in enumerate(CASES):
            written = load_workflow(ROOT / "examples" / example)
            claimed, drawn = estimate(written), bill_draws(written)
            truth = time_scaled(load_workflow(ROOT / "examples" / example, sets), 0.001)
            journals = [Journal(Path(d) / f"{i}-{k}.db") for k in range(AT_ONCE)]
            inputs = [{"question": f"q{k}"} if truth.inputs else {} for k in range(args.lines)]

            counts = {f"{what}_{rule}": 0 for what in ("alarms", "caught") for rule, _ in RULES}
            for first in track(range(0, args.batches, AT_ONCE), description=name, transient=True):
                seeds = [100_000 * t + 1 for t in range(first, min(first + AT_ONCE, args.batches))]
                for ran in asyncio.run(side_by_side(truth, inputs, journals, seeds)):
                    # the plan of the spec as written (the runs' bills do not scale with time)
                    b = dataclasses.replace(ran, predicted=claimed, planned_time=None, cost_drawn=drawn)
                    for rule, said in (("apart", apart(b)), ("together", together(b)),
                                       ("t", together(dataclasses.replace(b, cost_drawn=None)))):
                        counts[f"alarms_{rule}"] += bool(said)
                        counts[f"caught_{rule}"] += wrong in said
            for j in journals:
                j.close()
            rows.append({"case": name, "wrong": wrong or None, **counts})
    caption = ("apart: cost at 95% and success at 99% (Wilson), each on its own; t test: the t "
               "test of the mean cost and the exact test of the share ok, Holm's test at 5% over "
               "both; plan's draws: the mean cost against means of the plan's draws of a run's "
               f"bill, and the same; {time.perf_counter() - started:.0f} s")  # fmt: skip
    n = args.batches
    table = rules_table(f"batch's off-plan line: {n} batches of {args.lines} simulated runs each, "
                        "three rules on the same batches", rows, n, caption, digits=1,
                        rules=RULES)  # fmt: skip
    Console().print(table)
    if args.out is not None:
        args.out.write_text(json.dumps({"batches": n, "lines": args.lines, "cases": rows},
                                       indent=2) + "\n")  # fmt: skip


if __name__ == "__main__":
    main()
