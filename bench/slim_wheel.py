"""Rewrite a wheel without the members it does not need on one machine, so it fits a device run's carry.

bitsandbytes' wheel holds one native library per CUDA / ROCm / XPU version (129 MB unpacked, 43 MB packed);
the lent GPU's torch is built for CUDA 13.0, so only `libbitsandbytes_cuda13*.so` (and the CPU one) is loaded
there. Members matching a --drop glob are left out unless they also match a --keep glob; RECORD loses their
lines (pip installs what RECORD lists and finds in the archive).

    python bench/slim_wheel.py .whl/bitsandbytes-*.whl --drop 'bitsandbytes/libbitsandbytes_*' \
        --keep 'bitsandbytes/libbitsandbytes_cuda13*' --keep 'bitsandbytes/libbitsandbytes_cpu*'
"""

from __future__ import annotations

import argparse
import fnmatch
import os
import zipfile
from pathlib import Path


def slim(wheel: Path, drop: list[str], keep: list[str]) -> tuple[int, int]:
    """Rewrite `wheel` in place; returns (members dropped, bytes saved on disk)."""
    def dropped(name: str) -> bool:
        return any(fnmatch.fnmatch(name, d) for d in drop) and not any(fnmatch.fnmatch(name, k) for k in keep)

    before = wheel.stat().st_size
    tmp = wheel.with_suffix(".slim")
    n = 0
    with zipfile.ZipFile(wheel) as src, zipfile.ZipFile(tmp, "w", zipfile.ZIP_DEFLATED) as dst:
        for info in src.infolist():
            if dropped(info.filename):
                n += 1
                continue
            data = src.read(info)
            if info.filename.endswith(".dist-info/RECORD"):
                lines = data.decode().splitlines()
                data = ("\n".join(x for x in lines if not dropped(x.split(",", 1)[0])) + "\n").encode()
            dst.writestr(info, data)
    os.replace(tmp, wheel)
    return n, before - wheel.stat().st_size


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("wheel", type=Path, nargs="+")
    ap.add_argument("--drop", action="append", required=True, help="glob of archive members to leave out")
    ap.add_argument("--keep", action="append", default=[], help="glob of members kept even if a --drop matches")
    a = ap.parse_args()
    for w in a.wheel:
        n, saved = slim(w, a.drop, a.keep)
        print(f"{w.name}: {n} members dropped, {saved / 2**20:.1f} MiB smaller ({w.stat().st_size / 2**20:.1f} MiB)")


if __name__ == "__main__":
    main()
