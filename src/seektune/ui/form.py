"""The Train form, generated from the typed config schema, and its way back to a validated YAML.

Every key of every section becomes one field with its description and default (config/sections.py and
the stage options in config/options/, listed by the registry in config/stages.py), so a new key or stage
appears in the form without editing the UI. The form's values go through the same `validate_config` as
`seektune train` (unknown keys, types, the stage rules), and the YAML shown is `Config.to_yaml()` of the
result: exactly the file the run is started with.
"""

from __future__ import annotations

import types
import typing
from dataclasses import dataclass
from typing import Any, Literal, get_args, get_origin

import yaml
from pydantic import BaseModel

from ..config import ConfigError, validate_config
from ..config.load import SHARED
from ..config.stages import STAGES
from ..models.presets import PRESETS
from .workspace import Workspace, WorkspaceError

SOURCE = "the Train form"
# keys holding a path the run reads or writes: each must stay inside the workspace
PATH_KEYS = ("model.name_or_path", "model.tokenizer", "data.train", "data.eval", "train.output_dir",
             "train.replay.file", "train.ewc.data", "train.ewc.fisher_file", "train.deepspeed.config_file",
             "eval.general_eval", "tune.test_data", "ppo.reward_model")
# read only when eval.benchmarks names that benchmark without a file of its own
BENCH_PATH_KEYS = (("eval.cmmlu_dir", "cmmlu"), ("eval.cmmlu_dir", "cmmlu:"), ("eval.gsm8k_file", "gsm8k"))
OPEN_SECTIONS = ("model", "adapter", "data", "train")  # shown unfolded; the rest start folded


class FormError(ValueError):
    """A field whose text cannot be read as a value (the message starts with its key)."""


def jsonable(v: Any) -> Any:
    """A default as YAML/JSON can hold it (tuples -> lists, sections -> mappings)."""
    if isinstance(v, BaseModel):
        return v.model_dump(mode="json", by_alias=True)
    if isinstance(v, (list, tuple)):
        return [jsonable(x) for x in v]
    if isinstance(v, dict):
        return {k: jsonable(x) for k, x in v.items()}
    return v


def yaml_text(v: Any) -> str:
    """One-line YAML of a value; None is the empty box."""
    if v is None:
        return ""
    text = yaml.safe_dump(jsonable(v), default_flow_style=True, allow_unicode=True, width=10 ** 6).strip()
    return text[:-3].strip() if text.endswith("...") else text


def _members(ann) -> list:
    origin = get_origin(ann)
    if origin in (typing.Union, types.UnionType):
        return [m for a in get_args(ann) for m in _members(a)]
    return [ann]


def _choices(ann) -> list | None:
    """The values of a Literal / bool / None union, or None when the type takes other values too."""
    values: list = []
    for m in _members(ann):
        if get_origin(m) is Literal:
            values += list(get_args(m))
        elif m is bool:
            values += [True, False]
        elif m is type(None):
            values.append(None)
        else:
            return None
    return values


@dataclass(frozen=True)
class FieldSpec:
    key: str
    section: str
    widget: Literal["bool", "choice", "text"]
    default: Any
    description: str
    choices: tuple = ()
    raw_text: bool = False  # a str key: the box holds the value itself, not YAML

    @property
    def elem_id(self) -> str:
        return "cfg-" + self.key.replace(".", "-")

    @property
    def info(self) -> str:
        shown = yaml_text(self.default) if self.widget != "bool" else str(self.default).lower()
        return f"{self.description} (default: {shown or 'none'})".strip()

    def widget_value(self, value: Any) -> Any:
        if self.widget == "bool":
            return bool(value)
        if self.widget == "choice":
            return "null" if value is None else yaml_text(value)
        return value if self.raw_text and isinstance(value, str) else yaml_text(value)

    def parse(self, shown: Any) -> Any:
        """The widget's value as a config value."""
        if self.widget == "bool":
            return bool(shown)
        if self.widget == "choice":
            for c in self.choices:
                if self.widget_value(c) == shown:
                    return c
            raise FormError(f"{self.key}: '{shown}' is not one of {', '.join(map(self.widget_value, self.choices))}")
        text = "" if shown is None else str(shown)
        if not text.strip():
            return None if self.default is None or not self.raw_text else ""
        if self.raw_text:
            return text.strip()
        try:
            return yaml.safe_load(text)
        except yaml.YAMLError as e:
            raise FormError(f"{self.key}: not valid YAML ({str(e).splitlines()[0]})") from None


def _spec(key: str, section: str, f) -> FieldSpec:
    default = f.get_default(call_default_factory=True)
    desc = f.description or ""
    if key == "train.stage":
        return FieldSpec(key, section, "choice", default, desc, tuple(STAGES))
    choices = _choices(f.annotation)
    if choices == [True, False]:
        return FieldSpec(key, section, "bool", default, desc)
    if choices:
        return FieldSpec(key, section, "choice", default, desc, tuple(choices))
    members = [m for m in _members(f.annotation) if m is not type(None)]
    return FieldSpec(key, section, "text", default, desc, raw_text=members == [str])


def _section_specs(cls: type[BaseModel], prefix: str, section: str) -> list[FieldSpec]:
    out = []
    for name, f in cls.model_fields.items():
        ann = f.annotation
        key = f"{prefix}{f.alias or name}"
        if isinstance(ann, type) and issubclass(ann, BaseModel):  # an always-present sub-section: its keys
            out += _section_specs(ann, key + ".", section)
        else:
            out.append(_spec(key, section, f))
    return out


