"""``--set PATH=VALUE``: what-if changes to a spec for one command, the file untouched."""

from __future__ import annotations

import copy
import sqlite3
from pathlib import Path

import pytest
import yaml

from trilemma.errors import UsageError
from trilemma.journal import Journal
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


CHAIN = """\
version: 1
models: {m: {usd_per_call: 0.01, latency_s: 0.01, p_ok: 1.0}}
steps:
  - {id: a, model: m}
  - {id: b, model: m, after: [a]}
  - {id: c, model: m, after: [b]}
"""


def test_a_run_keeps_its_set_and_a_resume_sets_it_again(
    cli, write, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("COLUMNS", "300")  # the runs table's spec column unfolded
    spec, db = write(CHAIN), tmp_path / "j.db"
    dear = ["--set", "models.m.usd_per_call=0.02"]
    cut = cli("run", spec, *dear, "--max-cost", "0.03", "--journal", db, "--json")
    assert cut.code == 1 and cut.json()["status"] == "budget_exhausted"
    assert cut.json()["cost_usd"] == pytest.approx(0.02)  # a, at the price --set gave
    assert cut.json()["overrides"] == ["models.m.usd_per_call=0.02"]
    run_id = cut.json()["run_id"]
    (row,) = cli("runs", "--journal", db, "--json").json()
    assert row["overrides"] == ["models.m.usd_per_call=0.02"]
    assert f"{spec} --set models.m.usd_per_call=0.02" in cli("runs", "--journal", db).out
    # the file is the run's spec with its --set: the resume goes on, at the price it began with
    done = cli("resume", run_id, "--journal", db, "--max-cost", "1")
    assert done.code == 0, done.err
    assert done.out.splitlines()[0] == ("with models.m.usd_per_call=0.02 (--set; the file is "
                                        "unchanged)")  # fmt: skip
    with Journal(db) as j:
        assert j.spent(run_id) == pytest.approx(0.06)
    again = cli("resume", run_id, "--journal", db, "--json").json()  # done: from the journal
    assert again["status"] == "ok" and again["overrides"] == ["models.m.usd_per_call=0.02"]
    plain = cli("run", spec, "--journal", db, "--json").json()
    assert plain["cost_usd"] == pytest.approx(0.03) and plain["overrides"] == []
    assert cli("runs", "--journal", db, "--json").json()[0]["overrides"] == []


def test_a_resume_still_refuses_a_file_changed_under_its_set(cli, write, tmp_path: Path) -> None:
    spec, db = write(CHAIN), tmp_path / "j.db"
    first = cli("run", spec, "--set", "steps.c.retries=1", "--max-cost", "0.015", "--journal", db,
                "--json").json()  # fmt: skip
    second = cli("run", spec, "--set", "steps.c.retries=1", "--max-cost", "0.015", "--journal", db,
                 "--json").json()  # fmt: skip
    spec.write_text(CHAIN.replace("{id: b, model: m,", "{id: b, model: m, retries: 2,"))
    changed = cli("resume", first["run_id"], "--journal", db)  # its $0.015 stops it: no note
    assert changed.code == 2 and changed.err.count("\n") == 1, changed.err
    assert "changed since run" in changed.err and "steps: b" in changed.err
    spec.write_text(CHAIN.replace("id: c", "id: last"))
    gone = cli("resume", second["run_id"], "--journal", db, "--max-cost", "1")
    assert gone.code == 2 and gone.err.count("\n") == 1
    assert (f"{spec} changed since run {second['run_id']} started: the run's --set "
            "'steps.c.retries=1': no step 'c' in steps") in gone.err  # fmt: skip
    assert "restore the file to resume it" in gone.err


def test_a_batch_keeps_its_set_and_its_resume_asks_for_the_same(cli, write, tmp_path: Path) -> None:
    import subprocess
    import sys

    spec, db = write(CHAIN), tmp_path / "j.db"
    lines = write("{}\n{}\n{}\n", "lines.jsonl")
    dear = ["--set", "models.m.usd_per_call=0.02"]
    cut = cli("batch", spec, "--inputs", lines, *dear, "--max-cost", "0.1", "--parallel", "1",
              "--journal", db, "--json")  # fmt: skip
    assert cut.code == 1 and cut.json()["cost_usd"] == pytest.approx(0.1)
    batch_id = cut.json()["batch_id"]
    bare = cli("batch", spec, "--inputs", lines, "--resume", batch_id, "--journal", db)
    assert bare.code == 2 and bare.err.count("\n") == 1
    assert (f"--resume {batch_id}: the batch ran with --set models.m.usd_per_call=0.02, not no "
            "--set; give the same --set") in bare.err  # fmt: skip
    # doctor's command for an interrupted batch carries its --set
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    with Journal(db) as j:
        unfinished = next(r["run_id"] for r in j.runs() if r["status"] != "ok")
    with sqlite3.connect(db) as raw:
        raw.execute("UPDATE runs SET status = 'running', pid = ? WHERE run_id = ?",
                    (dead.pid, unfinished))  # fmt: skip
    raw.close()
    doctor = cli("doctor", "--journal", db, "--json").json()
    assert doctor["interrupted_batches"][0]["overrides"] == ["models.m.usd_per_call=0.02"]
    said = " ".join(cli("doctor", "--journal", db).out.split())
    assert f"--set models.m.usd_per_call=0.02 --resume {batch_id}" in said
    done = cli("batch", spec, "--inputs", lines, *dear, "--resume", batch_id, "--max-cost", "1",
               "--journal", db, "--json")  # fmt: skip
    assert done.code == 0, done.err
    assert done.json()["cost_usd"] == pytest.approx(0.18)  # 3 lines x 3 calls at $0.02
    assert done.json()["overrides"] == ["models.m.usd_per_call=0.02"]


def test_a_damaged_overrides_column_is_named_not_a_traceback(cli, write, tmp_path: Path) -> None:
    spec, db = write(CHAIN), tmp_path / "j.db"
    run_id = cli("run", spec, "--set", "steps.c.retries=1", "--journal", db, "--json").json()["run_id"]
    with sqlite3.connect(db) as raw:  # another tool wrote over it
        raw.execute("UPDATE runs SET overrides_json = '{\"steps.c.retries\": 1}'")
    raw.close()
    listed = cli("runs", "--journal", db)
    assert listed.code == 2 and listed.err.count("\n") == 1
    assert "overrides_json holds" in listed.err and "not a JSON array" in listed.err
    doctor = cli("doctor", "--journal", db, "--json")
    assert doctor.code == 1
    assert any("overrides_json" in d and run_id in d for d in doctor.json()["damaged_rows"])


def test_sweep_takes_it_and_journals_it_with_each_trial(cli, write, tmp_path: Path) -> None:
    spec, db = write(CHAIN), tmp_path / "j.db"
    dear = ["--set", "models.m.usd_per_call=0.02"]
    args = ["--max-cost", "0.05", "--runs", "3", "--journal", db]
    got = cli("sweep", spec, *dear, *args, "--json").json()
    plain = cli("sweep", spec, *args, "--json").json()
    # at $0.02 a call the $0.05 ceiling stops every run after two steps; at $0.01 none
    assert got["rows"][0]["success_rate"] == 0.0 and plain["rows"][0]["success_rate"] == 1.0
    kept = [r["overrides"] for r in cli("runs", "--journal", db, "--json").json()]
    assert kept.count(["models.m.usd_per_call=0.02"]) == 6 and kept.count([]) == 6
    shown = cli("sweep", spec, *dear, *args)
    assert shown.out.splitlines()[0] == "with models.m.usd_per_call=0.02 (--set; the file is unchanged)"
