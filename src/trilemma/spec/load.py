"""Loading a spec: YAML or JSON text in, a validated Workflow or one SpecError out.

Every way a spec can be wrong becomes one :class:`~trilemma.errors.SpecError`
that names the file, the field path (``steps[2].retries``) and the fix. YAML is
read with duplicate-key and alias-bomb guards.
"""

from __future__ import annotations

import difflib
import functools
import json
import re
import typing
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ValidationError

from trilemma import dag
from trilemma._format import did_you_mean
from trilemma.errors import CycleError, SpecError, UsageError
from trilemma.spec.bounds import STDIN, read_capped
from trilemma.spec.model import ROUTE_LABEL_PATTERN, SPEC_VERSION, STEP_ID_PATTERN, Step, Workflow
from trilemma.spec.overrides import with_overrides
from trilemma.spec.template import template_ok

__all__ = ["STDIN", "dump_workflow", "load_workflow", "parse_workflow", "workflow_from_dict",
           "workflow_with"]  # fmt: skip

MAX_SPEC_BYTES = 5_000_000
MAX_EXPANDED_NODES = 200_000


def load_workflow(path: str | Path, overrides: Sequence[str] = ()) -> Workflow:
    """Read, parse and validate a spec file (YAML or JSON; ``-`` or :data:`STDIN` reads
    standard input, as YAML, which JSON is too), with ``overrides`` (``PATH=VALUE``, as
    ``--set`` gives them: :func:`trilemma.spec.overrides.with_overrides`) set first."""
    data, source = read_document(path)
    return workflow_with(data, overrides, source)


def workflow_with(data: object, overrides: Sequence[str], source: str) -> Workflow:
    """The parsed spec ``data`` validated with ``overrides`` set first: where they make it
    wrong, a UsageError naming them; where it is wrong without them, its own error."""
    try:
        return workflow_from_dict(with_overrides(data, overrides), source)
    except SpecError as exc:
        if not overrides:
            raise
        try:
            workflow_from_dict(data, source)
        except SpecError:
            raise exc from None  # the file itself is wrong: say so, as without --set
        where = f"{exc.field}: " if exc.field else ""
        raise UsageError(f"--set {', '.join(overrides)}: {where}{exc.problem}") from None


def read_document(path: str | Path, what: str = "spec") -> tuple[object, str]:
    """A YAML or JSON file parsed with the spec's guards (size, binary, duplicate keys, bombs).

    Returns the data and the source name errors give; ``what`` names the file in them.
    """
    p = Path(path)
    source = STDIN if str(path) == "-" else str(path)
    try:
        raw = read_capped(source, MAX_SPEC_BYTES)
    except FileNotFoundError:
        raise SpecError(source, "", "no such file; check the path") from None
    except IsADirectoryError:
        raise SpecError(source, "", f"is a directory, not a {what} file") from None
    except OSError as exc:
        raise SpecError(source, "", f"cannot read: {exc.strerror}") from None
    if len(raw) > MAX_SPEC_BYTES:
        raise SpecError(source, "", f"file is over 5 MB, the most a {what} may be")
    if b"\x00" in raw:
        raise SpecError(source, "", f"binary file, not a YAML or JSON {what}")
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError:
        raise SpecError(source, "", f"not UTF-8 text; save the {what} as UTF-8 YAML") from None
    data = _parse_json(text, source) if p.suffix.lower() == ".json" else _parse_yaml(text, source)
    return data, source


M = typing.TypeVar("M", bound=BaseModel)


def validate_document(model: type[M], data: object, source: str) -> M:
    """``model`` validated from parsed data; every error one SpecError naming the field path."""
    if not isinstance(data, Mapping):
        kind = "empty file" if data is None else f"a {type(data).__name__}"
        raise SpecError(source, "", f"the top level is {kind}, not a mapping of fields")
    _check_version(data, source)
    data = _without_schema_key(data, source)
    try:
        return model.model_validate(dict(data))
    except ValidationError as exc:
        raise _spec_error(exc, source, model) from None


def parse_workflow(text: str, source: str = "<string>", *, json_only: bool = False) -> Workflow:
    """Parse and validate a spec given as YAML (or JSON) text."""
    data = _parse_json(text, source) if json_only else _parse_yaml(text, source)
    return workflow_from_dict(data, source)