def sections() -> dict[str, list[FieldSpec]]:
    """Section name -> its fields, shared sections first, then one per stage that has options."""
    out = {name: _section_specs(cls, f"{name}.", name) for name, cls in SHARED.items()}
    for s in STAGES.values():
        if s.options is not None:
            out[s.name] = _section_specs(s.options, f"{s.name}.", s.name)
    return out


def all_specs() -> list[FieldSpec]:
    return [spec for specs in sections().values() for spec in specs]


def _set(data: dict, key: str, value: Any) -> None:
    *parents, leaf = key.split(".")
    node = data
    for p in parents:
        node = node.setdefault(p, {})
    node[leaf] = value


def form_data(specs: list[FieldSpec], shown: list, problems: list[str] | None = None) -> dict:
    """The mapping the form stands for: only keys set away from their default, and only the chosen stage's
    own section (the others are hidden). Fields that cannot be read go to `problems` (or raise)."""
    values: dict[str, Any] = {}
    for spec, v in zip(specs, shown):
        try:
            values[spec.key] = spec.parse(v)
        except FormError as e:
            if problems is None:
                raise
            problems.append(str(e))
    stage = values.get("train.stage", "sft")
    stage_sections = {s.name for s in STAGES.values() if s.options is not None}
    data: dict = {}
    for spec in specs:
        if spec.key not in values or (spec.section in stage_sections and spec.section != stage):
            continue
        if values[spec.key] != jsonable(spec.default):
            _set(data, spec.key, values[spec.key])
    return data


def shown_values(specs: list[FieldSpec], cfg=None) -> list:
    """Widget values for a config (defaults when None): the form filled from a YAML or a past run."""
    if cfg is None:
        return [s.widget_value(s.default) for s in specs]
    dumped = cfg.model_dump(mode="json", by_alias=True)
    out = []
    for s in specs:
        node = dumped
        for part in s.key.split("."):
            node = node.get(part) if isinstance(node, dict) else None
        out.append(s.widget_value(node))
    return out


def _path_problems(cfg, ws: Workspace) -> list[str]:
    kinds = {s.partition(":")[0].strip().lower() + (":" if s.partition(":")[2] else "") for s in cfg.eval.benchmarks}
    keys = list(PATH_KEYS) + [k for k, kind in BENCH_PATH_KEYS if kind in kinds]
    problems = []
    if not cfg.data.train:
        problems.append("data.train: required (a data file in the workspace)")
    for key in keys:
        node = cfg
        for part in key.split("."):
            node = getattr(node, part, None) if node is not None else None
        if not node or (key in ("model.name_or_path", "model.tokenizer") and node in PRESETS):
            continue
        try:
            p = ws.path(node, key)
        except WorkspaceError as e:
            problems.append(str(e))
            continue
        if key == "train.output_dir" and p == ws.root:
            problems.append("train.output_dir: must be a folder inside the workspace, not the workspace itself")
    for key, value in _named_files(cfg):
        try:
            ws.path(value, key)
        except WorkspaceError as e:
            problems.append(str(e))
    return problems


def _looks_like_path(v) -> bool:
    return isinstance(v, str) and ("/" in v or "\\" in v or v.endswith((".jsonl", ".json", ".csv", ".tsv", ".txt", ".gz")))


def _named_files(cfg):
    """(key, path) of files named inside list values: benchmark specs (gsm8k:FILE, mcq:FILE:dev=FILE) and
    data.pipeline step options (a terms file, mix's general data, ...)."""
    for i, spec in enumerate(cfg.eval.benchmarks):
        kind, _, rest = spec.partition(":")
        if kind.strip().lower() in ("gsm8k", "mcq") and rest:
            for part in rest.split(":"):
                value = part.split("=", 1)[1] if part.startswith("dev=") else part
                if _looks_like_path(value) or part == rest.split(":")[0]:
                    yield f"eval.benchmarks[{i}]", value
    for i, step in enumerate(cfg.data.pipeline):
        for opt, value in (step.model_extra or {}).items():
            if _looks_like_path(value) and value not in PRESETS:
                yield f"data.pipeline[{i}].{opt}", value


@dataclass
class FormResult:
    cfg: Any             # the validated Config, None when there are problems
    yaml: str            # what gets run ('' when invalid)
    problems: list[str]  # each starts with the key it is about

    @property
    def ok(self) -> bool:
        return self.cfg is not None and not self.problems


def check_form(specs: list[FieldSpec], shown: list, ws: Workspace) -> FormResult:
    """Form values -> the validated Config and its YAML, or every problem with its key."""
    problems: list[str] = []
    data = form_data(specs, shown, problems)
    if problems:
        return FormResult(None, "", problems)
    try:
        cfg = validate_config(data, SOURCE)
    except ConfigError as e:
        lines = str(e).splitlines()
        return FormResult(None, "", [ln.strip() for ln in lines[1:]] or lines)
    problems = _path_problems(cfg, ws)
    return FormResult(None if problems else cfg, "" if problems else cfg.to_yaml(), problems)


def problems_by_key(specs: list[FieldSpec], problems: list[str]) -> dict[str, list[str]]:
    """Each problem under the form key it names (the longest key that prefixes it), for inline display."""
    keys = sorted((s.key for s in specs), key=len, reverse=True)
    out: dict[str, list[str]] = {}
    for p in problems:
        named = p.split(":", 1)[0].strip()
        for k in keys:
            if named == k or named.startswith((k + ".", k + "[")):
                out.setdefault(k, []).append(p)
                break
    return out


__all__ = ["FieldSpec", "FormError", "FormResult", "all_specs", "check_form", "form_data", "sections",
           "shown_values", "problems_by_key", "yaml_text"]
