"""A model profile fitted to the ledger: what the journal measured of a model, for the planner.

The planner is only as good as its profiles. :mod:`trilemma.experiments.calibrate` measures a
model on a task suite; this reads what real runs already paid for. Every call journaled under
a profile's name counts, from any run, but where the profile is a real endpoint's: then only
the runs whose spec has the name answered by the same endpoint and model (a gateway's too)
(:meth:`JournalCache.served`; a name moved to another model or URL, or simulated while a spec
was drafted, is another model):

- ``latency_s``: the mean latency of its answered calls, and ``latency_jitter``: the standard
  deviation of their log-latencies (the simulator's lognormal sigma);
- ``p_ok``: of its single-call attempts (``role: call``, a routed step's branch included)
  that got an answer, the share the gate (or the simulator's check) accepted, with a Wilson
  interval; a step without a gate accepts every answer, so only gated steps tell;
- ``faults``: of its calls sent, the share that failed transient, rate limited or timed out;
  the profile written for the planner leaves out the timeouts its fitted latency already
  explains (the planner counts a call slower than ``timeout_s`` as one), so that planned
  and measured shares agree;
- ``prompt_tokens`` and ``completion_tokens``: the means the endpoint reported (written
  into a profile with token prices only). An answer that stopped at ``max_tokens``
  (``finish_reason`` length) reports the cap, not the length it would have had: the share
  of such answers is reported beside the mean, which is what the calls cost under that cap
  and less than they would generate under a higher one.

A model that classifies for routed steps (a step whose ``model`` it is, with ``route:``) is
fitted there too (:func:`fit_routes`): each branch's ``share`` that gives the classifier's
decisions the ledger holds (its ``route: LABEL`` rows), with their Wilson interval; and so
is each cached step it answers (:func:`fit_cached`): the share of runs the cache served; and
each step (or branch) on it whose attempt is more than one call, or that has a ``p_ok`` of its
own (:func:`fit_steps`): the share of its judged attempts accepted.

Cache hits, calls never sent and a hedge's cancelled copies are left out. Runs made in scaled
time (``compare`` and ``sweep`` on the simulator) journal their time scale, and their latencies
are read back in the spec's own time.
"""

from __future__ import annotations

import json
import math
import statistics
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from trilemma._format import counted
from trilemma.errors import UsageError
from trilemma.journal import Journal
from trilemma.journal.store import GATEWAY_RUN
from trilemma.plan.agreement import (
    ALPHA,
    Figure,
    binomial_p,
    judge,
    judge_together,
    mean_figure,
    mean_interval,
    share_figure,
    weighed,
    wilson,
)
from trilemma.plan.hedge import cut
from trilemma.providers.base import CUT
from trilemma.spec import ModelProfile, Step, Workflow

__all__ = ["CacheFit", "Drift", "JournalCache", "LedgerFit", "Measured", "ModelFit", "RouteFit",
           "Served", "StepFit", "answered_by", "fit_cached", "fit_from_journal", "fit_model",
           "fit_routes", "fit_steps", "judge_models", "measured_guesses", "own_p_ok_calls",
           "require_calls", "runs_alike"]

ANSWERED = ("ok", "rejected")
LATENCY_TOLERANCE = 0.10
"""A latency (or, for token prices, a token count) off by less than this share of the
profile's is not drift, however sure."""
FAULTS = {"transient": "transient_error_rate", "rate_limited": "rate_limit_rate",
          "timeout": "timeout_rate"}  # fmt: skip
"""Ledger outcomes and the simulator's fault rate each one measures."""
JUDGED = ("call", "call (hedge)")
"""Roles of a call that may be an attempt on its own (then its verdict is its model's alone;
a debate's, a vote's or a refined call's verdict is the whole attempt's)."""
NOT_SENT = ("unsent", "hedged", "cancelled")
"""Outcomes that say nothing of the model: never sent, or given up by us."""


Drift = Figure
"""A :class:`~trilemma.plan.agreement.Figure` the ledger contradicts (:func:`judge`)."""


