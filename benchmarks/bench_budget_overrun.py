"""Spend ceilings under concurrency: trilemma's gateway beside LiteLLM's BudgetManager.

Each round sends ``--requests`` requests at once through each system to the same
upstream, an OpenAI-compatible :class:`~trilemma.testing.ScriptedServer` on 127.0.0.1
that answers after ``--latency`` seconds with fixed usage, and counts what reached the
upstream and what it cost at the same token prices. The ceiling has room for about
``--room`` calls.

A ceiling checked before a call against what earlier calls have been billed lets every
concurrent request through before the first bill lands. A ceiling that reserves each
call's worst case before sending it cannot be crossed. The script measures both, side by
side in one run, and reports spend over ceiling for each.

LiteLLM runs as its docs show a per-user budget: ``BudgetManager``, checked before each
call and updated with the call's cost after it. (``litellm.max_budget`` is not measured:
in LiteLLM 1.110.2 it never counted a chat completion's cost, so it refused nothing even
one call at a time.) LiteLLM is not a trilemma dependency; install it beside trilemma in
an environment of its own (``pip install litellm``). Without it, its rows are left out.

    python benchmarks/bench_budget_overrun.py [--requests 20] [--room 5] [--rounds 3]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import statistics
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import openai

from trilemma.journal import Journal
from trilemma.testing import Reply, ScriptedServer

ROOT = Path(__file__).resolve().parents[1]
IN_PRICE, OUT_PRICE = 10.0, 20.0  # dollars per million tokens
PROMPT_TOKENS, MAX_TOKENS = 10, 50  # what the upstream reports: the most a call can use
COST = (IN_PRICE * PROMPT_TOKENS + OUT_PRICE * MAX_TOKENS) / 1e6  # one call, as billed
ASK = [{"role": "user", "content": "What is 2 + 2?"}]


def upstream(latency: float) -> ScriptedServer:
    def reply(_: dict[str, Any]) -> Reply:
        return Reply("4", delay_s=latency, prompt_tokens=PROMPT_TOKENS,
                     completion_tokens=MAX_TOKENS)  # fmt: skip

    return ScriptedServer(reply)


@contextmanager
def trilemma_gateway(url: str, ceiling: float) -> Iterator[str]:
    """trilemma's gateway in a thread on 127.0.0.1, one key with ``ceiling``."""
    import uvicorn

    from trilemma.gateway.app import Gateway, create_app
    from trilemma.gateway.config import load_gateway_config, secrets_of

    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "gw.yaml"
        path.write_text(
            f"version: 1\nmodels:\n  m: {{provider: openai, base_url: '{url}', model: m1, "
            f"usd_per_1m_input: {IN_PRICE}, usd_per_1m_output: {OUT_PRICE}, latency_s: 0.1, "
            f"p_ok: 1.0}}\nkeys:\n  bench: {{key_env: BENCH_KEY, max_cost_usd: {ceiling}}}\n"
        )
        os.environ["BENCH_KEY"] = "sk-bench"
        conf = load_gateway_config(path)
        gw = Gateway(conf, secrets_of(conf, str(path)), Journal(Path(d) / "j.db"), str(path))
        server = uvicorn.Server(
            uvicorn.Config(create_app(gw), host="127.0.0.1", port=0, log_level="warning")
        )
        thread = threading.Thread(target=server.run, daemon=True)
        thread.start()
        while not server.started:
            time.sleep(0.01)
        port = server.servers[0].sockets[0].getsockname()[1]
        try:
            yield f"http://127.0.0.1:{port}/v1"
        finally:
            server.should_exit = True
            thread.join(15)


async def at_once(n: int, width: int, one: Callable[[], Any]) -> int:
    """``n`` calls of ``one``, ``width`` at a time; how many were answered."""
    gate = asyncio.Semaphore(width)

    async def limited() -> bool:
        async with gate:
            return bool(await one())

    return sum(await asyncio.gather(*(limited() for _ in range(n))))


async def through_trilemma(url: str, n: int, ceiling: float, width: int) -> int:
    """Requests answered through the gateway (the rest were refused with 402)."""
    with trilemma_gateway(url, ceiling) as gw:
        async with openai.AsyncOpenAI(base_url=gw, api_key="sk-bench", max_retries=0) as c:

            async def one() -> bool:
                try:
                    await c.chat.completions.create(model="m", messages=ASK, max_tokens=MAX_TOKENS)  # type: ignore[arg-type]
                except openai.APIStatusError as exc:
                    assert exc.status_code == 402, exc
                    return False
                return True

            return await at_once(n, width, one)


