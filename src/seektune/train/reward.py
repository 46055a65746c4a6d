"""train.stage: rm — a reward model is the base model with a scalar head (sequence classification,
num_labels=1) trained with trl's RewardTrainer on the pairwise loss -log sigmoid(r_chosen - r_rejected).

Its evidence is the pairwise accuracy on held-out pairs (share of pairs where the chosen response
scores above the rejected one), measured before and after training on exactly the same pairs.
"""

from __future__ import annotations

import time
from pathlib import Path

import torch
from transformers import PrinterCallback

from ..config import Config
from ..data.preference import RenderedPair
from ..data.templates import get_template
from ..models.adapters import apply_adapter
from ..models.loader import load_model
from ..utils.console import log
from .align_common import prepare_pairs, start_run, trl_args, write_summary
from .callbacks import MetricsLogger, RichProgress
from .sft import print_summary


def _ids(tok, text: str) -> list[int]:
    return tok(text, add_special_tokens=False)["input_ids"]  # the template text carries its own BOS


def tokenize_pairs(pairs: list[RenderedPair], tok) -> list[dict]:
    return [{"chosen_ids": _ids(tok, p.prompt + p.chosen), "rejected_ids": _ids(tok, p.prompt + p.rejected)}
            for p in pairs]


@torch.no_grad()
def score_texts(model, tok, texts: list[str], batch_size: int = 8) -> torch.Tensor:
    """The scalar reward of each text (right padding; the head reads the last real token)."""
    was_training = model.training
    model.eval()
    out = []
    side = tok.padding_side
    tok.padding_side = "right"
    try:
        for i in range(0, len(texts), batch_size):
            enc = tok(texts[i:i + batch_size], add_special_tokens=False, padding=True, return_tensors="pt")
            enc = {k: v.to(model.device) for k, v in enc.items()}
            out.append(model(**enc).logits[:, 0].float().cpu())
    finally:
        tok.padding_side = side
        model.train(was_training)
    return torch.cat(out) if out else torch.zeros(0)


def pairwise_accuracy(model, tok, pairs: list[RenderedPair], batch_size: int = 8) -> dict:
    """Share of pairs with r(chosen) > r(rejected), and the mean margin."""
    if not pairs:
        return {"accuracy": None, "margin": None, "pairs": 0}
    rc = score_texts(model, tok, [p.prompt + p.chosen for p in pairs], batch_size)
    rr = score_texts(model, tok, [p.prompt + p.rejected for p in pairs], batch_size)
    return {"accuracy": round(float((rc > rr).float().mean()), 4), "margin": round(float((rc - rr).mean()), 4),
            "pairs": len(pairs)}


def run_rm(cfg: Config, show_progress: bool = True, callbacks: list | None = None) -> dict:
    from datasets import Dataset
    from trl import RewardConfig, RewardTrainer

    t0 = time.time()
    run_dir, threads = start_run(cfg)
    mcfg = cfg.model.model_copy(update={"task": "sequence_classification", "num_labels": 1})
    model, tok, model_path = load_model(mcfg, num_labels=1, log=log, dropout=cfg.train.dropout)
    template = get_template(cfg.data.template, tok)
    log(f"reward model: {cfg.model.name_or_path} + scalar head; template {template.name}; threads {threads}")
    train, ev, stats = prepare_pairs(cfg, tok, template, run_dir)
    model, rep = apply_adapter(model, cfg.adapter, "sequence_classification", log=log)
    for line in rep.lines():
        log(line)

    bs = cfg.train.eval_batch_size or cfg.train.batch_size
    before = pairwise_accuracy(model, tok, ev, bs)
    log(f"held-out pairwise accuracy before training: {before['accuracy']} (margin {before['margin']}, "
        f"{before['pairs']} pairs)")
    args = trl_args(RewardConfig, cfg, run_dir, bool(ev), max_length=cfg.data.max_length, disable_dropout=True,
                    remove_unused_columns=True)
    trainer = RewardTrainer(model=model, args=args, train_dataset=Dataset.from_list(tokenize_pairs(train, tok)),
                            eval_dataset=Dataset.from_list(tokenize_pairs(ev, tok)) if ev else None,
                            processing_class=tok,
                            callbacks=[MetricsLogger(run_dir), RichProgress(enabled=show_progress),
                                       *(callbacks or [])])
    trainer.remove_callback(PrinterCallback)
    t_train = time.time()
    out = trainer.train()
    train_s = time.time() - t_train
    after = pairwise_accuracy(trainer.model, tok, ev, bs)
    log(f"held-out pairwise accuracy after training: {after['accuracy']} (margin {after['margin']})")

    final = run_dir / "final"
    trainer.save_model(str(final))
    tok.save_pretrained(str(final))
    summary = {"stage": "rm", "model": cfg.model.name_or_path, "model_path": model_path, "adapter": rep.method,
               "trainable_params": rep.trainable, "total_params": rep.total, "data": stats,
               "steps": trainer.state.global_step, "train_loss": out.training_loss,
               "heldout_before": before, "heldout_after": after, "train_seconds": round(train_s, 2),
               "threads": threads, "final": str(final)}
    write_summary(run_dir, summary, t0, report=cfg.eval.report)
    _print(summary)
    summary["_trainer"] = trainer
    return summary


def _print(s: dict) -> None:
    from rich.panel import Panel

    from ..utils.console import console

    b, a = s["heldout_before"], s["heldout_after"]
    lines = [f"final model    {s['final']}", f"steps          {s['steps']} in {s['train_seconds']:.0f}s",
             f"held-out pairs {a['pairs']}: accuracy {b['accuracy']} -> {a['accuracy']}, "
             f"margin {b['margin']} -> {a['margin']}"]
    console.print(Panel("\n".join(lines), title=f"seektune train ({s['stage']}): done", expand=False))


def load_reward_model(spec: str, log=print):
    """A reward model for PPO: an rm run folder (or its final/), a saved model folder or a preset name.

    Returns (model, tokenizer) in eval mode with frozen weights.
    """
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from ..config import ModelConfig
    from ..models.presets import ModelError, fix_pad_token

    p = Path(spec)
    if (p / "final").is_dir():
        p = p / "final"
    if (p / "adapter_config.json").exists():
        import json

        from peft import PeftModel

        base_path = json.loads((p / "adapter_config.json").read_text())["base_model_name_or_path"]
        base = AutoModelForSequenceClassification.from_pretrained(base_path, num_labels=1)
        tok = AutoTokenizer.from_pretrained(str(p))
        fix_pad_token(tok)
        base.config.pad_token_id = tok.pad_token_id
        model = PeftModel.from_pretrained(base, str(p)).merge_and_unload()
    elif (p / "config.json").exists():
        model = AutoModelForSequenceClassification.from_pretrained(str(p), num_labels=1)
        tok = AutoTokenizer.from_pretrained(str(p))
        fix_pad_token(tok)
        model.config.pad_token_id = tok.pad_token_id
    else:
        try:
            model, tok, _ = load_model(ModelConfig(name_or_path=spec, task="sequence_classification", num_labels=1),
                                       num_labels=1, log=log)
        except ModelError as e:
            raise ModelError(f"align.reward_model: {e}") from None
    model.eval()
    for q in model.parameters():
        q.requires_grad_(False)
    return model, tok
