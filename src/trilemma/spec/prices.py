"""Token prices of hosted models, from genai-prices, for profiles that give none.

A profile that names a hosted endpoint (``provider: openai`` with a ``base_url``
such as ``https://api.openai.com/v1``) and a ``model`` may leave its prices out:
when the optional ``genai-prices`` package is installed (``pip install
'trilemma[prices]'``), its bundled price table fills ``usd_per_1m_input`` and
``usd_per_1m_output``. The endpoint is matched by its URL, so a local server
(127.0.0.1) is never priced as a hosted one. Prices given in the spec always
win; nothing is fetched from the network (the table ships inside the package).
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["HostedPrices", "hosted_prices"]

#: Tokens per lookup: small enough to sit in a model's first price tier (long-context tiers
#: start at 128k-200k tokens), then scaled to a million.
_PROBE_TOKENS = 1000


@dataclass(frozen=True, slots=True)
class HostedPrices:
    """What genai-prices says one call of a model costs, per million tokens."""

    usd_per_1m_input: float
    usd_per_1m_output: float
    usd_per_1m_cached_input: float | None
    """Prompt tokens read from the provider's prompt cache (None: no such price)."""
    source: str
    """Where the prices came from: the package, its version and the provider it matched."""


def hosted_prices(model: str, base_url: str) -> HostedPrices | str:
    """The model's token prices at that endpoint, or why there are none (one clause)."""
    try:
        import genai_prices
    except ImportError:
        return "install trilemma[prices] to look up a hosted model's prices"
    usage = genai_prices.Usage(input_tokens=_PROBE_TOKENS, output_tokens=_PROBE_TOKENS)
    try:
        calc = genai_prices.calc_price(usage, model, provider_api_url=base_url)
    except LookupError:
        return f"genai-prices knows no price for model {model!r} at {base_url}"
    scale = 1_000_000 // _PROBE_TOKENS
    cached_usage = genai_prices.Usage(
        input_tokens=_PROBE_TOKENS, cache_read_tokens=_PROBE_TOKENS, output_tokens=0
    )
    cached = float(
        genai_prices.calc_price(cached_usage, model, provider_api_url=base_url).input_price
    )
    return HostedPrices(
        float(calc.input_price) * scale,
        float(calc.output_price) * scale,
        cached * scale if cached < float(calc.input_price) else None,
        f"genai-prices {genai_prices.__version__} ({calc.provider.id} {calc.model.id})",
    )
