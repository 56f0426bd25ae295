"""How long the command line takes to start, beside the interpreter and the CLI framework.

Each command is run ``--repeats`` times as a fresh process, the commands interleaved round by
round so that a busy machine slows them alike, and the median of each is reported with its
ratio to ``python -c pass``. ``--against SRC`` runs the same commands with another checkout's
``src`` first on ``PYTHONPATH`` (``git worktree add /tmp/old <commit>``, then
``--against /tmp/old/src``), side by side in the same rounds, and reports the ratio of its
medians to this checkout's.

    python benchmarks/bench_startup.py --repeats 15
    python benchmarks/bench_startup.py --repeats 15 --against /tmp/old/src
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
STARTER = ROOT / "examples" / "starter.yaml"

#: Label, then the arguments after the interpreter.
COMMANDS: list[tuple[str, list[str]]] = [
    ("python -c pass", ["-c", "pass"]),
    ("import typer, rich", ["-c", "import typer, rich.console"]),
    ("import trilemma", ["-c", "import trilemma"]),
    ("trilemma --version", ["-m", "trilemma", "--version"]),
    ("trilemma --help", ["-m", "trilemma", "--help"]),
    ("trilemma runs (no runs yet)", ["-m", "trilemma", "runs", "--journal", "{journal}"]),
    ("trilemma estimate starter", ["-m", "trilemma", "estimate", str(STARTER), "--json"]),
]
FLOOR = "python -c pass"


def _time(args: list[str], src: Path) -> float:
    env = {**os.environ, "PYTHONPATH": str(src), "COLUMNS": "100"}
    started = time.perf_counter()
    done = subprocess.run([sys.executable, *args], env=env, stdout=subprocess.DEVNULL,
                          stderr=subprocess.PIPE, text=True)  # fmt: skip
    took = time.perf_counter() - started
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(args)} (PYTHONPATH={src}) failed: {done.stderr.strip()}")
    return took


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--repeats", type=int, default=15)
    ap.add_argument("--against", type=Path, help="another checkout's src folder, run beside this one")
    ap.add_argument("--json", action="store_true", help="print the medians as JSON")
    args = ap.parse_args()
    import tempfile

    trees = {"this": ROOT / "src"}
    if args.against is not None:
        if not (args.against / "trilemma" / "__init__.py").is_file():
            raise SystemExit(f"--against {args.against}: no trilemma package there; give a "
                             "checkout's src folder")  # fmt: skip
        trees["against"] = args.against.resolve()
    with tempfile.TemporaryDirectory() as tmp:
        journal = str(Path(tmp) / "j.db")
        made = f"from trilemma.journal import Journal\nwith Journal({journal!r}): pass"
        subprocess.run([sys.executable, "-c", made], check=True,  # an empty journal for `runs`
                       env={**os.environ, "PYTHONPATH": str(ROOT / "src")})  # fmt: skip
        for src in trees.values():  # bytecode compiled once, outside the timed rounds
            for _, cmd in COMMANDS:
                _time([a.replace("{journal}", journal) for a in cmd], src)
        took: dict[tuple[str, str], list[float]] = {}
        for _ in range(args.repeats):
            for label, cmd in COMMANDS:
                for tree, src in trees.items():
                    cmd_args = [a.replace("{journal}", journal) for a in cmd]
                    took.setdefault((tree, label), []).append(_time(cmd_args, src))
    med = {key: statistics.median(v) for key, v in took.items()}
    if args.json:
        print(json.dumps({f"{t}: {label}": round(v, 4) for (t, label), v in med.items()}, indent=2))
        return
    print(f"median of {args.repeats} fresh processes each; x: over `{FLOOR}` in the same rounds")
    head = f"{'command':32} {'this':>16}"
    if "against" in trees:
        head += f" {'against':>16} {'this / against':>15}"
    print(head)
    for label, _ in COMMANDS:
        this = med[("this", label)]
        line = f"{label:32} {this * 1000:9.0f} ms {this / med[('this', FLOOR)]:4.1f}x"
        if "against" in trees:
            other = med[("against", label)]
            line += f" {other * 1000:9.0f} ms {other / med[('against', FLOOR)]:4.1f}x {this / other:15.2f}"
        print(line)


if __name__ == "__main__":
    main()
