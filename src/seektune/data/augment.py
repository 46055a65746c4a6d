"""`seektune data augment`: EDA-style edits and back-translation of the prompt side of records.

Edits (Wei & Zou's EDA, with a user dictionary so they work for Chinese words as well as English):
synonym replacement, random insertion of a synonym, random swap and random deletion, each with a
rate. Back-translation sends the text through a local translation or instruction model (HF folder
or preset) to a pivot language and back. Only prompts (questions, instructions, classification
text) are changed; answers stay as written. Each source record is written unchanged followed by
`copies` augmented copies, marked `_augmented: {from, digest, ops}`; `data split` keeps them (and
their source record) in train, so augmented text never reaches validation or test.
"""

from __future__ import annotations

import json
import random
import re
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field

from .common import kind_of, read_all, write_records, write_summary
from .dedup import exact_key
from .io import DataError
from .progress import record_progress
from .formats import content_text, map_prompts


class AugmentOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")
    synonyms: str | None = Field(None, description="synonym dictionary: JSON {word: [synonyms]} or TSV word<TAB>syn1,syn2")
    synonym_rate: float = Field(0.1, ge=0, le=1, description="share of words replaced by a synonym")
    insert_rate: float = Field(0.0, ge=0, le=1, description="share of words: insert a synonym of a random word")
    swap_rate: float = Field(0.0, ge=0, le=1, description="share of words: swap two random words")
    delete_rate: float = Field(0.0, ge=0, le=1, description="probability of deleting each word")
    copies: int = Field(1, ge=1, le=100, description="augmented copies per record")
    back_translate: str | None = Field(None, description="local model (preset or HF folder) for back-translation")
    back_translate_return: str | None = Field(
        None, description="one-direction translation models only: the model translating the pivot back")
    pivot: str = Field("English", description="pivot language for back-translation")
    source_language: str = Field("Chinese", description="language of the data")
    max_new_tokens: int = Field(128, ge=1)
    seed: int = 42
    kind: str = "auto"


def load_synonyms(path: str | Path) -> dict[str, list[str]]:
    p = Path(path)
    if not p.exists():
        raise DataError(f"synonym dictionary not found: {p}")
    text = p.read_text(encoding="utf-8-sig")
    out: dict[str, list[str]] = {}
    if p.suffix.lower() == ".json":
        try:
            obj = json.loads(text)
        except json.JSONDecodeError as e:
            raise DataError(f"{p}:{e.lineno}: invalid JSON ({e.msg})") from None
        if not isinstance(obj, dict):
            raise DataError(f"{p}: expected a JSON object word -> [synonyms]")
        for k, v in obj.items():
            out[k] = [v] if isinstance(v, str) else [str(x) for x in v]
    else:
        for i, line in enumerate(text.splitlines(), start=1):
            if not line.strip() or line.startswith("#"):
                continue
            parts = line.split("\t")
            if len(parts) < 2:
                raise DataError(f"{p}:{i}: expected 'word<TAB>synonym1,synonym2'")
            out[parts[0].strip()] = [s.strip() for s in re.split(r"[,，;；\t]", "\t".join(parts[1:])) if s.strip()]
    # synonyms are symmetric: each member of a group can stand for the others
    sym: dict[str, set[str]] = {}
    for k, vs in out.items():
        group = {k, *vs}
        for w in group:
            sym.setdefault(w, set()).update(group - {w})
    return {k: sorted(v) for k, v in sym.items() if v}


