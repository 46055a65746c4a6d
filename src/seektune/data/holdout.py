"""The one hold-out split every loader uses (SFT, preference, classification, NER, RL prompts).

Why one: five loaders had five splits, and one of them capped the held-out part *after*
splitting, so records beyond `data.max_eval_samples` were neither trained on nor evaluated (233 of
Huatuo's 8,658 vanished). Here the cap is applied to the size of the held-out part before it is
drawn: every record is either trained on or held out, and `read = train + held out + rejected`.

- seeded: the same items, ratio, cap and seed always give the same split;
- stratified when a key is given: every class with at least two items keeps one in each part;
- `keep` indices (augmented or upsampled copies and their sources) never leave training.
An eval *file* is not split; `cap_eval_file` takes a seeded subset and reports the rest by name.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from typing import Callable, Sequence


@dataclass
class Holdout:
    train: list[int]
    eval: list[int]
    capped: int = 0  # records that would have been held out by the ratio but stayed in training (cap)


def holdout_size(n: int, ratio: float, cap: int | None) -> int:
    """round(n * ratio), at least 1 when there is anything to split (n >= 4), at most `cap`."""
    if ratio <= 0 or n == 0:
        return 0
    k = int(round(n * ratio))
    if n >= 4:
        k = max(1, k)
    k = min(k, n - 1) if n > 1 else 0
    return min(k, cap) if cap is not None else k


def holdout(n: int, ratio: float, seed: int, cap: int | None = None,
            key: Callable[[int], object] | None = None, keep: set[int] | frozenset = frozenset()) -> Holdout:
    """Indices of the training and held-out parts of `n` items (both in ascending order)."""
    candidates = [i for i in range(n) if i not in keep]
    want = holdout_size(len(candidates), ratio, None)
    k = min(want, cap) if cap is not None else want
    rng = random.Random(seed)
    if key is None:
        rng.shuffle(candidates)
        held = set(candidates[:k])
    else:
        held = _stratified(candidates, key, ratio, k, want, rng)
    ev = sorted(held)
    return Holdout([i for i in range(n) if i not in held], ev, capped=max(0, want - len(ev)))


def _stratified(cands: list[int], key, ratio: float, k: int, want: int, rng: random.Random) -> set[int]:
    by: dict[str, list[int]] = {}
    for i in cands:
        by.setdefault(str(key(i)), []).append(i)
    quota = {}
    for lab, idx in sorted(by.items()):
        rng.shuffle(idx)
        q = int(round(len(idx) * ratio))
        if ratio > 0 and len(idx) >= 2:
            q = max(1, min(q, len(idx) - 1))
        quota[lab] = q
    # a cap scales every class's quota down alike (largest remainders first), so the held-out part
    # keeps the class balance of the ratio split; when the cap leaves room for one item per class, every
    # class that had a quota keeps one (a small class would otherwise round to zero under a tight cap)
    total = sum(quota.values())
    if k < total:
        held = [lab for lab, q in quota.items() if q > 0]
        floor = {lab: 1 for lab in held} if k >= len(held) else {}
        extra = {lab: q - floor.get(lab, 0) for lab, q in quota.items()}
        k_extra, t_extra = k - len(floor), sum(extra.values())
        exact = {lab: e * k_extra / t_extra if t_extra else 0.0 for lab, e in extra.items()}
        quota = {lab: floor.get(lab, 0) + int(v) for lab, v in exact.items()}
        rest = k - sum(quota.values())
        for lab in sorted(exact, key=lambda x: (-(exact[x] - int(exact[x])), x))[:rest]:
            quota[lab] += 1
    return {i for lab, idx in by.items() for i in idx[:quota[lab]]}


@dataclass
class EvalCap:
    used: list[int]
    unused: list[int] = field(default_factory=list)


def cap_eval_file(n: int, cap: int | None, seed: int) -> EvalCap:
    """A seeded subset of an eval file's records, in file order; the rest are returned to be reported."""
    if cap is None or n <= cap:
        return EvalCap(list(range(n)))
    used = sorted(random.Random(seed + 1).sample(range(n), cap))
    chosen = set(used)
    return EvalCap(used, [i for i in range(n) if i not in chosen])


def split_items(items: Sequence, h: Holdout) -> tuple[list, list]:
    return [items[i] for i in h.train], [items[i] for i in h.eval]
