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
from trilemma.plan.estimate import Estimate, StepEstimate, estimate
from trilemma.plan.optimize import Candidate, OptimizeResult, optimize
from trilemma.plan.simulate import SimResult, simulate
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

__all__ = [
    "Budget",
    "Candidate",
    "CycleError",
    "Debate",
    "Estimate",
    "Faults",
    "InfeasibleError",
    "InputError",
    "ModelProfile",
    "OptimizeResult",
    "PlanError",
    "RunError",
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
    "load_workflow",
    "optimize",
    "parse_workflow",
    "simulate",
    "workflow_from_dict",
]