#: A top-level key the loader passes over: where an editor finds the spec's JSON Schema (a
#: JSON spec has no comment to hold a ``yaml-language-server`` modeline).
SCHEMA_KEY = "$schema"


def workflow_from_dict(data: object, source: str = "<dict>") -> Workflow:
    """Validate already-parsed spec data; the one door every spec goes through."""
    if data is None:
        raise SpecError(source, "", "empty spec; start with `version: 1`, models: and steps:")
    if not isinstance(data, Mapping):
        kind = type(data).__name__
        raise SpecError(source, "", f"the top level is a {kind}, not a mapping of spec fields")
    _check_version(data, source)
    data = _without_schema_key(data, source)
    if "keys" in data and "steps" not in data:
        raise SpecError(source, "keys", "this is a gateway's config, not a workflow spec: "
                        "`trilemma gateway FILE` serves it (a workflow names its steps:)")  # fmt: skip
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


def _without_schema_key(data: Mapping[Any, Any], source: str) -> Mapping[Any, Any]:
    """The document without its ``$schema`` (an editor's pointer to ``trilemma schema``, not
    a field of it), which must be text."""
    if SCHEMA_KEY not in data:
        return data
    if not isinstance(data[SCHEMA_KEY], str):
        raise SpecError(source, SCHEMA_KEY, "should be the path or URL of the document's JSON "
                        "Schema, in quotes (`trilemma schema --out FILE` writes one)")  # fmt: skip
    return {k: v for k, v in data.items() if k != SCHEMA_KEY}


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
        for j, name in enumerate(step.escalate or []):
            _check_name(source, f"steps[{i}].escalate[{j}]", name, wf.models, "model")
        for label, branch in (step.route or {}).items():
            _check_name(source, f"steps[{i}].route.{label}.model", branch.model, wf.models, "model")
        for j, dep in enumerate(step.after):
            _check_name(source, f"steps[{i}].after[{j}]", dep, seen, "step")
    cycle = dag.find_cycle(wf.edges())
    if cycle:
        raise CycleError(source, cycle)
    if wf.stop_when is not None:
        _check_name(source, "stop_when", wf.stop_when, seen, "step")
    _check_cuttable(wf, source)
    graph = wf.edges()
    for i, step in enumerate(wf.steps):
        for field in ("prompt", "system"):
            text = getattr(step, field)
            if text and not template_ok(text):
                raise SpecError(
                    source,
                    f"steps[{i}].{field}",
                    "unbalanced { or } in the template; write {{ and }} for literal braces",
                )
        _check_placeholders(wf, graph, i, step, source)


def _check_placeholders(
    wf: Workflow, graph: dict[str, list[str]], i: int, step: Step, source: str
) -> None:
    """Every ``{name}`` of a step's prompt and system prompt is an input or a step it runs
    after; one that cannot be a name at all is taken for the literal braces it likely is."""
    known: set[str] | None = None  # only when a step is named
    for field, name in step.placeholder_fields():
        if name in wf.inputs:
            continue
        if not re.fullmatch(STEP_ID_PATTERN, name):
            shown = f"{{{name[:30]}...}}" if name else "{}"
            raise SpecError(
                source,
                f"steps[{i}].{field}",
                f"{shown} is not a name: for literal braces (a JSON example, say) write them "
                "doubled, {{ and }}; a placeholder is {name} with the name of an input or of a "
                "step this one runs after",
            )
        known = known if known is not None else set(wf.inputs) | dag.ancestors(graph, step.id)
        if name not in known:
            raise SpecError(
                source,
                f"steps[{i}].{field}",
                f"{{{name}}} names neither an input nor a step this one runs after"
                f"{_did_you_mean(name, known)}; declare it under inputs: or add it to after:",
            )


