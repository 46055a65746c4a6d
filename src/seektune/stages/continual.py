"""`seektune continue PREVIOUS_RUN --data NEW`: take new data into an existing fine-tune without
retraining from scratch, and check what it cost on the old data.

The continued run starts from the previous run's weights (its adapter, or its full model), with
its config; replays a sample of the previous training data (replay_buffer.jsonl, kept in every
run folder); optionally adds EWC anchored at the previous weights; and evaluates on the previous
run's eval set as well as the new one. drift.md / drift.json hold the table, with an alarm when an
old metric got worse by more than the threshold.
"""

from __future__ import annotations

import json
from pathlib import Path

from ..config import ConfigError, EWCConfig, ReplayConfig, load_config
from ..engine.summary import evidence_value
from ..utils.console import console, log, warn
from . import run_stage


def _eval_loss_on(trainer, rows: list[dict]) -> float | None:
    if not rows:
        return None
    return trainer.evaluate(eval_dataset=rows, metric_key_prefix="old")["old_loss"]


def continue_run(previous: Path, new_data: str, out: Path | None = None, eval_data: str | None = None,
                 replay_ratio: float = 0.2, ewc_lambda: float | None = None, threshold: float = 0.05,
                 overrides: list[str] | None = None, show_progress: bool = True, overwrite: bool = False):
    previous = Path(previous)
    if not (previous / "config.yaml").exists() or not (previous / "final").exists():
        raise ConfigError(f"{previous}: not a finished seektune run (needs config.yaml and final/)")
    cfg = load_config(previous / "config.yaml", overrides or [])
    prev_summary = json.loads((previous / "summary.json").read_text()) if (previous / "summary.json").exists() else {}
    out = Path(out or f"{previous}-continued")
    cfg.train.output_dir = str(out)
    cfg.train.resume = False
    cfg.data.train = new_data
    cfg.data.eval = eval_data
    cfg.data.pipeline = []
    init_adapter = None
    if cfg.adapter.method in ("lora", "prefix"):
        init_adapter = str(previous / "final")
    else:
        cfg.model.name_or_path = str(previous / "final")
    buffer = previous / "replay_buffer.jsonl"
    if replay_ratio > 0 and buffer.exists():
        cfg.train.replay = ReplayConfig(file=str(buffer), ratio=replay_ratio)
    if ewc_lambda:
        # the model starts at the previous weights, so the Fisher anchor is the previous run
        cfg.train.ewc = EWCConfig(data=str(buffer) if buffer.exists() else None, lam=ewc_lambda)
    log(f"continuing {previous} on {new_data} -> {out} (replay {replay_ratio if cfg.train.replay else 0}, "
        f"ewc {ewc_lambda or 'off'})")
    if cfg.train.stage != "sft":
        raise ConfigError(f"seektune continue: {previous} is a {cfg.train.stage} run; continual fine-tuning "
                          "continues sft runs")
    result = run_stage(cfg, overwrite=overwrite, progress=show_progress, init_adapter=init_adapter)
    summary, trainer = result.summary, result.trainer
    old_rows = json.loads((previous / "eval_tokens.json").read_text()) if (previous / "eval_tokens.json").exists() else []
    old_before = evidence_value(prev_summary, "eval_loss", "after")
    old_after = _eval_loss_on(trainer, old_rows)
    rows = [{"eval set": f"previous ({previous.name})", "metric": "eval loss", "before": old_before, "after": old_after},
            {"eval set": "new data", "metric": "eval loss", "before": evidence_value(summary, "eval_loss", "before"),
             "after": evidence_value(summary, "eval_loss", "after")}]
    alarms = []
    for r in rows:
        b, a = r["before"], r["after"]
        r["change"] = None if (b is None or a is None) else (a - b) / b
        if r["eval set"].startswith("previous") and r["change"] is not None and r["change"] > threshold:
            alarms.append(f"{r['eval set']}: eval loss rose {100 * r['change']:.1f}% ({b:.4f} -> {a:.4f}), "
                          f"more than the {100 * threshold:.0f}% threshold: the old domain is being forgotten "
                          "(raise the replay ratio or add --ewc-lambda)")
    drift = {"previous": str(previous), "new_data": new_data, "threshold": threshold, "rows": rows, "alarms": alarms}
    (out / "drift.json").write_text(json.dumps(drift, indent=2))
    md = ["# Drift after continual fine-tuning", "", f"previous run: `{previous}`; new data: `{new_data}`", "",
          "| eval set | metric | before | after | change |", "|---|---|---|---|---|"]
    for r in rows:
        f = lambda v: "n/a" if v is None else f"{v:.4f}"  # noqa: E731
        ch = "n/a" if r["change"] is None else f"{100 * r['change']:+.1f}%"
        md.append(f"| {r['eval set']} | {r['metric']} | {f(r['before'])} | {f(r['after'])} | {ch} |")
    md += ["", *(f"**ALARM**: {a}" for a in alarms)] if alarms else ["", "no alarm: old-domain loss within threshold"]
    (out / "drift.md").write_text("\n".join(md) + "\n")
    for a in alarms:
        warn(a)
    console.print("\n".join(md[4:]))
    summary["details"]["drift"] = drift
    (out / "summary.json").write_text(json.dumps(summary, indent=2, ensure_ascii=False, default=str))
    return result
