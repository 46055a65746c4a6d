"""Every record is accounted for, Dolly keeps its context, reasoning is trained, `data preview` shows it.

The identities checked here are the ones the loaders print (`read = train + eval + rejected ...`):
a record is trained on, evaluated, rejected with a reason, or counted as unused / beyond
data.max_samples; none vanishes. The real-data cases skip when ../shared/data is absent.
"""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import pytest
from typer.testing import CliRunner

from conftest import shared_data
from seektune.config import DataConfig
from seektune.data import IGNORE_INDEX
from seektune.data.formats import content_text, detect_format, detect_kind, label_of, to_messages
from seektune.data.io import Record
from seektune.data.sft import build_sft_data, tokenize_conversation
from seektune.data.templates import DeepSeekR1Template, TemplateError, TokenizerTemplate, get_template

HUATUO = "sft/huatuo_med_zh.alpaca.jsonl"


@pytest.fixture(scope="module")
def ds_tok():
    from seektune.models.presets import load_deepseek_tokenizer

    return load_deepseek_tokenizer()


def _write_jsonl(path: Path, rows) -> Path:
    """rows: dicts (dumped) or raw strings (written as they are, for malformed lines)."""
    with open(path, "w", encoding="utf-8") as f:
        for r in rows:
            f.write((r if isinstance(r, str) else json.dumps(r, ensure_ascii=False)) + "\n")
    return path


def _alpaca(i: int) -> dict:
    return {"instruction": f"Question number {i}: what helps a mild headache?", "input": "",
            "output": f"Rest and water, answer {i}."}


def _read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def _build(tmp_path, tok, template="deepseek-v3", seed=0, **data):
    cfg = DataConfig(**{"cache": False, **data})
    rej, unused = tmp_path / "rejects.jsonl", tmp_path / "unused_eval.jsonl"
    out = build_sft_data(cfg, tok, get_template(template, tok), seed, rej, log=lambda m: None, unused_path=unused)
    return out, rej, unused


def _sft_identity(s: dict) -> int:
    return s["train"] + (0 if s["eval_file"] else s["eval"]) + s["rejected_train_file"] + s["beyond_max_samples"]


def _labelled_text(tok, ex) -> str:
    return tok.decode([t for t, lab in zip(ex["input_ids"], ex["labels"]) if lab != IGNORE_INDEX])


# ------------------------------------------------------------------------------------------
# 1. SFT: read = train + eval + rejected (+ beyond data.max_samples); eval file: evaluated + unused + rejected
# ------------------------------------------------------------------------------------------

def test_sft_bad_lines_are_rejected_with_line_and_reason(tmp_path, ds_tok):
    long_prompt = "请详细描述头痛的各种原因以及相应的处理方法。" * 40  # alone far over max_length=64
    rows = [_alpaca(i) for i in range(12)]
    rows.insert(3, '{"instruction": "broken", "output": ')            # line 4: invalid JSON
    rows.insert(6, {"instruction": "an instruction without any answer"})  # line 7: no output field
    rows.insert(8, {"instruction": "empty answer", "input": "", "output": "   "})  # line 9: empty answer
    rows.insert(10, {"instruction": long_prompt, "input": "", "output": "ok"})   # line 11: no assistant token fits
    rows.insert(12, {"instruction": "short", "input": "", "output": "很长的回答。" * 60})  # line 13: truncated, kept
    path = _write_jsonl(tmp_path / "train.jsonl", rows)
    data, rej, _ = _build(tmp_path, ds_tok, train=str(path), max_length=64, eval_ratio=0.2)
    s = data.stats
    assert s["read"] == 17
    assert s["read"] == s["train"] + s["eval"] + s["rejected_train_file"]
    assert s["rejected_train_file"] == s["rejected"] == 4
    assert s["train"] + s["eval"] == 13 and s["eval"] >= 1
    assert s["truncated"] >= 1  # the long answer was cut on the right, not rejected
    assert s["accounting"] == f"17 read = train {s['train']} + eval {s['eval']} + rejected 4"
    lines = _read_jsonl(rej)
    assert len(lines) == 4
    assert all({"source", "line", "reason"} <= set(r) and r["source"] == str(path) for r in lines)
    by_line = {r["line"]: r["reason"] for r in lines}
    assert set(by_line) == {4, 7, 9, 11}
    assert "invalid JSON" in by_line[4]
    # the reason names the missing field (it used to be cut to "messages, sharegpt, ...; or set data.format")
    assert "output" in by_line[7] and by_line[7].startswith("missing field")
    assert "empty" in by_line[9]
    assert "no assistant tokens left within data.max_length=64" in by_line[11]
    # every kept record is one of the lines not rejected
    kept = Counter(r["where"] for r in data.train + data.eval)
    assert set(kept) == {f"train.jsonl:{i}" for i in range(1, 18)} - {f"train.jsonl:{i}" for i in by_line}
    assert max(kept.values()) == 1


