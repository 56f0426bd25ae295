"""Rich renderables for the planner's answers; printing is the CLI's job."""

from __future__ import annotations

import datetime as dt
import itertools
import math
import shlex
from collections import Counter
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from rich.console import Group
from rich.table import Table
from rich.text import Text

from trilemma._format import count, counted, dollars, set_flags
from trilemma.journal.store import (
    DEFAULT_PATH,
    OUTCOMES,
    abandoned,
    call_outcome,
    overrides_of,
    rejection,
)
from trilemma.report.fitted import FittedTable

if TYPE_CHECKING:  # types only: `trilemma runs` reads a journal without the planner or experiments
    from trilemma.experiments.compare import Contender
    from trilemma.experiments.fit import (
        CacheFit,
        Drift,
        LedgerFit,
        Measured,
        RouteFit,
        StepFit,
    )
    from trilemma.experiments.sweep import Sweep
    from trilemma.experiments.trials import Bill
    from trilemma.plan.agreement import Figure
    from trilemma.plan.estimate import Estimate
    from trilemma.plan.exercises import DebateVsRetry, RoutingSweep, TicketAnswer
    from trilemma.plan.optimize import Candidate, OptimizeResult
    from trilemma.plan.sensitivity import Sensitivity
    from trilemma.plan.simulate import BudgetFor, SimResult
    from trilemma.plan.thresholds import Threshold
    from trilemma.spec import Budget, ModelProfile, Workflow

__all__ = [
    "budget_fit",
    "chosen_at",
    "compare_table",
    "debate_table",
    "estimate_table",
    "frontier_table",
    "hedge_table",
    "journal_flag",
    "optimize_view",
    "routing_table",
    "short_id",
    "simulate_table",
    "sweep_table",
    "ticket_table",
    "usd",
]


def usd(x: float | None) -> str:
    """Dollars as tables and reports print them: whole dollars from $100 (a column stays
    narrow), else as messages do (:func:`trilemma._format.dollars`: four decimals, two
    significant digits where those would print $0.0000)."""
    if x is None:
        return "-"
    return f"${x:,.0f}" if abs(x) >= 100 else dollars(x)



def _with_ci(rate: float, ci: tuple[float, float] | list[float]) -> str:
    """A share and its 95% interval: "98.33% [91.14%, 99.71%]"."""
    return f"{_pct(rate)} [{_pct(ci[0])}, {_pct(ci[1])}]"


def _fixed_ci(value: float | None, ci: tuple[float, float]) -> str:
    """A measured figure and its 95% interval to four places, "-" where none was measured."""
    return "-" if value is None else f"{value:.4f} [{ci[0]:.4f}, {ci[1]:.4f}]"


def _pct(x: float) -> str:
    return f"{x * 100:.2f}%"


def qpd(x: float | None, some_ok: bool = True) -> str:
    """Quality per dollar; None is free: "inf" where something succeeded (cached answers),
    "-" where nothing did (a batch whose deadline had passed: nothing ran)."""
    return ("inf" if some_ok else "-") if x is None else f"{x:.1f}"


STEPS_SHOWN = 40
"""A table shows at most this many steps, in spec order: a run's, what went wrong first
(:func:`_steps_shown`); an estimate's, the critical path and the steps that weigh most
(:func:`_estimate_rows_shown`)."""


def estimate_table(e: Estimate, title: str = "Estimate") -> Group:
    """Per-step rows and the workflow's totals."""
    t = FittedTable(title=title, title_justify="left", caption="*: on the critical path",
                    caption_justify="left")  # fmt: skip
    for col in ("step", "model", "calls", "retries", "cost book", "cost expected", "cost worst",
                "latency", "p attempt", "p step"):  # fmt: skip
        t.add_column(col, justify="left" if col in ("step", "model") else "right")
    shown = _estimate_rows_shown(e.per_step)
    for s in e.per_step:
        if s.id not in shown:
            continue
        t.add_row(
            s.id + ("*" if s.critical else ""), _models_cell(s) + _cached_note(s.hit_rate),
            str(s.calls), str(s.retries),
            usd(s.cost_book), usd(s.cost_expected), usd(s.cost_worst),
            f"{s.latency_s:.2f}s", f"{s.p_attempt:.4f}", f"{s.p_step:.4f}",
        )  # fmt: skip
    parts: list[Table | Text] = [t]
    if len(shown) < len(e.per_step):
        rest = [s for s in e.per_step if s.id not in shown]
        t.caption = (f"*: on the critical path. {counted(len(shown), 'step')} shown (the critical "
                     f"path, then the costliest, least reliable and slowest); "
                     f"{len(rest):,} more, each at most {usd(max(s.cost_expected for s in rest))} "
                     f"expected, {max(s.latency_s for s in rest):.2f}s, p step at least "
                     f"{min(s.p_step for s in rest):.4f}: --json lists every one")  # fmt: skip
    parts.append(totals_table(e))
    if e.stop is not None:
        parts.append(Text(early_stop_line(e), style="dim"))
    return Group(*parts)


