"""Every malformed spec, flag or file: exit 2, one line on stderr naming file and field."""

from __future__ import annotations

from pathlib import Path

import pytest

from .conftest import BASE_SPEC, EXAMPLES

MODELS = """\
version: 1
models:
  premium: {usd_per_call: 0.030, latency_s: 2.0, p_ok: 0.985}
steps:
"""

BOMB = """\
a: &a ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]
b: &b [*a,*a,*a,*a,*a,*a,*a,*a,*a]
c: &c [*b,*b,*b,*b,*b,*b,*b,*b,*b]
d: &d [*c,*c,*c,*c,*c,*c,*c,*c,*c]
e: &e [*d,*d,*d,*d,*d,*d,*d,*d,*d]
f: &f [*e,*e,*e,*e,*e,*e,*e,*e,*e]
g: &g [*f,*f,*f,*f,*f,*f,*f,*f,*f]
h: &h [*g,*g,*g,*g,*g,*g,*g,*g,*g]
i: &i [*h,*h,*h,*h,*h,*h,*h,*h,*h]
"""

CASES: dict[str, tuple[str | bytes, str, str]] = {
    # name: (content, field the message must name, words it must contain)
    "yaml syntax": ("version: 1\nmodels: {a: [\n", "line", "YAML syntax error"),
    "top level list": ("- 1\n- 2\n", "", "not a mapping"),
    "top level scalar": ("just words\n", "", "not a mapping"),
    "empty file": ("", "", "empty spec"),
    "only a comment": ("# nothing\n", "", "empty spec"),
    "unknown top field": (
        BASE_SPEC + "budjet: {max_cost_usd: 1}\n",
        "budjet",
        "did you mean 'budget'",
    ),
    "misspelt step field": (
        MODELS + "  - {id: a, model: premium, retires: 1}\n",
        "steps[0].retires",
        "did you mean 'retries'",
    ),
    "another tool's name for after": (
        MODELS + "  - {id: a, model: premium}\n  - {id: b, model: premium, depends_on: [a]}\n",
        "steps[1].depends_on",
        "did you mean 'after'",
    ),
    "a choice written out in full": (
        "version: 1\nmodels: {p: {usd_per_call: 1, latency_s: 1, p_ok: 0.9, provider: simulator}}\n"
        "steps: [{id: a, model: p}]\n",
        "models.p.provider",
        "did you mean 'sim'",
    ),
    "a misspelt choice": (
        "version: 1\nmodels: {p: {usd_per_call: 1, latency_s: 1, p_ok: 0.9, provider: opanai}}\n"
        "steps: [{id: a, model: p}]\n",
        "models.p.provider",
        "did you mean 'openai'",
    ),
    "misspelt model field": (
        "version: 1\nmodels: {p: {usd_per_call: 1, latency: 2, p_ok: 0.5}}\n"
        "steps: [{id: a, model: p}]\n",
        "models.p.latency",
        "unknown field",
    ),
    "missing version": ("models: {}\nsteps: []\n", "version", "add `version: 1`"),
    "future version": (BASE_SPEC.replace("version: 1", "version: 2"), "version", "newer"),
    "version not a number": (
        BASE_SPEC.replace("version: 1", "version: one"),
        "version",
        "not a version",
    ),
    "duplicate step id": (
        MODELS + "  - {id: a, model: premium}\n  - {id: a, model: premium}\n",
        "steps[1].id",
        "duplicate step id",
    ),
    "unknown model": (
        MODELS + "  - {id: a, model: premum}\n",
        "steps[0].model",
        "did you mean 'premium'",
    ),
    "unknown dependency": (
        MODELS + "  - {id: plan, model: premium}\n  - {id: b, model: premium, after: [plam]}\n",
        "steps[1].after[0]",
        "did you mean 'plan'",
    ),
    "cycle": (
        MODELS + "  - {id: a, model: premium, after: [c]}\n"
        "  - {id: b, model: premium, after: [a]}\n  - {id: c, model: premium, after: [b]}\n",
        "steps.",
        "cycle",
    ),
    "self loop": (
        MODELS + "  - {id: a, model: premium, after: [a]}\n",
        "steps.a.after",
        "depends on itself",
    ),
    "p_ok above 1": (
        "version: 1\nmodels: {p: {usd_per_call: 1, latency_s: 2, p_ok: 1.5}}\n"
        "steps: [{id: a, model: p}]\n",
        "models.p.p_ok",
        "less than or equal to 1",
    ),
    "p_ok zero": (
        "version: 1\nmodels: {p: {usd_per_call: 1, latency_s: 2, p_ok: 0}}\n"
        "steps: [{id: a, model: p}]\n",
        "models.p.p_ok",
        "greater than 0",
    ),
    "step p_ok negative": (
        MODELS + "  - {id: a, model: premium, p_ok: -0.1}\n",
        "steps[0].p_ok",
        "greater than 0",
    ),
    "negative price": (
        "version: 1\nmodels: {p: {usd_per_call: -1, latency_s: 2, p_ok: 0.5}}\n"
        "steps: [{id: a, model: p}]\n",
        "models.p.usd_per_call",
        "greater than or equal",
    ),
    "infinite latency": (
        "version: 1\nmodels: {p: {usd_per_call: 1, latency_s: .inf, p_ok: 0.5}}\n"
        "steps: [{id: a, model: p}]\n",
        "models.p.latency_s",
        "finite",
    ),
    "nan price": (
        "version: 1\nmodels: {p: {usd_per_call: .nan, latency_s: 1, p_ok: 0.5}}\n"
        "steps: [{id: a, model: p}]\n",
        "models.p.usd_per_call",
        "",
    ),
    "no price": (
        "version: 1\nmodels: {p: {latency_s: 1, p_ok: 0.5}}\nsteps: [{id: a, model: p}]\n",
        "models.p",
        "no price",
    ),
    "negative retries": (
        MODELS + "  - {id: a, model: premium, retries: -1}\n",
        "steps[0].retries",
        "greater than or equal to 0",
    ),
    "zero agents": (
        MODELS + "  - {id: a, model: premium, debate: {agents: 0, rounds: 2}}\n",
        "steps[0].debate.agents",
        "greater than or equal to 1",
    ),
    "zero rounds": (
        MODELS + "  - {id: a, model: premium, debate: {agents: 2, rounds: 0}}\n",
        "steps[0].debate.rounds",
        "greater than or equal to 1",
    ),
    "both debate forms": (
        MODELS + "  - {id: a, model: premium, debate_rounds: 1, debate: {agents: 2, rounds: 1}}\n",
        "steps[0]",
        "not several",
    ),
    "no steps": (MODELS + "  []\n", "steps", "no steps"),
    "no models": ("version: 1\nmodels: {}\nsteps: [{id: a, model: p}]\n", "models", "no models"),
    "steps not a list": (MODELS + "  plan: premium\n", "steps", "list"),
    "binary garbage": (b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR\x00\x00", "", "binary"),
    "not utf-8": (b"version: 1\nname: \xff\xfe\xfa\n", "", "not UTF-8"),
    "alias bomb": (BOMB, "", "alias"),
    "duplicate yaml key": (
        "version: 1\nversion: 1\nmodels: {}\nsteps: []\n",
        "line",
        "duplicate key",
    ),
    "boolean as retries": (
        MODELS + "  - {id: a, model: premium, retries: lots}\n",
        "steps[0].retries",
        "should be a whole number (got 'lots')",
    ),
    # pydantic's words ("Input should be a valid string", "got None") put in a YAML writer's
    "empty value": (
        "version: 1\nmodels: {p: {usd_per_call: 1, latency_s: 1, p_ok:}}\nsteps: [{id: a, model: p}]\n",
        "models.p.p_ok",
        "is empty (null); write a number after `p_ok:`",
    ),
    "number as a step id": (
        MODELS + "  - {id: 7, model: premium}\n",
        "steps[0].id",
        "should be text, not the number 7; write it in quotes: '7'",
    ),
    "boolean as a model name": (
        MODELS + "  - {id: a, model: yes}\n",
        "steps[0].model",
        "not the boolean true; write it in quotes: 'true'",
    ),
    "list as a model name": (
        MODELS + "  - {id: a, model: [premium]}\n",
        "steps[0].model",
        "should be text (got a list)",
    ),
    "step not a mapping": (
        MODELS + "  - premium\n",
        "steps[0]",
        "should be a mapping of fields, at least `id:`, `model:` (got 'premium')",
    ),
    "step without a model": (
        MODELS + "  - {id: a}\n",
        "steps[0].model",
        "missing; this field is required: add `model:` here",
    ),
    "after not a list": (
        MODELS + "  - {id: a, model: premium}\n  - {id: b, model: premium, after: 3}\n",
        "steps[1].after",
        "should be a list: `[a, b]`, or one `- item` per line (got 3)",
    ),
    "route label starting with a digit": (
        MODELS + "  - {id: a, model: premium, route: {1st: {share: 1, model: premium}}}\n",
        "steps[0].route.1st:",
        "should start with a letter A-Z or a-z and hold only those, digits, _ and - (got '1st')",
    ),
    "step id with a space": (
        MODELS + "  - {id: 'a b', model: premium}\n",
        "steps[0].id",
        "should hold only letters A-Z or a-z, digits, _ and - (got 'a b')",
    ),
    # "letters" alone reads as any letter; é is one
    "step id with an accented letter": (
        MODELS + "  - {id: étape, model: premium}\n",
        "steps[0].id",
        "should hold only letters A-Z or a-z, digits, _ and - (got 'étape')",
    ),
    # finite, but a sum or a product of them is not: the JSON and the Monte Carlo overflowed
    "price past any real one": (
        "version: 1\nmodels: {p: {usd_per_call: 1e308, latency_s: 1, p_ok: 0.5}}\n"
        "steps: [{id: a, model: p, retries: 2}, {id: b, model: p, after: [a]}]\n",
        "models.p.usd_per_call",
        "less than or equal to 1000000",
    ),
    "latency past any real one": (
        "version: 1\nmodels: {p: {usd_per_call: 1, latency_s: 1e300, p_ok: 0.5, latency_jitter: 1}}\n"
        "steps: [{id: a, model: p}]\n",
        "models.p.latency_s",
        "less than or equal to 10000000",
    ),
    # a \\ud800 escape is valid YAML and JSON, but half a character: SQLite and JSON refuse it
    "lone surrogate": (
        MODELS + '  - {id: a, model: premium, prompt: "Say \\ud800"}\n',
        "steps[0].prompt",
        "surrogate",
    ),
    # a JSON example in a prompt: Python's format syntax reads {"answer": ...} as a field
    "literal braces in a prompt": (
        MODELS + """  - {id: a, model: premium, prompt: 'Reply as {"answer": "..."}'}\n""",
        "steps[0].prompt",
        '{"answer"...} is not a name: for literal braces (a JSON example, say) write them doubled',
    ),
    # "{}" was no field at all to the checks, and the run raised KeyError('') at its first call
    "empty braces in a prompt": (
        MODELS + """  - {id: a, model: premium, prompt: 'Return {} when unsure'}\n""",
        "steps[0].prompt",
        "{} is not a name",
    ),
    "unknown name in a system prompt": (
        MODELS + """  - {id: a, model: premium, prompt: 'Hi', system: 'You are {persona}'}\n""",
        "steps[0].system",
        "{persona} names neither an input nor a step this one runs after",
    ),
    # a gate's syntax is the spec's: estimate names it, not only run (which compiles it)
    "a regex gate that does not compile": (
        MODELS + """  - {id: a, model: premium, gate: {regex: '[a-'}}\n""",
        "steps[0].gate.regex",
        "not a regular expression: unterminated character set",
    ),
    "a JSON schema gate of a type that does not exist": (
        MODELS + "  - {id: a, model: premium, gate: {json_schema: {type: objec}}}\n",
        "steps[0].gate.json_schema",
        "not a JSON Schema at type: 'objec' is not valid",
    ),
    "a JSON schema gate wrong deep inside": (
        MODELS + "  - {id: a, model: premium, gate: {json_schema: {properties: {n: {minimum: x}}}}}\n",
        "steps[0].gate.json_schema",
        "not a JSON Schema at properties.n.minimum: 'x' is not of type 'number'",
    ),
    "negative seed": (BASE_SPEC + "seed: -5\n", "seed", "greater than or equal to 0"),
    "tokens past a float": (
        "version: 1\nmodels: {p: {usd_per_1m_input: 1, usd_per_1m_output: 1, latency_s: 1, "
        "p_ok: 0.5, prompt_tokens: 1" + "0" * 400 + "}}\nsteps: [{id: a, model: p}]\n",
        "models.p.prompt_tokens",
        "less than or equal to 1000000000",
    ),
}


@pytest.mark.parametrize("name", sorted(CASES))
@pytest.mark.parametrize("command", ["estimate", "simulate", "optimize"])
def test_bad_spec_exits_2_with_one_line(cli, write, name: str, command: str) -> None:
    content, field, words = CASES[name]
    path = write(content)
    r = cli(command, path)
    assert r.code == 2, (r.out, r.err)
    assert r.out == ""
    lines = r.err.strip().splitlines()
    assert len(lines) == 1, r.err
    line = lines[0]
    assert "Traceback" not in line
    assert str(path) in line
    assert field in line
    assert words in line


def test_the_other_fields_wrong_are_named_after_the_first_so_one_edit_mends_them(cli, write) -> None:
    two = write("version: 1\nmodels: {m: {provider: simulator, usd_per_call: 0.01, latency_s: 1}}\n"
                "steps: [{id: a, model: m}]\n")  # fmt: skip
    r = cli("estimate", two)
    assert r.code == 2 and r.err.count("\n") == 1
    assert r.err.rstrip().endswith("models.m.p_ok: missing; this field is required: add `p_ok:` here; "
                                   "also wrong: models.m.provider")  # fmt: skip
    many = write("version: 1\nmodels: {m: {usd_per_call: -1, latency_s: 0}}\n"
                 "steps: [{id: a, model: m, retries: -1, retires: 2}, {id: b c, model: m}]\n")  # fmt: skip
    r = cli("estimate", many)
    assert r.code == 2 and r.err.count("\n") == 1
    assert "steps[0].retires: unknown field 'retires' (did you mean 'retries'?)" in r.err
    assert r.err.rstrip().endswith("also wrong: models.m.usd_per_call, models.m.latency_s, "
                                   "models.m.p_ok and 2 more")  # fmt: skip
    one = cli("estimate", write("version: 1\nmodels: {m: {usd_per_call: 1, latency_s: 1, p_ok: 2}}\n"
                                "steps: [{id: a, model: m}]\n"))  # fmt: skip
    assert "also wrong" not in one.err  # nothing else to name


def test_json_file_errors_name_line_and_column(cli, write) -> None:
    r = cli("estimate", write('{"version": 1,, }', name="spec.json"))
    assert r.code == 2
    assert "line 1, column 15" in r.err and "JSON syntax error" in r.err


def test_a_json_spec_naming_a_key_twice_is_refused_as_a_yaml_one_is(cli, write) -> None:
    # json.loads kept the last "retries" silently; the YAML loader always refused the like
    spec = ('{"version": 1, "models": {"p": {"usd_per_call": 1, "latency_s": 1, "p_ok": 0.5}}, '
            '"steps": [{"id": "a", "model": "p", "retries": 1, "retries": 5}]}')  # fmt: skip
    r = cli("estimate", write(spec, name="spec.json"))
    assert r.code == 2 and "spec.json: duplicate key 'retries' in one object; keep one" in r.err


def test_missing_file(cli, tmp_path) -> None:
    r = cli("estimate", tmp_path / "nope.yaml")
    assert r.code == 2
    assert (
        r.err.strip() == f"trilemma: error: {tmp_path / 'nope.yaml'}: no such file; check the path"
    )


def test_directory_instead_of_file(cli, tmp_path) -> None:
    r = cli("estimate", tmp_path)
    assert r.code == 2 and "is a directory" in r.err


@pytest.mark.parametrize("runs", ["0", "-5", "abc", "1.5"])
def test_runs_must_be_a_positive_integer(cli, runs: str) -> None:
    r = cli("simulate", EXAMPLES / "diamond.yaml", "--runs", runs)
    assert r.code == 2, r.err
    assert len(r.err.strip().splitlines()) == 1
    assert "--runs" in r.err


@pytest.mark.parametrize(
    ("flag", "value", "said"),
    [
        ("--max-cost", "abc", "--max-cost': 'abc' is not a number; give a number such as 0.5"),
        ("--runs", "1e3", "'1e3': write the whole number in digits, as 1000"),
        ("--runs", "2.5", "'2.5' is not a whole number; give one such as 10"),
        ("--runs", "many", "'many' is not a whole number; give one such as 10"),
    ],
)
def test_a_value_that_is_not_the_number_an_option_takes_is_named(
    cli, flag: str, value: str, said: str
) -> None:
    r = cli("simulate", EXAMPLES / "diamond.yaml", flag, value)
    assert r.code == 2 and len(r.err.strip().splitlines()) == 1
    assert said in r.err and "Input should" not in r.err


@pytest.mark.parametrize("command", ["simulate", "demo"])
def test_a_monte_carlo_too_big_for_memory_is_refused_before_it_starts(cli, command: str) -> None:
    # 1e9 trajectories would take ~70 GB: the OOM killer ended such a run, with no message
    args = [EXAMPLES / "diamond.yaml"] if command == "simulate" else []
    r = cli(command, *args, "--runs", "1000000000")
    assert r.code == 2 and len(r.err.strip().splitlines()) == 1
    assert "--runs 1,000,000,000" in r.err and "about 70 GB" in r.err
    assert "give at most 20,000,000" in r.err and r.out == ""  # refused before anything ran
    from trilemma import load_workflow
    from trilemma.errors import UsageError
    from trilemma.plan.simulate import MAX_RUNS, simulate

    with pytest.raises(UsageError, match="give at most"):
        simulate(load_workflow(EXAMPLES / "diamond.yaml"), MAX_RUNS + 1)


@pytest.mark.parametrize(
    "args",
    [
        ["optimize", "{spec}", "--min-reliability", "1.5"],
        ["optimize", "{spec}", "--budget-on", "median"],
        ["optimize", "{spec}", "--max-cost", "cheap"],
        ["optimize", "{spec}", "--max-cost", "1e308"],
        ["optimize", "{spec}", "--max-latency", "0"],
        ["optimize", "{spec}", "--min-reliability", "0"],
        ["simulate", "{spec}", "--max-cost", "1e308"],
        ["run", "{spec}", "--deadline", "1e300"],
        ["sweep", "{spec}", "--max-cost", "0.1,1e308"],
        ["exercise", "32.10.2", "--router-usd", "1e300"],
        ["simulate", "{spec}", "--seed", "-1"],  # numpy takes no negative seed
        ["run", "{spec}", "--seed", "99999999999999999999999"],  # nor SQLite past 2**63
        ["sweep", "{spec}", "--max-cost", "1", "--seed", "-1"],
        ["compare", "{spec}", "--seed", "-1"],
        ["simulate", "{spec}", "--recall", "2"],
        ["estimate"],
        ["estimate", "{spec}", "--bogus"],
        ["frobnicate"],
        ["exercise", "32.10.9"],
    ],
)
def test_bad_flags_exit_2_with_one_line(cli, args: list[str]) -> None:
    argv = [a.format(spec=EXAMPLES / "diamond.yaml") for a in args]
    r = cli(*argv)
    assert r.code == 2, (r.out, r.err)
    assert len(r.err.strip().splitlines()) == 1, r.err
    assert "Traceback" not in r.err
    assert "Value error" not in r.err and ".;" not in r.err  # pydantic's words, a doubled stop


def test_a_usage_error_reads_as_one_sentence(cli) -> None:
    r = cli("exercise", "32.10.9")
    assert r.err == ("trilemma: error: Invalid value for 'number': '32.10.9' is not one of "
                     "'32.10.1', '32.10.2', '32.10.3' (or 1, 2, 3); see `trilemma exercise --help`\n")  # fmt: skip
    assert cli("estimate").err == (
        "trilemma: error: Missing argument 'spec'; see `trilemma estimate --help`\n"
    )
    # the help of the command that was wrong, a subcommand's too
    assert cli("cache", "list").err == (
        "trilemma: error: No such command 'list'; see `trilemma cache --help`\n"
    )
    assert cli("budget", "show").err == (
        "trilemma: error: Missing argument 'name'; see `trilemma budget show --help`\n"
    )
    assert cli("nope").err == "trilemma: error: No such command 'nope'; see `trilemma --help`\n"


@pytest.mark.parametrize(
    ("command", "given", "named"),
    [("optimize", "--deadline", "--max-latency"), ("run", "--max-latency", "--deadline"),
     ("simulate", "--max-latency", "--deadline")],
)  # fmt: skip
def test_the_latency_budget_under_another_commands_name_is_named_as_this_one_takes_it(
    cli, command: str, given: str, named: str
) -> None:
    """`optimize` binds a latency budget (--max-latency), `run` and `simulate` hold a
    deadline: click's spelling hint found nothing near the other name."""
    r = cli(command, EXAMPLES / "diamond.yaml", given, "3")
    assert r.code == 2 and r.err == (
        f"trilemma: error: No such option: {given}; `trilemma {command}` takes the latency "
        f"budget as {named}; see `trilemma {command} --help`\n"
    )
    other = cli(command, EXAMPLES / "diamond.yaml", "--max-cots", "3")  # others as before
    assert "(Possible options: --max-cost" in other.err


def test_an_option_s_value_given_without_it_is_named_with_the_option(cli) -> None:
    """`batch spec rows.jsonl` said only that --inputs was missing: click checks options
    before it reports an argument too many."""
    hint = "; see `trilemma batch --help`\n"
    assert cli("batch", EXAMPLES / "faq.yaml", "examples/questions.jsonl").err == (
        "trilemma: error: Missing option '--inputs'; was examples/questions.jsonl meant as "
        "--inputs examples/questions.jsonl?" + hint
    )
    r = cli("batch", "--parallel", "3", EXAMPLES / "faq.yaml", "my rows.jsonl", "--json")
    assert r.code == 2 and r.out == ""
    assert r.err == ("trilemma: error: Missing option '--inputs'; was my rows.jsonl meant as "
                     "--inputs 'my rows.jsonl'?" + hint)  # fmt: skip
    # no stray argument, or more than one: no guess
    for args in ([], ["a.jsonl", "b.jsonl"]):
        r = cli("batch", EXAMPLES / "faq.yaml", *args)
        assert r.code == 2 and r.err == "trilemma: error: Missing option '--inputs'" + hint


def test_bounds_past_any_real_figure_are_checked_but_not_shown_in_help(cli) -> None:
    """Help showed "[0<=x<=4611686018427387904]" beside --seed, broken over two lines."""
    r = cli("simulate", "--help")
    assert r.code == 0 and "4611686" not in r.out and "1000000.0" not in r.out, r.out
    assert "[x>=0]" in r.out  # the lower bound is shown
    spec = str(EXAMPLES / "diamond.yaml")
    r = cli("run", spec, "--seed", str(2**62 + 1))
    assert r.code == 2 and f"{2**62 + 1} is more than 2**62; give a smaller one" in r.err, r.err
    r = cli("simulate", spec, "--max-cost", "inf")
    assert r.code == 2 and "inf is more than a million dollars" in r.err, r.err
    r = cli("simulate", spec, "--deadline", "nan")
    assert r.err == ("trilemma: error: Invalid value for '--deadline': 'nan' is not a number; "
                     "give a number such as 0.5; see `trilemma simulate --help`\n")  # fmt: skip
    r = cli("simulate", spec, "--recall", "NaN")  # a bound above as well as below
    assert r.code == 2 and "'NaN' is not a number" in r.err, r.err
    r = cli("simulate", spec, "--max-cost", "-1")  # a real figure out of range keeps its words
    assert r.code == 2 and "greater than or equal to 0" in r.err, r.err
    r = cli("simulate", spec, "--seed", "nan")  # not an integer at all
    assert r.code == 2 and "'nan' is not a whole number; give one such as 10" in r.err, r.err
    assert cli("simulate", spec, "--seed", str(2**62), "--runs", "10").code == 0  # the bound itself


@pytest.mark.parametrize(
    "args",
    [
        ["simulate", str(EXAMPLES / "ceiling.yaml"), "--plot", "{missing}/x.png"],
        ["optimize", str(EXAMPLES / "seed-chain.yaml"), "--plot", "{missing}/x.png"],
        ["optimize", str(EXAMPLES / "seed-chain.yaml"), "--out", "{missing}/x.yaml"],
        ["sweep", str(EXAMPLES / "cascade.yaml"), "--max-cost", "0.01", "--runs", "2", "--plot", "{missing}/x.png"],
        ["compare", str(EXAMPLES / "single.yaml"), "--runs", "2", "--plot", "{missing}/x.png"],
        ["exercise", "32.10.2", "--plot", "{missing}/x.png"],
        ["calibrate", "--model", "m", "--from-journal", "j.db", "--out", "{missing}/m.yaml"],
    ],
)
def test_an_output_path_in_a_missing_folder_is_refused_before_any_work(
    cli, tmp_path: Path, args: list[str]
) -> None:
    missing = tmp_path / "nope"
    journal = tmp_path / "j.db"
    extra = ["--journal", journal] if args[0] in ("sweep", "compare") else []
    r = cli(*[a.format(missing=missing) for a in args], *extra)
    assert r.code == 2, r.out + r.err
    assert f"the folder {missing} does not exist" in r.err and "Traceback" not in r.err
    assert not journal.exists()  # nothing ran


def test_a_plot_that_cannot_be_written_is_a_usage_error(tmp_path: Path) -> None:
    from trilemma import load_workflow, simulate
    from trilemma.errors import UsageError
    from trilemma.report.plots import plot_simulation

    r = simulate(load_workflow(str(EXAMPLES / "ceiling.yaml")), 100, seed=1, keep=True)
    with pytest.raises(UsageError, match=r"--plot .*: cannot write"):
        plot_simulation(r, tmp_path / "gone" / "x.png")


def test_a_lone_surrogate_in_a_json_spec_names_its_field(cli, write) -> None:
    r = cli("estimate", write('{"version": 1, "name": "\\udc00"}', name="spec.json"))
    assert r.code == 2 and "spec.json: name: holds '\\udc00'" in r.err, r.err


NOT_UTF8 = "caf\udce9"  # b"caf\xe9" (Latin-1) on a UTF-8 command line, as Python decodes argv


def test_an_input_a_system_prompt_needs_is_asked_for_by_its_field(cli, write, tmp_path) -> None:
    spec = write(MODELS.replace("steps:", "inputs: {persona: null}\nsteps:")
                 + "  - {id: a, model: premium, prompt: hi, system: 'You are {persona}'}\n")  # fmt: skip
    r = cli("run", spec, "--journal", tmp_path / "j.db")
    assert r.code == 2 and len(r.err.strip().splitlines()) == 1
    assert "--input persona=...:" in r.err and "steps[0].system uses input 'persona'" in r.err


def test_inputs_that_are_not_utf8_are_refused_before_the_run(cli, tmp_path: Path) -> None:
    journal = tmp_path / "j.db"
    r = cli("run", EXAMPLES / "faq.yaml", "-i", f"question={NOT_UTF8}", "--journal", journal)
    assert r.code == 2 and "--input question: holds '\\udce9'" in r.err, r.err
    lines = tmp_path / "in.jsonl"
    lines.write_text('{"question": "ok"}\n{"question": "\\ud800"}\n')
    r = cli("batch", EXAMPLES / "faq.yaml", "--inputs", lines, "--journal", journal)
    assert r.code == 2 and f"{lines}:2: question: holds '\\ud800'" in r.err, r.err
    assert not journal.exists()  # nothing ran


@pytest.mark.parametrize(
    "args",
    [
        ["ledger", NOT_UTF8],
        ["report", NOT_UTF8],
        ["export", NOT_UTF8],
        ["resume", NOT_UTF8],
        ["runs", "--batch", NOT_UTF8],
        ["cache", "clear", "--model", NOT_UTF8],
    ],
)
def test_an_id_that_is_not_utf8_is_a_usage_error(cli, tmp_path: Path, args: list[str]) -> None:
    journal = tmp_path / "j.db"
    assert cli("run", EXAMPLES / "single.yaml", "--journal", journal, "--seed", "1").code == 0
    r = cli(*args, "--journal", journal)
    assert r.code == 2, r.err
    assert r.err.strip() == (
        f"trilemma: error: {NOT_UTF8!r}: holds bytes that are not UTF-8 text; give names and "
        "ids as UTF-8"
    )


def test_ctrl_c_in_a_long_command_says_so_and_exits_130(tmp_path: Path) -> None:
    import os
    import signal
    import subprocess
    import sys
    import time

    from trilemma.testing import interruptible

    proc = subprocess.Popen([sys.executable, "-m", "trilemma", "simulate", str(EXAMPLES / "ticket.yaml"),
                             "--runs", "20000000"], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, preexec_fn=interruptible)  # fmt: skip
    def cpu_s() -> float:  # the process's CPU time: imports take under 1 s, the Monte Carlo ~8
        fields = Path(f"/proc/{proc.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    try:
        deadline = time.monotonic() + 60
        while cpu_s() < 2.5 and time.monotonic() < deadline:  # well inside the Monte Carlo
            time.sleep(0.1)
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=30)
    finally:
        proc.kill()
        proc.wait()
    assert (proc.returncode, out, err) == (130, "", "trilemma: interrupted\n")


ODD_VALUES: list[object] = [None, -1, 0, 1e30, -0.5, "abc", "", [], {}, True, float("nan"),
                            float("inf"), 10**12, "1.5", [1, 2], {"a": 1}, 2]  # fmt: skip


def _places(node: object, at: tuple[object, ...] = ()) -> list[tuple[object, ...]]:
    """Every path to a value in parsed YAML."""
    if isinstance(node, dict):
        return [p for k, v in node.items() for p in [(*at, k), *_places(v, (*at, k))]]
    if isinstance(node, list):
        return [p for i, v in enumerate(node) for p in [(*at, i), *_places(v, (*at, i))]]
    return []


@pytest.mark.parametrize("seed", range(4))
def test_examples_with_values_swapped_fail_in_a_yaml_writers_words(cli, tmp_path: Path, seed: int) -> None:
    # what a fuzz of 1,500 such specs found: pydantic's own words ("instance of Step", "got None")
    import copy
    import random

    import yaml

    rng = random.Random(seed)
    examples = sorted(p for p in EXAMPLES.glob("*.yaml") if p.name != "gateway.yaml")
    refused = 0
    for i in range(30):
        data = yaml.safe_load(rng.choice(examples).read_text())
        for _ in range(rng.choice((1, 1, 2))):
            *parent, last = rng.choice(_places(data))
            node = data
            for part in parent:
                node = node[part]
            node[last] = copy.deepcopy(rng.choice(ODD_VALUES))
        path = tmp_path / f"m{i}.yaml"
        path.write_text(yaml.safe_dump(data))
        r = cli(*(["estimate", path] if i % 2 else ["simulate", path, "--runs", "50"]))
        assert r.code in (0, 1, 2), (r.code, r.err)
        if r.code == 2:
            refused += 1
            line = r.err.strip()
            assert "\n" not in line and line.startswith(f"trilemma: error: {path}: "), line
            for words in ("Input should", "instance of", "(got None)", "String should", "[key]"):
                assert words not in line, line
    assert refused >= 10  # the swaps do reach the checks


def test_a_spec_over_the_size_bound_is_refused_from_a_file_or_standard_input(
    cli, tmp_path: Path, monkeypatch
) -> None:
    import io

    big = BASE_SPEC + "#" * 5_000_000 + "\n"
    path = tmp_path / "big.yaml"
    path.write_text(big)
    r = cli("estimate", path)
    assert r.code == 2 and r.err.endswith("big.yaml: file is over 5 MB, the most a spec may be\n"), r.err
    monkeypatch.setattr("sys.stdin", io.TextIOWrapper(io.BytesIO(big.encode())))
    r = cli("estimate", "-")
    assert r.err == "trilemma: error: <stdin>: file is over 5 MB, the most a spec may be\n", r.err


def test_a_gateway_config_and_a_workflow_spec_given_to_the_other_s_command_say_so(cli) -> None:
    for command in ("estimate", "run", "simulate"):
        r = cli(command, EXAMPLES / "gateway.yaml", *(["--runs", "10"] if command == "simulate" else []))
        assert r.code == 2 and r.err.count("\n") == 1, r.err
        assert "gateway.yaml: keys: this is a gateway's config, not a workflow spec: " \
               "`trilemma gateway FILE` serves it" in r.err  # fmt: skip
    r = cli("gateway", EXAMPLES / "single.yaml")
    assert r.code == 2 and r.err.count("\n") == 1, r.err
    assert "single.yaml: steps: this is a workflow spec, not a gateway's config: " \
           "`trilemma run FILE` runs it" in r.err  # fmt: skip


@pytest.mark.parametrize(
    ("args", "left_out"),
    [
        (["run", "{spec}"], "the spec's budget.deadline_s, if any"),
        (["batch", "{spec}", "--inputs", "{lines}"], "the spec's budget.deadline_s, if any"),
        (["simulate", "{spec}"], "the spec's budget.deadline_s, if any"),
        (["resume", "latest"], "the run keeps its own"),
    ],
)
def test_a_deadline_of_0_is_refused_before_anything_runs(
    cli, tmp_path: Path, args: list[str], left_out: str
) -> None:
    """--deadline 0 cut every run before its first call (run and batch journaled such runs,
    and said so only after); simulate, sweep and a spec refused it. Now each command that
    takes a deadline refuses it, and says what holds with the option left out."""
    lines = tmp_path / "lines.jsonl"
    lines.write_text("{}\n")
    db = tmp_path / "j.db"
    argv = [a.format(spec=EXAMPLES / "diamond.yaml", lines=lines) for a in args]
    journal = [] if args[0] == "simulate" else ["--journal", db]  # simulate journals nothing
    r = cli(*argv, "--deadline", "0", *journal)
    assert r.code == 2 and r.err == (
        "trilemma: error: Invalid value for '--deadline': 0 would cut every run before its "
        f"first call; give seconds above 0, or leave it out ({left_out}); see `trilemma "
        f"{args[0]} --help`\n")  # fmt: skip
    assert not db.exists()  # nothing journaled
