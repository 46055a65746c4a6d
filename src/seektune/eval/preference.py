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
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from ..config import ModelConfig
    from ..engine.artifacts import ArtifactError, resolve
    from ..models.loader import load_model
    from ..models.presets import ModelError, fix_pad_token

    try:
        art = resolve(spec)
    except ArtifactError as e:
        raise ModelError(f"ppo.reward_model: {e}") from None
    if art.kind == "adapter":
        from peft import PeftModel

        base = AutoModelForSequenceClassification.from_pretrained(art.base_path, num_labels=1)
        tok = AutoTokenizer.from_pretrained(str(art.path))
        fix_pad_token(tok)
        base.config.pad_token_id = tok.pad_token_id
        model = PeftModel.from_pretrained(base, str(art.path)).merge_and_unload()
    elif Path(spec).expanduser().exists():  # a model folder (or a full fine-tune's final/)
        model = AutoModelForSequenceClassification.from_pretrained(str(art.path), num_labels=1)
        tok = AutoTokenizer.from_pretrained(str(art.path))
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
