"""Options of `train.stage: dpo` (direct preference optimisation through trl's DPOTrainer)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from . import PreferenceOptions, reference_problems

# trl 1.16 DPOConfig.loss_type
DPO_LOSSES = ("sigmoid", "hinge", "ipo", "exo_pair", "nca_pair", "robust", "bco_pair", "sppo_hard", "aot",
              "aot_unpaired", "apo_zero", "apo_down", "discopop", "sft", "sigmoid_norm")


class DPOOptions(PreferenceOptions):
    beta: float = Field(0.1, gt=0, description="strength of the pull towards the reference (IPO: its regulariser)")
    loss_type: Literal[DPO_LOSSES] = Field(  # type: ignore[valid-type]
        "sigmoid", description="DPO loss: sigmoid (DPO), ipo, hinge (SLiC), robust, bco_pair, sppo_hard, nca_pair, "
        "aot, aot_unpaired, apo_zero, apo_down, discopop, exo_pair, sigmoid_norm, sft (trl's names)")
    label_smoothing: float = Field(0.0, ge=0, lt=0.5, description="assumed share of flipped labels (robust, sigmoid)")

    def check(self, cfg) -> list[str]:
        return super().check(cfg) + reference_problems(cfg, "dpo")
