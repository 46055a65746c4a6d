"""The shared sections of a run configuration: model, adapter, data, train, monitor, eval, deploy.

Every key a user can write lives in a section here or in a stage's own options
(`config/options/`), with its default and a one-line meaning. Which stage honours which of these
keys is declared in `config/stages.py`; a key set for a stage that does not use it is an error.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from ..models.lora_init import mutates_base


class ConfigError(ValueError):
    """A configuration problem, already phrased for the user (names the key and the file)."""


class Section(BaseModel):
    """Base of every config section: unknown keys are errors, assignments are validated."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True, protected_namespaces=())


class ModelConfig(Section):
    name_or_path: str = Field("smollm2-135m-instruct", description="preset name, local HF folder or .gguf file")
    task: Literal["causal_lm", "sequence_classification", "token_classification"] = "causal_lm"
    trust_remote_code: bool = Field(False, description="run code shipped with the model folder (off unless you trust it)")
    dtype: Literal["float32", "bfloat16", "float16", "auto"] = Field(
        "float32", description="weights dtype; keep float32 on CPU (bf16 matmuls are ~100x slower there)")
    attn_implementation: Literal["sdpa", "eager", "flash_attention_2", "auto"] = "sdpa"
    num_labels: int | None = Field(None, description="classification heads; read from data when unset")
    tokenizer: str | None = Field(None, description="tokenizer folder when it differs from the model's")


# the adapter keys only LoRA reads (refused, by name, for full / freeze / prefix)
LORA_ONLY_KEYS = ("use_dora", "use_rslora", "init", "loraplus_lr_ratio", "quantize_base")


class AdapterConfig(Section):
    method: Literal["full", "freeze", "lora", "prefix"] = "lora"
    r: int = Field(8, ge=1)
    alpha: float = Field(16, gt=0)
    dropout: float = Field(0.05, ge=0, lt=1, description="LoRA dropout (forced to 0 when routed experts are adapted)")
    target_modules: str | list[str] = Field(
        "auto", description="'auto' picks per architecture; 'all-linear' or a list of module names")
    experts: bool = Field(True, description="MoE: put LoRA on fused routed experts (peft target_parameters)")
    train_router: bool = Field(False, description="MoE: let the router `gate` train (frozen by default)")
    trainable_layers: int = Field(2, ge=0, description="freeze: train only the last N transformer layers + head")
    num_virtual_tokens: int = Field(16, ge=1, description="prefix tuning: virtual tokens per layer")
    # LoRA variants (peft LoraConfig options); each only with method: lora
    use_dora: bool = Field(
        False, description="DoRA (peft use_dora): split each adapted weight into a trained magnitude vector and a "
        "LoRA-updated direction; often closer to full fine-tuning than LoRA at low r, for ~1 extra vector per layer "
        "and slower steps. Not on peft target_parameters (fused MoE experts)")
    use_rslora: bool = Field(
        False, description="rank-stabilised LoRA (peft use_rslora): scale the update by alpha/sqrt(r) instead of "
        "alpha/r, so a large r still learns (with alpha/r the update shrinks as r grows); pick it for r >= 32")
    init: str = Field(
        "default", description="LoRA initialisation (peft init_lora_weights): default (A random, B zero: starts as "
        "the base); gaussian (A Gaussian, B zero); pissa (A, B = the top-r singular vectors of each weight, which "
        "leaves the residual in the base: converges faster than LoRA; exact SVD, slow on big layers) or "
        "pissa_niter_K (randomised SVD with K subspace iterations, e.g. pissa_niter_4: seconds on a 7B model); "
        "olora (A, B from a QR decomposition of each weight, the rest left in the base). pissa and olora change "
        "the base weights: final/ is saved converted to a plain LoRA of rank 2r on the original base. Not for "
        "stages whose reference is the base with the adapter disabled (dpo, kto, ppo, grpo with beta > 0)")
    loraplus_lr_ratio: float | None = Field(
        None, ge=1, description="LoRA+: the lora_B matrices learn at ratio x the adapters' rate (A keeps it), "
        "which the LoRA+ paper found trains faster at the same cost; typical 4-16, often with a lower train.lr. "
        "Composes with train.layerwise_lr (the ratio multiplies the adapters' rate)")
    quantize_base: Literal["none", "4bit", "8bit"] = Field(
        "none", description="QLoRA: load the frozen base quantised by bitsandbytes (4bit: NF4 with double "
        "quantisation, compute in model.dtype; 8bit: LLM.int8) so a larger model fits on the GPU; the adapter "
        "trains in full precision. Needs a CUDA GPU and `pip install bitsandbytes` (not a seektune dependency)")

    @field_validator("init")
    @classmethod
    def _init_known(cls, v: str) -> str:
        import re

        if v in ("default", "gaussian", "pissa", "olora") or re.fullmatch(r"pissa_niter_\d+", v):
            return v
        raise ValueError(f"unknown initialisation '{v}' (default, gaussian, pissa, pissa_niter_K "
                         "with K a number of iterations, olora; peft's eva, corda and loftq need calibration data "
                         "or their own config, and are not offered)")

    @model_validator(mode="after")
    def _consistent(self):
        if self.method != "lora":
            for key in LORA_ONLY_KEYS:
                if getattr(self, key) != type(self).model_fields[key].default:
                    raise ValueError(f"adapter.{key}: only used by adapter.method lora (got method {self.method})")
        if self.quantize_base != "none" and mutates_base(self.init):
            raise ValueError(f"adapter.init: {self.init} with adapter.quantize_base {self.quantize_base} is not "
                             "offered: peft computes PiSSA only on float weights, and a residual re-quantised after "
                             "OLoRA/PiSSA no longer adds up to the original base, so final/ would not reproduce the "
                             "trained model on it; use adapter.init: default or gaussian with a quantised base")
        return self


