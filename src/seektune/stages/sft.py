"""train.stage: sft: supervised fine-tuning of a causal LM on chat samples.

Loss covers assistant tokens only (their end-of-turn token and any reasoning included); samples are
packed into rows with position ids restarting per sample (packed loss == unpacked loss); the LM
head and cross-entropy run only on labelled positions (train.fused_loss) unless the model
post-processes its logits. Against forgetting: replay of general samples (counted in samples),
EWC, adversarial steps on the embeddings. Evidence: eval loss before/after on the held-out records,
and generation metrics before/after (eval.json) when eval.before_after is on.
"""

from __future__ import annotations

import json
import random
import time
from pathlib import Path

import torch
from transformers import Trainer, set_seed

from ..data import IGNORE_INDEX
from ..data.collate import PadCollator
from ..data.io import read_records, write_jsonl
from ..data.preview import PreviewSample, token_preview
from ..data.sft import build_sft_data, pack_examples
from ..data.templates import get_template
from ..engine.args import training_arguments
from ..engine.callbacks import attach, standard_callbacks
from ..engine.compile import compile_decision, compile_layers, uncompile_layers
from ..engine.distributed import distributed_kwargs
from ..engine.losses import fused_loss_supported, label_only_lm_loss, mean_over_tokens
from ..engine.memory import plan_checkpointing
from ..engine.monitors import Health
from ..engine.run import RunFolder
from ..engine.summary import StageResult, evidence, make_summary
from ..engine.trainer import SeekTrainerMixin, TokenCounter
from ..eval.callback import make_generation_callback
from ..eval.run_eval import RunEvaluator
from ..models.adapters import apply_adapter, load_adapter
from ..models.loader import is_moe, load_model, load_tokenizer
from ..utils.console import console, log, warn
from ..utils.dist import world_size
from ..utils.threads import configure_threads


class SFTTrainer(SeekTrainerMixin, Trainer):
    """The SFT loss: fused label-only head + cross-entropy, label smoothing, or the model's own loss."""

    _fused: bool | None = None

    def task_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        t = self.st_cfg.train
        ls = t.label_smoothing
        if "labels" in inputs and t.fused_loss and self._fused_ok(model):
            loss, outputs = label_only_lm_loss(model, inputs, num_items_in_batch, ls)
        elif "labels" in inputs and ls > 0:
            labels = inputs["labels"]
            outputs = model(**{k: v for k, v in inputs.items() if k != "labels"})
            logits = outputs.logits[:, :-1].float()
            target = labels[:, 1:]
            total = torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), target.reshape(-1),
                                                      ignore_index=IGNORE_INDEX, label_smoothing=ls, reduction="sum")
            loss = mean_over_tokens(total, num_items_in_batch, (target != IGNORE_INDEX).sum())
        else:
            return super().task_loss(model, inputs, return_outputs, num_items_in_batch)
        if (self.args.average_tokens_across_devices and self.model_accepts_loss_kwargs
                and num_items_in_batch is not None):
            # as Trainer.compute_loss does: num_items_in_batch counts every process's tokens, and DDP averages
            loss = loss * self.accelerator.num_processes
        return (loss, outputs) if return_outputs else loss

    def _fused_ok(self, model) -> bool:
        if self._fused is None:
            ok, why = fused_loss_supported(model)
            self._fused = ok
            if not ok and why:
                log(f"fused loss off: {why}; using the model's own loss")
        return self._fused

    def evaluation_loop(self, *a, **kw):
        """Periodic evals also carry generation metrics when early stopping follows one of them."""
        out = super().evaluation_loop(*a, **kw)
        prefix = kw.get("metric_key_prefix", a[4] if len(a) > 4 else "eval")
        gen = getattr(self, "generation_eval", None)
        if gen is not None and getattr(self, "generation_in_eval", False) and prefix == "eval" and gen.items:
            out.metrics.update(gen.measure(self.model))
        return out


