"""Shared plumbing of the data tools: read a whole file keeping its rejects, write outputs, summaries."""

from __future__ import annotations

import json
from pathlib import Path

from .io import DataError, Record, read_records, write_jsonl
from .formats import detect_kind


def read_all(path: str | Path) -> tuple[list[Record], list[dict]]:
    """All well-formed records plus one reject per malformed line (rule read_error, with file and line)."""
    errors: list[dict] = []
    recs = list(read_records(path, on_error="collect", errors=errors))
    return recs, [read_error_reject(e) for e in errors]


def read_error_reject(e: dict) -> dict:
    """The rejects-file row of a line read_records could not parse (collected with on_error="collect")."""
    return {"rule": "read_error", "reason": e["reason"], "source": e["source"], "line": e["line"],
            "record": e.get("raw")}


def kind_of(rec: Record, forced: str = "auto") -> str:
    if forced != "auto":
        return forced
    try:
        return detect_kind(rec.data)
    except DataError as e:  # found by fuzzing: split/balance/augment/curriculum said which fields, not where
        raise DataError(f"{rec.where}: {e}") from None


def write_records(path: str | Path, datas) -> int:
    return write_jsonl(path, datas)


def write_summary(path: str | Path, summary: dict) -> None:
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Path(path).write_text(json.dumps(summary, indent=2, ensure_ascii=False), encoding="utf-8")


def distribution(labels) -> dict:
    from collections import Counter

    c = Counter("<none>" if l is None else str(l) for l in labels)
    return dict(c.most_common())
