"""The spec's pydantic models: workflow, steps, model profiles, gates, budgets.

Frozen and strict (unknown fields are errors); :mod:`trilemma.spec.load` is the
one door a spec comes in through, and turns validation errors into SpecErrors.
"""

from __future__ import annotations

import math
import random
from typing import TYPE_CHECKING, Annotated, Any, Literal, TypeVar

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    PrivateAttr,
    field_validator,
    model_validator,
)
from pydantic.json_schema import SkipJsonSchema

from trilemma.spec.bounds import MAX_RATE, MAX_SECONDS, MAX_SEED, MAX_TOKENS, MAX_USD
from trilemma.spec.prices import hosted_prices
from trilemma.spec.template import template_fields

if TYPE_CHECKING:
    from collections.abc import Collection

SPEC_VERSION = 1
STEP_ID_PATTERN = r"^[A-Za-z0-9_-]+$"



Probability = Annotated[float, Field(gt=0.0, le=1.0, allow_inf_nan=False)]
Rate = Annotated[float, Field(ge=0.0, lt=1.0, allow_inf_nan=False)]
Price = Annotated[float, Field(ge=0.0, le=MAX_USD, allow_inf_nan=False)]
Seconds = Annotated[float, Field(gt=0.0, le=MAX_SECONDS, allow_inf_nan=False)]
Tokens = Annotated[int, Field(ge=0, le=MAX_TOKENS)]
PerMinute = Annotated[int, Field(ge=1, le=MAX_RATE)]
Fraction = Annotated[float, Field(ge=0.0, le=1.0, allow_inf_nan=False)]


NO_PRICE = "no price: give usd_per_call, or usd_per_1m_input and usd_per_1m_output"


class _Strict(BaseModel):
    model_config = ConfigDict(
        extra="forbid", frozen=True
    )  # strings kept exactly: "\n" is a stop sequence


#: Tokens a chat template may add per message, over the message's own bytes.
TEMPLATE_TOKENS_PER_MESSAGE = 16
#: UTF-8 bytes a token of English text takes on average: a ``tpm`` bucket counts a prompt's
#: bytes over it, and the planner takes a real endpoint's expected prompt to be this many
#: bytes a token (the executor holds a prompt's bytes under a ceiling, a bound on its tokens).
BYTES_PER_TOKEN = 4
#: A simulated fault other than a timeout answers after this share of the call's latency.
FAULT_LATENCY_SHARE = 0.1
#: What a simulated 429 advises, in seconds (``Retry-After``).
SIM_RETRY_AFTER_S = 0.02
#: The executor's backoff before a retry: after the ``i``-th failure of a step it waits a
#: uniform draw (full jitter) below ``min(BACKOFF_CAP_S, BACKOFF_BASE_S * 2**(i - 1))``, or
#: the ``Retry-After`` of a rate limit (at most ``BACKOFF_CAP_S``). The planner counts them.
BACKOFF_BASE_S = 0.5
BACKOFF_CAP_S = 20.0


def backoff_ceiling(failures: int) -> float:
    """The longest jittered wait after a step's ``failures``-th failure (see ``BACKOFF_BASE_S``)."""
    return min(BACKOFF_CAP_S, BACKOFF_BASE_S * 2.0 ** min(failures - 1, 64))


class Faults(_Strict):
    """Provider errors the simulator injects, each a per-call probability.

    A fault fails its attempt and is not billed; the planner counts it (see ``rate``).
    """

    transient_error_rate: Rate = 0.0
    """Chance a call fails with a transient error (a 5xx, a dropped connection)."""
    rate_limit_rate: Rate = 0.0
    """Chance a call is refused with a rate limit (a 429 with Retry-After)."""
    timeout_rate: Rate = 0.0
    """Chance a call hangs until its ``timeout_s``."""

    @property
    def any(self) -> bool:
        """Whether any fault is injected at all."""
        return bool(self.transient_error_rate or self.rate_limit_rate or self.timeout_rate)

    @property
    def rate(self) -> float:
        """The chance a call fails with one fault or another."""
        return min(1.0, self.transient_error_rate + self.rate_limit_rate + self.timeout_rate)

    def chance(self, calls: int) -> float:
        """The chance an attempt of ``calls`` calls meets a fault (each call drawn apart)."""
        return 1.0 - (1.0 - self.rate) ** calls if self.any else 0.0

    @property
    def limited_share(self) -> float:
        """Of the faults met, the share that are rate limits (their retry waits the
        Retry-After rather than the backoff)."""
        if not self.any:
            return 0.0
        return self.rate_limit_rate / (
            self.transient_error_rate + self.rate_limit_rate + self.timeout_rate
        )

    def seconds(self, latency_s: float, timeout_s: float, calls: int = 1) -> float:
        """How long a wave of ``calls`` calls sent together takes on average when one of them
        faults: a lone call its fault's time (a timeout its ``timeout_s``, any other fault
        ``FAULT_LATENCY_SHARE`` of the latency); beside other calls, the slower of that and
        the latency, as the others answer first."""
        if not self.any:
            return 0.0
        quick = self.transient_error_rate + self.rate_limit_rate
        if calls > 1:
            return (self.timeout_rate * max(timeout_s, latency_s) + quick * latency_s) / (
                self.timeout_rate + quick
            )
        return (self.timeout_rate * timeout_s + quick * FAULT_LATENCY_SHARE * latency_s) / (
            self.timeout_rate + quick
        )


