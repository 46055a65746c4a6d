"""SFT throughput and memory: seektune against the seeds' naive HF recipe and LLaMA-Factory (issue 11).

One LoRA SFT job (SmolLM2-135M-Instruct, r=16, alpha=32, all linear layers, max length 512,
batch 8, fp32 on CPU, the first 1,000 records of alpaca_zh_demo) run by each setup in its own
process, one after the other, with the same model folder and data. Per setup: real (non-pad)
tokens/s and trained (labelled) tokens/s over the timed steps after warm-up, padding share, peak
RSS, last loss, and MFU against this machine's fp32 matmul peak, measured in the same run.

    python bench/sft_throughput.py                       # the table (about 90 min for 30 steps each)
    python bench/sft_throughput.py --steps 10 --setups seektune,naive
    python bench/sft_throughput.py --levers              # seektune with one lever off at a time

Model FLOPs (docs/benchmarks.md, "Issue 11"): per real token 4 x frozen linear weights
(forward 2N, backward 2N for the input gradient) + 6 x LoRA weights (4N when trained); the LM
head 4 x V x d per *trained* token only (positions without a label need no logits); attention
3 x 2 x heads x head_dim x L(L+1) per sample of length L and layer (causal QK^T and AV, backward
twice the forward). Recomputation (activation checkpointing) is not model FLOPs.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO / "src") not in sys.path:
    sys.path.insert(0, str(REPO / "src"))
SHARED = REPO.parent / "shared" / "data"
LF_VENV = REPO / "bench" / "peers" / "llamafactory" / ".venv"
SETUPS = {
    "seektune": "seektune defaults (packing, label-only fused loss)",
    "naive": "HF Trainer + peft, padding='max_length' 512, labels = input_ids (the seeds' recipe)",
    "lf": "LLaMA-Factory 0.9.5 defaults (packing off)",
    "lf-packing": "LLaMA-Factory 0.9.5, packing: true",
    # equal data (issue 22): LF's packing drops the records longer than the cutoff (285 of 1,000 here) while
    # seektune truncates them; the -fit setups give both tools only the records that fit, the same for both
    "seektune-fit": "seektune defaults on the records that fit in max_length",
    "lf-packing-fit": "LLaMA-Factory 0.9.5, packing: true, on the records that fit in max_length",
    # seektune with train.compile: true (auto compiles runs of >= 200 steps; this job times 3)
    "seektune-compile": "seektune defaults + train.compile: true (each decoder layer compiled)",
    "seektune-compile-fit": "seektune + train.compile: true, on the records that fit in max_length",
}
LEVERS = {  # seektune with one lever changed, to measure what each is worth
    "seektune": {},
    "seektune-no-fused-loss": {"train.fused_loss": False},
    "seektune-no-packing": {"data.packing": False},
    "seektune-grad-ckpt-all": {"train.gradient_checkpointing": True},
    "seektune-grad-ckpt-off": {"train.gradient_checkpointing": False},
    # issue 11's glibc levers (glibc named: the default allocator is jemalloc where installed)
    "seektune-thp": {"train.allocator": "glibc", "env:THP_MEM_ALLOC_ENABLE": "1"},  # torch's transparent huge pages
    "seektune-mmap-16mb": {"train.allocator": "glibc", "env:SEEKTUNE_MMAP_THRESHOLD_KB": "16384"},
    "seektune-mmap-4mb": {"train.allocator": "glibc", "env:SEEKTUNE_MMAP_THRESHOLD_KB": "4096"},
    # issue 22: another malloc instead of glibc's trade of memory for page faults (train.allocator;
    # train.return_freed_memory auto = true on glibc, false on jemalloc/tcmalloc)
    "seektune-glibc": {"train.allocator": "glibc"},
    "seektune-glibc-keep": {"train.allocator": "glibc", "train.return_freed_memory": False},
    "seektune-jemalloc": {"train.allocator": "jemalloc"},
    "seektune-jemalloc-return": {"train.allocator": "jemalloc", "train.return_freed_memory": True},
    "seektune-tcmalloc": {"train.allocator": "tcmalloc"},
    "seektune-tcmalloc-return": {"train.allocator": "tcmalloc", "train.return_freed_memory": True},
    # torch's own transparent huge pages (madvise on its buffers >= 2 MB) on top of tcmalloc's page reuse
    "seektune-tcmalloc-thp": {"train.allocator": "tcmalloc", "env:THP_MEM_ALLOC_ENABLE": "1"},
    # jemalloc's own defaults (arenas cache freed pages, purged after 10 s) instead of torch run_cpu's
    # oversize_threshold:1, which sends every allocation to the arena that returns pages at once
    "seektune-jemalloc-defaults": {"train.allocator": "jemalloc", "env:MALLOC_CONF": "background_thread:true"},
    # regional torch.compile (engine/compile.py); its ~1 min compile falls in the warm-up step
    "seektune-compile": {"train.compile": True},
    "seektune-compile-fit": {"train.compile": True},
}
JOB = {"r": 16, "alpha": 32, "max_length": 512, "batch": 8, "lr": 1e-4, "records": 1000, "seed": 42}


# -- the machine --------------------------------------------------------------------------------
def host_cpu() -> str:
    """The CPU the table ran on: tables from different hosts of the same VM kind differ by up to 1.4x."""
    info = {}
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            k, _, v = line.partition(":")
            info.setdefault(k.strip(), v.strip())
    except OSError:
        return "unknown CPU"
    flags = set(info.get("flags", "").split())
    isa = "AVX-512" if "avx512f" in flags else "AVX2" if "avx2" in flags else "no AVX2"
    return (f"{info.get('model name', '?')} (family {info.get('cpu family', '?')} model {info.get('model', '?')}, "
            f"{isa}, {float(info.get('cpu MHz', 0)):.0f} MHz)")


def matmul_peak_gflops(threads: int, seconds: float = 3.0) -> float:
    """Best fp32 GEMM rate over square sizes, with the threads the jobs use."""
    import torch

    torch.set_num_threads(threads)
    best = 0.0
    for n in (1024, 2048, 3072, 2048):
        a, b = torch.randn(n, n), torch.randn(n, n)
        a @ b
        k, t0 = 0, time.perf_counter()
        while time.perf_counter() - t0 < seconds / 3:
            a @ b
            k += 1
        best = max(best, 2 * n ** 3 * k / (time.perf_counter() - t0) / 1e9)
    return best


def model_flops(model_dir: str, r: int) -> dict:
    cfg = json.loads((Path(model_dir) / "config.json").read_text())
    d, inter, layers = cfg["hidden_size"], cfg["intermediate_size"], cfg["num_hidden_layers"]
    heads = cfg["num_attention_heads"]
    hd = cfg.get("head_dim") or d // heads
    kv = cfg.get("num_key_value_heads", heads)
    shapes = [(d, heads * hd), (d, kv * hd), (d, kv * hd), (heads * hd, d), (d, inter), (d, inter), (inter, d)]
    frozen = layers * sum(i * o for i, o in shapes)
    lora = layers * sum(r * (i + o) for i, o in shapes)
    return {"per_real_token": 4 * frozen + 6 * lora, "per_trained_token": 4 * cfg["vocab_size"] * d,
            "attn_per_l_l1": 3 * 2 * heads * hd * layers, "frozen_params": frozen, "lora_params": lora,
            "head_params": cfg["vocab_size"] * d}


# -- data and model shared by all setups --------------------------------------------------------
def portable_model_dir(src: Path, dest: Path) -> str:
    """seektune's SmolLM2 folder, made readable by the peers' transformers 4.57 too: the weights are
    linked, not copied; `rope_theta` is written at the top level as well (4.57 does not read
    transformers 5's `rope_parameters` and would silently fall back to 10,000), and the tokenizer
    names a class both versions know."""
    dest.mkdir(parents=True, exist_ok=True)
    for f in src.iterdir():
        if f.name in ("config.json", "tokenizer_config.json") or (dest / f.name).exists():
            continue
        try:
            os.link(f, dest / f.name)
        except OSError:
            import shutil

            shutil.copy2(f, dest / f.name)
    cfg = json.loads((src / "config.json").read_text())
    rope = cfg.get("rope_parameters") or {}
    if "rope_theta" in rope:
        cfg["rope_theta"] = rope["rope_theta"]
    (dest / "config.json").write_text(json.dumps(cfg, indent=1))
    tc = json.loads((src / "tokenizer_config.json").read_text())
    tc["tokenizer_class"] = "GPT2TokenizerFast"
    (dest / "tokenizer_config.json").write_text(json.dumps(tc, indent=1, ensure_ascii=False))
    return str(dest)


def prepare(out: Path) -> tuple[str, Path]:
    from seektune.models.presets import resolve_model_path

    model_dir = portable_model_dir(Path(resolve_model_path("smollm2-135m-instruct", log=lambda *a: None)),
                                   out / "model")
    rows = json.loads((SHARED / "general" / "alpaca_zh_demo.json").read_text(encoding="utf-8"))[:JOB["records"]]
    data_dir = out / "data"
    data_dir.mkdir(parents=True, exist_ok=True)
    (data_dir / "alpaca.json").write_text(json.dumps(rows, ensure_ascii=False), encoding="utf-8")
    (data_dir / "dataset_info.json").write_text(json.dumps({"bench_alpaca": {"file_name": "alpaca.json"}}))
    fit_dir = out / "data_fit"  # the records whose chat-templated text fits in max_length tokens
    fit_dir.mkdir(parents=True, exist_ok=True)
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(model_dir)
    def length(r: dict) -> int:
        text = tok.apply_chat_template([{"role": "user", "content": (r["instruction"] + "\n" + r.get("input", "")).strip()},
                                        {"role": "assistant", "content": r["output"]}], tokenize=False)
        return len(tok(text, add_special_tokens=False)["input_ids"])

    fit = [r for r in rows if length(r) <= JOB["max_length"]]
    (fit_dir / "alpaca.json").write_text(json.dumps(fit, ensure_ascii=False), encoding="utf-8")
    (fit_dir / "dataset_info.json").write_text(json.dumps({"bench_alpaca": {"file_name": "alpaca.json"}}))
    print(f"records: {len(rows)}; {len(fit)} fit in {JOB['max_length']} tokens (the -fit setups' data)", flush=True)
    return model_dir, data_dir


# -- children: one setup each -------------------------------------------------------------------
def child_seektune(a, overrides: dict) -> None:
    sys.path.insert(0, str(REPO / "bench"))
    from seektune.engine.allocator import active, reexec_with

    # what `seektune train` does first: re-execute on the configured malloc (default auto)
    reexec_with(overrides.get("train.allocator", "auto"), overrides.get("train.return_freed_memory", "auto"))
    print(f"allocator: {active()}", flush=True)
    from _meter import StepMeter, install

    from seektune.config import Config
    from seektune.stages import run_stage

    cfg = Config.model_validate({
        "model": {"name_or_path": a.model_dir},
        "adapter": {"method": "lora", "r": JOB["r"], "alpha": JOB["alpha"], "dropout": 0.0},
        "data": {"train": str(Path(a.data_dir) / "alpaca.json"),
                 "max_length": JOB["max_length"], "eval_ratio": 0.0},
        "train": {"output_dir": str(Path(a.out) / a.setup), "max_steps": a.warmup + a.steps,
                  "batch_size": JOB["batch"], "lr": JOB["lr"], "logging_steps": 1, "seed": JOB["seed"]},
        "eval": {"before_after": False, "report": False},
    })
    for key, v in overrides.items():
        sec, k = key.split(".")
        setattr(getattr(cfg, sec), k, v)
    meter = StepMeter(None, a.result, a.setup)
    install(meter)
    import transformers

    orig_init = transformers.Trainer.__init__

    def init(self, *ia, **kw):  # the pad id of the run's tokenizer, for packed rows without a mask
        orig_init(self, *ia, **kw)
        meter.pad = self.processing_class.pad_token_id

    transformers.Trainer.__init__ = init
    run_stage(cfg, overwrite=True, progress=False, callbacks=[meter])
    meter.write()


def child_naive(a) -> None:
    """The seeds' recipe: tokenizer padding to max_length, labels = input_ids, stock Trainer + peft."""
    sys.path.insert(0, str(REPO / "bench"))
    import torch
    from _meter import StepMeter, install
    from datasets import Dataset
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer, Trainer, TrainingArguments, set_seed

    torch.set_num_threads(len(os.sched_getaffinity(0)))
    set_seed(JOB["seed"])
    tok = AutoTokenizer.from_pretrained(a.model_dir)
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    rows = json.loads((Path(a.data_dir) / "alpaca.json").read_text(encoding="utf-8"))
    texts = [tok.apply_chat_template([{"role": "user", "content": (r["instruction"] + "\n" + r["input"]).strip()},
                                      {"role": "assistant", "content": r["output"]}], tokenize=False) for r in rows]

    def encode(batch):
        enc = tok(batch["text"], padding="max_length", max_length=JOB["max_length"], truncation=True)
        enc["labels"] = [list(x) for x in enc["input_ids"]]
        return enc

    ds = Dataset.from_dict({"text": texts}).map(encode, batched=True, remove_columns=["text"])
    model = AutoModelForCausalLM.from_pretrained(a.model_dir, dtype=torch.float32)
    model = get_peft_model(model, LoraConfig(r=JOB["r"], lora_alpha=JOB["alpha"], lora_dropout=0.0,
                                             target_modules="all-linear", task_type="CAUSAL_LM"))
    meter = StepMeter(tok.pad_token_id, a.result, a.setup)
    install(meter)
    args = TrainingArguments(output_dir=str(Path(a.out) / a.setup), per_device_train_batch_size=JOB["batch"],
                             max_steps=a.warmup + a.steps, learning_rate=JOB["lr"], logging_steps=1,
                             report_to="none", save_strategy="no", use_cpu=True, seed=JOB["seed"])
    Trainer(model=model, args=args, train_dataset=ds, callbacks=[meter]).train()
    meter.write()


def run_child(setup: str, a, model_dir: str, data_dir: Path, out: Path, overrides: dict | None = None) -> dict:
    result = out / f"{setup}.json"
    if setup.endswith("-fit"):
        data_dir = out / "data_fit"
    log = out / f"{setup}.log"
    common = ["--model-dir", model_dir, "--data-dir", str(data_dir), "--out", str(out), "--result", str(result),
              "--steps", str(a.steps), "--warmup", str(a.warmup), "--setup", setup]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false", "WANDB_DISABLED": "true"}
    overrides = dict(overrides or {})
    for k in [k for k in overrides if k.startswith("env:")]:
        env[k[4:]] = str(overrides.pop(k))
    if setup.startswith("lf"):
        py = LF_VENV / "bin" / "python"
        if not py.exists():
            return {"setup": setup, "error": f"LLaMA-Factory not installed: run bench/install_llamafactory.sh ({py})"}
        cmd = [str(py), str(REPO / "bench" / "lf_driver.py"), *common, "--job", json.dumps(JOB),
               *(["--packing"] if setup.startswith("lf-packing") else [])]
    else:
        cmd = [sys.executable, __file__, "--child", *common, "--overrides", json.dumps(overrides or {})]
        if setup.startswith("seektune"):  # the malloc `seektune train` would re-execute itself on (train.allocator)
            from seektune.engine.allocator import choose, preload_env, returns_freed

            path, name = choose(overrides.get("train.allocator", "auto"))
            if path:
                env = preload_env(path, name, returns_freed(overrides.get("train.return_freed_memory", "auto"), name),
                                  env)
    t0 = time.time()
    with open(log, "w") as f:
        rc = subprocess.call(cmd, stdout=f, stderr=subprocess.STDOUT, env=env)
    if rc != 0 or not result.exists():
        tail = log.read_text(errors="replace").splitlines()[-5:]
        return {"setup": setup, "error": f"exit {rc}; see {log}: " + " | ".join(tail)}
    res = json.loads(result.read_text())
    res["wall_seconds"] = time.time() - t0
    return res


# -- the table ----------------------------------------------------------------------------------
def summarise(res: dict, warmup: int, flops: dict, peak: float) -> dict:
    if "error" in res:
        return res
    timed = [s for s in res["steps"] if s["step"] > warmup]
    sec = sum(s["seconds"] for s in timed)
    tot = {k: sum(s[k] for s in timed) for k in ("real", "trained", "slots", "attn_sq", "samples")}
    model_flops = (flops["per_real_token"] * tot["real"] + flops["per_trained_token"] * tot["trained"]
                   + flops["attn_per_l_l1"] * tot["attn_sq"])
    last = max(res["losses"], key=int) if res["losses"] else None
    return {"setup": res["setup"], "steps": len(timed), "seconds_per_step": sec / max(1, len(timed)),
            "real_tok_s": tot["real"] / sec, "trained_tok_s": tot["trained"] / sec,
            "padding_share": 1 - tot["real"] / max(1, tot["slots"]), "trained_share": tot["trained"] / max(1, tot["real"]),
            "peak_rss_gb": res["peak_rss_gb"], "loss": res["losses"][last] if last else None,
            "gflops_per_s": model_flops / sec / 1e9, "mfu": model_flops / sec / 1e9 / peak,
            "samples_per_step": tot["samples"] / max(1, len(timed))}


def table(rows: list[dict], base: str) -> str:
    ref = next((r for r in rows if r["setup"] == base and "error" not in r), None)
    lines = ["| setup | real tok/s | trained tok/s | padding | s/step | peak RSS GB | last loss | GFLOP/s | MFU | "
             f"{base} / setup (real tok/s) |", "|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        if "error" in r:
            lines.append(f"| {r['setup']} | failed: {r['error'][:200]} |||||||||")
            continue
        ratio = f"{ref['real_tok_s'] / r['real_tok_s']:.2f}x" if ref else "-"
        lines.append(f"| {r['setup']} | {r['real_tok_s']:.1f} | {r['trained_tok_s']:.1f} | "
                     f"{100 * r['padding_share']:.1f}% | {r['seconds_per_step']:.1f} | {r['peak_rss_gb']:.2f} | "
                     f"{r['loss']:.4f} | {r['gflops_per_s']:.1f} | {100 * r['mfu']:.1f}% | {ratio} |")
    return "\n".join(lines)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=30, help="timed steps per setup")
    ap.add_argument("--warmup", type=int, default=3, help="untimed steps first")
    ap.add_argument("--setups", default=",".join(SETUPS), help=f"comma list of {', '.join(SETUPS)}")
    ap.add_argument("--levers", action="store_true", help="run seektune with each lever off instead")
    ap.add_argument("--out", default="runs/bench_throughput")
    ap.add_argument("--reuse", action="store_true", help="take setups already measured in --out instead of rerunning")
    ap.add_argument("--peak", type=float, default=None, help="a matmul peak (GFLOP/s) measured earlier in the session")
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    for k in ("--model-dir", "--data-dir", "--result", "--setup", "--overrides"):
        ap.add_argument(k, help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.child:
        if a.setup == "naive":
            child_naive(a)
        else:
            child_seektune(a, json.loads(a.overrides or "{}"))
        return
    if not SHARED.exists():
        sys.exit("needs ../shared/data (alpaca_zh_demo.json)")
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    model_dir, data_dir = prepare(out)
    threads = len(os.sched_getaffinity(0))
    peak = matmul_peak_gflops(threads)
    print(f"fp32 matmul peak with {threads} threads: {peak:.1f} GFLOP/s", flush=True)
    flops = model_flops(model_dir, JOB["r"])
    if a.levers:
        names = a.setups.split(",") if a.setups != ",".join(SETUPS) else list(LEVERS)
        plan = {k: LEVERS[k] for k in names}
    else:
        plan = {s: LEVERS.get(s) for s in a.setups.split(",")}  # a lever named among the setups runs as one
    raw = []
    for setup, overrides in plan.items():
        print(f"running {setup} ({a.warmup} + {a.steps} steps) ...", flush=True)
        done = out / f"{setup}.json"
        if a.reuse and done.exists():  # a setup measured earlier in this session, same job
            raw.append(json.loads(done.read_text()))
        else:
            raw.append(run_child(setup, a, model_dir, data_dir, out, overrides))
        print(json.dumps(summarise(raw[-1], a.warmup, flops, peak)), flush=True)
    peak_end = matmul_peak_gflops(threads)
    best = max(peak, peak_end, a.peak or 0)  # MFU against the best rate seen: the conservative choice
    rows = [summarise(r, a.warmup, flops, best) for r in raw]
    text = (f"{time.strftime('%Y-%m-%d')}; {host_cpu()}; {threads} threads; fp32 matmul peak {best:.1f} GFLOP/s (best of "
            f"{peak:.1f} before and {peak_end:.1f} after the runs"
            + (f" and {a.peak:.1f} given by --peak" if a.peak else "") + f"); {a.warmup} warm-up + {a.steps} timed steps per setup; "
            f"model FLOPs {flops['per_real_token'] / 1e6:.0f} M per real token + "
            f"{flops['per_trained_token'] / 1e6:.0f} M per trained token + attention\n\n" + table(rows, "seektune"))
    print(text)
    name = "levers" if a.levers else "table"
    (out / f"{name}.md").write_text(text + "\n")
    (out / f"{name}.json").write_text(json.dumps({"rows": rows, "raw": raw, "peak_gflops": [peak, peak_end], "flops": flops,
                                                  "args": vars(a)}, indent=1))


if __name__ == "__main__":
    main()
