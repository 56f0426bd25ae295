"""``--set PATH=VALUE``: what-if changes to a spec for one command, the file untouched."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import yaml

from trilemma.errors import UsageError
from trilemma.spec.overrides import with_overrides

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
STARTER = EXAMPLES / "starter.yaml"
DOC = {
    "version": 1,
    "models": {"gpt-4.1": {"usd_per_call": 0.01, "latency_s": 1, "p_ok": 0.9},
               "m": {"usd_per_call": 0.001, "latency_s": 1, "p_ok": 0.9}},
    "steps": [{"id": "a", "model": "m"}, {"id": "b", "model": "gpt-4.1", "after": ["a"]}],
}  # fmt: skip


def test_paths_reach_steps_by_id_or_place_and_models_named_with_dots() -> None:
    before = copy.deepcopy(DOC)
    got = with_overrides(DOC, [
        "steps.b.retries=2", "steps[0].debate={agents: 3, rounds: 2}", "models.gpt-4.1.p_ok=0.99",
        "budget.max_cost_usd=0.5", "concurrency=4", "steps.a.prompt=",
    ])  # fmt: skip
    assert before == DOC  # the parsed document is copied, not changed
    assert got["steps"][1]["retries"] == 2
    assert got["steps"][0]["debate"] == {"agents": 3, "rounds": 2}
    assert got["steps"][0]["prompt"] is None  # an empty value is null
    assert got["models"]["gpt-4.1"]["p_ok"] == 0.99
    assert got["budget"] == {"max_cost_usd": 0.5} and got["concurrency"] == 4
    assert with_overrides(DOC, []) is DOC


@pytest.mark.parametrize(("given", "words"), [
    ("retries", "write it as PATH=VALUE"),
    ("=3", "write it as PATH=VALUE"),
    ("a..b=1", "'a..b' is not a field path"),
    ("models.gpt-4.2.p_ok=1", "no model 'gpt-4' (did you mean 'gpt-4.1'?); known: gpt-4.1, m"),
    ("steps.bb.retries=1", "no step 'bb' in steps (did you mean 'b'?); known: a, b"),
    ("steps[5].retries=1", "steps has 2 entries; [5] is past them"),
    ("steps.a=1", "a whole entry of steps is not set here"),
    ("version.x=1", "version is not a mapping of fields here, so it has no 'x'"),
    ("steps.a.debate={agents: 3", "is not a YAML value"),
    ("steps.a.prompt=[&a [x, x], [*a, *a]]", "YAML aliases (*name) are not taken here"),
])  # fmt: skip
def test_a_set_that_cannot_apply_names_itself_and_the_fix(given: str, words: str) -> None:
    with pytest.raises(UsageError) as err:
        with_overrides(DOC, [given])
    assert str(err.value).startswith("--set ") and words in str(err.value)


def test_estimate_answers_the_what_if_and_says_so(cli) -> None:
    plain = cli("estimate", STARTER, "--json").json()
    worse = cli("estimate", STARTER, "--set", "models.cheap.p_ok=0.8", "--json").json()
    assert worse["reliability"] < plain["reliability"]
    assert cli("estimate", STARTER, "--set", "models.cheap.p_ok=0.945", "--json").json() != worse
    shown = cli("estimate", STARTER, "--set", "models.cheap.p_ok=0.8", "--set", "steps.check.retries=0")
    assert shown.code == 0
    assert shown.out.splitlines()[0] == ("with models.cheap.p_ok=0.8, steps.check.retries=0 "
                                         "(--set; the file is unchanged)")  # fmt: skip
    assert yaml.safe_load(STARTER.read_text())["models"]["cheap"]["p_ok"] == 0.90


def test_simulate_and_optimize_take_it_too(cli) -> None:
    sure = cli("simulate", STARTER, "--runs", "2000", "--seed", "1", "--json",
               "--set", "models.cheap.p_ok=1", "--set", "models.strong.p_ok=1").json()
    assert sure["success_rate"] == 1.0
    chain = EXAMPLES / "seed-chain.yaml"
    cheap = cli("optimize", chain, "--json", "--set", "models.premium.usd_per_call=0.001").json()
    plain = cli("optimize", chain, "--json").json()
    assert cheap["chosen"] != plain["chosen"]


def test_a_value_out_of_bounds_names_the_set_and_a_broken_file_names_the_file(cli, write) -> None:
    r = cli("estimate", STARTER, "--set", "models.cheap.p_ok=1.8")
    assert r.code == 2 and r.err.count("\n") == 1
    assert "--set models.cheap.p_ok=1.8: models.cheap.p_ok: should be less than or equal to 1" in r.err
    loop = cli("estimate", STARTER, "--set", "steps.check.after=[check]")
    assert loop.code == 2 and "step 'check' depends on itself" in loop.err
    broken = write("version: 1\nmodels: {m: {usd_per_call: 1, latency_s: 1, p_ok: 0.9}}\n"
                   "steps: [{id: a, model: m, retires: 1}]\n")  # fmt: skip
    r = cli("estimate", broken, "--set", "models.m.p_ok=0.5")
    assert r.code == 2 and f"{broken}: steps[0].retires: unknown field" in r.err