def test_sft_eval_cap_keeps_the_rest_in_training(tmp_path, ds_tok):
    path = _write_jsonl(tmp_path / "train.jsonl", [_alpaca(i) for i in range(20)])
    data, _, unused = _build(tmp_path, ds_tok, train=str(path), max_length=128, eval_ratio=0.5, max_eval_samples=3)
    s = data.stats
    assert (s["read"], s["eval"], s["train"], s["rejected"]) == (20, 3, 17, 0)
    assert s["eval_capped_to_train"] == 10 - 3  # the ratio would have held out 10
    assert s["accounting"] == "20 read = train 17 + eval 3 + rejected 0"
    assert not unused.exists()
    where = [r["where"] for r in data.train + data.eval]
    assert sorted(where) == sorted(f"train.jsonl:{i}" for i in range(1, 21))


def test_sft_eval_file_cap_lists_the_unused(tmp_path, ds_tok):
    train = _write_jsonl(tmp_path / "train.jsonl", [_alpaca(i) for i in range(6)])
    ev = _write_jsonl(tmp_path / "eval.jsonl", [_alpaca(100 + i) for i in range(10)])
    data, _, unused = _build(tmp_path, ds_tok, train=str(train), eval=str(ev), max_length=128, max_eval_samples=4)
    s = data.stats
    assert s["eval"] == 4 and s["train"] == 6 and s["read"] == 6 == _sft_identity(s)
    assert s["eval_file"] == {"path": str(ev), "read": 10, "evaluated": 4, "unused": 6, "rejected": 0}
    assert s["accounting"].endswith("eval file: 10 read = evaluated 4 + unused 6 + rejected 0")
    rows = _read_jsonl(unused)
    assert len(rows) == 6
    assert all(r["source"] == str(ev) and "data.max_eval_samples" in r["reason"] for r in rows)
    evaluated = {int(r["where"].rsplit(":", 1)[1]) for r in data.eval}
    assert evaluated.isdisjoint({r["line"] for r in rows})
    assert evaluated | {r["line"] for r in rows} == set(range(1, 11))


def test_sft_max_samples_counts_the_records_beyond(tmp_path, ds_tok):
    path = _write_jsonl(tmp_path / "train.jsonl", [_alpaca(i) for i in range(20)])
    data, _, _ = _build(tmp_path, ds_tok, train=str(path), max_length=128, eval_ratio=0.25, max_samples=8)
    s = data.stats
    assert s["beyond_max_samples"] == 12
    assert s["train"] + s["eval"] == 8 and s["eval"] == 2
    assert s["read"] == 20 == _sft_identity(s)
    assert "beyond data.max_samples 12" in s["accounting"]


@pytest.mark.parametrize("max_samples", [2000, None], ids=["first2000", "all"])
def test_sft_huatuo_every_record_accounted_for(tmp_path, ds_tok, max_samples):
    """8,658 Huatuo records, default hold-out (5%, at most 200): 233 used to vanish. About 4-6 s for all of
    it on 2 shared cores, so it is not marked slow."""
    path = shared_data(HUATUO)
    data, rej, _ = _build(tmp_path, ds_tok, train=str(path), max_length=512, max_samples=max_samples)
    s = data.stats
    assert s["read"] == 8658
    assert s["read"] == _sft_identity(s)
    if max_samples is None:
        assert s["eval"] == 200 and s["beyond_max_samples"] == 0
        assert s["eval_capped_to_train"] == round(8658 * 0.05) - 200  # 233 stay in training
        assert s["train"] == 8658 - 200 - s["rejected_train_file"]
    else:
        assert s["beyond_max_samples"] == 8658 - 2000
        assert s["eval"] == 100 and s["train"] + s["eval"] + s["rejected_train_file"] == 2000
    assert (rej.exists() and len(_read_jsonl(rej)) == s["rejected"]) or s["rejected"] == 0


