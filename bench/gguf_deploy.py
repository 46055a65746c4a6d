"""A run exported to GGUF f16 / q8_0 / q4_k_m and measured as users run it: llama.cpp vs the merged model.

For each quant, `seektune export RUN --format gguf --quant Q --data HELD_OUT` (the export's own checks
and perplexity table), then on N held-out prompts: max |logit diff| and top-1 agreement of llama.cpp vs
the merged fp32 model at every prompt position, same greedy answers (16 tokens), and generation speed:
llama.cpp (llama-cpp-python, one sequence at a time) vs `seektune serve` (HTTP, greedy, batch 1 and
8 concurrent clients). Prints markdown tables and the load average. Usage:

    seektune train examples/sft_smollm2_medical.yaml --set train.max_steps=30 --set train.output_dir=runs/deploy_smollm2
    PYTHONPATH=src python bench/gguf_deploy.py --run runs/deploy_smollm2 --out /tmp/gguf_bench
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
sys.path.insert(0, os.path.dirname(__file__))


def held_out(src: Path, skip: int, n: int, dst: Path) -> Path:
    """Records skip..skip+n of an SFT file (past what the run trained on) as a JSONL file."""
    from seektune.data.io import read_records

    recs = list(read_records(src, on_error="collect", errors=[]))[skip: skip + n]
    dst.write_text("".join(json.dumps(r.data, ensure_ascii=False) + "\n" for r in recs), encoding="utf-8")
    return dst


def table(rows: list[dict], cols: list[str]) -> str:
    return "\n".join(["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
                     + ["| " + " | ".join(str(r.get(c, "")) for c in cols) + " |" for r in rows])


def llama_cpp_speed(path: Path, prompt_ids: list[list[int]], max_tokens: int) -> dict:
    from llama_cpp import Llama

    llm = Llama(model_path=str(path), n_ctx=1024, n_batch=512, verbose=False, n_threads=os.cpu_count(), seed=0)
    llm.create_completion(prompt=prompt_ids[0], max_tokens=2, temperature=0)  # warm up
    toks, t0 = 0, time.perf_counter()
    for ids in prompt_ids:
        r = llm.create_completion(prompt=ids, max_tokens=max_tokens, temperature=0)
        toks += r["usage"]["completion_tokens"]
    wall = time.perf_counter() - t0
    llm.close()
    return {"tokens": toks, "wall_s": round(wall, 1), "tok_s": round(toks / wall, 1)}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--run", required=True)
    ap.add_argument("--out", default="/tmp/gguf_bench")
    ap.add_argument("--data", default="../shared/data/sft/huatuo_med_zh.alpaca.jsonl")
    ap.add_argument("--skip", type=int, default=4000, help="held-out records start here (the run used the first 2000)")
    ap.add_argument("--prompts", type=int, default=20)
    ap.add_argument("--quants", default="f16,q8_0,q4_k_m")
    ap.add_argument("--max-tokens", type=int, default=32)
    a = ap.parse_args()
    import torch
    from transformers import AutoModelForCausalLM

    from seektune.export.gguf import llamacpp
    from seektune.export.gguf.check import greedy
    from seektune.export.gguf.pipeline import export_gguf
    from seektune.export.measure import texts_from_file
    from seektune.export.source import resolve_source
    from seektune.data.templates import get_template
    from seektune.models import tokenizer_file

    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    data = held_out(Path(a.data), a.skip, 64, out / "held_out.jsonl")
    print(f"run {a.run}; held-out {data} (records {a.skip}..{a.skip + 63} of {a.data}); load average "
          f"{os.getloadavg()[0]:.2f}", flush=True)
    reports = {}
    for q in a.quants.split(","):
        reports[q] = export_gguf(a.run, out / q, q, overwrite=True, data=data, eval_samples=32)
    hf = out / a.quants.split(",")[0] / "hf"
    model = AutoModelForCausalLM.from_pretrained(str(hf), dtype=torch.float32).eval()
    tok = tokenizer_file.from_pretrained(hf)
    template = get_template(resolve_source(a.run).template, tok)
    from seektune.data.io import read_records
    from seektune.data.formats import detect_format, to_messages

    recs = list(read_records(data, on_error="collect", errors=[]))
    fmt = detect_format(recs[0].data)
    prompts = [template.prompt([m for m in to_messages(r, fmt) if m["role"] != "assistant"]) for r in recs[:a.prompts]]
    ids = [tok(p, add_special_tokens=False)["input_ids"] for p in prompts]
    with torch.no_grad():
        ref = [model(input_ids=torch.tensor([i])).logits[0].float() for i in ids]
    ref_greedy = [greedy(model, tok, p, 16) for p in prompts]
    rows = []
    for q, rep in reports.items():
        path = out / q / rep["gguf"]
        r = llamacpp.Runner(path, n_ctx=1024)
        diff, agree, n = 0.0, 0, 0
        same = 0
        for i, lg in zip(ids, ref):
            got = torch.from_numpy(r.logits(i))
            diff = max(diff, float((got - lg).abs().max()))
            agree += int((got.argmax(-1) == lg.argmax(-1)).sum())
            n += lg.shape[0]
        for i, g in zip(ids, ref_greedy):
            same += int(r.greedy(i, 16) == g)
        r.close()
        ppl = {row["variant"]: row for row in rep.get("perplexity", {}).get("rows", [])}
        mine = [v for k, v in ppl.items() if k.startswith(f"gguf {q}")] or [ppl.get("gguf f16 (llama.cpp)", {})]
        rows.append({"quant": q, "MB": round(rep["size_bytes"] / 1e6, 1), "max_logit_diff": round(diff, 3),
                     "max_logit": round(max(float(x.abs().max()) for x in ref), 1),
                     "top1": f"{100 * agree / n:.1f}%", "greedy_same": f"{same}/{len(ids)}",
                     "ppl": mine[0].get("ppl", "") if mine else "", "ppl_vs_f16": mine[0].get("ppl_vs_f16", "") if mine else "",
                     "export_check": "passed" if rep["passed"] else "FAILED"})
        print(f"{q}: done; load average {os.getloadavg()[0]:.2f}", flush=True)
    merged_ppl = next(iter(reports.values())).get("perplexity", {}).get("rows", [{}])[0].get("ppl", "")
    print(f"\n## agreement on {len(ids)} held-out prompts ({sum(len(i) for i in ids)} positions); merged fp32 "
          f"perplexity {merged_ppl}; load average {os.getloadavg()[0]:.2f}")
    print(table(rows, list(rows[0])))

    # speed: llama.cpp per quant vs seektune serve (merged fp32, HTTP), same prompts, greedy
    from serve_bench import run_mode  # noqa: E402 - bench/ sibling
    import serve_bench

    serve_bench.QUESTIONS = [m["content"] for r in recs[:8] for m in to_messages(r, fmt) if m["role"] == "user"][:8]
    speed = []
    for q, rep in reports.items():
        s = llama_cpp_speed(out / q / rep["gguf"], ids[:8], a.max_tokens)
        speed.append({"engine": f"llama.cpp {q} (one sequence at a time)", "clients": 1, **s})
        print(f"speed {q}: {s}; load average {os.getloadavg()[0]:.2f}", flush=True)
    from seektune.serve.server import load_for_serving

    loaded = load_for_serving(str(hf))
    for clients in (1, 8):
        r = run_mode(loaded, "serve", clients, clients, max(1, 8 // clients), a.max_tokens, 10.0)
        speed.append({"engine": "seektune serve fp32 (HTTP, dynamic batching)", "clients": clients,
                      "tokens": r["tokens"], "wall_s": r["wall_s"], "tok_s": r["tok_s"]})
        print(f"speed serve x{clients}: {r}; load average {os.getloadavg()[0]:.2f}", flush=True)
    print(f"\n## generation speed, 8 prompts, greedy, max_tokens {a.max_tokens}, {os.cpu_count()} threads; "
          f"load average {os.getloadavg()[0]:.2f}")
    print(table(speed, ["engine", "clients", "tokens", "wall_s", "tok_s"]))
    (out / "bench.json").write_text(json.dumps({"agreement": rows, "speed": speed}, indent=2), encoding="utf-8")


if __name__ == "__main__":
    main()
