"""Token-priced models on the simulator bill, hold and rate-limit what the planner counts.

The simulator plays the profile: a call reports the profile's ``prompt_tokens`` and its
``completion_tokens`` cut at the ``max_tokens`` it was sent with (an endpoint generates no
more), so a run measures what the estimate predicts, its reservations are the planner's and
its ``tpm`` bucket counts the tokens the planner's replay counts.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from trilemma import estimate, parse_workflow, workflow_from_dict
from trilemma.experiments.trials import time_scaled
from trilemma.journal import Journal
from trilemma.plan.estimate import held_worst
from trilemma.plan.simulate import simulate, simulate_loop
from trilemma.run.session import execute
from trilemma.spec import Budget, Workflow
from trilemma.testing import Reply, ScriptedServer

PRICED = "usd_per_1m_input: 2.5, usd_per_1m_output: 10.0, prompt_tokens: 3000"


def wide(n: int, profile: str, *, concurrency: int = 16, step: str = "") -> Workflow:
    """``n`` independent steps on model ``m`` (``profile``: its extra fields)."""
    return parse_workflow(
        f"version: 1\nconcurrency: {concurrency}\nmodels:\n"
        f"  m: {{{PRICED}, latency_s: 0.01, p_ok: 1.0, {profile}}}\n"
        "steps:\n" + "\n".join(f"  - {{id: s{i}, model: m{step}}}" for i in range(n)) + "\n"
    )


def test_a_run_bills_the_tokens_the_estimate_prices(tmp_path: Path) -> None:
    """Five steps, answers of 500 tokens expected, cut at the profile's 256 and at one
    step's own 100: the estimate prices those, and the run bills exactly that."""
    wf = parse_workflow(
        f"version: 1\nmodels:\n  m: {{{PRICED}, completion_tokens: 500, latency_s: 0.01, "
        "p_ok: 1.0}\nsteps:\n"
        + "".join(f"  - {{id: s{i}, model: m}}\n" for i in range(4))
        + "  - {id: short, model: m, max_tokens: 100}\n"
    )
    e = estimate(wf)
    assert e.cost_expected == pytest.approx((5 * 3000 * 2.5 + (4 * 256 + 100) * 10) / 1e6)
    journal = Journal(tmp_path / "j.db")
    r = execute(wf, journal=journal, seed=1)
    assert r.status == "ok" and r.cost_usd == pytest.approx(e.cost_expected)
    rows = {row["step_id"]: row for row in journal.calls(r.run_id)}
    assert rows["s0"]["prompt_tokens"] == 3000 and rows["s0"]["completion_tokens"] == 256
    assert rows["short"]["completion_tokens"] == 100
    # the simulator stops where an endpoint would: every answer here is cut, and said so
    assert {row["finish_reason"] for row in rows.values()} == {"length"}
    assert r.cut == {f"s{i}": 1 for i in range(4)} | {"short": 1}


def test_a_run_names_the_steps_whose_answers_were_cut(cli: Any, write: Any, tmp_path: Path) -> None:
    """A vote of three samples at 500 answer tokens under the profile's 256: three cut answers,
    named once the run ends; a step whose answers fit is not named."""
    spec = write(
        f"version: 1\nmodels:\n  m: {{{PRICED}, completion_tokens: 500, latency_s: 0.01, "
        "p_ok: 1.0}\nsteps:\n  - {id: poll, model: m, vote: {samples: 3}}\n"
        "  - {id: brief, model: m, max_tokens: 600}\n"
    )
    db = tmp_path / "j.db"
    doc = cli("run", spec, "--journal", db, "--json").json()
    assert doc["cut_at_max_tokens"] == {"poll": 3}
    out = " ".join(cli("run", spec, "--journal", db).out.split())
    assert "3 answers stopped at max_tokens, the text cut where the tokens ran out: poll (3); " \
           "raise max_tokens on that step" in out  # fmt: skip


def test_a_ceiling_on_token_prices_holds_what_the_planner_holds(tmp_path: Path) -> None:
    """Each call holds 3,000 prompt tokens and 256 answer tokens ($0.01006) and bills 100
    ($0.0085). Under $0.05 a chain sends five calls (the sixth's hold would cross it); ten
    parallel steps hold four calls at once and the fifth is refused; under $0.20, ten votes
    of three hold a vote's samples at once. The Monte Carlos under the same ceiling hold
    what is in flight as the executor does, and predict each run to the call. No call
    bills past what it held."""
    chain = parse_workflow(
        f"version: 1\nmodels:\n  m: {{{PRICED}, completion_tokens: 100, latency_s: 0.01, "
        "p_ok: 1.0}\nsteps:\n"
        + "".join(f"  - {{id: s{i}, model: m{f', after: [s{i - 1}]' if i else ''}}}\n"
                  for i in range(10))
    )  # fmt: skip
    votes = wide(10, "completion_tokens: 100", concurrency=100, step=", vote: {samples: 3}")
    journal = Journal(tmp_path / "j.db")
    for wf, cap, calls in ((chain, 0.05, 5), (wide(10, "completion_tokens: 100"), 0.05, 4),
                           (wide(40, "completion_tokens: 100", concurrency=100), 0.155, 15),
                           (votes, 0.20, 19)):  # fmt: skip
        r = execute(wf, journal=journal, seed=1, max_cost_usd=cap)
        assert r.status == "budget_exhausted" and r.calls == calls
        assert r.cost_usd == pytest.approx(calls * 0.0085) and r.cost_usd <= cap
        assert all(row["error"] is None for row in journal.calls(r.run_id))  # none over its hold
        predicted = simulate(wf, 200, seed=1, max_cost_usd=cap)
        assert predicted.cost_usd.mean == pytest.approx(r.cost_usd)
        assert predicted.calls.mean == calls and predicted.ceiling_hits == 200
        assert simulate_loop(wf, 20, seed=1, max_cost_usd=cap)[1] == pytest.approx(r.cost_usd)