def _planned_steps(cfg, rows: int) -> int:
    """Optimizer steps the run will take (train.max_steps, else epochs over the rows), for `compile: auto`."""
    t = cfg.train
    if t.max_steps > 0:
        return t.max_steps
    per_step = t.batch_size * t.grad_accum * world_size()
    return int(-(-rows // per_step) * t.epochs) if rows else 0


def _strip_meta(rows: list[dict]) -> list[dict]:
    return [{k: v for k, v in r.items() if k in ("input_ids", "labels", "position_ids")} for r in rows]


def run(cfg, run: RunFolder, progress: bool = True, callbacks: list | None = None,
        init_adapter: str | None = None) -> StageResult:
    """Train as `cfg` says. `init_adapter`: start from a saved peft adapter (continual fine-tuning)."""
    # 1. setup: threads, seed, model, template, data
    threads = configure_threads(cfg.train.num_threads)
    set_seed(cfg.train.seed)
    model, tok, model_path = load_model(cfg.model, log=log, dropout=cfg.train.dropout,
                                        quantize=cfg.adapter.quantize_base)
    template = get_template(cfg.data.template, tok)
    log(f"model: {cfg.model.name_or_path} ({model.config.model_type}) from {model_path}; template: {template.name}; "
        f"threads: {threads}")
    data = build_sft_data(cfg.data, tok, template, cfg.train.seed, run.path / "rejects.jsonl" if run.main else None,
                          log=log, unused_path=run.path / "unused_eval.jsonl" if run.main else None)
    s = data.stats
    log(f"data: {s['accounting']}" + (f" (rejects in {run.path / 'rejects.jsonl'})" if s["rejected"] else "")
        + f"; truncated {s['truncated']}; {s['train_label_tokens']:,} trained tokens of {s['train_tokens']:,}")
    samples = _strip_meta(data.train)
    ewc, perturber = None, None
    replay = None
    if cfg.train.replay is not None:
        samples, replay = add_replay(cfg, tok, template, samples)
    train_rows = _pack(cfg, samples, len(data.train))
    eval_rows = _strip_meta(data.eval)

    evaluator = RunEvaluator.for_run(cfg, tok, template, data.eval, run.path, resume=bool(run.resume_from),
                                     progress=progress)
    if cfg.eval.before_after and not run.resume_from and run.main:
        evaluator.measure(model, "before")  # the base model, before any adapter touches it

    if init_adapter:
        model, rep = load_adapter(model, init_adapter, cfg.adapter.method)
    else:
        model, rep = apply_adapter(model, cfg.adapter, cfg.model.task, log=log)
    for line in rep.lines():
        log(line)
    model.config.use_cache = False  # a KV cache would disable packed-sequence masking during training
    ewc, perturber = setup_forgetting(cfg, model, tok, template, run)

    planned = _planned_steps(cfg, len(train_rows))
    compiled, why = compile_decision(cfg.train.compile, model, planned)
    n_compiled = compile_layers(model, fallback_to_eager=cfg.train.compile == "auto") if compiled else 0
    log(f"compile: {n_compiled} decoder layers ({why}; the first step compiles)" if compiled else f"compile: {why}")

    counter, health = TokenCounter(), Health()
    row_tokens = cfg.data.max_length if cfg.data.packing else max((len(r["input_ids"]) for r in train_rows), default=1)
    every_n, gc_line = plan_checkpointing(cfg.train.gradient_checkpointing, model, cfg.train.batch_size * row_tokens,
                                          cfg.train.activation_budget_gb)
    if gc_line:
        log(gc_line)
    args = training_arguments(cfg, run.path, has_eval=bool(eval_rows),
                              dist_kwargs=distributed_kwargs(cfg, model, is_moe(model)), checkpoint_every=every_n)
    if world_size() > 1:
        log(f"distributed: {cfg.train.distributed} on {world_size()} processes ({args.ddp_backend or 'auto'}); "
            f"global batch = {cfg.train.batch_size} x {cfg.train.grad_accum} x {world_size()} = "
            f"{cfg.train.batch_size * cfg.train.grad_accum * world_size()} rows")
    cbs = standard_callbacks(cfg, run.path, health, counter, model, progress)
    if cfg.train.early_stopping:
        from transformers import EarlyStoppingCallback

        es = cfg.train.early_stopping
        cbs.append(EarlyStoppingCallback(early_stopping_patience=es.patience, early_stopping_threshold=es.min_delta))
    trainer = SFTTrainer(model=model, args=args, train_dataset=train_rows, eval_dataset=eval_rows or None,
                         data_collator=PadCollator(tok.pad_token_id), processing_class=tok,
                         callbacks=[*cbs, *(callbacks or [])], token_counter=counter, pad_token_id=tok.pad_token_id,
                         st_cfg=cfg, health=health)
    attach(trainer, cbs)
    trainer.ewc, trainer.perturber = ewc, perturber
    gen_cb = make_generation_callback(cfg, tok, evaluator.generation_subset(), template)
    if gen_cb is not None:
        trainer.add_callback(gen_cb.attach(trainer))
        es = cfg.train.early_stopping
        trainer.generation_eval = gen_cb
        trainer.generation_in_eval = es is not None and es.metric.startswith(("eval_rouge", "eval_bleu", "eval_exact"))

    # 2. train
    eval_before = run.before("eval_loss", lambda: trainer.evaluate()["eval_loss"]) if eval_rows else None
    if eval_before is not None:
        log(f"eval loss before training: {eval_before:.4f}")
    t_train = time.time()
    out = trainer.train(resume_from_checkpoint=run.resume_from)
    train_s = time.time() - t_train
    if n_compiled:
        uncompile_layers(trainer.model)
    eval_after = trainer.evaluate()["eval_loss"] if eval_rows else None
    if eval_after is not None:
        log(f"eval loss after training: {eval_after:.4f}")

    # 3. save
    trainer.model.config.use_cache = True
    run.save_final(lambda d: (trainer.save_model(str(d)), run.main and tok.save_pretrained(str(d))))
    if run.main:
        write_replay_buffer(cfg, run.path)
        (run.path / "eval_tokens.json").write_text(json.dumps(eval_rows))  # for drift checks of later runs
        if evaluator.sets:  # tuned model on the same records and decoding as "before"
            evaluator.measure(trainer.model, "after")
            for row in evaluator.flagged():
                console.print(f"[bold red]forgetting:[/] general {row['metric']} {row['before']:.2f} -> "
                              f"{row['after']:.2f} ({100 * row['relative']:+.1f}%)")

    # 4. summary
    es = cfg.train.early_stopping
    summary = make_summary(
        "sft", cfg, adapter_report=rep, model_path=model_path, data={**s, "replay": replay},
        steps=trainer.state.global_step, train_loss=out.training_loss, train_seconds=train_s, threads=threads,
        final=str(run.final), warnings=health.warnings, resumed_from=run.resume_from,
        evidence_rows=[evidence("eval loss", eval_before, eval_after, "lower", len(eval_rows), key="eval_loss")]
        if eval_rows else [],
        curves=[{"title": "Generation metrics during training (fixed eval subset)",
                 "keys": ["eval_rouge_l", "eval_bleu4", "eval_exact_match"]}],
        best_metric=({"name": es.metric, "value": trainer.state.best_metric,
                      "checkpoint": trainer.state.best_model_checkpoint} if es else None),
        stopped_early=bool(es) and trainer.state.global_step < trainer.state.max_steps,
        nonfinite_skipped=health.nonfinite_total, real_tokens=counter.real,
        padding_share=round(counter.padding_share, 4),
        real_tokens_per_s=round(counter.real / train_s, 2) if train_s > 0 else None, compiled_layers=n_compiled)
    return StageResult(summary, model=trainer.model, tokenizer=tok, trainer=trainer)


def _pack(cfg, samples: list[dict], n_domain: int) -> list[dict]:
    if cfg.data.packing and cfg.data.curriculum:
        from ..data.curriculum import pack_in_order

        rows = pack_in_order(samples, cfg.data.max_length)
        log(f"packing (in curriculum order): {len(samples)} samples into {len(rows)} rows")
        return rows
    if cfg.data.packing:
        rows = pack_examples(samples, cfg.data.max_length, seed=cfg.train.seed)
        log(f"packing: {len(samples)} samples into {len(rows)} rows of <= {cfg.data.max_length} tokens")
        return rows
    return samples


def tokenised_rows(cfg, tok, template, path: str, limit: int) -> list[dict]:
    """Tokenise another file (general or reference data) exactly like the training data (no hold-out)."""
    dcfg = cfg.data.model_copy(update={"train": path, "eval": None, "eval_ratio": 0.0, "max_samples": limit,
                                       "pipeline": [], "format": "auto"})
    return _strip_meta(build_sft_data(dcfg, tok, template, cfg.train.seed, None, log=lambda m: None).train)


def add_replay(cfg, tok, template, samples: list[dict]) -> tuple[list[dict], dict]:
    """Domain samples + a seeded draw of general samples (train.replay.ratio of all samples)."""
    from ..engine.forgetting import draw_replay

    r = cfg.train.replay
    pool = tokenised_rows(cfg, tok, template, r.file, r.pool)
    general = draw_replay(pool, len(samples), r.ratio, cfg.train.seed)
    mixed = samples + general
    if cfg.data.curriculum:
        log("replay with data.curriculum: general samples go after the domain samples, in the drawn order")
    info = {"file": r.file, "pool": len(pool), "samples": len(general), "domain_samples": len(samples),
            "share": round(len(general) / max(1, len(mixed)), 4), "counted_in": "samples"}
    log(f"replay: {len(general)} general samples from {r.file} (pool {len(pool)}) + {len(samples)} domain samples = "
        f"{100 * info['share']:.1f}% general (train.replay.ratio {r.ratio})")
    if len(pool) < len(general):
        warn(f"train.replay: the pool has {len(pool)} samples, fewer than the {len(general)} needed: drawn with replacement")
    return mixed, info


def setup_forgetting(cfg, model, tok, template, run: RunFolder):
    """EWC (Fisher from reference data, or a saved file) and the embedding perturber."""
    from ..engine.forgetting import EWC, EmbeddingPerturber, estimate_fisher

    t = cfg.train
    ewc, perturber = None, None
    if t.ewc is not None:
        if t.ewc.fisher_file:
            fisher, anchor = EWC.load(Path(t.ewc.fisher_file))
            ewc = EWC(model, fisher, t.ewc.lam, anchor)
            log(f"ewc: Fisher and anchor from {t.ewc.fisher_file}")
        else:
            ref = t.ewc.data or (t.replay.file if t.replay else cfg.data.train)
            rows = tokenised_rows(cfg, tok, template, ref, t.ewc.samples)
            coll = PadCollator(tok.pad_token_id)
            fisher = estimate_fisher(model, (coll([r]) for r in rows), t.ewc.samples)
            ewc = EWC(model, fisher, t.ewc.lam)
            log(f"ewc: diagonal Fisher from {min(len(rows), t.ewc.samples)} samples of {ref}; lambda {t.ewc.lam}")
        if run.main:
            ewc.save(run.path / "ewc_fisher.safetensors")
    if t.adversarial is not None:
        perturber = EmbeddingPerturber(model)
        log(f"adversarial: {t.adversarial.method} on input embeddings, epsilon {t.adversarial.epsilon}")
    return ewc, perturber


def write_replay_buffer(cfg, run_dir: Path, size: int = 500) -> None:
    """A seeded sample of this run's raw training records, replayed by `seektune continue`."""
    recs = [r.data for r in read_records(cfg.data.train, on_error="collect", errors=[])]
    random.Random(cfg.train.seed).shuffle(recs)
    write_jsonl(run_dir / "replay_buffer.jsonl", recs[:size])


def preview(cfg, n: int = 3) -> list[PreviewSample]:
    """The first n training samples as tokenised: decoded text, and the character spans that carry loss."""
    tok = load_tokenizer(cfg.model)
    template = get_template(cfg.data.template, tok)
    # the whole file, split as the run splits it (and cached as the run caches it): the preview shows
    # training samples only, never a record the run holds out
    data = build_sft_data(cfg.data, tok, template, cfg.train.seed, None, log=lambda m: None)
    return [token_preview(tok, r["input_ids"], r["labels"], r.get("where", "")) for r in data.train[:n]]
