"""The reliability cliff: predicted p^S against measured end-to-end success.

A chain of S steps where each step adds a digit to the previous step's answer
("What is 12 + 3?"), so step i builds on step i-1 and one wrong step ruins the
end. Each of ``runs`` runs draws fresh numbers (inputs), goes through the real
executor and journal, and counts as a success only if the last step's number
is the true sum. The planner predicts success as the product of per-step p_ok,
cost and latency from the same profile; the table shows both.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from trilemma.errors import UsageError
from trilemma.experiments.tasks import (
    CHAIN_PROMPT,
    CHAIN_SHOTS,
    EXTRACT_PROMPT,
    EXTRACT_SHOTS,
    chain_tasks,
    extract_sentence,
)
from trilemma.experiments.trials import (
    Bill,
    JournalRef,
    check_parallel,
    check_reachable,
    check_runs,
    opened,
)
from trilemma.plan.agreement import wilson
from trilemma.plan.estimate import Estimate, estimate
from trilemma.run.session import execute, execute_many
from trilemma.spec import ModelProfile, Workflow, workflow_from_dict

__all__ = ["MAX_CHAIN", "CliffPoint", "chain_workflow", "check_chains", "cliff", "cliff_bill",
           "predicted"]

ADD_FEW_SHOT = (
    "\n".join(f"Q: {q}\nA: {a}" for q, a in CHAIN_SHOTS) + "\nQ: What is {prev} + {d}?\nA:"
)
RELAY_FEW_SHOT = (
    "\n".join(f"Q: {q}\nA: {a}" for q, a in EXTRACT_SHOTS)
    + '\nQ: What number appears in this sentence: "{sentence}"\nA:'
)

MAX_CHAIN = 1_000
"""The longest chain ``cliff`` builds: at p_ok 0.99 one of 1,000 steps succeeds 0.004% of the
time, and each run sends every step to the model one after another."""

#: The chain kinds, and the suite that calibrates one of their steps.
TASKS = {"add": "chain", "relay": "extract"}


def _prompt(task: str, i: int, prev: str, api: str) -> str:
    """Step i's prompt; ``prev`` is a template field naming the previous value."""
    if task == "add":
        template = ADD_FEW_SHOT if api == "completions" else CHAIN_PROMPT
        return template.replace("{d}", f"{{d{i}}}").replace("{prev}", prev)
    sentence = extract_sentence(i, prev)
    template = RELAY_FEW_SHOT if api == "completions" else EXTRACT_PROMPT
    return template.replace("{sentence}", sentence)


def chain_workflow(
    model: str, profile: ModelProfile, steps: int, task: str = "add", retries: int = 0
) -> Workflow:
    """S chained steps on one model; inputs ``start`` (and ``d1`` ... ``dS`` for ``add``).

    ``add``: each step adds a digit to the previous answer ("What is 12 + 3?").
    ``relay``: each step reads the previous answer back out of a sentence; the end
    must equal the start.
    """
    if task not in TASKS:
        raise UsageError(f"--task {task!r}: choose from {', '.join(TASKS)}")
    spec_steps: list[dict[str, Any]] = []
    for i in range(1, steps + 1):
        prev = "{start}" if i == 1 else f"{{s{i - 1}}}"
        step: dict[str, Any] = {"id": f"s{i}", "model": model, "retries": retries, "extract": "number",
                                "prompt": _prompt(task, i, prev, profile.api)}  # fmt: skip
        if i > 1:
            step["after"] = [f"s{i - 1}"]
        spec_steps.append(step)
    inputs: dict[str, Any] = {"start": None}
    if task == "add":
        inputs.update({f"d{i}": None for i in range(1, steps + 1)})
    models = {model: profile.model_dump(mode="json", exclude_defaults=True)}
    return workflow_from_dict(
        {"version": 1, "models": models, "steps": spec_steps, "inputs": inputs}
    )


@dataclass(frozen=True, slots=True)
class CliffPoint:
    """One chain length: predicted beside measured."""

    steps: int
    """Chain length S."""
    runs: int
    """Runs made."""
    successes: int
    """Runs whose last answer was the true sum."""
    predicted: float
    """Planner's end-to-end success (p_ok^S)."""
    cost_predicted: float
    """Planner's expected cost of a run (:func:`predicted`)."""
    cost_measured: float
    """Mean measured cost."""
    latency_predicted: float
    """Planner's expected latency of a run (:func:`predicted`)."""
    latency_measured: float
    """Mean measured seconds."""

    @property
    def measured(self) -> float:
        """Share of runs that ended right."""
        return self.successes / self.runs

    def to_json(self) -> dict[str, Any]:
        """A row of ``trilemma cliff --json``."""
        lo, hi = wilson(self.successes, self.runs)
        return {
            "steps": self.steps, "runs": self.runs, "predicted_success": round(self.predicted, 4),
            "measured_success": round(self.measured, 4), "measured_ci95": [round(lo, 4), round(hi, 4)],
            "cost_usd": {"predicted": self.cost_predicted, "measured": self.cost_measured},
            "latency_s": {"predicted": round(self.latency_predicted, 4), "measured": round(self.latency_measured, 4)},
        }  # fmt: skip


