"""Preference pairs: read the common on-disk forms into one shape, render them with a chat template.

Forms (detected per file from the first record, or set with align.format):
- pairs:    `prompt` (string or messages), `chosen`, `rejected` (strings); optional `system`
- sharegpt: `conversations` (from/value turns) + `chosen` + `rejected` ({from, value} messages or
            strings), as LLaMA-Factory's dpo_{en,zh}_demo.json
- hh:       `chosen` / `rejected` full transcripts "\\n\\nHuman: ...\\n\\nAssistant: ..." (Anthropic
            hh-rlhf); the shared dialogue is split off at the last "\\n\\nAssistant:"

Every pair becomes (prompt messages, chosen text, rejected text). Pairs that cannot teach anything
(empty side, identical sides, no user turn) go to the rejects list with file:line and a reason.
"""

from __future__ import annotations

import random
import re
from dataclasses import dataclass, field
from pathlib import Path

from .formats import _SHAREGPT_ROLES, _text
from .io import DataError, Record, read_records

PREFERENCE_FORMATS = ("pairs", "sharegpt", "hh")
_HH_TURN = re.compile(r"\n\n(Human|Assistant):[ ]?")


@dataclass
class Pair:
    prompt: list[dict[str, str]]  # chat messages ending with a user turn
    chosen: str
    rejected: str
    where: str = ""


@dataclass
class RenderedPair:
    prompt: str  # template text up to and including the generation prompt
    chosen: str  # completion text (with the template's end-of-turn)
    rejected: str
    where: str = ""


@dataclass
class PreferenceData:
    train: list[Pair]
    eval: list[Pair]
    rejects: list[dict] = field(default_factory=list)
    read: int = 0

    @property
    def stats(self) -> dict:
        return {"read": self.read, "train": len(self.train), "eval": len(self.eval), "rejected": len(self.rejects)}


def detect_preference_format(d: dict) -> str:
    keys = set(d)
    if "conversations" in keys and {"chosen", "rejected"} <= keys:
        return "sharegpt"
    if {"prompt", "chosen", "rejected"} <= keys:
        return "pairs"
    if {"chosen", "rejected"} <= keys and isinstance(d["chosen"], str) and "\n\nAssistant:" in d["chosen"]:
        return "hh"
    raise DataError(f"cannot tell the preference format from the fields {sorted(keys)}; expected prompt/chosen/"
                    "rejected, ShareGPT conversations + chosen/rejected, or hh-rlhf chosen/rejected transcripts; "
                    "or set align.format")


def split_hh(transcript: str) -> tuple[list[dict[str, str]], str]:
    """"\\n\\nHuman: a\\n\\nAssistant: b ..." -> (messages before the last assistant turn, last reply)."""
    parts = _HH_TURN.split(transcript)
    # parts = [lead, 'Human', text, 'Assistant', text, ...]
    if len(parts) < 3 or parts[-2] != "Assistant":
        raise ValueError("transcript does not end with an Assistant turn")
    msgs = []
    for who, text in zip(parts[1:-2:2], parts[2:-2:2]):
        msgs.append({"role": "user" if who == "Human" else "assistant", "content": text.strip()})
    return msgs, parts[-1].strip()


def _side(v) -> str:
    if isinstance(v, dict):
        return _text(v.get("value", v.get("content")))
    if isinstance(v, list):  # a list of messages: the last one is the response
        return _side(v[-1]) if v else ""
    return _text(v)


def to_pair(rec: Record, fmt: str, system_prompt: str | None = None) -> Pair:
    """One record -> Pair; raise ValueError with the reason when it is not a usable pair."""
    d = rec.data
    if fmt == "hh":
        c_prompt, chosen = split_hh(_text(d.get("chosen")))
        r_prompt, rejected = split_hh(_text(d.get("rejected")))
        if c_prompt != r_prompt:
            raise ValueError("chosen and rejected transcripts differ before their last Assistant turn")
        prompt = c_prompt
    elif fmt == "sharegpt":
        prompt = []
        if d.get("system"):
            prompt.append({"role": "system", "content": _text(d["system"])})
        for turn in d.get("conversations") or []:
            role = _SHAREGPT_ROLES.get(str(turn.get("from", turn.get("role", ""))).lower()) if isinstance(turn, dict) else None
            if role is None:
                raise ValueError(f"unknown speaker in conversations: {turn!r:.80}")
            prompt.append({"role": role, "content": _text(turn.get("value", turn.get("content")))})
        chosen, rejected = _side(d.get("chosen")), _side(d.get("rejected"))
    elif fmt == "pairs":
        p = d.get("prompt")
        if isinstance(p, list):
            prompt = [{"role": str(m.get("role")), "content": _text(m.get("content"))} for m in p]
        else:
            prompt = [{"role": "user", "content": _text(p)}]
        if d.get("system"):
            prompt.insert(0, {"role": "system", "content": _text(d["system"])})
        chosen, rejected = _side(d.get("chosen")), _side(d.get("rejected"))
    else:
        raise DataError(f"align.format: unknown preference format '{fmt}' (expected {', '.join(PREFERENCE_FORMATS)})")
    if system_prompt and not any(m["role"] == "system" for m in prompt):
        prompt.insert(0, {"role": "system", "content": system_prompt})
    if not any(m["role"] == "user" and m["content"].strip() for m in prompt):
        raise ValueError("no user turn in the prompt")
    if prompt[-1]["role"] == "assistant":
        raise ValueError("the prompt ends with an assistant turn (nothing to answer)")
    if not chosen.strip() or not rejected.strip():
        raise ValueError("empty " + ("chosen" if not chosen.strip() else "rejected") + " response")
    if chosen.strip() == rejected.strip():
        raise ValueError("chosen and rejected are identical")
    return Pair(prompt, chosen.strip(), rejected.strip(), rec.where)