def _estimate_rows_shown(per_step: Sequence[Any], limit: int = STEPS_SHOWN) -> set[str]:
    """The steps an estimate's table shows: all when they fit, else the critical path's and
    then, in turn, the costliest, the least reliable and the slowest, ``limit`` in all."""
    if len(per_step) <= limit:
        return {s.id for s in per_step}
    orders = [
        [s for s in per_step if s.critical],
        sorted(per_step, key=lambda s: -s.cost_expected),
        sorted(per_step, key=lambda s: s.p_step),
        sorted(per_step, key=lambda s: -s.latency_s),
    ]
    shown: dict[str, None] = {}
    for s in orders[0][: limit // 2]:
        shown[s.id] = None
    ranked = [iter(o) for o in orders[1:]]
    for it in itertools.cycle(ranked):  # each order holds every step, so this ends
        if len(shown) >= limit:
            break
        shown.setdefault(next(s.id for s in it if s.id not in shown))
    return set(shown)


def early_stop_line(e: Estimate) -> str:
    """What the spec's ``stop_when`` saves, in a sentence."""
    from trilemma.plan.fanin import SAMPLES

    assert e.stop is not None
    st = e.stop
    saved = st.saved_usd(e.per_step)
    skipped = (f"{', '.join(st.skipped)} {'is' if len(st.skipped) == 1 else 'are'} skipped or "
               "cancelled" if st.skipped else "every other step has finished")
    waits = ("" if st.at_joined_s is None else f" ({st.at_joined_s:.2f}s on average: the "
             "branches that join before it wait for the slowest)")
    line = (f"stop_when {st.step}: it passes {_pct(st.chance)} of the time, at {st.at_s:.2f}s "
            f"on the expected schedule{waits}; then {skipped}. The expected "
            f"figures count it (saving {usd(saved)} on average); the worst case does not.")  # fmt: skip
    if st.races:
        them = "it" if len(st.races) == 1 else "them"
        line += (f" With retries, {', '.join(st.races)} may finish on the other side "
                 f"of {st.step} than this schedule puts {them}, and a step that fails before "
                 "the stop passes fails the run: ")  # fmt: skip
        line += (f"the expected cost and calls and the reliability are the means of {SAMPLES:,} "
                 "runs drawn, each race decided." if e.drawn is not None else
                 "these figures are approximate; `trilemma simulate` decides each race.")  # fmt: skip
    return line


def price_sources(wf: Workflow) -> list[str]:
    """A line per model whose token prices were looked up rather than given."""
    return [
        f"prices of {name}: ${m.usd_per_1m_input:g} in, ${m.usd_per_1m_output:g} out per 1M "
        f"tokens, from {m.prices_from}; set usd_per_1m_input/output in the spec to override"
        for name, m in wf.models.items()
        if m.prices_from
    ]


def cache_assumptions(wf: Workflow) -> list[str]:
    """A line per semantic-cached step planned as a hit on every run (the seed's assumption)."""
    return [
        f"{st.id}: planned as a cache hit on every run, but a semantic cache misses on prompts "
        "unlike earlier ones; give cached.hit_rate to plan the misses (docs/cache.md)"
        for st in wf.steps
        if st.cache_rule and st.cache_rule.similarity and "hit_rate" not in st.cache_rule.model_fields_set
    ]


def answer_caps(wf: Workflow) -> list[str]:
    """A line per token-priced model whose ``completion_tokens`` exceed the ``max_tokens`` its
    calls are sent with (a step's, else the profile's): the endpoint stops there, and the
    planner prices the answer so."""
    capped: dict[tuple[str, int], list[str]] = {}
    for st in wf.steps:
        runs = [(st, name) for name in wf.ladder(st)]
        runs += [(st.branch_step(label), b.model) for label, b in (st.route or {}).items()]
        for on, name in runs:
            m = wf.models[name]
            cap = on.max_tokens or m.max_tokens
            if m.usd_per_call is None and m.completion_tokens > cap:
                ids = capped.setdefault((name, cap), [])
                if st.id not in ids:
                    ids.append(st.id)
    return [
        f"models.{name}.completion_tokens: {wf.models[name].completion_tokens} expected, but "
        f"calls of {_listed(ids)} stop at max_tokens {cap} and are priced so; raise max_tokens "
        "if their answers need more"
        for (name, cap), ids in capped.items()
    ]


def _listed(ids: list[str], most: int = 3) -> str:
    """``step a``, ``steps a, b``, or ``steps a, b, c and 9 more``."""
    head = ", ".join(ids[:most])
    more = f" and {len(ids) - most} more" if len(ids) > most else ""
    return f"step {head}" if len(ids) == 1 else f"steps {head}{more}"


#: The share of a model's calls outlasting its timeout that ``estimate`` points out.
NOTED_TIMEOUTS = 0.001


def fault_assumptions(wf: Workflow) -> list[str]:
    """A line per model with faults, and per model whose calls may outlast its ``timeout_s``
    (one in a thousand or more): the estimate's p attempt counts them, below its p_ok."""
    from trilemma.plan.hedge import timeouts

    used = {m for st in wf.steps
            for m in (st.model, *(st.escalate or ()), *(b.model for b in (st.route or {}).values()))}  # fmt: skip
    lines = [
        f"models.{name}.faults: {m.faults.rate:.0%} of its calls fail before p_ok is judged "
        "(unbilled, retried; the calls of the attempt answered by then are billed); p attempt "
        "counts them"
        for name, m in wf.models.items()
        if m.faults.any and name in used
    ]
    for name, m in wf.models.items():
        late = timeouts(m)[0]
        if late >= NOTED_TIMEOUTS and name in used:
            lines.append(
                f"models.{name}.timeout_s: {late:.1%} of its calls outlast {m.timeout_s:g}s and "
                "are given up (a timeout: unbilled, retried); p attempt counts them"
            )
    return lines


def wave_assumptions(wf: Workflow) -> list[str]:
    """A line per step whose jittery calls are sent together (a vote's samples, a debate's
    agents): the expected latency waits for the slowest of them."""
    from trilemma.plan.hedge import timeouts

    lines = []
    for st in wf.steps:
        m = wf.models[st.model]
        widest = max(st.waves) if st.route is None else 1
        if widest < 2 or not m.latency_jitter:
            continue
        slowest = timeouts(m, widest)[1]
        each = "a hedged call" if m.hedge_after_s is not None else "a call"
        lines.append(f"steps.{st.id}: its {widest} calls sent together wait for the slowest, "
                     f"{slowest:.2f}s on average at latency_jitter {m.latency_jitter:g} ({each} "
                     f"{timeouts(m)[1]:.2f}s); the expected latency counts it")  # fmt: skip
    return lines


def slot_assumptions(wf: Workflow, e: Estimate) -> list[str]:
    """A line when more calls are ready at once than the run's slots: the critical path
    takes longer in them (:mod:`trilemma.plan.slots`)."""
    from trilemma.plan.fanin import SAMPLES
    from trilemma.plan.slots import over_rate

    if not e.slots_bind:
        return []
    limits = [f"{wf.concurrency} slots"] + [
        f"{m.max_concurrency} for {name}" for name, m in wf.models.items() if m.max_concurrency
    ]
    rated = over_rate(wf)
    figures = "the expected and worst latencies are replayed in them too"
    if e.latency_in_slots_s is not None:
        figures = (f"the expected latency is the mean of {SAMPLES:,} runs drawn in them, "
                   f"{e.latency_in_slots_s:.2f}s, the worst replayed in them")
    if rated:  # the rate limits may be what holds the calls up, not the slots
        over = "; ".join(f"{name}'s {what}" for name, what in rated.items())
        return [f"concurrency: the run's limits ({', '.join(limits)}; {over}) hold calls up, "
                f"so the critical path takes {e.latency_scheduled_s:.2f}s in them, not "
                f"{e.latency_critical_s:.2f}s (a rate limit's bucket starts a minute's worth "
                f"full, then lets calls go as it refills; {figures}, and the Monte Carlo's "
                "calls wait for them); raise `concurrency:` or the rate limits where the "
                "endpoints allow"]  # fmt: skip
    return [f"concurrency: more calls are ready at once than the run's {', '.join(limits)}, so "
            f"the critical path takes {e.latency_scheduled_s:.2f}s in them, not "
            f"{e.latency_critical_s:.2f}s (the longest remaining path goes first; {figures}, "
            "and the Monte Carlo's calls wait for them); raise `concurrency:` where the "
            "endpoints allow"]  # fmt: skip


def join_assumptions(e: Estimate) -> list[str]:
    """A line when branches whose times vary join: the expected latency is their drawn mean."""
    from trilemma.plan.fanin import SAMPLES

    if e.latency_joined_s is None:
        return []
    held = e.latency_expected_s > e.latency_joined_s + 1e-9  # the slots' replay is longer
    said = (f"; in the run's limits the expected latency is longer still, "
            f"{e.latency_expected_s:.2f}s" if held else ", the expected latency")
    drawn = f"over {SAMPLES:,} drawn runs (each step's attempts, answers and backoffs)"
    figure = f"the mean of the longest path {drawn} is"
    if e.stop is not None:
        at = e.stop.at_joined_s if e.stop.at_joined_s is not None else e.stop.at_s
        figure = (f"{drawn}, the mean of when {e.stop.step} passes ({at:.2f}s) and, when it "
                  "does not, of the whole run's longest path, weighed by the chance it passes, "
                  "is")  # fmt: skip
    return [f"joins: a run waits for the slowest of the branches that join, later on average "
            f"than the slowest of their means: {figure} {e.latency_joined_s:.2f}s{said}; "
            "`trilemma simulate` draws the rest"]


HALTS_NOTED = 0.02
"""What runs that halt at a failure cost and take is shown where it is at least this share
under the expected cost or latency (:attr:`Estimate.halting`)."""


def well_under(halting: float | None, expected: float | None) -> bool:
    """Whether a figure of the runs that halt is :data:`HALTS_NOTED` or more under the
    expected one (None: not worked out)."""
    return halting is not None and expected is not None and halting < expected * (1.0 - HALTS_NOTED)


def halt_assumptions(e: Estimate) -> list[str]:
    """A line when failed runs stop early enough to matter: the expected figures are of runs
    going to their end, the executor's stop at the first failed step."""
    h = e.halting
    if h is None or not (well_under(h.cost_usd, e.cost_expected)
                         or well_under(h.latency_s, e.latency_expected_s)):
        return []
    return [f"failures: {_pct(h.failed)} of runs fail, and a run sends nothing more once a step "
            f"has failed, so on average a run costs {usd(h.cost_usd)}, takes {h.latency_s:.2f}s "
            f"and makes {h.calls:.2f} calls; the expected figures are of runs that go to their "
            "end"]


def retry_assumptions(wf: Workflow) -> list[str]:
    """A line when a step retries: the expected and worst latencies count the backoff waits."""
    from trilemma.spec.model import BACKOFF_BASE_S, BACKOFF_CAP_S

    if not any(st.retries for st in wf.steps):
        return []
    return [f"retries: the expected and worst latency count the executor's backoff before each "
            f"retry (a uniform wait below {BACKOFF_BASE_S:g}s after a step's first failure, "
            f"doubling with each, at most {BACKOFF_CAP_S:g}s; after a 429, its Retry-After)"]


def stops_every_run(wf: Workflow, e: Estimate, *, spent: float | None = None) -> dict[str, str]:
    """The spec's budgets that stop every run that goes to the end, each with why: a ceiling
    under the cost of a run without a retry, a deadline under the critical path (in the
    run's slots where they bind). ``estimate`` prints them among its budget lines; ``run``
    and ``batch`` on stderr before they start.

    With ``spent``, ``wf`` is what is left of a resumed run (:meth:`Workflow.only`) under the
    run's whole ceiling and the deadline from now, and ``spent`` what the run paid already:
    ``resume`` says so before it goes on."""
    from trilemma.plan.slots import over_rate

    b, out = wf.budget, {}
    left, paid = spent is not None, spent or 0.0
    if b.max_cost_usd is not None and paid + e.cost_book > b.max_cost_usd + 1e-12:
        cap = usd(b.max_cost_usd)
        out["cost"] = (
            f"budget: even without a retry the steps left cost {usd(e.cost_book)}, over the "
            f"{usd(max(b.max_cost_usd - paid, 0.0))} left of the {cap} ceiling, so the run stops "
            "budget_exhausted before the end; --max-cost gives the run a higher one"
            if left else
            f"budget: even without a retry a run costs {usd(e.cost_book)}, over the {cap} "
            "ceiling, so every run stops budget_exhausted before the end; `trilemma optimize` "
            "looks for levers that fit"
        )  # fmt: skip
    if b.deadline_s is not None:
        path = "the critical path of the steps left" if left else "the critical path"
        cut = "the run is cut before the end" if left else "every run that goes to the end is cut"
        if e.latency_critical_s > b.deadline_s:
            out["deadline"] = (f"deadline: {path} ({e.latency_critical_s:.2f}s) is over "
                               f"{b.deadline_s:g}s, so {cut}")  # fmt: skip
        elif e.slots_bind and (e.latency_scheduled_s or 0.0) > b.deadline_s:
            limits = "concurrency slots and rate limits" if over_rate(wf) else "concurrency slots"
            out["deadline"] = (f"deadline: in the run's {limits} {path} takes "
                               f"{e.latency_scheduled_s:.2f}s, over {b.deadline_s:g}s, so {cut}")  # fmt: skip
    return out


def budget_fit(wf: Workflow, e: Estimate) -> list[str]:
    """A line per budget of the spec: whether a run under it can be stopped, before any is."""
    from trilemma.plan.estimate import held_worst

    b, lines = wf.budget, []
    floor = f"{b.min_reliability:g}" if b.min_reliability is not None else "0.95"
    stops = stops_every_run(wf, e)
    if b.max_cost_usd is not None:
        cap = usd(b.max_cost_usd)
        held = held_worst(wf)
        if stops.get("cost"):
            lines.append(stops["cost"])
        elif e.cost_worst <= b.max_cost_usd + 1e-12 and held <= b.max_cost_usd + 1e-12:
            lines.append(f"budget: the worst case ({usd(e.cost_worst)}) fits the {cap} "
                         "ceiling, so no run stops for money")  # fmt: skip
        elif e.cost_worst <= b.max_cost_usd + 1e-12:
            lines.append(f"budget: the worst case ({usd(e.cost_worst)}) fits the {cap} "
                         f"ceiling, but its calls may hold up to {usd(held)} (the executor "
                         "reserves every token max_tokens allows, and a real endpoint's prompt "
                         "at its bytes, before it sends a call), so a run may stop "
                         "budget_exhausted; `trilemma simulate --ceiling` says how often, and "
                         f"`--ceiling-for {floor}` which ceiling lets that share "
                         "finish")  # fmt: skip
        else:
            lines.append(f"budget: the worst case ({usd(e.cost_worst)}) does not fit the {cap} "
                         "ceiling: a run whose retries pile up stops budget_exhausted (the "
                         "executor reserves each call's worst case before sending it); "
                         "`trilemma simulate --ceiling` says how many, and `--ceiling-for "
                         f"{floor}` which ceiling lets that share finish")  # fmt: skip
    if b.deadline_s is not None:
        d = f"{b.deadline_s:g}s"
        if stops.get("deadline"):
            lines.append(stops["deadline"])
        elif e.latency_worst_s <= b.deadline_s:
            lines.append(f"deadline: the worst path ({e.latency_worst_s:.2f}s) fits {d}, so no "
                         "run is cut (latency jitter aside)")  # fmt: skip
        else:
            lines.append(f"deadline: the worst path ({e.latency_worst_s:.2f}s) does not fit "
                         f"{d}: slow or retried runs are cut; `trilemma simulate` says how many, "
                         f"and `--deadline-for {floor}` which deadline lets that share finish")  # fmt: skip
    return lines


def totals_table(e: Estimate) -> Table:
    """The workflow's figures in one small table."""
    t = FittedTable(show_header=True, box=None, pad_edge=False)
    for col in ("", "book", "expected", "worst"):
        t.add_column(col, justify="right")
    t.add_row("calls", str(e.calls_book), f"{e.calls_expected:.2f}", str(e.calls_worst))
    t.add_row("cost", usd(e.cost_book), usd(e.cost_expected), usd(e.cost_worst))
    t.add_row("latency (critical path)", f"{e.latency_critical_s:.2f}s",
              f"{e.latency_expected_s:.2f}s", f"{e.latency_worst_s:.2f}s")  # fmt: skip
    t.add_row("reliability", _pct(e.reliability), "", "")
    t.add_row("quality per dollar", qpd(e.quality_per_dollar),
              qpd(e.quality_per_expected_dollar), "")  # fmt: skip
    return t


def simulate_table(r: SimResult, e: Estimate, *, halted: bool = True) -> Table:
    """Monte Carlo figures beside the analytic ones; ``halted``: its failed runs stopped
    sending, as the executor's do (the analytic expected figures go to the end)."""
    lo, hi = r.ci95
    t = FittedTable(title=f"Monte Carlo, {r.runs:,} runs (seed {r.seed})", title_justify="left")
    for col in ("", "analytic", "mean", "p50", "p95", "p99"):
        t.add_column(col, justify="right")
    t.add_row("success", _pct(e.reliability), f"{_pct(r.success_rate)}  [{_pct(lo)}, {_pct(hi)}]",
              "", "", "")  # fmt: skip
    t.add_row("cost", usd(e.cost_expected), *(usd(v) for v in _four(r.cost_usd)))
    t.add_row("latency", f"{e.latency_expected_s:.2f}s", *(f"{v:.2f}s" for v in _four(r.latency_s)))
    t.add_row("calls", f"{e.calls_expected:.2f}", *(f"{v:.2f}" for v in _four(r.calls)))
    s = r.settings
    t.caption = (
        f"recall {s.recall}, retry correlation {s.retry_correlation}, compounding "
        f"{s.compounding}; caught failures {_pct(r.caught_failures / r.runs)}, "
        f"uncaught {_pct(r.uncaught_failures / r.runs)}"
    )
    if r.deadline_s is not None:
        t.caption += (f"; the {r.deadline_s:g}s deadline cut {_pct(r.deadline_hits / r.runs)} "
                      "of runs (cancelled: failed)")  # fmt: skip
        if (near := _near(r, e)) is not None:
            t.caption += (f", and {near}, {MAY_CROSS} (--deadline-for "
                          "advises a deadline with room)")  # fmt: skip
    if r.max_cost_usd is not None:
        t.caption += (f"; the {usd(r.max_cost_usd)} ceiling stopped "
                      f"{_pct(r.ceiling_hits / r.runs)} of runs (budget_exhausted: failed)")  # fmt: skip
    h = e.halting
    if halted and h is not None and halt_assumptions(e):
        t.caption += (f"; the analytic figures are of runs that go to their end, and failed runs "
                      f"stop here: the estimate's for them {usd(h.cost_usd)}, {h.latency_s:.2f}s, "
                      f"{h.calls:.2f} calls (--no-halt runs them all)")  # fmt: skip
    if e.slots_bind:
        t.caption += ("; the run's limits (its concurrency slots, a model's own slots and rate "
                      "limits) hold calls up, and each trajectory's calls wait for them (see "
                      "`trilemma estimate`)")
    return t


def fit_table(f: LedgerFit, base: ModelProfile) -> Table:
    """``calibrate --from-journal``: the profile the spec gives beside what the ledger measured."""
    t = FittedTable(title=f"Model {f.model!r} in {f.journal}: {counted(f.sent, 'call')} sent in "
                          f"{counted(f.runs, 'run')}",
                    title_justify="left")  # fmt: skip
    for col in ("", "profile", "measured", "from"):
        t.add_column(col, justify="left" if col == "" else "right")
    lo, hi = f.ci95
    t.add_row("p_ok", f"{base.p_ok:.4f}",
              _fixed_ci(f.p_ok, (lo, hi)),
              f"{f.judged:,} single-call attempts answered")  # fmt: skip
    t.add_row("latency_s", f"{base.latency_s:g}",
              "-" if f.latency_mean_s is None else f"{f.latency_mean_s:.4f}",
              f"{len(f.latency_s):,} answers")  # fmt: skip
    t.add_row("latency_jitter", f"{base.latency_jitter:g}",
              "-" if f.jitter is None else f"{f.jitter:.3f}", "sd of log-latency")  # fmt: skip
    rates = f.fault_rates()
    from trilemma.experiments.fit import FAULTS

    for kind, field in FAULTS.items():
        t.add_row(f"faults.{field}", f"{getattr(base.faults, field):g}",
                  f"{rates[field]:.4f}" if rates else "-",
                  f"{kind.replace('_', ' ')}, of calls sent")  # fmt: skip
    if f.prompt_tokens is not None and f.completion_tokens is not None:
        cut = f.cut_share or 0.0
        t.add_row("tokens (prompt, completion)", f"{base.prompt_tokens}, {base.completion_tokens}",
                  f"{f.prompt_tokens:.0f}, {f.completion_tokens:.0f}",
                  "means reported" + (f"; {cut:.1%} of answers cut at max_tokens" if cut else ""))  # fmt: skip
    if f.cost_usd is not None:
        t.add_row("$ per answer", usd(base.price_per_call), usd(f.cost_usd), "billed")
    notes = []
    if not f.judged:
        notes.append("no single-call attempt was judged, so p_ok keeps the profile's: only a "
                     "gate (or the simulator's check) tells a wrong answer")  # fmt: skip
    if f.left_out:
        from trilemma.experiments.fit import answered_by

        others = ", ".join(f"{by} ({counted(n, 'run')})" for by, n in f.left_out)
        notes.append(f"left out: the runs whose spec has {f.model!r} answered by {others}; the "
                     f"fit counts those answered by {answered_by(base)}, as the profile is")  # fmt: skip
    if f.cut:
        notes.append(f"{counted(f.cut, 'answer')} stopped at max_tokens: their completion tokens are the "
                     "cap, so the mean is what calls cost under it, and less than they would "
                     "generate under a higher max_tokens")  # fmt: skip
    if notes:
        t.caption = "; ".join(notes)
    return t


def budget_for_lines(f: BudgetFor, e: Estimate) -> list[str]:
    """``simulate --ceiling-for`` / ``--deadline-for``: the budget found, beside the
    planner's figures."""
    cost = f.kind == "max_cost_usd"
    name, flag = ("ceiling", "--max-cost") if cost else ("deadline", "--deadline")
    runs = f"{f.at.runs:,} runs, seed {f.at.seed}"
    if f.value is None:
        return [f"No {name} lets {_pct(f.target)} of runs finish: without one, "
                f"{_pct(f.at.success_rate)} do ({runs}). Raise p_ok or retries first "
                "(`trilemma optimize`)."]  # fmt: skip

    def show(v: float) -> str:
        return usd(v) if cost else f"{v:.3f}s"

    lost = (f.at.ceiling_hits if cost else f.at.deadline_hits) / f.at.runs
    lines = [f"Smallest {name} under which {_pct(f.target)} of runs finish: {show(f.value)} "
             f"({_with_ci(f.at.success_rate, f.at.ci95)} finish, {_pct(lost)} "
             f"{'stopped' if cost else 'cut'}; {runs})."]  # fmt: skip
    if f.below is not None:
        unit = "a millionth of a dollar" if cost else "a millisecond"
        lines.append(f"{unit.capitalize()} less, {_pct(f.below.success_rate)} finish "
                     f"({f.below.successes:,} runs against {f.at.successes:,}).")  # fmt: skip
    figures = (f"expected cost {usd(e.cost_expected)}, worst case {usd(e.cost_worst)}" if cost
               else f"critical path {e.latency_critical_s:.2f}s, expected "
                    f"{e.latency_expected_s:.2f}s, worst {e.latency_worst_s:.2f}s")  # fmt: skip
    advice = f"run it with {flag} {f.run_with:g}"
    if not cost and f.run_with is not None and f.run_with != f.value:
        advice += (f" ({show(f.value)} and {round((f.run_with - f.value) * 1e3)} ms for the executor: "
                   "the event loop wakes a few ms after each wait, so a deadline met to the "
                   "millisecond is missed)")  # fmt: skip
    lines.append(f"Planner: {figures}; {advice}.")
    return lines


def route_fit_table(routes: Sequence[RouteFit], model: str) -> Table:
    """``calibrate --from-journal`` of a classifier: each routed step's branches, the spec's
    ``share`` beside the share its decisions in the ledger call for."""
    t = FittedTable(title=f"Routes {model!r} classifies for (p_ok {routes[0].p_ok:g}): the "
                          "decisions journaled", title_justify="left")  # fmt: skip
    for col in ("step", "branch", "share", "decisions", "picked", "fitted share [95%]"):
        t.add_column(col, justify="left" if col in ("step", "branch") else "right")
    for r in routes:
        for i, (label, given) in enumerate(r.spec_shares.items()):
            m = r.measured(label)
            t.add_row(r.step if i == 0 else "", label, f"{given:g}", f"{r.decisions[label]:,}",
                      "-" if m is None else _pct(m),
                      _fixed_ci(r.share(label), r.ci95(label)))  # fmt: skip
    t.caption = ("share: the spec's; picked: of the decisions (in the runs of specs that route "
                 "the step alike); fitted share: the share that gives those decisions once the "
                 "classifier's misses (1 - p_ok) go to the first branch")  # fmt: skip
    return t


def cache_fit_table(cached: Sequence[CacheFit], model: str) -> Table:
    """``calibrate --from-journal``: each cached step on the model, its planned ``hit_rate``
    beside the share of runs the cache served."""
    t = FittedTable(title=f"Cached steps on {model!r}: the runs journaled", title_justify="left")
    for col in ("step", "hit_rate", "runs", "served", "measured [95%]"):
        t.add_column(col, justify="left" if col == "step" else "right")
    for c in cached:
        t.add_row(c.step, f"{c.hit_rate:g}", f"{c.runs:,}", f"{c.hits:,}",
                  _fixed_ci(c.measured, c.ci95))  # fmt: skip
    t.caption = ("hit_rate: the spec's (cached: true plans 1, every run a hit); runs: those that "
                 "reached the step; served: those the cache answered")  # fmt: skip
    return t


def step_fit_table(steps: Sequence[StepFit], model: str) -> Table:
    """``calibrate --from-journal``: the steps (and branches) on the model whose attempt is not
    one call, or that have a ``p_ok`` of their own, the planned ``p_ok`` beside the share of
    their judged attempts accepted."""
    t = FittedTable(title=f"Steps on {model!r} with a p_ok of their own or more than one call "
                          "an attempt: their attempts journaled", title_justify="left")  # fmt: skip
    for col in ("step", "asked", "p_ok", "judged", "accepted", "measured [95%]"):
        t.add_column(col, justify="left" if col in ("step", "asked") else "right")
    for f in steps:
        name = f.step + (f" ({f.branch})" if f.branch else "")
        t.add_row(name, f.kind, f"{f.p_ok:g}" + ("" if f.own else " (model's)"), f"{f.judged:,}",
                  f"{f.accepted:,}", _fixed_ci(f.measured, f.ci95))  # fmt: skip
    t.caption = ("judged: attempts whose calls were all answered, on a step with a gate or on the "
                 "simulator (an endpoint's answer no gate reads is accepted unread); a debate's or "
                 "a vote's attempt is accepted or rejected whole")  # fmt: skip
    return t


def plan_set_line(flags: Sequence[str], spec: str) -> str:
    """The command that plans ``spec`` with what the ledger measured (``--set`` ``flags``)."""
    return (f"to plan with what was measured: trilemma estimate {shlex.quote(spec)} "
            f"{set_flags(flags)} (or edit it into the spec)")


def drift_lines(
    drift: Sequence[Drift], model: str, figures: Sequence[Figure] = (), weighed: int = 0
) -> list[str]:
    """What the ledger contradicts in a profile, a line each; or that it contradicts nothing.
    ``figures``: the model's figures weighed, of ``weighed`` in the check: those outside their
    own 95% interval that are not drift are named, as chance."""
    off = {d.field for d in drift}
    lines = [f"drift: {d.field} is {d.profile:g} in the spec; the ledger measured "
             f"{d.measured:.4g} [{d.ci95[0]:.4g}, {d.ci95[1]:.4g}] (p = {d.p_value:.2g})"
             for d in drift]  # fmt: skip
    if not drift:
        lines.append(f"no drift: the ledger contradicts no figure of {model!r}")
    lines += [f"{f.field}: {f.profile:g} lies outside the 95% interval [{f.ci95[0]:.4g}, "
              f"{f.ci95[1]:.4g}] (p = {f.p_value:.2g}), which chance explains: not drift "
              f"({counted(weighed, 'figure')} weighed at once by Holm's test, 5% in all)"
              for f in figures if f.outside and f.field not in off]  # fmt: skip
    return lines


def hedge_table(rows: Sequence[Threshold], model: str) -> Table:
    """Each hedge threshold's cost beside its latency tail, the first row unhedged."""
    base = rows[0]
    first = base.sim
    t = FittedTable(title=f"Hedging model {model!r}: Monte Carlo, {first.runs:,} runs per threshold "
                          f"(seed {first.seed})", title_justify="left")  # fmt: skip
    deadline = first.deadline_s
    for col in ("hedge after", "calls hedged", "cost", "vs none", "calls", "success", "p50",
                "p95", "p99", "p99 vs none"):  # fmt: skip
        t.add_column(col, justify="right")
    if deadline is not None:
        t.add_column(f"cut at {deadline:g}s", justify="right")

    def cost(r: Threshold) -> float:  # a deadline cuts the bill of the runs it cancels
        return r.estimate.cost_expected if deadline is None else r.sim.cost_usd.mean

    for r in rows:
        after = "none" if r.after_s is None else f"{r.after_s:.2f}s"
        if r.label.lower().startswith("p"):
            after += f" ({r.label})"
        lat = r.sim.latency_s
        t.add_row(
            after, _pct(r.copy_rate), usd(cost(r)), _change(cost(r), cost(base)),
            f"{r.sim.calls.mean:.2f}", _pct(r.sim.success_rate),
            f"{lat.p50:.2f}s", f"{lat.p95:.2f}s", f"{lat.p99:.2f}s",
            _change(lat.p99, first.latency_s.p99),
            *([_pct(r.sim.deadline_hits / r.sim.runs)] if deadline is not None else []),
        )  # fmt: skip
    if deadline is None:
        t.caption = ("cost: the planner's expected cost (the Monte Carlo's mean agrees within "
                     "sampling); latencies: Monte Carlo, every row drawn from the same seed")  # fmt: skip
    else:
        t.caption = (f"Monte Carlo, every row drawn from the same seed; the {deadline:g}s "
                     "deadline cancels a run still going (it fails), which cuts its cost and "
                     "caps its latency")  # fmt: skip
    return t


def sensitivity_table(
    s: Sensitivity, title: str = "Sensitivity", measured: Mapping[str, Measured] | None = None,
    journal: str | None = None,
) -> Table:  # fmt: skip
    """Each guess of a spec divided and multiplied by the factor, the figures it gives
    beside the spec's own, the guess that moves them most first; with ``measured`` (read
    from ``journal``), what the ledger says of each guess beside it."""
    t = FittedTable(title=title, title_justify="left")
    by = f"{s.factor:g}"
    cols = [("guess", "left"), ("as written", "right")]
    if measured is not None:
        cols.append(("measured [95%]", "right"))
    cols += [(f"/{by} -> x{by}", "right"), ("expected cost", "right"),
             ("expected latency", "right"), ("reliability", "right")]  # fmt: skip
    for col, justify in cols:
        t.add_column(col, justify=justify)  # type: ignore[arg-type]
    b = s.base
    lead = ["(the spec)", ""] + ([""] if measured is not None else [])
    t.add_row(*lead, "", usd(b.cost_usd), f"{b.latency_s:.2f}s", _pct(b.reliability))
    off = 0
    for g in s.guesses:
        shown = _guess_value if g.knob != "price" else usd
        row: list[str | Text] = [g.name, shown(g.value)]
        if measured is not None:
            m = measured.get(g.name)
            cell = "-" if m is None else shown(m.value) + (
                "" if m.ci95 is None else f" [{shown(m.ci95[0])}, {shown(m.ci95[1])}]")
            outside = m is not None and m.contradicted
            off += outside
            row.append(Text(cell + (" !" if outside else ""), style="red" if outside else ""))
        t.add_row(
            *row, f"{shown(g.low_value)} -> {shown(g.high_value)}",
            _span(g.low.cost_usd, g.high.cost_usd, b.cost_usd, usd),
            _span(g.low.latency_s, g.high.latency_s, b.latency_s, lambda x: f"{x:.2f}s"),
            _span(g.low.reliability, g.high.reliability, b.reliability, _pct),
        )  # fmt: skip
    caption = (f"each guess divided and multiplied by {by} in turn, the others as written "
               f"(p_ok: its failure rate, so /{by} fails {by}x less often; hit_rate: its miss "
               "rate; a route's share: the other branches take the rest); the guesses that "
               "move a figure most come first (reliability counted by the runs that fail). ")  # fmt: skip
    if measured is None:
        caption += ("Measure those first: `trilemma calibrate` for a model's p_ok and latency, "
                    "its price list for a price")  # fmt: skip
    else:
        caption += (f"measured: what the ledger of {journal} says (as `trilemma calibrate "
                    "--from-journal` fits it; '-': nothing it can tell, so measure that one)"
                    + (f"; '!': {counted(off, 'guess')} the ledger contradicts" if off else ""))  # fmt: skip
    t.caption = caption
    return t


def _guess_value(x: float) -> str:
    return f"{x:.4g}"


def _span(low: float, high: float, base: float, shown: Any) -> str:
    """A figure at the guess divided and multiplied, or '-' where it does not move."""
    if math.isclose(low, base, rel_tol=1e-9, abs_tol=1e-12) and math.isclose(
        high, base, rel_tol=1e-9, abs_tol=1e-12
    ):
        return "-"
    return f"{shown(low)} -> {shown(high)}"


def _change(value: float, base: float) -> str:
    return "-" if base == 0 or value == base else f"{(value - base) / base:+.0%}"


def _four(s: object) -> list[float]:
    return [getattr(s, k) for k in ("mean", "p50", "p95", "p99")]


def frontier_table(frontier: Sequence[Candidate], r: OptimizeResult, limit: int = 15) -> Table:
    """The Pareto frontier, evenly thinned to ``limit`` rows, the chosen configuration
    among them and marked (in its place by cost where the frontier's figures pass it over:
    the run's slots, or the enforced budgets, chose it)."""
    from trilemma.plan.optimize import meets
    from trilemma.spec import Budget

    at = chosen_at(frontier, r.chosen)
    shown = _thinned(len(frontier), limit, at)
    rows: list[tuple[Candidate, bool]] = [(frontier[k], k == at) for k in shown]
    off = r.chosen is not None and at is None
    if off and r.chosen is not None:
        place = next((i for i, (c, _) in enumerate(rows) if c.cost_worst > r.chosen.cost_worst),
                     len(rows))  # fmt: skip
        rows.insert(place, (r.chosen, True))
    t = FittedTable(title=f"Pareto frontier ({len(frontier)} configurations; {len(shown)} shown)",
                    title_justify="left")  # fmt: skip
    for col in ("cost worst", "cost expected", "latency", "reliability", "meets budget", "levers"):
        t.add_column(col, justify="left" if col == "levers" else "right")
    budget, on = r.budget, r.budget_on
    if on == "enforced":  # on paper only the floor binds; the answer was simulated
        budget, on = Budget(min_reliability=r.budget.min_reliability), "expected"
    slotted = False
    over = "not on average" if r.over_on_average else "not in slots"
    for c, chosen in rows:
        meets_budget = "yes" if meets(c, budget, on) else ""
        if meets_budget and not chosen and r.over_in_slots(c):
            meets_budget, slotted = over, True
        if chosen:
            meets_budget = f"{meets_budget}, chosen" if meets_budget else "chosen"
        t.add_row(usd(c.cost_worst), usd(c.cost_expected), f"{c.latency_s:.2f}s",
                  _pct(c.reliability), meets_budget, describe(c),
                  style="bold" if chosen else None)  # fmt: skip
    notes = []
    if r.budget_on == "enforced":
        notes.append("meets budget: the reliability floor on paper (the rest is enforced); "
                     "chosen: the cheapest that met it under the enforced budgets")  # fmt: skip
    elif slotted and r.over_on_average:
        notes.append("not on average: meets the budgets on the sum of mean step times (the "
                     "latency column), but a run waits for the slowest of the branches that "
                     "join, later on average (see the note)")  # fmt: skip
    elif slotted:
        notes.append("not in slots: meets the budgets as if every ready call could go at once "
                     "(the latency column), but not in the run's limits (its concurrency slots "
                     "or rate limits; see the note)")  # fmt: skip
    if off:
        notes.append("chosen: off the frontier by these figures (another is at least as good "
                     "on each), but the cheapest that meets the budgets as a run holds them")  # fmt: skip
    if notes:
        t.caption = "; ".join(notes)
    return t


def chosen_at(frontier: Sequence[Candidate], chosen: Candidate | None) -> int | None:
    """Where the chosen configuration is on the frontier (one with the same figures), if it is."""
    if chosen is None:
        return None
    return next((k for k, c in enumerate(frontier) if c.figures == chosen.figures), None)


def _thinned(n: int, limit: int, keep: int | None) -> list[int]:
    """``limit`` of ``n`` rows evenly spread, first and last kept, and row ``keep`` in place
    of the one nearest it."""
    if n <= limit:
        return list(range(n))
    step = (n - 1) / (limit - 1)
    rows = [round(i * step) for i in range(limit)]
    if keep is not None and keep not in rows and limit > 2:
        inner = range(1, limit - 1)  # the ends stay: they span the frontier
        rows[min(inner, key=lambda i: abs(rows[i] - keep))] = keep
    return sorted(rows)


def describe(c: Candidate) -> str:
    """The levers of a candidate in a few words."""
    models: dict[str, int] = {}
    for ch in c.choices:
        if ch.cut:
            continue
        key = "cache" if ch.cached else " > ".join((ch.model, *(ch.escalate or ())))
        models[key] = models.get(key, 0) + 1
    retries = sum(ch.retries for ch in c.choices if not (ch.cached or ch.cut))
    parts = [", ".join(f"{n} {m}" for m, n in models.items()),
             "1 retry" if retries == 1 else f"{retries} retries"]  # fmt: skip
    if c.parallel:
        parts.append("parallel")
    if c.cuts:
        parts.append(f"{c.cuts} cut")
    if c.stop_when is not None:
        parts.append(f"stop on {c.stop_when}")
    return "; ".join(parts)


def spec_changes(original: Workflow, chosen: Workflow, most: int = 30) -> list[str]:
    """What a chosen spec changes from the original, one line per change shared by a set of
    steps (``model premium -> small, retries 0 -> 1: steps s01, s02, s03 and 9 more``)."""
    kept = {s.id: s for s in chosen.steps}
    groups: dict[str, list[str]] = {}
    for s in original.steps:
        new = kept.get(s.id)
        if new is None:
            groups.setdefault("cut", []).append(s.id)
            continue
        was, now = s.model_dump(), new.model_dump()
        fields = [f for f in was if was[f] != now.get(f)]
        if fields:
            change = ", ".join(_field_change(f, was.get(f), now.get(f)) for f in fields)
            groups.setdefault(change, []).append(s.id)
    lines = [f"{change}: {_listed(ids)}" for change, ids in groups.items()]
    for name in ("stop_when", "concurrency"):
        was, now = getattr(original, name), getattr(chosen, name)
        if was != now:
            lines.append(_field_change(name, was, now))
    if len(lines) > most:
        lines[most:] = [f"and {counted(len(lines) - most, 'more change')}"]
    return lines or ["nothing: it is the original"]


def _field_change(name: str, was: object, now: object) -> str:
    if name == "after" and not now:
        return "after: none (starts at once)"
    if isinstance(was, list) or isinstance(now, list):
        return f"{name}: {_flow(was or [])} -> {_flow(now or [])}"
    return f"{name} {_flow(was)} -> {_flow(now)}"


def _flow(value: object) -> str:
    """A spec value as YAML's flow style writes it: ``[a, b]``, ``{ttl_s: 60}``, ``none``."""
    if value is None:
        return "none"
    if isinstance(value, list):
        return "[" + ", ".join(_flow(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{k}: {_flow(v)}" for k, v in value.items() if v is not None) + "}"
    return str(value).lower() if isinstance(value, bool) else str(value)


def optimize_view(r: OptimizeResult) -> Group:
    """Original beside chosen, and the frontier."""
    t = FittedTable(title=f"Optimized by {r.method}: {count(r.space)} configurations in the space, "
                          f"{r.evaluated:,} evaluated", title_justify="left")  # fmt: skip
    t.add_column("")
    t.add_column("original", justify="right")
    t.add_column("chosen", justify="right")
    o, b = r.original, r.best_estimate
    rows = [
        ("cost worst", usd(o.cost_worst), usd(b.cost_worst) if b else "-"),
        ("cost expected", usd(o.cost_expected), usd(b.cost_expected) if b else "-"),
        ("latency worst", f"{o.latency_worst_s:.2f}s", f"{b.latency_worst_s:.2f}s" if b else "-"),
        ("latency critical path", f"{o.latency_critical_s:.2f}s",
         f"{b.latency_critical_s:.2f}s" if b else "-"),
        ("reliability", _pct(o.reliability), _pct(b.reliability) if b else "-"),
        ("steps", str(len(o.per_step)), str(len(b.per_step)) if b else "-"),
    ]  # fmt: skip
    if halt_assumptions(o) or (b is not None and halt_assumptions(b)):  # runs that fail often

        def halted(e: Estimate) -> str:
            return usd(e.halting.cost_usd if e.halting is not None else e.cost_expected)

        rows.insert(2, ("cost as failed runs stop", halted(o), halted(b) if b else "-"))
    for row in rows:
        t.add_row(*row)
    if b is not None and len(b.per_step) < len(o.per_step):
        kept = {e.id for e in b.per_step}
        cut = [e.id for e in o.per_step if e.id not in kept]
        t.add_row("cut", "", ", ".join(cut))
    bud = r.budget
    if r.judged is not None:  # a stop: the estimate of the chosen spec flatters it
        t.add_row("success, Monte Carlo", "", _with_ci(r.judged.success_rate, r.judged.ci95))
        t.add_row("cost expected, Monte Carlo", "", usd(r.judged.cost_usd.mean))
    if r.enforced is not None:
        t.add_row("success, budgets enforced", "",
                  _with_ci(r.enforced.success_rate, r.enforced.ci95))
    held = "enforced" if r.budget_on == "enforced" else f"on {r.budget_on} figures"
    t.caption = f"budget {held}: {_budget_terms(bud)}"
    parts: list[Table | Text] = [t, frontier_table(r.frontier, r)]
    parts.extend(Text(f"note: {n}", style="dim") for n in r.notes)
    return Group(*parts)


def _budget_terms(b: Budget) -> str:
    """The budgets set, in words (``no budget`` when none is)."""
    terms = [
        *([f"cost <= {usd(b.max_cost_usd)}"] if b.max_cost_usd is not None else []),
        *([f"latency <= {b.deadline_s:g}s"] if b.deadline_s is not None else []),
        *([f"reliability >= {_pct(b.min_reliability)}"] if b.min_reliability else []),
    ]
    return ", ".join(terms) or "no budget"


def budget_check_line(
    checks: dict[str, SimResult], estimates: Mapping[str, Estimate | None] | None = None,
    min_reliability: float | None = None,
) -> str:  # fmt: skip
    """``optimize``'s Monte Carlo of the original and the chosen spec under the budgets held
    as a run holds them, each success with its 95% interval; ``estimates``: each one's, to
    name the share of its runs it has in time by less than the executor's own time
    (:data:`NEAR_SHOWN`); ``min_reliability``: the reliability budget the chosen was picked
    for on paper, named when its runs under the budgets fall short of it (the whole interval
    below)."""
    first = next(iter(checks.values()))
    deadline, ceiling = first.deadline_s, first.max_cost_usd
    held = []
    if deadline is not None:
        held.append(f"the {deadline:g}s latency budget as the run's deadline (a run still going "
                    "is cancelled)")  # fmt: skip
    if ceiling is not None:
        held.append(f"the {usd(ceiling)} cost budget as its ceiling (a call whose worst case "
                    "does not fit is not sent; the run stops)")  # fmt: skip

    def lost(name: str, r: SimResult) -> str:
        out = [f"{_pct(r.deadline_hits / r.runs)} cut"] if deadline is not None else []
        out += [f"{_pct(r.ceiling_hits / r.runs)} stopped"] if ceiling is not None else []
        if (near := _near(r, (estimates or {}).get(name))) is not None:
            out.append(f"{near}, {MAY_CROSS}")
        return ", ".join(out)

    parts = [f"{name} succeeds {_with_ci(r.success_rate, r.ci95)} ({lost(name, r)})"
             for name, r in checks.items()]  # fmt: skip
    line = f"Monte Carlo, {first.runs:,} runs with {' and '.join(held)}: {'; '.join(parts)}."
    chosen = checks.get("chosen")
    if min_reliability and chosen is not None and chosen.ci95[1] < min_reliability:
        line += (f" Run under these budgets, the chosen falls short of the {_pct(min_reliability)} "
                 "reliability budget it meets on paper: `--budget-on enforced` picks among "
                 "configurations simulated so.")  # fmt: skip
    return line


def run_view(r: Any, under: SimResult | None = None, spec: str | None = None,
             held: Mapping[str, Any] | None = None, time_scale: float = 1.0) -> Group:  # fmt: skip
    """A run: predicted beside measured, then each step (``time_scale``: a run in simulated
    time, which is run again rather than resumed); ``under``: the Monte Carlo of the
    spec under the run's ceiling and deadline, which the analytic success does not see (of a
    resume, of the steps it had left, and ``held``, what its row says of it: see
    :func:`under_budget_rows`); ``spec``: its file, named in the command that finds a budget
    when one stopped the run."""
    p = r.predicted
    seed = "" if r.seed is None else f" (seed {r.seed})"
    t = FittedTable(title=f"Run {r.run_id}: {r.status}{seed}", title_justify="left")
    for col in ("", "predicted", "measured"):
        t.add_column(col, justify="right")
    t.add_row(
        "cost", f"{usd(p.cost_expected)} expected, {usd(p.cost_worst)} worst", usd(r.cost_usd)
    )
    slotted = f" ({p.latency_scheduled_s:.2f}s in its slots)" if p.slots_bind else ""
    t.add_row("latency", f"{p.latency_expected_s:.2f}s expected, {p.latency_critical_s:.2f}s "
              f"critical path{slotted}, {p.latency_worst_s:.2f}s worst", f"{r.latency_s:.2f}s")  # fmt: skip
    t.add_row("calls", f"{p.calls_expected:.2f} expected, {p.calls_worst} worst", str(r.calls))
    t.add_row("success", _pct(p.reliability), r.status)
    h = p.halting
    if h is not None and halt_assumptions(p):
        t.add_row("  stopping at a failure", f"{usd(h.cost_usd)}, {h.latency_s:.2f}s, "
                  f"{h.calls:.2f} calls on average ({_pct(h.failed)} fail)", "")  # fmt: skip
    if held is None and under is not None:
        held = under.held(p)
    for label, said in [] if held is None else under_budget_rows(held):
        t.add_row(label, said, "")
    if r.saved_usd:
        t.add_row("saved by stopping early", "", usd(r.saved_usd))
    st = FittedTable(box=None)
    for col in ("step", "status", "attempts", "cost", "output"):
        st.add_column(col, justify="right" if col in ("attempts", "cost") else "left")
    shown = _steps_shown(r.steps)
    for sid, s in r.steps.items():
        if sid not in shown:
            continue
        text = (s.output or s.error or "").replace("\n", " ")
        st.add_row(sid, s.status + (" (journal)" if s.from_journal else ""), str(s.attempts),
                   usd(s.cost_usd), clipped(text))  # fmt: skip
    parts: list[Table | Text] = [t, st]
    if len(shown) < len(r.steps):
        hidden = Counter(s.status for sid, s in r.steps.items() if sid not in shown)
        which = (f"all {next(iter(hidden))}" if len(hidden) == 1 else
                 ", ".join(f"{n:,} {status}" for status, n in hidden.most_common()))
        parts.append(Text(f"{counted(sum(hidden.values()), 'more step')} ({which}) not shown: "
                          f"trilemma report {short_id(r.run_id)}{journal_flag(r.journal)} lists "
                          "every one", style="dim"))  # fmt: skip
    if r.cut:
        parts.append(Text(cut_line(r.cut), style="yellow"))
    parts.extend(Text(line, style="yellow") for line in _budget_hints(r, under, spec, time_scale))
    return Group(*parts, Text(f"journal: {r.journal}\n{follow_up(r.run_id, r.journal)}",
                              style="dim"))  # fmt: skip


def under_budget_rows(u: Mapping[str, Any], moved: bool = False) -> list[tuple[str, str]]:
    """A run's success by the Monte Carlo under its ceiling and deadline, which the analytic
    success does not see, and the runs it has in time by less than the executor's own time
    (``u``: :meth:`~trilemma.plan.simulate.SimResult.held`), a row each; ``moved``: a
    resume gave the run other budgets since, so the rows say they are of those it began with.

    A resume's ``u`` has ``steps_left`` too (and ``ceiling_of_usd``, the whole run's ceiling):
    it is of the steps the resume had left, under what was left of the ceiling (its
    ``max_cost_usd``) and the deadline from the resume."""
    ceiling, left = u.get("max_cost_usd"), u.get("steps_left")
    if ceiling is not None and u.get("ceiling_of_usd") is not None:
        ceiling_said = f"{usd(ceiling)} left of the {usd(u['ceiling_of_usd'])} ceiling"
    else:
        ceiling_said = f"{usd(ceiling)} ceiling" if ceiling is not None else ""
    held = [ceiling_said, f"{u['deadline_s']:g}s deadline" if u.get("deadline_s") is not None else ""]
    which = "the budget it started with" if moved else "its budget"
    if left is not None:
        which = f"its budget, the {counted(left, 'step')} left"
    rows = [(f"  under {which}", f"{_pct(u['success_rate'])} (Monte Carlo, "
             f"{' and '.join(h for h in held if h)})")]  # fmt: skip
    near = u.get("near_deadline_rate")
    if near is not None and near >= NEAR_SHOWN:  # runs it has in time by a hair
        rows.append((f"  near {'the first' if moved else 'its'} deadline", f"{_pct(near)} of runs succeed less than "
                     f"{_room_words(u['deadline_headroom_s'])} before the deadline, {MAY_CROSS}"))  # fmt: skip
    return rows


_SHOWN_FIRST = {"failed": 0, "cancelled": 1, "skipped": 3, "done": 4}
"""The order a run's table takes steps in when it cannot show them all (others: 2)."""


def _steps_shown(steps: Mapping[str, Any], limit: int = STEPS_SHOWN) -> set[str]:
    """The steps a run's table shows: all when they fit, else what went wrong first (failed,
    then cancelled or cut), then what never ran, then the first done ones, ``limit`` in all."""
    if len(steps) <= limit:
        return set(steps)
    ranked = sorted(steps, key=lambda sid: _SHOWN_FIRST.get(steps[sid].status, 2))  # stable
    return set(ranked[:limit])


def _budget_hints(
    r: Any, under: SimResult | None, spec: str | None, time_scale: float = 1.0
) -> list[str]:
    """For a run its own ceiling or deadline stopped: the command that finds one under which
    most runs finish, and the resume that finishes this run under the planner's worst case
    (a run in simulated time, which is not resumed: the same run again under it)."""
    if under is None or spec is None:
        return []
    if r.status == "budget_exhausted" and under.max_cost_usd is not None:
        what, flag, resume = "ceiling", "--ceiling-for", f"--max-cost {_up(r.predicted.cost_worst)}"
    elif r.status == "deadline" and under.deadline_s is not None:
        what, flag, resume = "deadline", "--deadline-for", f"--deadline {_up(r.predicted.latency_worst_s)}"
    else:
        return []
    choose = (f"to choose a {what}: trilemma simulate {shlex.quote(spec)} {flag} 0.95 (the "
              "smallest under which 95% of runs finish)")  # fmt: skip
    if time_scale != 1:
        return [choose, f"to run it to the end: the same command with {resume} (the worst case; "
                        "a run in simulated time is run again, not resumed)"]  # fmt: skip
    again = f"trilemma resume {short_id(r.run_id)}{journal_flag(r.journal)} {resume}"
    return [choose, f"to finish this run: {again} (the worst case; the steps done are not run "
                    "again)"]  # fmt: skip


def _up(x: float, digits: int = 4) -> str:
    """``x`` to ``digits`` significant digits, rounded up (a bound it must not undercut)."""
    if x <= 0 or not math.isfinite(x):
        return f"{x:g}"
    scale = 10.0 ** (digits - 1 - math.floor(math.log10(x)))
    return f"{math.ceil(round(x * scale, 6)) / scale:g}"


def clipped(text: str, width: int = 70) -> str:
    """``text`` on one line of at most ``width`` characters, cut between words where it can
    ("past the $0.0450 ceiling" cut at a character read "past the $0...."), with "..."."""
    text = " ".join(text.split())
    if len(text) <= width:
        return text
    cut = text[: width - 3]
    space = cut.rfind(" ")
    return (cut[:space] if space > width // 2 else cut).rstrip(" ,;:") + "..."


def follow_up(run_id: str, journal: str) -> str:
    """The commands that read a run on."""
    short, flag = short_id(run_id), journal_flag(journal)
    return f"next: trilemma ledger {short}{flag} (every call), trilemma report {short}{flag} (a page)"


def short_id(run_id: str) -> str:
    """A run id's random hex end: enough to name the run on the command line, however many
    runs come after it."""
    return run_id.rsplit("-", 1)[-1]


def journal_flag(journal: str | Path) -> str:
    """``--journal PATH`` for a command reading ``journal``; nothing for the default one."""
    return "" if Path(journal) == DEFAULT_PATH else f" --journal {shlex.quote(str(journal))}"


def cut_line(cut: dict[str, int]) -> str:
    """The steps whose answers stopped at max_tokens, and what to do about it."""
    n = sum(cut.values())
    steps = ", ".join(f"{k} ({v})" if v > 1 else k for k, v in cut.items())
    return (f"{counted(n, 'answer')} stopped at max_tokens, the text cut where the "
            f"tokens ran out: {steps}; raise max_tokens on {'those steps' if len(cut) > 1 else 'that step'} "
            "(or the model's profile), or ask for shorter answers (`trilemma ledger` marks them)")


def limit_held(limit: Mapping[str, Any] | None) -> str:
    """A batch plan's ``limited_by``, said: "m's rpm 600 holds it" ("" where none does)."""
    return "" if limit is None else f"{limit['model']}'s {limit['limit']} {limit['value']:,} holds it"


def planned_rows(
    plan: dict[str, Any], n: int, parallel: int, budgets: dict[str, Any] | None = None,
    *, ran: int | None = None, kept_ok: int = 0,
) -> list[tuple[str, str]]:  # fmt: skip
    """The planner's figures for a batch of ``n`` lines (``predicted_json``), a row each;
    under a ceiling or a deadline, how many runs end ok within it (``budgets``: a session's
    plan, with ``runs_ok_within_ceiling``, ``runs_ok_by_deadline`` and
    ``runs_ok_within_budgets``) beside those ok at their end. A resumed session's budgets
    are of the ``ran`` lines it runs (default all ``n``): the ``kept_ok`` lines an earlier
    session ended ok count as ok within them, so that every count is of the ``n``."""
    cost, latency = plan["cost_usd"], plan["latency_s"]
    halts, each, shared = cost.get("halting"), latency.get("halting_per_run"), cost.get("replayed")
    halting = f" ({usd(halts)} as failed runs stop)" if well_under(halts, cost["expected"]) else ""
    if well_under(shared, cost["expected"]):
        halting = f" ({usd(shared)} as failed runs stop, their calls in the models' queues unsent)"
    stopped = (f"{each:.2f}s each as failed runs stop, "
               if well_under(each, latency["expected_per_run"]) else "")
    held = f"{said}; " if (said := limit_held(plan.get("limited_by"))) else ""
    return [
        ("cost", f"{usd(cost['expected'])} expected{halting}, {usd(cost['worst'])} worst"),
        ("runs ok", f"{plan['ok_lines']:.1f} of {n}" + (f" ({_pct(plan['ok_lines'] / n)})" if n else "")
                    + _ok_within(budgets or {}, plan["ok_lines"], kept_ok)),
        ("latency", f"{latency['batch']:.2f}s ({held}{parallel} at a time, {stopped}"
                    f"{latency['expected_per_run']:.2f}s expected each, "
                    f"{latency['critical_path_per_run']:.2f}s critical path)"
                    + stopped_at(budgets or {}, latency["batch"], n if ran is None else ran)),
        ("quality per dollar", qpd(plan["quality_per_dollar"])),
    ]  # fmt: skip


def batch_view(b: Any, shown: int = 10) -> Group:
    """A batch: predicted beside measured over its lines, then the lines that did not finish ok."""
    n = len(b.lines)
    ceiling = f" (ceiling {usd(b.max_cost_usd)})" if b.max_cost_usd is not None else ""
    measured = [usd(b.cost_usd) + ceiling, f"{b.count('ok')} of {n}", f"{b.latency_s:.2f}s",
                qpd(b.quality_per_dollar, b.count("ok") > 0)]  # fmt: skip
    t = FittedTable(title=f"{b.batch_id}: {n} runs, {b.status}", title_justify="left")
    for col in ("", "predicted", "measured"):
        t.add_column(col, justify="right")
    planned = b.planned()
    budgets = {**planned, "max_cost_usd": b.max_cost_usd, "deadline_s": b.deadline_s}
    ran = n if b.planned_time is None else b.planned_time.runs  # this session's
    kept = sum(1 for r in b.lines if r.from_journal and r.status == "ok")
    rows = planned_rows(planned, n, b.parallel, budgets, ran=ran, kept_ok=kept)
    for (label, row), got in zip(rows, measured, strict=True):
        t.add_row(label, row, got)
    if b.planned_time is not None:  # the runs its ceiling and deadline let end
        for label, said in budget_rows(budgets, ran):
            t.add_row(label, said, f"{b.ran_to_end()} of {ran} ended")
    counts = ", ".join(f"{b.count(s)} {s}" for s in
                       ("ok", "failed", "budget_exhausted", "deadline", "not_started") if b.count(s))  # fmt: skip
    earlier = sum(1 for r in b.lines if r.from_journal)
    if earlier:
        counts += f" ({earlier} ok in an earlier session, not run again)"
    parts: list[Any] = [t, Text(counts)]
    bad = [r for r in b.lines if r.status not in ("ok", "not_started")]
    if bad:
        lt = FittedTable(box=None)
        for col in ("line", "status", "run", "cost", "why"):
            lt.add_column(col, justify="right" if col in ("line", "cost") else "left")
        for r in bad[:shown]:
            why = (r.error or "").replace("\n", " ")
            lt.add_row(str(r.line), r.status, r.run_id or "", usd(r.cost_usd),
                       clipped(why))  # fmt: skip
        parts.append(lt)
        if len(bad) > shown:
            parts.append(Text(f"... and {len(bad) - shown} more (--json or --out lists every line)"))
    off, bad = b.off_plan()
    if off is not None or bad is not None:
        parts.append(Text(off_plan_line(off, bad, b.journal)))
    flag = journal_flag(b.journal)
    parts.append(Text(f"journal: {b.journal}\nnext: trilemma report {b.batch_id}{flag} (a page), "
                      f"trilemma runs --batch {b.batch_id}{flag} (its runs)", style="dim"))  # fmt: skip
    return Group(*parts)


def off_plan_line(cost: Figure | None, success: Figure | None, journal: str | Path) -> str:
    """Runs whose cost or success the plan does not explain (both weighed at once by
    :func:`~trilemma.plan.agreement.off_plan`): what they measured, and the command that finds
    the guess that is off (every model of the newest spec journaled: theirs)."""
    said = []
    if cost is not None:
        ratio = f" ({cost.measured / cost.profile:.2f}x)" if cost.profile > 0 else ""
        said.append(f"the runs cost {usd(cost.measured)} each against {usd(cost.profile)} "
                    f"planned{ratio}, more than chance explains (p = {cost.p_value:.2g})")  # fmt: skip
    if success is not None:
        runs = "them" if said else "the runs"
        said.append(f"{_pct(success.measured)} of {runs} ended ok against "
                    f"{_pct(success.profile)} planned, more than chance explains "
                    f"(p = {success.p_value:.2g})")  # fmt: skip
    line = "; ".join(said)
    return (f"{line[0].upper()}{line[1:]}: a guess of the spec is off. `trilemma calibrate "
            f"--from-journal {shlex.quote(str(journal))} --check` names those the ledger "
            "contradicts.")


def batch_plan_view(plan: dict[str, Any]) -> Table:
    """``trilemma batch --plan``: what the batch should cost and take, before it runs."""
    n = plan["lines"]
    t = FittedTable(title=f"Plan for {counted(n, 'run')}, {plan['parallel']} at a time (nothing sent)",
                    title_justify="left")  # fmt: skip
    t.add_column("")
    t.add_column("predicted", justify="right")
    for row in planned_rows(plan["predicted"], n, plan["parallel"], plan):
        t.add_row(*row)
    planned = plan["predicted"]["latency_s"]["batch"]
    for label, said in budget_rows(plan, n):
        if label == "deadline":  # and how long the batch takes, to set beside it
            said += (f" (about {planned:.2f}s)" if plan["runs_done_by_deadline"] >= n else
                     f"; the batch takes about {planned:.2f}s (--parallel or the deadline up for more)")  # fmt: skip
        t.add_row(label, said)
    shared = plan.get("shared_budget")
    if shared is not None:
        t.add_row(f"shared budget {shared['name']}",
                  f"{usd(shared['remaining_usd'])} left: {_pays(shared, n)}")  # fmt: skip
    return t


def budgets_cut(took: Any) -> str:
    """What a batch's ceiling and deadline leave of its runs by the planner (a
    :class:`~trilemma.run.batch.BatchTime`), for the line it starts with: nothing where
    neither cuts any run."""
    said = ""
    w = took.within
    if w is not None and w.ended < took.runs - 0.05:
        said += f"; the ceiling lets about {w.ended:.1f} of {took.runs} runs go to their end"
        if well_under(w.took_s, took.latency_s):
            said += f", stopping the batch at about {w.took_s:.2f}s"
    if took.in_time is not None and took.deadline_s > 0 and took.in_time < took.runs:
        said += f"; about {took.in_time} of {took.runs} end before the deadline"
    elif took.deadline_s is not None and took.deadline_s <= 0 and took.runs:  # a resumed batch's
        said += (f"; its deadline passed {-took.deadline_s:.2f}s ago, so no line starts "
                 "(--deadline SECONDS gives a new one)")  # fmt: skip
    return said


def ceiling_stop_s(plan: Mapping[str, Any], n: int) -> float | None:
    """When a batch's plan has its ceiling stop it (``latency_within_ceiling_s``), where the
    ceiling stops some of its ``n`` runs; else None."""
    took, ended = plan.get("latency_within_ceiling_s"), plan.get("runs_ended_within_ceiling")
    return None if took is None or ended is None or ended >= n - 0.05 else float(took)


def _stops(budgets: Mapping[str, Any], planned_s: float, n: int) -> tuple[float | None, float | None]:
    """When a batch's ceiling stops it (:func:`ceiling_stop_s` of ``budgets``, a session's
    plan), where that is well before the ``planned_s`` of all ``n`` runs, and when its
    deadline ends it, where it cuts runs before that end (it cancels what is in flight);
    None for either that does not."""
    took = ceiling_stop_s(budgets, n)
    took = took if took is not None and well_under(took, planned_s) else None
    end = planned_s if took is None else took
    deadline, in_time = budgets.get("deadline_s"), budgets.get("runs_done_by_deadline")
    cut = deadline is not None and 0 < deadline < end and in_time is not None and in_time < n
    return took, deadline if cut else None


def stopped_at(budgets: Mapping[str, Any], planned_s: float, n: int) -> str:
    """``; about X s as the ceiling stops it`` and ``, Y s as the deadline does``, where
    they end a batch before the ``planned_s`` of all ``n`` runs (:func:`_stops`); else
    empty."""
    took, cut = _stops(budgets, planned_s, n)
    said = "" if took is None else f"; about {took:.2f}s as the ceiling stops it"
    if cut is not None:
        said += f", {cut:.2f}s as the deadline does" if said else f"; {cut:.2f}s as the deadline stops it"
    return said


def planned_end(budgets: Mapping[str, Any], n: int) -> float:
    """When a batch's plan (``budgets``, a session's) has its ``n`` runs end: as its
    deadline or its ceiling stops it, else after every one (:func:`_stops`)."""
    planned_s = float(budgets["latency_s"]["batch"])
    took, cut = _stops(budgets, planned_s, n)
    return cut if cut is not None else took if took is not None else planned_s


def _ok_within(budgets: dict[str, Any], ok_lines: float, kept_ok: int = 0) -> str:
    """The runs ok within a batch's ceiling and before its deadline, after those ok at their
    end, where either cuts some; where both do, the runs ok within both. ``kept_ok``: lines
    an earlier session ended ok, which the session's budgets do not stop."""
    said = []
    for key, where in (("runs_ok_within_ceiling", "within the ceiling"),
                       ("runs_ok_by_deadline", "before the deadline")):  # fmt: skip
        ok = budgets.get(key)
        if ok is not None and ok + kept_ok < ok_lines - 0.05:
            said.append(f"; {ok + kept_ok:.1f} of them {where}")
    if len(said) == 2 and (both := budgets.get("runs_ok_within_budgets")) is not None:
        said.append(f"; {both + kept_ok:.1f} within both")
    return "".join(said)


def budget_rows(plan: Mapping[str, Any], n: int) -> list[tuple[str, str]]:
    """A batch's ceiling and deadline rows by the planner, for ``n`` runs of a session
    (``plan``: its plan, with ``max_cost_usd`` and ``deadline_s``, from the session's
    start): how many runs each lets end."""
    rows = []
    if plan.get("max_cost_usd") is not None:
        rows.append(("ceiling", f"{usd(plan['max_cost_usd'])}: {_pays(plan, n)}"))
    deadline = plan.get("deadline_s")
    if deadline is not None:
        rows.append(("deadline", f"{round(deadline, 2):g}s: " + _in_time(
            plan["runs_done_by_deadline"], plan["runs_near_deadline"], n, plan["deadline_headroom_s"])
            if deadline > 0 else  # a resumed batch's, passed: --deadline gives a new one
            f"passed {-deadline:.2f}s before this session (--deadline SECONDS gives a new one)"))  # fmt: skip
    return rows


def _pays(plan: Mapping[str, Any], n: int) -> str:
    """How many of a batch's ``n`` runs a ceiling pays for at their worst
    (``runs_covered_at_worst`` in ``plan``, a batch's plan or its shared budget's), in words,
    after how many go to their end within it on average (``runs_ended_within_ceiling``)."""
    covered, ended = plan["runs_covered_at_worst"], plan.get("runs_ended_within_ceiling")
    if covered is None:
        return "no run can cost anything"
    worst = f"pays for {covered} of {n} runs even at their worst"
    if ended is None or covered >= n:
        return worst
    return f"about {ended:.1f} of {n} runs go to their end within it; it {worst}"


def _in_time(done: int, near: int | None, n: int, headroom_s: float) -> str:
    """A batch's ``done`` of ``n`` runs that end before its deadline by the planner, and the
    ``near`` of them that end less than ``headroom_s`` (the executor's own time) before it."""
    said = "every run ends before it" if done >= n else f"about {done} of {n} runs end before it"
    if near:
        said += f", {near} of them less than {_room_words(headroom_s)} before it, {MAY_CROSS}"
    return said


def runs_table(rows: list[dict[str, Any]], total: int | None = None) -> Table:
    """``trilemma runs``: ``rows``, the newest of ``total`` (the seed: ``trilemma run SPEC
    --seed N`` draws a run's faults again)."""
    total = len(rows) if total is None else total
    title = f"{counted(total, 'run')}, newest first"
    if total > len(rows):
        title += f" (the newest {len(rows):,} shown: --limit N for more, --json for every run)"
    t = FittedTable(title=title, title_justify="left")
    gone = {r["run_id"] for r in rows if abandoned(r)}
    if gone:
        t.caption = ("interrupted: stopped before it ended (a crash, a kill, Ctrl-C, its task "
                     "cancelled); `trilemma resume ID` finishes it, `trilemma doctor` lists them")  # fmt: skip
    tenants = any(r.get("tenant") for r in rows)  # a column only when some run has one
    for col in ("run_id", "status", "started_at", "cost", "calls", "seed", "spec",
                *["tenant"] * tenants):  # fmt: skip
        t.add_column(col, no_wrap=col == "run_id",  # an id to copy whole, never folded
                     justify="right" if col in ("cost", "calls", "seed") else "left")
    for r in rows:
        when = dt.datetime.fromtimestamp(r["started_at"], dt.UTC).strftime("%Y-%m-%d %H:%M:%S")
        seed = "" if r.get("seed") is None else str(r["seed"])
        status = "interrupted" if r["run_id"] in gone else r["status"]
        cells = [r["run_id"], status, when, usd(r["cost_usd"]), str(r["calls"]), seed,
                 spec_of(r)]  # fmt: skip
        t.add_row(*cells, *[r.get("tenant") or ""] * tenants)
    return t


def spec_of(run: Mapping[str, Any]) -> str:
    """A run's spec as given: its file, and the ``--set`` it was run with."""
    return " ".join(filter(None, [run["spec_source"], set_flags(overrides_of(run))]))


LEDGER_KEYS = ("step", "attempt", "call", "role", "model", "prompt_tokens", "completion_tokens",
               "cached_tokens", "cost_usd", "latency_s", "outcome", "finish_reason", "cache_hit",
               "cache_similarity", "in_flight", "idempotency_key", "error")  # fmt: skip


def ledger_row(r: dict[str, Any]) -> dict[str, Any]:
    """A journal ``calls`` row as the ledger shows it."""
    in_flight = r["state"] == "started"
    return {
        "step": r["step_id"], "attempt": r["attempt"], "call": r["call"], "role": r["role"],
        "model": r["model"], "prompt_tokens": r["prompt_tokens"],
        "completion_tokens": r["completion_tokens"], "cached_tokens": r["cached_tokens"],
        "cost_usd": r["cost_usd"],
        "latency_s": r["latency_s"], "outcome": call_outcome(r),
        "cache_hit": bool(r["cache_hit"]), "cache_similarity": r["cache_similarity"],
        "in_flight": in_flight, "finish_reason": r["finish_reason"],
        "idempotency_key": r["idempotency_key"], "error": r["error"],
    }  # fmt: skip


#: The ledger's columns of words; its figures are right-aligned, as in every other table.
TEXT_COLUMNS = ("step", "role", "model", "outcome")


def ledger_table(
    run_id: str, rows: list[dict[str, Any]], time_scale: float = 1.0,
    only: Mapping[str, Sequence[str]] | None = None, pruned: tuple[int, float] | None = None,
    live: bool = False, ended: str | None = None,
) -> Table:  # fmt: skip
    """``trilemma ledger``: its calls, and under them what they were billed and how they
    ended (``time_scale``: the run's, journaled; below 1 the caption says so; ``only``: the
    filters the rows passed, by field, named in the title; ``pruned``: the calls and the
    bill of them that ``trilemma prune`` forgot; ``live``: the run is going on now, so a
    call in flight is waiting for its answer, not left so by a crash; ``ended``: how the run
    ended, said under a ledger of no call)."""
    from trilemma.providers.base import CUT, UNREPORTED

    kept = "; ".join(f"{k} {', '.join(v)}" for k, v in (only or {}).items() if v)
    t = FittedTable(title=f"Ledger of {run_id}: {counted(len(rows), 'call')}"
                    + (f" ({kept})" if kept else ""),
                    title_justify="left")  # fmt: skip
    notes = [ledger_totals(rows)] if rows else []
    if not rows and pruned is None:  # an empty table alone reads as a failure to read
        notes.append("no call matches these filters" if kept else
                     "the run has sent no call yet" if live else
                     "the run sent no call" + (f"; it ended {ended}" if ended else ""))  # fmt: skip
    if pruned is not None:
        notes.append(f"{'and ' if rows else ''}{counted(pruned[0], 'older call')}, billed "
                     f"{usd(pruned[1])}, that "
                     "`trilemma prune` forgot (the run's spend still counts them)")  # fmt: skip
    if time_scale == 0:
        notes.append("simulated time ran on a virtual clock (compare, sweep or run "
                     "--time-scale): latencies are the spec's own, each wait ended when "
                     "due")  # fmt: skip
    elif time_scale != 1:
        notes.append(f"simulated time ran {1 / time_scale:g}x faster (compare, sweep or run "
                     f"--time-scale): latencies are {time_scale:g} of the spec's own")  # fmt: skip
    t.caption = "\n".join(notes) or None
    for col in ("step", "attempt", "role", "model", "tokens in", "tokens out", "cost", "latency",
                "outcome"):  # fmt: skip
        t.add_column(col, justify="left" if col in TEXT_COLUMNS else "right")
    for r in rows:
        similarity = r["cache_similarity"]
        if similarity is not None:
            outcome = f"{r['outcome']} (cache, similarity {similarity:.3f})"
        else:
            outcome = r["outcome"] + (" (cache)" if r["cache_hit"] else "")
        if r["finish_reason"] == CUT:
            outcome += ", cut at max_tokens"
        if r["outcome"] in ("ok", "rejected") and (r["error"] or "").startswith(UNREPORTED):
            outcome += ", no usage: billed at its reservation"
        why = rejection(r)  # the gate's reason
        if why is not None:
            outcome += ": " + clipped(why, 60)
        if r["in_flight"]:
            outcome = "in flight" if live else "IN FLIGHT at crash: may be billed"
        elif r["outcome"] == "answered":
            outcome = "answered, its attempt cut short: billed; a resume uses it"
        tokens_in = str(r["prompt_tokens"] or "-")
        if r["cached_tokens"]:  # served from the endpoint's prompt cache, billed lower
            tokens_in += f" ({r['cached_tokens']} cached)"
        t.add_row(r["step"], str(r["attempt"]), r["role"], r["model"], tokens_in,
                  str(r["completion_tokens"] or "-"), usd(r["cost_usd"]),
                  "-" if r["latency_s"] is None else f"{r['latency_s']:.3f}s", outcome)  # fmt: skip
    return t


def ledger_totals(rows: Sequence[Mapping[str, Any]]) -> str:
    """What ledger rows were billed, and how many ended each way, most first (ties in the
    order of :data:`~trilemma.journal.store.OUTCOMES`, ok first).

    >>> ledger_totals([{"cost_usd": None, "outcome": "transient"},
    ...                {"cost_usd": 0.01, "outcome": "ok"}])
    'billed $0.0100; 1 ok, 1 transient'
    """
    ends = Counter(r["outcome"] for r in rows)
    billed = math.fsum(r["cost_usd"] for r in rows if r["cost_usd"] is not None)
    rank = {o: i for i, o in enumerate(OUTCOMES)}
    ordered = sorted(ends.items(), key=lambda e: (-e[1], rank.get(e[0], len(rank))))
    return f"billed {usd(billed)}; " + ", ".join(f"{n} {o}" for o, n in ordered)


def cliff_table(points: Sequence[Any], model: str) -> Table:
    """``trilemma cliff``: predicted beside measured, per chain length."""
    t = FittedTable(
        title=f"Reliability cliff of {model}: predicted beside measured", title_justify="left"
    )
    for col in ("steps", "runs", "success predicted", "success measured [95%]", "cost pred.",
                "cost meas.", "latency pred.", "latency meas."):  # fmt: skip
        t.add_column(col, justify="right")
    for p in points:
        d = p.to_json()
        t.add_row(str(p.steps), str(p.runs), _pct(p.predicted),
                  _with_ci(p.measured, d["measured_ci95"]),
                  f"${p.cost_predicted:.3g}", f"${p.cost_measured:.3g}",  # three figures, as
                  f"{p.latency_predicted:.3g}s", f"{p.latency_measured:.3g}s")  # a 1 ms chain: 0.005s  # fmt: skip
    return t


def ticket_table(a: TicketAnswer) -> Group:
    """Exercise 32.10.1."""
    e = a.estimate
    head = Text(
        f"Per ticket: {e.calls_book} calls without retries, {e.calls_worst} in the worst case; "
        f"{usd(e.cost_book)} by the book formula, {usd(e.cost_expected)} expected, "
        f"{usd(e.cost_worst)} worst.\nAt {a.tickets_per_day:,} tickets a day: "
        f"{usd(e.cost_worst * a.tickets_per_day)} worst, {usd(e.cost_expected * a.tickets_per_day)}"
        f" expected, {usd(e.cost_book * a.tickets_per_day)} by the book."
    )
    t = FittedTable(title="One lever at a time (worst case)", title_justify="left")
    for col in ("lever", "calls", "daily spend", "reliability"):
        t.add_column(col, justify="left" if col == "lever" else "right")
    for lv in a.levers:
        t.add_row(lv.lever, str(lv.calls_worst), usd(lv.daily_usd_worst), _pct(lv.reliability))
    debate_calls = sum(s.calls_worst for s in e.per_step if s.calls > 1)
    tail = Text(
        f"The two debates make {debate_calls} of the {e.calls_worst} worst-case calls, so "
        f"cutting them is the first lever: '{a.levers[0].lever}'."
    )
    return Group(head, t, tail)


def routing_table(r: RoutingSweep) -> Group:
    """Exercise 32.10.2."""
    t = FittedTable(title=f"Routing sweep over {r.steps} sequential steps", title_justify="left")
    for col in ("hard", "cost", "latency", "reliability", "q/$", "premium q/$"):
        t.add_column(col, justify="right")
    base = r.baseline
    for p in r.points:
        e = p.routed
        t.add_row(f"{p.hard_fraction:.2f}", usd(e.cost_book), f"{e.latency_critical_s:.1f}s",
                  _pct(e.reliability), qpd(e.quality_per_dollar),
                  qpd(base.quality_per_dollar))  # fmt: skip
    ro = r.router
    t.caption = (
        f"router: ${ro['usd_per_step']} and {ro['latency_s_per_step']}s per step, misroute rate "
        f"{ro['misroute_rate']}, small model's p on hard steps {ro['p_small_on_hard']}"
    )
    if r.crossover is None:
        verdict = (
            "Routing never loses on quality per dollar here: the crossover needs a router "
            "that costs, misroutes, or a small model worse on hard steps."
        )
    else:
        verdict = f"Crossover: past a hard fraction of {r.crossover:.3f}, routing loses on q/$."
    return Group(t, Text(verdict))


def debate_table(d: DebateVsRetry) -> Group:
    """Exercise 32.10.3."""
    t = FittedTable(title="The critical step of a 10-step chain", title_justify="left")
    for col in ("option", "reliability", "latency", "expected", "worst", "calls worst"):
        t.add_column(col, justify="left" if col == "option" else "right")
    for o in d.options:
        e = o.estimate
        t.add_row(o.name, _pct(e.reliability), f"{e.latency_critical_s:.2f}s",
                  f"{e.latency_expected_s:.2f}s", f"{e.latency_worst_s:.2f}s", str(e.calls_worst))  # fmt: skip
    lines = ["Recommendation by latency budget (worst case binds):"]
    lines += [f"  from {b:.2f}s: {n}" for b, n in d.flips_worst]
    lines.append("If the budget binds expected latency instead:")
    lines += [f"  from {b:.2f}s: {n}" for b, n in d.flips_expected]
    return Group(t, Text("\n".join(lines)))


def sweep_table(sw: Sweep, source: str, overrides: Sequence[str] = ()) -> Group:
    """A budget sweep: each budget beside the baseline that ignores budgets (of ``source``
    loaded with ``overrides``, ``--set``, which a command it advises carries)."""
    p, base = sw.predicted, sw.baseline
    t = FittedTable(title=f"Budget sweep of {source}, {base.runs:,} runs per budget",
                    title_justify="left")  # fmt: skip
    simulated = any(r.predicted_success is not None for r in sw.rows)
    for col in ("budget", "success", *(["predicted"] if simulated else []), "stopped", "spend mean",
                *(["predicted"] if simulated else []), "spend max", "outputs back",
                "latency mean", "baseline over", "baseline ok within"):  # fmt: skip
        t.add_column(col, justify="left" if col == "budget" else "right",
                     no_wrap=col == "budget")  # fmt: skip
    for r in (base, *sw.rows):
        predicted = "-" if r.predicted_success is None else _pct(r.predicted_success)
        spend = "-" if r.predicted_cost is None else usd(r.predicted_cost)
        t.add_row(
            r.budget.label() if r is not base else "baseline",
            _pct(r.success_rate), *([predicted] if simulated else []),
            str(r.stopped), usd(r.cost_mean), *([spend] if simulated else []), usd(r.cost_max),
            _pct(r.steps_returned), f"{r.latency_mean_s:.2f}s",
            "-" if r is base else _pct(r.baseline_over / r.runs),
            "-" if r is base else _pct(r.baseline_ok_within / r.runs),
        )  # fmt: skip
    t.caption = (
        f"planner: {usd(p.cost_expected)} expected, {usd(p.cost_worst)} worst; "
        f"{p.latency_critical_s:.2f}s critical path; reliability {_pct(p.reliability)}"
    )
    if simulated:
        t.caption += ("; predicted: the Monte Carlo's success and mean spend under the budget, "
                      "which stops a run as the executor does")  # fmt: skip
    over = sum(r.overruns for r in sw.rows)
    lines = [
        f"Spend over a ceiling: {over} of {base.runs * len(sw.rows):,} budgeted runs"
        + (" (the executor reserves each call's worst case first)." if over == 0 else "!")
    ]
    widest = max((hi - lo) / 2.0 for lo, hi in (r.ci95 for r in (base, *sw.rows)))
    lines.append(f"Success is measured to within +-{widest:.1%} ({base.runs:,} runs a budget, "
                 "95%, the widest row): rows closer than that are not told apart; more --runs "
                 "narrow it.")  # fmt: skip
    lines += _tight_deadlines(sw, source, overrides)
    lines += _together(sw.parallel, "" if sw.limited else None)
    lines += scaled_lines(sw.time_scale)
    return Group(t, Text("\n".join(lines)))


NEAR_SHOWN = 0.01
"""A deadline is named under a sweep's or a compare's table where at least this share of
the runs the Monte Carlo has succeed in time end within the executor's own time of it
(:func:`~trilemma.plan.simulate.near_deadline`)."""


def _tight_deadlines(sw: Sweep, source: str, overrides: Sequence[str]) -> list[str]:
    """A line naming the deadlines of ``sw`` under which the Monte Carlo has runs in time
    by less than the executor's own time (:data:`NEAR_SHOWN`)."""
    near = [(r.budget.label(), r.predicted_near) for r in sw.rows
            if r.predicted_near is not None and r.predicted_near >= NEAR_SHOWN]  # fmt: skip
    if not near:
        return []
    labels = _and([label for label, _ in near])
    said = _near_words(_and([_pct(share) for _, share in near]), sw.predicted, sw.time_scale)
    return [f"{labels}: {said} " + _no_room(source, overrides)]


MAY_CROSS = "which the executor's own time may cross"
"""What follows the runs a planner has in time by a hair, in a row or a caption."""


def _near_words(shares: str, e: Estimate, time_scale: float = 1.0) -> str:
    """``shares`` (a share of runs, or several) that succeed within the executor's own time
    of the deadline (:func:`~trilemma.plan.simulate.deadline_headroom`, of runs at
    ``time_scale``), in words."""
    from trilemma.plan.simulate import deadline_headroom

    room = _room_words(deadline_headroom(e, time_scale))
    return f"{shares} of runs succeed less than {room} before the deadline"


def _room_words(seconds: float) -> str:
    """The executor's own time before a deadline, in words: 30 ms; 3 s (at --time-scale 0.01)."""
    return f"{seconds * 1000:.0f} ms" if seconds < 1 else f"{seconds:.3g} s"


def _near(sim: SimResult, e: Estimate | None, time_scale: float = 1.0) -> str | None:
    """:func:`_near_words` of the share of the Monte Carlo ``sim``'s runs it has in time by
    less than the executor's own time (:func:`~trilemma.plan.simulate.near_deadline`; ``e``:
    the spec's estimate, ``time_scale`` the runs'), where that is
    :data:`NEAR_SHOWN` or more; else None."""
    from trilemma.plan.simulate import near_deadline

    share = None if e is None else near_deadline(sim, e, time_scale)
    if e is None or share is None or share < NEAR_SHOWN:
        return None
    return _near_words(_pct(share), e, time_scale)


def _and(items: Sequence[str]) -> str:
    """``a``, ``a and b``, ``a, b and c``."""
    return items[0] if len(items) == 1 else f"{', '.join(items[:-1])} and {items[-1]}"


def _no_room(source: str, overrides: Sequence[str]) -> str:
    """What follows a share of runs the Monte Carlo has in time by a hair (see
    :data:`NEAR_SHOWN`)."""
    command = " ".join(filter(None, ["trilemma simulate", shlex.quote(source), set_flags(overrides),
                                     "--deadline-for 0.95"]))  # fmt: skip
    return ("by the Monte Carlo, which counts the spec's time alone: the executor's own time "
            f"may cut them; {command} advises one with room.")


def compare_table(
    rows: Sequence[Contender], time_scale: float, journal: str | Path = DEFAULT_PATH,
    overrides: Sequence[str] = (),
) -> Group:  # fmt: skip
    """Workflows side by side: measured beside predicted, and the best quality per dollar.

    ``journal``: where the runs are, for the command a line under the table names;
    ``overrides``: the ``--set`` every spec was loaded with, which a command it advises carries.
    """
    runs = rows[0].runs
    short, folder = _short_names([r.name for r in rows])
    t = FittedTable(title=f"Measured over {runs:,} runs each, beside the planner",
                    title_justify="left")  # fmt: skip
    for col in ("spec", "success", "predicted", "cost", "predicted ", "latency", "predicted  ",
                "calls", "q/$", "predicted q/$"):  # fmt: skip
        t.add_column(col.strip(), justify="left" if col == "spec" else "right")
    for r in rows:
        sim, mark = r.simulated, " *" if r.budgeted else ""
        success, cost, latency = sim.success_rate, sim.cost_usd.mean, sim.latency_s.mean
        t.add_row(
            short[r.name], _with_ci(r.success_rate, r.ci95), _pct(success) + mark,
            usd(r.cost_mean), usd(cost) + mark, f"{r.latency_mean_s:.2f}s",
            f"{latency:.2f}s" + mark, f"{r.calls_mean:.2f}", qpd(r.quality_per_dollar, r.ok > 0),
            qpd(success / cost if cost > 0 else None) + mark,
        )  # fmt: skip
    t.caption = (f"predicted: Monte Carlo of {rows[0].simulated.runs:,} runs (success, mean "
                 "cost and latency, q/$ per mean dollar; a failed run halts as the executor's "
                 "does)")  # fmt: skip
    if any(r.budgeted for r in rows):
        t.caption += ("; * under the spec's budget, which stops a run as the executor does "
                      "(it fails)")  # fmt: skip
    if folder is not None:
        t.caption = f"specs in {folder}\n{t.caption}"
    lines = [
        f"{short[r.name]}: {r.stopped} of {r.runs} runs stopped by the spec's own budget, which its "
        f"worst case ({usd(r.predicted.cost_worst)}, {r.predicted.latency_worst_s:.2f}s) "
        "does not fit."
        for r in rows
        if r.stopped
    ]
    lines += [f"{short[r.name]}: under its {r.simulated.deadline_s:g}s deadline, {near} "
              + _no_room(r.name, overrides) for r in rows
              if (near := _near(r.simulated, r.predicted, r.time_scale)) is not None]  # fmt: skip
    # On the simulator the runs draw from the spec's own figures: a miss there is chance.
    lines += [_off_prediction(r, journal) for r in rows
              if (r.off_prediction or r.cost_off_prediction) and r.endpoints]  # fmt: skip
    scored = [r for r in rows if r.quality_per_dollar is not None]
    if len(scored) > 1:
        ranked = sorted(scored, key=lambda r: -(r.quality_per_dollar or 0.0))
        best, second = ranked[0], ranked[1]
        ratio = (best.quality_per_dollar or 0.0) / (second.quality_per_dollar or 1.0)
        line = f"Best quality per dollar: {short[best.name]}, {ratio:.1f}x {short[second.name]}"
        qb, qs = best.quality_per_dollar_ci95, second.quality_per_dollar_ci95
        if qb is not None and qs is not None and qb[0] <= qs[1]:
            line += (f"; but {runs:,} runs each do not rank the two: their q/$ 95% intervals "
                     f"overlap ({qb[0]:.1f}-{qb[1]:.1f} against "
                     f"{qs[0]:.1f}-{qs[1]:.1f}; more --runs narrow them)")  # fmt: skip
        lines.append(line + ".")
        # the best q/$ measured as reliable as any: no other to name; of several as reliable
        # as each other, the cheapest (the first in the table where their costs are equal)
        top = max(r.success_rate for r in rows)
        tied = [r for r in rows if r.success_rate == top]
        if best.success_rate < top:
            surest = min(tied, key=lambda r: r.cost_mean)
            line = (f"Most reliable: {short[surest.name]} ({_pct(surest.success_rate)} against "
                    f"{_pct(best.success_rate)}), at {usd(surest.cost_mean)} a run")  # fmt: skip
            if len(tied) > 1:
                line += f", the cheapest of the {len(tied)} that measured {_pct(top)}"
            if surest.ci95[0] <= best.ci95[1]:  # what the runs measured does not separate them
                line += (f"; but {runs:,} runs each do not tell the two apart (their 95% "
                         f"intervals overlap). {_to_tell_apart(surest, best)}")  # fmt: skip
            lines.append(line + ".")
    limited = [short[r.name] for r in rows if r.limited]
    lines += _together(rows[0].parallel, f" ({', '.join(limited)})" if limited else None)
    lines += scaled_lines(time_scale)
    return Group(t, Text("\n".join(lines)))


def _short_names(names: Sequence[str]) -> tuple[dict[str, str], str | None]:
    """Spec paths by their file names when they all sit in one folder other than the current
    one (which a table's caption then names), else as given: an absolute path in a narrow
    column folds in mid-name.

    >>> _short_names(["/w/examples/single.yaml", "/w/examples/debate.yaml"])
    ({'/w/examples/single.yaml': 'single.yaml', '/w/examples/debate.yaml': 'debate.yaml'}, '/w/examples')
    >>> _short_names(["single.yaml", "/w/debate.yaml"])[1] is None
    True
    """
    folders = {str(Path(n).parent) for n in names}
    files = {Path(n).name for n in names}
    if len(folders) != 1 or folders == {"."} or len(files) != len(set(names)):
        return {n: n for n in names}, None
    return {n: Path(n).name for n in names}, folders.pop()


def _off_prediction(r: Contender, journal: str | Path) -> str:
    """A spec on real endpoints whose measured success or cost the prediction misses: what
    to do."""
    said = []
    if r.off_prediction:
        said.append(f"measured success {_with_ci(r.success_rate, r.ci95)} is {r.off_prediction} "
                    f"the planner's {_pct(r.simulated.success_rate)}, more than chance "
                    "explains")  # fmt: skip
    if r.cost_off_prediction:
        planned = r.simulated.cost_usd.mean
        ratio = f" ({r.cost_mean / planned:.2f}x)" if planned > 0 else ""
        said.append(f"the runs cost {usd(r.cost_mean)} each against {usd(planned)} planned{ratio}, "
                    "more than chance explains")  # fmt: skip
    sets = "".join(f" --set {shlex.quote(s)}" for s in r.overrides)
    return (f"{r.name}: {'; '.join(said)}: the spec's figures for {', '.join(r.endpoints)} are "
            f"off; `trilemma calibrate --from-journal {shlex.quote(str(journal))} --spec "
            f"{shlex.quote(r.name)}{sets} --check` names those the ledger contradicts.")  # fmt: skip


def _to_tell_apart(a: Contender, b: Contender) -> str:
    """How many runs would rank ``a``'s and ``b``'s success, by the planner's figures."""
    pa, pb = a.simulated.success_rate, b.simulated.success_rate
    n = a.runs_against(b)
    if n is None:
        return f"The planner predicts the two alike ({_pct(pa)})"
    return (f"The planner's {_pct(pa)} and {_pct(pb)} take about {n:,} runs each to tell "
            "apart (--runs; 95% confidence, 80% power)")


def bill_line(name: str, bill: Bill) -> str:
    """What an experiment's runs on real endpoints will bill, said before they start."""
    cap = "" if bill.ceiling_usd is None else f"; their ceilings hold them under {usd(bill.ceiling_usd)}"
    return (f"{name}: {counted(bill.runs, 'run')} on real endpoints ({', '.join(bill.endpoints)}) "
            f"bill about {usd(bill.expected_usd)} by the planner, {usd(bill.worst_usd)} in its "
            f"worst case{cap}; Ctrl-C stops them, keeping the runs that ended")  # fmt: skip


def _together(parallel: int, limited: str | None) -> list[str]:
    """The line of an experiment whose runs went ``parallel`` at a time (none for one at a
    time); ``limited``: said after "held for them together" where models have limits (None:
    none has)."""
    if parallel == 1:
        return []
    shared = ("" if limited is None else f"; the models' limits held for them together{limited}, "
              "so a run's latency includes its waits on the others' calls")  # fmt: skip
    return [f"Runs went {parallel} at a time, each under its own budget{shared}."]


def scaled_lines(time_scale: float) -> list[str]:
    """The line a run or an experiment in scaled time ends with (none in real time)."""
    if time_scale == 1:
        return []
    if time_scale == 0:
        return ["Simulated time ran on a virtual clock: every wait took no real time and ended "
                "when due, so latencies are the spec's own plus the executor's overhead."]
    return [f"Simulated time ran {1 / time_scale:g}x faster and is reported unscaled; timer "
            "slack and the executor's overhead are scaled up with it."]  # fmt: skip


def cache_table(journal: str, rows: list[dict[str, Any]]) -> Table:
    """``trilemma cache stats``."""
    t = FittedTable(title=f"Cache of {journal}", title_justify="left")
    for col in ("model", "answers", "with embeddings", "hits served", "semantic hits",
                "oldest", "newest"):  # fmt: skip
        t.add_column(col, justify="left" if col in ("model", "oldest", "newest") else "right")
    for r in rows:
        t.add_row(r["model"], str(r["entries"]), str(r["semantic_entries"]), str(r["hits"]),
                  str(r["semantic_hits"]), _day(r["oldest"]), _day(r["newest"]))  # fmt: skip
    if not rows:
        t.caption = "empty: steps with `cached:` fill it as they run"
    return t


def _day(epoch: float | None) -> str:
    if epoch is None:
        return "-"
    return dt.datetime.fromtimestamp(epoch, dt.UTC).strftime("%Y-%m-%d %H:%M")


def _models_cell(s: Any) -> str:
    """A step's model, a cascade's ladder (a > b), or a router and its branches (a: easy|hard)."""
    if s.routes:
        return f"{s.model} routes {'|'.join(s.routes)}"
    return " > ".join(s.models or (s.model,))


def _cached_note(hit_rate: float) -> str:
    """How a step's model cell says it is planned as cached."""
    if hit_rate >= 1.0:
        return " (cached)"
    return f" (cached {hit_rate:.0%})" if hit_rate > 0.0 else ""
