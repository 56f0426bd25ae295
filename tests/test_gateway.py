"""The gateway, served on 127.0.0.1 and called with the official openai SDK."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import socket
import sqlite3
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import openai
import pytest
import uvicorn

from trilemma.errors import UsageError
from trilemma.gateway.app import Gateway, create_app, run_id_of
from trilemma.gateway.config import load_gateway_config, secrets_of
from trilemma.journal import Journal
from trilemma.testing import Reply, ScriptedServer, interruptible

SECRET = "sk-team-a-secret"


def config_text(upstream: str = "http://127.0.0.1:9/v1", ceiling: float | None = 1.0) -> str:
    cap = "" if ceiling is None else f", max_cost_usd: {ceiling}"
    return f"""version: 1
models:
  small: {{provider: openai, base_url: "{upstream}", model: m1, usd_per_1m_input: 1.0,
           usd_per_1m_output: 2.0, latency_s: 0.1, p_ok: 0.9, timeout_s: 5}}
  sim:   {{usd_per_call: 0.01, latency_s: 0.2, p_ok: 1.0}}
keys:
  team-a: {{key_env: TRILEMMA_GW_A{cap}}}
  team-b: {{key_env: TRILEMMA_GW_B, models: [sim]}}
"""


@pytest.fixture(autouse=True)
def _keys(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TRILEMMA_GW_A", SECRET)
    monkeypatch.setenv("TRILEMMA_GW_B", "sk-team-b-secret")


@contextlib.contextmanager
def serving(tmp_path: Path, text: str) -> Iterator[tuple[str, Gateway]]:
    """The gateway on an ephemeral port of 127.0.0.1, in a thread; stopped on exit."""
    path = tmp_path / "gateway.yaml"
    path.write_text(text)
    conf = load_gateway_config(path)
    gw = Gateway(conf, secrets_of(conf, str(path)), Journal(tmp_path / "j.db"), str(path))
    server = uvicorn.Server(uvicorn.Config(create_app(gw), host="127.0.0.1", port=0,
                                           log_level="warning"))  # fmt: skip
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 15
    while not server.started:
        assert thread.is_alive() and time.monotonic() < deadline, "the gateway did not start"
        time.sleep(0.01)
    port = server.servers[0].sockets[0].getsockname()[1]
    try:
        yield f"http://127.0.0.1:{port}/v1", gw
    finally:
        server.should_exit = True
        thread.join(15)


def http(
    url: str, data: bytes | None = None, headers: dict[str, str] | None = None
) -> tuple[int, Any]:
    """A raw request (the SDK would not send a body that is not JSON): status and JSON body."""
    req = urllib.request.Request(url, data=data, headers=headers or {})
    try:
        with urllib.request.urlopen(req, timeout=10) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


_CLIENTS: list[openai.OpenAI] = []


def client(url: str, key: str = SECRET) -> openai.OpenAI:
    """A client for the gateway at ``url``, closed when the test ends."""
    c = openai.OpenAI(base_url=url, api_key=key, max_retries=0)
    _CLIENTS.append(c)
    return c


@pytest.fixture(autouse=True)
def _close_clients() -> Iterator[None]:
    # An unclosed client's socket is closed only when the collector reaches it, which may
    # be in a later test, failing that one with a ResourceWarning.
    yield
    while _CLIENTS:
        _CLIENTS.pop().close()


def burst(urls: list[str], n: int, key: str) -> list[int]:
    """``n`` requests for model sim at once, spread over the gateways; their status codes."""

    async def one(c: openai.AsyncOpenAI) -> int:
        try:
            await c.chat.completions.create(model="sim", messages=[{"role": "user", "content": "q"}])
        except openai.APIStatusError as exc:
            return exc.status_code
        return 200

    async def go() -> list[int]:
        clients = [openai.AsyncOpenAI(base_url=u, api_key=key, max_retries=0) for u in urls]
        try:
            return await asyncio.gather(*(one(clients[i % len(clients)]) for i in range(n)))
        finally:
            for c in clients:
                await c.close()

    return asyncio.run(go())


def test_a_call_is_forwarded_billed_from_usage_and_journaled(tmp_path: Path) -> None:
    with ScriptedServer([Reply("hi there", prompt_tokens=12, completion_tokens=20)]) as up:
        with serving(tmp_path, config_text(up.url)) as (url, _):
            raw = client(url).chat.completions.with_raw_response.create(
                model="small", messages=[{"role": "user", "content": "hello"}], max_tokens=50
            )
            answer = raw.parse()
            wait_for_row(tmp_path / "j.db", "team-a")
            live = Journal(tmp_path / "j.db").run(run_id_of("team-a"))  # while it serves
        sent = up.requests[0]
    assert live is not None and live["status"] == "running"
    assert (live["calls"], live["cost_usd"]) == (1, pytest.approx((12 * 1.0 + 20 * 2.0) / 1e6))
    assert answer.choices[0].message.content == "hi there"
    assert answer.usage is not None and answer.usage.total_tokens == 32
    cost = (12 * 1.0 + 20 * 2.0) / 1e6
    assert float(raw.headers["x-trilemma-cost-usd"]) == pytest.approx(cost)
    assert float(raw.headers["x-trilemma-remaining-usd"]) == pytest.approx(1.0 - cost)
    assert sent["json"]["model"] == "m1" and sent["json"]["max_tokens"] == 50
    assert sent["headers"]["idempotency-key"].startswith("gateway-team-a:")
    assert SECRET not in str(sent["headers"])  # the client's key stops at the gateway
    j = Journal(tmp_path / "j.db")
    (call,) = j.calls(run_id_of("team-a"))
    assert (call["model"], call["outcome"], call["state"]) == ("small", "ok", "finished")
    assert call["cost_usd"] == pytest.approx(cost) and call["reserved_usd"] >= cost
    run = j.run(run_id_of("team-a"))
    assert run is not None and run["status"] == "ok" and run["cost_usd"] == pytest.approx(cost)
    for f in tmp_path.iterdir():
        assert SECRET.encode() not in f.read_bytes()


def test_the_ledger_a_gateway_keeps_calibrates_its_models(cli, tmp_path: Path) -> None:
    """`calibrate --from-journal` of a gateway's journal starts from the gateway's own profile
    (a key's run keeps the gateway's config, not a workflow: it was refused as one)."""
    with serving(tmp_path, config_text()) as (url, _):
        for i in range(3):
            client(url).chat.completions.create(
                model="sim", messages=[{"role": "user", "content": f"q{i}"}]
            )
    r = cli("calibrate", "--model", "sim", "--from-journal", tmp_path / "j.db", "--json")
    assert r.code == 0, r.err
    fitted = r.json()
    assert fitted["calls"] == 3 and fitted["profile"]["usd_per_call"] == 0.01
    assert fitted["profile"]["latency_s"] == pytest.approx(0.2, rel=0.5)
    assert fitted["drift"] == []  # its 0.2 s beside the 0.2 s the config gives
    r = cli("calibrate", "--model", "nope", "--from-journal", tmp_path / "j.db")
    assert r.code == 2 and "no calls of model 'nope'" in r.err, r.err


def test_an_answer_cut_at_max_tokens_reaches_the_client_as_cut(tmp_path: Path) -> None:
    """The upstream stopped at max_tokens: the client hears finish_reason length (not stop),
    and the ledger keeps it; a whole answer is 'stop' as before."""
    script = [Reply("half an ans", finish_reason="length", completion_tokens=5), Reply("whole")]
    with ScriptedServer(script) as up, serving(tmp_path, config_text(up.url)) as (url, _):
        reasons = [client(url).chat.completions.create(
            model="small", messages=ASK, max_tokens=5).choices[0].finish_reason  # type: ignore[arg-type]
            for _ in range(2)]  # fmt: skip
    assert reasons == ["length", "stop"]
    rows = Journal(tmp_path / "j.db").calls(run_id_of("team-a"))
    assert [r["finish_reason"] for r in rows] == ["length", "stop"]


def test_concurrent_requests_never_take_a_key_over_its_ceiling(tmp_path: Path) -> None:
    # 20 requests at once, $0.01 each, a $0.055 ceiling: five fit, fifteen are refused
    # before anything is sent, and the spend is exactly five calls.
    text = config_text(ceiling=None).replace("{key_env: TRILEMMA_GW_B,",
                                              "{key_env: TRILEMMA_GW_B, max_cost_usd: 0.055,")  # fmt: skip
    with serving(tmp_path, text) as (url, gw):
        codes = burst([url], 20, "sk-team-b-secret")
        budget = client(url, "sk-team-b-secret").get("/budget", cast_to=object)
    assert sorted(codes) == [200] * 5 + [402] * 15
    assert budget["spent_usd"] == pytest.approx(0.05) and budget["refused"] == 15  # type: ignore[index]
    assert budget["reserved_usd"] == pytest.approx(0.0)  # type: ignore[index]
    j = Journal(tmp_path / "j.db")
    assert j.spent(run_id_of("team-b")) == pytest.approx(0.05)
    assert len(j.calls(run_id_of("team-b"))) == 5  # a refused request is never sent
    assert gw.budgets.guards["team-b"].spent <= 0.055


def test_keys_models_and_bodies_are_checked(tmp_path: Path) -> None:
    with serving(tmp_path, config_text()) as (url, _):
        msg = [{"role": "user", "content": "q"}]
        with pytest.raises(openai.AuthenticationError):
            client(url, "sk-wrong").chat.completions.create(model="sim", messages=msg)  # type: ignore[arg-type]
        with pytest.raises(openai.NotFoundError, match="not served to key 'team-b'"):
            client(url, "sk-team-b-secret").chat.completions.create(model="small", messages=msg)  # type: ignore[arg-type]
        with pytest.raises(openai.BadRequestError, match="messages must be"):
            client(url).chat.completions.create(model="sim", messages=[])
        not_json = http(f"{url}/chat/completions", b"{nope", {"Authorization": f"Bearer {SECRET}"})
        assert not_json[0] == 400 and "not JSON" in not_json[1]["error"]["message"]
        no_key = http(f"{url}/budget")
        assert no_key[0] == 401 and no_key[1]["error"]["code"] == "invalid_api_key"
        listed = [m.id for m in client(url, "sk-team-b-secret").models.list()]
        ok = client(url).chat.completions.create(model="sim", messages=msg)  # type: ignore[arg-type]
    assert listed == ["sim"]
    assert ok.choices[0].message.content == "answer from sim"


REFUSED_BODIES = {
    # what the gateway cannot honour is refused, never dropped without a word
    "n": ({"n": 3}, "n must be 1"),
    "n of true": ({"n": True}, "n must be 1"),
    "stream not a boolean": ({"stream": "no"}, "stream must be true or false"),
    "stream of 1": ({"stream": 1}, "stream must be true or false"),
    "include_usage not a boolean": ({"stream": True, "stream_options": {"include_usage": "yes"}},
                                    "stream_options must be an object"),
    "include_usage of 0": ({"stream": True, "stream_options": {"include_usage": 0}},
                           "stream_options must be an object"),
    "temperature past 2": ({"temperature": 7}, "temperature must be a number from 0 to 2"),
    "temperature below 0": ({"temperature": -0.5}, "temperature must be a number from 0 to 2"),
    "temperature of true": ({"temperature": True}, "temperature must be a number from 0 to 2"),
    "tools": ({"tools": [{"type": "function", "function": {"name": "f"}}]}, "tools are not"),
    "tool_choice": ({"tool_choice": "required"}, "tool_choice is not"),
    "response_format": ({"response_format": {"type": "json_object"}}, "response_format is not"),
    "logprobs": ({"logprobs": True}, "logprobs are not"),
    "stop not text": ({"stop": 5}, "stop must be"),
    "stop of 0": ({"stop": 0}, "stop must be"),
    "top_p past 1": ({"top_p": 1.5}, "top_p must be a number from 0 to 1"),
    "seed not an integer": ({"seed": 1.5}, "seed must be an integer"),
    "seed of true": ({"seed": True}, "seed must be an integer"),
    "penalty past 2": ({"presence_penalty": 3}, "presence_penalty must be a number from -2 to 2"),
    "user not text": ({"user": 7}, "user must be text"),
    "logit_bias of a word": ({"logit_bias": {"hello": 5}}, "logit_bias must be an object of token ids"),
    "logit_bias past 100": ({"logit_bias": {"50256": -101}}, "logit_bias must be"),
    "reasoning_effort of a number": ({"reasoning_effort": 3}, "reasoning_effort must be a word"),
    "a pricier tier": ({"service_tier": "priority"}, "service_tier is not forwarded by this gateway"),
    "stored upstream": ({"store": True}, "store is not forwarded"),
    "metadata": ({"metadata": {"team": "a"}}, "metadata is not forwarded"),
    "a field nobody reads": ({"top_k": 40}, "Unrecognized request argument supplied: top_k; this gateway reads"),
    "stop an object": ({"stop": {}}, "stop must be"),
    "stop of None": ({"stop": [None, 3]}, "stop must be"),
    "five stops": ({"stop": list("abcde")}, "stop must be"),
    "a role nobody has": ({"messages": [{"role": "wizard", "content": "q"}]}, "a role of"),
    "an image": ({"messages": [{"role": "user", "content": [
        {"type": "image_url", "image_url": {"url": "http://x/y.png"}}]}]}, "text parts"),
}


@pytest.mark.parametrize("name", sorted(REFUSED_BODIES))
def test_a_request_the_gateway_cannot_honour_is_a_400(tmp_path: Path, name: str) -> None:
    extra, says = REFUSED_BODIES[name]
    body = {"model": "sim", "messages": [{"role": "user", "content": "q"}], **extra}
    with serving(tmp_path, config_text()) as (url, _):
        status, reply = http(f"{url}/chat/completions", json.dumps(body).encode(),
                             {"Authorization": f"Bearer {SECRET}"})  # fmt: skip
    assert status == 400 and says in reply["error"]["message"], reply
    assert Journal(tmp_path / "j.db").calls(run_id_of("team-a")) == []  # nothing sent or billed


def test_text_that_is_not_utf8_is_a_400_and_text_parts_are_joined(tmp_path: Path) -> None:
    lone = b'{"model": "sim", "messages": [{"role": "user", "content": "q \\ud800"}]}'
    parts = [{"type": "text", "text": "first"}, {"type": "text", "text": "second"}]
    with serving(tmp_path, config_text()) as (url, _):
        for stream in (b"", b', "stream": true'):
            status, reply = http(f"{url}/chat/completions", lone[:-1] + stream + b"}",
                                 {"Authorization": f"Bearer {SECRET}"})  # fmt: skip
            assert status == 400 and "UTF-8" in reply["error"]["message"], reply
        ok = client(url).chat.completions.create(model="sim", messages=[  # type: ignore[misc]
            {"role": "user", "content": parts}])  # fmt: skip
    assert ok.choices[0].message.content == "answer from sim"
    (call,) = Journal(tmp_path / "j.db").calls(run_id_of("team-a"))
    assert json.loads(call["request_json"]) == [{"role": "user", "content": "first\nsecond"}]


def test_a_path_or_method_not_served_gets_an_error_in_openais_shape(tmp_path: Path) -> None:
    with serving(tmp_path, config_text()) as (url, _):
        with pytest.raises(openai.NotFoundError, match="POST /v1/completions is not served"):
            client(url).completions.create(model="sim", prompt="q")
        status, reply = http(f"{url}/models", b"{}", {"Authorization": f"Bearer {SECRET}"})
    assert status == 405 and reply["error"]["code"] == "method_not_allowed", reply
    assert "GET /v1/models" in reply["error"]["message"]


def test_a_body_over_the_limit_is_refused_before_the_rest_is_read(tmp_path: Path) -> None:
    """A chunked body (no length given) that never ends gets its 413 once past 4 MB."""
    with serving(tmp_path, config_text()) as (url, _):
        host, port = url.split("//")[1].split("/")[0].split(":")
        with socket.create_connection((host, int(port)), timeout=10) as sock:
            sock.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\n"
                         b"Authorization: Bearer " + SECRET.encode() + b"\r\n"
                         b"Transfer-Encoding: chunked\r\n\r\n")  # fmt: skip
            piece = b"x" * 65536
            for _ in range(4 * 16 + 1):  # 4 MB and one piece more; the body is never ended
                sock.sendall(b"%x\r\n%s\r\n" % (len(piece), piece))
            reply = read_response(sock)
    assert reply.startswith(b"HTTP/1.1 413"), reply[:200]
    assert b"over 4 MB" in reply


def read_response(sock: socket.socket) -> bytes:
    """One whole HTTP response with a Content-Length: its head and body may come apart."""
    data = b""
    while b"\r\n\r\n" not in data and (more := sock.recv(65536)):
        data += more
    head, _, body = data.partition(b"\r\n\r\n")
    length = next((int(line.split(b":", 1)[1]) for line in head.split(b"\r\n")
                   if line.lower().startswith(b"content-length:")), 0)  # fmt: skip
    while len(body) < length and (more := sock.recv(65536)):
        body += more
    return head + b"\r\n\r\n" + body


def test_an_upstream_429_passes_through_with_retry_after_and_is_not_billed(tmp_path: Path) -> None:
    limited = ScriptedServer([Reply(status=429, headers={"Retry-After": "3"})])
    with limited as up, serving(tmp_path, config_text(up.url)) as (url, gw):
        with pytest.raises(openai.RateLimitError) as err:
            client(url).chat.completions.create(
                model="small", messages=[{"role": "user", "content": "q"}]
            )
        assert err.value.response.headers["retry-after"] == "3"
        assert gw.budgets.guards["team-a"].spent == 0.0 and gw.budgets.guards["team-a"].reserved == 0.0
    (call,) = Journal(tmp_path / "j.db").calls(run_id_of("team-a"))
    assert (call["outcome"], call["cost_usd"]) == ("rate_limited", 0.0)


def test_an_upstream_503_with_retry_after_passes_its_advice_on(tmp_path: Path) -> None:
    """An overloaded upstream's 503 says when to come back: the client hears 503 and that
    advice; without advice it is a 502 as before."""
    script = [Reply(status=503, headers={"Retry-After": "7"}), Reply(status=503)]
    errors = []
    with ScriptedServer(script) as up, serving(tmp_path, config_text(up.url)) as (url, _):
        for _ in range(2):
            with pytest.raises(openai.APIStatusError) as err:
                client(url).chat.completions.create(model="small", messages=ASK)  # type: ignore[arg-type]
            errors.append((err.value.status_code, err.value.response.headers.get("retry-after")))
    assert errors == [(503, "7"), (502, None)]


def test_an_unreachable_upstream_is_a_502_that_does_not_name_its_url(tmp_path: Path) -> None:
    """The client hears that the upstream could not be reached; where it is stays in the
    operator's journal."""
    upstream = "http://admin:hunter2@127.0.0.1:9/v1"  # port 9: nothing listens
    with serving(tmp_path, config_text(upstream)) as (url, _), \
            pytest.raises(openai.APIStatusError) as err:
        client(url).chat.completions.create(model="small", messages=ASK)  # type: ignore[arg-type]
    assert err.value.status_code == 502
    said = json.dumps(err.value.body)
    assert "cannot reach the model's endpoint" in said and "127.0.0.1:9" not in said
    (call,) = Journal(tmp_path / "j.db").calls(run_id_of("team-a"))
    assert call["outcome"] == "transient" and call["cost_usd"] == 0.0
    assert "cannot reach http://127.0.0.1:9/v1 (" in call["error"]
    assert "hunter2" not in call["error"] and "admin" not in call["error"]


