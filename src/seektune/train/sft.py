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
import random
import shutil
import time
from pathlib import Path

import torch
from transformers import PrinterCallback, Trainer, TrainingArguments, set_seed

from ..config import Config, ConfigError
from ..data.collate import PadCollator
from ..data.sft import IGNORE, build_sft_data, pack_examples
from ..data.templates import get_template
from ..models.adapters import apply_adapter
from ..models.loader import load_model
from ..utils.console import console, log, warn
from ..models.loader import is_moe
from ..utils.dist import is_main, local_world_size, world_size
from .callbacks import MetricsLogger, RichProgress
from .losses import fused_loss_supported, label_only_lm_loss, mean_over_tokens
from .memory import plan_checkpointing, return_freed_memory
from .distributed import distributed_kwargs
from .monitors import Health, TrainingMonitor
from .optim import build_param_groups, make_scheduler, warmup_steps


class TokenCounter:
    """Counts real (non-pad) and padded tokens seen by training steps, for tokens/s and padding share."""

    def __init__(self):
        self.real = 0
        self.padded = 0

    @property
    def padding_share(self) -> float:
        return 1.0 - self.real / self.padded if self.padded else 0.0


CHECKPOINT_COMPLETE = "seektune_complete.json"


class SeekTrainer(Trainer):
    """HF Trainer plus what seektune promises on top of it.

    - real-token accounting (tokens/s, padding share); loss normalisation by real label tokens across
      gradient accumulation comes from the Trainer itself (num_items_in_batch);
    - optimizer groups with layer-wise rates and no weight decay on norms/biases, and our schedules
      (warmup then cosine/linear to a floor, or constant);
    - label smoothing with the same token normalisation;
    - a NaN/inf loss skips its optimizer step (counted), and N in a row stop the run with advice;
    - checkpoints written to a staging folder and renamed into place, with a completion marker.
    """

    def __init__(self, *a, token_counter: TokenCounter | None = None, pad_token_id: int = 0, st_cfg=None,
                 health=None, **kw):
        super().__init__(*a, **kw)
        self.token_counter = token_counter or TokenCounter()
        self.pad_token_id = pad_token_id
        self.st_cfg = st_cfg
        self.health = health
        self._skip_step = False
        self._staging = None
        self.group_lrs: dict[str, float] = {}
        self.ewc = None  # forgetting.EWC, set by run_sft
        self.perturber = None  # forgetting.EmbeddingPerturber when train.adversarial is set

    # -- accounting and NaN handling --------------------------------------------------------
    def training_step(self, model, inputs, num_items_in_batch=None):
        ids = inputs["input_ids"]
        if "attention_mask" in inputs:
            real = int(inputs["attention_mask"].sum())
        else:
            real = int((ids != self.pad_token_id).sum())
        self.token_counter.real += real
        self.token_counter.padded += ids.numel()
        loss = super().training_step(model, inputs, num_items_in_batch)
        adv = self.st_cfg.train.adversarial if self.st_cfg else None
        if adv is not None and self.perturber is not None and torch.isfinite(loss).all():
            from .forgetting import adversarial_step

            adv_loss = adversarial_step(self, model, inputs, num_items_in_batch, self.perturber, adv.method,
                                        adv.epsilon, adv.steps, adv.alpha)
            if adv_loss is not None:
                self.last_adv_loss = float(adv_loss)
        if self.health is not None:
            if not torch.isfinite(loss).all():
                self._skip_step = True  # the whole optimizer step this micro-batch belongs to
                self.health.nonfinite_total += 1
                self.health.nonfinite_streak += 1
                limit = self.st_cfg.monitor.max_nonfinite_in_a_row if self.st_cfg else 5
                self.health.warn(f"step {self.state.global_step + 1}: loss is {loss.item()}; step skipped "
                                 f"({self.health.nonfinite_streak} in a row, {self.health.nonfinite_total} total)")
                if self.health.nonfinite_streak >= limit:
                    self.health.warn(
                        f"stopping: {limit} non-finite losses in a row. Try a lower train.lr, keep "
                        "train.max_grad_norm clipping on, train in float32 (model.dtype), and check the data "
                        "for empty or garbled rows (seektune data clean).")
                    self.control.should_training_stop = True
                loss = torch.zeros_like(loss)
            else:
                self.health.nonfinite_streak = 0
        return loss

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        out = self._task_loss(model, inputs, return_outputs, num_items_in_batch)
        if self.ewc is not None and model.training:
            # one penalty per optimizer step, spread over its micro-batches
            pen = self.ewc.penalty(model) / self.args.gradient_accumulation_steps
            return (out[0] + pen, out[1]) if return_outputs else out + pen
        return out

    def _task_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        cfg = self.st_cfg
        ls = cfg.train.label_smoothing if cfg else 0.0
        causal = "labels" in inputs and (cfg is None or cfg.model.task == "causal_lm")
        if causal and cfg is not None and cfg.train.fused_loss and self._fused_ok(model):
            loss, outputs = label_only_lm_loss(model, inputs, num_items_in_batch, ls)
        elif causal and ls > 0:
            labels = inputs["labels"]
            outputs = model(**{k: v for k, v in inputs.items() if k != "labels"})
            logits = outputs.logits[:, :-1].float()
            target = labels[:, 1:]
            total = torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), target.reshape(-1),
                                                      ignore_index=IGNORE, label_smoothing=ls, reduction="sum")
            loss = mean_over_tokens(total, num_items_in_batch, (target != IGNORE).sum())
        else:
            return super().compute_loss(model, inputs, return_outputs, num_items_in_batch)
        if (self.args.average_tokens_across_devices and self.model_accepts_loss_kwargs
                and num_items_in_batch is not None):
            # as Trainer.compute_loss does: num_items_in_batch counts every process's tokens, and DDP averages
            loss = loss * self.accelerator.num_processes
        return (loss, outputs) if return_outputs else loss

    def _fused_ok(self, model) -> bool:
        if getattr(self, "_fused_checked", None) is None:
            self._fused_checked = fused_loss_supported(model)
        return self._fused_checked

    def evaluation_loop(self, *a, **kw):
        """Periodic evals also carry generation metrics when early stopping follows one of them."""
        out = super().evaluation_loop(*a, **kw)
        prefix = kw.get("metric_key_prefix", a[4] if len(a) > 4 else "eval")
        gen = getattr(self, "generation_eval", None)
        if gen is not None and getattr(self, "generation_in_eval", False) and prefix == "eval" and gen.items:
            out.metrics.update(gen.measure(self.model))
        return out

    # -- optimizer and schedule ---------------------------------------------------------------
    def create_optimizer(self, *a, **kw):
        if self.optimizer is None and self.st_cfg is not None:
            t = self.st_cfg.train
            groups = build_param_groups(self.model, t.lr, t.weight_decay, t.layerwise_lr)
            self.optimizer = torch.optim.AdamW(groups, lr=t.lr, betas=(self.args.adam_beta1, self.args.adam_beta2),
                                               eps=self.args.adam_epsilon)
        opt = super().create_optimizer(*a, **kw) if self.optimizer is None else self.optimizer
        if not getattr(opt, "_seektune_wrapped", False):
            inner_step = opt.step

            def step(*sa, **skw):
                # the rates this step uses, per named group (logged by the monitor)
                self.group_lrs = {g.get("name", str(i)).replace(".no_decay", ""): g["lr"]
                                  for i, g in enumerate(opt.param_groups)}
                if self._skip_step:
                    self._skip_step = False
                    return None
                return inner_step(*sa, **skw)

            opt.step = step
            opt._seektune_wrapped = True
        return opt

    def create_scheduler(self, num_training_steps: int, optimizer=None):
        if self.lr_scheduler is None and self.st_cfg is not None:
            t = self.st_cfg.train
            self.lr_scheduler = make_scheduler(optimizer or self.optimizer, num_training_steps,
                                               warmup_steps(t, num_training_steps), t.lr_scheduler, t.lr, t.min_lr)
            return self.lr_scheduler
        return super().create_scheduler(num_training_steps, optimizer)

    # -- crash-safe checkpoints ---------------------------------------------------------------
    def _get_output_dir(self, trial):
        return self._staging or super()._get_output_dir(trial)

    def _save_checkpoint(self, model, trial):
        """Save into checkpoints/.staging, then rename into place: a checkpoint folder exists only whole."""
        from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR
        from transformers.trainer_utils import rotate_checkpoints

        real = self.args.output_dir
        staging = os.path.join(real, ".staging")
        shutil.rmtree(staging, ignore_errors=True)
        os.makedirs(staging, exist_ok=True)
        self._staging = staging
        try:
            super()._save_checkpoint(model, trial)
        finally:
            self._staging = None
        name = f"{PREFIX_CHECKPOINT_DIR}-{self.state.global_step}"
        src, dst = os.path.join(staging, name), os.path.join(real, name)
        if not self.args.should_save:
            return
        with open(os.path.join(src, CHECKPOINT_COMPLETE), "w") as f:
            json.dump({"step": self.state.global_step}, f)
            f.flush()
            os.fsync(f.fileno())
        if os.path.exists(dst):
            shutil.rmtree(dst)
        os.rename(src, dst)
        shutil.rmtree(staging, ignore_errors=True)
        if self.state.best_global_step:
            best = os.path.join(real, f"{PREFIX_CHECKPOINT_DIR}-{self.state.best_global_step}")
            if os.path.exists(best):
                self.state.best_model_checkpoint = best
                # trainer_state.json inside the checkpoint must name the real folder for exact resume
                self.state.save_to_json(os.path.join(dst, "trainer_state.json"))
        rotate_checkpoints(output_dir=real, save_total_limit=self.args.save_total_limit,
                           best_model_checkpoint=self.state.best_model_checkpoint, use_mtime=False)


