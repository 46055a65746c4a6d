"""Classification and NER evaluation: predictions merged over windows, then scored.

Label-level metrics (accuracy, macro and per-class P/R/F1, confusion matrix) via scikit-learn,
entity-level F1 per type via seqeval (conlleval rules). The training recipe (stages/classify.py)
and `seektune eval RUN --data FILE` both score through `evaluate`, so their numbers agree.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch

from ..data.collate import ClassifyCollator
from ..data.io import DataError, write_jsonl
from ..data.labelled import LabelledData, load_sequence_data, load_token_data
from ..data.windows import build_rows, merge_text_windows, merge_word_windows
from ..models.loader import load_tokenizer
from ..utils.console import log, warn


def classification_metrics(y_true: list, y_pred: list, labels: list | None = None) -> dict:
    """Accuracy, macro P/R/F1, per-class P/R/F1/support and the confusion matrix (rows = truth)."""
    from sklearn.metrics import accuracy_score, confusion_matrix, precision_recall_fscore_support

    y_true = [str(y) for y in y_true]
    y_pred = [str(y) for y in y_pred]
    labels = [str(x) for x in labels] if labels is not None else sorted(set(y_true) | set(y_pred))
    p, r, f, s = precision_recall_fscore_support(y_true, y_pred, labels=labels, zero_division=0)
    mp, mr, mf, _ = precision_recall_fscore_support(y_true, y_pred, labels=labels, average="macro",
                                                    zero_division=0)
    counts = {lab: y_true.count(lab) for lab in labels}
    majority = max(counts.values()) / len(y_true) if y_true else 0.0
    return {
        "n": len(y_true),
        "accuracy": float(accuracy_score(y_true, y_pred)) if y_true else 0.0,
        "majority_baseline": float(majority),
        "macro_precision": float(mp), "macro_recall": float(mr), "macro_f1": float(mf),
        "per_class": {lab: {"precision": float(p[i]), "recall": float(r[i]), "f1": float(f[i]),
                            "support": int(s[i])} for i, lab in enumerate(labels)},
        "labels": labels,
        "confusion_matrix": confusion_matrix(y_true, y_pred, labels=labels).tolist(),
    }


def entity_metrics(true_tags: list[list[str]], pred_tags: list[list[str]]) -> dict:
    """Entity-level micro P/R/F1 and per-type P/R/F1/support (seqeval, conlleval-compatible mode)."""
    from seqeval.metrics import classification_report, f1_score, precision_score, recall_score

    rep = classification_report(true_tags, pred_tags, output_dict=True, zero_division=0)
    per_type = {k: {"precision": float(v["precision"]), "recall": float(v["recall"]),
                    "f1": float(v["f1-score"]), "support": int(v["support"])}
                for k, v in rep.items() if not k.endswith(" avg")}
    return {
        "precision": float(precision_score(true_tags, pred_tags, zero_division=0)),
        "recall": float(recall_score(true_tags, pred_tags, zero_division=0)),
        "f1": float(f1_score(true_tags, pred_tags, zero_division=0)),
        "per_type": per_type,
    }


def confusion_figure(cm: list[list[int]], labels: list[str], title: str = "confusion matrix"):
    """A matplotlib figure of the confusion matrix (counts, rows = true label)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n = len(labels)
    size = min(12, 2 + 0.5 * n)
    fig, ax = plt.subplots(figsize=(size, size))
    ax.imshow(cm, cmap="Blues")
    ax.set_xticks(range(n), labels, rotation=60, ha="right", fontsize=8)
    ax.set_yticks(range(n), labels, fontsize=8)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(title)
    peak = max((max(r) for r in cm), default=0)
    if n <= 25:
        for i in range(n):
            for j in range(n):
                ax.text(j, i, str(cm[i][j]), ha="center", va="center", fontsize=7,
                        color="white" if cm[i][j] > peak / 2 else "black")
    fig.tight_layout()
    return fig


def save_confusion_png(cm: list[list[int]], labels: list[str], path: str | Path, title: str = "confusion matrix"):
    import matplotlib.pyplot as plt

    fig = confusion_figure(cm, labels, title)
    fig.savefig(str(path), dpi=110)
    plt.close(fig)
    return Path(path)


def scalar_metrics(metrics: dict, prefix: str = "") -> dict[str, float]:
    """Flatten the numeric metrics for TensorBoard/metrics.jsonl (per-class F1 included)."""
    out = {}
    for k in ("accuracy", "macro_precision", "macro_recall", "macro_f1", "precision", "recall", "f1"):
        if isinstance(metrics.get(k), (int, float)):
            out[prefix + k] = float(metrics[k])
    for group in ("per_class", "per_type"):
        for lab, v in (metrics.get(group) or {}).items():
            out[f"{prefix}f1_{lab}"] = float(v["f1"])
    return out


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


def max_length_for(cfg, tok) -> int:
    """data.max_length, capped at the positions the model has (with a warning)."""
    limit = tok.model_max_length if tok.model_max_length and tok.model_max_length < 1_000_000 else None
    if limit is not None and cfg.data.max_length > limit:
        warn(f"data.max_length={cfg.data.max_length} exceeds the model's {limit} positions; using {limit}")
        return limit
    return cfg.data.max_length


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


def headline(task: str, m: dict) -> str:
    if task == "sequence_classification":
        return (f"accuracy {m['accuracy']:.4f} (majority class {m['majority_baseline']:.4f}), "
                f"macro F1 {m['macro_f1']:.4f}")
    e = m["entity"]
    return f"entity F1 {e['f1']:.4f} (P {e['precision']:.4f}, R {e['recall']:.4f}), tag accuracy {m['accuracy']:.4f}"


def summary_metrics(task: str, m: dict | None) -> dict | None:
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
    if not (run_dir / "labels.json").exists():
        raise DataError(f"{run_dir}: classification / NER evaluation needs a seektune run folder "
                        "(config.yaml, labels.json, final/)")
    cfg = load_config(run_dir / "config.yaml")
    task = cfg.model.task
    final = run_dir / "final"
    labels = json.loads((run_dir / "labels.json").read_text(encoding="utf-8"))
    rejects: list[dict] = []
    # the whole file is scored: no sample cap (the run's own held-out split was capped at training time)
    dcfg = cfg.data.model_copy(update={"train": data_file, "eval": data_file, "max_samples": None, "pipeline": [],
                                       "max_eval_samples": None})
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
    # the head's size and names: a LoRA run's adapter holds a trained head, but the base it is loaded
    # onto would otherwise get the default 2-label head and refuse the weights
    model = cls.from_pretrained(str(final), num_labels=len(labels), id2label=dict(enumerate(labels)),
                                label2id={lab: i for i, lab in enumerate(labels)}).eval()
    max_length = max_length_for(cfg, tok)
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
    log(f"{data_file}: " + headline(task, metrics) + f" ({len(data.eval)} items, rejected {len(rejects)}); "
        f"written to {out}")
    return {"task": task, "metrics": metrics, "out_dir": str(out)}
