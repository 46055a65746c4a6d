"""Chat templates that know which characters are the assistant's, so loss covers only those.

A template renders a conversation to text plus the character spans that are trained (assistant
content and its end-of-turn token). Built-ins cover DeepSeek-V3, DeepSeek-R1 (with <think>) and
ChatML; `tokenizer` uses the tokenizer's own Jinja template and finds assistant spans by rendering
growing prefixes of the conversation, which works for any prefix-stable template and fails loudly
for one that is not.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

DS_BOS, DS_EOS = "<｜begin▁of▁sentence｜>", "<｜end▁of▁sentence｜>"
DS_USER, DS_ASSISTANT = "<｜User｜>", "<｜Assistant｜>"


class TemplateError(ValueError):
    pass


@dataclass
class Rendered:
    text: str
    spans: list[tuple[int, int]]  # [start, end) character ranges that carry loss


class ChatTemplate:
    name = "base"

    def render(self, messages: list[dict], add_generation_prompt: bool = False) -> Rendered:
        raise NotImplementedError

    def prompt(self, messages: list[dict]) -> str:
        """Text to feed a model for generating the next assistant turn."""
        return self.render(messages, add_generation_prompt=True).text


class _Builder:
    def __init__(self):
        self.parts: list[str] = []
        self.spans: list[tuple[int, int]] = []
        self.pos = 0

    def add(self, s: str, train: bool = False):
        if train and s:
            self.spans.append((self.pos, self.pos + len(s)))
        self.parts.append(s)
        self.pos += len(s)

    def done(self) -> Rendered:
        return Rendered("".join(self.parts), self.spans)


class DeepSeekV3Template(ChatTemplate):
    """`<bos>{system}<｜User｜>{u}<｜Assistant｜>{a}<eos>` as in DeepSeek-V3's tokenizer_config."""

    name = "deepseek-v3"
    think = False

    def render(self, messages, add_generation_prompt=False):
        b = _Builder()
        b.add(DS_BOS)
        system = "\n\n".join(m["content"] for m in messages if m["role"] == "system")
        b.add(system)
        for m in messages:
            if m["role"] in ("user", "tool"):
                b.add(DS_USER + m["content"])
            elif m["role"] == "assistant":
                b.add(DS_ASSISTANT)
                body = m["content"]
                if self.think:
                    reasoning = m.get("reasoning_content", "")
                    if "</think>" not in body:
                        body = f"<think>\n{reasoning}\n</think>\n\n{body}" if reasoning else f"<think>\n\n</think>\n\n{body}"
                    elif not body.lstrip().startswith("<think>"):
                        body = "<think>\n" + body
                b.add(body + DS_EOS, train=True)
        if add_generation_prompt:
            b.add(DS_ASSISTANT + ("<think>\n" if self.think else ""))
        return b.done()


class DeepSeekR1Template(DeepSeekV3Template):
    """DeepSeek-R1: assistant turns carry `<think>reasoning</think>` before the answer."""

    name = "deepseek-r1"
    think = True


class ChatMLTemplate(ChatTemplate):
    name = "chatml"

    def render(self, messages, add_generation_prompt=False):
        b = _Builder()
        for m in messages:
            b.add(f"<|im_start|>{m['role']}\n")
            if m["role"] == "assistant":
                b.add(m["content"] + "<|im_end|>", train=True)
                b.add("\n")
            else:
                b.add(m["content"] + "<|im_end|>\n")
        if add_generation_prompt:
            b.add("<|im_start|>assistant\n")
        return b.done()


class TokenizerTemplate(ChatTemplate):
    """The tokenizer's own Jinja chat template; assistant spans found by prefix rendering."""

    name = "tokenizer"

    def __init__(self, tokenizer):
        if not getattr(tokenizer, "chat_template", None):
            raise TemplateError("the tokenizer has no chat_template; set data.template to deepseek-v3, deepseek-r1 or chatml")
        self.tok = tokenizer
        self.eos = tokenizer.eos_token or ""

    def _apply(self, messages, gen):
        return self.tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=gen)

    def render(self, messages, add_generation_prompt=False):
        full = self._apply(messages, add_generation_prompt)
        spans = []
        for i, m in enumerate(messages):
            if m["role"] != "assistant":
                continue
            before = self._apply(messages[:i], True)
            upto = self._apply(messages[: i + 1], False)
            if not (upto.startswith(before) and full.startswith(upto)):
                raise TemplateError(
                    "the tokenizer's chat template is not prefix-stable (rendering a longer conversation changes "
                    "earlier text), so assistant tokens cannot be located; set data.template to a built-in "
                    "(deepseek-v3, deepseek-r1, chatml)")
            start, end = len(before), len(upto)
            # train up to and including the end-of-turn token, not the whitespace after it
            if self.eos:
                k = full.rfind(self.eos, start, end)
                if k >= 0:
                    end = k + len(self.eos)
            spans.append((start, end))
        return Rendered(full, spans)


BUILTIN = {t.name: t for t in (DeepSeekV3Template, DeepSeekR1Template, ChatMLTemplate)}


def get_template(name: str, tokenizer) -> ChatTemplate:
    """`auto` = the tokenizer's own template when it has one, DeepSeek-V3 otherwise."""
    if name == "auto":
        return TokenizerTemplate(tokenizer) if getattr(tokenizer, "chat_template", None) else DeepSeekV3Template()
    if name == "tokenizer":
        return TokenizerTemplate(tokenizer)
    if name in BUILTIN:
        return BUILTIN[name]()
    raise TemplateError(f"data.template: unknown template '{name}' (expected auto, tokenizer, {', '.join(BUILTIN)})")


def template_fingerprint(t: ChatTemplate) -> str:
    if isinstance(t, TokenizerTemplate):
        return "tokenizer:" + hashlib.sha1(t.tok.chat_template.encode()).hexdigest()[:16]
    return t.name
