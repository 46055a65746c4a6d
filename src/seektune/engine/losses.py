"""Causal-LM loss computed only where it is needed: the LM head and the cross-entropy run on the
positions that carry a label, in chunks, with the gradient taken inside the chunk loop.

Why: with prompt-masked SFT most positions have no label, yet a stock forward computes a
(tokens x vocab) logits tensor for all of them and keeps it, its softmax and its gradient for the
backward pass. For small models with a 49k-129k vocabulary that tensor is the largest activation
of the step (8 x 512 tokens x 49,152 x 4 bytes = 0.8 GB, about three times over), and its
softmax is memory-bound work. Here the head runs on label positions only, one chunk of rows at a
time, and each chunk's gradient with respect to the hidden states is formed at once (the idea of
Liger's fused linear cross-entropy), so no logits tensor outlives its chunk.

The loss equals `cross_entropy(lm_head(h)[:, :-1], labels[:, 1:], ignore_index=-100)` summed and
divided by the same token count the Trainer uses (tested to 1e-5, label smoothing included).
"""

from __future__ import annotations

import inspect

import torch

from ..data import IGNORE_INDEX

CHUNK_ELEMENTS = 1 << 25  # logits elements per chunk (128 MB in fp32)


class _LinearCrossEntropy(torch.autograd.Function):
    """sum over rows of CE(h @ W.T + b, target), with gradients computed in forward, chunk by chunk."""

    @staticmethod
    def forward(ctx, h, weight, bias, target, smoothing: float, chunk: int):
        need_h, need_w, need_b = ctx.needs_input_grad[:3]
        vocab = weight.shape[0]
        grad_h = torch.empty_like(h) if need_h else None
        grad_w = torch.zeros(weight.shape, dtype=torch.float32, device=weight.device) if need_w else None
        grad_b = torch.zeros(vocab, dtype=torch.float32, device=weight.device) if (need_b and bias is not None) else None
        total = torch.zeros((), dtype=torch.float32, device=h.device)
        any_grad = grad_h is not None or grad_w is not None or grad_b is not None
        for s in range(0, h.shape[0], chunk):
            hc, tc = h[s:s + chunk], target[s:s + chunk]
            z = (hc @ weight.T).float()
            if bias is not None:
                z += bias.float()
            lse = torch.logsumexp(z, dim=-1)
            nll = lse - z.gather(1, tc[:, None]).squeeze(1)
            if smoothing:
                nll = (1 - smoothing) * nll + smoothing * (lse - z.mean(dim=-1))
            total += nll.sum()
            if not any_grad:
                continue
            g = z.sub_(lse[:, None]).exp_()  # softmax, in place of the logits
            g[torch.arange(len(tc), device=g.device), tc] -= 1 - smoothing
            if smoothing:
                g -= smoothing / vocab
            g = g.to(h.dtype)
            if grad_h is not None:
                grad_h[s:s + chunk] = g @ weight
            if grad_w is not None:
                grad_w += (g.T @ hc).float()
            if grad_b is not None:
                grad_b += g.float().sum(0)
        if not any_grad:
            return total
        ctx.save_for_backward(*(t if t is not None else torch.empty(0) for t in (grad_h, grad_w, grad_b)))
        ctx.has = (grad_h is not None, grad_w is not None, grad_b is not None)
        ctx.dtypes = (h.dtype, weight.dtype, bias.dtype if bias is not None else None)
        return total

    @staticmethod
    def backward(ctx, grad_out):
        saved = ctx.saved_tensors
        grads = [(saved[i] * grad_out.to(saved[i].dtype)).to(ctx.dtypes[i]) if ctx.has[i] else None
                 for i in range(3)]
        return (*grads, None, None, None)


