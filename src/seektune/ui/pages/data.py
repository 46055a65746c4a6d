"""Data page: what is in a file before anyone trains on it, with the CLI's own engines.

`seektune data inspect` (format, counts, lengths, duplicates), `seektune data clean` (what would be
rejected, with the rule and file:line) and `seektune data preview` (samples as the stage renders them,
loss-bearing spans highlighted).
"""

from __future__ import annotations

import shutil
from pathlib import Path

import gradio as gr

from ...config import ConfigError, validate_config
from ...data.clean import CleanOptions, clean_file, rejects_path_for
from ...data.inspect import inspect_file
from ...data.io import DataError
from ..context import UIContext
from ..problems import problem_md
from ..workspace import DATA_SUFFIXES, WorkspaceError

UPLOADS = "data/uploads"
MAX_REJECTS_SHOWN = 200


def _summary_md(r: dict, clean: dict | None) -> str:
    rows = [("file", f"`{r['file_rel']}`"), ("type / encoding", f"{r['file_type']} / {r['encoding']}"),
            ("records", f"{r['records']:,}"), ("detected format", ", ".join(f"{k} ({v})" for k, v in r["kinds"].items())),
            ("malformed lines", str(r["malformed_lines"])), ("exact duplicates", str(r["exact_duplicates"])),
            ("near duplicates (estimate)", f"{r['near_duplicates']['found']} of {r['near_duplicates']['sampled']} sampled"),
            ("characters", ", ".join(f"{k} {v}" for k, v in r["chars"].items()))]
    if r.get("tokens"):
        rows.append(("tokens", ", ".join(f"{k} {v}" for k, v in r["tokens"].items())))
    if r.get("labels"):
        rows.append(("labels", ", ".join(f"{k}: {v}" for k, v in r["labels"].items())))
    if clean is not None:
        rej = clean["rejected_by_rule"]
        rows.append(("clean would keep", f"{clean['kept']} of {clean['read']} "
                     f"(rejected: {', '.join(f'{k} {v}' for k, v in rej.items()) or 'none'})"))
    return "| inspect | |\n|---|---|\n" + "\n".join(f"| {a} | {b} |" for a, b in rows)


def _rejects_rows(path: Path, ws) -> list[list[str]]:
    rows = []
    if path.exists():
        import json

        for line in path.read_text(encoding="utf-8").splitlines()[:MAX_REJECTS_SHOWN]:
            r = json.loads(line)
            where = f"{ws.rel(r['source']) if Path(str(r['source'])).is_absolute() else r['source']}:{r['line']}"
            rows.append([r["rule"], r["reason"].replace(f"{ws.root}/", ""), where])  # paths as the UI shows them
    return rows


def inspect(ctx: UIContext, file: str, tokenizer: str):
    """Inspect + clean dry run of `file` -> (problems, summary, histogram PNG, rejects)."""
    ws = ctx.ws
    try:
        path = ws.path(file, "data file", must_exist=True)
        tok = None
        if tokenizer.strip():
            from ...config import ModelConfig
            from ...models.loader import load_tokenizer
            from ..chat import target_path

            tok = load_tokenizer(ModelConfig(name_or_path=target_path(ws, tokenizer, "tokenizer")))
        work = ws.scratch / "inspect"
        work.mkdir(parents=True, exist_ok=True)
        r = inspect_file(path, tok, png=work / f"{path.stem}.lengths.png")
        r["file_rel"] = ws.rel(path)
        out = work / f"{path.stem}.clean.jsonl"
        clean = clean_file(path, out, CleanOptions(), show_progress=False, log=lambda *a, **k: None)
        rejects = _rejects_rows(rejects_path_for(out), ws)
    except (WorkspaceError, DataError, ConfigError, ValueError, OSError) as e:
        return problem_md(str(e)), "", None, []
    return "", _summary_md(r, clean), r.get("png"), rejects


