import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from transformers import TrainerCallback

from conftest import kill_when_exists, tiny_config, train
from seektune.config import LayerwiseLR
from seektune.stages import sft as sft_mod
from seektune.engine.optim import build_param_groups, lr_factor
from seektune.engine.checkpoint import COMPLETE as CHECKPOINT_COMPLETE, latest_checkpoint


def _losses(run_dir):
    return {r["step"]: r["loss"] for r in map(json.loads, (Path(run_dir) / "metrics.jsonl").read_text().splitlines())
            if "loss" in r}


def test_param_groups_get_layerwise_rates_and_no_decay_on_norms():
    from seektune.config import ModelConfig
    from seektune.models.loader import load_model

    model, _, _ = load_model(ModelConfig(name_or_path="tiny-qwen2"))
    lw = LayerwiseLR(embeddings=1e-5, body=4e-5, head=1e-4, depth_decay=0.5)
    groups = {g["name"]: g for g in build_param_groups(model, 3e-5, 0.01, lw)}
    assert groups["embeddings"]["lr"] == 1e-5  # tied lm_head shares the embedding matrix
    assert groups["layer.1"]["lr"] == pytest.approx(4e-5) and groups["layer.0"]["lr"] == pytest.approx(2e-5)
    nd = groups["layer.0.no_decay"]
    assert nd["weight_decay"] == 0.0 and groups["layer.0"]["weight_decay"] == 0.01
    assert all(p.ndim == 1 for p in nd["params"])  # norms and biases
    ids = [id(p) for g in groups.values() for p in g["params"]]
    assert len(ids) == len(set(ids)) == len([p for p in model.parameters() if p.requires_grad])


def test_schedule_matches_formula():
    total, warm, floor = 100, 10, 1e-6 / 3e-5
    assert lr_factor(0, total, warm, "cosine", floor) == pytest.approx(0.1)
    assert lr_factor(9, total, warm, "cosine", floor) == pytest.approx(1.0)
    mid = 10 + 45
    assert lr_factor(mid, total, warm, "cosine", floor) == pytest.approx(floor + (1 - floor) * 0.5)
    assert lr_factor(100, total, warm, "cosine", floor) == pytest.approx(floor)
    assert lr_factor(55, total, warm, "linear", 0.0) == pytest.approx(0.5)
    assert lr_factor(70, total, warm, "constant", floor) == 1.0


def test_trainer_logs_scheduled_rates(tmp_path, alpaca_file):
    cfg = tiny_config(tmp_path, alpaca_file, train__max_steps=6, train__lr=3e-5, train__min_lr=1e-6,
                      train__warmup_steps=2, train__layerwise_lr=LayerwiseLR(head=1e-4))
    train(cfg)
    recs = {r["step"]: r for r in map(json.loads, (tmp_path / "run" / "metrics.jsonl").read_text().splitlines())
            if "loss" in r}
    floor = 1e-6 / 3e-5
    for step in (1, 2, 4, 6):  # the rate logged at step s was used for optimizer step s-1
        f = lr_factor(step - 1, 6, 2, "cosine", floor)
        assert recs[step]["lr/adapters"] == pytest.approx(1e-4 * f, rel=1e-6)


