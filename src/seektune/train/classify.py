"""The classification recipe: sequence classification (one label per text) and token
classification (one tag per word), on any HF encoder or decoder with a classification head.

Same run folder as SFT (config.yaml, metrics.jsonl, tensorboard/, checkpoints/, final/,
rejects.jsonl, summary.json) plus:
    labels.json           label ids (also in final/config.json id2label)
    eval_metrics.json     metrics on the eval set before and after training
    confusion_matrix.png  after training (rows = true label)
    eval_predictions.jsonl one line per eval text/sentence with the prediction

Long inputs become sliding windows (data.max_length, data.stride); eval predictions of the
windows are merged back to one label per text / per word before any metric is computed.
The loss is cross-entropy with optional class weights (train.class_weights) and label smoothing
(train.label_smoothing).
"""

from __future__ import annotations

import json
import time
from collections import Counter
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from transformers import PrinterCallback, set_seed

from ..config import Config
from ..data.io import DataError, write_jsonl
from ..data.labelled import LabelledData, load_sequence_data, load_token_data
from ..data.windows import IGNORE, check_window, merge_text_windows, merge_word_windows, text_windows, word_windows
from ..eval.classification import (classification_metrics, confusion_figure, entity_metrics, save_confusion_png,
                                   scalar_metrics)
from ..models.adapters import apply_adapter
from ..models.loader import load_model, load_tokenizer
from ..utils.console import log, warn
from .callbacks import MetricsLogger, RichProgress
from .monitors import Health, TrainingMonitor
from .sft import SeekTrainer, TokenCounter, configure_threads, latest_checkpoint, training_arguments


class ClassifyCollator:
    """Right-pads input_ids (attention mask) and labels; scalar labels stay one per row."""

    def __init__(self, pad_token_id: int):
        self.pad = pad_token_id

    def __call__(self, rows: list[dict]) -> dict[str, torch.Tensor]:
        n = max(len(r["input_ids"]) for r in rows)
        ids = torch.full((len(rows), n), self.pad, dtype=torch.long)
        mask = torch.zeros((len(rows), n), dtype=torch.long)
        for i, r in enumerate(rows):
            k = len(r["input_ids"])
            ids[i, :k] = torch.tensor(r["input_ids"])
            mask[i, :k] = 1
        out = {"input_ids": ids, "attention_mask": mask}
        if "labels" in rows[0]:
            if isinstance(rows[0]["labels"], list):
                lab = torch.full((len(rows), n), IGNORE, dtype=torch.long)
                for i, r in enumerate(rows):
                    lab[i, :len(r["labels"])] = torch.tensor(r["labels"])
            else:
                lab = torch.tensor([r["labels"] for r in rows], dtype=torch.long)
            out["labels"] = lab
        return out


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
    return F.cross_entropy(logits.reshape(-1, c).float(), labels.reshape(-1), weight=w, ignore_index=IGNORE,
                           label_smoothing=smoothing)


def _window_metrics(p) -> dict:
    """Accuracy and macro-F1 per window/token during periodic evals (the final report merges windows),
    so early stopping and TensorBoard can follow eval_accuracy / eval_f1."""
    import numpy as np
    from sklearn.metrics import f1_score

    logits = p.predictions[0] if isinstance(p.predictions, tuple) else p.predictions
    pred, labels = np.asarray(logits).argmax(-1), np.asarray(p.label_ids)
    mask = labels != -100
    y, yhat = labels[mask], pred[mask]
    return {"accuracy": float((y == yhat).mean()) if y.size else 0.0,
            "f1": float(f1_score(y, yhat, average="macro")) if y.size else 0.0}


