"""Batched generation for eval vs one prompt at a time, in the same process on the same prompts.

Prints seconds and the speed-up ratio of each batched mode over the sequential baseline, and checks
that greedy outputs are identical (left padding must not change answers). Modes:
  sequential   batch 1 (what a naive eval loop does)
  batched      batch B in file order
  sorted       batch B after sorting prompts by length (seektune's default: less padding)

    python bench/eval_generation.py --model smollm2-135m-instruct --n 16 --batch 8 --max-new-tokens 32
"""

from __future__ import annotations

import argparse
import os
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="smollm2-135m-instruct")
    ap.add_argument("--data", default="../shared/data/sft/huatuo_med_zh.alpaca.jsonl")
    ap.add_argument("--n", type=int, default=16)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--max-new-tokens", type=int, default=32)
    ap.add_argument("--threads", type=int, default=None)
    a = ap.parse_args()

    import torch
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    from seektune.config import ModelConfig
    from seektune.data.templates import get_template
    from seektune.eval import generation as g
    from seektune.eval.data import load_eval_set
    from seektune.models.loader import load_model

    threads = a.threads or len(os.sched_getaffinity(0))
    torch.set_num_threads(threads)
    model, tok, _ = load_model(ModelConfig(name_or_path=a.model), log=lambda *_: None)
    tpl = get_template("auto", tok)
    items = load_eval_set(a.data, limit=a.n, seed=0).items
    prompts = [it.prompt for it in items]
    lens = [len(tok(tpl.prompt(p), add_special_tokens=False)["input_ids"]) for p in prompts]
    print(f"model {a.model}; {len(prompts)} prompts ({min(lens)}-{max(lens)} tokens); max_new_tokens "
          f"{a.max_new_tokens}; batch {a.batch}; threads {threads}; load avg {os.getloadavg()[0]:.1f}")

    def run(batch: int, sort: bool):
        s = g.GenerationSettings(max_new_tokens=a.max_new_tokens, batch_size=batch)
        if sort:
            t0 = time.time()
            out = g.generate_texts(model, tok, tpl, prompts, s)
            return time.time() - t0, out
        t0 = time.time()  # file order: generate batch by batch so no sorting happens
        out = []
        for i in range(0, len(prompts), batch):
            out += g.generate_texts(model, tok, tpl, prompts[i:i + batch], s)
        return time.time() - t0, out

    base_s, base_out = run(1, False)
    print(f"{'sequential':10s} {base_s:8.1f}s  1.00x")
    for name, sort in (("batched", False), ("sorted", True)):
        sec, out = run(a.batch, sort)
        same = sum(x == y for x, y in zip(out, base_out))
        print(f"{name:10s} {sec:8.1f}s  {base_s / sec:.2f}x  identical answers {same}/{len(out)}")


if __name__ == "__main__":
    main()
