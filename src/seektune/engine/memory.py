"""Host memory: give freed activations back to the OS, and checkpoint just enough layers.

Two measured facts (docs/benchmarks.md, "Issue 11") drive this module:

- glibc raises its mmap threshold after large frees (up to 32 MB), so later activation tensors
  are carved from the heap and stay resident after they are freed: one SmolLM2 step of 8 x 512
  tokens peaked at 11.2 GB RSS for 6.9 GB of real tensors. Fixing the threshold keeps large
  tensors on mmap, returned at free time; each new mapping then costs page faults, so the
  threshold is 4 MB (activation-sized buffers only), not glibc's 128 KB start value.
- Activation checkpointing is all-or-nothing in most toolkits (LLaMA-Factory turns it on for
  every layer: -75% memory, ~+30% compute). `auto` measures the bytes a forward pass saves per
  token, and checkpoints every n-th layer only when the batch would exceed a budget.
"""

from __future__ import annotations

import ctypes
import math
import os
import sys

import torch

from .losses import accepts_logits_to_keep

M_MMAP_THRESHOLD = -3
# Measured on SmolLM2, 8 x 512 tokens (docs/benchmarks.md, "Issue 11"): a 128 KB threshold cut peak
# RSS from 10.0 to 5.9 GB but page faults cost +56% step time; 4 MB: 6.6 GB at +22%; 16 MB: no gain.
DEFAULT_MMAP_THRESHOLD_KB = 4096
_TUNED = False


def return_freed_memory(threshold_bytes: int | None = None) -> bool:
    """Fix glibc's mmap threshold so tensors above it are unmapped when freed. No-op off glibc.
    SEEKTUNE_MMAP_THRESHOLD_KB overrides the threshold (for bench/sft_throughput.py's levers)."""
    global _TUNED
    if _TUNED:
        return True
    if not sys.platform.startswith("linux"):
        return False
    if threshold_bytes is None:
        threshold_bytes = int(os.environ.get("SEEKTUNE_MMAP_THRESHOLD_KB", str(DEFAULT_MMAP_THRESHOLD_KB))) * 1024
    try:
        libc = ctypes.CDLL("libc.so.6")
        _TUNED = bool(libc.mallopt(M_MMAP_THRESHOLD, int(threshold_bytes)))
    except (OSError, AttributeError):
        return False
    return _TUNED


def apply_host_policy(return_freed="auto") -> str:
    """Set this process's host-memory policy for training and say what it is (for the run log).
    jemalloc/tcmalloc were configured when the process started (engine/allocator.py); glibc gets the
    mmap threshold here when `train.return_freed_memory` (auto: yes on glibc) asks for it."""
    from .allocator import active, returns_freed

    name = active()
    give_back = returns_freed(return_freed, name)
    if name != "glibc":
        return f"{name} ({'freed pages returned after 10 s idle' if give_back else 'freed pages kept for reuse'})"
    if give_back and not torch.cuda.is_available() and return_freed_memory():
        return (f"glibc, mmap threshold {DEFAULT_MMAP_THRESHOLD_KB // 1024} MB (apt-get install "
                f"libtcmalloc-minimal4: ~1.5x faster CPU steps at less memory)")
    return "glibc"


def saved_bytes_per_token(model, vocab_probe_tokens: int = 128) -> float:
    """Bytes autograd keeps for backward per token of a training forward (parameters excluded),
    measured on a short random sequence; the LM head is left out (the fused loss never keeps it)."""
    params = {p.untyped_storage().data_ptr() for p in model.parameters()}
    seen: set[int] = set()
    total = 0

    def pack(t):
        nonlocal total
        try:
            ptr = t.untyped_storage().data_ptr()
        except (RuntimeError, NotImplementedError):
            return t
        if ptr not in params and ptr not in seen:
            seen.add(ptr)
            total += t.untyped_storage().nbytes()
        return t

    was_training = model.training
    model.train()
    emb = model.get_input_embeddings()
    with torch.random.fork_rng(devices=[]):  # the probe must not shift the run's random stream
        ids = torch.randint(0, emb.num_embeddings, (1, vocab_probe_tokens), device=emb.weight.device)
        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            kw = {"logits_to_keep": 1} if accepts_logits_to_keep(model) else {}
            out = model(input_ids=ids, **kw)
    del out
    model.train(was_training)
    return total / vocab_probe_tokens


def default_budget_bytes() -> float:
    """A seventh of the machine's RAM on CPU, a third of the device's memory on GPU. (On the 24 GB
    benchmark machine 1/7 checkpoints a third of SmolLM2's layers at 8 x 512 tokens: peak RSS 6.03
    GB, below LLaMA-Factory's 6.58 GB with all of its layers checkpointed.)"""
    if torch.cuda.is_available():
        return torch.cuda.get_device_properties(0).total_memory / 3
    import psutil

    return psutil.virtual_memory().total / 7


def plan_checkpointing(setting, model, tokens_per_batch: int, budget_gb: float | None):
    """-> (every_n_layers or None for off, a line for the log)."""
    if setting is True:
        return 1, "activation checkpointing: every layer (train.gradient_checkpointing: true)"
    if setting is False:
        return None, None
    if not getattr(model, "supports_gradient_checkpointing", False) and not hasattr(model, "get_base_model"):
        return None, None
    per_token = saved_bytes_per_token(model)
    need = per_token * tokens_per_batch
    budget = budget_gb * 2**30 if budget_gb else default_budget_bytes()
    if need <= budget:
        return None, (f"activation checkpointing: off (auto): ~{need / 2**30:.1f} GB of activations for "
                      f"{tokens_per_batch:,} tokens fit the budget of {budget / 2**30:.1f} GB")
    # a checkpointed layer keeps only its input; the rest of what it saves is the memory freed
    fraction = min(1.0, (need - budget) / (need * 0.9))
    every_n = max(1, math.floor(1 / fraction))
    return every_n, (f"activation checkpointing: every {every_n} layer(s) (auto): ~{need / 2**30:.1f} GB of "
                     f"activations for {tokens_per_batch:,} tokens exceed the budget of {budget / 2**30:.1f} GB "
                     "(train.activation_budget_gb); about "
                     f"+{round(33 / every_n)}% compute")
