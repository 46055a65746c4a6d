"""`seektune tune CONFIG`: an Optuna study whose trials are ordinary `seektune train` runs.

Optuna is the engine (sampler, pruner, storage, distributed workers); seektune supplies the
objective: a trial is the stage's own recipe run by `stages.run_stage` into
<train.output_dir>/tune/trial_<n>, scored by a metric it logs at evaluation. Each evaluation is
reported to the trial, so the pruner stops a poor trial early (trl trainers have no `model_init`,
so `Trainer.hyperparameter_search` cannot drive them: field notes). A trial that raises (out of
memory, a NaN loss) is a failed trial with its error saved, not a crash; a config or data error is
the same for every trial and stops the study.

The study lives in an Optuna storage (SQLite in the run folder by default, with heartbeats), so
running the same command again resumes it, and several workers can share one RDB or journal store.
"""

from __future__ import annotations

import math
import os
import socket
import time
from dataclasses import dataclass
from pathlib import Path

from ..config import ConfigError, validate_config
from ..data.io import DataError
from ..eval.report import read_metrics
from ..utils.console import log, warn
from .space import base_params, check_space, suggest, with_params

HEARTBEAT_S, GRACE_S = 20, 60


def direction_of(objective: str, direction: str) -> str:
    if direction != "auto":
        return direction
    low = objective.lower()
    return "minimize" if ("loss" in low or "perplexity" in low or low.endswith("ppl")) else "maximize"


def storage_url(cfg) -> str:
    return cfg.tune.storage or f"sqlite:///{(Path(cfg.train.output_dir) / 'tune' / 'study.db').resolve()}"


def make_storage(url: str):
    """An Optuna storage: `journal:PATH` (a JournalFS log file), else an RDB URL with heartbeats, so a trial
    of a killed worker is marked failed instead of running forever."""
    import optuna

    if url.startswith("journal:"):
        from optuna.storages.journal import JournalFileBackend

        return optuna.storages.JournalStorage(JournalFileBackend(url[len("journal:"):]))
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        return optuna.storages.RDBStorage(url, heartbeat_interval=HEARTBEAT_S, grace_period=GRACE_S)


def make_pruner(cfg):
    import optuna

    t = cfg.tune
    warm = t.prune_after_steps
    return {"median": lambda: optuna.pruners.MedianPruner(n_startup_trials=t.startup_trials, n_warmup_steps=warm),
            "hyperband": lambda: optuna.pruners.HyperbandPruner(),
            "wilcoxon": lambda: optuna.pruners.WilcoxonPruner(),
            "none": lambda: optuna.pruners.NopPruner()}[t.pruner]()


def make_sampler(cfg):
    import optuna

    if cfg.tune.sampler == "random":
        return optuna.samplers.RandomSampler(seed=cfg.tune.seed)
    return optuna.samplers.TPESampler(seed=cfg.tune.seed, n_startup_trials=max(1, cfg.tune.startup_trials))


class ReportToTrial:
    """A TrainerCallback (duck-typed: built lazily so importing this module needs no transformers) that
    reports every evaluation's objective to the trial and stops the training when the pruner says so."""

    def __new__(cls, trial, objective: str):
        from transformers import TrainerCallback

        class _Cb(TrainerCallback):
            def __init__(self):
                self.pruned_at: int | None = None
                self.steps: set[int] = set()

            def on_evaluate(self, args, state, control, metrics=None, **kw):
                v = (metrics or {}).get(objective)
                if v is None or not isinstance(v, (int, float)) or math.isnan(v):
                    return
                if state.global_step in self.steps:
                    return  # the end-of-run evaluation of a step already reported
                self.steps.add(state.global_step)
                trial.report(float(v), state.global_step)
                if trial.should_prune():
                    self.pruned_at = state.global_step
                    control.should_training_stop = True

        return _Cb()


def objective_value(run_dir: Path, summary: dict, key: str) -> float | None:
    """The trial's final score: the last logged value of `key` in metrics.jsonl, else the 'after' of the
    summary evidence row named `key`."""
    logged = [float(r[key]) for r in read_metrics(run_dir / "metrics.jsonl") if isinstance(r.get(key), (int, float))]
    if logged:
        return logged[-1]
    for e in summary.get("evidence", []):
        if key in (e.get("key"), e.get("name")) and isinstance(e.get("after"), (int, float)):
            return float(e["after"])
    return None


def logged_keys(run_dir: Path, summary: dict) -> list[str]:
    keys = {k for r in read_metrics(run_dir / "metrics.jsonl") for k, v in r.items() if isinstance(v, (int, float))}
    keys |= {e.get("key") for e in summary.get("evidence", []) if e.get("key")}
    return sorted(k for k in keys if k.startswith("eval") or "/" in k)