class ModelProfile(_Strict):
    """What the planner knows of a model: price, latency and per-call success.

    Give ``usd_per_call``, or token prices (``usd_per_1m_input`` and
    ``usd_per_1m_output``) together with the expected tokens of a call. A hosted
    endpoint's profile may leave prices out when genai-prices knows the model
    (see :mod:`trilemma.spec.prices`).
    """

    usd_per_call: Price | None = None
    """Dollars a call costs, whatever its tokens; or give token prices."""
    usd_per_1m_input: Price | None = None
    """Dollars per million prompt tokens (with ``usd_per_1m_output``)."""
    usd_per_1m_output: Price | None = None
    """Dollars per million completion tokens (with ``usd_per_1m_input``)."""
    usd_per_1m_cached_input: Price | None = None
    """Prompt tokens the endpoint serves from its prompt (prefix) cache, per million; without
    it they are billed at ``usd_per_1m_input``."""
    prompt_tokens: Tokens = 400
    """Prompt tokens the planner expects a call to send, at token prices."""
    cached_prompt_tokens: Tokens = 0
    """Of a call's ``prompt_tokens``, how many the planner expects the endpoint to serve from
    its prompt cache (a system prompt every call shares, say)."""
    completion_tokens: Tokens = 200
    """Completion tokens the planner expects a call to get back (priced up to ``max_tokens``)."""
    latency_s: Seconds
    """Seconds a call takes: the planner's figure, and the simulator's wait."""
    p_ok: Probability
    """Chance a call's answer passes its step's check (the simulator draws it)."""
    latency_jitter: Annotated[float, Field(ge=0.0, le=3.0, allow_inf_nan=False)] = 0.0
    """Lognormal sigma of a call's latency around ``latency_s`` (0: always the same)."""
    faults: Faults = Faults()
    """Provider errors the simulator injects (see :class:`Faults`)."""
    provider: Literal["sim", "openai"] | None = None
    """``openai`` for an OpenAI-compatible endpoint; none (or ``sim``) for the simulator."""
    base_url: str | None = None
    """The endpoint's base URL, such as ``http://127.0.0.1:8081/v1`` (``provider: openai``)."""
    model: str | None = None
    """The model name the endpoint knows (``provider: openai``)."""
    api_key_env: Annotated[str, Field(pattern=r"^[A-Za-z_][A-Za-z0-9_]*$")] | None = None
    """The environment variable holding the API key; the key itself is never written anywhere."""
    max_tokens: Annotated[int, Field(ge=1, le=1_000_000)] = 256
    """The most tokens a call may generate (sent to the endpoint; bounds the reservation)."""
    temperature: Annotated[float, Field(ge=0.0, le=2.0, allow_inf_nan=False)] | None = None
    """Sampling temperature sent to the endpoint."""
    timeout_s: Seconds = 60.0
    """Seconds a call may take before it is given up as a timeout (a failed attempt)."""
    hedge_after_s: Seconds | None = None
    """Send a second copy of a call still unanswered after this many seconds; the first
    answer wins, the other copy is cancelled and billed at its reservation. Pays off only
    when latency varies (``latency_jitter`` in the planner): see docs/hedging.md."""
    max_concurrency: Annotated[int, Field(ge=1, le=1_000_000)] | None = None
    """The most calls to this model in flight at once, across the run (or the batch)."""
    rpm: PerMinute | None = None
    """The most requests a minute this model takes."""
    tpm: PerMinute | None = None
    """The most tokens a minute this model takes: a call holds its prompt and its ``max_tokens``."""
    _minute_s: float = PrivateAttr(default=60.0)
    api: Literal["chat", "completions"] = "chat"
    """``chat`` (chat completions) or ``completions`` (the legacy text endpoint)."""
    stop: list[str] | None = None
    """Stop sequences sent with each call."""
    calibration: dict[str, Any] | None = None
    """What ``trilemma calibrate`` measured to fit this profile (kept for the record)."""
    prices_from: SkipJsonSchema[str | None] = None
    """Where the token prices came from when the spec gave none (set on loading)."""

    @model_validator(mode="before")
    @classmethod
    def _hosted_prices(cls, data: Any) -> Any:
        """A hosted model with no price in the spec: its token prices from genai-prices."""
        if not isinstance(data, dict) or data.get("provider") != "openai":
            return data
        given = ("usd_per_call", "usd_per_1m_input", "usd_per_1m_output")
        model, url = data.get("model"), data.get("base_url")
        if any(data.get(k) is not None for k in given) or not (
            isinstance(model, str) and isinstance(url, str) and model and url
        ):
            return data
        found = hosted_prices(model, url)
        if isinstance(found, str):
            raise ValueError(f"{NO_PRICE} ({found})")
        cached = data.get("usd_per_1m_cached_input", found.usd_per_1m_cached_input)
        return {**data, "usd_per_1m_input": found.usd_per_1m_input,
                "usd_per_1m_output": found.usd_per_1m_output, "usd_per_1m_cached_input": cached,
                "prices_from": found.source}  # fmt: skip

    @model_validator(mode="after")
    def _has_a_price(self) -> ModelProfile:
        tokens = self.usd_per_1m_input is not None and self.usd_per_1m_output is not None
        if self.usd_per_call is None and not tokens:
            raise ValueError(NO_PRICE)
        if self.cached_prompt_tokens > self.prompt_tokens:
            raise ValueError(f"cached_prompt_tokens ({self.cached_prompt_tokens}) is more than "
                             f"prompt_tokens ({self.prompt_tokens}); it counts a part of them")  # fmt: skip
        if self.usd_per_1m_cached_input is not None and not tokens:
            raise ValueError("usd_per_1m_cached_input prices tokens: give usd_per_1m_input and "
                             "usd_per_1m_output too")  # fmt: skip
        if self.cached_prompt_tokens and self.usd_per_1m_cached_input is None:
            raise ValueError("cached_prompt_tokens needs usd_per_1m_cached_input, the price of "
                             "the prompt tokens the endpoint serves from its cache")  # fmt: skip
        if self.hedge_after_s is not None and self.hedge_after_s >= self.timeout_s:
            raise ValueError(f"hedge_after_s ({self.hedge_after_s:g}) must be below timeout_s "
                             f"({self.timeout_s:g}): a call is given up before its hedge is sent")  # fmt: skip
        if self.provider == "openai" and (not self.base_url or not self.model):
            raise ValueError("provider openai needs base_url and model (the endpoint's model name)")
        return self

    @property
    def minute_s(self) -> float:
        """The seconds a minute of ``rpm`` and ``tpm`` lasts: 60, or less in a time-scaled
        copy (:func:`trilemma.experiments.trials.time_scaled`), whose buckets hold as many
        calls as the spec's and refill as much faster as its time runs."""
        return self._minute_s

    @property
    def limited(self) -> bool:
        """It has limits (``max_concurrency``, ``rpm`` or ``tpm``), which every call to it
        shares: a batch's runs, or an experiment's going at a time, share them too."""
        return bool(self.max_concurrency or self.rpm or self.tpm)

    @property
    def runs_on_simulator(self) -> bool:
        """No provider block (or ``provider: sim``): the built-in simulator answers."""
        return self.provider in (None, "sim")

    @property
    def price_per_call(self) -> float:
        """Dollars for one call: ``usd_per_call``, else the expected tokens at token prices
        (``cached_prompt_tokens`` of the prompt at the cached price), the answer cut at
        ``max_tokens``."""
        return self.price_at()

    def price_at(self, max_tokens: int | None = None) -> float:
        """Dollars for one call of a step whose answers stop at ``max_tokens`` (the step's;
        None: this profile's): an endpoint generates no more, so ``completion_tokens`` are
        counted up to it."""
        if self.usd_per_call is not None:
            return self.usd_per_call
        completion = min(self.completion_tokens, max_tokens or self.max_tokens)
        return self.token_cost(self.prompt_tokens, completion, self.cached_prompt_tokens)

    def reserved_per_call(self, max_tokens: int | None = None) -> float:
        """Dollars the executor holds under a spend ceiling before one call: ``usd_per_call``,
        else the prompt and every token the call may generate (``max_tokens``, the step's or
        this profile's) at token prices. The simulator reports ``prompt_tokens``, and is held
        at them; a real endpoint's prompt is held at its bytes and a chat template's tokens
        (no tokenizer makes more of it), here the expected prompt's: ``BYTES_PER_TOKEN`` a
        token of ``prompt_tokens``, in one message."""
        if self.usd_per_call is not None:
            return self.usd_per_call
        prompt = self.prompt_tokens
        if not self.runs_on_simulator:
            prompt = BYTES_PER_TOKEN * prompt + TEMPLATE_TOKENS_PER_MESSAGE
        return self.token_cost(prompt, max_tokens or self.max_tokens)

    def token_cost(self, prompt: int, completion: int, cached: int = 0) -> float:
        """Dollars for tokens at the token prices, the one formula the planner, a call's
        reservation and its bill share: ``cached`` of the ``prompt`` at
        ``usd_per_1m_cached_input``, or at the input price when the profile gives none."""
        assert self.usd_per_1m_input is not None and self.usd_per_1m_output is not None
        cached_price = self.usd_per_1m_cached_input
        if cached_price is None:
            cached, cached_price = 0, 0.0
        cached = min(cached, prompt)
        return (
            self.usd_per_1m_input * (prompt - cached)
            + cached_price * cached
            + self.usd_per_1m_output * completion
        ) / 1e6


