"""Any OpenAI-compatible chat endpoint, through the official ``openai`` SDK.

The SDK's own retries are off: trilemma retries, so that every attempt is
reserved against the budget and written to the ledger. :func:`map_errors`
turns every SDK error into the taxonomy of :mod:`trilemma.errors`; the most
specific class wins.
"""

from __future__ import annotations

import contextlib
import email.utils
import math
import os
import time
from collections.abc import AsyncIterator, Iterator, Mapping
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import openai

from trilemma.errors import (
    EndpointUnreachable,
    FatalProviderError,
    MalformedAnswer,
    ProviderError,
    ProviderTimeout,
    QuotaExceeded,
    RateLimited,
    TransientError,
)
from trilemma.providers.base import Completion, Request, StreamEnd, Usage
from trilemma.spec import ModelProfile

__all__ = ["NO_KEY", "OpenAIProvider", "map_errors", "parse_retry_after", "retry_advice",
           "usage_json"]

#: Sent when a profile names no key variable (local servers ignore it).
NO_KEY = "sk-no-key-needed"


def parse_retry_after(value: str | None, now: float | None = None) -> float | None:
    """Seconds from a Retry-After header: delta-seconds or an HTTP date; None if absent or bad."""
    if not value:
        return None
    value = value.strip()
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - (time.time() if now is None else now))


def retry_advice(headers: Mapping[str, str]) -> float | None:
    """Seconds a response says to wait: ``retry-after-ms`` (OpenAI's and Azure's, in
    milliseconds) if it is there and sound, else ``Retry-After``."""
    ms = headers.get("retry-after-ms")
    if ms:
        try:
            value = float(ms)
        except ValueError:
            value = math.nan
        if math.isfinite(value):
            return max(0.0, value / 1000)
    return parse_retry_after(headers.get("retry-after"))


@contextlib.contextmanager
def map_errors(model: str, endpoint: str = "the endpoint") -> Iterator[None]:
    """Re-raise SDK errors as trilemma's provider errors; ``endpoint``, the base URL, is
    named when it cannot be reached."""
    try:
        yield
    except openai.RateLimitError as exc:
        if _code(exc) == "insufficient_quota":  # out of credit, not out of breath
            raise QuotaExceeded(f"429 insufficient_quota: {_detail(exc)}") from exc
        after = retry_advice(exc.response.headers)
        raise RateLimited(f"429 from the endpoint: {_detail(exc)}", retry_after=after) from exc
    except openai.APITimeoutError as exc:
        raise ProviderTimeout("the endpoint did not answer in time") from exc
    except openai.APIConnectionError as exc:
        shown = _without_secrets(endpoint)
        raise EndpointUnreachable(
            f"cannot reach {shown} ({exc.__cause__ or exc}); {_start_hint(model, shown)}", shown
        ) from exc
    except openai.NotFoundError as exc:
        raise FatalProviderError(
            f"404: the endpoint does not know model {model!r} (or the path): {_detail(exc)}"
        ) from exc
    except (openai.AuthenticationError, openai.PermissionDeniedError) as exc:
        raise FatalProviderError(
            f"{exc.status_code}: the endpoint refused the API key: {_detail(exc)}"
        ) from exc
    except (openai.BadRequestError, openai.UnprocessableEntityError) as exc:
        raise FatalProviderError(f"{exc.status_code}: bad request: {_detail(exc)}") from exc
    except openai.APIResponseValidationError as exc:
        raise MalformedAnswer(f"the response is not a chat completion: {exc}") from exc
    except openai.APIStatusError as exc:
        if exc.status_code == 402:
            raise QuotaExceeded(f"402 payment required: {_detail(exc)}") from exc
        if exc.status_code >= 500 or exc.status_code in (408, 409):  # an overloaded server
            raise TransientError(  # may say when to come back (503 and Retry-After)
                f"{exc.status_code} from the endpoint: {_detail(exc)}",
                retry_after=retry_advice(exc.response.headers),
            ) from exc
        raise FatalProviderError(f"{exc.status_code} from the endpoint: {_detail(exc)}") from exc
    except openai.OpenAIError as exc:
        raise MalformedAnswer(f"unusable response: {type(exc).__name__}: {exc}") from exc
    except ValueError as exc:  # a body that is not JSON at all
        raise MalformedAnswer(f"the response is not JSON: {exc}") from exc


