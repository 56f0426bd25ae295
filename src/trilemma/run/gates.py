"""Validation gates: an answer that fails one is a failed attempt.

A gate returns nothing on success and raises :class:`GateRejected` with a
reason the model can read on its retry. Gates that name Python code
(``pydantic: module:Model``, ``python: module:function``) are imported when
the run starts, so a typo fails before anything is spent.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import importlib
import json
import queue
import re
import sys
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import jsonschema
import pydantic
import regex

from trilemma._tasks import outside_work
from trilemma.errors import GateRejected, RunError, SpecError
from trilemma.spec import Gate

__all__ = ["REGEX_TIMEOUT_S", "Check", "GateThread", "build_gate", "strip_fences"]

Check = Callable[[str], None]

REGEX_TIMEOUT_S = 1.0
"""Longest a regex gate (or a JSON schema gate's ``pattern``) may match one answer. The
``regex`` module (``re``'s syntax) avoids the exponential backtracking of most patterns that
nest a repetition, and gives up past this on the rest; the executor runs the match off the
event loop (``regex`` lets go of the GIL), so the deadline and Ctrl-C hold meanwhile."""

_FENCE = re.compile(r"^\s*```[\w-]*[ \t]*\n(.*?)(?:\n\s*```)?\s*$", re.S)


def strip_fences(text: str) -> str:
    """The body of a Markdown code fence, or the text itself. A fence left open counts: a
    model that stopped (or was cut at ``max_tokens``) before closing it wrote the body all
    the same, and the JSON gates then name what is wrong with the body, not with the fence."""
    m = _FENCE.match(text)
    return m.group(1) if m else text.strip()


@contextmanager
def _importable_from(folder: Path | None) -> Iterator[None]:
    extra = [str(p) for p in (folder, Path.cwd()) if p is not None]
    added = [p for p in extra if p not in sys.path]
    sys.path[:0] = added
    try:
        yield
    finally:
        for p in added:
            sys.path.remove(p)


def _load(ref: str, source: str, field: str, folder: Path | None) -> Any:
    module_name, _, attr = ref.partition(":")
    try:
        with _importable_from(folder):
            obj: Any = importlib.import_module(module_name)
        for part in attr.split("."):
            obj = getattr(obj, part)
    except Exception as exc:  # an import runs user code: any error means "cannot load"
        raise SpecError(
            source,
            field,
            f"cannot import {ref!r}: {type(exc).__name__}: {exc}; check the module path",
        ) from None
    return obj


def build_gate(gate: Gate, source: str, field: str, folder: Path | None = None) -> Check:
    """Turn a spec's gate into a check; imports happen here, at the start of a run."""
    if gate.regex is not None:  # its syntax checked with the spec (Gate's validators)
        return _regex(_compiled(gate.regex))
    if gate.json_schema is not None:
        return _schema(_SchemaValidator(gate.json_schema))
    if gate.pydantic is not None:
        model = _load(gate.pydantic, source, f"{field}.pydantic", folder)
        if not (isinstance(model, type) and issubclass(model, pydantic.BaseModel)):
            raise SpecError(
                source, f"{field}.pydantic", f"{gate.pydantic!r} is not a pydantic model"
            )
        return _model(model)
    assert gate.python is not None
    fn = _load(gate.python, source, f"{field}.python", folder)
    if not callable(fn):
        raise SpecError(source, f"{field}.python", f"{gate.python!r} is not callable")
    return _callable(fn, gate.python)


_Job = tuple[Check, str, asyncio.AbstractEventLoop, Callable[[BaseException | None], None]]


class GateThread:
    """Runs a run's gates off the event loop, one at a time, so that the deadline, Ctrl-C
    and the other steps go on meanwhile: a Python gate (``python: module:function``) or a
    pydantic model's validators are the user's code, which may take its time asking a
    service or running a test, and a regex may backtrack up to :data:`REGEX_TIMEOUT_S`.
    Each run has its own: the runs of a batch (or of a server awaiting several) may check at
    once, so a gate they share must be safe to call from two threads, and one that hangs
    holds up only its own run.

    One daemon thread does the checks in turn, started by the first and let go by
    :meth:`close` (or after :attr:`IDLE_S` with nothing to check), so that a gated attempt
    pays for a hand-off through a queue rather than a thread's start. A gate still running
    when the run ends (its deadline passed) is left to finish, or hang, without holding the
    process open.
    """

    IDLE_S = 1.0
    """Seconds the thread waits for another check before it ends (a new one starts then)."""

    def __init__(self) -> None:
        self._jobs: queue.SimpleQueue[_Job | None] = queue.SimpleQueue()
        self._lock = threading.Lock()
        self._working = False
        """Whether a thread takes the jobs: set and cleared under ``_lock``, and cleared only
        with no job left, so that every job put finds a thread."""

    async def check(self, gate: Check, text: str) -> None:
        """``gate(text)`` in the run's gate thread; its rejection or error raised here."""
        loop = asyncio.get_running_loop()
        done: asyncio.Future[None] = loop.create_future()

        def settle(error: BaseException | None) -> None:
            if done.done():  # cancelled: the deadline passed, or Ctrl-C
                return
            if error is None:
                done.set_result(None)
            else:
                done.set_exception(error)

        with self._lock:
            self._jobs.put((gate, text, loop, settle))
            if not self._working:
                self._working = True
                threading.Thread(target=self._work, name="trilemma-gate", daemon=True).start()
        with outside_work(loop):
            await done

    def close(self) -> None:
        """Let the thread end once the checks handed to it are done (the run has ended)."""
        with self._lock:
            if self._working:
                self._jobs.put(None)

    def _work(self) -> None:
        while True:
            try:
                job = self._jobs.get(timeout=self.IDLE_S)
            except queue.Empty:
                job = None
            if job is None:  # closed, or idle
                with self._lock:
                    if self._jobs.empty():
                        self._working = False
                        return
                continue
            gate, text, loop, settle = job
            error: BaseException | None = None
            try:
                gate(text)
            except BaseException as exc:  # handed to the run, which sorts it
                error = exc
            with contextlib.suppress(RuntimeError):  # the run's loop closed: nobody waits
                loop.call_soon_threadsafe(settle, error)
            del job, gate, text, loop, settle, error  # nothing of a run kept while idle


def _found(pattern: regex.Pattern[str], text: str, gate: str, what: str = "answer") -> bool:
    """Whether ``pattern`` occurs in ``text``, decided within :data:`REGEX_TIMEOUT_S`; past
    it, a :class:`RunError` that names the ``gate`` (the spec's pattern is at fault, not the
    model's answer)."""
    try:
        return pattern.search(text, timeout=REGEX_TIMEOUT_S) is not None
    except TimeoutError:
        raise RunError(
            f"{gate} /{pattern.pattern}/ gave no verdict within {REGEX_TIMEOUT_S:g}s on a "
            f"{len(text):,}-character {what}: a repetition whose parts can match the same text "
            "in more than one way (such as (a|a)*) tries them all on an answer it does not "
            "match; rewrite the pattern so that each part of an answer matches one way"
        ) from None


def _regex(pattern: regex.Pattern[str]) -> Check:
    def check(text: str) -> None:
        if not _found(pattern, text, "the regex gate"):
            raise GateRejected(f"the answer must match the regular expression /{pattern.pattern}/")

    return check


@functools.lru_cache(maxsize=256)
def _compiled(pattern: str) -> regex.Pattern[str]:
    return regex.compile(pattern)


def _pattern(
    validator: Any, pattern: str, instance: Any, schema: Any
) -> Iterator[jsonschema.ValidationError]:
    """JSON Schema's ``pattern`` as jsonschema words it, matched as a regex gate is."""
    if validator.is_type(instance, "string") and not _found(
        _compiled(pattern), instance, "the JSON schema gate's pattern", "string in the answer"
    ):
        yield jsonschema.ValidationError(f"{instance!r} does not match {pattern!r}")


def _named(pattern: str, name: str) -> bool:
    """Whether a ``patternProperties`` pattern finds a property's ``name``."""
    return _found(
        _compiled(pattern), name, "the JSON schema gate's patternProperties", "property name"
    )


def _pattern_properties(
    validator: Any, patterns: dict[str, Any], instance: Any, schema: Any
) -> Iterator[jsonschema.ValidationError]:
    """``patternProperties``: each property checked against the schemas of the patterns
    that find its name."""
    if not validator.is_type(instance, "object"):
        return
    for pattern, subschema in patterns.items():
        for name, value in instance.items():
            if _named(pattern, name):
                yield from validator.descend(value, subschema, path=name, schema_path=pattern)


def _additional_properties(
    validator: Any, allowed: Any, instance: Any, schema: Any
) -> Iterator[jsonschema.ValidationError]:
    """``additionalProperties``: the properties that ``properties`` does not name and no
    ``patternProperties`` pattern finds, in jsonschema's words."""
    if not validator.is_type(instance, "object"):
        return
    named, patterns = schema.get("properties", {}), schema.get("patternProperties", {})
    extras = [k for k in instance if k not in named and not any(_named(p, k) for p in patterns)]
    if validator.is_type(allowed, "object"):
        for extra in extras:
            yield from validator.descend(instance[extra], allowed, path=extra)
    elif not allowed and extras:
        listed, one = ", ".join(repr(k) for k in sorted(extras)), len(extras) == 1
        if "patternProperties" in schema:
            yield jsonschema.ValidationError(
                f"{listed} {'does' if one else 'do'} not match any of the regexes: "
                + ", ".join(repr(p) for p in sorted(patterns))
            )
        else:
            yield jsonschema.ValidationError(
                f"Additional properties are not allowed ({listed} {'was' if one else 'were'} "
                "unexpected)"
            )


_SchemaValidator = jsonschema.validators.extend(  # type: ignore[no-untyped-call]
    jsonschema.Draft202012Validator,
    {
        "pattern": _pattern,
        "patternProperties": _pattern_properties,
        "additionalProperties": _additional_properties,
    },
)
"""Draft 2020-12 whose patterns neither backtrack for hours nor hold the GIL: jsonschema's
own match with ``re``, which keeps the GIL (so the loop, the deadline and SIGTERM wait)
for as long as a nested repetition takes. ``unevaluatedProperties`` beside
``patternProperties`` still matches property names with ``re``."""


def _json(text: str) -> Any:
    try:
        return json.loads(strip_fences(text))
    except ValueError as exc:
        raise GateRejected(f"the answer must be JSON: {exc}") from None


def _schema(validator: jsonschema.protocols.Validator) -> Check:
    def check(text: str) -> None:
        errors = sorted(validator.iter_errors(_json(text)), key=lambda e: list(e.path))
        if errors:
            e = errors[0]
            where = "/".join(str(p) for p in e.path) or "the top level"
            raise GateRejected(f"the JSON does not fit the schema at {where}: {e.message}")

    return check


def _model(model: type[pydantic.BaseModel]) -> Check:
    def check(text: str) -> None:
        try:
            model.model_validate_json(strip_fences(text))
        except pydantic.ValidationError as exc:
            err = exc.errors(include_url=False)[0]
            loc = ".".join(str(p) for p in err["loc"]) or "the top level"
            raise GateRejected(
                f"the answer does not fit {model.__name__} at {loc}: {err['msg']}"
            ) from None

    return check


def _callable(fn: Callable[[str], object], ref: str) -> Check:
    """A function that returns truthy to accept; False, or a string reason, to reject."""

    def check(text: str) -> None:
        try:
            verdict = fn(text)
        except GateRejected:
            raise
        except Exception as exc:  # the gate's own bug, not the model's answer
            raise RunError(f"gate {ref} raised {type(exc).__name__}: {exc}") from exc
        if isinstance(verdict, str):
            raise GateRejected(verdict)
        if verdict is False or verdict is None:
            raise GateRejected(f"rejected by {ref}")

    return check
