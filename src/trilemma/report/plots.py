"""Matplotlib PNG plots of the planner's answers (headless: the Agg backend)."""

from __future__ import annotations

import io
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
from matplotlib.collections import PolyCollection

from trilemma.errors import UsageError
from trilemma.journal.store import call_outcome
from trilemma.plan.exercises import RoutingSweep
from trilemma.plan.optimize import OptimizeResult
from trilemma.plan.sensitivity import Figures, Sensitivity
from trilemma.plan.simulate import SimResult
from trilemma.plan.thresholds import Threshold

if TYPE_CHECKING:
    from trilemma.experiments.compare import Contender
    from trilemma.experiments.sweep import Sweep

__all__ = [
    "batch_png",
    "plot_cliff",
    "plot_compare",
    "plot_frontier",
    "plot_hedge",
    "plot_routing",
    "plot_sensitivity",
    "plot_simulation",
    "plot_sweep",
    "timeline_png",
]


def _save(fig: Any, target: str | Path | io.BytesIO) -> None:
    """Lay the figure out, write it as a PNG (to a file or a buffer) and free it."""
    fig.tight_layout()
    try:
        fig.savefig(target, dpi=110, format="png")
    except OSError as exc:  # a --plot path in a folder that does not exist, or is read-only
        raise UsageError(f"--plot {target}: cannot write: {exc.strerror or exc}") from None
    finally:
        plt.close(fig)


def plot_simulation(r: SimResult, path: str | Path, title: str = "Monte Carlo") -> Path:
    """Cost and latency per run as histograms, succeeded and failed stacked, with the p50, p95
    and p99 lines and the ceiling or deadline simulated. Needs ``simulate(..., keep=True)``."""
    if r.samples is None:
        raise ValueError("plot_simulation needs the runs: simulate(..., keep=True)")
    ok = r.samples["ok"]
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.2))
    panels = (("cost", "dollars per run", r.cost_usd, r.max_cost_usd, "ceiling"),
              ("latency", "seconds per run", r.latency_s, r.deadline_s, "deadline"))  # fmt: skip
    for ax, (key, unit, summary, limit, name) in zip(axes, panels, strict=True):
        values = r.samples[key]
        ax.hist([values[ok], values[~ok]], bins=60, stacked=True, color=["tab:blue", "tab:red"],
                label=[f"succeeded ({ok.mean():.1%})", "failed"])  # fmt: skip
        for q, style in (("p50", ":"), ("p95", "--"), ("p99", "-.")):
            ax.axvline(getattr(summary, q), color="black", linestyle=style, alpha=0.7,
                       label=f"{q} {getattr(summary, q):.4g}")  # fmt: skip
        if limit is not None:
            ax.axvline(limit, color="tab:red", linewidth=2, alpha=0.6, label=f"the {name}")
        ax.set_xlabel(unit)
        ax.set_ylabel("runs")
        ax.set_title(f"{key}: mean {summary.mean:.4g}")
        ax.legend(fontsize=8)
        ax.grid(alpha=0.3)
    seeded = "unseeded" if r.seed is None else f"seed {r.seed}"
    fig.suptitle(f"{title}, {r.runs:,} runs ({seeded})")
    _save(fig, path)
    return Path(path)


def plot_routing(r: RoutingSweep, path: str | Path) -> Path:
    """Cost, latency, reliability and q/$ of the routed chain against all-premium."""
    xs = [p.hard_fraction for p in r.points]
    series = [
        ("cost ($)", [p.routed.cost_book for p in r.points], r.baseline.cost_book),
        ("latency (s)", [p.routed.latency_critical_s for p in r.points], r.baseline.latency_critical_s),
        ("reliability", [p.routed.reliability for p in r.points], r.baseline.reliability),
        ("quality per dollar", [p.routed.quality_per_dollar or 0.0 for p in r.points],
         r.baseline.quality_per_dollar or 0.0),
    ]  # fmt: skip
    fig, axes = plt.subplots(1, 4, figsize=(16, 3.8))
    for ax, (name, ys, base) in zip(axes, series, strict=True):
        ax.plot(xs, ys, marker="o", label="routed")
        ax.axhline(base, color="tab:red", linestyle="--", label="all premium")
        if r.crossover is not None:
            ax.axvline(r.crossover, color="grey", linestyle=":", label="q/$ crossover")
        ax.set_xlabel("fraction of hard steps")
        ax.set_title(name)
        ax.grid(alpha=0.3)
    axes[0].legend(loc="upper left", fontsize=8)
    fig.suptitle("Exercise 32.10.2: where routing backfires")
    _save(fig, path)
    return Path(path)


