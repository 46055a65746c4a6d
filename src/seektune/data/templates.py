"""Chat templates that know which characters are the assistant's, so loss covers only those.

A template renders a conversation to text plus the character spans that are trained (assistant
content and its end-of-turn token). Built-ins cover DeepSeek-V3, DeepSeek-R1 (with <think>) and
ChatML, each with a Jinja form that renders the same text (written into exported tokenizers);
`tokenizer` uses the tokenizer's own Jinja template and finds assistant spans by rendering growing
prefixes of the conversation, which works for any prefix-stable template and fails loudly for one
that is not.

Reasoning (`reasoning_content` on an assistant message) is always trained: the DeepSeek-R1
template renders it natively, every other template gets it folded into the content as
`<think>...</think>` (data/reasoning.py). `auto` never picks a template that erases it: the
DeepSeek-R1 tokenizer's own Jinja drops everything before `</think>`, so on DeepSeek tokenizers
`auto` picks the built-in that renders the same text and keeps the reasoning.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

from .reasoning import THINK_CLOSE, THINK_OPEN, fold

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
    jinja: str | None = None  # the same rendering as a HF chat_template (for exported tokenizers)
    opens_think = False  # the generation prompt ends inside a <think> block (DeepSeek-R1)

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
    jinja = (
        "{{- '<｜begin▁of▁sentence｜>' -}}"
        "{%- for m in messages if m['role'] == 'system' -%}{%- if not loop.first -%}{{ '\n\n' }}{%- endif -%}"
        "{{ m['content'] }}{%- endfor -%}"
        "{%- for m in messages -%}"
        "{%- if m['role'] in ['user', 'tool'] -%}{{ '<｜User｜>' + m['content'] }}"
        "{%- elif m['role'] == 'assistant' -%}{{ '<｜Assistant｜>' }}"
        "{%- if m.get('reasoning_content') -%}{{ '<think>\n' + m['reasoning_content'] + '\n</think>\n\n' }}{%- endif -%}"
        "{{ m['content'] + '<｜end▁of▁sentence｜>' }}"
        "{%- endif -%}{%- endfor -%}"
        "{%- if add_generation_prompt -%}{{ '<｜Assistant｜>' }}{%- endif -%}")

    def _body(self, m: dict) -> str:
        return fold(m)

    def render(self, messages, add_generation_prompt=False):
        b = _Builder()
        b.add(DS_BOS)
        b.add("\n\n".join(m["content"] for m in messages if m["role"] == "system"))
        for m in messages:
            if m["role"] in ("user", "tool"):
                b.add(DS_USER + m["content"])
            elif m["role"] == "assistant":
                b.add(DS_ASSISTANT)
                b.add(self._body(m) + DS_EOS, train=True)
        if add_generation_prompt:
            b.add(DS_ASSISTANT + (f"{THINK_OPEN}\n" if self.think else ""))
        return b.done()


class DeepSeekR1Template(DeepSeekV3Template):
    """DeepSeek-R1: every assistant turn is `<think>\\nreasoning\\n</think>\\n\\nanswer` (an empty think block
    when there is no reasoning), and the generation prompt opens `<think>` as R1's updated template does."""

    name = "deepseek-r1"
    think = True
    opens_think = True
    jinja = (
        "{{- '<｜begin▁of▁sentence｜>' -}}"
        "{%- for m in messages if m['role'] == 'system' -%}{%- if not loop.first -%}{{ '\n\n' }}{%- endif -%}"
        "{{ m['content'] }}{%- endfor -%}"
        "{%- for m in messages -%}"
        "{%- if m['role'] in ['user', 'tool'] -%}{{ '<｜User｜>' + m['content'] }}"
        "{%- elif m['role'] == 'assistant' -%}{{ '<｜Assistant｜>' }}"
        "{%- set c = m['content'] -%}"
        "{%- if m.get('reasoning_content') -%}{{ '<think>\n' + m['reasoning_content'] + '\n</think>\n\n' + c }}"
        "{%- elif '</think>' in c -%}{%- if not c.lstrip().startswith('<think>') -%}{{ '<think>\n' }}{%- endif -%}{{ c }}"
        "{%- else -%}{{ '<think>\n\n</think>\n\n' + c }}{%- endif -%}"
        "{{ '<｜end▁of▁sentence｜>' }}"
        "{%- endif -%}{%- endfor -%}"
        "{%- if add_generation_prompt -%}{{ '<｜Assistant｜><think>\n' }}{%- endif -%}")

    def _body(self, m: dict) -> str:
        body, reasoning = m["content"], m.get("reasoning_content", "")
        if reasoning:
            return f"{THINK_OPEN}\n{reasoning}\n{THINK_CLOSE}\n\n{body}"
        if THINK_CLOSE in body:
            return body if body.lstrip().startswith(THINK_OPEN) else f"{THINK_OPEN}\n" + body
        return f"{THINK_OPEN}\n\n{THINK_CLOSE}\n\n{body}"


