"""The label-only, chunked LM loss (train.fused_loss) must equal the model's own loss and gradients, and
models whose heads transform their logits after the matmul (soft-capping, scaling) must not get it."""

import pytest
import torch

from seektune.data import IGNORE_INDEX as IGNORE
from seektune.data.collate import PadCollator
from seektune.data.sft import pack_examples, tokenize_conversation
from seektune.data.templates import get_template
from seektune.engine import losses
from seektune.engine.losses import fused_loss_supported, head_is_plain, label_only_lm_loss, linear_cross_entropy_sum


@pytest.mark.parametrize("smoothing", [0.0, 0.1])
@pytest.mark.parametrize("bias", [False, True])
def test_linear_cross_entropy_matches_torch(smoothing, bias):
    g = torch.Generator().manual_seed(0)
    h = torch.randn(37, 16, generator=g, requires_grad=True)
    w = torch.randn(101, 16, generator=g, requires_grad=True)
    b = torch.randn(101, generator=g, requires_grad=True) if bias else None
    t = torch.randint(0, 101, (37,), generator=g)
    ref = torch.nn.functional.cross_entropy(torch.nn.functional.linear(h, w, b), t, reduction="sum",
                                            label_smoothing=smoothing)
    ref_grads = torch.autograd.grad(ref * 0.5, [h, w] + ([b] if bias else []))
    got = linear_cross_entropy_sum(h, w, b, t, smoothing, chunk=8)  # 5 chunks, the last one short
    got_grads = torch.autograd.grad(got * 0.5, [h, w] + ([b] if bias else []))
    assert torch.allclose(got, ref, rtol=1e-5)
    for a, r in zip(got_grads, ref_grads):
        assert torch.allclose(a, r, atol=1e-5), (a - r).abs().max()


def test_no_grad_path_gives_the_same_value():
    h, w, t = torch.randn(9, 8), torch.randn(30, 8), torch.randint(0, 30, (9,))
    with torch.no_grad():
        a = linear_cross_entropy_sum(h, w, None, t, chunk=4)
    assert torch.allclose(a, torch.nn.functional.cross_entropy(h @ w.T, t, reduction="sum"), rtol=1e-5)


def _packed_batch(tok):
    t = get_template("deepseek-v3", tok)
    convs = [[{"role": "user", "content": q}, {"role": "assistant", "content": a}]
             for q, a in [("hello there", "hi, how can I help?"), ("头痛", "多休息"), ("x " * 10, "y " * 20),
                          ("what is BP", "blood pressure")]]
    rows = [{k: v for k, v in tokenize_conversation(c, t, tok, 128).items() if k != "truncated"} for c in convs]
    return PadCollator(tok.pad_token_id)(pack_examples(rows * 2, 64))


@pytest.mark.parametrize("preset", ["tiny-qwen2", "tiny-deepseek-v3"])
def test_fused_loss_equals_model_loss_and_lora_grads(preset):
    from seektune.config import AdapterConfig, ModelConfig
    from seektune.models.adapters import apply_adapter
    from seektune.models.loader import load_model

    torch.manual_seed(0)
    model, tok, _ = load_model(ModelConfig(name_or_path=preset))
    model, _ = apply_adapter(model, AdapterConfig(method="lora", r=4, alpha=8, dropout=0.0), "causal_lm")
    for n, p in model.named_parameters():  # LoRA B starts at zero: give it values so every grad is non-trivial
        if "lora_B" in n:
            torch.nn.init.normal_(p, std=0.02)
    model.config.use_cache = False
    assert fused_loss_supported(model) == (True, None)
    batch = _packed_batch(tok)
    assert batch["input_ids"].shape[0] >= 2  # several packed rows, several samples each
    n_items = int((batch["labels"][:, 1:] != IGNORE).sum())
    trained = [p for p in model.parameters() if p.requires_grad]

    ref = model(**batch).loss  # the model's own (mean) loss over labelled tokens
    ref_grads = torch.autograd.grad(ref, trained)
    got, _ = label_only_lm_loss(model, batch, num_items_in_batch=n_items)
    got_grads = torch.autograd.grad(got, trained)
    assert abs(got.item() - ref.item()) < 1e-5
    worst = max(float((a - r).abs().max() / (r.abs().max() + 1e-12)) for a, r in zip(got_grads, ref_grads))
    assert worst < 1e-4


