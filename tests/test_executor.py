"""The executor on the simulator: fan-out, chains, budgets, deadlines, faults, gates, kinds."""

from __future__ import annotations

import asyncio
import io
import re
import textwrap
import time
from pathlib import Path
from typing import Any

import pytest

from trilemma import parse_workflow
from trilemma.errors import ProviderTimeout, TransientError
from trilemma.journal import Journal
from trilemma.run.executor import RunResult
from trilemma.run.limits import PriorityLimiter, RateLimiter
from trilemma.run.session import execute
from trilemma.testing import FunctionProvider, fast_retries


def spec(models: str, steps: list[str], extra: str = "") -> str:
    body = "\n".join(f"  - {s}" for s in steps)
    return f"version: 1\nmodels:\n{textwrap.indent(models.strip(), '  ')}\nsteps:\n{body}\n{extra}"


def run(text: str, tmp_path: Path, **kw: Any) -> tuple[RunResult, Journal]:
    journal = Journal(tmp_path / "j.db")
    with fast_retries():
        result = execute(parse_workflow(text), journal=journal, seed=kw.pop("seed", 1), **kw)
    return result, journal


def test_twelve_independent_steps_take_one_step_of_time(tmp_path: Path) -> None:
    text = spec(
        "m: {usd_per_call: 0.01, latency_s: 0.3, p_ok: 1.0}",
        [f"{{id: s{i}, model: m}}" for i in range(12)],
    )
    r, _ = run(text, tmp_path)
    assert r.status == "ok" and len(r.outputs) == 12
    assert 0.3 <= r.latency_s <= 0.3 * 1.15, r.latency_s


def test_a_twelve_step_chain_takes_the_sum(tmp_path: Path) -> None:
    steps = [
        f"{{id: s{i}, model: m{', after: [s' + str(i - 1) + ']' if i else ''}}}" for i in range(12)
    ]
    r, _ = run(spec("m: {usd_per_call: 0.01, latency_s: 0.05, p_ok: 1.0}", steps), tmp_path)
    assert r.status == "ok"
    assert 0.6 <= r.latency_s <= 0.6 * 1.15, r.latency_s


def test_downstream_prompts_see_upstream_outputs(tmp_path: Path) -> None:
    text = spec(
        "m: {usd_per_call: 0.01, latency_s: 0.001, p_ok: 1.0}",
        ["{id: plan, model: m, sim: {ok: 'PLAN-OK'}}",
         "{id: act, model: m, after: [plan], prompt: 'Do {plan} for {who}'}"],
        "inputs: {who: nobody}",
    )  # fmt: skip
    r, j = run(text, tmp_path, inputs={"who": "Ada"})
    assert r.status == "ok"
    act = next(c for c in j.calls(r.run_id) if c["step_id"] == "act")
    assert "Do PLAN-OK for Ada" in act["request_json"]


@pytest.mark.parametrize("repeat", range(15))
def test_forty_parallel_steps_never_spend_over_the_ceiling(tmp_path: Path, repeat: int) -> None:
    text = spec("m: {usd_per_call: 0.01, latency_s: 0.01, latency_jitter: 0.5, p_ok: 1.0}",
                [f"{{id: s{i}, model: m}}" for i in range(40)])  # fmt: skip
    r, j = run(text, tmp_path, max_cost_usd=0.155, seed=repeat)
    assert r.status == "budget_exhausted"
    assert r.cost_usd <= 0.155 + 1e-12
    billed = sum(c["cost_usd"] or 0 for c in j.calls(r.run_id))
    assert billed == pytest.approx(r.cost_usd) and billed <= 0.155 + 1e-12
    assert len(r.outputs) == 15  # every call that was sent finished and returned its output
    assert j.run(r.run_id)["status"] == "budget_exhausted"


def test_nothing_held_is_exactly_nothing_after_holds_that_do_not_add_up_in_floats() -> None:
    """0.1 + 0.2 + 0.3 held and released left 5.6e-17 held; a refusal then said "$-0.0000
    held by calls in flight" (seen in a batch)."""
    from trilemma.errors import BudgetExhausted
    from trilemma.run.budget import SpendGuard

    guard = SpendGuard(0.6)
    holds = [guard.reserve(x) for x in (0.1, 0.2, 0.3)]
    guard.release(holds[0])
    assert guard.reserved > 0.49  # still holding two
    guard.settle(holds[1], 0.2)
    guard.release(holds[2])
    guard.release(holds[2])  # twice is once
    assert (guard.reserved, guard.holding, guard.spent) == (0.0, 0, 0.2)
    with pytest.raises(BudgetExhausted, match=r"\(\$0\.2000 spent, \$0\.0000 held by calls in flight\)"):
        guard.reserve(0.5)


def test_budget_counts_retries_and_gate_rejections(tmp_path: Path) -> None:
    text = spec("m: {usd_per_call: 0.01, latency_s: 0.001, p_ok: 0.3}",
                ["{id: a, model: m, retries: 50}"])  # fmt: skip
    r, _j = run(text, tmp_path, max_cost_usd=0.035)
    assert r.cost_usd <= 0.035 + 1e-12
    assert r.status in ("budget_exhausted", "ok")


@pytest.mark.parametrize(
    ("ceiling", "made"),
    [(0.015, {"a": 1, "b": 0}),  # b's first call does not fit: b made no attempt
     (0.025, {"a": 1, "b": 1}),  # b's first answer is rejected; its retry does not fit
     (0.035, {"a": 1, "d": 1})],  # d's debate sends two calls, its third does not fit
)  # fmt: skip
def test_an_attempt_the_ceiling_refuses_before_its_first_call_is_not_counted(
    tmp_path: Path, ceiling: float, made: dict[str, int]
) -> None:
    """A step the ceiling stops shows the attempts it sent calls for, as its calls do: the
    table said "skipped, attempts 1" of a step whose one call was refused."""
    steps = ["{id: a, model: m}",
             "{id: b, model: m, after: [a], retries: 3, p_ok: 0.0001}"]  # fmt: skip
    if "d" in made:
        steps[1] = "{id: d, model: m, after: [a], debate: {agents: 2, rounds: 1, judge: true}}"
    text = spec("m: {usd_per_call: 0.01, latency_s: 0.001, p_ok: 1.0}", steps)
    r, j = run(text, tmp_path, max_cost_usd=ceiling)
    assert r.status == "budget_exhausted"
    assert {k: s.attempts for k, s in r.steps.items()} == made
    sent = [c for c in j.calls(r.run_id) if c["outcome"] != "unsent"]
    for sid, n in made.items():  # the step's count is its calls' newest attempt
        assert n == max((c["attempt"] for c in sent if c["step_id"] == sid), default=0)


def test_faults_are_retried_logged_and_not_billed(tmp_path: Path) -> None:
    models = """
m: {usd_per_call: 0.01, latency_s: 0.005, p_ok: 1.0,
    faults: {transient_error_rate: 0.3, rate_limit_rate: 0.1}}
"""
    r, j = run(
        spec(models, [f"{{id: s{i}, model: m, retries: 30}}" for i in range(30)]), tmp_path, seed=3
    )
    assert r.status == "ok" and len(r.outputs) == 30
    calls = j.calls(r.run_id)
    outcomes = {c["outcome"] for c in calls}
    assert {"ok", "transient", "rate_limited"} <= outcomes
    for c in calls:
        if c["outcome"] in ("transient", "rate_limited"):
            assert c["cost_usd"] == 0.0
    assert r.cost_usd == pytest.approx(0.01 * 30)  # only the 30 answers are billed


def test_gate_rejected_answers_are_billed_and_retried(tmp_path: Path) -> None:
    text = spec(
        "m: {usd_per_call: 0.01, latency_s: 0.001, p_ok: 0.2}",
        [f"{{id: a{i}, model: m, retries: 60}}" for i in range(8)],
    )  # eight steps: the chance that none is ever rejected is 0.2 ** 8
    r, j = run(text, tmp_path, seed=5)
    calls = j.calls(r.run_id)
    rejected = [c for c in calls if c["outcome"] == "rejected"]
    assert r.status == "ok" and rejected
    assert all(c["cost_usd"] == 0.01 for c in rejected)
    assert r.cost_usd == pytest.approx(0.01 * len(calls))


