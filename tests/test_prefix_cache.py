"""Prompt (prefix) caching at the endpoint: planned, billed at its price, kept in the ledger."""

from __future__ import annotations

from pathlib import Path

import openai
import pytest

from tests.test_gateway import config_text, serving
from tests.test_openai_provider import go, spec_for
from trilemma import estimate, parse_workflow
from trilemma.gateway.app import run_id_of
from trilemma.journal import Journal
from trilemma.providers.base import Usage, cost_of
from trilemma.spec.prices import hosted_prices
from trilemma.testing import Reply, ScriptedServer

PLANNED = """
version: 1
models:
  big: {usd_per_1m_input: 2.0, usd_per_1m_output: 8.0, usd_per_1m_cached_input: 0.2,
        prompt_tokens: 3000, cached_prompt_tokens: 2400, completion_tokens: 200,
        latency_s: 1.0, p_ok: 0.9}
steps:
  - {id: a, model: big}
"""


def test_the_planner_prices_the_cached_part_of_the_prompt_at_the_cached_price() -> None:
    wf = parse_workflow(PLANNED)
    assert estimate(wf).cost_book == pytest.approx((2.0 * 600 + 0.2 * 2400 + 8.0 * 200) / 1e6)
    uncached = parse_workflow(
        PLANNED.replace("cached_prompt_tokens: 2400", "cached_prompt_tokens: 0")
    )
    assert estimate(uncached).cost_book == pytest.approx((2.0 * 3000 + 8.0 * 200) / 1e6)


@pytest.mark.parametrize(
    ("change", "says"),
    [
        (("cached_prompt_tokens: 2400", "cached_prompt_tokens: 3001"), "more than prompt_tokens (3000)"),
        ((", usd_per_1m_cached_input: 0.2", ""), "cached_prompt_tokens needs usd_per_1m_cached_input"),
        (("usd_per_1m_input: 2.0, usd_per_1m_output: 8.0,", "usd_per_call: 0.01,"), "give usd_per_1m_input"),
    ],
)  # fmt: skip
def test_cached_prompt_mistakes_are_one_line_naming_the_model(cli, write, change, says) -> None:
    text = PLANNED.replace(*change)
    if "usd_per_call" in text:
        text = text.replace(" cached_prompt_tokens: 2400,", "")
    r = cli("estimate", write(text))
    assert r.code == 2 and len(r.err.strip().splitlines()) == 1
    assert "models.big" in r.err and says in r.err


def test_a_bill_prices_the_tokens_the_endpoint_says_it_served_from_its_cache() -> None:
    wf = parse_workflow(PLANNED)
    big = wf.models["big"]
    assert cost_of(big, Usage(1000, 100, 800), 1.0) == pytest.approx(
        (2.0 * 200 + 0.2 * 800 + 8.0 * 100) / 1e6
    )
    assert cost_of(big, Usage(1000, 100, None), 1.0) == pytest.approx(
        (2.0 * 1000 + 8.0 * 100) / 1e6
    )
    assert cost_of(big, Usage(1000, 100, 5000), 1.0) == pytest.approx(
        (0.2 * 1000 + 8.0 * 100) / 1e6
    )
    no_price = parse_workflow(PLANNED.replace(", usd_per_1m_cached_input: 0.2", "").replace(
        " cached_prompt_tokens: 2400,", "")).models["big"]  # fmt: skip
    assert cost_of(no_price, Usage(1000, 100, 800), 1.0) == pytest.approx(
        (2.0 * 1000 + 8.0 * 100) / 1e6
    )


def test_a_run_on_an_endpoint_bills_its_cached_tokens_and_the_ledger_keeps_them(
    cli, tmp_path: Path
) -> None:
    reply = Reply("hi", prompt_tokens=1000, completion_tokens=50, cached_tokens=900)
    with ScriptedServer([reply]) as srv:
        text = spec_for(srv.url, "  - {id: a, model: local}", ", usd_per_1m_cached_input: 10.0")
        r, j = go(text, tmp_path)
    row = j.calls(r.run_id)[0]
    assert row["cached_tokens"] == 900
    assert row["cost_usd"] == pytest.approx((100.0 * 100 + 10.0 * 900 + 200.0 * 50) / 1e6)
    ledger = cli("ledger", r.run_id, "--journal", tmp_path / "j.db", "--json").json()
    assert ledger[0]["cached_tokens"] == 900
    table = cli("ledger", r.run_id, "--journal", tmp_path / "j.db").out
    assert "1000 (900 cached)" in table


def test_the_simulator_reports_the_profiles_cached_tokens(tmp_path: Path) -> None:
    from trilemma.run.session import execute

    r = execute(parse_workflow(PLANNED), journal=Journal(tmp_path / "j.db"), seed=3)
    row = Journal(tmp_path / "j.db").calls(r.run_id)[0]
    prompt = row["prompt_tokens"]
    assert row["cached_tokens"] == min(prompt, 2400)
    cached = row["cached_tokens"]
    bill = (2.0 * (prompt - cached) + 0.2 * cached + 8.0 * row["completion_tokens"]) / 1e6
    assert row["cost_usd"] == pytest.approx(bill)


def test_the_gateway_passes_cached_tokens_on_and_bills_them_at_the_cached_price(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TRILEMMA_GW_A", "sk-team-a-secret")
    monkeypatch.setenv("TRILEMMA_GW_B", "sk-team-b-secret")
    reply = Reply("Paris", prompt_tokens=1000, completion_tokens=10, cached_tokens=800)
    with ScriptedServer([reply]) as up:
        text = config_text(up.url).replace("usd_per_1m_output: 2.0,",
                                           "usd_per_1m_output: 2.0, usd_per_1m_cached_input: 0.1,")  # fmt: skip
        with (
            serving(tmp_path, text) as (url, _),
            openai.OpenAI(base_url=url, api_key="sk-team-a-secret", max_retries=0) as c,
        ):
            answer = c.chat.completions.create(
                model="small", messages=[{"role": "user", "content": "q"}]
            )
    assert answer.usage is not None and answer.usage.prompt_tokens_details is not None
    assert answer.usage.prompt_tokens_details.cached_tokens == 800
    (row,) = Journal(tmp_path / "j.db").calls(run_id_of("team-a"))
    assert row["cached_tokens"] == 800
    assert row["cost_usd"] == pytest.approx((1.0 * 200 + 0.1 * 800 + 2.0 * 10) / 1e6)


def test_a_hosted_models_cached_price_comes_from_genai_prices() -> None:
    found = hosted_prices("gpt-4o-mini", "https://api.openai.com/v1")
    assert not isinstance(found, str)
    assert found.usd_per_1m_cached_input is not None
    assert 0 < found.usd_per_1m_cached_input < found.usd_per_1m_input
    wf = parse_workflow(
        "version: 1\nmodels:\n  mini: {provider: openai, base_url: 'https://api.openai.com/v1', "
        "model: gpt-4o-mini, latency_s: 1, p_ok: 0.9, prompt_tokens: 1000, "
        "cached_prompt_tokens: 800}\nsteps:\n  - {id: a, model: mini}\n"
    )
    assert wf.models["mini"].usd_per_1m_cached_input == found.usd_per_1m_cached_input
    none = hosted_prices("gpt-3.5-turbo", "https://api.openai.com/v1")  # no cached price listed
    assert not isinstance(none, str) and none.usd_per_1m_cached_input is None