class EDA:
    """Word-level edits. Words: dictionary entries (longest first), ASCII words, single CJK characters."""

    def __init__(self, synonyms: dict[str, list[str]] | None, opts: AugmentOptions):
        self.syn = synonyms or {}
        self.opts = opts
        alts = sorted(self.syn, key=len, reverse=True)
        dict_pat = "|".join(re.escape(a) for a in alts)
        self.unit = re.compile((f"(?:{dict_pat})|" if dict_pat else "") + r"[A-Za-z0-9_'\-]+|\s+|.", re.S)

    def units(self, text: str) -> list[str]:
        return self.unit.findall(text)

    @staticmethod
    def _is_word(u: str) -> bool:
        return bool(u.strip()) and not re.fullmatch(r"[^\w]+", u)

    @staticmethod
    def _join(us: list[str]) -> str:
        out = ""
        for u in us:  # keep ASCII words apart when an edit put two side by side
            if out and re.match(r"[A-Za-z0-9]", u) and re.search(r"[A-Za-z0-9]$", out):
                out += " "
            out += u
        return out

    def __call__(self, text: str, rng: random.Random) -> tuple[str, list[str]]:
        us = self.units(text)
        words = [i for i, u in enumerate(us) if self._is_word(u)]
        if not words:
            return text, []
        ops = []
        n = lambda rate: max(1, round(rate * len(words))) if rate > 0 else 0  # noqa: E731
        o = self.opts
        cands = [i for i in words if us[i] in self.syn]
        if o.synonym_rate and cands:
            for i in rng.sample(cands, min(len(cands), n(o.synonym_rate))):
                us[i] = rng.choice(self.syn[us[i]])
            ops.append("synonym")
        if o.insert_rate and cands:
            for _ in range(n(o.insert_rate)):
                w = rng.choice(self.syn[us[rng.choice(cands)]])
                us.insert(rng.randrange(len(us) + 1), w)
            ops.append("insert")
        words = [i for i, u in enumerate(us) if self._is_word(u)]
        if o.swap_rate and len(words) >= 2:
            for _ in range(n(o.swap_rate)):
                a, b = rng.sample(words, 2)
                us[a], us[b] = us[b], us[a]
            ops.append("swap")
        if o.delete_rate and len(words) >= 2:
            drop = {i for i in words if rng.random() < o.delete_rate}
            if len(drop) == len(words):
                drop.discard(rng.choice(words))
            if drop:
                us = [u for i, u in enumerate(us) if i not in drop]
                ops.append("delete")
        return self._join(us), ops


class BackTranslator:
    """Translate to a pivot language and back (greedy decoding, so reproducible).

    Two kinds of local model work: an instruction/causal LM (one model, asked to translate each
    way), or one-direction translation models (encoder-decoder, Marian style): `back_translate`
    translates into the pivot and `back_translate_return` translates back.
    """

    def __init__(self, model_name: str, opts: AugmentOptions):
        self.opts = opts
        self.forward = _load_translator(model_name)
        if self.forward[2]:  # encoder-decoder: a fixed direction per model
            if not opts.back_translate_return:
                raise DataError(f"{model_name} is a one-direction translation model: also give "
                                "back_translate_return (the model translating the pivot back)")
            self.back = _load_translator(opts.back_translate_return)
        else:
            self.back = self.forward
        self.model, self.tok = self.forward[0], self.forward[1]  # kept for callers that inspect them

    @staticmethod
    def _prompt(tok, text: str, lang: str) -> str:
        ask = f"Translate the following text into {lang}. Reply with the translation only.\n\n{text}"
        if getattr(tok, "chat_template", None):
            return tok.apply_chat_template([{"role": "user", "content": ask}], tokenize=False,
                                           add_generation_prompt=True)
        return f"{ask}\n\n{lang}:"

    def translate(self, texts: list[str], lang: str, which=None) -> list[str]:
        import torch

        model, tok, seq2seq = which or self.forward
        inputs = texts if seq2seq else [self._prompt(tok, t, lang) for t in texts]
        enc = tok(inputs, return_tensors="pt", padding=True, truncation=seq2seq,
                  **({} if seq2seq else {"add_special_tokens": False}))
        with torch.no_grad():
            out = model.generate(**enc, max_new_tokens=self.opts.max_new_tokens, do_sample=False,
                                 pad_token_id=tok.pad_token_id)
        gen = out if seq2seq else out[:, enc["input_ids"].shape[1]:]  # a causal LM echoes its prompt
        return [x.strip() for x in tok.batch_decode(gen, skip_special_tokens=True)]

    def __call__(self, text: str) -> str:
        pivot = self.translate([text], self.opts.pivot, self.forward)[0]
        return self.translate([pivot], self.opts.source_language, self.back)[0] if pivot else ""