def test_retries_exhausted_fail_the_run_and_skip_dependents(tmp_path: Path) -> None:
    text = spec("m: {usd_per_call: 0.01, latency_s: 0.001, p_ok: 0.0001}",
                ["{id: a, model: m, retries: 2}", "{id: b, model: m, after: [a]}"])  # fmt: skip
    r, j = run(text, tmp_path)
    assert r.status == "failed"
    assert r.steps["a"].status == "failed" and r.steps["a"].attempts == 3
    assert r.steps["b"].status == "skipped"
    assert "step a" in (r.error or "")
    assert len(j.calls(r.run_id)) == 3


def test_deadline_cancels_in_flight_calls_and_keeps_finished_outputs(tmp_path: Path) -> None:
    text = spec(
        "fast: {usd_per_call: 0.01, latency_s: 0.01, p_ok: 1.0}\nslow: {usd_per_call: 0.01, latency_s: 5.0, p_ok: 1.0}",
        ["{id: quick, model: fast}", "{id: long, model: slow}", "{id: longer, model: slow}"],
    )
    started = time.perf_counter()
    r, j = run(text, tmp_path, deadline_s=0.3)
    assert time.perf_counter() - started < 2.0
    assert r.status == "deadline"
    assert r.outputs == {"quick": "answer of quick (attempt 1)"}
    assert r.steps["long"].status == "cancelled"
    long_calls = [c for c in j.calls(r.run_id) if c["step_id"] == "long"]
    assert [c["outcome"] for c in long_calls] == ["cancelled"]
    assert r.error == "the run's deadline passed; 2 calls in flight were cancelled"


def test_a_deadline_that_passes_before_a_call_goes_out_cuts_the_step_as_in_flight(
    tmp_path: Path,
) -> None:
    # a's answer holds the loop past the deadline, so b's check sees it passed before the
    # deadline's own cancellation has run: b is cut by the deadline, not failed by it
    async def hold_the_loop(request: Any) -> str:
        time.sleep(0.08)
        return "ok"

    text = spec("m: {usd_per_call: 0.01, latency_s: 0.001, p_ok: 1.0}",
                ["{id: a, model: m}", "{id: b, model: m, after: [a]}",
                 "{id: c, model: m, after: [b]}"])  # fmt: skip
    r, j = run(text, tmp_path, deadline_s=0.05, providers={"m": FunctionProvider(hold_the_loop)})
    assert r.status == "deadline" and r.outputs == {"a": "ok"}
    assert {k: (v.status, v.attempts, v.error) for k, v in r.steps.items() if k != "a"} == {
        "b": ("cancelled", 0, None), "c": ("cancelled", 0, None),
    }  # fmt: skip
    assert r.error == "the run's deadline passed between calls (none was in flight)"
    assert [c["step_id"] for c in j.calls(r.run_id)] == ["a"]


def test_regex_gate_with_feedback(tmp_path: Path) -> None:
    text = spec("m: {usd_per_call: 0.01, latency_s: 0.001, p_ok: 0.5}",
                ["{id: a, model: m, retries: 30, gate: {regex: '^\\d+$'}, sim: {ok: '42', bad: 'forty-two'}}"])  # fmt: skip
    r, j = run(text, tmp_path, seed=2)
    assert r.outputs == {"a": "42"}
    calls = j.calls(r.run_id)
    if len(calls) > 1:
        assert "was rejected" in calls[1]["request_json"]


def test_json_schema_gate_rejects_text_that_is_not_json(tmp_path: Path) -> None:
    gate = "{json_schema: {type: object, required: [a], properties: {a: {type: integer}}}}"
    text = spec("m: {usd_per_call: 0.01, latency_s: 0.001, p_ok: 1.0}",
                [f"{{id: a, model: m, retries: 1, gate: {gate}, sim: {{ok: 'not json'}}}}"])  # fmt: skip
    r, j = run(text, tmp_path)
    assert r.status == "failed"
    assert "must be JSON" in (r.error or "")
    assert [c["outcome"] for c in j.calls(r.run_id)] == ["rejected", "rejected"]


def test_json_schema_gate_accepts_fenced_json(tmp_path: Path) -> None:
    gate = "{json_schema: {type: object, required: [a]}}"
    ok = '"```json\\n{\\"a\\": 1}\\n```"'
    text = spec("m: {usd_per_call: 0.01, latency_s: 0.001, p_ok: 1.0}",
                [f"{{id: a, model: m, gate: {gate}, sim: {{ok: {ok}}}}}"])  # fmt: skip
    r, _ = run(text, tmp_path)
    assert r.status == "ok"


@pytest.mark.parametrize(
    ("answer", "status"),
    [  # a real SmolLM2 answer opened a ```json fence and stopped without closing it
        ('"```json\\n{\\"a\\": 1}"', "ok"),
        ('"```json\\n{\\n  \\"a\\": 1,\\n}"', "failed"),  # and left a trailing comma
    ],
)
def test_a_json_gate_reads_a_fence_left_open(tmp_path: Path, answer: str, status: str) -> None:
    """The fence was taken for the JSON: "Expecting value: line 1 column 1", whatever the
    body held, and a retry told the model nothing it could mend. Now the body's own fault is
    named, on line 2 or 3 (json's words for a trailing comma differ by Python version)."""
    gate = "{json_schema: {type: object, required: [a]}}"
    text = spec("m: {usd_per_call: 0.01, latency_s: 0.001, p_ok: 1.0}",
                [f"{{id: a, model: m, gate: {gate}, sim: {{ok: {answer}}}}}"])  # fmt: skip
    r, _ = run(text, tmp_path)
    assert r.status == status, r.error
    if status == "failed":
        assert re.search(r"the answer must be JSON: .+: line [23] column", r.error or ""), r.error


def _gate_module(tmp_path: Path) -> None:
    (tmp_path / "mygates.py").write_text(
        textwrap.dedent("""
        import pydantic

        class Answer(pydantic.BaseModel):
            value: int

        def even(text):
            return int(text) % 2 == 0 or "the number must be even"

        def broken(text):
            raise ValueError("bug in the gate")

        def slow(text):
            import time

            time.sleep(1.5)  # asks a service, synchronously
            return True

        class Looked(pydantic.BaseModel):
            value: int

            @pydantic.field_validator("value")
            @classmethod
            def known(cls, value):
                import time

                time.sleep(1.5)  # asks a service, synchronously
                return value
    """)
    )


def test_pydantic_and_python_gates_from_the_spec_folder(cli, tmp_path: Path) -> None:
    _gate_module(tmp_path)
    path = tmp_path / "spec.yaml"
    path.write_text(spec(
        "m: {usd_per_call: 0.01, latency_s: 0.001, p_ok: 1.0}",
        ["{id: a, model: m, gate: {pydantic: 'mygates:Answer'}, sim: {ok: '{\"value\": 3}'}}",
         "{id: b, model: m, gate: {python: 'mygates:even'}, sim: {ok: '4'}}"],
    ))  # fmt: skip
    r = cli("run", path, "--journal", tmp_path / "j.db", "--json")
    assert r.code == 0, r.err
    assert r.json()["outputs"] == {"a": '{"value": 3}', "b": "4"}


def test_gate_that_cannot_be_imported_is_bad_input(cli, tmp_path: Path) -> None:
    path = tmp_path / "spec.yaml"
    path.write_text(spec("m: {usd_per_call: 0.01, latency_s: 0.001, p_ok: 1.0}",
                         ["{id: a, model: m, gate: {python: 'nosuchmodule:check'}}"]))  # fmt: skip
    r = cli("run", path, "--journal", tmp_path / "j.db")
    assert r.code == 2
    assert "steps[0].gate.python" in r.err and "cannot import" in r.err
    assert len(r.err.strip().splitlines()) == 1


