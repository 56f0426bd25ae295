"""An OpenAI-compatible gateway whose per-key spend ceilings cannot be overrun.

Clients call ``POST /v1/chat/completions`` with their key as the bearer token, as they
would call OpenAI. For each request the gateway:

1. reserves the call's worst case against the key's ceiling, the same reservation the
   executor makes (``max_tokens`` at the output price plus the prompt at the input price,
   or the per-call price). A request whose reservation would cross the ceiling is refused
   with 402 and never sent, so concurrent requests cannot together overrun the budget;
2. journals the call before sending it (when the upstream may bill);
3. forwards it to the model's endpoint, or the simulator, through trilemma's providers;
4. bills the usage the upstream reports, releases the rest of the hold, and records the
   call in the ledger.

With ``cache:`` in the config, a request the key has asked before (or, with
``{similarity: S}``, one alike enough) is answered from the journal first, billed nothing.

Each key's calls are a run in the journal, ``gateway-KEY``: ``trilemma ledger``,
``report`` and ``export`` read them, and a restarted gateway starts from what each key
has already spent. With ``shared: {redis: URL}`` the ceilings live in Redis instead of
the process, so several gateways (behind one load balancer, on one or many machines)
share them and still cannot together overrun one.

``stream: true`` relays the answer as server-sent events as it arrives. The worst case
was reserved before anything was sent, so a stream cannot overrun a ceiling either; it is
billed from the usage the upstream reports at its end, or at its reservation if it breaks
or its client leaves mid-answer (the tokens generated are then not known).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import logging
import math
import os
import secrets
import time
import uuid
from collections.abc import AsyncIterator, Callable, Coroutine, Mapping
from dataclasses import dataclass, replace
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse
from starlette.exceptions import HTTPException

from trilemma._proc import pid_alive
from trilemma.cache.keys import profile_settings
from trilemma.cache.lookup import Cache, Hit, Lookup
from trilemma.cache.semantic import Embedder, default_embedder
from trilemma.cache.shared import SharedCache
from trilemma.errors import (
    BudgetExhausted,
    JournalError,
    ProviderError,
    SetupError,
    UsageError,
)
from trilemma.gateway.config import GatewayConfig
from trilemma.gateway.health import LocalHealth, ModelHealth, RedisHealth
from trilemma.gateway.rates import KeyRates, LocalRates, RedisRates
from trilemma.gateway.wire import Chunks, after, completion_body, error, sse, upstream_error
from trilemma.journal.store import (
    GATEWAY_RUN,
    GROUP_COMMIT_S,
    Journal,
    JournalWriter,
    messages_json,
)
from trilemma.providers.base import (
    Message,
    Provider,
    StreamEnd,
    Usage,
    bill_note,
    cost_of,
    worst_case_cost,
)
from trilemma.providers.base import Request as CallRequest
from trilemma.run.budget import Reservation, SpendGuard
from trilemma.run.routes import Route
from trilemma.run.session import close_providers, providers_for
from trilemma.run.shared_budget import BudgetState, KeyBudgets, LocalBudgets, RedisBudgets
from trilemma.spec.load import not_text_at
from trilemma.spec.model import BYTES_PER_TOKEN

__all__ = ["Gateway", "create_app", "run_id_of"]

#: Largest request body accepted, in bytes.
MAX_BODY_BYTES = 4 * 1024 * 1024
#: What the gateway serves, for the message a request for anything else gets.
ROUTES = ("POST /v1/chat/completions", "GET /v1/models", "GET /v1/budget")


#: How often a gateway with ``keep_calls_days`` forgets its keys' old calls, in seconds.
KEEP_EVERY_S = 3600.0
_log = logging.getLogger(__name__)


def run_id_of(key: str) -> str:
    """The journal run that holds a key's calls."""
    return GATEWAY_RUN + key


class _Refused(Exception):
    """Internal: a request the gateway answers with an error before sending anything."""

    def __init__(self, response: JSONResponse) -> None:
        super().__init__()
        self.response = response


