"""Options of `train.stage: grpo` (reinforcement learning with verifiable rewards, the DeepSeek-R1 method,
on trl's GRPOTrainer). Defaults follow trl where it has one; every key maps to one GRPOConfig field
or one monitor."""

from __future__ import annotations

import ast
import importlib.util
from pathlib import Path
from typing import Literal

from pydantic import Field, field_validator

from . import StageOptions, reference_problems

# the reward library (eval/rewards.py) implements these names
BUILTIN_REWARDS = ("think_format", "gsm8k_answer", "gsm8k_format", "choice_answer", "overlong_penalty",
                   "repetition_penalty", "length_penalty")


def check_reward_spec(spec: str, base: Path | None = None) -> str | None:
    """A problem with a `grpo.rewards` entry, found without running user code (None = fine)."""
    if spec in BUILTIN_REWARDS:
        return None
    if ":" not in spec:
        return (f"unknown reward '{spec}' (built-ins: {', '.join(BUILTIN_REWARDS)}; or file.py:function, "
                "module:function)")
    where, fn = spec.rsplit(":", 1)
    if where.endswith(".py"):
        path = Path(where) if Path(where).is_absolute() or base is None else Path(base) / where
        if not path.exists():
            return f"reward file not found: {path}"
        try:
            tree = ast.parse(path.read_text(encoding="utf-8"))
        except SyntaxError as e:
            return f"{path}:{e.lineno}: not valid Python ({e.msg})"
        names = _top_level_names(tree)
        if fn not in names and "*" not in names:
            return f"{path} defines no function '{fn}'"
        return None
    if importlib.util.find_spec(where.split(".")[0]) is None:
        return f"reward module not importable: {where}"
    return None


def _top_level_names(tree: ast.Module) -> set[str]:
    """What a module binds at its top level: `def`s, classes, assignments (`brevity = partial(...)`) and imports
    (`from my_lib import accuracy`); "*" for a star import (anything may be there)."""
    names: set[str] = set()
    for n in tree.body:
        if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            names.add(n.name)
        elif isinstance(n, (ast.Assign, ast.AnnAssign)):
            for t in (n.targets if isinstance(n, ast.Assign) else [n.target]):
                names.update(x.id for x in ast.walk(t) if isinstance(x, ast.Name))
        elif isinstance(n, (ast.Import, ast.ImportFrom)):
            names.update((a.asname or a.name).split(".")[0] for a in n.names)
    return names


class GRPOOptions(StageOptions):
    rewards: list[str] = Field(
        ["think_format", "gsm8k_answer"], min_length=1,
        description="reward functions: built-ins (think_format, gsm8k_answer, gsm8k_format, choice_answer, "
        "overlong_penalty, repetition_penalty, length_penalty) or file.py:function / module:function in trl's signature")
    reward_weights: list[float] | None = Field(None, description="one weight per reward (default: all 1.0)")
    num_generations: int = Field(4, ge=2, description="completions sampled per prompt (the group)")
    max_completion_length: int = Field(256, ge=1, description="generated tokens per completion")
    max_prompt_length: int = Field(512, ge=8, description="prompt tokens; longer prompts go to rejects.jsonl")
    loss_type: Literal["grpo", "dr_grpo", "dapo", "bnpo"] = Field(
        "dapo", description="grpo (per-sequence mean; length-biased), dr_grpo (constant normaliser), dapo (tokens "
        "of the accumulated batch; trl's default), bnpo (tokens of the local batch)")
    importance_sampling_level: Literal["token", "sequence"] = Field(
        "token", description="sequence = GSPO (one ratio per completion, the mean of its token log-ratios)")
    beta: float = Field(0.0, ge=0, description="KL to the reference (the base, adapter off); 0 = none, as in trl")
    epsilon: float = Field(0.2, gt=0, description="ratio clip (lower side, and upper unless epsilon_high)")
    epsilon_high: float | None = Field(None, gt=0, description="upper ratio clip (DAPO's clip-higher, e.g. 0.28)")
    scale_rewards: Literal["group", "batch", "none"] = Field(
        "group", description="divide advantages by the reward std of the group, of the batch, or not (Dr. GRPO)")
    num_iterations: int = Field(1, ge=1, description="optimisation passes per generated batch (mu)")
    temperature: float = Field(1.0, gt=0, description="sampling temperature of the rollouts")
    top_p: float = Field(1.0, gt=0, le=1)
    top_k: int = Field(0, ge=0, description="0 = no top-k cut")
    mask_truncated_completions: bool = Field(False, description="leave completions cut at the length limit out of "
                                             "the loss (DAPO)")
    generation: Literal["auto", "grouped", "transformers", "vllm"] = Field(
        "auto", description="rollout engine: grouped (one prefill per prompt shared by its group, finished "
        "completions leave the batch; engine/rollout.py), transformers (trl's model.generate on the repeated "
        "prompts), vllm; auto = vllm when installed on a GPU machine, else grouped")
    disable_dropout: bool = Field(True, description="dropout off while training (trl's default)")
    warn_truncated_share: float = Field(0.5, gt=0, le=1, description="warn when more completions than this are cut "
                                        "at max_completion_length ...")
    warn_zero_signal_share: float = Field(0.8, gt=0, le=1, description="... or more groups than this have all-equal "
                                          "rewards (no learning signal) ...")
    warn_after: int = Field(3, ge=1, description="... for this many logged steps in a row")
    report_samples: int = Field(8, ge=0, description="held-out completions with their rewards shown in the report")

    @field_validator("rewards")
    @classmethod
    def _known(cls, v: list[str]) -> list[str]:
        problems = [p for p in (check_reward_spec(s) for s in v) if p]
        if problems:
            raise ValueError("; ".join(problems))
        return v

    def check(self, cfg) -> list[str]:
        errors = []
        if self.reward_weights is not None and len(self.reward_weights) != len(self.rewards):
            errors.append(f"grpo.reward_weights: {len(self.reward_weights)} weights for {len(self.rewards)} rewards")
        per_step = cfg.train.batch_size * cfg.train.grad_accum
        if per_step % self.num_generations:
            errors.append(f"train.batch_size x train.grad_accum = {per_step} completions per step must divide by "
                          f"grpo.num_generations = {self.num_generations} (each prompt's group trains together)")
        if self.max_prompt_length + self.max_completion_length > cfg.data.max_length:
            errors.append(f"data.max_length = {cfg.data.max_length} < grpo.max_prompt_length + "
                          f"grpo.max_completion_length = {self.max_prompt_length + self.max_completion_length}")
        if cfg.train.dropout is not None and self.disable_dropout:
            errors.append("train.dropout: stage grpo switches dropout off (grpo.disable_dropout: true); set it false "
                          "to keep dropout")
        if self.beta > 0:
            errors += reference_problems(cfg, "grpo (beta > 0)")
        return errors
