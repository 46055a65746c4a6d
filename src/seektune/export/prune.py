"""`seektune prune`: remove the least important attention heads and save a smaller plain-HF model.

Importance (Michel et al. 2019, "Are Sixteen Heads Really Better than One?"): for head h of a
layer, |sum over positions and head dims of activation x gradient| at the input of `o_proj`, i.e.
the first-order change of the loss if the head were masked, summed over calibration sequences.
Scores are normalised per layer (L2) for the report.

What is removed keeps the model loadable by plain transformers, whose Llama/Qwen2/Mistral
attention needs the same head count in every layer and `num_attention_heads` divisible by
`num_key_value_heads`:
* grouped-query attention (KV heads shared by g query heads): in every layer and every KV group
  the round(g x share) least important query heads go; q_proj rows and o_proj columns are sliced,
  k/v stay. With g = 3 (SmolLM2) the achievable shares are 0, 1/3, 2/3.
* multi-head attention (g = 1): in every layer the round(H x share) least important heads go,
  with their q, k, v rows and o_proj columns.
The config gets the new head counts and an explicit `head_dim`.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
import torch.nn as nn

from ..utils.console import log
from .errors import ExportError

SUPPORTED = ("llama", "qwen2", "mistral", "qwen3", "smollm3")


@dataclass
class PrunePlan:
    keep: list[list[int]]          # kept query-head indices per layer (ascending)
    heads_before: int
    heads_after: int
    kv_before: int
    kv_after: int
    share: float                   # achieved share of removed query heads
    scores: list[list[float]] = field(default_factory=list)  # per-layer L2-normalised importance


def _attention_modules(model) -> list[nn.Module]:
    mtype = getattr(model.config, "model_type", "")
    if mtype not in SUPPORTED:
        raise ExportError(f"head pruning supports {', '.join(SUPPORTED)} attention (q/k/v/o_proj); got {mtype!r} "
                          "(DeepSeek MLA heads share a compressed latent and are not pruned here)")
    layers = model.model.layers
    return [layer.self_attn for layer in layers]


def head_dim_of(model) -> int:
    c = model.config
    return getattr(c, "head_dim", None) or c.hidden_size // c.num_attention_heads


def head_importance(model, tok, texts: list[str], max_length: int = 256, log_every: int = 0) -> torch.Tensor:
    """(layers, heads) importance = sum over texts of |sum_{t,d} a * dL/da| at each o_proj input."""
    attns = _attention_modules(model)
    n_heads, d = model.config.num_attention_heads, head_dim_of(model)
    scores = torch.zeros(len(attns), n_heads)
    hooks = []

    def pre_hook(i):
        def fn(mod, args):
            x = args[0]
            if x.requires_grad:
                act = x.detach()

                def on_grad(g, act=act):
                    per_head = (act * g).view(*act.shape[:-1], n_heads, d).sum(dim=(-1, -3))  # (batch, heads)
                    scores[i].add_(per_head.abs().sum(0).float())

                x.register_hook(on_grad)
        return fn

    for i, a in enumerate(attns):
        hooks.append(a.o_proj.register_forward_pre_hook(pre_hook(i)))
    was_training = model.training
    model.eval()
    req = [p.requires_grad for p in model.parameters()]
    for p in model.parameters():
        p.requires_grad_(False)
    try:
        emb = model.get_input_embeddings()
        for k, t in enumerate(texts):
            ids = tok(t, add_special_tokens=False, return_tensors="pt", truncation=True,
                      max_length=max_length)["input_ids"]
            if ids.shape[1] < 2:
                continue
            x = emb(ids).detach().requires_grad_(True)  # grads flow to activations, no weight grads kept
            loss = model(inputs_embeds=x, labels=ids).loss
            loss.backward()
            if log_every and (k + 1) % log_every == 0:
                log(f"importance: {k + 1}/{len(texts)} calibration texts")
    finally:
        for h in hooks:
            h.remove()
        for p, r in zip(model.parameters(), req):
            p.requires_grad_(r)
        model.train(was_training)
    return scores


def plan_pruning(model, scores: torch.Tensor, share: float) -> PrunePlan:
    c = model.config
    h, kv = c.num_attention_heads, c.num_key_value_heads
    g = h // kv
    if not 0 < share < 1:
        raise ExportError(f"--heads must be a share between 0 and 1 (got {share})")
    if g > 1:
        r = round(g * share)
        if r == 0:
            raise ExportError(f"--heads {share}: each KV group has {g} query heads, so the smallest prunable share "
                              f"is 1/{g} = {1 / g:.2f}")
        if r >= g:
            r = g - 1
        keep = []
        for row in scores:
            kept = []
            for j in range(kv):
                grp = row[j * g:(j + 1) * g]
                kept += sorted((j * g + int(k) for k in torch.topk(grp, g - r).indices))
            keep.append(kept)
        heads_after, kv_after = kv * (g - r), kv
    else:
        r = round(h * share)
        if r == 0 or r >= h:
            raise ExportError(f"--heads {share}: with {h} heads per layer that removes {r} heads")
        keep = [sorted(int(k) for k in torch.topk(row, h - r).indices) for row in scores]
        heads_after, kv_after = h - r, h - r
    norm = scores / scores.norm(dim=1, keepdim=True).clamp(min=1e-12)
    return PrunePlan(keep, h, heads_after, kv, kv_after, 1 - heads_after / h, norm.tolist())


def _slice_linear(lin: nn.Linear, idx: torch.Tensor, dim: int) -> nn.Linear:
    w = lin.weight.data.index_select(dim, idx).clone()
    out_f, in_f = w.shape
    new = nn.Linear(in_f, out_f, bias=lin.bias is not None, dtype=w.dtype, device=w.device)
    new.weight.data.copy_(w)
    if lin.bias is not None:
        new.bias.data.copy_(lin.bias.data if dim == 1 else lin.bias.data.index_select(0, idx))
    return new


def _rows(heads: list[int], d: int) -> torch.Tensor:
    return torch.tensor([hh * d + k for hh in heads for k in range(d)], dtype=torch.long)


def apply_pruning(model, plan: PrunePlan) -> None:
    """Slice the attention weights in place and update the config."""
    d = head_dim_of(model)
    for attn, kept in zip(_attention_modules(model), plan.keep):
        q_rows = _rows(kept, d)
        attn.q_proj = _slice_linear(attn.q_proj, q_rows, 0)
        attn.o_proj = _slice_linear(attn.o_proj, q_rows, 1)
        if plan.kv_after != plan.kv_before:  # MHA: k/v heads follow the query heads
            attn.k_proj = _slice_linear(attn.k_proj, q_rows, 0)
            attn.v_proj = _slice_linear(attn.v_proj, q_rows, 0)
        attn.head_dim = d
        attn.num_key_value_groups = plan.heads_after // plan.kv_after
        for name in ("num_heads", "num_attention_heads"):
            if hasattr(attn, name):
                setattr(attn, name, plan.heads_after)
        for name in ("num_key_value_heads",):
            if hasattr(attn, name):
                setattr(attn, name, plan.kv_after)
    model.config.head_dim = d
    model.config.num_attention_heads = plan.heads_after
    model.config.num_key_value_heads = plan.kv_after


@dataclass
class PruneReport:
    out: str
    share_requested: float
    share_removed: float
    heads_per_layer: str
    rows: list[dict]
    calibration_texts: int
    eval_texts: int
    seconds: float
    notes: list[str] = field(default_factory=list)


def prune_run(target: str, out: str | Path, share: float, data: str | None = None, calib_samples: int = 32,
              eval_samples: int = 32, max_length: int = 256, overwrite: bool = False,
              recover_steps: int = 0, measure: bool = True) -> PruneReport:
    """Score heads on calibration texts, prune, save to `out`, and measure before/after."""

    from ..eval.metrics import text_perplexity
    from .measure import latency_per_token, param_count, texts_from_file
    from .merge import attach_chat_template, folder_size, prepare_out_dir
    from .source import load_causal_lm, resolve_source

    t0 = time.time()
    src = resolve_source(target)
    out = prepare_out_dir(out, overwrite)
    data = data or _run_data(src)
    if not data:
        raise ExportError("no calibration data: pass --data FILE (the run's config names none)")
    model, tok = load_causal_lm(src, merge=True)
    _attention_modules(model)  # fail early on unsupported architectures
    calib = texts_from_file(data, tok, src.template, n=calib_samples)
    evals = texts_from_file(data, tok, src.template, n=eval_samples, skip=calib_samples) if measure else []
    log(f"prune: scoring {model.config.num_hidden_layers} layers x {model.config.num_attention_heads} heads on "
        f"{len(calib)} calibration texts from {data}")
    scores = head_importance(model, tok, calib, max_length, log_every=max(1, len(calib) // 4))
    plan = plan_pruning(model, scores, share)
    prompt = evals[0][:300] if evals else calib[0][:300]
    rows = []
    if measure:
        rows.append(_measure("before", model, tok, evals, prompt, max_length, param_count, text_perplexity,
                             latency_per_token))
    apply_pruning(model, plan)
    log(f"prune: {plan.heads_before} -> {plan.heads_after} query heads per layer "
        f"({100 * plan.share:.0f}% removed), KV heads {plan.kv_before} -> {plan.kv_after}")
    notes = []
    if recover_steps:
        model = _recover(model, tok, src, data, recover_steps, out, max_length, calib_samples)
        notes.append(f"recovery fine-tune: {recover_steps} full-parameter steps on the first {calib_samples} "
                     f"records of {data} (the calibration records; the eval records are not trained on)")
    kind, tnotes = attach_chat_template(tok, src.template)
    notes += tnotes
    model.config.use_cache = True
    model.save_pretrained(str(out), safe_serialization=True)
    tok.save_pretrained(str(out))
    if measure:
        from transformers import AutoModelForCausalLM

        reloaded = AutoModelForCausalLM.from_pretrained(str(out), dtype=torch.float32).eval()
        rows.append(_measure("after" + (" + recovery" if recover_steps else ""), reloaded, tok, evals, prompt,
                             max_length, param_count, text_perplexity, latency_per_token))
        rows[-1]["disk_mb"] = round(folder_size(out) / 1e6, 1)
    rep = PruneReport(str(out), share, round(plan.share, 4), f"{plan.heads_before} -> {plan.heads_after}", rows,
                      len(calib), len(evals), round(time.time() - t0, 1), notes)
    (out / "prune.json").write_text(json.dumps({**asdict(rep), "kept_heads": plan.keep, "importance": plan.scores},
                                               indent=2), encoding="utf-8")
    return rep


def _measure(label, model, tok, evals, prompt, max_length, param_count, perplexity, latency_per_token) -> dict:
    n = param_count(model)
    return {"model": label, "params_m": round(n / 1e6, 2), "fp32_mb": round(4 * n / 1e6, 1),
            "ppl": round(perplexity(model, tok, evals, max_length), 3) if evals else None,
            "ms_per_token": round(1000 * latency_per_token(model, tok, prompt, 16), 2)}


def _run_data(src) -> str | None:
    return src.run_cfg.data.train if src.run_cfg is not None else None


def _recover(model, tok, src, data: str, steps: int, out: Path, max_length: int, n_records: int):
    """A short full-parameter SFT of the pruned model with the standard recipe."""
    from ..config import Config
    from ..stages import run_stage

    tmp_base = out.with_name(out.name + ".pruned-base")
    model.save_pretrained(str(tmp_base))
    tok.save_pretrained(str(tmp_base))
    cfg = Config.model_validate({
        "model": {"name_or_path": str(tmp_base)}, "adapter": {"method": "full"},
        "data": {"train": data, "template": src.template, "max_length": max_length, "eval_ratio": 0.0,
                 "max_samples": n_records},
        "train": {"output_dir": str(out.with_name(out.name + ".recover")), "max_steps": steps, "lr": 2e-5,
                  "batch_size": 2, "logging_steps": max(1, steps // 5), "num_threads": torch.get_num_threads()},
        "eval": {"report": False, "before_after": False}})
    trainer = run_stage(cfg, overwrite=True, progress=False).trainer
    import shutil

    shutil.rmtree(tmp_base, ignore_errors=True)
    return trainer.model.eval()
