"""`seektune data mix`: add general-domain data to domain data at a share, as replay against forgetting.

`ratio` is the share of general records in the output (the seeds use 0.1). General records are
sampled without replacement (with replacement, and said so, when there are too few), every record
is converted to OpenAI `messages` so the mixed file has one format, general ones are marked
`_mix: general`, and the result is shuffled with the seed.
"""

from __future__ import annotations

import random
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field

from .common import read_all, write_records, write_summary
from .formats import detect_format, to_messages
from .io import DataError


class MixOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")
    general: str = Field(..., description="general-domain data file")
    ratio: float = Field(0.1, ge=0, lt=1, description="share of general records in the output")
    seed: int = 42
    convert: bool = Field(True, description="write every record as OpenAI messages (one format in the output)")


def _as_messages(rec, origin: str, convert: bool, rejects: list) -> dict | None:
    try:
        d = {"messages": to_messages(rec, detect_format(rec.data))} if convert else dict(rec.data)
    except DataError as e:
        rejects.append({"rule": "unknown_format", "reason": str(e), "source": rec.source, "line": rec.line,
                        "record": rec.data})
        return None
    d.update({k: v for k, v in rec.data.items() if k.startswith("_")})  # keep _augmented/_upsampled marks
    d["_mix"] = origin
    return d


def mix_files(domain_path, out_path, opts: MixOptions, log=print) -> dict:
    dom, rejects = read_all(domain_path)
    gen, grej = read_all(opts.general)
    rejects += grej
    if not gen and opts.ratio > 0:
        raise DataError(f"{opts.general}: no general records to mix in")
    rng = random.Random(opts.seed)
    n_general = round(opts.ratio / (1 - opts.ratio) * len(dom))
    replacement = n_general > len(gen)
    picked = [rng.choice(gen) for _ in range(n_general)] if replacement else rng.sample(gen, n_general)
    if replacement:
        log(f"warning: {opts.general} has {len(gen)} records, fewer than the {n_general} needed: sampling with replacement")
    rows = [x for x in (_as_messages(r, "domain", opts.convert, rejects) for r in dom) if x is not None]
    g_rows = [x for x in (_as_messages(r, "general", opts.convert, rejects) for r in picked) if x is not None]
    out = rows + g_rows
    rng.shuffle(out)
    write_records(out_path, out)
    stem = Path(out_path).with_suffix("")
    if rejects:
        write_records(f"{stem}.rejects.jsonl", rejects)
    summary = {"domain": str(domain_path), "general": opts.general, "output": str(out_path),
               "domain_records": len(rows), "general_records": len(g_rows), "general_available": len(gen),
               "with_replacement": replacement, "general_share": round(len(g_rows) / len(out), 4) if out else 0.0,
               "rejected": len(rejects), "options": opts.model_dump()}
    write_summary(f"{stem}.summary.json", summary)
    return summary
