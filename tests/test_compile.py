"""train.compile: regional torch.compile trains what eager trains; `auto` compiles only where it pays."""

from __future__ import annotations

import json

import pytest
import torch

from conftest import tiny_config, train
from seektune.engine import compile as compile_mod
from seektune.engine.compile import AUTO_MIN_STEPS, compile_decision, decoder_layers, has_cxx_compiler


def test_auto_compiles_only_long_dense_runs(monkeypatch):
    from transformers import AutoModelForCausalLM, Qwen2Config

    from seektune.models.presets import _tiny_deepseek_v3_config

    dense = AutoModelForCausalLM.from_config(Qwen2Config(vocab_size=64, hidden_size=32, intermediate_size=64,
                                                         num_hidden_layers=3, num_attention_heads=4,
                                                         num_key_value_heads=2))
    assert len(decoder_layers(dense)) == 3
    assert compile_decision(True, dense, 1)[0] and not compile_decision(False, dense, 10_000)[0]
    assert not compile_decision("auto", dense, AUTO_MIN_STEPS - 1)[0]
    assert compile_decision("auto", dense, AUTO_MIN_STEPS)[0] == (torch.cuda.is_available() or has_cxx_compiler())
    monkeypatch.setattr(compile_mod, "has_cxx_compiler", lambda: False)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    ok, why = compile_decision("auto", dense, AUTO_MIN_STEPS)
    assert not ok and "C++" in why
    moe = AutoModelForCausalLM.from_config(_tiny_deepseek_v3_config(64))
    ok, why = compile_decision("auto", moe, 10_000)
    assert not ok and "MoE" in why


@pytest.mark.slow
def test_compiled_layers_train_what_eager_trains(tmp_path, alpaca_file, monkeypatch):
    """Short form: dynamo captures each layer forward and backward (aot_eager, no code generation, ~10 s).
    SEEKTUNE_LONG=1: inductor's generated C++ (~2 min on 2 cores)."""
    import os

    import torch._dynamo
    from torch._dynamo.utils import counters

    from seektune.engine import compile as compile_mod

    if os.environ.get("SEEKTUNE_LONG") != "1":
        monkeypatch.setattr(compile_mod, "BACKEND", "aot_eager")
    torch._dynamo.reset()
    counters.clear()

    def run(name, setting):
        cfg = tiny_config(tmp_path / name, alpaca_file, train__max_steps=3, train__batch_size=2, train__lr=5e-3,
                          train__seed=1, train__compile=setting, data__eval_ratio=0.0, eval__before_after=False)
        res = train(cfg)
        recs = [json.loads(x) for x in (tmp_path / name / "run" / "metrics.jsonl").read_text().splitlines()]
        return res, [r["loss"] for r in recs if "loss" in r]

    eager, l_eager = run("eager", False)
    comp, l_comp = run("compiled", True)
    assert eager.summary["details"]["compiled_layers"] == 0
    assert comp.summary["details"]["compiled_layers"] == 2  # tiny-qwen2's two decoder layers
    assert counters["stats"]["unique_graphs"] >= 1, "dynamo compiled the layers"
    assert torch._dynamo.config.recompile_limit >= compile_mod.RECOMPILE_LIMIT  # the variants every layer shares
    assert len(l_comp) == len(l_eager) == 3
    assert l_comp == pytest.approx(l_eager, rel=1e-4)  # inductor reorders float sums; nothing else changes
    we = {n: p for n, p in eager.model.named_parameters() if "lora_B" in n}
    wc = dict(comp.model.named_parameters())
    assert we and all(torch.allclose(wc[n], p, atol=1e-5, rtol=1e-3) for n, p in we.items())
    assert all(getattr(m, "_compiled_call_impl", None) is None for m in decoder_layers(comp.model)), \
        "eager again after training (generation would recompile at every new length)"
