"""The gateway's configuration: the models it serves and the keys allowed to spend on them.

.. code-block:: yaml

    version: 1
    models:                      # model profiles, exactly as in a workflow spec
      small: {provider: openai, base_url: "http://127.0.0.1:8081/v1", model: smollm2,
              usd_per_1m_input: 0.10, usd_per_1m_output: 0.40, latency_s: 0.5, p_ok: 0.6}
    keys:
      team-a: {key_env: TEAM_A_KEY, max_cost_usd: 5.00, models: [small], rpm: 60, tpm: 100000}
    cache: {similarity: 0.95}    # optional: true (exact repeats) or a similarity threshold
    shared: {redis: "redis://127.0.0.1:6379/0"}  # optional: ceilings shared by every gateway
    fallbacks: {small: [sim]}    # optional: when small fails (5xx, timeout, 429), try sim
    health: {failures: 3, cooldown_s: 30}  # then rest small for 30 s
    keep_calls_days: 30          # optional: forget calls older than this (their spend stays)

A key's secret is read from the environment variable ``key_env`` when the gateway
starts; it is never written to the file, the journal or a log.
"""

from __future__ import annotations

import os
import re
import sys
from pathlib import Path
from typing import Annotated, Any

from pydantic import AfterValidator, BaseModel, ConfigDict, Field

from trilemma.errors import SpecError
from trilemma.spec import CacheRule, ModelProfile
from trilemma.spec.load import read_document, validate_document
from trilemma.spec.model import STEP_ID_PATTERN, Price

__all__ = [
    "GatewayConfig", "Health", "KeyConfig", "SharedConfig", "gateway_json_schema",
    "load_gateway_config", "secrets_of",
]  # fmt: skip


class KeyConfig(BaseModel):
    """One client key: where its secret is, what it may spend, which models it may call."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    key_env: Annotated[str, Field(pattern=r"^[A-Za-z_][A-Za-z0-9_]*$")]
    """The environment variable holding the key's secret, read when the gateway starts."""
    max_cost_usd: Price | None = None
    """The key's spend ceiling in dollars, which no request can take it over; none: no ceiling."""
    models: list[str] | None = None
    """The models the key may call; none: every model of the gateway."""
    rpm: Annotated[int, Field(ge=1)] | None = None
    """Requests a minute; past it a request gets a 429 with Retry-After."""
    tpm: Annotated[int, Field(ge=1)] | None = None
    """Tokens a minute, each request counted at its prompt and max_tokens until it answers."""


def _redis_url(url: str) -> str:
    if not re.fullmatch(r"(rediss?|unix)://\S+", url):
        raise ValueError("must be a Redis URL, such as redis://127.0.0.1:6379/0")
    return url


class SharedConfig(BaseModel):
    """Where several gateway processes keep the spend ceilings they share."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    redis: Annotated[str, AfterValidator(_redis_url)]
    """The Redis every gateway process on this config reserves against."""
    prefix: Annotated[str, Field(pattern=r"^[A-Za-z0-9_:.-]{1,64}$")] = "trilemma:gateway"
    """Namespaces the counters: gateways with other configs on one Redis use their own."""


class Health(BaseModel):
    """When a model with fallbacks is rested: after this many retryable failures in a row."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    failures: Annotated[int, Field(ge=1)] = 3
    """Retryable failures in a row after which a model with fallbacks is rested."""
    cooldown_s: Annotated[float, Field(ge=0.0, le=86_400.0)] = 30.0
    """Seconds its requests go straight to its fallbacks."""


