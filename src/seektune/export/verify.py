"""Does an exported model still compute what the trained one did: logits compared on fixed prompts.

Used by every export path (merged fp32/fp16/bf16, INT8), so they all report the same numbers:
max |logit difference| against a tolerance relative to the largest logit, and top-1 agreement.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch


@dataclass
class Verification:
    prompts: int
    max_abs_diff: float
    tolerance: float
    max_abs_logit: float
    top1_agreement: float
    passed: bool

    def line(self, dtype: str) -> str:
        verdict = "OK" if self.passed else "FAILED"
        return (f"verify ({dtype}, {self.prompts} prompts): max |logit diff| {self.max_abs_diff:.3g} "
                f"<= tolerance {self.tolerance:.3g}? {verdict}; top-1 agreement {100 * self.top1_agreement:.1f}% "
                f"(max |logit| {self.max_abs_logit:.3g})")


@torch.no_grad()
def prompt_logits(model, tok, prompts: list[str]) -> list[torch.Tensor]:
    """Full-sequence fp32 logits per prompt, one prompt at a time (no padding effects)."""
    out = []
    for p in prompts:
        ids = tok(p, add_special_tokens=False, return_tensors="pt")["input_ids"]
        out.append(model(input_ids=ids).logits[0].float())
    return out


def compare_logits(ref: list[torch.Tensor], got: list[torch.Tensor], rel_tol: float) -> Verification:
    diff = max(float((a - b).abs().max()) for a, b in zip(ref, got))
    scale = max(float(a.abs().max()) for a in ref)
    agree = torch.cat([(a.argmax(-1) == b.argmax(-1)).float() for a, b in zip(ref, got)]).mean()
    tol = rel_tol * max(1.0, scale)
    return Verification(len(ref), diff, tol, scale, float(agree), diff <= tol)


def folder_size(path: Path) -> int:
    return sum(f.stat().st_size for f in Path(path).rglob("*") if f.is_file())


