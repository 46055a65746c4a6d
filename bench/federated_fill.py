"""Score saved run folders of bench/federated_compare.py on chosen test sets (the recipe's own evaluation),
when the full matrix would cost more than the cells that are not already in the runs' own summaries.

    python bench/federated_fill.py CONFIG OUT MODEL=RUN_DIR[,...] TEST=FILE[,...]
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))


def main() -> None:
    config, out, models, tests = sys.argv[1], Path(sys.argv[2]), sys.argv[3], sys.argv[4]
    from safetensors.numpy import load_file

    from seektune.federated.app import load
    from seektune.federated.client import round_config, run_round

    cfg, raw = load(config, [f"data.train={out / 'central_train.jsonl'}"])
    lay = json.loads((out / "federated" / "layout.json").read_text())
    site0 = str(out / "federated" / "split" / "site_0" / "train.jsonl")
    res = {}
    for spec in models.split(","):
        name, run_dir = spec.split("=")
        t = load_file(str(Path(run_dir) / "final" / "adapter_model.safetensors"))
        arrays = [t[n.replace(".default", "")] for n in lay["names"]]
        for tspec in tests.split(","):
            tname, tfile = tspec.split("=")
            r = run_round(round_config(raw, site0, tfile, out / "fill" / name / tname, 0, 1), "evaluate", arrays)
            m = r["before"].get("metrics", r["before"])
            res.setdefault(name, {})[tname] = {k: m.get(k) for k in ("eval_loss", "accuracy", "macro_f1") if k in m}
            print(name, tname, res[name][tname], "load", os.getloadavg(), flush=True)
    (out / "fill.json").write_text(json.dumps(res, indent=1))


if __name__ == "__main__":
    main()
