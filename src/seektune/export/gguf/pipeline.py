"""`seektune export RUN --out DIR --format gguf`: merged folder -> GGUF -> checked -> Modelfile.

DIR/hf is the ordinary merged export (fp32, verified against the adapter model as always); the
converter reads it, DIR/NAME.QUANT.gguf is checked against it (check.py) and DIR/Modelfile is
written with the template check (modelfile.py). Everything measured goes to DIR/gguf_verify.json.
k-quants (q4_k_m, ...) are written by llama.cpp's quantizer from an f16 GGUF, which stays beside
them as the reference. With `--data`, a quantised GGUF gets a perplexity table (merged fp32, f16
GGUF, the chosen GGUF, all on the same token ids, run by llama.cpp): what the quantisation costs.
"""

from __future__ import annotations

import json
import math
import time
from pathlib import Path

import torch

from ...data.templates import TokenizerTemplate, get_template
from ...utils.console import log, warn
from ..errors import ExportError
from ..source import resolve_source
from .check import check_gguf, read_meta
from . import llamacpp
from .convert import OUTTYPES, convert
from .modelfile import build_modelfile
from .tools import ToolsMissing, locate

NUM_CTX_CAP = 32768  # Ollama allocates the KV cache for num_ctx up front; raise it in the Modelfile if needed


def _num_ctx(cfg) -> tuple[int, str | None]:
    n = int(getattr(cfg, "max_position_embeddings", 0) or 4096)
    if n > NUM_CTX_CAP:
        return NUM_CTX_CAP, f"num_ctx {NUM_CTX_CAP} (the model allows {n}; Ollama reserves memory for num_ctx)"
    return n, None


def export_gguf(target: str | Path, out: str | Path, quant: str = "f16", overwrite: bool = False,
                verify: bool = True, data: str | Path | None = None, eval_samples: int = 32) -> dict:
    """Write DIR/hf, DIR/<name>.<quant>.gguf, DIR/Modelfile and DIR/gguf_verify.json; return the report."""
    from transformers import AutoModelForCausalLM

    from ...models import tokenizer_file
    from ..merge import export_run, prepare_out_dir, verify_prompts

    if quant not in OUTTYPES and quant not in llamacpp.KQUANTS:
        raise ExportError(f"--quant must be one of {', '.join(OUTTYPES + tuple(llamacpp.KQUANTS))} (got {quant!r})")
    if quant in llamacpp.KQUANTS and llamacpp.missing():
        raise ExportError(f"--quant {quant} is written by llama.cpp's quantizer: {llamacpp.missing()}")
    if data is not None and not Path(data).exists():
        raise ExportError(f"--data file not found: {data}")
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
    kquant = quant in llamacpp.KQUANTS
    ref_path = out / f"{name}.f16.gguf"
    first = ref_path if kquant else gguf_path
    log(f"gguf: converting {hf} with llama.cpp's converter ({conv.root.name}) to {'f16' if kquant else quant}")
    conv_info = convert(conv, hf, first, "f16" if kquant else quant)
    report: dict = {"name": name, "gguf": gguf_path.name, "quant": quant, "convert_seconds": conv_info["seconds"],
                    "pre_fallback": conv_info["pre_fallback"], "hf_export": res.verification}
    if kquant:
        log(f"gguf: quantising {ref_path.name} to {quant} with llama.cpp's quantizer")
        report["quantize"] = llamacpp.quantize(ref_path, gguf_path, quant)
        report["f16_reference"] = ref_path.name
        log(f"gguf: {quant} in {report['quantize']['seconds']}s; tensors on a fallback type (rows not a multiple "
            f"of 256): {report['quantize']['fallback_tensors']}; log in {report['quantize']['log']}")
    report["size_bytes"] = gguf_path.stat().st_size
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

    if data is not None and quant not in ("f32", "f16"):
        report["perplexity"] = _perplexity_table(conv, hf, gguf_path, ref_path, model, tok, data, src.template,
                                                 eval_samples)
    elif quant not in ("f32", "f16"):
        report["perplexity"] = {"skipped": "pass --data FILE (held-out SFT records) for the perplexity table"}
        log(f"gguf: perplexity table skipped: {report['perplexity']['skipped']}")

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


def _perplexity_table(conv, hf: Path, gguf_path: Path, ref_path: Path, model, tok, data, template: str,
                      n: int) -> dict:
    """Merged fp32 (transformers) vs the f16 GGUF vs the chosen GGUF (llama.cpp), same token ids."""
    from ..measure import markdown_table, texts_from_file

    if llamacpp.missing():
        return {"skipped": f"perplexity of a GGUF is measured by llama.cpp: {llamacpp.missing()}"}
    if not ref_path.exists():
        log(f"gguf: writing {ref_path.name} as the perplexity reference")
        convert(conv, hf, ref_path, "f16")
    texts = texts_from_file(data, tok, template, n=n)
    seqs = [tok(t, add_special_tokens=True)["input_ids"][:512] for t in texts]
    total, count = 0.0, 0
    with torch.no_grad():
        for ids in seqs:
            x = torch.tensor([ids])
            lp = torch.log_softmax(model(input_ids=x).logits[0, :-1].double(), -1)
            total += float(-lp[torch.arange(len(ids) - 1), x[0, 1:]].sum())
            count += len(ids) - 1
    rows = [{"variant": "merged fp32 (transformers)", "size_mb": round(sum(f.stat().st_size for f in hf.glob("*.safetensors")) / 1e6, 1),
             "ppl": round(math.exp(total / max(count, 1)), 4)}]
    for label, path in (("gguf f16 (llama.cpp)", ref_path), (f"gguf {gguf_path.name.rsplit('.', 2)[-2]} (llama.cpp)", gguf_path)):
        if path == ref_path and path == gguf_path:
            continue
        p = llamacpp.perplexity(path, seqs, n_ctx=max(64, max(len(s) for s in seqs)))
        rows.append({"variant": label, "size_mb": round(path.stat().st_size / 1e6, 1), "ppl": round(p["ppl"], 4)})
    ref = rows[1]["ppl"] if len(rows) > 1 else rows[0]["ppl"]
    for r in rows:
        r["ppl_vs_f16"] = f"{100 * (r['ppl'] / ref - 1):+.2f}%"
    table = markdown_table(rows, [("variant", "variant"), ("size_mb", "MB"), ("ppl", "perplexity"),
                                  ("ppl_vs_f16", "vs f16 GGUF")])
    for line in table.splitlines():
        log(line)
    return {"data": str(data), "texts": len(seqs), "tokens": count, "rows": rows}
