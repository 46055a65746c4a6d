"""De-identification (issue 23 item 5): Presidio with Chinese recognizers, tags and pseudonyms, records
left as they were outside the spans, the CLI, the pipeline step, no network; the long form measures
precision/recall on real records with planted identifiers (bench/deid_eval.py)."""

from __future__ import annotations

import importlib.util
import json
import os
import re
import socket
from pathlib import Path

import pytest

from conftest import REPO, SHARED
from seektune.data.deidentify import DeidentifyOptions
from seektune.data.deidentify.checksums import id_check_char, luhn_check_digit, luhn_valid, valid_resident_id

LONG = os.environ.get("SEEKTUNE_LONG") == "1"


def _id(first17: str) -> str:
    return first17 + id_check_char(first17)


VALID_ID = _id("11010519900307123")            # Beijing, born 1990-03-07
BAD_ID = VALID_ID[:17] + ("0" if VALID_ID[17] != "0" else "1")
CARD = "622202123456789" + luhn_check_digit("622202123456789")  # 16 digits, Luhn-valid
BAD_CARD = CARD[:15] + str((int(CARD[15]) + 1) % 10)


@pytest.fixture(scope="module")
def deid():
    from seektune.data.deidentify.engine import Deidentifier

    return Deidentifier()


@pytest.fixture(scope="module")
def pseudo():
    from seektune.data.deidentify.engine import Deidentifier

    return Deidentifier(DeidentifyOptions(mode="pseudonym", seed=7))


def found(deid, text):
    return [(s.type, s.text) for s in deid(text)[1]]


def test_resident_id_needs_a_valid_checksum_and_birth_date(deid):
    assert valid_resident_id(VALID_ID) and not valid_resident_id(BAD_ID)
    assert found(deid, f"我的身份证号是{VALID_ID}。") == [("ID_CARD", VALID_ID)]
    assert found(deid, f"订单编号{BAD_ID}。") == []
    # an ID-shaped number with a wrong check digit that happens to pass Luhn is not a bank card either
    luhn_ok = next(f + c for f in (VALID_ID[:17], "32010219850612345") for c in "0123456789"
                   if c != id_check_char(f) and luhn_valid(f + c))
    assert found(deid, f"订单编号{luhn_ok}。") == []
    no_date = _id("11010519901307123")  # month 13
    assert found(deid, f"编号{no_date}") == []
    assert found(deid, f"身份证号{VALID_ID}1") == []  # inside a longer digit run
    legacy = "110105900307123"  # 15 digits, 1990-03-07: only after a word that says it is an ID
    assert found(deid, f"旧身份证{legacy}") == [("ID_CARD", legacy)] and found(deid, f"批号{legacy}") == []


def test_bank_cards_must_pass_luhn(deid):
    assert luhn_valid(CARD) and not luhn_valid(BAD_CARD)
    grouped = " ".join(CARD[i:i + 4] for i in range(0, 16, 4))
    assert found(deid, f"银行卡号{CARD}，") == [("BANK_CARD", CARD)]
    assert found(deid, f"卡号：{grouped}。") == [("BANK_CARD", grouped)]
    assert found(deid, f"流水号{BAD_CARD}，") == []
    assert found(deid, "Card 4111 1111 1111 1111 on file.") == [("BANK_CARD", "4111 1111 1111 1111")]


def test_phone_boundaries(deid):
    assert found(deid, "电话13812345678请联系") == [("PHONE", "13812345678")]
    assert found(deid, "手机 +86 138-1234-5678。") == [("PHONE", "+86 138-1234-5678")]
    assert found(deid, "编号138123456789012") == []          # 15 digits: not a phone
    assert found(deid, "编号013812345678") == []             # preceded by a digit
    assert found(deid, "随访电话 010-62345678，") == [("PHONE", "010-62345678")]
    assert found(deid, "座机0571-88776655") == [("PHONE", "0571-88776655")]
    assert found(deid, "血压 130/85 mmHg，心率72次/分，血糖7.8mmol/L") == []
    assert found(deid, "Call me at (212) 555-0198.") == [("PHONE", "(212) 555-0198")]


