"""Cascades: a step's failed attempt escalates to the next model, planned and run alike."""

from __future__ import annotations

import math
from pathlib import Path

import pytest

from trilemma import (
    estimate,
    load_workflow,
    parse_workflow,
    simulate,
    workflow_from_dict,
)
from trilemma.errors import SpecError
from trilemma.journal import Journal
from trilemma.plan.optimize import _options, optimize
from trilemma.run.session import execute
from trilemma.spec import Budget
from trilemma.testing import fast_retries

from .conftest import EXAMPLES

MODELS = """version: 1
models:
  premium: {usd_per_call: 0.030, latency_s: 2.0, p_ok: 0.99}
  small:   {usd_per_call: 0.002, latency_s: 0.4, p_ok: 0.90}
"""


def one_step(step: str) -> str:
    return MODELS + f"steps:\n  - {step}\n"


def test_estimate_prices_each_attempt_on_its_own_model() -> None:
    wf = parse_workflow(one_step("{id: a, model: small, escalate: [premium], retries: 1}"))
    e = estimate(wf)
    (row,) = e.per_step
    assert row.cost_book == pytest.approx(0.002)  # the seed's formula: the first attempt
    assert row.cost_expected == pytest.approx(0.002 + 0.10 * 0.030)
    assert row.cost_worst == pytest.approx(0.032)
    assert e.latency_critical_s == pytest.approx(0.4)
    assert e.latency_expected_s == pytest.approx(0.4 + 0.10 * (0.25 + 2.0))  # backoff, then big
    assert e.latency_worst_s == pytest.approx(2.4 + 0.5)  # the backoff's longest first wait
    assert e.reliability == pytest.approx(1 - 0.10 * 0.01)
    assert row.attempts_expected == pytest.approx(1.10)
    assert row.to_json()["models"] == ["small", "premium"]


def test_attempts_past_the_ladder_stay_on_its_last_model() -> None:
    wf = parse_workflow(one_step("{id: a, model: small, escalate: [premium], retries: 3}"))
    step = wf.steps[0]
    assert [wf.attempt_model(step, n) for n in (1, 2, 3, 4)] == [
        "small", "premium", "premium", "premium"
    ]  # fmt: skip
    (row,) = estimate(wf).per_step
    assert row.cost_worst == pytest.approx(0.002 + 3 * 0.030)
    assert row.p_step == pytest.approx(1 - 0.10 * 0.01**3)


def test_without_escalate_the_figures_are_unchanged() -> None:
    wf = parse_workflow(one_step("{id: a, model: small, retries: 2}"))
    (row,) = estimate(wf).per_step
    assert row.cost_expected == pytest.approx(0.002 * (1 + 0.1 + 0.01))
    assert row.latency_expected_s == pytest.approx(0.4 * 1.11 + 0.1 * 0.25 + 0.01 * 0.5)
    assert row.to_json()["models"] == ["small"]


def test_cascade_beats_one_premium_call_per_step_on_cost_and_reliability() -> None:
    wf = load_workflow(EXAMPLES / "cascade.yaml")
    data = wf.model_dump(mode="json")
    for s in data["steps"]:
        s.update(model="premium", escalate=None, retries=0)
    e, premium = estimate(wf), estimate(workflow_from_dict(data, "<test>"))
    assert e.cost_expected < premium.cost_expected / 5
    assert e.cost_worst > premium.cost_worst  # the price: a worst case that climbs every rung
    assert e.reliability > premium.reliability


@pytest.mark.parametrize(
    ("step", "field", "says"),
    [
        ("{id: a, model: small, escalate: [premum], retries: 1}", "steps[0].escalate[0]",
         "did you mean 'premium'"),
        ("{id: a, model: small, escalate: [premium]}", "steps[0]", "set retries to at least 1"),
        ("{id: a, model: small, escalate: [premium], retries: 1, p_ok: 0.5}", "steps[0]",
         "remove the step's p_ok"),
    ],
)  # fmt: skip
def test_bad_cascades_are_spec_errors(step: str, field: str, says: str) -> None:
    with pytest.raises(SpecError) as err:
        parse_workflow(one_step(step))
    assert field in str(err.value) and says in str(err.value)


def test_cli_names_the_field_of_a_bad_cascade(cli, write) -> None:
    path = write(one_step("{id: a, model: small, escalate: [premium]}"))
    r = cli("estimate", path)
    assert r.code == 2
    assert "retries" in r.err and "Traceback" not in r.err and len(r.err.strip().splitlines()) == 1


def test_monte_carlo_agrees_with_the_analytic_cascade() -> None:
    wf = load_workflow(EXAMPLES / "cascade.yaml")
    e = estimate(wf)
    r = simulate(wf, 400_000, seed=3, halt=False)
    assert abs(r.success_rate - e.reliability) <= 4 * max(r.stderr, 1e-4)
    assert r.cost_usd.mean == pytest.approx(e.cost_expected, rel=5e-3)
    assert r.latency_s.mean == pytest.approx(e.latency_expected_s, rel=5e-3)
    assert r.calls.mean == pytest.approx(e.calls_expected, rel=5e-3)


def test_optimizer_keeps_an_attempt_for_every_rung() -> None:
    # Without the ladder, one small call (retries 0, $0.002) would meet this budget.
    text = one_step("{id: a, model: small, escalate: [premium], retries: 1, cacheable: true}")
    wf = parse_workflow(text)
    assert {c.retries for c in _options(wf, wf.steps[0], 3)} == {1, 2, 3}
    result = optimize(wf, Budget(min_reliability=0.85))
    assert result.best is not None  # a runnable spec: validated again
    assert result.best.steps[0].retries >= 1


