"""`seektune data split`: deterministic, stratified train/validation/test split without leakage.

Near duplicates (MinHash LSH over character n-grams, plus exact duplicates) are grouped first and
a whole group goes to one split, so a test question never has a paraphrase in train. Records
produced by `data augment` (marked `_augmented`) are grouped with their source record and always go
to train, so augmented text never enters evaluation. Groups are assigned per label stratum, largest
first, to the split furthest below its target share: the same input, ratios and seed always give
the same split.
"""

from __future__ import annotations

import random
from collections import Counter, defaultdict
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, field_validator

from .common import distribution, kind_of, read_all, write_records, write_summary
from .dedup import UnionFind, duplicate_groups, exact_key
from .io import DataError, Record
from .formats import content_text, label_of

SPLITS = ("train", "validation", "test")


class SplitOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")
    ratios: list[float] = Field([8, 1, 1], description="train:validation:test weights (any scale)")
    label: str | None = Field(None, description="field to stratify on (default: the label of classification rows)")
    seed: int = 42
    group_near_duplicates: bool = True
    near_threshold: float = Field(0.7, gt=0, le=1, description="lower than clean's: over-grouping is cheap, leaks are not")
    ngram: int = Field(5, ge=1)
    kind: str = "auto"

    @field_validator("ratios", mode="before")
    @classmethod
    def _parse(cls, v):
        if isinstance(v, (int, float)):  # YAML 1.1 reads an unquoted 8:1:1 as the base-60 number 28861
            raise ValueError(f"got the number {v}: write ratios as a list [8, 1, 1] or a quoted '8:1:1'")
        if isinstance(v, str):  # "8:1:1" or "0.8,0.1,0.1"
            v = [x for x in v.replace(",", ":").split(":") if x.strip()]
        try:
            v = [float(x) for x in v]
        except (TypeError, ValueError):
            raise ValueError(f"ratios must be three numbers, got {v!r}") from None
        if len(v) != 3 or any(x < 0 for x in v) or sum(v) <= 0:
            raise ValueError("ratios need three non-negative weights, e.g. 8:1:1")
        return v


def _augmented_from(rec: Record) -> str | None:
    """The content digest of the record an augmented copy came from (None for original records)."""
    a = rec.data.get("_augmented")
    return str(a.get("digest") or a.get("from")) if isinstance(a, dict) else None


def assign_splits(records: list[Record], opts: SplitOptions) -> tuple[list[str], list[int]]:
    """Split name per record and the group id per record."""
    kinds = [kind_of(r, opts.kind) for r in records]
    texts = [content_text(r.data, k) for r, k in zip(records, kinds)]
    originals = [i for i, r in enumerate(records) if _augmented_from(r) is None]
    groups = list(range(len(records)))
    if opts.group_near_duplicates and originals:
        g = duplicate_groups([texts[i] for i in originals], opts.near_threshold, opts.ngram)
        for pos, i in enumerate(originals):
            groups[i] = originals[g[pos]]
    # augmented copies join the group of the record they came from ("file:line" or "line")
    uf = UnionFind(len(records))
    for i, gi in enumerate(groups):
        uf.union(i, gi)
    by_digest = {}
    for i in originals:
        by_digest.setdefault(exact_key(texts[i]).hex(), i)
    forced_train = set()
    for i, r in enumerate(records):
        src = _augmented_from(r)
        if src is not None:
            forced_train.add(i)
            if src in by_digest:
                uf.union(i, by_digest[src])
    groups = [uf.find(i) for i in range(len(records))]

    members: dict[int, list[int]] = defaultdict(list)
    for i, g in enumerate(groups):
        members[g].append(i)
    strata: dict[str, list[int]] = defaultdict(list)
    for g, idx in members.items():
        strata[str(label_of(records[idx[0]].data, kinds[idx[0]], opts.label))].append(g)

    weights = [w / sum(opts.ratios) for w in opts.ratios]
    split_of = [""] * len(records)
    for stratum in sorted(strata):
        gs = strata[stratum]
        rng = random.Random(f"{opts.seed}:{stratum}")
        rng.shuffle(gs)
        gs.sort(key=lambda g: -len(members[g]))  # stable: ties keep the seeded order
        total = sum(len(members[g]) for g in gs)
        counts = [0, 0, 0]
        for g in gs:
            if any(i in forced_train for i in members[g]):
                s = 0
            else:
                s = max(range(3), key=lambda k: (weights[k] * total - counts[k], -k))
            counts[s] += len(members[g])
            for i in members[g]:
                split_of[i] = SPLITS[s]
    return split_of, groups


def split_file(in_path: str | Path, out_dir: str | Path, opts: SplitOptions | None = None, log=print) -> dict:
    opts = opts or SplitOptions()
    records, rejects = read_all(in_path)
    if not records:
        raise DataError(f"{in_path}: no records to split")
    split_of, groups = assign_splits(records, opts)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    counts, labels = {}, {}
    for s in SPLITS:
        idx = [i for i, x in enumerate(split_of) if x == s]
        counts[s] = write_records(out_dir / f"{s}.jsonl", (records[i].data for i in idx))
        labels[s] = distribution(label_of(records[i].data, kind_of(records[i], opts.kind), opts.label) for i in idx)
    if rejects:
        write_records(out_dir / "split.rejects.jsonl", rejects)
    sizes = Counter(Counter(groups).values())
    summary = {
        "input": str(in_path), "out_dir": str(out_dir), "read": len(records) + len(rejects),
        "rejected": len(rejects), "counts": counts, "labels": labels if any(k != "<none>" for d in labels.values()
                                                                             for k in d) else None,
        "groups": len(set(groups)), "records_in_multi_record_groups": sum(n * c for n, c in sizes.items() if n > 1),
        "augmented_forced_to_train": sum(1 for r in records if _augmented_from(r) is not None),
        "options": opts.model_dump(),
    }
    write_summary(out_dir / "split.summary.json", summary)
    return summary