def configure_threads(n: int | None) -> int:
    """Default: the free cores split between the processes of this node (oversubscription is ~8x slower)."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    n = n or max(1, cores // local_world_size())
    torch.set_num_threads(n)
    return n


def _scheduler(cfg) -> tuple[str, dict]:
    if cfg.train.lr_scheduler == "cosine":
        return "cosine_with_min_lr", {"min_lr": cfg.train.min_lr}
    if cfg.train.lr_scheduler == "linear":
        return "linear", {}
    return "constant_with_warmup", {}


def latest_checkpoint(ckpt_dir: Path, log_warning=None) -> str | None:
    """The newest checkpoint that was completely written; half-written ones are skipped with a warning."""
    if not ckpt_dir.exists():
        return None
    cands = []
    for p in ckpt_dir.glob("checkpoint-*"):
        try:
            step = int(p.name.split("-")[-1])
        except ValueError:
            continue
        if (p / CHECKPOINT_COMPLETE).exists() and (p / "trainer_state.json").exists():
            cands.append((step, p))
        elif log_warning:
            log_warning(f"ignoring incomplete checkpoint {p} (no {CHECKPOINT_COMPLETE}: it was being written "
                        "when the run stopped)")
    return str(max(cands)[1]) if cands else None


def training_arguments(cfg: Config, run_dir: Path, has_eval: bool, dist_kwargs: dict | None = None,
                       checkpoint_every: int | None = None) -> TrainingArguments:
    """`checkpoint_every`: every n-th layer is checkpointed (from memory.plan_checkpointing); None = as the
    config says when it is a plain true/false (auto means off for recipes that do not plan)."""
    t = cfg.train
    if checkpoint_every is None and t.gradient_checkpointing is True:
        checkpoint_every = 1
    sched, sched_kwargs = _scheduler(cfg)
    warmup = t.warmup_steps if t.warmup_steps else t.warmup_ratio  # transformers 5: float < 1 = ratio
    cpu = not torch.cuda.is_available()
    es = t.early_stopping
    save_steps = t.save_steps or (t.eval_steps if es else 500)
    if es:
        if not (has_eval and t.eval_steps):
            raise ConfigError("train.early_stopping needs evaluation: set train.eval_steps and eval data")
        if save_steps % t.eval_steps:
            save_steps = t.eval_steps  # HF needs checkpoints at evaluation steps to keep the best
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
        save_strategy="steps" if (t.save_steps or es) else "no",
        save_steps=save_steps,
        load_best_model_at_end=bool(es and es.restore_best),
        metric_for_best_model=es.metric if es else None,
        greater_is_better=_greater_is_better(es) if es else None,
        save_total_limit=t.keep_checkpoints,
        seed=t.seed,
        data_seed=t.seed,
        report_to="none",
        disable_tqdm=True,
        use_cpu=cpu,
        bf16=False if cpu else cfg.model.dtype == "bfloat16",
        fp16=False,
        remove_unused_columns=False,
        activation_checkpointing=checkpoint_every is not None,
        activation_checkpointing_kwargs={"every_n_layers": checkpoint_every} if checkpoint_every else None,
        dataloader_num_workers=0,
        train_sampling_strategy="sequential" if cfg.data.curriculum else "random",  # curricula keep their order
        save_only_model=False,
        **(dist_kwargs or {}),
    )


def _greater_is_better(es) -> bool:
    if es.mode != "auto":
        return es.mode == "max"
    m = es.metric.lower()
    return not ("loss" in m or "perplexity" in m or "ppl" in m)


def _strip_meta(rows: list[dict]) -> list[dict]:
    return [{k: v for k, v in r.items() if k in ("input_ids", "labels", "position_ids")} for r in rows]


def run_sft(cfg: Config, resume: bool = False, show_progress: bool = True, callbacks: list | None = None,
            init_adapter: str | None = None) -> dict:
    """Train as `cfg` says. `init_adapter`: start from a saved peft adapter (continual fine-tuning)."""
    t0 = time.time()
    run_dir = Path(cfg.train.output_dir)
    main = is_main()  # only rank 0 writes the run folder
    run_dir.mkdir(parents=True, exist_ok=True)
    resume = resume or bool(cfg.train.resume)
    if main and not resume and (run_dir / "metrics.jsonl").exists():
        (run_dir / "metrics.jsonl").unlink()  # a fresh run owns its metrics file
    if main:
        (run_dir / "config.yaml").write_text(cfg.to_yaml(), encoding="utf-8")
    threads = configure_threads(cfg.train.num_threads)
    if cfg.train.return_freed_memory and not torch.cuda.is_available():
        return_freed_memory()
    set_seed(cfg.train.seed)

    model, tok, model_path = load_model(cfg.model, log=log, dropout=cfg.train.dropout)
    template = get_template(cfg.data.template, tok)
    log(f"model: {cfg.model.name_or_path} ({model.config.model_type}) from {model_path}; template: {template.name}; "
        f"threads: {threads}")
    data = build_sft_data(cfg.data, tok, template, cfg.train.seed, run_dir / "rejects.jsonl" if main else None,
                          log=log)
    s = data.stats
    log(f"data: read {s['read']}, train {s['train']}, eval {s['eval']}, rejected {s['rejected']}"
        + (f" (see {run_dir / 'rejects.jsonl'})" if s["rejected"] else "") + f", truncated {s['truncated']}; "
        f"{s['train_label_tokens']:,} trained tokens of {s['train_tokens']:,}")
    train_rows = _strip_meta(data.train)
    if cfg.data.packing and cfg.data.curriculum:
        from ..data.curriculum import pack_in_order

        train_rows = pack_in_order(train_rows, cfg.data.max_length)
        log(f"packing (in curriculum order): {s['train']} samples into {len(train_rows)} rows")
    elif cfg.data.packing:
        train_rows = pack_examples(train_rows, cfg.data.max_length, seed=cfg.train.seed)
        log(f"packing: {s['train']} samples into {len(train_rows)} rows of <= {cfg.data.max_length} tokens")
    eval_rows = _strip_meta(data.eval)

    # issue 6: generation metrics of the base model, before any adapter touches it
    from ..eval.callback import make_generation_callback
    from ..eval.run_eval import RunEvaluator

    ckpt = latest_checkpoint(run_dir / "checkpoints", log_warning=warn) if resume else None
    evaluator = RunEvaluator.for_run(cfg, tok, template, data.eval, run_dir, resume=bool(ckpt),
                                     progress=show_progress)
    if cfg.eval.before_after and not ckpt and main:
        evaluator.measure(model, "before")

    if init_adapter:
        from peft import PeftModel

        from ..models.adapters import AdapterReport, _kinds

        model = PeftModel.from_pretrained(model, init_adapter, is_trainable=True)
        rep = AdapterReport(cfg.adapter.method, sum(p.numel() for p in model.parameters() if p.requires_grad),
                            sum(p.numel() for p in model.parameters()), _kinds(model),
                            [f"adapter initialised from {init_adapter}"])
    else:
        model, rep = apply_adapter(model, cfg.adapter, cfg.model.task, log=log)
    for line in rep.lines():
        log(line)
    model.config.use_cache = False  # a KV cache would disable packed-sequence masking during training

    forget_cbs, ewc, perturber = setup_forgetting(cfg, model, tok, template, train_rows, run_dir, main)

    counter = TokenCounter()
    health = Health()
    row_tokens = cfg.data.max_length if cfg.data.packing else max((len(r["input_ids"]) for r in train_rows), default=1)
    every_n, gc_line = plan_checkpointing(cfg.train.gradient_checkpointing, model, cfg.train.batch_size * row_tokens,
                                          cfg.train.activation_budget_gb)
    if gc_line:
        log(gc_line)
    args = training_arguments(cfg, run_dir, has_eval=bool(eval_rows),
                              dist_kwargs=distributed_kwargs(cfg, model, is_moe(model)), checkpoint_every=every_n)
    if world_size() > 1:
        log(f"distributed: {cfg.train.distributed} on {world_size()} processes ({args.ddp_backend or 'auto'}); "
            f"global batch = {cfg.train.batch_size} x {cfg.train.grad_accum} x {world_size()} = "
            f"{cfg.train.batch_size * cfg.train.grad_accum * world_size()} rows")
    extra = []
    if cfg.train.early_stopping:
        from transformers import EarlyStoppingCallback

        es = cfg.train.early_stopping
        extra.append(EarlyStoppingCallback(early_stopping_patience=es.patience, early_stopping_threshold=es.min_delta))
    trainer = SeekTrainer(
        model=model, args=args, train_dataset=train_rows, eval_dataset=eval_rows or None,
        data_collator=PadCollator(tok.pad_token_id), processing_class=tok,
        # the monitor runs before MetricsLogger so its numbers land in the same log record
        callbacks=[TrainingMonitor(cfg.monitor, health, model), MetricsLogger(run_dir, counter),
                   RichProgress(counter, enabled=show_progress), *forget_cbs, *extra, *(callbacks or [])],
        token_counter=counter, pad_token_id=tok.pad_token_id, st_cfg=cfg, health=health,
    )
    trainer.remove_callback(PrinterCallback)  # our MetricsLogger/RichProgress report instead
    trainer.ewc, trainer.perturber = ewc, perturber
    for cb in trainer.callback_handler.callbacks:
        if isinstance(cb, TrainingMonitor):
            cb.trainer = trainer
    gen_cb = make_generation_callback(cfg, tok, evaluator.generation_subset(), template)
    if gen_cb is not None:
        trainer.add_callback(gen_cb.attach(trainer))
        es = cfg.train.early_stopping
        trainer.generation_eval = gen_cb
        trainer.generation_in_eval = es is not None and es.metric.startswith(("eval_rouge", "eval_bleu", "eval_exact"))
    if resume:
        log(f"resuming from {ckpt}" if ckpt else "no complete checkpoint found; starting from the beginning")
        if main:
            truncate_metrics(run_dir / "metrics.jsonl", int(Path(ckpt).name.split("-")[-1]) if ckpt else -1)

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
    trainer.save_model(str(final))  # writes on rank 0 only (and gathers FSDP/ZeRO-3 shards)
    if main:
        tok.save_pretrained(str(final))
    best = trainer.state.best_metric
    summary = {
        "best_metric": ({"name": cfg.train.early_stopping.metric, "value": best,
                         "checkpoint": trainer.state.best_model_checkpoint} if cfg.train.early_stopping else None),
        "stopped_early": bool(cfg.train.early_stopping) and trainer.state.global_step < trainer.state.max_steps,
        "warnings": health.warnings[-50:], "nonfinite_skipped": health.nonfinite_total,
        "model": cfg.model.name_or_path, "model_path": model_path, "adapter": rep.method,
        "trainable_params": rep.trainable, "total_params": rep.total, "adapted_kinds": rep.kinds,
        "data": s, "steps": trainer.state.global_step, "train_loss": out.training_loss,
        "eval_loss_before": eval_before, "eval_loss_after": eval_after,
        "train_seconds": round(train_s, 2), "total_seconds": round(time.time() - t0, 2),
        "real_tokens": counter.real, "padding_share": round(counter.padding_share, 4),
        "real_tokens_per_s": round(counter.real / train_s, 2) if train_s > 0 else None, "threads": threads,
        "final": str(final),
    }
    summary["world_size"] = world_size()
    if main:
        write_replay_buffer(cfg, run_dir)
        (run_dir / "eval_tokens.json").write_text(json.dumps(eval_rows))  # for drift checks of later runs
        (run_dir / "summary.json").write_text(json.dumps(summary, indent=2, ensure_ascii=False))
        print_summary(summary)
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


def _tokenised_rows(cfg: Config, tok, template, path: str, limit: int) -> list[dict]:
    """Tokenise another file (general or reference data) exactly like the training data."""
    dcfg = cfg.data.model_copy(update={"train": path, "eval": None, "eval_ratio": 0.0, "max_samples": limit,
                                       "pipeline": [], "system_prompt": cfg.data.system_prompt})
    return _strip_meta(build_sft_data(dcfg, tok, template, cfg.train.seed, None, log=lambda m: None).train)


def setup_forgetting(cfg: Config, model, tok, template, train_rows: list, run_dir: Path, main: bool):
    """Replay mixer (a callback that owns the tail of train_rows), EWC and the embedding perturber."""
    from .forgetting import EWC, EmbeddingPerturber, ReplayMixer, estimate_fisher, replay_count

    t = cfg.train
    cbs, ewc, perturber = [], None, None
    if t.replay is not None:
        pool = _tokenised_rows(cfg, tok, template, t.replay.file, t.replay.pool)
        if cfg.data.packing:  # same row format as packed rows: positions restart, first label masked
            pool = [{**r, "labels": [-100] + r["labels"][1:], "position_ids": list(range(len(r["input_ids"])))}
                    for r in pool]
        n_domain = len(train_rows)
        k = replay_count(n_domain, t.replay.ratio)
        cbs.append(ReplayMixer(train_rows, pool, k, t.seed))
        log(f"replay: {k} rows from {t.replay.file} (pool {len(pool)}) join {n_domain} domain rows every epoch, "
            "resampled each epoch")
    if t.ewc is not None:
        if t.ewc.fisher_file:
            fisher, anchor = EWC.load(Path(t.ewc.fisher_file))
            ewc = EWC(model, fisher, t.ewc.lam, anchor)
            log(f"ewc: Fisher and anchor from {t.ewc.fisher_file}")
        else:
            ref = t.ewc.data or (t.replay.file if t.replay else cfg.data.train)
            rows = _tokenised_rows(cfg, tok, template, ref, t.ewc.samples)
            coll = PadCollator(tok.pad_token_id)
            fisher = estimate_fisher(model, (coll([r]) for r in rows), t.ewc.samples)
            ewc = EWC(model, fisher, t.ewc.lam)
            log(f"ewc: diagonal Fisher from {min(len(rows), t.ewc.samples)} samples of {ref}; lambda {t.ewc.lam}")
        if main:
            ewc.save(run_dir / "ewc_fisher.safetensors")
    if t.adversarial is not None:
        perturber = EmbeddingPerturber(model)
        log(f"adversarial: {t.adversarial.method} on input embeddings, epsilon {t.adversarial.epsilon}")
    return cbs, ewc, perturber


def write_replay_buffer(cfg: Config, run_dir: Path, size: int = 500) -> None:
    """A seeded sample of this run's raw training records, replayed by `seektune continue`."""
    from ..data.io import read_records, write_jsonl

    recs = [r.data for r in read_records(cfg.data.train, on_error="collect", errors=[])]
    random.Random(cfg.train.seed).shuffle(recs)
    write_jsonl(run_dir / "replay_buffer.jsonl", recs[:size])