def test_gate_that_raises_fails_the_run_naming_the_step(cli, tmp_path: Path) -> None:
    _gate_module(tmp_path)
    path = tmp_path / "spec.yaml"
    path.write_text(spec("m: {usd_per_call: 0.01, latency_s: 0.001, p_ok: 1.0}",
                         ["{id: a, model: m, retries: 3, gate: {python: 'mygates:broken'}}"]))  # fmt: skip
    r = cli("run", path, "--journal", tmp_path / "j.db", "--json")
    assert r.code == 1
    assert "step a" in r.err and "bug in the gate" in r.err
    assert r.json()["status"] == "failed"
    assert r.json()["steps"]["a"]["attempts"] == 1  # a broken gate is not retried


@pytest.mark.parametrize("gate", ["{python: 'mygates:slow'}", "{pydantic: 'mygates:Looked'}"])
def test_a_slow_python_gate_holds_up_neither_the_deadline_nor_the_other_steps(
    cli, tmp_path: Path, gate: str
) -> None:
    """A Python gate is the user's code: one that took 1.5 s blocked the event loop, so a
    0.5 s deadline fired after it (the run took 1.5 s) and a parallel step waited too. So is
    a pydantic model's validator."""
    import time

    _gate_module(tmp_path)
    path = tmp_path / "spec.yaml"
    path.write_text(spec("m: {usd_per_call: 0.01, latency_s: 0.05, p_ok: 1.0}",
                         [f"{{id: a, model: m, gate: {gate}, sim: {{ok: '{{\"value\": 3}}'}}}}",
                          "{id: b, model: m}", "{id: c, model: m, after: [b]}"]))  # fmt: skip
    began = time.perf_counter()
    r = cli("run", path, "--journal", tmp_path / "j.db", "--json", "--deadline", "0.5")
    took = time.perf_counter() - began
    assert r.code == 1 and r.json()["status"] == "deadline", r.err
    assert took < 1.2, took  # the deadline, not the gate, ended it
    steps = r.json()["steps"]
    assert steps["c"]["status"] == "done" and steps["a"]["status"] != "done"  # b, c went on
    r = cli("run", path, "--journal", tmp_path / "j.db", "--json")  # no deadline: it waits
    assert r.code == 0 and r.json()["outputs"]["a"], r.err


def test_a_regex_gate_that_backtracks_holds_up_neither_the_deadline_nor_the_run(
    tmp_path: Path,
) -> None:
    """Python's ``re`` keeps the GIL while it matches: ``^(\\w+\\s?)*$`` on a 26-word answer
    ending in "!" backtracked for hours, deaf to the deadline, Ctrl-C and SIGTERM. Gates
    match with ``regex`` now, off the loop, and give up after REGEX_TIMEOUT_S. Run in a
    process of its own, so that a gate that hangs fails the test rather than the suite."""
    import json
    import subprocess
    import sys

    def trilemma(pattern: str, answer: str, *flags: str, gate: str = "") -> tuple[dict[str, Any], float]:
        path = tmp_path / "spec.yaml"
        gate = gate or f"{{regex: '{pattern}'}}"
        path.write_text(spec(
            "m: {usd_per_call: 0.01, latency_s: 0.05, p_ok: 1.0}",
            [f"{{id: a, model: m, retries: 2, gate: {gate}, sim: {{ok: '{answer}'}}}}",
             "{id: b, model: m}", "{id: c, model: m, after: [b]}"],
        ))  # fmt: skip
        began = time.perf_counter()
        done = subprocess.run(
            [sys.executable, "-m", "trilemma", "run", str(path), "--journal",
             str(tmp_path / "j.db"), "--json", *flags],
            capture_output=True, text=True, timeout=30,
        )  # fmt: skip
        r = json.loads(done.stdout)
        assert done.returncode == (0 if r["status"] == "ok" else 1), done.stderr
        return r, time.perf_counter() - began

    words = " ".join(["word"] * 26) + "!"
    r, _ = trilemma(r"^(\w+\s?)*$", words)  # matched at once: the answer is rejected
    assert r["status"] == "failed" and r["steps"]["a"]["attempts"] == 3
    assert "the answer must match the regular expression /^(\\w+\\s?)*$/" in r["error"]
    exponential = "^(a|a)*$"  # beyond what regex can spare: it gives up, the step fails
    r, _ = trilemma(exponential, "a" * 40 + "!")
    assert r["status"] == "failed" and r["steps"]["a"]["attempts"] == 1  # not the model's fault
    assert r["error"].startswith(
        "step a: RunError: the regex gate /^(a|a)*$/ gave no verdict within 1s on a "
        "41-character answer"
    ), r["error"]
    assert r["outputs"].keys() == {"b", "c"}  # the other steps went on meanwhile
    r, took = trilemma(exponential, "a" * 40 + "!", "--deadline", "0.4")
    assert r["status"] == "deadline" and r["latency_s"] < 0.6, r["latency_s"]
    assert r["outputs"].keys() == {"b", "c"} and took < 5  # its thread holds no one up

    def gives_up(schema: str, answer: str, says: str, on: str) -> None:
        """The gate gives up on ``answer`` with an "a" too many, and passes it without."""
        gate = f"{{json_schema: {{{schema % exponential}}}}}"
        r, _ = trilemma("", answer % ("a" * 40 + "!"), gate=gate)
        assert r["status"] == "failed" and r["steps"]["a"]["attempts"] == 1
        assert r["error"].startswith(
            f"step a: RunError: the JSON schema gate's {says} /^(a|a)*$/ gave no verdict "
            f"within 1s on a 41-character {on}: "
        ), r["error"]
        r, _ = trilemma("", answer % ("a" * 40), gate=gate)
        assert r["status"] == "ok", r["error"]

    # a JSON schema gate's pattern likewise (jsonschema's own matched with re, on the loop)
    gives_up("properties: {name: {type: string, pattern: '%s'}}", '{"name": "%s"}', "pattern",
             "string in the answer")
    # and its patternProperties, over property names, alone or to tell additional ones
    for schema in ("patternProperties: {'%s': {type: integer}}",
                   "patternProperties: {'%s': {}}, additionalProperties: false"):  # fmt: skip
        gives_up(schema, '{"%s": 1}', "patternProperties", "property name")


@pytest.mark.parametrize(
    ("schema", "instances"),
    [
        ({"patternProperties": {"^x_": {"type": "integer"}, "n$": {"minimum": 2}}},
         [{"x_a": 1}, {"x_a": "one", "x_n": 1}, {"y": "any"}, [], "text"]),
        ({"patternProperties": {"^x_": {}}, "additionalProperties": False},
         [{"x_a": 1}, {"y": 1}, {"y": 1, "z": 2, "x_b": 3}, {}]),
        ({"properties": {"a": {}}, "additionalProperties": False},
         [{"a": 1}, {"a": 1, "b": 2}, {"c": 1, "b": 2}]),
        ({"patternProperties": {}, "additionalProperties": False}, [{}, {"b": 2}]),
        ({"properties": {"a": {}}, "patternProperties": {"^x": {}},
          "additionalProperties": {"type": "string"}},
         [{"a": 1, "x1": 2, "z": "s"}, {"z": 3, "w": [], "a": 0}]),
        ({"type": "object", "properties": {"inner": {"patternProperties": {"^[0-9]+$": {"type": "boolean"}},
          "additionalProperties": False}}},
         [{"inner": {"1": True}}, {"inner": {"1": 1, "k": True}}]),
    ],
)  # fmt: skip
def test_schema_gates_read_patterns_over_property_names_as_jsonschema_does(
    schema: dict[str, Any], instances: list[Any]
) -> None:
    """The gate's patternProperties and additionalProperties match with ``regex`` (under its
    timeout), and find what jsonschema's own find, in the same words."""
    import jsonschema

    from trilemma.run.gates import _SchemaValidator

    def errors(validator: Any, instance: Any) -> list[tuple[list[Any], str]]:
        return sorted((list(e.path), e.message) for e in validator.iter_errors(instance))

    for instance in instances:
        theirs = errors(jsonschema.Draft202012Validator(schema), instance)
        assert errors(_SchemaValidator(schema), instance) == theirs, instance
    assert any(errors(jsonschema.Draft202012Validator(schema), i) for i in instances)


