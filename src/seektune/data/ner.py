"""Tagged-sentence readers for token classification, and tag <-> span conversion.

Two input shapes:
  * CoNLL-style files: one `token<TAB>tag` per line (more columns allowed; the tag is the last),
    a blank line between sentences, `-DOCSTART-` lines skipped. Chinese corpora put one character
    per line; Weibo NER appends a word-segmentation digit to each character (`科0`), which
    `strip_digits` removes.
  * Span JSON (CMeEE style): `{"text": ..., "entities": [{"start_idx", "end_idx", "type"}]}` with
    inclusive end indices, converted to one tag per character. Nested or overlapping entities cannot
    all be expressed as flat tags, so a declared policy decides which survive and every dropped
    entity is counted.
JSON(L) records with `tokens` + `tags` (or `ner_tags`) lists are read as they are.

Schemes: `bio` (IOB2: every entity starts with B-), `iob` (IOB1: I- starts an entity, B- only
separates two adjacent entities of one type) and `iobes` (S- single, B-/I-/E- multi-token).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from .io import DataError, _text_lines, detect_encoding, file_kind, read_records

SCHEMES = ("bio", "iob", "iobes")
POLICIES = ("outermost", "innermost", "longest")


@dataclass
class Sentence:
    tokens: list[str]
    tags: list[str]
    source: str
    line: int  # line of the first token (CoNLL) or record line/index (JSON)

    @property
    def where(self) -> str:
        return f"{self.source}:{self.line}"


@dataclass
class ConversionStats:
    """What span -> tag conversion kept and dropped (reported to the user, never silent)."""

    entities: int = 0
    kept: int = 0
    dropped_nested: int = 0
    dropped_crossing: int = 0
    dropped_invalid: int = 0
    examples: list[str] = field(default_factory=list)

    def as_dict(self) -> dict:
        return {"entities": self.entities, "kept": self.kept, "dropped_nested": self.dropped_nested,
                "dropped_crossing": self.dropped_crossing, "dropped_invalid": self.dropped_invalid}


# --------------------------------------------------------------------------------------------
# tags <-> spans
# --------------------------------------------------------------------------------------------


def conll_lines(path):
    """(line number, columns, raw line) for every line of a CoNLL file; columns is None at a sentence
    break (blank line). -DOCSTART- lines are skipped. Shared by the reader and the annotation QC."""
    for i, raw in enumerate(_text_lines(path, detect_encoding(path)), start=1):
        line = raw.rstrip("\r\n").lstrip("\ufeff")
        if not line.strip():
            yield i, None, line
            continue
        if line.startswith("-DOCSTART-"):
            continue
        yield i, (line.split("\t") if "\t" in line else line.split()), line

def split_tag(tag: str) -> tuple[str, str]:
    """'B-PER' -> ('B', 'PER'); 'O' -> ('O', ''). Accepts '-' or '_' after the prefix."""
    if tag == "O":
        return "O", ""
    if len(tag) >= 2 and tag[0] in "BIES" and tag[1] in "-_":
        return tag[0], tag[2:]
    return "?", tag


def tags_to_spans(tags: list[str], scheme: str = "bio") -> list[tuple[int, int, str]]:
    """Entities as (start, end_exclusive, type). Lenient like conlleval: an I- without a matching
    open entity starts a new one, so malformed input still yields spans (check-iob flags it)."""
    spans: list[tuple[int, int, str]] = []
    start, etype = None, None

    def close(end: int):
        nonlocal start, etype
        if start is not None:
            spans.append((start, end, etype))
        start, etype = None, None

    for i, tag in enumerate(tags):
        p, t = split_tag(tag)
        if p == "O" or p == "?":
            close(i)
        elif p == "S":
            close(i)
            spans.append((i, i + 1, t))
        elif p == "B":
            close(i)
            start, etype = i, t
        elif p == "I":
            if start is None or etype != t:
                close(i)
                start, etype = i, t
        elif p == "E":
            if start is None or etype != t:
                close(i)
                start, etype = i, t
            close(i + 1)
    close(len(tags))
    return spans


def spans_to_tags(n: int, spans: list[tuple[int, int, str]], scheme: str = "bio") -> list[str]:
    """Flat, non-overlapping (start, end_exclusive, type) spans -> one tag per token."""
    if scheme not in SCHEMES:
        raise DataError(f"data.label_scheme: unknown scheme '{scheme}' (use {', '.join(SCHEMES)})")
    tags = ["O"] * n
    prev_end, prev_type = -1, None
    for s, e, t in sorted(spans):
        if s < prev_end:
            raise ValueError(f"overlapping spans at {s}: resolve nesting first")
        if scheme == "iobes" and e - s == 1:
            tags[s] = f"S-{t}"
        elif scheme == "iobes":
            tags[s] = f"B-{t}"
            for k in range(s + 1, e - 1):
                tags[k] = f"I-{t}"
            tags[e - 1] = f"E-{t}"
        else:
            adjacent_same = scheme == "iob" and s == prev_end and t == prev_type
            tags[s] = f"B-{t}" if (scheme == "bio" or adjacent_same) else f"I-{t}"
            for k in range(s + 1, e):
                tags[k] = f"I-{t}"
        prev_end, prev_type = e, t
    return tags


def convert_scheme(tags: list[str], src: str, dst: str) -> list[str]:
    return spans_to_tags(len(tags), tags_to_spans(tags, src), dst)


def resolve_nested(spans: list[tuple[int, int, str]], policy: str, stats: ConversionStats | None = None):
    """Choose a flat subset of possibly nested/overlapping spans.

    outermost: drop every span inside another; innermost: drop every span containing another;
    longest: keep longer spans first. What is still overlapping afterwards (crossing spans, which
    nest in neither direction) is resolved by keeping the earlier (then longer) span.
    """
    if policy not in POLICIES:
        raise DataError(f"data.nested_policy: unknown policy '{policy}' (use {', '.join(POLICIES)})")
    uniq = sorted(set(spans))

    def inside(a, b):  # a within b, a != b
        return b[0] <= a[0] and a[1] <= b[1] and a != b

    if policy == "outermost":
        cands = [a for a in uniq if not any(inside(a, b) for b in uniq)]
        order = sorted(cands, key=lambda x: (x[0], -(x[1] - x[0])))
    elif policy == "innermost":
        cands = [a for a in uniq if not any(inside(b, a) for b in uniq)]
        order = sorted(cands, key=lambda x: (x[0], -(x[1] - x[0])))
    else:
        cands = uniq
        order = sorted(cands, key=lambda x: (-(x[1] - x[0]), x[0]))
    nested_dropped = len(uniq) - len(cands)
    kept: list[tuple[int, int, str]] = []
    crossing = 0
    for sp in order:
        if any(sp[0] < k[1] and k[0] < sp[1] for k in kept):
            if policy == "longest" and any(inside(sp, k) for k in kept):
                nested_dropped += 1
            else:
                crossing += 1
            continue
        kept.append(sp)
    if stats is not None:
        stats.dropped_nested += nested_dropped
        stats.dropped_crossing += crossing
    return sorted(kept)


def span_record_to_sentence(obj: dict, source: str, line: int, scheme: str, policy: str,
                            stats: ConversionStats) -> Sentence:
    """CMeEE-style record -> per-character tokens and tags (end_idx inclusive)."""
    text = obj.get("text")
    if not isinstance(text, str):
        raise DataError(f"{source}:{line}: span record needs a string 'text'")
    ents = obj.get("entities") or []
    spans = []
    for e in ents:
        stats.entities += 1
        try:
            s, end, t = int(e["start_idx"]), int(e["end_idx"]), str(e["type"])
        except (KeyError, TypeError, ValueError):
            stats.dropped_invalid += 1
            stats.examples.append(f"{source}:{line}: entity without start_idx/end_idx/type: {e}")
            continue
        if not (0 <= s <= end < len(text)) or not t:
            stats.dropped_invalid += 1
            stats.examples.append(f"{source}:{line}: entity {e} outside the text (length {len(text)})")
            continue
        if "entity" in e and text[s:end + 1] != e["entity"]:
            stats.examples.append(f"{source}:{line}: text[{s}:{end + 1}]={text[s:end + 1]!r} differs from "
                                  f"entity {e['entity']!r} (kept, offsets win)")
        spans.append((s, end + 1, t))
    flat = resolve_nested(spans, policy, stats)
    stats.kept += len(flat)
    return Sentence(list(text), spans_to_tags(len(text), flat, scheme), source, line)


# --------------------------------------------------------------------------------------------
# readers
# --------------------------------------------------------------------------------------------

def strip_segmentation_digit(token: str) -> str:
    """'科0' -> '科' (Weibo NER marks each character's position in its word); '10' -> '1'."""
    if len(token) > 1 and token[1:].isdigit():
        return token[0]
    return token


def read_conll(path: str | Path, strip_digits: bool = False, errors: list | None = None) -> list[Sentence]:
    """Sentences from a CoNLL-style file. Malformed lines raise (errors=None) or are collected
    as rejects with file:line, dropping the sentence they belong to."""
    path = Path(path)
    if not path.exists():
        raise DataError(f"data file not found: {path}")
    src = str(path)
    out: list[Sentence] = []
    tokens: list[str] = []
    tags: list[str] = []
    first = 0
    bad_reason: str | None = None

    def flush():
        nonlocal tokens, tags, bad_reason
        if tokens or bad_reason:
            if bad_reason is None:
                out.append(Sentence(tokens, tags, src, first))
            elif errors is not None:
                errors.append({"source": src, "line": first, "reason": bad_reason,
                               "raw": " ".join(tokens)[:2000]})
        tokens, tags, bad_reason = [], [], None

    for i, cols, line in conll_lines(path):
        if cols is None:
            flush()
            continue
        if not tokens and bad_reason is None:
            first = i
        if len(cols) < 2 or not cols[-1].strip():
            reason = f"{src}:{i}: expected 'token<TAB>tag', got {line!r}"
            if errors is None:
                raise DataError(reason)
            bad_reason = bad_reason or reason.split(": ", 1)[1]
            continue
        tok = cols[0]
        tok = strip_segmentation_digit(tok) if strip_digits else tok
        tokens.append(tok)
        tags.append(cols[-1].strip())
    flush()
    return out


def read_tagged(path: str | Path, scheme: str = "bio", nested_policy: str = "outermost",
                strip_digits: bool = False, errors: list | None = None,
                stats: ConversionStats | None = None) -> list[Sentence]:
    """Any supported tagged file -> sentences (CoNLL, span JSON, or tokens+tags JSON/JSONL)."""
    path = Path(path)
    if not path.exists():
        raise DataError(f"data file not found: {path}")
    if file_kind(path) == "conll":
        return read_conll(path, strip_digits, errors)
    stats = stats if stats is not None else ConversionStats()
    out: list[Sentence] = []
    for rec in read_records(path, on_error="collect" if errors is not None else "raise", errors=errors):
        d = rec.data
        try:
            if "entities" in d and "text" in d:
                out.append(span_record_to_sentence(d, rec.source, rec.line, scheme, nested_policy, stats))
                continue
            toks = d.get("tokens")
            tags = d.get("tags", d.get("ner_tags"))
            if not isinstance(toks, list) or not isinstance(tags, list):
                raise DataError(f"{rec.where}: expected 'text'+'entities' or 'tokens'+'tags' fields, "
                                f"got {sorted(d)}")
            if len(toks) != len(tags):
                raise DataError(f"{rec.where}: {len(toks)} tokens but {len(tags)} tags")
            toks = [strip_segmentation_digit(str(t)) if strip_digits else str(t) for t in toks]
            out.append(Sentence(toks, [str(t) for t in tags], rec.source, rec.line))
        except DataError as e:
            if errors is None:
                raise
            errors.append({"source": rec.source, "line": rec.line, "reason": str(e).split(": ", 1)[-1]})
    return out


def write_conll(path: str | Path, sentences: list[Sentence]) -> int:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", encoding="utf-8") as f:
        for s in sentences:
            for tok, tag in zip(s.tokens, s.tags):
                f.write(f"{tok}\t{tag}\n")
            f.write("\n")
    return len(sentences)
