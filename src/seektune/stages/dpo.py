"""train.stage: dpo: direct preference optimisation through trl's DPOTrainer (every trl loss_type).

With a LoRA adapter the reference policy is the same weights with the adapter switched off
(ref_model=None), so no second copy of the model sits in memory; full fine-tuning keeps a frozen
copy. Evidence: the held-out implicit reward margin
beta * [(log pi - log ref)(chosen) - (log pi - log ref)(rejected)] and the share of pairs where it is
positive, before and after training on the same pairs (before training the margin is 0).
"""

from __future__ import annotations

import time

from transformers import set_seed

from ..data.templates import get_template
from ..engine.run import RunFolder
from ..engine.summary import StageResult, evidence, make_summary
from ..engine.trainer import SeekTrainerMixin
from ..models.adapters import apply_adapter
from ..models.loader import load_model
from ..utils.console import log
from ..utils.threads import configure_threads
from ..eval.preference import logp_preference
from .common import load_pairs, preference_evidence, trl_trainer


def rows(pairs) -> list[dict]:
    return [{"prompt": p.prompt, "chosen": p.chosen, "rejected": p.rejected} for p in pairs]


def heldout(trainer) -> dict:
    m = trainer.evaluate()
    return {"margin": m.get("eval_rewards/margins"), "accuracy": m.get("eval_rewards/accuracies"),
            "loss": m.get("eval_loss"), "chosen_logp": m.get("eval_logps/chosen"),
            "rejected_logp": m.get("eval_logps/rejected")}


def _trainer_cls():
    from trl import DPOTrainer

    class SeekDPOTrainer(SeekTrainerMixin, DPOTrainer):
        """trl's DPOTrainer on the engine (schedules, NaN guard, crash-safe checkpoints, monitors)."""

    return SeekDPOTrainer


def run(cfg, run: RunFolder, progress: bool = True, callbacks: list | None = None) -> StageResult:
    from datasets import Dataset
    from trl import DPOConfig

    o = cfg.dpo
    # 1. setup
    threads = configure_threads(cfg.train.num_threads)
    set_seed(cfg.train.seed)
    model, tok, model_path = load_model(cfg.model, log=log, dropout=cfg.train.dropout,
                                        quantize=cfg.adapter.quantize_base)
    template = get_template(cfg.data.template, tok)
    log(f"policy: {cfg.model.name_or_path}; template {template.name}; threads {threads}")
    train, ev, stats = load_pairs(cfg, run, tok, template, o.max_prompt_length)
    model, rep = apply_adapter(model, cfg.adapter, "causal_lm", log=log)
    for line in rep.lines():
        log(line)
    ref = None
    if rep.method != "lora":
        log("reference: a frozen copy of the base (full/freeze fine-tuning needs one; LoRA would not)")
        ref, _, _ = load_model(cfg.model, tokenizer=tok, log=log)
    else:
        log("reference: the base weights with the LoRA adapter disabled (no second copy in memory)")
    trainer, health, counter = trl_trainer(
        _trainer_cls(), DPOConfig, cfg, run, model, tok, Dataset.from_list(rows(train)),
        Dataset.from_list(rows(ev)) if ev else None, progress, callbacks or [],
        tokens_per_batch=2 * cfg.train.batch_size * cfg.data.max_length, trainer_kw={"ref_model": ref},
        beta=o.beta, loss_type=[o.loss_type], label_smoothing=o.label_smoothing, max_length=cfg.data.max_length,
        disable_dropout=o.disable_dropout, precompute_ref_log_probs=False, remove_unused_columns=True)

    # 2. train
    bs = cfg.train.eval_batch_size or cfg.train.batch_size
    before = run.before("heldout", lambda: heldout(trainer)) if ev else None
    lp_before = run.before("logp_preference", lambda: logp_preference(trainer.model, tok, ev, bs)) if ev else None
    if before:
        log(f"held-out reward margin before training: {before['margin']:.4f} (accuracy {before['accuracy']:.3f})")
    t_train = time.time()
    out = trainer.train(resume_from_checkpoint=run.resume_from)
    train_s = time.time() - t_train
    after = heldout(trainer) if ev else None
    lp_after = logp_preference(trainer.model, tok, ev, bs) if ev else None
    if after:
        log(f"held-out reward margin after training: {after['margin']:.4f} (accuracy {after['accuracy']:.3f})")

    # 3. save
    trainer.model.config.use_cache = True
    run.save_final(lambda d: (trainer.save_model(str(d)), run.main and tok.save_pretrained(str(d))))

    # 4. summary
    ev_rows = []
    if before and after:
        ev_rows = [evidence("held-out reward margin", before["margin"], after["margin"], "higher", len(ev), "margin"),
                   evidence("held-out pair accuracy", before["accuracy"], after["accuracy"], "higher", len(ev),
                            "accuracy")] + preference_evidence(lp_before, lp_after)
    summary = make_summary(
        "dpo", cfg, adapter_report=rep, model_path=model_path, data=stats, steps=trainer.state.global_step,
        train_loss=out.training_loss, train_seconds=train_s, threads=threads, final=str(run.final),
        warnings=health.warnings, resumed_from=run.resume_from, evidence_rows=ev_rows,
        curves=[{"title": "DPO: chosen - rejected reward and pair accuracy",
                 "keys": ["rewards/margins", "rewards/accuracies", "eval_rewards/margins"]}],
        loss_type=o.loss_type, beta=o.beta, heldout_before=before, heldout_after=after,
        logp_before=lp_before, logp_after=lp_after,
        nonfinite_skipped=health.nonfinite_total)
    return StageResult(summary, model=trainer.model, tokenizer=tok, trainer=trainer)
