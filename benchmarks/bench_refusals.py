"""Precision and recall of the rephrase refusal check on the labelled corpus (refusal = positive).

    python benchmarks/bench_refusals.py                              # tests/fixtures/refusals/rewrites.jsonl
    python benchmarks/bench_refusals.py --corpus other.jsonl         # any file of the same shape

Each line of the corpus: ``question``, ``answer`` (the original short answer), optional ``context``
(the prompt's extra lines, e.g. "OCR tokens: STOP"), ``rewrite``, ``label`` (``refusal`` or ``keep``)
and a ``note``. An item is predicted a refusal when ``check_rephrasing`` rejects it with the reason
``refusal``, i.e. through the same call the rephrase stage makes, with the same sources (question,
answer, context). Goal: recall >= 0.95 at precision >= 0.95.

It prints the misclassified items, then one JSON line: ``precision``, ``recall``, ``n``, ``tp``, ``fp``,
``fn``, ``tn``, ``misclassified`` (id, label, verdict, the signal that decided, the rewrite), and
``kept_rejected_otherwise``: kept-labelled items rejected for another reason (``disagrees``: the corpus
row does not carry its answer; should be empty).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from ying.data.rephrase.prompt import RephraseItem, check_rephrasing, refusal_evidence

CORPUS = Path(__file__).resolve().parents[1] / "tests" / "fixtures" / "refusals" / "rewrites.jsonl"


def load_corpus(path: Path = CORPUS) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def judge_corpus(rows: list[dict]) -> dict:
    """The confusion counts, precision, recall and the misclassified items of ``check_rephrasing``."""
    counts = {"tp": 0, "fp": 0, "fn": 0, "tn": 0}
    wrong, other = [], []
    for row in rows:
        # the same sources the stage hands the check (RephraseItem.sources)
        item = RephraseItem(row["question"], row["answer"], context=row.get("context"))
        verdict = check_rephrasing(row["rewrite"], item.expected, item.sources)
        said_refusal, is_refusal = verdict == "refusal", row["label"] == "refusal"
        counts[("t" if said_refusal == is_refusal else "f") + ("p" if said_refusal else "n")] += 1
        if said_refusal != is_refusal:
            evidence = refusal_evidence(row["rewrite"], item.expected, item.sources)
            wrong.append({"id": row["id"], "label": row["label"], "verdict": verdict,
                          "signal": evidence.text if evidence else None, "rewrite": row["rewrite"]})
        elif not is_refusal and verdict is not None:
            other.append({"id": row["id"], "verdict": verdict, "rewrite": row["rewrite"]})
    tp, fp, fn = counts["tp"], counts["fp"], counts["fn"]
    return {
        "precision": round(tp / (tp + fp), 4) if tp + fp else 0.0,
        "recall": round(tp / (tp + fn), 4) if tp + fn else 0.0,
        "n": len(rows), **counts, "misclassified": wrong, "kept_rejected_otherwise": other,
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--corpus", type=Path, default=CORPUS)
    args = ap.parse_args(argv)
    result = judge_corpus(load_corpus(args.corpus))
    for w in result["misclassified"]:
        print(f"{w['id']}: labelled {w['label']}, check says {w['verdict']} (signal {w['signal']!r}): {w['rewrite']}")
    print(f"precision {result['precision']:.3f}  recall {result['recall']:.3f}  "
          f"(tp {result['tp']}, fp {result['fp']}, fn {result['fn']}, tn {result['tn']}; goal >= 0.95 each)")
    print(json.dumps(result, ensure_ascii=False))
    return 0


if __name__ == "__main__":
    sys.exit(main())
