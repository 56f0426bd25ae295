"""The workflow spec: pydantic models, YAML/JSON loading and validation.

A spec names model profiles, lists steps (a DAG through ``after:``) and may set
a budget. Every way a spec can be wrong becomes one :class:`SpecError` that
names the file, the field path (``steps[2].retries``) and the fix.

>>> wf = parse_workflow('''
... version: 1
... models: {premium: {usd_per_call: 0.03, latency_s: 2.0, p_ok: 0.985}}
... steps: [{id: plan, model: premium}]
... ''')
>>> wf.steps[0].id
'plan'
"""

from __future__ import annotations

import difflib
import functools
import json
import math
import string
import types
import typing
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    model_validator,
)

from trilemma import dag
from trilemma.errors import CycleError, SpecError

__all__ = [
    "SPEC_VERSION",
    "Budget",
    "Debate",
    "Faults",
    "Gate",
    "ModelProfile",
    "SimAnswers",
    "Simulation",
    "Step",
    "Vote",
    "Workflow",
    "dump_workflow",
    "load_workflow",
    "parse_workflow",
    "render_template",
    "template_fields",
    "workflow_from_dict",
]

SPEC_VERSION = 1
MAX_SPEC_BYTES = 5_000_000
MAX_EXPANDED_NODES = 200_000
STEP_ID_PATTERN = r"^[A-Za-z0-9_-]+$"


def _finite(value: float) -> float:
    if not math.isfinite(value):
        raise ValueError("must be a finite number, not inf or nan")
    return value


Probability = Annotated[float, Field(gt=0.0, le=1.0), AfterValidator(_finite)]
Rate = Annotated[float, Field(ge=0.0, lt=1.0), AfterValidator(_finite)]
Price = Annotated[float, Field(ge=0.0), AfterValidator(_finite)]
Seconds = Annotated[float, Field(gt=0.0), AfterValidator(_finite)]
Fraction = Annotated[float, Field(ge=0.0, le=1.0), AfterValidator(_finite)]


class _Strict(BaseModel):
    model_config = ConfigDict(
        extra="forbid", frozen=True
    )  # strings kept exactly: "\n" is a stop sequence


class Faults(_Strict):
    """Provider errors the simulator injects, each a per-attempt probability."""

    transient_error_rate: Rate = 0.0
    rate_limit_rate: Rate = 0.0
    timeout_rate: Rate = 0.0


class ModelProfile(_Strict):
    """What the planner knows of a model: price, latency and per-call success.

    Give ``usd_per_call``, or token prices (``usd_per_1m_input`` and
    ``usd_per_1m_output``) together with the expected tokens of a call.
    """

    usd_per_call: Price | None = None
    usd_per_1m_input: Price | None = None
    usd_per_1m_output: Price | None = None
    prompt_tokens: Annotated[int, Field(ge=0)] = 400
    completion_tokens: Annotated[int, Field(ge=0)] = 200
    latency_s: Seconds
    p_ok: Probability
    latency_jitter: Annotated[float, Field(ge=0.0, le=3.0), AfterValidator(_finite)] = 0.0
    faults: Faults = Faults()
    provider: Literal["sim", "openai"] | None = None
    base_url: str | None = None
    model: str | None = None
    api_key_env: Annotated[str, Field(pattern=r"^[A-Za-z_][A-Za-z0-9_]*$")] | None = None
    max_tokens: Annotated[int, Field(ge=1, le=1_000_000)] = 256
    temperature: Annotated[float, Field(ge=0.0, le=2.0)] | None = None
    timeout_s: Seconds = 60.0
    max_concurrency: Annotated[int, Field(ge=1)] | None = None
    rpm: Annotated[int, Field(ge=1)] | None = None
    tpm: Annotated[int, Field(ge=1)] | None = None
    api: Literal["chat", "completions"] = "chat"
    stop: list[str] | None = None
    calibration: dict[str, Any] | None = None

    @model_validator(mode="after")
    def _has_a_price(self) -> ModelProfile:
        tokens = self.usd_per_1m_input is not None and self.usd_per_1m_output is not None
        if self.usd_per_call is None and not tokens:
            raise ValueError(
                "no price: give usd_per_call, or usd_per_1m_input and usd_per_1m_output"
            )
        if self.provider == "openai" and (not self.base_url or not self.model):
            raise ValueError("provider openai needs base_url and model (the endpoint's model name)")
        return self

    @property
    def runs_on_simulator(self) -> bool:
        """No provider block (or ``provider: sim``): the built-in simulator answers."""
        return self.provider in (None, "sim")

    @property
    def price_per_call(self) -> float:
        """Dollars for one call: ``usd_per_call``, else the expected tokens at token prices."""
        if self.usd_per_call is not None:
            return self.usd_per_call
        assert self.usd_per_1m_input is not None and self.usd_per_1m_output is not None
        return (
            self.usd_per_1m_input * self.prompt_tokens
            + self.usd_per_1m_output * self.completion_tokens
        ) / 1e6


