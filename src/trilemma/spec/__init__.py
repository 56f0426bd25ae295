"""The workflow spec: pydantic models, YAML/JSON loading and validation.

A spec names model profiles, lists steps (a DAG through ``after:``) and may set
a budget. Every way a spec can be wrong becomes one :class:`SpecError` that
names the file, the field path (``steps[2].retries``) and the fix.

>>> wf = parse_workflow('''
... version: 1
... models: {premium: {usd_per_call: 0.03, latency_s: 2.0, p_ok: 0.985}}
... steps: [{id: plan, model: premium}]
... ''')
>>> wf.steps[0].id
'plan'
"""

from typing import TYPE_CHECKING

from trilemma._lazy import lazy_names

if TYPE_CHECKING:  # each loaded on first use (below): the command line reads its bounds
    from trilemma.spec.load import dump_workflow, load_workflow, parse_workflow, workflow_from_dict
    from trilemma.spec.model import (
        SPEC_VERSION,
        Branch,
        Budget,
        CacheRule,
        Debate,
        Faults,
        Gate,
        ModelProfile,
        SimAnswers,
        Simulation,
        Step,
        Vote,
        Workflow,
    )
    from trilemma.spec.schema import spec_json_schema
    from trilemma.spec.template import render_template, template_fields

#: Where each name lives: the models need pydantic, loading YAML too; ``trilemma.spec.bounds``
#: (the bounds the command line checks its flags against) needs neither.
_LAZY = {
    **dict.fromkeys(("dump_workflow", "load_workflow", "parse_workflow", "workflow_from_dict"),
                    "trilemma.spec.load"),
    **dict.fromkeys(("SPEC_VERSION", "Branch", "Budget", "CacheRule", "Debate", "Faults", "Gate",
                     "ModelProfile", "SimAnswers", "Simulation", "Step", "Vote", "Workflow"),
                    "trilemma.spec.model"),
    "spec_json_schema": "trilemma.spec.schema",
    **dict.fromkeys(("render_template", "template_fields"), "trilemma.spec.template"),
}  # fmt: skip


__getattr__, __dir__ = lazy_names(__name__, _LAZY, globals())


__all__ = [
    "SPEC_VERSION",
    "Branch",
    "Budget",
    "CacheRule",
    "Debate",
    "Faults",
    "Gate",
    "ModelProfile",
    "SimAnswers",
    "Simulation",
    "Step",
    "Vote",
    "Workflow",
    "dump_workflow",
    "load_workflow",
    "parse_workflow",
    "render_template",
    "spec_json_schema",
    "template_fields",
    "workflow_from_dict",
]
