"""Tag <-> span conversion, nested-span policies and the CoNLL / span-JSON readers."""

import json
from pathlib import Path

import pytest

from seektune.data.io import DataError
from seektune.data.ner import (ConversionStats, Sentence, convert_scheme, read_conll, read_tagged,
                               resolve_nested, span_record_to_sentence, spans_to_tags, tags_to_spans, write_conll)

SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "data"
SPANS = [(0, 2, "PER"), (2, 3, "PER"), (5, 8, "LOC"), (9, 10, "ORG")]


@pytest.mark.parametrize("scheme", ["bio", "iob", "iobes"])
def test_spans_tags_round_trip(scheme):
    tags = spans_to_tags(11, SPANS, scheme)
    assert tags_to_spans(tags, scheme) == SPANS


def test_scheme_specific_tags():
    assert spans_to_tags(11, SPANS, "bio")[:4] == ["B-PER", "I-PER", "B-PER", "O"]
    # IOB1: I- opens an entity; B- only separates two adjacent entities of one type
    assert spans_to_tags(11, SPANS, "iob")[:4] == ["I-PER", "I-PER", "B-PER", "O"]
    assert spans_to_tags(11, SPANS, "iobes")[:10] == ["B-PER", "E-PER", "S-PER", "O", "O", "B-LOC", "I-LOC",
                                                    "E-LOC", "O", "S-ORG"]


def test_convert_scheme_round_trip_on_real_tags():
    tags = ["O", "B-location", "I-location", "I-location", "O", "B-person", "B-person", "O"]
    iobes = convert_scheme(tags, "bio", "iobes")
    assert iobes == ["O", "B-location", "I-location", "E-location", "O", "S-person", "S-person", "O"]
    assert convert_scheme(iobes, "iobes", "bio") == tags
    assert convert_scheme(convert_scheme(tags, "bio", "iob"), "iob", "bio") == tags


def test_nested_policies_and_counts():
    # 细胞下降 (sym, 0-4) contains 细胞 (bod, 0-2); 下降不明显 (sym, 2-7) crosses the first
    spans = [(0, 4, "sym"), (0, 2, "bod"), (2, 7, "sym"), (8, 9, "dis")]
    st = ConversionStats()
    assert resolve_nested(spans, "outermost", st) == [(0, 4, "sym"), (8, 9, "dis")]
    assert (st.dropped_nested, st.dropped_crossing) == (1, 1)
    st = ConversionStats()
    assert resolve_nested(spans, "innermost", st) == [(0, 2, "bod"), (2, 7, "sym"), (8, 9, "dis")]
    assert (st.dropped_nested, st.dropped_crossing) == (1, 0)
    st = ConversionStats()
    # longest first: 下降不明显 wins over the crossing 细胞下降; 细胞 touches but does not overlap it
    assert resolve_nested(spans, "longest", st) == [(0, 2, "bod"), (2, 7, "sym"), (8, 9, "dis")]
    assert (st.dropped_nested, st.dropped_crossing) == (0, 1)
    with pytest.raises(DataError, match="nested_policy"):
        resolve_nested(spans, "widest")


def test_span_record_inclusive_end_and_invalid_entities():
    st = ConversionStats()
    rec = {"text": "儿童细胞下降。", "entities": [
        {"start_idx": 2, "end_idx": 5, "type": "sym", "entity": "细胞下降"},
        {"start_idx": 2, "end_idx": 3, "type": "bod", "entity": "细胞"},
        {"start_idx": 5, "end_idx": 40, "type": "dis"}]}
    s = span_record_to_sentence(rec, "f.json", 3, "bio", "outermost", st)
    assert s.tokens == list("儿童细胞下降。")
    assert s.tags == ["O", "O", "B-sym", "I-sym", "I-sym", "I-sym", "O"]
    assert st.as_dict() == {"entities": 3, "kept": 1, "dropped_nested": 1, "dropped_crossing": 0,
                            "dropped_invalid": 1}
    s = span_record_to_sentence(rec, "f.json", 3, "bio", "innermost", ConversionStats())
    assert s.tags == ["O", "O", "B-bod", "I-bod", "O", "O", "O"]


def test_read_conll_collects_bad_lines_and_strips_digits(tmp_path):
    p = tmp_path / "w.conll"
    p.write_text("科0\tO\n技1\tO\n\n李0\tB-PER.NAM\n明1\tI-PER.NAM\n\n坏0\n行1\tO\n", encoding="utf-8")
    errors = []
    sents = read_conll(p, strip_digits=True, errors=errors)
    assert [s.tokens for s in sents] == [["科", "技"], ["李", "明"]]
    assert sents[1].tags == ["B-PER.NAM", "I-PER.NAM"] and sents[1].line == 4
    assert len(errors) == 1 and errors[0]["line"] == 7 and "token<TAB>tag" in errors[0]["reason"]
    with pytest.raises(DataError, match=r"w.conll:7"):
        read_conll(p, strip_digits=True)


def test_conll_write_read_round_trip(tmp_path):
    sents = [Sentence(["Empire", "State", "Building"], ["B-location", "I-location", "I-location"], "x", 1),
             Sentence(["hi"], ["O"], "x", 5)]
    write_conll(tmp_path / "a.conll", sents)
    back = read_conll(tmp_path / "a.conll")
    assert [(s.tokens, s.tags) for s in back] == [(s.tokens, s.tags) for s in sents]


def test_tokens_tags_jsonl_length_mismatch_is_rejected(tmp_path):
    p = tmp_path / "t.jsonl"
    p.write_text(json.dumps({"tokens": ["a", "b"], "tags": ["O", "B-X"]}) + "\n"
                 + json.dumps({"tokens": ["a", "b"], "tags": ["O"]}) + "\n", encoding="utf-8")
    errors = []
    sents = read_tagged(p, errors=errors)
    assert len(sents) == 1 and errors[0]["line"] == 2 and "2 tokens but 1 tags" in errors[0]["reason"]


@pytest.mark.skipif(not (SHARED / "ner" / "cmeee_v2_dev.spans.json").exists(), reason="../shared/data absent")
def test_real_cmeee_conversion_counts_what_the_policy_dropped():
    st = ConversionStats()
    sents = read_tagged(SHARED / "ner" / "cmeee_v2_dev.spans.json", "bio", "outermost", stats=st)
    assert len(sents) == 5000
    assert st.kept + st.dropped_nested + st.dropped_crossing + st.dropped_invalid <= st.entities
    assert st.dropped_nested > 0  # CMeEE nests entities (sym contains bod)
    # the first sentence: 细胞下降 (sym) contains 细胞 (bod); outermost keeps the symptom
    assert sents[0].tags[30:34] == ["B-sym", "I-sym", "I-sym", "I-sym"]
    for s in sents[:200]:
        assert len(s.tokens) == len(s.tags)
