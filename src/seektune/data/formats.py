"""The record formats seektune reads: one object per format, one registry, one detection order.

Every loader (SFT, preference, classification, RL prompts) and every data tool (inspect, clean,
split, balance, augment, curriculum, mix) asks this module what a record is, so they cannot
disagree about a ShareGPT `function_call` turn or drop a Dolly `context` (both happened when two
parsers existed). A format knows:

- `matches(d)`: whether a record has its shape; formats are tried in `priority` order (lowest
  first), so `{"conversations", "chosen", "rejected"}` is a preference pair before it is ShareGPT;
- `missing(d)`: the required fields a half-complete record lacks (for a precise reject reason);
- `turns(d)`: the dialogue as (role, text) pairs, system excluded: the dedup text, the answers
  for quality rules and the prompts for augmentation all derive from it;
- `messages(rec)`: chat messages for training (SFT family), with reasoning split off the answer;
- `prompt_keys(d)` / `map_prompts(d, fn)`: the user-side strings, editable in place.

Families: `sft` (alpaca, dolly, sharegpt, messages, qa, mcq), `preference` (pairs, sharegpt, hh, unpaired),
`labelled` (classification rows) and `tagged` (NER records). Format names are unique except that
`sharegpt` also names the preference form inside the preference family (as LLaMA-Factory does).
"""

from __future__ import annotations

import re
from typing import Any, Callable

from .io import DataError, Record
from .reasoning import split_think

FAMILIES = ("sft", "preference", "labelled", "tagged")

# one speaker mapping for every ShareGPT reader (LLaMA-Factory's names included)
SHAREGPT_ROLES = {
    "human": "user", "user": "user", "gpt": "assistant", "assistant": "assistant", "bot": "assistant",
    "model": "assistant", "chatgpt": "assistant", "system": "system", "function_call": "assistant",
    "observation": "user", "tool": "user",
}
QA_PROMPT_KEYS = ("question", "ask", "prompt", "query", "instruction", "input")
QA_ANSWER_KEYS = ("answer", "response", "output", "completion", "reply")
TEXT_KEYS = ("text", "sentence", "review", "content", "document", "comment")
LABEL_KEYS = ("label", "labels", "category", "class", "sentiment")
NER_TAG_KEYS = ("tags", "ner_tags", "labels")
REASONING_KEYS = ("reasoning_content", "reasoning")
# keys whose values are never text to edit (speaker names, labels, ids, our own markers)
SKIP_KEYS = frozenset({"from", "role", "label", "labels", "tags", "ner_tags", "tokens", "id", "department",
                       "category", "class", "sentiment"})
_HH_TURN = re.compile(r"\n\n(Human|Assistant):[ ]?")


def text(v: Any) -> str:
    """A field as a string: None -> '', OpenAI content parts joined, other scalars str()-ed."""
    if v is None:
        return ""
    if isinstance(v, str):
        return v
    if isinstance(v, list):
        return "".join(p.get("text", "") if isinstance(p, dict) else str(p) for p in v)
    return str(v)


def _first(d: dict, keys) -> str | None:
    return next((k for k in keys if k in d), None)


def _assistant(content: str, reasoning: str | None = None) -> dict:
    """An assistant message; reasoning comes from a field or from `<think>...</think>` in the text."""
    r, answer = split_think(content)
    reasoning = reasoning or r
    msg = {"role": "assistant", "content": answer if r is not None else content}
    if reasoning and reasoning.strip():
        msg["reasoning_content"] = reasoning.strip()
    return msg


def _record_reasoning(d: dict) -> str | None:
    k = _first(d, REASONING_KEYS)
    return text(d[k]) if k else None


