"""SFT speed and memory of seektune's GPU switches, in one run on one CUDA GPU (issue 22; run by
bench/gpu_check.sh on a lent GPU machine, or with --smoke on CPU to check the plumbing).

Models (random weights: real ones cannot travel to the GPU machine, and speed does not depend on them):
  * `smollm2`: SmolLM2-135M's architecture (its config.json and tokenizer from .gpu/smollm2, made by
    `make gpu-wheels`), LoRA r16 on every linear layer;
  * `deepseek-v3`: seektune's tiny-deepseek-v3 preset (MLA + MoE, LoRA on the fused experts).
Setups: fp32; bf16 autocast (`train.mixed_precision: bf16`); bf16 autocast + Liger kernels
(`train.liger_kernel`, when liger-kernel is installed); bf16 weights (`model.dtype: bfloat16`); QLoRA
(`adapter.quantize_base: 4bit` over bf16, SmolLM2 only, when bitsandbytes is installed).
Every setup trains `--steps` steps of batch 8 x 512-token samples (synthetic text); the first 3 steps
are warm-up. Prints real tokens/s, s/step, peak GPU memory (torch.cuda.max_memory_allocated) and the
first and last loss, and writes the table to --out as JSON. Usage:

    PYTHONPATH=src python bench/gpu_sft.py --steps 30 --out /tmp/gpu_sft.json
    PYTHONPATH=src python bench/gpu_sft.py --smoke      # CPU, 2 tiny steps per setup: plumbing only
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "src"))

ROOT = Path(__file__).resolve().parents[1]
WORDS = ("patient dose fever cough blood pressure account loan credit order refund delivery store the a of and "
         "to in is was for with on that by this be are from or at as an it not have has had").split()


def data_file(d: Path, n: int, words: int) -> Path:
    rng = random.Random(0)
    p = d / "sft.jsonl"
    with p.open("w", encoding="utf-8") as f:
        for i in range(n):
            f.write(json.dumps({"instruction": " ".join(rng.choices(WORDS, k=words // 4)), "input": "",
                                "output": " ".join(rng.choices(WORDS, k=words))}) + "\n")
    return p


def smollm2_folder(d: Path) -> Path:
    """SmolLM2-135M's architecture with random weights, saved as an HF folder."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    src = ROOT / ".gpu" / "smollm2"
    if not (src / "config.json").exists():
        raise SystemExit(f"{src}: missing; run `make gpu-wheels` first (it copies SmolLM2's config and tokenizer)")
    out = d / "smollm2-random"
    shutil.copytree(src, out)
    torch.manual_seed(0)
    AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(out)).save_pretrained(out)
    return out


class Timer:
    """Times optimizer steps after the warm-up and reads the peak GPU memory."""

    def __init__(self, warmup: int):
        from transformers import TrainerCallback

        timer = self

        class CB(TrainerCallback):
            def on_step_begin(self, args, state, control, **kw):
                if state.global_step == warmup:
                    timer.sync()
                    timer.t0 = time.perf_counter()
                    timer.tokens0 = timer.tokens

            def on_step_end(self, args, state, control, **kw):
                timer.steps = state.global_step

            def on_log(self, args, state, control, logs=None, **kw):
                if logs and "loss" in logs:
                    timer.losses.append(float(logs["loss"]))

        self.cb, self.t0, self.tokens, self.tokens0, self.steps, self.losses = CB(), None, 0, 0, 0, []
        self.warmup = warmup

    @staticmethod
    def sync():
        import torch

        if torch.cuda.is_available():
            torch.cuda.synchronize()


