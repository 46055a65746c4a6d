"""Batch surgery on transformers' KV caches, for decoding loops whose batch changes as they go (GRPO's group
rollouts, the server's continuous batching): left-padded prefill inputs, whether rows can be dropped
mid-decode, and dropping rows together with the KV columns no remaining row attends to."""

from __future__ import annotations

import torch


def left_padded(prompts: list[list[int]], pad_id: int, device) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(input_ids, attention_mask, position_ids) of the prompts left-padded to one width: every prompt's last
    token is in the last column, so one decode step appends to every row at once."""
    width = max(len(p) for p in prompts)
    ids = torch.full((len(prompts), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(prompts), width), dtype=torch.long)
    for i, p in enumerate(prompts):
        ids[i, width - len(p):] = torch.tensor(p, dtype=torch.long)
        mask[i, width - len(p):] = 1
    ids, mask = ids.to(device), mask.to(device)
    return ids, mask, (mask.cumsum(-1) - 1).clamp(min=0)


def rows_droppable(cache) -> bool:
    """Whether rows (and leading columns) can be cut from this cache: transformers' DynamicCache of full
    layers. Sliding-window and static layers keep their own positions and cannot."""
    layers = getattr(cache, "layers", None)
    return bool(layers) and all(type(la).__name__ == "DynamicLayer" for la in layers)


def keep_rows(cache, mask: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
    """Keep the batch rows `idx` of `cache` (in place) and of the attention mask, then drop the leading KV
    columns that are padding for every remaining row (only where rows_droppable). Returns the new mask."""
    cache.batch_select_indices(idx)
    mask = mask[idx]
    if not rows_droppable(cache):
        return mask
    used = mask.any(dim=0).nonzero()
    k = int(used[0]) if len(used) else 0
    if k > 0:
        for la in cache.layers:
            la.keys, la.values = la.keys[:, :, k:, :], la.values[:, :, k:, :]
        mask = mask[:, k:]
    return mask