# ------------------------------------------------------------------------------------------
# 2. Classification and preference loaders: the same identity, stratified when labelled
# ------------------------------------------------------------------------------------------

def _csv(path: Path, rows) -> Path:
    import csv

    with open(path, "w", encoding="utf-8", newline="") as f:
        w = csv.writer(f)
        w.writerow(["text", "label"])
        w.writerows(rows)
    return path


def test_sequence_data_identity_and_stratified_cap(tmp_path):
    from seektune.data.labelled import load_sequence_data

    # 100 + 100 + 2 + 1 items; a cap of 10 binds (the ratio alone would hold out 101)
    rows = [(f"alpha text {i}", "a") for i in range(100)] + [(f"beta text {i}", "b") for i in range(100)]
    rows += [("gamma one", "c"), ("gamma two", "c"), ("delta alone", "d")]
    rows += [("", "a"), ("text without a label", "")]  # two rejects
    path = _csv(tmp_path / "train.csv", rows)
    for seed in range(5):
        rejects: list[dict] = []
        d = load_sequence_data(DataConfig(train=str(path), eval_ratio=0.5, max_eval_samples=10), seed, rejects)
        s = d.stats
        assert (s["read"], s["eval"], s["rejected"]) == (205, 10, 2)
        assert s["read"] == s["train"] + s["eval"] + s["rejected"] + s["unused_eval"] + s["beyond_max_samples"]
        tr, ev = Counter(x.label for x in d.train), Counter(x.label for x in d.eval)
        for lab in "abc":  # every class with >= 2 items is in both parts, even under the cap
            assert tr[lab] >= 1 and ev[lab] >= 1, (seed, lab, tr, ev)
        assert ev["d"] == 0 and tr["d"] == 1
        assert {r["line"] for r in rejects} == {205, 206}


def test_sequence_data_eval_file_is_counted(tmp_path):
    from seektune.data.labelled import load_sequence_data

    train = _csv(tmp_path / "train.csv", [(f"t{i}", "pos" if i % 2 else "neg") for i in range(10)])
    ev = _csv(tmp_path / "eval.csv", [(f"e{i}", "pos" if i % 2 else "neg") for i in range(8)]
              + [("e-unseen", "neutral"), ("", "pos")])
    rejects: list[dict] = []
    d = load_sequence_data(DataConfig(train=str(train), eval=str(ev), max_eval_samples=5), 0, rejects)
    s = d.stats
    # 10 + 10 records read; 10 train; the eval file: 1 rejected on read, 9 left, 5 kept by the cap of which
    # at most one is the unseen label (rejected), 4 unused
    assert s["read"] == 20
    assert s["train"] == 10 and s["unused_eval"] == 4 and len(d.unused) == 4
    assert s["read"] == s["train"] + s["eval"] + s["rejected"] + s["unused_eval"]
    assert all("data.max_eval_samples" in u["reason"] for u in d.unused)


def test_token_data_identity_with_eval_file(tmp_path):
    from seektune.data.labelled import load_token_data

    def sent(i):
        return {"tokens": ["Aspirin", "helps", str(i)], "tags": ["B-DRUG", "O", "O"]}

    train = _write_jsonl(tmp_path / "train.jsonl", [sent(i) for i in range(6)]
                         + [{"tokens": [], "tags": []},                        # no tokens: rejected, not dropped
                            {"tokens": ["a", "b"], "tags": ["O"]},             # length mismatch
                            {"tokens": ["x"], "tags": ["Q-DRUG"]}])            # not a bio tag
    ev = _write_jsonl(tmp_path / "eval.jsonl", [sent(100 + i) for i in range(5)] + ["{broken"])
    rejects: list[dict] = []
    d = load_token_data(DataConfig(train=str(train), eval=str(ev), max_eval_samples=3), 0, rejects)
    s = d.stats
    assert (s["read"], s["train"], s["eval"], s["unused_eval"], s["rejected"]) == (15, 6, 3, 2, 4)
    assert s["read"] == s["train"] + s["eval"] + s["rejected"] + s["unused_eval"]
    assert {(Path(r["source"]).name, r["line"]) for r in rejects} == {
        ("train.jsonl", 7), ("train.jsonl", 8), ("train.jsonl", 9), ("eval.jsonl", 6)}


