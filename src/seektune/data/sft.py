"""Build tokenised SFT datasets: records -> chat messages -> token ids with assistant-only labels.

Tokenised data is cached on disk, keyed by the data file's hash, the tokenizer, the template and
every option that changes the tokens, so a second launch skips tokenisation entirely; a damaged
entry is detected by its checksum and rebuilt (data/cache.py).
Every record is accounted for: `read = train + eval + rejected (+ beyond data.max_samples)` for the
training file, `read = evaluated + unused + rejected` for an eval file; rejects go to the run's
rejects file with their source line and the reason, unused eval records to unused_eval.jsonl.
"""

from __future__ import annotations

import hashlib
import json
import random
from dataclasses import dataclass, field
from pathlib import Path

from ..utils.digest import file_sha256
from ..utils.paths import cache_dir
from . import IGNORE_INDEX
from .cache import read_cache, write_cache
from .formats import to_messages
from .holdout import cap_eval_file, holdout
from .io import DataError, Record, read_records, write_jsonl
from .templates import ChatTemplate, template_fingerprint

CACHE_VERSION = "sft-v3"  # v3: checksummed entries (data/cache.py)


def tokenize_conversation(messages, template: ChatTemplate, tokenizer, max_length: int) -> dict:
    """Token ids and labels (-100 outside assistant spans), truncated on the right to max_length."""
    r = template.render(messages)
    enc = tokenizer(r.text, add_special_tokens=False, return_offsets_mapping=True)
    ids, offsets = enc["input_ids"], enc["offset_mapping"]
    labels = [IGNORE_INDEX] * len(ids)
    si = 0
    spans = r.spans
    for t, (s, _e) in enumerate(offsets):
        while si < len(spans) and s >= spans[si][1]:
            si += 1
        if si < len(spans) and spans[si][0] <= s < spans[si][1]:
            labels[t] = ids[t]
    truncated = len(ids) > max_length
    ids, labels = ids[:max_length], labels[:max_length]
    return {"input_ids": ids, "labels": labels, "truncated": truncated}


@dataclass
class SFTData:
    train: list[dict]
    eval: list[dict]
    stats: dict = field(default_factory=dict)


def tokenizer_fingerprint(tokenizer) -> str:
    h = hashlib.sha256()
    backend = getattr(tokenizer, "backend_tokenizer", None) or getattr(tokenizer, "_tokenizer", None)
    if backend is not None and hasattr(backend, "to_str"):
        h.update(backend.to_str().encode())
    else:
        h.update(str(sorted(tokenizer.get_vocab().items())).encode())
    h.update(f"{tokenizer.pad_token_id}|{tokenizer.eos_token_id}|{tokenizer.bos_token_id}".encode())
    return h.hexdigest()[:16]


def _convert(records, fmt: str, system_prompt, rejects: list) -> list[tuple[Record, list]]:
    out = []
    for rec in records:
        try:
            out.append((rec, to_messages(rec, fmt, system_prompt)))
        except DataError as e:
            # drop the file:line prefix only (the reason itself may hold ": ")
            rejects.append({"source": rec.source, "line": rec.line, "reason": str(e).removeprefix(f"{rec.where}: ")})
    return out


def _train_only(conv) -> set[int]:
    """Indices that must not be held out: augmented/upsampled copies and the sources of augmented copies."""
    synthetic = {i for i, (rec, _) in enumerate(conv) if "_augmented" in rec.data or "_upsampled" in rec.data}
    if not synthetic:
        return set()
    from .dedup import exact_key
    from .formats import content_text, detect_kind

    sources = {str(conv[i][0].data["_augmented"].get("digest")) for i in synthetic
               if isinstance(conv[i][0].data.get("_augmented"), dict)}
    for i, (rec, _) in enumerate(conv):
        if i not in synthetic and sources:
            try:
                if exact_key(content_text(rec.data, detect_kind(rec.data))).hex() in sources:
                    synthetic.add(i)
            except DataError:
                pass
    return synthetic


