
import pytest
import torch

from seektune.data.collate import PadCollator
from seektune.data.formats import detect_format, to_messages
from seektune.data.io import DataError, Record, detect_encoding, read_records
from seektune.data import IGNORE_INDEX
from seektune.data.sft import pack_examples, tokenize_conversation
from seektune.data.templates import get_template
from seektune.models.presets import load_deepseek_tokenizer


@pytest.fixture(scope="module")
def ds_tok():
    return load_deepseek_tokenizer()


def _labelled_text(tok, ex):
    return tok.decode([t for t, l in zip(ex["input_ids"], ex["labels"]) if l != IGNORE_INDEX])


RECORDS = {
    "alpaca": {"instruction": "Describe flu", "input": "briefly", "output": "A viral infection."},
    "sharegpt": {"conversations": [{"from": "human", "value": "hi"}, {"from": "gpt", "value": "Hello!"},
                                   {"from": "human", "value": "头痛怎么办"}, {"from": "gpt", "value": "注意休息。"}]},
    "messages": {"messages": [{"role": "system", "content": "be brief"}, {"role": "user", "content": "q"},
                              {"role": "assistant", "content": "The answer."}]},
    "qa": {"question": "Is aspirin an NSAID?", "answer": "Yes, it is."},
}
ANSWERS = {"alpaca": ["A viral infection."], "sharegpt": ["Hello!", "注意休息。"], "messages": ["The answer."],
           "qa": ["Yes, it is."]}


@pytest.mark.parametrize("fmt", list(RECORDS))
def test_format_detection(fmt):
    assert detect_format(RECORDS[fmt]) == fmt


@pytest.mark.parametrize("fmt", list(RECORDS))
@pytest.mark.parametrize("template", ["deepseek-v3", "deepseek-r1", "tokenizer", "chatml"])
def test_assistant_only_labels(ds_tok, fmt, template):
    msgs = to_messages(Record(RECORDS[fmt], "x.jsonl", 1), fmt)
    t = get_template(template, ds_tok)
    ex = tokenize_conversation(msgs, t, ds_tok, 512)
    got = _labelled_text(ds_tok, ex)
    eos = {"chatml": "<|im_end|>"}.get(template, ds_tok.eos_token)
    if template == "deepseek-r1":
        expected = "".join(f"<think>\n\n</think>\n\n{a}{eos}" for a in ANSWERS[fmt])
    else:
        expected = "".join(f"{a}{eos}" for a in ANSWERS[fmt])
    if template == "chatml":
        # <|im_end|> is not a special token in the DeepSeek vocabulary: BPE merges it with the newline after
        # it, and a token that starts inside the assistant span is trained
        got = got.replace(f"{eos}\n", eos)
    assert got == expected
    # prompt text (user turns) never carries loss
    prompt_ids = ds_tok(msgs[-2]["content"], add_special_tokens=False).input_ids
    labelled = [t for t, l in zip(ex["input_ids"], ex["labels"]) if l != IGNORE_INDEX]
    assert not (len(prompt_ids) > 2 and all(p in labelled for p in prompt_ids) and fmt != "qa")


def test_eos_is_trained_and_pad_differs(ds_tok):
    assert ds_tok.pad_token_id != ds_tok.eos_token_id
    ex = tokenize_conversation(to_messages(Record(RECORDS["qa"], "x", 1), "qa"), get_template("auto", ds_tok),
                               ds_tok, 512)
    assert ex["labels"][-1] == ds_tok.eos_token_id


def test_truncation_keeps_length(ds_tok):
    msgs = [{"role": "user", "content": "q " * 50}, {"role": "assistant", "content": "a " * 200}]
    ex = tokenize_conversation(msgs, get_template("deepseek-v3", ds_tok), ds_tok, 64)
    assert len(ex["input_ids"]) == 64 and ex["truncated"]


def test_gb18030_csv_is_read(tmp_path):
    p = tmp_path / "med.csv"
    p.write_bytes("department,title,ask,answer\n内科,头痛,头痛三天了怎么办,建议就医检查血压。\n".encode("gb18030"))
    assert detect_encoding(p) == "gb18030"
    recs = list(read_records(p))
    assert recs[0].data["answer"] == "建议就医检查血压。" and recs[0].line == 2
    msgs = to_messages(recs[0], detect_format(recs[0].data))
    assert msgs[-1]["content"] == "建议就医检查血压。" and "头痛三天了怎么办" in msgs[0]["content"]


def test_bad_json_line_names_file_and_line(tmp_path):
    p = tmp_path / "bad.jsonl"
    p.write_text('{"instruction": "a", "output": "b"}\n{"instruction": oops}\n', encoding="utf-8")
    with pytest.raises(DataError, match=r"bad.jsonl:2: invalid JSON"):
        list(read_records(p))
    errors = []
    assert len(list(read_records(p, on_error="collect", errors=errors))) == 1
    assert errors[0]["line"] == 2


def test_missing_assistant_is_a_clear_error():
    with pytest.raises(DataError, match="f.json:3"):
        to_messages(Record({"instruction": "x", "output": ""}, "f.json", 3), "alpaca")


def _token_losses(model, batch):
    out = model(**{k: v for k, v in batch.items() if k != "labels"})
    logits = out.logits[:, :-1].float()
    labels = batch["labels"][:, 1:]
    lp = torch.nn.functional.cross_entropy(logits.transpose(1, 2), labels, ignore_index=IGNORE_INDEX, reduction="sum")
    return lp, int((labels != IGNORE_INDEX).sum())


@pytest.mark.parametrize("preset", ["tiny-qwen2", "tiny-deepseek-v3"])
def test_packed_loss_equals_unpacked(ds_tok, preset):
    from seektune.config import ModelConfig
    from seektune.models.loader import load_model

    model, tok, _ = load_model(ModelConfig(name_or_path=preset))
    model.eval()
    model.config.use_cache = False
    t = get_template("deepseek-v3", tok)
    convs = [[{"role": "user", "content": q}, {"role": "assistant", "content": a}]
             for q, a in [("hello there", "hi, how can I help?"), ("头痛", "多休息"), ("x " * 10, "y " * 20),
                          ("what is BP", "blood pressure")]]
    rows = [{k: v for k, v in tokenize_conversation(c, t, tok, 128).items() if k != "truncated"} for c in convs]
    coll = PadCollator(tok.pad_token_id)
    with torch.no_grad():
        s_unpacked, n_unpacked = _token_losses(model, coll(rows))
        packed = pack_examples(rows, 512)
        assert len(packed) == 1 and packed[0]["num_samples"] == 4
        s_packed, n_packed = _token_losses(model, coll(packed))
    assert n_packed == n_unpacked
    assert abs(s_packed.item() - s_unpacked.item()) / s_unpacked.item() < 1e-4
    # and packing really needs the block mask: without restarting positions, attention would leak
    with torch.no_grad():
        b = coll(packed)
        b["position_ids"] = torch.arange(b["input_ids"].shape[1]).unsqueeze(0)
        s_leak, _ = _token_losses(model, b)
    assert abs(s_leak.item() - s_unpacked.item()) / s_unpacked.item() > 1e-4
