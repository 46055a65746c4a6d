"""Options of `train.stage: rm` (a reward model: the base plus a scalar head, pairwise loss)."""

from __future__ import annotations

from . import PreferenceOptions


class RMOptions(PreferenceOptions):
    """The reward model reads prompt + response token ids and outputs one score; no options beyond
    the preference ones (max_prompt_length, disable_dropout)."""
