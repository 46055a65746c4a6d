"""Read records from JSON, JSONL, CSV and TSV files in any encoding (GB18030 included).

Every record carries where it came from (file and line), so any later error, reject or
warning can point the user at the exact row. Reading streams: a file larger than memory
works for JSONL/CSV/TSV.
"""

from __future__ import annotations

import codecs
import csv
import gzip
import io
import json
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

csv.field_size_limit(sys.maxsize)


class DataError(ValueError):
    """A problem in a data file, naming the file and line."""


@dataclass
class Record:
    data: dict[str, Any]
    source: str
    line: int  # 1-based line (JSONL/CSV row start) or array index + 1 for JSON arrays
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def where(self) -> str:
        return f"{self.source}:{self.line}"


# a \uD800-\uDFFF escape: json decodes a lone one into a str that cannot be written back as UTF-8
_SURROGATE_ESCAPE = re.compile(r"\\u[dD][89a-fA-F]")


def _parse_json(s: str):
    """json.loads, with every way it can fail as a JSONDecodeError-like (message, column); found by fuzzing:
    an integer over Python's 4300-digit limit (ValueError), nesting deeper than the recursion limit
    (RecursionError) and a lone UTF-16 surrogate escape, which loads but crashes every later write."""
    try:
        obj = json.loads(s)
    except json.JSONDecodeError:
        raise
    except RecursionError:
        raise json.JSONDecodeError("nested too deeply", s, 0) from None
    except ValueError as e:  # int digit limit
        raise json.JSONDecodeError(str(e).split(";")[0], s, 0) from None
    if _SURROGATE_ESCAPE.search(s):
        try:
            json.dumps(obj, ensure_ascii=False).encode("utf-8")
        except UnicodeEncodeError:
            raise json.JSONDecodeError("a \\u escape is a lone UTF-16 surrogate, not a character", s, 0) from None
    return obj


def _open_bytes(path: Path):
    return gzip.open(path, "rb") if path.suffix == ".gz" else open(path, "rb")


def detect_encoding(path: str | Path, sample_bytes: int = 1 << 20) -> str:
    """Return an encoding name that decodes the file. UTF-8 first (with BOM), then GB18030, then a guess."""
    path = Path(path)
    with _open_bytes(path) as f:
        head = f.read(sample_bytes)
    if head.startswith(b"\xef\xbb\xbf"):
        return "utf-8-sig"
    if head.startswith((b"\xff\xfe", b"\xfe\xff")):
        return "utf-16"
    # UTF-16 without a BOM is valid UTF-8 (a NUL after every ASCII byte); found by fuzzing, it was read as
    # field names like 't\x00e\x00x\x00t\x00'. Mostly-NUL odd (even) bytes: little (big) endian.
    probe = head[:4096]
    if len(probe) >= 4:
        for enc, zeros in (("utf-16-le", probe[1::2]), ("utf-16-be", probe[0::2])):
            if zeros.count(0) >= 0.9 * len(zeros):
                try:
                    codecs.getincrementaldecoder(enc)().decode(head, final=len(head) < sample_bytes)
                    return enc
                except UnicodeDecodeError:
                    pass

    def _decodes(enc: str) -> bool:
        try:
            # a sample may cut a multi-byte character at its end: an incremental decoder waits for the rest
            # (slicing a fixed number of bytes off can still cut one, e.g. Chinese UTF-8 files over 1 MB)
            codecs.getincrementaldecoder(enc)().decode(head, final=len(head) < sample_bytes)
            return True
        except UnicodeDecodeError:
            return False

    if _decodes("utf-8"):
        return "utf-8"
    if _decodes("gb18030"):
        return "gb18030"
    from charset_normalizer import from_bytes

    best = from_bytes(head).best()
    if best is None:
        raise DataError(f"{path}: cannot detect the text encoding (not UTF-8, not GB18030); convert it to UTF-8")
    return best.encoding


def _text_lines(path: Path, encoding: str) -> Iterator[str]:
    with _open_bytes(path) as raw:
        reader = io.TextIOWrapper(raw, encoding=encoding, newline="")
        try:
            yield from reader
        except UnicodeDecodeError as e:
            raise DataError(f"{path}: bytes not valid {encoding} ({e}); check the file's encoding") from None


