"""`seektune data clean`: normalise, mask, filter and de-duplicate a data file, losing nothing.

Streams the input (a file larger than memory works): each record is edited (Unicode/whitespace,
term dictionary, optional de-identification), checked by the quality rules, then checked against the
exact-duplicate set and the MinHash LSH near-duplicate index of the records kept so far. Kept
records go to OUT as JSONL in their original shape; every dropped record goes to
`<OUT stem>.rejects.jsonl` with the rule that fired, the reason and its source line. The summary
counts read, kept and rejected (kept + rejected == read, checked) and changed records per rule.
MinHash signatures can be computed in worker processes (`workers`); the order of decisions and
so the output are identical for any worker count.
"""

from __future__ import annotations

import gzip
import itertools
import json
import multiprocessing as mp
import time
from collections import Counter
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from .dedup import NearDupIndex, exact_key, minhash_values
from .io import DataError, read_records
from .progress import record_progress
from .rules import TermNormaliser, is_garbled, is_no_answer, load_term_dict, normalise_unicode, normalise_whitespace
from .formats import KINDS, answer_texts, content_text, detect_kind, map_strings, missing_for_partial, required_fields


class CleanOptions(BaseModel):
    """Options of `data clean` (CLI flags and `data.pipeline` step args map onto these 1:1)."""

    model_config = ConfigDict(extra="forbid")
    kind: Literal[("auto", *KINDS)] = Field("auto", description="record kind; auto detects per record")
    unicode_form: Literal["NFC", "NFKC", "none"] = Field("NFC", description="NFKC also folds full-width punctuation")
    whitespace: bool = Field(True, description="drop zero-width/control chars, collapse spaces, strip")
    terms: str | None = Field(None, description="term dictionary (JSON object or 2-column TSV/CSV): variant -> canonical")
    pii: bool = Field(False, description="replace personal data by type tags (<PHONE>, <ID_CARD> ...) with the "
                      "`data deidentify` engine; that command adds pseudonyms, --types, a report and a review sample")
    exact_dedup: bool = True
    near_dedup: bool = True
    near_threshold: float = Field(0.8, gt=0, le=1, description="estimated Jaccard of character n-grams")
    ngram: int = Field(5, ge=1, description="character n-gram size for MinHash")
    num_perm: int = Field(128, ge=16, description="MinHash permutations")
    min_answer_chars: int = Field(2, ge=0, description="shorter answers are rejected (rule short_answer)")
    drop_no_answer: bool = Field(True, description="reject single-turn dialogues whose answer is a non-answer")
    min_text_ratio: float = Field(0.5, ge=0, le=1, description="reject rows where less of the text is letters/CJK/punctuation")
    max_chars: int | None = Field(20000, ge=1, description="reject rows whose content is longer")
    min_chars: int = Field(1, ge=0, description="reject rows whose content is shorter")
    workers: int = Field(1, ge=1, description="processes computing MinHash signatures")
    seed: int = Field(1, description="MinHash seed")


def _stem(out: Path) -> str:
    return Path(out.stem).stem if out.suffix == ".gz" else out.stem


def rejects_path_for(out: str | Path) -> Path:
    """`data/train.clean.jsonl` -> `data/train.clean.rejects.jsonl`."""
    return Path(out).with_name(f"{_stem(Path(out))}.rejects.jsonl")


def summary_path_for(out: str | Path) -> Path:
    return Path(out).with_name(f"{_stem(Path(out))}.summary.json")


# --------------------------------------------------------------------------------------------
# Per-record work (runs in worker processes when workers > 1)
# --------------------------------------------------------------------------------------------

_OPTS: CleanOptions | None = None
_TERMS: TermNormaliser | None = None
_DEID = None  # the de-identification engine, built once per process when `pii` is on


def _init_worker(opts_json: str, terms: dict | None) -> None:
    global _OPTS, _TERMS, _DEID
    _OPTS = CleanOptions.model_validate_json(opts_json)
    _TERMS = TermNormaliser(terms) if terms else None
    if _OPTS.pii and _DEID is None:  # a forked worker inherits the parent's engine
        from .deidentify import Deidentifier

        _DEID = Deidentifier()


