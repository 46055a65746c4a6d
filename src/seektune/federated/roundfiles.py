"""The files a fresh-process round is handed and answers with: JSON and an allow_pickle=False npz.

Nothing read back can run code (seektune never loads a pickle), so a writable round folder is no
way into the site's process.
"""

from __future__ import annotations

import json
from pathlib import Path


def write_round(path: Path, meta: dict, arrays) -> None:
    """meta as JSON at `path`, arrays (a list of ndarrays, or None) as an npz beside it."""
    import numpy as np

    meta = dict(meta, n_arrays=None if arrays is None else len(arrays))
    if arrays is not None:
        with open(path.with_suffix(".npz"), "wb") as fh:
            np.savez(fh, *[np.asarray(a) for a in arrays])
    path.write_text(json.dumps(meta, default=str), encoding="utf-8")


def read_round(path: Path) -> tuple[dict, list | None]:
    import numpy as np

    meta = json.loads(path.read_text(encoding="utf-8"))
    n = meta.pop("n_arrays", None)
    if n is None:
        return meta, None
    with np.load(path.with_suffix(".npz"), allow_pickle=False) as z:
        return meta, [z[f"arr_{i}"] for i in range(n)]
