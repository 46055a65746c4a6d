"""One client round in a fresh Python process (`federate.round_process: fresh`).

    python -m seektune.federated.worker IN.pkl OUT.pkl

IN holds (config, mode, global arrays, mu); OUT gets what `client.round_outcome` returns, or the error.
A site process that ran round after round in one interpreter grew ~1 GB of RSS per SmolLM2 round with no
model object alive (after gc and malloc_trim): what torch, tokenizers and the allocator keep is only given
back when the process ends, so each round gets its own process and the client process stays small.
"""

from __future__ import annotations

import pickle
import sys
import traceback


def main(argv: list[str]) -> int:
    src, dst = argv
    with open(src, "rb") as fh:
        cfg, mode, arrays, mu = pickle.load(fh)
    try:
        from .client import round_outcome

        result = {"ok": round_outcome(cfg, mode, arrays, mu)}
    except BaseException as e:  # noqa: BLE001 - reported to the parent, which raises it for Flower
        result = {"error": f"{type(e).__name__}: {e}", "traceback": traceback.format_exc()}
    with open(dst, "wb") as fh:
        pickle.dump(result, fh, protocol=pickle.HIGHEST_PROTOCOL)
    return 0 if "ok" in result else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
