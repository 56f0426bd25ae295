"""Routed steps: a cheap classifier picks the branch (a single call, or a debate) per attempt."""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from trilemma import estimate, optimize, parse_workflow
from trilemma.journal import Journal
from trilemma.run.session import execute
from trilemma.testing import Reply, ScriptedServer, fast_retries

from .conftest import Result, assert_simulation_agrees

ROUTED = """\
version: 1
models:
  small:   {{usd_per_call: 0.002, latency_s: {small_s}, p_ok: 0.95}}
  premium: {{usd_per_call: 0.030, latency_s: {premium_s}, p_ok: 0.985}}
steps:
  - id: answer
    model: small
    retries: 1
    route:
      easy: {{share: 0.8, model: premium}}
      hard: {{share: 0.2, model: premium, debate: {{agents: 3, rounds: 2}}, p_ok: 0.995}}
"""


def routed(small_s: float = 0.4, premium_s: float = 2.0) -> Any:
    return parse_workflow(ROUTED.format(small_s=small_s, premium_s=premium_s))


def test_the_estimate_mixes_the_branches_the_classifier_picks() -> None:
    [a] = estimate(routed()).per_step
    # the classifier names the planned branch 95% of the time, else the first: 81% easy, 19% hard
    per_attempt = 0.002 + 0.81 * 0.030 + 0.19 * 6 * 0.030
    p = 0.81 * 0.985 + 0.19 * 0.995
    assert a.p_attempt == pytest.approx(p)
    assert a.p_step == pytest.approx(1 - (1 - p) ** 2)
    assert a.cost_expected == pytest.approx(per_attempt * (1 + (1 - p)))
    assert a.cost_worst == pytest.approx((0.002 + 0.18) * 2)  # the debate, twice
    assert a.latency_s == pytest.approx(0.4 + 2 * 2.0)  # the critical path: the slower branch
    assert a.calls_expected == pytest.approx((1 + 0.81 + 0.19 * 6) * (1 + (1 - p)))
    assert a.models == ("small", "premium") and a.routes == ("easy", "hard")


def test_the_monte_carlo_agrees_with_the_estimate() -> None:
    assert_simulation_agrees(routed(), seed=4)


def test_runs_on_the_simulator_follow_the_planned_shares(tmp_path: Path) -> None:
    wf = routed(small_s=0.0001, premium_s=0.0001)
    journal = Journal(tmp_path / "j.db")
    picked: Counter[str] = Counter()
    cost = 0.0
    for seed in range(300):
        r = execute(wf, journal=journal, seed=seed)
        assert r.status == "ok"
        cost += r.cost_usd
        calls = journal.calls(r.run_id)
        first = [c for c in calls if c["attempt"] == 1]
        assert first[0]["role"].startswith("route: ") and first[0]["model"] == "small"
        label = first[0]["role"].removeprefix("route: ")
        assert any(c["role"].startswith("agent") for c in first) == (label == "hard")
        picked[label] += 1
    assert picked["hard"] / 300 == pytest.approx(0.19, abs=0.07)  # 4.4 standard errors
    assert cost / 300 == pytest.approx(estimate(wf).cost_expected, rel=0.15)


def test_the_monte_carlo_draws_the_classifiers_and_the_branchs_time_apart() -> None:
    """The executor sends the classifier's call, then the branch's: their jitters are
    apart, so the variance of the step's time is the sum of theirs (a 0.4 s and a 2 s call
    at jitter 0.5: a standard deviation of 1.09 s), not one draw over both (1.28 s)."""
    from trilemma.plan.simulate import simulate

    wf = parse_workflow("""\
version: 1
models:
  small:   {usd_per_call: 0.002, latency_s: 0.4, p_ok: 1.0, latency_jitter: 0.5}
  premium: {usd_per_call: 0.030, latency_s: 2.0, p_ok: 1.0, latency_jitter: 0.5}
steps:
  - id: answer
    model: small
    route: {easy: {share: 0.5, model: premium}, also: {share: 0.5, model: premium}}
""")
    got = simulate(wf, 200_000, seed=3, keep=True)
    assert got.samples is not None
    latency = got.samples["latency"]
    apart = (0.4**2 + 2.0**2) * (math.exp(0.25) - 1.0)
    assert latency.mean() == pytest.approx(2.4, rel=0.01)
    assert latency.std() == pytest.approx(math.sqrt(apart), rel=0.03)