class DataPipelineStep(BaseModel):
    """One `data.pipeline` step: `{step: clean, near_threshold: 0.7, ...}`; the other keys are that
    step's options (the same as its `seektune data STEP` flags), checked when the config loads."""

    model_config = ConfigDict(extra="allow", protected_namespaces=())
    step: Literal["deidentify", "clean", "split", "balance", "augment", "curriculum", "mix"]

    @model_validator(mode="after")
    def _check_options(self):
        from ..data.pipeline import step_options

        step_options(self.step, self.model_extra or {})  # raises ValueError naming the bad key
        return self


class DataConfig(Section):
    train: str | None = Field(None, description="training file (json, jsonl, csv, tsv, optionally .gz)")
    eval: str | None = Field(None, description="evaluation file; when unset, `eval_ratio` of train is held out")
    format: str = Field("auto", description="record format: auto (detected per record) or a name from "
                        "`seektune data formats`: alpaca, dolly, sharegpt, messages, qa; preference stages: "
                        "pairs, sharegpt, hh")
    template: str = Field("auto", description="auto | tokenizer | deepseek-v3 | deepseek-r1 | chatml")
    system_prompt: str | None = Field(None, description="system message added to samples that have none")
    max_length: int = Field(1024, ge=8)
    packing: bool = Field(True, description="pack samples per row; attention never crosses samples")
    eval_ratio: float = Field(0.05, ge=0, lt=1)
    max_eval_samples: int | None = Field(
        200, ge=1, description="evaluate at most N held-out records; with eval_ratio the rest stay in training, "
        "with an eval file the rest are counted (and listed in unused_eval.jsonl)")
    max_samples: int | None = Field(None, ge=1, description="use only the first N training records")
    cache: bool = Field(True, description="cache tokenised data on disk (keyed by data, tokenizer, template, length)")
    pipeline: list[DataPipelineStep] = Field(
        default_factory=list, description="data steps run on data.train before training (see docs/data.md)")
    curriculum: bool = Field(False, description="train in file order (no shuffling, order-keeping packing)")
    # classification tasks (issue 5)
    text_field: str = Field("auto", description="sequence_classification: column with the text ('auto' guesses)")
    label_field: str = Field("auto", description="column with the label, string or int ('auto' guesses)")
    labels: list[str] | None = Field(
        None, description="classification: the label set, in head order (default: the sorted labels of the training "
        "data; NER: the tags); a training record with another label is rejected. Federated sites need one set")
    stride: int = Field(0, ge=0, description="classification: tokens shared by consecutive windows of a long text")
    label_scheme: Literal["bio", "iob", "iobes"] = Field(
        "bio", description="token_classification tags: bio (IOB2), iob (IOB1) or iobes")
    nested_policy: Literal["outermost", "innermost", "longest"] = Field(
        "outermost", description="span JSON -> tags: which of nested/overlapping entities to keep")
    strip_digits: bool = Field(False, description="CoNLL: strip trailing word-segmentation digits (Weibo NER '科0')")