def test_email_name_address_dob_mrn_and_decoys(deid):
    assert found(deid, "邮箱zhang.san@qq.com联系") == [("EMAIL", "zhang.san@qq.com")]
    assert found(deid, "患者张三，男，45岁") == [("PERSON", "张三")]
    assert found(deid, "我叫欧阳娜娜，今年30岁") == [("PERSON", "欧阳娜娜")]
    assert found(deid, "谢谢李医生") == [("PERSON", "李")]
    assert found(deid, "My name is John Brown.") == [("PERSON", "John Brown")]
    assert found(deid, "地址：浙江省杭州市西湖区文三路123号3栋201室。") == [("ADDRESS", "浙江省杭州市西湖区文三路123号3栋201室")]
    assert found(deid, "出生日期：1985年3月12日，") == [("DATE_OF_BIRTH", "1985年3月12日")]
    assert found(deid, "病历号：ZY20230045，住院号 123456") == [("MRN", "ZY20230045"), ("MRN", "123456")]
    for decoy in ("患者高血压病史10年", "谢谢医生！", "主任医生建议复查", "于2023年5月12日复查", "去北京看病",
                  "广东省人民医院", "患者常伴头晕", "患者曾有胃溃疡", "Dr. Since 2019 I have had pain."):
        assert found(deid, decoy) == [], decoy


def test_tags_and_consistent_checksum_valid_pseudonyms(deid, pseudo):
    text = f"患者张三，电话138-1234-5678，身份证{VALID_ID}，卡号{CARD}，邮箱a.b@163.com。"
    new, _ = deid(text)
    assert new == "患者<PERSON>，电话<PHONE>，身份证<ID_CARD>，卡号<BANK_CARD>，邮箱<EMAIL>。"
    a, sa = pseudo(text)
    b, _ = pseudo(f"复诊：电话13812345678，身份证{VALID_ID}。")
    fake = {s.type: s.new for s in sa}
    assert set(fake) == {"PERSON", "PHONE", "ID_CARD", "BANK_CARD", "EMAIL"}
    assert fake["PHONE"] != "138-1234-5678" and re.fullmatch(r"1[3-9]\d-\d{4}-\d{4}", fake["PHONE"])
    assert fake["PHONE"].replace("-", "") in b and fake["ID_CARD"] in b  # same value, same fake, any layout
    assert valid_resident_id(fake["ID_CARD"]) and fake["ID_CARD"] != VALID_ID
    assert luhn_valid(fake["BANK_CARD"]) and len(fake["BANK_CARD"]) == len(CARD) and fake["BANK_CARD"] != CARD
    assert fake["EMAIL"].endswith("@example.com") and len(fake["PERSON"]) == 2
    assert pseudo(text)[0] == a  # deterministic
    from seektune.data.deidentify.engine import Deidentifier

    other = Deidentifier(DeidentifyOptions(mode="pseudonym", seed=8), analyzer=deid.analyzer)
    assert other(text)[0] != a  # the seed is the key
    only = Deidentifier(DeidentifyOptions(types="phone,email"), analyzer=deid.analyzer)
    assert only(text)[0] == f"患者张三，电话<PHONE>，身份证{VALID_ID}，卡号{CARD}，邮箱<EMAIL>。"


