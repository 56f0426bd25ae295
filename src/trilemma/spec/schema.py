"""The workflow spec as a JSON Schema, for editors and other tools.

Generated from the pydantic models the loader validates with, so that field names, types,
choices and bounds cannot drift from it. What no schema says stays the loader's: that a
step's ``after`` and ``model`` name things that exist, that the steps form no cycle, that a
profile has a price one way or the other. ``trilemma estimate FILE`` is the full check.

>>> schema = spec_json_schema()
>>> schema["properties"]["version"]["const"], "steps" in schema["required"]
(1, True)
"""

from __future__ import annotations

import ast
import inspect
import itertools
import re
from types import ModuleType
from typing import Any

from pydantic import BaseModel

from trilemma.spec import model
from trilemma.spec.load import SCHEMA_KEY
from trilemma.spec.model import SPEC_VERSION, Workflow

__all__ = ["DIALECT", "SPEC_TITLE", "json_schema", "spec_json_schema"]

#: Draft 7, the newest the YAML language server (VS Code's YAML extension) checks with;
#: pydantic's schema uses nothing later (its ``$defs`` are reached by JSON pointers).
DIALECT = "http://json-schema.org/draft-07/schema#"
#: How a spec schema's title begins, whatever the spec's version.
SPEC_TITLE = "trilemma workflow spec"


def spec_json_schema() -> dict[str, Any]:
    """The JSON Schema of a version-1 workflow spec, field docstrings as descriptions."""
    return json_schema(Workflow, f"{SPEC_TITLE}, version {SPEC_VERSION}", model)


def json_schema(root: type[BaseModel], title: str, *sources: ModuleType) -> dict[str, Any]:
    """The JSON Schema of a document ``root`` validates (a workflow spec, a gateway's
    config), the docstrings under the fields of the classes in ``sources`` as descriptions;
    its ``version`` held to :data:`SPEC_VERSION` and a ``$schema`` key allowed, as the
    loader has them."""
    schema = root.model_json_schema()
    notes: dict[str, dict[str, str]] = {}
    for module in sources:
        notes.update(_attribute_docstrings(module))
    for name, definition in [(root.__name__, schema), *schema.get("$defs", {}).items()]:
        for field, prop in definition.get("properties", {}).items():
            if field in notes.get(name, {}):
                prop.setdefault("description", notes[name][field])
    version = schema["properties"]["version"]
    schema["properties"]["version"] = {"const": SPEC_VERSION, **_only(version, "description")}
    schema["properties"][SCHEMA_KEY] = {
        "type": "string", "description": "Where editors find this schema (the loader skips it)."}  # fmt: skip
    _tidy(schema)
    return {"$schema": DIALECT, "title": title, **{k: v for k, v in schema.items() if k != "title"}}


def _attribute_docstrings(module: ModuleType) -> dict[str, dict[str, str]]:
    """Per class of ``module``, the docstring under each field, read from the source only
    when a schema is asked for (pydantic's ``use_attribute_docstrings`` would read it at
    every import)."""
    found: dict[str, dict[str, str]] = {}
    try:
        source = inspect.getsource(module)
    except OSError:  # installed without its sources: a schema without descriptions
        return found
    for node in ast.parse(source).body:
        if not isinstance(node, ast.ClassDef):
            continue
        body = node.body
        for field, doc in itertools.pairwise(body):
            if (isinstance(field, ast.AnnAssign) and isinstance(field.target, ast.Name)
                    and isinstance(doc, ast.Expr) and isinstance(doc.value, ast.Constant)
                    and isinstance(doc.value.value, str)):  # fmt: skip
                found.setdefault(node.name, {})[field.target.id] = inspect.cleandoc(doc.value.value)
    return found


def _only(mapping: dict[str, Any], *keys: str) -> dict[str, Any]:
    return {k: mapping[k] for k in keys if k in mapping}


def _tidy(node: Any) -> None:
    """What pydantic writes, as editors and the loader read it: every description in
    Markdown, not Sphinx's roles; and a mapping whose keys pydantic checks by pattern
    (inputs, route labels) taking no key outside it (its ``patternProperties`` alone let
    any other key through)."""
    if isinstance(node, list):
        for item in node:
            _tidy(item)
    if not isinstance(node, dict):
        return
    if "patternProperties" in node and "additionalProperties" not in node:
        node["additionalProperties"] = False
    for key, value in node.items():
        if key == "description" and isinstance(value, str):
            node[key] = _ROLE.sub(r"`\1`", value).replace("``", "`")
        else:
            _tidy(value)


#: A Sphinx role (:class:`Faults`), shown in an editor's hover as Markdown code.
_ROLE = re.compile(r":\w+:`([^`]+)`")
