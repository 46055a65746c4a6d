"""Classification training speed: seektune's classify stage vs a plain Hugging Face Trainer recipe (issue 22).

Same machine, same run, one after the other: MiniLM-L6 full fine-tuning on Financial PhraseBank, batch 16,
max_length 128, lr 6e-5, fp32, N steps. seektune runs from the CLI on examples/cls_minilm_financial.yaml
(its train_seconds from summary.json: the steps only); the plain recipe is what the transformers docs
show (tokenize with truncation, DataCollatorWithPadding, Trainer, no evaluation), timed by Trainer's own
train_runtime. Prints examples/s for both and the ratio, with the load average. Usage:

    PYTHONPATH=src python bench/cls_throughput.py --steps 60
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import random
import subprocess
import sys
import tempfile
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))
FPB = ROOT.parent / "shared" / "data" / "classification" / "financial_phrasebank_allagree.csv"


def seektune_run(steps: int, out: Path) -> dict:
    cmd = [str(ROOT / ".venv" / "bin" / "seektune"), "train", str(ROOT / "examples" / "cls_minilm_financial.yaml"),
           "--set", f"train.max_steps={steps}", "--set", f"train.output_dir={out}", "--set", "train.eval_steps=100000",
           "--set", "train.save_steps=null", "--overwrite"]
    subprocess.run(cmd, check=True, cwd=str(ROOT), stdout=subprocess.DEVNULL)
    s = json.loads((out / "summary.json").read_text())
    return {"setup": "seektune (CLI, classify stage)", "steps": s["steps"], "seconds": s["train_seconds"],
            "examples_s": round(s["steps"] * 16 / s["train_seconds"], 1)}


def plain_run(steps: int, out: Path) -> dict:
    import torch
    from datasets import Dataset
    from transformers import (AutoModelForSequenceClassification, AutoTokenizer, DataCollatorWithPadding, Trainer,
                              TrainingArguments)

    from seektune.models.presets import resolve_model_path

    path = resolve_model_path("minilm-l6", log=lambda *_: None)
    with open(FPB, encoding="utf-8", errors="replace") as fh:
        rows = [r for r in csv.DictReader(fh) if r.get("text") and r.get("label")]
    random.Random(42).shuffle(rows)
    labels = sorted({r["label"] for r in rows})
    train = rows[: int(0.8 * len(rows))]
    tok = AutoTokenizer.from_pretrained(path)
    ds = Dataset.from_dict({"text": [r["text"] for r in train], "label": [labels.index(r["label"]) for r in train]})
    ds = ds.map(lambda b: tok(b["text"], truncation=True, max_length=128), batched=True, remove_columns=["text"])
    model = AutoModelForSequenceClassification.from_pretrained(path, num_labels=len(labels))
    args = TrainingArguments(output_dir=str(out), max_steps=steps, per_device_train_batch_size=16, learning_rate=6e-5,
                             lr_scheduler_type="linear", warmup_steps=max(1, steps // 10), weight_decay=0.01, logging_steps=20,
                             save_strategy="no", eval_strategy="no", report_to=[], use_cpu=True, seed=42,
                             dataloader_num_workers=0)
    res = Trainer(model=model, args=args, train_dataset=ds, data_collator=DataCollatorWithPadding(tok)).train()
    sec = res.metrics["train_runtime"]
    return {"setup": f"plain HF Trainer (transformers docs recipe, torch threads {torch.get_num_threads()})",
            "steps": steps, "seconds": round(sec, 2), "examples_s": round(steps * 16 / sec, 1)}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=60)
    a = ap.parse_args()
    if not FPB.exists():
        sys.exit(f"{FPB} not found (../shared/data)")
    tmp = Path(tempfile.mkdtemp(prefix="cls_bench_"))
    rows = []
    for fn in (seektune_run, plain_run):
        r = fn(a.steps, tmp / fn.__name__)
        r["load"] = round(os.getloadavg()[0], 2)
        rows.append(r)
        print(r, flush=True)
    print(f"\n{a.steps} steps x 16 examples, MiniLM-L6 full FT, Financial PhraseBank; load average {os.getloadavg()[0]:.2f}")
    print("| setup | steps | train s | examples/s | load |\n|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['setup']} | {r['steps']} | {r['seconds']} | {r['examples_s']} | {r['load']} |")
    print(f"seektune / plain: {rows[0]['examples_s'] / rows[1]['examples_s']:.2f}x")


if __name__ == "__main__":
    main()