class LayerwiseLR(Section):
    """Separate learning rates per part of the model (unset parts use train.lr)."""

    embeddings: float | None = Field(None, gt=0, description="input embeddings (seeds: 1e-5)")
    body: float | None = Field(None, gt=0, description="transformer layers (the top layer gets this rate)")
    head: float | None = Field(None, gt=0, description="task head / lm_head (seeds: 1e-4)")
    adapters: float | None = Field(None, gt=0, description="LoRA / prefix parameters (default: head, else lr)")
    depth_decay: float = Field(1.0, gt=0, le=1, description="body rate x decay^(layers above): <1 = lower layers learn slower")


class DropoutConfig(Section):
    """Dropout overrides written into the model config before loading (unset = the model's own)."""

    attention: float | None = Field(None, ge=0, lt=1)
    hidden: float | None = Field(None, ge=0, lt=1)
    classifier: float | None = Field(None, ge=0, lt=1)


class EarlyStoppingConfig(Section):
    metric: str = Field("eval_loss", description="any eval metric: eval_loss, eval_accuracy, eval_f1, eval_rouge_l ...")
    mode: Literal["auto", "min", "max"] = Field("auto", description="auto: min for *loss*/perplexity, max otherwise")
    patience: int = Field(3, ge=1, description="evaluations without improvement before stopping")
    min_delta: float = Field(0.0, ge=0)
    restore_best: bool = Field(True, description="load the best checkpoint at the end (final/ is the best)")


class MonitorConfig(Section):
    grad_norm_band: tuple[float, float] | None = Field((0.1, 1.0), description="warn when grad norm leaves [low, high]")
    max_nonfinite_in_a_row: int = Field(5, ge=1, description="stop after N NaN/inf losses in a row (each one is skipped)")
    memory_share: float = Field(0.9, gt=0, le=1, description="warn when memory use passes this share of the machine")
    moe_balance: bool = Field(True, description="log tokens per expert for MoE models")
    moe_max_share: float = Field(0.5, gt=0, le=1, description="warn when one expert takes more than this share")
    overfit_patience: int = Field(2, ge=1, description="evals with rising eval loss and falling train loss before warning")


class ReplayConfig(Section):
    file: str = Field(..., description="general-domain data mixed into every epoch")
    ratio: float = Field(0.1, gt=0, lt=1, description="share of each epoch drawn from the general data (seeds: 10%)")
    pool: int = Field(5000, ge=1, description="at most this many general records are tokenised to sample from")


class EWCConfig(Section):
    model_config = ConfigDict(extra="forbid", validate_assignment=True, populate_by_name=True)

    data: str | None = Field(None, description="reference data for the Fisher information (default: replay file or data.train)")
    samples: int = Field(200, ge=1, description="reference samples used to estimate the diagonal Fisher")
    lam: float = Field(1000.0, ge=0, alias="lambda", description="penalty weight")
    fisher_file: str | None = Field(None, description="reuse a saved fisher.safetensors (fisher + anchor)")


class AdversarialConfig(Section):
    method: Literal["fgm", "pgd"] = "fgm"
    epsilon: float = Field(1.0, gt=0, description="L2 radius of the embedding perturbation")
    steps: int = Field(3, ge=1, description="PGD ascent steps")
    alpha: float = Field(0.3, gt=0, description="PGD step size")


class FSDPConfig(Section):
    cpu_offload: bool = Field(False, description="offload sharded parameters to CPU (FSDP2)")


class DeepSpeedConfig(Section):
    stage: Literal[2, 3] = 3
    offload_optimizer: bool = False
    offload_params: bool = Field(False, description="ZeRO-3 only")
    config_file: str | None = Field(None, description="use this DeepSpeed JSON instead of a generated one")


