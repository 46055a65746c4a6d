"""Annotation QC for tagged files: format and transition errors with file:line, and agreement
between two annotators' files (token-level Cohen's kappa, entity-level P/R/F1) with a pass/fail
gate.

Why a gate on entity F1 by default: most tokens are 'O', so raw token agreement (and, less so,
kappa) stays high even when annotators disagree on many entities; entity F1 counts an entity as
agreed only when both its boundaries and its type match.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path

from .io import DataError, file_kind
from .ner import Sentence, conll_lines, read_tagged, split_tag, strip_segmentation_digit, tags_to_spans

PREFIXES = {"bio": "BI", "iob": "BI", "iobes": "BIES"}
GATES = ("f1", "kappa", "agreement")


@dataclass
class Issue:
    source: str
    line: int
    kind: str  # invalid_transition | unknown_tag | empty_entity | count_mismatch | token_mismatch | ...
    message: str

    def __str__(self) -> str:
        return f"{self.source}:{self.line}: {self.kind}: {self.message}"


@dataclass
class CheckedSentence:
    sentence: Sentence
    lines: list[int]  # line of every token (CoNLL) or the record's line repeated (JSON)


@dataclass
class CheckReport:
    file: str
    scheme: str
    sentences: int = 0
    tokens: int = 0
    entities: int = 0
    issues: list[Issue] = field(default_factory=list)
    against: str | None = None
    agreement: dict | None = None
    gate: str = "f1"
    threshold: float = 0.98
    passed: bool = False

    def as_dict(self) -> dict:
        d = asdict(self)
        d["issue_counts"] = self.issue_counts()
        return d

    def issue_counts(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for i in self.issues:
            out[i.kind] = out.get(i.kind, 0) + 1
        return out


def read_for_check(path: str | Path, strip_digits: bool = False) -> tuple[list[CheckedSentence], list[Issue]]:
    """Sentences with per-token line numbers; malformed lines become issues, not exceptions."""
    path = Path(path)
    if not path.exists():
        raise DataError(f"file not found: {path}")
    src = str(path)
    issues: list[Issue] = []
    if file_kind(path) != "conll":
        errors: list[dict] = []
        sents = read_tagged(path, strip_digits=strip_digits, errors=errors)
        for e in errors:
            kind = "count_mismatch" if "tokens but" in e["reason"] else "format"
            issues.append(Issue(e["source"], e["line"], kind, e["reason"]))
        return [CheckedSentence(s, [s.line] * len(s.tokens)) for s in sents], issues
    out: list[CheckedSentence] = []
    toks: list[str] = []
    tags: list[str] = []
    lines: list[int] = []

    def flush():
        nonlocal toks, tags, lines
        if toks:
            out.append(CheckedSentence(Sentence(toks, tags, src, lines[0]), lines))
        toks, tags, lines = [], [], []

    for i, cols, line in conll_lines(path):
        if cols is None:
            flush()
            continue
        if len(cols) < 2 or not cols[-1].strip():
            issues.append(Issue(src, i, "count_mismatch", f"a token without a tag: {line!r}"))
            cols = [cols[0] if cols else "", ""]
        tok = strip_segmentation_digit(cols[0]) if strip_digits else cols[0]
        toks.append(tok)
        tags.append(cols[-1].strip())
        lines.append(i)
    flush()
    return out, issues


def check_tags(cs: CheckedSentence, scheme: str, types: set[str] | None = None) -> list[Issue]:
    """Unknown tags, empty entities and transitions the scheme forbids, each with its line."""
    allowed = PREFIXES[scheme]
    src = cs.sentence.source
    tags, toks = cs.sentence.tags, cs.sentence.tokens
    issues: list[Issue] = []
    prev_p, prev_t = "O", ""
    for i, tag in enumerate(tags):
        ln = cs.lines[i]
        if tag == "":
            prev_p, prev_t = "O", ""
            continue  # already reported as count_mismatch
        p, t = split_tag(tag)
        if p == "?" or (p != "O" and p not in allowed):
            issues.append(Issue(src, ln, "unknown_tag", f"'{tag}' is not a {scheme.upper()} tag"))
            prev_p, prev_t = "O", ""
            continue
        if p != "O" and not t:
            issues.append(Issue(src, ln, "empty_entity", f"'{tag}' has no entity type"))
        elif p != "O" and types is not None and t not in types:
            issues.append(Issue(src, ln, "unknown_tag", f"entity type '{t}' is not one of {sorted(types)}"))
        if p != "O" and not toks[i].strip():
            issues.append(Issue(src, ln, "empty_entity", f"'{tag}' on an empty token"))
        inside = prev_p in ("B", "I") and prev_t == t
        after = "O" if prev_p == "O" else f"{prev_p}-{prev_t}"
        if scheme == "bio" and p == "I" and not inside:
            issues.append(Issue(src, ln, "invalid_transition", f"{tag} after {after}"))
        elif scheme == "iob" and p == "B" and not (prev_p in ("B", "I") and prev_t == t):
            issues.append(Issue(src, ln, "invalid_transition",
                                f"{tag} after {after} (IOB1 uses B- only between two adjacent {t} entities)"))
        elif scheme == "iobes":
            if p in ("I", "E") and not inside:
                issues.append(Issue(src, ln, "invalid_transition", f"{tag} after {after}"))
            if prev_p in ("B", "I") and not (p in ("I", "E") and t == prev_t):
                issues.append(Issue(src, ln, "invalid_transition", f"{tag} after {after}: entity not closed by E-"))
        prev_p, prev_t = p, t
    if scheme == "iobes" and prev_p in ("B", "I") and tags:
        issues.append(Issue(src, cs.lines[-1], "invalid_transition",
                            f"sentence ends inside {prev_p}-{prev_t}: entity not closed by E-"))
    return issues


def _prf(tp: int, n_pred: int, n_true: int) -> tuple[float, float, float]:
    p = tp / n_pred if n_pred else (1.0 if n_true == 0 else 0.0)
    r = tp / n_true if n_true else (1.0 if n_pred == 0 else 0.0)
    f = 2 * p * r / (p + r) if p + r else 0.0
    return p, r, f


def agreement(a: list[CheckedSentence], b: list[CheckedSentence], scheme: str = "bio",
              max_listed: int = 1000) -> tuple[dict, list[Issue]]:
    """Agreement of two annotations of the same sentences (B scored against A as reference)."""
    from sklearn.metrics import cohen_kappa_score

    issues: list[Issue] = []
    if len(a) != len(b):
        issues.append(Issue(b[0].sentence.source if b else "?", 0, "sentence_count_mismatch",
                            f"{len(a)} sentences in the first file, {len(b)} in the second; comparing the "
                            f"first {min(len(a), len(b))}"))
    ta, tb = [], []
    tp = n_a = n_b = 0
    disagreements: list[dict] = []
    compared = skipped = 0
    for k, (x, y) in enumerate(zip(a, b)):
        sx, sy = x.sentence, y.sentence
        if len(sx.tokens) != len(sy.tokens) or sx.tokens != sy.tokens:
            issues.append(Issue(sy.source, sy.line, "token_mismatch",
                                f"sentence {k + 1} differs from {sx.where} ({len(sx.tokens)} vs {len(sy.tokens)} "
                                "tokens or different text); left out of the agreement"))
            skipped += 1
            continue
        compared += 1
        ta.extend(sx.tags)
        tb.extend(sy.tags)
        ea = set(tags_to_spans(sx.tags, scheme))
        eb = set(tags_to_spans(sy.tags, scheme))
        tp += len(ea & eb)
        n_a += len(ea)
        n_b += len(eb)
        for i, (p, q) in enumerate(zip(sx.tags, sy.tags)):
            if p != q and len(disagreements) < max_listed:
                disagreements.append({"sentence": k + 1, "line_a": x.lines[i], "line_b": y.lines[i],
                                      "token": sx.tokens[i], "a": p, "b": q})
    if len(set(ta) | set(tb)) <= 1:
        kappa = 1.0 if ta == tb else 0.0  # one tag everywhere: kappa is undefined, agreement is total
    else:
        kappa = float(cohen_kappa_score(ta, tb))
    p, r, f = _prf(tp, n_b, n_a)
    agree = sum(1 for x, y in zip(ta, tb) if x == y) / len(ta) if ta else 0.0
    return {"sentences_compared": compared, "sentences_skipped": skipped, "tokens": len(ta),
            "token_agreement": agree, "kappa": kappa, "entities_a": n_a, "entities_b": n_b,
            "entities_matched": tp, "entity_precision": p, "entity_recall": r, "entity_f1": f,
            "disagreeing_tokens": sum(1 for x, y in zip(ta, tb) if x != y),
            "disagreements": disagreements}, issues


def check_iob(file: str | Path, against: str | Path | None = None, scheme: str = "bio", threshold: float = 0.98,
              gate: str = "f1", types: list[str] | None = None, strip_digits: bool = False) -> CheckReport:
    """Validate FILE (and OTHER); with OTHER, score agreement and gate it at `threshold`."""
    if scheme not in PREFIXES:
        raise DataError(f"--scheme: unknown scheme '{scheme}' (use {', '.join(PREFIXES)})")
    if gate not in GATES:
        raise DataError(f"--gate: unknown metric '{gate}' (use {', '.join(GATES)})")
    tset = set(types) if types else None
    rep = CheckReport(str(file), scheme, gate=gate, threshold=threshold)
    a, issues = read_for_check(file, strip_digits)
    rep.issues.extend(issues)
    for cs in a:
        rep.issues.extend(check_tags(cs, scheme, tset))
    rep.sentences = len(a)
    rep.tokens = sum(len(cs.sentence.tokens) for cs in a)
    rep.entities = sum(len(tags_to_spans(cs.sentence.tags, scheme)) for cs in a)
    if against is None:
        rep.passed = not rep.issues
        return rep
    rep.against = str(against)
    b, issues_b = read_for_check(against, strip_digits)
    rep.issues.extend(issues_b)
    for cs in b:
        rep.issues.extend(check_tags(cs, scheme, tset))
    rep.agreement, more = agreement(a, b, scheme)
    rep.issues.extend(more)
    value = {"f1": rep.agreement["entity_f1"], "kappa": rep.agreement["kappa"],
             "agreement": rep.agreement["token_agreement"]}[gate]
    rep.passed = not rep.issues and value >= threshold
    return rep
