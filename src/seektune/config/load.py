"""The whole run configuration (shared sections + one section per stage) and how it is loaded.

`Config` is assembled from the shared sections and the stage registry, so a new stage's section
appears here without editing this file. Loading checks, in order: YAML syntax, unknown or misspelt
keys (named, with a suggestion), value types and ranges, and then the stage rules: a key the
chosen stage does not use, a section of another stage, a model.task or data.format the stage does
not read, and the stage's own cross-section checks. Every problem names its key; `seektune train`
and `seektune config` both exit 2 on them.
"""

from __future__ import annotations

import difflib
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, Field, PrivateAttr, ValidationError, create_model, model_validator
from pydantic_core import PydanticCustomError

from ..data.formats import FAMILIES, get_format
from ..data.io import DataError
from .sections import (AdapterConfig, ConfigError, DataConfig, DeployConfig, EvalConfig, ModelConfig, MonitorConfig,
                       FederateConfig, Section, TrainConfig, TuneConfig)
from .stages import STAGES, honoured, users_of

SHARED = {"model": ModelConfig, "adapter": AdapterConfig, "data": DataConfig, "train": TrainConfig,
          "monitor": MonitorConfig, "deploy": DeployConfig, "eval": EvalConfig, "tune": TuneConfig,
          "federate": FederateConfig}
CLASSIFICATION_TASKS = ("sequence_classification", "token_classification")
# the old shared `align:` section: its keys now live in the stage's own section, except these two
ALIGN_MOVED = {"format": ("data", "format"), "eval_pairs": ("data", "max_eval_samples")}


class _ConfigBase(Section):
    _notes: list[str] = PrivateAttr(default_factory=list)

    @property
    def notes(self) -> list[str]:
        """Things the loader did that the user should hear about (an old key translated, ...)."""
        return self._notes

    @model_validator(mode="before")
    @classmethod
    def _legacy_and_defaults(cls, data: Any):
        if not isinstance(data, dict):
            return data
        data = dict(data)
        # a section that is not a mapping (a list, a scalar, a !!set) is left to the field validation, which
        # names it (found by fuzzing: `train: [1]` and `model: abc` were a TypeError / AttributeError here)
        train_in = data.get("train")
        train = dict(train_in) if isinstance(train_in, dict) else {}
        model_in = data.get("model")
        task = model_in.get("task", "causal_lm") if isinstance(model_in, dict) else "causal_lm"
        if "stage" not in train and task in CLASSIFICATION_TASKS and isinstance(train_in, (dict, type(None))):
            train["stage"] = "classify"  # a classification model.task has always meant this stage
            data["train"] = train
        if "align" in data:
            stage = train.get("stage", "sft")
            _translate_align(data, stage if isinstance(stage, str) else "sft")
        return data

    @model_validator(mode="after")
    def _stage_rules(self):
        problems = stage_problems(self)
        if problems:
            raise PydanticCustomError("stage_rules", "{msg}", {"msg": "\n".join(problems)})
        return self

    def to_yaml(self) -> str:
        """Every key with its value, and only the chosen stage's own section (the others can only hold their
        defaults: the stage rules refuse anything else), so the file reproduces the run and nothing else."""
        data = self.model_dump(mode="json", by_alias=True)
        for name, spec in STAGES.items():
            if spec.options is not None and name != self.train.stage:
                data.pop(name, None)
        return yaml.safe_dump(data, sort_keys=False, allow_unicode=True)

    @property
    def stage_options(self):
        """This run's stage section (None for stages without one)."""
        return getattr(self, self.train.stage, None)


def _translate_align(data: dict, stage_name: str) -> None:
    align = data.pop("align") or {}
    if not isinstance(align, dict):
        raise ValueError("align: must be a mapping")
    spec = STAGES.get(stage_name)
    if not isinstance(data.get(stage_name) or {}, dict):
        return  # the stage's own section is not a mapping: its field validation names it
    target = dict(data.get(stage_name) or {})
    fields = spec.options.model_fields if spec is not None and spec.options is not None else {}
    for k, v in align.items():
        if k in ALIGN_MOVED:
            sec, key = ALIGN_MOVED[k]
            data.setdefault(sec, {})
            data[sec] = {**data[sec], key: v}
        elif k in fields:
            target[k] = v
        else:
            raise PydanticCustomError("stage_rules", "{msg}", {
                "msg": f"align.{k}: not used by stage {stage_name}" + (
                    f" (align: is the old shared section; {k} belongs to {_owner(k)})" if _owner(k) else "")})
    if target:
        data[stage_name] = target


def _owner(key: str) -> str:
    return ", ".join(f"{s.name}.{key}" for s in STAGES.values() if s.options and key in s.options.model_fields)


def _build_config():
    fields = {name: (cls, Field(default_factory=cls)) for name, cls in SHARED.items()}
    for s in STAGES.values():
        if s.options is not None:
            fields[s.name] = (s.options, Field(default_factory=s.options, description=s.help))
    return create_model("Config", __base__=_ConfigBase, **fields)


