"""Precision and recall of `seektune data deidentify` on real records with planted identifiers.

How the labelled set is built (seeded, so every run builds the same set):

1. N real records are drawn from ../shared/data: Huatuo (Chinese medical instructions), the Chinese
   doctor-patient CSV, and ChatDoctor (English patient questions and answers), in the share given by
   --mix. One text field of each record (question or answer) is used.
2. 70% of the records get 1-3 synthetic identifiers planted at random sentence boundaries, each in a
   natural template ("我的身份证号是{}", "联系电话：{}", "患者{}，男，45岁", "My name is {}"). Values are
   generated here, independently of the pseudonym code: checksum-valid IDs over every province,
   mobiles and landlines in several layouts, Luhn-valid cards, e-mails, addresses from a city list
   that is larger than the recognizer's, names from a surname list that includes surnames the
   dictionary lacks. Some templates carry no cue word on purpose (`{}说最近头疼`, `{} asked about
   this`, `Patient: {}`): the recognizers are expected to miss them, and the recall says how often
   that costs. A piece is never planted inside another one. The gold span is the value.
3. 15% get decoys that must not be detected: 18-digit numbers with a wrong check character,
   16-digit numbers that fail Luhn, a mobile inside a longer digit run, lab values (血压 130/85),
   dates that are not birth dates, words that start with a surname character (患者高血压, 谢谢医生),
   place names without an address (去北京看病).
4. 15% stay untouched: what is detected there is detected in real text.

A detection is a true positive when it has the type of a gold span and overlaps it ("overlap"
match); the "exact" columns need the same start and end. Every other detection is a false
positive, including detections in the original real text (Huatuo writes 王先生 / 李女士, which the
name recognizer is built to catch); `--show-fp` lists them.

    python bench/deid_eval.py [--n 1500] [--seed 1] [--json deid.json] [--show-fp 20]
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import random
import re
import string
import sys
import time
from collections import Counter, defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from seektune.data.deidentify.lexicon import NAME_TITLES_AFTER, SURNAMES_SINGLE  # noqa: E402
from seektune.data.deidentify.checksums import id_check_char, luhn_check_digit, luhn_valid  # noqa: E402
from seektune.data.deidentify.options import ENTITY_TYPES, DeidentifyOptions  # noqa: E402
from seektune.data.io import read_records  # noqa: E402

SHARED = ROOT.parent / "shared" / "data" / "sft"
SOURCES = {  # name: (file, language, fields to plant into)
    "huatuo": (SHARED / "huatuo_med_zh.alpaca.jsonl", "zh", ("instruction", "output")),
    "dialogue": (SHARED / "medical_dialogue_zh_internal.gb18030.csv", "zh", ("ask", "answer")),
    "chatdoctor": (SHARED / "chatdoctor5k_en.alpaca.json", "en", ("input", "output")),
}

# ----------------------------------------------------------------------------------- value makers
PROVINCE_CODES = (11, 12, 13, 14, 15, 21, 22, 23, 31, 32, 33, 34, 35, 36, 37, 41, 42, 43, 44, 45, 46, 50, 51,
                  52, 53, 54, 61, 62, 63, 64, 65)
SURNAMES = "王李张刘陈杨黄赵吴周徐孙马朱胡郭何林罗高郑梁谢宋唐许韩冯邓曹彭曾肖田董袁潘蒋蔡余杜叶程苏魏吕丁任沈" \
           "姚卢姜崔钟谭陆汪范廖石金韦贾夏方邹熊白孟秦邱侯江尹薛段雷龙史陶贺毛郝顾龚邵万覃武钱戴严莫孔向汤" \
           "逯禹巫佘"  # the last four are not in the recognizer's dictionary
DOUBLE_SURNAMES = ("欧阳", "司马", "诸葛", "上官")
GIVEN = "伟芳娜秀英敏静丽强磊军洋勇艳杰娟涛明超霞平刚桂兰华玉萍红鹏建文辉力宇浩然欣怡佳琪子轩梓涵晨雨思博俊" \
        "志国海燕春梅亮丹琳晓峰鑫婷倩"
EN_FIRST = ("Michael", "Sarah", "David", "Jennifer", "Robert", "Emily", "William", "Olivia", "Richard", "Sophia",
            "Joseph", "Hannah", "Charles", "Chloe", "Andrew", "Megan")
EN_LAST = ("Anderson", "Thompson", "Martinez", "Robinson", "Walker", "Lewis", "Harris", "Jackson", "White",
           "Lopez", "Hill", "Adams", "Nelson", "Carter", "Mitchell", "Turner")
PROVINCES = ("浙江省", "江苏省", "广东省", "山东省", "河南省", "四川省", "湖北省", "湖南省", "福建省", "安徽省",
             "河北省", "云南省", "陕西省", "辽宁省", "江西省")
CITIES = ("杭州市", "南京市", "广州市", "济南市", "郑州市", "成都市", "武汉市", "长沙市", "福州市", "合肥市",
          "丽水市", "鹤壁市", "铜仁市", "六盘水市", "张家口市", "牡丹江市", "衢州市", "莆田市", "黄冈市", "遂宁市")
MUNICIPALITIES = ("北京市", "上海市", "天津市", "重庆市")
DISTRICTS = ("西湖区", "鼓楼区", "天河区", "历下区", "金水区", "武侯区", "江汉区", "岳麓区", "莲都区", "淇滨区",
             "碧江区", "钟山区", "桥西区", "东安区", "柯城区", "城厢区", "黄州区", "船山区", "朝阳区", "浦东新区")
TOWNS = ("城关镇", "新桥镇", "龙山街道", "长安镇", "青云乡")
VILLAGES = ("李家村", "前进村", "王庄村", "红星村")
ROADS = ("文三路", "中山路", "解放大道", "建设路", "人民南路", "长江路", "学府街", "和平巷", "新华路", "青年大街")
EMAIL_DOMAINS = ("qq.com", "163.com", "126.com", "gmail.com", "sina.com", "outlook.com", "hospital.org.cn",
                 "yahoo.co.uk", "foxmail.com", "hotmail.com")


def _digits(rng, n):
    return "".join(rng.choice(string.digits) for _ in range(n))


def make_id(rng):
    born = dt.date(1940, 1, 1) + dt.timedelta(days=rng.randrange(80 * 365))
    first17 = f"{rng.choice(PROVINCE_CODES)}{_digits(rng, 4)}{born:%Y%m%d}{_digits(rng, 3)}"
    v = first17 + id_check_char(first17)
    return v.lower() if v.endswith("X") and rng.random() < 0.3 else v


def make_legacy_id(rng):
    born = dt.date(1930, 1, 1) + dt.timedelta(days=rng.randrange(68 * 365))
    return f"{rng.choice(PROVINCE_CODES)}{_digits(rng, 4)}{born:%y%m%d}{_digits(rng, 3)}"


def make_mobile(rng):
    d = rng.choice("3456789") + _digits(rng, 9)
    n = "1" + d
    return rng.choice((n, f"{n[:3]}-{n[3:7]}-{n[7:]}", f"{n[:3]} {n[3:7]} {n[7:]}", f"+86 {n}", f"+86-{n}"))


def make_landline(rng):
    area = rng.choice(("010", "021", "020", "022", "0571", "0755", "0512", "0531", "0371", "0731", "0851"))
    num = str(rng.randint(2, 8)) + _digits(rng, 7 if len(area) == 3 else rng.choice((6, 7)))
    return rng.choice((f"{area}-{num}", f"({area}){num}", f"{area}-{num}", f"{area} {num}"))


def make_us_phone(rng):
    area, ex = rng.choice(("212", "415", "617", "312", "206", "303", "713")), f"{rng.randint(2, 9)}{_digits(rng, 2)}"
    line = _digits(rng, 4)
    return rng.choice((f"({area}) {ex}-{line}", f"{area}-{ex}-{line}", f"+1 {area} {ex} {line}"))


def make_card(rng, lang="zh"):
    if lang == "zh":
        n = rng.choice((16, 19))
        payload = rng.choice(("622202", "621700", "622848", "622588", "621226", "625807")) + _digits(rng, n - 7)
    else:
        n = 16
        payload = rng.choice(("4", "51", "52", "55")) + ""
        payload += _digits(rng, n - 1 - len(payload))
    d = payload + luhn_check_digit(payload)
    if rng.random() < 0.5:
        return d
    sep = rng.choice(" -")
    return sep.join(d[i:i + 4] for i in range(0, len(d), 4))


def make_email(rng):
    local = "".join(rng.choice(string.ascii_lowercase) for _ in range(rng.randint(3, 8)))
    local += rng.choice(("", ".", "_")) + rng.choice(("", _digits(rng, rng.randint(1, 4)), "wang", "li"))
    return local.strip("._") + "@" + rng.choice(EMAIL_DOMAINS)


def make_address(rng):
    road = f"{rng.choice(ROADS)}{rng.randint(1, 999)}号"
    room = rng.choice(("", f"{rng.randint(1, 30)}栋{rng.randint(1, 3)}单元{rng.randint(101, 2405)}室",
                       f"{rng.randint(1, 12)}号楼{rng.randint(101, 1804)}室"))
    kind = rng.random()
    if kind < 0.3:
        return f"{rng.choice(PROVINCES)}{rng.choice(CITIES)}{rng.choice(DISTRICTS)}{road}{room}"
    if kind < 0.5:
        return f"{rng.choice(MUNICIPALITIES)}{rng.choice(DISTRICTS)}{road}{room}"
    if kind < 0.7:
        return f"{rng.choice(CITIES)}{rng.choice(DISTRICTS)}{road}"
    if kind < 0.85:
        return f"{rng.choice(PROVINCES)}{rng.choice(CITIES)}{rng.choice(TOWNS)}{rng.choice(VILLAGES)}"
    return road + room


def make_zh_name(rng):
    s = rng.choice(DOUBLE_SURNAMES) if rng.random() < 0.05 else rng.choice(SURNAMES)
    return s + "".join(rng.choice(GIVEN) for _ in range(rng.choice((1, 2, 2))))


def make_en_name(rng):
    return f"{rng.choice(EN_FIRST)} {rng.choice(EN_LAST)}"


def make_dob(rng, lang="zh"):
    d = dt.date(1935, 1, 1) + dt.timedelta(days=rng.randrange(85 * 365))
    if lang == "zh":
        return rng.choice((f"{d.year}年{d.month}月{d.day}日", f"{d:%Y-%m-%d}", f"{d:%Y/%m/%d}", f"{d:%Y.%m.%d}",
                           f"{d.year}年{d.month:02d}月{d.day:02d}日"))
    return rng.choice((f"{d:%B} {d.day}, {d.year}", f"{d:%m/%d/%Y}", f"{d.day} {d:%B} {d.year}"))


def make_mrn(rng):
    return rng.choice((f"ZY{_digits(rng, 8)}", _digits(rng, rng.randint(6, 10)), f"MZ{_digits(rng, 6)}",
                       f"{rng.choice('ABH')}{_digits(rng, 7)}"))


# templates: (type, language, template with {} for the value, value maker); "nocue" ones are expected misses
def _templates():
    z, e = "zh", "en"
    return [
        ("ID_CARD", z, "我的身份证号是{}。", make_id), ("ID_CARD", z, "身份证：{}，", make_id),
        ("ID_CARD", z, "患者证件号码{}。", make_id), ("ID_CARD", z, "（{}）", make_id),
        ("ID_CARD", z, "旧身份证号{}。", make_legacy_id), ("ID_CARD", e, " ID number {}.", make_id),
        ("PHONE", z, "联系电话：{}。", make_mobile), ("PHONE", z, "有问题打我手机{}", make_mobile),
        ("PHONE", z, "电话{}，", make_landline), ("PHONE", z, "科室座机{}。", make_landline),
        ("PHONE", z, "回电{}即可。", make_mobile), ("PHONE", e, " Call me at {}.", make_us_phone),
        ("PHONE", e, " My number is {}.", make_us_phone), ("PHONE", e, " Phone: {}.", make_mobile),
        ("BANK_CARD", z, "银行卡号{}，", make_card), ("BANK_CARD", z, "请转账到{}。", make_card),
        ("BANK_CARD", z, "医保关联卡{}", make_card),
        ("BANK_CARD", e, " My card number is {}.", lambda r: make_card(r, "en")),
        ("EMAIL", z, "邮箱：{}。", make_email), ("EMAIL", z, "报告发到{}吧", make_email),
        ("EMAIL", e, " Email me at {}.", make_email), ("EMAIL", e, " ({})", make_email),
        ("ADDRESS", z, "家庭住址：{}。", make_address), ("ADDRESS", z, "我住在{}，", make_address),
        ("ADDRESS", z, "检查报告寄到{}。", make_address), ("ADDRESS", z, "{}的社区医院", make_address),
        ("PERSON", z, "患者{}，男，45岁。", make_zh_name), ("PERSON", z, "我叫{}，", make_zh_name),
        ("PERSON", z, "姓名：{}。", make_zh_name), ("PERSON", z, "联系人{}。", make_zh_name),
        ("PERSON", z, "{}女士您好，", lambda r: make_zh_name(r)), ("PERSON", z, "主治医生{}说", make_zh_name),
        ("PERSON", z, "家属{}陪同就诊。", make_zh_name), ("PERSON", z, "{}说最近头疼。", make_zh_name),  # nocue
        ("PERSON", e, " My name is {}.", make_en_name), ("PERSON", e, " Dr. {} here.",
                                                          lambda r: r.choice(EN_LAST)),
        ("PERSON", e, " Patient: {}.", make_en_name), ("PERSON", e, " {} asked about this.", make_en_name),  # nocue
        ("DATE_OF_BIRTH", z, "出生日期：{}。", make_dob), ("DATE_OF_BIRTH", z, "我生日是{}，", make_dob),
        ("DATE_OF_BIRTH", z, "患者生于{}，", make_dob), ("DATE_OF_BIRTH", z, "{}出生，", make_dob),  # nocue
        ("DATE_OF_BIRTH", e, " I was born on {}.", lambda r: make_dob(r, "en")),
        ("DATE_OF_BIRTH", e, " DOB: {}.", lambda r: make_dob(r, "en")),
        ("MRN", z, "病历号：{}。", make_mrn), ("MRN", z, "住院号{}，", make_mrn), ("MRN", z, "门诊号 {}", make_mrn),
        ("MRN", e, " MRN: {}.", make_mrn), ("MRN", e, " Medical record number {}.", make_mrn),
    ]


TEMPLATES = _templates()


def _bad_id(rng):
    v = make_id(rng)
    return v[:17] + rng.choice([c for c in "0123456789X" if c != v[17].upper()])


def _bad_card(rng):
    while True:
        d = "62" + _digits(rng, 14)
        if not luhn_valid(d):
            return d


DECOYS = {
    "zh": [lambda r: f"订单编号{_bad_id(r)}。", lambda r: f"流水号{_bad_card(r)}，",
           lambda r: f"批号1{r.choice('3456789')}{_digits(r, 13)}。", lambda r: "血压 130/85 mmHg，",
           lambda r: f"血糖{r.randint(4, 12)}.{r.randint(0, 9)}mmol/L，", lambda r: "白细胞 12.3×10^9/L，",
           lambda r: f"于2023年{r.randint(1, 12)}月{r.randint(1, 28)}日复查，", lambda r: "2021-03-04就诊，",
           lambda r: "患者高血压病史10年，", lambda r: "患者常伴头晕，", lambda r: "病人黄疸明显，",
           lambda r: "患者全身乏力，", lambda r: "患者白细胞升高，", lambda r: "谢谢医生！", lambda r: "主任医生建议复查。",
           lambda r: "去北京看病，", lambda r: "在上海的医院做了手术，", lambda r: "广东省人民医院的医生说，",
           lambda r: f"服药{r.randint(2, 30)}天，", lambda r: "患者于昨日入院，", lambda r: "患者曾有胃溃疡，"],
    "en": [lambda r: f" Order {_bad_id(r)}.", lambda r: f" Reference {_bad_card(r)}.",
           lambda r: " Blood pressure 130/85 mmHg.", lambda r: " I visited on March 3, 2021.",
           lambda r: f" Glucose {r.randint(4, 12)}.{r.randint(0, 9)} mmol/L.", lambda r: " Dr. said to rest.",
           lambda r: " I took 500 mg twice a day.", lambda r: " Since 2019 I have had pain."],
}


def _boundaries(text: str, gold=()) -> list[int]:
    """Sentence and clause ends, never inside a planted piece (e-mails, dates and "Dr. X" hold dots)."""
    cuts = [0, len(text)] + [m.end() for m in re.finditer(r"[。！？，；]|[.!?;](?=\s|$)\s?", text)]
    return sorted(set(c for c in cuts if not any(s < c < e for s, e, _ in gold)))


def _insert(text: str, pos: int, piece: str, gold: list, value_off: int | None, etype: str | None, vlen: int = 0):
    """Insert piece at pos; shift gold spans after pos; add the new gold span (and the piece's extent)."""
    if piece.startswith(" ") and (pos == 0 or text[pos - 1].isspace()):
        piece, value_off = piece[1:], (value_off - 1 if value_off is not None else None)
    if pos < len(text) and (text[pos].isascii() and text[pos].isalnum()) and \
            (piece[-1] in ".)" or (piece[-1].isascii() and piece[-1].isalnum())):
        # a value or a sentence end right before a digit or word would run into it ("卡6222...45岁"):
        # no writer does that, so keep them apart
        piece += " " if text[pos].isalpha() else "，"
    if pos > 0 and text[pos - 1].isascii() and text[pos - 1].isalnum() and piece[0].isascii() and piece[0].isalnum():
        piece = (" " if piece[0].isalpha() else "，") + piece
        value_off = value_off + 1 if value_off is not None else None
    shifted = [(s + len(piece) if s >= pos else s, e + len(piece) if s >= pos else e, t) for s, e, t in gold]
    if etype is not None:
        shifted.append((pos + value_off, pos + value_off + vlen, etype))
    shifted.append((pos, pos + len(piece), "_piece"))  # later pieces go around this one, never into it
    return text[:pos] + piece + text[pos:], sorted(shifted)


def build_set(n: int, seed: int = 1, mix=(0.4, 0.3, 0.3)) -> list[dict]:
    """[{source, line, lang, kind: planted|decoy|untouched, text, gold: [(start, end, type)]}]."""
    rng = random.Random(seed)
    items = []
    for (name, (path, lang, fields)), share in zip(SOURCES.items(), mix):
        if not path.exists():
            continue
        recs = [r for r in read_records(path)]
        for rec in rng.sample(recs, min(len(recs), round(n * share))):
            field = rng.choice([f for f in fields if str(rec.data.get(f) or "").strip()] or [fields[0]])
            items.append({"source": name, "line": rec.line, "lang": lang, "field": field,
                          "text": str(rec.data.get(field) or "")})
    rng.shuffle(items)
    by_lang = defaultdict(list)
    for t in TEMPLATES:
        by_lang[t[1]].append(t)
    for i, it in enumerate(items):
        text, gold, r = it["text"], [], rng.random()
        if r < 0.70:
            it["kind"] = "planted"
            for _ in range(rng.choice((1, 1, 2, 3))):
                etype, _, tpl, make = rng.choice(by_lang[it["lang"]])
                value = make(rng)
                piece = tpl.format(value)
                pos = rng.choice(_boundaries(text, gold))
                text, gold = _insert(text, pos, piece, gold, tpl.index("{}"), etype, len(value))
        elif r < 0.85:
            it["kind"] = "decoy"
            for _ in range(rng.choice((1, 2))):
                piece = rng.choice(DECOYS[it["lang"]])(rng)
                text, gold = _insert(text, rng.choice(_boundaries(text, gold)), piece, gold, None, None)
        else:
            it["kind"] = "untouched"
        it["text"], it["gold"] = text, [g for g in gold if g[2] != "_piece"]
    return items


# ------------------------------------------------------------------------------------------ scoring

def score(items, predictions) -> dict:
    """Per type: tp/fp/fn under overlap and exact matching, precision, recall, F1."""
    tally = {m: {t: Counter() for t in ENTITY_TYPES} for m in ("overlap", "exact")}
    for it, pred in zip(items, predictions):
        for mode in ("overlap", "exact"):
            used = set()
            for s, e, t in it["gold"]:
                hit = next((j for j, p in enumerate(pred) if j not in used and p.type == t and
                            ((p.start < e and s < p.end) if mode == "overlap" else (p.start, p.end) == (s, e))), None)
                if hit is None:
                    tally[mode][t]["fn"] += 1
                else:
                    used.add(hit)
                    tally[mode][t]["tp"] += 1
            for j, p in enumerate(pred):
                if j not in used:
                    tally[mode][p.type]["fp"] += 1
    out = {}
    for mode, per in tally.items():
        rows = {}
        for t, c in list(per.items()) + [("all", sum(per.values(), Counter()))]:
            tp, fp, fn = c["tp"], c["fp"], c["fn"]
            p = tp / (tp + fp) if tp + fp else None
            r = tp / (tp + fn) if tp + fn else None
            f = 2 * p * r / (p + r) if p and r else (0.0 if p is not None and r is not None else None)
            rows[t] = {"gold": tp + fn, "tp": tp, "fp": fp, "fn": fn, "precision": p, "recall": r, "f1": f}
        out[mode] = rows
    return out


def run(n: int = 1500, seed: int = 1, mix=(0.4, 0.3, 0.3), show_fp: int = 0, log=print) -> dict:
    load_before = os.getloadavg()
    items = build_set(n, seed, mix)
    t0 = time.time()
    from seektune.data.deidentify.engine import Deidentifier  # Presidio's import is part of the setup time

    deid = Deidentifier(DeidentifyOptions())
    setup = time.time() - t0
    t1 = time.time()
    outputs = [deid(it["text"]) for it in items]
    secs = time.time() - t1
    preds = [spans for _, spans in outputs]
    # nothing outside a span may change: rebuild each output from the input and the spans
    untouched_ok = all(new == _rebuild(it["text"], spans) for it, (new, spans) in zip(items, outputs))
    scores = score(items, preds)
    by_kind = defaultdict(Counter)
    fp_examples = []
    titled = 0  # PERSON false positives that are a surname before 先生/女士/...: names in the real text
    for it, pred in zip(items, preds):
        gold = it["gold"]
        for p in pred:
            if not any(p.type == t and p.start < e and s < p.end for s, e, t in gold):
                by_kind[it["kind"]][p.type] += 1
                titled += p.type == "PERSON" and it["text"][p.end:p.end + 2] in NAME_TITLES_AFTER
                if len(fp_examples) < show_fp:
                    fp_examples.append(f"{it['kind']:9} {p.type:13} {p.text!r} in "
                                       f"{it['text'][max(0, p.start - 12):p.end + 8]!r}")
    misses = Counter()
    out_of_dict = 0  # missed Chinese names whose surname the recognizer's dictionary lacks (逯, 禹, 巫, 佘, 曾)
    for it, pred in zip(items, preds):
        for s, e, t in it["gold"]:
            if not any(p.type == t and p.start < e and s < p.end for p in pred):
                misses[(t, _template_of(it["text"], s, e))] += 1
                out_of_dict += t == "PERSON" and it["lang"] == "zh" and it["text"][s] not in SURNAMES_SINGLE
    result = {"n_records": len(items), "seed": seed, "kinds": dict(Counter(it["kind"] for it in items)),
              "sources": dict(Counter(it["source"] for it in items)),
              "gold_spans": sum(len(it["gold"]) for it in items), "scores": scores,
              "false_positives_by_record_kind": {k: dict(v) for k, v in by_kind.items()},
              "person_fp_surname_before_title": titled, "person_fn_surname_not_in_dictionary": out_of_dict,
              "top_misses": [[t, ctx, c] for (t, ctx), c in misses.most_common(25)],
              "fp_examples": fp_examples, "chars": sum(len(it["text"]) for it in items),
              "setup_s": round(setup, 2), "seconds": round(secs, 2), "records_per_s": round(len(items) / secs, 1),
              "outside_spans_unchanged": untouched_ok,
              "loadavg_before": [round(x, 2) for x in load_before],
              "loadavg_after": [round(x, 2) for x in os.getloadavg()], "cpus": os.cpu_count()}
    return result


def _rebuild(text, spans):
    out, pos = [], 0
    for s in spans:
        out.append(text[pos:s.start])
        out.append(s.new)
        pos = s.end
    return "".join(out) + text[pos:]


def _template_of(text, s, e):
    """The gold value with a little context, value replaced by {} (to group misses by template)."""
    left = re.split(r"[。！？，；.!?;]", text[max(0, s - 8):s])[-1]
    right = re.split(r"[。！？，；.!?;]", text[e:e + 6])[0]
    return f"{left}{{}}{right}"


def table(result: dict, mode: str = "overlap") -> str:
    def f(x):
        return "—" if x is None else f"{x:.3f}"
    lines = ["| type | gold | TP | FP | FN | precision | recall | F1 | F1 (exact span) |", "|---|---|---|---|---|---|---|---|---|"]
    ex = result["scores"]["exact"]
    for t, r in result["scores"][mode].items():
        lines.append(f"| {t} | {r['gold']:,} | {r['tp']:,} | {r['fp']:,} | {r['fn']:,} | {f(r['precision'])} | "
                     f"{f(r['recall'])} | {f(r['f1'])} | {f(ex[t]['f1'])} |")
    return "\n".join(lines)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=1500, help="real records drawn (before planting)")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--mix", default="0.4,0.3,0.3", help="shares of huatuo, dialogue CSV, chatdoctor")
    ap.add_argument("--json", help="write the full result here")
    ap.add_argument("--show-fp", type=int, default=0, help="print this many false positives")
    a = ap.parse_args(argv)
    if not any(p.exists() for p, _, _ in SOURCES.values()):
        sys.exit("../shared/data/sft is not present: the labelled set is built from its real records")
    res = run(a.n, a.seed, tuple(float(x) for x in a.mix.split(",")), a.show_fp)
    print(f"{res['n_records']:,} records ({res['kinds']}; {res['sources']}), {res['gold_spans']:,} gold spans, "
          f"{res['chars']:,} characters")
    print(f"{res['records_per_s']:,} records/s ({res['seconds']} s; engine setup {res['setup_s']} s), "
          f"load average {res['loadavg_before']} -> {res['loadavg_after']} on {res['cpus']} CPUs")
    print(f"characters outside detected spans unchanged: {res['outside_spans_unchanged']}")
    print("overlap match:\n" + table(res))
    print("false positives by record kind:", res["false_positives_by_record_kind"])
    print(f"PERSON false positives that are a surname before a title (王先生, 李女士) in the real text: "
          f"{res['person_fp_surname_before_title']}; PERSON misses whose surname is not in the dictionary: "
          f"{res['person_fn_surname_not_in_dictionary']}")
    print("most frequent misses (type, template):")
    for t, ctx, c in res["top_misses"]:
        print(f"  {c:4}  {t:13} {ctx}")
    for line in res["fp_examples"]:
        print("  FP", line)
    if a.json:
        Path(a.json).write_text(json.dumps(res, indent=2, ensure_ascii=False), encoding="utf-8")


if __name__ == "__main__":
    main()