def check_chains(lengths: list[int], runs: int) -> None:
    """Refuse chain lengths outside 1 to :data:`MAX_CHAIN`, or a run count
    :func:`~trilemma.experiments.trials.check_runs` refuses (UsageError)."""
    if not lengths or min(lengths) < 1 or max(lengths) > MAX_CHAIN:
        given = ",".join(map(str, lengths)) or repr("")
        raise UsageError(f"--steps {given}: give chain lengths from 1 to {MAX_CHAIN:,}, "
                         "such as 1,2,5")  # fmt: skip
    check_runs(runs)


def predicted(profile: ModelProfile, e: Estimate) -> tuple[float, float]:
    """The planner's mean cost and latency of a run of a chain on ``profile`` (``e``, the
    chain's estimate). On the simulator a wrong answer fails its step, which stops the run
    there (:attr:`~trilemma.plan.estimate.Estimate.halting`: $0.00336 for five $0.001 steps at
    p_ok 0.8, not $0.005); on a real endpoint no gate judges an answer, so a wrong number goes
    on to the next step and every run is sent to its end (the expected figures)."""
    if profile.runs_on_simulator and e.halting is not None:
        return e.halting.cost_usd, e.halting.latency_s
    return e.cost_expected, e.latency_expected_s


def cliff_bill(chains: list[tuple[Workflow, Estimate]], runs: int) -> Bill | None:
    """What ``runs`` runs of each of ``chains`` (a chain and the planner's estimate of it) will
    bill on a real endpoint, by the planner; None on the simulator, which bills nobody. A
    cliff's runs hold no ceiling: the worst case is every step sent and billed."""
    endpoints = chains[0][0].endpoints if chains else ()
    if not endpoints:
        return None
    return Bill(runs * len(chains), endpoints, runs * math.fsum(e.cost_expected for _, e in chains),
                runs * math.fsum(e.cost_worst for _, e in chains), None)  # fmt: skip


def cliff(
    model: str,
    profile: ModelProfile,
    lengths: list[int],
    runs: int,
    journal: JournalRef,
    *,
    task: str = "add",
    seed: int = 0,
    on_progress: Callable[[int, int], None] | None = None,
    parallel: int = 1,
    on_bill: Callable[[Bill], None] | None = None,
) -> list[CliffPoint]:
    """Run chains of each length ``runs`` times; compare with the planner (``journal``, given
    as a path, is opened once the lengths and run count pass). ``parallel``: runs of a
    length at a time, on one event loop, sharing the model's limits (1: each alone).
    ``on_bill(bill)``: before the runs start on a real endpoint (every check passed), what
    they will bill by the planner (:func:`cliff_bill`)."""
    check_chains(lengths, runs)
    check_parallel(parallel)
    check_reachable(chain_workflow(model, profile, 1, task))  # a server that is down is no cliff
    laid = [(wf, estimate(wf)) for wf in (chain_workflow(model, profile, s, task) for s in lengths)]
    if on_bill is not None and (bill := cliff_bill(laid, runs)) is not None:
        on_bill(bill)
    points = []
    total, done = len(lengths) * runs, 0
    with opened(journal) as j:
        for steps, (wf, e) in zip(lengths, laid, strict=True):
            chains, inputs = [], []
            for r in range(runs):
                start, adds = chain_tasks(steps, seed=seed * 100_003 + steps * 1_009 + r)
                if task == "relay":
                    start, adds = start * 37 + r % 97, [0] * steps  # a number to carry, unchanged
                    inputs.append({"start": str(start)})
                else:
                    inputs.append({"start": str(start), **{f"d{i}": str(a) for i, a in enumerate(adds, 1)}})
                chains.append(start + sum(adds))

            def ran(*_: object) -> None:
                nonlocal done
                done += 1
                if on_progress is not None:
                    on_progress(done, total)

            source, seeds = f"<cliff {steps}>", [seed + r for r in range(runs)]
            if parallel == 1:  # each alone, in an event loop of its own
                results = []
                for r in range(runs):
                    results.append(execute(wf, journal=j, inputs=inputs[r], seed=seeds[r], source=source))
                    ran()
            else:
                results = execute_many(wf, seeds, journal=j, parallel=parallel, inputs=inputs,
                                       source=source, on_run=ran)  # fmt: skip
            ok, costs, latencies = 0, [], []
            for result, answer in zip(results, chains, strict=True):
                right = result.outputs.get(f"s{steps}") == str(answer)
                ok += result.status == "ok" and (profile.runs_on_simulator or right)
                costs.append(result.cost_usd)
                latencies.append(result.latency_s)
            cost, latency = predicted(profile, e)
            points.append(CliffPoint(steps, runs, ok, e.reliability, cost, statistics.fmean(costs),
                                     latency, statistics.fmean(latencies)))  # fmt: skip
    return points