class Debate(_Strict):
    """A debate: ``agents`` answer in parallel each round, ``rounds`` in sequence.

    Round 1 proposes; each later round shows every agent the others' answers to
    critique and revise. A ``judge`` call then picks the answer; without one the
    final answers vote.
    """

    agents: Annotated[int, Field(ge=1, le=1000)]
    rounds: Annotated[int, Field(ge=1, le=1000)]
    judge: bool = False


class Vote(_Strict):
    """Self-consistency: ``samples`` answers in parallel, the majority wins."""

    samples: Annotated[int, Field(ge=1, le=1000)]


class Gate(_Strict):
    """A validation gate: exactly one check; a rejected answer is a failed attempt.

    ``feedback`` sends the rejection reason back to the model on the retry.
    """

    regex: str | None = None
    json_schema: dict[str, Any] | None = None
    pydantic: Annotated[str, Field(pattern=r"^[\w.]+:[\w.]+$")] | None = None
    python: Annotated[str, Field(pattern=r"^[\w.]+:[\w.]+$")] | None = None
    feedback: bool = True

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
    bad: str = "WRONG answer of {step} (attempt {attempt})"


class Step(_Strict):
    """One node of the workflow DAG."""

    id: Annotated[str, Field(pattern=STEP_ID_PATTERN, max_length=128)]
    model: str
    after: list[str] = []
    retries: Annotated[int, Field(ge=0, le=100)] = 0
    debate_rounds: Annotated[int, Field(ge=0, le=1000)] = 0
    debate: Debate | None = None
    vote: Vote | None = None
    cached: bool = False
    p_ok: Probability | None = None
    recall: Fraction | None = None
    # What the executor sends and checks.
    prompt: str | None = None
    system: str | None = None
    max_tokens: Annotated[int, Field(ge=1, le=1_000_000)] | None = None
    gate: Gate | None = None
    extract: Literal["number"] | None = None
    sim: SimAnswers = SimAnswers()
    # Levers the optimizer may pull, each opted into by the user.
    candidates: list[str] | None = None
    cacheable: bool = False
    independent: bool = False
    debate_round_options: list[Annotated[int, Field(ge=0, le=1000)]] | None = None
    difficulty: Literal["easy", "hard"] | None = None

    @model_validator(mode="after")
    def _one_debate_form(self) -> Step:
        forms = [bool(self.debate_rounds), self.debate is not None, self.vote is not None]
        if sum(forms) > 1:
            raise ValueError(
                "give one of debate_rounds (the seed's sequential rounds), debate: "
                "{agents, rounds} or vote: {samples}, not several"
            )
        return self

    @property
    def kind(self) -> Literal["call", "debate", "vote"]:
        """What the executor runs: a (refined) call, a debate or a vote."""
        return "debate" if self.debate else "vote" if self.vote else "call"

    @property
    def calls(self) -> int:
        """LLM calls of one attempt: ``1 + debate_rounds``, ``agents x rounds`` (+ judge), or samples."""
        if self.debate is not None:
            return self.debate.agents * self.debate.rounds + self.debate.judge
        if self.vote is not None:
            return self.vote.samples
        return 1 + self.debate_rounds

    @property
    def sequential_calls(self) -> int:
        """Calls of one attempt that wait on each other (its latency in model latencies)."""
        if self.debate is not None:
            return self.debate.rounds + self.debate.judge
        if self.vote is not None:
            return 1
        return 1 + self.debate_rounds

    def placeholders(self) -> list[str]:
        """The ``{names}`` its prompt and system prompt use."""
        return [n for text in (self.prompt, self.system) if text for n in template_fields(text)]


