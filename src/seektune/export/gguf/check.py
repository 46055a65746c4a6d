"""Does the GGUF still compute what the merged model did: logits, greedy answers, token ids, pre-tokenizer.

With llama-cpp-python installed (`make llama-cpp`) the GGUF is run by llama.cpp itself, the engine
Ollama runs: its tokenizer gives the token ids, and its logits at every position of the export's
fixed prompts and its greedy answers are compared with the merged model's. That covers every
architecture llama.cpp runs, DeepSeek-V2/V3 (`deepseek2`) included, and k-quants.
Without it, llama and qwen2 GGUFs are reloaded with transformers' GGUF loader instead, and the token
ids are emulated the way llama.cpp tokenizes (control and user-defined tokens of the GGUF vocabulary
matched whole, the text between them through the GGUF's BPE; transformers' GGUF tokenizer does not
mark DeepSeek's `<｜User｜>` tokens special, llama.cpp does); other architectures skip the logits check
with the command that installs llama.cpp. `tokenizer.ggml.pre` is always read back with the gguf
reader and compared with the split rules of the model's tokenizer.json.
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

from ..verify import compare_logits, prompt_logits
from . import llamacpp
from .convert import PRE_RULES, split_regexes

TRANSFORMERS_ARCHS = ("llama", "qwen2")
# relative logit tolerance per GGUF type (times max(1, max |logit|)), as export's REL_TOL
REL_TOL = {"f32": 1e-4, "f16": 2e-2, "bf16": 1e-1, "q8_0": 1e-1, **{q: 3e-1 for q in llamacpp.KQUANTS}}
_CONTROL, _USER_DEFINED = 3, 4


@dataclass
class GGUFMeta:
    architecture: str
    pre: str | None
    add_bos: bool
    tokens: list[str]
    token_types: list[int]
    tensor_names: list[str]
    tensor_types: dict[str, int]


def read_meta(path: Path) -> GGUFMeta:
    """Header, tokenizer and tensor names through the (PyPI) gguf reader."""
    from gguf import GGUFReader

    r = GGUFReader(str(path))

    def val(key, default=None):
        f = r.fields.get(key)
        return f.contents() if f is not None else default

    types: dict[str, int] = {}
    for t in r.tensors:
        types[t.tensor_type.name] = types.get(t.tensor_type.name, 0) + 1
    return GGUFMeta(val("general.architecture"), val("tokenizer.ggml.pre"), bool(val("tokenizer.ggml.add_bos_token", False)),
                    list(val("tokenizer.ggml.tokens", [])), list(val("tokenizer.ggml.token_type", [])),
                    [t.name for t in r.tensors], types)


def pre_check(meta: GGUFMeta, model_dir: Path) -> tuple[bool | None, str]:
    """(ok, reason): True when the GGUF's pre-tokenizer applies tokenizer.json's split regexes."""
    have = split_regexes(model_dir)
    if meta.pre is None:
        return False, "no tokenizer.ggml.pre in the GGUF"
    if have is None or meta.pre not in PRE_RULES:
        return None, f"tokenizer.ggml.pre={meta.pre!r}: seektune knows no split rules to compare it with"
    if PRE_RULES[meta.pre] == have:
        return True, f"tokenizer.ggml.pre={meta.pre!r} applies the tokenizer.json split regexes"
    return False, (f"tokenizer.ggml.pre={meta.pre!r} splits text differently from tokenizer.json "
                   f"({have!r}); llama.cpp would tokenize differently from training")


def llama_cpp_style_ids(gguf_tok, meta: GGUFMeta, text: str) -> list[int]:
    """Control/user-defined tokens matched whole (longest first), the rest through the GGUF's BPE."""
    special = {t: i for i, (t, ty) in enumerate(zip(meta.tokens, meta.token_types)) if ty in (_CONTROL, _USER_DEFINED)}
    present = sorted((t for t in special if t and t in text), key=len, reverse=True)
    if not present:
        return gguf_tok(text, add_special_tokens=False)["input_ids"]
    ids: list[int] = []
    for piece in re.split("(" + "|".join(map(re.escape, present)) + ")", text):
        if piece in special:
            ids.append(special[piece])
        elif piece:
            ids += gguf_tok(piece, add_special_tokens=False)["input_ids"]
    return ids


@torch.no_grad()
def greedy(model, tok, prompt: str, n: int) -> list[int]:
    ids = tok(prompt, add_special_tokens=False, return_tensors="pt")["input_ids"]
    out = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=n, do_sample=False,
                         pad_token_id=tok.pad_token_id)
    return out[0, ids.shape[1]:].tolist()


@dataclass
class GGUFCheck:
    architecture: str
    quant: str
    tensors: int
    tensor_types: dict
    pre: str | None
    pre_ok: bool | None
    pre_reason: str
    logits: dict | None = None
    greedy_same: int | None = None
    greedy_prompts: int | None = None
    token_ids_same: bool | None = None
    token_ids_note: str = ""
    engine: str | None = None
    decisive_flips: int | None = None
    skipped: str | None = None
    warnings: list[str] = field(default_factory=list)

    @property
    def passed(self) -> bool:
        """f32/f16 must agree: logits within tolerance and no top-1 change where the merged model's top-2 margin
        exceeds that tolerance (llama.cpp's f16 kernels round activations too, so near-ties of a random tiny
        model may flip; a decisive flip is a bug). bf16/q8_0/k-quant rounding only warns, as export's fp16 does."""
        ok = self.pre_ok is not False and self.token_ids_same is not False
        if self.logits is not None and self.quant in ("f32", "f16"):
            ok = ok and self.logits["passed"] and self.decisive_flips == 0
        return ok

    def lines(self) -> list[str]:
        out = [f"gguf: {self.architecture}, {self.tensors} tensors {self.tensor_types}; {self.pre_reason}"]
        if self.logits is not None:
            lg = self.logits
            out.append(f"gguf vs merged ({self.quant}, {self.engine}, {lg['prompts']} prompts): max |logit diff| "
                       f"{lg['max_abs_diff']:.3g} (tolerance {lg['tolerance']:.3g}), top-1 agreement "
                       f"{100 * lg['top1_agreement']:.1f}% ({self.decisive_flips} changes beyond near-ties), same greedy answers {self.greedy_same}/{self.greedy_prompts}, "
                       f"token ids {'identical' if self.token_ids_same else 'DIFFER'}")
        if self.skipped:
            out.append(f"gguf logits/greedy check skipped: {self.skipped}")
        return out

    def to_json(self) -> dict:
        return {**asdict(self), "passed": self.passed}


