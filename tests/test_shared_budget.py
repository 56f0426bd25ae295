"""Spend ceilings shared through a real redis-server on 127.0.0.1, by several processes."""

from __future__ import annotations

import asyncio
import contextlib
import json
import subprocess
import sys
import uuid
from pathlib import Path

import openai
import pytest

from tests.conftest import free_port
from tests.test_gateway import burst
from trilemma.errors import BudgetExhausted, SetupError
from trilemma.gateway.app import run_id_of
from trilemma.journal import Journal
from trilemma.run.shared_budget import BudgetState, RedisBudgets
from trilemma.testing import gateway_process

WORKER = """
import asyncio, json, random, sys
from trilemma.errors import BudgetExhausted
from trilemma.run.shared_budget import RedisBudgets

url, prefix, seed = sys.argv[1], sys.argv[2], int(sys.argv[3])
rng = random.Random(seed)

async def main():
    budgets = RedisBudgets(url, {"k": 0.30}, prefix=prefix)
    billed, answered, refused, worst = 0.0, 0, 0, 0.0

    async def call():
        nonlocal billed, answered, refused, worst
        try:
            hold = await budgets.reserve("k", 0.01)
        except BudgetExhausted:
            refused += 1
            return
        await asyncio.sleep(rng.uniform(0, 0.01))
        if rng.random() < 0.2:
            await budgets.release("k", hold)  # an error: nothing billed
            return
        cost = rng.uniform(0.002, 0.01)
        state = await budgets.settle("k", hold, cost)
        worst = max(worst, state.spent + state.reserved)
        billed += cost
        answered += 1

    await asyncio.gather(*(call() for _ in range(60)))
    await budgets.aclose()
    print(json.dumps({"billed": billed, "answered": answered, "refused": refused, "worst": worst}))

asyncio.run(main())
"""


def budgets(url: str, ceiling: float | None = 0.10, **kw: float) -> RedisBudgets:
    return RedisBudgets(url, {"k": ceiling}, prefix=f"test:{uuid.uuid4().hex}", **kw)