class Budget(_Strict):
    """The user's budgets; every one is optional."""

    max_cost_usd: Price | None = None
    deadline_s: Seconds | None = None
    min_reliability: Probability | None = None


class Simulation(_Strict):
    """How the Monte Carlo departs from the analytic model's assumptions.

    ``recall``: chance a gate catches a failed answer (an uncaught failure
    passes downstream and the run is wrong). ``retry_correlation``: chance a
    retry fails the same way as the attempt it retries. ``compounding``: a
    step's p is multiplied by this after an uncaught failure upstream of it.
    """

    recall: Fraction = 1.0
    retry_correlation: Fraction = 0.0
    compounding: Fraction = 1.0


class Workflow(_Strict):
    """A validated workflow: models, a DAG of steps and optional budgets."""

    version: int
    name: str | None = None
    description: str | None = None
    models: dict[str, ModelProfile]
    steps: list[Step]
    budget: Budget = Budget()
    seed: int | None = None
    simulation: Simulation = Simulation()
    inputs: dict[Annotated[str, Field(pattern=STEP_ID_PATTERN)], str | None] = {}
    stop_when: str | None = None
    concurrency: Annotated[int, Field(ge=1, le=10_000)] = 16

    def step(self, step_id: str) -> Step:
        """The step with this id (``KeyError`` if there is none)."""
        for s in self.steps:
            if s.id == step_id:
                return s
        raise KeyError(step_id)

    def profile(self, step: Step) -> ModelProfile:
        """The model profile a step runs on."""
        return self.models[step.model]

    def p_ok(self, step: Step) -> float:
        """Per-attempt success of a step: its override, else its model's."""
        return step.p_ok if step.p_ok is not None else self.models[step.model].p_ok

    def edges(self) -> dict[str, list[str]]:
        """Each step id mapped to the ids it depends on."""
        return {s.id: list(s.after) for s in self.steps}


# --------------------------------------------------------------------------- loading


def load_workflow(path: str | Path) -> Workflow:
    """Read, parse and validate a spec file (YAML or JSON)."""
    p = Path(path)
    source = str(path)
    try:
        raw = p.read_bytes()
    except FileNotFoundError:
        raise SpecError(source, "", "no such file; check the path") from None
    except IsADirectoryError:
        raise SpecError(source, "", "is a directory, not a spec file") from None
    except OSError as exc:
        raise SpecError(source, "", f"cannot read: {exc.strerror}") from None
    if len(raw) > MAX_SPEC_BYTES:
        raise SpecError(source, "", f"file is {len(raw)} bytes; a spec must be under 5 MB")
    if b"\x00" in raw:
        raise SpecError(source, "", "binary file, not a YAML or JSON spec")
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError:
        raise SpecError(source, "", "not UTF-8 text; save the spec as UTF-8 YAML") from None
    return parse_workflow(text, source=source, json_only=p.suffix.lower() == ".json")


def parse_workflow(text: str, source: str = "<string>", *, json_only: bool = False) -> Workflow:
    """Parse and validate a spec given as YAML (or JSON) text."""
    data = _parse_json(text, source) if json_only else _parse_yaml(text, source)
    return workflow_from_dict(data, source)


def workflow_from_dict(data: object, source: str = "<dict>") -> Workflow:
    """Validate already-parsed spec data; the one door every spec goes through."""
    if data is None:
        raise SpecError(source, "", "empty spec; start with `version: 1`, models: and steps:")
    if not isinstance(data, Mapping):
        kind = type(data).__name__
        raise SpecError(source, "", f"the top level is a {kind}, not a mapping of spec fields")
    _check_version(data, source)
    try:
        wf = Workflow.model_validate(dict(data))
    except ValidationError as exc:
        raise _spec_error(exc, source) from None
    _check_references(wf, source)
    return wf


def dump_workflow(wf: Workflow) -> str:
    """The spec as YAML, without defaults, ready to be loaded again."""
    data = wf.model_dump(mode="json", exclude_defaults=True)
    data = {"version": wf.version, **{k: v for k, v in data.items() if k != "version"}}
    return yaml.safe_dump(data, sort_keys=False, default_flow_style=None, width=100)