def run(text: str, tmp_path: Path, **kw: object):
    journal = Journal(tmp_path / "j.db")
    with fast_retries():
        result = execute(parse_workflow(text), journal=journal, **kw)
    return result, journal


def test_a_rejected_answer_escalates_and_the_ledger_shows_each_model(tmp_path: Path) -> None:
    text = MODELS.replace("p_ok: 0.90", "p_ok: 0.0001").replace("p_ok: 0.99", "p_ok: 1.0")
    text += "steps:\n  - {id: a, model: small, escalate: [premium], retries: 1, sim: {ok: RIGHT}}\n"
    r, j = run(text, tmp_path, seed=1)
    assert r.status == "ok" and r.outputs == {"a": "RIGHT"}
    calls = j.calls(r.run_id)
    assert [(c["attempt"], c["model"], c["outcome"]) for c in calls] == [
        (1, "small", "rejected"), (2, "premium", "ok")
    ]  # fmt: skip
    assert [c["cost_usd"] for c in calls] == [0.002, 0.030]  # a rejected answer is billed
    assert r.cost_usd == pytest.approx(0.032)


def test_escalation_reserves_the_premium_worst_case(tmp_path: Path) -> None:
    text = MODELS.replace("p_ok: 0.90", "p_ok: 0.0001")
    text += "steps:\n  - {id: a, model: small, escalate: [premium], retries: 1}\n"
    r, j = run(text, tmp_path, seed=1, max_cost_usd=0.02)  # the small call fits, premium does not
    assert r.status == "budget_exhausted"
    assert [c["model"] for c in j.calls(r.run_id)] == ["small"]
    assert r.cost_usd == pytest.approx(0.002) and r.cost_usd <= 0.02


def test_measured_cost_of_many_runs_matches_the_expected_cost(tmp_path: Path) -> None:
    wf_text = (EXAMPLES / "cascade.yaml").read_text().replace("latency_s: 2.0", "latency_s: 0.000001") \
        .replace("latency_s: 0.4", "latency_s: 0.000001")  # fmt: skip
    e = estimate(parse_workflow(wf_text))
    costs = []
    for seed in range(150):
        r, j = run(wf_text, tmp_path, seed=seed)
        j.close()
        costs.append(r.cost_usd)
    mean = math.fsum(costs) / len(costs)
    # small is right 94.5% of the time: most runs cost 3 x $0.002, an escalation adds $0.03
    assert mean == pytest.approx(e.cost_expected, rel=0.25)
    assert min(costs) == pytest.approx(0.006)


def test_resume_resends_an_unsent_attempt_on_its_own_rung(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A call cancelled while its write-ahead record committed was never sent: on resume it
    # must not count as an attempt, or the cascade would skip the small model.
    import asyncio

    from trilemma.journal.store import JournalWriter
    from trilemma.run.session import resume
    from trilemma.testing import FunctionProvider

    durable = JournalWriter.write

    async def slow_write(self: JournalWriter, *args: object, **kwargs: object) -> None:
        await durable(self, *args, **kwargs)
        await asyncio.sleep(5)  # the deadline passes before the call goes out

    sent: list[tuple[str, str]] = []

    async def answer(request: object) -> str:
        sent.append((request.model, request.call_key))  # type: ignore[attr-defined]
        return "ok"

    provider = FunctionProvider(answer)
    providers = {"small": provider, "premium": provider}
    text = MODELS + "steps:\n  - {id: a, model: small, escalate: [premium], retries: 1}\n"
    journal = Journal(tmp_path / "j.db")
    monkeypatch.setattr(JournalWriter, "write", slow_write)
    with fast_retries():
        first = execute(parse_workflow(text), journal=journal, deadline_s=0.2, providers=providers)
    assert first.status == "deadline" and sent == []
    monkeypatch.setattr(JournalWriter, "write", durable)
    with fast_retries():
        again = resume(journal, first.run_id, deadline_s=10, providers=providers)
    assert again.status == "ok"
    assert sent == [("small", "a:1:1")]  # attempt 1, on the small model, under its own key
    assert [(c["attempt"], c["model"], c["outcome"]) for c in journal.calls(first.run_id)] == [
        (1, "small", "ok")
    ]  # fmt: skip


def test_optimizer_turns_a_cascadable_step_into_a_cascade_when_it_is_cheapest(cli, write) -> None:
    # A small model right 60% of the time: three retries on it cannot reach 98% over three
    # steps, premium alone costs $0.03 a step, small escalating to premium about $0.014.
    text = """version: 1
models:
  premium: {usd_per_call: 0.030, latency_s: 2.0, p_ok: 0.985}
  small:   {usd_per_call: 0.002, latency_s: 0.4, p_ok: 0.60}
steps:
  - {id: a, model: premium, candidates: [premium, small], cascadable: true}
  - {id: b, model: premium, candidates: [premium, small], cascadable: true, after: [a]}
  - {id: c, model: premium, candidates: [premium, small], cascadable: true, after: [b]}
"""
    wf = parse_workflow(text)
    r = optimize(wf, Budget(min_reliability=0.98), budget_on="expected")
    assert r.best is not None and r.best_estimate is not None
    assert [(s.model, s.escalate) for s in r.best.steps] == [("small", ["premium"])] * 3
    assert r.best_estimate.reliability >= 0.98
    assert r.best_estimate.cost_expected < 0.5 * r.original.cost_expected
    without = optimize(parse_workflow(text.replace("cascadable: true", "cascadable: false")),
                       Budget(min_reliability=0.98), budget_on="expected")  # fmt: skip
    assert without.best_estimate is not None
    assert r.best_estimate.cost_expected < without.best_estimate.cost_expected
    out = cli("optimize", write(text), "--min-reliability", "0.98", "--budget-on", "expected")
    assert out.code == 0 and "small > premium" in out.out
