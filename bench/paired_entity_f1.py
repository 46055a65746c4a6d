"""Paired bootstrap of corpus entity F1 between two NER prediction files of the same test set.

Entity F1 is not a mean over sentences, so the interval resamples sentences and recomputes F1 for
both systems on each resample (seqeval's entity extraction, exact type + span match). Used for the
WNUT-17 figures in docs/tuning.md.

    python bench/paired_entity_f1.py BEFORE/eval_predictions.jsonl AFTER/eval_predictions.jsonl
"""

from __future__ import annotations

import argparse
import json

import numpy as np
from seqeval.metrics.sequence_labeling import get_entities


def entity_counts(path: str) -> tuple[np.ndarray, list]:
    """Per sentence: (true positives, predicted entities, gold entities), and the source lines."""
    rows = [json.loads(line) for line in open(path, encoding="utf-8")]
    counts = []
    for r in rows:
        gold, pred = set(map(tuple, get_entities(r["tags"]))), set(map(tuple, get_entities(r["pred"])))
        counts.append((len(gold & pred), len(pred), len(gold)))
    return np.array(counts, dtype=float), [r.get("line") for r in rows]


def f1(c: np.ndarray) -> np.ndarray:
    return 2 * c[..., 0].sum(-1) / (c[..., 1].sum(-1) + c[..., 2].sum(-1))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("before")
    ap.add_argument("after")
    ap.add_argument("--iters", type=int, default=10_000)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    a, la = entity_counts(args.before)
    b, lb = entity_counts(args.after)
    if la != lb:
        raise SystemExit("the two files do not hold the same sentences in the same order")
    idx = np.random.default_rng(args.seed).integers(0, len(a), size=(args.iters, len(a)))
    fa, fb = f1(a[idx]), f1(b[idx])
    lo, hi = np.percentile(fb - fa, [2.5, 97.5])
    print(f"sentences {len(a)}; bootstrap {args.iters} resamples, seed {args.seed}")
    for name, c, boot in (("before", a, fa), ("after", b, fb)):
        blo, bhi = np.percentile(boot, [2.5, 97.5])
        print(f"{name:6s} entity F1 {f1(c):.4f} [{blo:.4f}, {bhi:.4f}]")
    print(f"paired difference {f1(b) - f1(a):+.4f} [{lo:+.4f}, {hi:+.4f}]")


if __name__ == "__main__":
    main()