@dataclass(frozen=True, slots=True)
class LedgerFit:
    """What the ledger measured of one model."""

    model: str
    """The profile's name, as journaled."""
    journal: str
    """The journal read."""
    runs: int
    """Runs that called the model."""
    sent: int
    """Calls that went out and came back with an answer or an error."""
    latency_s: tuple[float, ...]
    """Per answered call, seconds."""
    accepted: int
    """Single-call attempts whose answer passed."""
    judged: int
    """Single-call attempts that got an answer."""
    outcomes: dict[str, int]
    """Calls per outcome (ok, rejected, transient, ...)."""
    prompt_tokens: float | None
    """Mean prompt tokens of the answered calls that reported them."""
    completion_tokens: float | None
    """Mean completion tokens, likewise."""
    cost_usd: float | None
    """Mean dollars billed per answered call."""
    cut: int = 0
    """Answered calls that stopped at ``max_tokens`` (``finish_reason`` length)."""
    token_counts: tuple[tuple[int, int], ...] = ()
    """Per answered call that reported both, its prompt and completion tokens."""
    left_out: tuple[tuple[str, int], ...] = ()
    """The runs whose spec has the name answered otherwise than the profile fitted (another
    endpoint or model, or the simulator): what answered it there, and how many of the runs
    that called it each, most first (:attr:`Served.others`)."""

    @property
    def cut_share(self) -> float | None:
        """Share of the answered calls that stopped at ``max_tokens`` (None: none answered)."""
        return self.cut / len(self.latency_s) if self.latency_s else None

    @property
    def p_ok(self) -> float | None:
        """Share of judged attempts accepted (None: none judged)."""
        return self.accepted / self.judged if self.judged else None

    @property
    def ci95(self) -> tuple[float, float]:
        """Wilson interval of ``p_ok``."""
        return wilson(self.accepted, self.judged)

    @property
    def latency_mean_s(self) -> float | None:
        """Mean seconds of an answered call."""
        return statistics.fmean(self.latency_s) if self.latency_s else None

    @property
    def jitter(self) -> float | None:
        """Standard deviation of the log-latencies (None: fewer than two answers)."""
        logs = [math.log(x) for x in self.latency_s if x > 0]
        return statistics.stdev(logs) if len(logs) > 1 else None

    def fault_rates(self) -> dict[str, float]:
        """The share of calls sent that failed each way, as measured."""
        if not self.sent:
            return {}
        return {field: self.outcomes.get(kind, 0) / self.sent for kind, field in FAULTS.items()}

    def planned_rates(self, timeout_s: float) -> dict[str, float]:
        """The profile's fault rates that give the measured shares once the planner adds the
        calls its fitted latency puts past ``timeout_s``: those time out before any fault is
        drawn, as on the simulator."""
        shares = self.fault_rates()
        mean, sigma = self.latency_mean_s, self.jitter
        late = cut(mean, sigma, timeout_s)[0] if mean is not None and sigma is not None else 0.0
        if not shares or late == 0.0 or late >= 1.0:
            return shares
        kept = {field: share / (1.0 - late) for field, share in shares.items()}
        kept["timeout_rate"] = max(0.0, shares["timeout_rate"] - late) / (1.0 - late)
        return {field: min(rate, 0.999) for field, rate in kept.items()}

    def figures(self, base: ModelProfile) -> list[Figure]:
        """The figures of ``base`` the ledger measures, each weighed against it: ``p_ok`` and
        the fault rates (exact binomial tests, Wilson intervals); ``latency_s`` and, for a
        profile with token prices, ``prompt_tokens`` and ``completion_tokens`` (the mean's
        t test and 95% interval; material past :data:`LATENCY_TOLERANCE`)."""
        out = []
        if self.p_ok is not None:
            out.append(Figure("p_ok", base.p_ok, self.p_ok, self.ci95,
                              binomial_p(self.accepted, self.judged, base.p_ok),
                              certain=base.p_ok == 1.0))  # fmt: skip
        out += mean_figure("latency_s", base.latency_s, self.latency_s, LATENCY_TOLERANCE)
        if base.usd_per_call is None:  # token prices: the counts set what a call costs
            for i, field in enumerate(("prompt_tokens", "completion_tokens")):
                out += mean_figure(field, getattr(base, field), [c[i] for c in self.token_counts],
                                   LATENCY_TOLERANCE)  # fmt: skip
        late = cut(base.latency_s, base.latency_jitter, base.timeout_s)[0]
        for kind, field in FAULTS.items():
            if not self.sent:
                break
            seen = self.outcomes.get(kind, 0)
            given = getattr(base.faults, field)
            # the share the planner expects: the calls past timeout_s time out, before any fault
            share = late + (1.0 - late) * given if kind == "timeout" else (1.0 - late) * given
            out.append(Figure(f"faults.{field}", given, seen / self.sent, wilson(seen, self.sent),
                              binomial_p(seen, self.sent, share), expected=share,
                              certain=share in (0.0, 1.0)))  # fmt: skip
        return out

    def drift(self, base: ModelProfile) -> list[Figure]:
        """The figures of ``base`` the ledger contradicts (:meth:`figures`, :func:`judge`)."""
        return judge(self.figures(base))

    def summary(self) -> dict[str, Any]:
        """The figures, for JSON and for the profile's ``calibration:`` block."""
        lo, hi = self.ci95
        lat = self.latency_s  # as calibrate summarises a suite's latencies
        q = statistics.quantiles(lat, n=20) if len(lat) > 1 else list(lat) * 19

        return {
            "source": "journal", "journal": self.journal, "runs": self.runs, "calls": self.sent,
            "answered": len(self.latency_s), "attempts_judged": self.judged,
            "p_ok": None if self.p_ok is None else round(self.p_ok, 4),
            "p_ok_ci95": [round(lo, 4), round(hi, 4)] if self.judged else None,
            "latency_s": {"mean": _round(self.latency_mean_s), "p50": _round(q[9] if q else None), "p95": _round(q[18] if q else None),
                          "jitter": _round(self.jitter)},
            "faults": {k: round(v, 4) for k, v in self.fault_rates().items()},
            "outcomes": dict(sorted(self.outcomes.items())),
            "tokens": {"prompt": _round(self.prompt_tokens, 1),
                       "completion": _round(self.completion_tokens, 1),
                       "cut_at_max_tokens": _round(self.cut_share)},
            "usd_per_answer": _round(self.cost_usd, 8),
            "runs_left_out": dict(self.left_out),
        }  # fmt: skip

    def profile(self, base: ModelProfile) -> dict[str, Any]:
        """``base`` with what the ledger measured, ready for a spec's ``models:``. A figure
        the ledger cannot tell (no judged attempt, one answer) keeps ``base``'s value."""
        data = base.model_dump(mode="json", exclude_defaults=True, exclude={"calibration"})
        if self.p_ok is not None:
            data["p_ok"] = max(round(self.p_ok, 4), 0.0001)
        if self.latency_mean_s is not None:
            data["latency_s"] = max(round(self.latency_mean_s, 4), 0.0001)
        if self.jitter is not None:
            data["latency_jitter"] = min(round(self.jitter, 3), 3.0)
        faults = {k: round(v, 4) for k, v in self.planned_rates(base.timeout_s).items() if v > 0}
        if faults or "faults" in data:
            data["faults"] = faults
        tokens = self.prompt_tokens is not None and self.completion_tokens is not None
        if tokens and base.usd_per_call is None:  # only token prices read them
            data["prompt_tokens"] = round(self.prompt_tokens or 0)
            data["completion_tokens"] = round(self.completion_tokens or 0)
            if "cached_prompt_tokens" in data:
                data["cached_prompt_tokens"] = min(data["cached_prompt_tokens"], data["prompt_tokens"])
        data["calibration"] = self.summary()
        return data