def plot_frontier(r: OptimizeResult, path: str | Path) -> Path:
    """Reliability against worst-case cost of the frontier, coloured by latency."""
    fig, ax = plt.subplots(figsize=(7, 4.5))
    xs = [c.cost_worst for c in r.frontier]
    ys = [c.reliability for c in r.frontier]
    pts = ax.scatter(xs, ys, c=[c.latency_s for c in r.frontier], cmap="viridis")
    fig.colorbar(pts, ax=ax, label="latency (s)")
    if r.best_estimate is not None:
        ax.scatter([r.best_estimate.cost_worst], [r.best_estimate.reliability], marker="*",
                   s=250, color="tab:red", label="chosen")  # fmt: skip
        if r.enforced is not None:  # what the run's own ceiling and deadline leave of it
            ax.scatter([r.best_estimate.cost_worst], [r.enforced.success_rate], marker="*",
                       s=250, facecolors="none", edgecolors="tab:red",
                       label="chosen, budgets enforced (Monte Carlo)")  # fmt: skip
        if r.judged is not None:  # a stop: the Monte Carlo it was judged on
            ax.scatter([r.best_estimate.cost_worst], [r.judged.success_rate], marker="*",
                       s=250, facecolors="none", edgecolors="tab:red",
                       label="chosen, as simulated (Monte Carlo)")  # fmt: skip
    ax.scatter([r.original.cost_worst], [r.original.reliability], marker="X", s=120,
               color="black", label="original")  # fmt: skip
    if r.budget.max_cost_usd is not None:
        ax.axvline(r.budget.max_cost_usd, color="tab:red", linestyle="--", alpha=0.5)
    if r.budget.min_reliability is not None:
        ax.axhline(r.budget.min_reliability, color="tab:red", linestyle="--", alpha=0.5)
    ax.set_xlabel("worst-case cost ($)")
    ax.set_ylabel("end-to-end reliability")
    ax.set_title("Pareto frontier")
    ax.legend(loc="lower right")
    ax.grid(alpha=0.3)
    _save(fig, path)
    return Path(path)


#: Guesses a panel of the sensitivity plot shows at most (those that move its figure most).
TORNADO_BARS = 10


def plot_sensitivity(s: Sensitivity, path: str | Path, title: str = "Sensitivity") -> Path:
    """A tornado a budget: for expected cost, expected latency and the failure rate, the
    change each guess divided and multiplied by the factor makes, the largest on top."""
    fig, axes = plt.subplots(1, 3, figsize=(14, 0.9 + 0.42 * min(TORNADO_BARS, max(
        1, len(s.guesses)))))  # fmt: skip
    panels: tuple[tuple[str, Callable[[Figures], float]], ...] = (
        ("expected cost", lambda f: f.cost_usd), ("expected latency", lambda f: f.latency_s),
        ("runs that fail", lambda f: 1.0 - f.reliability))  # fmt: skip
    by = f"{s.factor:g}"
    for ax, (label, figure) in zip(axes, panels, strict=True):
        base = figure(s.base)
        moves = [(g.name, figure(g.low), figure(g.high)) for g in s.guesses]
        moves = [m for m in moves if base > 0 and (m[1] != base or m[2] != base)]
        moves.sort(key=lambda m: abs(m[2] - m[1]))
        moves = moves[-TORNADO_BARS:]
        for y, (_, low, high) in enumerate(moves):
            for value, colour, tag in ((low, "tab:blue", f"/{by}"), (high, "tab:red", f"x{by}")):
                change = (value - base) / base * 100
                ax.barh(y, change, color=colour, alpha=0.75,
                        label=tag if y == len(moves) - 1 else None)  # fmt: skip
        ax.set_yticks(range(len(moves)), [m[0] for m in moves], fontsize=8)
        ax.axvline(0, color="black", linewidth=0.8)
        ax.set_xlabel(f"{label}: change from the spec's (%)")
        ax.grid(axis="x", alpha=0.3)
        if not moves:
            ax.text(0.5, 0.5, "no guess moves it", ha="center", va="center",
                    transform=ax.transAxes, fontsize=9)  # fmt: skip
        elif ax is axes[0]:
            ax.legend(loc="lower right", fontsize=8)
    fig.suptitle(title)
    _save(fig, path)
    return Path(path)


