"""Forgetting table (issue 7): SmolLM2-135M LoRA on Chinese medical QA, general retention measured
on held-out English general instructions, for plain / replay 10% / EWC / replay + EWC.

Same steps, seed, data and hyper-parameters for every variant; only the mitigation differs.
Quality numbers (losses and perplexities), not speed: the machine's load does not change them.

    python bench/forgetting_table.py [--steps 30] [--ewc-lambda 5000] [--out runs/bench_forgetting]
"""

from __future__ import annotations

import argparse
import json
import math
import random
import sys
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))

from seektune.config import Config, EWCConfig, ReplayConfig  # noqa: E402
from seektune.data.collate import PadCollator  # noqa: E402
from seektune.data.io import read_records, write_jsonl  # noqa: E402
from seektune.stages import run_stage  # noqa: E402
from seektune.stages.sft import tokenised_rows  # noqa: E402
from seektune.utils.threads import configure_threads  # noqa: E402

SHARED = REPO.parent / "shared" / "data"


def prepare(out: Path, n_train: int, seed: int = 0):
    med = [r.data for r in read_records(SHARED / "sft" / "huatuo_med_zh.alpaca.jsonl")
           if 10 <= len(r.data.get("output", "")) <= 200]
    gen = [r.data for r in read_records(SHARED / "general" / "alpaca_en_demo.json")
           if 10 <= len(r.data.get("output", "")) <= 600]
    rng = random.Random(seed)
    rng.shuffle(med)
    rng.shuffle(gen)
    files = {"train": med[:n_train], "domain_eval": med[n_train:n_train + 40],
             "general_eval": gen[:60], "general_pool": gen[60:]}
    paths = {}
    for k, rows in files.items():
        paths[k] = out / "data" / f"{k}.jsonl"
        write_jsonl(paths[k], rows)
    return paths


@torch.no_grad()
def mean_loss(model, rows, pad_id, bs=8) -> float:
    """Token-weighted mean loss on assistant tokens (exp of it is the perplexity)."""
    coll = PadCollator(pad_id)
    model.eval()
    tot, n = 0.0, 0
    for i in range(0, len(rows), bs):
        b = coll(rows[i:i + bs])
        logits = model(input_ids=b["input_ids"], attention_mask=b["attention_mask"]).logits[:, :-1]
        labels = b["labels"][:, 1:]
        tot += torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]).float(), labels.reshape(-1),
                                                 ignore_index=-100, reduction="sum").item()
        n += int((labels != -100).sum())
    return tot / max(1, n)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--n-train", type=int, default=400)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--ewc-lambda", type=float, default=5000.0)
    ap.add_argument("--out", default="runs/bench_forgetting")
    args = ap.parse_args()
    if not SHARED.exists():
        sys.exit("needs ../shared/data")
    out = Path(args.out)
    paths = prepare(out, args.n_train)
    configure_threads(None)
    variants = {
        "plain": {},
        "replay 10%": {"replay": ReplayConfig(file=str(paths["general_pool"]), ratio=0.1)},
        "EWC": {"ewc": EWCConfig(data=str(paths["general_pool"]), samples=100, lam=args.ewc_lambda)},
        "replay 10% + EWC": {"replay": ReplayConfig(file=str(paths["general_pool"]), ratio=0.1),
                             "ewc": EWCConfig(data=str(paths["general_pool"]), samples=100, lam=args.ewc_lambda)},
    }
    results = []
    base_losses = None
    for name, extra in variants.items():
        cfg = Config.model_validate({
            "model": {"name_or_path": "smollm2-135m-instruct"},
            "adapter": {"method": "lora", "r": 16, "alpha": 32, "dropout": 0.0},
            "data": {"train": str(paths["train"]), "eval": str(paths["domain_eval"]), "max_length": 192},
            "train": {"output_dir": str(out / name.replace(" ", "_").replace("%", "").replace("+", "and")),
                      "max_steps": args.steps, "batch_size": 4, "lr": args.lr, "min_lr": args.lr / 10,
                      "warmup_steps": 3, "logging_steps": 5, "seed": 0},
            # this table measures its own losses; keep the end-of-run generation eval minimal
            "eval": {"before_after": False, "report": False, "samples": 1, "max_new_tokens": 4},
        })
        for k, v in extra.items():
            setattr(cfg.train, k, v)
        trainer = run_stage(cfg, overwrite=True, progress=False).trainer
        model = trainer.model
        tok = trainer.processing_class
        from seektune.data.templates import get_template

        template = get_template(cfg.data.template, tok)
        dom = tokenised_rows(cfg, tok, template, str(paths["domain_eval"]), 1000)
        gen = tokenised_rows(cfg, tok, template, str(paths["general_eval"]), 1000)
        if base_losses is None:
            with model.disable_adapter():
                base_losses = (mean_loss(model, dom, tok.pad_token_id), mean_loss(model, gen, tok.pad_token_id))
        d, g = mean_loss(model, dom, tok.pad_token_id), mean_loss(model, gen, tok.pad_token_id)
        results.append({"variant": name, "domain_loss": d, "general_loss": g, "steps": trainer.state.global_step})
        print(json.dumps(results[-1]), flush=True)
    bd, bg = base_losses
    lines = [f"base model: domain loss {bd:.4f} (ppl {math.exp(bd):.2f}), general loss {bg:.4f} "
             f"(ppl {math.exp(bg):.2f})", "",
             "| variant | domain ppl (base -> after) | domain gain | general ppl (base -> after) | general ppl rise |",
             "|---|---|---|---|---|"]
    for r in results:
        lines.append(f"| {r['variant']} | {math.exp(bd):.2f} -> {math.exp(r['domain_loss']):.2f} | "
                     f"{100 * (1 - math.exp(r['domain_loss'] - bd)):.1f}% | {math.exp(bg):.2f} -> "
                     f"{math.exp(r['general_loss']):.2f} | {100 * (math.exp(r['general_loss'] - bg) - 1):+.1f}% |")
    text = "\n".join(lines)
    print(text)
    (out / "table.md").write_text(text + "\n")
    (out / "results.json").write_text(json.dumps({"base": base_losses, "results": results, "args": vars(args)},
                                                 indent=2))


if __name__ == "__main__":
    main()
