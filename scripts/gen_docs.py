"""Regenerate the command outputs embedded in docs/*.md (or check they are current).

A block in a doc reads

    <!-- run: trilemma exercise 32.10.1 -->
    ```text
    ...output...
    ```

and this script replaces the fenced block with what the command prints now.

    python scripts/gen_docs.py          # rewrite
    python scripts/gen_docs.py --check  # exit 1 if any block is stale
"""

from __future__ import annotations

import contextlib
import io
import os
import re
import shlex
import sys
from pathlib import Path

from trilemma.cli import main

ROOT = Path(__file__).resolve().parents[1]
BLOCK = re.compile(r"(<!-- run: (?P<cmd>.+?) -->\n```text\n)(?P<body>.*?)(```)", re.S)


def run(cmd: str) -> str:
    argv = shlex.split(cmd)
    assert argv[0] == "trilemma", cmd
    out = io.StringIO()
    os.environ["COLUMNS"] = "120"
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(out):
        main(argv[1:])
    return "\n".join(line.rstrip() for line in out.getvalue().splitlines()) + "\n"


SCHEMA = re.compile(r"(<!-- schema -->\n```sql\n)(?P<body>.*?)(```)", re.S)


def schema() -> str:
    """The journal's tables as a fresh journal has them, after every migration."""
    import tempfile

    from trilemma.journal import Journal
    from trilemma.journal.migrations import MIGRATIONS

    with tempfile.TemporaryDirectory() as d:
        j = Journal(Path(d) / "j.db")
        rows = j.db.execute("SELECT sql FROM sqlite_master WHERE sql IS NOT NULL ORDER BY rowid")
        tables = [r[0].strip() + ";" for r in rows]
        j.close()
    # one line each, whatever the docstring's wrapping (Python 3.13 dedents docstrings, 3.11 not)
    applied = "\n".join(f"-- {i}. {name}: {' '.join((fn.__doc__ or '').split())}"
                        for i, (name, fn) in enumerate(MIGRATIONS, 1))  # fmt: skip
    return applied + "\n\n" + "\n\n".join(tables) + "\n"


FIELDS = re.compile(r"(<!-- spec-fields -->\n)(?P<body>.*?)(<!-- /spec-fields -->)", re.S)

#: The spec's parts in the order a reader meets them, each a section of the field reference.
PARTS = ("Workflow", "ModelProfile", "Faults", "Step", "Gate", "Debate", "Vote", "Branch",
         "CacheRule", "SimAnswers", "Budget", "Simulation")  # fmt: skip


def spec_fields() -> str:
    """Every field of the spec, part by part, from its JSON Schema (`trilemma schema`)."""
    from trilemma.spec.schema import spec_json_schema

    root = spec_json_schema()
    defs = {"Workflow": root, **root["$defs"]}
    assert set(defs) == set(PARTS), sorted(set(defs) ^ set(PARTS))  # a new part needs a place
    out = []
    for name in PARTS:
        part = defs[name]
        blurb = part.get("description", "").split("\n\n")[0].replace("\n", " ")
        out += [f"### {name}", "", blurb, "", "| field | type | default | what it is |",
                "| --- | --- | --- | --- |"]  # fmt: skip
        required = set(part.get("required", ()))
        for field, prop in part["properties"].items():
            if field == "$schema":
                continue
            default = "required" if field in required else _default(prop.get("default"))
            text = " ".join(prop.get("description", "").split()).replace("|", "\\|")
            out.append(f"| `{field}` | {_type(prop)} | {default} | {text} |")
        out.append("")
    return "\n".join(out) + "\n"


def _type(prop: dict) -> str:
    if "$ref" in prop:
        name = prop["$ref"].rsplit("/", 1)[-1]
        return f"[{name}](#{name.lower()})"
    if "anyOf" in prop:
        kinds = [_type(p) for p in prop["anyOf"] if p.get("type") != "null"]
        return " or ".join(kinds)
    if "enum" in prop:
        return " \\| ".join(f"`{v}`" for v in prop["enum"])
    if "const" in prop:
        return f"`{prop['const']}`"
    kind = prop.get("type")
    if kind == "array":
        return f"list of {_type(prop.get('items', {}))}"
    if kind == "object":
        values = prop.get("additionalProperties") or next(iter(prop.get("patternProperties", {}).values()), None)
        return f"mapping of names to {_type(values)}" if isinstance(values, dict) else "mapping"
    words = {"number": "number", "integer": "integer", "string": "text", "boolean": "true/false"}
    text = words.get(str(kind), str(kind))
    low = [f"{_bound(prop[k])} {op} " for k, op in (("minimum", "≤"), ("exclusiveMinimum", "<")) if k in prop]
    high = [f" {op} {_bound(prop[k])}" for k, op in (("maximum", "≤"), ("exclusiveMaximum", "<")) if k in prop]
    if low or high:
        text += f", {''.join(low)}x{''.join(high)}"
    return text


def _bound(value: float) -> str:
    return f"{int(value):,}" if float(value).is_integer() else f"{value:g}"


def _default(value: object) -> str:
    if value is None:
        return "none"
    if isinstance(value, bool):
        return "`true`" if value else "`false`"
    if isinstance(value, (dict, list)) and not value:
        return "`{}`" if isinstance(value, dict) else "`[]`"
    if isinstance(value, dict):
        return "as below"
    return f"`{value}`"


def render(text: str) -> str:
    text = BLOCK.sub(lambda m: m.group(1) + run(m.group("cmd")) + m.group(4), text)
    text = FIELDS.sub(lambda m: m.group(1) + spec_fields() + m.group(3), text)
    return SCHEMA.sub(lambda m: m.group(1) + schema() + m.group(3), text)


def main_() -> int:
    check = "--check" in sys.argv
    os.chdir(ROOT)
    stale = []
    for doc in sorted((ROOT / "docs").glob("*.md")):
        old = doc.read_text()
        new = render(old)
        if new != old:
            stale.append(doc.name)
            if not check:
                doc.write_text(new)
    if check and stale:
        print(f"stale command output in docs: {', '.join(stale)}; run python scripts/gen_docs.py")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main_())
