"""The quantisation table: size on disk, latency per token and perplexity for fp32, fp16, bf16 and int8.

`int8` is the compressed-tensors W8A16 export loaded as seektune serves it (int8 weights in memory,
dequantised per call). The earlier `int8-dynamic` row (torch.ao dynamic INT8, +163% perplexity on
SmolLM2) went with the seektune-only format.

Every variant is saved to disk and loaded back the way a user would load it (plain transformers
for fp32/fp16/bf16, `load_quantized` for int8), then measured on the same texts and prompt.
On a CPU without fp16/bf16 instructions those two are slow; the table says so rather than hiding it.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import torch

from ..utils.console import log
from ..eval.metrics import text_perplexity
from .measure import latency_per_token, markdown_table, texts_from_file
from .merge import DTYPES, export_run

COLUMNS = [("variant", "variant"), ("weights_mb", "weights on disk (MB)"), ("ms_per_token", "ms / token"),
           ("ppl", "perplexity"), ("ppl_delta", "ppl vs fp32")]


def weights_size(folder: Path) -> int:
    return sum(f.stat().st_size for f in folder.iterdir() if f.suffix == ".safetensors")


def dtype_table(target: str, data: str, work: Path, variants=("fp32", "fp16", "bf16", "int8"),
                eval_samples: int = 16, max_length: int = 256, new_tokens: int = 16) -> list[dict]:
    """Export each variant under `work` and measure it; returns table rows."""
    from transformers import AutoModelForCausalLM

    from .quantize import load_quantized

    work.mkdir(parents=True, exist_ok=True)
    base = work / "fp32"
    export_run(target, base, "fp32", quantize="int8" if any(v.startswith("int8") for v in variants) else None,
               overwrite=True)
    from .source import load_tokenizer_for, resolve_source

    tok = load_tokenizer_for(resolve_source(base))
    texts = texts_from_file(data, tok, "tokenizer", n=eval_samples)
    prompt = texts[0][:300]
    rows = []
    for v in variants:
        if v == "int8":  # as `seektune serve DIR/int8` loads it: int8 weights in memory
            folder = base / "int8"
            model = load_quantized(folder, device="cpu")
        else:
            folder = base if v == "fp32" else work / v
            if v != "fp32":
                shutil.rmtree(folder, ignore_errors=True)
                m32 = AutoModelForCausalLM.from_pretrained(str(base), dtype=torch.float32)
                m32.to(DTYPES[v]).save_pretrained(str(folder))
                del m32
            model = AutoModelForCausalLM.from_pretrained(str(folder), dtype=DTYPES[v]).eval()
        log(f"measuring {v} ...")
        rows.append({"variant": v, "weights_mb": round(weights_size(folder) / 1e6, 1),
                     "ms_per_token": round(1000 * latency_per_token(model, tok, prompt, new_tokens, repeats=1), 1),
                     "ppl": round(text_perplexity(model, tok, texts, max_length), 3)})
        del model
    ref = rows[0]["ppl"]
    for r in rows:
        r["ppl_delta"] = f"{100 * (r['ppl'] / ref - 1):+.2f}%"
    (work / "report.md").write_text(markdown_table(rows, COLUMNS) + "\n", encoding="utf-8")
    return rows
