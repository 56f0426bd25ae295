"""Crash-and-resume stress: SIGKILL a run at N random moments, resume, count the damage.

Each trial runs the chain of ``tests/durable_helpers.py`` in a subprocess, kills it
with SIGKILL at a random moment, resumes it in this process, and compares its
ledger with an uninterrupted run of the same seed: the same calls, outcomes and
bills, nothing lost, and no call sent twice unless it was in flight at the kill.

``--endpoint`` runs a chain of four debates (three agents, two rounds) on a real
OpenAI-compatible HTTP server on 127.0.0.1 (the scripted one of ``trilemma.testing``,
answering in 5-40 ms) instead of the simulator, and also counts the calls the server had
answered before the kill that the resume asked again (none should be).

    python benchmarks/crash_stress.py [--trials 50] [--seed 1] [--endpoint]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import random
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.durable_helpers import CHAIN_SPEC, ledger_key, start_and_kill  # noqa: E402

from trilemma import parse_workflow  # noqa: E402
from trilemma.journal import Journal  # noqa: E402
from trilemma.journal.store import call_outcome  # noqa: E402
from trilemma.run.session import execute, resume  # noqa: E402
from trilemma.testing import Reply, ScriptedServer, fast_retries  # noqa: E402

DEBATES = """\
version: 1
models:
  real: {{provider: openai, base_url: "{url}", model: m1, usd_per_call: 0.01, latency_s: 0.03,
          p_ok: 0.9, timeout_s: 30}}
steps:
""" + "\n".join(
    f"  - {{{{id: d{i}, model: real, debate: {{{{agents: 3, rounds: 2}}}}"
    + (f", after: [d{i - 1}]" if i else "") + "}}"
    for i in range(4)
)


@contextlib.contextmanager
def workload(endpoint: bool, seed: int) -> Iterator[tuple[str, ScriptedServer | None]]:
    """The spec to run (and the server it runs on, with ``endpoint``)."""
    if not endpoint:
        yield CHAIN_SPEC, None
        return
    rng = random.Random(seed)
    with ScriptedServer(lambda _: Reply("the answer is 4", delay_s=rng.uniform(0.005, 0.04))) as srv:
        yield DEBATES.format(url=srv.url), srv


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--trials", type=int, default=50)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument(
        "--out", type=Path, default=ROOT / "benchmarks" / "results" / "crash_stress.json"
    )
    ap.add_argument("--endpoint", action="store_true",
                    help="debates on a real HTTP server on 127.0.0.1 instead of the simulator")
    args = ap.parse_args()
    if args.endpoint and args.out == ap.get_default("out"):
        args.out = args.out.with_name("crash_stress_endpoint.json")
    rng = random.Random(args.seed)
    with tempfile.TemporaryDirectory() as tmp, workload(args.endpoint, args.seed) as (text, srv):
        d = Path(tmp)
        base_journal = Journal(d / "baseline.db")
        with fast_retries():
            base = execute(parse_workflow(text), journal=base_journal, seed=5)
        expected = ledger_key(base_journal, base.run_id)
        spec = d / "chain.yaml"
        spec.write_text(text)
        lost = double = in_flight_total = answered_total = asked_again = unfinished = 0
        started = time.perf_counter()
        for trial in range(args.trials):
            db = d / f"trial{trial}.db"
            run_id = start_and_kill(spec, db, rng.uniform(0.0, 0.4 if args.endpoint else 0.8))
            if run_id is None:
                unfinished += 1
                continue
            journal = Journal(db, create=False)
            at_kill = {c["idempotency_key"]: call_outcome(c) for c in journal.calls(run_id)}
            in_flight = {k for k, o in at_kill.items() if o == "in_flight"}
            answered = {k for k, o in at_kill.items() if o == "answered"}
            in_flight_total += len(in_flight)
            answered_total += len(answered)
            sent_before = Counter(_keys(srv))
            with fast_retries():
                result = resume(journal, run_id)
            ledger = ledger_key(journal, run_id)
            resent = [
                c
                for c in journal.calls(run_id)
                if c["sends"] > (2 if c["idempotency_key"] in in_flight else 1)
            ]
            sent_again = Counter(_keys(srv)) - sent_before  # what the resume sent the server
            again = sum(sent_again[k] for k in answered) + sum(
                c["sends"] > 1 for c in journal.calls(run_id) if c["idempotency_key"] in answered
            )
            asked_again += again
            lost += ledger != expected or result.outputs != base.outputs or result.status != "ok"
            double += bool(resent) or bool(again)
            fine = ledger == expected and not resent and not again
            print(f"trial {trial + 1:2d}: {len(journal.steps(run_id)):2d} steps, {len(in_flight)} in flight "
                  f"and {len(answered)} answered without a verdict at the kill, "
                  f"{'ok' if fine else 'MISMATCH'}")  # fmt: skip
        elapsed = time.perf_counter() - started
    summary = {"trials": args.trials, "workload": "debates on 127.0.0.1" if args.endpoint else
               "simulated chain", "lost_or_changed": lost, "double_billed": double,
               "calls_in_flight_at_kills": in_flight_total,
               "answered_without_verdict_at_kills": answered_total,
               "answered_asked_again": asked_again, "runs_never_started": unfinished,
               "seconds": round(elapsed, 1)}  # fmt: skip
    print(json.dumps(summary))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(summary, indent=2) + "\n")
    return 0 if lost == 0 and double == 0 else 1


def _keys(srv: ScriptedServer | None) -> list[str]:
    """The idempotency keys of the requests the server has had."""
    if srv is None:
        return []
    return [q["headers"].get("idempotency-key", "") for q in list(srv.requests)]

if __name__ == "__main__":
    sys.exit(main())
