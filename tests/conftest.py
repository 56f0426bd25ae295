"""Shared fixtures: write a spec, run the CLI in-process."""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from trilemma.cli import main

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = ROOT / "examples"

BASE_SPEC = """\
version: 1
models:
  premium: {usd_per_call: 0.030, latency_s: 2.0, p_ok: 0.985}
  small:   {usd_per_call: 0.002, latency_s: 0.4, p_ok: 0.945}
steps:
  - {id: plan, model: premium}
  - {id: work, model: small, after: [plan], retries: 1}
"""


@dataclass
class Result:
    """What one CLI invocation returned and printed."""

    code: int
    out: str
    err: str

    def json(self) -> Any:
        return json.loads(self.out)


@pytest.fixture
def cli(capsys: pytest.CaptureFixture[str]) -> Callable[..., Result]:
    """Run ``trilemma ARGS`` in-process; returns code, stdout and stderr."""

    def run(*args: str | Path) -> Result:
        capsys.readouterr()
        code = main([str(a) for a in args])
        captured = capsys.readouterr()
        return Result(code, captured.out, captured.err)

    return run


@pytest.fixture
def write(tmp_path: Path) -> Callable[..., Path]:
    """Write text (or bytes) to a spec file in a temporary folder."""

    def _write(content: str | bytes, name: str = "spec.yaml") -> Path:
        path = tmp_path / name
        if isinstance(content, bytes):
            path.write_bytes(content)
        else:
            path.write_text(content, encoding="utf-8")
        return path

    return _write
