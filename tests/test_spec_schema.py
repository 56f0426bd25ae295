"""The spec's JSON Schema (``trilemma schema``) agrees with the loader field by field."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml
from hypothesis import given, settings

from trilemma import SpecError, workflow_from_dict
from trilemma.spec.overrides import with_overrides
from trilemma.spec.schema import spec_json_schema

from .test_laws import workflows

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
WORKFLOWS = sorted(p for p in EXAMPLES.glob("*.yaml") if p.name != "gateway.yaml")
VALIDATORS = [jsonschema.Draft7Validator, jsonschema.Draft202012Validator]


@pytest.fixture(scope="module", params=VALIDATORS, ids=["draft-07", "2020-12"])
def validator(request: pytest.FixtureRequest) -> jsonschema.protocols.Validator:
    schema = spec_json_schema()
    request.param.check_schema(schema)
    return request.param(schema)


def test_every_example_workflow_is_valid_under_the_schema(validator) -> None:
    assert len(WORKFLOWS) > 20
    for path in WORKFLOWS:
        errors = [e.message for e in validator.iter_errors(yaml.safe_load(path.read_text()))]
        assert errors == [], path.name
    gateway = yaml.safe_load((EXAMPLES / "gateway.yaml").read_text())
    assert not validator.is_valid(gateway)  # a gateway's config is not a workflow


TICKET = yaml.safe_load((EXAMPLES / "ticket.yaml").read_text())
MUTATIONS = {  # each one --set away from examples/ticket.yaml
    "an unknown step field": "steps[0].retires=1",
    "an unknown top-level field": "budgets={max_cost_usd: 1}",
    "p_ok over 1": "models.premium.p_ok=1.5",
    "a negative price": "models.premium.usd_per_call=-0.01",
    "a provider outside the choices": "models.premium.provider=simulator",
    "a step id with a space": "steps[0].id=tri age",
    "retries as text": "steps[0].retries=one",
    "a null model": "steps[0].model=null",
    "version 2": "version=2",
    "a debate of no agents": "steps[1].debate={agents: 0, rounds: 1}",
    "an unknown budget": "budget={max_spend: 1.0}",
    "zero concurrency": "concurrency=0",
    "an input named with a space": "inputs={the question: null}",
}


@pytest.mark.parametrize("case", sorted(MUTATIONS))
def test_what_the_schema_rejects_the_loader_rejects(validator, case: str) -> None:
    data = with_overrides(TICKET, [MUTATIONS[case]])
    assert not validator.is_valid(data)
    with pytest.raises(SpecError):
        workflow_from_dict(data, "mutated.yaml")


def test_a_field_left_out_that_is_required_fails_both(validator) -> None:
    premium = {k: v for k, v in TICKET["models"]["premium"].items() if k != "latency_s"}
    data = {**TICKET, "models": {"premium": premium}}
    assert not validator.is_valid(data)
    with pytest.raises(SpecError, match="latency_s: missing"):
        workflow_from_dict(data, "mutated.yaml")


@settings(max_examples=60, deadline=None)
@given(workflows())
def test_random_valid_workflows_pass_the_schema(data: dict[str, Any]) -> None:
    workflow_from_dict(data)  # the loader takes it
    assert jsonschema.Draft7Validator(spec_json_schema()).is_valid(data)


def test_every_field_has_a_description_and_loading_internals_stay_out() -> None:
    schema = spec_json_schema()
    missing = [f"{name}.{field}"
               for name, definition in [("Workflow", schema), *schema["$defs"].items()]
               for field, prop in definition.get("properties", {}).items()
               if not prop.get("description")]  # fmt: skip
    assert missing == []  # a new field needs a docstring: it is what an editor shows
    assert "prices_from" not in json.dumps(schema)  # set on loading, never written in a spec
    assert schema["$schema"] == "http://json-schema.org/draft-07/schema#"
    assert schema["properties"]["version"]["const"] == 1


def test_the_schema_command_prints_or_writes_it(cli, tmp_path: Path) -> None:
    printed = cli("schema")
    assert printed.code == 0 and json.loads(printed.out) == spec_json_schema()
    out = tmp_path / "trilemma.schema.json"
    written = cli("schema", "--out", out)
    assert written.code == 0 and json.loads(out.read_text()) == spec_json_schema()
    assert "yaml-language-server: $schema=trilemma.schema.json" in written.out
    nowhere = cli("schema", "--out", tmp_path / "missing" / "s.json")
    assert nowhere.code == 2 and nowhere.err.count("\n") == 1 and "--out" in nowhere.err


def test_installed_without_sources_the_schema_is_still_whole(monkeypatch) -> None:
    import inspect

    def no_source(obj: object) -> str:
        raise OSError("could not get source code")

    monkeypatch.setattr(inspect, "getsource", no_source)
    bare = spec_json_schema()
    assert bare["$defs"]["Step"]["properties"]["retries"].get("description") is None
    assert all(validator.is_valid(yaml.safe_load(p.read_text())) for p in WORKFLOWS
               for validator in [jsonschema.Draft7Validator(bare)])  # fmt: skip


def test_descriptions_read_as_markdown_not_sphinx() -> None:
    text = json.dumps(spec_json_schema())
    assert ":class:" not in text and ":meth:" not in text and "``" not in text
    faults = spec_json_schema()["$defs"]["ModelProfile"]["properties"]["faults"]
    assert faults["description"] == "Provider errors the simulator injects (see `Faults`)."


def test_a_json_spec_names_its_schema_with_a_schema_key_the_loader_passes_over(cli, write) -> None:
    data = yaml.safe_load((EXAMPLES / "single.yaml").read_text())
    pointed = {"$schema": "trilemma.schema.json", **data}
    assert workflow_from_dict(pointed) == workflow_from_dict(data)
    assert jsonschema.Draft7Validator(spec_json_schema()).is_valid(pointed)
    assert cli("estimate", write(json.dumps(pointed), name="spec.json")).code == 0
    bad = cli("estimate", write(json.dumps({**pointed, "$schema": 3}), name="bad.json"))
    assert bad.code == 2 and bad.err.count("\n") == 1
    assert "bad.json: $schema: should be the path or URL" in bad.err


def test_init_writes_the_starter_and_the_schema_and_the_starter_runs(cli, tmp_path: Path,
                                                                     monkeypatch) -> None:  # fmt: skip
    monkeypatch.chdir(tmp_path)
    r = cli("init")
    assert r.code == 0, r.err
    assert "next: trilemma estimate workflow.yaml, then trilemma run workflow.yaml --input question=..." in r.out
    spec = (tmp_path / "workflow.yaml").read_text()
    assert spec.splitlines()[0] == "# yaml-language-server: $schema=trilemma.schema.json"
    assert spec.endswith((EXAMPLES / "starter.yaml").read_text())
    assert json.loads((tmp_path / "trilemma.schema.json").read_text()) == spec_json_schema()
    assert jsonschema.Draft7Validator(spec_json_schema()).is_valid(yaml.safe_load(spec))
    ran = cli("run", "workflow.yaml", "--input", "question=why?", "--seed", "3", "--journal", "j.db", "--json")
    assert ran.code == 0 and ran.json()["status"] == "ok" and ran.json()["outputs"]["check"] == "yes"


def test_init_keeps_what_is_there_and_names_the_examples(cli, tmp_path: Path) -> None:
    spec = tmp_path / "mine.yaml"
    spec.write_text("my own work\n")
    kept = cli("init", spec)
    assert kept.code == 2 and "exists; give another name, or --force" in kept.err
    assert spec.read_text() == "my own work\n" and not (tmp_path / "trilemma.schema.json").exists()
    assert cli("init", spec, "--example", "ticket", "--force").code == 0
    assert spec.read_text().endswith((EXAMPLES / "ticket.yaml").read_text())
    typo = cli("init", tmp_path / "t.yaml", "--example", "tiket")
    assert typo.code == 2 and "did you mean 'ticket'?" in typo.err and "starter" in typo.err
    assert "gateway" not in typo.err  # a gateway's config is not a workflow to start from
    folder = cli("init", tmp_path, "--force")
    assert folder.code == 2 and "is a folder; give a file name, such as" in folder.err
    nowhere = cli("init", tmp_path / "missing" / "a.yaml")
    assert nowhere.code == 2 and "does not exist" in nowhere.err


def test_init_replaces_its_own_schema_but_not_a_file_of_the_users(cli, tmp_path: Path) -> None:
    schema = tmp_path / "trilemma.schema.json"
    assert cli("init", tmp_path / "a.yaml").code == 0
    schema.write_text(json.dumps({**spec_json_schema(), "title": "trilemma workflow spec, version 0"}))
    assert cli("init", tmp_path / "b.yaml").code == 0  # an older trilemma's: brought up to date
    assert json.loads(schema.read_text()) == spec_json_schema()
    schema.write_text('{"title": "my own schema"}')
    kept = cli("init", tmp_path / "c.yaml")
    assert kept.code == 2 and kept.err.count("\n") == 1
    assert f"{schema} exists and is not a trilemma spec schema; move it, or --force" in kept.err
    assert schema.read_text() == '{"title": "my own schema"}' and not (tmp_path / "c.yaml").exists()
    assert cli("init", tmp_path / "c.yaml", "--force").code == 0
    assert json.loads(schema.read_text()) == spec_json_schema()


def test_init_writes_a_json_spec_with_its_schema_as_a_key(cli, tmp_path: Path) -> None:
    spec = tmp_path / "flow.json"
    assert cli("init", spec, "--example", "faq").code == 0
    data = json.loads(spec.read_text())
    assert data["$schema"] == "trilemma.schema.json"
    assert workflow_from_dict(data) == workflow_from_dict(yaml.safe_load((EXAMPLES / "faq.yaml").read_text()))


def test_a_gateways_config_has_its_schema_too(cli, write) -> None:
    from trilemma.gateway.config import gateway_json_schema, load_gateway_config

    printed = cli("schema", "--gateway")
    assert printed.code == 0 and json.loads(printed.out) == gateway_json_schema()
    schema = gateway_json_schema()
    validator = jsonschema.Draft7Validator(schema)
    config = yaml.safe_load((EXAMPLES / "gateway.yaml").read_text())
    assert validator.is_valid(config)
    assert not validator.is_valid(yaml.safe_load((EXAMPLES / "ticket.yaml").read_text()))
    missing = [f"{name}.{field}"
               for name, definition in [("GatewayConfig", schema), *schema["$defs"].items()]
               for field, prop in definition.get("properties", {}).items()
               if not prop.get("description")]  # fmt: skip
    assert missing == []
    for change in ("keys.team-a.max_cost_usd=-1", "keys.team-a.key_env=1BAD",
                  "keys.team-a.budget=5", "health.failures=0"):  # fmt: skip
        bad = with_overrides(config, [change])
        assert not validator.is_valid(bad), change
        with pytest.raises(SpecError):
            load_gateway_config(write(yaml.safe_dump(bad), name="gw.yaml"))
    pointed = write(json.dumps({"$schema": "gateway.schema.json", **config}), name="gw.json")
    assert load_gateway_config(pointed).keys.keys() == {"team-a", "team-b"}
