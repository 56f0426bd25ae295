"""What makes two calls interchangeable, for the cache.

A call's *settings* are what besides its messages decides its answer: the
endpoint, the model, the token limit and temperature, and for a workflow step
its kind, call count and gate. A tenant (a gateway's client key, or the tenant a
workflow run works for) is one more setting, so that tenants never see each
other's answers. The exact key covers the settings and the messages; the
semantic scope covers the settings alone, so that only prompts sent with the
same settings, for the same tenant, can match.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from typing import Any

from trilemma.journal.store import dumps
from trilemma.providers.base import Message
from trilemma.spec import ModelProfile, Step, Workflow

__all__ = [
    "Settings",
    "exact_key",
    "profile_settings",
    "prompt_text",
    "scoped",
    "semantic_scope",
    "step_settings",
]

Settings = list[Any]


def profile_settings(profile: ModelProfile, name: str) -> Settings:
    """The endpoint and model a profile sends to (``name``: the profile's, for the simulator)."""
    return [profile.provider or "sim", profile.base_url, profile.model or name]


def step_settings(wf: Workflow, step: Step) -> Settings:
    """A workflow step's settings.

    A cascade's whole ladder counts (any rung may have answered), and so do a gate and an
    ``extract``: an answer accepted under one gate is no answer for a stricter one.
    """
    p = wf.profile(step)
    out = [*profile_settings(p, step.model), step.kind, step.calls,
           step.max_tokens or p.max_tokens, p.temperature]  # fmt: skip
    if step.escalate:
        out.append(wf.ladder(step))
    if step.route is not None:  # any branch may have answered
        out.append({"route": {k: b.model_dump(mode="json") for k, b in step.route.items()}})
    if step.gate is not None:
        out.append({"gate": step.gate.model_dump(mode="json", exclude_defaults=True)})
    if step.extract is not None:
        out.append({"extract": step.extract})
    return out


def scoped(settings: Settings, tenant: str | None) -> Settings:
    """The settings of a tenant's calls (unchanged without one): its own entries only."""
    return settings if tenant is None else [*settings, {"tenant": tenant}]


def exact_key(settings: Settings, messages: Sequence[Message]) -> str:
    """The key of an exact hit: the same settings and the same messages."""
    return _digest([*settings, list(messages)])


def semantic_scope(settings: Settings) -> str:
    """The entries a semantic lookup may match: those of the same settings."""
    return _digest(["semantic", *settings])


def prompt_text(messages: Sequence[Message]) -> str:
    """What is embedded for a semantic lookup: the messages' contents, one per line."""
    return "\n".join(m["content"] for m in messages)


def _digest(ident: list[Any]) -> str:
    return hashlib.sha256(dumps(ident).encode()).hexdigest()
