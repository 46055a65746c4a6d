"""Forgetting experiment (issue 17): a domain fine-tune that forgets, and what replay and EWC recover.

SmolLM2-135M-Instruct fine-tuned on Chinese medical QA (Huatuo); general ability = answer
perplexity on held-out English and Chinese general instructions (alpaca_en, alpaca_zh), gauges on
which the base model is far from chance. Replay and the EWC Fisher draw from the rest of both. Variants: plain, replay 10% (counted in samples), EWC, replay + EWC: same steps,
seed, data and hyper-parameters; only the mitigation differs. Every change has a 95% interval from
a paired bootstrap over the eval records (the same records before and after, and across variants),
and so has the share of the plain run's general loss that a mitigation recovers.

    python bench/forgetting_table.py                       # full fine-tuning, 80 steps at 3e-4 (~75 min on 2 cores)
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
from seektune.eval.report import read_metrics  # noqa: E402
from seektune.models.loader import load_model  # noqa: E402
from seektune.stages import run_stage  # noqa: E402
from seektune.stages.sft import tokenised_rows  # noqa: E402
from seektune.utils.threads import configure_threads  # noqa: E402

SHARED = REPO.parent / "shared" / "data"
ITERS = 10_000


def load() -> str:
    return "{:.2f} {:.2f} {:.2f}".format(*os.getloadavg())


def prepare(out: Path, n_train: int, n_domain: int, n_general: int, seed: int = 0) -> dict[str, Path]:
    """Domain train/eval from Huatuo; two general gauges (held-out English and Chinese general
    instructions); the rest of both general sets is the replay / EWC pool."""
    med = [r.data for r in read_records(SHARED / "sft" / "huatuo_med_zh.alpaca.jsonl")
           if 10 <= len(r.data.get("output", "")) <= 200]
    gen = {lang: [r.data for r in read_records(SHARED / "general" / f"alpaca_{lang}_demo.json")
                  if 10 <= len(r.data.get("output", "")) <= 600] for lang in ("en", "zh")}
    rng = random.Random(seed)
    rng.shuffle(med)
    for rows in gen.values():
        rng.shuffle(rows)
    pool = gen["en"][n_general:] + gen["zh"][n_general:]
    rng.shuffle(pool)
    files = {"train": med[:n_train], "domain_eval": med[n_train:n_train + n_domain],
             "general_eval": gen["en"][:n_general], "general_zh_eval": gen["zh"][:n_general], "general_pool": pool}
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


SETS: list[str] = []


def cached(path: Path, compute) -> dict[str, np.ndarray]:
    """Per-record losses of one model on every gauge, kept on disk so an interrupted table resumes."""
    if path.exists():
        with np.load(path) as z:
            return {k: z[k] for k in z.files}
    rec = compute()
    path.parent.mkdir(parents=True, exist_ok=True)
    np.savez(path, **rec)
    return rec


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
    ap.add_argument("--lr", type=float, default=3e-4)
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
                      "logging_steps": 5, "save_steps": None, "seed": 0},
            # this table measures its own perplexities; no generation eval at the end
            "eval": {"before_after": False, "report": False, "samples": 1, "max_new_tokens": 4},
        })

    base_cfg = config("base")
    model, tok, _ = load_model(base_cfg.model, log=lambda *_: None)
    template = get_template(base_cfg.data.template, tok)
    dom_rows = tokenised_rows(base_cfg, tok, template, str(paths["domain_eval"]), 10_000)
    gauges = {"domain": dom_rows,
              "general": tokenised_rows(base_cfg, tok, template, str(paths["general_eval"]), 10_000),
              "general_zh": tokenised_rows(base_cfg, tok, template, str(paths["general_zh_eval"]), 10_000)}
    SETS[:] = list(gauges)

    def measure(m) -> dict[str, np.ndarray]:
        return {s: record_losses(m, rows, tok.pad_token_id) for s, rows in gauges.items()}

    base = cached(out / "records" / "base.npz", lambda: measure(model))
    del model
    print("base: " + ", ".join(f"{s} ppl {ppl(base[s]):.3f} ({len(gauges[s])} records)" for s in SETS)
          + f"; load {load()}", flush=True)

    after, runs = {}, []
    for name, extra in variants.items():
        done = out / "records" / f"{name.replace('+', '_and_')}.npz"
        meta = done.with_suffix(".json")
        if done.exists() and meta.exists():  # finished by an earlier, interrupted invocation
            after[name] = cached(done, None)
            runs.append(json.loads(meta.read_text()))
            print(f"{name}: kept from {done}", flush=True)
            continue
        cfg = config(name)
        for k, v in extra.items():
            setattr(cfg.train, k, v)
        t0, l0 = time.time(), load()
        res = run_stage(cfg, overwrite=True, progress=False)
        m = res.trainer.model
        after[name] = cached(done, lambda: measure(m))
        ewc_pen = [r["ewc_penalty"] for r in read_metrics(Path(cfg.train.output_dir) / "metrics.jsonl")
                   if "ewc_penalty" in r]
        runs.append({"variant": name, "steps": res.trainer.state.global_step, "seconds": round(time.time() - t0, 1),
                     "load_before": l0, "load_after": load(), "train_loss": res.summary.get("train_loss"),
                     "ewc_penalty_last": ewc_pen[-1] if ewc_pen else None, "data": res.summary.get("data", {})})
        meta.write_text(json.dumps(runs[-1], default=str))
        print(json.dumps({**runs[-1], **{f"{s}_ppl": ppl(after[name][s]) for s in SETS}}), flush=True)
        del res, m

    rng = np.random.default_rng(0)
    idx = {s: rng.integers(0, len(base[s]), size=(ITERS, len(base[s]))) for s in SETS}
    boot_base = {s: ppl(base[s], idx[s]) for s in idx}
    rise = {s: {} for s in SETS}
    rows = []
    for name in variants:
        r = {"variant": name}
        for s in SETS:
            rel = ppl(after[name][s], idx[s]) / boot_base[s] - 1  # relative perplexity change, per resample
            r[s] = {"base": ppl(base[s]), "after": ppl(after[name][s]),
                    "change": ppl(after[name][s]) / ppl(base[s]) - 1, "ci": ci(rel)}
            rise[s][name] = rel
        rows.append(r)
    plain = next((x for x in rows if x["variant"] == "plain"), None)
    for r in rows:
        if plain is None or r["variant"] == "plain":
            continue
        for s in SETS[1:]:  # the general gauges: what share of the plain run's loss a mitigation avoids
            rec = 1 - rise[s][r["variant"]] / rise[s]["plain"]
            point = 1 - r[s]["change"] / plain[s]["change"]
            r.setdefault("recovered", {})[s] = {"value": point, "ci": ci(rec)}

    def pct(x):
        return f"{100 * x:+.1f}%"

    names = {"domain": "domain (Huatuo)", "general": "general EN (alpaca_en)", "general_zh": "general ZH (alpaca_zh)"}
    lines = [f"SmolLM2-135M-Instruct, {args.method} fine-tuning, {args.steps} steps x batch {args.batch_size}, "
             f"lr {args.lr:g}, on {args.n_train} Huatuo records; perplexity of the answer tokens on "
             + ", ".join(f"{len(gauges[s])} held-out {names[s]}" for s in SETS)
             + f" answers; 95% intervals: paired bootstrap over records ({ITERS} resamples); {threads} threads.", "",
             "Base: " + ", ".join(f"{names[s]} ppl {ppl(base[s]):.2f}" for s in SETS) + ".", "",
             "| variant | " + " | ".join(f"{names[s]} ppl change [95%]" for s in SETS)
             + " | " + " | ".join(f"{names[s]} loss avoided [95%]" for s in SETS[1:]) + " |",
             "|---" * (2 * len(SETS)) + "|"]

    def share(x):
        return f"{100 * x['value']:.0f}% [{100 * x['ci'][0]:.0f}%, {100 * x['ci'][1]:.0f}%]"

    for r in rows:
        cells = [f"{r[s]['base']:.2f} -> {r[s]['after']:.2f}, {pct(r[s]['change'])} "
                 f"[{pct(r[s]['ci'][0])}, {pct(r[s]['ci'][1])}]" for s in SETS]
        cells += [share(r["recovered"][s]) if "recovered" in r else "-" for s in SETS[1:]]
        lines.append(f"| {r['variant']} | " + " | ".join(cells) + " |")
    text = "\n".join(lines)
    print(text)
    (out / "table.md").write_text(text + "\n")
    (out / "results.json").write_text(json.dumps({"args": vars(args), "rows": rows, "runs": runs}, indent=2, default=str))


if __name__ == "__main__":
    main()
