"""The INT8 table: size on disk, ms/token and perplexity for fp32, fp16, bf16 and int8 (issue 9).

Each variant is exported, reloaded as a user would, and measured on the same texts:

    OMP_NUM_THREADS=1 PYTHONPATH=src python bench/quant_table.py --model smollm2-135m-instruct \\
        --data ../shared/data/sft/chatdoctor5k_en.alpaca.json --eval-samples 8 --max-length 128
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "src"))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="smollm2-135m-instruct")
    ap.add_argument("--data", default="../shared/data/sft/chatdoctor5k_en.alpaca.json")
    ap.add_argument("--eval-samples", type=int, default=8)
    ap.add_argument("--max-length", type=int, default=128)
    ap.add_argument("--new-tokens", type=int, default=16)
    ap.add_argument("--work", default=None, help="folder for the exported variants (default: a temp folder)")
    a = ap.parse_args()
    import torch

    from seektune.export.measure import markdown_table
    from seektune.export.report import COLUMNS, dtype_table

    work = Path(a.work or tempfile.mkdtemp(prefix="seektune-quant-"))
    rows = dtype_table(a.model, a.data, work, eval_samples=a.eval_samples, max_length=a.max_length,
                       new_tokens=a.new_tokens)
    print(f"model {a.model}; {a.eval_samples} texts of <= {a.max_length} tokens from {a.data}; "
          f"{a.new_tokens} greedy tokens at batch 1; torch threads {torch.get_num_threads()}; "
          f"load average {os.getloadavg()[0]:.1f}")
    print(markdown_table(rows, COLUMNS))


if __name__ == "__main__":
    main()