def test_four_processes_reserving_at_once_never_cross_the_shared_ceiling(redis_url: str) -> None:
    # 4 processes x 60 concurrent calls, $0.01 worst case each, against one $0.30 ceiling:
    # at no moment does spend plus holds cross it, and what Redis counts is what was billed.
    prefix = f"test:{uuid.uuid4().hex}"
    command = [sys.executable, "-c", WORKER, redis_url, prefix]
    procs = [
        subprocess.Popen(
            [*command, str(seed)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
        )
        for seed in range(4)
    ]
    reports = []
    for p in procs:
        out, err = p.communicate(timeout=60)
        assert p.returncode == 0, err
        reports.append(json.loads(out))

    async def final() -> BudgetState:
        b = RedisBudgets(redis_url, {"k": 0.30}, prefix=prefix)
        try:
            return await b.state("k")
        finally:
            await b.aclose()

    state = asyncio.run(final())
    billed = sum(r["billed"] for r in reports)
    assert state.spent == pytest.approx(billed, abs=1e-9)
    assert state.spent <= 0.30 + 1e-9 and state.reserved == pytest.approx(0.0, abs=1e-12)
    assert max(r["worst"] for r in reports) <= 0.30 + 1e-9
    assert state.refused == sum(r["refused"] for r in reports) > 0  # the ceiling did bite
    assert sum(r["answered"] for r in reports) >= 1


def test_a_settled_call_frees_what_it_did_not_cost_and_a_released_one_costs_nothing(
    redis_url: str,
) -> None:
    async def go() -> None:
        b = budgets(redis_url, 0.10)
        first = await b.reserve("k", 0.06)
        with pytest.raises(BudgetExhausted, match="every process sharing it"):
            await b.reserve("k", 0.05)  # 0.06 held + 0.05 > 0.10
        state = await b.settle("k", first, 0.02)
        assert (state.spent, state.reserved) == (pytest.approx(0.02), pytest.approx(0.0))
        second = await b.reserve("k", 0.05)  # now it fits
        await b.release("k", second)
        await b.release("k", second)  # twice is once
        state = await b.state("k")
        assert (state.spent, state.reserved, state.refused) == (pytest.approx(0.02), 0.0, 1)
        assert state.remaining == pytest.approx(0.08)
        await b.aclose()

    asyncio.run(go())


def test_a_hold_whose_process_died_counts_its_worst_case_until_it_settles(redis_url: str) -> None:
    async def go() -> None:
        b = budgets(redis_url, 0.10, hold_ttl_s=0.2)
        hold = await b.reserve("k", 0.05)
        lost = await b.reserve("k", 0.03)
        await asyncio.sleep(0.3)
        state = await b.state("k")  # both lapsed: counted as spent at their worst case
        assert (state.spent, state.reserved) == (pytest.approx(0.08), 0.0)
        state = await b.settle("k", hold, 0.01)  # it did answer, late: corrected to its cost
        assert state.spent == pytest.approx(0.04)
        await b.release("k", lost)  # and this one failed after all: it cost nothing
        assert (await b.state("k")).spent == pytest.approx(0.01)
        await b.aclose()

    asyncio.run(go())


def test_the_first_process_seeds_the_spend_and_later_ones_keep_it(redis_url: str) -> None:
    async def go() -> None:
        prefix = f"test:{uuid.uuid4().hex}"
        first = RedisBudgets(redis_url, {"k": 1.0}, prefix=prefix)
        await first.connect({"k": 0.25})  # from its journal
        second = RedisBudgets(redis_url, {"k": 1.0}, prefix=prefix)
        await second.connect({"k": 0.0})  # its own journal is empty: Redis already knows
        assert (await second.state("k")).spent == pytest.approx(0.25)
        await first.aclose()
        await second.aclose()

    asyncio.run(go())


def test_a_store_that_does_not_answer_is_a_setup_error_naming_it() -> None:
    url = f"redis://127.0.0.1:{free_port()}/0"
    b = RedisBudgets(url, {"k": 1.0})
    with pytest.raises(SetupError, match=f"shared budget store {url} does not answer"):
        b.check()

    async def go() -> None:
        with pytest.raises(SetupError, match=r"start Redis there or fix shared\.redis"):
            await b.reserve("k", 0.01)
        await b.aclose()

    asyncio.run(go())


# ---------------------------------------------------------------------- the gateway


def gateway_config(redis_url: str | None, prefix: str, limits: str = "") -> str:
    shared = "" if redis_url is None else f'shared: {{redis: "{redis_url}", prefix: "{prefix}"}}\n'
    return f"""version: 1
models:
  sim: {{usd_per_call: 0.01, latency_s: 0.2, p_ok: 1.0}}
keys:
  team-a: {{key_env: TRILEMMA_GW_A, max_cost_usd: 0.10{limits}}}
{shared}"""


def gateway(config: Path, db: Path) -> contextlib.AbstractContextManager[str]:
    """``trilemma gateway`` in a process of its own, its key's secret sk-a."""
    return gateway_process(config, db, {"TRILEMMA_GW_A": "sk-a"})


def test_two_gateway_processes_share_one_ceiling_through_redis(
    tmp_path: Path, redis_url: str
) -> None:
    # Two gateways, each with a journal of its own (as on two machines), one $0.10 ceiling
    # for key team-a, 30 requests of $0.01 at once spread over both: exactly ten are served.
    prefix = f"test:{uuid.uuid4().hex}"
    config = tmp_path / "gw.yaml"
    config.write_text(gateway_config(redis_url, prefix))
    dbs = [tmp_path / "one.db", tmp_path / "two.db"]
    with gateway(config, dbs[0]) as one, gateway(config, dbs[1]) as two:
        codes = burst([one, two], 30, "sk-a")
        seen = []
        for u in (one, two):
            with openai.OpenAI(base_url=u, api_key="sk-a") as c:
                seen.append(c.get("/budget", cast_to=object))
    assert sorted(codes) == [200] * 10 + [402] * 20
    for b in seen:  # either gateway tells the shared figures
        assert b["shared"] is True and b["spent_usd"] == pytest.approx(0.10)  # type: ignore[index]
        assert b["refused"] == 20 and b["remaining_usd"] == pytest.approx(0.0)  # type: ignore[index]
    billed = [Journal(db).spent(run_id_of("team-a")) for db in dbs]
    assert sum(billed) == pytest.approx(0.10)  # each journal has the calls its gateway served


def test_two_gateway_processes_share_one_requests_a_minute_limit(
    tmp_path: Path, redis_url: str
) -> None:
    config = tmp_path / "gw.yaml"
    config.write_text(gateway_config(redis_url, f"test:{uuid.uuid4().hex}", ", rpm: 4"))
    with gateway(config, tmp_path / "one.db") as one, gateway(config, tmp_path / "two.db") as two:
        codes = burst([one, two], 10, "sk-a")
    assert sorted(codes) == [200] * 4 + [429] * 6


def test_without_shared_two_gateways_with_their_own_journals_would_each_spend_the_ceiling(
    tmp_path: Path,
) -> None:
    # Why the shared store exists: each process holds the whole ceiling, so together they
    # serve twice what the key may spend.
    config = tmp_path / "gw.yaml"
    config.write_text(gateway_config(None, ""))
    with gateway(config, tmp_path / "one.db") as one, gateway(config, tmp_path / "two.db") as two:
        codes = burst([one, two], 30, "sk-a")
    assert codes.count(200) == 20


def test_cli_gateway_with_an_unreachable_store_says_so_in_one_line(
    cli, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TRILEMMA_GW_A", "sk-a")
    config = tmp_path / "gw.yaml"
    url = f"redis://127.0.0.1:{free_port()}/0"
    config.write_text(gateway_config(url, "x"))
    r = cli("gateway", config, "--journal", tmp_path / "j.db", "--port", str(free_port()))
    assert r.code == 1 and len(r.err.strip().splitlines()) == 1
    assert f"the shared budget store {url} does not answer" in r.err


def test_cli_gateway_bad_shared_store_address_is_one_line(cli, tmp_path: Path) -> None:
    config = tmp_path / "gw.yaml"
    config.write_text(gateway_config("http://127.0.0.1:6379", "x"))
    r = cli("gateway", config, "--journal", tmp_path / "j.db")
    assert r.code == 2 and len(r.err.strip().splitlines()) == 1
    assert "shared.redis" in r.err and str(config) in r.err and "redis://127.0.0.1:6379/0" in r.err


def test_a_client_leaving_a_stream_is_billed_on_the_shared_ceiling(
    tmp_path: Path, redis_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The bill of a stream whose client hung up is settled in Redis all the same.
    from tests.test_gateway import ASK, config_text, serving, wait_for_row
    from trilemma.testing import Reply, ScriptedServer

    monkeypatch.setenv("TRILEMMA_GW_A", "sk-team-a-secret")
    monkeypatch.setenv("TRILEMMA_GW_B", "sk-team-b-secret")
    prefix = f"test:{uuid.uuid4().hex}"
    slow = Reply(" ".join(["word"] * 30), piece_delay_s=0.1)
    with ScriptedServer([slow]) as up:
        text = config_text(up.url) + f'shared: {{redis: "{redis_url}", prefix: "{prefix}"}}\n'
        with (
            serving(tmp_path, text) as (url, _),
            openai.OpenAI(base_url=url, api_key="sk-team-a-secret", max_retries=0) as c,
        ):
            with c.chat.completions.create(model="small", messages=ASK, stream=True) as s:  # type: ignore[arg-type]
                next(iter(s))
            row = wait_for_row(tmp_path / "j.db", "team-a")
            budget = c.get("/budget", cast_to=object)
    assert row["outcome"] == "cancelled" and budget["shared"] is True  # type: ignore[index]
    assert budget["spent_usd"] == pytest.approx(row["reserved_usd"])  # type: ignore[index]
    assert budget["reserved_usd"] == pytest.approx(0.0)  # type: ignore[index]


def test_a_store_that_goes_away_mid_serve_refuses_with_503_and_sends_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from tests.conftest import redis_server
    from tests.test_gateway import ASK, config_text, http, serving

    monkeypatch.setenv("TRILEMMA_GW_A", "sk-team-a-secret")
    monkeypatch.setenv("TRILEMMA_GW_B", "sk-team-b-secret")
    auth = {"Authorization": "Bearer sk-team-b-secret", "Content-Type": "application/json"}
    body = json.dumps({"model": "sim", "messages": ASK}).encode()
    with redis_server(tmp_path) as (url, redis):
        text = config_text() + f'shared: {{redis: "{url}", prefix: "gone"}}\n'
        with serving(tmp_path, text) as (gw, _):
            first = http(f"{gw}/chat/completions", body, auth)
            redis.kill()
            redis.wait(10)
            after = http(f"{gw}/chat/completions", body, auth)
            budget = http(f"{gw}/budget", None, auth)
    assert first[0] == 200
    assert after[0] == 503 and after[1]["error"]["code"] == "budget_store_unavailable"
    assert f"the shared budget store {url} does not answer" in after[1]["error"]["message"]
    assert budget[0] == 503
    assert len(Journal(tmp_path / "j.db").calls(run_id_of("team-b"))) == 1  # nothing more sent


@pytest.mark.parametrize(
    ("advice", "failures", "sent"), [({}, 2, 2), ({"Retry-After": "30"}, 5, 1)],
    ids=["counted", "advised"],
)  # fmt: skip
def test_what_one_gateway_learns_of_a_failing_model_the_other_uses(
    tmp_path: Path, redis_url: str, advice: dict[str, str], failures: int, sent: int
) -> None:
    # small fails every time; after two failures seen through gateway one (or one failure
    # that says when to come back), gateway two sends its request straight to the fallback.
    from trilemma.testing import Reply, ScriptedServer

    prefix = f"test:{uuid.uuid4().hex}"
    with ScriptedServer([Reply(status=503, headers=advice)] * 5) as up:
        config = tmp_path / "gw.yaml"
        config.write_text(f"""version: 1
models:
  small: {{provider: openai, base_url: "{up.url}", model: m1, usd_per_1m_input: 1.0,
           usd_per_1m_output: 2.0, latency_s: 0.1, p_ok: 0.9}}
  sim: {{usd_per_call: 0.01, latency_s: 0.05, p_ok: 1.0}}
keys:
  team-a: {{key_env: TRILEMMA_GW_A}}
fallbacks: {{small: [sim]}}
health: {{failures: {failures}, cooldown_s: 60}}
shared: {{redis: "{redis_url}", prefix: "{prefix}"}}
""")
        with gateway(config, tmp_path / "one.db") as one, gateway(config, tmp_path / "two.db") as two:
            served = []
            for url in (one, one, two) if failures == 2 else (one, two, two):
                with openai.OpenAI(base_url=url, api_key="sk-a", max_retries=0) as c:
                    ask = [{"role": "user", "content": "q"}]
                    served.append(c.chat.completions.create(model="small", messages=ask).model)  # type: ignore[arg-type]
        len_sent = len(up.requests)
    assert served == ["sim", "sim", "sim"]
    assert len_sent == sent