def _check_cuttable(wf: Workflow, source: str) -> None:
    """A step the optimizer may cut must be one nothing else reads or stops on."""
    cuttable = {step.id: i for i, step in enumerate(wf.steps) if step.cuttable}
    if not cuttable:
        return
    if len(cuttable) == len(wf.steps):
        raise SpecError(source, "steps", "every step is cuttable; at least one must stay: "
                        "remove cuttable from the step that gives the answer")  # fmt: skip
    if wf.stop_when in cuttable:
        raise SpecError(source, f"steps[{cuttable[wf.stop_when]}].cuttable", f"step "
                        f"{wf.stop_when!r} is stop_when's step, so it cannot be cut; remove "
                        "cuttable or stop_when")  # fmt: skip
    for sid, i in cuttable.items():
        if wf.steps[i].stoppable:
            raise SpecError(source, f"steps[{i}].stoppable", f"step {sid!r} is cuttable, so "
                            "the run cannot stop on it; remove cuttable or stoppable")  # fmt: skip
    for j, step in enumerate(wf.steps):
        for name in step.placeholders():
            if name in cuttable:
                raise SpecError(source, f"steps[{cuttable[name]}].cuttable", f"step {name!r} "
                                f"cannot be cut: steps[{j}] ({step.id}) reads its output as "
                                f"{{{name}}}; remove cuttable or the placeholder")  # fmt: skip


def _check_name(source: str, field: str, name: str, known: Mapping[str, object], what: str) -> None:
    if name in known:
        return
    hint = _did_you_mean(name, known)
    names = ", ".join(sorted(known)[:8])
    raise SpecError(source, field, f"unknown {what} {name!r}{hint}; known: {names}")


# What other workflow tools call a field of ours: spelling alone would not lead there
# (difflib offers 'independent' for 'depends_on').
_OTHER_NAMES = {
    "depends_on": "after",
    "dependencies": "after",
    "deps": "after",
    "needs": "after",
    "requires": "after",
    "parents": "after",
    "upstream": "after",
}


def _did_you_mean(name: str, options: typing.Iterable[str]) -> str:
    options = list(options)
    other = _OTHER_NAMES.get(name.lower())
    if other is not None and other in options:
        return f" (did you mean {other!r}?)"
    return did_you_mean(name, options)


# --------------------------------------------------------------------- parse helpers


class DuplicateKey(ValueError):
    """A JSON object names ``key`` twice (json.loads would keep the last silently)."""

    def __init__(self, key: str) -> None:
        super().__init__(key)
        self.key = key


def unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    """``object_pairs_hook`` for json.loads: an object's pairs as a dict, raising
    :class:`DuplicateKey` on a name given twice, as the YAML loader refuses one."""
    out: dict[str, Any] = {}
    for key, value in pairs:
        if key in out:
            raise DuplicateKey(key)
        out[key] = value
    return out


def _parse_json(text: str, source: str) -> object:
    try:
        data = json.loads(text, object_pairs_hook=unique_keys)
    except DuplicateKey as exc:
        raise SpecError(source, "", f"duplicate key {exc.key!r} in one object; keep one") from None
    except json.JSONDecodeError as exc:
        raise SpecError(
            source, f"line {exc.lineno}, column {exc.colno}", f"JSON syntax error: {exc.msg}"
        ) from None
    _check_text(data, source)
    return data


