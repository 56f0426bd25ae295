"""How often ``calibrate --from-journal --check`` cries wolf, and how often it catches a wolf.

Each trial runs a spec on the simulator (``--runs`` runs, in scaled time, a journal of its
own), then checks the journal against a spec: the same spec (every guess right, so any
alarm is false) or one with a guess made wrong (the runs drew from the truth; the check
reads the spec as written). Two rules are set side by side on the same journals:

- apart: each figure on its own at 95% (the spec's figure outside the measured Wilson or
  mean interval), as ``--check`` judged until the forty-second stop;
- together: each figure's exact p-value, every figure of the check weighed at once by
  Holm's test at 5% (:func:`trilemma.experiments.fit.judge_models`), as it judges now.

    python benchmarks/bench_check_alarms.py [--trials 40] [--runs 100] [--out results.json]
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.progress import track
from rich.table import Table

from trilemma.experiments.fit import JournalCache, fit_model, judge_models
from trilemma.experiments.trials import repeat
from trilemma.journal import Journal
from trilemma.spec import Workflow, load_workflow

ROOT = Path(__file__).resolve().parents[1]

#: (name, example, --set the runs draw from, what the wrong guess is): an empty --set checks
#: the spec against runs of itself.
CASES: list[tuple[str, str, tuple[str, ...], str]] = [
    ("routed, honest", "routed.yaml", (), ""),
    ("debate, honest", "debate.yaml", (), ""),
    ("jittery chain, honest", "jittery.yaml", (), ""),
    ("cascade, honest", "cascade.yaml", (), ""),
    ("rate-limited votes, honest", "rate-limited.yaml", (), ""),
    ("routed: hard 0.25 planned 0.15", "routed.yaml",
     ("steps.answer.route.simple.share=0.75", "steps.answer.route.hard.share=0.25"),
     "steps.answer.route.hard.share"),
    ("debate: p_ok 0.95 planned 0.995", "debate.yaml", ("steps.answer.p_ok=0.95",),
     "steps.answer.p_ok"),
    ("jittery: latency 2.4 s planned 2.0", "jittery.yaml", ("models.premium.latency_s=2.4",),
     "latency_s"),
    ("cascade: small p_ok 0.85 planned 0.945", "cascade.yaml", ("models.small.p_ok=0.85",),
     "p_ok"),
]  # fmt: skip


def trial(truth: Workflow, claimed: Workflow, runs: int, seed: int) -> tuple[set[str], set[str], int]:
    """The fields each rule calls off, and how many figures were weighed."""
    with tempfile.TemporaryDirectory() as d:
        journal = Journal(Path(d) / "j.db")
        repeat(truth, runs, journal, seed=seed, time_scale=0.002)
        cache = JournalCache(journal)
        called = set(journal.models_called())
        fits = {m: fit_model(journal, m, p, claimed, cache)
                for m, p in claimed.models.items() if m in called}  # fmt: skip
        by_model = {m: fit.figures() for m, fit in fits.items()}
        figures = [f for figs in by_model.values() for f in figs]
        apart = {f.field for f in figures if f.outside}
        together = {d.field for ds in judge_models(by_model).values() for d in ds}
        journal.close()
    return apart, together, sum(not f.certain for f in figures)


def rules_table(
    title: str, rows: list[dict[str, Any]], n: int, caption: str, digits: int = 0,
    rules: Sequence[tuple[str, str]] = (("apart", "apart"), ("together", "together")),
) -> Table:  # fmt: skip
    """Rules side by side over ``n`` trials a case: an honest case's false alarms
    (``alarms_KEY`` for each rule's key in ``rules``, beside its column's label), a wrong
    guess's catches (``caught_KEY``), and the ``figures_weighed`` where the rows have them."""
    weighed = all("figures_weighed" in r for r in rows)
    table = Table(title=title, title_justify="left", caption=caption)
    for col in ("case", *(["figures"] if weighed else []), *(f"alarms, {label}" for _, label in rules),
                *(f"wrong guess caught, {label}" for _, label in rules)):  # fmt: skip
        table.add_column(col, justify="left" if col == "case" else "right")
    for r in rows:
        honest = r["wrong"] is None
        false = " (false)" if honest else ""
        table.add_row(
            r["case"], *([str(r["figures_weighed"])] if weighed else []),
            *(f"{r[f'alarms_{key}'] / n:.{digits}%}{false}" for key, _ in rules),
            *(["-"] * len(rules) if honest else [f"{r[f'caught_{key}'] / n:.{digits}%}" for key, _ in rules]),
        )  # fmt: skip
    return table


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--trials", type=int, default=40)
    parser.add_argument("--runs", type=int, default=100)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    started = time.perf_counter()
    rows: list[dict[str, Any]] = []
    for name, example, sets, wrong in CASES:
        claimed = load_workflow(ROOT / "examples" / example)
        truth = load_workflow(ROOT / "examples" / example, sets)
        apart = together = caught_apart = caught_together = weighed = 0
        for t in track(range(args.trials), description=name, transient=True):
            a, b, weighed = trial(truth, claimed, args.runs, seed=10_000 * t + 1)
            apart += bool(a)
            together += bool(b)
            caught_apart += wrong in a
            caught_together += wrong in b
        rows.append({"case": name, "wrong": wrong or None, "figures_weighed": weighed,
                     "alarms_apart": apart, "alarms_together": together,
                     "caught_apart": caught_apart if wrong else None,
                     "caught_together": caught_together if wrong else None})  # fmt: skip
    caption = ("apart: each figure at its own 95% interval; together: exact p-values, Holm's test "
               "at 5% over every figure the check weighs (figures: those a measure could miss by "
               f"chance); {time.perf_counter() - started:.0f} s")  # fmt: skip
    n = args.trials
    table = rules_table(f"calibrate --check: {n} trials of {args.runs} simulated runs each, two "
                        "rules on the same journals", rows, n, caption)  # fmt: skip
    Console().print(table)
    if args.out is not None:
        args.out.write_text(json.dumps({"trials": n, "runs": args.runs, "cases": rows}, indent=2) + "\n")


if __name__ == "__main__":
    main()
