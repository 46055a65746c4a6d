"""Every example YAML validates against the config (misspelt keys in examples are bugs too)."""

from pathlib import Path

import pytest

from seektune.config import load_config

EXAMPLES = sorted((Path(__file__).resolve().parents[1] / "examples").glob("*.yaml"))


@pytest.mark.parametrize("path", EXAMPLES, ids=[p.name for p in EXAMPLES])
def test_example_config_is_valid(path):
    load_config(path)
