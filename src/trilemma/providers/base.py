"""The provider protocol and the records that cross it.

A provider turns a :class:`Request` into a :class:`Completion` or raises one of
the :class:`~trilemma.errors.ProviderError` classes. Model facts (price,
latency, p_ok) stay in :class:`~trilemma.spec.ModelProfile`; a provider is only
a transport.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, NamedTuple, Protocol

from trilemma.spec import ModelProfile
from trilemma.spec.model import BYTES_PER_TOKEN, TEMPLATE_TOKENS_PER_MESSAGE

__all__ = [
    "CUT",
    "UNREPORTED",
    "Completion",
    "Message",
    "Provider",
    "Request",
    "StreamEnd",
    "Usage",
    "bill_note",
    "cost_of",
    "rate_tokens",
    "worst_case_cost",
]

Message = dict[str, str]



@dataclass(slots=True)  # not frozen: it is made once per call
class Usage:
    """Tokens of one or more calls; ``None`` means unknown, not zero (read-only by convention)."""

    prompt_tokens: int | None = None
    """Tokens sent."""
    completion_tokens: int | None = None
    """Tokens received."""
    cached_tokens: int | None = None
    """Of the tokens sent, those the endpoint served from its prompt (prefix) cache."""

    def __add__(self, other: Usage) -> Usage:
        def add(a: int | None, b: int | None) -> int | None:
            return None if a is None or b is None else a + b

        return Usage(
            add(self.prompt_tokens, other.prompt_tokens),
            add(self.completion_tokens, other.completion_tokens),
            add(self.cached_tokens, other.cached_tokens),
        )


@dataclass(slots=True)  # not frozen: that doubles its construction, once per call
class Request:
    """One chat-completion call (read-only by convention: providers must not change it)."""

    model: str
    """The profile's name in the spec."""
    messages: tuple[Message, ...]
    """Chat messages, oldest first."""
    max_tokens: int
    """Completion tokens allowed; the budget reserves them all."""
    timeout_s: float
    """Seconds the attempt may take."""
    idempotency_key: str
    """Stable per (run, step, attempt, call): sent where a provider accepts one."""
    call_key: str = ""
    """``step:attempt:call``, the same in every run of a spec (the simulator seeds from it)."""
    temperature: float | None = None
    """Sampling temperature, if the profile sets one."""
    stop: tuple[str, ...] = ()
    """Stop sequences, if the profile sets them."""
    p_ok: float = 1.0
    """The simulator only: chance this call's answer is right."""
    sim_ok: str = ""
    """The simulator only: the right answer's text."""
    sim_bad: str = ""
    """The simulator only: the wrong answer's text."""
    verdict_key: str = ""
    """The simulator only: calls that share it are right or wrong together (the samples of
    one attempt whose majority answers, so that ``p_ok`` is the attempt's, as planned)."""
    extra: tuple[tuple[str, Any], ...] = ()
    """Further sampling settings a client gave the gateway (``top_p``, ``seed``, penalties,
    ``user``), passed on as given to an OpenAI-compatible endpoint; the simulator has none."""

    @property
    def prompt_bytes(self) -> int:
        """UTF-8 bytes of every message: an upper bound on byte-level BPE tokens."""
        return sum(len(m["content"].encode()) for m in self.messages)


@dataclass(slots=True)  # not frozen: it is made once per call
class Completion:
    """What came back (read-only by convention)."""

    text: str
    """The answer."""
    usage: Usage
    """Tokens, as the provider reported them."""
    latency_s: float
    """Seconds from send to answer."""
    verdict: bool | None = None
    """The simulator knows whether its answer is right; a real model does not (None)."""
    finish_reason: str | None = None
    """Why generation stopped, as the endpoint said: ``stop``, ``length`` (cut at
    ``max_tokens``: the text ends where the tokens ran out), ... (None: not reported)."""


#: The finish_reason of an answer cut at ``max_tokens``.
CUT = "length"


class StreamEnd(NamedTuple):
    """The last item of a streamed answer, after its text pieces."""

    usage: Usage
    """Tokens, as the provider reported them."""
    finish_reason: str | None = None
    """As :attr:`Completion.finish_reason`."""


class Provider(Protocol):
    """Anything that can complete a chat request.

    A provider may set ``external = False`` when its calls have no effect
    outside the process (the simulator): their write-ahead journal records are
    then group-committed instead of committed before each call. A provider
    that enforces ``request.timeout_s`` itself (raising ProviderTimeout) may set
    ``keeps_time = True`` to spare the executor a timer per call.
    """

    async def complete(self, request: Request, profile: ModelProfile) -> Completion:
        """Send the request; return the completion or raise a ProviderError."""
        ...


def worst_case_cost(profile: ModelProfile, request: Request) -> float:
    """The most one call can cost: the per-call price, or every token at token prices.

    The prompt is counted at its UTF-8 bytes plus a chat template's tokens per message (no
    byte-level tokenizer makes more tokens of it), and on the simulator at no less than the
    profile's ``prompt_tokens``, which it reports (so the hold is the planner's).
    """
    if profile.usd_per_call is not None:
        return profile.usd_per_call
    prompt = request.prompt_bytes + TEMPLATE_TOKENS_PER_MESSAGE * len(request.messages)
    if profile.runs_on_simulator:
        prompt = max(prompt, profile.prompt_tokens)
    return profile.token_cost(prompt, request.max_tokens)


def rate_tokens(profile: ModelProfile, request: Request) -> float:
    """The tokens a call holds of its model's ``tpm`` when sent: its prompt and the most it
    may generate, as endpoints count them. The prompt is the profile's ``prompt_tokens`` on
    the simulator (what it reports, and what the planner counts), else its bytes over
    ``BYTES_PER_TOKEN``.
    """
    prompt = (profile.prompt_tokens if profile.runs_on_simulator
              else request.prompt_bytes / BYTES_PER_TOKEN)  # fmt: skip
    return prompt + request.max_tokens


def cost_of(profile: ModelProfile, usage: Usage, reserved: float) -> float:
    """What a call that answered costs: per-call price, or its tokens at token prices.

    Prompt tokens the endpoint says it served from its cache are billed at
    ``usd_per_1m_cached_input`` when the profile gives it. Unknown token counts are
    billed at the reservation, the worst case.
    """
    if profile.usd_per_call is not None:
        return profile.usd_per_call
    if usage.prompt_tokens is None or usage.completion_tokens is None:
        return reserved
    return profile.token_cost(usage.prompt_tokens, usage.completion_tokens, usage.cached_tokens or 0)


UNREPORTED = "the endpoint reported no usage"
"""How a ledger note on a call billed at its reservation for want of token counts begins."""


def bill_note(profile: ModelProfile, usage: Usage, reserved: float, cost: float) -> str | None:
    """What the ledger should say about a bill that is not simply its tokens at their prices
    (None: nothing): one made without token counts, or one past the reservation."""
    if profile.usd_per_call is None and (usage.prompt_tokens is None or usage.completion_tokens is None):
        return f"{UNREPORTED}: billed at the reservation ${reserved:.6f}, the call's worst case"
    if cost > reserved + 1e-12:  # only an endpoint misreporting usage can do this
        return (f"billed ${cost:.6f} exceeds the reservation ${reserved:.6f}: the endpoint "
                "reported more tokens than max_tokens and the prompt allow")  # fmt: skip
    return None
