"""Runs page: status, live curves, log tail, warnings and report of one run; several runs on one plot.

A timer re-reads the selected run's files every few seconds; the curves are redrawn only when
metrics.jsonl changed. The same tick keeps the run pickers' choices up to date, so a run started from
the Train page, the CLI or another browser is offered without a reload.
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
from ..workspace import Workspace, WorkspaceError

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


def run_choices(ws: Workspace, known: list[str] | None, n: int) -> list:
    """(runs, one choices update per run picker), or skips while the run folders are the same ones: an
    open list stays put, though the order (newest first) changes with every logged step."""
    now = list_runs(ws)
    if known is not None and set(known) == set(now):
        return [gr.skip()] * (n + 1)
    return [now, *(gr.update(choices=now) for _ in range(n))]


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
    known = gr.State(None)  # the runs the two pickers offer
    pickers = [known, pick, many]
    timer = gr.Timer(REFRESH_S)
    pick.change(lambda r: show(ctx, r, None), pick, outs)
    timer.tick(lambda r, s, k: [*show(ctx, r, s), *run_choices(ctx.ws, k, 2)], [pick, sig, known], outs + pickers,
               show_progress="hidden")
    cmp_btn.click(lambda p, k: compare(ctx, p, k), [many, key], [cmp_plot, cmp_note])
    stop_btn.click(lambda r: jobs.control(ctx.ws, r, False), pick, state)
    resume_btn.click(lambda r: jobs.control(ctx.ws, r, True), pick, state)
    refresh = (lambda r: show(ctx, r, None), [pick], outs)
    offer = (lambda k: run_choices(ctx.ws, k, 2), [known], pickers)
    return {"pick": pick, "on_load": [refresh, offer]}
