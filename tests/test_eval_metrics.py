"""Generation metrics against values computed by hand on tiny cases."""

import math

import pytest
import torch

from seektune.eval.metrics import (bleu4, detect_lang, exact_match, lcs_length, perplexity, rouge_l,
                                   rouge_l_pair, rouge_tokens, text_metrics)


def test_lcs_length_by_hand():
    assert lcs_length(list("ABCBDAB"), list("BDCABA")) == 4  # textbook example (BCBA)
    assert lcs_length([], list("abc")) == 0
    assert lcs_length(list("abc"), list("abc")) == 3


def test_rouge_l_english_words():
    # LCS("the cat sat on mat", "the cat is on the mat") = the cat on mat = 4; P=4/5, R=4/6
    p, r = 4 / 5, 4 / 6
    assert rouge_l_pair("The cat sat on mat", "the cat is on the mat.", "en") == pytest.approx(2 * p * r / (p + r))
    assert rouge_l(["the cat sat on mat", "nothing"], ["the cat is on the mat", "else"]) == pytest.approx(
        100 * (2 * p * r / (p + r)) / 2)


def test_rouge_l_chinese_is_character_level():
    # hyp 我爱北京 (4 chars) vs ref 我爱北京天安门 (7 chars): LCS 4, P=1, R=4/7; punctuation ignored
    assert rouge_tokens("我爱，北京。", "zh") == ["我", "爱", "北", "京"]
    r = 4 / 7
    assert rouge_l(["我爱北京"], ["我爱北京天安门。"]) == pytest.approx(100 * 2 * r / (1 + r))
    assert detect_lang(["我爱北京天安门"]) == "zh" and detect_lang(["the cat"]) == "en"


def test_bleu4_brevity_penalty_by_hand():
    # every n-gram precision is 1; BP = exp(1 - 7/6)
    assert bleu4(["the cat sat on the mat"], ["the cat sat on the mat today"]) == pytest.approx(
        100 * math.exp(1 - 7 / 6), abs=1e-6)


def test_bleu4_chinese_tokenised_by_character():
    # with zh tokenisation each character is a token: precisions 1, BP = exp(1 - 7/4).
    # With the default 13a tokeniser "我爱北京" would be one token and the score 0.
    assert bleu4(["我爱北京"], ["我爱北京天安门"]) == pytest.approx(100 * math.exp(1 - 7 / 4), abs=1e-6)
    assert bleu4(["我爱北京"], ["我爱北京天安门"], lang="en") == pytest.approx(0.0)


def test_exact_match_normalises_case_space_and_final_punctuation():
    assert exact_match(["Paris.", "  new   york ", "北京"], ["paris", "New York", "上海"]) == pytest.approx(200 / 3)
    with pytest.raises(ValueError):
        exact_match(["a"], ["a", "b"])


def test_text_metrics_bundle():
    m = text_metrics(["a b c"], ["a b c"])
    assert m["rouge_l"] == pytest.approx(100) and m["exact_match"] == 100 and m["n"] == 1 and m["lang"] == "en"


class _Uniform(torch.nn.Module):
    """Equal logits over V tokens: every token has probability 1/V, so perplexity is exactly V."""

    def __init__(self, vocab):
        super().__init__()
        self.vocab = vocab

    def forward(self, input_ids, attention_mask=None, use_cache=False):
        return type("Out", (), {"logits": torch.zeros(*input_ids.shape, self.vocab)})()


class _Peaked(_Uniform):
    """Puts probability p on token 0 and spreads the rest: NLL per assistant token is known by hand."""

    def forward(self, input_ids, attention_mask=None, use_cache=False):
        logits = torch.zeros(*input_ids.shape, self.vocab)
        logits[..., 0] = 5.0
        return type("Out", (), {"logits": logits})()


def test_perplexity_uniform_model_equals_vocab_size():
    from seektune.data.templates import ChatMLTemplate
    from seektune.models.presets import load_deepseek_tokenizer

    tok = load_deepseek_tokenizer()
    conv = [[{"role": "user", "content": "你好"}, {"role": "assistant", "content": "你好，有什么可以帮你？"}],
            [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello there"}]]
    V = len(tok)
    assert perplexity(_Uniform(V), tok, ChatMLTemplate(), conv, batch_size=2) == pytest.approx(V, rel=1e-4)
    # no reference token is ever token 0, so each has probability 1/(e^5 + V - 1): ppl = e^5 + V - 1
    # (fp32 log-sum-exp over 129k logits is good to ~1e-4 in NLL)
    assert perplexity(_Peaked(V), tok, ChatMLTemplate(), conv, batch_size=1) == pytest.approx(
        math.exp(5) + V - 1, rel=5e-4)
