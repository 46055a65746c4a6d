"""train.stage: ppo: a compact PPO (RLHF) loop (trl 1.16 ships no PPOTrainer).

Pieces, each small and tested:
- policy: the causal LM with a LoRA adapter; the reference policy is the same model with the
  adapter disabled (no second copy); a value head (one Linear) reads the policy's last hidden state;
- rollout: sample responses to template-rendered prompts (max_new_tokens, temperature, top_k, top_p);
- reward: the scalar of a reward model (an rm run, a model folder or a preset) on prompt+response,
  optionally whitened with running statistics and clipped; a per-token KL penalty
  -kl_coef * (log pi - log ref) is added at every response token, the score at the last one;
- advantages by GAE(gamma, lambda), whitened; PPO-clip policy loss + clipped value loss,
  `ppo_epochs` passes over minibatches of train.batch_size;
- KL control: fixed, or adaptive towards ppo.target_kl (Ziegler et al. 2019).
Logged per iteration (metrics.jsonl, TensorBoard): score, reward, kl, entropy, kl_coef, losses,
clip fraction, response length; the reward curve is drawn to reward_curve.png. Checkpoints (the
adapter, value head, optimizer and RNG states in safetensors, the rest in JSON) make `--resume`
continue at the next iteration with the same random stream.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

from transformers import set_seed

from ..data.templates import get_template
from ..engine.callbacks import MetricsWriter
from ..engine.interrupt import StopSignals, TrainingInterrupted
from ..engine.run import RunFolder
from ..engine.state_files import load_optimizer_tensors, optimizer_tensors
from ..engine.summary import StageResult, evidence, make_summary
from ..models.adapters import apply_adapter
from ..models.loader import load_model
from ..utils.console import log
from ..utils.threads import configure_threads
from .common import load_pairs


# ---------------------------------------------------------------------------------------------
# Math: pure functions on tensors (tested on their own)
# ---------------------------------------------------------------------------------------------

def masked_mean(x: torch.Tensor, mask: torch.Tensor, dim=None) -> torch.Tensor:
    if dim is None:
        return (x * mask).sum() / mask.sum().clamp(min=1)
    return (x * mask).sum(dim) / mask.sum(dim).clamp(min=1)


def masked_whiten(x: torch.Tensor, mask: torch.Tensor, shift_mean: bool = True) -> torch.Tensor:
    mean = masked_mean(x, mask)
    var = masked_mean((x - mean) ** 2, mask)
    out = (x - mean) * torch.rsqrt(var + 1e-8)
    return (out if shift_mean else out + mean) * mask


def gae(rewards: torch.Tensor, values: torch.Tensor, mask: torch.Tensor, gamma: float, lam: float):
    """Generalised advantage estimation over response tokens (mask 1 = real token, 0 = padding after it).

    Returns (advantages, returns); values after the last real token count as 0."""
    T = rewards.shape[1]
    adv = torch.zeros_like(rewards)
    last = torch.zeros(rewards.shape[0], dtype=rewards.dtype, device=rewards.device)
    for t in reversed(range(T)):
        next_v = values[:, t + 1] * mask[:, t + 1] if t + 1 < T else torch.zeros_like(last)
        delta = rewards[:, t] + gamma * next_v - values[:, t]
        last = delta + gamma * lam * last * (mask[:, t + 1] if t + 1 < T else 0)
        adv[:, t] = last * mask[:, t]
    return adv, (adv + values) * mask


def kl_shaped_rewards(score: torch.Tensor, logp: torch.Tensor, ref_logp: torch.Tensor, mask: torch.Tensor,
                      kl_coef: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-token reward: -kl_coef * (logp - ref_logp) everywhere, plus the score at the last real token."""
    kl = (logp - ref_logp) * mask
    rewards = -kl_coef * kl
    last = (mask.sum(1).long() - 1).clamp(min=0)
    rewards[torch.arange(len(score)), last] += score
    return rewards, kl


