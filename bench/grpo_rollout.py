"""GRPO rollout speed: generated tokens/s of the rollout phase, seektune's grouped decoding vs plain trl, in
one run on the same model and prompts (issue 22).

Setups (each is a GRPOTrainer's `_generate_single_turn` on the same LoRA-wrapped model, the call trl makes
once per generation batch):
  * `trl`: trl 1.16 defaults on CPU (`GRPOConfig(use_cpu=True, bf16=False)`): `model.generate` on the
    prompts repeated num_generations times, left-padded; every row decodes until the longest ends;
  * `trl-cb`: trl's `use_transformers_continuous_batching=True` (transformers' paged generate_batch);
  * `seektune`: seektune's trainer with `grpo.generation: grouped` (engine/rollout.py): each prompt
    prefilled once and its KV cache repeated for the group; finished completions leave the batch.
Prompts: GSM8K test questions (../shared/data/reasoning) in the model's chat template. Rounds alternate
the setups (A B C A B C ...) so drift of the host hits all alike; every round re-seeds torch's RNG.
Sampled lengths differ between setups, so the figure is generated tokens per second. Usage:

    PYTHONPATH=src python bench/grpo_rollout.py --prompts 4 --generations 8 --max-new 128 --rounds 3
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "src"))

SETUPS = ("trl", "trl-cb", "seektune")


def questions(n: int) -> list[str]:
    p = Path(__file__).resolve().parents[2] / "shared" / "data" / "reasoning" / "gsm8k_test.jsonl"
    if p.exists():
        rows = [json.loads(line) for line in p.read_text(encoding="utf-8").splitlines()[:n]]
        return [r["question"] for r in rows]
    return [f"Tom has {i} apples and buys {i + 3} more. How many apples does he have?" for i in range(n)]


def trainer_for(setup: str, model, tok, a, dataset):
    from trl import GRPOConfig, GRPOTrainer

    from seektune.stages.grpo import _trainer_cls

    kw = dict(output_dir=f"/tmp/grpo_rollout_bench/{setup}", use_cpu=True, bf16=False, report_to=[],
              num_generations=a.generations, max_completion_length=a.max_new,
              per_device_train_batch_size=a.prompts * a.generations, temperature=a.temperature)
    if setup == "trl-cb":
        kw["use_transformers_continuous_batching"] = True
    cls = _trainer_cls() if setup == "seektune" else GRPOTrainer
    trainer = cls(model=model, args=GRPOConfig(**kw), reward_funcs=lambda completions, **_: [0.0] * len(completions),
                  train_dataset=dataset, processing_class=tok)
    if setup == "seektune":
        trainer.seek_grouped = True
    return trainer


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="smollm2-135m-instruct")
    ap.add_argument("--prompts", type=int, default=4)
    ap.add_argument("--generations", type=int, default=8)
    ap.add_argument("--max-new", type=int, default=128)
    ap.add_argument("--temperature", type=float, default=1.0)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--setups", default=",".join(SETUPS))
    a = ap.parse_args()

    import torch
    from datasets import Dataset

    from seektune.config import Config
    from seektune.models.adapters import apply_adapter
    from seektune.models.loader import load_model
    from seektune.utils.threads import configure_threads

    threads = configure_threads(a.threads)
    cfg = Config.model_validate({"model": {"name_or_path": a.model},
                                 "adapter": {"method": "lora", "r": 16, "alpha": 32, "dropout": 0.0}})
    model, tok, _ = load_model(cfg.model, log=lambda *_: None)
    model, _ = apply_adapter(model, cfg.adapter, "causal_lm", log=lambda *_: None)
    qs = questions(a.prompts)
    texts = [tok.apply_chat_template([{"role": "user", "content": q}], tokenize=False, add_generation_prompt=True)
             for q in qs]
    dataset = Dataset.from_list([{"prompt": t} for t in texts])
    prompt_ids = [tok(t, add_special_tokens=False)["input_ids"] for t in texts for _ in range(a.generations)]
    setups = a.setups.split(",")
    trainers = {}
    for s in setups:
        try:
            trainers[s] = trainer_for(s, model, tok, a, dataset)
        except Exception as e:  # noqa: BLE001 - a peer setup that cannot run here is reported, not fatal
            print(f"{s}: cannot build ({type(e).__name__}: {e})")
    print(f"model {a.model} + LoRA r16, {a.prompts} GSM8K prompts x {a.generations} completions, "
          f"<= {a.max_new} new tokens, temperature {a.temperature}, threads {threads}, "
          f"prompt tokens {sorted({len(p) for p in prompt_ids})}; load avg {os.getloadavg()}", flush=True)
    totals = {s: {"tokens": 0, "seconds": 0.0, "eos": 0, "n": 0} for s in trainers}
    for s, tr in list(trainers.items()):  # warm-up (one short rollout each)
        try:
            tr.max_completion_length, keep = 4, tr.max_completion_length
            tr._generate_single_turn(prompt_ids[: a.generations], None, {}, a.generations)
            tr.max_completion_length = keep
        except Exception as e:  # noqa: BLE001
            print(f"{s}: fails ({type(e).__name__}: {e})")
            trainers.pop(s)
            totals.pop(s)
    eos = set(tok.convert_tokens_to_ids([tok.eos_token]))
    for r in range(a.rounds):
        for s, tr in trainers.items():
            torch.manual_seed(1000 + r)
            model.train()  # trl generates with the policy in train mode (dropout 0)
            t0 = time.perf_counter()
            comps, _ = tr._generate_single_turn(prompt_ids, None, {}, a.generations)
            dt = time.perf_counter() - t0
            n = sum(len(c) for c in comps)
            t = totals[s]
            t["tokens"] += n
            t["seconds"] += dt
            t["eos"] += sum(1 for c in comps if c and c[-1] in eos)
            t["n"] += len(comps)
            print(f"round {r + 1} {s:9s} {n:5d} tokens {dt:6.1f} s {n / dt:6.1f} tok/s; load avg "
                  f"{os.getloadavg()[0]:.2f}", flush=True)
    base = totals.get("trl")
    print("\n| setup | generated tokens | seconds | tokens/s | mean length | ended by EOS | vs trl |")
    print("|---|---|---|---|---|---|---|")
    for s, t in totals.items():
        rate = t["tokens"] / t["seconds"]
        ratio = rate / (base["tokens"] / base["seconds"]) if base else float("nan")
        print(f"| {s} | {t['tokens']} | {t['seconds']:.1f} | {rate:.1f} | {t['tokens'] / t['n']:.1f} | "
              f"{100 * t['eos'] / t['n']:.0f}% | {ratio:.2f}x |")
    print(f"load avg {os.getloadavg()}")


if __name__ == "__main__":
    main()
