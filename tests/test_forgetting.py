import json

import pytest
import torch

from conftest import tiny_config, train
from seektune.config import AdapterConfig, AdversarialConfig, EWCConfig, ModelConfig, ReplayConfig
from seektune.data.collate import PadCollator
from seektune.models.adapters import apply_adapter
from seektune.models.loader import load_model
from seektune.engine.forgetting import EWC, EmbeddingPerturber, adversarial_step, draw_replay, estimate_fisher


def _batch(tok, text="hello doctor, my head hurts"):
    ids = tok(text, add_special_tokens=False).input_ids
    return PadCollator(tok.pad_token_id)([{"input_ids": ids, "labels": ids}])


def test_fisher_is_nonnegative_and_only_for_trainable_parameters():
    model, tok, _ = load_model(ModelConfig(name_or_path="tiny-qwen2"))
    model, _ = apply_adapter(model, AdapterConfig(method="freeze", trainable_layers=1), "causal_lm")
    fisher = estimate_fisher(model, [_batch(tok), _batch(tok, "头痛怎么办")], 2)
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert set(fisher) == trainable
    assert all((f >= 0).all() for f in fisher.values())
    assert any((f > 0).any() for f in fisher.values())
    frozen = [n for n, p in model.named_parameters() if not p.requires_grad]
    assert frozen and not any(n in fisher for n in frozen)  # frozen parameters: Fisher zero (absent)


def test_ewc_penalty_zero_at_anchor_and_grows_quadratically():
    model, tok, _ = load_model(ModelConfig(name_or_path="tiny-qwen2"))
    model, _ = apply_adapter(model, AdapterConfig(method="freeze", trainable_layers=1), "causal_lm")
    fisher = estimate_fisher(model, [_batch(tok)], 1)
    ewc = EWC(model, fisher, lam=10.0)
    assert ewc.penalty(model).item() == 0.0
    name = max(fisher, key=lambda k: fisher[k].sum())
    p = dict(model.named_parameters())[name]
    with torch.no_grad():
        p.add_(0.01)
    one = ewc.penalty(model).item()
    with torch.no_grad():
        p.add_(0.01)
    two = ewc.penalty(model).item()
    assert one > 0 and two == pytest.approx(4 * one, rel=1e-3)


@pytest.mark.parametrize("method", ["fgm", "pgd"])
def test_adversarial_step_leaves_embeddings_untouched(tmp_path, alpaca_file, method):
    cfg = tiny_config(tmp_path, alpaca_file, adapter__method="full", train__max_steps=1)
    model, tok, _ = load_model(cfg.model)
    from transformers import TrainingArguments

    from seektune.stages.sft import SFTTrainer

    trainer = SFTTrainer(model=model, args=TrainingArguments(output_dir=str(tmp_path / "t"), report_to="none",
                                                              use_cpu=True), st_cfg=cfg)
    trainer.current_gradient_accumulation_steps = 1  # set by the train loop; we call a step by hand
    emb_before = model.get_input_embeddings().weight.detach().clone()
    pert = EmbeddingPerturber(model)
    batch = _batch(tok)
    model.train()
    clean = trainer.compute_loss(model, batch)
    clean.backward()
    grads_clean = model.get_input_embeddings().weight.grad.clone()
    adv = adversarial_step(trainer, model, batch, None, pert, method, epsilon=1.0, steps=3, alpha=0.5)
    assert adv is not None and torch.isfinite(torch.as_tensor(adv))
    assert pert.delta is None, "the perturbation is removed after the step"
    assert torch.equal(model.get_input_embeddings().weight.detach(), emb_before)
    assert not torch.equal(model.get_input_embeddings().weight.grad, grads_clean), "adversarial grads accumulate"
    with torch.no_grad():  # embeddings give their clean output again
        out = model.get_input_embeddings()(batch["input_ids"])
    assert torch.equal(out, emb_before[batch["input_ids"]])
    pert.remove()


