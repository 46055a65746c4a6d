"""Hyperparameter search on Optuna (`seektune tune CONFIG`): every trial an ordinary run folder.

    space.py    tune.space -> Optuna distributions; each key checked against the stage first
    study.py    the objective (a `run_stage` with a callback reporting each evaluation), storage, workers
    results.py  trials table, best.yaml, plots, report, the held-out test scores
"""

from __future__ import annotations

from pathlib import Path

from ..config import load_config
from .results import BEST_YAML, finish
from .study import TuneRun

__all__ = ["BEST_YAML", "run_tune"]


def run_tune(config: str | Path, overrides: list[str] | None = None, trials: int | None = None,
             progress: bool = False) -> dict:
    """Create or resume the study of CONFIG, run its remaining trials, write its outputs."""
    import yaml

    from ..config.load import apply_overrides

    cfg = load_config(config, overrides)
    raw = yaml.safe_load(Path(config).read_text(encoding="utf-8")) or {}
    if overrides:
        raw = apply_overrides(raw, overrides)
    run = TuneRun(cfg, raw, str(config), progress=progress)
    study = run.prepare()
    run.optimize(study, trials)
    return finish(run, study)