class ChatMLTemplate(ChatTemplate):
    name = "chatml"
    jinja = (
        "{%- for m in messages -%}{{ '<|im_start|>' + m['role'] + '\n' }}"
        "{%- if m['role'] == 'assistant' and m.get('reasoning_content') -%}"
        "{{ '<think>\n' + m['reasoning_content'] + '\n</think>\n\n' }}{%- endif -%}"
        "{{ m['content'] + '<|im_end|>\n' }}"
        "{%- endfor -%}{%- if add_generation_prompt -%}{{ '<|im_start|>assistant\n' }}{%- endif -%}")

    def render(self, messages, add_generation_prompt=False):
        b = _Builder()
        for m in messages:
            b.add(f"<|im_start|>{m['role']}\n")
            if m["role"] == "assistant":
                b.add(fold(m) + "<|im_end|>", train=True)
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
        self.jinja = tokenizer.chat_template
        self._keeps_reasoning: bool | None = None

    def _apply(self, messages, gen):
        return self.tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=gen)

    def keeps_reasoning(self) -> bool:
        """Whether reasoning folded into an assistant's content survives the rendering (DeepSeek-R1's own
        Jinja cuts everything before `</think>`)."""
        if self._keeps_reasoning is None:
            probe = [{"role": "user", "content": "q"},
                     {"role": "assistant", "content": fold({"content": "a", "reasoning_content": "r1x2y3"})}]
            self._keeps_reasoning = "r1x2y3" in self._apply(probe, False)
        return self._keeps_reasoning

    def render(self, messages, add_generation_prompt=False):
        if any(m.get("reasoning_content") for m in messages):
            if not self.keeps_reasoning():
                raise TemplateError("the tokenizer's chat template drops the reasoning before </think>, so it would not "
                                    "be trained; set data.template: deepseek-r1 (or auto)")
            messages = [{"role": m["role"], "content": fold(m)} if m.get("reasoning_content") else m for m in messages]
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
TEMPLATE_NAMES = ("auto", "tokenizer", *BUILTIN)


def auto_template(tokenizer) -> ChatTemplate:
    """What `data.template: auto` means for this tokenizer.

    - a DeepSeek chat template (`<｜Assistant｜>`): the built-in that renders the same text, deepseek-r1
      when it knows `</think>` (the R1 family), else deepseek-v3; the tokenizer's own R1 Jinja would
      erase every record's reasoning;
    - another chat template: the tokenizer's own (reasoning folded into the content);
    - none: deepseek-v3.
    """
    jinja = getattr(tokenizer, "chat_template", None)
    if not jinja:
        return DeepSeekV3Template()
    if DS_ASSISTANT in jinja:
        return DeepSeekR1Template() if THINK_CLOSE in jinja else DeepSeekV3Template()
    return TokenizerTemplate(tokenizer)


def get_template(name: str, tokenizer) -> ChatTemplate:
    if name == "auto":
        return auto_template(tokenizer)
    if name == "tokenizer":
        return TokenizerTemplate(tokenizer)
    if name in BUILTIN:
        return BUILTIN[name]()
    raise TemplateError(f"data.template: unknown template '{name}' (expected {', '.join(TEMPLATE_NAMES)})")


def template_fingerprint(t: ChatTemplate) -> str:
    if isinstance(t, TokenizerTemplate):
        return "tokenizer:" + hashlib.sha1(t.tok.chat_template.encode()).hexdigest()[:16]
    return t.name
