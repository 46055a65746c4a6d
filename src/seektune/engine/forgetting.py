"""Against forgetting: replay of general data, elastic weight consolidation (EWC), and
adversarial training on input embeddings (FGM / PGD).

- Replay mixes a seeded sample of general data into the training samples, counted in samples.
- EWC estimates the diagonal Fisher information once, on reference data, from the model before
  fine-tuning (for LoRA: at the adapter's start; for continual runs: at the previous run's
  weights) and adds lambda/2 * sum F (theta - theta*)^2 over trainable parameters to the loss.
- FGM/PGD perturb the *output* of the input-embedding layer along the loss gradient, so they work
  with frozen embeddings (LoRA) and leave the embedding weights untouched.
"""

from __future__ import annotations

import random
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

# ------------------------------------------------------------------------------------------
# Replay
# ------------------------------------------------------------------------------------------


def replay_count(n_domain: int, ratio: float) -> int:
    """Number of general samples so that they make up `ratio` of the training samples."""
    return int(round(n_domain * ratio / (1 - ratio))) if ratio > 0 else 0


def draw_replay(pool: list, n_domain: int, ratio: float, seed: int) -> list:
    """`replay_count(n_domain, ratio)` general samples from the pool (seeded; with replacement only when
    the pool is too small). Counted in *samples*, before packing: packing then fills rows with domain
    and general samples alike, so 10% means 10% of the samples trained on (it used to count packed
    rows: 1 general sample per 54 domain samples at ratio 0.1 on Huatuo). The draw is made once per
    run, so every epoch has the same rows and a resumed run continues on identical data."""
    k = replay_count(n_domain, ratio)
    rng = random.Random(seed * 1000 + 17)
    if not pool or k == 0:
        return []
    if len(pool) >= k:
        return rng.sample(pool, k)
    return [rng.choice(pool) for _ in range(k)]


# ------------------------------------------------------------------------------------------
# EWC
# ------------------------------------------------------------------------------------------


def estimate_fisher(model, batches, max_samples: int) -> dict[str, torch.Tensor]:
    """Diagonal empirical Fisher: mean over samples of the squared gradient of the sample's loss.

    Only trainable parameters get an entry (frozen ones have zero Fisher by definition).
    """
    params = {n: p for n, p in model.named_parameters() if p.requires_grad}
    fisher = {n: torch.zeros_like(p, dtype=torch.float32) for n, p in params.items()}
    was_training = model.training
    model.eval()
    n = 0
    for batch in batches:
        if n >= max_samples:
            break
        model.zero_grad(set_to_none=True)
        out = model(**batch)
        out.loss.backward()
        for name, p in params.items():
            if p.grad is not None:
                fisher[name] += p.grad.detach().float() ** 2
        n += 1
    model.zero_grad(set_to_none=True)
    model.train(was_training)
    if n == 0:
        raise ValueError("train.ewc: the reference data gave no usable sample")
    return {k: v / n for k, v in fisher.items()}


class EWC:
    def __init__(self, model, fisher: dict[str, torch.Tensor], lam: float, anchor: dict | None = None):
        self.lam = lam
        named = dict(model.named_parameters())
        self.fisher = {k: v for k, v in fisher.items() if k in named}
        self.anchor = anchor or {k: named[k].detach().clone() for k in self.fisher}
        self.last = 0.0

    def penalty(self, model) -> torch.Tensor:
        named = dict(model.named_parameters())
        total = None
        for k, f in self.fisher.items():
            p = named[k]
            term = (f.to(p.device) * (p.float() - self.anchor[k].to(p.device).float()) ** 2).sum()
            total = term if total is None else total + term
        pen = 0.5 * self.lam * total if total is not None else torch.zeros(())
        self.last = float(pen.detach())
        return pen

    def save(self, path: Path) -> None:
        save_file({**{f"fisher.{k}": v.contiguous() for k, v in self.fisher.items()},
                   **{f"anchor.{k}": v.contiguous() for k, v in self.anchor.items()}}, str(path))

    @staticmethod
    def load(path: Path) -> tuple[dict, dict]:
        d = load_file(str(path))
        fisher = {k[len("fisher."):]: v for k, v in d.items() if k.startswith("fisher.")}
        anchor = {k[len("anchor."):]: v for k, v in d.items() if k.startswith("anchor.")}
        return fisher, anchor


# ------------------------------------------------------------------------------------------
# Adversarial training on embeddings
# ------------------------------------------------------------------------------------------


class EmbeddingPerturber:
    """A forward hook on the input-embedding layer that records its output (to read the gradient
    w.r.t. it) and, when `delta` is set, adds the perturbation. Weights are never modified."""

    def __init__(self, model):
        self.delta: torch.Tensor | None = None
        self.output: torch.Tensor | None = None
        self.handle = model.get_input_embeddings().register_forward_hook(self._hook)

    def _hook(self, module, args, out):
        if self.delta is not None and self.delta.shape == out.shape:
            out = out + self.delta
        if not out.requires_grad:
            out = out.detach().requires_grad_(True)  # frozen embeddings: make the output a leaf we can read
        else:
            out.retain_grad()
        self.output = out
        return out

    def grad(self) -> torch.Tensor | None:
        return None if self.output is None else self.output.grad

    def remove(self):
        self.handle.remove()


def _unit(g: torch.Tensor) -> torch.Tensor:
    norm = g.norm()
    return g / norm if norm > 0 and torch.isfinite(norm) else torch.zeros_like(g)


def adversarial_step(trainer, model, inputs, num_items_in_batch, perturber: EmbeddingPerturber, method: str,
                     epsilon: float, steps: int, alpha: float):
    """After the clean backward: FGM adds one extra forward/backward at r = eps * g/|g|; PGD takes
    `steps` ascent steps of size alpha projected onto |r| <= eps, keeping only the last step's
    parameter gradients. Returns the adversarial loss (already backpropagated)."""
    from transformers import Trainer

    g = perturber.grad()
    if g is None:
        return None
    g = g.detach()
    try:
        if method == "fgm":
            perturber.delta = epsilon * _unit(g)
            return Trainer.training_step(trainer, model, inputs, num_items_in_batch)
        delta = torch.zeros_like(g)
        for t in range(steps):
            delta = delta + alpha * _unit(g)
            if delta.norm() > epsilon:
                delta = delta * (epsilon / delta.norm())
            perturber.delta = delta
            if t == steps - 1:
                return Trainer.training_step(trainer, model, inputs, num_items_in_batch)
            loss = trainer.compute_loss(model, inputs, num_items_in_batch=num_items_in_batch)
            (g,) = torch.autograd.grad(loss, perturber.output)
            g = g.detach()
    finally:
        perturber.delta = None