def plot_hedge(rows: Sequence[Threshold], model: str, path: str | Path) -> Path:
    """p95 and p99 latency against expected cost, one point per hedge threshold."""
    fig, ax = plt.subplots(figsize=(7, 4.5))
    xs = [r.estimate.cost_expected for r in rows]
    for name, colour in (("p99", "tab:red"), ("p95", "tab:orange"), ("p50", "tab:blue")):
        ys = [getattr(r.sim.latency_s, name) for r in rows]
        ax.plot(xs, ys, marker="o", color=colour, label=f"{name} latency")
        if name == "p99":
            for i, (r, x, y) in enumerate(zip(rows, xs, ys, strict=True)):  # above, below, ...
                ax.annotate(r.label, (x, y), textcoords="offset points", fontsize=8,
                            xytext=(4, 6) if i % 2 == 0 else (4, -13))  # close costs stay apart
    ax.set_xlabel("expected cost per run ($)")
    ax.set_ylabel("run latency (s)")
    ax.set_title(f"Hedge thresholds for {model}: cost against the tail")
    ax.margins(x=0.08, y=0.1)  # room for the labels of the first and last points
    ax.set_ylim(bottom=0)
    ax.grid(alpha=0.3)
    ax.legend()
    _save(fig, path)
    return Path(path)


def plot_cliff(points: list[Any], model: str, path: str | Path) -> Path:
    """Measured end-to-end success (with 95% intervals) against the predicted p^S."""
    from trilemma.plan.agreement import wilson

    fig, ax = plt.subplots(figsize=(7, 4.5))
    xs = [p.steps for p in points]
    ax.plot(xs, [p.predicted for p in points], "--", marker="o", label="predicted (p^S)")
    lo_hi = [wilson(p.successes, p.runs) for p in points]
    measured = [p.measured for p in points]
    ax.errorbar(xs, measured, yerr=[[m - lo for m, (lo, _) in zip(measured, lo_hi, strict=True)],
                                    [hi - m for m, (_, hi) in zip(measured, lo_hi, strict=True)]],
                fmt="s", capsize=4, label="measured (95% interval)")  # fmt: skip
    ax.set_xticks(xs)
    ax.set_xlabel("steps in the chain (S)")
    ax.set_ylabel("end-to-end success")
    ax.set_ylim(0, 1.02)
    ax.set_title(f"The reliability cliff: {model}")
    ax.grid(alpha=0.3)
    ax.legend()
    _save(fig, path)
    return Path(path)


