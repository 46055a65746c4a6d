"""Averaging the clients' trainable tensors (numpy only: the server needs no model).

LoRA makes plain averaging subtle: a client's update is B_k @ A_k, and mean(B) @ mean(A) is not
mean(B @ A). `separate` averages A and B on their own (what FlowerTune does); `product` forms the
weighted mean of the updates and refactors it to rank r through its SVD, the best rank-r
approximation of the mean update (Eckart-Young), so its error is never above `separate`'s. The SVD
runs on the K*r-dimensional core of the stacked factors, never on an out x in matrix. Both errors
are measured every round (relative Frobenius distance to the true mean update) and logged.
"""

from __future__ import annotations

import numpy as np


def normalised(weights: list[float]) -> np.ndarray:
    w = np.asarray(weights, dtype=np.float64)
    if (w < 0).any() or w.sum() <= 0:
        raise ValueError(f"client weights must be >= 0 with a positive sum (got {weights})")
    return w / w.sum()


def weighted_mean(tensors: list[np.ndarray], w: np.ndarray) -> np.ndarray:
    out = np.zeros_like(tensors[0], dtype=np.float64)
    for t, wk in zip(tensors, w):
        out += wk * t
    return out.astype(tensors[0].dtype)


def _lowrank_mean(As: list[np.ndarray], Bs: list[np.ndarray], w: np.ndarray):
    """Factors of sum_k w_k B_k A_k: (Bcat, Acat) with Bcat @ Acat equal to it, rank <= K*r."""
    s = np.sqrt(w)
    Bcat = np.concatenate([sk * B.astype(np.float64) for sk, B in zip(s, Bs)], axis=1)   # out x Kr
    Acat = np.concatenate([sk * A.astype(np.float64) for sk, A in zip(s, As)], axis=0)   # Kr x in
    return Bcat, Acat


def _sq_norm(P: np.ndarray, Q: np.ndarray) -> float:
    """|P @ Q|_F^2 without forming P @ Q: trace((P^T P)(Q Q^T))."""
    return float(np.einsum("ij,ji->", P.T @ P, Q @ Q.T))


def product_pair(As: list[np.ndarray], Bs: list[np.ndarray], w: np.ndarray):
    """(A, B) of rank r whose product is the best rank-r approximation of the weighted mean update,
    and the squared errors (mean-update norm, product's error, separate's error)."""
    r = As[0].shape[0]
    Bcat, Acat = _lowrank_mean(As, Bs, w)
    Qb, Rb = np.linalg.qr(Bcat)
    Qa, Ra = np.linalg.qr(Acat.T)
    U, S, Vt = np.linalg.svd(Rb @ Ra.T)
    root = np.sqrt(S[:r])
    B = (Qb @ U[:, :r]) * root
    A = (root[:, None] * Vt[:r]) @ Qa.T
    total = _sq_norm(Bcat, Acat)
    err_product = float(np.sum(S[r:] ** 2))
    Bs_mean, As_mean = weighted_mean(Bs, w).astype(np.float64), weighted_mean(As, w).astype(np.float64)
    err_separate = _sq_norm(np.concatenate([Bcat, -Bs_mean], axis=1), np.concatenate([Acat, As_mean], axis=0))
    dtype = As[0].dtype
    return A.astype(dtype), B.astype(dtype), (total, max(err_product, 0.0), max(err_separate, 0.0))


def aggregate(client_arrays: list[list[np.ndarray]], weights: list[float], pairs: list[list[int]],
              mode: str = "product") -> tuple[list[np.ndarray], dict]:
    """The global tensors from the clients' tensors (same order everywhere) and the aggregation errors.

    pairs: [index of lora_A, index of lora_B] for every plain LoRA layer (from the client's layout)."""
    if not client_arrays:
        raise ValueError("no client results to aggregate")
    n = len(client_arrays[0])
    for k, arrs in enumerate(client_arrays):
        if len(arrs) != n:
            raise ValueError(f"client {k} sent {len(arrs)} tensors, the first sent {n}")
    w = normalised(weights)
    out: list[np.ndarray | None] = [None] * n
    total = err_p = err_s = 0.0
    for ia, ib in pairs:
        As = [c[ia] for c in client_arrays]
        Bs = [c[ib] for c in client_arrays]
        if mode == "product":
            A, B, (t, ep, es) = product_pair(As, Bs, w)
            out[ia], out[ib] = A, B
        else:
            out[ia], out[ib] = weighted_mean(As, w), weighted_mean(Bs, w)
            _, _, (t, ep, es) = product_pair(As, Bs, w)
        total, err_p, err_s = total + t, err_p + ep, err_s + es
    for i in range(n):
        if out[i] is None:
            out[i] = weighted_mean([c[i] for c in client_arrays], w)
    stats = {"lora_pairs": len(pairs)}
    if pairs and total > 0:
        stats["lora_error_product"] = float(np.sqrt(err_p / total))
        stats["lora_error_separate"] = float(np.sqrt(err_s / total))
    return out, stats  # type: ignore[return-value]