class TrainConfig(Section):
    stage: str = Field("sft", description="what to train: sft, classify, rm, dpo, ppo (config/stages.py lists "
                       "them; a classification model.task defaults to classify)")
    output_dir: str = "runs/default"
    max_steps: int = Field(-1, description="stop after N optimizer steps; -1 means use epochs")
    epochs: float = Field(1.0, gt=0)
    batch_size: int = Field(4, ge=1)
    eval_batch_size: int | None = Field(None, ge=1)
    grad_accum: int = Field(1, ge=1)
    lr: float = Field(2e-4, gt=0)
    min_lr: float = Field(0.0, ge=0, description="floor of the cosine decay")
    warmup_steps: int = Field(0, ge=0)
    warmup_ratio: float = Field(0.0, ge=0, lt=1, description="used when warmup_steps is 0")
    lr_scheduler: Literal["cosine", "linear", "constant"] = "cosine"
    weight_decay: float = Field(0.0, ge=0)
    max_grad_norm: float = Field(1.0, gt=0)
    logging_steps: int = Field(5, ge=1)
    eval_steps: int | None = Field(None, ge=1, description="evaluate every N steps (default: at the end only)")
    save_steps: int | Literal["auto"] | None = Field(
        "auto", description="checkpoint every N steps; auto: every tenth of the run (at least every step); "
        "null: no periodic checkpoints (a crash then loses the run)")
    seed: int = 42
    resume: bool | Literal["auto"] = Field(False, description="true/auto: continue from the newest complete checkpoint")
    num_threads: int | None = Field(None, ge=1, description="torch CPU threads (default: free cores)")
    gradient_checkpointing: bool | Literal["auto"] = Field(
        "auto", description="recompute activations in backward (less memory, up to ~30% more compute); auto: "
        "checkpoint every n-th layer only when a batch's activations would exceed activation_budget_gb")
    activation_budget_gb: float | None = Field(
        None, gt=0, description="auto checkpointing budget (default: 1/7 of RAM on CPU, 1/3 of GPU memory)")
    allocator: Literal["auto", "jemalloc", "tcmalloc", "glibc"] = Field(
        "auto", description="CPU malloc of `seektune train`: auto = tcmalloc, else jemalloc when installed "
        "(apt-get install libtcmalloc-minimal4 or libjemalloc2), else glibc. On the benchmark job tcmalloc was "
        "1.49x and jemalloc 1.44x faster than glibc with its mmap threshold, at less memory. The CLI "
        "re-executes itself with LD_PRELOAD (engine/allocator.py)")
    return_freed_memory: bool | Literal["auto"] = Field(
        "auto", description="CPU: hand freed memory back to the OS during training. auto = true on glibc (mmap "
        "threshold 4 MB: without it glibc kept freed activations, peak RSS 1.6x, steps 1.34x faster), false on "
        "jemalloc/tcmalloc (they reuse freed pages at no memory cost); true on jemalloc purges pages idle for 10 s")
    compile: bool | Literal["auto"] = Field(
        "auto", description="sft: torch.compile each decoder layer (engine/compile.py; inductor writes C++ on CPU). "
        "SmolLM2 + LoRA on 2 cores: 1.14-1.31x faster steps on one host, none on another (docs/benchmarks.md), after "
        "a ~1 min compile on the first step. auto = on for "
        "dense models with at least 200 optimizer steps (and a C++ compiler on CPU), falling back to eager if "
        "the compile fails")
    mixed_precision: Literal["no", "bf16", "fp16"] = Field(
        "no", description="CUDA GPU: bf16/fp16 autocast over fp32 master weights (TrainingArguments bf16/fp16; "
        "fp16 with loss scaling). Refused on CPU, where bf16 matmuls were ~100x slower than fp32; model.dtype "
        "bfloat16 trains in bf16 without this")
    liger_kernel: bool = Field(
        False, description="CUDA GPU: Liger's Triton kernels (RMSNorm, RoPE, SwiGLU, fused linear + cross-entropy) "
        "patched in by transformers' use_liger_kernel; needs `pip install liger-kernel` (not a seektune dependency)")
    fused_loss: bool = Field(True, description="causal LM: run the LM head and cross-entropy only on labelled positions, "
                             "in chunks (less memory, faster); false = the model's own loss")
    label_smoothing: float = Field(0.0, ge=0, lt=1)
    class_weights: Literal["auto"] | list[float] | dict[str, float] | None = Field(
        None, description="classification loss weights: auto (inverse frequency), a list in label order, "
        "or {label: weight}")
    layerwise_lr: LayerwiseLR | None = None
    dropout: DropoutConfig | None = None
    early_stopping: EarlyStoppingConfig | None = None
    keep_checkpoints: int = Field(2, ge=1, description="keep the last K checkpoints (plus the best)")
    replay: ReplayConfig | None = None
    ewc: EWCConfig | None = None
    adversarial: AdversarialConfig | None = None
    distributed: Literal["ddp", "fsdp", "deepspeed"] = Field(
        "ddp", description="engine when launched on several processes (seektune train --nproc N)")
    fsdp: FSDPConfig = Field(default_factory=FSDPConfig)
    deepspeed: DeepSpeedConfig = Field(default_factory=DeepSpeedConfig)

    @field_validator("output_dir")
    @classmethod
    def _not_empty(cls, v: str) -> str:
        if not v.strip():
            raise ValueError("must not be empty")
        return v


