"""MoE training speed on CPU: transformers' experts implementations, and MoE vs a dense model of the same
active size, in one run (issue 22).

Models (random weights, DeepSeek-V3 architecture: MLA attention; fp32; LoRA r=8 on attention, shared and
fused routed experts, as seektune's `target_modules: auto` picks them):
  * `preset`: seektune's tiny-deepseek-v3 (hidden 64, 8 routed experts, top-2, 129k vocabulary: the
    vocabulary dominates its compute, so it says little about the experts);
  * `wide`: hidden 512, 4 layers (the first dense, 1,536), 8 routed experts of 512, top-2 + 1 shared,
    vocabulary 8,192;
  * `wide-dense`: the same with every layer dense (first_k_dense_replace = layers) and
    intermediate_size = 3 x 512: the same active MLP parameters per token as `wide`.
Each MoE model runs with experts_implementation eager, grouped_mm and batched_mm. A step = forward +
backward + AdamW on a batch of 4 x 256 random tokens; 1 warm-up step, then --steps timed. Usage:

    PYTHONPATH=src python bench/moe_experts.py --steps 5
"""

from __future__ import annotations

import argparse
import os
import sys
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "src"))

IMPLS = ("grouped_mm", "eager", "batched_mm")


def build(kind: str):
    from transformers import AutoModelForCausalLM, DeepseekV3Config


    if kind == "preset":
        from seektune.models.presets import resolve_model_path

        return AutoModelForCausalLM.from_pretrained(resolve_model_path("tiny-deepseek-v3", log=lambda *_: None))
    layers = 4
    cfg = DeepseekV3Config(vocab_size=8192, hidden_size=512, intermediate_size=512 * 3,
                           moe_intermediate_size=512, num_hidden_layers=layers,
                           first_k_dense_replace=layers if kind == "wide-dense" else 1, num_attention_heads=8,
                           num_key_value_heads=8, n_routed_experts=8, num_experts_per_tok=2, n_shared_experts=1,
                           q_lora_rank=128, kv_lora_rank=64, qk_rope_head_dim=16, qk_nope_head_dim=32, v_head_dim=32,
                           n_group=1, topk_group=1, max_position_embeddings=1024)
    return AutoModelForCausalLM.from_config(cfg)


def adapt(model):
    from seektune.config import Config
    from seektune.models.adapters import apply_adapter

    cfg = Config.model_validate({"model": {"name_or_path": "tiny-deepseek-v3"}, "adapter": {"method": "lora", "r": 8}})
    model, _ = apply_adapter(model, cfg.adapter, "causal_lm")
    return model


def measure(kind: str, impl: str | None, steps: int, batch: int, seq: int) -> dict:
    import torch

    torch.manual_seed(0)
    model = build(kind)
    if impl is not None:
        model.set_experts_implementation(impl)
    model = adapt(model).train()
    vocab = model.config.vocab_size
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)
    ids = torch.randint(0, vocab, (batch, seq))

    def step():
        loss = model(input_ids=ids, labels=ids).loss
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        return float(loss)

    step()
    t0 = time.perf_counter()
    for _ in range(steps):
        step()
    dt = (time.perf_counter() - t0) / steps
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return {"model": kind, "experts": impl or "(dense)", "s_per_step": round(dt, 3),
            "tok_s": round(batch * seq / dt, 1), "trainable": trainable, "load": round(os.getloadavg()[0], 2)}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--seq", type=int, default=256)
    ap.add_argument("--models", default="preset,wide,wide-dense")
    a = ap.parse_args()
    import torch

    print(f"torch threads {torch.get_num_threads()}; load average {os.getloadavg()[0]:.2f}", flush=True)
    rows = []
    for kind in a.models.split(","):
        for impl in ((None,) if kind == "wide-dense" else IMPLS):
            r = measure(kind, impl, a.steps, a.batch, a.seq)
            rows.append(r)
            print(r, flush=True)
    dense = next((r for r in rows if r["model"] == "wide-dense"), None)
    cols = ["model", "experts", "s_per_step", "tok_s", "vs_grouped_mm", "vs_dense", "trainable", "load"]
    for r in rows:
        g = next(x for x in rows if x["model"] == r["model"] and x["experts"] in ("grouped_mm", "(dense)"))
        r["vs_grouped_mm"] = f"{r['tok_s'] / g['tok_s']:.2f}x"
        r["vs_dense"] = f"{r['tok_s'] / dense['tok_s']:.2f}x" if dense and r["model"].startswith("wide") else ""
    print(f"\n{a.steps} timed steps of {a.batch} x {a.seq} tokens (fwd+bwd+AdamW, LoRA r8, fp32); "
          f"load average {os.getloadavg()[0]:.2f}")
    print("| " + " | ".join(cols) + " |\n|" + "---|" * len(cols))
    for r in rows:
        print("| " + " | ".join(str(r[c]) for c in cols) + " |")


if __name__ == "__main__":
    main()
