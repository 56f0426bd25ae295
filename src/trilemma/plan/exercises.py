"""The seed's exercises 32.10.1 to 32.10.3, answered with the planner itself.

Every figure comes from :func:`trilemma.plan.estimate.estimate` run on specs
built here; the matching YAML specs are in ``examples/``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from trilemma.plan.estimate import Estimate, estimate
from trilemma.spec import Workflow, workflow_from_dict

__all__ = [
    "DebateVsRetry",
    "LeverSaving",
    "RoutingSweep",
    "TicketAnswer",
    "debate_vs_retry",
    "routing_sweep",
    "ticket_spend",
]

PREMIUM = {"usd_per_call": 0.030, "latency_s": 2.0, "p_ok": 0.985}
SMALL = {"usd_per_call": 0.002, "latency_s": 0.4, "p_ok": 0.945}


def _spec(models: dict[str, Any], steps: list[dict[str, Any]], name: str) -> Workflow:
    return workflow_from_dict({"version": 1, "name": name, "models": models, "steps": steps})


def _chain(steps: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Link steps into a sequence."""
    return [{**s, "after": [steps[i - 1]["id"]]} if i else dict(s) for i, s in enumerate(steps)]


# ------------------------------------------------------------------------- 32.10.1


@dataclass(frozen=True, slots=True)
class LeverSaving:
    """What one lever does to the ticket's worst-case bill."""

    lever: str
    """The lever pulled."""
    calls_worst: int
    """Worst-case calls per ticket after pulling it."""
    daily_usd_worst: float
    """Worst-case daily spend after pulling it."""
    reliability: float
    """End-to-end success after pulling it."""


@dataclass(frozen=True, slots=True)
class TicketAnswer:
    """Exercise 32.10.1: size the multiplier."""

    estimate: Estimate
    """The 5-step ticket workflow as specified."""
    tickets_per_day: int
    """Volume."""
    levers: tuple[LeverSaving, ...]
    """Each single lever, biggest saving first."""

    def to_json(self) -> dict[str, Any]:
        """Figures for ``trilemma exercise 32.10.1 --json``."""
        e = self.estimate
        return {
            "calls_worst": e.calls_worst,
            "calls_book": e.calls_book,
            "cost_usd_per_ticket": {"book": round(e.cost_book, 12), "worst": round(e.cost_worst, 12),
                                    "expected": round(e.cost_expected, 12)},
            "daily_usd": {"book": round(e.cost_book * self.tickets_per_day, 6),
                          "expected": round(e.cost_expected * self.tickets_per_day, 6),
                          "worst": round(e.cost_worst * self.tickets_per_day, 6)},
            "levers": [{"lever": lv.lever, "calls_worst": lv.calls_worst,
                        "daily_usd_worst": round(lv.daily_usd_worst, 6),
                        "reliability": lv.reliability} for lv in self.levers],
        }  # fmt: skip


def ticket_workflow(
    debate: dict[str, int] | None = None, retries: int = 1, small_plain: bool = False
) -> Workflow:
    """The exercise's ticket: 5 steps, steps 2 and 4 debates, every step retried once."""
    debate = debate or {"agents": 3, "rounds": 2}
    plain = "small" if small_plain else "premium"
    steps = [
        {"id": "triage", "model": plain, "retries": retries},
        {"id": "diagnose", "model": "premium", "retries": retries, "debate": debate},
        {"id": "lookup", "model": plain, "retries": retries},
        {"id": "draft", "model": "premium", "retries": retries, "debate": debate},
        {"id": "reply", "model": plain, "retries": retries},
    ]
    return _spec({"premium": PREMIUM, "small": SMALL}, _chain(steps), "support ticket")


def ticket_spend(tickets_per_day: int = 200_000) -> TicketAnswer:
    """Calls, cost per ticket and daily spend; and which lever cuts the bill most."""
    variants = {
        "shrink each debate to one call (agents 1, rounds 1)": ticket_workflow(
            debate={"agents": 1, "rounds": 1}
        ),
        "halve each debate (3 agents, 1 round)": ticket_workflow(debate={"agents": 3, "rounds": 1}),
        "drop the retries": ticket_workflow(retries=0),
        "route the 3 plain steps to the small model": ticket_workflow(small_plain=True),
    }
    levers = []
    for name, wf in variants.items():
        e = estimate(wf, draw_runs=False)  # the chapter's figures: runs to their end
        levers.append(
            LeverSaving(name, e.calls_worst, e.cost_worst * tickets_per_day, e.reliability)
        )
    levers.sort(key=lambda lv: lv.daily_usd_worst)
    return TicketAnswer(estimate(ticket_workflow()), tickets_per_day, tuple(levers))