def test_tpm_holds_simulated_calls_for_the_profiles_prompt(tmp_path: Path) -> None:
    """Forty calls of 3,000 prompt tokens and 100 answer tokens under tpm 100,000: 32 go at
    once and the last eight wait for the bucket, 14.4 s replayed; at a twentieth of the
    time, the executor takes what the replay predicts (it counted a quarter of the prompt's
    bytes, three tokens, and sent all forty at once)."""
    wf = wide(40, "tpm: 100000, max_tokens: 100", concurrency=100)
    assert estimate(wf).latency_scheduled_s == pytest.approx(14.41, abs=0.01)
    fast = time_scaled(wf, 0.05)
    planned = estimate(fast).latency_scheduled_s
    r = execute(fast, journal=Journal(tmp_path / "j.db"), seed=1)
    assert r.status == "ok" and r.latency_s == pytest.approx(planned, rel=0.1)


def test_estimate_says_where_answers_stop_at_max_tokens(cli: Any, write: Any) -> None:
    text = wide(5, "completion_tokens: 500").model_dump_json()
    out = " ".join(cli("estimate", write(text)).out.split())
    assert ("models.m.completion_tokens: 500 expected, but calls of steps s0, s1, s2 and 2 "
            "more stop at max_tokens 256 and are priced so") in out  # fmt: skip
    fits = wide(5, "completion_tokens: 200").model_dump_json()
    assert "completion_tokens" not in cli("estimate", write(fits, name="fits.yaml")).out


def test_a_real_endpoint_is_held_at_its_prompts_bytes_as_planned(tmp_path: Path) -> None:
    """The openai provider on a scripted server, ten parallel steps of a 4,000-byte prompt
    (the profile's 1,000 tokens, four bytes a token): the executor holds the prompt's bytes
    and the template's 16 tokens, and 256 answer tokens ($0.01264); under $0.05 three calls
    are held at once and the fourth is refused. The planner holds the same, and the Monte
    Carlo predicts the three (at the 1,000 tokens alone it held $0.00506 and said nine)."""
    with ScriptedServer(lambda _: Reply("ok", delay_s=0.2, prompt_tokens=1000,
                                        completion_tokens=100)) as srv:  # fmt: skip
        wf = workflow_from_dict({
            "version": 1,
            "models": {"m": {"provider": "openai", "base_url": srv.url, "model": "m1",
                             "usd_per_1m_input": 2.5, "usd_per_1m_output": 10.0,
                             "prompt_tokens": 1000, "completion_tokens": 100,
                             "latency_s": 0.2, "p_ok": 1.0}},
            "steps": [{"id": f"s{i}", "model": "m", "prompt": "x" * 4000} for i in range(10)],
        })  # fmt: skip
        assert wf.models["m"].reserved_per_call() == pytest.approx((4016 * 2.5 + 2560) / 1e6)
        journal = Journal(tmp_path / "j.db")
        r = execute(wf, journal=journal, seed=1, max_cost_usd=0.05)
    assert r.status == "budget_exhausted" and r.calls == 3
    assert r.cost_usd == pytest.approx(3 * 0.0035)
    held = [row["reserved_usd"] for row in journal.calls(r.run_id)]
    assert held == pytest.approx([wf.models["m"].reserved_per_call()] * 3)
    predicted = simulate(wf, 200, seed=1, max_cost_usd=0.05)
    assert predicted.calls.mean == 3 and predicted.cost_usd.mean == pytest.approx(r.cost_usd)


def test_estimate_does_not_promise_a_ceiling_the_holds_cross(cli: Any, write: Any) -> None:
    """Ten parallel calls bill $0.0085 each, $0.085 at worst, under a $0.09 ceiling; each
    holds $0.01006 first, $0.1006 in all: the executor refuses the ninth. The estimate said
    no run stops for money; it now says the calls may hold more than the ceiling."""
    wf = wide(10, "completion_tokens: 100")
    assert held_worst(wf) == pytest.approx(0.1006)
    capped = wf.model_copy(update={"budget": Budget(max_cost_usd=0.09)})
    out = " ".join(cli("estimate", write(capped.model_dump_json())).out.split())
    assert "so no run stops for money" not in out
    assert "fits the $0.0900 ceiling, but its calls may hold up to $0.1006" in out
    roomy = wf.model_copy(update={"budget": Budget(max_cost_usd=0.11)})
    out = " ".join(cli("estimate", write(roomy.model_dump_json(), name="roomy.yaml")).out.split())
    assert "fits the $0.1100 ceiling, so no run stops for money" in out
    assert simulate(capped, 100, seed=1, max_cost_usd=0.09).ceiling_hits == 100
