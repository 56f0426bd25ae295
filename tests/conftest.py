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


def assert_simulation_agrees(wf: Any, seed: int) -> None:
    """The Monte Carlo (vectorised and the plain loop) lands on the estimate's figures."""
    from trilemma import estimate, simulate
    from trilemma.plan.simulate import simulate_loop

    e = estimate(wf)
    r = simulate(wf, 400_000, seed=seed, halt=False)
    assert r.cost_usd.mean == pytest.approx(e.cost_expected, rel=5e-3)
    assert r.latency_s.mean == pytest.approx(e.latency_expected_s, rel=5e-3)
    assert r.calls.mean == pytest.approx(e.calls_expected, rel=5e-3)
    halted = simulate(wf, 400_000, seed=seed)
    assert abs(halted.success_rate - e.reliability) <= 3 * halted.stderr
    ok, cost, latency = simulate_loop(wf, 40_000, seed=seed)
    assert ok == pytest.approx(halted.success_rate, abs=0.01)
    assert cost == pytest.approx(halted.cost_usd.mean, rel=0.03)
    assert latency == pytest.approx(halted.latency_s.mean, rel=0.03)

