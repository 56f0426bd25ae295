"""The bounds a spec's figures are held to, and how standard input is named: what the
command line checks before a spec is loaded, without the models (and pydantic) behind them.
"""

from __future__ import annotations

import sys
from pathlib import Path

__all__ = ["MAX_RATE", "MAX_SECONDS", "MAX_SEED", "MAX_TOKENS", "MAX_USD", "STDIN", "read_capped"]

#: Upper bounds far past any real workflow, so that no sum or product of a spec's figures
#: overflows a float (a price of 1e308 dollars is finite; twice it is not).
MAX_USD = 1e6
MAX_SECONDS = 1e7
MAX_TOKENS = 10**9
MAX_RATE = 10**9
#: Seeds are 0 up to this: numpy takes no negative one, SQLite no integer of 2**63 or more,
#: and experiments add a run's number to it.
MAX_SEED = 2**62

#: The path that names standard input (as ``-`` does on a command line), and the source a
#: spec read from it is named by in errors and in the journal.
STDIN = "<stdin>"


def read_capped(path: str | Path, limit: int) -> bytes:
    """The bytes of a file, or of standard input for ``-`` (or :data:`STDIN`): at most
    ``limit`` + 1 of them, so that a caller can tell one over the limit without reading
    it all. OSError as reading raises it."""
    if str(path) in ("-", STDIN):
        return sys.stdin.buffer.read(limit + 1)
    with open(path, "rb") as f:
        return f.read(limit + 1)