def test_missing_and_unknown_inputs_are_bad_input(cli, tmp_path: Path) -> None:
    path = tmp_path / "spec.yaml"
    path.write_text(spec("m: {usd_per_call: 0.01, latency_s: 0.001, p_ok: 1.0}",
                         ["{id: a, model: m, prompt: 'Answer {question}'}"], "inputs: {question: null}"))  # fmt: skip
    missing = cli("run", path, "--journal", tmp_path / "j.db")
    assert missing.code == 2 and "question" in missing.err and "steps[0].prompt" in missing.err
    unknown = cli(
        "run", path, "--journal", tmp_path / "j.db", "--input", "question=x", "--input", "qestion=y"
    )
    assert unknown.code == 2 and "qestion" in unknown.err
    bad = cli("run", path, "--journal", tmp_path / "j.db", "--input", "noequals")
    assert bad.code == 2 and "name=value" in bad.err
    twice = cli("run", path, "--journal", tmp_path / "j.db", "-i", "question=x", "-i", "question=y")
    assert twice.code == 2 and "--input question: given twice ('x', then 'y'); give it once" in twice.err
    ok = cli("run", path, "--journal", tmp_path / "j.db", "--input", "question=why?")
    assert ok.code == 0, ok.err


def test_an_input_can_be_read_from_a_file_or_standard_input(cli, tmp_path: Path, monkeypatch) -> None:
    """A document too long for a command line: --input-file name=path (- for stdin)."""
    path = tmp_path / "spec.yaml"
    path.write_text(spec("m: {usd_per_call: 0.01, latency_s: 0.001, p_ok: 1.0}",
                         ["{id: a, model: m, prompt: 'Summarise: {doc} for {who}'}"],
                         "inputs: {doc: null, who: null}"))  # fmt: skip
    db = tmp_path / "j.db"
    doc = tmp_path / "doc.txt"
    doc.write_bytes("\ufeffLine one, caf\u00e9.\nLine \"two\".\n".encode())  # a BOM, as Notepad writes
    r = cli("run", path, "--journal", db, "--input-file", f"doc={doc}", "-i", "who=ops", "--json")
    assert r.code == 0, r.err
    asked = Journal(db).calls(r.json()["run_id"])[0]["request_json"]
    assert '"Summarise: Line one, caf\u00e9.\\nLine \\"two\\".\\n for ops"' in asked
    monkeypatch.setattr("sys.stdin", io.TextIOWrapper(io.BytesIO(b"piped text")))
    r = cli("run", path, "--journal", db, "--input-file", "doc=-", "-i", "who=ops", "--json")
    assert r.code == 0, r.err
    assert "Summarise: piped text for ops" in Journal(db).calls(r.json()["run_id"])[0]["request_json"]


def test_an_input_file_that_cannot_be_read_as_text_is_bad_input(cli, tmp_path: Path, monkeypatch) -> None:
    path = tmp_path / "spec.yaml"
    path.write_text(spec("m: {usd_per_call: 0.01, latency_s: 0.001, p_ok: 1.0}",
                         ["{id: a, model: m, prompt: 'Summarise: {doc}'}"], "inputs: {doc: null}"))  # fmt: skip
    db = tmp_path / "j.db"
    binary = tmp_path / "scan.pdf"
    binary.write_bytes(b"%PDF-1.7\n\xe2\xe3\xcf\xd3")
    big = tmp_path / "big.txt"
    big.write_bytes(b"a" * (16 * 2**20 + 1))
    long = tmp_path / "long.txt"
    long.write_text("a" * 1000)
    monkeypatch.setattr("sys.stdin", io.TextIOWrapper(io.BytesIO(b"piped")))
    for args, said in [
        (["doc"], "--input-file 'doc': write it as name=path"),
        (["doc="], "--input-file 'doc=': write it as name=path"),
        ([f"doc={tmp_path / 'none.txt'}"], "none.txt: no such file; give the path of a text file"),
        ([f"doc={tmp_path}"], f"doc={tmp_path}: a folder; give the path of a text file"),
        ([f"doc={binary}"], "scan.pdf: not UTF-8 text (byte 0xe2 at offset 9); save it as UTF-8"),
        ([f"doc={big}"], "big.txt: more than 16 MB; an input is text for a prompt"),
        (["doc=-", "other=-"], "--input-file other=-: standard input holds another input already"),
        ([f"memo={long}"], f"--input-file memo: {path} declares no input 'memo' (declared: doc)"),
    ]:
        r = cli("run", path, "--journal", db, *[a for arg in args for a in ("--input-file", arg)])
        assert r.code == 2 and said in r.err and len(r.err.splitlines()) == 1, (args, r.err)
    r = cli("run", path, "--journal", db, "-i", "doc=short", "--input-file", f"doc={long}")
    assert r.code == 2 and r.err.endswith(  # a long value is not printed whole
        f"--input-file doc: given twice ('short', then {'a' * 37!r}...); give it once\n"
    ), r.err
    assert not db.exists()  # nothing ran
    from .conftest import EXAMPLES

    for command, extra in (("sweep", ["--max-cost", "1", "--runs", "2"]),
                           ("compare", [EXAMPLES / "single.yaml", "--runs", "2"])):  # fmt: skip
        r = cli(command, path, *extra, "--input-file", f"memo={long}", "--journal", db)
        said = ("no spec declares an input 'memo'" if command == "compare"
                else f"{path} declares no input 'memo'")  # fmt: skip
        assert r.code == 2 and f"--input-file memo: {said}" in r.err, r.err
    assert not db.exists()


def test_a_spec_can_come_from_standard_input(cli, tmp_path: Path, monkeypatch) -> None:
    """`trilemma run -`, as `kubectl apply -f -`: named <stdin>; a resume takes the journal's."""
    text = spec("m: {usd_per_call: 0.01, latency_s: 0.001, p_ok: 1.0}",
                ["{id: a, model: m}", "{id: b, model: m, after: [a]}"])  # fmt: skip

    def stdin(data: str) -> None:
        monkeypatch.setattr("sys.stdin", io.TextIOWrapper(io.BytesIO(data.encode())))

    db = tmp_path / "j.db"
    stdin(text)
    assert "Estimate of <stdin>" in cli("estimate", "-").out
    stdin(text)
    r = cli("run", "-", "--journal", db, "--max-cost", "0.015", "--json")
    assert r.code == 1 and r.json()["status"] == "budget_exhausted", r.err
    run = Journal(db).run(r.json()["run_id"])
    assert run is not None and run["spec_source"] == "<stdin>"
    stdin("")  # nothing there now: the resume reads the spec the journal kept
    resumed = cli("resume", "latest", "--journal", db, "--max-cost", "1", "--json")
    assert resumed.code == 0 and resumed.json()["status"] == "ok", resumed.err
    # a gate's module is looked for in the working folder, as beside a spec's file
    (tmp_path / "stdingates.py").write_text("def short(text):\n    return len(text) < 99\n")
    monkeypatch.chdir(tmp_path)
    stdin(text.replace("{id: b, model: m,", "{id: b, model: m, gate: {python: 'stdingates:short'},"))
    gated = cli("run", "-", "--journal", db, "--json")
    assert gated.code == 0 and gated.json()["status"] == "ok", gated.err
    stdin("")
    assert cli("run", "-", "--journal", db).err == (
        "trilemma: error: <stdin>: empty spec; start with `version: 1`, models: and steps:\n"
    )
    stdin(text.replace("steps:", "inputs: {doc: null}\nsteps:"))
    r = cli("run", "-", "--input-file", "doc=-", "--journal", db)
    assert r.code == 2 and "--input-file doc=-: standard input holds the spec already" in r.err
    stdin(text)
    r = cli("batch", "-", "--inputs", "-", "--journal", db)
    assert r.code == 2 and "--inputs -: the spec is standard input already" in r.err
    stdin(text)
    r = cli("compare", "-", "-", "--journal", db)
    assert r.code == 2 and "standard input holds one spec" in r.err