def ppo_losses(logp, old_logp, values, old_values, adv, returns, mask, clip: float, clip_v: float):
    """PPO-clip policy loss and clipped value loss, both averaged over real response tokens."""
    ratio = torch.exp(logp - old_logp)
    pg = torch.max(-adv * ratio, -adv * ratio.clamp(1 - clip, 1 + clip))
    pg_loss = masked_mean(pg, mask)
    v_clipped = old_values + (values - old_values).clamp(-clip_v, clip_v)
    vf = 0.5 * torch.max((values - returns) ** 2, (v_clipped - returns) ** 2)
    vf_loss = masked_mean(vf, mask)
    with torch.no_grad():
        clipfrac = masked_mean(((ratio - 1).abs() > clip).float(), mask)
        approx_kl = masked_mean(0.5 * (logp - old_logp) ** 2, mask)
    return pg_loss, vf_loss, {"clipfrac": float(clipfrac), "approx_kl": float(approx_kl)}


class AdaptiveKL:
    """kl_coef follows the measured KL towards `target` (fixed when target is None)."""

    def __init__(self, init: float, target: float | None, horizon: int):
        self.value, self.target, self.horizon = init, target, horizon

    def update(self, kl: float, n_samples: int) -> None:
        if self.target is None:
            return
        err = max(-0.2, min(0.2, kl / self.target - 1))
        self.value *= 1 + err * n_samples / self.horizon


class RunningMoments:
    """Running mean/std of scores (Chan et al. parallel update) for reward normalisation."""

    def __init__(self):
        self.mean, self.var, self.count = 0.0, 1.0, 1e-4

    def update(self, x: torch.Tensor) -> None:
        m, v, n = float(x.mean()), float(x.var(unbiased=False)), x.numel()
        delta, tot = m - self.mean, self.count + n
        self.mean += delta * n / tot
        self.var = (self.var * self.count + v * n + delta ** 2 * self.count * n / tot) / tot
        self.count = tot

    @property
    def std(self) -> float:
        return math.sqrt(max(self.var, 1e-8))


# ---------------------------------------------------------------------------------------------
# Model pieces
# ---------------------------------------------------------------------------------------------

class ValueHead(nn.Module):
    def __init__(self, hidden: int):
        super().__init__()
        self.dropout = nn.Identity()
        self.summary = nn.Linear(hidden, 1)
        nn.init.zeros_(self.summary.bias)
        nn.init.normal_(self.summary.weight, std=1.0 / math.sqrt(hidden + 1))

    def forward(self, h):
        return self.summary(h.float()).squeeze(-1)


@dataclass
class Rollout:
    input_ids: torch.Tensor  # (B, P+R) left-padded prompt then response
    attention_mask: torch.Tensor
    prompt_len: int
    response_mask: torch.Tensor  # (B, R) 1 for response tokens up to and including eos
    texts: list[str]  # prompt + response text for the reward model
    ended: torch.Tensor  # (B,) the response produced eos


def _positions(mask: torch.Tensor) -> torch.Tensor:
    return (mask.long().cumsum(-1) - 1).clamp(min=0)


def forward_response(model, value_head, ids, attn, prompt_len: int, with_values: bool = True):
    """Log-probs of the response tokens, their entropies and the values of the states before them."""
    out = model(input_ids=ids, attention_mask=attn, position_ids=_positions(attn),
                output_hidden_states=with_values, use_cache=False)
    logits = out.logits[:, prompt_len - 1:-1].float()
    targets = ids[:, prompt_len:]
    logsm = F.log_softmax(logits, dim=-1)
    logp = logsm.gather(-1, targets.unsqueeze(-1)).squeeze(-1)
    entropy = -(logsm.exp() * logsm).sum(-1)
    values = value_head(out.hidden_states[-1][:, prompt_len - 1:-1]) if with_values else None
    return logp, entropy, values


