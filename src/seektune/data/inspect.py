"""`seektune data inspect`: what is in a data file, before anyone trains on it.

Reports record count, detected kind(s) and encoding, field coverage (share of records where a field
is present and non-empty), length distribution in characters and (with a tokenizer) in tokens as a
terminal histogram and a PNG, label distribution, malformed lines and a duplicate estimate (exact
count plus MinHash LSH near duplicates over a sample).
"""

from __future__ import annotations

import statistics
from collections import Counter
from pathlib import Path

from .common import distribution, read_all
from .dedup import NearDupIndex, exact_key, minhash_values
from .io import DataError, detect_encoding, file_kind
from .progress import record_progress
from .formats import content_text, detect_kind, label_of


def _percentiles(xs: list[int]) -> dict:
    if not xs:
        return {}
    s = sorted(xs)
    q = lambda p: s[min(len(s) - 1, int(p * (len(s) - 1) + 0.5))]  # noqa: E731
    return {"min": s[0], "p50": q(0.5), "p90": q(0.9), "p99": q(0.99), "max": s[-1],
            "mean": round(statistics.fmean(s), 1)}


def histogram(xs: list[int], bins: int = 12) -> list[tuple[int, int, int]]:
    """(low, high, count) bins of equal width."""
    if not xs:
        return []
    lo, hi = min(xs), max(xs)
    width = max(1, -(-(hi - lo + 1) // bins))
    counts = Counter((x - lo) // width for x in xs)
    return [(lo + b * width, lo + (b + 1) * width - 1, counts.get(b, 0)) for b in range((hi - lo) // width + 1)]


def text_histogram(xs: list[int], unit: str, bins: int = 12, width: int = 40) -> str:
    h = histogram(xs, bins)
    top = max((c for _, _, c in h), default=1) or 1
    return "\n".join(f"  {a:>7,}-{b:<7,} {unit:6s} {'█' * max(1 if c else 0, round(width * c / top)):<{width}} {c:,}"
                     for a, b, c in h)


def inspect_file(path: str | Path, tokenizer=None, label: str | None = None, png: str | Path | None = None,
                 near_sample: int = 20000, near_threshold: float = 0.8, show_progress: bool = False) -> dict:
    path = Path(path)
    records, rejects = read_all(path)
    kinds, fields, labels = Counter(), Counter(), []
    char_lens, tok_lens, texts = [], [], []
    unknown = 0
    for r in records:
        try:
            k = detect_kind(r.data)
        except DataError:
            unknown += 1
            k = None
        kinds[k or "unknown"] += 1
        for f, v in r.data.items():
            if v not in (None, "", [], {}):
                fields[f] += 1
        t = content_text(r.data, k) if k else ""
        texts.append(t)
        char_lens.append(len(t))
        labels.append(label_of(r.data, k, label) if k else None)
    if tokenizer is not None and texts:
        tok_lens = [len(ids) for ids in tokenizer(texts, add_special_tokens=False)["input_ids"]]
    keys = Counter(exact_key(t) for t in texts)
    exact_dups = sum(c - 1 for c in keys.values())
    near = NearDupIndex(near_threshold)
    near_hits = 0
    seen = set()
    sample = texts[:near_sample]
    with record_progress("near-duplicate estimate", show_progress, total=len(sample)) as advance:
        for i, t in enumerate(sample):
            advance()
            k = exact_key(t)
            if k in seen:
                continue
            seen.add(k)
            sig = minhash_values(t)
            if sig is not None and near.check_add(str(i), sig) is not None:
                near_hits += 1
    n = len(records)
    report = {
        "file": str(path), "file_type": file_kind(path), "encoding": detect_encoding(path),
        "records": n, "malformed_lines": len(rejects), "malformed_examples": [f"{e['source']}:{e['line']}: {e['reason']}"
                                                                              for e in rejects[:5]],
        "kinds": dict(kinds.most_common()),
        "field_coverage": {f: round(c / n, 4) for f, c in fields.most_common()} if n else {},
        "chars": _percentiles(char_lens), "tokens": _percentiles(tok_lens) if tok_lens else None,
        "labels": distribution(labels) if any(l is not None for l in labels) else None,
        "exact_duplicates": exact_dups,
        "near_duplicates": {"sampled": len(sample), "found": near_hits, "threshold": near_threshold,
                            "estimated_share": round(near_hits / len(sample), 4) if sample else 0.0},
        "char_histogram": text_histogram(char_lens, "chars"),
        "token_histogram": text_histogram(tok_lens, "tokens") if tok_lens else None,
    }
    if png:
        report["png"] = str(save_length_png(png, char_lens, tok_lens, path.name))
    return report


def save_length_png(png: str | Path, char_lens: list[int], tok_lens: list[int], title: str) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = [("characters", char_lens)] + ([("tokens", tok_lens)] if tok_lens else [])
    fig, axes = plt.subplots(1, len(panels), figsize=(5 * len(panels), 3.5), squeeze=False)
    for ax, (name, xs) in zip(axes[0], panels):
        ax.hist(xs, bins=40, color="#4477aa")
        ax.set_xlabel(f"length in {name}")
        ax.set_ylabel("records")
    fig.suptitle(title)
    fig.tight_layout()
    png = Path(png)
    png.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(png, dpi=100)
    plt.close(fig)
    return png
