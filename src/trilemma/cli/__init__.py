"""The ``trilemma`` command, the only part of trilemma that prints or exits.

``main(argv) -> int`` runs a command in-process and returns its exit code; ``run()`` is
the console script. The commands live in ``plan`` (predict), ``runs`` (run and read the
journal) and ``lab`` (real models and experiments); importing them registers them.
"""

from trilemma.cli import plan, runs, lab  # noqa: I001  (registration order is the help's order)
from trilemma.cli._common import app, main, run

__all__ = ["app", "lab", "main", "plan", "run", "runs"]
