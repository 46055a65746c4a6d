"""Length-grouped batches vs random batches for text classification (MiniLM-L6, Financial PhraseBank).

Prints, for the same rows and the same number of training steps, the padding share and the
wall time of forward+backward+optimizer steps under each sampler, and the ratio. Run:
    python bench/cls_length_grouping.py [--rows 640] [--batches 20] [--threads 1]
"""

from __future__ import annotations

import argparse
import random
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from transformers import AutoConfig, AutoModelForSequenceClassification, AutoTokenizer  # noqa: E402
from transformers.trainer_pt_utils import LengthGroupedSampler  # noqa: E402

from seektune.data.windows import text_windows  # noqa: E402
from seektune.models.presets import resolve_model_path  # noqa: E402
from seektune.data.collate import ClassifyCollator  # noqa: E402

FPB = Path(__file__).resolve().parents[2] / "shared" / "data" / "classification" / "financial_phrasebank_allagree.csv"


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rows", type=int, default=640)
    ap.add_argument("--batches", type=int, default=20)
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--threads", type=int, default=1)
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    import csv

    rows = list(csv.DictReader(open(FPB, encoding="utf-8")))
    random.Random(0).shuffle(rows)
    rows = rows[: a.rows]
    path = resolve_model_path("minilm-l6")
    tok = AutoTokenizer.from_pretrained(path)
    labels = sorted({r["label"] for r in rows})
    data = [{"input_ids": text_windows(tok, r["text"], 128, 0)[0], "labels": labels.index(r["label"])} for r in rows]
    coll = ClassifyCollator(tok.pad_token_id)
    g = torch.Generator().manual_seed(0)
    orders = {"random": torch.randperm(len(data), generator=g).tolist(),
              "group_by_length": list(LengthGroupedSampler(a.batch_size, dataset=data, generator=g))}
    cfg = AutoConfig.from_pretrained(path)
    cfg.num_labels = len(labels)
    print(f"minilm-l6, {len(data)} FPB rows, {a.batches} steps of batch {a.batch_size}, threads {a.threads}")
    res = {}
    for name, order in orders.items():
        torch.manual_seed(0)
        model = AutoModelForSequenceClassification.from_pretrained(path, config=cfg)
        opt = torch.optim.AdamW(model.parameters(), lr=5e-5)
        real = padded = 0
        t = time.perf_counter()
        for b in range(a.batches):
            batch = coll([data[i] for i in order[b * a.batch_size:(b + 1) * a.batch_size]])
            real += int(batch["attention_mask"].sum())
            padded += batch["input_ids"].numel()
            model(**batch).loss.backward()
            opt.step()
            opt.zero_grad()
        dt = time.perf_counter() - t
        res[name] = dt
        res[name + "_tps"] = real / dt
        print(f"{name:16s} padding share {1 - real / padded:6.1%}  {dt:7.2f} s  {real / dt:8.0f} real tokens/s")
    print(f"ratio group_by_length / random: real tokens/s {res['group_by_length_tps'] / res['random_tps']:.2f}x, "
          f"wall time for the same steps {res['random'] / res['group_by_length']:.2f}x faster")


if __name__ == "__main__":
    main()
