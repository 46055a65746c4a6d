"""The stage registry: the one place that lists what `seektune train` can run.

A stage is a recipe module (`seektune/stages/<name>.py`, resolved by `seektune.stages.recipe`),
its options class (`config/options/<name>.py`, its own YAML section) and one `Stage` entry below.
Each entry declares the shared keys the stage honours; `unused_keys` turns every other key that a
config sets away from its default into a load-time error naming the key and the stage
(`train.adversarial: not used by stage dpo`), because an option accepted and then ignored costs a
whole run before anyone notices.

The recipe is named by module path so that loading a config never imports torch; the
dependency rule (docs/architecture.md) keeps `config` below `stages`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from fnmatch import fnmatchcase

from .options import StageOptions
from .options.dpo import DPOOptions
from .options.grpo import GRPOOptions
from .options.kto import KTOOptions
from .options.orpo import ORPOOptions
from .options.simpo import SimPOOptions
from .options.ppo import PPOOptions
from .options.rm import RMOptions
from .sections import AdapterConfig

# keys every stage honours, and keys that belong to other commands (export, serve read `deploy`; tune `tune`;
# federate `federate`)
ALWAYS = ("train.stage", "train.output_dir", "train.seed", "train.resume", "train.num_threads", "deploy.*",
          "tune.*", "federate.*", "eval.report")
MODEL = ("model.name_or_path", "model.task", "model.trust_remote_code", "model.dtype", "model.attn_implementation",
         "model.tokenizer")
DATA = ("data.train", "data.eval", "data.format", "data.eval_ratio", "data.max_eval_samples", "data.max_samples",
        "data.max_length")
CHAT = ("data.template", "data.system_prompt")
# the optimisation loop of every HF-Trainer-based stage (engine/trainer.py)
LOOP = ("train.max_steps", "train.epochs", "train.batch_size", "train.eval_batch_size", "train.grad_accum",
        "train.lr", "train.min_lr", "train.warmup_steps", "train.warmup_ratio", "train.lr_scheduler",
        "train.weight_decay", "train.max_grad_norm", "train.logging_steps", "train.eval_steps", "train.save_steps",
        "train.keep_checkpoints", "train.layerwise_lr", "train.early_stopping", "train.dropout",
        "train.allocator", "train.return_freed_memory", "train.gradient_checkpointing", "train.activation_budget_gb",
        "train.distributed", "train.fsdp.*", "train.deepspeed.*", "train.mixed_precision", "train.liger_kernel",
        "monitor.*")
# ppo builds its own optimizer (no parameter groups), so LoRA+'s rate for the B matrices would be ignored there
ADAPTER_BUT_LORAPLUS = tuple(f"adapter.{k}" for k in AdapterConfig.model_fields if k != "loraplus_lr_ratio")
# benchmarks before and after (stages/__init__.py runs them around any stage that trains a causal LM)
BENCH = ("eval.benchmarks", "eval.benchmark_*", "eval.cmmlu_dir", "eval.gsm8k_file")


@dataclass(frozen=True)
class Stage:
    name: str
    help: str
    recipe: str                             # module of the recipe
    options: type[StageOptions] | None      # the stage's own YAML section (`dpo:`), None when it has none
    uses: tuple[str, ...]                   # shared keys it honours (fnmatch patterns on dotted keys)
    tasks: tuple[str, ...] = ("causal_lm",)  # model.task values it trains
    data: str = "sft"                       # the family of data.format it reads (data/formats.py)
    multi_process: bool = True              # runs under --nproc N (torchrun)
    federated: bool = False                 # a client of `seektune federate` can run it (its trainable tensors travel)
    extra: dict = field(default_factory=dict)


STAGES: dict[str, Stage] = {s.name: s for s in [
    Stage("sft", "supervised fine-tuning of a causal LM on chat samples (prompt-masked loss, packing)",
          "seektune.stages.sft", None,
          ALWAYS + MODEL + ("adapter.*",) + DATA + CHAT + LOOP
          + ("data.packing", "data.cache", "data.pipeline", "data.curriculum", "train.fused_loss", "train.compile",
             "train.label_smoothing", "train.replay", "train.ewc", "train.adversarial", "eval.*"),
          federated=True),
    Stage("classify", "sequence classification (one label per text) or token classification (NER tags)",
          "seektune.stages.classify", None,
          ALWAYS + MODEL + ("model.num_labels", "adapter.*") + DATA + LOOP
          + ("data.text_field", "data.label_field", "data.labels", "data.stride", "data.label_scheme", "data.nested_policy",
             "data.strip_digits", "data.pipeline", "train.label_smoothing", "train.class_weights", "train.ewc",
             "train.adversarial"),
          tasks=("sequence_classification", "token_classification"), data="labelled", federated=True),
    Stage("rm", "reward model: the base plus a scalar head, trained on preference pairs (trl RewardTrainer)",
          "seektune.stages.rm", RMOptions, ALWAYS + MODEL + ("adapter.*",) + DATA + CHAT + LOOP,
          data="preference"),
    Stage("dpo", "direct preference optimisation on preference pairs (trl DPOTrainer)",
          "seektune.stages.dpo", DPOOptions, ALWAYS + MODEL + ("adapter.*",) + DATA + CHAT + LOOP + BENCH,
          data="preference"),
    Stage("ppo", "RLHF with PPO against a reward model (seektune's compact loop: trl 1.16 has no PPO)",
          "seektune.stages.ppo", PPOOptions,
          ALWAYS + MODEL + ADAPTER_BUT_LORAPLUS + DATA + CHAT
          + ("train.max_steps", "train.epochs", "train.batch_size", "train.eval_batch_size", "train.lr",
             "train.weight_decay", "train.max_grad_norm", "train.logging_steps", "train.save_steps",
             "train.keep_checkpoints") + BENCH,
          data="preference", multi_process=False),
    Stage("kto", "Kahneman-Tversky optimisation on desirable/undesirable replies or split pairs (trl KTOTrainer)",
          "seektune.stages.kto", KTOOptions, ALWAYS + MODEL + ("adapter.*",) + DATA + CHAT + LOOP + BENCH, data="preference"),
    Stage("orpo", "odds-ratio preference optimisation, no reference model (trl.experimental ORPOTrainer)",
          "seektune.stages.orpo", ORPOOptions, ALWAYS + MODEL + ("adapter.*",) + DATA + CHAT + LOOP + BENCH, data="preference"),
    Stage("simpo", "SimPO / CPO: reference-free, length-normalised preference loss (trl.experimental CPOTrainer)",
          "seektune.stages.simpo", SimPOOptions, ALWAYS + MODEL + ("adapter.*",) + DATA + CHAT + LOOP + BENCH,
          data="preference"),
    Stage("grpo", "reinforcement learning with verifiable rewards (GRPO, the DeepSeek-R1 method; trl GRPOTrainer)",
          "seektune.stages.grpo", GRPOOptions,
          ALWAYS + MODEL + ("adapter.*",) + DATA + CHAT + LOOP + BENCH + ("eval.batch_size", "eval.before_after")),
]}


def stage(name: str) -> Stage:
    if name not in STAGES:
        raise KeyError(name)
    return STAGES[name]


def honoured(spec: Stage, key: str) -> bool:
    return any(fnmatchcase(key, pat) for pat in ALWAYS + spec.uses)


def users_of(key: str) -> list[str]:
    """The stages that honour a shared key (for the error message)."""
    return [s.name for s in STAGES.values() if honoured(s, key)]
