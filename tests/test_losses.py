"""The label-only, chunked LM loss (train.fused_loss) must equal the model's own loss and gradients."""

import pytest
import torch

from seektune.data.collate import PadCollator
from seektune.data.sft import IGNORE, pack_examples, tokenize_conversation
from seektune.data.templates import get_template
from seektune.train.losses import fused_loss_supported, label_only_lm_loss, linear_cross_entropy_sum


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
    assert fused_loss_supported(model)
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
    assert not fused_loss_supported(model)
