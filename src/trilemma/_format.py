"""Figures as messages print them, for every layer (the tables add their own widths)."""

from __future__ import annotations

import difflib
import math
import shlex
from collections.abc import Iterable, Sequence
from decimal import Decimal

__all__ = ["count", "counted", "did_you_mean", "dollars", "set_flags"]


def dollars(x: float) -> str:
    """Dollars to four decimals, or to two significant digits where four decimals would print
    a cost as $0.0000 (a call to a cheap model at token prices: 200 tokens at $0.10 a million
    is $0.000020)."""
    if 0 < abs(x) < 0.00005:
        return f"${x:.{1 - math.floor(math.log10(abs(x)))}f}"
    return f"${x:,.4f}"


def count(n: int) -> str:
    """A count with thousands separators, or in scientific notation past a quadrillion
    (a search space of 300 steps has a few hundred digits)."""
    if n < 10**15:
        return f"{n:,}"
    return f"{Decimal(n):.1e}".replace("+", "")  # a float would overflow past 1e308


def counted(n: int, noun: str) -> str:
    """``n`` and ``noun``, plural unless one: "1 run", "2 runs", "1,024 calls"."""
    return f"{n:,} {noun}{'' if n == 1 else 's'}"


def did_you_mean(name: str, options: Iterable[str]) -> str:
    """`` (did you mean 'x'?)`` for the option spelt nearest ``name``, or nothing: the hint
    every message about an unknown name gives."""
    close = difflib.get_close_matches(name, [str(o) for o in options], n=1, cutoff=0.6)
    return f" (did you mean {close[0]!r}?)" if close else ""


def set_flags(overrides: Sequence[str]) -> str:
    """``--set PATH=VALUE`` as a command line gives them again, each quoted for the shell
    ("" for none)."""
    return " ".join(f"--set {shlex.quote(o)}" for o in overrides)
