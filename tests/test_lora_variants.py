"""peft's LoRA variants as adapter options (issue 22): DoRA, rsLoRA, PiSSA / OLoRA init, LoRA+, QLoRA.

Each trained variant is checked two ways: it trained what it should (and only that), and its final/
adapter, loaded with plain transformers + peft onto the ORIGINAL base model, gives the trained model's
logits (PiSSA / OLoRA change the base at init, so final/ is saved converted to a plain LoRA).
"""

import json
import math

import pytest
import torch
from transformers import TrainerCallback

from conftest import tiny_config, train
from seektune.config import ConfigError
from seektune.config.load import validate_config

R, ALPHA, LR, RATIO = 4, 8, 1e-2, 8.0


class Snapshot(TrainerCallback):
    def __init__(self):
        self.before, self.groups = {}, []

    def on_train_begin(self, args, state, control, model=None, optimizer=None, **kw):
        self.before = {n: p.detach().clone() for n, p in model.named_parameters()}
        self.groups = [(g.get("name"), g["lr"], g["weight_decay"], [id(p) for p in g["params"]])
                       for g in optimizer.param_groups]


VARIANTS = {
    "dora": {"use_dora": True},
    "rslora": {"use_rslora": True},
    "pissa": {"init": "pissa"},
    "olora": {"init": "olora"},
    # the conversion with a DoRA magnitude and rsLoRA's alpha/sqrt(r) (alpha x sqrt 2 at rank 2r), randomised SVD
    "pissa_niter+dora+rslora": {"init": "pissa_niter_2", "use_dora": True, "use_rslora": True},
    "loraplus": {"loraplus_lr_ratio": RATIO},
}


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_variant_trains_and_final_adapter_reproduces_it_on_the_original_base(tmp_path, alpaca_file, variant):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    opts = VARIANTS[variant]
    cfg = tiny_config(tmp_path, alpaca_file, **{f"adapter__{k}": v for k, v in opts.items()})
    assert (cfg.adapter.r, cfg.adapter.alpha, cfg.train.lr) == (R, ALPHA, LR)
    snap = Snapshot()
    result = train(cfg, callbacks=[snap])
    trained = result.model.eval()
    after = dict(trained.named_parameters())

    # (a) what trains: LoRA A/B (+ DoRA magnitudes), every one of them moved; nothing else trainable or moved
    trainable = {n for n, p in after.items() if p.requires_grad}
    kinds = {"lora_A", "lora_B"} | ({"lora_magnitude_vector"} if opts.get("use_dora") else set())
    assert {next((k for k in ("lora_A", "lora_B", "lora_magnitude_vector") if k in n), n) for n in trainable} == kinds
    moved = {n for n in snap.before if not torch.equal(snap.before[n], after[n].detach())}
    assert moved == trainable, (sorted(trainable - moved)[:3], sorted(moved - trainable)[:3])
    ev = {e["key"]: e for e in result.summary["evidence"]}["eval_loss"]
    assert ev["before"] != pytest.approx(ev["after"], abs=1e-4), "the eval loss did not move"

    layer = trained.base_model.model.model.layers[0].self_attn.q_proj
    scale = ALPHA / math.sqrt(R) if opts.get("use_rslora") else ALPHA / R
    assert layer.scaling["default"] == pytest.approx(scale)
    if opts.get("loraplus_lr_ratio"):
        groups = {name: (lr, ids) for name, lr, _, ids in snap.groups}
        b_ids = {id(p) for n, p in after.items() if ".lora_B." in n}
        assert set(groups["adapters.lora_B"][1]) == b_ids
        assert groups["adapters.lora_B"][0] == pytest.approx(LR * RATIO)
        assert groups["adapters"][0] == pytest.approx(LR)
        assert not b_ids & set(groups["adapters"][1])

    # (b) final/ in plain transformers + peft on the original base
    final = tmp_path / "run" / "final"
    acfg = json.loads((final / "adapter_config.json").read_text())
    base = AutoModelForCausalLM.from_pretrained(acfg["base_model_name_or_path"]).eval()
    tok = AutoTokenizer.from_pretrained(str(final))
    x = tok(["hello doctor", "头痛三天怎么办"], return_tensors="pt", padding=True)
    mutated = opts.get("init", "default") != "default"
    if mutated:  # the run's base was the residual; final/ is a plain LoRA of rank 2r for the original one
        orig_q = base.model.layers[0].self_attn.q_proj.weight
        assert not torch.allclose(layer.base_layer.weight, orig_q, atol=1e-4)
        assert acfg["r"] == 2 * R and acfg["init_lora_weights"] is True
        assert acfg["lora_alpha"] == pytest.approx(ALPHA * (math.sqrt(2) if opts.get("use_rslora") else 2))
    else:
        assert acfg["r"] == R and acfg["init_lora_weights"] is True
    assert acfg["use_dora"] is bool(opts.get("use_dora")) and acfg["use_rslora"] is bool(opts.get("use_rslora"))
    with torch.no_grad():
        base_logits = base(**x).logits
        loaded = PeftModel.from_pretrained(base, str(final)).eval()
        a, b = trained(**x).logits, loaded(**x).logits
    assert not torch.allclose(a, base_logits, atol=1e-3), "the adapter changed nothing"
    assert torch.allclose(a, b, atol=1e-4, rtol=0), (a - b).abs().max()


