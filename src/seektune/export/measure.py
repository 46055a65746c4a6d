"""Before/after measurements for deployment variants: size, latency per token (perplexity over the
whole rendered text is eval.metrics.text_perplexity).

Shared by the INT8 table (`seektune export --report`), the pruning report and the bench scripts,
so every table measures the same way: perplexity over the chat-rendered texts of a data file
(all tokens, one text per forward pass), latency as wall time of greedy decoding per new token at
batch 1 with the prompt already in the KV cache.
"""

from __future__ import annotations


import time
from pathlib import Path

import torch

from ..data.formats import detect_format, to_messages
from ..data.io import DataError, read_records
from ..data.templates import get_template
from .errors import ExportError


def texts_from_file(path: str | Path, tok, template: str = "auto", n: int = 32, skip: int = 0,
                    max_chars: int = 2000) -> list[str]:
    """Chat-render up to `n` records of an SFT data file (after skipping `skip`), as model text."""
    path = Path(path)
    if not path.exists():
        raise ExportError(f"data file not found: {path}")
    recs = list(read_records(path, on_error="collect", errors=[]))
    if not recs:
        raise ExportError(f"{path}: no usable records")
    try:
        fmt = detect_format(recs[0].data)
    except DataError as e:
        raise ExportError(f"{path}: {e}") from None
    tmpl = get_template(template, tok)
    out = []
    for rec in recs[skip:]:
        try:
            msgs = to_messages(rec, fmt)
        except Exception:  # a bad record is skipped here; `seektune data` reports them
            continue
        out.append(tmpl.render(msgs).text[:max_chars])
        if len(out) >= n:
            break
    if not out:
        raise ExportError(f"{path}: no records after the first {skip}")
    return out


@torch.no_grad()
def latency_per_token(model, tok, prompt: str, new_tokens: int = 32, repeats: int = 2) -> float:
    """Seconds per generated token (greedy, batch 1, eos ignored), best of `repeats`."""
    ids = tok(prompt, add_special_tokens=False, return_tensors="pt")["input_ids"]
    best = float("inf")
    for _ in range(repeats):
        out = model(input_ids=ids, use_cache=True)
        past, nxt = out.past_key_values, out.logits[:, -1].argmax(-1, keepdim=True)
        t0 = time.perf_counter()
        for _ in range(new_tokens):
            out = model(input_ids=nxt, past_key_values=past, use_cache=True)
            past, nxt = out.past_key_values, out.logits[:, -1].argmax(-1, keepdim=True)
        best = min(best, (time.perf_counter() - t0) / new_tokens)
    return best


def param_count(model) -> int:
    return sum(p.numel() for p in model.parameters())


def markdown_table(rows: list[dict], cols: list[tuple[str, str]]) -> str:
    """rows of dicts -> a markdown table; cols = [(key, header)]."""
    head = "| " + " | ".join(h for _, h in cols) + " |"
    sep = "|" + "|".join("---" for _ in cols) + "|"
    body = ["| " + " | ".join(str(r.get(k, "")) for k, _ in cols) + " |" for r in rows]
    return "\n".join([head, sep, *body])