def truncate_metrics(path: Path, last_step: int) -> None:
    """On resume, drop records logged after the checkpoint: the resumed run logs those steps again."""
    if not path.exists():
        return
    keep = [l for l in path.read_text(encoding="utf-8").splitlines()
            if l.strip() and json.loads(l).get("step", 0) <= last_step]
    path.write_text("".join(l + "\n" for l in keep), encoding="utf-8")


def print_summary(s: dict) -> None:
    """One screen at the end: where the model is, how it went, how long it took."""
    from rich.panel import Panel

    lines = [f"final model    {s['final']}",
             f"steps          {s['steps']} in {s['train_seconds']:.0f}s (total {s['total_seconds']:.0f}s)",
             f"throughput     {s['real_tokens_per_s']} real tokens/s, padding {100 * s['padding_share']:.1f}%, "
             f"{s['threads']} threads"]
    if s.get("eval_loss_after") is not None:
        before = f"{s['eval_loss_before']:.4f} -> " if s.get("eval_loss_before") is not None else ""
        lines.append(f"eval loss      {before}{s['eval_loss_after']:.4f}")
    if s.get("best_metric"):
        b = s["best_metric"]
        lines.append(f"best           {b['name']} = {b['value']} at {b['checkpoint']}"
                     + (" (stopped early)" if s.get("stopped_early") else ""))
    if s.get("nonfinite_skipped"):
        lines.append(f"skipped steps  {s['nonfinite_skipped']} with NaN/inf loss")
    if s.get("warnings"):
        lines.append(f"warnings       {len(s['warnings'])} (see summary.json)")
    console.print(Panel("\n".join(lines), title="seektune train: done", expand=False))