def _endpoint(url: str) -> str:
    return f"""version: 1
models:
  small:   {{provider: openai, base_url: "{url}", model: tiny, usd_per_call: 0.001, latency_s: 0.1, p_ok: 0.9}}
  premium: {{provider: openai, base_url: "{url}", model: big, usd_per_call: 0.01, latency_s: 0.1, p_ok: 0.9}}
steps:
  - id: answer
    model: small
    prompt: "What is 2 + 2?"
    retries: 1
    route:
      easy: {{share: 0.8, model: premium}}
      hard: {{share: 0.2, model: premium, debate: {{agents: 2, rounds: 1, judge: true}}}}
    gate: {{regex: "4"}}
"""


@pytest.mark.parametrize(
    ("label", "roles"),
    [
        ("Hard.", ["route: hard", "agent 1 round 1", "agent 2 round 1", "judge"]),
        ("EASY", ["route: easy", "call"]),
        ("I cannot tell", ["route: easy", "call"]),  # no label: the first branch
    ],
)
def test_a_real_endpoint_classifies_then_the_branch_answers(
    tmp_path: Path, label: str, roles: list[str]
) -> None:
    def script(payload: dict[str, Any]) -> Reply:
        asked = payload["messages"][-1]["content"]
        return Reply(label if "which kind of task" in asked else "4")

    with ScriptedServer(script) as srv:
        journal = Journal(tmp_path / "j.db")
        r = execute(parse_workflow(_endpoint(srv.url)), journal=journal, seed=1)
        sent = [q["json"]["model"] for q in srv.requests]
    assert r.status == "ok" and r.outputs == {"answer": "4"}
    calls = journal.calls(r.run_id)
    assert [c["role"] for c in calls] == roles
    assert sent == ["tiny"] + ["big"] * (len(roles) - 1)
    assert r.cost_usd == pytest.approx(0.001 + 0.01 * (len(roles) - 1))


def test_a_retry_classifies_again(tmp_path: Path) -> None:
    replies = iter(["hard", "a wrong answer", "x", "y", "easy", "4"])

    def script(payload: dict[str, Any]) -> Reply:
        return Reply(next(replies))

    with ScriptedServer(script) as srv, fast_retries():
        journal = Journal(tmp_path / "j.db")
        r = execute(parse_workflow(_endpoint(srv.url)), journal=journal, seed=1)
    assert r.status == "ok" and r.steps["answer"].attempts == 2
    roles = [(c["attempt"], c["role"], c["outcome"]) for c in journal.calls(r.run_id)]
    assert roles == [(1, "route: hard", "rejected"), (1, "agent 1 round 1", "rejected"),
                     (1, "agent 2 round 1", "rejected"), (1, "judge", "rejected"),
                     (2, "route: easy", "ok"), (2, "call", "ok")]  # fmt: skip


def test_the_optimizer_searches_a_routed_steps_retries() -> None:
    wf = parse_workflow(ROUTED.format(small_s=0.4, premium_s=2.0).replace("retries: 1", "retries: 0")
                        + "budget: {min_reliability: 0.999}\n")  # fmt: skip
    r = optimize(wf)
    assert r.best is not None and r.best.steps[0].retries >= 1 and r.best.steps[0].route


@pytest.mark.parametrize(
    ("change", "says"),
    [
        (("share: 0.8", "share: 0.7"), "steps[0]: route: the branches' shares add up to 0.9"),
        (("    retries: 1\n", "    retries: 1\n    vote: {samples: 3}\n"), "move vote into a branch"),
        (("model: premium, debate", "model: premiun, debate"), "steps[0].route.hard.model: unknown model 'premiun'"),
        (("      easy: {share: 0.8, model: premium}\n", ""), "route: give two or more branches"),
        (("      easy:", "      2easy:"), "steps[0].route.2easy"),
    ],
)  # fmt: skip
def test_a_bad_route_is_one_line_naming_the_field(
    change: tuple[str, str], says: str, write: Callable[..., Path], cli: Callable[..., Result]
) -> None:
    r = cli("estimate", write(ROUTED.format(small_s=0.4, premium_s=2.0).replace(*change)))
    assert r.code == 2 and says in r.err and len(r.err.strip().splitlines()) == 1, r.err