def test_loraplus_composes_with_layerwise_rates_and_no_decay():
    from seektune.config import AdapterConfig, LayerwiseLR, ModelConfig
    from seektune.engine.optim import build_param_groups
    from seektune.models.adapters import apply_adapter
    from seektune.models.loader import load_model

    model, _, _ = load_model(ModelConfig(name_or_path="tiny-qwen2"), log=lambda *a: None)
    model, _ = apply_adapter(model, AdapterConfig(r=R, alpha=ALPHA, dropout=0.0, use_dora=True,
                                                  loraplus_lr_ratio=RATIO), "causal_lm")
    groups = build_param_groups(model, 1e-3, 0.01, LayerwiseLR(adapters=5e-4), lora_b_ratio=RATIO)
    by_name = {g["name"]: g for g in groups}
    names = {id(p): n for n, p in model.named_parameters()}
    assert by_name["adapters.lora_B"]["lr"] == pytest.approx(5e-4 * RATIO)
    assert by_name["adapters.lora_B"]["weight_decay"] == 0.01
    assert {".lora_B." in names[id(p)] for p in by_name["adapters.lora_B"]["params"]} == {True}
    assert by_name["adapters"]["lr"] == pytest.approx(5e-4)
    assert {".lora_A." in names[id(p)] for p in by_name["adapters"]["params"]} == {True}
    # DoRA's magnitude vectors stay at the adapters' rate, without decay (LoRA+ speeds up B only)
    assert by_name["adapters.no_decay"]["lr"] == pytest.approx(5e-4)
    assert by_name["adapters.no_decay"]["weight_decay"] == 0.0
    assert {"lora_magnitude_vector" in names[id(p)] for p in by_name["adapters.no_decay"]["params"]} == {True}
    assert sum(len(g["params"]) for g in groups) == sum(p.requires_grad for p in model.parameters())
    # without the ratio, B stays in the adapters group
    plain = {g["name"] for g in build_param_groups(model, 1e-3, 0.01, None)}
    assert "adapters.lora_B" not in plain


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the refusal where there is no CUDA GPU")
@pytest.mark.parametrize("mode", ["4bit", "8bit"])
def test_qlora_on_cpu_is_a_config_error_naming_the_key(tmp_path, alpaca_file, mode):
    cfg = tiny_config(tmp_path, alpaca_file, adapter__quantize_base=mode)
    with pytest.raises(ConfigError, match=r"adapter\.quantize_base: .*CUDA"):
        train(cfg)
    assert not (tmp_path / "run").exists(), "refused before any run folder is made"


def _problems(data) -> str:
    with pytest.raises(ConfigError) as e:
        validate_config(data)
    return str(e.value)


@pytest.mark.parametrize("data, expected", [
    ({"adapter": {"method": "prefix", "use_dora": True}}, "adapter.use_dora: only used by adapter.method lora"),
    ({"adapter": {"method": "full", "use_rslora": True}}, "adapter.use_rslora: only used by adapter.method lora"),
    ({"adapter": {"method": "freeze", "init": "pissa"}}, "adapter.init: only used by adapter.method lora"),
    ({"adapter": {"method": "full", "loraplus_lr_ratio": 4}},
     "adapter.loraplus_lr_ratio: only used by adapter.method lora"),
    ({"adapter": {"method": "prefix", "quantize_base": "4bit"}},
     "adapter.quantize_base: only used by adapter.method lora"),
    ({"adapter": {"init": "pissa_fast"}}, "adapter.init: Value error, unknown initialisation 'pissa_fast'"),
    ({"adapter": {"init": "pissa", "quantize_base": "4bit"}}, "adapter.init: pissa with adapter.quantize_base 4bit"),
    ({"adapter": {"init": "olora", "quantize_base": "8bit"}}, "adapter.init: olora with adapter.quantize_base 8bit"),
    ({"adapter": {"loraplus_lr_ratio": 0.5}}, "loraplus_lr_ratio"),
    ({"train": {"stage": "dpo"}, "adapter": {"init": "olora"}}, "adapter.init: olora moves part of every"),
    ({"train": {"stage": "ppo"}, "ppo": {"reward_model": "x"}, "adapter": {"init": "pissa"}},
     "stage ppo uses the base with the adapter disabled"),
    ({"train": {"stage": "ppo"}, "ppo": {"reward_model": "x"}, "adapter": {"loraplus_lr_ratio": 4}},
     "adapter.loraplus_lr_ratio: not used by stage ppo"),
])
def test_combinations_that_make_no_sense_are_refused_by_name(data, expected):
    assert expected in _problems(data)


def test_sensible_combinations_load():
    validate_config({"adapter": {"init": "pissa_niter_4", "use_dora": True, "use_rslora": True,
                                 "loraplus_lr_ratio": 16}})
    validate_config({"adapter": {"quantize_base": "4bit", "use_dora": True}})  # the machine is checked at train time
    validate_config({"train": {"stage": "orpo"}, "adapter": {"init": "pissa"}})  # reference-free


def test_dora_and_pissa_on_fused_experts_are_adapter_errors_naming_the_key():
    from seektune.config import AdapterConfig, ModelConfig
    from seektune.models.adapters import AdapterError, apply_adapter
    from seektune.models.loader import load_model

    for opts, key in (({"use_dora": True}, "adapter.use_dora"), ({"init": "olora"}, "adapter.init")):
        model, _, _ = load_model(ModelConfig(name_or_path="tiny-deepseek-v3"), log=lambda *a: None)
        with pytest.raises(AdapterError, match=key + ": .*target_parameters"):
            apply_adapter(model, AdapterConfig(r=R, alpha=ALPHA, dropout=0.0, **opts), "causal_lm")
