"""Issue 20: each site alone vs the federation vs centralised training, same total optimisation steps.

    python bench/federated_compare.py examples/fed_medical.yaml [--clients 3] [--set key=value ...]
           [--out runs/bench_fed] [--only federated|central]

1. federated: `seektune federate CONFIG --simulate` (rounds x local_steps per site)
2. alone: each site trains rounds x local_steps on its own shard (the same compute it gives the federation)
3. central: one run on the shuffled union of the site shards, clients x rounds x local_steps steps
`--only federated` runs 1 (e.g. a DP variant); `--only central` writes the same seeded split and runs 3.
Every model is scored by the recipe's own evaluation on every site's test set and on the pooled test set;
the table goes to stdout and OUT/compare.json, with the load average, wall times and bytes per round.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))


def load_avg() -> str:
    return "load average " + " ".join(f"{x:.2f}" for x in os.getloadavg())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("config")
    ap.add_argument("--clients", type=int, default=None)
    ap.add_argument("--set", dest="overrides", action="append", default=[])
    ap.add_argument("--out", default="runs/bench_fed")
    ap.add_argument("--only", choices=["federated", "central", "all"], default="all")
    a = ap.parse_args()

    from seektune.data.io import read_records, write_jsonl
    from seektune.federated.app import load, simulate
    from seektune.federated.client import round_config, run_round
    from seektune.federated.params import get_arrays
    from seektune.federated.server import Federation

    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    print(f"{time.strftime('%Y-%m-%d %H:%M')} {a.config} {' '.join(a.overrides)}; {load_avg()}", flush=True)
    cfg, raw = load(a.config, a.overrides)
    fed_dir = out / "federated"
    n = a.clients or cfg.federate.clients
    summary, models, walls = {}, {}, {}
    if a.only != "central":
        t0 = time.time()
        summary = simulate(a.config, a.overrides + [f"train.output_dir={fed_dir}"], clients=a.clients,
                           overwrite=True)
        walls["federated"] = round(time.time() - t0, 1)
        print(f"federated: {walls['federated']:.0f} s; {load_avg()}", flush=True)
    else:  # the federation's own split (same config and seed), without running the federation
        from seektune.federated.shards import make_shards

        make_shards(cfg, n, fed_dir / "split")
    report = json.loads((fed_dir / "split" / "split.json").read_text(encoding="utf-8"))
    sites = {name: {"train": str(fed_dir / "split" / name / "train.jsonl"),
                    "test": str(fed_dir / "split" / name / "test.jsonl")} for name in report["sites"]}
    from seektune.federated.app import _shared_labels
    from seektune.federated.shards import Shards

    _shared_labels(cfg, raw, Shards(sites, None))  # the label set the federation used, for every other model
    pooled_test = str(fed_dir / "split" / "pooled_test.jsonl")
    f = cfg.federate
    steps = f.rounds * f.local_steps
    fed = None
    if a.only != "central":
        fed = Federation.open(cfg, fed_dir, resume=True)
        models["federated"] = fed.last_global()[0]
    if a.only == "all":
        for site, files in sites.items():
            t = time.time()
            r = run_round(round_config(raw, files["train"], files["test"], out / "alone" / site, 0, steps), "fit")
            models[f"alone {site}"] = get_arrays(r["model"])
            walls[f"alone {site}"] = round(time.time() - t, 1)
            print(f"alone {site}: {steps} steps, {walls[f'alone {site}']} s; {load_avg()}", flush=True)
    if a.only in ("all", "central"):
        pooled_train = [x.data for s in sites.values() for x in read_records(s["train"])]
        random.Random(cfg.train.seed).shuffle(pooled_train)
        write_jsonl(out / "central_train.jsonl", pooled_train)
        craw = json.loads(json.dumps(raw))
        if craw["data"].get("max_samples"):
            craw["data"]["max_samples"] = craw["data"]["max_samples"] * n
        t = time.time()
        r = run_round(round_config(craw, str(out / "central_train.jsonl"), pooled_test, out / "central", 0, n * steps),
                      "fit")
        models["central"] = get_arrays(r["model"])
        walls["central"] = round(time.time() - t, 1)
        print(f"central: {n * steps} steps, {walls['central']} s; {load_avg()}", flush=True)

    tests = {**{s: v["test"] for s, v in sites.items()}, "pooled": pooled_test}
    first_train = next(iter(sites.values()))["train"]
    keys = ("eval_loss",) if cfg.model.task == "causal_lm" else ("accuracy", "macro_f1")
    table: dict = {}
    for name, arrays in [("base", None), *models.items()]:
        table[name] = {}
        for tname, tfile in tests.items():
            r = run_round(round_config(raw, first_train, tfile, out / "eval" / name.replace(" ", "_") / tname, 0, 1),
                          "evaluate", arrays)
            m = r["before"].get("metrics", r["before"])
            table[name][tname] = {k: m.get(k) for k in keys}
        print(f"scored {name}; {load_avg()}", flush=True)

    rows = summary.get("details", {})
    res = {"config": a.config, "overrides": a.overrides, "date": time.strftime("%Y-%m-%d"), "sites": report["sites"],
           "steps_per_site": steps, "total_steps": n * steps, "wall_s": walls, "table": table,
           "bytes_per_round_up": rows.get("bytes_per_round_up"), "dp": rows.get("dp"),
           "lora_errors": [{k: r.get(k) for k in ("round", "lora_error_product", "lora_error_separate")}
                           for r in (fed.rows if fed else [])], "load_avg_end": load_avg()}
    (out / f"compare{'' if a.only == 'all' else '_' + a.only}.json").write_text(json.dumps(res, indent=1, ensure_ascii=False), encoding="utf-8")
    for k in keys:
        print(f"\n{k} (rows: model; columns: test set)")
        print("| model | " + " | ".join(tests) + " |")
        print("|---|" + "---|" * len(tests))
        for name, cols in table.items():
            print(f"| {name} | " + " | ".join(f"{cols[t][k]:.4f}" if isinstance(cols[t][k], float) else "-"
                                              for t in tests) + " |")
    print(f"\nwall s: {walls}; bytes up per round {res['bytes_per_round_up']}; {load_avg()}")


if __name__ == "__main__":
    main()