class ClassifyTrainer(SeekTrainer):
    """SeekTrainer with our own task loss: class weights and label smoothing for both heads
    (SeekTrainer adds its extras, e.g. an EWC penalty, on top).

    The loss is a mean per micro-batch, so the Trainer divides it by the accumulation steps
    (model_accepts_loss_kwargs = False)."""

    def __init__(self, *a, loss_weight: torch.Tensor | None = None, label_smoothing: float = 0.0, **kw):
        super().__init__(*a, **kw)
        self.loss_weight = loss_weight
        self.smoothing = label_smoothing
        self.model_accepts_loss_kwargs = False

    def _task_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        labels = inputs["labels"]
        outputs = model(**{k: v for k, v in inputs.items() if k != "labels"})
        loss = weighted_ce(outputs.logits, labels, self.loss_weight, self.smoothing)
        return (loss, outputs) if return_outputs else loss


@torch.no_grad()
def predict_logits(model, rows: list[dict], collator, batch_size: int) -> list[np.ndarray]:
    """Logits per row, trimmed to the row's length (token tasks) or one vector (sequence tasks)."""
    model.eval()
    order = sorted(range(len(rows)), key=lambda i: len(rows[i]["input_ids"]))
    out: list[np.ndarray | None] = [None] * len(rows)
    device = next(model.parameters()).device
    for b in range(0, len(order), batch_size):
        idx = order[b:b + batch_size]
        batch = collator([{"input_ids": rows[i]["input_ids"]} for i in idx])
        logits = model(**{k: v.to(device) for k, v in batch.items()}).logits.float().cpu().numpy()
        for j, i in enumerate(idx):
            out[i] = logits[j, :len(rows[i]["input_ids"])] if logits.ndim == 3 else logits[j]
    return out


def _max_length(cfg: Config, tok) -> int:
    limit = tok.model_max_length if tok.model_max_length and tok.model_max_length < 1_000_000 else None
    if limit is not None and cfg.data.max_length > limit:
        warn(f"data.max_length={cfg.data.max_length} exceeds the model's {limit} positions; using {limit}")
        return limit
    return cfg.data.max_length


def build_rows(task: str, data: LabelledData, tok, max_length: int, stride: int):
    """Training rows and eval windows (each window remembers its eval item)."""
    lid = {lab: i for i, lab in enumerate(data.labels)}
    train_rows, eval_rows, owners = [], [], []
    if task == "sequence_classification":
        for ex in data.train:
            for ids in text_windows(tok, ex.text, max_length, stride):
                train_rows.append({"input_ids": ids, "labels": lid[ex.label]})
        for k, ex in enumerate(data.eval):
            for ids in text_windows(tok, ex.text, max_length, stride):
                eval_rows.append({"input_ids": ids, "labels": lid[ex.label]})
                owners.append(k)
    else:
        for s in data.train:
            train_rows.extend(word_windows(tok, s.tokens, [lid[t] for t in s.tags], max_length, stride))
        for k, s in enumerate(data.eval):
            wl = [lid.get(t, IGNORE) for t in s.tags]  # tags unseen in training: no loss, still scored
            for r in word_windows(tok, s.tokens, wl, max_length, stride):
                eval_rows.append(r)
                owners.append(k)
    return train_rows, eval_rows, owners


def label_counts(task: str, train_rows: list[dict], labels: list[str]) -> dict[str, int]:
    c: Counter = Counter()
    for r in train_rows:
        if task == "sequence_classification":
            c[r["labels"]] += 1
        else:
            c.update(x for x in r["labels"] if x != IGNORE)
    return {lab: c.get(i, 0) for i, lab in enumerate(labels)}


