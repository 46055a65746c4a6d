"""Runs page: status, live curves, log tail, warnings and report of one run; several runs on one plot.

A timer re-reads the selected run's files every few seconds; the curves are redrawn only when
metrics.jsonl changed.
"""

from __future__ import annotations

import html
from pathlib import Path

import gradio as gr

from ...eval.report import read_metrics
from .. import jobs
from ..context import UIContext
from ..curves import compare_figure, run_figure
from ..problems import problem_md
from ..runs import list_runs, log_tail, metric_keys, report_html, run_config_text, status
from ..workspace import WorkspaceError

REFRESH_S = 2.0


def _signature(run_dir: Path) -> tuple:
    return tuple((run_dir / n).stat().st_mtime if (run_dir / n).exists() else 0
                 for n in ("metrics.jsonl", "summary.json", jobs.LOG, jobs.EXIT_CODE))


def show(ctx: UIContext, run: str, last_sig):
    """(status, curves, log, warnings, report, config, signature); curves etc. skipped when nothing changed."""
    if not run:
        return ["pick a run", None, "", "", "", "", None]
    try:
        run_dir = ctx.ws.path(run, "run folder", must_exist=True)
    except WorkspaceError as e:
        return [problem_md(str(e)), None, "", "", "", "", None]
    st = status(ctx.ws, run_dir)
    text = f"### {st.state}: `{st.run}`\n\n" + (
        f"```\n{st.detail}\n```" if st.state == "failed" else st.detail)
    sig = _signature(run_dir)
    if last_sig is not None and tuple(last_sig) == sig:
        return [text, gr.skip(), gr.skip(), gr.skip(), gr.skip(), gr.skip(), gr.skip()]
    rows = read_metrics(run_dir / "metrics.jsonl")
    fig = run_figure(rows, st.run)
    warns = "\n".join(f"- warning: {w}" for w in st.warnings) or "no warnings from the monitors"
    rep = report_html(run_dir)
    report = (f"<iframe title='report' style='width:100%;height:640px;border:0' srcdoc=\"{html.escape(rep)}\">"
              "</iframe>") if rep else "<p>no report yet (written when the run ends)</p>"
    return [text, fig, log_tail(run_dir), warns, report, run_config_text(run_dir), list(sig)]


def compare(ctx: UIContext, picked: list[str], key: str):
    if not picked:
        return None, "pick two or more runs"
    try:
        rows = {r: read_metrics(ctx.ws.path(r, "run folder", must_exist=True) / "metrics.jsonl") for r in picked}
    except WorkspaceError as e:
        return None, problem_md(str(e))
    keys = sorted({k for rs in rows.values() for k in metric_keys(rs)})
    return compare_figure(rows, key or "loss"), f"series in these runs: {', '.join(keys) or 'none yet'}"


def build(ctx: UIContext) -> dict:
    runs = list_runs(ctx.ws)
    with gr.Row():
        pick = gr.Dropdown(runs, value=runs[0] if runs else None, label="run folder", allow_custom_value=True,
                           elem_id="runs-pick", scale=3)
        stop_btn = gr.Button("Stop", variant="stop", scale=0, elem_id="runs-stop")
        resume_btn = gr.Button("Resume", scale=0, elem_id="runs-resume")
    state = gr.Markdown(elem_id="run-status")
    curves = gr.Plot(label="curves (metrics.jsonl)", elem_id="run-curves", format="png")
    with gr.Row():
        log = gr.Textbox(label="log tail (ui.log)", lines=12, max_lines=12, interactive=False, elem_id="run-log",
                         autoscroll=True)
        warns = gr.Markdown(label="warnings", elem_id="run-warnings")
    with gr.Accordion("report", open=False):
        report = gr.HTML(elem_id="run-report")
    with gr.Accordion("config.yaml", open=False):
        cfg = gr.Code(language="yaml", interactive=False)
    sig = gr.State(None)
    gr.Markdown("### Compare runs")
    with gr.Row():
        many = gr.Dropdown(runs, multiselect=True, label="runs", elem_id="compare-runs", scale=3)
        key = gr.Dropdown(["loss", "eval_loss", "lr", "grad_norm"], value="loss", allow_custom_value=True,
                          label="series", elem_id="compare-key")
        cmp_btn = gr.Button("Compare", elem_id="compare-btn")
    cmp_plot = gr.Plot(label="compared", elem_id="compare-plot", format="png")
    cmp_note = gr.Markdown()

    outs = [state, curves, log, warns, report, cfg, sig]
    timer = gr.Timer(REFRESH_S)
    pick.focus(lambda: gr.update(choices=list_runs(ctx.ws)), None, pick)
    many.focus(lambda: gr.update(choices=list_runs(ctx.ws)), None, many)
    pick.change(lambda r: show(ctx, r, None), pick, outs)
    timer.tick(lambda r, s: show(ctx, r, s), [pick, sig], outs, show_progress="hidden")
    cmp_btn.click(lambda p, k: compare(ctx, p, k), [many, key], [cmp_plot, cmp_note])
    stop_btn.click(lambda r: jobs.control(ctx.ws, r, False), pick, state)
    resume_btn.click(lambda r: jobs.control(ctx.ws, r, True), pick, state)
    refresh = (lambda r: show(ctx, r, None), [pick], outs)
    return {"pick": pick, "compare": many, "on_load": [refresh]}