def preview(ctx: UIContext, file: str, model: str, stage: str, template: str, n: int):
    """The first n samples as `stage` renders them for `model`: (problems, highlighted spans)."""
    from ...stages import preview as stage_preview
    from ..chat import target_path

    ws = ctx.ws
    try:
        path = ws.path(file, "data file", must_exist=True)
        cfg = validate_config({"model": {"name_or_path": target_path(ws, model, "model")},
                               "data": {"train": str(path), "template": template or "auto", "cache": False},
                               "train": {"stage": stage, "output_dir": str(ws.scratch / "preview")}},
                              "the Data page")
        samples = stage_preview(cfg, int(n))
    except (WorkspaceError, DataError, ConfigError, ValueError, OSError) as e:
        return problem_md(str(e)), []
    spans: list[tuple[str, str | None]] = []
    for s in samples:
        spans.append((f"\n── {s.where} ──\n", "sample"))
        pos = 0
        for a, b in s.spans:
            spans += [(s.text[pos:a], None), (s.text[a:b], "trained")]
            pos = b
        spans.append((s.text[pos:], None))
    return "", spans


def upload(ctx: UIContext, tmp_path: str | None):
    """Copy an uploaded data file into the workspace (data/uploads/) and select it.

    Only a file Gradio staged in the UI's scratch folder is copied (a path sent through the API from
    anywhere else is refused), only a data file, and never through a symlink out of the workspace."""
    if not tmp_path:
        return gr.update(), ""
    ws = ctx.ws
    try:
        src = Path(tmp_path).resolve()
        if ws.scratch not in src.parents or not src.is_file():
            raise WorkspaceError(f"upload: '{tmp_path}' is not a file this UI received")
        if not src.name.endswith(DATA_SUFFIXES):
            raise WorkspaceError(f"upload: '{src.name}' is not a data file ({', '.join(DATA_SUFFIXES)})")
        dest = ws.path(f"{UPLOADS}/{src.name}", "upload")
        dest.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(src, dest)
    except (WorkspaceError, OSError) as e:
        return gr.update(), problem_md(str(e))
    rel = ws.rel(dest)
    return gr.update(choices=ws.data_files(), value=rel), f"uploaded to `{rel}`"


def build(ctx: UIContext) -> dict:
    from ...config.stages import STAGES

    with gr.Row():
        file = gr.Dropdown(ctx.ws.data_files(), label="data file (in the workspace)", allow_custom_value=True,
                           elem_id="data-path", scale=3, info="pick one, type a path inside the workspace, or upload")
        up = gr.UploadButton("Upload", file_types=list(DATA_SUFFIXES), scale=1)
    with gr.Row():
        tokenizer = gr.Textbox("", label="tokenizer for token lengths (preset or folder; empty: characters only)")
        inspect_btn = gr.Button("Inspect", variant="primary", elem_id="data-inspect")
    problems = gr.Markdown(elem_id="data-problems")
    summary = gr.Markdown(elem_id="data-summary")
    with gr.Row():
        hist = gr.Image(label="lengths", type="filepath", interactive=False, elem_id="data-hist")
        rejects = gr.Dataframe(headers=["rule", "reason", "where"], label="clean: rejected records with reasons",
                               interactive=False, wrap=True, elem_id="data-rejects")
    gr.Markdown("### Preview: training samples as rendered (highlighted: the spans that carry loss)")
    with gr.Row():
        model = gr.Textbox("smollm2-135m-instruct", label="model (its tokenizer and template)",
                           elem_id="data-preview-model")
        stage = gr.Dropdown([s for s in STAGES], value="sft", label="stage")
        template = gr.Textbox("auto", label="data.template")
        n = gr.Number(3, label="samples", precision=0, minimum=1, maximum=20)
        preview_btn = gr.Button("Preview", elem_id="data-preview")
    shown = gr.HighlightedText(label="rendered samples", color_map={"trained": "green", "sample": "gray"},
                               combine_adjacent=False, show_legend=True, elem_id="data-preview-text")

    file.focus(lambda: gr.update(choices=ctx.ws.data_files()), None, file)
    up.upload(lambda p: upload(ctx, p), up, [file, problems])
    inspect_btn.click(lambda f, t: inspect(ctx, f or "", t), [file, tokenizer], [problems, summary, hist, rejects])
    preview_btn.click(lambda f, m, s, t, k: preview(ctx, f or "", m, s, t, k), [file, model, stage, template, n],
                      [problems, shown])
    return {"file": file}