def plot_sweep(sw: Sweep, path: str | Path) -> Path:
    """Success and spend against the budget, beside the baseline that ignores budgets."""
    rows = list(sw.rows)
    by_cost = all(r.budget.max_cost_usd is not None for r in rows)
    xs = [(r.budget.max_cost_usd if by_cost else r.budget.deadline_s) or 0.0 for r in rows]
    unit = "cost ceiling ($)" if by_cost else "deadline (s)"
    fig, (left, right) = plt.subplots(1, 2, figsize=(12, 5.2))
    left.plot(xs, [r.success_rate for r in rows], marker="o", label="succeeded, budget enforced")
    left.plot(xs, [r.baseline_ok_within / r.runs for r in rows], marker="s", linestyle="--",
              label="no budget: succeeded within it")  # fmt: skip
    left.plot(xs, [r.baseline_over / r.runs for r in rows], marker="x", linestyle=":",
              color="tab:red", label="no budget: went over it")  # fmt: skip
    left.plot(xs, [r.steps_returned for r in rows], marker=".", color="grey",
              label="outputs returned, budget enforced")  # fmt: skip
    if all(r.predicted_success is not None for r in rows):
        left.plot(xs, [r.predicted_success for r in rows], color="tab:green", alpha=0.6,
                  linewidth=3, label="Monte Carlo: succeeds under it")  # fmt: skip
    left.set_xlabel(unit)
    left.set_ylabel("share of runs")
    left.set_ylim(-0.02, 1.02)
    left.set_title("Quality as the budget tightens")
    _legend_below(left)
    left.grid(alpha=0.3)
    if by_cost:
        right.plot(xs, [r.cost_mean for r in rows], marker="o", label="mean spend")
        right.plot(xs, [r.cost_max for r in rows], marker="^", label="largest spend")
        if all(r.predicted_cost is not None for r in rows):
            right.plot(xs, [r.predicted_cost for r in rows], color="tab:green", alpha=0.6,
                       linewidth=3, label="Monte Carlo: mean spend under it")  # fmt: skip
        right.plot(xs, xs, color="tab:red", linestyle="--", label="the ceiling")
        right.axhline(sw.baseline.cost_max, color="grey", linestyle=":",
                      label="largest spend, no budget")  # fmt: skip
        right.set_ylabel("dollars per run")
        right.set_title("Spend never crosses the ceiling")
    else:
        right.plot(xs, [r.latency_mean_s for r in rows], marker="o", label="mean latency")
        right.plot(xs, [r.latency_max_s for r in rows], marker="^", label="largest latency")
        right.plot(xs, xs, color="tab:red", linestyle="--", label="the deadline")
        right.set_ylabel("seconds per run")
        right.set_title("Latency against the deadline")
    right.set_xlabel(unit)
    _legend_below(right)
    right.grid(alpha=0.3)
    _save(fig, path)
    return Path(path)


def plot_compare(rows: Sequence[Contender], path: str | Path) -> Path:
    """Success against cost per run for each workflow, measured (with its interval) and predicted."""
    fig, ax = plt.subplots(figsize=(7.5, 4.8))
    for i, r in enumerate(rows):
        colour = f"C{i}"
        lo, hi = r.ci95
        ax.errorbar([r.cost_mean], [r.success_rate], yerr=[[max(0.0, r.success_rate - lo)], [max(0.0, hi - r.success_rate)]],
                    fmt="o", color=colour, capsize=4, label=f"{r.name}")  # fmt: skip
        ax.scatter([r.simulated.cost_usd.mean], [r.simulated.success_rate], marker="D",
                   facecolors="none", edgecolors=colour, s=70)  # fmt: skip
    ax.scatter([], [], marker="D", facecolors="none", edgecolors="grey", label="predicted")
    ax.set_xscale("log")
    ax.set_xlabel("dollars per run (log scale)")
    ax.set_ylabel("end-to-end success")
    ax.set_title("Quality against cost: up and to the left is better")
    ax.grid(alpha=0.3, which="both")
    _legend_beside(ax)  # inside, it could hide a costly workflow that often fails
    _save(fig, path)
    return Path(path)


#: Bar colours of the timeline, by a call's outcome.
OUTCOME_COLOURS = {"ok": "tab:green", "rejected": "tab:orange", "cancelled": "tab:grey",
                   "unsent": "lightgrey", "in_flight": "tab:blue",
                   "hedged": "tab:purple", "answered": "tab:cyan"}  # fmt: skip


#: Most step names the timeline writes beside its rows; a longer run names every k-th.
MAX_ROW_LABELS = 60


