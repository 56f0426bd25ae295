"""Every error trilemma raises, in one tree.

::

    TrilemmaError                 base; ``exit_code`` says what the CLI returns
    ├── InputError                bad input from the user (exit code 2)
    │   ├── SpecError             a workflow spec: file, field path, what is wrong, the fix
    │   │   └── CycleError        the dependencies form a cycle (names it)
    │   └── UsageError            a flag or argument of the command line
    ├── PlanError                 the planner cannot answer (exit code 1)
    │   └── InfeasibleError       no configuration meets the budgets
    └── RunError                  a run failed or stopped (exit code 1)

Messages are written for the person at the terminal: they name the file, the
field path and the value, say what is wrong and how to fix it, on one line.
"""

from __future__ import annotations

__all__ = [
    "CycleError",
    "InfeasibleError",
    "InputError",
    "PlanError",
    "RunError",
    "SpecError",
    "TrilemmaError",
    "UsageError",
]


class TrilemmaError(Exception):
    """Base class of every error trilemma raises on purpose."""

    exit_code: int = 1


class InputError(TrilemmaError):
    """The user gave something trilemma cannot use; nothing was spent."""

    exit_code = 2


class SpecError(InputError):
    """A workflow spec is malformed.

    ``source`` is the file (or ``<string>``), ``field`` the dotted path of the
    offending field (``steps[2].retries``), ``problem`` what is wrong and how
    to fix it.
    """

    def __init__(self, source: str, field: str, problem: str) -> None:
        self.source = source
        self.field = field
        self.problem = problem
        where = f"{source}: {field}" if field else source
        super().__init__(f"{where}: {problem}")


class CycleError(SpecError):
    """The ``after:`` dependencies form a cycle; ``cycle`` lists it in order."""

    def __init__(self, source: str, cycle: list[str]) -> None:
        self.cycle = cycle
        loop = " -> ".join([*cycle, cycle[0]])
        if len(cycle) == 1:
            problem = f"step {cycle[0]!r} depends on itself; remove it from its own after:"
        else:
            problem = (
                f"dependency cycle {loop} (each must run before the next); "
                "remove one of these after: entries"
            )
        super().__init__(source, f"steps.{cycle[0]}.after", problem)


class UsageError(InputError):
    """A command-line flag or argument is wrong."""


class PlanError(TrilemmaError):
    """The planner cannot produce an answer for a valid spec."""


class InfeasibleError(PlanError):
    """No configuration in the searched space meets the budgets."""


class RunError(TrilemmaError):
    """A run failed or was stopped."""
