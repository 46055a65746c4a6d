"""95% intervals for scores measured on a finite set of questions, and the verdict they allow.

A before/after change is only a gain or a loss when its interval excludes zero. The change is
measured on the same questions twice, so its interval comes from a paired bootstrap over the
questions (it is much narrower than comparing two independent intervals: most questions keep
their outcome). A single score's interval is Wilson's for proportions and a bootstrap otherwise.
"""

from __future__ import annotations

import math
from typing import Sequence

import numpy as np

Z95 = 1.959963984540054
BOOTSTRAP_ITERS = 10_000


def is_binary(values: Sequence[float]) -> bool:
    return all(v in (0, 1, 0.0, 1.0, True, False) for v in values)


def wilson(successes: float, n: int, z: float = Z95) -> tuple[float, float]:
    """Wilson score interval of a proportion (good at small n and near 0 or 1, unlike p +- 2 se)."""
    if n <= 0:
        return (math.nan, math.nan)
    p = successes / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    return (max(0.0, centre - half), min(1.0, centre + half))


def mean_interval(values: Sequence[float], seed: int = 0, iters: int = BOOTSTRAP_ITERS) -> dict:
    """{'value', 'low', 'high', 'n'} of a mean: Wilson for 0/1 outcomes, percentile bootstrap otherwise."""
    v = np.asarray(values, dtype=float)
    n = int(v.size)
    if n == 0:
        return {"value": math.nan, "low": math.nan, "high": math.nan, "n": 0}
    if is_binary(values):
        lo, hi = wilson(float(v.sum()), n)
    else:
        rng = np.random.default_rng(seed)
        means = v[rng.integers(0, n, size=(iters, n))].mean(axis=1)
        lo, hi = (float(x) for x in np.percentile(means, [2.5, 97.5]))
    return {"value": float(v.mean()), "low": lo, "high": hi, "n": n}


def paired_difference(before: Sequence[float], after: Sequence[float], seed: int = 0,
                      iters: int = BOOTSTRAP_ITERS) -> dict:
    """Mean of after - before over the same questions with a paired percentile-bootstrap interval."""
    b, a = np.asarray(before, dtype=float), np.asarray(after, dtype=float)
    if b.shape != a.shape:
        raise ValueError(f"paired scores need the same questions: {b.size} before, {a.size} after")
    d = a - b
    n = int(d.size)
    if n == 0:
        return {"delta": math.nan, "low": math.nan, "high": math.nan, "n": 0}
    if not d.any():
        return {"delta": 0.0, "low": 0.0, "high": 0.0, "n": n}
    rng = np.random.default_rng(seed)
    means = d[rng.integers(0, n, size=(iters, n))].mean(axis=1)
    lo, hi = (float(x) for x in np.percentile(means, [2.5, 97.5]))
    return {"delta": float(d.mean()), "low": lo, "high": hi, "n": n}


def verdict(low: float, high: float, higher_is_better: bool = True) -> str:
    """'gain', 'loss' or 'within noise' for a change whose 95% interval is [low, high]."""
    if math.isnan(low) or math.isnan(high) or (low <= 0 <= high):
        return "within noise"
    up = low > 0
    return "gain" if up == higher_is_better else "loss"
