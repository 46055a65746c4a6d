"""Prompt datasets with verifiable answers, for reinforcement learning from rewards (GRPO).

Any SFT-format record works as it is: its conversation up to the last assistant turn is the
prompt and that turn is the `reference` (GSM8K's `{"question", "answer"}` is a qa record whose
answer ends `#### 72`; a CMMLU row is an mcq record whose reference is the letter). A record with
only a prompt is a prompt without a reference: a prompt string (`prompt`, `question`, `problem`, ...),
trl's conversational prompt (`{"prompt": [{"role": "user", ...}]}`), or a conversation that ends with
the user's turn; its other fields (`solution`, `answer`) still reach the rewards as columns. The
record's own scalar fields travel along
as columns, so reward functions receive them by name (TRL's convention: `answer=[...]`,
`Answer=[...]`, ...). Hold-out and accounting are the loaders' common ones.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from .formats import QA_PROMPT_KEYS, detect, get_format, text, to_messages
from .holdout import cap_eval_file, holdout
from .io import DataError, Record, read_records

# names trl passes to reward functions itself: a record field of that name cannot travel as a column
RESERVED = ("prompt", "completion", "completion_ids", "prompts", "completions", "trainer_state", "log_extra",
            "log_metric", "environments")


@dataclass
class PromptItem:
    prompt: list[dict]       # chat messages ending before the assistant's turn
    reference: str | None    # the record's own answer (last assistant turn), when it has one
    columns: dict            # the record's scalar fields, passed to reward functions by name
    where: str               # file name:line, for display
    source: str = ""         # the file as read (rejects.jsonl names it, as every loader's rejects do)


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


PROMPT_KEYS = ("prompt", *QA_PROMPT_KEYS, "problem")  # a prompt alone (`problem`: MATH, NuminaMath)
_ROLES = ("system", "user", "assistant", "tool")


def _chat_prompt(v) -> list[dict] | None:
    """A list of {"role", "content"} messages ending with a non-empty user turn (trl's conversational prompt)."""
    if not (isinstance(v, list) and v and all(isinstance(m, dict) and m.get("role") in _ROLES
                                               and isinstance(m.get("content"), str) for m in v)):
        return None
    msgs = [{"role": m["role"], "content": m["content"]} for m in v]
    return msgs if msgs[-1]["role"] == "user" and msgs[-1]["content"].strip() else None


def _prompt_alone(d: dict, strings: bool) -> list[dict] | None:
    """The prompt of a record that has no answer to split off: a chat prompt under `prompt`/`messages`, or
    (strings: the record is in no SFT format) a prompt string under one of PROMPT_KEYS."""
    for k in ("prompt", "messages"):
        msgs = _chat_prompt(d.get(k))
        if msgs:
            return msgs
    if strings:
        pk = next((k for k in PROMPT_KEYS if isinstance(d.get(k), str) and d[k].strip()), None)
        if pk is not None:
            return [{"role": "user", "content": d[pk]}]
    return None


def to_prompt(rec: Record, fmt: str = "auto", system_prompt: str | None = None) -> PromptItem:
    d = rec.data
    where = f"{Path(rec.source).name}:{rec.line}"

    def alone(strings: bool, error: DataError) -> PromptItem:
        msgs = _prompt_alone(d, strings)
        if msgs is None:
            raise error
        if system_prompt and not any(m["role"] == "system" for m in msgs):
            msgs.insert(0, {"role": "system", "content": system_prompt})
        ref = next((str(d[k]) for k in ("reference", "solution", "answer") if isinstance(d.get(k), (str, int, float))
                    and not isinstance(d.get(k), bool) and str(d[k]).strip()), None)  # open-r1's `solution`
        return PromptItem(msgs, ref, _columns(d), where, str(rec.source))

    try:
        f = detect(d, "sft") if fmt == "auto" else get_format(fmt, "sft")
    except DataError as e:
        return alone(True, e)
    try:
        msgs = to_messages(rec, f.name, system_prompt)
    except DataError as e:
        return alone(False, e)  # a conversation that ends with the user's turn is a prompt to answer
    k = max(i for i, m in enumerate(msgs) if m["role"] == "assistant")
    prompt, ref = msgs[:k], msgs[k]
    if not any(m["role"] == "user" and m["content"].strip() for m in prompt):
        raise DataError(f"{rec.where}: no user turn before the answer")
    return PromptItem(prompt, text(ref.get("content")), _columns(d), where, str(rec.source))


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
