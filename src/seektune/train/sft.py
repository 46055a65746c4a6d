"""The causal-LM SFT recipe: config in, a run folder out.

Run folder layout (one per run):
    config.yaml      resolved configuration (re-running it reproduces the run with the same data)
    metrics.jsonl    one JSON object per logged step (step, loss, lr, grad_norm; eval_* for evals)
    tensorboard/     the same scalars for TensorBoard
    checkpoints/     periodic checkpoints (resume with --resume)
    final/           adapter or full model + tokenizer, loadable by plain transformers/peft
    rejects.jsonl    records that could not be used, with file:line and reason
    summary.json     counts, timings, eval loss before and after, throughput
    eval.json        generation metrics before/after on held-out and general data (seektune.eval)
    report.md/.html  the run report with curves, tables and sample generations (seektune.eval.report)
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import torch
from transformers import PrinterCallback, Trainer, TrainingArguments, set_seed

from ..config import Config
from ..data.collate import PadCollator
from ..data.sft import build_sft_data, pack_examples
from ..data.templates import get_template
from ..models.adapters import apply_adapter
from ..models.loader import load_model
from ..utils.console import console, log
from .callbacks import MetricsLogger, RichProgress


class TokenCounter:
    """Counts real (non-pad) and padded tokens seen by training steps, for tokens/s and padding share."""

    def __init__(self):
        self.real = 0
        self.padded = 0

    @property
    def padding_share(self) -> float:
        return 1.0 - self.real / self.padded if self.padded else 0.0


class SeekTrainer(Trainer):
    """HF Trainer plus real-token accounting. Loss normalisation by real label tokens across
    gradient accumulation comes from the Trainer itself (num_items_in_batch)."""

    def __init__(self, *a, token_counter: TokenCounter | None = None, pad_token_id: int = 0, **kw):
        super().__init__(*a, **kw)
        self.token_counter = token_counter or TokenCounter()
        self.pad_token_id = pad_token_id

    def training_step(self, model, inputs, num_items_in_batch=None):
        ids = inputs["input_ids"]
        if "attention_mask" in inputs:
            real = int(inputs["attention_mask"].sum())
        else:
            real = int((ids != self.pad_token_id).sum())
        self.token_counter.real += real
        self.token_counter.padded += ids.numel()
        return super().training_step(model, inputs, num_items_in_batch)


def configure_threads(n: int | None) -> int:
    n = n or max(1, len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1)
    torch.set_num_threads(n)
    return n


def _scheduler(cfg) -> tuple[str, dict]:
    if cfg.train.lr_scheduler == "cosine":
        return "cosine_with_min_lr", {"min_lr": cfg.train.min_lr}
    if cfg.train.lr_scheduler == "linear":
        return "linear", {}
    return "constant_with_warmup", {}


def latest_checkpoint(ckpt_dir: Path) -> str | None:
    if not ckpt_dir.exists():
        return None
    cands = []
    for p in ckpt_dir.glob("checkpoint-*"):
        if (p / "trainer_state.json").exists():
            try:
                cands.append((int(p.name.split("-")[-1]), p))
            except ValueError:
                pass
    return str(max(cands)[1]) if cands else None


def training_arguments(cfg: Config, run_dir: Path, has_eval: bool) -> TrainingArguments:
    t = cfg.train
    sched, sched_kwargs = _scheduler(cfg)
    warmup = t.warmup_steps if t.warmup_steps else t.warmup_ratio  # transformers 5: float < 1 = ratio
    cpu = not torch.cuda.is_available()
    return TrainingArguments(
        output_dir=str(run_dir / "checkpoints"),
        per_device_train_batch_size=t.batch_size,
        per_device_eval_batch_size=t.eval_batch_size or t.batch_size,
        gradient_accumulation_steps=t.grad_accum,
        num_train_epochs=t.epochs,
        max_steps=t.max_steps,
        learning_rate=t.lr,
        lr_scheduler_type=sched,
        lr_scheduler_kwargs=sched_kwargs,
        warmup_steps=warmup,
        weight_decay=t.weight_decay,
        max_grad_norm=t.max_grad_norm,
        logging_steps=t.logging_steps,
        logging_first_step=True,
        eval_strategy=("steps" if t.eval_steps else "no") if has_eval else "no",
        eval_steps=t.eval_steps,
        save_strategy="steps" if t.save_steps else "no",
        save_steps=t.save_steps or 500,
        save_total_limit=t.save_total_limit,
        seed=t.seed,
        data_seed=t.seed,
        report_to="none",
        disable_tqdm=True,
        use_cpu=cpu,
        bf16=False if cpu else cfg.model.dtype == "bfloat16",
        fp16=False,
        remove_unused_columns=False,
        activation_checkpointing=t.gradient_checkpointing,
        dataloader_num_workers=0,
        save_only_model=False,
    )


def _strip_meta(rows: list[dict]) -> list[dict]:
    return [{k: v for k, v in r.items() if k in ("input_ids", "labels", "position_ids")} for r in rows]


def run_sft(cfg: Config, resume: bool = False, show_progress: bool = True) -> dict:
    t0 = time.time()
    run_dir = Path(cfg.train.output_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    resume = resume or cfg.train.resume
    if not resume and (run_dir / "metrics.jsonl").exists():
        (run_dir / "metrics.jsonl").unlink()  # a fresh run owns its metrics file
    (run_dir / "config.yaml").write_text(cfg.to_yaml(), encoding="utf-8")
    threads = configure_threads(cfg.train.num_threads)
    set_seed(cfg.train.seed)

    model, tok, model_path = load_model(cfg.model, log=log)
    template = get_template(cfg.data.template, tok)
    log(f"model: {cfg.model.name_or_path} ({model.config.model_type}) from {model_path}; template: {template.name}; "
        f"threads: {threads}")
    data = build_sft_data(cfg.data, tok, template, cfg.train.seed, run_dir / "rejects.jsonl", log=log)
    s = data.stats
    log(f"data: read {s['read']}, train {s['train']}, eval {s['eval']}, rejected {s['rejected']}"
        + (f" (see {run_dir / 'rejects.jsonl'})" if s["rejected"] else "") + f", truncated {s['truncated']}; "
        f"{s['train_label_tokens']:,} trained tokens of {s['train_tokens']:,}")
    train_rows = _strip_meta(data.train)
    if cfg.data.packing:
        train_rows = pack_examples(train_rows, cfg.data.max_length, seed=cfg.train.seed)
        log(f"packing: {s['train']} samples into {len(train_rows)} rows of <= {cfg.data.max_length} tokens")
    eval_rows = _strip_meta(data.eval)

    # issue 6: generation metrics of the base model, before any adapter touches it
    from ..eval.callback import make_generation_callback
    from ..eval.run_eval import RunEvaluator

    ckpt = latest_checkpoint(run_dir / "checkpoints") if resume else None
    evaluator = RunEvaluator.for_run(cfg, tok, template, data.eval, run_dir, resume=bool(ckpt),
                                     progress=show_progress)
    if cfg.eval.before_after and not ckpt:
        evaluator.measure(model, "before")

    model, rep = apply_adapter(model, cfg.adapter, cfg.model.task, log=log)
    for line in rep.lines():
        log(line)
    model.config.use_cache = False  # a KV cache would disable packed-sequence masking during training

    counter = TokenCounter()
    args = training_arguments(cfg, run_dir, has_eval=bool(eval_rows))
    trainer = SeekTrainer(
        model=model, args=args, train_dataset=train_rows, eval_dataset=eval_rows or None,
        data_collator=PadCollator(tok.pad_token_id), processing_class=tok,
        callbacks=[MetricsLogger(run_dir, counter), RichProgress(counter, enabled=show_progress)],
        token_counter=counter, pad_token_id=tok.pad_token_id,
    )
    trainer.remove_callback(PrinterCallback)  # our MetricsLogger/RichProgress report instead
    gen_cb = make_generation_callback(cfg, tok, evaluator.generation_subset(), template)
    if gen_cb is not None:
        trainer.add_callback(gen_cb.attach(trainer))
    if resume:
        log(f"resuming from {ckpt}" if ckpt else "no complete checkpoint found; starting from the beginning")

    eval_before = None
    if eval_rows and not ckpt:
        eval_before = trainer.evaluate()["eval_loss"]
        log(f"eval loss before training: {eval_before:.4f}")
    t_train = time.time()
    out = trainer.train(resume_from_checkpoint=ckpt)
    train_s = time.time() - t_train
    eval_after = trainer.evaluate()["eval_loss"] if eval_rows else None
    if eval_after is not None:
        log(f"eval loss after training: {eval_after:.4f}")

    final = run_dir / "final"
    trainer.model.config.use_cache = True
    trainer.save_model(str(final))
    tok.save_pretrained(str(final))
    summary = {
        "model": cfg.model.name_or_path, "model_path": model_path, "adapter": rep.method,
        "trainable_params": rep.trainable, "total_params": rep.total, "adapted_kinds": rep.kinds,
        "data": s, "steps": trainer.state.global_step, "train_loss": out.training_loss,
        "eval_loss_before": eval_before, "eval_loss_after": eval_after,
        "train_seconds": round(train_s, 2), "total_seconds": round(time.time() - t0, 2),
        "real_tokens": counter.real, "padding_share": round(counter.padding_share, 4),
        "real_tokens_per_s": round(counter.real / train_s, 2) if train_s > 0 else None, "threads": threads,
        "final": str(final),
    }
    (run_dir / "summary.json").write_text(json.dumps(summary, indent=2, ensure_ascii=False))
    log(f"done in {summary['total_seconds']:.0f}s: {summary['steps']} steps, "
        f"{summary['real_tokens_per_s']} real tokens/s, padding {100 * counter.padding_share:.1f}%; "
        f"final model in {final}")
    if evaluator.sets:  # issue 6: tuned model on the same records and decoding as "before"
        evaluator.measure(trainer.model, "after")
        for row in evaluator.flagged():
            console.print(f"[bold red]forgetting:[/] general {row['metric']} {row['before']:.2f} -> "
                          f"{row['after']:.2f} ({100 * row['relative']:+.1f}%)")
    if cfg.eval.report:
        from ..eval.report import write_report

        log(f"report: {write_report(run_dir)[1]}")
    summary["_trainer"] = trainer
    return summary
