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
    applied = "\n".join(f"-- {i}. {name}: {fn.__doc__}" for i, (name, fn) in enumerate(MIGRATIONS, 1))
    return applied + "\n\n" + "\n\n".join(tables) + "\n"


def render(text: str) -> str:
    text = BLOCK.sub(lambda m: m.group(1) + run(m.group("cmd")) + m.group(4), text)
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
