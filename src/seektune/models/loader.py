"""Load a model and tokenizer for a task from a preset, a local HF folder or a GGUF file."""

from __future__ import annotations

from pathlib import Path

import torch

from .presets import ModelError, fix_pad_token, resolve_model_path

_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16, "auto": "auto"}

MOE_TYPES = ("deepseek_v2", "deepseek_v3", "deepseek_v32", "qwen2_moe", "qwen3_moe", "mixtral")


def _auto_class(task: str):
    from transformers import (AutoModelForCausalLM, AutoModelForSequenceClassification,
                              AutoModelForTokenClassification)

    return {"causal_lm": AutoModelForCausalLM, "sequence_classification": AutoModelForSequenceClassification,
            "token_classification": AutoModelForTokenClassification}[task]


def load_tokenizer(model_cfg, path: str | None = None):
    from transformers import AutoTokenizer

    path = path or resolve_model_path(model_cfg.tokenizer or model_cfg.name_or_path)
    kwargs = {"trust_remote_code": model_cfg.trust_remote_code}
    p = Path(path)
    if p.suffix == ".gguf":
        kwargs["gguf_file"] = p.name
        path = str(p.parent)
    try:
        tok = AutoTokenizer.from_pretrained(path, **kwargs)
    except Exception as e:
        raise ModelError(f"cannot load a tokenizer from {path}: {e}") from None
    fix_pad_token(tok)
    return tok


def load_model(model_cfg, tokenizer=None, num_labels: int | None = None, id2label: dict | None = None,
               log=print):
    """Return (model, tokenizer, resolved_path). The model is on CPU, in the configured dtype."""
    path = resolve_model_path(model_cfg.name_or_path, log)
    tok = tokenizer or load_tokenizer(model_cfg, path if not model_cfg.tokenizer else None)
    cls = _auto_class(model_cfg.task)
    kwargs = {"dtype": _DTYPES[model_cfg.dtype], "trust_remote_code": model_cfg.trust_remote_code}
    if model_cfg.attn_implementation != "auto":
        kwargs["attn_implementation"] = model_cfg.attn_implementation
    p = Path(path)
    if p.suffix == ".gguf":
        kwargs["gguf_file"] = p.name
        path = str(p.parent)
    if model_cfg.task != "causal_lm":
        from transformers import AutoConfig

        cfg = AutoConfig.from_pretrained(path, trust_remote_code=model_cfg.trust_remote_code,
                                         **({"gguf_file": kwargs["gguf_file"]} if "gguf_file" in kwargs else {}))
        n = num_labels or model_cfg.num_labels
        if n is None:
            raise ModelError("model.num_labels is unknown: set it, or give labelled data")
        cfg.num_labels = n  # transformers 5: must be set on the config, not passed as a kwarg
        if id2label:
            cfg.id2label = {int(k): v for k, v in id2label.items()}
            cfg.label2id = {v: int(k) for k, v in id2label.items()}
        cfg.pad_token_id = tok.pad_token_id
        if getattr(model_cfg, "classifier_dropout", None) is not None:
            cfg.classifier_dropout = model_cfg.classifier_dropout  # read by BERT-like and token heads
        kwargs["config"] = cfg
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
