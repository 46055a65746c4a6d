"""Exact and near-duplicate detection: content digests and MinHash LSH over character n-grams.

Character n-grams (not words) make near-duplicate detection work for Chinese, which has no
spaces, as well as for English. Text is lower-cased and stripped of whitespace and punctuation
before shingling, so two answers that differ only in commas or line breaks are near duplicates.
The MinHash of a record depends only on its text and the seed, so it can be computed in worker
processes; the LSH index is queried and filled in file order, so "first occurrence wins" holds.
"""

from __future__ import annotations

import hashlib
import re
from typing import Iterable

import numpy as np
from datasketch import MinHash, MinHashLSH

_NON_WORD = re.compile(r"[\W_]+", re.UNICODE)


def exact_key(text: str) -> bytes:
    """A 16-byte digest of whitespace-normalised text (memory stays small for millions of records)."""
    return hashlib.blake2b(" ".join(text.split()).encode("utf-8"), digest_size=16).digest()


def _clean_for_shingles(text: str) -> str:
    return _NON_WORD.sub("", text.lower())


def shingles(text: str, n: int) -> set[str]:
    """The character n-grams of lower-cased text without whitespace/punctuation (for reading and tests)."""
    t = _clean_for_shingles(text)
    if not t:
        return set()
    return {t} if len(t) <= n else {t[i:i + n] for i in range(len(t) - n + 1)}


_P = np.uint32(1000003)


def shingle_hashes(text: str, n: int) -> np.ndarray:
    """32-bit hashes of the distinct character n-grams, computed in numpy (no per-shingle Python call).

    A polynomial hash over Unicode code points; datasketch's affine32 scheme pre-mixes every input
    hash with the MurmurHash3 finalizer, so this simple hash is safe to feed to it.
    """
    t = _clean_for_shingles(text)
    if not t:
        return np.empty(0, dtype=np.uint32)
    cps = np.frombuffer(t.encode("utf-32-le"), dtype=np.uint32)
    k = min(n, len(cps))
    with np.errstate(over="ignore"):
        h = np.zeros(len(cps) - k + 1, dtype=np.uint32)
        for j in range(k):
            h = h * _P + cps[j:len(cps) - k + 1 + j]
    return np.unique(h)


_SCHEME = "affine32"  # datasketch 2: uint32 signatures, collision-free permutations
_PERMS: dict[tuple[int, int], tuple] = {}


def _permutations(num_perm: int, seed: int):
    """Permutation parameters, built once per (num_perm, seed) instead of once per record."""
    key = (num_perm, seed)
    if key not in _PERMS:
        _PERMS[key] = MinHash(num_perm=num_perm, seed=seed, scheme=_SCHEME).permutations
    return _PERMS[key]


def _identity(x):
    return x


_FMIX32 = (np.uint32(16), np.uint32(0x85EBCA6B), np.uint32(13), np.uint32(0xC2B2AE35), np.uint32(16))


def minhash_values(text: str, n: int = 5, num_perm: int = 128, seed: int = 1) -> np.ndarray | None:
    """MinHash signature (uint32 array) of the text's character n-grams; None for text with no characters.

    Equal, value for value, to datasketch `MinHash(scheme="affine32", hashfunc=identity).update_batch`
    on the same n-gram hashes (a test checks it), without a Python call per n-gram: MurmurHash3
    fmix32 pre-mix, then min over `a*h + b mod 2^32` for every permutation.
    """
    hv = shingle_hashes(text, n)
    if not len(hv):
        return None
    a, b = _permutations(num_perm, seed)
    s1, m1, s2, m2, s3 = _FMIX32
    with np.errstate(over="ignore"):
        hv = hv ^ (hv >> s1)
        hv = hv * m1
        hv = hv ^ (hv >> s2)
        hv = hv * m2
        hv = hv ^ (hv >> s3)
        return (hv[:, None] * a + b).min(axis=0)