def build_sft_data(data_cfg, tokenizer, template: ChatTemplate, seed: int, rejects_path: Path | None = None,
                   log=print, unused_path: Path | None = None) -> SFTData:
    """Read, convert, hold out (when no eval file), tokenise, and cache; every record accounted for."""
    if not data_cfg.train:
        raise DataError("data.train is not set: give a training file")
    key_parts = [CACHE_VERSION, file_sha256(data_cfg.train), data_cfg.eval and file_sha256(data_cfg.eval),
                 tokenizer_fingerprint(tokenizer), template_fingerprint(template), data_cfg.max_length,
                 data_cfg.format, data_cfg.system_prompt, data_cfg.eval_ratio, data_cfg.max_eval_samples,
                 data_cfg.max_samples, seed]
    key = hashlib.sha256(json.dumps(key_parts, default=str).encode()).hexdigest()[:20]
    cpath = cache_dir("tokenized") / f"{key}.json"
    cached = read_cache(cpath, log) if data_cfg.cache else None
    if cached is not None:
        cached["stats"]["cache"] = f"hit ({cpath})"
        log(f"tokenised data: cache hit ({cpath.name}), skipping tokenisation")
        if rejects_path is not None and cached.get("rejects"):
            write_jsonl(rejects_path, cached["rejects"])
        if unused_path is not None and cached.get("unused"):
            write_jsonl(unused_path, cached["unused"])
        return SFTData(cached["train"], cached["eval"], cached["stats"])

    rejects: list[dict] = []
    read_errors: list[dict] = []
    train_recs = list(read_records(data_cfg.train, on_error="collect", errors=read_errors))
    n_read = len(train_recs) + len(read_errors)
    beyond = 0
    if data_cfg.max_samples and len(train_recs) > data_cfg.max_samples:
        beyond = len(train_recs) - data_cfg.max_samples
        train_recs = train_recs[: data_cfg.max_samples]
    rejects.extend(read_errors)
    train_conv = _convert(train_recs, data_cfg.format, data_cfg.system_prompt, rejects)
    n_train_rejected = len(rejects)
    unused: list[dict] = []
    eval_file = None
    capped = 0
    if data_cfg.eval:
        eval_errors: list[dict] = []
        eval_recs = list(read_records(data_cfg.eval, on_error="collect", errors=eval_errors))
        rejects.extend(eval_errors)
        eval_conv = _convert(eval_recs, data_cfg.format, data_cfg.system_prompt, rejects)
        cap = cap_eval_file(len(eval_conv), data_cfg.max_eval_samples, seed)
        unused = [{"source": eval_conv[i][0].source, "line": eval_conv[i][0].line,
                   "reason": f"beyond data.max_eval_samples={data_cfg.max_eval_samples}"} for i in cap.unused]
        eval_conv = [eval_conv[i] for i in cap.used]
        eval_file = {"path": str(data_cfg.eval), "read": len(eval_recs) + len(eval_errors),
                     "evaluated": len(eval_conv), "unused": len(unused), "rejected": len(rejects) - n_train_rejected}
    else:
        # copies made by `seektune data augment/balance`, and the records they were made from, stay in train
        h = holdout(len(train_conv), data_cfg.eval_ratio, seed, data_cfg.max_eval_samples, keep=_train_only(train_conv))
        capped = h.capped
        eval_conv = [train_conv[i] for i in h.eval]
        train_conv = [train_conv[i] for i in h.train]

    def tok_all(conv):
        rows, n_trunc = [], 0
        for rec, msgs in conv:
            try:
                ex = tokenize_conversation(msgs, template, tokenizer, data_cfg.max_length)
            except Exception as e:  # template errors are per-record facts too
                rejects.append({"source": rec.source, "line": rec.line, "reason": f"template: {e}"})
                continue
            if not any(lab != IGNORE_INDEX for lab in ex["labels"]):
                rejects.append({"source": rec.source, "line": rec.line,
                                "reason": f"no assistant tokens left within data.max_length={data_cfg.max_length}"})
                continue
            n_trunc += ex.pop("truncated")
            ex["where"] = f"{Path(rec.source).name}:{rec.line}"
            rows.append(ex)
        return rows, n_trunc

    before = len(rejects)
    train_rows, tr_trunc = tok_all(train_conv)
    rej_train_tok = len(rejects) - before
    before = len(rejects)
    eval_rows, ev_trunc = tok_all(eval_conv)
    rej_eval_tok = len(rejects) - before
    if not train_rows:
        raise DataError(f"{data_cfg.train}: no usable training records ({len(rejects)} rejected"
                        + (f", see {rejects_path}" if rejects_path else "") + ")")
    # rejects counted per file: a held-out record from the training file counts for that file
    rejected_train = n_train_rejected + rej_train_tok + (0 if eval_file else rej_eval_tok)
    if eval_file:
        eval_file["evaluated"] = len(eval_rows)
        eval_file["rejected"] += rej_eval_tok
    stats = {
        "read": n_read, "train": len(train_rows), "eval": len(eval_rows), "rejected": len(rejects),
        "rejected_train_file": rejected_train, "beyond_max_samples": beyond,
        "eval_capped_to_train": capped, "eval_file": eval_file,
        "truncated": tr_trunc + ev_trunc,
        "train_tokens": sum(len(r["input_ids"]) for r in train_rows),
        "train_label_tokens": sum(sum(1 for lab in r["labels"] if lab != IGNORE_INDEX) for r in train_rows),
        "cache": "miss",
    }
    stats["accounting"] = accounting_line(stats)
    if rejects_path is not None and rejects:
        write_jsonl(rejects_path, rejects)
    if unused_path is not None and unused:
        write_jsonl(unused_path, unused)
    if data_cfg.cache:
        write_cache(cpath, {"train": train_rows, "eval": eval_rows, "stats": stats, "rejects": rejects,
                            "unused": unused})
    return SFTData(train_rows, eval_rows, stats)