def test_sequence_data_real_file_identity():
    from seektune.data.labelled import load_sequence_data

    path = shared_data("classification/chnsenticorp_htl.csv")
    rejects: list[dict] = []
    d = load_sequence_data(DataConfig(train=str(path), eval_ratio=0.1, max_eval_samples=100), 0, rejects)
    s = d.stats
    assert s["eval"] == 100
    assert s["read"] == s["train"] + s["eval"] + s["rejected"]
    assert set(Counter(x.label for x in d.eval)) == set(d.labels)


def _pair(i: int) -> dict:
    return {"prompt": f"Question {i}?", "chosen": f"A good answer {i}.", "rejected": f"A bad answer {i}."}


def test_preference_identity_with_cap_and_rejects(tmp_path, ds_tok):
    from seektune.data.preference import load_preference_data, prepare_pairs

    rows = [_pair(i) for i in range(20)]
    rows.insert(2, '{"prompt": "broken"')                                      # invalid JSON
    rows.insert(5, {"prompt": "same", "chosen": "x", "rejected": "x"})        # identical sides
    rows.insert(7, {"prompt": "q" * 10, "chosen": "long " * 400, "rejected": "no"})  # too long for max_length
    path = _write_jsonl(tmp_path / "pairs.jsonl", rows)
    cfg = DataConfig(train=str(path), eval_ratio=0.5, max_eval_samples=3, max_length=128)
    d = load_preference_data(cfg, 0)
    s = d.stats
    assert s["read"] == 23
    assert s["eval"] == 3 and s["rejected"] == 2
    assert s["read"] == s["train"] + s["eval"] + s["rejected"] + s["unused_eval"]
    assert all({"source", "line", "reason"} <= set(r) for r in d.rejects)

    train, ev, st, rejects, unused = prepare_pairs(cfg, ds_tok, get_template("deepseek-v3", ds_tok), 0, 64)
    assert st["read"] == 23 and st["too_long"] == 1 and st["rejected"] == 3 == len(rejects)
    assert st["read"] == st["train"] + st["eval"] + st["rejected"] + st["unused_eval"]
    assert st["read"] == len(train) + len(ev) + len(rejects) + len(unused)
    assert sorted(r["line"] for r in rejects) == [3, 6, 8]


def test_preference_eval_file_cap(tmp_path):
    from seektune.data.preference import load_preference_data

    train = _write_jsonl(tmp_path / "train.jsonl", [_pair(i) for i in range(5)])
    ev = _write_jsonl(tmp_path / "eval.jsonl", [_pair(100 + i) for i in range(10)])
    d = load_preference_data(DataConfig(train=str(train), eval=str(ev), max_eval_samples=4), 0)
    s = d.stats
    assert (s["read"], s["train"], s["eval"], s["unused_eval"], s["rejected"]) == (15, 5, 4, 6, 0)
    assert all("data.max_eval_samples" in u["reason"] for u in d.unused)
    # unused_eval.jsonl rows name file and line, as the other loaders' do
    assert all(u["source"] == str(ev) for u in d.unused)
    lines = {u["line"] for u in d.unused} | {int(p.where.rsplit(":", 1)[1]) for p in d.eval}
    assert lines == set(range(1, 11))


def test_preference_real_file_identity():
    from seektune.data.preference import load_preference_data

    path = shared_data("preference/dpo_en_demo.json")
    d = load_preference_data(DataConfig(train=str(path), eval_ratio=0.2, max_eval_samples=50), 0)
    s = d.stats
    assert s["eval"] == 50
    assert s["read"] == s["train"] + s["eval"] + s["rejected"]


# ------------------------------------------------------------------------------------------
# 3. Dolly keeps its context
# ------------------------------------------------------------------------------------------

DOLLY = {"instruction": "When was the hospital founded?",
         "context": "PASSAGE: St. Elsewhere hospital was founded in 1882 by the city council.",
         "response": "It was founded in 1882.", "category": "closed_qa"}


