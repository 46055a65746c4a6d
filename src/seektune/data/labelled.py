"""Labelled data for the classification tasks: read, validate, split, and fix the label set.

Sequence classification reads any record file (csv/tsv/json/jsonl) with a text and a label
column (strings or ints). Token classification reads tagged sentences (see `data/ner.py`).
Without an eval file, `data.eval_ratio` of the training data is held out, stratified by label for
sequence classification so small classes appear in both parts. Records that cannot be used go to
the rejects list with file:line and the reason.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field

from .io import DataError, read_records
from .ner import ConversionStats, Sentence, read_tagged, split_tag

TEXT_FIELDS = ("text", "sentence", "review", "content", "input", "document", "question")
LABEL_FIELDS = ("label", "labels", "category", "class", "sentiment", "target")
SCHEME_PREFIXES = {"bio": "BI", "iob": "BI", "iobes": "BIES"}


@dataclass
class TextExample:
    text: str
    label: str
    source: str
    line: int


@dataclass
class LabelledData:
    labels: list[str]
    train: list
    eval: list
    stats: dict = field(default_factory=dict)


def _pick(keys, wanted: str, candidates, what: str, where: str) -> str:
    if wanted != "auto":
        if wanted not in keys:
            raise DataError(f"{where}: data.{what}_field '{wanted}' is not a column (columns: {', '.join(keys)})")
        return wanted
    lower = {k.lower(): k for k in keys}
    for c in candidates:
        if c in lower:
            return lower[c]
    raise DataError(f"{where}: cannot guess the {what} column among {', '.join(keys)}; set data.{what}_field")


def sort_labels(values) -> list[str]:
    """Numeric labels in numeric order, otherwise alphabetical: the same order on every run."""
    vals = sorted(set(values))
    try:
        return sorted(vals, key=lambda v: float(v))
    except ValueError:
        return vals


def read_text_labels(path: str, data_cfg, rejects: list) -> list[TextExample]:
    errors: list[dict] = []
    out: list[TextExample] = []
    text_key = label_key = None
    for rec in read_records(path, on_error="collect", errors=errors):
        if text_key is None:
            text_key = _pick(list(rec.data), data_cfg.text_field, TEXT_FIELDS, "text", rec.where)
            label_key = _pick(list(rec.data), data_cfg.label_field, LABEL_FIELDS, "label", rec.where)
        text, label = rec.data.get(text_key), rec.data.get(label_key)
        if not isinstance(text, str) or not text.strip():
            rejects.append({"source": rec.source, "line": rec.line, "reason": f"empty or missing '{text_key}'"})
            continue
        if label is None or (isinstance(label, str) and not label.strip()) or isinstance(label, (list, dict)):
            rejects.append({"source": rec.source, "line": rec.line,
                            "reason": f"missing or non-scalar label '{label_key}': {label!r}"})
            continue
        label = str(label).strip()
        if label.endswith(".0") and label[:-2].lstrip("-").isdigit():
            label = label[:-2]  # 1.0 and 1 are one class
        out.append(TextExample(text, label, rec.source, rec.line))
    rejects.extend(errors)
    return out


def stratified_split(items: list, key, ratio: float, seed: int) -> tuple[list, list]:
    """Hold out `ratio` of every class (at least one item of each class with >= 2 items)."""
    rng = random.Random(seed)
    by: dict[str, list[int]] = {}
    for i, it in enumerate(items):
        by.setdefault(key(it), []).append(i)
    held: set[int] = set()
    for _lab, idx in sorted(by.items()):
        rng.shuffle(idx)
        k = int(round(len(idx) * ratio))
        if ratio > 0 and len(idx) >= 2:
            k = max(1, min(k, len(idx) - 1))
        held.update(idx[:k])
    train = [it for i, it in enumerate(items) if i not in held]
    ev = [it for i, it in enumerate(items) if i in held]
    return train, ev


def _cap(items: list, n: int | None, seed: int) -> list:
    if n is None or len(items) <= n:
        return items
    rng = random.Random(seed + 1)
    idx = sorted(rng.sample(range(len(items)), n))
    return [items[i] for i in idx]


def load_sequence_data(data_cfg, seed: int, rejects: list) -> LabelledData:
    if not data_cfg.train:
        raise DataError("data.train is not set: give a training file")
    train = read_text_labels(data_cfg.train, data_cfg, rejects)
    n_read = len(train)
    if data_cfg.max_samples:
        train = train[: data_cfg.max_samples]
    if data_cfg.eval:
        ev = read_text_labels(data_cfg.eval, data_cfg, rejects)
    else:
        train, ev = stratified_split(train, lambda x: x.label, data_cfg.eval_ratio, seed)
    labels = sort_labels(x.label for x in train)
    if len(labels) < 2:
        raise DataError(f"{data_cfg.train}: found {len(labels)} distinct label(s); classification needs >= 2")
    known = set(labels)
    kept = []
    for x in ev:
        if x.label in known:
            kept.append(x)
        else:
            rejects.append({"source": x.source, "line": x.line,
                            "reason": f"eval label '{x.label}' never occurs in the training data"})
    ev = _cap(kept, data_cfg.max_eval_samples, seed)
    counts = {lab: sum(1 for x in train if x.label == lab) for lab in labels}
    return LabelledData(labels, train, ev, {"read": n_read, "train": len(train), "eval": len(ev),
                                            "rejected": len(rejects), "train_label_counts": counts})


def tag_order(tags) -> list[str]:
    """'O' first, then by entity type and prefix (B, I, E, S): stable label ids across runs."""
    rank = {"B": 0, "I": 1, "E": 2, "S": 3}
    others = sorted({t for t in tags if t != "O"}, key=lambda t: (split_tag(t)[1], rank.get(split_tag(t)[0], 9)))
    return ["O"] + others


def _valid_sentences(sents: list[Sentence], scheme: str, rejects: list) -> list[Sentence]:
    allowed = SCHEME_PREFIXES[scheme]
    out = []
    for s in sents:
        bad = next((t for t in s.tags if t != "O" and (split_tag(t)[0] not in allowed or not split_tag(t)[1])), None)
        if bad is not None:
            rejects.append({"source": s.source, "line": s.line,
                            "reason": f"tag '{bad}' is not valid in data.label_scheme={scheme}"})
            continue
        if not s.tokens:
            continue
        out.append(s)
    return out


def load_token_data(data_cfg, seed: int, rejects: list) -> LabelledData:
    if not data_cfg.train:
        raise DataError("data.train is not set: give a training file")
    conv = ConversionStats()
    kw = dict(scheme=data_cfg.label_scheme, nested_policy=data_cfg.nested_policy,
              strip_digits=data_cfg.strip_digits, errors=rejects, stats=conv)
    train = read_tagged(data_cfg.train, **kw)
    n_read = len(train)
    train = _valid_sentences(train, data_cfg.label_scheme, rejects)
    if data_cfg.max_samples:
        train = train[: data_cfg.max_samples]
    if data_cfg.eval:
        ev = _valid_sentences(read_tagged(data_cfg.eval, **kw), data_cfg.label_scheme, rejects)
    else:
        rng = random.Random(seed)
        idx = list(range(len(train)))
        rng.shuffle(idx)
        k = max(1, int(round(len(idx) * data_cfg.eval_ratio))) if data_cfg.eval_ratio > 0 and len(idx) >= 4 else 0
        held = set(idx[:k])
        ev = [s for i, s in enumerate(train) if i in held]
        train = [s for i, s in enumerate(train) if i not in held]
    labels = tag_order(t for s in train for t in s.tags)
    if len(labels) < 2:
        raise DataError(f"{data_cfg.train}: no entity tags found (only 'O'); check the file and data.label_scheme")
    ev = _cap(ev, data_cfg.max_eval_samples, seed)
    unseen = sorted({t for s in ev for t in s.tags} - set(labels))
    stats = {"read": n_read, "train": len(train), "eval": len(ev), "rejected": len(rejects),
             "train_tokens": sum(len(s.tokens) for s in train), "eval_tags_unseen_in_train": unseen}
    if conv.entities:
        stats["span_conversion"] = conv.as_dict()
        stats["span_conversion_notes"] = conv.examples[:20]
    return LabelledData(labels, train, ev, stats)
