"""The tokenised-data cache file: a checksummed header line, then the JSON payload.

A cache entry that is truncated, garbled or edited (a full disk, a copy cut short, bit rot) must not
train a model on wrong tokens or crash the run: `read_cache` checks the header's length and sha256
and the payload's shape, and on any mismatch removes the entry and says why, so the caller
tokenises again and writes a fresh one. Writes go to a temporary file renamed into place.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

FORMAT = "seektune-tokenized-1"


def write_cache(path: Path, payload: dict) -> None:
    body = json.dumps(payload).encode("utf-8")
    head = json.dumps({"format": FORMAT, "bytes": len(body), "sha256": hashlib.sha256(body).hexdigest()})
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(f".tmp{os.getpid()}")  # several ranks may write the same entry
    with open(tmp, "wb") as f:
        f.write(head.encode("utf-8") + b"\n" + body)
    tmp.replace(path)


def _problem(raw: bytes) -> tuple[str | None, dict | None]:
    head, sep, body = raw.partition(b"\n")
    try:
        meta = json.loads(head)
    except ValueError:
        return "unreadable header", None
    if not sep or not isinstance(meta, dict) or meta.get("format") != FORMAT:
        return "not a seektune cache entry", None
    if len(body) != meta.get("bytes"):
        return f"{len(body)} bytes where the header says {meta.get('bytes')}", None
    if hashlib.sha256(body).hexdigest() != meta.get("sha256"):
        return "checksum mismatch (the file was changed or damaged)", None
    try:
        payload = json.loads(body)
    except ValueError as e:
        return f"invalid JSON ({e})", None
    if not isinstance(payload, dict) or not all(isinstance(payload.get(k), list) for k in ("train", "eval")) \
            or not isinstance(payload.get("stats"), dict):
        return "missing train/eval/stats", None
    for row in payload["train"] + payload["eval"]:
        if not (isinstance(row, dict) and isinstance(row.get("input_ids"), list)
                and isinstance(row.get("labels"), list) and len(row["input_ids"]) == len(row["labels"])):
            return "a row without matching input_ids and labels", None
    return None, payload


def read_cache(path: Path, log=print) -> dict | None:
    """The cached payload, or None when there is none or it is damaged (then the entry is removed)."""
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        return None
    except OSError as e:
        problem, payload = f"unreadable ({e.strerror or e})", None
    else:
        problem, payload = _problem(raw)
    if problem is None:
        return payload
    log(f"tokenised data: cache entry {path} is damaged ({problem}); removed, tokenising again")
    path.unlink(missing_ok=True)
    return None