class Gateway:
    """The gateway's state: config, keys, one spend guard per key, providers, the journal."""

    def __init__(
        self,
        config: GatewayConfig,
        secrets_by_key: Mapping[str, str],
        journal: Journal,
        source: str = "<gateway>",
        providers: Mapping[str, Provider] | None = None,
        embedder: Embedder | None = None,
        force: bool = False,
    ) -> None:
        self.config = config
        if not force and config.shared is None:
            _refuse_a_second_gateway(config, journal)
        if embedder is None and config.similarity is not None:
            embedder = default_embedder()  # SetupError now, before serving, if the extra is missing
        self.embedder = embedder
        """Embeds prompts for a semantic cache (``cache: {similarity: S}``)."""
        self.journal = journal
        self.source = source
        self._digests = {_digest(s): k for k, s in secrets_by_key.items()}
        self._spent_before = {k: journal.spent(run_id_of(k)) for k in config.keys}
        self.budgets: KeyBudgets
        """Each key's ceiling: in this process, or in Redis shared with other gateways."""
        if config.shared is None:
            self.budgets = LocalBudgets({
                k: SpendGuard(c.max_cost_usd, spent=self._spent_before[k])
                for k, c in config.keys.items()
            })  # fmt: skip
        else:
            longest = max(m.timeout_s for m in config.models.values())
            self.budgets = RedisBudgets(
                config.shared.redis, {k: c.max_cost_usd for k, c in config.keys.items()},
                prefix=config.shared.prefix, hold_ttl_s=2 * longest + 60,
            )  # fmt: skip
        limits = {k: (c.rpm, c.tpm) for k, c in config.keys.items()}
        self.rates: KeyRates = (
            RedisRates(self.budgets, limits) if isinstance(self.budgets, RedisBudgets)
            else LocalRates(limits)
        )  # fmt: skip
        """Each key's requests and tokens a minute."""
        rule = config.health
        self.health: ModelHealth = (
            RedisHealth(self.budgets, rule.failures, rule.cooldown_s)
            if isinstance(self.budgets, RedisBudgets)
            else LocalHealth(rule.failures, rule.cooldown_s)
        )  # fmt: skip
        """Which models with fallbacks are resting after repeated failures."""
        self.providers = providers_for(config.models, overrides=providers)
        self.routes = {n: Route.of(m, self.providers[n]) for n, m in config.models.items()}
        self.writer: JournalWriter | None = None
        self.cache: Cache | None = None
        self._keeping: asyncio.Task[None] | None = None

    # ------------------------------------------------------------------ lifecycle

    async def start(self) -> None:
        """Open each key's run in the journal and the writer on this event loop."""
        if isinstance(self.budgets, RedisBudgets):  # seeds each key's spend the first time
            await self.budgets.connect(self._spent_before)
        text = self.config.model_dump_json()  # key_env names only: secrets are never in it
        now = time.time()
        for key, k in self.config.keys.items():
            run_id = run_id_of(key)
            if self.journal.run(run_id) is None:
                self.journal.create_run({
                    "run_id": run_id, "spec_source": self.source, "spec_json": text,
                    "spec_hash": hashlib.sha256(text.encode()).hexdigest(), "inputs_json": "{}",
                    "seed": None, "max_cost_usd": k.max_cost_usd, "deadline_at": None,
                    "status": "running", "started_at": now, "predicted_json": None,
                    "pid": os.getpid(), "tenant": key,
                })  # fmt: skip
            else:
                self.journal.update_run(run_id, status="running", pid=os.getpid(), tenant=key,
                                        max_cost_usd=k.max_cost_usd, finished_at=None)  # fmt: skip
        self.writer = JournalWriter(self.journal, GROUP_COMMIT_S)
        if self.config.cache:  # with shared:, exact answers are shared by the gateways too
            shared = self.config.shared
            tier = SharedCache(shared.redis, prefix=f"{shared.prefix}:cache") if shared else None
            self.cache = Cache(self.writer, self.embedder, tier)
        if self.config.keep_calls_days is not None:
            self._keeping = asyncio.create_task(self._keep_calls(self.config.keep_calls_days))

    async def _keep_calls(self, days: float) -> None:
        """Forget the keys' calls older than ``days`` now and every :data:`KEEP_EVERY_S`, on
        a connection of a worker thread's own (their count and bill stay on the keys' runs).
        A journal another process holds for longer than its busy timeout is tried again
        next time."""
        runs = [run_id_of(k) for k in self.config.keys]
        path = self.journal.path

        def once() -> int:
            journal = Journal(path)
            try:
                return journal.forget_calls(runs, time.time() - days * 86_400)
            finally:
                journal.close()

        while True:
            try:
                await asyncio.to_thread(once)
            except JournalError as exc:
                _log.warning("keep_calls_days: could not forget old calls (%s); trying again in "
                             "%g s", exc, KEEP_EVERY_S)  # fmt: skip
            await asyncio.sleep(KEEP_EVERY_S)

    async def stop(self) -> None:
        """Commit what is queued, close each key's run with its totals, close the providers."""
        if self._keeping is not None:
            self._keeping.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._keeping
            self._keeping = None
        if self.writer is not None:
            await self.writer.aclose()
            self.writer = None
        if self.cache is not None and self.cache.shared is not None:
            await self.cache.shared.aclose()
        await self.budgets.aclose()
        for key in self.config.keys:
            run_id = run_id_of(key)
            cost, calls = self.journal.totals(run_id)
            self.journal.update_run(run_id, status="ok", finished_at=time.time(), cost_usd=cost,
                                    calls=calls)  # fmt: skip
        await close_providers(self.providers)

    # ------------------------------------------------------------------ requests

    def key_of(self, authorization: str | None) -> str:
        """The key a bearer token belongs to (compared in constant time)."""
        token = (authorization or "").removeprefix("Bearer ").strip()
        digest = _digest(token)
        for known, key in self._digests.items():
            if secrets.compare_digest(known, digest):
                return key
        raise _Refused(error(401, "Incorrect API key provided for the trilemma gateway",
                              "invalid_request_error", "invalid_api_key"))  # fmt: skip

    async def budget(self, key: str) -> dict[str, Any]:
        """A key's ceiling, spend, holds in flight, refusals and models."""
        b = await self.budgets.state(key)
        remaining = b.remaining
        return {"key": key, "max_cost_usd": b.ceiling, "spent_usd": round(b.spent, 12),
                "reserved_usd": round(b.reserved, 12),
                "remaining_usd": None if remaining is None else round(remaining, 12),
                "refused": b.refused, "models": self.config.allowed(key),
                "shared": self.config.shared is not None}  # fmt: skip

    async def chat(self, key: str, body: Any) -> Response:
        """One chat completion for ``key``: from the cache, or reserve, journal, forward, bill.

        With ``stream: true`` the answer is relayed as server-sent events as it arrives;
        the reservation was made before anything was sent, so a stream cannot overrun either.
        """
        model, request, stream = self._parse(key, body)
        profile = self.config.models[model]
        lookup = settings = None
        if self.cache is not None:  # a key is a tenant: its cache is its own
            settings = ["gateway", *profile_settings(profile, model), request.max_tokens,
                        request.temperature, list(request.stop),
                        *([dict(request.extra)] if request.extra else [])]  # fmt: skip
            lookup = await self.cache.lookup(settings, request.messages, self.config.similarity, key)
            if lookup.hit is not None:
                return await self._served(key, model, request, lookup.hit, stream)
        tokens = request.prompt_bytes / BYTES_PER_TOKEN + request.max_tokens  # tpm's, till answered
        wait = await self.rates.take(key, tokens)
        if wait:
            rpm, tpm = self.rates.limits[key]
            limits = ", ".join(f"{n} {v}" for n, v in (("rpm", rpm), ("tpm", tpm)) if v)
            return error(429, f"key {key!r} is over its rate limit ({limits}); retry in "
                               f"{math.ceil(wait)} s; nothing was sent",
                          "rate_limit_error", "rate_limit_exceeded",
                          {"Retry-After": str(math.ceil(wait))})  # fmt: skip
        ladder = await self._ladder(key, model)
        for attempt, served_by in enumerate(ladder, 1):
            if served_by != model:  # a fallback: its own request, and not the cache's answer
                request = self._request_for(served_by, request, attempt)
                settings = lookup = None
            outcome = await self._forward(key, model, served_by, attempt, request, stream,
                                          settings, lookup, tokens)  # fmt: skip
            if served_by in self.config.fallbacks:  # only a model with fallbacks may rest
                failed = isinstance(outcome, ProviderError) and outcome.retryable
                advice = getattr(outcome, "retry_after", None) if failed else None
                await _quietly(self.health.record(served_by, failed, advice))
            if not (isinstance(outcome, ProviderError) and outcome.retryable):
                break
        if isinstance(outcome, ProviderError) or outcome.status_code >= 400:
            await _quietly(self.rates.give_back(key, tokens))  # no answer used a token
        return upstream_error(outcome) if isinstance(outcome, ProviderError) else outcome

    async def _forward(
        self, key: str, model: str, served_by: str, attempt: int, request: CallRequest,
        stream: _StreamAsk | None, settings: list[Any] | None, lookup: Lookup | None,
        tokens: float,
    ) -> Response | ProviderError:  # fmt: skip
        """Reserve, journal and send one attempt on ``served_by``; the response, or the error
        that a fallback may yet answer (its hold released, its ledger row closed)."""
        profile = self.config.models[served_by]
        try:
            hold = await self.budgets.reserve(key, worst_case_cost(profile, request))
        except SetupError as exc:  # the store is gone: refuse, never spend unguarded
            return error(503, f"{exc}; nothing was sent", "api_error", "budget_store_unavailable")
        except BudgetExhausted as exc:
            return error(402, f"budget of key {key!r} exhausted: {exc}", "insufficient_quota",
                          "budget_exceeded")  # fmt: skip
        assert self.writer is not None, "the gateway was not started"
        call = _Call(key, served_by, request, hold, self.routes[served_by], settings, lookup,
                     tokens)  # fmt: skip
        route = call.route
        row = {"run_id": run_id_of(key), "step_id": model, "attempt": attempt, "call": 1,
               "role": "gateway" if served_by == model else "fallback", "model": served_by,
               "idempotency_key": request.idempotency_key, "reserved_usd": hold.amount,
               "request_json": messages_json(request.messages), "started_at": time.time()}  # fmt: skip
        try:
            if route.limited:
                await route.acquire(request)
            try:
                if route.external:  # it may bill: journaled before it is sent
                    await self.writer.write("call_started", row)
                else:
                    self.writer.defer("call_started", row)
                if stream is None:
                    completion = await route.complete(request)
                else:  # an error before the first piece is answered as a plain call's is
                    started = time.perf_counter()
                    pieces = route.stream(request)
                    first = await anext(pieces)
            except BaseException:
                route.release()
                raise
        except ProviderError as exc:
            await _quietly(self.budgets.release(key, hold))
            self._finished(request.idempotency_key, {"outcome": exc.kind, "error": str(exc)[:500],
                                                     "cost_usd": 0.0})  # fmt: skip
            return exc
        except BaseException:
            await _quietly(self.budgets.release(key, hold))
            self._finished(request.idempotency_key, {"outcome": "cancelled", "cost_usd": None,
                                                     "error": "the request was cancelled"})  # fmt: skip
            raise
        headers = {} if served_by == model else {"x-trilemma-fallback": served_by}
        if stream is not None:
            # Started here, so that its cleanup (the bill, the slot) runs even if the response
            # is never sent: a started generator is closed when it is dropped.
            relay = self._relay(call, first, pieces, stream, started)
            head = await anext(relay)
            return StreamingResponse(
                after(head, relay), media_type="text/event-stream",
                headers={**headers, "x-trilemma-reserved-usd": f"{hold.amount:.10f}"},
            )  # fmt: skip
        route.release()
        u = completion.usage
        cost, state = await self._bill(call, completion.text, u, completion.latency_s,
                                       completion.finish_reason)  # fmt: skip
        return self._answer(served_by, state, completion.text, u,
                            {**headers, "x-trilemma-cost-usd": f"{cost:.10f}"},
                            completion.finish_reason)  # fmt: skip

    async def _ladder(self, key: str, model: str) -> list[str]:
        """The model asked for, then its fallbacks this key may call; those resting after
        repeated failures are skipped (unless every one of them is)."""
        fallbacks = self.config.fallbacks.get(model)
        if not fallbacks:
            return [model]
        allowed = set(self.config.allowed(key))
        ladder = [model, *(m for m in fallbacks if m in allowed)]
        resting = await self.health.resting(ladder)
        return [m for m in ladder if m not in resting] or ladder

    def _request_for(self, model: str, asked: CallRequest, attempt: int) -> CallRequest:
        """The request as a fallback model receives it: its own name and timeout, a new key."""
        profile = self.config.models[model]
        call_id = f"{asked.idempotency_key.rsplit('~', 1)[0]}~{attempt}"
        return replace(asked, model=model, timeout_s=profile.timeout_s, idempotency_key=call_id,
                       call_key=call_id, p_ok=profile.p_ok, sim_ok=f"answer from {model}",
                       sim_bad=f"wrong answer from {model}")  # fmt: skip

    async def _bill(
        self, call: _Call, text: str, usage: Usage, latency_s: float,
        finish_reason: str | None = None,
    ) -> tuple[float, BudgetState | None]:  # fmt: skip
        """An answered call: settle its hold at what it cost, journal it (with why the answer
        ended, where the upstream said), cache it."""
        profile = self.config.models[call.model]
        cost = cost_of(profile, usage, call.hold.amount)
        try:
            state: BudgetState | None = await self.budgets.settle(call.key, call.hold, cost)
        except SetupError:  # the shared store is gone: the hold lapses into its worst case
            state = None
        self._finished(call.request.idempotency_key, {
            "outcome": "ok", "prompt_tokens": usage.prompt_tokens,
            "completion_tokens": usage.completion_tokens, "cached_tokens": usage.cached_tokens,
            "cost_usd": cost, "finish_reason": finish_reason,
            "latency_s": latency_s, "response": text,
            "error": bill_note(profile, usage, call.hold.amount, cost),
        })  # fmt: skip
        if usage.prompt_tokens is not None and usage.completion_tokens is not None:
            unused = call.tokens - usage.prompt_tokens - usage.completion_tokens
            if unused > 0:
                await _quietly(self.rates.give_back(call.key, unused))
        if self.cache is not None and call.lookup is not None and call.settings is not None:
            self.cache.store(call.settings, call.request.messages, text, call.model,
                             call.lookup.vector, usage.prompt_tokens, usage.completion_tokens,
                             call.key)  # fmt: skip
        return cost, state

    async def _relay(
        self, call: _Call, first: str | StreamEnd, pieces: AsyncIterator[str | StreamEnd],
        stream: _StreamAsk, started: float,
    ) -> AsyncIterator[str]:  # fmt: skip
        """The upstream's pieces as server-sent events, then the bill.

        A stream that breaks, or whose client goes away, after the upstream began to answer
        is billed at its reservation: the tokens the upstream generated are not known.
        """
        chunk = Chunks(call.model)
        parts: list[str] = []
        end: StreamEnd | None = None
        broken: str | None = "the client went away during the stream"
        kind = "cancelled"
        try:
            item: str | StreamEnd | None = first
            while item is not None:
                if isinstance(item, StreamEnd):
                    end = item
                elif item:
                    parts.append(item)
                    yield chunk.piece(item)
                item = await anext(pieces, None)
            yield chunk.finish(end.finish_reason if end is not None else None)
            if stream.include_usage and end is not None:
                yield chunk.usage(end.usage)
            broken = None
        except ProviderError as exc:
            broken, kind = f"the stream broke: {exc}", exc.kind
            yield sse({"error": {"message": f"upstream: {exc}", "type": "api_error",
                                  "param": None, "code": exc.kind}})  # fmt: skip
        finally:
            call.route.release()
            await _shielded(self._close_stream(call, pieces, parts, end, broken, kind, started))
        yield "data: [DONE]\n\n"

    async def _close_stream(
        self, call: _Call, pieces: AsyncIterator[str | StreamEnd], parts: list[str],
        end: StreamEnd | None, broken: str | None, kind: str, started: float,
    ) -> None:  # fmt: skip
        """Close the upstream stream and bill it: its usage, or the reservation if it broke."""
        with contextlib.suppress(Exception):
            await pieces.aclose()  # type: ignore[attr-defined]
        latency = time.perf_counter() - started
        if broken is None:
            end = end or StreamEnd(Usage())
            await self._bill(call, "".join(parts), end.usage, latency, end.finish_reason)
            return
        with contextlib.suppress(SetupError):  # if the store is gone, the hold lapses into this
            await self.budgets.settle(call.key, call.hold, call.hold.amount)
        self._finished(call.request.idempotency_key, {
            "outcome": kind, "cost_usd": call.hold.amount, "latency_s": latency,
            "response": "".join(parts), "error": f"{broken} after {len(parts)} pieces; billed "
            "at the reservation (the tokens the upstream generated are not known)"[:500],
        })  # fmt: skip

    async def _served(
        self, key: str, model: str, request: CallRequest, hit: Hit, stream: _StreamAsk | None
    ) -> Response:
        """A request answered from the cache: billed nothing, one ledger row (role ``cache``)."""
        assert self.writer is not None
        self.writer.defer("call_started", {
            "run_id": run_id_of(key), "step_id": model, "attempt": 1, "call": 1, "role": "cache",
            "model": model, "idempotency_key": request.idempotency_key, "reserved_usd": 0.0,
            "request_json": messages_json(request.messages), "started_at": time.time(),
        })  # fmt: skip
        self._finished(request.idempotency_key, {
            "outcome": "ok", "prompt_tokens": hit.prompt_tokens,
            "completion_tokens": hit.completion_tokens, "cost_usd": 0.0,
            "latency_s": hit.latency_s, "response": hit.response, "cache_hit": 1,
            "cache_similarity": hit.similarity,
        })  # fmt: skip
        headers = {"x-trilemma-cost-usd": f"{0.0:.10f}", "x-trilemma-cache": "hit"}
        if hit.similarity is not None:
            headers["x-trilemma-cache-similarity"] = f"{hit.similarity:.4f}"
        if stream is not None:  # the whole answer as one piece
            chunk = Chunks(model)
            events = [chunk.piece(hit.response), chunk.finish()]
            if stream.include_usage and hit.prompt_tokens is not None:
                events.append(chunk.usage(Usage(hit.prompt_tokens, hit.completion_tokens)))
            events.append("data: [DONE]\n\n")
            return StreamingResponse(iter(events), media_type="text/event-stream", headers=headers)
        return self._answer(model, await self.budgets.state(key), hit.response,
                            Usage(hit.prompt_tokens, hit.completion_tokens), headers)  # fmt: skip

    def _answer(
        self, model: str, budget: BudgetState | None, text: str, usage: Usage,
        headers: dict[str, str], finish_reason: str | None = None,
    ) -> JSONResponse:  # fmt: skip
        """A chat completion in OpenAI's shape (the upstream's finish_reason passed on), with
        the key's spend in headers."""
        if budget is not None:
            headers["x-trilemma-spent-usd"] = f"{budget.spent:.10f}"
            if budget.remaining is not None:
                headers["x-trilemma-remaining-usd"] = f"{budget.remaining:.10f}"
        return JSONResponse(completion_body(model, text, usage, finish_reason), headers=headers)

    def _finished(self, call_id: str, fields: dict[str, Any]) -> None:
        assert self.writer is not None
        self.writer.defer("call_finished", call_id, {**fields, "finished_at": time.time()})

    def _parse(self, key: str, body: Any) -> tuple[str, CallRequest, _StreamAsk | None]:
        """The model, the call and how to stream it (None: not) a body asks for, or a 400/404."""
        if not isinstance(body, dict):
            raise _Refused(error(400, "the body must be a JSON object", "invalid_request_error"))
        model = body.get("model")
        if not isinstance(model, str) or model not in self.config.allowed(key):
            names = ", ".join(self.config.allowed(key))
            raise _Refused(error(404, f"model {model!r} is not served to key {key!r}; it may "
                                       f"call: {names}", "invalid_request_error", "model_not_found"))  # fmt: skip
        asked_stream = body.get("stream")
        if asked_stream is not None and not isinstance(asked_stream, bool):
            raise _Refused(error(400, "stream must be true or false", "invalid_request_error"))
        stream = None
        if asked_stream:
            options = body.get("stream_options") or {}
            usage = options.get("include_usage") if isinstance(options, dict) else "not an object"
            if not (usage is None or isinstance(usage, bool)):
                raise _Refused(error(400, "stream_options must be an object like {include_usage: true}", "invalid_request_error"))  # fmt: skip
            stream = _StreamAsk(bool(usage))
        refused = _unserved(body)
        if refused:
            raise _Refused(error(400, refused, "invalid_request_error"))
        messages = body.get("messages")
        if not isinstance(messages, list) or not messages or not all(
            isinstance(m, dict) and m.get("role") in ROLES and _text(m.get("content")) is not None
            for m in messages
        ):  # fmt: skip
            raise _Refused(error(400, "messages must be a non-empty list of {role, content}: a "
                                       f"role of {', '.join(ROLES)}, content UTF-8 text or text parts",
                                 "invalid_request_error"))  # fmt: skip
        profile = self.config.models[model]
        max_tokens = body.get("max_completion_tokens", body.get("max_tokens"))
        if max_tokens is None:
            max_tokens = profile.max_tokens
        if (
            isinstance(max_tokens, bool)
            or not isinstance(max_tokens, int)
            or not 0 < max_tokens <= 1_000_000
        ):
            raise _Refused(error(400, "max_tokens must be a positive integer", "invalid_request_error"))  # fmt: skip
        temperature = body.get("temperature", profile.temperature)
        if temperature is not None and not (_number(temperature) and 0 <= temperature <= 2):
            raise _Refused(error(400, "temperature must be a number from 0 to 2", "invalid_request_error"))  # fmt: skip
        stop = body.get("stop", profile.stop)
        stop = () if stop in (None, "") else (stop,) if isinstance(stop, str) else stop
        if not isinstance(stop, list | tuple) or len(stop) > MAX_STOPS or not all(
            isinstance(x, str) and not_text_at(x) is None for x in stop
        ):
            raise _Refused(error(400, f"stop must be a string or a list of up to {MAX_STOPS} "
                                      "strings", "invalid_request_error"))  # fmt: skip
        stop = tuple(stop)
        msgs: tuple[Message, ...] = tuple(
            {"role": m["role"], "content": _text(m["content"]) or ""} for m in messages
        )
        call_id = f"{run_id_of(key)}:{uuid.uuid4().hex}"
        return model, CallRequest(
            model, msgs, max_tokens, profile.timeout_s, call_id, call_id, temperature, stop,
            profile.p_ok, f"answer from {model}", f"wrong answer from {model}",
            extra=_passed_on(body),
        ), stream  # fmt: skip


