"""The Ollama Modelfile: the run's chat template as a Go template, stop tokens and num_ctx.

Ollama does not run Jinja; it renders TEMPLATE with Go's text/template over `.Messages` (Role,
Content, Thinking). seektune writes the Go form of its built-in templates (deepseek-v3,
deepseek-r1 with the `<think>` opening, chatml) and of a tokenizer's own ChatML template (with or
without a default system prompt, e.g. SmolLM2's); the export renders it (gotemplate.py) against
the tokenizer's apply_chat_template on fixed conversations and records whether the text is the
same. Ollama's convention for the last message differs from HF's: it always asks for the next
assistant turn, so only conversations ending in a user turn are compared (with
add_generation_prompt). A template seektune cannot convert gets no TEMPLATE line (Ollama then
guesses from the GGUF's tokenizer.chat_template) and a warning.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from ...data.templates import DS_ASSISTANT, DS_BOS, DS_EOS, DS_USER
from .gotemplate import render

# the last message asks for an assistant turn (Ollama's own templates use the same test)
_LAST = '{{ $last := eq (len (slice $.Messages $i)) 1 }}'

_DS_SYSTEM = ('{{ $n := 0 }}{{ range .Messages }}{{ if eq .Role "system" }}{{ if $n }}\n\n{{ end }}'
              '{{ .Content }}{{ $n = 1 }}{{ end }}{{ end }}')


def _deepseek(think: bool) -> str:
    if think:  # R1: every past answer carries a think block, the prompt opens <think>
        answer = ('{{ if .Thinking }}<think>\n{{ .Thinking }}\n</think>\n\n{{ .Content }}'
                  '{{ else }}<think>\n\n</think>\n\n{{ .Content }}{{ end }}')
    else:
        answer = '{{ if .Thinking }}<think>\n{{ .Thinking }}\n</think>\n\n{{ end }}{{ .Content }}'
    return (DS_BOS + _DS_SYSTEM + '{{ range $i, $m := .Messages }}' + _LAST +
            '{{ if or (eq .Role "user") (eq .Role "tool") }}' + DS_USER + '{{ .Content }}'
            '{{ else if eq .Role "assistant" }}' + DS_ASSISTANT + answer + '{{ if not $last }}' + DS_EOS + '{{ end }}'
            '{{ end }}{{ if and $last (ne .Role "assistant") }}' + DS_ASSISTANT + ('<think>\n' if think else '') +
            '{{ end }}{{ end }}')


def _chatml(default_system: str | None = None, think: bool = True) -> str:
    first = ''
    if default_system is not None:
        first = ('{{ if and (eq $i 0) (ne .Role "system") }}<|im_start|>system\n' + _go_text(default_system) +
                 '<|im_end|>\n{{ end }}')
    reasoning = ('{{ if and (eq .Role "assistant") .Thinking }}<think>\n{{ .Thinking }}\n</think>\n\n{{ end }}'
                 if think else '')
    return ('{{ range $i, $m := .Messages }}' + _LAST + first + '<|im_start|>{{ .Role }}\n' + reasoning +
            '{{ .Content }}{{ if or (not $last) (ne .Role "assistant") }}<|im_end|>\n{{ end }}'
            '{{ if and $last (ne .Role "assistant") }}<|im_start|>assistant\n{{ end }}{{ end }}')


def _go_text(s: str) -> str:
    if "{{" in s:  # a literal action opener would need {{ "{{" }}; no chat template seen here has one
        raise ValueError("text with '{{'")
    return s


BUILTIN_GO = {"deepseek-v3": lambda: _deepseek(False), "deepseek-r1": lambda: _deepseek(True), "chatml": _chatml}
STOPS = {"deepseek-v3": [DS_EOS, DS_USER], "deepseek-r1": [DS_EOS, DS_USER], "chatml": ["<|im_end|>", "<|im_start|>"]}

PROBE_CONVERSATIONS = [
    [{"role": "user", "content": "What should I do about a mild headache?"}],
    [{"role": "system", "content": "You are a concise assistant."},
     {"role": "user", "content": "Summarise: the meeting moved to Tuesday at 10."}],
    [{"role": "user", "content": "你好"}, {"role": "assistant", "content": "你好！有什么可以帮你？"},
     {"role": "user", "content": "介绍一下你自己。"}],
    [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "hi"},
     {"role": "assistant", "content": "Hello."}, {"role": "user", "content": "And then?"}],
]
REASONING_CONVERSATION = [{"role": "user", "content": "2+2?"},
                          {"role": "assistant", "content": "4.", "reasoning_content": "Add two and two."},
                          {"role": "user", "content": "And 3+3?"}]


def ollama_messages(conv: list[dict]) -> list[dict]:
    """HF chat messages as Ollama's api.Message fields (reasoning_content -> Thinking)."""
    return [{"Role": m["role"], "Content": m["content"], "Thinking": m.get("reasoning_content", "")} for m in conv]


