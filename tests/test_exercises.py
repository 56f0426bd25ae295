"""The seed's exercises answered by the tool."""

from __future__ import annotations

import pytest

from trilemma import estimate, load_workflow
from trilemma.plan.exercises import debate_vs_retry, routing_sweep, ticket_spend, ticket_workflow

from .conftest import EXAMPLES


def test_32_10_1_sizes_the_multiplier(cli) -> None:
    d = cli("exercise", "32.10.1", "--json").json()
    assert d["calls_worst"] == 30
    assert d["daily_usd"]["worst"] == pytest.approx(180_000)
    assert d["levers"][0]["lever"].startswith("shrink each debate")


def test_32_10_1_builtin_spec_matches_the_example_file() -> None:
    assert (
        estimate(ticket_workflow()).to_json()
        == estimate(load_workflow(EXAMPLES / "ticket.yaml")).to_json()
    )


def test_32_10_1_first_lever_saves_the_most() -> None:
    a = ticket_spend()
    assert [lv.daily_usd_worst for lv in a.levers] == sorted(lv.daily_usd_worst for lv in a.levers)


def test_32_10_2_seed_model_routing_never_loses_on_q_per_dollar() -> None:
    r = routing_sweep()
    assert r.crossover is None
    qpd = r.baseline.quality_per_dollar or 0
    assert all((p.routed.quality_per_dollar or 0) >= qpd - 1e-9 for p in r.points)


def test_32_10_2_a_costly_imperfect_router_has_a_crossover(cli, tmp_path) -> None:
    png = tmp_path / "routing.png"
    d = cli("exercise", "32.10.2", "--plot", png, "--json").json()
    f = d["crossover_hard_fraction"]
    assert 0 < f < 1
    base = d["baseline"]["quality_per_dollar"]
    before = [p for p in d["points"] if p["hard_fraction"] < f]
    after = [p for p in d["points"] if p["hard_fraction"] > f]
    assert all(p["quality_per_dollar"] > base for p in before)
    assert all(p["quality_per_dollar"] < base for p in after)
    assert png.read_bytes().startswith(b"\x89PNG")


def test_32_10_3_flip_points() -> None:
    d = debate_vs_retry()
    names = {o.name: o.estimate for o in d.options}
    assert names["plain step"].reliability == pytest.approx(0.98**9 * 0.95)
    assert names["debate"].reliability == pytest.approx(0.98**9 * 0.99)
    assert names["retry once"].reliability == pytest.approx(0.98**9 * (1 - 0.05**2))
    assert [n for _, n in d.flips_worst] == ["plain step", "retry once", "debate + retry"]
    # a retry costs its call and, before it, the backoff (at most 0.5 s after a first failure)
    assert [b for b, _ in d.flips_worst] == pytest.approx([10.0, 11.5, 15.5])
    assert d.recommend(10.5) == "plain step"
    assert d.recommend(12.0) == "retry once"
    assert d.recommend(12.0, on="expected") == "retry once"
    assert d.recommend(9.0) is None


def test_exercise_tables_render(cli) -> None:
    for n in ("32.10.1", "32.10.2", "32.10.3"):
        r = cli("exercise", n)
        assert r.code == 0 and r.out.strip(), n


def test_an_exercise_can_be_named_by_its_last_number(cli) -> None:
    for short, full in (("1", "32.10.1"), ("2", "32.10.2"), ("3", "32.10.3")):
        assert cli("exercise", short, "--json").out == cli("exercise", full, "--json").out
    r = cli("exercise", "4")
    assert r.code == 2 and "'4' is not one of" in r.err, r.err