def evaluate(task: str, model, data: LabelledData, eval_rows, owners, collator, batch_size: int):
    """Merge window predictions and score them. Returns (metrics, predictions per eval item)."""
    logits = predict_logits(model, eval_rows, collator, batch_size)
    labels = data.labels
    if task == "sequence_classification":
        per_item: dict[int, list] = {}
        for w, k in enumerate(owners):
            per_item.setdefault(k, []).append(logits[w])
        preds = []
        for k, ex in enumerate(data.eval):
            probs = merge_text_windows(per_item[k])
            preds.append({"source": ex.source, "line": ex.line, "text": ex.text, "label": ex.label,
                          "pred": labels[int(np.argmax(probs))],
                          "probs": {lab: round(float(p), 4) for lab, p in zip(labels, probs)}})
        m = classification_metrics([p["label"] for p in preds], [p["pred"] for p in preds], labels)
        m["windows"] = len(eval_rows)
        return m, preds
    per_item_w: dict[int, list] = {}
    for w, k in enumerate(owners):
        per_item_w.setdefault(k, []).append((eval_rows[w]["word_index"], logits[w]))
    preds, true_tags, pred_tags = [], [], []
    no_token = 0
    for k, s in enumerate(data.eval):
        ids = merge_word_windows(len(s.tokens), per_item_w.get(k, []))
        no_token += sum(1 for i in ids if i is None)
        tags = [labels[i] if i is not None else "O" for i in ids]
        true_tags.append(s.tags)
        pred_tags.append(tags)
        preds.append({"source": s.source, "line": s.line, "tokens": s.tokens, "tags": s.tags, "pred": tags})
    flat_t = [t for x in true_tags for t in x]
    flat_p = [t for x in pred_tags for t in x]
    tag_labels = labels + sorted(set(flat_t) - set(labels))
    m = classification_metrics(flat_t, flat_p, tag_labels)
    m["entity"] = entity_metrics(true_tags, pred_tags)
    m["windows"] = len(eval_rows)
    m["words_without_tokens"] = no_token
    return m, preds


def _headline(task: str, m: dict) -> str:
    if task == "sequence_classification":
        return (f"accuracy {m['accuracy']:.4f} (majority class {m['majority_baseline']:.4f}), "
                f"macro F1 {m['macro_f1']:.4f}")
    e = m["entity"]
    return f"entity F1 {e['f1']:.4f} (P {e['precision']:.4f}, R {e['recall']:.4f}), tag accuracy {m['accuracy']:.4f}"


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


