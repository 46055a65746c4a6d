"""Trainer callbacks: metrics.jsonl + TensorBoard logging and a rich progress bar, and the standard set."""

from __future__ import annotations

import json
import math
import time
from pathlib import Path

from transformers import TrainerCallback

_RENAME = {"learning_rate": "lr"}


class MetricsWriter:
    """Appends one record per step to metrics.jsonl and the same scalars to TensorBoard (main process only).

    Used by MetricsLogger (HF-Trainer stages) and by stages with their own loop (ppo)."""

    def __init__(self, run_dir: Path):
        self.path = Path(run_dir) / "metrics.jsonl"
        self.tb_dir = Path(run_dir) / "tensorboard"
        self.writer = None

    def open(self) -> "MetricsWriter":
        from torch.utils.tensorboard import SummaryWriter

        self.writer = SummaryWriter(str(self.tb_dir))
        return self

    def write(self, rec: dict, prefix: str | None = None) -> None:
        with open(self.path, "a", encoding="utf-8") as f:
            f.write(json.dumps(rec) + "\n")
        if self.writer is not None:
            for k, v in rec.items():
                if k != "step" and isinstance(v, (int, float)) and math.isfinite(v):  # lists stay in jsonl
                    tag = ("eval/" + k[5:]) if k.startswith("eval_") else (f"{prefix or 'train'}/" + k)
                    self.writer.add_scalar(tag, v, rec.get("step", 0))
            self.writer.flush()

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
            self.writer = None


class MetricsLogger(TrainerCallback):
    """One JSON object per logged step in metrics.jsonl; the same scalars in TensorBoard.

    Keys: step, loss, lr, grad_norm, epoch, plus tokens/s from the trainer's counters; eval records
    carry eval_* keys. Only the main process writes.
    """

    def __init__(self, run_dir: Path, token_counter=None):
        self.out = MetricsWriter(run_dir)
        self.counter = token_counter
        self._last = None

    def on_train_begin(self, args, state, control, **kw):
        if not state.is_world_process_zero:
            return
        self.out.open()
        self._last = (time.time(), self.counter.real if self.counter else 0)

    def on_log(self, args, state, control, logs=None, **kw):
        if not state.is_world_process_zero or not logs:
            return
        rec = {"step": state.global_step}
        for k, v in logs.items():
            if isinstance(v, (int, float)) or (isinstance(v, list) and all(isinstance(x, (int, float)) for x in v)):
                rec[_RENAME.get(k, k)] = v
        if "loss" in rec and self.counter is not None and self._last is not None and self.counter.padded:
            now, real = time.time(), self.counter.real
            dt = max(1e-9, now - self._last[0])
            rec["tokens_per_s"] = round((real - self._last[1]) / dt, 2)
            rec["real_tokens"] = real
            rec["padding_share"] = round(self.counter.padding_share, 4)
            self._last = (now, real)
        if self.out.writer is None:  # a log before training began (an evaluation before train())
            with open(self.out.path, "a", encoding="utf-8") as f:
                f.write(json.dumps(rec) + "\n")
            return
        self.out.write(rec)

    def on_train_end(self, args, state, control, **kw):
        self.out.close()


class RichProgress(TrainerCallback):
    """Progress bar with ETA, loss, lr and real tokens/s."""

    def __init__(self, token_counter=None, enabled: bool = True):
        self.counter = token_counter
        self.enabled = enabled
        self.progress = None
        self.task = None
        self.loss = float("nan")
        self.lr = 0.0
        self.t0 = None

    def on_train_begin(self, args, state, control, **kw):
        if not (self.enabled and state.is_world_process_zero):
            return
        from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

        self.progress = Progress(TextColumn("[bold]train"), BarColumn(), TextColumn("{task.completed}/{task.total}"),
                                 TimeElapsedColumn(), TextColumn("eta"), TimeRemainingColumn(),
                                 TextColumn("{task.fields[info]}"), transient=False)
        self.progress.start()
        self.task = self.progress.add_task("train", total=state.max_steps, completed=state.global_step, info="")
        self.t0 = (time.time(), self.counter.real if self.counter else 0)

    def on_step_end(self, args, state, control, **kw):
        if self.progress is None:
            return
        tps = ""
        if self.counter is not None:
            dt = max(1e-9, time.time() - self.t0[0])
            tps = f" tok/s {(self.counter.real - self.t0[1]) / dt:,.0f}"
        self.progress.update(self.task, completed=state.global_step,
                             info=f"loss {self.loss:.4f} lr {self.lr:.2e}{tps}")

    def on_log(self, args, state, control, logs=None, **kw):
        if logs:
            self.loss = logs.get("loss", self.loss)
            self.lr = logs.get("learning_rate", self.lr)

    def on_train_end(self, args, state, control, **kw):
        if self.progress is not None:
            self.progress.stop()
            self.progress = None


def standard_callbacks(cfg, run_dir: Path, health, counter, model, progress: bool) -> list:
    """The callbacks every HF-Trainer stage runs: the monitor first (its numbers join the same log
    record), then metrics.jsonl/TensorBoard, then the progress bar. Call `attach(trainer, cbs)` after."""
    from .monitors import TrainingMonitor

    return [TrainingMonitor(cfg.monitor, health, model), MetricsLogger(run_dir, counter),
            RichProgress(counter, enabled=progress)]


def attach(trainer, callbacks: list) -> None:
    """Give the monitor its trainer (transformers 5 passes no optimizer to callbacks) and drop HF's printer."""
    from transformers import PrinterCallback

    from .monitors import TrainingMonitor

    trainer.remove_callback(PrinterCallback)
    for cb in trainer.callback_handler.callbacks:
        if isinstance(cb, TrainingMonitor):
            cb.trainer = trainer
