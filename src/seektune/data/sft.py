"""Build tokenised SFT datasets: records -> chat messages -> token ids with assistant-only labels.

Tokenised data is cached on disk, keyed by the data file's hash, the tokenizer, the template and
every option that changes the tokens, so a second launch skips tokenisation entirely.
Records that cannot be used go to a rejects file with their source line and the reason.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
from dataclasses import dataclass, field
from pathlib import Path

from ..utils.paths import cache_dir
from .formats import detect_format, to_messages
from .io import DataError, Record, read_records, write_jsonl
from .templates import ChatTemplate, template_fingerprint

IGNORE = -100
CACHE_VERSION = "sft-v1"


def tokenize_conversation(messages, template: ChatTemplate, tokenizer, max_length: int) -> dict:
    """Token ids and labels (-100 outside assistant spans), truncated on the right to max_length."""
    r = template.render(messages)
    enc = tokenizer(r.text, add_special_tokens=False, return_offsets_mapping=True)
    ids, offsets = enc["input_ids"], enc["offset_mapping"]
    labels = [IGNORE] * len(ids)
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


def _file_digest(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


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
            f = fmt if fmt != "auto" else detect_format(rec.data)
            out.append((rec, to_messages(rec, f, system_prompt)))
        except DataError as e:
            rejects.append({"source": rec.source, "line": rec.line, "reason": str(e).split(": ", 1)[-1]})
    return out


def _train_only(conv) -> set[int]:
    """Indices that must not be held out: augmented/upsampled copies and the sources of augmented copies."""
    synthetic = {i for i, (rec, _) in enumerate(conv) if "_augmented" in rec.data or "_upsampled" in rec.data}
    if not synthetic:
        return set()
    from .dedup import exact_key
    from .views import content_text, detect_kind

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
                   log=print) -> SFTData:
    """Read, convert, split (when no eval file), tokenise, and cache."""
    if not data_cfg.train:
        raise DataError("data.train is not set: give a training file")
    key_parts = [CACHE_VERSION, _file_digest(data_cfg.train), data_cfg.eval and _file_digest(data_cfg.eval),
                 tokenizer_fingerprint(tokenizer), template_fingerprint(template), data_cfg.max_length,
                 data_cfg.format, data_cfg.system_prompt, data_cfg.eval_ratio, data_cfg.max_eval_samples,
                 data_cfg.max_samples, seed]
    key = hashlib.sha256(json.dumps(key_parts, default=str).encode()).hexdigest()[:20]
    cpath = cache_dir("tokenized") / f"{key}.json"
    if data_cfg.cache and cpath.exists():
        cached = json.loads(cpath.read_text())
        cached["stats"]["cache"] = f"hit ({cpath})"
        log(f"tokenised data: cache hit ({cpath.name}), skipping tokenisation")
        if rejects_path is not None and cached.get("rejects"):
            write_jsonl(rejects_path, cached["rejects"])
        return SFTData(cached["train"], cached["eval"], cached["stats"])

    rejects: list[dict] = []
    read_errors: list[dict] = []
    train_recs = list(read_records(data_cfg.train, on_error="collect", errors=read_errors))
    n_read = len(train_recs) + len(read_errors)
    if data_cfg.max_samples:
        train_recs = train_recs[: data_cfg.max_samples]
    rejects.extend(read_errors)
    train_conv = _convert(train_recs, data_cfg.format, data_cfg.system_prompt, rejects)
    if data_cfg.eval:
        eval_errors: list[dict] = []
        eval_recs = list(read_records(data_cfg.eval, on_error="collect", errors=eval_errors))
        rejects.extend(eval_errors)
        eval_conv = _convert(eval_recs, data_cfg.format, data_cfg.system_prompt, rejects)
    else:
        rng = random.Random(seed)
        idx = list(range(len(train_conv)))
        rng.shuffle(idx)
        n_eval = int(round(len(idx) * data_cfg.eval_ratio)) if data_cfg.eval_ratio > 0 else 0
        if data_cfg.eval_ratio > 0 and len(idx) >= 4:
            n_eval = max(1, n_eval)
        # copies made by `seektune data augment/balance`, and the records they were made from, stay in train
        keep = _train_only(train_conv)
        if keep:
            idx = [i for i in idx if i not in keep]
            n_eval = min(n_eval, len(idx))
        eval_set = set(idx[:n_eval])
        eval_conv = [c for i, c in enumerate(train_conv) if i in eval_set]
        train_conv = [c for i, c in enumerate(train_conv) if i not in eval_set]
    if data_cfg.max_eval_samples:
        eval_conv = eval_conv[: data_cfg.max_eval_samples]

    def tok_all(conv, split):
        rows, n_trunc = [], 0
        for rec, msgs in conv:
            try:
                ex = tokenize_conversation(msgs, template, tokenizer, data_cfg.max_length)
            except Exception as e:  # template errors are per-record facts too
                rejects.append({"source": rec.source, "line": rec.line, "reason": f"template: {e}"})
                continue
            if not any(l != IGNORE for l in ex["labels"]):
                rejects.append({"source": rec.source, "line": rec.line,
                                "reason": f"no assistant tokens left within data.max_length={data_cfg.max_length}"})
                continue
            n_trunc += ex.pop("truncated")
            ex["where"] = f"{Path(rec.source).name}:{rec.line}"
            rows.append(ex)
        return rows, n_trunc

    train_rows, tr_trunc = tok_all(train_conv, "train")
    eval_rows, ev_trunc = tok_all(eval_conv, "eval")
    if not train_rows:
        raise DataError(f"{data_cfg.train}: no usable training records ({len(rejects)} rejected"
                        + (f", see {rejects_path}" if rejects_path else "") + ")")
    stats = {
        "read": n_read, "train": len(train_rows), "eval": len(eval_rows), "rejected": len(rejects),
        "truncated": tr_trunc + ev_trunc,
        "train_tokens": sum(len(r["input_ids"]) for r in train_rows),
        "train_label_tokens": sum(sum(1 for l in r["labels"] if l != IGNORE) for r in train_rows),
        "cache": "miss",
    }
    if rejects_path is not None and rejects:
        write_jsonl(rejects_path, rejects)
    if data_cfg.cache:
        cpath.parent.mkdir(parents=True, exist_ok=True)
        tmp = cpath.with_suffix(f".tmp{os.getpid()}")  # several ranks may write the same cache entry
        tmp.write_text(json.dumps({"train": train_rows, "eval": eval_rows, "stats": stats, "rejects": rejects}))
        tmp.replace(cpath)
    return SFTData(train_rows, eval_rows, stats)


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
        lab[0] = IGNORE
        labels += lab
        pos += list(range(len(r["input_ids"])))
    return {"input_ids": ids, "labels": labels, "position_ids": pos, "num_samples": len(samples)}
