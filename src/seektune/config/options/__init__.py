"""Each stage's own options: one module per stage with one class, every option documented.

A stage's section in the YAML (`dpo:`, `ppo:`, ...) maps onto its class here; the registry in
`config/stages.py` links the class to its stage and its recipe.
"""

from __future__ import annotations

from pydantic import Field

from ...models.lora_init import mutates_base
from ..sections import AdapterConfig, Section


class StageOptions(Section):
    """Base of a stage's options. `check` holds the stage's cross-section rules (load-time errors)."""

    def check(self, cfg) -> list[str]:
        """Problems of the whole config for this stage, each naming its key (empty list = fine)."""
        return []


def reference_problems(cfg, stage: str) -> list[str]:
    """A stage whose reference is the base with the LoRA adapter disabled cannot use an adapter.init that changes
    the base weights: with the adapter off, PiSSA / OLoRA leave the residual, not the base."""
    if cfg.adapter.method == "lora" and mutates_base(cfg.adapter.init):
        return [f"adapter.init: {cfg.adapter.init} moves part of every adapted weight into the adapter, and stage "
                f"{stage} uses the base with the adapter disabled as its reference, which would then be the "
                "residual, not the base; use adapter.init: default or gaussian"]
    return []


class PreferenceOptions(StageOptions):
    """What every stage that trains on preference pairs shares."""

    max_prompt_length: int = Field(256, ge=4, description="prompt tokens; longer pairs go to rejects.jsonl (too long)")
    disable_dropout: bool = Field(
        True, description="switch every dropout off while training (trl's default: the policy and reference "
        "log-probs must be computed alike); false keeps train.dropout / adapter.dropout")

    def check(self, cfg) -> list[str]:
        if not self.disable_dropout:
            return []
        stage, errors = cfg.train.stage, []
        d = cfg.train.dropout
        if d is not None and any(v for v in (d.attention, d.hidden, d.classifier)):
            errors.append(f"train.dropout: stage {stage} switches dropout off ({stage}.disable_dropout: true, as trl "
                          "does); set it to false to keep dropout")
        if cfg.adapter.dropout != AdapterConfig.model_fields["dropout"].default and cfg.adapter.dropout > 0:
            errors.append(f"adapter.dropout: stage {stage} switches dropout off ({stage}.disable_dropout: true); "
                          "set it to false to keep LoRA dropout")
        return errors