Config = _build_config()


# --------------------------------------------------------------------------------------------
# Stage rules
# --------------------------------------------------------------------------------------------

def _default(section: type[BaseModel], name: str):
    return section.model_fields[name].get_default(call_default_factory=True)


def _leaves(obj: BaseModel, prefix: str):
    """(dotted key, value, default) for every key of a section; an optional sub-section is one key."""
    for name, f in type(obj).model_fields.items():
        value = getattr(obj, name)
        ann = f.annotation
        if isinstance(ann, type) and issubclass(ann, BaseModel) and isinstance(value, BaseModel):
            yield from _leaves(value, f"{prefix}{name}.")
        else:
            yield f"{prefix}{name}", value, _default(type(obj), name)


def _differs(value, default) -> bool:
    if isinstance(value, BaseModel) or isinstance(default, BaseModel):
        return value != default
    if isinstance(value, (list, tuple)) and isinstance(default, (list, tuple)):
        return list(value) != list(default)
    return value != default


def unused_keys(cfg) -> list[str]:
    """Keys set away from their default that the chosen stage does not use, each with who does."""
    spec = STAGES[cfg.train.stage]
    out = []
    for section in SHARED:
        for key, value, default in _leaves(getattr(cfg, section), f"{section}."):
            if _differs(value, default) and not honoured(spec, key):
                users = users_of(key)
                out.append(f"{key}: not used by stage {spec.name}"
                           + (f" (used by: {', '.join(users)})" if users else ""))
    for s in STAGES.values():
        if s.options is None or s.name == spec.name:
            continue
        for key, value, default in _leaves(getattr(cfg, s.name), f"{s.name}."):
            if _differs(value, default):
                out.append(f"{key}: not used by stage {spec.name} (the {s.name}: section belongs to stage "
                           f"{s.name}; did you mean train.stage: {s.name}?)")
    return out


def stage_problems(cfg) -> list[str]:
    name = cfg.train.stage
    if name not in STAGES:
        return [f"train.stage: unknown stage '{name}' (stages: {', '.join(STAGES)})"]
    spec = STAGES[name]
    problems = []
    if cfg.model.task not in spec.tasks:
        problems.append(f"model.task: stage {name} trains {' or '.join(spec.tasks)} models (got {cfg.model.task})"
                        + ("; the rm stage adds its scalar head itself" if name == "rm" else ""))
    fmt = cfg.data.format
    if fmt != "auto":
        try:
            get_format(fmt, spec.data)
        except DataError:
            try:
                other = get_format(fmt)
                problems.append(f"data.format: '{fmt}' is a {other.family} format; stage {name} reads "
                                f"{spec.data} data")
            except DataError as e:
                problems.append(f"data.format: {e}")
    problems += unused_keys(cfg)
    if spec.options is not None:
        problems += getattr(cfg, name).check(cfg)
    return problems


# --------------------------------------------------------------------------------------------
# Loading, overrides and error messages
# --------------------------------------------------------------------------------------------

def _known_keys(model: type[BaseModel], prefix: str = "") -> list[str]:
    keys = []
    for name, f in model.model_fields.items():
        path = f"{prefix}{name}"
        keys.append(path)
        ann = f.annotation
        if isinstance(ann, type) and issubclass(ann, BaseModel):
            keys.extend(_known_keys(ann, path + "."))
    return keys


# names users bring from HF TrainingArguments / peft / other toolkits -> ours
_ALIASES = {
    "learning_rate": "lr", "num_train_epochs": "epochs", "num_epochs": "epochs",
    "per_device_train_batch_size": "batch_size", "gradient_accumulation_steps": "grad_accum",
    "lr_scheduler_type": "lr_scheduler", "lora_r": "r", "rank": "r", "lora_alpha": "alpha",
    "lora_dropout": "dropout", "model_name_or_path": "name_or_path", "cutoff_len": "max_length",
    "max_seq_length": "max_length", "output": "output_dir",
}


def _suggest(path: str) -> str:
    known = _known_keys(Config)
    parent = path.rsplit(".", 1)[0] if "." in path else ""
    leaf0 = path.rsplit(".", 1)[-1]
    alias = difflib.get_close_matches(leaf0, list(_ALIASES), n=1, cutoff=0.8)
    if alias:
        target = _ALIASES[alias[0]]
        owners = [k for k in known if k.rsplit(".", 1)[-1] == target]
        same = [k for k in owners if k.startswith(parent + ".")] if parent else []
        if same or owners:
            return (same or owners)[0]
    siblings = [k for k in known if (k.rsplit(".", 1)[0] if "." in k else "") == parent]
    close = difflib.get_close_matches(leaf0, [s.rsplit(".", 1)[-1] for s in siblings], n=1, cutoff=0.5)
    if close:
        return f"{parent + '.' if parent else ''}{close[0]}"
    close = difflib.get_close_matches(path, known, n=1, cutoff=0.6)
    return close[0] if close else ""