def test_early_stopping_stops_and_restores_best(tmp_path, alpaca_file):
    """mode=max on eval_loss turns every improvement into a regression: stop after `patience`, keep step 1."""
    from seektune.config import EarlyStoppingConfig

    cfg = tiny_config(tmp_path, alpaca_file, train__max_steps=20, train__eval_steps=1, train__lr=3e-3,
                      train__early_stopping=EarlyStoppingConfig(metric="eval_loss", mode="max", patience=2))
    s = train(cfg).summary
    assert s["steps"] == 3 and s["details"]["stopped_early"]
    best = Path(s["details"]["best_metric"]["checkpoint"])
    assert best.name == "checkpoint-1"
    from safetensors.torch import load_file

    a = load_file(str(best / "adapter_model.safetensors"))
    b = load_file(str(tmp_path / "run" / "final" / "adapter_model.safetensors"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_nan_loss_is_skipped_counted_and_stops(tmp_path, alpaca_file, monkeypatch):
    snaps = {}

    class Snap(TrainerCallback):
        def on_step_end(self, args, state, control, model=None, **kw):
            snaps[state.global_step] = {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}

    orig = sft_mod.SFTTrainer.compute_loss

    def poisoned(self, model, inputs, *a, **kw):
        loss = orig(self, model, inputs, *a, **kw)
        if model.training and self.state.global_step >= 2:  # training steps 3, 4, 5, ...
            return loss * float("nan")
        return loss

    monkeypatch.setattr(sft_mod.SFTTrainer, "compute_loss", poisoned)
    cfg = tiny_config(tmp_path, alpaca_file, train__max_steps=10)
    cfg.monitor.max_nonfinite_in_a_row = 3
    s = train(cfg, callbacks=[Snap()]).summary
    assert s["details"]["nonfinite_skipped"] == 3 and s["steps"] == 5
    for step in (3, 4, 5):  # skipped steps leave every trainable weight as it was after step 2
        assert all(torch.equal(snaps[2][n], snaps[step][n]) for n in snaps[2])
    assert any("non-finite" in w for w in s["warnings"])


def test_truncated_checkpoint_is_skipped(tmp_path):
    good, bad = tmp_path / "checkpoint-4", tmp_path / "checkpoint-6"
    for d in (good, bad):
        d.mkdir()
        (d / "trainer_state.json").write_text("{}")
    (good / CHECKPOINT_COMPLETE).write_text("{}")
    warnings = []
    assert latest_checkpoint(tmp_path, warnings.append) == str(good)
    assert any("checkpoint-6" in w for w in warnings)


def _train_cmd(cfg_path, *extra):
    return [sys.executable, "-m", "seektune", "train", str(cfg_path), "--no-progress", *extra]


def test_sigkill_then_resume_matches_uninterrupted_run(tmp_path, alpaca_file):
    base = (f"model: {{name_or_path: tiny-qwen2}}\nadapter: {{method: lora, r: 4, alpha: 8, dropout: 0.1}}\n"
            f"data: {{train: {alpaca_file}, max_length: 64, packing: false, eval_ratio: 0}}\n"
            "train: {max_steps: 12, batch_size: 2, lr: 0.005, logging_steps: 1, save_steps: 3, seed: 3, "
            "output_dir: OUT}\n")
    full, killed = tmp_path / "full.yaml", tmp_path / "killed.yaml"
    full.write_text(base.replace("OUT", str(tmp_path / "full")))
    killed.write_text(base.replace("OUT", str(tmp_path / "killed")))
    subprocess.run(_train_cmd(full), check=True, capture_output=True, timeout=600)

    kill_when_exists(_train_cmd(killed), tmp_path / "killed" / "checkpoints" / "checkpoint-6" / CHECKPOINT_COMPLETE)
    assert "checkpoint-12" not in os.listdir(tmp_path / "killed" / "checkpoints")

    r = subprocess.run(_train_cmd(killed, "--resume"), capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-2000:]
    assert "resuming from" in r.stderr
    a, b = _losses(tmp_path / "full"), _losses(tmp_path / "killed")
    assert sorted(a) == sorted(b) == list(range(1, 13))
    for step in a:
        assert math.isclose(a[step], b[step], rel_tol=0, abs_tol=1e-5), (step, a[step], b[step])


def test_early_stopping_on_rouge_l(tmp_path, alpaca_file):
    """Generation metrics join periodic evals when early stopping follows one of them."""
    from seektune.config import EarlyStoppingConfig

    cfg = tiny_config(tmp_path, alpaca_file, train__max_steps=20, train__eval_steps=1,
                      train__early_stopping=EarlyStoppingConfig(metric="eval_rouge_l", mode="min", patience=2))
    cfg.eval.max_new_tokens = 8
    cfg.eval.before_after = False
    s = train(cfg).summary
    assert s["steps"] == 3 and s["details"]["stopped_early"]
    recs = [json.loads(l) for l in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert sum(1 for r in recs if "eval_rouge_l" in r and "eval_loss" in r) >= 3