def timeline_png(
    run: dict[str, Any], calls: Sequence[dict[str, Any]], order: Sequence[str]
) -> bytes:
    """A run's calls as bars on their steps' rows, and its spend over time against the ceiling.

    ``run`` and ``calls`` are journal rows; ``order`` lists the step ids top to bottom.
    A call still in flight (a crash) is drawn up to now.
    """
    t0 = run["started_at"]
    rows = {sid: i for i, sid in enumerate(order)}
    fig, top, bottom = _bars_over_spend(max(2.5, min(0.28 * len(order) + 1.0, 14.0)))
    bars: dict[str, list[tuple[int, float, float]]] = {}  # by label: (row, width, left)
    spend: list[tuple[float, float]] = []
    for c in calls:
        outcome = call_outcome(c)
        end = c["finished_at"] if c["finished_at"] is not None else time.time()
        label = outcome if outcome in OUTCOME_COLOURS else "error"  # any provider error is red
        bars.setdefault(label, []).append(
            (rows.get(c["step_id"], len(rows)), max(end - c["started_at"], 1e-4), c["started_at"] - t0))  # fmt: skip
        if c["cost_usd"]:
            spend.append((end - t0, c["cost_usd"]))
    _bars(top, bars, OUTCOME_COLOURS, 0.7)
    every = max(1, -(-len(order) // MAX_ROW_LABELS))  # past that many, every k-th step is named
    top.set_yticks(range(0, len(order), every), labels=list(order)[::every],
                   fontsize=7 if len(order) > 30 else 9)  # fmt: skip
    top.invert_yaxis()
    top.set_title(f"Run {run['run_id']}: {run['status']}")
    if run["deadline_at"]:
        for ax in (top, bottom):
            ax.axvline(run["deadline_at"] - t0, color="tab:red", linestyle="--", linewidth=1)
    if bars:  # a run that sent no call has nothing to name
        _legend_beside(top)
    top.grid(alpha=0.3, axis="x")
    _spend(bottom, spend, run["max_cost_usd"], "spend", "seconds since the run started",
           start=run.get("pruned_usd") or 0.0)  # what forgotten calls spent comes first
    buf = io.BytesIO()
    _save(fig, buf)
    return buf.getvalue()


def _bars(ax: Any, bars: dict[str, list[tuple[int, float, float]]], colours: dict[str, str],
          height: float) -> None:  # fmt: skip
    """``(row, width, left)`` bars, one collection of rectangles per label (its colour, else
    red), not a patch per bar: matplotlib's cost grows with the artists drawn, and a run has
    thousands of calls."""
    for label, drawn in bars.items():
        boxes = [[(left, row - height / 2), (left + width, row - height / 2),
                  (left + width, row + height / 2), (left, row + height / 2)]
                 for row, width, left in drawn]  # fmt: skip
        ax.add_collection(PolyCollection(boxes, facecolors=colours.get(label, "tab:red"),
                                         label=label))  # fmt: skip
    ax.autoscale_view()


def _legend_beside(ax: Any) -> None:
    """A panel's legend right of it: inside, the lower right is where the last steps (or
    lines) end, and a legend there hid their bars."""
    ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0.0, fontsize=8)


def _legend_below(ax: Any) -> None:
    """A panel's legend under its axis label, in two columns: inside, matplotlib's "best"
    place still lay across a sweep's lines."""
    ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.14), ncol=2, fontsize=8)


def _bars_over_spend(height: float) -> tuple[Any, Any, Any]:
    """A figure of bars ``height`` inches tall above a spend panel, sharing the time axis."""
    fig, (top, bottom) = plt.subplots(2, 1, figsize=(11, height + 2.2), sharex=True,
                                      gridspec_kw={"height_ratios": [height, 2.0]})  # fmt: skip
    return fig, top, bottom


def _spend(ax: Any, spend: list[tuple[float, float]], ceiling: float | None, label: str,
           xlabel: str, start: float = 0.0) -> None:  # fmt: skip
    """Dollars spent over time, ``(seconds, cost)`` each, as a step line under the ceiling,
    from ``start`` dollars."""
    spend.sort()
    xs, total, ys = [0.0], start, [start]
    for x, cost in spend:
        total += cost
        xs.append(x)
        ys.append(total)
    ax.step(xs, ys, where="post", label=label)
    if ceiling is not None:
        ax.axhline(ceiling, color="tab:red", linestyle="--", label="ceiling")
    ax.set_ylabel("dollars")
    ax.set_xlabel(xlabel)
    _legend_beside(ax)  # inside, it sat on the ceiling's line
    ax.grid(alpha=0.3)


#: A batch's plot draws its deadline where it falls before this many times its last run's
#: end (or its planned end): one far after would squeeze the runs into the left edge.
MARKS_BEYOND = 1.5

#: A run's colour by its status, in a batch's plot.
STATUS_COLOURS = {"ok": "tab:green", "failed": "tab:red", "budget_exhausted": "tab:orange",
                  "deadline": "tab:purple", "running": "tab:gray"}  # fmt: skip


