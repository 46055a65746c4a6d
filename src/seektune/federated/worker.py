"""One client round in a fresh Python process (`federate.round_process: fresh`).

    python -m seektune.federated.worker IN.json OUT.json

IN.json holds the round's config (as the YAML a run folder saves), the mode and mu; IN.npz beside it the
global tensors. OUT.json gets what `client.round_outcome` returns, or the error, and OUT.npz its tensors.
JSON and allow_pickle=False npz, never pickle: nothing read back can run code.
A site process that ran round after round in one interpreter grew ~1 GB of RSS per SmolLM2 round with no
model object alive (after gc and malloc_trim): what torch, tokenizers and the allocator keep is only given
back when the process ends, so each round gets its own process and the client process stays small.
"""

from __future__ import annotations

import sys
import traceback
from pathlib import Path

from .roundfiles import read_round, write_round


def main(argv: list[str]) -> int:
    src, dst = (Path(a) for a in argv)
    meta, arrays = read_round(src)
    out_arrays = None
    try:
        import yaml

        from ..config.load import validate_config
        from .client import round_outcome

        cfg = validate_config(yaml.safe_load(meta["config"]), f"federated round ({src})")
        res = round_outcome(cfg, meta["mode"], arrays, float(meta["mu"]))
        out_arrays = res.pop("arrays", None)
        result = {"ok": res}
    except BaseException as e:  # noqa: BLE001 - reported to the parent, which raises it for Flower
        result = {"error": f"{type(e).__name__}: {e}", "traceback": traceback.format_exc()}
    write_round(dst, result, out_arrays)
    return 0 if "ok" in result else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