def test_records_change_only_inside_spans(deid, pseudo):
    from seektune.data.deidentify.files import deidentify_record

    rec = {"id": "13812345678", "label": "患者张三", "_meta": {"phone": "13812345678"}, "score": 13812345678,
           "messages": [{"role": "user", "content": "我叫王小明，电话13812345678，头痛三天。"},
                        {"role": "assistant", "content": "建议多休息。"}]}
    for d in (deid, pseudo):
        spans: list = []
        out = deidentify_record(rec, d, found=spans)
        assert {k: v for k, v in out.items() if k != "messages"} == {k: v for k, v in rec.items() if k != "messages"}
        assert out["messages"][1] == rec["messages"][1] and out["messages"][0]["role"] == "user"
        (path, original, sp), = spans
        assert path == "messages[0].content" and original == rec["messages"][0]["content"]
        rebuilt, pos = "", 0
        for s in sp:  # every character outside a span is the original one
            assert original[s.start:s.end] == s.text
            rebuilt += original[pos:s.start] + s.new
            pos = s.end
        assert rebuilt + original[pos:] == out["messages"][0]["content"]
        assert out["messages"][0]["content"].endswith("，头痛三天。") and [s.type for s in sp] == ["PERSON", "PHONE"]


def _write(path: Path, rows) -> Path:
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    return path


ROWS = [{"instruction": "我叫王小明，电话13812345678，头痛怎么办？", "input": "", "output": "多休息。", "id": 1},
        {"instruction": "感冒了怎么办？", "input": "", "output": "多喝水。", "id": 2},
        {"instruction": f"身份证{VALID_ID}，住院号123456", "input": "", "output": "请到门诊复查。", "id": 3}]


def test_cli_deidentify_end_to_end(tmp_path):
    from typer.testing import CliRunner

    from seektune.cli import app

    src = _write(tmp_path / "in.jsonl", ROWS)
    src.write_text(src.read_text(encoding="utf-8") + "{not json\n", encoding="utf-8")
    out = tmp_path / "out.jsonl"
    r = CliRunner().invoke(app, ["data", "deidentify", str(src), "--out", str(out), "--json", "--no-progress"])
    assert r.exit_code == 0, r.output
    rows = [json.loads(line) for line in out.read_text(encoding="utf-8").splitlines()]
    assert rows[0]["instruction"] == "我叫<PERSON>，电话<PHONE>，头痛怎么办？" and rows[1] == ROWS[1]
    assert rows[2]["instruction"] == "身份证<ID_CARD>，住院号<MRN>" and rows[2]["id"] == 3
    rep = json.loads((tmp_path / "out.report.json").read_text(encoding="utf-8"))
    assert rep["records_scanned"] == 3 and rep["records_changed"] == 2 and rep["rejected"] == 1 and rep["read"] == 4
    assert sorted(rep["spans_by_type"].items()) == [("ID_CARD", 1), ("MRN", 1), ("PERSON", 1), ("PHONE", 1)]
    assert rep["records_per_s"] and (tmp_path / "out.rejects.jsonl").read_text(encoding="utf-8").count("\n") == 1
    sample = [json.loads(line) for line in (tmp_path / "out.sample.jsonl").read_text(encoding="utf-8").splitlines()]
    assert len(sample) == 2 and sample[0]["spans"][1] == {
        "field": "instruction", "type": "PHONE", "start": 8, "end": 19, "before": "13812345678", "after": "<PHONE>",
        "context": "我叫王小明，电话13812345678，头痛怎么办？"}
    r = CliRunner().invoke(app, ["data", "deidentify", str(src), "--out", str(out), "--mode", "pseudonym",
                                 "--types", "PHONE", "--no-progress"])
    assert r.exit_code == 0, r.output
    first = json.loads(out.read_text(encoding="utf-8").splitlines()[0])["instruction"]
    assert first.startswith("我叫王小明，电话1") and "13812345678" not in first
    r = CliRunner().invoke(app, ["data", "deidentify", str(src), "--out", str(out), "--types", "PHONE,SSN"])
    assert r.exit_code == 2 and "--types" in r.output and "SSN" in r.output


