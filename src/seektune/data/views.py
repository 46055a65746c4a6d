"""Views of one raw record for the data tools: what kind it is, its content, answer and label.

The data tools (clean, split, balance, augment, ...) work on the records as the user wrote them
and write them back in the same shape, so they need to know, per kind, which strings form the
dialogue (for duplicate keys), which string is the answer (for quality rules), which strings are
prompts (for augmentation) and where the label lives. Kinds: the four SFT formats of
`formats.py`, classification rows (`text,label`) and NER records (`tokens` + `tags`).
"""

from __future__ import annotations

from typing import Any, Callable

from .formats import _QA_ANSWER_KEYS, _QA_PROMPT_KEYS, detect_format
from .io import DataError

TEXT_KEYS = ("text", "sentence", "review", "content", "document", "comment")
LABEL_KEYS = ("label", "labels", "category", "class", "sentiment")
NER_TAG_KEYS = ("tags", "ner_tags", "labels")
KINDS = ("alpaca", "sharegpt", "messages", "qa", "classification", "ner")
# keys whose values are never text to edit (speaker names, labels, ids, our own markers)
SKIP_KEYS = frozenset({"from", "role", "label", "labels", "tags", "ner_tags", "tokens", "id", "department",
                       "category", "class", "sentiment"})


def detect_kind(data: dict[str, Any]) -> str:
    keys = set(data)
    if "tokens" in keys and isinstance(data["tokens"], list) and any(k in keys for k in NER_TAG_KEYS):
        return "ner"
    has_text = any(k in keys for k in TEXT_KEYS)
    if has_text and any(k in keys for k in LABEL_KEYS) and "messages" not in keys and "conversations" not in keys:
        return "classification"
    try:
        return detect_format(data)
    except DataError:
        raise DataError(
            f"cannot tell the record kind from the fields {sorted(keys)}; expected an SFT format (Alpaca, "
            "ShareGPT, messages, question/answer columns), a classification row (text,label) or an NER "
            "record (tokens,tags)") from None


def _s(v: Any) -> str:
    return v if isinstance(v, str) else ("" if v is None else str(v))


def _first(d: dict, keys) -> str | None:
    return next((k for k in keys if k in d), None)


def missing_for_partial(data: dict) -> str | None:
    """When detection failed: name the field a half-complete record lacks (None if it matches nothing)."""
    keys = set(data)
    if "instruction" in keys and "output" not in keys:
        return "missing field 'output' for an Alpaca record"
    if any(k in keys for k in _QA_PROMPT_KEYS) and not any(k in keys for k in _QA_ANSWER_KEYS):
        return f"missing an answer field (one of {', '.join(_QA_ANSWER_KEYS)})"
    if any(k in keys for k in TEXT_KEYS) and not any(k in keys for k in LABEL_KEYS):
        return f"missing a label field (one of {', '.join(LABEL_KEYS)}) for a classification row"
    if "tokens" in keys:
        return f"missing a tag field (one of {', '.join(NER_TAG_KEYS)}) for an NER record"
    return None


def required_fields(kind: str, data: dict) -> list[str]:
    """Fields a record of this kind must carry; names of the missing ones (empty list = complete)."""
    if kind == "qa":
        need = [_first(data, _QA_PROMPT_KEYS) or "question", _first(data, _QA_ANSWER_KEYS) or "answer"]
    elif kind == "alpaca":
        need = ["instruction", "output"]
    elif kind == "classification":
        need = [_first(data, TEXT_KEYS) or "text", _first(data, LABEL_KEYS) or "label"]
    elif kind == "ner":
        need = ["tokens", _first(data, NER_TAG_KEYS) or "tags"]
    else:
        need = [kind if kind == "messages" else "conversations"]
    return [k for k in need if k not in data or data[k] is None]


