import subprocess
import sys

import pytest

from seektune.config import ConfigError, load_config


def test_yaml_and_overrides(tmp_path):
    p = tmp_path / "c.yaml"
    p.write_text("model: {name_or_path: tiny-qwen2}\ntrain: {max_steps: 5, lr: 0.001}\n")
    cfg = load_config(p, ["train.max_steps=20", "data.packing=false", "adapter.target_modules=[q_proj, v_proj]"])
    assert cfg.train.max_steps == 20 and cfg.train.lr == 0.001
    assert cfg.data.packing is False
    assert cfg.adapter.target_modules == ["q_proj", "v_proj"]
    # the saved YAML maps back onto the same config
    again = tmp_path / "again.yaml"
    again.write_text(cfg.to_yaml())
    assert load_config(again) == cfg


def test_saved_yaml_holds_only_the_chosen_stage_section(tmp_path):
    import yaml

    cfg = load_config(None, ["model.name_or_path=tiny-qwen2", "train.stage=grpo", "grpo.num_generations=4"])
    saved = yaml.safe_load(cfg.to_yaml())
    assert saved["grpo"]["num_generations"] == 4
    assert not {"dpo", "kto", "orpo", "simpo", "ppo"} & set(saved)
    again = tmp_path / "again.yaml"
    again.write_text(cfg.to_yaml())
    assert load_config(again) == cfg


@pytest.mark.parametrize("key,hint", [("train.lerning_rate", "train.lr"), ("model.tsk", "model.task"),
                                      ("data.max_lenght", "data.max_length")])
def test_misspelt_key_names_key_and_suggests(tmp_path, key, hint):
    with pytest.raises(ConfigError) as e:
        load_config(None, [f"{key}=1"])
    assert key in str(e.value) and hint in str(e.value)


def test_bad_value_names_key():
    with pytest.raises(ConfigError) as e:
        load_config(None, ["train.batch_size=0"])
    assert "train.batch_size" in str(e.value)


def test_cli_misspelt_key_exits_nonzero(tmp_path):
    p = tmp_path / "c.yaml"
    p.write_text("model: {name_or_path: tiny-qwen2}\ntrain: {max_stepz: 3}\n")
    r = subprocess.run([sys.executable, "-m", "seektune", "train", str(p)], capture_output=True, text=True)
    assert r.returncode != 0
    assert "train.max_stepz" in r.stderr and "train.max_steps" in r.stderr


def test_cli_help_lists_pipeline_commands():
    r = subprocess.run([sys.executable, "-m", "seektune", "--help"], capture_output=True, text=True)
    assert r.returncode == 0
    for cmd in ("data", "train", "eval", "export", "serve", "demo"):
        assert cmd in r.stdout
