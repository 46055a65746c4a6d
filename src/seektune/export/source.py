"""Work out what a `RUN` argument names and load it as one causal LM.

Deployment commands accept a run folder (config.yaml + final/), a `final/` folder holding a peft
adapter, a plain HF model folder, a seektune INT8 export, or a preset name. Resolving that once,
here, keeps export, prune and serve agreeing on what "the model of this run" is.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch

from ..models.presets import ModelError, fix_pad_token, resolve_model_path

QUANT_MANIFEST = "seektune_quant.json"


class ExportError(ValueError):
    """A deployment problem phrased for the user (names the folder or option)."""


@dataclass
class Source:
    kind: str                 # "adapter" | "model" | "int8"
    path: Path                # adapter folder, model folder or int8 export folder
    base_path: str | None     # base model folder for adapters
    template: str             # data.template of the run ("auto" when unknown)
    run_dir: Path | None      # the run folder when there is one
    name: str                 # a short id (used as the served model name)

    def describe(self) -> str:
        if self.kind == "adapter":
            return f"adapter {self.path} on base {self.base_path}"
        return f"{self.kind} model {self.path}"


def _run_template(run_dir: Path | None) -> str:
    if run_dir is None or not (run_dir / "config.yaml").exists():
        return "auto"
    import yaml

    try:
        cfg = yaml.safe_load((run_dir / "config.yaml").read_text(encoding="utf-8")) or {}
        return str((cfg.get("data") or {}).get("template") or "auto")
    except yaml.YAMLError:
        return "auto"


def resolve_source(target: str | Path) -> Source:
    """Classify `target`; raise ExportError naming the folder when it holds no model."""
    t = str(target)
    p = Path(t).expanduser()
    if not p.exists():
        try:
            path = Path(resolve_model_path(t, log=lambda *_: None))
        except ModelError as e:
            raise ExportError(f"{t}: not a run folder, model folder or preset ({e})") from None
        return Source("model", path, None, "auto", None, t)
    run_dir = None
    if (p / "final").is_dir() and not (p / "config.json").exists() and not (p / "adapter_config.json").exists():
        run_dir, p = p, p / "final"
    elif (p.parent / "config.yaml").exists():
        run_dir = p.parent
    name = (run_dir or p).name
    if (p / QUANT_MANIFEST).exists():
        if p.name == "int8" and run_dir is None:
            name = f"{p.parent.name}-int8"  # exports/medqa/int8 serves as 'medqa-int8'
        return Source("int8", p, None, _run_template(run_dir), run_dir, name)
    if (p / "adapter_config.json").exists():
        meta = json.loads((p / "adapter_config.json").read_text(encoding="utf-8"))
        base = meta.get("base_model_name_or_path")
        if not base:
            raise ExportError(f"{p / 'adapter_config.json'}: no base_model_name_or_path")
        try:
            base = resolve_model_path(base, log=lambda *_: None)
        except ModelError as e:
            raise ExportError(f"{p / 'adapter_config.json'}: base model not found ({e})") from None
        return Source("adapter", p, base, _run_template(run_dir), run_dir, name)
    if (p / "config.json").exists():
        return Source("model", p, None, _run_template(run_dir), run_dir, name)
    raise ExportError(f"{p}: holds no model (expected config.json, adapter_config.json or {QUANT_MANIFEST})")


def load_tokenizer_for(src: Source):
    from transformers import AutoTokenizer

    for cand in (src.path, src.base_path):
        if cand and (Path(cand) / "tokenizer_config.json").exists():
            tok = AutoTokenizer.from_pretrained(str(cand))
            fix_pad_token(tok)
            return tok
    raise ExportError(f"{src.path}: no tokenizer next to the model or its base")


def load_causal_lm(src: Source, merge: bool = False, dtype=torch.float32):
    """Return (model, tokenizer) in eval mode; adapters stay wrapped unless `merge`."""
    from transformers import AutoModelForCausalLM

    tok = load_tokenizer_for(src)
    if src.kind == "int8":
        from .quantize import load_quantized

        return load_quantized(src.path), tok
    path = src.base_path if src.kind == "adapter" else str(src.path)
    try:
        model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype)
    except (OSError, ValueError) as e:
        raise ExportError(f"cannot load a causal LM from {path}: {e}") from None
    if len(tok) > model.get_input_embeddings().weight.shape[0]:
        model.resize_token_embeddings(len(tok))
    if src.kind == "adapter":
        from peft import PeftModel

        model = PeftModel.from_pretrained(model, str(src.path))
        if merge:
            model = model.merge_and_unload()
    model.config.pad_token_id = tok.pad_token_id
    model.eval()
    return model, tok
