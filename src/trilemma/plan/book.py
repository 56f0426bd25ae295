"""The seed's Code 32.10.1, kept as the book wrote it, and a driver for Output 32.10.1.

The book omits the driver that printed its table. :func:`book_report` is a
reconstruction: every figure comes out of the seed's own :func:`workflow` and
:func:`chain`; none is typed in. Three rows only reproduce through quirks of the
seed's code, listed in :data:`QUIRKS` and printed under the table.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

__all__ = ["PREMIUM", "QUIRKS", "SMALL", "BookRow", "book_report", "book_rows", "chain", "workflow"]

PREMIUM: dict[str, float] = dict(usd=0.030, sec=2.0, p_ok=0.985)  # strong model
SMALL: dict[str, float] = dict(usd=0.002, sec=0.4, p_ok=0.945)  # routed model

Steps = list[dict[str, Any]]


def workflow(steps: Steps, retries: int = 0, cache_hits: int = 0) -> tuple[float, float, float]:
    """The seed's model, with only type annotations added: (cost, latency, p_success)."""
    groups: dict[Any, list[float]] = {}
    cost, p_success, cached = 0.0, 1.0, 0
    for s in steps:
        m, calls = s["model"], 1 + s.get("debate_rounds", 0)  # debate adds calls
        if cached < cache_hits:  # served from cache
            cached += 1
            step_cost, step_sec, step_p = 0.0, 0.01, 1.0
        else:
            step_cost = m["usd"] * calls
            step_sec = m["sec"] * calls
            step_p = 1.0 - (1.0 - m["p_ok"]) ** (retries + 1)  # retries lift p_s
        cost += step_cost
        p_success *= step_p  # the product law
        groups.setdefault(s["parallel_group"], []).append(step_sec)
    latency = sum(max(secs) for secs in groups.values())  # critical path
    return cost, latency, p_success


def chain(n: int, model: dict[str, float], parallel: bool = False, debate: int = 0) -> Steps:
    """The seed's helper: ``n`` steps, fully sequential or fully parallel."""
    return [
        dict(model=model, parallel_group=(0 if parallel else i), debate_rounds=debate)
        for i in range(n)
    ]


@dataclass(frozen=True, slots=True)
class BookRow:
    """One line of the table."""

    label: str
    """What the row shows, as the book prints it."""
    steps: int
    """Steps in the workflow."""
    cost: float
    """Dollars by the seed's formula (retries free)."""
    latency: float
    """Seconds: the sum over parallel groups of each group's slowest step."""
    reliability: float
    """End-to-end success probability."""

    @property
    def quality_per_dollar(self) -> float:
        """Reliability per dollar, the book's q/$."""
        return self.reliability / self.cost

    def render(self) -> str:
        """The row at the book's printed precision."""
        return (
            f"{self.label:<34} steps={self.steps:2d}  cost=${self.cost:6.3f}  "
            f"latency={self.latency:5.1f}s  reliability={self.reliability * 100:5.2f}%  "
            f"q/$={self.quality_per_dollar:5.1f}"
        )


def _row(label: str, steps: Steps, **kw: int) -> BookRow:
    cost, latency, p = workflow(steps, **kw)
    return BookRow(label, len(steps), cost, latency, p)


def book_rows() -> dict[str, list[BookRow]]:
    """The table's rows, grouped under the book's headings."""
    return {
        "Baseline single premium agent (one call):": [
            _row("1 agent, 1 call", chain(1, PREMIUM)),
        ],
        "A 12-step sequential premium multi-agent workflow and four levers:": [
            _row("12 steps, sequential, premium", chain(12, PREMIUM)),
            _row("  + parallelize independent steps", chain(12, PREMIUM, parallel=True)),
            _row("  + route simple steps to small", chain(4, PREMIUM) + chain(8, SMALL)),
            _row("  + cache 6 repeated-context steps", chain(12, PREMIUM), cache_hits=6),
            _row("  + retry each step once", chain(12, PREMIUM), retries=1),
            _row("  + cut to 6 steps", chain(6, PREMIUM)),
        ],
        "Combined: 6 steps, parallel, routed (2 premium+4 small), cached, retried:": [
            _row(
                "combined frontier-mover",
                chain(2, PREMIUM, parallel=True) + chain(4, SMALL, parallel=True),
                cache_hits=2,
                retries=1,
            ),
        ],
    }


DECAY_STEPS = (1, 6, 12, 24, 48)

QUIRKS = (
    "route row: chain(4, premium) + chain(8, small) reuses parallel_group ids 0-7, so each of "
    "the first 4 small steps shares a group with a premium step and hides behind it; the "
    "latency is 9.6 s, where a careful sequential model gives 4 x 2.0 + 8 x 0.4 = 11.2 s "
    "(`trilemma estimate examples/book-route.yaml`).",
    "retry row: the seed's cost formula treats retries as free, so cost stays $0.360; counting "
    "each retry with the chance it happens gives $0.365, every retry used $0.720.",
    "cache and combined rows: cache_hits serves the first steps in list order, so the combined "
    "row's two cached steps are its two premium ones, which is why it costs $0.008.",
)


def book_report() -> str:
    """Output 32.10.1, line for line."""
    lines: list[str] = []
    for heading, rows in book_rows().items():
        lines.append(heading)
        lines.extend(row.render() for row in rows)
        lines.append("")
    lines.append("Reliability decay of an all-premium chain as steps grow (no retries):")
    for n in DECAY_STEPS:
        _, _, p = workflow(chain(n, PREMIUM))
        lines.append(f"  N={n:2d} steps  ->  end-to-end success = {p * 100:.2f}%")
    return "\n".join(lines)