def test_prompt_naming_an_undeclared_name_is_a_spec_error(cli, tmp_path: Path) -> None:
    path = tmp_path / "spec.yaml"
    path.write_text(spec("m: {usd_per_call: 0.01, latency_s: 0.001, p_ok: 1.0}",
                         ["{id: a, model: m, prompt: 'Answer {qestion}'}"], "inputs: {question: null}"))  # fmt: skip
    r = cli("estimate", path)
    assert r.code == 2 and "steps[0].prompt" in r.err and "did you mean 'question'" in r.err


def test_debate_sends_agents_times_rounds_and_a_judge(tmp_path: Path) -> None:
    text = spec("m: {usd_per_call: 0.01, latency_s: 0.001, p_ok: 1.0}",
                ["{id: d, model: m, debate: {agents: 3, rounds: 2, judge: true}}"])  # fmt: skip
    r, j = run(text, tmp_path)
    roles = [c["role"] for c in j.calls(r.run_id)]
    assert sorted(roles) == sorted(
        [f"agent {a} round {k}" for a in (1, 2, 3) for k in (1, 2)] + ["judge"]
    )
    round2 = next(c for c in j.calls(r.run_id) if c["role"] == "agent 1 round 2")
    assert "Other agents answered" in round2["request_json"]
    assert r.calls == 7 == parse_workflow(text).steps[0].calls


def test_vote_takes_the_majority(tmp_path: Path) -> None:
    answers = iter(["B", "A", "B", "C", "b "])

    async def fn(request: Any) -> str:
        return next(answers)

    text = spec(
        "m: {usd_per_call: 0.01, latency_s: 0.001, p_ok: 1.0}",
        ["{id: v, model: m, vote: {samples: 5}}"],
    )
    r, j = run(text, tmp_path, providers={"m": FunctionProvider(fn)})
    assert r.outputs == {"v": "B"}
    assert [c["role"] for c in j.calls(r.run_id)] == [f"sample {i}" for i in range(1, 6)]


def test_objects_from_before_a_run_sit_out_the_collector_until_it_ends(tmp_path: Path) -> None:
    """A full collection in mid-run would walk every object the process holds."""
    import gc

    seen: list[int] = []

    async def fn(request: Any) -> str:
        seen.append(gc.get_freeze_count())
        if len(seen) == 2:
            raise RuntimeError("the provider broke")  # the collector is restored all the same
        return "ok"

    from trilemma import _FROZEN_AT_IMPORT

    text = spec("m: {usd_per_call: 0.01, latency_s: 0.001, p_ok: 1.0}",
                ["{id: a, model: m}", "{id: b, model: m, after: [a]}"])  # fmt: skip
    before = gc.get_freeze_count()  # 0, or Python 3.12's own few hundred at its start
    assert before <= _FROZEN_AT_IMPORT
    with pytest.raises(RuntimeError, match="broke"):
        run(text, tmp_path, providers={"m": FunctionProvider(fn)})
    assert min(seen) > before
    assert gc.get_freeze_count() == 0
    # A program that froze its own objects (before forking, say) finds them still frozen.
    gc.freeze()
    try:
        frozen = gc.get_freeze_count()
        seen.clear()
        r, _ = run(text.replace("{id: b, model: m, after: [a]}", "{id: c, model: m}"), tmp_path)
        # not unfrozen (that empties the count); a frozen object the run let go of (the
        # thread's context variables, replaced by the run's own) leaves it as it dies
        assert r.status == "ok" and frozen - 10 <= gc.get_freeze_count() <= frozen
    finally:
        gc.unfreeze()


def test_a_program_that_froze_its_heap_before_the_runner_loaded_keeps_it_frozen(
    tmp_path: Path,
) -> None:
    """A server imports trilemma, freezes its heap and forks; the runner loads at the first
    run, after the freeze: what the run finds frozen then is still the program's."""
    import subprocess
    import sys

    code = textwrap.dedent(f"""
        import gc, trilemma
        gc.freeze()
        frozen = gc.get_freeze_count()
        wf = trilemma.parse_workflow("version: 1\\nmodels: {{m: {{usd_per_call: 0.01, "
                                     "latency_s: 0.001, p_ok: 1.0}}}}\\nsteps: [{{id: a, model: m}}]")
        with trilemma.Journal({str(tmp_path / "j.db")!r}) as journal:
            assert trilemma.execute(wf, journal=journal, seed=1).status == "ok"
        print(gc.get_freeze_count() > 0.9 * frozen, frozen > 1000)  # not unfrozen: 0
    """)
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0 and done.stdout == "True True\n", (done.stdout, done.stderr)


def test_a_providers_own_bug_reaches_the_caller_and_the_journal_says_failed(
    tmp_path: Path,
) -> None:
    """Not a failed call (those are ProviderErrors): the error itself, not an ExceptionGroup."""

    async def fn(request: Any) -> str:
        if "Task: b." in request.messages[-1]["content"]:
            raise KeyError("no such field")
        return "ok"

    text = spec("m: {usd_per_call: 0.01, latency_s: 0.001, p_ok: 1.0}",
                ["{id: a, model: m}", "{id: b, model: m, after: [a]}"])  # fmt: skip
    with pytest.raises(KeyError, match="no such field"):
        run(text, tmp_path, providers={"m": FunctionProvider(fn)})
    journal = Journal(tmp_path / "j.db")
    (row,) = journal.runs()
    assert row["status"] == "failed"
    assert row["error"] == "KeyError raised in the run: 'no such field'"
    assert journal.steps(row["run_id"])["a"]["output"] == "ok"  # what finished is kept


def test_stop_when_ends_the_run_early_and_counts_the_saving(tmp_path: Path) -> None:
    text = spec(
        "m: {usd_per_call: 0.01, latency_s: 0.01, p_ok: 1.0}\nslow: {usd_per_call: 0.05, latency_s: 3, p_ok: 1.0}",
        [
            "{id: draft, model: m}",
            "{id: polish, model: slow, after: [draft]}",
            "{id: side, model: slow}",
        ],
        "stop_when: draft",
    )
    r, _ = run(text, tmp_path)
    assert r.status == "ok"
    assert r.outputs == {"draft": "answer of draft (attempt 1)"}
    assert r.latency_s < 1.0
    assert r.saved_usd == pytest.approx(0.10)


def test_cached_step_is_served_from_the_journal_on_the_second_run(tmp_path: Path) -> None:
    text = spec(
        "m: {usd_per_call: 0.01, latency_s: 0.001, p_ok: 1.0}", ["{id: a, model: m, cached: true}"]
    )
    first, j = run(text, tmp_path)
    second, _ = run(text, tmp_path)
    assert first.cost_usd == 0.01 and second.cost_usd == 0.0
    assert second.outputs == first.outputs
    assert [c["cache_hit"] for c in j.calls(second.run_id)] == [1]
    assert (first.calls, second.calls) == (1, 0)  # a hit sends nothing
    [sent], [hit] = j.calls(first.run_id), j.calls(second.run_id)
    assert (hit["prompt_tokens"], hit["completion_tokens"]) == (
        sent["prompt_tokens"], sent["completion_tokens"])  # what the hit saved  # fmt: skip
    assert hit["prompt_tokens"] > 0