def _round(x: float | None, digits: int = 4) -> float | None:
    return None if x is None else round(x, digits)


def require_calls(journal: Journal, model: str) -> None:
    """UsageError, naming the models it has, where the journal holds no call of ``model``."""
    known = journal.models_called()
    if model not in known:
        have = f"it has calls of {', '.join(known)}" if known else "it holds no calls yet"
        raise UsageError(f"{journal.path}: no calls of model {model!r} in this journal; {have}")


def fit_from_journal(
    journal: Journal, model: str, own_p_ok: Callable[[Mapping[str, Any]], bool] | None = None,
    served: Served | None = None,
) -> LedgerFit:  # fmt: skip
    """Fit ``model``'s figures to every call the journal holds under that name (``served``:
    in the runs :meth:`JournalCache.served` keeps, by default all). ``own_p_ok``: true of a
    call whose attempt is judged by a ``p_ok`` of its own, not the model's
    (:func:`own_p_ok_calls`): it is not counted in the model's."""
    rows = journal.model_calls(model)
    if not rows:
        require_calls(journal, model)
        raise UsageError(f"{journal.path}: no call of model {model!r} in this journal has finished "
                         "(each was cut off in flight); run the spec again, then fit")  # fmt: skip
    left_out: tuple[tuple[str, int], ...] = ()
    if served is not None and served.runs is not None:
        kept, runs = served.runs, {r["run_id"] for r in rows}
        tally: dict[str, int] = {}
        for by in (served.others[r] for r in runs - kept if r in served.others):
            tally[by] = tally.get(by, 0) + 1
        left_out = tuple(sorted(tally.items(), key=lambda x: (-x[1], x[0])))
        rows = [r for r in rows if r["run_id"] in kept]
        if not rows:
            others = "; ".join(f"{by} in {counted(n, 'run')}" for by, n in left_out)
            raise UsageError(f"{journal.path}: no call of model {model!r} here was answered by "
                             f"{served.by}, as the profile fitted says; the journal's were "
                             f"answered by {others or 'nothing it can read'}: give the spec "
                             "those runs ran (--spec FILE)")  # fmt: skip
    sent = [r for r in rows if r["outcome"] not in NOT_SENT and not r["cache_hit"]]
    answered = [r for r in sent if r["outcome"] in ANSWERED]
    outcomes: dict[str, int] = {}
    for r in sent:
        outcomes[r["outcome"]] = outcomes.get(r["outcome"], 0) + 1
    calls: dict[tuple[str, str, int], set[int]] = {}  # per attempt, the numbers of its calls
    for r in rows:  # a hedge's copy shares its call's number; a router's call is its own
        if not r["role"].startswith("route"):
            calls.setdefault((r["run_id"], r["step_id"], r["attempt"]), set()).add(r["call"])
    judged = [r for r in answered if r["role"] in JUDGED
              and len(calls[(r["run_id"], r["step_id"], r["attempt"])]) == 1
              and (own_p_ok is None or not own_p_ok(r))]  # fmt: skip

    def mean(field: str) -> float | None:
        known = [r[field] for r in answered if r[field] is not None]
        return statistics.fmean(known) if known else None

    return LedgerFit(
        model=model,
        journal=str(journal.path),
        runs=len({r["run_id"] for r in rows}),
        sent=len(sent),
        latency_s=tuple(r["latency_s"] for r in answered if r["latency_s"] is not None),
        accepted=sum(r["outcome"] == "ok" for r in judged),
        judged=len(judged),
        outcomes=outcomes,
        prompt_tokens=mean("prompt_tokens"),
        completion_tokens=mean("completion_tokens"),
        cost_usd=mean("cost_usd"),
        cut=sum(r["finish_reason"] == CUT for r in answered),
        token_counts=tuple((r["prompt_tokens"], r["completion_tokens"]) for r in answered
                           if r["prompt_tokens"] is not None and r["completion_tokens"] is not None),
        left_out=left_out,
    )  # fmt: skip


SIMULATOR = "the simulator"
"""What answers a simulated profile's calls (:func:`answered_by`)."""


def answered_by(profile: ModelProfile) -> str:
    """What answers a profile's calls: the simulator, or an endpoint's model at its URL
    (``.../v1/`` and ``.../v1`` alike, as the SDK takes them)."""
    if profile.runs_on_simulator:
        return SIMULATOR
    url = profile.base_url.rstrip("/") if profile.base_url else "the OpenAI SDK default URL"
    return f"{profile.model} at {url}"


@dataclass(frozen=True, slots=True)
class Served:
    """Which of a journal's runs a fit of one model counts (:meth:`JournalCache.served`)."""

    by: str
    """What answers the profile fitted (:func:`answered_by`)."""
    runs: frozenset[str] | None
    """The runs whose spec has the name answered alike; None: every run (the profile is
    simulated, a guess fitted to whatever answered the name)."""
    others: Mapping[str, str] = field(default_factory=dict)
    """The runs left out: what answered the name in each."""


ROUTED = "route: "
"""The role prefix of a classifier's call, before the branch it picked (``route: hard``)."""
MIN_SHARE = 0.0001
"""The least share a fitted branch is given (a spec's shares are above 0)."""


