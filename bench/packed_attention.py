"""Attention of packed rows on CPU: what SFT's block-causal mask costs, and whether cutting it up pays.

With packing (data.packing), each row holds several samples and transformers gives SDPA a block-diagonal
causal mask, so torch's CPU flash kernel computes the full L x L scores of every row. For the SmolLM2 job
(batch 8 x 512, 30 layers) 30 x this kernel's time is about a quarter of a step, so three ways of doing
less work are measured against it, each checked against the masked kernel (outputs and all three gradients):

  * per-segment: one SDPA call (is_causal) per packed sample, contiguous inputs;
  * q-blocks: queries in blocks of 128, each against the keys up to its end (skips the upper triangle);
  * blocked GEMMs: a custom autograd function with flash-style recomputation that computes only each
    sample's causal blocks (GQA folded into the matrix rows, no repeated K/V), the work a varlen kernel does.

Segments follow the benchmark's data: sample lengths drawn around alpaca_zh's mean of 317 tokens and packed
greedily into rows of 512. Prints fwd+bwd milliseconds per layer (median of 5 after one warm-up), the ratio
to the masked kernel and the load average.

    python bench/packed_attention.py --threads 2
"""

from __future__ import annotations

import argparse
import os
import random
import time

import torch
import torch.nn.functional as F

B, L, H, KV, D = 8, 512, 9, 3, 64  # SmolLM2-135M: 9 query heads, 3 KV heads, head_dim 64; the job's batch


def packed_rows(seed: int = 0) -> list[list[tuple[int, int]]]:
    rng, rows = random.Random(seed), []
    for _ in range(B):
        segs, s = [], 0
        while s < L:
            n = min(L - s, max(20, int(rng.expovariate(1 / 317))))
            segs.append((s, s + n))
            s += n
        rows.append(segs)
    return rows


def block_mask(rows) -> torch.Tensor:
    m = torch.zeros(B, 1, L, L, dtype=torch.bool)
    for b, segs in enumerate(rows):
        for s, e in segs:
            m[b, 0, s:e, s:e] = torch.ones(e - s, e - s, dtype=torch.bool).tril()
    return m