def has_litellm() -> bool:
    try:
        import litellm  # noqa: F401
    except ImportError:
        return False
    return True


async def through_litellm(url: str, n: int, ceiling: float, width: int) -> int:
    """Requests answered through LiteLLM under its per-user BudgetManager, used as its docs
    show: check the user's cost against the budget, call, then add the call's cost."""
    import litellm

    litellm.suppress_debug_info = True
    litellm.register_model({"openai/m1": {
        "input_cost_per_token": IN_PRICE / 1e6, "output_cost_per_token": OUT_PRICE / 1e6,
        "litellm_provider": "openai", "mode": "chat", "max_tokens": 4096,
    }})  # fmt: skip
    here = os.getcwd()
    with tempfile.TemporaryDirectory() as d:  # the local BudgetManager keeps a file in the cwd
        os.chdir(d)
        try:
            budgets = litellm.BudgetManager(project_name="bench", client_type="local")
            budgets.create_budget(total_budget=ceiling, user="bench")

            async def one() -> bool:
                if budgets.get_current_cost(user="bench") >= budgets.get_total_budget("bench"):
                    return False
                answer = await litellm.acompletion(model="openai/m1", messages=ASK, api_base=url,
                                                   api_key="sk-bench", max_tokens=MAX_TOKENS)  # fmt: skip
                budgets.update_cost(completion_obj=answer, user="bench")
                return True

            return await at_once(n, width, one)
        finally:
            os.chdir(here)


SYSTEMS: dict[str, Callable[[str, int, float, int], Any]] = {
    "trilemma gateway": through_trilemma,
    "litellm BudgetManager": through_litellm,
}


def measure(system: str, n: int, ceiling: float, latency: float, width: int) -> dict[str, Any]:
    """What reached the upstream and what it cost, for one system and one round."""
    with upstream(latency) as up:
        answered = asyncio.run(SYSTEMS[system](up.url, n, ceiling, width))
        sent = len(up.requests)
    return {"answered": answered, "sent": sent, "spend_usd": sent * COST,
            "over_ceiling": sent * COST / ceiling}  # fmt: skip


def _version(package: str) -> str | None:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(package)
    except PackageNotFoundError:
        return None


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--requests", type=int, default=20)
    ap.add_argument("--room", type=float, default=5.5, help="the ceiling, in calls")
    ap.add_argument("--latency", type=float, default=0.2)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument(
        "--out", type=Path, default=ROOT / "benchmarks" / "results" / "budget_overrun.json"
    )
    args = ap.parse_args()
    ceiling = args.room * COST
    systems = [s for s in SYSTEMS if has_litellm() or not s.startswith("litellm")]
    rows = []
    for mode, width in (("all at once", args.requests), ("one at a time", 1)):
        for system in systems:
            runs = [measure(system, args.requests, ceiling, args.latency, width)
                    for _ in range(args.rounds)]  # fmt: skip
            row = {"system": system, "mode": mode, "ceiling_usd": ceiling,
                   "sent": statistics.median(r["sent"] for r in runs),
                   "spend_usd": statistics.median(r["spend_usd"] for r in runs),
                   "over_ceiling": max(r["over_ceiling"] for r in runs)}  # fmt: skip
            rows.append(row)
            print(f"{mode:14s} {system:20s} sent {row['sent']:5.1f}  spend ${row['spend_usd']:.4f} "
                  f"of ${ceiling:.4f}  worst round {row['over_ceiling']:.2f}x the ceiling")  # fmt: skip
    if "litellm BudgetManager" not in systems:
        print("LiteLLM is not installed here: pip install litellm beside trilemma for its rows.")
    meta = {"python": platform.python_version(), "requests": args.requests, "room": args.room,
            "latency_s": args.latency, "rounds": args.rounds, "cost_per_call_usd": COST,
            "litellm": _version("litellm")}  # fmt: skip
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"meta": meta, "rows": rows}, indent=2) + "\n")


if __name__ == "__main__":
    main()
