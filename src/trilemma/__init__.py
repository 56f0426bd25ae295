"""trilemma: plan, run and measure LLM agent workflows under cost, latency and reliability budgets.

>>> import trilemma
>>> wf = trilemma.parse_workflow('''
... version: 1
... models: {premium: {usd_per_call: 0.03, latency_s: 2.0, p_ok: 0.985}}
... steps: [{id: a, model: premium}, {id: b, model: premium, after: [a], retries: 1}]
... ''')
>>> round(trilemma.estimate(wf).cost_worst, 3)
0.09
"""

import gc
from typing import TYPE_CHECKING

from trilemma._lazy import lazy_names
from trilemma.errors import (
    CycleError,
    InfeasibleError,
    InputError,
    PlanError,
    RunError,
    SpecError,
    TrilemmaError,
    UsageError,
)

#: Objects in the garbage collector's permanent generation when trilemma is first imported:
#: Python's own (3.12 starts with a few hundred there, 3.11 and 3.13 with none), not those of
#: a program that froze its heap since (a server before it forks), which a run leaves frozen
#: (``trilemma.run.session.collector_spared``). Taken here, as the runner loads on first use.
_FROZEN_AT_IMPORT = gc.get_freeze_count()

if TYPE_CHECKING:  # each loaded on first use (below): `import trilemma` and the CLI stay quick
    from trilemma.journal import Journal
    from trilemma.plan.estimate import Estimate, StepEstimate, estimate
    from trilemma.plan.optimize import Candidate, OptimizeResult, optimize
    from trilemma.plan.sensitivity import Sensitivity, sensitivity
    from trilemma.plan.simulate import SimResult, simulate
    from trilemma.run.batch import BatchResult, run_batch, run_batch_async
    from trilemma.run.executor import RunResult
    from trilemma.run.session import (
        execute,
        execute_async,
        execute_many,
        execute_many_async,
        resume,
        resume_async,
    )
    from trilemma.run.shared_budget import SharedCeiling
    from trilemma.spec import (
        Budget,
        Debate,
        Faults,
        ModelProfile,
        Simulation,
        Step,
        Workflow,
        dump_workflow,
        load_workflow,
        parse_workflow,
        workflow_from_dict,
    )

__version__ = "0.1.0"

#: Where each public name lives, imported when first asked for: the planner needs numpy and
#: pydantic, the runner asyncio and SQLite, and a command uses only some of them.
_SPEC = ("Budget", "Debate", "Faults", "ModelProfile", "Simulation", "Step", "Workflow",
         "dump_workflow", "load_workflow", "parse_workflow", "workflow_from_dict")
_LAZY = {
    **dict.fromkeys(("Estimate", "StepEstimate", "estimate"), "trilemma.plan.estimate"),
    **dict.fromkeys(("Candidate", "OptimizeResult", "optimize"), "trilemma.plan.optimize"),
    **dict.fromkeys(("Sensitivity", "sensitivity"), "trilemma.plan.sensitivity"),
    **dict.fromkeys(("SimResult", "simulate"), "trilemma.plan.simulate"),
    **dict.fromkeys(_SPEC, "trilemma.spec"),
    "BatchResult": "trilemma.run.batch",
    "Journal": "trilemma.journal",
    "RunResult": "trilemma.run.executor",
    "SharedCeiling": "trilemma.run.shared_budget",
    "execute": "trilemma.run.session",
    "execute_async": "trilemma.run.session",
    "execute_many": "trilemma.run.session",
    "execute_many_async": "trilemma.run.session",
    "resume": "trilemma.run.session",
    "resume_async": "trilemma.run.session",
    "run_batch": "trilemma.run.batch",
    "run_batch_async": "trilemma.run.batch",
}


__getattr__, __dir__ = lazy_names(__name__, _LAZY, globals())


__all__ = [
    "BatchResult",
    "Budget",
    "Candidate",
    "CycleError",
    "Debate",
    "Estimate",
    "Faults",
    "InfeasibleError",
    "InputError",
    "Journal",
    "ModelProfile",
    "OptimizeResult",
    "PlanError",
    "RunError",
    "RunResult",
    "Sensitivity",
    "SharedCeiling",
    "SimResult",
    "Simulation",
    "SpecError",
    "Step",
    "StepEstimate",
    "TrilemmaError",
    "UsageError",
    "Workflow",
    "__version__",
    "dump_workflow",
    "estimate",
    "execute",
    "execute_async",
    "execute_many",
    "execute_many_async",
    "load_workflow",
    "optimize",
    "parse_workflow",
    "resume",
    "resume_async",
    "run_batch",
    "run_batch_async",
    "sensitivity",
    "simulate",
    "workflow_from_dict",
]