DEADLINE_KEPT_S = 0.05
"""How far two deadlines read from the journal may be apart and be one kept (a run's
beside the one its Monte Carlo was run under; a resumed batch session's beside the
batch's): the journal keeps a deadline as seconds from a start, a fraction of a
millisecond off."""


def batch_png(
    runs: Sequence[dict[str, Any]], ceiling: float | None, *, started_at: float | None = None,
    deadline_s: float | None = None, planned_s: float | None = None,
    resumed_at: Sequence[float] = (), later_deadlines_at: Sequence[float] = (),
) -> bytes:  # fmt: skip
    """A batch's runs as bars on their lines' rows, and its spend as they finish, against the
    ceiling; the deadline, the planned end and the starts of later sessions (``resumed_at``,
    epoch seconds; those after every run's end left out) as lines across both, where given,
    and the deadlines later sessions were given (``later_deadlines_at``, epoch seconds; one
    that is the first deadline kept, or far after every run, left out).

    ``runs`` are journal rows with ``batch_line``. A run still marked running (a crash) is
    drawn up to now; a run resumed in a later session, from its first start to its last end.
    Times count from ``started_at`` (the batch's start, epoch seconds), else from its first
    run's start; ``deadline_s`` and ``planned_s`` from there.
    """
    t0 = started_at if started_at is not None else min(r["started_at"] for r in runs)
    lines = sorted(r["batch_line"] for r in runs)
    fig, top, bottom = _bars_over_spend(max(2.5, min(0.12 * len(lines) + 1.0, 12.0)))
    bars: dict[str, list[tuple[int, float, float]]] = {}  # by status: (line, width, left)
    spend: list[tuple[float, float]] = []
    for r in runs:
        end = r["finished_at"] if r["finished_at"] is not None else time.time()
        status = r["status"] if r["status"] in STATUS_COLOURS else "failed"
        bars.setdefault(status, []).append(
            (r["batch_line"], max(end - r["started_at"], 1e-4), r["started_at"] - t0))
        if r["cost_usd"]:
            spend.append((end - t0, r["cost_usd"]))
    _bars(top, bars, STATUS_COLOURS, 0.8)
    last = max([left + width for drawn in bars.values() for _, width, left in drawn] + [planned_s or 0.0])
    for x, colour, style, label in ((deadline_s, "tab:red", "--", "the deadline"),
                                    (planned_s, "black", ":", "planned end")):  # fmt: skip
        if x is not None and x <= last * MARKS_BEYOND:  # a deadline far after: not drawn
            for ax in (top, bottom):
                ax.axvline(x, color=colour, linestyle=style, linewidth=1,
                           label=label if ax is top else None)  # fmt: skip
    given = sorted({round(at - t0, 3) for at in later_deadlines_at})
    kept = [deadline_s] if deadline_s is not None else []  # a session that kept the batch's
    given = [x for x in given
             if x <= last * MARKS_BEYOND and all(abs(x - d) > DEADLINE_KEPT_S for d in kept)]
    for k, x in enumerate(given):
        for ax in (top, bottom):
            ax.axvline(x, color="tab:red", linestyle=(0, (1, 3)), linewidth=1,
                       label="a later session's deadline" if ax is top and k == 0 else None)  # fmt: skip
    shown = [at - t0 for at in resumed_at if at - t0 <= last]  # after every run: not drawn
    for k, x in enumerate(shown):
        for ax in (top, bottom):
            ax.axvline(x, color="tab:gray", linestyle="-.", linewidth=1,
                       label="a session resumed it" if ax is top and k == 0 else None)  # fmt: skip
    top.set_ylim(lines[-1] + 0.5, lines[0] - 0.5)
    top.set_ylabel("line")
    top.set_title(f"{len(runs)} runs, each from its start to its end")
    if bars:  # no run drawn, nothing to name
        _legend_beside(top)
    top.grid(alpha=0.3, axis="x")
    _spend(bottom, spend, ceiling, "spend, as runs end", "seconds since the batch started")
    buf = io.BytesIO()
    _save(fig, buf)
    return buf.getvalue()
