"""Load what a `RUN` argument names as one causal LM, for export, prune and serve.

What the argument is (a run folder, a `final/` adapter, a model folder, an INT8 export, a preset)
is decided once, by engine/artifacts.py, for every command.
"""

from __future__ import annotations

from pathlib import Path

import torch

from ..engine.artifacts import QUANT_MANIFEST, Artifact, ArtifactError, resolve
from ..models import tokenizer_file
from ..models.presets import fix_pad_token
from .errors import ExportError

__all__ = ["QUANT_MANIFEST", "ExportError", "Source", "resolve_source", "load_tokenizer_for", "load_causal_lm"]


Source = Artifact  # what a deployment command was pointed at (engine/artifacts.py)


def resolve_source(target: str | Path) -> Artifact:
    """Classify `target`; ExportError naming the folder when it holds no model."""
    try:
        return resolve(target)
    except ArtifactError as e:
        raise ExportError(str(e)) from None


def load_tokenizer_for(src: Source):
    """The tokenizer saved with the run (or its base), its tokenizer.json used as written
    (models/tokenizer_file.py: transformers 5 rebuilds some from their class)."""
    for cand in (src.path, src.base_path):
        if cand and (Path(cand) / "tokenizer_config.json").exists():
            tok = tokenizer_file.from_pretrained(cand)
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
