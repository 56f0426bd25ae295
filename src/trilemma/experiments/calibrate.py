"""Turn measurements into the planner's model profiles.

:func:`calibrate` runs a task suite against any runnable profile (a local model,
an OpenAI-compatible endpoint, the simulator), one call at a time, and measures
per-call success with its 95% interval, latency, tokens and cost. The result
drops into a spec's ``models:``. A local model has no bill, so it gets a nominal
price from its measured time: :data:`LOCAL_USD_PER_SECOND`, what a 2-vCPU cloud
machine costs (about $0.10 an hour), so that "cheap" and "premium" mean something.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from trilemma._format import did_you_mean
from trilemma._tasks import run_whole
from trilemma.errors import UsageError
from trilemma.experiments.tasks import SUITES, Task
from trilemma.plan.agreement import wilson
from trilemma.providers.base import Request, cost_of, worst_case_cost
from trilemma.spec import ModelProfile, Workflow

__all__ = ["LOCAL_USD_PER_SECOND", "Calibration", "calibrate", "wilson"]

LOCAL_USD_PER_SECOND = 0.10 / 3600
MAX_TOKENS = 48


@dataclass(frozen=True, slots=True)
class Calibration:
    """What a suite measured of a model."""

    model: str
    """The profile's name."""
    suite: str
    """The suite's name."""
    correct: tuple[bool, ...]
    """Per task, whether the answer checked."""
    latency_s: tuple[float, ...]
    """Per task, seconds."""
    prompt_tokens: tuple[int | None, ...]
    """Per task, as the endpoint reported."""
    completion_tokens: tuple[int | None, ...]
    """Per task, as the endpoint reported."""
    cost_usd: tuple[float, ...]
    """Per task, at the profile's prices."""
    local: bool
    """A local model: priced from its time."""
    samples: tuple[tuple[str, str, str], ...]
    """A few (question, expected, answer) for the record."""

    @property
    def n(self) -> int:
        """Tasks run."""
        return len(self.correct)

    @property
    def p_ok(self) -> float:
        """Share answered right."""
        return sum(self.correct) / self.n

    @property
    def ci95(self) -> tuple[float, float]:
        """Wilson interval of ``p_ok``."""
        return wilson(sum(self.correct), self.n)

    @property
    def usd_per_call(self) -> float:
        """Mean cost of a call (nominal, from time, for a local model)."""
        if self.local:
            return statistics.fmean(self.latency_s) * LOCAL_USD_PER_SECOND
        return statistics.fmean(self.cost_usd)

    def summary(self) -> dict[str, Any]:
        """The figures, for JSON and for the profile's ``calibration:`` block."""
        lo, hi = self.ci95
        q = statistics.quantiles(self.latency_s, n=20) if self.n > 1 else [self.latency_s[0]] * 19

        def mean(xs: tuple[int | None, ...]) -> float | None:
            known = [x for x in xs if x is not None]
            return round(statistics.fmean(known), 2) if known else None

        return {
            "suite": self.suite, "n": self.n, "p_ok": round(self.p_ok, 4),
            "p_ok_ci95": [round(lo, 4), round(hi, 4)],
            "latency_s": {"mean": round(statistics.fmean(self.latency_s), 4),
                          "p50": round(statistics.median(self.latency_s), 4), "p95": round(q[18], 4)},
            "tokens": {"prompt": mean(self.prompt_tokens), "completion": mean(self.completion_tokens)},
            "usd_per_call": self.usd_per_call,
            "price": "nominal: measured seconds x $0.10 per hour" if self.local else "the profile's prices",
        }  # fmt: skip

    def profile(self, base: ModelProfile) -> dict[str, Any]:
        """``base`` with the measured p_ok, latency and price, ready for a spec's models:."""
        data = base.model_dump(mode="json", exclude_defaults=True, exclude={"calibration"})
        data.update(p_ok=max(round(self.p_ok, 4), 0.0001), latency_s=round(statistics.fmean(self.latency_s), 4),
                    usd_per_call=float(f"{self.usd_per_call:.3g}"), calibration=self.summary())  # fmt: skip
        return data


def calibrate(
    wf: Workflow,
    model: str,
    suite: str,
    n: int,
    *,
    seed: int = 0,
    on_progress: Callable[[int, int], None] | None = None,
) -> Calibration:
    """Run ``n`` tasks of ``suite`` against ``wf.models[model]``; nothing is written."""
    from trilemma.run.session import build_providers

    if suite not in SUITES:
        raise UsageError(f"--suite {suite!r}: no such suite{did_you_mean(suite, SUITES)}; "
                         f"choose from {', '.join(SUITES)}")
    if model not in wf.models:
        raise UsageError(
            f"--model {model!r}: the spec has no such model; it has {', '.join(wf.models)}"
        )
    tasks = SUITES[suite].generate(n, seed)
    profile = wf.models[model]
    provider = build_providers(wf, seed)[model]
    local = profile.base_url is not None and (
        "127.0.0.1" in profile.base_url or "localhost" in profile.base_url
    )
    return run_whole(_run(model, suite, tasks, profile, provider, local, on_progress))


async def _run(
    model: str, suite: str, tasks: list[Task], profile: ModelProfile, provider: Any, local: bool,
    on_progress: Callable[[int, int], None] | None,
) -> Calibration:  # fmt: skip
    correct: list[bool] = []
    latency: list[float] = []
    p_tok: list[int | None] = []
    c_tok: list[int | None] = []
    cost: list[float] = []
    samples: list[tuple[str, str, str]] = []
    base = profile.api == "completions"
    try:
        for i, task in enumerate(tasks):
            content = task.few_shot if base else task.prompt
            request = Request(
                model=model, messages=({"role": "user", "content": content},), max_tokens=MAX_TOKENS,
                timeout_s=profile.timeout_s, idempotency_key=f"calibrate:{suite}:{i}",
                temperature=profile.temperature, stop=tuple(profile.stop or (["\n"] if base else [])),
                call_key=f"calibrate:{suite}:{i}", p_ok=profile.p_ok, sim_ok=task.answer, sim_bad="?",
            )  # fmt: skip
            started = time.perf_counter()
            c = await provider.complete(request, profile)
            latency.append(time.perf_counter() - started)
            ok = c.verdict if c.verdict is not None else task.check(c.text)
            correct.append(bool(ok))
            p_tok.append(c.usage.prompt_tokens)
            c_tok.append(c.usage.completion_tokens)
            cost.append(cost_of(profile, c.usage, worst_case_cost(profile, request)))
            if len(samples) < 5:
                samples.append((task.prompt, task.answer, c.text.strip()[:80]))
            if on_progress is not None:
                on_progress(i + 1, len(tasks))
    finally:
        close = getattr(provider, "aclose", None)
        if close is not None:
            await close()
    return Calibration(model, suite, tuple(correct), tuple(latency), tuple(p_tok), tuple(c_tok),
                       tuple(cost), local, tuple(samples))  # fmt: skip
