"""`seektune export`: merge LoRA into the base and save a folder plain transformers loads.

The export folder holds safetensors weights in the requested dtype, the tokenizer and a chat
template that renders exactly what the run trained on, plus export.json with the verification:
the exported model is reloaded from disk with plain transformers and its logits are compared with
the adapter model's on a few prompts. A merge that silently drops a target (it happens, see the
DeepSeek notes) shows up there as a large difference instead of in production.
"""

from __future__ import annotations

import json
import shutil
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

from ..data.templates import TokenizerTemplate, get_template
from ..utils.console import log, warn
from .source import ExportError, Source, load_causal_lm, load_tokenizer_for, resolve_source
from .verify import Verification, compare_logits, folder_size, prompt_logits  # noqa: F401 (re-export)

DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
# relative tolerance on logits (times max |logit|) for each export dtype
REL_TOL = {"fp32": 1e-4, "fp16": 2e-2, "bf16": 1e-1}

VERIFY_CONVERSATIONS = [
    [{"role": "user", "content": "What should I do about a mild headache?"}],
    [{"role": "system", "content": "You are a concise assistant."},
     {"role": "user", "content": "Summarise: the meeting moved to Tuesday at 10."}],
    [{"role": "user", "content": "你好，请简单介绍一下你自己。"}],
]
# a past turn with reasoning: the exported Jinja must render it as training did
REASONING_TURN = {"role": "assistant", "content": "Rest and water.", "reasoning_content": "A mild headache: no red flags."}

@dataclass
class ExportResult:
    out: str
    source: str
    mode: str
    dtype: str
    size_bytes: int
    verification: dict | None = None
    chat_template: str = ""
    notes: list[str] = field(default_factory=list)


def verify_prompts(tok, template_name: str) -> list[str]:
    template = get_template(template_name, tok)
    return [template.prompt(c) for c in VERIFY_CONVERSATIONS]


def attach_chat_template(tok, template_name: str) -> tuple[str, list[str]]:
    """Make `tok.chat_template` render what training rendered; return (kind, notes)."""
    notes: list[str] = []
    template = get_template(template_name, tok)
    if isinstance(template, TokenizerTemplate):
        return "tokenizer's own", notes
    if not template.jinja:
        notes.append(f"no Jinja form of the built-in '{template.name}' template; the tokenizer keeps its own")
        return "tokenizer's own (differs from training)", notes
    tok.chat_template = template.jinja
    for conv in VERIFY_CONVERSATIONS:
        for gen in (True, False):
            for msgs in ((conv if gen else conv + [{"role": "assistant", "content": "ok"}]),
                         conv + [REASONING_TURN] + ([{"role": "user", "content": "And then?"}] if gen else [])):
                want = template.render(msgs, add_generation_prompt=gen).text
                got = tok.apply_chat_template(msgs, tokenize=False, add_generation_prompt=gen)
                if got != want:
                    raise ExportError(f"internal: Jinja chat template '{template.name}' renders {got!r}, "
                                      f"training rendered {want!r}")
    return f"built-in {template.name} (as Jinja)", notes


def _copy_adapter(src: Source, out: Path, dtype: str) -> None:
    from safetensors.torch import load_file, save_file

    for f in src.path.iterdir():
        if f.name.startswith("adapter_") or f.name == "README.md":
            if f.name.endswith(".safetensors") and dtype != "fp32":
                tensors = {k: v.to(DTYPES[dtype]) if v.is_floating_point() else v for k, v in load_file(str(f)).items()}
                save_file(tensors, str(out / f.name), metadata={"format": "pt"})
            else:
                shutil.copy2(f, out / f.name)


def prepare_out_dir(out: str | Path, overwrite: bool) -> Path:
    """An empty output folder: refuse to mix a new export into an old one unless --overwrite."""
    out = Path(out)
    if out.exists() and any(out.iterdir()):
        if not overwrite:
            raise ExportError(f"--out {out} exists and is not empty (use --overwrite)")
        shutil.rmtree(out)
    out.mkdir(parents=True, exist_ok=True)
    return out


