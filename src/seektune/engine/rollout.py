"""Group rollouts for GRPO: every prompt's `num_generations` completions sampled from one shared prefill,
with finished completions leaving the batch at once.

trl's transformers path hands `model.generate` the prompt repeated once per completion: every copy is
prefilled again, and every row stays in the batch (decoding pad tokens) until the longest completion of
the whole batch ends. Here each distinct prompt is prefilled once, its KV cache is repeated for its
group, and a completion that has produced EOS or reached `max_new_tokens` is dropped from the cache
before the next decode step (KV columns no remaining row needs are dropped too). Sampling is the one
transformers applies for trl's generation config (temperature, then top-k, then top-p, then a
draw from torch's global RNG, which trl's checkpoints save and restore), so the completions
follow the same distribution; greedy decoding gives exactly `generate`'s tokens (tests/test_rollout.py).
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass

import torch

from ..models.kv_batch import keep_rows, left_padded, rows_droppable


class UnsupportedCache(TypeError):
    """The model's KV cache cannot drop rows (sliding-window or static layers): decode with generate."""


@dataclass(frozen=True)
class Sampling:
    """What a rollout samples with; `do_sample=False` is greedy (for tests and held-out decoding)."""

    max_new_tokens: int
    temperature: float = 1.0
    top_k: int = 0
    top_p: float = 1.0
    do_sample: bool = True


@dataclass
class RolloutStats:
    """Work done: decode steps, row-steps (sum of batch sizes over the steps) and prefilled prompt tokens."""

    prompts: int = 0
    completions: int = 0
    prefill_tokens: int = 0
    steps: int = 0
    row_steps: int = 0


def warp(logits: torch.Tensor, s: Sampling) -> torch.Tensor:
    """transformers' sampling warpers in its order: temperature, top-k, top-p (at least one token kept)."""
    scores = logits.float()
    if s.temperature != 1.0:
        scores = scores / s.temperature
    if s.top_k and s.top_k < scores.shape[-1]:
        kth = torch.topk(scores, s.top_k, dim=-1).values[..., -1:]
        scores = scores.masked_fill(scores < kth, float("-inf"))
    if s.top_p < 1.0:
        sorted_scores, order = torch.sort(scores, descending=False, dim=-1)
        cum = sorted_scores.softmax(-1).cumsum(-1)
        remove = cum <= (1 - s.top_p)
        remove[..., -1:] = False
        scores = scores.masked_fill(remove.scatter(-1, order, remove), float("-inf"))
    return scores


def _pick(logits: torch.Tensor, s: Sampling) -> torch.Tensor:
    """One token per row. Sampling is by the inverse CDF: one uniform draw per row against the cumulated
    probabilities (float64), the same distribution as torch.multinomial, which on CPU draws per vocabulary
    entry and took 36 ms a step for 8 rows of DeepSeek's 129k vocabulary. A token of probability 0 is never
    picked (`right=True` skips the flat stretches of the CDF)."""
    if not s.do_sample:
        return logits.argmax(-1)
    cdf = warp(logits, s).softmax(-1).double().cumsum(-1)
    u = torch.rand((cdf.shape[0], 1), dtype=torch.float64, device=cdf.device) * cdf[:, -1:]
    return torch.searchsorted(cdf, u, right=True).squeeze(1).clamp_(max=cdf.shape[-1] - 1)


def _last_logits_only(model) -> dict:
    """`logits_to_keep=1` where the model takes it (as generate does): the prefill computes the vocabulary
    projection for the last prompt token only, not for every prompt token."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    return {"logits_to_keep": 1} if "logits_to_keep" in inspect.signature(base.forward).parameters else {}


@torch.no_grad()
def group_rollout(model, prompts: list[list[int]], sampling: Sampling, eos_ids: set[int], pad_id: int,
                  stats: RolloutStats | None = None) -> list[list[int]]:
    """Completion ids for each entry of `prompts` (in order; repeated prompts share one prefill). A completion
    ends with its EOS token when it produced one, as trl's completions do."""
    stats = stats if stats is not None else RolloutStats()
    if not prompts:
        return []
    device = next(model.parameters()).device
    unique: dict[tuple, int] = {}
    for p in prompts:
        unique.setdefault(tuple(p), len(unique))
    ids, mask, pos = left_padded([list(p) for p in unique], pad_id, device)
    out = model(input_ids=ids, attention_mask=mask, position_ids=pos, use_cache=True, **_last_logits_only(model))
    cache, logits = out.past_key_values, out.logits[:, -1, :]
    stats.prompts += len(unique)
    stats.prefill_tokens += int(mask.sum())
    stats.completions += len(prompts)
    if not rows_droppable(cache):
        raise UnsupportedCache(f"{type(cache).__name__}: rows cannot be dropped from this model's KV cache")
    # one row per completion: the prompt's cache repeated for its group
    src = torch.tensor([unique[tuple(p)] for p in prompts], device=device)
    cache.batch_select_indices(src)
    mask, pos, logits = mask[src], pos[src, -1:], logits[src]
    done: list[list[int] | None] = [None] * len(prompts)
    tokens: list[list[int]] = [[] for _ in prompts]
    live = list(range(len(prompts)))  # completion index of each batch row
    eos = torch.tensor(sorted(eos_ids), device=device)
    while live:
        nxt = _pick(logits, sampling)
        stats.steps += 1
        stats.row_steps += len(live)
        ended = torch.isin(nxt, eos).tolist()
        keep = []
        for row, (c, t, e) in enumerate(zip(live, nxt.tolist(), ended)):
            tokens[c].append(t)
            if e or len(tokens[c]) >= sampling.max_new_tokens:
                done[c] = tokens[c]
            else:
                keep.append(row)
        if not keep:
            break
        if len(keep) < len(live):
            idx = torch.tensor(keep, device=device)
            mask, pos, nxt = keep_rows(cache, mask, idx), pos[idx], nxt[idx]
            live = [live[r] for r in keep]
        mask = torch.cat([mask, mask.new_ones((len(live), 1))], dim=1)
        pos = pos + 1
        out = model(input_ids=nxt[:, None], attention_mask=mask, position_ids=pos, past_key_values=cache,
                    use_cache=True)
        cache, logits = out.past_key_values, out.logits[:, -1, :]
    return [d if d is not None else tokens[i] for i, d in enumerate(done)]
