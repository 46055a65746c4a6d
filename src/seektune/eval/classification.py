"""Metrics for classification tasks: label-level (accuracy, macro and per-class P/R/F1, confusion
matrix) via scikit-learn, and entity-level F1 per type via seqeval (conlleval rules).

Importable on their own: `seektune eval` and the training recipe both call these.
"""

from __future__ import annotations

from pathlib import Path


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


def run_eval(target: str, data: str) -> dict:
    """`seektune eval RUN --data FILE` for sequence/token-classification runs (see train.classify)."""
    from pathlib import Path

    from ..data.io import DataError
    from ..train.classify import evaluate_run

    if not (Path(target) / "labels.json").exists():
        raise DataError(f"{target}: classification / NER evaluation needs a seektune run folder "
                        "(config.yaml, labels.json, final/)")
    return evaluate_run(target, data)
