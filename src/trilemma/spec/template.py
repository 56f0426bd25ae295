"""Prompt templates: ``{name}`` fields filled from run inputs and upstream outputs.

``{{`` and ``}}`` are literal braces; a name is a plain key, never an attribute or index.
"""

from __future__ import annotations

import functools
import string
from collections.abc import Mapping

__all__ = ["render_template", "template_fields", "template_ok"]


@functools.lru_cache(maxsize=1024)
def _parse_template(text: str) -> tuple[tuple[str, str | None], ...] | None:
    """A template as (literal, field or None) pairs; None if its braces do not parse."""
    try:
        return tuple((literal, name) for literal, name, _, _ in string.Formatter().parse(text))
    except ValueError:
        return None


def template_fields(text: str) -> list[str]:
    """The ``{name}`` fields of a prompt template (``{{`` and ``}}`` are literal braces); an
    empty ``{}`` is one too, named ``""``."""
    return [f for _, f in _parse_template(text) or () if f is not None]


def template_ok(text: str) -> bool:
    """Its braces parse (every ``{`` closed, literal ones doubled)."""
    return _parse_template(text) is not None


def render_template(text: str, values: Mapping[str, str]) -> str:
    """Fill a prompt template's ``{name}`` fields; names are plain keys, never attributes."""
    out = []
    for literal, name in _parse_template(text) or ():
        out.append(literal)
        if name is not None:
            out.append(values[name])
    return "".join(out)
