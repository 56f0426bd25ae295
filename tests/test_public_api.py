"""Review rules as tests: the public surface and the layering."""

from __future__ import annotations

import ast
import doctest
from pathlib import Path

import trilemma
import trilemma.cache.semantic
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
                   trilemma.report.tables):
        failures, _ = doctest.testmod(module)
        assert failures == 0


def test_the_runner_loads_on_first_use_and_unknown_names_still_fail() -> None:
    import subprocess
    import sys

    code = ("import sys, trilemma; assert 'trilemma.run.session' not in sys.modules; "
            "trilemma.execute; assert 'trilemma.run.session' in sys.modules")  # fmt: skip
    assert subprocess.run([sys.executable, "-c", code]).returncode == 0
    try:
        trilemma.no_such_name  # noqa: B018
    except AttributeError as exc:
        assert "no attribute 'no_such_name'" in str(exc)
    else:
        raise AssertionError("an unknown name must raise AttributeError")
