"""Run LLaMA-Factory's own SFT entry point (`run_exp`, what `llamafactory-cli train` calls) with the
benchmark job and bench/_meter.py's step meter. Runs inside bench/peers/llamafactory/.venv."""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))


def main():
    ap = argparse.ArgumentParser()
    for k in ("--model-dir", "--data-dir", "--out", "--result", "--setup", "--job"):
        ap.add_argument(k, required=True)
    ap.add_argument("--steps", type=int, required=True)
    ap.add_argument("--warmup", type=int, required=True)
    ap.add_argument("--packing", action="store_true")
    a = ap.parse_args()
    job = json.loads(a.job)

    import torch
    from _meter import StepMeter, install
    from llamafactory.train.tuner import run_exp
    from transformers import AutoTokenizer

    torch.set_num_threads(len(os.sched_getaffinity(0)))
    tok = AutoTokenizer.from_pretrained(a.model_dir)
    meter = StepMeter(tok.pad_token_id, a.result, a.setup)
    install(meter)
    args = {
        "model_name_or_path": a.model_dir, "trust_remote_code": False,
        "stage": "sft", "do_train": True, "finetuning_type": "lora", "lora_rank": job["r"],
        "lora_alpha": job["alpha"], "lora_dropout": 0.0, "lora_target": "all",
        "dataset": "bench_alpaca", "dataset_dir": a.data_dir, "template": "smollm2",
        "cutoff_len": job["max_length"], "max_samples": job["records"], "overwrite_cache": True,
        "packing": a.packing, "output_dir": str(Path(a.out) / a.setup), "overwrite_output_dir": True,
        "per_device_train_batch_size": job["batch"], "gradient_accumulation_steps": 1,
        "learning_rate": job["lr"], "max_steps": a.warmup + a.steps, "lr_scheduler_type": "cosine",
        "logging_steps": 1, "save_strategy": "no", "report_to": "none", "seed": job["seed"],
        "bf16": False, "fp16": False, "plot_loss": False, "use_cpu": True,
    }
    run_exp(args, callbacks=[meter])
    meter.write()


if __name__ == "__main__":
    main()