class Debate(_Strict):
    """A debate: ``agents`` answer in parallel each round, ``rounds`` in sequence.

    Round 1 proposes; each later round shows every agent the others' answers to
    critique and revise. A ``judge`` call then picks the answer; without one the
    final answers vote.
    """

    agents: Annotated[int, Field(ge=1, le=1000)]
    """Agents answering in parallel each round."""
    rounds: Annotated[int, Field(ge=1, le=1000)]
    """Rounds in sequence: the first proposes, each later one critiques and revises."""
    judge: bool = False
    """A judge call picks the answer; without one the final answers vote."""


class Vote(_Strict):
    """Self-consistency: ``samples`` answers in parallel, the majority wins."""

    samples: Annotated[int, Field(ge=1, le=1000)]
    """Answers sampled in parallel; the majority wins."""


class Gate(_Strict):
    """A validation gate: exactly one check; a rejected answer is a failed attempt.

    ``feedback`` sends the rejection reason back to the model on the retry.
    """

    regex: str | None = None
    """The answer must match this regular expression."""
    json_schema: dict[str, Any] | None = None
    """The answer must be JSON valid under this JSON Schema."""
    pydantic: Annotated[str, Field(pattern=r"^[\w.]+:[\w.]+$")] | None = None
    """The answer must validate as this pydantic model, named ``module:Model``."""
    python: Annotated[str, Field(pattern=r"^[\w.]+:[\w.]+$")] | None = None
    """This callable, named ``module:function``, must accept the answer."""
    feedback: bool = True
    """Send the rejection reason back to the model on the retry."""

    @field_validator("regex")
    @classmethod
    def _a_regex(cls, value: str | None) -> str | None:
        """Compiled as the executor compiles it (the ``regex`` module), so that ``estimate``
        names a broken pattern, not only ``run``."""
        if value is not None:
            import regex  # imported only for a spec with a regex gate

            try:
                regex.compile(value)
            except regex.error as exc:
                raise ValueError(f"not a regular expression: {exc}") from None
        return value

    @field_validator("json_schema")
    @classmethod
    def _a_json_schema(cls, value: dict[str, Any] | None) -> dict[str, Any] | None:
        """Checked against JSON Schema 2020-12's metaschema, as the executor's gate reads it."""
        if value is not None:
            import jsonschema  # imported only for a spec with a JSON schema gate

            try:
                jsonschema.Draft202012Validator.check_schema(value)
            except jsonschema.SchemaError as exc:
                at = "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in exc.path)
                where = f" at {at.removeprefix('.')}" if at else ""
                raise ValueError(f"not a JSON Schema{where}: {exc.message}") from None
        return value

    @model_validator(mode="after")
    def _exactly_one(self) -> Gate:
        given = [k for k in ("regex", "json_schema", "pydantic", "python") if getattr(self, k)]
        if len(given) != 1:
            raise ValueError(
                "a gate takes exactly one of regex, json_schema, pydantic (module:Model) "
                f"or python (module:function); got {given or 'none'}"
            )
        return self


