"""`data augment` (EDA edits with Chinese and English synonyms, back-translation mechanics),
`data curriculum` (length and reference-model loss) and `data inspect`."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest

from seektune.data.augment import EDA, AugmentOptions, augment_file, augment_records, load_synonyms
from seektune.data.common import read_all
from seektune.data.curriculum import CurriculumOptions, curriculum_file, order, pack_in_order
from seektune.data.inspect import inspect_file
from seektune.data.io import DataError


def _write(path: Path, rows) -> Path:
    with open(path, "w", encoding="utf-8") as f:
        for r in rows:
            f.write((r if isinstance(r, str) else json.dumps(r, ensure_ascii=False)) + "\n")
    return path


def _read(path: Path) -> list[dict]:
    return [json.loads(l) for l in open(path, encoding="utf-8")]


@pytest.fixture
def synonyms(tmp_path) -> Path:
    p = tmp_path / "syn.json"
    p.write_text(json.dumps({"头疼": ["头痛"], "医生": ["大夫"], "quick": ["fast", "rapid"]}, ensure_ascii=False),
                 encoding="utf-8")
    return p


def test_synonym_replacement_chinese_and_english(synonyms):
    syn = load_synonyms(synonyms)
    assert syn["头痛"] == ["头疼"] and set(syn["fast"]) == {"quick", "rapid"}  # groups are symmetric
    eda = EDA(syn, AugmentOptions(synonym_rate=1.0))
    text, ops = eda("医生说头疼要多休息", random.Random(0))
    assert text == "大夫说头痛要多休息" and ops == ["synonym"]
    text, _ = eda("a quick test", random.Random(0))
    assert text in ("a fast test", "a rapid test")


def test_swap_delete_insert_are_seeded_and_keep_words(synonyms):
    eda = EDA(load_synonyms(synonyms), AugmentOptions(synonym_rate=0, swap_rate=0.5, delete_rate=0.3, insert_rate=0.2))
    src = "the quick brown fox jumps over the lazy dog"
    a, ops = eda(src, random.Random(5))
    b, _ = eda(src, random.Random(5))
    assert a == b and a != src and set(ops) == {"insert", "swap", "delete"}
    words = a.split()
    assert all(w in src.split() or w in ("fast", "rapid", "quick") for w in words)


def test_augment_file_marks_copies_and_keeps_answers(tmp_path, synonyms):
    src = _write(tmp_path / "d.jsonl", [{"question": "医生，头疼怎么办？", "answer": "头疼时请多休息。"},
                                        {"text": "a quick reply", "label": "pos"}])
    s = augment_file(src, tmp_path / "a.jsonl", AugmentOptions(synonyms=str(synonyms), synonym_rate=1.0, copies=3),
                     show_progress=False)
    rows = _read(tmp_path / "a.jsonl")
    aug = [r for r in rows if "_augmented" in r]
    # Chinese record: one distinct copy possible (identical copies are skipped); English: fast/rapid
    assert s["source"] == 2 and s["augmented"] == len(aug) and s["augmented"] + s["unchanged_skipped"] == 6
    zh = [r for r in aug if "question" in r]
    assert zh[0]["question"] == "大夫，头痛怎么办？" and zh[0]["answer"] == "头疼时请多休息。"  # answers unchanged
    assert all(r["_augmented"]["from"] == "d.jsonl:1" for r in zh)
    assert {r["text"] for r in aug if "text" in r} <= {"a fast reply", "a rapid reply"}
    assert len([r for r in aug if "text" in r]) >= 1
    with pytest.raises(DataError, match="nothing to do"):
        augment_file(src, tmp_path / "b.jsonl", AugmentOptions(), show_progress=False)


@pytest.fixture(scope="module")
def tiny_lm():
    from seektune.config import ModelConfig
    from seektune.models.loader import load_model

    model, tok, _ = load_model(ModelConfig(name_or_path="tiny-qwen2"), log=lambda *_: None)
    return model, tok


def test_back_translation_mechanics(tiny_lm, tmp_path):
    """Random tiny model: checks the plumbing (two greedy passes, prompts only, marked), not quality."""
    from seektune.data.augment import BackTranslator

    model, tok = tiny_lm
    opts = AugmentOptions(back_translate="tiny-qwen2", max_new_tokens=3)
    bt = BackTranslator.__new__(BackTranslator)  # reuse the loaded model instead of loading it again
    tok.padding_side = "left"
    bt.opts, bt.forward = opts, (model, tok, False)
    bt.back = bt.forward
    out1 = bt.translate(["你好，医生", "头疼怎么办呢"], "English")  # a batch with left padding
    assert out1[1] == bt.translate(["头疼怎么办呢"], "English")[0] and len(out1) == 2  # greedy, padding-proof
    recs, _ = read_all(_write(tmp_path / "d.jsonl", [{"question": "头疼怎么办？", "answer": "多休息。"}]))
    stats: dict = {}
    rows = list(augment_records(recs, opts, stats, show_progress=False, translator=bt))
    if stats["augmented"]:  # a random model may echo the input exactly, then the copy is skipped
        assert rows[1]["_augmented"]["ops"] == ["back_translation"] and rows[1]["answer"] == "多休息。"
    assert stats["augmented"] + stats["unchanged_skipped"] == 1


def test_curriculum_by_loss_matches_model_loss(tiny_lm, tmp_path):
    import torch

    from seektune.data.curriculum import loss_scores
    from seektune.data.formats import to_messages
    from seektune.data.sft import tokenize_conversation
    from seektune.data.templates import get_template

    model, tok = tiny_lm
    recs, _ = read_all(_write(tmp_path / "d.jsonl", [{"question": "q" * (i + 1), "answer": "answer " * (i + 2)}
                                                     for i in range(3)]))
    scores = loss_scores(recs, model, tok, CurriculumOptions(by="loss", batch_size=2), show_progress=False)
    ex = tokenize_conversation(to_messages(recs[2], "qa"), get_template("auto", tok), tok, 512)
    with torch.no_grad():
        ref = model(input_ids=torch.tensor([ex["input_ids"]]), labels=torch.tensor([ex["labels"]])).loss.item()
    assert scores[2] == pytest.approx(ref, rel=1e-4)  # padding in a batch does not change a record's score


def test_curriculum_by_length_orders_and_paces(tmp_path):
    rows = [{"question": "q", "answer": "x" * n} for n in (50, 5, 30, 10, 40, 20, 60, 15)]
    src = _write(tmp_path / "d.jsonl", rows)
    curriculum_file(src, tmp_path / "s.jsonl", CurriculumOptions(pacing="sorted"), show_progress=False)
    got = [len(r["answer"]) for r in _read(tmp_path / "s.jsonl")]
    assert got == sorted(got)
    curriculum_file(src, tmp_path / "b.jsonl", CurriculumOptions(pacing="buckets", stages=2, seed=1),
                    show_progress=False)
    got = [len(r["answer"]) for r in _read(tmp_path / "b.jsonl")]
    assert max(got[:4]) < min(got[4:]) and "_difficulty" in _read(tmp_path / "b.jsonl")[0]
    assert order([3.0, 1.0, 2.0, 1.0], CurriculumOptions(pacing="sorted")) == [1, 3, 2, 0]  # ties keep file order


def test_pack_in_order_keeps_sample_order():
    rows = [{"input_ids": [i] * n, "labels": [i] * n} for i, n in enumerate((3, 4, 2, 5, 1))]
    packed = pack_in_order(rows, 8)
    flat = [t for p in packed for t in p["input_ids"]]
    assert flat == [t for r in rows for t in r["input_ids"]]
    assert all(len(p["input_ids"]) <= 8 for p in packed) and [p["num_samples"] for p in packed] == [2, 3]
    assert packed[0]["position_ids"] == [0, 1, 2, 0, 1, 2, 3] and packed[0]["labels"][3] == -100


def test_inspect_reports_counts_labels_duplicates_and_png(tmp_path):
    rows = [{"text": f"sentence number {i} about markets", "label": "pos" if i % 3 else "neg"} for i in range(30)]
    rows += [rows[0], rows[1]]
    src = _write(tmp_path / "c.jsonl", rows + ['{"text": broken'])
    r = inspect_file(src, label=None, png=tmp_path / "h.png")
    assert r["records"] == 32 and r["malformed_lines"] == 1 and "c.jsonl:33" in r["malformed_examples"][0]
    assert r["kinds"] == {"classification": 32} and r["exact_duplicates"] == 2
    assert r["labels"] == {"pos": 21, "neg": 11} and r["field_coverage"]["text"] == 1.0
    assert r["encoding"] == "utf-8" and Path(r["png"]).stat().st_size > 1000
    assert r["char_histogram"].count("\n") >= 1


def test_inspect_ner_and_tokens(tmp_path, tiny_lm):
    _, tok = tiny_lm
    src = _write(tmp_path / "ner.jsonl", [{"tokens": ["Paris", "is", "big"], "tags": ["B-LOC", "O", "O"]}] * 2)
    r = inspect_file(src, tokenizer=tok)
    assert r["kinds"] == {"ner": 2} and r["exact_duplicates"] == 1 and r["tokens"]["max"] >= 3


def test_back_translation_with_one_direction_seq2seq_models(tmp_path):
    """Marian-style translation models: one encoder-decoder per direction (random tiny T5s with a
    character-level tokenizer here: the mechanics, not the quality)."""
    from tokenizers import Regex, Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast, T5Config, T5ForConditionalGeneration

    from seektune.data.augment import BackTranslator

    chars = sorted(set("头疼怎么办 headache what to do"))
    vocab = {"<pad>": 0, "</s>": 1, "<unk>": 2, **{c: i + 3 for i, c in enumerate(chars)}}
    backend = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.Split(Regex("."), behavior="isolated")
    tok = PreTrainedTokenizerFast(tokenizer_object=backend, pad_token="<pad>", eos_token="</s>", unk_token="<unk>")
    for name in ("fwd", "back"):
        cfg = T5Config(vocab_size=len(vocab), d_model=16, d_ff=32, d_kv=8, num_layers=1, num_heads=2,
                       decoder_start_token_id=0, pad_token_id=0, eos_token_id=1)
        T5ForConditionalGeneration(cfg).save_pretrained(tmp_path / name)
        tok.save_pretrained(tmp_path / name)
    with pytest.raises(DataError, match="one-direction"):
        BackTranslator(str(tmp_path / "fwd"), AugmentOptions(back_translate=str(tmp_path / "fwd")))
    opts = AugmentOptions(back_translate=str(tmp_path / "fwd"), back_translate_return=str(tmp_path / "back"),
                          max_new_tokens=4)
    bt = BackTranslator(opts.back_translate, opts)
    assert bt.forward[2] and bt.back[0] is not bt.forward[0]
    out = bt("头疼怎么办")
    assert isinstance(out, str) and out == bt("头疼怎么办")  # greedy: reproducible
