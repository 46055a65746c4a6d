"""Host-memory levers of issue 11: auto activation checkpointing and returning freed memory."""

import json
import os
import sys

import pytest
import torch

from seektune.config import AdapterConfig, ModelConfig
from seektune.models.adapters import apply_adapter
from seektune.models.loader import load_model
from seektune.engine.memory import plan_checkpointing, return_freed_memory, saved_bytes_per_token

from conftest import tiny_config, train

LONG = os.environ.get("SEEKTUNE_LONG") == "1"


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


# -- the malloc of `seektune train` (engine/allocator.py, issue 22) ------------------------------------------
def test_allocator_choice_names_the_install_when_an_asked_one_is_missing(monkeypatch):
    from seektune.engine import allocator

    monkeypatch.setattr(allocator, "find", lambda name: None)
    assert allocator.choose("auto") == (None, "glibc") and allocator.choose("glibc") == (None, "glibc")
    with pytest.raises(ValueError, match="apt-get install libjemalloc2"):
        allocator.choose("jemalloc")
    with pytest.raises(ValueError, match="libtcmalloc-minimal4"):
        allocator.choose("tcmalloc")
    with pytest.raises(ValueError, match="train.allocator"):
        allocator.choose("mimalloc")
    monkeypatch.setattr(allocator, "find", lambda name: f"/opt/lib{name}.so" if name == "jemalloc" else None)
    assert allocator.choose("auto") == ("/opt/libjemalloc.so", "jemalloc")
    monkeypatch.setattr(allocator, "find", lambda name: f"/opt/lib{name}.so")
    assert allocator.choose("auto") == ("/opt/libtcmalloc.so", "tcmalloc")  # tcmalloc first (measured faster)


def test_preload_env_puts_the_library_first_and_sets_its_release_policy():
    from seektune.engine.allocator import MARKER, argv_for_exec, preload_env

    env = preload_env("/x/libjemalloc.so.2", "jemalloc", True, {"LD_PRELOAD": "/y/other.so"})
    assert env["LD_PRELOAD"] == "/x/libjemalloc.so.2:/y/other.so" and env[MARKER] == "jemalloc"
    assert "dirty_decay_ms:10000" in env["MALLOC_CONF"] and "background_thread:true" in env["MALLOC_CONF"]
    assert "dirty_decay_ms:-1" in preload_env("/x/j.so", "jemalloc", False, {})["MALLOC_CONF"]
    assert preload_env("/x/j.so", "jemalloc", False, {"MALLOC_CONF": "narenas:1"})["MALLOC_CONF"] == "narenas:1"
    assert preload_env("/x/t.so", "tcmalloc", False, {})["TCMALLOC_RELEASE_RATE"] == "0"
    from seektune.engine.allocator import returns_freed

    assert returns_freed("auto", "glibc") and not returns_freed("auto", "jemalloc") and returns_freed(True, "jemalloc")
    assert "TCMALLOC_RELEASE_RATE" not in preload_env("/x/t.so", "tcmalloc", True, {})
    assert argv_for_exec(["/v/lib/python3.11/site-packages/seektune/__main__.py", "train", "c.yaml"]) == \
        ["-m", "seektune", "train", "c.yaml"]
    assert argv_for_exec(["/v/bin/seektune", "train"]) == ["/v/bin/seektune", "train"]


def test_reexec_never_replaces_a_process_that_is_not_the_seektune_command(monkeypatch):
    """pytest, CliRunner, a notebook: exec would replace them (and pytest's captured stdout with them)."""
    from seektune.engine import allocator

    monkeypatch.setattr(allocator, "find", lambda name: "/opt/libtcmalloc.so")
    monkeypatch.delenv(allocator.MARKER, raising=False)
    monkeypatch.setattr(allocator.os, "execve", lambda *a: pytest.fail(f"exec {a[:2]}"))
    allocator.reexec_with("auto", argv=["/v/lib/python3.11/site-packages/pytest/__main__.py", "-q"])
    assert not allocator.is_seektune_cli(["/x/ipykernel_launcher.py"])
    assert allocator.is_seektune_cli(["/v/bin/seektune", "train"])


def _cli_losses(tmp_path, name, alpaca_file, allocator):
    import subprocess

    cfg = tmp_path / f"{name}.yaml"
    cfg.write_text(f"model: {{name_or_path: tiny-qwen2}}\nadapter: {{method: lora, r: 4, alpha: 8, dropout: 0.0}}\n"
                   f"data: {{train: {alpaca_file}, max_length: 64, eval_ratio: 0, cache: false}}\n"
                   f"train: {{max_steps: 3, batch_size: 2, lr: 0.005, logging_steps: 1, seed: 3, allocator: {allocator}, "
                   f"output_dir: {tmp_path / name}}}\n")
    r = subprocess.run([sys.executable, "-m", "seektune", "train", str(cfg), "--no-progress"], capture_output=True,
                       text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-2000:]
    recs = [json.loads(x) for x in (tmp_path / name / "metrics.jsonl").read_text().splitlines()]
    return [x["loss"] for x in recs if "loss" in x], r.stderr


@pytest.mark.slow
@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="LD_PRELOAD: Linux")
def test_train_cli_runs_on_tcmalloc_and_jemalloc_and_learns_exactly_what_glibc_does(tmp_path, alpaca_file):
    """Short form: glibc and auto (tcmalloc, else jemalloc). SEEKTUNE_LONG=1: jemalloc named as well."""
    from seektune.engine.allocator import find

    if find("jemalloc") is None and find("tcmalloc") is None:
        pytest.skip("neither tcmalloc nor jemalloc is installed (apt-get install libtcmalloc-minimal4 libjemalloc2; "
                    ".ci/run installs them)")
    on_glibc, log_g = _cli_losses(tmp_path, "glibc", alpaca_file, "glibc")
    assert "host memory: glibc, mmap threshold 4 MB" in log_g, log_g[-800:]
    assert len(on_glibc) == 3
    on_auto, log_a = _cli_losses(tmp_path, "auto", alpaca_file, "auto")
    picked = "tcmalloc" if find("tcmalloc") is not None else "jemalloc"  # auto takes tcmalloc first
    assert f"host memory: {picked}" in log_a and on_auto == on_glibc, log_a[-800:]  # speed and memory, never numbers
    if LONG and picked == "tcmalloc" and find("jemalloc") is not None:
        on_jemalloc, log_j = _cli_losses(tmp_path, "jemalloc", alpaca_file, "jemalloc")
        assert "host memory: jemalloc (freed pages kept for reuse)" in log_j, log_j[-800:]
        assert on_jemalloc == on_glibc
