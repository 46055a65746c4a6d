"""The one answer to "what is this path": a run folder, an adapter, a model folder, an INT8 export or a preset.

`seektune eval`, `export`, `prune`, `serve`, PPO's reward model and `continue` all take such an
argument; resolving it here keeps them agreeing on what "the model of this run" is, and on which
chat template and task it was trained with.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import yaml

from ..config import ConfigError, load_config
from ..models.presets import ModelError, resolve_model_path
from ..utils.console import warn
from ..utils.safe_files import check_folder
from .checkpoint import COMPLETE

QUANT_MANIFEST = "seektune_quant.json"


class ArtifactError(ValueError):
    """A path that holds no model, phrased for the user (names the folder)."""


@dataclass
class Artifact:
    kind: str                 # "adapter" | "model" | "int8"
    path: Path                # the folder with the weights (final/, a model folder, an int8 export)
    base_path: str | None     # adapters: the base model folder
    run_dir: Path | None      # the run folder it came from, if any
    run_cfg: object | None    # that run's validated config (None for bare models)
    name: str                 # a short id (the served model name)
    template_name: str = "auto"

    @property
    def task(self) -> str:
        return self.run_cfg.model.task if self.run_cfg is not None else "causal_lm"

    @property
    def template(self) -> str:
        return self.template_name

    def describe(self) -> str:
        if self.kind == "adapter":
            return f"adapter {self.path} on base {self.base_path}"
        return f"{self.kind} model {self.path}"


def _run_config(run_dir: Path):
    """(validated config or None, data.template): an older run's config may no longer validate."""
    p = run_dir / "config.yaml"
    if not p.exists():
        return None, "auto"
    try:
        cfg = load_config(p)
        return cfg, cfg.data.template
    except ConfigError as e:
        warn(f"{p} does not validate with this seektune ({str(e).splitlines()[-1].strip()}); using its template only")
        try:
            raw = yaml.safe_load(p.read_text(encoding="utf-8")) or {}
            return None, str((raw.get("data") or {}).get("template") or "auto")
        except yaml.YAMLError:
            return None, "auto"


def run_dir_of(target: str | Path) -> Path | None:
    """The run folder a path belongs to: the folder itself (config.yaml + final/), or final/'s parent."""
    p = Path(str(target)).expanduser()
    if (p / "config.yaml").exists() and (p / "final").is_dir():
        return p
    if p.name == "final" and (p.parent / "config.yaml").exists():
        return p.parent
    return None


def run_config_of(target: str | Path):
    """The validated config of the run a path belongs to (None for bare models or a config that no longer
    validates)."""
    d = run_dir_of(target)
    return _run_config(d)[0] if d is not None else None


def resolve(target: str | Path) -> Artifact:
    """Classify `target`; ArtifactError naming the folder when it holds no model, UnsafeFileError when a
    file in it (or in an adapter's base) would run code when loaded."""
    art = _classify(target)
    check_folder(art.path, f"{art.kind} folder")
    if art.base_path:
        check_folder(art.base_path, "base model folder")
    return art


def _classify(target: str | Path) -> Artifact:
    t = str(target)
    p = Path(t).expanduser()
    if not p.exists():
        try:
            path = Path(resolve_model_path(t, log=lambda *_: None))
        except ModelError as e:
            raise ArtifactError(f"{t}: not a run folder, model folder or preset ({e})") from None
        return Artifact("model", path, None, None, None, t)
    run_dir = run_dir_of(p)
    if (p / "final").is_dir() and not (p / "config.json").exists() and not (p / "adapter_config.json").exists():
        if run_dir is None:
            raise ArtifactError(f"{p}: a run folder without config.yaml; point at {p / 'final'} instead")
        p = p / "final"
    elif (p / "config.yaml").exists() and any((p / n).exists() for n in ("checkpoints", "final.partial", "metrics.jsonl")):
        raise ArtifactError(f"{p}: the run has not finished (no final/ yet); continue it with "
                            f"`seektune train {p / 'config.yaml'} --resume`")
    if run_dir is not None and p.name == "final" and not (p / COMPLETE).exists():
        raise ArtifactError(f"{p}: incomplete (no {COMPLETE}): it was being written when the run stopped; "
                            f"continue the run with `seektune train {run_dir / 'config.yaml'} --resume`")
    run_cfg, template = _run_config(run_dir) if run_dir else (None, "auto")
    name = (run_dir or p).name
    if (p / QUANT_MANIFEST).exists():
        if p.name == "int8" and run_dir is None:
            name = f"{p.parent.name}-int8"  # exports/medqa/int8 serves as 'medqa-int8'
        return Artifact("int8", p, None, run_dir, run_cfg, name, template)
    if (p / "adapter_config.json").exists():
        meta = json.loads((p / "adapter_config.json").read_text(encoding="utf-8"))
        base = meta.get("base_model_name_or_path")
        if not base:
            raise ArtifactError(f"{p / 'adapter_config.json'}: no base_model_name_or_path; cannot tell the base model")
        try:
            base = resolve_model_path(base, log=lambda *_: None)
        except ModelError as e:
            raise ArtifactError(f"{p / 'adapter_config.json'}: base model not found ({e})") from None
        return Artifact("adapter", p, base, run_dir, run_cfg, name, template)
    if (p / "config.json").exists():
        return Artifact("model", p, None, run_dir, run_cfg, name, template)
    raise ArtifactError(f"{p}: holds no model (expected config.json, adapter_config.json or {QUANT_MANIFEST})")
