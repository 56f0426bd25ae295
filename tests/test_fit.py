"""calibrate --from-journal: a model profile fitted to what the ledger measured."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import pytest
import yaml

from trilemma import parse_workflow
from trilemma.errors import UsageError
from trilemma.experiments.fit import (
    LedgerFit,
    ModelFit,
    RouteFit,
    StepFit,
    fit_cached,
    fit_from_journal,
    fit_model,
    fit_routes,
    fit_steps,
    judge_models,
    own_p_ok_calls,
)
from trilemma.journal import Journal
from trilemma.plan.agreement import Figure, judge
from trilemma.plan.hedge import cut
from trilemma.run.session import execute
from trilemma.spec import ModelProfile
from trilemma.testing import Reply, ScriptedServer, fast_retries

from .test_timeouts_planned import fanned_out

SIM = """
version: 1
models:
  m: {usd_per_call: 0.001, latency_s: 0.01, latency_jitter: 0.5, p_ok: 0.8,
      faults: {transient_error_rate: 0.1, rate_limit_rate: 0.05}}
steps:
  - {id: a, model: m, retries: 8}
  - {id: b, model: m, retries: 8}
  - {id: c, model: m, retries: 8}
  - {id: d, model: m, retries: 8}
  - {id: e, model: m, retries: 8, debate: {agents: 2, rounds: 1}}
  - {id: f, model: m, retries: 8, debate_rounds: 1}
"""


def simulated(folder: Path, spec: str, runs: int, **inputs: str) -> Path:
    """A journal of ``runs`` runs of ``spec`` on the simulator, seeds 0 up, retries fast."""
    path = folder / "j.db"
    journal = Journal(path)
    with fast_retries():
        for seed in range(runs):
            execute(parse_workflow(spec), journal=journal, seed=seed, inputs=inputs or None)
    return path


@pytest.fixture(scope="module")
def sim_journal(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """60 runs of SIM on the simulator: a ledger of about 500 calls."""
    return simulated(tmp_path_factory.mktemp("fit"), SIM, 60)


def test_the_fit_recovers_the_simulated_profile(sim_journal: Path) -> None:
    f = fit_from_journal(Journal(sim_journal), "m")
    assert f.runs == 60 and f.sent > 400
    lo, hi = f.ci95
    assert lo <= 0.8 <= hi  # p_ok, from the single-call steps a to d only
    assert f.judged == _answers(sim_journal, "abcd")  # not a debate's, nor a refined call's
    assert f.latency_mean_s == pytest.approx(0.01, rel=0.2)  # the timer's slack on top
    assert f.jitter == pytest.approx(0.5, abs=0.12)
    rates = f.fault_rates()
    for field, p in (("transient_error_rate", 0.1), ("rate_limit_rate", 0.05)):
        assert abs(rates[field] - p) <= 4 * math.sqrt(p * (1 - p) / f.sent), field
    assert rates["timeout_rate"] == 0.0


def _answers(path: Path, steps: str) -> int:
    rows = Journal(path).model_calls("m")
    return sum(r["step_id"] in steps and r["outcome"] in ("ok", "rejected") for r in rows)


def test_the_fitted_profile_is_a_valid_profile_that_keeps_the_price(sim_journal: Path) -> None:
    base = parse_workflow(SIM).models["m"]
    fitted = fit_from_journal(Journal(sim_journal), "m").profile(base)
    profile = ModelProfile(**fitted)
    assert profile.usd_per_call == 0.001
    assert profile.prompt_tokens == base.prompt_tokens  # per-call prices: tokens left alone
    assert profile.faults.transient_error_rate > 0 and profile.calibration is not None
    assert profile.calibration["source"] == "journal"


def test_a_real_endpoint_s_faults_and_tokens_are_counted_exactly(tmp_path: Path) -> None:
    """Scripted answers over HTTP: 10 answers of 30 prompt and 12 completion tokens, one 429,
    two 500s; a gate accepts 'yes' only: 7 of the 10 single-call attempts pass."""
    script = [Reply(status=429, headers={"Retry-After": "0"}), Reply(status=500),
              Reply(status=500)] + [Reply("yes" if i < 7 else "no", prompt_tokens=30,
                                          completion_tokens=12) for i in range(10)]  # fmt: skip
    steps = "\n".join(f"  - {{id: s{i}, model: local, retries: 0, gate: {{regex: '^yes$'}}}}"
                      for i in range(13))  # fmt: skip
    with ScriptedServer(script) as srv:
        wf = parse_workflow(f"""
version: 1
models:
  local: {{provider: openai, base_url: "{srv.url}", model: m1, usd_per_1m_input: 100.0,
           usd_per_1m_output: 200.0, latency_s: 0.5, p_ok: 0.99, timeout_s: 5}}
steps:
{steps}
concurrency: 1
""")
        journal = Journal(tmp_path / "j.db")
        with fast_retries():
            for i in range(13):  # one step a run, so a failure stops nothing else
                execute(wf.model_copy(update={"steps": [wf.steps[i]]}), journal=journal)
    f = fit_from_journal(journal, "local")
    assert f.sent == 13 and f.outcomes == {"rate_limited": 1, "transient": 2, "ok": 7, "rejected": 3}
    assert (f.accepted, f.judged) == (7, 10)
    rates = f.fault_rates()
    assert rates["rate_limit_rate"] == pytest.approx(1 / 13)
    assert rates["transient_error_rate"] == pytest.approx(2 / 13)
    fitted = ModelProfile(**f.profile(wf.models["local"]))
    assert (fitted.prompt_tokens, fitted.completion_tokens) == (30, 12)  # token prices read them
    assert fitted.p_ok == 0.7
    assert fitted.price_per_call == pytest.approx((30 * 100 + 12 * 200) / 1e6)
    assert f.cost_usd == pytest.approx(fitted.price_per_call)


def test_answers_cut_at_max_tokens_are_counted_beside_the_mean(cli: Any, tmp_path: Path) -> None:
    """Four answers of 12 tokens, one stopped at max_tokens 12 and one at its natural end
    below it: the mean is what the calls cost under that cap, and the fit says a quarter of
    them were cut (its table and --json)."""
    script = [Reply("yes", completion_tokens=12, finish_reason="length")] + [
        Reply("yes", completion_tokens=12) for _ in range(3)]  # fmt: skip
    with ScriptedServer(script) as srv:
        text = f"""
version: 1
models:
  local: {{provider: openai, base_url: "{srv.url}", model: m1, usd_per_1m_input: 1.0,
           usd_per_1m_output: 2.0, latency_s: 0.5, p_ok: 0.99, timeout_s: 5, max_tokens: 12}}
