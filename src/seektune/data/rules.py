"""The per-record rules of `seektune data clean`: text edits (normalise, terms) and quality checks.

PII is not masked here: `clean --pii` runs the de-identification engine (data/deidentify/).

Edits return the new string; `clean.py` counts every record an edit changed. Quality checks return
the name of the rule that fired plus a reason, or None, so each reject can say exactly why.
"""

from __future__ import annotations

import csv
import json
import re
import unicodedata
from pathlib import Path

from .io import DataError

# --------------------------------------------------------------------------------------------
# Normalisation
# --------------------------------------------------------------------------------------------

_ZERO_WIDTH = re.compile("[\u200b\u200c\u200d\u2060\ufeff\u00ad]")
_CONTROL = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")
_SPACES = re.compile("[ \t\u00a0\u3000\u2000-\u200a\u202f\u205f]+")
_MANY_NEWLINES = re.compile("\n{3,}")


def normalise_unicode(text: str, form: str = "NFC") -> str:
    """Unicode normal form (NFC keeps full-width Chinese punctuation; NFKC folds it to ASCII)."""
    return unicodedata.normalize(form, text) if form else text


def normalise_whitespace(text: str) -> str:
    """Drop zero-width and control characters, collapse runs of spaces, at most one blank line, strip ends."""
    t = _ZERO_WIDTH.sub("", text)
    t = _CONTROL.sub("", t.replace("\r\n", "\n").replace("\r", "\n"))
    t = "\n".join(_SPACES.sub(" ", line).strip() for line in t.split("\n"))
    return _MANY_NEWLINES.sub("\n\n", t).strip()


# --------------------------------------------------------------------------------------------
# Term normalisation from a user dictionary
# --------------------------------------------------------------------------------------------

def load_term_dict(path: str | Path) -> dict[str, str]:
    """Read `variant -> canonical` pairs from JSON ({"新冠病毒": "COVID-19"}), or a 2-column TSV/CSV."""
    p = Path(path)
    if not p.exists():
        raise DataError(f"term dictionary not found: {p}")
    text = p.read_text(encoding="utf-8-sig")
    if p.suffix.lower() == ".json":
        try:
            obj = json.loads(text)
        except json.JSONDecodeError as e:
            raise DataError(f"{p}:{e.lineno}: invalid JSON ({e.msg})") from None
        if not isinstance(obj, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in obj.items()):
            raise DataError(f"{p}: expected a JSON object of string -> string")
        pairs = obj
    else:
        delim = "," if p.suffix.lower() == ".csv" else "\t"
        pairs = {}
        for i, row in enumerate(csv.reader(text.splitlines(), delimiter=delim), start=1):
            if not row or not row[0].strip() or row[0].startswith("#"):
                continue
            if len(row) < 2:
                raise DataError(f"{p}:{i}: expected 'variant{delim!r}canonical', got {delim.join(row)!r}")
            pairs[row[0].strip()] = row[1].strip()
    return {k: v for k, v in pairs.items() if k and k != v}


class TermNormaliser:
    """Replace every variant by its canonical term in one pass (longest variant first)."""

    def __init__(self, terms: dict[str, str]):
        self.terms = terms
        alts = sorted(terms, key=len, reverse=True)
        # ASCII words only match whole words ("flu" not inside "influence"); CJK terms match anywhere
        pats = [rf"(?<![A-Za-z0-9]){re.escape(a)}(?![A-Za-z0-9])" if re.fullmatch(r"[A-Za-z0-9 _\-]+", a)
                else re.escape(a) for a in alts]
        self.pattern = re.compile("|".join(pats), re.IGNORECASE) if pats else None
        self.lower = {k.lower(): v for k, v in terms.items()}

    def __call__(self, text: str) -> str:
        if self.pattern is None:
            return text
        return self.pattern.sub(lambda m: self.terms.get(m.group(0)) or self.lower[m.group(0).lower()], text)


# --------------------------------------------------------------------------------------------
# Quality checks
# --------------------------------------------------------------------------------------------

NO_ANSWER_PHRASES = (
    "不知道", "不清楚", "无法回答", "不能回答", "暂无", "没有答案", "无", "略", "同上", "谢谢", "好的", "嗯",
    "i don't know", "i do not know", "no answer", "n/a", "na", "none", "no idea", "cannot answer",
    "i can't answer", "unknown", "-", "...", "?", "？",
)
_PUNCT_STRIP = re.compile(r"[\s\.,!?;:。，！？；：、…\-~～]+")
# letters, digits, CJK, whitespace and sentence punctuation; symbols (#@$^~|*…) and box drawing are not text
_TEXT_CHAR = re.compile(r"[\w\u4e00-\u9fff\u3400-\u4dbf\s，。！？、；：“”‘’（）《》【】·,.!?;:'\"()\[\]\-–—…%/+=<>]")
_MOJIBAKE = re.compile(r"Ã.|â€|Â.|锟斤拷|烫烫烫|屯屯屯|\ufffd")


_NO_ANSWER_CORES = frozenset(_PUNCT_STRIP.sub("", p) for p in NO_ANSWER_PHRASES) - {""}


def is_no_answer(answer: str) -> bool:
    """An answer that says nothing: a stock non-answer ("不知道", "N/A", "thanks") and nothing more."""
    if len(answer) > 40:
        return False
    core = _PUNCT_STRIP.sub("", answer.strip().lower())
    return core == "" or core in _NO_ANSWER_CORES


def text_ratio(text: str) -> float:
    """Share of characters that are letters, digits, CJK, whitespace or ordinary punctuation."""
    if not text:
        return 1.0
    return len(_TEXT_CHAR.findall(text)) / len(text)


def is_garbled(text: str, min_text_ratio: float) -> str | None:
    bad = _MOJIBAKE.findall(text)
    if bad:
        return f"mojibake/replacement characters ({''.join(bad[:3])!r})"
    r = text_ratio(text)
    if r < min_text_ratio:
        return f"only {r:.0%} of characters are text (< {min_text_ratio:.0%})"
    return None
