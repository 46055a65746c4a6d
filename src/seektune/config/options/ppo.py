"""Options of `train.stage: ppo` (RLHF against a reward model, seektune's compact PPO loop)."""

from __future__ import annotations

from pydantic import Field

from . import StageOptions, reference_problems


class PPOOptions(StageOptions):
    reward_model: str | None = Field(None, description="an rm run folder (its final/), a model folder with a "
                                     "1-label sequence-classification head, or a preset")
    max_prompt_length: int = Field(256, ge=4, description="prompt tokens kept (left-truncated)")
    kl_coef: float = Field(0.05, ge=0, description="initial KL penalty coefficient")
    target_kl: float | None = Field(6.0, gt=0, description="adaptive KL control target (null = fixed kl_coef)")
    kl_horizon: int = Field(10000, ge=1, description="adaptive KL controller horizon (samples)")
    clip_range: float = Field(0.2, gt=0, description="policy ratio clip")
    clip_range_value: float = Field(0.2, gt=0, description="value clip")
    vf_coef: float = Field(0.1, ge=0, description="value loss weight")
    gamma: float = Field(1.0, gt=0, le=1, description="discount")
    lam: float = Field(0.95, ge=0, le=1, description="GAE lambda")
    ppo_epochs: int = Field(2, ge=1, description="optimisation passes over each rollout batch")
    rollout_batch_size: int = Field(8, ge=1, description="prompts per rollout (train.batch_size = minibatch)")
    max_new_tokens: int = Field(32, ge=1, description="response length limit")
    temperature: float = Field(1.0, gt=0, description="sampling temperature")
    top_k: int = Field(0, ge=0, description="0 = no top-k cut (sample the full distribution)")
    top_p: float = Field(1.0, gt=0, le=1, description="nucleus sampling")
    reward_norm: bool = Field(True, description="whiten scores with running mean/std")
    reward_clip: float | None = Field(5.0, gt=0, description="clip normalised scores to +-this")
    missing_eos_penalty: float | None = Field(None, description="subtract from the score of responses that never end")

    def check(self, cfg) -> list[str]:
        errors = []
        if not self.reward_model:
            errors.append("ppo.reward_model: stage ppo needs a reward model: an rm run folder (train.stage: rm), a "
                          "model folder with a sequence-classification head, or a preset")
        if cfg.adapter.method != "lora":
            errors.append(f"adapter.method: stage ppo uses the base with the adapter disabled as its reference: "
                          f"set adapter.method: lora (got {cfg.adapter.method})")
        return errors + reference_problems(cfg, "ppo")
