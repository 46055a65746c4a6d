"""Reasoning (DeepSeek-R1 `<think>...</think>`) kept apart from the answer, and put back.

Records carry reasoning as a `reasoning_content` / `reasoning` field or inline as
`<think>...</think>` before the answer. Readers split it off into the message's
`reasoning_content`, so every template decides how to render it: the DeepSeek-R1 template renders
it natively; the others get it folded back into the content, so it is trained either way
(`fold`). Generations are split the same way (`split_generation`), for eval and serve
(`reasoning_content` in the OpenAI response, as DeepSeek's API returns it).
"""

from __future__ import annotations

THINK_OPEN, THINK_CLOSE = "<think>", "</think>"


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
    """(reasoning, answer) of a generated reply.

    prompt_opened_think: the generation prompt ended with `<think>` (the DeepSeek-R1 template), so the
    reply starts inside the reasoning. A reply whose reasoning never closed (cut by max_new_tokens)
    is all reasoning and no answer, as DeepSeek's API reports it.
    """
    if prompt_opened_think:
        if THINK_CLOSE in text:
            reasoning, answer = text.split(THINK_CLOSE, 1)
            return reasoning.strip(), answer.strip()
        return text.strip(), ""
    r, a = split_think(text)
    if r is not None:
        return r.strip(), a.strip()
    if text.lstrip().startswith(THINK_OPEN):  # opened, never closed
        return text.lstrip()[len(THINK_OPEN):].strip(), ""
    return None, text.strip()