class Format:
    """One record format. Subclasses set the class attributes and override what differs."""

    name = ""
    family = ""
    priority = 100
    description = ""

    def matches(self, d: dict) -> bool:
        raise NotImplementedError

    def missing(self, d: dict) -> list[str]:
        """Required fields that are absent or null (empty list = complete)."""
        return []

    def turns(self, d: dict) -> list[tuple[str, str]]:
        """(role, text) of every dialogue turn, system excluded."""
        return []

    def messages(self, rec: Record) -> list[dict]:
        raise DataError(f"{rec.where}: a {self.name} record is not a chat sample")

    def prompt_keys(self, d: dict) -> list[str]:
        return []

    def map_prompts(self, d: dict, fn: Callable[[str], str]) -> dict:
        out = dict(d)
        for k in self.prompt_keys(d):
            out[k] = fn(text(d[k]))
        return out

    def label(self, d: dict):
        return None

    def content_text(self, d: dict) -> str:
        return "\n".join(t for _, t in self.turns(d))

    def __repr__(self) -> str:
        return f"<format {self.family}/{self.name}>"


# ------------------------------------------------------------------------------------------
# SFT family
# ------------------------------------------------------------------------------------------

class Messages(Format):
    name, family, priority = "messages", "sft", 10
    description = "OpenAI/DeepSeek `messages`: [{role, content, reasoning_content?}, ...]"

    def matches(self, d):
        return isinstance(d.get("messages"), list)

    def missing(self, d):
        return [] if d.get("messages") is not None else ["messages"]

    def turns(self, d):
        return [(str(m.get("role", "")), text(m.get("content"))) for m in d.get("messages") or []
                if isinstance(m, dict) and m.get("role") != "system"]

    def messages(self, rec):
        out = []
        for turn in rec.data["messages"]:
            if not isinstance(turn, dict) or "role" not in turn:
                raise DataError(f"{rec.where}: each message needs a 'role' and 'content'")
            role, content = str(turn["role"]), text(turn.get("content"))
            if role == "assistant":
                out.append(_assistant(content, _record_reasoning(turn)))
            else:
                out.append({"role": role, "content": content})
        return out

    def map_prompts(self, d, fn):
        return {**d, "messages": [dict(m, content=fn(text(m.get("content"))))
                                  if isinstance(m, dict) and m.get("role") == "user" else m
                                  for m in d.get("messages") or []]}


class ShareGPT(Format):
    name, family, priority = "sharegpt", "sft", 30
    description = "ShareGPT `conversations` of {from, value} (human/gpt/system/function_call/observation)"

    def matches(self, d):
        return isinstance(d.get("conversations"), list)

    def missing(self, d):
        return [] if d.get("conversations") is not None else ["conversations"]

    @staticmethod
    def role(turn: dict) -> str | None:
        return SHAREGPT_ROLES.get(str(turn.get("from", turn.get("role", ""))).lower())

    def turns(self, d):
        out = []
        for t in d.get("conversations") or []:
            if isinstance(t, dict) and self.role(t) not in (None, "system"):
                out.append((self.role(t), text(t.get("value", t.get("content")))))
        return out

    def messages(self, rec):
        d = rec.data
        out = [{"role": "system", "content": text(d["system"])}] if d.get("system") else []
        for turn in d["conversations"]:
            if not isinstance(turn, dict):
                raise DataError(f"{rec.where}: each item of 'conversations' must be an object with from/value")
            role = self.role(turn)
            if role is None:
                who = turn.get("from", turn.get("role", ""))
                raise DataError(f"{rec.where}: unknown speaker '{who}' in conversations (expected human/gpt/system)")
            content = text(turn.get("value", turn.get("content")))
            out.append(_assistant(content, _record_reasoning(turn)) if role == "assistant"
                       else {"role": role, "content": content})
        return out

    def map_prompts(self, d, fn):
        return {**d, "conversations": [dict(t, value=fn(text(t.get("value")))) if isinstance(t, dict)
                                       and self.role(t) == "user" else t for t in d.get("conversations") or []]}


