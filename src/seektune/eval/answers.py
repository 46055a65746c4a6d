"""Extracting verifiable answers from text: GSM8K numbers and multiple-choice letters.

GSM8K follows lm-evaluation-harness's gsm8k task, so accuracies compare with published ones:
- strict: the number after `#### ` (the format of the reference solutions);
- flexible: the last number in the text (`-?[$0-9.,]{2,}|-?[0-9]+`, last match).
Numbers are normalised before comparing: commas, `$`, a trailing period and `.0` go (`$1,000.00`
== `1000`). Multiple-choice letters: an explicit "answer is (C)" / "答案是C" / "答案是C项" first, else a
letter standing alone at the start, else the first standalone A-J; only capitals count, and the
pronoun "I" ("I think A", "I'd pick C") is not option I.
"""

from __future__ import annotations

import re

_STRICT = re.compile(r"#### (\-?[0-9\.\,]+)")
_FLEX = re.compile(r"(-?[$0-9.,]{2,})|(-?[0-9]+)")
_BOXED = re.compile(r"\\boxed\{([^{}]*)\}")
# the letter is matched case-sensitively ("the answer is a tricky one" names no option) and must not run
# into another Latin letter; a CJK character may follow ("答案是C项": \b would not match there)
_PRONOUN = r"(?!I(?:\s+(?!is\b|was\b)[a-z]|['’]))"  # "I think A", "I'd pick C": the pronoun, not option I
_ANSWER_IS = re.compile(r"(?i:answer|答案)\s*(?i:is|是|为|:|：)?\s*[:：]?\s*\(?\s*([A-J])(?![A-Za-z])")
_LEAD = re.compile(r"^\s*\(?" + _PRONOUN + r"([A-J])(?:[\).:：、．]|\s|$)")
_ALONE = re.compile(r"(?<![A-Za-z])" + _PRONOUN + r"([A-J])(?![A-Za-z])")


def normalise_number(s: str | None) -> str | None:
    """'$1,000.00.' -> '1000'; None when nothing numeric is left."""
    if s is None:
        return None
    s = s.strip().replace(",", "").replace("$", "").rstrip(".")
    if not s or s in ("-", "."):
        return None
    try:
        v = float(s)
    except ValueError:
        return s
    return str(int(v)) if v == int(v) and abs(v) < 1e15 else repr(v)


def gsm8k_strict(text: str) -> str | None:
    m = _STRICT.search(text or "")
    return normalise_number(m.group(1)) if m else None


def gsm8k_flexible(text: str) -> str | None:
    boxed = _BOXED.findall(text or "")
    if boxed:
        return normalise_number(_last_number(boxed[-1]) or boxed[-1])
    return normalise_number(_last_number(text or ""))


def _last_number(text: str) -> str | None:
    found = [a or b for a, b in _FLEX.findall(text)]
    found = [f for f in found if re.search(r"\d", f)]
    return found[-1] if found else None


def reference_number(reference: str | None) -> str | None:
    """The verifiable number of a GSM8K reference (`... #### 72`), or a bare number."""
    if reference is None:
        return None
    return gsm8k_strict(reference) or normalise_number(_last_number(reference))


def same_number(a: str | None, b: str | None) -> bool:
    if a is None or b is None:
        return False
    try:
        return abs(float(a) - float(b)) <= 1e-6 * max(1.0, abs(float(b)))
    except ValueError:
        return a == b


def choice_letter(text: str, letters: str = "ABCDEFGHIJ") -> str | None:
    """The option letter a reply commits to, or None."""
    t = (text or "").strip()
    for rx in (_ANSWER_IS, _LEAD, _ALONE):
        for m in rx.finditer(t):  # the first match that is one of the options, not just the first match
            if m.group(1) in letters:
                return m.group(1)
    return None
