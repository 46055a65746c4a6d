"""Word-piece alignment, sliding windows and merging window predictions."""

import numpy as np
import pytest

from seektune.data.io import DataError
from seektune.data.windows import check_window, merge_text_windows, merge_word_windows, text_windows, word_windows


@pytest.fixture(scope="module")
def bert_tok():
    from transformers import AutoTokenizer

    from seektune.models.presets import resolve_model_path

    return AutoTokenizer.from_pretrained(resolve_model_path("minilm-l6"))


def test_first_subtoken_carries_the_label(bert_tok):
    words = ["ESB", "antidisestablishmentarianism", "is", "long"]
    (row,) = word_windows(bert_tok, words, [1, 2, 0, 0], max_length=64, stride=0)
    toks = bert_tok.convert_ids_to_tokens(row["input_ids"])
    labelled = [(t, lab) for t, lab in zip(toks, row["labels"]) if lab != -100]
    assert labelled == [("es", 1), ("anti", 2), ("is", 0), ("long", 0)]
    assert sum(1 for t in toks if t.startswith("##")) >= 3  # the other pieces exist and are ignored
    assert [i for i in row["word_index"] if i >= 0] == [0, 1, 2, 3]


def test_long_sentence_windows_cover_every_word(bert_tok):
    words = [f"word{i}" for i in range(60)]
    rows = word_windows(bert_tok, words, list(range(60)), max_length=24, stride=6)
    assert len(rows) > 3 and all(len(r["input_ids"]) <= 24 for r in rows)
    seen = {}
    for r in rows:
        for wid, lab in zip(r["word_index"], r["labels"]):
            if wid >= 0:
                assert lab == wid
                seen[wid] = seen.get(wid, 0) + 1
    assert sorted(seen) == list(range(60))
    assert max(seen.values()) == 2  # overlap: some words are labelled in two windows


def test_text_windows_and_stride_check(bert_tok):
    text = " ".join(["token"] * 100)
    wins = text_windows(bert_tok, text, max_length=32, stride=8)
    assert len(wins) == 5 and all(len(w) <= 32 for w in wins)
    assert sum(len(w) - 2 for w in wins) - 8 * (len(wins) - 1) == 100  # overlaps counted once
    with pytest.raises(DataError, match="data.stride=30"):
        check_window(bert_tok, 32, 30)


def test_merge_word_windows_averages_overlaps():
    # 4 words, 2 classes; window A sees words 0-2, window B sees words 2-3
    a = (np.array([0, 1, 2]), np.log(np.array([[0.9, 0.1], [0.2, 0.8], [0.6, 0.4]])))
    b = (np.array([-1, 2, 3]), np.log(np.array([[0.5, 0.5], [0.1, 0.9], [0.7, 0.3]])))
    # word 2: mean of (0.6, 0.4) and (0.1, 0.9) = (0.35, 0.65) -> class 1, though A alone says 0
    assert merge_word_windows(5, [a, b]) == [0, 1, 1, 0, None]


def test_merge_text_windows_is_mean_probability():
    p = merge_text_windows([np.log([0.7, 0.3]), np.log([0.2, 0.8]), np.log([0.3, 0.7])])
    assert np.allclose(p, [0.4, 0.6])
