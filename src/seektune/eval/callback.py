"""Generation metrics during training, within a time budget.

Every `eval.generate_every` optimizer steps the callback generates answers for a small fixed
subset of the held-out records (bounded batch, so memory stays flat) and logs `eval_rouge_l`,
`eval_bleu4` and `eval_exact_match` through the Trainer, so metrics.jsonl and TensorBoard get them
like any other eval scalar. A run is skipped (and counted) when it would push the time spent on
generation above `eval.max_time_share` of the training wall time so far; the first run always
happens, since its cost is what the budget is estimated from.
"""

from __future__ import annotations

import time

from transformers import TrainerCallback

from ..utils.console import log
from .generation import GenerationSettings, generate_texts, split_replies
from .metrics import text_metrics


GENERATION_METRICS = ("rouge_l", "bleu4", "exact_match")


class GenerationEvalCallback(TrainerCallback):
    def __init__(self, tokenizer, template, items: list, settings: GenerationSettings, every: int,
                 max_time_share: float = 0.2):
        self.tok = tokenizer
        self.template = template
        self.items = list(items)
        self.settings = settings
        self.every = every
        self.max_share = max_time_share
        self.trainer = None
        self.t_begin: float | None = None
        self.spent = 0.0
        self.last_cost: float | None = None
        self.runs = 0
        self.skipped = 0

    def attach(self, trainer) -> "GenerationEvalCallback":
        """Give the callback the trainer, whose `log()` routes metrics to every logger callback."""
        self.trainer = trainer
        return self

    def on_train_begin(self, args, state, control, **kw):
        self.t_begin = time.time()

    def within_budget(self, now: float) -> bool:
        """Would one more run keep generation time <= max_time_share of wall time?"""
        if self.last_cost is None:
            return True
        elapsed = now - (now if self.t_begin is None else self.t_begin)
        return self.spent + self.last_cost <= self.max_share * (elapsed + self.last_cost)

    def measure(self, model) -> dict:
        """Generate for the fixed subset and score it; also used inside evaluations, so that early
        stopping can follow eval_rouge_l / eval_bleu4 / eval_exact_match."""
        t0 = time.time()
        texts = generate_texts(model, self.tok, self.template, [it.prompt for it in self.items], self.settings)
        preds = [answer for _, answer in split_replies(texts, self.template)]
        m = text_metrics(preds, [it.reference for it in self.items])
        cost = time.time() - t0
        self.spent += cost
        self.last_cost = cost
        self.runs += 1
        return {"eval_rouge_l": round(m["rouge_l"], 4), "eval_bleu4": round(m["bleu4"], 4),
                "eval_exact_match": round(m["exact_match"], 4), "eval_generate_seconds": round(cost, 2)}

    def on_step_end(self, args, state, control, model=None, **kw):
        if not self.every or not self.items or state.global_step == 0 or state.global_step % self.every:
            return
        if not state.is_world_process_zero:
            return
        if not self.within_budget(time.time()):
            self.skipped += 1
            return
        logs = self.measure(model)
        if self.trainer is not None:
            # Trainer.log clears control.should_log; keep this step's own training log
            should_log = control.should_log
            self.trainer.log(logs)
            control.should_log = should_log
        else:
            log(f"step {state.global_step}: " + ", ".join(f"{k} {v}" for k, v in logs.items()))

    def on_train_end(self, args, state, control, **kw):
        if self.runs or self.skipped:
            total = time.time() - (time.time() if self.t_begin is None else self.t_begin)
            log(f"generation eval during training: {self.runs} runs, {self.skipped} skipped for the time budget, "
                f"{self.spent:.0f}s of {total:.0f}s ({100 * self.spent / max(total, 1e-9):.0f}%, "
                f"limit {100 * self.max_share:.0f}%)")


def make_generation_callback(cfg, tokenizer, eval_records: list, template=None) -> GenerationEvalCallback | None:
    """The in-training generation callback for this config, or None when eval.generate_every is off
    or there are no held-out records. Call `.attach(trainer)` once the trainer exists."""
    es = cfg.train.early_stopping
    wanted_by_early_stopping = es is not None and es.metric.removeprefix("eval_") in GENERATION_METRICS
    if not (cfg.eval.generate_every or wanted_by_early_stopping) or not eval_records:
        return None
    if template is None:
        from ..data.templates import get_template

        template = get_template(cfg.data.template, tokenizer)
    settings = GenerationSettings.from_eval_config(cfg.eval, seed=cfg.train.seed, max_prompt_tokens=cfg.data.max_length)
    return GenerationEvalCallback(tokenizer, template, eval_records[: cfg.eval.generate_samples], settings,
                                  cfg.eval.generate_every, cfg.eval.max_time_share)
