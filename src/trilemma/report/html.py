"""One self-contained HTML page for a run (predicted beside measured, the timeline, the
ledger) or for a batch (its totals beside the planner's, its runs over time, each line).

Everything comes from the journal, so a report can be made for any run, finished,
stopped or interrupted, by any process, long after it ran. The page has no external
resources: the plot is an inline PNG and the style is inline CSS, so it can be
mailed or attached to a ticket as one file.
"""

from __future__ import annotations

import base64
import datetime as dt
import html
import json
from collections.abc import Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

from trilemma import __version__
from trilemma._format import counted
from trilemma.errors import UsageError
from trilemma.journal import Journal
from trilemma.journal.store import GATEWAY_RUN, sent_by_step
from trilemma.plan.agreement import OFF_PLAN_RUNS, off_plan
from trilemma.plan.slots import SLOTS_BIND
from trilemma.report.plots import DEADLINE_KEPT_S, batch_png, timeline_png
from trilemma.report.tables import (
    LEDGER_KEYS,
    budget_rows,
    ledger_row,
    off_plan_line,
    planned_end,
    planned_rows,
    qpd,
    spec_of,
    stopped_at,
    under_budget_rows,
    usd,
    well_under,
)

if TYPE_CHECKING:
    import numpy as np

__all__ = ["batch_report", "run_report"]

#: Longest output or error text shown in a table cell.
CELL_CHARS = 400

_STYLE = """
body { font: 14px/1.45 system-ui, sans-serif; margin: 2em auto; max-width: 72em; color: #222; }
h1 { font-size: 1.4em; } h2 { font-size: 1.15em; margin-top: 2em; }
table { border-collapse: collapse; margin: .5em 0; }
th, td { border-bottom: 1px solid #ddd; padding: .25em .6em; text-align: left; vertical-align: top; }
td.n, th.n { text-align: right; font-variant-numeric: tabular-nums; }
.ok { color: #1a7f37; } .bad { color: #cf222e; } .dim { color: #666; }
img { max-width: 100%; }
"""


def _e(value: Any) -> str:
    return html.escape("" if value is None else str(value))


def _s(x: float | None) -> str:
    return "-" if x is None else f"{x:.2f}s"


