"""train.stage: simpo: SimPO and CPO through trl.experimental's CPOTrainer.

SimPO needs no reference model: the implicit reward is beta x the mean token log-likelihood of a
reply, and the loss asks the chosen reply to beat the rejected one by the margin gamma; cpo_alpha > 0
adds CPO's SFT term on the chosen reply (loss_type sigmoid is plain CPO). Evidence: the held-out
pair accuracy and margin of the policy's own mean token log-likelihood, before and after.
"""

from __future__ import annotations

import time

from transformers import set_seed

from ..data.templates import get_template
from ..engine.run import RunFolder
from ..engine.summary import StageResult, make_summary
from ..engine.trainer import SeekTrainerMixin
from ..eval.preference import logp_preference
from ..models.adapters import apply_adapter
from ..models.loader import load_model
from ..utils.console import log
from ..utils.threads import configure_threads
from .common import experimental, load_pairs, preference_evidence, trl_trainer
from .dpo import rows


def run(cfg, run: RunFolder, progress: bool = True, callbacks: list | None = None) -> StageResult:
    from datasets import Dataset

    cpo = experimental("cpo")

    class SeekCPOTrainer(SeekTrainerMixin, cpo.CPOTrainer):
        """trl's CPOTrainer on the engine."""

    o = cfg.simpo
    # 1. setup
    threads = configure_threads(cfg.train.num_threads)
    set_seed(cfg.train.seed)
    model, tok, model_path = load_model(cfg.model, log=log, dropout=cfg.train.dropout,
                                        quantize=cfg.adapter.quantize_base)
    template = get_template(cfg.data.template, tok)
    train, ev, stats = load_pairs(cfg, run, tok, template, o.max_prompt_length)
    model, rep = apply_adapter(model, cfg.adapter, "causal_lm", log=log)
    for line in rep.lines():
        log(line)
    bs = cfg.train.eval_batch_size or cfg.train.batch_size
    before = run.before("logp_preference", lambda: logp_preference(model, tok, ev, bs))
    log(f"held-out pair accuracy before training: {before['accuracy']} (margin {before['margin']})")
    trainer, health, counter = trl_trainer(
        SeekCPOTrainer, cpo.CPOConfig, cfg, run, model, tok, Dataset.from_list(rows(train)), None, progress,
        callbacks or [], tokens_per_batch=2 * cfg.train.batch_size * cfg.data.max_length, loss_type=o.loss_type,
        beta=o.beta, simpo_gamma=o.gamma, cpo_alpha=o.cpo_alpha, label_smoothing=o.label_smoothing,
        max_length=cfg.data.max_length, max_completion_length=cfg.data.max_length,
        disable_dropout=o.disable_dropout, remove_unused_columns=False)
    log(f"simpo: loss {o.loss_type}, beta {o.beta}, gamma {o.gamma}, cpo_alpha {o.cpo_alpha} (reference-free)")

    # 2. train
    t_train = time.time()
    out = trainer.train(resume_from_checkpoint=run.resume_from)
    train_s = time.time() - t_train
    after = logp_preference(trainer.model, tok, ev, bs)
    log(f"held-out pair accuracy after training: {after['accuracy']} (margin {after['margin']})")

    # 3. save
    trainer.model.config.use_cache = True
    run.save_final(lambda d: (trainer.save_model(str(d)), run.main and tok.save_pretrained(str(d))))

    # 4. summary
    summary = make_summary(
        "simpo", cfg, adapter_report=rep, model_path=model_path, data=stats, steps=trainer.state.global_step,
        train_loss=out.training_loss, train_seconds=train_s, threads=threads, final=str(run.final),
        warnings=health.warnings, resumed_from=run.resume_from, evidence_rows=preference_evidence(before, after),
        curves=[{"title": "SimPO: chosen - rejected reward and pair accuracy",
                 "keys": ["rewards/margins", "rewards/accuracies"]}],
        loss_type=o.loss_type, beta=o.beta, gamma=o.gamma, cpo_alpha=o.cpo_alpha, heldout_before=before,
        heldout_after=after, nonfinite_skipped=health.nonfinite_total)
    return StageResult(summary, model=trainer.model, tokenizer=tok, trainer=trainer)
