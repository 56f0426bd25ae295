"""Task suites, calibration and the reliability cliff, on the simulator (fast, offline)."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from trilemma import load_workflow
from trilemma.experiments.tasks import SUITES, final_number
from trilemma.journal import Journal

SIM_SPEC = """\
version: 1
models:
  sim: {usd_per_call: 0.002, latency_s: 0.001, p_ok: 0.8}
steps: [{id: a, model: sim}]
"""


@pytest.mark.parametrize("name", sorted(SUITES))
def test_every_suite_is_seeded_and_checks_its_own_answer(name: str) -> None:
    suite = SUITES[name]
    a, b = suite.generate(20, seed=3), suite.generate(20, seed=3)
    assert [t.prompt for t in a] == [t.prompt for t in b]
    assert [t.prompt for t in a] != [t.prompt for t in suite.generate(20, seed=4)]
    for t in a:
        assert t.check(t.answer)
        assert t.few_shot.rstrip().endswith("A:")
        assert not t.check("I do not know")


@pytest.mark.parametrize(
    ("text", "number"),
    [
        ("The answer is 5.", "5"),
        ("5 + 3 = 8", "8"),
        ("  42 ", "42"),
        ("It is 1,024.", "1024"),
        ("none", None),
    ],
)
def test_numbers_are_read_through_harmless_formatting(text: str, number: str | None) -> None:
    assert final_number(text) == number


def test_checkers_reject_near_misses() -> None:
    add = SUITES["add2"].generate(1, seed=1)[0]
    assert not add.check(str(int(add.answer) + 1))
    sentiment = SUITES["sentiment"].generate(1, seed=1)[0]
    assert not sentiment.check("positive or negative")
    js = SUITES["json"].generate(1, seed=1)[0]
    assert js.check(f"```json\n{js.answer}\n```")
    assert not js.check(js.answer.replace('"age": ', '"age": 1'))


def test_calibrate_measures_the_simulator_and_writes_a_profile(cli, tmp_path: Path) -> None:
    spec = tmp_path / "sim.yaml"
    spec.write_text(SIM_SPEC)
    out = tmp_path / "profile.yaml"
    r = cli(
        "calibrate",
        "--model",
        "sim",
        "--suite",
        "add1",
        "--n",
        "400",
        "--spec",
        spec,
        "--out",
        out,
        "--json",
    )
    assert r.code == 0, r.err
    d = r.json()
    lo, hi = d["p_ok_ci95"]
    # Within 4 standard errors of the truth (a 95% interval misses it one seed in twenty).
    assert abs(d["p_ok"] - 0.8) < 4 * (0.8 * 0.2 / 400) ** 0.5
    assert lo < d["p_ok"] < hi and 0.06 < hi - lo < 0.09  # Wilson, n = 400
    profile = yaml.safe_load(out.read_text())["models"]["sim"]
    assert profile["p_ok"] == d["p_ok"] and profile["calibration"]["n"] == 400
    # the written profile drops into a spec as it is
    spec.write_text(SIM_SPEC.replace("  sim: {usd_per_call: 0.002, latency_s: 0.001, p_ok: 0.8}\n", ""
                                     ).replace("models:\n", "models:\n  sim: " + yaml.safe_dump(profile, default_flow_style=True)))  # fmt: skip
    assert load_workflow(spec).models["sim"].p_ok == d["p_ok"]


@pytest.mark.parametrize(
    ("args", "words"),
    [
        (["--suite", "ad1"], "did you mean 'add1'"),
        (["--n", "0"], "--n"),
        (["--n", "99999999999999999999"], "--n: 99,999,999,999,999,999,999 tasks, each one call to the model; give at most 1,000,000"),
        (["--model", "nope"], "no such model"),
    ],
)
def test_calibrate_bad_input(cli, tmp_path: Path, args: list[str], words: str) -> None:
    spec = tmp_path / "sim.yaml"
    spec.write_text(SIM_SPEC)
    base = {"--model": "sim", "--suite": "add1", "--n": "5"}
    for flag, value in zip(args[::2], args[1::2], strict=True):
        base[flag] = value
    argv = [x for kv in base.items() for x in kv]
    out = tmp_path / "never.yaml"
    r = cli("calibrate", *argv, "--spec", spec, "--out", out)
    assert r.code == 2 and words in r.err
    assert not out.exists()  # nothing half-written


def test_cliff_on_the_simulator_follows_the_product_law(cli, tmp_path: Path) -> None:
    spec = tmp_path / "sim.yaml"
    spec.write_text(SIM_SPEC)
    png = tmp_path / "cliff.png"
    r = cli("cliff", "--model", "sim", "--spec", spec, "--steps", "1,4", "--runs", "150",
            "--journal", tmp_path / "j.db", "--plot", png, "--json")  # fmt: skip
    assert r.code == 0, r.err
    rows = r.json()
    assert [row["predicted_success"] for row in rows] == [0.8, round(0.8**4, 4)]
    for row in rows:
        lo, hi = row["measured_ci95"]
        assert lo - 0.05 <= row["predicted_success"] <= hi + 0.05
    # a failed step stops its run, on the planner's side too: four $0.002 steps at p_ok 0.8
    # cost 0.002 x (1 + 0.8 + 0.64 + 0.512) on average, not $0.008 (which it said before)
    assert [row["cost_usd"]["predicted"] for row in rows] == pytest.approx([0.002, 0.005904])
    assert rows[1]["cost_usd"]["measured"] == pytest.approx(0.005904, rel=0.1)
    assert rows[1]["latency_s"]["predicted"] == pytest.approx(0.001 * 2.952, abs=1e-4)  # 4 places
    assert r.err == ""  # the simulator bills nobody: no bill said ahead
    assert png.read_bytes().startswith(b"\x89PNG")
    assert cli("cliff", "--model", "sim", "--spec", spec, "--steps", "0").code == 2
    what_if = cli("cliff", "--model", "sim", "--spec", spec, "--steps", "1,2", "--runs", "20",
                  "--journal", tmp_path / "j.db", "--set", "models.sim.p_ok=0.5", "--json")  # fmt: skip
    assert [row["predicted_success"] for row in what_if.json()] == [0.5, 0.25]
    said = cli("cliff", "--model", "sim", "--spec", spec, "--steps", "1", "--runs", "5",
               "--journal", tmp_path / "j.db", "--set", "models.sim.p_ok=0.5")  # fmt: skip
    assert said.out.startswith("with models.sim.p_ok=0.5 (--set; the file is unchanged)")
    assert "│ 0.001s │" in " ".join(said.out.split())  # a 1 ms step to three figures, not 0.00s
    bad = cli("cliff", "--model", "sim", "--spec", spec, "--set", "models.sim.p_ok=2")
    assert bad.code == 2 and "--set models.sim.p_ok=2: models.sim.p_ok:" in bad.err


def test_cliff_on_a_real_endpoint_says_its_bill_ahead_and_predicts_runs_going_to_their_end(
    cli, tmp_path: Path
) -> None:
    """No gate judges a real model's number, so a wrong one goes on to the next step: the
    planner's figures are of runs sent to their end (the simulator's runs halt), and before
    the first call stderr says what the chains will bill."""
    from trilemma.testing import Reply, ScriptedServer

    with ScriptedServer(lambda payload: Reply("7")) as srv:
        spec = tmp_path / "real.yaml"
        spec.write_text(f"version: 1\nmodels:\n  real: {{provider: openai, base_url: \"{srv.url}\", "
                        "model: m1, usd_per_call: 0.001, latency_s: 0.01, p_ok: 0.5}\n"
                        "steps: [{id: a, model: real}]\n")  # fmt: skip
        r = cli("cliff", "--model", "real", "--spec", spec, "--steps", "1,2", "--runs", "2",
                "--journal", tmp_path / "j.db", "--json")  # fmt: skip
        assert r.code == 0, r.err
        assert len(srv.requests) == 6  # every step of every chain answered a number
    assert r.err == ("trilemma: cliff --model real: 4 runs on real endpoints (real) bill about "
                     "$0.0060 by the planner, $0.0060 in its worst case; Ctrl-C stops them, "
                     "keeping the runs that ended\n")  # fmt: skip
    rows = r.json()
    assert [row["cost_usd"]["predicted"] for row in rows] == pytest.approx([0.001, 0.002])
    assert [row["cost_usd"]["measured"] for row in rows] == pytest.approx([0.001, 0.002])


@pytest.mark.parametrize(
    ("args", "says"),
    [  # a typo that would never end (a chain of 1e20 steps hung building its spec)
        (["--steps", "1,99999999999999999999"], "--steps 1,99999999999999999999: give chain lengths from 1 to 1,000"),
        (["--steps", ","], "--steps '': give chain lengths from 1 to 1,000"),
        (["--runs", "1000001"], "--runs: 1,000,001 runs, each one run on the executor"),
        (["--runs", "0"], "--runs: 0 is not a positive integer"),
        (["--parallel", "0"], "--parallel: 0 is not a positive integer"),
    ],
)  # fmt: skip
def test_cliff_refuses_a_chain_or_a_run_count_past_its_bounds(cli, tmp_path: Path, args, says) -> None:
    spec = tmp_path / "sim.yaml"
    spec.write_text(SIM_SPEC)
    db = tmp_path / "j.db"
    r = cli("cliff", "--model", "sim", "--spec", spec, "--journal", db, *args)
    assert r.code == 2 and says in r.err and r.err.count("\n") == 1, r.err
    assert not db.exists()


def test_local_commands_say_what_to_install_when_the_extra_is_missing(
    cli, tmp_path: Path, monkeypatch
) -> None:
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util,
        "find_spec",
        lambda name, *a: None if name == "llama_cpp" else real(name, *a),
    )
    r = cli("local", "up", "--model", "smollm2", "--state", tmp_path)
    assert r.code == 1 and "pip install 'trilemma[local]'" in r.err
    assert cli("local", "up", "--model", "llama9", "--state", tmp_path).code == 2
    assert "nothing was running" in cli("local", "down", "--state", tmp_path).out


def test_cliff_and_calibrate_find_the_shipped_local_spec_from_any_folder(
    cli, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)  # no examples/ here: the default --spec was looked up here
    for args in (["cliff"], ["calibrate", "--suite", "add1", "--n", "1"]):
        r = cli(*args, "--model", "nope")
        assert r.code == 2 and "local.yaml has no such model; it has smollm2" in r.err, r.err


def test_an_experiment_on_an_endpoint_that_is_down_stops_before_its_first_run(
    cli, tmp_path: Path
) -> None:
    """A server that is down measured as a model that always fails (cliff: 0% success,
    exit 0); now the experiment says it cannot reach it, and runs nothing. An endpoint that
    is up runs as before, whatever its answer to the probe."""
    from trilemma.testing import ScriptedServer

    def spec_at(url: str) -> Path:
        spec = tmp_path / "real.yaml"
        spec.write_text(f"version: 1\nmodels:\n  real: {{provider: openai, base_url: \"{url}\", "
                        "model: m1, usd_per_call: 0.001, latency_s: 0.01, p_ok: 0.9}\n"
                        "steps: [{id: a, model: real}]\n")  # fmt: skip
        return spec

    with ScriptedServer() as srv:
        url = srv.url  # the port is free again once the server stops
    spec, db = spec_at(url), tmp_path / "j.db"
    for args in (["cliff", "--model", "real", "--spec", spec, "--steps", "1,2", "--runs", "3"],
                 ["compare", spec, "--runs", "3", "--time-scale", "1"],
                 ["sweep", spec, "--runs", "3", "--time-scale", "1", "--max-cost", "0.01"]):  # fmt: skip
        r = cli(*args, "--journal", db)
        assert r.code == 1 and f"cannot reach {url} (" in r.err, r.err
        assert r.err.count("\n") == 1
    assert not db.exists()  # nothing ran, and no journal was made
    with ScriptedServer() as up:  # lists its models, as llama.cpp's server and OpenAI do
        r = cli("compare", spec_at(up.url), "--runs", "2", "--time-scale", "1", "--journal", db,
                "--json")  # fmt: skip
        assert r.code == 0 and r.json()[0]["runs"] == 2, r.err
        r = cli("cliff", "--model", "real", "--spec", spec_at(up.url), "--steps", "1",
                "--runs", "1", "--journal", db)  # fmt: skip
        assert r.code == 0, r.err


def test_the_probe_takes_any_answer_as_up_and_only_no_connection_as_down() -> None:
    """Not every OpenAI-compatible server lists its models: a 404 (or a 500) is an answer."""
    import asyncio
    import threading
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    from trilemma.errors import EndpointUnreachable
    from trilemma.providers.openai import OpenAIProvider
    from trilemma.spec import ModelProfile

    class Refusing(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.send_error(404 if self.server.status == 404 else 500)  # type: ignore[attr-defined]

        def log_message(self, *args: object) -> None:
            pass

    def probe(url: str) -> None:
        profile = ModelProfile(provider="openai", base_url=url, model="m", usd_per_call=0.0,
                               latency_s=0.1, p_ok=1.0)  # fmt: skip

        async def go() -> None:
            provider = OpenAIProvider("m", profile)
            try:
                await provider.check_reachable(profile)
            finally:
                await provider.aclose()

        asyncio.run(go())

    for status in (404, 500):
        httpd = ThreadingHTTPServer(("127.0.0.1", 0), Refusing)
        httpd.status = status  # type: ignore[attr-defined]
        threading.Thread(target=httpd.serve_forever, daemon=True).start()
        url = f"http://127.0.0.1:{httpd.server_address[1]}/v1"
        try:
            probe(url)  # no error: it answered
        finally:
            httpd.shutdown()
            httpd.server_close()
    with pytest.raises(EndpointUnreachable, match=f"cannot reach {url}"):
        probe(url)  # stopped: nothing listens there now


def test_cliff_runs_at_a_time_measure_the_same_chains(cli, tmp_path: Path) -> None:
    """--parallel: each chain keeps its numbers and its seed, so on the simulator the runs
    come out as one at a time; more than one ran at once, never more than asked."""
    spec = tmp_path / "sim.yaml"
    spec.write_text(SIM_SPEC)
    args = ["cliff", "--model", "sim", "--spec", spec, "--steps", "1,3", "--runs", "12", "--json",
            "--set", "models.sim.latency_s=0.02"]  # runs of 20-60 ms: four at once overlap
    alone = cli(*args, "--journal", tmp_path / "a.db")
    together = cli(*args, "--journal", tmp_path / "b.db", "--parallel", "4")
    assert alone.code == together.code == 0, together.err
    keep = ("steps", "runs", "measured_success", "predicted_success", "cost_usd")
    assert [{k: r[k] for k in keep} for r in together.json()] == [{k: r[k] for k in keep} for r in alone.json()]
    runs = Journal(tmp_path / "b.db").runs()
    assert len(runs) == 24 and sorted({r["inputs_json"] for r in runs}) == sorted(
        {r["inputs_json"] for r in Journal(tmp_path / "a.db").runs()})
    edges = sorted([(r["started_at"], 1) for r in runs] + [(r["finished_at"], -1) for r in runs])
    at_once = [sum(step for _, step in edges[: i + 1]) for i in range(len(edges))]
    assert 1 < max(at_once) <= 4