def _edit(data: dict, opts: CleanOptions, terms: TermNormaliser | None) -> tuple[dict, list[str]]:
    """Apply the text edits; return the new record and the rules that changed it."""
    changed = []

    def step(name, fn):
        nonlocal data
        new = map_strings(data, fn)
        if new != data:
            changed.append(name)
            data = new

    if opts.unicode_form != "none":
        step("unicode", lambda s: normalise_unicode(s, opts.unicode_form))
    if opts.whitespace:
        step("whitespace", normalise_whitespace)
    if terms is not None:
        step("terms", terms)
    if opts.pii:  # one pass of the de-identification engine; counted per type found (pii_phone, pii_person ...)
        fired: set[str] = set()

        def deid(s: str) -> str:
            new, spans = _DEID(s)
            fired.update(sp.type for sp in spans)
            return new

        new = map_strings(data, deid)
        if fired:
            data = new
            changed += [f"pii_{t.lower()}" for t in sorted(fired)]
    return data, changed


def _quality(data: dict, kind: str, text: str, opts: CleanOptions) -> tuple[str, str] | None:
    if len(text.strip()) < opts.min_chars:
        return "empty", f"content shorter than {opts.min_chars} characters"
    if kind not in ("classification", "ner"):
        answers = answer_texts(data, kind)
        last = answers[-1].strip() if answers else ""
        if not last:
            return "empty_answer", "the (last) answer is empty"
        if len(last) < opts.min_answer_chars:
            return "short_answer", f"answer has {len(last)} characters (< {opts.min_answer_chars}): {last!r}"
        if opts.drop_no_answer and len(answers) == 1 and is_no_answer(last):
            return "no_answer", f"single-turn dialogue whose answer says nothing: {last!r}"
    garbled = is_garbled(text, opts.min_text_ratio)
    if garbled:
        return "garbled", garbled
    if opts.max_chars and len(text) > opts.max_chars:
        return "overlong", f"{len(text)} characters (> {opts.max_chars})"
    return None


def process_record(item: tuple[dict, str]) -> dict:
    """Edit and check one record: {data, kind, changed, reject, key, sig}. Pure, so it parallelises."""
    data, forced_kind = item
    opts, terms = _OPTS, _TERMS
    try:
        kind = detect_kind(data) if forced_kind == "auto" else forced_kind
    except DataError as e:
        partial = missing_for_partial(data)
        return {"data": data, "reject": ("missing_field", partial) if partial else ("unknown_format", str(e))}
    missing = required_fields(kind, data)
    if missing:
        return {"data": data, "reject": ("missing_field", f"missing field(s) {', '.join(missing)} for a {kind} record")}
    data, changed = _edit(data, opts, terms)
    text = content_text(data, kind)
    bad = _quality(data, kind, text, opts)
    if bad:
        return {"data": data, "kind": kind, "changed": changed, "reject": bad}
    sig = minhash_values(text, opts.ngram, opts.num_perm, opts.seed) if opts.near_dedup else None
    return {"data": data, "kind": kind, "changed": changed, "reject": None, "key": exact_key(text), "sig": sig}


# --------------------------------------------------------------------------------------------
# The streaming driver
# --------------------------------------------------------------------------------------------