@torch.no_grad()
def generate(model, tok, prompts: list[str], a, max_prompt: int) -> Rollout:
    side = tok.padding_side
    tok.padding_side = "left"
    try:
        enc = tok(prompts, add_special_tokens=False, padding=True, truncation=True, max_length=max_prompt,
                  return_tensors="pt")
    finally:
        tok.padding_side = side
    model.eval()
    gen = model.generate(**enc, do_sample=True, max_new_tokens=a.max_new_tokens, temperature=a.temperature,
                         top_k=a.top_k or None, top_p=a.top_p, pad_token_id=tok.pad_token_id,
                         eos_token_id=tok.eos_token_id, use_cache=True)
    P = enc["input_ids"].shape[1]
    resp = gen[:, P:]
    is_eos = resp == tok.eos_token_id
    # real tokens: up to and including the first eos
    after_eos = (is_eos.long().cumsum(1) - is_eos.long()) > 0
    rmask = (~after_eos).long()
    resp = resp.masked_fill(after_eos, tok.pad_token_id)
    ids = torch.cat([enc["input_ids"], resp], 1)
    attn = torch.cat([enc["attention_mask"], rmask], 1)
    texts = [p + tok.decode(r[m.bool()], skip_special_tokens=False) for p, r, m in zip(prompts, resp, rmask)]
    return Rollout(ids, attn, P, rmask, texts, is_eos.any(1))


def _score(rm, rm_tok, texts: list[str], bs: int) -> torch.Tensor:
    from ..eval.preference import score_texts

    return score_texts(rm, rm_tok, texts, bs)


# ---------------------------------------------------------------------------------------------
# Checkpoints: adapter, value head, optimizer and RNG in safetensors, the rest in JSON
# ---------------------------------------------------------------------------------------------

def save_state(folder: Path, it: int, policy, value_head, opt, gen, kl_ctl, moments) -> None:
    from peft import get_peft_model_state_dict
    from safetensors.torch import save_file

    save_file({k: v.contiguous() for k, v in get_peft_model_state_dict(policy).items()}, str(folder / "adapter.safetensors"))
    save_file({k: v.contiguous() for k, v in value_head.state_dict().items()}, str(folder / "value_head.safetensors"))
    tensors, meta = optimizer_tensors(opt)
    save_file(tensors, str(folder / "optimizer.safetensors"))
    save_file({"prompts": gen.get_state(), "torch": torch.get_rng_state()}, str(folder / "rng.safetensors"))
    (folder / "state.json").write_text(json.dumps({
        "iteration": it, "optimizer": meta, "kl_coef": kl_ctl.value,
        "moments": {"mean": moments.mean, "var": moments.var, "count": moments.count}}))


def load_state(folder: Path, policy, value_head, opt, gen, kl_ctl, moments) -> int:
    from peft import set_peft_model_state_dict
    from safetensors.torch import load_file

    set_peft_model_state_dict(policy, load_file(str(folder / "adapter.safetensors")))
    value_head.load_state_dict(load_file(str(folder / "value_head.safetensors")))
    st = json.loads((folder / "state.json").read_text())
    load_optimizer_tensors(opt, load_file(str(folder / "optimizer.safetensors")), st["optimizer"])
    rng = load_file(str(folder / "rng.safetensors"))
    gen.set_state(rng["prompts"])
    torch.set_rng_state(rng["torch"])
    kl_ctl.value = st["kl_coef"]
    moments.mean, moments.var, moments.count = st["moments"]["mean"], st["moments"]["var"], st["moments"]["count"]
    return int(st["iteration"])


def _history(run: RunFolder) -> list[dict]:
    if not run.metrics.exists():
        return []
    out = []
    for line in run.metrics.read_text(encoding="utf-8").splitlines():
        try:
            rec = json.loads(line)
        except json.JSONDecodeError:
            continue
        if "score" in rec:
            out.append(rec)
    return out


# ---------------------------------------------------------------------------------------------
# The loop
# ---------------------------------------------------------------------------------------------

def _save_every(t, iters: int) -> int | None:
    if t.save_steps is None:
        return None
    return max(1, math.ceil(iters / 10)) if t.save_steps == "auto" else t.save_steps