class TuneConfig(Section):
    """`seektune tune` (Optuna): a search over any dotted config key; each trial is an ordinary run folder
    under <train.output_dir>/tune/, the best config lands in <train.output_dir>/tune/best.yaml."""

    trials: int = Field(20, ge=1, description="finished trials the study aims for (all workers together)")
    timeout: float | str | None = Field(
        None, description="stop starting new trials after this long: seconds, or '90m', '2h' (default: no limit)")
    objective: str = Field(
        "eval_loss", description="what a trial is scored by: a metric the stage logs at evaluation "
        "(eval_loss, eval_accuracy, eval_f1, ...) or an evidence key of its summary (bench/cmmlu/acc)")
    direction: Literal["auto", "minimize", "maximize"] = Field(
        "auto", description="auto: minimize losses and perplexities, maximize everything else")
    space: dict[str, dict | list] = Field(
        default_factory=dict, description="dotted key -> {low, high, log?, step?} (a range) or a list of choices")
    sampler: Literal["tpe", "random"] = Field("tpe", description="Optuna sampler (TPE: Optuna's default)")
    pruner: Literal["median", "hyperband", "wilcoxon", "none"] = Field(
        "median", description="stop a trial early from the evaluations it reports (needs train.eval_steps)")
    startup_trials: int = Field(3, ge=0, description="trials that are never pruned (and sampled at random by TPE)")
    prune_after_steps: int = Field(
        0, ge=0, description="no trial is pruned at an evaluation before this training step: the first evaluations "
        "are noisy and favour settings that warm up fast over those that end best (median pruner)")
    baseline: bool = Field(True, description="the first trial runs the config's own values (the default to beat)")
    storage: str | None = Field(
        None, description="Optuna storage URL; default sqlite:///<train.output_dir>/tune/study.db (resumes after a "
        "crash); an RDB URL or a JournalFS file lets several workers share one study")
    study_name: str | None = Field(None, description="default: the name of train.output_dir")
    test_data: str | None = Field(
        None, description="held-out test file no trial sees: the baseline and the best trial are scored on it once, "
        "at the end")
    seed: int = Field(0, description="sampler seed")

    @field_validator("space")
    @classmethod
    def _space_shape(cls, v: dict) -> dict:
        for key, spec in v.items():
            if "." not in key:
                raise ValueError(f"tune.space: '{key}' is not a dotted config key (e.g. train.lr)")
            if isinstance(spec, list):
                if not spec:
                    raise ValueError(f"tune.space.{key}: an empty list of choices")
            else:
                extra = set(spec) - {"low", "high", "log", "step"}
                if extra or not {"low", "high"} <= set(spec):
                    raise ValueError(f"tune.space.{key}: a range is {{low, high, log?, step?}} (got {sorted(spec)})")
                if not spec["low"] < spec["high"]:
                    raise ValueError(f"tune.space.{key}: low must be below high")
                if spec.get("log") and spec["low"] <= 0:
                    raise ValueError(f"tune.space.{key}: a log range needs low > 0")
        return v

    @field_validator("timeout")
    @classmethod
    def _timeout(cls, v):
        if v is None or isinstance(v, (int, float)):
            return v
        import re

        m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([smhd]?)\s*", str(v))
        if not m:
            raise ValueError(f"tune.timeout: '{v}' is not a duration (seconds, or e.g. 90m, 2h)")
        return float(m.group(1)) * {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400}[m.group(2)]