steps:
""" + "".join(f"  - {{id: s{i}, model: local}}\n" for i in range(4))
        journal = Journal(tmp_path / "j.db")
        with fast_retries():
            execute(parse_workflow(text + "concurrency: 1\n"), journal=journal)
    f = fit_from_journal(journal, "local")
    assert (f.cut, f.cut_share, f.completion_tokens) == (1, 0.25, 12)
    doc = cli("calibrate", "--model", "local", "--from-journal", tmp_path / "j.db", "--json").json()
    assert doc["tokens"]["cut_at_max_tokens"] == 0.25
    assert doc["profile"]["calibration"]["tokens"]["cut_at_max_tokens"] == 0.25
    out = " ".join(cli("calibrate", "--model", "local", "--from-journal", tmp_path / "j.db").out.split())
    assert "25.0% of answers cut at max_tokens" in out and "1 answer stopped at max_tokens" in out


def test_without_a_judged_attempt_p_ok_stays_as_given(tmp_path: Path) -> None:
    wf = parse_workflow("""
version: 1
models:
  m: {usd_per_call: 0.001, latency_s: 0.01, p_ok: 0.6}
steps:
  - {id: e, model: m, retries: 5, debate: {agents: 2, rounds: 1}}
""")
    journal = Journal(tmp_path / "j.db")
    with fast_retries():
        execute(wf, journal=journal, seed=3)  # its first attempt is wrong: two attempts
    f = fit_from_journal(journal, "m")
    assert f.judged == 0 and f.p_ok is None and f.sent == 4
    assert f.profile(wf.models["m"])["p_ok"] == 0.6


def test_cli_fits_and_writes_a_profile(cli: Any, sim_journal: Path, tmp_path: Path) -> None:
    out = tmp_path / "m.yaml"
    r = cli("calibrate", "--model", "m", "--from-journal", sim_journal, "--out", out)
    assert r.code == 0, r.err
    assert "single-call attempts answered" in r.out and "sd of log-latency" in r.out
    written = yaml.safe_load(out.read_text())["models"]["m"]
    assert ModelProfile(**written).calibration["runs"] == 60  # type: ignore[index]
    doc = cli("calibrate", "--model", "m", "--from-journal", sim_journal, "--json").json()
    assert doc["model"] == "m" and doc["profile"] == written and doc["attempts_judged"] > 100


@pytest.mark.parametrize(
    ("args", "says"),
    [
        (["--model", "m"], "give --suite (run a task suite) or --from-journal PATH"),
        (["--model", "m", "--suite", "add1", "--from-journal", "JOURNAL"], "one of the two"),
        (["--model", "nope", "--from-journal", "JOURNAL"], "no calls of model 'nope' in this journal; it has calls of m"),
        (["--model", "m", "--from-journal", "missing.db"], "--from-journal missing.db: no such file"),
    ],
)
def test_cli_refuses_what_it_cannot_fit(cli: Any, sim_journal: Path, args: list[str], says: str) -> None:
    r = cli("calibrate", *[str(sim_journal) if a == "JOURNAL" else a for a in args])
    assert r.code == 2 and says in r.err and "Traceback" not in r.err


def test_cli_base_profile_from_a_spec_without_the_model(cli: Any, sim_journal: Path, write: Any) -> None:
    spec = write("version: 1\nmodels: {x: {usd_per_call: 0.01, latency_s: 1, p_ok: 0.9}}\n"
                 "steps: [{id: a, model: x}]\n")  # fmt: skip
    r = cli("calibrate", "--model", "m", "--from-journal", sim_journal, "--spec", spec)
    assert r.code == 2 and f"--model 'm': {spec} has no such model; it has x" in r.err


def test_an_empty_journal_says_so(tmp_path: Path) -> None:
    journal = Journal(tmp_path / "j.db")
    with pytest.raises(UsageError, match="it holds no calls yet"):
        fit_from_journal(journal, "m")


def test_check_exits_1_when_the_ledger_contradicts_the_profile(
    cli: Any, sim_journal: Path, write: Any
) -> None:
    same = write(SIM)
    ok = cli("calibrate", "--model", "m", "--from-journal", sim_journal, "--spec", same, "--check")
    assert ok.code == 0, ok.out + ok.err
    assert "no drift" in ok.out and "models:" not in ok.out  # a check prints no profile
    drifted = write(SIM.replace("p_ok: 0.8", "p_ok: 0.95").replace("latency_s: 0.01", "latency_s: 0.02")
                    .replace("rate_limit_rate: 0.05", "rate_limit_rate: 0.0"))  # fmt: skip
    r = cli("calibrate", "--model", "m", "--from-journal", sim_journal, "--spec", drifted,
            "--check", "--json")  # fmt: skip
    assert r.code == 1
    # the debate (e) and the refined call (f) plan with the model's p_ok, so theirs drift too
    assert {d["field"] for d in r.json()["drift"]} == {"p_ok", "latency_s", "faults.rate_limit_rate",
                                                       "steps.e.p_ok", "steps.f.p_ok"}  # fmt: skip
    for d in r.json()["drift"]:
        lo, hi = d["ci95"]
        assert lo <= d["measured"] <= hi and not lo <= d["profile"] <= hi
    text = cli("calibrate", "--model", "m", "--from-journal", sim_journal, "--spec", drifted, "--check")
    assert "drift: p_ok is 0.95 in the spec; the ledger measured" in text.out


def test_latency_within_ten_percent_is_not_drift(sim_journal: Path) -> None:
    """Thousands of answers pin the mean to a percent; a profile a few percent off is fine."""
    f = fit_from_journal(Journal(sim_journal), "m")
    near = parse_workflow(SIM).models["m"].model_copy(
        update={"latency_s": (f.latency_mean_s or 0) * 1.08, "p_ok": f.p_ok}
    )
    assert "latency_s" not in {d.field for d in f.drift(near)}
    far = near.model_copy(update={"latency_s": (f.latency_mean_s or 0) * 1.5})
    assert "latency_s" in {d.field for d in f.drift(far)}


def test_check_needs_the_journal(cli: Any) -> None:
    r = cli("calibrate", "--model", "m", "--suite", "add1", "--check")
    assert r.code == 2 and "--check compares a profile with the ledger" in r.err


SLOW = """
version: 1
models:
  m: {usd_per_call: 0.001, latency_s: 2.0, p_ok: 1.0}
steps:
  - {id: a, model: m}
  - {id: b, model: m, after: [a]}
