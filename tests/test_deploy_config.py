"""`deploy:` settings: the run's config.yaml or --config give defaults, CLI flags win, bad keys are named."""

from __future__ import annotations

import pytest

from seektune.config import ConfigError
from seektune.export.deploy_cli import deploy_settings


def test_run_config_then_flags(tmp_path):
    run = tmp_path / "run"
    (run / "final").mkdir(parents=True)
    (run / "config.yaml").write_text("deploy:\n  max_batch: 4\n  quantize: int8\n  prune_heads: 0.5\n")
    d = deploy_settings(str(run), None, max_batch=None, port=9001)
    assert (d.max_batch, d.quantize, d.prune_heads, d.port) == (4, "int8", 0.5, 9001)
    assert deploy_settings(str(run / "final"), None).max_batch == 4  # final/ finds its run's config
    assert deploy_settings("tiny-qwen2", None).max_batch == 16       # presets: defaults


def test_explicit_config_and_errors(tmp_path):
    cfg = tmp_path / "c.yaml"
    cfg.write_text("deploy:\n  batch_window_ms: 3\n")
    assert deploy_settings("tiny-qwen2", cfg).batch_window_ms == 3
    cfg.write_text("deploy:\n  max_bach: 3\n")
    with pytest.raises(ConfigError, match="did you mean 'deploy.max_batch'"):
        deploy_settings("tiny-qwen2", cfg)
    with pytest.raises(ConfigError, match="prune_heads"):
        deploy_settings("tiny-qwen2", None, prune_heads=1.5)
