"""Load a model and tokenizer for a task from a preset, a local HF folder or a GGUF file."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from ..utils.console import log as console_log
from ..utils.safe_files import check_folder
from . import tokenizer_file
from .presets import ModelError, fix_pad_token, resolve_model_path

_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16, "auto": "auto"}

MOE_TYPES = ("deepseek_v2", "deepseek_v3", "deepseek_v32", "qwen2_moe", "qwen3_moe", "mixtral")


@dataclass
class ModelSpec:
    """What the loader reads from a model config (config.ModelConfig has the same fields, with
    validation); the data tools use this plain form, since data sits below config."""

    name_or_path: str
    task: str = "causal_lm"
    trust_remote_code: bool = False
    dtype: str = "float32"
    attn_implementation: str = "sdpa"
    num_labels: int | None = None
    tokenizer: str | None = None


def _auto_class(task: str):
    from transformers import (AutoModelForCausalLM, AutoModelForSequenceClassification,
                              AutoModelForTokenClassification)

    return {"causal_lm": AutoModelForCausalLM, "sequence_classification": AutoModelForSequenceClassification,
            "token_classification": AutoModelForTokenClassification}[task]


def load_tokenizer(model_cfg, path: str | None = None, log=console_log):
    """The tokenizer of a preset, HF folder or GGUF file, with a pad token distinct from eos.

    A folder's tokenizer.json is used as written: transformers 5 rebuilds some tokenizers from their
    class (Qwen2Tokenizer for a qwen2 config holding DeepSeek's vocabulary, huggingface/transformers#45920),
    and tokenizer_file.from_pretrained reloads those from the file, saying so in one line to `log`.
    """
    path = path or resolve_model_path(model_cfg.tokenizer or model_cfg.name_or_path)
    kwargs = {"trust_remote_code": model_cfg.trust_remote_code}
    p = Path(path)
    if p.suffix == ".gguf":
        kwargs["gguf_file"] = p.name
        path = str(p.parent)
    try:
        tok = tokenizer_file.from_pretrained(path, log=log, **kwargs)
    except Exception as e:
        raise ModelError(f"cannot load a tokenizer from {path}: {e}") from None
    fix_pad_token(tok)
    return tok


_DROPOUT_KEYS = {
    "attention": ("attention_dropout", "attention_probs_dropout_prob", "attn_pdrop"),
    "hidden": ("hidden_dropout", "hidden_dropout_prob", "resid_pdrop", "embd_pdrop"),
    "classifier": ("classifier_dropout", "seq_classif_dropout"),
}


def apply_dropout(cfg, dropout) -> list[str]:
    """Write dropout overrides into a model config; return the keys set (classifier is always settable)."""
    done = []
    if dropout is None:
        return done
    for part, keys in _DROPOUT_KEYS.items():
        value = getattr(dropout, part)
        if value is None:
            continue
        hit = [k for k in keys if hasattr(cfg, k)] or ([keys[0]] if part == "classifier" else [])
        for k in hit:
            setattr(cfg, k, value)
            done.append(f"{k}={value}")
    return done


def quantize_problem(mode: str) -> str | None:
    """Why the base cannot be loaded quantised (`adapter.quantize_base`) here; None when it can (or mode is none)."""
    if mode == "none":
        return None
    import importlib.util

    if not torch.cuda.is_available():
        return (f"{mode} loads the base through bitsandbytes, which quantises on a CUDA GPU, and torch sees none "
                "here; set adapter.quantize_base: none to train in model.dtype")
    if importlib.util.find_spec("bitsandbytes") is None:
        return (f"{mode} needs bitsandbytes, which is not installed (pip install bitsandbytes; not a seektune "
                "dependency)")
    return None


def _quantization_config(mode: str, dtype):
    """QLoRA's settings: 4bit = NF4 with double quantisation, computing in the model dtype; 8bit = LLM.int8."""
    from transformers import BitsAndBytesConfig

    if mode == "8bit":
        return BitsAndBytesConfig(load_in_8bit=True)
    return BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
                              bnb_4bit_compute_dtype=dtype if isinstance(dtype, torch.dtype) else torch.bfloat16)


def load_model(model_cfg, tokenizer=None, num_labels: int | None = None, id2label: dict | None = None,
               log=print, dropout=None, quantize: str = "none"):
    """Return (model, tokenizer, resolved_path). The model is on CPU, in the configured dtype; with `quantize`
    (adapter.quantize_base: 4bit / 8bit) it is loaded quantised by bitsandbytes onto this process's GPU
    (stages.run_stage has checked, with quantize_problem, that this machine can, before the run folder exists)."""
    path = resolve_model_path(model_cfg.name_or_path, log)
    if Path(path).suffix != ".gguf":
        check_folder(path, "model folder")  # transformers falls back to pytorch_model.bin when no safetensors
    tok = tokenizer or load_tokenizer(model_cfg, path if not model_cfg.tokenizer else None, log=log)
    cls = _auto_class(model_cfg.task)
    kwargs = {"dtype": _DTYPES[model_cfg.dtype], "trust_remote_code": model_cfg.trust_remote_code}
    if model_cfg.attn_implementation != "auto":
        kwargs["attn_implementation"] = model_cfg.attn_implementation
    if quantize != "none":
        import os

        kwargs["quantization_config"] = _quantization_config(quantize, kwargs["dtype"])
        kwargs["device_map"] = {"": int(os.environ.get("LOCAL_RANK", 0))}  # bitsandbytes quantises on the GPU
    p = Path(path)
    if p.suffix == ".gguf":
        kwargs["gguf_file"] = p.name
        path = str(p.parent)
    if model_cfg.task != "causal_lm" or dropout is not None:
        from transformers import AutoConfig

        cfg = AutoConfig.from_pretrained(path, trust_remote_code=model_cfg.trust_remote_code,
                                         **({"gguf_file": kwargs["gguf_file"]} if "gguf_file" in kwargs else {}))
        set_keys = apply_dropout(cfg, dropout)
        if set_keys:
            log("dropout: " + ", ".join(set_keys))
        kwargs["config"] = cfg
    if model_cfg.task != "causal_lm":
        n = num_labels or model_cfg.num_labels
        if n is None:
            raise ModelError("model.num_labels is unknown: set it, or give labelled data")
        cfg.num_labels = n  # transformers 5: must be set on the config, not passed as a kwarg
        if id2label:
            cfg.id2label = {int(k): v for k, v in id2label.items()}
            cfg.label2id = {v: int(k) for k, v in id2label.items()}
        cfg.pad_token_id = tok.pad_token_id
    try:
        model = cls.from_pretrained(path, **kwargs)
    except (OSError, ValueError) as e:
        raise ModelError(f"cannot load model.name_or_path={model_cfg.name_or_path} as {model_cfg.task}: {e}") from None
    if len(tok) > model.get_input_embeddings().weight.shape[0]:
        model.resize_token_embeddings(len(tok))
    model.config.pad_token_id = tok.pad_token_id
    if getattr(model, "generation_config", None) is not None:
        model.generation_config.pad_token_id = tok.pad_token_id
    return model, tok, str(p)


def is_moe(model) -> bool:
    return getattr(model.config, "model_type", "") in MOE_TYPES