def check_gguf(path: Path, quant: str, model, tok, prompts: list[str], model_dir: Path,
               greedy_tokens: int = 8, meta: GGUFMeta | None = None) -> GGUFCheck:
    """Compare the GGUF at `path` with the merged fp32 `model` (its HF folder: `model_dir`)."""
    meta = meta or read_meta(path)
    ok, reason = pre_check(meta, model_dir)
    res = GGUFCheck(meta.architecture, quant, len(meta.tensor_names), meta.tensor_types, meta.pre, ok, reason)
    if ok is False:
        res.warnings.append(reason)
    if llamacpp.missing() is None:
        _check_with_llama_cpp(res, path, model, tok, prompts, greedy_tokens)
    elif meta.architecture in TRANSFORMERS_ARCHS:
        _check_with_transformers(res, path, meta, model, tok, prompts, greedy_tokens)
    else:
        res.skipped = (f"transformers cannot load '{meta.architecture}' GGUFs and llama.cpp is not installed: "
                       f"{llamacpp.INSTALL}")
        return res
    if not res.logits["passed"]:
        res.warnings.append(f"{quant} moved logits by {res.logits['max_abs_diff']:.3g} (> {res.logits['tolerance']:.3g}); "
                            f"top-1 agreement {100 * res.logits['top1_agreement']:.1f}%")
    if not res.token_ids_same:
        res.warnings.append("the GGUF's tokenizer gives other token ids than the HF tokenizer on the verification texts")
    return res


def _compare(res: GGUFCheck, ref: list[torch.Tensor], got: list[torch.Tensor]) -> None:
    """Logit agreement, and the top-1 changes at positions whose top-2 margin exceeds the tolerance."""
    v = compare_logits(ref, got, REL_TOL[res.quant])
    flips = 0
    for a, b in zip(ref, got):
        top2 = a.topk(2, dim=-1).values
        decisive = (top2[:, 0] - top2[:, 1]) > v.tolerance
        flips += int(((a.argmax(-1) != b.argmax(-1)) & decisive).sum())
    res.logits, res.decisive_flips = asdict(v), flips


def _texts(prompts: list[str]) -> list[str]:
    return prompts + ["Plain text, numbers 12345 and 中文 mixed; 'quotes' too."]


def _check_with_llama_cpp(res: GGUFCheck, path: Path, model, tok, prompts, greedy_tokens: int) -> None:
    """Logits, greedy answers and token ids from llama.cpp itself, on the HF tokenizer's ids."""
    hf_ids = [tok(p, add_special_tokens=False)["input_ids"] for p in prompts]
    n_ctx = max(64, max(len(i) for i in hf_ids) + greedy_tokens + 8)
    r = llamacpp.Runner(path, n_ctx=n_ctx)
    try:
        got = [torch.from_numpy(r.logits(ids)) for ids in hf_ids]
        _compare(res, prompt_logits(model, tok, prompts), got)
        same = [greedy(model, tok, p, greedy_tokens) == r.greedy(ids, greedy_tokens) for p, ids in zip(prompts, hf_ids)]
        res.token_ids_same = all(r.token_ids(t) == tok(t, add_special_tokens=False)["input_ids"] for t in _texts(prompts))
    finally:
        r.close()
    res.greedy_same, res.greedy_prompts = sum(same), len(same)
    res.engine = f"llama.cpp (llama-cpp-python {llamacpp.PIN})"
    res.token_ids_note = "llama.cpp's own tokenizer (special tokens parsed) vs the HF tokenizer, on the prompts and a mixed-script text"


def _check_with_transformers(res: GGUFCheck, path: Path, meta: GGUFMeta, model, tok, prompts, greedy_tokens: int) -> None:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    g_model = AutoModelForCausalLM.from_pretrained(str(path.parent), gguf_file=path.name, dtype=torch.float32).eval()
    g_tok = AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name)
    _compare(res, prompt_logits(model, tok, prompts), prompt_logits(g_model, tok, prompts))
    same = [greedy(model, tok, p, greedy_tokens) == greedy(g_model, tok, p, greedy_tokens) for p in prompts]
    res.greedy_same, res.greedy_prompts = sum(same), len(same)
    res.token_ids_same = all(llama_cpp_style_ids(g_tok, meta, t) == tok(t, add_special_tokens=False)["input_ids"]
                             for t in _texts(prompts))
    res.engine = "transformers' GGUF loader (llama.cpp not installed)"
    res.token_ids_note = ("GGUF vocabulary through transformers' GGUF tokenizer, control tokens matched whole as "
                          "llama.cpp does, vs the HF tokenizer, on the prompts and a mixed-script text")
