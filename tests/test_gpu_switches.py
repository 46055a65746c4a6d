"""GPU-only training switches (train.mixed_precision, train.liger_kernel): mapped onto the Trainer's
arguments on a CUDA machine, refused by name where the machine cannot honour them, never ignored."""

from __future__ import annotations

import pytest
import torch

from seektune.config import Config, ConfigError, validate_config
from seektune.engine.args import gpu_switch_problems
from seektune.stages import run_stage


def _cfg(tmp_path, **train):
    return Config.model_validate({"model": {"name_or_path": "tiny-qwen2"},
                                  "train": {"output_dir": str(tmp_path / "run"), "max_steps": 1, **train}})


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the CPU refusal")
@pytest.mark.parametrize("train, key", [({"mixed_precision": "bf16"}, "train.mixed_precision: bf16 autocasts"),
                                        ({"mixed_precision": "fp16"}, "train.mixed_precision: fp16 autocasts"),
                                        ({"liger_kernel": True}, "train.liger_kernel: Liger's kernels")])
def test_on_cpu_the_gpu_switches_stop_the_run_by_name_before_a_run_folder_exists(tmp_path, train, key):
    with pytest.raises(ConfigError, match=key):
        run_stage(_cfg(tmp_path, **train), progress=False)
    assert not (tmp_path / "run").exists()


def test_on_a_gpu_they_need_fp32_weights_bf16_hardware_and_the_liger_package(tmp_path, monkeypatch):
    import importlib.util

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: False)
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda n, *a: None if n == "liger_kernel" else real(n, *a))
    cfg = _cfg(tmp_path, mixed_precision="bf16", liger_kernel=True)
    got = " | ".join(gpu_switch_problems(cfg))
    assert "bf16 needs a GPU with bf16" in got and "liger-kernel is not installed" in got
    cfg.model.dtype = "bfloat16"
    assert "model.dtype is bfloat16" in " | ".join(gpu_switch_problems(cfg))
    assert gpu_switch_problems(_cfg(tmp_path, mixed_precision="fp16")) == []
    assert gpu_switch_problems(_cfg(tmp_path)) == []


def test_the_trainer_gets_the_switches_on_a_gpu(tmp_path, monkeypatch):
    from transformers import TrainingArguments

    from seektune.engine import args as args_mod

    seen = {}

    def fake(**kw):
        seen.update(kw)
        return kw

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(args_mod, "TrainingArguments", fake)
    args_mod.training_arguments(_cfg(tmp_path, mixed_precision="fp16", liger_kernel=True), tmp_path, False)
    assert seen["fp16"] is True and seen["bf16"] is False and seen["use_liger_kernel"] is True
    args_mod.training_arguments(_cfg(tmp_path, mixed_precision="bf16"), tmp_path, False)
    assert seen["bf16"] is True and seen["fp16"] is False and seen["use_liger_kernel"] is False
    assert {"use_liger_kernel", "fp16", "bf16"} <= set(TrainingArguments.__dataclass_fields__)


def test_a_stage_with_its_own_loop_refuses_them_as_unused_keys():
    with pytest.raises(ConfigError, match="train.mixed_precision: not used by stage ppo"):
        validate_config({"train": {"stage": "ppo", "mixed_precision": "bf16"}, "ppo": {"reward_model": "x"}})


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (bench/gpu_check.sh runs it on one)")
@pytest.mark.parametrize("train", [{"mixed_precision": "bf16"}, {"mixed_precision": "fp16"},
                                   {"mixed_precision": "bf16", "liger_kernel": True}])
def test_on_a_gpu_the_switches_train_as_fp32_does(tmp_path, train, alpaca_file):
    import importlib.util
    import json

    if train.get("liger_kernel") and importlib.util.find_spec("liger_kernel") is None:
        pytest.skip("liger-kernel is not installed")

    def losses(name, **over):
        cfg = Config.model_validate({"model": {"name_or_path": "tiny-qwen2"},
                                     "data": {"train": str(alpaca_file), "eval_ratio": 0.0},
                                     "train": {"output_dir": str(tmp_path / name), "max_steps": 4, "batch_size": 2,
                                               "lr": 1e-3, "logging_steps": 1, "seed": 0, **over},
                                     "eval": {"before_after": False, "report": False}})
        run_stage(cfg, progress=False)
        recs = [json.loads(x) for x in (tmp_path / name / "metrics.jsonl").read_text().splitlines()]
        return [r["loss"] for r in recs if "loss" in r]

    ref, got = losses("fp32"), losses("switched", **train)
    assert len(got) == len(ref) == 4 and all(x == x for x in got)
    assert max(abs(a - b) for a, b in zip(ref, got)) < 0.05 * max(abs(x) for x in ref)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (bench/gpu_check.sh runs it on one)")
@pytest.mark.parametrize("bits, layer_class", [("4bit", "Linear4bit"), ("8bit", "Linear8bitLt")])
def test_on_a_gpu_qlora_trains_on_a_quantised_base_and_its_adapter_reloads(tmp_path, alpaca_file, bits, layer_class):
    """adapter.quantize_base loads the frozen base through bitsandbytes; LoRA trains on it and final/ is a plain
    adapter that peft loads onto the same quantised base and reproduces the trained model's logits."""
    import json

    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from seektune.models.loader import _quantization_config, quantize_problem

    problem = quantize_problem(bits)
    if problem:
        pytest.skip(problem)

    cfg = Config.model_validate({"model": {"name_or_path": "tiny-qwen2"}, "adapter": {"quantize_base": bits},
                                 "data": {"train": str(alpaca_file), "eval_ratio": 0.0},
                                 "train": {"output_dir": str(tmp_path / "run"), "max_steps": 6, "batch_size": 2,
                                           "lr": 5e-3, "logging_steps": 1, "seed": 0},
                                 "eval": {"before_after": False, "report": False}})
    result = run_stage(cfg, progress=False)
    model = result.model.eval()
    q = model.base_model.model.model.layers[0].self_attn.q_proj
    assert type(q.base_layer).__name__ == layer_class
    assert {n.split(".lora_")[1].split(".")[0] for n, p in model.named_parameters() if p.requires_grad} == {"A", "B"}
    recs = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    losses = [r["loss"] for r in recs if "loss" in r]
    assert len(losses) == 6 and all(x == x for x in losses)

    final = tmp_path / "run" / "final"
    acfg = json.loads((final / "adapter_config.json").read_text())
    qc = _quantization_config(bits, torch.float32)  # what the run loaded its base with
    base = AutoModelForCausalLM.from_pretrained(acfg["base_model_name_or_path"], quantization_config=qc,
                                                device_map={"": 0}, dtype=torch.float32).eval()
    tok = AutoTokenizer.from_pretrained(str(final))
    x = tok(["hello doctor", "头痛三天怎么办"], return_tensors="pt", padding=True).to("cuda")
    with torch.no_grad():
        a = model(**x).logits
        b = PeftModel.from_pretrained(base, str(final)).eval()(**x).logits
    assert torch.allclose(a, b, atol=1e-3, rtol=0), (a - b).abs().max()
