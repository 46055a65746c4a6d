"""Options of `train.stage: kto` (Kahneman-Tversky optimisation through trl's KTOTrainer).

KTO learns from single replies labelled desirable or not, so it also takes unpaired data
(`{"prompt", "completion", "label"}`); preference pairs are split into one desirable and one
undesirable example each."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from . import PreferenceOptions, reference_problems


class KTOOptions(PreferenceOptions):
    beta: float = Field(0.1, gt=0, description="strength of the pull towards the reference")
    loss_type: Literal["kto", "apo_zero_unpaired"] = Field("kto", description="trl's KTO loss variants")
    desirable_weight: float = Field(1.0, gt=0, description="weight of desirable examples (balance unequal counts)")
    undesirable_weight: float = Field(1.0, gt=0, description="weight of undesirable examples")

    def check(self, cfg) -> list[str]:
        errors = super().check(cfg) + reference_problems(cfg, "kto")
        if cfg.train.batch_size * cfg.train.grad_accum < 2:
            errors.append("train.batch_size: stage kto estimates its KL term from mismatched pairs within a batch: "
                          "use at least 2")
        return errors