# ------------------------------------------------------------------------- 32.10.2


@dataclass(frozen=True, slots=True)
class RoutingPoint:
    """The routed and all-premium workflows at one hard fraction."""

    hard_fraction: float
    """Share of steps that are hard."""
    routed: Estimate
    """Easy steps to small, hard steps to premium."""


@dataclass(frozen=True, slots=True)
class RoutingSweep:
    """Exercise 32.10.2: where does routing backfire?"""

    steps: int
    """Steps in the workflow."""
    router: dict[str, float]
    """Router cost per step, latency per step, misroute rate, small model's p on hard steps."""
    points: tuple[RoutingPoint, ...]
    """One per hard fraction k / steps."""
    baseline: Estimate
    """All steps on premium, no router."""
    crossover: float | None
    """Hard fraction at which routed q/$ falls to the baseline's (None: it never does)."""

    def to_json(self) -> dict[str, Any]:
        """Figures for ``trilemma exercise 32.10.2 --json``."""
        return {
            "steps": self.steps,
            "router": self.router,
            "crossover_hard_fraction": self.crossover,
            "baseline": _brief(self.baseline),
            "points": [{"hard_fraction": p.hard_fraction, **_brief(p.routed)} for p in self.points],
        }


def _brief(e: Estimate) -> dict[str, Any]:
    return {
        "cost_usd": round(e.cost_book, 12),
        "latency_s": round(e.latency_critical_s, 12),
        "reliability": e.reliability,
        "quality_per_dollar": e.quality_per_dollar,
    }


def _routed_profiles(
    router_usd: float, router_s: float, misroute: float, p_small_hard: float
) -> dict[str, dict[str, float]]:
    """Easy and hard steps behind a router, as expected-value profiles.

    A routed step pays the router's call and waits for it; with probability
    ``misroute`` it lands on the other model (a hard step on small succeeds
    with ``p_small_hard``).
    """
    m = misroute

    def mix(
        a: dict[str, float], b: dict[str, float], pb: float, p_a: float, p_b: float
    ) -> dict[str, float]:
        return {
            "usd_per_call": router_usd + (1 - pb) * a["usd_per_call"] + pb * b["usd_per_call"],
            "latency_s": router_s + (1 - pb) * a["latency_s"] + pb * b["latency_s"],
            "p_ok": (1 - pb) * p_a + pb * p_b,
        }

    return {
        "easy": mix(SMALL, PREMIUM, m, SMALL["p_ok"], PREMIUM["p_ok"]),
        "hard": mix(PREMIUM, SMALL, m, PREMIUM["p_ok"], p_small_hard),
    }


def routing_sweep(
    steps: int = 12,
    router_usd: float = 0.0,
    router_s: float = 0.0,
    misroute: float = 0.0,
    p_small_hard: float | None = None,
) -> RoutingSweep:
    """Sweep the hard fraction of a sequential chain from 0 to 1.

    With the defaults (the seed's model: a free, perfect router and a small
    model as good on hard steps as on easy ones) routing never loses on q/$;
    a router that costs a call, misroutes, and a small model that is worse on
    hard steps make it backfire past a crossover.
    """
    p_hard = SMALL["p_ok"] if p_small_hard is None else p_small_hard
    profiles = _routed_profiles(router_usd, router_s, misroute, p_hard)
    baseline = estimate(
        _spec(
            {"premium": PREMIUM},
            _chain([{"id": f"s{i:02d}", "model": "premium"} for i in range(steps)]),
            "all premium",
        ),
        draw_runs=False,
    )
    points = []
    for k in range(steps + 1):
        kinds = ["hard"] * k + ["easy"] * (steps - k)
        wf = _spec(profiles, _chain(
            [{"id": f"s{i:02d}", "model": kind, "difficulty": kind} for i, kind in enumerate(kinds)]
        ), f"routed, {k} hard")  # fmt: skip
        points.append(RoutingPoint(k / steps, estimate(wf, draw_runs=False)))
    crossover = _crossover(profiles, baseline, steps)
    router = {"usd_per_step": router_usd, "latency_s_per_step": router_s,
              "misroute_rate": misroute, "p_small_on_hard": p_hard}  # fmt: skip
    return RoutingSweep(steps, router, tuple(points), baseline, crossover)