def run(cfg, run: RunFolder, progress: bool = True, callbacks: list | None = None) -> StageResult:
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

    from ..eval.preference import load_reward_model

    a, t = cfg.ppo, cfg.train
    # 1. setup
    threads = configure_threads(t.num_threads)
    set_seed(t.seed)
    policy, tok, model_path = load_model(cfg.model, log=log, quantize=cfg.adapter.quantize_base)
    template = get_template(cfg.data.template, tok)
    train, _, stats = load_pairs(cfg, run, tok, template, a.max_prompt_length, prompts_only=True)
    prompts = [p.prompt for p in train]
    policy, rep = apply_adapter(policy, cfg.adapter, "causal_lm", log=log)
    for line in rep.lines():
        log(line)
    rm, rm_tok = load_reward_model(a.reward_model, log=log)
    log(f"ppo: policy {cfg.model.name_or_path} (LoRA; reference = adapter disabled), reward model {a.reward_model}, "
        f"{len(prompts)} prompts, template {template.name}, threads {threads}")
    value_head = ValueHead(policy.config.hidden_size)
    params = [p for p in policy.parameters() if p.requires_grad] + list(value_head.parameters())
    opt = torch.optim.AdamW(params, lr=t.lr, weight_decay=t.weight_decay)
    iters = t.max_steps if t.max_steps > 0 else max(1, int(t.epochs * len(prompts) / a.rollout_batch_size))
    kl_ctl, moments = AdaptiveKL(a.kl_coef, a.target_kl, a.kl_horizon), RunningMoments()
    gen = torch.Generator().manual_seed(t.seed)
    start = 1
    if run.resume_from:
        start = load_state(Path(run.resume_from), policy, value_head, opt, gen, kl_ctl, moments) + 1
        log(f"ppo: resuming at iteration {start}")
    every = _save_every(t, iters)
    out = MetricsWriter(run.path).open() if run.main else None
    history = _history(run)

    # 2. train
    t_train = time.time()
    bar = Progress(TextColumn("[bold]ppo"), BarColumn(), TextColumn("{task.completed}/{task.total}"),
                   TimeElapsedColumn(), TextColumn("eta"), TimeRemainingColumn(), TextColumn("{task.fields[info]}"),
                   disable=not progress)
    with bar, StopSignals() as stop:
        task = bar.add_task("ppo", total=iters, completed=start - 1, info="")
        for it in range(start, iters + 1):
            idx = torch.randint(len(prompts), (a.rollout_batch_size,), generator=gen).tolist()
            rec = ppo_iteration(policy, value_head, opt, tok, rm, rm_tok, [prompts[i] for i in idx], cfg,
                                kl_ctl, moments)
            rec["step"] = it
            history.append(rec)
            if out is not None:
                out.write(rec, prefix="ppo")
            if it % t.logging_steps == 0 or it == 1 or it == iters:
                log(f"ppo {it}/{iters}: score {rec['score']:.4f} reward {rec['reward']:.4f} kl {rec['kl']:.4f} "
                    f"entropy {rec['entropy']:.3f} kl_coef {rec['kl_coef']:.4f}")
            bar.update(task, completed=it, info=f"score {rec['score']:.3f} kl {rec['kl']:.3f}")
            if (every and it % every == 0 and it < iters) or stop.requested:
                saved = run.checkpoints.save(it, lambda d: save_state(d, it, policy, value_head, opt, gen, kl_ctl,
                                                                      moments))
                if stop.requested:
                    raise TrainingInterrupted(stop.signum, it, str(saved) if saved else None)
    train_s = time.time() - t_train
    if out is not None:
        out.close()

    # 3. save: the adapter (plain peft) and the value head (safetensors)
    def save(d: Path):
        from safetensors.torch import save_file

        policy.save_pretrained(str(d))
        tok.save_pretrained(str(d))
        save_file({k: v.contiguous() for k, v in value_head.state_dict().items()}, str(d / "value_head.safetensors"))

    run.save_final(save)
    if run.main:
        plot_reward_curve(history, run.path / "reward_curve.png")

    # 4. summary
    first, last = _window(history[: max(1, len(history) // 4)]), _window(history[-max(1, len(history) // 4):])
    summary = make_summary(
        "ppo", cfg, adapter_report=rep, model_path=model_path, data=stats, steps=iters, train_seconds=train_s,
        threads=threads, final=str(run.final), resumed_from=run.resume_from,
        evidence_rows=[evidence("mean reward-model score (first -> last quarter)", first, last, "higher",
                                key="score")],
        curves=[{"title": "PPO: reward-model score and KL to the reference", "keys": ["score", "reward", "kl"]}],
        reward_model=a.reward_model, iterations=iters, score_first_quarter=first, score_last_quarter=last,
        final_kl_coef=kl_ctl.value, reward_curve=str(run.path / "reward_curve.png"),
        figures=["reward_curve.png"],
        curve=[{k: r[k] for k in ("step", "score", "reward", "kl", "entropy")} for r in history])
    return StageResult(summary, model=policy, tokenizer=tok, extra={"value_head": value_head})


def _window(recs: list[dict]) -> float:
    return round(sum(r["score"] for r in recs) / max(1, len(recs)), 4)


def ppo_iteration(policy, value_head, opt, tok, rm, rm_tok, prompts: list[str], cfg, kl_ctl: AdaptiveKL,
                  moments: RunningMoments) -> dict:
    """One rollout + `ppo_epochs` optimisation passes; returns the logged numbers."""
    a, t = cfg.ppo, cfg.train
    roll = generate(policy, tok, prompts, a, min(a.max_prompt_length, cfg.data.max_length))
    raw = _score(rm, rm_tok, roll.texts, t.eval_batch_size or t.batch_size)
    if a.missing_eos_penalty is not None:
        raw = raw - a.missing_eos_penalty * (~roll.ended).float()
    score = raw
    if a.reward_norm:
        moments.update(raw)
        score = (raw - moments.mean) / moments.std
    if a.reward_clip is not None:
        score = score.clamp(-a.reward_clip, a.reward_clip)
    mask = roll.response_mask.float()
    P = roll.prompt_len
    with torch.no_grad():
        policy.eval()
        old_logp, ent, old_values = forward_response(policy, value_head, roll.input_ids, roll.attention_mask, P)
        with policy.disable_adapter():
            ref_logp, _, _ = forward_response(policy, value_head, roll.input_ids, roll.attention_mask, P,
                                              with_values=False)
        rewards, kl = kl_shaped_rewards(score, old_logp, ref_logp, mask, kl_ctl.value)
        adv, returns = gae(rewards, old_values, mask, a.gamma, a.lam)
        adv = masked_whiten(adv, mask)
    policy.train()
    stats = {"pg_loss": [], "vf_loss": [], "clipfrac": [], "approx_kl": []}
    B, mb = len(prompts), t.batch_size
    for _ in range(a.ppo_epochs):
        for i in torch.randperm(B).split(mb):
            logp, _, values = forward_response(policy, value_head, roll.input_ids[i], roll.attention_mask[i], P)
            pg, vf, extra = ppo_losses(logp, old_logp[i], values, old_values[i], adv[i], returns[i], mask[i],
                                       a.clip_range, a.clip_range_value)
            loss = pg + a.vf_coef * vf
            opt.zero_grad()
            loss.backward()
            torch.nn.utils.clip_grad_norm_([p for g in opt.param_groups for p in g["params"]], t.max_grad_norm)
            opt.step()
            stats["pg_loss"].append(float(pg.detach()))
            stats["vf_loss"].append(float(vf.detach()))
            for k, v in extra.items():
                stats[k].append(v)
    kl_seq = float(kl.sum(1).mean())
    coef_used = kl_ctl.value
    kl_ctl.update(kl_seq, B)
    return {"score": round(float(raw.mean()), 5), "score_std": round(float(raw.std()) if B > 1 else 0.0, 5),
            "reward": round(float(rewards.sum(1).mean()), 5), "kl": round(kl_seq, 5),
            "entropy": round(float(masked_mean(ent, mask)), 5), "kl_coef": coef_used,
            "response_length": round(float(mask.sum(1).mean()), 2), "ended_share": round(float(roll.ended.float().mean()), 3),
            **{k: round(sum(v) / len(v), 5) for k, v in stats.items()}}


def plot_reward_curve(history: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    steps = [r["step"] for r in history]
    fig, ax = plt.subplots(1, 2, figsize=(9, 3.2))
    ax[0].plot(steps, [r["score"] for r in history], label="reward-model score")
    k = max(2, len(history) // 5)
    if len(history) >= 2 * k:
        smooth = [sum(r["score"] for r in history[max(0, i - k + 1): i + 1]) / len(history[max(0, i - k + 1): i + 1])
                  for i in range(len(history))]
        ax[0].plot(steps, smooth, label=f"moving mean ({k})")
    ax[0].set_xlabel("PPO iteration")
    ax[0].legend()
    ax[1].plot(steps, [r["kl"] for r in history], color="tab:red", label="KL to reference")
    ax[1].set_xlabel("PPO iteration")
    ax[1].legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
