"""Issue 16's measurements: GRPO on GSM8K (two seeds) and CMMLU, and DPO / KTO / ORPO / SimPO on hh-rlhf.

Every run is an ordinary `seektune train` of an example YAML with `--set` overrides, in its own
process, one after another (two training jobs on 2 cores slow each other 3-8x). For each run it
prints the load average before and after, the wall time, steps per minute, the rollout throughput
(GRPO) and the summary's evidence rows (before -> after on the held-out data), and appends one JSON
line to --out.

    python bench/alignment_runs.py --only preference        # DPO, KTO, ORPO, SimPO, same budget
    python bench/alignment_runs.py --only cmmlu
    python bench/alignment_runs.py --only gsm8k --seeds 0 1
    python bench/alignment_runs.py --only gsm8k --seeds 0 1 --resume   # continue runs cut short

With --resume a run whose folder has a checkpoint continues from it (`seektune train --resume`);
its steps per minute then count only the steps this process trained.
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
SHARED = REPO.parent / "shared" / "data"


def runs(a) -> list[tuple[str, str, list[str]]]:
    out = []
    if a.only in ("all", "preference"):
        for st in ("dpo", "kto", "orpo", "simpo"):
            out.append((f"{st}_hh", f"examples/{st}_smollm2.yaml", [f"data.max_eval_samples={a.pairs}"]))
    if a.only in ("all", "cmmlu"):
        # three CMMLU medical subjects in one file (the subject travels as a column); 30% held out, up to 150
        merged = Path(a.work) / "cmmlu_medical.csv"
        merge_cmmlu(merged, ("clinical_knowledge", "college_medicine", "professional_medicine"))
        out.append(("grpo_cmmlu", "examples/grpo_smollm2_cmmlu.yaml",
                    [f"train.max_steps={a.cmmlu_steps}", f"data.train={merged.resolve()}", "data.max_eval_samples=150"]))
    if a.only in ("all", "gsm8k"):
        for seed in a.seeds:
            out.append((f"grpo_gsm8k_seed{seed}", "examples/grpo_smollm2_gsm8k.yaml",
                        [f"train.seed={seed}", f"train.max_steps={a.gsm8k_steps}",
                         f"data.max_eval_samples={a.gsm8k_eval}"]))
    return out


def merge_cmmlu(out: Path, subjects) -> None:
    import csv

    out.parent.mkdir(parents=True, exist_ok=True)
    with open(out, "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        for i, subj in enumerate(subjects):
            with open(SHARED / "general" / "cmmlu" / "test" / f"{subj}.csv", encoding="utf-8", newline="") as g:
                r = csv.reader(g)
                head = next(r)
                if i == 0:
                    w.writerow(head + ["subject"])
                for row in r:
                    w.writerow(row + [subj])


def load() -> str:
    return "{:.2f} {:.2f} {:.2f}".format(*os.getloadavg())


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--only", default="all", choices=("all", "preference", "cmmlu", "gsm8k"))
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    ap.add_argument("--gsm8k-steps", type=int, default=40)
    ap.add_argument("--gsm8k-eval", type=int, default=200)
    ap.add_argument("--cmmlu-steps", type=int, default=40)
    ap.add_argument("--pairs", type=int, default=100, help="held-out hh-rlhf pairs for the preference methods")
    ap.add_argument("--resume", action="store_true", help="continue a run folder that has a checkpoint")
    ap.add_argument("--work", default="runs/bench_alignment")
    ap.add_argument("--out", default="runs/bench_alignment/results.jsonl")
    a = ap.parse_args()
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    for name, example, sets in runs(a):
        run_dir = Path(a.work) / name
        resuming = a.resume and any((run_dir / "checkpoints").glob("checkpoint-*"))
        cmd = [sys.executable, "-m", "seektune", "train", str(REPO / example), "--no-progress",
               "--resume" if resuming else "--overwrite", "--set", f"train.output_dir={run_dir}"]
        for s in sets:
            cmd += ["--set", s]
        before = load()
        t0 = time.time()
        r = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True)
        wall = time.time() - t0
        rec = {"run": name, "example": example, "overrides": sets, "rc": r.returncode, "wall_s": round(wall, 1),
               "load_before": before, "load_after": load(), "date": time.strftime("%Y-%m-%d %H:%M"),
               "resumed": bool(resuming)}
        if r.returncode != 0:
            rec["error"] = r.stderr[-3000:]
        else:
            s = json.loads((run_dir / "summary.json").read_text())
            start = int(str(s.get("resumed_from") or "checkpoint-0").rsplit("-", 1)[-1]) if resuming else 0
            rec.update(steps=s["steps"], train_s=s["train_seconds"], threads=s["threads"], resumed_from=s.get("resumed_from"),
                       steps_per_min=round(60 * (s["steps"] - start) / max(1e-9, s["train_seconds"]), 2),
                       evidence=[{k: e[k] for k in ("key", "before", "after", "n")} for e in s["evidence"]],
                       warnings=len(s["warnings"]))
            m = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
            tps = [x["rollout/tokens_per_s"] for x in m if "rollout/tokens_per_s" in x]
            if tps:
                rec["rollout_tokens_per_s"] = round(sum(tps) / len(tps), 1)
                rec["rollout_share"] = round(sum(x.get("rollout/seconds", 0) for x in m) / max(1e-9, s["train_seconds"]), 3)
                rec["reward_curve"] = [round(x["reward"], 4) for x in m if "reward" in x and "loss" in x]
        with open(a.out, "a") as f:
            f.write(json.dumps(rec, ensure_ascii=False) + "\n")
        print(json.dumps(rec, ensure_ascii=False), flush=True)


if __name__ == "__main__":
    main()