class Alpaca(Format):
    name, family, priority = "alpaca", "sft", 80
    description = "Alpaca: instruction, input, output (optional system, history, reasoning)"

    def matches(self, d):
        return "instruction" in d and "output" in d

    def missing(self, d):
        return [k for k in ("instruction", "output") if d.get(k) is None]

    def _history(self, d):
        out = []
        for pair in d.get("history") or []:
            if isinstance(pair, (list, tuple)) and len(pair) == 2:
                out += [("user", text(pair[0])), ("assistant", text(pair[1]))]
        return out

    def prompt(self, d) -> str:
        instr, inp = text(d.get("instruction")).strip(), text(d.get("input")).strip()
        return f"{instr}\n{inp}" if instr and inp else (instr or inp)

    def answer_key(self) -> str:
        return "output"

    def turns(self, d):
        return self._history(d) + [("user", self.prompt(d)), ("assistant", text(d.get(self.answer_key())))]

    def messages(self, rec):
        d = rec.data
        out = [{"role": "system", "content": text(d["system"])}] if d.get("system") else []
        for role, t in self._history(d):
            out.append({"role": role, "content": t})
        out.append({"role": "user", "content": self.prompt(d)})
        out.append(_assistant(text(d.get(self.answer_key())), _record_reasoning(d)))
        return out

    def prompt_keys(self, d):
        return [k for k in ("instruction", "input") if text(d.get(k)).strip()]


class Dolly(Alpaca):
    """Databricks Dolly: the `context` passage is part of the prompt (it used to be dropped as qa)."""

    name, family, priority = "dolly", "sft", 85
    description = "Dolly: instruction, context, response (category kept as a label)"

    def matches(self, d):
        return "instruction" in d and "response" in d

    def missing(self, d):
        return [k for k in ("instruction", "response") if d.get(k) is None]

    def prompt(self, d) -> str:
        instr, ctx = text(d.get("instruction")).strip(), text(d.get("context")).strip()
        return f"{instr}\n\n{ctx}" if instr and ctx else (instr or ctx)

    def answer_key(self) -> str:
        return "response"

    def prompt_keys(self, d):
        return [k for k in ("instruction", "context") if text(d.get(k)).strip()]

    def label(self, d):
        return d.get("category")


class QA(Format):
    name, family, priority = "qa", "sft", 90
    description = "question/answer columns: one of question, ask, prompt, query, instruction, input + one of " \
                  "answer, response, output, completion, reply (title is prepended when it adds text)"

    def matches(self, d):
        return _first(d, QA_PROMPT_KEYS) is not None and _first(d, QA_ANSWER_KEYS) is not None

    def missing(self, d):
        need = [_first(d, QA_PROMPT_KEYS) or "question", _first(d, QA_ANSWER_KEYS) or "answer"]
        return [k for k in need if d.get(k) is None]

    def prompt(self, d) -> str:
        p = text(d.get(_first(d, QA_PROMPT_KEYS))).strip()
        title = text(d.get("title")).strip()
        return f"{title}\n{p}" if title and title not in p else p

    def turns(self, d):
        # the dedup text is question + answer (not title or department): the same exchange under two
        # headings is a duplicate
        return [("user", text(d.get(_first(d, QA_PROMPT_KEYS)))), ("assistant", text(d.get(_first(d, QA_ANSWER_KEYS))))]

    def messages(self, rec):
        d = rec.data
        pk, ak = _first(d, QA_PROMPT_KEYS), _first(d, QA_ANSWER_KEYS)
        if pk is None or ak is None:
            raise DataError(f"{rec.where}: missing question/answer fields (have {sorted(d)})")
        return [{"role": "user", "content": self.prompt(d)}, _assistant(text(d[ak]), _record_reasoning(d))]

    def prompt_keys(self, d):
        return [k for k in (_first(d, QA_PROMPT_KEYS),) if k]