def _check_version(data: Mapping[Any, Any], source: str) -> None:
    if "version" not in data:
        raise SpecError(source, "version", f"missing; add `version: {SPEC_VERSION}` at the top")
    v = data["version"]
    if isinstance(v, bool) or not isinstance(v, int):
        raise SpecError(source, "version", f"{v!r} is not a version; use `version: 1`")
    if v > SPEC_VERSION:
        raise SpecError(
            source,
            "version",
            f"version {v} is newer than this trilemma understands ({SPEC_VERSION}); "
            "upgrade trilemma",
        )
    if v < SPEC_VERSION:
        raise SpecError(source, "version", f"version {v} does not exist; use `version: 1`")


def _check_references(wf: Workflow, source: str) -> None:
    if not wf.models:
        raise SpecError(source, "models", "no models; name at least one model profile")
    if not wf.steps:
        raise SpecError(source, "steps", "no steps; a workflow needs at least one step")
    seen: dict[str, int] = {}
    for i, step in enumerate(wf.steps):
        if step.id in seen:
            raise SpecError(
                source,
                f"steps[{i}].id",
                f"duplicate step id {step.id!r} (also steps[{seen[step.id]}]); ids must be unique",
            )
        seen[step.id] = i
    for i, step in enumerate(wf.steps):
        _check_name(source, f"steps[{i}].model", step.model, wf.models, "model")
        for j, name in enumerate(step.candidates or []):
            _check_name(source, f"steps[{i}].candidates[{j}]", name, wf.models, "model")
        for j, dep in enumerate(step.after):
            _check_name(source, f"steps[{i}].after[{j}]", dep, seen, "step")
    cycle = dag.find_cycle(wf.edges())
    if cycle:
        raise CycleError(source, cycle)
    if wf.stop_when is not None:
        _check_name(source, "stop_when", wf.stop_when, seen, "step")
    graph = wf.edges()
    for i, step in enumerate(wf.steps):
        for field in ("prompt", "system"):
            text = getattr(step, field)
            if text and not _template_ok(text):
                raise SpecError(
                    source,
                    f"steps[{i}].{field}",
                    "unbalanced { or } in the template; write {{ and }} for literal braces",
                )
        names = [n for n in step.placeholders() if n not in wf.inputs]
        if not names:
            continue
        known = set(wf.inputs) | dag.ancestors(graph, step.id)  # only when a step is named
        for name in names:
            if name not in known:
                raise SpecError(
                    source,
                    f"steps[{i}].prompt",
                    f"{{{name}}} names neither an input nor a step this one runs after"
                    f"{_did_you_mean(name, known)}; declare it under inputs: or add it to after:",
                )


def _check_name(source: str, field: str, name: str, known: Mapping[str, object], what: str) -> None:
    if name in known:
        return
    hint = _did_you_mean(name, known)
    names = ", ".join(sorted(known)[:8])
    raise SpecError(source, field, f"unknown {what} {name!r}{hint}; known: {names}")


@functools.lru_cache(maxsize=1024)
def _parse_template(text: str) -> tuple[tuple[str, str | None], ...] | None:
    """A template as (literal, field or None) pairs; None if its braces do not parse."""
    try:
        return tuple((literal, name) for literal, name, _, _ in string.Formatter().parse(text))
    except ValueError:
        return None


def template_fields(text: str) -> list[str]:
    """The ``{name}`` fields of a prompt template (``{{`` and ``}}`` are literal braces)."""
    return [f for _, f in _parse_template(text) or () if f]


def _template_ok(text: str) -> bool:
    return _parse_template(text) is not None


def render_template(text: str, values: Mapping[str, str]) -> str:
    """Fill a prompt template's ``{name}`` fields; names are plain keys, never attributes."""
    out = []
    for literal, name in _parse_template(text) or ():
        out.append(literal)
        if name is not None:
            out.append(values[name])
    return "".join(out)


def _did_you_mean(name: str, options: typing.Iterable[str]) -> str:
    close = difflib.get_close_matches(name, list(options), n=1, cutoff=0.6)
    return f" (did you mean {close[0]!r}?)" if close else ""


# --------------------------------------------------------------------- parse helpers


def _parse_json(text: str, source: str) -> object:
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise SpecError(
            source, f"line {exc.lineno}, column {exc.colno}", f"JSON syntax error: {exc.msg}"
        ) from None