@dataclass(frozen=True, slots=True)
class RouteFit:
    """What the ledger measured of one routed step's classifier: how often it picked each way.

    The planner sends an attempt down branch ``b`` with chance ``p * share_b`` (the
    classifier names the planned branch with its model's ``p_ok``), plus ``1 - p`` for the
    first branch (a reply naming none goes there). A measured decision share ``m_b`` is
    met by ``share_b = (m_b - (1 - p) [b is first]) / p``: the figures here are in those
    terms, the ``share`` a spec would give, so that ``--set`` can take them as they are.
    """

    step: str
    """The routed step's id."""
    p_ok: float
    """The classifier's ``p_ok`` in the spec (how the planner reads its decisions)."""
    spec_shares: dict[str, float]
    """Each branch's ``share`` in the spec, in the spec's order (the first takes the misses)."""
    decisions: dict[str, int]
    """The classifier's answered calls per branch it picked, from the runs journaled whose
    spec asks the step alike (:func:`runs_alike`)."""

    @property
    def total(self) -> int:
        """Decisions counted (those for the spec's branches)."""
        return sum(self.decisions.values())

    def _share_of(self, label: str, measured: float) -> float:
        first = 1.0 if label == next(iter(self.spec_shares)) else 0.0
        return min(1.0, max(0.0, (measured - (1.0 - self.p_ok) * first) / self.p_ok))

    def measured(self, label: str) -> float | None:
        """The share of decisions that picked ``label`` (None: no decision counted)."""
        return self.decisions[label] / self.total if self.total else None

    def share(self, label: str) -> float | None:
        """The ``share`` of ``label`` that gives the measured decisions (clamped to [0, 1])."""
        m = self.measured(label)
        return None if m is None else self._share_of(label, m)

    def ci95(self, label: str) -> tuple[float, float]:
        """The 95% interval of :meth:`share`: the Wilson interval of the decisions, mapped."""
        lo, hi = wilson(self.decisions[label], self.total)
        return self._share_of(label, lo), self._share_of(label, hi)

    def shares(self) -> dict[str, float] | None:
        """Every branch's measured :meth:`share`, rounded to 4 places and adding up to 1 (a
        spec's check), for ``--set``; None with no decision counted."""
        if not self.total:
            return None
        raw = {label: self.share(label) or 0.0 for label in self.spec_shares}
        total = math.fsum(raw.values())  # over 1 only where a share was clamped at 0
        # a spec's share is above 0: a branch never picked keeps the least it can say
        out = {label: max(round(v / total, 4), MIN_SHARE) for label, v in raw.items()}
        top = max(out, key=out.__getitem__)  # the largest takes what rounding left
        out[top] = round(1.0 - math.fsum(v for k, v in out.items() if k != top), 4)
        return out

    def figures(self) -> list[Figure]:
        """Each branch's spec ``share`` weighed against the decisions: the exact binomial test
        of the share of decisions the spec plans (its share of the classifier's right answers,
        the first branch its misses too). Two branches are one test, weighed once, under the
        second's name (the first's is what the second leaves)."""
        if not self.total:
            return []
        first = next(iter(self.spec_shares))
        out = []
        for label, given in list(self.spec_shares.items())[1 if len(self.spec_shares) == 2 else 0:]:
            planned = self.p_ok * given + (1.0 - self.p_ok) * (label == first)
            out.append(Figure(f"steps.{self.step}.route.{label}.share", given,
                              self.share(label) or 0.0, self.ci95(label),
                              binomial_p(self.decisions[label], self.total, planned),
                              certain=planned in (0.0, 1.0)))  # fmt: skip
        return out

    def drift(self) -> list[Figure]:
        """The branches whose spec ``share`` the decisions contradict (:func:`judge`)."""
        return judge(self.figures())

    def to_json(self) -> dict[str, Any]:
        """An entry of ``routes`` in ``calibrate --from-journal --json``."""
        branches = []
        for label, given in self.spec_shares.items():
            m, share = self.measured(label), self.share(label)
            lo, hi = self.ci95(label)
            branches.append({
                "branch": label, "share": given, "decisions": self.decisions[label],
                "measured": None if m is None else round(m, 6),
                "fitted_share": None if share is None else round(share, 6),
                "fitted_share_ci95": None if share is None else [round(lo, 6), round(hi, 6)],
            })  # fmt: skip
        return {"step": self.step, "classifier_p_ok": self.p_ok, "decisions": self.total,
                "branches": branches, "set": self.shares()}  # fmt: skip


def _asked(step: Step) -> tuple[Any, ...]:
    """How a step is asked, whatever its guesses (shares, ``p_ok``, hit rate): its model, kind
    and calls, its branches' labels, models and calls, whether it is cached."""
    branches = None if step.route is None else tuple(
        (k, b.model, step.branch_step(k).calls) for k, b in step.route.items())  # fmt: skip
    calls = step.calls if step.route is None else None
    return step.model, step.kind, calls, branches, step.cache_rule is not None


