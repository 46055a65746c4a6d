"""Train page: the config form (every key, grouped by section, the chosen stage's own section shown),
the YAML that will run, problems named by key (also under the field itself), Start / Stop / Resume."""

from __future__ import annotations

import gradio as gr

from ...config import STAGES
from .. import jobs
from ..context import UIContext
from ..form import OPEN_SECTIONS, FieldSpec, check_form, problems_by_key, sections
from ..problems import problem_md
from ..workspace import WorkspaceError


def _widget(spec: FieldSpec):
    common = dict(label=spec.key, info=spec.info, elem_id=spec.elem_id, value=spec.widget_value(spec.default))
    if spec.widget == "bool":
        return gr.Checkbox(**common)
    if spec.widget == "choice":
        return gr.Dropdown([spec.widget_value(c) for c in spec.choices], **common)
    return gr.Textbox(**common, max_lines=3)


def _info_updates(specs: list[FieldSpec], problems: list[str]) -> list:
    by_key = problems_by_key(specs, problems)
    return [gr.update(info=("PROBLEM: " + "; ".join(by_key[s.key]) + " | " + s.info) if s.key in by_key else s.info)
            for s in specs]


def check(ctx: UIContext, specs: list[FieldSpec], values: list):
    """(YAML, problems markdown, one info update per field)."""
    res = check_form(specs, values, ctx.ws)
    md = "**valid**: this YAML is what Start runs" if res.ok else problem_md(res.problems)
    return [res.yaml, md, *_info_updates(specs, res.problems)]


def start(ctx: UIContext, specs: list[FieldSpec], values: list, overwrite: bool):
    """Validate, then launch; (YAML, problems, status, run to show on the Runs page, field infos)."""
    res = check_form(specs, values, ctx.ws)
    infos = _info_updates(specs, res.problems)
    if not res.ok:
        return [res.yaml, problem_md(res.problems), "not started: fix the problems above", gr.update(), *infos]
    run_dir = ctx.ws.path(res.cfg.train.output_dir, "train.output_dir")
    try:
        cmd = jobs.start(ctx.ws, run_dir, res.yaml, overwrite=overwrite)
    except WorkspaceError as e:
        return [res.yaml, problem_md(str(e)), "not started", gr.update(), *infos]
    rel = ctx.ws.rel(run_dir)
    return [res.yaml, "**valid**", f"started `{rel}`: `{' '.join(cmd[1:])}`", rel, *infos]


def output_dir(specs: list[FieldSpec], values: list) -> str:
    """The run folder the form names, for Stop / Resume (the field as typed: other fields may not parse)."""
    return next(str(v) for s, v in zip(specs, values) if s.key == "train.output_dir")


FIELDS_PER_ROW = 3


def _section(name: str, group: list[FieldSpec], visible: bool, specs: list, widgets: list):
    """One folding section, its fields three to a row."""
    title = f"{name}: options of stage {name}" if name in STAGES else name
    with gr.Accordion(title, open=name in OPEN_SECTIONS, visible=visible, elem_id=f"section-{name}") as box:
        fields = [s for s in group if s.key != "train.stage"]
        for i in range(0, len(fields), FIELDS_PER_ROW):
            with gr.Row(equal_height=False):
                for spec in fields[i:i + FIELDS_PER_ROW]:
                    specs.append(spec)
                    widgets.append(_widget(spec))
    return box


def build(ctx: UIContext) -> dict:
    groups = sections()
    stage_spec = next(s for s in groups["train"] if s.key == "train.stage")
    specs: list[FieldSpec] = [stage_spec]
    widgets: list = []
    stage_boxes = {}
    with gr.Row():
        with gr.Column(scale=3):
            gr.Markdown("Every key of the configuration, with its description and default. Only keys you change "
                        "are written; **Check** shows the YAML that **Start** runs as `seektune train`.")
            stage = _widget(stage_spec)
            widgets.append(stage)
            for name, group in groups.items():
                box = _section(name, group, name not in STAGES or name == stage_spec.default, specs, widgets)
                if name in STAGES:
                    stage_boxes[name] = box
        with gr.Column(scale=2, elem_id="train-side"):
            with gr.Row():
                check_btn = gr.Button("Check", elem_id="train-check")
                start_btn = gr.Button("Start", variant="primary", elem_id="train-start")
            with gr.Row():
                stop_btn = gr.Button("Stop", variant="stop", elem_id="train-stop")
                resume_btn = gr.Button("Resume", elem_id="train-resume")
            overwrite = gr.Checkbox(False, label="start over if the folder holds a run (--overwrite)",
                                    elem_id="train-overwrite")
            status = gr.Markdown(elem_id="train-status")
            problems = gr.Markdown(elem_id="train-problems")
            yaml_box = gr.Code(language="yaml", label="the YAML that runs", interactive=False, elem_id="train-yaml",
                               max_lines=40)
    started = gr.Textbox(visible=False, elem_id="train-started")  # the run folder Start launched

    names = list(stage_boxes)
    stage.change(lambda s: [gr.update(visible=n == s) for n in names], stage, [stage_boxes[n] for n in names])
    check_btn.click(lambda *v: check(ctx, specs, list(v)), widgets, [yaml_box, problems, *widgets])
    start_btn.click(lambda o, *v: start(ctx, specs, list(v), o), [overwrite, *widgets],
                    [yaml_box, problems, status, started, *widgets])
    stop_btn.click(lambda *v: jobs.control(ctx.ws, output_dir(specs, v), False, "train.output_dir"), widgets, status)
    resume_btn.click(lambda *v: jobs.control(ctx.ws, output_dir(specs, v), True, "train.output_dir"), widgets, status)
    return {"started": started, "specs": specs, "widgets": widgets}
