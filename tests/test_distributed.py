import json
import subprocess
import sys

import pytest

from seektune.config import ConfigError, load_config
from seektune.engine.distributed import deepspeed_config
from seektune.engine.launch import torchrun_command


def _losses(run):
    recs = [json.loads(l) for l in (run / "metrics.jsonl").read_text().splitlines()]
    return [r for r in recs if "loss" in r]


def test_two_process_gloo_ddp_matches_one_process_same_global_batch(tmp_path, alpaca_file):
    base = (f"model: {{name_or_path: tiny-qwen2}}\nadapter: {{method: lora, r: 4, alpha: 8, dropout: 0.0}}\n"
            f"data: {{train: {alpaca_file}, max_length: 64, packing: false, eval_ratio: 0, cache: false}}\n"
            "train: {max_steps: 4, lr: 0.01, logging_steps: 1, seed: 5, output_dir: OUT, batch_size: BS}\n")
    one, two = tmp_path / "one.yaml", tmp_path / "two.yaml"
    one.write_text(base.replace("OUT", str(tmp_path / "one")).replace("BS", "4"))
    two.write_text(base.replace("OUT", str(tmp_path / "two")).replace("BS", "2"))
    cmd = [sys.executable, "-m", "seektune", "train"]
    r1 = subprocess.run(cmd + [str(one), "--no-progress"], capture_output=True, text=True, timeout=600)
    assert r1.returncode == 0, r1.stderr[-2000:]
    r2 = subprocess.run(cmd + [str(two), "--nproc", "2"], capture_output=True, text=True, timeout=900)
    assert r2.returncode == 0, r2.stderr[-3000:]
    assert "global batch = 2 x 1 x 2 = 4" in r2.stderr
    a, b = _losses(tmp_path / "one"), _losses(tmp_path / "two")
    assert [r["step"] for r in b] == [1, 2, 3, 4], "rank 0 alone writes metrics.jsonl, once per step"
    for x, y in zip(a, b):
        assert abs(x["loss"] - y["loss"]) <= 1e-4 * abs(x["loss"]), (x["step"], x["loss"], y["loss"])
    s = json.loads((tmp_path / "two" / "summary.json").read_text())
    assert s["world_size"] == 2
    assert (tmp_path / "two" / "final" / "adapter_model.safetensors").exists()


def test_gpu_engines_fail_fast_on_cpu(tmp_path, alpaca_file):
    import torch

    if torch.cuda.is_available():
        pytest.skip("GPU present")
    from conftest import tiny_config, train

    for engine in ("fsdp", "deepspeed"):
        cfg = tiny_config(tmp_path, alpaca_file, train__distributed=engine)
        with pytest.raises(ConfigError, match="needs GPUs"):
            train(cfg)


def test_deepspeed_config_generation():
    cfg = load_config(None, ["train.distributed=deepspeed", "train.deepspeed.stage=3",
                             "train.deepspeed.offload_params=true"])
    ds = deepspeed_config(cfg.train)
    z = ds["zero_optimization"]
    assert z["stage"] == 3 and z["offload_param"]["device"] == "cpu"
    assert z["stage3_gather_16bit_weights_on_model_save"] is True
    assert ds["train_micro_batch_size_per_gpu"] == "auto"


def test_torchrun_command_multinode_needs_master():
    cmd = torchrun_command("c.yaml", ["train.lr=1"], 4, nnodes=2, node_rank=1, master_addr="10.0.0.1")
    assert "--nnodes=2" in cmd and "--node_rank=1" in cmd and "--master_addr=10.0.0.1" in cmd
    assert cmd[-3:] == ["c.yaml", "--no-progress", "--set"][:0] + cmd[-3:]
    with pytest.raises(ConfigError, match="master-addr"):
        torchrun_command("c.yaml", [], 2, nnodes=2)