class JournalCache:
    """What the fits of one command read from a journal, each read once: its specs, parsed
    (:func:`runs_alike`), and each step's calls (:func:`fit_steps`, :func:`own_p_ok_calls`)."""

    def __init__(self, journal: Journal) -> None:
        self.journal = journal
        self._parsed: list[tuple[dict[str, Step], list[str]]] | None = None
        self._calls: dict[str, list[dict[str, Any]]] = {}
        self._models: list[tuple[dict[str, Any] | None, list[str]]] | None = None
        self._served: dict[tuple[str, str], Served] = {}

    def served(self, model: str, profile: ModelProfile) -> Served:
        """The runs whose spec (or gateway config) has ``model`` answered as ``profile``
        says, where that is a real endpoint: the same model at the same URL. A name that
        another endpoint or model answered in other runs (a spec that moved it), or the
        simulator (a spec drafted before it was wired), measures another model: those runs
        are left out, and counted. A simulated ``profile`` keeps every run (it is a guess,
        fitted to whatever answered the name), as do a spec this version cannot read and a
        gateway's keys (whose runs span its sessions)."""
        by = answered_by(profile)
        if profile.runs_on_simulator:
            return Served(by, None)
        if (model, by) not in self._served:
            if self._models is None:
                self._models = []
                for text, ids in self.journal.spec_runs(gateways=True):
                    try:
                        models = json.loads(text).get("models")
                    except (ValueError, AttributeError):
                        models = None
                    self._models.append((models if isinstance(models, dict) else None, ids))
            kept: set[str] = set()
            others: dict[str, str] = {}
            for models, ids in self._models:
                # a spec this version cannot read, and a gateway key's runs, kept as before:
                # a key's run keeps the config of the gateway's first session, not of each
                # session that answered its calls (the gateway's upstream may have moved)
                if models is None or any(i.startswith(GATEWAY_RUN) for i in ids):
                    kept.update(ids)
                    continue
                if model not in models:
                    continue  # no call of it there
                try:
                    theirs = answered_by(ModelProfile.model_validate(models[model]))
                except ValueError:  # a profile this version does not read: kept, as before
                    theirs = by
                if theirs == by:
                    kept.update(ids)
                else:
                    others.update(dict.fromkeys(ids, theirs))
            self._served[model, by] = Served(by, frozenset(kept), others)
        return self._served[model, by]

    def parsed(self) -> list[tuple[dict[str, Step], list[str]]]:
        """Each journaled spec's steps by id, with the runs made of it; a spec this version
        no longer reads is passed over."""
        if self._parsed is None:
            from trilemma.errors import SpecError
            from trilemma.spec import parse_workflow

            self._parsed = []
            for text, ids in self.journal.spec_runs():
                try:
                    wf = parse_workflow(text, "<journal>", json_only=True)
                except SpecError:
                    continue
                self._parsed.append(({s.id: s for s in wf.steps}, ids))
        return self._parsed

    def step_calls(self, step_id: str) -> list[dict[str, Any]]:
        """:meth:`~trilemma.journal.Journal.step_attempt_calls` of ``step_id``."""
        if step_id not in self._calls:
            self._calls[step_id] = self.journal.step_attempt_calls(step_id)
        return self._calls[step_id]


def runs_alike(
    journal: Journal, wf: Workflow, step_ids: Collection[str], specs: JournalCache | None = None,
    model: str | None = None,
) -> dict[str, set[str]]:  # fmt: skip
    """For each of ``step_ids``, the journal's runs whose spec asks a step of that id as
    ``wf`` does (:func:`_asked`; its guesses may differ, as a run's ``--set`` makes them): a
    step of the same id in another spec (the examples' ``answer``, in one compare's journal)
    is another step. ``model``: of those, only the runs whose spec has it answered as ``wf``
    does (:meth:`JournalCache.served`). ``specs``: the journal's, read once for several calls."""
    want = {s.id: _asked(s) for s in wf.steps if s.id in step_ids}
    out: dict[str, set[str]] = {i: set() for i in want}
    if not want:
        return out
    cache = specs or JournalCache(journal)
    within = None if model is None else cache.served(model, wf.models[model]).runs
    for steps, ids in cache.parsed():
        for i, asked in want.items():
            if i in steps and _asked(steps[i]) == asked:
                out[i].update(ids if within is None else within.intersection(ids))
    return out


def fit_routes(
    journal: Journal, wf: Workflow, model: str, specs: JournalCache | None = None
) -> list[RouteFit]:
    """The routed steps of ``wf`` that ``model`` classifies for, each fitted to the decisions
    the journal holds of it (a step's ``route: LABEL`` rows under ``model``, from the runs
    whose spec routes the step alike: :func:`runs_alike`). Empty where ``model`` routes
    nothing, or its ``p_ok`` is 0 (every decision then goes to the first branch, whatever
    the shares)."""
    steps = [s for s in wf.steps if s.route is not None and s.model == model]
    p = wf.models[model].p_ok if model in wf.models else 0.0
    if not steps or p <= 0.0:
        return []
    picked: dict[str, dict[str, int]] = {s.id: {} for s in steps}
    alike = runs_alike(journal, wf, picked, specs, model)
    for r in journal.model_calls(model):
        counts = picked.get(r["step_id"])
        if counts is None or r["run_id"] not in alike[r["step_id"]]:
            continue
        if r["role"].startswith(ROUTED) and not r["cache_hit"]:
            label = r["role"].removeprefix(ROUTED)
            counts[label] = counts.get(label, 0) + 1
    out = []
    for s in steps:
        assert s.route is not None
        counts = picked[s.id]
        out.append(RouteFit(step=s.id, p_ok=p, spec_shares={k: b.share for k, b in s.route.items()},
                            decisions={k: counts.get(k, 0) for k in s.route}))  # fmt: skip
    return out