#: The roles a message may have: the gateway forwards text, not tool calls.
ROLES = ("system", "developer", "user", "assistant")
#: Stop sequences a request may give (OpenAI's own limit).
MAX_STOPS = 4


def _text(content: Any) -> str | None:
    """A message's content as text: a string, or text parts joined by newlines; None when
    it is neither (images, audio, a missing content) or not UTF-8."""
    if isinstance(content, list) and content and all(
        isinstance(p, dict) and p.get("type") == "text" and isinstance(p.get("text"), str)
        for p in content
    ):
        content = "\n".join(p["text"] for p in content)
    return content if isinstance(content, str) and not_text_at(content) is None else None


#: Sampling settings passed on to the endpoint as the client gave them, each with its check
#: (OpenAI's ranges) and what a wrong one is told.
PASSED_ON: dict[str, tuple[Callable[[Any], bool], str]] = {
    "top_p": (lambda v: _number(v) and 0 <= v <= 1, "a number from 0 to 1"),
    "seed": (lambda v: isinstance(v, int) and not isinstance(v, bool) and -(2**63) <= v < 2**63,
             "an integer"),
    "presence_penalty": (lambda v: _number(v) and -2 <= v <= 2, "a number from -2 to 2"),
    "frequency_penalty": (lambda v: _number(v) and -2 <= v <= 2, "a number from -2 to 2"),
    "user": (lambda v: isinstance(v, str) and len(v) <= 256 and not_text_at(v) is None,
             "text of up to 256 characters"),
    "logit_bias": (lambda v: isinstance(v, dict) and all(
        k.isascii() and k.isdigit() and _number(b) and -100 <= b <= 100 for k, b in v.items()),
        "an object of token ids to numbers from -100 to 100"),
    "reasoning_effort": (lambda v: isinstance(v, str) and v.isascii() and v.isalpha()
                         and len(v) <= 16, "a word such as low, medium or high"),
}  # fmt: skip
"""The answer's cost stays what its usage says under each of these (reasoning tokens are
completion tokens, bounded by ``max_tokens``), so the reservation still holds."""