@dataclass
class TuneRun:
    """One `seektune tune` invocation: the base config, its raw mapping and where the study lives."""

    cfg: object          # the validated base Config
    data: dict           # its raw mapping (what trials modify)
    source: str
    progress: bool = False

    @property
    def folder(self) -> Path:
        return Path(self.cfg.train.output_dir) / "tune"

    def prepare(self):
        """Check the space against the stage, then create or load the study."""
        import optuna

        t = self.cfg.tune
        if not t.space:
            raise ConfigError("tune.space: nothing to search; give dotted keys with a range or choices")
        if t.pruner != "none" and not self.cfg.train.eval_steps:
            raise ConfigError(f"tune.pruner: {t.pruner} prunes from the evaluations a trial makes; set train.eval_steps "
                              "(or tune.pruner: none)")
        check_space(self.data, t.space, self.source)
        self.folder.mkdir(parents=True, exist_ok=True)
        optuna.logging.set_verbosity(optuna.logging.WARNING)
        name = t.study_name or Path(self.cfg.train.output_dir).name
        study = optuna.create_study(study_name=name, storage=make_storage(storage_url(self.cfg)),
                                    direction=direction_of(t.objective, t.direction), sampler=make_sampler(self.cfg),
                                    pruner=make_pruner(self.cfg), load_if_exists=True)
        if t.baseline and not study.trials:
            params = base_params(self.cfg, t.space)
            if params is None:
                warn("tune.baseline: the config's own values lie outside tune.space; no baseline trial")
            else:
                study.enqueue_trial(params, user_attrs={"baseline": True})
        return study

    def objective(self, trial) -> float:
        import optuna

        params = {k: suggest(trial, k, spec) for k, spec in self.cfg.tune.space.items()}
        run_dir = self.folder / f"trial_{trial.number:03d}"
        cfg = validate_config(with_params(self.data, params, str(run_dir)), f"{self.source} (trial {trial.number})")
        trial.set_user_attr("run_dir", str(run_dir))
        trial.set_user_attr("worker", f"{socket.gethostname()}:{os.getpid()}")
        log(f"trial {trial.number}: " + ", ".join(f"{k}={_short(v)}" for k, v in params.items()))
        from ..stages import run_stage

        cb = ReportToTrial(trial, self.cfg.tune.objective)
        t0 = time.time()
        try:
            result = run_stage(cfg, overwrite=True, progress=self.progress, callbacks=[cb])
        except (ConfigError, DataError):
            raise  # the same for every trial: stop the study with the message
        except Exception as e:  # noqa: BLE001 - OOM, NaN, a library error: this trial failed, the study goes on
            trial.set_user_attr("error", f"{type(e).__name__}: {e}"[:800])
            trial.set_user_attr("seconds", round(time.time() - t0, 1))
            warn(f"trial {trial.number} failed: {type(e).__name__}: {e}"[:300])
            raise _Failed(str(e)) from None
        trial.set_user_attr("seconds", round(time.time() - t0, 1))
        trial.set_user_attr("steps", result.summary.get("steps"))
        if cb.pruned_at is not None:
            trial.set_user_attr("pruned_at", cb.pruned_at)
            log(f"trial {trial.number}: pruned at step {cb.pruned_at} ({time.time() - t0:.0f}s)")
            raise optuna.TrialPruned(f"pruned at step {cb.pruned_at}")
        value = objective_value(run_dir, result.summary, self.cfg.tune.objective)
        if value is None:
            raise ConfigError(f"tune.objective: '{self.cfg.tune.objective}' was never logged by trial {trial.number}; "
                              f"it logged: {', '.join(logged_keys(run_dir, result.summary)) or 'no eval metrics'}")
        log(f"trial {trial.number}: {self.cfg.tune.objective} = {value:.6g} ({time.time() - t0:.0f}s)")
        return value

    def optimize(self, study, n_trials: int | None = None) -> None:
        from optuna.study import MaxTrialsCallback
        from optuna.trial import TrialState

        t = self.cfg.tune
        done = sum(1 for tr in study.trials if tr.state.is_finished())
        remaining = (n_trials if n_trials is not None else t.trials) - done
        if remaining <= 0:
            log(f"tune: the study already has {done} finished trials (tune.trials {t.trials})")
            return
        log(f"tune: {remaining} trial(s) to run ({done} finished) on {storage_url(self.cfg)}; objective "
            f"{t.objective} ({study.direction.name.lower()}), sampler {t.sampler}, pruner {t.pruner}")
        finished = (TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL)
        study.optimize(self.objective, n_trials=remaining, timeout=t.timeout, catch=(_Failed,),
                       callbacks=[MaxTrialsCallback(n_trials or t.trials, states=finished)], gc_after_trial=True)


class _Failed(RuntimeError):
    """A trial that raised: recorded as a failed trial (Optuna's `catch`), the study goes on."""


def _short(v) -> str:
    return f"{v:.4g}" if isinstance(v, float) else str(v)
