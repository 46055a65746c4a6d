"""Reasoning (DeepSeek-R1 `<think>...</think>`) kept apart from the answer, and put back.

Records carry reasoning as a `reasoning_content` / `reasoning` field or inline as
`<think>...</think>` before the answer. Readers split it off into the message's
`reasoning_content`, so every template decides how to render it: the DeepSeek-R1 template renders
it natively; the others get it folded back into the content, so it is trained either way
(`fold`). Generations are split the same way (`split_generation`), for eval and serve
(`reasoning_content` in the OpenAI response, as DeepSeek's API returns it).
"""

from __future__ import annotations

import re

THINK_OPEN, THINK_CLOSE = "<think>", "</think>"
_CJK = re.compile(r"[\u3400-\u4dbf\u4e00-\u9fff]")


def is_mostly_cjk(text: str, share: float = 0.3) -> bool:
    chars = len(re.sub(r"\s", "", text))
    return chars > 0 and len(_CJK.findall(text)) / chars >= share


def split_think(text: str) -> tuple[str | None, str]:
    """`<think>r</think>a` -> ('r', 'a'); text without a closed think block -> (None, text)."""
    s = text.lstrip()
    if not s.startswith(THINK_OPEN) or THINK_CLOSE not in s:
        return None, text
    reasoning, answer = s[len(THINK_OPEN):].split(THINK_CLOSE, 1)
    return reasoning.strip("\n"), answer.lstrip("\n")


def fold(message: dict) -> str:
    """The content of an assistant message with its reasoning written inline, the R1 way."""
    reasoning = message.get("reasoning_content")
    if not reasoning:
        return message["content"]
    return f"{THINK_OPEN}\n{reasoning}\n{THINK_CLOSE}\n\n{message['content']}"


def split_generation(text: str, prompt_opened_think: bool) -> tuple[str | None, str]:
    """(reasoning, answer) of a generated reply: the newlines around the reasoning are dropped, nothing
    else, so a streamed reply (ReasoningStream) adds up to exactly the same two strings.

    prompt_opened_think: the generation prompt ended with `<think>` (the DeepSeek-R1 template), so the
    reply starts inside the reasoning. A reply whose reasoning never closed (cut by max_new_tokens)
    is all reasoning and no answer, as DeepSeek's API reports it.
    """
    if not prompt_opened_think:
        s = text.lstrip()
        if not s.startswith(THINK_OPEN):
            return None, text
        text = s[len(THINK_OPEN):]
    if THINK_CLOSE in text:
        reasoning, answer = text.split(THINK_CLOSE, 1)
        return reasoning.strip("\n"), answer.lstrip("\n")
    return text.strip("\n"), ""


class ReasoningStream:
    """Splits a streamed reply into reasoning and answer deltas as the text arrives.

    feed(delta) returns [(kind, text)] with kind "reasoning" or "content"; a tag cut across two
    deltas (`</thi` + `nk>`) is held back until it is whole, so no client ever sees half a tag.
    """

    def __init__(self, prompt_opened_think: bool):
        self.mode = "reasoning" if prompt_opened_think else "start"
        self.buf = ""
        self.began = False  # reasoning text emitted yet (leading newlines are dropped)

    def _hold(self, tag: str) -> int:
        """How many trailing characters of the buffer could be the start of `tag`."""
        for k in range(min(len(tag) - 1, len(self.buf)), 0, -1):
            if tag.startswith(self.buf[-k:]):
                return k
        return 0

    def feed(self, delta: str) -> list[tuple[str, str]]:
        self.buf += delta
        out: list[tuple[str, str]] = []
        while True:
            if self.mode == "start":
                s = self.buf.lstrip()
                if not s:
                    return out
                if s.startswith(THINK_OPEN):
                    self.buf, self.mode = s[len(THINK_OPEN):], "reasoning"
                    continue
                if THINK_OPEN.startswith(s):
                    return out  # could still become <think>
                self.mode = "content"
                continue
            if self.mode == "reasoning":
                if not self.began:
                    self.buf = self.buf.lstrip("\n")
                k = self.buf.find(THINK_CLOSE)
                if k >= 0:
                    body = self.buf[:k].rstrip("\n")
                    if body:
                        out.append(("reasoning", body))
                    self.buf, self.mode = self.buf[k + len(THINK_CLOSE):], "answer_start"
                    continue
                # hold back what may be the start of </think>, and trailing newlines (dropped before it)
                k = self._hold(THINK_CLOSE)
                head = self.buf[:len(self.buf) - k]
                hold = k + len(head) - len(head.rstrip("\n"))
                emit = self.buf[:len(self.buf) - hold]
                if emit:
                    out.append(("reasoning", emit))
                    self.began = True
                self.buf = self.buf[len(self.buf) - hold:]
                return out
            if self.mode == "answer_start":  # the blank lines between </think> and the answer are not content
                self.buf = self.buf.lstrip("\n")
                if not self.buf:
                    return out
                self.mode = "content"
            if self.buf:
                out.append(("content", self.buf))
            self.buf = ""
            return out

    def flush(self) -> list[tuple[str, str]]:
        if not self.buf:
            return []
        kind = "reasoning" if self.mode == "reasoning" else "content"
        text, self.buf = self.buf, ""
        if self.mode == "answer_start":
            text = text.lstrip("\n")
        elif self.mode == "reasoning":
            text = text.strip("\n") if not self.began else text.rstrip("\n")
        return [(kind, text)] if text else []
