"""The command output embedded in docs/ is what the commands print today."""

from __future__ import annotations

import subprocess
import sys

from .conftest import ROOT


def test_docs_command_output_is_current() -> None:
    r = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "gen_docs.py"), "--check"],
        capture_output=True,
        text=True,
        cwd=ROOT,
    )
    assert r.returncode == 0, r.stdout + r.stderr