"""


def test_runs_in_scaled_time_are_fitted_in_the_spec_s_own_time(cli: Any, tmp_path: Path) -> None:
    """compare and sweep run 2 s calls in 20 ms; the journal says so, and the fit reads 2 s."""
    from trilemma.experiments.trials import repeat

    path = tmp_path / "j.db"
    journal = Journal(path)
    trials = repeat(parse_workflow(SLOW), 3, journal, seed=1, time_scale=0.01)
    assert all(t.status == "ok" for t in trials)
    raw = [r[0] for r in journal.db.execute("SELECT latency_s FROM calls")]
    assert len(raw) == 6 and all(0.019 < x < 0.2 for x in raw)  # measured as it ran: scaled
    f = fit_from_journal(journal, "m")
    assert f.latency_mean_s == pytest.approx(2.0, rel=0.25)
    runs = cli("runs", "--journal", path, "--json").json()
    assert [r["time_scale"] for r in runs] == [0.01] * 3
    page = cli("report", runs[0]["run_id"], "--journal", path, "--out", tmp_path / "r.html")
    assert page.code == 0, page.err
    assert "Simulated time ran 100x faster" in (tmp_path / "r.html").read_text()
    ledger = cli("ledger", runs[0]["run_id"], "--journal", path).out.replace("\n", " ")
    assert "simulated time ran 100x faster" in ledger and "0.01 of the spec's own" in ledger
    # the profile it starts from (the journaled spec's, scaled as the run was) in its own time too:
    # 0.02 s beside 2 s measured was drift, and the profile kept a 0.6 s timeout
    fitted = cli("calibrate", "--model", "m", "--from-journal", path, "--json").json()
    assert fitted["drift"] == [], fitted["drift"]
    assert "timeout_s" not in fitted["profile"]  # the default 60 s, as the spec has it
    again = cli("resume", runs[0]["run_id"], "--journal", path)
    assert again.code == 2 and "(a trial of compare or sweep, or run --time-scale)" in again.err
    assert "which a resume does not take up; run it, or the experiment, again" in again.err


def test_a_run_in_its_own_time_is_journaled_at_scale_1(cli: Any, tmp_path: Path) -> None:
    path = tmp_path / "j.db"
    with fast_retries():
        r = execute(parse_workflow(SIM), journal=Journal(path), seed=1)
    assert Journal(path).run(r.run_id)["time_scale"] == 1  # type: ignore[index]
    page = cli("report", r.run_id, "--journal", path, "--out", tmp_path / "r.html")
    assert page.code == 0 and "Simulated time ran" not in (tmp_path / "r.html").read_text()
    assert "simulated time ran" not in cli("ledger", r.run_id, "--journal", path).out


@pytest.mark.parametrize("scale", [-1.0, 1.5, float("nan")])
def test_a_time_scale_outside_0_to_1_is_refused(tmp_path: Path, scale: float) -> None:
    """(0 is a virtual clock: tests/test_virtual_clock.py.)"""
    with pytest.raises(UsageError, match=r"time_scale .*: give a factor in \(0, 1\]"):
        execute(parse_workflow(SLOW), journal=Journal(tmp_path / "j.db"), time_scale=scale)
    assert Journal(tmp_path / "j.db").runs() == []  # refused before anything was journaled


def test_timeouts_its_fitted_latency_explains_are_not_counted_twice(tmp_path: Path) -> None:
    """A jittery model with a tight timeout and no fault injected: about 10% of its calls
    time out. The fitted profile keeps that share (the planner's cut of the fitted latency
    plus its timeout_rate) rather than adding a timeout_rate of 10% on top of the cut, and
    the profile that produced the ledger shows no drift for it."""
    wf = fanned_out()
    journal = Journal(tmp_path / "j.db")
    with fast_retries():
        for seed in range(25):
            execute(wf, journal=journal, seed=seed)
    f = fit_from_journal(journal, "m")
    share = f.fault_rates()["timeout_rate"]
    assert 0.05 < share < 0.16  # 10.3% expected
    fitted = ModelProfile(**f.profile(wf.models["m"]))
    late = cut(fitted.latency_s, fitted.latency_jitter, fitted.timeout_s)[0]
    assert 0 < late < share  # the fitted tail past 20 ms explains part of them
    planned = late + (1 - late) * fitted.faults.timeout_rate
    assert planned == pytest.approx(share, abs=1e-3)
    assert not [d for d in f.drift(wf.models["m"]) if d.field.startswith("faults.")]


def test_a_rate_never_seen_has_an_interval_from_exactly_zero() -> None:
    from trilemma.plan.agreement import wilson

    assert wilson(0, 500)[0] == 0.0 and wilson(500, 500)[1] == 1.0
    lo, hi = wilson(1, 500)
    assert 0.0 < lo < 1 / 500 < hi < 0.02


def test_a_latency_interval_does_not_reach_below_zero(sim_journal: Path) -> None:
    import dataclasses

    f = fit_from_journal(Journal(sim_journal), "m")
    # three quick answers and one slow: the normal interval of their mean would dip under 0
    spread = dataclasses.replace(f, latency_s=(0.0005, 0.001, 0.0008, 0.04))
    slow = parse_workflow(SIM).models["m"].model_copy(update={"latency_s": 0.5})
    (d,) = [d for d in spread.drift(slow) if d.field == "latency_s"]
    assert d.ci95[0] == 0.0 and d.ci95[1] > d.measured > 0


ROUTED = """
version: 1
models:
  small: {usd_per_call: 0.001, latency_s: 0.001, p_ok: 0.5}
  big: {usd_per_call: 0.01, latency_s: 0.001, p_ok: 1.0}
steps:
  - id: answer
    model: small
    route:
      simple: {share: 0.2, model: big}
      hard: {share: 0.8, model: big, vote: {samples: 3}}