def test_dolly_is_detected_and_keeps_its_context():
    assert detect_format(DOLLY) == "dolly"
    assert detect_kind(DOLLY) == "dolly"
    msgs = to_messages(Record(DOLLY, "dolly.jsonl", 1), "auto")
    user = [m["content"] for m in msgs if m["role"] == "user"]
    assert len(user) == 1 and DOLLY["instruction"] in user[0] and DOLLY["context"] in user[0]
    assert msgs[-1] == {"role": "assistant", "content": DOLLY["response"]}
    text = content_text(DOLLY, "dolly")
    assert DOLLY["context"] in text and DOLLY["response"] in text
    assert label_of(DOLLY, "dolly") == "closed_qa"
    # the qa reading would have dropped the passage
    assert DOLLY["context"] not in content_text(DOLLY, "qa")


def test_data_inspect_reports_dolly(tmp_path):
    from seektune.cli import app
    from seektune.data.inspect import inspect_file

    rows = [dict(DOLLY, instruction=f"{DOLLY['instruction']} ({i})") for i in range(3)]
    rows.append(dict(DOLLY, category="open_qa", context="", instruction="Name a vitamin."))
    path = _write_jsonl(tmp_path / "dolly.jsonl", rows)
    rep = inspect_file(path)
    assert rep["kinds"] == {"dolly": 4}
    r = CliRunner().invoke(app, ["data", "inspect", str(path), "--json"])
    assert r.exit_code == 0, r.output
    out = json.loads(r.stdout)
    assert out["kinds"] == {"dolly": 4}
    assert out["labels"] is not None and "closed_qa" in json.dumps(out["labels"])


# ------------------------------------------------------------------------------------------
# 4. Reasoning is trained under the R1 template, whatever `template: auto` picks
# ------------------------------------------------------------------------------------------

REASON = "REASONZQX the patient has a fever so think about infection"
ANSWER = "ANSWERZQX rest and drink water"
REASONING_RECORDS = {
    "messages_reasoning_content": {"messages": [{"role": "user", "content": "What should I do about a fever?"},
                                                {"role": "assistant", "content": ANSWER,
                                                 "reasoning_content": REASON}]},
    "alpaca_inline_think": {"instruction": "What should I do about a fever?", "input": "",
                            "output": f"<think>\n{REASON}\n</think>\n\n{ANSWER}"},
    "alpaca_reasoning_field": {"instruction": "What should I do about a fever?", "input": "", "output": ANSWER,
                               "reasoning": REASON},
}


def test_auto_template_on_deepseek_tokenizer_is_the_r1_builtin(ds_tok):
    assert "</think>" in ds_tok.chat_template  # the tokenizer's own Jinja is the R1 one
    t = get_template("auto", ds_tok)
    assert isinstance(t, DeepSeekR1Template) and t.name == "deepseek-r1"


@pytest.mark.parametrize("shape", list(REASONING_RECORDS))
@pytest.mark.parametrize("template", ["auto", "deepseek-r1", "deepseek-v3", "chatml"])
def test_reasoning_is_trained(ds_tok, shape, template):
    msgs = to_messages(Record(REASONING_RECORDS[shape], "r.jsonl", 1), "auto")
    assert msgs[-1]["reasoning_content"] == REASON and msgs[-1]["content"] == ANSWER
    ex = tokenize_conversation(msgs, get_template(template, ds_tok), ds_tok, 512)
    trained = _labelled_text(ds_tok, ex)
    assert REASON in trained and ANSWER in trained
    assert trained.index(REASON) < trained.index(ANSWER)
    assert "<think>" in trained and "fever?" not in trained


@pytest.mark.parametrize("shape", list(REASONING_RECORDS))
def test_tokenizer_template_refuses_to_drop_reasoning(ds_tok, shape):
    msgs = to_messages(Record(REASONING_RECORDS[shape], "r.jsonl", 1), "auto")
    t = get_template("tokenizer", ds_tok)
    with pytest.raises(TemplateError, match="deepseek-r1"):
        tokenize_conversation(msgs, t, ds_tok, 512)
    # the old behaviour, which the error replaces: the R1 Jinja renders the answer and loses the reasoning
    folded = [msgs[0], {"role": "assistant", "content": f"<think>\n{REASON}\n</think>\n\n{ANSWER}"}]
    for conv in (msgs, folded):
        old = TokenizerTemplate(ds_tok).tok.apply_chat_template(conv, tokenize=False)
        assert ANSWER in old and REASON not in old