def _format_validation_error(err: ValidationError, source: str) -> str:
    lines = [f"invalid configuration in {source}:"]
    for e in err.errors():
        path = ".".join(str(p) for p in e["loc"])
        if e["type"] == "extra_forbidden":
            hint = _suggest(path)
            lines.append(f"  {path}: unknown key" + (f" (did you mean '{hint}'?)" if hint else ""))
        elif e["type"] == "stage_rules":
            lines += [f"  {m}" for m in e["msg"].splitlines()]
        else:
            lines.append(f"  {path}: {e['msg']} (got {e.get('input')!r})")
    return "\n".join(lines)


def parse_override(item: str) -> tuple[list[str], Any]:
    """`train.max_steps=20` -> (['train', 'max_steps'], 20). Values are parsed as YAML scalars."""
    if "=" not in item:
        raise ConfigError(f"--set expects dotted.key=value, got {item!r}")
    key, raw = item.split("=", 1)
    key = key.strip()
    if not key:
        raise ConfigError(f"--set expects dotted.key=value, got {item!r}")
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError:
        value = raw
    return key.split("."), value


def apply_overrides(data: dict, overrides: list[str]) -> dict:
    for item in overrides:
        parts, value = parse_override(item)
        node = data
        for p in parts[:-1]:
            if not isinstance(node.get(p, {}), dict):
                raise ConfigError(f"--set {item}: '{p}' is not a section")
            node = node.setdefault(p, {})
        node[parts[-1]] = value
    return data


def validate_config(data: dict, source: str = "defaults"):
    """A raw mapping -> Config, or ConfigError with every problem named."""
    try:
        cfg = Config.model_validate(data)
    except ValidationError as e:
        raise ConfigError(_format_validation_error(e, source)) from None
    if isinstance(data, dict) and "align" in data:
        stage_name = cfg.train.stage
        cfg._notes.append(f"{source}: the old align: section is read as {stage_name}: (align.format -> data.format, "
                          "align.eval_pairs -> data.max_eval_samples); write it that way to silence this note")
    return cfg


def _config_text(p: Path) -> str:
    """The file as text: UTF-8 (a BOM allowed) or UTF-16 with a BOM; anything else is a ConfigError naming the
    file and the byte (found by fuzzing: a GBK or binary file was a UnicodeDecodeError traceback)."""
    raw = p.read_bytes()
    enc = "utf-16" if raw.startswith((b"\xff\xfe", b"\xfe\xff")) else "utf-8-sig"
    try:
        return raw.decode(enc)
    except UnicodeDecodeError as e:
        line = raw[: e.start].count(b"\n") + 1
        raise ConfigError(f"{p}:{line}: not {enc.replace('-sig', '')} text (byte {e.start}: "
                          f"{raw[e.start:e.start + 1]!r}); save the config as UTF-8") from None


class _StrictLoader(yaml.SafeLoader):
    """SafeLoader that refuses a key given twice in one mapping (PyYAML keeps the last one silently, so
    `lr: 1e-4` further down a file used to override the one a user was editing). `<<:` merges may still be
    overridden by an explicit key, as YAML intends."""

    def construct_mapping(self, node, deep=False):
        if isinstance(node, yaml.MappingNode):
            seen: dict = {}
            for key_node, _ in node.value:
                if key_node.tag == "tag:yaml.org,2002:merge" or not isinstance(key_node, yaml.ScalarNode):
                    continue
                k = (key_node.tag, key_node.value)
                if k in seen:
                    raise yaml.constructor.ConstructorError(
                        "while constructing a mapping", node.start_mark,
                        f"found duplicate key '{key_node.value}' (first on line {seen[k] + 1})", key_node.start_mark)
                seen[k] = key_node.start_mark.line
        return super().construct_mapping(node, deep=deep)


def load_config(path: str | Path | None = None, overrides: list[str] | None = None):
    """Read a YAML file (or start from defaults), apply `--set` overrides, validate."""
    data: dict = {}
    source = "defaults"
    if path is not None:
        p = Path(path)
        source = str(p)
        if not p.exists():
            raise ConfigError(f"config file not found: {p}")
        text = _config_text(p)
        try:
            loaded = yaml.load(text, Loader=_StrictLoader)
        except yaml.YAMLError as e:
            raise ConfigError(f"{p}: not valid YAML: {e}") from None
        except RecursionError:  # found by fuzzing: thousands of nested brackets
            raise ConfigError(f"{p}: not valid YAML: nested too deeply") from None
        except ValueError as e:  # found by fuzzing: an integer over Python's 4300-digit limit
            raise ConfigError(f"{p}: not valid YAML: {str(e).split(';')[0]}") from None
        if loaded is None:
            loaded = {}
        if not isinstance(loaded, dict):
            raise ConfigError(f"{p}: the top level must be a mapping of sections (model, data, train, ...)")
        data = loaded
    if overrides:
        data = apply_overrides(data, overrides)
        source += " (with --set overrides)"
    return validate_config(data, source)


__all__ = ["Config", "ConfigError", "FAMILIES", "load_config", "validate_config", "unused_keys", "stage_problems"]