def _without_secrets(url: str) -> str:
    """A base URL fit for a message: no user or password, no query string."""
    parts = urlsplit(url)
    if not parts.scheme:
        return url
    host = parts.netloc.rpartition("@")[2]
    return urlunsplit((parts.scheme, host, parts.path, "", ""))


def _start_hint(model: str, endpoint: str) -> str:
    """What to do about an endpoint that cannot be reached: start a packaged model's server,
    or check the profile's base_url."""
    from trilemma.providers.local import MODELS

    where = urlsplit(endpoint)
    if where.hostname in ("127.0.0.1", "localhost") and model in MODELS:
        port = "" if where.port in (None, MODELS[model].port) else f" --port {where.port}"
        return f"start it with `trilemma local up --model {model}{port}`"
    return "check that its server is up and the profile's base_url is right"


def _error_field(exc: openai.APIStatusError, name: str) -> str | None:
    """A field (``message``, ``code``) of an error body's ``error`` object, if it has one."""
    body = exc.body
    err = body.get("error", body) if isinstance(body, dict) else None
    value = err.get(name) if isinstance(err, dict) else None
    return str(value) if value else None


def _code(exc: openai.APIStatusError) -> str | None:
    return _error_field(exc, "code")


def _detail(exc: openai.APIStatusError) -> str:
    return (_error_field(exc, "message") or str(exc.message))[:200]


class OpenAIProvider:
    """Chat completions on one OpenAI-compatible endpoint."""

    def __init__(self, profile_name: str, profile: ModelProfile) -> None:
        assert profile.base_url and profile.model
        key = NO_KEY
        if profile.api_key_env:
            found = os.environ.get(profile.api_key_env)
            if not found:
                raise FatalProviderError(
                    f"models.{profile_name}.api_key_env: the environment variable "
                    f"{profile.api_key_env} is not set; export it, or remove provider: to run "
                    "this model on the simulator"
                )
            key = found
        self.client = openai.AsyncOpenAI(
            base_url=profile.base_url, api_key=key, max_retries=0, timeout=profile.timeout_s
        )
        # The SDK imports a resource's modules when it is first used (~40 ms for chat): here,
        # before the run, not inside the first call's measured latency, stalling the loop.
        _ = self.client.completions if profile.api == "completions" else self.client.chat.completions

    async def complete(self, request: Request, profile: ModelProfile) -> Completion:
        """One chat completion; usage and latency as the endpoint reported them."""
        assert profile.model
        kwargs = _options(request)
        headers = {"Idempotency-Key": request.idempotency_key}
        started = time.perf_counter()
        with map_errors(profile.model, profile.base_url or "the endpoint"):
            if profile.api == "completions":  # a base model: the messages become one prompt
                prompt = "\n\n".join(m["content"] for m in request.messages)
                raw = await self.client.completions.with_raw_response.create(
                    model=profile.model, prompt=prompt, max_tokens=request.max_tokens,
                    timeout=request.timeout_s, extra_headers=headers, **kwargs,
                )  # fmt: skip
                body = raw.parse()
                text = _completion_text(body)
            else:
                raw_chat = await self.client.chat.completions.with_raw_response.create(
                    model=profile.model, messages=list(request.messages),  # type: ignore[arg-type]
                    max_tokens=request.max_tokens, timeout=request.timeout_s,
                    extra_headers=headers, **kwargs,
                )  # fmt: skip
                body = raw_chat.parse()
                text = _text(body)
        latency = time.perf_counter() - started
        finish = getattr(body.choices[0], "finish_reason", None)  # both checked it has one
        return Completion(text, _usage(body), latency,
                          finish_reason=finish if isinstance(finish, str) else None)

    async def stream(
        self, request: Request, profile: ModelProfile
    ) -> AsyncIterator[str | StreamEnd]:
        """A chat completion as it arrives: text pieces, then the usage the endpoint reported
        and why the answer ended (:class:`StreamEnd`).

        Errors are mapped as for :meth:`complete`; a stream that ends before the endpoint
        said the answer was finished is a TransientError.
        """
        assert profile.model
        kwargs = _options(request)
        usage = Usage()
        finished: str | None = None
        with map_errors(profile.model, profile.base_url or "the endpoint"):
            chunks = await self.client.chat.completions.create(  # type: ignore[call-overload]
                model=profile.model, messages=list(request.messages),
                max_tokens=request.max_tokens, timeout=request.timeout_s, stream=True,
                stream_options={"include_usage": True},
                extra_headers={"Idempotency-Key": request.idempotency_key}, **kwargs,
            )  # fmt: skip
            try:
                async for chunk in chunks:
                    if chunk.usage is not None:
                        usage = _usage(chunk)
                    for choice in chunk.choices[:1]:
                        if choice.delta is not None and choice.delta.content:
                            yield choice.delta.content
                        if choice.finish_reason is not None:
                            finished = str(choice.finish_reason)
            finally:
                await chunks.close()
        if finished is None:
            raise TransientError("the stream ended before the endpoint finished the answer")
        yield StreamEnd(usage, finished)

    async def check_reachable(self, profile: ModelProfile) -> None:
        """EndpointUnreachable if no connection to the endpoint can be made; any answer (a
        list of its models, or an error status: not every endpoint serves one) will do."""
        try:
            with map_errors(profile.model or "", profile.base_url or "the endpoint"):
                await self.client.models.list(timeout=min(profile.timeout_s, PROBE_TIMEOUT_S))
        except EndpointUnreachable:
            raise
        except ProviderError:  # it answered
            pass

    async def aclose(self) -> None:
        """Close the HTTP connections."""
        await self.client.close()