class MCQ(Format):
    """Multiple choice: a question, lettered options and the answer letter (CMMLU's `Question,A,B,C,D,Answer`).

    As a chat sample the user sees the question and its options, and the assistant answers with the letter."""

    name, family, priority = "mcq", "sft", 75
    description = "multiple choice: Question + option columns A, B, C, D (...) + Answer letter (CMMLU, C-Eval)"
    LETTERS = "ABCDEFGHIJ"

    @staticmethod
    def _key(d: dict, name: str) -> str | None:
        return next((k for k in d if k.lower() == name), None)

    def options(self, d: dict) -> list[tuple[str, str]]:
        return [(x, text(d[x])) for x in self.LETTERS if x in d and text(d[x]).strip()]

    def matches(self, d):
        return self._key(d, "question") is not None and self._key(d, "answer") is not None and \
            sum(1 for x in "ABCD" if x in d) >= 2

    def missing(self, d):
        return [k for k in ("question", "answer") if self._key(d, k) is None or d.get(self._key(d, k)) is None]

    def answer(self, d) -> str:
        return text(d.get(self._key(d, "answer"))).strip().upper()

    def prompt(self, d) -> str:
        from .reasoning import is_mostly_cjk

        q = text(d.get(self._key(d, "question"))).strip()
        opts = "\n".join(f"{x}. {t}" for x, t in self.options(d))
        ask = "请直接给出正确选项的字母。" if is_mostly_cjk(q) else "Answer with the letter of the correct option."
        return f"{q}\n{opts}\n{ask}"

    def turns(self, d):
        return [("user", self.prompt(d)), ("assistant", self.answer(d))]

    def messages(self, rec):
        return [{"role": "user", "content": self.prompt(rec.data)}, {"role": "assistant", "content": self.answer(rec.data)}]

    def prompt_keys(self, d):
        return [k for k in (self._key(d, "question"),) if k]

    def label(self, d):
        return self.answer(d)


# ------------------------------------------------------------------------------------------
# Preference family: prompt messages + chosen + rejected
# ------------------------------------------------------------------------------------------

def _side(v) -> str:
    if isinstance(v, dict):
        return text(v.get("value", v.get("content")))
    if isinstance(v, list):  # a list of messages: the last one is the response
        return _side(v[-1]) if v else ""
    return text(v)


def split_hh(transcript: str) -> tuple[list[dict[str, str]], str]:
    """"\\n\\nHuman: a\\n\\nAssistant: b ..." -> (messages before the last assistant turn, last reply)."""
    parts = _HH_TURN.split(transcript)
    if len(parts) < 3 or parts[-2] != "Assistant":
        raise ValueError("transcript does not end with an Assistant turn")
    msgs = [{"role": "user" if who == "Human" else "assistant", "content": t.strip()}
            for who, t in zip(parts[1:-2:2], parts[2:-2:2])]
    return msgs, parts[-1].strip()


class PreferenceFormat(Format):
    family = "preference"

    def prompt_messages(self, d: dict) -> list[dict]:
        raise NotImplementedError

    def sides(self, d: dict) -> tuple[str, str]:
        return _side(d.get("chosen")), _side(d.get("rejected"))

    def turns(self, d):
        try:
            prompt = self.prompt_messages(d)
            chosen, rejected = self.sides(d)
        except (ValueError, AttributeError, TypeError):
            return []
        return [(m["role"], m["content"]) for m in prompt if m["role"] != "system"] + \
            [("assistant", chosen), ("assistant", rejected)]

    def missing(self, d):
        return [k for k in ("chosen", "rejected") if d.get(k) is None]


