"""Labelled data for the classification tasks: read, validate, split, and fix the label set.

Sequence classification reads any record file (csv/tsv/json/jsonl) with a text and a label
column (strings or ints). Token classification reads tagged sentences (see `data/ner.py`).
Without an eval file, `data.eval_ratio` of the training data is held out, stratified by label for
sequence classification so small classes appear in both parts. Records that cannot be used go to
the rejects list with file:line and the reason.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from .holdout import cap_eval_file, holdout
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
    unused: list[dict] = field(default_factory=list)  # eval-file records beyond data.max_eval_samples


def _stats(n_read: int, train: list, ev: list, rejects: list, unused: list, beyond: int, **extra) -> dict:
    s = {"read": n_read, "train": len(train), "eval": len(ev), "rejected": len(rejects), "unused_eval": len(unused),
         "beyond_max_samples": beyond, **extra}
    s["accounting"] = (f"read {n_read}: train {len(train)} + eval {len(ev)} + rejected {len(rejects)}"
                       + (f" + unused eval {len(unused)}" if unused else "")
                       + (f" + beyond data.max_samples {beyond}" if beyond else ""))
    return s


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


def _split_or_cap(train: list, data_cfg, seed: int, ev: list | None, key=None):
    """The common hold-out (data/holdout.py), or the cap on an eval file; returns (train, eval, unused)."""
    if ev is not None:
        cap = cap_eval_file(len(ev), data_cfg.max_eval_samples, seed)
        unused = [{"source": ev[i].source, "line": ev[i].line,
                   "reason": f"beyond data.max_eval_samples={data_cfg.max_eval_samples}"} for i in cap.unused]
        return train, [ev[i] for i in cap.used], unused
    h = holdout(len(train), data_cfg.eval_ratio, seed, data_cfg.max_eval_samples,
                key=(lambda i: key(train[i])) if key else None)
    return [train[i] for i in h.train], [train[i] for i in h.eval], []


def _only_known(items: list, labels: list[str], rejects: list, reason: str) -> list:
    """Items whose label is in `labels`; the others go to rejects with `reason` (formatted with the label)."""
    known, kept = set(labels), []
    for x in items:
        if x.label in known:
            kept.append(x)
        else:
            rejects.append({"source": x.source, "line": x.line, "reason": reason.format(label=x.label)})
    return kept


def load_sequence_data(data_cfg, seed: int, rejects: list) -> LabelledData:
    if not data_cfg.train:
        raise DataError("data.train is not set: give a training file")
    n0 = len(rejects)
    train = read_text_labels(data_cfg.train, data_cfg, rejects)
    n_read = len(train) + len(rejects) - n0
    beyond = max(0, len(train) - data_cfg.max_samples) if data_cfg.max_samples else 0
    if data_cfg.max_samples:
        train = train[: data_cfg.max_samples]
    n1 = len(rejects)
    ev = read_text_labels(data_cfg.eval, data_cfg, rejects) if data_cfg.eval else None
    n_read += len(ev or []) + len(rejects) - n1  # the eval file's records count too (its rejects and unused do)
    train, ev, unused = _split_or_cap(train, data_cfg, seed, ev, key=lambda x: x.label)
    labels = sort_labels(x.label for x in train)
    if data_cfg.labels:
        train = _only_known(train, data_cfg.labels, rejects, "training label '{label}' is not in data.labels")
        labels = list(data_cfg.labels)
    if len(labels) < 2:
        raise DataError(f"{data_cfg.train}: found {len(labels)} distinct label(s); classification needs >= 2")
    ev = _only_known(ev, labels, rejects, "eval label '{label}' never occurs in the training data")
    counts = {lab: sum(1 for x in train if x.label == lab) for lab in labels}
    return LabelledData(labels, train, ev, _stats(n_read, train, ev, rejects, unused, beyond,
                                                  train_label_counts=counts), unused)


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
        if not s.tokens:  # counted, never dropped silently
            rejects.append({"source": s.source, "line": s.line, "reason": "no tokens"})
            continue
        out.append(s)
    return out


def load_token_data(data_cfg, seed: int, rejects: list) -> LabelledData:
    if not data_cfg.train:
        raise DataError("data.train is not set: give a training file")
    conv = ConversionStats()
    kw = dict(scheme=data_cfg.label_scheme, nested_policy=data_cfg.nested_policy,
              strip_digits=data_cfg.strip_digits, errors=rejects, stats=conv)
    n0 = len(rejects)
    train = read_tagged(data_cfg.train, **kw)
    n_read = len(train) + len(rejects) - n0
    train = _valid_sentences(train, data_cfg.label_scheme, rejects)
    beyond = max(0, len(train) - data_cfg.max_samples) if data_cfg.max_samples else 0
    if data_cfg.max_samples:
        train = train[: data_cfg.max_samples]
    n1 = len(rejects)
    ev = read_tagged(data_cfg.eval, **kw) if data_cfg.eval else None
    n_read += len(ev or []) + len(rejects) - n1  # the eval file's records count too (its rejects and unused do)
    ev = _valid_sentences(ev, data_cfg.label_scheme, rejects) if ev is not None else None
    train, ev, unused = _split_or_cap(train, data_cfg, seed, ev)
    labels = tag_order(t for s in train for t in s.tags)
    if data_cfg.labels:
        unknown = sorted(set(labels) - set(data_cfg.labels))
        if unknown:
            raise DataError(f"{data_cfg.train}: tags {', '.join(unknown[:5])} are not in data.labels")
        labels = list(data_cfg.labels)
    if len(labels) < 2:
        raise DataError(f"{data_cfg.train}: no entity tags found (only 'O'); check the file and data.label_scheme")
    unseen = sorted({t for s in ev for t in s.tags} - set(labels))
    stats = _stats(n_read, train, ev, rejects, unused, beyond, train_tokens=sum(len(s.tokens) for s in train),
                   eval_tags_unseen_in_train=unseen)
    if conv.entities:
        stats["span_conversion"] = conv.as_dict()
        stats["span_conversion_notes"] = conv.examples[:20]
    return LabelledData(labels, train, ev, stats, unused)