#: Settings the gateway does not forward but takes when they ask for nothing more than it
#: does: the value each may have (a null is always taken).
TAKEN_AS_DEFAULT: dict[str, Callable[[Any], bool]] = {
    "store": lambda v: v is False,
    "parallel_tool_calls": lambda v: isinstance(v, bool),  # no tools are forwarded
    "service_tier": lambda v: v in ("auto", "default"),  # another tier has another price
    "modalities": lambda v: v == ["text"],
    "metadata": lambda v: v == {},
    "top_logprobs": lambda v: v == 0,
    "function_call": lambda v: v == "none",
}

#: The fields of a body the gateway reads; any other is refused, as OpenAI refuses it.
READ = frozenset({"model", "messages", "stream", "stream_options", "n", "tools", "functions",
                  "tool_choice", "response_format", "logprobs", "max_tokens",
                  "max_completion_tokens", "temperature", "stop", *PASSED_ON,
                  *TAKEN_AS_DEFAULT})  # fmt: skip


def _number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)  # NaN fails ranges


def _passed_on(body: dict[str, Any]) -> tuple[tuple[str, Any], ...]:
    """The request's settings of :data:`PASSED_ON` (a null is none), each checked: a 400
    names the first that OpenAI would refuse."""
    given = [(name, body[name]) for name in PASSED_ON if body.get(name) is not None]
    for name, value in given:
        check, wanted = PASSED_ON[name]
        if not check(value):
            raise _Refused(error(400, f"{name} must be {wanted}", "invalid_request_error"))
    return tuple(given)


