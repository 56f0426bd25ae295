"""Shared fixtures: write a spec, run the CLI in-process."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import socket
import subprocess
import time
from collections.abc import Callable, Iterator
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


@pytest.fixture(autouse=True)
def _piped_width(monkeypatch: pytest.MonkeyPatch) -> None:
    """Tables at the width a pipe gets (150 columns), whatever COLUMNS the shell exported;
    a test that wants another width sets it."""
    monkeypatch.delenv("COLUMNS", raising=False)
    monkeypatch.delenv("TRILEMMA_JOURNAL", raising=False)  # a developer's own, for their runs


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


def free_port() -> int:
    """A port of 127.0.0.1 nothing listens on now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextlib.contextmanager
def redis_server(folder: Path) -> Iterator[tuple[str, subprocess.Popen[bytes]]]:
    """A real redis-server on a free port of 127.0.0.1 (no persistence); stopped on exit.

    Skips the test where Debian's redis-server is not installed, unless
    TRILEMMA_REQUIRE_REDIS=1 (as in .ci/run, which installs it): then it fails.
    """
    binary = shutil.which("redis-server")
    if binary is None:
        if os.environ.get("TRILEMMA_REQUIRE_REDIS"):
            pytest.fail("redis-server is not installed: apt-get install redis-server")
        pytest.skip("redis-server is not installed (apt-get install redis-server)")
    port = free_port()
    proc = subprocess.Popen(
        [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
         "--dir", str(folder)],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 15
        while True:
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=1) as c:
                    c.sendall(b"PING\r\n")
                    if c.recv(16).startswith(b"+PONG"):
                        break
            except OSError:
                pass
            assert proc.poll() is None, "redis-server exited at start"
            assert time.monotonic() < deadline, "redis-server did not answer"
            time.sleep(0.05)
        yield f"redis://127.0.0.1:{port}/0", proc
    finally:
        proc.terminate()
        proc.wait(10)


@pytest.fixture(scope="session")
def redis_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """One redis-server for the session's tests (see :func:`redis_server`)."""
    with redis_server(tmp_path_factory.mktemp("redis")) as (url, _):
        yield url
