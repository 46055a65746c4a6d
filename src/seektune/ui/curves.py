"""Figures of metrics.jsonl series: one run's live curves, and several runs on one plot.

The report (eval/report.py) draws its plots once a run ends; these are redrawn every few seconds from
the same rows while it runs, so they stay small and plain.
"""

from __future__ import annotations

from ..eval.report import _series  # the report's own reading of a series (finite values by step)

GROUPS = [("loss", ("loss", "eval_loss")), ("learning rate", ("lr",)), ("grad norm", ("grad_norm",))]


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def panels_for(rows: list[dict], extra: list[str] | None = None) -> list[tuple[str, list[str]]]:
    """(title, keys) per panel: loss, lr, grad norm, then eval metrics and rewards, then `extra` keys."""
    present = {k for r in rows for k in r}
    panels = [(t, [k for k in ks if k in present]) for t, ks in GROUPS]
    evals = sorted(k for k in present if k.startswith("eval_") and k != "eval_loss" and not
                   any(s in k for s in ("runtime", "per_second", "preparation")))
    rewards = sorted(k for k in present if "reward" in k and not k.endswith("_std"))
    panels += [("eval metrics", evals), ("rewards", rewards)]
    panels += [(k, [k]) for k in (extra or []) if k in present]
    return [(t, ks) for t, ks in panels if ks and any(_series(rows, k)[0] for k in ks)]


def run_figure(rows: list[dict], title: str = "", extra: list[str] | None = None):
    """One run's curves, one small panel per group; None while metrics.jsonl has no step yet."""
    panels = panels_for(rows, extra)
    if not panels:
        return None
    plt = _plt()
    cols = min(3, len(panels))
    nrows = -(-len(panels) // cols)
    fig, axes = plt.subplots(nrows, cols, figsize=(4.2 * cols, 2.8 * nrows), squeeze=False)
    for ax, (name, keys) in zip(axes.flat, panels):
        for k in keys:
            xs, ys = _series(rows, k)
            if xs:
                ax.plot(xs, ys, "o-", ms=3, label=k)
        ax.set_title(name, fontsize=10)
        ax.set_xlabel("step", fontsize=8)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    for ax in list(axes.flat)[len(panels):]:
        ax.axis("off")
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return fig


def compare_figure(runs: dict[str, list[dict]], key: str):
    """`key` of several runs on one plot (a run without that series is named in the legend as missing)."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(7, 3.6))
    for name, rows in runs.items():
        xs, ys = _series(rows, key)
        if xs:
            ax.plot(xs, ys, "o-", ms=3, label=name)
        else:
            ax.plot([], [], label=f"{name} (no {key})")
    ax.set_xlabel("step")
    ax.set_ylabel(key)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    ax.set_title(f"{key}: {len(runs)} runs")
    fig.tight_layout()
    return fig
