"""Batched generation on a tiny random model: left padding, stop at eos, bounded length, seeded sampling."""

import pytest
import torch

from seektune.eval.generation import GenerationSettings, _cut_at_stop, generate_texts, left_pad, stop_token_ids

PROMPTS = [[{"role": "user", "content": "你好"}],
           [{"role": "user", "content": "what is the capital of France? please answer in one short sentence"}],
           [{"role": "system", "content": "be brief"}, {"role": "user", "content": "头痛怎么办？"}]]


@pytest.fixture(scope="module")
def tiny():
    from seektune.config import ModelConfig
    from seektune.data.templates import get_template
    from seektune.models.loader import load_model

    torch.set_num_threads(1)
    model, tok, _ = load_model(ModelConfig(name_or_path="tiny-deepseek-v3"), log=lambda *_: None)
    return model, tok, get_template("deepseek-v3", tok)


def test_left_pad_puts_padding_before_the_prompt():
    ids, mask = left_pad([[5, 6, 7], [9]], pad_id=0)
    assert ids.tolist() == [[5, 6, 7], [0, 0, 9]]
    assert mask.tolist() == [[1, 1, 1], [0, 0, 1]]


def test_cut_at_first_stop_token():
    assert _cut_at_stop([4, 5, 1, 6, 1], {1}) == [4, 5]
    assert _cut_at_stop([4, 5], {1}) == [4, 5]


def test_batched_generation_matches_one_by_one(tiny):
    model, tok, tpl = tiny
    s = GenerationSettings(max_new_tokens=4, batch_size=3)
    batched = generate_texts(model, tok, tpl, PROMPTS, s)
    single = [generate_texts(model, tok, tpl, [p], s)[0] for p in PROMPTS]
    assert batched == single
    assert any(batched)  # the random model does produce text, so equality is not trivially ""
    # at most max_new_tokens tokens per answer
    for text in batched:
        assert len(tok(text, add_special_tokens=False)["input_ids"]) <= 4 + 1  # decode/encode may re-merge


def test_generation_stops_at_eos(tiny):
    model, tok, tpl = tiny
    s = GenerationSettings(max_new_tokens=4, batch_size=2)
    ids = tok(tpl.prompt(PROMPTS[0]), add_special_tokens=False, return_tensors="pt")["input_ids"]
    first = int(model(ids).logits[0, -1].argmax())
    old = model.generation_config.eos_token_id
    try:
        model.generation_config.eos_token_id = [old, first] if isinstance(old, int) else [first]
        assert first in stop_token_ids(tok, model)
        # greedy would emit `first` at once: with it as a stop token the answer is empty
        assert generate_texts(model, tok, tpl, PROMPTS[:1], s) == [""]
    finally:
        model.generation_config.eos_token_id = old


def test_sampling_is_seeded_and_leaves_global_rng_alone(tiny):
    model, tok, tpl = tiny
    s = GenerationSettings(max_new_tokens=4, batch_size=2, do_sample=True, temperature=1.0, seed=7)
    torch.manual_seed(123)
    state = torch.get_rng_state()
    a = generate_texts(model, tok, tpl, PROMPTS, s)
    assert torch.equal(torch.get_rng_state(), state)  # training randomness is not disturbed
    assert a == generate_texts(model, tok, tpl, PROMPTS, s)
    other = [generate_texts(model, tok, tpl, PROMPTS, GenerationSettings(
        max_new_tokens=4, batch_size=2, do_sample=True, temperature=1.0, seed=k)) for k in (8, 9)]
    assert any(o != a for o in other)


def test_training_mode_is_restored(tiny):
    model, tok, tpl = tiny
    model.train()
    generate_texts(model, tok, tpl, PROMPTS[:1], GenerationSettings(max_new_tokens=2))
    assert model.training
    model.eval()
