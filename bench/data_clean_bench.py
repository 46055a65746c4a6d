"""Records per second of `seektune data clean` (exact + MinHash LSH near duplicates) on 100k records.

Input: the 7,644 real medical QA rows (../shared/data) grown to N records by copies with random
character edits (0-30% of characters), so the set holds exact duplicates, near duplicates and
distinct rows; without ../shared/data a synthetic Chinese-like corpus is used. Baselines in the
same run: clean with exact dedup only (what near-dup detection costs) and datasketch's default
per-n-gram SHA1 MinHash against seektune's vectorised signature (same datasketch affine32 scheme).

    python bench/data_clean_bench.py [--n 100000] [--workers 2]
"""

from __future__ import annotations

import argparse
import json
import os
import random
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from seektune.data.clean import CleanOptions, clean_file  # noqa: E402
from seektune.data.dedup import minhash_values, shingles  # noqa: E402
from seektune.data.io import read_records  # noqa: E402

MEDICAL = ROOT.parent / "shared" / "data" / "sft" / "medical_dialogue_zh_internal.gb18030.csv"


def base_rows() -> list[dict]:
    if MEDICAL.exists():
        return [{"question": r.data["ask"], "answer": r.data["answer"]} for r in read_records(MEDICAL)]
    rng = random.Random(0)
    chars = [chr(c) for c in range(0x4E00, 0x4E00 + 3000)]
    return [{"question": "".join(rng.choices(chars, k=40)), "answer": "".join(rng.choices(chars, k=160))}
            for _ in range(7644)]


def grow(rows: list[dict], n: int, seed: int = 0) -> list[dict]:
    rng = random.Random(seed)
    alphabet = "".join({c for r in rows[:500] for c in r["answer"]})
    out = list(rows[:n])
    while len(out) < n:
        r = rng.choice(rows)
        a = list(r["answer"])
        for _ in range(int(len(a) * rng.choice([0, 0.02, 0.05, 0.1, 0.2, 0.3]))):
            a[rng.randrange(len(a))] = rng.choice(alphabet)
        out.append({"question": r["question"], "answer": "".join(a)})
    return out


def timed(fn):
    t = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - t


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=100_000)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--sig-sample", type=int, default=3000)
    a = ap.parse_args()
    rows = grow(base_rows(), a.n)
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    print(f"records: {len(rows):,} (source: {'medical_dialogue_zh_internal' if MEDICAL.exists() else 'synthetic'}); "
          f"cpus: {cpus}; load average: {os.getloadavg()[0]:.1f}", flush=True)
    results = {}
    with tempfile.TemporaryDirectory() as d:
        src = Path(d) / "in.jsonl"
        with open(src, "w", encoding="utf-8") as f:
            for r in rows:
                f.write(json.dumps(r, ensure_ascii=False) + "\n")
        runs = [("exact dedup only (baseline)", CleanOptions(near_dedup=False)),
                ("exact + near dedup, 1 process", CleanOptions()),
                (f"exact + near dedup, {a.workers} processes", CleanOptions(workers=a.workers))]
        for name, opts in runs:
            s, secs = timed(lambda: clean_file(src, Path(d) / "out.jsonl", opts, show_progress=False))
            results[name] = {"records_per_s": round(len(rows) / secs, 1), "seconds": round(secs, 1),
                             "kept": s["kept"], "rejected": s["rejected_by_rule"]}
            print(f"{name:40s} {len(rows) / secs:9,.0f} records/s  {secs:7.1f} s  kept {s['kept']:,}  "
                  f"rejected {s['rejected_by_rule']}", flush=True)
    base = results["exact dedup only (baseline)"]["records_per_s"]
    for name, r in results.items():
        print(f"  ratio to baseline: {name:40s} {r['records_per_s'] / base:.2f}x")

    # MinHash signatures: datasketch default (SHA1 per n-gram, update_batch) vs vectorised, same scheme
    from datasketch import MinHash

    texts = [r["question"] + "\n" + r["answer"] for r in rows[: a.sig_sample]]

    def reference():
        for t in texts:
            m = MinHash(num_perm=128, seed=1)
            m.update_batch([s.encode("utf-8") for s in shingles(t, 5)])

    _, t_ref = timed(reference)
    _, t_fast = timed(lambda: [minhash_values(t) for t in texts])
    print(f"signatures/s over {len(texts):,} texts: datasketch default {len(texts) / t_ref:,.0f}, "
          f"seektune vectorised {len(texts) / t_fast:,.0f} ({t_ref / t_fast:.1f}x)")


if __name__ == "__main__":
    main()
