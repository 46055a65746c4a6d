"""`seektune export RUN --out DIR --format gguf`: merged folder -> GGUF -> checked -> Modelfile.

DIR/hf is the ordinary merged export (fp32, verified against the adapter model as always); the
converter reads it, DIR/NAME.QUANT.gguf is checked against it (check.py) and DIR/Modelfile is
written with the template check (modelfile.py). Everything measured goes to DIR/gguf_verify.json.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import torch

from ...data.templates import TokenizerTemplate, get_template
from ...utils.console import log, warn
from ..errors import ExportError
from ..source import resolve_source
from .check import check_gguf, read_meta
from .convert import NEEDS_QUANTIZER, OUTTYPES, convert
from .modelfile import build_modelfile
from .tools import ToolsMissing, locate

NUM_CTX_CAP = 32768  # Ollama allocates the KV cache for num_ctx up front; raise it in the Modelfile if needed


def _num_ctx(cfg) -> tuple[int, str | None]:
    n = int(getattr(cfg, "max_position_embeddings", 0) or 4096)
    if n > NUM_CTX_CAP:
        return NUM_CTX_CAP, f"num_ctx {NUM_CTX_CAP} (the model allows {n}; Ollama reserves memory for num_ctx)"
    return n, None


def export_gguf(target: str | Path, out: str | Path, quant: str = "f16", overwrite: bool = False,
                verify: bool = True) -> dict:
    """Write DIR/hf, DIR/<name>.<quant>.gguf, DIR/Modelfile and DIR/gguf_verify.json; return the report."""
    from transformers import AutoModelForCausalLM

    from ...models import tokenizer_file
    from ..merge import export_run, prepare_out_dir, verify_prompts

    if quant in NEEDS_QUANTIZER:
        raise ExportError(f"--quant {quant} needs {NEEDS_QUANTIZER[quant]}")
    if quant not in OUTTYPES:
        raise ExportError(f"--quant must be one of {', '.join(OUTTYPES)} (got {quant!r})")
    try:
        conv = locate()
    except ToolsMissing as e:
        raise ExportError(str(e)) from None
    out = prepare_out_dir(out, overwrite)
    t0 = time.time()
    res = export_run(target, out / "hf", "fp32", verify=verify)
    hf = out / "hf"
    src = resolve_source(target)
    name = "".join(c if c.isalnum() or c in "-_." else "-" for c in src.name).strip("-.") or "model"
    gguf_path = out / f"{name}.{quant}.gguf"
    log(f"gguf: converting {hf} with llama.cpp's converter (llama-cpp-python {conv.root.name}) to {quant}")
    conv_info = convert(conv, hf, gguf_path, quant)
    report: dict = {"name": name, "gguf": gguf_path.name, "quant": quant, "size_bytes": gguf_path.stat().st_size,
                    "convert_seconds": conv_info["seconds"], "pre_fallback": conv_info["pre_fallback"],
                    "hf_export": res.verification}
    if conv_info["pre_fallback"]:
        log(f"gguf: llama.cpp does not list this tokenizer's hash; its split regexes are llama.cpp's "
            f"'{conv_info['pre_fallback']}', written as tokenizer.ggml.pre")

    model = AutoModelForCausalLM.from_pretrained(str(hf), dtype=torch.float32).eval()
    tok = tokenizer_file.from_pretrained(hf)  # tokenizer.json as written: what the converter read
    template = get_template(src.template, tok)
    kind = "tokenizer" if isinstance(template, TokenizerTemplate) else template.name
    meta = read_meta(gguf_path)
    report["tensors"] = {"count": len(meta.tensor_names), "types": meta.tensor_types, "architecture": meta.architecture}
    check = check_gguf(gguf_path, quant, model, tok, verify_prompts(tok, src.template), hf,
                       meta=meta) if verify else None
    if check is not None:
        for line in check.lines():
            log(line)
        for w in check.warnings:
            warn(f"gguf: {w}")
        report["check"] = check.to_json()

    num_ctx, ctx_note = _num_ctx(model.config)
    mf = build_modelfile(tok, kind, gguf_path.name, num_ctx, meta.add_bos, tok.eos_token)
    (out / "Modelfile").write_text(mf.text, encoding="utf-8")
    report["modelfile"] = {"template": mf.template_name, "renders_like_hf": mf.matches_hf,
                           "conversations": mf.conversations, "stops": mf.stops, "num_ctx": mf.num_ctx,
                           "notes": mf.notes + ([ctx_note] if ctx_note else [])}
    if mf.template_name is None:
        warn(f"gguf: {mf.notes[-1]}")
    else:
        log(f"Modelfile: {mf.template_name} chat template as a Go template, renders like the HF template on "
            f"{mf.conversations} conversations; stop {mf.stops}; num_ctx {num_ctx}")
    report["seconds"] = round(time.time() - t0, 1)
    report["passed"] = check.passed if check is not None else None
    (out / "gguf_verify.json").write_text(json.dumps(report, indent=2, ensure_ascii=False), encoding="utf-8")
    log(f"gguf: {gguf_path} ({report['size_bytes'] / 1e6:.1f} MB) in {report['seconds']}s; run it with:")
    log(f"  ollama create {name} -f {out / 'Modelfile'}")
    if check is not None and not check.passed:
        raise ExportError(f"GGUF verification failed (see {out / 'gguf_verify.json'}): " + "; ".join(check.lines()))
    return report
