"""INT8 export in compressed-tensors, the standard format: plain transformers and vLLM load it as is.

`--quantize int8` writes DIR/int8 as llm-compressor's W8A16 does: every nn.Linear except lm_head
gets int8 weights with one scale per output channel (symmetric), packed by compressed-tensors
(`weight_packed`, `weight_scale`, the `pack-quantized` format vLLM runs with its int8 kernels), and
`quantization_config` in config.json. Embeddings and lm_head stay float (the vLLM convention; tied
to the embeddings in small models); the export counts what stays float, by group. MoE experts that
transformers 5 fuses into 3D parameters (DeepSeek-V2/V3) are written per expert, int8 the same way,
as llm-compressor writes MoE checkpoints; transformers fuses them again when it loads the folder.

Loading: `AutoModelForCausalLM.from_pretrained(DIR/int8)` with `compressed-tensors` installed (no
seektune) decompresses the weights to float on the first forward: on CPU that saves disk, not RAM.
`load_quantized` (what `seektune serve DIR/int8` uses) keeps the weights int8 in memory instead
(`Int8WeightOnlyLinear`, dequantised per call). Folders of the earlier seektune-only format
(`model.int8.safetensors`) still load, with its torch.ao `mode="dynamic"` option.
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..utils.console import log
from ..engine.artifacts import QUANT_MANIFEST
from .errors import ExportError

WEIGHTS = "model.int8.safetensors"
FORMAT = "seektune-int8-rowwise-v1"  # the earlier seektune-only format: read, no longer written
CT_FORMAT = "compressed-tensors-w8a16-channel"
CT_PIN = "compressed-tensors==0.20.1"


def quantize_rows(w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Symmetric per-row int8: returns (int8 values, fp32 scale per row)."""
    w = w.detach().float()
    scale = (w.abs().amax(dim=1) / 127.0).clamp(min=1e-12)
    q = torch.round(w / scale[:, None]).clamp(-127, 127).to(torch.int8)
    return q, scale


def _quantizable(model: nn.Module) -> dict[str, nn.Module]:
    return {n: m for n, m in model.named_modules() if isinstance(m, (nn.Linear, nn.Embedding))}


def _compressed_tensors():
    try:
        import compressed_tensors  # noqa: F401
    except ImportError:
        raise ExportError(f"the INT8 export is written in the compressed-tensors format: pip install {CT_PIN} "
                          "(make venv installs it)") from None


def _float_groups(model: nn.Module, quantized: set[str]) -> dict[str, int]:
    """Parameters that stay float, by group, so nothing is left out silently."""
    groups: dict[str, int] = {}
    seen: set[int] = set()
    for name, p in model.named_parameters():
        if id(p) in seen:
            continue
        seen.add(id(p))
        owner = name.rpartition(".")[0]
        if owner in quantized:
            continue
        if p.dim() == 3:
            g = "fused MoE experts (3D parameters, not nn.Linear)"
        elif "embed" in name or name.startswith("lm_head"):
            g = "embeddings / lm_head"
        elif p.dim() == 2:
            g = "other 2D weights"
        else:
            g = "norms, biases, router bias"
        groups[g] = groups.get(g, 0) + p.numel()
    return groups


def save_int8(model: nn.Module, tok, out: Path) -> dict:
    """Write `model` (fp32; quantised in place, so not usable afterwards) to `out` as compressed-tensors
    W8A16 per-channel; return the manifest (what is int8, what stays float)."""
    _compressed_tensors()
    experts = sorted({n.rpartition(".")[0] for n, p in model.named_parameters() if p.dim() == 3})
    from compressed_tensors.compressors import ModelCompressor
    from compressed_tensors.quantization import (QuantizationArgs, QuantizationConfig, QuantizationScheme,
                                                 apply_quantization_config)
    from compressed_tensors.quantization.utils import calculate_qparams

    out.mkdir(parents=True, exist_ok=True)
    total = sum(p.numel() for p in {id(p): p for p in model.parameters()}.values())
    scheme = QuantizationScheme(targets=["Linear"], weights=QuantizationArgs(num_bits=8, type="int", symmetric=True,
                                                                             strategy="channel"))
    apply_quantization_config(model, QuantizationConfig(config_groups={"group_0": scheme}, ignore=["lm_head"]))
    quantized: dict[str, int] = {}
    with torch.no_grad():
        for name, mod in model.named_modules():
            if getattr(mod, "quantization_scheme", None) is not None and hasattr(mod, "weight_scale"):
                w = mod.weight.data
                s, zp = calculate_qparams(w.amin(dim=1, keepdim=True), w.amax(dim=1, keepdim=True),
                                          mod.quantization_scheme.weights)
                mod.weight_scale.data.copy_(s)
                mod.weight_zero_point.data.copy_(zp)
                quantized[name] = w.numel()
    floats = _float_groups(model, set(quantized) | set(experts))
    comp = ModelCompressor.from_pretrained_model(model)
    comp.compress_model(model)
    model.save_pretrained(str(out))
    comp.update_config(str(out))
    tok.save_pretrained(str(out))
    expert_params = _compress_expert_shards(out, experts, scheme) if experts else 0
    manifest = {"format": CT_FORMAT, "quantization_format": str(comp.quantization_config.format),
                "int8_linear_modules": len(quantized), "int8_params": sum(quantized.values()) + expert_params,
                "int8_expert_params": expert_params, "float_params": floats, "total_params": total,
                "load": f"AutoModelForCausalLM.from_pretrained(DIR) with {CT_PIN}; vLLM reads the same folder"
                        + ("; the MoE experts are decompressed to float when loaded" if experts else "")}
    (out / QUANT_MANIFEST).write_text(json.dumps(manifest, indent=2), encoding="utf-8")
    return manifest