def _when(epoch: float | None) -> str:
    if epoch is None:
        return "-"
    return dt.datetime.fromtimestamp(epoch, dt.UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def _cut(text: str | None) -> str:
    text = text or ""
    return text if len(text) <= CELL_CHARS else text[:CELL_CHARS] + "..."


def _table(head: Sequence[str], rows: Iterable[Sequence[Any]], numeric: set[int]) -> str:
    cls = [' class="n"' if i in numeric else "" for i in range(len(head))]
    out = ["<table><tr>" + "".join(f"<th{c}>{_e(h)}</th>" for h, c in zip(head, cls, strict=True))]
    out.append("</tr>")
    for row in rows:
        cells = "".join(f"<td{c}>{cell}</td>" for cell, c in zip(row, cls, strict=True))
        out.append(f"<tr>{cells}</tr>")
    out.append("</table>")
    return "\n".join(out)


def run_report(journal: Journal, run_id: str) -> str:
    """The HTML page for ``run_id``; UsageError if the journal does not hold it."""
    run = journal.run(run_id)
    if run is None:
        raise UsageError(
            f"run {run_id!r} is not in {journal.path}; `trilemma runs` lists the runs there"
        )
    calls = journal.calls(run_id)
    steps = journal.steps(run_id)
    spec = json.loads(run["spec_json"])
    predicted = json.loads(run["predicted_json"] or "{}")
    workflow = not run_id.startswith(GATEWAY_RUN)  # a key's calls are filed by model asked
    order = ([s["id"] for s in spec.get("steps", [])] if workflow
             else list(dict.fromkeys(c["step_id"] for c in calls)))  # fmt: skip
    status = run["status"]
    status_cls = "ok" if status == "ok" else "bad"
    parts = [
        "<!doctype html>",
        '<html lang="en"><head><meta charset="utf-8">',
        f"<title>trilemma run {_e(run_id)}</title><style>{_STYLE}</style></head><body>",
        f'<h1>Run {_e(run_id)}: <span class="{status_cls}">{_e(status)}</span></h1>',
        f'<p class="dim">spec {_e(spec_of(run))}, started {_when(run["started_at"])}, '
        f"finished {_when(run['finished_at'])}, seed {_e(run['seed'])}"
        + (f", for tenant {_e(run['tenant'])}" if run.get("tenant") else "")
        + (f", under shared budget {_e(run['shared_budget'])}" if run.get("shared_budget") else "")
        + (f", line {run['batch_line']} of {_e(run['batch_id'])}" if run.get("batch_id") else "")
        + "</p>",
    ]
    if run["error"]:
        parts.append(f'<p class="bad">{_e(run["error"])}</p>')
    scale = run["time_scale"]
    if scale == 0:
        parts.append(
            '<p class="dim">Simulated time ran on a virtual clock (compare, sweep or run '
            "--time-scale): every wait took no real time and ended when due, so the times on "
            "this page are the spec's own, and the calls' clock times follow simulated time "
            "from the run's real start.</p>"
        )
    elif scale != 1:
        parts.append(
            f'<p class="dim">Simulated time ran {1 / scale:g}x faster (compare, sweep or run '
            f"--time-scale): every time on this page, predicted and measured, is {scale:g} of "
            "the spec's own.</p>"
        )
    parts += ["<h2>Predicted beside measured</h2>", _summary(run, predicted)]
    png = timeline_png(run, calls, order)
    parts += [
        "<h2>Timeline</h2>",
        '<p class="dim">Each bar is one call, on its step\'s row, coloured by outcome; below, '
        "the spend as calls settle, against the ceiling.</p>",
        f'<img alt="timeline of the calls" src="data:image/png;base64,'
        f'{base64.b64encode(png).decode()}">',
        *(["<h2>Steps</h2>", _steps(order, steps, calls)] if workflow else []),
        f"<h2>Ledger: {counted(len(calls), 'call')}</h2>",
        *_forgotten(run),
        _ledger(calls),
        f'<p class="dim">trilemma {__version__}, journal {_e(journal.path)}</p>',
        "</body></html>",
    ]
    return "\n".join(parts) + "\n"


def _bills_drawn(spec_json: str) -> np.ndarray | None:
    """The plan's draws of a run's bill for a batch's journaled spec
    (:func:`~trilemma.plan.estimate.bill_draws`); None where they do not hold a bill's
    spread, or the spec no longer loads (a journal of an older trilemma): the t test then."""
    from trilemma.errors import SpecError
    from trilemma.plan.estimate import bill_draws
    from trilemma.spec import parse_workflow

    try:
        return bill_draws(parse_workflow(spec_json, "journal", json_only=True))
    except SpecError:
        return None


def batch_report(journal: Journal, batch_id: str) -> str:
    """The HTML page for a batch's runs; UsageError if the journal holds none of them."""
    by_line = journal.batch_runs(batch_id)
    if not by_line:
        raise UsageError(
            f"batch {batch_id!r} is not in {journal.path}; `trilemma runs --json` gives each "
            "run's batch_id"
        )
    runs = [by_line[k] for k in sorted(by_line)]
    n, first = len(runs), runs[0]
    p = json.loads(first["predicted_json"] or "{}")
    ok = sum(1 for r in runs if r["status"] == "ok")
    cost = sum(r["cost_usd"] for r in runs)
    cost_p, latency_p = p.get("cost_usd", {}), p.get("latency_s", {})
    begun = min(runs, key=lambda r: r["started_at"])  # its first run: the deadline from its start
    started = begun["started_at"]
    ended = max((r["finished_at"] for r in runs if r["finished_at"]), default=None)
    ceiling = first["max_cost_usd"]
    deadline = begun["deadline_at"] - started if begun["deadline_at"] else None
    halts, each = cost_p.get("halting"), latency_p.get("halting")
    stop_usd = (f" ({usd(halts * n)} as failed runs stop)"
                if well_under(halts, cost_p.get("expected")) else "")
    stop_s = (f" ({_s(each)} as failed runs stop)"
              if well_under(each, latency_p.get("expected")) else "")
    per_run = ("latency per run", f"{_s(latency_p.get('expected'))} expected{stop_s}, "
                                  f"{_s(latency_p.get('critical_path'))} critical path",
               _s(sum((r["latency_s"] or 0) for r in runs) / n) + " on average",
               "-" if deadline is None else f"deadline {_s(deadline)} from its start")  # fmt: skip
    plans = journal.batch_plans(batch_id)
    if len(plans) == 1:  # one session: its plan beside what it measured
        rows = [*_planned_beside(plans[0], runs, ok, cost, ended), per_run]
    elif plans:  # resumed: the batch's figures, then each session's plan beside what it did
        rows = [*_sessions_beside(plans, runs, ok, cost),  # each its own deadline, given above
                (*per_run[:3], "-" if deadline is None else "each session's deadline, above")]
    else:  # run before trilemma kept plans: one run's estimate times the runs
        rows = [
            ("cost", f"{usd(cost_p.get('expected', 0) * n)} expected{stop_usd}, "
                     f"{usd(cost_p.get('worst', 0) * n)} worst",
             usd(cost), "-" if ceiling is None else f"ceiling {usd(ceiling)}"),
            ("runs ok", f"{p.get('reliability', 0) * n:.1f} of {n}", f"{ok} of {n}", ""),
            per_run,
        ]  # fmt: skip
    lines = [
        (_e(r["batch_line"]), f'<span class="{"ok" if r["status"] == "ok" else "bad"}">'
         f'{_e(r["status"])}</span>', _e(r["run_id"]), usd(r["cost_usd"]), _s(r["latency_s"]),
         _e(_cut(r["error"])))
        for r in runs
    ]  # fmt: skip
    off = bad = None
    if all(r["status"] in ("ok", "failed") for r in runs):  # none cut by a budget
        planned = halts if halts is not None else cost_p.get("expected")
        drawn = _bills_drawn(first["spec_json"]) if n >= OFF_PLAN_RUNS else None  # else not weighed
        off, bad = off_plan([r["cost_usd"] for r in runs], ok, planned, p.get("reliability"),
                            cost_drawn=drawn)  # fmt: skip
    said = off_plan_line(off, bad, journal.path) if off is not None or bad is not None else None
    off_p = "" if said is None else f'<p class="bad">{_e(said)}</p>'
    opened = plans[0] if plans else None  # the plans' times count from their sessions' starts
    one = opened if len(plans) == 1 else None
    png = batch_png(runs, ceiling, started_at=None if opened is None else opened["started_at"],
                    deadline_s=deadline if opened is None else opened["plan"].get("deadline_s"),
                    planned_s=None if one is None else planned_end(one["plan"], one["lines"]),
                    resumed_at=[s["started_at"] for s in plans[1:]],
                    later_deadlines_at=[s["started_at"] + s["plan"]["deadline_s"] for s in plans[1:]
                                        if s["plan"].get("deadline_s") is not None])  # fmt: skip
    parts = [
        "<!doctype html>",
        '<html lang="en"><head><meta charset="utf-8">',
        f"<title>trilemma {_e(batch_id)}</title><style>{_STYLE}</style></head><body>",
        f"<h1>{_e(batch_id)}: {ok} of {n} runs ok</h1>",
        f'<p class="dim">spec {_e(spec_of(first))}, started {_when(started)}, '
        f"last run ended {_when(ended)}"
        + (f", for tenant {_e(first['tenant'])}" if first["tenant"] else "")
        + (f", under shared budget {_e(first['shared_budget'])}" if first.get("shared_budget") else "")
        + "</p>",
        "<h2>Predicted beside measured</h2>",
        _table(("", "predicted", "measured", "budget"), rows, {1, 2}),
        off_p,
        "<h2>Runs over time</h2>",
        '<p class="dim">Each bar is one line\'s run, coloured by how it ended; below, the spend '
        "as runs end, against the batch's ceiling; across both, its deadline and the end its "
        "plan has (as the ceiling stops it, where it stops runs), or, for a resumed batch, "
        "when each later session began.</p>",
        f'<img alt="the batch\'s runs over time" src="data:image/png;base64,'
        f'{base64.b64encode(png).decode()}">',
        f"<h2>Lines: {n} runs</h2>",
        '<p class="dim">Lines that never started have no run here; `trilemma report RUN_ID` '
        "shows one run's steps and ledger.</p>",
        _table(("line", "status", "run", "cost", "latency", "error"), lines, {0, 3, 4}),
        f'<p class="dim">trilemma {__version__}, journal {_e(journal.path)}</p>',
        "</body></html>",
    ]
    return "\n".join(parts) + "\n"


def _planned_beside(
    session: Mapping[str, Any], runs: Sequence[Mapping[str, Any]], ok: int, cost: float,
    ended: float | None,
) -> list[tuple[str, str, str, str]]:  # fmt: skip
    """A batch of one session: its plan (``session``, as :meth:`Journal.batch_plans` gives
    it) beside what its ``runs`` measured, row by row as the batch's table has them, and
    how many runs its ceiling and deadline let end."""
    plan, n = session["plan"], session["lines"]
    took = None if ended is None else ended - session["started_at"]
    measured = [usd(cost), f"{ok} of {n}", _s(took),
                qpd(ok / cost if cost > 0 else None, ok > 0)]  # fmt: skip
    ceiling, deadline = plan.get("max_cost_usd"), plan.get("deadline_s")
    held = {"cost": "-" if ceiling is None else f"ceiling {usd(ceiling)}",
            "latency": "-" if deadline is None else f"deadline {_s(deadline)} from its start"}
    rows = [(label, said, got, held.get(label, "")) for (label, said), got in
            zip(planned_rows(plan, n, session["parallel"], plan), measured, strict=True)]  # fmt: skip
    to_end = sum(1 for r in runs if r["status"] in ("ok", "failed"))
    rows += [(label, said, f"{to_end} of {n} ended", "") for label, said in budget_rows(plan, n)]
    return rows


def _sessions_beside(
    plans: Sequence[Mapping[str, Any]], runs: Sequence[Mapping[str, Any]], ok: int, cost: float
) -> list[tuple[str, str, str, str]]:  # fmt: skip
    """A resumed batch: what its newest plan has of all its lines (cost, runs ok, quality per
    dollar) beside what they measured, then a row for each session's plan of the lines it
    ran (its time, and how many runs its ceiling and deadline let end) beside what it
    measured as it ended (none for a session interrupted)."""
    newest = plans[-1]["plan"]
    n = int(newest.get("batch_lines") or max(s["lines"] for s in plans))  # older plans lack it
    measured = [usd(cost), f"{ok} of {n}", qpd(ok / cost if cost > 0 else None, ok > 0)]
    whole = [row for row in planned_rows(newest, n, plans[-1]["parallel"]) if row[0] != "latency"]
    rows = [(label, said, got, "") for (label, said), got in zip(whole, measured, strict=True)]
    for k, session in enumerate(plans):
        plan, lines, ended = session["plan"], session["lines"], session["ended"]
        took = None if ended is None else ended["took_s"]
        to_end = "-" if ended is None else f"{ended['ran_to_end']} of {lines} ended"
        name = f"session {k + 1}" + (" (interrupted)" if ended is None and k < len(plans) - 1 else "")
        ceiling, deadline = plan.get("max_cost_usd"), plan.get("deadline_s")
        held = [*([] if ceiling is None else [f"{usd(ceiling)} of the ceiling left"]),
                *([] if deadline is None else [f"deadline {_s(deadline)} from its start"
                                               if deadline > 0 else "deadline passed"])]  # fmt: skip
        planned_s = plan["latency_s"]["batch"]
        rows.append((f"{name}: time", f"{planned_s:.2f}s for {counted(lines, 'line')}, "
                     f"{session['parallel']} at a time" + stopped_at(plan, planned_s, lines),
                     _s(took), ", ".join(held) or "-"))  # fmt: skip
        rows += [(f"{name}: {label}", said, to_end, "") for label, said in budget_rows(plan, lines)]
    return rows


def _slotted(latency: dict[str, Any]) -> str:
    """`` (X s in its slots)`` when the run's concurrency slots lengthen its critical path."""
    slots, path = latency.get("scheduled"), latency.get("critical_path")
    return f" ({_s(slots)} in its slots)" if slots and path and slots > path * SLOTS_BIND else ""


def _count(x: float | None) -> str:
    """An expected count as the run's table shows it: 9.99, not 9.990096479686."""
    return "-" if x is None else f"{x:.2f}"


def _budgets_moved(under: Mapping[str, Any], ceiling: float | None, deadline: float | None) -> bool:
    """Whether a run's ceiling or deadline is no longer the one its Monte Carlo under its
    budget was run under (``under``): a resume gave it new ones."""
    def moved(now: float | None, was: float | None, by: float) -> bool:
        return (now is None) != (was is None) or (now is not None and was is not None
                                                  and abs(now - was) > by)  # fmt: skip

    return (moved(ceiling, under.get("max_cost_usd"), 1e-12)
            or moved(deadline, under.get("deadline_s"), DEADLINE_KEPT_S))  # fmt: skip


def _summary(run: dict[str, Any], p: dict[str, Any]) -> str:
    cost, latency, calls = p.get("cost_usd", {}), p.get("latency_s", {}), p.get("calls", {})
    ceiling = run["max_cost_usd"]
    deadline = run["deadline_at"] - run["started_at"] if run["deadline_at"] else None
    rows = [
        ("cost", f"{usd(cost.get('expected'))} expected, {usd(cost.get('worst'))} worst",
         usd(run["cost_usd"]), "-" if ceiling is None else f"ceiling {usd(ceiling)}"),
        ("latency", f"{_s(latency.get('expected'))} expected, {_s(latency.get('critical_path'))} "
         f"critical path{_slotted(latency)}, {_s(latency.get('worst'))} worst", _s(run["latency_s"]),
         "-" if deadline is None else f"deadline {_s(deadline)}"),
        ("calls", f"{_count(calls.get('expected'))} expected, {calls.get('worst', '-')} worst",
         str(run["calls"]), ""),
        ("success", f"{p['reliability'] * 100:.2f}%" if "reliability" in p else "-",
         _e(run["status"]), ""),
    ]  # fmt: skip
    if (under := p.get("under_budget")) is not None:  # journaled by `trilemma run`
        moved = _budgets_moved(under, ceiling, deadline)  # by a resume: not the run's now
        rows += [(label, said, "", "") for label, said in under_budget_rows(under, moved)]
    if (resumed := p.get("under_budget_resumed")) is not None:  # by `trilemma resume`, its last
        rows += [(label, said, "", "") for label, said in under_budget_rows(resumed)]
    if (well_under(cost.get("halting"), cost.get("expected"))
            or well_under(latency.get("halting"), latency.get("expected"))):  # fmt: skip
        rows.append(("stopping at a failure", f"{usd(cost['halting'])}, "
                     f"{_s(latency['halting'])}, {_count(calls.get('halting'))} calls on average",
                     "", ""))  # fmt: skip
    return _table(("", "predicted", "measured", "budget"), rows, {1, 2})


def _steps(order: list[str], steps: dict[str, dict[str, Any]], calls: list[dict[str, Any]]) -> str:
    """Each step as the journal ended it; one with no such row either never started or was
    stopped under way, with its attempts and bills read from its calls."""
    rows = []
    made = sent_by_step(calls) if len(steps) < len(order) else {}
    for sid in order:
        s = steps.get(sid)
        if s is None:
            if sid not in made:
                rows.append((_e(sid), '<span class="dim">not run</span>', "", "", ""))
            else:
                attempts, billed = made[sid]
                rows.append((_e(sid), '<span class="bad">not finished</span>', _e(attempts),
                             usd(billed), ""))  # fmt: skip
            continue
        cls = "ok" if s["status"] == "done" else "bad"
        rows.append((_e(sid), f'<span class="{cls}">{_e(s["status"])}</span>', _e(s["attempts"]),
                     usd(s["cost_usd"]), _e(_cut(s["output"] or s["error"]))))  # fmt: skip
    return _table(("step", "status", "attempts", "cost", "output or error"), rows, {2, 3})


def _forgotten(run: Mapping[str, Any]) -> list[str]:
    """The note on the calls ``trilemma prune`` forgot of a run it kept (a gateway key's)."""
    if not run["pruned_calls"]:
        return []
    return [f'<p class="dim">And {counted(run["pruned_calls"], "older call")}, billed '
            f'{usd(run["pruned_usd"])}, that <code>trilemma prune</code> forgot: the figures '
            "above and the spend curve count them; the ledger no longer lists them.</p>"]


def _ledger(calls: list[dict[str, Any]]) -> str:
    keys = [k for k in LEDGER_KEYS if k != "idempotency_key"]
    numeric = {i for i, k in enumerate(keys) if k in
               ("attempt", "call", "prompt_tokens", "completion_tokens", "cost_usd", "latency_s")}  # fmt: skip
    rows = []
    for c in calls:
        r = ledger_row(c)
        cells = []
        for k in keys:
            v = r[k]
            if k == "cost_usd":
                cells.append(usd(v))
            elif k == "latency_s":
                cells.append(_s(v))
            elif k == "outcome":
                cls = "ok" if v == "ok" else "bad"
                cells.append(f'<span class="{cls}">{_e(v)}</span>')
            elif k == "error":
                cells.append(_e(_cut(v)))
            else:
                cells.append(_e(v))
        rows.append(cells)
    return _table(keys, rows, numeric)
