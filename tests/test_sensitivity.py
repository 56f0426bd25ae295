"""Sensitivity: each guess of a spec halved and doubled, the estimate worked out again."""

from __future__ import annotations

from pathlib import Path

import pytest

from trilemma import estimate, parse_workflow
from trilemma.plan.sensitivity import sensitivity

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"

SPEC = """
version: 1
models:
  big: {usd_per_call: 0.03, latency_s: 2.0, p_ok: 0.99}
  small: {usd_per_call: 0.002, latency_s: 0.5, p_ok: 0.9}
  tokens: {usd_per_1m_input: 1.0, usd_per_1m_output: 4.0, prompt_tokens: 1000,
           completion_tokens: 250, latency_s: 0.1, p_ok: 1.0}
  unused: {usd_per_call: 9, latency_s: 9, p_ok: 0.5}
steps:
  - {id: draft, model: small, retries: 1}
  - {id: write, model: big, after: [draft]}
  - {id: tidy, model: tokens, after: [write]}
  - {id: judged, model: small, p_ok: 0.8, after: [draft]}
"""


def test_each_guess_moves_what_it_should_and_nothing_else() -> None:
    wf = parse_workflow(SPEC)
    s = sensitivity(wf)
    guesses = {g.name: g for g in s.guesses}
    assert "unused.p_ok" not in guesses and "tokens.p_ok" not in guesses  # unused; never fails
    assert set(guesses) == {"big.p_ok", "big.latency_s", "big.price", "small.p_ok",
                            "small.latency_s", "small.price", "tokens.latency_s", "tokens.price",
                            "steps.judged.p_ok"}  # fmt: skip
    base = estimate(wf, draw_runs=False)
    assert s.base.cost_usd == pytest.approx(base.cost_expected)
    small = guesses["small.p_ok"]
    assert (small.low_value, small.high_value) == pytest.approx((0.95, 0.8))
    # the draft's retried step is the one that reads small's p_ok; judged has its own
    assert small.low.reliability == pytest.approx(0.99 * (1 - 0.05**2) * 0.8)
    assert small.high.reliability == pytest.approx(0.99 * (1 - 0.2**2) * 0.8)
    judged = guesses["steps.judged.p_ok"]
    assert judged.high.reliability == pytest.approx(0.99 * (1 - 0.1**2) * 0.6)
    price = guesses["big.price"]
    assert price.high.cost_usd - s.base.cost_usd == pytest.approx(0.03)
    assert price.high.reliability == s.base.reliability and price.high.latency_s == s.base.latency_s
    tokens = guesses["tokens.price"]  # token prices scaled together: the call costs twice as much
    assert tokens.value == pytest.approx(0.002) and tokens.high_value == pytest.approx(0.004)
    assert tokens.high.cost_usd - s.base.cost_usd == pytest.approx(0.002)
    late = guesses["big.latency_s"]
    assert late.high.latency_s - s.base.latency_s == pytest.approx(2.0)
    swings = [g.swing(s.base) for g in s.guesses]
    assert swings == sorted(swings, reverse=True)


def test_models_a_cascade_or_a_route_calls_count_and_the_factor_is_checked() -> None:
    cascade = parse_workflow((EXAMPLES / "cascade.yaml").read_text())
    names = {g.name.split(".")[0] for g in sensitivity(cascade).guesses}
    assert names == set(cascade.models)
    routed = parse_workflow((EXAMPLES / "routed.yaml").read_text())
    models = {g.name.split(".")[0] for g in sensitivity(routed).guesses
              if not g.name.startswith("steps.")}  # fmt: skip
    assert models == set(routed.models)
    three = {g.name: g for g in sensitivity(routed, 3.0).guesses}["premium.latency_s"]
    assert (three.low_value, three.high_value) == pytest.approx((2 / 3, 6.0))
    with pytest.raises(ValueError, match="above 1"):
        sensitivity(routed, 1.0)