class FederateSplit(Section):
    """How `seektune federate --simulate` cuts data.train into the virtual sites' shards."""

    by: Literal["iid", "column", "dirichlet"] = Field(
        "iid", description="iid: a seeded shuffle dealt evenly; column: one site per value of `column` (values "
        "grouped onto sites when there are more values than sites); dirichlet: label shares per site drawn from "
        "Dirichlet(alpha) over `column` (label skew)")
    column: str | None = Field(None, description="the record field that splits (by: column) or holds the label "
                               "(by: dirichlet; default data.label_field)")
    alpha: float = Field(0.5, gt=0, description="Dirichlet concentration: small = each site sees few labels")
    test_ratio: float = Field(0.1, gt=0, lt=1, description="share of each site's records kept as its own test set "
                              "(the union is the pooled test set)")
    min_site_records: int = Field(8, ge=1, description="a site left with fewer training records is an error")


class FederateSite(Section):
    name: str = Field(..., description="the site's name in metrics and folders (letters, digits, -, _)")
    train: str = Field(..., description="the site's training file")
    test: str | None = Field(None, description="the site's own held-out file")

    @field_validator("name")
    @classmethod
    def _name(cls, v: str) -> str:
        import re

        if not re.fullmatch(r"[A-Za-z0-9_-]{1,40}", v):
            raise ValueError(f"'{v}' is not a site name (letters, digits, - and _)")
        return v


class FederateDP(Section):
    """Central differential privacy with client-side clipping (Flower's DifferentialPrivacyClientSideFixedClipping
    + fixedclipping_mod): each client clips its update to `clipping_norm`, the server adds Gaussian noise of
    std noise_multiplier * clipping_norm / clients per round; seektune reports the epsilon at `delta`."""

    noise_multiplier: float = Field(..., ge=0, description="noise std in units of the clipping norm")
    clipping_norm: float = Field(..., gt=0, description="L2 bound of one client's update per round")
    delta: float = Field(1e-5, gt=0, lt=1, description="the delta of the reported (epsilon, delta)")


class FederateSecAgg(Section):
    """Secure aggregation (Flower's SecAgg+ workflow): the server sees only the sum of the masked updates."""

    num_shares: int = Field(3, ge=2, description="secret shares per client (<= clients)")
    reconstruction_threshold: int = Field(2, ge=2, description="shares needed to rebuild a dropped client's mask")
    clipping_range: float = Field(8.0, gt=0, description="updates are clipped to [-range, range] before "
                                  "quantisation")
    quantization_range: int = Field(4194304, ge=2, description="quantisation levels (precision of the sum)")