def not_text_at(text: str) -> int | None:
    """Where ``text`` holds a lone surrogate, which no UTF-8 file, database or JSON output
    takes (a ``\\ud800`` escape, or bytes Python decoded with surrogateescape); None: nowhere."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as exc:
        return exc.start
    return None


def _check_text(data: object, source: str) -> None:
    """Refuse a string that is not text: a lone surrogate, which a ``\\ud800`` escape makes.

    Every later step (the journal, JSON output) would fail on it, far from the spec.
    """
    todo: list[tuple[object, tuple[Any, ...]]] = [(data, ())]
    while todo:
        item, loc = todo.pop()
        if isinstance(item, str):
            at = not_text_at(item)
            if at is not None:
                raise SpecError(
                    source, _render_loc(loc), f"holds {item[at]!r}, half of a surrogate "
                    "pair and not a character; write the character itself (UTF-8)",
                )
        elif isinstance(item, Mapping):
            for key, value in item.items():
                todo += [(key, loc), (value, (*loc, key))]
        elif isinstance(item, list):
            todo += [(value, (*loc, i)) for i, value in enumerate(item)]


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
        data = loader.construct_document(node)
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
    _check_text(data, source)
    return data


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


#: Other fields wrong beside the one explained, named at the end of the line (at most this many).
ALSO_NAMED = 3


def _spec_error(
    exc: ValidationError, source: str, root: type[BaseModel] = Workflow
) -> SpecError:
    """One line: the first problem explained, with the other fields that are wrong named
    after it, so that one edit can mend them all."""
    # An unknown field usually explains a 'missing' one beside it (a misspelling): name it first.
    errors, alternatives = _union_branches(exc.errors(include_url=False), root)
    err = min(errors, key=lambda e: e["type"] != "extra_forbidden")
    first = _explained(err, alternatives, source, root)
    others = list(dict.fromkeys(_render_loc(_field_loc(e)) for e in errors))
    others = [f for f in others if f != first.field]
    if not others:
        return first
    more = f" and {len(others) - ALSO_NAMED} more" if len(others) > ALSO_NAMED else ""
    return SpecError(source, first.field, f"{first.problem}; also wrong: "
                     f"{', '.join(others[:ALSO_NAMED])}{more}")  # fmt: skip


def _field_loc(err: Any) -> tuple[Any, ...]:
    return tuple(p for p in err["loc"] if not _is_union_tag(p))


def _explained(err: Any, alternatives: str, source: str, root: type[BaseModel]) -> SpecError:
    """What is wrong with one field, and how to mend it."""
    loc = _field_loc(err)
    field = _render_loc(loc)
    kind = err["type"]
    value = err.get("input")
    if kind == "extra_forbidden":
        allowed = _fields_at(loc[:-1], root)
        name = str(loc[-1])
        hint = _did_you_mean(name, allowed)
        return SpecError(
            source, field, f"unknown field {name!r}{hint}; allowed: {', '.join(sorted(allowed))}"
        )
    key = str(loc[-1]) if loc and isinstance(loc[-1], str) else None
    if kind == "missing":
        add = f": add `{key}:` here" if key else ""
        return SpecError(source, field, f"missing; this field is required{add}")
    wanted = _WANTED.get(kind)
    if wanted is not None and value is None and not alternatives:
        where = f" after `{key}:`" if key else ""
        return SpecError(source, field, f"is empty (null); write {wanted}{where}")
    shown = _shown(value)
    if kind == "string_type" and isinstance(value, (int, float)):  # YAML read a name as a number
        return SpecError(source, field, f"should be text, not the {_kind(value)} "
                         f"{shown}; write it in quotes: '{shown}'")  # fmt: skip
    msg = _plain(err, wanted, root)
    if alternatives:
        msg += f", or a mapping of {alternatives}"
    if kind == "value_error" and isinstance(value, (dict, list)):  # the message says what is wrong
        return SpecError(source, field, msg)
    return SpecError(source, field, f"{msg} (got {shown}){_closest_choice(err, value)}")


def _closest_choice(err: Any, value: object) -> str:
    """For a value outside a field's choices: the choice it starts with or is spelt nearest."""
    if err["type"] != "literal_error" or not isinstance(value, str) or not value:
        return ""
    choices = re.findall(r"'([^']*)'", str((err.get("ctx") or {}).get("expected", "")))
    prefixed = [c for c in choices if c and value.lower().startswith(c.lower())]
    if prefixed:  # 'simulator' for 'sim'
        return f"; did you mean {max(prefixed, key=len)!r}?"
    close = difflib.get_close_matches(value.lower(), choices, n=1, cutoff=0.6)
    return f"; did you mean {close[0]!r}?" if close else ""


_WANTED = {
    "string_type": "text",
    "int_type": "a whole number",
    "int_parsing": "a whole number",
    "int_parsing_size": "a whole number",
    "int_from_float": "a whole number",
    "float_type": "a number",
    "float_parsing": "a number",
    "bool_type": "true or false",
    "bool_parsing": "true or false",
    "list_type": "a list",
    "dict_type": "a mapping of `name: value` lines",
    "model_type": "a mapping of fields",
    "model_attributes_type": "a mapping of fields",
}
"""What a spec field of each pydantic type error wants, in a YAML writer's words."""

_PATTERNS = {
    STEP_ID_PATTERN: "should hold only letters A-Z or a-z, digits, _ and -",
    ROUTE_LABEL_PATTERN: "should start with a letter A-Z or a-z and hold only those, digits, _ and -",
}
"""The spec's name patterns, in words."""