def test_provider_errors_raised_by_a_fake_are_retried(tmp_path: Path) -> None:
    failures = iter([TransientError("flaky"), ProviderTimeout("slow")])

    async def fn(request: Any) -> str:
        exc = next(failures, None)
        if exc is not None:
            raise exc
        return "done"

    text = spec(
        "m: {usd_per_call: 0.01, latency_s: 0.001, p_ok: 1.0}", ["{id: a, model: m, retries: 2}"]
    )
    r, j = run(text, tmp_path, providers={"m": FunctionProvider(fn)})
    assert r.outputs == {"a": "done"}
    assert [c["outcome"] for c in j.calls(r.run_id)] == ["transient", "timeout", "ok"]


def test_longest_remaining_path_goes_first_when_slots_are_scarce(tmp_path: Path) -> None:
    text = spec(
        "m: {usd_per_call: 0.01, latency_s: 0.02, p_ok: 1.0}",
        ["{id: short, model: m}", "{id: long1, model: m}", "{id: long2, model: m, after: [long1]}",
         "{id: long3, model: m, after: [long2]}"],
        "concurrency: 1",
    )  # fmt: skip
    r, j = run(text, tmp_path)
    order = [c["step_id"] for c in j.calls(r.run_id)]
    assert order.index("long1") < order.index("short")


def test_priority_limiter_serves_lowest_value_first() -> None:
    async def scenario() -> list[str]:
        lim = PriorityLimiter(1)
        await lim.acquire()
        order: list[str] = []

        async def wait(name: str, prio: float) -> None:
            await lim.acquire(prio)
            order.append(name)
            lim.release()

        tasks = [
            asyncio.create_task(wait(n, p)) for n, p in (("late", 5), ("urgent", -3), ("mid", 0))
        ]
        await asyncio.sleep(0)
        lim.release()
        await asyncio.gather(*tasks)
        return order

    assert asyncio.run(scenario()) == ["urgent", "mid", "late"]


def test_rate_limiter_waits_once_the_bucket_is_empty() -> None:
    async def scenario() -> float:
        lim = RateLimiter(600)  # 10 a second
        for _ in range(600):
            await lim.acquire()
        started = time.monotonic()
        await lim.acquire(2)
        return time.monotonic() - started

    assert 0.15 <= asyncio.run(scenario()) < 0.6


def test_cli_run_json_contract_and_ledger(cli, tmp_path: Path) -> None:
    from .conftest import EXAMPLES

    db = tmp_path / "j.db"
    r = cli("run", EXAMPLES / "diamond.yaml", "--journal", db, "--seed", "4", "--json")
    d = r.json()
    for key in ("run_id", "status", "cost_usd", "latency_s", "calls", "outputs"):
        assert key in d
    assert d["status"] in ("ok", "failed") and r.code == (0 if d["status"] == "ok" else 1)
    runs = cli("runs", "--journal", db, "--json").json()
    assert runs[0]["run_id"] == d["run_id"]
    for key in ("run_id", "status", "started_at", "cost_usd"):
        assert key in runs[0]
    ledger = cli("ledger", d["run_id"], "--journal", db, "--json").json()
    assert len(ledger) == d["calls"]
    for key in ("step", "attempt", "model", "prompt_tokens", "completion_tokens", "cost_usd", "latency_s",
                "outcome", "cache_hit"):  # fmt: skip
        assert key in ledger[0]
    assert sum(x["cost_usd"] or 0 for x in ledger) == pytest.approx(d["cost_usd"])
    table = cli("run", EXAMPLES / "diamond.yaml", "--journal", db, "--seed", "4")
    assert "predicted" in table.out and "measured" in table.out
    said = " ".join(table.out.split())  # the next commands, however the terminal wraps them
    follow = said.split("next: ")[1].split(" (every call)")[0].split()
    assert follow[:2] == ["trilemma", "ledger"] and follow[3:] == ["--journal", str(db)]
    assert f"-{follow[2]}: " in said  # the end of the id of the run just made ("Run ID: ok")
    assert cli(*follow[1:], "--json").code == 0
    lines = cli("runs", "--journal", db).out.splitlines()
    column = [c.strip() for c in next(x for x in lines if "run_id" in x).split("┃")].index("seed")
    seeds = [x.split("│")[column].strip() for x in lines if d["run_id"][:8] in x]
    assert seeds == ["4", "4"]  # the seed that repeats each run
    steps = table.out.splitlines()
    head = next(x for x in steps if x.split()[:3] == ["step", "status", "attempts"])
    for line in (x for x in steps if x.split()[:1] == ["plan"]):  # figures end under their header
        assert line[:head.index("cost") + 4].endswith("$0.0300"), (head, line)
        assert line[:head.index("attempts") + 8].endswith(" 1"), (head, line)
    shown = cli("ledger", d["run_id"], "--journal", db).out.splitlines()
    head = next(x for x in shown if "attempt" in x).split("┃")[1:-1]
    row = next(x for x in shown if x.startswith("│")).split("│")[1:-1]
    for name, cell in zip(head, row, strict=True):  # figures to the right, words to the left
        figure = name.strip() in ("attempt", "tokens in", "tokens out", "cost", "latency")
        aligned = str.rjust if figure else str.ljust
        assert cell == f" {aligned(cell.strip(), len(cell) - 2)} ", (name, cell)


def test_ledger_of_an_unknown_run_is_bad_input(cli, tmp_path: Path) -> None:
    db = tmp_path / "j.db"
    Journal(db)
    r = cli("ledger", "nope", "--journal", db)
    assert r.code == 2 and "trilemma runs" in r.err
    missing = cli("runs", "--journal", tmp_path / "none.db")
    assert missing.code == 2 and "no journal" in missing.err


def test_the_ledger_shows_one_steps_calls_or_the_calls_that_ended_one_way(
    cli, tmp_path: Path
) -> None:
    """--step and --outcome narrow the ledger; under the table, what its calls were billed
    and how they ended; a step or an outcome that cannot match is bad input."""
    db, spec = tmp_path / "j.db", tmp_path / "faulty.yaml"
    spec.write_text(
        "version: 1\nmodels:\n  m: {usd_per_call: 0.01, latency_s: 0.001, p_ok: 1.0, "
        "faults: {transient_error_rate: 0.5}}\nsteps:\n"
        + "".join(f"  - {{id: s{i}, model: m, retries: 20}}\n" for i in range(6)))
    d = cli("run", spec, "--journal", db, "--seed", "2", "--json").json()
    everything = cli("ledger", d["run_id"], "--journal", db, "--json").json()
    failed = [r for r in everything if r["outcome"] == "transient"]
    assert failed and len(everything) == 6 + len(failed)  # every step ok once, some retried
    r = cli("ledger", d["run_id"], "--journal", db, "--outcome", "transient", "--json")
    assert r.json() == failed
    both = cli("ledger", d["run_id"], "--journal", db, "--step", "s1", "--step", "s4",
               "--outcome", "ok", "--json").json()  # fmt: skip
    assert sorted((x["step"], x["outcome"]) for x in both) == [("s1", "ok"), ("s4", "ok")]
    table = " ".join(cli("ledger", d["run_id"], "--journal", db).out.split())
    assert f"{len(everything)} calls" in table
    assert f"billed $0.0600; 6 ok, {len(failed)} transient" in table
    one = " ".join(cli("ledger", d["run_id"], "--journal", db, "--step", "s1",
                       "--outcome", "ok").out.split())  # fmt: skip
    assert ": 1 call (step s1; outcome ok)" in one and "billed $0.0100; 1 ok" in one
    none = " ".join(cli("ledger", d["run_id"], "--journal", db, "--step", "s1", "--outcome",
                        "timeout").out.split())  # fmt: skip
    assert ": 0 calls (step s1; outcome timeout)" in none and "no call matches these filters" in none
    cut = cli("run", spec, "--journal", db, "--deadline", "0.000001", "--json").json()
    assert cut["status"] == "deadline" and cut["calls"] == 0  # over before its first call
    empty = " ".join(cli("ledger", cut["run_id"], "--journal", db).out.split())
    assert f"the run sent no call; it ended deadline: {cut['error']}" in empty
    for flags, said in ((("--step", "s9"), "has no such step (its steps: s0, s1, s2, s3, s4, s5)"),
                        (("--outcome", "failed"), "give one of ok, rejected, transient")):
        bad = cli("ledger", d["run_id"], "--journal", db, *flags)
        assert bad.code == 2 and said in bad.err and "Traceback" not in bad.err


