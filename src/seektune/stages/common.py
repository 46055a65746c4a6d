"""Glue the preference recipes share (rm, dpo, and the preference methods built on trl): reading the
pairs into the run folder's accounting, and building a trl trainer on the engine."""

from __future__ import annotations

from ..data.preference import prepare_pairs
from ..engine.args import trl_args
from ..engine.callbacks import attach, standard_callbacks
from ..engine.distributed import distributed_kwargs
from ..engine.memory import plan_checkpointing
from ..engine.monitors import Health
from ..engine.run import RunFolder
from ..engine.trainer import TokenCounter
from ..models.loader import is_moe
from ..utils.console import log


def load_pairs(cfg, run: RunFolder, tok, template, max_prompt_length: int, prompts_only: bool = False):
    """Rendered train/eval pairs; rejects (too long included) and unused eval records go to the run folder."""
    train, ev, stats, rejects, unused = prepare_pairs(cfg.data, tok, template, cfg.train.seed, max_prompt_length,
                                                      prompts_only)
    run.write_rejects(rejects, unused)
    log(f"preference data: {stats['accounting']}" + (f" (see {run.path / 'rejects.jsonl'})" if rejects else ""))
    return train, ev, stats


def trl_trainer(trainer_cls, config_cls, cfg, run: RunFolder, model, tok, train_ds, eval_ds, progress: bool,
                callbacks: list, tokens_per_batch: int, trainer_kw: dict | None = None,
                whole_layer_checkpointing: bool = False, **config_kw):
    """A trl trainer (composed with SeekTrainerMixin by the caller) on our arguments, callbacks and monitors.

    whole_layer_checkpointing: the trainer switches checkpointing off and on around generation with
    kwargs torch's checkpoint takes (trl's GRPO does), so "every n-th layer" becomes "every layer"."""
    every_n, gc_line = plan_checkpointing(cfg.train.gradient_checkpointing, model, tokens_per_batch,
                                          cfg.train.activation_budget_gb)
    if gc_line:
        log(gc_line)
    if whole_layer_checkpointing and every_n and every_n > 1:
        every_n = 1
        log("activation checkpointing: every layer instead (trl re-enables it around generation and cannot "
            "keep every n-th only)")
    args = trl_args(config_cls, cfg, run.path, eval_ds is not None, checkpoint_every=every_n,
                    dist_kwargs=distributed_kwargs(cfg, model, is_moe(model)), **config_kw)
    health, counter = Health(), TokenCounter()
    cbs = standard_callbacks(cfg, run.path, health, counter, model, progress)
    if cfg.train.early_stopping:
        from transformers import EarlyStoppingCallback

        es = cfg.train.early_stopping
        cbs.append(EarlyStoppingCallback(early_stopping_patience=es.patience, early_stopping_threshold=es.min_delta))
    trainer = trainer_cls(model=model, args=args, train_dataset=train_ds, eval_dataset=eval_ds, processing_class=tok,
                          callbacks=[*cbs, *callbacks], st_cfg=cfg, health=health, token_counter=counter,
                          pad_token_id=tok.pad_token_id, **(trainer_kw or {}))
    attach(trainer, cbs)
    return trainer, health, counter


def experimental(name: str):
    """Import a trl.experimental trainer module with its warning turned into one clear line."""
    import importlib
    import os

    from ..utils.console import warn

    os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")
    import trl

    warn(f"{name} runs on trl.experimental (trl {trl.__version__}, pinned): its API may change between trl releases")
    return importlib.import_module(f"trl.experimental.{name}")


def preference_evidence(before: dict | None, after: dict | None) -> list[dict]:
    """The held-out pair accuracy and margin of the policy's own log-likelihoods (eval/preference.py)."""
    from ..engine.summary import evidence

    if not (before and after and after.get("pairs")):
        return []
    n = after["pairs"]
    return [evidence("held-out pair accuracy (policy log-likelihood)", before["accuracy"], after["accuracy"],
                     "higher", n, key="logp_accuracy"),
            evidence("held-out log-likelihood margin", before["margin"], after["margin"], "higher", n,
                     key="logp_margin")]