def _turns(data: dict, kind: str) -> list[tuple[str, str]]:
    """(role, text) of every turn of an SFT record, system excluded."""
    if kind == "messages":
        return [(str(m.get("role", "")), _s(m.get("content"))) for m in data.get("messages") or []
                if isinstance(m, dict) and m.get("role") != "system"]
    if kind == "sharegpt":
        out = []
        for t in data.get("conversations") or []:
            if isinstance(t, dict):
                who = str(t.get("from", t.get("role", ""))).lower()
                if who != "system":
                    out.append(("assistant" if who in ("gpt", "assistant", "bot", "model", "chatgpt") else "user",
                                _s(t.get("value", t.get("content")))))
        return out
    if kind == "alpaca":
        out = []
        for pair in data.get("history") or []:
            if isinstance(pair, (list, tuple)) and len(pair) == 2:
                out += [("user", _s(pair[0])), ("assistant", _s(pair[1]))]
        prompt = "\n".join(x for x in (_s(data.get("instruction")).strip(), _s(data.get("input")).strip()) if x)
        return out + [("user", prompt), ("assistant", _s(data.get("output")))]
    if kind == "qa":
        pk, ak = _first(data, _QA_PROMPT_KEYS), _first(data, _QA_ANSWER_KEYS)
        return [("user", _s(data.get(pk))), ("assistant", _s(data.get(ak)))]
    return []


def content_text(data: dict, kind: str) -> str:
    """The strings that make a record what it is, joined: the dedup key and the length measure.

    For question/answer tables that is question + answer (not title or department), so two rows
    asking and answering the same thing are duplicates whatever their headings say.
    """
    if kind == "classification":
        return _s(data.get(_first(data, TEXT_KEYS)))
    if kind == "ner":
        return " ".join(_s(t) for t in data.get("tokens") or [])
    return "\n".join(t for _, t in _turns(data, kind))


def answer_texts(data: dict, kind: str) -> list[str]:
    return [t for r, t in _turns(data, kind) if r == "assistant"]


def prompt_texts(data: dict, kind: str) -> list[str]:
    return [t for r, t in _turns(data, kind) if r == "user"]


def label_of(data: dict, kind: str, label_field: str | None = None):
    """The label to stratify or balance on: an explicit field, else a classification label."""
    if label_field:
        v = data.get(label_field)
        return None if v is None else (v if isinstance(v, (str, int, float, bool)) else str(v))
    if kind == "classification":
        v = data.get(_first(data, LABEL_KEYS))
        return v if isinstance(v, (str, int, float, bool)) or v is None else str(v)
    return None


def map_strings(data: Any, fn: Callable[[str], str], key: str | None = None) -> Any:
    """Apply fn to every editable string in a record (recursively), leaving labels, roles, tokens alone."""
    if key in SKIP_KEYS or (key or "").startswith("_"):
        return data
    if isinstance(data, str):
        return fn(data)
    if isinstance(data, dict):
        return {k: map_strings(v, fn, k) for k, v in data.items()}
    if isinstance(data, list):
        return [map_strings(v, fn, key) for v in data]
    return data


def prompt_keys(data: dict, kind: str) -> list[str]:
    """Top-level fields holding user prompts (for augmentation of flat records)."""
    if kind == "qa":
        return [k for k in (_first(data, _QA_PROMPT_KEYS),) if k]
    if kind == "alpaca":
        return [k for k in ("instruction", "input") if _s(data.get(k)).strip()]
    if kind == "classification":
        return [k for k in (_first(data, TEXT_KEYS),) if k]
    return []


def map_prompts(data: dict, kind: str, fn: Callable[[str], str]) -> dict:
    """Apply fn to the user-side text of a record (the answer stays as written)."""
    out = dict(data)
    if kind in ("qa", "alpaca", "classification"):
        for k in prompt_keys(data, kind):
            out[k] = fn(_s(data[k]))
    elif kind == "messages":
        out["messages"] = [dict(m, content=fn(_s(m.get("content")))) if isinstance(m, dict) and m.get("role") == "user"
                           else m for m in data.get("messages") or []]
    elif kind == "sharegpt":
        out["conversations"] = [dict(t, value=fn(_s(t.get("value")))) if isinstance(t, dict)
                                and str(t.get("from", "")).lower() in ("human", "user") else t
                                for t in data.get("conversations") or []]
    return out
