"""Training monitors: warnings a person can act on, logged to metrics.jsonl and TensorBoard too.

Gradient norm outside a band, skipped NaN/inf steps, memory use near the machine's limit,
per-group learning rates, MoE expert load balance, and eval loss rising while train loss falls.
The monitor adds its numbers to the trainer's log dict before MetricsLogger writes it.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import psutil
import torch
from transformers import TrainerCallback

from ..utils.console import warn


@dataclass
class Health:
    """Counters shared by the trainer (which sees every step) and the monitor (which reports)."""

    nonfinite_total: int = 0
    nonfinite_streak: int = 0
    grad_out_of_band: int = 0
    warnings: list[str] = field(default_factory=list)

    def warn(self, msg: str) -> None:
        self.warnings.append(msg)
        warn(msg)


class ExpertLoadTracker:
    """Counts tokens routed to each expert through forward hooks on MoE routers."""

    def __init__(self, model: torch.nn.Module):
        self.counts: dict[str, torch.Tensor] = {}
        self.handles = []
        for name, mod in model.named_modules():
            if type(mod).__name__.endswith("TopkRouter") or (name.endswith("mlp.gate") and hasattr(mod, "top_k")):
                n_exp = getattr(mod, "num_experts", None) or getattr(mod, "n_routed_experts", None)
                if n_exp:
                    self.handles.append(mod.register_forward_hook(self._hook(name, int(n_exp))))

    def _hook(self, name, n_exp):
        def fn(mod, args, out):
            idx = next((o for o in (out if isinstance(out, tuple) else (out,))
                        if torch.is_tensor(o) and not o.is_floating_point()), None)
            if idx is not None:
                c = torch.bincount(idx.reshape(-1).cpu(), minlength=n_exp)
                self.counts[name] = self.counts.get(name, torch.zeros(n_exp, dtype=torch.long)) + c
        return fn

    @property
    def active(self) -> bool:
        return bool(self.handles)

    def pop(self) -> dict[str, list[int]]:
        out = {k: v.tolist() for k, v in self.counts.items()}
        self.counts = {}
        return out

    def remove(self):
        for h in self.handles:
            h.remove()


class TrainingMonitor(TrainerCallback):
    def __init__(self, cfg, health: Health, model=None):
        self.cfg = cfg  # MonitorConfig
        self.health = health
        self.moe = ExpertLoadTracker(model) if (model is not None and cfg.moe_balance) else None
        if self.moe is not None and not self.moe.active:
            self.moe = None
        self.total_mem = psutil.virtual_memory().total
        self.proc = psutil.Process()
        self.last_train_loss = None
        self.evals: list[tuple[float, float | None, float]] = []  # (eval_loss, train_loss, epoch)
        self.overfit_warned = False

    def on_log(self, args, state, control, logs=None, **kw):
        if logs is None:
            return
        band = self.cfg.grad_norm_band
        g = logs.get("grad_norm")
        # a GRPO step whose prompt groups all scored alike has no advantage, so its gradient is 0 by
        # construction: the rollout monitor reports that (no learning signal), not this band
        no_signal = logs.get("frac_reward_zero_std") == 1.0
        if band and isinstance(g, (int, float)) and g == g and not no_signal:
            lo, hi = band
            if g < lo or g > hi:
                self.health.grad_out_of_band += 1
                what = "exploding: lower train.lr or keep train.max_grad_norm clipping" if g > hi else \
                    "vanishing: raise train.lr, check that labels are not all masked"
                self.health.warn(f"step {state.global_step}: gradient norm {g:.3g} outside [{lo}, {hi}] ({what})")
        if "loss" in logs:
            self.last_train_loss = logs["loss"]
            logs["nonfinite_skipped"] = self.health.nonfinite_total
            logs["grad_out_of_band"] = self.health.grad_out_of_band
            self._memory(logs, state)
            # transformers 5 does not pass the optimizer to callbacks; run_sft sets self.trainer
            trainer = getattr(self, "trainer", None)
            for name, lr in getattr(trainer, "group_lrs", {}).items():
                logs[f"lr/{name}"] = lr
            if getattr(trainer, "ewc", None) is not None:
                logs["ewc_penalty"] = trainer.ewc.last
            if getattr(trainer, "last_adv_loss", None) is not None:
                logs["adv_loss"] = trainer.last_adv_loss
            if self.moe is not None:
                self._moe(logs, state)

    def _memory(self, logs, state):
        rss = self.proc.memory_info().rss
        logs["mem_rss_gb"] = round(rss / 2**30, 3)
        share = rss / self.total_mem
        if torch.cuda.is_available():
            alloc, reserved = torch.cuda.memory_allocated(), torch.cuda.memory_reserved()
            total = torch.cuda.get_device_properties(0).total_memory
            logs["gpu_allocated_gb"] = round(alloc / 2**30, 3)
            logs["gpu_reserved_gb"] = round(reserved / 2**30, 3)
            share = max(share, reserved / total)
        if share > self.cfg.memory_share:
            self.health.warn(f"step {state.global_step}: memory use at {100 * share:.0f}% of the machine "
                             f"(limit {100 * self.cfg.memory_share:.0f}%): lower train.batch_size or data.max_length, "
                             "or set train.gradient_checkpointing: true")

    def _moe(self, logs, state):
        counts = self.moe.pop()
        worst = 0.0
        for name, c in counts.items():
            tot = sum(c)
            if tot:
                share = max(c) / tot
                if share > worst:
                    worst = share
        if counts:
            first = next(iter(counts.values()))
            logs["moe_tokens_per_expert"] = first  # first MoE layer; all layers in moe_max_share
            logs["moe_max_share"] = round(worst, 4)
            if worst > self.cfg.moe_max_share:
                self.health.warn(f"step {state.global_step}: one expert takes {100 * worst:.0f}% of routed tokens "
                                 f"(> {100 * self.cfg.moe_max_share:.0f}%): the router is collapsing; keep the router "
                                 "frozen (adapter.train_router: false) or lower train.lr")

    def on_evaluate(self, args, state, control, metrics=None, **kw):
        if not metrics or "eval_loss" not in metrics:
            return
        self.evals.append((metrics["eval_loss"], self.last_train_loss, state.epoch or 0.0))
        k = self.cfg.overfit_patience
        if len(self.evals) > k and not self.overfit_warned:
            window = self.evals[-(k + 1):]
            eval_up = all(b[0] > a[0] for a, b in zip(window, window[1:]))
            train_losses = [w[1] for w in window if w[1] is not None]
            train_down = len(train_losses) == len(window) and train_losses[-1] < train_losses[0]
            if eval_up and train_down:
                self.overfit_warned = True
                start = window[0][2]
                metrics["overfit_warning"] = 1.0
                self.health.warn(f"overfitting: eval loss rose for {k} evaluations in a row (from "
                                 f"{window[0][0]:.4f} to {window[-1][0]:.4f}) while train loss fell; it started "
                                 f"around epoch {start:.2f}. Use train.early_stopping, more data, or fewer epochs.")

    def on_train_end(self, args, state, control, **kw):
        if self.moe is not None:
            self.moe.remove()
