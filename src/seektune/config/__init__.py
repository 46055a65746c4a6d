"""seektune.config: the typed run configuration (shared sections, stage options, the stage registry)."""

from .load import Config, apply_overrides, load_config, parse_override, stage_problems, unused_keys, validate_config
from .sections import (AdapterConfig, AdversarialConfig, ConfigError, DataConfig, DataPipelineStep, DeepSpeedConfig,
                       DeployConfig, DropoutConfig, EarlyStoppingConfig, EvalConfig, EWCConfig, FSDPConfig,
                       LayerwiseLR, ModelConfig, MonitorConfig, ReplayConfig, Section, TrainConfig, TuneConfig)
from .stages import STAGES, Stage

__all__ = ["Config", "ConfigError", "load_config", "validate_config", "apply_overrides", "parse_override",
           "stage_problems", "unused_keys", "STAGES", "Stage", "AdapterConfig", "AdversarialConfig", "DataConfig",
           "DataPipelineStep", "DeepSpeedConfig", "DeployConfig", "DropoutConfig", "EarlyStoppingConfig",
           "EvalConfig", "EWCConfig", "FSDPConfig", "LayerwiseLR", "ModelConfig", "MonitorConfig", "ReplayConfig",
           "Section", "TrainConfig", "TuneConfig"]
