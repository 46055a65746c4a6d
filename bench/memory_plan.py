"""Training-memory guidance for DeepSeek sizes, computed from parameter counts (docs/distributed.md).

Bytes per parameter for model states (activations come on top and depend on batch x length):
  full fine-tune, bf16 mixed precision + AdamW: 2 (bf16 weights) + 2 (bf16 grads) + 4 (fp32 master)
    + 8 (Adam m, v) = 16 B/param
  LoRA on a frozen bf16 base: 2 B/param (+ adapter states, < 1% of the base)
  QLoRA (4-bit base): ~0.55 B/param
Sharding over G GPUs: DDP keeps everything on every GPU; ZeRO-2 shards grads + optimizer
(2 + 14/G); FSDP full shard / ZeRO-3 shards everything (16/G).
"""

MODELS = [  # name, total params (B), active params per token (B)
    ("DeepSeek-R1-Distill-Qwen-1.5B", 1.78, 1.78),
    ("DeepSeek-R1-Distill-Qwen-7B", 7.62, 7.62),
    ("DeepSeek-V2-Lite 16B MoE", 15.7, 2.4),
    ("DeepSeek-V2 236B MoE", 236.0, 21.0),
    ("DeepSeek-V3 / R1 671B MoE", 671.0, 37.0),
]
GB = 1e9


def gib(params_b: float, bytes_per: float, shards: int = 1) -> float:
    return params_b * GB * bytes_per / shards / 2**30


def main():
    rows = ["| model | total / active params | LoRA bf16 base (1 GPU) | QLoRA 4-bit base | full FT, DDP | "
            "full FT, ZeRO-2 x8 | full FT, FSDP / ZeRO-3 x8 | full FT, ZeRO-3 x64 |",
            "|---|---|---|---|---|---|---|---|"]
    for name, total, active in MODELS:
        rows.append(f"| {name} | {total:g}B / {active:g}B | {gib(total, 2):,.0f} GiB | {gib(total, 0.55):,.0f} GiB | "
                    f"{gib(total, 16):,.0f} GiB | {gib(total, 2) + gib(total, 14, 8):,.0f} GiB | "
                    f"{gib(total, 16, 8):,.0f} GiB | {gib(total, 16, 64):,.0f} GiB |")
    print("\n".join(rows))


if __name__ == "__main__":
    main()