def linear_cross_entropy_sum(h: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None,
                             target: torch.Tensor, smoothing: float = 0.0, chunk: int | None = None) -> torch.Tensor:
    """Summed CE of the rows of `h` through the head (weight, bias); never builds all logits at once."""
    chunk = chunk or max(1, CHUNK_ELEMENTS // weight.shape[0])
    if torch.is_grad_enabled() and (h.requires_grad or weight.requires_grad
                                    or (bias is not None and bias.requires_grad)):
        return _LinearCrossEntropy.apply(h, weight, bias, target, float(smoothing), chunk)
    with torch.no_grad():
        return _LinearCrossEntropy.forward(_NoGradCtx(), h, weight, bias, target, float(smoothing), chunk)


class _NoGradCtx:
    needs_input_grad = (False, False, False)

    def save_for_backward(self, *a):
        pass


def _unwrap(model):
    """The *ForCausalLM module inside DDP / peft wrappers, or None when its layout is unusual."""
    m = getattr(model, "module", model)  # DDP
    if hasattr(m, "get_base_model"):
        m = m.get_base_model()
    return m


# config keys of heads that transform their logits after the matmul (Gemma-2/3 soft-capping, Cohere
# and Granite scaling): the fused path computes raw `h @ W.T`, which would train another objective
LOGIT_TRANSFORMS = ("final_logit_softcapping", "logit_scale", "logits_scaling", "output_logit_scale",
                    "logit_softcapping")


def fused_loss_supported(model) -> tuple[bool, str | None]:
    """(ok, why not): decoder LMs with a plain Linear `.lm_head`, a final `.norm`, `logits_to_keep`, no aux
    loss and no transform of the logits. The last is also checked numerically once (`head_is_plain`),
    so an architecture that post-processes logits under a name we do not know falls back too."""
    lm = _unwrap(model)
    head = getattr(lm, "lm_head", None)
    try:
        decoder = lm.get_decoder()
    except Exception:  # noqa: BLE001
        return False, "the model has no decoder to read the final hidden states from"
    if not isinstance(head, torch.nn.Linear) or not isinstance(getattr(decoder, "norm", None), torch.nn.Module):
        return False, "the LM head is not a plain Linear after a final norm (e.g. LoRA on lm_head)"
    if getattr(lm.config, "output_router_logits", False):  # models that add a router aux loss to `loss`
        return False, "the model adds a router auxiliary loss to its loss"
    if type(head.weight).__name__ == "DTensor" or getattr(head.weight, "ds_id", None) is not None:
        return False, None  # sharded head (FSDP2 / ZeRO-3): the model's own loss handles the gather
    peft_cfg = getattr(getattr(model, "module", model), "peft_config", None)
    if peft_cfg and any(getattr(c, "is_prompt_learning", False) for c in peft_cfg.values()):
        return False, "prefix tuning injects its own past_key_values"
    cfgs = [lm.config, getattr(lm.config, "text_config", None)]
    for c in (c for c in cfgs if c is not None):
        for key in LOGIT_TRANSFORMS:
            v = getattr(c, key, None)
            if v not in (None, 1, 1.0, False):
                return False, f"the model transforms its logits ({key}={v})"
    if not accepts_logits_to_keep(model):
        return False, "the model's forward has no logits_to_keep"
    if not head_is_plain(model):
        return False, "the model's logits differ from lm_head(hidden states) (it post-processes them)"
    return True, None


@torch.no_grad()
def head_is_plain(model, tokens: int = 6) -> bool:
    """Whether the model's logits equal lm_head(final norm output) on a short probe sequence."""
    lm = _unwrap(model)
    emb = lm.get_input_embeddings()
    vocab = getattr(emb, "num_embeddings", None) or lm.config.vocab_size
    # a private CPU generator: neither the CPU nor the CUDA global RNG moves (randint on a CUDA device
    # would draw from the CUDA generator, which fork_rng(devices=[]) does not cover), and the probe is
    # the same every time
    ids = torch.randint(0, vocab, (1, tokens), generator=torch.Generator().manual_seed(0))
    ids = ids.to(getattr(emb, "weight", lm.lm_head.weight).device)
    caught = {}
    hook = lm.get_decoder().norm.register_forward_hook(lambda m, a, out: caught.__setitem__("h", out))
    modes = [(m, m.training) for m in model.modules()]  # per module: frozen parts may sit in eval mode
    model.eval()
    try:
        logits = model(input_ids=ids, use_cache=False).logits.float()
    finally:
        hook.remove()
        for m, training in modes:
            m.training = training
    h = caught["h"]
    h = h[0] if isinstance(h, tuple) else h
    plain = lm.lm_head(h).float()
    return bool(torch.allclose(logits, plain, rtol=1e-4, atol=1e-4 * max(1.0, float(plain.abs().max()))))


def accepts_logits_to_keep(model) -> bool:
    """Whether the wrapped LM's forward can skip the head (`logits_to_keep`)."""
    return "logits_to_keep" in inspect.signature(_unwrap(model).forward).parameters


def mean_over_tokens(total: torch.Tensor, num_items_in_batch, count) -> torch.Tensor:
    """Summed loss / the Trainer's label count for the whole step (`num_items_in_batch`, across
    accumulation and processes), or the batch's own count when there is none (evaluation)."""
    denom = num_items_in_batch if num_items_in_batch is not None else count
    return total / torch.as_tensor(denom, device=total.device).clamp(min=1)


def label_only_lm_loss(model, inputs: dict, num_items_in_batch=None, smoothing: float = 0.0):
    """(loss, outputs): the model runs with `logits_to_keep=1`; the final hidden states are caught at the
    decoder's last norm and only the positions with a next-token label go through the head."""
    lm = _unwrap(model)
    caught = {}
    hook = lm.get_decoder().norm.register_forward_hook(lambda m, a, out: caught.__setitem__("h", out))
    try:
        outputs = model(**{k: v for k, v in inputs.items() if k != "labels"}, logits_to_keep=1)
    finally:
        hook.remove()
    labels = inputs["labels"][:, 1:]
    keep = labels != IGNORE_INDEX
    h = caught["h"][:, :-1][keep]
    head = lm.lm_head
    total = linear_cross_entropy_sum(h, head.weight, head.bias, labels[keep], smoothing)
    return mean_over_tokens(total, num_items_in_batch, keep.sum()), outputs
