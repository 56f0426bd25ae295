"""``python -m trilemma``: the same as the ``trilemma`` command."""

from trilemma.cli import run

run()