class Pairs(PreferenceFormat):
    name, priority = "pairs", 40
    description = "prompt (string or messages) + chosen + rejected; optional system"

    def matches(self, d):
        return {"prompt", "chosen", "rejected"} <= set(d)

    def prompt_messages(self, d):
        p = d.get("prompt")
        if isinstance(p, list):
            prompt = [{"role": str(m.get("role")), "content": text(m.get("content"))} for m in p]
        else:
            prompt = [{"role": "user", "content": text(p)}]
        if d.get("system"):
            prompt.insert(0, {"role": "system", "content": text(d["system"])})
        return prompt

    def prompt_keys(self, d):
        return ["prompt"] if isinstance(d.get("prompt"), str) else []


class PreferenceShareGPT(PreferenceFormat):
    name, priority = "sharegpt", 20
    description = "ShareGPT conversations + chosen + rejected (LLaMA-Factory's dpo_*_demo.json)"

    def matches(self, d):
        return isinstance(d.get("conversations"), list) and {"chosen", "rejected"} <= set(d)

    def prompt_messages(self, d):
        prompt = [{"role": "system", "content": text(d["system"])}] if d.get("system") else []
        for turn in d.get("conversations") or []:
            role = ShareGPT.role(turn) if isinstance(turn, dict) else None
            if role is None:
                raise ValueError(f"unknown speaker in conversations: {turn!r:.80}")
            prompt.append({"role": role, "content": text(turn.get("value", turn.get("content")))})
        return prompt


class HH(PreferenceFormat):
    name, priority = "hh", 50
    description = "Anthropic hh-rlhf chosen/rejected transcripts (\\n\\nHuman: ... \\n\\nAssistant: ...)"

    def matches(self, d):
        return {"chosen", "rejected"} <= set(d) and isinstance(d["chosen"], str) and "\n\nAssistant:" in d["chosen"]

    def prompt_messages(self, d):
        c_prompt, _ = split_hh(text(d.get("chosen")))
        r_prompt, _ = split_hh(text(d.get("rejected")))
        if c_prompt != r_prompt:
            raise ValueError("chosen and rejected transcripts differ before their last Assistant turn")
        return c_prompt

    def sides(self, d):
        return split_hh(text(d.get("chosen")))[1], split_hh(text(d.get("rejected")))[1]


class Unpaired(PreferenceFormat):
    """One reply with a desirable/undesirable label (KTO's unpaired form, trl's `prompt/completion/label`)."""

    name, priority = "unpaired", 45
    description = "prompt + completion + label (true/false, 1/0, good/bad): KTO's unpaired form"

    def matches(self, d):
        return {"prompt", "completion", "label"} <= set(d)

    def missing(self, d):
        return [k for k in ("prompt", "completion", "label") if d.get(k) is None]

    def prompt_messages(self, d):
        p = d.get("prompt")
        if isinstance(p, list):
            return [{"role": str(m.get("role")), "content": text(m.get("content"))} for m in p]
        return [{"role": "user", "content": text(p)}]

    def turns(self, d):
        return [(m["role"], m["content"]) for m in self.prompt_messages(d) if m["role"] != "system"] + \
            [("assistant", _side(d.get("completion")))]

    def desirable(self, d) -> bool:
        v = d.get("label")
        if isinstance(v, bool):
            return v
        s = str(v).strip().lower()
        if s in ("true", "1", "good", "desirable", "yes", "chosen"):
            return True
        if s in ("false", "0", "bad", "undesirable", "no", "rejected"):
            return False
        raise ValueError(f"label {v!r} is neither desirable (true/1/good) nor undesirable (false/0/bad)")

    def label(self, d):
        return d.get("label")


# ------------------------------------------------------------------------------------------
# Labelled rows and tagged sentences
# ------------------------------------------------------------------------------------------