def render_ollama(go_template: str, conv: list[dict]) -> str:
    return render(go_template, {"Messages": ollama_messages(conv)})


@dataclass
class ModelfileResult:
    template_name: str | None  # which Go template was written, None when none fits
    matches_hf: bool | None
    conversations: int
    stops: list[str]
    num_ctx: int
    bos_in_template: bool
    text: str = ""
    notes: list[str] = field(default_factory=list)


def _hf(tok, conv):
    return tok.apply_chat_template(conv, tokenize=False, add_generation_prompt=True)


def _default_system(tok) -> str | None:
    """The system prompt a ChatML tokenizer template inserts when a conversation has none (SmolLM2's)."""
    text = _hf(tok, [{"role": "user", "content": "q"}])
    m = re.match(r"<\|im_start\|>system\n(.*?)<\|im_end\|>\n<\|im_start\|>user\nq<\|im_end\|>\n", text, re.S)
    return m.group(1) if m else None


def _candidates(template_kind: str, tok) -> list[tuple[str, str]]:
    """(name, Go template) to try, the run's built-in first."""
    if template_kind in BUILTIN_GO:
        return [(template_kind, BUILTIN_GO[template_kind]())]
    out = [(n, f()) for n, f in BUILTIN_GO.items()]
    ds = _default_system(tok)
    if ds is not None:
        out.insert(0, ("chatml+default-system", _chatml(ds, think=False)))
    return out


def _strip_bos(go: str, tok, add_bos: bool) -> tuple[str, bool]:
    """llama.cpp prepends BOS itself when the GGUF says add_bos_token: the template must not repeat it."""
    bos = tok.bos_token or ""
    if add_bos and bos and go.startswith(bos):
        return go[len(bos):], False
    return go, go.startswith(bos) if bos else False


def build_modelfile(tok, template_kind: str, gguf_name: str, num_ctx: int, add_bos: bool,
                    eos_token: str | None) -> ModelfileResult:
    """Pick the Go template that renders exactly what the tokenizer's chat template renders."""
    notes: list[str] = []
    reasoning_ok = template_kind in BUILTIN_GO  # tokenizer templates get reasoning folded by seektune, not Thinking
    convs = PROBE_CONVERSATIONS + ([REASONING_CONVERSATION] if reasoning_ok else [])
    chosen, go = None, None
    for name, cand in _candidates(template_kind, tok):
        cand_rt, _ = _strip_bos(cand, tok, add_bos)
        prefix = (tok.bos_token or "") if cand_rt != cand else ""
        try:
            if all(prefix + render_ollama(cand_rt, c) == _hf(tok, c) for c in convs):
                chosen, go = name, cand_rt
                break
        except Exception as e:  # noqa: BLE001 - a tokenizer template that rejects a conversation: try the next
            notes.append(f"{name}: {type(e).__name__}: {e}")
    base = "chatml" if chosen and chosen.startswith("chatml") else chosen
    stops = list(dict.fromkeys(([eos_token] if eos_token else []) + STOPS.get(base, [])))
    if chosen is None:
        notes.append("the chat template has no Go form in seektune: the Modelfile has no TEMPLATE, so Ollama "
                     "guesses one from the GGUF's tokenizer.chat_template; check it with `ollama show --template`")
    lines = ["# written by seektune export: ollama create NAME -f Modelfile", f"FROM ./{gguf_name}"]
    if go is not None:
        lines.append(f'TEMPLATE """{go}"""')
        if '"""' in go:
            raise ValueError('chat template contains """')
    for s in stops:
        lines.append(f'PARAMETER stop "{s}"')
    lines.append(f"PARAMETER num_ctx {num_ctx}")
    res = ModelfileResult(chosen, True if chosen else None, len(convs), stops, num_ctx,
                          bool(go) and go.startswith(tok.bos_token or "\0"), "\n".join(lines) + "\n", notes)
    return res


def parse_template(modelfile_text: str) -> str | None:
    """The TEMPLATE of a Modelfile written by build_modelfile (for tests and checks)."""
    m = re.search(r'^TEMPLATE """(.*?)"""$', modelfile_text, re.S | re.M)
    return m.group(1) if m else None