def _load_translator(name: str):
    """(model, tokenizer, is_encoder_decoder) for a preset, HF folder or GGUF file."""
    from ..models.loader import ModelSpec, load_model, load_tokenizer
    from ..models.presets import ModelError, resolve_model_path

    path = resolve_model_path(name, log=lambda *_: None)
    if not path.endswith(".gguf"):
        from transformers import AutoConfig, AutoModelForSeq2SeqLM

        try:
            is_s2s = bool(getattr(AutoConfig.from_pretrained(path), "is_encoder_decoder", False))
        except (OSError, ValueError) as e:
            raise ModelError(f"cannot read a model config from {path}: {e}") from None
        if is_s2s:
            tok = load_tokenizer(ModelSpec(name_or_path=name), path)
            model = AutoModelForSeq2SeqLM.from_pretrained(path, dtype="float32").eval()
            return model, tok, True
    model, tok, _ = load_model(ModelSpec(name_or_path=name), log=lambda *_: None)
    tok.padding_side = "left"  # generation continues on the right
    return model.eval(), tok, False


def augment_records(records, opts: AugmentOptions, stats: dict, show_progress: bool = True,
                    translator: BackTranslator | None = None):
    """Yield rows: each source record, then its augmented copies; fills `stats` with the counts."""
    eda = EDA(load_synonyms(opts.synonyms) if opts.synonyms else None, opts)
    bt = translator or (BackTranslator(opts.back_translate, opts) if opts.back_translate else None)
    rng = random.Random(opts.seed)
    edits = any((opts.synonym_rate and opts.synonyms, opts.insert_rate and opts.synonyms, opts.swap_rate,
                 opts.delete_rate))
    if not edits and bt is None:
        raise DataError("nothing to do: give --synonyms (with --synonym-rate/--insert-rate), --swap-rate, "
                        "--delete-rate or --back-translate")
    stats.update(source=0, augmented=0, unchanged_skipped=0)
    with record_progress("augment", show_progress, total=len(records)) as advance:
        for rec in records:
            kind = kind_of(rec, opts.kind)
            stats["source"] += 1
            yield rec.data
            digest = exact_key(content_text(rec.data, kind)).hex()
            seen = {json.dumps(rec.data, sort_keys=True, ensure_ascii=False)}
            for c in range(opts.copies):
                ops: list[str] = []

                def edit(text: str) -> str:
                    t = text
                    if bt is not None and c == 0:  # the model is deterministic: one back-translated copy
                        back = bt(t)
                        if back:
                            t = back
                            ops.append("back_translation")
                    if edits:
                        t, o = eda(t, rng)
                        ops.extend(o)
                    return t

                new = map_prompts(rec.data, kind, edit)
                key = json.dumps(new, sort_keys=True, ensure_ascii=False)
                if key in seen:
                    stats["unchanged_skipped"] += 1
                    continue
                seen.add(key)
                new["_augmented"] = {"from": f"{Path(rec.source).name}:{rec.line}", "digest": digest,
                                     "ops": sorted(set(ops))}
                stats["augmented"] += 1
                yield new
            advance()


def augment_file(in_path, out_path, opts: AugmentOptions, show_progress: bool = True, log=print) -> dict:
    records, rejects = read_all(in_path)
    stats: dict = {}
    n = write_records(out_path, augment_records(records, opts, stats, show_progress))
    stem = Path(out_path).with_suffix("")
    if rejects:
        write_records(f"{stem}.rejects.jsonl", rejects)
    summary = {"input": str(in_path), "output": str(out_path), "read": len(records) + len(rejects),
               "rejected": len(rejects), "written": n, **stats, "options": opts.model_dump()}
    write_summary(f"{stem}.summary.json", summary)
    return summary
