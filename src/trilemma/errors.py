"""Every error trilemma raises, in one tree.

::

    TrilemmaError                 base; ``exit_code`` says what the CLI returns
    ├── InputError                bad input from the user (exit code 2)
    │   ├── SpecError             a workflow spec: file, field path, what is wrong, the fix
    │   │   └── CycleError        the dependencies form a cycle (names it)
    │   └── UsageError            a flag or argument of the command line
    ├── PlanError                 the planner cannot answer (exit code 1)
    │   └── InfeasibleError       no configuration meets the budgets
    ├── ProviderError             one LLM call failed; the ledger keeps its class
    │   ├── TransientError        worth retrying: 5xx, connection reset; ``retry_after``
    │   │   │                     seconds when the server said (a 503's Retry-After)
    │   │   ├── RateLimited       429; ``retry_after`` seconds when the server said
    │   │   ├── ProviderTimeout   no answer within the attempt's timeout
    │   │   └── EndpointUnreachable  no connection; ``endpoint`` names the URL
    │   ├── MalformedAnswer       a 200 whose body is not a usable completion
    │   └── FatalProviderError    retrying cannot help: auth, unknown model, bad request
    │       └── QuotaExceeded     the endpoint refused for money: 402, or 429 insufficient_quota
    ├── GateRejected              an answer failed the step's validation gate
    ├── SetupError                a part trilemma needs is missing or will not start (exit code 1)
    ├── RunError                  a run failed or was stopped (exit code 1)
    │   ├── BudgetExhausted       a call's reservation would cross the cost ceiling
    │   └── DeadlineExceeded      the run's deadline passed
    └── JournalError              the journal cannot be read or written (exit code 1)
        ├── JournalBusy           another process holds the write lock (retried internally)
        ├── JournalPathError      the --journal path cannot be opened or created (exit code 2)
        └── NotAJournal           the file is not a trilemma journal, or is newer (exit code 2)

Messages are written for the person at the terminal: they name the file, the
field path and the value, say what is wrong and how to fix it, on one line.
"""

from __future__ import annotations

__all__ = [
    "BudgetExhausted",
    "CycleError",
    "DeadlineExceeded",
    "EndpointUnreachable",
    "FatalProviderError",
    "GateRejected",
    "InfeasibleError",
    "InputError",
    "JournalBusy",
    "JournalError",
    "JournalPathError",
    "MalformedAnswer",
    "NotAJournal",
    "PlanError",
    "ProviderError",
    "ProviderTimeout",
    "QuotaExceeded",
    "RateLimited",
    "RunError",
    "SetupError",
    "SpecError",
    "TransientError",
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


class ProviderError(TrilemmaError):
    """One LLM call failed. ``kind`` is the short class name the ledger records."""

    kind = "provider_error"
    retryable = False


class TransientError(ProviderError):
    """A failure worth retrying: a 5xx, a dropped connection. ``retry_after``: the server's
    advice in seconds on when to try again (a 503's Retry-After), None when it gave none."""

    kind = "transient"
    retryable = True

    def __init__(self, message: str, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class RateLimited(TransientError):
    """The provider said slow down (429); ``retry_after`` is its advice in seconds."""

    kind = "rate_limited"


class ProviderTimeout(TransientError):
    """No answer within the attempt's timeout."""

    kind = "timeout"


class EndpointUnreachable(TransientError):
    """No connection to the endpoint (refused, reset, no route). The message names
    ``endpoint``, its base URL, for the person who runs the workflow; a gateway tells its
    clients only that the upstream could not be reached. The ledger records it as
    ``transient``."""

    def __init__(self, message: str, endpoint: str) -> None:
        super().__init__(message)
        self.endpoint = endpoint


class MalformedAnswer(ProviderError):
    """A response that is not a usable completion (no choices, not JSON)."""

    kind = "malformed"
    retryable = True


class FatalProviderError(ProviderError):
    """Retrying cannot help: bad credentials, an unknown model, a bad request."""

    kind = "fatal"


class QuotaExceeded(FatalProviderError):
    """The endpoint refused for money: a 402, or a 429 whose code is ``insufficient_quota``
    (a trilemma gateway's spent key, an account out of credit). A run stops as
    ``budget_exhausted``; retrying would only be refused again."""

    kind = "quota_exceeded"


class GateRejected(TrilemmaError):
    """An answer failed the step's validation gate; ``reason`` says why."""

    kind = "rejected"
    retryable = True

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class SetupError(TrilemmaError):
    """A part trilemma needs (an optional extra, a model package, a free port) is missing."""


class RunError(TrilemmaError):
    """A run failed or was stopped."""


class BudgetExhausted(RunError):
    """A call was not sent: its worst-case cost would cross the ceiling."""


class DeadlineExceeded(RunError):
    """The run's deadline passed."""


class JournalError(TrilemmaError):
    """The journal cannot be read or written."""


class JournalBusy(JournalError):
    """Another process holds the journal's write lock."""


class JournalPathError(JournalError):
    """The journal's path cannot be opened or created: a wrong ``--journal``, not a failed run."""

    exit_code = 2


class NotAJournal(JournalError):
    """The file is not a trilemma journal, is corrupted, or is from a newer trilemma."""

    exit_code = 2
