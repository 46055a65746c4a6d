"""Scale-out on the field's engines: torchrun for launching; DDP, FSDP2 or DeepSpeed ZeRO through
the HF Trainer / accelerate integration. seektune only translates its config into theirs (launching
is engine/launch.py).
"""

from __future__ import annotations

import torch

from ..config import ConfigError


def decoder_layer_classes(model) -> list[str]:
    """Class names of the repeated transformer blocks (FSDP auto-wrap units)."""
    names = getattr(model, "_no_split_modules", None) or []
    if not names:
        base = getattr(model, "base_model", model)
        names = getattr(getattr(base, "model", base), "_no_split_modules", None) or []
    return list(names)


def moe_block_classes(model) -> list[type]:
    """MoE blocks that ZeRO-3 must treat as leaves (otherwise unused experts hang the gather)."""
    found = {}
    for _, m in model.named_modules():
        name = type(m).__name__
        if name.endswith("MoE") or name.endswith("SparseMoeBlock"):
            found[name] = type(m)
    return list(found.values())


def deepspeed_config(t) -> dict:
    """A ZeRO config generated from ours; `auto` values are filled in by the HF integration."""
    ds = t.deepspeed
    cfg = {
        "train_micro_batch_size_per_gpu": "auto",
        "gradient_accumulation_steps": "auto",
        "gradient_clipping": "auto",
        "zero_optimization": {"stage": ds.stage, "overlap_comm": True, "contiguous_gradients": True,
                              "reduce_bucket_size": "auto"},
        "bf16": {"enabled": "auto"},
        "fp16": {"enabled": "auto"},
    }
    z = cfg["zero_optimization"]
    if ds.offload_optimizer:
        z["offload_optimizer"] = {"device": "cpu", "pin_memory": True}
    if ds.stage == 3:
        z.update({"stage3_gather_16bit_weights_on_model_save": True, "stage3_prefetch_bucket_size": "auto",
                  "stage3_param_persistence_threshold": "auto"})
        if ds.offload_params:
            z["offload_param"] = {"device": "cpu", "pin_memory": True}
    return cfg


def distributed_kwargs(cfg, model, is_moe: bool) -> dict:
    """TrainingArguments keyword arguments for train.distributed; fail fast where it cannot run."""
    from ..utils.dist import world_size

    t = cfg.train
    gpu = torch.cuda.is_available()
    kw: dict = {}
    if world_size() > 1:  # a backend given to a single process sends accelerate down the distributed path
        kw = {"ddp_backend": "nccl" if gpu else "gloo",
              # routed experts that saw no token this step have no gradient: DDP must look for them
              "ddp_find_unused_parameters": bool(is_moe)}
    if t.distributed == "ddp":
        return kw
    if not gpu:
        raise ConfigError(f"train.distributed: {t.distributed} needs GPUs (none found). On CPU use ddp "
                          "(gloo): seektune train CONFIG --nproc N")
    if t.distributed == "fsdp":
        layers = decoder_layer_classes(model)
        kw["fsdp"] = "full_shard auto_wrap" + (" offload" if t.fsdp.cpu_offload else "")
        kw["fsdp_config"] = {"version": 2, "transformer_layer_cls_to_wrap": layers,
                             "reshard_after_forward": True, "cpu_ram_efficient_loading": True,
                             "activation_checkpointing": t.gradient_checkpointing is True}
        kw.pop("ddp_find_unused_parameters", None)
        return kw
    if t.distributed == "deepspeed":
        try:
            import deepspeed  # noqa: F401
        except ImportError:
            raise ConfigError("train.distributed: deepspeed needs the deepspeed package: pip install deepspeed") from None
        kw["deepspeed"] = t.deepspeed.config_file or deepspeed_config(t)
        if t.deepspeed.stage == 3 and is_moe:
            from deepspeed.utils import set_z3_leaf_modules

            set_z3_leaf_modules(model, moe_block_classes(model))
        return kw
    raise ConfigError(f"train.distributed: unknown engine '{t.distributed}' (ddp, fsdp, deepspeed)")
