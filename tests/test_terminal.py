"""Every command's terminal-only path, on a real terminal.

Progress bars, spinners and the live run display are drawn only when standard error is a
terminal, which the other tests never give them: ``simulate --ceiling-for`` raised a
NameError on every terminal (its spinner's Console was imported for the type checker only)
while all of them passed. Here each command runs in a fresh interpreter whose standard error
is a pseudo-terminal (standard output stays a pipe, as when a table is piped on): it must
draw its display, end with its usual exit code and print no traceback.
"""

from __future__ import annotations

import fcntl
import os
import pty
import struct
import subprocess
import sys
import termios
import threading
from pathlib import Path

import pytest

from .conftest import EXAMPLES
from .test_semantic_cache import MISSING

SIM_SPEC = """\
version: 1
models:
  sim: {usd_per_call: 0.002, latency_s: 0.001, p_ok: 0.8}
steps: [{id: a, model: sim}]
"""

LONG_SPEC = (  # 300 steps in a chain: 100,000 runs are 30 million trajectory-steps
    "version: 1\nmodels: {small: {usd_per_call: 0.002, latency_s: 0.5, p_ok: 0.99}}\nsteps:\n"
    + "".join(f"  - {{id: s{i}, model: small{f', after: [s{i - 1}]' if i else ''}}}\n"
              for i in range(300))
)  # fmt: skip


def on_terminal(args: list[str], cwd: Path, timeout: float = 240) -> tuple[int, str, str]:
    """``python -m trilemma ARGS`` with standard error on a 120-column pseudo-terminal:
    exit code, standard output, and everything drawn on the terminal."""
    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 40, 120, 0, 0))
    env = {k: v for k, v in os.environ.items() if k not in ("NO_COLOR", "COLUMNS", "LINES")}
    proc = subprocess.Popen(
        [sys.executable, "-m", "trilemma", *args], cwd=cwd, stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE, stderr=slave, env={**env, "TERM": "xterm-256color"},
    )  # fmt: skip
    os.close(slave)
    drawn: list[bytes] = []

    def drain() -> None:  # a terminal's buffer is small: a display left unread would block
        while True:
            try:
                data = os.read(master, 1 << 16)
            except OSError:  # EIO: the process closed its end
                return
            if not data:
                return
            drawn.append(data)

    reader = threading.Thread(target=drain, daemon=True)
    reader.start()
    try:
        out, _ = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.communicate()
        raise
    finally:
        reader.join(10)
        os.close(master)
    return proc.returncode, out.decode(), b"".join(drawn).decode(errors="replace")


def _cases(tmp: Path) -> dict[str, tuple[list[str], str, int]]:
    """name: (arguments, what the display says, exit code)."""
    sim = tmp / "sim.yaml"  # written by the test
    j = ["--journal", str(tmp / "j.db")]
    ex = {name: str(EXAMPLES / f"{name}.yaml") for name in
          ("ceiling", "jittery", "seed-chain", "faq", "cascade", "single", "semantic-cache")}  # fmt: skip
    return {
        "simulate --ceiling-for": (["simulate", ex["ceiling"], "--ceiling-for", "0.95",
                                    "--seed", "1"], "bisecting (--ceiling-for)", 0),
        "simulate --deadline-for": (["simulate", ex["jittery"], "--deadline-for", "0.95",
                                     "--seed", "1"], "bisecting (--deadline-for)", 0),
        "simulate, 2M runs": (["simulate", ex["seed-chain"], "--runs", "2000000", "--seed", "1"],
                              "simulating", 0),
        "simulate, 300 steps": (["simulate", str(tmp / "long.yaml"), "--runs", "100000",
                                 "--seed", "1"], "simulating", 0),
        "simulate --hedge": (["simulate", ex["jittery"], "--hedge", "premium=6,3",
                              "--runs", "400000", "--seed", "1"], "simulating thresholds", 0),
        "optimize": (["optimize", ex["seed-chain"]], "the budgets by Monte Carlo", 0),
        "optimize, 300 steps": (["optimize", str(tmp / "long.yaml"), "--min-reliability", "0.9"],
                                "searching the levers: beam pass", 0),
        "run": (["run", ex["single"], "--seed", "1", *j], "steps", 0),
        "batch": (["batch", ex["faq"], "--inputs", str(EXAMPLES / "questions.jsonl"),
                   "--seed", "1", "--parallel", "6", *j], "runs", 0),
        "sweep": (["sweep", ex["cascade"], "--max-cost", "0.036", "--runs", "10", *j], "runs", 0),
        "compare": (["compare", ex["single"], "--runs", "10", *j], "runs", 0),
        "cliff": (["cliff", "--model", "sim", "--spec", str(sim), "--steps", "1,2",
                   "--runs", "10", *j], "chains", 0),
        "run, a semantic cache": (["run", ex["semantic-cache"], "-i", "question=How do I pay?",
                                   "--seed", "1", *j], "loading all-MiniLM-L6-v2", 0),
        "demo": (["demo", *j], "runs", 0),
        "calibrate": (["calibrate", "--model", "sim", "--spec", str(sim), "--suite", "add1",
                       "--n", "5"], "sim on add1", 0),
    }  # fmt: skip


CASES = sorted(_cases(Path("/nonexistent")))


@pytest.mark.parametrize("name", CASES)
def test_a_command_draws_its_display_on_a_terminal_and_ends_as_it_should(
    name: str, tmp_path: Path
) -> None:
    if name == "run, a semantic cache" and MISSING:
        pytest.skip(f"semantic extra missing ({', '.join(MISSING)})")
    (tmp_path / "sim.yaml").write_text(SIM_SPEC, encoding="utf-8")
    (tmp_path / "long.yaml").write_text(LONG_SPEC, encoding="utf-8")
    args, shown, code = _cases(tmp_path)[name]
    rc, out, drawn = on_terminal(args, tmp_path)
    assert "Traceback" not in drawn and "Error" not in drawn, drawn[-2000:]
    assert rc == code, (rc, drawn[-2000:])
    assert shown in drawn, drawn[-2000:]
    assert out.strip(), "the command printed its answer on standard output"
    assert "\x1b[" not in out  # the display stays on the terminal, out of the piped answer
