"""`seektune data curriculum`: order training records from easy to hard.

Difficulty is the content length (characters, or tokens when a model/tokenizer is given) or the
mean loss of a reference causal LM on the answer tokens. Pacing `sorted` writes records strictly
easy -> hard; `buckets` cuts the order into `stages` equal buckets and shuffles within each (seeded),
which keeps batches varied while the difficulty still rises stage by stage. Each record gets a
`_difficulty` field. To train in this order set `data.curriculum: true` (the trainer then uses a
sequential sampler and order-preserving packing; see `pack_in_order`).
"""

from __future__ import annotations

import random
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from .common import kind_of, read_all, write_records, write_summary
from .formats import detect_format, to_messages
from .io import DataError
from .progress import record_progress
from . import IGNORE_INDEX
from .sft import packed_row
from .formats import content_text


class CurriculumOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")
    by: Literal["length", "loss"] = "length"
    model: str | None = Field(None, description="reference model for `loss`; tokenizer for token lengths")
    pacing: Literal["sorted", "buckets"] = "buckets"
    stages: int = Field(4, ge=1, description="buckets for pacing=buckets")
    max_length: int = Field(512, ge=8, description="tokens per record when scoring by loss")
    batch_size: int = Field(8, ge=1)
    seed: int = 42
    kind: str = "auto"


def length_scores(records, opts: CurriculumOptions, tokenizer=None) -> list[float]:
    texts = [content_text(r.data, kind_of(r, opts.kind)) for r in records]
    if tokenizer is None:
        return [float(len(t)) for t in texts]
    return [float(len(x)) for x in tokenizer(texts, add_special_tokens=False)["input_ids"]]


def loss_scores(records, model, tokenizer, opts: CurriculumOptions, show_progress: bool = True) -> list[float]:
    """Mean next-token loss of the reference model on each record's answer tokens (SFT records)."""
    import torch

    from .sft import tokenize_conversation
    from .templates import get_template

    template = get_template("auto", tokenizer)
    rows = []
    for r in records:
        try:
            msgs = to_messages(r, detect_format(r.data))
        except DataError as e:
            raise DataError(f"curriculum by loss needs SFT records: {e}") from None
        rows.append(tokenize_conversation(msgs, template, tokenizer, opts.max_length))
    scores: list[float] = []
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    model.eval()
    with record_progress("scoring by loss", show_progress, total=len(rows)) as advance, torch.no_grad():
        for b in range(0, len(rows), opts.batch_size):
            batch = rows[b:b + opts.batch_size]
            n = max(len(x["input_ids"]) for x in batch)
            ids = torch.tensor([x["input_ids"] + [pad] * (n - len(x["input_ids"])) for x in batch])
            lab = torch.tensor([x["labels"] + [IGNORE_INDEX] * (n - len(x["labels"])) for x in batch])
            att = torch.tensor([[1] * len(x["input_ids"]) + [0] * (n - len(x["input_ids"])) for x in batch])
            logits = model(input_ids=ids, attention_mask=att).logits[:, :-1].float()
            tgt = lab[:, 1:]
            ce = torch.nn.functional.cross_entropy(logits.transpose(1, 2), tgt, ignore_index=IGNORE_INDEX, reduction="none")
            mask = (tgt != IGNORE_INDEX).float()
            per = (ce * mask).sum(1) / mask.sum(1).clamp(min=1)
            scores += per.tolist()
            advance(len(batch))
    return scores


def order(scores: list[float], opts: CurriculumOptions) -> list[int]:
    """Indices easy -> hard (ties keep file order), shuffled within buckets when pacing=buckets."""
    idx = sorted(range(len(scores)), key=lambda i: (scores[i], i))
    if opts.pacing == "buckets" and opts.stages > 1:
        rng = random.Random(opts.seed)
        size = -(-len(idx) // opts.stages)
        out = []
        for s in range(0, len(idx), size):
            chunk = idx[s:s + size]
            rng.shuffle(chunk)
            out += chunk
        idx = out
    return idx


def pack_in_order(rows: list[dict], max_length: int) -> list[dict]:
    """Next-fit packing that keeps the sample order (for curricula); same row format as `pack_examples`."""
    packed, cur = [], []
    used = 0

    def flush():
        if cur:
            packed.append(packed_row(cur))

    for r in rows:
        n = len(r["input_ids"])
        if cur and used + n > max_length:
            flush()
            cur, used = [], 0
        cur.append(r)
        used += n
    flush()
    return packed


def curriculum_file(in_path, out_path, opts: CurriculumOptions | None = None, show_progress: bool = True,
                    log=print) -> dict:
    opts = opts or CurriculumOptions()
    records, rejects = read_all(in_path)
    if not records:
        raise DataError(f"{in_path}: no records")
    if opts.by == "loss":
        if not opts.model:
            raise DataError("curriculum by loss needs a reference model (--model preset or folder)")
        from ..models.loader import ModelSpec, load_model

        model, tok, _ = load_model(ModelSpec(name_or_path=opts.model), log=lambda *_: None)
        scores = loss_scores(records, model, tok, opts, show_progress)
    else:
        tok = None
        if opts.model:
            from ..models.loader import ModelSpec, load_tokenizer

            tok = load_tokenizer(ModelSpec(name_or_path=opts.model))
        scores = length_scores(records, opts, tok)
    idx = order(scores, opts)
    write_records(out_path, ({**records[i].data, "_difficulty": round(scores[i], 4)} for i in idx))
    stem = Path(out_path).with_suffix("")
    if rejects:
        write_records(f"{stem}.rejects.jsonl", rejects)
    q = sorted(scores)
    summary = {"input": str(in_path), "output": str(out_path), "read": len(records) + len(rejects),
               "rejected": len(rejects), "written": len(idx), "by": opts.by,
               "difficulty": {"min": q[0], "median": q[len(q) // 2], "max": q[-1]},
               "first_stage_mean": round(sum(scores[i] for i in idx[: max(1, len(idx) // opts.stages)])
                                         / max(1, len(idx) // opts.stages), 4),
               "last_stage_mean": round(sum(scores[i] for i in idx[-max(1, len(idx) // opts.stages):])
                                        / max(1, len(idx) // opts.stages), 4),
               "options": opts.model_dump()}
    write_summary(f"{stem}.summary.json", summary)
    return summary
