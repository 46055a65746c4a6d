"""Chat page: base model and tuned run side by side on one prompt, streamed, reasoning apart."""

from __future__ import annotations

from functools import partial

import gradio as gr

from ..chat import ChatSettings, stream_reply, target_path
from ..context import UIContext
from ..problems import problem_md
from ..runs import list_runs, run_config
from ..workspace import WorkspaceError


def base_of(ctx: UIContext, run: str) -> str:
    """The base model a run was trained from (its config's model.name_or_path)."""
    try:
        return (run_config(ctx.ws.path(run, "run folder", must_exist=True)).get("model") or {}).get("name_or_path", "")
    except WorkspaceError:
        return ""


def send(ctx: UIContext, base: str, run: str, prompt: str, max_new: int, temperature: float, system: str):
    """Yields (status, base reasoning, base answer, tuned reasoning, tuned answer) as the replies stream."""
    out = ["", "", "", "", ""]
    if not prompt.strip():
        out[0] = problem_md("prompt: empty")
        yield out
        return
    s = ChatSettings(int(max_new), float(temperature), 1.0, system)
    sides = [(1, base, "base model")] + ([(3, run, "tuned run")] if run else [])
    for col, target, what in sides:
        if not (target or "").strip():
            continue
        try:
            out[0] = f"loading {what} `{target}` ..."
            yield out
            loaded = ctx.models.get(target_path(ctx.ws, target, what))
            out[0] = f"generating with {what} `{target}` ..."
            for reasoning, answer in stream_reply(loaded, prompt, s):
                out[col], out[col + 1] = reasoning, answer
                yield out
        except (WorkspaceError, ValueError, RuntimeError, OSError) as e:
            out[0] = problem_md(f"{what}: {e}")
            yield out
            return
    empty = [what for col, target, what in sides if (target or "").strip() and not (out[col] or out[col + 1]).strip()]
    out[0] = "done" + (f" ({' and '.join(empty)}: an empty reply, only whitespace or an immediate end of turn; "
                       "try sampling with a temperature)" if empty else "")
    yield out


def build(ctx: UIContext) -> dict:
    runs = list_runs(ctx.ws)
    with gr.Row():
        base = gr.Textbox(base_of(ctx, runs[0]) if runs else "smollm2-135m-instruct", label="base model (preset or folder)",
                          elem_id="chat-base")
        run = gr.Dropdown(runs, value=runs[0] if runs else None, label="tuned run", allow_custom_value=True,
                          elem_id="chat-run")
    with gr.Accordion("generation settings", open=False, elem_id="chat-settings"):
        with gr.Row():
            max_new = gr.Slider(1, 1024, value=64, step=1, label="max new tokens", elem_id="chat-max-new")
            temperature = gr.Slider(0, 2, value=0, step=0.05, label="temperature (0: greedy)",
                                    elem_id="chat-temperature")
            system = gr.Textbox("", label="system prompt")
    prompt = gr.Textbox(label="prompt", lines=3, elem_id="chat-prompt")
    send_btn = gr.Button("Send", variant="primary", elem_id="chat-send")
    status = gr.Markdown(elem_id="chat-status")
    with gr.Row():
        with gr.Column():
            gr.Markdown("#### base")
            base_think = gr.Textbox(label="reasoning (<think>)", lines=3, interactive=False, elem_id="chat-base-reasoning")
            base_answer = gr.Textbox(label="answer", lines=6, interactive=False, elem_id="chat-base-answer")
        with gr.Column():
            gr.Markdown("#### tuned")
            tuned_think = gr.Textbox(label="reasoning (<think>)", lines=3, interactive=False, elem_id="chat-tuned-reasoning")
            tuned_answer = gr.Textbox(label="answer", lines=6, interactive=False, elem_id="chat-tuned-answer")

    run.change(lambda r: base_of(ctx, r) or gr.skip(), run, base)
    send_btn.click(partial(send, ctx), [base, run, prompt, max_new, temperature, system],
                   [status, base_think, base_answer, tuned_think, tuned_answer])
    return {"run": run}