class FederateConfig(Section):
    """`seektune federate` (Flower): each round the server sends the global trainable weights (the adapter, or
    every weight for adapter.method full), each sampled client trains `local_steps` with the stage's own recipe
    on its local data, and only the trained tensors come back to be averaged."""

    rounds: int = Field(5, ge=1, description="federated rounds")
    local_steps: int = Field(10, ge=1, description="optimisation steps each client runs per round (its "
                             "train.max_steps; batch size, lr and schedule come from train:)")
    clients: int = Field(3, ge=1, description="simulation: virtual clients (--clients overrides)")
    sample_fraction: float = Field(1.0, gt=0, le=1, description="share of the clients sampled each round")
    min_clients: int = Field(2, ge=1, description="a round is aggregated when at least this many sampled clients "
                             "answered; a client that fails or times out is reported and the round goes on")
    round_timeout_s: float | None = Field(None, gt=0, description="deployment: a client that has not answered by then "
                                          "counts as dropped for the round")
    strategy: Literal["fedavg", "fedprox"] = Field("fedavg", description="fedprox adds mu/2 * |w - w_global|^2 to "
                                                   "every client's loss")
    proximal_mu: float = Field(0.01, gt=0, description="FedProx mu (strategy: fedprox)")
    weighting: Literal["auto", "examples", "uniform"] = Field(
        "auto", description="client weights in the average: examples (training records, FedAvg's), uniform; auto = "
        "examples, uniform under dp (the noise is calibrated to one client's share)")
    lora_aggregation: Literal["product", "separate"] = Field(
        "product", description="separate: average A and B on their own (FlowerTune's; mean(B)mean(A) is not the mean "
        "update); product: average the updates B@A and refactor to rank r by SVD (the best rank-r approximation of "
        "the mean update). Other tensors are averaged as they are")
    split: FederateSplit = Field(default_factory=FederateSplit, description="simulation: how data.train is sharded")
    sites: list[FederateSite] | None = Field(None, description="simulation: explicit site files instead of a split")
    dp: FederateDP | None = Field(None, description="differential privacy (off by default)")
    secagg: FederateSecAgg | None = Field(None, description="SecAgg+ secure aggregation (simulation)")
    parallel_clients: int = Field(1, ge=1, description="simulation: clients training at once (each with "
                                  "train.num_threads threads)")
    pooled_eval: bool = Field(True, description="simulation: also score the final global model on the pooled test set")
    round_process: Literal["fresh", "same"] = Field(
        "fresh", description="fresh: every client round (fit, evaluate) runs in a new Python process, so a long "
        "federation's memory stays flat (one process running round after round grew ~1 GB per SmolLM2 round in "
        "spite of gc and malloc_trim); same: run in the client process (saves the ~start-up of torch per round)")

    @model_validator(mode="after")
    def _consistent(self):
        if self.strategy != "fedprox" and self.proximal_mu != type(self).model_fields["proximal_mu"].default:
            raise ValueError("federate.proximal_mu: only used by strategy fedprox")
        if self.secagg is not None and self.dp is not None:
            raise ValueError("federate.dp: not combined with federate.secagg here (Flower's client-side clipping wrapper "
                             "needs each client's update)")
        if self.dp is not None and self.weighting == "examples":
            raise ValueError("federate.weighting: examples under dp gives a large site more than 1/clients of the "
                             "average, which the noise is not calibrated to; use uniform (or auto)")
        if self.sites is not None:
            names = [s.name for s in self.sites]
            if len(set(names)) != len(names):
                raise ValueError("federate.sites: site names must be unique")
        return self

    @property
    def aggregation(self) -> str:
        """The effective LoRA aggregation: separate under secagg, where the server sees only the securely summed
        tensors (every client's A and B are needed for the product)."""
        return "separate" if self.secagg is not None else self.lora_aggregation

    @property
    def weights(self) -> str:
        return ("uniform" if self.dp is not None else "examples") if self.weighting == "auto" else self.weighting


class DeployConfig(Section):
    """`seektune export / prune / serve` settings (CLI flags override these)."""
    export_dtype: Literal["fp32", "fp16", "bf16"] = Field("fp32", description="weights dtype of `seektune export`")
    adapter_only: bool = Field(False, description="export the LoRA adapter without merging")
    quantize: Literal["int8"] | None = Field(None, description="int8: also write OUT/int8 in compressed-tensors W8A16 (plain transformers and vLLM load it)")
    verify: bool = Field(True, description="reload the export and compare logits with the adapter model")
    export_format: Literal["hf", "gguf"] = Field(
        "hf", description="hf: safetensors folder; gguf: also a llama.cpp GGUF + Ollama Modelfile (make gguf-tools)")
    gguf_quant: Literal["f32", "f16", "bf16", "q8_0", "q4_k_m", "q4_k_s", "q5_k_m", "q6_k", "q3_k_m", "q2_k",
                        "q4_0"] | None = Field(
        None, description="GGUF weights (export_format gguf only; default f16); the k-quants and q4_0 are written "
                          "by llama.cpp's quantizer from the f16 GGUF (make llama-cpp)")
    prune_heads: float = Field(0.3, gt=0, lt=1, description="share of attention heads `seektune prune` removes")
    calib_samples: int = Field(32, ge=1, description="calibration texts for head importance")
    eval_samples: int = Field(32, ge=1, description="held-out texts for perplexity in reports")
    recover_steps: int = Field(0, ge=0, description="full-parameter recovery steps after pruning")
    host: str = Field("127.0.0.1", description="bind address; 0.0.0.0 serves other machines too (set an API key)")
    port: int = Field(8000, ge=1, le=65535)
    max_batch: int = Field(16, ge=1, description="largest dynamic batch; 1 turns batching off")
    batch_window_ms: float = Field(10.0, ge=0, description="how long a batch waits for more requests")
    queue_size: int = Field(256, ge=1, description="waiting requests before the server answers 503")
    max_tokens: int = Field(512, ge=1, description="largest max_tokens a request may ask for")
    max_prompt_tokens: int | None = Field(None, ge=1, description="longest prompt a request may send, in tokens "
                                          "(default: the model's context length)")
    max_body_bytes: int = Field(1 << 20, ge=1024, description="largest request body; larger ones get 413")
    model_name: str | None = Field(None, description="model id served in /v1/models (default: run folder name)")

    @model_validator(mode="after")
    def _gguf_options_need_gguf(self):
        if self.gguf_quant is not None and self.export_format != "gguf":
            raise ValueError("gguf_quant (--quant) is only used with export_format: gguf (--format gguf)")
        return self


