"""train.stage: classify: sequence classification (one label per text) and token classification
(one tag per word), on any HF encoder or decoder with a classification head.

Run folder: the common contract (engine/run.py) plus
    labels.json            label ids (also in final/config.json id2label)
    eval_metrics.json      metrics on the eval set before and after training
    confusion_matrix.png   after training (rows = true label)
    eval_predictions.jsonl one line per eval text/sentence with the prediction

Long inputs become sliding windows (data.max_length, data.stride); eval predictions of the windows
are merged back to one label per text / per word before any metric is computed. The loss is
cross-entropy with optional class weights (train.class_weights) and label smoothing; EWC and
adversarial steps on the embeddings (FGM/PGD, a classic for Chinese classification and NER) work
as in SFT. Evidence: accuracy and macro-F1 (entity F1 for NER) before/after on the held-out items.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from transformers import Trainer, set_seed

from ..data import IGNORE_INDEX
from ..data.collate import ClassifyCollator
from ..data.io import DataError, write_jsonl
from ..data.preview import PreviewSample
from ..data.labelled import load_sequence_data, load_token_data
from ..data.windows import build_rows, check_window, label_counts
from ..engine.args import training_arguments
from ..engine.callbacks import attach, standard_callbacks
from ..engine.distributed import distributed_kwargs
from ..engine.memory import plan_checkpointing
from ..engine.monitors import Health
from ..engine.run import RunFolder
from ..engine.summary import StageResult, evidence, make_summary
from ..engine.trainer import SeekTrainerMixin, TokenCounter
from ..eval.classification import (max_length_for, confusion_figure, entity_metrics, evaluate, headline,
                                   save_confusion_png, scalar_metrics, summary_metrics)
from ..models.adapters import apply_adapter
from ..models.loader import load_model, load_tokenizer
from ..utils.console import log, warn
from ..utils.threads import configure_threads


def class_weights(spec, labels: list[str], counts: dict[str, int]) -> torch.Tensor | None:
    """train.class_weights -> a weight per label id. 'auto' = n / (k * n_c), inverse frequency
    scaled so a balanced set gets all ones (scikit-learn's 'balanced'); unseen classes get 1."""
    if spec is None:
        return None
    k = len(labels)
    if spec == "auto":
        total = sum(counts.get(lab, 0) for lab in labels)
        w = [total / (k * counts[lab]) if counts.get(lab) else 1.0 for lab in labels]
    elif isinstance(spec, dict):
        unknown = sorted(set(spec) - set(labels))
        if unknown:
            raise DataError(f"train.class_weights names labels not in the data: {unknown} (labels: {labels})")
        w = [float(spec.get(lab, 1.0)) for lab in labels]
    else:
        if len(spec) != k:
            raise DataError(f"train.class_weights has {len(spec)} values but there are {k} labels {labels}")
        w = [float(x) for x in spec]
    if any(x <= 0 for x in w):
        raise DataError("train.class_weights must all be > 0")
    return torch.tensor(w, dtype=torch.float32)


def weighted_ce(logits: torch.Tensor, labels: torch.Tensor, weight: torch.Tensor | None,
                smoothing: float) -> torch.Tensor:
    c = logits.shape[-1]
    w = weight.to(logits.device, logits.dtype) if weight is not None else None
    return F.cross_entropy(logits.reshape(-1, c).float(), labels.reshape(-1), weight=w, ignore_index=IGNORE_INDEX,
                           label_smoothing=smoothing)


class ClassifyTrainer(SeekTrainerMixin, Trainer):
    """Our task loss: class weights and label smoothing for both heads (the mixin adds EWC on top).

    The loss is a mean per micro-batch, so the Trainer divides it by the accumulation steps
    (model_accepts_loss_kwargs = False)."""

    def __init__(self, *a, loss_weight: torch.Tensor | None = None, label_smoothing: float = 0.0, **kw):
        super().__init__(*a, **kw)
        self.loss_weight = loss_weight
        self.smoothing = label_smoothing
        self.model_accepts_loss_kwargs = False

    def task_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        labels = inputs["labels"]
        outputs = model(**{k: v for k, v in inputs.items() if k != "labels"})
        loss = weighted_ce(outputs.logits, labels, self.loss_weight, self.smoothing)
        return (loss, outputs) if return_outputs else loss


def window_metrics(labels: list[str] | None = None):
    """compute_metrics for the periodic evals: accuracy and macro-F1 per window/token (the final report
    merges windows), so early stopping, TensorBoard and `seektune tune` can follow eval_accuracy /
    eval_f1. With the tag names of a token task it adds eval_entity_f1 (seqeval, per window): the score
    NER is judged by, so a study on it can prune from the evaluations a trial already makes."""

    def compute(p) -> dict:
        import numpy as np
        from sklearn.metrics import f1_score

        logits = p.predictions[0] if isinstance(p.predictions, tuple) else p.predictions
        pred, gold = np.asarray(logits).argmax(-1), np.asarray(p.label_ids)
        mask = gold != IGNORE_INDEX
        y, yhat = gold[mask], pred[mask]
        out = {"accuracy": float((y == yhat).mean()) if y.size else 0.0,
               "f1": float(f1_score(y, yhat, average="macro")) if y.size else 0.0}
        if labels is not None and gold.ndim == 2:
            true = [[labels[t] for t in g[m]] for g, m in zip(gold, mask)]
            guess = [[labels[t] for t in q[m]] for q, m in zip(pred, mask)]
            out["entity_f1"] = entity_metrics(true, guess)["f1"]
        return out

    return compute


def run(cfg, run: RunFolder, progress: bool = True, callbacks: list | None = None) -> StageResult:
    task = cfg.model.task
    # 1. setup: threads, seed, tokenizer, data, labels, model
    threads = configure_threads(cfg.train.num_threads)
    set_seed(cfg.train.seed)
    tok = load_tokenizer(cfg.model)
    rejects: list[dict] = []
    load = load_sequence_data if task == "sequence_classification" else load_token_data
    data = load(cfg.data, cfg.train.seed, rejects)
    run.write_rejects(rejects, data.unused)
    s = data.stats
    log(f"data: {s['accounting']}" + (f" (see {run.path / 'rejects.jsonl'})" if rejects else "")
        + f"; {len(data.labels)} labels")
    if "span_conversion" in s:
        c = s["span_conversion"]
        log(f"spans -> {cfg.data.label_scheme} tags ({cfg.data.nested_policy}): {c['entities']} entities, kept "
            f"{c['kept']}, dropped nested {c['dropped_nested']}, crossing {c['dropped_crossing']}, "
            f"invalid {c['dropped_invalid']}")
    if not data.eval:
        warn("no eval data (data.eval unset and data.eval_ratio 0): no metrics will be computed")
    if run.main:
        (run.path / "labels.json").write_text(json.dumps(data.labels, ensure_ascii=False, indent=1), encoding="utf-8")
    max_length = max_length_for(cfg, tok)
    check_window(tok, max_length, cfg.data.stride)
    train_rows, eval_rows, owners = build_rows(task, data, tok, max_length, cfg.data.stride)
    if len(train_rows) > len(data.train):
        log(f"windows: {len(data.train)} training items -> {len(train_rows)} windows of <= {max_length} tokens "
            f"(stride {cfg.data.stride})")
    counts = label_counts(task, train_rows, data.labels)
    weight = class_weights(cfg.train.class_weights, data.labels, counts)
    if weight is not None:
        log("class weights: " + ", ".join(f"{lab}={w:.3f}" for lab, w in zip(data.labels, weight.tolist())))
    model, tok, model_path = load_model(cfg.model, tokenizer=tok, num_labels=len(data.labels),
                                        id2label=dict(enumerate(data.labels)), log=log, dropout=cfg.train.dropout,
                                        quantize=cfg.adapter.quantize_base)
    if (cfg.train.dropout is not None and cfg.train.dropout.classifier is not None
            and not isinstance(getattr(model, "dropout", None), torch.nn.Dropout)):
        warn(f"train.dropout.classifier: the {model.config.model_type} {task} head has no dropout layer; ignored")
    log(f"model: {cfg.model.name_or_path} ({model.config.model_type}) from {model_path}; threads: {threads}")
    model, rep = apply_adapter(model, cfg.adapter, task, log=log)
    for line in rep.lines():
        log(line)
    ewc, perturber = setup_regularisers(cfg, model, train_rows, tok, run)

    collator = ClassifyCollator(tok.pad_token_id)
    counter, health = TokenCounter(), Health()
    every_n, gc_line = plan_checkpointing(cfg.train.gradient_checkpointing, model,
                                          cfg.train.batch_size * max_length, cfg.train.activation_budget_gb)
    if gc_line:
        log(gc_line)
    args = training_arguments(cfg, run.path, has_eval=bool(eval_rows), checkpoint_every=every_n,
                              dist_kwargs=distributed_kwargs(cfg, model, False))
    # batches of similar lengths: short classification texts otherwise spend ~half their compute on padding
    args.train_sampling_strategy = "group_by_length"
    cbs = standard_callbacks(cfg, run.path, health, counter, model, progress)
    if cfg.train.early_stopping:  # on eval_loss, eval_accuracy, eval_f1 or eval_entity_f1 (window_metrics)
        from transformers import EarlyStoppingCallback

        es = cfg.train.early_stopping
        cbs.append(EarlyStoppingCallback(early_stopping_patience=es.patience, early_stopping_threshold=es.min_delta))
    trainer = ClassifyTrainer(
        model=model, args=args, train_dataset=train_rows,
        eval_dataset=[{k: v for k, v in r.items() if k != "word_index"} for r in eval_rows] or None,
        data_collator=collator, processing_class=tok, compute_metrics=window_metrics(data.labels if task == "token_classification" else None),
        callbacks=[*cbs, *(callbacks or [])], token_counter=counter, pad_token_id=tok.pad_token_id, st_cfg=cfg,
        loss_weight=weight, label_smoothing=cfg.train.label_smoothing, health=health)
    attach(trainer, cbs)
    trainer.ewc, trainer.perturber = ewc, perturber
    ebs = cfg.train.eval_batch_size or cfg.train.batch_size

    # 2. train
    before = None
    if eval_rows:
        before = run.before("metrics", lambda: evaluate(task, trainer.model, data, eval_rows, owners, collator, ebs)[0])
        log("before training: " + headline(task, before))
    t_train = time.time()
    out = trainer.train(resume_from_checkpoint=run.resume_from)
    train_s = time.time() - t_train
    after = None
    if eval_rows:
        after, preds = evaluate(task, trainer.model, data, eval_rows, owners, collator, ebs)
        log("after training:  " + headline(task, after))
        if run.main:
            write_jsonl(run.path / "eval_predictions.jsonl", preds)
            save_confusion_png(after["confusion_matrix"], after["labels"], run.path / "confusion_matrix.png")
            _log_metrics(run.path, task, after, trainer.state.global_step)
    run.write_json("eval_metrics.json", {"before": before, "after": after})

    # 3. save
    run.save_final(lambda d: (trainer.save_model(str(d)), run.main and tok.save_pretrained(str(d))))

    # 4. summary
    b, a = summary_metrics(task, before), summary_metrics(task, after)
    n = len(data.eval)
    keys = ["accuracy", "macro_f1"] + (["entity_f1"] if task == "token_classification" else [])
    rows = [evidence(k.replace("_", " "), (b or {}).get(k), (a or {}).get(k), "higher", n, key=k) for k in keys] \
        if a else []
    summary = make_summary(
        "classify", cfg, adapter_report=rep, model_path=model_path, data=s, steps=trainer.state.global_step,
        train_loss=out.training_loss, train_seconds=train_s, threads=threads, final=str(run.final),
        warnings=health.warnings, resumed_from=run.resume_from, evidence_rows=rows,
        curves=[{"title": "Eval accuracy / F1 during training", "keys": ["eval_accuracy", "eval_f1", "eval_entity_f1"]}],
        task=task, labels=data.labels, train_windows=len(train_rows), eval_windows=len(eval_rows),
        label_counts=counts, class_weights=weight.tolist() if weight is not None else None,
        majority_baseline=(a or {}).get("majority_baseline"), eval_before=b, eval_after=a,
        figures=["confusion_matrix.png"] if a else [])
    return StageResult(summary, model=trainer.model, tokenizer=tok, trainer=trainer)


def setup_regularisers(cfg, model, train_rows: list, tok, run: RunFolder):
    """EWC (Fisher on training windows, or a saved file) and the embedding perturber, as in SFT."""
    from ..engine.forgetting import EWC, EmbeddingPerturber, estimate_fisher

    t = cfg.train
    ewc = perturber = None
    if t.ewc is not None:
        if t.ewc.fisher_file:
            fisher, anchor = EWC.load(Path(t.ewc.fisher_file))
            ewc = EWC(model, fisher, t.ewc.lam, anchor)
        else:
            if t.ewc.data:
                raise DataError("train.ewc.data: stage classify estimates the Fisher on its own training windows; "
                                "leave it unset (or give train.ewc.fisher_file)")
            coll = ClassifyCollator(tok.pad_token_id)
            fisher = estimate_fisher(model, (coll([r]) for r in train_rows), t.ewc.samples)
            ewc = EWC(model, fisher, t.ewc.lam)
            log(f"ewc: diagonal Fisher from {min(len(train_rows), t.ewc.samples)} training windows; lambda {t.ewc.lam}")
        if run.main:
            ewc.save(run.path / "ewc_fisher.safetensors")
    if t.adversarial is not None:
        perturber = EmbeddingPerturber(model)
        log(f"adversarial: {t.adversarial.method} on input embeddings, epsilon {t.adversarial.epsilon}")
    return ewc, perturber


def preview(cfg, n: int = 3):
    """The first n training items: the text (or tokens) and the label it is trained towards."""
    rejects: list[dict] = []
    load = load_sequence_data if cfg.model.task == "sequence_classification" else load_token_data
    data = load(cfg.data.model_copy(update={"max_samples": max(4 * n, n + 8)}), cfg.train.seed, rejects)
    out = []
    for x in data.train[:n]:
        if cfg.model.task == "sequence_classification":
            text = f"{x.text}\n-> {x.label}"
            out.append(PreviewSample(f"{Path(x.source).name}:{x.line}", text, [(len(x.text) + 4, len(text))]))
        else:
            text = " ".join(f"{w}/{t}" for w, t in zip(x.tokens, x.tags))
            out.append(PreviewSample(f"{Path(x.source).name}:{x.line}", text, [(0, len(text))]))
    return out


def _log_metrics(run_dir: Path, task: str, m: dict, step: int) -> None:
    """Append the final eval scalars to metrics.jsonl and TensorBoard (with the confusion matrix)."""
    scal = scalar_metrics(m, "eval_")
    if task == "token_classification":
        scal.update({k.replace("eval_", "eval_entity_"): v for k, v in scalar_metrics(m["entity"], "eval_").items()})
    with open(run_dir / "metrics.jsonl", "a", encoding="utf-8") as f:
        f.write(json.dumps({"step": step, **scal}) + "\n")
    from torch.utils.tensorboard import SummaryWriter

    w = SummaryWriter(str(run_dir / "tensorboard"))
    for k, v in scal.items():
        w.add_scalar("eval/" + k[5:], v, step)
    w.add_figure("eval/confusion_matrix", confusion_figure(m["confusion_matrix"], m["labels"]), step)
    w.close()
