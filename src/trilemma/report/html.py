"""One self-contained HTML page for a run: predicted beside measured, the timeline, the ledger.

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
from collections.abc import Iterable, Sequence
from typing import Any

from trilemma import __version__
from trilemma.errors import UsageError
from trilemma.journal import Journal
from trilemma.report.plots import timeline_png
from trilemma.report.tables import LEDGER_KEYS, ledger_row

__all__ = ["run_report"]

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


def _usd(x: float | None) -> str:
    return "-" if x is None else f"${x:,.4f}"


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
    order = [s["id"] for s in spec.get("steps", [])]
    status = run["status"]
    status_cls = "ok" if status == "ok" else "bad"
    parts = [
        "<!doctype html>",
        '<html lang="en"><head><meta charset="utf-8">',
        f"<title>trilemma run {_e(run_id)}</title><style>{_STYLE}</style></head><body>",
        f'<h1>Run {_e(run_id)}: <span class="{status_cls}">{_e(status)}</span></h1>',
        f'<p class="dim">spec {_e(run["spec_source"])}, started {_when(run["started_at"])}, '
        f"finished {_when(run['finished_at'])}, seed {_e(run['seed'])}"
        + (f", for tenant {_e(run['tenant'])}" if run.get("tenant") else "")
        + (f", line {run['batch_line']} of {_e(run['batch_id'])}" if run.get("batch_id") else "")
        + "</p>",
    ]
    if run["error"]:
        parts.append(f'<p class="bad">{_e(run["error"])}</p>')
    parts += ["<h2>Predicted beside measured</h2>", _summary(run, predicted)]
    png = timeline_png(run, calls, order)
    parts += [
        "<h2>Timeline</h2>",
        '<p class="dim">Each bar is one call, on its step\'s row, coloured by outcome; below, '
        "the spend as calls settle, against the ceiling.</p>",
        f'<img alt="timeline of the calls" src="data:image/png;base64,'
        f'{base64.b64encode(png).decode()}">',
        "<h2>Steps</h2>",
        _steps(order, steps),
        f"<h2>Ledger: {len(calls)} calls</h2>",
        _ledger(calls),
        f'<p class="dim">trilemma {__version__}, journal {_e(journal.path)}</p>',
        "</body></html>",
    ]
    return "\n".join(parts) + "\n"


def _summary(run: dict[str, Any], p: dict[str, Any]) -> str:
    cost, latency, calls = p.get("cost_usd", {}), p.get("latency_s", {}), p.get("calls", {})
    ceiling = run["max_cost_usd"]
    deadline = run["deadline_at"] - run["started_at"] if run["deadline_at"] else None
    rows = [
        ("cost", f"{_usd(cost.get('expected'))} expected, {_usd(cost.get('worst'))} worst",
         _usd(run["cost_usd"]), "-" if ceiling is None else f"ceiling {_usd(ceiling)}"),
        ("latency", f"{_s(latency.get('critical_path'))} critical path, {_s(latency.get('worst'))} "
         "worst", _s(run["latency_s"]), "-" if deadline is None else f"deadline {_s(deadline)}"),
        ("calls", f"{calls.get('expected', '-')} expected, {calls.get('worst', '-')} worst",
         str(run["calls"]), ""),
        ("success", f"{p['reliability'] * 100:.2f}%" if "reliability" in p else "-",
         _e(run["status"]), ""),
    ]  # fmt: skip
    return _table(("", "predicted", "measured", "budget"), rows, {1, 2})


def _steps(order: list[str], steps: dict[str, dict[str, Any]]) -> str:
    rows = []
    for sid in order:
        s = steps.get(sid)
        if s is None:
            rows.append((_e(sid), '<span class="dim">not run</span>', "", "", ""))
            continue
        cls = "ok" if s["status"] == "done" else "bad"
        rows.append((_e(sid), f'<span class="{cls}">{_e(s["status"])}</span>', _e(s["attempts"]),
                     _usd(s["cost_usd"]), _e(_cut(s["output"] or s["error"]))))  # fmt: skip
    return _table(("step", "status", "attempts", "cost", "output or error"), rows, {2, 3})


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
                cells.append(_usd(v))
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