def _unserved(body: dict[str, Any]) -> str | None:
    """Why a request asks for what the gateway would drop without a word (None: it does not).

    Several choices, tools and forced formats would leave the client with less than it
    asked for, and are refused; the sampling settings of :data:`PASSED_ON` are passed on;
    the settings of :data:`TAKEN_AS_DEFAULT` are taken only at a value that asks for nothing,
    and a field the gateway does not read is refused in OpenAI's words.
    """
    if isinstance(body.get("n"), bool) or body.get("n") not in (None, 1):
        return "n must be 1: the gateway answers with one choice"
    for field in ("tools", "functions"):
        if body.get(field):
            return f"{field} are not forwarded by this gateway: it serves text messages"
    if body.get("tool_choice") not in (None, "none"):
        return "tool_choice is not forwarded by this gateway: it serves text messages"
    fmt = body.get("response_format")
    if fmt is not None and not (isinstance(fmt, dict) and fmt.get("type") == "text"):
        return "response_format is not forwarded by this gateway; ask for the format in the prompt"
    if body.get("logprobs"):
        return "logprobs are not returned by this gateway"
    for name, takes in TAKEN_AS_DEFAULT.items():
        if body.get(name) is not None and not takes(body[name]):
            return f"{name} is not forwarded by this gateway; leave it out"
    for name, value in body.items():
        if name not in READ and value is not None:
            shown = name if len(name) <= 40 else f"{name[:40]}..."
            return (f"Unrecognized request argument supplied: {shown}; this gateway reads "
                    f"{', '.join(sorted(READ - TAKEN_AS_DEFAULT.keys()))}")  # fmt: skip
    return None


