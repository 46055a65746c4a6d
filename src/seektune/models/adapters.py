"""Make a model trainable the way the config asks: full, freeze, LoRA or prefix tuning.

`target_modules: auto` chooses LoRA targets per architecture. For DeepSeek-V2/V3 (MLA + MoE):
MLA projections as modules; dense-MLP and shared-expert projections, and the fused 3-D routed
experts, as peft `target_parameters`. Why parameters for the dense/shared MLP too: peft 0.21
rewrites any *module* target ending in gate_proj/up_proj/down_proj on DeepSeek into routed-expert
targets (silently dropping the shared experts), both when wrapping and when reloading; parameter
targets are left alone and round-trip through plain `PeftModel.from_pretrained`.

LoRA variants (adapter.use_dora, use_rslora, init, quantize_base) are peft LoraConfig options. PiSSA and
OLoRA (adapter.init) move part of each adapted weight into the adapter when it is created, so the
trained adapter only fits that residual base; `save_plain_lora` rewrites a saved final adapter into a
plain LoRA of rank 2r for the original base (peft's `path_initial_model_for_weight_conversion`
arithmetic, done on the saved files).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn as nn

from .lora_init import mutates_base, peft_init


MLA_ATTN = ("q_proj", "q_a_proj", "q_b_proj", "kv_a_proj_with_mqa", "kv_b_proj", "o_proj")
DENSE_ATTN = ("q_proj", "k_proj", "v_proj", "o_proj")
DENSE_MLP = ("gate_proj", "up_proj", "down_proj")
BERT_LINEAR = ("query", "key", "value", "dense")
HEAD_NAMES = ("lm_head", "score", "classifier")
DEEPSEEK_TYPES = ("deepseek_v2", "deepseek_v3", "deepseek_v32")


# the adapter's A and B right after a base-changing init (PiSSA / OLoRA), kept on the peft model for save_plain_lora
INITIAL_ADAPTER = "_seektune_initial_adapter"


class AdapterError(ValueError):
    pass


@dataclass
class AdapterReport:
    method: str
    trainable: int
    total: int
    kinds: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def lines(self) -> list[str]:
        pct = 100.0 * self.trainable / max(1, self.total)
        out = [f"adapter: {self.method}; trainable parameters {self.trainable:,} of {self.total:,} ({pct:.3f}%)"]
        if self.kinds:
            out.append("adapted module kinds: " + ", ".join(self.kinds))
        out += [f"note: {n}" for n in self.notes]
        return out


def _linear_leaf_names(model: nn.Module) -> set[str]:
    return {n.rsplit(".", 1)[-1] for n, m in model.named_modules() if isinstance(m, nn.Linear)}


def _param_suffixes(model: nn.Module, candidates: list[str]) -> list[str]:
    names = [n for n, _ in model.named_parameters()]
    return [c for c in candidates if any(n.endswith("." + c) for n in names)]


def auto_lora_targets(model: nn.Module, experts: bool = True, train_router: bool = False):
    """Return (target_modules, target_parameters, notes) for this architecture."""
    mtype = getattr(model.config, "model_type", "")
    leaves = _linear_leaf_names(model)
    notes: list[str] = []
    if mtype in DEEPSEEK_TYPES:
        modules = [n for n in MLA_ATTN if n in leaves]
        mlp = [f"mlp.{p}.weight" for p in DENSE_MLP] + [f"mlp.shared_experts.{p}.weight" for p in DENSE_MLP]
        params = _param_suffixes(model, mlp)
        if experts:
            params += _param_suffixes(model, ["mlp.experts.gate_up_proj", "mlp.experts.down_proj"])
        if train_router:
            notes.append("router gate trains fully (adapter.train_router: true)")
        return modules, params, notes
    if "query" in leaves and "value" in leaves:  # BERT-like encoders
        return [n for n in BERT_LINEAR if n in leaves], [], notes
    modules = [n for n in DENSE_ATTN + DENSE_MLP if n in leaves]
    if len(modules) >= 2:
        return modules, [], notes
    return "all-linear", [], notes


def _peft_task_type(task: str):
    from peft import TaskType

    return {"causal_lm": TaskType.CAUSAL_LM, "sequence_classification": TaskType.SEQ_CLS,
            "token_classification": TaskType.TOKEN_CLS}[task]


def _layer_list(model: nn.Module) -> nn.ModuleList | None:
    best = None
    for name, m in model.named_modules():
        if isinstance(m, nn.ModuleList) and len(m) > 0 and (name.endswith("layers") or name.endswith("layer")
                                                           or name.endswith(".h")):
            if best is None or len(m) > len(best):
                best = m
    return best


def _kinds(model: nn.Module) -> list[str]:
    kinds = set()
    for n, p in model.named_parameters():
        if not p.requires_grad:
            continue
        parts = n.split(".")
        lora_part = next((x for x in ("lora_A", "lora_B", "lora_magnitude_vector") if x in parts), None)
        if lora_part is not None:
            k = parts.index(lora_part)
            owner = [x for x in parts[:k] if x not in ("base_layer",)]
            label = ".".join(owner[-2:]) if owner[-1] in ("experts",) or "shared_experts" in owner else owner[-1]
            if "shared_experts" in owner:
                label = "shared_experts." + owner[-1]
            elif owner[-1] == "experts":
                label = "experts (fused routed)"
            kinds.add(label)
        else:
            kinds.add(parts[-2] if parts[-1] in ("weight", "bias") and len(parts) > 1 else parts[-1])
    return sorted(kinds)


def apply_adapter(model: nn.Module, adapter_cfg, task: str, log=print):
    """Wrap or freeze the model in place; return (model, AdapterReport)."""
    method = adapter_cfg.method
    mtype = getattr(model.config, "model_type", "")
    notes: list[str] = []
    if method == "full":
        for p in model.parameters():
            p.requires_grad_(True)
    elif method == "freeze":
        for p in model.parameters():
            p.requires_grad_(False)
        layers = _layer_list(model)
        if layers is None:
            raise AdapterError(f"adapter.method=freeze: cannot find the transformer layers of a {mtype} model")
        n = min(adapter_cfg.trainable_layers, len(layers))
        for layer in list(layers)[len(layers) - n:]:
            for p in layer.parameters():
                p.requires_grad_(True)
        for name, mod in model.named_modules():
            leaf = name.rsplit(".", 1)[-1]
            if leaf in HEAD_NAMES or leaf in ("norm", "final_layernorm", "ln_f", "pooler"):
                for p in mod.parameters():
                    p.requires_grad_(True)
        if getattr(model.config, "tie_word_embeddings", False) and task == "causal_lm":
            notes.append("lm_head is tied to the input embeddings, so the embeddings train too")
        notes.append(f"training the last {n} of {len(layers)} layers and the head")
    elif method == "lora":
        from peft import LoraConfig, get_peft_model

        init, use_dora = adapter_cfg.init, adapter_cfg.use_dora
        quantised = getattr(model, "is_loaded_in_4bit", False) or getattr(model, "is_loaded_in_8bit", False)
        if quantised:
            from peft import prepare_model_for_kbit_training

            # freezes the base and casts its non-quantised weights (norms, head) to float32; activation
            # checkpointing stays with train.gradient_checkpointing (engine/memory.py)
            model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=False)

        if adapter_cfg.target_modules == "auto":
            modules, params, notes = auto_lora_targets(model, adapter_cfg.experts, adapter_cfg.train_router)
        else:
            modules, params = adapter_cfg.target_modules, []
            if mtype in DEEPSEEK_TYPES and isinstance(modules, list) and any(
                    m.split(".")[-1] in DENSE_MLP for m in modules):
                notes.append("peft rewrites gate/up/down_proj module targets on DeepSeek into routed-expert "
                             "targets; use target_modules: auto to adapt shared experts and dense MLP too")
        if params and use_dora:
            raise AdapterError(f"adapter.use_dora: peft's DoRA does not work on target_parameters ({', '.join(params)} "
                               f"on this {mtype} model); set adapter.use_dora: false, or list adapter.target_modules")
        if params and mutates_base(init):
            raise AdapterError(f"adapter.init: {init} decomposes 2-D linear weights; this {mtype} model's "
                               f"target_parameters ({', '.join(params)}) are not that; use adapter.init: default or "
                               "gaussian, or list adapter.target_modules")
        if quantised:
            notes.append("base quantised by bitsandbytes (adapter.quantize_base); the adapter trains in float32")
        dropout = adapter_cfg.dropout
        if params and dropout > 0:
            notes.append(f"lora dropout {dropout} -> 0 (peft target_parameters needs dropout 0)")
            dropout = 0.0
        modules_to_save = None
        if adapter_cfg.train_router and mtype in DEEPSEEK_TYPES + ("qwen2_moe", "mixtral"):
            modules_to_save = ["gate"]
        try:
            lcfg = LoraConfig(r=adapter_cfg.r, lora_alpha=adapter_cfg.alpha, lora_dropout=dropout,
                              target_modules=modules, target_parameters=params or None,
                              task_type=_peft_task_type(task), modules_to_save=modules_to_save, use_dora=use_dora,
                              use_rslora=adapter_cfg.use_rslora, init_lora_weights=peft_init(init))
            if mutates_base(init):
                # pissa_niter_K draws a random sketch: seeded here, so a resumed run rebuilds the same residual base
                # that its checkpoint's adapter was trained on, and the run's own random stream is left as it was
                with torch.random.fork_rng():
                    torch.manual_seed(0)
                    model = get_peft_model(model, lcfg)
            else:
                model = get_peft_model(model, lcfg)
        except ValueError as e:
            raise AdapterError(f"adapter.target_modules: LoRA cannot target {modules!r} on a {mtype} model: {e}") from None
        if mutates_base(init):
            from peft import get_peft_model_state_dict

            setattr(model, INITIAL_ADAPTER, {k: v.detach().to("cpu", copy=True)
                                             for k, v in get_peft_model_state_dict(model).items()
                                             if ".lora_A." in k or ".lora_B." in k})
            notes.append(f"adapter.init {init}: part of every adapted weight moved into the adapter; final/ is saved "
                         "as a plain LoRA of rank 2r that applies to the original base")
    elif method == "prefix":
        from peft import PrefixTuningConfig, get_peft_model

        if mtype in DEEPSEEK_TYPES:
            raise AdapterError(
                f"adapter.method=prefix is not supported for {mtype}: MLA caches a compressed latent, which "
                "prefix key/values cannot extend. Use adapter.method: lora (or full/freeze).")
        try:
            model = get_peft_model(model, PrefixTuningConfig(task_type=_peft_task_type(task),
                                                             num_virtual_tokens=adapter_cfg.num_virtual_tokens))
        except Exception as e:
            raise AdapterError(f"adapter.method=prefix failed for a {mtype} model: {e}") from None
    else:
        raise AdapterError(f"adapter.method: unknown method '{method}'")

    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    total = sum(p.numel() for p in model.parameters())
    if trainable == 0:
        raise AdapterError("no trainable parameters after applying the adapter; check adapter.* settings")
    rep = AdapterReport(method, trainable, total, _kinds(model), notes)
    return model, rep


def save_plain_lora(model: nn.Module, folder) -> bool:
    """Rewrite the peft adapter saved in `folder` for the ORIGINAL base when `model` was made with a base-changing
    init (PiSSA / OLoRA); False (and nothing done) otherwise.

    At init W = W_res + s B0 A0 and the training moved the adapter to B A, so the trained model is
    W_res + s B A = W + s (B A - B0 A0) = W + s [B | -B0] [A ; A0]: a LoRA of rank 2r with the same scale
    (alpha doubles, or x sqrt 2 under rsLoRA). Every other saved tensor (DoRA magnitudes, modules_to_save
    heads) stays as trained: a DoRA layer normalises W + s B'A', which is the same matrix. This is peft's
    `save_pretrained(path_initial_model_for_weight_conversion=...)` arithmetic done on the saved files, so it
    works the same after any distributed save, and keeps the tensors peft's conversion drops (it writes
    only lora_A / lora_B).
    """
    initial = getattr(model, INITIAL_ADAPTER, None)
    if initial is None:
        return False
    from safetensors.torch import load_file, save_file

    folder = Path(folder)
    weights, config = folder / "adapter_model.safetensors", folder / "adapter_config.json"
    if not weights.exists() or not config.exists():
        raise AdapterError(f"{folder}: no adapter_model.safetensors / adapter_config.json to convert "
                           "(adapter.init pissa/olora)")
    state = load_file(str(weights))
    lora_keys = [k for k in state if ".lora_A." in k or ".lora_B." in k]
    missing = [k for k in lora_keys if k not in initial]
    if missing:
        raise AdapterError(f"{folder}: {len(missing)} saved LoRA tensors have no initial value to subtract "
                           f"(e.g. {missing[0]})")
    for k in lora_keys:
        init = initial[k].to(state[k].dtype)
        state[k] = torch.cat([state[k], init], 0) if ".lora_A." in k else torch.cat([state[k], -init], 1)
    save_file({k: v.contiguous() for k, v in state.items()}, str(weights), metadata={"format": "pt"})
    cfg = json.loads(config.read_text(encoding="utf-8"))
    cfg["r"] *= 2
    alpha_factor = math.sqrt(2) if cfg.get("use_rslora") else 2  # rsLoRA scales by alpha / sqrt(r)
    cfg["lora_alpha"] *= alpha_factor
    if cfg.get("rank_pattern"):
        cfg["rank_pattern"] = {n: 2 * v for n, v in cfg["rank_pattern"].items()}
    if cfg.get("alpha_pattern"):
        cfg["alpha_pattern"] = {n: alpha_factor * v for n, v in cfg["alpha_pattern"].items()}
    cfg["init_lora_weights"] = True
    config.write_text(json.dumps(cfg, indent=2, sort_keys=True), encoding="utf-8")
    return True


def load_adapter(model: nn.Module, path: str, method: str = "lora"):
    """Wrap `model` with a saved peft adapter, trainable (continual fine-tuning); return (model, AdapterReport)."""
    from peft import PeftModel

    from ..utils.safe_files import check_folder

    check_folder(path, "adapter folder")  # peft falls back to adapter_model.bin when no safetensors
    model = PeftModel.from_pretrained(model, path, is_trainable=True)
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return model, AdapterReport(method, trainable, sum(p.numel() for p in model.parameters()), _kinds(model),
                                [f"adapter initialised from {path}"])
