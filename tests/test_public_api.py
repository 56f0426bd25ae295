"""Review rules as tests: the public surface and the layering."""

from __future__ import annotations

import ast
import doctest
from pathlib import Path

import trilemma
import trilemma.cache.semantic
import trilemma.plan.agreement
import trilemma.report.tables
import trilemma.run.steps
import trilemma.spec

SRC = Path(trilemma.__file__).parent


def test_all_names_exist_and_nothing_private_is_exported() -> None:
    for name in trilemma.__all__:
        assert hasattr(trilemma, name), name
        assert not name.startswith("_") or name == "__version__"
    assert sorted(trilemma.__all__) == trilemma.__all__


def test_every_error_derives_from_trilemma_error() -> None:
    for name in trilemma.__all__:
        obj = getattr(trilemma, name)
        if isinstance(obj, type) and issubclass(obj, Exception):
            assert issubclass(obj, trilemma.TrilemmaError)


def test_only_cli_prints_or_exits() -> None:
    for path in SRC.rglob("*.py"):
        if path.parent.name == "cli":
            continue
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Name):
                assert node.func.id not in ("print", "exit"), f"{path}:{node.lineno}"
            if isinstance(node, ast.Attribute) and node.attr == "exit":
                assert not (isinstance(node.value, ast.Name) and node.value.id == "sys"), path


def test_nothing_imports_the_cli() -> None:
    """Only the entry points (the cli package itself and ``python -m trilemma``) touch the CLI."""
    for path in SRC.rglob("*.py"):
        if path.parent.name != "cli" and path.name != "__main__.py":
            assert "trilemma.cli" not in path.read_text(), path


def test_docstring_examples_run() -> None:
    for module in (trilemma, trilemma.spec, trilemma.cache.semantic, trilemma.run.steps,
                   trilemma.report.tables, trilemma.plan.agreement):
        failures, _ = doctest.testmod(module)
        assert failures == 0


def test_the_planner_and_runner_load_on_first_use_and_unknown_names_still_fail() -> None:
    import subprocess
    import sys

    heavy = {"numpy", "pydantic", "sqlite3", "asyncio", "trilemma.run.session", "trilemma.spec"}
    code = "\n".join([
        "import sys, trilemma",
        f"loaded = {sorted(heavy)!r} & sys.modules.keys()",
        "assert not loaded, sorted(loaded)",  # `import trilemma` alone loads none of them
        "trilemma.execute",
        "assert 'trilemma.run.session' in sys.modules",
        "from trilemma import estimate, Workflow",
        "assert callable(estimate) and {'estimate', 'execute', 'Journal'} <= set(dir(trilemma))",
    ])  # fmt: skip
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    try:
        trilemma.no_such_name  # noqa: B018
    except AttributeError as exc:
        assert "no attribute 'no_such_name'" in str(exc)
    else:
        raise AssertionError("an unknown name must raise AttributeError")


def test_a_users_type_checker_reads_the_public_api(tmp_path: Path) -> None:
    """The package says it is typed (PEP 561's py.typed): mypy in a user's project sees the
    API's types, not Any, and flags a misuse."""
    import re
    import subprocess
    import sys

    (tmp_path / "user.py").write_text(
        "import trilemma\n"
        "wf = trilemma.load_workflow('spec.yaml')\n"
        "reveal_type(trilemma.estimate(wf).cost_worst)\n"
        "reveal_type(trilemma.execute(wf, journal=trilemma.Journal('j.db')).status)\n"
        "cost: str = trilemma.estimate(wf).cost_worst\n"
    )
    (tmp_path / "mypy.ini").write_text(  # trilemma's modules only, not its dependencies'
        "[mypy]\nfollow_imports = skip\n[mypy-trilemma.*]\nfollow_imports = silent\n"
    )
    r = subprocess.run(
        [sys.executable, "-m", "mypy", "--config-file", "mypy.ini", "--no-incremental",
         "--cache-dir", str(tmp_path / "cache"), "user.py"],
        capture_output=True, text=True, cwd=tmp_path, timeout=300,
    )
    out = r.stdout + r.stderr
    assert "py.typed" not in out and "import-untyped" not in out, out
    revealed = re.findall(r'user\.py:(\d): note: Revealed type is "(?:builtins\.)?(\w+)"', out)
    assert revealed == [("3", "float"), ("4", "str")], out
    errors = re.findall(r"user\.py:(\d): error: (.*)", out)
    assert [(line, text.split(" (")[0]) for line, text in errors] == [
        ("5", "Incompatible types in assignment")], out


def test_the_cli_loads_the_planner_only_for_commands_that_use_it(tmp_path: Path) -> None:
    import subprocess
    import sys

    from trilemma.journal import Journal

    db = tmp_path / "j.db"
    with Journal(db):
        pass
    code = "\n".join([
        "import sys",
        "from trilemma.cli import main",
        "assert main(['--version']) == 0",
        "loaded = ['numpy', 'pydantic', 'yaml', 'trilemma.spec.model'] & sys.modules.keys()",
        "assert not loaded, ('--version', sorted(loaded))",
        f"assert main(['runs', '--journal', {str(db)!r}]) == 0",
        "loaded = ['numpy', 'yaml', 'trilemma.plan.estimate', 'trilemma.spec.model'] & sys.modules.keys()",
        "assert not loaded, ('runs', sorted(loaded))",
    ])  # fmt: skip
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