def _compress_expert_shards(out: Path, experts: list[str], scheme) -> int:
    """Quantise the fused MoE experts in the written checkpoint, where save_pretrained has already
    split them back into one Linear per expert (`...experts.3.gate_proj.weight`, the layout of the
    original DeepSeek checkpoints): each becomes `weight_packed` / `weight_scale` / `weight_shape` as
    llm-compressor writes MoE models. transformers fuses them again on load (its compressed-tensors
    dequantize operation), vLLM reads them per expert. Returns the number of int8 expert weights."""
    import re

    from compressed_tensors.compressors import BaseCompressor
    from compressed_tensors.quantization.utils import calculate_qparams
    from safetensors.torch import load_file, save_file

    compressor = BaseCompressor.get_value_from_registry("pack-quantized")
    pattern = re.compile("^(" + "|".join(re.escape(e) for e in experts) + r")\.\d+\.[A-Za-z_]+\.weight$")
    index_path = out / "model.safetensors.index.json"
    index = json.loads(index_path.read_text()) if index_path.exists() else None
    n = 0
    for shard in sorted(out.glob("*.safetensors")):
        tensors = load_file(str(shard))
        if not any(pattern.match(k) for k in tensors):
            continue
        new: dict[str, torch.Tensor] = {}
        for key, w in tensors.items():
            if not (pattern.match(key) and w.dim() == 2 and w.is_floating_point()):
                new[key] = w
                continue
            w = w.float()
            s, zp = calculate_qparams(w.amin(dim=1, keepdim=True), w.amax(dim=1, keepdim=True), scheme.weights)
            base = key[: -len("weight")]
            for k, v in compressor.compress({"weight": w, "weight_scale": s, "weight_zero_point": zp}, scheme).items():
                new[base + k] = v.contiguous()
                if index is not None:
                    index["weight_map"][base + k] = shard.name
            if index is not None:
                index["weight_map"].pop(key, None)
            n += w.numel()
        save_file(new, str(shard), metadata={"format": "pt"})
    if index is not None:
        index_path.write_text(json.dumps(index, indent=2), encoding="utf-8")
    if n == 0:
        raise ExportError(f"{out}: found none of the expert weights of {experts[0]} ... in the written checkpoint "
                          "to quantise (this transformers version saves fused experts differently)")
    return n


class Int8WeightOnlyLinear(nn.Module):
    """Linear with int8 weights + per-row scales; dequantises in the input's dtype per call (GPU path)."""

    def __init__(self, q: torch.Tensor, scale: torch.Tensor, bias: torch.Tensor | None):
        super().__init__()
        self.in_features, self.out_features = q.shape[1], q.shape[0]
        self.register_buffer("qweight", q)
        self.register_buffer("scale", scale)
        self.bias = nn.Parameter(bias.detach().clone(), requires_grad=False) if bias is not None else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w = self.qweight.to(x.dtype) * self.scale.to(x.dtype)[:, None]
        return F.linear(x, w, None if self.bias is None else self.bias.to(x.dtype))


def _set_module(root: nn.Module, name: str, new: nn.Module) -> None:
    parent, _, leaf = name.rpartition(".")
    setattr(root.get_submodule(parent) if parent else root, leaf, new)


