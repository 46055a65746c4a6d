"""Export page: merge LoRA into the base and write INT8 with `seektune export`'s own function, and show
the logits check it ran. GGUF belongs to the deployment issue and is not offered yet."""

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

GGUF_NOTE = ("**GGUF**: not available yet. It comes with the deployment issue (llama.cpp's converter); "
             "until then, export the merged model here and convert it with llama.cpp.")


def default_out(run: str) -> str:
    return f"exports/{Path(run).name}" if run else ""


def export(ctx: UIContext, run: str, out: str, dtype: str, int8: bool, verify: bool, overwrite: bool,
           progress=gr.Progress()):
    """(result markdown, export.json) of one export."""
    try:
        run_dir = ctx.ws.path(run, "run folder", must_exist=True)
        out_dir = ctx.ws.path(out, "export folder")
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
        dtype = gr.Dropdown(["fp32", "fp16", "bf16"], value="fp32", label="weights dtype")
        int8 = gr.Checkbox(False, label="also INT8 (OUT/int8)", elem_id="export-int8")
        verify = gr.Checkbox(True, label="verify logits after export")
        overwrite = gr.Checkbox(False, label="replace a non-empty export folder")
        gr.Checkbox(False, label="GGUF (not available yet)", interactive=False)
    btn = gr.Button("Merge and export", variant="primary", elem_id="export-btn")
    gr.Markdown(GGUF_NOTE)
    result = gr.Markdown(elem_id="export-result")
    with gr.Accordion("export.json", open=False):
        manifest = gr.Code(language="json", interactive=False)

    run.change(default_out, run, out)
    btn.click(partial(export, ctx), [run, out, dtype, int8, verify, overwrite], [result, manifest])
    return {"run": run}
