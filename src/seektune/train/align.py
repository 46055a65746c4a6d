"""Dispatch of the alignment stages (train.stage rm, dpo, ppo) to their recipes."""

from __future__ import annotations

from ..config import Config, ConfigError


def run_stage(cfg: Config, show_progress: bool = True, callbacks: list | None = None) -> dict:
    stage = cfg.train.stage
    if cfg.model.task != "causal_lm":
        raise ConfigError(f"train.stage={stage} starts from a causal LM: leave model.task as causal_lm "
                          "(the rm stage adds the scalar head itself)")
    if stage == "rm":
        from .reward import run_rm

        return run_rm(cfg, show_progress=show_progress, callbacks=callbacks)
    if stage == "dpo":
        from .dpo import run_dpo

        return run_dpo(cfg, show_progress=show_progress, callbacks=callbacks)
    if stage == "ppo":
        from .ppo import run_ppo

        return run_ppo(cfg, show_progress=show_progress)
    raise ConfigError(f"train.stage: unknown alignment stage '{stage}'")
