"""What the rm, dpo and ppo stages share: the run folder, preference data rendered with the chat
template, trl configs built from our training arguments, and the summary file."""

from __future__ import annotations

import dataclasses
import json
import time
from pathlib import Path

from transformers import TrainingArguments, set_seed

from ..config import Config
from ..data.io import write_jsonl
from ..data.preference import RenderedPair, load_preference_data, render_pair, truncate_pairs
from ..utils.console import log
from .sft import configure_threads, training_arguments


def start_run(cfg: Config) -> tuple[Path, int]:
    """Create the run folder with its config.yaml, set threads and seed; a fresh run owns metrics.jsonl."""
    run_dir = Path(cfg.train.output_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    if (run_dir / "metrics.jsonl").exists():
        (run_dir / "metrics.jsonl").unlink()
    (run_dir / "config.yaml").write_text(cfg.to_yaml(), encoding="utf-8")
    threads = configure_threads(cfg.train.num_threads)
    set_seed(cfg.train.seed)
    return run_dir, threads


def prepare_pairs(cfg: Config, tok, template, run_dir: Path, prompts_only: bool = False) -> tuple[list[RenderedPair], list[RenderedPair], dict]:
    """Read, render and length-filter the preference pairs; every rejected or too-long pair goes to rejects.jsonl."""
    data = load_preference_data(cfg.data, cfg.align, cfg.train.seed)
    train = [render_pair(p, template) for p in data.train]
    ev = [render_pair(p, template) for p in data.eval]
    max_prompt = min(cfg.align.max_prompt_length, cfg.data.max_length - 1)
    # PPO uses only the prompts: their responses may be of any length
    max_total = 10 ** 9 if prompts_only else cfg.data.max_length
    train, long_t = truncate_pairs(train, tok, max_total, max_prompt)
    ev, long_e = truncate_pairs(ev, tok, max_total, max_prompt)
    ev = ev[: cfg.align.eval_pairs]  # capped after the length filter, so the cap is what gets measured
    rejects = data.rejects + [{"source": d["where"].rsplit(":", 1)[0], "line": int(d["where"].rsplit(":", 1)[1]),
                               "reason": d["reason"]} for d in long_t + long_e]
    write_jsonl(run_dir / "rejects.jsonl", rejects)
    stats = {**data.stats, "too_long": len(long_t) + len(long_e), "train": len(train), "eval": len(ev)}
    log(f"preference data: read {stats['read']}, train pairs {stats['train']}, held-out pairs {stats['eval']}, "
        f"rejected {len(data.rejects)}, too long {stats['too_long']}"
        + (f" (see {run_dir / 'rejects.jsonl'})" if rejects else ""))
    if not train:
        from ..data.io import DataError

        raise DataError("no training pairs fit data.max_length / align.max_prompt_length; raise them")
    return train, ev, stats


def trl_args(config_cls, cfg: Config, run_dir: Path, has_eval: bool, **extra):
    """A trl *Config (a TrainingArguments subclass) carrying exactly our training arguments plus `extra`."""
    base = training_arguments(cfg, run_dir, has_eval)
    names = {f.name for f in dataclasses.fields(TrainingArguments) if f.init}
    kw = {n: getattr(base, n) for n in names}
    # TrainingArguments.__post_init__ may have turned strings into enums / objects: pass the plain values back
    for k in ("lr_scheduler_type", "eval_strategy", "save_strategy", "logging_strategy", "optim",
              "hub_strategy", "train_sampling_strategy"):
        if k in kw and hasattr(kw[k], "value"):
            kw[k] = kw[k].value
    kw.update(bf16=False if base.use_cpu else kw.get("bf16"), **extra)  # trl defaults to bf16=True: 70x slower on CPU
    return config_cls(**kw)


def write_summary(run_dir: Path, summary: dict, t0: float, report: bool = True) -> dict:
    """summary.json, then the run report (report.md/.html with the loss and reward curves)."""
    summary["total_seconds"] = round(time.time() - t0, 2)
    (run_dir / "summary.json").write_text(json.dumps(summary, indent=2, ensure_ascii=False, default=str))
    if report:
        from ..eval.report import write_report

        log(f"report: {write_report(run_dir)[1]}")
    return summary