@dataclass(frozen=True, slots=True)
class CacheFit:
    """What the ledger measured of one cached step: how often a run found its answer cached."""

    step: str
    """The cached step's id."""
    hit_rate: float
    """The spec's planned ``hit_rate`` (``cached: true`` plans 1, every run a hit)."""
    rule_is_mapping: bool
    """The spec writes ``cached: {...}`` (else ``cached: true``): how ``--set`` names the rate."""
    runs: int
    """Runs journaled that reached the step (a call or a hit of it under the model)."""
    hits: int
    """Of those, the runs the cache served."""

    @property
    def measured(self) -> float | None:
        """The share of runs served from the cache (None: no run reached the step)."""
        return self.hits / self.runs if self.runs else None

    @property
    def ci95(self) -> tuple[float, float]:
        """Wilson interval of :attr:`measured`."""
        return wilson(self.hits, self.runs)

    @property
    def field(self) -> str:
        """The spec's path of the planned rate."""
        return f"steps.{self.step}.cached.hit_rate"

    def set_flag(self) -> str | None:
        """``--set`` to plan with the measured rate (None: no run reached the step)."""
        m = self.measured
        if m is None:
            return None
        if self.rule_is_mapping:
            return f"{self.field}={round(m, 4):g}"
        return f"steps.{self.step}.cached={{hit_rate: {round(m, 4):g}}}"

    def figures(self) -> list[Figure]:
        """The planned rate weighed against the runs (none where no run reached the step)."""
        return share_figure(self.field, self.hit_rate, self.hits, self.runs)

    def drift(self) -> list[Figure]:
        """The planned rate, where the runs contradict it (:func:`judge`)."""
        return judge(self.figures())

    def to_json(self) -> dict[str, Any]:
        """An entry of ``cached`` in ``calibrate --from-journal --json``."""
        m = self.measured
        return {"step": self.step, "hit_rate": self.hit_rate, "runs": self.runs,
                "hits": self.hits, "measured": None if m is None else round(m, 6),
                "ci95": None if m is None else [round(x, 6) for x in self.ci95]}  # fmt: skip


def fit_cached(
    journal: Journal, wf: Workflow, model: str, specs: JournalCache | None = None
) -> list[CacheFit]:
    """The cached steps of ``wf`` on ``model``, each with the share of runs the journal holds
    (those whose spec asks the step alike: :func:`runs_alike`) that found its answer cached:
    of the runs with a call or a hit of the step under
    ``model`` (its first attempt's; a call never sent counts neither way), those whose
    ledger has a hit of it. Empty where ``model`` answers no cached step."""
    steps = [s for s in wf.steps if s.cache_rule is not None and s.model == model]
    if not steps:
        return []
    reached: dict[str, set[str]] = {s.id: set() for s in steps}
    served: dict[str, set[str]] = {s.id: set() for s in steps}
    alike = runs_alike(journal, wf, reached, specs, model)
    for r in journal.model_calls(model):
        if r["step_id"] in reached and r["outcome"] not in NOT_SENT and r["run_id"] in alike[r["step_id"]]:
            reached[r["step_id"]].add(r["run_id"])
            if r["cache_hit"]:
                served[r["step_id"]].add(r["run_id"])
    out = []
    for s in steps:
        rule = s.cache_rule
        assert rule is not None
        out.append(CacheFit(step=s.id, hit_rate=rule.hit_rate,
                            rule_is_mapping=not isinstance(s.cached, bool),
                            runs=len(reached[s.id]), hits=len(served[s.id])))  # fmt: skip
    return out


@dataclass(frozen=True, slots=True)
class StepFit:
    """What the ledger measured of one step's (or one routed step's branch's) attempts: the
    share a gate (or the simulator's check) accepted, for a ``p_ok`` the model's fit does not
    give (a debate's, a vote's, a refined call's, or the step's own)."""

    step: str
    """The step's id."""
    branch: str | None
    """The branch of a routed step (None: the step itself)."""
    kind: str
    """How an attempt asks: call, refined call, debate or vote."""
    p_ok: float
    """The planner's chance an attempt succeeds (the step's or branch's own, else its model's)."""
    own: bool
    """The spec gives the step (or branch) a ``p_ok`` of its own."""
    judged: int
    """Attempts whose every call was answered and judged."""
    accepted: int
    """Of those, the attempts accepted."""

    @property
    def field(self) -> str:
        """The spec's path of the step's (or branch's) ``p_ok``."""
        at = f"steps.{self.step}" + (f".route.{self.branch}" if self.branch else "")
        return f"{at}.p_ok"

    @property
    def measured(self) -> float | None:
        """The share of judged attempts accepted (None: none judged)."""
        return self.accepted / self.judged if self.judged else None

    @property
    def ci95(self) -> tuple[float, float]:
        """Wilson interval of :attr:`measured`."""
        return wilson(self.accepted, self.judged)

    def set_flag(self) -> str | None:
        """``--set`` to plan with the measured rate (a spec's ``p_ok`` is above 0)."""
        m = self.measured
        return None if m is None else f"{self.field}={max(round(m, 4), MIN_SHARE):g}"

    def figures(self) -> list[Figure]:
        """The planned ``p_ok`` weighed against the judged attempts (none where none was)."""
        return share_figure(self.field, self.p_ok, self.accepted, self.judged)

    def drift(self) -> list[Figure]:
        """The planned ``p_ok``, where the attempts contradict it (:func:`judge`)."""
        return judge(self.figures())

    def to_json(self) -> dict[str, Any]:
        """An entry of ``steps`` in ``calibrate --from-journal --json``."""
        m = self.measured
        return {"step": self.step, "branch": self.branch, "kind": self.kind, "p_ok": self.p_ok,
                "own": self.own, "attempts_judged": self.judged, "accepted": self.accepted,
                "measured": None if m is None else round(m, 6),
                "ci95": None if m is None else [round(x, 6) for x in self.ci95]}  # fmt: skip


