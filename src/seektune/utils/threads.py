"""CPU thread count: the free cores, split between the processes of this node."""

from __future__ import annotations

import os

from .dist import local_world_size


def configure_threads(n: int | None) -> int:
    """Default: the free cores split between the processes of this node (oversubscription is ~8x slower)."""
    import torch

    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    n = n or max(1, cores // local_world_size())
    torch.set_num_threads(n)
    return n
