"""Batched generation for evaluation: left padding, stop at end of turn, bounded batch size.

Prompts are rendered with the same chat template the model was trained with
(`get_template(...).prompt(messages)`), so the model sees exactly the training format up to the
assistant's first token. Prompts are sorted by length before batching (less padding, same
outputs) and results are returned in the input order.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch


@dataclass
class GenerationSettings:
    max_new_tokens: int = 128
    batch_size: int = 8
    do_sample: bool = False
    temperature: float = 0.7
    top_p: float = 1.0
    seed: int = 0
    max_prompt_tokens: int | None = None  # keep the last N prompt tokens (left truncation)

    @classmethod
    def from_eval_config(cls, ev, seed: int = 0, max_prompt_tokens: int | None = None) -> "GenerationSettings":
        return cls(max_new_tokens=ev.max_new_tokens, batch_size=ev.batch_size, do_sample=ev.do_sample,
                   temperature=ev.temperature, top_p=ev.top_p, seed=seed, max_prompt_tokens=max_prompt_tokens)

    def describe(self) -> str:
        mode = f"sampling (T={self.temperature}, top_p={self.top_p}, seed={self.seed})" if self.do_sample else "greedy"
        return f"{mode}, max_new_tokens={self.max_new_tokens}, batch_size={self.batch_size}"


def stop_token_ids(tokenizer, model=None) -> list[int]:
    """Every id that ends an assistant turn: the tokenizer's eos, the model's generation eos(es),
    and the ChatML end-of-turn token when the vocabulary has one (SmolLM2, Qwen)."""
    ids: list[int] = []

    def add(x):
        if x is None:
            return
        for i in (x if isinstance(x, (list, tuple)) else [x]):
            if i is not None and int(i) not in ids:
                ids.append(int(i))

    add(tokenizer.eos_token_id)
    gc = getattr(model, "generation_config", None) if model is not None else None
    if gc is not None:
        add(gc.eos_token_id)
    vocab = tokenizer.get_vocab()
    for tok in ("<|im_end|>", "<｜end▁of▁sentence｜>"):
        if tok in vocab:
            add(vocab[tok])
    pad = tokenizer.pad_token_id
    return [i for i in ids if i != pad]


def left_pad(seqs: list[list[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(input_ids, attention_mask) with every row padded on the left to the longest row."""
    n = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), n), pad_id, dtype=torch.long)
    mask = torch.zeros((len(seqs), n), dtype=torch.long)
    for i, s in enumerate(seqs):
        if s:
            ids[i, n - len(s):] = torch.tensor(s, dtype=torch.long)
            mask[i, n - len(s):] = 1
    return ids, mask


def _cut_at_stop(ids: list[int], stops: set[int]) -> list[int]:
    for k, t in enumerate(ids):
        if t in stops:
            return ids[:k]
    return ids


def generate_texts(model, tokenizer, template, prompts: list[list[dict]], settings: GenerationSettings,
                   on_batch: Callable[[int], None] | None = None, details: list | None = None) -> list[str]:
    """Generate one assistant reply per prompt (a list of chat messages ending before the reply).

    details: when a list is given, it receives per prompt {"tokens": generated token count, "stopped":
    whether an end-of-turn token ended the reply (False = cut at max_new_tokens)}, in prompt order."""
    if not prompts:
        return []
    texts = [template.prompt(m) for m in prompts]
    enc = [tokenizer(t, add_special_tokens=False)["input_ids"] for t in texts]
    if settings.max_prompt_tokens:
        enc = [e[-settings.max_prompt_tokens:] for e in enc]
    order = sorted(range(len(enc)), key=lambda i: len(enc[i]))
    stops = stop_token_ids(tokenizer, model)
    stop_set = set(stops)
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else stops[0]
    out: list[str | None] = [None] * len(enc)
    info: list[dict | None] = [None] * len(enc)
    was_training = model.training
    model.eval()
    kwargs = dict(max_new_tokens=settings.max_new_tokens, eos_token_id=stops, pad_token_id=pad_id,
                  use_cache=True, do_sample=settings.do_sample)
    if settings.do_sample:
        kwargs.update(temperature=settings.temperature, top_p=settings.top_p, top_k=0)
    else:  # silence "generation flags are not valid" for models whose generation_config samples
        kwargs.update(temperature=None, top_p=None, top_k=None)
    try:
        with torch.no_grad(), torch.random.fork_rng(devices=[]):
            torch.manual_seed(settings.seed)
            for b in range(0, len(order), settings.batch_size):
                idx = order[b:b + settings.batch_size]
                ids, mask = left_pad([enc[i] for i in idx], pad_id)
                gen = model.generate(input_ids=ids, attention_mask=mask, **kwargs)
                new = gen[:, ids.shape[1]:].tolist()
                for i, row in zip(idx, new):
                    kept = _cut_at_stop(row, stop_set)
                    info[i] = {"tokens": len(kept), "stopped": len(kept) < len(row), "ids": kept}
                    text = tokenizer.decode(kept, skip_special_tokens=True)
                    # a max_new_tokens cut can split a multi-byte character: drop the broken tail
                    out[i] = text.rstrip("\ufffd").strip()
                if on_batch:
                    on_batch(len(idx))
    finally:
        model.train(was_training)
    if details is not None:
        details.extend(info)
    return [o or "" for o in out]


def split_replies(texts: list[str], template) -> list[tuple[str | None, str]]:
    """(reasoning, answer) per generated reply: the answer is what metrics score; the reasoning is kept
    beside it (the DeepSeek-R1 template opens <think> in the prompt, so replies start inside it)."""
    from ..data.reasoning import split_generation

    opened = bool(getattr(template, "opens_think", False))
    return [split_generation(t, opened) for t in texts]
