"""train.stage: dpo — direct preference optimisation through trl's DPOTrainer.

With a LoRA adapter the reference policy is the same weights with the adapter switched off
(ref_model=None), so no second copy of the model sits in memory. With full fine-tuning trl keeps a
frozen copy. The evidence is the held-out implicit reward margin
beta * [(log pi - log ref)(chosen) - (log pi - log ref)(rejected)], before and after training, on
the same pairs (and the share of pairs where it is positive).
"""

from __future__ import annotations

import time

from transformers import PrinterCallback

from ..config import Config
from ..data.templates import get_template
from ..models.adapters import apply_adapter
from ..models.loader import load_model
from ..utils.console import log
from .align_common import prepare_pairs, start_run, trl_args, write_summary
from .callbacks import MetricsLogger, RichProgress


def _rows(pairs) -> list[dict]:
    return [{"prompt": p.prompt, "chosen": p.chosen, "rejected": p.rejected} for p in pairs]


def _heldout(trainer) -> dict:
    m = trainer.evaluate()
    return {"margin": m.get("eval_rewards/margins"), "accuracy": m.get("eval_rewards/accuracies"),
            "loss": m.get("eval_loss"), "chosen_logp": m.get("eval_logps/chosen"),
            "rejected_logp": m.get("eval_logps/rejected")}


def run_dpo(cfg: Config, show_progress: bool = True, callbacks: list | None = None) -> dict:
    from datasets import Dataset
    from trl import DPOConfig, DPOTrainer

    t0 = time.time()
    run_dir, threads = start_run(cfg)
    model, tok, model_path = load_model(cfg.model, log=log, dropout=cfg.train.dropout)
    template = get_template(cfg.data.template, tok)
    log(f"policy: {cfg.model.name_or_path}; template {template.name}; threads {threads}")
    train, ev, stats = prepare_pairs(cfg, tok, template, run_dir)
    model, rep = apply_adapter(model, cfg.adapter, "causal_lm", log=log)
    for line in rep.lines():
        log(line)
    a = cfg.align
    args = trl_args(DPOConfig, cfg, run_dir, bool(ev), beta=a.beta, loss_type=[a.loss_type],
                    label_smoothing=a.label_smoothing, max_length=cfg.data.max_length, disable_dropout=True,
                    precompute_ref_log_probs=False, remove_unused_columns=True)
    ref = None
    if rep.method != "lora":
        log("reference: a frozen copy of the base (full/freeze fine-tuning needs one; LoRA would not)")
        ref, _, _ = load_model(cfg.model, tokenizer=tok, log=log)
    else:
        log("reference: the base weights with the LoRA adapter disabled (no second copy in memory)")
    trainer = DPOTrainer(model=model, ref_model=ref, args=args, train_dataset=Dataset.from_list(_rows(train)),
                         eval_dataset=Dataset.from_list(_rows(ev)) if ev else None, processing_class=tok,
                         callbacks=[MetricsLogger(run_dir), RichProgress(enabled=show_progress), *(callbacks or [])])
    trainer.remove_callback(PrinterCallback)
    before = _heldout(trainer) if ev else None
    if before:
        log(f"held-out reward margin before training: {before['margin']:.4f} (accuracy {before['accuracy']:.3f})")
    t_train = time.time()
    out = trainer.train()
    train_s = time.time() - t_train
    after = _heldout(trainer) if ev else None
    if after:
        log(f"held-out reward margin after training: {after['margin']:.4f} (accuracy {after['accuracy']:.3f})")

    final = run_dir / "final"
    trainer.model.config.use_cache = True
    trainer.save_model(str(final))
    tok.save_pretrained(str(final))
    summary = {"stage": "dpo", "loss_type": a.loss_type, "beta": a.beta, "model": cfg.model.name_or_path,
               "model_path": model_path, "adapter": rep.method, "trainable_params": rep.trainable,
               "total_params": rep.total, "data": stats, "steps": trainer.state.global_step,
               "train_loss": out.training_loss, "heldout_before": before, "heldout_after": after,
               "train_seconds": round(train_s, 2), "threads": threads, "final": str(final)}
    write_summary(run_dir, summary, t0, report=cfg.eval.report)
    _print(summary)
    summary["_trainer"] = trainer
    return summary


def _print(s: dict) -> None:
    from rich.panel import Panel

    from ..utils.console import console

    lines = [f"final model    {s['final']}", f"steps          {s['steps']} in {s['train_seconds']:.0f}s"]
    b, a = s["heldout_before"], s["heldout_after"]
    if b and a:
        lines.append(f"held-out       reward margin {b['margin']:.4f} -> {a['margin']:.4f}, "
                     f"accuracy {b['accuracy']:.3f} -> {a['accuracy']:.3f}")
    console.print(Panel("\n".join(lines), title="seektune train (dpo): done", expand=False))
