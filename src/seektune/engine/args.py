"""Our `train:` section as HF TrainingArguments (and as any trl *Config, which subclasses them).

Every HF-Trainer-based stage gets its arguments here, so a key means the same thing in every stage:
schedules, evaluation and checkpoint intervals, early stopping, activation checkpointing, CPU/GPU
precision, distributed engines. `save_steps: auto` checkpoints every tenth of the run, so a crash
never loses more than a tenth of it and `--resume` has something to resume.
"""

from __future__ import annotations

import dataclasses
import importlib.util
from pathlib import Path

import torch
from transformers import TrainingArguments

from ..config import ConfigError

AUTO_SAVE_SHARE = 0.1  # HF reads a save_steps below 1 as a share of the total steps


def _scheduler(t) -> tuple[str, dict]:
    if t.lr_scheduler == "cosine":
        return "cosine_with_min_lr", {"min_lr": t.min_lr}
    if t.lr_scheduler == "linear":
        return "linear", {}
    return "constant_with_warmup", {}


def greater_is_better(es) -> bool:
    if es.mode != "auto":
        return es.mode == "max"
    m = es.metric.lower()
    return not ("loss" in m or "perplexity" in m or "ppl" in m)


def _save_plan(t, has_eval: bool) -> tuple[str, float | int]:
    es = t.early_stopping
    if es:
        if not (has_eval and t.eval_steps):
            raise ConfigError("train.early_stopping needs evaluation: set train.eval_steps and eval data")
        steps = t.save_steps if isinstance(t.save_steps, int) else t.eval_steps
        if steps % t.eval_steps:
            steps = t.eval_steps  # HF needs checkpoints at evaluation steps to keep the best
        return "steps", steps
    if t.save_steps is None:
        return "no", 500
    return "steps", AUTO_SAVE_SHARE if t.save_steps == "auto" else t.save_steps


def training_arguments(cfg, run_dir: Path, has_eval: bool, dist_kwargs: dict | None = None,
                       checkpoint_every: int | None = None) -> TrainingArguments:
    """`checkpoint_every`: every n-th layer is checkpointed (from memory.plan_checkpointing); None = as the
    config says when it is a plain true/false."""
    t = cfg.train
    if checkpoint_every is None and t.gradient_checkpointing is True:
        checkpoint_every = 1
    sched, sched_kwargs = _scheduler(t)
    warmup = t.warmup_steps if t.warmup_steps else t.warmup_ratio  # transformers 5: float < 1 = ratio
    cpu = not torch.cuda.is_available()
    es = t.early_stopping
    save_strategy, save_steps = _save_plan(t, has_eval)
    return TrainingArguments(
        output_dir=str(Path(run_dir) / "checkpoints"),
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
        save_strategy=save_strategy,
        save_steps=save_steps,
        load_best_model_at_end=bool(es and es.restore_best),
        metric_for_best_model=es.metric if es else None,
        greater_is_better=greater_is_better(es) if es else None,
        save_total_limit=t.keep_checkpoints,
        seed=t.seed,
        data_seed=t.seed,
        report_to="none",
        disable_tqdm=True,
        use_cpu=cpu,
        bf16=False if cpu else (cfg.model.dtype == "bfloat16" or t.mixed_precision == "bf16"),
        fp16=not cpu and t.mixed_precision == "fp16",
        use_liger_kernel=t.liger_kernel,
        remove_unused_columns=False,
        activation_checkpointing=checkpoint_every is not None,
        # every_n_layers only when it is not 1: trl passes these kwargs on to torch's checkpoint, which refuses it
        activation_checkpointing_kwargs={"every_n_layers": checkpoint_every} if (checkpoint_every or 1) > 1 else None,
        dataloader_num_workers=0,
        train_sampling_strategy="sequential" if getattr(cfg.data, "curriculum", False) else "random",
        save_only_model=False,
        **(dist_kwargs or {}),
    )


def trl_args(config_cls, cfg, run_dir: Path, has_eval: bool, dist_kwargs: dict | None = None,
             checkpoint_every: int | None = None, **extra):
    """A trl *Config (a TrainingArguments subclass) carrying exactly our training arguments plus `extra`."""
    base = training_arguments(cfg, run_dir, has_eval, dist_kwargs, checkpoint_every)
    names = {f.name for f in dataclasses.fields(TrainingArguments) if f.init}
    kw = {n: getattr(base, n) for n in names}
    # TrainingArguments.__post_init__ may have turned strings into enums / objects: pass the plain values back
    for k in ("lr_scheduler_type", "eval_strategy", "save_strategy", "logging_strategy", "optim",
              "hub_strategy", "train_sampling_strategy"):
        if k in kw and hasattr(kw[k], "value"):
            kw[k] = kw[k].value
    if save_steps_share(cfg.train) is not None:
        kw["save_steps"] = AUTO_SAVE_SHARE  # post_init turned the share into a step count it cannot know yet
    kw.update(bf16=False if base.use_cpu else kw.get("bf16"), **extra)  # trl defaults to bf16=True: 70x slower on CPU
    return config_cls(**kw)


def gpu_switch_problems(cfg) -> list[str]:
    """Why this machine cannot honour the GPU-only training switches (empty when it can or none is set)."""
    t, out = cfg.train, []
    cuda = torch.cuda.is_available()
    if t.mixed_precision != "no":
        if not cuda:
            out.append(f"train.mixed_precision: {t.mixed_precision} autocasts on a CUDA GPU and torch sees none here "
                       "(on CPU bf16 matmuls were ~100x slower than fp32); set it to no")
        elif cfg.model.dtype in ("bfloat16", "float16"):
            out.append(f"train.mixed_precision: {t.mixed_precision} is autocast over fp32 weights, but model.dtype is "
                       f"{cfg.model.dtype}; set model.dtype: float32 (or mixed_precision: no to train in "
                       f"{cfg.model.dtype})")
        elif t.mixed_precision == "bf16" and not torch.cuda.is_bf16_supported():
            out.append("train.mixed_precision: bf16 needs a GPU with bf16 (Ampere or newer); use fp16")
    if t.liger_kernel:
        if not cuda:
            out.append("train.liger_kernel: Liger's kernels are Triton kernels for CUDA GPUs and torch sees none "
                       "here; set it to false")
        elif importlib.util.find_spec("liger_kernel") is None:
            out.append("train.liger_kernel: liger-kernel is not installed (pip install liger-kernel; not a seektune "
                       "dependency)")
    return out


def save_steps_share(t) -> float | None:
    return AUTO_SAVE_SHARE if t.save_steps == "auto" and not t.early_stopping else None