def minhash_reference(text: str, n: int = 5, num_perm: int = 128, seed: int = 1) -> np.ndarray:
    """The same signature through datasketch's own `update_batch` (slower; for checking)."""
    m = MinHash(num_perm=num_perm, seed=seed, permutations=_permutations(num_perm, seed), scheme=_SCHEME,
                hashfunc=_identity)
    m.update_batch(shingle_hashes(text, n).tolist())
    return m.hashvalues


class Signature:
    """The part of a MinHash that MinHashLSH reads (hashvalues, length, scheme), without the cost of
    building a full MinHash object per query."""

    __slots__ = ("hashvalues",)
    scheme = _SCHEME

    def __init__(self, hashvalues: np.ndarray):
        self.hashvalues = hashvalues

    def __len__(self) -> int:
        return len(self.hashvalues)


def as_minhash(sig: np.ndarray, seed: int = 1) -> Signature:
    return Signature(sig)


def jaccard_estimate(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.count_nonzero(a == b)) / len(a)


class NearDupIndex:
    """Streaming near-duplicate finder: `check_add(key, sig)` returns the earlier match or adds the record.

    LSH proposes candidates; each is confirmed by its estimated Jaccard similarity, so the threshold
    means what it says instead of depending on the banding's false-positive rate.
    """

    def __init__(self, threshold: float = 0.8, num_perm: int = 128, seed: int = 1):
        self.threshold = threshold
        self.seed = seed
        self.num_perm = num_perm
        self.lsh = MinHashLSH(threshold=threshold, num_perm=num_perm)
        self.sigs: dict[str, np.ndarray] = {}

    def _as_minhash(self, sig: np.ndarray) -> MinHash:
        return as_minhash(sig, self.seed)

    def best_match(self, sig: np.ndarray) -> tuple[str, float] | None:
        best = None
        for k in self.lsh.query(self._as_minhash(sig)):
            j = jaccard_estimate(sig, self.sigs[k])
            if j >= self.threshold and (best is None or j > best[1]):
                best = (k, j)
        return best

    def add(self, key: str, sig: np.ndarray) -> None:
        self.lsh.insert(key, self._as_minhash(sig), check_duplication=False)
        self.sigs[key] = sig

    def check_add(self, key: str, sig: np.ndarray) -> tuple[str, float] | None:
        match = self.best_match(sig)
        if match is None:
            self.add(key, sig)
        return match


class UnionFind:
    def __init__(self, n: int):
        self.parent = list(range(n))

    def find(self, i: int) -> int:
        while self.parent[i] != i:
            self.parent[i] = self.parent[self.parent[i]]
            i = self.parent[i]
        return i

    def union(self, a: int, b: int) -> None:
        ra, rb = self.find(a), self.find(b)
        if ra != rb:
            self.parent[max(ra, rb)] = min(ra, rb)


def duplicate_groups(texts: Iterable[str], threshold: float = 0.8, ngram: int = 5, num_perm: int = 128,
                     seed: int = 1) -> list[int]:
    """Group id per text: exact and near duplicates (transitively) share a group. Used by split."""
    texts = list(texts)
    uf = UnionFind(len(texts))
    first_exact: dict[bytes, int] = {}
    lsh = MinHashLSH(threshold=threshold, num_perm=num_perm)
    sigs: dict[int, np.ndarray] = {}
    for i, t in enumerate(texts):
        k = exact_key(t)
        if k in first_exact:
            uf.union(first_exact[k], i)
            continue
        first_exact[k] = i
        sig = minhash_values(t, ngram, num_perm, seed)
        if sig is None:
            continue
        mh = as_minhash(sig, seed)
        for j in lsh.query(mh):
            if jaccard_estimate(sig, sigs[j]) >= threshold:
                uf.union(j, i)
        lsh.insert(i, mh, check_duplication=False)
        sigs[i] = sig
    return [uf.find(i) for i in range(len(texts))]
