"""`data clean`: every rule on small hand-made cases, rejects with file:line, counts that add up."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from seektune.data.clean import CleanOptions, clean_file, rejects_path_for
from seektune.data.io import DataError
from seektune.data.dedup import minhash_reference, minhash_values
from seektune.data.rules import TermNormaliser, is_no_answer, normalise_whitespace

SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "data"

ANSWER = "高血压患者首先要注意控制食盐摄入量，每天不超过六克，多吃新鲜蔬菜水果，适当运动，必要时服用降压药。"


def _write(path: Path, rows) -> Path:
    with open(path, "w", encoding="utf-8") as f:
        for r in rows:
            f.write((r if isinstance(r, str) else json.dumps(r, ensure_ascii=False)) + "\n")
    return path


def _clean(tmp_path, rows, **opts):
    src = _write(tmp_path / "in.jsonl", rows)
    out = tmp_path / "out.jsonl"
    s = clean_file(src, out, CleanOptions(**opts), show_progress=False)
    kept = [json.loads(l) for l in open(out, encoding="utf-8")]
    rej = [json.loads(l) for l in open(rejects_path_for(out), encoding="utf-8")]
    return s, kept, rej


def test_each_quality_rule_fires_with_reason_and_line(tmp_path):
    rows = [
        {"question": "高血压怎么办？", "answer": ANSWER},                                   # 1 kept
        {"question": "Q", "answer": ""},                                                   # 2 empty_answer
        {"question": "头疼吃什么药？", "answer": "嗯"},                                     # 3 short_answer
        {"question": "胃疼怎么办？", "answer": "不知道。"},                                  # 4 no_answer
        {"question": "乱码", "answer": "Ã©Ã¨ this is mojibake text Ã "},                  # 5 garbled
        {"question": "符号", "answer": "####@@@@$$$$%%%%^^^^~~~~" + "▓▓▓▓▓▓▓▓▓▓▓▓"},       # 6 garbled
        {"question": "长", "answer": "很长" * 100},                                         # 7 overlong
        '{"question": "broken", "answer": ',                                              # 8 read_error
        {"question": "only a question"},                                                   # 9 missing_field
        {"foo": "bar"},                                                                    # 10 unknown_format
    ]
    s, kept, rej = _clean(tmp_path, rows, max_chars=150)
    rules = {r["line"]: r["rule"] for r in rej}
    assert rules == {2: "empty_answer", 3: "short_answer", 4: "no_answer", 5: "garbled", 6: "garbled",
                     7: "overlong", 8: "read_error", 9: "missing_field", 10: "unknown_format"}
    assert all(r["source"].endswith("in.jsonl") and r["reason"] for r in rej)
    assert len(kept) == 1 and s["read"] == 10 and s["kept"] + s["rejected"] == s["read"]
    assert s["kept_plus_rejected_equals_read"] and s["rejected_by_rule"]["garbled"] == 2


def test_exact_and_near_duplicates_chinese(tmp_path):
    near = ANSWER.replace("六克", "6克")  # true Jaccard of the 5-grams: 0.80
    rows = [
        {"question": "高血压怎么办？", "answer": ANSWER},
        {"question": "高血压怎么办？", "answer": ANSWER + "  "},      # exact after whitespace normalisation
        {"question": "高血压怎么办？", "answer": near},               # near duplicate
        {"question": "糖尿病能吃水果吗？", "answer": "血糖控制平稳时可以少量吃低糖水果，如苹果、柚子，避免荔枝和葡萄。"},
    ]
    s, kept, rej = _clean(tmp_path, rows, near_threshold=0.7)
    by = {r["line"]: r for r in rej}
    assert by[2]["rule"] == "exact_duplicate" and by[2]["duplicate_of"].endswith("in.jsonl:1")
    assert by[3]["rule"] == "near_duplicate" and by[3]["similarity"] >= 0.7
    assert [k["question"] for k in kept] == ["高血压怎么办？", "糖尿病能吃水果吗？"]
    s2, kept2, _ = _clean(tmp_path, rows, near_dedup=False)
    assert s2["rejected_by_rule"] == {"exact_duplicate": 1} and len(kept2) == 3


def test_edits_are_counted_per_rule(tmp_path):
    terms = tmp_path / "terms.json"
    terms.write_text(json.dumps({"新冠病毒": "COVID-19", "flu": "influenza"}, ensure_ascii=False), encoding="utf-8")
    rows = [
        {"question": "感染新冠病毒\u200b怎么办？", "answer": "居家隔离，   多休息。\r\n\n\n\n有事打13812345678或写信到 a.b@example.com"},
        {"question": "The flu and influence", "answer": "Rest. ID 110105199003071239 on file."},
        {"question": "ｆｕｌｌ width", "answer": "多喝水，注意休息。"},
    ]
    s, kept, rej = _clean(tmp_path, rows, terms=str(terms), pii=True, unicode_form="NFKC")
    assert not rej
    assert kept[0]["question"] == "感染COVID-19怎么办?"  # NFKC folds full-width punctuation
    assert kept[0]["answer"] == "居家隔离, 多休息。\n\n有事打<PHONE>或写信到 <EMAIL>"  # the deidentify engine
    assert kept[1]["question"] == "The influenza and influence"  # whole words only
    assert kept[1]["answer"] == "Rest. ID <ID_CARD> on file."
    assert kept[2]["question"] == "full width"
    c = s["changed_by_rule"]
    assert c["terms"] == 2 and c["pii_phone"] == 1 and c["pii_email"] == 1 and c["pii_id_card"] == 1
    assert c["whitespace"] == 1 and c["unicode"] == 2


def test_rule_helpers():
    assert normalise_whitespace("  a\u00a0\u00a0b \t\n\n\n\nc\x07 ") == "a b\n\nc"
    assert is_no_answer("N/A") and is_no_answer("不清楚！") and not is_no_answer("不知道的话可以去医院检查。")
    assert TermNormaliser({"COVID": "COVID-19", "新冠": "COVID-19"})("covid 新冠肺炎") == "COVID-19 COVID-19肺炎"


def test_gzip_output(tmp_path):
    import gzip

    src = _write(tmp_path / "in.jsonl", [{"question": "q", "answer": ANSWER}])
    s = clean_file(src, tmp_path / "out.jsonl.gz", show_progress=False)
    assert s["kept"] == 1 and json.loads(gzip.open(tmp_path / "out.jsonl.gz", "rt").readline())["answer"] == ANSWER
    assert (tmp_path / "out.rejects.jsonl").exists()


def test_workers_give_identical_output(tmp_path):
    rows = [{"question": f"问题{i % 7}", "answer": ANSWER[: 20 + i % 13] + str(i % 5)} for i in range(60)]
    s1, k1, r1 = _clean(tmp_path, rows, near_threshold=0.7)
    s2, k2, r2 = _clean(tmp_path, rows, near_threshold=0.7, workers=2)
    assert k1 == k2 and r1 == r2 and s1["rejected"] > 0


def test_undecodable_bytes_are_a_clear_error(tmp_path):
    p = tmp_path / "bad.jsonl"
    good = json.dumps({"question": "q", "answer": "一个足够长的回答"}, ensure_ascii=False) + "\n"
    big = json.dumps({"question": "q", "answer": "长" * 400_000}, ensure_ascii=False) + "\n"  # > the 1 MB sniff
    p.write_bytes(good.encode("utf-8") + big.encode("utf-8") + b'{"question": "\xff\xfe\xfa", "answer": "x"}\n')
    with pytest.raises(DataError, match=r"bad.jsonl.*not valid utf"):
        clean_file(p, tmp_path / "o.jsonl", show_progress=False)


def test_cli_clean_and_bad_file(tmp_path):
    from typer.testing import CliRunner

    from seektune.cli import app

    src = _write(tmp_path / "in.jsonl", [{"question": "q1", "answer": ANSWER}, {"question": "q1", "answer": ANSWER}])
    r = CliRunner().invoke(app, ["data", "clean", str(src), "--out", str(tmp_path / "o.jsonl"), "--json",
                                 "--no-progress"])
    assert r.exit_code == 0, r.output
    assert '"kept": 1' in r.output and '"exact_duplicate": 1' in r.output
    r = CliRunner().invoke(app, ["data", "clean", str(tmp_path / "missing.jsonl"), "--out", str(tmp_path / "x.jsonl")])
    assert r.exit_code == 2 and "not found" in r.output
    r = CliRunner().invoke(app, ["data", "clean", str(src), "--out", str(tmp_path / "x.jsonl"), "--near-threshold", "3"])
    assert r.exit_code == 2 and "--near-threshold" in r.output


def test_real_medical_file_exact_counts(tmp_path):
    src = SHARED / "sft" / "medical_dialogue_zh_internal.gb18030.csv"
    if not src.exists():
        pytest.skip("../shared/data not present")
    s = clean_file(src, tmp_path / "med.jsonl", CleanOptions(near_threshold=0.7, num_perm=64), show_progress=False)
    assert s["read"] == 7644 and s["kept"] + s["rejected"] == 7644
    assert s["rejected_by_rule"]["exact_duplicate"] == 396
    assert s["rejected_by_rule"]["near_duplicate"] > 0
    lines = [json.loads(l)["line"] for l in open(tmp_path / "med.rejects.jsonl", encoding="utf-8")]
    assert len(lines) == s["rejected"] == len(set(lines)) and min(lines) >= 2  # physical CSV lines


def test_fast_minhash_equals_datasketch():
    for text in (ANSWER, "The quick brown fox jumps over the lazy dog", "短"):
        assert (minhash_values(text) == minhash_reference(text)).all()


def test_encoding_detection_survives_a_character_cut_by_the_sample(tmp_path):
    """A UTF-8 Chinese file over the 1 MB sniff whose sample ends inside a character (an io.py bug)."""
    from seektune.data.io import detect_encoding

    p = tmp_path / "big.jsonl"
    for pad in range(3):  # one of these offsets cuts a 3-byte character at the 1 MB and 1 MB - 8 marks
        p.write_bytes(b"x" * pad + "长".encode("utf-8") * 400_000)
        assert detect_encoding(p) == "utf-8"