class SimAnswers(_Strict):
    """What the simulator answers for a step; ``{step}`` and ``{attempt}`` are filled in."""

    ok: str = "answer of {step} (attempt {attempt})"
    """The answer of an attempt that succeeds."""
    bad: str = "WRONG answer of {step} (attempt {attempt})"
    """The answer of an attempt that fails its check."""


_F = TypeVar("_F", "Step", "Branch")


def _one_form(asked: _F) -> _F:
    """A step or a branch is asked one way: ``debate_rounds``, ``debate`` or ``vote``."""
    if sum([bool(asked.debate_rounds), asked.debate is not None, asked.vote is not None]) > 1:
        raise ValueError(
            "give one of debate_rounds (the seed's sequential rounds), debate: "
            "{agents, rounds} or vote: {samples}, not several"
        )
    return asked


class Branch(_Strict):
    """One way a routed step may answer: a model, and how it is asked (a call, a debate, a vote).

    ``share`` is for planning: how often the step's classifier picks this branch.
    """

    share: Probability
    """How often the classifier picks this branch (planning only; the shares add up to 1)."""
    model: str
    """The model profile this branch runs on."""
    debate_rounds: Annotated[int, Field(ge=0, le=1000)] = 0
    """The seed's sequential refinement rounds: calls = 1 + debate_rounds."""
    debate: Debate | None = None
    """Ask as a debate (see :class:`Debate`)."""
    vote: Vote | None = None
    """Ask as a vote (see :class:`Vote`)."""
    p_ok: Probability | None = None
    """This branch's chance of success, in place of its model's ``p_ok``."""

    @model_validator(mode="after")
    def _one_debate_form(self) -> Branch:
        return _one_form(self)


