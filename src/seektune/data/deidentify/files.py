"""`seektune data deidentify IN --out OUT`: stream a data file, replace personal data in its text fields.

Only strings that data tools edit are touched (formats.map_strings_at, the rule of `data clean`: roles,
labels, ids, tokens/tags and `_`-prefixed fields are left alone), and within them only the detected spans; a
record with nothing found is written exactly as it was read. Malformed input lines go to
`<stem>.rejects.jsonl` as in `data clean`, so read = written + rejected.
"""

from __future__ import annotations

import gzip
import json
import time
from pathlib import Path

from ..common import read_error_reject
from ..formats import map_strings_at
from ..io import read_records
from ..progress import record_progress
from .options import DeidentifyOptions
from .report import Report, report_path_for, sample_path_for


def rejects_path_for(out) -> Path:
    from .report import _stem

    return Path(out).with_name(f"{_stem(Path(out))}.rejects.jsonl")


def deidentify_record(data, deid, found: list | None = None):
    """A copy of `data` with its text fields de-identified; (path, original, spans) appended to `found`."""
    def one(path: str, text: str) -> str:
        new, spans = deid(text)
        if spans and found is not None:
            found.append((path, text, spans))
        return new

    return map_strings_at(data, one)


def deidentify_file(in_path, out_path, opts: DeidentifyOptions | None = None, show_progress: bool = True,
                    deid=None) -> dict:
    """De-identify IN into OUT (JSONL); write `<stem>.report.json` and `<stem>.sample.jsonl`; return the report."""
    t0 = time.time()
    from .engine import Deidentifier  # Presidio's import counts as setup

    opts = opts or DeidentifyOptions()
    deid = deid or Deidentifier(opts)
    t_ready = time.time()
    out_path = Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    rej_path = rejects_path_for(out_path)
    report = Report(opts.sample)
    errors: list[dict] = []
    n_rej = 0
    opener = gzip.open if out_path.suffix == ".gz" else open
    with opener(out_path, "wt", encoding="utf-8") as fout, open(rej_path, "w", encoding="utf-8") as frej, \
            record_progress(f"deidentify {Path(in_path).name}", show_progress) as advance:
        def flush_errors():
            nonlocal n_rej
            while errors:
                e = errors.pop(0)
                n_rej += 1
                frej.write(json.dumps(read_error_reject(e), ensure_ascii=False) + "\n")
                advance()

        for rec in read_records(in_path, on_error="collect", errors=errors):
            flush_errors()
            found: list = []
            new = deidentify_record(rec.data, deid, found=found)
            report.add(rec.where, found)
            fout.write(json.dumps(new if found else rec.data, ensure_ascii=False) + "\n")
            advance()
        flush_errors()
    secs = time.time() - t_ready
    summary = {"input": str(in_path), "output": str(out_path), "report": str(report_path_for(out_path)),
               "sample": str(sample_path_for(out_path)), "rejects": str(rej_path), **report.summary(),
               "rejected": n_rej, "mode": opts.mode, "types": opts.types, "options": opts.model_dump(),
               "engine": "presidio-analyzer + seektune zh recognizers", "setup_seconds": round(t_ready - t0, 2),
               "seconds": round(secs, 2),
               "records_per_s": round(report.stats["scanned"] / secs, 1) if secs > 0 else None}
    summary["read"] = report.stats["scanned"] + n_rej
    with open(sample_path_for(out_path), "w", encoding="utf-8") as f:
        for s in report.sample:
            f.write(json.dumps(s, ensure_ascii=False) + "\n")
    report_path_for(out_path).write_text(json.dumps(summary, indent=2, ensure_ascii=False), encoding="utf-8")
    return summary