def test_pipeline_step_and_unknown_option(tmp_path):
    from typer.testing import CliRunner

    from seektune.cli import app
    from seektune.config import ConfigError, load_config

    src = _write(tmp_path / "d.jsonl", ROWS)
    y = tmp_path / "c.yaml"
    y.write_text(f"data:\n  train: {src}\n  pipeline:\n    - step: deidentify\n      mode: pseudonym\n"
                 f"      seed: 3\n    - step: clean\n", encoding="utf-8")
    r = CliRunner().invoke(app, ["data", "run", str(y), "--out", str(tmp_path / "o")])
    assert r.exit_code == 0, r.output
    assert "01_deidentify" in r.output and (tmp_path / "o" / "01_deidentify.sample.jsonl").exists()
    text = (tmp_path / "o" / "02_clean.jsonl").read_text(encoding="utf-8")
    assert "13812345678" not in text and VALID_ID not in text and "王小明" not in text and "感冒了怎么办" in text
    steps = json.loads((tmp_path / "o" / "pipeline.json").read_text(encoding="utf-8"))["steps"]
    assert steps[0]["summary"]["records_changed"] == 2
    y.write_text("data:\n  pipeline:\n    - step: deidentify\n      modes: tag\n", encoding="utf-8")
    with pytest.raises(ConfigError, match=r"data.pipeline.0.*no option 'modes'"):
        load_config(y)
    y.write_text("data:\n  pipeline:\n    - step: deidentify\n      types: [PHONE, SSN]\n", encoding="utf-8")
    with pytest.raises(ConfigError, match=r"unknown entity type 'SSN'"):
        load_config(y)


def test_clean_pii_uses_the_deidentify_engine(tmp_path):
    from seektune.data.clean import CleanOptions, clean_file

    src = _write(tmp_path / "in.jsonl", [{"question": "我叫王小明，电话13812345678", "answer": "写信到 a.b@example.com 即可"}])
    s = clean_file(src, tmp_path / "o.jsonl", CleanOptions(pii=True), show_progress=False)
    kept = json.loads((tmp_path / "o.jsonl").read_text(encoding="utf-8"))
    assert kept == {"question": "我叫<PERSON>，电话<PHONE>", "answer": "写信到 <EMAIL> 即可"}
    assert s["changed_by_rule"] == {"pii_email": 1, "pii_person": 1, "pii_phone": 1}


def test_nothing_is_downloaded(monkeypatch):
    """No socket may open while the engine is built and run (tldextract would fetch its suffix list)."""
    from seektune.data.deidentify import zh_recognizers
    from seektune.data.deidentify.engine import Deidentifier

    def refuse(*a, **k):
        raise AssertionError(f"network access attempted: {a[:2]}")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    monkeypatch.setattr(socket, "getaddrinfo", refuse)
    monkeypatch.setattr(zh_recognizers.OfflineEmailRecognizer, "_extract", None)  # a fresh tldextract instance
    d = Deidentifier()
    text = "联系 x@qq.com、y@hospital.org.cn、z@nhs.uk，not-an-email@host.invalidtld, 电话13812345678"
    assert [s.type for s in d(text)[1]] == ["EMAIL", "EMAIL", "EMAIL", "PHONE"]


# ------------------------------------------------------------------------- measured: bench/deid_eval.py

def _bench():
    spec = importlib.util.spec_from_file_location("deid_eval", REPO / "bench" / "deid_eval.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.mark.slow
@pytest.mark.skipif(not (SHARED / "sft").exists(), reason="../shared/data absent")
def test_precision_recall_on_real_records_with_planted_identifiers():
    """Short form: 200 real records; SEEKTUNE_LONG=1: 3,000. The types with a checksum or a fixed shape
    (ID, phone, card, e-mail) must reach precision and recall >= 0.95, and nothing outside a span changes."""
    res = _bench().run(n=3000 if LONG else 200, seed=11)
    assert res["outside_spans_unchanged"]
    rows = res["scores"]["overlap"]
    for t in ("ID_CARD", "PHONE", "BANK_CARD", "EMAIL"):
        assert rows[t]["gold"] > 0, t
        assert rows[t]["precision"] >= 0.95 and rows[t]["recall"] >= 0.95, (t, rows[t])
    assert rows["all"]["precision"] >= 0.9 and rows["all"]["recall"] >= 0.8, rows["all"]