def test_a_restarted_gateway_starts_from_what_each_key_spent(cli, tmp_path: Path) -> None:
    msg = [{"role": "user", "content": "q"}]
    with serving(tmp_path, config_text()) as (url, _):
        for _ in range(3):
            client(url, "sk-team-b-secret").chat.completions.create(model="sim", messages=msg)  # type: ignore[arg-type]
    with serving(tmp_path, config_text()) as (url, gw):
        budget = client(url, "sk-team-b-secret").get("/budget", cast_to=object)
    assert budget["spent_usd"] == pytest.approx(0.03)  # type: ignore[index]
    assert gw.budgets.guards["team-b"].spent == pytest.approx(0.03)
    ledger = cli("ledger", "gateway-team-b", "--journal", tmp_path / "j.db", "--json").json()
    assert [(c["model"], c["outcome"], c["cost_usd"]) for c in ledger] == [("sim", "ok", 0.01)] * 3
    r = cli("resume", "gateway-team-b", "--journal", tmp_path / "j.db")
    assert r.code == 2 and "nothing to resume" in r.err
    page = tmp_path / "key.html"  # its page: the models asked as the timeline's rows
    r = cli("report", "gateway-team-b", "--journal", tmp_path / "j.db", "--out", page)
    assert r.code == 0, r.err
    assert "<h2>Ledger: 3 calls</h2>" in page.read_text() and "<h2>Steps</h2>" not in page.read_text()


