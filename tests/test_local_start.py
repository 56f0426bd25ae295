"""A local server that starts but cannot answer is found at start, not at a run's first step.

llama.cpp built with ``-march=native`` on a CPU whose AMX a virtual machine does not let
a process use answers GET /v1/models, then dies of a protection fault at its first
answer. That fault needs such a machine; a small server that kills itself with SIGSEGV at
its first POST stands in for it here.
"""

from __future__ import annotations

import contextlib
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from trilemma.errors import SetupError
from trilemma.providers import local

SERVER = textwrap.dedent("""
    import http.server, os, resource, signal, sys

    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))  # its SIGSEGV leaves no core file

    class H(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            self.send_response(200); self.send_header("Content-Length", "2"); self.end_headers()
            self.wfile.write(b"{}")
        def do_POST(self):
            if sys.argv[2] == "die":
                os.kill(os.getpid(), signal.SIGSEGV)
            self.send_response(500); self.send_header("Content-Length", "2"); self.end_headers()
            self.wfile.write(b"{}")

    http.server.HTTPServer(("127.0.0.1", int(sys.argv[1])), H).serve_forever()
""")


@contextlib.contextmanager
def started(tmp_path: Path, how: str) -> Iterator[tuple[subprocess.Popen[bytes], int]]:
    """The stand-in on a free port, in its own process group as up() starts a server;
    killed at the end if it still runs."""
    script = tmp_path / "server.py"
    script.write_text(SERVER)
    port = local.free_port()
    proc = subprocess.Popen([sys.executable, str(script), str(port), how], cwd=tmp_path,
                            start_new_session=True)  # fmt: skip
    try:
        deadline = time.monotonic() + 20
        while not local.healthy(port, timeout=0.5):
            assert proc.poll() is None and time.monotonic() < deadline, "the stand-in did not start"
            time.sleep(0.05)
        yield proc, port
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_a_server_that_dies_at_its_first_answer_says_how_to_rebuild(tmp_path: Path) -> None:
    (tmp_path / "smollm2.json").write_text("{}")  # its state, as up() writes it
    with started(tmp_path, "die") as (proc, port), pytest.raises(SetupError) as err:
        local._first_answer("smollm2", proc, port, tmp_path / "smollm2.log", tmp_path)
    said = str(err.value)
    assert "the smollm2 server died (SIGSEGV) at its first answer" in said, said
    assert "CMAKE_ARGS=-DGGML_NATIVE=OFF pip install --force-reinstall" in said, said
    assert proc.returncode == -signal.SIGSEGV and not (tmp_path / "smollm2.json").exists()


def test_a_server_that_answers_with_an_error_is_stopped(tmp_path: Path) -> None:
    with started(tmp_path, "500") as (proc, port):
        with pytest.raises(SetupError, match=r"did not answer a first request \(HTTP 500\)"):
            local._first_answer("smollm2", proc, port, tmp_path / "smollm2.log", tmp_path)
        assert proc.wait(timeout=15) is not None  # stopped, not left serving


def test_a_port_left_in_time_wait_is_free_and_a_listening_one_is_not() -> None:
    """`local down` then `local up` said "port 8081 is taken" for a minute: the stopped
    server's connections lingered in TIME_WAIT, which a new server binds past."""
    import socket

    port = local.free_port()
    server = socket.create_server(("127.0.0.1", port))
    client = socket.create_connection(("127.0.0.1", port))
    accepted, _ = server.accept()
    assert not local.port_free(port)  # listening
    accepted.close()  # the server side closes first, as a stopped server's does: TIME_WAIT
    client.recv(1)
    client.close()
    server.close()
    assert local.port_free(port)


@pytest.mark.parametrize(("cores", "servers", "each"), [(2, 1, 2), (2, 2, 1), (2, 3, 1),
                                                         (1, 2, 1), (8, 2, 4), (8, 3, 2)])  # fmt: skip
def test_the_cores_are_split_among_the_servers(monkeypatch: pytest.MonkeyPatch, cores: int,
                                               servers: int, each: int) -> None:  # fmt: skip
    monkeypatch.setattr(local.os, "sched_getaffinity", lambda _pid: set(range(cores)), raising=False)
    assert local.share_of_cores(servers) == each
