"""Where the example specs are: inside the wheel, or the checkout's ``examples/`` folder."""

from __future__ import annotations

from pathlib import Path

from trilemma.errors import UsageError

__all__ = ["STARTER", "example_path", "workflow_examples"]

_HERE = Path(__file__).resolve().parent


def example_path(name: str) -> Path:
    """The path of a shipped example spec, such as ``seed-chain.yaml``."""
    for folder in (_HERE / "examples", _HERE.parents[1] / "examples", Path.cwd() / "examples"):
        if (folder / name).is_file():
            return folder / name
    raise UsageError(f"example {name!r} is not installed; run from a trilemma checkout")


#: The example ``trilemma init`` starts from unless told otherwise.
STARTER = "starter"


def workflow_examples() -> dict[str, Path]:
    """The shipped example workflows by name (``ticket`` for ``ticket.yaml``); the
    gateway's config, not a workflow, left out."""
    folder = example_path(f"{STARTER}.yaml").parent
    return {p.stem: p for p in sorted(folder.glob("*.yaml")) if p.stem != "gateway"}