PROBE_TIMEOUT_S = 10.0
"""Longest :meth:`OpenAIProvider.check_reachable` waits for an answer."""


def _options(request: Request) -> dict[str, Any]:
    """The request's optional sampling settings, as the SDK takes them."""
    kwargs: dict[str, Any] = {}
    if request.temperature is not None:
        kwargs["temperature"] = request.temperature
    if request.stop:
        kwargs["stop"] = list(request.stop)
    kwargs.update(request.extra)
    return kwargs


def _text(body: Any) -> str:
    choices = getattr(body, "choices", None)
    if not choices:
        raise MalformedAnswer("the completion has no choices")
    message = getattr(choices[0], "message", None)
    content = getattr(message, "content", None)
    if not isinstance(content, str):
        raise MalformedAnswer("the completion's first choice has no text content")
    return content


def _completion_text(body: Any) -> str:
    choices = getattr(body, "choices", None)
    if not choices or not isinstance(getattr(choices[0], "text", None), str):
        raise MalformedAnswer("the completion has no text")
    return str(choices[0].text)


def _usage(body: Any) -> Usage:
    usage = getattr(body, "usage", None)
    if usage is None:
        return Usage()
    details = getattr(usage, "prompt_tokens_details", None)
    cached = getattr(details, "cached_tokens", None)
    return Usage(
        getattr(usage, "prompt_tokens", None),
        getattr(usage, "completion_tokens", None),
        cached if isinstance(cached, int) else None,
    )


def usage_json(u: Usage) -> dict[str, Any] | None:
    """Usage as an OpenAI-compatible body carries it (None when the counts are not known)."""
    if u.prompt_tokens is None or u.completion_tokens is None:
        return None
    out: dict[str, Any] = {"prompt_tokens": u.prompt_tokens,
                           "completion_tokens": u.completion_tokens,
                           "total_tokens": u.prompt_tokens + u.completion_tokens}  # fmt: skip
    if u.cached_tokens is not None:
        out["prompt_tokens_details"] = {"cached_tokens": u.cached_tokens}
    return out