class _SpecLoader(yaml.SafeLoader):
    """A safe loader that rejects duplicate keys."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        keys: set[Any] = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            if not isinstance(key, typing.Hashable) or key == "<<":
                continue  # the constructor below reports unhashable keys; merges may repeat
            if key in keys:
                mark = key_node.start_mark
                raise yaml.constructor.ConstructorError(None, None, f"duplicate key {key!r}", mark)
            keys.add(key)
        return super().construct_mapping(node, deep=deep)


def _parse_yaml(text: str, source: str) -> object:
    loader = _SpecLoader(text)
    try:
        node = loader.get_single_node()
        if node is None:
            return None
        _check_expansion(node, source)
        return loader.construct_document(node)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        where = f"line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        what = exc.problem or exc.context or "malformed YAML"
        raise SpecError(
            source, where, f"YAML syntax error: {what}; check indentation and quoting"
        ) from None
    except yaml.YAMLError as exc:
        raise SpecError(source, "", f"YAML error: {exc}") from None
    except RecursionError:
        raise SpecError(source, "", "nested too deeply to be a workflow spec") from None
    finally:
        loader.dispose()


def _check_expansion(root: yaml.Node, source: str) -> None:
    """Refuse documents whose aliases expand past a sane size (a 'billion laughs')."""
    sizes: dict[int, int] = {}

    def children(node: yaml.Node) -> Iterator[yaml.Node]:
        if isinstance(node, yaml.SequenceNode):
            yield from node.value
        elif isinstance(node, yaml.MappingNode):
            for k, v in node.value:
                yield k
                yield v

    stack: list[tuple[yaml.Node, bool]] = [(root, False)]
    while stack:
        node, expanded = stack.pop()
        if id(node) in sizes:
            continue
        kids = list(children(node))
        if not expanded and kids:
            stack.append((node, True))
            stack.extend((k, False) for k in kids if id(k) not in sizes)
            continue
        size = 1 + sum(sizes.get(id(k), 1) for k in kids)
        if size > MAX_EXPANDED_NODES:
            raise SpecError(
                source,
                "",
                "YAML aliases expand to over 200,000 nodes (an alias bomb?); "
                "write the spec without nested aliases",
            )
        sizes[id(node)] = size


# --------------------------------------------------------------------- error paths


def _spec_error(exc: ValidationError, source: str) -> SpecError:
    # An unknown field usually explains a 'missing' one beside it (a misspelling): name it first.
    errors = exc.errors(include_url=False)
    err = min(errors, key=lambda e: e["type"] != "extra_forbidden")
    loc = tuple(err["loc"])
    field = _render_loc(loc)
    kind = err["type"]
    value = err.get("input")
    if kind == "extra_forbidden":
        allowed = _fields_at(loc[:-1])
        name = str(loc[-1])
        hint = _did_you_mean(name, allowed)
        return SpecError(
            source, field, f"unknown field {name!r}{hint}; allowed: {', '.join(sorted(allowed))}"
        )
    if kind == "missing":
        return SpecError(source, field, "missing; this field is required")
    msg = err["msg"]
    if msg.startswith("Value error, "):
        msg = msg[len("Value error, ") :]
    shown = _short(value)
    return SpecError(source, field, f"{msg} (got {shown})" if shown is not None else msg)


def _short(value: object) -> str | None:
    if isinstance(value, (dict, list)):
        return None
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


def _render_loc(loc: tuple[Any, ...]) -> str:
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        elif part in ("function-after[_finite(), constrained-float]",):
            continue
        else:
            out += f".{part}" if out else str(part)
    return out


def _fields_at(loc: tuple[Any, ...]) -> set[str]:
    """The field names allowed at a location of the spec, for 'did you mean'."""
    model: type[BaseModel] = Workflow
    for part in loc:
        if isinstance(part, int):
            continue
        field = model.model_fields.get(str(part))
        if field is None:
            if model is Workflow:
                return set(model.model_fields)
            continue  # a key of models: {name: profile}
        nested = _model_in(field.annotation)
        if nested is None:
            break
        model = nested
    return set(model.model_fields)


def _model_in(annotation: object) -> type[BaseModel] | None:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    origin = typing.get_origin(annotation)
    if origin in (list, dict, typing.Union, types.UnionType, Annotated) or origin is not None:
        for arg in typing.get_args(annotation):
            found = _model_in(arg)
            if found is not None:
                return found
    return None