ROUTE_LABEL_PATTERN = r"^[A-Za-z][A-Za-z0-9_-]*$"


class CacheRule(_Strict):
    """``cached: {...}``: how a step is served from the journal's cache.

    Always an exact hit first (the same prompt and settings); with ``similarity``
    also the answer to an earlier prompt whose embedding (all-MiniLM-L6-v2) is at
    least that similar, for the same model and settings. ``hit_rate`` is for
    planning: the chance a run finds the answer cached (1, the seed's assumption,
    plans every run as a hit; a measured rate plans the mixture).
    """

    similarity: Annotated[float, Field(gt=0.0, le=1.0, allow_inf_nan=False)] | None = None
    """Also serve the answer to an earlier prompt at least this similar (cosine, 0-1)."""
    hit_rate: Fraction = 1.0
    """Planning: the chance a run finds the answer cached."""


class Step(_Strict):
    """One node of the workflow DAG."""

    id: Annotated[str, Field(pattern=STEP_ID_PATTERN, max_length=128)]
    """Unique name of the step: letters, digits, ``_`` and ``-``."""
    model: str
    """The model profile the step runs on (a key of ``models``)."""
    after: list[str] = []
    """Steps this one waits for; steps with no path between them may run in parallel."""
    retries: Annotated[int, Field(ge=0, le=100)] = 0
    """Extra attempts after a failed one, whatever failed (default 0)."""
    debate_rounds: Annotated[int, Field(ge=0, le=1000)] = 0
    """The seed's sequential refinement rounds: calls = 1 + debate_rounds."""
    debate: Debate | None = None
    """Ask as a debate: agents x rounds, then a judge or a vote (see :class:`Debate`)."""
    vote: Vote | None = None
    """Self-consistency: samples in parallel, the majority answer (see :class:`Vote`)."""
    escalate: list[str] | None = None
    """A cascade: the models a failed attempt moves up to, in order; ``retries`` must reach
    the last."""
    route: dict[Annotated[str, Field(pattern=ROUTE_LABEL_PATTERN, max_length=64)], Branch] | None = None
    """A routed step: its own model classifies the task by these labels, then the chosen
    branch answers (see :class:`Branch`)."""
    cached: bool | CacheRule = False
    """Served from the journal's cache: ``true`` on an exact match of the prompt and settings;
    ``{similarity: S, hit_rate: H}`` also on a similar prompt, planned as a hit ``H`` of the
    time (see :class:`CacheRule`)."""
    p_ok: Probability | None = None
    """This step's chance of success per attempt, in place of its model's ``p_ok`` (a debate's
    or a gate's effect)."""
    recall: Fraction | None = None
    """The Monte Carlo's chance this step's gate catches a wrong answer, in place of
    ``simulation.recall``."""
    # What the executor sends and checks.
    prompt: str | None = None
    """The prompt template: ``{name}`` reads a run input or the output of a step it depends on."""
    system: str | None = None
    """The system prompt template, read as ``prompt`` is."""
    max_tokens: Annotated[int, Field(ge=1, le=1_000_000)] | None = None
    """The most tokens this step's calls may generate, in place of the profile's."""
    gate: Gate | None = None
    """The check an answer must pass before any later step sees it (see :class:`Gate`)."""
    extract: Literal["number"] | None = None
    """``number``: what goes downstream is the number the answer gives (an answer without one
    is rejected)."""
    sim: SimAnswers = SimAnswers()
    """What the simulator answers for this step (see :class:`SimAnswers`)."""
    # Levers the optimizer may pull, each opted into by the user.
    candidates: list[str] | None = None
    """Models the optimizer may run this step on."""
    cacheable: bool = False
    """The optimizer may serve this step from the cache."""
    cascadable: bool = False
    """The optimizer may make this step a cascade over its candidates, cheapest first."""
    independent: bool = False
    """The optimizer may run this step beside the other independent steps."""
    debate_round_options: list[Annotated[int, Field(ge=0, le=1000)]] | None = None
    """The ``debate_rounds`` values the optimizer may choose from."""
    cuttable: bool = False
    """The optimizer may cut this step when the budgets cannot be met with it; the steps
    after it then run after its own dependencies."""
    stoppable: bool = False
    """The optimizer may end the run when this step passes (``stop_when``), where that
    stop is cheaper within the budgets than none."""
    difficulty: Literal["easy", "hard"] | None = None
    """A label, ``easy`` or ``hard``, that the seed's routing exercise gives its steps."""

    @model_validator(mode="after")
    def _one_debate_form(self) -> Step:
        return _one_form(self)

    @model_validator(mode="after")
    def _escalation_reachable(self) -> Step:
        if not self.escalate:
            return self
        if self.p_ok is not None:
            raise ValueError(
                "p_ok: a step that escalates succeeds with each model's own p_ok; "
                "remove the step's p_ok or its escalate"
            )
        if self.retries < len(self.escalate):
            raise ValueError(
                f"retries: {self.retries} extra attempt(s) cannot reach the {len(self.escalate)} "
                f"model(s) of escalate (each failed attempt moves up one); set retries to at "
                f"least {len(self.escalate)}"
            )
        return self

    @model_validator(mode="after")
    def _route_alone(self) -> Step:
        if self.route is None:
            return self
        clash = [k for k in ("debate_rounds", "debate", "vote", "escalate", "p_ok", "candidates",
                             "cascadable", "debate_round_options") if getattr(self, k)]  # fmt: skip
        if clash:
            raise ValueError(
                f"a routed step's branches say how it is asked; move {clash[0]} into a branch "
                "of route: or drop it"
            )
        if len(self.route) < 2:
            raise ValueError("route: give two or more branches, such as easy: and hard:")
        total = math.fsum(b.share for b in self.route.values())
        if abs(total - 1.0) > 1e-6:
            raise ValueError(f"route: the branches' shares add up to {total:g}; make them add up to 1")
        return self

    def branch_step(self, label: str) -> Step:
        """The step as its branch ``label`` runs it: the branch's model and kind, no route."""
        assert self.route is not None
        b = self.route[label]
        return self.model_copy(update={
            "model": b.model, "debate_rounds": b.debate_rounds, "debate": b.debate,
            "vote": b.vote, "p_ok": b.p_ok, "route": None,
        })  # fmt: skip

    @property
    def cache_rule(self) -> CacheRule | None:
        """The step's cache rule (``cached: true`` is the default rule), or None."""
        if isinstance(self.cached, CacheRule):
            return self.cached
        return CacheRule() if self.cached else None

    @property
    def kind(self) -> Literal["call", "debate", "vote", "route"]:
        """What the executor runs: a (refined) call, a debate, a vote, or a routed step."""
        if self.route is not None:
            return "route"
        return "debate" if self.debate else "vote" if self.vote else "call"

    @property
    def by_majority(self) -> bool:
        """Its answer is the majority of its last wave: a vote, or a debate without a judge."""
        return self.vote is not None or (self.debate is not None and not self.debate.judge)

    @property
    def waves(self) -> tuple[int, ...]:
        """The calls of one attempt (not a routed step's), wave by wave: a wave's calls are
        sent together and the next waits for all of them. A debate's rounds of ``agents``
        then its judge, a vote's samples at once, a call and its refinements one by one."""
        if self.debate is not None:
            return (self.debate.agents,) * self.debate.rounds + (1,) * self.debate.judge
        if self.vote is not None:
            return (self.vote.samples,)
        return (1,) * (1 + self.debate_rounds)

    @property
    def calls(self) -> int:
        """LLM calls of one attempt: ``1 + debate_rounds``, ``agents x rounds`` (+ judge), or samples.

        A routed step: the classifier's call and its largest branch's.
        """
        if self.route is not None:
            return 1 + max(self.branch_step(k).calls for k in self.route)
        if self.debate is not None:  # sum(waves), without building them (every estimate asks)
            return self.debate.agents * self.debate.rounds + self.debate.judge
        return self.vote.samples if self.vote is not None else 1 + self.debate_rounds

    @property
    def sequential_calls(self) -> int:
        """Calls of one attempt that wait on each other (its latency in model latencies)."""
        if self.route is not None:
            return 1 + max(self.branch_step(k).sequential_calls for k in self.route)
        if self.debate is not None:  # len(waves)
            return self.debate.rounds + self.debate.judge
        return 1 if self.vote is not None else 1 + self.debate_rounds

    def placeholders(self) -> list[str]:
        """The ``{names}`` its prompt and system prompt use."""
        return [name for _, name in self.placeholder_fields()]

    def placeholder_fields(self) -> list[tuple[str, str]]:
        """Each ``{name}`` of its prompt and system prompt, with the field that uses it."""
        return [(field, name) for field, text in (("prompt", self.prompt), ("system", self.system))
                if text for name in template_fields(text)]  # fmt: skip


