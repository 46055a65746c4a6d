"""Forgetting experiment (issue 17): a domain fine-tune that forgets, and what replay and EWC recover.

SmolLM2-135M-Instruct fine-tuned on Chinese medical QA (Huatuo); general ability = answer
perplexity on held-out English general instructions (alpaca_en), a gauge on which the base model is
far from chance. Variants: plain, replay 10% (counted in samples), EWC, replay + EWC: same steps,
seed, data and hyper-parameters; only the mitigation differs. Every change has a 95% interval from
a paired bootstrap over the eval records (the same records before and after, and across variants),
and so has the share of the plain run's general loss that a mitigation recovers.

    python bench/forgetting_table.py                       # full fine-tuning, 80 steps (~35 min on 2 cores)
    python bench/forgetting_table.py --method lora --lr 1e-3 --steps 30    # the old, non-forgetting setting

Quality numbers (perplexities), not speed; the load average is printed anyway.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import random
import sys
import time
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))

from seektune.config import Config, EWCConfig, ReplayConfig  # noqa: E402
from seektune.data.collate import PadCollator  # noqa: E402
from seektune.data.io import read_records, write_jsonl  # noqa: E402
from seektune.data.templates import get_template  # noqa: E402
from seektune.models.loader import load_model  # noqa: E402
from seektune.stages import run_stage  # noqa: E402
from seektune.stages.sft import tokenised_rows  # noqa: E402
from seektune.utils.threads import configure_threads  # noqa: E402

SHARED = REPO.parent / "shared" / "data"
ITERS = 10_000


def load() -> str:
    return "{:.2f} {:.2f} {:.2f}".format(*os.getloadavg())


def prepare(out: Path, n_train: int, n_domain: int, n_general: int, seed: int = 0) -> dict[str, Path]:
    med = [r.data for r in read_records(SHARED / "sft" / "huatuo_med_zh.alpaca.jsonl")
           if 10 <= len(r.data.get("output", "")) <= 200]
    gen = [r.data for r in read_records(SHARED / "general" / "alpaca_en_demo.json")
           if 10 <= len(r.data.get("output", "")) <= 600]
    rng = random.Random(seed)
    rng.shuffle(med)
    rng.shuffle(gen)
    files = {"train": med[:n_train], "domain_eval": med[n_train:n_train + n_domain],
             "general_eval": gen[:n_general], "general_pool": gen[n_general:]}
    paths = {}
    for k, rows in files.items():
        paths[k] = out / "data" / f"{k}.jsonl"
        write_jsonl(paths[k], rows)
    return paths


@torch.no_grad()
def record_losses(model, rows, pad_id, bs=8) -> np.ndarray:
    """Per record: (summed answer-token loss, answer tokens); exp(sum/sum) over records is the perplexity."""
    coll = PadCollator(pad_id)
    model.eval()
    out = []
    for i in range(0, len(rows), bs):
        b = coll(rows[i:i + bs])
        logits = model(input_ids=b["input_ids"], attention_mask=b["attention_mask"]).logits[:, :-1].float()
        labels = b["labels"][:, 1:]
        ce = torch.nn.functional.cross_entropy(logits.transpose(1, 2), labels, ignore_index=-100, reduction="none")
        for j in range(labels.shape[0]):
            out.append((float(ce[j].sum()), int((labels[j] != -100).sum())))
    return np.array(out)


def ppl(rec: np.ndarray, idx=None) -> np.ndarray | float:
    """Perplexity of the records (or of each bootstrap resample when idx is (iters, n))."""
    if idx is None:
        return math.exp(rec[:, 0].sum() / rec[:, 1].sum())
    return np.exp(rec[idx, 0].sum(axis=1) / rec[idx, 1].sum(axis=1))


def ci(samples: np.ndarray) -> tuple[float, float]:
    lo, hi = np.percentile(samples, [2.5, 97.5])
    return float(lo), float(hi)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--method", default="full", choices=("full", "lora"))
    ap.add_argument("--steps", type=int, default=80)
    ap.add_argument("--lr", type=float, default=1e-4)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--n-train", type=int, default=1200)
    ap.add_argument("--domain-eval", type=int, default=80)
    ap.add_argument("--general-eval", type=int, default=120)
    ap.add_argument("--replay", type=float, default=0.1)
    ap.add_argument("--ewc-lambda", type=float, default=5000.0)
    ap.add_argument("--ewc-samples", type=int, default=100)
    ap.add_argument("--variants", default="plain,replay,ewc,replay+ewc")
    ap.add_argument("--out", default="runs/bench_forgetting")
    args = ap.parse_args()
    if not SHARED.exists():
        sys.exit("needs ../shared/data")
    out = Path(args.out)
    paths = prepare(out, args.n_train, args.domain_eval, args.general_eval)
    threads = configure_threads(None)
    replay = ReplayConfig(file=str(paths["general_pool"]), ratio=args.replay)
    ewc = EWCConfig(data=str(paths["general_pool"]), samples=args.ewc_samples, lam=args.ewc_lambda)
    every = {"plain": {}, "replay": {"replay": replay}, "ewc": {"ewc": ewc}, "replay+ewc": {"replay": replay, "ewc": ewc}}
    variants = {k: every[k] for k in args.variants.split(",")}
    adapter = ({"method": "full"} if args.method == "full" else {"method": "lora", "r": 16, "alpha": 32, "dropout": 0.0})

    def config(name: str) -> Config:
        return Config.model_validate({
            "model": {"name_or_path": "smollm2-135m-instruct"}, "adapter": adapter,
            "data": {"train": str(paths["train"]), "eval": str(paths["domain_eval"]), "max_length": 192},
            "train": {"output_dir": str(out / name.replace("+", "_and_")), "max_steps": args.steps,
                      "batch_size": args.batch_size, "lr": args.lr, "min_lr": args.lr / 10, "warmup_steps": 5,
                      "logging_steps": 5, "seed": 0},
            # this table measures its own perplexities; no generation eval at the end
            "eval": {"before_after": False, "report": False, "samples": 1, "max_new_tokens": 4},
        })

    base_cfg = config("base")
    model, tok, _ = load_model(base_cfg.model, log=lambda *_: None)
    template = get_template(base_cfg.data.template, tok)
    dom_rows = tokenised_rows(base_cfg, tok, template, str(paths["domain_eval"]), 10_000)
    gen_rows = tokenised_rows(base_cfg, tok, template, str(paths["general_eval"]), 10_000)
    base = {"domain": record_losses(model, dom_rows, tok.pad_token_id),
            "general": record_losses(model, gen_rows, tok.pad_token_id)}
    del model
    print(f"base: domain ppl {ppl(base['domain']):.3f} ({len(dom_rows)} records), general ppl "
          f"{ppl(base['general']):.3f} ({len(gen_rows)} records); load {load()}", flush=True)

    after, runs = {}, []
    for name, extra in variants.items():
        cfg = config(name)
        for k, v in extra.items():
            setattr(cfg.train, k, v)
        t0, l0 = time.time(), load()
        res = run_stage(cfg, overwrite=True, progress=False)
        m = res.trainer.model
        after[name] = {"domain": record_losses(m, dom_rows, tok.pad_token_id),
                       "general": record_losses(m, gen_rows, tok.pad_token_id)}
        runs.append({"variant": name, "steps": res.trainer.state.global_step, "seconds": round(time.time() - t0, 1),
                     "load_before": l0, "load_after": load(), "data": res.summary.get("data", {})})
        print(json.dumps({**runs[-1], "domain_ppl": ppl(after[name]["domain"]),
                          "general_ppl": ppl(after[name]["general"])}), flush=True)
        del res, m

    rng = np.random.default_rng(0)
    idx = {s: rng.integers(0, len(base[s]), size=(ITERS, len(base[s]))) for s in ("domain", "general")}
    boot_base = {s: ppl(base[s], idx[s]) for s in idx}
    rise = {}
    rows = []
    for name in variants:
        r = {"variant": name}
        for s in ("domain", "general"):
            rel = ppl(after[name][s], idx[s]) / boot_base[s] - 1  # relative perplexity change, per resample
            r[s] = {"base": ppl(base[s]), "after": ppl(after[name][s]),
                    "change": ppl(after[name][s]) / ppl(base[s]) - 1, "ci": ci(rel)}
            if s == "general":
                rise[name] = rel
        rows.append(r)
    for r in rows:
        if "plain" in rise and r["variant"] != "plain":
            rec = 1 - rise[r["variant"]] / rise["plain"]
            point = 1 - r["general"]["change"] / next(x for x in rows if x["variant"] == "plain")["general"]["change"]
            r["recovered"] = {"value": point, "ci": ci(rec)}

    def pct(x):
        return f"{100 * x:+.1f}%"

    lines = [f"SmolLM2-135M-Instruct, {args.method} fine-tuning, {args.steps} steps x batch {args.batch_size}, "
             f"lr {args.lr:g}, on {args.n_train} Huatuo records; domain = {len(dom_rows)} held-out Huatuo answers, "
             f"general = {len(gen_rows)} held-out alpaca_en answers (perplexity of the answer tokens); "
             f"95% intervals: paired bootstrap over records ({ITERS} resamples); {threads} threads.", "",
             f"Base: domain ppl {ppl(base['domain']):.2f}, general ppl {ppl(base['general']):.2f}.", "",
             "| variant | domain ppl | domain change [95%] | general ppl | general change [95%] | general loss recovered [95%] |",
             "|---|---|---|---|---|---|"]
    for r in rows:
        d, g = r["domain"], r["general"]
        rec = (f"{100 * r['recovered']['value']:.0f}% [{100 * r['recovered']['ci'][0]:.0f}%, "
               f"{100 * r['recovered']['ci'][1]:.0f}%]" if "recovered" in r else "-")
        lines.append(f"| {r['variant']} | {d['base']:.2f} -> {d['after']:.2f} | {pct(d['change'])} "
                     f"[{pct(d['ci'][0])}, {pct(d['ci'][1])}] | {g['base']:.2f} -> {g['after']:.2f} | "
                     f"{pct(g['change'])} [{pct(g['ci'][0])}, {pct(g['ci'][1])}] | {rec} |")
    text = "\n".join(lines)
    print(text)
    (out / "table.md").write_text(text + "\n")
    (out / "results.json").write_text(json.dumps({"args": vars(args), "rows": rows, "runs": runs}, indent=2, default=str))


if __name__ == "__main__":
    main()
