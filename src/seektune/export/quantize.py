"""INT8 export: one safetensors file of int8 weights, loaded weight-only by default on every device.

Every nn.Linear and nn.Embedding weight is stored as int8 with one fp32 scale per output row
(symmetric, scale = max|row| / 127); norms and biases stay fp32. No pickles: the file is plain
safetensors plus a manifest (seektune_quant.json), and the same file serves both back ends:

* default (`mode="weight"`, every device): every Linear becomes `Int8WeightOnlyLinear` (int8 weights
  in memory, dequantised per call in the activation dtype): a quarter of fp32's weight memory, half
  of fp16's, and SmolLM2's perplexity within noise of fp32;
* opt-in on CPU (`mode="dynamic"`): every Linear becomes torch.ao's DynamicQuantizedLinear with
  exactly the stored int8 values, activations quantised per call (fbgemm/x86 int8 GEMM): faster,
  but activation outliers took SmolLM2's perplexity from 25.7 to 67.5.

Loading needs seektune (`seektune.export.quantize.load_quantized`); the fp32/fp16/bf16 exports
are the ones other tools load.
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
FORMAT = "seektune-int8-rowwise-v1"


def quantize_rows(w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Symmetric per-row int8: returns (int8 values, fp32 scale per row)."""
    w = w.detach().float()
    scale = (w.abs().amax(dim=1) / 127.0).clamp(min=1e-12)
    q = torch.round(w / scale[:, None]).clamp(-127, 127).to(torch.int8)
    return q, scale


def _quantizable(model: nn.Module) -> dict[str, nn.Module]:
    return {n: m for n, m in model.named_modules() if isinstance(m, (nn.Linear, nn.Embedding))}


def save_int8(model: nn.Module, tok, out: Path) -> dict:
    """Write the int8 export of an fp32 model to `out`; return the manifest."""
    from safetensors.torch import save_file

    out.mkdir(parents=True, exist_ok=True)
    mods = _quantizable(model)
    tensors: dict[str, torch.Tensor] = {}
    seen: dict[int, str] = {}
    tied: dict[str, str] = {}
    for name, mod in mods.items():
        ptr = mod.weight.data_ptr()
        if ptr in seen:  # tied weights (lm_head = embed_tokens): stored once
            tied[name] = seen[ptr]
            continue
        seen[ptr] = name
        q, s = quantize_rows(mod.weight)
        tensors[f"{name}.weight.int8"] = q.contiguous()
        tensors[f"{name}.weight.scale"] = s.contiguous()
    qnames = {f"{n}.weight" for n in mods}
    for k, v in model.state_dict().items():
        if k not in qnames and k not in tensors and v.is_floating_point():
            tensors[k] = v.detach().float().contiguous()
    # drop plain copies of weights that are aliases of quantised ones (e.g. a tied lm_head)
    save_file(tensors, str(out / WEIGHTS), metadata={"format": FORMAT})
    model.config.save_pretrained(str(out))
    if getattr(model, "generation_config", None) is not None:
        model.generation_config.save_pretrained(str(out))
    tok.save_pretrained(str(out))
    manifest = {"format": FORMAT, "weights": WEIGHTS, "quantized": sorted(seen.values()), "tied": tied,
                "default": "weight-only int8 on every device", "optional": "torch.ao dynamic int8 on CPU (mode='dynamic')"}
    (out / QUANT_MANIFEST).write_text(json.dumps(manifest, indent=2), encoding="utf-8")
    return manifest


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
    if manifest.get("format") != FORMAT:
        raise ExportError(f"{manifest_path}: unknown format {manifest.get('format')!r} (expected {FORMAT})")
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
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

    save_int8(model, tok, out)
    res: dict = {"size_bytes": folder_size(out)}
    if ref_logits is not None:
        qm = load_quantized(out, device="cpu")
        v = compare_logits(ref_logits, prompt_logits(qm, tok, prompts), rel_tol=float("inf"))
        res["verification"] = {"max_abs_diff": v.max_abs_diff, "top1_agreement": v.top1_agreement}
        log(f"int8 vs adapter model: max |logit diff| {v.max_abs_diff:.3g} (max |logit| {v.max_abs_logit:.3g}); "
            f"top-1 agreement {100 * v.top1_agreement:.1f}%")
    return res