class Budget(_Strict):
    """The user's budgets; every one is optional."""

    max_cost_usd: Price | None = None
    """The spend ceiling of a run, in dollars (``--max-cost`` overrides it)."""
    deadline_s: Seconds | None = None
    """The deadline of a run, in seconds (``--deadline`` overrides it)."""
    min_reliability: Probability | None = None
    """The least end-to-end success the optimizer may accept."""

    def resolve(
        self, max_cost_usd: float | None = None, deadline_s: float | None = None
    ) -> tuple[float | None, float | None]:
        """The ceiling and deadline a run holds to: those given (flags) first, else these."""
        return (max_cost_usd if max_cost_usd is not None else self.max_cost_usd,
                deadline_s if deadline_s is not None else self.deadline_s)  # fmt: skip


class Simulation(_Strict):
    """How the Monte Carlo departs from the analytic model's assumptions.

    ``recall``: chance a gate catches a failed answer (an uncaught failure
    passes downstream and the run is wrong). ``retry_correlation``: chance a
    retry fails the same way as the attempt it retries. ``compounding``: a
    step's p is multiplied by this after an uncaught failure upstream of it.
    """

    recall: Fraction = 1.0
    """Chance a gate catches a failed answer; an uncaught one passes downstream."""
    retry_correlation: Fraction = 0.0
    """Chance a retry fails the same way as the attempt it retries."""
    compounding: Fraction = 1.0
    """A step's p is multiplied by this after an uncaught failure upstream of it."""