class BlockedCausal(torch.autograd.Function):
    """Causal attention within each packed sample by blocked GEMMs; saves only the output and log-sum-exp."""

    BQ = 128

    @staticmethod
    def _blocks(rows):
        return [(b, a, min(a + BlockedCausal.BQ, e), s) for b, segs in enumerate(rows) for s, e in segs
                for a in range(s, e, BlockedCausal.BQ)]

    @staticmethod
    def _bias(n, m, g, device):
        qpos = torch.arange(m - n, m, device=device)[:, None]
        kpos = torch.arange(m, device=device)[None, :]
        return torch.zeros(n, m, device=device).masked_fill_(kpos > qpos, float("-inf")).repeat(g, 1)

    @staticmethod
    def forward(ctx, q, k, v, rows, scale):
        g, dv = q.shape[1] // k.shape[1], v.shape[-1]
        o, lse = q.new_empty(*q.shape[:3], dv), q.new_empty(q.shape[:3])
        blocks = BlockedCausal._blocks(rows)
        for b, a, a2, s in blocks:
            n, m = a2 - a, a2 - s
            qb = q[b, :, a:a2].reshape(k.shape[1], g * n, -1)
            sc = torch.baddbmm(BlockedCausal._bias(n, m, g, q.device), qb, k[b, :, s:a2].transpose(1, 2), alpha=scale)
            mx = sc.amax(-1, keepdim=True)
            p = sc.sub_(mx).exp_()
            tot = p.sum(-1, keepdim=True)
            o[b, :, a:a2] = torch.bmm(p.div_(tot), v[b, :, s:a2]).view(-1, n, dv)
            lse[b, :, a:a2] = (mx + tot.log()).view(-1, n)
        ctx.save_for_backward(q, k, v, o, lse)
        ctx.blocks, ctx.scale = blocks, scale
        return o

    @staticmethod
    def backward(ctx, do):
        q, k, v, o, lse = ctx.saved_tensors
        kv, g, dv_ = k.shape[1], q.shape[1] // k.shape[1], v.shape[-1]
        do = do.contiguous()
        dq, dk, dv = torch.zeros_like(q), torch.zeros_like(k), torch.zeros_like(v)
        delta = (do * o).sum(-1)
        for b, a, a2, s in ctx.blocks:
            n, m = a2 - a, a2 - s
            qb = q[b, :, a:a2].reshape(kv, g * n, -1)
            kb, vb = k[b, :, s:a2], v[b, :, s:a2]
            bias = BlockedCausal._bias(n, m, g, q.device) - lse[b, :, a:a2].reshape(kv, g * n, 1)
            p = torch.baddbmm(bias, qb, kb.transpose(1, 2), alpha=ctx.scale).exp_()
            dob = do[b, :, a:a2].reshape(kv, g * n, dv_)
            dv[b, :, s:a2] += torch.bmm(p.transpose(1, 2), dob)
            ds = p.mul_(torch.bmm(dob, vb.transpose(1, 2)).sub_(delta[b, :, a:a2].reshape(kv, g * n, 1)))
            dq[b, :, a:a2] = torch.bmm(ds, kb).view(-1, n, q.shape[-1]) * ctx.scale
            dk[b, :, s:a2] += torch.bmm(ds.transpose(1, 2), qb) * ctx.scale
        return dq, dk, dv, None, None


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=2)
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    torch.manual_seed(0)
    rows = packed_rows()
    mask = block_mask(rows)
    q = torch.randn(B, H, L, D, requires_grad=True)
    k = torch.randn(B, KV, L, D, requires_grad=True)
    v = torch.randn(B, KV, L, D, requires_grad=True)
    grad = torch.randn(B, H, L, D)
    rep = H // KV

    def masked():
        return F.scaled_dot_product_attention(q, k.repeat_interleave(rep, 1), v.repeat_interleave(rep, 1),
                                              attn_mask=mask)

    def per_segment():
        kk, vv = k.repeat_interleave(rep, 1), v.repeat_interleave(rep, 1)
        return torch.cat([torch.cat([F.scaled_dot_product_attention(
            q[b:b + 1, :, s:e].contiguous(), kk[b:b + 1, :, s:e].contiguous(), vv[b:b + 1, :, s:e].contiguous(),
            is_causal=True) for s, e in segs], 2) for b, segs in enumerate(rows)], 0)

    def q_blocks():
        kk, vv = k.repeat_interleave(rep, 1), v.repeat_interleave(rep, 1)
        return torch.cat([F.scaled_dot_product_attention(q[:, :, i:i + 128], kk[:, :, :i + 128], vv[:, :, :i + 128],
                                                         attn_mask=mask[:, :, i:i + 128, :i + 128])
                          for i in range(0, L, 128)], 2)

    def blocked():
        return BlockedCausal.apply(q, k, v, rows, D ** -0.5)

    def run(f):
        q.grad = k.grad = v.grad = None
        out = f()
        out.backward(grad)
        return out.detach(), q.grad.clone(), k.grad.clone(), v.grad.clone()

    ref = run(masked)
    fns = {"masked SDPA (transformers' packed mask)": masked, "per-segment SDPA": per_segment,
           "q-blocks of 128": q_blocks, "blocked GEMMs (custom autograd)": blocked}
    for name, f in fns.items():
        got = run(f)
        err = max((x - y).abs().max().item() for x, y in zip(got, ref))
        assert err < 1e-4, (name, err)
    work = sum((e - s) ** 2 for segs in rows for s, e in segs) / (B * L * L)
    print(f"{B} rows x {L}: {sum(map(len, rows))} samples; sum of n^2 / L^2 = {work:.2f} (causal: half of it)")
    base = None
    for name, f in fns.items():
        ts = []
        for _ in range(6):
            t = time.perf_counter()
            run(f)
            ts.append(time.perf_counter() - t)
        ms = sorted(ts[1:])[2] * 1000
        base = base or ms
        print(f"{name:42s} {ms:7.1f} ms/layer fwd+bwd  {base / ms:5.2f}x   load {os.getloadavg()[0]:.2f}", flush=True)


if __name__ == "__main__":
    main()
