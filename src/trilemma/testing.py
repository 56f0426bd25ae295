"""Fakes for your own tests: a scripted OpenAI-compatible server and one-function providers.

:class:`ScriptedServer` is a real HTTP server on 127.0.0.1 that speaks the
chat-completions protocol and answers from a script: text, 429 with
Retry-After, 5xx, slow responses, malformed bodies; streamed as server-sent
events, word by word, when a request asks for ``stream: true``. Point a profile's
``base_url`` at :attr:`ScriptedServer.url` and the real ``openai`` provider runs
against it. :func:`fast_retries` retries at once, without patching sleep.

>>> with ScriptedServer([Reply("hello")]) as server:
...     server.url.startswith("http://127.0.0.1:")
True
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections import deque
from collections.abc import Awaitable, Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from trilemma.providers.base import Completion, Request, Usage
from trilemma.providers.openai import usage_json
from trilemma.run.retry import fast_retries
from trilemma.spec import ModelProfile

__all__ = [
    "FunctionProvider", "Reply", "ScriptedServer", "fast_retries", "gateway_process",
    "interruptible",
]


@dataclass(frozen=True, slots=True)
class Reply:
    """One scripted response."""

    content: str = "ok"
    """The answer's text (a 200 chat completion)."""
    status: int = 200
    """HTTP status."""
    headers: dict[str, str] = field(default_factory=dict)
    """Extra headers, such as ``{"Retry-After": "1"}``."""
    delay_s: float = 0.0
    """Seconds to wait before answering."""
    body: str | None = None
    """A raw body instead of a completion (for malformed answers and error bodies)."""
    prompt_tokens: int = 11
    """Reported usage."""
    completion_tokens: int = 7
    """Reported usage."""
    cached_tokens: int | None = None
    """Reported usage: prompt tokens served from the endpoint's prompt cache."""
    piece_delay_s: float = 0.0
    """Streamed (``stream: true``): seconds between pieces."""
    cut_after: int | None = None
    """Streamed: close the connection after this many pieces, before the answer is finished."""
    finish_reason: str = "stop"
    """Why the answer ended: ``length`` says it was cut at ``max_tokens``."""
    stream_usage: bool = True
    """Streamed: send the usage when asked (llama.cpp's server never does)."""


Script = Iterable[Reply] | Callable[[dict[str, Any]], Reply]


class _HTTPServer(ThreadingHTTPServer):
    """A client that goes away (killed mid-run, or timed out) is no error of the server's,
    whether the server was reading its next request or writing an answer: http.server
    prints the traceback of every one."""

    daemon_threads = True

    def handle_error(self, request: Any, client_address: Any) -> None:
        if isinstance(sys.exc_info()[1], (BrokenPipeError, ConnectionResetError)):
            return
        super().handle_error(request, client_address)