@dataclass(frozen=True, slots=True)
class _StreamAsk:
    """A client asked for ``stream: true``."""

    include_usage: bool
    """``stream_options.include_usage``: a last chunk with the usage."""


@dataclass(frozen=True, slots=True)
class _Call:
    """A forwarded request, reserved and journaled, until it is billed."""

    key: str
    model: str
    request: CallRequest
    hold: Reservation
    route: Route
    settings: list[Any] | None
    lookup: Lookup | None
    tokens: float
    """What the key's tokens-per-minute counts until the answer says what it used."""


async def _shielded(cleanup: Coroutine[Any, Any, None]) -> None:
    """Run ``cleanup`` to its end even if the request is being cancelled (a client went away)."""
    task = asyncio.ensure_future(cleanup)
    with contextlib.suppress(asyncio.CancelledError):
        await asyncio.shield(task)


def _refuse_a_second_gateway(config: GatewayConfig, journal: Journal) -> None:
    """A key's ceiling held in one process: a second live gateway on its run would overrun it."""
    for key in config.keys:
        row = journal.run(run_id_of(key))
        if (row is not None and row["status"] == "running" and row["pid"] != os.getpid()
                and pid_alive(row["pid"])):  # fmt: skip
            raise UsageError(
                f"key {key!r} is already served from {journal.path} by another gateway (process "
                f"{row['pid']}); a key's ceiling is held in one process, so a second gateway "
                "could overrun it: stop that one first, or share the ceilings through Redis "
                "(shared: {redis: URL} in the config; --force if that process is not a gateway)"
            )


