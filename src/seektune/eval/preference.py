"""Scoring with reward models: the scalar of a text, pairwise accuracy on held-out pairs, loading one.

The rm stage reports its held-out pairwise accuracy (share of pairs with r(chosen) > r(rejected))
before and after training on exactly the same pairs; the ppo stage scores its rollouts with a
reward model that `load_reward_model` finds from a run folder, a model folder or a preset.
"""

from __future__ import annotations

from pathlib import Path

import torch

from ..data.preference import RenderedPair


@torch.no_grad()
def score_texts(model, tok, texts: list[str], batch_size: int = 8) -> torch.Tensor:
    """The scalar reward of each text (right padding; the head reads the last real token)."""
    was_training = model.training
    model.eval()
    out = []
    side = tok.padding_side
    tok.padding_side = "right"
    try:
        for i in range(0, len(texts), batch_size):
            enc = tok(texts[i:i + batch_size], add_special_tokens=False, padding=True, return_tensors="pt")
            enc = {k: v.to(model.device) for k, v in enc.items()}
            out.append(model(**enc).logits[:, 0].float().cpu())
    finally:
        tok.padding_side = side
        model.train(was_training)
    return torch.cat(out) if out else torch.zeros(0)


def pairwise_accuracy(model, tok, pairs: list[RenderedPair], batch_size: int = 8) -> dict:
    """Share of pairs with r(chosen) > r(rejected), and the mean margin."""
    if not pairs:
        return {"accuracy": None, "margin": None, "pairs": 0}
    rc = score_texts(model, tok, [p.prompt + p.chosen for p in pairs], batch_size)
    rr = score_texts(model, tok, [p.prompt + p.rejected for p in pairs], batch_size)
    return {"accuracy": round(float((rc > rr).float().mean()), 4), "margin": round(float((rc - rr).mean()), 4),
            "pairs": len(pairs)}


def load_reward_model(spec: str, log=print):
    """A frozen reward model in eval mode, and its tokenizer, from an rm run folder (or its final/), a
    model folder with a 1-label head, or a preset."""
    from transformers import AutoModelForSequenceClassification

    from ..config import ModelConfig
    from ..engine.artifacts import ArtifactError, resolve
    from ..models.loader import load_model
    from ..models.presets import ModelError, fix_pad_token
    from ..models.tokenizer_file import from_pretrained as load_tok

    try:
        art = resolve(spec)
    except ArtifactError as e:
        raise ModelError(f"ppo.reward_model: {e}") from None
    if art.kind == "adapter":
        from peft import PeftModel

        base = AutoModelForSequenceClassification.from_pretrained(art.base_path, num_labels=1)
        tok = load_tok(art.path, log=log)
        fix_pad_token(tok)
        base.config.pad_token_id = tok.pad_token_id
        model = PeftModel.from_pretrained(base, str(art.path)).merge_and_unload()
    elif Path(spec).expanduser().exists():  # a model folder (or a full fine-tune's final/)
        model = AutoModelForSequenceClassification.from_pretrained(str(art.path), num_labels=1)
        tok = load_tok(art.path, log=log)
        fix_pad_token(tok)
        model.config.pad_token_id = tok.pad_token_id
    else:  # a preset: a fresh scalar head on the preset's base
        try:
            model, tok, _ = load_model(ModelConfig(name_or_path=spec, task="sequence_classification", num_labels=1),
                                       num_labels=1, log=log)
        except ModelError as e:
            raise ModelError(f"ppo.reward_model: {e}") from None
    model.eval()
    for q in model.parameters():
        q.requires_grad_(False)
    return model, tok


@torch.no_grad()
def completion_logps(model, tok, prompts: list[str], completions: list[str], batch_size: int = 8) -> list[float]:
    """Mean per-token log-probability of each completion after its prompt (the policy alone, no reference)."""
    was_training = model.training
    model.eval()
    out: list[float] = []
    try:
        pad = tok.pad_token_id if tok.pad_token_id is not None else 0
        for i in range(0, len(prompts), batch_size):
            rows = []
            for p, c in zip(prompts[i:i + batch_size], completions[i:i + batch_size]):
                pi = tok(p, add_special_tokens=False)["input_ids"]
                ci = tok(c, add_special_tokens=False)["input_ids"]
                rows.append((pi + ci, len(pi)))
            n = max(len(r) for r, _ in rows)
            ids = torch.full((len(rows), n), pad, dtype=torch.long)
            mask = torch.zeros((len(rows), n), dtype=torch.long)
            for j, (r, _) in enumerate(rows):
                ids[j, :len(r)] = torch.tensor(r)
                mask[j, :len(r)] = 1
            dev = next(model.parameters()).device
            logits = model(input_ids=ids.to(dev), attention_mask=mask.to(dev)).logits.float()
            logp = torch.log_softmax(logits[:, :-1], -1).gather(-1, ids[:, 1:].to(dev).unsqueeze(-1)).squeeze(-1)
            for j, (r, k) in enumerate(rows):
                span = logp[j, k - 1:len(r) - 1]
                out.append(float(span.mean()) if span.numel() else float("nan"))
    finally:
        model.train(was_training)
    return out


def logp_preference(model, tok, pairs: list[RenderedPair], batch_size: int = 8) -> dict:
    """Held-out preference of the policy itself: share of pairs whose chosen reply has the higher mean token
    log-likelihood, and the mean margin. The same measure for every preference method (DPO, KTO, ORPO, SimPO
    differ in what they optimise, not in what this reads), so their runs compare on one scale."""
    if not pairs:
        return {"accuracy": None, "margin": None, "pairs": 0}
    lc = completion_logps(model, tok, [p.prompt for p in pairs], [p.chosen for p in pairs], batch_size)
    lr = completion_logps(model, tok, [p.prompt for p in pairs], [p.rejected for p in pairs], batch_size)
    d = [a - b for a, b in zip(lc, lr)]
    return {"accuracy": round(sum(x > 0 for x in d) / len(d), 4), "margin": round(sum(d) / len(d), 4),
            "pairs": len(pairs)}
