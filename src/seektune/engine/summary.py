"""One summary.json shape for every stage, and the result object a recipe returns.

    stage, status, model, model_path, adapter, trainable_params, total_params, adapted_kinds,
    data           the accounting of every record (read = train + eval + rejected ...)
    steps, train_loss, train_seconds, total_seconds, threads, world_size, resumed_from
    evidence       [{name, before, after, better, n}]: what shows the stage worked (eval loss,
                   held-out pair accuracy, reward ...), measured the same way before and after
    curves         [{title, keys}]: which metrics.jsonl series the report plots for this stage
    final          the final/ folder
    warnings       what the monitors warned about
    details        anything else the stage measured (its own keys)

The report reads this file and metrics.jsonl only, so it has no per-stage code.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

from ..utils.console import console
from ..utils.dist import world_size


@dataclass
class StageResult:
    """What a recipe returns: the JSON-able summary plus the live objects (never inside the summary)."""

    summary: dict
    model: Any = None
    tokenizer: Any = None
    trainer: Any = None
    extra: dict = field(default_factory=dict)


def evidence(name: str, before, after, better: str = "higher", n: int | None = None, key: str | None = None) -> dict:
    return {"name": name, "key": key or name, "before": before, "after": after, "better": better, "n": n}


def make_summary(stage: str, cfg, *, adapter_report=None, model_path: str | None = None, data: dict | None = None,
                 steps: int = 0, train_loss: float | None = None, train_seconds: float = 0.0, threads: int | None = None,
                 final: str | None = None, evidence_rows: list[dict] | None = None, curves: list[dict] | None = None,
                 warnings: list[str] | None = None, resumed_from: str | None = None, **details) -> dict:
    rep = adapter_report
    return {
        "stage": stage, "status": "done", "model": cfg.model.name_or_path, "model_path": model_path,
        "adapter": rep.method if rep else cfg.adapter.method,
        "trainable_params": rep.trainable if rep else None, "total_params": rep.total if rep else None,
        "adapted_kinds": rep.kinds if rep else None,
        "data": data or {}, "steps": steps, "train_loss": train_loss, "train_seconds": round(train_seconds, 2),
        "total_seconds": None, "threads": threads, "world_size": world_size(), "resumed_from": resumed_from,
        "evidence": evidence_rows or [], "curves": curves or [], "final": final, "warnings": (warnings or [])[-50:],
        "details": details,
    }


def evidence_value(summary: dict, key: str, phase: str = "after"):
    """The before/after value of one evidence row (None when the stage did not measure it)."""
    for row in summary.get("evidence", []):
        if row.get("key") == key or row.get("name") == key:
            return row.get(phase)
    return None


def finish(summary: dict, t0: float) -> dict:
    summary["total_seconds"] = round(time.time() - t0, 2)
    return summary


def _fmt(v) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:.4f}"
    return str(v)


def print_summary(s: dict) -> None:
    """One screen at the end: where the model is, what moved, how long it took."""
    from rich.panel import Panel

    d = s.get("details", {})
    lines = [f"final model    {s['final']}",
             f"steps          {s['steps']} in {s['train_seconds']:.0f}s (total {s.get('total_seconds') or 0:.0f}s)"]
    if d.get("real_tokens_per_s") is not None:
        lines.append(f"throughput     {d['real_tokens_per_s']} real tokens/s, padding "
                     f"{100 * d.get('padding_share', 0):.1f}%, {s['threads']} threads")
    if s.get("data", {}).get("accounting"):
        lines.append(f"data           {s['data']['accounting']}")
    for row in s.get("evidence", []):
        n = f" ({row['n']} held out)" if row.get("n") else ""
        lines.append(f"{row['name']:<14} {_fmt(row['before'])} -> {_fmt(row['after'])}{n}")
    if d.get("best_metric"):
        b = d["best_metric"]
        lines.append(f"best           {b['name']} = {b['value']} at {b['checkpoint']}"
                     + (" (stopped early)" if d.get("stopped_early") else ""))
    if d.get("nonfinite_skipped"):
        lines.append(f"skipped steps  {d['nonfinite_skipped']} with NaN/inf loss")
    if s.get("warnings"):
        lines.append(f"warnings       {len(s['warnings'])} (see summary.json)")
    console.print(Panel("\n".join(lines), title=f"seektune train ({s['stage']}): done", expand=False))