class Classification(Format):
    name, family, priority = "classification", "labelled", 70
    description = "a text column (text, sentence, review, content, document, comment) + a label column"

    def matches(self, d):
        return (_first(d, TEXT_KEYS) is not None and _first(d, LABEL_KEYS) is not None
                and "messages" not in d and "conversations" not in d)

    def missing(self, d):
        need = [_first(d, TEXT_KEYS) or "text", _first(d, LABEL_KEYS) or "label"]
        return [k for k in need if d.get(k) is None]

    def content_text(self, d):
        return text(d.get(_first(d, TEXT_KEYS)))

    def prompt_keys(self, d):
        return [k for k in (_first(d, TEXT_KEYS),) if k]

    def label(self, d):
        v = d.get(_first(d, LABEL_KEYS))
        return v if isinstance(v, (str, int, float, bool)) or v is None else str(v)


class NER(Format):
    name, family, priority = "ner", "tagged", 60
    description = "tokens + tags (or ner_tags / labels) per sentence"

    def matches(self, d):
        return isinstance(d.get("tokens"), list) and _first(d, NER_TAG_KEYS) is not None

    def missing(self, d):
        return [k for k in ("tokens", _first(d, NER_TAG_KEYS) or "tags") if d.get(k) is None]

    def content_text(self, d):
        return " ".join(text(t) for t in d.get("tokens") or [])


# ------------------------------------------------------------------------------------------
# The registry
# ------------------------------------------------------------------------------------------

REGISTRY: list[Format] = sorted([Messages(), PreferenceShareGPT(), ShareGPT(), Pairs(), HH(), NER(), Classification(),
                                 MCQ(), Alpaca(), Dolly(), QA(), Unpaired()], key=lambda f: f.priority)
SFT_FORMATS = tuple(f.name for f in REGISTRY if f.family == "sft")
PREFERENCE_FORMATS = tuple(f.name for f in REGISTRY if f.family == "preference")
KINDS = tuple(dict.fromkeys(f.name for f in REGISTRY))  # every name, for `--kind` options


def formats(family: str | None = None) -> list[Format]:
    return [f for f in REGISTRY if family is None or f.family == family]


def get_format(name: str, family: str | None = None) -> Format:
    """The format called `name` (inside `family` when given: `sharegpt` is two formats)."""
    cands = [f for f in formats(family) if f.name == name]
    if not cands:
        known = ", ".join(dict.fromkeys(f.name for f in formats(family)))
        where = f" for {family} data" if family else ""
        raise DataError(f"unknown data format '{name}'{where} (known: {known})")
    return cands[0]


def detect(d: dict[str, Any], family: str | None = None) -> Format:
    """The first format (by priority) that a record matches; when `family` is given and the record
    matches a format of another family, the error says which one it looks like."""
    for f in REGISTRY:
        if f.matches(d):
            if family is not None and f.family != family:
                raise DataError(f"the record looks like {f.family} data ({f.name}: {f.description}), not "
                                f"{family} data; check data.train or train.stage")
            return f
    hint = ", ".join(f"{f.name}" for f in formats(family))
    raise DataError(f"cannot tell the data format from the fields {sorted(d)}; expected one of: {hint}; "
                    "or set data.format")


def detect_format(d: dict[str, Any]) -> str:
    """Name of the SFT format of a record (raises DataError when it is not a chat sample)."""
    return detect(d, "sft").name


def to_messages(rec: Record, fmt: str = "auto", system_prompt: str | None = None) -> list[dict]:
    """One record -> chat messages ending with an assistant turn; DataError (with file:line) when it cannot."""
    if fmt == "auto":
        try:
            f = detect(rec.data, "sft")
        except DataError as e:
            # a half-complete record: name the field it lacks (not the list of every format)
            partial = None if any(g.matches(rec.data) for g in REGISTRY) else missing_for_partial(rec.data)
            raise DataError(f"{rec.where}: {partial or e}") from None
    else:
        f = get_format(fmt, "sft")
    try:
        msgs = f.messages(rec)
    except (AttributeError, TypeError) as e:
        raise DataError(f"{rec.where}: not a valid {f.name} record ({e})") from None
    if system_prompt and not any(m["role"] == "system" for m in msgs):
        msgs.insert(0, {"role": "system", "content": system_prompt})
    _validate(msgs, rec)
    return msgs