"""


@pytest.fixture(scope="module")
def routed_journal(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """300 runs of ROUTED: a classifier right half the time, its misses sent down 'simple'."""
    return simulated(tmp_path_factory.mktemp("routes"), ROUTED, 300)


def test_a_classifier_s_decisions_give_back_the_spec_s_shares(routed_journal: Path) -> None:
    """Picked 'simple' 60% of the time (0.5 x 0.2 + the misses' 0.5): share 0.2, not 0.6."""
    (r,) = fit_routes(Journal(routed_journal), parse_workflow(ROUTED), "small")
    assert r.step == "answer" and r.total == 300
    assert r.measured("simple") == pytest.approx(0.6, abs=0.09)
    for label, share in (("simple", 0.2), ("hard", 0.8)):
        lo, hi = r.ci95(label)
        assert lo <= share <= hi and hi - lo < 0.25, (label, lo, hi)
        assert r.share(label) == pytest.approx(share, abs=0.12)
    assert r.drift() == []
    shares = r.shares()
    assert shares is not None and math.fsum(shares.values()) == 1.0


def test_shares_the_ledger_contradicts_are_drift_with_the_set_that_plans_them(
    cli: Any, routed_journal: Path, write: Any
) -> None:
    drifted = write(ROUTED.replace("share: 0.2", "share: 0.7").replace("share: 0.8", "share: 0.3"))
    r = cli("calibrate", "--model", "small", "--from-journal", routed_journal, "--spec", drifted,
            "--check", "--json")  # fmt: skip
    assert r.code == 1, r.err
    doc = r.json()
    # two branches are one test, named by the second (the first takes what it leaves)
    assert [d["field"] for d in doc["drift"]] == ["steps.answer.route.hard.share"]
    assert doc["drift"][0]["p_value"] < 1e-6
    (route,) = doc["routes"]
    assert route["decisions"] == 300 and route["classifier_p_ok"] == 0.5
    assert [b["branch"] for b in route["branches"]] == ["simple", "hard"]
    assert route["set"]["simple"] + route["set"]["hard"] == 1.0
    text = cli("calibrate", "--model", "small", "--from-journal", routed_journal, "--spec", drifted)
    assert text.code == 0 and "Routes 'small' classifies for (p_ok 0.5)" in text.out
    assert "drift: steps.answer.route.hard.share is 0.3 in the spec" in text.out
    hint = next(line for line in text.out.splitlines() if line.startswith("to plan with"))
    flags = hint.split(str(drifted), 1)[1].split(" (or edit")[0].split()
    planned = cli("estimate", drifted, *flags, "--json")  # the --set it prints is taken
    assert planned.code == 0, planned.err
    kept = cli("calibrate", "--model", "small", "--from-journal", routed_journal, "--spec", drifted,
               "--check")  # fmt: skip
    assert kept.code == 1 and "to plan with what was measured" in kept.out


def test_the_set_a_check_prints_passes_the_check_it_is_given_to(
    cli: Any, routed_journal: Path, write: Any
) -> None:
    """calibrate takes --set as estimate does: the drift's own --set, given back, is no
    drift; a user's --set the ledger contradicts is drift, and is not in the line to copy;
    one it does not stays there. On the newest journaled spec too (no --spec)."""
    drifted = write(ROUTED.replace("share: 0.2", "share: 0.7").replace("share: 0.8", "share: 0.3"))
    first = cli("calibrate", "--from-journal", routed_journal, "--spec", drifted, "--check")
    hint = next(line for line in first.out.splitlines() if line.startswith("to plan with"))
    flags = hint.split(str(drifted), 1)[1].split(" (or edit")[0].split()
    again = cli("calibrate", "--from-journal", routed_journal, "--spec", drifted, *flags, "--check",
                "--json")  # fmt: skip
    assert first.code == 1 and again.code == 0, again.out + again.err
    assert again.json()["drift"] == [] and again.json()["overrides"] == flags[1::2]
    mixed = cli("calibrate", "--from-journal", routed_journal, "--spec", drifted, "--check",
                "--set", "models.small.latency_s=0.5", "--set", "models.big.usd_per_call=0.01")  # fmt: skip
    assert mixed.code == 1
    out = mixed.out.splitlines()
    assert out[0] == ("with models.small.latency_s=0.5, models.big.usd_per_call=0.01 (--set; the "
                      "file is unchanged)")  # fmt: skip
    assert any(line.startswith("drift: latency_s is 0.5 in the spec") for line in out)
    line = next(line for line in out if line.startswith("to plan with"))
    assert "--set models.big.usd_per_call=0.01 --set steps.answer.route.simple.share=" in line
    assert "latency_s" not in line
    journaled = cli("calibrate", "--from-journal", routed_journal, "--check", "--json",
                    "--set", "steps.answer.route.simple.share=0.7",
                    "--set", "steps.answer.route.hard.share=0.3")  # fmt: skip
    assert journaled.code == 1
    assert [d["field"] for d in journaled.json()["drift"]] == ["steps.answer.route.hard.share"]
    bad = cli("calibrate", "--from-journal", routed_journal, "--set", "models.nope.p_ok=0.5")
    assert bad.code == 2 and "--set 'models.nope.p_ok=0.5': no model 'nope'" in bad.err
    bad = cli("calibrate", "--from-journal", routed_journal, "--set", "steps.answer.route.hard.share=0.9")
    assert bad.code == 2 and "the branches' shares add up to 1.1; make them add up to 1" in bad.err
    suite = cli("calibrate", "--model", "m", "--suite", "add1", "--set", "models.nope.p_ok=0.5")
    assert suite.code == 2 and "no model 'nope'" in suite.err  # before anything is sent


def test_a_step_asked_otherwise_in_another_spec_is_another_step(routed_journal: Path) -> None:
    """A spec whose 'answer' routes to other branches, or is one call, is not fitted to the
    runs of ROUTED's 'answer' (one compare's journal holds both: the examples share ids)."""
    renamed = parse_workflow(ROUTED.replace("hard:", "tricky:"))
    (r,) = fit_routes(Journal(routed_journal), renamed, "small")
    assert r.total == 0 and r.shares() is None and r.drift() == []
    voting = parse_workflow(ROUTED.replace("vote: {samples: 3}", "vote: {samples: 5}"))
    assert fit_routes(Journal(routed_journal), voting, "small")[0].total == 0
    shares = parse_workflow(ROUTED.replace("share: 0.2", "share: 0.6").replace("share: 0.8", "share: 0.4"))
    assert fit_routes(Journal(routed_journal), shares, "small")[0].total == 300  # guesses differ only


def test_a_model_that_routes_nothing_has_no_routes(cli: Any, routed_journal: Path) -> None:
    assert fit_routes(Journal(routed_journal), parse_workflow(ROUTED), "big") == []
    doc = cli("calibrate", "--model", "big", "--from-journal", routed_journal, "--json").json()
    assert doc["routes"] == []
    text = cli("calibrate", "--model", "big", "--from-journal", routed_journal)
    assert "Routes" not in text.out


def test_fitted_shares_clamp_at_0_and_1_and_still_add_up_to_1() -> None:
    """1 decision of 100 for the first branch, under the 10% the misses alone send there."""
    r = RouteFit("s", 0.9, {"a": 0.5, "b": 0.5}, {"a": 1, "b": 99})
    assert r.share("a") == 0.0 and r.share("b") == 1.0
    assert r.shares() == {"a": 0.0001, "b": 0.9999}  # a spec's share is above 0
    parse_workflow(ROUTED.replace("share: 0.2", "share: 0.0001").replace("share: 0.8", "share: 0.9999"))
    assert [d.field for d in r.drift()] == ["steps.s.route.b.share"]
    assert RouteFit("s", 0.9, {"a": 0.5, "b": 0.5}, {"a": 0, "b": 0}).shares() is None
    odd = RouteFit("s", 0.7, {"a": 0.3, "b": 0.3, "c": 0.4}, {"a": 37, "b": 29, "c": 41})
    shares = odd.shares()
    assert shares is not None and math.fsum(shares.values()) == 1.0


CACHED = """
version: 1
inputs: {question: null}
models:
  small: {usd_per_call: 0.002, latency_s: 0.001, p_ok: 1.0}
steps:
  - {id: answer, model: small, prompt: "Answer: {question}", cached: {hit_rate: 0.9}}
  - {id: polish, model: small, after: [answer], prompt: "Polish: {answer}"}
"""


@pytest.fixture(scope="module")
def cached_journal(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """30 runs of CACHED: ten questions asked three times each, so 20 answers come cached."""
    path = tmp_path_factory.mktemp("cached") / "j.db"
    journal = Journal(path)
    for rnd in range(3):
        for q in range(10):
            execute(parse_workflow(CACHED), journal=journal, seed=rnd, inputs={"question": f"q{q}"})
    return path


def test_a_cached_step_s_hit_rate_is_the_share_of_runs_the_cache_served(cached_journal: Path) -> None:
    (c,) = fit_cached(Journal(cached_journal), parse_workflow(CACHED), "small")
    assert (c.step, c.runs, c.hits, c.hit_rate) == ("answer", 30, 20, 0.9)
    lo, hi = c.ci95
    assert c.measured == pytest.approx(2 / 3) and lo < 2 / 3 < hi < 0.9
    assert [d.field for d in c.drift()] == ["steps.answer.cached.hit_rate"]
    assert c.set_flag() == "steps.answer.cached.hit_rate=0.6667"
    near = parse_workflow(CACHED.replace("hit_rate: 0.9", "hit_rate: 0.7"))
    assert fit_cached(Journal(cached_journal), near, "small")[0].drift() == []


def test_cli_names_a_hit_rate_the_ledger_contradicts_and_the_set_that_plans_it(
    cli: Any, cached_journal: Path, write: Any
) -> None:
    spec = write(CACHED.replace("cached: {hit_rate: 0.9}", "cached: true"))  # plans every run a hit
    r = cli("calibrate", "--model", "small", "--from-journal", cached_journal, "--spec", spec,
            "--check", "--json")  # fmt: skip
    assert r.code == 1, r.err
    doc = r.json()
    assert [d["field"] for d in doc["drift"]] == ["steps.answer.cached.hit_rate"]
    assert doc["cached"] == [{"step": "answer", "hit_rate": 1.0, "runs": 30, "hits": 20,
                              "measured": 0.666667, "ci95": doc["cached"][0]["ci95"]}]  # fmt: skip
    assert doc["routes"] == []
    text = cli("calibrate", "--model", "small", "--from-journal", cached_journal, "--spec", spec)
    assert "Cached steps on 'small'" in text.out
    hint = next(line for line in text.out.splitlines() if line.startswith("to plan with"))
    assert "--set 'steps.answer.cached={hit_rate: 0.6667}'" in hint  # a mapping for cached: true
    planned = cli("estimate", spec, "--set", "steps.answer.cached={hit_rate: 0.6667}", "--json")
    assert planned.code == 0 and planned.json()["cost_usd"]["expected"] == pytest.approx(
        0.002 + 0.002 / 3, rel=1e-3)  # polish always, answer on a third of the runs


def test_token_counts_are_drift_only_where_token_prices_read_them() -> None:
    """Calls of about 1,000 prompt tokens against a guess of 100: drift under token prices,
    nothing under a price per call (the counts then bill nothing); 5% off is not drift."""
    counts = tuple((990 + i % 21, 40) for i in range(30))
    f = LedgerFit("m", "j.db", 1, 30, (0.1,) * 30, 0, 0, {"ok": 30}, 1000.0, 40.0, 0.001,
                  token_counts=counts)  # fmt: skip
    tokens = ModelProfile(usd_per_1m_input=1.0, usd_per_1m_output=2.0, latency_s=0.1, p_ok=0.9,
                          prompt_tokens=100, completion_tokens=42)  # fmt: skip
    assert [d.field for d in f.drift(tokens)] == ["prompt_tokens"]  # 42 is within 10% of 40
    per_call = tokens.model_copy(update={"usd_per_call": 0.001, "usd_per_1m_input": None,
                                         "usd_per_1m_output": None})  # fmt: skip
    assert f.drift(per_call) == []


STEPS = """
version: 1
models:
  m: {usd_per_call: 0.001, latency_s: 0.001, p_ok: 0.6}
  other: {usd_per_call: 0.001, latency_s: 0.001, p_ok: 1.0}
steps:
  - {id: plain, model: m}
  - {id: d, model: m, retries: 2, debate: {agents: 2, rounds: 2}, p_ok: 0.9}
  - {id: v, model: m, retries: 2, vote: {samples: 3}}
  - {id: own, model: m, retries: 2, p_ok: 0.3}
  - id: r
    model: other
    retries: 2
    route:
      a: {share: 0.5, model: m, p_ok: 0.8}
      b: {share: 0.5, model: other}
"""


@pytest.fixture(scope="module")
def steps_journal(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """150 runs of STEPS on the simulator (each step's attempts judged by its check)."""
    return simulated(tmp_path_factory.mktemp("steps"), STEPS, 150)


def test_a_debate_s_a_vote_s_and_a_step_s_own_p_ok_are_fitted_to_their_attempts(
    steps_journal: Path,
) -> None:
    fits = {(f.step, f.branch): f for f in fit_steps(Journal(steps_journal), parse_workflow(STEPS), "m")}
    assert set(fits) == {("d", None), ("v", None), ("own", None), ("r", "a")}  # not plain, nor b
    assert (fits["d", None].kind, fits["v", None].kind) == ("debate", "vote")
    for f in fits.values():
        lo, hi = f.ci95
        assert f.judged > 70 and lo <= f.p_ok <= hi, f
    assert fits["v", None].own is False and fits["v", None].p_ok == 0.6  # its model's
    assert fits["r", "a"].field == "steps.r.route.a.p_ok" and fits["own", None].field == "steps.own.p_ok"
    assert fits["r", "a"].judged < 150  # only the attempts that went down 'a'


def test_a_step_s_p_ok_the_ledger_contradicts_is_drift_with_its_set(
    cli: Any, steps_journal: Path, write: Any
) -> None:
    spec = write(STEPS.replace("p_ok: 0.9}", "p_ok: 0.995}"))  # the debate's guess, too rosy
    r = cli("calibrate", "--model", "m", "--from-journal", steps_journal, "--spec", spec, "--check",
            "--json")  # fmt: skip
    assert r.code == 1
    assert [d["field"] for d in r.json()["drift"]] == ["steps.d.p_ok"]
    assert {(s["step"], s["branch"]) for s in r.json()["steps"]} == {("d", None), ("v", None),
                                                                      ("own", None), ("r", "a")}  # fmt: skip
    text = cli("calibrate", "--model", "m", "--from-journal", steps_journal, "--spec", spec)
    hint = next(line for line in text.out.splitlines() if line.startswith("to plan with"))
    flag = hint.split("--set ")[1].split()[0]
    assert flag.startswith("steps.d.p_ok=0.")
    assert cli("estimate", spec, "--set", flag).code == 0


def test_an_endpoint_s_answers_no_gate_reads_are_not_judged(tmp_path: Path) -> None:
    """Two debates on an endpoint: the ungated one's attempts say nothing of its p_ok; the
    gated one's do (a 'no' fails the gate: one of its two attempts)."""
    script = [Reply("yes"), Reply("yes"), Reply("no"), Reply("no"), Reply("yes"), Reply("yes")]
    with ScriptedServer(script) as srv:
        wf = parse_workflow(f"""
version: 1
models:
  e: {{provider: openai, base_url: "{srv.url}", model: m1, usd_per_call: 0.001, latency_s: 0.1,
      p_ok: 0.9, timeout_s: 5}}
steps:
  - {{id: free, model: e, debate: {{agents: 2, rounds: 1}}}}
  - {{id: gated, model: e, after: [free], retries: 1, debate: {{agents: 2, rounds: 1}},
      gate: {{regex: '^yes$'}}}}
concurrency: 1
""")
        journal = Journal(tmp_path / "j.db")
        with fast_retries():
            execute(wf, journal=journal)
    fits = {f.step: f for f in fit_steps(journal, wf, "e")}
    assert (fits["free"].judged, fits["gated"].judged, fits["gated"].accepted) == (0, 2, 1)


def test_the_model_s_p_ok_leaves_out_the_steps_with_their_own(steps_journal: Path) -> None:
    """'own' (p_ok 0.3) and branch 'a' (0.8) answer on m by their own figures: m's p_ok (0.6)
    is fitted to 'plain' alone; counted in, the 0.3 would drag it below its interval."""
    wf, journal = parse_workflow(STEPS), Journal(steps_journal)
    own = own_p_ok_calls(journal, wf, "m")
    by_step = {}
    for r in journal.model_calls("m"):
        by_step.setdefault(r["step_id"], set()).add(own(r))
    assert by_step["own"] == {True} and by_step["plain"] == {False}  # d and v: not single calls
    assert by_step["r"] == {True}  # branch a's calls (b is on another model)
    kept = fit_from_journal(journal, "m", own)
    lo, hi = kept.ci95
    assert kept.judged == 150 and lo <= 0.6 <= hi
    mixed = fit_from_journal(journal, "m")
    assert mixed.judged > 250 and not mixed.ci95[0] <= 0.6 <= mixed.ci95[1]


def test_an_attempt_cut_off_in_flight_is_not_judged(tmp_path: Path) -> None:
    """A two-round debate whose first round answered and whose second is in flight at the
    deadline: the attempt was never judged, so it counts neither way (its first round's
    answers are 'ok' in the ledger, its second's 'cancelled')."""
    spec = """
version: 1
models:
  m: {usd_per_call: 0.001, latency_s: LATENCY, p_ok: 0.9}
steps:
  - {id: d, model: m, debate: {agents: 2, rounds: 2}}
"""
    whole = parse_workflow(spec.replace("LATENCY", "0.01"))
    journal = Journal(tmp_path / "j.db")
    execute(whole, journal=journal, seed=1, deadline_s=0.5)
    (d,) = fit_steps(journal, whole, "m")
    assert (d.judged, d.accepted) == (1, 1)  # the debate ended well before the deadline
    cut = parse_workflow(spec.replace("LATENCY", "0.3"))
    journal = Journal(tmp_path / "k.db")
    assert execute(cut, journal=journal, seed=1, deadline_s=0.45).status == "deadline"
    outcomes = sorted(c["outcome"] for c in journal.step_attempt_calls("d"))
    assert outcomes == ["cancelled", "cancelled", "ok", "ok"]
    (d,) = fit_steps(journal, cut, "m")
    assert d.judged == 0


def test_one_miss_in_ten_at_0_995_is_chance_not_drift() -> None:
    """A debate planned at 0.995 that failed once in twenty: 0.995 lies outside the Wilson
    interval (to 0.991), which used to call it drift; the exact test gives p = 0.095, and a
    miss in twenty happens to 9.5% of such debates. Twice in ten (p = 0.0011) is drift."""
    once = StepFit("answer", "hard", "debate", 0.995, True, judged=20, accepted=19)
    (f,) = once.figures()
    assert f.outside and f.p_value == pytest.approx(0.0954, abs=1e-4)
    assert once.drift() == []
    twice = StepFit("answer", "hard", "debate", 0.995, True, judged=10, accepted=8)
    assert [d.field for d in twice.drift()] == ["steps.answer.route.hard.p_ok"]


def _figure(field: str, p_value: float, material: bool = True) -> Figure:
    return Figure(field, 0.5, 0.4, (0.41, 0.6), p_value, material)


def test_figures_are_weighed_together_so_more_guesses_raise_no_more_alarms() -> None:
    """Holm's test: each figure at 3% would be drift alone; five of them weighed at once are
    not (the smallest must pass 1%); one at 0.1% still is, and so is the next under its mark."""
    assert [d.field for d in judge([_figure("a", 0.03)])] == ["a"]
    assert judge([_figure(k, 0.03) for k in "abcde"]) == []
    five = [_figure("a", 0.001), _figure("b", 0.011), *(_figure(k, 0.5) for k in "cde")]
    assert [d.field for d in judge(five)] == ["a", "b"]  # 0.001 <= 0.01, then 0.011 <= 0.0125
    assert judge([_figure("a", 1e-9, material=False)]) == []  # sure, but within the tolerance
    never = Figure("faults.timeout_rate", 0.0, 0.01, (0.002, 0.05), 0.0, certain=True)
    assert judge([_figure("a", 0.03), never]) == [_figure("a", 0.03), never]  # weighs one


def test_one_check_weighs_every_model_s_figures_together() -> None:
    """Two models, a figure each at p = 0.043: drift for each model alone, not in one check."""
    base = ModelProfile(usd_per_call=0.01, latency_s=1.0, p_ok=0.9)
    fit = LedgerFit(model="m", journal="j", runs=1, sent=20, latency_s=(), accepted=15,
                    judged=20, outcomes={"ok": 20}, prompt_tokens=None, completion_tokens=None,
                    cost_usd=None)  # fmt: skip
    p_ok, *faults = fit.figures(base)
    assert 0.025 < p_ok.p_value < 0.05  # 15 of 20 against 0.9
    # no fault planned, none seen: certain, not weighed (p_ok is weighed alone)
    assert [(f.p_value, f.certain) for f in faults] == [(1.0, True)] * 3
    one = ModelFit(fit, base)
    assert [d.field for d in one.drift()] == ["p_ok"]
    assert judge_models({"a": one.figures(), "b": one.figures()}) == {"a": [], "b": []}
    assert judge_models({"a": one.figures()}) == {"a": one.drift()}


def test_a_figure_outside_its_interval_but_not_drift_is_named_as_chance() -> None:
    from trilemma.report.tables import drift_lines

    (f,) = StepFit("answer", None, "debate", 0.995, True, judged=10, accepted=9).figures()
    lines = drift_lines([], "premium", [f], 7)
    assert lines[0] == "no drift: the ledger contradicts no figure of 'premium'"
    assert lines[1].startswith("steps.answer.p_ok: 0.995 lies outside the 95% interval [0.5958, ")
    assert lines[1].endswith("(p = 0.049), which chance explains: not drift (7 figures weighed "
                             "at once by Holm's test, 5% in all)")  # fmt: skip
    said = drift_lines([f], "premium", [f], 1)
    assert said == ["drift: steps.answer.p_ok is 0.995 in the spec; the ledger measured 0.9 "
                    "[0.5958, 0.9821] (p = 0.049)"]  # fmt: skip


def test_one_compare_s_journal_keeps_the_examples_answer_steps_apart(tmp_path: Path) -> None:
    """single.yaml's 'answer' is one call, debate.yaml's a debate, both on premium: the
    debate's p_ok is fitted to the debate's attempts alone."""
    from trilemma.experiments.trials import time_scaled

    from .conftest import EXAMPLES

    single, debate = (time_scaled(parse_workflow((EXAMPLES / f).read_text()), 0.001)
                      for f in ("single.yaml", "debate.yaml"))  # fmt: skip
    journal = Journal(tmp_path / "j.db")
    for seed in range(12):
        execute(single, journal=journal, seed=seed)
    for seed in range(5):
        execute(debate, journal=journal, seed=seed)
    (d,) = fit_steps(journal, debate, "premium")
    attempts = {(c["run_id"], c["attempt"]) for run in journal.runs()
                for c in journal.calls(run["run_id"]) if c["role"].startswith("agent")}  # fmt: skip
    assert d.judged == len(attempts) and 5 <= d.judged < 12
    # and premium's own p_ok keeps single.yaml's calls: only the debate plans by its own
    assert fit_model(journal, "premium", debate.models["premium"], debate).fit.judged == 12


def test_a_model_s_p_ok_keeps_the_branches_that_plan_with_it(tmp_path: Path) -> None:
    """Two one-call branches on 'big' (p_ok 0.9), one planned at 0.5 of its own: big's p_ok
    is fitted to the other branch's attempts, told apart by the classifier's rows."""
    text = """
version: 1
models:
  small: {usd_per_call: 0.001, latency_s: 0.001, p_ok: 1.0}
  big: {usd_per_call: 0.01, latency_s: 0.001, p_ok: 0.9}
steps:
  - id: answer
    model: small
    route:
      weak: {share: 0.5, model: big, p_ok: 0.5}
      strong: {share: 0.5, model: big}
"""
    wf = parse_workflow(text)
    journal = Journal(simulated(tmp_path, text, 200))
    fitted = fit_model(journal, "big", wf.models["big"], wf).fit
    strong = sum(c["role"] == "route: strong" for c in journal.model_calls("small"))
    assert fitted.judged == strong and 60 < strong < 140
    lo, hi = fitted.ci95
    assert lo <= 0.9 <= hi  # the weak branch's 0.5 would drag it far below
    (weak,) = [f for f in fit_steps(journal, wf, "big") if f.branch == "weak"]
    assert weak.judged == 200 - strong and weak.ci95[0] <= 0.5 <= weak.ci95[1]


def test_a_model_s_fit_parses_the_journal_s_specs_once(steps_journal: Path, monkeypatch: Any) -> None:
    import trilemma.spec

    parsed = []
    real = trilemma.spec.parse_workflow
    monkeypatch.setattr(trilemma.spec, "parse_workflow",
                        lambda *a, **k: parsed.append(1) or real(*a, **k))  # fmt: skip
    reads: list[str] = []
    real_calls = Journal.step_attempt_calls
    monkeypatch.setattr(Journal, "step_attempt_calls",
                        lambda self, sid: reads.append(sid) or real_calls(self, sid))  # fmt: skip
    wf = parse_workflow(STEPS)
    fit_model(Journal(steps_journal), "m", wf.models["m"], wf)
    assert len(parsed) == 1  # one spec journaled, read once for the four fits
    assert sorted(reads) == ["d", "own", "r", "v"]  # each step's calls once (r: own p_ok and its branch)


def test_without_model_every_model_of_the_spec_is_fitted_and_checked(
    cli: Any, steps_journal: Path, write: Any
) -> None:
    spec = write(STEPS.replace("p_ok: 0.9}", "p_ok: 0.995}"))  # the debate's guess, too rosy
    r = cli("calibrate", "--from-journal", steps_journal, "--spec", spec, "--check", "--json")
    assert r.code == 1, r.err
    doc = r.json()
    assert doc["spec"] == str(spec) and [m["model"] for m in doc["models"]] == ["m", "other"]
    assert [(d["model"], d["field"]) for d in doc["drift"]] == [("m", "steps.d.p_ok")]
    assert doc["models"][0]["steps"] and doc["models"][0]["profile"]["p_ok"] > 0
    text = cli("calibrate", "--from-journal", steps_journal, "--spec", spec, "--out", spec.parent / "p.yaml")
    assert text.code == 0 and "Model 'm'" in text.out and "Model 'other'" in text.out
    assert set(yaml.safe_load((spec.parent / "p.yaml").read_text())["models"]) == {"m", "other"}
    journaled = cli("calibrate", "--from-journal", steps_journal, "--check", "--json")  # its own spec
    assert journaled.code == 0 and journaled.json()["drift"] == []


def test_without_model_a_spec_none_of_whose_models_ran_is_refused(
    cli: Any, steps_journal: Path, write: Any
) -> None:
    spec = write("version: 1\nmodels: {x: {usd_per_call: 0.01, latency_s: 1, p_ok: 0.9}}\n"
                 "steps: [{id: a, model: x}]\n")  # fmt: skip
    r = cli("calibrate", "--from-journal", steps_journal, "--spec", spec)
    assert r.code == 2 and "no calls of any model of" in r.err and "it has calls of m, other" in r.err
    assert "give the spec its runs ran (--spec FILE) or --model NAME" in r.err
    suite = cli("calibrate", "--suite", "add1")
    assert suite.code == 2 and "give --model NAME" in suite.err


DEBATE = """
version: 1
models:
  m: {usd_per_call: 0.001, latency_s: 0.001, p_ok: 0.985}
steps:
  - {id: answer, model: m, debate: {agents: 3, rounds: 2}, p_ok: 0.995}
"""


def test_check_passes_a_miss_chance_explains_and_fails_one_it_does_not(
    cli: Any, tmp_path: Path, write: Any
) -> None:
    """Ten debates drawn at 0.9 (seeds 0-9: nine accepted), checked against the 0.995 the spec
    plans: outside the 95% interval, but p = 0.049 with the model's latency weighed beside
    it (Holm's first mark: 2.5%), so exit 0 with the miss named as chance (judged at its
    interval alone, as before, it exited 1). Twenty (16 accepted): drift."""
    spec = write(DEBATE)
    ten = simulated(tmp_path / "ten", DEBATE.replace("p_ok: 0.995", "p_ok: 0.9"), 10)
    r = cli("calibrate", "--from-journal", ten, "--spec", spec, "--check")
    assert r.code == 0, r.out + r.err
    assert "no drift: the ledger contradicts no figure of 'm'" in r.out
    assert "steps.answer.p_ok: 0.995 lies outside the 95% interval [0.5958, 0.9821] (p = 0.049), " \
           "which chance explains" in " ".join(r.out.split())
    doc = cli("calibrate", "--from-journal", ten, "--spec", spec, "--check", "--json").json()
    assert doc["drift"] == [] and doc["figures_weighed"] == 2  # the model's latency, the step's p_ok
    twenty = simulated(tmp_path / "twenty", DEBATE.replace("p_ok: 0.995", "p_ok: 0.9"), 20)
    off = cli("calibrate", "--from-journal", twenty, "--spec", spec, "--check", "--json")
    assert off.code == 1
    (d,) = off.json()["drift"]
    assert d["field"] == "steps.answer.p_ok" and d["measured"] == 0.8 and d["p_value"] < 1e-4


def test_a_real_endpoint_s_fit_counts_only_the_runs_it_answered(cli: Any, tmp_path: Path) -> None:
    """One name, four models over the journal's life: m1 at server A (4 runs, one of them
    naming its URL with a trailing slash), m1 at B (3),
    m2 at A (1) and the simulator (2). A's m1 is fitted to its own runs alone, the others
    left out and counted; a simulated profile (a guess) is fitted to every run, as before.
    A profile nothing in the journal answered is refused, naming what did."""
    steps = ("steps:\n  - {id: a, model: api, gate: {regex: '^yes$'}, sim: {ok: 'yes', bad: 'no'}}\n"
             "  - {id: own, model: api, p_ok: 0.9, gate: {regex: '^yes$'}, sim: {ok: 'yes', bad: 'no'}}\n")  # fmt: skip

    def spec(profile: str) -> str:
        return f"version: 1\nmodels:\n  api: {{{profile}usd_per_call: 0.001, latency_s: 0.05, p_ok: 0.5}}\n{steps}"

    def at(url: str, model: str = "m1") -> str:
        return spec(f"provider: openai, base_url: \"{url}\", model: {model}, ")

    db = tmp_path / "j.db"
    journal = Journal(db)
    with ScriptedServer(lambda payload: Reply("yes")) as a, ScriptedServer(lambda payload: Reply("no")) as b:
        plan = [(at(a.url), 3), (at(a.url + "/"), 1), (at(b.url), 3), (at(a.url, "m2"), 1), (spec(""), 2)]
        for seed, text in enumerate(t for t, n in plan for _ in range(n)):
            execute(parse_workflow(text), journal=journal, seed=seed)
        ours = parse_workflow(at(a.url))
        (tmp_path / "a.yaml").write_text(at(a.url))
        (tmp_path / "c.yaml").write_text(at("http://127.0.0.1:9/v1"))
        (tmp_path / "sim.yaml").write_text(spec(""))
        fitted = fit_model(journal, "api", ours.models["api"], ours)
        assert (fitted.fit.runs, fitted.fit.judged, fitted.fit.accepted) == (4, 4, 4)
        assert fitted.fit.left_out == ((f"m1 at {b.url}", 3), ("the simulator", 2), (f"m2 at {a.url}", 1))
        (own,) = fitted.steps  # the step with its own p_ok: A's runs alone, each accepted
        assert (own.judged, own.accepted) == (4, 4)
        guess = parse_workflow(spec(""))
        pooled = fit_model(journal, "api", guess.models["api"], guess)
        assert pooled.fit.runs == 10 and pooled.fit.left_out == () and pooled.fit.judged == 10
        r = cli("calibrate", "--model", "api", "--from-journal", db, "--spec", tmp_path / "a.yaml")
        assert r.code == 0, r.err
        assert "left out: the runs whose spec has 'api' answered by m1 at" in " ".join(r.out.split())
        r = cli("calibrate", "--model", "api", "--from-journal", db, "--spec", tmp_path / "a.yaml", "--json")
        assert r.json()["runs_left_out"] == {f"m1 at {b.url}": 3, f"m2 at {a.url}": 1, "the simulator": 2}
        r = cli("calibrate", "--model", "api", "--from-journal", db, "--spec", tmp_path / "sim.yaml", "--json")
        assert r.json()["runs"] == 10 and r.json()["runs_left_out"] == {}
        r = cli("calibrate", "--model", "api", "--from-journal", db, "--spec", tmp_path / "c.yaml")
        assert r.code == 2 and r.err.count("\n") == 1, r.err
        assert ("no call of model 'api' here was answered by m1 at http://127.0.0.1:9/v1, as the "
                f"profile fitted says; the journal's were answered by m1 at {a.url} in 4 runs; "
                f"m1 at {b.url} in 3 runs; the simulator in 2 runs; m2 at {a.url} in 1 run: give the "
                "spec those runs ran (--spec FILE)") in r.err  # fmt: skip
