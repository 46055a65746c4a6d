"""Options of `train.stage: orpo` (odds-ratio preference optimisation, trl.experimental ORPOTrainer):
SFT on the chosen reply plus an odds-ratio penalty on the rejected one, no reference model."""

from __future__ import annotations

from pydantic import Field

from . import PreferenceOptions


class ORPOOptions(PreferenceOptions):
    beta: float = Field(0.1, gt=0, description="weight of the odds-ratio term (lambda in the ORPO paper)")
