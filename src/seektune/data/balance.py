"""`seektune data balance`: cap every class at a share of the data, by down- or upsampling (seeded).

Downsampling keeps a random subset of each over-represented class; upsampling adds seeded copies
of the smaller classes (marked `_upsampled`, so they can be told apart) until no class is above
the cap. Run it on the training split only: balanced validation/test sets misreport accuracy.
"""

from __future__ import annotations

import math
import random
from collections import defaultdict
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from .common import distribution, kind_of, read_all, write_records, write_summary
from .io import DataError


class BalanceOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")
    label: str | None = Field(None, description="field holding the class (default: the label of classification rows)")
    max_share: float = Field(0.7, gt=0, le=1, description="no class may exceed this share after balancing")
    method: Literal["down", "up"] = "down"
    seed: int = 42
    kind: str = "auto"


def downsample_caps(counts: dict[str, int], max_share: float) -> dict[str, int]:
    """Largest per-class limit L such that min(c, L) / sum(min(c_j, L)) <= max_share for every class."""
    if not counts:
        return {}
    if len(counts) * max_share < 1 - 1e-9:
        raise DataError(f"max_share={max_share} is impossible with {len(counts)} classes (needs >= {1 / len(counts):.3f})")

    def ok(limit: int) -> bool:
        capped = {k: min(c, limit) for k, c in counts.items()}
        tot = sum(capped.values())
        return all(v <= max_share * tot + 1e-9 for v in capped.values())

    lo, hi = 1, max(counts.values())
    while lo < hi:  # ok() is monotone: a lower limit only evens the classes out
        mid = (lo + hi + 1) // 2
        lo, hi = (mid, hi) if ok(mid) else (lo, mid - 1)
    return {k: min(c, lo) for k, c in counts.items()}


def upsample_targets(counts: dict[str, int], max_share: float) -> dict[str, int]:
    """Smallest total T with every class <= max_share*T, reached by raising the smallest classes first."""
    if len(counts) * max_share < 1 - 1e-9:
        raise DataError(f"max_share={max_share} is impossible with {len(counts)} classes")
    total = max(sum(counts.values()), max(math.ceil(c / max_share - 1e-9) for c in counts.values()))
    targets = dict(counts)
    extra = total - sum(counts.values())
    while extra > 0:  # water-filling: one copy at a time to the currently smallest class
        k = min(targets, key=lambda x: (targets[x], x))
        targets[k] += 1
        extra -= 1
    return targets


def balance_records(records, opts: BalanceOptions) -> tuple[list[dict], dict, dict]:
    from .formats import label_of

    by_class: dict[str, list] = defaultdict(list)
    for r in records:
        lab = label_of(r.data, kind_of(r, opts.kind), opts.label)
        if lab is None:
            raise DataError(f"{r.source}:{r.line}: no label" + (f" field '{opts.label}'" if opts.label else
                            " (set --label to the field holding the class)"))
        by_class[str(lab)].append(r)
    counts = {k: len(v) for k, v in by_class.items()}
    rng = random.Random(opts.seed)
    out = []  # (label, data)
    if opts.method == "down":
        caps = downsample_caps(counts, opts.max_share)
        for k in sorted(by_class):
            keep = sorted(rng.sample(range(counts[k]), caps[k]))
            out += [(k, by_class[k][i].data) for i in keep]
    else:
        targets = upsample_targets(counts, opts.max_share)
        for k in sorted(by_class):
            out += [(k, r.data) for r in by_class[k]]
            for _ in range(targets[k] - counts[k]):
                src = rng.choice(by_class[k])
                out.append((k, {**src.data, "_upsampled": {"from": f"{Path(src.source).name}:{src.line}"}}))
    rng.shuffle(out)
    return [d for _, d in out], counts, distribution(k for k, _ in out)


def balance_file(in_path, out_path, opts: BalanceOptions | None = None, log=print) -> dict:
    opts = opts or BalanceOptions()
    records, rejects = read_all(in_path)
    if not records:  # found by fuzzing: an empty or all-malformed file was a ZeroDivisionError
        raise DataError(f"{in_path}: no records to balance" + (f" ({len(rejects)} malformed, first "
                        f"{rejects[0]['source']}:{rejects[0]['line']}: {rejects[0]['reason']})" if rejects else ""))
    out, before, after = balance_records(records, opts)
    write_records(out_path, out)
    n = len(out)
    summary = {"input": str(in_path), "output": str(out_path), "read": len(records) + len(rejects),
               "rejected": len(rejects), "written": n, "method": opts.method, "max_share": opts.max_share,
               "before": dict(sorted(before.items(), key=lambda kv: -kv[1])), "after": after,
               "max_share_after": round(max(after.values()) / n, 4) if n else None, "options": opts.model_dump()}
    if rejects:
        write_records(Path(out_path).with_name(Path(out_path).stem + ".rejects.jsonl"), rejects)
    write_summary(Path(out_path).with_name(Path(out_path).stem + ".summary.json"), summary)
    return summary