class GatewayConfig(BaseModel):
    """The models served and the keys that may call them."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    version: int
    """The config format's version: 1."""
    models: dict[str, ModelProfile]
    """The models served, by the name clients ask for: profiles as in a workflow spec."""
    keys: dict[Annotated[str, Field(pattern=STEP_ID_PATTERN, max_length=64)], KeyConfig]
    """The client keys, by name (see `KeyConfig`)."""
    cache: bool | CacheRule = False
    """Answer a repeated request (``true``), or also a similar one (``{similarity: S}``), from
    the journal's cache, billed nothing. Each key sees only its own answers."""
    fallbacks: dict[str, list[str]] = {}
    """Per model, the models to try in turn when it fails in a way worth retrying (5xx,
    timeout, 429, no connection); each try is reserved and billed on its own."""
    health: Health = Health()
    """When a model with fallbacks is rested, and for how long (see `Health`)."""
    shared: SharedConfig | None = None
    """Hold the keys' ceilings in Redis, so that several gateway processes share them."""
    keep_calls_days: Annotated[float, Field(gt=0.0, le=36_500.0, allow_inf_nan=False)] | None = None
    """Forget the keys' calls that ended more than this many days ago, when the gateway
    starts and every hour after, as ``trilemma prune`` does: their count and bill stay on
    the key's run, so its spend, and what its ceiling leaves, do not change."""

    @property
    def similarity(self) -> float | None:
        """The semantic cache's threshold, or None when it is off."""
        return self.cache.similarity if isinstance(self.cache, CacheRule) else None

    def allowed(self, key: str) -> list[str]:
        """The models a key may call."""
        chosen = self.keys[key].models
        return list(self.models) if chosen is None else chosen


def gateway_json_schema() -> dict[str, Any]:
    """The JSON Schema of a gateway's config (``trilemma schema --gateway``), for editors."""
    from trilemma.spec import model
    from trilemma.spec.schema import json_schema

    return json_schema(GatewayConfig, "trilemma gateway config, version 1", model,
                       sys.modules[__name__])  # fmt: skip


def load_gateway_config(path: str | Path) -> GatewayConfig:
    """Read and check a gateway file; every mistake one SpecError naming the field."""
    data, source = read_document(path, what="gateway config")
    if isinstance(data, dict) and "steps" in data and "keys" not in data:
        raise SpecError(source, "steps", "this is a workflow spec, not a gateway's config: "
                        "`trilemma run FILE` runs it (a gateway's config names its keys:)")  # fmt: skip
    config = validate_document(GatewayConfig, data, source)
    if not config.models:
        raise SpecError(source, "models", "no models; name at least one model profile to serve")
    if not config.keys:
        raise SpecError(source, "keys", "no keys; add one, such as team-a: {key_env: TEAM_A_KEY}")
    if isinstance(config.cache, CacheRule) and "hit_rate" in config.cache.model_fields_set:
        raise SpecError(source, "cache.hit_rate", "a planning figure of workflow steps; the "
                        "gateway plans nothing and serves every hit it finds: remove it")  # fmt: skip
    for name, m in config.models.items():
        if m.hedge_after_s is not None:
            raise SpecError(source, f"models.{name}.hedge_after_s", "the gateway sends each "
                            "request once (its callers decide on copies): remove it")  # fmt: skip
    for model, ladder in config.fallbacks.items():
        if model not in config.models:
            raise SpecError(source, f"fallbacks.{model}", f"unknown model {model!r}; known: "
                            f"{', '.join(sorted(config.models))}")  # fmt: skip
        for i, other in enumerate(ladder):
            if other not in config.models or other == model:
                raise SpecError(source, f"fallbacks.{model}[{i}]",
                                f"{other!r} is not another model of this gateway; known: "
                                f"{', '.join(sorted(config.models))}")  # fmt: skip
    for name, key in config.keys.items():
        for i, model in enumerate(key.models or []):
            if model not in config.models:
                known = ", ".join(sorted(config.models))
                raise SpecError(source, f"keys.{name}.models[{i}]",
                                f"unknown model {model!r}; known: {known}")  # fmt: skip
    return config


def secrets_of(config: GatewayConfig, source: str) -> dict[str, str]:
    """Each key's secret from its environment variable; SpecError if one is unset or shared."""
    out: dict[str, str] = {}
    for name, key in config.keys.items():
        secret = os.environ.get(key.key_env)
        if not secret:
            raise SpecError(source, f"keys.{name}.key_env",
                            f"the environment variable {key.key_env} is not set; export the "
                            "secret clients of this key will send")  # fmt: skip
        if secret in out.values():
            raise SpecError(source, f"keys.{name}.key_env",
                            "two keys share one secret; give each key its own")  # fmt: skip
        out[name] = secret
    return out
