"""The estimate's expected latency beside the Monte Carlo's mean, on random specs.

Specs of 3-25 steps (fan-ins, random DAGs and chains) on three models drawn with jitter,
faults, timeouts and hedges, their steps with retries, votes, debates, cascades, routes
and cache hit rates; with ``--stop``, each with a ``stop_when`` on a random step (that is not a
first one). Each is estimated, and simulated (runs go to their end: ``halt=False``, no
deadline); the ratios estimate / Monte Carlo of the expected latency and cost are
reported, and how many are 5% or more off, and the reliability's difference in points. With ``--halt``, the runs halt at a failed step as the executor's do, and the estimate's
figures for such runs (``halting``, where it drew them; else the expected ones) are set
beside the Monte Carlo's mean cost and latency. ``--base REV`` runs the same specs through another revision's planner beside it
(a git worktree, removed after).

    python benchmarks/bench_estimate_accuracy.py --specs 80 --seed 1 --base f8973ce
"""

from __future__ import annotations

import argparse
import json
import random
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]


def random_spec(rng: random.Random) -> dict[str, Any]:
    models: dict[str, Any] = {}
    for name in ("a", "b", "c"):
        m: dict[str, Any] = {"usd_per_call": 0.001, "latency_s": round(rng.uniform(0.2, 3.0), 2),
                             "p_ok": round(rng.uniform(0.6, 1.0), 3)}  # fmt: skip
        if rng.random() < 0.4:
            m["latency_jitter"] = round(rng.uniform(0.1, 1.0), 2)
        if rng.random() < 0.2:
            m["faults"] = {"transient_error_rate": 0.1, "rate_limit_rate": 0.05}
        if rng.random() < 0.15:
            m["timeout_s"] = round(m["latency_s"] * rng.uniform(1.2, 3.0), 2)
        if rng.random() < 0.1 and m.get("latency_jitter"):
            m["hedge_after_s"] = round(m["latency_s"] * 1.2, 2)
        models[name] = m
    n = rng.randint(3, 25)
    shape = rng.choice(["fan", "dag", "chain"])
    steps = []
    for i in range(n):
        s: dict[str, Any] = {"id": f"s{i}", "model": rng.choice("abc"),
                             "retries": rng.choice([0, 0, 1, 2, 3])}  # fmt: skip
        if shape == "fan":
            s["after"] = [] if i < n - 1 else [f"s{j}" for j in range(n - 1)]
        elif shape == "chain":
            s["after"] = [f"s{i - 1}"] if i else []
        else:
            s["after"] = sorted({f"s{rng.randrange(i)}" for _ in range(rng.randint(0, 2))}) if i else []
        r = rng.random()
        if r < 0.08:
            s["vote"] = {"samples": rng.randint(2, 5)}
        elif r < 0.14:
            s["debate"] = {"agents": rng.randint(2, 4), "rounds": rng.randint(1, 2)}
        elif r < 0.2:
            s["debate_rounds"] = rng.randint(1, 2)
        elif r < 0.26 and s["retries"]:
            s["escalate"] = [rng.choice("abc")]
        elif r < 0.32:
            s["cached"] = {"hit_rate": round(rng.uniform(0.1, 0.9), 2)}
        elif r < 0.38:  # a classifier, then a lone call or a vote
            s["route"] = {"easy": {"share": 0.8, "model": rng.choice("abc")},
                          "hard": {"share": 0.2, "model": rng.choice("abc"), "vote": {"samples": 3}}}
        steps.append(s)
    return {"version": 1, "concurrency": 1000, "models": models, "steps": steps}


def specs(n: int, seed: int, stop: bool = False) -> list[dict[str, Any]]:
    from trilemma import workflow_from_dict
    from trilemma.errors import TrilemmaError

    rng, out = random.Random(seed), []
    while len(out) < n:
        spec = random_spec(rng)
        if stop:  # the step whose passing ends the run: one after others, so it may wait
            waits = [s["id"] for s in spec["steps"] if s["after"]]
            if not waits:
                continue
            spec["stop_when"] = rng.choice(waits)
        try:
            workflow_from_dict(spec)
        except TrilemmaError:  # an escalation to its own model, say
            continue
        out.append(spec)
    return out


def ratios(path: str, runs: int, halt: bool) -> None:
    """In the child: estimate / Monte Carlo for each spec in the JSON file at ``path``: the
    expected latency and cost, or with ``halt`` the halting runs'."""
    from trilemma import estimate, simulate, workflow_from_dict

    out: dict[str, list[float]] = {"latency": [], "cost": [], "reliability": []}
    for spec in json.loads(Path(path).read_text()):
        wf = workflow_from_dict(spec)
        mc = simulate(wf, runs, seed=1, halt=halt)
        e = estimate(wf)
        h = getattr(e, "halting", None) if halt else None  # a revision before it has none
        out["latency"].append((e.latency_expected_s if h is None else h.latency_s) / mc.latency_s.mean)
        out["cost"].append((e.cost_expected if h is None else h.cost_usd) / mc.cost_usd.mean)
        out["reliability"].append(e.reliability - mc.success_rate)  # points, not a ratio
    print(json.dumps(out))


def points(name: str, got: list[float]) -> str:
    """The reliability's differences, estimate less Monte Carlo."""
    off = sum(abs(d) >= 0.02 for d in got)
    return (f"{name:>24}: {off} of {len(got)} off by 2 points or more; difference "
            f"{min(got) * 100:+.1f} to {max(got) * 100:+.1f} points")


def summary(name: str, got: list[float]) -> str:
    off = sum(abs(r - 1.0) >= 0.05 for r in got)
    return (f"{name:>24}: {off} of {len(got)} off by 5% or more; ratio {min(got):.3f}-{max(got):.3f}, "
            f"median {sorted(got)[len(got) // 2]:.3f}")  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--specs", type=int, default=80)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--runs", type=int, default=20_000)
    parser.add_argument("--stop", action="store_true", help="give each spec a stop_when")
    parser.add_argument("--halt", action="store_true",
                        help="runs halt at a failed step: the halting figures, cost and latency")
    parser.add_argument("--base", help="another revision to run the same specs through")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        ratios(args.child, args.runs, args.halt)
        return
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "specs.json"
        path.write_text(json.dumps(specs(args.specs, args.seed, args.stop)))
        trees = [("working tree", ROOT)]
        if args.base:
            base = Path(tmp) / "base"
            subprocess.run(["git", "-C", str(ROOT), "worktree", "add", "-q", "--detach", str(base),
                            args.base], check=True)  # fmt: skip
            trees.insert(0, (args.base, base))
        try:
            for name, tree in trees:
                got = subprocess.run(
                    [sys.executable, str(ROOT / "benchmarks" / Path(__file__).name), "--child",
                     str(path), "--runs", str(args.runs), *(["--halt"] if args.halt else [])],
                    env={"PYTHONPATH": str(tree / "src"), "PATH": "/usr/bin:/bin"},
                    check=True, capture_output=True, text=True,
                )  # fmt: skip
                for figure, found in json.loads(got.stdout).items():
                    shown = points if figure == "reliability" else summary
                    print(shown(f"{name}, {figure}", found), flush=True)
        finally:
            if args.base:
                subprocess.run(["git", "-C", str(ROOT), "worktree", "remove", "--force", str(base)],
                               check=False)  # fmt: skip


if __name__ == "__main__":
    main()