def clean_file(in_path: str | Path, out_path: str | Path, opts: CleanOptions | None = None,
               show_progress: bool = True, log=print) -> dict:
    opts = opts or CleanOptions()
    t0 = time.time()
    out_path = Path(out_path)
    rej_path = rejects_path_for(out_path)
    terms = load_term_dict(opts.terms) if opts.terms else None
    _init_worker(opts.model_dump_json(), terms)
    out_path.parent.mkdir(parents=True, exist_ok=True)

    read_errors: list[dict] = []
    stats = Counter()
    rejected = Counter()
    changed = Counter()
    kinds = Counter()
    first_seen: dict[bytes, str] = {}
    near = NearDupIndex(opts.near_threshold, opts.num_perm, opts.seed) if opts.near_dedup else None

    def items():
        for rec in read_records(in_path, on_error="collect", errors=read_errors):
            yield rec, (rec.data, opts.kind)

    opener = gzip.open if out_path.suffix == ".gz" else open  # big outputs can be compressed: OUT.jsonl.gz
    with opener(out_path, "wt", encoding="utf-8") as fout, open(rej_path, "w", encoding="utf-8") as frej, \
            record_progress(f"clean {Path(in_path).name}", show_progress) as advance:

        def reject(rule: str, reason: str, source: str, line: int, data, **extra):
            rejected[rule] += 1
            frej.write(json.dumps({"rule": rule, "reason": reason, "source": source, "line": line, **extra,
                                   "record": data}, ensure_ascii=False) + "\n")

        def flush_read_errors():
            while read_errors:
                e = read_errors.pop(0)
                stats["read"] += 1
                reject("read_error", e["reason"], e["source"], e["line"], e.get("raw"))
                advance()

        pool = None
        stream = items()
        if opts.workers > 1:
            # batches keep memory bounded (Pool.imap would read the whole input ahead)
            pool = mp.get_context("fork").Pool(opts.workers, initializer=_init_worker,
                                               initargs=(opts.model_dump_json(), terms))

            def batched():
                while True:
                    batch = list(itertools.islice(stream, 2048))
                    if not batch:
                        return
                    results = pool.map(process_record, [it for _, it in batch], chunksize=64)
                    yield from zip((rec for rec, _ in batch), results)

            pairs = batched()
        else:
            pairs = ((rec, process_record(item)) for rec, item in stream)
        try:
            for rec, r in pairs:
                flush_read_errors()
                stats["read"] += 1
                advance()
                where = f"{rec.source}:{rec.line}"
                for c in r.get("changed", ()):
                    changed[c] += 1
                if r["reject"]:
                    reject(*r["reject"], rec.source, rec.line, r["data"])
                    continue
                if opts.exact_dedup:
                    prev = first_seen.get(r["key"])
                    if prev is not None:
                        reject("exact_duplicate", f"same content as {prev}", rec.source, rec.line, r["data"],
                               duplicate_of=prev)
                        continue
                    first_seen[r["key"]] = where
                if near is not None and r["sig"] is not None:
                    match = near.check_add(where, r["sig"])
                    if match is not None:
                        reject("near_duplicate", f"~{match[1]:.2f} similar to {match[0]}", rec.source, rec.line,
                               r["data"], duplicate_of=match[0], similarity=round(match[1], 3))
                        continue
                kinds[r["kind"]] += 1
                stats["kept"] += 1
                fout.write(json.dumps(r["data"], ensure_ascii=False) + "\n")
            flush_read_errors()
        finally:
            if pool is not None:
                pool.close()
                pool.join()

    n_rej = sum(rejected.values())
    secs = time.time() - t0
    summary = {
        "input": str(in_path), "output": str(out_path), "rejects": str(rej_path),
        "read": stats["read"], "kept": stats["kept"], "rejected": n_rej,
        "kept_plus_rejected_equals_read": stats["kept"] + n_rej == stats["read"],
        "rejected_by_rule": dict(rejected.most_common()), "changed_by_rule": dict(changed.most_common()),
        "kinds": dict(kinds), "options": opts.model_dump(), "seconds": round(secs, 2),
        "records_per_s": round(stats["read"] / secs, 1) if secs > 0 else None,
    }
    if not summary["kept_plus_rejected_equals_read"]:  # a bug, never a user error: say it loudly
        raise RuntimeError(f"clean lost records: kept {stats['kept']} + rejected {n_rej} != read {stats['read']}")
    summary_path_for(out_path).write_text(json.dumps(summary, indent=2, ensure_ascii=False), encoding="utf-8")
    return summary
