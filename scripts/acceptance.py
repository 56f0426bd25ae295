"""The executor's acceptance checks, run through an installed `trilemma` command line.

    python scripts/acceptance.py [PATH/TO/trilemma]     # default: trilemma on PATH

Each check writes a spec to a temporary folder, runs it as a user would, and prints what it
measured beside what is asked; the exit code is 1 if any check misses:

- 12 independent simulated steps of 0.3 s finish within 1.15x of 0.3 s;
- a 12-step chain of 0.05 s steps finishes within 1.15x of 0.6 s;
- 40 parallel steps at $0.01 under --max-cost 0.155, over 30 seeds: never over $0.155,
  every run budget_exhausted with exit code 1, and the finished outputs returned;
- 30% transient errors and 10% rate limiting on 30 steps: every step completes, the errors
  are in the ledger and billed nothing;
- a regex gate rejecting answers: the rejected answers are billed.
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

TRILEMMA = sys.argv[1] if len(sys.argv) > 1 else "trilemma"
missed: list[str] = []


def run(*args: str, expect: int | None = 0) -> Any:
    """``trilemma ARGS --json``: its JSON (a run's with its exit code as ``exit``), the exit
    code checked where ``expect`` says."""
    done = subprocess.run([TRILEMMA, *args, "--json"], capture_output=True, text=True)
    if expect is not None and done.returncode != expect:
        sys.exit(f"{' '.join(args)}: exit {done.returncode}, not {expect}\n{done.stderr}")
    doc = json.loads(done.stdout)
    if isinstance(doc, dict):
        doc["exit"] = done.returncode
    return doc


def check(ok: bool, said: str) -> None:
    print(("ok    " if ok else "MISS  ") + said)
    if not ok:
        missed.append(said)


def main() -> int:
    with tempfile.TemporaryDirectory() as tmp:
        d = Path(tmp)
        journal = str(d / "j.db")

        def within(name: str, latency: float, chained: bool, target: float) -> None:
            """12 steps of ``latency`` seconds, independent or chained: within 1.15x of ``target``."""
            after = [""] + [f", after: [s{i - 1}]" if chained else "" for i in range(1, 12)]
            spec = d / ("chain.yaml" if chained else "fan.yaml")
            spec.write_text(f"version: 1\nmodels: {{m: {{usd_per_call: 0.001, latency_s: {latency}, "
                            "p_ok: 1.0}}\nsteps:\n"
                            + "".join(f"  - {{id: s{i}, model: m{after[i]}}}\n" for i in range(12)))
            took = run("run", str(spec), "--journal", journal)["latency_s"]
            check(took <= target * 1.15, f"{name}: {took:.3f} s ({took / target:.3f}x of {target} s; "
                                         "1.15x asked)")

        within("12 independent 0.3 s steps", 0.3, chained=False, target=0.3)
        within("12-step chain of 0.05 s", 0.05, chained=True, target=0.6)

        wide = d / "wide.yaml"
        wide.write_text("version: 1\nmodels: {m: {usd_per_call: 0.01, latency_s: 0.05, latency_jitter: 0.5, "
                        "p_ok: 1.0}}\nsteps:\n" + "".join(f"  - {{id: s{i}, model: m}}\n" for i in range(40)))
        worst, statuses, outputs = 0.0, set(), set()
        for seed in range(30):
            r = run("run", str(wide), "--max-cost", "0.155", "--seed", str(seed), "--journal", journal,
                    expect=None)
            worst = max(worst, r["cost_usd"])
            statuses.add((r["status"], r["exit"]))
            outputs.add(len(r["outputs"]))
        check(worst <= 0.155 and statuses == {("budget_exhausted", 1)} and min(outputs) > 0,
              f"40 steps at $0.01 under --max-cost 0.155, 30 seeds: worst ${worst:.4f}, "
              f"{sorted(statuses)}, outputs per run {sorted(outputs)}")

        faulty = d / "faults.yaml"
        faulty.write_text("version: 1\nmodels: {m: {usd_per_call: 0.01, latency_s: 0.01, p_ok: 1.0, "
                          "faults: {transient_error_rate: 0.3, rate_limit_rate: 0.1}}}\nsteps:\n"
                          + "".join(f"  - {{id: s{i}, model: m, retries: 8}}\n" for i in range(30)))
        r = run("run", str(faulty), "--seed", "3", "--journal", journal)
        rows = run("ledger", r["run_id"], "--journal", journal)
        by: dict[str, int] = {}
        for row in rows:
            by[row["outcome"]] = by.get(row["outcome"], 0) + 1
        errors_billed = sum(row["cost_usd"] for row in rows if row["outcome"] != "ok")
        check(r["status"] == "ok" and len(r["outputs"]) == 30 and errors_billed == 0
              and by.get("transient", 0) > 0 and by.get("rate_limited", 0) > 0,
              f"30% transient, 10% rate-limited on 30 steps: {r['status']}, {len(r['outputs'])} outputs, "
              f"${r['cost_usd']:.2f} billed, ledger {by}, errors billed ${errors_billed:.2f}")

        gated = d / "gate.yaml"
        gated.write_text("version: 1\nmodels: {m: {usd_per_call: 0.01, latency_s: 0.01, p_ok: 0.2}}\n"
                         "steps:\n" + "".join(f"  - {{id: s{i}, model: m, retries: 9, gate: {{regex: '^ok'}}, "
                                              "sim: {ok: 'ok', bad: 'no'}}\n" for i in range(8)))
        r = run("run", str(gated), "--seed", "5", "--journal", journal, expect=None)
        rows = run("ledger", r["run_id"], "--journal", journal)
        rejected = [row for row in rows if row["outcome"] == "rejected"]
        accepted = [row for row in rows if row["outcome"] == "ok"]
        check(bool(rejected) and all(row["cost_usd"] == 0.01 for row in rejected),
              f"a gate rejecting answers: {len(rejected)} rejected billed "
              f"${sum(row['cost_usd'] for row in rejected):.2f}, {len(accepted)} ok "
              f"${sum(row['cost_usd'] for row in accepted):.2f}")
    print(f"{len(missed)} missed" if missed else "all held")
    return 1 if missed else 0


if __name__ == "__main__":
    raise SystemExit(main())