def file_kind(path: Path) -> str:
    suffixes = [s.lower() for s in path.suffixes if s.lower() != ".gz"]
    ext = suffixes[-1] if suffixes else ""
    if ext in (".jsonl", ".ndjson"):
        return "jsonl"
    if ext == ".json":
        return "json"
    if ext == ".csv":
        return "csv"
    if ext in (".tsv", ".tab"):
        return "tsv"
    if ext in (".conll", ".iob", ".bio"):
        return "conll"
    raise DataError(f"{path}: unsupported file type '{ext or path.name}' (use .json, .jsonl, .csv, .tsv, optionally .gz)")


def read_records(path: str | Path, encoding: str | None = None, on_error: str = "raise",
                 errors: list | None = None) -> Iterator[Record]:
    """Yield Records from a file.

    on_error="raise" stops at the first malformed line with a DataError naming file and line;
    on_error="collect" appends (Record-like dict with reason) to `errors` and goes on, so the caller
    can write them to a rejects file. Nothing is ever dropped silently.
    """
    path = Path(path)
    if not path.exists():
        raise DataError(f"data file not found: {path}")
    kind = file_kind(path)
    enc = encoding or detect_encoding(path)
    src = str(path)

    def bad(line: int, reason: str, raw: str = ""):
        if on_error == "raise":
            raise DataError(f"{src}:{line}: {reason}")
        if errors is not None:
            errors.append({"source": src, "line": line, "reason": reason, "raw": raw[:2000]})

    if kind == "jsonl" or (kind == "json" and _looks_like_jsonl(path, enc)):
        for i, line in enumerate(_text_lines(path, enc), start=1):
            s = line.strip()
            if not s:
                continue
            try:
                obj = _parse_json(s)
            except json.JSONDecodeError as e:
                bad(i, f"invalid JSON ({e.msg} at column {e.colno})", s)
                continue
            if not isinstance(obj, dict):
                bad(i, f"expected a JSON object per line, got {type(obj).__name__}", s)
                continue
            yield Record(obj, src, i)
    elif kind == "json":
        text = "".join(_text_lines(path, enc))
        try:
            obj = _parse_json(text)
        except json.JSONDecodeError as e:
            raise DataError(f"{src}:{e.lineno}: invalid JSON ({e.msg} at column {e.colno})") from None
        if isinstance(obj, dict):
            # {"data": [...]} style wrappers
            lists = [v for v in obj.values() if isinstance(v, list)]
            if len(lists) == 1:
                obj = lists[0]
            else:
                obj = [obj]
        if not isinstance(obj, list):
            raise DataError(f"{src}: expected a JSON array of objects, got {type(obj).__name__}")
        for i, item in enumerate(obj, start=1):
            if not isinstance(item, dict):
                bad(i, f"item {i} is a {type(item).__name__}, expected an object", json.dumps(item, ensure_ascii=False))
                continue
            yield Record(item, src, i)
    elif kind in ("csv", "tsv"):
        delim = "\t" if kind == "tsv" else ","
        reader = csv.reader(_text_lines(path, enc), delimiter=delim)
        header = None
        for row in reader:
            line = reader.line_num
            if header is None:
                header = [h.strip() for h in row]
                if not any(header):
                    raise DataError(f"{src}:1: empty header row")
                continue
            if not row or all(not c.strip() for c in row):
                continue
            if len(row) != len(header):
                bad(line, f"expected {len(header)} columns ({', '.join(header)}), got {len(row)}", delim.join(row))
                continue
            yield Record(dict(zip(header, row)), src, line)
    else:
        raise DataError(f"{src}: CoNLL files are read by the token-classification reader, not as records")


def _looks_like_jsonl(path: Path, enc: str) -> bool:
    """A .json file that is really one object per line (common in the wild)."""
    with _open_bytes(path) as raw:
        head = raw.read(4096).decode(enc, errors="ignore").lstrip("\ufeff").lstrip()
    if not head.startswith("{"):
        return False
    first = head.split("\n", 1)[0].strip()
    try:
        _parse_json(first)
        return "\n" in head.strip()
    except json.JSONDecodeError:
        return False


def write_jsonl(path: str | Path, rows) -> int:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    n = 0
    with open(path, "w", encoding="utf-8") as f:
        for r in rows:
            f.write(json.dumps(r, ensure_ascii=False) + "\n")
            n += 1
    return n