class Workflow(_Strict):
    """A validated workflow: models, a DAG of steps and optional budgets."""

    version: int
    """The spec format's version: 1."""
    name: str | None = None
    """A name for the workflow, shown in reports."""
    description: str | None = None
    """What the workflow is for."""
    models: dict[str, ModelProfile]
    """Named model profiles the steps run on (see :class:`ModelProfile`)."""
    steps: list[Step]
    """The steps, a DAG through their ``after`` (see :class:`Step`)."""
    budget: Budget = Budget()
    """Cost, deadline and reliability budgets, all optional (see :class:`Budget`)."""
    seed: Annotated[int, Field(ge=0, le=MAX_SEED)] | None = None
    """Seed of the simulator and the Monte Carlo, so that a run repeats (``--seed`` overrides it).
"""
    simulation: Simulation = Simulation()
    """How the Monte Carlo departs from the analytic model (see :class:`Simulation`)."""
    inputs: dict[Annotated[str, Field(pattern=STEP_ID_PATTERN)], str | None] = {}
    """The run inputs the prompts read, each with a default or none (then ``--input`` must give
    it)."""
    stop_when: str | None = None
    """End the run as soon as this step passes its gate."""
    concurrency: Annotated[int, Field(ge=1, le=10_000)] = 16
    """The most calls a run has in flight at once (default 16)."""

    def seed_for(self, seed: int | None = None) -> int:
        """The seed a run or a Monte Carlo draws with: ``seed`` if given, else the spec's,
        else a fresh one (reported with the result, so that ``--seed`` repeats it)."""
        if seed is None:
            seed = self.seed
        return seed if seed is not None else random.SystemRandom().randrange(2**31)

    @property
    def endpoints(self) -> tuple[str, ...]:
        """The models served by real endpoints (which bill), by name; the others simulated."""
        return tuple(sorted(n for n, m in self.models.items() if not m.runs_on_simulator))

    @property
    def limited(self) -> bool:
        """A model has limits (:attr:`ModelProfile.limited`), which every run on it shares."""
        return any(m.limited for m in self.models.values())

    def with_budget(self, **fields: Any) -> Workflow:
        """The workflow with these budget fields changed (``deadline_s=10``, ...)."""
        return self.model_copy(update={"budget": self.budget.model_copy(update=fields)})

    def only(self, ids: Collection[str]) -> Workflow:
        """The workflow of the steps in ``ids`` alone, in spec order, their dependencies on the
        other steps dropped (as if those had finished), and ``stop_when`` kept only if its
        step is among them: what is left of a run, for the planner. Not validated again."""
        keep = [s.model_copy(update={"after": [a for a in s.after if a in ids]})
                for s in self.steps if s.id in ids]  # fmt: skip
        stop = self.stop_when if self.stop_when in ids else None
        return self.model_copy(update={"steps": keep, "stop_when": stop})

    def step(self, step_id: str) -> Step:
        """The step with this id (``KeyError`` if there is none): a scan, so a loop over
        the steps builds its own index."""
        for s in self.steps:
            if s.id == step_id:
                return s
        raise KeyError(step_id)

    def profile(self, step: Step) -> ModelProfile:
        """The model profile a step runs on."""
        return self.models[step.model]

    def p_ok(self, step: Step, model: str | None = None) -> float:
        """Per-attempt success of a step: its override, else its model's (or ``model``'s)."""
        if step.p_ok is not None:
            return step.p_ok
        return self.models[model or step.model].p_ok

    def route_shares(self, step: Step) -> dict[str, float]:
        """How often each branch of a routed step answers, for planning.

        The classifier (the step's model) names the planned branch with its ``p_ok``;
        an answer that names no branch goes to the first one.
        """
        assert step.route is not None
        p = self.models[step.model].p_ok
        shares = {k: p * b.share for k, b in step.route.items()}
        shares[next(iter(step.route))] += 1.0 - p
        return shares

    def step_models(self, step: Step) -> list[str]:
        """The models a step may call: its ladder (its own, a cascade's rungs), a route's
        branches' (its own model classifies)."""
        return [*self.ladder(step), *(b.model for b in (step.route or {}).values())]

    def ladder(self, step: Step) -> list[str]:
        """The models a step's attempts run on: its model, then each of ``escalate``.

        Attempt ``n`` (from 1) runs on ``ladder[n - 1]``; attempts past the end stay
        on the last model. Without ``escalate`` every attempt runs on the step's model.
        """
        return [step.model, *step.escalate] if step.escalate else [step.model]

    def attempt_model(self, step: Step, attempt: int) -> str:
        """The model attempt ``attempt`` (from 1) of a step runs on."""
        if not step.escalate:
            return step.model
        return self.ladder(step)[min(attempt, len(step.escalate) + 1) - 1]

    def edges(self) -> dict[str, list[str]]:
        """Each step id mapped to the ids it depends on."""
        return {s.id: list(s.after) for s in self.steps}
