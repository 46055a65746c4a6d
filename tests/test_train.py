import json
import subprocess
import sys

import pytest
import torch
from transformers import TrainerCallback

from conftest import tiny_config, train
from seektune.models.adapters import AdapterError, apply_adapter


class Snapshot(TrainerCallback):
    def __init__(self):
        self.before = {}

    def on_train_begin(self, args, state, control, model=None, **kw):
        self.before = {n: p.detach().clone() for n, p in model.named_parameters()}


def _train(tmp_path, train_file, model, **over):
    snap = Snapshot()
    cfg = tiny_config(tmp_path, train_file, model, **over)
    result = train(cfg, callbacks=[snap])
    return cfg, result, snap.before, dict(result.model.named_parameters())


@pytest.mark.parametrize("preset", ["tiny-qwen2", "tiny-deepseek-v3"])
def test_two_lora_steps_change_every_lora_weight_and_no_base_weight(tmp_path, alpaca_file, preset):
    cfg, summary, before, after = _train(tmp_path, alpaca_file, preset)
    lora = [n for n in before if "lora_" in n]
    assert lora, "no LoRA parameters"
    unchanged = [n for n in lora if torch.equal(before[n], after[n].detach())]
    assert not unchanged, f"LoRA weights that did not train: {unchanged[:5]}"
    moved = [n for n in before if "lora_" not in n and not torch.equal(before[n], after[n].detach())]
    assert not moved, f"frozen base weights changed: {moved[:5]}"
    if preset == "tiny-deepseek-v3":
        experts = [n for n in lora if ".mlp.experts." in n]
        shared = [n for n in lora if "shared_experts" in n]
        assert experts and shared, "routed experts and shared experts must both carry LoRA"
        assert not any(".mlp.gate." in n for n in lora), "the router stays frozen by default"
        # routed-expert LoRA really trains: its weights moved
        assert all(not torch.equal(before[n], after[n].detach()) for n in experts)
    # the run folder
    run = tmp_path / "run"
    for f in ("config.yaml", "metrics.jsonl", "summary.json", "final"):
        assert (run / f).exists(), f
    recs = [json.loads(l) for l in (run / "metrics.jsonl").read_text().splitlines()]
    steps = [r for r in recs if "loss" in r]
    assert steps and all({"step", "loss", "lr", "grad_norm"} <= set(r) for r in steps)
    assert any("eval_loss" in r for r in recs)
    assert any((run / "tensorboard").iterdir())


def test_final_adapter_reloads_with_plain_peft_identical_logits(tmp_path, alpaca_file):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    cfg, summary, _, _ = _train(tmp_path, alpaca_file, "tiny-deepseek-v3")
    trained = summary.model.eval()
    final = tmp_path / "run" / "final"
    adapter_cfg = json.loads((final / "adapter_config.json").read_text())
    base = AutoModelForCausalLM.from_pretrained(adapter_cfg["base_model_name_or_path"])
    loaded = PeftModel.from_pretrained(base, str(final)).eval()
    tok = AutoTokenizer.from_pretrained(str(final))
    assert tok.pad_token_id != tok.eos_token_id
    x = tok(["hello doctor", "头痛三天"], return_tensors="pt", padding=True)
    with torch.no_grad():
        a = trained(**x).logits
        b = loaded(**x).logits
    assert torch.allclose(a, b, atol=1e-5, rtol=0)


def test_full_finetune_saves_a_plain_model(tmp_path, alpaca_file):
    from transformers import AutoModelForCausalLM

    cfg, summary, before, after = _train(tmp_path, alpaca_file, "tiny-qwen2", adapter__method="full")
    assert all(not torch.equal(before[n], after[n].detach()) for n in before if "layers.0.self_attn.q_proj" in n)
    loaded = AutoModelForCausalLM.from_pretrained(str(tmp_path / "run" / "final")).eval()
    x = torch.tensor([[5, 6, 7, 8]])
    with torch.no_grad():
        assert torch.allclose(summary.model.eval()(x).logits, loaded(x).logits, atol=1e-5)


def test_freeze_trains_only_last_layers(tmp_path, alpaca_file):
    cfg, summary, before, after = _train(tmp_path, alpaca_file, "tiny-deepseek-v3", adapter__method="freeze",
                                         adapter__trainable_layers=1)
    changed = {n for n in before if not torch.equal(before[n], after[n].detach())}
    assert any(n.startswith("model.layers.2.") for n in changed)
    assert not any(n.startswith(("model.layers.0.", "model.layers.1.", "model.embed_tokens")) for n in changed)


def test_prefix_tuning_on_dense_and_clear_error_on_mla(tmp_path, alpaca_file):
    cfg, summary, before, after = _train(tmp_path, alpaca_file, "tiny-qwen2", adapter__method="prefix",
                                         adapter__num_virtual_tokens=4)
    assert any("prompt_encoder" in n and not torch.equal(before[n], after[n].detach()) for n in before)
    from seektune.config import AdapterConfig, ModelConfig
    from seektune.models.loader import load_model

    model, _, _ = load_model(ModelConfig(name_or_path="tiny-deepseek-v3"))
    with pytest.raises(AdapterError, match="MLA"):
        apply_adapter(model, AdapterConfig(method="prefix"), "causal_lm")


def test_grad_accum_equals_bigger_batch(tmp_path, alpaca_file):
    """Loss is normalised by real label tokens across accumulation, so 2x2 == 4x1 (unequal lengths, no packing)."""
    outs = []
    for i, (bs, acc) in enumerate([(4, 1), (2, 2)]):
        d = tmp_path / f"r{i}"
        d.mkdir()
        _, summary, _, after = _train(d, alpaca_file, "tiny-qwen2", data__packing=False, train__batch_size=bs,
                                      train__grad_accum=acc, train__max_steps=1, train__lr=1e-3)
        outs.append({n: p.detach().clone() for n, p in after.items() if "lora_B" in n})
    for n in outs[0]:
        assert torch.allclose(outs[0][n], outs[1][n], atol=1e-6), n


def test_cli_train_with_set_override(tmp_path, alpaca_file):
    cfgf = tmp_path / "c.yaml"
    cfgf.write_text(f"model: {{name_or_path: tiny-qwen2}}\ndata: {{train: {alpaca_file}, max_length: 64}}\n"
                    f"train: {{output_dir: {tmp_path / 'cli'}, max_steps: 50, batch_size: 4}}\n")
    r = subprocess.run([sys.executable, "-m", "seektune", "train", str(cfgf), "--set", "train.max_steps=1",
                        "--no-progress"], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    s = json.loads((tmp_path / "cli" / "summary.json").read_text())
    assert s["steps"] == 1
    # the next two launches run in-process (the same CLI code, without two more ~10 s interpreter starts)
    from typer.testing import CliRunner

    from seektune.cli import app

    # a second launch into the same folder never mixes with the first run: it must say what it wants
    r1 = CliRunner().invoke(app, ["train", str(cfgf), "--set", "train.max_steps=1", "--no-progress"])
    assert r1.exit_code == 2 and "--resume" in r1.output and "--overwrite" in r1.output
    assert (tmp_path / "cli" / "final" / "adapter_config.json").exists(), "the refused launch must not touch the run"
    # with --overwrite it starts over, and hits the tokenised-data cache
    r2 = CliRunner().invoke(app, ["train", str(cfgf), "--set", "train.max_steps=1", "--no-progress", "--overwrite"])
    assert r2.exit_code == 0, r2.output[-2000:]
    assert "cache hit" in r2.output