def run_classify(cfg: Config, resume: bool = False, show_progress: bool = True) -> dict:
    task = cfg.model.task
    if task not in ("sequence_classification", "token_classification"):
        raise DataError(f"model.task={task} is not a classification task")
    t0 = time.time()
    run_dir = Path(cfg.train.output_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    resume = resume or cfg.train.resume
    if not resume and (run_dir / "metrics.jsonl").exists():
        (run_dir / "metrics.jsonl").unlink()
    (run_dir / "config.yaml").write_text(cfg.to_yaml(), encoding="utf-8")
    threads = configure_threads(cfg.train.num_threads)
    set_seed(cfg.train.seed)

    tok = load_tokenizer(cfg.model)
    rejects: list[dict] = []
    load = load_sequence_data if task == "sequence_classification" else load_token_data
    data = load(cfg.data, cfg.train.seed, rejects)
    write_jsonl(run_dir / "rejects.jsonl", rejects)
    s = data.stats
    log(f"data: read {s['read']}, train {s['train']}, eval {s['eval']}, rejected {len(rejects)}"
        + (f" (see {run_dir / 'rejects.jsonl'})" if rejects else "") + f"; {len(data.labels)} labels")
    if "span_conversion" in s:
        c = s["span_conversion"]
        log(f"spans -> {cfg.data.label_scheme} tags ({cfg.data.nested_policy}): {c['entities']} entities, kept "
            f"{c['kept']}, dropped nested {c['dropped_nested']}, crossing {c['dropped_crossing']}, "
            f"invalid {c['dropped_invalid']}")
    if not data.eval:
        warn("no eval data (data.eval unset and data.eval_ratio 0): no metrics will be computed")
    (run_dir / "labels.json").write_text(json.dumps(data.labels, ensure_ascii=False, indent=1), encoding="utf-8")

    max_length = _max_length(cfg, tok)
    check_window(tok, max_length, cfg.data.stride)
    train_rows, eval_rows, owners = build_rows(task, data, tok, max_length, cfg.data.stride)
    n_items = len(data.train)
    if len(train_rows) > n_items:
        log(f"windows: {n_items} training items -> {len(train_rows)} windows of <= {max_length} tokens "
            f"(stride {cfg.data.stride})")
    counts = label_counts(task, train_rows, data.labels)
    weight = class_weights(cfg.train.class_weights, data.labels, counts)
    if weight is not None:
        log("class weights: " + ", ".join(f"{lab}={w:.3f}" for lab, w in zip(data.labels, weight.tolist())))

    id2label = dict(enumerate(data.labels))
    model, tok, model_path = load_model(cfg.model, tokenizer=tok, num_labels=len(data.labels), id2label=id2label,
                                        log=log, dropout=cfg.train.dropout)
    if (cfg.train.dropout is not None and cfg.train.dropout.classifier is not None
            and not isinstance(getattr(model, "dropout", None), torch.nn.Dropout)):
        warn(f"train.dropout.classifier: the {model.config.model_type} {task} head has no dropout layer; ignored")
    log(f"model: {cfg.model.name_or_path} ({model.config.model_type}) from {model_path}; threads: {threads}")
    model, rep = apply_adapter(model, cfg.adapter, task, log=log)
    for line in rep.lines():
        log(line)

    collator = ClassifyCollator(tok.pad_token_id)
    counter = TokenCounter()
    args = training_arguments(cfg, run_dir, has_eval=bool(eval_rows))
    # batches of similar lengths: short classification texts otherwise spend ~half their compute on padding
    args.train_sampling_strategy = "group_by_length"
    health = Health()
    extra = []
    if cfg.train.early_stopping:  # on eval_loss, eval_accuracy or eval_f1 (from _window_metrics)
        from transformers import EarlyStoppingCallback

        es = cfg.train.early_stopping
        extra.append(EarlyStoppingCallback(early_stopping_patience=es.patience, early_stopping_threshold=es.min_delta))
    trainer = ClassifyTrainer(
        model=model, args=args, train_dataset=train_rows,
        eval_dataset=[{k: v for k, v in r.items() if k != "word_index"} for r in eval_rows] or None,
        data_collator=collator, processing_class=tok, compute_metrics=_window_metrics,
        callbacks=[TrainingMonitor(cfg.monitor, health, model), MetricsLogger(run_dir, counter),
                   RichProgress(counter, enabled=show_progress), *extra],
        token_counter=counter, pad_token_id=tok.pad_token_id, st_cfg=cfg, loss_weight=weight,
        label_smoothing=cfg.train.label_smoothing, health=health,
    )
    trainer.remove_callback(PrinterCallback)
    for cb in trainer.callback_handler.callbacks:
        if isinstance(cb, TrainingMonitor):
            cb.trainer = trainer
    ckpt = latest_checkpoint(run_dir / "checkpoints") if resume else None
    ebs = cfg.train.eval_batch_size or cfg.train.batch_size

    before = None
    if eval_rows and not ckpt:
        before, _ = evaluate(task, trainer.model, data, eval_rows, owners, collator, ebs)
        log("before training: " + _headline(task, before))
    t_train = time.time()
    out = trainer.train(resume_from_checkpoint=ckpt)
    train_s = time.time() - t_train

    after = None
    if eval_rows:
        after, preds = evaluate(task, trainer.model, data, eval_rows, owners, collator, ebs)
        log("after training:  " + _headline(task, after))
        write_jsonl(run_dir / "eval_predictions.jsonl", preds)
        save_confusion_png(after["confusion_matrix"], after["labels"], run_dir / "confusion_matrix.png")
        _log_metrics(run_dir, task, after, trainer.state.global_step)
    (run_dir / "eval_metrics.json").write_text(json.dumps({"before": before, "after": after}, indent=1,
                                                          ensure_ascii=False), encoding="utf-8")

    final = run_dir / "final"
    trainer.save_model(str(final))
    tok.save_pretrained(str(final))
    summary = {
        "task": task, "model": cfg.model.name_or_path, "model_path": model_path, "adapter": rep.method,
        "trainable_params": rep.trainable, "total_params": rep.total, "labels": data.labels, "data": s,
        "train_windows": len(train_rows), "eval_windows": len(eval_rows), "label_counts": counts,
        "class_weights": weight.tolist() if weight is not None else None,
        "steps": trainer.state.global_step, "train_loss": out.training_loss,
        "eval_before": _summary_metrics(task, before), "eval_after": _summary_metrics(task, after),
        "train_seconds": round(train_s, 2), "total_seconds": round(time.time() - t0, 2), "threads": threads,
        "final": str(final),
    }
    (run_dir / "summary.json").write_text(json.dumps(summary, indent=2, ensure_ascii=False))
    log(f"done in {summary['total_seconds']:.0f}s: {summary['steps']} steps; metrics in {run_dir / 'eval_metrics.json'}"
        f"; final model in {final}")
    summary["_trainer"] = trainer
    return summary


def _summary_metrics(task: str, m: dict | None) -> dict | None:
    if m is None:
        return None
    keys = ("accuracy", "majority_baseline", "macro_f1")
    out = {k: m[k] for k in keys}
    if task == "token_classification":
        out.update({f"entity_{k}": m["entity"][k] for k in ("precision", "recall", "f1")})
    return out


def evaluate_run(run_dir: str | Path, data_file: str, out_dir: str | Path | None = None) -> dict:
    """`seektune eval RUN --data FILE` for classification / NER runs: the run's final model on FILE,
    with the run's labels, windows and merging; metrics, confusion PNG and predictions in RUN/eval/."""
    from ..config import load_config

    run_dir = Path(run_dir)
    cfg = load_config(run_dir / "config.yaml")
    task = cfg.model.task
    final = run_dir / "final"
    labels = json.loads((run_dir / "labels.json").read_text(encoding="utf-8"))
    rejects: list[dict] = []
    dcfg = cfg.data.model_copy(update={"train": data_file, "eval": data_file, "max_samples": None, "pipeline": []})
    load = load_sequence_data if task == "sequence_classification" else load_token_data
    data = load(dcfg, cfg.train.seed, rejects)
    unknown = sorted({lab for lab in data.labels if lab not in labels})
    if unknown:
        raise DataError(f"{data_file}: labels {unknown} were not seen in training ({run_dir / 'labels.json'})")
    data.labels = labels
    tok = load_tokenizer(cfg.model.model_copy(update={"name_or_path": str(final), "tokenizer": None}))
    if (final / "adapter_config.json").exists():
        from peft import AutoPeftModelForSequenceClassification, AutoPeftModelForTokenClassification

        cls = AutoPeftModelForSequenceClassification if task == "sequence_classification" else \
            AutoPeftModelForTokenClassification
    else:
        from transformers import AutoModelForSequenceClassification, AutoModelForTokenClassification

        cls = AutoModelForSequenceClassification if task == "sequence_classification" else \
            AutoModelForTokenClassification
    model = cls.from_pretrained(str(final)).eval()
    max_length = _max_length(cfg, tok)
    _, eval_rows, owners = build_rows(task, data, tok, max_length, cfg.data.stride)
    collator = ClassifyCollator(tok.pad_token_id)
    metrics, preds = evaluate(task, model, data, eval_rows, owners, collator,
                              cfg.train.eval_batch_size or cfg.train.batch_size)
    out = Path(out_dir or run_dir / "eval")
    out.mkdir(parents=True, exist_ok=True)
    write_jsonl(out / "eval_predictions.jsonl", preds)
    if rejects:
        write_jsonl(out / "rejects.jsonl", rejects)
    save_confusion_png(metrics["confusion_matrix"], metrics["labels"], out / "confusion_matrix.png")
    (out / "eval_metrics.json").write_text(json.dumps({"data": str(data_file), **metrics}, indent=1,
                                                      ensure_ascii=False), encoding="utf-8")
    log(f"{data_file}: " + _headline(task, metrics) + f" ({len(data.eval)} items, rejected {len(rejects)}); "
        f"written to {out}")
    return {"task": task, "metrics": metrics, "out_dir": str(out)}
