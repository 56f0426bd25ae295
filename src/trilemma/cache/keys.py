"""What makes two steps' calls interchangeable, for the cache.

The exact key covers the endpoint, model, step kind, call count, token limit,
temperature and the rendered messages; the semantic scope is the same without
the messages, so that only prompts sent to the same model setup can match.
"""

from __future__ import annotations

import hashlib
from typing import Any

from trilemma.journal.store import dumps
from trilemma.providers.base import Message
from trilemma.spec import Step, Workflow

__all__ = ["exact_key", "prompt_text", "semantic_scope"]


def _settings(wf: Workflow, step: Step) -> list[Any]:
    p = wf.profile(step)
    ident: list[Any] = [p.provider or "sim", p.base_url, p.model or step.model, step.kind,
                        step.calls, step.max_tokens or p.max_tokens, p.temperature]  # fmt: skip
    if step.escalate:  # the answer may come from any model of the ladder
        ident.append(wf.ladder(step))
    return ident


def _digest(ident: list[Any]) -> str:
    return hashlib.sha256(dumps(ident).encode()).hexdigest()


def exact_key(wf: Workflow, step: Step, messages: list[Message]) -> str:
    """The key of an exact hit: the same settings and the same messages."""
    settings = _settings(wf, step)
    if step.escalate:  # keys written before the semantic cache put the ladder last
        return _digest([*settings[:-1], messages, settings[-1]])
    return _digest([*settings, messages])


def semantic_scope(wf: Workflow, step: Step) -> str:
    """The entries a semantic lookup may match: those of the same settings."""
    return _digest(["semantic", *_settings(wf, step)])


def prompt_text(messages: list[Message]) -> str:
    """What is embedded for a semantic lookup: the messages' contents, one per line."""
    return "\n".join(m["content"] for m in messages)
