"""Where seektune keeps caches (dequantised models, tokenised data). Override with SEEKTUNE_CACHE."""

from __future__ import annotations

import os
from pathlib import Path


def cache_dir(*parts: str) -> Path:
    root = Path(os.environ.get("SEEKTUNE_CACHE") or Path.home() / ".cache" / "seektune")
    p = root.joinpath(*parts)
    p.mkdir(parents=True, exist_ok=True)
    return p
