"""The UI itself: one Blocks with a tab per page, and how it is launched.

Launching sets the privacy switches before gradio is imported (analytics and Hugging Face telemetry
off, uploads staged inside the workspace), binds 127.0.0.1 unless told otherwise (access.py refuses a
non-local bind without auth), never opens a share tunnel, and serves no file it did not create.
"""

from __future__ import annotations

import os
from pathlib import Path

from .access import check_binding
from .workspace import Workspace

CSS = ("#run-log textarea {font-family: monospace; font-size: 12px}\n"
       "#train-side {position: sticky; top: 8px; align-self: flex-start}")


def private_env(ws: Workspace) -> None:
    """No analytics, no telemetry, no version check, temp files inside the workspace."""
    os.environ["GRADIO_ANALYTICS_ENABLED"] = "False"
    os.environ["HF_HUB_DISABLE_TELEMETRY"] = "1"
    os.environ["HF_HUB_OFFLINE"] = "1"
    os.environ["DO_NOT_TRACK"] = "1"
    os.environ["GRADIO_TEMP_DIR"] = str(ws.scratch / "gradio")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def build_app(ws: Workspace):
    private_env(ws)
    import gradio as gr

    from .context import UIContext
    from .pages import chat, data, export, runs, train
    from .runs import list_runs

    ctx = UIContext(ws)
    with gr.Blocks(title="seektune", analytics_enabled=False) as demo:
        gr.Markdown(f"# seektune\nworkspace `{ws.root}`: every path is relative to it, and nothing outside it "
                    "is read or written.")
        with gr.Tabs() as tabs:
            with gr.Tab("Data", id="data", elem_id="tab-data"):
                d = data.build(ctx)
            with gr.Tab("Train", id="train", elem_id="tab-train"):
                t = train.build(ctx)
            with gr.Tab("Runs", id="runs", elem_id="tab-runs"):
                r = runs.build(ctx)
            with gr.Tab("Chat", id="chat", elem_id="tab-chat") as chat_tab:
                c = chat.build(ctx)
            with gr.Tab("Export", id="export", elem_id="tab-export") as export_tab:
                e = export.build(ctx)
        for page in (d, t, r, c, e):
            for fn, inputs, outputs in page.get("on_load", []):
                demo.load(fn, inputs, outputs)

        # Chat's and Export's run pickers offer the runs there are on load and when their page is opened
        # (the Runs page's own follow its timer)
        known = gr.State(None)  # the runs they offer, per browser tab
        refresh = dict(fn=lambda k: runs.run_choices(ws, k, 2), inputs=known, outputs=[known, c["run"], e["run"]],
                       show_progress="hidden")
        for trigger in (demo.load, chat_tab.select, export_tab.select):
            trigger(**refresh)

        def show_started(run: str):
            """After Start: the new run selected on the Runs and Chat pages, and the Runs page shown."""
            if not run:
                return gr.skip(), gr.skip(), gr.skip()
            choices = list_runs(ws)
            return (gr.update(choices=choices, value=run), gr.update(choices=choices, value=run),
                    gr.Tabs(selected="runs"))

        t["started"].change(show_started, t["started"], [r["pick"], c["run"], tabs])
    return demo


def launch(workspace: str | Path = ".", host: str = "127.0.0.1", port: int = 7860, auth: str | None = None,
           block: bool = True):
    """Check the binding, build and serve; returns the Blocks (with block=False, serving in the background)."""
    creds = check_binding(host, auth)
    ws = Workspace.open(workspace)
    demo = build_app(ws)
    demo.queue(default_concurrency_limit=4)
    demo.launch(server_name=host, server_port=port, auth=[creds] if creds else None, share=False,
                ssr_mode=False, mcp_server=False, enable_monitoring=False, prevent_thread_lock=not block,
                quiet=not block, css=CSS, footer_links=[], max_file_size="2gb")
    return demo
