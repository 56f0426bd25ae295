"""The semantic cache's threshold, measured: right answers served against wrong ones.

For each intent of ``benchmarks/data/paraphrases.yaml`` its question is answered
first (into the cache); then its paraphrases and its neighbours (close questions
that need another answer) are looked up, all in one scope, with the real
all-MiniLM-L6-v2 embedder inside a prompt template as a step would render them.
At each threshold:

- ``served_right``: the share of paraphrases served their own intent's answer;
- ``served_wrong``: the share of all lookups served an answer that is not theirs
  (a neighbour served anything, or a paraphrase served another intent's answer);
- ``sent``: the share of lookups that miss and are sent to the model (paid).

Needs the semantic extra. Writes benchmarks/results/semantic_cache.json and a plot.

    python benchmarks/bench_semantic_cache.py [--template "Answer: {q}"] [--plot FILE]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from trilemma.cache.semantic import best_match, default_embedder

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT / "benchmarks" / "data" / "paraphrases.yaml"
TEMPLATE = "Answer the customer's question in two sentences: {q}"
THRESHOLDS = [round(t, 2) for t in np.arange(0.70, 0.99, 0.02)]


def measure(template: str) -> dict[str, Any]:
    intents = yaml.safe_load(DATA.read_text())
    embed = default_embedder().embed
    stored = embed([template.format(q=i["ask"]) for i in intents])
    entries = [(str(n), v.tobytes(), str(n)) for n, v in enumerate(stored)]
    queries = [(q, str(n)) for n, i in enumerate(intents) for q in i["same"]]
    queries += [(q, None) for i in intents for q in i["other"]]  # None: no right answer stored
    vectors = embed([template.format(q=q) for q, _ in queries])
    best = [best_match(v, entries) for v in vectors]
    paraphrases = sum(1 for _, own in queries if own is not None)
    rows = []
    for t in THRESHOLDS:
        hits = [(m, own) for m, (_, own) in zip(best, queries, strict=True)
                if m is not None and m.similarity >= t]  # fmt: skip
        right = sum(1 for m, own in hits if m.response == own)
        rows.append({"threshold": t, "served_right": right / paraphrases,
                     "served_wrong": (len(hits) - right) / len(queries),
                     "sent": 1 - len(hits) / len(queries)})  # fmt: skip
    return {"template": template, "intents": len(intents), "paraphrases": paraphrases,
            "neighbours": len(queries) - paraphrases, "rows": rows}  # fmt: skip


def plot(result: dict[str, Any], out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = result["rows"]
    t = [r["threshold"] for r in rows]
    fig, ax = plt.subplots(figsize=(7, 5))
    ax.plot(t, [100 * r["served_right"] for r in rows], "o-", label="paraphrases served their own answer (% of paraphrases)")
    ax.plot(t, [100 * r["served_wrong"] for r in rows], "s-", color="tab:red",
            label="lookups served a wrong answer (% of all lookups)")  # fmt: skip
    ax.axvline(0.9, color="grey", ls=":", label="0.9, the threshold docs/cache.md starts from")
    ax.set_xlabel("similarity threshold")
    ax.set_ylabel("%")
    ax.set_title(f"Semantic cache: {result['paraphrases']} paraphrases, {result['neighbours']} "
                 "neighbours (all-MiniLM-L6-v2)")  # fmt: skip
    ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.14), frameon=False)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--template", default=TEMPLATE, help="the prompt each question sits in")
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "semantic_cache.json")
    ap.add_argument("--plot", type=Path, default=ROOT / "docs" / "semantic-cache-threshold.png")
    args = ap.parse_args()
    results = [measure(args.template), measure("{q}")]
    for r in results:
        print(f"template {r['template']!r}: {r['paraphrases']} paraphrases, {r['neighbours']} neighbours")
        print("  threshold  served right  served wrong  sent")
        for row in r["rows"]:
            print(f"  {row['threshold']:9.2f}  {row['served_right']:12.1%}  "
                  f"{row['served_wrong']:12.1%}  {row['sent']:4.1%}")  # fmt: skip
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2) + "\n")
    plot(results[0], args.plot)
    print(f"wrote {args.out} and {args.plot}")


if __name__ == "__main__":
    main()
