"""The command output embedded in docs/ is what the commands print today; README code runs."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from trilemma.journal import Journal

from .conftest import EXAMPLES, ROOT


def test_docs_command_output_is_current() -> None:
    r = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "gen_docs.py"), "--check"],
        capture_output=True,
        text=True,
        cwd=ROOT,
    )
    assert r.returncode == 0, r.stdout + r.stderr


def test_the_readme_python_example_runs(tmp_path: Path, monkeypatch, capsys) -> None:
    """The README's "From Python" blocks, run as they are from the checkout's root."""
    section = (ROOT / "README.md").read_text().split("### From Python", 1)[1].split("\n### ", 1)[0]
    blocks = [part.split("```", 1)[0] for part in section.split("```python\n")[1:]]
    assert len(blocks) == 2
    monkeypatch.chdir(ROOT)
    for block in blocks:
        code = block.replace('Journal("faq.db")', f'Journal({str(tmp_path / "faq.db")!r})')
        exec(compile(code, "README.md", "exec"), {})
    printed = capsys.readouterr().out.splitlines()
    assert printed[0].startswith("ok answer of answer (attempt ") and "$0.0020" in printed[0]
    assert printed[1].startswith("batch-") and " ok [" in printed[1]
    assert printed[2] == "['ok', 'ok', 'ok']"
    assert len(Journal(tmp_path / "faq.db").runs()) == 3 + 2 + 1


def test_help_reflows_a_docstrings_paragraphs(cli, monkeypatch) -> None:
    """Help text wraps to the terminal, not where the docstring's lines happen to end."""
    monkeypatch.setenv("COLUMNS", "200")
    r = cli("batch", "--help")
    assert r.code == 0, r.err
    assert "(a crash, the ceiling, the deadline), the same command with --resume ID" in r.out


def test_help_gives_a_flag_no_type(cli, monkeypatch, tmp_path: Path) -> None:
    """A flag takes no value: help shows none beside it, as it does for an option's type."""
    monkeypatch.setenv("COLUMNS", "120")
    for args in (("--help",), ("run", "--help"), ("local", "up", "--help")):
        r = cli(*args)
        assert r.code == 0, r.err
        assert "<bool>" not in r.out, args
        help_line = next(x for x in r.out.splitlines() if "--help" in x)
        assert help_line.split("--help", 1)[1].split()[:2] == ["Show", "this"], help_line
    r = cli("run", "--help")
    assert "<float range>" in r.out and "<path>" in r.out  # options that take a value keep theirs
    spec, journal = ROOT / "examples" / "single.yaml", tmp_path / "t.db"
    r = cli("run", spec, "--json", "--journal", journal, "--seed", "1")
    assert r.code == 0 and '"status": "ok"' in r.out, r.err  # and a flag still parses as one


def test_tables_take_an_exported_width_when_piped(cli, monkeypatch, tmp_path: Path) -> None:
    """Piped, the tables are 150 columns wide, or COLUMNS wide when the shell exports it."""
    spec, journal = ROOT / "examples" / "ticket.yaml", tmp_path / "t.db"
    args = ("run", spec, "--journal", journal, "--seed", "1", "--max-cost", "0.1")
    wide = cli(*args).out.splitlines()
    assert max(map(len, wide)) > 100  # the step table's error: one line, at the piped width
    monkeypatch.setenv("COLUMNS", "80")
    narrow = cli(*args).out.splitlines()
    assert max(map(len, narrow)) <= 80 and len(narrow) > len(wide)


def test_each_example_in_the_help_is_a_paragraph_of_its_own() -> None:
    # typer's markdown help joins lines that are not apart: two examples read as one command
    import itertools

    import click
    import typer

    from trilemma.cli import app

    def commands(cmd: click.Command, path: str) -> list[tuple[str, click.Command]]:
        subs = getattr(cmd, "commands", {})
        return [(path, cmd)] + [c for n, s in subs.items() for c in commands(s, f"{path} {n}")]

    found = commands(typer.main.get_command(app), "trilemma")
    assert len(found) > 20
    for path, cmd in found:
        lines = [x.strip() for x in (cmd.help or "").splitlines()]
        joined = [a for a, b in itertools.pairwise(lines)
                  if a.startswith("Example:") and b.startswith("Example:")]  # fmt: skip
        assert not joined, f"{path}: {joined}"


def test_every_out_option_also_takes_dash_o_and_no_short_option_is_taken_twice() -> None:
    import click
    import typer

    from trilemma.cli import app

    def commands(cmd: click.Command, path: str) -> list[tuple[str, click.Command]]:
        subs = getattr(cmd, "commands", {})
        return [(path, cmd)] + [c for n, s in subs.items() for c in commands(s, f"{path} {n}")]

    outs = 0
    for path, cmd in commands(typer.main.get_command(app), "trilemma"):
        names = [o for p in cmd.params for o in getattr(p, "opts", [])]
        assert len(names) == len(set(names)), f"{path}: {sorted(names)}"
        for p in cmd.params:
            if "--out" in getattr(p, "opts", []):
                outs += 1
                assert "-o" in p.opts, f"{path} --out has no -o"
    assert outs >= 6


def test_report_and_export_write_where_dash_o_says(cli, tmp_path: Path) -> None:
    db = tmp_path / "j.db"
    assert cli("run", EXAMPLES / "diamond.yaml", "--journal", db, "--json").code == 0
    page, lines = tmp_path / "run.html", tmp_path / "run.jsonl"
    assert cli("report", "latest", "--journal", db, "-o", page).code == 0
    assert cli("export", "latest", "--journal", db, "-o", lines).code == 0
    assert "<html" in page.read_text() and json.loads(lines.read_text().splitlines()[0])["run_id"]


def test_version_prints_the_installed_version(cli) -> None:
    from importlib.metadata import version

    from trilemma import __version__

    r = cli("--version")
    assert (r.code, r.out, r.err) == (0, f"trilemma {__version__}\n", "")
    assert __version__ == version("trilemma")  # pyproject.toml and the package agree
    assert "--version" in cli("--help").out
