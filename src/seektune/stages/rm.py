"""train.stage: rm: a reward model is the base model with a scalar head (sequence classification,
num_labels=1) trained with trl's RewardTrainer on the pairwise loss -log sigmoid(r_chosen - r_rejected).

Evidence: the pairwise accuracy on held-out pairs (share of pairs where the chosen response scores
above the rejected one) and the mean margin, before and after training on exactly the same pairs.
The run folder is a reward model for `train.stage: ppo` (ppo.reward_model: <this run>).
"""

from __future__ import annotations

import time

from transformers import set_seed

from ..data.preference import RenderedPair
from ..data.templates import get_template
from ..engine.run import RunFolder
from ..engine.summary import StageResult, evidence, make_summary
from ..engine.trainer import SeekTrainerMixin
from ..eval.preference import pairwise_accuracy
from ..models.adapters import apply_adapter
from ..models.loader import load_model
from ..utils.console import log
from ..utils.threads import configure_threads
from .common import load_pairs, trl_trainer


def _ids(tok, text: str) -> list[int]:
    return tok(text, add_special_tokens=False)["input_ids"]  # the template text carries its own BOS


def tokenize_pairs(pairs: list[RenderedPair], tok) -> list[dict]:
    return [{"chosen_ids": _ids(tok, p.prompt + p.chosen), "rejected_ids": _ids(tok, p.prompt + p.rejected)}
            for p in pairs]


def _trainer_cls():
    from trl import RewardTrainer

    class SeekRewardTrainer(SeekTrainerMixin, RewardTrainer):
        """trl's RewardTrainer on the engine (schedules, NaN guard, crash-safe checkpoints, monitors)."""

    return SeekRewardTrainer


def run(cfg, run: RunFolder, progress: bool = True, callbacks: list | None = None) -> StageResult:
    from datasets import Dataset
    from trl import RewardConfig

    o = cfg.rm
    # 1. setup
    threads = configure_threads(cfg.train.num_threads)
    set_seed(cfg.train.seed)
    mcfg = cfg.model.model_copy(update={"task": "sequence_classification", "num_labels": 1})
    model, tok, model_path = load_model(mcfg, num_labels=1, log=log, dropout=cfg.train.dropout,
                                        quantize=cfg.adapter.quantize_base)
    template = get_template(cfg.data.template, tok)
    log(f"reward model: {cfg.model.name_or_path} + scalar head; template {template.name}; threads {threads}")
    train, ev, stats = load_pairs(cfg, run, tok, template, o.max_prompt_length)
    model, rep = apply_adapter(model, cfg.adapter, "sequence_classification", log=log)
    for line in rep.lines():
        log(line)
    bs = cfg.train.eval_batch_size or cfg.train.batch_size
    before = run.before("pairwise", lambda: pairwise_accuracy(model, tok, ev, bs))
    log(f"held-out pairwise accuracy before training: {before['accuracy']} (margin {before['margin']}, "
        f"{before['pairs']} pairs)")
    trainer, health, counter = trl_trainer(
        _trainer_cls(), RewardConfig, cfg, run, model, tok, Dataset.from_list(tokenize_pairs(train, tok)),
        Dataset.from_list(tokenize_pairs(ev, tok)) if ev else None, progress, callbacks or [],
        tokens_per_batch=2 * cfg.train.batch_size * cfg.data.max_length, max_length=cfg.data.max_length,
        disable_dropout=o.disable_dropout, remove_unused_columns=True)

    # 2. train
    t_train = time.time()
    out = trainer.train(resume_from_checkpoint=run.resume_from)
    train_s = time.time() - t_train
    after = pairwise_accuracy(trainer.model, tok, ev, bs)
    log(f"held-out pairwise accuracy after training: {after['accuracy']} (margin {after['margin']})")

    # 3. save
    run.save_final(lambda d: (trainer.save_model(str(d)), run.main and tok.save_pretrained(str(d))))

    # 4. summary
    summary = make_summary(
        "rm", cfg, adapter_report=rep, model_path=model_path, data=stats, steps=trainer.state.global_step,
        train_loss=out.training_loss, train_seconds=train_s, threads=threads, final=str(run.final),
        warnings=health.warnings, resumed_from=run.resume_from,
        evidence_rows=[evidence("held-out pair accuracy", before["accuracy"], after["accuracy"], "higher",
                                after["pairs"], key="accuracy"),
                       evidence("held-out margin", before["margin"], after["margin"], "higher", after["pairs"],
                                key="margin")],
        curves=[{"title": "Reward model: pair accuracy and margin", "keys": ["accuracy", "margin", "eval_accuracy"]}],
        heldout_before=before, heldout_after=after, nonfinite_skipped=health.nonfinite_total)
    return StageResult(summary, model=trainer.model, tokenizer=tok, trainer=trainer)
