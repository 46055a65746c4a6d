"""Cut one data file into the sites of a simulated federation, every record accounted for.

Each site gets `train.jsonl` and `test.jsonl` (its own held-out records, `federate.split.test_ratio`);
the union of the tests is `pooled_test.jsonl`. A record goes to exactly one site's train or test, or to
`rejects.jsonl` with its reason (unreadable, or no value in the split column). Seeded: the same
config gives the same shards.

    iid        a seeded shuffle dealt round-robin
    column     one site per value of a field (department, hospital); with more values than sites the
               values are grouped, largest first onto the smallest site, so sites stay balanced
    dirichlet  label skew: for each label, the shares of the sites are drawn from Dirichlet(alpha)
"""

from __future__ import annotations

import json
import random
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path

from ..config import ConfigError
from ..data.io import DataError, read_records, write_jsonl


@dataclass
class Shards:
    sites: dict[str, dict]                 # name -> {"train": path, "test": path | None}
    pooled_test: str | None
    report: dict = field(default_factory=dict)


def site_names(n: int) -> list[str]:
    return [f"site_{i}" for i in range(n)]


def _label_field(cfg) -> str:
    return cfg.federate.split.column or cfg.data.label_field or "label"


def _key(rec: dict, column: str):
    v = rec.get(column)
    return None if v is None or (isinstance(v, str) and not v.strip()) else str(v)


def assign(records: list[dict], n: int, by: str, column: str | None, alpha: float, seed: int) -> tuple[list[int | None], dict]:
    """The site index of every record (None: no value in the split column), and how the values were placed."""
    rng = random.Random(seed)
    if by == "iid":
        order = list(range(len(records)))
        rng.shuffle(order)
        out: list[int | None] = [None] * len(records)
        for k, i in enumerate(order):
            out[i] = k % n
        return out, {}
    keys = [_key(r, column) for r in records]
    if by == "column":
        counts = Counter(k for k in keys if k is not None)
        if len(counts) < n:
            raise ConfigError(f"federate.split.column: '{column}' has {len(counts)} distinct value(s), fewer than the "
                              f"{n} sites")
        load = [0] * n
        place: dict[str, int] = {}
        for value, c in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0])):
            site = min(range(n), key=lambda s: (load[s], s))
            place[value] = site
            load[site] += c
        return [None if k is None else place[k] for k in keys], {"values": place}
    # dirichlet over labels
    import numpy as np

    gen = np.random.default_rng(seed)
    by_label: dict[str, list[int]] = defaultdict(list)
    for i, k in enumerate(keys):
        if k is not None:
            by_label[k].append(i)
    out = [None] * len(records)
    shares = {}
    for label in sorted(by_label):
        idx = by_label[label]
        rng.shuffle(idx)
        p = gen.dirichlet([alpha] * n)
        cuts = (np.cumsum(p)[:-1] * len(idx)).round().astype(int).tolist()
        for site, part in enumerate(np.split(np.array(idx, dtype=int), cuts)):
            for i in part.tolist():
                out[i] = site
        shares[label] = [round(float(x), 4) for x in p]
    return out, {"label_shares": shares}


def make_shards(cfg, n: int, out_dir: Path, log=print) -> Shards:
    """Write the site files of `n` virtual sites under out_dir (or use federate.sites as given)."""
    fed = cfg.federate
    if fed.sites is not None:
        if len(fed.sites) != n:
            raise ConfigError(f"federate.sites: {len(fed.sites)} sites listed, but {n} clients asked for (--clients)")
        for s in fed.sites:
            for p in (s.train, s.test):
                if p is not None and not Path(p).exists():
                    raise ConfigError(f"federate.sites.{s.name}: file not found: {p}")
        return Shards({s.name: {"train": s.train, "test": s.test} for s in fed.sites}, None,
                      {"source": "federate.sites"})
    sp = fed.split
    column = _label_field(cfg) if sp.by == "dirichlet" else sp.column
    if sp.by == "column" and not column:
        raise ConfigError("federate.split.column: by: column needs the field to split on (e.g. department)")
    errors: list = []
    try:
        recs = list(read_records(cfg.data.train, on_error="collect", errors=errors))
    except DataError as e:
        raise ConfigError(f"data.train: {e}") from None
    rows = [r.data for r in recs]
    seed = cfg.train.seed
    sites, how = assign(rows, n, sp.by, column, sp.alpha, seed)
    out_dir.mkdir(parents=True, exist_ok=True)
    rejects = [{"where": f"{e['source']}:{e['line']}", "reason": e["reason"], "raw": e.get("raw", "")} for e in errors]
    buckets: dict[int, list[dict]] = defaultdict(list)
    for rec, row, site in zip(recs, rows, sites):
        if site is None:
            rejects.append({"where": rec.where, "reason": f"no value in federate.split.column '{column}'", "record": row})
        else:
            buckets[site].append(row)
    rng = random.Random(seed + 1)
    names = site_names(n)
    out: dict[str, dict] = {}
    counts = {}
    pooled: list[dict] = []
    for i, name in enumerate(names):
        rows_i = buckets.get(i, [])
        rng.shuffle(rows_i)
        n_test = max(1, round(len(rows_i) * sp.test_ratio)) if len(rows_i) > 1 else 0
        test, train = rows_i[:n_test], rows_i[n_test:]
        if len(train) < sp.min_site_records:
            raise ConfigError(f"federate.split: {name} gets {len(train)} training record(s), fewer than "
                              f"federate.split.min_site_records {sp.min_site_records} (by: {sp.by}, {n} sites)")
        d = out_dir / name
        d.mkdir(parents=True, exist_ok=True)
        write_jsonl(d / "train.jsonl", train)
        write_jsonl(d / "test.jsonl", test)
        pooled += test
        out[name] = {"train": str(d / "train.jsonl"), "test": str(d / "test.jsonl") if test else None}
        counts[name] = {"train": len(train), "test": len(test)}
        if column:
            counts[name]["by_" + column] = dict(Counter(_key(r, column) for r in rows_i).most_common(12))
    write_jsonl(out_dir / "pooled_test.jsonl", pooled)
    if rejects:
        write_jsonl(out_dir / "rejects.jsonl", rejects)
    total = sum(c["train"] + c["test"] for c in counts.values())
    report = {"source": cfg.data.train, "by": sp.by, "column": column, "seed": seed, "read": len(recs) + len(errors),
              "placed": total, "rejected": len(rejects), "sites": counts, **how}
    assert report["read"] == total + len(rejects), "every record is placed or rejected"
    (out_dir / "split.json").write_text(json.dumps(report, indent=1, ensure_ascii=False), encoding="utf-8")
    log(f"federate: {report['read']} records -> {n} sites ({sp.by}"
        + (f" on '{column}'" if column else "") + "): "
        + ", ".join(f"{k} {v['train']}+{v['test']}" for k, v in counts.items())
        + (f"; {len(rejects)} rejected ({out_dir / 'rejects.jsonl'})" if rejects else ""))
    return Shards(out, str(out_dir / "pooled_test.jsonl") if pooled else None, report)
