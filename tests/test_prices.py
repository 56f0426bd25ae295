"""Hosted models' token prices from genai-prices when a profile gives none."""

from __future__ import annotations

import json
import sys

import genai_prices
import pytest

from trilemma import estimate, parse_workflow, workflow_from_dict
from trilemma.run.executor import spec_json
from trilemma.spec.prices import HostedPrices, hosted_prices

OPENAI = "https://api.openai.com/v1"


def hosted_spec(url: str = OPENAI, model: str = "gpt-4o-mini", prices: str = "") -> str:
    return (
        "version: 1\nmodels:\n"
        f"  mini: {{provider: openai, base_url: '{url}', model: {model}, latency_s: 1.5, "
        f"p_ok: 0.9, prompt_tokens: 1000, completion_tokens: 500, max_tokens: 1000{prices}}}\n"
        "steps:\n  - {id: a, model: mini}\n"
    )


def probe(model: str, url: str, **tokens: int) -> float:
    """genai-prices' own dollars for ``tokens``, scaled to a million."""
    calc = genai_prices.calc_price(genai_prices.Usage(**tokens), model, provider_api_url=url)
    return float(calc.total_price) * 1_000_000 / sum(tokens.values())


def test_a_hosted_model_without_prices_gets_genai_prices_figures() -> None:
    wf = parse_workflow(hosted_spec())
    m = wf.models["mini"]
    assert m.usd_per_1m_input == pytest.approx(probe("gpt-4o-mini", OPENAI, input_tokens=1000))
    assert m.usd_per_1m_output == pytest.approx(probe("gpt-4o-mini", OPENAI, output_tokens=1000))
    assert 0 < m.usd_per_1m_input < m.usd_per_1m_output  # output tokens cost more
    assert m.prices_from is not None and m.prices_from.startswith("genai-prices ")
    assert "gpt-4o-mini" in m.prices_from
    # The planner prices a call from them: the profile's expected tokens at those prices.
    expected = (1000 * m.usd_per_1m_input + 500 * m.usd_per_1m_output) / 1e6
    assert estimate(wf).cost_book == pytest.approx(expected)


def test_the_provider_is_matched_by_url() -> None:
    groq = hosted_prices("llama-3.1-8b-instant", "https://api.groq.com/openai/v1")
    assert isinstance(groq, HostedPrices) and "groq" in groq.source
    # The same name at another provider's URL is not that provider's model.
    assert isinstance(hosted_prices("llama-3.1-8b-instant", OPENAI), str)


def test_prices_in_the_spec_win() -> None:
    wf = parse_workflow(hosted_spec(prices=", usd_per_1m_input: 9, usd_per_1m_output: 19"))
    m = wf.models["mini"]
    assert (m.usd_per_1m_input, m.usd_per_1m_output, m.prices_from) == (9, 19, None)


def test_a_local_endpoint_is_never_priced_as_a_hosted_one(cli, write) -> None:
    path = write(hosted_spec(url="http://127.0.0.1:8081/v1"))
    r = cli("estimate", path)
    assert r.code == 2 and r.out == ""
    (line,) = r.err.strip().splitlines()
    assert str(path) in line and "models.mini" in line
    assert "give usd_per_call, or usd_per_1m_input and usd_per_1m_output" in line
    assert "genai-prices knows no price for model 'gpt-4o-mini' at http://127.0.0.1:8081/v1" in line


def test_without_genai_prices_the_error_says_what_to_install(
    cli, write, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, "genai_prices", None)  # import genai_prices now fails
    r = cli("estimate", write(hosted_spec()))
    assert r.code == 2
    assert "models.mini" in r.err and "install trilemma[prices]" in r.err


def test_estimate_says_where_looked_up_prices_came_from(cli, write) -> None:
    r = cli("estimate", write(hosted_spec()))
    assert r.code == 0, r.err
    assert "prices of mini:" in r.out and "from genai-prices" in r.out


def test_the_journaled_spec_keeps_the_prices_without_a_second_lookup(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # A run journals the spec with its prices filled in: a resume reads them back as given,
    # so it bills at the prices the run began with, genai-prices installed or not.
    wf = parse_workflow(hosted_spec())
    text = spec_json(wf)
    monkeypatch.setitem(sys.modules, "genai_prices", None)
    again = workflow_from_dict(json.loads(text))
    assert again.models["mini"] == wf.models["mini"]
    assert spec_json(again) == text
