"""Options of `train.stage: simpo` (SimPO, and CPO, through trl.experimental CPOTrainer): a
reference-free preference loss on length-normalised log-likelihoods with a target margin."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from . import PreferenceOptions


class SimPOOptions(PreferenceOptions):
    loss_type: Literal["simpo", "sigmoid", "hinge", "ipo"] = Field(
        "simpo", description="simpo (SimPO), sigmoid (CPO), hinge, ipo")
    beta: float = Field(2.0, gt=0, description="reward scale (SimPO paper: 2.0-2.5)")
    gamma: float = Field(1.0, ge=0, description="SimPO target reward margin (gamma/beta about 0.5 in the paper)")
    cpo_alpha: float = Field(0.0, ge=0, description="weight of the SFT (behaviour cloning) term: 0 = pure SimPO, "
                             ">0 = CPO-SimPO")
    label_smoothing: float = Field(0.0, ge=0, lt=0.5)