def _attempts(
    rows: Sequence[Mapping[str, Any]], runs: Collection[str]
) -> tuple[dict[tuple[str, int], list[str]], dict[tuple[str, int], str]]:
    """A step's calls (:meth:`JournalCache.step_calls`) in ``runs``, by attempt: the outcomes
    of its answering calls (``["cached"]`` for a hit; a hedge's other copy left aside), and
    for a routed attempt the branch its classifier picked."""
    verdicts: dict[tuple[str, int], list[str]] = {}
    took: dict[tuple[str, int], str] = {}
    for r in rows:
        if r["run_id"] not in runs:
            continue
        key = (r["run_id"], r["attempt"])
        if r["cache_hit"]:
            verdicts[key] = ["cached"]
        elif r["role"].startswith(ROUTED):
            took[key] = r["role"].removeprefix(ROUTED)
        elif r["role"].startswith("route"):
            continue  # a classifier's call that never picked (an error)
        elif r["outcome"] != "hedged":  # a hedge's other copy says nothing of the answer
            verdicts.setdefault(key, []).append(r["outcome"])
    return verdicts, took


def own_p_ok_calls(
    journal: Journal, wf: Workflow, model: str, specs: JournalCache | None = None
) -> Callable[[Mapping[str, Any]], bool]:
    """True of a call of ``model`` (a ledger row) whose attempt ``wf`` judges by a ``p_ok`` of
    its own: a step's on ``model`` that has one, or a routed step's branch on ``model`` that
    has one, in the runs whose spec asks that step alike (:func:`runs_alike`). A routed
    attempt's branch is its classifier's ``route: LABEL`` row; one whose row is missing is
    counted as the step's own, to be safe."""
    plain = {s.id for s in wf.steps if s.route is None and s.model == model and s.p_ok is not None}
    routed = {s.id: {k for k, b in s.route.items() if b.model == model and b.p_ok is not None}
              for s in wf.steps if s.route is not None}  # fmt: skip
    routed = {sid: labels for sid, labels in routed.items() if labels}
    cache = specs or JournalCache(journal)
    alike = runs_alike(journal, wf, plain | set(routed), cache, model)
    took = {sid: _attempts(cache.step_calls(sid), alike[sid])[1] for sid in routed}

    def own(r: Mapping[str, Any]) -> bool:
        sid = r["step_id"]
        if sid not in alike or r["run_id"] not in alike[sid]:
            return False
        if sid in plain:
            return True
        label = took[sid].get((r["run_id"], r["attempt"]))
        return label is None or label in routed[sid]

    return own


def _kind(step: Step) -> str:
    return "refined call" if step.kind == "call" and step.debate_rounds else step.kind


def fit_steps(
    journal: Journal, wf: Workflow, model: str, specs: JournalCache | None = None
) -> list[StepFit]:
    """The steps (and routed steps' branches) on ``model`` whose attempt is more than one call
    or that have a ``p_ok`` of their own, each fitted to its attempts the journal holds (from
    the runs whose spec asks the step alike: :func:`runs_alike`).

    An attempt is judged when its calls (a classifier's and a hedge's other copy aside) were
    all answered (none cut off, or left unsent, by a deadline, a ceiling or an error beside
    it) and the step has a gate or runs on the simulator, whose check judges every answer (an
    endpoint's answer with no gate is accepted unread, which says nothing); it is accepted
    when none was rejected. A step whose later attempts escalate to other models is left out
    (its attempts are not all this model's); cache hits are left out."""
    wanted: list[tuple[Step, str | None, Step]] = []  # (step, branch, the step as it answers)
    for s in wf.steps:
        if s.route is not None:
            wanted += [(s, label, s.branch_step(label)) for label, b in s.route.items()
                       if b.model == model and (b.p_ok is not None or s.branch_step(label).calls > 1)]  # fmt: skip
        elif s.model == model and not s.escalate and (s.p_ok is not None or s.calls > 1):
            wanted.append((s, None, s))
    out = []
    cache = specs or JournalCache(journal)
    alike = runs_alike(journal, wf, {step.id for step, _, _ in wanted}, cache, model)
    read = {sid: _attempts(cache.step_calls(sid), alike[sid]) for sid in alike}  # once a step
    for step, branch, runs in wanted:
        judges = runs.gate is not None or step.gate is not None or wf.models[model].runs_on_simulator
        verdicts, took = read[step.id]
        judged = accepted = 0
        for key, outcomes in verdicts.items():
            if (branch is not None and took.get(key) != branch) or not judges:
                continue
            if "rejected" in outcomes and all(o in ANSWERED for o in outcomes):
                judged += 1
            elif all(o == "ok" for o in outcomes):
                judged += 1
                accepted += 1
        out.append(StepFit(step=step.id, branch=branch, kind=_kind(runs), p_ok=wf.p_ok(runs),
                           own=runs.p_ok is not None, judged=judged, accepted=accepted))  # fmt: skip
    return out