def test_the_command_prints_writes_a_tornado_and_takes_set(cli, tmp_path: Path) -> None:
    starter = EXAMPLES / "starter.yaml"
    r = cli("sensitivity", starter, "--plot", tmp_path / "s.png")
    assert r.code == 0, r.err
    rows = [line for line in r.out.splitlines() if line.startswith("│")]
    assert rows[0].split("│")[1].strip() == "(the spec)" and "cheap.p_ok" in rows[1]
    assert (tmp_path / "s.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    data = cli("sensitivity", starter, "--json", "--set", "models.cheap.p_ok=1").json()
    assert data["factor"] == 2 and "cheap.p_ok" not in [g["name"] for g in data["guesses"]]
    assert set(data["guesses"][0]) == {"name", "knob", "value", "low", "high"}
    bad = cli("sensitivity", starter, "--factor", "1")
    assert bad.code == 2 and "--factor" in bad.err


def test_a_routes_shares_and_a_caches_hit_rate_are_guesses_too() -> None:
    routed = parse_workflow((EXAMPLES / "routed.yaml").read_text())
    guesses = {g.name: g for g in sensitivity(routed).guesses}
    assert "steps.answer.route.simple.share" not in guesses  # the likeliest: the rest set it
    hard = guesses["steps.answer.route.hard.share"]
    assert (hard.low_value, hard.high_value) == pytest.approx((0.075, 0.30))
    doubled = routed.model_copy(update={"steps": [routed.steps[0].model_copy(update={"route": {
        "simple": routed.steps[0].route["simple"].model_copy(update={"share": 0.70}),
        "hard": routed.steps[0].route["hard"].model_copy(update={"share": 0.30})}})]})  # fmt: skip
    assert hard.high.cost_usd == pytest.approx(estimate(doubled, draw_runs=False).cost_expected)
    cached = parse_workflow((EXAMPLES / "semantic-cache.yaml").read_text())
    hits = {g.name: g for g in sensitivity(cached).guesses}["steps.answer.cached.hit_rate"]
    assert (hits.low_value, hits.high_value) == pytest.approx((0.695, 0.0))  # misses /2 and x2
    assert hits.high.cost_usd == pytest.approx(0.03)  # every run asks the model


MEASURED = """
version: 1
models:
  small: {usd_per_call: 0.001, latency_s: 0.001, p_ok: 0.9}
  big: {usd_per_call: 0.01, latency_s: 0.002, p_ok: 0.95}
steps:
  - id: answer
    model: small
    retries: 1
    route:
      easy: {share: 0.8, model: big}
      hard: {share: 0.2, model: big, vote: {samples: 3}}
"""


def test_from_journal_sets_what_the_ledger_measured_beside_each_guess(cli, tmp_path: Path) -> None:
    """Runs whose classifier sends half the questions the hard way, against a spec planning
    a fifth: the share is contradicted ('!', holds false); small's p_ok, whose calls no gate
    or check judges alone (a classifier's), is not measured."""
    from trilemma.journal import Journal
    from trilemma.run.session import execute

    spec = tmp_path / "routed.yaml"
    spec.write_text(MEASURED)
    db = tmp_path / "j.db"
    real = parse_workflow(MEASURED.replace("share: 0.8", "share: 0.5").replace("share: 0.2", "share: 0.5"))
    with Journal(db) as journal:
        for seed in range(80):
            execute(real, journal=journal, seed=seed)
    r = cli("sensitivity", spec, "--from-journal", db, "--json")
    assert r.code == 0, r.err
    by = {g["name"]: g for g in r.json()["guesses"]}
    share = by["steps.answer.route.hard.share"]["measured"]
    assert share["holds"] is False and 0.3 < share["value"] < 0.7 and share["n"] >= 80
    assert by["small.p_ok"]["measured"] is None  # a classifier's calls say nothing of its p_ok
    assert by["small.price"]["measured"] == {"value": 0.001, "n": by["small.price"]["measured"]["n"],
                                            "ci95": None, "holds": True}  # fmt: skip
    text = cli("sensitivity", spec, "--from-journal", db)
    assert "measured [95%]" in text.out and "'!': 1 guess the ledger contradicts" in " ".join(text.out.split())
    plain = cli("sensitivity", spec)
    assert "measured" not in plain.out  # without a journal, the table as before
    missing = cli("sensitivity", spec, "--from-journal", tmp_path / "none.db")
    assert missing.code == 2 and "--from-journal" in missing.err and "no such file" in missing.err


def test_a_route_branch_s_own_p_ok_is_a_guess_too() -> None:
    """routed.yaml's debate branch plans with p_ok 0.995, 'an assumption': moving it moves
    the reliability alone (the branch is taken 15% of the time)."""
    from .conftest import EXAMPLES

    wf = parse_workflow((EXAMPLES / "routed.yaml").read_text())
    (g,) = [g for g in sensitivity(wf).guesses if g.name == "steps.answer.route.hard.p_ok"]
    assert (g.knob, g.value, g.low_value) == ("p_ok", 0.995, pytest.approx(0.9975))
    assert g.high_value == pytest.approx(0.99)
    assert g.low.reliability > sensitivity(wf).base.reliability > g.high.reliability
    assert g.low.cost_usd == pytest.approx(g.high.cost_usd, rel=0.01)


def test_from_journal_refuses_a_folder_in_one_line(cli, tmp_path: Path) -> None:
    from .conftest import EXAMPLES

    for command in (["sensitivity", EXAMPLES / "starter.yaml"], ["calibrate", "--model", "m"]):
        r = cli(*command, "--from-journal", tmp_path)
        assert r.code == 2 and f"--from-journal {tmp_path}: a folder, not a journal" in r.err
        assert r.err.count("\n") == 1
