"""The OpenAI chat-completions wire format as the gateway speaks it: answers, chunks, errors.

Clients use the official SDKs unchanged, so every body, server-sent event and error here
has the shape those SDKs parse (and raise their usual exceptions from).
"""

from __future__ import annotations

import json
import math
import time
import uuid
from collections.abc import AsyncIterator, Mapping
from typing import Any

from fastapi.responses import JSONResponse

from trilemma.errors import (
    EndpointUnreachable,
    ProviderError,
    ProviderTimeout,
    QuotaExceeded,
    RateLimited,
    TransientError,
)
from trilemma.providers.base import Usage
from trilemma.providers.openai import usage_json

__all__ = ["Chunks", "after", "completion_body", "error", "sse", "upstream_error"]


def completion_body(
    model: str, text: str, usage: Usage, finish_reason: str | None = None
) -> dict[str, Any]:
    """A ``chat.completion`` with one choice, and its usage when the counts are known;
    ``finish_reason`` as the upstream said (``length``: cut at max_tokens), else ``stop``."""
    answer: dict[str, Any] = {
        "id": f"chatcmpl-{uuid.uuid4().hex}", "object": "chat.completion",
        "created": int(time.time()), "model": model,
        "choices": [{"index": 0, "message": {"role": "assistant", "content": text},
                     "finish_reason": finish_reason or "stop", "logprobs": None}],
    }  # fmt: skip
    counts = usage_json(usage)
    if counts is not None:
        answer["usage"] = counts
    return answer


def error(status: int, message: str, kind: str, code: str | None = None,
           headers: Mapping[str, str] | None = None) -> JSONResponse:  # fmt: skip
    """An error in OpenAI's shape, so that SDKs raise their usual exceptions."""
    body = {"error": {"message": message, "type": kind, "param": None, "code": code or kind}}
    return JSONResponse(body, status_code=status, headers=dict(headers or {}))


class Chunks:
    """Server-sent ``chat.completion.chunk`` events of one streamed answer."""

    def __init__(self, model: str) -> None:
        self.head = {"id": f"chatcmpl-{uuid.uuid4().hex}", "object": "chat.completion.chunk",
                     "created": int(time.time()), "model": model}  # fmt: skip
        self.first = True

    def piece(self, text: str) -> str:
        delta = {"role": "assistant", "content": text} if self.first else {"content": text}
        self.first = False
        return self._event([{"index": 0, "delta": delta, "finish_reason": None, "logprobs": None}])

    def finish(self, reason: str | None = None) -> str:
        """The last piece: why the answer ended (the upstream's reason, else ``stop``)."""
        return self._event([{"index": 0, "delta": {}, "finish_reason": reason or "stop",
                             "logprobs": None}])  # fmt: skip

    def usage(self, u: Usage) -> str:
        return self._event([], usage_json(u))

    def _event(self, choices: list[dict[str, Any]], usage: dict[str, Any] | None = None) -> str:
        return sse({**self.head, "choices": choices, "usage": usage})


async def after(head: str, rest: AsyncIterator[str]) -> AsyncIterator[str]:
    """``head``, then the rest: a generator started before the response (see the gateway)."""
    yield head
    async for event in rest:
        yield event


def sse(data: dict[str, Any]) -> str:
    return f"data: {json.dumps(data)}\n\n"


def upstream_error(exc: ProviderError) -> JSONResponse:
    """A provider's failure as the HTTP error a client expects from a gateway."""
    msg = f"upstream: {exc}"
    if isinstance(exc, EndpointUnreachable):  # its URL is the operator's business, not the client's
        msg = "upstream: cannot reach the model's endpoint"
    advice = getattr(exc, "retry_after", None)  # the upstream's word on when to come back
    headers = {} if advice is None else {"Retry-After": f"{math.ceil(advice)}"}
    if isinstance(exc, RateLimited):
        return error(429, msg, "rate_limit_error", "rate_limited", headers)
    if isinstance(exc, QuotaExceeded):
        return error(402, msg, "insufficient_quota", "upstream_quota_exceeded")
    if isinstance(exc, ProviderTimeout):
        return error(504, msg, "timeout", "upstream_timeout")
    if isinstance(exc, TransientError):  # with its advice: unavailable for now, come back then
        return error(502 if advice is None else 503, msg, "api_error", "upstream_unavailable",
                     headers)  # fmt: skip
    return error(502, msg, "api_error", exc.kind)