def _validate(msgs: list[dict], rec: Record) -> None:
    roles = [m["role"] for m in msgs]
    if "assistant" not in roles:
        raise DataError(f"{rec.where}: no assistant turn to learn from")
    if not any((m["content"] + m.get("reasoning_content", "")).strip() for m in msgs if m["role"] == "assistant"):
        raise DataError(f"{rec.where}: every assistant turn is empty")
    for m in msgs:
        if m["role"] not in ("system", "user", "assistant", "tool"):
            raise DataError(f"{rec.where}: unknown role '{m['role']}'")


# ------------------------------------------------------------------------------------------
# What the data tools ask, by format name (`kind`)
# ------------------------------------------------------------------------------------------

def detect_kind(d: dict[str, Any]) -> str:
    """The format name of any record (all families)."""
    return detect(d).name


def _fmt(kind: str) -> Format:
    return next(f for f in REGISTRY if f.name == kind)


def missing_for_partial(d: dict) -> str | None:
    """When detection failed: name the field a half-complete record lacks (None if it matches nothing)."""
    keys = set(d)
    if "instruction" in keys and "output" not in keys and "response" not in keys:
        return "missing field 'output' for an Alpaca record"
    if any(k in keys for k in QA_PROMPT_KEYS) and not any(k in keys for k in QA_ANSWER_KEYS):
        return f"missing an answer field (one of {', '.join(QA_ANSWER_KEYS)})"
    if any(k in keys for k in TEXT_KEYS) and not any(k in keys for k in LABEL_KEYS):
        return f"missing a label field (one of {', '.join(LABEL_KEYS)}) for a classification row"
    if "tokens" in keys:
        return f"missing a tag field (one of {', '.join(NER_TAG_KEYS)}) for an NER record"
    return None


def required_fields(kind: str, d: dict) -> list[str]:
    return _fmt(kind).missing(d)


def content_text(d: dict, kind: str) -> str:
    """The strings that make a record what it is, joined: the dedup key and the length measure."""
    return _fmt(kind).content_text(d)


def answer_texts(d: dict, kind: str) -> list[str]:
    return [t for r, t in _fmt(kind).turns(d) if r == "assistant"]


def prompt_texts(d: dict, kind: str) -> list[str]:
    return [t for r, t in _fmt(kind).turns(d) if r == "user"]


def prompt_keys(d: dict, kind: str) -> list[str]:
    return _fmt(kind).prompt_keys(d)


def map_prompts(d: dict, kind: str, fn: Callable[[str], str]) -> dict:
    """Apply fn to the user-side text of a record (answers stay as written)."""
    return _fmt(kind).map_prompts(d, fn)


def label_of(d: dict, kind: str, label_field: str | None = None):
    """The label to stratify or balance on: an explicit field, else the format's own label."""
    if label_field:
        v = d.get(label_field)
        return None if v is None else (v if isinstance(v, (str, int, float, bool)) else str(v))
    return _fmt(kind).label(d)


def map_strings(data: Any, fn: Callable[[str], str]) -> Any:
    """Apply fn to every editable string in a record (recursively), leaving labels, roles, tokens alone."""
    return map_strings_at(data, lambda path, s: fn(s))


def map_strings_at(data: Any, fn: Callable[[str, str], str], key: str | None = None, path: str = "") -> Any:
    """map_strings, with fn(path, s) told where the string sits (`messages[1].content`), for reports."""
    if key in SKIP_KEYS or (key or "").startswith("_"):
        return data
    if isinstance(data, str):
        return fn(path, data)
    if isinstance(data, dict):
        return {k: map_strings_at(v, fn, k, f"{path}.{k}" if path else str(k)) for k, v in data.items()}
    if isinstance(data, list):
        return [map_strings_at(v, fn, key, f"{path}[{i}]") for i, v in enumerate(data)]
    return data