def read_pairs(path: str | Path, fmt: str = "auto", system_prompt: str | None = None,
               rejects: list | None = None, limit: int | None = None) -> tuple[list[Pair], int]:
    """All usable pairs of a file, and how many records were read; the rest land in `rejects`."""
    rejects = rejects if rejects is not None else []
    pairs, read = [], 0
    for rec in read_records(path, on_error="collect", errors=rejects):
        read += 1
        if fmt == "auto":
            fmt = detect_preference_format(rec.data)
        try:
            pairs.append(to_pair(rec, fmt, system_prompt))
        except (ValueError, AttributeError, TypeError) as e:
            if isinstance(e, DataError):
                raise
            rejects.append({"source": rec.source, "line": rec.line, "reason": str(e)})
        if limit and len(pairs) >= limit:
            break
    if not pairs:
        raise DataError(f"{path}: no usable preference pairs ({len(rejects)} rejected)")
    return pairs, read


def load_preference_data(data_cfg, align_cfg, seed: int) -> PreferenceData:
    """data.train (+ data.eval, or a seeded eval_ratio hold-out of data.train) as pairs."""
    if not data_cfg.train:
        raise DataError("data.train is not set: give a preference file (prompt/chosen/rejected, ShareGPT, hh-rlhf)")
    rejects: list[dict] = []
    train, read = read_pairs(data_cfg.train, align_cfg.format, data_cfg.system_prompt, rejects, data_cfg.max_samples)
    if data_cfg.eval:
        ev, n = read_pairs(data_cfg.eval, align_cfg.format, data_cfg.system_prompt, rejects)
        read += n
    else:
        order = list(range(len(train)))
        random.Random(seed).shuffle(order)
        k = int(round(len(train) * data_cfg.eval_ratio))
        held = set(order[:k])
        ev = [train[i] for i in sorted(held)]
        train = [p for i, p in enumerate(train) if i not in held]
    if not train:
        raise DataError(f"{data_cfg.train}: no training pairs left after the eval hold-out")
    return PreferenceData(train, ev, rejects, read)


def render_pair(pair: Pair, template) -> RenderedPair:
    """Prompt text with the generation prompt, and each response as the text the template appends."""
    prompt = template.prompt(pair.prompt)
    out = []
    for resp in (pair.chosen, pair.rejected):
        full = template.render(pair.prompt + [{"role": "assistant", "content": resp}]).text
        if not full.startswith(prompt):
            raise DataError(f"{pair.where}: the chat template renders the prompt differently once a reply follows; "
                            "set data.template to a built-in (deepseek-v3, deepseek-r1, chatml)")
        completion = full[len(prompt):]
        span_end = template.render(pair.prompt + [{"role": "assistant", "content": resp}]).spans[-1][1] - len(prompt)
        out.append(completion[:span_end] if span_end > 0 else completion)  # drop whitespace after end-of-turn
    return RenderedPair(prompt, out[0], out[1], pair.where)


def truncate_pairs(pairs: list[RenderedPair], tok, max_length: int, max_prompt: int) -> tuple[list[RenderedPair], list[dict]]:
    """Keep pairs whose prompt fits `max_prompt` tokens and prompt+response fits `max_length`; report the rest."""
    kept, dropped = [], []
    for p in pairs:
        n_p = len(tok(p.prompt, add_special_tokens=False)["input_ids"])
        n_r = max(len(tok(p.chosen, add_special_tokens=False)["input_ids"]),
                  len(tok(p.rejected, add_special_tokens=False)["input_ids"]))
        if n_p > max_prompt:
            dropped.append({"where": p.where, "reason": f"prompt has {n_p} tokens > align.max_prompt_length={max_prompt}"})
        elif n_p + n_r > max_length:
            dropped.append({"where": p.where, "reason": f"prompt+response has {n_p + n_r} tokens > data.max_length={max_length}"})
        else:
            kept.append(p)
    return kept, dropped