class ScriptedServer:
    """An OpenAI-compatible ``/v1/chat/completions`` on 127.0.0.1; use as a context manager."""

    def __init__(
        self, script: Script | None = None, *, models: Iterable[str] | None = None
    ) -> None:
        self._fn = script if callable(script) else None
        self._queue: deque[Reply] = deque([] if script is None or callable(script) else script)
        self.models = set(models) if models is not None else None
        self.requests: list[dict[str, Any]] = []
        """Every request received: ``{"path", "headers", "json"}``."""
        self._lock = threading.Lock()
        self._httpd: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        """The base URL to give a profile (``.../v1``)."""
        assert self._httpd is not None, "start the server first"
        host, port = self._httpd.server_address[:2]
        return f"http://{host!s}:{port}/v1"

    def next_reply(self, payload: dict[str, Any]) -> Reply:
        """The reply for a request: the script's next, or an echo of the last message."""
        with self._lock:
            if self._fn is not None:
                return self._fn(payload)
            if self._queue:
                return self._queue.popleft()
        messages = payload.get("messages") or [{"content": ""}]
        return Reply(f"echo: {messages[-1].get('content', '')}")

    def start(self) -> ScriptedServer:
        """Listen on a free port of 127.0.0.1."""
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"
            disable_nagle_algorithm = True  # headers and body go out as two writes: no 40 ms stall

            def log_message(self, *args: object) -> None:  # quiet
                return

            def do_GET(self) -> None:
                ids = sorted(server.models or ["scripted"])
                self._send(
                    200,
                    json.dumps(
                        {"object": "list", "data": [{"id": i, "object": "model"} for i in ids]}
                    ),
                )

            def do_POST(self) -> None:
                length = int(self.headers.get("content-length") or 0)
                raw = self.rfile.read(length)
                try:
                    payload = json.loads(raw or b"{}")
                except ValueError:
                    payload = {}
                with server._lock:
                    server.requests.append(
                        {
                            "path": self.path,
                            "headers": {k.lower(): v for k, v in self.headers.items()},
                            "json": payload,
                        }
                    )
                model = payload.get("model", "")
                if server.models is not None and model not in server.models:
                    err = {
                        "error": {
                            "message": f"model {model!r} not found",
                            "type": "invalid_request_error",
                        }
                    }
                    self._send(404, json.dumps(err))
                    return
                reply = server.next_reply(payload)
                if reply.delay_s:
                    time.sleep(reply.delay_s)
                if payload.get("stream") and reply.status == 200 and reply.body is None:
                    self._stream(reply, model, payload)
                    return
                body = reply.body if reply.body is not None else _completion(reply, model)
                if reply.status != 200 and reply.body is None:
                    body = json.dumps(
                        {"error": {"message": f"scripted {reply.status}", "type": "server_error"}}
                    )
                self._send(reply.status, body, reply.headers)

            def _stream(self, reply: Reply, model: str, payload: dict[str, Any]) -> None:
                """The reply as chat.completion.chunk events, one word each, then [DONE]."""
                self.close_connection = True  # the body ends when the connection does
                head = {"id": "chatcmpl-scripted", "object": "chat.completion.chunk",
                        "created": int(time.time()), "model": model or "scripted"}  # fmt: skip
                words = reply.content.split(" ")
                pieces = [w if i == 0 else " " + w for i, w in enumerate(words)]
                events = [{**head, "choices": [{"index": 0, "delta": {"content": p},
                                                "finish_reason": None}]} for p in pieces]  # fmt: skip
                events.append({**head, "choices": [{"index": 0, "delta": {}, "finish_reason": reply.finish_reason}]})
                if reply.stream_usage and (payload.get("stream_options") or {}).get("include_usage"):
                    events.append({**head, "choices": [], "usage": _usage(reply)})
                self.send_response(200)  # (a client gone away: see _HTTPServer.handle_error)
                self.send_header("content-type", "text/event-stream")
                self.send_header("connection", "close")
                self.end_headers()
                for i, event in enumerate(events):
                    if reply.cut_after is not None and i >= reply.cut_after:
                        return  # the connection closes mid-answer
                    if i and reply.piece_delay_s:
                        time.sleep(reply.piece_delay_s)
                    self.wfile.write(f"data: {json.dumps(event)}\n\n".encode())
                    self.wfile.flush()
                self.wfile.write(b"data: [DONE]\n\n")

            def _send(self, status: int, body: str, headers: dict[str, str] | None = None) -> None:
                data = body.encode()
                self.send_response(status)  # (a client gone away: see _HTTPServer.handle_error)
                self.send_header("content-type", "application/json")
                self.send_header("content-length", str(len(data)))
                for k, v in (headers or {}).items():
                    self.send_header(k, v)
                self.end_headers()
                self.wfile.write(data)

        self._httpd = _HTTPServer(("127.0.0.1", 0), Handler)
        self._thread = threading.Thread(
            target=self._httpd.serve_forever, name="scripted-llm", daemon=True
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop listening and join the server thread."""
        if self._httpd is not None:
            self._httpd.shutdown()
            self._httpd.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)
        self._httpd = self._thread = None

    def __enter__(self) -> ScriptedServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def _completion(reply: Reply, model: str) -> str:
    return json.dumps({
        "id": "chatcmpl-scripted", "object": "chat.completion", "created": int(time.time()),
        "model": model or "scripted",
        "choices": [{"index": 0, "finish_reason": reply.finish_reason,
                     "message": {"role": "assistant", "content": reply.content}}],
        "usage": _usage(reply),
    })  # fmt: skip


def _usage(reply: Reply) -> dict[str, Any] | None:
    return usage_json(Usage(reply.prompt_tokens, reply.completion_tokens, reply.cached_tokens))


def interruptible() -> None:
    """A ``preexec_fn`` for a child that a test will interrupt: it gets Python's Ctrl-C
    (KeyboardInterrupt) even where this process ignores SIGINT, as a background job of a
    non-interactive shell does (``pytest &``, ``nohup``) and its children inherit. Without
    it, ``proc.send_signal(SIGINT)`` is lost there and the child runs on."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


@contextlib.contextmanager
def gateway_process(
    config: str | Path, journal: str | Path, env: Mapping[str, str] | None = None
) -> Iterator[str]:
    """``trilemma gateway CONFIG`` in a process of its own on a free port of 127.0.0.1.

    Yields its base URL (``.../v1``) once it answers; ``env`` adds the variables its keys
    read. On exit it is interrupted, and a gateway that did not exit cleanly raises.
    """
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    proc = subprocess.Popen(
        [sys.executable, "-m", "trilemma", "gateway", str(config), "--port", str(port),
         "--journal", str(journal)],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
        env={**os.environ, **(env or {})}, preexec_fn=interruptible,
    )  # fmt: skip
    url = f"http://127.0.0.1:{port}/v1"
    try:
        deadline = time.monotonic() + 60
        while True:
            try:  # any answer (a 401 without a key) means it serves
                urllib.request.urlopen(f"{url}/models", timeout=5).close()
                break
            except urllib.error.HTTPError:
                break
            except OSError:
                if proc.poll() is not None:
                    raise RuntimeError(f"the gateway exited: {proc.stderr.read() if proc.stderr else ''}") from None
                if time.monotonic() > deadline:
                    raise RuntimeError("the gateway did not answer within 60 s") from None
                time.sleep(0.1)
        yield url
    finally:
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=30)
        if proc.returncode != 0:
            raise RuntimeError(f"the gateway exited with {proc.returncode}: {err}")


class FunctionProvider:
    """A provider made of one async function ``(request) -> text``; usage counted in words."""

    def __init__(self, fn: Callable[[Request], Awaitable[str]]) -> None:
        self.fn = fn
        self.requests: list[Request] = []

    async def complete(self, request: Request, profile: ModelProfile) -> Completion:
        """Call the function; its exceptions propagate (raise ProviderError kinds to test retries)."""
        self.requests.append(request)
        started = time.perf_counter()
        text = await self.fn(request)
        words = sum(len(m["content"].split()) for m in request.messages)
        return Completion(text, Usage(words, len(text.split())), time.perf_counter() - started)
