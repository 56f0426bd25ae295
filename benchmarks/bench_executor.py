"""Executor overhead per step: trilemma (journal on) beside plain asyncio and LangGraph.

Every system runs the same graphs of zero-latency calls, so all the time is
overhead. They run interleaved, round by round, each measurement in a fresh
interpreter after one untimed warm-up run (LangGraph's compile is not timed
either) and a full garbage collection, so that no system pays for another's heap
nor for a collection its warm-up left due; the figures that matter
are the ratios. A third workload gives every call 20 ms and checks
that a wide random DAG finishes close to its critical path.

A floor sits beside them: plain asyncio writing the same two ledger rows per step through
trilemma's journal writer, what any executor that journals each call on the loop's thread
pays before it holds a budget or retries anything.

Two pairs are compared: trilemma (journal on, records committed in groups)
beside LangGraph as it runs by default (in memory, nothing saved); and the
durable pair, trilemma journaling every call before it is sent beside LangGraph
with its SQLite checkpointer saving every superstep before the next.

LangGraph is not a trilemma dependency: ``benchmarks/run_executor_bench.sh``
builds a separate environment with it (and langgraph-checkpoint-sqlite).
Without them their columns are left out (and the script says so).

    python benchmarks/bench_executor.py [--rounds 3] [--chain 2000] [--dag 1000]
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import operator
import platform
import random
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any

from rich.progress import track

from trilemma import estimate, workflow_from_dict
from trilemma.journal import Journal
from trilemma.run.session import execute
from trilemma.testing import FunctionProvider

ROOT = Path(__file__).resolve().parents[1]
Graph = dict[str, list[str]]


def chain(n: int) -> Graph:
    return {f"s{i}": ([f"s{i - 1}"] if i else []) for i in range(n)}


def random_dag(n: int, seed: int = 7, max_deps: int = 3) -> Graph:
    rng = random.Random(seed)
    return {
        f"s{i}": sorted({f"s{rng.randrange(i)}" for _ in range(rng.randint(0, max_deps))})
        if i
        else []
        for i in range(n)
    }


def spec(graph: Graph, latency: float) -> Any:
    return workflow_from_dict({
        "version": 1, "concurrency": 10_000,
        "models": {"m": {"usd_per_call": 0.0, "latency_s": max(latency, 1e-9), "p_ok": 1.0}},
        "steps": [{"id": k, "model": "m", "after": v} for k, v in graph.items()],
    })  # fmt: skip


class DurableInstant(FunctionProvider):
    """A zero-latency provider that says it may bill: every call is journaled before it is sent."""

    external = True

    def __init__(self) -> None:
        async def answer(request: Any) -> str:
            await asyncio.sleep(0)
            return "ok"

        super().__init__(answer)


def run_trilemma(graph: Graph, latency: float, durable: bool = False) -> float:
    wf = spec(graph, latency)
    with tempfile.TemporaryDirectory() as d:
        journal = Journal(Path(d) / "bench.db")
        providers = {"m": DurableInstant()} if durable else None
        started = time.perf_counter()
        result = execute(wf, journal=journal, seed=1, providers=providers)
        elapsed = time.perf_counter() - started
        assert result.status == "ok", result.error
        journal.close()
    return elapsed


def run_asyncio(graph: Graph, latency: float) -> float:
    async def main() -> None:
        done = {k: asyncio.Event() for k in graph}

        async def node(k: str) -> None:
            for d in graph[k]:
                await done[d].wait()
            await asyncio.sleep(latency)
            done[k].set()

        async with asyncio.TaskGroup() as tg:
            for k in graph:
                tg.create_task(node(k))

    started = time.perf_counter()
    asyncio.run(main())
    return time.perf_counter() - started


def run_asyncio_ledger(graph: Graph, latency: float) -> float:
    """Plain asyncio writing, per step, the two rows trilemma's ledger keeps (the call, with
    the prompt it sent, and the step), through trilemma's own journal writer: the floor of
    any executor that journals each call from the loop's thread, with no budget, limit,
    retry or simulator."""
    from trilemma.journal.store import FREE_COMMIT_S, JournalWriter, messages_json

    with tempfile.TemporaryDirectory() as d:
        journal = Journal(Path(d) / "floor.db")
        journal.create_run({"run_id": "r", "spec_source": "bench", "spec_json": "{}",
                            "spec_hash": "h", "inputs_json": "{}", "seed": 1,
                            "status": "running", "started_at": time.time(),
                            "predicted_json": "{}"})  # fmt: skip

        async def main() -> None:
            writer = JournalWriter(journal, FREE_COMMIT_S)
            done = {k: asyncio.Event() for k in graph}

            async def node(k: str) -> None:
                for dep in graph[k]:
                    await done[dep].wait()
                prompt = f"Task: {k}.\n" + "\n".join(f"{dep} said: ok" for dep in graph[k])
                key = f"r:{k}:1:1"
                writer.defer("call_started", {
                    "run_id": "r", "step_id": k, "attempt": 1, "call": 1, "role": "call",
                    "model": "m", "idempotency_key": key, "reserved_usd": 0.0,
                    "request_json": messages_json([{"role": "user", "content": prompt}]),
                    "started_at": time.time(),
                })  # fmt: skip
                await asyncio.sleep(latency)
                writer.defer("attempt_finished", "r", k, [(key, {
                    "prompt_tokens": 10, "completion_tokens": 1, "cached_tokens": 0,
                    "cost_usd": 0.0, "latency_s": latency, "response": "ok",
                    "finished_at": time.time(), "error": None,
                })], rejected=False, step={"status": "done", "output": "ok", "attempts": 1,
                                           "cost_usd": 0.0})  # fmt: skip
                done[k].set()

            async with asyncio.TaskGroup() as tg:
                for k in graph:
                    tg.create_task(node(k))
            await writer.aclose()

        started = time.perf_counter()
        asyncio.run(main())
        elapsed = time.perf_counter() - started
        journal.close()
    return elapsed


def langgraph_app(graph: Graph, latency: float) -> Any | None:
    try:
        from langgraph.graph import END, START, StateGraph
    except ImportError:
        return None
    from typing import TypedDict

    class State(TypedDict):
        count: Annotated[int, operator.add]

    g = StateGraph(State)
    for k in graph:

        async def node(state: State) -> dict[str, int]:
            await asyncio.sleep(latency)
            return {"count": 1}

        g.add_node(k, node)
    children = {k: 0 for k in graph}
    for k, deps in graph.items():
        if not deps:
            g.add_edge(START, k)
        elif len(deps) == 1:
            g.add_edge(deps[0], k)
        else:
            g.add_edge(deps, k)  # waits for every dependency
        for d in deps:
            children[d] += 1
    for k, n in children.items():
        if n == 0:
            g.add_edge(k, END)
    return g.compile()


def run_langgraph(graph: Graph) -> float:
    app = langgraph_app(graph, 0.0)  # compiling is not timed, nor a first run of the compiled graph
    assert app is not None
    steps = len(graph)
    config = {"recursion_limit": steps * 4 + 100}
    asyncio.run(app.ainvoke({"count": 0}, config))
    started = time.perf_counter()
    out = asyncio.run(app.ainvoke({"count": 0}, config))
    elapsed = time.perf_counter() - started
    assert out["count"] == steps, out
    return elapsed


def run_langgraph_sqlite(graph: Graph) -> float:
    """LangGraph with its SQLite checkpointer, each superstep saved before the next starts.

    The like-for-like durable comparison: trilemma's journal is a SQLite file too, and
    ``durability="sync"`` is LangGraph's counterpart of journaling before going on.
    """
    from langgraph.checkpoint.sqlite.aio import AsyncSqliteSaver

    steps = len(graph)

    async def main(folder: str) -> float:
        async with AsyncSqliteSaver.from_conn_string(str(Path(folder) / "lg.db")) as saver:
            app = langgraph_app(graph, 0.0).builder.compile(checkpointer=saver)
            times = []
            for thread in ("warm-up", "timed"):  # a fresh thread each, so no state carries over
                config = {"recursion_limit": steps * 4 + 100,
                          "configurable": {"thread_id": thread}}  # fmt: skip
                started = time.perf_counter()
                out = await app.ainvoke({"count": 0}, config, durability="sync")
                times.append(time.perf_counter() - started)
                assert out["count"] == steps, out
            return times[-1]

    with tempfile.TemporaryDirectory() as d:
        return asyncio.run(main(d))


def has_langgraph_sqlite() -> bool:
    try:
        import langgraph.checkpoint.sqlite.aio  # noqa: F401
    except ImportError:
        return False
    return True


SYSTEMS: dict[str, Callable[[Graph], float]] = {
    "trilemma": lambda g: run_trilemma(g, 0.0),
    "trilemma, durable write-ahead": lambda g: run_trilemma(g, 0.0, durable=True),
    "asyncio": lambda g: run_asyncio(g, 0.0),
    "asyncio + journal rows": lambda g: run_asyncio_ledger(g, 0.0),
    "langgraph": run_langgraph,
    "langgraph, SQLite checkpointer": run_langgraph_sqlite,
}


def measure(system: str, workload: str, n: int) -> float:
    """Seconds for one run, in a fresh interpreter, after an untimed warm-up run."""
    out = subprocess.run(
        [sys.executable, __file__, "--one", system, workload, str(n)],
        capture_output=True, text=True, check=True,
    )  # fmt: skip
    return float(out.stdout.split()[-1])


def one(system: str, workload: str, n: int) -> None:
    graph = chain(n) if workload == "chain" else random_dag(n)
    if not system.startswith("langgraph"):  # LangGraph's runs warm up their own compiled graph
        SYSTEMS[system](graph)  # imports and whatever is built on first use
    # Every system starts its timed run on a collected heap: otherwise a full collection of
    # the imports' objects, due whenever the warm-up left the counters, lands in one
    # system's run and not another's (plain asyncio's DAG measured 42-80 us a step with it,
    # 11 without).
    gc.collect()
    print(SYSTEMS[system](graph))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--chain", type=int, default=2000)
    ap.add_argument("--dag", type=int, default=1000)
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "executor.json")
    ap.add_argument("--one", nargs=3, metavar=("SYSTEM", "WORKLOAD", "N"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.one:
        one(args.one[0], args.one[1], int(args.one[2]))
        return
    has_langgraph = langgraph_app({"s0": []}, 0.0) is not None
    systems = [k for k in SYSTEMS if has_langgraph or not k.startswith("langgraph")]
    if not has_langgraph_sqlite():
        systems = [k for k in systems if "SQLite" not in k]
    rows = []
    for name, workload, n in (
        (f"{args.chain}-step chain", "chain", args.chain),
        (f"{args.dag}-node random DAG", "dag", args.dag),
    ):
        times: dict[str, list[float]] = {k: [] for k in systems}
        for _ in track(range(args.rounds), description=name, transient=True):
            for k in systems:  # interleaved, each in its own process
                times[k].append(measure(k, workload, n))
        per_step = {k: statistics.median(v) / n * 1e6 for k, v in times.items()}
        row: dict[str, Any] = {"workload": name, "steps": n, "us_per_step": per_step}
        ratio = ""
        if "langgraph" in per_step:
            row["langgraph_over_trilemma"] = per_step["langgraph"] / per_step["trilemma"]
            row["langgraph_over_trilemma_durable"] = (
                per_step["langgraph"] / per_step["trilemma, durable write-ahead"]
            )
            # Each round measured both back to back: its own ratio shows the machine's noise.
            rounds = sorted(
                g / t for g, t in zip(times["langgraph"], times["trilemma"], strict=True)
            )
            row["langgraph_over_trilemma_per_round"] = rounds
            ratio = (f"  LangGraph/trilemma {row['langgraph_over_trilemma']:.1f}x "
                     f"(rounds {rounds[0]:.1f}-{rounds[-1]:.1f}x)")  # fmt: skip
        if "langgraph, SQLite checkpointer" in per_step:  # durable beside durable
            row["langgraph_sqlite_over_trilemma_durable"] = (
                per_step["langgraph, SQLite checkpointer"]
                / per_step["trilemma, durable write-ahead"]
            )
            ratio += (f"  LangGraph+SQLite/trilemma durable "
                      f"{row['langgraph_sqlite_over_trilemma_durable']:.1f}x")  # fmt: skip
        rows.append(row)
        cells = "  ".join(f"{k} {v:7.1f}" for k, v in per_step.items())
        print(f"{name:24s} µs/step: {cells}{ratio}")
    if not has_langgraph:
        print(
            "LangGraph is not installed here: run benchmarks/run_executor_bench.sh for its column."
        )
    # Fan-out: wide random DAGs with real latency; wall clock against the planner's critical path.
    fanout = []
    for nodes, latency in ((200, 0.1), (args.dag, 0.02)):
        graph = random_dag(nodes, seed=11)
        critical = estimate(spec(graph, latency)).latency_critical_s
        fan = statistics.median(run_trilemma(graph, latency) for _ in range(args.rounds))
        base = statistics.median(run_asyncio(graph, latency) for _ in range(args.rounds))
        print(f"fan-out, {nodes} nodes x {latency * 1000:.0f} ms: critical path {critical:.3f}s, "
              f"trilemma {fan:.3f}s ({fan / critical:.3f}x), plain asyncio {base:.3f}s "
              f"({base / critical:.3f}x)")  # fmt: skip
        fanout.append({"nodes": nodes, "latency_s": latency, "critical_path_s": critical,
                       "trilemma_s": fan, "asyncio_s": base,
                       "trilemma_over_critical_path": fan / critical})  # fmt: skip
    meta = {
        "python": platform.python_version(),
        "machine": platform.machine(),
        "rounds": args.rounds,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(
        json.dumps({"meta": meta, "overhead": rows, "fanout": fanout}, indent=2) + "\n"
    )


if __name__ == "__main__":
    main()
