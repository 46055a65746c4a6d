"""train.stage: kto: Kahneman-Tversky optimisation through trl's KTOTrainer.

KTO learns from single replies marked desirable or undesirable: unpaired data
(`prompt/completion/label`) trains as it is, preference pairs are split into one example of each.
The reference is the base with the LoRA adapter off (a frozen copy for full fine-tuning). Evidence:
the held-out pair accuracy and margin of the policy's own mean token log-likelihood (paired data),
or the mean log-likelihood margin of desirable over undesirable held-out replies (unpaired data).
"""

from __future__ import annotations

import random
import time

from transformers import set_seed

from ..data.preference import prepare_unpaired
from ..data.templates import get_template
from ..engine.run import RunFolder
from ..engine.summary import StageResult, evidence, make_summary
from ..engine.trainer import SeekTrainerMixin
from ..eval.preference import completion_logps, logp_preference
from ..models.adapters import apply_adapter
from ..models.loader import load_model
from ..utils.console import log
from ..utils.threads import configure_threads
from .common import preference_evidence, trl_trainer


def _trainer_cls():
    from trl import KTOTrainer

    class SeekKTOTrainer(SeekTrainerMixin, KTOTrainer):
        """trl's KTOTrainer on the engine."""

    return SeekKTOTrainer


def _unpaired_margin(model, tok, examples, bs: int) -> dict:
    """Mean log-likelihood of desirable minus undesirable held-out replies."""
    if not examples:
        return {"margin": None, "n": 0}
    lp = completion_logps(model, tok, [e.prompt for e in examples], [e.completion for e in examples], bs)
    good = [x for x, e in zip(lp, examples) if e.desirable]
    bad = [x for x, e in zip(lp, examples) if not e.desirable]
    if not good or not bad:
        return {"margin": None, "n": len(examples)}
    return {"margin": round(sum(good) / len(good) - sum(bad) / len(bad), 4), "n": len(examples)}


def run(cfg, run: RunFolder, progress: bool = True, callbacks: list | None = None) -> StageResult:
    from datasets import Dataset
    from trl import KTOConfig

    o = cfg.kto
    # 1. setup
    threads = configure_threads(cfg.train.num_threads)
    set_seed(cfg.train.seed)
    model, tok, model_path = load_model(cfg.model, log=log, dropout=cfg.train.dropout,
                                        quantize=cfg.adapter.quantize_base)
    template = get_template(cfg.data.template, tok)
    train, ev, ev_pairs, stats, rejects, unused = prepare_unpaired(cfg.data, tok, template, cfg.train.seed,
                                                                   o.max_prompt_length)
    run.write_rejects(rejects, unused)
    log(f"kto data: {stats['accounting']}; {sum(e.desirable for e in train)} desirable and "
        f"{sum(not e.desirable for e in train)} undesirable training examples")
    model, rep = apply_adapter(model, cfg.adapter, "causal_lm", log=log)
    for line in rep.lines():
        log(line)
    ref = None
    if rep.method != "lora":
        ref, _, _ = load_model(cfg.model, tokenizer=tok, log=log)
    bs = cfg.train.eval_batch_size or cfg.train.batch_size

    def measure(m):
        return logp_preference(m, tok, ev_pairs, bs) if ev_pairs else _unpaired_margin(m, tok, ev, bs)

    before = run.before("logp_preference", lambda: measure(model))
    log(f"held-out before training: {before}")
    # trl's KTO pairs every example with its neighbour for the KL term, so it reads the data in order:
    # shuffle once here, with the seed, instead of letting the sampler do it
    order = list(range(len(train)))
    random.Random(cfg.train.seed).shuffle(order)
    ds = Dataset.from_list([{"prompt": train[i].prompt, "completion": train[i].completion,
                             "label": train[i].desirable} for i in order])
    trainer, health, counter = trl_trainer(
        _trainer_cls(), KTOConfig, cfg, run, model, tok, ds, None, progress, callbacks or [],
        tokens_per_batch=2 * cfg.train.batch_size * cfg.data.max_length, trainer_kw={"ref_model": ref},
        beta=o.beta, loss_type=o.loss_type, desirable_weight=o.desirable_weight,
        undesirable_weight=o.undesirable_weight, max_length=cfg.data.max_length, disable_dropout=o.disable_dropout,
        remove_unused_columns=False, train_sampling_strategy="sequential")

    # 2. train
    t_train = time.time()
    out = trainer.train(resume_from_checkpoint=run.resume_from)
    train_s = time.time() - t_train
    after = measure(trainer.model)
    log(f"held-out after training: {after}")

    # 3. save
    trainer.model.config.use_cache = True
    run.save_final(lambda d: (trainer.save_model(str(d)), run.main and tok.save_pretrained(str(d))))

    # 4. summary
    if ev_pairs:
        rows = preference_evidence(before, after)
    else:
        rows = [evidence("held-out log-likelihood margin (desirable - undesirable)", before["margin"],
                         after["margin"], "higher", after["n"], key="logp_margin")]
    summary = make_summary(
        "kto", cfg, adapter_report=rep, model_path=model_path, data=stats, steps=trainer.state.global_step,
        train_loss=out.training_loss, train_seconds=train_s, threads=threads, final=str(run.final),
        warnings=health.warnings, resumed_from=run.resume_from, evidence_rows=rows,
        curves=[{"title": "KTO: desirable - undesirable reward and KL", "keys": ["rewards/margins", "kl"]}],
        beta=o.beta, loss_type=o.loss_type, heldout_before=before, heldout_after=after,
        nonfinite_skipped=health.nonfinite_total)
    return StageResult(summary, model=trainer.model, tokenizer=tok, trainer=trainer)
