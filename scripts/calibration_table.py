"""Print the calibration results in docs/calibration/*.json as a Markdown table."""

from __future__ import annotations

import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def main() -> int:
    rows = []
    for f in sorted((ROOT / "docs" / "calibration").glob("*.json")):
        text = f.read_text().strip()
        if not text:
            continue
        d = json.loads(text)
        lo, hi = d["p_ok_ci95"]
        rows.append(
            f"| {d['model']} | {d['suite']} | {d['n']} | {d['p_ok']:.2f} | [{lo:.2f}, {hi:.2f}] | "
            f"{d['latency_s']['mean']:.3f} | {d['latency_s']['p50']:.3f} | {d['latency_s']['p95']:.3f} | "
            f"{d['tokens']['prompt']:.0f} / {d['tokens']['completion']:.1f} | {d['usd_per_call']:.2e} |"
        )
    sys.stdout.write(
        "| model | suite | n | p_ok | 95% interval | latency mean (s) | p50 | p95 | tokens in / out | $ per call (nominal) |\n"
        "| --- | --- | ---: | ---: | --- | ---: | ---: | ---: | ---: | ---: |\n" + "\n".join(rows) + "\n"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
