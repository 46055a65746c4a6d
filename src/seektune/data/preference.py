"""Preference pairs: read the common on-disk forms into one shape, render them with a chat template.

Forms (data/formats.py; detected per file from the first record, or set with data.format):
- pairs:    `prompt` (string or messages), `chosen`, `rejected` (strings); optional `system`
- sharegpt: `conversations` (from/value turns) + `chosen` + `rejected` ({from, value} messages or
            strings), as LLaMA-Factory's dpo_{en,zh}_demo.json
- hh:       `chosen` / `rejected` full transcripts "\\n\\nHuman: ...\\n\\nAssistant: ..." (Anthropic
            hh-rlhf); the shared dialogue is split off at the last "\\n\\nAssistant:"

Every pair becomes (prompt messages, chosen text, rejected text). Pairs that cannot teach anything
(empty side, identical sides, no user turn) go to the rejects list with file:line and a reason, as do
pairs longer than the length limits (never cut mid-answer). read = train + eval + rejected.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from .formats import PREFERENCE_FORMATS, PreferenceFormat, _side, detect, get_format, split_hh  # noqa: F401 (re-export)
from .holdout import cap_eval_file, holdout
from .io import DataError, Record, read_records


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
    unused: list[dict] = field(default_factory=list)

    @property
    def stats(self) -> dict:
        return {"read": self.read, "train": len(self.train), "eval": len(self.eval), "rejected": len(self.rejects),
                "unused_eval": len(self.unused)}


def detect_preference_format(d: dict) -> str:
    return detect(d, "preference").name


def to_pair(rec: Record, fmt: str, system_prompt: str | None = None) -> Pair:
    """One record -> Pair; raise ValueError with the reason when it is not a usable pair."""
    f = get_format(fmt, "preference")
    assert isinstance(f, PreferenceFormat)
    prompt = f.prompt_messages(rec.data)
    chosen, rejected = f.sides(rec.data)
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
    pairs, read, malformed = [], 0, []
    for rec in read_records(path, on_error="collect", errors=malformed):
        read += 1
        if fmt == "auto":
            fmt = detect_preference_format(rec.data)
        if fmt == "unpaired":
            raise DataError(f"{rec.where}: unpaired examples (prompt/completion/label) train with train.stage: kto; "
                            "this stage needs chosen/rejected pairs")
        if fmt not in PREFERENCE_FORMATS:
            raise DataError(f"data.format: '{fmt}' is not a preference format ({', '.join(PREFERENCE_FORMATS)})")
        try:
            pairs.append(to_pair(rec, fmt, system_prompt))
        except (ValueError, AttributeError, TypeError) as e:
            if isinstance(e, DataError):
                raise
            rejects.append({"source": rec.source, "line": rec.line, "reason": str(e)})
        if limit and len(pairs) >= limit:
            break
    read += len(malformed)  # malformed lines are read (and rejected) too
    rejects.extend(malformed)
    if not pairs:
        raise DataError(f"{path}: no usable preference pairs ({len(rejects)} rejected)")
    return pairs, read


def load_preference_data(data_cfg, seed: int) -> PreferenceData:
    """data.train (+ data.eval, or the common hold-out of data.train) as pairs."""
    if not data_cfg.train:
        raise DataError("data.train is not set: give a preference file (prompt/chosen/rejected, ShareGPT, hh-rlhf)")
    rejects: list[dict] = []
    train, read = read_pairs(data_cfg.train, data_cfg.format, data_cfg.system_prompt, rejects, data_cfg.max_samples)
    unused: list[dict] = []
    if data_cfg.eval:
        ev, n = read_pairs(data_cfg.eval, data_cfg.format, data_cfg.system_prompt, rejects)
        read += n
        cap = cap_eval_file(len(ev), data_cfg.max_eval_samples, seed)
        # the same {source, line, reason} rows as every other loader's unused_eval.jsonl
        unused = [{"source": ev[i].where.rsplit(":", 1)[0], "line": int(ev[i].where.rsplit(":", 1)[1]),
                   "reason": f"beyond data.max_eval_samples={data_cfg.max_eval_samples}"} for i in cap.unused]
        ev = [ev[i] for i in cap.used]
    else:
        h = holdout(len(train), data_cfg.eval_ratio, seed, data_cfg.max_eval_samples)
        train, ev = [train[i] for i in h.train], [train[i] for i in h.eval]
    if not train:
        raise DataError(f"{data_cfg.train}: no training pairs left after the eval hold-out")
    return PreferenceData(train, ev, rejects, read, unused)


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


def prepare_pairs(data_cfg, tok, template, seed: int, max_prompt_length: int, prompts_only: bool = False):
    """Read, render and length-filter the preference pairs of a run.

    Returns (train, eval, stats, rejects, unused): rendered pairs, the counts (read = train + eval +
    rejected, with too-long pairs among the rejected) and the records to list in the run folder.
    `prompts_only`: the stage generates its own responses (ppo), so only the prompt length matters.
    """
    data = load_preference_data(data_cfg, seed)
    train = [render_pair(p, template) for p in data.train]
    ev = [render_pair(p, template) for p in data.eval]
    max_prompt = min(max_prompt_length, data_cfg.max_length - 1)
    max_total = 10 ** 9 if prompts_only else data_cfg.max_length
    train, long_t = truncate_pairs(train, tok, max_total, max_prompt)
    ev, long_e = truncate_pairs(ev, tok, max_total, max_prompt)
    rejects = data.rejects + [{"source": d["where"].rsplit(":", 1)[0], "line": int(d["where"].rsplit(":", 1)[1]),
                               "reason": d["reason"]} for d in long_t + long_e]
    stats = {**data.stats, "too_long": len(long_t) + len(long_e), "train": len(train), "eval": len(ev),
             "rejected": len(rejects)}
    stats["accounting"] = (f"{stats['read']} read = train {stats['train']} + eval {stats['eval']} + rejected "
                           f"{stats['rejected']} (too long {stats['too_long']})"
                           + (f" + unused eval {stats['unused_eval']}" if stats["unused_eval"] else ""))
    if not train:
        raise DataError("no training pairs fit data.max_length / max_prompt_length; raise them")
    return train, ev, stats, rejects, data.unused


@dataclass
class Labelled:
    """One reply with a desirable/undesirable label, rendered (KTO)."""

    prompt: str
    completion: str
    desirable: bool
    where: str = ""


def prepare_unpaired(data_cfg, tok, template, seed: int, max_prompt_length: int):
    """KTO's examples: unpaired records as they are, preference pairs split into a desirable and an
    undesirable reply. Returns (train, eval, eval_pairs, stats, rejects, unused); eval_pairs holds the
    held-out pairs when the data is paired (for the common pair accuracy), else []."""
    first = next(iter(read_records(data_cfg.train, on_error="collect", errors=[])), None)
    fmt = data_cfg.format
    if fmt == "auto" and first is not None:
        fmt = detect_preference_format(first.data)
    if fmt != "unpaired":
        train, ev, stats, rejects, unused = prepare_pairs(data_cfg, tok, template, seed, max_prompt_length)
        split = lambda ps: [x for p in ps for x in (Labelled(p.prompt, p.chosen, True, p.where),  # noqa: E731
                                                     Labelled(p.prompt, p.rejected, False, p.where))]
        return split(train), split(ev), ev, {**stats, "examples": 2 * stats["train"]}, rejects, unused
    f = get_format("unpaired", "preference")
    rejects: list[dict] = []
    rows: list[Labelled] = []
    read = 0
    for rec in read_records(data_cfg.train, on_error="collect", errors=rejects):
        read += 1
        try:
            prompt = f.prompt_messages(rec.data)
            if data_cfg.system_prompt and not any(m["role"] == "system" for m in prompt):
                prompt.insert(0, {"role": "system", "content": data_cfg.system_prompt})
            completion = _side(rec.data.get("completion")).strip()
            if not completion:
                raise ValueError("empty completion")
            text_prompt = template.prompt(prompt)
            full = template.render(prompt + [{"role": "assistant", "content": completion}])
            done = full.text[len(text_prompt):full.spans[-1][1]] if full.text.startswith(text_prompt) else completion
            n = len(tok(text_prompt, add_special_tokens=False)["input_ids"])
            if n > min(max_prompt_length, data_cfg.max_length - 1):
                raise ValueError(f"prompt has {n} tokens > max_prompt_length={max_prompt_length}")
            rows.append(Labelled(text_prompt, done, f.desirable(rec.data), rec.where))
        except (ValueError, TypeError, AttributeError) as e:
            rejects.append({"source": rec.source, "line": rec.line, "reason": str(e)})
        if data_cfg.max_samples and len(rows) >= data_cfg.max_samples:
            break
    h = holdout(len(rows), data_cfg.eval_ratio, seed, data_cfg.max_eval_samples,
                key=lambda i: rows[i].desirable)
    train, ev = [rows[i] for i in h.train], [rows[i] for i in h.eval]
    stats = {"read": read, "train": len(train), "eval": len(ev), "rejected": len(rejects), "unused_eval": 0,
             "desirable": sum(r.desirable for r in train), "undesirable": sum(not r.desirable for r in train)}
    stats["accounting"] = f"{read} read = train {len(train)} + eval {len(ev)} + rejected {len(rejects)}"
    if not train:
        raise DataError(f"{data_cfg.train}: no usable unpaired examples ({len(rejects)} rejected)")
    return train, ev, [], stats, rejects, []
