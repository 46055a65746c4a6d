"""Export page: merge LoRA into the base and write INT8, or a GGUF + Ollama Modelfile, with `seektune
export`'s own functions, and show the checks they ran."""

from __future__ import annotations

import json
from functools import partial
from dataclasses import asdict
from pathlib import Path

import gradio as gr

from ...export.errors import ExportError
from ...export.merge import export_run
from ..context import UIContext
from ..problems import problem_md
from ..runs import list_runs
from ..workspace import WorkspaceError

GGUF_NOTE = ("**GGUF** runs llama.cpp's own converter (installed by `make gguf-tools`), then runs the file in "
             "llama.cpp (`make llama-cpp`; else transformers' GGUF loader) and compares it with the merged model; "
             "the Modelfile's chat template is checked against the model's own. k-quants (q4_k_m, q5_k_m, q6_k) "
             "are written by llama.cpp's quantizer from the f16 file, which stays beside them.")
GGUF_QUANTS = ["f16", "q8_0", "q4_k_m", "q5_k_m", "q6_k", "bf16", "f32"]


def default_out(run: str) -> str:
    return f"exports/{Path(run).name}" if run else ""


def gguf_summary(ctx: UIContext, out_dir: Path, rep: dict) -> str:
    """The GGUF export's report as the few lines a user checks: file, agreement, tokenizer, Ollama."""
    lines = [f"wrote **{rep['gguf']}** ({rep['quant']}, {rep['size_bytes'] / 1e6:.1f} MB) to `{ctx.ws.rel(out_dir)}`"]
    chk = rep.get("check") or {}
    lg = chk.get("logits")
    if lg:
        lines.append(f"- GGUF vs merged model: max |logit difference| {lg.get('max_abs_diff', 0):.3g}, top-1 agreement "
                     f"{100 * lg.get('top1_agreement', 0):.1f}%; greedy answers the same on "
                     f"{chk.get('greedy_same')} of {chk.get('greedy_prompts')} prompts; token ids "
                     f"{'the same' if chk.get('token_ids_same') else 'DIFFERENT'}")
    elif chk.get("skipped"):
        lines.append(f"- logits not compared: {chk['skipped']}")
    if chk.get("pre") is not None:
        lines.append(f"- tokenizer.ggml.pre = `{chk['pre']}` ({'splits as the model does' if chk.get('pre_ok') else 'CHECK IT'})")
    mf = rep.get("modelfile") or {}
    lines.append(f"- Modelfile: {mf.get('template') or 'no chat template'}"
                 + (f", renders like the model's template on {mf.get('conversations')} conversations"
                    if mf.get("renders_like_hf") else ""))
    lines.append(f"- run it: `ollama create {rep['name']} -f {ctx.ws.rel(out_dir / 'Modelfile')}`")
    lines.append(f"- verification: {'passed' if rep.get('passed') else 'not run' if rep.get('passed') is None else 'FAILED'}")
    return "\n".join(lines)


def export(ctx: UIContext, run: str, out: str, dtype: str, int8: bool, verify: bool, overwrite: bool,
           fmt: str = "merged", quant: str = "f16", progress=gr.Progress()):
    """(result markdown, export.json) of one export."""
    try:
        run_dir = ctx.ws.path(run, "run folder", must_exist=True)
        out_dir = ctx.ws.path(out, "export folder")
        if fmt == "gguf":
            from ...export.gguf.pipeline import export_gguf

            if int8 or dtype != "fp32":  # as on the command line: an option that would be ignored is an error
                return problem_md("GGUF: the type is the GGUF type; untick INT8 and leave the weights dtype at "
                                  "fp32 (they apply to the merged model)"), ""

            progress(0.1, desc="merging, converting to GGUF, checking")
            rep = export_gguf(str(run_dir), out_dir, quant, overwrite=overwrite, verify=verify)
            return gguf_summary(ctx, out_dir, rep), json.dumps(rep, indent=2, ensure_ascii=False)
        progress(0.1, desc="loading and merging")
        res = export_run(str(run_dir), out_dir, dtype, verify=verify, quantize="int8" if int8 else None,
                         overwrite=overwrite)
    except (WorkspaceError, ExportError, ValueError, OSError) as e:
        return problem_md(str(e)), ""
    ver = res.verification or {}
    lines = [f"exported **{res.mode}** ({res.dtype}) to `{ctx.ws.rel(res.out)}`, {res.size_bytes / 1e6:.1f} MB",
             f"- chat template: {res.chat_template}"]
    if "passed" in ver:
        lines.append(f"- verification: {'passed' if ver['passed'] else 'FAILED'}: max |logit difference| "
                     f"{ver.get('max_abs_diff', 0):.3g} (tolerance {ver.get('tolerance', 0):.3g}), top-1 agreement "
                     f"{100 * ver.get('top1_agreement', 0):.1f}%")
    q = ver.get("quantized")
    if q:
        lines.append(f"- INT8 verification: max |logit difference| {q.get('max_abs_diff', 0):.3g}, top-1 agreement "
                     f"{100 * q.get('top1_agreement', 0):.1f}%")
    lines += [f"- {n}" for n in res.notes]
    return "\n".join(lines), json.dumps(asdict(res), indent=2, ensure_ascii=False)


def build(ctx: UIContext) -> dict:
    runs = list_runs(ctx.ws)
    with gr.Row():
        run = gr.Dropdown(runs, value=runs[0] if runs else None, label="run folder", allow_custom_value=True,
                          elem_id="export-run", scale=2)
        out = gr.Textbox(default_out(runs[0]) if runs else "", label="export folder (in the workspace)",
                         elem_id="export-out", scale=2)
    with gr.Row():
        fmt = gr.Radio([("merged model (safetensors)", "merged"), ("GGUF + Ollama Modelfile", "gguf")],
                       value="merged", label="format", elem_id="export-format")
        quant = gr.Dropdown(GGUF_QUANTS, value="f16", label="GGUF type (GGUF only)", elem_id="export-quant")
    with gr.Row():
        dtype = gr.Dropdown(["fp32", "fp16", "bf16"], value="fp32", label="weights dtype (merged only)")
        int8 = gr.Checkbox(False, label="also INT8 (OUT/int8)", elem_id="export-int8")
        verify = gr.Checkbox(True, label="verify logits after export")
        overwrite = gr.Checkbox(False, label="replace a non-empty export folder")
    btn = gr.Button("Merge and export", variant="primary", elem_id="export-btn")
    gr.Markdown(GGUF_NOTE)
    result = gr.Markdown(elem_id="export-result")
    with gr.Accordion("export.json", open=False):
        manifest = gr.Code(language="json", interactive=False)

    run.change(default_out, run, out)
    btn.click(partial(export, ctx), [run, out, dtype, int8, verify, overwrite, fmt, quant], [result, manifest])
    return {"run": run}