@dataclass(frozen=True, slots=True)
class ModelFit:
    """All the ledger measured of one model: its profile's figures, and the guesses of the
    spec's steps on it (routes it classifies for, cached steps, steps' own ``p_ok``)."""

    fit: LedgerFit
    """The profile's figures, as measured."""
    base: ModelProfile
    """The profile the spec gives."""
    routes: tuple[RouteFit, ...] = ()
    """The routed steps the model classifies for."""
    cached: tuple[CacheFit, ...] = ()
    """The cached steps on the model."""
    steps: tuple[StepFit, ...] = ()
    """The steps (and branches) on the model with a ``p_ok`` the profile's does not give."""

    def figures(self) -> list[Figure]:
        """Every figure the ledger measures, the profile's and the steps'."""
        return [*self.fit.figures(self.base), *(d for r in self.routes for d in r.figures()),
                *(d for c in self.cached for d in c.figures()),
                *(d for f in self.steps for d in f.figures())]  # fmt: skip

    def drift(self) -> list[Figure]:
        """The figures the ledger contradicts, all of this model's weighed together
        (:func:`judge`; :func:`judge_models` weighs several models' at once)."""
        return judge(self.figures())

    def set_flags(self, drift: Sequence[Figure] | None = None) -> list[str]:
        """``--set PATH=VALUE`` that plan the spec with the steps' measured figures, where
        the ledger contradicts the spec's (``drift``, by default :meth:`drift`; a route's
        shares all together, so they add up to 1)."""
        off = {d.field for d in (self.drift() if drift is None else drift)}
        flags = []
        for r in self.routes:
            shares = r.shares()
            if shares is not None and any(f"steps.{r.step}.route.{label}.share" in off
                                          for label in shares):  # fmt: skip
                flags += [f"steps.{r.step}.route.{label}.share={v:g}" for label, v in shares.items()]
        guesses: list[CacheFit | StepFit] = [*self.cached, *self.steps]
        for one in guesses:
            if one.field in off and (flag := one.set_flag()) is not None:
                flags.append(flag)
        return flags

    def to_json(self, drift: Sequence[Figure] | None = None) -> dict[str, Any]:
        """``calibrate --from-journal --json``, less the profile written; ``drift``: this
        model's, as the check weighed it (by default :meth:`drift`)."""
        return {**self.fit.summary(), "routes": [r.to_json() for r in self.routes],
                "cached": [c.to_json() for c in self.cached],
                "steps": [f.to_json() for f in self.steps],
                "figures_weighed": len(weighed(self.figures())),
                "drift": [d.to_json() for d in (self.drift() if drift is None else drift)]}  # fmt: skip


def judge_models(
    figures: Mapping[str, Sequence[Figure]], alpha: float = ALPHA
) -> dict[str, list[Figure]]:
    """Of each model's ``figures`` (:meth:`ModelFit.figures`), those the ledger contradicts,
    every figure of every model weighed together
    (:func:`~trilemma.plan.agreement.judge_together`): one check, one chance ``alpha`` of a
    false alarm."""
    return judge_together(figures, alpha)


def fit_model(
    journal: Journal, model: str, base: ModelProfile, wf: Workflow | None,
    specs: JournalCache | None = None,
) -> ModelFit:  # fmt: skip
    """``model`` fitted to the journal (:func:`fit_from_journal`), and, where the spec is
    known (``wf``; a gateway's config has no steps), its steps' guesses on it."""
    specs = specs or JournalCache(journal)
    served = specs.served(model, base)
    if wf is None:
        return ModelFit(fit_from_journal(journal, model, served=served), base)
    own = own_p_ok_calls(journal, wf, model, specs)
    return ModelFit(fit_from_journal(journal, model, own, served), base,
                    tuple(fit_routes(journal, wf, model, specs)),
                    tuple(fit_cached(journal, wf, model, specs)),
                    tuple(fit_steps(journal, wf, model, specs)))  # fmt: skip


@dataclass(frozen=True, slots=True)
class Measured:
    """What the ledger says of one guess of a spec."""

    value: float
    """As measured (a price: dollars per answered call)."""
    ci95: tuple[float, float] | None
    """Its 95% interval (None: a price, whose calls bill what their tokens say)."""
    n: int
    """How many calls, attempts, decisions or runs it is measured over."""
    contradicted: bool = False
    """The ledger contradicts the spec's guess: drift, as ``calibrate --from-journal
    --check`` judges it (every figure of the spec's models weighed together)."""

    def to_json(self) -> dict[str, Any]:
        """``measured`` of a guess in ``trilemma sensitivity --from-journal --json``."""
        return {"value": round(self.value, 9), "n": self.n,
                "ci95": None if self.ci95 is None else [round(x, 9) for x in self.ci95]}  # fmt: skip


def measured_guesses(journal: Journal, wf: Workflow) -> dict[str, Measured]:
    """What the journal measured of ``wf``'s guesses, by the names ``trilemma sensitivity``
    gives them (``MODEL.p_ok``, ``MODEL.latency_s``, ``MODEL.price``, ``steps.ID.p_ok``,
    ``steps.ID.route.LABEL.share``, ``steps.ID.route.LABEL.p_ok``,
    ``steps.ID.cached.hit_rate``): each model the journal holds calls of fitted as
    :func:`fit_model` fits it, and judged as :func:`judge_models` judges them all. A guess
    the ledger cannot tell is left out."""
    called = set(journal.models_called())
    specs = JournalCache(journal)
    fits = {name: fit_model(journal, name, profile, wf, specs)
            for name, profile in wf.models.items() if name in called}  # fmt: skip
    judged = judge_models({name: m.figures() for name, m in fits.items()})
    off = {(name, d.field) for name, ds in judged.items() for d in ds}
    out: dict[str, Measured] = {}
    for name, m in fits.items():
        f = m.fit
        if f.p_ok is not None:
            out[f"{name}.p_ok"] = Measured(f.p_ok, f.ci95, f.judged, (name, "p_ok") in off)
        mean, n = f.latency_mean_s, len(f.latency_s)
        if mean is not None:
            out[f"{name}.latency_s"] = Measured(mean, mean_interval(f.latency_s), n,
                                                (name, "latency_s") in off)  # fmt: skip
        if f.cost_usd is not None:
            out[f"{name}.price"] = Measured(f.cost_usd, None, n)
        for r in m.routes:  # a route drifts whole: its shares add up to 1
            drifted = any((name, x.field) in off for x in r.figures())
            for label in r.spec_shares:
                share = r.share(label)
                if share is not None:
                    out[f"steps.{r.step}.route.{label}.share"] = Measured(
                        share, r.ci95(label), r.total, drifted)  # fmt: skip
        for c in m.cached:
            if c.measured is not None:
                out[c.field] = Measured(c.measured, c.ci95, c.runs, (name, c.field) in off)
        for s in m.steps:
            if s.measured is not None:
                out[s.field] = Measured(s.measured, s.ci95, s.judged, (name, s.field) in off)
    return out