def three_calls_two_old(tmp_path: Path) -> Path:
    """Three $0.01 calls of key team-b through a gateway, two of them ended 40 days ago: the
    journal."""
    msg = [{"role": "user", "content": "q"}]
    db = tmp_path / "j.db"
    with serving(tmp_path, config_text()) as (url, _):
        for _ in range(3):
            client(url, "sk-team-b-secret").chat.completions.create(model="sim", messages=msg)  # type: ignore[arg-type]
    with sqlite3.connect(db) as raw:
        raw.execute("UPDATE calls SET finished_at = finished_at - 40 * 86400 WHERE id IN "
                    "(SELECT id FROM calls WHERE run_id = 'gateway-team-b' ORDER BY id LIMIT 2)")  # fmt: skip
    return db


def test_prune_forgets_a_keys_old_calls_but_not_what_they_spent(cli, tmp_path: Path) -> None:
    """A gateway key's ceiling counts every call it ever made: prune forgets the old calls'
    rows and keeps their count and bill on the key's run, so the key's spend stays."""
    db = three_calls_two_old(tmp_path)
    dry = cli("prune", "--older-than", "30", "--dry-run", "--journal", db, "--json").json()
    assert dry["gateway_calls"] == 2 and dry["runs"] == 0
    r = cli("prune", "--older-than", "30", "--journal", db)
    assert r.code == 0, r.err
    assert "and 2 calls of gateway keys that ended before then" in " ".join(r.out.split())
    ledger = cli("ledger", "gateway-team-b", "--journal", db, "--json").json()
    assert len(ledger) == 1
    shown = " ".join(cli("ledger", "gateway-team-b", "--journal", db).out.split())
    assert "billed $0.0100; 1 ok" in shown
    assert "and 2 older calls, billed $0.0200, that `trilemma prune` forgot" in shown
    page = tmp_path / "b.html"
    assert cli("report", "gateway-team-b", "--journal", db, "--out", page).code == 0
    assert "And 2 older calls, billed $0.0200, that <code>trilemma prune</code> forgot" in (
        page.read_text())
    (run,) = [x for x in cli("runs", "--journal", db, "--json").json()
              if x["run_id"] == "gateway-team-b"]  # fmt: skip
    assert run["cost_usd"] == pytest.approx(0.03) and run["calls"] == 3
    with serving(tmp_path, config_text()) as (url, gw):  # a restart counts them too
        budget = client(url, "sk-team-b-secret").get("/budget", cast_to=object)
        assert gw.budgets.guards["team-b"].spent == pytest.approx(0.03)
    assert budget["spent_usd"] == pytest.approx(0.03)  # type: ignore[index]
    again = cli("prune", "--older-than", "30", "--journal", db, "--json").json()
    assert again["gateway_calls"] == 0  # nothing more to forget, and nothing counted twice
    assert Journal(db).totals("gateway-team-b") == (pytest.approx(0.03), 3)
    assert cli("prune", "--older-than", "0", "--journal", db, "--json").json()["gateway_calls"] >= 1
    shown = " ".join(cli("ledger", "gateway-team-b", "--journal", db).out.split())
    assert ": 0 calls" in shown and "forgot" in shown and " and " not in shown.split("┘")[-1]
    assert cli("ledger", "gateway-team-b", "--journal", db, "--step", "sim").code == 0  # a model
    bad = cli("ledger", "gateway-team-b", "--journal", db, "--step", "simm")
    assert bad.code == 2 and "(its models, by which a gateway files its calls: small, sim)" in bad.err
    assert Journal(db).totals("gateway-team-b") == (pytest.approx(0.03), 3)


