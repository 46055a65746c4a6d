"""The recipes: one module per stage, each read top to bottom as setup -> train -> save -> summary.

A recipe module defines

    def run(cfg, run: RunFolder, progress: bool, callbacks: list) -> StageResult
    def preview(cfg, n: int) -> list[PreviewSample]      # optional: `seektune data preview`

and is listed once in `config/stages.py`. `run_stage` is the only caller: it opens the run folder
(fresh or resume), runs the recipe, writes summary.json and the report, and prints the summary.
"""

from __future__ import annotations

import importlib
import time

from ..config import STAGES, ConfigError
from ..engine.run import RunFolder
from ..engine.summary import StageResult, finish, print_summary
from ..utils.console import log, warn


def recipe(name: str):
    """The recipe module of a registered stage."""
    if name not in STAGES:
        raise ConfigError(f"train.stage: unknown stage '{name}' (stages: {', '.join(STAGES)})")
    return importlib.import_module(STAGES[name].recipe)


def run_stage(cfg, resume: bool = False, overwrite: bool = False, progress: bool = True,
              callbacks: list | None = None, **recipe_kw) -> StageResult:
    """Train `cfg` with its stage's recipe into its run folder; returns the recipe's result."""
    from ..eval.report import write_report

    for note in getattr(cfg, "notes", []):
        warn(note)
    t0 = time.time()
    mod = recipe(cfg.train.stage)
    run = RunFolder.start(cfg, resume=resume, overwrite=overwrite)
    result = mod.run(cfg, run, progress=progress, callbacks=list(callbacks or []), **recipe_kw)
    summary = finish(result.summary, t0)
    if run.main:
        run.write_json("summary.json", summary)
        if cfg.eval.report:
            log(f"report: {write_report(run.path)[1]}")
        print_summary(summary)
    return result


def preview(cfg, n: int = 3):
    """The first `n` training samples as the stage renders them (`seektune data preview`)."""
    mod = recipe(cfg.train.stage)
    if not hasattr(mod, "preview"):
        raise ConfigError(f"seektune data preview: stage {cfg.train.stage} has no preview")
    return mod.preview(cfg, n)
