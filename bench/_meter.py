"""Measurement shared by every setup of bench/sft_throughput.py, seektune and its peers alike.

It patches `transformers.Trainer.training_step` to count what each step really computes (non-pad
tokens, tokens with a label, per-sample lengths for the attention FLOPs) and times steps with a
callback. It must import under the peers' transformers 4.57 as well as seektune's 5.x, so it uses
only the Trainer's public callback API. Measurement only: nothing here changes a recipe.
"""

from __future__ import annotations

import json
import resource
import time

import torch
from transformers import Trainer, TrainerCallback

IGNORE = -100


class StepMeter(TrainerCallback):
    def __init__(self, pad_token_id: int | None, out_path: str, setup: str):
        self.pad = pad_token_id
        self.out_path = out_path
        self.setup = setup
        self.t_start = time.perf_counter()
        self.t_first = None
        self.t_last = None
        self.steps: list[dict] = []
        self.losses: dict[int, float] = {}
        self._cur = {"real": 0, "trained": 0, "slots": 0, "attn_sq": 0, "samples": 0}

    # -- counting -----------------------------------------------------------------------------
    def count(self, inputs: dict) -> None:
        ids = inputs["input_ids"]
        labels = inputs.get("labels")
        am = inputs.get("attention_mask")
        pos = inputs.get("position_ids")
        c = self._cur
        c["slots"] += ids.numel()
        for i in range(ids.shape[0]):
            if am is not None:
                real_mask = am[i] != 0
                k = int(real_mask.sum())
                if int(am[i].max()) > 1:  # LLaMA-Factory neat_packing: sample index per token
                    seg = torch.bincount(am[i][real_mask]).tolist()
                    seg = [s for s in seg if s]
                else:
                    seg = self._segments(pos[i][real_mask]) if pos is not None else [k]
            else:
                row = ids[i]
                k = int((row != self.pad).sum()) if self.pad is not None else row.numel()
                real_mask = torch.zeros_like(row, dtype=torch.bool)
                real_mask[:k] = True
                seg = self._segments(pos[i][:k]) if pos is not None else [k]
            c["real"] += k
            c["samples"] += len(seg)
            c["attn_sq"] += sum(s * (s + 1) for s in seg)
            if labels is not None:
                # predictions that carry a loss: label at t+1, at a real position
                c["trained"] += int(((labels[i, 1:] != IGNORE) & real_mask[1:]).sum())

    @staticmethod
    def _segments(pos: torch.Tensor) -> list[int]:
        starts = (pos == 0).nonzero().flatten().tolist()
        if not starts or starts[0] != 0:
            starts = [0] + starts
        ends = starts[1:] + [pos.numel()]
        return [e - s for s, e in zip(starts, ends) if e > s]

    # -- timing -------------------------------------------------------------------------------
    def on_step_begin(self, args, state, control, **kw):
        if self.t_last is None:
            self.t_last = time.perf_counter()
            self.t_first = self.t_last

    def on_step_end(self, args, state, control, **kw):
        now = time.perf_counter()
        self.steps.append({"step": state.global_step, "seconds": now - self.t_last, **self._cur})
        self._cur = {k: 0 for k in self._cur}
        self.t_last = now

    def on_log(self, args, state, control, logs=None, **kw):
        if logs and "loss" in logs:
            self.losses[state.global_step] = float(logs["loss"])

    def on_train_end(self, args, state, control, **kw):
        self.write()

    def write(self, extra: dict | None = None) -> None:
        res = {"setup": self.setup, "steps": self.steps, "losses": self.losses,
               "startup_seconds": (self.t_first - self.t_start) if self.t_first else None,
               "peak_rss_gb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024 ** 2,
               "threads": torch.get_num_threads(), **(extra or {})}
        with open(self.out_path, "w") as f:
            json.dump(res, f, indent=1)


def install(meter: StepMeter) -> None:
    """Count every training micro-batch, whichever Trainer subclass runs it."""
    orig = Trainer.training_step

    def training_step(self, model, inputs, *a, **kw):
        meter.count(inputs)
        return orig(self, model, inputs, *a, **kw)

    Trainer.training_step = training_step