def pruned_calls(db: Path, key: str, at_least: int) -> int:
    """The calls of ``key`` its gateway has forgotten, once they are ``at_least`` (10 s at most)."""
    deadline = time.monotonic() + 10
    while True:
        with contextlib.closing(sqlite3.connect(db)) as raw:
            (n,) = raw.execute("SELECT pruned_calls FROM runs WHERE run_id = ?",
                               (run_id_of(key),)).fetchone()  # fmt: skip
        if n >= at_least or time.monotonic() > deadline:
            return int(n)
        time.sleep(0.05)


def test_a_gateway_that_keeps_calls_n_days_forgets_older_ones_and_not_their_spend(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from trilemma.gateway import app

    msg = [{"role": "user", "content": "q"}]
    db = three_calls_two_old(tmp_path)
    monkeypatch.setattr(app, "KEEP_EVERY_S", 0.1)
    keeping = config_text() + "keep_calls_days: 30\n"
    with serving(tmp_path, keeping) as (url, gw):
        assert pruned_calls(db, "team-b", 2) == 2  # when it started
        with sqlite3.connect(db) as raw:  # the third ages while it serves
            raw.execute("UPDATE calls SET finished_at = finished_at - 40 * 86400 "
                        "WHERE run_id = 'gateway-team-b'")  # fmt: skip
        assert pruned_calls(db, "team-b", 3) == 3  # on a later round
        budget = client(url, "sk-team-b-secret").get("/budget", cast_to=object)
        client(url, "sk-team-b-secret").chat.completions.create(model="sim", messages=msg)  # type: ignore[arg-type]
    assert budget["spent_usd"] == pytest.approx(0.03)  # type: ignore[index]
    assert gw._keeping is None  # stopped with the gateway
    assert Journal(db).totals("gateway-team-b") == (pytest.approx(0.04), 4)
    with serving(tmp_path, config_text()) as (url, _):  # a restart starts from all of it
        budget = client(url, "sk-team-b-secret").get("/budget", cast_to=object)
    assert budget["spent_usd"] == pytest.approx(0.04)  # type: ignore[index]


def test_a_gateway_that_cannot_forget_old_calls_says_so_and_tries_again(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    from trilemma.errors import JournalBusy
    from trilemma.gateway import app

    tries: list[float] = []

    def busy(self: Journal, runs: Any, before: float) -> int:
        tries.append(before)
        raise JournalBusy(f"{self.path}: another process holds the journal; try again")

    monkeypatch.setattr(Journal, "forget_calls", busy)
    monkeypatch.setattr(app, "KEEP_EVERY_S", 0.05)
    with serving(tmp_path, config_text() + "keep_calls_days: 7\n") as (url, _):
        deadline = time.monotonic() + 10
        while len(tries) < 3 and time.monotonic() < deadline:
            time.sleep(0.02)
        r = client(url, "sk-team-b-secret").chat.completions.create(
            model="sim", messages=[{"role": "user", "content": "q"}])  # still serving
    assert len(tries) >= 3 and r.choices[0].message.content
    assert time.time() - 7 * 86_400 - tries[0] < 60  # seven days back, as asked
    said = [r.getMessage() for r in caplog.records if r.name == "trilemma.gateway.app"]
    assert said and "could not forget old calls" in said[0] and "another process holds" in said[0]


@pytest.mark.parametrize(
    ("change", "field", "says"),
    [
        (("models: [sim]", "models: [simm]"), "keys.team-b.models[0]", "unknown model 'simm'"),
        (("key_env: TRILEMMA_GW_B", "key_env: TRILEMMA_GW_UNSET"), "keys.team-b.key_env",
         "TRILEMMA_GW_UNSET is not set"),
        (("max_cost_usd: 1.0", "max_cost: 1.0"), "keys.team-a.max_cost", "did you mean 'max_cost_usd'"),
        (("version: 1", "version: 1\ncache: {hit_rate: 0.5}"), "cache.hit_rate", "planning figure"),
        (("version: 1", "version: 1\ncache: sometimes"), "cache", "or a mapping of hit_rate, similarity (got 'sometimes')"),
        (("models: [sim]}", "models: [sim], rpm: 0}"), "keys.team-b.rpm", "greater than or equal to 1"),
        (("p_ok: 1.0}", "p_ok: 1.0, hedge_after_s: 1}"), "models.sim.hedge_after_s", "sends each request once"),
        (("version: 1", "version: 1\nkeep_calls_days: 0"), "keep_calls_days", "greater than 0"),
    ],
)  # fmt: skip
def test_cli_gateway_bad_config_is_one_line(cli, tmp_path: Path, change, field, says) -> None:
    path = tmp_path / "gw.yaml"
    path.write_text(config_text().replace(*change))
    r = cli("gateway", path, "--journal", tmp_path / "j.db")
    assert r.code == 2, r.out
    assert field in r.err and says in r.err and len(r.err.strip().splitlines()) == 1


def test_cli_gateway_on_a_taken_port_or_a_foreign_address_says_so_in_one_line(
    cli, tmp_path: Path
) -> None:
    path = tmp_path / "gw.yaml"
    path.write_text(config_text())
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        r = cli("gateway", path, "--port", port, "--journal", tmp_path / "j.db")
    assert r.code == 1 and r.err.strip() == (
        f"trilemma: error: port {port} on 127.0.0.1 is taken; stop what uses it or pass --port")
    assert "serving" not in r.out  # it did not say it serves
    assert Journal(tmp_path / "j.db").runs() == []  # no key's run opened
    r = cli("gateway", path, "--host", "192.0.2.1", "--journal", tmp_path / "j.db")  # TEST-NET-1
    assert r.code == 2 and "--host 192.0.2.1: cannot listen there" in r.err, r.err
    assert len(r.err.strip().splitlines()) == 1


def test_the_gateway_s_socket_gives_its_connections_no_nagle() -> None:
    """uvicorn writes a response's head and body apart: with Nagle's algorithm on, the body
    waited for the client's delayed ACK, 40 ms a request on a kept-alive connection (measured:
    +50 ms a request through the gateway, against +3 ms with it off). asyncio turns it off on
    the connections of a socket that says it is TCP, as the one the gateway binds now does."""
    from trilemma.cli.runs import _listening

    listener = _listening("127.0.0.1", 0)

    async def main() -> int:
        accepted: asyncio.Future[int] = asyncio.get_running_loop().create_future()

        def on_connection(_: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            sock = writer.get_extra_info("socket")
            accepted.set_result(sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY))
            writer.close()

        server = await asyncio.start_server(on_connection, sock=listener)  # as uvicorn serves it
        async with server:
            _, writer = await asyncio.open_connection(*listener.getsockname()[:2])
            nodelay = await asyncio.wait_for(accepted, 10)
            writer.close()
            return nodelay

    assert asyncio.run(main()) != 0


def test_cli_gateway_serves_until_interrupted_and_closes_its_runs(tmp_path: Path) -> None:
    path = tmp_path / "gw.yaml"
    path.write_text(config_text())
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    db = tmp_path / "j.db"
    proc = subprocess.Popen(
        [sys.executable, "-m", "trilemma", "gateway", str(path), "--port", str(port),
         "--journal", str(db)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=dict(os.environ),
        preexec_fn=interruptible,
    )  # fmt: skip
    try:
        url = f"http://127.0.0.1:{port}/v1"
        deadline = time.monotonic() + 30
        while True:
            try:
                client(url).models.list()
                break
            except openai.APIConnectionError:
                assert proc.poll() is None, proc.stderr.read() if proc.stderr else ""
                assert time.monotonic() < deadline, "the gateway did not answer"
                time.sleep(0.1)
        client(url).chat.completions.create(
            model="sim", messages=[{"role": "user", "content": "q"}]
        )
    finally:
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=30)
    assert proc.returncode == 0, err
    assert f"http://127.0.0.1:{port}/v1" in out
    run = Journal(db).run(run_id_of("team-a"))
    assert run is not None and run["status"] == "ok" and run["cost_usd"] == pytest.approx(0.01)


def test_doctor_tells_a_gateway_run_left_open_from_an_interrupted_workflow(
    cli, tmp_path: Path
) -> None:
    db = tmp_path / "j.db"
    Journal(db).create_run({
        "run_id": run_id_of("team-a"), "spec_source": "gw.yaml", "spec_json": "{}",
        "spec_hash": "", "inputs_json": "{}", "seed": None, "max_cost_usd": 1.0,
        "deadline_at": None, "status": "running", "started_at": time.time(),
        "predicted_json": None, "pid": 2**22 + 12345,  # above Linux's pid_max: never alive
    })  # fmt: skip
    out = cli("doctor", "--journal", db).out
    assert "gateway run gateway-team-a stopped without closing" in out
    assert "trilemma resume" not in out


def test_a_cached_gateway_answers_repeats_free_and_keeps_tenants_apart(tmp_path: Path) -> None:
    ask = [{"role": "user", "content": "What is the capital of France?"}]
    with ScriptedServer([Reply("Paris", prompt_tokens=12, completion_tokens=3),
                         Reply("Paris, for team b", prompt_tokens=12, completion_tokens=5),
                         Reply("Paris, longer", prompt_tokens=12, completion_tokens=9)]) as up:  # fmt: skip
        text = config_text(up.url).replace("team-b: {key_env: TRILEMMA_GW_B, models: [sim]}",
                                           "team-b: {key_env: TRILEMMA_GW_B}") + "cache: true\n"  # fmt: skip
        with serving(tmp_path, text) as (url, _):
            first = client(url).chat.completions.with_raw_response.create(model="small", messages=ask)  # type: ignore[arg-type]
            again = client(url).chat.completions.with_raw_response.create(model="small", messages=ask)  # type: ignore[arg-type]
            other = client(url, "sk-team-b-secret").chat.completions.create(model="small", messages=ask)  # type: ignore[arg-type]
            longer = client(url).chat.completions.create(model="small", messages=ask, max_tokens=99)  # type: ignore[arg-type]
            spent = client(url).get("/budget", cast_to=object)["spent_usd"]  # type: ignore[index]
        sent = len(up.requests)
    hit = again.parse()
    assert hit.choices[0].message.content == "Paris" and hit.usage is not None
    assert hit.usage.total_tokens == 15  # the tokens of the answer it repeats
    assert again.headers["x-trilemma-cache"] == "hit" and float(again.headers["x-trilemma-cost-usd"]) == 0
    assert "x-trilemma-cache" not in first.headers
    assert other.choices[0].message.content == "Paris, for team b"  # a tenant never sees another's
    assert longer.choices[0].message.content == "Paris, longer"  # other settings, another answer
    assert sent == 3
    assert spent == pytest.approx((12 + 2 * 3) / 1e6 + (12 + 2 * 9) / 1e6)  # the hit billed nothing
    ledger = Journal(tmp_path / "j.db").calls(run_id_of("team-a"))
    assert [(c["role"], c["cache_hit"], c["cost_usd"] > 0) for c in ledger] == [
        ("gateway", 0, True), ("cache", 1, False), ("gateway", 0, True)]  # fmt: skip


def test_sampling_settings_are_passed_on_and_key_the_cache(tmp_path: Path) -> None:
    """top_p, seed, penalties and user reach the endpoint as given (they had been dropped
    without a word); an answer cached for one seed is not served for another."""
    ask = [{"role": "user", "content": "Pick a number."}]
    given = {"top_p": 0.5, "seed": 42, "presence_penalty": -0.5, "frequency_penalty": 1,
             "user": "alice", "logit_bias": {"50256": -100}, "reasoning_effort": "low"}  # fmt: skip
    with ScriptedServer([Reply("7"), Reply("3")]) as up:
        with serving(tmp_path, config_text(up.url) + "cache: true\n") as (url, _):
            c = client(url)
            first = c.chat.completions.create(model="small", messages=ask, **given)  # type: ignore[arg-type]
            again = c.chat.completions.with_raw_response.create(model="small", messages=ask, **given)  # type: ignore[arg-type]
            other = c.chat.completions.create(model="small", messages=ask, **{**given, "seed": 43})  # type: ignore[arg-type]
        sent = [r["json"] for r in up.requests]
    assert len(sent) == 2 and all(body[k] == v for body in sent[:1] for k, v in given.items())
    assert sent[1]["seed"] == 43
    assert first.choices[0].message.content == "7" and again.headers["x-trilemma-cache"] == "hit"
    assert other.choices[0].message.content == "3"  # another seed, another answer


def test_settings_that_ask_for_nothing_more_are_taken_and_not_sent(tmp_path: Path) -> None:
    """store false, the default tier, empty metadata and a null of any field ask for what the
    gateway does anyway: answered, and none of them reaches the endpoint."""
    ask = [{"role": "user", "content": "q"}]
    idle = {"store": False, "service_tier": "auto", "metadata": {}, "parallel_tool_calls": True,
            "modalities": ["text"], "top_logprobs": 0, "function_call": "none", "top_k": None}
    with ScriptedServer([Reply("fine")]) as up:
        with serving(tmp_path, config_text(up.url)) as (url, _):
            ok = client(url).chat.completions.create(model="small", messages=ask,  # type: ignore[arg-type]
                                                     extra_body=idle)  # fmt: skip
        (sent,) = [r["json"] for r in up.requests]
    assert ok.choices[0].message.content == "fine"
    assert not set(idle) & set(sent), sent


def test_a_second_gateway_on_a_live_gateways_keys_is_refused(cli, tmp_path: Path) -> None:
    """Two processes would each hold a key's whole ceiling: the second one does not start."""
    db = tmp_path / "j.db"
    other = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        Journal(db).create_run({
            "run_id": run_id_of("team-b"), "spec_source": "gw.yaml", "spec_json": "{}",
            "spec_hash": "", "inputs_json": "{}", "seed": None, "max_cost_usd": 1.0,
            "deadline_at": None, "status": "running", "started_at": time.time(),
            "predicted_json": None, "pid": other.pid,
        })  # fmt: skip
        path = tmp_path / "gw.yaml"
        path.write_text(config_text())
        conf = load_gateway_config(path)
        with pytest.raises(UsageError, match="already served"):  # before the CLI would serve
            Gateway(conf, secrets_of(conf, str(path)), Journal(db), str(path))
        Gateway(conf, secrets_of(conf, str(path)), Journal(db), str(path), force=True)
        r = cli("gateway", path, "--journal", db, "--port", "9")
        assert r.code == 2 and len(r.err.strip().splitlines()) == 1
        assert f"key 'team-b' is already served from {db} by another gateway (process {other.pid})" in r.err
    finally:
        other.kill()
        other.wait()
    with serving(tmp_path, config_text()) as (url, _):  # its process gone, the key is free again
        ok = client(url, "sk-team-b-secret").chat.completions.create(
            model="sim", messages=[{"role": "user", "content": "q"}]
        )
    assert ok.choices[0].message.content == "answer from sim"


# ---------------------------------------------------------------------- streaming

ASK = [{"role": "user", "content": "What is the capital of France?"}]


def streamed(url: str, model: str = "small", key: str = SECRET, **kw: Any) -> tuple[list[str], Any]:
    """A streamed request: its text pieces and its usage chunk (None if there was none)."""
    pieces, usage = [], None
    with client(url, key).chat.completions.create(
        model=model, messages=ASK, stream=True, stream_options={"include_usage": True}, **kw  # type: ignore[arg-type]
    ) as stream:
        for chunk in stream:
            if chunk.usage is not None:
                usage = chunk.usage
            pieces += [c.delta.content for c in chunk.choices if c.delta.content]
    return pieces, usage


def wait_for_row(db: Path, key: str) -> dict[str, Any]:
    """The key's one ledger row once it has finished (a stream is billed after it ends)."""
    deadline = time.monotonic() + 15
    while True:
        rows = Journal(db).calls(run_id_of(key))
        if rows and rows[-1]["state"] == "finished":
            return rows[-1]
        assert time.monotonic() < deadline, rows
        time.sleep(0.05)


def test_a_streamed_answer_is_relayed_piece_by_piece_and_billed_from_usage(tmp_path: Path) -> None:
    reply = Reply("The capital of France is Paris.", prompt_tokens=12, completion_tokens=20)
    with ScriptedServer([reply]) as up, serving(tmp_path, config_text(up.url)) as (url, _):
        pieces, usage = streamed(url)
        budget = client(url).get("/budget", cast_to=object)
        sent = up.requests[0]["json"]
    assert "".join(pieces) == "The capital of France is Paris." and len(pieces) == 6
    assert usage is not None and (usage.prompt_tokens, usage.completion_tokens) == (12, 20)
    assert sent["stream"] is True and sent["stream_options"] == {"include_usage": True}
    cost = (12 * 1.0 + 20 * 2.0) / 1e6
    assert budget["spent_usd"] == pytest.approx(cost) and budget["reserved_usd"] == 0  # type: ignore[index]
    row = wait_for_row(tmp_path / "j.db", "team-a")
    assert (row["outcome"], row["prompt_tokens"], row["completion_tokens"]) == ("ok", 12, 20)
    assert row["cost_usd"] == pytest.approx(cost) and row["response"] == "The capital of France is Paris."


def test_a_stream_without_usage_is_billed_at_its_reservation_and_the_ledger_says_why(
    tmp_path: Path, cli
) -> None:
    """llama.cpp's server sends no usage in a stream, whatever stream_options asks: the
    answer is billed at its worst case, and the ledger says so instead of a bare "ok"."""
    reply = Reply("Paris.", stream_usage=False)
    with ScriptedServer([reply]) as up, serving(tmp_path, config_text(up.url)) as (url, _):
        pieces, usage = streamed(url)
        row = wait_for_row(tmp_path / "j.db", "team-a")
    assert pieces == ["Paris."] and usage is None  # nothing made up for the client either
    assert row["outcome"] == "ok" and row["prompt_tokens"] is None
    assert row["cost_usd"] == pytest.approx(row["reserved_usd"]) and row["cost_usd"] > 0
    assert row["error"].startswith("the endpoint reported no usage"), row["error"]
    shown = cli("ledger", run_id_of("team-a"), "--journal", tmp_path / "j.db").out
    assert "no usage: billed at its reservation" in " ".join(shown.split())


def test_a_streamed_answer_cut_at_max_tokens_ends_as_cut(tmp_path: Path) -> None:
    """The upstream's stream ends with finish_reason length: so does the relayed one, and
    the ledger keeps it."""
    script = [Reply("three cut words", finish_reason="length")]
    with ScriptedServer(script) as up, serving(tmp_path, config_text(up.url)) as (url, _):
        reasons = []
        with client(url).chat.completions.create(
            model="small", messages=ASK, stream=True, max_tokens=3  # type: ignore[arg-type]
        ) as stream:
            for chunk in stream:
                reasons += [c.finish_reason for c in chunk.choices if c.finish_reason]
    assert reasons == ["length"]
    row = wait_for_row(tmp_path / "j.db", "team-a")
    assert row["finish_reason"] == "length" and row["outcome"] == "ok"


def test_a_simulated_model_streams_its_answer_whole(tmp_path: Path) -> None:
    with serving(tmp_path, config_text()) as (url, _):
        pieces, usage = streamed(url, "sim", "sk-team-b-secret")
    assert pieces == ["answer from sim"] and usage is not None
    assert wait_for_row(tmp_path / "j.db", "team-b")["cost_usd"] == pytest.approx(0.01)


def test_a_stream_past_the_ceiling_is_refused_before_anything_is_sent(tmp_path: Path) -> None:
    text = config_text(ceiling=None).replace("{key_env: TRILEMMA_GW_B,",
                                              "{key_env: TRILEMMA_GW_B, max_cost_usd: 0.025,")  # fmt: skip
    with serving(tmp_path, text) as (url, _):
        streamed(url, "sim", "sk-team-b-secret")
        streamed(url, "sim", "sk-team-b-secret")
        with pytest.raises(openai.APIStatusError, match="exhausted") as err:
            streamed(url, "sim", "sk-team-b-secret")
    assert err.value.status_code == 402
    assert Journal(tmp_path / "j.db").spent(run_id_of("team-b")) == pytest.approx(0.02)


def test_an_upstream_429_on_a_stream_is_an_error_before_the_stream(tmp_path: Path) -> None:
    limited = ScriptedServer([Reply(status=429, headers={"Retry-After": "2"})])
    with limited as up, serving(tmp_path, config_text(up.url)) as (url, gw):
        with pytest.raises(openai.RateLimitError) as err:
            streamed(url)
        assert err.value.response.headers["retry-after"] == "2"
        assert gw.budgets.guards["team-a"].spent == 0.0 and gw.budgets.guards["team-a"].reserved == 0.0
    assert wait_for_row(tmp_path / "j.db", "team-a")["outcome"] == "rate_limited"


def test_a_stream_cut_mid_answer_ends_in_an_error_and_is_billed_at_its_reservation(
    tmp_path: Path,
) -> None:
    cut = Reply("one two three four five", cut_after=2)
    with ScriptedServer([cut]) as up, serving(tmp_path, config_text(up.url)) as (url, gw):
        got: list[str] = []
        stream = client(url).chat.completions.create(model="small", messages=ASK, stream=True)  # type: ignore[arg-type]
        with pytest.raises(openai.APIError, match="stream ended before"), stream as s:
            for chunk in s:
                got += [c.delta.content for c in chunk.choices if c.delta.content]
        row = wait_for_row(tmp_path / "j.db", "team-a")
        held = gw.budgets.guards["team-a"]
        assert (held.spent, held.reserved) == (pytest.approx(row["reserved_usd"]), 0.0)
    assert got == ["one", " two"]
    assert row["outcome"] == "transient" and row["cost_usd"] == pytest.approx(row["reserved_usd"])
    assert row["response"] == "one two" and "after 2 pieces" in row["error"]


def test_a_client_leaving_mid_stream_is_billed_at_the_reservation(tmp_path: Path) -> None:
    slow = Reply(" ".join(["word"] * 30), piece_delay_s=0.1)
    with ScriptedServer([slow]) as up, serving(tmp_path, config_text(up.url)) as (url, gw):
        with client(url).chat.completions.create(model="small", messages=ASK, stream=True) as s:  # type: ignore[arg-type]
            first = next(iter(s))  # one piece, then the client hangs up
        row = wait_for_row(tmp_path / "j.db", "team-a")
        held = gw.budgets.guards["team-a"]
        assert (held.spent, held.reserved) == (pytest.approx(row["reserved_usd"]), 0.0)
    assert first.choices[0].delta.content == "word"
    assert row["outcome"] == "cancelled" and row["cost_usd"] == pytest.approx(row["reserved_usd"])


# ---------------------------------------------------------------------- rate limits


def test_a_key_over_its_requests_a_minute_gets_a_429_and_nothing_is_sent(tmp_path: Path) -> None:
    text = config_text().replace("models: [sim]}", "models: [sim], rpm: 3}")
    with serving(tmp_path, text) as (url, _):
        codes, after = [], None
        for _ in range(5):
            try:
                client(url, "sk-team-b-secret").chat.completions.create(model="sim", messages=ASK)  # type: ignore[arg-type]
                codes.append(200)
            except openai.RateLimitError as exc:
                codes.append(429)
                after, says = exc.response.headers["retry-after"], str(exc)
    assert codes == [200, 200, 200, 429, 429]
    assert after is not None and 1 <= int(after) <= 20  # a request comes back every 20 s
    assert "key 'team-b' is over its rate limit (rpm 3)" in says
    assert len(Journal(tmp_path / "j.db").calls(run_id_of("team-b"))) == 3


def test_tokens_a_minute_count_max_tokens_until_the_answer_says_what_it_used(
    tmp_path: Path,
) -> None:
    # tpm 700; each request holds its prompt and max_tokens 300 until it answers. Answers that
    # used 10 tokens give the rest back, so five fit in a row; answers that used 305 give
    # nothing back, so the third must wait.
    def ask(used: int, n: int, folder: str) -> list[tuple[int, str, str]]:
        """Status, Retry-After and message of ``n`` requests in a row."""
        (tmp_path / folder).mkdir()
        replies = [Reply("a", prompt_tokens=5, completion_tokens=used)] * n
        text = config_text().replace("TRILEMMA_GW_A, max_cost_usd: 1.0", "TRILEMMA_GW_A, tpm: 700")
        out = []
        with ScriptedServer(replies) as up, serving(
            tmp_path / folder, text.replace("http://127.0.0.1:9/v1", up.url)
        ) as (url, _), client(url) as c:
            for _ in range(n):
                try:
                    c.chat.completions.create(model="small", messages=ASK, max_tokens=300)  # type: ignore[arg-type]
                    out.append((200, "", ""))
                except openai.RateLimitError as exc:
                    out.append((429, exc.response.headers["retry-after"], str(exc)))
        return out

    assert [code for code, _, _ in ask(5, 5, "short")] == [200] * 5
    *ok, (code, after, says) = ask(300, 3, "long")
    assert [c for c, _, _ in ok] == [200, 200] and code == 429
    assert "over its rate limit (tpm 700)" in says and 10 <= int(after) <= 30


# ---------------------------------------------------------------------- fallbacks


def fallback_config(upstream: str, extra: str = "") -> str:
    return config_text(upstream) + "fallbacks: {small: [sim]}\n" + extra


def test_a_failed_upstream_falls_back_and_each_try_is_billed_on_its_own(tmp_path: Path) -> None:
    with ScriptedServer([Reply(status=500)]) as up, serving(tmp_path, fallback_config(up.url)) as (url, _):
        raw = client(url).chat.completions.with_raw_response.create(model="small", messages=ASK)  # type: ignore[arg-type]
    answer = raw.parse()
    assert answer.model == "sim" and answer.choices[0].message.content == "answer from sim"
    assert raw.headers["x-trilemma-fallback"] == "sim"
    rows = Journal(tmp_path / "j.db").calls(run_id_of("team-a"))
    assert [(r["step_id"], r["model"], r["attempt"], r["role"], r["outcome"], r["cost_usd"])
            for r in rows] == [("small", "small", 1, "gateway", "transient", 0.0),
                               ("small", "sim", 2, "fallback", "ok", 0.01)]  # fmt: skip


def failure(url: str, model: str = "small") -> tuple[int, str]:
    """The status and message of a request that fails (its response closed)."""
    with client(url) as c:
        try:
            c.chat.completions.create(model=model, messages=ASK)  # type: ignore[arg-type]
        except openai.APIStatusError as exc:
            return exc.status_code, str(exc)
    raise AssertionError("the request did not fail")


def test_a_fatal_error_or_a_fallback_the_key_may_not_call_is_not_tried(tmp_path: Path) -> None:
    text = fallback_config("{url}").replace("TRILEMMA_GW_A, max_cost_usd: 1.0",
                                            "TRILEMMA_GW_A, max_cost_usd: 1.0, models: [small]")  # fmt: skip
    with ScriptedServer([Reply(status=500)]) as up, serving(
        tmp_path, text.replace("{url}", up.url)
    ) as (url, _):
        not_allowed = failure(url)
    assert not_allowed[0] == 502  # team-a may not call sim: the 500 passes on
    (tmp_path / "b").mkdir()
    with ScriptedServer([Reply(status=400)]) as up, serving(tmp_path / "b", fallback_config(up.url)) as (url, _):
        fatal = failure(url)
    assert fatal[0] == 502 and "bad request" in fatal[1]  # another model cannot fix it
    assert len(Journal(tmp_path / "b" / "j.db").calls(run_id_of("team-a"))) == 1


def test_a_model_failing_again_and_again_is_rested_and_its_fallback_answers_at_once(
    tmp_path: Path,
) -> None:
    rule = "health: {failures: 2, cooldown_s: 60}\n"
    with ScriptedServer([Reply(status=503)] * 5) as up:
        with serving(tmp_path, fallback_config(up.url, rule)) as (url, _), client(url) as c:
            models = [c.chat.completions.create(model="small", messages=ASK).model  # type: ignore[arg-type]
                      for _ in range(4)]  # fmt: skip
        sent = len(up.requests)
    assert models == ["sim"] * 4
    assert sent == 2  # after two failures in a row, small is rested: no third try upstream
    rows = Journal(tmp_path / "j.db").calls(run_id_of("team-a"))
    assert [(r["model"], r["role"], r["outcome"]) for r in rows] == [
        ("small", "gateway", "transient"), ("sim", "fallback", "ok")] * 2 + [
        ("sim", "fallback", "ok")] * 2  # fmt: skip


@pytest.mark.parametrize(("advice", "sent"), [({"Retry-After": "30"}, 1), ({}, 3)],
                         ids=["advised", "not-advised"])  # fmt: skip
def test_an_upstream_saying_when_to_come_back_rests_its_model_at_once(
    tmp_path: Path, advice: dict[str, str], sent: int
) -> None:
    """Five failures rest a model; a 503 that says "come back in 30 s" rests it at the first:
    the next requests go straight to the fallback. Without the advice all three are tried."""
    rule = "health: {failures: 5, cooldown_s: 60}\n"
    with ScriptedServer([Reply(status=503, headers=advice)] * 3) as up:
        with serving(tmp_path, fallback_config(up.url, rule)) as (url, _), client(url) as c:
            models = [c.chat.completions.create(model="small", messages=ASK).model  # type: ignore[arg-type]
                      for _ in range(3)]  # fmt: skip
        assert models == ["sim"] * 3 and len(up.requests) == sent


def test_a_stream_falls_back_before_its_first_piece(tmp_path: Path) -> None:
    with ScriptedServer([Reply(status=503)]) as up, serving(tmp_path, fallback_config(up.url)) as (url, _):
        pieces, usage = streamed(url)
    assert pieces == ["answer from sim"] and usage is not None


@pytest.mark.parametrize(
    ("fallbacks", "field", "says"),
    [
        ("{small: [simm]}", "fallbacks.small[0]", "'simm' is not another model"),
        ("{small: [small]}", "fallbacks.small[0]", "'small' is not another model"),
        ("{smal: [sim]}", "fallbacks.smal", "unknown model 'smal'"),
    ],
)
def test_cli_gateway_bad_fallbacks_are_one_line(cli, tmp_path: Path, fallbacks, field, says) -> None:
    path = tmp_path / "gw.yaml"
    path.write_text(config_text() + f"fallbacks: {fallbacks}\n")
    r = cli("gateway", path, "--journal", tmp_path / "j.db")
    assert r.code == 2 and len(r.err.strip().splitlines()) == 1
    assert field in r.err and says in r.err


def test_workflow_runs_through_a_gateway_share_a_keys_ceiling_and_stop_as_budget_exhausted(
    tmp_path: Path,
) -> None:
    # A team ceiling over many runs: point the runs' profile at the gateway. The key has room
    # for two $0.01 calls; the run's third call is refused with 402 and the run stops.
    from trilemma import parse_workflow
    from trilemma.run.session import execute

    text = config_text(ceiling=None).replace("{key_env: TRILEMMA_GW_B,",
                                              "{key_env: TRILEMMA_GW_B, max_cost_usd: 0.025,")  # fmt: skip
    with serving(tmp_path, text) as (url, _):
        spec = f"""
version: 1
concurrency: 1
models:
  team: {{provider: openai, base_url: "{url}", model: sim, api_key_env: TRILEMMA_GW_B,
          usd_per_call: 0.01, latency_s: 0.2, p_ok: 1.0}}
steps:
""" + "".join(f"  - {{id: s{i}, model: team, retries: 3}}\n" for i in range(5))
        r = execute(parse_workflow(spec), journal=Journal(tmp_path / "run.db"), seed=1)
    assert r.status == "budget_exhausted" and len(r.outputs) == 2
    assert "refused for money" in (r.error or "") and "budget of key 'team-b' exhausted" in r.error
    assert r.cost_usd == pytest.approx(0.02)
    assert Journal(tmp_path / "j.db").spent(run_id_of("team-b")) == pytest.approx(0.02)


def test_a_gateway_s_calls_calibrate_a_real_endpoint_s_profile(tmp_path: Path) -> None:
    """A key's run keeps the config of the gateway's first session, not of each session that
    answered its calls (the upstream may have moved since): its calls count toward the real
    endpoint's profile wherever that points, as before, while a workflow's runs of another
    endpoint are left out (tests/test_fit.py)."""
    from trilemma.experiments.fit import fit_model

    with ScriptedServer([Reply("hi", prompt_tokens=12, completion_tokens=20)] * 2) as up:
        with serving(tmp_path, config_text(up.url)) as (url, _):
            for q in ("a", "b"):
                client(url).chat.completions.create(
                    model="small", messages=[{"role": "user", "content": q}]
                )
            wait_for_row(tmp_path / "j.db", "team-a")
        served, upstream = load_gateway_config(tmp_path / "gateway.yaml").models["small"], up.url
    j = Journal(tmp_path / "j.db")
    fitted = fit_model(j, "small", served, None).fit
    assert fitted.sent == 2 and fitted.left_out == ()
    moved = served.model_copy(update={"base_url": "http://127.0.0.1:9/v1"})  # a later session's
    assert upstream != moved.base_url and fit_model(j, "small", moved, None).fit.sent == 2