def _crossover(profiles: dict[str, dict[str, float]], base: Estimate, steps: int) -> float | None:
    """Bisection on a continuous hard fraction: routed q/$ minus the baseline's."""
    qpd_base = base.quality_per_dollar or 0.0

    def gap(f: float) -> float:
        e, h = profiles["easy"], profiles["hard"]
        log_p = steps * (f * math.log(h["p_ok"]) + (1 - f) * math.log(e["p_ok"]))
        cost = steps * (f * h["usd_per_call"] + (1 - f) * e["usd_per_call"])
        return math.exp(log_p) / cost - qpd_base

    if gap(0.0) <= 0:
        return 0.0
    if gap(1.0) > -1e-12:
        return None
    lo, hi = 0.0, 1.0
    for _ in range(60):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if gap(mid) > 0 else (lo, mid)
    return (lo + hi) / 2


# ------------------------------------------------------------------------- 32.10.3


@dataclass(frozen=True, slots=True)
class Option:
    """One way to treat the critical step."""

    name: str
    """What is done."""
    estimate: Estimate
    """The 10-step chain with it."""


@dataclass(frozen=True, slots=True)
class DebateVsRetry:
    """Exercise 32.10.3: the latency-reliability tension."""

    options: tuple[Option, ...]
    """None, debate, retry, debate + retry."""
    flips_worst: tuple[tuple[float, str], ...]
    """(budget from which, option recommended) when the budget binds worst-case latency."""
    flips_expected: tuple[tuple[float, str], ...]
    """The same when it binds expected latency."""

    def recommend(self, budget_s: float, on: str = "worst") -> str | None:
        """The most reliable option within a latency budget (None if none fits)."""
        flips = self.flips_worst if on == "worst" else self.flips_expected
        best = None
        for start, name in flips:
            if budget_s + 1e-9 >= start:
                best = name
        return best

    def to_json(self) -> dict[str, Any]:
        """Figures for ``trilemma exercise 32.10.3 --json``."""
        return {
            "options": [{"option": o.name, "reliability": o.estimate.reliability,
                         "latency_s": {"critical_path": round(o.estimate.latency_critical_s, 12),
                                       "expected": round(o.estimate.latency_expected_s, 12),
                                       "worst": round(o.estimate.latency_worst_s, 12)},
                         "calls_worst": o.estimate.calls_worst} for o in self.options],
            "flips_worst": [{"from_budget_s": round(b, 12), "recommend": n} for b, n in self.flips_worst],
            "flips_expected": [{"from_budget_s": round(b, 12), "recommend": n}
                               for b, n in self.flips_expected],
        }  # fmt: skip


def debate_vs_retry(
    steps: int = 10,
    step_latency_s: float = 1.0,
    p_other: float = 0.98,
    p_cheap: float = 0.95,
    p_debate: float = 0.99,
    debate_latency_factor: int = 3,
) -> DebateVsRetry:
    """The critical step: plain, debated (p up, latency x3), retried once, or both."""
    model = {"m": {"usd_per_call": 0.01, "latency_s": step_latency_s, "p_ok": p_other}}

    def chain(critical: dict[str, Any]) -> Workflow:
        others = [{"id": f"s{i:02d}", "model": "m"} for i in range(1, steps)]
        return _spec(model, _chain([{"id": "critical", "model": "m", **critical}, *others]), "")

    debate = {"p_ok": p_debate, "debate_rounds": debate_latency_factor - 1}
    variants = {
        "plain step": {"p_ok": p_cheap},
        "debate": debate,
        "retry once": {"p_ok": p_cheap, "retries": 1},
        "debate + retry": {**debate, "retries": 1},
    }
    options = tuple(Option(n, estimate(chain(v), draw_runs=False)) for n, v in variants.items())
    return DebateVsRetry(
        options,
        _flips(options, lambda e: e.latency_worst_s),
        _flips(options, lambda e: e.latency_expected_s),
    )


def _flips(options: tuple[Option, ...], latency: Any) -> tuple[tuple[float, str], ...]:
    """Budgets at which the most reliable option that fits changes."""
    out: list[tuple[float, str]] = []
    best_p = -1.0
    for o in sorted(options, key=lambda o: (latency(o.estimate), -o.estimate.reliability)):
        if o.estimate.reliability > best_p + 1e-15:
            best_p = o.estimate.reliability
            out.append((latency(o.estimate), o.name))
    return tuple(out)
