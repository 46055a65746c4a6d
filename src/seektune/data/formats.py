"""Detect the shape of SFT records and turn each into a list of chat messages.

Supported: Alpaca (`instruction`/`input`/`output`, optional `system` and `history`), ShareGPT
(`conversations` of `from`/`value`), OpenAI `messages` (`role`/`content`) and plain
question/answer tables (`question|ask|prompt|query` + `answer|response|output|completion`, as in
CSV exports). Everything downstream sees one form: [{"role": ..., "content": ...}, ...].
"""

from __future__ import annotations

from typing import Any

from .io import DataError, Record

SFT_FORMATS = ("alpaca", "sharegpt", "messages", "qa")

_SHAREGPT_ROLES = {
    "human": "user", "user": "user", "gpt": "assistant", "assistant": "assistant", "bot": "assistant",
    "model": "assistant", "chatgpt": "assistant", "system": "system", "function_call": "assistant",
    "observation": "user", "tool": "user",
}
_QA_PROMPT_KEYS = ("question", "ask", "prompt", "query", "instruction", "input")
_QA_ANSWER_KEYS = ("answer", "response", "output", "completion", "reply")


def detect_format(sample: dict[str, Any]) -> str:
    """Guess the SFT format from one record's keys."""
    keys = set(sample)
    if "messages" in keys and isinstance(sample["messages"], list):
        return "messages"
    if "conversations" in keys and isinstance(sample["conversations"], list):
        return "sharegpt"
    if "instruction" in keys and "output" in keys:
        return "alpaca"
    if any(k in keys for k in _QA_PROMPT_KEYS) and any(k in keys for k in _QA_ANSWER_KEYS):
        return "qa"
    raise DataError(
        f"cannot tell the data format from the fields {sorted(keys)}; expected Alpaca "
        "(instruction/input/output), ShareGPT (conversations), OpenAI messages, or question/answer columns; "
        "or set data.format")


def _text(v: Any) -> str:
    if v is None:
        return ""
    if isinstance(v, str):
        return v
    if isinstance(v, list):  # OpenAI content parts
        return "".join(p.get("text", "") if isinstance(p, dict) else str(p) for p in v)
    return str(v)


def to_messages(rec: Record, fmt: str, system_prompt: str | None = None) -> list[dict[str, str]]:
    """Convert one record to chat messages; raise DataError (with file:line) when it cannot."""
    d = rec.data
    msgs: list[dict[str, str]] = []
    if fmt == "alpaca":
        if d.get("system"):
            msgs.append({"role": "system", "content": _text(d["system"])})
        for pair in d.get("history") or []:
            if isinstance(pair, (list, tuple)) and len(pair) == 2:
                msgs += [{"role": "user", "content": _text(pair[0])}, {"role": "assistant", "content": _text(pair[1])}]
        instr, inp = _text(d.get("instruction")).strip(), _text(d.get("input")).strip()
        prompt = f"{instr}\n{inp}" if instr and inp else (instr or inp)
        msgs += [{"role": "user", "content": prompt}, {"role": "assistant", "content": _text(d.get("output"))}]
    elif fmt == "sharegpt":
        if d.get("system"):
            msgs.append({"role": "system", "content": _text(d["system"])})
        for turn in d["conversations"]:
            if not isinstance(turn, dict):
                raise DataError(f"{rec.where}: each item of 'conversations' must be an object with from/value")
            who = str(turn.get("from", turn.get("role", ""))).lower()
            role = _SHAREGPT_ROLES.get(who)
            if role is None:
                raise DataError(f"{rec.where}: unknown speaker '{who}' in conversations (expected human/gpt/system)")
            msgs.append({"role": role, "content": _text(turn.get("value", turn.get("content")))})
    elif fmt == "messages":
        for turn in d["messages"]:
            if not isinstance(turn, dict) or "role" not in turn:
                raise DataError(f"{rec.where}: each message needs a 'role' and 'content'")
            m = {"role": str(turn["role"]), "content": _text(turn.get("content"))}
            if turn.get("reasoning_content"):
                m["reasoning_content"] = _text(turn["reasoning_content"])
            msgs.append(m)
    elif fmt == "qa":
        pk = next((k for k in _QA_PROMPT_KEYS if k in d), None)
        ak = next((k for k in _QA_ANSWER_KEYS if k in d), None)
        if pk is None or ak is None:
            raise DataError(f"{rec.where}: missing question/answer fields (have {sorted(d)})")
        prompt = _text(d[pk]).strip()
        if d.get("title") and _text(d["title"]).strip() and _text(d["title"]).strip() not in prompt:
            prompt = f"{_text(d['title']).strip()}\n{prompt}"
        msgs += [{"role": "user", "content": prompt}, {"role": "assistant", "content": _text(d[ak])}]
    else:
        raise DataError(f"unknown data.format '{fmt}' (expected one of {', '.join(SFT_FORMATS)})")

    if system_prompt and not any(m["role"] == "system" for m in msgs):
        msgs.insert(0, {"role": "system", "content": system_prompt})
    _validate(msgs, rec)
    return msgs


def _validate(msgs: list[dict[str, str]], rec: Record) -> None:
    roles = [m["role"] for m in msgs]
    if "assistant" not in roles:
        raise DataError(f"{rec.where}: no assistant turn to learn from")
    if not any(m["content"].strip() for m in msgs if m["role"] == "assistant"):
        raise DataError(f"{rec.where}: every assistant turn is empty")
    for m in msgs:
        if m["role"] not in ("system", "user", "assistant", "tool"):
            raise DataError(f"{rec.where}: unknown role '{m['role']}'")