def test_tokenizer_template_reasoning_reject_is_counted(tmp_path, ds_tok):
    rows = [_alpaca(i) for i in range(6)] + [REASONING_RECORDS["alpaca_inline_think"]]
    path = _write_jsonl(tmp_path / "train.jsonl", rows)
    data, rej, _ = _build(tmp_path, ds_tok, template="tokenizer", train=str(path), max_length=128, eval_ratio=0)
    s = data.stats
    assert (s["read"], s["train"], s["rejected"]) == (7, 6, 1)
    (r,) = _read_jsonl(rej)
    assert r["line"] == 7 and "deepseek-r1" in r["reason"]


# ------------------------------------------------------------------------------------------
# 5. `seektune data preview CONFIG`
# ------------------------------------------------------------------------------------------

PROMPT = "PROMPTZQX what should I do about a fever?"


def _preview(args):
    from seektune.cli import app

    return CliRunner().invoke(app, ["data", "preview", *args])


def _spans_ok(smp: dict) -> bool:
    text, spans = smp["text"], smp["spans"]
    pos = 0
    for a, b in spans:
        if not (pos <= a < b <= len(text)):
            return False
        pos = b
    return "".join(text[a:b] for a, b in spans) == smp["trained"]


def test_data_preview_sft_shows_reasoning_and_answer_trained(tmp_path):
    rows = [{"instruction": PROMPT, "input": "", "output": f"<think>\n{REASON}\n</think>\n\n{ANSWER}"}]
    rows += [{"instruction": f"PROMPTZQX question {i}", "input": "", "output": f"ANSWERZQX number {i}"}
             for i in range(4)]
    train = _write_jsonl(tmp_path / "train.jsonl", rows)
    cfg = tmp_path / "sft.yaml"
    cfg.write_text(f"model:\n  name_or_path: tiny-qwen2\ndata:\n  train: {train}\n  max_length: 256\n"
                   f"  eval_ratio: 0\ntrain:\n  output_dir: {tmp_path / 'run'}\n", encoding="utf-8")
    r = _preview([str(cfg), "--n", "3", "--json"])
    assert r.exit_code == 0, r.output
    samples = [json.loads(line) for line in r.stdout.splitlines() if line.strip()]
    assert len(samples) == 3
    for smp in samples:
        assert {"text", "trained"} <= set(smp)
        assert _spans_ok(smp)
        assert "PROMPTZQX" in smp["text"] and "PROMPTZQX" not in smp["trained"]
        assert "ANSWERZQX" in smp["trained"]
    first = samples[0]
    assert first["where"] == "train.jsonl:1"
    assert REASON in first["trained"] and ANSWER in first["trained"] and PROMPT not in first["trained"]

    r = _preview([str(cfg), "--n", "1"])
    assert r.exit_code == 0, r.output
    assert "train.jsonl:1" in r.output and REASON in r.output and PROMPT in r.output


def test_data_preview_classification_trains_the_label(tmp_path):
    train = _csv(tmp_path / "train.csv", [(f"great hotel number {i}", "pos") for i in range(6)]
                 + [(f"dirty room number {i}", "neg") for i in range(6)])
    cfg = tmp_path / "cls.yaml"
    cfg.write_text(f"model:\n  name_or_path: minilm-l6\n  task: sequence_classification\n"
                   f"data:\n  train: {train}\n  eval_ratio: 0.2\n"
                   f"train:\n  output_dir: {tmp_path / 'run'}\n", encoding="utf-8")
    r = _preview([str(cfg), "--n", "2", "--json"])
    assert r.exit_code == 0, r.output
    samples = [json.loads(line) for line in r.stdout.splitlines() if line.strip()]
    assert len(samples) == 2
    for smp in samples:
        assert _spans_ok(smp)
        assert smp["trained"] in ("pos", "neg")
        assert smp["text"].startswith(("great hotel", "dirty room")) and smp["text"].endswith(smp["trained"])
