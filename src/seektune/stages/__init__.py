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
    from ..engine.args import gpu_switch_problems
    from ..engine.memory import apply_host_policy
    from ..eval.report import write_report
    from ..models.loader import quantize_problem

    for note in getattr(cfg, "notes", []):
        warn(note)
    t0 = time.time()
    mod = recipe(cfg.train.stage)
    problem = quantize_problem(cfg.adapter.quantize_base)  # before a run folder exists: the machine cannot do it
    if problem:
        raise ConfigError(f"adapter.quantize_base: {problem}")
    switches = gpu_switch_problems(cfg)
    if switches:
        raise ConfigError("; ".join(switches))
    run = RunFolder.start(cfg, resume=resume, overwrite=overwrite)
    log(f"host memory: {apply_host_policy(cfg.train.return_freed_memory)}")
    bench = _benchmarks(cfg, run, progress)
    if bench is not None:
        bench.before()
    result = mod.run(cfg, run, progress=progress, callbacks=list(callbacks or []), **recipe_kw)
    if bench is not None:
        rows = bench.after(result.model, result.tokenizer)
        result.summary.setdefault("evidence", []).extend(_bench_evidence(rows))
    summary = finish(result.summary, t0)
    if run.main:
        run.write_json("summary.json", summary)
        if cfg.eval.report:
            log(f"report: {write_report(run.path)[1]}")
        print_summary(summary)
    return result


def _benchmarks(cfg, run: RunFolder, progress: bool):
    """`eval.benchmarks`: the same questions on the base model before the stage and the tuned model after."""
    if not cfg.eval.benchmarks:
        return None
    from ..eval.benchmarks import RunBenchmarks
    from ..utils.dist import world_size

    if world_size() > 1:
        raise ConfigError("eval.benchmarks: not run under --nproc > 1 (the other ranks would wait on rank 0); "
                          "score the run afterwards with `seektune eval RUN --bench ... --base`")
    return RunBenchmarks(cfg, run.path, resume=bool(run.resume_from), progress=progress)


def _bench_evidence(rows: list[dict]) -> list[dict]:
    from ..engine.summary import evidence

    out = []
    for r in rows:
        e = evidence(f"{r['bench']} {r['metric']}", round(r["before"]["value"], 4), round(r["after"]["value"], 4),
                     n=r["change"]["n"], key=f"bench/{r['bench']}/{r['metric']}")
        e.update(change_low=round(r["change"]["low"], 4), change_high=round(r["change"]["high"], 4),
                 verdict=r["verdict"])
        out.append(e)
    return out


def preview(cfg, n: int = 3):
    """The first `n` training samples as the stage renders them (`seektune data preview`)."""
    mod = recipe(cfg.train.stage)
    if not hasattr(mod, "preview"):
        raise ConfigError(f"seektune data preview: stage {cfg.train.stage} has no preview")
    return mod.preview(cfg, n)
