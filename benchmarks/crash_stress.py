"""Crash-and-resume stress: SIGKILL a 20-step run at N random moments, resume, count the damage.

Each trial runs the chain of ``tests/durable_helpers.py`` in a subprocess, kills it
with SIGKILL at a random moment, resumes it in this process, and compares its
ledger with an uninterrupted run of the same seed: the same calls, outcomes and
bills, nothing lost, and no call sent twice unless it was in flight at the kill.

    python benchmarks/crash_stress.py [--trials 50] [--seed 1]
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.durable_helpers import CHAIN_SPEC, ledger_key, start_and_kill  # noqa: E402

from trilemma import parse_workflow  # noqa: E402
from trilemma.journal import Journal  # noqa: E402
from trilemma.run.session import execute, resume  # noqa: E402
from trilemma.testing import fast_retries  # noqa: E402


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--trials", type=int, default=50)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument(
        "--out", type=Path, default=ROOT / "benchmarks" / "results" / "crash_stress.json"
    )
    args = ap.parse_args()
    rng = random.Random(args.seed)
    with tempfile.TemporaryDirectory() as tmp:
        d = Path(tmp)
        base_journal = Journal(d / "baseline.db")
        with fast_retries():
            base = execute(parse_workflow(CHAIN_SPEC), journal=base_journal, seed=5)
        expected = ledger_key(base_journal, base.run_id)
        spec = d / "chain.yaml"
        spec.write_text(CHAIN_SPEC)
        lost = double = in_flight_total = unfinished = 0
        started = time.perf_counter()
        for trial in range(args.trials):
            db = d / f"trial{trial}.db"
            run_id = start_and_kill(spec, db, rng.uniform(0.0, 0.8))
            if run_id is None:
                unfinished += 1
                continue
            journal = Journal(db, create=False)
            in_flight = {
                c["idempotency_key"] for c in journal.calls(run_id) if c["state"] == "started"
            }
            in_flight_total += len(in_flight)
            with fast_retries():
                result = resume(journal, run_id)
            ledger = ledger_key(journal, run_id)
            resent = [
                c
                for c in journal.calls(run_id)
                if c["sends"] > (2 if c["idempotency_key"] in in_flight else 1)
            ]
            lost += ledger != expected or result.outputs != base.outputs or result.status != "ok"
            double += bool(resent)
            print(f"trial {trial + 1:2d}: {len(journal.steps(run_id)):2d} steps, {len(in_flight)} in flight at the kill, "
                  f"{'ok' if ledger == expected and not resent else 'MISMATCH'}")  # fmt: skip
        elapsed = time.perf_counter() - started
    summary = {"trials": args.trials, "lost_or_changed": lost, "double_billed": double,
               "calls_in_flight_at_kills": in_flight_total, "runs_never_started": unfinished,
               "seconds": round(elapsed, 1)}  # fmt: skip
    print(json.dumps(summary))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(summary, indent=2) + "\n")
    return 0 if lost == 0 and double == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