def test_training_with_replay_ewc_and_fgm_logs_each_part(tmp_path, alpaca_file):
    general = tmp_path / "general.jsonl"
    general.write_text("".join(json.dumps({"instruction": f"Name a colour ({i})", "output": f"Blue {i}."}) + "\n"
                               for i in range(30)))
    cfg = tiny_config(tmp_path, alpaca_file, train__max_steps=4, data__packing=False,
                      train__replay=ReplayConfig(file=str(general), ratio=0.25),
                      train__ewc=EWCConfig(samples=4, lam=100.0), train__adversarial=AdversarialConfig())
    s = train(cfg)
    recs = [json.loads(l) for l in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    steps = [r for r in recs if "loss" in r]
    assert all("ewc_penalty" in r and "adv_loss" in r for r in steps)
    assert steps[0]["ewc_penalty"] == 0.0 and steps[-1]["ewc_penalty"] > 0.0
    assert (tmp_path / "run" / "ewc_fisher.safetensors").exists()
    rows = s.trainer.train_dataset
    assert len(rows) == 20 + 7  # 20 domain samples + round(20 * 0.25 / 0.75) general samples (unpacked: 1 per row)


def test_replay_draw_is_counted_in_samples_and_reproducible():
    pool = [{"input_ids": [i], "labels": [i]} for i in range(100)]
    first = draw_replay(pool, 90, 0.1, seed=1)
    assert len(first) == 10  # 10 of 100 samples = 10%
    assert [r["input_ids"][0] for r in draw_replay(pool, 90, 0.1, seed=1)] == [r["input_ids"][0] for r in first]
    assert [r["input_ids"][0] for r in draw_replay(pool, 90, 0.1, seed=2)] != [r["input_ids"][0] for r in first]
    assert len(draw_replay(pool[:3], 90, 0.1, seed=1)) == 10  # a small pool is drawn with replacement


def test_replay_share_is_counted_in_samples_when_packing(tmp_path, alpaca_file):
    """ratio 0.1 means 10% of the samples trained on, whatever packing does with them (it used to count
    packed rows: 1 general sample per 54 domain samples on Huatuo)."""
    general = tmp_path / "general.jsonl"
    general.write_text("".join(json.dumps({"instruction": f"Name a colour ({i})", "output": f"Blue {i}."}) + "\n"
                               for i in range(40)))
    cfg = tiny_config(tmp_path, alpaca_file, train__max_steps=1, data__packing=True, data__eval_ratio=0.0,
                      train__replay=ReplayConfig(file=str(general), ratio=0.1))
    cfg.data.max_length = 96
    s = train(cfg)
    rep = s.summary["data"]["replay"]
    n_domain = s.summary["data"]["train"]
    assert rep["samples"] == round(n_domain * 0.1 / 0.9) and rep["counted_in"] == "samples"
    rows = s.trainer.train_dataset
    assert len(rows) < n_domain + rep["samples"], "packing puts several samples per row"
    assert sum(r["num_samples"] for r in rows) == n_domain + rep["samples"]  # every drawn sample is trained on
    assert abs(rep["share"] - 0.1) < 0.02


def test_continue_starts_from_previous_weights_and_writes_drift(tmp_path, alpaca_file):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, TrainerCallback

    from seektune.stages.continual import continue_run

    cfg = tiny_config(tmp_path, alpaca_file, train__max_steps=3)
    train(cfg)
    prev = tmp_path / "run"
    assert (prev / "replay_buffer.jsonl").exists() and (prev / "eval_tokens.json").exists()
    new = tmp_path / "new.jsonl"
    new.write_text("".join(json.dumps({"instruction": f"What is disease {i}?", "output": f"Disease {i} is rare."})
                           + "\n" for i in range(12)))
    x = torch.tensor([[11, 12, 13, 14, 15]])
    seen = {}

    class FirstLogits(TrainerCallback):
        def on_train_begin(self, args, state, control, model=None, **kw):
            with torch.no_grad():
                seen["logits"] = model.eval()(x).logits.clone()
            model.train()

    import seektune.stages.continual as cont

    orig = cont.run_stage
    cont.run_stage = lambda c, **kw: orig(c, callbacks=[FirstLogits()], **kw)
    try:
        s = continue_run(prev, str(new), tmp_path / "cont", replay_ratio=0.2, show_progress=False)
    finally:
        cont.run_stage = orig
    base = AutoModelForCausalLM.from_pretrained(json.loads((prev / "final" / "adapter_config.json").read_text())
                                                ["base_model_name_or_path"])
    prev_model = PeftModel.from_pretrained(base, str(prev / "final")).eval()
    with torch.no_grad():
        assert torch.allclose(seen["logits"], prev_model(x).logits, atol=1e-6)
    drift = json.loads((tmp_path / "cont" / "drift.json").read_text())
    old = drift["rows"][0]
    assert old["before"] is not None and old["after"] is not None
    assert (tmp_path / "cont" / "drift.md").exists()
    assert s.summary["steps"] == 3