def test_full_finetune_trains_the_tied_head_the_same(tmp_path):
    from seektune.config import ModelConfig
    from seektune.models.loader import load_model

    torch.manual_seed(0)
    model, tok, _ = load_model(ModelConfig(name_or_path="tiny-qwen2"))
    model.config.use_cache = False
    batch = _packed_batch(tok)
    w = model.get_output_embeddings().weight
    ref = model(**batch).loss
    (gref,) = torch.autograd.grad(ref, [w])
    got, _ = label_only_lm_loss(model, batch)
    (ggot,) = torch.autograd.grad(got, [w])
    assert abs(got.item() - ref.item()) < 1e-5
    assert torch.allclose(ggot, gref, atol=1e-6)


def test_prefix_tuning_is_not_fused():
    from seektune.config import AdapterConfig, ModelConfig
    from seektune.models.adapters import apply_adapter
    from seektune.models.loader import load_model

    model, _, _ = load_model(ModelConfig(name_or_path="tiny-qwen2"))
    model, _ = apply_adapter(model, AdapterConfig(method="prefix", num_virtual_tokens=4), "causal_lm")
    ok, why = fused_loss_supported(model)
    assert not ok
    assert "prefix tuning" in why


# -- heads that transform their logits: the fused path would train another objective --------------

def _tiny_gemma2(softcap=30.0):
    """A random Gemma-2 whose final norm is scaled up so its logits reach the soft-capping range (|z| ~ 30);
    at the stock init they stay below 1, where tanh(z / 30) * 30 is z to 1e-4 and the cap changes nothing."""
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    cfg = transformers.Gemma2Config(vocab_size=128, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                                    num_key_value_heads=1, head_dim=16, intermediate_size=64,
                                    max_position_embeddings=64, sliding_window=16, final_logit_softcapping=softcap,
                                    pad_token_id=0, bos_token_id=1, eos_token_id=2)
    model = transformers.Gemma2ForCausalLM(cfg)
    with torch.no_grad():
        model.model.norm.weight.fill_(99.0)  # Gemma's RMSNorm scales by (1 + weight): x100
    model.config.use_cache = False
    return model


def _ids_and_labels(vocab, rows=2, length=16, prompt=5):
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(3, vocab, (rows, length), generator=g)
    labels = ids.clone()
    labels[:, :prompt] = IGNORE  # a masked prompt, as in SFT
    return ids, labels


def test_gemma2_softcapping_is_refused_by_its_config_key():
    model = _tiny_gemma2()
    assert model(_ids_and_labels(128)[0]).logits.abs().max() > 15  # the cap is active, not a no-op
    ok, why = fused_loss_supported(model)
    assert not ok
    assert "final_logit_softcapping" in why and "30" in why


def test_gemma2_softcapping_is_caught_by_the_probe_when_the_key_is_unknown(monkeypatch):
    model = _tiny_gemma2()
    assert not head_is_plain(model)
    monkeypatch.setattr(losses, "LOGIT_TRANSFORMS", ())  # as if the key had a name we do not know
    ok, why = fused_loss_supported(model)
    assert not ok
    assert "differ from lm_head" in why
    # the same model without soft-capping is plain, and fused
    assert head_is_plain(_tiny_gemma2(softcap=None))
    assert fused_loss_supported(_tiny_gemma2(softcap=None)) == (True, None)


def _tiny_qwen2(cls=None):
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    cfg = transformers.Qwen2Config(vocab_size=128, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                                   num_key_value_heads=1, intermediate_size=64, max_position_embeddings=64)
    model = (cls or transformers.Qwen2ForCausalLM)(cfg)
    model.config.use_cache = False
    return model