def run_setup(name: str, model_path: str, data: Path, d: Path, a, **over) -> dict:
    import torch

    from seektune.config import Config
    from seektune.stages import run_stage

    steps = 2 if a.smoke else a.steps
    warm = 1 if a.smoke else 3
    cfg = Config.model_validate({
        "model": {"name_or_path": model_path, "dtype": over.pop("dtype", "float32")},
        "adapter": {"method": "lora", "r": 16, "alpha": 32, "dropout": 0.0, "target_modules": "all-linear"
                    if "deepseek" not in name else "auto", "quantize_base": over.pop("quantize_base", "none")},
        "data": {"train": str(data), "max_length": 64 if a.smoke else 512, "eval_ratio": 0.0},
        "train": {"output_dir": str(d / name), "max_steps": steps, "batch_size": 2 if a.smoke else 8, "lr": 1e-4,
                  "logging_steps": 1, "save_steps": None, "seed": 0, "gradient_checkpointing": False, **over},
        "eval": {"before_after": False, "report": False}})
    timer = Timer(warm)
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
    try:
        res = run_stage(cfg, progress=False, callbacks=[timer.cb])
    except Exception as e:  # noqa: BLE001 - one setup failing is a row of the table, not the end of the run
        return {"setup": name, "error": f"{type(e).__name__}: {str(e)[:300]}"}
    timer.sync()
    dt = time.perf_counter() - (timer.t0 or time.perf_counter())
    counted = res.summary.get("details", {}).get("real_tokens") or 0
    per_step = counted / max(1, timer.steps)
    timed = max(1, timer.steps - warm)
    return {"setup": name, "steps": timer.steps, "s_per_step": round(dt / timed, 4),
            "real_tok_s": round(per_step * timed / dt, 1) if dt > 0 else None,
            "peak_gpu_gb": round(torch.cuda.max_memory_allocated() / 2**30, 2) if torch.cuda.is_available() else None,
            "loss_first": timer.losses[0] if timer.losses else None,
            "loss_last": timer.losses[-1] if timer.losses else None}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--out", default=None)
    ap.add_argument("--smoke", action="store_true", help="CPU plumbing check: tiny model, 2 steps, no GPU switches")
    a = ap.parse_args()
    import importlib.util

    import torch

    cuda = torch.cuda.is_available()
    if not cuda and not a.smoke:
        raise SystemExit("no CUDA GPU: run with --smoke on CPU")
    liger = importlib.util.find_spec("liger_kernel") is not None
    bnb = importlib.util.find_spec("bitsandbytes") is not None
    d = Path(tempfile.mkdtemp(prefix="gpu_sft_"))
    data = data_file(d, 64 if a.smoke else 400, 40 if a.smoke else 300)
    rows = []
    models = [("deepseek-v3", "tiny-deepseek-v3")] if a.smoke else [("smollm2", str(smollm2_folder(d))),
                                                                    ("deepseek-v3", "tiny-deepseek-v3")]
    for label, path in models:
        plan = [("fp32", {})]
        if cuda:
            plan += [("bf16-autocast", {"mixed_precision": "bf16"})]
            if liger and label == "smollm2":
                plan += [("bf16-autocast-liger", {"mixed_precision": "bf16", "liger_kernel": True})]
            plan += [("bf16-weights", {"dtype": "bfloat16"})]
            if bnb and label == "smollm2":  # QLoRA: NF4 base computing in bf16 (bnb quantises the dense linears)
                plan += [("qlora-4bit-bf16", {"dtype": "bfloat16", "quantize_base": "4bit"})]
        for setup, over in plan:
            row = {"model": label, **run_setup(f"{label}-{setup}", path, data, d, a, **over)}
            rows.append(row)
            print(json.dumps(row), flush=True)
    print(f"\n{torch.cuda.get_device_name(0) if cuda else 'CPU (smoke)'}; torch {torch.__version__}; "
          f"liger-kernel {'installed' if liger else 'absent'}; bitsandbytes {'installed' if bnb else 'absent'}")
    print("| model | setup | real tok/s | s/step | peak GPU GB | loss first -> last |")
    print("|---|---|---|---|---|---|")
    for r in rows:
        if "error" in r:
            print(f"| {r['model']} | {r['setup']} | error: {r['error'][:120]} | | | |")
        else:
            print(f"| {r['model']} | {r['setup']} | {r['real_tok_s']} | {r['s_per_step']} | {r['peak_gpu_gb']} | "
                  f"{r['loss_first']} -> {r['loss_last']} |")
    if a.out:
        Path(a.out).write_text(json.dumps(rows, indent=1), encoding="utf-8")


if __name__ == "__main__":
    main()
