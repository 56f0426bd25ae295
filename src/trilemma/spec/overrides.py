"""``--set PATH=VALUE``: a spec's fields changed for one command, the file left as it is.

What-if questions before spending ("and if the small model's p_ok were 0.9?") without an
edited copy of the spec. A path walks the document as written: mapping keys, a step by its
``id`` (``steps.answer.retries=2``) or by its place (``steps[0].retries=2``). VALUE is read
as YAML: ``0.9``, ``true``, ``[a, b]``, ``{agents: 3, rounds: 2}``, ``null``. The changed
document is then validated as any spec is, so a value out of bounds is named by its field.

>>> with_overrides({"version": 1, "steps": [{"id": "a", "retries": 0}]}, ["steps.a.retries=2"])
{'version': 1, 'steps': [{'id': 'a', 'retries': 2}]}
"""

from __future__ import annotations

import copy
import re
from collections.abc import Sequence
from typing import Any

import yaml

from trilemma._format import did_you_mean
from trilemma.errors import UsageError

__all__ = ["with_overrides"]

_PART = re.compile(r"([^.\[\]]+)|\[(\d+)\]")


def with_overrides(data: object, overrides: Sequence[str]) -> object:
    """A copy of the parsed spec ``data`` with each ``PATH=VALUE`` of ``overrides`` set."""
    if not overrides:
        return data
    if not isinstance(data, dict):
        return data  # the loader names what is wrong with the document itself
    out = copy.deepcopy(data)
    for given in overrides:
        path, eq, text = given.partition("=")
        if not eq or not path.strip():
            raise UsageError(f"--set {given!r}: write it as PATH=VALUE, such as "
                             "models.small.p_ok=0.9 or steps.answer.retries=2")  # fmt: skip
        try:
            if any(isinstance(e, yaml.AliasEvent) for e in yaml.parse(text)):
                raise UsageError(f"--set {path}: write the value out; YAML aliases (*name) are "
                                 "not taken here")  # fmt: skip
            value = yaml.safe_load(text) if text.strip() else None
        except yaml.YAMLError as exc:
            mark = getattr(exc, "problem", None) or "not YAML"
            raise UsageError(f"--set {path}: {text!r} is not a YAML value ({mark})") from None
        _set(out, path.strip(), value, given)
    return out


def _parts(path: str, given: str) -> list[str | int]:
    parts: list[str | int] = []
    pos = 0
    for m in _PART.finditer(path):
        if m.start() != pos and path[pos:m.start()] != ".":
            break
        parts.append(m.group(1) if m.group(1) is not None else int(m.group(2)))
        pos = m.end()
    if pos != len(path) or not parts:
        raise UsageError(f"--set {given!r}: {path!r} is not a field path; write it as "
                         "models.small.p_ok or steps.answer.retries")  # fmt: skip
    return parts


def _set(doc: dict[str, Any], path: str, value: Any, given: str) -> None:
    parts = _parts(path, given)
    node: Any = doc
    walked = ""
    i = 0
    while i < len(parts):
        part = parts[i]
        if isinstance(node, list):
            index = part if isinstance(part, int) else _step_index(node, part, walked, given)
            if not 0 <= index < len(node):
                raise UsageError(f"--set {given!r}: {walked} has {len(node)} entries; "
                                 f"[{index}] is past them")  # fmt: skip
            if i == len(parts) - 1:
                raise UsageError(f"--set {given!r}: a whole entry of {walked} is not set here; "
                                 "set its fields (steps.ID.FIELD=VALUE)")  # fmt: skip
            node = node[index]
            walked += f"[{index}]" if isinstance(part, int) else f".{part}"
            i += 1
            continue
        if not isinstance(node, dict) or isinstance(part, int):
            raise UsageError(f"--set {given!r}: {walked or 'the spec'} is not a mapping of "
                             "fields here, so it has no " + repr(part))  # fmt: skip
        key, i = _key(node, parts, i)
        if i == len(parts):
            node[key] = value
            return
        if key not in node:
            if walked == "models":  # a profile is named in the spec, never made up here
                raise UsageError(f"--set {given!r}: no model {key!r}"
                                 f"{did_you_mean(key, node)}; known: {', '.join(node)}")  # fmt: skip
            node[key] = {}
        node = node[key]
        walked = f"{walked}.{key}" if walked else key


def _key(node: dict[str, Any], parts: list[str | int], i: int) -> tuple[str, int]:
    """The key at ``parts[i]``, taking the parts after it too where the mapping has a key
    with dots in it (a model named ``gpt-4.1``); and the index of the part after it."""
    for j in range(len(parts), i + 1, -1):
        joined = parts[i:j]
        if all(isinstance(p, str) for p in joined) and ".".join(map(str, joined)) in node:
            return ".".join(map(str, joined)), j
    return str(parts[i]), i + 1


def _step_index(steps: list[Any], step_id: str, walked: str, given: str) -> int:
    for i, s in enumerate(steps):
        if isinstance(s, dict) and s.get("id") == step_id:
            return i
    ids = [str(s.get("id")) for s in steps if isinstance(s, dict)]
    raise UsageError(f"--set {given!r}: no step {step_id!r} in {walked}"
                     f"{did_you_mean(step_id, ids)}; known: {', '.join(ids)}")  # fmt: skip