def test_a_head_that_scales_its_logits_under_no_known_key_is_caught():
    from transformers import Qwen2ForCausalLM

    class ScaledQwen2(Qwen2ForCausalLM):  # post-processes its logits, and says so in no config key
        def forward(self, input_ids=None, logits_to_keep=0, **kw):
            out = super().forward(input_ids=input_ids, logits_to_keep=logits_to_keep, **kw)
            out.logits = out.logits * 2.0
            return out

    assert head_is_plain(_tiny_qwen2())
    model = _tiny_qwen2(ScaledQwen2)
    assert not any(getattr(model.config, k, None) not in (None, 1, 1.0) for k in losses.LOGIT_TRANSFORMS)
    assert not head_is_plain(model)
    ok, why = fused_loss_supported(model)
    assert not ok and "differ from lm_head" in why


def test_softcapping_changes_the_objective_and_a_plain_head_does_not():
    ids, labels = _ids_and_labels(128)
    batch = {"input_ids": ids, "labels": labels}
    gemma = _tiny_gemma2()
    own = gemma(input_ids=ids, labels=labels).loss.item()
    fused = label_only_lm_loss(gemma, batch)[0].item()
    assert abs(fused - own) > 1.0, (own, fused)  # raw h @ W.T is not what Gemma-2 trains
    # the same check on plain heads: the two losses agree
    for plain in (_tiny_gemma2(softcap=None), _tiny_qwen2()):
        own = plain(input_ids=ids, labels=labels).loss.item()
        assert abs(label_only_lm_loss(plain, batch)[0].item() - own) < 1e-5


def test_cohere_logit_scale_is_refused():
    transformers = pytest.importorskip("transformers")
    if not hasattr(transformers, "CohereConfig"):
        pytest.skip("this transformers has no Cohere")
    torch.manual_seed(0)
    cfg = transformers.CohereConfig(vocab_size=128, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                                    num_key_value_heads=1, intermediate_size=64, max_position_embeddings=64,
                                    logit_scale=0.0625, pad_token_id=0, bos_token_id=1, eos_token_id=2)
    model = transformers.CohereForCausalLM(cfg)
    ok, why = fused_loss_supported(model)
    assert not ok
    assert "logit_scale" in why and "0.0625" in why
    assert not head_is_plain(model)  # the probe sees the scaling too


def test_probe_leaves_rng_and_train_eval_modes_as_they_were():
    model = _tiny_gemma2(softcap=None)
    if torch.cuda.is_available():  # where the probe's ids would come from the CUDA generator
        model.cuda()
    model.train()
    model.model.layers[0].eval()  # mixed modes, as with frozen parts: each module keeps its own
    modes = {n: m.training for n, m in model.named_modules()}
    torch.manual_seed(123)
    state = torch.get_rng_state()
    cuda_state = torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None
    assert head_is_plain(model)
    assert torch.equal(torch.get_rng_state(), state)
    if cuda_state is not None:
        assert all(torch.equal(a, b) for a, b in zip(torch.cuda.get_rng_state_all(), cuda_state))
    assert {n: m.training for n, m in model.named_modules()} == modes
    model.eval()
    assert fused_loss_supported(model)[0]
    assert not any(m.training for m in model.modules())
    assert torch.equal(torch.get_rng_state(), state)


def test_sft_trainer_falls_back_to_the_models_own_loss(tmp_path, alpaca_file, monkeypatch):
    from transformers import TrainingArguments

    from conftest import tiny_config
    from seektune.stages import sft

    said = []
    monkeypatch.setattr(sft, "log", said.append)
    cfg = tiny_config(tmp_path, alpaca_file, adapter__method="full", train__max_steps=1)
    assert cfg.train.fused_loss and not cfg.train.label_smoothing
    ids, labels = _ids_and_labels(128)
    batch = {"input_ids": ids, "labels": labels}
    for softcap, fused in ((30.0, False), (None, True)):
        model = _tiny_gemma2(softcap)
        trainer = sft.SFTTrainer(model=model, args=TrainingArguments(output_dir=str(tmp_path / "t"),
                                                                     report_to="none", use_cpu=True), st_cfg=cfg)
        trainer.current_gradient_accumulation_steps = 1
        with torch.no_grad():
            loss = trainer.compute_loss(model, batch)
            own = model(**batch).loss
        assert trainer._fused is fused
        assert abs(loss.item() - own.item()) < 1e-5  # the fallback trains the model's objective
    assert len(said) == 1
    assert said[0].startswith("fused loss off:") and "final_logit_softcapping" in said[0]
    assert said[0].endswith("using the model's own loss")