def accounting_line(s: dict) -> str:
    """`read 8658 = train 8458 + eval 200 + rejected 0` (and the eval file's own line): the identity
    every loader promises, printed so a reader can check it."""
    held = 0 if s.get("eval_file") else s["eval"]
    parts = [f"train {s['train']}"] + ([f"eval {held}"] if not s.get("eval_file") else []) + \
        [f"rejected {s['rejected_train_file']}"]
    if s.get("beyond_max_samples"):
        parts.append(f"beyond data.max_samples {s['beyond_max_samples']}")
    line = f"{s['read']} read = " + " + ".join(parts)
    ef = s.get("eval_file")
    if ef:
        line += (f"; eval file: {ef['read']} read = evaluated {ef['evaluated']} + unused {ef['unused']} "
                 f"+ rejected {ef['rejected']}")
    return line


# --------------------------------------------------------------------------------------------
# Packing
# --------------------------------------------------------------------------------------------

def pack_examples(rows: list[dict], max_length: int, seed: int = 0) -> list[dict]:
    """Greedy first-fit-decreasing packing into rows of at most max_length tokens.

    Each packed row carries `position_ids` that restart at 0 for every sample: transformers then
    builds a block-diagonal causal mask, so attention never crosses samples. The first label of
    every sample is masked so no token is trained to follow the previous sample.
    """
    order = sorted(range(len(rows)), key=lambda i: -len(rows[i]["input_ids"]))
    bins: list[list[int]] = []
    space: list[int] = []
    for i in order:
        n = len(rows[i]["input_ids"])
        for b, free in enumerate(space):
            if n <= free:
                bins[b].append(i)
                space[b] -= n
                break
        else:
            bins.append([i])
            space.append(max_length - n)
    rng = random.Random(seed)
    rng.shuffle(bins)
    return [packed_row([rows[i] for i in b]) for b in bins]


def packed_row(samples: list[dict]) -> dict:
    """One packed row: samples concatenated, positions restarting at 0 per sample (so attention never
    crosses samples), and each sample's first label masked (no token learns to follow another sample)."""
    ids, labels, pos = [], [], []
    for r in samples:
        ids += r["input_ids"]
        lab = list(r["labels"])
        lab[0] = IGNORE_INDEX
        labels += lab
        pos += list(range(len(r["input_ids"])))
    return {"input_ids": ids, "labels": labels, "position_ids": pos, "num_samples": len(samples)}
