"""Eval sets for generation: each record becomes (prompt messages, reference answer, where).

The reference is the last assistant turn; the prompt is everything before it (system prompt and
earlier turns included), so a multi-turn record is evaluated on its final answer in context.
Records that cannot be used are returned as rejects with file:line and reason, never dropped silently.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from pathlib import Path

from ..data.formats import detect_format, to_messages
from ..data.io import DataError, read_records


@dataclass
class EvalItem:
    prompt: list[dict]
    reference: str
    where: str

    @property
    def conversation(self) -> list[dict]:
        return self.prompt + [{"role": "assistant", "content": self.reference}]

    @property
    def question(self) -> str:
        users = [m["content"] for m in self.prompt if m["role"] == "user"]
        return users[-1] if users else ""


@dataclass
class EvalSet:
    items: list[EvalItem]
    source: str
    read: int
    rejects: list[dict]

    def summary(self) -> str:
        return f"{self.source}: {len(self.items)} records used of {self.read} read, {len(self.rejects)} rejected"


def _split(msgs: list[dict]) -> tuple[list[dict], str]:
    k = max(i for i, m in enumerate(msgs) if m["role"] == "assistant")
    return msgs[:k], msgs[k]["content"]


def load_eval_set(path: str, fmt: str = "auto", system_prompt: str | None = None, limit: int | None = None,
                  seed: int | None = None, only: set[str] | None = None) -> EvalSet:
    """Read an SFT-format file as an eval set.

    limit: keep N records (the first N, or a seeded random N when seed is given, so a general set is
    sampled evenly, not only its first topic). only: keep records whose `name:line` is in this set
    (used to take exactly the training run's held-out split).
    """
    if not Path(path).exists():
        raise DataError(f"eval data file not found: {path}")
    errors: list[dict] = []
    recs = list(read_records(path, on_error="collect", errors=errors))
    read = len(recs) + len(errors)
    rejects = list(errors)
    if only is not None:
        recs = [r for r in recs if f"{Path(r.source).name}:{r.line}" in only]
    items: list[EvalItem] = []
    for rec in recs:
        try:
            f = fmt if fmt != "auto" else detect_format(rec.data)
            prompt, ref = _split(to_messages(rec, f, system_prompt))
        except DataError as e:
            rejects.append({"source": rec.source, "line": rec.line, "reason": str(e).split(": ", 1)[-1]})
            continue
        if not ref.strip() or not any(m["role"] == "user" for m in prompt):
            rejects.append({"source": rec.source, "line": rec.line, "reason": "no user prompt or empty reference"})
            continue
        items.append(EvalItem(prompt, ref, f"{Path(rec.source).name}:{rec.line}"))
    if limit is not None and len(items) > limit:
        if seed is not None:
            keep = sorted(random.Random(seed).sample(range(len(items)), limit))
            items = [items[i] for i in keep]
        else:
            items = items[:limit]
    if not items:
        raise DataError(f"{path}: no usable eval records ({len(rejects)} rejected)")
    return EvalSet(items, str(path), read, rejects)


def heldout_eval_set(data_cfg, eval_rows: list[dict], limit: int | None = None) -> EvalSet:
    """The training run's own held-out records (from data.eval or the eval_ratio split), as an EvalSet."""
    path = data_cfg.eval or data_cfg.train
    wanted = {r["where"] for r in eval_rows if "where" in r}
    return load_eval_set(path, data_cfg.format, data_cfg.system_prompt, limit=limit, only=wanted)
