"""Which of a spec's guesses its figures hang on.

A model profile's ``p_ok``, ``latency_s`` and price are guesses until ``trilemma calibrate``
measures them (or a price list is read), as are a step's (or a route branch's) own ``p_ok``,
a route's branch shares and a cache's planned ``hit_rate``. Here each is halved and doubled in turn
(``p_ok`` by its failure rate: a model that fails half as often, or twice as often;
``hit_rate`` by its miss rate; a branch's share with the other branches taking the rest)
and the estimate worked out again, so that the guess to measure first is the one that
moves the cost, the latency or the reliability most.

>>> from trilemma.spec import parse_workflow
>>> wf = parse_workflow('''
... version: 1
... models: {m: {usd_per_call: 0.01, latency_s: 1.0, p_ok: 0.9}}
... steps: [{id: a, model: m, retries: 1}]
... ''')
>>> s = sensitivity(wf)
>>> [(g.name, round(g.low.reliability, 4), round(g.high.reliability, 4)) for g in s.guesses][:1]
[('m.p_ok', 0.9975, 0.96)]
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

if TYPE_CHECKING:  # loaded by sensitivity(): the command line reads FACTOR without them
    from trilemma.plan.estimate import Estimate
    from trilemma.spec import ModelProfile, Step, Workflow

__all__ = ["FACTOR", "Figures", "Guess", "Sensitivity", "sensitivity"]

FACTOR = 2.0
"""How far each guess is moved, down and up: halved and doubled."""

Knob = Literal["p_ok", "latency_s", "price", "share", "hit_rate"]


@dataclass(frozen=True, slots=True)
class Figures:
    """The three budgets' figures of one estimate."""

    cost_usd: float
    """Expected cost of a run."""
    latency_s: float
    """Expected latency of a run."""
    reliability: float
    """End-to-end success."""

    @classmethod
    def of(cls, e: Estimate) -> Figures:
        return cls(e.cost_expected, e.latency_expected_s, e.reliability)

    def to_json(self) -> dict[str, float]:
        return {"cost_usd": self.cost_usd, "latency_s": self.latency_s,
                "reliability": self.reliability}  # fmt: skip


@dataclass(frozen=True, slots=True)
class Guess:
    """One guess of the spec, moved down and up."""

    name: str
    """``MODEL.p_ok``, ``MODEL.latency_s``, ``MODEL.price``, ``steps.ID.p_ok``,
    ``steps.ID.route.LABEL.share``, ``steps.ID.route.LABEL.p_ok`` or
    ``steps.ID.cached.hit_rate``."""
    knob: Knob
    value: float
    """As the spec has it (a price: dollars per call)."""
    low_value: float
    """Halved (``p_ok``: its failure rate halved)."""
    high_value: float
    """Doubled (``p_ok``: its failure rate doubled, so long as some calls still succeed)."""
    low: Figures
    high: Figures

    def swing(self, base: Figures) -> float:
        """How far the figure that moves most moves, against its value as written: cost and
        latency relative to theirs, reliability by the runs that fail (0.01 at least)."""
        failing = max(1.0 - base.reliability, 0.01)
        moves = [abs(self.high.reliability - self.low.reliability) / failing]
        for field in ("cost_usd", "latency_s"):
            written = getattr(base, field)
            if written > 0:
                moves.append(abs(getattr(self.high, field) - getattr(self.low, field)) / written)
        return max(moves)

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "knob": self.knob, "value": self.value,
                "low": {"value": self.low_value, **self.low.to_json()},
                "high": {"value": self.high_value, **self.high.to_json()}}  # fmt: skip


@dataclass(frozen=True, slots=True)
class Sensitivity:
    """The spec's figures as written, and each guess moved, the one that matters most first."""

    base: Figures
    guesses: tuple[Guess, ...]
    factor: float = FACTOR

    def to_json(self) -> dict[str, Any]:
        """``trilemma sensitivity --json``."""
        return {"factor": self.factor, "base": self.base.to_json(),
                "guesses": [g.to_json() for g in self.guesses]}  # fmt: skip


def sensitivity(wf: Workflow, factor: float = FACTOR) -> Sensitivity:
    """Each used model's ``p_ok``, latency and price, each step's (and route branch's) own
    ``p_ok``, the share of each of a route's branches but its likeliest, and each cache's
    planned hit rate under 1,
    divided and multiplied by ``factor`` in turn (see the module's docstring), the spec
    estimated again for each; sorted by :meth:`Guess.swing`, the largest first."""
    from trilemma.plan.estimate import estimate

    if not factor > 1.0 or not math.isfinite(factor):
        raise ValueError(f"factor must be a finite number above 1, not {factor!r}")
    races = wf.stop_when is not None  # a stop's reliability is drawn where steps race it
    base = Figures.of(estimate(wf, draw_runs=races))
    guesses = []
    for name, knob, value, change in _knobs(wf):
        lo, hi = _moved(knob, value, 1.0 / factor), _moved(knob, value, factor)
        if lo == value and hi == value:
            continue  # a model that never fails: nothing to halve or double
        low, high = (Figures.of(estimate(change(v), draw_runs=races)) for v in (lo, hi))
        guesses.append(Guess(name, knob, value, lo, hi, low, high))
    guesses.sort(key=lambda g: -g.swing(base))
    return Sensitivity(base, tuple(guesses), factor)