def test_same_seed_same_outcomes_across_runs(tmp_path: Path) -> None:
    text = spec("m: {usd_per_call: 0.01, latency_s: 0.001, p_ok: 0.5, latency_jitter: 0.3}",
                [f"{{id: s{i}, model: m, retries: 5}}" for i in range(10)])  # fmt: skip
    a, ja = run(text, tmp_path, seed=11)
    b, jb = run(text, tmp_path, seed=11)
    c, _ = run(text, tmp_path, seed=12)
    assert a.run_id != b.run_id

    def outcomes(j: Journal, run_id: str) -> list[tuple[str, int, str]]:
        return sorted((x["step_id"], x["attempt"], x["outcome"]) for x in j.calls(run_id))

    assert outcomes(ja, a.run_id) == outcomes(jb, b.run_id)  # concurrent calls may interleave
    assert a.cost_usd == b.cost_usd
    assert {k: s.attempts for k, s in a.steps.items()} != {
        k: s.attempts for k, s in c.steps.items()
    }


def test_a_run_without_a_seed_reports_the_one_it_drew_and_repeats_with_it(cli, tmp_path) -> None:
    """The spec has no seed: the run draws one, says which (run --json, its table, runs
    --json), and --seed with it sends the same attempts, bills the same and predicts the
    same success under the ceiling (the Monte Carlo beside the run draws with it too)."""
    path = tmp_path / "spec.yaml"
    path.write_text(spec("m: {usd_per_call: 0.01, latency_s: 0.001, p_ok: 0.5}",
                         [f"{{id: s{i}, model: m, retries: 6}}" for i in range(8)]))  # fmt: skip
    args = ["run", path, "--journal", tmp_path / "j.db", "--max-cost", "0.2"]
    with fast_retries():
        first = cli(*args, "--json").json()
        again = cli(*args, "--json", "--seed", str(first["seed"])).json()
        table = cli(*args, "--seed", "5").out

    def attempts(doc: dict[str, Any]) -> dict[str, int]:
        return {k: s["attempts"] for k, s in doc["steps"].items()}

    assert isinstance(first["seed"], int) and again["seed"] == first["seed"]
    assert attempts(again) == attempts(first) and again["cost_usd"] == first["cost_usd"]
    assert again["predicted_under_budget"] == first["predicted_under_budget"]
    assert "(seed 5)" in table.splitlines()[0]
    listed = cli("runs", "--journal", tmp_path / "j.db", "--json").json()
    assert [r["seed"] for r in listed] == [5, first["seed"], first["seed"]]


def test_each_step_reports_its_own_cost_when_steps_run_in_parallel(tmp_path: Path) -> None:
    text = spec("m: {usd_per_call: 0.01, latency_s: 0.01, latency_jitter: 0.5, p_ok: 0.6}",
                [f"{{id: s{i}, model: m, retries: 10}}" for i in range(12)])  # fmt: skip
    r, j = run(text, tmp_path, seed=4)
    for sid, step in r.steps.items():
        billed = sum(c["cost_usd"] or 0 for c in j.calls(r.run_id) if c["step_id"] == sid)
        assert step.cost_usd == pytest.approx(billed)
        assert step.cost_usd == pytest.approx(0.01 * step.attempts)
    assert sum(s.cost_usd for s in r.steps.values()) == pytest.approx(r.cost_usd)


def _committed_steps(path: Path) -> set[str]:
    """What another process would see in the journal now."""
    other = Journal(path)
    try:
        return {
            k for k, v in other.steps(other.runs()[0]["run_id"]).items() if v["status"] == "done"
        }
    finally:
        other.close()


CHAIN3 = ["{id: a, model: m}", "{id: b, model: m, after: [a]}", "{id: c, model: m, after: [b]}"]


def test_a_simulated_runs_records_commit_within_the_free_window(tmp_path: Path) -> None:
    # 40 ms steps: when b is done, a finished 40 ms ago, past the 25 ms window.
    seen: dict[str, set[str]] = {}

    def on_event(e: Any) -> None:
        if e.kind == "step_done":
            seen[e.step] = _committed_steps(tmp_path / "j.db")

    text = spec("m: {usd_per_call: 0.01, latency_s: 0.04, p_ok: 1.0}", CHAIN3)
    r, _ = run(text, tmp_path, on_event=on_event)
    assert r.status == "ok"
    assert "a" in seen["b"] and "b" in seen["c"], seen


def test_a_billed_calls_answer_commits_before_the_next_call_is_sent(tmp_path: Path) -> None:
    # A real endpoint: each call's write-ahead record commits every deferred record with it,
    # so b's request cannot go out while a's answer is only in memory.
    seen: dict[str, set[str]] = {}

    async def answer(request: Any) -> str:
        step = request.call_key.split(":")[0]
        seen[step] = _committed_steps(tmp_path / "j.db")
        return "ok"

    text = spec("m: {usd_per_call: 0.01, latency_s: 1.0, p_ok: 1.0}", CHAIN3)
    r, _ = run(text, tmp_path, providers={"m": FunctionProvider(answer)})
    assert r.status == "ok"
    assert seen["b"] == {"a"} and seen["c"] == {"a", "b"}, seen


