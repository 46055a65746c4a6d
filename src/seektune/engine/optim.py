"""Optimizer parameter groups (layer-wise rates, no decay on norms/biases) and LR schedules.

Groups are named so that their rates can be logged: embeddings, layer.<i>, head, adapters, other,
each split into a decayed and a no-decay group. The schedule multiplies every group's own rate by
the same factor, and the floor `min_lr` scales with each group's rate (min_lr / lr of the base).

LoRA+ (adapter.loraplus_lr_ratio) splits the LoRA B matrices off the adapters into `adapters.lora_B`,
at the adapters' rate x the ratio. This stands in for peft's `create_loraplus_optimizer`, whose four
fixed groups would drop the layer-wise rates and put every 1-D parameter (biases, norms, DoRA
magnitudes) at the B rate.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

import torch
from torch.optim.lr_scheduler import LambdaLR

_EMB = ("embed_tokens", "word_embeddings", "position_embeddings", "token_type_embeddings", "wte", "wpe")
_HEAD = ("lm_head", "score", "classifier", "pooler", "v_head")
_ADAPTER = ("lora_", "prompt_encoder", "prefix_encoder", "modules_to_save")
_LAYER = re.compile(r"\.(?:layers|layer|h|blocks)\.(\d+)\.")
_LORA_B = (".lora_B.", ".lora_embedding_B.")


def no_decay(name: str, p: torch.nn.Parameter) -> bool:
    """Biases and normalisation weights (1-D) are not decayed; LoRA matrices are."""
    return p.ndim < 2 or name.endswith(".bias") or "norm" in name.lower()


def group_of(name: str) -> tuple[str, int | None]:
    """Which part of the model a parameter belongs to: adapters, layer i, embeddings, head or other."""
    if any(a in name for a in _ADAPTER):
        return "adapters", None
    m = _LAYER.search(name)
    if m:
        return "layer", int(m.group(1))
    parts = name.split(".")
    if "embeddings" in parts or any(p in _EMB for p in parts):
        return "embeddings", None
    if any(p in _HEAD for p in parts):
        return "head", None
    return "other", None


@dataclass
class GroupSpec:
    name: str
    lr: float
    weight_decay: float
    params: list


def build_param_groups(model: torch.nn.Module, lr: float, weight_decay: float, layerwise=None,
                       lora_b_ratio: float | None = None) -> list[dict]:
    """Param groups for AdamW. With `layerwise`, each part of the model gets its own rate; with `lora_b_ratio`
    (LoRA+), the LoRA B matrices learn at their adapters' rate x the ratio."""
    named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    n_layers = 1 + max([group_of(n)[1] or 0 for n, _ in named if group_of(n)[0] == "layer"], default=0)
    groups: dict[tuple[str, bool], GroupSpec] = {}
    for n, p in named:
        g, idx = group_of(n)
        rate = lr
        label = g
        if layerwise is not None:
            if g == "embeddings" and layerwise.embeddings:
                rate = layerwise.embeddings
            elif g == "head" and layerwise.head:
                rate = layerwise.head
            elif g == "adapters":
                rate = layerwise.adapters or layerwise.head or lr
            elif g == "layer":
                base = layerwise.body or lr
                rate = base * layerwise.depth_decay ** (n_layers - 1 - idx)
                label = f"layer.{idx}"
        if lora_b_ratio and g == "adapters" and any(b in n for b in _LORA_B):
            rate *= lora_b_ratio
            label = "adapters.lora_B"
        nd = no_decay(n, p)
        key = (label, nd)
        if key not in groups:
            groups[key] = GroupSpec(label + (".no_decay" if nd else ""), rate, 0.0 if nd else weight_decay, [])
        groups[key].params.append(p)
    return [{"params": g.params, "lr": g.lr, "weight_decay": g.weight_decay, "name": g.name} for g in groups.values()]


def lr_factor(step: int, total: int, warmup: int, kind: str, floor_ratio: float) -> float:
    """Multiplier of the base rate at `step` (0-based optimizer steps).

    warmup: linear from 1/warmup up to 1 over `warmup` steps; then
    cosine: floor + (1 - floor) * 0.5 * (1 + cos(pi * progress)); linear: 1 -> floor; constant: 1.
    """
    if warmup > 0 and step < warmup:
        return (step + 1) / warmup
    if kind == "constant":
        return 1.0
    span = max(1, total - warmup)
    progress = min(1.0, (step - warmup) / span)
    if kind == "cosine":
        return floor_ratio + (1 - floor_ratio) * 0.5 * (1 + math.cos(math.pi * progress))
    if kind == "linear":
        return floor_ratio + (1 - floor_ratio) * (1 - progress)
    raise ValueError(f"train.lr_scheduler: unknown schedule '{kind}'")


def make_scheduler(optimizer, total_steps: int, warmup: int, kind: str, base_lr: float, min_lr: float) -> LambdaLR:
    floor = min(1.0, min_lr / base_lr) if base_lr > 0 else 0.0
    return LambdaLR(optimizer, lambda s: lr_factor(s, total_steps, warmup, kind, floor))


def warmup_steps(train_cfg, total_steps: int) -> int:
    if train_cfg.warmup_steps:
        return train_cfg.warmup_steps
    return int(math.ceil(train_cfg.warmup_ratio * total_steps))