def _moved(knob: Knob, value: float, by: float) -> float:
    if knob in ("p_ok", "hit_rate"):  # the failure (miss) rate scaled; some calls succeed
        return max(1.0 - (1.0 - value) * by, 1e-6 if knob == "p_ok" else 0.0)
    if knob == "share":  # a branch taken more or less often; the others take the rest
        return min(value * by, 1.0 - SHARE_LEFT)
    return value * by


#: The least share a route's other branches keep when one branch's share is multiplied.
SHARE_LEFT = 0.01


def _knobs(wf: Workflow) -> list[tuple[str, Knob, float, Callable[[float], Workflow]]]:
    used = {m for s in wf.steps for m in wf.step_models(s)}
    out: list[tuple[str, Knob, float, Callable[[float], Workflow]]] = []
    for name, m in wf.models.items():
        if name not in used:
            continue
        out.append((f"{name}.p_ok", "p_ok", m.p_ok, _profile(wf, name, lambda m, v: {"p_ok": v})))
        out.append((f"{name}.latency_s", "latency_s", m.latency_s,
                    _profile(wf, name, lambda m, v: {"latency_s": v})))  # fmt: skip
        if m.price_per_call > 0:
            out.append((f"{name}.price", "price", m.price_per_call,
                        _profile(wf, name, _priced)))  # fmt: skip
    for i, s in enumerate(wf.steps):
        if s.p_ok is not None:
            out.append((f"steps.{s.id}.p_ok", "p_ok", s.p_ok, _step_p(wf, i)))
        if s.route is not None:  # every branch but the likeliest, whose share the rest set
            likeliest = max(s.route, key=lambda k: s.route[k].share)  # type: ignore[index]
            for label, b in s.route.items():
                if label != likeliest:
                    out.append((f"steps.{s.id}.route.{label}.share", "share", b.share,
                                _share(wf, i, label)))  # fmt: skip
                if b.p_ok is not None:  # a branch's own success (a debate's, say)
                    out.append((f"steps.{s.id}.route.{label}.p_ok", "p_ok", b.p_ok,
                                _branch_p(wf, i, label)))  # fmt: skip
        rule = s.cache_rule
        if rule is not None and rule.hit_rate < 1.0:
            out.append((f"steps.{s.id}.cached.hit_rate", "hit_rate", rule.hit_rate,
                        _hit_rate(wf, i)))  # fmt: skip
    return out


def _share(wf: Workflow, i: int, label: str) -> Callable[[float], Workflow]:
    """A route whose branch ``label`` is taken with another share, the others scaled to the
    rest in proportion."""

    def change(v: float) -> Workflow:
        step = wf.steps[i]
        assert step.route is not None
        rest = 1.0 - step.route[label].share
        route = {k: b.model_copy(update={
            "share": v if k == label else b.share * (1.0 - v) / rest}) for k, b in step.route.items()}  # fmt: skip
        return _with_step(wf, i, step.model_copy(update={"route": route}))

    return change


def _branch_p(wf: Workflow, i: int, label: str) -> Callable[[float], Workflow]:
    """A route whose branch ``label`` succeeds with another ``p_ok`` of its own."""

    def change(v: float) -> Workflow:
        step = wf.steps[i]
        assert step.route is not None
        route = {k: b.model_copy(update={"p_ok": v}) if k == label else b
                 for k, b in step.route.items()}  # fmt: skip
        return _with_step(wf, i, step.model_copy(update={"route": route}))

    return change


def _hit_rate(wf: Workflow, i: int) -> Callable[[float], Workflow]:
    def change(v: float) -> Workflow:
        step = wf.steps[i]
        assert step.cache_rule is not None
        return _with_step(wf, i, step.model_copy(update={
            "cached": step.cache_rule.model_copy(update={"hit_rate": v})}))  # fmt: skip

    return change


def _with_step(wf: Workflow, i: int, step: Step) -> Workflow:
    steps = list(wf.steps)
    steps[i] = step
    return wf.model_copy(update={"steps": steps})


def _priced(m: ModelProfile, per_call: float) -> dict[str, Any]:
    """A profile's prices scaled so that a call costs ``per_call``."""
    scale = per_call / m.price_per_call
    fields = ("usd_per_call", "usd_per_1m_input", "usd_per_1m_output", "usd_per_1m_cached_input")
    return {f: getattr(m, f) * scale for f in fields if getattr(m, f) is not None}


def _profile(
    wf: Workflow, name: str, update: Callable[[ModelProfile, float], dict[str, Any]]
) -> Callable[[float], Workflow]:
    def change(v: float) -> Workflow:
        m = wf.models[name]
        return wf.model_copy(update={"models": {**wf.models, name: m.model_copy(update=update(m, v))}})

    return change


def _step_p(wf: Workflow, i: int) -> Callable[[float], Workflow]:
    def change(v: float) -> Workflow:
        return _with_step(wf, i, wf.steps[i].model_copy(update={"p_ok": v}))

    return change
