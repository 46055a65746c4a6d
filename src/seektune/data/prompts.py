"""Prompt datasets with verifiable answers, for reinforcement learning from rewards (GRPO).

Any SFT-format record works as it is: its conversation up to the last assistant turn is the
prompt and that turn is the `reference` (GSM8K's `{"question", "answer"}` is a qa record whose
answer ends `#### 72`; a CMMLU row is an mcq record whose reference is the letter). A record with
only a prompt field is a prompt without a reference. The record's own scalar fields travel along
as columns, so reward functions receive them by name (TRL's convention: `answer=[...]`,
`Answer=[...]`, ...). Hold-out and accounting are the loaders' common ones.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from .formats import QA_PROMPT_KEYS, detect, get_format, text, to_messages
from .holdout import cap_eval_file, holdout
from .io import DataError, Record, read_records

RESERVED = ("prompt", "completion", "completion_ids", "trainer_state", "log_extra", "log_metric")


@dataclass
class PromptItem:
    prompt: list[dict]       # chat messages ending before the assistant's turn
    reference: str | None    # the record's own answer (last assistant turn), when it has one
    columns: dict            # the record's scalar fields, passed to reward functions by name
    where: str


@dataclass
class PromptData:
    train: list[PromptItem]
    eval: list[PromptItem]
    rejects: list[dict] = field(default_factory=list)
    unused: list[dict] = field(default_factory=list)
    stats: dict = field(default_factory=dict)


def _columns(d: dict) -> dict:
    return {k: v for k, v in d.items() if isinstance(v, (str, int, float, bool)) and k not in RESERVED
            and not k.startswith("_") and k}


def to_prompt(rec: Record, fmt: str = "auto", system_prompt: str | None = None) -> PromptItem:
    d = rec.data
    try:
        f = detect(d, "sft") if fmt == "auto" else get_format(fmt, "sft")
    except DataError:
        pk = next((k for k in ("prompt", *QA_PROMPT_KEYS) if isinstance(d.get(k), str) and d[k].strip()), None)
        if pk is None:
            raise
        msgs = [{"role": "user", "content": d[pk]}]  # a prompt alone: rewards judge without a reference
        if system_prompt:
            msgs.insert(0, {"role": "system", "content": system_prompt})
        return PromptItem(msgs, None, _columns(d), f"{Path(rec.source).name}:{rec.line}")
    msgs = to_messages(rec, f.name, system_prompt)
    k = max(i for i, m in enumerate(msgs) if m["role"] == "assistant")
    prompt, ref = msgs[:k], msgs[k]
    if not any(m["role"] == "user" and m["content"].strip() for m in prompt):
        raise DataError(f"{rec.where}: no user turn before the answer")
    return PromptItem(prompt, text(ref.get("content")), _columns(d), f"{Path(rec.source).name}:{rec.line}")


def read_prompts(path: str, fmt: str, system_prompt: str | None, rejects: list,
                 limit: int | None = None) -> tuple[list[PromptItem], int]:
    items, read, errors = [], 0, []
    for rec in read_records(path, on_error="collect", errors=errors):
        read += 1
        try:
            items.append(to_prompt(rec, fmt, system_prompt))
        except DataError as e:
            rejects.append({"source": rec.source, "line": rec.line,
                            "reason": str(e).removeprefix(f"{rec.where}: ")})
        if limit and len(items) >= limit:
            break
    rejects.extend(errors)  # malformed lines: counted as read and rejected
    return items, read + len(errors)


def load_prompt_data(data_cfg, seed: int) -> PromptData:
    """data.train (+ data.eval, or the common hold-out of data.train) as prompts; every record counted."""
    if not data_cfg.train:
        raise DataError("data.train is not set: give a prompt file (any SFT format, e.g. GSM8K question/answer)")
    rejects: list[dict] = []
    train, read = read_prompts(data_cfg.train, data_cfg.format, data_cfg.system_prompt, rejects, data_cfg.max_samples)
    unused: list[dict] = []
    n_train_rej = len(rejects)
    if data_cfg.eval:
        ev, n = read_prompts(data_cfg.eval, data_cfg.format, data_cfg.system_prompt, rejects)
        read += n
        cap = cap_eval_file(len(ev), data_cfg.max_eval_samples, seed)
        unused = [{"source": str(data_cfg.eval), "line": int(ev[i].where.rsplit(":", 1)[1]),
                   "reason": f"beyond data.max_eval_samples={data_cfg.max_eval_samples}"} for i in cap.unused]
        ev = [ev[i] for i in cap.used]
    else:
        h = holdout(len(train), data_cfg.eval_ratio, seed, data_cfg.max_eval_samples)
        train, ev = [train[i] for i in h.train], [train[i] for i in h.eval]
    if not train:
        raise DataError(f"{data_cfg.train}: no usable prompts ({len(rejects)} rejected)")
    stats = {"read": read, "train": len(train), "eval": len(ev), "rejected": len(rejects),
             "rejected_train_file": n_train_rej, "unused_eval": len(unused),
             "with_reference": sum(1 for x in train + ev if x.reference is not None)}
    stats["accounting"] = (f"{read} read = train {len(train)} + eval {len(ev)} + rejected {len(rejects)}"
                           + (f" + unused eval {len(unused)}" if unused else ""))
    return PromptData(train, ev, rejects, unused, stats)
