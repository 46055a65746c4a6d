"""Host-memory levers of issue 11: auto activation checkpointing and returning freed memory."""

import json
import sys

import pytest
import torch

from seektune.config import AdapterConfig, ModelConfig
from seektune.models.adapters import apply_adapter
from seektune.models.loader import load_model
from seektune.engine.memory import plan_checkpointing, return_freed_memory, saved_bytes_per_token

from conftest import tiny_config, train


@pytest.fixture(scope="module")
def lora_model():
    model, _, _ = load_model(ModelConfig(name_or_path="tiny-qwen2"))
    model, _ = apply_adapter(model, AdapterConfig(method="lora", r=4, alpha=8, dropout=0.0), "causal_lm")
    model.config.use_cache = False
    return model


def test_saved_bytes_scale_with_width_and_leave_rng_alone(lora_model):
    torch.manual_seed(3)
    expected = torch.rand(1)
    torch.manual_seed(3)
    per_token = saved_bytes_per_token(lora_model)
    assert torch.equal(torch.rand(1), expected)  # the probe forked the random stream
    h = lora_model.config.hidden_size
    layers = lora_model.config.num_hidden_layers
    # at least the residual stream of every layer in fp32, and far below a logits row
    assert 4 * h * layers < per_token < 4 * lora_model.config.vocab_size


def test_plan_follows_the_budget(lora_model):
    assert plan_checkpointing(False, lora_model, 4096, None) == (None, None)
    assert plan_checkpointing(True, lora_model, 4096, None)[0] == 1
    per_token = saved_bytes_per_token(lora_model)
    need_gb = per_token * 4096 / 2**30
    assert plan_checkpointing("auto", lora_model, 4096, need_gb * 2)[0] is None
    assert plan_checkpointing("auto", lora_model, 4096, need_gb / 1000)[0] == 1  # far over: every layer
    every, line = plan_checkpointing("auto", lora_model, 4096, need_gb * 0.7)  # 30% over: some layers
    assert every is not None and every >= 2 and "every" in line


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc only")
def test_return_freed_memory_on_glibc():
    assert return_freed_memory() is True


def test_checkpointed_training_gives_the_same_losses(tmp_path, alpaca_file):
    """Recomputation must not change the numbers: auto with a tiny budget vs checkpointing off."""
    losses = []
    for name, gc in [("off", False), ("auto", "auto")]:
        cfg = tiny_config(tmp_path / name, alpaca_file, train__gradient_checkpointing=gc,
                          train__activation_budget_gb=1e-6, train__max_steps=3)
        trainer = train(cfg).trainer
        layers = trainer.model.get_base_model().model.layers
        flags = [bool(getattr(layer, "gradient_checkpointing", False)) for layer in layers]
        assert all(flags) if gc == "auto" else not any(flags)
        recs = [json.loads(x) for x in (tmp_path / name / "run" / "metrics.jsonl").read_text().splitlines()]
        losses.append([r["loss"] for r in recs if "loss" in r])
    assert len(losses[0]) == 3 and losses[0] == pytest.approx(losses[1], abs=1e-5)