async def _quietly(release: Coroutine[Any, Any, None]) -> None:
    """Release a hold on a failed request; if the store is gone, the hold lapses into spend."""
    with contextlib.suppress(SetupError):
        await release


def _digest(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


def create_app(gateway: Gateway) -> FastAPI:
    """The FastAPI application serving ``gateway``."""

    @contextlib.asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        await gateway.start()
        try:
            yield
        finally:
            await gateway.stop()

    app = FastAPI(title="trilemma gateway", lifespan=lifespan, docs_url=None, redoc_url=None)

    @app.exception_handler(_Refused)
    async def refused(_: Request, exc: _Refused) -> JSONResponse:
        return exc.response

    @app.exception_handler(HTTPException)  # a path or method not served: OpenAI's shape too
    async def not_served(request: Request, exc: HTTPException) -> JSONResponse:
        code = "not_found" if exc.status_code == 404 else "method_not_allowed"
        return error(exc.status_code, f"{request.method} {request.url.path} is not served: the "
                                      f"gateway serves {', '.join(ROUTES)}", "invalid_request_error",
                     code, exc.headers)  # fmt: skip

    @app.exception_handler(SetupError)  # the shared budget store stopped answering
    async def unavailable(_: Request, exc: SetupError) -> JSONResponse:
        return error(503, str(exc), "api_error", "budget_store_unavailable")

    @app.post("/v1/chat/completions")
    async def chat(request: Request) -> Response:
        key = gateway.key_of(request.headers.get("authorization"))
        raw = bytearray()
        async for part in request.stream():  # never more than the limit held in memory
            raw += part
            if len(raw) > MAX_BODY_BYTES:
                return error(413, "the request body is over 4 MB", "invalid_request_error")
        try:
            body = json.loads(raw)
        except ValueError:
            return error(400, "the body is not JSON", "invalid_request_error")
        return await gateway.chat(key, body)

    @app.get("/v1/models")
    async def models(request: Request) -> JSONResponse:
        key = gateway.key_of(request.headers.get("authorization"))
        data = [{"id": m, "object": "model", "created": 0, "owned_by": "trilemma"}
                for m in gateway.config.allowed(key)]  # fmt: skip
        return JSONResponse({"object": "list", "data": data})

    @app.get("/v1/budget")
    async def budget(request: Request) -> JSONResponse:
        key = gateway.key_of(request.headers.get("authorization"))
        return JSONResponse(await gateway.budget(key))

    return app
