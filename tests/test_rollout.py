"""engine/rollout.py: GRPO group rollouts (one prefill per prompt, finished completions leave the batch)
decode what transformers' generate decodes, and sample from the distribution its warpers give."""

from __future__ import annotations

import pytest
import torch

from seektune.engine.rollout import RolloutStats, Sampling, group_rollout, warp
from seektune.models.presets import _tiny_deepseek_v3_config, _tiny_qwen2_config

VOCAB = 101
PAD = 0


def _model(kind: str):
    torch.manual_seed(3)
    from transformers import AutoModelForCausalLM

    cfg = {"qwen2": _tiny_qwen2_config, "deepseek-v3": _tiny_deepseek_v3_config}[kind](VOCAB)
    cfg.pad_token_id = PAD
    cfg.initializer_range = 0.3  # attention far from uniform, so a wrong position or cache row changes tokens
    return AutoModelForCausalLM.from_config(cfg).eval()


def _prompts(group: int) -> list[list[int]]:
    g = torch.Generator().manual_seed(5)
    distinct = [torch.randint(1, VOCAB, (n,), generator=g).tolist() for n in (7, 3, 11)]
    return [p for p in distinct for _ in range(group)]  # trl's order: each prompt's group together


def _hf_greedy(model, prompts, max_new, eos):
    """trl's transformers path: the repeated prompts left-padded into one generate call, cut after the first EOS."""
    width = max(map(len, prompts))
    ids = torch.tensor([[PAD] * (width - len(p)) + p for p in prompts])
    mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in prompts])
    out = model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=max_new, do_sample=False,
                         eos_token_id=sorted(eos), pad_token_id=PAD)[:, width:].tolist()
    cut = []
    for row in out:
        end = next((i for i, t in enumerate(row) if t in eos), len(row) - 1)
        cut.append(row[: end + 1])
    return cut


@pytest.mark.parametrize("kind", ["qwen2", "deepseek-v3"])
def test_greedy_group_rollout_is_generates_greedy_decoding_with_early_stops(kind):
    model = _model(kind)
    prompts = _prompts(group=3)
    free = _hf_greedy(model, prompts, 12, eos=set())
    # an EOS that some completions produce early and others never: rows must leave the batch mid-decode
    seen = {t for row in free for t in row[2:6]}
    eos = {next(t for t in sorted(seen) if any(t in r for r in free) and not all(t in r for r in free))}
    want = _hf_greedy(model, prompts, 12, eos)
    stats = RolloutStats()
    got = group_rollout(model, prompts, Sampling(max_new_tokens=12, do_sample=False), eos, PAD, stats)
    assert got == want
    assert any(len(c) < 12 for c in got) and any(len(c) == 12 for c in got), "the test must exercise early stops"
    assert stats.prompts == 3 and stats.completions == 9
    assert stats.prefill_tokens == 7 + 3 + 11, "each distinct prompt is prefilled once"
    assert stats.row_steps < 9 * stats.steps, "finished completions leave the batch"


def test_warp_is_transformers_temperature_top_k_top_p():
    from transformers.generation.logits_process import (LogitsProcessorList, TemperatureLogitsWarper,
                                                        TopKLogitsWarper, TopPLogitsWarper)

    torch.manual_seed(0)
    logits = torch.randn(6, VOCAB) * 3
    for s in (Sampling(8, temperature=0.7, top_k=10, top_p=0.8), Sampling(8, temperature=1.3, top_p=0.5),
              Sampling(8, top_p=0.01), Sampling(8, top_k=3), Sampling(8)):
        procs = LogitsProcessorList(
            ([TemperatureLogitsWarper(s.temperature)] if s.temperature != 1.0 else [])
            + ([TopKLogitsWarper(s.top_k)] if s.top_k else []) + ([TopPLogitsWarper(s.top_p)] if s.top_p < 1 else []))
        want = procs(torch.zeros(6, 1, dtype=torch.long), logits.clone())
        got = warp(logits, s)
        assert torch.equal(torch.isinf(got), torch.isinf(want)), s
        fin = ~torch.isinf(want)
        assert torch.allclose(got[fin], want[fin]), s


def test_sampled_first_tokens_follow_the_warped_distribution():
    model = _model("qwen2")
    prompt = _prompts(1)[0]
    s = Sampling(max_new_tokens=1, temperature=0.8, top_k=8, top_p=0.9)
    with torch.no_grad():
        logits = model(torch.tensor([prompt])).logits[0, -1]
    probs = warp(logits, s).softmax(-1)
    torch.manual_seed(11)
    n = 3000
    got = group_rollout(model, [prompt] * n, s, eos_ids={VOCAB - 1}, pad_id=PAD)
    counts = torch.bincount(torch.tensor([c[0] for c in got]), minlength=VOCAB).float() / n
    assert set(torch.nonzero(counts).flatten().tolist()) <= set(torch.nonzero(probs).flatten().tolist())
    assert (counts - probs).abs().max() < 0.035, "empirical frequencies match the warped softmax"
    # seeded: the global RNG (which trl's checkpoints save) decides the draws
    torch.manual_seed(11)
    again = group_rollout(model, [prompt] * 50, Sampling(max_new_tokens=4, temperature=0.8), {VOCAB - 1}, PAD)
    torch.manual_seed(11)
    assert group_rollout(model, [prompt] * 50, Sampling(max_new_tokens=4, temperature=0.8), {VOCAB - 1}, PAD) == again


@pytest.mark.parametrize("dora", [False, True])
def test_merged_lora_computes_what_peft_computes_and_leaves_the_base_untouched(dora):
    from peft import LoraConfig, get_peft_model

    from seektune.models.lora_inference import merged_lora

    model = get_peft_model(_model("qwen2"), LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj",
                                                                                          "down_proj"],
                                                        use_dora=dora, init_lora_weights=False))
    model.train()  # trl's rollouts run with the policy in train mode (dropout 0)
    base = {n: p.detach().clone() for n, p in model.named_parameters() if "lora_" not in n}
    x = torch.tensor([_prompts(1)[0]])
    with torch.no_grad():
        want = model(x).logits
        with merged_lora(model) as n:
            got = model(x).logits
    assert n == (0 if dora else 6), "plain LoRA layers are merged; DoRA keeps peft's forward"
    assert torch.allclose(got, want, atol=1e-5, rtol=1e-4)
    assert all(torch.equal(p, base[k]) for k, p in model.named_parameters() if "lora_" not in k)
    assert not any("forward" in vars(m) for m in model.modules()), "peft's forward is back"
    with torch.no_grad():
        assert torch.equal(model(x).logits, want)


def test_a_cache_that_cannot_drop_rows_is_named_so_grpo_can_fall_back():
    from transformers import AutoModelForCausalLM, Qwen2Config

    from seektune.engine.rollout import UnsupportedCache

    cfg = Qwen2Config(vocab_size=VOCAB, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, use_sliding_window=True, sliding_window=4,
                      max_window_layers=0, pad_token_id=PAD)
    model = AutoModelForCausalLM.from_config(cfg).eval()
    with pytest.raises(UnsupportedCache, match="rows cannot be dropped"):
        group_rollout(model, _prompts(2), Sampling(max_new_tokens=3), {VOCAB - 1}, PAD)