def load_quantized(path: str | Path, device: str | None = None, mode: str = "auto"):
    """Load an int8 export. mode: auto (= weight-only, on every device) | weight | dynamic.

    auto is weight-only because torch's CPU dynamic INT8 also quantises activations, and SmolLM2's
    outlier activations took its perplexity from 25.7 to 67.5 (+163%), while weight-only lost
    nothing (24.8). Dynamic is faster on CPU; ask for it with mode="dynamic" after checking quality.
    """
    from safetensors.torch import load_file
    from transformers import AutoConfig, AutoModelForCausalLM

    path = Path(path)
    manifest_path = path / QUANT_MANIFEST
    if not manifest_path.exists():
        raise ExportError(f"{path}: not a seektune INT8 export (no {QUANT_MANIFEST})")
    manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    if manifest.get("format") == CT_FORMAT:
        if mode == "dynamic":
            raise ExportError(f"{path}: mode='dynamic' (torch.ao) is only kept for the earlier seektune INT8 format")
        return _load_compressed(path, device)
    if manifest.get("format") != FORMAT:
        raise ExportError(f"{manifest_path}: unknown format {manifest.get('format')!r} (expected {CT_FORMAT})")
    if mode == "auto":
        mode = "weight"
    cfg = AutoConfig.from_pretrained(str(path))
    model = AutoModelForCausalLM.from_config(cfg, dtype=torch.float32)
    model.tie_weights()
    tensors = load_file(str(path / manifest["weights"]))
    q8 = {k[: -len(".weight.int8")]: v for k, v in tensors.items() if k.endswith(".weight.int8")}
    scales = {k[: -len(".weight.scale")]: v for k, v in tensors.items() if k.endswith(".weight.scale")}
    for name, alias in manifest.get("tied", {}).items():
        q8[name], scales[name] = q8[alias], scales[alias]
    plain = {k: v for k, v in tensors.items() if not k.endswith((".weight.int8", ".weight.scale"))}
    missing, unexpected = model.load_state_dict(plain, strict=False)
    mods = _quantizable(model)
    if set(q8) != set(mods):
        raise ExportError(f"{path}: int8 tensors do not match the model's layers "
                          f"(missing {sorted(set(mods) - set(q8))[:3]}, extra {sorted(set(q8) - set(mods))[:3]})")
    for name, mod in mods.items():
        if isinstance(mod, nn.Embedding):
            mod.weight = nn.Parameter(q8[name].float() * scales[name][:, None], requires_grad=False)
    for name, mod in mods.items():
        if not isinstance(mod, nn.Linear):
            continue
        if mode == "weight":
            _set_module(model, name, Int8WeightOnlyLinear(q8[name], scales[name], mod.bias))
        else:
            _set_module(model, name, _dynamic_linear(q8[name], scales[name], mod.bias))
    model.eval()
    if device != "cpu":
        model.to(device)
    return model


def _load_compressed(path: Path, device: str):
    """A compressed-tensors W8A16 folder with its Linear weights kept int8 in memory (transformers alone
    would decompress them to float on the first forward)."""
    _compressed_tensors()
    from compressed_tensors.compressors.pack_quantized.helpers import unpack_from_int32
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(str(path), dtype=torch.float32)
    hook = getattr(model, "ct_decompress_hook", None)
    if hook is not None:  # nothing left for it to decompress once the modules are replaced
        hook.remove()
        delattr(model, "ct_decompress_hook")
    for name, mod in list(model.named_modules()):
        if not hasattr(mod, "weight_packed"):
            continue
        shape = torch.Size([int(x) for x in mod.weight_shape.tolist()])
        q = unpack_from_int32(mod.weight_packed.data, mod.quantization_scheme.weights.num_bits, shape)
        bias = mod.bias if getattr(mod, "bias", None) is not None else None
        _set_module(model, name, Int8WeightOnlyLinear(q, mod.weight_scale.data.float()[:, 0], bias))
    model.eval()
    if device != "cpu":
        model.to(device)
    return model


def _dynamic_linear(q: torch.Tensor, scale: torch.Tensor, bias: torch.Tensor | None) -> nn.Module:
    from torch.ao.nn.quantized.dynamic import Linear as DynamicQuantizedLinear

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch warns that quantized tensor creation is deprecated
        lin = DynamicQuantizedLinear(q.shape[1], q.shape[0], bias_=bias is not None, dtype=torch.qint8)
        w = torch._make_per_channel_quantized_tensor(q, scale.double(), torch.zeros(q.shape[0], dtype=torch.long), 0)
        lin.set_weight_bias(w, None if bias is None else bias.detach().float())
    return lin


def quantize_export(model: nn.Module, tok, out: Path, method: str, ref_logits=None, prompts=None) -> dict:
    """Quantise an fp32 (merged) model into `out`; compare its logits with `ref_logits` when given."""
    if method != "int8":
        raise ExportError(f"--quantize must be int8 (got {method!r})")
    from .verify import compare_logits, folder_size, prompt_logits

    manifest = save_int8(model, tok, out)
    res: dict = {"size_bytes": folder_size(out), "int8_params": manifest["int8_params"],
                 "float_params": manifest["float_params"], "format": manifest["quantization_format"]}
    log(f"int8 (compressed-tensors {manifest['quantization_format']}): {manifest['int8_params']:,} of "
        f"{manifest['total_params']:,} parameters int8; float: "
        + ", ".join(f"{g} {n:,}" for g, n in manifest["float_params"].items()))
    if ref_logits is not None:
        qm = load_quantized(out, device="cpu")
        v = compare_logits(ref_logits, prompt_logits(qm, tok, prompts), rel_tol=float("inf"))
        res["verification"] = {"max_abs_diff": v.max_abs_diff, "top1_agreement": v.top1_agreement}
        log(f"int8 vs adapter model: max |logit diff| {v.max_abs_diff:.3g} (max |logit| {v.max_abs_logit:.3g}); "
            f"top-1 agreement {100 * v.top1_agreement:.1f}%")
    return res