def test_a_call_cancelled_while_its_record_commits_is_journaled_as_never_sent(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from trilemma.journal.store import JournalWriter

    durable = JournalWriter.write

    async def slow_write(self: JournalWriter, *args: Any, **kwargs: Any) -> None:
        await durable(self, *args, **kwargs)  # the record lands...
        await asyncio.sleep(5)  # ...and the deadline passes before the caller resumes

    monkeypatch.setattr(JournalWriter, "write", slow_write)
    sent: list[str] = []

    async def answer(request: Any) -> str:
        sent.append(request.call_key)
        return "ok"

    text = spec("m: {usd_per_call: 0.01, latency_s: 0.01, p_ok: 1.0}",
                [f"{{id: s{i}, model: m}}" for i in range(3)])  # fmt: skip
    r, j = run(text, tmp_path, deadline_s=0.2, providers={"m": FunctionProvider(answer)})
    assert r.status == "deadline" and sent == [] and r.cost_usd == 0.0
    assert r.calls == 0  # journaled, never sent: not counted as calls
    calls = j.calls(r.run_id)
    assert len(calls) == 3
    for c in calls:
        assert c["state"] == "finished" and c["outcome"] == "unsent"
        assert c["error"] == "cancelled before it was sent" and c["cost_usd"] == 0.0


def test_every_call_of_a_fan_out_is_journaled_before_it_is_sent(tmp_path: Path) -> None:
    # Twenty calls start in one turn of the loop and share one write-ahead commit.
    unseen: list[str] = []

    async def answer(request: Any) -> str:
        other = Journal(tmp_path / "j.db")
        try:
            keys = {c["idempotency_key"] for c in other.calls(other.runs()[0]["run_id"])}
        finally:
            other.close()
        if request.idempotency_key not in keys:
            unseen.append(request.call_key)
        return "ok"

    text = spec("m: {usd_per_call: 0.01, latency_s: 1.0, p_ok: 1.0}",
                [f"{{id: s{i}, model: m}}" for i in range(20)])  # fmt: skip
    r, _ = run(text, tmp_path, providers={"m": FunctionProvider(answer)})
    assert r.status == "ok" and len(r.outputs) == 20
    assert unseen == []


def test_a_refused_call_of_a_vote_lets_its_siblings_finish_and_be_billed(tmp_path: Path) -> None:
    # Three samples at $0.01 under a $0.025 ceiling: two are sent, the third is refused. The
    # two in flight were sent and will be billed: the ledger must record them, not leave them
    # 'started' as if the process had crashed.
    text = spec("m: {usd_per_call: 0.01, latency_s: 0.05, p_ok: 1.0}",
                ["{id: v, model: m, vote: {samples: 3}}"])  # fmt: skip
    r, j = run(text, tmp_path, max_cost_usd=0.025)
    assert r.status == "budget_exhausted"
    calls = j.calls(r.run_id)
    assert [c["state"] for c in calls] == ["finished", "finished"]
    assert [c["outcome"] for c in calls] == ["ok", "ok"]
    assert r.cost_usd == pytest.approx(0.02) and r.cost_usd == pytest.approx(j.spent(r.run_id))


def test_an_answer_cached_under_one_gate_is_not_served_under_another(tmp_path: Path) -> None:
    def text(gate: str) -> str:
        return spec("m: {usd_per_call: 0.01, latency_s: 0.001, p_ok: 1.0}",
                    [f"{{id: a, model: m, cached: true, gate: {{regex: '{gate}'}}}}"])  # fmt: skip

    first, _ = run(text("answer"), tmp_path)
    same, _ = run(text("answer"), tmp_path)
    stricter, _ = run(text("^answer of a"), tmp_path)
    assert (first.cost_usd, same.cost_usd, stricter.cost_usd) == (0.01, 0.0, 0.01)


def test_a_tenant_is_served_only_its_own_cached_answers(tmp_path: Path, cli) -> None:
    text = spec("m: {usd_per_call: 0.01, latency_s: 0.001, p_ok: 1.0}",
                ["{id: a, model: m, cached: true}"])  # fmt: skip
    costs = {}
    for label, tenant in (("acme", "acme"), ("acme again", "acme"), ("beta", "beta"),
                          ("none", None), ("none again", None)):  # fmt: skip
        r, j = run(text, tmp_path, tenant=tenant)
        assert r.status == "ok" and j.run(r.run_id)["tenant"] == tenant
        costs[label] = r.cost_usd
    assert costs == {"acme": 0.01, "acme again": 0.0, "beta": 0.01, "none": 0.01,
                     "none again": 0.0}  # fmt: skip
    db = str(j.path)
    listed = cli("runs", "--journal", db, "--json").json()
    assert [r["tenant"] for r in listed] == [None, None, "beta", "acme", "acme"]
    assert "tenant" in cli("runs", "--journal", db).out  # a column, since some runs have one
    cleared = cli("cache", "clear", "--tenant", "acme", "--journal", db, "--json").json()
    assert cleared == {"exact_removed": 1, "semantic_removed": 0}
    assert run(text, tmp_path, tenant="acme")[0].cost_usd == 0.01  # asked again
    assert run(text, tmp_path, tenant="beta")[0].cost_usd == 0.0  # beta's entry stayed
    assert run(text, tmp_path)[0].cost_usd == 0.0  # and so did the shared one


def test_a_resumed_run_keeps_its_tenant(tmp_path: Path, cli) -> None:
    path = tmp_path / "two.yaml"
    path.write_text(spec("m: {usd_per_call: 0.01, latency_s: 0.001, p_ok: 1.0}",
                         ["{id: a, model: m, cached: true}",
                          "{id: b, model: m, after: [a], cached: true}"]))  # fmt: skip
    db = str(tmp_path / "j.db")
    first = cli("run", path, "--tenant", "acme", "--max-cost", "0.015", "--json", "--journal", db)
    assert first.code == 1 and first.json()["status"] == "budget_exhausted"
    resumed = cli("resume", first.json()["run_id"], "--max-cost", "1", "--json", "--journal", db)
    assert resumed.code == 0 and resumed.json()["cost_usd"] == pytest.approx(0.02)
    mine = cli("run", path, "--tenant", "acme", "--json", "--journal", db).json()
    shared = cli("run", path, "--json", "--journal", db).json()
    assert (mine["cost_usd"], shared["cost_usd"]) == (0.0, pytest.approx(0.02))


@pytest.mark.parametrize("tenant", ["", "x" * 201, "acme\nbeta"])
def test_a_bad_tenant_is_one_line_and_runs_nothing(tmp_path: Path, cli, tenant: str) -> None:
    path = tmp_path / "one.yaml"
    path.write_text(spec("m: {usd_per_call: 0.01, latency_s: 0.001, p_ok: 1.0}", ["{id: a, model: m}"]))
    db = tmp_path / "j.db"
    r = cli("run", path, "--tenant", tenant, "--journal", db)
    assert r.code == 2 and r.err.count("\n") == 1 and "--tenant" in r.err, r.err
    assert "1 to 200 printable characters" in r.err
    assert not db.exists()


def test_cache_stats_and_clear(tmp_path: Path, cli) -> None:
    text = spec(
        "m: {usd_per_call: 0.01, latency_s: 0.001, p_ok: 1.0}\nn: {usd_per_call: 0.01, latency_s: 0.001, p_ok: 1.0}",
        ["{id: a, model: m, cached: true}", "{id: b, model: n, cached: true}"],
    )  # fmt: skip
    _, j = run(text, tmp_path)
    run(text, tmp_path)  # both steps served from the cache
    db = str(j.path)
    stats = {r["model"]: r for r in cli("cache", "stats", "--journal", db, "--json").json()}
    assert {m: (r["entries"], r["hits"], r["semantic_entries"]) for m, r in stats.items()} == {
        "m": (1, 1, 0), "n": (1, 1, 0)}  # fmt: skip
    assert stats["m"]["oldest"] is not None
    assert "Cache of" in cli("cache", "stats", "--journal", db).out
    typo = cli("cache", "clear", "--model", "M", "--journal", db)
    assert typo.code == 0 and "removed 0 cached answers" in typo.out
    assert "no cached answer" in typo.err and "for model 'M'; it holds answers for 'm', 'n'" in typo.err
    old = cli("cache", "clear", "--older-than", "1", "--journal", db, "--json").json()
    assert old == {"exact_removed": 0, "semantic_removed": 0}  # nothing is a day old
    assert cli("cache", "clear", "--model", "m", "--journal", db, "--json").json()["exact_removed"] == 1
    third, _ = run(text, tmp_path)
    assert third.cost_usd == pytest.approx(0.01)  # m asked again, n still cached
    r = cli("cache", "clear", "--journal", db)
    assert r.code == 0 and "removed 2 cached answers" in r.out  # m's new answer and n's
    assert r.err == ""
    gone = cli("cache", "clear", "--model", "m", "--journal", db)
    assert "removed 0" in gone.out and "it is empty" in gone.err
    missing = cli("cache", "stats", "--journal", tmp_path / "none.db")
    assert missing.code == 2 and "no journal here" in missing.err


def test_a_run_its_budget_stops_at_every_try_says_so_before_it_starts(cli, write, tmp_path) -> None:
    """A deadline under the critical path, or a ceiling under the cost of a run without a
    retry, stops every run that goes to the end: the run says so on standard error before it
    spends anything (and still runs: a stop_when may end it sooner); a budget that fits says
    nothing."""
    spec = write("version: 1\nmodels: {m: {usd_per_call: 0.01, latency_s: 0.2, p_ok: 1}}\n"
                 "steps: [{id: a, model: m}, {id: b, model: m, after: [a]}]\n")  # fmt: skip
    db = tmp_path / "j.db"
    late = cli("run", spec, "--deadline", "0.3", "--journal", db)
    note = "trilemma: note: deadline: the critical path (0.40s) is over 0.3s, so every run that goes to the end is cut"
    assert late.code == 1 and late.err.startswith(note + "\n") and "deadline" in late.err
    poor = cli("run", spec, "--max-cost", "0.015", "--journal", db, "--json")
    assert poor.code == 1 and poor.json()["status"] == "budget_exhausted"
    assert poor.err.startswith("trilemma: note: budget: even without a retry a run costs $0.0200, "
                               "over the $0.0150 ceiling")  # fmt: skip
    fits = cli("run", spec, "--deadline", "5", "--max-cost", "1", "--journal", db)
    assert fits.code == 0 and "note:" not in fits.err