def export_run(target: str | Path, out: str | Path, dtype: str = "fp32", adapter_only: bool = False,
               verify: bool = True, quantize: str | None = None, overwrite: bool = False) -> ExportResult:
    """Export `target` into `out`; with `quantize`, the merged model is also quantised there."""
    if dtype not in DTYPES:
        raise ExportError(f"--dtype must be one of {', '.join(DTYPES)} (got {dtype!r})")
    src = resolve_source(target)
    out = prepare_out_dir(out, overwrite)
    t0 = time.time()
    log(f"export: {src.describe()} -> {out}")

    if adapter_only:
        if src.kind != "adapter":
            raise ExportError(f"--adapter-only: {src.path} holds a full model, not an adapter")
        if quantize:
            raise ExportError("--adapter-only cannot be combined with --quantize")
        _copy_adapter(src, out, dtype)
        tok = load_tokenizer_for(src)
        kind, notes = attach_chat_template(tok, src.template)
        tok.save_pretrained(str(out))
        notes.append(f"load with peft: PeftModel.from_pretrained(base, '{out}'); base = {src.base_path}")
        res = ExportResult(str(out), src.describe(), "adapter-only", dtype, folder_size(out), None, kind, notes)
        _finish(res, out, t0)
        return res

    if src.kind == "int8":
        raise ExportError(f"{src.path} is already an INT8 export; export the run it came from")
    model, tok = load_causal_lm(src, merge=False)
    prompts = verify_prompts(tok, src.template)
    ref = prompt_logits(model, tok, prompts) if verify else None
    notes: list[str] = []
    if src.kind == "adapter":
        if getattr(model.peft_config["default"], "peft_type", None) and \
                str(model.peft_config["default"].peft_type) not in ("PeftType.LORA", "LORA"):
            raise ExportError(f"{src.path}: a {model.peft_config['default'].peft_type} adapter cannot be merged; "
                              "use --adapter-only")
        model = model.merge_and_unload()
        notes.append("LoRA merged into the base weights")
    kind, tnotes = attach_chat_template(tok, src.template)
    notes += tnotes
    model.config.use_cache = True
    if hasattr(model.config, "name_or_path"):
        model.config.name_or_path = src.name
    model.to(DTYPES[dtype]).save_pretrained(str(out), safe_serialization=True)
    tok.save_pretrained(str(out))
    ver = None
    if verify:
        from transformers import AutoModelForCausalLM

        reloaded = AutoModelForCausalLM.from_pretrained(str(out), dtype=torch.float32).eval()
        ver = compare_logits(ref, prompt_logits(reloaded, tok, prompts), REL_TOL[dtype])
        log(ver.line(dtype))
        del reloaded
    res = ExportResult(str(out), src.describe(), "merged" if src.kind == "adapter" else "model", dtype,
                       folder_size(out), asdict(ver) if ver else None, kind, notes)
    if quantize:
        from .quantize import quantize_export

        model.to(torch.float32)
        qres = quantize_export(model, tok, out / quantize, quantize, ref_logits=ref, prompts=prompts)
        res.notes.append(f"{quantize} model in {out / quantize} ({qres['size_bytes'] / 1e6:.1f} MB)")
        res.verification = {**(res.verification or {}), "quantized": qres.get("verification")}
    _finish(res, out, t0)
    if ver is not None and not ver.passed and dtype == "fp32":
        raise ExportError(f"verification failed: the exported model's logits differ from the adapter model's by "
                          f"{ver.max_abs_diff:.3g} (tolerance {ver.tolerance:.3g}); see {out / 'export.json'}")
    if ver is not None and not ver.passed:
        warn(f"{dtype} rounding moved logits by {ver.max_abs_diff:.3g} (> {ver.tolerance:.3g}); "
             f"top-1 agreement {100 * ver.top1_agreement:.1f}%")
    return res


def _finish(res: ExportResult, out: Path, t0: float) -> None:
    (out / "export.json").write_text(json.dumps(asdict(res), indent=2, ensure_ascii=False), encoding="utf-8")
    for n in res.notes:
        log(f"note: {n}")
    log(f"exported {res.mode} ({res.dtype}, chat template: {res.chat_template}) to {out}: "
        f"{res.size_bytes / 1e6:.1f} MB in {time.time() - t0:.1f}s")