class EvalConfig(Section):
    """Generation metrics (ROUGE-L, BLEU-4, exact match, perplexity), the before/after comparison,
    the forgetting check and the run report (issue 6)."""

    generate_every: int | None = Field(
        None, ge=1, description="during training, run generation metrics every N steps (default: off)")
    generate_samples: int = Field(16, ge=1, description="size of the fixed eval subset used for generation metrics")
    samples: int = Field(50, ge=1, description="held-out records generated for the end-of-run before/after eval")
    max_new_tokens: int = Field(128, ge=1, description="generation stops at eos or after this many new tokens")
    batch_size: int = Field(8, ge=1, description="generation batch size (bounds memory)")
    do_sample: bool = Field(False, description="greedy decoding unless true")
    temperature: float = Field(0.7, gt=0, description="sampling temperature (only with do_sample)")
    top_p: float = Field(1.0, gt=0, le=1, description="nucleus sampling (only with do_sample)")
    general_eval: str | None = Field(
        None, description="general-domain eval file for the forgetting check, e.g. ../shared/data/general/alpaca_zh_demo.json")
    general_samples: int = Field(40, ge=1, description="records of general_eval measured before and after")
    forgetting_threshold: float = Field(0.05, ge=0, lt=1, description="flag a relative drop larger than this share")
    generation: bool = Field(True, description="generation metrics (ROUGE/BLEU/exact match) on eval.samples held-out "
                             "records at the end of training; off: eval loss only (no decoding)")
    before_after: bool = Field(True, description="at the end of training, evaluate the base model too and compare")
    max_time_share: float = Field(
        0.2, gt=0, le=1, description="skip a generation eval during training when it would exceed this share of run time")
    report: bool = Field(True, description="write report.md and report.html into the run folder at the end")
    benchmarks: list[str] = Field(
        default_factory=list,
        description="standard benchmarks scored on the base model before training and on the tuned model after, "
                    "by lm-evaluation-harness on local files: cmmlu, cmmlu:SUBJECT,SUBJECT, gsm8k, gsm8k:FILE, "
                    "mcq:FILE[:dev=FILE][:score=text] (docs/evaluation.md)")
    benchmark_limit: int | None = Field(
        None, ge=1, description="questions per benchmark: a seeded sample stratified by subject (default: all)")
    benchmark_shots: int | None = Field(
        None, ge=0, description="few-shot examples from the dev split (default: the benchmark's own, CMMLU 0, GSM8K 5)")
    benchmark_batch_size: int = Field(8, ge=1, description="benchmark batch size (bounds memory)")
    benchmark_max_tokens: int = Field(256, ge=1, description="GSM8K: generated tokens per answer (the harness's 256)")
    benchmark_chat_template: bool = Field(
        False, description="wrap benchmark prompts in the chat template (off: plain prompts, as published numbers are)")
    cmmlu_dir: str = Field("../shared/data/general/cmmlu", description="CMMLU release folder (test/ and dev/ CSVs)")
    gsm8k_file: str = Field("../shared/data/reasoning/gsm8k_test.jsonl",
                            description="GSM8K test file; few-shot examples from gsm8k_train.jsonl beside it")

    @field_validator("benchmarks")
    @classmethod
    def _known_benchmarks(cls, v: list[str]) -> list[str]:
        kinds = ("cmmlu", "gsm8k", "mcq")
        for spec in v:
            kind = spec.partition(":")[0].strip().lower()
            if kind not in kinds:
                raise ValueError(f"unknown benchmark '{spec}' (known: {', '.join(kinds)}; e.g. cmmlu:anatomy, mcq:exam.csv)")
        return v