def _plain(err: Any, wanted: str | None, root: type[BaseModel]) -> str:
    """pydantic's message for ``err`` in a YAML writer's words, with the fix where one is plain."""
    kind = err["type"]
    if kind in ("model_type", "model_attributes_type"):
        model = _models_by_name(root).get(str((err.get("ctx") or {}).get("class_name", "")))
        needed = [n for n, f in model.model_fields.items() if f.is_required()] if model else []
        if needed:
            return "should be a mapping of fields, at least " + ", ".join(f"`{n}:`" for n in needed)
        return "should be a mapping of fields"
    if kind == "list_type":
        return "should be a list: `[a, b]`, or one `- item` per line"
    if wanted is not None:
        return f"should be {wanted}"
    if kind == "string_pattern_mismatch" and (err.get("ctx") or {}).get("pattern") in _PATTERNS:
        return _PATTERNS[err["ctx"]["pattern"]]
    msg = str(err["msg"]).removeprefix("Value error, ")
    for subject in ("Input should ", "String should "):  # the field path is the subject
        if msg.startswith(subject):
            return "should " + msg[len(subject) :]
    return msg


def _is_union_tag(part: object) -> bool:
    """A location part that names a branch of a union (``bool``, ``CacheRule``), not a field."""
    return isinstance(part, str) and (part in _SCALARS or part[:1].isupper())


_SCALARS = frozenset({"bool", "int", "float", "str"})


def _union_branches(errors: list[Any], root: type[BaseModel]) -> tuple[list[Any], str]:
    """The errors of the branch of a union the input was meant for, and the other branch's fields.

    ``cached: {similarity: 1.5}`` was meant for the mapping branch, so its
    'not a boolean' is dropped; ``cached: maybe`` for the scalar one, and the
    mapping branch survives only as "or a mapping of similarity" in the message.
    """
    shape = {"model_type", "model_attributes_type", "dict_type"}
    meant = [
        e for e in errors
        if not any(_is_union_tag(p) for p in e["loc"])
        or not (e["type"] in shape or (e["type"].endswith("_type") and isinstance(e.get("input"), dict)))
    ]  # fmt: skip
    dropped_models = {
        p for e in errors if e["type"] in shape for p in e["loc"] if _is_union_tag(p)
    }
    models = _models_by_name(root)
    fields = sorted(f for name in dropped_models if name in models for f in models[name].model_fields)
    return (meant or errors), ", ".join(fields)


@functools.cache
def _models_by_name(root: type[BaseModel]) -> dict[str, type[BaseModel]]:
    """Every model a spec may hold, by class name (the tag of a union branch)."""
    out: dict[str, type[BaseModel]] = {}
    todo = [root]
    while todo:
        model = todo.pop()
        if model.__name__ in out:
            continue
        out[model.__name__] = model
        for field in model.model_fields.values():
            todo += _models_in(field.annotation)
    return out


def _models_in(annotation: object) -> list[type[BaseModel]]:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return [annotation]
    return [m for arg in typing.get_args(annotation) for m in _models_in(arg)]


def _kind(value: object) -> str:
    return "boolean" if isinstance(value, bool) else "number"


def _shown(value: object) -> str:
    """A value as the spec wrote it, short: YAML's words for null, booleans and containers."""
    if isinstance(value, (dict, list)):
        what = "mapping" if isinstance(value, dict) else "list"
        return f"a {what}" if value else f"an empty {what}"
    if value is None or isinstance(value, bool):
        return {None: "null", True: "true", False: "false"}[value]
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


def _render_loc(loc: tuple[Any, ...]) -> str:
    out = ""
    for part in loc:
        if part == "[key]":  # pydantic's mark that the name before it, not its value, is wrong
            continue
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += f".{part}" if out else str(part)
    return out


def _fields_at(loc: tuple[Any, ...], root: type[BaseModel] = Workflow) -> set[str]:
    """The field names allowed at a location of the spec, for 'did you mean'."""
    model: type[BaseModel] = root
    for part in loc:
        if isinstance(part, int):
            continue
        field = model.model_fields.get(str(part))
        if field is None:
            if model is root:
                return set(model.model_fields)
            continue  # a key of models: {name: profile}
        nested = _model_in(field.annotation)
        if nested is None:
            break
        model = nested
    return set(model.model_fields)


def _model_in(annotation: object) -> type[BaseModel] | None:
    found = _models_in(annotation)
    return found[0] if found else None
